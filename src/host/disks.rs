//! Disks and their GPT partitions: finding the live stick, planning where a persistence
//! partition goes (pure), and creating or deleting it with util-linux's sfdisk.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Error, Result};
use crate::context::{IoError, io_at};
use crate::host::mounts::Mount;
use crate::host::tools;

/// Partitions start and end on 1 MiB boundaries, as every partitioning tool does now.
pub(crate) const ALIGN_BYTES: u64 = 1 << 20;

/// A partition table as `sfdisk --json` prints it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub(crate) struct PartitionTable {
    pub label: String,
    pub device: PathBuf,
    #[serde(default)]
    pub firstlba: u64,
    #[serde(default)]
    pub lastlba: u64,
    #[serde(default = "default_sector")]
    pub sectorsize: u64,
    #[serde(default)]
    pub partitions: Vec<Partition>,
}

fn default_sector() -> u64 {
    512
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub(crate) struct Partition {
    pub node: PathBuf,
    pub start: u64,
    pub size: u64,
    #[serde(rename = "type", default)]
    pub type_guid: String,
    #[serde(default)]
    pub name: Option<String>,
}

impl Partition {
    pub(crate) fn end(&self) -> u64 {
        self.start + self.size - 1
    }
}

#[derive(Deserialize)]
struct SfdiskJson {
    partitiontable: PartitionTable,
}

pub(crate) fn parse_sfdisk_json(text: &str) -> Result<PartitionTable> {
    serde_json::from_str::<SfdiskJson>(text)
        .map(|j| j.partitiontable)
        .map_err(|e| Error::Damaged(format!("cannot read the partition table: {e}")))
}

/// A free stretch of sectors, inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Region {
    pub start: u64,
    pub sectors: u64,
}

/// Where a new partition goes: the largest free region after the first partition (the
/// live system), aligned to 1 MiB. None when nothing aligned is left.
pub(crate) fn plan_new_partition(table: &PartitionTable) -> Option<Region> {
    let align = (ALIGN_BYTES / table.sectorsize).max(1);
    let mut parts: Vec<&Partition> = table.partitions.iter().collect();
    parts.sort_by_key(|p| p.start);
    let after = parts.first().map_or(table.firstlba, |p| p.start);
    let mut regions = Vec::new();
    let mut cursor = table.firstlba;
    for p in &parts {
        if p.start > cursor {
            regions.push((cursor, p.start - 1));
        }
        cursor = cursor.max(p.end() + 1);
    }
    if cursor <= table.lastlba {
        regions.push((cursor, table.lastlba));
    }
    regions
        .into_iter()
        .filter(|(start, _)| *start >= after)
        .filter_map(|(start, end)| {
            let aligned = start.div_ceil(align) * align;
            let sectors = (end + 1).checked_sub(aligned)? / align * align;
            (sectors > 0).then_some(Region {
                start: aligned,
                sectors,
            })
        })
        .max_by_key(|r| r.sectors)
}

/// The partition table of a disk, read with sfdisk.
pub(crate) fn read_table(disk: &Path) -> Result<PartitionTable> {
    let shown = disk.display().to_string();
    let out = tools::run("sfdisk", &["--json", &shown], "fdisk")?;
    if !out.status.success() {
        let msg = tools::first_line(&out);
        if msg.contains("does not contain a recognized partition table") {
            return Err(Error::Unusable(format!(
                "{shown} has no partition table: not a live stick"
            )));
        }
        return Err(Error::Failed(format!(
            "sfdisk --json {shown} failed: {msg}"
        )));
    }
    parse_sfdisk_json(&String::from_utf8_lossy(&out.stdout))
}

