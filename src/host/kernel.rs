//! Whether the running kernel can open a dm-crypt volume: device-mapper and its `crypt`
//! target, loaded or loadable. Asked before any secret is read by the commands that open a
//! mapping (create, unlock, check, repair), so that a kernel without them is named as the
//! problem, with what to do, instead of a bare "Operation not supported" after the
//! passphrase and, for create, after the container file was formatted.
//!
//! The keyslot commands (passphrase, recovery-key, upgrade, delete) do not ask: Debian's
//! libcryptsetup encrypts keyslots in user space and opens no mapping for them.

use std::path::Path;

use super::{Error, Result};

/// Whether a kernel module exists for the running kernel, by `modules.builtin` and
/// `modules.dep` in `/lib/modules/$(uname -r)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Module {
    /// Compiled into the kernel.
    BuiltIn,
    /// A module file the kernel loads on demand: opening `/dev/mapper/control` loads
    /// `dm_mod`, and creating a `crypt` table loads `dm_crypt`.
    Loadable,
    /// Neither (or no module folder for this kernel at all).
    Absent,
}

/// What is known of this kernel's device-mapper. Gathered by [`DmFacts::read`]; judged by
/// [`missing`], which is pure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DmFacts {
    /// `/proc/misc` lists `device-mapper`: the driver is loaded (or built in).
    pub dm_loaded: bool,
    /// The target types the loaded driver has (`DM_LIST_VERSIONS`); `None` when it is not
    /// loaded or could not be asked.
    pub targets: Option<Vec<String>>,
    pub dm_mod: Module,
    pub dm_crypt: Module,
}

/// What the kernel lacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Missing {
    DeviceMapper,
    DmCrypt,
}

/// Judges the facts. Only what is known to be missing is reported: a loaded driver that
/// could not be asked for its targets is given the benefit of the doubt (libcryptsetup
/// then reports whatever goes wrong itself).
///
/// `/dev/mapper/control` is deliberately not a fact: libdevmapper creates the node when it
/// is missing, and a node can exist without a driver behind it (a container's /dev).
pub(crate) fn missing(facts: &DmFacts) -> Option<Missing> {
    if !facts.dm_loaded && facts.dm_mod == Module::Absent {
        return Some(Missing::DeviceMapper);
    }
    let listed = facts
        .targets
        .as_ref()
        .map(|t| t.iter().any(|name| name == "crypt"));
    match (listed, facts.dm_crypt) {
        (Some(true), _) => None,
        (_, Module::BuiltIn | Module::Loadable) => None,
        // The driver answered without `crypt`, and no module would add it.
        (Some(false), Module::Absent) => Some(Missing::DmCrypt),
        // Loadable device-mapper, but no dm-crypt module for it (dm-crypt cannot be built
        // in when device-mapper is a module).
        (None, Module::Absent) if !facts.dm_loaded => Some(Missing::DmCrypt),
        (None, Module::Absent) => None,
    }
}

/// The refusal for `doing` ("unlocking a volume") on a kernel that lacks `what`.
pub(crate) fn refusal(what: Missing, doing: &str, kernel: &str) -> Error {
    let lacks = match what {
        Missing::DeviceMapper => "device-mapper",
        Missing::DmCrypt => "dm-crypt (device-mapper's crypt target)",
    };
    Error::Unsafe(format!(
        "{doing} needs the kernel's device-mapper with dm-crypt, and this kernel ({kernel}) has no {lacks}: \
         it is not loaded and /lib/modules/{kernel} has no module for it; install the module and load it \
         (`modprobe dm_crypt`, as root), or run keepsake on the live system, whose kernel has it; \
         nothing was changed"
    ))
}

/// Refuses, before anything else happens, when this kernel cannot open a dm-crypt mapping.
pub(crate) fn require_dm_crypt(doing: &str) -> Result<()> {
    let facts = DmFacts::read();
    match missing(&facts) {
        None => Ok(()),
        Some(what) => Err(refusal(what, doing, &kernel_release())),
    }
}

fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into())
}

impl DmFacts {
    /// Reads the running system's facts. Never loads a module: the control node is opened
    /// only when `/proc/misc` shows the driver loaded already.
    pub(crate) fn read() -> DmFacts {
        let misc = std::fs::read_to_string("/proc/misc").unwrap_or_default();
        let dm_loaded = misc_lists_dm(&misc);
        let targets = if dm_loaded { list_targets().ok() } else { None };
        let dir = Path::new("/lib/modules").join(kernel_release());
        let builtin = std::fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
        let dep = std::fs::read_to_string(dir.join("modules.dep")).unwrap_or_default();
        DmFacts {
            dm_loaded,
            targets,
            dm_mod: module_state("dm_mod", &builtin, &dep),
            dm_crypt: module_state("dm_crypt", &builtin, &dep),
        }
    }
}

