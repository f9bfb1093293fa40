//! Extended attributes (and so POSIX ACLs, which the kernel keeps as the
//! `system.posix_acl_*` attributes), read and written on a descriptor, or on the last
//! component of a name in an open folder without following it: never through a path the
//! live user could swap a symlink into.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;

/// One attribute: its full name (`user.comment`) and its value.
pub(crate) type Xattr = (Vec<u8>, Vec<u8>);

/// The ACL attributes, which `crate::safefs::acl_xattr` encodes.
pub(crate) const ACL_ACCESS: &[u8] = b"system.posix_acl_access";
pub(crate) const ACL_DEFAULT: &[u8] = b"system.posix_acl_default";

/// Whether a file's mode and kept attributes `new` let anyone at its data whom `old` did
/// not: a permission bit `old` lacks, or another access ACL. Data kept from before (an
/// incremental backup's quick check) must then be taken again: two of root's files in the
/// live user's folder, of one size and time, one private and one not, could be swapped by
/// the live user to give the private bytes the other's access.
pub(crate) fn opens_up(old_mode: u32, old: &[Xattr], new_mode: u32, new: &[Xattr]) -> bool {
    fn acl(x: &[Xattr]) -> Option<&[u8]> {
        x.iter()
            .find(|(name, _)| name.as_slice() == ACL_ACCESS)
            .map(|(_, value)| value.as_slice())
    }
    new_mode & 0o7777 & !(old_mode & 0o7777) != 0 || acl(old) != acl(new)
}

/// The largest value the kernel stores (XATTR_SIZE_MAX).
pub(crate) const MAX_VALUE: usize = 64 * 1024;

/// Whether an attribute is one keepsake keeps: the user's own (`user.*`), root's
/// (`trusted.*`), file capabilities (`security.capability`, which travel with the file as
/// setuid does), and the two ACLs. Other `security.*` attributes are labels of the
/// security policy of the system that wrote them (SELinux, IMA, EVM, Smack), meaningless
/// or harmful on another, and other `system.*` names are file-system specific.
pub(crate) fn kept(name: &[u8]) -> bool {
    name.starts_with(b"user.")
        || name.starts_with(b"trusted.")
        || name == b"security.capability"
        || name == ACL_ACCESS
        || name == ACL_DEFAULT
}

/// Where an attribute call acts: an open file or folder, or the entry `name` in the open
/// folder `parent`, not followed if it is a symlink (through `/proc/self/fd/N/name`: the
/// folder is the one held open, and the `l*` calls do not follow the last component).
#[derive(Clone, Copy)]
pub(crate) enum On<'a, F: AsFd> {
    Fd(&'a F),
    Entry(&'a F, &'a OsStr),
}

