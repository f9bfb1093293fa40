//! What can go wrong in the session layer (activating, deactivating, locking, tor), by
//! meaning. The exit code each meaning gets is chosen in one place: `crate::error`.

use crate::context::IoError;

/// An error of the session layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Something stands where a feature needs to put something else (a folder where the
    /// volume has a file), or was changed by someone else meanwhile.
    #[error("{0}")]
    InTheWay(String),
    /// Files or mounts of the volume are in use: by processes, or by a mount namespace.
    #[error("{0}")]
    InUse(String),
    /// A strict feature's source folder has another owner or mode than the feature needs.
    #[error("{0}")]
    WrongOwner(String),
    /// A source someone other than root could change would be bound over a system path
    /// (see `features::SourceGuard`), or a folder overlayfs takes by path could be swapped.
    #[error("{0}")]
    UntrustedSource(String),
    /// A file feature whose path names no file.
    #[error("{0}")]
    NotAFile(String),
    /// No volume is unlocked, or none that the options name.
    #[error("{0}")]
    NotUnlocked(String),
    /// No feature of that name.
    #[error("{0}")]
    NoSuchFeature(String),
    /// A feature name or definition that cannot be used as given.
    #[error("{0}")]
    BadFeature(String),
    /// The change did not take effect (in full): what was done is undone, or the report
    /// says what is left.
    #[error("{0}")]
    NotApplied(String),
    /// The running system's root is a union on the volume: it cannot be locked.
    #[error("{0}")]
    RootOnVolume(String),
    /// `lock` ran, but these are still there.
    #[error("{0}")]
    Leftovers(String),
    /// The system's tor did not start again on its state; it is left stopped.
    #[error("{0}")]
    TorDidNotStart(String),
    /// The system's tor did not stop.
    #[error("{0}")]
    TorDidNotStop(String),
    /// The system torrc is one keepsake will not start tor with.
    #[error("{0}")]
    UntrustedTorrc(String),
    /// Something the session relies on failed unexpectedly (systemd, serialisation).
    #[error("{0}")]
    Unexpected(String),
    #[error(transparent)]
    Io(#[from] IoError),
    /// The filesystem-handle layer's own error, as it is.
    #[error(transparent)]
    Fs(#[from] crate::safefs::Error),
    /// The host layer's (mounts, processes, devices), as it is.
    #[error(transparent)]
    Host(#[from] crate::host::Error),
    /// The feature catalogue's (an account a feature needs), as it is.
    #[error(transparent)]
    Feature(#[from] crate::persistence::features::Error),
    /// The volume layer's (closing the mapping), as it is.
    #[error(transparent)]
    Volume(#[from] crate::volume::Error),
    /// Several volumes are unlocked and nothing says which one is meant.
    #[error("{0}")]
    Ambiguous(String),
    /// The volume's config files', as it is.
    #[error(transparent)]
    Config(#[from] crate::persistence::files::Error),
    /// Finishing a backup to this volume that was stopped half way, as it is.
    #[error(transparent)]
    Mirror(#[from] crate::mirror::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// This error with `note` added, of the same meaning.
    pub fn with_note(self, note: &str) -> Error {
        let add = |m: String| format!("{m}; {note}");
        match self {
            Error::InTheWay(m) => Error::InTheWay(add(m)),
            Error::InUse(m) => Error::InUse(add(m)),
            Error::WrongOwner(m) => Error::WrongOwner(add(m)),
            Error::UntrustedSource(m) => Error::UntrustedSource(add(m)),
            Error::NotAFile(m) => Error::NotAFile(add(m)),
            Error::NotUnlocked(m) => Error::NotUnlocked(add(m)),
            Error::NoSuchFeature(m) => Error::NoSuchFeature(add(m)),
            Error::BadFeature(m) => Error::BadFeature(add(m)),
            Error::NotApplied(m) => Error::NotApplied(add(m)),
            Error::RootOnVolume(m) => Error::RootOnVolume(add(m)),
            Error::Leftovers(m) => Error::Leftovers(add(m)),
            Error::TorDidNotStart(m) => Error::TorDidNotStart(add(m)),
            Error::TorDidNotStop(m) => Error::TorDidNotStop(add(m)),
            Error::UntrustedTorrc(m) => Error::UntrustedTorrc(add(m)),
            Error::Unexpected(m) => Error::Unexpected(add(m)),
            Error::Io(e) => Error::Io(e.with_note(note)),
            Error::Fs(e) => Error::Fs(e.with_note(note)),
            Error::Host(e) => Error::Host(e.with_note(note)),
            e @ Error::Feature(_) => e,
            Error::Config(e) => Error::Config(e.with_note(note)),
            Error::Volume(e) => Error::Volume(e.with_note(note)),
            Error::Ambiguous(m) => Error::Ambiguous(add(m)),
            Error::Mirror(e) => Error::Mirror(e.with_note(note)),
        }
    }

    /// Whether something holds the volume (or a folder of it) busy: then `lock` names the
    /// processes that do.
    pub fn is_in_use(&self) -> bool {
        use crate::host::Error as Host;
        use crate::volume::Error as Volume;
        match self {
            Error::InUse(_)
            | Error::Host(Host::InUse(_))
            | Error::Volume(Volume::MappingExists(_) | Volume::RecoveryKeyExists) => true,
            Error::Io(e) | Error::Volume(Volume::Io(e)) | Error::Host(Host::Io(e)) => e.is_busy(),
            Error::Volume(Volume::Library { errno, .. }) => crate::context::busy_errno(*errno),
            Error::Fs(e) | Error::Host(Host::Fs(e)) => fs_in_use(e),
            _ => false,
        }
    }
}

/// Whether a filesystem-handle error says something holds the path: changed or mounted
/// meanwhile, or busy.
fn fs_in_use(e: &crate::safefs::Error) -> bool {
    match e {
        crate::safefs::Error::Changed(_) | crate::safefs::Error::Mounted(_) => true,
        crate::safefs::Error::Io(e) => e.is_busy(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ExitCode;

    fn code(e: Error) -> u8 {
        crate::error::Error::from(e).exit_code() as u8
    }

    #[test]
    fn exit_codes_follow_the_meaning_and_keep_the_old_ones() {
        let m = || String::from("m");
        // Unchanged from before the session had its own type.
        assert_eq!(code(Error::InTheWay(m())), ExitCode::Busy as u8);
        assert_eq!(code(Error::InUse(m())), 5);
        assert_eq!(code(Error::WrongOwner(m())), 7);
        assert_eq!(code(Error::UntrustedSource(m())), 8);
        assert_eq!(code(Error::NotAFile(m())), 2);
        assert_eq!(code(Error::NotUnlocked(m())), 4);
        assert_eq!(code(Error::NotApplied(m())), 9);
        assert_eq!(code(Error::RootOnVolume(m())), 10);
        assert_eq!(code(Error::UntrustedTorrc(m())), 6);
        assert_eq!(code(Error::TorDidNotStop(m())), 5);
        // A tor that does not start is no damage to the volume (it was 7, corrupt).
        assert_eq!(code(Error::TorDidNotStart(m())), 1);
        // A layer below keeps its own class, and a note keeps the class.
        let below = Error::from(crate::safefs::Error::NotFound(m())).with_note("n");
        assert_eq!(below.to_string(), "m; n");
        assert_eq!(code(below), 4);
        let io = Error::from(IoError::new(
            "x",
            std::io::Error::from_raw_os_error(libc::EBUSY),
        ));
        assert!(io.is_in_use());
        // A volume error is "in use" exactly when its exit class is busy.
        for (volume, busy) in [
            (crate::volume::Error::MappingExists("m".into()), true),
            (crate::volume::Error::NoRecoveryKey, false),
            (
                crate::volume::Error::Library {
                    context: "x".into(),
                    errno: Some(libc::EEXIST),
                    message: "y".into(),
                },
                true,
            ),
        ] {
            let shown = format!("{volume:?}");
            let e = Error::from(volume);
            assert_eq!(e.is_in_use(), busy, "{shown}");
            assert_eq!(code(e) == ExitCode::Busy as u8, busy, "{shown}");
        }
        assert_eq!(code(io), 5);
    }
}
