//! The facts of a file other than its bytes, read and written by handle: owner, mode,
//! times and the extended attributes keepsake keeps ([`crate::safefs::xattr::kept`]: the
//! user's, root's, file capabilities and the POSIX ACLs, as archives keep them).
//! Everything goes through an open parent folder and the entry's name, never following a
//! symlink at the end ([`On::Entry`]), or through an open file.

use std::ffi::OsStr;
use std::os::fd::AsFd;

use nix::errno::Errno;
use nix::sys::stat::FileStat;

use super::{Error, Result};
use crate::context::IoError;
use crate::safefs::Dir;
use crate::safefs::xattr::{On, Xattr};

/// A file's kept extended attributes, sorted by name.
#[derive(Debug, Default, PartialEq, Eq, Clone)]
pub(crate) struct Xattrs(pub(crate) Vec<Xattr>);

fn io_error(doing: &str, dir: &Dir, name: &OsStr, e: std::io::Error) -> Error {
    Error::Io(IoError::new(
        format!("{doing} {}", dir.path.join(name).display()),
        e,
    ))
}

fn errno_error(doing: &str, dir: &Dir, name: &OsStr, errno: Errno) -> Error {
    io_error(doing, dir, name, std::io::Error::from(errno))
}

/// The attributes of `name` in `dir`, the entry itself (a symlink's own).
pub(crate) fn read(dir: &Dir, name: &OsStr) -> Result<Xattrs> {
    let (kept, _) = On::Entry(&dir.fd, name)
        .read()
        .map_err(|e| io_error("reading the attributes of", dir, name, e))?;
    Ok(Xattrs(kept))
}

/// The attributes of an open file (`shown` names it in errors).
pub(crate) fn read_open(file: &impl AsFd, shown: &std::path::Path) -> Result<Xattrs> {
    let (kept, _) = On::Fd(file).read().map_err(|e| {
        Error::Io(IoError::new(
            format!("reading the attributes of {}", shown.display()),
            e,
        ))
    })?;
    Ok(Xattrs(kept))
}

/// Makes the attributes of `name` in `dir` exactly `want`: first removes each it has that
/// is not in `want` or has another value there (a new file inherits its folder's default
/// ACL, which the source may not have), then sets each of `want` it lacks. So every state
/// on the way holds only attributes of `want`. Why: ext4 (without `ea_inode`, as mkfs
/// leaves it) keeps all of a file's attributes in one block, and setting a new one beside
/// an old one the source dropped can fail for room (ENOSPC) where `want` alone fits; in a
/// plan's step that fails so, every later try failed the same way.
pub(crate) fn write(dir: &Dir, name: &OsStr, want: &Xattrs) -> Result<()> {
    let on = On::Entry(&dir.fd, name);
    let have = read(dir, name)?;
    for (attr, value) in &have.0 {
        if !want.0.iter().any(|(w, v)| w == attr && v == value) {
            on.remove(attr).map_err(|e| {
                io_error(
                    &format!("removing {} from", String::from_utf8_lossy(attr)),
                    dir,
                    name,
                    e,
                )
            })?;
        }
    }
    for (attr, value) in &want.0 {
        if !have.0.iter().any(|(h, v)| h == attr && v == value) {
            on.set(attr, value).map_err(|e| {
                io_error(
                    &format!("setting {} on", String::from_utf8_lossy(attr)),
                    dir,
                    name,
                    e,
                )
            })?;
        }
    }
    Ok(())
}

/// What a copy must match besides the attributes: type, owner, mode, modification time
/// and, for a regular file, its size (as rsync decides that a file is unchanged).
pub(crate) fn same_stat(a: &FileStat, b: &FileStat) -> bool {
    let kind = |s: &FileStat| s.st_mode & libc::S_IFMT;
    kind(a) == kind(b)
        && a.st_mode & 0o7777 == b.st_mode & 0o7777
        && a.st_uid == b.st_uid
        && a.st_gid == b.st_gid
        && a.st_mtime == b.st_mtime
        && a.st_mtime_nsec == b.st_mtime_nsec
        && (kind(a) != libc::S_IFREG || a.st_size == b.st_size)
}

