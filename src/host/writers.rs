//! Who can write a volume's bytes: that decides what the volume may do. The live user
//! knows the passphrase (it is typed in their session), so a container file they could
//! have replaced is theirs, whatever owners it shows inside. A volume is root's only when
//! nobody else could have written it: a block device no one but root may write, or a
//! container file judged, as OpenSSH's `safe_path()` judges a key file, by its owner, mode
//! and ACL, by every folder above it, and by the filesystem it lives on (FUSE, one
//! udisks mounted for a user, a vfat/exfat/ntfs stick mounted with a user's uid, a loop
//! device over a file someone else could write).
//!
//! The deciding functions are pure ([`judge_file`], [`judge_filesystem`], [`judge_node`])
//! and take the facts as arguments; [`open_container`] opens the file once, judges that
//! open file, and hands it back so that the file judged is the file the loop device gets.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::host::mounts::Mount;
use crate::safefs::{AclEntry, Owner, acl_at};

/// Who could have written a volume's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Writers {
    /// Only root: the volume may carry system features.
    Root,
    /// Someone else too (why, in words): the volume is the live user's.
    NotOnlyRoot(String),
}

impl Writers {
    /// Why someone other than root could have written it, if anyone could.
    pub fn why(&self) -> Option<&str> {
        match self {
            Writers::Root => None,
            Writers::NotOnlyRoot(why) => Some(why),
        }
    }
}

/// The live user as far as writing goes: their uid and groups (none known: nobody).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LiveIds {
    pub uid: Option<u32>,
    pub gids: Vec<u32>,
}

impl LiveIds {
    /// The live user of this system (the one named, else uid 1000), if there is one.
    pub fn of_this_system(name: Option<&str>) -> LiveIds {
        use crate::persistence::features::{Host, SystemHost};
        let host = SystemHost::new(name);
        match host.live_user() {
            Ok(user) => LiveIds {
                uid: Some(user.uid),
                gids: host.groups_of(user),
            },
            Err(_) => LiveIds::default(),
        }
    }
}

/// One file or folder as the judge sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub path: PathBuf,
    pub owner: Owner,
    pub acl: Vec<AclEntry>,
}

const STICKY: u32 = 0o1000;

/// Why someone other than root could replace or change a file or folder, if anyone
/// could: a non-root owner (who may chmod it), write for others or for a group other
/// than root's, or an ACL entry that lets a named user or group write. A folder with the
/// sticky bit (/tmp) lets others add names but not replace an entry root owns, so its
/// group and other write do not count: the file itself is judged by its own owner.
pub fn judge_node(node: &Node, is_folder: bool) -> Option<String> {
    let o = node.owner;
    let path = node.path.display();
    if o.uid != 0 {
        return Some(format!("{path} belongs to uid {}", o.uid));
    }
    let sticky = is_folder && o.mode & STICKY != 0;
    if !sticky && o.mode & 0o002 != 0 {
        return Some(format!(
            "{path} is writable by everyone (mode {:04o})",
            o.mode
        ));
    }
    if !sticky && o.mode & 0o020 != 0 && o.gid != 0 {
        return Some(format!(
            "{path} is writable by group {} (mode {:04o})",
            o.gid, o.mode
        ));
    }
    acl_writer(&node.acl, |_| true).map(|who| format!("{path} has an ACL that lets {who} write"))
}

/// The first non-root user or group a POSIX ACL lets write (through its mask), if
/// `counts` says it matters.
fn acl_writer(acl: &[AclEntry], counts: impl Fn(&AclEntry) -> bool) -> Option<String> {
    let mask = acl
        .iter()
        .find(|e| e.tag == AclEntry::MASK)
        .map_or(0o7, |e| e.perm);
    acl.iter()
        .filter(|e| (e.tag == AclEntry::USER || e.tag == AclEntry::GROUP) && e.id != 0)
        .filter(|e| e.perm & mask & 0o2 != 0 && counts(e))
        .map(|e| {
            if e.tag == AclEntry::USER {
                format!("uid {}", e.id)
            } else {
                format!("group {}", e.id)
            }
        })
        .next()
}

