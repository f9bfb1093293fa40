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
    pub(crate) fn is_luks(&self) -> bool {
        is_luks_uuid(&self.uuid)
    }
}

/// A device-mapper uuid that libcryptsetup gives a LUKS1 or LUKS2 mapping.
pub(crate) fn is_luks_uuid(uuid: &str) -> bool {
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

/// Every device-mapper mapping the kernel has, by kernel name.
pub(crate) fn all_mappings() -> Vec<Mapping> {
    mappings_in(&block_devices())
}

/// The kernel names of every block device (`/sys/block`): one listing, that a command
/// reads once and hands on (see [`crate::host::Snapshot`]).
pub(crate) fn block_devices() -> Vec<String> {
    list_dir(Path::new("/sys/block"))
}

/// The mappings among `block_devices`, read from their sysfs folders.
pub(crate) fn mappings_in(block_devices: &[String]) -> Vec<Mapping> {
    block_devices
        .iter()
        .filter(|k| k.starts_with("dm-"))
        .cloned()
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
pub(crate) fn loop_backing_file(kernel_name: &str) -> Option<PathBuf> {
    let path = Path::new("/sys/block")
        .join(kernel_name)
        .join("loop/backing_file");
    read_trimmed(&path).map(PathBuf::from)
}

/// The kernel's name (`loop0`, `sdb2`) of the block device numbered `dev`.
pub(crate) fn kernel_name_of(dev: (u32, u32)) -> Option<String> {
    fs::read_link(format!("/sys/dev/block/{}:{}", dev.0, dev.1))
        .ok()?
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
}

/// Loop devices whose backing file is `file`.
pub(crate) fn loops_backed_by(file: &Path) -> Vec<String> {
    loops_backed_by_in(&block_devices(), file)
}

/// Of `block_devices`, the loop devices whose backing file is `file`.
pub(crate) fn loops_backed_by_in(block_devices: &[String], file: &Path) -> Vec<String> {
    let wanted = fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
    block_devices
        .iter()
        .filter(|k| k.starts_with("loop"))
        .filter(|k| loop_backing_file(k).is_some_and(|b| b == wanted))
        .cloned()
        .collect()
}

/// Detaches a loop device (LOOP_CLR_FD). With autoclear set, the kernel finishes the
/// detach once the last user closes it.
pub(crate) fn detach_loop(kernel_name: &str) -> std::io::Result<()> {
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

/// A loop device this process attached, kept open: with autoclear set, the kernel
/// detaches it when the last user (this handle, then a mapping over it) lets go.
#[derive(Debug)]
pub(crate) struct AttachedLoop {
    /// `loop3`.
    pub name: String,
    _device: fs::File,
}

impl AttachedLoop {
    pub(crate) fn path(&self) -> PathBuf {
        dev_path(&self.name)
    }
}

/// `struct loop_info64` of <linux/loop.h>.
#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

/// `struct loop_config` of <linux/loop.h> (LOOP_CONFIGURE, Linux 5.8).
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// Attaches `file` to a free loop device with autoclear, as `losetup -f` would, so that
/// its name (`loopN`) is known before anything is built on it (live-boot names the
/// mapping of a container file after its loop device).
#[cfg(test)]
pub(crate) fn attach_loop(file: &Path) -> std::io::Result<AttachedLoop> {
    let backing = fs::OpenOptions::new().read(true).write(true).open(file)?;
    attach_loop_to(&backing, file)
}

/// Attaches the open file `backing` (read-write) to a free loop device with autoclear:
/// the loop device gets this very file, whatever its path `file` (shown in the loop
/// device's record) names by now.
pub(crate) fn attach_loop_to(backing: &fs::File, file: &Path) -> std::io::Result<AttachedLoop> {
    use std::os::fd::AsRawFd;
    const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
    const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
    const LO_FLAGS_AUTOCLEAR: u32 = 4;
    let control = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")?;
    // Another process may take the free device between the two calls: then try again.
    let mut last = std::io::Error::from_raw_os_error(libc::EBUSY);
    for _ in 0..8 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument; the descriptor is loop-control.
        let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let name = format!("loop{n}");
        let device = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dev_path(&name))?;
        let mut file_name = [0u8; 64];
        let shown = file.as_os_str().as_encoded_bytes();
        let len = shown.len().min(63);
        file_name[..len].copy_from_slice(&shown[..len]);
        let config = LoopConfig {
            fd: backing.as_raw_fd() as u32,
            block_size: 0,
            info: LoopInfo64 {
                device: 0,
                inode: 0,
                rdevice: 0,
                offset: 0,
                sizelimit: 0,
                number: 0,
                encrypt_type: 0,
                encrypt_key_size: 0,
                flags: LO_FLAGS_AUTOCLEAR,
                file_name,
                crypt_name: [0; 64],
                encrypt_key: [0; 32],
                init: [0; 2],
            },
            reserved: [0; 8],
        };
        // SAFETY: LOOP_CONFIGURE reads one loop_config, which lives across the call.
        let rc = unsafe { libc::ioctl(device.as_raw_fd(), LOOP_CONFIGURE, &config) };
        if rc == 0 {
            return Ok(AttachedLoop {
                name,
                _device: device,
            });
        }
        last = std::io::Error::last_os_error();
        if last.raw_os_error() != Some(libc::EBUSY) {
            return Err(last);
        }
    }
    Err(last)
}

/// The mapping (or other device) that holds the block device or container file at `path`
/// open, by name: `TailsData_unlocked` when the volume is unlocked.
pub(crate) fn holder_of(path: &Path) -> Option<String> {
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

/// The device number of the mapping called `name`, from its node in /dev/mapper: one
/// stat, no scan of the block devices.
pub(crate) fn mapping_dev(name: &str) -> Option<(u32, u32)> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = fs::metadata(Path::new("/dev/mapper").join(name)).ok()?;
    meta.file_type()
        .is_block_device()
        .then(|| (libc::major(meta.rdev()), libc::minor(meta.rdev())))
}

/// The one device under the mapping called `name` (`/dev/loop0`, `/dev/sdb2`), from its
/// node in /dev/mapper and its sysfs folder: no scan of the block devices. `None` when the
/// mapping is gone or sits on several devices.
pub(crate) fn device_under(name: &str) -> Option<PathBuf> {
    let (major, minor) = mapping_dev(name)?;
    let slaves = list_dir(&Path::new("/sys/dev/block").join(format!("{major}:{minor}/slaves")));
    match slaves.as_slice() {
        [one] => Some(dev_path(one)),
        _ => None,
    }
}

/// A block device a volume sits on, directly or not.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Under {
    /// `sdb2`, `sdb`, `loop0`.
    pub name: String,
    pub dev: (u32, u32),
}

