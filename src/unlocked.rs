//! The unlocked volume as the running system shows it: its mapping, its mount, its config,
//! its features. `unlock` builds it; `status`, `lock` and `feature` find it again from the
//! kernel's own tables, so no stale state file can mislead them.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::binder::{self, Action};
use crate::config::{ConfigFile, LineError, Method};
use crate::devices::{self, Mapping};
use crate::error::{Context, Error, Result};
use crate::features::{self, Host, ResolvedEntry, Service};
use crate::layout::{CONFIG_FILE, Layout, LayoutProfile, RUNTIME_DIR};
use crate::mounts::{self, Mount};
use crate::safefs::{self, Dir, Owner};
use crate::tor;

/// The largest persistence.conf accepted.
const MAX_CONFIG: u64 = 64 * 1024;

/// Facts recorded at unlock time that the kernel does not keep (never secrets).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    /// The container file or partition that was unlocked.
    pub backing: PathBuf,
    /// Its dm-crypt mapping name.
    #[serde(default)]
    pub mapping: String,
    /// Features that failed to activate, with why.
    #[serde(default)]
    pub failed: Vec<FailedFeature>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FailedFeature {
    pub source: PathBuf,
    pub error: String,
}

pub fn write_record(layout: &Layout, record: &Record) -> Result<()> {
    let (dir, _) = safefs::open_dir(
        Path::new(RUNTIME_DIR),
        Some(Owner {
            uid: 0,
            gid: 0,
            mode: 0o700,
        }),
    )?;
    let text = serde_json::to_vec_pretty(record).map_err(|e| Error::Internal(e.to_string()))?;
    let name = layout.runtime_record();
    let name = name
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("record.json");
    safefs::write_file_atomically(
        &dir,
        name,
        &text,
        Owner {
            uid: 0,
            gid: 0,
            mode: 0o600,
        },
    )
}

pub fn read_record(layout: &Layout) -> Option<Record> {
    let text = std::fs::read_to_string(layout.runtime_record()).ok()?;
    serde_json::from_str(&text).ok()
}

pub fn remove_record(layout: &Layout) {
    let _ = std::fs::remove_file(layout.runtime_record());
}

/// An open persistence volume, and where its filesystem is mounted, if it is.
#[derive(Clone, Debug)]
pub struct Unlocked {
    /// The layout it was found under.
    pub profile: LayoutProfile,
    pub mapping: Mapping,
    pub mount_root: Option<PathBuf>,
    pub table: Vec<Mount>,
}

impl Unlocked {
    /// The open volume of this layout, whoever opened it: keepsake, or the system at boot
    /// (Tails' Welcome Screen, live-boot). Several open live-boot volumes (live-boot opens
    /// every one it finds) are a usage error here, naming them.
    pub fn find(layout: &Layout) -> Result<Option<Unlocked>> {
        let mut found: Vec<Unlocked> = Unlocked::find_all()?
            .into_iter()
            .filter(|u| u.profile == layout.profile)
            .collect();
        if found.len() > 1 {
            return Err(Error::Usage(format!(
                "several volumes are unlocked: {}; lock the others first (keepsake lock --device DEV)",
                describe_all(&found)
            )));
        }
        Ok(found.pop())
    }

    /// Every open persistence volume of either layout, from the kernel's tables
    /// ([`crate::discovery::open_volumes`]), keepsake's runtime records vouching only for
    /// the live-boot mappings keepsake opened itself.
    pub fn find_all() -> Result<Vec<Unlocked>> {
        let table = mounts::read_mountinfo()?;
        let recorded: Vec<(LayoutProfile, String)> =
            [LayoutProfile::Tails, LayoutProfile::LiveBoot]
                .into_iter()
                .filter_map(|p| {
                    let r = read_record(&Layout::new(p, None))?;
                    (!r.mapping.is_empty()).then_some((p, r.mapping))
                })
                .collect();
        Ok(
            crate::discovery::open_volumes(&devices::all_mappings(), &table, &recorded)
                .into_iter()
                .map(|v| Unlocked {
                    profile: v.profile,
                    mapping: v.mapping,
                    mount_root: v.mount_root,
                    table: table.clone(),
                })
                .collect(),
        )
    }

