//! A second volume kept up to date with the unlocked one, a top-level folder at a time,
//! so that at every moment (interrupted, or the power cut) each top-level folder of the
//! backup is either the previous backup's or the new one, never a mix, and no file is
//! ever half written under its real name.
//!
//! How: a top-level folder whose files all match (type, owner, mode, modification time,
//! size, extended attributes and ACLs, link targets, hard links) is left alone. In one
//! that differs, the comparison finds the lowest folder that holds every difference: a
//! folder holds one when its entries differ from its copy's (a name more or fewer, or an
//! entry's facts), so a folder whose own facts changed (its mode, or its mtime when a
//! file was added or removed in it) takes its parent along. That folder alone is built
//! anew at the volume's root, under `.keepsake-sync-new.NAME`: files that did not change
//! are hard links to the backup's own copies (no byte is written for them), changed and
//! new ones are copied. Once it is complete and on the disk (`syncfs`), one
//! `renameat2(RENAME_EXCHANGE)` swaps it with the old folder, across folders of the same
//! filesystem, and the old one is removed. Everything outside it was found equal, so the
//! top-level folder is then the new one whole; when the lowest folder is the top-level
//! folder itself, it is the one swapped. A top-level file (persistence.conf) is replaced
//! by `rename` the same way. What an interrupted run leaves under `.keepsake-sync-*` is
//! removed by the next one; Tails and live-boot never look at those names.
//!
//! One fact is not carried by the exchange: it sets the mtime (and ctime) of the folder
//! that holds the swapped one. That folder was found equal to the source's and the build
//! does not touch it, so right after the exchange its atime and mtime from before are set
//! back by `futimens` on a handle opened before it, and it is `fsync`ed. No safe point
//! lies between the exchange and the `futimens`: a signal cannot stop the run there. The
//! one window is a power cut after a journal commit that holds the exchange but not the
//! `futimens` (a commit falling between the two calls) and before the commit the `fsync`
//! forces: the top-level folder is then the new one but for that folder's mtime, the
//! exchange's. The next run finds it differs from the source's and rebuilds one folder
//! higher (the whole top-level folder, if that was the holder), which repairs it. The
//! volume's root, whose mtime the exchange of a whole top-level folder sets, gets the
//! source's facts at the end of every run.
//!
//! The source is a tree the live user can write while this runs. It is read by handle,
//! never through a symlink ([`crate::safefs`]); a file that changes while it is copied is
//! copied again, and named in the report if it never held still. The backup volume is
//! mounted where only root can reach it.

mod copy;
mod facts;
#[cfg(test)]
mod tests;

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, RenameFlags, openat, renameat2};
use nix::sys::stat::{FileStat, Mode, fstat, fstatat, mkdirat};
use nix::unistd::{UnlinkatFlags, unlinkat};
use serde::Serialize;

use crate::context::IoError;
use crate::safefs::{self, Cursor, Dir, Entry};

/// Where a top-level folder is built before it replaces the old one.
const STAGING: &str = ".keepsake-sync-new.";
/// Where the old one goes while it is removed.
const OLD: &str = ".keepsake-sync-old.";
/// Every name this module leaves behind when stopped starts with this.
const LEFTOVER: &str = ".keepsake-sync-";
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
    /// Rebuilt beside the old one and swapped in.
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
    /// The one folder below an updated top-level folder that was rebuilt and swapped in
    /// (from the volume's root), when it was not the whole top-level folder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rebuilt: Option<String>,
}

/// What a backup to a second volume did.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub tops: Vec<TopReport>,
    /// Regular files whose bytes were copied.
    pub files_copied: u64,
    /// Bytes of data copied (holes are not copied).
    pub bytes_copied: u64,
    /// Regular files that matched, kept as they were (hard links in a rebuilt folder).
    pub files_kept: u64,
    /// Files that changed every time they were copied: the backup holds the last copy,
    /// which may mix two versions.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changed_while_copying: Vec<String>,
    /// Sockets, fifos and device nodes, which are not copied.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
    /// What an earlier, interrupted run had left, removed first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub leftovers_removed: Vec<String>,
}

