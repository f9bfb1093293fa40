//! I/O failures that say what was being done, and to which path: the one piece of error
//! plumbing every layer shares. Each layer has its own error type (`volume::Error`,
//! `archive::Error`, …) with an `Io` case made from an [`IoError`], and the top
//! [`crate::error::Error`] converts all of them; nothing here knows about any layer.

use std::io;
use std::path::Path;

/// An I/O error and what was being done when it happened.
#[derive(Debug, thiserror::Error)]
#[error("{}", self.message())]
pub struct IoError {
    /// What was being done, e.g. "open /run/keepsake/record".
    pub context: String,
    #[source]
    pub source: io::Error,
    /// Made by [`io_at`] for a path that does not exist: then `context` alone is the
    /// message ("PATH does not exist").
    missing: bool,
}

impl IoError {
    pub fn new(context: impl Into<String>, source: io::Error) -> IoError {
        IoError {
            context: context.into(),
            source,
            missing: false,
        }
    }

    /// The errno behind it, when there is one: what the exit code is chosen by.
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }

    /// Whether its errno says something holds what was being changed (see [`busy_errno`]).
    pub fn is_busy(&self) -> bool {
        busy_errno(self.errno())
    }

    /// This error with `note` added to what was being done.
    pub fn with_note(self, note: &str) -> IoError {
        IoError {
            context: format!("{} ({note})", self.context),
            ..self
        }
    }

    fn message(&self) -> String {
        if self.missing {
            self.context.clone()
        } else {
            format!("{}: {}", self.context, self.source)
        }
    }
}

/// The errnos of "in use": EBUSY, and EEXIST (a mount point or mapping still there).
pub fn busy_errno(errno: Option<i32>) -> bool {
    matches!(errno, Some(libc::EBUSY) | Some(libc::EEXIST))
}

/// Adds what was being done, and to which path, to an I/O error.
pub trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, IoError>;
}

impl<T> Context<T> for io::Result<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, IoError> {
        self.map_err(|source| IoError::new(what(), source))
    }
}

impl<T> Context<T> for nix::Result<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, IoError> {
        self.map_err(|errno| IoError::new(what(), io::Error::from(errno)))
    }
}

/// Maps an I/O error on `path`: a missing path says "PATH does not exist" (and is of the
/// not-found class by its errno), anything else has "VERB PATH" as its context.
pub fn io_at(verb: &str, path: &Path) -> impl FnOnce(io::Error) -> IoError {
    let shown = path.display().to_string();
    let context = format!("{verb} {shown}");
    move |source| match source.kind() {
        io::ErrorKind::NotFound => IoError {
            context: format!("{shown} does not exist"),
            source,
            missing: true,
        },
        _ => IoError::new(context, source),
    }
}

/// Shorthand for the common "verb PATH" context, formatted only when there is an error
/// (a backup or restore asks for it for every file).
pub fn at<'a>(verb: &'a str, path: &'a Path) -> impl FnOnce() -> String + 'a {
    move || format!("{verb} {}", path.display())
}
