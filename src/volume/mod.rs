//! The LUKS2 volume: every libcryptsetup call keepsake makes goes through this module.
//!
//! Secrets enter libcryptsetup straight from a [`Secret`] buffer; no helper program, pipe or
//! temporary file ever sees them. libcryptsetup's own messages are captured, never printed
//! as they come, so that a failure reaches the user as one line.

pub mod discovery;
pub mod recovery;

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

/// The default ceiling for argon2id memory: half of the RAM available now, at most 1 GiB
/// (cryptsetup's own ceiling), at least 32 MiB. A live system runs from RAM: a key
/// derivation that needs more than the machine can spare would make the volume fail to
/// unlock on the next, smaller, machine.
pub fn default_max_memory_kib(mem_available_kib: Option<u64>) -> u32 {
    const CEILING: u64 = 1 << 20;
    const FLOOR: u64 = 32 * 1024;
    mem_available_kib.map_or(CEILING, |kib| (kib / 2).clamp(FLOOR, CEILING)) as u32
}

/// The argon2id cost of a keyslot in the Tails layout. Tails converts at boot every volume
/// without a keyslot of at least min(MemTotal / 2, 1 GiB) (its `is_upgraded`), and makes
/// its own with 4 passes: so keepsake gives exactly that memory, with 4 passes and 4
/// lanes, unless this machine cannot afford it now, when it gives what it can (and Tails
/// will convert it once). Affordable is half of MemAvailable: Debian's libcryptsetup
/// (Debian bug 1028250) caps argon2id there on a machine without swap, which a live system
/// is, whatever cost it is asked for.
pub fn tails_kdf_cost(mem_total_kib: Option<u64>, mem_available_kib: Option<u64>) -> KdfCost {
    const GIB: u64 = 1 << 20;
    let wanted = tails_kdf_floor_kib(mem_total_kib).unwrap_or(GIB);
    let affordable = mem_available_kib.map_or(GIB, |a| a / 2);
    KdfCost {
        memory_kib: wanted.min(affordable).max(32 * 1024) as u32,
        iterations: 4,
        parallel: 4,
    }
}

/// The argon2id memory below which Tails converts a keyslot at boot: min(RAM/2, 1 GiB).
pub fn tails_kdf_floor_kib(mem_total_kib: Option<u64>) -> Option<u64> {
    mem_total_kib.map(|t| (t / 2).min(1 << 20))
}

/// MemAvailable from /proc/meminfo, in KiB.
pub fn mem_available_kib() -> Option<u64> {
    meminfo_field(
        &std::fs::read_to_string("/proc/meminfo").ok()?,
        "MemAvailable:",
    )
}

/// MemTotal from /proc/meminfo, in KiB.
pub fn mem_total_kib() -> Option<u64> {
    meminfo_field(&std::fs::read_to_string("/proc/meminfo").ok()?, "MemTotal:")
}

