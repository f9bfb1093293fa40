//! `keepsake lock`: deactivate features → unmount → close → release the loop device →
//! drop caches → verify that nothing of the volume remains.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::binder::{self, Teardown};
use crate::cli::{GlobalArgs, LockArgs};
use crate::config::Method;
use crate::devices;
use crate::error::{Error, Result};
use crate::features::SystemHost;
use crate::layout::Layout;
use crate::mounts;
use crate::output::Output;
use crate::processes::{self, Holder};
use crate::tor;
use crate::unlocked::{self, Unlocked};
use crate::volume;

#[derive(Debug, Serialize)]
struct LockReport {
    was_unlocked: bool,
    backing: Option<PathBuf>,
    unmounted: Vec<PathBuf>,
    links_removed: usize,
    ended_processes: Vec<Holder>,
    caches_dropped: bool,
    leftovers: Vec<String>,
    /// What became of tor, when its state was part of the volume.
    tor: Option<String>,
}

pub fn run(global: &GlobalArgs, args: LockArgs, out: Output) -> Result<()> {
    super::require_root()?;
    let _lock = super::exclusive()?;
    let mut layout = super::layout(global, None);
    let Some(unlocked) = Unlocked::find(&layout)? else {
        let leftovers = verify_gone(&layout, None);
        let report = LockReport {
            was_unlocked: false,
            backing: None,
            unmounted: vec![],
            links_removed: 0,
            ended_processes: vec![],
            caches_dropped: false,
            leftovers: leftovers.clone(),
            tor: None,
        };
        out.result(&report, |_| "nothing is unlocked".to_string());
        return leftovers_error(leftovers);
    };
    layout.mapping = unlocked.mapping.name.clone();
    if let Some(root) = &unlocked.mount_root {
        layout.mount_root = root.clone();
    }
    // tor must not run while its state folder is taken away: stop it first (it would
    // also count as a process holding the volume), start it again afterwards.
    let tor_bound = unlocked
        .table
        .iter()
        .any(|m| m.dev == unlocked.mapping.dev && m.mount_point == Path::new(tor::DATA_DIR));
    let tor = if tor_bound { tor::find()? } else { None };
    if let Some(t) = &tor {
        out.progress("stopping tor");
        tor::stop(t)?;
    }
    let result = lock_volume(&layout, &unlocked, &args, out);
    let mut report = match result {
        Ok(report) => report,
        Err(e) => {
            // Still unlocked (and restored): tor goes back to its persistent state.
            if let Some(t) = &tor {
                let _ = tor::start(t, Path::new(tor::DATA_DIR));
            }
            return Err(e);
        }
    };
    if let Some(t) = &tor {
        out.progress("starting tor again, on the amnesic state");
        report.tor = Some(match tor::start(t, Path::new(tor::DATA_DIR)) {
            Ok(()) => "restarted on the amnesic state".to_string(),
            Err(e) => {
                out.warn(format!("tor did not start again: {e}"));
                format!("left stopped: {e}")
            }
        });
    }
    out.result(&report, |r| {
        format!(
            "locked{}: {} mount(s) removed, mapping closed{}{}",
            r.backing
                .as_ref()
                .map(|b| format!(" {}", b.display()))
                .unwrap_or_default(),
            r.unmounted.len(),
            if r.caches_dropped {
                ", page cache dropped"
            } else {
                ""
            },
            r.tor
                .as_ref()
                .map(|t| format!("; tor {t}"))
                .unwrap_or_default()
        )
    });
    leftovers_error(report.leftovers)
}

