//! The one error type of the library and its mapping to exit codes.
//!
//! Every failure a user can meet has a class, and each class has its own exit code so that
//! scripts can tell "wrong passphrase" from "device busy" without parsing messages.

use std::io;
use std::path::Path;

use libcryptsetup_rs::LibcryptErr;

pub use crate::context::{IoError, at};

/// Exit codes, one per failure class. Documented in `--help` and the man page from
/// [`EXIT_CODES_HELP`]; keep the two in step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    Success = 0,
    Internal = 1,
    Usage = 2,
    BadPassphrase = 3,
    NotFound = 4,
    Busy = 5,
    UnsafeHost = 6,
    Corrupt = 7,
    NotPermitted = 8,
    Incomplete = 9,
    RootOnVolume = 10,
}

impl ExitCode {
    /// A stable, machine-readable name for the class, used in `--json` errors.
    pub fn name(self) -> &'static str {
        match self {
            ExitCode::Success => "success",
            ExitCode::Internal => "internal",
            ExitCode::Usage => "usage",
            ExitCode::BadPassphrase => "bad-passphrase",
            ExitCode::NotFound => "not-found",
            ExitCode::Busy => "busy",
            ExitCode::UnsafeHost => "unsafe-host",
            ExitCode::Corrupt => "corrupt",
            ExitCode::NotPermitted => "not-permitted",
            ExitCode::Incomplete => "incomplete",
            ExitCode::RootOnVolume => "root-on-volume",
        }
    }
}

