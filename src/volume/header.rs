//! The header as bytes and as facts: cheap peeks without libcryptsetup (magic, label),
//! what `status` shows of it, its backup and restore, and overwriting it for good.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use libcryptsetup_rs::consts::vals::EncryptionFormat;

use super::error::{Error, Result};
use super::keyslots::{self, KeyslotInfo};
use super::{Volume, init};
use crate::context::{Context, at};

/// The magic at the start of a LUKS1 or LUKS2 primary header.
const LUKS_MAGIC: &[u8; 6] = b"LUKS\xba\xbe";

/// Whether `path` starts with a LUKS header magic (libcryptsetup's own errors for a
/// non-LUKS device vary between versions, so keepsake looks itself).
pub fn has_luks_magic(path: &Path) -> bool {
    let mut magic = [0u8; 6];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok_and(|()| &magic == LUKS_MAGIC)
}

/// The label in a LUKS2 binary header (bytes 24..72), read without libcryptsetup so that
/// scanning many partitions stays quiet and cheap. None for LUKS1 or non-LUKS devices.
pub fn luks2_label(path: &Path) -> Option<String> {
    let mut head = [0u8; 72];
    std::fs::File::open(path).ok()?.read_exact(&mut head).ok()?;
    if &head[..6] != LUKS_MAGIC || head[6..8] != [0, 2] {
        return None;
    }
    let label = &head[24..72];
    let end = label.iter().position(|&b| b == 0).unwrap_or(label.len());
    String::from_utf8(label[..end].to_vec())
        .ok()
        .filter(|l| !l.is_empty())
}

/// Refuses a file or device without a LUKS header, cheaply (no libcryptsetup load): for
/// checks before a passphrase is asked.
pub fn require_luks(path: &Path) -> Result<()> {
    if has_luks_magic(path) {
        Ok(())
    } else {
        Err(Error::NoLuksHeader(path.to_path_buf()))
    }
}

/// Facts about a LUKS header, for `status`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct HeaderInfo {
    pub path: PathBuf,
    pub format: String,
    pub uuid: String,
    pub cipher: String,
    /// Why keepsake will not open it read-write, when its cipher is not on the vetted list.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cipher_refused: Option<String>,
    pub keyslots: Vec<KeyslotInfo>,
}

/// The facts of the header at `path` (see [`Volume::info`]).
pub fn header_info(path: &Path) -> Result<HeaderInfo> {
    Volume::at(path).info()
}

impl Volume {
    /// The facts of the header: format, UUID, cipher, and each active keyslot's cost and
    /// role.
    pub fn info(&self) -> Result<HeaderInfo> {
        let mut device = self.load()?;
        let format = match device.format_handle().get_type() {
            Ok(EncryptionFormat::Luks1) => "luks1",
            Ok(EncryptionFormat::Luks2) => "luks2",
            _ => "other",
        }
        .to_string();
        let uuid = device
            .status_handle()
            .get_uuid()
            .map(|u| u.to_string())
            .unwrap_or_default();
        let (name, mode) = (
            device.status_handle().get_cipher().unwrap_or_default(),
            device.status_handle().get_cipher_mode().unwrap_or_default(),
        );
        let key_bytes = usize::try_from(device.status_handle().get_volume_key_size()).unwrap_or(0);
        let cipher_refused = super::cipher::unvetted(&name, &mode, key_bytes);
        let cipher = format!("{name}-{mode}");
        Ok(HeaderInfo {
            path: self.path.clone(),
            format,
            uuid,
            cipher,
            cipher_refused,
            keyslots: keyslots::all_keyslot_info(&mut device)?,
        })
    }

    /// The size of the header area (both LUKS2 header copies and the keyslots area, or the
    /// LUKS1 header and key material): everything before the encrypted data.
    pub(super) fn header_area_bytes(&self) -> Result<u64> {
        let mut device = self.load()?;
        Ok(device.status_handle().get_data_offset() * 512)
    }

    /// Writes a copy of the header (and keyslots) to `file`, which must not exist yet, and
    /// syncs it: the user's own backup before an upgrade.
    pub fn save_header_backup(&self, file: &Path) -> Result<()> {
        if file.symlink_metadata().is_ok() {
            return Err(Error::BackupFileExists(file.to_path_buf()));
        }
        self.backup_header_to(file)?;
        std::fs::File::open(file)
            .and_then(|f| f.sync_all())
            .context(at("syncing", file))?;
        Ok(())
    }

    /// Writes a copy of the header (and keyslots) to `backup`.
    pub(super) fn backup_header_to(&self, backup: &Path) -> Result<()> {
        let mut device = self.load()?;
        device
            .backup_handle()
            .header_backup(None, backup)
            .map_err(|e| {
                Error::library(
                    format!("backing up the header of {}", self.path.display()),
                    e,
                )
            })
    }

    /// Puts a header backup back.
    pub(super) fn restore_header_from(&self, backup: &Path) -> Result<()> {
        let mut device = init(&self.path)?;
        device
            .backup_handle()
            .header_restore(None, backup)
            .map_err(|e| {
                Error::library(
                    format!("restoring the header of {}", self.path.display()),
                    e,
                )
            })
    }
}

/// Overwrites the first `len` bytes of `path` with random bytes and syncs them to the
/// device: what is left of a destroyed header is noise, not a weaker header.
pub(super) fn wipe_with_random(path: &Path, len: u64) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .context(at("opening", path))?;
    f.seek(SeekFrom::Start(0)).context(at("seeking in", path))?;
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        super::recovery::fill_random(&mut chunk[..n])?;
        f.write_all(&chunk[..n]).context(at("overwriting", path))?;
        left -= n as u64;
    }
    f.sync_all().context(at("syncing", path))?;
    Ok(())
}
