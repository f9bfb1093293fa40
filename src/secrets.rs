//! Secrets: how passphrases enter the process, where they live, and how the process is
//! hardened before the first one is read.
//!
//! A passphrase lives only in a [`Secret`], a zeroizing buffer allocated once, at its final
//! size or at the largest accepted, so that no reallocation leaves a stray copy behind; bytes
//! are read straight into it. It never comes from argv or the environment: only from the
//! terminal (echo off, through our own prompt rather than a library that grows a `String`), a
//! file descriptor, or a key file.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use nix::errno::Errno;
use nix::sys::termios::{self, InputFlags, LocalFlags, SetArg, SpecialCharacterIndices, Termios};
use zeroize::{Zeroize, Zeroizing};

use crate::context::{Context, IoError, at};

/// Why no secret was read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Holds what was asked for ("passphrase").
    #[error("empty {0} given")]
    Empty(String),
    #[error("no terminal to ask for the passphrase on; use --passphrase-fd N or --key-file PATH")]
    NoTerminal,
    #[error("the two passphrases differ; nothing was changed")]
    Mismatch,
    #[error("no {0} given: cancelled at the prompt")]
    Cancelled(String),
    #[error("no {0} given: the terminal's input ended")]
    InputEnded(String),
    #[error("the {0} typed is longer than {MAX_PASSPHRASE} bytes")]
    TypedTooLong(String),
    #[error("--passphrase-fd {0} is not a file descriptor")]
    NotAnFd(RawFd),
    #[error("--passphrase-fd {0}: no such open file descriptor")]
    FdNotOpen(RawFd),
    #[error("the passphrase on fd {0} is longer than {MAX_PASSPHRASE} bytes")]
    FdTooLong(RawFd),
    #[error("key file {} not found", .0.display())]
    KeyFileMissing(PathBuf),
    #[error("key file {} is not a regular file; use --passphrase-fd for pipes", .0.display())]
    KeyFileNotRegular(PathBuf),
    #[error("key file {} is larger than {MAX_KEY_FILE} bytes", .0.display())]
    KeyFileTooLarge(PathBuf),
    /// Echo could not be turned off: a passphrase typed now would be shown.
    #[error("the terminal kept its echo on; not asking for a passphrase it would show")]
    EchoStuck,
    #[error(transparent)]
    Io(#[from] IoError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The longest passphrase read from a terminal or file descriptor, in bytes: one limit for
/// both, so that a passphrase set one way can always be given the other (cryptsetup's
/// interactive limit is 512 characters; this leaves room for multi-byte characters).
pub const MAX_PASSPHRASE: usize = 4096;
/// The largest key file accepted, as cryptsetup's default `--keyfile-size` limit.
pub(crate) const MAX_KEY_FILE: u64 = 8 * 1024 * 1024;

/// Secret bytes, wiped when dropped. Debug output never shows them.
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Takes ownership of an existing zeroizing buffer.
    pub fn from_zeroizing(bytes: Zeroizing<Vec<u8>>) -> Secret {
        Secret(bytes)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret([redacted; {} bytes])", self.0.len())
    }
}

impl PartialEq for Secret {
    /// Compares in time independent of where the first difference is.
    fn eq(&self, other: &Secret) -> bool {
        let (a, b) = (self.as_bytes(), other.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// Where a passphrase comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretSource {
    /// Ask on the controlling terminal, without echo.
    Terminal,
    /// Read one line from an inherited file descriptor (the newline is not part of it).
    Fd(RawFd),
    /// The whole file, byte for byte, as `cryptsetup --key-file` reads it.
    KeyFile(PathBuf),
}

impl SecretSource {
    pub(crate) fn from_options(fd: Option<RawFd>, key_file: Option<&Path>) -> SecretSource {
        match (fd, key_file) {
            (Some(fd), _) => SecretSource::Fd(fd),
            (None, Some(path)) => SecretSource::KeyFile(path.to_path_buf()),
            (None, None) => SecretSource::Terminal,
        }
    }
}

/// Reads a secret. `prompt` names what is asked for; with `confirm`, a terminal user is asked
/// twice and the two must match (scripts are trusted to pass what they mean).
pub fn read_secret(source: &SecretSource, prompt: &str, confirm: bool) -> Result<Secret> {
    let secret = match source {
        SecretSource::Terminal => {
            let tty = open_terminal()?;
            ask_on_terminal(tty.as_fd(), prompt, confirm)?
        }
        SecretSource::Fd(fd) => read_line_from_fd(*fd)?,
        SecretSource::KeyFile(path) => read_key_file(path)?,
    };
    if secret.is_empty() {
        return Err(Error::Empty(prompt.to_lowercase()));
    }
    Ok(secret)
}

/// Opens the controlling terminal itself, as `cryptsetup` and `getpass` do: stdin may be a
/// pipe from a script while the person sits at the terminal.
fn open_terminal() -> Result<OwnedFd> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open("/dev/tty")
        .map(OwnedFd::from)
        .map_err(|_| Error::NoTerminal)
}

/// Asks for a passphrase on the terminal `tty` (the controlling terminal in production, a
/// pty in tests) with echo off; with `confirm`, twice, and the two must match. Each answer
/// goes straight from the terminal into its own buffer of [`MAX_PASSPHRASE`] + 1 bytes,
/// allocated once and never grown; the second is wiped as soon as it has been compared.
pub fn ask_on_terminal(tty: BorrowedFd<'_>, prompt: &str, confirm: bool) -> Result<Secret> {
    let first = read_hidden_line(tty, prompt, &format!("{prompt}: "))?;
    if confirm {
        let again = read_hidden_line(tty, prompt, &format!("{prompt} (again): "))?;
        if first != again {
            return Err(Error::Mismatch);
        }
    }
    Ok(first)
}

/// How a line typed at a hidden prompt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LineEnd {
    /// Enter: the first `len` bytes of the buffer are the answer.
    Entered(usize),
    /// Enter after more than the buffer holds; what was typed is already wiped.
    TooLong,
    /// The terminal's interrupt or quit key (Ctrl-C, Ctrl-\), or a signal we survived.
    Cancelled,
    /// The end-of-file key (Ctrl-D) on an empty line, or the terminal went away.
    EndOfInput,
}

