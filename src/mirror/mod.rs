//! A second volume kept up to date with the unlocked one: only what changed is written,
//! and at every moment (interrupted, or the power cut) the backup is the previous one or
//! the new one, whole, as keepsake opens it; no file is ever half written under its real
//! name.
//!
//! How, in three steps:
//!
//! 1. **Compare.** Both trees are walked side by side: type, owner, mode, modification
//!    time, size, extended attributes and ACLs, link targets, hard links. Nothing is
//!    written. A file's data counts as unchanged if its size, time, owner and group are
//!    (the owner sets the other two at will) and its new mode or ACL opens it to nobody
//!    new ([`opens_up`]); its other facts are read from one handle on the file listed.
//! 2. **Stage.** Every new or changed file, symlink or new folder (whole) is copied into
//!    the work folder `.keepsake-sync` on the backup volume, with all its facts. A stop
//!    signal here removes the work folder: the backup is the previous one.
//! 3. **Commit and carry out** ([`plan`]). The plan (what is renamed into place, what is
//!    removed, which entries get new facts) is written beside the staged files; once all
//!    of it is on the disk (each staged file written back and waited for), the plan's
//!    rename is the commit. Then each step is one rename or one setting of facts, with no
//!    safe point between them: a signal waits until the last. Files that did not change
//!    are not touched at all: no byte and no inode of theirs is written. Folders touched
//!    get back the source's times last.
//!
//! A power cut while the plan is carried out (milliseconds, and one ext4 journal
//! transaction unless the journal fills or someone calls `sync` meanwhile) leaves the plan
//! committed: the next `keepsake backup --to-device` or `keepsake unlock` of that volume
//! carries it out before anything else ([`finish_interrupted`]; unlock on a mount only
//! root reaches, since the steps act on names in the live user's folders). A program that
//! does not know the plan (Tails' own unlock) would see, in that one case, some of the
//! steps done and the rest not, each file whole. Tails and live-boot never look at
//! `.keepsake-sync`.
//!
//! The source is a tree the live user can write while this runs. It is read by handle,
//! never through a symlink ([`crate::safefs`]); a file that changes while it is copied is
//! copied again, and named in the report if it never held still. The backup volume is
//! mounted where only root can reach it.

mod copy;
mod facts;
mod plan;
#[cfg(test)]
mod tests;

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{FileStat, Mode, fstat, fstatat, mkdirat};
use nix::unistd::{UnlinkatFlags, unlinkat};
use serde::Serialize;

use crate::context::IoError;
use crate::safefs::treewalk::{Id, id_of};
use crate::safefs::xattr::opens_up;
use crate::safefs::{self, Cursor, Dir, Entry};
use facts::Xattrs;
use plan::{Facts, Op};

/// Names earlier versions left behind when stopped (a folder being built, an old one
/// being removed); removed by the next run.
const EARLIER_LEFTOVER: &str = ".keepsake-sync-";
/// Folders of a volume that are never copied.
pub const NOT_DATA: &[&str] = &["lost+found"];
/// How many times a file that changes while it is copied is copied again.
const ATTEMPTS: usize = 3;

/// Why a backup to a second volume stopped. By meaning; the exit status of each is
/// chosen in `crate::error`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A stop signal arrived; `message` says what the backup volume holds.
    #[error("{message}")]
    Interrupted {
        signal: libc::c_int,
        message: String,
    },
    #[error("{0}")]
    Internal(String),
    /// The backup volume has too little room left to finish the backup once begun.
    #[error("{0}")]
    NoSpace(String),
    #[error(transparent)]
    Io(#[from] IoError),
    #[error(transparent)]
    Fs(#[from] safefs::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// This error with `note` added, of the same meaning.
    pub fn with_note(self, note: &str) -> Error {
        match self {
            Error::Interrupted { signal, message } => Error::Interrupted {
                signal,
                message: format!("{message}; {note}"),
            },
            Error::Internal(m) => Error::Internal(format!("{m}; {note}")),
            Error::NoSpace(m) => Error::NoSpace(format!("{m}; {note}")),
            Error::Io(e) => Error::Io(e.with_note(note)),
            Error::Fs(e) => Error::Fs(e.with_note(note)),
        }
    }
}

fn errno_at<'a>(doing: &'a str, path: &'a Path) -> impl FnOnce(Errno) -> Error + 'a {
    move |e| {
        Error::Io(IoError::new(
            format!("{doing} {}", path.display()),
            std::io::Error::from(e),
        ))
    }
}

/// What became of one top-level entry of the volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TopState {
    /// Everything in it matched: not touched.
    Unchanged,
    /// Something in it was copied, removed or given new facts.
    Updated,
    /// Not in the backup before.
    New,
    /// No longer in the volume: removed from the backup.
    Removed,
}

#[derive(Debug, Clone, Serialize)]
pub struct TopReport {
    pub name: String,
    pub state: TopState,
}

