//! Processes that hold files of the volume open, found through /proc, and ending them
//! for `lock --force`.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A process using the volume, and how.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Holder {
    pub pid: i32,
    pub name: String,
    /// What of it is on the volume: "cwd", "root", "exe", "fd 3", "mmap".
    pub uses: Vec<String>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (pid {}: {})",
            self.name,
            self.pid,
            self.uses.join(", ")
        )
    }
}

fn on_device(path: &Path, dev: (u32, u32)) -> bool {
    std::fs::metadata(path).is_ok_and(|m| (libc::major(m.dev()), libc::minor(m.dev())) == dev)
}

/// Parses the device field of one /proc/PID/maps line ("fe:00", hex).
fn maps_line_dev(line: &str) -> Option<(u32, u32)> {
    let dev = line.split_whitespace().nth(3)?;
    let (a, b) = dev.split_once(':')?;
    Some((
        u32::from_str_radix(a, 16).ok()?,
        u32::from_str_radix(b, 16).ok()?,
    ))
}

/// Every process (but this one) with an open file, working folder, root, executable or
/// memory mapping on the filesystem of device `dev`.
pub fn holders_of(dev: (u32, u32)) -> Vec<Holder> {
    let me = std::process::id() as i32;
    let mut holders = Vec::new();
    let Ok(proc_dir) = std::fs::read_dir("/proc") else {
        return holders;
    };
    for entry in proc_dir.filter_map(|e| e.ok()) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let base = entry.path();
        let mut uses = Vec::new();
        for what in ["cwd", "root", "exe"] {
            if on_device(&base.join(what), dev) {
                uses.push(what.to_string());
            }
        }
        if let Ok(fds) = std::fs::read_dir(base.join("fd")) {
            for fd in fds.filter_map(|e| e.ok()) {
                if on_device(&fd.path(), dev) {
                    uses.push(format!("fd {}", fd.file_name().to_string_lossy()));
                }
            }
        }
        if let Ok(maps) = std::fs::read_to_string(base.join("maps"))
            && maps.lines().any(|l| maps_line_dev(l) == Some(dev))
        {
            uses.push("mmap".into());
        }
        if !uses.is_empty() {
            let name = std::fs::read_to_string(base.join("comm"))
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "?".into());
            holders.push(Holder { pid, name, uses });
        }
    }
    holders.sort_by_key(|h| h.pid);
    holders
}

/// Asks the holders to end (SIGTERM), waits up to `grace`, then kills those left
/// (SIGKILL) and waits again. Returns the holders still present afterwards.
pub fn end_holders(dev: (u32, u32), grace: Duration) -> Vec<Holder> {
    for signal in [Signal::SIGTERM, Signal::SIGKILL] {
        let holders = holders_of(dev);
        if holders.is_empty() {
            return holders;
        }
        for h in &holders {
            let _ = kill(Pid::from_raw(h.pid), signal);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if holders_of(dev).is_empty() {
                return Vec::new();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    holders_of(dev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_maps_device_field() {
        let line = "7f1c2a000000-7f1c2a021000 r--p 00000000 fe:01 1234  /live/persistence/x/lib.so";
        assert_eq!(maps_line_dev(line), Some((254, 1)));
        assert_eq!(maps_line_dev("garbage"), None);
    }

    #[test]
    fn finds_a_child_with_its_cwd_on_a_filesystem() {
        // Our own test files live on some filesystem; a child sitting in a folder there is
        // a holder of that device, and once it ends, it is not.
        let dir = tempfile::tempdir().unwrap();
        let meta = std::fs::metadata(dir.path()).unwrap();
        let dev = (libc::major(meta.dev()), libc::minor(meta.dev()));
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .current_dir(dir.path())
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let found = holders_of(dev);
        let h = found.iter().find(|h| h.pid == pid).expect("child listed");
        assert!(h.uses.contains(&"cwd".to_string()), "{h}");
        // end_holders is exercised in the VM only: here it would end every process on
        // the host's filesystem.
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(holders_of(dev).iter().all(|h| h.pid != pid));
    }
}