fn read_hidden_line(tty: BorrowedFd<'_>, what: &str, shown: &str) -> Result<Secret> {
    let hidden = HiddenInput::begin(tty)?;
    write_to_terminal(tty, shown.as_bytes())?;
    let mut buf = Zeroizing::new(vec![0u8; MAX_PASSPHRASE + 1]);
    let mut line = LineEditor::new(hidden.keys);
    let end = loop {
        let at = line.len;
        // A signal the process survives (a stop signal deferred by crate::interrupt) may
        // run its handler on another thread, leaving this read asleep: look every quarter
        // of a second whether one came.
        if restore_on_signal::interrupted() {
            break LineEnd::Cancelled;
        }
        let mut ready = libc::pollfd {
            fd: tty.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, for the duration of the call.
        let polled = unsafe { libc::poll(&mut ready, 1, 250) };
        match Errno::result(polled) {
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => {
                return Err(e)
                    .context(|| "waiting for the passphrase from the terminal".into())
                    .map_err(Error::from);
            }
        }
        match nix::unistd::read(tty, &mut buf[at..at + 1]) {
            Ok(0) | Err(Errno::EIO) => break LineEnd::EndOfInput,
            Ok(_) => {
                if let Some(end) = line.take(&mut buf) {
                    break end;
                }
            }
            Err(Errno::EINTR) if restore_on_signal::interrupted() => break LineEnd::Cancelled,
            Err(Errno::EINTR) => continue,
            Err(e) => {
                return Err(e)
                    .context(|| "reading the passphrase from the terminal".into())
                    .map_err(Error::from);
            }
        }
    };
    // Echo was off, so the Enter did not move the cursor; the next output needs its own line.
    let newline = write_to_terminal(tty, b"\n");
    hidden.restore()?;
    newline?;
    let what = what.to_lowercase();
    match end {
        LineEnd::Entered(len) => {
            buf.truncate(len);
            Ok(Secret(buf))
        }
        LineEnd::TooLong => Err(Error::TypedTooLong(what)),
        LineEnd::Cancelled => Err(Error::Cancelled(what)),
        LineEnd::EndOfInput => Err(Error::InputEnded(what)),
    }
}

fn write_to_terminal(tty: BorrowedFd<'_>, mut bytes: &[u8]) -> Result<(), IoError> {
    while !bytes.is_empty() {
        match nix::unistd::write(tty, bytes) {
            Ok(0) => {
                return Err(io::Error::from(io::ErrorKind::WriteZero))
                    .context(|| "writing the prompt to the terminal".into());
            }
            Ok(n) => bytes = &bytes[n..],
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e).context(|| "writing the prompt to the terminal".into()),
        }
    }
    Ok(())
}

/// The terminal's own editing keys (as `stty -a` shows them), so that erase, kill and the
/// rest do at the hidden prompt what they do in the shell and in `cryptsetup`'s prompt. A key
/// set to 0 is disabled, as the kernel has it.
#[derive(Clone, Copy, Debug)]
struct EditingKeys {
    erase: u8,
    word_erase: u8,
    kill: u8,
    end_of_file: u8,
    interrupt: u8,
    quit: u8,
    suspend: u8,
    literal_next: u8,
    /// Erase removes a whole UTF-8 character, not its last byte.
    utf8: bool,
}

impl EditingKeys {
    fn of(settings: &Termios) -> EditingKeys {
        use SpecialCharacterIndices as Key;
        let key = |index: Key| settings.control_chars[index as usize];
        EditingKeys {
            erase: key(Key::VERASE),
            word_erase: key(Key::VWERASE),
            kill: key(Key::VKILL),
            end_of_file: key(Key::VEOF),
            interrupt: key(Key::VINTR),
            quit: key(Key::VQUIT),
            suspend: key(Key::VSUSP),
            literal_next: key(Key::VLNEXT),
            utf8: settings.input_flags.contains(InputFlags::IUTF8),
        }
    }
}

/// One line edited as the kernel's canonical mode would edit it, but by us: canonical mode
/// cuts a line at 4095 bytes without telling anyone, where a line longer than
/// [`MAX_PASSPHRASE`] is refused here with an error, as on a file descriptor.
struct LineEditor {
    keys: EditingKeys,
    /// Bytes of the answer so far, at the start of the buffer; the next byte is read into
    /// `buf[len]`, so the buffer needs one byte more than the longest answer.
    len: usize,
    literal_next: bool,
    too_long: bool,
}

impl LineEditor {
    fn new(keys: EditingKeys) -> LineEditor {
        LineEditor {
            keys,
            len: 0,
            literal_next: false,
            too_long: false,
        }
    }

