//! `keepsake lock`: deactivate features → unmount → close → release the loop device →
//! drop caches → verify that nothing of the volume remains.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::cli::{GlobalArgs, LockArgs};
use crate::error::{Error, Result};
use crate::host::devices;
use crate::host::mounts;
use crate::host::processes::{self, Holder};
use crate::output::Output;
use crate::persistence::config::Method;
use crate::persistence::features::SystemHost;
use crate::persistence::layout::{Layout, LayoutProfile};
use crate::session::binder::{self, Teardown};
use crate::session::tor;
use crate::session::unlocked::{self, Unlocked};
use crate::volume;

#[derive(Debug, Default, Serialize)]
struct LockReport {
    was_unlocked: bool,
    /// Each volume locked, with the layout it was found under.
    volumes: Vec<LockedVolume>,
    backing: Option<PathBuf>,
    unmounted: Vec<PathBuf>,
    links_removed: usize,
    ended_processes: Vec<Holder>,
    caches_dropped: bool,
    leftovers: Vec<String>,
    /// What became of tor, when its state was part of the volume.
    tor: Option<String>,
}

#[derive(Debug, Serialize)]
struct LockedVolume {
    mapping: String,
    layout: LayoutProfile,
    backing: Option<PathBuf>,
    /// Opened by the system at boot (Tails' Welcome Screen, live-boot), not by keepsake.
    opened_at_boot: bool,
}

impl LockReport {
    fn add(&mut self, other: LockReport) {
        self.was_unlocked |= other.was_unlocked;
        self.volumes.extend(other.volumes);
        if self.backing.is_none() {
            self.backing = other.backing;
        }
        self.unmounted.extend(other.unmounted);
        self.links_removed += other.links_removed;
        self.ended_processes.extend(other.ended_processes);
        self.caches_dropped |= other.caches_dropped;
        self.leftovers.extend(other.leftovers);
        self.tor = self.tor.take().or(other.tor);
    }
}

/// The volumes `lock` is about: the one given with --device (of either layout: the device
/// names it), else every open volume of the layout (live-boot opens every volume it
/// finds, and a session's persistence is all of them). Open volumes of the other layout
/// only are an error that names them, not a silent "nothing is unlocked".
fn choose(
    all: Vec<Unlocked>,
    profile: LayoutProfile,
    device: Option<&Path>,
) -> Result<Vec<Unlocked>> {
    if let Some(device) = device {
        let wanted = std::fs::canonicalize(device).unwrap_or_else(|_| device.to_path_buf());
        let (chosen, others): (Vec<_>, Vec<_>) =
            all.into_iter().partition(|u| names_device(u, &wanted));
        if chosen.is_empty() {
            return Err(Error::NotFound(format!(
                "{} is not an unlocked volume{}; nothing was changed",
                device.display(),
                if others.is_empty() {
                    String::new()
                } else {
                    format!(" (unlocked: {})", unlocked::describe_all(&others))
                }
            )));
        }
        return Ok(chosen);
    }
    let (chosen, others): (Vec<_>, Vec<_>) = all.into_iter().partition(|u| u.profile == profile);
    if chosen.is_empty() && !others.is_empty() {
        return Err(Error::NotFound(format!(
            "no volume of the {} layout is unlocked, but {} is; lock it with --layout {} (or --device); nothing was changed",
            profile_name(profile),
            unlocked::describe_all(&others),
            match others[0].profile {
                LayoutProfile::Tails => "tails",
                LayoutProfile::LiveBoot => "live-boot",
            }
        )));
    }
    Ok(chosen)
}

fn profile_name(profile: LayoutProfile) -> &'static str {
    match profile {
        LayoutProfile::Tails => "Tails",
        LayoutProfile::LiveBoot => "live-boot",
    }
}

/// Whether `wanted` (canonical) names this volume: its mapping, its mapping's device, the
/// partition or loop device under it, or a loop device's container file.
fn names_device(u: &Unlocked, wanted: &Path) -> bool {
    let mapper = Path::new("/dev/mapper").join(&u.mapping.name);
    let mapper = std::fs::canonicalize(&mapper).unwrap_or(mapper);
    wanted == mapper
        || wanted == devices::dev_path(&u.mapping.kernel_name)
        || u.mapping.slaves.iter().any(|s| {
            wanted == devices::dev_path(s)
                || devices::loop_backing_file(s).is_some_and(|f| f == wanted)
        })
}

