//! Finding persistence volumes as the live systems find them: open ones from the kernel's
//! own tables, whoever opened them (keepsake, Tails' Welcome Screen, live-boot's initramfs),
//! and locked ones by live-boot's rules (an ext4 label inside LUKS, a container file named
//! `persistence`). The deciding functions are pure and take the tables as arguments.

use std::path::{Path, PathBuf};

use crate::host::devices::Mapping;
use crate::host::disks::Scope;
use crate::host::mounts::Mount;
use crate::persistence::layout::{LIVE_BOOT_PERSISTENCE, Layout, LayoutProfile};

/// A persistence volume the kernel has open, and the layout it was found under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenVolume {
    pub profile: LayoutProfile,
    pub mapping: Mapping,
    /// Where its filesystem is mounted whole (the layout's own place first), if it is.
    pub mount_root: Option<PathBuf>,
}

/// The persistence volumes among the open mappings, in the order of the kernel's names.
/// Names alone prove nothing (anyone may call a mapping `TailsData_unlocked`), so a
/// mapping counts only when dm-crypt opened it from a LUKS header, and then:
/// - Tails: it is `TailsData_unlocked` (Tails' Welcome Screen and keepsake both name it so);
/// - live-boot: its filesystem is mounted at `/run/live/persistence/<mapping name>`, as
///   live-boot mounts what it opened, or keepsake's runtime record names it (`recorded`:
///   keepsake's own, maybe mounted elsewhere with --mount-root).
pub fn open_volumes(
    mappings: &[Mapping],
    table: &[Mount],
    recorded: &[(LayoutProfile, String)],
) -> Vec<OpenVolume> {
    let tails = Layout::new(LayoutProfile::Tails, None);
    mappings
        .iter()
        .filter(|m| m.is_luks())
        .filter_map(|m| {
            let whole: Vec<&Path> = table
                .iter()
                .filter(|t| t.dev == m.dev && t.root == Path::new("/"))
                .map(|t| t.mount_point.as_path())
                .collect();
            let live_boot_root = Path::new(LIVE_BOOT_PERSISTENCE).join(&m.name);
            let (profile, usual) = if m.name == tails.mapping {
                (LayoutProfile::Tails, tails.mount_root.clone())
            } else if whole.contains(&live_boot_root.as_path())
                || recorded.contains(&(LayoutProfile::LiveBoot, m.name.clone()))
            {
                (LayoutProfile::LiveBoot, live_boot_root)
            } else {
                return None;
            };
            let mount_root = whole
                .iter()
                .find(|p| **p == usual)
                .or(whole.first())
                .map(|p| p.to_path_buf());
            Some(OpenVolume {
                profile,
                mapping: m.clone(),
                mount_root,
            })
        })
        .collect()
}

/// The ext4 label in a filesystem's first 2 KiB (the superblock starts at 1024: magic
/// 0xEF53 at +56, the 16-byte label at +120). None when it is not ext2/3/4 or unlabelled.
pub fn ext4_label(head: &[u8]) -> Option<String> {
    const SB: usize = 1024;
    let magic = head.get(SB + 56..SB + 58)?;
    if magic != [0x53, 0xEF] {
        return None;
    }
    let raw = head.get(SB + 120..SB + 136)?;
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8(raw[..end].to_vec())
        .ok()
        .filter(|l| !l.is_empty())
}

/// Reads the ext4 label of a device (an open mapping).
pub fn read_ext4_label(device: &Path) -> Option<String> {
    use std::io::Read;
    let mut head = vec![0u8; 2048];
    std::fs::File::open(device)
        .ok()?
        .read_exact(&mut head)
        .ok()?;
    ext4_label(&head)
}

/// A block device that might hold a live-boot volume, as the host shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockCandidate {
    pub path: PathBuf,
    pub dev: (u32, u32),
    pub luks: bool,
    /// Something holds it already (it is open as a mapping, or part of one).
    pub held: bool,
}

