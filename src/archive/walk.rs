//! Writing format 2's plaintext from a folder tree: a first walk writes the listing
//! (metadata, extended attributes, hard links, and for each file whether its content is
//! stored here or, unchanged since the previous archive, in an archive of the chain); a
//! second pass writes the content of the files stored here, in listing order, from the
//! descriptor the listing opened each with (held from one pass to the other while the
//! process has descriptors to spare), or else reopening it on descriptors from the root
//! without following anything.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{FileStat, Mode, fstat};

use super::extract::{Meta, split_path};
use super::header::ID_LEN;
use super::listing::{Kind, Listed, Listing, preamble, storable};
use super::lookahead::{Lookahead, Looked};
use super::stream::PlainSink;
use super::tree::{ENTRY_END, EntryKind, Step, TreeStats, TreeWriter, open_tops, shown};
use super::{Error, Result};
use crate::context::{Context, at};
use crate::safefs::treewalk::{self, DirStack, Listed as ListedType};
use crate::safefs::xattr::{On, Xattr, opens_up};

/// What the previous archive of a chain says of each file, to tell which files are
/// unchanged: same size and modification time to the nanosecond (rsync's quick check), and
/// same owner and group, since a file's owner sets its size and time at will: a file the
/// live user put in place of root's must not be given root's old content. Nor may the old
/// content reach anyone new ([`opens_up`]): root's file of the same size and time, but
/// readable by all, renamed over a private one.
#[derive(Debug, Default)]
pub(crate) struct Previous {
    files: HashMap<Vec<u8>, PreviousFile>,
}

#[derive(Debug, Clone)]
struct PreviousFile {
    size: u64,
    mtime: (i64, u32),
    owner: (u32, u32),
    mode: u32,
    xattrs: Vec<Xattr>,
    extents: Vec<(u64, u64)>,
    holder: [u8; ID_LEN],
}

impl Previous {
    /// From the previous archive's listing: its files. Not its hard links: a reader finds
    /// content by its holder and the path the holder stored it under, and a hard link's
    /// content is stored under its target's path. Were a link's path to become a file of
    /// its own (its target removed or renamed), a reference to it would name content no
    /// archive holds; it is stored again instead.
    pub(crate) fn from_listing(listing: &Listing) -> Previous {
        let files = listing
            .entries
            .iter()
            .filter_map(|entry| match &entry.kind {
                Kind::File {
                    size,
                    extents,
                    holder,
                } => Some((
                    entry.path.clone(),
                    PreviousFile {
                        size: *size,
                        mtime: (entry.meta.mtime, entry.meta.mtime_nsec),
                        owner: (entry.meta.uid, entry.meta.gid),
                        mode: entry.meta.mode,
                        xattrs: entry.xattrs.clone(),
                        extents: extents.clone(),
                        holder: *holder,
                    },
                )),
                _ => None,
            })
            .collect();
        Previous { files }
    }

    fn unchanged(&self, path: &[u8], st: &FileStat, xattrs: &[Xattr]) -> Option<&PreviousFile> {
        self.files.get(path).filter(|p| {
            p.size == st.st_size as u64
                && p.mtime == (st.st_mtime, st.st_mtime_nsec as u32)
                && p.owner == (st.st_uid, st.st_gid)
                && !opens_up(p.mode, &p.xattrs, st.st_mode, xattrs)
        })
    }
}

/// A file whose content the data section holds, found by the first walk.
struct Planned {
    path: Vec<u8>,
    /// The file as the listing opened it, while descriptors last; else it is reopened.
    held: Option<Held>,
    /// Device and inode, to tell the same file when it is reopened.
    id: (u64, u64),
    /// Modification time when listed, to tell a file written to since.
    mtime: (i64, i64),
    size: u64,
    extents: Vec<(u64, u64)>,
}

/// Descriptors kept free of held files in any case: the walk's folders (at most
/// `MAX_OPEN_DIRS + 3`), the archive's output, and whatever else the process has open.
const DESCRIPTORS_KEPT_FREE: usize = 256;

/// Files held open across the process, from every backup being written.
static HELD: AtomicUsize = AtomicUsize::new(0);

/// A planned file's descriptor, held from the listing to the data pass. Why: reopening
/// a file from the root cost an `openat`, an `fstat` and a path walk a file, a third of
/// the small-file tree's system calls (loopdev-tests/bench/backup).
pub(crate) struct Held(File);

