//! A regular file's bytes copied to a new file, holes kept as holes: only the ranges
//! `SEEK_DATA` finds are copied, by `copy_file_range` where the kernel copies between the
//! two filesystems, by reads and writes where it does not.

use std::fs::File;
use std::os::fd::AsRawFd;

use nix::errno::Errno;
use zeroize::Zeroizing;

/// Copies the first `size` bytes of `from` into the empty `to`, which ends `size` long.
/// Returns the bytes written (the data, not the holes).
pub(crate) fn copy_data(from: &File, to: &File, size: u64) -> std::io::Result<u64> {
    to.set_len(size)?;
    let mut written = 0;
    let mut pos = 0u64;
    let mut kernel_copies = true;
    while pos < size {
        let (start, end) = match data_range(from, pos, size)? {
            Some(range) => range,
            None => break,
        };
        let mut at = start;
        while at < end {
            let n = if kernel_copies {
                match kernel_copy(from, to, at, end - at) {
                    Ok(n) => n,
                    Err(e) if falls_back(&e) => {
                        kernel_copies = false;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            } else {
                user_copy(from, to, at, end - at)?
            };
            if n == 0 {
                // The source ended early (it shrank): the rest stays a hole, and the
                // caller sees the change in the file's size.
                return Ok(written);
            }
            at += n;
            written += n;
        }
        pos = end;
    }
    Ok(written)
}

/// The next range of data at or after `pos`, within `size`; `None` past the last.
fn data_range(file: &File, pos: u64, size: u64) -> std::io::Result<Option<(u64, u64)>> {
    let fd = file.as_raw_fd();
    // SAFETY: lseek on an open descriptor.
    let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
    if data < 0 {
        return match Errno::last() {
            Errno::ENXIO => Ok(None),
            // No SEEK_DATA here: all of it is data.
            Errno::EINVAL | Errno::EOPNOTSUPP => Ok(Some((pos, size))),
            e => Err(e.into()),
        };
    }
    let data = (data as u64).min(size);
    // SAFETY: as above.
    let hole = unsafe { libc::lseek(fd, data as libc::off_t, libc::SEEK_HOLE) };
    let hole = if hole < 0 {
        size
    } else {
        (hole as u64).min(size)
    };
    Ok((data < hole).then_some((data, hole)))
}

fn kernel_copy(from: &File, to: &File, at: u64, len: u64) -> std::io::Result<u64> {
    let mut off_in = at as libc::loff_t;
    let mut off_out = at as libc::loff_t;
    let len = len.min(1 << 30) as usize;
    // SAFETY: two open descriptors and offsets we own.
    let n = unsafe {
        libc::copy_file_range(
            from.as_raw_fd(),
            &mut off_in,
            to.as_raw_fd(),
            &mut off_out,
            len,
            0,
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as u64)
}

/// The kernel cannot copy between these two files: do it by hand.
fn falls_back(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EXDEV | libc::EINVAL | libc::EOPNOTSUPP | libc::ENOSYS | libc::EBADF)
    )
}

fn user_copy(from: &File, to: &File, at: u64, len: u64) -> std::io::Result<u64> {
    use std::os::unix::fs::FileExt;
    // The user's bytes pass through here: wiped when done.
    let mut buf = Zeroizing::new(vec![0u8; len.min(1 << 20) as usize]);
    let n = from.read_at(&mut buf, at)?;
    to.write_all_at(&buf[..n], at)?;
    Ok(n as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    #[test]
    fn holes_stay_holes_and_bytes_match() {
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let mut src = File::create(dir.path().join("src")).unwrap();
        src.write_all(b"head").unwrap();
        src.seek(SeekFrom::Start(8 << 20)).unwrap();
        src.write_all(b"tail").unwrap();
        src.set_len(16 << 20).unwrap();
        let src = File::open(dir.path().join("src")).unwrap();
        let dst = File::create(dir.path().join("dst")).unwrap();
        let written = copy_data(&src, &dst, 16 << 20).unwrap();
        drop(dst);
        let (a, b) = (
            std::fs::read(dir.path().join("src")).unwrap(),
            std::fs::read(dir.path().join("dst")).unwrap(),
        );
        assert_eq!(a, b);
        // Only the two pages of data were written, not 16 MiB.
        assert!(written < 1 << 20, "wrote {written}");
        use std::os::unix::fs::MetadataExt;
        let blocks = std::fs::metadata(dir.path().join("dst")).unwrap().blocks();
        assert!(blocks * 512 < 1 << 20, "{blocks} blocks");
    }

    #[test]
    fn by_hand_gives_the_same_bytes() {
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(dir.path().join("src"), &data).unwrap();
        let src = File::open(dir.path().join("src")).unwrap();
        let dst = File::create(dir.path().join("dst")).unwrap();
        let mut at = 0;
        while at < data.len() as u64 {
            at += user_copy(&src, &dst, at, data.len() as u64 - at).unwrap();
        }
        assert_eq!(std::fs::read(dir.path().join("dst")).unwrap(), data);
    }
}
