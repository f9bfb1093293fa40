//! What the session reports about its features: each one's state after activation or
//! as found, and the lines of persistence.conf that were skipped. Shared by unlock,
//! status and feature, and part of their JSON output.

use std::path::PathBuf;

use serde::Serialize;

use crate::persistence::config::{LineError, Method};
use crate::persistence::features::ResolvedEntry;

/// The state of one feature line after activation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FeatureState {
    Active,
    Inactive,
    Failed,
    Skipped,
    /// Its reader applies it at boot; keepsake does not in a running session (`/ union`).
    AtBoot,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FeatureReport {
    pub name: String,
    pub source: PathBuf,
    pub destination: PathBuf,
    pub method: Method,
    pub enabled: bool,
    pub active: bool,
    pub state: FeatureState,
    pub error: Option<String>,
}

impl FeatureReport {
    pub(crate) fn new(
        r: &ResolvedEntry,
        state: FeatureState,
        error: Option<String>,
    ) -> FeatureReport {
        FeatureReport {
            name: r.feature.clone(),
            source: r.entry.source.clone(),
            destination: r.entry.destination.clone(),
            method: r.entry.method,
            enabled: true,
            active: state == FeatureState::Active,
            state,
            error,
        }
    }
}

/// A line of persistence.conf that could not be read, and why.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigErrorReport {
    pub line: usize,
    pub reason: String,
}

impl From<&LineError> for ConfigErrorReport {
    fn from(e: &LineError) -> Self {
        ConfigErrorReport {
            line: e.line,
            reason: e.reason.clone(),
        }
    }
}
