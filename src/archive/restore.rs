//! Restoring an extracted archive into the volume: the archive is authenticated and
//! extracted into a staging folder of root's first, and only then moved into place, as one
//! transaction of renames between open folders that is undone, newest first, on any
//! failure. Nothing is resolved by path twice: the live user owns the feature folders and
//! can swap, rename or mount in them at any moment (the threat model), so every step works
//! on descriptors and checks, on the side only root can change, that what it moves is
//! what it meant to move.

use std::ffi::{OsStr, OsString};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, RenameFlags, renameat2};
use nix::sys::stat::{FileStat, Mode, fchmod, fstat, fstatat, futimens};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, unlinkat};

use super::tree::TreeStats;
use super::{Error, Result};
use crate::context::{Context, IoError, at};
use crate::host::mounts::{self, Mount};
use crate::safefs;
use crate::safefs::treewalk::{self, Id, id_of, is_dir, list_dir, open_dir_at};

/// What a restore is asked for.
pub(crate) struct Request<'a> {
    /// The volume folders to restore; `None` for everything in the archive.
    pub folders: Option<&'a [String]>,
    /// The top-level names that are configuration files: restored only with everything.
    pub config_files: &'a [&'a str],
    /// Whether folders that hold data may be replaced.
    pub overwrite: bool,
    /// Only authenticate the archive and say what would be restored.
    pub dry_run: bool,
    /// Paths (below the volume's root) to restore alone, each into its place; `None`
    /// for whole folders (`folders`).
    pub paths: Option<&'a [String]>,
}

/// What a restore did, or would do.
pub(crate) struct Restored {
    pub contents: TreeStats,
    pub folders: Vec<String>,
    pub configs: Vec<String>,
    /// The folders that held data: replaced, or (dry run) in need of `overwrite`.
    pub replaced: Vec<String>,
    /// What earlier, killed restores left and this one removed or kept, and what this
    /// one, complete, could not clean up afterwards.
    pub leftovers: Vec<String>,
}

/// Restores an archive into `volume`: `extract` authenticates all of it (a format-1
/// archive, or a format-2 one with the archives of its chain it needs) and, given a
/// folder, extracts it there. Unless it is a dry run, that is a staging folder of root's,
/// before anything in the volume changes; then the folders (or `paths`) move into place
/// as one transaction (see [`Transaction`]). On an error the staging folder goes, and the
/// volume is as it was (or the error says what is where).
pub(crate) fn restore(
    volume: &safefs::Dir,
    extract: &mut dyn FnMut(Option<&Path>) -> Result<TreeStats>,
    request: &Request,
) -> Result<Restored> {
    let (staging, cleaned) = if request.dry_run {
        (None, Cleaned::default())
    } else {
        let cleaned = remove_leftovers(volume)?;
        (Some(scratch(volume, ScratchKind::Staging)?), cleaned)
    };
    let contents = extract(staging.as_ref().map(|s| s.path())).map_err(|e| match e {
        // The staging folder goes with `staging`, on the way out.
        e @ Error::Interrupted { .. } => {
            e.with_note("nothing was changed: what was extracted so far is removed")
        }
        e => e,
    })?;
    if let Some(paths) = request.paths {
        return restore_paths(volume, staging.as_ref(), cleaned, contents, paths, request);
    }
    let selected: Vec<String> = match request.folders {
        None => contents.entries.clone(),
        Some(folders) => {
            if let Some(missing) = folders.iter().find(|f| !contents.entries.contains(f)) {
                return Err(Error::Missing(format!(
                    "the archive holds no folder {missing}; it holds {}; nothing was changed",
                    contents.entries.join(", ")
                )));
            }
            folders.to_vec()
        }
    };
    let (configs, folders): (Vec<String>, Vec<String>) = selected
        .into_iter()
        .partition(|t| request.config_files.contains(&t.as_str()));
    // Config files come back only with a full restore.
    let configs = if request.folders.is_none() {
        configs
    } else {
        vec![]
    };
    let mut replaced: Vec<String> = Vec::new();
    for folder in &folders {
        if holds_data(volume, folder)? {
            replaced.push(folder.clone());
        }
    }
    if !replaced.is_empty() && !request.overwrite && !request.dry_run {
        return Err(Error::InTheWay(format!(
            "{} already hold data; restore with --overwrite to replace it (nothing was changed)",
            replaced.join(", ")
        )));
    }
    let mut leftovers: Vec<String> = cleaned.removed.into_iter().chain(cleaned.kept).collect();
    if let Some(staging) = &staging {
        refuse_mounts_inside(volume, &folders)?;
        leftovers.extend(apply(volume, staging, &folders, &configs)?);
    }
    Ok(Restored {
        contents,
        folders,
        configs,
        replaced,
        leftovers,
    })
}

/// [`restore`] of single paths, extracted (with the folders above them) into `staging`:
/// each moves into its place in the volume, whose folder must be there already; one that
/// exists there is only replaced with `overwrite` (moved to the trash, as a folder's
/// contents are). A top-level path is a whole folder, restored as [`restore`] restores
/// one.
fn restore_paths(
    volume: &safefs::Dir,
    staging: Option<&Scratch>,
    cleaned: Cleaned,
    contents: TreeStats,
    paths: &[String],
    request: &Request,
) -> Result<Restored> {
    let mut replaced = Vec::new();
    for path in paths {
        let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
        let dir = if parent.is_empty() {
            None
        } else {
            let (dir, _) = safefs::open_beneath(volume, Path::new(parent), None).map_err(|e| {
                Error::Missing(format!(
                    "{} cannot take {path}: {e}; restore the folder above it instead (nothing was changed)",
                    volume.path.join(parent).display()
                ))
            })?;
            Some(dir)
        };
        let exists = match &dir {
            None => holds_data(volume, name)?,
            Some(dir) => match fstatat(&dir.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Err(Errno::ENOENT) => false,
                Err(e) => {
                    return Err(e)
                        .context(at("reading", &volume.path.join(path)))
                        .map_err(Error::from);
                }
                Ok(_) => true,
            },
        };
        if exists {
            replaced.push(path.clone());
        }
    }
    if !replaced.is_empty() && !request.overwrite && !request.dry_run {
        return Err(Error::InTheWay(format!(
            "{} already exist in the volume; restore with --overwrite to replace them (nothing was changed)",
            replaced.join(", ")
        )));
    }
    let mut leftovers: Vec<String> = cleaned.removed.into_iter().chain(cleaned.kept).collect();
    if let Some(staging) = staging {
        refuse_mounts_inside(volume, paths)?;
        let mut transaction = Transaction::new(volume, staging)?;
        match transaction.run_paths(paths) {
            Ok(()) => leftovers.extend(transaction.commit()),
            Err(e) => return Err(transaction.roll_back(e)),
        }
    }
    Ok(Restored {
        contents,
        folders: paths.to_vec(),
        configs: vec![],
        replaced,
        leftovers,
    })
}

/// An open folder a restore moves entries out of or into, and its path for messages.
struct Place {
    fd: OwnedFd,
    shown: PathBuf,
    kind: PlaceKind,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum PlaceKind {
    /// The top of the volume: root's, and the live user may not write it.
    Volume,
    /// A feature folder: the live user owns it and can rename, swap and mount (FUSE) in it
    /// at any moment, so a name read there says nothing about what it names a moment later.
    Feature,
    /// In keepsake's staging folder (root's, 0700).
    Staging,
    /// In keepsake's trash folder (root's, 0700).
    Trash,
}

impl Place {
    /// Whether only root can change which entry a name in it names.
    fn private(&self) -> bool {
        self.kind != PlaceKind::Feature
    }