pub const EXIT_CODES_HELP: &str = "\
Exit status:
  0  success
  1  internal error (unexpected system or library failure)
  2  usage: bad arguments or input; nothing was changed
  3  wrong passphrase or key; nothing was changed
  4  not found: no such volume, device, file or feature
  5  busy: already unlocked, or files are held open
  6  unsafe host: a preflight check failed (see --help of the command), a key
     derivation needs more memory than this machine has available, or the kernel
     has no device-mapper or dm-crypt
  7  corrupt: header, filesystem or persistence.conf unreadable or invalid
  8  not permitted: not run as root, permission denied, or a symlink on a path
     keepsake works in refused
  9  incomplete: unlocked, but some features could not be activated
 10  root on the volume: the running system's root is a union on the volume (live-boot's
     full persistence, `/ union`); it cannot be locked while it runs; nothing was changed";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),
    #[error("the passphrase or key does not open any keyslot of {0}; nothing was changed")]
    BadPassphrase(String),
    /// A passphrase or key that does not fit something other than a keyslot (an archive).
    #[error("{0}")]
    WrongKey(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    UnsafeHost(String),
    #[error("{0}")]
    Corrupt(String),
    #[error("{0}")]
    NotPermitted(String),
    /// A feature whose source the live user could change would be bound over a system
    /// path: refused by policy (see `features::SourceGuard`).
    #[error("{0}")]
    UntrustedSource(String),
    #[error("{0}")]
    Incomplete(String),
    /// The running system's root filesystem writes into the volume (live-boot's `/ union`):
    /// locking it would pull the system out from under itself.
    #[error("{0}")]
    RootOnVolume(String),
    /// `check` found problems; its report, already printed, lists them.
    #[error("{0}")]
    CheckFailed(String),
    #[error(transparent)]
    Io(#[from] IoError),
    /// Handling files by handle (`crate::safefs`).
    #[error(transparent)]
    Fs(#[from] crate::safefs::Error),
    /// The host: devices, mounts, helper programs, preflight (`crate::host`).
    #[error(transparent)]
    Host(#[from] crate::host::Error),
    /// The feature catalogue (`crate::persistence::features`).
    #[error(transparent)]
    Feature(#[from] crate::persistence::features::Error),
    #[error("{context}: {message}")]
    Crypt {
        context: String,
        errno: Option<i32>,
        message: String,
    },
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Error::Usage(_) => ExitCode::Usage,
            Error::BadPassphrase(_) | Error::WrongKey(_) => ExitCode::BadPassphrase,
            Error::NotFound(_) => ExitCode::NotFound,
            Error::Busy(_) => ExitCode::Busy,
            Error::UnsafeHost(_) => ExitCode::UnsafeHost,
            Error::Corrupt(_) => ExitCode::Corrupt,
            Error::NotPermitted(_) | Error::UntrustedSource(_) => ExitCode::NotPermitted,
            Error::Incomplete(_) => ExitCode::Incomplete,
            Error::RootOnVolume(_) => ExitCode::RootOnVolume,
            Error::CheckFailed(_) => ExitCode::Corrupt,
            Error::Io(e) => errno_class(e.errno()),
            Error::Fs(e) => fs_class(e),
            Error::Host(e) => {
                use crate::host::Error as Host;
                match e {
                    Host::Unsafe(_) => ExitCode::UnsafeHost,
                    Host::NotFound(_) => ExitCode::NotFound,
                    Host::InUse(_) => ExitCode::Busy,
                    Host::Unusable(_) | Host::Ambiguous(_) => ExitCode::Usage,
                    Host::Damaged(_) => ExitCode::Corrupt,
                    Host::Failed(_) => ExitCode::Internal,
                    Host::Fs(e) => fs_class(e),
                    Host::Io(e) => errno_class(e.errno()),
                }
            }
            Error::Feature(e) => {
                use crate::persistence::features::Error as Feature;
                match e {
                    Feature::NoAccount(_) => ExitCode::NotFound,
                    Feature::Catalogue(_) => ExitCode::Internal,
                }
            }
            Error::Crypt { errno, .. } => errno_class(*errno),
            Error::Internal(_) => ExitCode::Internal,
        }
    }

    /// This error with `note` added, of the same class (so of the same exit code).
    pub fn with_note(self, note: &str) -> Error {
        let add = |m: String| format!("{m}; {note}");
        match self {
            Error::Io(e) => Error::Io(e.with_note(note)),
            Error::Fs(e) => Error::Fs(e.with_note(note)),
            Error::Host(e) => Error::Host(e.with_note(note)),
            // Its message names an account, not a step that could be undone.
            e @ Error::Feature(_) => e,
            Error::Crypt {
                context,
                errno,
                message,
            } => Error::Crypt {
                context: format!("{context} ({note})"),
                errno,
                message,
            },
            Error::Usage(m) => Error::Usage(add(m)),
            Error::WrongKey(m) => Error::WrongKey(add(m)),
            Error::NotFound(m) => Error::NotFound(add(m)),
            Error::Busy(m) => Error::Busy(add(m)),
            Error::UnsafeHost(m) => Error::UnsafeHost(add(m)),
            Error::Corrupt(m) => Error::Corrupt(add(m)),
            Error::NotPermitted(m) => Error::NotPermitted(add(m)),
            Error::UntrustedSource(m) => Error::UntrustedSource(add(m)),
            Error::Incomplete(m) => Error::Incomplete(add(m)),
            Error::RootOnVolume(m) => Error::RootOnVolume(add(m)),
            Error::CheckFailed(m) => Error::CheckFailed(add(m)),
            Error::Internal(m) => Error::Internal(add(m)),
            // Its message names a volume, not what happened; no restore step returns it.
            e @ Error::BadPassphrase(_) => e,
        }
    }

    /// Wraps a libcryptsetup error, keeping its errno for classification and adding the
    /// library's own last message when it has one.
    pub fn crypt(context: impl Into<String>, err: LibcryptErr) -> Error {
        let (errno, mut message) = match &err {
            LibcryptErr::IOError(e) => (e.raw_os_error(), e.to_string()),
            other => (None, other.to_string()),
        };
        if let Some(detail) = crate::volume::take_last_library_error() {
            message = format!("{message} ({detail})");
        }
        Error::Crypt {
            context: context.into(),
            errno,
            message,
        }
    }
}

fn fs_class(e: &crate::safefs::Error) -> ExitCode {
    use crate::safefs::Error as Fs;
    match e {
        // Refused on purpose, not a bad argument: a symlink there is somebody else's
        // choice of where root would write.
        Fs::Symlink(_) => ExitCode::NotPermitted,
        Fs::NotFound(_) => ExitCode::NotFound,
        Fs::Changed(_) | Fs::Mounted(_) => ExitCode::Busy,
        Fs::Invalid(_) => ExitCode::Corrupt,
        Fs::Unusable(_) => ExitCode::Usage,
        Fs::Internal(_) => ExitCode::Internal,
        Fs::Io(e) => errno_class(e.errno()),
    }
}

fn errno_class(errno: Option<i32>) -> ExitCode {
    match errno {
        Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::ENXIO) => ExitCode::NotFound,
        Some(libc::EBUSY) | Some(libc::EEXIST) => ExitCode::Busy,
        Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => ExitCode::NotPermitted,
        _ => ExitCode::Internal,
    }
}

/// Adds what was being done, and to which path, to an I/O error, as a top-level
/// [`Error`]; the layers below use [`crate::context::Context`], which makes an
/// [`IoError`] their own error types convert from.
pub trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, C: crate::context::Context<T>> Context<T> for C {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        Ok(crate::context::Context::context(self, what)?)
    }
}

/// Maps an I/O error on `path` (see [`crate::context::io_at`]) to a top-level [`Error`].
pub fn io_at(verb: &str, path: &Path) -> impl FnOnce(io::Error) -> Error {
    let map = crate::context::io_at(verb, path);
    move |source| Error::Io(map(source))
}