/// Every partition, and every whole disk, the kernel has (not loop, RAM or mapped devices:
/// live-boot leaves those out too), with whether it is LUKS and whether something holds it.
pub fn block_candidates() -> Vec<BlockCandidate> {
    let held = |name: &str| {
        std::fs::read_dir(Path::new("/sys/class/block").join(name).join("holders"))
            .is_ok_and(|mut d| d.next().is_some())
    };
    let mut found: Vec<BlockCandidate> = crate::host::disks::all_partitions()
        .into_iter()
        .map(|p| BlockCandidate {
            luks: crate::volume::has_luks_magic(&p.path()),
            held: held(&p.name),
            path: p.path(),
            dev: p.dev,
        })
        .collect();
    let disks = std::fs::read_dir("/sys/block")
        .map(|rd| rd.filter_map(|e| e.ok()).collect::<Vec<_>>())
        .unwrap_or_default();
    for disk in disks {
        let name = disk.file_name().to_string_lossy().into_owned();
        if ["loop", "ram", "zram", "dm-", "sr", "fd", "nbd"]
            .iter()
            .any(|p| name.starts_with(p))
        {
            continue;
        }
        let Ok(bd) = crate::host::disks::block_device(&crate::host::devices::dev_path(&name))
        else {
            continue;
        };
        found.push(BlockCandidate {
            luks: crate::volume::has_luks_magic(&crate::host::devices::dev_path(&name)),
            held: held(&name),
            path: crate::host::devices::dev_path(&name),
            dev: bd.dev,
        });
    }
    found
}

/// The volumes live-boot's search could find in `scope` without opening them: container
/// files named `persistence` that are LUKS, else the LUKS devices not open yet. (`unlock`
/// goes on to open each with the passphrase and keep the one labelled `persistence`;
/// check and repair, which open a volume their own way, take the only one, or ask which.)
pub fn unopened_candidates(table: &[Mount], scope: &Scope) -> Vec<PathBuf> {
    let files: Vec<PathBuf> = container_file_places(table, scope)
        .into_iter()
        .filter(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file()))
        .filter(|p| crate::volume::has_luks_magic(p))
        .collect();
    if !files.is_empty() {
        return files;
    }
    luks_candidates(&block_candidates(), table, scope)
}

/// Why live-boot's search in `scope` found nothing, after `not_found` (what was looked for
/// by name).
pub fn none_to_look_into(not_found: &str, scope: &Scope) -> String {
    format!(
        "{not_found}; no container file named persistence, and no LUKS device that is not open already{}",
        scope.on()
    )
}

/// The LUKS devices in `scope` live-boot would open to look for the label inside: LUKS,
/// not open already, not mounted (the live medium and the system's own disks are).
pub fn luks_candidates(devices: &[BlockCandidate], table: &[Mount], scope: &Scope) -> Vec<PathBuf> {
    devices
        .iter()
        .filter(|d| scope.covers(d.dev))
        .filter(|d| d.luks && !d.held && !table.iter().any(|m| m.dev == d.dev))
        .map(|d| d.path.clone())
        .collect()
}

/// Where live-boot would look for a container file named `persistence`: the root of each
/// mounted block-device filesystem in `scope`, except the live medium and the live
/// system's own image (live-boot leaves out the devices these are mounted from).
pub fn container_file_places(table: &[Mount], scope: &Scope) -> Vec<PathBuf> {
    let excluded: Vec<(u32, u32)> = table
        .iter()
        .filter(|m| {
            crate::host::disks::LIVE_MEDIUM_MOUNTS
                .iter()
                .any(|l| m.mount_point == Path::new(l))
                || m.mount_point.starts_with("/run/live/rootfs")
                || m.mount_point.starts_with(LIVE_BOOT_PERSISTENCE)
                    && m.source.starts_with("/dev/mapper/")
        })
        .map(|m| m.dev)
        .collect();
    let mut places: Vec<PathBuf> = table
        .iter()
        .filter(|m| {
            m.source.starts_with("/dev/")
                && m.root == Path::new("/")
                && !excluded.contains(&m.dev)
                && scope.covers(m.dev)
        })
        .map(|m| m.mount_point.join(CONTAINER_FILE))
        .collect();
    places.dedup();
    places
}

