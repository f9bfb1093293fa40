//! `keepsake status`: the volume, its mapping and mount, and each feature's state.

use std::path::PathBuf;

use serde::Serialize;

use crate::cli::{GlobalArgs, StatusArgs};
use crate::error::Result;
use crate::output::Output;
use crate::persistence::features::SystemHost;
use crate::persistence::layout::LayoutProfile;
use crate::session::unlocked::{self, FeatureReport, FeatureState, Unlocked};

use super::unlock::ConfigErrorReport;

/// The JSON shape is part of the interface: see `keepsake help status`.
#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub version: u32,
    pub layout: LayoutProfile,
    pub unlocked: bool,
    /// The open volume of the layout (else the first open one), with its features.
    pub volume: Option<VolumeReport>,
    pub features: Vec<FeatureReport>,
    pub config_errors: Vec<ConfigErrorReport>,
    /// Every open persistence volume, of either layout, however it was opened.
    pub volumes: Vec<VolumeStatus>,
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

#[derive(Debug, Clone, Serialize)]
pub struct VolumeStatus {
    #[serde(flatten)]
    pub volume: VolumeReport,
    pub features: Vec<FeatureReport>,
    pub config_errors: Vec<ConfigErrorReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VolumeReport {
    /// The layout it was found under.
    pub layout: LayoutProfile,
    /// Opened by the system at boot (Tails' Welcome Screen, live-boot), not by keepsake.
    pub opened_at_boot: bool,
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
        volumes: vec![],
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
    let pids = crate::session::tor::pids_using_data_dir();
    report.tor.running = !pids.is_empty();
    report.tor.pids = pids;
    let mut volumes = Vec::new();
    for u in Unlocked::find_all()? {
        if u.table.iter().any(|m| {
            m.dev == u.mapping.dev
                && m.mount_point == std::path::Path::new(crate::session::tor::DATA_DIR)
        }) {
            report.tor.state = "persistent";
        }
        volumes.push(volume_status(&u, out));
    }
    report.unlocked = !volumes.is_empty();
    let main = volumes
        .iter()
        .position(|v| v.volume.layout == layout.profile)
        .unwrap_or(0);
    if let Some(v) = volumes.get(main) {
        report.volume = Some(v.volume.clone());
        report.features = v.features.clone();
        report.config_errors = v.config_errors.clone();
    }
    report.volumes = volumes;
    out.result(&report, human);
    Ok(())
}

/// One open volume: its devices, keyslots, and each feature's state.
fn volume_status(u: &Unlocked, out: Output) -> VolumeStatus {
    let layout = crate::persistence::layout::Layout::new(u.profile, None);
    let record = unlocked::read_record(&layout).filter(|r| r.mapping == u.mapping.name);
    let backing_dev = u
        .mapping
        .slaves
        .first()
        .map(|s| crate::host::devices::dev_path(s));
    let image = u
        .mapping
        .slaves
        .first()
        .and_then(|s| crate::host::devices::loop_backing_file(s));
    let keyslots = record
        .as_ref()
        .map(|r| r.backing.clone())
        .or_else(|| u.backing())
        .and_then(|b| crate::volume::header_info(&b).ok())
        .map(|h| h.keyslots)
        .unwrap_or_default();
    let mut status = VolumeStatus {
        volume: VolumeReport {
            layout: u.profile,
            opened_at_boot: record.is_none(),
            keyslots,
            mapping: u.mapping.name.clone(),
            device: crate::host::devices::dev_path(&u.mapping.kernel_name),
            backing: backing_dev,
            image,
            mount_root: u.mount_root.clone(),
        },
        features: vec![],
        config_errors: vec![],
    };
    if let (Some(root), Ok(dir)) = (&u.mount_root, u.volume_dir()) {
        match unlocked::read_config(&dir, u.profile.into()) {
            Ok(Some(config)) => {
                let host = SystemHost::new(None);
                let (entries, mut failed) = unlocked::resolve_entries(&config, &host);
                status.features = unlocked::feature_states(
                    &entries,
                    &u.table,
                    u.mapping.dev,
                    root,
                    record.as_ref(),
                );
                status.features.append(&mut failed);
                status.config_errors = config.errors().map(ConfigErrorReport::from).collect();
            }
            Ok(None) => {}
            Err(e) => out.warn(e),
        }
    }
    status
}

fn volume_text(text: &mut String, vs: &VolumeStatus) {
    let v = &vs.volume;
    text.push_str(&format!(
        "unlocked: {} on {}{} ({} layout{})\nmounted at {}\n",
        v.mapping,
        v.backing
            .as_ref()
            .map_or_else(|| "?".into(), |b| b.display().to_string()),
        v.image
            .as_ref()
            .map(|i| format!(" ({})", i.display()))
            .unwrap_or_default(),
        match v.layout {
            LayoutProfile::Tails => "Tails",
            LayoutProfile::LiveBoot => "live-boot",
        },
        if v.opened_at_boot {
            ", opened at boot"
        } else {
            ""
        },
        v.mount_root
            .as_ref()
            .map_or_else(|| "(not mounted)".into(), |m| m.display().to_string()),
    ));
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
    for f in &vs.features {
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
    for e in &vs.config_errors {
        text.push_str(&format!(
            "  persistence.conf line {}: {}\n",
            e.line, e.reason
        ));
    }
}

fn human(r: &StatusReport) -> String {
    let tor = match (r.tor.running, r.tor.state) {
        (true, state) => format!("tor: running on the {state} state\n"),
        (false, "persistent") => "tor: stopped (its persistent state is bound)\n".to_string(),
        (false, _) => String::new(),
    };
    if r.volumes.is_empty() {
        return format!("locked: no volume is unlocked\n{tor}");
    }
    let mut text = String::new();
    for vs in &r.volumes {
        volume_text(&mut text, vs);
    }
    text.push_str(&tor);
    text
}
