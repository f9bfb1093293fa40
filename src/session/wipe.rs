//! What happens when a volume's stick is pulled out (or `lock --now` is typed): the
//! volume key is wiped from the kernel first, then whatever still shows the volume is taken
//! away. The watcher runs this from locked memory, with the stick (and perhaps the live
//! system's own squashfs) gone: so every step here is a system call on /proc, /sys, /dev
//! or tmpfs, never a read from a disk, never a program, never a user or group lookup.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::host::dm::{Control, DevNum};
use crate::host::processes::{self, Holder};

/// What to do once the key is wiped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OnRemoval {
    /// Wipe the key, detach the volume's mounts, drop the page cache, remove the mapping
    /// once nothing holds it; processes that hold its files keep running (and get I/O
    /// errors).
    Wipe,
    /// As wipe, and first kill (SIGKILL) every process holding files of the volume, in
    /// any mount namespace: their memory holds what they read, and the mapping can go.
    #[default]
    End,
    /// As end, then power the machine off at once, as Tails does when its boot stick
    /// is pulled.
    Shutdown,
}

impl OnRemoval {
    pub fn name(self) -> &'static str {
        match self {
            OnRemoval::Wipe => "wipe",
            OnRemoval::End => "end",
            OnRemoval::Shutdown => "shutdown",
        }
    }
}

/// What a wipe did, with when (milliseconds after it began).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Wiped {
    pub mapping: String,
    /// The device whose removal set it off, or "lock --now".
    pub trigger: String,
    /// Seconds since the epoch.
    pub at: u64,
    /// When the key was gone from the kernel's table.
    pub key_wiped_ms: Option<f64>,
    pub key_error: Option<String>,
    pub ended: Vec<Holder>,
    pub unmounted: usize,
    pub caches_dropped: bool,
    /// When the mapping was gone; `None` while something still holds it (the kernel
    /// removes it when that lets go).
    pub mapping_removed_ms: Option<f64>,
    pub links_removed: usize,
}

/// Milliseconds since `start`, to a tenth.
pub(crate) fn ms_since(start: Instant) -> f64 {
    (start.elapsed().as_secs_f64() * 10_000.0).round() / 10.0
}

/// Wipes the key of mapping `dev` from the kernel: suspend without flushing, dm-crypt's
/// "key wipe", then an `error` table in its place and resume, so that nothing waits on
/// it. Works with the devices under it already gone; needs no passphrase.
pub fn wipe_key(control: &Control, dev: DevNum, sectors: u64) -> std::io::Result<()> {
    control.suspend_now(dev)?;
    // The message fails on a target that is not dm-crypt; the error table still ends
    // the crypt target, whose destructor frees its key zeroed.
    let message = control.wipe_key(dev);
    control.load_error_table(dev, sectors)?;
    control.resume(dev)?;
    message
}

/// Everything after the key: the steps of [`wipe`] that take the volume away.
pub struct Teardown<'a> {
    pub mapping: &'a str,
    pub dev: DevNum,
    pub on_removal: OnRemoval,
}

/// The whole wipe: key first, then mounts, processes (when asked), cache, mapping.
/// `sectors` is the mapping's size (read when the watcher armed: it does not change).
pub fn wipe(control: &Control, t: &Teardown<'_>, sectors: u64, trigger: &str) -> Wiped {
    let start = Instant::now();
    let mut wiped = Wiped {
        mapping: t.mapping.to_string(),
        trigger: trigger.to_string(),
        at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        ..Wiped::default()
    };
    match wipe_key(control, t.dev, sectors) {
        Ok(()) => wiped.key_wiped_ms = Some(ms_since(start)),
        Err(e) => wiped.key_error = Some(e.to_string()),
    }
    // Out of every path at once (a busy mount goes from the tree now, from the kernel when
    // freed): nothing new is opened on the volume from here on.
    wiped.unmounted = detach_mounts(t.dev);
    let grace = Duration::from_millis(500);
    if t.on_removal != OnRemoval::Wipe {
        (wiped.ended, _) = processes::kill_holders(t.dev, grace);
    }
    wiped.caches_dropped = drop_caches();
    let mut removed = control.remove_when_free(t.dev);
    if t.on_removal != OnRemoval::Wipe && matches!(removed, Ok(false)) {
        // Still held, by no process seen: a namespace of the live user's may hide it
        // (lock --force's last resort). The removal asked for above happens when they go.
        let (hidden, _) = processes::end_user_namespaces(t.dev, grace);
        for h in hidden {
            if !wiped.ended.iter().any(|e| e.pid == h.pid) {
                wiped.ended.push(h);
            }
        }
        wiped.caches_dropped &= drop_caches();
        removed = control.exists(t.dev).map(|there| !there);
    }
    if let Ok(true) = removed {
        wiped.mapping_removed_ms = Some(ms_since(start));
        remove_stale_node(t.mapping, t.dev);
    }
    wiped
}

