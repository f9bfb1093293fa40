//! Making features visible in the session, and taking them away again.
//!
//! Planning is a pure function from the resolved config and the mount table to a list of
//! actions; executing runs one feature's steps and records each thing it changed in a
//! journal, so that when step k fails, steps k-1..1 are undone and the feature leaves no
//! trace. Features fail alone: the others still activate.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::error::{Context, Error, Result};
use crate::host::mounts::{self, Mount};
use crate::persistence::config::{Entry, Method};
use crate::persistence::features::{ResolvedEntry, SourceGuard};
use crate::safefs::{self, Dir, Displaced, Made};

/// What to do for one feature line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Activate,
    AlreadyActive,
    Skip(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    pub resolved: ResolvedEntry,
    pub action: Action,
}

/// Whether a bind feature is active: its destination carries a mount of its source folder
/// of the volume.
pub fn bind_is_active(
    table: &[Mount],
    volume_dev: (u32, u32),
    entry_source: &Path,
    dest: &Path,
) -> bool {
    let root = if entry_source == Path::new(crate::persistence::config::VOLUME_ROOT) {
        PathBuf::from("/")
    } else {
        Path::new("/").join(entry_source)
    };
    table
        .iter()
        .any(|m| m.dev == volume_dev && m.mount_point == dest && m.root == root)
}

/// Plans activation of `entries` (in config order) against the current mount table.
pub fn plan_activation(
    entries: &[ResolvedEntry],
    mount_root: &Path,
    volume_dev: (u32, u32),
    table: &[Mount],
) -> Vec<Planned> {
    let mut planned = Vec::new();
    for resolved in entries {
        let e = &resolved.entry;
        let action =
            if e.destination.starts_with(mount_root) || mount_root.starts_with(&e.destination) {
                Action::Skip(format!(
                    "destination {} overlaps the volume's mount point {}",
                    e.destination.display(),
                    mount_root.display()
                ))
            } else if e.method.mounts() && is_active(table, volume_dev, mount_root, e) {
                Action::AlreadyActive
            } else {
                Action::Activate
            };
        planned.push(Planned {
            resolved: resolved.clone(),
            action,
        });
    }
    planned
}

/// One thing activation changed, to be undone in reverse order. Each is held by the
/// descriptor of its folder and its identity, never by a path (see `safefs`).
#[derive(Debug)]
enum Done {
    Made(Vec<Made>),
    /// A new source folder filled with a copy of the destination's contents.
    Populated(Dir),
    Mounted(PathBuf),
    Linked(Made),
    /// A file that was in a link's way, moved aside until the feature is active.
    Displaced(Displaced),
}

/// The changes made for one feature so far.
#[derive(Debug, Default)]
pub struct Journal {
    done: Vec<Done>,
}

impl Journal {
    /// Undoes everything recorded, newest first. Best effort: an undo that fails is
    /// reported, and the rest still run.
    pub fn undo(self) -> Vec<String> {
        let mut problems = Vec::new();
        for step in self.done.into_iter().rev() {
            let result = match step {
                Done::Made(made) => {
                    safefs::remove_made(&made);
                    Ok(())
                }
                Done::Populated(dir) => safefs::remove_contents(&dir).map_err(Error::from),
                Done::Displaced(file) => file.put_back().map_err(Error::from),
                Done::Mounted(path) => mounts::unmount(&path).map_err(Error::from),
                Done::Linked(link) => link.remove().map_err(Error::from),
            };
            if let Err(e) = result {
                problems.push(e.to_string());
            }
        }
        problems
    }

    /// The feature is active: files displaced by its links are dropped, as Tails does.
    fn commit(self) {
        for step in self.done {
            if let Done::Displaced(file) = step {
                let _ = file.drop_it();
            }
        }
    }
}

/// Activates one feature. On failure, whatever it changed is undone before returning.
pub fn activate(volume: &Dir, resolved: &ResolvedEntry) -> Result<()> {
    let mut journal = Journal::default();
    match activate_steps(volume, resolved, &mut journal) {
        Ok(()) => {
            journal.commit();
            Ok(())
        }
        Err(e) => {
            let problems = journal.undo();
            if problems.is_empty() {
                Err(e)
            } else {
                // Of the class of what went wrong first: an undo the live user foiled
                // (a folder moved meanwhile) is no internal error.
                Err(e.with_note(&format!("and undoing it failed: {}", problems.join("; "))))
            }
        }
    }
}

