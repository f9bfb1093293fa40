//! `keepsake status`: the volume, its mapping and mount, and each feature's state.

use std::path::PathBuf;

use serde::Serialize;

use crate::cli::{GlobalArgs, StatusArgs};
use crate::error::Result;
use crate::features::SystemHost;
use crate::layout::LayoutProfile;
use crate::output::Output;
use crate::unlocked::{self, FeatureReport, FeatureState, Unlocked};

use super::unlock::ConfigErrorReport;

/// The JSON shape is part of the interface: see `keepsake help status`.
#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub version: u32,
    pub layout: LayoutProfile,
    pub unlocked: bool,
    pub volume: Option<VolumeReport>,
    pub features: Vec<FeatureReport>,
    pub config_errors: Vec<ConfigErrorReport>,
    pub tor: TorReport,
    pub kdf: KdfReport,
}

/// The argon2id memory ceiling new keyslots get on this machine now.
#[derive(Debug, Serialize)]
pub struct KdfReport {
    pub mem_available_kib: Option<u64>,
    pub default_max_memory_kib: u32,
}

/// Whether tor runs, and on which state.
#[derive(Debug, Serialize)]
pub struct TorReport {
    pub running: bool,
    pub pids: Vec<i32>,
    /// "persistent" when its DataDirectory is bound from the volume, else "amnesic".
    pub state: &'static str,
}

#[derive(Debug, Serialize)]
pub struct VolumeReport {
    pub mapping: String,
    pub device: PathBuf,
    pub backing: Option<PathBuf>,
    pub image: Option<PathBuf>,
    pub mount_root: Option<PathBuf>,
    /// The volume's keyslots: number, role ("passphrase" or "recovery"), KDF and cost.
    pub keyslots: Vec<crate::volume::KeyslotInfo>,
}

pub fn run(global: &GlobalArgs, _args: StatusArgs, out: Output) -> Result<()> {
    super::require_root()?;
    let layout = super::layout(global, None);
    let mut report = StatusReport {
        version: 1,
        layout: global.layout,
        unlocked: false,
        volume: None,
        features: vec![],
        config_errors: vec![],
        tor: TorReport {
            running: false,
            pids: vec![],
            state: "amnesic",
        },
        kdf: {
            let available = crate::volume::mem_available_kib();
            KdfReport {
                mem_available_kib: available,
                default_max_memory_kib: crate::volume::default_max_memory_kib(available),
            }
        },
    };
    let pids = crate::tor::pids_using_data_dir();
    report.tor.running = !pids.is_empty();
    report.tor.pids = pids;
    if let Some(u) = Unlocked::find(&layout)? {
        if u.table.iter().any(|m| {
            m.dev == u.mapping.dev && m.mount_point == std::path::Path::new(crate::tor::DATA_DIR)
        }) {
            report.tor.state = "persistent";
        }
        let record = unlocked::read_record(&layout);
        let backing_dev = u
            .mapping
            .slaves
            .first()
            .map(|s| crate::devices::dev_path(s));
        let image = u
            .mapping
            .slaves
            .first()
            .and_then(|s| crate::devices::loop_backing_file(s));
        report.unlocked = true;
        let keyslots = record
            .as_ref()
            .map(|r| r.backing.clone())
            .and_then(|b| crate::volume::header_info(&b).ok())
            .map(|h| h.keyslots)
            .unwrap_or_default();
        report.volume = Some(VolumeReport {
            keyslots,
            mapping: u.mapping.name.clone(),
            device: crate::devices::dev_path(&u.mapping.kernel_name),
            backing: backing_dev,
            image,
            mount_root: u.mount_root.clone(),
        });
        if let (Some(root), Ok(dir)) = (&u.mount_root, u.volume_dir()) {
            match unlocked::read_config(&dir, global.layout.into()) {
                Ok(Some(config)) => {
                    let host = SystemHost::new(None);
                    let (entries, mut failed) = unlocked::resolve_entries(&config, &host);
                    report.features = unlocked::feature_states(
                        &entries,
                        &u.table,
                        u.mapping.dev,
                        root,
                        record.as_ref(),
                    );
                    report.features.append(&mut failed);
                    report.config_errors = config.errors().map(ConfigErrorReport::from).collect();
                }
                Ok(None) => {}
                Err(e) => out.warn(e),
            }
        }
    }
    out.result(&report, human);
    Ok(())
}

fn human(r: &StatusReport) -> String {
    let tor = match (r.tor.running, r.tor.state) {
        (true, state) => format!("tor: running on the {state} state\n"),
        (false, "persistent") => "tor: stopped (its persistent state is bound)\n".to_string(),
        (false, _) => String::new(),
    };
    let Some(v) = &r.volume else {
        return format!("locked: no volume is unlocked\n{tor}");
    };
    let mut text = format!(
        "unlocked: {} on {}{}\nmounted at {}\n",
        v.mapping,
        v.backing
            .as_ref()
            .map_or_else(|| "?".into(), |b| b.display().to_string()),
        v.image
            .as_ref()
            .map(|i| format!(" ({})", i.display()))
            .unwrap_or_default(),
        v.mount_root
            .as_ref()
            .map_or_else(|| "(not mounted)".into(), |m| m.display().to_string()),
    );
    for k in &v.keyslots {
        text.push_str(&format!(
            "  keyslot {}: {}, {} ({} MiB)\n",
            k.keyslot,
            match k.role {
                crate::volume::Role::Passphrase => "passphrase",
                crate::volume::Role::Recovery => "recovery key",
            },
            k.kdf,
            k.cost.memory_kib / 1024
        ));
    }
    for f in &r.features {
        let state = match f.state {
            FeatureState::Active => "active",
            FeatureState::AtBoot => "at boot",
            FeatureState::Skipped => "skipped",
            FeatureState::Failed => "FAILED",
            FeatureState::Inactive if f.error.is_some() => "FAILED",
            FeatureState::Inactive => "inactive",
        };
        text.push_str(&format!(
            "  {:<24} {:<8} {}",
            f.name,
            state,
            f.destination.display()
        ));
        if let Some(e) = &f.error {
            text.push_str(&format!("  ({e})"));
        }
        text.push('\n');
    }
    for e in &r.config_errors {
        text.push_str(&format!(
            "  persistence.conf line {}: {}\n",
            e.line, e.reason
        ));
    }
    text.push_str(&tor);
    text
}
