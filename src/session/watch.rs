//! The watcher: one small root process per unlocked volume that follows the kernel's
//! device events and, the moment a device under the volume goes (the partition, its
//! stick, the loop device, the stick holding a container file), wipes the volume's key
//! from the kernel and takes the volume away ([`super::wipe`]).
//!
//! Why a process of its own, started anew (`keepsake watch --serve`, exec'd from
//! /proc/self/exe) rather than a fork of `unlock`: it must hold no secret (a fork would
//! copy the unlock's memory), outlive the terminal and the sudo that ran `unlock` (a new
//! session, not sudo's child: sudo relays the signals the live user sends it to its
//! child), and have its whole code in locked memory before it is needed (the stick
//! pulled may hold the live system's squashfs, from which no page could be read again).
//!
//! One per volume: it holds a lock on /run/keepsake/watch.MAPPING.json, which says what it
//! watches; `status` reads it and asks the lock whether the watcher lives. It stops when
//! the mapping goes (lock closed it), and the wipe's report is left in
//! /run/keepsake/wiped.MAPPING.json.

use std::fs::File;
use std::io::{BufRead, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::host::devices::{self, Under};
use crate::host::dm::{self, Control};
use crate::host::uevent::{self, Received};
use crate::persistence::layout::RUNTIME_DIR;
use crate::session::wipe::{self, OnRemoval, Teardown, Wiped};

/// What a watcher watches, as it wrote it when it armed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Watch {
    pub pid: u32,
    pub mapping: String,
    pub on_removal: OnRemoval,
    /// The devices whose removal sets it off, nearest first.
    pub devices: Vec<Under>,
}

/// A watcher's state as `status` shows it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct WatchStatus {
    pub armed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_removal: Option<OnRemoval>,
    pub devices: Vec<String>,
}

fn state_path(mapping: &str) -> PathBuf {
    Path::new(RUNTIME_DIR).join(format!("watch.{mapping}.json"))
}

fn wiped_path(mapping: &str) -> PathBuf {
    Path::new(RUNTIME_DIR).join(format!("wiped.{mapping}.json"))
}

/// Whether a watcher is armed for `mapping`: its state file, and its lock held.
pub fn status(mapping: &str) -> WatchStatus {
    status_of(&state_path(mapping))
}

fn status_of(path: &Path) -> WatchStatus {
    let Ok(file) = File::open(path) else {
        return WatchStatus::default();
    };
    // The watcher holds an exclusive lock for its whole life: a shared one granted
    // means nobody does.
    let free = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockSharedNonblock);
    let Err((file, nix::errno::Errno::EWOULDBLOCK)) = free else {
        return WatchStatus::default();
    };
    let watch: Option<Watch> = serde_json::from_reader(file).ok();
    WatchStatus {
        armed: true,
        pid: watch.as_ref().map(|w| w.pid),
        on_removal: watch.as_ref().map(|w| w.on_removal),
        devices: watch
            .map(|w| w.devices.into_iter().map(|d| d.name).collect())
            .unwrap_or_default(),
    }
}

/// Removes the state file at `path` if no watcher holds its lock: a watcher killed before
/// it could remove it. One that holds it keeps it.
fn remove_if_stale(path: &Path) {
    let Ok(file) = File::open(path) else {
        return;
    };
    let Ok(lock) = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
    else {
        return;
    };
    // Still the file at that name (not one a new watcher just put there), while locked.
    if still_at(path, &lock) {
        let _ = std::fs::remove_file(path);
    }
}

/// Whether `file`, opened and locked, is still the one at `path`: whoever had it before
/// may have removed it (or a new one been put there) after it was opened, and a lock on a
/// removed file is no one's lock.
fn still_at(path: &Path, file: &File) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .zip(file.metadata().ok())
        .is_some_and(|(a, b)| a.ino() == b.ino() && a.dev() == b.dev())
}