    /// Opens the folder `rel` (components separated by `/`) below `base`, one component
    /// at a time, never through a symlink.
    fn open_path(base: &Place, rel: &str, kind: PlaceKind) -> Result<Place> {
        let mut components = rel.split('/');
        let first = components.next().unwrap_or_default();
        let mut place = Place::open(base, OsStr::new(first), kind)?;
        for component in components {
            place = Place::open(&place, OsStr::new(component), kind)?;
        }
        Ok(place)
    }

    /// Opens the folder `name` in `parent`, never through a symlink.
    fn open(parent: &Place, name: &OsStr, kind: PlaceKind) -> Result<Place> {
        let shown = parent.shown.join(name);
        let fd = open_dir_at(&parent.fd, name).context(at("opening", &shown))?;
        Ok(Place { fd, shown, kind })
    }
}

/// A folder of keepsake's own at the top of the volume, root's with mode 0700 so that the
/// live user cannot reach into it: where an archive is extracted, or where what a restore
/// replaces waits until the whole archive is in place.
struct Scratch {
    dir: Rc<Place>,
    volume: OwnedFd,
    name: OsString,
    id: Id,
    /// Whether dropping it removes it with everything in it. The trash is never removed
    /// that way: it may hold the only copy of what a failed restore could not put back.
    remove_on_drop: bool,
}

impl Scratch {
    fn path(&self) -> &Path {
        &self.dir.shown
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.remove_on_drop {
            let _ = treewalk::remove_tree(&self.volume, &self.name, &self.dir.shown, Some(self.id));
        }
    }
}

fn scratch(volume: &safefs::Dir, scratch_kind: ScratchKind) -> Result<Scratch> {
    let (word, kind) = (scratch_kind.word(), scratch_kind.place());
    let pid = std::process::id();
    let mut attempt = 0;
    let (name, shown) = loop {
        let name = match attempt {
            0 => OsString::from(format!(".keepsake-{word}-{pid}")),
            n => OsString::from(format!(".keepsake-{word}-{pid}-{n}")),
        };
        let shown = volume.path.join(&name);
        if kind == PlaceKind::Staging {
            // Left by an earlier keepsake with this process id that was killed: it only
            // ever holds an extracted archive.
            treewalk::remove_tree(&volume.fd, &name, &shown, None)?;
        }
        match nix::sys::stat::mkdirat(
            &volume.fd,
            name.as_os_str(),
            Mode::from_bits_truncate(0o700),
        ) {
            Ok(()) => break (name, shown),
            // A trash kept by a restore that could not put everything back holds the only
            // copy of that data: never reused, never removed here.
            Err(Errno::EEXIST) if attempt < 100 => attempt += 1,
            Err(e) => return Err(e).context(at("creating", &shown)).map_err(Error::from),
        }
    };
    let fd = open_dir_at(&volume.fd, &name).context(at("opening", &shown))?;
    // Whatever the umask and the volume's group: root's alone.
    fchown(&fd, Some(Uid::from_raw(0)), Some(Gid::from_raw(0)))
        .context(at("setting the owner of", &shown))?;
    fchmod(&fd, Mode::from_bits_truncate(0o700)).context(at("setting the mode of", &shown))?;
    let id = id_of(&fstat(&fd).context(at("reading", &shown))?);
    Ok(Scratch {
        dir: Rc::new(Place { fd, shown, kind }),
        volume: volume
            .fd
            .try_clone()
            .context(|| "duplicating a descriptor".into())?,
        name,
        id,
        remove_on_drop: kind == PlaceKind::Staging,
    })
}

/// The kinds of folder a restore makes at the top of the volume ([`scratch`]), named
/// `.keepsake-WORD-PID` or `.keepsake-WORD-PID-N` by the word of their kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ScratchKind {
    /// `restore`: only ever an extracted copy of an archive, which still exists.
    Staging,
    /// `replaced`: what the restore moved aside; after a kill in the middle of the moves,
    /// the only copy of some of the volume's old data.
    Trash,
}

impl ScratchKind {
    /// The word in the folder's name.
    fn word(self) -> &'static str {
        match self {
            ScratchKind::Staging => "restore",
            ScratchKind::Trash => "replaced",
        }
    }

    /// What the folder holds, as a place entries are moved from or to.
    fn place(self) -> PlaceKind {
        match self {
            ScratchKind::Staging => PlaceKind::Staging,
            ScratchKind::Trash => PlaceKind::Trash,
        }
    }
}

/// Whether `name` is one of a restore's own folders, which, and of what process.
pub(crate) fn leftover_kind(name: &OsStr) -> Option<(ScratchKind, u32)> {
    let name = name.to_str()?;
    let (kind, rest) = [ScratchKind::Staging, ScratchKind::Trash]
        .into_iter()
        .find_map(|kind| {
            let rest = name.strip_prefix(&format!(".keepsake-{}-", kind.word()))?;
            Some((kind, rest))
        })?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let (pid, attempt) = rest.split_once('-').unwrap_or((rest, "0"));
    if !digits(pid) || !digits(attempt) {
        return None;
    }
    Some((kind, pid.parse().ok()?))
}

/// A restore's folder found at the top of the volume.
pub(crate) struct Leftover {
    pub kind: ScratchKind,
    pub pid: u32,
    pub name: OsString,
    pub shown: PathBuf,
    id: Id,
}

/// The restore folders at the top of `volume`: folders of root's with one of
/// [`leftover_kind`]'s names. Nothing else there is looked at, and nothing is followed.
pub(crate) fn find_leftovers(volume: &safefs::Dir) -> Result<Vec<Leftover>> {
    Ok(safefs::list(volume)?
        .into_iter()
        .filter(|e| e.is_dir() && e.st.st_uid == 0)
        .filter_map(|e| {
            let (kind, pid) = leftover_kind(&e.name)?;
            Some(Leftover {
                kind,
                pid,
                shown: volume.path.join(&e.name),
                id: id_of(&e.st),
                name: e.name,
            })
        })
        .collect())
}

/// What [`find_leftovers`] says about one, for `check`, and what to do about it.
pub(crate) fn describe_leftover(leftover: &Leftover) -> String {
    match leftover.kind {
        ScratchKind::Staging => format!(
            "{} is the staging folder of a restore that was killed (process {}); the next keepsake restore, or keepsake unlock, removes it",
            leftover.shown.display(),
            leftover.pid
        ),
        ScratchKind::Trash => format!(
            "{} holds what a restore that was killed (process {}) had moved aside, perhaps the only copy of it; move back what you need, then remove it (keepsake unlock removes it once it holds no file)",
            leftover.shown.display(),
            leftover.pid
        ),
    }
}

/// What [`remove_leftovers`] did, and what it left, for the user.
#[derive(Debug, Default)]
pub(crate) struct Cleaned {
    pub removed: Vec<String>,
    pub kept: Vec<String>,
}

/// Removes what restores killed by SIGKILL or a power cut left at the top of `volume`:
/// every staging folder, and every trash folder that holds no file (what a trash holds
/// may be the only copy of old data: it is kept, and said). The caller holds keepsake's
/// exclusive lock (`commands::exclusive`), as every restore does: no restore is running,
/// so every folder found is stale, whichever process made it.
pub(crate) fn remove_leftovers(volume: &safefs::Dir) -> Result<Cleaned> {
    let mut said = Cleaned::default();
    for leftover in find_leftovers(volume)? {
        let name = leftover.name.as_os_str();
        if leftover.kind == ScratchKind::Trash
            && holds_data(volume, &leftover.name.to_string_lossy())?
        {
            said.kept.push(describe_leftover(&leftover));
            continue;
        }
        // The tree walker: the folder may hold a whole archive, and nothing in it is
        // followed or left to another file system.
        treewalk::remove_tree(&volume.fd, name, &leftover.shown, Some(leftover.id))?;
        said.removed.push(format!(
            "removed {}, left by a restore that was killed (process {})",
            leftover.shown.display(),
            leftover.pid
        ));
    }
    Ok(said)
}

