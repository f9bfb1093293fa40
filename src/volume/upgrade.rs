//! Upgrading an old volume: LUKS1 → LUKS2 and PBKDF2 keyslots → argon2id, guarded by a
//! copy of the header in RAM that is written back when a step fails.

use std::path::{Path, PathBuf};

use super::Volume;
use super::error::{Error, Result};
use super::kdf::KdfChoice;
use crate::secrets::Secret;

/// What `upgrade` would change, or changed.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct UpgradePlan {
    /// The header is LUKS1 and becomes LUKS2.
    pub convert_to_luks2: bool,
    /// Keyslots whose key derivation becomes argon2id.
    pub keyslots_to_argon2id: Vec<u32>,
}

impl UpgradePlan {
    pub fn is_empty(&self) -> bool {
        !self.convert_to_luks2 && self.keyslots_to_argon2id.is_empty()
    }
}

impl Volume {
    /// Reads what an upgrade would change.
    pub fn upgrade_plan(&self) -> Result<UpgradePlan> {
        let info = self.info()?;
        Ok(UpgradePlan {
            convert_to_luks2: info.format == "luks1",
            keyslots_to_argon2id: info
                .keyslots
                .iter()
                .filter(|k| k.kdf != "argon2id")
                .map(|k| k.keyslot)
                .collect(),
        })
    }

    /// Carries out `plan` with `secret`, the passphrase that opens keyslot `slot` (as
    /// [`Volume::check_passphrase`] found): converts the header to LUKS2 (the volume must
    /// be closed), then re-derives that keyslot with argon2id if the plan says so. A copy of
    /// the header is kept in `scratch` (a folder in RAM) meanwhile; if a step fails, it is
    /// put back, so the volume opens as before. `progress` hears each step before it starts.
    pub fn upgrade(
        &self,
        plan: &UpgradePlan,
        slot: u32,
        secret: &Secret,
        kdf: KdfChoice,
        scratch: &Path,
        progress: impl Fn(&str),
    ) -> Result<()> {
        let backup = HeaderBackup::take(self, scratch)?;
        let steps = || -> Result<()> {
            if plan.convert_to_luks2 {
                progress("converting the header to LUKS2");
                self.convert_to_luks2()?;
            }
            // The conversion keeps keyslot numbers: the passphrase still opens `slot`, and
            // the plan already says whether its key derivation is argon2id.
            if plan.keyslots_to_argon2id.contains(&slot) {
                progress("re-deriving the keyslot with argon2id");
                self.convert_keyslot(slot, secret, kdf)?;
            }
            Ok(())
        };
        steps().map_err(|failed| match backup.put_back() {
            Ok(()) => Error::UpgradeUndone(Box::new(failed)),
            Err(restore) => Error::UpgradeNotUndone {
                failed: Box::new(failed),
                restore: Box::new(restore),
            },
        })
    }

    /// Converts a LUKS1 header to LUKS2 (the volume must be closed).
    fn convert_to_luks2(&self) -> Result<()> {
        let mut device = self.load()?;
        device
            .context_handle()
            .convert::<libcryptsetup_rs::CryptParamsLuks2Ref<'_>>(
                libcryptsetup_rs::consts::vals::EncryptionFormat::Luks2,
                None,
            )
            .map_err(|e| Error::library(format!("converting {} to LUKS2", self.path.display()), e))
    }

    /// Re-derives keyslot `slot` (the one `secret` opens) with argon2id: a new keyslot for
    /// the same passphrase, then the old one destroyed (not in place as `cryptsetup
    /// luksConvertKey` does, so that a power cut cannot leave a half-written keyslot).
    fn convert_keyslot(&self, slot: u32, secret: &Secret, kdf: KdfChoice) -> Result<u32> {
        let mut device = self.load()?;
        self.set_kdf(&mut device, kdf)?;
        self.replace_keyslot(&mut device, slot, secret, secret, "converting a keyslot of")
    }
}

/// A copy of the header in a folder in RAM (/run/keepsake, checked to be in RAM by the
/// preflight), wiped and removed when dropped.
struct HeaderBackup<'v> {
    volume: &'v Volume,
    file: PathBuf,
}

impl<'v> HeaderBackup<'v> {
    fn take(volume: &'v Volume, scratch: &Path) -> Result<HeaderBackup<'v>> {
        let file = scratch.join(format!("header-backup.{}", std::process::id()));
        let _ = std::fs::remove_file(&file);
        let backup = HeaderBackup { volume, file };
        volume.backup_header_to(&backup.file)?;
        Ok(backup)
    }

    fn put_back(&self) -> Result<()> {
        self.volume.restore_header_from(&self.file)
    }
}

impl Drop for HeaderBackup<'_> {
    fn drop(&mut self) {
        crate::safefs::wipe_and_remove(&self.file);
    }
}
