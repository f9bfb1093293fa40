//! Device-mapper spoken to directly, through the ioctls of <linux/dm-ioctl.h> on
//! /dev/mapper/control: the few operations that wipe a volume's key when its stick is
//! gone. No library and no program: the watcher's wipe path must not read a file from a
//! disk that may be the one pulled out (libdevmapper would, and cryptsetup is a program),
//! and none of these needs the LUKS header or a passphrase.
//!
//! The wipe is `cryptsetup luksSuspend`'s (suspend without flushing, then the target's
//! "key wipe" message), followed by what `dmsetup wipe_table` does: an `error` table put in
//! place of the crypt one and the device resumed, so that what was queued and whatever
//! comes next fails at once instead of waiting forever on a suspended device (a process
//! blocked there could never be ended, and the mapping never removed).

use std::fs::File;
use std::os::fd::AsRawFd;

/// A device-mapper device, by number: a name can be reused, a number names this device
/// until it is removed.
pub type DevNum = (u32, u32);

const DM_NAME_LEN: usize = 128;
const DM_UUID_LEN: usize = 129;
const DM_MAX_TYPE_NAME: usize = 16;

/// `struct dm_ioctl`.
#[repr(C)]
#[derive(Clone, Copy)]
struct DmIoctl {
    version: [u32; 3],
    data_size: u32,
    data_start: u32,
    target_count: u32,
    open_count: i32,
    flags: u32,
    event_nr: u32,
    padding: u32,
    dev: u64,
    name: [u8; DM_NAME_LEN],
    uuid: [u8; DM_UUID_LEN],
    data: [u8; 7],
}

/// `struct dm_target_spec`.
#[repr(C)]
#[derive(Clone, Copy)]
struct DmTargetSpec {
    sector_start: u64,
    length: u64,
    status: i32,
    next: u32,
    target_type: [u8; DM_MAX_TYPE_NAME],
}

const DM_IOCTL: u8 = 0xfd;
const DM_DEV_REMOVE_CMD: u8 = 4;
const DM_DEV_SUSPEND_CMD: u8 = 6;
const DM_DEV_STATUS_CMD: u8 = 7;
const DM_TABLE_LOAD_CMD: u8 = 9;
const DM_TARGET_MSG_CMD: u8 = 14;

const DM_SUSPEND_FLAG: u32 = 1 << 1;
const DM_SKIP_LOCKFS_FLAG: u32 = 1 << 10;
const DM_NOFLUSH_FLAG: u32 = 1 << 11;
/// The kernel wipes its own buffers of this call (a message may carry key material).
const DM_SECURE_DATA_FLAG: u32 = 1 << 15;
const DM_DEFERRED_REMOVE: u32 = 1 << 17;

/// The interface version asked for: 4.0.0, which every kernel with dm-crypt speaks.
const VERSION: [u32; 3] = [4, 0, 0];

/// `_IOWR(DM_IOCTL, cmd, struct dm_ioctl)`.
const fn request(cmd: u8) -> libc::c_ulong {
    const IOC_READ_WRITE: libc::c_ulong = 3;
    (IOC_READ_WRITE << 30)
        | ((std::mem::size_of::<DmIoctl>() as libc::c_ulong) << 16)
        | ((DM_IOCTL as libc::c_ulong) << 8)
        | cmd as libc::c_ulong
}

/// The kernel's `huge_encode_dev`: how `dm_ioctl.dev` carries a device number.
fn encode_dev((major, minor): DevNum) -> u64 {
    u64::from(minor & 0xff) | (u64::from(major) << 8) | (u64::from(minor & !0xff) << 12)
}

