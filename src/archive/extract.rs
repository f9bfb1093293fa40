//! Recreating the entries of an archive below an empty folder: every entry's parent is a
//! folder this extraction created, walked down to on descriptors with `O_NOFOLLOW`, so no
//! archive can place anything outside the folder, and no symlink it made is followed.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{Mode, UtimensatFlags, fchmod, futimens, mkdirat, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, fchown, fchownat, symlinkat};

use zeroize::Zeroizing;

use super::{Error, Result};
use crate::context::{Context, IoError, at};
use crate::safefs::treewalk::{DirStack, list_dir};
use crate::safefs::xattr::{On, Xattr};

/// Ownership, permissions and modification time of an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Meta {
    /// Permission bits, with setuid, setgid and sticky (st_mode & 0o7777).
    pub(crate) mode: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) mtime: i64,
    pub(crate) mtime_nsec: u32,
}

impl Meta {
    pub(crate) fn of(st: &nix::sys::stat::FileStat) -> Meta {
        Meta {
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            mtime: st.st_mtime,
            mtime_nsec: st.st_mtime_nsec as u32,
        }
    }

    pub(crate) fn mtime(&self) -> TimeSpec {
        TimeSpec::new(self.mtime, i64::from(self.mtime_nsec))
    }
}

/// The parent (empty at the top) and the last component of a checked path.
pub(crate) fn split_path(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(slash) => (&path[..slash], &path[slash + 1..]),
        None => (&[], path),
    }
}

/// Recreates entries below an empty folder.
pub(crate) struct Extractor {
    dest: PathBuf,
    /// The folders last walked down to, by name, with descriptors open for the innermost
    /// few only (see crate::safefs::treewalk): consecutive entries mostly share their parent, so
    /// each folder is opened about once, and a deep tree does not run out of descriptors.
    open: DirStack,
    /// Folders created, in archive order, with the metadata and extended attributes to
    /// give them at the end.
    dirs: Vec<(Vec<u8>, Meta, Vec<Xattr>)>,
    /// Extended attributes that could not be restored, said rather than dropped.
    warnings: Vec<String>,
    as_root: bool,
    /// Files whose data is written, given their metadata and closed on a thread of their
    /// own; `None` on one thread.
    finisher: Option<Finisher>,
}

