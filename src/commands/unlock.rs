//! `keepsake unlock`: passphrase → open → fsck → mount → activate features.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::cli::{GlobalArgs, UnlockArgs};
use crate::config::LineError;
use crate::devices;
use crate::error::{Error, Result};
use crate::features::SystemHost;
use crate::layout::Layout;
use crate::mounts;
use crate::output::Output;
use crate::safefs;
use crate::tools::{self, FsckResult};
use crate::unlocked::{self, FailedFeature, FeatureReport, FeatureState, Record};
use crate::volume;

#[derive(Debug, Serialize)]
struct UnlockReport {
    backing: PathBuf,
    mapping: String,
    mount_root: PathBuf,
    keyslot: u32,
    fsck: FsckResult,
    features: Vec<FeatureReport>,
    config_errors: Vec<ConfigErrorReport>,
    /// Why persistence.conf was refused as a whole (owner, mode, size, encoding, type).
    #[serde(skip_serializing_if = "Option::is_none")]
    config_refused: Option<String>,
    warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct ConfigErrorReport {
    pub line: usize,
    pub reason: String,
}

impl From<&LineError> for ConfigErrorReport {
    fn from(e: &LineError) -> Self {
        ConfigErrorReport {
            line: e.line,
            reason: e.reason.clone(),
        }
    }
}

pub fn run(global: &GlobalArgs, args: UnlockArgs, out: Output) -> Result<()> {
    super::require_root()?;
    crate::kernel::require_dm_crypt("unlocking a volume")?;
    let profile = super::layout(global, args.mount_root.as_deref());
    if let Some(u) = crate::unlocked::Unlocked::find(&profile)? {
        return Err(Error::Busy(format!(
            "already unlocked as /dev/mapper/{} ({}); run keepsake lock first",
            u.mapping.name, u.mapping.kernel_name
        )));
    }
    let _lock = super::exclusive()?;
    let backing = super::find_volume(&args.volume, &profile)?;
    let layout = profile.for_volume(&backing);
    if let Some(m) = devices::find_mapping(&layout.mapping) {
        return Err(Error::Busy(format!(
            "a mapping named {} ({}) exists already; nothing was changed",
            m.name, m.kernel_name
        )));
    }
    // A file that is not LUKS, or whose keyslots need more memory than this machine has, is
    // refused before anyone types a passphrase for it.
    volume::require_luks(&backing)?;
    volume::require_affordable(&backing, "unlocking")?;
    let secret = if args.recovery_key {
        let typed = super::read_secret_safely(
            global,
            &args.passphrase,
            out,
            "Recovery key",
            false,
            Some(&backing),
        )?;
        crate::recovery::normalize(&typed)?
    } else {
        super::read_passphrase(global, &args.passphrase, out, &backing)?
    };
    out.progress(format!("unlocking {}", backing.display()));
    let keyslot = volume::activate(&backing, &layout.mapping, &secret)?;
    drop(secret);
    match mount_and_activate(&layout, &backing, args.live_user.as_deref(), keyslot, out) {
        Ok(report) => finish(report, out),
        Err(e) => {
            // Nothing half-open is left behind: unmount if mounted, close the mapping.
            let _ = mounts::unmount(&layout.mount_root);
            let _ = volume::deactivate(&layout.mapping);
            Err(e)
        }
    }
}

fn mount_and_activate(
    layout: &Layout,
    backing: &Path,
    live_user: Option<&str>,
    keyslot: u32,
    out: Output,
) -> Result<UnlockReport> {
    let device = layout.mapper_path();
    let fsck = tools::fsck_preen(&device)?;
    if fsck == FsckResult::Repaired {
        out.warn("e2fsck repaired the filesystem (was it unplugged without lock?)");
    }
    unlocked::ensure_mount_point(&layout.mount_root)?;
    mounts::mount_ext4(&device, &layout.mount_root)?;
    let mapping = devices::find_mapping(&layout.mapping)
        .ok_or_else(|| Error::Internal(format!("{} vanished after opening", layout.mapping)))?;
    let (volume_dir, _) = safefs::open_dir(&layout.mount_root, None)?;
    let mut warnings = Vec::new();
    let mut features = Vec::new();
    let mut config_errors = Vec::new();
    let mut config_refused = None;
    match unlocked::read_config(&volume_dir) {
        Ok(Some(config)) => {
            config_errors = config.errors().map(ConfigErrorReport::from).collect();
            let host = SystemHost::new(live_user);
            let (entries, mut failed) = unlocked::resolve_entries(&config, &host);
            features =
                unlocked::activate_entries(&volume_dir, &layout.mount_root, mapping.dev, &entries)?;
            features.append(&mut failed);
        }
        Ok(None) => {
            warnings.push("the volume has no persistence.conf: no feature is enabled".to_string())
        }
        Err(e @ Error::Corrupt(_)) => config_refused = Some(e.to_string()),
        Err(e) => return Err(e),
    }
    let record = Record {
        backing: backing.to_path_buf(),
        mapping: layout.mapping.clone(),
        failed: features
            .iter()
            .filter(|f| f.state == FeatureState::Failed)
            .map(|f| FailedFeature {
                source: f.source.clone(),
                error: f.error.clone().unwrap_or_default(),
            })
            .collect(),
    };
    unlocked::write_record(layout, &record)?;
    Ok(UnlockReport {
        backing: backing.to_path_buf(),
        mapping: layout.mapping.clone(),
        mount_root: layout.mount_root.clone(),
        keyslot,
        fsck,
        features,
        config_errors,
        config_refused,
        warnings,
    })
}

fn finish(report: UnlockReport, out: Output) -> Result<()> {
    for w in report.warnings.iter().chain(&report.config_refused) {
        out.warn(w);
    }
    for e in &report.config_errors {
        out.warn(format!(
            "persistence.conf line {}: {}; that feature is skipped",
            e.line, e.reason
        ));
    }
    let problems: Vec<String> = report
        .features
        .iter()
        .filter(|f| matches!(f.state, FeatureState::Failed | FeatureState::Skipped))
        .map(|f| {
            format!(
                "{}: {}",
                f.name,
                f.error.as_deref().unwrap_or("not activated")
            )
        })
        .collect();
    let config_refused = report.config_refused.is_some();
    out.result(&report, |r| {
        let mut text = format!(
            "unlocked {} at {} (keyslot {})\n",
            r.backing.display(),
            r.mount_root.display(),
            r.keyslot
        );
        for f in &r.features {
            let state = match f.state {
                FeatureState::Active => "active",
                FeatureState::Failed => "FAILED",
                FeatureState::Skipped => "skipped",
                FeatureState::Inactive => "inactive",
            };
            text.push_str(&format!(
                "  {:<24} {:<8} {}\n",
                f.name,
                state,
                f.destination.display()
            ));
        }
        text
    });
    if !problems.is_empty() || !report.config_errors.is_empty() || config_refused {
        let mut parts = problems;
        if !report.config_errors.is_empty() {
            parts.push(format!(
                "{} bad line(s) in persistence.conf",
                report.config_errors.len()
            ));
        }
        if config_refused {
            parts.push("persistence.conf was refused".into());
        }
        return Err(Error::Incomplete(format!(
            "unlocked, but not every feature is active: {}",
            parts.join("; ")
        )));
    }
    Ok(())
}
