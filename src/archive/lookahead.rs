//! The listing walk's look-ahead: a second thread opens the regular files of the folder
//! being listed, a run at a time, ahead of the walk, and finds what the listing needs of
//! each (its status, extended attributes and data extents), holding each descriptor for
//! the data pass as the walk does, so that the walk's system calls are spread over two
//! CPUs as the sealing is. The walk takes the results in its own order; a file the other
//! thread has not reached yet, it looks at itself.
//!
//! Why: the listing is written before any data, and its length must be known before the
//! first byte of data is sealed; so while one thread lists, nothing else can be done, and
//! on the small-file tree of loopdev-tests/bench/backup the listing took a third of the
//! backup's time on one CPU of two, the other idle.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{FileStat, Mode, fstat};

use super::tree::data_extents;
use super::walk::Held;
use crate::safefs::treewalk::Listed;
use crate::safefs::xattr::{On, Xattr};

/// Files looked at ahead of the walk in one go, at most: what the other thread may hold
/// for the walk (a status, attributes and extents each, and a descriptor counted as held).
const RUN: usize = 256;

/// What the listing needs of a regular file, or why it has nothing.
pub(crate) enum Looked {
    /// Gone before it could be opened.
    Vanished,
    /// No longer a regular file (a symlink or folder put in its place, or what was opened
    /// is not a regular file).
    Changed,
    Found {
        /// Held for the data pass, or, with no descriptor to spare, to be closed once
        /// listed.
        file: Result<Held, OwnedFd>,
        st: FileStat,
        /// The attributes kept and the names of those left out, as `On::read` gives them.
        xattrs: io::Result<(Vec<Xattr>, Vec<Vec<u8>>)>,
        extents: Vec<(u64, u64)>,
    },
    /// Not looked at by the other thread, which had no descriptor to spare: the walk looks
    /// at it itself.
    Unheld,
    /// An error, and what was being done.
    Failed {
        what: &'static str,
        error: io::Error,
    },
}

/// Opens the regular file `name` in `parent` without following a symlink (and without
/// blocking, should a FIFO have been swapped in), and finds what the listing needs of it,
/// holding its descriptor if one can be spared.
pub(crate) fn look_at(parent: &OwnedFd, name: &OsStr) -> Looked {
    let flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = match openat(parent, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Looked::Vanished,
        Err(Errno::ELOOP | Errno::ENOTDIR) => return Looked::Changed,
        Err(e) => {
            return Looked::Failed {
                what: "opening",
                error: e.into(),
            };
        }
    };
    let st = match fstat(&fd) {
        Ok(st) => st,
        Err(e) => {
            return Looked::Failed {
                what: "reading",
                error: e.into(),
            };
        }
    };
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Looked::Changed;
    }
    let xattrs = On::Fd(&fd).read();
    let extents = data_extents(&fd, st.st_size as u64, st.st_blocks as u64);
    Looked::Found {
        file: Held::hold(fd),
        st,
        xattrs,
        extents,
    }
}

/// [`look_at`] on the other thread, which holds no descriptor beyond those counted: once
/// none can be spared, the walk opens the files itself (and closes them once listed).
fn look_ahead(parent: &OwnedFd, name: &OsStr) -> Looked {
    if !Held::can_hold() {
        return Looked::Unheld;
    }
    match look_at(parent, name) {
        Looked::Found { file: Err(_), .. } => Looked::Unheld,
        looked => looked,
    }
}

/// Consecutive regular files of one folder, for both threads to look at: the walk takes
/// them from the front, in its order, and the other thread from the back, so that the
/// walk finds the other's results ready. It never waits for the other thread: a file the
/// other has taken but not finished, the walk looks at itself (once a run at most, where
/// the two meet), and the other's result is thrown away. Why: waiting, the walk waited
/// for the other thread to be scheduled again whenever another process had the CPU.
struct Run {
    /// The folder, for the other thread: only while the walk is in it, so that the walk
    /// holds no more descriptors however deep it goes (see `crate::safefs::treewalk`).
    dir: Mutex<Option<OwnedFd>>,
    names: Vec<OsString>,
    /// The files not taken yet, `front..back`: the walk took those before, the other
    /// thread those after.
    left: Mutex<(usize, usize)>,
    /// What the other thread found, until the walk takes it.
    found: Vec<Mutex<Found>>,
}