/// What a backup to a second volume did.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub tops: Vec<TopReport>,
    /// Regular files whose bytes were copied.
    pub files_copied: u64,
    /// Bytes of data copied (holes are not copied).
    pub bytes_copied: u64,
    /// Regular files that matched, left as they were.
    pub files_kept: u64,
    /// Files and symlinks whose owner, mode, times or attributes alone changed: set in
    /// place.
    pub facts_set: u64,
    /// Entries removed from the backup (a folder counts once).
    pub removed: u64,
    /// The steps of the plan a run stopped after its commit had left, carried out first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_interrupted: Option<usize>,
    /// Files that changed every time they were copied: the backup holds the last copy,
    /// which may mix two versions.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changed_while_copying: Vec<String>,
    /// Entries replaced, or whose folder went, between the comparison and their copy:
    /// nothing of them was copied or set; the backup keeps what it had, and the next
    /// backup brings them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changed_since_compared: Vec<String>,
    /// Entries of the backup whose owner, attributes, mode or times could not be set in
    /// place, each with why: their data is backed up, and the next backup tries again.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub facts_not_set: Vec<String>,
    /// Sockets, fifos and device nodes, which are not copied.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
    /// What an earlier run stopped before its commit had left, removed first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub leftovers_removed: Vec<String>,
}

impl Report {
    /// Names the source entry `shown` as changed between the comparison and its copy.
    fn changed_since(&mut self, shown: &Path) {
        self.changed_since_compared
            .push(shown.display().to_string());
    }
}

/// Progress as the work goes: a step's description, and the bytes copied so far.
pub trait Watch {
    fn step(&mut self, message: &str);
    fn bytes(&mut self, total: u64);
}

/// Carries out the plan an interrupted backup to this volume (`dest`, its root) had
/// committed, or removes what one stopped before its commit left. Says what it did.
pub fn finish_interrupted(dest: &Dir) -> Result<Option<String>> {
    Ok(match plan::recover(dest)? {
        plan::Left::Nothing => None,
        plan::Left::RolledBack => {
            Some("removed what a backup to this volume, stopped half way, had left".into())
        }
        plan::Left::Finished { steps, not_set } => Some(format!(
            "finished a backup to this volume that had been stopped half way ({steps} steps){}",
            not_set_note(&not_set)
        )),
    })
}

/// Brings `dest` (the root of the backup volume) up to date with the entries `tops` of
/// `source` (the root of the unlocked volume), and removes from `dest` every top-level
/// entry not in `tops` (but `lost+found`).
pub fn mirror(
    source: &Dir,
    dest: &Dir,
    tops: &[OsString],
    watch: &mut dyn Watch,
) -> Result<Report> {
    let mut report = Report::default();
    match plan::recover(dest)? {
        plan::Left::Nothing => {}
        plan::Left::RolledBack => report.leftovers_removed.push(plan::WORK.into()),
        // What it could not set, this run compares again, and sets or says.
        plan::Left::Finished { steps, .. } => report.finished_interrupted = Some(steps),
    }
    // What the backup held before: its top-level entries, and leftovers to remove.
    let mut had = Vec::new();
    for entry in safefs::list(dest)? {
        if entry
            .name
            .as_bytes()
            .starts_with(EARLIER_LEFTOVER.as_bytes())
        {
            remove_any(dest, &entry.name)?;
            report
                .leftovers_removed
                .push(entry.name.to_string_lossy().into_owned());
        } else if !is_ours_or_not_data(&entry.name) {
            had.push(entry.name);
        }
    }
    let mut m = Mirror {
        source,
        dest,
        tops,
        removes: Vec::new(),
        to_stage: Vec::new(),
        facts: Vec::new(),
        folders: HashMap::new(),
        touched: BTreeSet::new(),
        new_folders: BTreeSet::new(),
        groups: HashMap::new(),
        copies: HashMap::new(),
        staged: plan::Durable::default(),
        next_id: 0,
        report,
        watch,
    };
    m.watch.step("comparing the volume with the backup");
    m.compare().map_err(|e| e.with_note(KEPT))?;
    m.resolve_links();
    let nothing = m.removes.is_empty()
        && m.to_stage.is_empty()
        && m.facts.is_empty()
        && m.touched.iter().all(|t| t.as_os_str().is_empty());
    let ops = if nothing {
        None
    } else {
        let work = plan::make_work(dest)?;
        match m.stage_all(&work) {
            Ok(ops) => Some((work, ops)),
            Err(e) => {
                let _ = safefs::remove_tree(dest, Path::new(plan::WORK));
                return Err(e.with_note(KEPT));
            }
        }
    };
    m.report.tops = m.top_states(&had, ops.as_ref().map_or(&[][..], |(_, ops)| ops));
    if let Some((work, ops)) = ops {
        m.watch
            .step(&format!("putting {} changes in place", ops.len()));
        let staged = std::mem::take(&mut m.staged);
        if let Err(e) = plan::commit(dest, &work, &ops, staged) {
            let _ = safefs::remove_tree(dest, Path::new(plan::WORK));
            return Err(e.with_note(KEPT));
        }
        // Committed: no safe point until the plan is carried out.
        let not_set = plan::apply(dest, &work, &ops)
            .and_then(|not_set| plan::finish(dest, &work).map(|()| not_set))
            .map_err(|e| e.with_note(COMMITTED))?;
        // Only the files' steps count in facts_set; the folders' come with every change.
        let files_not_set = not_set
            .iter()
            .filter(|(path, _)| !m.touched.contains(path))
            .count() as u64;
        m.report.facts_set = m.report.facts_set.saturating_sub(files_not_set);
        m.report.facts_not_set = not_set.into_iter().map(|(_, why)| why).collect();
    }
    // The volume's root: owner, mode and ACL (Tails gives the live user its way in by
    // ACL), and the times the work folder's coming and going changed.
    let st = fstat(&source.fd).map_err(errno_at("reading", &source.path))?;
    let x = facts::read(source, OsStr::new("."))?;
    facts::apply(dest, OsStr::new("."), &st, &x)?;
    syncfs(dest)?;
    Ok(m.report)
}

