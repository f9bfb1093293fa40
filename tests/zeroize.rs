//! Secrets live in one buffer and are wiped before their memory is given back: a tracking
//! allocator scans every block as it is freed for any piece of the secret and keeps a table
//! of the blocks still live; a plain Vec, two live copies, and a terminal reader that grows a
//! String show that the checks find what they look for.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::termios::{self, LocalFlags, SetArg, Termios};
use zeroize::Zeroizing;

use keepsake::secrets::{MAX_PASSPHRASE, SecretSource, ask_on_terminal, read_secret};

/// Random-looking, so that no unrelated block holds a piece of it by chance.
const SECRET: &[u8] = b"zq7V-t9Lr#xW2m@Kp4!sJ8yN-cF3h&Dg6uB1eR5oT0a";
/// A run of the secret this long counts as a piece of it: a String that grows from empty
/// frees blocks of 8, 16 and 32 bytes, each holding the start of what was typed.
const PIECE: usize = 8;
/// Blocks allocated during one scan that can be tracked at once.
const SLOTS: usize = 4096;

static SCANNING: AtomicBool = AtomicBool::new(false);
static FREED_WITH_SECRET: AtomicUsize = AtomicUsize::new(0);
static TABLE_FULL: AtomicBool = AtomicBool::new(false);
/// (address, size) of each block allocated during the scan and not yet freed; 0 is empty.
static LIVE: [(AtomicUsize, AtomicUsize); SLOTS] =
    [const { (AtomicUsize::new(0), AtomicUsize::new(0)) }; SLOTS];
/// Keeps a block from being freed while the table is read; a spin lock, as the allocator
/// must not allocate.
static TABLE_LOCK: AtomicBool = AtomicBool::new(false);
/// The tests share the allocator's state: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    // A failed test poisons the lock; the others still run.
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct TableLock;

impl TableLock {
    fn take() -> TableLock {
        while TABLE_LOCK
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            std::hint::spin_loop();
        }
        TableLock
    }
}

impl Drop for TableLock {
    fn drop(&mut self) {
        TABLE_LOCK.store(false, Ordering::Release);
    }
}

fn holds_piece(block: &[u8]) -> bool {
    // As integers, on the stack: this runs inside the allocator, on every freed block.
    let mut pieces = [0u64; SECRET.len()];
    for (piece, run) in pieces.iter_mut().zip(SECRET.windows(PIECE)) {
        *piece = u64::from_ne_bytes(run.try_into().unwrap_or_default());
    }
    let pieces = &pieces[..SECRET.len() - PIECE + 1];
    block
        .windows(PIECE)
        .any(|run| pieces.contains(&u64::from_ne_bytes(run.try_into().unwrap_or_default())))
}

fn holds_whole(block: &[u8]) -> bool {
    block.windows(SECRET.len()).any(|run| run == SECRET)
}

struct Tracking;

// realloc is left to its default (alloc, copy, dealloc), so every block a growing buffer
// leaves behind passes through dealloc below.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if SCANNING.load(Ordering::SeqCst) && !ptr.is_null() {
            let _table = TableLock::take();
            let free = LIVE
                .iter()
                .find(|(address, _)| address.load(Ordering::SeqCst) == 0);
            match free {
                Some((address, size)) => {
                    size.store(layout.size(), Ordering::SeqCst);
                    address.store(ptr as usize, Ordering::SeqCst);
                }
                None => TABLE_FULL.store(true, Ordering::SeqCst),
            }
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if SCANNING.load(Ordering::SeqCst) {
            let _table = TableLock::take();
            if let Some((address, _)) = LIVE
                .iter()
                .find(|(address, _)| address.load(Ordering::SeqCst) == ptr as usize)
            {
                address.store(0, Ordering::SeqCst);
            }
            // SAFETY: the block is still ours until System.dealloc below.
            let block = unsafe { std::slice::from_raw_parts(ptr, layout.size()) };
            if holds_piece(block) {
                FREED_WITH_SECRET.fetch_add(1, Ordering::SeqCst);
            }
        }
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

/// Ends the scan even if the test panics inside it.
struct Scan;

impl Drop for Scan {
    fn drop(&mut self) {
        SCANNING.store(false, Ordering::SeqCst);
    }
}

/// Runs `f` with allocations tracked and freed blocks scanned; returns what `f` returned
/// and how many freed blocks held a piece of the secret.
fn scan<T>(f: impl FnOnce() -> T) -> (T, usize) {
    {
        let _table = TableLock::take();
        for (address, _) in &LIVE {
            address.store(0, Ordering::SeqCst);
        }
    }
    TABLE_FULL.store(false, Ordering::SeqCst);
    FREED_WITH_SECRET.store(0, Ordering::SeqCst);
    let scan = Scan;
    SCANNING.store(true, Ordering::SeqCst);
    let result = f();
    drop(scan);
    assert!(
        !TABLE_FULL.load(Ordering::SeqCst),
        "more live blocks than the table tracks"
    );
    (result, FREED_WITH_SECRET.load(Ordering::SeqCst))
}