/// Why someone other than root could write a block device node, if anyone could: a
/// non-root owner, write for others, or for a group or through an ACL the live user is
/// in. (A disk's node is `root:disk 0660`: the disk group is root's business unless the
/// live user is in it.)
pub fn judge_device_node(node: &Node, live: &LiveIds) -> Option<String> {
    let o = node.owner;
    let path = node.path.display();
    if o.uid != 0 {
        return Some(format!("{path} belongs to uid {}", o.uid));
    }
    if o.mode & 0o002 != 0 {
        return Some(format!(
            "{path} is writable by everyone (mode {:04o})",
            o.mode
        ));
    }
    if o.mode & 0o020 != 0 && live.gids.contains(&o.gid) {
        return Some(format!(
            "{path} is writable by group {}, which the live user is in",
            o.gid
        ));
    }
    acl_writer(&node.acl, |e| {
        (e.tag == AclEntry::USER && Some(e.id) == live.uid)
            || (e.tag == AclEntry::GROUP && live.gids.contains(&e.id))
    })
    .map(|who| format!("{path} has an ACL that lets the live user ({who}) write it"))
}

/// Filesystems without owners of their own: every file shows the owner the mount gives.
const OWNERLESS: [&str; 9] = [
    "vfat", "msdos", "exfat", "ntfs", "ntfs3", "hfs", "hfsplus", "udf", "iso9660",
];

/// Why someone other than root could replace the files of the filesystem mounted as
/// `mount`, judged by the mount alone: FUSE (a process serves every byte), a place where
/// udisks mounts a user's sticks or `utab_user` (util-linux's record of who asked for the
/// mount: udisks, or fstab's `user`), or a filesystem without owners mounted with a
/// user's uid or gid. The device under it is judged apart ([`judge_device_node`]).
pub fn judge_filesystem(mount: &Mount, utab_user: Option<&str>) -> Option<String> {
    let at = mount.mount_point.display();
    if mount.fstype == "fuse" || mount.fstype.starts_with("fuse.") || mount.fstype == "fuseblk" {
        return Some(format!(
            "it lives on a FUSE filesystem ({}, at {at}), whose bytes a user's process serves",
            mount.fstype
        ));
    }
    if let Some(user) = utab_user {
        return Some(format!("it lives on {at}, which {user} mounted"));
    }
    let under = |base: &str| {
        mount
            .mount_point
            .strip_prefix(base)
            .is_ok_and(|rest| rest.components().count() >= 2)
    };
    if under("/media") || under("/run/media") {
        return Some(format!(
            "it lives on {at}, where udisks mounts the sticks a user plugs in"
        ));
    }
    if OWNERLESS.contains(&mount.fstype.as_str()) {
        let ids = mount
            .options
            .split(',')
            .chain(mount.super_options.split(','))
            .filter_map(|o| {
                o.strip_prefix("uid=")
                    .or_else(|| o.strip_prefix("gid="))
                    .map(|v| (o, v))
            })
            .find(|(_, v)| v.parse::<u32>() != Ok(0));
        if let Some((option, _)) = ids {
            return Some(format!(
                "it lives on a {} filesystem at {at} mounted with {option}: every file there is that user's",
                mount.fstype
            ));
        }
    }
    None
}

/// Why someone other than root could have written the container file `file` (its
/// canonical path), held in the folders `above` (its parent first, up to `/`), on the
/// filesystem `mount`, if anyone could. `filesystem` is that mount's own verdict, with
/// the device under it ([`judge_filesystem`], [`judge_device_node`]).
pub fn judge_file(
    file: &Node,
    above: &[Node],
    mount: Option<&Mount>,
    filesystem: Option<String>,
) -> Writers {
    if let Some(why) = judge_node(file, false) {
        return Writers::NotOnlyRoot(why);
    }
    if let Some(why) = above.iter().find_map(|folder| judge_node(folder, true)) {
        return Writers::NotOnlyRoot(format!("{why}, so the file in it can be replaced"));
    }
    if mount.is_none() {
        return Writers::NotOnlyRoot(format!(
            "the filesystem holding {} is not in this mount table",
            file.path.display()
        ));
    }
    match filesystem {
        Some(why) => Writers::NotOnlyRoot(why),
        None => Writers::Root,
    }
}

/// How deep loop devices over files on loop devices are followed.
const MAX_DEPTH: usize = 4;

