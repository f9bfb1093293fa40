//! The LUKS2 volume: every libcryptsetup call keepsake makes goes through this module.
//!
//! A [`Volume`] is a handle on the LUKS header at a path; like stratisd's `CryptHandle`, it
//! loads a fresh libcryptsetup context for each operation, so that a header an earlier step
//! rewrote (a conversion, a new keyslot) is read again. Each operation that makes several
//! header changes undoes the ones already made when a later one fails, itself: callers
//! never clean up after libcryptsetup.
//!
//! The parts: this file opens keyslots (one path for unlock, check, repair and every
//! passphrase check: memory, errors and the keyring handled once) and closes mappings;
//! `header` reads and writes the header as bytes; `kdf` chooses and judges key-derivation
//! costs; `keyslots` holds the keyslots and their roles; `upgrade` converts old volumes;
//! `recovery` makes and reads recovery keys; `discovery` finds volumes as live systems do.
//!
//! Secrets enter libcryptsetup straight from a [`Secret`] buffer; no helper program, pipe or
//! temporary file ever sees them. libcryptsetup's own messages are captured, never printed
//! as they come, so that a failure reaches the user as one line.

mod cipher;
pub mod discovery;
mod error;
mod header;
mod kdf;
mod keyslots;
pub(crate) mod open;
pub mod recovery;
#[cfg(test)]
mod tests;
mod upgrade;

use std::path::{Path, PathBuf};

use libcryptsetup_rs::consts::flags::{CryptActivate, CryptDeactivate, CryptVolumeKey};
use libcryptsetup_rs::consts::vals::{CryptStatusInfo, EncryptionFormat};
use libcryptsetup_rs::{CryptDevice, CryptInit, CryptParamsLuks2, CryptParamsLuks2Ref, Either};

use crate::secrets::Secret;
use error::{capture_library_log, errno_of, take_last_library_error};

pub use error::{Error, Result};
pub use header::{HeaderInfo, has_luks_magic, header_info, luks2_label, require_luks};
pub use kdf::{
    KdfChoice, KdfCost, KdfRequest, default_max_memory_kib, mem_available_kib, tails_will_convert,
};
pub use keyslots::{KeyslotInfo, Role};
pub use upgrade::UpgradePlan;

pub const CIPHER: &str = "aes";
pub const CIPHER_MODE: &str = "xts-plain64";
/// 512-bit key: AES-256 in XTS mode, as Tails and cryptsetup's LUKS2 default.
pub const KEY_BYTES: usize = 64;

/// The LUKS volume at a path (a partition, a whole disk, or a container file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    path: PathBuf,
}

/// A volume whose header is loaded and whose keyslots this machine can afford
/// ([`Volume::load_affordable`]).
pub(crate) struct Affordable {
    volume: Volume,
    device: CryptDevice,
}

impl Affordable {
    /// [`Volume::activate`] with the header already loaded.
    pub(crate) fn activate(mut self, mapping: &str, secret: &Secret) -> Result<u32> {
        self.volume.open_keyslot(
            &mut self.device,
            secret,
            Opening::Mapping {
                name: mapping,
                read_only: false,
            },
        )
    }
}

/// How a keyslot is opened.
#[derive(Clone, Copy, Debug)]
enum Opening<'a> {
    /// Only to learn which keyslot the secret opens; no mapping is made.
    Check,
    /// As `/dev/mapper/<name>`.
    Mapping { name: &'a str, read_only: bool },
}

/// A fresh libcryptsetup context for `path`, with its log captured.
fn init(path: &Path) -> Result<CryptDevice> {
    capture_library_log();
    CryptInit::init(path).map_err(|e| Error::library(format!("opening {}", path.display()), e))
}