    /// Takes the byte just read into `buf[self.len]`: keeps it as part of the answer, or
    /// wipes it and acts on it. Returns how the line ended, once it has.
    fn take(&mut self, buf: &mut [u8]) -> Option<LineEnd> {
        let byte = std::mem::take(&mut buf[self.len]);
        let is = |key: u8| key != 0 && key == byte;
        if std::mem::take(&mut self.literal_next) {
            self.keep(buf, byte);
        } else if byte == b'\n' || byte == b'\r' {
            return Some(if self.too_long {
                LineEnd::TooLong
            } else {
                LineEnd::Entered(self.len)
            });
        } else if is(self.keys.interrupt) || is(self.keys.quit) {
            return Some(LineEnd::Cancelled);
        } else if is(self.keys.end_of_file) {
            if self.len == 0 && !self.too_long {
                return Some(LineEnd::EndOfInput);
            }
        } else if is(self.keys.erase) {
            self.erase(buf, false);
        } else if is(self.keys.word_erase) {
            self.erase(buf, true);
        } else if is(self.keys.kill) {
            buf[..self.len].zeroize();
            self.len = 0;
        } else if is(self.keys.literal_next) {
            self.literal_next = true;
        } else if !is(self.keys.suspend) {
            // Suspending with echo off would leave the shell a silent terminal: ignored.
            self.keep(buf, byte);
        }
        None
    }

    fn keep(&mut self, buf: &mut [u8], byte: u8) {
        if self.too_long {
            return;
        }
        if self.len + 1 == buf.len() {
            // Read on to the Enter rather than stop here: the rest of an over-long paste
            // would otherwise reach the shell once echo is back on.
            buf.zeroize();
            self.len = 0;
            self.too_long = true;
            return;
        }
        buf[self.len] = byte;
        self.len += 1;
    }

    /// Erases the last character or, for `word`, back over the last word and what follows
    /// it, with the kernel's rule (a word is letters, digits and `_`).
    fn erase(&mut self, buf: &mut [u8], word: bool) {
        let mut seen_word = false;
        while self.len > 0 {
            let last = buf[self.len - 1];
            if word {
                if last.is_ascii_alphanumeric() || last == b'_' {
                    seen_word = true;
                } else if seen_word {
                    break;
                }
            }
            loop {
                self.len -= 1;
                let erased = std::mem::take(&mut buf[self.len]);
                let continuation = self.keys.utf8 && erased & 0xC0 == 0x80;
                if !continuation || self.len == 0 {
                    break;
                }
            }
            if !word {
                break;
            }
        }
    }
}

/// The signal handlers can put back one terminal: one prompt at a time.
static ONE_PROMPT: Mutex<()> = Mutex::new(());

/// The terminal with echo, line editing and signal keys off. It is put back as it was by
/// [`HiddenInput::restore`] on the normal path, by `Drop` on every early return, and by
/// [`restore_on_signal`] if a signal ends the process meanwhile.
struct HiddenInput<'fd> {
    tty: BorrowedFd<'fd>,
    saved: Termios,
    keys: EditingKeys,
    restored: bool,
    _one_prompt: MutexGuard<'static, ()>,
}

impl<'fd> HiddenInput<'fd> {
    fn begin(tty: BorrowedFd<'fd>) -> Result<HiddenInput<'fd>> {
        let one_prompt = ONE_PROMPT.lock().unwrap_or_else(PoisonError::into_inner);
        let saved = termios::tcgetattr(tty).context(|| "reading the terminal's settings".into())?;
        let mut hidden = saved.clone();
        // ICANON and IEXTEN off: the line is edited by LineEditor, which has our limit rather
        // than the kernel's. ISIG off: Ctrl-C arrives as a byte and ends the prompt through
        // the normal return path, which wipes the buffers and puts the terminal back; a
        // SIGINT would end the process with the caller's secrets (a current passphrase)
        // still unwiped.
        hidden.local_flags.remove(
            LocalFlags::ECHO
                | LocalFlags::ECHOE
                | LocalFlags::ECHOK
                | LocalFlags::ECHONL
                | LocalFlags::ICANON
                | LocalFlags::ISIG
                | LocalFlags::IEXTEN,
        );
        hidden.control_chars[SpecialCharacterIndices::VMIN as usize] = 1;
        hidden.control_chars[SpecialCharacterIndices::VTIME as usize] = 0;
        let input = HiddenInput {
            tty,
            keys: EditingKeys::of(&saved),
            saved,
            restored: false,
            _one_prompt: one_prompt,
        };
        restore_on_signal::arm(tty, &input.saved, &hidden)
            .context(|| "installing the signal handlers that put the terminal back".into())?;
        // TCSAFLUSH: what was typed before the prompt, while echo was on, is not an answer.
        termios::tcsetattr(tty, SetArg::TCSAFLUSH, &hidden)
            .context(|| "turning the terminal's echo off".into())?;
        let now = termios::tcgetattr(tty).context(|| "reading the terminal's settings".into())?;
        if now.local_flags.contains(LocalFlags::ECHO) {
            return Err(Error::EchoStuck);
        }
        Ok(input)
    }

    /// Puts the terminal back, reporting a failure (the early-return path cannot).
    fn restore(mut self) -> Result<()> {
        self.restored = true;
        Ok(self
            .put_back()
            .context(|| "restoring the terminal's settings".into())?)
    }

    /// TCSAFLUSH again: input left unread (typed ahead after Enter) is dropped rather than
    /// handed to the shell, where it would be echoed.
    fn put_back(&self) -> nix::Result<()> {
        restore_on_signal::stand_down();
        let result = termios::tcsetattr(self.tty, SetArg::TCSAFLUSH, &self.saved);
        restore_on_signal::disarm();
        result
    }
}

impl Drop for HiddenInput<'_> {
    fn drop(&mut self) {
        if !self.restored {
            // Already on an error path: that error is the one to report.
            let _ = self.put_back();
        }
    }
}

