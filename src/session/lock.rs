//! `lock`: deactivate features → unmount → close → release the loop device → drop
//! caches → verify that nothing of the volume remains. All or nothing per volume: what
//! makes a lock impossible is found before anything changes, and a teardown that fails
//! half way puts the volume back ([`super::lifecycle::restore`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::host::mounts;
use crate::host::processes::{self, Holder};
use crate::host::{devices, disks};
use crate::output::Output;
use crate::persistence::config::Method;
use crate::persistence::files;
use crate::persistence::layout::{Layout, LayoutProfile};
use crate::session::error::{Error, Result};
use crate::session::lifecycle;
use crate::session::plan::plan_teardown;
use crate::session::record;
use crate::session::tor::{self, TorPause, TorRestart};
use crate::session::unlocked::{self, Unlocked};
use crate::volume;

/// What `lock` is asked to do, from the command line.
#[derive(Clone, Debug)]
pub struct LockOptions {
    /// The layout whose open volumes are locked (when no device is given).
    pub layout: LayoutProfile,
    /// The one volume to lock, by any device that names it.
    pub device: Option<PathBuf>,
    /// End the processes that hold files of the volume open.
    pub force: bool,
    /// Wipe the keys from the kernel before anything else (`lock --now`); implies `force`.
    pub now: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct LockReport {
    pub was_unlocked: bool,
    /// Each volume locked, with the layout it was found under.
    pub volumes: Vec<LockedVolume>,
    pub backing: Option<PathBuf>,
    pub unmounted: Vec<PathBuf>,
    pub links_removed: usize,
    pub ended_processes: Vec<Holder>,
    pub caches_dropped: bool,
    pub leftovers: Vec<String>,
    /// What became of tor, when its state was part of the volume.
    pub tor: Option<String>,
    /// With --now: when the keys were gone from the kernel, in ms after lock began.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys_wiped_ms: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct LockedVolume {
    pub mapping: String,
    pub layout: LayoutProfile,
    pub backing: Option<PathBuf>,
    /// Opened by the system at boot (Tails' Welcome Screen, live-boot), not by keepsake.
    pub opened_at_boot: bool,
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
/// names it), or those on the disk given (where `unlock --device DISK` searched), else
/// every open volume of the layout (live-boot opens every volume it finds, and a
/// session's persistence is all of them). Open volumes of the other layout only are an
/// error that names them, not a silent "nothing is unlocked".
pub(crate) fn choose(
    all: Vec<Unlocked>,
    profile: LayoutProfile,
    device: Option<&Path>,
) -> Result<Vec<Unlocked>> {
    if let Some(device) = device {
        let wanted = std::fs::canonicalize(device).unwrap_or_else(|_| device.to_path_buf());
        let disk = disk_scope(&wanted);
        let (chosen, others): (Vec<_>, Vec<_>) = all.into_iter().partition(|u| {
            names_device(u, &wanted)
                || disk
                    .as_ref()
                    .is_some_and(|d| u.backing().is_some_and(|b| d.holds(&b)))
        });
        if chosen.is_empty() {
            return Err(Error::NotUnlocked(format!(
                "{}{}; nothing was changed",
                if disk.is_some() {
                    format!("no unlocked volume is on {}", device.display())
                } else {
                    format!("{} is not an unlocked volume", device.display())
                },
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
        return Err(Error::NotUnlocked(format!(
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

/// The disk at `path` (a whole disk, not a partition nor a mapping), with its partitions.
fn disk_scope(path: &Path) -> Option<disks::Scope> {
    let disk = disks::block_device(path).ok()?;
    (!disk.is_partition() && !disk.name.starts_with("dm-"))
        .then(|| disks::Scope::disk(&disk, &disks::all_partitions()))
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

/// Locks the volumes `options` names (see [`choose`]), mounted last, locked first. The
/// report says what was done; what of a volume could not be removed is in its
/// `leftovers` (see [`LockReport::leftovers_error`]).
pub fn lock(options: &LockOptions, out: Output) -> Result<LockReport> {
    // The mounts and block devices, read once; only verify_gone looks again, after the change.
    let host = crate::host::Snapshot::read()?;
    let chosen = choose(
        Unlocked::find_all_in(&host),
        options.layout,
        options.device.as_deref(),
    )?;
    if chosen.is_empty() {
        let layout = Layout::new(options.layout, None);
        return Ok(LockReport {
            leftovers: verify_gone(&layout, None, &[]),
            ..LockReport::default()
        });
    }
    // What makes a lock impossible is found before anything changes, for every volume.
    refuse_a_root_on_the_volume(&chosen)?;
    let mut report = LockReport::default();
    if options.now {
        report.keys_wiped_ms = wipe_keys_first(&chosen, out);
    }
    // Mounted last, locked first.
    for u in chosen.iter().rev() {
        match lock_one(u, &host, options, out) {
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
    Ok(report)
}

/// `lock --now`: every chosen volume's key wiped from the kernel before anything else
/// (see [`super::wipe::wipe_key`]); the lock that follows takes the rest away. Returns
/// when the last key was gone, in ms, if all were; a failure is warned about (closing the
/// mapping, later, wipes the key too).
fn wipe_keys_first(chosen: &[Unlocked], out: Output) -> Option<f64> {
    let start = std::time::Instant::now();
    let control = match crate::host::dm::Control::open() {
        Ok(c) => c,
        Err(e) => {
            out.warn(format!(
                "could not wipe the keys first (/dev/mapper/control: {e}); locking"
            ));
            return None;
        }
    };
    let mut all = true;
    for u in chosen {
        let dev = u.mapping.dev;
        let wiped = crate::host::dm::sectors(dev)
            .and_then(|sectors| super::wipe::wipe_key(&control, dev, sectors));
        if let Err(e) = wiped {
            all = false;
            out.warn(format!(
                "could not wipe the key of /dev/mapper/{} first ({e}); locking",
                u.mapping.name
            ));
        }
    }
    all.then(|| super::wipe::ms_since(start))
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
fn lock_one(
    unlocked: &Unlocked,
    host: &crate::host::Snapshot,
    options: &LockOptions,
    out: Output,
) -> Result<LockReport> {
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
    let pause = TorPause::stop(tor_bound, || out.progress("stopping tor"))?;
    let mut report = match lock_volume(&layout, unlocked, host, options, out) {
        Ok(report) => report,
        Err(e) => {
            // Still unlocked (and restored): tor goes back to its persistent state.
            let _ = pause.resume();
            return Err(e);
        }
    };
    if pause.stopped() {
        out.progress("starting tor again, on the amnesic state");
    }
    report.tor = match pause.resume() {
        TorRestart::NotRunning | TorRestart::LeftStopped => None,
        TorRestart::Restarted => Some("restarted on the amnesic state".to_string()),
        TorRestart::Failed(e) => {
            out.warn(format!("tor did not start again: {e}"));
            Some(format!("left stopped: {e}"))
        }
    };
    Ok(report)
}

fn lock_volume(
    layout: &Layout,
    unlocked: &Unlocked,
    host: &crate::host::Snapshot,
    options: &LockOptions,
    out: Output,
) -> Result<LockReport> {
    // keepsake's record, if keepsake opened this very mapping; the system's own unlock at
    // boot leaves none.
    let record = record::read_record(layout).filter(|r| r.mapping == unlocked.mapping.name);
    let opened_at_boot = record.is_none();
    let backing = record
        .as_ref()
        .map(|r| r.backing.clone())
        .or_else(|| unlocked.backing());
    let dev = unlocked.mapping.dev;

    // A volume whose key is wiped (lock --now, or its stick pulled) can only go: whatever
    // holds it is ended, and nothing is put back.
    let wiped = options.now || super::watch::last_wipe(&unlocked.mapping.name).is_some();
    let force = options.force || wiped;
    // Scanning every process for open files is the slowest part of a lock, so it is done
    // only when it matters: with --force, to end them first; otherwise only when an
    // unmount reports the volume busy, to name them.
    let mut ended = Vec::new();
    if force {
        let holders = processes::holders_of(dev);
        if !holders.is_empty() {
            out.progress(format!("ending {}", describe(&holders)));
            let left = processes::end_holders(dev, Duration::from_secs(3));
            if !left.is_empty() {
                return Err(Error::InUse(format!("could not end {}", describe(&left))));
            }
            ended = holders;
        }
    }

    // A mount namespace of its own (a user's `unshare -m` made while unlocked) keeps the
    // filesystem mounted however much is unmounted here; the mapping would then refuse to
    // close half way. Found before anything changes: all or nothing.
    let pinned = processes::namespace_holders(dev);
    if !pinned.is_empty() {
        return Err(Error::InUse(format!(
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
    let torn = match lifecycle::tear_down(&plan, layout, unlocked, &mount_root) {
        // The config that names the links may no longer be readable from a wiped volume:
        // the links into it are looked for in the live user's home instead.
        Ok(mut done) if wiped => {
            if let Ok(user) = crate::persistence::features::SystemHost::new(None).live_user {
                done.links_removed += super::wipe::remove_links(&user.home, &mount_root);
            }
            done
        }
        Ok(done) => done,
        Err(e) => {
            let holders = processes::holders_of(dev);
            if e.is_in_use() && !holders.is_empty() {
                return Err(Error::InUse(format!(
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
    let mut closed = deactivate(&layout.mapping, dev, wiped, !ended.is_empty());
    if force && closed.as_ref().is_err_and(|e| e.is_in_use()) {
        // Nothing keepsake could see holds it: a user's mount namespace may hide it under
        // a mount over its root. --force ends those namespaces too, and tries again.
        let (suspects, left) = processes::end_user_namespaces(dev, Duration::from_secs(3));
        if !suspects.is_empty() {
            out.progress(format!("ending {}", describe(&suspects)));
            if left.is_empty() {
                closed = deactivate(&layout.mapping, dev, wiped, true);
            }
            ended.extend(suspects);
        }
    }
    if let Err(e) = closed {
        if wiped {
            // Nothing to put back: the data cannot be read any more.
            return Err(Error::InUse(format!(
                "{e}; its key is wiped, and the kernel removes the mapping when the last holder lets go"
            )));
        }
        // Still open: put the volume back as it was rather than leave it half locked.
        lifecycle::restore(layout, unlocked);
        if !e.is_in_use() {
            return Err(e);
        }
        let suspects = processes::user_namespace_holders(dev);
        return Err(Error::InUse(if force || suspects.is_empty() {
            format!(
                "{e}; something keepsake cannot see still uses it; the volume was put back as it was"
            )
        } else {
            format!(
                "{e}; nothing keepsake can see holds it, but the mount namespaces of {} may hide it under a mount over their root; end them, or use --force to end these processes (the volume was put back as it was)",
                describe(&suspects)
            )
        }));
    }
    // The mapping is closed: the key is gone. A loop device that will not detach is
    // reported (and found again by the check below), but the rest of lock still runs.
    // live-boot attaches a container file without autoclear: its loop device (the one
    // under the mapping) is released here too.
    // The loop devices of the volume as they were found (a loop device's backing file
    // does not change while it stays attached).
    let loops = attached_loops(
        &host.block_devices,
        &unlocked.mapping.slaves,
        backing.as_deref(),
    );
    for lo in &loops {
        if let Err(e) = devices::detach_loop(lo) {
            out.warn(format!("detaching /dev/{lo}: {e}"));
        }
    }
    // live-boot mounted the partition that holds a container file (under
    // /run/live/persistence) only to reach the file: with the volume gone, so is that.
    if opened_at_boot && let Some(file) = &backing {
        let table = mounts::read_mountinfo().unwrap_or_default();
        let points = live_boot_holding_mounts(&table, file);
        for point in &points {
            // One may take the other with it (the mounts they are on are peers): a
            // failure counts only if the mount stays.
            let _ = mounts::unmount(point);
        }
        let after = mounts::read_mountinfo().unwrap_or_default();
        for point in points
            .iter()
            .filter(|p| after.iter().any(|m| &m.mount_point == *p))
        {
            out.warn(format!(
                "{} (holding the container file) is still mounted: something uses it",
                point.display()
            ));
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
        record::remove_record(layout);
    }
    super::watch::forget_wipe(&unlocked.mapping.name);
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
        unmounted: torn.unmounted,
        links_removed: torn.links_removed,
        ended_processes: ended,
        caches_dropped,
        leftovers,
        tor: None,
        keys_wiped_ms: None,
    })
}

/// Where live-boot mounted the filesystem holding the container file `file` to look for
/// it: under /run/live/persistence, and again under /lib/live/mount/persistence (as a
/// merged-/usr mount table names it, /usr/lib/…); deepest first. A mount of it elsewhere
/// (the user's) is not live-boot's and is left.
fn live_boot_holding_mounts(table: &[mounts::Mount], file: &Path) -> Vec<PathBuf> {
    const PLACES: &[&str] = &[
        crate::persistence::layout::LIVE_BOOT_PERSISTENCE,
        "/usr/lib/live/mount/persistence",
        "/lib/live/mount/persistence",
    ];
    let at_live_boots_place =
        |m: &&mounts::Mount| PLACES.iter().any(|p| m.mount_point.starts_with(p));
    let Some(holding) = table
        .iter()
        .filter(|m| file.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.components().count())
        .filter(at_live_boots_place)
        .filter(|m| m.source.starts_with("/dev/") && !m.fstype.starts_with("fuse"))
    else {
        return Vec::new();
    };
    // Used for more than the file (with `none,luks` live-boot may also have bound an
    // unencrypted persistence volume's folders from it): left as it is.
    if table
        .iter()
        .any(|m| m.dev == holding.dev && !at_live_boots_place(&m))
    {
        return Vec::new();
    }
    let mut points: Vec<PathBuf> = table
        .iter()
        .filter(|m| m.dev == holding.dev)
        .filter(at_live_boots_place)
        .map(|m| m.mount_point.clone())
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    points
}

/// Closes the mapping. After processes were ended, a few more tries while it is busy: a
/// process gone from /proc may still be releasing its mount namespace's last mount. A
/// mapping whose key was wiped holds an error table, which libcryptsetup does not take for
/// a LUKS mapping: it is removed through device-mapper itself.
fn deactivate(mapping: &str, dev: (u32, u32), wiped: bool, ended_some: bool) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let close = || -> Result<()> {
        if !wiped {
            return volume::deactivate(mapping).map_err(Error::from);
        }
        let removed = crate::host::dm::Control::open().and_then(|c| c.remove_when_free(dev));
        match removed {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::InUse(format!(
                "the mapping {mapping} is still held; the kernel removes it when it is let go"
            ))),
            Err(e) => Err(Error::NotApplied(format!(
                "removing the mapping {mapping}: {e}"
            ))),
        }
    };
    loop {
        match close() {
            Err(e) if ended_some && e.is_in_use() && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            done => return done,
        }
    }
}

/// Of `candidates`, the loop devices still attached, and those of `block_devices`
/// attached to the container file `backing`; sorted, each once.
fn attached_loops(
    block_devices: &[String],
    candidates: &[String],
    backing: Option<&Path>,
) -> Vec<String> {
    let mut loops: Vec<String> = candidates
        .iter()
        .filter(|s| devices::loop_backing_file(s).is_some())
        .cloned()
        .collect();
    if let Some(file) = backing.filter(|b| b.is_file()) {
        loops.extend(devices::loops_backed_by_in(block_devices, file));
    }
    loops.sort();
    loops.dedup();
    loops
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
    match files::read_config(&dir, dialect) {
        Ok(Some(config)) => config
            .entries()
            .filter(|e| e.method == Method::Link)
            .map(|e| e.destination.clone())
            .collect(),
        _ => vec![],
    }
}

/// What of the volume is still there: a mapping, a mount, a loop device. The one step of
/// lock that reads the block devices and the mounts again: it checks the change made.
fn verify_gone(layout: &Layout, backing: Option<&Path>, loops: &[String]) -> Vec<String> {
    let mut left = Vec::new();
    let block_devices = devices::block_devices();
    if let Some(m) = devices::mappings_in(&block_devices)
        .into_iter()
        .find(|m| m.name == layout.mapping)
    {
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
    for lo in attached_loops(&block_devices, loops, backing) {
        left.push(format!("loop device /dev/{lo}"));
    }
    left
}

impl LockReport {
    /// The error for what could not be removed, if anything.
    pub fn leftovers_error(&self) -> Result<()> {
        if self.leftovers.is_empty() {
            Ok(())
        } else {
            Err(Error::Leftovers(format!(
                "lock could not remove: {}",
                self.leftovers.join(", ")
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::mounts::parse_mountinfo;

    /// As a Debian 12 live system shows them after live-boot opened a container file
    /// named persistence on /dev/vdb1 (read in the live scenarios' VM).
    #[test]
    fn live_boots_mounts_of_a_container_files_partition_are_found() {
        let table = parse_mountinfo(
            "26 1 0:23 / /run rw shared:5 - tmpfs tmpfs rw\n\
             40 26 254:17 / /run/live/persistence/vdb1 rw,noatime shared:20 - ext4 /dev/vdb1 rw\n\
             41 33 254:17 / /usr/lib/live/mount/persistence/vdb1 rw,noatime shared:20 - ext4 /dev/vdb1 rw\n\
             50 1 254:17 / /mnt rw - ext4 /dev/vdb1 rw\n",
        );
        let only_live_boots = &table[..3];
        assert_eq!(
            live_boot_holding_mounts(
                only_live_boots,
                Path::new("/run/live/persistence/vdb1/persistence")
            ),
            [
                PathBuf::from("/usr/lib/live/mount/persistence/vdb1"),
                PathBuf::from("/run/live/persistence/vdb1"),
            ]
        );
        // A container the user's own mount holds is not live-boot's to take, nor is a
        // partition that is also mounted elsewhere.
        assert!(live_boot_holding_mounts(&table, Path::new("/mnt/persistence")).is_empty());
        assert!(
            live_boot_holding_mounts(&table, Path::new("/run/live/persistence/vdb1/persistence"))
                .is_empty()
        );
    }

    use crate::session::plan::tests::LIVE_BOOT;

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
        assert!(matches!(err, Error::RootOnVolume(_)), "{err}");
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
        assert!(matches!(err, Error::NotUnlocked(_)), "{err}");
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
        assert!(matches!(err, Error::NotUnlocked(_)), "{err}");
    }
}