/// Whether `/proc/misc` (lines of "MINOR NAME") lists the device-mapper control device.
pub(crate) fn misc_lists_dm(misc: &str) -> bool {
    misc.lines()
        .any(|l| l.split_whitespace().nth(1) == Some("device-mapper"))
}

/// Looks `name` (`dm_crypt`; dashes and underscores are the same to the kernel) up in the
/// text of `modules.builtin` and `modules.dep`.
pub(crate) fn module_state(name: &str, builtin: &str, dep: &str) -> Module {
    let is_it = |path: &str| {
        let file = path.rsplit('/').next().unwrap_or(path);
        let stem = file.split(".ko").next().unwrap_or(file);
        stem.replace('-', "_") == name.replace('-', "_")
    };
    if builtin.lines().any(|l| is_it(l.trim())) {
        Module::BuiltIn
    } else if dep
        .lines()
        .filter_map(|l| l.split(':').next())
        .any(|p| is_it(p.trim()))
    {
        Module::Loadable
    } else {
        Module::Absent
    }
}

/// The size of `struct dm_ioctl` (linux/dm-ioctl.h), where its data area starts.
const DM_IOCTL_SIZE: usize = 312;
/// `DM_BUFFER_FULL_FLAG`: the answer did not fit.
const DM_BUFFER_FULL: u32 = 1 << 8;

/// The target types of the loaded device-mapper (`DM_LIST_VERSIONS`, as `dmsetup targets`).
fn list_targets() -> std::io::Result<Vec<String>> {
    use std::os::fd::AsRawFd;
    let control = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/mapper/control")?;
    let request = nix::request_code_readwrite!(0xfd, 13, DM_IOCTL_SIZE);
    let mut words = 2048usize;
    loop {
        // u64 words: the kernel's structures in the buffer are 8-byte aligned.
        let mut buf = vec![0u64; words];
        let size = words * 8;
        {
            // SAFETY: u64 to bytes, same allocation, length in bytes.
            let bytes =
                unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<u8>(), size) };
            write_header(bytes, size);
        }
        // SAFETY: the buffer is `size` bytes, as its header says, and lives across the call.
        let rc = unsafe { libc::ioctl(control.as_raw_fd(), request as _, buf.as_mut_ptr()) };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: as above.
        let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), size) };
        let flags = u32_at(bytes, 28).unwrap_or(0);
        if flags & DM_BUFFER_FULL != 0 && words < 1 << 20 {
            words *= 4;
            continue;
        }
        return Ok(parse_targets(bytes));
    }
}

