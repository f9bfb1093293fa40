//! The LUKS2 volume: every libcryptsetup call keepsake makes goes through this module.
//!
//! Secrets enter libcryptsetup straight from a [`Secret`] buffer; no helper program, pipe or
//! temporary file ever sees them. libcryptsetup's own messages are captured, never printed
//! as they come, so that a failure reaches the user as one line.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use libcryptsetup_rs::consts::flags::{CryptActivate, CryptDeactivate, CryptPbkdf, CryptVolumeKey};
use libcryptsetup_rs::consts::vals::{CryptKdf, CryptStatusInfo, EncryptionFormat};
use libcryptsetup_rs::{
    CryptDevice, CryptInit, CryptParamsLuks2, CryptParamsLuks2Ref, CryptPbkdfType, Either,
};

use crate::error::{Error, Result};
use crate::secrets::Secret;

pub const CIPHER: &str = "aes";
pub const CIPHER_MODE: &str = "xts-plain64";
/// 512-bit key: AES-256 in XTS mode, as Tails and cryptsetup's LUKS2 default.
pub const KEY_BYTES: usize = 64;

static LAST_LIBRARY_ERROR: Mutex<Option<String>> = Mutex::new(None);

extern "C" fn capture_log(level: c_int, msg: *const c_char, _usrptr: *mut c_void) {
    // Only errors are kept; libcryptsetup's informational lines are not for our users.
    if level != libcryptsetup_rs_sys_log_error() || msg.is_null() {
        return;
    }
    // SAFETY: libcryptsetup passes a NUL-terminated string valid for this call.
    let text = unsafe { CStr::from_ptr(msg) }
        .to_string_lossy()
        .trim()
        .to_string();
    if let Ok(mut last) = LAST_LIBRARY_ERROR.lock() {
        *last = Some(text);
    }
}

/// CRYPT_LOG_ERROR from libcryptsetup.h.
const fn libcryptsetup_rs_sys_log_error() -> c_int {
    1
}

/// Routes libcryptsetup's log to [`take_last_library_error`]. Idempotent.
pub fn capture_library_log() {
    libcryptsetup_rs::set_log_callback::<()>(Some(capture_log), None);
}

/// The last error message libcryptsetup logged, if any, clearing it.
pub fn take_last_library_error() -> Option<String> {
    LAST_LIBRARY_ERROR.lock().ok().and_then(|mut l| l.take())
}

/// Key-derivation cost for new keyslots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct KdfCost {
    /// argon2id memory in KiB.
    pub memory_kib: u32,
    /// argon2id iterations (passes).
    pub iterations: u32,
    /// argon2id threads.
    pub parallel: u32,
}

/// How the cost of a new keyslot is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KdfChoice {
    /// libcryptsetup benchmarks this machine for about `time_ms`, using at most
    /// `max_memory_kib`.
    Benchmark { time_ms: u32, max_memory_kib: u32 },
    /// A fixed cost, without benchmark (for tests and for matching another machine).
    Fixed(KdfCost),
}

impl KdfChoice {
    fn pbkdf_type(&self) -> CryptPbkdfType {
        match *self {
            KdfChoice::Benchmark {
                time_ms,
                max_memory_kib,
            } => CryptPbkdfType {
                type_: CryptKdf::Argon2Id,
                hash: None,
                time_ms,
                iterations: 0,
                max_memory_kb: max_memory_kib,
                parallel_threads: 4,
                flags: CryptPbkdf::empty(),
            },
            KdfChoice::Fixed(cost) => CryptPbkdfType {
                type_: CryptKdf::Argon2Id,
                hash: None,
                time_ms: 0,
                iterations: cost.iterations,
                max_memory_kb: cost.memory_kib,
                parallel_threads: cost.parallel,
                flags: CryptPbkdf::NO_BENCHMARK,
            },
        }
    }
}

/// What a keyslot ended up costing, as libcryptsetup recorded it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct KeyslotInfo {
    pub keyslot: u32,
    pub kdf: String,
    pub cost: KdfCost,
}

