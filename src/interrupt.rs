//! SIGINT, SIGTERM and SIGHUP as requests to stop at the next safe point.
//!
//! The live user can send these to keepsake through sudo at any moment (the threat model),
//! and a closed terminal or a Ctrl-C sends them too. Dying on the spot would leave a
//! restore's staging folder, a half-written backup, or a volume between two steps of a
//! journal. So the commands that change things install [`defer_stop_signals`] first: the
//! handler only records which signal came (the self-pipe pattern without the pipe: the
//! loops poll an atomic), long loops call [`check`] at safe points and return
//! [`Interrupted`] through their ordinary rollback, and `main` then exits 128+N (see
//! `crate::error::settle`). The handler runs on whichever thread the kernel picks; that
//! does not matter, since all it does is store the number. The passphrase prompt installs
//! handlers of its own over these while echo is off, and hands the signal on to them when
//! it has put the terminal back (`crate::secrets`).

use std::io;
use std::mem::MaybeUninit;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering::SeqCst};

/// The signals that ask a command to stop, deferred to its next safe point.
pub const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGHUP, libc::SIGINT, libc::SIGTERM];

/// The first stop signal that arrived, or 0.
static RECEIVED: AtomicI32 = AtomicI32::new(0);
/// Whether [`defer_stop_signals`] installed the handler.
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// A stop signal arrived: the operation stopped at a safe point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interrupted(pub libc::c_int);

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "interrupted by {}", signal_name(self.0))
    }
}

/// The conventional name of a stop signal.
pub fn signal_name(signal: libc::c_int) -> &'static str {
    match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}

/// From now on, SIGINT, SIGTERM and SIGHUP are only recorded: the command notices them at
/// its next safe point. A signal the caller chose to ignore (nohup) stays ignored. System
/// calls interrupted by the handler restart (SA_RESTART), so a step of a journal is never
/// cut short by an EINTR it does not expect; a wait that must end on a signal goes through
/// [`interruptible`].
pub fn defer_stop_signals() -> io::Result<()> {
    install(libc::SA_RESTART)?;
    INSTALLED.store(true, SeqCst);
    Ok(())
}

fn install(flags: libc::c_int) -> io::Result<()> {
    for signal in STOP_SIGNALS {
        // SAFETY: an all-zero sigaction is valid; querying changes nothing.
        let mut current: libc::sigaction = unsafe { MaybeUninit::zeroed().assume_init() };
        check_os(unsafe { libc::sigaction(signal, ptr::null(), &mut current) })?;
        if current.sa_sigaction == libc::SIG_IGN {
            continue;
        }
        // SAFETY: as above; the handler is async-signal-safe (one atomic store).
        unsafe {
            let mut action: libc::sigaction = MaybeUninit::zeroed().assume_init();
            action.sa_sigaction = on_stop_signal as extern "C" fn(libc::c_int) as usize;
            action.sa_flags = flags;
            libc::sigemptyset(&mut action.sa_mask);
            check_os(libc::sigaction(signal, &action, ptr::null_mut()))?;
        }
    }
    Ok(())
}

/// Runs `wait` (a blocking read of a passphrase from a descriptor, say) with the handler
/// installed without SA_RESTART, so that a stop signal ends the wait with EINTR instead of
/// leaving the process deaf to everything but SIGKILL.
pub fn interruptible<T>(wait: impl FnOnce() -> T) -> T {
    if !INSTALLED.load(SeqCst) {
        return wait();
    }
    let _ = install(0);
    let result = wait();
    let _ = install(libc::SA_RESTART);
    result
}

extern "C" fn on_stop_signal(signal: libc::c_int) {
    // The first one decides the exit status; later ones change nothing.
    let _ = RECEIVED.compare_exchange(0, signal, SeqCst, SeqCst);
}

/// The stop signal received, if any.
pub fn received() -> Option<libc::c_int> {
    match RECEIVED.load(SeqCst) {
        0 => test_signal(),
        signal => Some(signal),
    }
}

/// A safe point: `Err` if a stop signal arrived.
pub fn check() -> Result<(), Interrupted> {
    match received() {
        Some(signal) => Err(Interrupted(signal)),
        None => Ok(()),
    }
}

fn check_os(result: libc::c_int) -> io::Result<()> {
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

// Tests raise the flag on their own thread only: the process-wide one would stop every
// other test running beside them.
#[cfg(test)]
thread_local! {
    static TEST_SIGNAL: std::cell::Cell<libc::c_int> = const { std::cell::Cell::new(0) };
}

#[cfg(test)]
fn test_signal() -> Option<libc::c_int> {
    Some(TEST_SIGNAL.with(|s| s.get())).filter(|&s| s != 0)
}

#[cfg(not(test))]
fn test_signal() -> Option<libc::c_int> {
    None
}

/// As if `signal` had arrived, for the calling thread only (`0`: as if none had).
#[cfg(test)]
pub(crate) fn pretend_received(signal: libc::c_int) {
    TEST_SIGNAL.with(|s| s.set(signal));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_safe_point_passes_until_a_signal_is_recorded_and_names_it() {
        assert_eq!(check(), Ok(()));
        pretend_received(libc::SIGTERM);
        assert_eq!(check(), Err(Interrupted(libc::SIGTERM)));
        assert_eq!(
            Interrupted(libc::SIGTERM).to_string(),
            "interrupted by SIGTERM"
        );
        pretend_received(0);
        assert_eq!(received(), None);
    }

    #[test]
    fn every_stop_signal_has_its_name() {
        let names: Vec<_> = STOP_SIGNALS.iter().map(|&s| signal_name(s)).collect();
        assert_eq!(names, ["SIGHUP", "SIGINT", "SIGTERM"]);
    }
}
