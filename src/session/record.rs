//! The runtime record: facts keepsake writes at unlock that the kernel does not keep
//! (which container file, which mapping, which features failed), in RAM under
//! /run/keepsake, root's 0600. Never secrets; never trusted for what the kernel knows.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::persistence::layout::{Layout, RUNTIME_DIR};
use crate::safefs::{self, Owner};
use crate::session::error::{Error, Result};

/// Facts recorded at unlock time that the kernel does not keep (never secrets).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    /// The container file or partition that was unlocked.
    pub backing: PathBuf,
    /// Its dm-crypt mapping name.
    #[serde(default)]
    pub mapping: String,
    /// Features that failed to activate, with why.
    #[serde(default)]
    pub failed: Vec<FailedFeature>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FailedFeature {
    pub source: PathBuf,
    pub error: String,
}

/// /run/keepsake, made root's 0700 if missing: where the record and the watchers' state
/// files live.
pub(crate) fn runtime_dir() -> std::result::Result<safefs::Dir, safefs::Error> {
    let (dir, _) = safefs::open_dir(Path::new(RUNTIME_DIR), Some(Owner::ROOT_0700))?;
    Ok(dir)
}

pub fn write_record(layout: &Layout, record: &Record) -> Result<()> {
    let dir = runtime_dir()?;
    let text = serde_json::to_vec_pretty(record).map_err(|e| Error::Unexpected(e.to_string()))?;
    let name = layout.runtime_record();
    let name = name
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("record.json");
    Ok(safefs::write_file_atomically(
        &dir,
        name,
        &text,
        Owner {
            uid: 0,
            gid: 0,
            mode: 0o600,
        },
    )?)
}

pub fn read_record(layout: &Layout) -> Option<Record> {
    let text = std::fs::read_to_string(layout.runtime_record()).ok()?;
    serde_json::from_str(&text).ok()
}

pub fn remove_record(layout: &Layout) {
    let _ = std::fs::remove_file(layout.runtime_record());
}