/// Copies alive among the blocks allocated during this scan: (holding the whole secret,
/// holding any piece of it). Call it inside `scan`, once other threads are done.
fn live_copies() -> (usize, usize) {
    let _table = TableLock::take();
    let (mut whole, mut pieces) = (0, 0);
    for (address, size) in &LIVE {
        let address = address.load(Ordering::SeqCst);
        if address == 0 {
            continue;
        }
        // SAFETY: a block in the table is live, and cannot be freed while we hold the lock.
        let block = unsafe {
            std::slice::from_raw_parts(address as *const u8, size.load(Ordering::SeqCst))
        };
        whole += usize::from(holds_whole(block));
        pieces += usize::from(holds_piece(block));
    }
    (whole, pieces)
}

#[test]
fn the_check_finds_an_unwiped_buffer() {
    let _one = one_at_a_time();
    let ((), freed) = scan(|| {
        let plain: Vec<u8> = SECRET.to_vec();
        drop(std::hint::black_box(plain));
    });
    assert_eq!(freed, 1, "a plain Vec's freed block still holds the secret");
}

#[test]
fn the_check_counts_every_live_copy() {
    let _one = one_at_a_time();
    let (copies, _) = scan(|| {
        let one = Zeroizing::new(SECRET.to_vec());
        let two = Zeroizing::new(SECRET[..PIECE].to_vec());
        let copies = live_copies();
        drop((std::hint::black_box(one), std::hint::black_box(two)));
        copies
    });
    assert_eq!(
        copies,
        (1, 2),
        "one whole copy and one piece are both alive"
    );
}

#[test]
fn a_key_file_secret_is_wiped_on_drop() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    let mut content = b"prefix-".to_vec();
    content.extend_from_slice(SECRET);
    std::fs::write(&path, &content).unwrap();
    content.iter_mut().for_each(|b| *b = 0);
    let (copies, freed) = scan(|| {
        let secret = read_secret(&SecretSource::KeyFile(path.clone()), "Key", false).unwrap();
        assert!(secret.as_bytes().ends_with(SECRET));
        let copies = live_copies();
        drop(secret);
        copies
    });
    assert_eq!(copies, (1, 1), "exactly one live buffer holds the key");
    assert_eq!(freed, 0, "a freed block still held the key");
}

#[test]
fn a_passphrase_from_a_descriptor_is_wiped_on_drop() {
    let _one = one_at_a_time();
    let (r, w) = nix::unistd::pipe().unwrap();
    let mut writer = std::fs::File::from(w);
    writer.write_all(SECRET).unwrap();
    writer.write_all(b"\n").unwrap();
    drop(writer);
    let (copies, freed) = scan(|| {
        let secret = read_secret(&SecretSource::Fd(r.as_raw_fd()), "Passphrase", false).unwrap();
        assert_eq!(secret.as_bytes(), SECRET);
        let copies = live_copies();
        drop(secret);
        copies
    });
    assert_eq!(
        copies,
        (1, 1),
        "exactly one live buffer holds the passphrase"
    );
    assert_eq!(freed, 0, "a freed block still held the passphrase");
}

#[test]
fn a_secret_is_wiped_when_a_panic_unwinds_past_it() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    std::fs::write(&path, SECRET).unwrap();
    let ((), freed) = scan(|| {
        let result = std::panic::catch_unwind(|| {
            let secret = read_secret(&SecretSource::KeyFile(path.clone()), "Key", false).unwrap();
            std::hint::black_box(&secret);
            // Unwinds without the panic hook, whose backtrace (RUST_BACKTRACE=1) would
            // fill the table of live blocks with the symbolizer's own.
            std::panic::resume_unwind(Box::new("an error path after the secret was read"));
        });
        assert!(result.is_err());
    });
    assert_eq!(freed, 0, "the unwinding drop left the key in a freed block");
}

/// Written to the terminal by the test once the reader has returned, so that the person at
/// the terminal knows the terminal has nothing more to show.
const DONE: &[u8] = b"<reader returned>";

/// What the person at the terminal saw.
struct Seen {
    /// Everything the terminal showed, up to [`DONE`].
    shown: Vec<u8>,
    /// The terminal's settings at the moment each line was typed.
    settings_when_typing: Vec<Termios>,
}

fn wait_for_output(master: &OwnedFd, deadline: Instant) {
    let mut poll = libc::pollfd {
        fd: master.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the terminal"
        );
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut poll, 1, 100) } > 0 {
            return;
        }
    }
}

