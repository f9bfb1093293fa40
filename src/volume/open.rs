//! Opening a volume to unlock it: at the place given or found by its name, or, in the
//! live-boot layout, looked for as live-boot's initramfs looks (a container file named
//! `persistence`, else every LUKS device not open yet, tried with the one passphrase),
//! on every disk or on the one given.
//! The passphrase is read by the caller's `read_secret`, only once the volume is known
//! and affordable, so that the command keeps the order preflight → hardening → secret.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{Error, Volume, discovery};
use crate::context::{IoError, io_at};
use crate::host::disks::Scope;
use crate::host::writers::{self, LiveIds, Writers};
use crate::host::{self, devices};
use crate::output::Output;
use crate::persistence::layout::Layout;
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
    /// Who could have written its bytes: the open file or the device, as judged before
    /// it was opened.
    pub(crate) writers: Writers,
    /// The loop device attached for a container file, held until the mapping holds it.
    _attached: Option<devices::AttachedLoop>,
}

/// A device tried in live-boot's search, and what came of it.
#[derive(Debug, Serialize)]
pub struct TriedDevice {
    pub device: PathBuf,
    pub outcome: String,
}

/// Opens the volume at `backing` under the layout's mapping name. A container file is
/// opened once, judged as that open file ([`writers::open_container`]: who could have
/// written it), and that same file goes on a loop device, which is what libcryptsetup
/// opens: the file judged is the file opened, whatever its path names meanwhile. In the
/// live-boot layout the mapping and mount root carry the loop device's name
/// (/dev/mapper/loopN at /run/live/persistence/loopN), as live-boot names them.
pub(crate) fn open_at<E: CallerError>(
    profile: &Layout,
    host: &host::Snapshot,
    backing: PathBuf,
    live: &LiveIds,
    read_secret: &mut dyn FnMut(&Path) -> std::result::Result<Secret, E>,
    out: Output,
) -> std::result::Result<Opened, E> {
    let is_file = std::fs::symlink_metadata(&backing).is_ok_and(|m| m.is_file());
    let (attached, writers) = if is_file {
        // A file that is not LUKS is refused before a loop device is made for it.
        super::require_luks(&backing)?;
        let (file, writers) = writers::open_container(&backing, &host.mounts, live)
            .map_err(io_at("opening", &backing))?;
        let attached = devices::attach_loop_to(&file, &backing)
            .map_err(io_at("attaching a loop device to", &backing))?;
        (Some(attached), writers)
    } else {
        (None, writers::judge_backing(&backing, &host.mounts, live))
    };
    let device = attached
        .as_ref()
        .map_or_else(|| backing.clone(), devices::AttachedLoop::path);
    // A device that is not LUKS, or whose keyslots need more memory than this machine
    // has, is refused before anyone types a passphrase for it.
    super::require_luks(&device)?;
    let layout = profile.for_volume(&device);
    super::refuse_an_existing_mapping_in(&layout.mapping, &host.mappings)?;
    // Errors name the volume as the user gave it, not the loop device under it.
    let shown = |e: Error| match e {
        Error::BadPassphrase(_) => Error::BadPassphrase(backing.display().to_string()),
        Error::UnvettedCipher { why, .. } => Error::UnvettedCipher {
            volume: backing.clone(),
            why,
        },
        e => e,
    };
    let affordable = Volume::at(&device)
        .load_affordable("unlocking")
        .map_err(shown)?;
    let secret = read_secret(&backing)?;
    out.progress(format!("unlocking {}", backing.display()));
    let keyslot = affordable
        .activate(&layout.mapping, &secret)
        .map_err(shown)?;
    Ok(Opened {
        backing,
        layout,
        keyslot,
        tried: vec![],
        writers,
        _attached: attached,
    })
}