/// Opens the container file at `path` once (read-write, not following a symlink at its
/// end) and judges that open file: the file handed back is the one judged, and the one
/// the caller attaches to a loop device.
pub fn open_container(
    path: &Path,
    table: &[Mount],
    live: &LiveIds,
) -> std::io::Result<(File, Writers)> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", path.display()),
        ));
    }
    let node = Node {
        path: path.to_path_buf(),
        owner: owner_of(&meta),
        acl: acl_of_fd(&file),
    };
    let writers = judge_open_file(&node, meta.dev(), table, live, 0);
    Ok((file, writers))
}

/// Judges the volume at `path`: a block device by its node (and, for a loop device, the
/// file under it), anything else as a container file, by path.
pub fn judge_backing(path: &Path, table: &[Mount], live: &LiveIds) -> Writers {
    judge_backing_at(path, table, live, 0)
}

fn judge_backing_at(path: &Path, table: &[Mount], live: &LiveIds, depth: usize) -> Writers {
    if depth > MAX_DEPTH {
        return Writers::NotOnlyRoot(format!(
            "{} sits on loop devices more than {MAX_DEPTH} deep",
            path.display()
        ));
    }
    // Judged where it really is: the folders above a symlink are not the file's.
    let real =
        std::fs::canonicalize(path).and_then(|p| std::fs::symlink_metadata(&p).map(|m| (p, m)));
    let (path, meta) = match real {
        Ok((p, m)) => (p, m),
        Err(e) => return Writers::NotOnlyRoot(format!("{} cannot be read: {e}", path.display())),
    };
    let path = path.as_path();
    if meta.file_type().is_block_device() {
        return judge_block_device(path, &meta, table, live, depth);
    }
    let node = Node {
        path: path.to_path_buf(),
        owner: owner_of(&meta),
        acl: acl_at(path, false),
    };
    judge_open_file(&node, meta.dev(), table, live, depth)
}

fn judge_block_device(
    path: &Path,
    meta: &std::fs::Metadata,
    table: &[Mount],
    live: &LiveIds,
    depth: usize,
) -> Writers {
    let node = Node {
        path: path.to_path_buf(),
        owner: owner_of(meta),
        acl: acl_at(path, false),
    };
    if let Some(why) = judge_device_node(&node, live) {
        return Writers::NotOnlyRoot(why);
    }
    // A loop device is as writable as the file under it.
    let rdev = meta.rdev();
    let name = crate::host::devices::kernel_name_of((libc::major(rdev), libc::minor(rdev)));
    if let Some(name) = name.filter(|n| n.starts_with("loop"))
        && let Some(file) = crate::host::devices::loop_backing_file(&name)
    {
        return match judge_backing_at(&file, table, live, depth + 1) {
            Writers::Root => Writers::Root,
            Writers::NotOnlyRoot(why) => Writers::NotOnlyRoot(format!(
                "{} is a loop device over {}, and {why}",
                path.display(),
                file.display()
            )),
        };
    }
    Writers::Root
}

/// Judges a file whose own facts are read: the folders above it, and its filesystem
/// (the mount of device `dev` whose mount point is the longest prefix of the path).
fn judge_open_file(
    node: &Node,
    dev: u64,
    table: &[Mount],
    live: &LiveIds,
    depth: usize,
) -> Writers {
    let above: Vec<Node> = node
        .path
        .ancestors()
        .skip(1)
        .filter_map(|folder| {
            let meta = std::fs::symlink_metadata(folder).ok()?;
            Some(Node {
                path: folder.to_path_buf(),
                owner: owner_of(&meta),
                acl: acl_at(folder, false),
            })
        })
        .collect();
    let mount = mount_holding(table, &node.path, dev);
    let filesystem = mount.and_then(|m| {
        judge_filesystem(m, utab_user(&m.mount_point).as_deref())
            .or_else(|| judge_mount_source(m, table, live, depth))
    });
    judge_file(node, &above, mount, filesystem)
}

