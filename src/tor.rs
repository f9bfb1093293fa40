//! Stopping and starting tor around changes to its DataDirectory.
//!
//! Tor must never run while its state folder is being bound or unbound: a tor that starts
//! on the amnesic folder and is then covered by the persistent one (or the other way
//! round) would mix two identities. So keepsake stops tor, changes the mounts, and starts
//! it again the way it was started: as a systemd unit where systemd runs it, or else by
//! running the same command line, as the same user, with the same environment.
//!
//! "Started" means tor has accepted its DataDirectory: it holds the lock on
//! `<DataDirectory>/lock` (tor takes it once the folder's owner and mode pass its checks)
//! and is still running a moment later.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::error::{Error, Result};

/// Debian's tor DataDirectory, which the tor-state feature binds.
pub const DATA_DIR: &str = "/var/lib/tor";
const UNITS: &[&str] = &["tor@default.service", "tor.service"];
const START_TIMEOUT: Duration = Duration::from_secs(90);
const SETTLE: Duration = Duration::from_secs(2);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// How the running tor was started, so that it can be started again the same way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Launch {
    Systemd {
        unit: String,
    },
    Process {
        argv: Vec<OsString>,
        env: Vec<(OsString, OsString)>,
        uid: u32,
        gid: u32,
        cwd: PathBuf,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunningTor {
    pub pids: Vec<i32>,
    pub launch: Launch,
}

/// Whether a process is tor: its executable is a file named `tor`.
fn is_tor(pid: i32) -> bool {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .is_ok_and(|exe| exe.file_name().is_some_and(|n| n == "tor"))
}

/// The pids of running tor processes (any DataDirectory).
pub fn tor_pids() -> Vec<i32> {
    let mut pids: Vec<i32> = std::fs::read_dir("/proc")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
                .filter(|&pid| is_tor(pid))
                .collect()
        })
        .unwrap_or_default();
    pids.sort_unstable();
    pids
}

/// The tor processes using `dir`: an open file or the working folder in it. Other tors
/// (the one inside a Tor Browser bundle, say) are left alone.
pub fn tor_pids_using(dir: &Path) -> Vec<i32> {
    let inside = |link: PathBuf| std::fs::read_link(link).is_ok_and(|t| t.starts_with(dir));
    tor_pids()
        .into_iter()
        .filter(|pid| {
            let base = PathBuf::from(format!("/proc/{pid}"));
            inside(base.join("cwd"))
                || std::fs::read_dir(base.join("fd"))
                    .is_ok_and(|fds| fds.filter_map(|f| f.ok()).any(|f| inside(f.path())))
        })
        .collect()
}

/// Whether the process still runs: it exists and is neither a zombie nor dead. (Its
/// `exe` link goes away early in its exit, before it has closed its files: not enough.)
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| process_state(&stat))
        .is_some_and(|state| !matches!(state, 'Z' | 'X' | 'x'))
}

/// The state letter of a /proc/PID/stat line: the field after the parenthesised name
/// (which may itself hold spaces and parentheses).
fn process_state(stat: &str) -> Option<char> {
    stat.rsplit_once(") ")?.1.chars().next()
}

fn systemd_runs() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

fn systemctl(args: &[&str]) -> Result<std::process::Output> {
    crate::tools::run("systemctl", args, "systemd")
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

fn nul_separated(bytes: Vec<u8>) -> Vec<OsString> {
    bytes
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| OsString::from_vec(s.to_vec()))
        .collect()
}

/// Reads how process `pid` was started: argv, environment, real uid and gid, folder.
fn process_launch(pid: i32) -> Result<Launch> {
    let base = PathBuf::from(format!("/proc/{pid}"));
    let read = |name: &str| {
        std::fs::read(base.join(name)).map_err(|e| Error::Io {
            context: format!("reading how tor (pid {pid}) was started"),
            source: e,
        })
    };
    let argv = nul_separated(read("cmdline")?);
    let env = nul_separated(read("environ")?)
        .into_iter()
        .filter_map(|kv| {
            let bytes = kv.into_vec();
            let eq = bytes.iter().position(|&b| b == b'=')?;
            Some((
                OsString::from_vec(bytes[..eq].to_vec()),
                OsString::from_vec(bytes[eq + 1..].to_vec()),
            ))
        })
        .collect();
    let status = String::from_utf8_lossy(&read("status")?).into_owned();
    let id = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    // A tor whose configuration names a User was started as root and dropped to that
    // user itself (it needs root to do so); otherwise it runs as whoever started it.
    let meta = std::fs::metadata(&base).ok();
    let (uid, gid) = if config_sets_user(&argv) {
        (0, 0)
    } else {
        match (id("Uid:"), id("Gid:")) {
            (Some(u), Some(g)) => (u, g),
            _ => meta.map_or((0, 0), |m| (m.uid(), m.gid())),
        }
    };
    let cwd = std::fs::read_link(base.join("cwd")).unwrap_or_else(|_| PathBuf::from("/"));
    if argv.is_empty() {
        return Err(Error::Internal(format!(
            "tor (pid {pid}) has no command line"
        )));
    }
    Ok(Launch::Process {
        argv,
        env,
        uid,
        gid,
        cwd,
    })
}

