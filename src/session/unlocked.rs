//! The unlocked volume as the running system shows it: its mapping, its mount, its config,
//! its features. `unlock` builds it; `status`, `lock` and `feature` find it again from the
//! kernel's own tables, so no stale state file can mislead them.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Context, Error, Result};
use crate::host::devices::{self, Mapping};
use crate::host::mounts::{self, Mount};
use crate::persistence::config::{self, ConfigFile, Dialect, Line, Method};
use crate::persistence::features::{self, Host, ResolvedEntry, Service};
use crate::persistence::layout::{
    CONFIG_FILE, KEEPSAKE_CONFIG_FILE, Layout, LayoutProfile, RUNTIME_DIR,
};
use crate::safefs::{self, Dir, Owner};
use crate::session::binder::{self, Action};
use crate::session::tor;

/// The largest persistence.conf accepted.
pub const MAX_CONFIG: u64 = 64 * 1024;

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
    )?;
    Ok(())
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
    /// ([`crate::volume::discovery::open_volumes`]), keepsake's runtime records vouching only for
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
            crate::volume::discovery::open_volumes(&devices::all_mappings(), &table, &recorded)
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

/// Reads the volume's enabled features: persistence.conf, read with its layout's reader's
/// rules ([`Dialect`]), and in the Tails layout also keepsake.conf (the features Tails
/// does not know; their lines follow). A file someone other than root (or Tails' own
/// account) could have written is refused whole: then any line of it may be an
/// attacker's.
pub fn read_config(volume: &Dir, dialect: Dialect) -> Result<Option<ConfigFile>> {
    match read_config_file(volume, CONFIG_FILE, dialect)? {
        Some(shared) => with_keepsake_lines(volume, shared).map(Some),
        // No persistence.conf: keepsake.conf's lines, if it has any, are the config.
        None => {
            let own = with_keepsake_lines(volume, ConfigFile::new(dialect))?;
            Ok((!own.lines.is_empty()).then_some(own))
        }
    }
}

/// In the Tails layout, `config` (persistence.conf) followed by the lines of keepsake.conf
/// (checked as persistence.conf is); a line in both files (a rewrite cut short) counts
/// once. In the live-boot layout, `config` as it is.
pub fn with_keepsake_lines(volume: &Dir, config: ConfigFile) -> Result<ConfigFile> {
    let dialect = config.dialect;
    if dialect != Dialect::Tails {
        return Ok(config);
    }
    let Some(own) = read_config_file(volume, KEEPSAKE_CONFIG_FILE, dialect)? else {
        return Ok(config);
    };
    let mut config = config;
    let own_lines: Vec<Line> = own
        .lines
        .into_iter()
        .filter(|l| match l {
            Line::Entry { entry, .. } => config.find_source(&entry.source).is_none(),
            Line::Invalid { .. } => true,
            Line::Other(_) => false,
        })
        .collect();
    config.lines.extend(own_lines);
    Ok(ConfigFile::parse(&config.render(), dialect))
}

/// Reads one file of the volume in persistence.conf syntax, with the same checks.
pub fn read_config_file(volume: &Dir, name: &str, dialect: Dialect) -> Result<Option<ConfigFile>> {
    let file = match safefs::read_file_in(volume, name, MAX_CONFIG) {
        Ok(f) => f,
        Err(safefs::Error::NotFound(_)) => return Ok(None),
        // Too large, not UTF-8, a symlink: the config is refused (unlock goes on without
        // its features), as one with an untrusted owner is.
        Err(e @ safefs::Error::Invalid(_)) => return Err(Error::Corrupt(e.to_string())),
        Err(e) => return Err(e.into()),
    };
    if let Some(why) = untrusted_config(&file) {
        return Err(Error::Corrupt(format!(
            "{} {why}; no feature was activated",
            volume.path.join(name).display()
        )));
    }
    Ok(Some(ConfigFile::parse(&file.contents, dialect)))
}

