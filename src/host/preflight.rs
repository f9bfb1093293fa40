//! Host safety checks, run before any secret is read.
//!
//! The host's disks are untrusted: a passphrase or key paged out to an unencrypted swap
//! device, or a core dump written by a crash handler, would outlive the session. Each
//! check that fails refuses the command, unless its own override flag is given.

use std::path::{Path, PathBuf};

use super::{Error, Result};
use crate::host::mounts::{self, Mount};

/// Which failed checks the user has explicitly accepted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Overrides {
    pub unencrypted_swap: bool,
    pub core_dump_handler: bool,
    pub disk_backed_tmp: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Verdict {
    Ok,
    /// Worth knowing; never refuses.
    Warn,
    /// Refuses the command unless overridden.
    Unsafe,
    /// Unsafe, but the user gave the override.
    Overridden,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Finding {
    pub check: &'static str,
    pub verdict: Verdict,
    pub message: String,
    /// The flag that accepts this risk, for unsafe findings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub override_flag: Option<&'static str>,
}

/// What is known about one active swap area.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SwapArea {
    pub path: PathBuf,
    pub backing: SwapBacking,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SwapBacking {
    /// On a dm-crypt mapping (directly, or a swap file on a filesystem on one).
    DmCrypt,
    /// zram with no backing device: compressed RAM, never written to a disk.
    ZramInRam,
    /// zram that writes back idle pages to this device.
    ZramWriteback(String),
    /// Anything else: a partition, a file on a plain filesystem.
    Plain,
}

/// Parses /proc/swaps into the paths of active swap areas.
pub(crate) fn parse_swaps(text: &str) -> Vec<PathBuf> {
    text.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .collect()
}

pub(crate) fn check_swap(areas: &[SwapArea], overrides: &Overrides) -> Finding {
    let unsafe_areas: Vec<String> = areas
        .iter()
        .filter_map(|a| match &a.backing {
            SwapBacking::DmCrypt | SwapBacking::ZramInRam => None,
            SwapBacking::ZramWriteback(dev) => {
                Some(format!("{} (zram writing back to {dev})", a.path.display()))
            }
            SwapBacking::Plain => Some(format!("{} (not encrypted)", a.path.display())),
        })
        .collect();
    if unsafe_areas.is_empty() {
        let message = if areas.is_empty() {
            "no swap is active".to_string()
        } else {
            format!("{} swap area(s), all encrypted or in RAM", areas.len())
        };
        return Finding {
            check: "swap",
            verdict: Verdict::Ok,
            message,
            override_flag: None,
        };
    }
    Finding {
        check: "swap",
        verdict: if overrides.unencrypted_swap {
            Verdict::Overridden
        } else {
            Verdict::Unsafe
        },
        message: format!(
            "unencrypted swap is active: {}; secrets could be written to disk (swapoff it, or use encrypted swap)",
            unsafe_areas.join(", ")
        ),
        override_flag: Some("--allow-unencrypted-swap"),
    }
}

/// Judges `/proc/sys/kernel/core_pattern`. keepsake itself never dumps core (it disables
/// dumps before reading a secret), but programs that use the persisted data (tor with its
/// onion keys, gpg-agent) may: a handler that stores their dumps on a disk would leak it.
/// `dump_dir_fs` gives the filesystem type holding a path, when known.
pub(crate) fn check_core_pattern(
    pattern: &str,
    dump_dir_fs: &dyn Fn(&Path) -> Option<String>,
    overrides: &Overrides,
) -> Finding {
    let pattern = pattern.trim();
    let on_ram = |p: &Path| dump_dir_fs(p).is_some_and(|fs| is_ram_fs(&fs));
    let problem = if let Some(handler) = pattern.strip_prefix('|') {
        let program = handler.split_whitespace().next().unwrap_or("");
        let name = Path::new(program)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("");
        match name {
            "systemd-coredump" if on_ram(Path::new("/var/lib/systemd/coredump")) => None,
            "systemd-coredump" => Some(
                "systemd-coredump stores dumps in /var/lib/systemd/coredump, which is not in RAM"
                    .to_string(),
            ),
            "false" | "true" => None,
            _ => Some(format!(
                "core dumps are piped to {program}, which may write them to disk"
            )),
        }
    } else if pattern.starts_with('/') {
        let dir = Path::new(pattern).parent().unwrap_or(Path::new("/"));
        if on_ram(dir) {
            None
        } else {
            Some(format!(
                "core dumps are written to {}, which is not in RAM",
                dir.display()
            ))
        }
    } else {
        // Relative: into the crashing process's working folder, and only when its own
        // core limit allows (0 by default on Debian and Tails).
        None
    };
    match problem {
        None => Finding {
            check: "core-dumps",
            verdict: Verdict::Ok,
            message: format!("core_pattern {pattern:?} keeps dumps off disks"),
            override_flag: None,
        },
        Some(why) => Finding {
            check: "core-dumps",
            verdict: if overrides.core_dump_handler {
                Verdict::Overridden
            } else {
                Verdict::Unsafe
            },
            message: format!(
                "{why}; dumps of programs using the persisted data could reach a disk"
            ),
            override_flag: Some("--allow-core-dump-handler"),
        },
    }
}

pub(crate) fn is_ram_fs(fstype: &str) -> bool {
    matches!(fstype, "tmpfs" | "ramfs" | "rootfs")
}

/// The mount holding `path`: the longest mount point that is a prefix of it.
pub(crate) fn mount_holding<'a>(table: &'a [Mount], path: &Path) -> Option<&'a Mount> {
    table
        .iter()
        .filter(|m| path.starts_with(&m.mount_point))
        .max_by_key(|m| (m.mount_point.components().count(), m.id))
}