/// The report of the wipe after `mapping`'s stick was last pulled, if any.
pub fn last_wipe(mapping: &str) -> Option<Wiped> {
    serde_json::from_slice(&std::fs::read(wiped_path(mapping)).ok()?).ok()
}

/// Every wipe's report still kept (see [`last_wipe`]).
pub fn all_wipes() -> Vec<Wiped> {
    let Ok(entries) = std::fs::read_dir(RUNTIME_DIR) else {
        return Vec::new();
    };
    let mut wipes: Vec<Wiped> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let mapping = name.strip_prefix("wiped.")?.strip_suffix(".json")?;
            last_wipe(mapping)
        })
        .collect();
    wipes.sort_by(|a, b| a.mapping.cmp(&b.mapping));
    wipes
}

/// Forgets a wipe's report (a new unlock, or lock, of that mapping).
pub fn forget_wipe(mapping: &str) {
    let _ = std::fs::remove_file(wiped_path(mapping));
}

/// How long `arm` waits for the watcher to say it is armed: it locks a few MiB of code
/// into memory first, which takes a while on a slow live system.
const ARM_TIMEOUT: Duration = Duration::from_secs(20);

/// Starts the watcher of `mapping` and waits until it is armed. `Err` says why it is not.
/// `layout` is passed on for the watcher's own command line.
pub fn arm(mapping: &str, on_removal: OnRemoval, layout: &str) -> Result<Watch, String> {
    if status(mapping).armed {
        return Err(format!("a watcher is already armed for {mapping}"));
    }
    let mut command = std::process::Command::new("/proc/self/exe");
    command
        .arg0("keepsake")
        .args([
            "--layout",
            layout,
            "watch",
            "--serve",
            mapping,
            "--on-removal",
        ])
        .arg(on_removal.name())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent's.
    unsafe {
        command.pre_exec(|| {
            // A session of its own: no terminal to hang up on it, no process group a
            // Ctrl-C or sudo reaches.
            nix::unistd::setsid()
                .map(drop)
                .map_err(std::io::Error::from)
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("starting the watcher: {e}"))?;
    let stdout = child.stdout.take().ok_or("the watcher has no output")?;
    let stderr = child.stderr.take().ok_or("the watcher has no output")?;
    let line = read_line_within(stdout, ARM_TIMEOUT);
    match line {
        Some(line) if line.starts_with("armed ") => {
            let watch: Watch = serde_json::from_str(&line["armed ".len()..])
                .map_err(|e| format!("the watcher's answer: {e}"))?;
            // Not waited for (it runs until the volume goes): init reaps it once this
            // process has exited.
            drop(child);
            Ok(watch)
        }
        other => {
            let _ = child.kill();
            let _ = child.wait();
            // Killed, it could not remove the state file it may have written: a file
            // nobody holds would sit in /run/keepsake as if a watcher had been there.
            remove_if_stale(&state_path(mapping));
            let mut why = String::new();
            let _ = std::io::Read::read_to_string(&mut { stderr }, &mut why);
            let why = why.trim();
            Err(if !why.is_empty() {
                why.trim_start_matches("keepsake: ").to_string()
            } else if other.is_none() {
                format!("the watcher did not arm within {} s", ARM_TIMEOUT.as_secs())
            } else {
                format!("the watcher said: {}", other.unwrap_or_default())
            })
        }
    }
}

/// The watcher's first line, if it comes within `timeout`. A signal does not cut the wait
/// short: poll(2) returns EINTR after any handler, SA_RESTART or not, and unlock's handler
/// only records a stop signal for later. Giving up there would kill a watcher about to say
/// "armed" and leave the volume unwatched, after a SIGHUP the live user can send through
/// sudo at the right moment.
fn read_line_within(stdout: std::process::ChildStdout, timeout: Duration) -> Option<String> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let mut poll = libc::pollfd {
            fd: stdout.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        // SAFETY: one pollfd that lives across the call.
        let n = unsafe { libc::poll(&mut poll, 1, left.as_millis() as i32) };
        if n > 0 {
            break;
        }
        let interrupted =
            n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted;
        if !interrupted || left.is_zero() {
            return None;
        }
    }
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line).ok()?;
    (!line.is_empty()).then(|| line.trim_end().to_string())
}

