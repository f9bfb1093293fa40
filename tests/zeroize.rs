//! Secrets are wiped before their memory is given back. A tracking allocator looks at every
//! block as it is freed and records whether it still held the marker; a plain Vec shows
//! that the check does find what is left behind.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use keepsake::secrets::{SecretSource, read_secret};

const MARKER: &[u8] = b"KEEPSAKE-ZEROIZE-MARKER-7f3a9c";

static SCANNING: AtomicBool = AtomicBool::new(false);
static FOUND: AtomicBool = AtomicBool::new(false);
/// The tests share the allocator's flags: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

struct Tracking;

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if SCANNING.load(Ordering::SeqCst) && layout.size() >= MARKER.len() {
            // SAFETY: the block is still ours until System.dealloc below.
            let block = unsafe { std::slice::from_raw_parts(ptr, layout.size()) };
            if block.windows(MARKER.len()).any(|w| w == MARKER) {
                FOUND.store(true, Ordering::SeqCst);
            }
        }
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

/// Runs `f` with freed blocks scanned; returns whether any freed block held the marker.
fn freed_marker_during(f: impl FnOnce()) -> bool {
    FOUND.store(false, Ordering::SeqCst);
    SCANNING.store(true, Ordering::SeqCst);
    f();
    SCANNING.store(false, Ordering::SeqCst);
    FOUND.load(Ordering::SeqCst)
}

#[test]
fn the_check_finds_an_unwiped_buffer() {
    let _one = SERIAL.lock().unwrap();
    let found = freed_marker_during(|| {
        let plain: Vec<u8> = MARKER.to_vec();
        drop(std::hint::black_box(plain));
    });
    assert!(found, "a plain Vec's freed block still holds the marker");
}

#[test]
fn a_key_file_secret_is_wiped_on_drop() {
    let _one = SERIAL.lock().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    let mut content = b"prefix-".to_vec();
    content.extend_from_slice(MARKER);
    std::fs::write(&path, &content).unwrap();
    content.iter_mut().for_each(|b| *b = 0);
    let found = freed_marker_during(|| {
        let secret = read_secret(&SecretSource::KeyFile(path.clone()), "Key", false).unwrap();
        assert!(secret.as_bytes().ends_with(MARKER));
        drop(secret);
    });
    assert!(!found, "a freed block still held the key");
}

#[test]
fn a_passphrase_from_a_descriptor_is_wiped_on_drop() {
    let _one = SERIAL.lock().unwrap();
    let (r, w) = nix::unistd::pipe().unwrap();
    let mut writer = std::fs::File::from(w);
    writer.write_all(MARKER).unwrap();
    writer.write_all(b"\n").unwrap();
    drop(writer);
    let found = freed_marker_during(|| {
        let secret = read_secret(&SecretSource::Fd(r.as_raw_fd()), "Passphrase", false).unwrap();
        assert_eq!(secret.as_bytes(), MARKER);
        drop(secret);
    });
    assert!(!found, "a freed block still held the passphrase");
}

#[test]
fn a_secret_is_wiped_when_a_panic_unwinds_past_it() {
    let _one = SERIAL.lock().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    std::fs::write(&path, MARKER).unwrap();
    let found = freed_marker_during(|| {
        let result = std::panic::catch_unwind(|| {
            let secret = read_secret(&SecretSource::KeyFile(path.clone()), "Key", false).unwrap();
            std::hint::black_box(&secret);
            panic!("an error path after the secret was read");
        });
        assert!(result.is_err());
    });
    assert!(!found, "the unwinding drop left the key in a freed block");
}
