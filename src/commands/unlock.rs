//! `keepsake unlock`: passphrase → open → fsck → mount → activate features.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::cli::{GlobalArgs, UnlockArgs};
use crate::error::{Error, Result};
use crate::host::devices;
use crate::host::mounts;
use crate::output::Output;
use crate::persistence::layout::{Layout, LayoutProfile};
use crate::session::report::FeatureState;
use crate::session::unlock::Started;
use crate::volume::discovery;
use crate::volume::{self, Volume};

#[derive(Debug, Serialize)]
struct UnlockReport {
    backing: PathBuf,
    mapping: String,
    mount_root: PathBuf,
    keyslot: u32,
    #[serde(flatten)]
    session: Started,
    /// The devices tried when the volume was looked for as live-boot looks for it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tried: Vec<TriedDevice>,
}

pub fn run(global: &GlobalArgs, args: UnlockArgs, out: Output) -> Result<()> {
    super::require_root()?;
    crate::host::kernel::require_dm_crypt("unlocking a volume")?;
    let profile = super::layout(global, args.mount_root.as_deref());
    let open: Vec<_> = crate::session::unlocked::Unlocked::find_all()?
        .into_iter()
        .filter(|u| u.profile == profile.profile)
        .collect();
    if !open.is_empty() {
        return Err(Error::Busy(format!(
            "already unlocked: {}; run keepsake lock first",
            crate::session::unlocked::describe_all(&open)
        )));
    }
    let _lock = super::exclusive()?;
    let searched = args.volume.device.is_none() && args.volume.image.is_none();
    let opened = match super::find_volume(&args.volume, &profile) {
        Ok(backing) => open_volume(global, &args, &profile, backing, out)?,
        Err(Error::NotFound(why)) if searched && profile.profile == LayoutProfile::LiveBoot => {
            find_as_live_boot(global, &args, &profile, &why, out)?
        }
        Err(e) => return Err(e),
    };
    let layout = &opened.layout;
    match crate::session::unlock::start(layout, &opened.backing, args.live_user.as_deref(), out) {
        Ok(session) => finish(
            UnlockReport {
                backing: opened.backing.clone(),
                mapping: layout.mapping.clone(),
                mount_root: layout.mount_root.clone(),
                keyslot: opened.keyslot,
                session,
                tried: opened.tried,
            },
            out,
        ),
        Err(e) => {
            // Nothing half-open is left behind: unmount if mounted, close the mapping (a
            // loop device keepsake attached goes with it: autoclear).
            let _ = mounts::unmount(&layout.mount_root);
            let _ = volume::deactivate(&layout.mapping);
            Err(e.into())
        }
    }
}

/// An opened volume, and how it was found.
struct Opened {
    backing: PathBuf,
    layout: Layout,
    keyslot: u32,
    tried: Vec<TriedDevice>,
    /// The loop device attached for a container file, held until the mapping holds it.
    _attached: Option<devices::AttachedLoop>,
}

/// A device tried in live-boot's search, and what came of it.
#[derive(Debug, Serialize)]
pub struct TriedDevice {
    pub device: PathBuf,
    pub outcome: String,
}

/// The passphrase, or the recovery key typed in any form, read the safe way.
fn read_unlock_secret(
    global: &GlobalArgs,
    args: &UnlockArgs,
    out: Output,
    backing: &Path,
) -> Result<crate::secrets::Secret> {
    if args.recovery_key {
        let typed = super::read_secret_safely(
            global,
            &args.passphrase,
            out,
            "Recovery key",
            false,
            Some(backing),
        )?;
        Ok(crate::volume::recovery::normalize(&typed)?)
    } else {
        super::read_passphrase(global, &args.passphrase, out, backing)
    }
}

/// Opens the volume at `backing` under the layout's mapping name. In the live-boot layout
/// a container file goes on a loop device first, as live-boot attaches it, so that the
/// mapping and mount root carry the loop device's name (/dev/mapper/loopN at
/// /run/live/persistence/loopN).
fn open_volume(
    global: &GlobalArgs,
    args: &UnlockArgs,
    profile: &Layout,
    backing: PathBuf,
    out: Output,
) -> Result<Opened> {
    // A file that is not LUKS, or whose keyslots need more memory than this machine has, is
    // refused before anyone types a passphrase for it.
    volume::require_luks(&backing)?;
    let attached = if profile.profile == LayoutProfile::LiveBoot && backing.is_file() {
        Some(
            devices::attach_loop(&backing)
                .map_err(crate::error::io_at("attaching a loop device to", &backing))?,
        )
    } else {
        None
    };
    let device = attached
        .as_ref()
        .map_or_else(|| backing.clone(), devices::AttachedLoop::path);
    let layout = profile.for_volume(&device);
    if let Some(m) = devices::find_mapping(&layout.mapping) {
        return Err(Error::Busy(format!(
            "a mapping named {} ({}) exists already; nothing was changed",
            m.name, m.kernel_name
        )));
    }
    Volume::at(&backing).require_affordable("unlocking")?;
    let secret = read_unlock_secret(global, args, out, &backing)?;
    out.progress(format!("unlocking {}", backing.display()));
    let keyslot = Volume::at(&device).activate(&layout.mapping, &secret)?;
    Ok(Opened {
        backing,
        layout,
        keyslot,
        tried: vec![],
        _attached: attached,
    })
}