/// What the message of a finished plan adds for the facts it could not set.
fn not_set_note(not_set: &[String]) -> String {
    if not_set.is_empty() {
        return String::new();
    }
    format!(
        "; the next backup tries again what could not be set: {}",
        not_set.join("; ")
    )
}

/// What a backup stopped before its commit says of the backup volume.
const KEPT: &str = "the backup volume keeps its previous backup, whole";
/// And one stopped after it.
const COMMITTED: &str = "the backup volume holds the plan of the new backup, which the next backup to it or unlock of it carries out";

impl crate::interrupt::Interrupted {
    fn into_error(self) -> Error {
        Error::Interrupted {
            signal: self.0,
            message: self.to_string(),
        }
    }
}

impl From<crate::interrupt::Interrupted> for Error {
    fn from(s: crate::interrupt::Interrupted) -> Error {
        s.into_error()
    }
}

/// Every entry at the root of a volume that a backup holds, sorted: all but lost+found and
/// keepsake's own names (`.keepsake-*`). An archive and a second stick hold the same.
pub fn tops(volume: &Dir) -> Result<Vec<OsString>> {
    Ok(safefs::list(volume)?
        .into_iter()
        .map(|e| e.name)
        .filter(|n| !is_ours_or_not_data(n))
        .collect())
}

fn is_ours_or_not_data(name: &OsStr) -> bool {
    NOT_DATA.iter().any(|n| OsStr::new(n) == name) || name.as_bytes().starts_with(b".keepsake-")
}

fn syncfs(dir: &Dir) -> Result<()> {
    // A folder's handle is O_PATH, which syncfs does not take.
    let fd = dir.open_readable()?;
    // SAFETY: syncfs on an open descriptor.
    if unsafe { libc::syncfs(fd.as_raw_fd()) } != 0 {
        return Err(Error::Io(IoError::new(
            format!("writing {} to its disk", dir.path.display()),
            std::io::Error::last_os_error(),
        )));
    }
    Ok(())
}

/// Removes `name` in `dir`, a folder with everything in it or anything else.
fn remove_any(dir: &Dir, name: &OsStr) -> Result<()> {
    let st = fstatat(&dir.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW)
        .map_err(errno_at("reading", &dir.path.join(name)))?;
    if safefs::treewalk::is_dir(&st) {
        safefs::remove_tree(dir, Path::new(name))?;
    } else {
        unlinkat(&dir.fd, name, UnlinkatFlags::NoRemoveDir)
            .map_err(errno_at("removing", &dir.path.join(name)))?;
    }
    Ok(())
}

/// The kind of an entry: folder, regular file, symlink (the `S_IFMT` bits).
fn kind(st: &FileStat) -> u32 {
    st.st_mode & libc::S_IFMT
}

/// A name of a source file with several names, and its copy in the backup then.
struct Name {
    path: PathBuf,
    /// `None` when the backup has no file there (a new name, or in a new folder).
    was: Option<Was>,
}

struct Was {
    id: Id,
    nlink: u64,
    /// Same size and modification time.
    same_data: bool,
    /// The facts to set if only they differ.
    facts: Option<Facts>,
}

/// One backup run: what the comparison found, and the report.
struct Mirror<'a> {
    source: &'a Dir,
    dest: &'a Dir,
    tops: &'a [OsString],
    /// Entries of the backup to remove ([`Op::Remove`]), in the order found.
    removes: Vec<Op>,
    /// Entries of the source to copy whole into the backup, in the order found, and
    /// whether each was a folder.
    to_stage: Vec<(PathBuf, bool)>,
    /// Files and symlinks whose facts alone changed.
    facts: Vec<(PathBuf, Facts)>,
    /// The facts of every folder of the source found in the backup too.
    folders: HashMap<PathBuf, Facts>,
    /// The folders that get the source's facts once everything in them is in place.
    touched: BTreeSet<PathBuf>,
    /// Folders of the source copied whole (not in the backup, or not as a folder).
    new_folders: BTreeSet<PathBuf>,
    /// Source files with several names, by inode.
    groups: HashMap<Id, (u64, Vec<Name>)>,
    /// Where the first copy of a source file with several names was staged (relative to
    /// the work folder): its other names are links to it.
    copies: HashMap<Id, PathBuf>,
    /// How the staged entries reach the disk before the commit.
    staged: plan::Durable,
    next_id: u64,
    report: Report,
    watch: &'a mut dyn Watch,
}

