//! The host machine as keepsake finds it: block devices and their partition tables, mounts,
//! processes, the kernel's device-mapper support, the helper programs it runs, the
//! safety checks made before any secret is read, and who could have written a volume.

pub mod devices;
pub mod disks;
pub mod dm;
pub mod kernel;
pub mod mounts;
pub mod preflight;
pub mod processes;
pub mod tools;
pub mod uevent;
pub mod writers;

use crate::context::IoError;

/// The kernel's tables as a command finds them when it starts: the mounts and the block
/// devices (with the device-mapper mappings among them). Read once per command and
/// handed down, so that no step reads them again (each read of sysfs or
/// /proc/self/mountinfo costs milliseconds on a slow live system); only a check made
/// after a change (lock's verify-gone) reads them afresh. Scenario 20 counts the reads.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub mounts: Vec<mounts::Mount>,
    /// Kernel names of every block device (`/sys/block`).
    pub block_devices: Vec<String>,
    pub mappings: Vec<devices::Mapping>,
}

impl Snapshot {
    pub fn read() -> Result<Snapshot> {
        let mounts = mounts::read_mountinfo()?;
        let block_devices = devices::block_devices();
        let mappings = devices::mappings_in(&block_devices);
        Ok(Snapshot {
            mounts,
            block_devices,
            mappings,
        })
    }

    /// The mapping called `name`, if the kernel had one.
    pub fn mapping(&self, name: &str) -> Option<&devices::Mapping> {
        self.mappings.iter().find(|m| m.name == name)
    }
}

/// What went wrong with the host, named by what happened (the exit code each gets is
/// chosen in `crate::error`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// This host is not safe for secrets or cannot do it safely: a preflight check
    /// failed, a key derivation needs more memory than is available, or the kernel has
    /// no device-mapper or dm-crypt.
    #[error("{0}")]
    Unsafe(String),
    /// A device, partition or helper program that is not there.
    #[error("{0}")]
    NotFound(String),
    /// A disk or mount point in use, or changed by someone else meanwhile.
    #[error("{0}")]
    InUse(String),
    /// A device or path given that cannot be used as it is (not a block device, no
    /// partition table, characters a mount option cannot carry).
    #[error("{0}")]
    Unusable(String),
    /// Several devices or files could be the volume: the user must name one.
    #[error("{0}")]
    Ambiguous(String),
    /// What a disk holds cannot be read as it must be: its partition table, or a
    /// filesystem with errors e2fsck cannot fix alone.
    #[error("{0}")]
    Damaged(String),
    /// A helper program failed, or the kernel did not do what it was asked; nothing in
    /// the user's input explains it.
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Fs(#[from] crate::safefs::Error),
    #[error(transparent)]
    Io(#[from] IoError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// This error with `note` added, of the same kind.
    pub fn with_note(self, note: &str) -> Error {
        let add = |m: String| format!("{m}; {note}");
        match self {
            Error::Unsafe(m) => Error::Unsafe(add(m)),
            Error::NotFound(m) => Error::NotFound(add(m)),
            Error::InUse(m) => Error::InUse(add(m)),
            Error::Unusable(m) => Error::Unusable(add(m)),
            Error::Ambiguous(m) => Error::Ambiguous(add(m)),
            Error::Damaged(m) => Error::Damaged(add(m)),
            Error::Failed(m) => Error::Failed(add(m)),
            Error::Fs(e) => Error::Fs(e.with_note(note)),
            Error::Io(e) => Error::Io(e.with_note(note)),
        }
    }
}

/// [`crate::context::Context`], made this layer's [`Error`].
pub(crate) trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, C: crate::context::Context<T>> Context<T> for C {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        Ok(crate::context::Context::context(self, what)?)
    }
}
