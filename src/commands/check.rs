//! `keepsake check` (look, change nothing) and `keepsake repair` (e2fsck -y and a sane
//! persistence.conf, never deleting user data). Both open the locked volume under a
//! mapping of their own and close it again on every path.

use std::path::PathBuf;

use serde::Serialize;

use crate::archive::restore;
use crate::cli::{CheckArgs, GlobalArgs};
use crate::error::{Error, Result};
use crate::host::tools::{self, FsckReport, SuperblockState};
use crate::output::Output;

use crate::persistence::files;
use crate::volume::{self, HeaderInfo, discovery};

/// The mapping check and repair open the volume as, and the folder they mount it on.
const MAPPING: &str = "keepsake-inspect";
const MOUNT_DIR: &str = "inspect";

#[derive(Debug, Serialize)]
struct CheckReport {
    volume: PathBuf,
    ok: bool,
    header: HeaderInfo,
    /// The filesystem was not unmounted cleanly and its journal had not been replayed.
    /// check then leaves `filesystem` absent unless the kernel had marked errors: e2fsck
    /// -n cannot judge it (it would count what the journal still holds as errors); repair
    /// replays it (e2fsck -y does).
    unclean_shutdown: bool,
    filesystem: Option<FsckReport>,
    config: Option<files::ConfigReport>,
    /// Said, but not wrong: they do not make `ok` false.
    notes: Vec<String>,
    problems: Vec<String>,
    /// What repair changed.
    repaired: Vec<String>,
}

/// The volume, its header, and its passphrase, read only once the volume is known to be
/// closed and affordable (`doing` names the command in a refusal: "checking").
fn prepare(
    global: &GlobalArgs,
    args: &CheckArgs,
    out: Output,
    doing: &str,
    why: &str,
) -> Result<(PathBuf, HeaderInfo, crate::secrets::Secret)> {
    super::require_root()?;
    crate::host::kernel::require_dm_crypt(&format!("{doing} a volume"))?;
    let layout = super::layout(global, None);
    let backing = match super::locate(&args.volume, &layout)? {
        super::Located::Volume(backing) => backing,
        // As live-boot finds one, on the disk given or on any: without a name, the only
        // container file named persistence or LUKS device not open yet there (unlock
        // tries several; check and repair open the volume their own way, so they ask
        // which).
        super::Located::Unnamed { scope, not_found } => {
            let table = crate::host::mounts::read_mountinfo()?;
            crate::host::devices::the_only_one(
                &discovery::unopened_candidates(&table, &scope),
                &format!(
                    "no partition named persistence, and several LUKS volumes it could be{}",
                    scope.on()
                ),
                "--device or --image",
            )?
            .ok_or_else(|| Error::NotFound(discovery::none_to_look_into(&not_found, &scope)))?
        }
    };
    let header = volume::header_info(&backing)?;
    super::require_locked(&backing, why)?;
    volume::Volume::at(&backing).require_affordable(doing)?;
    let secret = super::read_passphrase(global, &args.passphrase, out, &backing)?;
    Ok((backing, header, secret))
}

pub fn check(global: &GlobalArgs, args: CheckArgs, out: Output) -> Result<()> {
    let _lock = super::exclusive()?;
    let (backing, header, secret) = prepare(
        global,
        &args,
        out,
        "checking",
        "a mounted filesystem cannot be checked",
    )?;
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    if let Some(why) = &header.cipher_refused {
        problems.push(format!(
            "the volume {why}; keepsake unlock refuses it: copy its files to a new volume (keepsake create)"
        ));
    }
    let mut inspection = super::OpenHere::open(&backing, &secret, MAPPING, true)?;
    drop(secret);
    let state = SuperblockState::read(&inspection.device)?;
    // After an unclean shutdown the journal holds the last writes; e2fsck -n does not
    // replay it (that writes), so it would report as errors what the replay completes.
    // The kernel's own error mark is still believed.
    let fsck = if state.ext4 && state.needs_recovery && !state.errors {
        notes.push(UNCLEAN_SHUTDOWN.to_string());
        None
    } else {
        out.progress("checking the filesystem (e2fsck -fn)");
        let fsck = tools::fsck_full(&inspection.device, false)?;
        if !fsck.clean {
            problems.push(format!(
                "the filesystem has errors (e2fsck -fn: {})",
                fsck.summary
            ));
        }
        Some(fsck)
    };
    let config = match inspection.mount(MOUNT_DIR, true) {
        Ok(dir) => {
            let (report, found) = files::config_report(&dir, global.layout.into());
            problems.extend(found);
            // check holds keepsake's lock: every restore folder there is a killed one's.
            match restore::find_leftovers(&dir) {
                Ok(found) => problems.extend(found.iter().map(restore::describe_leftover)),
                Err(e) => problems.push(format!("the volume's top cannot be listed: {e}")),
            }
            Some(report)
        }
        Err(e) => {
            problems.push(format!("the filesystem cannot be mounted: {e}"));
            None
        }
    };
    drop(inspection);
    finish(
        backing,
        header,
        state.needs_recovery,
        fsck,
        config,
        Findings {
            notes,
            problems,
            repaired: vec![],
        },
        out,
    )
}