/// Gives the entry `name` in `dir` the owner, attributes, mode and times of `st` and
/// `xattrs`, in the order that keeps each: the owner first (a change of owner clears
/// setuid and setgid), the attributes (with the ACLs) before the mode (which sets the
/// ACL mask from the group bits, as the source's are), the times last. Should the
/// attributes fail half way (an access ACL removed, the new one not set), the entry is
/// closed to all but its owner (the mode's owner bits alone) rather than left open to
/// its group by a mode meant to go with an ACL; the error is returned once the mode and
/// times are set.
pub(crate) fn apply(dir: &Dir, name: &OsStr, st: &FileStat, xattrs: &Xattrs) -> Result<()> {
    use nix::fcntl::AtFlags;
    use nix::sys::stat::{FchmodatFlags, Mode, UtimensatFlags, fchmodat, utimensat};
    use nix::sys::time::TimeSpec;
    use nix::unistd::{Gid, Uid, fchownat};
    let is_link = st.st_mode & libc::S_IFMT == libc::S_IFLNK;
    fchownat(
        dir.fd.as_fd(),
        name,
        Some(Uid::from_raw(st.st_uid)),
        Some(Gid::from_raw(st.st_gid)),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| errno_error("setting the owner of", dir, name, e))?;
    let attributes = write(dir, name, xattrs);
    let mode = Mode::from_bits_truncate(if attributes.is_ok() {
        st.st_mode & 0o7777
    } else {
        st.st_mode & 0o700
    });
    // A symlink has no mode of its own on Linux.
    if !is_link {
        fchmodat(dir.fd.as_fd(), name, mode, FchmodatFlags::NoFollowSymlink)
            .or_else(|e| match e {
                // Older kernels refuse the flag for anything; the entry is not a symlink here.
                Errno::EOPNOTSUPP => {
                    fchmodat(dir.fd.as_fd(), name, mode, FchmodatFlags::FollowSymlink)
                }
                e => Err(e),
            })
            .map_err(|e| errno_error("setting the mode of", dir, name, e))?;
    }
    utimensat(
        dir.fd.as_fd(),
        name,
        &TimeSpec::new(st.st_atime, st.st_atime_nsec),
        &TimeSpec::new(st.st_mtime, st.st_mtime_nsec),
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| errno_error("setting the times of", dir, name, e))?;
    attributes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> (tempfile::TempDir, Dir) {
        let t = tempfile::tempdir_in("/dev/shm").unwrap();
        let (d, _) = crate::safefs::open_dir(t.path(), None).unwrap();
        (t, d)
    }

    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn attributes_are_copied_exactly_and_extra_ones_removed() {
        let (t, d) = tmp();
        std::fs::write(t.path().join("a"), b"x").unwrap();
        std::fs::write(t.path().join("b"), b"x").unwrap();
        let set = |f: &str, n: &str, v: &[u8]| {
            let p = CString::new(t.path().join(f).as_os_str().as_bytes()).unwrap();
            let n = CString::new(n).unwrap();
            // SAFETY: valid C strings and buffer.
            assert_eq!(
                unsafe { libc::setxattr(p.as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), 0) },
                0
            );
        };
        set("a", "user.one", b"1");
        set("a", "user.two", b"");
        set("b", "user.stale", b"old");
        let from = read(&d, OsStr::new("a")).unwrap();
        assert_eq!(from.0.len(), 2);
        write(&d, OsStr::new("b"), &from).unwrap();
        assert_eq!(read(&d, OsStr::new("b")).unwrap(), from);
        // Negative control: a file with other attributes reads differently.
        set("b", "user.stale", b"old");
        assert_ne!(read(&d, OsStr::new("b")).unwrap(), from);
    }

    #[test]
    fn attributes_the_source_swapped_for_others_of_the_same_size_fit_on_ext4() {
        let fs = crate::mirror::tests::Ext4::new();
        let (d, _) = crate::safefs::open_dir(fs.mnt.path(), None).unwrap();
        std::fs::write(fs.mnt.path().join("f"), b"x").unwrap();
        let big = |n: &str, byte: u8| (n.as_bytes().to_vec(), vec![byte; 2100]);
        write(&d, OsStr::new("f"), &Xattrs(vec![big("user.a", 1)])).unwrap();
        // The source dropped user.a and has user.b as big: both at once do not fit in the
        // one block, each alone does.
        let want = Xattrs(vec![big("user.b", 2)]);
        write(&d, OsStr::new("f"), &want).unwrap();
        assert_eq!(read(&d, OsStr::new("f")).unwrap(), want);
        // Values traded between two names: the bigger set on the way would not fit either.
        let before = Xattrs(vec![(b"user.a".to_vec(), vec![3; 100]), big("user.c", 4)]);
        write(&d, OsStr::new("f"), &before).unwrap();
        let want = Xattrs(vec![big("user.a", 5), (b"user.c".to_vec(), vec![6; 100])]);
        write(&d, OsStr::new("f"), &want).unwrap();
        assert_eq!(read(&d, OsStr::new("f")).unwrap(), want);
    }

    #[test]
    fn an_entry_whose_attributes_cannot_be_set_is_closed_to_all_but_its_owner() {
        use std::os::unix::fs::PermissionsExt;
        let fs = crate::mirror::tests::Ext4::new();
        let (d, _) = crate::safefs::open_dir(fs.mnt.path(), None).unwrap();
        let f = fs.mnt.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut st = nix::sys::stat::stat(&f).unwrap();
        st.st_mode = libc::S_IFREG | 0o640;
        // Two attributes of 2100 bytes: more than ext4's one block holds.
        let big = |n: &str| (n.as_bytes().to_vec(), vec![1u8; 2100]);
        let too_many = Xattrs(vec![big("user.a"), big("user.b")]);
        let e = apply(&d, OsStr::new("f"), &st, &too_many).expect_err("no room");
        assert!(e.to_string().contains("setting user.b"), "{e}");
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600, "the owner's bits of the mode wanted, no more");
    }

    #[test]
    fn a_symlink_is_read_as_itself() {
        let (t, d) = tmp();
        std::fs::write(t.path().join("target"), b"x").unwrap();
        let p = CString::new(t.path().join("target").as_os_str().as_bytes()).unwrap();
        // SAFETY: valid C strings and buffer.
        unsafe { libc::setxattr(p.as_ptr(), c"user.t".as_ptr(), b"v".as_ptr().cast(), 1, 0) };
        std::os::unix::fs::symlink("target", t.path().join("link")).unwrap();
        assert!(read(&d, OsStr::new("link")).unwrap().0.is_empty());
        assert_eq!(read(&d, OsStr::new("target")).unwrap().0.len(), 1);
    }
}
