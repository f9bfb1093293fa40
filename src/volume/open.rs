//! Opening a volume to unlock it: at the place given or found by its name, or, in the
//! live-boot layout, looked for as live-boot's initramfs looks (a container file named
//! `persistence`, else every LUKS device not open yet, tried with the one passphrase).
//! The passphrase is read by the caller's `read_secret`, only once the volume is known
//! and affordable, so that the command keeps the order preflight → hardening → secret.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{Error, Volume, discovery};
use crate::context::{IoError, io_at};
use crate::host::{self, devices};
use crate::output::Output;
use crate::persistence::layout::{Layout, LayoutProfile};
use crate::secrets::Secret;

/// The errors the caller's own type must carry: this module's, the host's, and I/O.
pub(crate) trait CallerError: From<Error> + From<host::Error> + From<IoError> {}
impl<E: From<Error> + From<host::Error> + From<IoError>> CallerError for E {}

/// An opened volume, and how it was found.
pub(crate) struct Opened {
    pub(crate) backing: PathBuf,
    pub(crate) layout: Layout,
    pub(crate) keyslot: u32,
    pub(crate) tried: Vec<TriedDevice>,
    /// The loop device attached for a container file, held until the mapping holds it.
    _attached: Option<devices::AttachedLoop>,
}

/// A device tried in live-boot's search, and what came of it.
#[derive(Debug, Serialize)]
pub struct TriedDevice {
    pub device: PathBuf,
    pub outcome: String,
}

/// Opens the volume at `backing` under the layout's mapping name. In the live-boot layout
/// a container file goes on a loop device first, as live-boot attaches it, so that the
/// mapping and mount root carry the loop device's name (/dev/mapper/loopN at
/// /run/live/persistence/loopN).
pub(crate) fn open_at<E: CallerError>(
    profile: &Layout,
    host: &host::Snapshot,
    backing: PathBuf,
    read_secret: &mut dyn FnMut(&Path) -> std::result::Result<Secret, E>,
    out: Output,
) -> std::result::Result<Opened, E> {
    // A file that is not LUKS, or whose keyslots need more memory than this machine has, is
    // refused before anyone types a passphrase for it.
    super::require_luks(&backing)?;
    let attached = if profile.profile == LayoutProfile::LiveBoot && backing.is_file() {
        Some(
            devices::attach_loop(&backing)
                .map_err(io_at("attaching a loop device to", &backing))?,
        )
    } else {
        None
    };
    let device = attached
        .as_ref()
        .map_or_else(|| backing.clone(), devices::AttachedLoop::path);
    let layout = profile.for_volume(&device);
    super::refuse_an_existing_mapping_in(&layout.mapping, &host.mappings)?;
    let affordable = Volume::at(&backing).load_affordable("unlocking")?;
    let secret = read_secret(&backing)?;
    out.progress(format!("unlocking {}", backing.display()));
    // A container file live-boot's way goes through the loop device attached above.
    let keyslot = if attached.is_none() {
        affordable.activate(&layout.mapping, &secret)?
    } else {
        drop(affordable);
        Volume::at(&device).activate(&layout.mapping, &secret)?
    };
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
pub(crate) fn find_as_live_boot<E: CallerError>(
    profile: &Layout,
    host: &host::Snapshot,
    not_found: &str,
    read_secret: &mut dyn FnMut(&Path) -> std::result::Result<Secret, E>,
    out: Output,
) -> std::result::Result<Opened, E> {
    let table = &host.mounts;
    let files: Vec<PathBuf> = discovery::container_file_places(table)
        .into_iter()
        .filter(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file()))
        .filter(|p| super::has_luks_magic(p))
        .collect();
    if let Some(one) = devices::the_only_one(
        &files,
        "several container files named persistence",
        "--image",
    )
    .map_err(E::from)?
    {
        out.progress(format!(
            "found the container file {} (live-boot's name for one)",
            one.display()
        ));
        return open_at(profile, host, one, read_secret, out);
    }
    let candidates = discovery::luks_candidates(&discovery::block_candidates(), table);
    if candidates.is_empty() {
        return Err(Error::NotFound(format!(
            "{not_found}; no container file named persistence, and no LUKS device that is not open already"
        ))
        .into());
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
        return Err(Error::NotEnoughMemory(describe_tried(&tried)).into());
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
    let secret = read_secret(first)?;
    let mut kept: Option<(PathBuf, Layout, u32)> = None;
    let mut wrong = 0;
    for candidate in &affordable {
        let layout = profile.for_volume(candidate);
        let outcome = if host.mapping(&layout.mapping).is_some() {
            format!("not tried: a mapping named {} exists", layout.mapping)
        } else {
            match Volume::at(candidate).activate(&layout.mapping, &secret) {
                Err(Error::BadPassphrase(_)) => {
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
                        let closed = super::deactivate(&layout.mapping);
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
        None if wrong == affordable.len() => Err(Error::BadPassphrase(
            affordable
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        )
        .into()),
        None => {
            Err(Error::NotFound(format!("{not_found}; tried: {}", describe_tried(&tried))).into())
        }
    }
}

fn describe_tried(tried: &[TriedDevice]) -> String {
    tried
        .iter()
        .map(|t| format!("{} ({})", t.device.display(), t.outcome))
        .collect::<Vec<_>>()
        .join("; ")
}