/// The mount that holds the file at the canonical `path` in this mount namespace: the one
/// whose mount point is the longest prefix of the path (the last mounted, of several
/// there), as path lookup finds it. (The file's own st_dev cannot say: overlayfs, the
/// root of most live systems, reports a device of its own for files of its layers.) A
/// mount of device `dev` at that place goes first.
pub fn mount_holding<'a>(table: &'a [Mount], path: &Path, dev: u64) -> Option<&'a Mount> {
    let dev = (libc::major(dev), libc::minor(dev));
    table
        .iter()
        .enumerate()
        .filter(|(_, m)| path.starts_with(&m.mount_point))
        .max_by_key(|(i, m)| (m.mount_point.components().count(), m.dev == dev, *i))
        .map(|(_, m)| m)
}

/// The device a filesystem is mounted from, judged as a volume is.
fn judge_mount_source(
    mount: &Mount,
    table: &[Mount],
    live: &LiveIds,
    depth: usize,
) -> Option<String> {
    let source = Path::new(&mount.source);
    if !source.starts_with("/dev/") {
        return None;
    }
    match judge_backing_at(source, table, live, depth + 1) {
        Writers::Root => None,
        Writers::NotOnlyRoot(why) => Some(format!(
            "it lives on {}, mounted from {}: {why}",
            mount.mount_point.display(),
            source.display()
        )),
    }
}

/// Who util-linux recorded as asking for the mount at `mount_point` (/run/mount/utab:
/// udisks' `uhelper=udisks2`, fstab's `user=NAME`), if anyone.
fn utab_user(mount_point: &Path) -> Option<String> {
    let text = std::fs::read_to_string("/run/mount/utab").ok()?;
    utab_user_in(&text, mount_point)
}

/// [`utab_user`] over the file's text (pure).
pub fn utab_user_in(text: &str, mount_point: &Path) -> Option<String> {
    text.lines().find_map(|line| {
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(name))
                .map(crate::host::mounts::unescape)
        };
        if field("TARGET=").as_deref() != Some(mount_point.as_os_str().to_str()?) {
            return None;
        }
        let opts = field("OPTS=").unwrap_or_default();
        opts.split(',').find_map(|o| {
            if o == "uhelper=udisks2" {
                Some("udisks (for a user)".to_string())
            } else {
                o.strip_prefix("user=").map(|u| format!("the user {u}"))
            }
        })
    })
}

fn owner_of(meta: &std::fs::Metadata) -> Owner {
    Owner {
        uid: meta.uid(),
        gid: meta.gid(),
        mode: meta.mode() & 0o7777,
    }
}

