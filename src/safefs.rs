//! Filesystem access that never follows a symlink it did not expect.
//!
//! Destinations live in folders the live user owns (`/home/amnesia/.gnupg`): if keepsake
//! resolved such a path by name, the user could swap a folder for a symlink and have the
//! volume mounted over `/etc`. So every path is walked one component at a time with
//! `O_NOFOLLOW`, and mounts are made on the resulting descriptors (`/proc/self/fd/N`).

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat, renameat};
use nix::sys::stat::{FchmodatFlags, Mode, fchmodat, fstat, mkdirat};
use nix::unistd::{Gid, Uid, fchownat};

use crate::error::{Context, Error, Result};

/// Who owns a folder keepsake creates, and its mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

impl Owner {
    pub const ROOT_0755: Owner = Owner {
        uid: 0,
        gid: 0,
        mode: 0o755,
    };
}

/// An open directory and the path it was reached by (for messages only).
#[derive(Debug)]
pub struct Dir {
    pub fd: OwnedFd,
    pub path: PathBuf,
    /// The folder it was opened from and its name there, to look it up again.
    parent: Option<(OwnedFd, std::ffi::OsString)>,
}

impl Dir {
    /// Looks the directory up again by name in its parent: after a mount on it, this is
    /// the root of the new mount (the old descriptor still names what is underneath).
    pub fn reopen(&self) -> Result<Dir> {
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
        })
    }

    /// `/proc/self/fd/N`: a path that names exactly this directory, for mount(2).
    pub fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }
}