/// Whether the volume holds data at `name`: anything that is not a folder, at any depth.
/// Folders with nothing but empty folders in them (what enabling a feature makes on a new
/// volume: apt/cache and apt/lists) hold none, and are replaced without --overwrite.
fn holds_data(volume: &safefs::Dir, name: &str) -> Result<bool> {
    let shown = volume.path.join(name);
    match fstatat(&volume.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(e).context(at("reading", &shown)).map_err(Error::from),
        Ok(st) if is_dir(&st) => {
            let (dir, _) = safefs::open_beneath(volume, Path::new(name), None)?;
            let mut found = false;
            safefs::walk(&dir, |_, _, entries| {
                found |= entries.iter().any(|e| !e.is_dir());
                Ok::<(), Error>(())
            })?;
            Ok(found)
        }
        Ok(_) => Ok(true),
    }
}

/// Refuses, before anything moves, to restore into a folder with a mount point inside: a
/// folder that is a mount point somewhere cannot be moved aside or removed. The live user
/// can make one (FUSE) in a feature folder through its bind mount, where the mount table
/// shows it under the bind's path; the table is read to find such mounts wherever they
/// show. A mount made after this check is still caught: its move fails, and everything
/// moved is put back.
fn refuse_mounts_inside(volume: &safefs::Dir, folders: &[String]) -> Result<()> {
    let st = fstat(&volume.fd).context(at("reading", &volume.path))?;
    let dev = (
        nix::sys::stat::major(st.st_dev) as u32,
        nix::sys::stat::minor(st.st_dev) as u32,
    );
    let table = mounts::read_mountinfo()?;
    match mount_points_inside(&table, &volume.path, dev, folders).first() {
        None => Ok(()),
        Some((folder, mount_point)) => Err(Error::InTheWay(format!(
            "{} is a mount point inside {} (busy); unmount it and try again. Nothing was changed",
            mount_point.display(),
            volume.path.join(folder).display()
        ))),
    }
}

/// The mount points (as the table shows them) whose folder lies below one of `folders` of
/// the volume mounted at `root` from device `dev`, with that folder: a mount's folder is on
/// its parent mount's file system at the parent's root joined with the rest of its path.
fn mount_points_inside(
    table: &[Mount],
    root: &Path,
    dev: (u32, u32),
    folders: &[String],
) -> Vec<(String, PathBuf)> {
    // Where `root` is inside its file system (`/` when it is the volume's mount).
    let Some(root_in_fs) = table
        .iter()
        .filter(|m| m.dev == dev)
        .filter_map(|m| Some((m, root.strip_prefix(&m.mount_point).ok()?)))
        .max_by_key(|(m, _)| m.mount_point.as_os_str().len())
        .map(|(m, rest)| m.root.join(rest))
    else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for mount in table {
        let Some(parent) = table.iter().find(|p| p.id == mount.parent && p.dev == dev) else {
            continue;
        };
        let Ok(rest) = mount.mount_point.strip_prefix(&parent.mount_point) else {
            continue;
        };
        let in_fs = parent.root.join(rest);
        for folder in folders {
            let folder_in_fs = root_in_fs.join(folder);
            if in_fs != folder_in_fs && in_fs.starts_with(&folder_in_fs) {
                found.push((folder.clone(), mount.mount_point.clone()));
            }
        }
    }
    found
}

/// Moves the authenticated, extracted folders from `staging` into the volume, as one
/// transaction: see [`Transaction`]. Returns what could not be cleaned up afterwards.
fn apply(
    volume: &safefs::Dir,
    staging: &Scratch,
    folders: &[String],
    configs: &[String],
) -> Result<Vec<String>> {
    let mut transaction = Transaction::new(volume, staging)?;
    match transaction.run(folders, configs) {
        Ok(()) => Ok(transaction.commit()),
        Err(e) => Err(transaction.roll_back(e)),
    }
}

/// One change a restore made to the volume, recorded so that it can be undone.
enum Step {
    /// `from_name` in `from` became `to_name` in `to`; `id` is what moved, as read where
    /// only root can change it (`None` if that read failed).
    Moved {
        from: Rc<Place>,
        from_name: OsString,
        to: Rc<Place>,
        to_name: OsString,
        id: Option<Id>,
    },
    /// A folder's owner, mode and times before the restore changed them or its entries.
    Touched { dir: Rc<Place>, before: FileStat },
}

/// The moves of one restore, recorded as they are made. Nothing is ever deleted or
/// replaced on the way: what a restore replaces moves into a trash folder, and only once
/// the whole archive is in place is that trash emptied, entry by recorded entry. On any
/// failure every recorded move is undone, newest first, so the volume is as it was. Every
/// move is a `renameat2(RENAME_NOREPLACE)` between open folders, so no name is resolved
/// twice and nothing the live user put in a name's way meanwhile is overwritten.
struct Transaction<'a> {
    volume: Rc<Place>,
    staging: &'a Scratch,
    trash: Scratch,
    /// Folders made in the trash, one per replaced name, so that names never collide.
    trash_dirs: Vec<(OsString, Rc<Place>)>,
    journal: Vec<Step>,
    /// Changes made so far (test builds can make one of them fail on purpose).
    changes: usize,
}

