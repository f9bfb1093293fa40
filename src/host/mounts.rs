//! The mount table: parsing `/proc/self/mountinfo` (pure) and the few mount syscalls
//! keepsake makes.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

use super::{Context, Error, Result};
use crate::safefs::Dir;

/// One line of mountinfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub id: u32,
    pub parent: u32,
    /// major, minor of the mounted filesystem's device.
    pub dev: (u32, u32),
    /// The path inside the filesystem that is mounted here (`/` for a whole filesystem,
    /// `/Persistent` for a bind of that folder).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    pub options: String,
    pub fstype: String,
    pub source: String,
    /// The filesystem's own options (for an overlay: lowerdir, upperdir, ...).
    pub super_options: String,
    /// The peer group the mount is in (`shared:N`): mounts and unmounts under it reach
    /// every peer, in any mount namespace.
    pub shared: Option<u32>,
    /// The peer group it receives from (`master:N`): a slave copy, which an unmount of
    /// that group's mount takes away too.
    pub master: Option<u32>,
}

impl Mount {
    pub(crate) fn has_option(&self, option: &str) -> bool {
        self.options.split(',').any(|o| o == option)
    }

    /// One of the filesystem's own options (`upperdir` of an overlay), unescaped. The
    /// kernel escapes commas, `=`, whitespace and backslashes in these values as octal, so splitting
    /// on the raw commas is safe.
    pub(crate) fn super_option(&self, key: &str) -> Option<String> {
        self.super_options.split(',').find_map(|o| {
            let (k, v) = o.split_once('=')?;
            (k == key).then(|| unescape(v))
        })
    }

    /// The upper folder of an overlay mount, as a clean path (`//` and `/./` folded, as
    /// live-boot's paths may carry them).
    pub(crate) fn overlay_upperdir(&self) -> Option<PathBuf> {
        if self.fstype != "overlay" {
            return None;
        }
        self.super_option("upperdir").map(|u| clean(Path::new(&u)))
    }
}

fn clean(path: &Path) -> PathBuf {
    path.components().collect()
}

/// Whether the union (overlay) feature `source` of the volume mounted at `mount_root` is
/// active on `dest`: an overlay mounted there whose upper folder is `SOURCE/rw` in the
/// volume, as live-boot and keepsake make it.
pub(crate) fn union_is_active(
    table: &[Mount],
    mount_root: &Path,
    source: &Path,
    dest: &Path,
) -> bool {
    let upper = clean(&mount_root.join(source).join("rw"));
    table
        .iter()
        .any(|m| m.mount_point == dest && m.overlay_upperdir().as_ref() == Some(&upper))
}

/// The overlay mounts whose upper folder lies in the volume mounted at `mount_root`: they
/// hold the volume, so they go before its mount does.
pub(crate) fn unions_of<'a>(table: &'a [Mount], mount_root: &Path) -> Vec<&'a Mount> {
    let root = clean(mount_root);
    table
        .iter()
        .filter(|m| m.overlay_upperdir().is_some_and(|u| u.starts_with(&root)))
        .collect()
}

/// The system's root, when it is an overlay whose upper folder lies in the volume mounted
/// at `mount_root` (live-boot's `/ union`, full persistence): the running system writes
/// there, so the volume cannot be taken away while it runs.
pub(crate) fn root_union<'a>(table: &'a [Mount], mount_root: &Path) -> Option<&'a Mount> {
    mount_at(table, Path::new("/"))
        .filter(|m| unions_of(std::slice::from_ref(*m), mount_root).len() == 1)
}

