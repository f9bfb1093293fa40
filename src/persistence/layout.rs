//! Where things live: the names and paths of a persistence volume, per layout profile.

use std::path::{Path, PathBuf};

/// A layout profile: how the volume is named on disk and where it appears when unlocked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
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
    /// GPT partition type GUID of a new volume on a stick: Tails' own type, or the Linux
    /// filesystem type that Debian's partitioners give a live-boot persistence partition.
    pub partition_type: &'static str,
    /// dm-crypt mapping name while unlocked. Tails' is fixed; live-boot names the mapping
    /// after the device (sdb2), so it is known once the volume is (see [`Layout::for_volume`]
    /// and the runtime record).
    pub mapping: String,
    /// Where the volume's filesystem is mounted while unlocked.
    pub mount_root: PathBuf,
    /// The mount root was given on the command line.
    mount_root_given: bool,
}

/// The configuration file at the root of the volume.
pub(crate) const CONFIG_FILE: &str = "persistence.conf";
/// Definitions of custom features, enabled or not, in the same syntax (keepsake's own).
pub(crate) const CUSTOM_FEATURES_FILE: &str = "keepsake-features.conf";
/// In the Tails layout, the features only keepsake knows (tor-state), enabled: Tails would
/// treat their lines in persistence.conf as custom features and bind them at boot. Same
/// syntax, read by keepsake only.
pub(crate) const KEEPSAKE_CONFIG_FILE: &str = "keepsake.conf";
/// Tails' GPT partition type for TailsData partitions.
pub(crate) const TAILS_PARTITION_TYPE: &str = "8DA63339-0007-60C0-C436-083AC8230908";
/// The Linux filesystem data GPT partition type (live-boot looks at names and labels only).
pub(crate) const LINUX_FILESYSTEM_PARTITION_TYPE: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
/// Where keepsake keeps runtime records (never secrets). Must be on tmpfs.
pub(crate) const RUNTIME_DIR: &str = "/run/keepsake";
/// Where live-boot mounts persistence volumes, one folder per device.
pub(crate) const LIVE_BOOT_PERSISTENCE: &str = "/run/live/persistence";

impl Layout {
    pub(crate) fn new(profile: LayoutProfile, mount_root: Option<&Path>) -> Layout {
        let (partition_name, fs_label, partition_type, mapping, default_root) = match profile {
            LayoutProfile::Tails => (
                "TailsData",
                "TailsData",
                TAILS_PARTITION_TYPE,
                "TailsData_unlocked",
                "/live/persistence/TailsData_unlocked",
            ),
            LayoutProfile::LiveBoot => (
                "persistence",
                "persistence",
                LINUX_FILESYSTEM_PARTITION_TYPE,
                "",
                LIVE_BOOT_PERSISTENCE,
            ),
        };
        Layout {
            profile,
            partition_name,
            fs_label,
            partition_type,
            mapping: mapping.to_string(),
            mount_root: mount_root.map_or_else(|| PathBuf::from(default_root), Path::to_path_buf),
            mount_root_given: mount_root.is_some(),
        }
    }

    /// The layout of one volume: live-boot maps and mounts it under the device's (or
    /// container file's) name, as /dev/mapper/sdb2 on /run/live/persistence/sdb2.
    pub(crate) fn for_volume(&self, volume: &Path) -> Layout {
        let mut layout = self.clone();
        if self.profile == LayoutProfile::LiveBoot {
            let name = volume.file_name().map_or_else(
                || "persistence".to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            if !self.mount_root_given {
                layout.mount_root = Path::new(LIVE_BOOT_PERSISTENCE).join(&name);
            }
            layout.mapping = name;
        }
        layout
    }

    pub(crate) fn mapper_path(&self) -> PathBuf {
        Path::new("/dev/mapper").join(&self.mapping)
    }

    /// The runtime record of this profile's unlocked volume.
    pub(crate) fn runtime_record(&self) -> PathBuf {
        let name = match self.profile {
            LayoutProfile::Tails => "tails.json",
            LayoutProfile::LiveBoot => "live-boot.json",
        };
        Path::new(RUNTIME_DIR).join(name)
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
            l.mount_root.join(CONFIG_FILE),
            Path::new("/live/persistence/TailsData_unlocked/persistence.conf")
        );
    }

    #[test]
    fn mount_root_can_be_overridden() {
        let l = Layout::new(LayoutProfile::LiveBoot, Some(Path::new("/tmp/x")));
        assert_eq!(
            l.for_volume(Path::new("/dev/sdb2")).mount_root,
            Path::new("/tmp/x")
        );
        assert_eq!(l.fs_label, "persistence");
    }

    #[test]
    fn live_boot_names_the_volume_after_its_device() {
        let l = Layout::new(LayoutProfile::LiveBoot, None).for_volume(Path::new("/dev/sdb2"));
        assert_eq!(l.mapping, "sdb2");
        assert_eq!(l.mapper_path(), Path::new("/dev/mapper/sdb2"));
        assert_eq!(l.mount_root, Path::new("/run/live/persistence/sdb2"));
        let t = Layout::new(LayoutProfile::Tails, None).for_volume(Path::new("/dev/sdb2"));
        assert_eq!(t.mapping, "TailsData_unlocked");
    }

    #[test]
    fn each_layout_has_its_partition_type() {
        let t = Layout::new(LayoutProfile::Tails, None);
        assert_eq!(t.partition_type, "8DA63339-0007-60C0-C436-083AC8230908");
        let l = Layout::new(LayoutProfile::LiveBoot, None);
        assert_eq!(l.partition_type, "0FC63DAF-8483-4772-8E79-3D69D8477DE4");
    }

    #[test]
    fn a_container_on_a_loop_device_is_named_after_it() {
        let l = Layout::new(LayoutProfile::LiveBoot, None).for_volume(Path::new("/dev/loop3"));
        assert_eq!(l.mapper_path(), Path::new("/dev/mapper/loop3"));
        assert_eq!(l.mount_root, Path::new("/run/live/persistence/loop3"));
    }
}
