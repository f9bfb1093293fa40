//! `keepsake upgrade`: LUKS1 → LUKS2 and PBKDF2 keyslots → argon2id, with a header backup
//! in RAM that is written back when a step fails.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::cli::{GlobalArgs, UpgradeArgs};
use crate::error::IoError;
use crate::error::{Error, Result};
use crate::output::Output;
use crate::volume::{self, KeyslotInfo, UpgradePlan};

#[derive(Debug, Serialize)]
struct UpgradeReport {
    volume: PathBuf,
    dry_run: bool,
    plan: UpgradePlan,
    changed: bool,
    format: String,
    keyslots: Vec<KeyslotInfo>,
    /// PBKDF2 keyslots left as they were: the passphrase given opens another one.
    untouched: Vec<u32>,
}

pub fn run(global: &GlobalArgs, args: UpgradeArgs, out: Output) -> Result<()> {
    super::require_root()?;
    let _lock = super::exclusive()?;
    let backing = super::find_volume(&args.volume, &super::layout(global, None))?;
    let plan = volume::upgrade_plan(&backing)?;
    if args.dry_run || plan.is_empty() {
        let info = volume::header_info(&backing)?;
        let report = UpgradeReport {
            volume: backing,
            dry_run: args.dry_run,
            untouched: vec![],
            changed: false,
            format: info.format,
            keyslots: info.keyslots,
            plan,
        };
        out.result(&report, human);
        return Ok(());
    }
    if plan.convert_to_luks2 {
        super::require_locked(
            &backing,
            "converting LUKS1 to LUKS2 needs the volume closed",
        )?;
    }
    volume::require_affordable(&backing, "upgrading")?;
    let secret = super::read_passphrase(global, &args.passphrase, out, &backing)?;
    // A wrong passphrase stops here, before anything is written.
    let slot = volume::check_passphrase(&backing, &secret)?;
    if let Some(file) = &args.header_backup {
        if file.exists() {
            return Err(Error::Usage(format!(
                "{} exists already; choose a new file for the header backup; nothing was changed",
                file.display()
            )));
        }
        volume::header_backup(&backing, file)?;
        std::fs::File::open(file)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::Io(IoError::new(format!("syncing {}", file.display()), e)))?;
        out.warn(format!(
            "header backup written to {}; delete it once the upgrade is done (it holds the old keyslot)",
            file.display()
        ));
    }
    let backup = Backup::take(&backing)?;
    let result = (|| -> Result<()> {
        if plan.convert_to_luks2 {
            out.progress("converting the header to LUKS2");
            volume::convert_to_luks2(&backing)?;
        }
        // The conversion keeps keyslot numbers: the passphrase still opens `slot`, and the
        // plan already says whether its key derivation is argon2id.
        if plan.keyslots_to_argon2id.contains(&slot) {
            out.progress("re-deriving the keyslot with argon2id");
            volume::convert_keyslot(
                &backing,
                slot,
                &secret,
                super::kdf_choice(&args.kdf, global.layout),
            )?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        return Err(match backup.restore(&backing) {
            Ok(()) => Error::Internal(format!(
                "{e}; the header was put back as it was, and the volume opens as before"
            )),
            Err(r) => Error::Corrupt(format!(
                "{e}; putting the header back failed too ({r}): do not write to the volume, and keep the stick for recovery"
            )),
        });
    }
    drop(backup);
    let info = volume::header_info(&backing)?;
    let untouched = info
        .keyslots
        .iter()
        .filter(|k| k.kdf != "argon2id")
        .map(|k| k.keyslot)
        .collect();
    let report = UpgradeReport {
        volume: backing,
        dry_run: false,
        plan,
        changed: true,
        format: info.format,
        keyslots: info.keyslots,
        untouched,
    };
    out.result(&report, human);
    Ok(())
}

fn human(r: &UpgradeReport) -> String {
    let mut steps = Vec::new();
    if r.plan.convert_to_luks2 {
        steps.push("convert the header from LUKS1 to LUKS2".to_string());
    }
    if !r.plan.keyslots_to_argon2id.is_empty() {
        steps.push(format!(
            "re-derive keyslot(s) {:?} with argon2id (each with its own passphrase)",
            r.plan.keyslots_to_argon2id
        ));
    }
    let mut text = if r.plan.is_empty() {
        format!(
            "{} is up to date: {} with argon2id keyslots",
            r.volume.display(),
            r.format
        )
    } else if r.dry_run {
        format!(
            "upgrade would {} on {}",
            steps.join(" and "),
            r.volume.display()
        )
    } else {
        format!("upgraded {}: now {}", r.volume.display(), r.format)
    };
    for k in &r.keyslots {
        text.push_str(&format!(
            "\n  keyslot {}: {} ({} MiB, {} iterations)",
            k.keyslot,
            k.kdf,
            k.cost.memory_kib / 1024,
            k.cost.iterations
        ));
    }
    if !r.untouched.is_empty() {
        text.push_str(&format!(
            "\n  keyslot(s) {:?} still use PBKDF2: run upgrade again with their passphrase",
            r.untouched
        ));
    }
    text
}

/// A copy of the header in /run/keepsake (checked to be in RAM by the preflight), wiped
/// and removed when dropped.
struct Backup(PathBuf);

impl Backup {
    fn take(backing: &Path) -> Result<Backup> {
        let path = super::runtime_dir()?
            .path
            .join(format!("header-backup.{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let backup = Backup(path);
        volume::header_backup(backing, &backup.0)?;
        Ok(backup)
    }

    fn restore(&self, backing: &Path) -> Result<()> {
        volume::header_restore(backing, &self.0)
    }
}

impl Drop for Backup {
    fn drop(&mut self) {
        crate::safefs::wipe_and_remove(&self.0);
    }
}
