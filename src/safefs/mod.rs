//! Root's work in folders another user can write: by handle, never by path.
//!
//! Destinations live in folders the live user owns (`/home/amnesia/.gnupg`), and the
//! volume's user folders are the user's too. The user can race root there (inotify,
//! renames, symlink swaps): if keepsake resolved such a path by name twice, the second
//! look could land in `/etc`. So every path is walked one component at a time with
//! `O_NOFOLLOW`; modes and owners are set on the opened descriptor; a new folder is made
//! and finished under a temporary name and then renamed into place; anything keepsake
//! made is recorded by its parent's descriptor and its identity (device, inode) and
//! removed with `unlinkat` only while it is still that entry; and trees are walked with
//! a bounded number of open descriptors, so that no shape of tree can make root's work
//! fail half way. Mounts are made on descriptors (`/proc/self/fd/N`).
//!
//! Nothing else in the crate creates, changes or removes entries in such folders.

pub mod treewalk;
pub(crate) mod xattr;

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, RenameFlags, openat, renameat, renameat2};
use nix::sys::stat::{Mode, fstat, fstatat, mkdirat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchownat, unlinkat};

use crate::context::IoError;

/// What went wrong handling a file or folder by handle, named by what happened (the
/// exit code each gets is chosen in `crate::error`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A component of the path is a symbolic link (or not a folder where one must be):
    /// refused, as it could lead wherever its owner chose.
    #[error("{0}")]
    Symlink(String),
    #[error("{0}")]
    NotFound(String),
    /// Someone else moved, replaced or made it while keepsake worked on it; it was left
    /// as it is.
    #[error("{0}")]
    Changed(String),
    /// A mount point where keepsake would remove a folder.
    #[error("{0}")]
    Mounted(String),
    /// A file that is not what it must be: a symlink, not a regular file, too large, not
    /// UTF-8.
    #[error("{0}")]
    Invalid(String),
    /// A path that cannot be used as given: it leaves its base folder, or names
    /// something other than a regular file.
    #[error("{0}")]
    Unusable(String),
    /// keepsake's own misuse of this layer (a folder without a parent, a relative path).
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Io(#[from] IoError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// [`crate::context::Context`], made this layer's [`Error`]: `.context(..)` on an I/O or
/// errno result says what was being done, and to what.
pub(crate) trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, C: crate::context::Context<T>> Context<T> for C {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        Ok(crate::context::Context::context(self, what)?)
    }
}

impl Error {
    /// This error with `note` added, of the same kind.
    pub fn with_note(self, note: &str) -> Error {
        let add = |m: String| format!("{m}; {note}");
        match self {
            Error::Symlink(m) => Error::Symlink(add(m)),
            Error::NotFound(m) => Error::NotFound(add(m)),
            Error::Changed(m) => Error::Changed(add(m)),
            Error::Mounted(m) => Error::Mounted(add(m)),
            Error::Invalid(m) => Error::Invalid(add(m)),
            Error::Unusable(m) => Error::Unusable(add(m)),
            Error::Internal(m) => Error::Internal(add(m)),
            Error::Io(e) => Error::Io(e.with_note(note)),
        }
    }
}

/// Who owns a folder keepsake creates, and its mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

impl Owner {
    pub(crate) const ROOT_0755: Owner = Owner {
        uid: 0,
        gid: 0,
        mode: 0o755,
    };
    /// Root's alone: keepsake's own folders.
    pub(crate) const ROOT_0700: Owner = Owner {
        mode: 0o700,
        ..Owner::ROOT_0755
    };
}

/// An open directory and the path it was reached by (for messages only).
#[derive(Debug)]
pub struct Dir {
    pub fd: OwnedFd,
    pub path: PathBuf,
    /// The folder it was opened from and its name there, to look it up again.
    parent: Option<(OwnedFd, std::ffi::OsString)>,
    /// The directory it was reached from (shared by everything opened beneath it) and
    /// the way down from there: what [`Made`] records instead of holding a descriptor of
    /// its own, so that a journal of thousands of entries holds one.
    origin: Arc<Origin>,
    rel: PathBuf,
}

#[derive(Debug)]
struct Origin {
    fd: OwnedFd,
    path: PathBuf,
}

impl Origin {
    fn dir(self: &Arc<Self>) -> Result<Dir> {
        Ok(Dir {
            fd: self
                .fd
                .try_clone()
                .context(|| "duplicating a descriptor".into())?,
            path: self.path.clone(),
            parent: None,
            origin: self.clone(),
            rel: PathBuf::new(),
        })
    }
}

impl Dir {
    /// A second handle on the same directory (a duplicated descriptor; not reopened by
    /// name, so it is this directory whatever was renamed since).
    pub(crate) fn try_clone(&self) -> Result<Dir> {
        Ok(Dir {
            fd: self
                .fd
                .try_clone()
                .context(|| format!("opening {}", self.path.display()))?,
            path: self.path.clone(),
            parent: None,
            origin: self.origin.clone(),
            rel: self.rel.clone(),
        })
    }

    /// Looks the directory up again by name in its parent: after a mount on it, this is
    /// the root of the new mount (the old descriptor still names what is underneath).
    pub(crate) fn reopen(&self) -> Result<Dir> {
        let (parent, name) = self.parent.as_ref().ok_or_else(|| {
            Error::Internal(format!(
                "{} has no parent to reopen it from",
                self.path.display()
            ))
        })?;
        let fd = openat(parent, name.as_os_str(), path_flags(), Mode::empty())
            .context(|| format!("opening {}", self.path.display()))?;
        let parent = parent
            .try_clone()
            .context(|| "duplicating a descriptor".into())?;
        Ok(Dir {
            fd,
            path: self.path.clone(),
            parent: Some((parent, name.clone())),
            origin: self.origin.clone(),
            rel: self.rel.clone(),
        })
    }

    /// The folder opened again for reading (its own descriptor is `O_PATH`): for fsync,
    /// fchown/fchmod, xattrs and listing, through this very folder, never by name.
    pub(crate) fn open_readable(&self) -> Result<OwnedFd> {
        openat(
            &self.fd,
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .context(|| format!("opening {}", self.path.display()))
    }

    /// `/proc/self/fd/N`: a path that names exactly this directory, for mount(2).
    pub(crate) fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }

    /// Unmounts the mount on the entry `target`'s name in this folder, naming it through
    /// this descriptor (see [`crate::host::mounts::unmount`]).
    pub(crate) fn unmount_child(&self, target: &Path) -> Result<()> {
        let name = target.file_name().unwrap_or_default();
        let mut through = self.proc_path();
        through.push(name);
        nix::mount::umount2(&through, nix::mount::MntFlags::UMOUNT_NOFOLLOW)
            .context(|| format!("unmounting {}", target.display()))
    }

    /// Unmounts what is mounted on this folder, through the folder it was opened from.
    pub(crate) fn unmount_here(&self) -> Result<()> {
        let (parent, name) = self.parent.as_ref().ok_or_else(|| {
            Error::Internal(format!(
                "{} has no parent to unmount it from",
                self.path.display()
            ))
        })?;
        let through = PathBuf::from(format!("/proc/self/fd/{}", parent.as_raw_fd())).join(name);
        nix::mount::umount2(&through, nix::mount::MntFlags::UMOUNT_NOFOLLOW)
            .context(|| format!("unmounting {}", self.path.display()))
    }
}