/// Reads what the terminal shows until `wanted` appears after `shown[*from..]`; moves
/// `from` past it, so that a prompt shown twice is waited for twice.
fn read_until(
    master: &OwnedFd,
    shown: &mut Vec<u8>,
    from: &mut usize,
    wanted: &[u8],
    deadline: Instant,
) {
    let mut chunk = [0u8; 256];
    loop {
        if let Some(at) = shown[*from..]
            .windows(wanted.len())
            .position(|w| w == wanted)
        {
            *from += at + wanted.len();
            return;
        }
        wait_for_output(master, deadline);
        let n = nix::unistd::read(master, &mut chunk).unwrap();
        shown.extend_from_slice(&chunk[..n]);
    }
}

/// Plays the person at the terminal on the master side of a pty: for each (prompt, line),
/// waits until the prompt is shown, notes the terminal's settings, then types the line and
/// Enter.
fn person_at_terminal(
    master: OwnedFd,
    slave: OwnedFd,
    script: Vec<(&'static str, &'static [u8])>,
) -> JoinHandle<Seen> {
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = Seen {
            shown: Vec::new(),
            settings_when_typing: Vec::new(),
        };
        let mut keyboard = std::fs::File::from(master.try_clone().unwrap());
        let mut from = 0;
        for (prompt, line) in script {
            read_until(
                &master,
                &mut seen.shown,
                &mut from,
                prompt.as_bytes(),
                deadline,
            );
            // No waiting for echo to go off: a reader must hide input before it prompts, and
            // if it did not, the line is typed anyway and its echo is there to be found.
            seen.settings_when_typing
                .push(termios::tcgetattr(&slave).unwrap());
            keyboard.write_all(line).unwrap();
            // Enter, as a terminal sends it.
            keyboard.write_all(b"\r").unwrap();
        }
        read_until(&master, &mut seen.shown, &mut from, DONE, deadline);
        seen
    })
}