/// Why a config file may hold lines someone other than root wrote, if it may: trusted are
/// root's files that nobody else can write (a live-boot config made with `echo > …` is
/// root's 0644), and Tails' own (its tails-persistent-storage account, mode 0600); never a
/// file with an ACL.
pub fn untrusted_config(file: &safefs::CheckedFile) -> Option<String> {
    let o = file.owner;
    if file.has_acl {
        return Some("has an ACL".into());
    }
    if o.uid == 0 && o.mode & 0o022 == 0 {
        return None;
    }
    if is_tails_account(o) && o.mode == 0o600 {
        return None;
    }
    Some(format!(
        "must be root's and writable by nobody else, or Tails' with mode 0600 (it is uid {} gid {}, mode {:04o})",
        o.uid, o.gid, o.mode
    ))
}

/// Why Tails would refuse this persistence.conf at boot (rename it to
/// persistence.conf.invalid and activate nothing), if it would: Tails accepts only a
/// regular file of its tails-persistent-storage account, mode exactly 0600, without ACL.
pub fn tails_refuses(file: &safefs::CheckedFile) -> Option<String> {
    let o = file.owner;
    if !is_tails_account(o) || o.mode != 0o600 || file.has_acl {
        return Some(format!(
            "Tails accepts persistence.conf only as {}:{} mode 0600 without ACL (it is uid {} gid {}, mode {:04o}{}): Tails would set it aside and activate nothing at boot",
            TAILS_CONFIG_IDS.0,
            TAILS_CONFIG_IDS.1,
            o.uid,
            o.gid,
            o.mode,
            if file.has_acl { ", with an ACL" } else { "" }
        ));
    }
    None
}

/// Tails' own account for persistence.conf, and the ids Tails fixes for it on every
/// release (its build hook 05-adduser_tails-persistent-storage).
const TAILS_CONFIG_ACCOUNT: &str = "tails-persistent-storage";
const TAILS_CONFIG_IDS: (u32, u32) = (115, 122);

/// The owner Tails requires of persistence.conf: its account by name where it exists, by
/// Tails' fixed ids elsewhere.
fn tails_config_ids() -> (u32, u32) {
    nix::unistd::User::from_name(TAILS_CONFIG_ACCOUNT)
        .ok()
        .flatten()
        .map_or(TAILS_CONFIG_IDS, |u| (u.uid.as_raw(), u.gid.as_raw()))
}

fn is_tails_account(owner: Owner) -> bool {
    (owner.uid, owner.gid) == tails_config_ids()
}

/// Writes the volume's enabled features: in the Tails layout, persistence.conf as Tails
/// wants it (its account, mode 0600, no ACL) without the features Tails does not know,
/// whose lines go to keepsake.conf (root's, 0600); in the live-boot layout, everything to
/// persistence.conf, root's, 0600. Each file is replaced atomically.
pub fn write_config(volume: &Dir, config: &ConfigFile) -> Result<()> {
    if config.dialect != Dialect::Tails {
        return write_config_file(volume, CONFIG_FILE, config, (0, 0));
    }
    let keepsake_only = |l: &Line| {
        matches!(l, Line::Entry { entry, .. }
            if features::Feature::by_source(&entry.source).is_some_and(|(f, _)| f.keepsake_only))
    };
    let mut shared = ConfigFile::new(config.dialect);
    let mut own = ConfigFile::new(config.dialect);
    let mut entries = Vec::new();
    for line in &config.lines {
        if keepsake_only(line) {
            own.lines.push(line.clone());
        } else if let Line::Entry { text, .. } = line {
            entries.push((text.clone(), line.clone()));
        } else {
            shared.lines.push(line.clone());
        }
    }
    // Its lines sorted and each once, as Tails' own save() writes them (comments and lines
    // Tails would skip, which it drops at its next save, are kept first).
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries.dedup_by(|a, b| a.0 == b.0);
    shared.lines.extend(entries.into_iter().map(|(_, l)| l));
    // keepsake.conf first: cut short, a line is in both files, and read once.
    if own.lines.is_empty() {
        safefs::remove_file_in(volume, KEEPSAKE_CONFIG_FILE)?;
    } else {
        write_config_file(volume, KEEPSAKE_CONFIG_FILE, &own, (0, 0))?;
    }
    write_config_file(volume, CONFIG_FILE, &shared, tails_config_ids())
}

