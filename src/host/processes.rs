//! Processes that hold files of the volume open, found through /proc, and ending them
//! for `lock --force`.

use std::collections::HashSet;
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

/// A mount namespace's identity (device and inode of its nsfs file).
fn mount_namespace(pid: &str) -> Option<(u64, u64)> {
    std::fs::metadata(format!("/proc/{pid}/ns/mnt"))
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// The mount namespaces other than ours in which some process sees a filesystem of `dev`
/// mounted. Every process of a foreign namespace is asked (one of them chrooted sees only
/// part of the namespace; another may see it all).
fn namespaces_holding(dev: (u32, u32), ours: Option<(u64, u64)>) -> HashSet<(u64, u64)> {
    let mut holding = HashSet::new();
    for pid in pids() {
        let Some(ns) = mount_namespace(&pid.to_string()) else {
            continue;
        };
        if Some(ns) == ours || holding.contains(&ns) {
            continue;
        }
        let sees = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).is_ok_and(|text| {
            crate::host::mounts::parse_mountinfo(&text)
                .iter()
                .any(|m| m.dev == dev)
        });
        if sees {
            holding.insert(ns);
        }
    }
    holding
}

fn pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
                .collect()
        })
        .unwrap_or_default()
}

/// The processes whose own mount namespace (a user's `unshare -m`, made while the volume
/// was mounted) still has the volume's filesystem mounted: unmounting it here leaves it
/// mounted there, and the mapping cannot close. Cheap: one look per process, one
/// mountinfo per namespace.
pub fn namespace_holders(dev: (u32, u32)) -> Vec<Holder> {
    holders_of_kind(dev, false)
}

/// Every process (but this one) with an open file, working folder, root, executable or
/// memory mapping on the filesystem of device `dev`, or that keeps it mounted in a mount
/// namespace of its own.
pub fn holders_of(dev: (u32, u32)) -> Vec<Holder> {
    holders_of_kind(dev, true)
}

fn holders_of_kind(dev: (u32, u32), files_too: bool) -> Vec<Holder> {
    let me = std::process::id() as i32;
    let ours = mount_namespace("self");
    // Every process of such a namespace holds it: ending them all frees the namespace.
    let holding = namespaces_holding(dev, ours);
    let mut holders = Vec::new();
    // No foreign namespace holds it: asked only about namespaces, the second walk of
    // /proc (every process's namespace looked up again) would find nobody.
    if !files_too && holding.is_empty() {
        return holders;
    }
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
        if mount_namespace(&pid.to_string()).is_some_and(|ns| holding.contains(&ns)) {
            uses.push("mounted in its own mount namespace".to_string());
        }
        if !files_too {
            if !uses.is_empty() {
                holders.push(Holder {
                    pid,
                    name: comm(&base),
                    uses,
                });
            }
            continue;
        }
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
            holders.push(Holder {
                pid,
                name: comm(&base),
                uses,
            });
        }
    }
    holders.sort_by_key(|h| h.pid);
    holders
}

fn comm(base: &Path) -> String {
    std::fs::read_to_string(base.join("comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// Asks the holders to end (SIGTERM), waits up to `grace`, then kills those left
/// (SIGKILL) and waits again. Returns the holders still present afterwards.
pub fn end_holders(dev: (u32, u32), grace: Duration) -> Vec<Holder> {
    end_in_turn(
        &[Signal::SIGTERM, Signal::SIGKILL],
        grace,
        || holders_of(dev),
        |h, signal| {
            let _ = kill(Pid::from_raw(h.pid), signal);
        },
    )
}

/// Sends each signal in turn to the processes `left` still finds, and waits up to `grace`
/// after each for them to be gone. Returns those left at the end. The one loop behind
/// ending the volume's holders (`lock --force`) and stopping tor; `send` decides how a
/// process is reached (a pid, or a pidfd that cannot hit a recycled pid).
pub(crate) fn end_in_turn<P>(
    signals: &[Signal],
    grace: Duration,
    mut left: impl FnMut() -> Vec<P>,
    send: impl Fn(&P, Signal),
) -> Vec<P> {
    for &signal in signals {
        let now = left();
        if now.is_empty() {
            return now;
        }
        for process in &now {
            send(process, signal);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if left().is_empty() {
                return Vec::new();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    left()
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

    #[test]
    fn a_mount_namespace_that_still_has_the_filesystem_is_a_holder() {
        assert!(nix::unistd::geteuid().is_root(), "this test needs root");
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        let meta = std::fs::metadata(dir.path()).unwrap();
        let dev = (libc::major(meta.dev()), libc::minor(meta.dev()));
        // A process that copies the mount table into a namespace of its own, from / (so
        // that nothing but its namespace holds the tmpfs).
        let mut child = std::process::Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sleep", "30"])
            .current_dir("/")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let deadline = Instant::now() + Duration::from_secs(5);
        let found = loop {
            let found = namespace_holders(dev);
            if found.iter().any(|h| h.pid == pid) || Instant::now() > deadline {
                break found;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        nix::mount::umount(dir.path()).unwrap();
        let after_umount = namespace_holders(dev);
        child.kill().unwrap();
        child.wait().unwrap();
        let h = found
            .iter()
            .find(|h| h.pid == pid)
            .expect("the namespace's process");
        assert_eq!(
            h.uses,
            vec!["mounted in its own mount namespace".to_string()]
        );
        assert!(
            after_umount.iter().any(|h| h.pid == pid),
            "unmounted here, still mounted there"
        );
        assert!(namespace_holders(dev).iter().all(|h| h.pid != pid));
        // Our own namespace never counts.
        assert!(found.iter().all(|h| h.pid != std::process::id() as i32));
    }
}
