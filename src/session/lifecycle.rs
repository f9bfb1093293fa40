//! The executor: runs a plan ([`super::plan`]) against the running system, feature by
//! feature, each through its journal ([`super::journal`]), with tor held stopped while
//! its state folder changes ([`super::tor::TorPause`]). Used by unlock and `feature
//! enable` (activate: features fail alone), `feature disable` (deactivate: all or
//! nothing), and `lock` (tear down; a failure puts everything back, which is activation
//! again).

use std::path::{Path, PathBuf};

use crate::host::mounts::{self, Mount};
use crate::persistence::config::Method;
use crate::persistence::features::{ResolvedEntry, Service, SystemHost};
use crate::persistence::files;
use crate::persistence::layout::Layout;
use crate::safefs::Dir;
use crate::session::error::{Error, Result};
use crate::session::journal;
use crate::session::plan::{self, Action, Teardown};
use crate::session::record::Record;
use crate::session::report::{FeatureReport, FeatureState};
use crate::session::tor::{self, TorRestart};
use crate::session::unlocked::Unlocked;

/// A shared volume mount (every mount is, under systemd) is made private before features
/// are bound from it, so that binds do not join its peer group; one that is not shared
/// (private, a slave, unbindable) is left as it is.
fn keep_binds_out_of_the_volume(table: &[mounts::Mount], mount_root: &Path) -> Result<()> {
    let shared = table
        .iter()
        .rev()
        .find(|m| m.mount_point == mount_root)
        .is_some_and(|m| m.shared.is_some());
    if shared {
        mounts::make_private(mount_root)?;
    }
    Ok(())
}

/// Activates every entry that is not active yet; each failure is reported and undone,
/// and does not stop the others.
pub fn activate_features(
    volume: &Dir,
    mount_root: &Path,
    volume_dev: (u32, u32),
    entries: &[ResolvedEntry],
    table: &[mounts::Mount],
) -> Result<Vec<FeatureReport>> {
    let plan = plan::plan_activation(entries, mount_root, volume_dev, table);
    if plan.iter().any(|p| p.action == Action::Activate) {
        keep_binds_out_of_the_volume(table, mount_root)?;
    }
    let tor_involved = plan
        .iter()
        .any(|p| p.action == Action::Activate && p.resolved.service == Some(Service::Tor));
    let (mut reports, restarted) = tor::around(tor_involved, || {
        let reports: Vec<FeatureReport> = plan
            .into_iter()
            .map(|planned| {
                let r = &planned.resolved;
                match planned.action {
                    Action::AlreadyActive => FeatureReport::new(r, FeatureState::Active, None),
                    Action::Skip(why) => FeatureReport::new(r, FeatureState::Skipped, Some(why)),
                    Action::Activate => match journal::activate(volume, r) {
                        Ok(()) => FeatureReport::new(r, FeatureState::Active, None),
                        Err(e) => FeatureReport::new(r, FeatureState::Failed, Some(e.to_string())),
                    },
                }
            })
            .collect();
        // tor starts again only on the state it was stopped for: if that failed to bind,
        // it stays stopped rather than run on the amnesic folder.
        let tor_ok = reports
            .iter()
            .zip(entries)
            .all(|(rep, e)| e.service != Some(Service::Tor) || rep.active);
        (reports, tor_ok)
    })?;
    for (report, entry) in reports.iter_mut().zip(entries) {
        if entry.service != Some(Service::Tor) {
            continue;
        }
        match &restarted {
            TorRestart::Failed(e) => {
                report.state = FeatureState::Failed;
                report.error = Some(e.clone());
            }
            TorRestart::LeftStopped if report.state == FeatureState::Failed => {
                let why = report.error.take().unwrap_or_default();
                report.error = Some(format!("{why}; tor is left stopped"));
            }
            _ => {}
        }
    }
    Ok(reports)
}

/// Deactivates entries (in reverse order): unmounts binds, removes links. When one cannot
/// be deactivated (a process holds it open), those already deactivated are activated again
/// and the error is returned: all or nothing.
pub fn deactivate_features(
    volume: &Dir,
    mount_root: &Path,
    volume_dev: (u32, u32),
    entries: &[ResolvedEntry],
) -> Result<TorRestart> {
    let table = mounts::read_mountinfo()?;
    let tor_involved = entries.iter().any(|r| {
        r.service == Some(Service::Tor)
            && plan::bind_is_active(&table, volume_dev, &r.entry.source, &r.entry.destination)
    });
    // tor is started again whether or not the change went through: on the amnesic folder
    // after a disable, or on the persistent one after a rollback.
    let (result, restart) = tor::around(tor_involved, || {
        (
            deactivate_all_or_none(volume, mount_root, volume_dev, entries, &table),
            true,
        )
    })?;
    result.map(|()| restart)
}

