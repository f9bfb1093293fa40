//! The archive's plaintext: a folder tree as a sequence of entries (folder, file with its
//! extent list, symlink), each with its path and metadata, then an end marker. Written
//! from a tree walked on descriptors, and parsed back with every field checked before it
//! is acted on (see `extract.rs` for what is done with it).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufRead, Read};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{Mode, fstat, fstatat};
use nix::unistd::{Whence, lseek};
use zeroize::Zeroizing;

use super::extract::{Extractor, Meta, split_path};
use super::stream::{Damaged, PlainSink, read_full};
use super::{Error, Result};
use crate::context::{Context, IoError, at};
use crate::safefs::treewalk::{self, Listed};
use nix::dir::Type as DirType;

/// The most extents a file entry may list. A reader refuses more; a writer stores a file
/// more fragmented than that as one extent (its holes then become zeros in the archive).
const MAX_EXTENTS: u32 = 1 << 20;

/// File data is copied through a buffer of this size.
const COPY_BUFFER: usize = 64 * 1024;

pub(crate) const ENTRY_END: u8 = 0;

pub(crate) const ENTRY_DIR: u8 = 1;

pub(crate) const ENTRY_FILE: u8 = 2;

pub(crate) const ENTRY_SYMLINK: u8 = 3;

/// How far a backup is, for its progress line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Format 2's listing: entries listed so far.
    Listing { entries: u64 },
    /// File data: bytes written so far, of `total` where it is known (format 2 knows it
    /// once the listing is written: the bytes of the files stored in this archive).
    Data { written: u64, total: Option<u64> },
}

/// What a tree was made of, as written or read.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TreeStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Bytes of file data stored (holes are not counted).
    pub bytes: u64,
    /// Hard links to a file stored earlier under another name (format 2).
    pub hardlinks: u64,
    /// Extended attributes, ACLs among them (format 2).
    pub xattrs: u64,
    /// Files of an incremental archive whose unchanged content an earlier archive of its
    /// chain holds, and their bytes (counted apart from `files` and `bytes`).
    pub referenced: u64,
    pub referenced_bytes: u64,
    /// Sockets, FIFOs and device nodes the writer left out, by path.
    pub skipped: Vec<String>,
    /// Entries that changed while the writer read them, by path and what happened.
    pub warnings: Vec<String>,
    /// The top-level names in the archive, in order.
    pub entries: Vec<String>,
}

/// The fields every entry starts with: type, path, metadata.
pub(crate) fn entry_start(kind: u8, path: &[u8], meta: &Meta) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(3 + path.len() + 24);
    out.push(kind);
    push_bytes16(&mut out, path, "path")?;
    out.extend_from_slice(&meta.mode.to_le_bytes());
    out.extend_from_slice(&meta.uid.to_le_bytes());
    out.extend_from_slice(&meta.gid.to_le_bytes());
    out.extend_from_slice(&meta.mtime.to_le_bytes());
    out.extend_from_slice(&meta.mtime_nsec.to_le_bytes());
    Ok(out)
}