/// Adds a GPT partition and returns its number. `--no-reread` lets sfdisk write to a disk
/// whose live partition is mounted; partx then tells the kernel about the new partition
/// alone (BLKPG), which works while the disk is in use, where a re-read would not.
pub(crate) fn add_partition(
    disk: &Path,
    region: Region,
    type_guid: &str,
    name: &str,
) -> Result<u32> {
    let before = read_table(disk)?;
    let script = format!(
        "start={}, size={}, type={type_guid}, name=\"{name}\"\n",
        region.start, region.sectors
    );
    let shown = disk.display().to_string();
    let out = tools::run_with_input(
        "sfdisk",
        &["--append", "--no-reread", "--quiet", &shown],
        &script,
        "fdisk",
    )?;
    if !out.status.success() {
        return Err(Error::Failed(format!(
            "sfdisk --append {shown} failed: {}",
            tools::first_line(&out)
        )));
    }
    let after = read_table(disk)?;
    let new = after
        .partitions
        .iter()
        .find(|p| p.start == region.start && !before.partitions.iter().any(|b| b.node == p.node))
        .ok_or_else(|| Error::Failed(format!("the new partition does not show on {shown}")))?;
    let number = partition_number(&new.node).ok_or_else(|| {
        Error::Failed(format!("cannot tell the number of {}", new.node.display()))
    })?;
    // sfdisk re-reads the table itself when no partition of the disk is in use.
    if !partition_path(disk, number).exists() {
        partx(&["--add", "--nr", &number.to_string(), &shown])?;
    }
    Ok(number)
}

/// Removes partition `number` from the kernel's view and from the table.
pub(crate) fn delete_partition(disk: &Path, number: u32) -> Result<()> {
    let shown = disk.display().to_string();
    let nr = number.to_string();
    // The kernel first (it refuses while the partition is in use), then the table.
    if partition_path(disk, number).exists() {
        partx(&["--delete", "--nr", &nr, &shown])?;
    }
    let out = tools::run("sfdisk", &["--delete", "--no-reread", &shown, &nr], "fdisk")?;
    if !out.status.success() {
        return Err(Error::Failed(format!(
            "sfdisk --delete {shown} {number} failed: {}",
            tools::first_line(&out)
        )));
    }
    Ok(())
}

fn partx(args: &[&str]) -> Result<()> {
    let out = tools::run("partx", args, "util-linux")?;
    if !out.status.success() {
        return Err(Error::Failed(format!(
            "partx {} failed: {}",
            args.join(" "),
            tools::first_line(&out)
        )));
    }
    Ok(())
}

/// Waits (up to 5 s) for the kernel to show a partition's device node.
pub(crate) fn wait_for_device(path: &Path) -> Result<()> {
    for _ in 0..100 {
        if std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device()) {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Err(Error::Failed(format!(
        "{} did not appear after partitioning",
        path.display()
    )))
}

/// The number at the end of a partition's device name: sdb2 → 2, nvme0n1p3 → 3.
pub(crate) fn partition_number(node: &Path) -> Option<u32> {
    let name = node.file_name()?.to_str()?;
    let digits: String = name
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.chars().rev().collect::<String>().parse().ok()
}

/// A partition's device path: /dev/sdb + 2 → /dev/sdb2; /dev/nvme0n1 + 2 → /dev/nvme0n1p2.
pub(crate) fn partition_path(disk: &Path, number: u32) -> PathBuf {
    let name = disk.to_string_lossy();
    if name.ends_with(|c: char| c.is_ascii_digit()) {
        PathBuf::from(format!("{name}p{number}"))
    } else {
        PathBuf::from(format!("{name}{number}"))
    }
}

/// What sysfs says about a block device given by path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BlockDevice {
    /// Kernel name: sdb, sdb2.
    pub name: String,
    pub dev: (u32, u32),
    /// For a partition: its disk's kernel name.
    pub parent: Option<String>,
}

impl BlockDevice {
    pub(crate) fn is_partition(&self) -> bool {
        self.parent.is_some()
    }

    pub(crate) fn disk_name(&self) -> &str {
        self.parent.as_deref().unwrap_or(&self.name)
    }
}