/// Where the watcher reports a wipe: the kernel's log (the system log, and the console at
/// its level), the console itself, and syslog's socket when there is one. All opened when
/// it arms: nothing is looked up after the stick is gone.
struct Reporters {
    kmsg: Option<File>,
    console: Option<File>,
    syslog: Option<std::os::unix::net::UnixDatagram>,
}

impl Reporters {
    fn open() -> Reporters {
        use std::os::unix::fs::OpenOptionsExt;
        let open = |path: &str| {
            std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
                .open(path)
                .ok()
        };
        let syslog = std::os::unix::net::UnixDatagram::unbound()
            .ok()
            .filter(|s| s.connect("/dev/log").is_ok());
        Reporters {
            kmsg: open("/dev/kmsg"),
            console: open("/dev/console"),
            syslog,
        }
    }

    fn say(&mut self, line: &str) {
        // <2>: critical; the kernel log prints it on the console at the default level.
        if let Some(k) = &mut self.kmsg {
            let _ = k.write_all(format!("<2>{line}\n").as_bytes());
        }
        if let Some(c) = &mut self.console {
            let _ = c.write_all(format!("\r\n{line}\r\n").as_bytes());
        }
        if let Some(s) = &self.syslog {
            // LOG_AUTH (4) | LOG_CRIT (2).
            let _ = s.send(format!("<34>keepsake[{}]: {line}", std::process::id()).as_bytes());
        }
    }
}

/// The state file, held locked for the watcher's life.
struct Held {
    _lock: nix::fcntl::Flock<File>,
    path: PathBuf,
}

