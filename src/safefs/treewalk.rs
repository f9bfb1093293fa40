//! Walks of folder trees of any depth that hold a bounded number of descriptors open.
//!
//! A tree the live user owns can be thousands of folders deep. Holding one descriptor (or
//! one stack frame) per level runs out of descriptors (EMFILE) long before the kernel runs
//! out of depth, and re-resolving a path from the top instead would let that user swap a
//! folder for a symlink between two steps. So a walk keeps the *names* of the folders from
//! its root down, with their device and inode, and descriptors for only the innermost
//! [`MAX_OPEN_DIRS`] of them. Going back up to a folder whose descriptor was closed opens
//! `..` of the folder being left and checks that it is the same folder as before; should it
//! not be (the folder left was moved meanwhile), it walks down by name from the nearest
//! folder still open, with `O_NOFOLLOW`, checking each step the same way, and stops with an
//! error if the tree no longer matches.
//!
//! The bound: a [`DirStack`] holds at most `MAX_OPEN_DIRS + 1` descriptors (its folders and
//! its root), plus two for a moment while it lists a folder or reopens one; [`walk`] and
//! [`remove_tree`] hold nothing else, whatever the depth.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{FileStat, Mode, fstat, fstatat};
use nix::unistd::{UnlinkatFlags, unlinkat};

use super::{Context, Error, Result};
use crate::context::{IoError, at};

/// Folder descriptors a walk keeps open at most, whatever the depth of the tree.
pub(crate) const MAX_OPEN_DIRS: usize = 16;

/// Device and inode: what an entry is, whatever its name is now.
pub(crate) type Id = (u64, u64);

pub(crate) fn id_of(st: &FileStat) -> Id {
    (st.st_dev, st.st_ino)
}