impl Mirror<'_> {
    /// Walks the source and the backup side by side, and notes every difference.
    fn compare(&mut self) -> Result<()> {
        let olds = RefCell::new(Cursor::new(self.dest));
        let me = RefCell::new(&mut *self);
        let source = me.borrow().source;
        safefs::walk(source, |src, rel, entries| -> Result<()> {
            crate::interrupt::check()?;
            let mut me = me.borrow_mut();
            if let Some(top) = rel.components().next()
                && !me.tops.iter().any(|t| t == top.as_os_str())
            {
                // Not part of the backup (lost+found).
                return Ok(());
            }
            if me.in_new_folder(rel) {
                for e in entries.iter().filter(|e| e.is_file() && e.st.st_nlink > 1) {
                    me.group_name(&e.st, rel.join(&e.name), None);
                }
                return Ok(());
            }
            let mut olds = olds.borrow_mut();
            let old = olds.open(rel).ok_or_else(|| {
                Error::Internal(format!(
                    "{} vanished from the backup while it was compared",
                    rel.display()
                ))
            })?;
            me.compare_folder(src, old, rel, entries)
        })
    }

    fn in_new_folder(&self, rel: &Path) -> bool {
        rel.ancestors().any(|a| self.new_folders.contains(a))
    }

    /// Compares the entries of the source folder `src` (at `rel`) with those of its copy
    /// `old`.
    fn compare_folder(
        &mut self,
        src: &Dir,
        old: &Dir,
        rel: &Path,
        entries: &[Entry],
    ) -> Result<()> {
        let at_root = rel.as_os_str().is_empty();
        let mut news: Vec<&Entry> = Vec::new();
        for e in entries {
            if at_root && !self.tops.contains(&e.name) {
                continue;
            }
            if copied_kind(e) {
                news.push(e);
            } else {
                self.report
                    .skipped
                    .push(src.path.join(&e.name).display().to_string());
            }
        }
        let olds: Vec<Entry> = safefs::list(old)?
            .into_iter()
            .filter(|o| !at_root || !is_ours_or_not_data(&o.name))
            .collect();
        let (mut n, mut o) = (news.iter().peekable(), olds.iter().peekable());
        loop {
            let (e, was) = match (n.peek(), o.peek()) {
                (None, None) => break,
                (Some(e), Some(w)) if e.name == w.name => (n.next(), o.next()),
                (Some(e), Some(w)) if e.name < w.name => (n.next(), None),
                (Some(_), None) => (n.next(), None),
                _ => (None, o.next()),
            };
            let path = rel.join(e.map_or_else(|| &was.expect("one side").name, |e| &e.name));
            match (e, was) {
                (None, Some(_)) => self.remove(path),
                (Some(e), None) => self.note_new(path, &e.st),
                (Some(e), Some(w)) => self.compare_entry(src, old, e, w, path)?,
                (None, None) => unreachable!("one side at least"),
            }
        }
        Ok(())
    }

    fn compare_entry(
        &mut self,
        src: &Dir,
        old: &Dir,
        e: &Entry,
        w: &Entry,
        path: PathBuf,
    ) -> Result<()> {
        if kind(&e.st) != kind(&w.st) {
            if e.is_dir() || w.is_dir() {
                self.remove(path.clone());
            }
            self.note_new(path, &e.st);
            return Ok(());
        }
        // The source entry's facts, whether its copy's differ, and whether they would open
        // the copy's data to anyone new ([`opens_up`]): `Ok(None)` if the entry is gone or
        // is no longer the one listed, as when the live user swaps another in.
        let read = || -> Result<Option<(Facts, bool, bool)>> {
            let Some((st, x)) = listed_facts(src, e)? else {
                return Ok(None);
            };
            let was = facts::read(old, &w.name)?;
            let differ = !facts::same_stat(&st, &w.st) || x != was;
            let opens = opens_up(w.st.st_mode, &was.0, st.st_mode, &x.0);
            Ok(Some((Facts::of(&st, x), differ, opens)))
        };
        let facts_differ =
            || read().map(|read| read.map(|(f, differ, opens)| (differ.then_some(f), opens)));
        if e.is_dir() {
            let Some((f, differ, _)) = read()? else {
                // Its entries are compared by name all the same; its facts wait for the
                // next backup rather than come from another folder than the one listed.
                self.report.changed_since(&src.path.join(&e.name));
                return Ok(());
            };
            if differ {
                self.touched.insert(path.clone());
            }
            self.folders.insert(path, f);
            return Ok(());
        }
        if e.is_symlink() {
            // A symlink has no ACL, and the live user cannot give its own any attribute
            // root would keep: read by name, its facts are its own or harmless.
            let Some((target, x)) = symlink_facts(src, &e.name, &e.st)? else {
                self.report.changed_since(&src.path.join(&e.name));
                return Ok(());
            };
            if target != link_target(old, &w.name)? {
                self.note_new(path, &e.st);
            } else if !facts::same_stat(&e.st, &w.st) || x != facts::read(old, &w.name)? {
                self.facts.push((path, Facts::of(&e.st, x)));
            }
            return Ok(());
        }
        let same_data = quick_check(&e.st) == quick_check(&w.st);
        if e.st.st_nlink > 1 {
            let facts = match same_data.then(facts_differ).transpose()? {
                Some(None) | Some(Some((_, true))) => {
                    // Not the file listed any more, or its data would reach someone new:
                    // it, and so its other names, is copied anew.
                    self.note_new(path, &e.st);
                    return Ok(());
                }
                Some(Some((facts, false))) => facts,
                None => None,
            };
            let was = Was {
                id: id_of(&w.st),
                nlink: w.st.st_nlink,
                same_data,
                facts,
            };
            self.group_name(&e.st, path, Some(was));
        } else if w.st.st_nlink > 1 || !same_data {
            // A copy with several names must not stand for a file with one.
            self.note_new(path, &e.st);
        } else {
            match facts_differ()? {
                None | Some((_, true)) => self.note_new(path, &e.st),
                Some((facts, false)) => {
                    if let Some(f) = facts {
                        self.facts.push((path, f));
                    }
                    self.report.files_kept += 1;
                }
            }
        }
        Ok(())
    }

    fn group_name(&mut self, st: &FileStat, path: PathBuf, was: Option<Was>) {
        self.groups
            .entry(id_of(st))
            .or_insert_with(|| (st.st_nlink, Vec::new()))
            .1
            .push(Name { path, was });
    }

    /// The names of a source file with several names stay as they are if they are the
    /// names of one copy with as many, and the same data; else each is copied anew (one
    /// copy, linked under each name).
    fn resolve_links(&mut self) {
        let groups: Vec<(u64, Vec<Name>)> = self.groups.drain().map(|(_, g)| g).collect();
        for (nlink, names) in groups {
            let first = names.first().and_then(|n| n.was.as_ref()).map(|w| w.id);
            let alike = names.len() as u64 == nlink
                && names.iter().all(|n| {
                    n.was
                        .as_ref()
                        .is_some_and(|w| Some(w.id) == first && w.nlink == nlink && w.same_data)
                });
            for name in names {
                let Some(was) = name.was else {
                    continue;
                };
                if alike {
                    self.report.files_kept += 1;
                    if let Some(f) = was.facts {
                        self.facts.push((name.path, f));
                    }
                } else {
                    self.to_stage.push((name.path.clone(), false));
                    self.touch_parent(&name.path);
                }
            }
        }
    }

    fn remove(&mut self, path: PathBuf) {
        self.touch_parent(&path);
        self.next_id += 1;
        self.removes.push(Op::Remove {
            id: self.next_id,
            path,
        });
    }

    /// Notes the source entry at `path` as one to copy whole.
    fn note_new(&mut self, path: PathBuf, st: &FileStat) {
        self.touch_parent(&path);
        let is_dir = safefs::treewalk::is_dir(st);
        if is_dir {
            self.new_folders.insert(path.clone());
        } else if kind(st) == libc::S_IFREG && st.st_nlink > 1 {
            // Its other names are found in the walk; they decide together.
            self.group_name(st, path.clone(), None);
        }
        self.to_stage.push((path, is_dir));
    }

    fn touch_parent(&mut self, path: &Path) {
        if let Some(parent) = path.parent() {
            self.touched.insert(parent.to_path_buf());
        }
    }

    /// Copies what is to be copied into the work folder, and returns the plan.
    fn stage_all(&mut self, work: &Dir) -> Result<Vec<Op>> {
        let mut puts = Vec::new();
        let mut not_staged = Vec::new();
        let to_stage = std::mem::take(&mut self.to_stage);
        for (path, was_dir) in to_stage {
            crate::interrupt::check()?;
            self.next_id += 1;
            let id = self.next_id;
            let name = plan::staged(id);
            if self.stage_one(work, &path, was_dir, &name)? {
                puts.push(Op::Put { id, path });
            } else {
                not_staged.push(path);
            }
        }
        let mut ops = std::mem::take(&mut self.removes);
        // An entry of the backup that was to make way for a copy not made (the source's
        // entry changed kind again, or went, since the comparison) stays: the backup keeps
        // what it had of it, as the report says, until the next backup.
        ops.retain(|op| match op {
            Op::Remove { path, .. } if not_staged.contains(path) => {
                let shown = self.source.path.join(path);
                let said = shown.display().to_string();
                if !self.report.changed_since_compared.contains(&said) {
                    self.report.changed_since(&shown);
                }
                false
            }
            _ => true,
        });
        self.report.removed = ops.len() as u64;
        ops.extend(puts);
        self.report.facts_set = self.facts.len() as u64;
        for (path, facts) in std::mem::take(&mut self.facts) {
            ops.push(Op::Facts { path, facts });
        }
        // Folders last, the deepest first: a rename into a folder sets its times.
        let mut folders: Vec<&PathBuf> = self
            .touched
            .iter()
            .filter(|p| !p.as_os_str().is_empty())
            .collect();
        folders.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for path in folders {
            if let Some(facts) = self.folders.get(path) {
                ops.push(Op::Facts {
                    path: path.clone(),
                    facts: facts.clone(),
                });
            }
        }
        Ok(ops)
    }

    /// Copies the source entry at `path` into the work folder as `name`: a folder whole.
    /// False when there is nothing to put in place: it vanished, or it is no longer the
    /// kind of entry it was compared as (named as changing).
    fn stage_one(&mut self, work: &Dir, path: &Path, was_dir: bool, name: &OsStr) -> Result<bool> {
        let (Some(parent), Some(file)) = (path.parent(), path.file_name()) else {
            return Err(Error::Internal(format!("{} has no name", path.display())));
        };
        let src = match safefs::open_beneath(self.source, parent, None) {
            Ok((src, _)) => src,
            // A folder on the way removed, or a symlink put in its place, since the
            // comparison, which can be minutes ago: as for an entry gone, nothing to copy.
            Err(safefs::Error::NotFound(_) | safefs::Error::Symlink(_)) => {
                self.report.changed_since(&self.source.path.join(path));
                return Ok(false);
            }
            Err(e) => return Err(e.into()),
        };
        let st = match fstatat(&src.fd, file, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => return Ok(false),
            Err(e) => return Err(errno_at("reading", &src.path.join(file))(e)),
        };
        if safefs::treewalk::is_dir(&st) != was_dir {
            self.report.changed_since(&src.path.join(file));
            return Ok(false);
        }
        if was_dir {
            self.copy_folder(&src, file, work, name)?;
        } else {
            self.copy_file(&src, file, &st, work, work, name, Path::new(name))?;
        }
        Ok(fstatat(&work.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW).is_ok())
    }

    /// Copies the file or symlink `file` of `src` (found as `st`) to `name` in `to`, at
    /// `staged` in the work folder `work`: a file with several names is a link to the
    /// first copy of it.
    #[allow(clippy::too_many_arguments)]
    fn copy_file(
        &mut self,
        src: &Dir,
        file: &OsStr,
        st: &FileStat,
        work: &Dir,
        to: &Dir,
        name: &OsStr,
        staged: &Path,
    ) -> Result<()> {
        let several = kind(st) == libc::S_IFREG && st.st_nlink > 1;
        if several && let Some(first) = self.copies.get(&id_of(st)) {
            return link(work, first, to, name);
        }
        let copied = self.copy_entry(src, file, to, name)?;
        // Keyed by the file copied, which the live user may have swapped in since the
        // listing: another name of the file listed is then copied from its own name.
        if several && let Some(copied) = copied {
            self.copies.insert(id_of(&copied), staged.to_path_buf());
        }
        Ok(())
    }

    /// Copies the source folder `file` of `src`, with everything in it, to `name` in the
    /// work folder `work`; each folder's facts set once everything in it is there.
    /// Nothing is staged when the folder went, or a symlink took its place, since it was
    /// seen (named as changing).
    fn copy_folder(&mut self, src: &Dir, file: &OsStr, work: &Dir, name: &OsStr) -> Result<()> {
        #[cfg(test)]
        race::while_copying(&src.path.join(file));
        let src_root = match safefs::open_beneath(src, Path::new(file), None) {
            Ok((src_root, _)) => src_root,
            Err(safefs::Error::NotFound(_) | safefs::Error::Symlink(_)) => {
                self.report.changed_since(&src.path.join(file));
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        mkdirat(&work.fd, name, Mode::from_bits_truncate(0o700))
            .map_err(errno_at("creating", &work.path.join(name)))?;
        let (built_root, _) = safefs::open_beneath(work, Path::new(name), None)?;
        let built = RefCell::new(Cursor::new(&built_root));
        let me = RefCell::new(&mut *self);
        // The folders made in the copy, and those the walk entered: one it never entered
        // (gone, or a symlink put in its place, before its turn) is taken out again.
        let made = RefCell::new(BTreeSet::new());
        let entered = RefCell::new(BTreeSet::new());
        safefs::walk_both(
            &src_root,
            |src, rel, entries| -> Result<()> {
                crate::interrupt::check()?;
                entered.borrow_mut().insert(rel.to_path_buf());
                let to = open_in(&built, rel)?;
                let mut me = me.borrow_mut();
                for e in entries {
                    if e.is_dir() {
                        mkdirat(&to.fd, e.name.as_os_str(), Mode::from_bits_truncate(0o700))
                            .map_err(errno_at("creating", &to.path.join(&e.name)))?;
                        made.borrow_mut().insert(rel.join(&e.name));
                    } else if copied_kind(e) {
                        let staged = Path::new(name).join(rel).join(&e.name);
                        me.copy_file(src, &e.name, &e.st, work, &to, &e.name, &staged)?;
                    } else {
                        me.report
                            .skipped
                            .push(src.path.join(&e.name).display().to_string());
                    }
                }
                Ok(())
            },
            |src, rel| -> Result<()> {
                let to = open_in(&built, rel)?;
                let entered = entered.borrow();
                let left_out = made
                    .borrow()
                    .iter()
                    .filter(|m| m.parent() == Some(rel) && !entered.contains(*m))
                    .filter_map(|m| m.file_name().map(OsStr::to_os_string))
                    .collect::<Vec<_>>();
                for name in left_out {
                    unlinkat(&to.fd, name.as_os_str(), UnlinkatFlags::RemoveDir)
                        .map_err(errno_at("removing", &to.path.join(&name)))?;
                    me.borrow_mut().report.changed_since(&src.path.join(&name));
                }
                let st = fstat(&src.fd).map_err(errno_at("reading", &src.path))?;
                let x = facts::read(src, OsStr::new("."))?;
                facts::apply(&to, OsStr::new("."), &st, &x)
            },
        )
    }

    /// What became of each top-level entry: `had` is what the backup held before.
    fn top_states(&self, had: &[OsString], ops: &[Op]) -> Vec<TopReport> {
        let touched = |top: &OsStr| {
            ops.iter().any(|op| {
                let (Op::Remove { path, .. } | Op::Put { path, .. } | Op::Facts { path, .. }) = op;
                path.components()
                    .next()
                    .is_some_and(|c| c.as_os_str() == top)
            })
        };
        let mut all: Vec<TopReport> = self
            .tops
            .iter()
            .map(|t| TopReport {
                name: t.to_string_lossy().into_owned(),
                state: if !had.contains(t) {
                    TopState::New
                } else if touched(t) {
                    TopState::Updated
                } else {
                    TopState::Unchanged
                },
            })
            .collect();
        all.extend(
            had.iter()
                .filter(|h| !self.tops.contains(h))
                .map(|h| TopReport {
                    name: h.to_string_lossy().into_owned(),
                    state: TopState::Removed,
                }),
        );
        all
    }

    /// Copies the file or symlink `name` of `from` to `to_name` in `to`, with all its
    /// facts. A file that changes while it is read is read again. Gives the stat of the
    /// regular file copied; `None` when nothing was (a symlink is copied as one).
    fn copy_entry(
        &mut self,
        from: &Dir,
        name: &OsStr,
        to: &Dir,
        to_name: &OsStr,
    ) -> Result<Option<FileStat>> {
        let shown = from.path.join(name);
        let st = match fstatat(&from.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            // Gone since it was listed: it is not in the new backup.
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(errno_at("reading", &shown)(e)),
        };
        if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
            let Some((target, x)) = symlink_facts(from, name, &st)? else {
                self.report.changed_since(&shown);
                return Ok(None);
            };
            nix::unistd::symlinkat(target.as_os_str(), &to.fd, to_name)
                .map_err(errno_at("creating", &to.path.join(to_name)))?;
            self.staged.symlink(&target);
            facts::apply(to, to_name, &st, &x)?;
            return Ok(None);
        }
        for attempt in 1..=ATTEMPTS {
            let Some(file) = open_source(from, name)? else {
                return Ok(None);
            };
            let before = fstat(&file).map_err(errno_at("reading", &shown))?;
            if before.st_mode & libc::S_IFMT != libc::S_IFREG {
                self.report.skipped.push(shown.display().to_string());
                return Ok(None);
            }
            if attempt > 1 {
                let _ = unlinkat(&to.fd, to_name, UnlinkatFlags::NoRemoveDir);
            }
            let out: File = openat(
                &to.fd,
                to_name,
                OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o600),
            )
            .map_err(errno_at("creating", &to.path.join(to_name)))?
            .into();
            let written = copy::copy_data(&file, &out, before.st_size as u64)
                .map_err(|e| Error::Io(IoError::new(format!("copying {}", shown.display()), e)))?;
            #[cfg(test)]
            race::while_copying(&shown);
            let after = fstat(&file).map_err(errno_at("reading", &shown))?;
            let still = before.st_size == after.st_size
                && before.st_mtime == after.st_mtime
                && before.st_mtime_nsec == after.st_mtime_nsec
                && before.st_ctime == after.st_ctime
                && before.st_ctime_nsec == after.st_ctime_nsec;
            if !still && attempt < ATTEMPTS {
                continue;
            }
            if !still {
                self.report
                    .changed_while_copying
                    .push(shown.display().to_string());
            }
            let x = facts::read_open(&file, &shown)?;
            self.staged.file(out);
            facts::apply(to, to_name, &after, &x)?;
            self.report.files_copied += 1;
            self.report.bytes_copied += written;
            self.watch.bytes(self.report.bytes_copied);
            return Ok(Some(after));
        }
        unreachable!("the last attempt returns")
    }
}