pub fn run(global: &GlobalArgs, args: LockArgs, out: Output) -> Result<()> {
    super::require_root()?;
    let _lock = super::exclusive()?;
    let chosen = choose(Unlocked::find_all()?, global.layout, args.device.as_deref())?;
    if chosen.is_empty() {
        let layout = super::layout(global, None);
        let leftovers = verify_gone(&layout, None, &[]);
        let report = LockReport {
            leftovers: leftovers.clone(),
            ..LockReport::default()
        };
        out.result(&report, |_| "nothing is unlocked".to_string());
        return leftovers_error(leftovers);
    }
    // What makes a lock impossible is found before anything changes, for every volume.
    refuse_a_root_on_the_volume(&chosen)?;
    let mut report = LockReport::default();
    // Mounted last, locked first.
    for u in chosen.iter().rev() {
        match lock_one(u, &args, out) {
            Ok(one) => report.add(one),
            Err(e) if report.was_unlocked => {
                return Err(e.with_note(&format!(
                    "already locked: {}",
                    report
                        .volumes
                        .iter()
                        .map(|v| format!("/dev/mapper/{}", v.mapping))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            Err(e) => return Err(e),
        }
    }
    out.result(&report, |r| {
        format!(
            "locked {}: {} mount(s) removed, mapping closed{}{}",
            r.volumes
                .iter()
                .map(|v| match &v.backing {
                    Some(b) => format!("{} (/dev/mapper/{})", b.display(), v.mapping),
                    None => format!("/dev/mapper/{}", v.mapping),
                })
                .collect::<Vec<_>>()
                .join(", "),
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

/// live-boot's `/ union` makes the running system's root an overlay writing into the
/// volume: nothing can take the volume away while the system runs from it.
fn refuse_a_root_on_the_volume(volumes: &[Unlocked]) -> Result<()> {
    for u in volumes {
        let Some(root) = u
            .mount_root
            .as_deref()
            .and_then(|r| mounts::root_union(&u.table, r))
        else {
            continue;
        };
        return Err(Error::RootOnVolume(format!(
            "the running system's root is a union on {} (upper folder {}: live-boot's full persistence, `/ union`); it cannot be locked while the system runs from it: shut down instead; nothing was changed",
            u.describe(),
            root.overlay_upperdir().unwrap_or_default().display()
        )));
    }
    Ok(())
}

/// Locks one volume: tor stopped around it when its state is bound from it.
fn lock_one(unlocked: &Unlocked, args: &LockArgs, out: Output) -> Result<LockReport> {
    let mut layout = Layout::new(unlocked.profile, None);
    layout.mapping = unlocked.mapping.name.clone();
    if let Some(root) = &unlocked.mount_root {
        layout.mount_root = root.clone();
    } else if unlocked.profile == LayoutProfile::LiveBoot {
        layout = layout.for_volume(Path::new(&unlocked.mapping.name));
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
    let result = lock_volume(&layout, unlocked, args, out);
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
    Ok(report)
}

fn lock_volume(
    layout: &Layout,
    unlocked: &Unlocked,
    args: &LockArgs,
    out: Output,
) -> Result<LockReport> {
    // keepsake's record, if keepsake opened this very mapping; the system's own unlock at
    // boot leaves none.
    let record = unlocked::read_record(layout).filter(|r| r.mapping == unlocked.mapping.name);
    let opened_at_boot = record.is_none();
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
    let plan = plan_teardown(&unlocked.table, dev, &mount_root, &link_destinations);
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
    // live-boot attaches a container file without autoclear: its loop device (the one
    // under the mapping) is released here too.
    let loops = loops_of(unlocked, backing.as_deref());
    for lo in &loops {
        if let Err(e) = devices::detach_loop(lo) {
            out.warn(format!("detaching /dev/{lo}: {e}"));
        }
    }
    let caches_dropped = match unlocked::drop_caches() {
        Ok(()) => true,
        Err(e) => {
            out.warn(e);
            false
        }
    };
    if !opened_at_boot {
        unlocked::remove_record(layout);
    }
    let leftovers = verify_gone(layout, backing.as_deref(), &loops);
    Ok(LockReport {
        was_unlocked: true,
        volumes: vec![LockedVolume {
            mapping: unlocked.mapping.name.clone(),
            layout: unlocked.profile,
            backing: backing.clone(),
            opened_at_boot,
        }],
        backing,
        unmounted,
        links_removed,
        ended_processes: ended,
        caches_dropped,
        leftovers,
        tor: None,
    })
}

/// The loop devices of a volume: those under its mapping, and those of its container file.
fn loops_of(unlocked: &Unlocked, backing: Option<&Path>) -> Vec<String> {
    attached_loops(&unlocked.mapping.slaves, backing)
}

/// Of `candidates`, the loop devices still attached, and those attached to the container
/// file `backing`; sorted, each once.
fn attached_loops(candidates: &[String], backing: Option<&Path>) -> Vec<String> {
    let mut loops: Vec<String> = candidates
        .iter()
        .filter(|s| devices::loop_backing_file(s).is_some())
        .cloned()
        .collect();
    if let Some(file) = backing.filter(|b| b.is_file()) {
        loops.extend(devices::loops_backed_by(file));
    }
    loops.sort();
    loops.dedup();
    loops
}

/// What to take away, in order: binder's plan (binds and what is mounted on them, links,
/// the volume last), with the overlay ("union") mounts whose upper folder lies in the
/// volume, and whatever is mounted on them, unmounted among the binds in reverse mount
/// order: they hold the volume, so they go before its mount does.
fn plan_teardown(
    table: &[mounts::Mount],
    dev: (u32, u32),
    mount_root: &Path,
    link_destinations: &[PathBuf],
) -> Vec<Teardown> {
    let base = binder::plan_deactivation(table, dev, mount_root, link_destinations);
    let unions: Vec<&Path> = mounts::unions_of(table, mount_root)
        .into_iter()
        .map(|m| m.mount_point.as_path())
        .filter(|p| *p != Path::new("/"))
        .collect();
    if unions.is_empty() {
        return base;
    }
    let mut points: Vec<PathBuf> = base
        .iter()
        .filter_map(|s| match s {
            Teardown::Unmount(p) if p != mount_root => Some(p.clone()),
            _ => None,
        })
        .collect();
    for m in table {
        if unions.iter().any(|u| m.mount_point.starts_with(u)) {
            points.push(m.mount_point.clone());
        }
    }
    // Last mounted, first unmounted: by each point's last place in the table.
    let last_index = |p: &PathBuf| table.iter().rposition(|m| &m.mount_point == p);
    points.sort_by_key(|p| std::cmp::Reverse(last_index(p)));
    points.dedup();
    let mut steps: Vec<Teardown> = points.into_iter().map(Teardown::Unmount).collect();
    steps.extend(base.into_iter().filter(|s| match s {
        Teardown::Unlink { .. } => true,
        Teardown::Unmount(p) => p == mount_root,
    }));
    steps
}

fn describe(holders: &[Holder]) -> String {
    holders
        .iter()
        .map(|h| h.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn link_destinations(
    unlocked: &Unlocked,
    dialect: crate::persistence::config::Dialect,
) -> Vec<PathBuf> {
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
                mounts::unmount(path)
                    .map_err(Error::from)
                    .map_err(|e| match e.exit_code() {
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
fn verify_gone(layout: &Layout, backing: Option<&Path>, loops: &[String]) -> Vec<String> {
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
    for lo in attached_loops(loops, backing) {
        left.push(format!("loop device /dev/{lo}"));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::mounts::parse_mountinfo;

    /// live-boot's session: the volume, a bind, a union with a user's mount on it, links.
    const LIVE_BOOT: &str = "\
30 1 254:0 / /run/live/persistence/sdb2 rw - ext4 /dev/mapper/sdb2 rw
31 1 254:0 /gnupg /home/user/.gnupg rw - ext4 /dev/mapper/sdb2 rw
32 1 0:40 / /home/user/Music rw - overlay overlay rw,lowerdir=/home/user/Music,upperdir=/run/live/persistence/sdb2/Music/rw,workdir=/run/live/persistence/sdb2/Music/work
33 32 0:41 / /home/user/Music/tmp rw - tmpfs tmpfs rw
34 1 0:42 / /srv rw - overlay overlay rw,lowerdir=/srv,upperdir=/run/live/overlay/srv/rw,workdir=/run/live/overlay/srv/work
";

    fn unmounts(plan: &[Teardown]) -> Vec<String> {
        plan.iter()
            .map(|s| match s {
                Teardown::Unmount(p) => format!("umount {}", p.display()),
                Teardown::Unlink { destination } => format!("unlink {}", destination.display()),
            })
            .collect()
    }

    #[test]
    fn unions_on_the_volume_go_before_the_volume() {
        let table = parse_mountinfo(LIVE_BOOT);
        let plan = plan_teardown(
            &table,
            (254, 0),
            Path::new("/run/live/persistence/sdb2"),
            &[PathBuf::from("/home/user")],
        );
        assert_eq!(
            unmounts(&plan),
            vec![
                "umount /home/user/Music/tmp",
                "umount /home/user/Music",
                "umount /home/user/.gnupg",
                "unlink /home/user",
                "umount /run/live/persistence/sdb2",
            ],
            "the amnesic overlay on /srv is not the volume's"
        );
    }

    #[test]
    fn without_unions_the_plan_is_the_binders() {
        let table = parse_mountinfo(
            &LIVE_BOOT
                .lines()
                .filter(|l| !l.contains("overlay") && !l.contains("tmpfs"))
                .map(|l| format!("{l}\n"))
                .collect::<String>(),
        );
        let root = Path::new("/run/live/persistence/sdb2");
        assert_eq!(
            unmounts(&plan_teardown(&table, (254, 0), root, &[])),
            unmounts(&binder::plan_deactivation(&table, (254, 0), root, &[]))
        );
    }

    fn volume(name: &str, profile: LayoutProfile) -> Unlocked {
        Unlocked {
            profile,
            mapping: devices::Mapping {
                name: name.into(),
                kernel_name: format!("dm-{}", name.len()),
                dev: (254, name.len() as u32),
                slaves: vec![format!("keepsake-test-no-such-{name}")],
                uuid: format!("CRYPT-LUKS2-00-{name}"),
            },
            mount_root: None,
            table: vec![],
        }
    }

    #[test]
    fn a_root_union_on_the_volume_is_refused_before_anything() {
        let root = "1 0 0:30 / / rw - overlay overlay rw,lowerdir=/run/live/rootfs/filesystem.squashfs/,upperdir=/run/live/persistence/sdb2/rw,workdir=/run/live/persistence/sdb2/work\n";
        let mut sdb2 = volume("sdb2", LayoutProfile::LiveBoot);
        sdb2.mount_root = Some(PathBuf::from("/run/live/persistence/sdb2"));
        sdb2.table = parse_mountinfo(&format!("{root}{LIVE_BOOT}"));
        let mut other = volume("sdc1", LayoutProfile::LiveBoot);
        other.mount_root = Some(PathBuf::from("/run/live/persistence/sdc1"));
        other.table = sdb2.table.clone();
        let err = refuse_a_root_on_the_volume(&[other.clone(), sdb2.clone()]).unwrap_err();
        assert_eq!(err.exit_code(), crate::error::ExitCode::RootOnVolume);
        assert_eq!(err.exit_code() as u8, 10);
        assert!(err.to_string().contains("/dev/mapper/sdb2"), "{err}");
        // The other volume alone, or the same session with an amnesic root, is lockable.
        assert!(refuse_a_root_on_the_volume(&[other]).is_ok());
        sdb2.table = parse_mountinfo(LIVE_BOOT);
        assert!(refuse_a_root_on_the_volume(&[sdb2]).is_ok());
    }

    #[test]
    fn lock_takes_every_volume_of_its_layout_and_names_the_others() {
        let all = || {
            vec![
                volume("TailsData_unlocked", LayoutProfile::Tails),
                volume("sdb2", LayoutProfile::LiveBoot),
                volume("loop0", LayoutProfile::LiveBoot),
            ]
        };
        let names = |v: Vec<Unlocked>| v.into_iter().map(|u| u.mapping.name).collect::<Vec<_>>();
        assert_eq!(
            names(choose(all(), LayoutProfile::LiveBoot, None).unwrap()),
            vec!["sdb2", "loop0"]
        );
        assert_eq!(
            names(choose(all(), LayoutProfile::Tails, None).unwrap()),
            vec!["TailsData_unlocked"]
        );
        // Only the other layout's volume is open: an error naming it, not "nothing".
        let err = choose(all()[1..].to_vec(), LayoutProfile::Tails, None).unwrap_err();
        assert_eq!(err.exit_code(), crate::error::ExitCode::NotFound);
        assert!(
            err.to_string()
                .contains("/dev/mapper/sdb2 (live-boot layout"),
            "{err}"
        );
        assert!(err.to_string().contains("--layout live-boot"), "{err}");
        assert!(
            choose(vec![], LayoutProfile::Tails, None)
                .unwrap()
                .is_empty()
        );
        // --device picks one by its mapping's device, whatever the layout.
        assert_eq!(
            names(choose(all(), LayoutProfile::Tails, Some(Path::new("/dev/dm-4"))).unwrap()),
            vec!["sdb2"]
        );
        let err = choose(
            all(),
            LayoutProfile::Tails,
            Some(Path::new("/dev/nonesuch")),
        )
        .unwrap_err();
        assert_eq!(err.exit_code(), crate::error::ExitCode::NotFound);
    }
}