fn path_flags() -> OFlag {
    OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

fn symlink_refusal(path: &Path) -> Error {
    Error::Symlink(format!(
        "{} is a symlink or not a directory; refusing to follow it",
        path.display()
    ))
}

/// Opens an absolute directory path, refusing any symlink along it. With `create`, missing
/// components are made with that owner and mode (see [`make_dir`]), and returned outermost
/// first so that a rollback can remove them ([`remove_made`]).
pub fn open_dir(path: &Path, create: Option<Owner>) -> Result<(Dir, Vec<Made>)> {
    if !path.is_absolute() {
        return Err(Error::Internal(format!(
            "{} is not absolute",
            path.display()
        )));
    }
    let root = Arc::new(Origin {
        fd: openat(nix::fcntl::AT_FDCWD, "/", path_flags(), Mode::empty())
            .context(|| "opening /".into())?,
        path: PathBuf::from("/"),
    })
    .dir()?;
    open_beneath(&root, path.strip_prefix("/").unwrap_or(path), create)
}

/// Opens `rel` below `base`, refusing symlinks and `..`; see [`open_dir`].
pub fn open_beneath(base: &Dir, rel: &Path, create: Option<Owner>) -> Result<(Dir, Vec<Made>)> {
    let mut current = base.try_clone()?;
    let mut created = Vec::new();
    for component in rel.components() {
        let name = match component {
            Component::Normal(name) => name,
            Component::CurDir => continue,
            _ => {
                return Err(Error::Unusable(format!(
                    "{} leaves {}",
                    rel.display(),
                    base.path.display()
                )));
            }
        };
        let next_path = current.path.join(name);
        let fd = match openat(&current.fd, name, path_flags(), Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) if create.is_some() => {
                let owner = create.unwrap_or(Owner::ROOT_0755);
                let (fd, made) = make_dir(&current, name, owner, &next_path)?;
                created.push(made);
                fd
            }
            Err(Errno::ENOENT) => {
                return Err(Error::NotFound(format!(
                    "{} does not exist",
                    next_path.display()
                )));
            }
            Err(Errno::ELOOP) | Err(Errno::ENOTDIR) => return Err(symlink_refusal(&next_path)),
            Err(e) => return Err(e).context(|| format!("opening {}", next_path.display())),
        };
        current = Dir {
            fd,
            path: next_path,
            parent: Some((current.fd, name.to_os_string())),
            origin: current.origin,
            rel: current.rel.join(name),
        };
    }
    Ok((current, created))
}

/// `base` and each folder from it down to `rel`, with their owners and modes (a symlink
/// on the way is refused as by [`open_beneath`]).
pub(crate) fn folders_on_path(
    base: &Dir,
    rel: &Path,
) -> Result<Vec<(PathBuf, Owner, Vec<AclEntry>)>> {
    let mut found = vec![(base.path.clone(), owner_of(base)?, acl_of(base))];
    let mut current = PathBuf::new();
    for component in rel.components() {
        current.push(component);
        let (dir, _) = open_beneath(base, &current, None)?;
        found.push((dir.path.clone(), owner_of(&dir)?, acl_of(&dir)));
    }
    Ok(found)
}

/// One entry of a POSIX access ACL: its tag, permission bits (4 r, 2 w, 1 x) and id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AclEntry {
    pub tag: u16,
    pub perm: u16,
    pub id: u32,
}

impl AclEntry {
    pub(crate) const USER_OBJ: u16 = 0x01;
    pub(crate) const USER: u16 = 0x02;
    pub(crate) const GROUP_OBJ: u16 = 0x04;
    pub(crate) const GROUP: u16 = 0x08;
    pub(crate) const MASK: u16 = 0x10;
    pub(crate) const OTHER: u16 = 0x20;
}

/// Sets a volume's mount root as Tails does at every unlock: owned by root:root, mode
/// 0770, every ACL removed, then `user:LIVE:x` added (so that the live user can reach its
/// own features' folders, and the dotfiles' links resolve for it, but list nothing).
/// Without a live user, no ACL at all.
pub(crate) fn set_mount_root_access(dir: &Dir, live_uid: Option<u32>) -> Result<()> {
    let shown = || format!("setting the owner and mode of {}", dir.path.display());
    let fd = dir.open_readable()?;
    nix::unistd::fchown(&fd, Some(Uid::from_raw(0)), Some(Gid::from_raw(0))).context(shown)?;
    nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(0o770)).context(shown)?;
    let acl_shown = || format!("setting the ACL of {}", dir.path.display());
    for name in [c"system.posix_acl_default", c"system.posix_acl_access"] {
        // SAFETY: an open descriptor and a NUL-terminated name.
        let r = unsafe { libc::fremovexattr(fd.as_raw_fd(), name.as_ptr()) };
        match Errno::result(r) {
            Ok(_) | Err(Errno::ENODATA) => {}
            Err(e) => return Err(e).context(acl_shown),
        }
    }
    let Some(uid) = live_uid.filter(|u| *u != 0) else {
        return Ok(());
    };
    let xattr = acl_xattr(&[
        AclEntry {
            tag: AclEntry::USER_OBJ,
            perm: 0o7,
            id: u32::MAX,
        },
        AclEntry {
            tag: AclEntry::USER,
            perm: 0o1,
            id: uid,
        },
        AclEntry {
            tag: AclEntry::GROUP_OBJ,
            perm: 0o7,
            id: u32::MAX,
        },
        AclEntry {
            tag: AclEntry::MASK,
            perm: 0o7,
            id: u32::MAX,
        },
        AclEntry {
            tag: AclEntry::OTHER,
            perm: 0,
            id: u32::MAX,
        },
    ]);
    // SAFETY: an open descriptor, a NUL-terminated name, a buffer of the length given.
    let r = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            c"system.posix_acl_access".as_ptr(),
            xattr.as_ptr().cast(),
            xattr.len(),
            0,
        )
    };
    Errno::result(r).map(drop).context(acl_shown)
}

/// The kernel's `system.posix_acl_*` encoding of ACL entries (version 2, little-endian
/// tag, permissions, id), the inverse of [`parse_acl`].
pub(crate) fn acl_xattr(entries: &[AclEntry]) -> Vec<u8> {
    let mut out = vec![2, 0, 0, 0];
    for e in entries {
        out.extend_from_slice(&e.tag.to_le_bytes());
        out.extend_from_slice(&e.perm.to_le_bytes());
        out.extend_from_slice(&e.id.to_le_bytes());
    }
    out
}

/// For tests: the access ACL `setfacl -m u:UID:PERM` leaves on a 0755 file: the owner
/// rwx, `uid` with `perm`, the group r-x, the mask rwx, others r-x.
#[cfg(test)]
pub(crate) fn acl_giving(uid: u32, perm: u16) -> Vec<u8> {
    let entry = |tag, perm, id| AclEntry { tag, perm, id };
    acl_xattr(&[
        entry(AclEntry::USER_OBJ, 7, u32::MAX),
        entry(AclEntry::USER, perm, uid),
        entry(AclEntry::GROUP_OBJ, 5, u32::MAX),
        entry(AclEntry::MASK, 7, u32::MAX),
        entry(AclEntry::OTHER, 5, u32::MAX),
    ])
}

/// The access ACL of an open folder (`system.posix_acl_access`), empty if it has none.
pub(crate) fn acl_of(dir: &Dir) -> Vec<AclEntry> {
    acl_at(&dir.proc_path(), true)
}