    /// `/dev/mapper/NAME (layout)`, for messages.
    pub fn describe(&self) -> String {
        format!(
            "/dev/mapper/{} ({} layout{})",
            self.mapping.name,
            match self.profile {
                LayoutProfile::Tails => "Tails",
                LayoutProfile::LiveBoot => "live-boot",
            },
            self.backing()
                .map(|b| format!(", on {}", b.display()))
                .unwrap_or_default()
        )
    }

    /// The file or device under the mapping: the loop device's backing file for a container.
    pub fn backing(&self) -> Option<PathBuf> {
        let slave = self.mapping.slaves.first()?;
        Some(devices::loop_backing_file(slave).unwrap_or_else(|| devices::dev_path(slave)))
    }

    pub fn volume_dir(&self) -> Result<Dir> {
        let root = self.mount_root.as_ref().ok_or_else(|| {
            Error::NotFound(format!(
                "the mapping {} is open but not mounted",
                self.mapping.name
            ))
        })?;
        Ok(safefs::open_dir(root, None)?.0)
    }
}

/// The volumes, for messages.
pub fn describe_all(volumes: &[Unlocked]) -> String {
    volumes
        .iter()
        .map(Unlocked::describe)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Reads persistence.conf from the volume. Any owner but root, or any mode but 0600,
/// refuses the whole file: then any line of it may have been written by someone else.
pub fn read_config(volume: &Dir) -> Result<Option<ConfigFile>> {
    read_config_file(volume, CONFIG_FILE)
}

/// Reads a file of the volume in persistence.conf syntax, with the same checks.
pub fn read_config_file(volume: &Dir, name: &str) -> Result<Option<ConfigFile>> {
    let file = match safefs::read_file_in(volume, name, MAX_CONFIG) {
        Ok(f) => f,
        Err(Error::NotFound(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    if !trusted_config_owner(file.owner) || file.owner.mode != 0o600 {
        return Err(Error::Corrupt(format!(
            "{} must be owned by root (or Tails' tails-persistent-storage) with mode 0600 (it is uid {}, mode {:04o}); no feature was activated",
            volume.path.join(name).display(),
            file.owner.uid,
            file.owner.mode
        )));
    }
    Ok(Some(ConfigFile::parse(&file.contents)))
}

/// Tails' own account for persistence.conf, and the ids Tails gives it on every system.
const TAILS_CONFIG_ACCOUNT: &str = "tails-persistent-storage";
const TAILS_CONFIG_IDS: (u32, u32) = (115, 122);

/// Who may own persistence.conf: root, or Tails' tails-persistent-storage account (by
/// name where it exists, by Tails' fixed ids elsewhere), so that a Tails volume works as is.
pub fn trusted_config_owner(owner: Owner) -> bool {
    if owner.uid == 0 {
        return true;
    }
    match nix::unistd::User::from_name(TAILS_CONFIG_ACCOUNT)
        .ok()
        .flatten()
    {
        Some(user) => owner.uid == user.uid.as_raw() && owner.gid == user.gid.as_raw(),
        None => (owner.uid, owner.gid) == TAILS_CONFIG_IDS,
    }
}

pub fn write_config(volume: &Dir, config: &ConfigFile) -> Result<()> {
    write_config_file(volume, CONFIG_FILE, config)
}

/// Rewrites a config file atomically, mode 0600, keeping a trusted owner it already has
/// (Tails' account stays Tails').
pub fn write_config_file(volume: &Dir, name: &str, config: &ConfigFile) -> Result<()> {
    let existing = safefs::read_file_in(volume, name, MAX_CONFIG)
        .ok()
        .map(|f| f.owner)
        .filter(|o| trusted_config_owner(*o));
    let (uid, gid) = existing.map_or((0, 0), |o| (o.uid, o.gid));
    safefs::write_file_atomically(
        volume,
        name,
        config.render().as_bytes(),
        Owner {
            uid,
            gid,
            mode: 0o600,
        },
    )
}

/// The state of one feature line after activation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FeatureState {
    Active,
    Inactive,
    Failed,
    Skipped,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FeatureReport {
    pub name: String,
    pub source: PathBuf,
    pub destination: PathBuf,
    pub method: Method,
    pub enabled: bool,
    pub active: bool,
    pub state: FeatureState,
    pub error: Option<String>,
}

impl FeatureReport {
    fn new(r: &ResolvedEntry, state: FeatureState, error: Option<String>) -> FeatureReport {
        FeatureReport {
            name: r.feature.clone(),
            source: r.entry.source.clone(),
            destination: r.entry.destination.clone(),
            method: r.entry.method,
            enabled: true,
            active: state == FeatureState::Active,
            state,
            error,
        }
    }
}

/// Resolves the config's entries; one whose owner cannot be resolved, or whose source is
/// nested in another's, fails alone.
pub fn resolve_entries(
    config: &ConfigFile,
    host: &dyn Host,
) -> (Vec<ResolvedEntry>, Vec<FeatureReport>) {
    let mut resolved = Vec::new();
    let mut failed = Vec::new();
    let nested = nesting_problems(config);
    for entry in config.entries() {
        let outcome = match nested.iter().find(|(e, _)| e == entry) {
            Some((_, why)) => Err(Error::UntrustedSource(why.clone())),
            None => features::resolve(entry, host),
        };
        match outcome {
            Ok(r) => resolved.push(r),
            Err(e) => failed.push(FeatureReport {
                name: entry.source.display().to_string(),
                source: entry.source.clone(),
                destination: entry.destination.clone(),
                method: entry.method,
                enabled: true,
                active: false,
                state: FeatureState::Failed,
                error: Some(e.to_string()),
            }),
        }
    }
    (resolved, failed)
}

/// Removes from the volume's persistence.conf every line that activation would refuse as
/// one the live user could turn against the system: a source nested in another's, or a
/// source outside the home that the live user can change ([`binder::refuse_an_untrusted_source`]).
/// Returns the lines dropped, each with why. (For a config that came from elsewhere: a
/// restored archive.)
pub fn drop_untrusted_lines(volume: &Dir, host: &dyn Host) -> Result<Vec<String>> {
    let Some(mut config) = read_config(volume)? else {
        return Ok(vec![]);
    };
    let nested = nesting_problems(&config);
    let mut dropped = Vec::new();
    for entry in config.entries() {
        let why = match nested.iter().find(|(e, _)| e == entry) {
            Some((_, why)) => Some(why.clone()),
            None => features::resolve(entry, host)
                .ok()
                .and_then(|r| binder::refuse_an_untrusted_source(volume, &r).err())
                .map(|e| e.to_string()),
        };
        if let Some(why) = why {
            dropped.push((entry.clone(), why));
        }
    }
    for (entry, _) in &dropped {
        config.remove_source(&entry.source);
    }
    if !dropped.is_empty() {
        write_config(volume, &config)?;
    }
    Ok(dropped
        .into_iter()
        .map(|(entry, why)| format!("'{}' ({why})", entry.render()))
        .collect())
}

/// Each entry whose source lies in another entry's source, with why it is refused.
pub fn nesting_problems(config: &ConfigFile) -> Vec<(crate::config::Entry, String)> {
    let entries: Vec<&crate::config::Entry> = config.entries().collect();
    (0..entries.len())
        .filter_map(|i| {
            let outer = nested_in(&entries, i)?;
            Some((
                entries[i].clone(),
                format!(
                    "its source {} is inside {}, the source of {}: a feature's folder may not hold another's (the owner of the outer one could change the inner one, and live-boot stops the boot on it); not activated",
                    entries[i].source.display(),
                    outer.source.display(),
                    outer.destination.display()
                ),
            ))
        })
        .collect()
}

/// The entry whose source holds the source of `entries[i]`: one that contains it, or an
/// earlier one with the same source.
fn nested_in<'a>(
    entries: &[&'a crate::config::Entry],
    i: usize,
) -> Option<&'a crate::config::Entry> {
    let inner = &entries[i].source;
    entries.iter().enumerate().find_map(|(j, outer)| {
        let holds = if outer.source == *inner {
            j < i
        } else {
            inner.starts_with(&outer.source)
        };
        (j != i && holds).then_some(*outer)
    })
}

/// Activates every entry that is not active yet; each failure is reported and undone,
/// and does not stop the others.
pub fn activate_entries(
    volume: &Dir,
    mount_root: &Path,
    volume_dev: (u32, u32),
    entries: &[ResolvedEntry],
) -> Result<Vec<FeatureReport>> {
    let table = mounts::read_mountinfo()?;
    let plan = binder::plan_activation(entries, mount_root, volume_dev, &table);
    let tor_involved = plan
        .iter()
        .any(|p| p.action == Action::Activate && p.resolved.service == Some(Service::Tor));
    let (mut reports, restarted) = with_tor_stopped(tor_involved, || {
        let reports: Vec<FeatureReport> = plan
            .into_iter()
            .map(|planned| {
                let r = &planned.resolved;
                match planned.action {
                    Action::AlreadyActive => FeatureReport::new(r, FeatureState::Active, None),
                    Action::Skip(why) => FeatureReport::new(r, FeatureState::Skipped, Some(why)),
                    Action::Activate => match binder::activate(volume, r) {
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

/// What happened to tor around a change of its state folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TorRestart {
    /// tor was not running, or was not involved.
    NotRunning,
    Restarted,
    /// tor was running and is left stopped on purpose (its state could not be bound).
    LeftStopped,
    /// tor was started again and refused its state, or did not start.
    Failed(String),
}

/// Runs `change` with the system tor stopped, when `involved` and tor runs, and starts it
/// again afterwards if `change` says so (its second value).
pub fn with_tor_stopped<T>(
    involved: bool,
    change: impl FnOnce() -> (T, bool),
) -> Result<(T, TorRestart)> {
    let running = if involved { tor::find()? } else { None };
    let Some(tor) = running else {
        return Ok((change().0, TorRestart::NotRunning));
    };
    tor::stop(&tor)?;
    let (value, restart) = change();
    if !restart {
        return Ok((value, TorRestart::LeftStopped));
    }
    let outcome = match tor::start(&tor, Path::new(tor::DATA_DIR)) {
        Ok(()) => TorRestart::Restarted,
        Err(e) => TorRestart::Failed(e.to_string()),
    };
    Ok((value, outcome))
}

/// Deactivates entries (in reverse order): unmounts binds, removes links. When one cannot
/// be deactivated (a process holds it open), those already deactivated are activated again
/// and the error is returned: all or nothing.
pub fn deactivate_entries(
    volume: &Dir,
    mount_root: &Path,
    volume_dev: (u32, u32),
    entries: &[ResolvedEntry],
) -> Result<TorRestart> {
    let table = mounts::read_mountinfo()?;
    let tor_involved = entries.iter().any(|r| {
        r.service == Some(Service::Tor)
            && binder::bind_is_active(&table, volume_dev, &r.entry.source, &r.entry.destination)
    });
    // tor is started again whether or not the change went through: on the amnesic folder
    // after a disable, or on the persistent one after a rollback.
    let (result, restart) = with_tor_stopped(tor_involved, || {
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
    let mut done: Vec<ResolvedEntry> = Vec::new();
    for r in entries.iter().rev() {
        let e = &r.entry;
        let result = match e.method {
            Method::Bind
                if binder::bind_is_active(table, volume_dev, &e.source, &e.destination) =>
            {
                mounts::unmount(&e.destination).map_err(|err| match err.exit_code() {
                    crate::error::ExitCode::Busy => Error::Busy(format!(
                        "{} is in use ({}); close what uses it and try again",
                        e.destination.display(),
                        crate::processes::holders_of(volume_dev)
                            .iter()
                            .map(|h| h.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                    _ => err,
                })
            }
            Method::Bind => Ok(()),
            Method::Link => {
                binder::unlink_tree(&e.destination, &mount_root.join(&e.source)).map(|_| ())
            }
        };
        if let Err(err) = result {
            done.reverse();
            for r in &done {
                let _ = binder::activate(volume, r);
            }
            return Err(err);
        }
        done.push(r.clone());
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
            let active = match e.method {
                Method::Bind => {
                    binder::bind_is_active(table, volume_dev, &e.source, &e.destination)
                }
                Method::Link => links_into(&e.destination, &mount_root.join(&e.source)),
            };
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

/// Whether any entry of `dest` is a symlink into `source` (a link feature is active).
fn links_into(dest: &Path, source: &Path) -> bool {
    std::fs::read_dir(dest).is_ok_and(|rd| {
        rd.filter_map(|e| e.ok())
            .any(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.starts_with(source)))
    })
}

pub fn config_errors(config: &ConfigFile) -> Vec<LineError> {
    config.errors().cloned().collect()
}

/// The mount root as a path to create: parents root-owned 0755, the root itself 0755 (the
/// volume's own root folder, once mounted over it, carries its own mode).
pub fn ensure_mount_point(path: &Path) -> Result<Vec<safefs::Made>> {
    let (_, created) = safefs::open_dir(path, Some(Owner::ROOT_0755))?;
    Ok(created)
}

pub fn sync_all() {
    nix::unistd::sync();
}

/// Asks the kernel to drop clean page-cache pages, dentries and inodes, so that plaintext
/// read from the volume does not linger in RAM after lock.
/// Drops clean cached pages, dentries and inodes. The volume's own are gone already with
/// its unmount and close; this is the belt to those braces.
pub fn drop_caches() -> Result<()> {
    std::fs::write("/proc/sys/vm/drop_caches", b"3\n").context(|| "dropping the page cache".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::tests::FakeHost;

    #[test]
    fn a_source_nested_in_another_fails_alone() {
        let config = ConfigFile::parse(
            "/home/amnesia/Persistent\tsource=Persistent\n\
             /usr/local/sbin\tsource=Persistent/sbin\n\
             /home/amnesia/.gnupg\tsource=gnupg\n\
             /home/amnesia/other\tsource=gnupg\n",
        );
        let (resolved, failed) = resolve_entries(&config, &FakeHost);
        let ok: Vec<_> = resolved.iter().map(|r| r.entry.source.clone()).collect();
        assert_eq!(
            ok,
            vec![PathBuf::from("Persistent"), PathBuf::from("gnupg")]
        );
        // The same source twice is the parser's error already; nesting is caught here.
        assert_eq!(failed.len(), 1);
        assert!(
            failed[0]
                .error
                .as_deref()
                .unwrap()
                .contains("is inside Persistent")
        );
        assert_eq!(config.errors().count(), 1, "the repeated source");
    }

    #[test]
    fn features_outside_the_home_are_guarded_inside_it_not() {
        let config = ConfigFile::parse(
            "/home/amnesia/Persistent\tsource=Persistent\n/var/lib/tor\tsource=tor-state\n",
        );
        let (resolved, _) = resolve_entries(&config, &FakeHost);
        assert_eq!(resolved[0].guard, None);
        let guard = resolved[1].guard.as_ref().unwrap();
        assert_eq!(guard.owners, vec![0, 101], "root or debian-tor");
        assert_eq!(guard.live_uid, 1000);
    }

    #[test]
    fn a_restored_config_keeps_only_the_lines_activation_would_trust() {
        assert!(nix::unistd::geteuid().is_root(), "this test needs root");
        let tmp = tempfile::tempdir().unwrap();
        let vol = tmp.path();
        for d in ["Persistent/sbin", "tools", "ok"] {
            std::fs::create_dir_all(vol.join(d)).unwrap();
        }
        // FakeHost's live user is uid 1000.
        std::os::unix::fs::chown(vol.join("Persistent"), Some(1000), Some(1000)).unwrap();
        std::os::unix::fs::chown(vol.join("tools"), Some(1000), Some(1000)).unwrap();
        let (volume, _) = safefs::open_dir(vol, None).unwrap();
        let config = ConfigFile::parse(
            "/home/amnesia/Persistent\tsource=Persistent\n\
             /usr/local/sbin\tsource=Persistent/sbin\n\
             /opt/tools\tsource=tools\n\
             /opt/ok\tsource=ok\n",
        );
        write_config(&volume, &config).unwrap();
        let dropped = drop_untrusted_lines(&volume, &FakeHost).unwrap();
        assert_eq!(dropped.len(), 2, "{dropped:?}");
        assert!(dropped[0].contains("Persistent/sbin") && dropped[0].contains("inside Persistent"));
        assert!(
            dropped[1].contains("tools is writable by the live user"),
            "{dropped:?}"
        );
        let kept = read_config(&volume).unwrap().unwrap();
        let sources: Vec<_> = kept.entries().map(|e| e.source.clone()).collect();
        assert_eq!(
            sources,
            vec![PathBuf::from("Persistent"), PathBuf::from("ok")]
        );
        // Nothing more to drop the second time.
        assert!(drop_untrusted_lines(&volume, &FakeHost).unwrap().is_empty());
    }
}
