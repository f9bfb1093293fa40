//! The helper programs keepsake runs (mkfs.ext4, e2fsck). None of them ever sees a secret:
//! they get a minimal environment, no passphrase, and only the opened mapping's path.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::{Error, Result};
use crate::context::IoError;

/// The only folders helpers are run from. `/usr/local/*` is left out on purpose: on a
/// live system a feature may be bound there, and a helper run as root must not come from
/// a folder the live user could fill.
const TRUSTED_DIRS: &[&str] = &["/usr/sbin", "/usr/bin", "/sbin", "/bin"];
const SEARCH_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// Finds a program in the trusted system folders: a regular file that only root can
/// change, in a folder that only root can change.
pub(crate) fn find(program: &str) -> Option<PathBuf> {
    TRUSTED_DIRS
        .iter()
        .map(|d| Path::new(d).join(program))
        .find(|p| only_root_can_change(p) && p.parent().is_some_and(only_root_can_change))
}

/// Owned by root and writable by nobody else (symlinks followed: `/sbin` is a link to
/// `usr/sbin` on merged-/usr systems, and both are root's).
fn only_root_can_change(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .is_ok_and(|m| m.uid() == 0 && m.mode() & 0o022 == 0 && (m.is_file() || m.is_dir()))
}

/// Runs `program` with `args`, its output captured, its environment reduced to PATH and a
/// C locale so its messages are predictable. It runs in a process group of its own: a
/// Ctrl-C on the terminal reaches keepsake, which stops at its next safe point, and not
/// the helper keepsake is waiting for (a `systemctl start` killed half way left tor
/// stopped after an interrupted unlock).
pub(crate) fn run(program: &str, args: &[&str], package: &str) -> Result<Output> {
    let path = find(program).ok_or_else(|| {
        Error::NotFound(format!(
            "{program} not found; install the {package} package"
        ))
    })?;
    Command::new(&path)
        .args(args)
        .env_clear()
        .env("PATH", SEARCH_PATH)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .process_group(0)
        .output()
        .map_err(|e| Error::Io(IoError::new(format!("running {}", path.display()), e)))
}

/// Like [`run`] (its own process group too), with `input` on the program's standard input
/// (never a secret).
pub(crate) fn run_with_input(
    program: &str,
    args: &[&str],
    input: &str,
    package: &str,
) -> Result<Output> {
    use std::io::Write;
    let path = find(program).ok_or_else(|| {
        Error::NotFound(format!(
            "{program} not found; install the {package} package"
        ))
    })?;
    let mut child = Command::new(&path)
        .args(args)
        .env_clear()
        .env("PATH", SEARCH_PATH)
        .env("LC_ALL", "C")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| Error::Io(IoError::new(format!("running {}", path.display()), e)))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| Error::Io(IoError::new(format!("writing to {}", path.display()), e)))?;
    }
    child
        .wait_with_output()
        .map_err(|e| Error::Io(IoError::new(format!("running {}", path.display()), e)))
}

/// The first non-empty line a tool printed, for one-line error messages.
pub(crate) fn first_line(output: &Output) -> String {
    let text = [&output.stderr[..], &output.stdout[..]].concat();
    String::from_utf8_lossy(&text)
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("no message")
        .to_string()
}

/// Makes an ext4 filesystem labelled `label` on `device`.
pub(crate) fn mkfs_ext4(device: &Path, label: &str) -> Result<()> {
    let dev = device.to_string_lossy();
    let out = run("mkfs.ext4", &["-q", "-F", "-L", label, &dev], "e2fsprogs")?;
    if !out.status.success() {
        return Err(Error::Failed(format!(
            "mkfs.ext4 on {dev} failed: {}",
            first_line(&out)
        )));
    }
    Ok(())
}

/// What a filesystem check found.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum FsckResult {
    /// The superblock says the filesystem was cleanly unmounted and has no errors, so
    /// e2fsck was not run.
    NotNeeded,
    Clean,
    Repaired,
}