/// Whether what is written under `path` stays in RAM: a tmpfs or ramfs, or an overlay
/// (the root of a live system) whose writable layer is on one.
pub(crate) fn stays_in_ram(table: &[Mount], path: &Path) -> bool {
    let Some(m) = mount_holding(table, path) else {
        return false;
    };
    if is_ram_fs(&m.fstype) {
        return true;
    }
    if m.fstype == "overlay" {
        let upper = m
            .super_options
            .split(',')
            .find_map(|o| o.strip_prefix("upperdir="));
        if let Some(upper) = upper {
            return mount_holding(table, Path::new(upper)).is_some_and(|u| is_ram_fs(&u.fstype));
        }
    }
    false
}

pub(crate) fn check_ram_folders(
    table: &[Mount],
    folders: &[&Path],
    overrides: &Overrides,
) -> Finding {
    let on_disk: Vec<String> = folders
        .iter()
        .filter(|p| !stays_in_ram(table, p))
        .map(|p| p.display().to_string())
        .collect();
    if on_disk.is_empty() {
        return Finding {
            check: "amnesic-folders",
            verdict: Verdict::Ok,
            message: "the temporary and runtime folders are in RAM".into(),
            override_flag: None,
        };
    }
    Finding {
        check: "amnesic-folders",
        verdict: if overrides.disk_backed_tmp {
            Verdict::Overridden
        } else {
            Verdict::Unsafe
        },
        message: format!(
            "{} not in RAM (tmpfs); this does not look like an amnesic live system",
            on_disk.join(", ")
        ),
        override_flag: Some("--allow-disk-backed-tmp"),
    }
}