fn meminfo_field(meminfo: &str, field: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|n| n.trim().parse().ok())
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
    pub role: Role,
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
        role: Role::Passphrase,
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
pub fn has_luks_magic(path: &Path) -> bool {
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

/// Refuses a file or device without a LUKS header, cheaply (no libcryptsetup load): for
/// checks before a passphrase is asked.
pub fn require_luks(path: &Path) -> Result<()> {
    if has_luks_magic(path) {
        Ok(())
    } else {
        Err(Error::Corrupt(format!(
            "{} has no LUKS header",
            path.display()
        )))
    }
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
/// nothing and is reported as [`Error::BadPassphrase`]. The caller has checked
/// [`require_affordable`] before reading the passphrase.
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

/// Refuses a volume whose every keyslot needs more argon2id memory than this machine has
/// available: trying would only get the process killed by the kernel's OOM killer (on a
/// live system, RAM is also the session's disk). Every command that runs a keyslot's key
/// derivation (unlock, check, repair, passphrase change, recovery-key add and remove,
/// upgrade) calls this before it reads a passphrase; `doing` starts the message
/// ("unlocking").
pub fn require_affordable(path: &Path, doing: &str) -> Result<()> {
    let mut device = load(path)?;
    let costs: Vec<u64> = active_keyslots(&mut device)
        .into_iter()
        .filter_map(|slot| device.keyslot_handle().get_pbkdf(slot).ok())
        .map(|p| match p.type_ {
            CryptKdf::Pbkdf2 => 0,
            _ => u64::from(p.max_memory_kb),
        })
        .collect();
    require_affordable_keyslots(
        &format!("{doing} {}", path.display()),
        &costs,
        mem_available_kib(),
    )
}

/// The decision of [`require_affordable`], from each keyslot's KDF memory in KiB (0 for
/// PBKDF2): the passphrase may open any keyslot, so one that fits is enough, and the
/// cheapest is what the refusal names. No keyslot at all is left to libcryptsetup to
/// report. (libcryptsetup still tries keyslots in their order, so a passphrase whose
/// keyslot fits but comes after one that does not can still fail inside it.)
fn require_affordable_keyslots(
    doing: &str,
    costs_kib: &[u64],
    available_kib: Option<u64>,
) -> Result<()> {
    match costs_kib.iter().min() {
        Some(&cheapest) => Ok(crate::host::preflight::require_kdf_memory(
            doing,
            cheapest,
            available_kib,
        )?),
        None => Ok(()),
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
    let tokens = role_tokens(&mut device);
    let mut keyslots = Vec::new();
    for slot in active_keyslots(&mut device) {
        let mut info = keyslot_info(&mut device, slot)?;
        info.role = role_of(&tokens, slot);
        keyslots.push(info);
    }
    Ok(HeaderInfo {
        path: path.to_path_buf(),
        format,
        uuid,
        cipher,
        keyslots,
    })
}

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

/// The role tokens of the header: (token number, role, keyslots).
fn role_tokens(device: &mut CryptDevice) -> Vec<(u32, Role, Vec<u32>)> {
    let mut found = Vec::new();
    let max = 32;
    for token in 0..max {
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

fn role_of(tokens: &[(u32, Role, Vec<u32>)], keyslot: u32) -> Role {
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

fn bad_passphrase_or(path: &Path, what: &str, e: libcryptsetup_rs::LibcryptErr) -> Error {
    match &e {
        libcryptsetup_rs::LibcryptErr::IOError(io) if io.raw_os_error() == Some(libc::EPERM) => {
            take_last_library_error();
            Error::BadPassphrase(path.display().to_string())
        }
        _ => Error::crypt(format!("{what} on {}", path.display()), e),
    }
}

/// Which keyslot `secret` opens, without activating anything.
fn keyslot_of(device: &mut CryptDevice, path: &Path, secret: &Secret) -> Result<u32> {
    device
        .activate_handle()
        .activate_by_passphrase(None, None, secret.as_bytes(), CryptActivate::empty())
        .map_err(|e| bad_passphrase_or(path, "checking the passphrase", e))
}

/// Replaces the keyslot `slot` (opened by `old`) by a new keyslot for `new`, never in
/// place: the new keyslot is written into free keyslot space and recorded first, and only
/// then is the old one destroyed. A power cut at any moment leaves a header that one of the
/// two passphrases opens. (libcryptsetup's change_by_passphrase falls back to overwriting
/// the keyslot in place when it finds no free space; a cut then leaves neither: found by
/// scenario 13.) Without free keyslot space this fails and changes nothing.
fn replace_keyslot(
    device: &mut CryptDevice,
    path: &Path,
    slot: u32,
    old: &Secret,
    new: &Secret,
    what: &str,
) -> Result<u32> {
    let new_slot = device
        .keyslot_handle()
        .add_by_passphrase(None, old.as_bytes(), new.as_bytes())
        .map_err(|e| bad_passphrase_or(path, what, e))?;
    device
        .keyslot_handle()
        .destroy(slot)
        .map_err(|e| Error::crypt(format!("{what}: destroying the old keyslot {slot}"), e))?;
    Ok(new_slot)
}

/// Replaces the passphrase of keyslot `slot` (the one `old` opens, as
/// [`check_passphrase`] found) by `new`, in two header updates (add the new keyslot,
/// destroy the old), so that at every moment one of the two passphrases opens the volume.
pub fn change_passphrase(
    path: &Path,
    slot: u32,
    old: &Secret,
    new: &Secret,
    kdf: KdfChoice,
) -> Result<KeyslotInfo> {
    let mut device = load(path)?;
    let tokens = role_tokens(&mut device);
    if role_of(&tokens, slot) == Role::Recovery {
        return Err(Error::Usage(
            "that is the recovery key; give the passphrase to change it (the recovery key is replaced with `recovery-key remove` and `add`)"
                .into(),
        ));
    }
    set_kdf(&mut device, kdf, path)?;
    let new_slot = replace_keyslot(&mut device, path, slot, old, new, "changing the passphrase")?;
    keyslot_info(&mut device, new_slot)
}

fn set_kdf(device: &mut CryptDevice, kdf: KdfChoice, path: &Path) -> Result<()> {
    device
        .settings_handle()
        .set_pbkdf_type(&kdf.pbkdf_type())
        .map_err(|e| {
            Error::crypt(
                format!("setting the key derivation of {}", path.display()),
                e,
            )
        })
}

/// Adds a keyslot for `new` (the volume key is unlocked with `existing`), with a role.
pub fn add_keyslot(
    path: &Path,
    existing: &Secret,
    new: &Secret,
    role: Role,
    kdf: KdfChoice,
) -> Result<KeyslotInfo> {
    let mut device = load(path)?;
    if role == Role::Recovery
        && role_tokens(&mut device)
            .iter()
            .any(|t| t.1 == Role::Recovery)
    {
        return Err(Error::Busy(
            "the volume has a recovery key already; remove it first (keepsake recovery-key remove)"
                .into(),
        ));
    }
    let slot = keyslot_of(&mut device, path, existing)?;
    if role_of(&role_tokens(&mut device), slot) == Role::Recovery {
        return Err(Error::Usage(
            "give the passphrase, not the recovery key".into(),
        ));
    }
    set_kdf(&mut device, kdf, path)?;
    let new_slot = device
        .keyslot_handle()
        .add_by_passphrase(None, existing.as_bytes(), new.as_bytes())
        .map_err(|e| bad_passphrase_or(path, "adding a keyslot", e))?;
    if role != Role::Passphrase {
        let token = serde_json::json!({
            "type": ROLE_TOKEN,
            "keyslots": [new_slot.to_string()],
            "role": "recovery",
        });
        if let Err(e) = device
            .token_handle()
            .json_set(libcryptsetup_rs::TokenInput::AddToken(&token))
        {
            // Without its role the slot would pass for a passphrase: take it out again.
            let _ = device.keyslot_handle().destroy(new_slot);
            return Err(Error::crypt(
                format!("recording the keyslot role on {}", path.display()),
                e,
            ));
        }
    }
    keyslot_info(&mut device, new_slot)
}

/// Destroys the keyslots with `role` and their role tokens, after checking that
/// `authority` opens a keyslot that stays. Returns the destroyed keyslots.
pub fn remove_role(path: &Path, authority: &Secret, role: Role) -> Result<Vec<u32>> {
    let mut device = load(path)?;
    let tokens = role_tokens(&mut device);
    let slot = keyslot_of(&mut device, path, authority)?;
    if role_of(&tokens, slot) == role {
        return Err(Error::Usage(format!(
            "give the passphrase, not the {} key: the volume must still open afterwards",
            match role {
                Role::Recovery => "recovery",
                Role::Passphrase => "passphrase",
            }
        )));
    }
    let mut removed = Vec::new();
    for (token, r, slots) in tokens.into_iter().filter(|t| t.1 == role) {
        for s in slots {
            if active_keyslots(&mut device).contains(&s) {
                device
                    .keyslot_handle()
                    .destroy(s)
                    .map_err(|e| Error::crypt(format!("destroying keyslot {s}"), e))?;
                removed.push(s);
            }
        }
        debug_assert_eq!(r, role);
        device
            .token_handle()
            .json_set(libcryptsetup_rs::TokenInput::RemoveToken(token))
            .map_err(|e| Error::crypt(format!("removing token {token}"), e))?;
    }
    if removed.is_empty() {
        return Err(Error::NotFound("the volume has no recovery key".into()));
    }
    Ok(removed)
}

/// The roles of the active keyslots.
pub fn keyslot_roles(path: &Path) -> Result<Vec<(u32, Role)>> {
    let mut device = load(path)?;
    let tokens = role_tokens(&mut device);
    Ok(active_keyslots(&mut device)
        .into_iter()
        .map(|s| (s, role_of(&tokens, s)))
        .collect())
}

/// Opens the volume read-only as `mapping` (for check), or read-write (for repair).
pub fn activate_with(path: &Path, mapping: &str, secret: &Secret, read_only: bool) -> Result<u32> {
    let mut device = load(path)?;
    let uuid = device
        .status_handle()
        .get_uuid()
        .map(|u| u.to_string())
        .ok();
    let flags = if read_only {
        CryptActivate::READONLY
    } else {
        CryptActivate::empty()
    };
    let result = device
        .activate_handle()
        .activate_by_passphrase(Some(mapping), None, secret.as_bytes(), flags)
        .map_err(|e| bad_passphrase_or(path, "opening", e));
    if let Some(uuid) = uuid {
        forget_keyring_keys(&uuid);
    }
    result
}

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

/// Reads what an upgrade would change.
pub fn upgrade_plan(path: &Path) -> Result<UpgradePlan> {
    let info = header_info(path)?;
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

/// Converts a LUKS1 header to LUKS2 (the volume must be closed). The caller keeps a header
/// backup and restores it on failure.
pub fn convert_to_luks2(path: &Path) -> Result<()> {
    let mut device = load(path)?;
    device
        .context_handle()
        .convert::<CryptParamsLuks2Ref<'_>>(EncryptionFormat::Luks2, None)
        .map_err(|e| Error::crypt(format!("converting {} to LUKS2", path.display()), e))
}

/// Re-derives keyslot `slot` (the one `secret` opens) with argon2id: a new keyslot for the
/// same passphrase, then the old one destroyed (not in place as `cryptsetup
/// luksConvertKey` does, so that a power cut cannot leave a half-written keyslot). Returns
/// its new cost.
pub fn convert_keyslot(
    path: &Path,
    slot: u32,
    secret: &Secret,
    kdf: KdfChoice,
) -> Result<KeyslotInfo> {
    let mut device = load(path)?;
    set_kdf(&mut device, kdf, path)?;
    let slot = replace_keyslot(
        &mut device,
        path,
        slot,
        secret,
        secret,
        "converting the keyslot",
    )?;
    keyslot_info(&mut device, slot)
}

/// Writes a copy of the header (and keyslots) of `path` to `backup`.
pub fn header_backup(path: &Path, backup: &Path) -> Result<()> {
    let mut device = load(path)?;
    device
        .backup_handle()
        .header_backup(None, backup)
        .map_err(|e| Error::crypt(format!("backing up the header of {}", path.display()), e))
}

/// Puts a header backup back onto `path`.
pub fn header_restore(path: &Path, backup: &Path) -> Result<()> {
    let mut device = init(path)?;
    device
        .backup_handle()
        .header_restore(None, backup)
        .map_err(|e| Error::crypt(format!("restoring the header of {}", path.display()), e))
}

/// The size of the header area (both LUKS2 header copies and the keyslots area, or the
/// LUKS1 header and key material): everything before the encrypted data.
pub fn header_area_bytes(path: &Path) -> Result<u64> {
    let mut device = load(path)?;
    Ok(device.status_handle().get_data_offset() * 512)
}

/// Destroys every keyslot (libcryptsetup overwrites each one's key material). Returns
/// how many there were.
pub fn destroy_keyslots(path: &Path) -> Result<usize> {
    let mut device = load(path)?;
    let slots = active_keyslots(&mut device);
    for &s in &slots {
        device.keyslot_handle().destroy(s).map_err(|e| {
            Error::crypt(format!("destroying keyslot {s} of {}", path.display()), e)
        })?;
    }
    Ok(slots.len())
}

/// Whether `path` holds a LUKS header that libcryptsetup can read.
pub fn is_luks(path: &Path) -> bool {
    load(path).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_keyslots_meet_the_cost_tails_counts_as_upgraded() {
        const GIB: u64 = 1 << 20;
        // 8 GiB machine: 1 GiB, 4 passes, as Tails makes them.
        let c = tails_kdf_cost(Some(8 * GIB), Some(6 * GIB));
        assert_eq!((c.memory_kib, c.iterations, c.parallel), (1 << 20, 4, 4));
        // 3 GiB machine with 2.5 GiB free: min(MemTotal/2, 1 GiB) = 1 GiB, affordable.
        let c = tails_kdf_cost(Some(3 * GIB), Some(5 * GIB / 2));
        assert_eq!(u64::from(c.memory_kib), GIB);
        // 2 GiB machine: Tails wants 1 GiB, half of what is available is all there is.
        let c = tails_kdf_cost(Some(2 * GIB), Some(1536 << 10));
        assert_eq!(c.memory_kib, 768 << 10);
        // 768 MiB machine: half of MemTotal wanted, half of MemAvailable affordable.
        let c = tails_kdf_cost(Some(768 << 10), Some(600 << 10));
        assert_eq!(c.memory_kib, 300 << 10);
    }

    #[test]
    fn kdf_memory_ceiling_is_half_the_available_ram_within_bounds() {
        assert_eq!(default_max_memory_kib(Some(600 * 1024)), 300 * 1024);
        assert_eq!(
            default_max_memory_kib(Some(16 << 20)),
            1 << 20,
            "at most 1 GiB"
        );
        assert_eq!(
            default_max_memory_kib(Some(20 * 1024)),
            32 * 1024,
            "at least 32 MiB"
        );
        assert_eq!(default_max_memory_kib(None), 1 << 20);
    }

    #[test]
    fn a_volume_is_affordable_when_its_cheapest_keyslot_fits() {
        const MIB: u64 = 1024;
        let available = Some(768 * MIB);
        let judge = |costs: &[u64]| require_affordable_keyslots("unlocking v", costs, available);
        assert!(judge(&[]).is_ok(), "no keyslot: libcryptsetup says so");
        assert!(judge(&[256 * MIB]).is_ok());
        assert!(judge(&[768 * MIB]).is_ok(), "exactly what is available");
        assert!(
            judge(&[1024 * MIB, 64 * MIB]).is_ok(),
            "the recovery keyslot fits"
        );
        assert!(
            judge(&[4096 * MIB, 0]).is_ok(),
            "a PBKDF2 keyslot always fits"
        );
        let err = judge(&[1024 * MIB, 4096 * MIB]).unwrap_err();
        assert_eq!(err.exit_code(), crate::error::ExitCode::UnsafeHost);
        assert!(
            err.to_string()
                .starts_with("unlocking v needs 1024 MiB of memory for its key derivation and this machine has 768 MiB available"),
            "{err}"
        );
        assert!(
            require_affordable_keyslots("unlocking v", &[4096 * MIB], None).is_ok(),
            "MemAvailable unknown"
        );
    }

    #[test]
    fn reads_mem_available() {
        let text = "MemTotal:        8000000 kB\nMemFree:  100 kB\nMemAvailable:    5120000 kB\n";
        assert_eq!(meminfo_field(text, "MemAvailable:"), Some(5_120_000));
        assert_eq!(meminfo_field(text, "MemTotal:"), Some(8_000_000));
        assert_eq!(meminfo_field("MemTotal: 1 kB\n", "MemAvailable:"), None);
    }
}