/// The fields of a file entry between its metadata and its data.
pub(crate) fn file_layout(size: u64, extents: &[(u64, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + 16 * extents.len());
    out.extend_from_slice(&size.to_le_bytes());
    out.extend_from_slice(&(extents.len() as u32).to_le_bytes());
    for (offset, length) in extents {
        out.extend_from_slice(&offset.to_le_bytes());
        out.extend_from_slice(&length.to_le_bytes());
    }
    out
}

pub(crate) fn push_bytes16(out: &mut Vec<u8>, bytes: &[u8], what: &str) -> Result<()> {
    let len = u16::try_from(bytes.len()).map_err(|_| {
        Error::Refused(format!(
            "cannot archive the {what} {}: longer than 65535 bytes",
            shown(bytes)
        ))
    })?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

pub(crate) fn shown(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

/// Writes the plaintext of an archive to `out`: each of `tops` (names directly inside
/// `root`, such as `Persistent` or `persistence.conf`) with everything below it, then the
/// end marker. Nothing is followed: every entry is opened relative to its open parent with
/// `O_NOFOLLOW`, so a symlink swapped in meanwhile is never read through. Sockets, FIFOs and
/// device nodes are skipped and listed in the stats; entries that vanish or change type
/// while being read are listed as warnings. `progress` gets the file data bytes written so
/// far. `root` itself is not stored.
pub fn write_tree(
    root: &Path,
    tops: &[PathBuf],
    out: &mut impl PlainSink,
    progress: &mut dyn FnMut(u64),
) -> Result<TreeStats> {
    let (root_fd, names) = open_tops(root, tops)?;
    let mut step = |step| {
        if let Step::Data { written, .. } = step {
            progress(written);
        }
    };
    let mut walk = TreeWriter::new(root, out, &mut step, &names);
    // Iterative, with a bounded number of folders open: see crate::safefs::treewalk.
    treewalk::walk::<Error>(root_fd, root, &names, &mut |parent, name, path, listed| {
        walk.entry(parent, name, path, listed)
    })?;
    walk.emit(&[ENTRY_END])?;
    Ok(walk.stats)
}

/// `root` opened, and `tops` checked: each a name directly inside it, given once, there.
pub(crate) fn open_tops<'t>(root: &Path, tops: &'t [PathBuf]) -> Result<(OwnedFd, Vec<&'t OsStr>)> {
    let root_fd = openat(
        nix::fcntl::AT_FDCWD,
        root,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .context(at("opening", root))?;
    let mut names: Vec<&OsStr> = Vec::with_capacity(tops.len());
    for top in tops {
        let mut components = top.components();
        let name = match (components.next(), components.next()) {
            (Some(Component::Normal(name)), None) => name,
            _ => {
                return Err(Error::Refused(format!(
                    "{} is not a name directly inside {}",
                    top.display(),
                    root.display()
                )));
            }
        };
        if names.contains(&name) {
            return Err(Error::Refused(format!("{} is given twice", top.display())));
        }
        if let Err(e) = fstatat(&root_fd, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            return Err(match e {
                Errno::ENOENT => {
                    Error::Missing(format!("{} does not exist", root.join(name).display()))
                }
                e => Error::Io(IoError::new(
                    format!("reading {}", root.join(name).display()),
                    e.into(),
                )),
            });
        }
        names.push(name);
    }
    Ok((root_fd, names))
}

/// Writes entries of a tree to the plaintext: format 1's whole, and format 2's parts
/// (`walk.rs`) that are the same.
pub(crate) struct TreeWriter<'a> {
    root: &'a Path,
    out: &'a mut dyn PlainSink,
    pub(crate) progress: &'a mut dyn FnMut(Step),
    /// The file data bytes the archive is to hold, once known.
    pub(crate) data_total: Option<u64>,
    pub(crate) stats: TreeStats,
}

/// What an entry of the tree is stored as (see [`TreeWriter::kind_of`]); a symlink with the
/// stat it was found with.
pub(crate) enum EntryKind {
    Directory,
    File,
    Symlink(nix::sys::stat::FileStat),
}

impl<'a> TreeWriter<'a> {
    pub(crate) fn new(
        root: &'a Path,
        out: &'a mut dyn PlainSink,
        progress: &'a mut dyn FnMut(Step),
        names: &[&OsStr],
    ) -> TreeWriter<'a> {
        TreeWriter {
            root,
            out,
            progress,
            data_total: None,
            stats: TreeStats {
                entries: names
                    .iter()
                    .map(|name| name.to_string_lossy().into_owned())
                    .collect(),
                ..TreeStats::default()
            },
        }
    }

    pub(crate) fn emit(&mut self, bytes: &[u8]) -> Result<()> {
        self.out
            .put(bytes)
            .context(|| "writing the archive".into())
            .map_err(Error::from)
    }

    pub(crate) fn shown(&self, path: &[u8]) -> PathBuf {
        self.root.join(OsStr::from_bytes(path))
    }

    pub(crate) fn changed(&mut self, path: &[u8], what: &str) {
        self.stats.warnings.push(format!("{}: {what}", shown(path)));
    }

    /// Writes the entry `name` in `parent`; for a folder, returns it open so that the walk
    /// writes what it holds next.
    pub(crate) fn entry(
        &mut self,
        parent: &OwnedFd,
        name: &OsStr,
        path: &[u8],
        listed: Listed,
    ) -> Result<Option<OwnedFd>> {
        match self.kind_of(parent, name, path, listed)? {
            None => Ok(None),
            Some(EntryKind::Directory) => self.directory(parent, name, path),
            Some(EntryKind::File) => self.file(parent, name, path).map(|()| None),
            Some(EntryKind::Symlink(st)) => self.symlink(parent, name, path, &st).map(|()| None),
        }
    }

    /// What the entry `name` in `parent` is to be stored as; `None` when it is left out
    /// (a socket, fifo or device, reported as skipped; gone, reported as changed). A
    /// folder or a file the listing named as such is taken without a stat first: what is
    /// stored is decided by the `fstat` of what is then opened (`O_NOFOLLOW`), so an entry
    /// that changed meanwhile is caught there. Both formats' writers ask this.
    pub(crate) fn kind_of(
        &mut self,
        parent: &OwnedFd,
        name: &OsStr,
        path: &[u8],
        listed: Listed,
    ) -> Result<Option<EntryKind>> {
        // A safe point: the caller removes the partial archive.
        crate::interrupt::check()?;
        match listed {
            Some(DirType::Directory) => return Ok(Some(EntryKind::Directory)),
            Some(DirType::File) => return Ok(Some(EntryKind::File)),
            Some(DirType::Symlink) | None => {}
            Some(_) => {
                self.stats.skipped.push(shown(path));
                return Ok(None);
            }
        }
        let st = match fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => {
                self.changed(path, "vanished while being backed up; left out");
                return Ok(None);
            }
            Err(e) => {
                return Err(e)
                    .context(at("reading", &self.shown(path)))
                    .map_err(Error::from);
            }
        };
        Ok(match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => Some(EntryKind::Directory),
            libc::S_IFREG => Some(EntryKind::File),
            libc::S_IFLNK => Some(EntryKind::Symlink(st)),
            _ => {
                self.stats.skipped.push(shown(path));
                None
            }
        })
    }

    /// Opens `name` in `parent` without following a symlink; `None` (and a warning) if it
    /// is no longer what it was a moment ago.
    pub(crate) fn open(
        &mut self,
        parent: &OwnedFd,
        name: &OsStr,
        path: &[u8],
        flags: OFlag,
    ) -> Result<Option<OwnedFd>> {
        match openat(
            parent,
            name,
            flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => Ok(Some(fd)),
            Err(Errno::ENOENT) => {
                self.changed(path, "vanished while being backed up; left out");
                Ok(None)
            }
            Err(Errno::ELOOP | Errno::ENOTDIR) => {
                self.changed(path, "changed while being backed up; left out");
                Ok(None)
            }
            Err(e) => Err(e)
                .context(at("opening", &self.shown(path)))
                .map_err(Error::from),
        }
    }

    pub(crate) fn directory(
        &mut self,
        parent: &OwnedFd,
        name: &OsStr,
        path: &[u8],
    ) -> Result<Option<OwnedFd>> {
        let Some(fd) = self.open(parent, name, path, OFlag::O_RDONLY | OFlag::O_DIRECTORY)? else {
            return Ok(None);
        };
        let st = fstat(&fd).context(at("reading", &self.shown(path)))?;
        self.emit(&entry_start(ENTRY_DIR, path, &Meta::of(&st))?)?;
        self.stats.dirs += 1;
        Ok(Some(fd))
    }

    pub(crate) fn file(&mut self, parent: &OwnedFd, name: &OsStr, path: &[u8]) -> Result<()> {
        // O_NONBLOCK: should a FIFO have been swapped in, opening it must not hang.
        let Some(fd) = self.open(parent, name, path, OFlag::O_RDONLY | OFlag::O_NONBLOCK)? else {
            return Ok(());
        };
        let shown_path = self.shown(path);
        let st = fstat(&fd).context(at("reading", &shown_path))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            self.changed(path, "changed while being backed up; left out");
            return Ok(());
        }
        let size = st.st_size as u64;
        let extents = data_extents(&fd, size, st.st_blocks as u64);
        let mut head = entry_start(ENTRY_FILE, path, &Meta::of(&st))?;
        head.extend_from_slice(&file_layout(size, &extents));
        self.emit(&head)?;
        let file = File::from(fd);
        if self.copy_extents(Some(&file), &extents, &shown_path)? {
            self.changed(
                path,
                "shrank while being backed up; its missing end is stored as zeros",
            );
        }
        self.stats.files += 1;
        Ok(())
    }

    /// Writes the data of `extents` of `file` to the plaintext (zeros for all of it
    /// without a file); whether the file ended before them (the rest is zeros).
    pub(crate) fn copy_extents(
        &mut self,
        file: Option<&File>,
        extents: &[(u64, u64)],
        shown_path: &Path,
    ) -> Result<bool> {
        let mut shrank = false;
        for &(offset, length) in extents {
            let mut done = 0;
            while done < length {
                crate::interrupt::check()?;
                // Read straight into the archive's chunk buffer.
                let want = (length - done).min(COPY_BUFFER as u64) as usize;
                let mut read_error = None;
                let put = self.out.put_with(want, &mut |room| {
                    let Some(file) = file else {
                        room.fill(0);
                        return Ok(());
                    };
                    match read_full_at(file, room, offset + done) {
                        Ok(got) => {
                            if got < room.len() {
                                room[got..].fill(0);
                                shrank = true;
                            }
                            Ok(())
                        }
                        Err(e) => {
                            let failed = io::Error::new(e.kind(), "reading a file");
                            read_error = Some(e);
                            Err(failed)
                        }
                    }
                });
                if let Some(e) = read_error {
                    return Err(e)
                        .context(at("reading", shown_path))
                        .map_err(Error::from);
                }
                let n = put.context(|| "writing the archive".into())?;
                done += n as u64;
                self.stats.bytes += n as u64;
                (self.progress)(Step::Data {
                    written: self.stats.bytes,
                    total: self.data_total,
                });
            }
        }
        Ok(shrank)
    }

    pub(crate) fn symlink(
        &mut self,
        parent: &OwnedFd,
        name: &OsStr,
        path: &[u8],
        st: &nix::sys::stat::FileStat,
    ) -> Result<()> {
        let target = match nix::fcntl::readlinkat(parent, name) {
            Ok(target) => target,
            Err(Errno::ENOENT | Errno::EINVAL) => {
                self.changed(path, "changed while being backed up; left out");
                return Ok(());
            }
            Err(e) => {
                return Err(e)
                    .context(at("reading the link", &self.shown(path)))
                    .map_err(Error::from);
            }
        };
        let mut entry = entry_start(ENTRY_SYMLINK, path, &Meta::of(st))?;
        push_bytes16(&mut entry, target.as_bytes(), "symlink target of")?;
        self.emit(&entry)?;
        self.stats.symlinks += 1;
        Ok(())
    }
}