fn activate_steps(volume: &Dir, resolved: &ResolvedEntry, journal: &mut Journal) -> Result<()> {
    let e = &resolved.entry;
    // Judged before anything is made: the folders it looks at are ones the live user
    // cannot change (that is what it checks), so they stay as judged.
    refuse_an_untrusted_source(volume, resolved)?;
    match e.method {
        Method::File => return activate_file(volume, resolved, journal),
        Method::Union => return activate_union(volume, resolved, journal),
        Method::Bind | Method::Link => {}
    }
    let (dest, made) = safefs::open_dir(&e.destination, Some(resolved.owner))?;
    let dest_existed = made.is_empty();
    journal.done.push(Done::Made(made));
    let (source, made) = safefs::open_beneath(volume, &e.source, Some(resolved.owner))?;
    let source_existed = made.is_empty();
    journal.done.push(Done::Made(made));
    if resolved.strict && source_existed {
        let found = safefs::owner_of(&source)?;
        if found != resolved.owner {
            return Err(Error::Corrupt(format!(
                "{} must be owned by uid {} gid {} with mode {:04o} (it is uid {} gid {} mode {:04o}); not activated",
                source.path.display(),
                resolved.owner.uid,
                resolved.owner.gid,
                resolved.owner.mode,
                found.uid,
                found.gid,
                found.mode
            )));
        }
    }
    if e.method == Method::Link {
        return link_tree(&source, &dest, journal);
    }
    // A new folder starts as a copy of what the session has there (as Tails and live-boot
    // do with `cp -a`): enabling a feature keeps the data of the moment, and system
    // folders such as /etc/cups keep their default files.
    if !source_existed && dest_existed {
        journal.done.push(Done::Populated(source.try_clone()?));
        safefs::copy_contents(&dest, &source)?;
    }
    mounts::bind(&source, &dest)?;
    journal.done.push(Done::Mounted(e.destination.clone()));
    Ok(())
}

/// Tails' `file`: one file of the volume bind-mounted over one file of the session. A
/// missing source starts as a copy of the session's file (as Tails does with `cp -a`); a
/// missing destination is made empty, mode 0600.
fn activate_file(volume: &Dir, resolved: &ResolvedEntry, journal: &mut Journal) -> Result<()> {
    let e = &resolved.entry;
    let split = |p: &Path| match (p.parent(), p.file_name()) {
        (Some(parent), Some(name)) => Ok((parent.to_path_buf(), name.to_os_string())),
        _ => Err(Error::Usage(format!(
            "{} is not a file's path",
            p.display()
        ))),
    };
    let (dest_parent, dest_name) = split(&e.destination)?;
    let (source_parent, source_name) = split(&e.source)?;
    let (dest_dir, made) = safefs::open_dir(&dest_parent, Some(resolved.owner))?;
    journal.done.push(Done::Made(made));
    let (source_dir, made) = safefs::open_beneath(volume, &source_parent, Some(resolved.owner))?;
    journal.done.push(Done::Made(made));
    let file_owner = safefs::Owner {
        mode: 0o600,
        ..resolved.owner
    };
    let (dest, made) = safefs::open_file_in(&dest_dir, &dest_name, Some((file_owner, None)))?;
    let dest_existed = made.is_none();
    if let Some(m) = made {
        journal.done.push(Done::Made(vec![m]));
    }
    let template = dest_existed.then_some(&dest);
    let (source, made) =
        safefs::open_file_in(&source_dir, &source_name, Some((file_owner, template)))?;
    if let Some(m) = made {
        journal.done.push(Done::Made(vec![m]));
    }
    mounts::bind_file(&source, &dest, &dest_dir, &dest_name)?;
    journal.done.push(Done::Mounted(e.destination.clone()));
    Ok(())
}

/// live-boot's `union`: an overlay on the destination, with the changes in `SOURCE/rw`
/// (the overlay's root takes that folder's owner and mode: the destination's, when it is
/// made) and overlayfs' work folder in `SOURCE/work`. overlayfs takes those two by path,
/// so the source folder is made root's 0755 and every folder on the way must be root's
/// and writable by nobody else: then nobody can swap a symlink into the path.
fn activate_union(volume: &Dir, resolved: &ResolvedEntry, journal: &mut Journal) -> Result<()> {
    let e = &resolved.entry;
    let (dest, made) = safefs::open_dir(&e.destination, Some(resolved.owner))?;
    journal.done.push(Done::Made(made));
    let dest_owner = safefs::owner_of(&dest)?;
    let (source, made) = safefs::open_beneath(volume, &e.source, Some(safefs::Owner::ROOT_0755))?;
    journal.done.push(Done::Made(made));
    // live-boot makes the source the destination's (chown_ref): the layers below carry
    // that owner, the source itself becomes root's.
    safefs::set_owner(&source, safefs::Owner::ROOT_0755)?;
    let (_, made) = safefs::open_beneath(&source, Path::new("rw"), Some(dest_owner))?;
    journal.done.push(Done::Made(made));
    let work_owner = safefs::Owner {
        mode: 0o700,
        ..safefs::Owner::ROOT_0755
    };
    let (_, made) = safefs::open_beneath(&source, Path::new("work"), Some(work_owner))?;
    journal.done.push(Done::Made(made));
    refuse_a_path_others_can_change(volume, &e.source)?;
    let root = volume.path.join(&e.source);
    mounts::overlay(&dest, &root.join("rw"), &root.join("work"))?;
    journal.done.push(Done::Mounted(e.destination.clone()));
    Ok(())
}