impl Held {
    /// Holds `fd` if the process can spare a descriptor for it, counting it; gives it
    /// back otherwise (the caller closes it, and the data pass reopens the file).
    pub(crate) fn hold(fd: OwnedFd) -> std::result::Result<Held, OwnedFd> {
        let limit = descriptor_limit().saturating_sub(DESCRIPTORS_KEPT_FREE);
        let taken = HELD.fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
            (held < limit).then_some(held + 1)
        });
        match taken {
            Ok(_) => Ok(Held(File::from(fd))),
            Err(_) => Err(fd),
        }
    }
}

impl Held {
    /// Whether a descriptor could be held now.
    pub(crate) fn can_hold() -> bool {
        HELD.load(Ordering::Acquire) < descriptor_limit().saturating_sub(DESCRIPTORS_KEPT_FREE)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        HELD.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The process's soft limit on descriptors, raised to the hard limit the first time it is
/// asked (the default soft limit, 1024, would hold a few hundred files). It is left
/// raised: lowering it again while another backup holds descriptors would fail that
/// backup's next `openat`.
fn descriptor_limit() -> usize {
    static LIMIT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| {
        use nix::sys::resource::{Resource, getrlimit, setrlimit};
        let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
            return 0;
        };
        let raised = if hard > soft && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
            hard
        } else {
            soft
        };
        usize::try_from(raised).unwrap_or(usize::MAX)
    })
}

/// Where an archive stands in its chain, as its plaintext says: its own id, the file name
/// of its parent (empty for a full archive) and what the parent holds.
pub(crate) struct InChain<'a> {
    pub(crate) own: [u8; ID_LEN],
    pub(crate) parent_name: &'a [u8],
    pub(crate) previous: Option<&'a Previous>,
}

/// Entries listed between two progress steps.
const LISTED_PER_STEP: u64 = 256;

/// The most descriptors the process's table is grown to hold before a backup starts.
const TABLE_MADE_READY: usize = 1 << 16;

/// Grows the process's descriptor table once to about as many descriptors as may be held
/// (up to [`TABLE_MADE_READY`]), by duplicating `fd` that high and closing it. Why: the
/// kernel grows the table by doubling, and in a process with more than one thread each
/// growth waits for an RCU grace period; with the look-ahead's thread running, the
/// listing of the small-file tree took twice as long (loopdev-tests/bench/backup).
fn make_room_for_held(fd: &OwnedFd) {
    let room = descriptor_limit()
        .saturating_sub(DESCRIPTORS_KEPT_FREE)
        .min(TABLE_MADE_READY);
    let Ok(room) = libc::c_int::try_from(room) else {
        return;
    };
    // Only a speed-up: without it, the table grows as descriptors are held.
    if let Ok(high) = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(room)) {
        let _ = nix::unistd::close(high);
    }
}

/// Writes a format-2 plaintext of `tops` in `root` (see [`super::write_tree`] for what is
/// walked and how) for the archive `chain.own`: the preamble naming its parent, the
/// listing, the data section, the end marker. With `chain.previous`, files unchanged
/// since it are listed as held where it says, and not stored again. With more than one
/// of `threads`, a second thread looks at the files ahead of the listing walk.
pub(crate) fn write_tree_v2(
    root: &Path,
    tops: &[PathBuf],
    chain: InChain,
    out: &mut dyn PlainSink,
    threads: usize,
    progress: &mut dyn FnMut(Step),
) -> Result<TreeStats> {
    let InChain {
        own,
        parent_name,
        previous,
    } = chain;
    let (root_fd, names) = open_tops(root, tops)?;
    make_room_for_held(&root_fd);
    let data_root = root_fd
        .try_clone()
        .context(|| "duplicating a descriptor".into())?;
    let mut walk = ListingWriter {
        base: TreeWriter::new(root, out, progress, &names),
        own,
        previous,
        links: HashMap::new(),
        planned: Vec::new(),
        left_out: BTreeMap::new(),
        lookahead: Lookahead::new(threads > 1),
        listed: 0,
    };
    // The key is derived: the progress shows from here on, through the listing walk.
    (walk.base.progress)(Step::Listing { entries: 0 });
    walk.base.emit(&preamble(parent_name)?)?;
    {
        // Both closures need the writer, one at a time.
        let walk = std::cell::RefCell::new(&mut walk);
        treewalk::walk_around::<Error>(
            root_fd,
            root,
            &names,
            &mut |parent, name, path, listed| walk.borrow_mut().entry(parent, name, path, listed),
            &mut |around| {
                walk.borrow_mut()
                    .lookahead
                    .around(around.map(|(_, entries)| entries));
                Ok(())
            },
        )?;
    }
    // Its thread is not needed any more.
    walk.lookahead = Lookahead::new(false);
    walk.base.emit(&[ENTRY_END])?;
    for (name, count) in std::mem::take(&mut walk.left_out) {
        walk.base.stats.warnings.push(format!(
            "the extended attribute {} of {count} entries is not kept (see docs/backup-format.md)",
            shown(&name)
        ));
    }
    let planned = std::mem::take(&mut walk.planned);
    // What the data section holds is known now: the progress has its total.
    let total: u64 = planned
        .iter()
        .flat_map(|file| &file.extents)
        .map(|(_, len)| len)
        .sum();
    walk.base.data_total = Some(total);
    (walk.base.progress)(Step::Listing {
        entries: walk.listed,
    });
    (walk.base.progress)(Step::Data {
        written: 0,
        total: Some(total),
    });
    let mut dirs = DirStack::new(data_root, root);
    for file in planned {
        walk.data(&mut dirs, file)?;
    }
    walk.base.emit(&[ENTRY_END])?;
    Ok(walk.base.stats)
}