/// The ranges of a file that hold data, from SEEK_DATA/SEEK_HOLE; the whole file as one
/// extent where the filesystem cannot tell, or where there would be too many. A file with
/// as many 512-byte blocks allocated as its size needs has no hole (tar's test too): that
/// saves the two lseeks, on every small file.
pub(crate) fn data_extents(fd: &OwnedFd, size: u64, blocks: u64) -> Vec<(u64, u64)> {
    let whole = if size == 0 { vec![] } else { vec![(0, size)] };
    if blocks.saturating_mul(512) >= size {
        return whole;
    }
    let mut extents = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let start = match lseek(fd, pos as libc::off_t, Whence::SeekData) {
            Ok(start) => start as u64,
            // No data after `pos`: the rest is a hole.
            Err(Errno::ENXIO) => break,
            Err(_) => return whole,
        };
        if start >= size {
            break;
        }
        let end = match lseek(fd, start as libc::off_t, Whence::SeekHole) {
            Ok(end) => (end as u64).min(size),
            Err(_) => return whole,
        };
        if end <= start || extents.len() >= MAX_EXTENTS as usize {
            return whole;
        }
        extents.push((start, end - start));
        pos = end;
    }
    extents
}

/// Reads at `offset` until `buf` is full or the file ends; returns how much was read.
fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut len = 0;
    while len < buf.len() {
        match file.read_at(&mut buf[len..], offset + len as u64) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(len)
}