impl Extractor {
    /// An extractor into `dest` that works on `threads` threads: with more than one, files
    /// are finished on a thread of their own (see [`Finisher`]).
    pub(crate) fn new(dest: &Path, threads: usize) -> Result<Extractor> {
        let root = openat(
            nix::fcntl::AT_FDCWD,
            dest,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .context(at("opening", dest))?;
        if !list_dir(&root, dest)?.is_empty() {
            return Err(Error::Refused(format!(
                "{} is not empty; restore into an empty folder",
                dest.display()
            )));
        }
        let as_root = nix::unistd::geteuid().is_root();
        let finisher = if threads > 1 {
            Some(Finisher::start(as_root).context(|| "starting a thread".into())?)
        } else {
            None
        };
        Ok(Extractor {
            dest: dest.to_path_buf(),
            open: DirStack::new(root, dest),
            dirs: Vec::new(),
            warnings: Vec::new(),
            as_root,
            finisher,
        })
    }

    pub(crate) fn shown(&self, path: &[u8]) -> PathBuf {
        self.dest.join(OsStr::from_bytes(path))
    }

    /// The open folder `parent` (a checked path, empty for `dest`), walked down to one
    /// component at a time without following symlinks.
    pub(crate) fn parent(&mut self, parent: &[u8]) -> Result<&OwnedFd> {
        let dest = self.dest.clone();
        match self.open.walk_to(parent)? {
            Ok(fd) => Ok(fd),
            Err((depth, e)) => {
                let walked: Vec<&[u8]> = parent.split(|&b| b == b'/').take(depth + 1).collect();
                let walked = dest.join(OsStr::from_bytes(&walked.join(&b'/')));
                Err(match e {
                    Errno::ELOOP | Errno::ENOTDIR => Error::BadEntry(format!(
                        "{} is not a folder this restore created; refusing to follow it",
                        walked.display()
                    )),
                    e => Error::Io(IoError::new(
                        format!("opening {}", walked.display()),
                        e.into(),
                    )),
                })
            }
        }
    }

    pub(crate) fn directory(&mut self, path: &[u8], meta: Meta) -> Result<()> {
        self.directory_with(path, meta, Vec::new())
    }

    /// A folder whose extended attributes (ACLs among them) are set at the end with its
    /// owner and mode.
    pub(crate) fn directory_with(
        &mut self,
        path: &[u8],
        meta: Meta,
        xattrs: Vec<Xattr>,
    ) -> Result<()> {
        let shown_path = self.shown(path);
        let (parent, name) = split_path(path);
        let name = OsStr::from_bytes(name);
        let parent = self.parent(parent)?;
        mkdirat(parent, name, Mode::from_bits_truncate(0o700))
            .context(at("creating", &shown_path))?;
        // Whatever the umask, the folder stays writable until its own mode is set last.
        let fd = openat(
            parent,
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .context(at("opening", &shown_path))?;
        fchmod(&fd, Mode::from_bits_truncate(0o700))
            .context(at("setting the mode of", &shown_path))?;
        self.dirs.push((path.to_vec(), meta, xattrs));
        Ok(())
    }

    /// Creates the file `path`, `size` bytes long once its data, which ends at `data_end`,
    /// is written.
    pub(crate) fn file(&mut self, path: &[u8], size: u64, data_end: u64) -> Result<File> {
        let shown_path = self.shown(path);
        let file = self.open_for_writing(path, OFlag::O_CREAT | OFlag::O_EXCL, "creating")?;
        // Holes between extents are what writing at an offset leaves unwritten; only a
        // trailing hole needs the size set (one syscall a file saved when there is none).
        if data_end < size {
            file.set_len(size).context(at("sizing", &shown_path))?;
        }
        Ok(file)
    }

    /// Whether a file of `len` bytes of data is better handed whole to
    /// [`Extractor::finish_file`] than written as it is read.
    pub(crate) fn takes_small_files(&self, len: u64) -> bool {
        self.finisher.is_some() && len <= FINISH_DATA as u64
    }

    /// Writes `data` (if any: what is left of the file's data) into `file` at its offset,
    /// gives it its owner, mode and time, and closes it: here, or on the finisher's thread,
    /// whose error is reported by a later call or by [`Extractor::finish`].
    pub(crate) fn finish_file(
        &mut self,
        file: File,
        data: Option<(u64, Zeroizing<Vec<u8>>)>,
        path: &[u8],
        meta: &Meta,
    ) -> Result<()> {
        self.finish_file_with(file, data, path, meta, Vec::new())
    }

    /// [`Extractor::finish_file`] with extended attributes (format 2); what the file
    /// system refuses of them is reported by [`Extractor::finish`].
    pub(crate) fn finish_file_with(
        &mut self,
        file: File,
        data: Option<(u64, Zeroizing<Vec<u8>>)>,
        path: &[u8],
        meta: &Meta,
        xattrs: Vec<Xattr>,
    ) -> Result<()> {
        let job = Finish {
            file,
            data,
            meta: *meta,
            xattrs,
            shown: self.shown(path),
        };
        match &mut self.finisher {
            Some(finisher) => finisher.send(job),
            None => job.run(self.as_root, &mut self.warnings),
        }
    }

    pub(crate) fn symlink(&mut self, path: &[u8], target: &[u8], meta: &Meta) -> Result<()> {
        self.symlink_with(path, target, meta, &[])
    }

    /// A symlink with extended attributes, set on the link itself (owner first, time
    /// last, as for files).
    pub(crate) fn symlink_with(
        &mut self,
        path: &[u8],
        target: &[u8],
        meta: &Meta,
        xattrs: &[Xattr],
    ) -> Result<()> {
        let shown_path = self.shown(path);
        let as_root = self.as_root;
        let (parent, name) = split_path(path);
        let name = OsStr::from_bytes(name);
        let parent = self.parent(parent)?;
        symlinkat(OsStr::from_bytes(target), parent, name).context(at("creating", &shown_path))?;
        if as_root {
            fchownat(
                parent,
                name,
                Some(Uid::from_raw(meta.uid)),
                Some(Gid::from_raw(meta.gid)),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .context(at("setting the owner of", &shown_path))?;
        }
        let mut failed = Vec::new();
        set_xattrs(On::Entry(parent, name), xattrs, &shown_path, &mut failed);
        self.warnings.extend(failed);
        let parent = self.parent(split_path(path).0)?;
        utimensat(
            parent,
            name,
            &TimeSpec::UTIME_OMIT,
            &meta.mtime(),
            UtimensatFlags::NoFollowSymlink,
        )
        .context(at("setting the time of", &shown_path))
        .map_err(Error::from)
    }

    /// Gives folders their owner, mode and time, innermost first: a folder's own mode may
    /// forbid writing into it, and writing into it would change its time.
    /// Returns what could not be restored of extended attributes.
    pub(crate) fn finish(mut self) -> Result<Vec<String>> {
        if let Some(mut finisher) = self.finisher.take() {
            self.warnings.extend(finisher.join()?);
        }
        let dirs = std::mem::take(&mut self.dirs);
        for (path, meta, xattrs) in dirs.iter().rev() {
            let shown_path = self.shown(path);
            let as_root = self.as_root;
            let (parent, name) = split_path(path);
            let parent = self.parent(parent)?;
            let fd = openat(
                parent,
                OsStr::from_bytes(name),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .context(at("opening", &shown_path))?;
            apply_meta_with(&fd, meta, xattrs, as_root, &shown_path, &mut self.warnings)?;
        }
        Ok(self.warnings)
    }

    /// Makes `path` another name of the file this extraction created at `target`
    /// (`linkat` between the two open parents, never following a symlink).
    pub(crate) fn hardlink(&mut self, path: &[u8], target: &[u8]) -> Result<()> {
        let shown_path = self.shown(path);
        let (target_parent, target_name) = split_path(target);
        let from = self
            .parent(target_parent)?
            .try_clone()
            .context(|| "duplicating a descriptor".into())?;
        let (parent, name) = split_path(path);
        let to = self.parent(parent)?;
        nix::unistd::linkat(
            &from,
            OsStr::from_bytes(target_name),
            to,
            OsStr::from_bytes(name),
            AtFlags::empty(),
        )
        .context(at("linking", &shown_path))
        .map_err(Error::from)
    }

    /// Opens the file this extraction created at `path` again, to write its data (which
    /// may come from another archive than its entry) and then finish it.
    pub(crate) fn reopen(&mut self, path: &[u8]) -> Result<File> {
        self.open_for_writing(path, OFlag::empty(), "opening")
    }

    /// `path` below the destination opened write-only with `flags` added, from the folder
    /// the extraction made for it and never through a symlink (a new file gets mode 0600
    /// until it is finished); `doing` names the step in an error.
    fn open_for_writing(&mut self, path: &[u8], flags: OFlag, doing: &str) -> Result<File> {
        let shown_path = self.shown(path);
        let (parent, name) = split_path(path);
        let parent = self.parent(parent)?;
        let fd = openat(
            parent,
            OsStr::from_bytes(name),
            flags | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .context(at(doing, &shown_path))?;
        Ok(File::from(fd))
    }
}

/// Sets each attribute on `on`; what the file system or kernel refuses (no user
/// attributes on this file system, an ACL it does not support) is added to `failed`,
/// one line each, to be reported.
fn set_xattrs<F: AsFd>(on: On<F>, xattrs: &[Xattr], shown: &Path, failed: &mut Vec<String>) {
    for (name, value) in xattrs {
        if let Err(e) = on.set(name, value) {
            failed.push(format!(
                "{}: the extended attribute {} could not be restored: {e}",
                shown.display(),
                String::from_utf8_lossy(name)
            ));
        }
    }
}

/// [`apply_meta`] with extended attributes, set after the owner (a change of owner would
/// clear `security.capability`) and before the mode (which then sets the ACL's mask, as
/// the mode stored was read with the ACL in place).
fn apply_meta_with(
    fd: &impl AsFd,
    meta: &Meta,
    xattrs: &[Xattr],
    as_root: bool,
    shown: &Path,
    failed: &mut Vec<String>,
) -> Result<()> {
    if xattrs.is_empty() {
        return apply_meta(fd, meta, as_root, shown);
    }
    if as_root {
        fchown(
            fd,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
        )
        .context(at("setting the owner of", shown))?;
    }
    set_xattrs(On::Fd(fd), xattrs, shown, failed);
    apply_meta(fd, meta, false, shown)
}

/// Files waiting for the finisher at most: as many descriptors held open, with the one it
/// works on (a queue of 16 made the small-file restore 12 % slower than 64: the restoring
/// thread produces files in bursts).
const FINISH_QUEUE: usize = 64;

/// The most data a file hands the finisher to write: with [`FINISH_QUEUE`], 4 MiB at most
/// waiting.
const FINISH_DATA: usize = 64 * 1024;

/// A file to finish, and its path for messages.
struct Finish {
    file: File,
    data: Option<(u64, Zeroizing<Vec<u8>>)>,
    meta: Meta,
    xattrs: Vec<Xattr>,
    shown: PathBuf,
}

impl Finish {
    /// Adds to `failed` what the file system refused of the extended attributes.
    fn run(self, as_root: bool, failed: &mut Vec<String>) -> Result<()> {
        if let Some((offset, data)) = &self.data {
            self.file
                .write_all_at(data, *offset)
                .context(at("writing", &self.shown))?;
        }
        let (meta, xattrs) = (self.meta, &self.xattrs);
        apply_meta_with(&self.file, &meta, xattrs, as_root, &self.shown, failed)
    }
}

/// Writes small restored files' data, gives restored files their metadata, and closes
/// them, on a thread of its own: of the six system calls a small file costs, five (write,
/// owner, mode, time, close) work on its descriptor alone, and on two CPUs they were most
/// of the restoring thread's time on a tree of small files (loopdev-tests/bench/backup,
/// 2026-11-26). Nothing there resolves a path, so the thread acts on exactly the files
/// this extraction created. The first error stops it; the files queued after it are
/// closed as they were.
struct Finisher {
    jobs: Option<mpsc::SyncSender<Finish>>,
    handle: Option<JoinHandle<Result<Vec<String>>>>,
}

impl Finisher {
    fn start(as_root: bool) -> io::Result<Finisher> {
        let (jobs, queued) = mpsc::sync_channel::<Finish>(FINISH_QUEUE);
        let handle = std::thread::Builder::new()
            .name("keepsake-finish".into())
            .spawn(move || {
                let mut failed = Vec::new();
                for job in queued {
                    job.run(as_root, &mut failed)?;
                }
                Ok(failed)
            })?;
        Ok(Finisher {
            jobs: Some(jobs),
            handle: Some(handle),
        })
    }

    fn send(&mut self, job: Finish) -> Result<()> {
        match self.jobs.as_ref().map(|jobs| jobs.send(job)) {
            Some(Ok(())) => Ok(()),
            // The thread stopped at an error: that error, and never a file dropped unsaid.
            _ => self.join().and(Err(Error::Internal(
                "the finishing thread stopped earlier".into(),
            ))),
        }
    }

    /// Waits until every file sent is finished; the first error, if any, else what was
    /// refused of extended attributes.
    fn join(&mut self) -> Result<Vec<String>> {
        self.jobs = None;
        match self.handle.take().map(JoinHandle::join) {
            None => Ok(Vec::new()),
            Some(Ok(Ok(failed))) => Ok(failed),
            Some(Ok(Err(e))) => Err(e),
            Some(Err(_)) => Err(Error::Internal("the finishing thread failed".into())),
        }
    }
}

impl Drop for Finisher {
    /// An extraction stopped early waits for the files already sent, so that nothing is
    /// changed once it is gone.
    fn drop(&mut self) {
        let _ = self.join();
    }
}

/// Owner (as root only: others cannot give files away), then mode (chown clears setuid
/// and setgid), then time (last, as anything else would change it).
fn apply_meta(fd: impl AsFd, meta: &Meta, as_root: bool, shown: &Path) -> Result<()> {
    if as_root {
        fchown(
            &fd,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
        )
        .context(at("setting the owner of", shown))?;
    }
    fchmod(&fd, Mode::from_bits_truncate(meta.mode)).context(at("setting the mode of", shown))?;
    futimens(&fd, &TimeSpec::UTIME_OMIT, &meta.mtime())
        .context(at("setting the time of", shown))
        .map_err(Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::testing::*;
    use crate::archive::tree::read_tree;

    #[test]
    fn a_symlink_in_the_archive_cannot_lead_outside() {
        let tmp = tempfile::tempdir().unwrap();
        let (dest, outside) = (tmp.path().join("dest"), tmp.path().join("outside"));
        std::fs::create_dir(&dest).unwrap();
        std::fs::create_dir(&outside).unwrap();
        let target = outside.to_str().unwrap();
        for stream in [
            Stream::default()
                .symlink("a", target)
                .file("a/passwd", b"root::0:0::/:/bin/sh\n")
                .end(),
            Stream::default().symlink("a", target).dir("a/sub").end(),
            Stream::default()
                .symlink("a", target)
                .symlink("a/b", "/")
                .end(),
            Stream::default()
                .symlink("a", target)
                .dir("a")
                .file("a/passwd", b"x")
                .end(),
            Stream::default()
                .file("a", b"x")
                .file("a/passwd", b"x")
                .end(),
        ] {
            let err = verify(&stream).unwrap_err();
            assert!(exit_code(&err) == ExitCode::Corrupt, "{err}");
            let err = read_tree(&mut &stream[..], Some(&dest), &mut |_| {}).unwrap_err();
            assert!(exit_code(&err) == ExitCode::Corrupt, "{err}");
            assert_eq!(
                std::fs::read_dir(&outside).unwrap().count(),
                0,
                "wrote outside"
            );
            crate::safefs::empty_dir(&dest).unwrap();
        }
    }

    #[test]
    fn extraction_never_follows_a_symlink_it_finds() {
        // Should a symlink appear in the destination anyway (put there by someone else),
        // walking to a parent refuses it.
        let tmp = tempfile::tempdir().unwrap();
        let (dest, outside) = (tmp.path().join("dest"), tmp.path().join("outside"));
        std::fs::create_dir(&dest).unwrap();
        std::fs::create_dir(&outside).unwrap();
        let mut extractor = Extractor::new(&dest, 1).unwrap();
        std::os::unix::fs::symlink(&outside, dest.join("a")).unwrap();
        let err = extractor.file(b"a/passwd", 1, 1).err().unwrap();
        assert!(err.to_string().contains("refusing to follow"), "{err}");
        assert!(extractor.directory(b"a/sub", META).is_err());
        assert!(extractor.symlink(b"a/link", b"/", &META).is_err());
        assert!(
            extractor.file(b"a", 1, 1).is_err(),
            "O_EXCL: the symlink is not written through"
        );
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    }

    #[test]
    fn extraction_needs_an_empty_destination() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("there"), b"").unwrap();
        let stream = Stream::default().end();
        let err = read_tree(&mut &stream[..], Some(tmp.path()), &mut |_| {}).unwrap_err();
        assert!(exit_code(&err) == ExitCode::Usage, "{err}");
    }
}
