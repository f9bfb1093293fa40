//! keepsake: an encrypted, chosen memory for amnesic live systems.
//!
//! `main` parses the command line into [`cli::Cli`] and hands it to [`commands::run`];
//! everything else is library code, tested without root where it is pure logic and in the
//! loop-device VM (loopdev-tests/) where it needs dm-crypt.

pub mod archive;
pub mod binder;
pub mod cli;
pub mod commands;
pub mod config;
pub mod devices;
pub mod discovery;
pub mod disks;
pub mod error;
pub mod features;
pub mod kernel;
pub mod layout;
pub mod mounts;
pub mod output;
pub mod preflight;
pub mod processes;
pub mod recovery;
pub mod safefs;
pub mod secrets;
pub mod tools;
pub mod tor;
pub mod treewalk;
pub mod unlocked;
pub mod volume;