struct ListingWriter<'a, 'p> {
    base: TreeWriter<'a>,
    own: [u8; ID_LEN],
    previous: Option<&'p Previous>,
    /// Files with more than one name, by device and inode: the path first listed.
    links: HashMap<(u64, u64), Vec<u8>>,
    planned: Vec<Planned>,
    /// Attributes not kept, by name: how many entries had them.
    left_out: BTreeMap<Vec<u8>, u64>,
    lookahead: Lookahead,
    /// Entries listed so far.
    listed: u64,
}

impl ListingWriter<'_, '_> {
    /// Lists the entry `name` in `parent`, as [`TreeWriter::entry`] writes it in format 1.
    fn entry(
        &mut self,
        parent: &OwnedFd,
        name: &OsStr,
        path: &[u8],
        listed: ListedType,
    ) -> Result<Option<OwnedFd>> {
        match self.base.kind_of(parent, name, path, listed)? {
            None => Ok(None),
            Some(EntryKind::Directory) => self.directory(parent, name, path),
            Some(EntryKind::File) => self.file(parent, name, path).map(|()| None),
            Some(EntryKind::Symlink(st)) => self.symlink(parent, name, path, &st).map(|()| None),
        }
    }

    /// The kept attributes of what `on` names; the others are counted for the report.
    fn xattrs(&mut self, on: On<OwnedFd>, path: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.kept(on.read(), path)
    }

    /// The attributes kept of those `read` (as `On::read` gives them); the others are
    /// counted for the report.
    fn kept(
        &mut self,
        read: std::io::Result<(Vec<Xattr>, Vec<Vec<u8>>)>,
        path: &[u8],
    ) -> Result<Vec<Xattr>> {
        let (kept, left_out) = read.context(at(
            "reading the extended attributes of",
            &self.base.shown(path),
        ))?;
        let (kept, too_big) = storable(kept);
        for name in left_out.into_iter().chain(too_big) {
            *self.left_out.entry(name).or_default() += 1;
        }
        self.base.stats.xattrs += kept.len() as u64;
        Ok(kept)
    }

    fn emit(&mut self, entry: &Listed) -> Result<()> {
        self.base.emit(&entry.encode()?)?;
        self.listed += 1;
        if self.listed.is_multiple_of(LISTED_PER_STEP) {
            (self.base.progress)(Step::Listing {
                entries: self.listed,
            });
        }
        Ok(())
    }