/// Disk filesystems mounted read-write: not refused (the user may mean it), but said. The
/// filesystem holding the volume's container file (the stick) is expected and not listed.
pub(crate) fn check_host_disks(table: &[Mount], exclude_dev: Option<(u32, u32)>) -> Finding {
    let disk_fs = [
        "ext2", "ext3", "ext4", "xfs", "btrfs", "vfat", "exfat", "ntfs", "ntfs3", "f2fs", "fuseblk",
    ];
    let rw: Vec<String> = table
        .iter()
        .filter(|m| disk_fs.contains(&m.fstype.as_str()) && m.source.starts_with("/dev/"))
        .filter(|m| m.has_option("rw") && Some(m.dev) != exclude_dev)
        .filter(|m| !m.source.starts_with("/dev/mapper/") && !m.source.starts_with("/dev/loop"))
        .map(|m| format!("{} on {}", m.source, m.mount_point.display()))
        .collect();
    if rw.is_empty() {
        Finding {
            check: "host-disks",
            verdict: Verdict::Ok,
            message: "no disk filesystem is mounted read-write".into(),
            override_flag: None,
        }
    } else {
        Finding {
            check: "host-disks",
            verdict: Verdict::Warn,
            message: format!(
                "disk filesystems are mounted read-write: {}; keepsake writes nothing there, but other programs may",
                rw.join(", ")
            ),
            override_flag: None,
        }
    }
}

/// Refuses a key derivation that needs more memory than this machine has available now
/// (MemAvailable, in KiB): argon2 would abort on a failed allocation or be killed by the OOM
/// killer half way, and on a live system RAM is also the session's disk. Every key
/// derivation keepsake runs (a volume's keyslots, a backup archive's key) asks here first,
/// before any passphrase is read. `doing` starts the message ("unlocking /dev/sdb2"). An
/// unknown availability lets the derivation through: each format's own hard caps still
/// bound it.
pub(crate) fn require_kdf_memory(
    doing: &str,
    need_kib: u64,
    available_kib: Option<u64>,
) -> Result<()> {
    match available_kib {
        Some(available) if need_kib > available => Err(Error::Unsafe(format!(
            "{doing} needs {} MiB of memory for its key derivation and this machine has {} MiB available; free some memory or use a bigger machine (nothing was changed)",
            need_kib.div_ceil(1024),
            available / 1024
        ))),
        _ => Ok(()),
    }
}

/// Runs every check against the running system. `volume_file` is the container file about
/// to be used, if any.
pub(crate) fn run(
    overrides: &Overrides,
    volume_file: Option<&Path>,
    table: &[mounts::Mount],
) -> Result<Vec<Finding>> {
    let swaps = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
    let areas: Vec<SwapArea> = parse_swaps(&swaps)
        .into_iter()
        .map(|path| SwapArea {
            backing: swap_backing(&path),
            path,
        })
        .collect();
    let pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default();
    let fs_of = |p: &Path| mount_holding(table, p).map(|m| m.fstype.clone());
    let folders = [
        Path::new("/tmp"),
        Path::new(crate::persistence::layout::RUNTIME_DIR),
    ];
    let stick = volume_file
        .and_then(|f| f.parent())
        .and_then(|dir| mount_holding(table, dir))
        .map(|m| m.dev);
    Ok(vec![
        check_swap(&areas, overrides),
        check_core_pattern(&pattern, &fs_of, overrides),
        check_ram_folders(table, &folders, overrides),
        check_host_disks(table, stick),
    ])
}

/// Turns unsafe findings into the error that refuses the command; warnings are returned.
pub(crate) fn enforce(findings: &[Finding]) -> Result<Vec<String>> {
    let refusals: Vec<String> = findings
        .iter()
        .filter(|f| f.verdict == Verdict::Unsafe)
        .map(|f| {
            format!(
                "{} (override: {})",
                f.message,
                f.override_flag.unwrap_or("none")
            )
        })
        .collect();
    if !refusals.is_empty() {
        return Err(Error::Unsafe(format!(
            "refusing to handle secrets on this host: {}",
            refusals.join("; ")
        )));
    }
    Ok(findings
        .iter()
        .filter(|f| matches!(f.verdict, Verdict::Warn | Verdict::Overridden))
        .map(|f| f.message.clone())
        .collect())
}