fn lock_volume(
    layout: &Layout,
    unlocked: &Unlocked,
    args: &LockArgs,
    out: Output,
) -> Result<LockReport> {
    let record = unlocked::read_record(layout);
    let backing = record
        .as_ref()
        .map(|r| r.backing.clone())
        .or_else(|| unlocked.backing());
    let dev = unlocked.mapping.dev;

    // Scanning every process for open files is the slowest part of a lock, so it is done
    // only when it matters: with --force, to end them first; otherwise only when an
    // unmount reports the volume busy, to name them.
    let mut ended = Vec::new();
    if args.force {
        let holders = processes::holders_of(dev);
        if !holders.is_empty() {
            out.progress(format!("ending {}", describe(&holders)));
            let left = processes::end_holders(dev, Duration::from_secs(3));
            if !left.is_empty() {
                return Err(Error::Busy(format!("could not end {}", describe(&left))));
            }
            ended = holders;
        }
    }

    // A mount namespace of its own (a user's `unshare -m` made while unlocked) keeps the
    // filesystem mounted however much is unmounted here; the mapping would then refuse to
    // close half way. Found before anything changes: all or nothing.
    let pinned = processes::namespace_holders(dev);
    if !pinned.is_empty() {
        return Err(Error::Busy(format!(
            "the volume is still mounted in the mount namespace of {}; end them, or use --force to end these processes (nothing was changed)",
            describe(&pinned)
        )));
    }

    let mount_root = unlocked
        .mount_root
        .clone()
        .unwrap_or_else(|| layout.mount_root.clone());
    let link_destinations = link_destinations(unlocked, layout.profile.into());
    let plan = binder::plan_deactivation(&unlocked.table, dev, &mount_root, &link_destinations);
    let (unmounted, links_removed) = match teardown(&plan, &mount_root) {
        Ok(done) => done,
        Err(e) => {
            restore(layout, unlocked);
            let holders = processes::holders_of(dev);
            if e.exit_code() == crate::error::ExitCode::Busy && !holders.is_empty() {
                return Err(Error::Busy(format!(
                    "files of the volume are in use by {}; close them, or use --force to end these processes (nothing was changed)",
                    describe(&holders)
                )));
            }
            return Err(e);
        }
    };
    // No global sync() here: unmounting wrote the filesystem back and waited for it, and
    // closing the mapping flushes what dm-crypt holds; syncing every other filesystem of
    // the host would only make lock slower.
    if let Err(e) = volume::deactivate(&layout.mapping) {
        // Still open: put the volume back as it was rather than leave it half locked.
        restore(layout, unlocked);
        return Err(match e.exit_code() {
            crate::error::ExitCode::Busy => Error::Busy(format!(
                "{e}; something keepsake cannot see still uses it (a mount namespace whose processes all live in a chroot?); the volume was put back as it was"
            )),
            _ => e,
        });
    }
    // The mapping is closed: the key is gone. A loop device that will not detach is
    // reported (and found again by the check below), but the rest of lock still runs.
    if let Some(file) = &backing {
        for lo in devices::loops_backed_by(file) {
            if let Err(e) = devices::detach_loop(&lo) {
                out.warn(format!("detaching /dev/{lo}: {e}"));
            }
        }
    }
    let caches_dropped = match unlocked::drop_caches() {
        Ok(()) => true,
        Err(e) => {
            out.warn(e);
            false
        }
    };
    unlocked::remove_record(layout);
    let leftovers = verify_gone(layout, backing.as_deref());
    Ok(LockReport {
        was_unlocked: true,
        backing,
        unmounted,
        links_removed,
        ended_processes: ended,
        caches_dropped,
        leftovers,
        tor: None,
    })
}

fn describe(holders: &[Holder]) -> String {
    holders
        .iter()
        .map(|h| h.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn link_destinations(unlocked: &Unlocked, dialect: crate::config::Dialect) -> Vec<PathBuf> {
    let Ok(dir) = unlocked.volume_dir() else {
        return vec![];
    };
    match unlocked::read_config(&dir, dialect) {
        Ok(Some(config)) => config
            .entries()
            .filter(|e| e.method == Method::Link)
            .map(|e| e.destination.clone())
            .collect(),
        _ => vec![],
    }
}

fn teardown(plan: &[Teardown], mount_root: &Path) -> Result<(Vec<PathBuf>, usize)> {
    let mut unmounted = Vec::new();
    let mut links = 0;
    for step in plan {
        match step {
            Teardown::Unmount(path) => {
                mounts::unmount(path).map_err(|e| match e.exit_code() {
                    crate::error::ExitCode::Busy => {
                        Error::Busy(format!("{e}; the volume stays unlocked"))
                    }
                    _ => e,
                })?;
                unmounted.push(path.clone());
            }
            Teardown::Unlink { destination } => {
                links += binder::unlink_tree(destination, mount_root)?
            }
        }
    }
    Ok((unmounted, links))
}

/// After a failed teardown, puts back what was taken away, so that the volume is either
/// fully locked or fully unlocked.
fn restore(layout: &Layout, before: &Unlocked) {
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
    if let Ok(Some(config)) = unlocked::read_config(&dir, layout.profile.into()) {
        let host = SystemHost::new(None);
        let (entries, _) = unlocked::resolve_entries(&config, &host);
        let _ = unlocked::activate_entries(&dir, root, before.mapping.dev, &entries);
    }
}

/// What of the volume is still there: a mapping, a mount, a loop device.
fn verify_gone(layout: &Layout, backing: Option<&Path>) -> Vec<String> {
    let mut left = Vec::new();
    if let Some(m) = devices::find_mapping(&layout.mapping) {
        left.push(format!("mapping {} ({})", m.name, m.kernel_name));
    }
    if !layout.mapping.is_empty() && volume::is_active(&layout.mapping) {
        left.push(format!(
            "libcryptsetup still sees {} active",
            layout.mapping
        ));
    }
    let table = mounts::read_mountinfo().unwrap_or_default();
    for m in &table {
        if m.source == layout.mapper_path().to_string_lossy() || m.mount_point == layout.mount_root
        {
            left.push(format!("mount {}", m.mount_point.display()));
        }
    }
    if let Some(file) = backing.filter(|b| b.is_file()) {
        for lo in devices::loops_backed_by(file) {
            left.push(format!("loop device /dev/{lo}"));
        }
    }
    left
}

fn leftovers_error(leftovers: Vec<String>) -> Result<()> {
    if leftovers.is_empty() {
        Ok(())
    } else {
        Err(Error::Internal(format!(
            "lock could not remove: {}",
            leftovers.join(", ")
        )))
    }
}
