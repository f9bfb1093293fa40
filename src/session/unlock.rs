//! `unlock`, once the volume is open: preen, mount, activate its features, record.

use std::path::Path;

use serde::Serialize;

use crate::host::devices;
use crate::host::mounts;
use crate::host::tools::{self, FsckResult};
use crate::host::writers::Writers;
use crate::output::Output;
use crate::persistence::features::SystemHost;
use crate::persistence::files;
use crate::persistence::layout::Layout;
use crate::safefs;
use crate::session::error::{Error, Result};
use crate::session::record::{self, FailedFeature, Record};
use crate::session::report::{ConfigErrorReport, FeatureReport, FeatureState};
use crate::session::{lifecycle, plan, unlocked};

/// What starting the session did: part of unlock's report.
#[derive(Debug, Serialize)]
pub struct Started {
    pub fsck: FsckResult,
    pub features: Vec<FeatureReport>,
    pub config_errors: Vec<ConfigErrorReport>,
    /// Why persistence.conf was refused as a whole (owner, mode, size, encoding, type).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_refused: Option<String>,
    pub warnings: Vec<String>,
    /// Why someone other than root could have written the volume, when someone could:
    /// then only features in the live user's home were activated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_only_root: Option<String>,
}

/// Starts the session of a volume just opened as `layout.mapping`: e2fsck preens it,
/// it is mounted at the layout's mount root with Tails' access rules, its features are
/// activated (each alone: one that fails is undone and reported), and the runtime record
/// is written. On error the caller closes what it opened.
pub fn start(
    layout: &Layout,
    backing: &Path,
    live_user: Option<&str>,
    writers: &Writers,
    mounts_before: &[mounts::Mount],
    out: Output,
) -> Result<Started> {
    let device = layout.mapper_path();
    let fsck = tools::fsck_preen(&device)?;
    if fsck == FsckResult::Repaired {
        out.warn("e2fsck repaired the filesystem (was it unplugged without lock?)");
    }
    // A backup stick whose last backup was cut off after its commit: finished first, so
    // that what shows is the new backup, whole.
    if let Some(done) = finish_interrupted_backup(&device, &layout.mapping)? {
        out.warn(done);
    }
    unlocked::ensure_mount_point(&layout.mount_root)?;
    mounts::mount_ext4(&device, &layout.mount_root)?;
    let volume_dev = devices::mapping_dev(&layout.mapping)
        .ok_or_else(|| Error::Unexpected(format!("{} vanished after opening", layout.mapping)))?;
    let (volume_dir, _) = safefs::open_dir(&layout.mount_root, None)?;
    let host = SystemHost::new(live_user);
    // As Tails does at every mount: root:root 0770, no ACL but `user:LIVE:x`, so that the
    // live user reaches its features' folders (and the dotfiles' links) and lists nothing.
    safefs::set_mount_root_access(&volume_dir, host.live_user.as_ref().ok().map(|u| u.uid))?;
    if layout.profile == crate::persistence::layout::LayoutProfile::Tails
        && let Ok(user) = &host.live_user
    {
        // And, as Tails does, the live user's top-level folders lose any group and other
        // access (the mount root's ACL lets that user through, and only that user).
        for entry in safefs::list(&volume_dir)? {
            let o = entry.owner();
            if entry.is_dir() && (o.uid, o.gid) == (user.uid, user.gid) && o.mode & 0o077 != 0 {
                let (dir, _) = safefs::open_beneath(&volume_dir, Path::new(&entry.name), None)?;
                safefs::set_owner(
                    &dir,
                    safefs::Owner {
                        mode: o.mode & !0o077,
                        ..o
                    },
                )?;
            }
        }
    }
    let mut warnings = Vec::new();
    if let Some(why) = writers.why() {
        warnings.push(format!(
            "someone other than root could have written {} ({why}): it is treated as the live user's volume, and only its features in the live user's home are activated",
            backing.display()
        ));
    }
    // Before any feature shows the volume's top: what a killed restore left there. unlock
    // holds keepsake's exclusive lock, so no restore is running.
    match crate::archive::restore::remove_leftovers(&volume_dir) {
        Ok(cleaned) => warnings.extend(cleaned.removed.into_iter().chain(cleaned.kept)),
        Err(e) => warnings.push(format!(
            "what a killed restore left in the volume could not be removed: {e}"
        )),
    }
    let mut features = Vec::new();
    let mut config_errors = Vec::new();
    let mut config_refused = None;
    match files::read_config(&volume_dir, layout.profile.into()) {
        Ok(Some(config)) => {
            config_errors = config.errors().map(ConfigErrorReport::from).collect();
            let (entries, mut failed) = plan::resolve_entries(&config, &host, writers);
            // The table from before the volume was opened: none of its features can be
            // active yet, and that is all activation looks the table up for.
            features = lifecycle::activate_features(
                &volume_dir,
                &layout.mount_root,
                volume_dev,
                &entries,
                mounts_before,
            )?;
            features.append(&mut failed);
        }
        Ok(None) => {
            warnings.push("the volume has no persistence.conf: no feature is enabled".to_string())
        }
        Err(e @ files::Error::Refused(_)) => config_refused = Some(e.to_string()),
        Err(e) => return Err(e.into()),
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
    record::write_record(layout, &record)?;
    Ok(Started {
        fsck,
        features,
        config_errors,
        config_refused,
        warnings,
        not_only_root: writers.why().map(str::to_string),
    })
}

/// Carries out what an interrupted backup to this volume left (see
/// [`crate::mirror::finish_interrupted`]) on a mount of its own in /run/keepsake, which only
/// root reaches. The plan's steps act on names, in folders the live user owns: at the mount
/// root, whose ACL lets the live user through, it could put another file at a name meanwhile
/// (root's, to be given its own owner and mode). Unmounted after: the volume is mounted at
/// its mount root only once nothing is left to do in it.
fn finish_interrupted_backup(device: &Path, mapping: &str) -> Result<Option<String>> {
    let runtime = record::runtime_dir()?;
    let name = format!("finishing-{mapping}");
    let (point, _) =
        safefs::open_beneath(&runtime, Path::new(&name), Some(safefs::Owner::ROOT_0700))?;
    let done = mounts::mount_ext4(device, &point.path)
        .map_err(Error::from)
        .and_then(|()| {
            let done = safefs::open_dir(&point.path, None)
                .map_err(Error::from)
                .and_then(|(volume, _)| Ok(crate::mirror::finish_interrupted(&volume)?));
            // The unmount writes back what the plan changed.
            mounts::unmount_or_detach(&point.path);
            done
        });
    let _ = nix::unistd::unlinkat(
        &runtime.fd,
        name.as_str(),
        nix::unistd::UnlinkatFlags::RemoveDir,
    );
    done
}
