//! Keyslots and their roles: the passphrase's and the recovery key's, told apart by a
//! keepsake-role token in the LUKS2 header. Every change writes the new keyslot before it
//! destroys the old one, and takes back its own first steps when a later one fails.

use libcryptsetup_rs::consts::vals::{CryptKdf, EncryptionFormat};
use libcryptsetup_rs::{CryptDevice, TokenInput};

use super::Volume;
use super::error::{Error, Result};
use super::kdf::{KdfChoice, KdfCost};
use crate::secrets::Secret;

/// The token type keepsake records keyslot roles under, in the LUKS2 header itself (so
/// that the roles travel with the volume and other tools ignore them).
const ROLE_TOKEN: &str = "keepsake-role";

/// What a keyslot is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Opened by the passphrase the user types (every keyslot without a role token).
    Passphrase,
    /// Opened by the generated recovery key.
    Recovery,
}

/// What a keyslot costs, as libcryptsetup recorded it, and its role.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct KeyslotInfo {
    pub keyslot: u32,
    pub role: Role,
    pub kdf: String,
    pub cost: KdfCost,
}

/// A role token of the header: (token number, role, keyslots).
type RoleToken = (u32, Role, Vec<u32>);

/// The role tokens of the header.
fn role_tokens(device: &mut CryptDevice) -> Vec<RoleToken> {
    let mut found = Vec::new();
    for token in 0..32 {
        let Ok(json) = device.token_handle().json_get(token) else {
            continue;
        };
        if json.get("type").and_then(|t| t.as_str()) != Some(ROLE_TOKEN) {
            continue;
        }
        let role = match json.get("role").and_then(|r| r.as_str()) {
            Some("recovery") => Role::Recovery,
            _ => Role::Passphrase,
        };
        let slots = json
            .get("keyslots")
            .and_then(|k| k.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().and_then(|s| s.parse().ok()))
                    .collect()
            })
            .unwrap_or_default();
        found.push((token, role, slots));
    }
    found
}

fn role_of(tokens: &[RoleToken], keyslot: u32) -> Role {
    tokens
        .iter()
        .find(|(_, _, slots)| slots.contains(&keyslot))
        .map_or(Role::Passphrase, |(_, role, _)| *role)
}

/// The active keyslots of a loaded header.
fn active_keyslots(device: &mut CryptDevice) -> Vec<u32> {
    use libcryptsetup_rs::consts::vals::KeyslotInfo as Ks;
    let max =
        libcryptsetup_rs::CryptKeyslotHandle::max_keyslots(EncryptionFormat::Luks2).unwrap_or(32);
    (0..max)
        .filter(|&slot| {
            matches!(
                device.keyslot_handle().status(slot),
                Ok(Ks::Active) | Ok(Ks::ActiveLast)
            )
        })
        .collect()
}

/// The active keyslots that have a role: the one check of whether a volume has a
/// recovery key.
fn keyslots_with_role(device: &mut CryptDevice, role: Role) -> Vec<u32> {
    let tokens = role_tokens(device);
    active_keyslots(device)
        .into_iter()
        .filter(|&s| role_of(&tokens, s) == role)
        .collect()
}

pub(super) fn keyslot_info(device: &mut CryptDevice, keyslot: u32) -> Result<KeyslotInfo> {
    let tokens = role_tokens(device);
    keyslot_info_with(device, keyslot, &tokens)
}

/// [`keyslot_info`] with the role tokens read already (reading them asks for all 32).
fn keyslot_info_with(
    device: &mut CryptDevice,
    keyslot: u32,
    tokens: &[RoleToken],
) -> Result<KeyslotInfo> {
    let pbkdf = device
        .keyslot_handle()
        .get_pbkdf(keyslot)
        .map_err(|e| Error::library(format!("reading keyslot {keyslot}"), e))?;
    Ok(KeyslotInfo {
        keyslot,
        role: role_of(tokens, keyslot),
        kdf: match pbkdf.type_ {
            CryptKdf::Pbkdf2 => "pbkdf2",
            CryptKdf::Argon2I => "argon2i",
            CryptKdf::Argon2Id => "argon2id",
        }
        .to_string(),
        cost: KdfCost {
            memory_kib: pbkdf.max_memory_kb,
            iterations: pbkdf.iterations,
            parallel: pbkdf.parallel_threads,
        },
    })
}