/// `rel` below the root of a cursor, as a handle of its own.
fn open_in(cursor: &RefCell<Cursor<'_>>, rel: &Path) -> Result<Dir> {
    let mut cursor = cursor.borrow_mut();
    let dir = cursor
        .open(rel)
        .ok_or_else(|| Error::Internal(format!("{} vanished from the backup", rel.display())))?;
    Ok(dir.try_clone()?)
}

/// Whether an entry is one a backup holds: a folder, a regular file or a symlink.
fn copied_kind(e: &Entry) -> bool {
    e.is_dir() || e.is_file() || e.is_symlink()
}

/// The source file `name`, opened for reading without following a symlink or blocking
/// on a fifo swapped in; `None` if it is gone, or is something else now (below).
fn open_source(dir: &Dir, name: &OsStr) -> Result<Option<File>> {
    match openat(
        &dir.fd,
        name,
        OFlag::O_RDONLY
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_CLOEXEC
            | OFlag::O_NOATIME,
        Mode::empty(),
    )
    .or_else(|e| match e {
        // O_NOATIME is for the owner or root only; root may still lack it on some mounts.
        Errno::EPERM => openat(
            &dir.fd,
            name,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        ),
        e => Err(e),
    }) {
        Ok(fd) => Ok(Some(fd.into())),
        Err(Errno::ENOENT) => Ok(None),
        // Swapped in since the listing by the live user, in a folder of its own: a symlink,
        // a socket (ENXIO); or a lease it holds on its file (EWOULDBLOCK). Not a file to
        // copy now, and no reason to fail the whole backup.
        Err(Errno::ELOOP | Errno::ENXIO | Errno::EWOULDBLOCK) => Ok(None),
        Err(e) => Err(errno_at("opening", &dir.path.join(name))(e)),
    }
}

