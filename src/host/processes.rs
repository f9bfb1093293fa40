//! Processes that hold files of the volume open, or keep it mounted in a mount namespace
//! of their own, found through /proc, and ending them for `lock --force`.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A process using the volume, and how.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Holder {
    pub pid: i32,
    pub name: String,
    /// What of it is on the volume: "cwd", "root", "exe", "fd 3", "mmap", or the mount
    /// namespace that keeps it mounted.
    pub uses: Vec<String>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (pid {}: {})",
            self.name,
            self.pid,
            self.uses.join(", ")
        )
    }
}

fn dev_of(meta: &std::fs::Metadata) -> (u32, u32) {
    (libc::major(meta.dev()), libc::minor(meta.dev()))
}

fn on_device(path: &Path, dev: (u32, u32)) -> bool {
    std::fs::metadata(path).is_ok_and(|m| dev_of(&m) == dev)
}

/// Parses the device field of one /proc/PID/maps line ("fe:00", hex).
fn maps_line_dev(line: &str) -> Option<(u32, u32)> {
    let dev = line.split_whitespace().nth(3)?;
    let (a, b) = dev.split_once(':')?;
    Some((
        u32::from_str_radix(a, 16).ok()?,
        u32::from_str_radix(b, 16).ok()?,
    ))
}

/// A mount namespace's identity: the device and inode of its nsfs file, which are also
/// what a descriptor of that file shows.
type Namespace = (u64, u64);

