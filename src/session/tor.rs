//! Stopping and starting the system's tor around changes to its DataDirectory.
//!
//! Tor must never run while its state folder is being bound or unbound: a tor that starts
//! on the amnesic folder and is then covered by the persistent one (or the other way
//! round) would mix two identities. So keepsake stops tor, changes the mounts, and starts
//! it again: as its systemd unit where systemd runs it, or else by running the system's
//! tor binary with the system torrc.
//!
//! The live user can start processes too, named `tor`, in namespaces of its own where
//! `/var/lib/tor` is whatever it mounted there. So keepsake takes nothing from a process
//! it finds — no executable, argument, environment or uid — and counts a process as the
//! system's tor only when it runs as root or the tor account, its executable is the very
//! file (device, inode) of the system's tor binary, and it shares keepsake's mount and
//! user namespaces. Signals go through a pidfd opened before that check, so a recycled
//! pid can never receive them.
//!
//! "Started" means tor has accepted its DataDirectory: it holds the lock on
//! `<DataDirectory>/lock` (tor takes it once the folder's owner and mode pass its checks)
//! and is still running a moment later.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::context::IoError;
use crate::session::error::{Error, Result};

/// Debian's tor DataDirectory, which the tor-state feature binds.
pub const DATA_DIR: &str = "/var/lib/tor";
/// The system torrc: the only configuration keepsake starts tor with.
const TORRC: &str = "/etc/tor/torrc";
/// The account Debian's tor drops to (`User debian-tor`).
const TOR_ACCOUNT: &str = "debian-tor";
const UNITS: &[&str] = &["tor@default.service", "tor.service"];
const START_TIMEOUT: Duration = Duration::from_secs(90);
const SETTLE: Duration = Duration::from_secs(2);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A file's identity: device and inode.
type FileId = (u64, u64);

fn file_id(path: &Path) -> Option<FileId> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// What makes a process the system's tor, as root sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The system's tor binary, found by root in the trusted folders.
    binary: PathBuf,
    binary_id: FileId,
    /// uids a tor may run as: root, and the tor account if there is one.
    uids: Vec<u32>,
    /// keepsake's own mount and user namespaces.
    namespaces: [FileId; 2],
}

/// What a process is, read from /proc (the facts the identity is checked against).
#[derive(Clone, Debug, PartialEq, Eq)]
struct ProcessFacts {
    /// Real, effective, saved and filesystem uids.
    uids: Vec<u32>,
    exe: Option<FileId>,
    namespaces: [Option<FileId>; 2],
}

impl ProcessFacts {
    fn read(pid: i32) -> Option<ProcessFacts> {
        let base = PathBuf::from(format!("/proc/{pid}"));
        let status = std::fs::read_to_string(base.join("status")).ok()?;
        Some(ProcessFacts {
            uids: status_uids(&status),
            exe: file_id(&base.join("exe")),
            namespaces: [
                file_id(&base.join("ns/mnt")),
                file_id(&base.join("ns/user")),
            ],
        })
    }
}