/// What tells a file's data unchanged: size and modification time (rsync's quick check),
/// and owner and group, since a file's owner sets the other two at will: a file the live
/// user put in place of root's must not get root's old bytes.
fn quick_check(st: &FileStat) -> (i64, i64, i64, u32, u32) {
    (
        st.st_size,
        st.st_mtime,
        st.st_mtime_nsec,
        st.st_uid,
        st.st_gid,
    )
}

/// The owner, mode, times and attributes of the file or folder `e` of `src`, read from one
/// handle on it: `None` if it is gone, or is no longer the inode listed, or (a file) its
/// size, time or owner changed since, which the quick check was made on. Read by name, the
/// attributes could be another file's than the stat's: the live user, swapping its own file
/// and root's over and over (`RENAME_EXCHANGE`), could give root's copy its own ACL.
fn listed_facts(src: &Dir, e: &Entry) -> Result<Option<(FileStat, Xattrs)>> {
    let shown = src.path.join(&e.name);
    #[cfg(test)]
    race::while_comparing(&shown);
    let Some(handle) = open_source(src, &e.name)? else {
        return Ok(None);
    };
    let st = fstat(&handle).map_err(errno_at("reading", &shown))?;
    if id_of(&st) != id_of(&e.st) || (!e.is_dir() && quick_check(&st) != quick_check(&e.st)) {
        return Ok(None);
    }
    Ok(Some((st, facts::read_open(&handle, &shown)?)))
}