/// One ioctl's buffer: the header, then `payload` at an 8-byte boundary.
fn buffer(dev: DevNum, flags: u32, target_count: u32, payload: &[u8]) -> Vec<u64> {
    let header = std::mem::size_of::<DmIoctl>();
    let start = header.next_multiple_of(8);
    let size = (start + payload.len()).next_multiple_of(8);
    let mut words = vec![0u64; size / 8];
    let io = DmIoctl {
        version: VERSION,
        data_size: size as u32,
        data_start: start as u32,
        target_count,
        open_count: 0,
        flags,
        event_nr: 0,
        padding: 0,
        dev: encode_dev(dev),
        name: [0; DM_NAME_LEN],
        uuid: [0; DM_UUID_LEN],
        data: [0; 7],
    };
    // SAFETY: `words` holds at least `size` bytes, 8-aligned; DmIoctl is plain data and
    // fits before `start`, the payload after it.
    unsafe {
        let bytes = words.as_mut_ptr().cast::<u8>();
        std::ptr::write_unaligned(bytes.cast::<DmIoctl>(), io);
        std::ptr::copy_nonoverlapping(payload.as_ptr(), bytes.add(start), payload.len());
    }
    words
}

/// The control device, opened once and kept: opening it later may not be possible.
pub struct Control(File);

impl Control {
    pub fn open() -> std::io::Result<Control> {
        Ok(Control(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/mapper/control")?,
        ))
    }