/// The four uids of a /proc/PID/status text (empty if the line is missing).
fn status_uids(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .map(|v| {
            v.split_whitespace()
                .filter_map(|u| u.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

impl Identity {
    /// The system's tor, if its binary is installed where root keeps programs.
    pub fn of_system() -> Option<Identity> {
        let binary = crate::host::tools::find("tor")?;
        let binary_id = file_id(&binary)?;
        let mut uids = vec![0];
        if let Ok(Some(user)) = nix::unistd::User::from_name(TOR_ACCOUNT) {
            uids.push(user.uid.as_raw());
        }
        Some(Identity {
            binary,
            binary_id,
            uids,
            namespaces: [
                file_id(Path::new("/proc/self/ns/mnt"))?,
                file_id(Path::new("/proc/self/ns/user"))?,
            ],
        })
    }

    /// Whether a process with these facts is the system's tor. Every fact must match: a
    /// process that merely calls itself tor, runs the binary as another user, or lives in
    /// a namespace of its own (where its folders are not ours) is not it.
    fn matches(&self, facts: &ProcessFacts) -> bool {
        self.runs_the_binary(facts) && facts.namespaces == self.namespaces.map(Some)
    }

    /// The facts but the namespaces: the system binary, run as root or the tor account.
    fn runs_the_binary(&self, facts: &ProcessFacts) -> bool {
        facts.uids.len() == 4
            && facts.uids.iter().all(|u| self.uids.contains(u))
            && facts.exe == Some(self.binary_id)
    }

    /// The main process of a systemd unit, if it runs the system binary as root or the tor
    /// account. systemd gives Debian's tor unit a mount namespace of its own
    /// (`PrivateTmp`, `ProtectSystem`), so that fact is not asked of it; which process it
    /// is comes from systemd (root's), not from anything the process says.
    fn unit_instances(&self, unit: &str) -> Vec<Instance> {
        let Some(pid) = unit_main_pid(unit) else {
            return vec![];
        };
        pidfd_open(pid)
            .and_then(|pidfd| {
                let facts = ProcessFacts::read(pid)?;
                self.runs_the_binary(&facts)
                    .then_some(Instance { pid, pidfd })
            })
            .into_iter()
            .collect()
    }

    /// The running instances of the system's tor, each held by a pidfd that was opened
    /// before the process was checked (so the checked process is the one signalled).
    fn instances(&self) -> Vec<Instance> {
        let mut found: Vec<Instance> = std::fs::read_dir("/proc")
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
                    // One stat per process first: most are not tor, and the full check
                    // (below, once the pidfd holds the process) costs five system calls.
                    .filter(|pid: &i32| {
                        file_id(&Path::new("/proc").join(pid.to_string()).join("exe"))
                            == Some(self.binary_id)
                    })
                    .filter_map(|pid| {
                        let pidfd = pidfd_open(pid)?;
                        let facts = ProcessFacts::read(pid)?;
                        self.matches(&facts).then_some(Instance { pid, pidfd })
                    })
                    .collect()
            })
            .unwrap_or_default();
        found.sort_by_key(|i| i.pid);
        found
    }

    /// The instances using `dir`: an open file or the working folder in it.
    fn instances_using(&self, dir: &Path) -> Vec<Instance> {
        self.instances()
            .into_iter()
            .filter(|i| uses(i.pid, dir))
            .collect()
    }
}

/// Whether process `pid` has its working folder or an open file under `dir`. (Only asked
/// of processes already known to share our mount namespace, where the paths mean ours.)
fn uses(pid: i32, dir: &Path) -> bool {
    let inside = |link: PathBuf| std::fs::read_link(link).is_ok_and(|t| t.starts_with(dir));
    let base = PathBuf::from(format!("/proc/{pid}"));
    inside(base.join("cwd"))
        || std::fs::read_dir(base.join("fd"))
            .is_ok_and(|fds| fds.filter_map(|f| f.ok()).any(|f| inside(f.path())))
}

/// The pids of the system's tor using its DataDirectory, for `status`.
pub fn pids_using_data_dir() -> Vec<i32> {
    let Some(id) = Identity::of_system() else {
        return vec![];
    };
    let instances = match active_unit() {
        Some(unit) => id.unit_instances(&unit),
        None => id.instances_using(Path::new(DATA_DIR)),
    };
    instances.iter().map(|i| i.pid).collect()
}

/// One process of the system's tor, held by a pidfd.
#[derive(Debug)]
struct Instance {
    pid: i32,
    pidfd: OwnedFd,
}

impl Instance {
    /// Whether it still runs: a pidfd becomes readable once the process has exited (after
    /// it has closed its files), and stays so however its pid is reused.
    fn alive(&self) -> bool {
        let mut poll = libc::pollfd {
            fd: self.pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no timeout.
        let ready = unsafe { libc::poll(&mut poll, 1, 0) };
        ready == 0
    }

    fn signal(&self, signal: Signal) {
        // SAFETY: pidfd_send_signal with a pidfd we own, no siginfo, no flags.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                signal as libc::c_int,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            );
        }
    }
}

fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: a non-negative return is a descriptor that is ours alone.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// How the system's tor is started again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Launch {
    Systemd {
        unit: String,
    },
    /// The system binary with the system torrc, as root (tor drops to its `User` itself).
    Binary,
}

/// The system's tor as found running, and how to start it again.
#[derive(Debug)]
pub struct RunningTor {
    instances: Vec<Instance>,
    pub launch: Launch,
    identity: Identity,
}

impl RunningTor {
    /// The processes of the system's tor running now, found the way it was launched.
    fn running_now(&self) -> Vec<Instance> {
        match &self.launch {
            Launch::Systemd { unit } => self.identity.unit_instances(unit),
            Launch::Binary => self.identity.instances(),
        }
    }
}

fn systemd_runs() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

fn systemctl(args: &[&str]) -> Result<std::process::Output> {
    Ok(crate::host::tools::run("systemctl", args, "systemd")?)
}

/// The main pid systemd records for `unit` (0, or nothing, when it does not run).
fn unit_main_pid(unit: &str) -> Option<i32> {
    let out = systemctl(&["show", "--property=MainPID", "--value", unit]).ok()?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .ok()
        .filter(|&pid| pid > 0)
}

fn active_unit() -> Option<String> {
    if !systemd_runs() {
        return None;
    }
    UNITS
        .iter()
        .find(|u| systemctl(&["is-active", "--quiet", u]).is_ok_and(|o| o.status.success()))
        .map(|u| u.to_string())
}

/// The system torrc, if keepsake may start tor with it: a regular file only root can
/// change, in a folder only root can change. Checked before tor is stopped, so that a
/// torrc keepsake will not use never leaves tor stopped.
fn trusted_torrc() -> Result<&'static Path> {
    let torrc = Path::new(TORRC);
    let only_root = |p: &Path| {
        std::fs::symlink_metadata(p)
            .is_ok_and(|m| m.uid() == 0 && m.mode() & 0o022 == 0 && !m.file_type().is_symlink())
    };
    if only_root(torrc) && torrc.parent().is_some_and(only_root) {
        Ok(torrc)
    } else {
        Err(Error::UntrustedTorrc(format!(
            "{TORRC} is missing, a symlink, or writable by someone other than root; keepsake starts tor only with a torrc that only root can change"
        )))
    }
}