/// Reads the plaintext of an archive from `input` (usually a [`super::Reader`]) and checks all of
/// it: every path, the order of entries, every extent list, and that the end marker is
/// followed by nothing. With `Some(dest)`, an existing empty folder, the tree is recreated
/// there: owners only when running as root, modes, modification times, holes of sparse
/// files; folders get their mode and time after their contents are written. Nothing outside
/// `dest` is touched: an entry's parent must be a folder the archive created earlier, and
/// each is opened with `O_NOFOLLOW`. On an error the extraction stops where it was, so
/// `dest` should be thrown away then. `progress` gets the file data bytes read so far.
/// Files are written on two threads when there is more than one CPU: see [`read_tree_on`].
pub fn read_tree(
    input: &mut impl BufRead,
    dest: Option<&Path>,
    progress: &mut dyn FnMut(u64),
) -> Result<TreeStats> {
    read_tree_on(input, dest, super::engine::default_threads(), progress)
}

/// [`read_tree`] on `threads` threads: with more than one, small files' data and every
/// file's owner, mode and time are written on a thread of their own (see
/// `extract::Finisher`), beside this one reading the archive.
pub fn read_tree_on(
    input: &mut impl BufRead,
    dest: Option<&Path>,
    threads: usize,
    progress: &mut dyn FnMut(u64),
) -> Result<TreeStats> {
    let mut extractor = dest.map(|dest| Extractor::new(dest, threads)).transpose()?;
    let mut stats = TreeStats::default();
    // Every path seen and its entry type: duplicates and parents are checked against it.
    let mut seen: HashMap<Vec<u8>, u8> = HashMap::new();
    loop {
        // A safe point between entries and below between chunks of data: what was
        // extracted is in a folder the caller removes.
        crate::interrupt::check()?;
        let kind = read_u8(input)?;
        if kind == ENTRY_END {
            break;
        }
        if !matches!(kind, ENTRY_DIR | ENTRY_FILE | ENTRY_SYMLINK) {
            return Err(Error::BadEntry(format!(
                "the archive holds an entry of unknown type {kind}"
            )));
        }
        let path = read_bytes16(input)?;
        check_path(&path)?;
        let meta = read_meta(input, &path)?;
        if check_placement(&seen, &path)? {
            stats.entries.push(shown(&path));
        }
        match kind {
            ENTRY_DIR => {
                if let Some(extractor) = &mut extractor {
                    extractor.directory(&path, meta)?;
                }
                stats.dirs += 1;
            }
            ENTRY_SYMLINK => {
                let target = read_bytes16(input)?;
                if target.is_empty() || target.contains(&0) {
                    return Err(Error::BadEntry(format!(
                        "the archive holds a symlink {} with an empty target or one with a NUL byte",
                        shown(&path)
                    )));
                }
                if let Some(extractor) = &mut extractor {
                    extractor.symlink(&path, &target, &meta)?;
                }
                stats.symlinks += 1;
            }
            _ => {
                let (size, extents) = read_file_layout(input, &path)?;
                let data_end = extents
                    .last()
                    .map_or(0, |&(offset, length)| offset + length);
                let file = match &mut extractor {
                    Some(extractor) => Some(extractor.file(&path, size, data_end)?),
                    None => None,
                };
                // A small file of one extent is read whole and handed on, to be written
                // with its metadata on the extractor's finishing thread.
                let mut whole = match (&extents[..], &extractor) {
                    ([(_, length)], Some(extractor)) if extractor.takes_small_files(*length) => {
                        Some(Zeroizing::new(Vec::with_capacity(*length as usize)))
                    }
                    _ => None,
                };
                for &(offset, length) in &extents {
                    let mut done = 0;
                    while done < length {
                        crate::interrupt::check()?;
                        // Written straight from the reader's opened chunk.
                        let ready = input.fill_buf().map_err(input_error)?;
                        if ready.is_empty() {
                            return Err(input_error(io::ErrorKind::UnexpectedEof.into()));
                        }
                        let n = ready
                            .len()
                            .min((length - done).min(usize::MAX as u64) as usize);
                        match (&mut whole, &file, &extractor) {
                            (Some(whole), _, _) => whole.extend_from_slice(&ready[..n]),
                            (None, Some(file), Some(extractor)) => {
                                file.write_all_at(&ready[..n], offset + done).context(|| {
                                    format!("writing {}", extractor.shown(&path).display())
                                })?;
                            }
                            _ => {}
                        }
                        input.consume(n);
                        done += n as u64;
                        stats.bytes += n as u64;
                        progress(stats.bytes);
                    }
                }
                if let (Some(file), Some(extractor)) = (file, &mut extractor) {
                    let data = whole.map(|whole| (extents[0].0, whole));
                    extractor.finish_file(file, data, &path, &meta)?;
                }
                stats.files += 1;
            }
        }
        seen.insert(path, kind);
    }
    // Reading to the end also makes a Reader authenticate the last chunk as the last.
    let mut one = [0u8; 1];
    if read_full(input, &mut one).map_err(input_error)? != 0 {
        return Err(Error::BadEntry(
            "the archive holds data after its end marker".into(),
        ));
    }
    if let Some(extractor) = extractor {
        extractor.finish()?;
    }
    Ok(stats)
}

