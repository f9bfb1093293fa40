//! `keepsake upgrade`: LUKS1 → LUKS2 and PBKDF2 keyslots → argon2id, with a header backup
//! in RAM that is written back when a step fails.

use std::path::PathBuf;

use serde::Serialize;

use crate::cli::{GlobalArgs, UpgradeArgs};
use crate::error::Result;
use crate::output::{Output, Progress};
use crate::volume::{self, KeyslotInfo, UpgradePlan, Volume};

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

/// What `upgrade` is asked to do, from the command line.
struct UpgradeConfig {
    dry_run: bool,
    /// Where the user wants a copy of the old header kept.
    header_backup: Option<PathBuf>,
    kdf: volume::KdfChoice,
}

impl UpgradeConfig {
    fn from_args(global: &GlobalArgs, args: &UpgradeArgs) -> UpgradeConfig {
        UpgradeConfig {
            dry_run: args.dry_run,
            header_backup: args.header_backup.clone(),
            kdf: super::kdf_choice(&args.kdf, global.layout),
        }
    }
}

pub fn run(global: &GlobalArgs, args: UpgradeArgs, out: Output) -> Result<()> {
    let config = UpgradeConfig::from_args(global, &args);
    super::require_root()?;
    let _lock = super::exclusive()?;
    let volume = Volume::at(super::find_volume(
        &args.volume,
        &super::layout(global, None),
    )?);
    let plan = volume.upgrade_plan()?;
    let changed = !(config.dry_run || plan.is_empty());
    if changed {
        if plan.convert_to_luks2 {
            super::require_locked(
                volume.path(),
                "converting LUKS1 to LUKS2 needs the volume closed",
            )?;
        }
        volume.require_affordable("upgrading")?;
        let secret = super::read_passphrase(global, &args.passphrase, out, volume.path())?;
        // A wrong passphrase stops here, before anything is written.
        let slot = volume.check_passphrase(&secret)?;
        if let Some(file) = &config.header_backup {
            volume.save_header_backup(file)?;
            out.warn(format!(
                "header backup written to {}; delete it once the upgrade is done (it holds the old keyslot)",
                file.display()
            ));
        }
        let working = Progress::working(out, "upgrading");
        volume.upgrade(
            &plan,
            slot,
            &secret,
            config.kdf,
            &super::runtime_dir()?.path,
            |step| working.step(out, step),
        )?;
        working.finish();
    }
    let info = volume.info()?;
    let untouched = if changed {
        info.keyslots
            .iter()
            .filter(|k| k.kdf != "argon2id")
            .map(|k| k.keyslot)
            .collect()
    } else {
        vec![]
    };
    let report = UpgradeReport {
        volume: volume.path().to_path_buf(),
        dry_run: config.dry_run,
        plan,
        changed,
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