/// Writes the definitions of custom features (keepsake-features.conf): root's, 0600.
pub fn write_custom(volume: &Dir, custom: &ConfigFile) -> Result<()> {
    write_config_file(
        volume,
        crate::persistence::layout::CUSTOM_FEATURES_FILE,
        custom,
        (0, 0),
    )
}

/// Reads the definitions of custom features, with persistence.conf's checks.
pub fn read_custom(volume: &Dir, dialect: Dialect) -> Result<ConfigFile> {
    Ok(read_config_file(
        volume,
        crate::persistence::layout::CUSTOM_FEATURES_FILE,
        dialect,
    )?
    .unwrap_or_else(|| ConfigFile::new(dialect)))
}

/// Replaces one config file atomically, mode 0600, owned by `owner`.
pub fn write_config_file(
    volume: &Dir,
    name: &str,
    config: &ConfigFile,
    owner: (u32, u32),
) -> Result<()> {
    safefs::write_file_atomically(
        volume,
        name,
        config.render().as_bytes(),
        Owner {
            uid: owner.0,
            gid: owner.1,
            mode: 0o600,
        },
    )?;
    Ok(())
}

/// The state of one feature line after activation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FeatureState {
    Active,
    Inactive,
    Failed,
    Skipped,
    /// Its reader applies it at boot; keepsake does not in a running session (`/ union`).
    AtBoot,
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

/// Resolves the config's entries, in the order they are activated (see
/// [`activation_order`]). One whose owner cannot be resolved, or whose source is nested in
/// another's, fails alone; one that takes effect at boot only is skipped. Both are
/// reported in the second list.
pub fn resolve_entries(
    config: &ConfigFile,
    host: &dyn Host,
) -> (Vec<ResolvedEntry>, Vec<FeatureReport>) {
    let mut resolved = Vec::new();
    let mut refused = Vec::new();
    let nested = config.nested_sources();
    for entry in activation_order(config) {
        let refusal = |state, why: String| FeatureReport {
            name: entry.source.display().to_string(),
            source: entry.source.clone(),
            destination: entry.destination.clone(),
            method: entry.method,
            enabled: true,
            active: false,
            state,
            error: Some(why),
        };
        if let Some(why) = config::boot_only(entry) {
            refused.push(refusal(FeatureState::AtBoot, why));
            continue;
        }
        let outcome = match nested.iter().find(|(e, _)| e == entry) {
            Some((_, why)) => Err(Error::UntrustedSource(why.clone())),
            None => features::resolve(entry, host).map_err(Error::from),
        };
        match outcome {
            Ok(r) => resolved.push(r),
            Err(e) => refused.push(refusal(FeatureState::Failed, e.to_string())),
        }
    }
    (resolved, refused)
}

/// The config's entries in the order their reader activates them (and keepsake too;
/// deactivation runs backwards). Tails: its catalogue order, custom features after.
/// live-boot: mounts sorted by destination, so that /srv/www comes before
/// /srv/www/uploads, then links in the file's order, so that no mount hides them.
pub fn activation_order(config: &ConfigFile) -> Vec<&config::Entry> {
    let mut entries: Vec<&config::Entry> = config.entries().collect();
    match config.dialect {
        Dialect::Tails => entries.sort_by_key(|e| features::Feature::rank(&e.source)),
        Dialect::LiveBoot => entries.sort_by(|a, b| {
            (
                !a.method.mounts(),
                a.method.mounts().then_some(&a.destination),
            )
                .cmp(&(
                    !b.method.mounts(),
                    b.method.mounts().then_some(&b.destination),
                ))
        }),
    }
    entries
}

