//! Where things live: the names and paths of a persistence volume, per layout profile.

use std::path::{Path, PathBuf};

/// A layout profile: how the volume is named on disk and where it appears when unlocked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LayoutProfile {
    /// Tails Persistent Storage: partition and filesystem `TailsData`, unlocked as
    /// `TailsData_unlocked` and mounted at /live/persistence/TailsData_unlocked.
    Tails,
    /// Debian live-boot persistence: filesystem label `persistence`, mounted under
    /// /run/live/persistence.
    LiveBoot,
}

/// The resolved names and paths for one volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub profile: LayoutProfile,
    /// GPT partition name of a volume on a stick.
    pub partition_name: &'static str,
    /// ext4 filesystem label (also the LUKS2 header label).
    pub fs_label: &'static str,
    /// dm-crypt mapping name while unlocked.
    pub mapping: &'static str,
    /// Where the volume's filesystem is mounted while unlocked.
    pub mount_root: PathBuf,
}

/// The configuration file at the root of the volume.
pub const CONFIG_FILE: &str = "persistence.conf";
/// Definitions of custom features, enabled or not, in the same syntax (keepsake's own).
pub const CUSTOM_FEATURES_FILE: &str = "keepsake-features.conf";
/// Tails' GPT partition type for TailsData partitions.
pub const TAILS_PARTITION_TYPE: &str = "8DA63339-0007-60C0-C436-083AC8230908";
/// Where keepsake keeps runtime records (never secrets). Must be on tmpfs.
pub const RUNTIME_DIR: &str = "/run/keepsake";

impl Layout {
    pub fn new(profile: LayoutProfile, mount_root: Option<&Path>) -> Layout {
        let (partition_name, fs_label, mapping, default_root) = match profile {
            LayoutProfile::Tails => (
                "TailsData",
                "TailsData",
                "TailsData_unlocked",
                "/live/persistence/TailsData_unlocked",
            ),
            LayoutProfile::LiveBoot => (
                "persistence",
                "persistence",
                "persistence_unlocked",
                "/run/live/persistence/persistence_unlocked",
            ),
        };
        Layout {
            profile,
            partition_name,
            fs_label,
            mapping,
            mount_root: mount_root.map_or_else(|| PathBuf::from(default_root), Path::to_path_buf),
        }
    }

    pub fn mapper_path(&self) -> PathBuf {
        Path::new("/dev/mapper").join(self.mapping)
    }

    pub fn config_path(&self) -> PathBuf {
        self.mount_root.join(CONFIG_FILE)
    }

    /// The runtime record of this layout's unlocked volume.
    pub fn runtime_record(&self) -> PathBuf {
        Path::new(RUNTIME_DIR).join(format!("{}.json", self.mapping))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_layout_matches_tails() {
        let l = Layout::new(LayoutProfile::Tails, None);
        assert_eq!(l.mapping, "TailsData_unlocked");
        assert_eq!(l.mapper_path(), Path::new("/dev/mapper/TailsData_unlocked"));
        assert_eq!(
            l.config_path(),
            Path::new("/live/persistence/TailsData_unlocked/persistence.conf")
        );
    }

    #[test]
    fn mount_root_can_be_overridden() {
        let l = Layout::new(LayoutProfile::LiveBoot, Some(Path::new("/tmp/x")));
        assert_eq!(l.mount_root, Path::new("/tmp/x"));
        assert_eq!(l.fs_label, "persistence");
    }
}
