//! The top error type and the one mapping of every failure to an exit code.
//!
//! Each layer (session, volume, secrets, archive, config files, safefs, host, the feature
//! catalogue) has its own error type saying what happened; the commands' own failures are
//! the plain variants here. Every failure a user can meet has a class, and each class its
//! own exit code, so that scripts can tell "wrong passphrase" from "device busy" without
//! parsing messages: [`Error::exit_code`] decides, by meaning, for all of them.

use crate::context::IoError;

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
    BrokenChain = 11,
    NoSpace = 12,
    /// Stopped by a signal (128 + its number), having rolled back or finished first.
    Hangup = 129,
    Interrupt = 130,
    Terminated = 143,
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
            ExitCode::BrokenChain => "broken-chain",
            ExitCode::NoSpace => "no-space",
            ExitCode::Hangup => "hangup",
            ExitCode::Interrupt => "interrupted",
            ExitCode::Terminated => "terminated",
        }
    }

    /// The exit status of a command stopped by the stop signal `signal`: 128 + its number,
    /// as a shell reports a process a signal ended.
    pub fn of_signal(signal: libc::c_int) -> ExitCode {
        match signal {
            libc::SIGHUP => ExitCode::Hangup,
            libc::SIGINT => ExitCode::Interrupt,
            libc::SIGTERM => ExitCode::Terminated,
            // Only the stop signals are caught (crate::interrupt::STOP_SIGNALS).
            _ => ExitCode::Internal,
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
     full persistence, `/ union`); it cannot be locked while it runs; nothing was changed
 11  broken chain: an incremental backup's earlier archives are not all beside it, or
     one there is not the archive it was made after; nothing was changed
 12  no space: the disk written to is full or what is written does not fit there, or a
     backup to a second stick would leave it too full to be finished once begun; the
     message says what it holds
 129, 130, 143  stopped by SIGHUP, SIGINT or SIGTERM (128 + the signal's number): the
     command first rolled back what it had begun (or, past its point of no return,
     finished it), so the next command finds a complete state";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    UnsafeHost(String),
    #[error("{0}")]
    NotPermitted(String),
    #[error("{0}")]
    Incomplete(String),
    /// `check` found problems; its report, already printed, lists them.
    #[error("{0}")]
    CheckFailed(String),
    #[error(transparent)]
    Io(#[from] IoError),
    #[error(transparent)]
    Session(#[from] crate::session::Error),
    #[error(transparent)]
    Volume(#[from] crate::volume::Error),
    #[error(transparent)]
    Secrets(#[from] crate::secrets::Error),
    #[error(transparent)]
    Archive(#[from] crate::archive::Error),
    /// A backup to a second volume (`crate::mirror`).
    #[error(transparent)]
    Mirror(#[from] crate::mirror::Error),
    /// The volume's config files (`crate::persistence::files`).
    #[error(transparent)]
    Config(#[from] crate::persistence::files::Error),
    /// Handling files by handle (`crate::safefs`).
    #[error(transparent)]
    Fs(#[from] crate::safefs::Error),
    /// The host: devices, mounts, helper programs, preflight (`crate::host`).
    #[error(transparent)]
    Host(#[from] crate::host::Error),
    /// The feature catalogue (`crate::persistence::features`).
    #[error(transparent)]
    Feature(#[from] crate::persistence::features::Error),
    #[error("{0}")]
    Internal(String),
    /// A stop signal arrived ([`crate::interrupt`]); `message` says what the command did
    /// about it (rolled back, or finished).
    #[error("{message}")]
    Interrupted {
        signal: libc::c_int,
        message: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Error::Usage(_) => ExitCode::Usage,
            Error::NotFound(_) => ExitCode::NotFound,
            Error::Busy(_) => ExitCode::Busy,
            Error::UnsafeHost(_) => ExitCode::UnsafeHost,
            Error::NotPermitted(_) => ExitCode::NotPermitted,
            Error::Incomplete(_) => ExitCode::Incomplete,
            Error::CheckFailed(_) => ExitCode::Corrupt,
            Error::Io(e) => errno_class(e.errno()),
            Error::Session(e) => session_class(e),
            Error::Volume(e) => volume_class(e),
            Error::Secrets(e) => secrets_class(e),
            Error::Archive(e) => archive_class(e),
            Error::Mirror(e) => mirror_class(e),
            Error::Config(e) => config_class(e),
            Error::Fs(e) => fs_class(e),
            Error::Host(e) => host_class(e),
            Error::Feature(e) => feature_class(e),
            Error::Internal(_) => ExitCode::Internal,
            Error::Interrupted { signal, .. } => ExitCode::of_signal(*signal),
        }
    }

    /// This error with `note` added, of the same class (so of the same exit code).
    pub fn with_note(self, note: &str) -> Error {
        let add = |m: String| format!("{m}; {note}");
        match self {
            Error::Io(e) => Error::Io(e.with_note(note)),
            Error::Session(e) => Error::Session(e.with_note(note)),
            Error::Volume(e) => Error::Volume(e.with_note(note)),
            // Secrets are read before anything changes: no undo step returns these.
            e @ Error::Secrets(_) => e,
            Error::Archive(e) => Error::Archive(e.with_note(note)),
            Error::Mirror(e) => Error::Mirror(e.with_note(note)),
            Error::Config(e) => Error::Config(e.with_note(note)),
            Error::Fs(e) => Error::Fs(e.with_note(note)),
            Error::Host(e) => Error::Host(e.with_note(note)),
            // Its message names an account, not a step that could be undone.
            e @ Error::Feature(_) => e,
            Error::Usage(m) => Error::Usage(add(m)),
            Error::NotFound(m) => Error::NotFound(add(m)),
            Error::Busy(m) => Error::Busy(add(m)),
            Error::UnsafeHost(m) => Error::UnsafeHost(add(m)),
            Error::NotPermitted(m) => Error::NotPermitted(add(m)),
            Error::Incomplete(m) => Error::Incomplete(add(m)),
            Error::CheckFailed(m) => Error::CheckFailed(add(m)),
            Error::Internal(m) => Error::Internal(add(m)),
            Error::Interrupted { signal, message } => Error::Interrupted {
                signal,
                message: add(message),
            },
        }
    }
}

/// A command's outcome once the stop signal it received, if any, is taken into account:
/// whatever the command did, a stop signal makes the exit status 128+N (see
/// [`crate::interrupt`]), and the message says what the command did before it stopped.
pub fn settle(outcome: Result<()>, signal: Option<libc::c_int>) -> Result<()> {
    let Some(signal) = signal else {
        return outcome;
    };
    let stopped = crate::interrupt::Interrupted(signal);
    match outcome {
        Ok(()) => Err(Error::Interrupted {
            signal,
            message: format!("{stopped} after the command had finished; it is complete"),
        }),
        Err(e) if e.exit_code() == ExitCode::of_signal(signal) => Err(e),
        // Stopped some other way (the prompt cancelled, a helper program killed by the
        // same Ctrl-C): rolled back as on any error, and the signal says why.
        Err(e) => Err(Error::Interrupted {
            signal,
            message: format!("{stopped}: {e}"),
        }),
    }
}

/// The exit status of a backup archive failure, by what happened.
pub(crate) fn archive_class(e: &crate::archive::Error) -> ExitCode {
    use crate::archive::Error as A;
    match e {
        A::WrongKey => ExitCode::BadPassphrase,
        A::NotAnArchive(_)
        | A::Unsupported(_)
        | A::HeaderOutOfBounds(_)
        | A::Tampered { .. }
        | A::Truncated
        | A::BadEntry(_) => ExitCode::Corrupt,
        A::Unaffordable(_) => ExitCode::UnsafeHost,
        A::BadParameters(_) | A::Refused(_) => ExitCode::Usage,
        A::Missing(_) => ExitCode::NotFound,
        A::BrokenChain(_) => ExitCode::BrokenChain,
        A::InTheWay(_) => ExitCode::Busy,
        A::Random(_) | A::Internal(_) => ExitCode::Internal,
        A::Interrupted { signal, .. } => ExitCode::of_signal(*signal),
        A::Io(e) => errno_class(e.errno()),
        A::Fs(e) => fs_class(e),
        A::Host(e) => host_class(e),
    }
}

fn mirror_class(e: &crate::mirror::Error) -> ExitCode {
    use crate::mirror::Error as M;
    match e {
        M::Interrupted { signal, .. } => ExitCode::of_signal(*signal),
        M::Internal(_) => ExitCode::Internal,
        M::NoSpace(_) => ExitCode::NoSpace,
        M::Io(e) => errno_class(e.errno()),
        M::Fs(e) => fs_class(e),
    }
}

fn session_class(e: &crate::session::Error) -> ExitCode {
    use crate::session::Error as S;
    match e {
        // Something is in the way, or in use: it can be moved or closed.
        S::InTheWay(_) | S::InUse(_) | S::TorDidNotStop(_) => ExitCode::Busy,
        // A strict source's owner or mode is not what the feature needs.
        S::WrongOwner(_) => ExitCode::Corrupt,
        S::UntrustedSource(_) => ExitCode::NotPermitted,
        S::NotAFile(_) | S::BadFeature(_) => ExitCode::Usage,
        S::NotUnlocked(_) | S::NoSuchFeature(_) => ExitCode::NotFound,
        S::NotApplied(_) => ExitCode::Incomplete,
        S::RootOnVolume(_) => ExitCode::RootOnVolume,
        S::UntrustedTorrc(_) => ExitCode::UnsafeHost,
        // tor not starting is no damage to the volume: an unexpected failure.
        S::TorDidNotStart(_) | S::Leftovers(_) | S::Unexpected(_) => ExitCode::Internal,
        S::Io(e) => errno_class(e.errno()),
        S::Fs(e) => fs_class(e),
        S::Host(e) => host_class(e),
        S::Feature(e) => feature_class(e),
        S::Config(e) => config_class(e),
        S::Volume(e) => volume_class(e),
        S::Mirror(e) => mirror_class(e),
        S::Ambiguous(_) => ExitCode::Usage,
    }
}

fn secrets_class(e: &crate::secrets::Error) -> ExitCode {
    use crate::secrets::Error as S;
    match e {
        S::Empty(_)
        | S::NoTerminal
        | S::Mismatch
        | S::Cancelled(_)
        | S::InputEnded(_)
        | S::TypedTooLong(_)
        | S::NotAnFd(_)
        | S::FdNotOpen(_)
        | S::FdTooLong(_)
        | S::KeyFileNotRegular(_)
        | S::KeyFileTooLarge(_) => ExitCode::Usage,
        S::KeyFileMissing(_) => ExitCode::NotFound,
        S::EchoStuck => ExitCode::Internal,
        S::Io(e) => errno_class(e.errno()),
    }
}

fn host_class(e: &crate::host::Error) -> ExitCode {
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

fn volume_class(e: &crate::volume::Error) -> ExitCode {
    use crate::volume::Error as V;
    match e {
        V::BadPassphrase(_) => ExitCode::BadPassphrase,
        V::NoLuksHeader(_) | V::UnvettedCipher { .. } => ExitCode::Corrupt,
        V::NotEnoughMemory(_) => ExitCode::UnsafeHost,
        V::MappingExists(_) | V::RecoveryKeyExists => ExitCode::Busy,
        V::NoRecoveryKey | V::NotFound(_) => ExitCode::NotFound,
        V::PassphraseNeeded(_) | V::NotARecoveryKey | V::BackupFileExists(_) => ExitCode::Usage,
        // The header is as it was: the failure itself was unexpected.
        V::UpgradeUndone(_) => ExitCode::Internal,
        // The header may be neither the old nor the new one.
        V::UpgradeNotUndone { .. } => ExitCode::Corrupt,
        V::StillLuks(_) => ExitCode::Internal,
        V::Library { errno, .. } => errno_class(*errno),
        V::Io(e) => errno_class(e.errno()),
    }
}

fn config_class(e: &crate::persistence::files::Error) -> ExitCode {
    use crate::persistence::files::Error as Config;
    match e {
        // Not read at all: as unusable as an unreadable one.
        Config::Refused(_) => ExitCode::Corrupt,
        Config::Fs(e) => fs_class(e),
        Config::Feature(e) => feature_class(e),
    }
}

fn feature_class(e: &crate::persistence::features::Error) -> ExitCode {
    use crate::persistence::features::Error as Feature;
    match e {
        Feature::NoAccount(_) => ExitCode::NotFound,
        Feature::Catalogue(_) => ExitCode::Internal,
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
        errno if crate::context::busy_errno(errno) => ExitCode::Busy,
        Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => ExitCode::NotPermitted,
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => ExitCode::NoSpace,
        _ => ExitCode::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_signal_exits_128_plus_its_number() {
        for (signal, code) in [
            (libc::SIGHUP, 129),
            (libc::SIGINT, 130),
            (libc::SIGTERM, 143),
        ] {
            assert_eq!(ExitCode::of_signal(signal) as i32, code);
            assert_eq!(code, 128 + signal);
        }
        assert_eq!(ExitCode::of_signal(libc::SIGKILL), ExitCode::Internal);
        assert!(EXIT_CODES_HELP.contains("129, 130, 143  stopped by SIGHUP, SIGINT or SIGTERM"));
    }

    #[test]
    fn a_stop_signal_decides_the_exit_status_and_the_message_says_what_was_done() {
        assert!(settle(Ok(()), None).is_ok());
        let busy = || Err(Error::Busy("held open".into()));
        assert_eq!(
            settle(busy(), None).unwrap_err().exit_code(),
            ExitCode::Busy
        );

        let finished = settle(Ok(()), Some(libc::SIGTERM)).unwrap_err();
        assert_eq!(finished.exit_code(), ExitCode::Terminated);
        assert_eq!(
            finished.to_string(),
            "interrupted by SIGTERM after the command had finished; it is complete"
        );
        let cancelled = settle(busy(), Some(libc::SIGHUP)).unwrap_err();
        assert_eq!(cancelled.exit_code(), ExitCode::Hangup);
        assert_eq!(cancelled.to_string(), "interrupted by SIGHUP: held open");
        // Stopped at a safe point: its own message already says so.
        let stopped: crate::archive::Error = crate::interrupt::Interrupted(libc::SIGINT).into();
        let stopped = Error::from(stopped.with_note("nothing was changed"));
        let kept = settle(Err(stopped), Some(libc::SIGINT)).unwrap_err();
        assert_eq!(kept.exit_code(), ExitCode::Interrupt);
        assert_eq!(
            kept.to_string(),
            "interrupted by SIGINT; nothing was changed"
        );
    }
}
