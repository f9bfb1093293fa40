//! Block devices as sysfs shows them: device-mapper mappings, loop devices and what backs
//! them. Read-only, and usable without device-mapper support (it then finds nothing).

use std::fs;
use std::path::{Path, PathBuf};

/// A device-mapper mapping that exists in the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub name: String,
    /// Kernel name, e.g. `dm-0`.
    pub kernel_name: String,
    pub dev: (u32, u32),
    /// Kernel names of the devices under it, e.g. `loop0` or `sdb2`.
    pub slaves: Vec<String>,
    /// The device-mapper uuid: `CRYPT-LUKS2-<uuid>-<name>` for a LUKS mapping.
    pub uuid: String,
}

impl Mapping {
    /// Whether dm-crypt opened it from a LUKS header (the uuid libcryptsetup and the
    /// cryptsetup tool give a LUKS mapping): a name alone proves nothing.
    pub fn is_luks(&self) -> bool {
        is_luks_uuid(&self.uuid)
    }
}

/// A device-mapper uuid that libcryptsetup gives a LUKS1 or LUKS2 mapping.
pub fn is_luks_uuid(uuid: &str) -> bool {
    uuid.starts_with("CRYPT-LUKS2-") || uuid.starts_with("CRYPT-LUKS1-")
}

fn read_trimmed(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

fn parse_dev(text: &str) -> Option<(u32, u32)> {
    let (a, b) = text.trim().split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

fn list_dir(path: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(path)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Finds the mapping called `name`, if the kernel has one.
pub fn find_mapping(name: &str) -> Option<Mapping> {
    all_mappings().into_iter().find(|m| m.name == name)
}

/// Every device-mapper mapping the kernel has, by kernel name.
pub fn all_mappings() -> Vec<Mapping> {
    list_dir(Path::new("/sys/block"))
        .into_iter()
        .filter(|k| k.starts_with("dm-"))
        .filter_map(|kernel_name| {
            let base = Path::new("/sys/block").join(&kernel_name);
            Some(Mapping {
                name: read_trimmed(&base.join("dm/name"))?,
                uuid: read_trimmed(&base.join("dm/uuid")).unwrap_or_default(),
                dev: parse_dev(&read_trimmed(&base.join("dev"))?)?,
                slaves: list_dir(&base.join("slaves")),
                kernel_name,
            })
        })
        .collect()
}

/// The file behind a loop device (`loop0`), if it is attached.
pub fn loop_backing_file(kernel_name: &str) -> Option<PathBuf> {
    let path = Path::new("/sys/block")
        .join(kernel_name)
        .join("loop/backing_file");
    read_trimmed(&path).map(PathBuf::from)
}

/// Loop devices whose backing file is `file`.
pub fn loops_backed_by(file: &Path) -> Vec<String> {
    let wanted = fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
    list_dir(Path::new("/sys/block"))
        .into_iter()
        .filter(|k| k.starts_with("loop"))
        .filter(|k| loop_backing_file(k).is_some_and(|b| b == wanted))
        .collect()
}

/// Detaches a loop device (LOOP_CLR_FD). With autoclear set, the kernel finishes the
/// detach once the last user closes it.
pub fn detach_loop(kernel_name: &str) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
    let dev = fs::OpenOptions::new()
        .read(true)
        .open(Path::new("/dev").join(kernel_name))?;
    // SAFETY: LOOP_CLR_FD takes no argument and the descriptor is a loop device we opened.
    let rc = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CLR_FD, 0) };
    if rc < 0 {
        let err = std::io::Error::last_os_error();
        // ENXIO: not attached (any more).
        if err.raw_os_error() != Some(libc::ENXIO) {
            return Err(err);
        }
    }
    Ok(())
}

/// The mapping (or other device) that holds the block device or container file at `path`
/// open, by name: `TailsData_unlocked` when the volume is unlocked.
pub fn holder_of(path: &Path) -> Option<String> {
    let meta = fs::metadata(path).ok()?;
    let kernel_names = if meta.is_file() {
        loops_backed_by(path)
    } else {
        let real = fs::canonicalize(path).ok()?;
        vec![real.file_name()?.to_string_lossy().into_owned()]
    };
    kernel_names.iter().find_map(|k| {
        let holder = list_dir(&Path::new("/sys/class/block").join(k).join("holders"))
            .into_iter()
            .next()?;
        Some(read_trimmed(&Path::new("/sys/block").join(&holder).join("dm/name")).unwrap_or(holder))
    })
}

/// `/dev/<kernel name>` for a device under a mapping.
pub fn dev_path(kernel_name: &str) -> PathBuf {
    Path::new("/dev").join(kernel_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_major_minor() {
        assert_eq!(parse_dev("254:3\n"), Some((254, 3)));
        assert_eq!(parse_dev("nonsense"), None);
    }

    #[test]
    fn only_luks_uuids_count_as_luks() {
        assert!(is_luks_uuid("CRYPT-LUKS2-0123abcd-sdb2"));
        assert!(is_luks_uuid("CRYPT-LUKS1-0123abcd-TailsData_unlocked"));
        assert!(!is_luks_uuid("CRYPT-PLAIN-sdb2"));
        assert!(!is_luks_uuid("LVM-abc"));
        assert!(!is_luks_uuid(""));
    }

    #[test]
    fn unknown_mapping_is_none() {
        assert!(find_mapping("keepsake-test-no-such-mapping").is_none());
    }
}