/// What check says instead of judging a filesystem whose journal is still to be replayed.
const UNCLEAN_SHUTDOWN: &str = "the volume was not shut down cleanly; its journal has not been replayed yet; `keepsake unlock` replays it (check again after a lock to have the filesystem checked)";

/// What check and repair found, beside the volume's parts.
struct Findings {
    notes: Vec<String>,
    problems: Vec<String>,
    /// What repair changed.
    repaired: Vec<String>,
}

pub fn repair(global: &GlobalArgs, args: CheckArgs, out: Output) -> Result<()> {
    let _lock = super::exclusive()?;
    let (backing, header, secret) = prepare(
        global,
        &args,
        out,
        "repairing",
        "a mounted filesystem cannot be repaired",
    )?;
    let mut repaired = Vec::new();
    let mut inspection = super::OpenHere::open(&backing, &secret, MAPPING, false)?;
    drop(secret);
    // e2fsck -y replays the journal first, as unlock would.
    let unclean = SuperblockState::read(&inspection.device)?.needs_recovery;
    out.progress("repairing the filesystem (e2fsck -fy)");
    let fsck = tools::fsck_full(&inspection.device, true)?;
    if fsck.status != 0 {
        repaired.push(format!("filesystem: {}", fsck.summary));
    }
    let mut problems = Vec::new();
    if !fsck.clean {
        problems.push(format!(
            "e2fsck -fy could not repair everything: {}",
            fsck.summary
        ));
    }
    let config = {
        // The folder's descriptor must be closed before the unmount in the drop below.
        let dir = inspection.mount(MOUNT_DIR, false)?;
        repaired.extend(files::repair_config(&dir, global.layout)?);
        let cleaned = restore::remove_leftovers(&dir)?;
        repaired.extend(cleaned.removed);
        problems.extend(cleaned.kept);
        let (config, left) = files::config_report(&dir, global.layout.into());
        problems.extend(left);
        config
    };
    drop(inspection);
    finish(
        backing,
        header,
        unclean,
        Some(fsck),
        Some(config),
        Findings {
            notes: unclean
                .then(|| {
                    "the volume was not shut down cleanly; e2fsck -y replayed its journal"
                        .to_string()
                })
                .into_iter()
                .collect(),
            problems,
            repaired,
        },
        out,
    )
}

fn finish(
    volume: PathBuf,
    header: HeaderInfo,
    unclean_shutdown: bool,
    filesystem: Option<FsckReport>,
    config: Option<files::ConfigReport>,
    findings: Findings,
    out: Output,
) -> Result<()> {
    let Findings {
        notes,
        problems,
        repaired,
    } = findings;
    let report = CheckReport {
        volume,
        ok: problems.is_empty(),
        header,
        unclean_shutdown,
        filesystem,
        config,
        notes,
        problems,
        repaired,
    };
    out.result(&report, human);
    if report.ok {
        Ok(())
    } else {
        Err(Error::CheckFailed(format!(
            "{} problem(s) found in {}{}",
            report.problems.len(),
            report.volume.display(),
            if report.repaired.is_empty() {
                "; keepsake repair fixes the filesystem and persistence.conf"
            } else {
                ""
            }
        )))
    }
}

fn human(r: &CheckReport) -> String {
    let mut text = format!(
        "{}: {} {}, {} keyslot(s)\n",
        r.volume.display(),
        r.header.format,
        r.header.cipher,
        r.header.keyslots.len()
    );
    for k in &r.header.keyslots {
        text.push_str(&format!(
            "  keyslot {} ({:?}): {}, {} MiB, {} iterations\n",
            k.keyslot,
            k.role,
            k.kdf,
            k.cost.memory_kib / 1024,
            k.cost.iterations
        ));
    }
    if let Some(f) = &r.filesystem {
        text.push_str(&format!(
            "filesystem: {} ({})\n",
            if f.clean { "clean" } else { "ERRORS" },
            f.summary
        ));
    }
    if let Some(c) = &r.config {
        text.push_str(&format!(
            "persistence.conf: {} feature line(s), {} invalid\n",
            c.features,
            c.errors.len()
        ));
    }
    for note in &r.notes {
        text.push_str(&format!("note: {note}\n"));
    }
    for change in &r.repaired {
        text.push_str(&format!("repaired: {change}\n"));
    }
    for p in &r.problems {
        text.push_str(&format!("problem: {p}\n"));
    }
    if r.ok {
        text.push_str("all checks passed\n");
    }
    text
}