impl Volume {
    /// The volume at `path`; nothing is read until an operation needs it.
    pub fn at(path: impl Into<PathBuf>) -> Volume {
        Volume { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes a new LUKS2 header to `path` (a block device or a regular file) with one
    /// passphrase keyslot. Everything previously in the header area is lost; if the
    /// keyslot cannot be made, the new header is overwritten again, so that no header
    /// without a way in is left behind.
    pub fn format(
        path: &Path,
        label: &str,
        secret: &Secret,
        kdf: KdfChoice,
    ) -> Result<(Volume, KeyslotInfo)> {
        let volume = Volume::at(path);
        let mut device = init(path)?;
        let params = CryptParamsLuks2 {
            pbkdf: Some(kdf.pbkdf_type()),
            integrity: None,
            integrity_params: None,
            data_alignment: 0,
            data_device: None,
            sector_size: 512,
            label: Some(label.to_string()),
            subsystem: None,
        };
        let context = || format!("formatting {} as LUKS2", path.display());
        let mut params_ref: CryptParamsLuks2Ref<'_> = (&params)
            .try_into()
            .map_err(|e| Error::library(context(), e))?;
        device
            .context_handle()
            .format(
                EncryptionFormat::Luks2,
                (CIPHER, CIPHER_MODE),
                None,
                Either::Right(KEY_BYTES),
                Some(&mut params_ref),
            )
            .map_err(|e| Error::library(context(), e))?;
        let keyslot = device
            .keyslot_handle()
            .add_by_key(None, None, secret.as_bytes(), CryptVolumeKey::empty())
            .map_err(|e| Error::library(context(), e))
            .and_then(|slot| keyslots::keyslot_info(&mut device, slot));
        match keyslot {
            Ok(keyslot) => Ok((volume, keyslot)),
            Err(e) => {
                let header_bytes = device.status_handle().get_data_offset() * 512;
                drop(device);
                Err(match header::wipe_with_random(path, header_bytes) {
                    Ok(()) => e,
                    Err(wipe) => {
                        e.with_note(&format!("and overwriting the new header failed: {wipe}"))
                    }
                })
            }
        }
    }

    /// Loads the LUKS header, telling "not LUKS" apart from I/O trouble.
    fn load(&self) -> Result<CryptDevice> {
        let mut device = init(&self.path)?;
        device
            .context_handle()
            .load::<()>(None, None)
            .map_err(|e| {
                if has_luks_magic(&self.path) {
                    Error::library(
                        format!("reading the LUKS header of {}", self.path.display()),
                        e,
                    )
                } else {
                    take_last_library_error();
                    Error::NoLuksHeader(self.path.clone())
                }
            })?;
        Ok(device)
    }

    /// Whether the path holds a LUKS header that libcryptsetup can read.
    pub fn is_luks(&self) -> bool {
        self.load().is_ok()
    }

    /// Refuses a volume whose every keyslot needs more argon2id memory than this machine
    /// has available: trying would only get the process killed by the kernel's OOM killer
    /// (on a live system, RAM is also the session's disk). Every command that runs a
    /// keyslot's key derivation (unlock, check, repair, passphrase change, recovery-key add
    /// and remove, upgrade) calls this before it reads a passphrase; `doing` starts the
    /// message ("unlocking").
    pub fn require_affordable(&self, doing: &str) -> Result<()> {
        self.load_affordable(doing).map(drop)
    }

    /// [`Volume::require_affordable`], keeping the header it loaded, so that activating
    /// the volume next does not read and parse it again.
    pub(crate) fn load_affordable(&self, doing: &str) -> Result<Affordable> {
        let mut device = self.load()?;
        let costs = keyslots::kdf_memory_costs(&mut device);
        kdf::require_affordable_keyslots(
            &format!("{doing} {}", self.path.display()),
            &costs,
            mem_available_kib(),
        )?;
        Ok(Affordable {
            volume: self.clone(),
            device,
        })
    }

    /// Opens the volume as `/dev/mapper/<mapping>`; returns the keyslot that opened. A
    /// wrong passphrase changes nothing and is [`Error::BadPassphrase`]. The caller has
    /// checked [`Volume::require_affordable`] before reading the passphrase.
    pub fn activate(&self, mapping: &str, secret: &Secret) -> Result<u32> {
        self.open_keyslot(
            &mut self.load()?,
            secret,
            Opening::Mapping {
                name: mapping,
                read_only: false,
            },
        )
    }

    /// Opens the volume as `mapping` read-only (for check), or read-write (for repair).
    pub fn activate_for_inspection(
        &self,
        mapping: &str,
        secret: &Secret,
        read_only: bool,
    ) -> Result<u32> {
        self.open_keyslot(
            &mut self.load()?,
            secret,
            Opening::Mapping {
                name: mapping,
                read_only,
            },
        )
    }

    /// Opens the volume as `mapping` for the caller's work, and closes it again when the
    /// returned value is closed or dropped.
    pub fn activate_for_a_while<'m>(
        &self,
        mapping: &'m str,
        secret: &Secret,
    ) -> Result<TemporaryMapping<'m>> {
        self.activate(mapping, secret)?;
        Ok(TemporaryMapping {
            name: mapping,
            open: true,
        })
    }