fn path_flags() -> OFlag {
    OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

fn symlink_refusal(path: &Path) -> Error {
    Error::Usage(format!(
        "{} is a symlink or not a directory; refusing to follow it",
        path.display()
    ))
}

/// Opens an absolute directory path, refusing any symlink along it. With `create`, missing
/// components are made with that owner and mode, and their paths are returned (outermost
/// first) so that a rollback can remove them.
pub fn open_dir(path: &Path, create: Option<Owner>) -> Result<(Dir, Vec<PathBuf>)> {
    if !path.is_absolute() {
        return Err(Error::Internal(format!(
            "{} is not absolute",
            path.display()
        )));
    }
    let root = Dir {
        fd: openat(nix::fcntl::AT_FDCWD, "/", path_flags(), Mode::empty())
            .context(|| "opening /".into())?,
        path: PathBuf::from("/"),
        parent: None,
    };
    open_beneath(&root, path.strip_prefix("/").unwrap_or(path), create)
}

/// Opens `rel` below `base`, refusing symlinks and `..`; see [`open_dir`].
pub fn open_beneath(base: &Dir, rel: &Path, create: Option<Owner>) -> Result<(Dir, Vec<PathBuf>)> {
    let mut current = Dir {
        fd: base
            .fd
            .try_clone()
            .context(|| format!("opening {}", base.path.display()))?,
        path: base.path.clone(),
        parent: None,
    };
    let mut created = Vec::new();
    for component in rel.components() {
        let name = match component {
            Component::Normal(name) => name,
            Component::CurDir => continue,
            _ => {
                return Err(Error::Usage(format!(
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
                make_dir(&current, name, owner, &next_path)?;
                created.push(next_path.clone());
                openat(&current.fd, name, path_flags(), Mode::empty())
                    .context(|| format!("opening {}", next_path.display()))?
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
        };
    }
    Ok((current, created))
}

fn make_dir(parent: &Dir, name: &OsStr, owner: Owner, shown: &Path) -> Result<()> {
    mkdirat(&parent.fd, name, Mode::from_bits_truncate(0o700))
        .context(|| format!("creating {}", shown.display()))?;
    fchownat(
        &parent.fd,
        name,
        Some(Uid::from_raw(owner.uid)),
        Some(Gid::from_raw(owner.gid)),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .context(|| format!("setting the owner of {}", shown.display()))?;
    // The mode is set after the owner so the folder is never open to others meanwhile;
    // chmod is not subject to the umask.
    fchmodat(
        &parent.fd,
        name,
        Mode::from_bits_truncate(owner.mode),
        FchmodatFlags::FollowSymlink,
    )
    .context(|| format!("setting the mode of {}", shown.display()))
}

/// Removes directories made by [`open_dir`], innermost first, only while they are empty.
pub fn remove_created(created: &[PathBuf]) {
    for dir in created.iter().rev() {
        let _ = std::fs::remove_dir(dir);
    }
}

/// Owner and mode of an open directory.
pub fn owner_of(dir: &Dir) -> Result<Owner> {
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
}

/// Reads the file `name` in `dir` (not a symlink, at most `max` bytes).
pub fn read_file_in(dir: &Dir, name: &str, max: u64) -> Result<CheckedFile> {
    let shown = dir.path.join(name);
    let fd = openat(
        &dir.fd,
        name,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::ENOENT => Error::NotFound(format!("{} does not exist", shown.display())),
        Errno::ELOOP => Error::Corrupt(format!("{} is a symlink", shown.display())),
        e => Error::Io {
            context: format!("opening {}", shown.display()),
            source: e.into(),
        },
    })?;
    let st = fstat(&fd).context(|| format!("reading {}", shown.display()))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(Error::Corrupt(format!(
            "{} is not a regular file",
            shown.display()
        )));
    }
    if st.st_size as u64 > max {
        return Err(Error::Corrupt(format!(
            "{} is larger than {max} bytes",
            shown.display()
        )));
    }
    let mut contents = String::new();
    File::from(fd)
        .take(max)
        .read_to_string(&mut contents)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => {
                Error::Corrupt(format!("{} is not valid UTF-8", shown.display()))
            }
            _ => Error::Io {
                context: format!("reading {}", shown.display()),
                source: e,
            },
        })?;
    Ok(CheckedFile {
        contents,
        owner: Owner {
            uid: st.st_uid,
            gid: st.st_gid,
            mode: st.st_mode & 0o7777,
        },
    })
}

/// Replaces the file `name` in `dir` atomically: write a temporary file beside it, fsync,
/// rename over, fsync the folder. A power cut leaves either the old or the new file.
pub fn write_file_atomically(dir: &Dir, name: &str, contents: &[u8], owner: Owner) -> Result<()> {
    let shown = dir.path.join(name);
    // The directory was opened O_PATH; reopen it for the fsync and the *at calls.
    let dirfd = openat(
        &dir.fd,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .context(|| format!("opening {}", dir.path.display()))?;
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
        nix::unistd::fchown(
            &fd,
            Some(Uid::from_raw(owner.uid)),
            Some(Gid::from_raw(owner.gid)),
        )
        .context(|| format!("setting the owner of {}", shown.display()))?;
        nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(owner.mode))
            .context(|| format!("setting the mode of {}", shown.display()))?;
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

/// Copies what is in `from` into the empty folder `to`, as `cp -a` does: folders, regular
/// files and symlinks, with their owners, modes and times. Nothing is followed: every
/// entry is opened with `O_NOFOLLOW` relative to its open parent, so the owner of `from`
/// cannot swap in a symlink and have another file copied. Other file types (sockets,
/// devices, fifos) are skipped. Returns how many entries were copied.
pub fn copy_contents(from: &Dir, to: &Dir) -> Result<u64> {
    use nix::sys::stat::{SFlag, fstatat};
    let listing = std::fs::read_dir(from.proc_path())
        .context(|| format!("listing {}", from.path.display()))?;
    let mut names: Vec<std::ffi::OsString> = listing
        .filter_map(|d| d.ok())
        .map(|d| d.file_name())
        .collect();
    names.sort();
    let mut copied = 0;
    for name in names {
        let shown = from.path.join(&name);
        let st = fstatat(&from.fd, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
            .context(|| format!("reading {}", shown.display()))?;
        let kind = SFlag::from_bits_truncate(st.st_mode & libc::S_IFMT);
        let owner = Owner {
            uid: st.st_uid,
            gid: st.st_gid,
            mode: st.st_mode & 0o7777,
        };
        if kind == SFlag::S_IFDIR {
            make_dir(to, &name, owner, &to.path.join(&name))?;
            let (sub_from, _) = open_beneath(from, Path::new(&name), None)?;
            let (sub_to, _) = open_beneath(to, Path::new(&name), None)?;
            copied += copy_contents(&sub_from, &sub_to)?;
        } else if kind == SFlag::S_IFREG {
            copy_file(from, to, &name, &st)?;
        } else if kind == SFlag::S_IFLNK {
            let target = nix::fcntl::readlinkat(&from.fd, name.as_os_str())
                .context(|| format!("reading the link {}", shown.display()))?;
            nix::unistd::symlinkat(target.as_os_str(), &to.fd, name.as_os_str())
                .context(|| format!("copying the link {}", shown.display()))?;
            fchownat(
                &to.fd,
                name.as_os_str(),
                Some(Uid::from_raw(owner.uid)),
                Some(Gid::from_raw(owner.gid)),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .context(|| format!("setting the owner of {}", to.path.join(&name).display()))?;
        } else {
            continue;
        }
        set_times(to, &name, &st)?;
        copied += 1;
    }
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

/// Removes everything inside the folder `dir` (not the folder itself), without following
/// symlinks: the undo of [`copy_contents`].
/// Overwrites a regular file with zeros, syncs it and removes it; best effort (for the
/// header backup, which lives in RAM, so that no copy lingers in the page cache either).
pub fn wipe_and_remove(path: &Path) {
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

pub fn empty_dir(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if std::fs::symlink_metadata(&path)?.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Owner {
        Owner {
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            mode: 0o750,
        }
    }

    #[test]
    fn creates_missing_components_with_owner_and_mode() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("a/b/c");
        let (dir, created) = open_dir(&target, Some(me())).unwrap();
        assert_eq!(
            created,
            vec![tmp.path().join("a"), tmp.path().join("a/b"), target.clone()]
        );
        assert_eq!(owner_of(&dir).unwrap().mode, 0o750);
        remove_created(&created);
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
            Err(Error::Corrupt(_))
        ));
        assert!(matches!(
            read_file_in(&dir, "big", 10),
            Err(Error::Corrupt(_))
        ));
    }
}