/// Progress as the work goes: a step's description, and the bytes copied so far.
pub trait Watch {
    fn step(&mut self, message: &str);
    fn bytes(&mut self, total: u64);
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
    let mut m = Mirror {
        source,
        dest,
        linked: HashMap::new(),
        reused: HashMap::new(),
        building: None,
        report: Report::default(),
        watch,
    };
    m.remove_leftovers()?;
    for top in tops {
        if let Some(done) = m.top(top).map_err(|e| m.stopped(e, top))? {
            m.report.tops.push(done);
        }
    }
    for entry in safefs::list(dest)? {
        let name = entry.name.as_os_str();
        if tops.iter().any(|t| t == name) || is_ours_or_not_data(name) {
            continue;
        }
        crate::interrupt::check().map_err(|s| m.stopped(s.into_error(), name))?;
        m.watch.step(&format!(
            "removing {}, gone from the volume",
            name.to_string_lossy()
        ));
        let old = prefixed(OLD, name);
        renameat2(
            &dest.fd,
            name,
            &dest.fd,
            old.as_os_str(),
            RenameFlags::RENAME_NOREPLACE,
        )
        .map_err(errno_at("moving aside", &dest.path.join(name)))?;
        remove_any(dest, &old)?;
        m.report.tops.push(TopReport {
            name: name.to_string_lossy().into_owned(),
            state: TopState::Removed,
            rebuilt: None,
        });
    }
    // The volume's root: owner, mode and ACL (Tails gives the live user its way in by ACL).
    let st = fstat(&source.fd).map_err(errno_at("reading", &source.path))?;
    let x = facts::read(source, OsStr::new("."))?;
    facts::apply(dest, OsStr::new("."), &st, &x)?;
    syncfs(dest)?;
    Ok(m.report)
}

