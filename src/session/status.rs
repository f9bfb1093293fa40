//! `status`: every open volume, its mapping and mount, its keyslots, each feature's
//! state, and tor's, found again from the kernel's tables.

use std::path::PathBuf;

use serde::Serialize;

use crate::output::Output;
use crate::persistence::features::SystemHost;
use crate::persistence::files;
use crate::persistence::layout::{Layout, LayoutProfile};
use crate::session::error::Result;
use crate::session::report::{ConfigErrorReport, FeatureReport};
use crate::session::unlocked::Unlocked;
use crate::session::{lifecycle, plan, record, tor};

/// The JSON shape is part of the interface: `keepsake status --help` documents it.
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
    /// Volumes whose stick was pulled out since they were unlocked, with what the watcher
    /// did (until the next unlock or lock of that mapping).
    pub wiped: Vec<super::wipe::Wiped>,
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
    /// Why someone other than root could have written the volume's bytes, if anyone
    /// could: then it is the live user's, and activates only features in their home.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_only_root: Option<String>,
    /// Whether pulling the stick wipes the key: the volume's watcher.
    pub watch: super::watch::WatchStatus,
}

/// The session as the kernel's tables show it: every open volume (those of `layout`
/// first), each feature's state, tor's. Problems reading one volume's config are warned
/// about on `out`, and its features left out.
pub fn status(layout: LayoutProfile, out: Output) -> Result<StatusReport> {
    let layout = Layout::new(layout, None);
    let mut report = StatusReport {
        version: 1,
        layout: layout.profile,
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
        wiped: super::watch::all_wipes(),
    };
    let pids = tor::pids_using_data_dir();
    report.tor.running = !pids.is_empty();
    report.tor.pids = pids;
    let mut volumes = Vec::new();
    for u in Unlocked::find_all()? {
        if u.table
            .iter()
            .any(|m| m.dev == u.mapping.dev && m.mount_point == std::path::Path::new(tor::DATA_DIR))
        {
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
    Ok(report)
}

/// One open volume: its devices, keyslots, and each feature's state.
fn volume_status(u: &Unlocked, out: Output) -> VolumeStatus {
    let layout = Layout::new(u.profile, None);
    let record = record::read_record(&layout).filter(|r| r.mapping == u.mapping.name);
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
    let writers = u.writers();
    let mut status = VolumeStatus {
        volume: VolumeReport {
            not_only_root: writers.why().map(str::to_string),
            layout: u.profile,
            opened_at_boot: record.is_none(),
            keyslots,
            mapping: u.mapping.name.clone(),
            device: crate::host::devices::dev_path(&u.mapping.kernel_name),
            backing: backing_dev,
            image,
            mount_root: u.mount_root.clone(),
            watch: super::watch::status(&u.mapping.name),
        },
        features: vec![],
        config_errors: vec![],
    };
    if let (Some(root), Ok(dir)) = (&u.mount_root, u.volume_dir()) {
        match files::read_config(&dir, u.profile.into()) {
            Ok(Some(config)) => {
                let host = SystemHost::new(None);
                let (entries, mut failed) = plan::resolve_entries(&config, &host, &writers);
                status.features = lifecycle::feature_states(
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