fn acl_of_fd(file: &File) -> Vec<AclEntry> {
    acl_at(
        &Path::new("/proc/self/fd").join(file.as_raw_fd().to_string()),
        true,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::mounts::parse_mountinfo;

    fn node(path: &str, uid: u32, gid: u32, mode: u32) -> Node {
        Node {
            path: PathBuf::from(path),
            owner: Owner { uid, gid, mode },
            acl: vec![],
        }
    }

    fn root_folders(path: &str) -> Vec<Node> {
        Path::new(path)
            .ancestors()
            .skip(1)
            .map(|p| node(p.to_str().unwrap(), 0, 0, 0o755))
            .collect()
    }

    fn mount(line: &str) -> Mount {
        parse_mountinfo(line).remove(0)
    }

    const ROOT_EXT4: &str = "30 1 8:18 / /mnt/store rw - ext4 /dev/sdb2 rw\n";

    #[test]
    fn a_root_file_in_root_folders_on_a_root_filesystem_is_roots() {
        let m = mount(ROOT_EXT4);
        let file = node("/mnt/store/vault.img", 0, 0, 0o600);
        let verdict = judge_file(&file, &root_folders("/mnt/store/vault.img"), Some(&m), None);
        assert_eq!(verdict, Writers::Root);
        // A sticky folder others write (/tmp) cannot lose root's file to them.
        let mut above = root_folders("/tmp/vault.img");
        above[0] = node("/tmp", 0, 0, 0o1777);
        let file = node("/tmp/vault.img", 0, 0, 0o600);
        assert_eq!(judge_file(&file, &above, Some(&m), None), Writers::Root);
    }

    #[test]
    fn the_file_its_folders_and_its_filesystem_each_can_make_it_the_users() {
        let m = mount(ROOT_EXT4);
        let path = "/mnt/store/vault.img";
        let user = |file: Node, above: Vec<Node>, fs: Option<String>| {
            judge_file(&file, &above, Some(&m), fs)
                .why()
                .map(str::to_string)
                .expect("someone other than root")
        };
        let why = user(node(path, 1000, 1000, 0o600), root_folders(path), None);
        assert!(why.contains("belongs to uid 1000"), "{why}");
        let why = user(node(path, 0, 0, 0o666), root_folders(path), None);
        assert!(why.contains("writable by everyone"), "{why}");
        let why = user(node(path, 0, 100, 0o660), root_folders(path), None);
        assert!(why.contains("group 100"), "{why}");
        // Root's group may write: only root is in it.
        assert_eq!(
            judge_file(
                &node(path, 0, 0, 0o660),
                &root_folders(path),
                Some(&m),
                None
            ),
            Writers::Root
        );
        let mut acl_file = node(path, 0, 0, 0o600);
        acl_file.acl = vec![
            AclEntry {
                tag: AclEntry::USER,
                perm: 0o6,
                id: 1000,
            },
            AclEntry {
                tag: AclEntry::MASK,
                perm: 0o6,
                id: u32::MAX,
            },
        ];
        let why = user(acl_file.clone(), root_folders(path), None);
        assert!(why.contains("ACL") && why.contains("uid 1000"), "{why}");
        // The mask takes write away: root's again.
        acl_file.acl[1].perm = 0o4;
        assert_eq!(
            judge_file(&acl_file, &root_folders(path), Some(&m), None),
            Writers::Root
        );
        // A folder above the user owns (an ext4 stick's root is the user's).
        let mut above = root_folders(path);
        above[0] = node("/mnt/store", 1000, 1000, 0o755);
        let why = user(node(path, 0, 0, 0o600), above, None);
        assert!(
            why.contains("/mnt/store belongs to uid 1000") && why.contains("replaced"),
            "{why}"
        );
        // The filesystem's own verdict.
        let why = user(
            node(path, 0, 0, 0o600),
            root_folders(path),
            Some("it lives on a FUSE filesystem".into()),
        );
        assert!(why.contains("FUSE"), "{why}");
        // A file whose filesystem is not in the table is not taken on trust.
        assert!(
            judge_file(&node(path, 0, 0, 0o600), &root_folders(path), None, None)
                .why()
                .is_some()
        );
    }

    #[test]
    fn filesystems_a_user_controls_are_named() {
        let fuse = mount("40 1 0:50 / /home/amnesia/fs rw - fuse.sshfs host:/ rw,user_id=1000\n");
        assert!(judge_filesystem(&fuse, None).unwrap().contains("FUSE"));
        let udisks = mount("41 1 8:33 / /media/amnesia/STICK rw - ext4 /dev/sdc1 rw\n");
        assert!(judge_filesystem(&udisks, None).unwrap().contains("udisks"));
        let run_media = mount("42 1 8:33 / /run/media/amnesia/STICK rw - ext4 /dev/sdc1 rw\n");
        assert!(judge_filesystem(&run_media, None).is_some());
        let vfat =
            mount("43 1 8:49 / /mnt/fat rw - vfat /dev/sdd1 rw,uid=1000,gid=1000,fmask=0022\n");
        let why = judge_filesystem(&vfat, None).unwrap();
        assert!(why.contains("vfat") && why.contains("uid=1000"), "{why}");
        // vfat mounted by root for root: its files are root's to write.
        let root_vfat = mount("44 1 8:49 / /mnt/fat rw - vfat /dev/sdd1 rw,fmask=0022\n");
        assert_eq!(judge_filesystem(&root_vfat, None), None);
        // Mounted by root where udisks does not mount: judged by the utab record.
        let plain = mount(ROOT_EXT4);
        assert_eq!(judge_filesystem(&plain, None), None);
        let why = judge_filesystem(&plain, Some("udisks (for a user)")).unwrap();
        assert!(why.contains("which udisks"), "{why}");
    }

    #[test]
    fn the_mount_holding_a_file_is_the_longest_prefix() {
        let table = parse_mountinfo(
            "20 1 0:30 / / rw - overlay overlay rw,lowerdir=/run/live/rootfs/filesystem.squashfs\n\
             30 20 8:33 / /media/amnesia/STICK rw - vfat /dev/sdc1 rw,uid=1000\n\
             31 20 8:18 / /media rw - ext4 /dev/sdb2 rw\n\
             32 30 0:45 / /media/amnesia/STICK/inner rw - tmpfs tmpfs rw\n",
        );
        let dev = |major: u32, minor: u32| libc::makedev(major, minor);
        let at = |p: &str, d| mount_holding(&table, Path::new(p), d).map(|m| m.id);
        // A file of the root overlay reports a device of overlayfs' own: still the root.
        assert_eq!(at("/root/vault.img", dev(0, 99)), Some(20));
        assert_eq!(at("/media/amnesia/STICK/vault.img", dev(8, 33)), Some(30));
        assert_eq!(at("/media/amnesia/STICK/inner/v.img", dev(0, 45)), Some(32));
        assert_eq!(at("/media/other/v.img", dev(8, 18)), Some(31));
        // "/media/amnesia/STICKY" is not under "/media/amnesia/STICK".
        assert_eq!(at("/media/amnesia/STICKY/v.img", dev(8, 18)), Some(31));
    }

    #[test]
    fn utab_says_who_asked_for_a_mount() {
        let utab = "SRC=/dev/sdc1 TARGET=/mnt/stick ROOT=/ OPTS=uhelper=udisks2\n\
                    SRC=/dev/sdd1 TARGET=/mnt/with\\040space ROOT=/ OPTS=user=amnesia\n\
                    SRC=/dev/sde1 TARGET=/mnt/other ROOT=/ OPTS=x-keep\n";
        assert_eq!(
            utab_user_in(utab, Path::new("/mnt/stick")).as_deref(),
            Some("udisks (for a user)")
        );
        assert_eq!(
            utab_user_in(utab, Path::new("/mnt/with space")).as_deref(),
            Some("the user amnesia")
        );
        assert_eq!(utab_user_in(utab, Path::new("/mnt/other")), None);
        assert_eq!(utab_user_in(utab, Path::new("/mnt/none")), None);
    }

    #[test]
    fn a_disk_node_is_the_users_only_through_a_group_or_acl_they_have() {
        let live = LiveIds {
            uid: Some(1000),
            gids: vec![1000, 24],
        };
        let disk = node("/dev/sdb2", 0, 6, 0o660);
        assert_eq!(judge_device_node(&disk, &live), None);
        let mut in_disk = live.clone();
        in_disk.gids.push(6);
        assert!(
            judge_device_node(&disk, &in_disk)
                .unwrap()
                .contains("group 6")
        );
        let mut acl = disk.clone();
        acl.acl = vec![AclEntry {
            tag: AclEntry::USER,
            perm: 0o6,
            id: 1000,
        }];
        assert!(judge_device_node(&acl, &live).unwrap().contains("ACL"));
        // Nobody known as the live user: an ACL for uid 1000 is still no one's.
        assert_eq!(judge_device_node(&acl, &LiveIds::default()), None);
        assert!(judge_device_node(&node("/dev/sdb2", 0, 6, 0o666), &live).is_some());
    }

    #[test]
    fn the_open_file_is_judged_and_handed_back() {
        // A file of our own (root's, or not, as the test runs): the verdict follows its
        // owner, and the descriptor is that file's.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vol.img");
        std::fs::write(&path, b"LUKS").unwrap();
        let table = crate::host::mounts::read_mountinfo().unwrap();
        let (file, writers) = open_container(&path, &table, &LiveIds::default()).unwrap();
        assert_eq!(
            file.metadata().unwrap().ino(),
            std::fs::metadata(&path).unwrap().ino()
        );
        if nix::unistd::geteuid().is_root() {
            // Root's file in a 0700 temporary folder: judged by the folders above it and
            // the filesystem, which on a build machine may be anything; a file made
            // writable by all is never root's alone.
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o666))
                .unwrap();
            let (_, writers) = open_container(&path, &table, &LiveIds::default()).unwrap();
            assert!(writers.why().unwrap().contains("writable by everyone"));
        } else {
            assert!(writers.why().unwrap().contains("belongs to uid"));
        }
        // A symlink at the end is not followed.
        let link = dir.path().join("link.img");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(open_container(&link, &table, &LiveIds::default()).is_err());
        // Judged by path, a symlink is judged where it leads: the file's folders count.
        assert_eq!(
            judge_backing(&link, &table, &LiveIds::default()),
            judge_backing(&path, &table, &LiveIds::default())
        );
    }
}