impl<F: AsFd> On<'_, F> {
    fn entry_path(parent: &F, name: &OsStr) -> io::Result<CString> {
        let mut path = format!("/proc/self/fd/{}/", parent.as_fd().as_raw_fd()).into_bytes();
        path.extend_from_slice(name.as_bytes());
        CString::new(path).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
    }

    /// The names of every attribute, kept or not.
    fn names(&self) -> io::Result<Vec<Vec<u8>>> {
        let mut buf = vec![0u8; 4096];
        loop {
            // SAFETY: a buffer of the length given, and a NUL-terminated path.
            let n = unsafe {
                match self {
                    On::Fd(fd) => {
                        libc::flistxattr(fd.as_fd().as_raw_fd(), buf.as_mut_ptr().cast(), buf.len())
                    }
                    On::Entry(parent, name) => {
                        let path = Self::entry_path(parent, name)?;
                        libc::llistxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
                    }
                }
            };
            if n >= 0 {
                buf.truncate(n as usize);
                return Ok(buf
                    .split(|&b| b == 0)
                    .filter(|n| !n.is_empty())
                    .map(<[u8]>::to_vec)
                    .collect());
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                // The list grew between calls; the kernel caps it at 64 KiB.
                Some(libc::ERANGE) if buf.len() < MAX_VALUE * 2 => buf.resize(buf.len() * 4, 0),
                Some(libc::ENOTSUP) => return Ok(vec![]),
                _ => return Err(e),
            }
        }
    }

    /// The value of `name`; `None` if it went meanwhile.
    fn value(&self, name: &[u8]) -> io::Result<Option<Vec<u8>>> {
        let cname = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let mut buf = vec![0u8; MAX_VALUE];
        // SAFETY: NUL-terminated name and path, a buffer of the length given.
        let n = unsafe {
            match self {
                On::Fd(fd) => libc::fgetxattr(
                    fd.as_fd().as_raw_fd(),
                    cname.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                ),
                On::Entry(parent, entry) => {
                    let path = Self::entry_path(parent, entry)?;
                    libc::lgetxattr(
                        path.as_ptr(),
                        cname.as_ptr(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                    )
                }
            }
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENODATA) => Ok(None),
                _ => Err(e),
            };
        }
        buf.truncate(n as usize);
        Ok(Some(buf))
    }

    /// Every attribute [`kept`], sorted by name, and the names of those left out.
    pub(crate) fn read(&self) -> io::Result<(Vec<Xattr>, Vec<Vec<u8>>)> {
        let (mut keep, mut left_out) = (Vec::new(), Vec::new());
        for name in self.names()? {
            if !kept(&name) {
                left_out.push(name);
                continue;
            }
            if let Some(value) = self.value(&name)? {
                keep.push((name, value));
            }
        }
        keep.sort();
        Ok((keep, left_out))
    }

    /// Removes `name`; already absent is no error.
    pub(crate) fn remove(&self, name: &[u8]) -> io::Result<()> {
        let cname = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: NUL-terminated name and path.
        let rc = unsafe {
            match self {
                On::Fd(fd) => libc::fremovexattr(fd.as_fd().as_raw_fd(), cname.as_ptr()),
                On::Entry(parent, entry) => {
                    let path = Self::entry_path(parent, entry)?;
                    libc::lremovexattr(path.as_ptr(), cname.as_ptr())
                }
            }
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ENODATA) {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Sets `name` to `value`.
    pub(crate) fn set(&self, name: &[u8], value: &[u8]) -> io::Result<()> {
        let cname = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: NUL-terminated name and path, a value of the length given.
        let rc = unsafe {
            match self {
                On::Fd(fd) => libc::fsetxattr(
                    fd.as_fd().as_raw_fd(),
                    cname.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    0,
                ),
                On::Entry(parent, entry) => {
                    let path = Self::entry_path(parent, entry)?;
                    libc::lsetxattr(
                        path.as_ptr(),
                        cname.as_ptr(),
                        value.as_ptr().cast(),
                        value.len(),
                        0,
                    )
                }
            }
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::safefs::{AclEntry, acl_xattr, parse_acl};
    use std::os::fd::OwnedFd;

    fn open(path: &std::path::Path, flags: nix::fcntl::OFlag) -> OwnedFd {
        nix::fcntl::openat(
            nix::fcntl::AT_FDCWD,
            path,
            flags | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .unwrap()
    }

    #[test]
    fn attributes_round_trip_on_descriptors_and_symlinks_are_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("f"), b"x").unwrap();
        std::os::unix::fs::symlink("f", tmp.path().join("l")).unwrap();
        let file = open(&tmp.path().join("f"), nix::fcntl::OFlag::O_RDONLY);
        let dir = open(tmp.path(), nix::fcntl::OFlag::O_RDONLY);
        if On::Fd(&file).set(b"user.note", b"hello").is_err() {
            eprintln!("no user xattrs on the test's file system; skipped");
            return;
        }
        let (read, _) = On::Fd(&file).read().unwrap();
        assert_eq!(read, vec![(b"user.note".to_vec(), b"hello".to_vec())]);
        // Read at the symlink without following it: the link's own attribute (trusted.*
        // may be on a symlink, as root) and not the file's; user.* cannot be set on a
        // symlink at all.
        let link = On::Entry(&dir, OsStr::new("l"));
        let own = link.set(b"trusted.mine", b"link").is_ok();
        let expected = if own {
            vec![(b"trusted.mine".to_vec(), b"link".to_vec())]
        } else {
            vec![]
        };
        assert_eq!(link.read().unwrap().0, expected);
        assert!(link.set(b"user.x", b"y").is_err());
        // An ACL, in the kernel's encoding (safefs's helpers).
        let acl = [
            AclEntry {
                tag: 0x01,
                perm: 6,
                id: u32::MAX,
            },
            AclEntry {
                tag: 0x02,
                perm: 4,
                id: 1000,
            },
            AclEntry {
                tag: 0x04,
                perm: 4,
                id: u32::MAX,
            },
            AclEntry {
                tag: 0x10,
                perm: 4,
                id: u32::MAX,
            },
            AclEntry {
                tag: 0x20,
                perm: 0,
                id: u32::MAX,
            },
        ];
        let entry = On::Entry(&dir, OsStr::new("f"));
        if entry.set(ACL_ACCESS, &acl_xattr(&acl)).is_ok() {
            let (read, _) = entry.read().unwrap();
            let value = &read.iter().find(|(n, _)| n == ACL_ACCESS).unwrap().1;
            assert_eq!(parse_acl(value), acl);
        }
    }

    #[test]
    fn only_the_documented_namespaces_are_kept() {
        for name in [
            &b"user.a"[..],
            b"trusted.overlay.x",
            b"security.capability",
            ACL_ACCESS,
            ACL_DEFAULT,
        ] {
            assert!(kept(name), "{name:?}");
        }
        for name in [
            &b"security.selinux"[..],
            b"security.ima",
            b"system.nfs4_acl",
            b"user",
            b"",
        ] {
            assert!(!kept(name), "{name:?}");
        }
    }
}
