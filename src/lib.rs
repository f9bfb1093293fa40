//! keepsake: an encrypted, chosen memory for amnesic live systems.
//!
//! `main` parses the command line into [`cli::Cli`] and hands it to [`commands::run`];
//! everything else is library code, tested without root where it is pure logic and in the
//! loop-device VM (loopdev-tests/) where it needs dm-crypt.

pub mod archive;
pub mod cli;
pub mod commands;
pub mod context;
pub mod error;
pub mod host;
pub mod output;
pub mod persistence;
pub mod safefs;
pub mod secrets;
pub mod session;
pub(crate) mod volume;