    fn directory(
        &mut self,
        parent: &OwnedFd,
        name: &OsStr,
        path: &[u8],
    ) -> Result<Option<OwnedFd>> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY;
        let Some(fd) = self.base.open(parent, name, path, flags)? else {
            return Ok(None);
        };
        let st = fstat(&fd).context(at("reading", &self.base.shown(path)))?;
        let xattrs = self.xattrs(On::Fd(&fd), path)?;
        self.emit(&Listed {
            path: path.to_vec(),
            meta: Meta::of(&st),
            xattrs,
            kind: Kind::Dir,
        })?;
        self.base.stats.dirs += 1;
        Ok(Some(fd))
    }

    fn file(&mut self, parent: &OwnedFd, name: &OsStr, path: &[u8]) -> Result<()> {
        let (file, st, xattrs, extents) = match self.lookahead.take(parent, name) {
            Looked::Found {
                file,
                st,
                xattrs,
                extents,
            } => (file, st, xattrs, extents),
            Looked::Vanished => {
                self.base
                    .changed(path, "vanished while being backed up; left out");
                return Ok(());
            }
            Looked::Changed => {
                self.base
                    .changed(path, "changed while being backed up; left out");
                return Ok(());
            }
            Looked::Failed { what, error } => {
                return Err(error)
                    .context(at(what, &self.base.shown(path)))
                    .map_err(Error::from);
            }
            Looked::Unheld => {
                return Err(Error::Internal(format!(
                    "{} was not looked at; this is a bug",
                    shown(path)
                )));
            }
        };
        let xattrs = self.kept(xattrs, path)?;
        let inode = (st.st_dev, st.st_ino);
        if st.st_nlink > 1 {
            if let Some(first) = self.links.get(&inode) {
                let target = first.clone();
                self.base.stats.hardlinks += 1;
                return self.emit(&Listed {
                    path: path.to_vec(),
                    meta: Meta::of(&st),
                    xattrs,
                    kind: Kind::HardLink { target },
                });
            }
            self.links.insert(inode, path.to_vec());
        }
        let size = st.st_size as u64;
        let unchanged = self
            .previous
            .and_then(|previous| previous.unchanged(path, &st, &xattrs))
            .cloned();
        let (extents, holder) = match unchanged {
            Some(previous) => {
                self.base.stats.referenced += 1;
                self.base.stats.referenced_bytes +=
                    previous.extents.iter().map(|(_, l)| l).sum::<u64>();
                (previous.extents, previous.holder)
            }
            None => {
                self.base.stats.files += 1;
                if !extents.is_empty() {
                    self.planned.push(Planned {
                        path: path.to_vec(),
                        held: file.ok(),
                        id: inode,
                        mtime: (st.st_mtime, st.st_mtime_nsec),
                        size,
                        extents: extents.clone(),
                    });
                }
                (extents, self.own)
            }
        };
        self.emit(&Listed {
            path: path.to_vec(),
            meta: Meta::of(&st),
            xattrs,
            kind: Kind::File {
                size,
                extents,
                holder,
            },
        })
    }

    fn symlink(
        &mut self,
        parent: &OwnedFd,
        name: &OsStr,
        path: &[u8],
        st: &FileStat,
    ) -> Result<()> {
        let target = match nix::fcntl::readlinkat(parent, name) {
            Ok(target) => target,
            Err(Errno::ENOENT | Errno::EINVAL) => {
                self.base
                    .changed(path, "changed while being backed up; left out");
                return Ok(());
            }
            Err(e) => {
                return Err(e)
                    .context(at("reading the link", &self.base.shown(path)))
                    .map_err(Error::from);
            }
        };
        // On the link itself, never followed (user.* cannot be on a symlink; trusted.*
        // and security.capability can).
        let xattrs = self.xattrs(On::Entry(parent, name), path)?;
        self.emit(&Listed {
            path: path.to_vec(),
            meta: Meta::of(st),
            xattrs,
            kind: Kind::Symlink {
                target: target.as_bytes().to_vec(),
            },
        })?;
        self.base.stats.symlinks += 1;
        Ok(())
    }

    /// Writes the content of one planned file: its listed extents, read from the
    /// descriptor the listing held, or else from the file reopened on descriptors from the
    /// root. The listing has promised that many bytes, so a reopened file that is gone or
    /// is another file now is stored as zeros, one that shrank is padded with zeros, and
    /// one that grew is cut to its listed size: all reported. A held file is the inode
    /// listed whatever its name now leads to; what changed in it is reported alike.
    fn data(&mut self, dirs: &mut DirStack, file: Planned) -> Result<()> {
        let shown_path = self.base.shown(&file.path);
        if let Some(held) = &file.held {
            let shrank = self
                .base
                .copy_extents(Some(&held.0), &file.extents, &shown_path)?;
            // After the reading, so that a write during it is seen too.
            let st = fstat(&held.0).context(at("reading", &shown_path))?;
            self.report_change(&file, shrank, &st);
            return Ok(());
        }
        let (parent, name) = split_path(&file.path);
        let opened = match dirs.walk_to(parent)? {
            Ok(dir) => match openat(
                dir,
                OsStr::from_bytes(name),
                OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            ) {
                Ok(fd) => Some(fd),
                Err(Errno::ENOENT | Errno::ELOOP | Errno::ENOTDIR | Errno::ENXIO) => None,
                Err(e) => {
                    return Err(e)
                        .context(at("opening", &shown_path))
                        .map_err(Error::from);
                }
            },
            Err(_) => None,
        };
        let same = opened.and_then(|fd| {
            let st = fstat(&fd).ok()?;
            let same =
                st.st_mode & libc::S_IFMT == libc::S_IFREG && (st.st_dev, st.st_ino) == file.id;
            same.then_some((File::from(fd), st))
        });
        let Some((opened, st)) = same else {
            self.base.changed(
                &file.path,
                "was removed or replaced while being backed up; its listed content is stored as zeros",
            );
            return self
                .base
                .copy_extents(None, &file.extents, &shown_path)
                .map(drop);
        };
        let shrank = self
            .base
            .copy_extents(Some(&opened), &file.extents, &shown_path)?;
        self.report_change(&file, shrank, &st);
        Ok(())
    }

    /// Says how a file changed since it was listed, from what its reading found (whether
    /// it ended early) and its status `st` now.
    fn report_change(&mut self, file: &Planned, shrank: bool, st: &FileStat) {
        if shrank {
            self.base.changed(
                &file.path,
                "shrank while being backed up; its missing end is stored as zeros",
            );
        } else if st.st_size as u64 != file.size {
            self.base.changed(
                &file.path,
                "changed size while being backed up; stored at its listed size",
            );
        } else if (st.st_mtime, st.st_mtime_nsec) != file.mtime {
            self.base.changed(
                &file.path,
                "was written to while being backed up; stored as it was read",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// The data pass over one planned file of 10 bytes that changed after it was listed,
    /// held open since the listing (`hold`) or reopened: what it stored and what it said.
    fn data_after(hold: bool, change: impl FnOnce(&Path)) -> (Vec<u8>, Vec<String>) {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        std::fs::write(&file, b"0123456789").unwrap();
        let meta = std::fs::metadata(&file).unwrap();
        let held = hold.then(|| {
            let fd = OwnedFd::from(File::open(&file).unwrap());
            Held::hold(fd).expect("a descriptor to spare")
        });
        let planned = Planned {
            path: b"f".to_vec(),
            held,
            id: (meta.dev(), meta.ino()),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            size: 10,
            extents: vec![(0, 10)],
        };
        change(&file);
        let mut out = Vec::new();
        let mut progress = |_| {};
        let names: [&OsStr; 0] = [];
        let mut writer = ListingWriter {
            base: TreeWriter::new(tmp.path(), &mut out, &mut progress, &names),
            own: [1; ID_LEN],
            previous: None,
            links: HashMap::new(),
            planned: Vec::new(),
            left_out: BTreeMap::new(),
            lookahead: Lookahead::new(false),
            listed: 0,
        };
        let root = openat(
            nix::fcntl::AT_FDCWD,
            tmp.path(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        let mut dirs = DirStack::new(root, tmp.path());
        writer.data(&mut dirs, planned).unwrap();
        let warnings = std::mem::take(&mut writer.base.stats.warnings);
        drop(writer);
        (out, warnings)
    }

    /// Made while the file still exists: another inode, renamed over it.
    fn replace(f: &Path) {
        let other = f.with_file_name("g");
        std::fs::write(&other, b"another file").unwrap();
        std::fs::rename(&other, f).unwrap();
    }

    #[test]
    fn a_file_that_changes_after_it_was_listed_is_stored_at_its_listed_length_and_said() {
        for hold in [false, true] {
            let (same, warnings) = data_after(hold, |_| {});
            assert_eq!((&same[..], warnings.len()), (&b"0123456789"[..], 0));
            let (shrunk, warnings) = data_after(hold, |f| std::fs::write(f, b"0123").unwrap());
            assert_eq!(shrunk, b"0123\0\0\0\0\0\0");
            assert!(warnings[0].contains("shrank"), "{hold}: {warnings:?}");
            let (grown, warnings) =
                data_after(hold, |f| std::fs::write(f, b"0123456789abcdef").unwrap());
            assert_eq!(grown, b"0123456789");
            assert!(warnings[0].contains("changed size"), "{hold}: {warnings:?}");
            let (rewritten, warnings) = data_after(hold, |f| {
                crate::archive::testing::set_mtime(f, 1, 0);
            });
            assert_eq!(rewritten, b"0123456789");
            assert!(warnings[0].contains("written to"), "{hold}: {warnings:?}");
        }
        // Reopened, a file removed or replaced since has no listed content left to read.
        let (replaced, warnings) = data_after(false, replace);
        assert_eq!(replaced, [0; 10]);
        assert!(warnings[0].contains("replaced"), "{warnings:?}");
        let (gone, warnings) = data_after(false, |f| std::fs::remove_file(f).unwrap());
        assert_eq!(gone, [0; 10]);
        assert!(warnings[0].contains("removed"), "{warnings:?}");
    }

    #[test]
    fn a_held_file_removed_or_replaced_after_it_was_listed_is_stored_as_listed() {
        // The descriptor still reads the inode the listing described, whole and unchanged:
        // the archive is what the listing says, and nothing is to be reported.
        let (replaced, warnings) = data_after(true, replace);
        assert_eq!((&replaced[..], warnings.len()), (&b"0123456789"[..], 0));
        let (gone, warnings) = data_after(true, |f| std::fs::remove_file(f).unwrap());
        assert_eq!((&gone[..], warnings.len()), (&b"0123456789"[..], 0));
    }

    /// A tree for the look-ahead: folders of more files than a run, with subfolders
    /// listed between their files, a symlink, an empty file and a hard link.
    fn wide_tree(root: &Path) {
        let p = root.join("Persistent");
        for (dir, files) in [("a", 600u32), ("a/m", 30), ("a/m/n", 300), ("b", 3)] {
            std::fs::create_dir_all(p.join(dir)).unwrap();
            for i in 0..files {
                let content = format!("{dir}/{i} ").repeat(i as usize % 7);
                std::fs::write(p.join(dir).join(format!("f{i:03}")), content).unwrap();
            }
        }
        std::fs::create_dir(p.join("a/f250-dir")).unwrap();
        std::fs::write(p.join("a/f250-dir/inner"), b"inner").unwrap();
        std::os::unix::fs::symlink("f001", p.join("a/f100-link")).unwrap();
        std::fs::hard_link(p.join("a/f005"), p.join("b/again")).unwrap();
    }

    fn plaintext_on(root: &Path, threads: usize) -> (Vec<u8>, TreeStats) {
        let mut out = Vec::new();
        let chain = InChain {
            own: [7; ID_LEN],
            parent_name: b"",
            previous: None,
        };
        let tops = [PathBuf::from("Persistent")];
        let stats = write_tree_v2(root, &tops, chain, &mut out, threads, &mut |_| {}).unwrap();
        (out, stats)
    }

    #[test]
    fn the_look_ahead_writes_the_same_plaintext_as_one_thread() {
        let tmp = tempfile::tempdir().unwrap();
        wide_tree(tmp.path());
        let (alone, stats) = plaintext_on(tmp.path(), 1);
        assert_eq!((stats.files, stats.hardlinks), (600 + 30 + 300 + 3 + 1, 1));
        for _ in 0..3 {
            let (ahead, stats_ahead) = plaintext_on(tmp.path(), 2);
            assert!(ahead == alone, "the plaintexts differ");
            assert_eq!(stats_ahead, stats);
        }
    }

    #[test]
    fn the_look_ahead_writes_the_same_plaintext_with_few_descriptors_to_spare() {
        // 300 descriptors: 44 files held, then neither thread can hold any more; the other
        // thread stops looking ahead and the walk lists (and the data pass reopens) the rest.
        crate::safefs::treewalk::testing::with_descriptor_limit(
            "archive::walk::tests::the_look_ahead_writes_the_same_plaintext_with_few_descriptors_to_spare",
            300,
            || {
                let tmp = tempfile::tempdir().unwrap();
                wide_tree(tmp.path());
                let (alone, _) = plaintext_on(tmp.path(), 1);
                let (ahead, _) = plaintext_on(tmp.path(), 2);
                assert!(ahead == alone, "the plaintexts differ");
            },
        );
    }
}