fn mount_namespace(pid: &str) -> Option<Namespace> {
    std::fs::metadata(format!("/proc/{pid}/ns/mnt"))
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// The mount namespaces other than ours, each with the ways in: entries of /proc
/// (relative to it) that open its nsfs file: `PID/ns/mnt` of a process in it, and with
/// `descriptors`, `PID/fd/N` of a process that keeps it open (a namespace kept alive
/// by a descriptor alone has no process in it). Cheap when there is none: one stat per
/// process (and per descriptor with `descriptors`).
fn foreign_namespaces(
    ours: Option<Namespace>,
    descriptors: bool,
) -> HashMap<Namespace, Vec<String>> {
    let mut found: HashMap<Namespace, Vec<String>> = HashMap::new();
    for pid in pids() {
        // Kernel threads are left out: devtmpfs' own keeps a private namespace from boot on
        // every system, made before any volume was mounted, and no user starts one.
        if let Some(ns) = mount_namespace(&pid.to_string())
            && Some(ns) != ours
            && !is_kernel_thread(pid)
        {
            found.entry(ns).or_default().push(format!("{pid}/ns/mnt"));
        }
        let Some((nsfs, _)) = ours.filter(|_| descriptors) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.filter_map(|e| e.ok()) {
            let Ok(meta) = std::fs::metadata(fd.path()) else {
                continue;
            };
            let ns = (meta.dev(), meta.ino());
            // Every kind of namespace lives on nsfs: only the mount ones count.
            if meta.dev() != nsfs
                || Some(ns) == ours
                || !std::fs::read_link(fd.path())
                    .is_ok_and(|l| l.as_os_str().as_bytes().starts_with(b"mnt:"))
            {
                continue;
            }
            found
                .entry(ns)
                .or_default()
                .push(format!("{pid}/fd/{}", fd.file_name().to_string_lossy()));
        }
    }
    found
}

/// What a look inside one mount namespace found.
#[derive(Clone, Debug, Default)]
struct Inside {
    /// Where the volume is mounted there, as the namespace's root sees them.
    mounts: Vec<PathBuf>,
    /// The namespace's root (device, inode): a process whose root differs is chrooted.
    root: Option<(u64, u64)>,
    /// Why the namespace could not be looked into, when it could not (it then counts as
    /// holding the volume: better refuse, or end its processes, than leave a mapping).
    unseen: Option<String>,
}

impl Inside {
    fn holds(&self) -> bool {
        !self.mounts.is_empty() || self.unseen.is_some()
    }

    fn unseen(why: String) -> Inside {
        Inside {
            unseen: Some(why),
            ..Inside::default()
        }
    }
}

/// Looks inside each namespace of `doors` for mounts of `dev`, and with `detach` detaches
/// them there. The mount table of a namespace is read from inside it, not from
/// /proc/PID/mountinfo of its processes: that one is relative to the process's root, and
/// a process chrooted (or in a private /proc) shows none of the namespace's other mounts.
/// Done on a thread of its own, which alone enters the namespaces and then ends.
fn look_inside(
    doors: &HashMap<Namespace, Vec<String>>,
    dev: (u32, u32),
    detach: bool,
) -> HashMap<Namespace, Inside> {
    // Read here, in our own namespace, before the thread leaves it.
    let ours = our_peer_groups(dev);
    std::thread::scope(|s| {
        s.spawn(|| enter_each(doors, dev, detach, &ours))
            .join()
            .unwrap_or_else(|_| {
                doors
                    .keys()
                    .map(|ns| {
                        (
                            *ns,
                            Inside::unseen("not looked into: the looking thread failed".into()),
                        )
                    })
                    .collect()
            })
    })
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

fn open_at(dir: &OwnedFd, path: &str, flags: libc::c_int) -> std::io::Result<OwnedFd> {
    let c = CString::new(path).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: a valid descriptor and NUL-terminated path; the result is checked.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: a descriptor just opened, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Where our own mounts of `dev` are, each with the peer group of the mount it is on
/// (when that one is shared): an unmount propagates through the parent's group, to the
/// mount at the same place on each of its peers and slaves.
fn our_peer_groups(dev: (u32, u32)) -> Vec<(PathBuf, u32)> {
    let table = crate::host::mounts::read_mountinfo().unwrap_or_default();
    table
        .iter()
        .filter(|m| m.dev == dev)
        .filter_map(|m| {
            let parent = table.iter().find(|p| p.id == m.parent)?;
            Some((m.mount_point.clone(), parent.shared?))
        })
        .collect()
}

/// Whether a mount in another namespace goes when ours go: it is at the place of one of
/// ours, on a mount that is a peer or a slave of the one ours is on. systemd gives many
/// services (udevd, logind, tor) a namespace of their own whose mounts are slaves of the
/// host's, so every mount keepsake makes shows there too, and its unmount takes those
/// copies with it (or fails, busy, if one is in use, which the holders' files then name).
fn follows_ours(
    mount: &crate::host::mounts::Mount,
    parent: Option<&crate::host::mounts::Mount>,
    ours: &[(PathBuf, u32)],
) -> bool {
    let Some(parent) = parent else {
        return false;
    };
    ours.iter().any(|(point, group)| {
        mount.mount_point == *point
            && (parent.shared == Some(*group) || parent.master == Some(*group))
    })
}

/// The body of [`look_inside`]'s thread.
fn enter_each(
    doors: &HashMap<Namespace, Vec<String>>,
    dev: (u32, u32),
    detach: bool,
    ours: &[(PathBuf, u32)],
) -> HashMap<Namespace, Inside> {
    let all_unseen = |why: String| {
        doors
            .keys()
            .map(|ns| (*ns, Inside::unseen(why.clone())))
            .collect()
    };
    // The host's /proc, opened before any setns: a namespace's own /proc may be missing,
    // private to its pid namespace, or the user's.
    let proc = match std::fs::File::open("/proc") {
        Ok(f) => OwnedFd::from(f),
        Err(e) => return all_unseen(format!("not looked into: opening /proc: {e}")),
    };
    // setns into a mount namespace wants a thread that shares its root and working folder
    // with no other: this one unshares them, so the rest of keepsake stays where it is.
    // SAFETY: unshare takes no pointers.
    if unsafe { libc::unshare(libc::CLONE_FS) } != 0 {
        return all_unseen(format!("not looked into: unshare(CLONE_FS): {}", errno()));
    }
    let our_users = our_user_namespace();
    let mut seen = HashMap::new();
    for (ns, ways) in doors {
        let inside = match enter(&proc, *ns, ways) {
            // Only a namespace of our own user namespace (systemd's services', root's) is
            // trusted to let its copies go with ours. In one the live user made, a copy can
            // be made to stay (a mount inside it, or the volume bound at the same path in
            // another folder): there every copy holds.
            Ok(Some(owner)) if owner.is_some() && owner == our_users => {
                look(&proc, dev, detach, ours)
            }
            Ok(Some(_)) => look(&proc, dev, detach, &[]),
            // Every way in is gone: so is the namespace, or it no longer is the same one.
            Ok(None) => continue,
            Err(e) => Inside::unseen(e),
        };
        seen.insert(*ns, inside);
    }
    seen
}

/// Moves this thread into `ns` through the first of `ways` that still opens it, and
/// tells the user namespace that owns it. None when no way in opens it any more.
fn enter(
    proc: &OwnedFd,
    ns: Namespace,
    ways: &[String],
) -> Result<Option<Option<Namespace>>, String> {
    let Some(fd) = open_namespace(proc, ns, ways) else {
        return Ok(None);
    };
    let owner = owning_user_namespace(&fd);
    // SAFETY: a valid descriptor; setns takes no pointers.
    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNS) } != 0 {
        return Err(format!("not looked into: setns: {}", errno()));
    }
    Ok(Some(owner))
}

fn our_user_namespace() -> Option<Namespace> {
    std::fs::metadata("/proc/self/ns/user")
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// The user namespace that owns the namespace open as `fd` (NS_GET_USERNS).
fn owning_user_namespace(fd: &OwnedFd) -> Option<Namespace> {
    const NS_GET_USERNS: libc::c_ulong = 0xb701;
    // SAFETY: a valid descriptor; the ioctl takes no argument.
    let user = unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_USERNS) };
    if user < 0 {
        return None;
    }
    // SAFETY: a descriptor just returned, owned by nothing else.
    let user = unsafe { OwnedFd::from_raw_fd(user) };
    let st = nix::sys::stat::fstat(&user).ok()?;
    Some((st.st_dev, st.st_ino))
}