    fn call(&self, cmd: u8, words: &mut [u64]) -> std::io::Result<()> {
        // SAFETY: `words` is a dm_ioctl buffer whose data_size is its length; the kernel
        // reads and writes within it.
        let rc = unsafe { libc::ioctl(self.0.as_raw_fd(), request(cmd), words.as_mut_ptr()) };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Whether device `dev` still exists.
    pub fn exists(&self, dev: DevNum) -> std::io::Result<bool> {
        match self.call(DM_DEV_STATUS_CMD, &mut buffer(dev, 0, 0, &[])) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Suspends `dev` without flushing and without freezing its filesystem: what is
    /// queued stays queued (the stick it would go to may be gone), nothing waits for it.
    pub fn suspend_now(&self, dev: DevNum) -> std::io::Result<()> {
        let flags = DM_SUSPEND_FLAG | DM_NOFLUSH_FLAG | DM_SKIP_LOCKFS_FLAG;
        self.call(DM_DEV_SUSPEND_CMD, &mut buffer(dev, flags, 0, &[]))
    }

    /// Resumes `dev`, with the table loaded since it was suspended, if any.
    pub fn resume(&self, dev: DevNum) -> std::io::Result<()> {
        let flags = DM_NOFLUSH_FLAG | DM_SKIP_LOCKFS_FLAG;
        self.call(DM_DEV_SUSPEND_CMD, &mut buffer(dev, flags, 0, &[]))
    }

    /// dm-crypt's "key wipe" message, to a suspended device: the target overwrites its
    /// key (and drops the name of a keyring key). `cryptsetup luksSuspend` sends the same.
    pub fn wipe_key(&self, dev: DevNum) -> std::io::Result<()> {
        self.call(
            DM_TARGET_MSG_CMD,
            &mut buffer(dev, DM_SECURE_DATA_FLAG, 0, &target_message(0, "key wipe")),
        )
    }

    /// Loads an `error` table of `sectors` as `dev`'s next table (it takes effect at the
    /// next resume).
    pub fn load_error_table(&self, dev: DevNum, sectors: u64) -> std::io::Result<()> {
        self.call(
            DM_TABLE_LOAD_CMD,
            &mut buffer(dev, 0, 1, &target_spec(sectors, "error", "")),
        )
    }

    /// Removes `dev`; when something still holds it, the kernel removes it the moment
    /// the last holder lets go. Returns whether it is gone now.
    pub fn remove_when_free(&self, dev: DevNum) -> std::io::Result<bool> {
        match self.call(
            DM_DEV_REMOVE_CMD,
            &mut buffer(dev, DM_DEFERRED_REMOVE, 0, &[]),
        ) {
            Ok(()) => self.exists(dev).map(|there| !there),
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok(true),
            Err(e) => Err(e),
        }
    }
}

/// `struct dm_target_msg` with its message: the sector that picks the target, then the
/// text, NUL-terminated.
fn target_message(sector: u64, message: &str) -> Vec<u8> {
    let mut bytes = sector.to_ne_bytes().to_vec();
    bytes.extend_from_slice(message.as_bytes());
    bytes.push(0);
    bytes
}

/// One `struct dm_target_spec` covering `sectors` from sector 0, with its parameters.
fn target_spec(sectors: u64, target_type: &str, params: &str) -> Vec<u8> {
    let mut name = [0u8; DM_MAX_TYPE_NAME];
    name[..target_type.len()].copy_from_slice(target_type.as_bytes());
    let spec = DmTargetSpec {
        sector_start: 0,
        length: sectors,
        status: 0,
        next: 0,
        target_type: name,
    };
    let mut bytes = vec![0u8; std::mem::size_of::<DmTargetSpec>()];
    // SAFETY: `bytes` is exactly one DmTargetSpec long; it is plain data.
    unsafe { std::ptr::write_unaligned(bytes.as_mut_ptr().cast::<DmTargetSpec>(), spec) };
    bytes.extend_from_slice(params.as_bytes());
    bytes.push(0);
    bytes
}

/// The size in 512-byte sectors of block device `dev`, from sysfs (not the table: the
/// table of a crypt target holds its key).
pub fn sectors(dev: DevNum) -> std::io::Result<u64> {
    let text = std::fs::read_to_string(format!("/sys/dev/block/{}:{}/size", dev.0, dev.1))?;
    text.trim()
        .parse()
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "bad size in sysfs"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structs_have_the_kernels_sizes() {
        // <linux/dm-ioctl.h> on x86_64: sizeof(struct dm_ioctl) == 312,
        // sizeof(struct dm_target_spec) == 40.
        assert_eq!(std::mem::size_of::<DmIoctl>(), 312);
        assert_eq!(std::mem::size_of::<DmTargetSpec>(), 40);
    }

    #[test]
    fn requests_are_the_kernels_numbers() {
        // DM_DEV_SUSPEND and DM_TARGET_MSG as strace shows them for cryptsetup luksSuspend.
        assert_eq!(request(DM_DEV_SUSPEND_CMD), 0xc138fd06);
        assert_eq!(request(DM_TARGET_MSG_CMD), 0xc138fd0e);
        assert_eq!(request(DM_TABLE_LOAD_CMD), 0xc138fd09);
        assert_eq!(request(DM_DEV_REMOVE_CMD), 0xc138fd04);
    }

    #[test]
    fn device_numbers_are_encoded_as_the_kernel_decodes_them() {
        assert_eq!(encode_dev((253, 0)), 0xfd00);
        assert_eq!(encode_dev((253, 3)), 0xfd03);
        // A minor above 255 keeps its high bits above the major.
        assert_eq!(encode_dev((254, 0x1234)), 0x120_fe34);
    }

    #[test]
    fn a_message_buffer_holds_the_header_then_the_message() {
        let words = buffer(
            (253, 1),
            DM_SECURE_DATA_FLAG,
            0,
            &target_message(0, "key wipe"),
        );
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let header: DmIoctl = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        assert_eq!(header.version, [4, 0, 0]);
        assert_eq!(header.data_start, 312);
        assert_eq!(header.data_size as usize, bytes.len());
        assert_eq!(header.dev, 0xfd01);
        assert_eq!(header.flags, DM_SECURE_DATA_FLAG);
        assert_eq!(&bytes[312..320], &0u64.to_ne_bytes());
        assert_eq!(&bytes[320..329], b"key wipe\0");
    }

    #[test]
    fn a_table_buffer_holds_one_target() {
        let words = buffer((253, 1), 0, 1, &target_spec(2048, "error", ""));
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let spec: DmTargetSpec = unsafe { std::ptr::read_unaligned(bytes[312..].as_ptr().cast()) };
        assert_eq!(spec.length, 2048);
        assert_eq!(&spec.target_type[..6], b"error\0");
        assert_eq!(bytes[352], 0, "empty parameters, NUL-terminated");
    }
}