/// The access ACL at `path`, empty if it has none; a symlink at its end is followed (a
/// `/proc/self/fd/N` link: the open file's) only with `follow`.
pub(crate) fn acl_at(path: &Path, follow: bool) -> Vec<AclEntry> {
    let Ok(path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return vec![];
    };
    let get = if follow {
        libc::getxattr
    } else {
        libc::lgetxattr
    };
    let mut buf = [0u8; 4096];
    // SAFETY: a NUL-terminated path and name, and a buffer of the length given.
    let n = unsafe {
        get(
            path.as_ptr(),
            c"system.posix_acl_access".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return vec![];
    }
    parse_acl(&buf[..n as usize])
}

/// The entries of an ACL in the kernel's xattr form: a 4-byte version (2), then 8-byte
/// entries of tag (u16), permissions (u16) and id (u32), little-endian.
pub(crate) fn parse_acl(bytes: &[u8]) -> Vec<AclEntry> {
    if bytes.len() < 4 || bytes[..4] != [2, 0, 0, 0] {
        return vec![];
    }
    bytes[4..]
        .chunks_exact(8)
        .map(|e| AclEntry {
            tag: u16::from_le_bytes([e[0], e[1]]),
            perm: u16::from_le_bytes([e[2], e[3]]),
            id: u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
        })
        .collect()
}

/// A file's identity: device, inode and file type. (An inode number can be reused once
/// its file is gone; the type keeps a new file of the user's from passing for the
/// symlink or folder keepsake made. A reused inode of the same type can only be in the
/// folder held open, which is the user's own.)
pub(crate) type FileId = (u64, u64, u32);

fn id_of(st: &nix::sys::stat::FileStat) -> FileId {
    (st.st_dev, st.st_ino, st.st_mode & libc::S_IFMT)
}

fn is_dir(st: &nix::sys::stat::FileStat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// Something keepsake made in a folder, recorded by the way down to that folder from the
/// directory it was reached from (walked again without following any symlink), its name
/// there and its identity, so that undoing it removes exactly that and nothing else,
/// whatever was renamed or swapped around it since. It holds no descriptor of its own
/// (only a share of its origin's), however many there are.
#[derive(Debug)]
pub struct Made {
    origin: Arc<Origin>,
    parent_rel: PathBuf,
    name: OsString,
    id: FileId,
    pub path: PathBuf,
}

impl Made {
    fn new(parent: &Dir, name: &OsStr, id: FileId, path: PathBuf) -> Made {
        Made {
            origin: parent.origin.clone(),
            parent_rel: parent.rel.clone(),
            name: name.to_os_string(),
            id,
            path,
        }
    }

    /// Its folder, opened again from the origin. A folder on the way that has become a
    /// symlink is refused: what was made is then no longer where it was made.
    fn parent(&self) -> Result<Dir> {
        open_beneath(&self.origin.dir()?, &self.parent_rel, None).map(|(d, _)| d)
    }

    /// Removes the entry while it is still the one made (a folder only while empty).
    /// Anything else now under that name is left alone.
    pub(crate) fn remove(&self) -> Result<()> {
        let parent = match self.parent() {
            Ok(p) => p,
            Err(Error::NotFound(_)) => return Ok(()),
            Err(_) => return Err(moved(&self.path)),
        };
        let st = match fstatat(
            &parent.fd,
            self.name.as_os_str(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) => st,
            Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(e).context(|| format!("reading {}", self.path.display())),
        };
        if id_of(&st) != self.id {
            return Err(moved(&self.path));
        }
        let flag = if is_dir(&st) {
            UnlinkatFlags::RemoveDir
        } else {
            UnlinkatFlags::NoRemoveDir
        };
        unlinkat(&parent.fd, self.name.as_os_str(), flag)
            .context(|| format!("removing {}", self.path.display()))
    }
}

fn moved(path: &Path) -> Error {
    Error::Changed(format!(
        "{} was moved or replaced by someone else; left as it is",
        path.display()
    ))
}

/// Removes the non-folder `entry` of `dir` (as listed), only while it is still that entry.
pub(crate) fn remove_entry(dir: &Dir, entry: &Entry) -> Result<()> {
    let made = Made::new(
        dir,
        &entry.name,
        id_of(&entry.st),
        dir.path.join(&entry.name),
    );
    if entry.is_dir() {
        return Err(Error::Internal(format!(
            "{} is a folder",
            made.path.display()
        )));
    }
    made.remove()
}

/// Removes what [`open_dir`] made, innermost first, each only while it is empty and still
/// the folder that was made.
pub(crate) fn remove_made(made: &[Made]) {
    for m in made.iter().rev() {
        let _ = m.remove();
    }
}

static TEMP_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A name for something being made in a folder: hidden, and not one anybody chose.
fn temp_name(name: &OsStr) -> OsString {
    let n = TEMP_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut tmp = OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".keepsake-{}-{n}", std::process::id()));
    tmp
}

/// Makes the folder `name` in `parent` with `owner`: it is made under a temporary name,
/// opened, checked to be the empty folder just made, given its owner and mode through
/// that descriptor, and only then renamed into place (never over anything). A swap at
/// any moment can make this fail, never redirect it. Returns the new folder's descriptor.
fn make_dir(parent: &Dir, name: &OsStr, owner: Owner, shown: &Path) -> Result<(OwnedFd, Made)> {
    let tmp = temp_name(name);
    mkdirat(&parent.fd, tmp.as_os_str(), Mode::from_bits_truncate(0o700))
        .context(|| format!("creating {}", shown.display()))?;
    #[cfg(test)]
    race::after_mkdir(&parent.path.join(&tmp));
    let fd = match openat(
        &parent.fd,
        tmp.as_os_str(),
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(_) => return Err(swapped(shown)),
    };
    let st = fstat(&fd).context(|| format!("reading {}", shown.display()))?;
    let made_tmp = Made::new(parent, &tmp, id_of(&st), shown.to_path_buf());
    let finish = || -> Result<()> {
        if st.st_uid != nix::unistd::geteuid().as_raw() || st.st_nlink != 2 || !is_dir(&st) {
            return Err(swapped(shown));
        }
        give(&fd, owner, shown)?;
        renameat2(
            &parent.fd,
            tmp.as_os_str(),
            &parent.fd,
            name,
            RenameFlags::RENAME_NOREPLACE,
        )
        .map_err(|e| match e {
            Errno::EEXIST => Error::Changed(format!(
                "{} appeared while keepsake was making it; left as it is",
                shown.display()
            )),
            e => Error::Io(IoError::new(
                format!("creating {}", shown.display()),
                e.into(),
            )),
        })
    };
    let finished = finish();
    #[cfg(test)]
    race::after_mkdir(shown);
    if let Err(e) = finished {
        let _ = made_tmp.remove();
        return Err(e);
    }
    let made = Made::new(parent, name, made_tmp.id, shown.to_path_buf());
    // The temporary folder could have been swapped for the user's own between the checks
    // and the rename: the name must now hold the folder this descriptor is.
    let now = fstatat(&parent.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW).map(|st| id_of(&st));
    if now != Ok(made.id) {
        return Err(swapped(shown));
    }
    Ok((fd, made))
}

/// Gives an open file its owner, then its mode (in that order, so that it is never open to
/// others meanwhile; fchmod is not subject to the umask). Through the descriptor: no
/// name is looked up again.
fn give(fd: &OwnedFd, owner: Owner, shown: &Path) -> Result<()> {
    nix::unistd::fchown(
        fd,
        Some(Uid::from_raw(owner.uid)),
        Some(Gid::from_raw(owner.gid)),
    )
    .context(|| format!("setting the owner of {}", shown.display()))?;
    nix::sys::stat::fchmod(fd, Mode::from_bits_truncate(owner.mode))
        .context(|| format!("setting the mode of {}", shown.display()))
}

/// Sets the owner and mode of an open folder, through its descriptor.
pub(crate) fn set_owner(dir: &Dir, owner: Owner) -> Result<()> {
    let fd = dir.open_readable()?;
    give(&fd, owner, &dir.path)
}

fn swapped(shown: &Path) -> Error {
    Error::Changed(format!(
        "{} was changed by someone else while keepsake was making it; nothing was done to it",
        shown.display()
    ))
}