/// The system's tor using its DataDirectory, and how to start it again, if it runs.
pub fn find() -> Result<Option<RunningTor>> {
    let Some(identity) = Identity::of_system() else {
        return Ok(None);
    };
    if let Some(unit) = active_unit() {
        return Ok(Some(RunningTor {
            instances: identity.unit_instances(&unit),
            launch: Launch::Systemd { unit },
            identity,
        }));
    }
    let instances = identity.instances_using(Path::new(DATA_DIR));
    if instances.is_empty() {
        return Ok(None);
    }
    trusted_torrc()?;
    Ok(Some(RunningTor {
        instances,
        launch: Launch::Binary,
        identity,
    }))
}

/// Stops tor and waits until none of its processes is left.
pub fn stop(tor: &RunningTor) -> Result<()> {
    if let Launch::Systemd { unit } = &tor.launch {
        let out = systemctl(&["stop", unit])?;
        if !out.status.success() {
            return Err(Error::Unexpected(format!(
                "systemctl stop {unit} failed: {}",
                crate::host::tools::first_line(&out)
            )));
        }
    }
    stop_instances(&tor.instances)
}

/// Ends these tor processes: SIGINT is tor's clean shutdown (what systemd sends it);
/// then SIGTERM, then SIGKILL for any that linger.
fn stop_instances(instances: &[Instance]) -> Result<()> {
    let left = crate::host::processes::end_in_turn(
        &[Signal::SIGINT, Signal::SIGTERM, Signal::SIGKILL],
        STOP_TIMEOUT,
        || instances.iter().filter(|i| i.alive()).collect::<Vec<_>>(),
        |instance, signal| instance.signal(signal),
    );
    let pids: Vec<i32> = left.iter().map(|i| i.pid).collect();
    if pids.is_empty() {
        Ok(())
    } else {
        Err(Error::TorDidNotStop(format!(
            "tor (pid {pids:?}) did not stop"
        )))
    }
}