    /// Which keyslot `secret` opens, without activating anything.
    pub fn check_passphrase(&self, secret: &Secret) -> Result<u32> {
        self.open_keyslot(&mut self.load()?, secret, Opening::Check)
    }

    /// The one place a keyslot is opened by a passphrase.
    fn open_keyslot(
        &self,
        device: &mut CryptDevice,
        secret: &Secret,
        opening: Opening<'_>,
    ) -> Result<u32> {
        let (name, flags, doing) = match opening {
            Opening::Check => (None, CryptActivate::empty(), "checking the passphrase of"),
            Opening::Mapping { name, read_only } => (
                Some(name),
                if read_only {
                    CryptActivate::READONLY
                } else {
                    CryptActivate::empty()
                },
                "unlocking",
            ),
        };
        // Read-only (check) may look at it, and names the cipher; nothing is written.
        if matches!(
            opening,
            Opening::Mapping {
                read_only: false,
                ..
            }
        ) {
            self.refuse_an_unvetted_cipher(device)?;
        }
        let opened =
            device
                .activate_handle()
                .activate_by_passphrase(name, None, secret.as_bytes(), flags);
        // libcryptsetup hands dm-crypt the volume key through a logon key in this thread's
        // keyring and leaves it there; dm-crypt has its own copy by now. Invalidate ours, so
        // that no volume key outlives this process in /proc/keys.
        if let Ok(uuid) = device.status_handle().get_uuid() {
            forget_keyring_keys(&uuid.to_string());
        }
        opened.map_err(|e| self.keyslot_error(doing, name, e))
    }

    /// Refuses to map read-write a volume whose data segment does not encrypt, or not with a cipher
    /// on the vetted list ([`cipher::unvetted`]): read from the header just loaded, before
    /// any passphrase is tried.
    fn refuse_an_unvetted_cipher(&self, device: &mut CryptDevice) -> Result<()> {
        let mut status = device.status_handle();
        let cipher = status.get_cipher().unwrap_or_default();
        let mode = status.get_cipher_mode().unwrap_or_default();
        let key_bytes = usize::try_from(status.get_volume_key_size()).unwrap_or(0);
        match cipher::unvetted(&cipher, &mode, key_bytes) {
            None => Ok(()),
            Some(why) => Err(Error::UnvettedCipher {
                volume: self.path.clone(),
                why,
            }),
        }
    }

    /// What a failure to open a keyslot (to activate, or to add a keyslot with an existing
    /// passphrase) means: the one place libcryptsetup's errnos are read.
    fn keyslot_error(
        &self,
        doing: &str,
        mapping: Option<&str>,
        e: libcryptsetup_rs::LibcryptErr,
    ) -> Error {
        match (errno_of(&e), mapping) {
            (Some(libc::EPERM), _) => {
                take_last_library_error();
                Error::BadPassphrase(self.path.display().to_string())
            }
            (Some(libc::ENOMEM), _) => {
                take_last_library_error();
                Error::NotEnoughMemory(format!(
                    "not enough memory to derive the key of {} (its argon2id cost is higher than this machine can afford)",
                    self.path.display()
                ))
            }
            (Some(libc::EEXIST), Some(mapping)) => {
                take_last_library_error();
                Error::MappingExists(mapping.to_string())
            }
            _ => Error::library(format!("{doing} {}", self.path.display()), e),
        }
    }

    /// Crypto-erase: destroys every keyslot (libcryptsetup overwrites each one's key
    /// material), overwrites the whole header area with random bytes, and checks that
    /// libcryptsetup finds no header any more. `shown` names the volume in messages (the
    /// path may be a `/proc/self/fd` link); `progress` hears each step before it starts.
    pub fn erase(&self, shown: &Path, progress: impl Fn(String)) -> Result<Erased> {
        let header_bytes = self.header_area_bytes()?;
        progress("destroying the keyslots".to_string());
        let keyslots_destroyed = self.destroy_keyslots()?;
        progress(format!(
            "overwriting the header area ({} KiB) with random data",
            header_bytes / 1024
        ));
        header::wipe_with_random(&self.path, header_bytes)?;
        if self.is_luks() {
            return Err(Error::StillLuks(shown.to_path_buf()));
        }
        Ok(Erased {
            keyslots_destroyed,
            header_bytes,
        })
    }
}

/// What [`Volume::erase`] destroyed.
#[derive(Clone, Copy, Debug)]
pub struct Erased {
    pub keyslots_destroyed: usize,
    pub header_bytes: u64,
}