/// The target and attributes of the symlink `name` in `dir`, listed as `st`; `None` when
/// the live user removed it or put another entry in its place since (a file there gives
/// EINVAL to `readlinkat`; another symlink, another inode once both are read). Why: a
/// swap is churn, not an error that stops the backup (a browser's profile lock is such a
/// symlink, and a loop of `ln -s` and `rm` would stop every backup).
fn symlink_facts(dir: &Dir, name: &OsStr, st: &FileStat) -> Result<Option<(OsString, Xattrs)>> {
    let shown = || dir.path.join(name);
    #[cfg(test)]
    race::while_comparing(&shown());
    let target = match nix::fcntl::readlinkat(&dir.fd, name) {
        Ok(target) => target,
        Err(Errno::ENOENT | Errno::EINVAL) => return Ok(None),
        Err(e) => return Err(errno_at("reading the link", &shown())(e)),
    };
    let x = match crate::safefs::xattr::On::Entry(&dir.fd, name).read() {
        Ok((kept, _)) => Xattrs(kept),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => {
            return Err(Error::Io(IoError::new(
                format!("reading the attributes of {}", shown().display()),
                e,
            )));
        }
    };
    match fstatat(&dir.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(now) if kind(&now) == libc::S_IFLNK && id_of(&now) == id_of(st) => Ok(Some((target, x))),
        Ok(_) | Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(errno_at("reading", &shown())(e)),
    }
}