/// What sysfs says of one block device, for [`stack_from`].
#[derive(Clone, Debug, Default)]
pub(crate) struct Node {
    pub name: String,
    /// The disk of a partition.
    pub disk: Option<(u32, u32)>,
    /// The devices a mapping sits on.
    pub slaves: Vec<(u32, u32)>,
    /// For a loop device: the device holding its backing file's filesystem.
    pub backing: Option<(u32, u32)>,
}

/// Every block device under `top` (not `top` itself): the devices under a mapping, the
/// disk of each partition, and for a loop device the device (and its disk…) that holds
/// its backing file. Whichever of them goes away takes the volume with it. Each once,
/// nearest first; `look` reads one device (from sysfs: [`stack_under`]).
pub(crate) fn stack_from(top: (u32, u32), look: impl Fn((u32, u32)) -> Option<Node>) -> Vec<Under> {
    let mut found: Vec<Under> = Vec::new();
    let mut queue: std::collections::VecDeque<(u32, u32)> = look(top)
        .map(|n| {
            n.slaves
                .into_iter()
                .chain(n.backing)
                .chain(n.disk)
                .collect()
        })
        .unwrap_or_default();
    while let Some(dev) = queue.pop_front() {
        // A filesystem without a block device (tmpfs: major 0) ends the chain.
        if dev.0 == 0 || dev == top || found.iter().any(|u| u.dev == dev) {
            continue;
        }
        let Some(node) = look(dev) else {
            continue;
        };
        queue.extend(
            node.slaves
                .iter()
                .copied()
                .chain(node.backing)
                .chain(node.disk),
        );
        found.push(Under {
            name: node.name,
            dev,
        });
    }
    found
}

/// [`stack_from`] as sysfs shows the devices now.
pub(crate) fn stack_under(top: (u32, u32)) -> Vec<Under> {
    stack_from(top, sysfs_node)
}

fn sysfs_node(dev: (u32, u32)) -> Option<Node> {
    let base = fs::canonicalize(format!("/sys/dev/block/{}:{}", dev.0, dev.1)).ok()?;
    let name = base.file_name()?.to_string_lossy().into_owned();
    let dev_of = |dir: &Path| read_trimmed(&dir.join("dev")).and_then(|t| parse_dev(&t));
    let disk = if base.join("partition").exists() {
        base.parent().and_then(dev_of)
    } else {
        None
    };
    let slaves = list_dir(&base.join("slaves"))
        .iter()
        .filter_map(|s| dev_of(&Path::new("/sys/class/block").join(s)))
        .collect();
    let backing = if name.starts_with("loop") {
        loop_backing_dev(&name)
    } else {
        None
    };
    Some(Node {
        name,
        disk,
        slaves,
        backing,
    })
}