/// Refuses when any folder from `/` down to `rel` in the volume could be changed by
/// someone other than root: owned by another user, or writable by a group other than
/// root's or by others, or through an ACL.
fn refuse_a_path_others_can_change(volume: &Dir, rel: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let refuse = |path: &Path, uid: u32, mode: u32| {
        Err(Error::UntrustedSource(format!(
            "{} (uid {uid}, mode {:04o}) could be changed by someone other than root, and overlayfs takes its folders by path; not activated",
            path.display(),
            mode & 0o7777
        )))
    };
    for above in volume.path.ancestors().skip(1) {
        let m =
            std::fs::symlink_metadata(above).context(|| format!("reading {}", above.display()))?;
        if m.uid() != 0 || m.mode() & 0o002 != 0 || (m.mode() & 0o020 != 0 && m.gid() != 0) {
            return refuse(above, m.uid(), m.mode());
        }
    }
    for (path, owner, acl) in safefs::folders_on_path(volume, rel)? {
        let acl_writes = acl.iter().any(|a| {
            (a.tag == safefs::AclEntry::USER || a.tag == safefs::AclEntry::GROUP)
                && a.perm & 0o2 != 0
        });
        if owner.uid != 0
            || owner.mode & 0o002 != 0
            || (owner.mode & 0o020 != 0 && owner.gid != 0)
            || acl_writes
        {
            return refuse(&path, owner.uid, owner.mode);
        }
    }
    Ok(())
}

/// Whether a feature line is active now: a bind or file mount of its source at its
/// destination, the overlay with its upper layer in the source, or (link) any link into
/// the source.
pub fn is_active(table: &[Mount], volume_dev: (u32, u32), mount_root: &Path, e: &Entry) -> bool {
    match e.method {
        Method::Bind | Method::File => bind_is_active(table, volume_dev, &e.source, &e.destination),
        Method::Union => mounts::union_is_active(table, mount_root, &e.source, &e.destination),
        Method::Link => links_into(&e.destination, &mount_root.join(&e.source)),
    }
}

/// Whether any entry of `dest` is a symlink into `source` (a link feature is active).
fn links_into(dest: &Path, source: &Path) -> bool {
    std::fs::read_dir(dest).is_ok_and(|rd| {
        rd.filter_map(|e| e.ok())
            .any(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.starts_with(source)))
    })
}