/// A mapping opened for a while (to make a filesystem on a new volume); closed by
/// [`TemporaryMapping::close`], or when dropped on an error path.
pub struct TemporaryMapping<'m> {
    name: &'m str,
    open: bool,
}

impl TemporaryMapping<'_> {
    pub fn device(&self) -> PathBuf {
        Path::new("/dev/mapper").join(self.name)
    }

    /// Closes the mapping, reporting a failure.
    pub fn close(mut self) -> Result<()> {
        self.open = false;
        deactivate(self.name)
    }
}

impl Drop for TemporaryMapping<'_> {
    fn drop(&mut self) {
        if self.open {
            // Already on an error path: that error is the one to report.
            let _ = deactivate(self.name);
        }
    }
}

/// The logon keys libcryptsetup names `cryptsetup:<uuid>-d<N>` for this volume.
fn keyring_key_ids(uuid: &str) -> Vec<i32> {
    let prefix = format!("cryptsetup:{uuid}-");
    std::fs::read_to_string("/proc/keys")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.split_whitespace().nth(7) == Some("logon"))
        .filter(|l| {
            l.split_whitespace()
                .nth(8)
                .is_some_and(|d| d.starts_with(&prefix))
        })
        .filter_map(|l| {
            l.split_whitespace()
                .next()
                .and_then(|id| i32::from_str_radix(id, 16).ok())
        })
        .collect()
}

/// Invalidates (removes at once, not at the next garbage collection) the volume's keys
/// in the kernel keyring that this process can reach. (Scenario 05 checks /proc/keys
/// afterwards; reading it here a second time would only slow every unlock.)
fn forget_keyring_keys(uuid: &str) {
    const KEYCTL_INVALIDATE: libc::c_long = 21;
    for id in keyring_key_ids(uuid) {
        // SAFETY: keyctl(KEYCTL_INVALIDATE, id) takes a key serial and no pointers.
        unsafe { libc::syscall(libc::SYS_keyctl, KEYCTL_INVALIDATE, id as libc::c_long) };
    }
}

/// Refuses a mapping name that is taken already, before anything is opened under it.
pub(crate) fn refuse_an_existing_mapping(name: &str) -> Result<()> {
    refuse_an_existing_mapping_in(name, &crate::host::devices::all_mappings())
}

/// [`refuse_an_existing_mapping`] among the mappings the command found when it started.
pub(crate) fn refuse_an_existing_mapping_in(
    name: &str,
    mappings: &[crate::host::devices::Mapping],
) -> Result<()> {
    match mappings.iter().find(|m| m.name == name) {
        Some(m) => Err(Error::MappingExists(format!(
            "{} ({})",
            m.name, m.kernel_name
        ))),
        None => Ok(()),
    }
}

/// Closes the mapping; dm-crypt wipes its copy of the volume key, and a loop device that
/// libcryptsetup attached for a container file is released with it.
///
/// Closing needs only what device-mapper holds (the table, the uuid that says LUKS1 or
/// LUKS2, the keyring key's name), not the header: the context is made on the device under
/// the mapping with `crypt_init` alone, no `crypt_load`, and libcryptsetup closes the
/// mapping from its table (for LUKS2 it takes the header as optional). Loading the header,
/// as `cryptsetup close` does, starts the crypto backend for nothing: about 80 ms of a
/// lock under emulation. When that device cannot be opened (gone from /dev with the stick
/// pulled out, several devices under the mapping), the context is made by name, as
/// `cryptsetup close` makes it: libcryptsetup copes with a device that disappeared.
pub fn deactivate(mapping: &str) -> Result<()> {
    capture_library_log();
    let without_header = crate::host::devices::device_under(mapping).and_then(|under| {
        let context = CryptInit::init(&under).ok();
        if context.is_none() {
            // Its message would be taken for the fallback's.
            let _ = take_last_library_error();
        }
        context
    });
    let mut device = without_header
        .map_or_else(|| CryptInit::init_by_name_and_header(mapping, None), Ok)
        .map_err(|e| Error::library(format!("finding the mapping {mapping}"), e))?;
    device
        .activate_handle()
        .deactivate(mapping, CryptDeactivate::empty())
        .map_err(|e| Error::library(format!("closing the mapping {mapping}"), e))
}

/// Whether libcryptsetup sees the mapping as active.
pub fn is_active(mapping: &str) -> bool {
    capture_library_log();
    matches!(
        libcryptsetup_rs::status(None, mapping),
        Ok(CryptStatusInfo::Active) | Ok(CryptStatusInfo::Busy)
    )
}