/// The nsfs file of `ns`, opened through the first of `ways` (entries of the host's
/// /proc) that still leads to it: a pid or descriptor number reused since the scan names
/// another file.
fn open_namespace(proc: &OwnedFd, ns: Namespace, ways: &[String]) -> Option<OwnedFd> {
    ways.iter().find_map(|way| {
        let fd = open_at(proc, way, libc::O_RDONLY).ok()?;
        let st = nix::sys::stat::fstat(&fd).ok()?;
        ((st.st_dev, st.st_ino) == ns).then_some(fd)
    })
}

/// In the namespace this thread entered: the volume's mounts that do not follow ours,
/// and detached with `detach`.
fn look(proc: &OwnedFd, dev: (u32, u32), detach: bool, ours: &[(PathBuf, u32)]) -> Inside {
    let mut text = String::new();
    // This thread's mountinfo: relative to its root, which setns put at the namespace's.
    let read = open_at(proc, "thread-self/mountinfo", libc::O_RDONLY)
        .and_then(|fd| std::fs::File::from(fd).read_to_string(&mut text));
    if let Err(e) = read {
        return Inside::unseen(format!("not looked into: reading its mount table: {e}"));
    }
    let all = crate::host::mounts::parse_mountinfo(&text);
    let table: Vec<_> = all
        .iter()
        .filter(|m| m.dev == dev && !follows_ours(m, all.iter().find(|p| p.id == m.parent), ours))
        .cloned()
        .collect();
    let root = std::fs::metadata("/").ok().map(|m| (m.dev(), m.ino()));
    if detach {
        // An unmount of a shared mount propagates to its peers, which may be ours (a
        // root's `unshare -m --propagation unchanged`): those are left to the ending of
        // the namespace's processes, as is what will not detach (a copy in a user
        // namespace is locked: EINVAL).
        let own: Vec<PathBuf> = table
            .iter()
            .filter(|m| m.shared.is_none())
            .map(|m| m.mount_point.clone())
            .collect();
        detach_mounts(proc, &own, dev);
    }
    let mounts = table.into_iter().map(|m| m.mount_point).collect();
    Inside {
        mounts,
        root,
        unseen: None,
    }
}

/// Detaches (MNT_DETACH) the volume's mounts at `points` in the namespace this thread
/// entered, deepest first. The user owns the folders there: each mount point is opened
/// without following any symlink, checked to be the volume's, and unmounted through its
/// descriptor (`thread-self/fd/N` of the host's /proc), never by its path again.
/// One that will not detach is left to the ending of the namespace's processes.
fn detach_mounts(proc: &OwnedFd, points: &[PathBuf], dev: (u32, u32)) {
    let mut order = points.to_vec();
    order.sort_by_key(|p| Reverse(p.components().count()));
    for point in order {
        let _ = detach_one(proc, &point, dev);
    }
}

fn detach_one(proc: &OwnedFd, point: &Path, dev: (u32, u32)) -> std::io::Result<()> {
    let c = CString::new(point.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: open_how is plain data; zeroed is its "nothing asked" value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    // An absolute path starts at this thread's root: the namespace's.
    // SAFETY: valid pointers to a NUL-terminated path and an open_how of the size given.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: a descriptor just opened, owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
    let st = nix::sys::stat::fstat(&fd)?;
    if (libc::major(st.st_dev), libc::minor(st.st_dev)) != dev {
        return Err(std::io::Error::other("something else is mounted there now"));
    }
    // The magic link names exactly the mount opened, whatever the path now leads to.
    // SAFETY: a valid descriptor.
    if unsafe { libc::fchdir(proc.as_raw_fd()) } != 0 {
        return Err(errno());
    }
    nix::mount::umount2(
        format!("thread-self/fd/{}", fd.as_raw_fd()).as_str(),
        nix::mount::MntFlags::MNT_DETACH,
    )?;
    Ok(())
}

/// The foreign mount namespaces that have a filesystem of `dev` mounted (or could not
/// be looked into), with what was seen there.
fn namespaces_holding(
    dev: (u32, u32),
    ours: Option<Namespace>,
    descriptors: bool,
) -> HashMap<Namespace, Inside> {
    let doors = foreign_namespaces(ours, descriptors);
    if doors.is_empty() {
        return HashMap::new();
    }
    look_inside(&doors, dev, false)
        .into_iter()
        .filter(|(_, inside)| inside.holds())
        .collect()
}

/// `PF_KTHREAD` of <linux/sched.h>: the process is a kernel thread.
const PF_KTHREAD: u64 = 0x0020_0000;

/// Whether `pid` is a kernel thread, by the flags the kernel shows in /proc/PID/stat (the
/// 9th field; the command name before it may hold spaces and parentheses, so the fields
/// are counted after its last ')'). No process can set that flag.
fn is_kernel_thread(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .as_deref()
        .and_then(stat_flags)
        .is_some_and(|flags| flags & PF_KTHREAD != 0)
}

/// The flags field of a /proc/PID/stat line.
fn stat_flags(stat: &str) -> Option<u64> {
    let (_, after) = stat.rsplit_once(')')?;
    // After the name: state, ppid, pgrp, session, tty_nr, tpgid, flags.
    after.split_whitespace().nth(6)?.parse().ok()
}

fn pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
                .collect()
        })
        .unwrap_or_default()
}