pub(crate) fn block_device(path: &Path) -> Result<BlockDevice> {
    let meta = std::fs::metadata(path).map_err(io_at("reading", path))?;
    if !meta.file_type().is_block_device() {
        return Err(Error::Unusable(format!(
            "{} is not a block device",
            path.display()
        )));
    }
    let dev = (libc::major(meta.rdev()), libc::minor(meta.rdev()));
    let sys =
        std::fs::canonicalize(format!("/sys/dev/block/{}:{}", dev.0, dev.1)).map_err(|e| {
            Error::Io(IoError::new(
                format!("finding {} in sysfs", path.display()),
                e,
            ))
        })?;
    let name = sys
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let parent = sys
        .join("partition")
        .exists()
        .then(|| {
            sys.parent()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
        })
        .flatten();
    Ok(BlockDevice { name, dev, parent })
}

/// A partition as sysfs shows it (the kernel's view, no tool needed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SysPartition {
    pub name: String,
    pub disk: String,
    pub dev: (u32, u32),
    /// The GPT partition name, if any.
    pub partname: Option<String>,
}

impl SysPartition {
    pub(crate) fn path(&self) -> PathBuf {
        Path::new("/dev").join(&self.name)
    }
}

/// Every partition the kernel knows, disk by disk.
pub(crate) fn all_partitions() -> Vec<SysPartition> {
    let mut found = Vec::new();
    let Ok(disks) = std::fs::read_dir("/sys/block") else {
        return found;
    };
    for disk in disks.filter_map(|d| d.ok()) {
        let disk_name = disk.file_name().to_string_lossy().into_owned();
        let Ok(children) = std::fs::read_dir(disk.path()) else {
            continue;
        };
        for child in children.filter_map(|c| c.ok()) {
            let path = child.path();
            if !path.join("partition").exists() {
                continue;
            }
            let uevent = std::fs::read_to_string(path.join("uevent")).unwrap_or_default();
            let field = |key: &str| {
                uevent
                    .lines()
                    .find_map(|l| l.strip_prefix(key).map(str::to_string))
            };
            let dev = std::fs::read_to_string(path.join("dev"))
                .ok()
                .and_then(|d| {
                    let (a, b) = d.trim().split_once(':')?;
                    Some((a.parse().ok()?, b.parse().ok()?))
                });
            let Some(dev) = dev else { continue };
            found.push(SysPartition {
                name: child.file_name().to_string_lossy().into_owned(),
                disk: disk_name.clone(),
                dev,
                partname: field("PARTNAME="),
            });
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found
}

/// Where a search for a volume looks: on every disk, or on one (`--device DISK`): the disk
/// itself, its partitions, and the filesystems on them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Scope {
    #[default]
    Everywhere,
    Disk {
        /// Kernel name: sdb.
        name: String,
        /// The device numbers of the disk and of each of its partitions.
        devs: Vec<(u32, u32)>,
    },
}

impl Scope {
    /// The disk `disk`, with its partitions among `partitions` ([`all_partitions`]).
    pub(crate) fn disk(disk: &BlockDevice, partitions: &[SysPartition]) -> Scope {
        let name = disk.disk_name().to_string();
        let devs = std::iter::once(disk.dev)
            .chain(partitions.iter().filter(|p| p.disk == name).map(|p| p.dev))
            .collect();
        Scope::Disk { name, devs }
    }

    /// Whether the block device numbered `dev` (or a filesystem on it: a mount's `dev`) is
    /// in the scope.
    pub(crate) fn covers(&self, dev: (u32, u32)) -> bool {
        match self {
            Scope::Everywhere => true,
            Scope::Disk { devs, .. } => devs.contains(&dev),
        }
    }

    /// Whether the file or block device at `path` is in the scope: a block device by its
    /// own number, a file by the filesystem it is on.
    pub(crate) fn holds(&self, path: &Path) -> bool {
        match self {
            Scope::Everywhere => true,
            Scope::Disk { .. } => std::fs::metadata(path).is_ok_and(|m| {
                let dev = if m.file_type().is_block_device() {
                    m.rdev()
                } else {
                    m.dev()
                };
                self.covers((libc::major(dev), libc::minor(dev)))
            }),
        }
    }

    /// " on /dev/sdb", or nothing: where a search looked, for messages.
    pub(crate) fn on(&self) -> String {
        match self {
            Scope::Everywhere => String::new(),
            Scope::Disk { name, .. } => format!(" on /dev/{name}"),
        }
    }
}

/// The mounts of filesystems in `scope` (a disk and its partitions).
pub(crate) fn mounts_in<'a>(table: &'a [Mount], scope: &Scope) -> Vec<&'a Mount> {
    table.iter().filter(|m| scope.covers(m.dev)).collect()
}