/// Refuses an entry at `path` unless it is new and its parent is a folder `seen` before
/// it; whether it is top-level. So folders come before their contents, and nothing is
/// placed through a symlink or file the archive itself made.
pub(crate) fn check_placement(seen: &HashMap<Vec<u8>, u8>, path: &[u8]) -> Result<bool> {
    let (parent, _) = split_path(path);
    if !parent.is_empty() {
        match seen.get(parent) {
            Some(&ENTRY_DIR) => {}
            Some(_) => {
                return Err(Error::BadEntry(format!(
                    "the archive holds {} inside {}, which is not a folder; refusing to follow it",
                    shown(path),
                    shown(parent)
                )));
            }
            None => {
                return Err(Error::BadEntry(format!(
                    "the archive holds {} before its folder {}",
                    shown(path),
                    shown(parent)
                )));
            }
        }
    }
    if seen.contains_key(path) {
        return Err(Error::BadEntry(format!(
            "the archive holds {} twice",
            shown(path)
        )));
    }
    Ok(parent.is_empty())
}

/// Why a path from an archive is refused, if it is: only plain relative paths are allowed.
pub(crate) fn check_path(path: &[u8]) -> Result<()> {
    let problem = if path.is_empty() {
        Some("it is empty")
    } else if path[0] == b'/' {
        Some("it is absolute")
    } else if path.contains(&0) {
        Some("it holds a NUL byte")
    } else if path.split(|&b| b == b'/').any(|c| c.is_empty()) {
        Some("it has an empty component")
    } else if path.split(|&b| b == b'/').any(|c| c == b"." || c == b"..") {
        Some("it has a . or .. component")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(Error::BadEntry(format!(
            "the archive holds the path {:?}, which is refused: {problem}",
            shown(path)
        ))),
        None => Ok(()),
    }
}

pub(crate) fn input_error(e: io::Error) -> Error {
    if let Some(damaged) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<Damaged>())
    {
        return Error::Tampered {
            chunk: damaged.chunk,
        };
    }
    match e.kind() {
        io::ErrorKind::UnexpectedEof => Error::Truncated,
        _ => Error::Io(IoError::new("reading the archive", e)),
    }
}

pub(crate) fn read_exact(input: &mut impl Read, buf: &mut [u8]) -> Result<()> {
    input.read_exact(buf).map_err(input_error)
}

pub(crate) fn read_array<const N: usize>(input: &mut impl Read) -> Result<[u8; N]> {
    let mut bytes = [0u8; N];
    read_exact(input, &mut bytes)?;
    Ok(bytes)
}

pub(crate) fn read_u8(input: &mut impl Read) -> Result<u8> {
    Ok(read_array::<1>(input)?[0])
}

pub(crate) fn read_u32(input: &mut impl Read) -> Result<u32> {
    Ok(u32::from_le_bytes(read_array(input)?))
}

pub(crate) fn read_u64(input: &mut impl Read) -> Result<u64> {
    Ok(u64::from_le_bytes(read_array(input)?))
}

/// A u16 length and that many bytes (so at most 64 KiB is ever allocated for it).
pub(crate) fn read_bytes16(input: &mut impl Read) -> Result<Vec<u8>> {
    let len = u16::from_le_bytes(read_array(input)?);
    let mut bytes = vec![0u8; usize::from(len)];
    read_exact(input, &mut bytes)?;
    Ok(bytes)
}

pub(crate) fn read_meta(input: &mut impl Read, path: &[u8]) -> Result<Meta> {
    let meta = Meta {
        mode: read_u32(input)?,
        uid: read_u32(input)?,
        gid: read_u32(input)?,
        mtime: i64::from_le_bytes(read_array(input)?),
        mtime_nsec: read_u32(input)?,
    };
    if meta.mode & !0o7777 != 0 || meta.mtime_nsec >= 1_000_000_000 {
        return Err(Error::BadEntry(format!(
            "the archive holds {} with an invalid mode or time",
            shown(path)
        )));
    }
    Ok(meta)
}