impl<'a> Transaction<'a> {
    fn new(volume: &safefs::Dir, staging: &'a Scratch) -> Result<Transaction<'a>> {
        Ok(Transaction {
            volume: Rc::new(Place {
                fd: volume
                    .fd
                    .try_clone()
                    .context(|| "duplicating a descriptor".into())?,
                shown: volume.path.clone(),
                kind: PlaceKind::Volume,
            }),
            staging,
            trash: scratch(volume, ScratchKind::Trash)?,
            trash_dirs: Vec::new(),
            journal: Vec::new(),
            changes: 0,
        })
    }

    fn run(&mut self, folders: &[String], configs: &[String]) -> Result<()> {
        let volume = Rc::clone(&self.volume);
        let staging = Rc::clone(&self.staging.dir);
        for folder in folders {
            self.restore_top(&volume, &staging, OsStr::new(folder))?;
        }
        for name in configs {
            let name = OsStr::new(name);
            let mut kept = name.to_os_string();
            kept.push(".before-restore");
            if exists(&volume, &kept)? {
                let aside = self.trash_dir()?;
                self.move_entry(&volume, &kept, &aside, &kept)?;
            }
            if exists(&volume, name)? {
                self.move_entry(&volume, name, &volume, &kept)?;
            }
            self.move_entry(&staging, name, &volume, name)?;
        }
        Ok(())
    }

    /// Moves the top-level entry `name` from `staging` into `volume`: a folder that exists
    /// there gets the archive's contents (see [`Transaction::replace_contents`]), anything
    /// else in the way goes to the trash.
    fn restore_top(&mut self, volume: &Rc<Place>, staging: &Rc<Place>, name: &OsStr) -> Result<()> {
        let staged = fstatat(&staging.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW)
            .context(at("reading", &staging.shown.join(name)))?;
        match fstatat(&volume.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Err(Errno::ENOENT) => self.move_entry(staging, name, volume, name),
            Err(e) => Err(e)
                .context(at("reading", &volume.shown.join(name)))
                .map_err(Error::from),
            Ok(existing) if is_dir(&existing) && is_dir(&staged) => {
                self.replace_contents(name, &staged)
            }
            Ok(_) => {
                let aside = self.trash_dir()?;
                self.move_entry(volume, name, &aside, name)?;
                self.move_entry(staging, name, volume, name)
            }
        }
    }

    /// Moves each of `paths` from the staging folder to its place in the volume (see
    /// [`restore_paths`]): the folders above it are walked down to on both sides without
    /// following a symlink; what is in its way in the volume goes to the trash.
    fn run_paths(&mut self, paths: &[String]) -> Result<()> {
        let volume = Rc::clone(&self.volume);
        let staging = Rc::clone(&self.staging.dir);
        // The second move of a path given twice would take out what the first brought in.
        if let Some(twice) = (1..paths.len()).find(|&i| paths[..i].contains(&paths[i])) {
            return Err(Error::Internal(format!(
                "{} is to be restored twice; this is a bug",
                paths[twice]
            )));
        }
        for path in paths {
            let Some((parent, name)) = path.rsplit_once('/') else {
                self.restore_top(&volume, &staging, OsStr::new(path))?;
                continue;
            };
            let name = OsStr::new(name);
            let to = Rc::new(Place::open_path(&volume, parent, PlaceKind::Feature)?);
            let from = Rc::new(Place::open_path(&staging, parent, PlaceKind::Staging)?);
            if exists(&to, name)? {
                let aside = self.trash_dir()?;
                self.move_entry(&to, name, &aside, name)?;
            }
            self.move_entry(&from, name, &to, name)?;
        }
        Ok(())
    }

    /// A folder that exists keeps its inode (an active feature's bind mount goes on
    /// showing it): its entries move to the trash, the archive's move in, and it takes the
    /// owner, mode and time of the archive's folder (`staged`, read before its entries
    /// moved out and changed its time).
    fn replace_contents(&mut self, name: &OsStr, staged: &FileStat) -> Result<()> {
        let target = Rc::new(Place::open(&self.volume, name, PlaceKind::Feature)?);
        let source = Rc::new(Place::open(&self.staging.dir, name, PlaceKind::Staging)?);
        let before = fstat(&target.fd).context(at("reading", &target.shown))?;
        // First in the journal, so undone last: moving entries back changes the times.
        self.journal.push(Step::Touched {
            dir: Rc::clone(&target),
            before,
        });
        let aside = self.trash_dir()?;
        for entry in list_dir(&target.fd, &target.shown)? {
            self.move_entry(&target, &entry, &aside, &entry)?;
        }
        for entry in list_dir(&source.fd, &source.shown)? {
            self.move_entry(&source, &entry, &target, &entry)?;
        }
        self.change()?;
        restyle(
            &target,
            staged.st_uid,
            staged.st_gid,
            staged.st_mode,
            &TimeSpec::UTIME_OMIT,
            &TimeSpec::new(staged.st_mtime, staged.st_mtime_nsec),
        )
    }

    /// A new, empty folder in the trash.
    fn trash_dir(&mut self) -> Result<Rc<Place>> {
        self.change()?;
        let name = OsString::from(self.trash_dirs.len().to_string());
        let trash = &self.trash.dir;
        nix::sys::stat::mkdirat(&trash.fd, name.as_os_str(), Mode::from_bits_truncate(0o700))
            .context(at("creating", &trash.shown.join(&name)))?;
        let dir = Rc::new(Place::open(trash, &name, PlaceKind::Trash)?);
        self.trash_dirs.push((name, Rc::clone(&dir)));
        Ok(dir)
    }

    /// Renames `from_name` in `from` to `to_name` in `to`, never replacing anything, and
    /// records it. What moved is read on the side only root can change: before the move
    /// when it comes from there, after it otherwise (so a swap in a feature folder just
    /// before the move is recorded as what it is).
    fn move_entry(
        &mut self,
        from: &Rc<Place>,
        from_name: &OsStr,
        to: &Rc<Place>,
        to_name: &OsStr,
    ) -> Result<()> {
        self.change()?;
        let (shown_from, shown_to) = (from.shown.join(from_name), to.shown.join(to_name));
        let before = if from.private() {
            let st = fstatat(&from.fd, from_name, AtFlags::AT_SYMLINK_NOFOLLOW)
                .context(at("reading", &shown_from))?;
            Some(id_of(&st))
        } else {
            None
        };
        match renameat2(
            &from.fd,
            from_name,
            &to.fd,
            to_name,
            RenameFlags::RENAME_NOREPLACE,
        ) {
            Ok(()) => {}
            // Removed by the live user since its folder was listed: nothing to move aside.
            Err(Errno::ENOENT) if !from.private() => return Ok(()),
            Err(e) => return Err(move_failed(e, &shown_from, &shown_to)),
        }
        let id = before.or_else(|| {
            fstatat(&to.fd, to_name, AtFlags::AT_SYMLINK_NOFOLLOW)
                .ok()
                .map(|st| id_of(&st))
        });
        self.journal.push(Step::Moved {
            from: Rc::clone(from),
            from_name: from_name.to_os_string(),
            to: Rc::clone(to),
            to_name: to_name.to_os_string(),
            id,
        });
        Ok(())
    }

    /// Counts a change about to be made. Also a safe point: a stop signal that arrived
    /// stops the restore here, and every change made so far is undone.
    fn change(&mut self) -> Result<()> {
        self.changes += 1;
        #[cfg(test)]
        if tests::INTERRUPT_AT_CHANGE.with(|n| n.get()) == Some(self.changes) {
            crate::interrupt::pretend_received(libc::SIGTERM);
        }
        crate::interrupt::check()?;
        #[cfg(test)]
        if tests::FAIL_AT_CHANGE.with(|n| n.get()) == Some(self.changes) {
            return Err(Error::Io(IoError::new(
                format!("change {} of the restore", self.changes),
                std::io::Error::other("made to fail by a test"),
            )));
        }
        Ok(())
    }

    /// The whole archive is in place: empties the trash, removing only the entries it
    /// recorded moving there, each only if it still is what was moved (device and inode).
    /// Returns what could not be removed.
    fn commit(self) -> Vec<String> {
        let mut leftovers = Vec::new();
        for step in &self.journal {
            if let Step::Moved {
                to, to_name, id, ..
            } = step
                && to.kind == PlaceKind::Trash
            {
                let shown = to.shown.join(to_name);
                if let Err(e) = treewalk::remove_tree(&to.fd, to_name, &shown, *id) {
                    leftovers.push(format!(
                        "the restore is complete, but not all the data it replaced could be removed: {e}; what is left of it is in {}",
                        self.trash.path().display()
                    ));
                }
            }
        }
        self.remove_trash(&mut leftovers);
        leftovers
    }

    /// Undoes every recorded change, newest first, and returns `error` saying whether the
    /// volume is as it was. If anything could not be put back, the trash (which may hold
    /// the only copy of it) is kept, and the error says where it is.
    fn roll_back(self, error: Error) -> Error {
        let mut failures: Vec<String> = Vec::new();
        for step in self.journal.iter().rev() {
            let undone = match step {
                Step::Moved {
                    from,
                    from_name,
                    to,
                    to_name,
                    id,
                } => put_back(from, from_name, to, to_name, *id),
                Step::Touched { dir, before } => restyle(
                    dir,
                    before.st_uid,
                    before.st_gid,
                    before.st_mode,
                    &TimeSpec::new(before.st_atime, before.st_atime_nsec),
                    &TimeSpec::new(before.st_mtime, before.st_mtime_nsec),
                ),
            };
            if let Err(e) = undone {
                failures.push(e.to_string());
            }
        }
        let trash = self.trash.path().to_path_buf();
        self.remove_trash(&mut failures);
        if failures.is_empty() {
            return error.with_note("nothing was changed: every entry moved was put back");
        }
        error.with_note(&format!(
            "not everything could be put back ({}); nothing was deleted, and what is not back is in {}",
            failures.join("; "),
            trash.display()
        ))
    }

    /// Removes the trash's folders and the trash itself, each only if empty. A failure is
    /// added to `problems` only if there is none yet: one left inside makes all of these
    /// fail too.
    fn remove_trash(self, problems: &mut Vec<String>) {
        let trash = &self.trash.dir;
        let folders = self
            .trash_dirs
            .iter()
            .map(|(name, dir)| (&trash.fd, name, &dir.shown));
        let itself = (&self.trash.volume, &self.trash.name, &trash.shown);
        for (parent, name, shown) in folders.chain([itself]) {
            if let Err(e) = unlinkat(parent, name.as_os_str(), UnlinkatFlags::RemoveDir)
                && problems.is_empty()
            {
                problems.push(format!("{} is left: {e}", shown.display()));
            }
        }
    }
}

/// Whether `name` exists in `dir` (whatever it is; a symlink is not followed).
fn exists(dir: &Place, name: &OsStr) -> Result<bool> {
    match fstatat(&dir.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(_) => Ok(true),
        Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(e)
            .context(at("reading", &dir.shown.join(name)))
            .map_err(Error::from),
    }
}

/// Undoes a recorded move: `to_name` in `to` goes back to `from_name` in `from`, if it is
/// still what was moved. Where the live user can swap it (a feature folder), that is
/// checked after the move, on the private side, and a stranger is moved back out again.
fn put_back(
    from: &Place,
    from_name: &OsStr,
    to: &Place,
    to_name: &OsStr,
    id: Option<Id>,
) -> Result<()> {
    let (shown_from, shown_to) = (from.shown.join(from_name), to.shown.join(to_name));
    let is_what_moved = |dir: &Place, name: &OsStr| {
        fstatat(&dir.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW)
            .is_ok_and(|st| id.is_none_or(|id| id == id_of(&st)))
    };
    let not_it = || {
        Error::InTheWay(format!(
            "{} is no longer what the restore moved there; left where it is",
            shown_to.display()
        ))
    };
    if to.private() && !is_what_moved(to, to_name) {
        return Err(not_it());
    }
    renameat2(
        &to.fd,
        to_name,
        &from.fd,
        from_name,
        RenameFlags::RENAME_NOREPLACE,
    )
    .map_err(|e| move_failed(e, &shown_to, &shown_from))?;
    if !to.private() && !is_what_moved(from, from_name) {
        let _ = renameat2(
            &from.fd,
            from_name,
            &to.fd,
            to_name,
            RenameFlags::RENAME_NOREPLACE,
        );
        return Err(not_it());
    }
    Ok(())
}

/// Gives an open folder an owner, permission bits and times: owner first (chown clears
/// setuid and setgid), times last (anything else would change them).
fn restyle(
    dir: &Place,
    uid: u32,
    gid: u32,
    mode: u32,
    atime: &TimeSpec,
    mtime: &TimeSpec,
) -> Result<()> {
    fchown(&dir.fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
        .context(at("setting the owner of", &dir.shown))?;
    fchmod(&dir.fd, Mode::from_bits_truncate(mode & 0o7777))
        .context(at("setting the mode of", &dir.shown))?;
    futimens(&dir.fd, atime, mtime)
        .context(at("setting the time of", &dir.shown))
        .map_err(Error::from)
}

fn move_failed(e: Errno, from: &Path, to: &Path) -> Error {
    match e {
        // A folder that is a mount point anywhere (a FUSE mount through a bind of the
        // volume, say) cannot be renamed.
        Errno::EBUSY => Error::InTheWay(format!(
            "{} is a mount point or in use (busy); unmount it and try again",
            from.display()
        )),
        Errno::EEXIST | Errno::ENOTEMPTY => Error::InTheWay(format!(
            "{} appeared while the restore was moving {} there",
            to.display(),
            from.display()
        )),
        e => Error::Io(IoError::new(
            format!("moving {} to {}", from.display(), to.display()),
            e.into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::testing::{ExitCode, exit_code};

    #[test]
    fn folders_of_empty_folders_hold_no_data() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("apt/cache/partial")).unwrap();
        std::fs::create_dir_all(tmp.path().join("apt/lists")).unwrap();
        std::fs::create_dir_all(tmp.path().join("gnupg/deep/er")).unwrap();
        std::fs::write(tmp.path().join("gnupg/deep/er/key"), "k").unwrap();
        std::fs::write(tmp.path().join("file"), "").unwrap();
        let (volume, _) = safefs::open_dir(tmp.path(), None).unwrap();
        assert!(!holds_data(&volume, "apt").unwrap(), "only empty folders");
        assert!(
            holds_data(&volume, "gnupg").unwrap(),
            "a file three folders down"
        );
        assert!(
            holds_data(&volume, "file").unwrap(),
            "an empty file is data"
        );
        assert!(!holds_data(&volume, "missing").unwrap());
    }
    use crate::safefs::treewalk::testing::{deep_chain, snapshot, with_descriptor_limit};
    use std::cell::Cell;
    use std::collections::BTreeMap;
    use std::os::unix::fs::{PermissionsExt, symlink};

    thread_local! {
        /// Which change of a restore on this thread fails on purpose (1 = the first).
        pub static FAIL_AT_CHANGE: Cell<Option<usize>> = const { Cell::new(None) };
        /// Before which change of a restore on this thread a stop signal arrives.
        pub static INTERRUPT_AT_CHANGE: Cell<Option<usize>> = const { Cell::new(None) };
    }

    #[test]
    fn only_the_names_a_restore_gives_its_folders_are_leftovers() {
        let kind = |n: &str| leftover_kind(OsStr::new(n));
        assert_eq!(
            kind(".keepsake-restore-4242"),
            Some((ScratchKind::Staging, 4242))
        );
        assert_eq!(
            kind(".keepsake-restore-4242-3"),
            Some((ScratchKind::Staging, 4242))
        );
        assert_eq!(kind(".keepsake-replaced-7"), Some((ScratchKind::Trash, 7)));
        assert_eq!(
            kind(".keepsake-replaced-7-12"),
            Some((ScratchKind::Trash, 7))
        );
        for other in [
            ".keepsake-restore-",
            ".keepsake-restore-12-",
            ".keepsake-restore--1",
            ".keepsake-restore-1-2-3",
            ".keepsake-restore-12x",
            ".keepsake-restore-+12",
            ".keepsake-restore-99999999999",
            ".keepsake-replaced",
            ".keepsake-lock-12",
            "keepsake-restore-12",
            "Persistent",
            "persistence.conf.before-restore",
        ] {
            assert_eq!(kind(other), None, "{other}");
        }
    }

    #[test]
    fn killed_restores_folders_are_removed_but_a_trash_holding_files_is_kept() {
        require_root();
        let tmp = tempfile::tempdir().unwrap();
        let vol = tmp.path().join("vol");
        let outside = tmp.path().join("outside");
        write(&outside.join("precious"), "not keepsake's", 0o600, 1);
        write(
            &vol.join(".keepsake-restore-123/Persistent/big"),
            "x",
            0o600,
            1,
        );
        std::fs::create_dir_all(vol.join(".keepsake-restore-123-1")).unwrap();
        deep_chain(&vol.join(".keepsake-restore-123-1"), "d", 300);
        std::fs::create_dir_all(vol.join(".keepsake-replaced-124/0")).unwrap();
        write(
            &vol.join(".keepsake-replaced-125/0/old"),
            "the only copy",
            0o600,
            1,
        );
        symlink(&outside, vol.join(".keepsake-restore-126")).unwrap();
        write(&vol.join(".keepsake-restore-127/mine"), "user's", 0o600, 1);
        nix::unistd::chown(
            &vol.join(".keepsake-restore-127"),
            Some(Uid::from_raw(1000)),
            None,
        )
        .unwrap();
        write(&vol.join(".keepsake-restorex/f"), "not ours", 0o600, 1);
        write(&vol.join("Persistent/kept"), "data", 0o600, 1);
        let (volume, _) = safefs::open_dir(&vol, None).unwrap();

        let found: Vec<_> = find_leftovers(&volume)
            .unwrap()
            .iter()
            .map(|l| (l.name.to_string_lossy().into_owned(), l.kind, l.pid))
            .collect();
        assert_eq!(
            found,
            [
                (".keepsake-replaced-124".into(), ScratchKind::Trash, 124),
                (".keepsake-replaced-125".into(), ScratchKind::Trash, 125),
                (".keepsake-restore-123".into(), ScratchKind::Staging, 123),
                (".keepsake-restore-123-1".into(), ScratchKind::Staging, 123),
            ]
        );
        let cleaned = remove_leftovers(&volume).unwrap();
        assert_eq!(cleaned.removed.len(), 3, "{:?}", cleaned.removed);
        assert_eq!(cleaned.kept.len(), 1, "{:?}", cleaned.kept);
        assert!(cleaned.kept[0].contains(".keepsake-replaced-125 holds what a restore"));
        let mut left: Vec<_> = std::fs::read_dir(&vol)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                ".keepsake-replaced-125",
                ".keepsake-restore-126",
                ".keepsake-restore-127",
                ".keepsake-restorex",
                "Persistent"
            ]
        );
        assert_eq!(
            std::fs::read_to_string(outside.join("precious")).unwrap(),
            "not keepsake's"
        );
        assert!(vol.join(".keepsake-replaced-125/0/old").exists());
    }

    #[test]
    fn a_stop_signal_at_any_change_puts_everything_back_and_leaves_nothing() {
        require_root();
        let folders: Vec<String> = ["Persistent", "gnupg", "dotfiles"].map(String::from).into();
        let configs = vec!["persistence.conf".to_string()];
        let mut interrupted = 0;
        for at in 1.. {
            let tmp = tempfile::tempdir().unwrap();
            let (vol, before) = full_volume(tmp.path());
            let (volume, _) = safefs::open_dir(&vol, None).unwrap();
            let staging = scratch(&volume, ScratchKind::Staging).unwrap();
            stage_full_archive(staging.path());
            INTERRUPT_AT_CHANGE.with(|n| n.set(Some(at)));
            let outcome = apply(&volume, &staging, &folders, &configs);
            INTERRUPT_AT_CHANGE.with(|n| n.set(None));
            crate::interrupt::pretend_received(0);
            drop(staging);
            assert_eq!(
                keepsake_leftovers(&vol),
                Vec::<String>::new(),
                "at change {at}"
            );
            match outcome {
                Err(err) => {
                    assert_eq!(exit_code(&err), ExitCode::Terminated, "{err}");
                    let message = err.to_string();
                    assert!(
                        message.starts_with("interrupted by SIGTERM; nothing was changed"),
                        "{message}"
                    );
                    assert_eq!(snapshot(&vol), before, "interrupted at change {at}");
                    interrupted += 1;
                }
                Ok(_) => break,
            }
        }
        assert!(interrupted >= 15, "only {interrupted} changes");
    }

    #[test]
    fn a_stop_signal_during_extraction_removes_the_staging_folder_and_changes_nothing() {
        require_root();
        let tmp = tempfile::tempdir().unwrap();
        let (vol, before) = full_volume(tmp.path());
        // An archive of two big files: the signal comes while the first is written.
        let source = tmp.path().join("source");
        write(&source.join("Persistent/a"), &"a".repeat(4 << 20), 0o600, 1);
        write(&source.join("Persistent/b"), &"b".repeat(4 << 20), 0o600, 1);
        let mut plaintext = Vec::new();
        crate::archive::write_tree(
            &source,
            &[PathBuf::from("Persistent")],
            &mut plaintext,
            &mut |_| {},
        )
        .unwrap();
        let (volume, _) = safefs::open_dir(&vol, None).unwrap();
        let request = Request {
            folders: None,
            config_files: &["persistence.conf"],
            overwrite: true,
            dry_run: false,
            paths: None,
        };
        let mut read = 0;
        // Handed on in 64 KiB pieces, as a Reader hands on its opened chunks.
        let mut input = std::io::BufReader::with_capacity(64 << 10, &plaintext[..]);
        let outcome = restore(
            &volume,
            &mut |dest| {
                crate::archive::read_tree_on(&mut input, dest, 2, &mut |b| {
                    read = b;
                    if b > 1 << 20 {
                        crate::interrupt::pretend_received(libc::SIGINT);
                    }
                })
            },
            &request,
        );
        crate::interrupt::pretend_received(0);
        let err = outcome.err().expect("interrupted");
        assert_eq!(exit_code(&err), ExitCode::Interrupt, "{err}");
        assert!(
            read < 2 << 20,
            "stopped at the next chunk: {read} bytes read"
        );
        assert_eq!(
            err.to_string(),
            "interrupted by SIGINT; nothing was changed: what was extracted so far is removed"
        );
        assert_eq!(keepsake_leftovers(&vol), Vec::<String>::new());
        assert_eq!(snapshot(&vol), before);
    }

    /// These tests mount file systems and give files away, as the suite does: run as root.
    fn require_root() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test must run as root (it mounts a tmpfs and sets owners)"
        );
    }

    /// A tmpfs mounted for the length of a test, detached even if the test fails.
    struct Tmpfs(PathBuf);

    impl Tmpfs {
        fn at(path: &Path) -> Tmpfs {
            std::fs::create_dir_all(path).unwrap();
            nix::mount::mount(
                Some("keepsake-test"),
                path,
                Some("tmpfs"),
                nix::mount::MsFlags::empty(),
                Some("size=1m"),
            )
            .unwrap();
            std::fs::write(path.join("on-the-mount"), b"the user's FUSE data").unwrap();
            Tmpfs(path.to_path_buf())
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }

    fn write(path: &Path, content: &str, mode: u32, mtime: i64) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
        std::fs::set_permissions(path, PermissionsExt::from_mode(mode)).unwrap();
        set_mtime(path, mtime);
    }

    fn set_mtime(path: &Path, mtime: i64) {
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            path,
            &TimeSpec::UTIME_OMIT,
            &TimeSpec::new(mtime, 7),
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    }

    /// A volume with a feature folder holding data written after the backup, owned by the
    /// live user as on a live system.
    fn volume_with_new_data(vol: &Path) {
        let p = vol.join("Persistent");
        write(
            &p.join("a-notes.txt"),
            "written after the backup\n",
            0o600,
            1_600_000_001,
        );
        write(&p.join("b-dir/inner.txt"), "inner\n", 0o640, 1_600_000_002);
        symlink("a-notes.txt", p.join("c-link")).unwrap();
        std::fs::create_dir(p.join("m")).unwrap();
        write(&p.join("z-last.txt"), "last\n", 0o644, 1_600_000_003);
        for rel in [
            "",
            "/a-notes.txt",
            "/b-dir",
            "/b-dir/inner.txt",
            "/m",
            "/z-last.txt",
        ] {
            std::os::unix::fs::lchown(format!("{}{rel}", p.display()), Some(1000), Some(1000))
                .unwrap();
        }
        std::fs::set_permissions(&p, PermissionsExt::from_mode(0o700)).unwrap();
        set_mtime(&p.join("b-dir"), 1_600_000_004);
        set_mtime(&p, 1_600_000_005);
    }

    /// Extracted archive contents in the staging folder, as `read_tree` leaves them.
    fn stage_archive(staging: &Path) {
        let p = staging.join("Persistent");
        write(
            &p.join("a-notes.txt"),
            "from the archive\n",
            0o600,
            1_500_000_001,
        );
        write(
            &p.join("restored/deep.txt"),
            "restored\n",
            0o600,
            1_500_000_002,
        );
        std::fs::set_permissions(&p, PermissionsExt::from_mode(0o750)).unwrap();
        set_mtime(&p, 1_500_000_003);
    }

    fn keepsake_leftovers(vol: &Path) -> Vec<String> {
        std::fs::read_dir(vol)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".keepsake-"))
            .collect()
    }

    #[test]
    fn a_mount_in_a_feature_folder_is_busy_and_every_entry_moved_goes_back() {
        require_root();
        let tmp = tempfile::tempdir().unwrap();
        let vol = tmp.path().join("vol");
        volume_with_new_data(&vol);
        // As a FUSE mount of the live user would be: entries sorted before it move first.
        let _mount = Tmpfs::at(&vol.join("Persistent/m"));
        let before = snapshot(&vol);
        assert!(before.contains_key("Persistent/m/on-the-mount"));

        let (volume, _) = safefs::open_dir(&vol, None).unwrap();
        let staging = scratch(&volume, ScratchKind::Staging).unwrap();
        stage_archive(staging.path());
        let err = apply(&volume, &staging, &["Persistent".into()], &[]).unwrap_err();
        assert!(matches!(err, Error::InTheWay(_)), "{err}");
        assert_eq!(exit_code(&err), ExitCode::Busy);
        let message = err.to_string();
        assert!(
            message.contains(&format!(
                "{} is a mount point",
                vol.join("Persistent/m").display()
            )),
            "{message}"
        );
        assert!(
            message.contains("every entry moved was put back"),
            "{message}"
        );
        drop(staging);
        assert_eq!(snapshot(&vol), before);
        assert_eq!(keepsake_leftovers(&vol), Vec::<String>::new());
    }

    #[test]
    fn a_path_given_twice_is_refused_before_anything_moves() {
        require_root();
        let tmp = tempfile::tempdir().unwrap();
        let vol = tmp.path().join("vol");
        volume_with_new_data(&vol);
        let before = snapshot(&vol);
        let (volume, _) = safefs::open_dir(&vol, None).unwrap();
        // Moved twice, the second move would take out what the first brought in.
        let paths = vec!["Persistent".to_string(), "Persistent".to_string()];
        let request = Request {
            folders: None,
            config_files: &[],
            overwrite: true,
            dry_run: false,
            paths: Some(&paths),
        };
        let err = restore(
            &volume,
            &mut |dest| {
                stage_archive(dest.unwrap());
                Ok(TreeStats::default())
            },
            &request,
        );
        let Err(err) = err else {
            panic!("a path given twice was restored")
        };
        assert!(err.to_string().contains("restored twice"), "{err}");
        assert_eq!(snapshot(&vol), before);
        assert_eq!(keepsake_leftovers(&vol), Vec::<String>::new());
    }

    /// The volume of [`every_change_is_undone_when_a_later_one_fails`]: a folder replaced
    /// entry by entry, one new, one a file where the archive has a folder, and configs.
    fn full_volume(tmp: &Path) -> (PathBuf, BTreeMap<String, String>) {
        let vol = tmp.join("vol");
        volume_with_new_data(&vol);
        write(
            &vol.join("dotfiles"),
            "a file in the way",
            0o600,
            1_600_000_010,
        );
        write(
            &vol.join("persistence.conf"),
            "current\n",
            0o600,
            1_600_000_011,
        );
        write(
            &vol.join("persistence.conf.before-restore"),
            "older\n",
            0o600,
            1_600_000_012,
        );
        let before = snapshot(&vol);
        (vol, before)
    }

    fn stage_full_archive(staging: &Path) {
        stage_archive(staging);
        write(
            &staging.join("gnupg/pubring.kbx"),
            "keys\n",
            0o600,
            1_500_000_010,
        );
        write(
            &staging.join("dotfiles/.bashrc"),
            "set -o vi\n",
            0o644,
            1_500_000_011,
        );
        write(
            &staging.join("persistence.conf"),
            "restored\n",
            0o600,
            1_500_000_012,
        );
    }

    #[test]
    fn every_change_is_undone_when_a_later_one_fails() {
        require_root();
        let folders: Vec<String> = ["Persistent", "gnupg", "dotfiles"].map(String::from).into();
        let configs = vec!["persistence.conf".to_string()];
        let mut failures = 0;
        for fail_at in 1.. {
            let tmp = tempfile::tempdir().unwrap();
            let (vol, before) = full_volume(tmp.path());
            let (volume, _) = safefs::open_dir(&vol, None).unwrap();
            let staging = scratch(&volume, ScratchKind::Staging).unwrap();
            stage_full_archive(staging.path());
            let staged = snapshot(staging.path());
            FAIL_AT_CHANGE.with(|n| n.set(Some(fail_at)));
            let outcome = apply(&volume, &staging, &folders, &configs);
            FAIL_AT_CHANGE.with(|n| n.set(None));
            drop(staging);
            match outcome {
                Err(err) => {
                    let message = err.to_string();
                    assert!(message.contains(&format!("change {fail_at} ")), "{message}");
                    assert!(
                        message.contains("every entry moved was put back"),
                        "{message}"
                    );
                    assert_eq!(snapshot(&vol), before, "failing at change {fail_at}");
                    assert_eq!(keepsake_leftovers(&vol), Vec::<String>::new());
                    failures += 1;
                }
                Ok(leftovers) => {
                    // Past the last change: the archive is in place, the old data gone.
                    assert_eq!(leftovers, Vec::<String>::new());
                    let after = snapshot(&vol);
                    let mut expected = staged.clone();
                    expected.insert(
                        "persistence.conf.before-restore".into(),
                        before["persistence.conf"].clone(),
                    );
                    assert_eq!(after, expected);
                    assert_eq!(keepsake_leftovers(&vol), Vec::<String>::new());
                    break;
                }
            }
        }
        // Every branch was cut at every step: trash folders, moves out and in, the
        // folder's owner and mode, whole entries, configs.
        assert!(failures >= 15, "only {failures} changes");
    }

    #[test]
    fn a_mount_deep_in_a_feature_folder_is_refused_before_anything_moves() {
        require_root();
        let tmp = tempfile::tempdir().unwrap();
        let vol = tmp.path().join("vol");
        volume_with_new_data(&vol);
        let _mount = Tmpfs::at(&vol.join("Persistent/b-dir/deeper"));
        let (volume, _) = safefs::open_dir(&vol, None).unwrap();
        let err =
            refuse_mounts_inside(&volume, &["gnupg".into(), "Persistent".into()]).unwrap_err();
        assert!(matches!(err, Error::InTheWay(_)), "{err}");
        assert!(
            err.to_string().contains(&format!(
                "{} is a mount point inside",
                vol.join("Persistent/b-dir/deeper").display()
            )),
            "{err}"
        );
        refuse_mounts_inside(&volume, &["gnupg".into()]).unwrap();
    }

    #[test]
    fn mounts_made_through_a_bind_of_the_volume_are_found() {
        let table = mounts::parse_mountinfo(
            "\
27 1 254:1 / / rw - ext4 /dev/vda rw
40 27 254:0 / /live/persistence/TailsData_unlocked rw - ext4 /dev/mapper/TailsData_unlocked rw
41 27 254:0 /Persistent /home/amnesia/Persistent rw - ext4 /dev/mapper/TailsData_unlocked rw
42 41 0:50 / /home/amnesia/Persistent/a/fuse rw - fuse.sshfs u@h: rw
43 27 0:51 / /home/amnesia/elsewhere rw - fuse.sshfs u@h: rw
44 40 0:52 / /live/persistence/TailsData_unlocked/gnupg/x rw - tmpfs t rw
45 41 0:53 / /home/amnesia/Persistent rw - fuse.sshfs u@h: rw
46 27 254:0 /Persistent.old /mnt/old rw - ext4 /dev/mapper/TailsData_unlocked rw
47 46 0:54 / /mnt/old/y rw - tmpfs t rw
",
        );
        let root = Path::new("/live/persistence/TailsData_unlocked");
        let found = |folders: &[&str]| {
            let folders: Vec<String> = folders.iter().map(|f| f.to_string()).collect();
            mount_points_inside(&table, root, (254, 0), &folders)
        };
        assert_eq!(
            found(&["Persistent", "gnupg", "Persistent.old"]),
            [
                (
                    "Persistent".into(),
                    PathBuf::from("/home/amnesia/Persistent/a/fuse")
                ),
                (
                    "gnupg".into(),
                    PathBuf::from("/live/persistence/TailsData_unlocked/gnupg/x")
                ),
                ("Persistent.old".into(), PathBuf::from("/mnt/old/y")),
            ]
        );
        // A mount on a bind's own mount point covers the folder, it is not inside it.
        assert_eq!(found(&["dotfiles"]), []);
        assert_eq!(
            mount_points_inside(&table, root, (9, 9), &["gnupg".into()]),
            []
        );
    }

    #[test]
    fn the_trash_is_emptied_only_of_what_was_moved_there_and_not_into_mounts() {
        require_root();
        let tmp = tempfile::tempdir().unwrap();
        let vol = tmp.path().join("vol");
        volume_with_new_data(&vol);
        // Deeper than the first level, a mount travels with its folder into the trash.
        let mount = Tmpfs::at(&vol.join("Persistent/b-dir/mnt"));
        let (volume, _) = safefs::open_dir(&vol, None).unwrap();
        let staging = scratch(&volume, ScratchKind::Staging).unwrap();
        stage_archive(staging.path());
        let leftovers = apply(&volume, &staging, &["Persistent".into()], &[]).unwrap();
        drop(staging);
        let trash = vol.join(format!(".keepsake-replaced-{}", std::process::id()));
        let moved = trash.join("0/b-dir/mnt");
        assert_eq!(leftovers.len(), 1, "{leftovers:?}");
        assert!(leftovers[0].contains(&format!("{} is a mount point", moved.display())));
        assert_eq!(
            std::fs::read(moved.join("on-the-mount")).unwrap(),
            b"the user's FUSE data",
            "nothing was removed inside the mount"
        );
        assert!(!trash.join("0/a-notes.txt").exists(), "the rest went");
        nix::mount::umount2(&moved, nix::mount::MntFlags::MNT_DETACH).unwrap();
        std::mem::forget(mount);
        std::fs::remove_dir_all(&trash).unwrap();
    }

    #[test]
    fn a_rollback_that_cannot_put_everything_back_deletes_nothing_and_says_where() {
        require_root();
        let tmp = tempfile::tempdir().unwrap();
        let vol = tmp.path().join("vol");
        volume_with_new_data(&vol);
        let (volume, _) = safefs::open_dir(&vol, None).unwrap();
        let staging = scratch(&volume, ScratchKind::Staging).unwrap();
        stage_archive(staging.path());
        let mut transaction = Transaction::new(&volume, &staging).unwrap();
        let name = |n: &str| OsString::from(n);
        let target = Rc::new(
            Place::open(&transaction.volume, &name("Persistent"), PlaceKind::Feature).unwrap(),
        );
        let source =
            Rc::new(Place::open(&staging.dir, &name("Persistent"), PlaceKind::Staging).unwrap());
        let aside = transaction.trash_dir().unwrap();
        let notes = name("a-notes.txt");
        transaction
            .move_entry(&target, &notes, &aside, &notes)
            .unwrap();
        let restored = name("restored");
        transaction
            .move_entry(&source, &restored, &target, &restored)
            .unwrap();
        // Meanwhile the live user writes a new note, and swaps the restored folder for one
        // of its own.
        let p = vol.join("Persistent");
        std::fs::write(p.join("a-notes.txt"), "newer").unwrap();
        std::fs::rename(p.join("restored"), p.join("moved-by-the-user")).unwrap();
        write(&p.join("restored/mine.txt"), "the user's", 0o600, 1);

        let err = transaction.roll_back(Error::InTheWay("a move failed".into()));
        let trash = vol.join(format!(".keepsake-replaced-{}", std::process::id()));
        let message = err.to_string();
        assert!(
            message.starts_with("a move failed; not everything could be put back"),
            "{message}"
        );
        assert!(
            message.contains(&format!("what is not back is in {}", trash.display())),
            "{message}"
        );
        assert!(
            message.contains("is no longer what the restore moved there"),
            "{message}"
        );
        assert_eq!(
            std::fs::read_to_string(trash.join("0/a-notes.txt")).unwrap(),
            "written after the backup\n",
            "the old data is kept, not deleted"
        );
        assert_eq!(
            std::fs::read_to_string(p.join("a-notes.txt")).unwrap(),
            "newer"
        );
        assert_eq!(
            std::fs::read_to_string(p.join("restored/mine.txt")).unwrap(),
            "the user's"
        );
        drop(staging);
        assert!(
            p.join("restored/mine.txt").exists(),
            "nothing of the user's went to the staging"
        );

        // A later restore leaves that trash alone.
        let again = scratch(&volume, ScratchKind::Trash).unwrap();
        assert_eq!(
            again.path(),
            vol.join(format!(".keepsake-replaced-{}-1", std::process::id()))
        );
        assert!(trash.join("0/a-notes.txt").exists());
    }

    #[test]
    fn deep_trees_back_up_restore_and_are_replaced_with_64_descriptors() {
        with_descriptor_limit(
            "archive::restore::tests::deep_trees_back_up_restore_and_are_replaced_with_64_descriptors",
            64,
            || {
                require_root();
                let tmp = tempfile::tempdir().unwrap();
                let vol = tmp.path().join("vol");
                std::fs::create_dir_all(vol.join("Persistent")).unwrap();
                let files = deep_chain(&vol.join("Persistent"), "d", 3000);
                let backed_up = snapshot(&vol);
                let bytes: usize = (99..3000)
                    .step_by(100)
                    .map(|l| format!("level {l}\n").len())
                    .sum();
                let mut plaintext = Vec::new();
                let mut written = 0;
                crate::archive::write_tree(
                    &vol,
                    &[PathBuf::from("Persistent")],
                    &mut plaintext,
                    &mut |b| written = b,
                )
                .unwrap();
                assert_eq!((files, written), (30, bytes as u64));
                // Written after the backup: another deep tree, which the restore replaces.
                deep_chain(&vol.join("Persistent"), "e", 1100);
                std::fs::write(vol.join("Persistent/after.txt"), b"new").unwrap();

                let (volume, _) = safefs::open_dir(&vol, None).unwrap();
                let staging = scratch(&volume, ScratchKind::Staging).unwrap();
                crate::archive::read_tree(&mut &plaintext[..], Some(staging.path()), &mut |_| {})
                    .unwrap();
                let leftovers = apply(&volume, &staging, &["Persistent".into()], &[]).unwrap();
                assert_eq!(leftovers, Vec::<String>::new());
                drop(staging);
                assert_eq!(snapshot(&vol), backed_up);
                assert_eq!(keepsake_leftovers(&vol), Vec::<String>::new());
            },
        );
    }
}
