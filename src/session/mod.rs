//! The unlocked session: the one lifecycle of a volume once it is open. Where to look:
//!
//! - [`plan`]: what to do, pure: which features to activate and in which order, whether
//!   one is active, what `lock` takes away.
//! - [`journal`]: one feature's activation, step by step, each change recorded and undone
//!   newest first when a later step fails; [`trust`]: the sources refused before that.
//! - [`lifecycle`]: the executor all commands use: activate (unlock, `feature enable`),
//!   deactivate all or nothing (`feature disable`), tear down and restore (`lock`).
//! - [`unlock`], [`lock`], [`features`], [`status`]: the session side of each command.
//! - [`unlocked`]: the open volume found again from the kernel's tables, and its config
//!   files; [`record`]: what keepsake notes at unlock; [`report`]: what it reports.
//! - [`tor`]: tor stopped and started again around its state folder ([`tor::TorPause`]).
//! - [`Error`]: what goes wrong here, by meaning; `crate::error` maps it to exit codes.

pub mod error;
pub(crate) mod features;
pub mod journal;
pub(crate) mod lifecycle;
pub(crate) mod lock;
pub(crate) mod plan;
pub(crate) mod record;
pub(crate) mod report;
pub(crate) mod status;
pub(crate) mod tor;
pub(crate) mod trust;
pub(crate) mod unlock;
pub(crate) mod unlocked;
pub(crate) mod watch;
pub mod wipe;

pub use error::{Error, Result};