impl Held {
    /// Takes the lock on `mapping`'s state file and writes `watch` into it. A watcher
    /// still there (or still going) has it: wait a moment for one that is going.
    fn take(mapping: &str, watch: &Watch) -> Result<Held, String> {
        use std::os::unix::fs::OpenOptionsExt;
        super::record::runtime_dir().map_err(|e| e.to_string())?;
        let path = state_path(mapping);
        for _ in 0..20 {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let mut lock =
                match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
                    Ok(lock) => lock,
                    Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                    Err((_, e)) => return Err(format!("{}: {e}", path.display())),
                };
            // The one going may have removed the file after this one opened it.
            if !still_at(&path, &lock) {
                continue;
            }
            let text = serde_json::to_vec(watch).map_err(|e| e.to_string())?;
            lock.set_len(0)
                .and_then(|()| lock.write_all(&text))
                .map_err(|e| format!("{}: {e}", path.display()))?;
            return Ok(Held { _lock: lock, path });
        }
        Err(format!("a watcher is already armed for {mapping}"))
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The watcher itself (`keepsake watch --serve MAPPING`), run by [`arm`]. Returns when the
/// mapping is gone, by lock or by its own wipe.
pub fn serve(mapping: &str, on_removal: OnRemoval) -> Result<(), String> {
    // Nothing of the volume (or of a terminal's) held open: its working folder neither.
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))?;
    for signal in [
        libc::SIGHUP,
        libc::SIGINT,
        libc::SIGQUIT,
        libc::SIGPIPE,
        libc::SIGTSTP,
        libc::SIGTTIN,
        libc::SIGTTOU,
    ] {
        // SAFETY: SIG_IGN for signals this process never handles.
        unsafe { libc::signal(signal, libc::SIG_IGN) };
    }
    nix::sys::prctl::set_dumpable(false).map_err(|e| format!("PR_SET_DUMPABLE: {e}"))?;
    let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0);
    // The socket first, then the devices: one that goes in between is seen below.
    let mut socket = uevent::Socket::open().map_err(|e| format!("the uevent socket: {e}"))?;
    let control = Control::open().map_err(|e| format!("/dev/mapper/control: {e}"))?;
    let mapping_dev = devices::all_mappings()
        .into_iter()
        .find(|m| m.name == mapping)
        .map(|m| m.dev)
        .ok_or_else(|| format!("no mapping {mapping} is open"))?;
    let under = devices::stack_under(mapping_dev);
    if under.is_empty() {
        return Err(format!("no device found under /dev/mapper/{mapping}"));
    }
    let sectors = dm::sectors(mapping_dev).map_err(|e| format!("the mapping's size: {e}"))?;
    let watch = Watch {
        pid: std::process::id(),
        mapping: mapping.to_string(),
        on_removal,
        devices: under.clone(),
    };
    let held = Held::take(mapping, &watch)?;
    let mut reporters = Reporters::open();
    // Found now, while /etc/passwd can be read: where the links into the volume are.
    let home = crate::persistence::features::SystemHost::new(None)
        .live_user
        .ok()
        .map(|u| u.home);
    lock_in_memory()?;
    forget_wipe(mapping);
    // Armed. Anything already gone is handled as if its event came now.
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "armed {}",
        serde_json::to_string(&watch).map_err(|e| e.to_string())?
    )
    .map_err(|e| e.to_string())?;
    drop(out);
    detach_from_output();
    let teardown = Teardown {
        mapping,
        dev: mapping_dev,
        on_removal,
    };
    let gone = loop {
        // SIGTERM from root disarms it (the live user cannot signal a root process).
        if crate::interrupt::received().is_some() {
            break None;
        }
        if let Some(name) = first_gone(&under) {
            break Some(name);
        }
        match socket.receive(2000) {
            Ok(Received::Event(e)) if e.is_block_removal() => {
                if e.dev == Some(mapping_dev) {
                    break None;
                }
                if let Some(u) = under.iter().find(|u| Some(u.dev) == e.dev) {
                    break Some(u.name.clone());
                }
            }
            Ok(Received::Event(_)) | Ok(Received::Other) => {}
            // Lost events, or a quiet while: look at the devices themselves.
            Ok(Received::Overrun) | Ok(Received::Timeout) | Err(_) => {
                if !control.exists(mapping_dev).unwrap_or(true) {
                    break None;
                }
            }
        }
    };
    let Some(name) = gone else {
        // Locked, or disarmed: nothing to do.
        drop(held);
        return Ok(());
    };
    let mount_root = wipe::mount_root_of(mapping_dev);
    let wiped = wipe::wipe(&control, &teardown, sectors, &format!("/dev/{name}"));
    reporters.say(&wipe::summary(&wiped));
    if on_removal == OnRemoval::Shutdown {
        reporters.say("keepsake: powering off");
        // SAFETY: reboot(2) with a command and no pointers. No sync: the only disk that
        // mattered is gone, and a sync could wait on it.
        unsafe { libc::reboot(libc::RB_POWER_OFF) };
    }
    let mut wiped = wiped;
    if let (Some(home), Some(root)) = (home, mount_root) {
        wiped.links_removed = wipe::remove_links(&home, &root);
    }
    if let Ok(text) = serde_json::to_vec(&wiped) {
        let _ = std::fs::write(wiped_path(mapping), text);
    }
    drop(held);
    Ok(())
}

/// The first of `under` that sysfs no longer shows.
fn first_gone(under: &[Under]) -> Option<String> {
    under
        .iter()
        .find(|u| !Path::new(&format!("/sys/dev/block/{}:{}", u.dev.0, u.dev.1)).exists())
        .map(|u| u.name.clone())
}