fn init(path: &Path) -> Result<CryptDevice> {
    capture_library_log();
    CryptInit::init(path).map_err(|e| Error::crypt(format!("opening {}", path.display()), e))
}

/// Writes a new LUKS2 header to `path` (a block device or a regular file) with one
/// passphrase keyslot. Everything previously in the header area is lost.
pub fn format(path: &Path, label: &str, secret: &Secret, kdf: KdfChoice) -> Result<KeyslotInfo> {
    let mut device = init(path)?;
    let pbkdf = kdf.pbkdf_type();
    let params = CryptParamsLuks2 {
        pbkdf: Some(pbkdf),
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
        .map_err(|e| Error::crypt(context(), e))?;
    device
        .context_handle()
        .format(
            EncryptionFormat::Luks2,
            (CIPHER, CIPHER_MODE),
            None,
            Either::Right(KEY_BYTES),
            Some(&mut params_ref),
        )
        .map_err(|e| Error::crypt(context(), e))?;
    let keyslot = device
        .keyslot_handle()
        .add_by_key(None, None, secret.as_bytes(), CryptVolumeKey::empty())
        .map_err(|e| Error::crypt(context(), e))?;
    keyslot_info(&mut device, keyslot)
}

fn keyslot_info(device: &mut CryptDevice, keyslot: u32) -> Result<KeyslotInfo> {
    let pbkdf = device
        .keyslot_handle()
        .get_pbkdf(keyslot)
        .map_err(|e| Error::crypt(format!("reading keyslot {keyslot}"), e))?;
    Ok(KeyslotInfo {
        keyslot,
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

/// The magic at the start of a LUKS1 or LUKS2 primary header.
const LUKS_MAGIC: &[u8; 6] = b"LUKS\xba\xbe";

/// Whether `path` starts with a LUKS header magic (libcryptsetup's own errors for a
/// non-LUKS device vary between versions, so keepsake looks itself).
fn has_luks_magic(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 6];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok_and(|()| &magic == LUKS_MAGIC)
}

/// The label in a LUKS2 binary header (bytes 24..72), read without libcryptsetup so that
/// scanning many partitions stays quiet and cheap. None for LUKS1 or non-LUKS devices.
pub fn luks2_label(path: &Path) -> Option<String> {
    use std::io::Read;
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

/// Loads the LUKS header of `path`, telling "not LUKS" apart from I/O trouble.
fn load(path: &Path) -> Result<CryptDevice> {
    let mut device = init(path)?;
    device
        .context_handle()
        .load::<()>(None, None)
        .map_err(|e| {
            if has_luks_magic(path) {
                Error::crypt(format!("reading the LUKS header of {}", path.display()), e)
            } else {
                take_last_library_error();
                Error::Corrupt(format!("{} has no LUKS header", path.display()))
            }
        })?;
    Ok(device)
}

/// Opens the volume at `path` as `/dev/mapper/<mapping>`. A wrong passphrase changes
/// nothing and is reported as [`Error::BadPassphrase`].
pub fn activate(path: &Path, mapping: &str, secret: &Secret) -> Result<u32> {
    let mut device = load(path)?;
    let uuid = device
        .status_handle()
        .get_uuid()
        .map(|u| u.to_string())
        .ok();
    let keyslot = activate_loaded(&mut device, path, mapping, secret);
    // libcryptsetup hands dm-crypt the volume key through a logon key in this thread's
    // keyring and leaves it there; dm-crypt has its own copy by now. Invalidate ours, so
    // that no volume key outlives this process in /proc/keys.
    if let Some(uuid) = uuid {
        forget_keyring_keys(&uuid);
    }
    keyslot
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
/// in the kernel keyring that this process can reach. Returns how many remain visible.
pub fn forget_keyring_keys(uuid: &str) -> usize {
    const KEYCTL_INVALIDATE: libc::c_long = 21;
    for id in keyring_key_ids(uuid) {
        // SAFETY: keyctl(KEYCTL_INVALIDATE, id) takes a key serial and no pointers.
        unsafe { libc::syscall(libc::SYS_keyctl, KEYCTL_INVALIDATE, id as libc::c_long) };
    }
    keyring_key_ids(uuid).len()
}

fn activate_loaded(
    device: &mut CryptDevice,
    path: &Path,
    mapping: &str,
    secret: &Secret,
) -> Result<u32> {
    device
        .activate_handle()
        .activate_by_passphrase(Some(mapping), None, secret.as_bytes(), CryptActivate::empty())
        .map_err(|e| match &e {
            libcryptsetup_rs::LibcryptErr::IOError(io) if io.raw_os_error() == Some(libc::EPERM) => {
                take_last_library_error();
                Error::BadPassphrase(path.display().to_string())
            }
            libcryptsetup_rs::LibcryptErr::IOError(io) if io.raw_os_error() == Some(libc::ENOMEM) => {
                Error::UnsafeHost(format!(
                    "not enough memory to derive the key of {} (its argon2id cost is higher than this machine can afford)",
                    path.display()
                ))
            }
            libcryptsetup_rs::LibcryptErr::IOError(io) if io.raw_os_error() == Some(libc::EEXIST) => {
                Error::Busy(format!("a mapping named {mapping} already exists"))
            }
            _ => Error::crypt(format!("unlocking {}", path.display()), e),
        })
}

/// Checks the passphrase against the volume's keyslots without activating anything.
pub fn check_passphrase(path: &Path, secret: &Secret) -> Result<u32> {
    let mut device = load(path)?;
    device
        .activate_handle()
        .activate_by_passphrase(None, None, secret.as_bytes(), CryptActivate::empty())
        .map_err(|e| match &e {
            libcryptsetup_rs::LibcryptErr::IOError(io)
                if io.raw_os_error() == Some(libc::EPERM) =>
            {
                take_last_library_error();
                Error::BadPassphrase(path.display().to_string())
            }
            _ => Error::crypt(format!("checking the passphrase of {}", path.display()), e),
        })
}

/// Closes the mapping; dm-crypt wipes its copy of the volume key, and a loop device that
/// libcryptsetup attached for a container file is released with it.
pub fn deactivate(mapping: &str) -> Result<()> {
    capture_library_log();
    let mut device = CryptInit::init_by_name_and_header(mapping, None)
        .map_err(|e| Error::crypt(format!("finding the mapping {mapping}"), e))?;
    device
        .activate_handle()
        .deactivate(mapping, CryptDeactivate::empty())
        .map_err(|e| Error::crypt(format!("closing the mapping {mapping}"), e))
}

/// Whether libcryptsetup sees the mapping as active.
pub fn is_active(mapping: &str) -> bool {
    capture_library_log();
    matches!(
        libcryptsetup_rs::status(None, mapping),
        Ok(CryptStatusInfo::Active) | Ok(CryptStatusInfo::Busy)
    )
}

/// Facts about a LUKS header, for `status`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct HeaderInfo {
    pub path: PathBuf,
    pub format: String,
    pub uuid: String,
    pub cipher: String,
    pub keyslots: Vec<KeyslotInfo>,
}

pub fn header_info(path: &Path) -> Result<HeaderInfo> {
    let mut device = load(path)?;
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
    let cipher = format!(
        "{}-{}",
        device.status_handle().get_cipher().unwrap_or_default(),
        device.status_handle().get_cipher_mode().unwrap_or_default()
    );
    let max =
        libcryptsetup_rs::CryptKeyslotHandle::max_keyslots(EncryptionFormat::Luks2).unwrap_or(32);
    let mut keyslots = Vec::new();
    for slot in 0..max {
        use libcryptsetup_rs::consts::vals::KeyslotInfo as Ks;
        match device.keyslot_handle().status(slot) {
            Ok(Ks::Active) | Ok(Ks::ActiveLast) => keyslots.push(keyslot_info(&mut device, slot)?),
            _ => {}
        }
    }
    Ok(HeaderInfo {
        path: path.to_path_buf(),
        format,
        uuid,
        cipher,
        keyslots,
    })
}