/// The persistence partitions of a layout: those whose GPT entry has its partition name
/// (or Tails' partition type, for the Tails layout), read from the partition tables
/// themselves since the kernel only knows names it read at boot; or else those whose LUKS2
/// header carries its label; only those in `scope`.
pub(crate) fn find_persistence(
    partition_name: &str,
    label: &str,
    scope: &Scope,
) -> Vec<SysPartition> {
    let partitions: Vec<SysPartition> = all_partitions()
        .into_iter()
        .filter(|p| scope.covers(p.dev))
        .collect();
    let mut disks: Vec<&str> = partitions.iter().map(|p| p.disk.as_str()).collect();
    disks.dedup();
    let tails = partition_name == "TailsData";
    let mut by_table = Vec::new();
    for disk in disks {
        let Ok(table) = read_table(&Path::new("/dev").join(disk)) else {
            continue;
        };
        for entry in &table.partitions {
            let named = entry.name.as_deref() == Some(partition_name)
                || (tails
                    && entry
                        .type_guid
                        .eq_ignore_ascii_case(crate::persistence::layout::TAILS_PARTITION_TYPE));
            if let Some(p) = partitions.iter().find(|p| named && p.path() == entry.node) {
                by_table.push(p.clone());
            }
        }
    }
    if !by_table.is_empty() {
        return by_table;
    }
    partitions
        .into_iter()
        .filter(|p| {
            p.partname.as_deref() == Some(partition_name)
                || crate::volume::luks2_label(&p.path()).as_deref() == Some(label)
        })
        .collect()
}

/// The kernel name of the disk the live system booted from, if a live medium is mounted.
pub(crate) fn live_medium_disk(table: &[Mount]) -> Option<String> {
    let medium = table.iter().find(|m| {
        LIVE_MEDIUM_MOUNTS
            .iter()
            .any(|l| m.mount_point == Path::new(l))
    })?;
    all_partitions()
        .into_iter()
        .find(|p| p.dev == medium.dev)
        .map(|p| p.disk)
}

/// Where live systems mount their boot medium. live-boot mounts it at /run/live/medium
/// and again under /lib/live/mount, which on a merged-/usr system (Debian 12, Tails 6) the
/// mount table names /usr/lib/live/mount/medium.
pub(crate) const LIVE_MEDIUM_MOUNTS: &[&str] = &[
    "/run/live/medium",
    "/usr/lib/live/mount/medium",
    "/lib/live/mount/medium",
    "/live/image",
];