pub(super) fn all_keyslot_info(device: &mut CryptDevice) -> Result<Vec<KeyslotInfo>> {
    let tokens = role_tokens(device);
    active_keyslots(device)
        .into_iter()
        .map(|slot| keyslot_info_with(device, slot, &tokens))
        .collect()
}

/// Each active keyslot's key-derivation memory in KiB, 0 for PBKDF2.
pub(super) fn kdf_memory_costs(device: &mut CryptDevice) -> Vec<u64> {
    active_keyslots(device)
        .into_iter()
        .filter_map(|slot| device.keyslot_handle().get_pbkdf(slot).ok())
        .map(|p| match p.type_ {
            CryptKdf::Pbkdf2 => 0,
            _ => u64::from(p.max_memory_kb),
        })
        .collect()
}

impl Volume {
    pub(super) fn set_kdf(&self, device: &mut CryptDevice, kdf: KdfChoice) -> Result<()> {
        device
            .settings_handle()
            .set_pbkdf_type(&kdf.pbkdf_type())
            .map_err(|e| {
                Error::library(
                    format!("setting the key derivation of {}", self.path.display()),
                    e,
                )
            })
    }

    /// Replaces the keyslot `slot` (opened by `old`) by a new keyslot for `new`, never in
    /// place: the new keyslot is written into free keyslot space and recorded first, and
    /// only then is the old one destroyed. A power cut at any moment leaves a header that
    /// one of the two passphrases opens. (libcryptsetup's change_by_passphrase falls back
    /// to overwriting the keyslot in place when it finds no free space; a cut then leaves
    /// neither: found by scenario 13.) Without free keyslot space this fails and changes
    /// nothing; if the old keyslot cannot be destroyed, the new one is destroyed again.
    pub(super) fn replace_keyslot(
        &self,
        device: &mut CryptDevice,
        slot: u32,
        old: &Secret,
        new: &Secret,
        doing: &str,
    ) -> Result<u32> {
        let new_slot = device
            .keyslot_handle()
            .add_by_passphrase(None, old.as_bytes(), new.as_bytes())
            .map_err(|e| self.keyslot_error(doing, None, e))?;
        if let Err(e) = device.keyslot_handle().destroy(slot) {
            let failed = Error::library(format!("{doing}: destroying the old keyslot {slot}"), e);
            return Err(match device.keyslot_handle().destroy(new_slot) {
                Ok(()) => failed,
                Err(undo) => failed.with_note(&format!(
                    "and destroying the new keyslot {new_slot} again failed: {undo}; both passphrases open the volume"
                )),
            });
        }
        Ok(new_slot)
    }

    /// Replaces the passphrase of keyslot `slot` (the one `old` opens, as
    /// [`Volume::check_passphrase`] found) by `new`, in two header updates (add the new
    /// keyslot, destroy the old), so that at every moment one of the two passphrases opens
    /// the volume.
    pub fn change_passphrase(
        &self,
        slot: u32,
        old: &Secret,
        new: &Secret,
        kdf: KdfChoice,
    ) -> Result<KeyslotInfo> {
        let mut device = self.load()?;
        if role_of(&role_tokens(&mut device), slot) == Role::Recovery {
            return Err(Error::PassphraseNeeded(
                "that is the recovery key; give the passphrase to change it (the recovery key is replaced with `recovery-key remove` and `add`)"
                    .into(),
            ));
        }
        self.set_kdf(&mut device, kdf)?;
        let new_slot =
            self.replace_keyslot(&mut device, slot, old, new, "changing the passphrase of")?;
        keyslot_info(&mut device, new_slot)
    }