/// Where the ext4 superblock is, and the fields that say whether it needs a check.
const SUPERBLOCK_OFFSET: u64 = 1024;
const EXT4_MAGIC: u16 = 0xEF53;
const STATE_ERRORS: u16 = 0x0002;
const INCOMPAT_RECOVER: u32 = 0x0004;

/// What an ext4 superblock says about how its filesystem was left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SuperblockState {
    /// The bytes are an ext4 superblock (its magic number is there).
    pub ext4: bool,
    /// The kernel found errors and marked them in the superblock.
    pub errors: bool,
    /// The journal needs recovery (`needs_recovery`): it was not unmounted cleanly
    /// (pulled out, power cut), and the journal has not been replayed yet.
    pub needs_recovery: bool,
}

impl SuperblockState {
    /// Reads the state from a superblock's bytes (from its start, at least 0x64 bytes).
    pub(crate) fn parse(sb: &[u8]) -> SuperblockState {
        if sb.len() < 0x64 || u16::from_le_bytes([sb[0x38], sb[0x39]]) != EXT4_MAGIC {
            return SuperblockState {
                ext4: false,
                errors: false,
                needs_recovery: false,
            };
        }
        let state = u16::from_le_bytes([sb[0x3A], sb[0x3B]]);
        let incompat = u32::from_le_bytes([sb[0x60], sb[0x61], sb[0x62], sb[0x63]]);
        SuperblockState {
            ext4: true,
            errors: state & STATE_ERRORS != 0,
            needs_recovery: incompat & INCOMPAT_RECOVER != 0,
        }
    }

    /// Reads the superblock of the filesystem on `device` (an opened mapping).
    pub(crate) fn read(device: &Path) -> std::result::Result<SuperblockState, IoError> {
        use std::os::unix::fs::FileExt;
        let mut sb = [0u8; 1024];
        std::fs::File::open(device)
            .and_then(|f| f.read_exact_at(&mut sb, SUPERBLOCK_OFFSET))
            .map_err(|e| {
                IoError::new(format!("reading the superblock of {}", device.display()), e)
            })?;
        Ok(SuperblockState::parse(&sb))
    }

    /// Whether the filesystem asks for a check before mounting: it is not ext4, it is
    /// marked with errors, or its journal needs recovery. A clean filesystem is mounted
    /// without starting e2fsck, as the kernel's own checks suffice; this saves a process
    /// start on every unlock.
    pub(crate) fn needs_check(self) -> bool {
        !self.ext4 || self.errors || self.needs_recovery
    }
}

/// Checks `device` with `e2fsck -p` (repairs only what is safe without a person), as a
/// boot does, unless its superblock says it is clean. Errors e2fsck cannot fix alone are
/// reported as corruption.
pub(crate) fn fsck_preen(device: &Path) -> Result<FsckResult> {
    if SuperblockState::read(device).is_ok_and(|state| !state.needs_check()) {
        return Ok(FsckResult::NotNeeded);
    }
    let dev = device.to_string_lossy();
    let out = run("e2fsck", &["-p", &dev], "e2fsprogs")?;
    // e2fsck exit status: 0 clean, 1 errors corrected, 2 corrected and reboot advised,
    // 4 and above: uncorrected errors or operational failure.
    match out.status.code() {
        Some(0) => Ok(FsckResult::Clean),
        Some(1) | Some(2) => Ok(FsckResult::Repaired),
        code => Err(Error::Damaged(format!(
            "the filesystem on {dev} has errors e2fsck -p cannot fix (status {}): {}",
            code.map_or("signal".to_string(), |c| c.to_string()),
            first_line(&out)
        ))),
    }
}

/// What a full e2fsck run (`-f`) found: its exit status and its last lines.
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct FsckReport {
    pub status: i32,
    pub clean: bool,
    pub summary: String,
}