fn deactivate_all_or_none(
    volume: &Dir,
    mount_root: &Path,
    volume_dev: (u32, u32),
    entries: &[ResolvedEntry],
    table: &[Mount],
) -> Result<()> {
    let mut done: Vec<&ResolvedEntry> = Vec::new();
    // Deepest destination first, whatever order the features were named in: a feature
    // mounted inside another's folder keeps that one busy until it goes.
    let mut order: Vec<&ResolvedEntry> = entries.iter().rev().collect();
    order.sort_by_key(|r| std::cmp::Reverse(r.entry.destination.components().count()));
    for r in order {
        if let Err(err) = deactivate_one(mount_root, volume_dev, r, table) {
            // Rolled back by activating again, newest first undone last; binds from a
            // private mount, as every activation (a volume opened at boot is shared).
            let _ = keep_binds_out_of_the_volume(table, mount_root);
            for r in done.iter().rev() {
                let _ = journal::activate(volume, r);
            }
            return Err(err);
        }
        done.push(r);
    }
    Ok(())
}

/// Takes one feature away: its links removed, or its mount unmounted (a busy one named
/// with the processes that hold the volume).
fn deactivate_one(
    mount_root: &Path,
    volume_dev: (u32, u32),
    r: &ResolvedEntry,
    table: &[Mount],
) -> Result<()> {
    let e = &r.entry;
    if e.method == Method::Link {
        journal::unlink_tree(&e.destination, &mount_root.join(&e.source))?;
    } else if plan::is_active(table, volume_dev, mount_root, e) {
        mounts::unmount(&e.destination)
            .map_err(Error::from)
            .map_err(|err| {
                if !err.is_in_use() {
                    return err;
                }
                // A feature nested inside keeps it busy without any process.
                if let Some(inner) = table.iter().find(|m| {
                    m.mount_point != e.destination && m.mount_point.starts_with(&e.destination)
                }) {
                    return Error::InUse(format!(
                        "{} has {} mounted inside it; disable the feature there first",
                        e.destination.display(),
                        inner.mount_point.display()
                    ));
                }
                Error::InUse(format!(
                    "{} is in use ({}); close what uses it and try again",
                    e.destination.display(),
                    crate::host::processes::holders_of(volume_dev)
                        .iter()
                        .map(|h| h.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
    }
    Ok(())
}

/// The current state of each entry, from the mount table (bind) or the links (link).
pub fn feature_states(
    entries: &[ResolvedEntry],
    table: &[Mount],
    volume_dev: (u32, u32),
    mount_root: &Path,
    record: Option<&Record>,
) -> Vec<FeatureReport> {
    entries
        .iter()
        .map(|r| {
            let e = &r.entry;
            let active = plan::is_active(table, volume_dev, mount_root, e);
            let failure = record
                .and_then(|rec| rec.failed.iter().find(|f| f.source == e.source))
                .map(|f| f.error.clone());
            let state = match (active, &failure) {
                (true, _) => FeatureState::Active,
                (false, Some(_)) => FeatureState::Failed,
                (false, None) => FeatureState::Inactive,
            };
            FeatureReport::new(r, state, if active { None } else { failure })
        })
        .collect()
}

/// What a teardown took away.
#[derive(Debug, Default)]
pub struct TornDown {
    pub unmounted: Vec<PathBuf>,
    pub links_removed: usize,
}

/// Runs `lock`'s plan ([`plan::plan_teardown`]) in order. On failure the volume is put
/// back as it was ([`restore`]) before the error is returned: fully locked or fully
/// unlocked.
pub fn tear_down(
    plan: &[Teardown],
    layout: &Layout,
    unlocked: &Unlocked,
    mount_root: &Path,
) -> Result<TornDown> {
    let mut done = TornDown::default();
    for step in plan {
        let result = match step {
            Teardown::Unmount(path) => mounts::unmount(path)
                .map_err(Error::from)
                .map_err(|e| {
                    if e.is_in_use() {
                        Error::InUse(format!("{e}; the volume stays unlocked"))
                    } else {
                        e
                    }
                })
                .map(|()| done.unmounted.push(path.clone())),
            Teardown::Unlink { destination } => {
                journal::unlink_tree(destination, mount_root).map(|n| done.links_removed += n)
            }
        };
        if let Err(e) = result {
            restore(layout, unlocked);
            return Err(e);
        }
    }
    Ok(done)
}

/// After a failed teardown (or a mapping that would not close), puts back what was taken
/// away: the volume mounted again and its features activated, so that the volume is
/// either fully locked or fully unlocked.
pub fn restore(layout: &Layout, before: &Unlocked) {
    let Some(root) = &before.mount_root else {
        return;
    };
    let table = mounts::read_mountinfo().unwrap_or_default();
    if !table
        .iter()
        .any(|m| &m.mount_point == root && m.dev == before.mapping.dev)
    {
        let _ = mounts::mount_ext4(&layout.mapper_path(), root);
    }
    let Ok((dir, _)) = crate::safefs::open_dir(root, None) else {
        return;
    };
    if let Ok(Some(config)) = files::read_config(&dir, layout.profile.into()) {
        let host = SystemHost::new(None);
        let (entries, _) = plan::resolve_entries(&config, &host, &before.writers());
        let _ = activate_features(&dir, root, before.mapping.dev, &entries, &table);
    }
}