/// No GPT partition name or LUKS2 label matched: look as live-boot looks. First a
/// container file named `persistence` at the root of a mounted partition (found by its
/// name), else every LUKS device that is not open yet, opened with the one passphrase
/// under live-boot's name for it, keeping the one whose ext4 label is `persistence` and
/// closing the others.
fn find_as_live_boot(
    global: &GlobalArgs,
    args: &UnlockArgs,
    profile: &Layout,
    not_found: &str,
    out: Output,
) -> Result<Opened> {
    let table = mounts::read_mountinfo()?;
    let files: Vec<PathBuf> = discovery::container_file_places(&table)
        .into_iter()
        .filter(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file()))
        .filter(|p| volume::has_luks_magic(p))
        .collect();
    if let Some(one) = crate::host::devices::the_only_one(
        &files,
        "several container files named persistence",
        "--image",
    )? {
        out.progress(format!(
            "found the container file {} (live-boot's name for one)",
            one.display()
        ));
        return open_volume(global, args, profile, one, out);
    }
    let candidates = discovery::luks_candidates(&discovery::block_candidates(), &table);
    if candidates.is_empty() {
        return Err(Error::NotFound(format!(
            "{not_found}; no container file named persistence, and no LUKS device that is not open already"
        )));
    }
    let mut tried = Vec::new();
    let affordable: Vec<PathBuf> = candidates
        .into_iter()
        .filter(|c| match Volume::at(c).require_affordable("unlocking") {
            Ok(()) => true,
            Err(e) => {
                tried.push(TriedDevice {
                    device: c.clone(),
                    outcome: e.to_string(),
                });
                false
            }
        })
        .collect();
    let Some(first) = affordable.first() else {
        return Err(Error::UnsafeHost(describe_tried(&tried)));
    };
    out.progress(format!(
        "no partition named {}: trying the passphrase on each LUKS device ({}), keeping the one whose ext4 label is {}",
        profile.partition_name,
        affordable
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        profile.fs_label
    ));
    let secret = read_unlock_secret(global, args, out, first)?;
    let mut kept: Option<(PathBuf, Layout, u32)> = None;
    let mut wrong = 0;
    for candidate in &affordable {
        let layout = profile.for_volume(candidate);
        let outcome = if devices::find_mapping(&layout.mapping).is_some() {
            format!("not tried: a mapping named {} exists", layout.mapping)
        } else {
            match Volume::at(candidate).activate(&layout.mapping, &secret) {
                Err(volume::Error::BadPassphrase(_)) => {
                    wrong += 1;
                    "the passphrase does not open it".to_string()
                }
                Err(e) => format!("not opened: {e}"),
                Ok(keyslot) => {
                    let label = discovery::read_ext4_label(&layout.mapper_path());
                    if kept.is_none() && label.as_deref() == Some(profile.fs_label) {
                        let outcome = format!(
                            "opened as /dev/mapper/{}: ext4 labelled {}",
                            layout.mapping, profile.fs_label
                        );
                        kept = Some((candidate.clone(), layout, keyslot));
                        outcome
                    } else {
                        let closed = volume::deactivate(&layout.mapping);
                        format!(
                            "opened, but {}; closed again{}",
                            match label {
                                Some(l) if l == profile.fs_label =>
                                    format!("a second volume labelled {l}: unlock it with --device"),
                                Some(l) => format!("its ext4 label is {l}"),
                                None => "it holds no labelled ext4".to_string(),
                            },
                            closed
                                .err()
                                .map(|e| format!(" (failed: {e})"))
                                .unwrap_or_default()
                        )
                    }
                }
            }
        };
        out.progress(format!("{}: {outcome}", candidate.display()));
        tried.push(TriedDevice {
            device: candidate.clone(),
            outcome,
        });
    }
    drop(secret);
    match kept {
        Some((backing, layout, keyslot)) => Ok(Opened {
            backing,
            layout,
            keyslot,
            tried,
            _attached: None,
        }),
        None if wrong == affordable.len() => Err(volume::Error::BadPassphrase(
            affordable
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        )
        .into()),
        None => Err(Error::NotFound(format!(
            "{not_found}; tried: {}",
            describe_tried(&tried)
        ))),
    }
}

fn describe_tried(tried: &[TriedDevice]) -> String {
    tried
        .iter()
        .map(|t| format!("{} ({})", t.device.display(), t.outcome))
        .collect::<Vec<_>>()
        .join("; ")
}

fn finish(report: UnlockReport, out: Output) -> Result<()> {
    for w in report
        .session
        .warnings
        .iter()
        .chain(&report.session.config_refused)
    {
        out.warn(w);
    }
    for e in &report.session.config_errors {
        out.warn(format!(
            "persistence.conf line {}: {}; that feature is skipped",
            e.line, e.reason
        ));
    }
    let problems: Vec<String> = report
        .session
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
    let config_refused = report.session.config_refused.is_some();
    out.result(&report, |r| {
        let mut text = format!(
            "unlocked {} at {} (keyslot {})\n",
            r.backing.display(),
            r.mount_root.display(),
            r.keyslot
        );
        for t in &r.tried {
            text.push_str(&format!("  tried {}: {}\n", t.device.display(), t.outcome));
        }
        for f in &r.session.features {
            let state = match f.state {
                FeatureState::Active => "active",
                FeatureState::Failed => "FAILED",
                FeatureState::Skipped => "skipped",
                FeatureState::Inactive => "inactive",
                FeatureState::AtBoot => "at boot",
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
    if !problems.is_empty() || !report.session.config_errors.is_empty() || config_refused {
        let mut parts = problems;
        if !report.session.config_errors.is_empty() {
            parts.push(format!(
                "{} bad line(s) in persistence.conf",
                report.session.config_errors.len()
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