/// Judges whether partitions of a disk may be written: a read-only mount of the live
/// medium is expected on the stick; anything else mounted, or a mount at a system path
/// (the host's own installed disk), is refused with the reason.
pub(crate) fn check_disk_not_in_use(disk: &Path, mounts: &[&Mount]) -> Result<()> {
    for m in mounts {
        let point = m.mount_point.to_string_lossy();
        let live_medium = LIVE_MEDIUM_MOUNTS
            .iter()
            .any(|l| m.mount_point == Path::new(l));
        if live_medium && m.has_option("ro") {
            continue;
        }
        let system = ["/", "/boot", "/boot/efi", "/usr", "/var", "/home"].contains(&point.as_ref());
        let why = if system {
            format!(
                "{} holds {point} of the running system: it is the host's disk, not a live stick",
                m.source
            )
        } else {
            format!("{} is mounted at {point}", m.source)
        };
        return Err(Error::InUse(format!(
            "{} is in use: {why}; nothing was changed",
            disk.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::mounts::parse_mountinfo;

    const TAILS_STICK: &str = r#"{
   "partitiontable": {
      "label": "gpt", "id": "X", "device": "/dev/sdb", "unit": "sectors",
      "firstlba": 34, "lastlba": 31266782, "sectorsize": 512,
      "partitions": [
         {"node": "/dev/sdb1", "start": 2048, "size": 16777216,
          "type": "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "uuid": "U", "name": "Tails"}
      ]
   }
}"#;

    #[test]
    fn parses_sfdisk_json() {
        let t = parse_sfdisk_json(TAILS_STICK).unwrap();
        assert_eq!(t.label, "gpt");
        assert_eq!(t.partitions.len(), 1);
        assert_eq!(t.partitions[0].name.as_deref(), Some("Tails"));
        assert_eq!(t.partitions[0].end(), 2048 + 16777216 - 1);
        assert!(parse_sfdisk_json("{}").is_err());
    }

    #[test]
    fn new_partition_fills_the_rest_of_the_stick_aligned() {
        let t = parse_sfdisk_json(TAILS_STICK).unwrap();
        let r = plan_new_partition(&t).unwrap();
        assert_eq!(r.start, 2048 + 16777216);
        assert_eq!(r.start % 2048, 0);
        assert_eq!(r.sectors % 2048, 0);
        assert!(r.start + r.sectors - 1 <= t.lastlba);
        assert!(t.lastlba - (r.start + r.sectors - 1) < 2048);
    }

    #[test]
    fn picks_the_largest_gap_after_the_live_partition() {
        let mut t = parse_sfdisk_json(TAILS_STICK).unwrap();
        t.lastlba = 100 * 2048 - 1;
        t.partitions = vec![
            Partition {
                node: "/dev/sdb1".into(),
                start: 2048,
                size: 10 * 2048,
                type_guid: String::new(),
                name: None,
            },
            // a 5 MiB gap, then a partition, then 80 MiB of free space
            Partition {
                node: "/dev/sdb3".into(),
                start: 16 * 2048,
                size: 4 * 2048,
                type_guid: String::new(),
                name: None,
            },
        ];
        let r = plan_new_partition(&t).unwrap();
        assert_eq!(r.start, 20 * 2048);
        assert_eq!(r.sectors, 80 * 2048);
    }

    #[test]
    fn a_full_disk_has_no_room() {
        let mut t = parse_sfdisk_json(TAILS_STICK).unwrap();
        t.partitions[0].size = t.lastlba - 2048 + 1;
        assert_eq!(plan_new_partition(&t), None);
        // Less than one aligned MiB left is no room either.
        t.partitions[0].size -= 1000;
        assert_eq!(plan_new_partition(&t), None);
    }

    #[test]
    fn free_space_before_the_live_partition_is_not_used() {
        let mut t = parse_sfdisk_json(TAILS_STICK).unwrap();
        t.partitions[0].start = 200 * 2048;
        t.partitions[0].size = t.lastlba - 200 * 2048 + 1;
        assert_eq!(plan_new_partition(&t), None);
    }

    #[test]
    fn partition_names() {
        assert_eq!(partition_number(Path::new("/dev/sdb2")), Some(2));
        assert_eq!(partition_number(Path::new("/dev/nvme0n1p13")), Some(13));
        assert_eq!(partition_number(Path::new("/dev/sdb")), None);
        assert_eq!(
            partition_path(Path::new("/dev/sdb"), 2),
            Path::new("/dev/sdb2")
        );
        assert_eq!(
            partition_path(Path::new("/dev/mmcblk0"), 2),
            Path::new("/dev/mmcblk0p2")
        );
    }

    #[test]
    fn a_disk_scope_is_the_disk_and_its_partitions() {
        let part = |name: &str, disk: &str, dev: (u32, u32)| SysPartition {
            name: name.into(),
            disk: disk.into(),
            dev,
            partname: None,
        };
        let partitions = [
            part("sda1", "sda", (8, 1)),
            part("sdb1", "sdb", (8, 17)),
            part("sdb2", "sdb", (8, 18)),
        ];
        let sdb = BlockDevice {
            name: "sdb".into(),
            dev: (8, 16),
            parent: None,
        };
        let scope = Scope::disk(&sdb, &partitions);
        assert_eq!(
            scope,
            Scope::Disk {
                name: "sdb".into(),
                devs: vec![(8, 16), (8, 17), (8, 18)]
            }
        );
        assert!(scope.covers((8, 18)) && scope.covers((8, 16)));
        assert!(!scope.covers((8, 1)), "another disk's partition");
        assert!(
            !scope.covers((254, 0)),
            "a mapping, even of one of its partitions"
        );
        assert_eq!(scope.on(), " on /dev/sdb");
        assert!(Scope::Everywhere.covers((8, 1)));
        assert_eq!(Scope::Everywhere.on(), "");
        // Only the mounts of filesystems on that disk.
        let table = parse_mountinfo(
            "30 1 8:17 / /run/live/medium ro - vfat /dev/sdb1 ro\n\
             31 1 8:1 / / rw - ext4 /dev/sda1 rw\n\
             32 1 8:18 / /media/stick rw - ext4 /dev/sdb2 rw\n",
        );
        let points: Vec<&Path> = mounts_in(&table, &scope)
            .iter()
            .map(|m| m.mount_point.as_path())
            .collect();
        assert_eq!(
            points,
            [Path::new("/run/live/medium"), Path::new("/media/stick")]
        );
    }

    #[test]
    fn a_file_is_in_the_scope_of_the_disk_its_filesystem_is_on() {
        use std::os::unix::fs::MetadataExt;
        let file = tempfile::NamedTempFile::new().unwrap();
        let dev = std::fs::metadata(file.path()).unwrap().dev();
        let on = |devs: Vec<(u32, u32)>| Scope::Disk {
            name: "sdz".into(),
            devs,
        };
        let its_fs = (libc::major(dev), libc::minor(dev));
        assert!(on(vec![(8, 16), its_fs]).holds(file.path()));
        assert!(!on(vec![(8, 16)]).holds(file.path()));
        assert!(!on(vec![its_fs]).holds(Path::new("/nonexistent/keepsake")));
        assert!(Scope::Everywhere.holds(file.path()));
    }

    #[test]
    fn in_use_rules() {
        let t = parse_mountinfo(
            "30 1 8:17 / /run/live/medium ro - vfat /dev/sdb1 ro\n\
             31 1 8:1 / / rw - ext4 /dev/sda1 rw\n\
             32 1 8:18 / /media/stick rw - ext4 /dev/sdb2 rw\n",
        );
        let live: Vec<&Mount> = vec![&t[0]];
        assert!(check_disk_not_in_use(Path::new("/dev/sdb"), &live).is_ok());
        let host: Vec<&Mount> = vec![&t[1]];
        let err = check_disk_not_in_use(Path::new("/dev/sda"), &host).unwrap_err();
        assert!(err.to_string().contains("host's disk"), "{err}");
        let busy: Vec<&Mount> = vec![&t[0], &t[2]];
        let err = check_disk_not_in_use(Path::new("/dev/sdb"), &busy).unwrap_err();
        assert!(err.to_string().contains("mounted at /media/stick"), "{err}");
    }

    /// The mounts of the boot stick on a Debian 12 live system, as live-boot made them
    /// (read in the live scenarios' VM): the medium twice, once under /usr/lib.
    #[test]
    fn the_live_medium_of_a_merged_usr_system_is_expected() {
        let t = parse_mountinfo(
            "27 26 254:1 / /run/live/medium ro,noatime shared:10 - ext4 /dev/vda1 ro\n\
             34 33 254:1 / /usr/lib/live/mount/medium ro,noatime shared:3 - ext4 /dev/vda1 ro\n",
        );
        let mounts: Vec<&Mount> = t.iter().collect();
        assert!(check_disk_not_in_use(Path::new("/dev/vda"), &mounts).is_ok());
        let rw = parse_mountinfo(
            "34 33 254:1 / /usr/lib/live/mount/medium rw,noatime shared:3 - ext4 /dev/vda1 rw\n",
        );
        let mounts: Vec<&Mount> = rw.iter().collect();
        assert!(check_disk_not_in_use(Path::new("/dev/vda"), &mounts).is_err());
    }
}
