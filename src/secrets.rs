//! Secrets: how passphrases enter the process, where they live, and how the process is
//! hardened before the first one is read.
//!
//! A passphrase lives only in a [`Secret`], a zeroizing buffer allocated once at its final
//! size so that no reallocation leaves a stray copy behind. It never comes from argv or the
//! environment: only from the terminal (no echo), a file descriptor, or a key file.

use std::fmt;
use std::fs::File;
use std::io::{self, IsTerminal, Read};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::error::{Context, Error, Result, at};

/// The longest passphrase read from a terminal or file descriptor, in bytes (cryptsetup's
/// interactive limit is 512 characters; this leaves room for multi-byte characters).
pub const MAX_PASSPHRASE: usize = 4096;
/// The largest key file accepted, as cryptsetup's default `--keyfile-size` limit.
pub const MAX_KEY_FILE: u64 = 8 * 1024 * 1024;

/// Secret bytes, wiped when dropped. Debug output never shows them.
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Takes ownership of an existing zeroizing buffer.
    pub fn from_zeroizing(bytes: Zeroizing<Vec<u8>>) -> Secret {
        Secret(bytes)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret([redacted; {} bytes])", self.0.len())
    }
}

impl PartialEq for Secret {
    /// Compares in time independent of where the first difference is.
    fn eq(&self, other: &Secret) -> bool {
        let (a, b) = (self.as_bytes(), other.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// Where a passphrase comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretSource {
    /// Ask on the controlling terminal, without echo.
    Terminal,
    /// Read one line from an inherited file descriptor (the newline is not part of it).
    Fd(RawFd),
    /// The whole file, byte for byte, as `cryptsetup --key-file` reads it.
    KeyFile(PathBuf),
}

impl SecretSource {
    pub fn from_options(fd: Option<RawFd>, key_file: Option<&Path>) -> SecretSource {
        match (fd, key_file) {
            (Some(fd), _) => SecretSource::Fd(fd),
            (None, Some(path)) => SecretSource::KeyFile(path.to_path_buf()),
            (None, None) => SecretSource::Terminal,
        }
    }
}

/// Reads a secret. `prompt` names what is asked for; with `confirm`, a terminal user is asked
/// twice and the two must match (scripts are trusted to pass what they mean).
pub fn read_secret(source: &SecretSource, prompt: &str, confirm: bool) -> Result<Secret> {
    let secret = match source {
        SecretSource::Terminal => {
            let first = read_from_terminal(prompt)?;
            if confirm {
                let again = read_from_terminal(&format!("{prompt} (again)"))?;
                if first != again {
                    return Err(Error::Usage(
                        "the two passphrases differ; nothing was changed".into(),
                    ));
                }
            }
            first
        }
        SecretSource::Fd(fd) => read_line_from_fd(*fd)?,
        SecretSource::KeyFile(path) => read_key_file(path)?,
    };
    if secret.is_empty() {
        return Err(Error::Usage(format!(
            "empty {} given",
            prompt.to_lowercase()
        )));
    }
    Ok(secret)
}

fn read_from_terminal(prompt: &str) -> Result<Secret> {
    if !io::stdin().is_terminal() && File::open("/dev/tty").is_err() {
        return Err(Error::Usage(
            "no terminal to ask for the passphrase on; use --passphrase-fd N or --key-file PATH"
                .into(),
        ));
    }
    let typed = Zeroizing::new(
        rpassword::prompt_password(format!("{prompt}: "))
            .context(|| "reading the passphrase from the terminal".into())?,
    );
    let mut bytes = Zeroizing::new(Vec::with_capacity(typed.len()));
    bytes.extend_from_slice(typed.as_bytes());
    Ok(Secret(bytes))
}

/// Reads up to the first newline from `fd`, one byte at a time so that nothing after the
/// line is consumed, into a buffer allocated once at the maximum size.
fn read_line_from_fd(fd: RawFd) -> Result<Secret> {
    if fd < 0 {
        return Err(Error::Usage(format!(
            "--passphrase-fd {fd} is not a file descriptor"
        )));
    }
    // SAFETY: the descriptor was handed to us by the caller for this purpose; ManuallyDrop
    // keeps it open afterwards, as the caller may still own it.
    let mut file = std::mem::ManuallyDrop::new(unsafe { File::from_raw_fd(fd) });
    let mut buf = Zeroizing::new(vec![0u8; MAX_PASSPHRASE + 1]);
    let mut len = 0;
    loop {
        match file.read(&mut buf[len..len + 1]) {
            Ok(0) => break,
            Ok(_) if buf[len] == b'\n' => break,
            Ok(_) => {
                len += 1;
                if len > MAX_PASSPHRASE {
                    return Err(Error::Usage(format!(
                        "the passphrase on fd {fd} is longer than {MAX_PASSPHRASE} bytes"
                    )));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == Some(libc::EBADF) => {
                return Err(Error::Usage(format!(
                    "--passphrase-fd {fd}: no such open file descriptor"
                )));
            }
            Err(e) => return Err(e).context(|| format!("reading the passphrase from fd {fd}")),
        }
    }
    buf.truncate(len);
    Ok(Secret(buf))
}

fn read_key_file(path: &Path) -> Result<Secret> {
    let mut file = File::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => {
            Error::NotFound(format!("key file {} not found", path.display()))
        }
        _ => Error::Io {
            context: format!("opening key file {}", path.display()),
            source: e,
        },
    })?;
    let meta = file.metadata().context(at("reading", path))?;
    if !meta.is_file() {
        return Err(Error::Usage(format!(
            "key file {} is not a regular file; use --passphrase-fd for pipes",
            path.display()
        )));
    }
    if meta.size() > MAX_KEY_FILE {
        return Err(Error::Usage(format!(
            "key file {} is larger than {} bytes",
            path.display(),
            MAX_KEY_FILE
        )));
    }
    // One allocation at the final size; a file that grows meanwhile is cut at that size.
    let size = meta.size() as usize;
    let mut buf = Zeroizing::new(vec![0u8; size]);
    let mut len = 0;
    while len < size {
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context(at("reading key file", path)),
        }
    }
    buf.truncate(len);
    Ok(Secret(buf))
}

/// What [`harden_process`] achieved; reported, and tested in the VM.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Hardening {
    pub dumpable_off: bool,
    pub core_limit_zero: bool,
    pub memory_locked: bool,
    pub warnings: Vec<String>,
}

