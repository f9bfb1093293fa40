//! `keepsake passphrase change` and `keepsake recovery-key add|remove`: the keyslots.

use std::path::PathBuf;

use serde::Serialize;

use crate::cli::{GlobalArgs, PassphraseCommand, RecoveryKeyCommand};
use crate::error::{Error, Result};
use crate::output::Output;
use crate::secrets::{self, SecretSource};
use crate::volume::{self, KeyslotInfo, Role};

#[derive(Debug, Serialize)]
struct KeyslotReport {
    volume: PathBuf,
    keyslot: KeyslotInfo,
}

#[derive(Debug, Serialize)]
struct RemovedReport {
    volume: PathBuf,
    removed_keyslots: Vec<u32>,
}

pub fn passphrase(global: &GlobalArgs, command: PassphraseCommand, out: Output) -> Result<()> {
    let PassphraseCommand::Change(args) = command;
    super::require_root()?;
    let _lock = super::exclusive()?;
    let backing = super::find_volume(&args.volume, &super::layout(global, None))?;
    volume::header_info(&backing)?;
    volume::require_affordable(&backing, "changing the passphrase of")?;
    let old = super::read_secret_safely(
        global,
        &args.passphrase,
        out,
        "Current passphrase",
        false,
        Some(&backing),
    )?;
    // A wrong passphrase is reported before a new one is asked for.
    let slot = volume::check_passphrase(&backing, &old)?;
    let source =
        SecretSource::from_options(args.new.new_passphrase_fd, args.new.new_key_file.as_deref());
    let new = secrets::read_secret(&source, "New passphrase", true)?;
    if new == old {
        return Err(Error::Usage(
            "the new passphrase is the old one; nothing was changed".into(),
        ));
    }
    out.progress("writing the new keyslot (its key derivation takes a few seconds)");
    let keyslot = volume::change_passphrase(
        &backing,
        slot,
        &old,
        &new,
        super::kdf_choice(&args.kdf, global.layout),
    )?;
    drop((old, new));
    let report = KeyslotReport {
        volume: backing,
        keyslot,
    };
    out.result(&report, |r| {
        format!(
            "passphrase changed on {} (keyslot {}, {} with {} MiB); the old passphrase no longer opens it",
            r.volume.display(),
            r.keyslot.keyslot,
            r.keyslot.kdf,
            r.keyslot.cost.memory_kib / 1024
        )
    });
    Ok(())
}

pub fn recovery_key(global: &GlobalArgs, command: RecoveryKeyCommand, out: Output) -> Result<()> {
    super::require_root()?;
    let _lock = super::exclusive()?;
    match command {
        RecoveryKeyCommand::Add(args) => {
            let backing = super::find_volume(&args.volume, &super::layout(global, None))?;
            if volume::keyslot_roles(&backing)?
                .iter()
                .any(|(_, role)| *role == Role::Recovery)
            {
                return Err(Error::Busy(
                    "the volume has a recovery key already; remove it first (keepsake recovery-key remove)"
                        .into(),
                ));
            }
            volume::require_affordable(&backing, "adding a recovery key to")?;
            let passphrase = super::read_passphrase(global, &args.passphrase, out, &backing)?;
            let key = crate::volume::recovery::generate()?;
            out.progress("adding the recovery key's keyslot");
            let keyslot = volume::add_keyslot(
                &backing,
                &passphrase,
                &key,
                Role::Recovery,
                super::kdf_choice(&args.kdf, global.layout),
            )?;
            let report = KeyslotReport {
                volume: backing,
                keyslot,
            };
            out.reveal(
                &report,
                "recovery_key",
                &format!(
                    "Recovery key for {} (keyslot {}). It is shown this once: write it down and keep it apart from the stick.",
                    report.volume.display(),
                    report.keyslot.keyslot
                ),
                key.as_bytes(),
            );
            Ok(())
        }
        RecoveryKeyCommand::Remove(args) => {
            let backing = super::find_volume(&args.volume, &super::layout(global, None))?;
            if !volume::keyslot_roles(&backing)?
                .iter()
                .any(|(_, role)| *role == Role::Recovery)
            {
                return Err(Error::NotFound("the volume has no recovery key".into()));
            }
            volume::require_affordable(&backing, "removing the recovery key from")?;
            let passphrase = super::read_passphrase(global, &args.passphrase, out, &backing)?;
            let removed = volume::remove_role(&backing, &passphrase, Role::Recovery)?;
            let report = RemovedReport {
                volume: backing,
                removed_keyslots: removed,
            };
            out.result(&report, |r| {
                format!(
                    "recovery key removed from {} (keyslot {:?} destroyed)",
                    r.volume.display(),
                    r.removed_keyslots
                )
            });
            Ok(())
        }
    }
}