impl Run {
    fn new(names: Vec<OsString>) -> Run {
        Run {
            dir: Mutex::new(None),
            found: names.iter().map(|_| Mutex::new(Found::Pending)).collect(),
            left: Mutex::new((0, names.len())),
            names,
        }
    }

    /// Whether files are left that no thread took.
    fn any_left(&self) -> bool {
        let (front, back) = *lock(&self.left);
        front < back
    }

    /// For the walk: the first file not taken yet if it is not past `k`.
    fn claim_front(&self, k: usize) -> Option<usize> {
        let mut left = lock(&self.left);
        let (front, back) = *left;
        (front <= k && front < back).then(|| {
            left.0 += 1;
            front
        })
    }

    /// For the other thread: the last file not taken yet.
    fn claim_back(&self) -> Option<usize> {
        let mut left = lock(&self.left);
        let (front, back) = *left;
        (front < back).then(|| {
            left.1 -= 1;
            back - 1
        })
    }

    /// What file `k` (in `dir`) is: what the other thread found, or else looked at on this
    /// thread.
    fn take(&self, k: usize, dir: &OwnedFd) -> Looked {
        while let Some(n) = self.claim_front(k) {
            // Files before `k` were all taken: the walk takes them in order.
            if n == k {
                return look_at(dir, &self.names[n]);
            }
            *lock(&self.found[n]) = Found::Ready(Box::new(look_at(dir, &self.names[n])));
        }
        let mut found = lock(&self.found[k]);
        match std::mem::replace(&mut *found, Found::Taken) {
            Found::Ready(looked) => *looked,
            Found::Pending | Found::Taken => {
                drop(found);
                look_at(dir, &self.names[k])
            }
        }
    }

    /// Gives the other thread's result for file `n` to the walk, unless the walk took
    /// it meanwhile (the result, and the descriptor it holds, are then dropped).
    fn put(&self, n: usize, looked: Looked) {
        let mut found = lock(&self.found[n]);
        if matches!(*found, Found::Pending) {
            *found = Found::Ready(Box::new(looked));
        }
    }
}

/// One file of a [`Run`] the other thread took.
enum Found {
    /// Not looked at yet.
    Pending,
    Ready(Box<Looked>),
    /// Taken by the walk.
    Taken,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding one.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

struct State {
    /// The run to work on.
    run: Option<Arc<Run>>,
    stop: bool,
}

/// The walk's side: the regular files of each folder it is in, and their runs.
pub(crate) struct Lookahead {
    helper: Option<(Arc<Shared>, JoinHandle<()>)>,
    /// For each folder entered, outermost first.
    folders: Vec<Folder>,
    /// The run posted last to the other thread.
    posted: Option<Arc<Run>>,
}

struct Folder {
    /// Its regular files as listed, in the walk's order.
    files: Vec<OsString>,
    /// How many of them the walk took.
    taken: usize,
    /// Its current run, and the index of its first file in `files`: kept when the walk
    /// goes into a subfolder, so that what was found ahead is still used when it is back.
    run: Option<(Arc<Run>, usize)>,
    /// Whether the run has the folder's descriptor (taken back when the walk goes into a
    /// subfolder).
    armed: bool,
}

impl Lookahead {
    /// With `ahead`, a second thread looks at files ahead of the walk; without, the walk
    /// looks at every file itself.
    pub(crate) fn new(ahead: bool) -> Lookahead {
        let helper = ahead
            .then(|| {
                let shared = Arc::new(Shared {
                    state: Mutex::new(State {
                        run: None,
                        stop: false,
                    }),
                    wake: Condvar::new(),
                });
                let theirs = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name("keepsake-list".into())
                    .spawn(move || help(&theirs))
                    .ok()
                    .map(|handle| (shared, handle))
            })
            .flatten();
        Lookahead {
            helper,
            folders: Vec::new(),
            posted: None,
        }
    }