/// Every page of the process in RAM now, and every page it will get: the wipe path must
/// not fault a page of code in from a stick that is gone. Not MCL_ONFAULT (as the other
/// commands lock theirs): here faulting everything in at once is the point. And the
/// kernel's out-of-memory killer passes it by.
fn lock_in_memory() -> Result<(), String> {
    // SAFETY: mlockall takes flags only.
    if unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) } != 0 {
        return Err(format!(
            "locking the watcher in memory (mlockall): {}",
            std::io::Error::last_os_error()
        ));
    }
    let _ = std::fs::write("/proc/self/oom_score_adj", b"-1000\n");
    Ok(())
}

/// The arming command reads the first line only; after it, the watcher writes nowhere the
/// terminal or the arming command could block it.
fn detach_from_output() {
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        for fd in [1, 2] {
            // SAFETY: dup2 onto the standard descriptors, which this process owns.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A signal while unlock waits for the watcher's first line (a stop signal, which
    /// unlock's handler only records) does not end the wait: the line that comes after
    /// it is read.
    #[test]
    fn a_signal_during_the_wait_for_the_watchers_line_does_not_end_it() {
        extern "C" fn record(_: libc::c_int) {}
        // SAFETY: a handler that does nothing, for a signal nothing else in the tests uses;
        // SA_RESTART as unlock's own, which poll(2) ignores.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = record as extern "C" fn(libc::c_int) as usize;
            action.sa_flags = libc::SA_RESTART;
            assert_eq!(
                libc::sigaction(libc::SIGUSR2, &action, std::ptr::null_mut()),
                0
            );
        }
        let (read, write) = nix::unistd::pipe().unwrap();
        // SAFETY: the calling thread's own id.
        let waiting = unsafe { libc::pthread_self() };
        let watcher = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            // SAFETY: the waiting thread is blocked in read_line_within until the line comes.
            assert_eq!(unsafe { libc::pthread_kill(waiting, libc::SIGUSR2) }, 0);
            std::thread::sleep(Duration::from_millis(300));
            // Fails only once the reader gave up, which the assertion below says.
            let _ = File::from(write).write_all(b"armed {}\n");
        });
        let line = read_line_within(
            std::process::ChildStdout::from(read),
            Duration::from_secs(10),
        );
        watcher.join().unwrap();
        assert_eq!(
            line.as_deref(),
            Some("armed {}"),
            "the wait ended at the signal"
        );
    }

    #[test]
    fn armed_means_a_state_file_whose_lock_is_held() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("watch.vol.json");
        assert!(!status_of(&path).armed, "no file: not armed");
        let watch = Watch {
            pid: 4242,
            mapping: "vol".into(),
            on_removal: OnRemoval::Shutdown,
            devices: vec![Under {
                name: "sdb2".into(),
                dev: (8, 18),
            }],
        };
        std::fs::write(&path, serde_json::to_vec(&watch).unwrap()).unwrap();
        // Negative control: the file of a watcher that died (nobody holds the lock).
        assert!(!status_of(&path).armed, "a file alone is not a watcher");
        let held = nix::fcntl::Flock::lock(
            File::open(&path).unwrap(),
            nix::fcntl::FlockArg::LockExclusiveNonblock,
        )
        .unwrap();
        let s = status_of(&path);
        assert!(s.armed);
        assert_eq!(s.pid, Some(4242));
        assert_eq!(s.on_removal, Some(OnRemoval::Shutdown));
        assert_eq!(s.devices, ["sdb2"]);
        drop(held);
        assert!(!status_of(&path).armed, "the lock let go: not armed");
    }

    #[test]
    fn only_a_state_file_nobody_holds_is_removed_as_stale() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("watch.vol.json");
        std::fs::write(&path, b"{}").unwrap();
        let held = nix::fcntl::Flock::lock(
            File::open(&path).unwrap(),
            nix::fcntl::FlockArg::LockExclusiveNonblock,
        )
        .unwrap();
        remove_if_stale(&path);
        assert!(path.exists(), "a watcher's own file, held, is kept");
        drop(held);
        remove_if_stale(&path);
        assert!(!path.exists(), "a file nobody holds is removed");
        remove_if_stale(&path);
    }
}
