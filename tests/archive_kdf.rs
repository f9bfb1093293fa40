//! An archive's KDF memory: judged from the header first, then allocated fallibly and wiped.
//!
//! A tracking allocator records the largest block asked for while a forged header is
//! refused, and whether a large block was freed still holding data; the controls show that
//! it does see argon2's memory, and argon2's own allocation left unwiped.

use std::alloc::{GlobalAlloc, Layout, System};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use keepsake::archive::{KeylessReader, MAX_KDF_ITERATIONS, MAX_KDF_MEMORY_KIB};
use keepsake::error::{Error, ExitCode};
use keepsake::secrets::Secret;

static WATCHING: AtomicBool = AtomicBool::new(false);
static LARGEST: AtomicUsize = AtomicUsize::new(0);
/// Whether a block of at least [`LARGE`] was freed with a byte that is not zero.
static FREED_UNWIPED: AtomicBool = AtomicBool::new(false);
/// Blocks this large are argon2's working memory (the tests' own are far smaller).
const LARGE: usize = 1 << 20;
/// The tests share the allocator's record: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

struct Tracking;

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if WATCHING.load(Ordering::SeqCst) {
            LARGEST.fetch_max(layout.size(), Ordering::SeqCst);
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if WATCHING.load(Ordering::SeqCst) {
            LARGEST.fetch_max(layout.size(), Ordering::SeqCst);
        }
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if WATCHING.load(Ordering::SeqCst) && layout.size() >= LARGE {
            // SAFETY: the block is still ours until System.dealloc below.
            let block = unsafe { std::slice::from_raw_parts(ptr, layout.size()) };
            if block.iter().any(|&b| b != 0) {
                FREED_UNWIPED.store(true, Ordering::SeqCst);
            }
        }
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

/// Runs `f`; returns its result and the largest block allocated meanwhile.
fn largest_allocation_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.store(0, Ordering::SeqCst);
    WATCHING.store(true, Ordering::SeqCst);
    let result = f();
    WATCHING.store(false, Ordering::SeqCst);
    (result, LARGEST.load(Ordering::SeqCst))
}

/// Runs `f`; returns whether a large block was freed meanwhile still holding data.
fn freed_unwiped_during(f: impl FnOnce()) -> bool {
    FREED_UNWIPED.store(false, Ordering::SeqCst);
    WATCHING.store(true, Ordering::SeqCst);
    f();
    WATCHING.store(false, Ordering::SeqCst);
    FREED_UNWIPED.load(Ordering::SeqCst)
}

/// A version-1 header as docs/backup-format.md lays it out, then 200 bytes that are not a
/// chunk: 264 bytes, the shape of the forged archive of issue 11.
fn archive(memory_kib: u32, iterations: u32) -> Vec<u8> {
    let mut bytes = vec![0u8; 64];
    bytes[0..8].copy_from_slice(b"KSBACKUP");
    bytes[8] = 1; // format version
    bytes[9] = 1; // argon2id
    bytes[12..16].copy_from_slice(&memory_kib.to_le_bytes());
    bytes[16..20].copy_from_slice(&iterations.to_le_bytes());
    bytes[20..24].copy_from_slice(&1u32.to_le_bytes());
    bytes[24..40].copy_from_slice(&[7; 16]); // salt
    bytes[40..44].copy_from_slice(&65536u32.to_le_bytes());
    bytes[44..51].copy_from_slice(&[9; 7]); // nonce prefix
    bytes.extend_from_slice(&[0x5a; 200]);
    bytes
}

const GIB_KIB: u64 = 1 << 20;
/// Nothing the header asks for may be allocated before it is judged: 4 KiB covers the
/// error message.
const SMALL: usize = 4096;

#[test]
fn a_forged_header_beyond_the_caps_is_refused_before_any_allocation() {
    let _one = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let forged = archive(MAX_KDF_MEMORY_KIB, MAX_KDF_ITERATIONS);
    assert_eq!(forged.len(), 264);
    let (result, largest) =
        largest_allocation_during(|| KeylessReader::new(&forged[..], Some(u64::MAX)).err());
    let err = result.expect("refused");
    assert!(matches!(err, Error::Corrupt(_)), "{err}");
    assert_eq!(err.exit_code(), ExitCode::Corrupt);
    assert!(largest <= SMALL, "{largest} bytes allocated while refusing");
}