/// The size and extent list of a file entry, checked: at most [`MAX_EXTENTS`], each
/// non-empty, in order, not overlapping, inside the size.
pub(crate) fn read_file_layout(
    input: &mut impl Read,
    path: &[u8],
) -> Result<(u64, Vec<(u64, u64)>)> {
    let size = read_u64(input)?;
    let count = read_u32(input)?;
    let invalid = || {
        Error::BadEntry(format!(
            "the archive holds the file {} with an invalid extent list",
            shown(path)
        ))
    };
    if count > MAX_EXTENTS {
        return Err(invalid());
    }
    // Grown as extents are read, so the space taken follows what the archive really holds.
    let mut extents = Vec::with_capacity(count.min(1024) as usize);
    let mut end = 0u64;
    for _ in 0..count {
        let offset = read_u64(input)?;
        let length = read_u64(input)?;
        match offset.checked_add(length) {
            Some(extent_end) if length > 0 && offset >= end && extent_end <= size => {
                end = extent_end;
            }
            _ => return Err(invalid()),
        }
        extents.push((offset, length));
    }
    Ok((size, extents))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::header::MIN_CHUNK_SIZE;
    use crate::archive::stream::{Reader, Writer};
    use crate::archive::testing::*;
    use crate::safefs::treewalk::testing::{deep_chain, snapshot, with_descriptor_limit};
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_stop_signal_stops_a_backup_walk_at_the_next_piece_of_data() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("top")).unwrap();
        std::fs::write(tmp.path().join("top/big"), vec![7u8; 4 << 20]).unwrap();
        std::fs::write(tmp.path().join("top/later"), b"never reached").unwrap();
        let mut out = Vec::new();
        let mut written = 0;
        let err = write_tree(tmp.path(), &[PathBuf::from("top")], &mut out, &mut |b| {
            written = b;
            crate::interrupt::pretend_received(libc::SIGHUP);
        })
        .unwrap_err();
        crate::interrupt::pretend_received(0);
        assert_eq!(exit_code(&err), ExitCode::Hangup, "{err}");
        assert_eq!(err.to_string(), "interrupted by SIGHUP");
        assert!(
            written < 4 << 20,
            "stopped inside the file: {written} bytes"
        );
    }

    /// The listing's word on an entry is only a hint: an entry listed as a file or a folder
    /// that is something else by the time it is opened is left out with a warning, and
    /// nothing of it (no symlink's target, no FIFO, no folder as a file) gets written.
    #[test]
    fn an_entry_that_changed_since_the_listing_is_left_out() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir(root.join("dir")).unwrap();
        std::fs::write(root.join("target"), b"not to be read").unwrap();
        std::os::unix::fs::symlink("target", root.join("link")).unwrap();
        std::os::unix::fs::symlink("dir", root.join("dirlink")).unwrap();
        nix::unistd::mkfifo(&root.join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        let root_fd = openat(
            nix::fcntl::AT_FDCWD,
            root,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        let mut out: Vec<u8> = Vec::new();
        let mut progress = |_| {};
        let mut walk = TreeWriter {
            root,
            out: &mut out,
            progress: &mut progress,
            data_total: None,
            stats: TreeStats::default(),
        };
        for (name, listed) in [
            ("dir", DirType::File),
            ("link", DirType::File),
            ("fifo", DirType::File),
            ("dirlink", DirType::Directory),
            ("target", DirType::Directory),
            ("gone", DirType::File),
        ] {
            let opened = walk
                .entry(&root_fd, OsStr::new(name), name.as_bytes(), Some(listed))
                .unwrap();
            assert!(opened.is_none(), "{name} listed as {listed:?} was entered");
        }
        let stats = walk.stats;
        assert_eq!((stats.files, stats.dirs), (0, 0));
        assert_eq!(stats.warnings.len(), 6, "{:?}", stats.warnings);
        assert!(stats.warnings[5].ends_with("gone: vanished while being backed up; left out"));
        assert!(out.is_empty(), "{} bytes written", out.len());
    }

    #[test]
    fn round_trip_keeps_every_kind_mode_owner_time_and_hole() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let tops = make_tree(&src);
        let pass = secret(b"correct horse battery staple");

        let mut progressed = 0;
        let mut writer = Writer::new(Vec::new(), &pass, TEST_KDF, MIN_CHUNK_SIZE).unwrap();
        let written = write_tree(&src, &tops, &mut writer, &mut |n| progressed = n).unwrap();
        let archive = writer.finish().unwrap();
        assert_eq!(progressed, written.bytes);
        assert_eq!(written.entries, ["Persistent", "persistence.conf"]);
        assert_eq!(written.skipped, ["Persistent/fifo", "Persistent/socket"]);
        assert!(written.warnings.is_empty(), "{:?}", written.warnings);
        assert_eq!((written.files, written.dirs, written.symlinks), (7, 7, 2));
        // The sparse file's 10 MiB of holes are not stored.
        assert!(
            archive.len() < 64 * 1024,
            "archive of {} bytes",
            archive.len()
        );

        for threads in [1, 2, 4] {
            let dest = tmp.path().join(format!("dest-{threads}"));
            std::fs::create_dir(&dest).unwrap();
            let mut reader = Reader::new(&archive[..], &pass).unwrap();
            assert_eq!(reader.kdf_params(), TEST_KDF);
            // On one thread, and with the finishing thread beside the reading one.
            let read = read_tree_on(&mut reader, Some(&dest), threads, &mut |_| {}).unwrap();
            assert_eq!(
                TreeStats {
                    skipped: vec![],
                    ..written.clone()
                },
                read
            );

            let mut expected = snapshot(&src);
            expected.remove("not-backed-up");
            let extracted = snapshot(&dest);
            assert_eq!(expected, extracted);
            assert!(extracted.contains_key("Persistent/empty"));
            assert!(
                !dest.join("Persistent/fifo").exists() && !dest.join("Persistent/socket").exists()
            );
            if !nix::unistd::geteuid().is_root() {
                let me = nix::unistd::geteuid().as_raw();
                assert_eq!(
                    std::fs::metadata(dest.join("Persistent/docs/small.txt"))
                        .unwrap()
                        .uid(),
                    me
                );
            } else {
                let small = std::fs::metadata(dest.join("Persistent/docs/small.txt")).unwrap();
                assert_eq!((small.uid(), small.gid()), (1234, 5678));
            }
            let sparse = std::fs::metadata(dest.join("Persistent/sparse.img")).unwrap();
            assert_eq!(sparse.len(), 10 << 20);
            assert!(
                sparse.blocks() * 512 <= 64 * 1024,
                "{} blocks: holes were filled",
                sparse.blocks()
            );

            // Verifying without extracting sees the same.
            let mut reader = Reader::new(&archive[..], &pass).unwrap();
            assert_eq!(read_tree(&mut reader, None, &mut |_| {}).unwrap(), read);
            make_writable(&dest);
        }
        make_writable(&src);
    }

    /// A file the kernel refuses to write (its data at an offset past what any file can
    /// hold) fails the extraction on one thread and when written on the finishing thread.
    #[test]
    fn a_write_that_fails_fails_the_extraction_on_every_thread_count() {
        let far = 1u64 << 63;
        let stream = Stream::default()
            .dir("top")
            .file("top/before", b"fine")
            .raw_file(b"top/far", far + 4, &[(far, 4)], b"data")
            .end();
        for threads in [1, 2, 4] {
            let tmp = tempfile::tempdir().unwrap();
            let err =
                read_tree_on(&mut &stream[..], Some(tmp.path()), threads, &mut |_| {}).unwrap_err();
            let shown = err.to_string();
            assert!(
                shown.contains("writing") && shown.contains("top/far"),
                "{threads} threads: {shown}"
            );
            make_writable(tmp.path());
        }
    }

    #[test]
    fn trees_1100_and_3000_deep_round_trip_with_128_descriptors() {
        // The walk holds at most MAX_OPEN_DIRS + 3 folders open; a restore's finishing
        // thread 65 files more (FINISH_QUEUE + 1); the rest is the process's own. Without
        // the walk's bound, the deep trees would need thousands.
        with_descriptor_limit(
            "archive::tree::tests::trees_1100_and_3000_deep_round_trip_with_128_descriptors",
            128,
            || {
                let tmp = tempfile::tempdir().unwrap();
                let (src, dest) = (tmp.path().join("src"), tmp.path().join("dest"));
                std::fs::create_dir_all(src.join("Persistent")).unwrap();
                std::fs::create_dir(&dest).unwrap();
                let files = deep_chain(&src.join("Persistent"), "d", 3000)
                    + deep_chain(&src.join("Persistent"), "e", 1100);
                std::fs::write(src.join("Persistent/top.txt"), b"after the deep ones").unwrap();
                // A wide folder too: the files a restore's finishing thread holds open are
                // within the bound.
                let wide = src.join("Persistent/wide");
                std::fs::create_dir(&wide).unwrap();
                for i in 0..500u32 {
                    std::fs::write(wide.join(format!("f{i}")), i.to_le_bytes()).unwrap();
                }
                // Plaintext: the walk is what is tested here, and the cipher is slow unoptimised.
                let mut plaintext = Vec::new();
                let tops = [PathBuf::from("Persistent")];
                let written = write_tree(&src, &tops, &mut plaintext, &mut |_| {}).unwrap();
                assert_eq!(
                    (written.dirs, written.files),
                    (1 + 3000 + 1100 + 1, files as u64 + 1 + 500)
                );
                for threads in [1, 2] {
                    let dest = dest.join(threads.to_string());
                    std::fs::create_dir(&dest).unwrap();
                    let read = read_tree_on(&mut &plaintext[..], Some(&dest), threads, &mut |_| {})
                        .unwrap();
                    assert_eq!(read, written);
                    assert_eq!(snapshot(&src), snapshot(&dest));
                }
            },
        );
    }

    #[test]
    fn write_tree_writes_parents_first_and_names_in_bytewise_order() {
        // The order the recursive writer had, which the iterative one must keep.
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("Persistent");
        std::fs::create_dir_all(p.join("a/y")).unwrap();
        for file in ["B", "a/x", "a/y/z", "b"] {
            std::fs::write(p.join(file), file).unwrap();
        }
        std::os::unix::fs::symlink("x", p.join("a/l")).unwrap();
        let mut expected = Vec::new();
        for rel in [
            "Persistent",
            "Persistent/B",
            "Persistent/a",
            "Persistent/a/l",
            "Persistent/a/x",
            "Persistent/a/y",
            "Persistent/a/y/z",
            "Persistent/b",
        ] {
            let st = fstatat(
                nix::fcntl::AT_FDCWD,
                &tmp.path().join(rel),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .unwrap();
            let meta = Meta::of(&st);
            match st.st_mode & libc::S_IFMT {
                libc::S_IFDIR => {
                    expected.extend(entry_start(ENTRY_DIR, rel.as_bytes(), &meta).unwrap())
                }
                libc::S_IFLNK => {
                    expected.extend(entry_start(ENTRY_SYMLINK, rel.as_bytes(), &meta).unwrap());
                    push_bytes16(&mut expected, b"x", "target").unwrap();
                }
                _ => {
                    let data = std::fs::read(tmp.path().join(rel)).unwrap();
                    expected.extend(entry_start(ENTRY_FILE, rel.as_bytes(), &meta).unwrap());
                    expected.extend(file_layout(data.len() as u64, &[(0, data.len() as u64)]));
                    expected.extend(data);
                }
            }
        }
        expected.push(ENTRY_END);
        let mut plaintext = Vec::new();
        write_tree(
            tmp.path(),
            &[PathBuf::from("Persistent")],
            &mut plaintext,
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(plaintext, expected);
    }

    #[test]
    fn unsafe_paths_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("dest");
        std::fs::create_dir(&dest).unwrap();
        for path in [
            &b""[..],
            b"/etc/passwd",
            b"..",
            b".",
            b"../x",
            b"a/../../x",
            b"./a",
            b"a/.",
            b"a//b",
            b"a/",
            b"a\0b",
        ] {
            let stream = Stream::default()
                .dir("a")
                .raw_file(path, 1, &[(0, 1)], b"x")
                .end();
            let err = verify(&stream).unwrap_err();
            assert!(err.to_string().contains("refused"), "{path:?}: {err}");
            let err = read_tree(&mut &stream[..], Some(&dest), &mut |_| {}).unwrap_err();
            assert!(err.to_string().contains("refused"), "{path:?}: {err}");
            crate::safefs::empty_dir(&dest).unwrap();
        }
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
    }

    #[test]
    fn malformed_streams_are_refused() {
        let entry =
            |kind: u8, path: &str, meta: Meta| entry_start(kind, path.as_bytes(), &meta).unwrap();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty stream", vec![]),
            ("no end marker", Stream::default().dir("a").0),
            ("unknown type", Stream::default().raw(&[4]).end()),
            (
                "data after the end",
                [Stream::default().end(), vec![0]].concat(),
            ),
            ("parent missing", Stream::default().file("a/b", b"x").end()),
            (
                "parent after child",
                Stream::default().file("a/b", b"x").dir("a").end(),
            ),
            ("twice", Stream::default().dir("a").dir("a").end()),
            (
                "file then dir",
                Stream::default().file("a", b"x").dir("a").end(),
            ),
            (
                "cut in a path",
                Stream::default().raw(&[ENTRY_DIR, 10, 0, b'a']).0,
            ),
            (
                "cut in data",
                Stream::default().raw_file(b"f", 10, &[(0, 10)], b"short").0,
            ),
            (
                "mode bits beyond 0o7777",
                Stream::default()
                    .raw(&entry(
                        ENTRY_DIR,
                        "a",
                        Meta {
                            mode: 0o10000,
                            ..META
                        },
                    ))
                    .end(),
            ),
            (
                "nanoseconds beyond a second",
                Stream::default()
                    .raw(&entry(
                        ENTRY_DIR,
                        "a",
                        Meta {
                            mtime_nsec: 1_000_000_000,
                            ..META
                        },
                    ))
                    .end(),
            ),
            (
                "empty symlink target",
                Stream::default().symlink("l", "").end(),
            ),
            (
                "symlink target with NUL",
                Stream::default().symlink("l", "a\0b").end(),
            ),
            (
                "empty extent",
                Stream::default().raw_file(b"f", 10, &[(0, 0)], b"").end(),
            ),
            (
                "extent past size",
                Stream::default()
                    .raw_file(b"f", 10, &[(5, 6)], b"xxxxxx")
                    .end(),
            ),
            (
                "overlapping",
                Stream::default()
                    .raw_file(b"f", 10, &[(0, 4), (3, 2)], b"xxxxxx")
                    .end(),
            ),
            (
                "unsorted",
                Stream::default()
                    .raw_file(b"f", 10, &[(5, 2), (0, 2)], b"xxxx")
                    .end(),
            ),
            (
                "extent end overflows",
                Stream::default()
                    .raw_file(b"f", u64::MAX, &[(u64::MAX - 1, 2)], b"xx")
                    .end(),
            ),
        ];
        for (what, stream) in cases {
            let err = verify(&stream).err();
            assert!(
                err.as_ref().map(exit_code) == Some(ExitCode::Corrupt),
                "{what}: {err:?}"
            );
        }
        // A huge extent count is refused before anything is allocated for it, and a
        // plausible one fails at the first missing byte.
        for count in [u32::MAX, MAX_EXTENTS + 1, MAX_EXTENTS] {
            let mut stream = entry(ENTRY_FILE, "f", META);
            stream.extend_from_slice(&u64::MAX.to_le_bytes());
            stream.extend_from_slice(&count.to_le_bytes());
            let err = verify(&stream).unwrap_err();
            assert!(exit_code(&err) == ExitCode::Corrupt, "{count}: {err}");
        }
    }

    #[test]
    fn a_valid_stream_with_a_sparse_file_is_accepted() {
        let stream = Stream::default()
            .dir("a")
            .raw_file(
                b"a/disk",
                1 << 40,
                &[(0, 3), (1 << 30, 2), ((1 << 40) - 1, 1)],
                b"abcdef",
            )
            .file("a/empty", b"")
            .symlink("a/link", "/etc/passwd")
            .end();
        let stats = verify(&stream).unwrap();
        assert_eq!(
            (stats.dirs, stats.files, stats.symlinks, stats.bytes),
            (1, 2, 1, 6)
        );
        assert_eq!(stats.entries, ["a"]);
    }

    #[test]
    fn write_tree_takes_only_names_directly_inside_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("a")).unwrap();
        for tops in [
            vec![PathBuf::from("a/b")],
            vec![PathBuf::from("../a")],
            vec![PathBuf::from("/a")],
            vec![PathBuf::from("a"), PathBuf::from("a")],
        ] {
            let err = write_tree(tmp.path(), &tops, &mut Vec::new(), &mut |_| {}).unwrap_err();
            assert!(exit_code(&err) == ExitCode::Usage, "{tops:?}: {err}");
        }
        let err = write_tree(
            tmp.path(),
            &[PathBuf::from("missing")],
            &mut Vec::new(),
            &mut |_| {},
        )
        .unwrap_err();
        assert!(exit_code(&err) == ExitCode::NotFound, "{err}");
    }

    #[test]
    fn a_symlinked_top_is_stored_as_a_symlink_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("secret")).unwrap();
        std::fs::write(tmp.path().join("secret/shadow"), b"x").unwrap();
        std::os::unix::fs::symlink("secret", tmp.path().join("Persistent")).unwrap();
        let mut plaintext = Vec::new();
        let stats = write_tree(
            tmp.path(),
            &[PathBuf::from("Persistent")],
            &mut plaintext,
            &mut |_| {},
        )
        .unwrap();
        assert_eq!((stats.symlinks, stats.files, stats.dirs), (1, 0, 0));
        assert_eq!(
            verify(&plaintext).unwrap(),
            TreeStats {
                skipped: vec![],
                ..stats
            }
        );
    }
}