/// Whether tor's command line or configuration files set the `User` option.
fn config_sets_user(argv: &[OsString]) -> bool {
    let args: Vec<String> = argv
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let value_of = |flags: &[&str]| {
        args.windows(2)
            .find(|w| flags.contains(&w[0].as_str()))
            .map(|w| w[1].clone())
    };
    if args
        .iter()
        .any(|a| a.eq_ignore_ascii_case("--user") || a.eq_ignore_ascii_case("user"))
    {
        return true;
    }
    let torrc = value_of(&["-f", "--torrc-file"]).unwrap_or_else(|| "/etc/tor/torrc".into());
    let defaults =
        value_of(&["--defaults-torrc"]).unwrap_or_else(|| "/etc/tor/torrc-defaults".into());
    [torrc, defaults]
        .iter()
        .any(|file| std::fs::read_to_string(file).is_ok_and(|text| torrc_sets_user(&text)))
}

fn torrc_sets_user(text: &str) -> bool {
    text.lines().any(|l| {
        l.split_whitespace()
            .next()
            .is_some_and(|keyword| keyword.eq_ignore_ascii_case("User"))
    })
}

/// The running tor and how to start it again, if tor runs.
pub fn find() -> Result<Option<RunningTor>> {
    let pids = tor_pids_using(Path::new(DATA_DIR));
    if let Some(unit) = active_unit() {
        return Ok(Some(RunningTor {
            pids,
            launch: Launch::Systemd { unit },
        }));
    }
    // The oldest tor process is the one that was started; with RunAsDaemon its parent
    // may be gone, and its command line is what starts it again.
    let Some(&first) = pids.first() else {
        return Ok(None);
    };
    let launch = process_launch(first)?;
    Ok(Some(RunningTor { pids, launch }))
}

/// Stops tor and waits until no tor process is left.
pub fn stop(tor: &RunningTor) -> Result<()> {
    if let Launch::Systemd { unit } = &tor.launch {
        let out = systemctl(&["stop", unit])?;
        if !out.status.success() {
            return Err(Error::Internal(format!(
                "systemctl stop {unit} failed: {}",
                crate::tools::first_line(&out)
            )));
        }
    }
    stop_processes(&tor.pids)
}