/// Starts tor again, and waits until it has accepted `data_dir`. If it exits instead, or
/// does not take its folder in time, it is stopped and the error says so: tor is left
/// stopped, never running on the wrong state.
pub fn start(tor: &RunningTor, data_dir: &Path) -> Result<()> {
    let before: Vec<i32> = tor.running_now().iter().map(|i| i.pid).collect();
    match &tor.launch {
        Launch::Systemd { unit } => {
            let out = systemctl(&["start", unit])?;
            if !out.status.success() {
                let _ = stop(tor);
                return Err(Error::TorDidNotStart(format!(
                    "tor did not start ({unit}: {}); it is left stopped",
                    crate::host::tools::first_line(&out)
                )));
            }
        }
        Launch::Binary => {
            let torrc = trusted_torrc()?;
            Command::new(&tor.identity.binary)
                .arg("-f")
                .arg(torrc)
                .env_clear()
                .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
                .current_dir("/")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .map_err(|e| {
                    Error::Io(IoError::new(
                        format!("starting {}", tor.identity.binary.display()),
                        e,
                    ))
                })?;
        }
    }
    let settled = wait_until_settled(tor, data_dir, &before);
    if settled.is_err() {
        let started: Vec<Instance> = tor
            .running_now()
            .into_iter()
            .filter(|i| !before.contains(&i.pid))
            .collect();
        if let Launch::Systemd { unit } = &tor.launch {
            let _ = systemctl(&["stop", unit]);
        }
        let _ = stop_instances(&started);
    }
    settled
}

/// Whether tor's systemd unit is still active or on its way there.
fn unit_still_starting(tor: &RunningTor) -> bool {
    let Launch::Systemd { unit } = &tor.launch else {
        return false;
    };
    systemctl(&["is-active", unit]).is_ok_and(|out| {
        matches!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "active" | "activating" | "reloading"
        )
    })
}