/// The processes whose own mount namespace (a user's `unshare -m`, made while the volume
/// was mounted) still has the volume's filesystem mounted, chrooted or not: unmounting it
/// here leaves it mounted there, and the mapping cannot close. Cheap without foreign
/// namespaces (one stat per process); each foreign one is looked into once.
pub fn namespace_holders(dev: (u32, u32)) -> Vec<Holder> {
    holders_of_kind(dev, false, &HashMap::new())
}

/// Every process (but this one) with an open file, working folder, root, executable or
/// memory mapping on the filesystem of device `dev`, or in (or with a descriptor of) a
/// mount namespace of its own that keeps it mounted.
pub fn holders_of(dev: (u32, u32)) -> Vec<Holder> {
    holders_of_kind(dev, true, &HashMap::new())
}

/// `also`: namespaces counted as holding whatever they now show (those `end_holders`
/// detached the volume from: their processes are ended all the same), with what is
/// known of them.
fn holders_of_kind(
    dev: (u32, u32),
    files_too: bool,
    also: &HashMap<Namespace, Inside>,
) -> Vec<Holder> {
    let me = std::process::id() as i32;
    let ours = mount_namespace("self");
    // Every process of such a namespace holds it: ending them all frees the namespace.
    let mut holding = namespaces_holding(dev, ours, files_too);
    for (ns, inside) in also {
        holding.entry(*ns).or_insert_with(|| inside.clone());
    }
    let mut holders = Vec::new();
    // No foreign namespace holds it: asked only about namespaces, the second walk of
    // /proc (every process's namespace looked up again) would find nobody.
    if !files_too && holding.is_empty() {
        return holders;
    }
    let Ok(proc_dir) = std::fs::read_dir("/proc") else {
        return holders;
    };
    for entry in proc_dir.filter_map(|e| e.ok()) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let base = entry.path();
        let mut uses = Vec::new();
        if let Some(ns) = mount_namespace(&pid.to_string())
            && let Some(inside) = holding.get(&ns)
        {
            let root = std::fs::metadata(base.join("root"))
                .ok()
                .map(|m| (m.dev(), m.ino()));
            uses.push(if let Some(why) = &inside.unseen {
                format!("in its own mount namespace ({why})")
            } else if inside.root.is_some() && root != inside.root {
                "mounted in its own mount namespace (chrooted)".to_string()
            } else {
                "mounted in its own mount namespace".to_string()
            });
        }
        if !files_too {
            if !uses.is_empty() {
                holders.push(Holder {
                    pid,
                    name: comm(&base),
                    uses,
                });
            }
            continue;
        }
        for what in ["cwd", "root", "exe"] {
            if on_device(&base.join(what), dev) {
                uses.push(what.to_string());
            }
        }
        if let Ok(fds) = std::fs::read_dir(base.join("fd")) {
            for fd in fds.filter_map(|e| e.ok()) {
                let Ok(meta) = std::fs::metadata(fd.path()) else {
                    continue;
                };
                let name = fd.file_name();
                if dev_of(&meta) == dev {
                    uses.push(format!("fd {}", name.to_string_lossy()));
                } else if holding.contains_key(&(meta.dev(), meta.ino())) {
                    uses.push(format!(
                        "fd {}: a mount namespace that has it mounted",
                        name.to_string_lossy()
                    ));
                }
            }
        }
        if let Ok(maps) = std::fs::read_to_string(base.join("maps"))
            && maps.lines().any(|l| maps_line_dev(l) == Some(dev))
        {
            uses.push("mmap".into());
        }
        if !uses.is_empty() {
            holders.push(Holder {
                pid,
                name: comm(&base),
                uses,
            });
        }
    }
    holders.sort_by_key(|h| h.pid);
    holders
}