/// Puts the terminal back if a signal ends the process while echo is off.
///
/// The keyboard's signal keys are plain bytes at the prompt (ISIG is off), so this covers a
/// `kill`, a hang-up, or `sudo` relaying either. After putting the terminal back, the
/// handler raises the signal again under its previous disposition, so the process ends as
/// it would have. SIGKILL cannot be caught; interactive bash puts back its own settings
/// when a foreground job dies by a signal (and `stty sane` does by hand). bash does the
/// same when a job stops (SIGTSTP, SIGSTOP), so echo may be on again when it is continued:
/// on SIGCONT the hidden settings are applied again before the next key is read.
mod restore_on_signal {
    use std::cell::UnsafeCell;
    use std::io;
    use std::mem::MaybeUninit;
    use std::os::fd::{AsRawFd, BorrowedFd};
    use std::ptr;
    use std::sync::atomic::{AtomicBool, AtomicI32, Ordering::SeqCst};

    use nix::sys::termios::Termios;

    /// The signals whose default action ends the process, then SIGCONT.
    const HANDLED: [libc::c_int; 5] = [
        libc::SIGHUP,
        libc::SIGINT,
        libc::SIGQUIT,
        libc::SIGTERM,
        libc::SIGCONT,
    ];

    /// What the handlers read: written by [`arm`] only before its handlers are installed,
    /// under the one-prompt lock, so a handler never sees it half written.
    struct Shared {
        saved: UnsafeCell<libc::termios>,
        hidden: UnsafeCell<libc::termios>,
        previous: UnsafeCell<[libc::sigaction; HANDLED.len()]>,
    }

    // SAFETY: see `Shared`: one writer, before any reader can run.
    unsafe impl Sync for Shared {}

    // SAFETY: all-zero bytes are a valid termios and a valid sigaction (integers, a signal
    // set, and a null restorer).
    static SHARED: Shared = unsafe {
        Shared {
            saved: UnsafeCell::new(MaybeUninit::zeroed().assume_init()),
            hidden: UnsafeCell::new(MaybeUninit::zeroed().assume_init()),
            previous: UnsafeCell::new(MaybeUninit::zeroed().assume_init()),
        }
    };
    /// The terminal to put back, or -1.
    static TTY: AtomicI32 = AtomicI32::new(-1);
    /// Whether SIGCONT should hide input again (false once the prompt is being put back).
    static HIDDEN: AtomicBool = AtomicBool::new(false);
    /// A handled signal arrived and the process lived on (a previous handler caught it).
    static INTERRUPTED: AtomicBool = AtomicBool::new(false);

    pub(super) fn arm(tty: BorrowedFd<'_>, saved: &Termios, hidden: &Termios) -> io::Result<()> {
        INTERRUPTED.store(false, SeqCst);
        // SAFETY: none of our handlers is installed (disarm ran, or arm never did), so nothing
        // reads SHARED meanwhile; the sigaction calls only query.
        unsafe {
            *SHARED.saved.get() = raw(saved);
            *SHARED.hidden.get() = raw(hidden);
            let previous = &mut *SHARED.previous.get();
            for (signal, previous) in HANDLED.iter().zip(previous.iter_mut()) {
                check(libc::sigaction(*signal, ptr::null(), previous))?;
            }
        }
        TTY.store(tty.as_raw_fd(), SeqCst);
        HIDDEN.store(true, SeqCst);
        for (index, signal) in HANDLED.iter().enumerate() {
            // SAFETY: SHARED.previous is no longer written.
            let previous = unsafe { &(*SHARED.previous.get())[index] };
            let ending = *signal != libc::SIGCONT;
            if ending && previous.sa_sigaction == libc::SIG_IGN {
                // The caller chose to ignore it (nohup): it cannot end the process.
                continue;
            }
            let handler = if ending {
                on_ending_signal as extern "C" fn(libc::c_int)
            } else {
                on_continue as extern "C" fn(libc::c_int)
            };
            // SAFETY: an all-zero sigaction is valid; the handler is async-signal-safe.
            let result = unsafe {
                let mut action: libc::sigaction = MaybeUninit::zeroed().assume_init();
                action.sa_sigaction = handler as libc::sighandler_t;
                // No handler of ours interrupts another; and no SA_RESTART, so a read
                // interrupted by a signal the process survives returns and ends the prompt.
                libc::sigemptyset(&mut action.sa_mask);
                for other in HANDLED {
                    libc::sigaddset(&mut action.sa_mask, other);
                }
                check(libc::sigaction(*signal, &action, ptr::null_mut()))
            };
            if let Err(e) = result {
                disarm();
                return Err(e);
            }
        }
        Ok(())
    }

    /// Called before the terminal is put back, so that a SIGCONT from then on does not
    /// hide input again.
    pub(super) fn stand_down() {
        HIDDEN.store(false, SeqCst);
    }

    /// Reinstates the previous dispositions; called after the terminal is put back.
    pub(super) fn disarm() {
        HIDDEN.store(false, SeqCst);
        // SAFETY: SHARED.previous holds what arm found; sigaction with valid signals only
        // fails for SIGKILL and SIGSTOP, which are not among them.
        unsafe {
            for (signal, previous) in HANDLED.iter().zip((*SHARED.previous.get()).iter()) {
                libc::sigaction(*signal, previous, ptr::null_mut());
            }
        }
        TTY.store(-1, SeqCst);
    }