/// The device of the filesystem holding a loop device's backing file, as the loop
/// driver recorded it when the file was attached (`lo_device`): exact, where the file's
/// path in sysfs may no longer lead to it.
fn loop_backing_dev(kernel_name: &str) -> Option<(u32, u32)> {
    use std::os::fd::AsRawFd;
    const LOOP_GET_STATUS64: libc::c_ulong = 0x4C05;
    let device = fs::File::open(dev_path(kernel_name)).ok()?;
    // SAFETY: LoopInfo64 is plain data; zeroed is a valid value.
    let mut info: LoopInfo64 = unsafe { std::mem::zeroed() };
    // SAFETY: LOOP_GET_STATUS64 fills one loop_info64, which lives across the call.
    let rc = unsafe { libc::ioctl(device.as_raw_fd(), LOOP_GET_STATUS64, &mut info) };
    if rc < 0 {
        return None;
    }
    // huge_encode_dev, undone.
    let d = info.device;
    Some((
        ((d & 0xfff00) >> 8) as u32,
        ((d & 0xff) | ((d >> 12) & 0xfff00)) as u32,
    ))
}

/// `/dev/<kernel name>` for a device under a mapping.
pub(crate) fn dev_path(kernel_name: &str) -> PathBuf {
    Path::new("/dev").join(kernel_name)
}

/// The one of `candidates` a search found, `None` when it found none; when it found
/// several, the refusal that lists them: `several` says what they are ("several container
/// files named persistence"), `choose` how to name one ("--image").
pub(crate) fn the_only_one(
    candidates: &[PathBuf],
    several: &str,
    choose: &str,
) -> Result<Option<PathBuf>, super::Error> {
    match candidates {
        [] => Ok(None),
        [one] => Ok(Some(one.clone())),
        many => Err(super::Error::Ambiguous(format!(
            "{several}: {}; choose one with {choose}",
            many.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
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
    fn loop_structs_have_the_kernels_sizes() {
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 304);
    }

    #[test]
    fn an_attached_loop_is_named_and_goes_away_with_its_last_user() {
        assert!(nix::unistd::geteuid().is_root(), "this test needs root");
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().canonicalize().unwrap().join("persistence");
        fs::write(&file, vec![0u8; 1 << 20]).unwrap();
        let lo = attach_loop(&file).unwrap();
        assert!(lo.name.starts_with("loop"), "{}", lo.name);
        assert_eq!(loop_backing_file(&lo.name), Some(file.clone()));
        assert_eq!(loops_backed_by(&file), vec![lo.name.clone()]);
        let autoclear = Path::new("/sys/block")
            .join(&lo.name)
            .join("loop/autoclear");
        assert_eq!(read_trimmed(&autoclear).as_deref(), Some("1"));
        drop(lo);
        // The kernel detaches it once released (asynchronously on some kernels).
        let gone = (0..50).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(20));
            loops_backed_by(&file).is_empty()
        });
        assert!(gone, "autoclear detached it");
    }

    #[test]
    fn the_stack_under_a_volume_reaches_every_device_it_needs() {
        // TailsData_unlocked (253:0) on sdb2 (8:18), partition of sdb (8:16).
        let on_partition = |dev| match dev {
            (253, 0) => Some(Node {
                name: "dm-0".into(),
                slaves: vec![(8, 18)],
                ..Node::default()
            }),
            (8, 18) => Some(Node {
                name: "sdb2".into(),
                disk: Some((8, 16)),
                ..Node::default()
            }),
            (8, 16) => Some(Node {
                name: "sdb".into(),
                ..Node::default()
            }),
            _ => None,
        };
        let names = |v: Vec<Under>| v.into_iter().map(|u| u.name).collect::<Vec<_>>();
        assert_eq!(names(stack_from((253, 0), on_partition)), ["sdb2", "sdb"]);
        // A container file on a second stick's partition (sdc1), through loop0; and one
        // on tmpfs (device 0:35), where the chain ends at the loop device.
        let on_file = |backing| {
            move |dev| match dev {
                (253, 1) => Some(Node {
                    name: "dm-1".into(),
                    slaves: vec![(7, 0)],
                    ..Node::default()
                }),
                (7, 0) => Some(Node {
                    name: "loop0".into(),
                    backing: Some(backing),
                    ..Node::default()
                }),
                (8, 33) => Some(Node {
                    name: "sdc1".into(),
                    disk: Some((8, 32)),
                    ..Node::default()
                }),
                (8, 32) => Some(Node {
                    name: "sdc".into(),
                    ..Node::default()
                }),
                _ => None,
            }
        };
        assert_eq!(
            names(stack_from((253, 1), on_file((8, 33)))),
            ["loop0", "sdc1", "sdc"]
        );
        assert_eq!(names(stack_from((253, 1), on_file((0, 35)))), ["loop0"]);
        // A loop that leads back to itself is followed once.
        let cycle = |dev| match dev {
            (253, 2) => Some(Node {
                name: "dm-2".into(),
                slaves: vec![(7, 1)],
                ..Node::default()
            }),
            (7, 1) => Some(Node {
                name: "loop1".into(),
                backing: Some((253, 2)),
                ..Node::default()
            }),
            _ => None,
        };
        assert_eq!(names(stack_from((253, 2), cycle)), ["loop1"]);
    }

    #[test]
    fn unknown_mapping_is_none() {
        assert!(
            all_mappings()
                .iter()
                .all(|m| m.name != "keepsake-test-no-such-mapping")
        );
    }
}