impl crate::interrupt::Interrupted {
    fn into_error(self) -> Error {
        Error::Interrupted {
            signal: self.0,
            message: self.to_string(),
        }
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

/// `a/b`, or `a` when `b` is empty (`Path::join` would add a slash).
fn joined(a: &Path, b: &Path) -> PathBuf {
    if b.as_os_str().is_empty() {
        a.to_path_buf()
    } else {
        a.join(b)
    }
}

/// The deepest folder both `a` and `b` are in or are (relative paths; empty: the root).
fn common_folder(a: &Path, b: &Path) -> PathBuf {
    a.components()
        .zip(b.components())
        .take_while(|(x, y)| x == y)
        .map(|(x, _)| x)
        .collect()
}

fn prefixed(prefix: &str, name: &OsStr) -> OsString {
    let mut s = OsString::from(prefix);
    s.push(name);
    s
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

/// The hard-link bookkeeping and the report of one run.
struct Mirror<'a> {
    source: &'a Dir,
    dest: &'a Dir,
    /// A source inode with several names: where its first name is in the backup (the
    /// top-level name, and the path below it).
    linked: HashMap<safefs::treewalk::Id, (OsString, PathBuf)>,
    /// An inode of the old backup linked into a rebuilt folder, and the source inode it
    /// stands for: it must not stand for two (two files the source keeps apart).
    reused: HashMap<safefs::treewalk::Id, safefs::treewalk::Id>,
    /// The top-level name whose folder (below it; empty: all of it) is being built under
    /// [`STAGING`].
    building: Option<(OsString, PathBuf)>,
    report: Report,
    watch: &'a mut dyn Watch,
}

/// Why a comparison stopped early.
enum Compared {
    Differs,
    Failed(Error),
}

impl<E: Into<Error>> From<E> for Compared {
    fn from(e: E) -> Compared {
        Compared::Failed(e.into())
    }
}

impl From<crate::interrupt::Interrupted> for Error {
    fn from(s: crate::interrupt::Interrupted) -> Error {
        s.into_error()
    }
}

impl Mirror<'_> {
    fn remove_leftovers(&mut self) -> Result<()> {
        for entry in safefs::list(self.dest)? {
            if entry.name.as_bytes().starts_with(LEFTOVER.as_bytes()) {
                remove_any(self.dest, &entry.name)?;
                self.report
                    .leftovers_removed
                    .push(entry.name.to_string_lossy().into_owned());
            }
        }
        Ok(())
    }

    /// The error of a run stopped at top-level entry `top`, saying what the backup holds;
    /// what was being built is removed.
    fn stopped(&mut self, e: Error, top: &OsStr) -> Error {
        let staging = prefixed(STAGING, top);
        if fstatat(
            &self.dest.fd,
            staging.as_os_str(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .is_ok()
        {
            let _ = remove_any(self.dest, &staging);
        }
        self.building = None;
        let done: Vec<String> = self.report.tops.iter().map(|t| t.name.clone()).collect();
        let note = format!(
            "the backup volume keeps its previous copy of {}{}",
            top.to_string_lossy(),
            if done.is_empty() {
                String::new()
            } else {
                format!(" and holds the new one of {}", done.join(", "))
            }
        );
        match e {
            Error::Interrupted { signal, message } => Error::Interrupted {
                signal,
                message: format!("{message}; {note}"),
            },
            e => e.with_note(&note),
        }
    }

    /// Brings one top-level entry up to date; `None` when it is neither a folder, a file
    /// nor a symlink (or vanished), and is left out.
    fn top(&mut self, name: &OsStr) -> Result<Option<TopReport>> {
        crate::interrupt::check()?;
        let shown = self.source.path.join(name);
        let src = match fstatat(&self.source.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(errno_at("reading", &shown)(e)),
        };
        let old = match fstatat(&self.dest.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => Some(st),
            Err(Errno::ENOENT) => None,
            Err(e) => return Err(errno_at("reading", &self.dest.path.join(name))(e)),
        };
        let kind = src.st_mode & libc::S_IFMT;
        if ![libc::S_IFDIR, libc::S_IFREG, libc::S_IFLNK].contains(&kind) {
            self.report.skipped.push(shown.display().to_string());
            return Ok(None);
        }
        let report = |state, rebuilt: Option<&Path>| {
            Some(TopReport {
                name: name.to_string_lossy().into_owned(),
                state,
                rebuilt: rebuilt.map(|f| joined(Path::new(name), f).display().to_string()),
            })
        };
        let folder = match &old {
            Some(old) => match self.lowest_change(name, &src, old)? {
                Some(folder) => folder,
                None => {
                    self.watch
                        .step(&format!("{}: unchanged", name.to_string_lossy()));
                    return Ok(report(TopState::Unchanged, None));
                }
            },
            None => PathBuf::new(),
        };
        self.watch.step(&format!(
            "{}: {}",
            joined(Path::new(name), &folder).display(),
            if old.is_some() { "updating" } else { "copying" }
        ));
        let staging = prefixed(STAGING, name);
        self.building = Some((name.to_os_string(), folder.clone()));
        if kind == libc::S_IFDIR {
            self.build_folder(
                name,
                &folder,
                &staging,
                old.as_ref().is_some_and(safefs::treewalk::is_dir),
            )?;
        } else {
            self.copy_entry(self.source, name, self.dest, &staging)?;
        }
        // Everything built is on the disk before the name points at it.
        syncfs(self.dest)?;
        crate::interrupt::check()?;
        if old.is_none() {
            renameat2(
                &self.dest.fd,
                staging.as_os_str(),
                &self.dest.fd,
                name,
                RenameFlags::RENAME_NOREPLACE,
            )
            .map_err(errno_at("putting in place", &self.dest.path.join(name)))?;
            self.building = None;
            return Ok(report(TopState::New, None));
        }
        self.swap_in(name, &folder, &staging)?;
        Ok(report(
            TopState::Updated,
            (!folder.as_os_str().is_empty()).then_some(folder.as_path()),
        ))
    }

    /// Swaps the copy built under `staging` with the folder `folder` of the top-level entry
    /// `top` (the entry itself when empty), in one `RENAME_EXCHANGE`, and removes the old
    /// copy. Below the top-level, the exchange sets the mtime of the folder that holds the
    /// swapped one: it gets back the times it had, which the comparison found to be the
    /// source's (the build does not touch it), through a handle opened before the exchange,
    /// with no safe point between the two calls, and an fsync after them. (The volume's root
    /// gets the source's times at the end of the run.)
    fn swap_in(&mut self, top: &OsStr, folder: &Path, staging: &OsStr) -> Result<()> {
        let at = joined(Path::new(top), folder);
        let (Some(parent), Some(name)) = (at.parent(), at.file_name()) else {
            return Err(Error::Internal(format!("{} has no name", at.display())));
        };
        let shown = self.dest.path.join(&at);
        let (holder, _) = safefs::open_beneath(self.dest, parent, None)?;
        let times = if folder.as_os_str().is_empty() {
            None
        } else {
            let fd = holder.open_readable()?;
            let st = fstat(&fd).map_err(errno_at("reading", &holder.path))?;
            Some((fd, st))
        };
        renameat2(
            &self.dest.fd,
            staging,
            &holder.fd,
            name,
            RenameFlags::RENAME_EXCHANGE,
        )
        .map_err(errno_at("putting in place", &shown))?;
        if let Some((fd, st)) = times {
            use nix::sys::time::TimeSpec;
            nix::sys::stat::futimens(
                &fd,
                &TimeSpec::new(st.st_atime, st.st_atime_nsec),
                &TimeSpec::new(st.st_mtime, st.st_mtime_nsec),
            )
            .map_err(errno_at("setting the times of", &holder.path))?;
            nix::unistd::fsync(&fd).map_err(errno_at("writing", &holder.path))?;
        }
        self.building = None;
        // The old copy is now under the staging name: gone by the next run at worst.
        remove_any(self.dest, staging)
    }

    /// Where the top-level entry `name` differs from its copy in the backup (`old`): `None`
    /// if nowhere, else the lowest folder below it that holds every difference (empty: the
    /// entry itself). Hard links found alike outside that folder are remembered.
    fn lowest_change(
        &mut self,
        name: &OsStr,
        src: &FileStat,
        old: &FileStat,
    ) -> Result<Option<PathBuf>> {
        let whole = Some(PathBuf::new());
        if !facts::same_stat(src, old)
            || facts::read(self.source, name)? != facts::read(self.dest, name)?
        {
            return Ok(whole);
        }
        match src.st_mode & libc::S_IFMT {
            libc::S_IFLNK => {
                let same = link_target(self.source, name)? == link_target(self.dest, name)?;
                Ok(whole.filter(|_| !same))
            }
            libc::S_IFREG if self.linked_alike(src, old) => {
                self.remember_link(src, name, PathBuf::new());
                Ok(None)
            }
            libc::S_IFREG => Ok(whole),
            _ => self.lowest_change_in(name),
        }
    }

    /// Whether a regular file of the source (`src`) and its copy (`old`) are linked
    /// alike: a source inode with several names must be the same copy under each, and
    /// one copy must not stand for two source files.
    fn linked_alike(&mut self, src: &FileStat, old: &FileStat) -> bool {
        use safefs::treewalk::id_of;
        if src.st_nlink != old.st_nlink {
            return false;
        }
        if src.st_nlink == 1 {
            return true;
        }
        match self.reused.get(&id_of(old)) {
            Some(s) if *s != id_of(src) => return false,
            _ => {}
        }
        self.reused.insert(id_of(old), id_of(src));
        true
    }

    /// Records `at` (below the top-level entry `top`) as where the source file `st` is in
    /// the backup, if it has several names and none was recorded yet.
    fn remember_link(&mut self, st: &FileStat, top: &OsStr, at: PathBuf) {
        if st.st_nlink > 1 {
            self.linked
                .entry(safefs::treewalk::id_of(st))
                .or_insert_with(|| (top.to_os_string(), at));
        }
    }

    /// The lowest folder below the top-level folder `top` (relative to it) whose copy holds
    /// every difference from the source, `None` if there is none. A folder holds a
    /// difference when its entries differ from its copy's: a name more or fewer, or an
    /// entry's facts, a subfolder's own included (so a folder whose own facts differ takes
    /// its parent along). Nothing below the lowest folder found so far can move it, and is
    /// not compared; at the top-level folder itself, the comparison stops.
    fn lowest_change_in(&mut self, top: &OsStr) -> Result<Option<PathBuf>> {
        let (src_root, _) = safefs::open_beneath(self.source, Path::new(top), None)?;
        let (old_root, _) = safefs::open_beneath(self.dest, Path::new(top), None)?;
        let olds = RefCell::new(Cursor::new(&old_root));
        let mut lowest: Option<PathBuf> = None;
        // Files with several names found alike, in the order met.
        let mut links = Vec::new();
        let walked = safefs::walk(&src_root, |src, rel, entries| -> Result<(), Compared> {
            crate::interrupt::check().map_err(Error::from)?;
            if lowest.as_deref().is_some_and(|l| rel.starts_with(l)) {
                return Ok(());
            }
            let at = match olds.borrow_mut().open(rel) {
                Some(old) if self.same_entries(src, old, rel, entries, &mut links)? => {
                    return Ok(());
                }
                Some(_) => rel,
                None => rel.parent().unwrap_or(rel),
            };
            let l = match lowest.take() {
                Some(l) => common_folder(&l, at),
                None => at.to_path_buf(),
            };
            if l.as_os_str().is_empty() {
                return Err(Compared::Differs);
            }
            lowest = Some(l);
            Ok(())
        });
        let lowest = match walked {
            Ok(()) => lowest,
            Err(Compared::Differs) => Some(PathBuf::new()),
            Err(Compared::Failed(e)) => return Err(e),
        };
        // Those inside the folder rebuilt are remembered where the build puts them.
        for (st, at) in links {
            if lowest.as_ref().is_none_or(|l| !at.starts_with(l)) {
                self.remember_link(&st, top, at);
            }
        }
        Ok(lowest)
    }

    /// Whether the entries of the source folder `src` (at `rel`, listed as `entries`) are
    /// those of its copy `old`, each with the same facts. Files with several names are
    /// added to `links`.
    fn same_entries(
        &mut self,
        src: &Dir,
        old: &Dir,
        rel: &Path,
        entries: &[Entry],
        links: &mut Vec<(FileStat, PathBuf)>,
    ) -> Result<bool> {
        let kept: Vec<&Entry> = entries.iter().filter(|e| copied_kind(e)).collect();
        let old_entries = safefs::list(old)?;
        if kept.len() != old_entries.len() {
            return Ok(false);
        }
        for (e, o) in kept.into_iter().zip(&old_entries) {
            if e.name != o.name
                || !facts::same_stat(&e.st, &o.st)
                || facts::read(src, &e.name)? != facts::read(old, &o.name)?
            {
                return Ok(false);
            }
            if e.is_symlink() && link_target(src, &e.name)? != link_target(old, &o.name)? {
                return Ok(false);
            }
            if e.is_file() && !self.linked_alike(&e.st, &o.st) {
                return Ok(false);
            }
            if e.is_file() && e.st.st_nlink > 1 {
                links.push((e.st, rel.join(&e.name)));
            }
        }
        Ok(true)
    }

    /// Builds the folder `folder` of the top-level folder `top` of the source (all of it
    /// when empty) under `staging` in the backup: subfolders made, files that match the old
    /// backup's (`old_is_folder`) linked, the others copied, and each folder's facts set
    /// once everything in it is there.
    fn build_folder(
        &mut self,
        top: &OsStr,
        folder: &Path,
        staging: &OsStr,
        old_is_folder: bool,
    ) -> Result<()> {
        let at = joined(Path::new(top), folder);
        mkdirat(&self.dest.fd, staging, Mode::from_bits_truncate(0o700))
            .map_err(errno_at("creating", &self.dest.path.join(staging)))?;
        let (built_root, _) = safefs::open_beneath(self.dest, Path::new(staging), None)?;
        let (src_root, _) = safefs::open_beneath(self.source, &at, None)?;
        let old_root = if old_is_folder {
            Some(safefs::open_beneath(self.dest, &at, None)?.0)
        } else {
            None
        };
        let built = RefCell::new(Cursor::new(&built_root));
        let olds = RefCell::new(old_root.as_ref().map(Cursor::new));
        let me = RefCell::new(&mut *self);
        safefs::walk_both(
            &src_root,
            |src, rel, entries| -> Result<()> {
                crate::interrupt::check()?;
                let to = open_in(&built, rel)?;
                let old = olds
                    .borrow_mut()
                    .as_mut()
                    .and_then(|c| c.open(rel).and_then(|d| d.try_clone().ok()));
                let mut me = me.borrow_mut();
                for e in entries {
                    me.build_entry(top, &joined(folder, rel), src, e, &to, old.as_ref())?;
                }
                Ok(())
            },
            |src, rel| -> Result<()> {
                let to = open_in(&built, rel)?;
                let st = fstat(&src.fd).map_err(errno_at("reading", &src.path))?;
                let x = facts::read(src, OsStr::new("."))?;
                facts::apply(&to, OsStr::new("."), &st, &x)
            },
        )
    }

    fn build_entry(
        &mut self,
        top: &OsStr,
        rel: &Path,
        src: &Dir,
        e: &Entry,
        to: &Dir,
        old: Option<&Dir>,
    ) -> Result<()> {
        use safefs::treewalk::id_of;
        let name = e.name.as_os_str();
        if e.is_dir() {
            return mkdirat(&to.fd, name, Mode::from_bits_truncate(0o700))
                .map_err(errno_at("creating", &to.path.join(name)));
        }
        if e.is_symlink() {
            return self.copy_entry(src, name, to, name);
        }
        if !e.is_file() {
            self.report
                .skipped
                .push(src.path.join(name).display().to_string());
            return Ok(());
        }
        if e.st.st_nlink > 1
            && let Some((first_top, first)) = self.linked.get(&id_of(&e.st)).cloned()
        {
            let from = self.current_path(&first_top, &first);
            link(self.dest, &from, to, name)?;
            self.report.files_kept += 1;
            return Ok(());
        }
        let kept = match old {
            Some(old) => self.keep_old(src, e, old)?,
            None => false,
        };
        if kept {
            link(
                old.expect("kept from the old folder"),
                Path::new(name),
                to,
                name,
            )?;
            self.report.files_kept += 1;
        } else {
            self.copy_entry(src, name, to, name)?;
        }
        self.remember_link(&e.st, top, rel.join(name));
        Ok(())
    }

    /// Whether the old backup's copy of the regular file `e` matches it and may stand
    /// for it in the rebuilt folder.
    fn keep_old(&mut self, src: &Dir, e: &Entry, old: &Dir) -> Result<bool> {
        use safefs::treewalk::id_of;
        let o = match fstatat(&old.fd, e.name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(o) => o,
            Err(_) => return Ok(false),
        };
        if !facts::same_stat(&e.st, &o) || facts::read(src, &e.name)? != facts::read(old, &e.name)?
        {
            return Ok(false);
        }
        match self.reused.get(&id_of(&o)) {
            Some(s) if *s != id_of(&e.st) => Ok(false),
            _ => {
                self.reused.insert(id_of(&o), id_of(&e.st));
                Ok(true)
            }
        }
    }

    /// Where the first name of a linked inode is now, relative to the backup's root.
    fn current_path(&self, top: &OsStr, rel: &Path) -> PathBuf {
        if let Some((building, folder)) = &self.building
            && building == top
            && let Ok(inside) = rel.strip_prefix(folder)
        {
            return joined(Path::new(&prefixed(STAGING, top)), inside);
        }
        joined(Path::new(top), rel)
    }

    /// Copies the file or symlink `name` of `from` to `to_name` in `to`, with all its
    /// facts. A file that changes while it is read is read again.
    fn copy_entry(&mut self, from: &Dir, name: &OsStr, to: &Dir, to_name: &OsStr) -> Result<()> {
        let shown = from.path.join(name);
        let st = match fstatat(&from.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            // Gone since it was listed: it is not in the new backup.
            Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(errno_at("reading", &shown)(e)),
        };
        if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
            let target = link_target(from, name)?;
            nix::unistd::symlinkat(target.as_os_str(), &to.fd, to_name)
                .map_err(errno_at("creating", &to.path.join(to_name)))?;
            let x = facts::read(from, name)?;
            return facts::apply(to, to_name, &st, &x);
        }
        for attempt in 1..=ATTEMPTS {
            let Some(file) = open_source(from, name)? else {
                return Ok(());
            };
            let before = fstat(&file).map_err(errno_at("reading", &shown))?;
            if before.st_mode & libc::S_IFMT != libc::S_IFREG {
                self.report.skipped.push(shown.display().to_string());
                return Ok(());
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
            drop(out);
            facts::apply(to, to_name, &after, &x)?;
            self.report.files_copied += 1;
            self.report.bytes_copied += written;
            self.watch.bytes(self.report.bytes_copied);
            return Ok(());
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
/// on a fifo swapped in; `None` if it is gone.
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
        // A symlink swapped in since the listing: not a file to copy now.
        Err(Errno::ELOOP) => Ok(None),
        Err(e) => Err(errno_at("opening", &dir.path.join(name))(e)),
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

/// A hook for tests to play the live user while a file is being copied: called after its
/// bytes were read, before the copy is checked against the file.
#[cfg(test)]
pub(crate) mod race {
    use std::cell::RefCell;
    use std::path::Path;

    type Change = Box<dyn FnMut(&Path)>;
    thread_local! {
        static CHANGE: RefCell<Option<Change>> = RefCell::new(None);
    }

    pub(crate) fn set(change: impl FnMut(&Path) + 'static) {
        CHANGE.with(|c| *c.borrow_mut() = Some(Box::new(change)));
    }

    pub(crate) fn clear() {
        CHANGE.with(|c| *c.borrow_mut() = None);
    }

    pub(super) fn while_copying(path: &Path) {
        CHANGE.with(|c| {
            if let Some(change) = c.borrow_mut().as_mut() {
                change(path)
            }
        });
    }
}