/// Clean cached pages (of the killed processes' files among them), dentries and inodes.
fn drop_caches() -> bool {
    std::fs::write("/proc/sys/vm/drop_caches", b"3\n").is_ok()
}

/// The links into the volume under `home` (Tails' dotfiles), dangling now: removed by
/// handle, as lock removes them. Last, and apart: a tree the live user writes may be slow
/// to walk (a FUSE mount of theirs), and nothing of the key or the data waits on it.
pub fn remove_links(home: &Path, mount_root: &Path) -> usize {
    crate::session::journal::unlink_tree(home, mount_root).unwrap_or(0)
}

/// Where the volume's filesystem itself (not a bind of a folder of it) is mounted.
pub fn mount_root_of(dev: DevNum) -> Option<PathBuf> {
    crate::host::mounts::read_mountinfo()
        .ok()?
        .into_iter()
        .find(|m| m.dev == dev && m.root == Path::new("/"))
        .map(|m| m.mount_point)
}

/// Detaches every mount of the volume in this mount namespace, deepest first
/// (MNT_DETACH: a busy one goes from the tree at once, and from the kernel when freed).
fn detach_mounts(dev: DevNum) -> usize {
    let Ok(table) = crate::host::mounts::read_mountinfo() else {
        return 0;
    };
    let mut points: Vec<PathBuf> = table
        .into_iter()
        .filter(|m| m.dev == dev)
        .map(|m| m.mount_point)
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    points
        .iter()
        .filter(|p| nix::mount::umount2(p.as_path(), nix::mount::MntFlags::MNT_DETACH).is_ok())
        .count()
}

/// Without udev, libdevmapper made /dev/mapper/NAME itself, and nobody removes it: the
/// node of the removed mapping goes, if it is still that device's.
fn remove_stale_node(mapping: &str, dev: DevNum) {
    if crate::host::devices::mapping_dev(mapping) == Some(dev) {
        let _ = std::fs::remove_file(Path::new("/dev/mapper").join(mapping));
    }
}

/// One line for the console and the system log.
pub fn summary(w: &Wiped) -> String {
    let key = match (w.key_wiped_ms, &w.key_error) {
        (Some(ms), _) => format!("volume key wiped from the kernel in {ms} ms"),
        (None, Some(e)) => format!("KEY WIPE FAILED ({e})"),
        (None, None) => "key wipe not attempted".to_string(),
    };
    let mapping = match w.mapping_removed_ms {
        Some(ms) => format!("mapping removed at {ms} ms"),
        None => "mapping removed when the last holder lets go".to_string(),
    };
    format!(
        "keepsake: {} gone: {key}; {} process(es) ended, {} mount(s) detached, page cache {}, {mapping} (/dev/mapper/{})",
        w.trigger,
        w.ended.len(),
        w.unmounted,
        if w.caches_dropped {
            "dropped"
        } else {
            "NOT dropped"
        },
        w.mapping
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_says_whether_the_key_is_gone() {
        let mut w = Wiped {
            mapping: "TailsData_unlocked".into(),
            trigger: "/dev/sdb2".into(),
            key_wiped_ms: Some(2.5),
            caches_dropped: true,
            ..Wiped::default()
        };
        let line = summary(&w);
        assert!(
            line.contains("/dev/sdb2 gone: volume key wiped from the kernel in 2.5 ms"),
            "{line}"
        );
        assert!(line.contains("when the last holder lets go"), "{line}");
        w.key_wiped_ms = None;
        w.key_error = Some("No such device".into());
        w.mapping_removed_ms = Some(4.0);
        let line = summary(&w);
        assert!(line.contains("KEY WIPE FAILED (No such device)"), "{line}");
        assert!(line.contains("mapping removed at 4 ms"), "{line}");
    }

    #[test]
    fn a_pulled_stick_ends_the_holders_unless_told_otherwise() {
        assert_eq!(OnRemoval::default(), OnRemoval::End);
        for o in [OnRemoval::Wipe, OnRemoval::End, OnRemoval::Shutdown] {
            let json = serde_json::to_string(&o).unwrap();
            assert_eq!(json, format!("\"{}\"", o.name()));
        }
    }
}