    /// The settings as the C library takes them. nix's own conversion returns a copy that
    /// does not see changes made through the public fields, so those are copied over.
    fn raw(settings: &Termios) -> libc::termios {
        let mut raw: libc::termios = settings.clone().into();
        raw.c_iflag = settings.input_flags.bits();
        raw.c_oflag = settings.output_flags.bits();
        raw.c_cflag = settings.control_flags.bits();
        raw.c_lflag = settings.local_flags.bits();
        raw.c_cc = settings.control_chars;
        raw.c_line = settings.line_discipline;
        raw
    }

    pub(super) fn interrupted() -> bool {
        INTERRUPTED.load(SeqCst)
    }

    fn check(result: libc::c_int) -> io::Result<()> {
        if result == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Only async-signal-safe calls: tcflush, tcsetattr, sigaction, raise.
    extern "C" fn on_ending_signal(signal: libc::c_int) {
        HIDDEN.store(false, SeqCst);
        INTERRUPTED.store(true, SeqCst);
        let tty = TTY.load(SeqCst);
        // SAFETY: SHARED was written before this handler was installed.
        unsafe {
            if tty >= 0 {
                // Half a passphrase still queued must not be read by the shell.
                libc::tcflush(tty, libc::TCIFLUSH);
                libc::tcsetattr(tty, libc::TCSANOW, SHARED.saved.get());
            }
            if let Some(index) = HANDLED.iter().position(|s| *s == signal) {
                libc::sigaction(signal, &(*SHARED.previous.get())[index], ptr::null_mut());
            }
            // Blocked until this handler returns, then delivered under the previous
            // disposition: by default, the process ends as it would have without us.
            libc::raise(signal);
        }
    }

    extern "C" fn on_continue(_signal: libc::c_int) {
        let tty = TTY.load(SeqCst);
        if tty >= 0 && HIDDEN.load(SeqCst) {
            // SAFETY: as above.
            unsafe {
                libc::tcsetattr(tty, libc::TCSANOW, SHARED.hidden.get());
            }
        }
    }
}

/// The options that name a descriptor to read a passphrase from.
const FD_OPTIONS: [&str; 2] = ["--passphrase-fd", "--new-passphrase-fd"];

/// Refuses a descriptor named on the command line (`--passphrase-fd N`,
/// `--new-passphrase-fd N`) that is not open when keepsake starts. Checked before keepsake
/// opens anything: a closed number would later be that of a file keepsake opened itself
/// (a container file, its loop device), and the passphrase would be read from that.
pub fn require_open_fds(args: &[std::ffi::OsString]) -> Result<()> {
    for fd in named_fds(args) {
        // SAFETY: F_GETFD only asks whether the number is an open descriptor.
        if fd >= 0 && unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
            return Err(Error::FdNotOpen(fd));
        }
    }
    Ok(())
}

/// The numbers given to [`FD_OPTIONS`] (`--opt N` or `--opt=N`), up to a lone `--`.
fn named_fds(args: &[std::ffi::OsString]) -> Vec<RawFd> {
    let mut fds = Vec::new();
    let mut args = args.iter().filter_map(|a| a.to_str());
    while let Some(arg) = args.next() {
        if arg == "--" {
            break;
        }
        for option in FD_OPTIONS {
            let value = if arg == option {
                args.next()
            } else {
                arg.strip_prefix(option).and_then(|v| v.strip_prefix('='))
            };
            if let Some(fd) = value.and_then(|v| v.parse().ok()) {
                fds.push(fd);
            }
        }
    }
    fds
}

/// Reads up to the first newline from `fd`, one byte at a time so that nothing after the
/// line is consumed, into a buffer allocated once at the maximum size.
fn read_line_from_fd(fd: RawFd) -> Result<Secret> {
    if fd < 0 {
        return Err(Error::NotAnFd(fd));
    }
    // SAFETY: the descriptor was handed to us by the caller for this purpose; ManuallyDrop
    // keeps it open afterwards, as the caller may still own it.
    let mut file = std::mem::ManuallyDrop::new(unsafe { File::from_raw_fd(fd) });
    let mut buf = Zeroizing::new(vec![0u8; MAX_PASSPHRASE + 1]);
    let mut len = 0;
    loop {
        // A writer that never writes must not make keepsake deaf to a stop signal.
        match crate::interrupt::interruptible(|| file.read(&mut buf[len..len + 1])) {
            Ok(0) => break,
            Err(e)
                if e.kind() == io::ErrorKind::Interrupted
                    && crate::interrupt::received().is_some() =>
            {
                return Err(Error::Cancelled("passphrase".into()));
            }
            Ok(_) if buf[len] == b'\n' => break,
            Ok(_) => {
                len += 1;
                if len > MAX_PASSPHRASE {
                    return Err(Error::FdTooLong(fd));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == Some(libc::EBADF) => {
                return Err(Error::FdNotOpen(fd));
            }
            Err(e) => {
                return Err(e)
                    .context(|| format!("reading the passphrase from fd {fd}"))
                    .map_err(Error::from);
            }
        }
    }
    buf.truncate(len);
    Ok(Secret(buf))
}

fn read_key_file(path: &Path) -> Result<Secret> {
    let mut file = File::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => Error::KeyFileMissing(path.to_path_buf()),
        _ => Error::Io(IoError::new(
            format!("opening key file {}", path.display()),
            e,
        )),
    })?;
    let meta = file.metadata().context(at("reading", path))?;
    if !meta.is_file() {
        return Err(Error::KeyFileNotRegular(path.to_path_buf()));
    }
    if meta.size() > MAX_KEY_FILE {
        return Err(Error::KeyFileTooLarge(path.to_path_buf()));
    }
    // One allocation at the final size; a file that grows meanwhile is cut at that size.
    let size = meta.size() as usize;
    let mut buf = Zeroizing::new(vec![0u8; size]);
    let mut len = 0;
    while len < size {
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(e)
                    .context(at("reading key file", path))
                    .map_err(Error::from);
            }
        }
    }
    buf.truncate(len);
    Ok(Secret(buf))
}