    /// Checks, before any passphrase is read, that a recovery key can be added: the volume
    /// has none yet.
    pub fn prepare_recovery_key_add(&self) -> Result<RecoveryKeyAdd<'_>> {
        if keyslots_with_role(&mut self.load()?, Role::Recovery).is_empty() {
            Ok(RecoveryKeyAdd(self))
        } else {
            Err(Error::RecoveryKeyExists)
        }
    }

    /// Checks, before any passphrase is read, that there is a recovery key to remove.
    pub fn prepare_recovery_key_removal(&self) -> Result<RecoveryKeyRemoval<'_>> {
        if keyslots_with_role(&mut self.load()?, Role::Recovery).is_empty() {
            Err(Error::NoRecoveryKey)
        } else {
            Ok(RecoveryKeyRemoval(self))
        }
    }

    /// Destroys every keyslot (libcryptsetup overwrites each one's key material). Returns
    /// how many there were.
    pub(super) fn destroy_keyslots(&self) -> Result<usize> {
        let mut device = self.load()?;
        let slots = active_keyslots(&mut device);
        for &s in &slots {
            device.keyslot_handle().destroy(s).map_err(|e| {
                Error::library(
                    format!("destroying keyslot {s} of {}", self.path.display()),
                    e,
                )
            })?;
        }
        Ok(slots.len())
    }
}

/// A volume found without a recovery key; made by [`Volume::prepare_recovery_key_add`].
pub struct RecoveryKeyAdd<'v>(&'v Volume);

impl RecoveryKeyAdd<'_> {
    /// Adds a keyslot for `key` (the volume key is unlocked with `passphrase`) and marks
    /// it with the recovery role. Without its role the keyslot would pass for a
    /// passphrase's, so if the role cannot be recorded the keyslot is destroyed again.
    pub fn add(self, passphrase: &Secret, key: &Secret, kdf: KdfChoice) -> Result<KeyslotInfo> {
        let volume = self.0;
        let mut device = volume.load()?;
        volume.set_kdf(&mut device, kdf)?;
        let new_slot = device
            .keyslot_handle()
            .add_by_passphrase(None, passphrase.as_bytes(), key.as_bytes())
            .map_err(|e| volume.keyslot_error("adding a keyslot to", None, e))?;
        let token = serde_json::json!({
            "type": ROLE_TOKEN,
            "keyslots": [new_slot.to_string()],
            "role": "recovery",
        });
        if let Err(e) = device.token_handle().json_set(TokenInput::AddToken(&token)) {
            let failed = Error::library(
                format!("recording the keyslot role on {}", volume.path.display()),
                e,
            );
            return Err(match device.keyslot_handle().destroy(new_slot) {
                Ok(()) => failed,
                Err(undo) => failed.with_note(&format!(
                    "and destroying its keyslot {new_slot} again failed: {undo}"
                )),
            });
        }
        keyslot_info(&mut device, new_slot)
    }
}

/// A volume found with a recovery key; made by [`Volume::prepare_recovery_key_removal`].
pub struct RecoveryKeyRemoval<'v>(&'v Volume);

impl RecoveryKeyRemoval<'_> {
    /// Destroys the recovery keyslots and their role tokens, after checking that
    /// `passphrase` opens a keyslot that stays. Returns the destroyed keyslots.
    pub fn remove(self, passphrase: &Secret) -> Result<Vec<u32>> {
        let volume = self.0;
        let mut device = volume.load()?;
        let tokens = role_tokens(&mut device);
        let slot = volume.open_keyslot(&mut device, passphrase, super::Opening::Check)?;
        if role_of(&tokens, slot) == Role::Recovery {
            return Err(Error::PassphraseNeeded(
                "give the passphrase, not the recovery key: the volume must still open afterwards"
                    .into(),
            ));
        }
        let mut removed = Vec::new();
        for (token, _, slots) in tokens.into_iter().filter(|t| t.1 == Role::Recovery) {
            for s in slots {
                if active_keyslots(&mut device).contains(&s) {
                    device
                        .keyslot_handle()
                        .destroy(s)
                        .map_err(|e| Error::library(format!("destroying keyslot {s}"), e))?;
                    removed.push(s);
                }
            }
            device
                .token_handle()
                .json_set(TokenInput::RemoveToken(token))
                .map_err(|e| Error::library(format!("removing token {token}"), e))?;
        }
        Ok(removed)
    }
}
