//! `keepsake passphrase change` and `keepsake recovery-key add|remove`: the keyslots.

use std::path::PathBuf;

use serde::Serialize;

use crate::cli::{GlobalArgs, PassphraseChangeArgs, PassphraseCommand, RecoveryKeyCommand};
use crate::error::{Error, Result};
use crate::output::{Output, Progress};
use crate::secrets::{self, SecretSource};
use crate::volume::{self, KeyslotInfo, Volume};

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

/// What `passphrase change` is asked to do, from the command line.
struct ChangeConfig {
    /// Where the new passphrase comes from (the current one is read as for every command).
    new_passphrase: SecretSource,
    kdf: volume::KdfChoice,
}

impl ChangeConfig {
    fn from_args(global: &GlobalArgs, args: &PassphraseChangeArgs) -> ChangeConfig {
        ChangeConfig {
            new_passphrase: SecretSource::from_options(
                args.new.new_passphrase_fd,
                args.new.new_key_file.as_deref(),
            ),
            kdf: super::kdf_choice(&args.kdf, global.layout),
        }
    }
}

pub fn passphrase(global: &GlobalArgs, command: PassphraseCommand, out: Output) -> Result<()> {
    let PassphraseCommand::Change(args) = command;
    let config = ChangeConfig::from_args(global, &args);
    super::require_root()?;
    let _lock = super::exclusive()?;
    let volume = Volume::at(super::find_volume(
        &args.volume,
        &super::layout(global, None),
    )?);
    volume.info()?;
    volume.require_affordable("changing the passphrase of")?;
    let old = super::read_secret_safely(
        global,
        &args.passphrase,
        out,
        "Current passphrase",
        false,
        Some(volume.path()),
    )?;
    // A wrong passphrase is reported before a new one is asked for.
    let slot = volume.check_passphrase(&old)?;
    let new = secrets::read_secret(&config.new_passphrase, "New passphrase", true)?;
    if new == old {
        return Err(Error::Usage(
            "the new passphrase is the old one; nothing was changed".into(),
        ));
    }
    let working = Progress::working(
        out,
        "writing the new keyslot (its key derivation takes a few seconds)",
    );
    let keyslot = volume.change_passphrase(slot, &old, &new, config.kdf)?;
    working.finish();
    drop((old, new));
    let report = KeyslotReport {
        volume: volume.path().to_path_buf(),
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
            let kdf = super::kdf_choice(&args.kdf, global.layout);
            let volume = Volume::at(super::find_volume(
                &args.volume,
                &super::layout(global, None),
            )?);
            let adding = volume.prepare_recovery_key_add()?;
            volume.require_affordable("adding a recovery key to")?;
            let passphrase = super::read_passphrase(global, &args.passphrase, out, volume.path())?;
            let key = volume::recovery::generate()?;
            let working = Progress::working(out, "adding the recovery key's keyslot");
            let keyslot = adding.add(&passphrase, &key, kdf)?;
            working.finish();
            let report = KeyslotReport {
                volume: volume.path().to_path_buf(),
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
            let volume = Volume::at(super::find_volume(
                &args.volume,
                &super::layout(global, None),
            )?);
            let removing = volume.prepare_recovery_key_removal()?;
            volume.require_affordable("removing the recovery key from")?;
            let passphrase = super::read_passphrase(global, &args.passphrase, out, volume.path())?;
            let removed = removing.remove(&passphrase)?;
            let report = RemovedReport {
                volume: volume.path().to_path_buf(),
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