/// Ends these tor processes: SIGINT is tor's clean shutdown (what systemd sends it);
/// then SIGTERM, then SIGKILL for any that linger.
fn stop_processes(pids: &[i32]) -> Result<()> {
    let left = || {
        pids.iter()
            .copied()
            .filter(|&p| alive(p))
            .collect::<Vec<_>>()
    };
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGKILL] {
        let now = left();
        if now.is_empty() {
            return Ok(());
        }
        for pid in &now {
            let _ = kill(Pid::from_raw(*pid), signal);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline && !left().is_empty() {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    if left().is_empty() {
        Ok(())
    } else {
        Err(Error::Busy(format!("tor (pid {:?}) did not stop", left())))
    }
}

/// Starts tor as it was started before, and waits until it has accepted `data_dir`.
/// If it exits instead, or does not take its folder in time, it is stopped and the
/// error says so: tor is left stopped, never running on the wrong state.
pub fn start(tor: &RunningTor, data_dir: &Path) -> Result<()> {
    let before = tor_pids();
    match &tor.launch {
        Launch::Systemd { unit } => {
            let out = systemctl(&["start", unit])?;
            if !out.status.success() {
                let _ = stop(tor);
                return Err(Error::Corrupt(format!(
                    "tor did not start ({unit}: {}); it is left stopped",
                    crate::tools::first_line(&out)
                )));
            }
        }
        Launch::Process {
            argv,
            env,
            uid,
            gid,
            cwd,
        } => {
            Command::new(&argv[0])
                .args(&argv[1..])
                .env_clear()
                .envs(env.iter().map(|(k, v)| (k, v)))
                .current_dir(cwd)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .uid(*uid)
                .gid(*gid)
                .process_group(0)
                .spawn()
                .map_err(|e| Error::Io {
                    context: format!("starting {}", argv[0].to_string_lossy()),
                    source: e,
                })?;
        }
    }
    let settled = wait_until_settled(data_dir, &before);
    if settled.is_err() {
        let started: Vec<i32> = tor_pids()
            .into_iter()
            .filter(|p| !before.contains(p))
            .collect();
        let _ = stop(&RunningTor {
            pids: started,
            launch: tor.launch.clone(),
        });
    }
    settled
}

/// Waits until a tor started after `before` holds the lock of `data_dir`, and still runs
/// a moment later.
fn wait_until_settled(data_dir: &Path, before: &[i32]) -> Result<()> {
    let started = Instant::now();
    let mut seen = false;
    let refused = || {
        Error::Corrupt(format!(
            "tor refused its state in {} (check the owner and mode of the folder and of its onion service folders); it is left stopped",
            data_dir.display()
        ))
    };
    while started.elapsed() < START_TIMEOUT {
        let pids: Vec<i32> = tor_pids()
            .into_iter()
            .filter(|p| !before.contains(p))
            .collect();
        seen |= !pids.is_empty();
        if let Some(pid) = holder_of_lock(&data_dir.join("lock"), &pids) {
            std::thread::sleep(SETTLE);
            return if tor_pids().contains(&pid) {
                Ok(())
            } else {
                Err(refused())
            };
        }
        // Gone after having run, or never seen at all: tor exited.
        if pids.is_empty() && (seen || started.elapsed() > Duration::from_secs(5)) {
            return Err(refused());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(Error::Internal(format!(
        "tor did not take {} within {} s; it is left stopped",
        data_dir.display(),
        START_TIMEOUT.as_secs()
    )))
}

/// The pid among `pids` holding a lock (flock or fcntl) on `file`, from /proc/locks.
pub fn holder_of_lock(file: &Path, pids: &[i32]) -> Option<i32> {
    let meta = std::fs::metadata(file).ok()?;
    let (major, minor, inode) = (libc::major(meta.dev()), libc::minor(meta.dev()), meta.ino());
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    parse_lock_holders(&locks, major, minor, inode)
        .into_iter()
        .find(|p| pids.contains(p))
}

/// Pids holding locks on device major:minor, inode, in /proc/locks text.
fn parse_lock_holders(locks: &str, major: u32, minor: u32, inode: u64) -> Vec<i32> {
    locks
        .lines()
        .filter_map(|line| {
            // "1: FLOCK  ADVISORY  WRITE 1234 fe:00:56789 0 EOF"; blocked waiters have "->".
            let fields: Vec<&str> = line.split_whitespace().filter(|f| *f != "->").collect();
            let pid: i32 = fields.get(4)?.parse().ok()?;
            let mut id = fields.get(5)?.split(':');
            let maj = u32::from_str_radix(id.next()?, 16).ok()?;
            let min = u32::from_str_radix(id.next()?, 16).ok()?;
            let ino: u64 = id.next()?.parse().ok()?;
            (maj == major && min == minor && ino == inode).then_some(pid)
        })
        .collect()
}

#[cfg(test)]
mod tests {

    #[test]
    fn reads_the_process_state_after_an_odd_name() {
        assert_eq!(process_state("42 (tor) S 1 42 42 0"), Some('S'));
        assert_eq!(process_state("43 (a) b) Z 1 2"), Some('Z'));
        assert_eq!(process_state("garbage"), None);
    }

    use super::*;

    #[test]
    fn parses_proc_locks() {
        let text = "1: FLOCK  ADVISORY  WRITE 1234 fe:01:56789 0 EOF\n\
                    2: POSIX  ADVISORY  WRITE 99 08:02:12 0 EOF\n\
                    3: -> FLOCK  ADVISORY  WRITE 555 fe:01:56789 0 EOF\n";
        assert_eq!(parse_lock_holders(text, 254, 1, 56789), vec![1234, 555]);
        assert_eq!(parse_lock_holders(text, 8, 2, 12), vec![99]);
        assert!(parse_lock_holders(text, 8, 2, 13).is_empty());
    }

    #[test]
    fn finds_the_user_option() {
        assert!(torrc_sets_user(
            "# c\nDataDirectory /var/lib/tor\nUser debian-tor\n"
        ));
        assert!(torrc_sets_user("  user debian-tor"));
        assert!(!torrc_sets_user(
            "# User debian-tor\nUserspaceIOCPBuffers 1\n"
        ));
        let argv = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        assert!(config_sets_user(&argv(&[
            "tor",
            "--User",
            "debian-tor",
            "-f",
            "/nonexistent"
        ])));
        assert!(!config_sets_user(&argv(&[
            "tor",
            "-f",
            "/nonexistent",
            "--defaults-torrc",
            "/nonexistent"
        ])));
    }

    #[test]
    fn nul_separated_fields() {
        let v = nul_separated(b"tor\0-f\0/etc/tor/torrc\0".to_vec());
        assert_eq!(
            v,
            vec![
                OsString::from("tor"),
                OsString::from("-f"),
                OsString::from("/etc/tor/torrc")
            ]
        );
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
}