/// What [`harden_process`] achieved; reported, and tested in the VM.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub(crate) struct Hardening {
    pub dumpable_off: bool,
    pub core_limit_zero: bool,
    pub memory_locked: bool,
    pub warnings: Vec<String>,
}

/// Makes the process unfit to leak secrets: no core dumps, no ptrace attachment by
/// unprivileged processes, and no page of it swapped out. Called before any secret is read.
/// Core dumps and ptrace are hard requirements; memory locking falls back with a warning
/// (some containers forbid it), since swap itself is refused by the preflight.
pub(crate) fn harden_process() -> Result<Hardening> {
    let mut report = Hardening::default();
    nix::sys::prctl::set_dumpable(false)
        .context(|| "disabling core dumps and ptrace (PR_SET_DUMPABLE)".into())?;
    report.dumpable_off = true;
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0)
        .context(|| "setting RLIMIT_CORE to 0".into())?;
    report.core_limit_zero = true;
    match lock_all_memory() {
        Ok(()) => report.memory_locked = true,
        Err(e) => report.warnings.push(format!(
            "could not lock memory (mlockall: {e}); secrets could reach swap if any is active"
        )),
    }
    Ok(report)
}

/// Every page of the process, present and future, locked in RAM as it is first touched
/// (MCL_ONFAULT): a page that never holds anything (most of the binary's text, unused
/// stack and heap) is never faulted in just to be locked, which cost tens of ms per
/// command under emulation; a page that holds a secret is locked before the secret is
/// written to it. Kernels before 4.4 do not know MCL_ONFAULT (EINVAL): they lock all.
fn lock_all_memory() -> nix::Result<()> {
    let all = libc::MCL_CURRENT | libc::MCL_FUTURE;
    // SAFETY: mlockall takes flags only and touches no memory of ours.
    let rc = unsafe { libc::mlockall(all | libc::MCL_ONFAULT) };
    if rc == 0 {
        return Ok(());
    }
    match nix::errno::Errno::last() {
        nix::errno::Errno::EINVAL => {
            // SAFETY: as above.
            nix::errno::Errno::result(unsafe { libc::mlockall(all) }).map(drop)
        }
        e => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    fn pipe_with(content: &[u8]) -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
        let (r, w) = nix::unistd::pipe().unwrap();
        let mut wf = File::from(w.try_clone().unwrap());
        wf.write_all(content).unwrap();
        drop(wf);
        (r, w)
    }

    #[test]
    fn descriptors_named_for_passphrases_must_be_open_at_start() {
        let args = |v: &[&str]| v.iter().map(std::ffi::OsString::from).collect::<Vec<_>>();
        assert_eq!(
            named_fds(&args(&[
                "keepsake",
                "passphrase",
                "change",
                "--passphrase-fd",
                "3",
                "--new-passphrase-fd=4",
                "--key-file",
                "x",
                "--",
                "--passphrase-fd",
                "9"
            ])),
            vec![3, 4]
        );
        // 0 is open in any test process; a high number is not.
        assert!(require_open_fds(&args(&["keepsake", "unlock", "--passphrase-fd", "0"])).is_ok());
        let err = require_open_fds(&args(&["keepsake", "unlock", "--passphrase-fd", "9999"]));
        assert!(matches!(err, Err(Error::FdNotOpen(9999))), "{err:?}");
    }

    #[test]
    fn fd_reads_one_line_and_leaves_the_rest() {
        let (r, w) = pipe_with(b"correct horse\nsecond line\n");
        drop(w);
        let s = read_secret(&SecretSource::Fd(r.as_raw_fd()), "Passphrase", false).unwrap();
        assert_eq!(s.as_bytes(), b"correct horse");
        let mut rest = String::new();
        File::from(r).read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "second line\n");
    }

    #[test]
    fn fd_without_newline_reads_to_eof() {
        let (r, w) = pipe_with(b"no newline");
        drop(w);
        let s = read_secret(&SecretSource::Fd(r.as_raw_fd()), "Passphrase", false).unwrap();
        assert_eq!(s.as_bytes(), b"no newline");
    }

    #[test]
    fn empty_passphrase_is_a_usage_error() {
        let (r, w) = pipe_with(b"\n");
        drop(w);
        let err = read_secret(&SecretSource::Fd(r.as_raw_fd()), "Passphrase", false).unwrap_err();
        assert!(matches!(err, Error::Empty(_)), "{err}");
    }

    #[test]
    fn overlong_passphrase_is_refused() {
        let (r, w) = pipe_with(&vec![b'a'; MAX_PASSPHRASE + 10]);
        drop(w);
        let err = read_secret(&SecretSource::Fd(r.as_raw_fd()), "Passphrase", false).unwrap_err();
        assert!(err.to_string().contains("longer than"), "{err}");
    }

    #[test]
    fn closed_fd_is_a_usage_error() {
        let err = read_secret(&SecretSource::Fd(9999), "Passphrase", false).unwrap_err();
        assert!(matches!(err, Error::FdNotOpen(9999)), "{err}");
    }

    #[test]
    fn key_file_is_read_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, b"bin\0ary\nkey\n").unwrap();
        let s = read_secret(&SecretSource::KeyFile(path), "Key", false).unwrap();
        assert_eq!(s.as_bytes(), b"bin\0ary\nkey\n");
    }

    #[test]
    fn missing_key_file_is_not_found() {
        let err = read_secret(
            &SecretSource::KeyFile("/nonexistent/key".into()),
            "Key",
            false,
        )
        .unwrap_err();
        assert!(matches!(err, Error::KeyFileMissing(_)), "{err}");
    }

    /// The keys `stty sane` sets on Linux, and a UTF-8 terminal.
    fn sane_keys() -> EditingKeys {
        EditingKeys {
            erase: 0x7f,
            word_erase: 0x17,
            kill: 0x15,
            end_of_file: 0x04,
            interrupt: 0x03,
            quit: 0x1c,
            suspend: 0x1a,
            literal_next: 0x16,
            utf8: true,
        }
    }

    /// Feeds `typed` to a line editor whose answer may be `max` bytes long, as the reader
    /// does; returns how the line ended and the answer.
    fn edit(typed: &[u8], max: usize) -> (LineEnd, Vec<u8>) {
        let mut buf = vec![0u8; max + 1];
        let mut line = LineEditor::new(sane_keys());
        for &byte in typed {
            buf[line.len] = byte;
            if let Some(end) = line.take(&mut buf) {
                let answer = match end {
                    LineEnd::Entered(len) => buf[..len].to_vec(),
                    _ => Vec::new(),
                };
                assert!(
                    buf[line.len..].iter().all(|b| *b == 0),
                    "keys and erased bytes are wiped from the buffer: {buf:?}"
                );
                return (end, answer);
            }
        }
        panic!("the line did not end: {typed:?}");
    }

    #[test]
    fn a_line_ends_at_enter_as_newline_or_carriage_return() {
        assert_eq!(edit(b"abc\n", 8), (LineEnd::Entered(3), b"abc".to_vec()));
        assert_eq!(edit(b"abc\r", 8), (LineEnd::Entered(3), b"abc".to_vec()));
        assert_eq!(edit(b"\r", 8), (LineEnd::Entered(0), Vec::new()));
    }

    #[test]
    fn erase_keys_edit_the_line_as_the_terminal_would() {
        assert_eq!(edit(b"abd\x7fc\n", 8).1, b"abc");
        assert_eq!(edit(b"\x7f\x7fab\n", 8).1, b"ab", "erase on an empty line");
        assert_eq!(
            edit("a\u{e9}\x7f\n".as_bytes(), 8).1,
            b"a",
            "one UTF-8 character"
        );
        assert_eq!(edit(b"wrong\x15right\n", 8).1, b"right", "kill");
        assert_eq!(edit(b"one two  \x17\n", 12).1, b"one ", "word erase");
        assert_eq!(
            edit(b"a-b_c\x17\n", 8).1,
            b"a-",
            "word erase stops at punctuation"
        );
    }

    #[test]
    fn literal_next_keeps_a_key_and_other_control_bytes_are_kept() {
        assert_eq!(edit(b"a\x16\x03b\n", 8).1, b"a\x03b");
        assert_eq!(
            edit(b"a\tb\x1b[A\n", 8).1,
            b"a\tb\x1b[A",
            "as cryptsetup keeps them"
        );
        assert_eq!(edit(b"a\x1ab\n", 8).1, b"ab", "suspend is ignored");
    }

    #[test]
    fn interrupt_quit_and_end_of_file_end_the_prompt() {
        assert_eq!(edit(b"secr\x03", 8).0, LineEnd::Cancelled);
        assert_eq!(edit(b"secr\x1c", 8).0, LineEnd::Cancelled);
        assert_eq!(edit(b"\x04", 8).0, LineEnd::EndOfInput);
        assert_eq!(
            edit(b"ab\x04c\n", 8).1,
            b"abc",
            "end of file after text is ignored"
        );
    }

    #[test]
    fn the_longest_answer_fits_and_one_byte_more_is_refused_at_enter() {
        assert_eq!(edit(b"abcd\n", 4), (LineEnd::Entered(4), b"abcd".to_vec()));
        assert_eq!(edit(b"abcd\x7fe\n", 4).1, b"abce");
        // Refused only at Enter, so nothing after the overflow is left for the shell.
        assert_eq!(edit(b"abcdefgh\x7f\x7f\x7f\x7f\n", 4).0, LineEnd::TooLong);
        assert_eq!(edit(b"abcdef\x03", 4).0, LineEnd::Cancelled);
    }

    /// Set in the child process of the signal test: the pty it asks on.
    const CHILD_TTY: &str = "KEEPSAKE_TEST_SIGNAL_TTY";

    fn echo_on(tty: &std::os::fd::OwnedFd) -> bool {
        termios::tcgetattr(tty)
            .unwrap()
            .local_flags
            .contains(LocalFlags::ECHO)
    }

    fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "timed out: {what}");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Kills the child if the test fails before it is reaped.
    struct KillOnDrop(Option<std::process::Child>);

    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            if let Some(mut child) = self.0.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    #[test]
    fn a_signal_at_the_prompt_puts_the_terminal_back() {
        use nix::sys::signal::{Signal, kill};
        use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
        if let Some(path) = std::env::var_os(CHILD_TTY) {
            // The child: ask, and be stopped, continued and killed while asking.
            let tty = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .unwrap();
            let _ = ask_on_terminal(tty.as_fd(), "Passphrase", false);
            std::process::exit(0);
        }
        let pty = nix::pty::openpty(None, None).unwrap();
        let before = termios::tcgetattr(&pty.slave).unwrap();
        assert!(echo_on(&pty.slave));
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "secrets::tests::a_signal_at_the_prompt_puts_the_terminal_back",
                "--test-threads=1",
            ])
            .env(CHILD_TTY, nix::unistd::ttyname(&pty.slave).unwrap())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let mut child = KillOnDrop(Some(child));
        wait_until("the child turns echo off", || !echo_on(&pty.slave));

        // While the job is stopped a shell puts its own settings back; on continue the
        // prompt must hide input again before reading on.
        kill(pid, Signal::SIGSTOP).unwrap();
        assert_eq!(
            waitpid(pid, Some(WaitPidFlag::WUNTRACED)).unwrap(),
            WaitStatus::Stopped(pid, Signal::SIGSTOP)
        );
        termios::tcsetattr(&pty.slave, SetArg::TCSANOW, &before).unwrap();
        kill(pid, Signal::SIGCONT).unwrap();
        wait_until("echo is off again after SIGCONT", || !echo_on(&pty.slave));

        kill(pid, Signal::SIGTERM).unwrap();
        let status = child.0.take().unwrap().wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGTERM),
            "the process still ends by the signal: {status}"
        );
        assert_eq!(
            termios::tcgetattr(&pty.slave).unwrap(),
            before,
            "the terminal's settings are back"
        );
    }

    #[test]
    fn a_deferred_signal_at_the_prompt_cancels_it_and_puts_the_terminal_back() {
        use nix::sys::signal::{Signal, kill};
        if let Some(path) = std::env::var_os(CHILD_TTY) {
            // The child: as a command that changes things, then ask, and be sent SIGHUP.
            crate::interrupt::defer_stop_signals().unwrap();
            let tty = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .unwrap();
            let outcome = ask_on_terminal(tty.as_fd(), "Passphrase", false).map(drop);
            let settled = crate::error::settle(
                outcome.map_err(crate::error::Error::from),
                crate::interrupt::received(),
            );
            std::process::exit(settled.map_or_else(|e| e.exit_code() as i32, |()| 0));
        }
        let pty = nix::pty::openpty(None, None).unwrap();
        let before = termios::tcgetattr(&pty.slave).unwrap();
        let mut command = std::process::Command::new(std::env::current_exe().unwrap());
        command
            .args([
                "--exact",
                "secrets::tests::a_deferred_signal_at_the_prompt_cancels_it_and_puts_the_terminal_back",
                "--test-threads=1",
            ])
            .env(CHILD_TTY, nix::unistd::ttyname(&pty.slave).unwrap())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null());
        // The child plays a command whose terminal closes: SIGHUP at its default, even when
        // the tests themselves run under nohup (keepsake keeps a signal its caller ignored
        // ignored, and the child would wait at the prompt for good).
        use std::os::unix::process::CommandExt;
        // SAFETY: only signal(2), async-signal-safe, between fork and exec.
        unsafe {
            command.pre_exec(|| {
                libc::signal(libc::SIGHUP, libc::SIG_DFL);
                Ok(())
            });
        }
        let child = command.spawn().unwrap();
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let mut child = KillOnDrop(Some(child));
        wait_until("the child turns echo off", || !echo_on(&pty.slave));
        kill(pid, Signal::SIGHUP).unwrap();
        let status = child.0.take().unwrap().wait().unwrap();
        assert_eq!(status.code(), Some(129), "128 + SIGHUP: {status}");
        assert_eq!(
            termios::tcgetattr(&pty.slave).unwrap(),
            before,
            "the terminal's settings are back"
        );
    }

    /// Scripts tell failures apart by exit code: each case keeps the code it had before
    /// secrets had their own error type.
    #[test]
    fn each_failure_to_read_a_secret_keeps_its_exit_code() {
        use crate::error::ExitCode;
        let code = |e: Error| crate::error::Error::from(e).exit_code();
        for usage in [
            Error::Empty("passphrase".into()),
            Error::NoTerminal,
            Error::Mismatch,
            Error::Cancelled("passphrase".into()),
            Error::InputEnded("passphrase".into()),
            Error::TypedTooLong("passphrase".into()),
            Error::NotAnFd(-1),
            Error::FdNotOpen(9),
            Error::FdTooLong(9),
            Error::KeyFileNotRegular("k".into()),
            Error::KeyFileTooLarge("k".into()),
        ] {
            let shown = usage.to_string();
            assert_eq!(code(usage), ExitCode::Usage, "{shown}");
        }
        assert_eq!(code(Error::KeyFileMissing("k".into())), ExitCode::NotFound);
        assert_eq!(code(Error::EchoStuck), ExitCode::Internal);
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let s = Secret(Zeroizing::new(b"hunter2".to_vec()));
        let shown = format!("{s:?}");
        assert!(!shown.contains("hunter2"));
        assert!(shown.contains("7 bytes"));
    }

    #[test]
    fn equality_compares_content_and_length() {
        let a = Secret(Zeroizing::new(b"abc".to_vec()));
        assert!(a == Secret(Zeroizing::new(b"abc".to_vec())));
        assert!(a != Secret(Zeroizing::new(b"abd".to_vec())));
        assert!(a != Secret(Zeroizing::new(b"abcd".to_vec())));
    }
}