/// Asks on a fresh pty with `reader` while a person types `script`; returns what the reader
/// returned, what the person saw, and the terminal's settings before and after.
fn at_a_terminal<T>(
    script: Vec<(&'static str, &'static [u8])>,
    reader: impl FnOnce(std::os::fd::BorrowedFd<'_>) -> T,
) -> (T, Seen, Termios, Termios) {
    let pty = nix::pty::openpty(None, None).unwrap();
    let before = termios::tcgetattr(&pty.slave).unwrap();
    let person = person_at_terminal(pty.master, pty.slave.try_clone().unwrap(), script);
    let result = reader(pty.slave.as_fd());
    // Before the person leaves: a pty whose master is closed answers only EIO.
    let after = termios::tcgetattr(&pty.slave).unwrap();
    nix::unistd::write(&pty.slave, DONE).unwrap();
    let seen = person.join().unwrap();
    (result, seen, before, after)
}

/// Echo was off whenever a line was typed, the terminal never showed a piece of the secret,
/// and its settings are back as they were.
fn assert_hidden_and_restored(seen: &Seen, before: &Termios, after: &Termios) {
    assert!(!seen.settings_when_typing.is_empty());
    for settings in &seen.settings_when_typing {
        assert!(
            !settings.local_flags.contains(LocalFlags::ECHO),
            "echo was on when the prompt was shown"
        );
    }
    assert!(
        !holds_piece(&seen.shown),
        "the terminal echoed the passphrase: {:?}",
        String::from_utf8_lossy(&seen.shown)
    );
    assert_eq!(after, before, "the terminal's settings are back");
    assert!(after.local_flags.contains(LocalFlags::ECHO));
}

#[test]
fn a_typed_passphrase_lives_in_one_buffer_and_is_wiped() {
    let _one = one_at_a_time();
    let ((copies, seen, before, after), freed) = scan(|| {
        let (secret, seen, before, after) = at_a_terminal(vec![("Passphrase: ", SECRET)], |tty| {
            ask_on_terminal(tty, "Passphrase", false).unwrap()
        });
        assert_eq!(secret.as_bytes(), SECRET);
        let copies = live_copies();
        drop(secret);
        (copies, seen, before, after)
    });
    assert_hidden_and_restored(&seen, &before, &after);
    assert_eq!(
        copies,
        (1, 1),
        "exactly one live buffer holds the passphrase"
    );
    assert_eq!(freed, 0, "a freed block held a piece of the passphrase");
    assert_eq!(seen.shown, b"Passphrase: \r\n<reader returned>");
}

#[test]
fn a_confirmed_passphrase_leaves_no_second_copy() {
    let _one = one_at_a_time();
    let script = vec![
        ("New passphrase: ", SECRET),
        ("New passphrase (again): ", SECRET),
    ];
    let ((copies, seen, before, after), freed) = scan(|| {
        let (secret, seen, before, after) = at_a_terminal(script, |tty| {
            ask_on_terminal(tty, "New passphrase", true).unwrap()
        });
        assert_eq!(secret.as_bytes(), SECRET);
        let copies = live_copies();
        drop(secret);
        (copies, seen, before, after)
    });
    assert_hidden_and_restored(&seen, &before, &after);
    assert_eq!(
        copies,
        (1, 1),
        "the confirmation's copy is gone once compared"
    );
    assert_eq!(freed, 0, "a freed block held a piece of the passphrase");
    assert_eq!(seen.settings_when_typing.len(), 2);
}

#[test]
fn two_different_typed_passphrases_are_refused_and_both_wiped() {
    let _one = one_at_a_time();
    let script = vec![
        ("New passphrase: ", SECRET),
        ("New passphrase (again): ", &SECRET[1..]),
    ];
    let ((copies, seen, before, after), freed) = scan(|| {
        let (result, seen, before, after) = at_a_terminal(script, |tty| {
            ask_on_terminal(tty, "New passphrase", true).map(drop)
        });
        let err = result.unwrap_err();
        assert!(err.to_string().contains("differ"), "{err}");
        (live_copies(), seen, before, after)
    });
    assert_hidden_and_restored(&seen, &before, &after);
    assert_eq!(copies, (0, 0), "nothing of either answer is alive");
    assert_eq!(freed, 0, "a freed block held a piece of a passphrase");
}

#[test]
fn an_overlong_typed_passphrase_is_refused_and_wiped() {
    let _one = one_at_a_time();
    // Leaked before the scan: the test's own copies are neither freed nor tracked.
    let longest: &'static [u8] = Box::leak(
        SECRET
            .iter()
            .copied()
            .cycle()
            .take(MAX_PASSPHRASE)
            .collect(),
    );
    let too_long: &'static [u8] = Box::leak(
        SECRET
            .iter()
            .copied()
            .cycle()
            .take(MAX_PASSPHRASE + 1)
            .collect(),
    );
    let ((copies, seen, before, after), freed) = scan(|| {
        let (result, seen, before, after) = at_a_terminal(
            vec![("Passphrase: ", too_long), ("Passphrase: ", longest)],
            |tty| {
                let refused = ask_on_terminal(tty, "Passphrase", false).map(drop);
                let accepted = ask_on_terminal(tty, "Passphrase", false).unwrap();
                (refused, accepted)
            },
        );
        let (refused, accepted) = result;
        let err = refused.unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("longer than {MAX_PASSPHRASE} bytes")),
            "{err}"
        );
        assert_eq!(
            accepted.as_bytes(),
            longest,
            "the longest answer still fits"
        );
        let copies = live_copies();
        drop(accepted);
        (copies, seen, before, after)
    });
    assert_hidden_and_restored(&seen, &before, &after);
    assert_eq!(copies, (1, 1), "one live buffer, the accepted answer's");
    assert_eq!(freed, 0, "a freed block held a piece of a passphrase");
}

/// What the terminal path must not be: echo off and one byte at a time, but pushed onto a
/// String that grows, wrapped in Zeroizing only at the end, as a naive reader would.
fn naive_reader(tty: std::os::fd::BorrowedFd<'_>) -> Zeroizing<String> {
    let saved = termios::tcgetattr(tty).unwrap();
    let mut hidden = saved.clone();
    hidden
        .local_flags
        .remove(LocalFlags::ECHO | LocalFlags::ICANON);
    termios::tcsetattr(tty, SetArg::TCSAFLUSH, &hidden).unwrap();
    nix::unistd::write(tty, b"Passphrase: ").unwrap();
    let mut typed = String::new();
    let mut byte = [0u8; 1];
    while nix::unistd::read(tty, &mut byte).unwrap() == 1 && byte[0] != b'\n' && byte[0] != b'\r' {
        typed.push(char::from(byte[0]));
    }
    nix::unistd::write(tty, b"\n").unwrap();
    termios::tcsetattr(tty, SetArg::TCSAFLUSH, &saved).unwrap();
    Zeroizing::new(typed)
}

#[test]
fn the_check_catches_a_reader_that_grows_a_string() {
    let _one = one_at_a_time();
    let ((copies, seen, before, after), freed) = scan(|| {
        let (typed, seen, before, after) =
            at_a_terminal(vec![("Passphrase: ", SECRET)], naive_reader);
        assert_eq!(typed.as_bytes(), SECRET);
        let copies = live_copies();
        drop(typed);
        (copies, seen, before, after)
    });
    assert_hidden_and_restored(&seen, &before, &after);
    // Its echo and its final buffer are fine; what it freed on the way is not.
    assert_eq!(copies, (1, 1));
    assert!(
        freed >= 3,
        "the blocks a growing String left behind are found (found {freed})"
    );
}