#[test]
fn a_header_this_machine_cannot_afford_is_refused_before_any_allocation() {
    let _one = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let heavy = archive(MAX_KDF_MEMORY_KIB, 4);
    let (result, largest) =
        largest_allocation_during(|| KeylessReader::new(&heavy[..], Some(GIB_KIB * 3 / 2)).err());
    let err = result.expect("refused");
    assert!(
        matches!(err, Error::Host(keepsake::host::Error::Unsafe(_))),
        "{err}"
    );
    assert_eq!(err.exit_code(), ExitCode::UnsafeHost);
    assert!(err.to_string().contains("needs 4096 MiB"), "{err}");
    assert!(largest <= SMALL, "{largest} bytes allocated while refusing");
}

/// The control: the same allocator, around a header that passes and a key derivation that
/// runs, records argon2's 8 MiB of blocks. (The passphrase is wrong for these made-up
/// bytes, so the first chunk is then refused.)
#[test]
fn the_check_sees_the_key_derivation_allocate() {
    let _one = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let cheap = archive(8 * 1024, 1);
    let secret = Secret::from_zeroizing(zeroize::Zeroizing::new(b"pass".to_vec()));
    let (result, largest) = largest_allocation_during(|| {
        KeylessReader::new(&cheap[..], Some(GIB_KIB))
            .and_then(|keyless| keyless.unlock(&secret))
            .err()
    });
    assert!(matches!(result, Some(Error::WrongKey(_))), "{result:?}");
    assert!(largest >= 8 << 20, "only {largest} bytes seen");
}

/// argon2's memory is derived from the passphrase (one hash of a guess checks it against
/// the first blocks): it is wiped before it is freed.
#[test]
fn the_key_derivation_memory_is_wiped_before_it_is_freed() {
    let _one = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let cheap = archive(8 * 1024, 1);
    let secret = Secret::from_zeroizing(zeroize::Zeroizing::new(b"pass".to_vec()));
    let unwiped = freed_unwiped_during(|| {
        let result = KeylessReader::new(&cheap[..], Some(GIB_KIB))
            .and_then(|keyless| keyless.unlock(&secret))
            .err();
        assert!(matches!(result, Some(Error::WrongKey(_))), "{result:?}");
    });
    assert!(!unwiped, "argon2's blocks were freed holding data");
}

/// The control: argon2's own allocation, as keepsake used it before, frees its blocks
/// unwiped, and the allocator sees it.
#[test]
fn the_check_finds_argon2s_own_memory_unwiped() {
    let _one = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let params = argon2::Params::new(8 * 1024, 1, 1, Some(32)).unwrap();
    let unwiped = freed_unwiped_during(|| {
        let mut key = [0u8; 32];
        argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
            .hash_password_into(b"pass", &[7; 16], &mut key)
            .unwrap();
    });
    assert!(unwiped, "argon2's own blocks were wiped after all");
}

/// A memory limit that MemAvailable does not show (here RLIMIT_AS; a cgroup is another):
/// the allocation for the key derivation fails, and keepsake says so (exit status 6)
/// instead of aborting (134, as argon2's own allocation did).
#[test]
fn a_key_derivation_that_cannot_get_its_memory_is_an_error_not_an_abort() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.ksb");
    let key = dir.path().join("key");
    // 1 GiB: below MemAvailable on any machine that runs this suite, above the limit.
    std::fs::write(&file, archive(1 << 20, 1)).unwrap();
    std::fs::write(&key, b"pass").unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keepsake"));
    cmd.args([
        "--allow-unencrypted-swap",
        "--allow-core-dump-handler",
        "--allow-disk-backed-tmp",
        "backup",
        "verify",
    ])
    .arg(&file)
    .arg("--key-file")
    .arg(&key);
    let limit = 512 << 20;
    // SAFETY: setrlimit is async-signal-safe, and nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_AS, limit, limit)
                .map_err(std::io::Error::from)
        });
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{stderr}");
    assert!(
        stderr.contains("needs 1024 MiB of memory"),
        "the refusal names the cost: {stderr}"
    );
}