fn link_target(dir: &Dir, name: &OsStr) -> Result<OsString> {
    nix::fcntl::readlinkat(&dir.fd, name)
        .map_err(errno_at("reading the link", &dir.path.join(name)))
}

/// A hard link `to`/`to_name` to `from`/`rel`, where `rel` is a name in the folder `from`
/// or a path below it. Only used in the backup volume, which is mounted where only root
/// can reach it: nothing on the way is swapped. No flag: a symlink is linked as itself.
fn link(from: &Dir, rel: &Path, to: &Dir, to_name: &OsStr) -> Result<()> {
    let (a, b) = (cstr(rel.as_os_str())?, cstr(to_name)?);
    // SAFETY: two open descriptors and NUL-terminated names.
    let r = unsafe {
        libc::linkat(
            from.fd.as_raw_fd(),
            a.as_ptr(),
            to.fd.as_raw_fd(),
            b.as_ptr(),
            0,
        )
    };
    if r != 0 {
        return Err(Error::Io(IoError::new(
            format!(
                "linking {} to {}",
                to.path.join(to_name).display(),
                from.path.join(rel).display()
            ),
            std::io::Error::last_os_error(),
        )));
    }
    Ok(())
}

fn cstr(s: &OsStr) -> Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| Error::Internal("a name with a NUL byte".into()))
}

/// Hooks for tests to play the live user: while a file is being copied (called after its
/// bytes were read, before the copy is checked against the file), and while an entry is
/// compared (after it was listed, before its facts are read).
#[cfg(test)]
pub(crate) mod race {
    use std::cell::RefCell;
    use std::path::Path;

    type Change = Box<dyn FnMut(&Path)>;
    thread_local! {
        static COPYING: RefCell<Option<Change>> = RefCell::new(None);
        static COMPARING: RefCell<Option<Change>> = RefCell::new(None);
    }

    pub(crate) fn set(change: impl FnMut(&Path) + 'static) {
        COPYING.with(|c| *c.borrow_mut() = Some(Box::new(change)));
    }

    pub(crate) fn set_comparing(change: impl FnMut(&Path) + 'static) {
        COMPARING.with(|c| *c.borrow_mut() = Some(Box::new(change)));
    }

    pub(crate) fn clear() {
        COPYING.with(|c| *c.borrow_mut() = None);
        COMPARING.with(|c| *c.borrow_mut() = None);
    }

    fn call(hook: &'static std::thread::LocalKey<RefCell<Option<Change>>>, path: &Path) {
        hook.with(|c| {
            if let Some(change) = c.borrow_mut().as_mut() {
                change(path)
            }
        });
    }

    pub(super) fn while_copying(path: &Path) {
        call(&COPYING, path)
    }

    pub(super) fn while_comparing(path: &Path) {
        call(&COMPARING, path)
    }
}