fn comm(base: &Path) -> String {
    std::fs::read_to_string(base.join("comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// Asks the holders to end (SIGTERM), waits up to `grace`, then kills those left
/// (SIGKILL) and waits again. Returns the holders still present afterwards.
///
/// Each foreign mount namespace that has the volume mounted is entered first and the
/// volume detached there (where it is not locked); every process of that namespace, and
/// every process keeping a descriptor of it, is ended all the same: they hid the volume.
pub fn end_holders(dev: (u32, u32), grace: Duration) -> Vec<Holder> {
    end_holders_also(dev, POLITE, grace, &detach_in_namespaces(dev))
}

/// As [`end_holders`], but SIGKILL at once: for a volume already gone (its key wiped),
/// where there is nothing left to save to and every moment a holder lives it keeps what it
/// read in its memory. Returns those found (one walk of /proc) and those left.
pub fn kill_holders(dev: (u32, u32), grace: Duration) -> (Vec<Holder>, Vec<Holder>) {
    let also = detach_in_namespaces(dev);
    let mut found: Option<Vec<Holder>> = None;
    let left = end_in_turn(
        &[Signal::SIGKILL],
        grace,
        || {
            let now = holders_of_kind(dev, true, &also);
            found.get_or_insert_with(|| now.clone());
            now
        },
        |h, signal| {
            let _ = kill(Pid::from_raw(h.pid), signal);
        },
    );
    (found.unwrap_or_default(), left)
}

/// SIGTERM first, to let a process save and go; SIGKILL to those still there.
const POLITE: &[Signal] = &[Signal::SIGTERM, Signal::SIGKILL];

/// Ends the holders of `dev` with `signals` in turn, counting the namespaces of `also` as
/// holding it; returns those left.
fn end_holders_also(
    dev: (u32, u32),
    signals: &[Signal],
    grace: Duration,
    also: &HashMap<Namespace, Inside>,
) -> Vec<Holder> {
    end_in_turn(
        signals,
        grace,
        || holders_of_kind(dev, true, also),
        |h, signal| {
            let _ = kill(Pid::from_raw(h.pid), signal);
        },
    )
}

/// Detaches the volume in every foreign mount namespace that has it mounted (see
/// [`detach_mounts`]); returns those namespaces.
fn detach_in_namespaces(dev: (u32, u32)) -> HashMap<Namespace, Inside> {
    let doors = foreign_namespaces(mount_namespace("self"), true);
    if doors.is_empty() {
        return HashMap::new();
    }
    look_inside(&doors, dev, true)
        .into_iter()
        .filter(|(_, inside)| inside.holds())
        .collect()
}

/// What a user namespace's mount namespace may hide: setns puts a thread on the top
/// mount of the namespace's root, and a mount the user stacked there (over `/`, then
/// chrooted into it) covers the copies of the volume's mounts below, which no mount
/// table read from inside shows (Linux 6.1 has no listmount). Only the closing of the
/// mapping tells that something still holds it.
const COVERED: &str = "made in a user namespace, whose root may cover the volume";

/// The foreign mount namespaces owned by a user namespace other than ours (made by a
/// user, who can stack a mount over their root), whatever they show.
fn user_made_namespaces() -> HashMap<Namespace, Inside> {
    let ours = our_user_namespace();
    let Ok(proc) = std::fs::File::open("/proc").map(OwnedFd::from) else {
        return HashMap::new();
    };
    let mut found = HashMap::new();
    for (ns, ways) in foreign_namespaces(mount_namespace("self"), true) {
        let owner = open_namespace(&proc, ns, &ways).and_then(|fd| owning_user_namespace(&fd));
        if owner.is_some() && owner != ours {
            found.insert(ns, Inside::unseen(COVERED.to_string()));
        }
    }
    found
}

/// The processes of mount namespaces made in a user namespace (and those keeping one
/// open), which may hide the volume under a mount over their root: the suspects when
/// the mapping will not close and no holder was found.
pub fn user_namespace_holders(dev: (u32, u32)) -> Vec<Holder> {
    let suspects = user_made_namespaces();
    if suspects.is_empty() {
        return Vec::new();
    }
    holders_of_kind(dev, true, &suspects)
}

/// `lock --force`'s last resort when the mapping will not close and no holder was
/// found: ends every process of [`user_namespace_holders`]. Returns those ended and those
/// left.
pub fn end_user_namespaces(dev: (u32, u32), grace: Duration) -> (Vec<Holder>, Vec<Holder>) {
    let suspects = user_made_namespaces();
    if suspects.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let found = holders_of_kind(dev, true, &suspects);
    (found, end_holders_also(dev, POLITE, grace, &suspects))
}

/// Sends each signal in turn to the processes `left` still finds, and waits up to `grace`
/// after each for them to be gone. Returns those left at the end. The one loop behind
/// ending the volume's holders (`lock --force`) and stopping tor; `send` decides how a
/// process is reached (a pid, or a pidfd that cannot hit a recycled pid).
pub(crate) fn end_in_turn<P>(
    signals: &[Signal],
    grace: Duration,
    mut left: impl FnMut() -> Vec<P>,
    send: impl Fn(&P, Signal),
) -> Vec<P> {
    for &signal in signals {
        let now = left();
        if now.is_empty() {
            return now;
        }
        for process in &now {
            send(process, signal);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if left().is_empty() {
                return Vec::new();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    left()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mount_on_a_peer_or_a_slave_of_our_mounts_parent_follows_ours() {
        let t = crate::host::mounts::parse_mountinfo(
            "36 35 98:0 / /home rw,noatime master:1 - ext3 /dev/root rw\n\
             37 36 98:0 / /home/u/P rw shared:4 master:9 - ext4 /dev/a rw\n\
             38 35 98:0 / /srv rw - ext4 /dev/b rw\n\
             39 38 98:0 / /srv/w rw - ext4 /dev/c rw\n\
             40 35 98:0 / /run rw shared:1 - tmpfs tmpfs rw\n\
             41 40 98:0 / /run/p rw - ext4 /dev/d rw\n",
        );
        assert_eq!((t[1].shared, t[1].master), (Some(4), Some(9)));
        assert_eq!((t[2].shared, t[2].master), (None, None));
        let ours = [
            (PathBuf::from("/home/u/P"), 1),
            (PathBuf::from("/run/p"), 1),
        ];
        let parent = |m: &crate::host::mounts::Mount| t.iter().find(|p| p.id == m.parent);
        // On a slave of group 1, at our place: follows. On a private mount: does not.
        assert!(follows_ours(&t[1], parent(&t[1]), &ours));
        assert!(!follows_ours(&t[3], parent(&t[3]), &ours));
        // On a peer of group 1, at our place: follows; elsewhere: does not.
        assert!(follows_ours(&t[5], parent(&t[5]), &ours));
        assert!(!follows_ours(&t[5], parent(&t[5]), &ours[..1]));
        assert!(!follows_ours(&t[1], None, &ours));
    }

    #[test]
    fn a_kernel_thread_is_told_by_its_stat_flags() {
        let kthread = "20 (kdevtmpfs) S 2 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 9 0 0";
        assert_eq!(stat_flags(kthread), Some(2129984));
        assert!(stat_flags(kthread).unwrap() & PF_KTHREAD != 0);
        // A name made to look like more fields does not move them.
        let user = "900 (a) S 1 2 3 4 5 2129984 (x) S 1 900 900 0 -1 4194560 10 0 0 0";
        assert_eq!(stat_flags(user), Some(4194560));
        assert!(stat_flags(user).unwrap() & PF_KTHREAD == 0);
        assert_eq!(stat_flags("garbage"), None);
        // Here: pid 2 (kthreadd) is one, this test process is not.
        assert!(is_kernel_thread(2));
        assert!(!is_kernel_thread(std::process::id() as i32));
    }

    #[test]
    fn parses_maps_device_field() {
        let line = "7f1c2a000000-7f1c2a021000 r--p 00000000 fe:01 1234  /live/persistence/x/lib.so";
        assert_eq!(maps_line_dev(line), Some((254, 1)));
        assert_eq!(maps_line_dev("garbage"), None);
    }

    #[test]
    fn finds_a_child_with_its_cwd_on_a_filesystem() {
        // Our own test files live on some filesystem; a child sitting in a folder there is
        // a holder of that device, and once it ends, it is not.
        let dir = tempfile::tempdir().unwrap();
        let meta = std::fs::metadata(dir.path()).unwrap();
        let dev = (libc::major(meta.dev()), libc::minor(meta.dev()));
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .current_dir(dir.path())
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let found = holders_of(dev);
        let h = found.iter().find(|h| h.pid == pid).expect("child listed");
        assert!(h.uses.contains(&"cwd".to_string()), "{h}");
        // end_holders is exercised in the VM only: here it would end every process on
        // the host's filesystem.
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(holders_of(dev).iter().all(|h| h.pid != pid));
    }

    /// The tests that make mount namespaces, one at a time: a namespace copies every
    /// mount there is, so another test's tmpfs would be held by it (and its process
    /// ended by `end_holders`).
    static NAMESPACES: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
        NAMESPACES.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A tmpfs mounted on a new folder, and its device.
    fn tmpfs() -> (tempfile::TempDir, (u32, u32)) {
        let dir = tempfile::tempdir().unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        let meta = std::fs::metadata(dir.path()).unwrap();
        (dir, dev_of(&meta))
    }

    /// The old look: the process's own /proc/PID/mountinfo, relative to its root.
    fn in_its_mountinfo(pid: i32, dev: (u32, u32)) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).is_ok_and(|text| {
            crate::host::mounts::parse_mountinfo(&text)
                .iter()
                .any(|m| m.dev == dev)
        })
    }

    /// A process in a mount namespace of its own (and a user namespace with `user`),
    /// chrooted into a folder of the host's filesystem that holds only a static busybox:
    /// the tmpfs is mounted in its namespace, but not under its root. Returned once it
    /// runs there.
    fn chrooted_in_a_namespace(user: bool) -> (std::process::Child, tempfile::TempDir) {
        let jail = tempfile::tempdir().unwrap();
        std::fs::create_dir(jail.path().join("bin")).unwrap();
        std::fs::copy("/bin/busybox", jail.path().join("bin/busybox"))
            .expect("a static /bin/busybox (busybox-static)");
        let mut args = vec!["--mount", "--propagation", "private"];
        if user {
            args.extend(["--user", "--map-root-user"]);
        }
        let child = std::process::Command::new("unshare")
            .args(args)
            .arg("chroot")
            .arg(jail.path())
            .args(["/bin/busybox", "sleep", "30"])
            .current_dir("/")
            .spawn()
            .unwrap();
        let base = PathBuf::from(format!("/proc/{}", child.id()));
        let deadline = Instant::now() + Duration::from_secs(5);
        while comm(&base) != "busybox" && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(comm(&base), "busybox", "the child runs in its jail");
        (child, jail)
    }

    #[test]
    fn a_chrooted_mount_namespace_that_has_the_filesystem_is_a_holder() {
        assert!(nix::unistd::geteuid().is_root(), "this test needs root");
        let _one = one_at_a_time();
        let (dir, dev) = tmpfs();
        let (mut child, _jail) = chrooted_in_a_namespace(false);
        let pid = child.id() as i32;
        nix::mount::umount(dir.path()).unwrap();
        // Negative control: its own mountinfo, the old look, shows nothing of the tmpfs.
        assert!(
            !in_its_mountinfo(pid, dev),
            "the old look would have seen it"
        );
        let found = namespace_holders(dev);
        let all = holders_of(dev);
        child.kill().unwrap();
        child.wait().unwrap();
        let h = found
            .iter()
            .find(|h| h.pid == pid)
            .expect("found from inside its namespace");
        assert_eq!(
            h.uses,
            vec!["mounted in its own mount namespace (chrooted)".to_string()]
        );
        assert!(all.iter().any(|h| h.pid == pid));
        assert!(namespace_holders(dev).iter().all(|h| h.pid != pid));
    }

    #[test]
    fn a_user_namespace_whose_root_is_covered_is_a_suspect() {
        assert!(nix::unistd::geteuid().is_root(), "this test needs root");
        let _one = one_at_a_time();
        let (dir, dev) = tmpfs();
        let jail = tempfile::tempdir().unwrap();
        std::fs::create_dir(jail.path().join("bin")).unwrap();
        std::fs::copy("/bin/busybox", jail.path().join("bin/busybox")).unwrap();
        // The jail bound over the namespace's own root, then the process chrooted into
        // it: setns puts a thread at that top mount, below which the tmpfs still is.
        let script = format!(
            "mount --bind {} / && cd / && exec chroot . /bin/busybox sleep 30",
            jail.path().display()
        );
        let mut child = std::process::Command::new("unshare")
            .args([
                "--user",
                "--map-root-user",
                "--mount",
                "--propagation",
                "private",
            ])
            .args(["sh", "-c", &script])
            .current_dir("/")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let base = PathBuf::from(format!("/proc/{pid}"));
        let deadline = Instant::now() + Duration::from_secs(5);
        while comm(&base) != "busybox" && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        nix::mount::umount(dir.path()).unwrap();
        let seen = namespace_holders(dev);
        let suspects = user_namespace_holders(dev);
        // Ending them is left to the VM: here it would end every user namespace's
        // processes on this machine.
        child.kill().unwrap();
        child.wait().unwrap();
        // The gap, pinned: neither its mountinfo nor a look from inside sees the tmpfs.
        assert!(!in_its_mountinfo(pid, dev));
        assert!(seen.iter().all(|h| h.pid != pid), "{seen:?}");
        let h = suspects
            .iter()
            .find(|h| h.pid == pid)
            .expect("a suspect: its namespace is a user's");
        assert_eq!(
            h.uses,
            vec![format!("in its own mount namespace ({COVERED})")]
        );
    }

    #[test]
    fn the_filesystem_is_detached_in_a_namespace_where_it_is_not_locked() {
        assert!(nix::unistd::geteuid().is_root(), "this test needs root");
        let _one = one_at_a_time();
        let (dir, dev) = tmpfs();
        let (mut child, _jail) = chrooted_in_a_namespace(false);
        let pid = child.id() as i32;
        nix::mount::umount(dir.path()).unwrap();
        let detached_from = detach_in_namespaces(dev);
        let after = namespace_holders(dev);
        let alive = child.try_wait().unwrap().is_none();
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(detached_from.len(), 1, "one namespace had it mounted");
        assert!(alive, "detaching ends nobody");
        assert!(
            after.iter().all(|h| h.pid != pid),
            "detached there: {after:?}"
        );
    }

    #[test]
    fn a_namespace_where_the_filesystem_is_locked_is_freed_by_ending_its_processes() {
        assert!(nix::unistd::geteuid().is_root(), "this test needs root");
        let _one = one_at_a_time();
        let (dir, dev) = tmpfs();
        // A user namespace's copy of the mounts is locked: it will not detach (EINVAL).
        let (mut child, _jail) = chrooted_in_a_namespace(true);
        let pid = child.id() as i32;
        nix::mount::umount(dir.path()).unwrap();
        assert!(
            !in_its_mountinfo(pid, dev),
            "the old look would have seen it"
        );
        detach_in_namespaces(dev);
        let after_detach = namespace_holders(dev);
        let left = end_holders(dev, Duration::from_millis(500));
        let status = child.wait().unwrap();
        assert!(
            after_detach.iter().any(|h| h.pid == pid),
            "locked: still mounted there"
        );
        assert!(left.is_empty(), "{left:?}");
        assert!(!status.success(), "ended by a signal: {status}");
        assert!(namespace_holders(dev).is_empty());
    }

    /// systemd's services' namespaces: slaves of the host's mounts. Their copies go with
    /// ours, so they hold nothing; a private copy (the negative control) does.
    #[test]
    fn a_slave_copy_of_our_mount_goes_with_it() {
        assert!(nix::unistd::geteuid().is_root(), "this test needs root");
        let _one = one_at_a_time();
        // A shared mount (as / is under systemd) with the filesystem mounted on it.
        let (parent, _) = tmpfs();
        nix::mount::mount(
            None::<&str>,
            parent.path(),
            None::<&str>,
            nix::mount::MsFlags::MS_SHARED,
            None::<&str>,
        )
        .unwrap();
        let dir = parent.path().join("volume");
        std::fs::create_dir(&dir).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &dir,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        let dev = dev_of(&std::fs::metadata(&dir).unwrap());
        let in_namespace = |propagation: &str, user: bool| {
            let user_args: &[&str] = if user {
                &["--user", "--map-root-user"]
            } else {
                &[]
            };
            let child = std::process::Command::new("unshare")
                .args(user_args)
                .args(["--mount", "--propagation", propagation, "sleep", "30"])
                .current_dir("/")
                .spawn()
                .unwrap();
            let pid = child.id() as i32;
            let deadline = Instant::now() + Duration::from_secs(5);
            while mount_namespace(&pid.to_string()) == mount_namespace("self")
                || !in_its_mountinfo(pid, dev)
            {
                assert!(Instant::now() < deadline, "the child has its namespace");
                std::thread::sleep(Duration::from_millis(20));
            }
            child
        };
        let mut slave = in_namespace("slave", false);
        let spid = slave.id() as i32;
        let with_slave = namespace_holders(dev);
        let mut private = in_namespace("private", false);
        let ppid = private.id() as i32;
        // A user's namespace is not trusted to let go, slave or not: it can mount inside
        // its copy, which keeps the copy there after our unmount.
        let mut users = in_namespace("slave", true);
        let upid = users.id() as i32;
        let with_all = namespace_holders(dev);
        users.kill().unwrap();
        users.wait().unwrap();
        nix::mount::umount(&dir).unwrap();
        let slave_after = in_its_mountinfo(spid, dev);
        for child in [&mut slave, &mut private] {
            child.kill().unwrap();
            child.wait().unwrap();
        }
        nix::mount::umount(parent.path()).unwrap();
        assert!(with_slave.iter().all(|h| h.pid != spid), "{with_slave:?}");
        assert!(with_all.iter().any(|h| h.pid == ppid), "{with_all:?}");
        assert!(with_all.iter().any(|h| h.pid == upid), "{with_all:?}");
        assert!(with_all.iter().all(|h| h.pid != spid), "{with_all:?}");
        assert!(!slave_after, "our unmount took the slave's copy with it");
    }

    #[test]
    fn a_mount_namespace_that_still_has_the_filesystem_is_a_holder() {
        assert!(nix::unistd::geteuid().is_root(), "this test needs root");
        let _one = one_at_a_time();
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        let meta = std::fs::metadata(dir.path()).unwrap();
        let dev = (libc::major(meta.dev()), libc::minor(meta.dev()));
        // A process that copies the mount table into a namespace of its own, from / (so
        // that nothing but its namespace holds the tmpfs).
        let mut child = std::process::Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sleep", "30"])
            .current_dir("/")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let deadline = Instant::now() + Duration::from_secs(5);
        let found = loop {
            let found = namespace_holders(dev);
            if found.iter().any(|h| h.pid == pid) || Instant::now() > deadline {
                break found;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        nix::mount::umount(dir.path()).unwrap();
        let after_umount = namespace_holders(dev);
        child.kill().unwrap();
        child.wait().unwrap();
        let h = found
            .iter()
            .find(|h| h.pid == pid)
            .expect("the namespace's process");
        assert_eq!(
            h.uses,
            vec!["mounted in its own mount namespace".to_string()]
        );
        assert!(
            after_umount.iter().any(|h| h.pid == pid),
            "unmounted here, still mounted there"
        );
        assert!(namespace_holders(dev).iter().all(|h| h.pid != pid));
        // Our own namespace never counts.
        assert!(found.iter().all(|h| h.pid != std::process::id() as i32));
    }
}