/// The name live-boot gives a persistence container file.
pub const CONTAINER_FILE: &str = "persistence";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::mounts::parse_mountinfo;

    fn mapping(name: &str, uuid: &str, minor: u32) -> Mapping {
        Mapping {
            name: name.into(),
            kernel_name: format!("dm-{minor}"),
            dev: (254, minor),
            slaves: vec!["sdb2".into()],
            uuid: uuid.into(),
        }
    }

    const BOOTED: &str = "\
20 1 0:20 / /run rw - tmpfs tmpfs rw
40 20 254:0 / /live/persistence/TailsData_unlocked rw,noatime - ext4 /dev/mapper/TailsData_unlocked rw,acl
41 20 254:0 /Persistent /home/amnesia/Persistent rw - ext4 /dev/mapper/TailsData_unlocked rw
50 20 254:1 / /run/live/persistence/sdc2 rw,noatime - ext4 /dev/mapper/sdc2 rw
51 20 254:2 / /run/live/persistence/loop0 rw,noatime - ext4 /dev/mapper/loop0 rw
52 20 254:3 / /media/other rw - ext4 /dev/mapper/other rw
53 20 254:4 / /run/live/persistence/plain rw - ext4 /dev/mapper/plain rw
";

    #[test]
    fn finds_what_tails_and_live_boot_opened_at_boot() {
        let table = parse_mountinfo(BOOTED);
        let mappings = [
            mapping("TailsData_unlocked", "CRYPT-LUKS2-aa-TailsData_unlocked", 0),
            mapping("sdc2", "CRYPT-LUKS2-bb-sdc2", 1),
            mapping("loop0", "CRYPT-LUKS1-cc-loop0", 2),
            // A LUKS mapping mounted elsewhere, nobody's persistence.
            mapping("other", "CRYPT-LUKS2-dd-other", 3),
            // Mounted where live-boot mounts, but not LUKS (plain dm-crypt, or LVM).
            mapping("plain", "CRYPT-PLAIN-plain", 4),
        ];
        let found = open_volumes(&mappings, &table, &[]);
        let names: Vec<(&str, LayoutProfile)> = found
            .iter()
            .map(|v| (v.mapping.name.as_str(), v.profile))
            .collect();
        assert_eq!(
            names,
            vec![
                ("TailsData_unlocked", LayoutProfile::Tails),
                ("sdc2", LayoutProfile::LiveBoot),
                ("loop0", LayoutProfile::LiveBoot),
            ]
        );
        assert_eq!(
            found[0].mount_root.as_deref(),
            Some(Path::new("/live/persistence/TailsData_unlocked"))
        );
        assert_eq!(
            found[2].mount_root.as_deref(),
            Some(Path::new("/run/live/persistence/loop0"))
        );
    }

    #[test]
    fn a_name_alone_is_not_enough() {
        let table = parse_mountinfo(BOOTED);
        // TailsData_unlocked that is not LUKS; sdc2 not mounted where live-boot mounts it.
        let mappings = [
            mapping("TailsData_unlocked", "CRYPT-PLAIN-TailsData_unlocked", 0),
            mapping("sdc2", "CRYPT-LUKS2-bb-sdc2", 9),
        ];
        assert!(open_volumes(&mappings, &table, &[]).is_empty());
        // keepsake's own record vouches for its live-boot mapping, wherever mounted.
        let found = open_volumes(
            &mappings,
            &table,
            &[(LayoutProfile::LiveBoot, "sdc2".to_string())],
        );
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].mount_root, None, "open but not mounted");
    }

    #[test]
    fn reads_the_ext4_label_from_the_superblock() {
        let mut head = vec![0u8; 2048];
        head[1024 + 56] = 0x53;
        head[1024 + 57] = 0xEF;
        head[1024 + 120..1024 + 131].copy_from_slice(b"persistence");
        assert_eq!(ext4_label(&head).as_deref(), Some("persistence"));
        // A 16-byte label has no NUL.
        head[1024 + 120..1024 + 136].copy_from_slice(b"0123456789abcdef");
        assert_eq!(ext4_label(&head).as_deref(), Some("0123456789abcdef"));
        // No magic: not ext4, whatever the bytes say.
        head[1024 + 56] = 0;
        assert_eq!(ext4_label(&head), None);
        assert_eq!(ext4_label(&head[..1100]), None, "too short");
        let mut unlabelled = vec![0u8; 2048];
        unlabelled[1024 + 56..1024 + 58].copy_from_slice(&[0x53, 0xEF]);
        assert_eq!(ext4_label(&unlabelled), None);
    }

    #[test]
    fn tries_only_luks_devices_nobody_uses() {
        let table = parse_mountinfo(
            "30 1 8:17 / /run/live/medium ro - iso9660 /dev/sdb1 ro\n31 1 8:1 / / rw - ext4 /dev/sda1 rw\n",
        );
        let d = |path: &str, dev: (u32, u32), luks: bool, held: bool| BlockCandidate {
            path: PathBuf::from(path),
            dev,
            luks,
            held,
        };
        let devices = [
            d("/dev/sda1", (8, 1), false, false),
            d("/dev/sda2", (8, 2), true, true),
            d("/dev/sdb1", (8, 17), false, false),
            d("/dev/sdb2", (8, 18), true, false),
            d("/dev/sdc", (8, 32), true, false),
            // The Debian Live manual's stick: MBR, one LUKS partition, no name, no label.
            d("/dev/sdd", (8, 48), false, false),
            d("/dev/sdd1", (8, 49), true, false),
        ];
        assert_eq!(
            luks_candidates(&devices, &table, &Scope::Everywhere),
            ["/dev/sdb2", "/dev/sdc", "/dev/sdd1"].map(PathBuf::from)
        );
        // Given a disk, the same search on that disk only: its partitions, or the disk
        // itself when it is whole-disk LUKS.
        let disk = |name: &str, devs: &[(u32, u32)]| Scope::Disk {
            name: name.into(),
            devs: devs.to_vec(),
        };
        assert_eq!(
            luks_candidates(&devices, &table, &disk("sdd", &[(8, 48), (8, 49)])),
            [PathBuf::from("/dev/sdd1")]
        );
        assert_eq!(
            luks_candidates(&devices, &table, &disk("sdc", &[(8, 32)])),
            [PathBuf::from("/dev/sdc")]
        );
        // The host's disk: its one LUKS partition is open already.
        assert!(
            luks_candidates(&devices, &table, &disk("sda", &[(8, 0), (8, 1), (8, 2)])).is_empty()
        );
    }

    #[test]
    fn looks_for_container_files_beside_the_live_medium_not_on_it() {
        let table = parse_mountinfo(
            "30 1 8:17 / /run/live/medium ro - iso9660 /dev/sdb1 ro\n\
             31 1 7:0 / /run/live/rootfs/filesystem.squashfs ro - squashfs /dev/loop0 ro\n\
             32 1 8:33 / /media/stick rw - vfat /dev/sdc1 rw\n\
             33 1 8:33 /sub /mnt/sub rw - vfat /dev/sdc1 rw\n\
             34 1 0:5 / /run rw - tmpfs tmpfs rw\n\
             35 1 254:1 / /run/live/persistence/sdd2 rw - ext4 /dev/mapper/sdd2 rw\n\
             36 1 8:65 / /media/other rw - ext4 /dev/sde1 rw\n",
        );
        assert_eq!(
            container_file_places(&table, &Scope::Everywhere),
            ["/media/stick/persistence", "/media/other/persistence"].map(PathBuf::from)
        );
        // Given a disk, only the filesystems on it; the live medium stays out on its own
        // disk too.
        let disk = |name: &str, devs: &[(u32, u32)]| Scope::Disk {
            name: name.into(),
            devs: devs.to_vec(),
        };
        assert_eq!(
            container_file_places(&table, &disk("sde", &[(8, 64), (8, 65)])),
            [PathBuf::from("/media/other/persistence")]
        );
        assert!(container_file_places(&table, &disk("sdb", &[(8, 16), (8, 17)])).is_empty());
    }
}