    /// The walk entered a folder holding `entries` (`Some`) or left the innermost (`None`).
    pub(crate) fn around(&mut self, entered: Option<&[(OsString, Listed)]>) {
        match entered {
            Some(entries) => {
                if let Some(Folder {
                    run: Some((run, _)),
                    armed,
                    ..
                }) = self.folders.last_mut()
                {
                    *lock(&run.dir) = None;
                    *armed = false;
                }
                let files = entries
                    .iter()
                    .filter(|(_, listed)| *listed == Some(nix::dir::Type::File))
                    .map(|(name, _)| name.clone())
                    .collect();
                self.folders.push(Folder {
                    files,
                    taken: 0,
                    run: None,
                    armed: false,
                });
            }
            None => {
                self.folders.pop();
            }
        }
    }

    /// What the regular file `name` in `parent` (the folder the walk is in) is.
    pub(crate) fn take(&mut self, parent: &OwnedFd, name: &OsStr) -> Looked {
        let (Some((shared, _)), Some(folder)) = (&self.helper, self.folders.last_mut()) else {
            return look_at(parent, name);
        };
        // Only the folder's next file as listed (a top of the walk is in none).
        if folder.files.get(folder.taken).map(OsString::as_os_str) != Some(name) {
            return look_at(parent, name);
        }
        let i = folder.taken;
        folder.taken += 1;
        let covered = folder
            .run
            .as_ref()
            .is_some_and(|(run, start)| i >= *start && i < start + run.names.len());
        if !covered {
            let names = folder.files[i..folder.files.len().min(i + RUN)].to_vec();
            let run = Arc::new(Run::new(names));
            folder.run = Some((run, i));
            folder.armed = false;
        }
        let Some((run, start)) = &folder.run else {
            return look_at(parent, name);
        };
        // A new run, or back from a subfolder: the other thread works on this one now.
        if !folder.armed && run.any_left() {
            if let Ok(dir) = parent.try_clone() {
                *lock(&run.dir) = Some(dir);
                folder.armed = true;
            }
            if !self.posted.as_ref().is_some_and(|p| Arc::ptr_eq(p, run)) {
                lock(&shared.state).run = Some(Arc::clone(run));
                self.posted = Some(Arc::clone(run));
            }
            shared.wake.notify_one();
        }
        match run.take(i - start, parent) {
            Looked::Unheld => look_at(parent, name),
            looked => looked,
        }
    }
}

impl Drop for Lookahead {
    fn drop(&mut self) {
        if let Some((shared, handle)) = self.helper.take() {
            lock(&shared.state).stop = true;
            shared.wake.notify_one();
            let _ = handle.join();
        }
    }
}

/// The other thread: looks at the files of each run posted, until told to stop.
fn help(shared: &Shared) {
    let mut last: Option<Arc<Run>> = None;
    loop {
        let run = {
            let mut state = lock(&shared.state);
            loop {
                if state.stop {
                    return;
                }
                match &state.run {
                    // A run it has not finished (or was re-armed for, back from a
                    // subfolder).
                    Some(run)
                        if (!last.as_ref().is_some_and(|l| Arc::ptr_eq(l, run))
                            || run.any_left())
                            && lock(&run.dir).is_some() =>
                    {
                        break Arc::clone(run);
                    }
                    _ => {
                        state = shared
                            .wake
                            .wait(state)
                            .unwrap_or_else(PoisonError::into_inner)
                    }
                }
            }
        };
        loop {
            // The folder is held while a file in it is looked at: the walk takes it back
            // only between two files.
            let dir = lock(&run.dir);
            let Some(fd) = dir.as_ref() else { break };
            let Some(n) = run.claim_back() else { break };
            let looked = look_ahead(fd, &run.names[n]);
            drop(dir);
            run.put(n, looked);
        }
        last = Some(run);
    }
}