/// The request header: interface version 4.0.0, the buffer's size, data right after it.
fn write_header(bytes: &mut [u8], size: usize) {
    let put = |b: &mut [u8], at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
    put(bytes, 0, 4);
    put(bytes, 4, 0);
    put(bytes, 8, 0);
    put(bytes, 12, u32::try_from(size).unwrap_or(u32::MAX));
    put(bytes, 16, DM_IOCTL_SIZE as u32);
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// Parses the answer to `DM_LIST_VERSIONS`: after the header, at `data_start`, a chain of
/// `struct dm_target_versions { u32 next; u32 version[3]; char name[]; }`, each `next`
/// the offset to the following one, 0 on the last. Anything out of bounds ends the list.
pub(crate) fn parse_targets(bytes: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    let (Some(data_size), Some(start)) = (u32_at(bytes, 12), u32_at(bytes, 16)) else {
        return names;
    };
    let end = (data_size as usize).min(bytes.len());
    let mut at = start as usize;
    while at + 16 < end {
        let Some(next) = u32_at(bytes, at) else { break };
        let name = &bytes[at + 16..end];
        let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
        names.push(String::from_utf8_lossy(name).into_owned());
        if next == 0 {
            break;
        }
        at += next as usize;
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(
        dm_loaded: bool,
        targets: Option<&[&str]>,
        dm_mod: Module,
        dm_crypt: Module,
    ) -> DmFacts {
        DmFacts {
            dm_loaded,
            targets: targets.map(|t| t.iter().map(|s| s.to_string()).collect()),
            dm_mod,
            dm_crypt,
        }
    }
    use Module::{Absent, BuiltIn, Loadable};

    #[test]
    fn a_loaded_crypt_target_is_enough() {
        // The test VM: modules inserted by hand, no module folder for the kernel.
        let f = facts(true, Some(&["striped", "crypt", "linear"]), Absent, Absent);
        assert_eq!(missing(&f), None);
    }

    #[test]
    fn loadable_modules_are_enough() {
        // A stock Debian live system before anything opened device-mapper.
        assert_eq!(missing(&facts(false, None, Loadable, Loadable)), None);
        // Device-mapper loaded (by LVM, say), dm-crypt not yet: loaded on the first table.
        let f = facts(
            true,
            Some(&["striped", "linear", "error"]),
            Loadable,
            Loadable,
        );
        assert_eq!(missing(&f), None);
        // Everything built in.
        assert_eq!(
            missing(&facts(true, Some(&["crypt"]), BuiltIn, BuiltIn)),
            None
        );
    }

    #[test]
    fn no_device_mapper_at_all() {
        // This build host: a control node, but no driver in /proc/misc and no module tree.
        assert_eq!(
            missing(&facts(false, None, Absent, Absent)),
            Some(Missing::DeviceMapper)
        );
        // A dm-crypt module without device-mapper cannot help.
        assert_eq!(
            missing(&facts(false, None, Absent, Loadable)),
            Some(Missing::DeviceMapper)
        );
    }

    #[test]
    fn device_mapper_without_crypt() {
        let f = facts(true, Some(&["striped", "linear"]), BuiltIn, Absent);
        assert_eq!(missing(&f), Some(Missing::DmCrypt));
        assert_eq!(
            missing(&facts(false, None, Loadable, Absent)),
            Some(Missing::DmCrypt)
        );
    }

    #[test]
    fn a_driver_that_cannot_be_asked_is_not_refused() {
        assert_eq!(missing(&facts(true, None, Absent, Absent)), None);
    }

    #[test]
    fn proc_misc() {
        assert!(misc_lists_dm(" 58 device-mapper\n237 loop-control\n"));
        assert!(!misc_lists_dm("237 loop-control\n229 fuse\n"));
        assert!(!misc_lists_dm("58 device-mapper-ish\n"));
    }

    #[test]
    fn modules_by_name_whatever_the_compression() {
        let builtin = "kernel/drivers/md/dm-mod.ko\nkernel/fs/ext4/ext4.ko\n";
        let dep = "kernel/drivers/md/dm-crypt.ko.xz: kernel/drivers/md/dm-mod.ko.xz\n\
                   kernel/drivers/md/dm-cryptx.ko: \n";
        assert_eq!(module_state("dm_mod", builtin, dep), BuiltIn);
        assert_eq!(module_state("dm_crypt", builtin, dep), Loadable);
        assert_eq!(
            module_state("dm-crypt", "", "kernel/drivers/md/dm-crypt.ko.zst:\n"),
            Loadable
        );
        assert_eq!(
            module_state("dm_crypt", builtin, "kernel/drivers/md/dm-cryptx.ko:\n"),
            Absent
        );
        assert_eq!(module_state("dm_crypt", "", ""), Absent);
    }

    /// An answer laid out as the kernel lays it out.
    fn answer(names: &[&str]) -> Vec<u8> {
        let mut b = vec![0u8; DM_IOCTL_SIZE];
        let mut at = DM_IOCTL_SIZE;
        for (i, name) in names.iter().enumerate() {
            let len = (16 + name.len() + 1).next_multiple_of(8);
            b.resize(at + len, 0);
            let next = if i + 1 == names.len() { 0 } else { len as u32 };
            b[at..at + 4].copy_from_slice(&next.to_ne_bytes());
            b[at + 4..at + 8].copy_from_slice(&1u32.to_ne_bytes());
            b[at + 16..at + 16 + name.len()].copy_from_slice(name.as_bytes());
            at += len;
        }
        let size = b.len() as u32;
        b[12..16].copy_from_slice(&size.to_ne_bytes());
        b[16..20].copy_from_slice(&(DM_IOCTL_SIZE as u32).to_ne_bytes());
        b.resize(b.len() + 64, 0xff); // the rest of the caller's buffer
        b
    }

    #[test]
    fn parses_the_target_list() {
        assert_eq!(
            parse_targets(&answer(&["striped", "crypt", "linear", "error"])),
            vec!["striped", "crypt", "linear", "error"]
        );
        assert!(parse_targets(&answer(&[])).is_empty());
    }

    #[test]
    fn a_bad_answer_ends_the_list() {
        let mut b = answer(&["linear", "crypt"]);
        // The first entry's `next` points far beyond the data.
        b[DM_IOCTL_SIZE..DM_IOCTL_SIZE + 4].copy_from_slice(&100_000u32.to_ne_bytes());
        assert_eq!(parse_targets(&b), vec!["linear"]);
        assert!(parse_targets(&[0u8; 8]).is_empty());
    }

    #[test]
    fn the_refusal_says_what_to_do_and_is_a_host_check() {
        let e = crate::error::Error::from(refusal(
            Missing::DeviceMapper,
            "unlocking a volume",
            "6.1.0-test",
        ));
        assert_eq!(e.exit_code(), crate::error::ExitCode::UnsafeHost);
        let m = e.to_string();
        assert!(
            m.starts_with("unlocking a volume needs the kernel's device-mapper"),
            "{m}"
        );
        assert!(m.contains("(6.1.0-test) has no device-mapper"), "{m}");
        assert!(
            m.contains("modprobe dm_crypt") && m.contains("live system"),
            "{m}"
        );
        let m = refusal(Missing::DmCrypt, "x", "k").to_string();
        assert!(m.contains("has no dm-crypt"), "{m}");
    }
}