/// Waits until a tor started after `before` holds the lock of `data_dir`, and still runs
/// a moment later.
fn wait_until_settled(tor: &RunningTor, data_dir: &Path, before: &[i32]) -> Result<()> {
    let started = Instant::now();
    let mut seen = false;
    let refused = || {
        Error::TorDidNotStart(format!(
            "tor refused its state in {} (check the owner and mode of the folder and of its onion service folders); it is left stopped",
            data_dir.display()
        ))
    };
    let new_pids = || -> Vec<i32> {
        tor.running_now()
            .iter()
            .map(|i| i.pid)
            .filter(|p| !before.contains(p))
            .collect()
    };
    while started.elapsed() < START_TIMEOUT {
        let pids = new_pids();
        seen |= !pids.is_empty();
        if let Some(pid) = holder_of_lock(&data_dir.join("lock"), &pids) {
            std::thread::sleep(SETTLE);
            // The same process, still holding its state's lock a moment later.
            return if holder_of_lock(&data_dir.join("lock"), &[pid]).is_some() {
                Ok(())
            } else {
                Err(refused())
            };
        }
        // Gone after having run, or never seen at all: tor exited. Under systemd, only
        // once its unit says so: a main pid looked up while the unit changes state may
        // be missing for a moment (seen on a Debian live system: tor stopped as
        // "refused" three seconds after it had signalled readiness).
        if pids.is_empty()
            && (seen || started.elapsed() > Duration::from_secs(5))
            && !unit_still_starting(tor)
        {
            return Err(refused());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(Error::TorDidNotStart(format!(
        "tor did not take {} within {} s; it is left stopped",
        data_dir.display(),
        START_TIMEOUT.as_secs()
    )))
}

/// What happened to tor around a change of its state folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TorRestart {
    /// tor was not running, or was not involved.
    NotRunning,
    Restarted,
    /// tor was running and is left stopped on purpose (its state could not be bound).
    LeftStopped,
    /// tor was started again and refused its state, or did not start.
    Failed(String),
}

/// The system's tor held stopped while its state folder changes: the one way unlock,
/// feature enable/disable and lock stop tor and start it again. Made by [`TorPause::stop`];
/// ended by [`TorPause::resume`] (start it on whatever `/var/lib/tor` is now) or
/// [`TorPause::leave_stopped`] (its state could not be bound: better stopped than on the
/// wrong one).
#[must_use = "tor stays stopped until resumed"]
#[derive(Debug)]
pub struct TorPause {
    stopped: Option<RunningTor>,
}

impl TorPause {
    /// Stops the system's tor when `involved` and it runs; `before` is called just before
    /// it is stopped (to say so).
    pub fn stop(involved: bool, before: impl FnOnce()) -> Result<TorPause> {
        let running = if involved { find()? } else { None };
        if let Some(tor) = &running {
            before();
            stop(tor)?;
        }
        Ok(TorPause { stopped: running })
    }

    /// Whether tor was running, and is stopped now.
    pub fn stopped(&self) -> bool {
        self.stopped.is_some()
    }

    /// Starts tor again, if it was stopped, and waits until it has accepted its state.
    pub fn resume(self) -> TorRestart {
        match &self.stopped {
            None => TorRestart::NotRunning,
            Some(tor) => match start(tor, Path::new(DATA_DIR)) {
                Ok(()) => TorRestart::Restarted,
                Err(e) => TorRestart::Failed(e.to_string()),
            },
        }
    }

    /// Leaves tor stopped, if it was stopped.
    pub fn leave_stopped(self) -> TorRestart {
        match self.stopped {
            None => TorRestart::NotRunning,
            Some(_) => TorRestart::LeftStopped,
        }
    }
}

/// Runs `change` with the system tor stopped, when `involved` and tor runs, and starts it
/// again afterwards if `change` says so (its second value).
pub fn around<T>(involved: bool, change: impl FnOnce() -> (T, bool)) -> Result<(T, TorRestart)> {
    let pause = TorPause::stop(involved, || {})?;
    let (value, restart) = change();
    let outcome = if restart {
        pause.resume()
    } else {
        pause.leave_stopped()
    };
    Ok((value, outcome))
}

/// The pid among `pids` holding a lock (flock or fcntl) on `file`: a descriptor of the
/// process that is that file (the same device and inode through its magic link as through
/// the path), with a lock the kernel lists in that descriptor's fdinfo. Not /proc/locks:
/// it names a file on overlayfs (a live system's root, where the amnesic /var/lib/tor is)
/// by the overlay's own device and inode, which stat does not give for a file there.
pub fn holder_of_lock(file: &Path, pids: &[i32]) -> Option<i32> {
    let meta = std::fs::metadata(file).ok()?;
    let id = (meta.dev(), meta.ino());
    pids.iter().copied().find(|&pid| holds_a_lock_on(pid, id))
}

fn holds_a_lock_on(pid: i32, id: (u64, u64)) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(|e| e.ok()).any(|fd| {
        std::fs::metadata(fd.path()).is_ok_and(|m| (m.dev(), m.ino()) == id)
            && std::fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                fd.file_name().to_string_lossy()
            ))
            .is_ok_and(|info| info.lines().any(|l| l.starts_with("lock:")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn system() -> Identity {
        Identity {
            binary: "/usr/bin/tor".into(),
            binary_id: (8, 100),
            uids: vec![0, 101],
            namespaces: [(4, 1), (4, 2)],
        }
    }

    fn real_tor() -> ProcessFacts {
        ProcessFacts {
            uids: vec![101, 101, 101, 101],
            exe: Some((8, 100)),
            namespaces: [Some((4, 1)), Some((4, 2))],
        }
    }

    #[test]
    fn the_system_tor_matches_its_identity() {
        assert!(system().matches(&real_tor()));
        let root = ProcessFacts {
            uids: vec![0; 4],
            ..real_tor()
        };
        assert!(system().matches(&root), "a tor not yet dropped to its User");
    }

    #[test]
    fn an_impostor_fails_on_any_one_fact() {
        let id = system();
        let cases = [
            (
                "another executable named tor",
                ProcessFacts {
                    exe: Some((8, 999)),
                    ..real_tor()
                },
            ),
            (
                "the system binary run by the live user",
                ProcessFacts {
                    uids: vec![1000; 4],
                    ..real_tor()
                },
            ),
            (
                "a saved uid of the live user",
                ProcessFacts {
                    uids: vec![101, 101, 1000, 101],
                    ..real_tor()
                },
            ),
            (
                "its own mount namespace",
                ProcessFacts {
                    namespaces: [Some((4, 77)), Some((4, 2))],
                    ..real_tor()
                },
            ),
            (
                "its own user namespace",
                ProcessFacts {
                    namespaces: [Some((4, 1)), Some((4, 78))],
                    ..real_tor()
                },
            ),
            (
                "an exited process",
                ProcessFacts {
                    exe: None,
                    ..real_tor()
                },
            ),
            (
                "no uid line",
                ProcessFacts {
                    uids: vec![],
                    ..real_tor()
                },
            ),
        ];
        for (what, facts) in cases {
            assert!(!id.matches(&facts), "{what} was taken for the system tor");
        }
    }

    #[test]
    fn a_units_tor_in_its_own_namespace_is_judged_without_the_namespace() {
        // systemd runs Debian's tor with PrivateTmp and ProtectSystem: a namespace of its
        // own. Found through the unit, the binary and the uid still have to match.
        let in_unit = ProcessFacts {
            namespaces: [Some((4, 90)), Some((4, 2))],
            ..real_tor()
        };
        assert!(!system().matches(&in_unit));
        assert!(system().runs_the_binary(&in_unit));
        let user_binary = ProcessFacts {
            exe: Some((8, 999)),
            ..in_unit.clone()
        };
        assert!(!system().runs_the_binary(&user_binary));
        let as_user = ProcessFacts {
            uids: vec![1000; 4],
            ..in_unit
        };
        assert!(!system().runs_the_binary(&as_user));
    }

    #[test]
    fn reads_the_uids_of_a_status_text() {
        let status =
            "Name:\ttor\nUmask:\t0022\nUid:\t101\t101\t101\t101\nGid:\t102\t102\t102\t102\n";
        assert_eq!(status_uids(status), vec![101, 101, 101, 101]);
        assert!(status_uids("Name:\ttor\n").is_empty());
    }

    #[test]
    fn this_process_matches_an_identity_made_of_its_own_facts() {
        // The /proc reading half: our own process, checked against an identity built from
        // our own executable, uid and namespaces, matches; with another binary it does not.
        let me = std::process::id() as i32;
        let facts = ProcessFacts::read(me).unwrap();
        let uid = nix::unistd::getuid().as_raw();
        let own = Identity {
            binary: std::env::current_exe().unwrap(),
            binary_id: file_id(&std::env::current_exe().unwrap()).unwrap(),
            uids: vec![uid],
            namespaces: [
                file_id(Path::new("/proc/self/ns/mnt")).unwrap(),
                file_id(Path::new("/proc/self/ns/user")).unwrap(),
            ],
        };
        assert!(own.matches(&facts), "{facts:?}");
        let other = Identity {
            binary_id: file_id(Path::new("/proc/self/ns/mnt")).unwrap(),
            ..own.clone()
        };
        assert!(!other.matches(&facts));
        let instances = own.instances();
        assert!(instances.iter().any(|i| i.pid == me && i.alive()));
    }

    #[test]
    fn a_locked_file_is_found_for_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let file = std::fs::File::create(&path).unwrap();
        let locked =
            nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).unwrap();
        let me = std::process::id() as i32;
        assert_eq!(holder_of_lock(&path, &[me]), Some(me));
        drop(locked);
        assert_eq!(holder_of_lock(&path, &[me]), None);
    }

    /// A live system's amnesic /var/lib/tor is on overlayfs (a squashfs under a tmpfs).
    #[test]
    fn a_locked_file_on_overlayfs_is_found_for_its_holder() {
        assert!(nix::unistd::geteuid().is_root(), "this test needs root");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for sub in ["lower", "layers", "merged"] {
            std::fs::create_dir(d.join(sub)).unwrap();
        }
        let tmpfs = |p: &Path| {
            nix::mount::mount(
                Some("tmpfs"),
                p,
                Some("tmpfs"),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            )
            .unwrap()
        };
        tmpfs(&d.join("lower"));
        tmpfs(&d.join("layers"));
        std::fs::create_dir(d.join("layers/upper")).unwrap();
        std::fs::create_dir(d.join("layers/work")).unwrap();
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            d.join("lower").display(),
            d.join("layers/upper").display(),
            d.join("layers/work").display()
        );
        nix::mount::mount(
            Some("overlay"),
            &d.join("merged"),
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(options.as_str()),
        )
        .unwrap();
        let path = d.join("merged/lock");
        let file = std::fs::File::create(&path).unwrap();
        let locked =
            nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).unwrap();
        let me = std::process::id() as i32;
        let found = holder_of_lock(&path, &[me]);
        // Negative control: /proc/locks names the lock by an id stat does not give.
        let meta = std::fs::metadata(&path).unwrap();
        let by_stat = format!(
            "{:02x}:{:02x}:{}",
            libc::major(meta.dev()),
            libc::minor(meta.dev()),
            meta.ino()
        );
        let in_proc_locks = std::fs::read_to_string("/proc/locks")
            .unwrap()
            .lines()
            .any(|l| l.contains(&format!(" {me} ")) && l.contains(&by_stat));
        drop(locked);
        for sub in ["merged", "layers", "lower"] {
            nix::mount::umount(&d.join(sub)).unwrap();
        }
        assert_eq!(found, Some(me));
        assert!(!in_proc_locks, "/proc/locks would have found it by stat");
    }
}