pub(crate) fn is_dir(st: &FileStat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// Opens the folder `name` in `parent` for reading, never through a symlink.
pub(crate) fn open_dir_at(parent: &OwnedFd, name: &OsStr) -> nix::Result<OwnedFd> {
    openat(
        parent,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// The names in an open directory, sorted bytewise so that archives are reproducible.
pub(crate) fn list_dir(fd: &OwnedFd, shown: &Path) -> Result<Vec<OsString>> {
    // No readdir on a descriptor in std; /proc/self/fd/N names exactly this directory.
    let listing = std::fs::read_dir(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .context(at("listing", shown))?;
    let mut names = listing
        .map(|entry| entry.map(|e| e.file_name()))
        .collect::<std::io::Result<Vec<_>>>()
        .context(at("listing", shown))?;
    names.sort();
    Ok(names)
}

/// What a folder's listing says an entry is (its `d_type`): a hint, as the entry can change
/// before it is opened; `None` when the file system does not say (`DT_UNKNOWN`), or for an
/// entry not found by a listing (a top of a walk). Whoever acts on it checks what it opened.
pub(crate) type Listed = Option<nix::dir::Type>;

/// [`list_dir`] with what the listing says each entry is, so that a walk need not stat an
/// entry before opening it.
pub(crate) fn list_dir_typed(fd: &OwnedFd, shown: &Path) -> Result<Vec<(OsString, Listed)>> {
    // A descriptor of its own, as reading a directory moves its offset.
    let mut dir = nix::dir::Dir::openat(fd, ".", dir_flags(), Mode::empty())
        .map_err(std::io::Error::from)
        .context(at("listing", shown))?;
    let mut entries = Vec::new();
    for entry in dir.iter() {
        let entry = entry
            .map_err(std::io::Error::from)
            .context(at("listing", shown))?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        entries.push((OsStr::from_bytes(name).to_os_string(), entry.file_type()));
    }
    entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Ok(entries)
}

fn is(fd: &OwnedFd, id: Id) -> bool {
    fstat(fd).is_ok_and(|st| id_of(&st) == id)
}

struct Frame {
    name: OsString,
    id: Id,
    fd: Option<OwnedFd>,
}

/// The folders from a root down to the one being worked in; see the module's note.
pub(crate) struct DirStack {
    root: OwnedFd,
    shown_root: PathBuf,
    frames: Vec<Frame>,
    /// How many frames hold a descriptor; the innermost always does.
    open: usize,
}

impl DirStack {
    pub(crate) fn new(root: OwnedFd, shown_root: &Path) -> DirStack {
        DirStack {
            root,
            shown_root: shown_root.to_path_buf(),
            frames: Vec::new(),
            open: 0,
        }
    }

    /// The names walked down from the root, outermost first.
    pub(crate) fn names(&self) -> impl Iterator<Item = &OsStr> {
        self.frames.iter().map(|f| f.name.as_os_str())
    }

    /// The innermost folder, for messages.
    pub(crate) fn shown(&self) -> PathBuf {
        self.shown_down_to(self.frames.len())
    }

    fn shown_down_to(&self, depth: usize) -> PathBuf {
        let mut path = self.shown_root.clone();
        for frame in &self.frames[..depth] {
            path.push(&frame.name);
        }
        path
    }

    /// The innermost folder (the root when none was entered).
    pub(crate) fn top(&self) -> Result<&OwnedFd> {
        match self.frames.last() {
            None => Ok(&self.root),
            Some(frame) => frame
                .fd
                .as_ref()
                .ok_or_else(|| Error::Internal(format!("{} is not open", self.shown().display()))),
        }
    }

    /// Enters `fd`, the folder just opened as `name` in the innermost one; returns its
    /// status. Past the bound, the outermost open folder's descriptor is closed.
    pub(crate) fn push(&mut self, name: &OsStr, fd: OwnedFd) -> Result<FileStat> {
        let st = fstat(&fd).context(|| format!("reading {}", self.shown().join(name).display()))?;
        self.frames.push(Frame {
            name: name.to_os_string(),
            id: id_of(&st),
            fd: Some(fd),
        });
        self.open += 1;
        if self.open > MAX_OPEN_DIRS
            && let Some(outermost) = self.frames.iter_mut().find(|f| f.fd.is_some())
        {
            outermost.fd = None;
            self.open -= 1;
        }
        Ok(st)
    }

    /// Leaves the innermost folder; returns its name.
    pub(crate) fn pop(&mut self) -> Result<OsString> {
        let name = self
            .frames
            .last()
            .map(|f| f.name.clone())
            .ok_or_else(|| Error::Internal("leaving the root of a walk".into()))?;
        self.truncate(self.frames.len() - 1)?;
        Ok(name)
    }

    /// Walks to the folder `path` below the root (`/` between components; empty for the
    /// root), keeping the folders it shares with the one walked to last and opening the
    /// rest one component at a time without following a symlink. A component that cannot
    /// be opened so is `Err((its depth, why))` inside the `Ok`: what it means depends on
    /// the caller.
    pub(crate) fn walk_to(
        &mut self,
        path: &[u8],
    ) -> Result<std::result::Result<&OwnedFd, (usize, Errno)>> {
        let components: Vec<&[u8]> = if path.is_empty() {
            Vec::new()
        } else {
            path.split(|&b| b == b'/').collect()
        };
        let keep = self
            .names()
            .zip(&components)
            .take_while(|(open, wanted)| open.as_bytes() == **wanted)
            .count();
        self.truncate(keep)?;
        for (depth, name) in components.iter().enumerate().skip(keep) {
            match open_dir_at(self.top()?, OsStr::from_bytes(name)) {
                Ok(fd) => {
                    self.push(OsStr::from_bytes(name), fd)?;
                }
                Err(e) => return Ok(Err((depth, e))),
            }
        }
        self.top().map(Ok)
    }

    /// Goes back up until `depth` folders are entered; the innermost is open after.
    pub(crate) fn truncate(&mut self, depth: usize) -> Result<()> {
        let mut left = None;
        while self.frames.len() > depth {
            let Some(frame) = self.frames.pop() else {
                break;
            };
            if frame.fd.is_some() {
                self.open -= 1;
            }
            left = frame.fd;
        }
        let Some(last) = self.frames.len().checked_sub(1) else {
            return Ok(());
        };
        if self.frames[last].fd.is_some() {
            return Ok(());
        }
        let want = self.frames[last].id;
        let up = left
            .and_then(|child| openat(&child, "..", dir_flags(), Mode::empty()).ok())
            .filter(|fd| is(fd, want));
        let fd = match up {
            Some(fd) => fd,
            None => self.walk_down_to(last)?,
        };
        self.frames[last].fd = Some(fd);
        self.open += 1;
        Ok(())
    }

    /// Opens frame `last` again by walking down by name from the nearest open folder
    /// above it, checking that each folder met is the one recorded.
    fn walk_down_to(&self, last: usize) -> Result<OwnedFd> {
        let start = self.frames[..last].iter().rposition(|f| f.fd.is_some());
        let mut current: Option<OwnedFd> = None;
        for i in start.map_or(0, |s| s + 1)..=last {
            let base = match (&current, start) {
                (Some(fd), _) => fd,
                (None, Some(s)) => self.frames[s].fd.as_ref().unwrap_or(&self.root),
                (None, None) => &self.root,
            };
            let frame = &self.frames[i];
            let fd = open_dir_at(base, &frame.name)
                .ok()
                .filter(|fd| is(fd, frame.id))
                .ok_or_else(|| {
                    Error::Changed(format!(
                        "{} was moved or replaced while keepsake was working in it; stopped there",
                        self.shown_down_to(i + 1).display()
                    ))
                })?;
            current = Some(fd);
        }
        current.ok_or_else(|| Error::Internal("reopening a folder of a walk".into()))
    }
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// What [`walk`] calls for each entry: the open folder the entry is in, its name there, its
/// path below the root and what the listing said it is (see [`Listed`]). Returning the descriptor of a folder it opened there by that
/// name (without following a symlink) makes the walk go into that folder next.
/// (Its error is the caller's own, so that what a visit refuses keeps its meaning.)
pub(crate) type Visit<'a, E> =
    dyn FnMut(&OwnedFd, &OsStr, &[u8], Listed) -> Result<Option<OwnedFd>, E> + 'a;

/// Visits `tops` (names in `root`) and everything below them depth first, parents before
/// their contents, each folder's entries in bytewise order of name.
pub(crate) fn walk<E: From<Error>>(
    root: OwnedFd,
    shown_root: &Path,
    tops: &[&OsStr],
    visit: &mut Visit<E>,
) -> Result<(), E> {
    walk_around(root, shown_root, tops, visit, &mut |_| Ok(()))
}

/// What [`walk_around`] says besides each entry: a folder entered, with its entries in the
/// order they will be visited (`Some`), or the innermost one left (`None`).
pub(crate) type Around<'a, E> =
    dyn FnMut(Option<(&OwnedFd, &[(OsString, Listed)])>) -> Result<(), E> + 'a;

/// [`walk`], also telling `around` when it enters a folder (and what it holds) and when
/// it leaves one, so that a visitor can work ahead on a folder's entries.
pub(crate) fn walk_around<E: From<Error>>(
    root: OwnedFd,
    shown_root: &Path,
    tops: &[&OsStr],
    visit: &mut Visit<E>,
    around: &mut Around<E>,
) -> Result<(), E> {
    let mut stack = DirStack::new(root, shown_root);
    let mut tops = tops.iter();
    // For each folder entered: its entries not visited yet, and the length of the path of
    // the folder around it (to cut `path` back to when leaving).
    let mut pending: Vec<(std::vec::IntoIter<(OsString, Listed)>, usize)> = Vec::new();
    let mut path: Vec<u8> = Vec::new();
    loop {
        let next = match pending.last_mut() {
            Some((entries, _)) => entries.next(),
            None => tops.next().map(|name| (name.to_os_string(), None)),
        };
        let Some((name, listed)) = next else {
            match pending.pop() {
                None => return Ok(()),
                Some((_, outer_len)) => {
                    path.truncate(outer_len);
                    stack.pop()?;
                    around(None)?;
                    continue;
                }
            }
        };
        let outer_len = path.len();
        if !pending.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(name.as_bytes());
        match visit(stack.top()?, &name, &path, listed)? {
            Some(fd) => {
                stack.push(&name, fd)?;
                let shown = shown_root.join(OsStr::from_bytes(&path));
                let entries = list_dir_typed(stack.top()?, &shown)?;
                around(Some((stack.top()?, &entries)))?;
                pending.push((entries.into_iter(), outer_len));
            }
            None => path.truncate(outer_len),
        }
    }
}

/// Removes `name` from the folder `parent` with everything below it: nothing is followed,
/// every removal is relative to its open parent, and no other file system (a mount) is
/// entered. With `expect`, only if the entry is still that one. Goes on past what it cannot
/// remove (a mount point, an entry busy or appearing meanwhile) and returns the first such
/// problem; a missing entry is not one.
pub(crate) fn remove_tree(
    parent: &OwnedFd,
    name: &OsStr,
    shown: &Path,
    expect: Option<Id>,
) -> Result<()> {
    let st = match fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(e).context(at("reading", shown)),
    };
    if expect.is_some_and(|id| id != id_of(&st)) {
        return Err(Error::Changed(format!(
            "{} is no longer what keepsake put there; left alone",
            shown.display()
        )));
    }
    if !is_dir(&st) {
        return unlinkat(parent, name, UnlinkatFlags::NoRemoveDir).context(at("removing", shown));
    }
    let fd = open_dir_at(parent, name)
        .ok()
        .filter(|fd| is(fd, id_of(&st)))
        .ok_or_else(|| {
            Error::Changed(format!(
                "{} changed while keepsake removed it; left alone",
                shown.display()
            ))
        })?;
    let shown_parent = shown.parent().unwrap_or(shown);
    let parent = parent
        .try_clone()
        .context(|| "duplicating a descriptor".into())?;
    let mut stack = DirStack::new(parent, shown_parent);
    stack.push(name, fd)?;
    let mut problems: Vec<Error> = Vec::new();
    let mut pending = vec![list_dir(stack.top()?, shown)?.into_iter()];
    while let Some(entries) = pending.last_mut() {
        let Some(entry) = entries.next() else {
            pending.pop();
            let dir = stack.pop()?;
            let shown_dir = stack.shown().join(&dir);
            if let Err(e) = unlinkat(stack.top()?, dir.as_os_str(), UnlinkatFlags::RemoveDir) {
                // Not empty: something below could not go, already reported.
                if e != Errno::ENOTEMPTY || problems.is_empty() {
                    problems.push(removal_problem(e, &shown_dir));
                }
            }
            continue;
        };
        let top = stack.top()?;
        let shown_entry = stack.shown().join(&entry);
        let entry_st = match fstatat(top, entry.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => continue,
            Err(e) => {
                problems.push(Error::Io(IoError::new(
                    format!("reading {}", shown_entry.display()),
                    e.into(),
                )));
                continue;
            }
        };
        if !is_dir(&entry_st) {
            if let Err(e) = unlinkat(top, entry.as_os_str(), UnlinkatFlags::NoRemoveDir)
                && e != Errno::ENOENT
            {
                problems.push(removal_problem(e, &shown_entry));
            }
            continue;
        }
        if entry_st.st_dev != st.st_dev {
            problems.push(mounted(&shown_entry));
            continue;
        }
        match open_dir_at(top, &entry) {
            Ok(fd) if is(&fd, id_of(&entry_st)) => {
                stack.push(&entry, fd)?;
                match list_dir(stack.top()?, &shown_entry) {
                    Ok(entries) => pending.push(entries.into_iter()),
                    Err(e) => {
                        problems.push(e);
                        stack.pop()?;
                    }
                }
            }
            Ok(_) => problems.push(Error::Changed(format!(
                "{} changed while keepsake removed it; left alone",
                shown_entry.display()
            ))),
            Err(Errno::ENOENT) => {}
            Err(e) => problems.push(Error::Io(IoError::new(
                format!("opening {}", shown_entry.display()),
                e.into(),
            ))),
        }
    }
    match problems.into_iter().next() {
        Some(first) => Err(first),
        None => Ok(()),
    }
}

fn mounted(shown: &Path) -> Error {
    Error::Mounted(format!(
        "{} is a mount point (busy); unmount it first",
        shown.display()
    ))
}

fn removal_problem(e: Errno, shown: &Path) -> Error {
    match e {
        // A folder that is a mount point somewhere (a FUSE mount made through a bind of
        // the volume, say) cannot be removed.
        Errno::EBUSY => mounted(shown),
        e => Error::Io(IoError::new(
            format!("removing {}", shown.display()),
            e.into(),
        )),
    }
}

/// Helpers shared by the tests of the modules that walk trees.
#[cfg(test)]
pub mod testing {
    use super::*;
    use std::collections::BTreeMap;
    use std::io::Read;

    /// Everything below `root` that an archive can hold, described for comparison: kind,
    /// size and content hash or link target, mode, owner and modification time. Walks with
    /// descriptors, so it works at any depth.
    pub(crate) fn snapshot(root: &Path) -> BTreeMap<String, String> {
        let fd = openat(
            nix::fcntl::AT_FDCWD,
            root,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        let tops = list_dir(&fd, root).unwrap();
        let tops: Vec<&OsStr> = tops.iter().map(|t| t.as_os_str()).collect();
        let mut out = BTreeMap::new();
        walk::<Error>(fd, root, &tops, &mut |parent, name, path, _| {
            let st = fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW).unwrap();
            let common = format!(
                "mode {:o} owner {}:{} mtime {}.{:09}",
                st.st_mode & 0o7777,
                st.st_uid,
                st.st_gid,
                st.st_mtime,
                st.st_mtime_nsec
            );
            let (kind, descend) = match st.st_mode & libc::S_IFMT {
                libc::S_IFDIR => ("dir".to_string(), Some(open_dir_at(parent, name).unwrap())),
                libc::S_IFREG => {
                    let fd = openat(
                        parent,
                        name,
                        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                        Mode::empty(),
                    )
                    .unwrap();
                    let mut content = Vec::new();
                    std::fs::File::from(fd).read_to_end(&mut content).unwrap();
                    let hash = content.iter().fold(0xcbf29ce484222325u64, |h, &b| {
                        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
                    });
                    (format!("file size {} fnv {hash:x}", content.len()), None)
                }
                libc::S_IFLNK => {
                    let target = nix::fcntl::readlinkat(parent, name).unwrap();
                    (format!("symlink to {}", Path::new(&target).display()), None)
                }
                _ => return Ok(None),
            };
            out.insert(
                String::from_utf8_lossy(path).into_owned(),
                format!("{kind} {common}"),
            );
            Ok(descend)
        })
        .unwrap();
        out
    }

    /// Makes a chain of `depth` folders named `name` inside `root`, with a small file in
    /// every hundredth; returns how many files it made.
    pub(crate) fn deep_chain(root: &Path, name: &str, depth: usize) -> usize {
        let mut fd = openat(
            nix::fcntl::AT_FDCWD,
            root,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        let mut files = 0;
        for level in 0..depth {
            nix::sys::stat::mkdirat(&fd, name, Mode::from_bits_truncate(0o755)).unwrap();
            fd = open_dir_at(&fd, OsStr::new(name)).unwrap();
            if level % 100 == 99 {
                let file = openat(
                    &fd,
                    "level.txt",
                    OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o640),
                )
                .unwrap();
                std::io::Write::write_all(
                    &mut std::fs::File::from(file),
                    format!("level {level}\n").as_bytes(),
                )
                .unwrap();
                files += 1;
            }
        }
        files
    }

    /// Runs `body` in a child process whose descriptor limit is `limit`: the test binary
    /// runs itself again with only the test `name` (its full path). A limit set in this
    /// process would break the tests running beside it on other threads.
    pub(crate) fn with_descriptor_limit(name: &str, limit: u64, body: impl FnOnce()) {
        const CHILD: &str = "KEEPSAKE_TEST_DESCRIPTOR_LIMIT";
        if std::env::var_os(CHILD).is_some() {
            nix::sys::resource::setrlimit(
                nix::sys::resource::Resource::RLIMIT_NOFILE,
                limit,
                limit,
            )
            .unwrap();
            body();
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([name, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "{name} with {limit} descriptors:\n{text}"
        );
        assert!(text.contains("1 passed"), "{name} did not run:\n{text}");
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    fn open(path: &Path) -> OwnedFd {
        openat(
            nix::fcntl::AT_FDCWD,
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .unwrap()
    }

    fn open_descriptors() -> usize {
        std::fs::read_dir("/proc/self/fd").unwrap().count()
    }

    #[test]
    fn deep_walks_and_removals_hold_few_descriptors() {
        with_descriptor_limit(
            "safefs::treewalk::tests::deep_walks_and_removals_hold_few_descriptors",
            64,
            || {
                let tmp = tempfile::tempdir().unwrap();
                assert_eq!(deep_chain(tmp.path(), "d", 3000), 30);
                let (mut dirs, mut files, mut most_open) = (0, 0, 0);
                let mut deepest = Vec::new();
                let tops = [OsStr::new("d")];
                walk::<Error>(
                    open(tmp.path()),
                    tmp.path(),
                    &tops,
                    &mut |parent, name, path, _| {
                        most_open = most_open.max(open_descriptors());
                        let st = fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW).unwrap();
                        if !is_dir(&st) {
                            files += 1;
                            return Ok(None);
                        }
                        dirs += 1;
                        deepest = path.to_vec();
                        Ok(Some(open_dir_at(parent, name).unwrap()))
                    },
                )
                .unwrap();
                assert_eq!((dirs, files), (3000, 30));
                assert_eq!(deepest, vec!["d"; 3000].join("/").into_bytes());
                assert!(
                    most_open <= MAX_OPEN_DIRS + 8,
                    "{most_open} descriptors open"
                );
                let root = open(tmp.path());
                remove_tree(&root, OsStr::new("d"), &tmp.path().join("d"), None).unwrap();
                assert_eq!(list_dir(&root, tmp.path()).unwrap().len(), 0);
            },
        );
    }

    /// A stack 40 deep over `tmp/a/a/...`, every folder entered.
    fn stack_down_40(tmp: &Path) -> DirStack {
        deep_chain(tmp, "a", 40);
        let mut stack = DirStack::new(open(tmp), tmp);
        for _ in 0..40 {
            let fd = open_dir_at(stack.top().unwrap(), OsStr::new("a")).unwrap();
            stack.push(OsStr::new("a"), fd).unwrap();
        }
        assert_eq!(stack.open, MAX_OPEN_DIRS);
        stack
    }

    #[test]
    fn going_up_past_a_moved_folder_walks_down_again_by_name() {
        let tmp = tempfile::tempdir().unwrap();
        let mut stack = stack_down_40(tmp.path());
        // Folder 21 leaves its parent: `..` of it is no longer folder 20.
        let twenty = tmp.path().join(["a"; 20].join("/"));
        std::fs::rename(twenty.join("a"), tmp.path().join("elsewhere")).unwrap();
        // Up one at a time, as a walk goes: inside the moved subtree `..` leads up.
        for depth in (20..40).rev() {
            stack.truncate(depth).unwrap();
        }
        assert!(is(
            stack.top().unwrap(),
            id_of(&nix::sys::stat::stat(&twenty).unwrap())
        ));
        stack.truncate(3).unwrap();
        assert_eq!(stack.shown(), tmp.path().join("a/a/a"));
    }

    #[test]
    fn going_up_into_a_replaced_or_symlinked_folder_stops() {
        for swap in ["replace", "symlink"] {
            let tmp = tempfile::tempdir().unwrap();
            let mut stack = stack_down_40(tmp.path());
            let twenty = tmp.path().join(["a"; 20].join("/"));
            std::fs::rename(twenty.join("a"), tmp.path().join("elsewhere")).unwrap();
            // And folder 5 is swapped for another one of the same name.
            let five = tmp.path().join(["a"; 5].join("/"));
            std::fs::rename(&five, tmp.path().join("old")).unwrap();
            if swap == "replace" {
                std::fs::create_dir_all(&twenty).unwrap();
            } else {
                std::os::unix::fs::symlink(tmp.path().join("old"), &five).unwrap();
            }
            for depth in (21..40).rev() {
                stack.truncate(depth).unwrap();
            }
            let err = stack.truncate(20).unwrap_err();
            assert!(matches!(err, Error::Changed(_)), "{swap}: {err}");
            assert!(err.to_string().contains("moved or replaced"), "{err}");
        }
    }

    #[test]
    fn removal_leaves_what_is_not_what_was_recorded_and_does_not_follow_links() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), b"x").unwrap();
        std::fs::create_dir_all(tmp.path().join("t/sub")).unwrap();
        std::os::unix::fs::symlink(&outside, tmp.path().join("t/sub/link")).unwrap();
        let root = open(tmp.path());
        let st = fstatat(&root, "t", AtFlags::AT_SYMLINK_NOFOLLOW).unwrap();
        let err = remove_tree(
            &root,
            OsStr::new("t"),
            &tmp.path().join("t"),
            Some((st.st_dev, st.st_ino + 1)),
        )
        .unwrap_err();
        assert!(matches!(err, Error::Changed(_)), "{err}");
        assert!(tmp.path().join("t/sub/link").exists());
        remove_tree(
            &root,
            OsStr::new("t"),
            &tmp.path().join("t"),
            Some(id_of(&st)),
        )
        .unwrap();
        assert!(!tmp.path().join("t").exists());
        assert!(outside.join("keep").exists());
        remove_tree(&root, OsStr::new("t"), &tmp.path().join("t"), None).unwrap();
    }
}
