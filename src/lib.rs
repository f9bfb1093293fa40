//! keepsake: an encrypted, chosen memory for amnesic live systems.
//!
//! `main` parses the command line into [`cli::Cli`] and hands it to [`commands::run`];
//! everything else is library code, tested without root where it is pure logic and in the
//! loop-device VM (loopdev-tests/) where it needs dm-crypt.
//!
//! Where things live, one layer a folder, each using only the ones below it:
//! - [`commands`]: one thin file per command: options into a plain config, one call into
//!   the library, one report. [`cli`] defines the options; [`output`] prints.
//! - [`session`]: the volume once it is open: plan, the journal-based executor that
//!   unlock, `feature`, lock and every rollback use, the runtime record, tor's state, and
//!   the watcher that wipes the key when the stick is pulled (`session::watch`, `wipe`).
//! - [`archive`]: the backup format (header, STREAM, tree codec), extraction and restore.
//! - [`mirror`]: a second volume kept up to date with the unlocked one: what changed is
//!   staged on it, then put in place by a committed plan that the next opening finishes.
//! - `volume`: the LUKS2 volume through libcryptsetup: one `Volume` handle, its keyslots,
//!   KDF, header, upgrade; finding volumes (discovery) and recovery keys.
//! - [`host`]: the machine: block devices and GPT, mounts, processes (in every mount
//!   namespace), the kernel's device-mapper (its ioctls, `host::dm`) and device events
//!   (`host::uevent`), helper programs, the preflight safety checks, and who could have
//!   written a volume's bytes (`host::writers`).
//! - [`persistence`]: what a volume keeps: layouts, persistence.conf in each reader's
//!   dialect and its files on the volume, the feature catalogue.
//! - [`safefs`]: files by handle, never by a path someone else could change meanwhile.
//! - [`secrets`]: passphrases and keys, read into zeroizing memory.
//! - [`interrupt`]: SIGINT, SIGTERM and SIGHUP deferred to the next safe point.
//!
//! Each layer has its own error type, by meaning; [`error`] converts them all and maps
//! them to exit codes in one place; [`context`] is the I/O context they share.

// The library is the binary's inside, not an API: its module docs link to the private
// items they describe, which `cargo doc --document-private-items` shows.
#![allow(rustdoc::private_intra_doc_links)]

pub mod archive;
pub mod cli;
pub mod commands;
pub(crate) mod context;
pub mod error;
pub(crate) mod host;
pub mod interrupt;
pub mod mirror;
pub mod output;
pub mod persistence;
pub mod safefs;
pub mod secrets;
pub mod session;
pub(crate) mod volume;
