//! Refusing a feature whose source someone other than root could change: the live user
//! (a source outside their home, see [`SourceGuard`]), or anyone (overlayfs' folders,
//! taken by path). Judged before anything is made, and again on a restored config.

use std::path::Path;

use crate::context::Context;
use crate::host::writers::Writers;
use crate::persistence::config::{Entry, Method};
use crate::persistence::features::{ResolvedEntry, SourceGuard};
use crate::safefs::{self, Dir};
use crate::session::error::{Error, Result};

/// Why `entry` is not activated from a volume someone other than root could have written
/// (see [`crate::host::writers`]), if it is not: such a volume is the live user's, however
/// its files are owned, so it may only bind or link into the live user's `home` (none
/// known: nowhere), and never as a union (overlayfs takes its folders by path). No flag
/// lifts this: a partition only root can write is the way to system features.
pub fn refuse_on_a_volume_not_roots(
    writers: &Writers,
    entry: &Entry,
    home: Option<&Path>,
) -> Option<String> {
    let why = writers.why()?;
    let into_home = home.is_some_and(|h| entry.destination.starts_with(h));
    if into_home && entry.method != Method::Union {
        return None;
    }
    Some(format!(
        "not activated: someone other than root could have written this volume ({why}), so it is treated as the live user's and may only bind or link into {}{}; to keep {} persistent, use a volume only root can write (a partition: keepsake create --device)",
        home.map_or_else(
            || "the live user's home (none is known)".to_string(),
            |h| h.display().to_string()
        ),
        if into_home { ", never as a union" } else { "" },
        entry.destination.display()
    ))
}

/// Refuses when any folder from `/` down to `rel` in the volume could be changed by
/// someone other than root: owned by another user, or writable by a group other than
/// root's or by others, or through an ACL.
pub(crate) fn refuse_a_path_others_can_change(volume: &Dir, rel: &Path) -> Result<()> {
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
