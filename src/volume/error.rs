//! What can go wrong with a volume, by what happened; `crate::error` maps each case to an
//! exit code. libcryptsetup's own last error message is captured here (its log is never
//! printed as it comes) and joined to the error that it explains.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::path::PathBuf;
use std::sync::Mutex;

use libcryptsetup_rs::LibcryptErr;

use crate::context::IoError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No keyslot opens with the passphrase or key given (libcryptsetup's EPERM). Holds
    /// the volume (or the volumes tried), as shown.
    #[error("the passphrase or key does not open any keyslot of {0}; nothing was changed")]
    BadPassphrase(String),
    /// The data segment does not encrypt, or not with a cipher keepsake trusts
    /// ([`super::cipher::unvetted`]): the volume, and why.
    #[error("{} {why}; it is not opened (nothing was changed)", .volume.display())]
    UnvettedCipher { volume: PathBuf, why: String },
    /// The file or device does not start with a LUKS header.
    #[error("{} has no LUKS header", .0.display())]
    NoLuksHeader(PathBuf),
    /// A key derivation needs more memory than this machine has (refused before, or
    /// failed with ENOMEM).
    #[error("{0}")]
    NotEnoughMemory(String),
    /// The mapping name is taken.
    /// A mapping of that name is open already (its name, and the kernel's name for it
    /// when known). Refused before anything is changed.
    #[error("a mapping named {0} exists already; nothing was changed")]
    MappingExists(String),
    /// No volume where one was looked for.
    #[error("{0}")]
    NotFound(String),
    /// The recovery key was given where the passphrase is needed.
    #[error("{0}")]
    PassphraseNeeded(String),
    #[error(
        "the volume has a recovery key already; remove it first (keepsake recovery-key remove)"
    )]
    RecoveryKeyExists,
    #[error("the volume has no recovery key")]
    NoRecoveryKey,
    /// What was typed as a recovery key cannot be one.
    #[error(
        "that is not a recovery key: it has 40 letters and digits 2-7, in eight groups of five"
    )]
    NotARecoveryKey,
    /// A header backup would overwrite an existing file.
    #[error(
        "{} exists already; choose a new file for the header backup; nothing was changed",
        .0.display()
    )]
    BackupFileExists(PathBuf),
    /// An upgrade step failed and the header was put back from its backup.
    #[error("{0}; the header was put back as it was, and the volume opens as before")]
    UpgradeUndone(Box<Error>),
    /// An upgrade step failed and putting the header back failed too.
    #[error(
        "{failed}; putting the header back failed too ({restore}): do not write to the volume, and keep the stick for recovery"
    )]
    UpgradeNotUndone {
        failed: Box<Error>,
        restore: Box<Error>,
    },
    /// The header area was overwritten, yet libcryptsetup still finds a header.
    #[error(
        "{} still reads as LUKS after the overwrite; its partition or file was left in place",
        .0.display()
    )]
    StillLuks(PathBuf),
    /// libcryptsetup failed: what was being done, its errno (what the exit code is chosen
    /// by) and its message.
    #[error("{context}: {message}")]
    Library {
        context: String,
        errno: Option<i32>,
        message: String,
    },
    #[error(transparent)]
    Io(#[from] IoError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps a libcryptsetup error, keeping its errno and adding the library's own last
    /// message when it has one.
    pub(crate) fn library(context: impl Into<String>, err: LibcryptErr) -> Error {
        let (errno, mut message) = match &err {
            LibcryptErr::IOError(e) => (e.raw_os_error(), e.to_string()),
            other => (None, other.to_string()),
        };
        if let Some(detail) = take_last_library_error() {
            message = format!("{message} ({detail})");
        }
        Error::Library {
            context: context.into(),
            errno,
            message,
        }
    }

    /// This error with `note` added to what was being done. Only the library's and I/O
    /// failures carry a "what was being done"; the other cases say what happened to the
    /// volume itself and are returned as they are.
    pub fn with_note(self, note: &str) -> Error {
        match self {
            Error::Library {
                context,
                errno,
                message,
            } => Error::Library {
                context: format!("{context} ({note})"),
                errno,
                message,
            },
            Error::Io(e) => Error::Io(e.with_note(note)),
            e => e,
        }
    }
}

/// The errno of a libcryptsetup failure, if it has one.
pub(crate) fn errno_of(err: &LibcryptErr) -> Option<i32> {
    match err {
        LibcryptErr::IOError(io) => io.raw_os_error(),
        _ => None,
    }
}

/// CRYPT_LOG_ERROR from libcryptsetup.h.
const CRYPT_LOG_ERROR: c_int = 1;

static LAST_LIBRARY_ERROR: Mutex<Option<String>> = Mutex::new(None);

extern "C" fn capture_log(level: c_int, msg: *const c_char, _usrptr: *mut c_void) {
    // Only errors are kept; libcryptsetup's informational lines are not for our users.
    if level != CRYPT_LOG_ERROR || msg.is_null() {
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

/// Routes libcryptsetup's log to [`take_last_library_error`]. Idempotent; called before
/// every libcryptsetup context is made.
pub(crate) fn capture_library_log() {
    libcryptsetup_rs::set_log_callback::<()>(Some(capture_log), None);
}

/// The last error message libcryptsetup logged, if any, clearing it.
pub(crate) fn take_last_library_error() -> Option<String> {
    LAST_LIBRARY_ERROR.lock().ok().and_then(|mut l| l.take())
}