/// Parses mountinfo text. Lines that do not parse are skipped: the kernel's format is
/// stable, and a partial table is better than none for a tool that must still lock.
pub(crate) fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Mount> {
    let (head, tail) = line.split_once(" - ")?;
    let mut h = head.split(' ');
    let id = h.next()?.parse().ok()?;
    let parent = h.next()?.parse().ok()?;
    let (major, minor) = h.next()?.split_once(':')?;
    let dev = (major.parse().ok()?, minor.parse().ok()?);
    let root = PathBuf::from(unescape(h.next()?));
    let mount_point = PathBuf::from(unescape(h.next()?));
    let options = h.next()?.to_string();
    let (mut shared, mut master) = (None, None);
    for optional in h {
        if let Some(n) = optional.strip_prefix("shared:") {
            shared = n.parse().ok();
        } else if let Some(n) = optional.strip_prefix("master:") {
            master = n.parse().ok();
        }
    }
    let mut t = tail.split(' ');
    let fstype = t.next()?.to_string();
    let source = unescape(t.next()?);
    let super_options = t.next().unwrap_or("").to_string();
    Some(Mount {
        id,
        parent,
        dev,
        root,
        mount_point,
        options,
        fstype,
        source,
        super_options,
        shared,
        master,
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
pub(crate) fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let code = std::str::from_utf8(&bytes[i + 1..i + 4])
                .ok()
                .and_then(|oct| u8::from_str_radix(oct, 8).ok());
            if let Some(v) = code {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The live system's images as live-boot mounted them (`/run/live/rootfs/*`, one folder
/// per squashfs); none where the running system was not booted by live-boot.
pub(crate) fn live_boot_images() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/run/live/rootfs") else {
        return Vec::new();
    };
    let mut images: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    images.sort();
    images
}

pub(crate) fn read_mountinfo() -> Result<Vec<Mount>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .context(|| "reading /proc/self/mountinfo".into())?;
    Ok(parse_mountinfo(&text))
}

/// The mount whose mount point is exactly `path` (the topmost if several are stacked).
fn mount_at<'a>(table: &'a [Mount], path: &Path) -> Option<&'a Mount> {
    table.iter().rev().find(|m| m.mount_point == path)
}

/// Mounts an ext4 filesystem with the options every keepsake mount carries.
pub(crate) fn mount_ext4(device: &Path, target: &Path) -> Result<()> {
    // With POSIX ACLs, as Tails mounts it: the mount root's ACL lets the live user through.
    nix::mount::mount(
        Some(device),
        target,
        Some("ext4"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOATIME,
        Some("acl"),
    )
    .context(|| format!("mounting {} at {}", device.display(), target.display()))
}

/// Makes the mount at `target` (a volume's root, given as its handle's /proc path) private:
/// a bind from it then starts a peer group of its own instead of joining the volume's. Under systemd every mount is shared; a bind of a
/// shared mount is its peer, so a nested feature (`/srv/www/uploads` on `/srv/www`) was
/// mounted into the volume's own folder too (`…/www/uploads`), and one unmount undid the
/// other. Copies in other namespaces still go with ours: an unmount propagates through
/// the peer group of the mount it is on, not its own.
pub(crate) fn make_private(target: &Path) -> Result<()> {
    match nix::mount::mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_PRIVATE,
        None::<&str>,
    ) {
        // Not the root of a mount (a plain folder, as in unit tests): it has no mount of
        // its own whose peers a bind would join.
        Err(nix::errno::Errno::EINVAL) => Ok(()),
        done => done.context(|| format!("making the mount at {} private", target.display())),
    }
}