/// Refuses a feature whose source the live user could turn against the system (see
/// [`SourceGuard`]): checked at every activation, and on a restored persistence.conf. A
/// source not made yet is judged by the owner it would get and the folders above it.
pub fn refuse_an_untrusted_source(volume: &Dir, resolved: &ResolvedEntry) -> Result<()> {
    let Some(guard) = &resolved.guard else {
        return Ok(());
    };
    refuse_a_source_owned_by_the_live_user(resolved, guard, resolved.owner)?;
    let mut source = resolved.entry.source.as_path();
    if resolved.entry.method == Method::File {
        // One file: judged by its owner and mode, and by the folders down to it.
        let (folder, name) = (source.parent().unwrap_or(Path::new("")), source.file_name());
        if let (Ok((dir, _)), Some(name)) = (safefs::open_beneath(volume, folder, None), name)
            && let Ok((fd, _)) = safefs::open_file_in(&dir, name, None)
        {
            let st =
                nix::sys::stat::fstat(&fd).context(|| format!("reading {}", source.display()))?;
            let owner = safefs::Owner {
                uid: st.st_uid,
                gid: st.st_gid,
                mode: st.st_mode & 0o7777,
            };
            refuse_a_source_owned_by_the_live_user(resolved, guard, owner)?;
            if guard.writable_by_live_user(owner, &[]) {
                return Err(Error::UntrustedSource(format!(
                    "{} is writable by the live user, so it may not be bound over {}, outside their home; not activated",
                    source.display(),
                    resolved.entry.destination.display()
                )));
            }
        }
        source = folder;
    }
    for existing in source.ancestors() {
        match safefs::open_beneath(volume, existing, None) {
            Ok((dir, _)) => {
                refuse_a_source_the_live_user_can_change(volume, existing, resolved, guard)?;
                // (A file's folder holds other features' data: only the way to it counts.)
                if existing == source && resolved.entry.method != Method::File {
                    refuse_a_source_owned_by_the_live_user(
                        resolved,
                        guard,
                        safefs::owner_of(&dir)?,
                    )?;
                    refuse_contents_of_the_live_user(&dir, resolved, guard)?;
                }
                return Ok(());
            }
            Err(safefs::Error::NotFound(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// ... nor may anything in it belong to the live user or be writable by them (a restored
/// archive keeps owners: a file of the user's in `/etc/profile.d` would be theirs to
/// change). Symlinks are judged by the folders that hold them.
fn refuse_contents_of_the_live_user(
    source: &Dir,
    resolved: &ResolvedEntry,
    guard: &SourceGuard,
) -> Result<()> {
    let mut found = None;
    safefs::walk(source, |dir, _, entries| {
        if found.is_none()
            && let Some(e) = entries.iter().find(|e| {
                !e.is_symlink()
                    && (e.owner().uid == guard.live_uid
                        || guard.writable_by_live_user(e.owner(), &[]))
            })
        {
            found = Some(dir.path.join(&e.name));
        }
        Ok::<(), Error>(())
    })?;
    match found {
        None => Ok(()),
        Some(path) => Err(Error::UntrustedSource(format!(
            "{} belongs to or is writable by the live user, so {} may not be bound over {}, outside their home; not activated",
            path.display(),
            resolved.entry.source.display(),
            resolved.entry.destination.display()
        ))),
    }
}

/// A source bound outside the live user's home must belong to root or to the account
/// keepsake gives it: else the live user's files would appear over a system path.
fn refuse_a_source_owned_by_the_live_user(
    resolved: &ResolvedEntry,
    guard: &SourceGuard,
    owner: safefs::Owner,
) -> Result<()> {
    if guard.owners.contains(&owner.uid) && owner.uid != guard.live_uid {
        return Ok(());
    }
    Err(Error::UntrustedSource(format!(
        "{} would put a folder owned by uid {} over {}, outside the live user's home; only root's (or the feature's system account's) folders may go there; not activated",
        resolved.entry.source.display(),
        owner.uid,
        resolved.entry.destination.display()
    )))
}

/// ... nor may any folder from the volume's root down to that source be writable by the
/// live user, who could otherwise rename or fill it while it is bound.
fn refuse_a_source_the_live_user_can_change(
    volume: &Dir,
    down_to: &Path,
    resolved: &ResolvedEntry,
    guard: &SourceGuard,
) -> Result<()> {
    let folders = safefs::folders_on_path(volume, down_to)?;
    match folders
        .iter()
        .find(|(_, owner, acl)| guard.writable_by_live_user(*owner, acl))
    {
        None => Ok(()),
        Some((path, owner, _)) => Err(Error::UntrustedSource(format!(
            "{} is writable by the live user (uid {} gid {} mode {:04o}), so {} may not be bound over {}, outside their home; not activated",
            path.display(),
            owner.uid,
            owner.gid,
            owner.mode,
            resolved.entry.source.display(),
            resolved.entry.destination.display()
        ))),
    }
}

/// Symlinks every file of `source` into `dest`, recreating its folders (with the owner
/// and mode they have in `source`). A file already at the destination is replaced by the
/// link, as Tails does (and put back if the feature cannot be activated); a folder where
/// a file must go is an error.
fn link_tree(source: &Dir, dest: &Dir, journal: &mut Journal) -> Result<()> {
    let mut dest_cursor = safefs::Cursor::new(dest);
    safefs::walk(source, |src, rel, entries| {
        let dst = dest_cursor.open(rel).ok_or_else(|| {
            Error::Busy(format!(
                "{} was changed by someone else meanwhile; not activated",
                dest.path.join(rel).display()
            ))
        })?;
        let present = safefs::list(dst)?;
        for entry in entries {
            let name = entry.name.as_os_str();
            if entry.is_dir() {
                // Made now, so that the walk finds it when it enters the folder.
                let (_, made) = safefs::open_beneath(dst, Path::new(name), Some(entry.owner()))?;
                journal.done.push(Done::Made(made));
                continue;
            }
            let link_target = src.path.join(name);
            if let Some(there) = present.iter().find(|p| p.name == entry.name) {
                if safefs::link_target(dst, name).as_deref() == Some(link_target.as_path()) {
                    continue;
                }
                if there.is_dir() {
                    return Err(Error::Busy(format!(
                        "{} is a folder where the volume has a file; move it away first",
                        dst.path.join(name).display()
                    )));
                }
                journal
                    .done
                    .push(Done::Displaced(Displaced::move_aside(dst, there)?));
            }
            let link =
                safefs::symlink_in(dst, name, &link_target, entry.st.st_uid, entry.st.st_gid)?;
            journal.done.push(Done::Linked(link));
        }
        Ok(())
    })
}

/// What `lock` takes away, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Teardown {
    /// Remove the links a link feature made under this destination.
    Unlink {
        destination: PathBuf,
    },
    Unmount(PathBuf),
}

/// Plans deactivation: every mount of the volume and every mount stacked inside the
/// volume's binds, newest first; then link features' links; then the volume itself last.
pub fn plan_deactivation(
    table: &[Mount],
    volume_dev: (u32, u32),
    mount_root: &Path,
    link_destinations: &[PathBuf],
) -> Vec<Teardown> {
    let bind_points: Vec<&Path> = table
        .iter()
        .filter(|m| m.dev == volume_dev)
        .map(|m| m.mount_point.as_path())
        .collect();
    let mut seen = HashSet::new();
    let mut steps = Vec::new();
    for m in table.iter().rev() {
        let ours = m.dev == volume_dev
            || bind_points
                .iter()
                .any(|p| m.mount_point.starts_with(p) && m.mount_point != *p);
        if ours && m.mount_point != mount_root && seen.insert(m.mount_point.clone()) {
            steps.push(Teardown::Unmount(m.mount_point.clone()));
        }
    }
    for d in link_destinations.iter().rev() {
        steps.push(Teardown::Unlink {
            destination: d.clone(),
        });
    }
    if table
        .iter()
        .any(|m| m.mount_point == mount_root && m.dev == volume_dev)
    {
        steps.push(Teardown::Unmount(mount_root.to_path_buf()));
    }
    steps
}

/// Removes the symlinks under `destination` that point under `target_prefix` (the volume,
/// or one feature's folder of it). Other files, and the folders the links were in, stay:
/// they may hold what the user made there during the session. Walks by descriptors with a
/// bounded number of them open ([`safefs::walk`]), and removes each link through its
/// folder's descriptor, only while it is the link that was read.
pub fn unlink_tree(destination: &Path, target_prefix: &Path) -> Result<usize> {
    let root = match safefs::open_dir(destination, None) {
        Ok((root, _)) => root,
        Err(safefs::Error::NotFound(_)) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let mut removed = 0;
    safefs::walk(&root, |dir, _, entries| {
        for entry in entries.iter().filter(|e| e.is_symlink()) {
            let ours =
                safefs::link_target(dir, &entry.name).is_some_and(|t| t.starts_with(target_prefix));
            if ours && safefs::remove_entry(dir, entry).is_ok() {
                removed += 1;
            }
        }
        Ok::<(), Error>(())
    })?;
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::mounts::parse_mountinfo;
    use crate::persistence::config::Entry;
    use crate::safefs::Owner;

    const VOL: (u32, u32) = (254, 0);

    fn resolved(dest: &str, source: &str, method: Method) -> ResolvedEntry {
        ResolvedEntry {
            feature: source.to_string(),
            entry: Entry {
                destination: dest.into(),
                source: source.into(),
                method,
            },
            owner: Owner {
                uid: 1000,
                gid: 1000,
                mode: 0o700,
            },
            strict: false,
            service: None,
            guard: None,
        }
    }

    const TABLE: &str = "\
22 1 0:21 / / rw - tmpfs tmpfs rw
40 22 254:0 / /live/persistence/TailsData_unlocked rw,nosuid,nodev - ext4 /dev/mapper/TailsData_unlocked rw
41 22 254:0 /Persistent /home/amnesia/Persistent rw,nosuid,nodev - ext4 /dev/mapper/TailsData_unlocked rw
42 22 254:0 /gnupg /home/amnesia/.gnupg rw,nosuid,nodev - ext4 /dev/mapper/TailsData_unlocked rw
43 41 0:50 / /home/amnesia/Persistent/usb rw - vfat /dev/sdc1 rw
44 22 0:51 / /media/other rw - vfat /dev/sdd1 rw
";

    #[test]
    fn activation_skips_active_and_overlapping_features() {
        let table = parse_mountinfo(TABLE);
        let root = Path::new("/live/persistence/TailsData_unlocked");
        let entries = vec![
            resolved("/home/amnesia/Persistent", "Persistent", Method::Bind),
            resolved("/home/amnesia/.ssh", "openssh-client", Method::Bind),
            resolved("/live/persistence/TailsData_unlocked/x", "x", Method::Bind),
            resolved("/live", "live", Method::Bind),
            resolved("/home/amnesia", "dotfiles", Method::Link),
        ];
        let plan = plan_activation(&entries, root, VOL, &table);
        let actions: Vec<_> = plan.iter().map(|p| p.action.clone()).collect();
        assert_eq!(actions[0], Action::AlreadyActive);
        assert_eq!(actions[1], Action::Activate);
        assert!(matches!(&actions[2], Action::Skip(r) if r.contains("overlaps")));
        assert!(matches!(&actions[3], Action::Skip(r) if r.contains("overlaps")));
        assert_eq!(actions[4], Action::Activate);
    }

    #[test]
    fn a_bind_of_another_source_at_the_destination_is_not_active() {
        let table = parse_mountinfo(TABLE);
        assert!(bind_is_active(
            &table,
            VOL,
            Path::new("gnupg"),
            Path::new("/home/amnesia/.gnupg")
        ));
        assert!(!bind_is_active(
            &table,
            VOL,
            Path::new("other"),
            Path::new("/home/amnesia/.gnupg")
        ));
        assert!(!bind_is_active(
            &table,
            (254, 1),
            Path::new("gnupg"),
            Path::new("/home/amnesia/.gnupg")
        ));
    }

    #[test]
    fn deactivation_unmounts_newest_first_and_the_volume_last() {
        let table = parse_mountinfo(TABLE);
        let root = Path::new("/live/persistence/TailsData_unlocked");
        let steps = plan_deactivation(&table, VOL, root, &[PathBuf::from("/home/amnesia")]);
        assert_eq!(
            steps,
            vec![
                Teardown::Unmount("/home/amnesia/Persistent/usb".into()),
                Teardown::Unmount("/home/amnesia/.gnupg".into()),
                Teardown::Unmount("/home/amnesia/Persistent".into()),
                Teardown::Unlink {
                    destination: "/home/amnesia".into()
                },
                Teardown::Unmount(root.into()),
            ]
        );
    }

    #[test]
    fn deactivation_of_an_unmounted_volume_is_empty() {
        let table = parse_mountinfo("22 1 0:21 / / rw - tmpfs tmpfs rw\n");
        assert!(plan_deactivation(&table, VOL, Path::new("/x"), &[]).is_empty());
    }

    #[test]
    fn link_tree_links_files_and_undo_removes_them() {
        let tmp = tempfile::tempdir().unwrap();
        let vol = tmp.path().join("vol");
        let home = tmp.path().join("home");
        std::fs::create_dir_all(vol.join("dotfiles/.config/app")).unwrap();
        std::fs::write(vol.join("dotfiles/.bashrc"), "alias x=y\n").unwrap();
        std::fs::write(vol.join("dotfiles/.config/app/rc"), "k=v\n").unwrap();
        std::fs::create_dir(&home).unwrap();
        std::fs::write(home.join("keep-me"), "mine").unwrap();
        let (volume, _) = safefs::open_dir(&vol, None).unwrap();
        let me = Owner {
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            mode: 0o700,
        };
        let r = ResolvedEntry {
            owner: me,
            ..resolved(home.to_str().unwrap(), "dotfiles", Method::Link)
        };
        activate(&volume, &r).unwrap();
        assert_eq!(
            std::fs::read_link(home.join(".bashrc")).unwrap(),
            vol.join("dotfiles/.bashrc")
        );
        assert_eq!(
            std::fs::read_to_string(home.join(".config/app/rc")).unwrap(),
            "k=v\n"
        );
        // Running again is harmless: the links are already there.
        activate(&volume, &r).unwrap();
        assert_eq!(unlink_tree(&home, &vol).unwrap(), 2);
        assert!(!home.join(".bashrc").exists());
        assert_eq!(
            std::fs::read_to_string(home.join("keep-me")).unwrap(),
            "mine"
        );
    }

    fn me(mode: u32) -> Owner {
        Owner {
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            mode,
        }
    }

    #[test]
    fn a_failed_link_feature_leaves_nothing_behind_and_puts_files_back() {
        let tmp = tempfile::tempdir().unwrap();
        let vol = tmp.path().join("vol");
        let home = tmp.path().join("home");
        std::fs::create_dir_all(vol.join("dotfiles")).unwrap();
        std::fs::write(vol.join("dotfiles/.a"), "a").unwrap();
        std::fs::write(vol.join("dotfiles/.b"), "b").unwrap();
        std::fs::write(vol.join("dotfiles/.c"), "c").unwrap();
        std::fs::create_dir(&home).unwrap();
        std::fs::write(home.join(".b"), "the session's own").unwrap();
        std::fs::create_dir(home.join(".c")).unwrap();
        let (volume, _) = safefs::open_dir(&vol, None).unwrap();
        let r = ResolvedEntry {
            owner: me(0o700),
            ..resolved(home.to_str().unwrap(), "dotfiles", Method::Link)
        };
        let err = activate(&volume, &r).unwrap_err();
        assert!(err.to_string().contains(".c is a folder"), "{err}");
        assert!(
            std::fs::symlink_metadata(home.join(".a")).is_err(),
            ".a was rolled back"
        );
        assert_eq!(
            std::fs::read_to_string(home.join(".b")).unwrap(),
            "the session's own"
        );
        assert!(
            !home.join(".b.keepsake-displaced").exists()
                && !home.join("..b.keepsake-displaced").exists()
        );
        // Without the folder in the way, the file is replaced by the link.
        std::fs::remove_dir(home.join(".c")).unwrap();
        activate(&volume, &r).unwrap();
        assert_eq!(
            std::fs::read_link(home.join(".b")).unwrap(),
            vol.join("dotfiles/.b")
        );
        assert_eq!(
            std::fs::read_dir(&home).unwrap().count(),
            3,
            "no displaced copy left"
        );
    }

    #[test]
    fn a_new_bind_source_starts_as_a_copy_and_is_emptied_on_failure() {
        let tmp = tempfile::tempdir().unwrap();
        let vol = tmp.path().join("vol");
        std::fs::create_dir(&vol).unwrap();
        let dest = tmp.path().join("etc-cups");
        std::fs::create_dir(&dest).unwrap();
        std::fs::write(dest.join("cupsd.conf"), "Listen localhost:631\n").unwrap();
        let (volume, _) = safefs::open_dir(&vol, None).unwrap();
        let r = ResolvedEntry {
            owner: me(0o755),
            ..resolved(dest.to_str().unwrap(), "cups-configuration", Method::Bind)
        };
        // Not root in unit tests: the bind fails after the copy, which must be undone.
        if nix::unistd::geteuid().is_root() {
            // As root the bind succeeds; the copy is checked through the mount.
            activate(&volume, &r).unwrap();
            assert_eq!(
                std::fs::read_to_string(vol.join("cups-configuration/cupsd.conf")).unwrap(),
                "Listen localhost:631\n"
            );
            mounts::unmount(&dest).unwrap();
        } else {
            activate(&volume, &r).unwrap_err();
            assert!(
                !vol.join("cups-configuration").exists(),
                "the copied source was removed"
            );
        }
        assert_eq!(
            std::fs::read_to_string(dest.join("cupsd.conf")).unwrap(),
            "Listen localhost:631\n"
        );
    }

    /// Unmounts a test's filesystem when the test ends, passed or not.
    struct Unmount(PathBuf);

    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }

    /// A folder under /run (root's 0755 all the way up), as a volume's mount root is.
    fn root_only_tempdir() -> tempfile::TempDir {
        assert!(nix::unistd::geteuid().is_root(), "this test needs root");
        tempfile::Builder::new()
            .prefix("keepsake-test-")
            .tempdir_in("/run")
            .unwrap()
    }

    #[test]
    fn a_file_feature_binds_one_file_and_starts_as_a_copy() {
        let tmp = root_only_tempdir();
        let vol = tmp.path().join("vol");
        let etc = tmp.path().join("etc");
        std::fs::create_dir_all(&vol).unwrap();
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(etc.join("hosts"), "127.0.0.1 localhost\n").unwrap();
        // A filesystem of its own, as the volume is: the bind's root is then /hosts.
        nix::mount::mount(
            Some("tmpfs"),
            &vol,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        let _unmount = Unmount(vol.clone());
        let (volume, _) = safefs::open_dir(&vol, None).unwrap();
        let dest = etc.join("hosts");
        let r = ResolvedEntry {
            owner: Owner::ROOT_0755,
            ..resolved(dest.to_str().unwrap(), "hosts", Method::File)
        };
        activate(&volume, &r).unwrap();
        let table = mounts::read_mountinfo().unwrap();
        let dev = std::os::unix::fs::MetadataExt::dev(&std::fs::metadata(&vol).unwrap());
        let dev = (
            nix::sys::stat::major(dev) as u32,
            nix::sys::stat::minor(dev) as u32,
        );
        assert!(
            is_active(&table, dev, &vol, &r.entry),
            "a bind of /hosts at {dest:?}"
        );
        // The new source is a copy; writes through the destination land in the volume.
        std::fs::write(&dest, "10.0.0.1 kept\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(vol.join("hosts")).unwrap(),
            "10.0.0.1 kept\n"
        );
        mounts::unmount(&dest).unwrap();
        assert_eq!(
            std::fs::read_to_string(&dest).unwrap(),
            "127.0.0.1 localhost\n",
            "the session's own file is back"
        );
        // A symlink in place of the source is refused, nothing is mounted.
        std::fs::remove_file(vol.join("hosts")).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", vol.join("hosts")).unwrap();
        let err = activate(&volume, &r).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        assert_eq!(
            std::fs::read_to_string(&dest).unwrap(),
            "127.0.0.1 localhost\n"
        );
    }

    #[test]
    fn a_union_feature_overlays_the_destination_with_changes_in_the_volume() {
        let tmp = root_only_tempdir();
        let vol = tmp.path().join("vol");
        let srv = tmp.path().join("srv");
        std::fs::create_dir_all(&vol).unwrap();
        std::fs::create_dir_all(&srv).unwrap();
        std::fs::write(srv.join("from-the-image"), "lower\n").unwrap();
        let (volume, _) = safefs::open_dir(&vol, None).unwrap();
        let r = ResolvedEntry {
            owner: Owner::ROOT_0755,
            ..resolved(srv.to_str().unwrap(), "srv", Method::Union)
        };
        activate(&volume, &r).unwrap();
        let table = mounts::read_mountinfo().unwrap();
        assert!(
            is_active(&table, (0, 0), &vol, &r.entry),
            "an overlay with upper vol/srv/rw"
        );
        assert_eq!(
            std::fs::read_to_string(srv.join("from-the-image")).unwrap(),
            "lower\n"
        );
        std::fs::write(srv.join("new"), "upper\n").unwrap();
        mounts::unmount(&srv).unwrap();
        assert_eq!(
            std::fs::read_to_string(vol.join("srv/rw/new")).unwrap(),
            "upper\n"
        );
        assert!(
            !srv.join("new").exists(),
            "the change lives in the volume only"
        );
        let (uid, mode) = {
            use std::os::unix::fs::MetadataExt;
            let m = std::fs::metadata(vol.join("srv")).unwrap();
            (m.uid(), m.mode() & 0o7777)
        };
        assert_eq!((uid, mode), (0, 0o755), "the union's folder is root's");
    }

    #[test]
    fn a_union_under_a_folder_others_can_write_is_refused() {
        assert!(nix::unistd::geteuid().is_root(), "this test needs root");
        // /tmp is world-writable: a symlink could be swapped into the overlay's paths.
        let tmp = tempfile::tempdir_in("/tmp").unwrap();
        let vol = tmp.path().join("vol");
        let srv = tmp.path().join("srv");
        std::fs::create_dir_all(&vol).unwrap();
        std::fs::create_dir_all(&srv).unwrap();
        let (volume, _) = safefs::open_dir(&vol, None).unwrap();
        let r = ResolvedEntry {
            owner: Owner::ROOT_0755,
            ..resolved(srv.to_str().unwrap(), "srv", Method::Union)
        };
        let err = activate(&volume, &r).unwrap_err();
        assert!(err.to_string().contains("/tmp (uid 0, mode 1777)"), "{err}");
        let table = mounts::read_mountinfo().unwrap();
        assert!(
            !table.iter().any(|m| m.mount_point == srv),
            "nothing mounted"
        );
        assert!(!vol.join("srv").exists(), "and what was made is gone");
    }

    #[test]
    fn a_strict_source_with_the_wrong_mode_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let vol = tmp.path().join("vol");
        std::fs::create_dir_all(vol.join("tor")).unwrap();
        std::fs::set_permissions(
            vol.join("tor"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let (volume, _) = safefs::open_dir(&vol, None).unwrap();
        let me = Owner {
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            mode: 0o700,
        };
        let dest = tmp.path().join("dest");
        let r = ResolvedEntry {
            owner: me,
            strict: true,
            ..resolved(dest.to_str().unwrap(), "tor", Method::Bind)
        };
        let err = activate(&volume, &r).unwrap_err();
        assert!(err.to_string().contains("mode 0700 (it is"), "{err}");
        assert!(err.to_string().contains("mode 0755"), "{err}");
        assert!(!dest.exists(), "nothing made at the destination");
    }

    #[test]
    fn a_missing_source_is_created_and_removed_again_on_failure() {
        let tmp = tempfile::tempdir().unwrap();
        let vol = tmp.path().join("vol");
        std::fs::create_dir(&vol).unwrap();
        // The destination runs through a symlink: refused after the source was made.
        std::os::unix::fs::symlink("/etc", tmp.path().join("evil")).unwrap();
        let (volume, _) = safefs::open_dir(&vol, None).unwrap();
        let me = Owner {
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            mode: 0o700,
        };
        let dest = tmp.path().join("evil/keepsake-test");
        let r = ResolvedEntry {
            owner: me,
            ..resolved(dest.to_str().unwrap(), "src", Method::Bind)
        };
        let err = activate(&volume, &r).unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        assert!(!vol.join("src").exists(), "created source rolled back");
        assert!(!Path::new("/etc/keepsake-test").exists());
    }

    /// A guard for a live user with uid/gid 4242 (a uid the test's files never have).
    fn guard() -> SourceGuard {
        SourceGuard {
            owners: vec![0],
            live_uid: 4242,
            live_gids: vec![4242],
        }
    }

    /// Sets an access ACL giving `uid` the permissions `perm` (and the mask rwx).
    fn set_acl(path: &Path, uid: u32, perm: u16) {
        let entry = |tag, perm, id| safefs::AclEntry { tag, perm, id };
        let acl = safefs::acl_xattr(&[
            entry(safefs::AclEntry::USER_OBJ, 7, u32::MAX),
            entry(safefs::AclEntry::USER, perm, uid),
            entry(safefs::AclEntry::GROUP_OBJ, 5, u32::MAX),
            entry(safefs::AclEntry::MASK, 7, u32::MAX),
            entry(safefs::AclEntry::OTHER, 5, u32::MAX),
        ]);
        let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: NUL-terminated path and name, and a buffer of the length given.
        let rc = unsafe {
            libc::setxattr(
                path.as_ptr(),
                c"system.posix_acl_access".as_ptr(),
                acl.as_ptr().cast(),
                acl.len(),
                0,
            )
        };
        assert_eq!(rc, 0, "setting an ACL: {}", std::io::Error::last_os_error());
    }

    fn chown(path: &Path, uid: u32, gid: u32, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
        std::fs::set_permissions(path, PermissionsExt::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_source_the_live_user_can_change_is_never_bound_over_a_system_path() {
        // As root (how the suite runs): the files can be given to the "live user".
        assert!(nix::unistd::geteuid().is_root(), "this test needs root");
        let tmp = tempfile::tempdir().unwrap();
        let vol = tmp.path().join("vol");
        std::fs::create_dir_all(vol.join("Persistent/sbin")).unwrap();
        std::fs::write(vol.join("Persistent/sbin/ls"), "#!/bin/sh\necho owned\n").unwrap();
        chown(&vol, 0, 0, 0o770);
        chown(&vol.join("Persistent"), 4242, 4242, 0o700);
        chown(&vol.join("Persistent/sbin"), 0, 0, 0o755);
        let sbin = tmp.path().join("usr-local-sbin");
        std::fs::create_dir(&sbin).unwrap();
        let (volume, _) = safefs::open_dir(&vol, None).unwrap();
        let r = ResolvedEntry {
            owner: Owner::ROOT_0755,
            guard: Some(guard()),
            ..resolved(sbin.to_str().unwrap(), "Persistent/sbin", Method::Bind)
        };
        // sbin itself is root's, but Persistent above it is the user's: refused.
        let err = activate(&volume, &r).unwrap_err();
        assert!(matches!(err, Error::UntrustedSource(_)), "{err}");
        assert!(
            err.to_string()
                .contains("Persistent is writable by the live user"),
            "{err}"
        );
        assert!(!sbin.join("ls").exists(), "nothing was bound");
        // A source owned by the live user, in a root-owned path: refused too.
        std::fs::create_dir(vol.join("tools")).unwrap();
        chown(&vol.join("tools"), 4242, 4242, 0o500);
        let r = ResolvedEntry {
            owner: Owner::ROOT_0755,
            guard: Some(guard()),
            ..resolved(sbin.to_str().unwrap(), "tools", Method::Bind)
        };
        let err = activate(&volume, &r).unwrap_err();
        assert!(err.to_string().contains("owned by uid 4242"), "{err}");
        // Group-writable by one of the user's groups, or writable by all: refused.
        for (gid, mode) in [(4242, 0o775), (0, 0o777)] {
            chown(&vol.join("tools"), 0, gid, mode);
            let err = activate(&volume, &r).unwrap_err();
            assert!(
                err.to_string().contains("is writable by the live user"),
                "{err}"
            );
        }
        // Root's by owner and mode, but an ACL lets the user write: refused. Tails' own
        // ACL on the mount root (user:amnesia:x) lets nothing be written, and passes.
        chown(&vol.join("tools"), 0, 0, 0o755);
        set_acl(&vol.join("tools"), 4242, 0o7);
        let err = activate(&volume, &r).unwrap_err();
        assert!(
            err.to_string().contains("is writable by the live user"),
            "{err}"
        );
        set_acl(&vol.join("tools"), 4242, 0o1);
        // A file of the user's inside (a restored archive keeps owners): refused.
        std::fs::write(vol.join("tools/profile.sh"), "echo hi\n").unwrap();
        chown(&vol.join("tools/profile.sh"), 4242, 4242, 0o644);
        let err = activate(&volume, &r).unwrap_err();
        assert!(err.to_string().contains("profile.sh belongs to"), "{err}");
        chown(&vol.join("tools/profile.sh"), 0, 0, 0o644);
        // Root's all the way down: bound (the negative control: the guard lets it pass).
        activate(&volume, &r).unwrap();
        mounts::unmount(&sbin).unwrap();
    }
}