/// Classifies the device behind a swap area from sysfs.
fn swap_backing(path: &Path) -> SwapBacking {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let Ok(meta) = std::fs::metadata(path) else {
        return SwapBacking::Plain;
    };
    let dev = if meta.file_type().is_block_device() {
        meta.rdev()
    } else {
        meta.dev()
    };
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    let read = |rel: &str| {
        std::fs::read_to_string(sys.join(rel))
            .map(|s| s.trim().to_string())
            .ok()
    };
    if read("dm/uuid").is_some_and(|u| u.starts_with("CRYPT-")) {
        return SwapBacking::DmCrypt;
    }
    if let Some(backing) = read("backing_dev") {
        return if backing == "none" || backing.is_empty() {
            SwapBacking::ZramInRam
        } else {
            SwapBacking::ZramWriteback(backing)
        };
    }
    SwapBacking::Plain
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::mounts::parse_mountinfo;

    const NONE: Overrides = Overrides {
        unencrypted_swap: false,
        core_dump_handler: false,
        disk_backed_tmp: false,
    };

    #[test]
    fn parses_proc_swaps() {
        let text = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n/dev/sda2                               partition\t1048572\t\t0\t\t-2\n/swap\\040file file 1 0 -3\n";
        assert_eq!(
            parse_swaps(text),
            vec![PathBuf::from("/dev/sda2"), PathBuf::from("/swap file")]
        );
        assert!(parse_swaps("Filename Type Size Used Priority\n").is_empty());
    }

    #[test]
    fn swap_verdicts() {
        let area = |p: &str, b| SwapArea {
            path: p.into(),
            backing: b,
        };
        assert_eq!(check_swap(&[], &NONE).verdict, Verdict::Ok);
        assert_eq!(
            check_swap(
                &[
                    area("/dev/dm-1", SwapBacking::DmCrypt),
                    area("/dev/zram0", SwapBacking::ZramInRam)
                ],
                &NONE
            )
            .verdict,
            Verdict::Ok
        );
        let f = check_swap(&[area("/dev/sda2", SwapBacking::Plain)], &NONE);
        assert_eq!(f.verdict, Verdict::Unsafe);
        assert!(f.message.contains("/dev/sda2 (not encrypted)"));
        let f = check_swap(
            &[area(
                "/dev/zram0",
                SwapBacking::ZramWriteback("/dev/sda3".into()),
            )],
            &NONE,
        );
        assert_eq!(f.verdict, Verdict::Unsafe);
        let allowed = Overrides {
            unencrypted_swap: true,
            ..NONE
        };
        assert_eq!(
            check_swap(&[area("/dev/sda2", SwapBacking::Plain)], &allowed).verdict,
            Verdict::Overridden
        );
    }

    #[test]
    fn core_pattern_verdicts() {
        let disk = |_: &Path| Some("ext4".to_string());
        let ram = |_: &Path| Some("tmpfs".to_string());
        assert_eq!(
            check_core_pattern("core\n", &disk, &NONE).verdict,
            Verdict::Ok
        );
        assert_eq!(
            check_core_pattern("|/bin/false", &disk, &NONE).verdict,
            Verdict::Ok
        );
        assert_eq!(
            check_core_pattern("|/lib/systemd/systemd-coredump %P %u", &ram, &NONE).verdict,
            Verdict::Ok
        );
        let f = check_core_pattern("|/lib/systemd/systemd-coredump %P %u", &disk, &NONE);
        assert_eq!(f.verdict, Verdict::Unsafe);
        assert_eq!(f.override_flag, Some("--allow-core-dump-handler"));
        assert_eq!(
            check_core_pattern("|/usr/share/apport/apport %p", &ram, &NONE).verdict,
            Verdict::Unsafe
        );
        assert_eq!(
            check_core_pattern("/var/crash/core.%p", &disk, &NONE).verdict,
            Verdict::Unsafe
        );
        assert_eq!(
            check_core_pattern("/tmp/core.%p", &ram, &NONE).verdict,
            Verdict::Ok
        );
        let allowed = Overrides {
            core_dump_handler: true,
            ..NONE
        };
        assert_eq!(
            check_core_pattern("/var/crash/core", &disk, &allowed).verdict,
            Verdict::Overridden
        );
    }

    const LIVE: &str = "\
20 1 0:20 / / rw,noatime - overlay overlay rw,lowerdir=/run/live/rootfs/filesystem.squashfs/,upperdir=/run/live/overlay/rw,workdir=/run/live/overlay/work
21 20 0:21 / /run rw,nosuid,nodev - tmpfs tmpfs rw
22 21 0:22 / /run/live/overlay rw - tmpfs tmpfs rw
23 20 0:23 / /tmp rw - tmpfs tmpfs rw
30 20 8:1 / /media/disk rw,relatime - ext4 /dev/sda1 rw
31 20 8:2 / /media/ro ro,relatime - ext4 /dev/sda2 ro
";

    #[test]
    fn overlay_with_tmpfs_upper_stays_in_ram() {
        let t = parse_mountinfo(LIVE);
        assert!(stays_in_ram(&t, Path::new("/live/persistence")));
        assert!(stays_in_ram(&t, Path::new("/tmp/x")));
        assert!(!stays_in_ram(&t, Path::new("/media/disk/x")));
        let f = check_ram_folders(
            &t,
            &[Path::new("/tmp"), Path::new("/media/disk/tmp")],
            &NONE,
        );
        assert_eq!(f.verdict, Verdict::Unsafe);
        assert!(f.message.contains("/media/disk/tmp"));
    }

    #[test]
    fn overlay_with_disk_upper_does_not() {
        let t = parse_mountinfo(
            "20 1 8:1 / /mnt rw - ext4 /dev/sda1 rw\n21 1 0:20 / / rw - overlay overlay rw,upperdir=/mnt/upper,workdir=/mnt/work\n",
        );
        assert!(!stays_in_ram(&t, Path::new("/live")));
    }

    #[test]
    fn rw_disks_are_a_warning_only() {
        let t = parse_mountinfo(LIVE);
        let f = check_host_disks(&t, None);
        assert_eq!(f.verdict, Verdict::Warn);
        assert!(f.message.contains("/dev/sda1 on /media/disk"));
        assert!(!f.message.contains("sda2"));
    }

    #[test]
    fn kdf_memory_is_refused_only_beyond_what_is_available() {
        const GIB: u64 = 1 << 20;
        assert!(require_kdf_memory("unlocking v", GIB, Some(GIB)).is_ok());
        assert!(require_kdf_memory("unlocking v", 256 * 1024, Some(GIB + GIB / 2)).is_ok());
        assert!(
            require_kdf_memory("unlocking v", 4 * GIB, None).is_ok(),
            "unknown availability: left to the format's hard caps"
        );
        let err = crate::error::Error::from(
            require_kdf_memory("unlocking v", GIB, Some(700 * 1024)).unwrap_err(),
        );
        assert_eq!(err.exit_code(), crate::error::ExitCode::UnsafeHost);
        assert_eq!(
            err.to_string(),
            "unlocking v needs 1024 MiB of memory for its key derivation and this machine has 700 MiB available; free some memory or use a bigger machine (nothing was changed)"
        );
        let err = require_kdf_memory("x", GIB + 1, Some(GIB)).unwrap_err();
        assert!(
            err.to_string().contains("needs 1025 MiB"),
            "a need is rounded up: {err}"
        );
    }

    #[test]
    fn enforce_refuses_unsafe_and_passes_warnings() {
        let t = parse_mountinfo(LIVE);
        let warn = check_host_disks(&t, None);
        assert_eq!(enforce(std::slice::from_ref(&warn)).unwrap().len(), 1);
        let bad = check_swap(
            &[SwapArea {
                path: "/dev/sda2".into(),
                backing: SwapBacking::Plain,
            }],
            &NONE,
        );
        let err = crate::error::Error::from(enforce(&[warn, bad]).unwrap_err());
        assert_eq!(err.exit_code(), crate::error::ExitCode::UnsafeHost);
        assert!(err.to_string().contains("--allow-unencrypted-swap"));
    }
}