/// No GPT partition name or LUKS2 label matched: look as live-boot looks, in `scope`
/// (every disk, or the one given with --device). First a container file named
/// `persistence` at the root of a mounted partition (found by its name), else every LUKS
/// device that is not open yet, opened with the one passphrase under live-boot's name for
/// it, keeping the one whose ext4 label is `persistence` and closing the others. Unlike
/// live-boot, a container file someone other than root could have written never goes
/// before a device: it is taken only when no device holds the volume, and then as the
/// live user's volume.
pub(crate) fn find_as_live_boot<E: CallerError>(
    profile: &Layout,
    host: &host::Snapshot,
    scope: &Scope,
    not_found: &str,
    live: &LiveIds,
    read_secret: &mut dyn FnMut(&Path) -> std::result::Result<Secret, E>,
    out: Output,
) -> std::result::Result<Opened, E> {
    let table = &host.mounts;
    let (roots, others): (Vec<_>, Vec<_>) = discovery::container_file_places(table, scope)
        .into_iter()
        .filter(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file()))
        .filter(|p| super::has_luks_magic(p))
        .map(|p| {
            let writers = writers::judge_backing(&p, table, live);
            (p, writers)
        })
        .partition(|(_, w)| *w == Writers::Root);
    let several = "several container files named persistence";
    let roots: Vec<PathBuf> = roots.into_iter().map(|(p, _)| p).collect();
    if let Some(one) = devices::the_only_one(&roots, several, "--image").map_err(E::from)? {
        out.progress(format!(
            "found the container file {} (live-boot's name for one), which only root can write",
            one.display()
        ));
        return open_at(profile, host, one, live, read_secret, out);
    }
    let paths: Vec<PathBuf> = others.iter().map(|(p, _)| p.clone()).collect();
    let users_file = devices::the_only_one(&paths, several, "--image")
        .map_err(E::from)?
        .map(|p| {
            let why = others
                .iter()
                .find_map(|(q, w)| (*q == p).then(|| w.why().unwrap_or_default().to_string()))
                .unwrap_or_default();
            let shown = format!(
                "the container file {} (someone other than root could have written it: {why})",
                p.display()
            );
            (p, shown)
        });
    let candidates = discovery::luks_candidates(&discovery::block_candidates(), table, scope);
    if candidates.is_empty() {
        if let Some((file, shown)) = users_file {
            out.progress(format!(
                "found {shown}; no LUKS device only root can write is there, so it is taken as the live user's volume"
            ));
            return open_at(profile, host, file, live, read_secret, out);
        }
        return Err(Error::NotFound(discovery::none_to_look_into(not_found, scope)).into());
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
        if let Some((file, shown)) = users_file {
            out.progress(format!(
                "no LUKS device this machine can open; taking {shown} as the live user's volume"
            ));
            let mut opened = open_at(profile, host, file, live, read_secret, out)?;
            opened.tried = tried;
            return Ok(opened);
        }
        return Err(Error::NotEnoughMemory(describe_tried(&tried)).into());
    };
    if let Some((_, shown)) = &users_file {
        out.progress(format!(
            "{shown} is tried only if no LUKS device holds the volume"
        ));
    }
    out.progress(format!(
        "no partition named {}{}: trying the passphrase on each LUKS device ({}), keeping the one whose ext4 label is {}",
        profile.partition_name,
        scope.on(),
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
    match kept {
        Some((backing, layout, keyslot)) => {
            if let Some((_, shown)) = &users_file {
                out.progress(format!(
                    "took {}, a device, over {shown}",
                    backing.display()
                ));
            }
            let writers = writers::judge_backing(&backing, table, live);
            Ok(Opened {
                backing,
                layout,
                keyslot,
                tried,
                writers,
                _attached: None,
            })
        }
        None if users_file.is_some() => {
            let (file, shown) = users_file.unwrap_or_default();
            out.progress(format!(
                "no LUKS device holds the volume; taking {shown} as the live user's volume"
            ));
            // The passphrase already typed, handed over once.
            let mut held = Some(secret);
            let mut once = |_: &Path| {
                held.take().ok_or_else(|| {
                    E::from(Error::NotFound("the passphrase was used up".to_string()))
                })
            };
            let mut opened = open_at(profile, host, file, live, &mut once, out)?;
            opened.tried = tried;
            Ok(opened)
        }
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