/// `e2fsck -fn` (only look) or `e2fsck -fy` (repair everything it can).
pub(crate) fn fsck_full(device: &Path, repair: bool) -> Result<FsckReport> {
    let dev = device.to_string_lossy();
    let out = run(
        "e2fsck",
        &["-f", if repair { "-y" } else { "-n" }, &dev],
        "e2fsprogs",
    )?;
    let status = out.status.code().unwrap_or(8);
    let text = String::from_utf8_lossy(&out.stdout);
    let summary = text
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string();
    Ok(FsckReport {
        status,
        // -n: 0 clean, 4 errors left. -y: 0 clean, 1 or 2 repaired, 4 and above not.
        clean: if repair { status < 4 } else { status == 0 },
        summary,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The process group of the process a shell started, as /proc says.
    fn group_of_a_child(output: Output) -> i32 {
        let stat = String::from_utf8(output.stdout).unwrap();
        // pid (comm) state ppid pgrp ...: the fields after the command name.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        rest.split(' ').nth(2).unwrap().parse().unwrap()
    }

    #[test]
    fn a_helper_is_not_in_keepsakes_process_group() {
        let ours = nix::unistd::getpgrp().as_raw();
        let theirs = group_of_a_child(run("cat", &["/proc/self/stat"], "coreutils").unwrap());
        assert_ne!(
            theirs, ours,
            "a terminal's Ctrl-C would reach the helper too"
        );
        let fed = run_with_input("cat", &["/proc/self/stat"], "", "coreutils").unwrap();
        assert_ne!(group_of_a_child(fed), ours);
        // Negative control: a child started the plain way shares the group.
        let plain = Command::new("cat").arg("/proc/self/stat").output().unwrap();
        assert_eq!(group_of_a_child(plain), ours);
    }

    fn superblock_needs_check(sb: &[u8]) -> bool {
        SuperblockState::parse(sb).needs_check()
    }

    fn superblock(state: u16, incompat: u32) -> Vec<u8> {
        let mut sb = vec![0u8; 1024];
        sb[0x38..0x3A].copy_from_slice(&EXT4_MAGIC.to_le_bytes());
        sb[0x3A..0x3C].copy_from_slice(&state.to_le_bytes());
        sb[0x60..0x64].copy_from_slice(&incompat.to_le_bytes());
        sb
    }

    #[test]
    fn an_unclean_shutdown_is_told_apart_from_errors() {
        // What check decides by: the journal to replay alone is not damage.
        let unclean = SuperblockState::parse(&superblock(0x0001, 0x0040 | INCOMPAT_RECOVER));
        assert!(unclean.ext4 && unclean.needs_recovery && !unclean.errors);
        let damaged = SuperblockState::parse(&superblock(0x0001 | STATE_ERRORS, 0x0040));
        assert!(damaged.ext4 && damaged.errors && !damaged.needs_recovery);
        let clean = SuperblockState::parse(&superblock(0x0001, 0x0040 | 0x0080));
        assert!(clean.ext4 && !clean.errors && !clean.needs_recovery);
    }

    #[test]
    fn only_a_clean_ext4_superblock_skips_the_check() {
        // Clean: valid state, extents|64bit|flex_bg, no recovery needed.
        assert!(!superblock_needs_check(&superblock(
            0x0001,
            0x0040 | 0x0080 | 0x0200
        )));
        assert!(
            superblock_needs_check(&superblock(0x0001, 0x0040 | INCOMPAT_RECOVER)),
            "journal to replay"
        );
        assert!(
            superblock_needs_check(&superblock(0x0001 | STATE_ERRORS, 0x0040)),
            "errors"
        );
        let mut not_ext4 = superblock(0x0001, 0x0040);
        not_ext4[0x38] = 0;
        assert!(superblock_needs_check(&not_ext4));
        assert!(superblock_needs_check(&[0u8; 16]), "too short");
    }
}