/// Removes from the volume's persistence.conf every line that activation would refuse as
/// one the live user could turn against the system: a source nested in another's, or a
/// source outside the home that the live user can change ([`binder::refuse_an_untrusted_source`]).
/// Returns the lines dropped, each with why. (For a config that came from elsewhere: a
/// restored archive.)
pub fn drop_untrusted_lines(
    volume: &Dir,
    dialect: Dialect,
    host: &dyn Host,
) -> Result<Vec<String>> {
    let Some(mut config) = read_config(volume, dialect)? else {
        return Ok(vec![]);
    };
    let nested = config.nested_sources();
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
        config.remove_entry(entry);
    }
    if !dropped.is_empty() {
        write_config(volume, &config)?;
    }
    Ok(dropped
        .into_iter()
        .map(|(entry, why)| format!("'{}' ({why})", entry.render(dialect)))
        .collect())
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
        let result = if e.method == Method::Link {
            binder::unlink_tree(&e.destination, &mount_root.join(&e.source)).map(|_| ())
        } else if binder::is_active(table, volume_dev, mount_root, e) {
            mounts::unmount(&e.destination)
                .map_err(Error::from)
                .map_err(|err| match err.exit_code() {
                    crate::error::ExitCode::Busy => Error::Busy(format!(
                        "{} is in use ({}); close what uses it and try again",
                        e.destination.display(),
                        crate::host::processes::holders_of(volume_dev)
                            .iter()
                            .map(|h| h.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                    _ => err,
                })
        } else {
            Ok(())
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
            let active = binder::is_active(table, volume_dev, mount_root, e);
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
    use crate::persistence::features::tests::FakeHost;

    #[test]
    fn a_source_nested_in_another_fails_alone() {
        let config = ConfigFile::parse(
            "/home/amnesia/Persistent\tsource=Persistent\n\
             /usr/local/sbin\tsource=Persistent/sbin\n\
             /home/amnesia/.gnupg\tsource=gnupg\n\
             /home/amnesia/other\tsource=gnupg\n",
            Dialect::Tails,
        );
        let (resolved, failed) = resolve_entries(&config, &FakeHost);
        let ok: Vec<_> = resolved.iter().map(|r| r.entry.source.clone()).collect();
        assert_eq!(
            ok,
            vec![PathBuf::from("Persistent"), PathBuf::from("gnupg")]
        );
        // Nested, and the same source twice: both fail alone, the parser lets both through.
        let errors: Vec<&str> = failed.iter().filter_map(|f| f.error.as_deref()).collect();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors.iter().any(|e| e.contains("is inside Persistent")));
        assert!(errors.iter().any(|e| e.contains("the same as gnupg")));
        assert_eq!(config.errors().count(), 0);
    }

    #[test]
    fn a_tails_config_is_written_as_tails_writes_it_and_tor_state_apart() {
        use std::os::unix::fs::MetadataExt;
        assert!(nix::unistd::geteuid().is_root(), "this test needs root");
        let tmp = tempfile::tempdir().unwrap();
        let (volume, _) = safefs::open_dir(tmp.path(), None).unwrap();
        let config = ConfigFile::parse(
            "# mine\n/home/amnesia/.ssh\tsource=openssh-client\n/var/lib/tor\tsource=tor-state\n\
             '/home/amnesia/My Docs'\tsource=docs\n/home/amnesia\tsource=dotfiles,link\n",
            Dialect::Tails,
        );
        write_config(&volume, &config).unwrap();
        let shared = std::fs::read_to_string(tmp.path().join(CONFIG_FILE)).unwrap();
        assert_eq!(
            shared,
            "# mine\n'/home/amnesia/My Docs'\tsource=docs\n/home/amnesia\tsource=dotfiles,link\n/home/amnesia/.ssh\tsource=openssh-client\n"
        );
        let m = std::fs::metadata(tmp.path().join(CONFIG_FILE)).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (115, 122, 0o600));
        let own = std::fs::read_to_string(tmp.path().join(KEEPSAKE_CONFIG_FILE)).unwrap();
        assert_eq!(own, "/var/lib/tor\tsource=tor-state\n");
        let m = std::fs::metadata(tmp.path().join(KEEPSAKE_CONFIG_FILE)).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o7777), (0, 0o600));
        // Read back: one config, tor-state included; disabling it removes keepsake.conf.
        let mut back = read_config(&volume, Dialect::Tails).unwrap().unwrap();
        assert_eq!(back.entries().count(), 4);
        assert!(back.remove_source(Path::new("tor-state")));
        write_config(&volume, &back).unwrap();
        assert!(!tmp.path().join(KEEPSAKE_CONFIG_FILE).exists());
    }

    #[test]
    fn an_empty_persistence_conf_is_a_config_with_no_feature_not_a_missing_one() {
        assert!(nix::unistd::geteuid().is_root(), "this test needs root");
        let tmp = tempfile::tempdir().unwrap();
        let (volume, _) = safefs::open_dir(tmp.path(), None).unwrap();
        for dialect in [Dialect::Tails, Dialect::LiveBoot] {
            assert_eq!(read_config(&volume, dialect).unwrap(), None);
        }
        std::fs::write(tmp.path().join(CONFIG_FILE), "").unwrap();
        std::fs::set_permissions(
            tmp.path().join(CONFIG_FILE),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        for dialect in [Dialect::Tails, Dialect::LiveBoot] {
            let config = read_config(&volume, dialect).unwrap().expect("present");
            assert_eq!(config.entries().count(), 0);
        }
    }

    #[test]
    fn features_activate_in_their_readers_order() {
        let dests = |text: &str, dialect| {
            let config = ConfigFile::parse(text, dialect);
            activation_order(&config)
                .into_iter()
                .map(|e| e.destination.display().to_string())
                .collect::<Vec<_>>()
        };
        // Tails: its catalogue's order, whatever the file's; Dotfiles last of the built-ins
        // (so its links land in .ssh after .ssh is bound), custom features after.
        assert_eq!(
            dests(
                "/home/amnesia\tsource=dotfiles,link\n/opt/x\tsource=x\n/home/amnesia/.ssh\tsource=openssh-client\n/home/amnesia/Persistent\tsource=Persistent\n",
                Dialect::Tails
            ),
            [
                "/home/amnesia/Persistent",
                "/home/amnesia/.ssh",
                "/home/amnesia",
                "/opt/x"
            ]
        );
        // live-boot: mounts sorted by destination (sort -k3), then links in file order.
        assert_eq!(
            dests(
                "/home/u source=d link\n/srv/www/uploads source=up\n/srv/data union\n/srv/www source=www\n",
                Dialect::LiveBoot
            ),
            ["/srv/data", "/srv/www", "/srv/www/uploads", "/home/u"]
        );
    }

    #[test]
    fn features_outside_the_home_are_guarded_inside_it_not() {
        let config = ConfigFile::parse(
            "/home/amnesia/Persistent\tsource=Persistent\n/var/lib/tor\tsource=tor-state\n",
            Dialect::Tails,
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
            Dialect::Tails,
        );
        write_config(&volume, &config).unwrap();
        let dropped = drop_untrusted_lines(&volume, Dialect::Tails, &FakeHost).unwrap();
        assert_eq!(dropped.len(), 2, "{dropped:?}");
        // (Tails' file is sorted: the order of the lines is not the order given.)
        assert!(
            dropped
                .iter()
                .any(|d| d.contains("Persistent/sbin") && d.contains("inside Persistent")),
            "{dropped:?}"
        );
        assert!(
            dropped
                .iter()
                .any(|d| d.contains("tools is writable by the live user")),
            "{dropped:?}"
        );
        let kept = read_config(&volume, Dialect::Tails).unwrap().unwrap();
        let sources: Vec<_> = kept.entries().map(|e| e.source.clone()).collect();
        assert_eq!(
            sources,
            vec![PathBuf::from("Persistent"), PathBuf::from("ok")]
        );
        // Nothing more to drop the second time.
        assert!(
            drop_untrusted_lines(&volume, Dialect::Tails, &FakeHost)
                .unwrap()
                .is_empty()
        );
    }
}