/// Owner and mode of an open directory.
pub(crate) fn owner_of(dir: &Dir) -> Result<Owner> {
    let st = fstat(&dir.fd).context(|| format!("reading {}", dir.path.display()))?;
    Ok(Owner {
        uid: st.st_uid,
        gid: st.st_gid,
        mode: st.st_mode & 0o7777,
    })
}

/// A regular file inside `dir`, opened without following a symlink, with its owner.
pub struct CheckedFile {
    pub contents: String,
    pub owner: Owner,
    /// The file carries an access ACL beyond its mode bits.
    pub has_acl: bool,
}

/// Reads the file `name` in `dir` (not a symlink, at most `max` bytes).
pub(crate) fn read_file_in(dir: &Dir, name: &str, max: u64) -> Result<CheckedFile> {
    let shown = dir.path.join(name);
    let fd = openat(
        &dir.fd,
        name,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::ENOENT => Error::NotFound(format!("{} does not exist", shown.display())),
        Errno::ELOOP => Error::Invalid(format!("{} is a symlink", shown.display())),
        e => Error::Io(IoError::new(
            format!("opening {}", shown.display()),
            e.into(),
        )),
    })?;
    let st = fstat(&fd).context(|| format!("reading {}", shown.display()))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(Error::Invalid(format!(
            "{} is not a regular file",
            shown.display()
        )));
    }
    if st.st_size as u64 > max {
        return Err(Error::Invalid(format!(
            "{} is larger than {max} bytes",
            shown.display()
        )));
    }
    let has_acl = nix::errno::Errno::result(
        // SAFETY: an open descriptor, a NUL-terminated name; size 0 only asks the length.
        unsafe {
            libc::fgetxattr(
                fd.as_raw_fd(),
                c"system.posix_acl_access".as_ptr(),
                std::ptr::null_mut(),
                0,
            )
        },
    )
    .is_ok_and(|n| n > 0);
    let mut contents = String::new();
    File::from(fd)
        .take(max)
        .read_to_string(&mut contents)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => {
                Error::Invalid(format!("{} is not valid UTF-8", shown.display()))
            }
            _ => Error::Io(IoError::new(format!("reading {}", shown.display()), e)),
        })?;
    Ok(CheckedFile {
        contents,
        has_acl,
        owner: Owner {
            uid: st.st_uid,
            gid: st.st_gid,
            mode: st.st_mode & 0o7777,
        },
    })
}

/// A regular file of `dir`, by an `O_PATH` descriptor, never through a symlink. When it
/// is missing and `create` says how, it is made: as a copy of `template` (contents,
/// owner, mode) if one is given, else empty with the owner and mode given; what was made
/// is returned to be undone.
pub(crate) fn open_file_in(
    dir: &Dir,
    name: &OsStr,
    create: Option<(Owner, Option<&OwnedFd>)>,
) -> Result<(OwnedFd, Option<Made>)> {
    let shown = dir.path.join(name);
    let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let opened = match openat(&dir.fd, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) if create.is_some() => {
            let (owner, template) = create.unwrap_or((Owner::ROOT_0755, None));
            let made = make_file(dir, name, owner, template, &shown)?;
            let fd = openat(&dir.fd, name, flags, Mode::empty())
                .context(|| format!("opening {}", shown.display()))?;
            let st = fstat(&fd).context(|| format!("reading {}", shown.display()))?;
            if id_of(&st) != made.id {
                return Err(swapped(&shown));
            }
            return Ok((fd, Some(made)));
        }
        Err(Errno::ENOENT) => {
            return Err(Error::NotFound(format!(
                "{} does not exist",
                shown.display()
            )));
        }
        Err(e) => return Err(e).context(|| format!("opening {}", shown.display())),
    };
    let st = fstat(&opened).context(|| format!("reading {}", shown.display()))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(Error::Unusable(format!(
            "{} is not a regular file (a symlink, folder or device); refusing it",
            shown.display()
        )));
    }
    Ok((opened, None))
}

fn make_file(
    dir: &Dir,
    name: &OsStr,
    owner: Owner,
    template: Option<&OwnedFd>,
    shown: &Path,
) -> Result<Made> {
    let fd = openat(
        &dir.fd,
        name,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .context(|| format!("creating {}", shown.display()))?;
    let st = fstat(&fd).context(|| format!("reading {}", shown.display()))?;
    let made = Made::new(dir, name, id_of(&st), shown.to_path_buf());
    let filled = (|| {
        let owner = match template {
            Some(t) => {
                let from = File::open(format!("/proc/self/fd/{}", t.as_raw_fd()))
                    .context(|| format!("reading the file to copy to {}", shown.display()))?;
                let tst = fstat(&from)
                    .context(|| format!("reading the file to copy to {}", shown.display()))?;
                let mut to = File::from(
                    fd.try_clone()
                        .context(|| "duplicating a descriptor".into())?,
                );
                std::io::copy(&mut (&from).take(u64::MAX), &mut to)
                    .context(|| format!("copying into {}", shown.display()))?;
                Owner {
                    uid: tst.st_uid,
                    gid: tst.st_gid,
                    mode: tst.st_mode & 0o777,
                }
            }
            None => owner,
        };
        give(&fd, owner, shown)?;
        nix::unistd::fsync(&fd).context(|| format!("syncing {}", shown.display()))
    })();
    if let Err(e) = filled {
        let _ = made.remove();
        return Err(e);
    }
    Ok(made)
}

/// Removes the file `name` of `dir` (not a folder; a symlink itself, not its target).
/// Returns whether there was one.
pub(crate) fn remove_file_in(dir: &Dir, name: &str) -> Result<bool> {
    match unlinkat(&dir.fd, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) => Ok(true),
        Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(e).context(|| format!("removing {}", dir.path.join(name).display())),
    }
}

