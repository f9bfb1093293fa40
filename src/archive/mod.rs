//! The encrypted backup archive, format versions 1 and 2; docs/backup-format.md is its
//! specification and this module its reference implementation.
//!
//! Two layers, usable apart. [`Writer`] and [`Reader`] turn any byte stream into an archive
//! and back: a plaintext header, then ChaCha20-Poly1305 in the STREAM construction under a
//! key derived with argon2id. A reader hands out a chunk's plaintext only after its tag
//! checked out, so truncation, reordering, appended data and any changed bit are caught
//! before anything unauthenticated is acted on. On top, a folder tree as that byte stream:
//! folders, regular files (sparse ones stay sparse) and symlinks, with modes, owners and
//! modification times; in format 2 (what keepsake writes) also hard links and extended
//! attributes (ACLs among them), listed before any data, and incremental archives whose
//! unchanged files are held by the earlier archives of their chain. Neither side follows a
//! symlink, and no archive can place anything outside the folder it is extracted into.
//!
//! The parts, one file each:
//! - `backup.rs`: a tree sealed into a full or incremental archive, the one call
//!   `keepsake backup` makes;
//! - `header.rs`: the plaintext header (and format 2's chain block) and the argon2id key
//!   derivation, with the caps that keep a forged header from costing a reader more than a
//!   refusal;
//! - `stream.rs`: STREAM, the chunked AEAD construction ([`Writer`], [`Reader`]), and
//!   `engine.rs`, the worker threads that seal and open its chunks in batches;
//! - `tree.rs`: format 1's entries, written from a folder tree and parsed back, every field
//!   checked;
//! - `listing.rs`: format 2's preamble, listing and data section, parsed and checked;
//! - `walk.rs`: format 2 written from a folder tree, a listing walk then a data pass,
//!   with `lookahead.rs` looking at the files of the listing on a second thread;
//! - `chain.rs`: format 2 read alone or as a chain found beside the newest archive;
//! - `extract.rs`: recreating parsed entries below an empty folder, on descriptors;
//! - `restore.rs`: staging an extracted archive in the volume and moving it (or single
//!   paths of it) into place as one transaction that is undone on any failure;
//! - `fuzz.rs`: the fuzz harness's one entry point;
//! - `oracle.rs` (tests only): the single-threaded writer and reader as they were.

mod backup;
mod chain;
mod engine;
mod extract;
mod fuzz;
mod header;
mod listing;
mod lookahead;
#[cfg(test)]
mod oracle;
pub(crate) mod restore;
mod stream;
#[cfg(test)]
mod testing;
mod tree;
mod walk;

// Public for the crate's tests, the fuzz target and examples/archive_bench.rs.
pub use engine::default_threads;
pub use fuzz::check_untrusted;
pub use header::{KdfParams, MAX_KDF_ITERATIONS, MAX_KDF_MEMORY_KIB};
pub use stream::{KeylessReader, PlainSink, Reader, Writer};
pub(crate) use tree::Step as BackupStep;
pub use tree::{TreeStats, read_tree, read_tree_on, write_tree};

pub use backup::back_up_folder;
pub(crate) use backup::{Kind as BackupKind, Parent, back_up};
pub(crate) use chain::{Chain, ReadRequest, open_listing, read_chain};
pub use chain::{ChainRead, Member};
pub(crate) use header::id_hex;
pub(crate) use listing::{Kind as ListedKind, Listed as ListedItem};

use crate::context::IoError;