/// Makes the process unfit to leak secrets: no core dumps, no ptrace attachment by
/// unprivileged processes, and no page of it swapped out. Called before any secret is read.
/// Core dumps and ptrace are hard requirements; memory locking falls back with a warning
/// (some containers forbid it), since swap itself is refused by the preflight.
pub fn harden_process() -> Result<Hardening> {
    let mut report = Hardening::default();
    nix::sys::prctl::set_dumpable(false)
        .context(|| "disabling core dumps and ptrace (PR_SET_DUMPABLE)".into())?;
    report.dumpable_off = true;
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0)
        .context(|| "setting RLIMIT_CORE to 0".into())?;
    report.core_limit_zero = true;
    use nix::sys::mman::{MlockAllFlags, mlockall};
    match mlockall(MlockAllFlags::MCL_CURRENT | MlockAllFlags::MCL_FUTURE) {
        Ok(()) => report.memory_locked = true,
        Err(e) => report.warnings.push(format!(
            "could not lock memory (mlockall: {e}); secrets could reach swap if any is active"
        )),
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    fn pipe_with(content: &[u8]) -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
        let (r, w) = nix::unistd::pipe().unwrap();
        let mut wf = File::from(w.try_clone().unwrap());
        wf.write_all(content).unwrap();
        drop(wf);
        (r, w)
    }

    #[test]
    fn fd_reads_one_line_and_leaves_the_rest() {
        let (r, w) = pipe_with(b"correct horse\nsecond line\n");
        drop(w);
        let s = read_secret(&SecretSource::Fd(r.as_raw_fd()), "Passphrase", false).unwrap();
        assert_eq!(s.as_bytes(), b"correct horse");
        let mut rest = String::new();
        File::from(r).read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "second line\n");
    }

    #[test]
    fn fd_without_newline_reads_to_eof() {
        let (r, w) = pipe_with(b"no newline");
        drop(w);
        let s = read_secret(&SecretSource::Fd(r.as_raw_fd()), "Passphrase", false).unwrap();
        assert_eq!(s.as_bytes(), b"no newline");
    }

    #[test]
    fn empty_passphrase_is_a_usage_error() {
        let (r, w) = pipe_with(b"\n");
        drop(w);
        let err = read_secret(&SecretSource::Fd(r.as_raw_fd()), "Passphrase", false).unwrap_err();
        assert!(matches!(err, Error::Usage(_)), "{err}");
    }

    #[test]
    fn overlong_passphrase_is_refused() {
        let (r, w) = pipe_with(&vec![b'a'; MAX_PASSPHRASE + 10]);
        drop(w);
        let err = read_secret(&SecretSource::Fd(r.as_raw_fd()), "Passphrase", false).unwrap_err();
        assert!(err.to_string().contains("longer than"), "{err}");
    }

    #[test]
    fn closed_fd_is_a_usage_error() {
        let err = read_secret(&SecretSource::Fd(9999), "Passphrase", false).unwrap_err();
        assert!(matches!(err, Error::Usage(_)), "{err}");
    }

    #[test]
    fn key_file_is_read_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, b"bin\0ary\nkey\n").unwrap();
        let s = read_secret(&SecretSource::KeyFile(path), "Key", false).unwrap();
        assert_eq!(s.as_bytes(), b"bin\0ary\nkey\n");
    }

    #[test]
    fn missing_key_file_is_not_found() {
        let err = read_secret(
            &SecretSource::KeyFile("/nonexistent/key".into()),
            "Key",
            false,
        )
        .unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err}");
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let s = Secret(Zeroizing::new(b"hunter2".to_vec()));
        let shown = format!("{s:?}");
        assert!(!shown.contains("hunter2"));
        assert!(shown.contains("7 bytes"));
    }

    #[test]
    fn equality_compares_content_and_length() {
        let a = Secret(Zeroizing::new(b"abc".to_vec()));
        assert!(a == Secret(Zeroizing::new(b"abc".to_vec())));
        assert!(a != Secret(Zeroizing::new(b"abd".to_vec())));
        assert!(a != Secret(Zeroizing::new(b"abcd".to_vec())));
    }
}