/// Mounts an ext4 filesystem read-only, without replaying its journal, for inspection.
pub(crate) fn mount_ext4_read_only(device: &Path, target: &Path) -> Result<()> {
    nix::mount::mount(
        Some(device),
        target,
        Some("ext4"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("noload"),
    )
    .context(|| {
        format!(
            "mounting {} read-only at {}",
            device.display(),
            target.display()
        )
    })
}

/// Bind-mounts the directory `source` on `target`, then makes the bind `nosuid,nodev` (a
/// bind mount only takes new flags on a remount). Both are open directories, so that no
/// symlink swapped in meanwhile can redirect the mount.
pub(crate) fn bind(source: &Dir, target: &Dir) -> Result<()> {
    let shown = || {
        format!(
            "binding {} on {}",
            source.path.display(),
            target.path.display()
        )
    };
    nix::mount::mount(
        Some(&source.proc_path()),
        &target.proc_path(),
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .context(shown)?;
    let result = target.reopen().map_err(Error::from).and_then(|mounted| {
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        nix::mount::mount(
            None::<&str>,
            &mounted.proc_path(),
            None::<&str>,
            flags,
            None::<&str>,
        )
        .context(|| format!("making {} nosuid,nodev", target.path.display()))
    });
    if result.is_err() {
        let _ = target.unmount_here();
    }
    result
}

/// Bind-mounts one file of the volume over a file of the session (Tails' `file` option),
/// both named by descriptors, then makes it nosuid,nodev. `target_dir`/`target_name` find
/// the mounted file again for that remount.
pub(crate) fn bind_file(
    source: &OwnedFd,
    target: &OwnedFd,
    target_dir: &Dir,
    target_name: &std::ffi::OsStr,
) -> Result<()> {
    let shown = target_dir.path.join(target_name);
    nix::mount::mount(
        Some(Path::new(&format!("/proc/self/fd/{}", source.as_raw_fd()))),
        Path::new(&format!("/proc/self/fd/{}", target.as_raw_fd())),
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .context(|| format!("binding a file of the volume on {}", shown.display()))?;
    let result = nix::fcntl::openat(
        &target_dir.fd,
        target_name,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .context(|| format!("opening {}", shown.display()))
    .and_then(|mounted| {
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        nix::mount::mount(
            None::<&str>,
            Path::new(&format!("/proc/self/fd/{}", mounted.as_raw_fd())),
            None::<&str>,
            flags,
            None::<&str>,
        )
        .context(|| format!("making {} nosuid,nodev", shown.display()))
    });
    if result.is_err() {
        let _ = target_dir.unmount_child(&shown);
    }
    result
}

/// Mounts an overlay on `target` (live-boot's `union`): the folder as it is now is the
/// lower layer, `upper` and `work` (folders of the volume, by path: overlayfs takes no
/// descriptors on this kernel, so the caller makes sure nobody but root can change any
/// folder on those paths) hold the changes.
pub(crate) fn overlay(target: &Dir, upper: &Path, work: &Path) -> Result<()> {
    for p in [upper, work] {
        let text = p.to_string_lossy();
        if text.contains([',', ':', '\\']) || text.chars().any(char::is_whitespace) {
            return Err(Error::Unusable(format!(
                "{} holds a comma, colon, backslash or blank, which overlayfs options cannot carry",
                p.display()
            )));
        }
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        target.proc_path().display(),
        upper.display(),
        work.display()
    );
    nix::mount::mount(
        Some("overlay"),
        &target.proc_path(),
        Some("overlay"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOATIME,
        Some(options.as_str()),
    )
    .context(|| format!("mounting an overlay on {}", target.path.display()))
}

/// Unmounts `target` as [`unmount`] does, or, should something still hold it, detaches it
/// now: the kernel finishes when that lets go. For keepsake's own mounts in /run/keepsake,
/// which only root reaches.
pub(crate) fn unmount_or_detach(target: &Path) {
    if unmount(target).is_err() {
        let _ = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Unmounts the mount on `target`. umount2 has no *at form, and `UMOUNT_NOFOLLOW` guards
/// only the last component: a path in the live user's folders could be redirected by a
/// symlink swapped in on the way (and unmount `/proc`). So the folder holding the mount
/// point is opened with [`crate::safefs::open_dir`] (no symlink anywhere), and the unmount
/// names it through that descriptor: `/proc/self/fd/N/NAME`. (Not the mount point's own
/// descriptor: holding it would keep the mount busy.)
pub(crate) fn unmount(target: &Path) -> Result<()> {
    let (Some(parent), Some(_)) = (target.parent(), target.file_name()) else {
        return Err(Error::Failed(format!(
            "{} is not a mount point keepsake unmounts",
            target.display()
        )));
    };
    let (parent, _) = crate::safefs::open_dir(parent, None).map_err(|e| match e {
        crate::safefs::Error::Symlink(why) => Error::InUse(format!(
            "{}: {why}; it was changed by someone else, so it is not unmounted",
            target.display()
        )),
        e => e.into(),
    })?;
    Ok(parent.unmount_child(target)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 0:21 / /run rw,nosuid,nodev shared:5 - tmpfs tmpfs rw,mode=755
40 22 254:0 / /live/persistence/TailsData_unlocked rw,nosuid,nodev,noatime shared:20 - ext4 /dev/mapper/TailsData_unlocked rw
41 30 254:0 /Persistent /home/amnesia/Persistent rw,nosuid,nodev,noatime shared:20 - ext4 /dev/mapper/TailsData_unlocked rw
42 30 254:0 /gnupg /home/amnesia/My\\040Keys rw,nosuid,nodev - ext4 /dev/mapper/TailsData_unlocked rw
garbage line
";

    #[test]
    fn parses_fields_and_escapes() {
        let t = parse_mountinfo(SAMPLE);
        assert_eq!(t.len(), 4);
        assert_eq!(t[1].dev, (254, 0));
        assert_eq!(
            t[1].mount_point,
            Path::new("/live/persistence/TailsData_unlocked")
        );
        assert_eq!(t[2].root, Path::new("/Persistent"));
        assert_eq!(t[3].mount_point, Path::new("/home/amnesia/My Keys"));
        assert_eq!(t[0].fstype, "tmpfs");
        assert_eq!(t[1].source, "/dev/mapper/TailsData_unlocked");
        assert!(t[2].has_option("nodev"));
        assert!(!t[0].has_option("noatime"));
    }

    #[test]
    fn finds_mounts_by_point() {
        let t = parse_mountinfo(SAMPLE);
        assert_eq!(
            mount_at(&t, Path::new("/home/amnesia/Persistent")).map(|m| m.id),
            Some(41)
        );
        assert!(mount_at(&t, Path::new("/nowhere")).is_none());
    }

    /// live-boot's unions as the kernel shows them: `/ union` (full persistence) and
    /// `/home/user/Music union`, with a `//` as live-boot's paths may have.
    const UNIONS: &str = "\
1 0 0:30 / / rw,noatime - overlay overlay rw,lowerdir=/run/live/rootfs/filesystem.squashfs/,upperdir=/run/live/persistence/sdb2//rw,workdir=/run/live/persistence/sdb2//work
30 1 254:0 / /run/live/persistence/sdb2 rw,noatime - ext4 /dev/mapper/sdb2 rw
31 1 0:31 / /home/user/Music rw,noatime - overlay overlay rw,lowerdir=/home/user/Music,upperdir=/run/live/persistence/sdb2/Music/rw,workdir=/run/live/persistence/sdb2/Music/work,redirect_dir=on
32 1 0:32 / /srv/odd\\040dir rw - overlay overlay rw,lowerdir=/srv/odd\\040dir,upperdir=/run/live/persistence/sdb3/a\\054b/rw,workdir=/run/live/persistence/sdb3/a\\054b/work
";

    #[test]
    fn recognises_unions_by_their_upper_folder() {
        let t = parse_mountinfo(UNIONS);
        let vol = Path::new("/run/live/persistence/sdb2");
        let music = Path::new("/home/user/Music");
        assert!(union_is_active(&t, vol, Path::new("Music"), music));
        assert!(!union_is_active(&t, vol, Path::new("Video"), music));
        assert!(!union_is_active(
            &t,
            Path::new("/run/live/persistence/sdb3"),
            Path::new("Music"),
            music
        ));
        // A bind is not a union, even at the same place.
        let bind = parse_mountinfo(
            "40 1 254:0 /Music/rw /home/user/Music rw - ext4 /dev/mapper/sdb2 rw\n",
        );
        assert!(!union_is_active(&bind, vol, Path::new("Music"), music));
        // source=. is the volume root; escaped commas in a source are unescaped.
        assert!(union_is_active(&t, vol, Path::new("."), Path::new("/")));
        assert!(union_is_active(
            &t,
            Path::new("/run/live/persistence/sdb3"),
            Path::new("a,b"),
            Path::new("/srv/odd dir")
        ));
        let points: Vec<_> = unions_of(&t, vol).iter().map(|m| m.id).collect();
        assert_eq!(points, vec![1, 31]);
    }

    #[test]
    fn a_root_overlay_on_the_volume_is_full_persistence() {
        let t = parse_mountinfo(UNIONS);
        assert_eq!(
            root_union(&t, Path::new("/run/live/persistence/sdb2")).map(|m| m.id),
            Some(1)
        );
        // Another volume, or a root overlay on the RAM (the usual live system), is not.
        assert!(root_union(&t, Path::new("/run/live/persistence/sdb20")).is_none());
        let amnesic = parse_mountinfo(
            "1 0 0:30 / / rw - overlay overlay rw,lowerdir=/run/live/rootfs/filesystem.squashfs/,upperdir=/run/live/overlay/rw,workdir=/run/live/overlay/work\n",
        );
        assert!(root_union(&amnesic, Path::new("/run/live/persistence/sdb2")).is_none());
    }

    #[test]
    fn unescape_handles_edges() {
        assert_eq!(unescape("a\\134b"), "a\\b");
        assert_eq!(unescape("tail\\04"), "tail\\04");
        assert_eq!(unescape("\\011tab"), "\ttab");
    }

    fn is_mount_point(path: &Path) -> bool {
        read_mountinfo()
            .unwrap()
            .iter()
            .any(|m| m.mount_point == path)
    }

    /// A new tmpfs mounted at `p` (made first, with its parents).
    fn tmpfs(p: &Path) {
        std::fs::create_dir_all(p).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            p,
            Some("tmpfs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
    }

    #[test]
    fn unmount_cannot_be_sent_elsewhere_by_a_swapped_folder() {
        assert!(nix::unistd::geteuid().is_root(), "this test needs root");
        let tmp = tempfile::tempdir().unwrap();
        let tmp = tmp.path().canonicalize().unwrap();
        // The system's mount, and the user's, at the same name.
        tmpfs(&tmp.join("system/proc"));
        tmpfs(&tmp.join("home/a/proc"));
        // The user moves its folder away and puts a symlink to the system's in its place.
        std::fs::rename(tmp.join("home/a"), tmp.join("home/a-moved")).unwrap();
        std::os::unix::fs::symlink(tmp.join("system"), tmp.join("home/a")).unwrap();
        let err = unmount(&tmp.join("home/a/proc")).unwrap_err();
        assert!(matches!(err, Error::InUse(_)), "{err}");
        assert!(
            is_mount_point(&tmp.join("system/proc")),
            "the system's mount stays"
        );
        // Negative control: umount2 by path with UMOUNT_NOFOLLOW follows the swapped folder.
        nix::mount::umount2(
            &tmp.join("home/a/proc"),
            nix::mount::MntFlags::UMOUNT_NOFOLLOW,
        )
        .unwrap();
        assert!(
            !is_mount_point(&tmp.join("system/proc")),
            "the naive unmount was redirected"
        );
        // The real one, where it is now, unmounts through its folder.
        unmount(&tmp.join("home/a-moved/proc")).unwrap();
        assert!(!is_mount_point(&tmp.join("home/a-moved/proc")));
    }

    /// Under systemd every mount is shared. A volume mounted there, a feature bound from
    /// it, and a nested feature mounted on that one: without make_private the nested
    /// mount shows in the volume's own folder too (a bind of a shared mount is its peer).
    #[test]
    fn a_private_volume_keeps_nested_features_out_of_its_folders() {
        assert!(nix::unistd::geteuid().is_root(), "this test needs root");
        let nested_shows_in_volume = |private: bool| {
            let tmp = tempfile::tempdir().unwrap();
            let tmp = tmp.path().canonicalize().unwrap();
            let session = tmp.join("session");
            tmpfs(&session);
            nix::mount::mount(
                None::<&str>,
                &session,
                None::<&str>,
                MsFlags::MS_SHARED,
                None::<&str>,
            )
            .unwrap();
            let volume = session.join("volume");
            tmpfs(&volume);
            std::fs::create_dir_all(volume.join("www/uploads")).unwrap();
            std::fs::create_dir_all(volume.join("uploads")).unwrap();
            std::fs::create_dir_all(session.join("srv/www")).unwrap();
            if private {
                make_private(&volume).unwrap();
            }
            let www = crate::safefs::open_dir(&volume.join("www"), None)
                .unwrap()
                .0;
            bind(
                &www,
                &crate::safefs::open_dir(&session.join("srv/www"), None)
                    .unwrap()
                    .0,
            )
            .unwrap();
            let uploads = crate::safefs::open_dir(&volume.join("uploads"), None)
                .unwrap()
                .0;
            bind(
                &uploads,
                &crate::safefs::open_dir(&session.join("srv/www/uploads"), None)
                    .unwrap()
                    .0,
            )
            .unwrap();
            let shows = is_mount_point(&volume.join("www/uploads"));
            nix::mount::umount2(&session, nix::mount::MntFlags::MNT_DETACH).unwrap();
            shows
        };
        assert!(!nested_shows_in_volume(true), "kept out of the volume");
        // Negative control: the volume left shared, as the mount made it.
        assert!(nested_shows_in_volume(false), "a peer of the volume");
    }
}