/// Why an archive could not be written, read or restored. By meaning; the exit status of
/// each is chosen in `crate::error::Error::exit_code`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The passphrase or key does not authenticate the first chunk: a wrong passphrase (or
    /// an archive damaged from its first byte on, which cannot be told apart).
    #[error(
        "the passphrase or key does not decrypt this archive (or its beginning is damaged); nothing was changed"
    )]
    WrongKey,
    /// Not a keepsake archive at all: no magic, or shorter than a header.
    #[error("{0}")]
    NotAnArchive(String),
    /// A header of a format version, key derivation or layout this keepsake does not read.
    #[error("{0}")]
    Unsupported(String),
    /// A header asking for a key-derivation cost or chunk size beyond the hard caps: a
    /// forged header, refused before any work.
    #[error("{0}")]
    HeaderOutOfBounds(String),
    /// A chunk whose tag did not check out: the archive was changed, cut short at a chunk
    /// boundary, or chunks were dropped, swapped or appended.
    #[error("the archive was changed or truncated at chunk {chunk}")]
    Tampered { chunk: u64 },
    /// The authenticated plaintext ends inside an entry.
    #[error("the archive's contents end in the middle of an entry")]
    Truncated,
    /// An entry of the authenticated plaintext that is refused: unknown type, unsafe path,
    /// out of order, duplicated, bad extent list, mode or time, data after the end marker,
    /// or a parent that is not a folder the extraction created.
    #[error("{0}")]
    BadEntry(String),
    /// An incremental archive's earlier archives are not all there beside it, or one
    /// there is not the archive it was made after.
    #[error("{0}")]
    BrokenChain(String),
    /// The key derivation needs more memory than this machine has, or than this process
    /// can get.
    #[error("{0}")]
    Unaffordable(String),
    /// A key-derivation cost or chunk size for a new archive that no reader accepts.
    #[error("{0}")]
    BadParameters(String),
    /// What was asked to be archived or restored cannot be: a name not directly inside the
    /// root or given twice, a path or link target too long for the format, or a
    /// destination that is not empty.
    #[error("{0}")]
    Refused(String),
    /// A folder to archive, or to restore from the archive, is not there.
    #[error("{0}")]
    Missing(String),
    /// Something in the volume is in the way of a restore: folders that hold data (without
    /// --overwrite), a mount point inside a folder, or an entry the live user changed
    /// while the restore was moving it.
    #[error("{0}")]
    InTheWay(String),
    /// A stop signal arrived ([`crate::interrupt`]) and the work stopped at a safe point;
    /// the message says what was undone.
    #[error("{message}")]
    Interrupted {
        signal: libc::c_int,
        message: String,
    },
    /// The kernel's random generator failed.
    #[error("{0}")]
    Random(String),
    /// A failure that is a bug, or of a library that should not fail.
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Io(#[from] IoError),
    #[error(transparent)]
    Fs(#[from] crate::safefs::Error),
    #[error(transparent)]
    Host(#[from] crate::host::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<crate::interrupt::Interrupted> for Error {
    fn from(stopped: crate::interrupt::Interrupted) -> Error {
        Error::Interrupted {
            signal: stopped.0,
            message: stopped.to_string(),
        }
    }
}

impl Error {
    /// This error with `note` added, of the same meaning.
    pub fn with_note(self, note: &str) -> Error {
        let add = |m: String| format!("{m}; {note}");
        match self {
            Error::Io(e) => Error::Io(e.with_note(note)),
            Error::Fs(e) => Error::Fs(e.with_note(note)),
            Error::Host(e) => Error::Host(e.with_note(note)),
            // Found before anything changes: no step that is undone returns them.
            e @ (Error::WrongKey | Error::Tampered { .. } | Error::Truncated) => e,
            Error::NotAnArchive(m) => Error::NotAnArchive(add(m)),
            Error::Unsupported(m) => Error::Unsupported(add(m)),
            Error::HeaderOutOfBounds(m) => Error::HeaderOutOfBounds(add(m)),
            Error::BadEntry(m) => Error::BadEntry(add(m)),
            Error::Unaffordable(m) => Error::Unaffordable(add(m)),
            Error::BadParameters(m) => Error::BadParameters(add(m)),
            Error::Refused(m) => Error::Refused(add(m)),
            Error::Missing(m) => Error::Missing(add(m)),
            Error::BrokenChain(m) => Error::BrokenChain(add(m)),
            Error::InTheWay(m) => Error::InTheWay(add(m)),
            Error::Random(m) => Error::Random(add(m)),
            Error::Internal(m) => Error::Internal(add(m)),
            Error::Interrupted { signal, message } => Error::Interrupted {
                signal,
                message: add(message),
            },
        }
    }
}