/// Replaces the file `name` in `dir` atomically: write a temporary file beside it, fsync,
/// rename over, fsync the folder. A power cut leaves either the old or the new file.
pub(crate) fn write_file_atomically(
    dir: &Dir,
    name: &str,
    contents: &[u8],
    owner: Owner,
) -> Result<()> {
    let shown = dir.path.join(name);
    // The directory was opened O_PATH; reopen it for the fsync and the *at calls.
    let dirfd = dir.open_readable()?;
    let tmp_name = format!(".{name}.keepsake-new");
    let _ = nix::unistd::unlinkat(
        &dirfd,
        tmp_name.as_str(),
        nix::unistd::UnlinkatFlags::NoRemoveDir,
    );
    let fd = openat(
        &dirfd,
        tmp_name.as_str(),
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(owner.mode),
    )
    .context(|| format!("creating a new {}", shown.display()))?;
    let result = (|| {
        give(&fd, owner, &shown)?;
        let mut file = File::from(
            fd.try_clone()
                .context(|| "duplicating a descriptor".into())?,
        );
        file.write_all(contents)
            .context(|| format!("writing {}", shown.display()))?;
        file.sync_all()
            .context(|| format!("syncing {}", shown.display()))?;
        renameat(&dirfd, tmp_name.as_str(), &dirfd, name)
            .context(|| format!("replacing {}", shown.display()))?;
        nix::unistd::fsync(&dirfd).context(|| format!("syncing {}", dir.path.display()))
    })();
    if result.is_err() {
        let _ = nix::unistd::unlinkat(
            &dirfd,
            tmp_name.as_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
    }
    result
}

/// One entry of a folder as it was when listed (a symlink is not followed).
#[derive(Debug)]
pub struct Entry {
    pub name: OsString,
    pub st: nix::sys::stat::FileStat,
}

impl Entry {
    pub(crate) fn is_dir(&self) -> bool {
        is_dir(&self.st)
    }

    pub(crate) fn is_symlink(&self) -> bool {
        self.st.st_mode & libc::S_IFMT == libc::S_IFLNK
    }

    pub(crate) fn is_file(&self) -> bool {
        self.st.st_mode & libc::S_IFMT == libc::S_IFREG
    }

    pub(crate) fn owner(&self) -> Owner {
        Owner {
            uid: self.st.st_uid,
            gid: self.st.st_gid,
            mode: self.st.st_mode & 0o7777,
        }
    }
}

/// Opens `path` for reading if it is a regular file (a symlink to one is followed). A fifo
/// or a device put at that name, where a folder the live user can write holds it, is
/// refused without being opened: one would block the command while it holds keepsake's
/// lock, the other would be read. The name is looked up once (`O_PATH`), and the file
/// checked is the one opened, through its handle.
pub(crate) fn open_regular(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let found = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(path)?;
    if !found.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    File::open(format!("/proc/self/fd/{}", found.as_raw_fd()))
}

/// The entries of an open folder, sorted by name. An entry gone between the listing and
/// its stat is left out.
pub fn list(dir: &Dir) -> Result<Vec<Entry>> {
    let fd = dir.open_readable()?;
    let mut listing =
        nix::dir::Dir::from_fd(fd).context(|| format!("listing {}", dir.path.display()))?;
    let mut names = Vec::new();
    for item in listing.iter() {
        let item = item.context(|| format!("listing {}", dir.path.display()))?;
        let name = OsStr::from_bytes(item.file_name().to_bytes());
        if name != "." && name != ".." {
            names.push(name.to_os_string());
        }
    }
    names.sort();
    let mut entries = Vec::with_capacity(names.len());
    for name in names {
        match fstatat(&dir.fd, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => entries.push(Entry { name, st }),
            Err(Errno::ENOENT) => {}
            Err(e) => {
                return Err(e).context(|| format!("reading {}", dir.path.join(&name).display()));
            }
        }
    }
    Ok(entries)
}

/// How many folders of the current branch a [`Cursor`] keeps open (one descriptor each).
const WALK_WINDOW: usize = 8;

/// Opens folders below a root one after another, in the order a depth-first walk meets
/// them, with a bounded number of descriptors: it keeps the last [`WALK_WINDOW`] folders
/// of the current branch open and opens the next one from the nearest of them (down by
/// name with `O_NOFOLLOW`, or up by `..` checked against the identity the folder had when
/// it was first entered), and from the root one component at a time only when neither
/// applies. A chain of folders thousands deep costs one open per level, going down and
/// coming back up.
pub(crate) struct Cursor<'a> {
    root: &'a Dir,
    window: std::collections::VecDeque<(PathBuf, Dir)>,
    ids: std::collections::HashMap<PathBuf, FileId>,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(root: &'a Dir) -> Cursor<'a> {
        Cursor {
            root,
            window: Default::default(),
            ids: Default::default(),
        }
    }

    /// The folder `rel` below the root; `None` if it is gone, is not a folder (a symlink
    /// swapped in, say), or is no longer the folder first found there.
    pub(crate) fn open(&mut self, rel: &Path) -> Option<&Dir> {
        if rel.as_os_str().is_empty() {
            return Some(self.root);
        }
        if let Some(i) = self.window.iter().position(|(r, _)| r == rel) {
            self.window.truncate(i + 1);
            return self.window.back().map(|(_, d)| d);
        }
        let up = self
            .window
            .back()
            .filter(|(r, _)| r.parent() == Some(rel))
            .and_then(|(_, child)| self.climb(child, rel));
        let dir = match up {
            Some(dir) => dir,
            None => {
                let base = self
                    .window
                    .iter()
                    .rev()
                    .find(|(r, _)| rel.starts_with(r))
                    .map(|(r, d)| (r.as_path(), d))
                    .unwrap_or((Path::new(""), self.root));
                let rest = rel.strip_prefix(base.0).unwrap_or(rel);
                let (mut dir, _) = open_beneath(base.1, rest, None).ok()?;
                dir.parent = None;
                let id = id_of(&fstat(&dir.fd).ok()?);
                if *self.ids.entry(rel.to_path_buf()).or_insert(id) != id {
                    return None;
                }
                dir
            }
        };
        self.window.retain(|(r, _)| rel.starts_with(r));
        self.window.push_back((rel.to_path_buf(), dir));
        if self.window.len() > WALK_WINDOW {
            self.window.pop_front();
        }
        self.window.back().map(|(_, d)| d)
    }

    /// `child/..`, if it is still the folder entered as `rel`.
    fn climb(&self, child: &Dir, rel: &Path) -> Option<Dir> {
        let expected = self.ids.get(rel)?;
        let fd = openat(&child.fd, "..", path_flags(), Mode::empty()).ok()?;
        if id_of(&fstat(&fd).ok()?) != *expected {
            return None;
        }
        Some(Dir {
            fd,
            path: self.root.path.join(rel),
            parent: None,
            origin: self.root.origin.clone(),
            rel: self.root.rel.join(rel),
        })
    }
}

/// Visits `root` and every folder under it depth first, never following a symlink or
/// leaving `root`: `enter` is called with a folder and its entries before anything under
/// it, `leave` with the folder once everything under it was visited. Descriptors are
/// bounded by a [`Cursor`]; no shape of tree can exhaust them. A folder that is gone, has
/// become a symlink, or cannot be entered when its turn comes is no longer part of the
/// tree, and is skipped with what is under it.
pub(crate) fn walk_both<E>(
    root: &Dir,
    mut enter: impl FnMut(&Dir, &Path, &[Entry]) -> Result<(), E>,
    mut leave: impl FnMut(&Dir, &Path) -> Result<(), E>,
) -> Result<(), E> {
    enum Step {
        Enter(PathBuf),
        Leave(PathBuf),
    }
    let mut cursor = Cursor::new(root);
    let mut pending = vec![Step::Enter(PathBuf::new())];
    while let Some(step) = pending.pop() {
        match step {
            Step::Enter(rel) => {
                let Some(dir) = cursor.open(&rel) else {
                    continue;
                };
                let Ok(entries) = list(dir) else {
                    continue;
                };
                enter(dir, &rel, &entries)?;
                pending.push(Step::Leave(rel.clone()));
                pending.extend(subfolders(&rel, &entries).into_iter().map(Step::Enter));
            }
            Step::Leave(rel) => {
                if let Some(dir) = cursor.open(&rel) {
                    leave(dir, &rel)?;
                }
            }
        }
    }
    Ok(())
}

/// [`walk_both`] with nothing to do on the way back up.
pub(crate) fn walk<E>(
    root: &Dir,
    enter: impl FnMut(&Dir, &Path, &[Entry]) -> Result<(), E>,
) -> Result<(), E> {
    walk_both(root, enter, |_, _| Ok(()))
}

/// The relative paths of the folders among `entries`, last name first (so that a stack
/// pops them in name order).
fn subfolders(rel: &Path, entries: &[Entry]) -> Vec<PathBuf> {
    entries
        .iter()
        .rev()
        .filter(|e| e.is_dir())
        .map(|e| rel.join(&e.name))
        .collect()
}

/// Makes a symlink `name` -> `target` in `dir`, owned by `uid`:`gid` (set on the link's
/// own descriptor, so a swap cannot hand the owner to another file). Fails if the name
/// is taken.
pub(crate) fn symlink_in(
    dir: &Dir,
    name: &OsStr,
    target: &Path,
    uid: u32,
    gid: u32,
) -> Result<Made> {
    let shown = dir.path.join(name);
    nix::unistd::symlinkat(target, &dir.fd, name)
        .context(|| format!("linking {}", shown.display()))?;
    let link = openat(
        &dir.fd,
        name,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .context(|| format!("opening {}", shown.display()))?;
    let st = fstat(&link).context(|| format!("reading {}", shown.display()))?;
    let made = Made::new(dir, name, id_of(&st), shown.clone());
    if st.st_mode & libc::S_IFMT != libc::S_IFLNK || st.st_uid != nix::unistd::geteuid().as_raw() {
        return Err(swapped(&shown));
    }
    fchownat(
        &link,
        "",
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
        AtFlags::AT_EMPTY_PATH,
    )
    .context(|| format!("setting the owner of {}", shown.display()))?;
    Ok(made)
}

/// The target of the symlink `name` in `dir`, if it is one.
pub(crate) fn link_target(dir: &Dir, name: &OsStr) -> Option<PathBuf> {
    nix::fcntl::readlinkat(&dir.fd, name)
        .ok()
        .map(PathBuf::from)
}

/// A file moved aside in its own folder (to `.NAME.keepsake-displaced`), to be put back
/// or dropped; both by the folder's descriptor and only while it is the file moved.
#[derive(Debug)]
pub(crate) struct Displaced {
    original: OsString,
    aside: Made,
}

impl Displaced {
    /// Moves the non-folder `entry` of `dir` aside.
    pub(crate) fn move_aside(dir: &Dir, entry: &Entry) -> Result<Displaced> {
        let shown = dir.path.join(&entry.name);
        let mut aside = OsString::from(".");
        aside.push(&entry.name);
        aside.push(".keepsake-displaced");
        renameat2(
            &dir.fd,
            entry.name.as_os_str(),
            &dir.fd,
            aside.as_os_str(),
            RenameFlags::RENAME_NOREPLACE,
        )
        .context(|| format!("moving {} out of the way", shown.display()))?;
        let st = fstatat(&dir.fd, aside.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
            .context(|| format!("reading {}", shown.display()))?;
        let moved = Made::new(dir, &aside, id_of(&st), dir.path.join(&aside));
        if id_of(&st) != id_of(&entry.st) || is_dir(&st) {
            // Not what was looked at: put it back as it is, and do nothing more.
            let _ = renameat2(
                &dir.fd,
                aside.as_os_str(),
                &dir.fd,
                entry.name.as_os_str(),
                RenameFlags::RENAME_NOREPLACE,
            );
            return Err(swapped(&shown));
        }
        Ok(Displaced {
            original: entry.name.clone(),
            aside: moved,
        })
    }

    /// Puts the file back under its name (never over something new there).
    pub(crate) fn put_back(self) -> Result<()> {
        let a = &self.aside;
        let parent = a.parent().map_err(|_| moved(&a.path))?;
        let st = fstatat(&parent.fd, a.name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
            .context(|| format!("reading {}", a.path.display()))?;
        if id_of(&st) != a.id {
            return Err(moved(&a.path));
        }
        renameat2(
            &parent.fd,
            a.name.as_os_str(),
            &parent.fd,
            self.original.as_os_str(),
            RenameFlags::RENAME_NOREPLACE,
        )
        .context(|| format!("putting back {}", a.path.display()))
    }

    /// Drops the moved file for good.
    pub(crate) fn drop_it(self) -> Result<()> {
        self.aside.remove()
    }
}

/// Copies what is in `from` into the empty folder `to`, as `cp -a` does: folders, regular
/// files and symlinks, with their owners, modes and times. Nothing is followed: every
/// entry is opened with `O_NOFOLLOW` relative to its open parent, so the owner of `from`
/// cannot swap in a symlink and have another file copied. Other file types (sockets,
/// devices, fifos) are skipped. Walks with [`walk`]'s bounded descriptors. Returns how
/// many entries were copied.
pub fn copy_contents(from: &Dir, to: &Dir) -> Result<u64> {
    let mut copied = 0;
    let target = std::cell::RefCell::new(Cursor::new(to));
    let counterpart = |rel: &Path| -> Result<Dir> {
        let mut cursor = target.borrow_mut();
        cursor
            .open(rel)
            .ok_or_else(|| swapped(&to.path.join(rel)))?
            .try_clone()
    };
    walk_both(
        from,
        |src, rel, entries| {
            let dst = counterpart(rel)?;
            for entry in entries {
                let name = entry.name.as_os_str();
                let shown = src.path.join(name);
                if entry.is_dir() {
                    make_dir(&dst, name, entry.owner(), &dst.path.join(name))?;
                } else if entry.is_file() {
                    copy_file(src, &dst, name, &entry.st)?;
                    set_times(&dst, name, &entry.st)?;
                } else if entry.is_symlink() {
                    let target = nix::fcntl::readlinkat(&src.fd, name)
                        .context(|| format!("reading the link {}", shown.display()))?;
                    symlink_in(
                        &dst,
                        name,
                        Path::new(&target),
                        entry.st.st_uid,
                        entry.st.st_gid,
                    )?;
                    set_times(&dst, name, &entry.st)?;
                } else {
                    continue;
                }
                copied += 1;
            }
            Ok::<(), Error>(())
        },
        // A folder's times are set once everything in it was made (which changes them).
        |src, rel| {
            let dst = counterpart(rel)?;
            for entry in list(src)?.iter().filter(|e| e.is_dir()) {
                set_times(&dst, &entry.name, &entry.st)?;
            }
            Ok(())
        },
    )?;
    Ok(copied)
}

fn copy_file(from: &Dir, to: &Dir, name: &OsStr, st: &nix::sys::stat::FileStat) -> Result<()> {
    let shown = from.path.join(name);
    let src = openat(
        &from.fd,
        name,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .context(|| format!("opening {}", shown.display()))?;
    // The entry may have changed since it was looked at: only copy a regular file.
    if fstat(&src).map(|s| s.st_mode & libc::S_IFMT) != Ok(libc::S_IFREG) {
        return Ok(());
    }
    let dst = openat(
        &to.fd,
        name,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .context(|| format!("creating {}", to.path.join(name).display()))?;
    let mut reader = File::from(src);
    let mut writer = File::from(dst);
    std::io::copy(&mut reader, &mut writer).context(|| format!("copying {}", shown.display()))?;
    nix::unistd::fchown(
        &writer,
        Some(Uid::from_raw(st.st_uid)),
        Some(Gid::from_raw(st.st_gid)),
    )
    .context(|| format!("setting the owner of {}", to.path.join(name).display()))?;
    nix::sys::stat::fchmod(&writer, Mode::from_bits_truncate(st.st_mode & 0o7777))
        .context(|| format!("setting the mode of {}", to.path.join(name).display()))
}

fn set_times(dir: &Dir, name: &OsStr, st: &nix::sys::stat::FileStat) -> Result<()> {
    use nix::sys::time::TimeSpec;
    let atime = TimeSpec::new(st.st_atime, st.st_atime_nsec);
    let mtime = TimeSpec::new(st.st_mtime, st.st_mtime_nsec);
    nix::sys::stat::utimensat(
        &dir.fd,
        name,
        &atime,
        &mtime,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .context(|| format!("setting the times of {}", dir.path.join(name).display()))
}

/// Overwrites a regular file with zeros, syncs it and removes it; best effort (for the
/// header backup, which lives in RAM in root's own folder, so that no copy lingers in the
/// page cache either).
pub(crate) fn wipe_and_remove(path: &Path) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
    {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let zeros = vec![0u8; 1 << 16];
        let mut left = len;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            if f.write_all(&zeros[..n]).is_err() {
                break;
            }
            left -= n as u64;
        }
        let _ = f.sync_all();
    }
    let _ = std::fs::remove_file(path);
}

/// Removes everything inside the open folder `dir` (not the folder itself), through
/// descriptors, without following symlinks or entering another filesystem, with a bounded
/// number of descriptors ([`crate::safefs::treewalk::remove_tree`]): the undo of [`copy_contents`].
pub fn remove_contents(dir: &Dir) -> Result<()> {
    let mut first_problem = None;
    for entry in list(dir)? {
        let shown = dir.path.join(&entry.name);
        let expect = crate::safefs::treewalk::id_of(&entry.st);
        if let Err(e) =
            crate::safefs::treewalk::remove_tree(&dir.fd, &entry.name, &shown, Some(expect))
        {
            first_problem.get_or_insert(e);
        }
    }
    first_problem.map_or(Ok(()), Err)
}

/// Removes the folder `rel` below `base` and everything in it, through descriptors: the
/// way down is walked without following symlinks, so no folder swapped on the way can
/// send the removal elsewhere.
pub(crate) fn remove_tree(base: &Dir, rel: &Path) -> Result<()> {
    let (Some(parent_rel), Some(name)) = (rel.parent(), rel.file_name()) else {
        return Err(Error::Internal(format!("{} has no name", rel.display())));
    };
    let (parent, _) = open_beneath(base, parent_rel, None)?;
    let (dir, _) = open_beneath(&parent, Path::new(name), None)?;
    remove_contents(&dir)?;
    unlinkat(&parent.fd, name, UnlinkatFlags::RemoveDir)
        .context(|| format!("removing {}", dir.path.display()))
}

/// A hook for tests to play the other user at the worst moments of [`make_dir`]: after
/// the folder is made, and after it is renamed into place.
#[cfg(test)]
pub mod race {
    use std::cell::RefCell;
    use std::path::Path;

    type Attack = Box<dyn FnMut(&Path)>;
    thread_local! {
        static ATTACK: RefCell<Option<Attack>> = RefCell::new(None);
    }

    pub(crate) fn set(attack: impl FnMut(&Path) + 'static) {
        ATTACK.with(|a| *a.borrow_mut() = Some(Box::new(attack)));
    }

    pub(crate) fn clear() {
        ATTACK.with(|a| *a.borrow_mut() = None);
    }

    pub(super) fn after_mkdir(path: &Path) {
        ATTACK.with(|a| {
            if let Some(attack) = a.borrow_mut().as_mut() {
                attack(path)
            }
        });
    }
}

/// [`remove_contents`] by path, for tests that set up trees by path.
#[cfg(test)]
pub(crate) fn empty_dir(dir: &Path) -> Result<()> {
    remove_contents(&open_dir(dir, None)?.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_regular_opens_files_and_links_to_them_and_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path();
        std::fs::write(t.join("file"), b"bytes").unwrap();
        std::os::unix::fs::symlink("file", t.join("link")).unwrap();
        nix::unistd::mkfifo(&t.join("fifo"), Mode::S_IRWXU).unwrap();
        std::fs::create_dir(t.join("dir")).unwrap();
        for name in ["file", "link"] {
            let mut read = String::new();
            open_regular(&t.join(name))
                .unwrap()
                .read_to_string(&mut read)
                .unwrap();
            assert_eq!(read, "bytes", "{name}");
        }
        // A fifo opened for reading would wait for a writer: refused without being opened.
        for name in ["fifo", "dir", "/dev/null"] {
            let err = open_regular(&t.join(name)).unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{name}");
        }
    }

    fn me() -> Owner {
        Owner {
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            mode: 0o750,
        }
    }

    #[test]
    fn the_mount_root_gets_tails_owner_mode_and_exactly_one_acl_entry() {
        assert!(nix::unistd::geteuid().is_root(), "this test needs root");
        let tmp = tempfile::tempdir_in("/run").unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::os::unix::fs::chown(&root, Some(1000), Some(1000)).unwrap();
        // Leftovers Tails removes: a default ACL and another user's entry.
        let stale = acl_giving(4242, 7);
        let path = std::ffi::CString::new(root.as_os_str().as_bytes()).unwrap();
        for name in [c"system.posix_acl_access", c"system.posix_acl_default"] {
            // SAFETY: NUL-terminated path and name, a buffer of the length given.
            let r = unsafe {
                libc::setxattr(
                    path.as_ptr(),
                    name.as_ptr(),
                    stale.as_ptr().cast(),
                    stale.len(),
                    0,
                )
            };
            assert_eq!(r, 0, "{name:?}: {}", std::io::Error::last_os_error());
        }
        let (dir, _) = open_dir(&root, None).unwrap();
        set_mount_root_access(&dir, Some(1000)).unwrap();
        assert_eq!(
            owner_of(&dir).unwrap(),
            Owner {
                uid: 0,
                gid: 0,
                mode: 0o770
            }
        );
        let named: Vec<_> = acl_of(&dir)
            .into_iter()
            .filter(|e| e.tag == AclEntry::USER || e.tag == AclEntry::GROUP)
            .collect();
        assert_eq!(
            named,
            vec![AclEntry {
                tag: AclEntry::USER,
                perm: 1,
                id: 1000
            }]
        );
        // SAFETY: NUL-terminated path and name; size 0 only asks the length.
        let default = unsafe {
            libc::getxattr(
                path.as_ptr(),
                c"system.posix_acl_default".as_ptr(),
                std::ptr::null_mut(),
                0,
            )
        };
        assert_eq!(default, -1, "no default ACL is left");
        // The live user can pass, not list.
        let listed = std::process::Command::new("setpriv")
            .args(["--reuid", "1000", "--regid", "1000", "--clear-groups", "ls"])
            .arg(&root)
            .status()
            .unwrap();
        assert!(!listed.success(), "uid 1000 may not list the mount root");
    }

    #[test]
    fn creates_missing_components_with_owner_and_mode() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("a/b/c");
        let (dir, created) = open_dir(&target, Some(me())).unwrap();
        assert_eq!(
            created.iter().map(|m| m.path.clone()).collect::<Vec<_>>(),
            vec![tmp.path().join("a"), tmp.path().join("a/b"), target.clone()]
        );
        assert_eq!(owner_of(&dir).unwrap().mode, 0o750);
        let leftovers = std::fs::read_dir(tmp.path().join("a/b")).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary name left beside the new folder");
        remove_made(&created);
        assert!(!tmp.path().join("a").exists());
    }

    #[test]
    fn refuses_a_symlink_anywhere_on_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("real")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("real"), tmp.path().join("link")).unwrap();
        let err = open_dir(&tmp.path().join("link/sub"), Some(me())).unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        assert!(
            !tmp.path().join("real/sub").exists(),
            "nothing created behind the link"
        );
        // A refusal, not a bad argument: the user did not ask for anything wrong.
        assert!(matches!(err, Error::Symlink(_)), "{err}");
        assert_eq!(
            crate::error::Error::from(err).exit_code(),
            crate::error::ExitCode::NotPermitted
        );
    }

    #[test]
    fn missing_without_create_is_not_found() {
        let tmp = tempfile::tempdir().unwrap();
        let err = open_dir(&tmp.path().join("nope"), None).unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err}");
    }

    #[test]
    fn beneath_refuses_parent_components() {
        let tmp = tempfile::tempdir().unwrap();
        let (base, _) = open_dir(tmp.path(), None).unwrap();
        let err = open_beneath(&base, Path::new("../etc"), None).unwrap_err();
        assert!(err.to_string().contains("leaves"), "{err}");
    }

    #[test]
    fn copy_contents_keeps_modes_links_and_times_and_follows_nothing() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let tmp = tempfile::tempdir().unwrap();
        let from = tmp.path().join("from");
        std::fs::create_dir_all(from.join("sub")).unwrap();
        std::fs::write(from.join("a.conf"), "a=1\n").unwrap();
        std::fs::set_permissions(from.join("a.conf"), PermissionsExt::from_mode(0o640)).unwrap();
        std::fs::write(from.join("sub/b"), "b").unwrap();
        std::fs::set_permissions(from.join("sub"), PermissionsExt::from_mode(0o711)).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", from.join("link")).unwrap();
        std::fs::create_dir(tmp.path().join("to")).unwrap();
        let (f, _) = open_dir(&from, None).unwrap();
        let (t, _) = open_dir(&tmp.path().join("to"), None).unwrap();
        assert_eq!(copy_contents(&f, &t).unwrap(), 4);
        let to = tmp.path().join("to");
        assert_eq!(std::fs::read_to_string(to.join("a.conf")).unwrap(), "a=1\n");
        assert_eq!(
            std::fs::metadata(to.join("a.conf")).unwrap().mode() & 0o7777,
            0o640
        );
        assert_eq!(
            std::fs::metadata(to.join("sub")).unwrap().mode() & 0o7777,
            0o711
        );
        assert_eq!(
            std::fs::read_link(to.join("link")).unwrap(),
            Path::new("/etc/hostname")
        );
        assert_eq!(
            std::fs::metadata(to.join("a.conf")).unwrap().mtime(),
            std::fs::metadata(from.join("a.conf")).unwrap().mtime()
        );
        empty_dir(&to).unwrap();
        assert_eq!(std::fs::read_dir(&to).unwrap().count(), 0);
        assert!(
            from.join("a.conf").exists(),
            "emptying the copy leaves the original"
        );
    }

    #[test]
    fn atomic_write_replaces_and_reads_back() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, _) = open_dir(tmp.path(), None).unwrap();
        let owner = Owner {
            mode: 0o600,
            ..me()
        };
        write_file_atomically(&dir, "f.conf", b"one\n", owner).unwrap();
        write_file_atomically(&dir, "f.conf", b"two\n", owner).unwrap();
        let read = read_file_in(&dir, "f.conf", 1024).unwrap();
        assert_eq!(read.contents, "two\n");
        assert_eq!(read.owner.mode, 0o600);
        let leftovers: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left behind");
    }

    #[test]
    fn read_refuses_symlinks_and_oversize() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("big"), vec![b'x'; 100]).unwrap();
        std::os::unix::fs::symlink("big", tmp.path().join("ln")).unwrap();
        let (dir, _) = open_dir(tmp.path(), None).unwrap();
        assert!(matches!(
            read_file_in(&dir, "ln", 1024),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            read_file_in(&dir, "big", 10),
            Err(Error::Invalid(_))
        ));
    }

    /// Plays the live user: whatever folder root just made is swapped for a symlink to
    /// `victim` (the mkdir/chmod race of issue 11, made deterministic).
    fn swap_for_symlink_to(victim: PathBuf) -> impl FnMut(&Path) + 'static {
        move |made: &Path| {
            let aside = made.with_extension("moved-away");
            if std::fs::rename(made, &aside).is_ok() {
                std::os::unix::fs::symlink(&victim, made).unwrap();
            }
        }
    }

    /// A root file of mode 0600 ("secret") and an empty home beside it.
    fn victim_and_home() -> (tempfile::TempDir, PathBuf, PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, "secret").unwrap();
        std::fs::set_permissions(&victim, PermissionsExt::from_mode(0o600)).unwrap();
        let home = tmp.path().join("home");
        std::fs::create_dir(&home).unwrap();
        (tmp, victim, home)
    }

    fn mode_of(path: &Path) -> u32 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn a_folder_swapped_for_a_symlink_while_made_never_passes_its_mode_on() {
        let (_tmp, victim, home) = victim_and_home();
        race::set(swap_for_symlink_to(victim.clone()));
        let result = open_dir(
            &home.join(".gnupg"),
            Some(Owner {
                mode: 0o755,
                ..me()
            }),
        );
        race::clear();
        assert!(
            matches!(result, Err(Error::Changed(_))),
            "{:?}",
            result.err()
        );
        assert_eq!(mode_of(&victim), 0o600, "the victim kept its mode");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "secret");
        // Swapped only after it was renamed into place: the descriptor is still ours.
        let mut armed = false;
        race::set(move |p: &Path| {
            if armed {
                return;
            }
            if p.file_name().is_some_and(|n| n == ".ssh") {
                armed = true;
                swap_for_symlink_to(tmp_victim())(p);
            }
        });
        fn tmp_victim() -> PathBuf {
            PathBuf::from("/nonexistent-victim")
        }
        let result = open_dir(
            &home.join(".ssh"),
            Some(Owner {
                mode: 0o755,
                ..me()
            }),
        );
        race::clear();
        // Refused: the name no longer holds the folder made (which the user moved away,
        // finished, with its mode).
        assert!(
            matches!(result, Err(Error::Changed(_))),
            "{:?}",
            result.err()
        );
        assert_eq!(mode_of(&home.join(".ssh.moved-away")), 0o755);
    }

    #[test]
    fn negative_control_the_same_swap_wins_against_mkdir_then_chmod_by_name() {
        use std::os::unix::fs::PermissionsExt;
        let (_tmp, victim, home) = victim_and_home();
        // The naive way: make the folder, then set its mode by name.
        let target = home.join(".gnupg");
        std::fs::create_dir(&target).unwrap();
        swap_for_symlink_to(victim.clone())(&target);
        std::fs::set_permissions(&target, PermissionsExt::from_mode(0o755)).unwrap();
        assert_eq!(mode_of(&victim), 0o755, "the attack wins against a path");
    }

    #[test]
    fn removal_by_handle_stays_in_its_folder_when_a_parent_is_swapped() {
        let tmp = tempfile::tempdir().unwrap();
        let etc = tmp.path().join("etc");
        std::fs::create_dir(&etc).unwrap();
        std::fs::write(etc.join("victim.conf"), "root's").unwrap();
        let home = tmp.path().join("home");
        std::fs::create_dir_all(home.join("sub")).unwrap();
        let (sub, _) = open_dir(&home.join("sub"), None).unwrap();
        let link = symlink_in(&sub, OsStr::new("victim.conf"), Path::new("/vol/x"), 0, 0);
        let link = link.unwrap();
        // The user swaps the parent for a symlink to a folder of root's.
        std::fs::rename(home.join("sub"), home.join("sub-moved")).unwrap();
        std::os::unix::fs::symlink(&etc, home.join("sub")).unwrap();
        assert!(matches!(link.remove(), Err(Error::Changed(_))));
        assert_eq!(
            std::fs::read_to_string(etc.join("victim.conf")).unwrap(),
            "root's"
        );
        // Negative control: the same removal by path deletes root's file.
        std::fs::remove_file(home.join("sub/victim.conf")).unwrap();
        assert!(!etc.join("victim.conf").exists());
    }

    #[test]
    fn an_entry_replaced_since_it_was_made_is_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, _) = open_dir(tmp.path(), None).unwrap();
        let link = symlink_in(&dir, OsStr::new("l"), Path::new("/a"), 0, 0).unwrap();
        std::fs::remove_file(tmp.path().join("l")).unwrap();
        std::fs::write(tmp.path().join("l"), "the user's new file").unwrap();
        assert!(matches!(link.remove(), Err(Error::Changed(_))));
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("l")).unwrap(),
            "the user's new file"
        );
    }

    #[test]
    fn a_displaced_file_goes_back_only_where_it_was() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(".bashrc"), "mine").unwrap();
        let (dir, _) = open_dir(tmp.path(), None).unwrap();
        let entry = list(&dir)
            .unwrap()
            .into_iter()
            .find(|e| e.name == ".bashrc")
            .unwrap();
        let aside = Displaced::move_aside(&dir, &entry).unwrap();
        assert!(!tmp.path().join(".bashrc").exists());
        // Something new took the name meanwhile: it is not overwritten.
        std::fs::write(tmp.path().join(".bashrc"), "new").unwrap();
        assert!(aside.put_back().is_err());
        assert_eq!(
            std::fs::read_to_string(tmp.path().join(".bashrc")).unwrap(),
            "new"
        );
    }
}
