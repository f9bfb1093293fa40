//! The archive body's STREAM chunks, sealed and opened in batches of about 1 MiB on worker
//! threads and the caller's, and handed back in order. The thread that reads or writes the archive assigns
//! every chunk its counter and its last flag, so the nonces, and with them the archive's
//! bytes, are the same whatever the number of threads.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

use aws_lc_rs::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use zeroize::{Zeroize, Zeroizing};

use super::header::{KEY_LEN, NONCE_PREFIX_LEN};

/// The Poly1305 tag that follows each sealed chunk.
pub(crate) const TAG_LEN: usize = 16;

/// Plaintext per batch: large enough that passing a batch between threads costs nothing
/// next to sealing it, small enough that a few per thread stay cheap.
const BATCH_BYTES: usize = 1 << 20;

/// The most worker threads a reader or writer starts, whatever it is asked for.
pub const MAX_THREADS: usize = 64;

/// One worker thread per CPU this process may run on. Asked once: the answer comes from
/// reading cgroup files.
pub fn default_threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_THREADS))
    })
}

/// Batches a reader or writer on `threads` threads (`threads - 1` workers and the caller's)
/// allocates, at most: one being filled or emptied by the caller, and two per thread (one
/// being sealed or opened, one waiting), plus one so that the caller's reading or writing
/// overlaps the workers. One thread works in place on a single batch.
fn pool_size(threads: usize) -> usize {
    if threads <= 1 { 1 } else { 2 * threads + 2 }
}

/// Chunks per batch for chunks of `chunk_size` plaintext bytes.
fn batch_chunks(chunk_size: usize) -> usize {
    (BATCH_BYTES / chunk_size).max(1)
}

/// The most memory, in bytes, the batches of a reader or writer take: see
/// docs/backup-format.md, "Limits a reader enforces".
#[cfg(test)]
pub(crate) fn memory_bound(threads: usize, chunk_size: usize) -> usize {
    pool_size(threads.clamp(1, MAX_THREADS))
        * (batch_chunks(chunk_size) * (chunk_size + TAG_LEN) + 1)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Direction {
    Seal,
    Open,
}

/// Consecutive chunks of the archive body, back to back as they are stored: chunk `j` of
/// the batch starts at `j × (chunk_size + 16)`. Allocated once and reused, so chunk buffers
/// are zeroed once, when allocated, and wiped once, when dropped.
pub(super) struct Batch {
    seq: u64,
    /// The counter of the first chunk.
    first_chunk: u64,
    /// Chunks in use, at least 1 once submitted.
    pub chunks: usize,
    /// Length of the final chunk in use: its plaintext before sealing and after opening,
    /// its stored bytes (with the tag) after sealing and before opening. Every other chunk
    /// is full.
    pub final_len: usize,
    /// Whether the final chunk is the last of the archive.
    pub ends_stream: bool,
    pub data: Zeroizing<Vec<u8>>,
    /// The most `data` ever holds.
    room: usize,
    /// After opening: the first chunk whose tag did not check out. The whole batch is then
    /// wiped, so none of its plaintext can be released.
    pub refused: Option<u64>,
}

impl Batch {
    /// Its place in submission order.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Makes the first `len` bytes usable, zeroing only those never used before. A batch
    /// starts with room for one chunk, so that a small archive costs little; the first
    /// time it needs more it moves to room for all its chunks, and the old buffer is wiped.
    pub fn reach(&mut self, len: usize) {
        let len = len.min(self.room);
        if self.data.capacity() < len {
            let mut grown = Zeroizing::new(Vec::with_capacity(self.room));
            grown.extend_from_slice(&self.data);
            self.data = grown;
        }
        if self.data.len() < len {
            self.data.resize(len, 0);
        }
    }

    /// The plaintext of chunk `j`, after opening.
    pub fn opened_chunk(&self, j: usize, chunk_size: usize) -> &[u8] {
        let start = j * (chunk_size + TAG_LEN);
        let len = if j + 1 == self.chunks {
            self.final_len
        } else {
            chunk_size
        };
        &self.data[start..start + len]
    }

    /// The stored bytes of every chunk, after sealing.
    pub fn sealed(&self, chunk_size: usize) -> &[u8] {
        &self.data[..(self.chunks - 1) * (chunk_size + TAG_LEN) + self.final_len]
    }
}

/// The nonce of chunk `counter` in STREAM as the `chacha20poly1305` crate builds it
/// (`StreamBE32`): the archive's 7-byte prefix, the counter as a big-endian u32, and a
/// last-chunk flag byte. The vectors test and the oracle (that crate's STREAM) hold it to
/// that.
fn chunk_nonce(prefix: &[u8; NONCE_PREFIX_LEN], counter: u32, last: bool) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[..NONCE_PREFIX_LEN].copy_from_slice(prefix);
    nonce[NONCE_PREFIX_LEN..NONCE_PREFIX_LEN + 4].copy_from_slice(&counter.to_be_bytes());
    nonce[11] = u8::from(last);
    nonce
}

/// What every worker shares: the archive key (inside aws-lc, which cleanses it when the
/// last holder drops it), the nonce prefix, and the header, which is every chunk's
/// associated data.
struct Cipher {
    key: LessSafeKey,
    nonce_prefix: [u8; NONCE_PREFIX_LEN],
    header: Vec<u8>,
    chunk_size: usize,
    direction: Direction,
}

impl Cipher {
    /// Seals or opens every chunk of `batch` in place. Opening stops at the first chunk that
    /// fails and wipes the whole batch.
    fn process(&self, batch: &mut Batch) {
        let stride = self.chunk_size + TAG_LEN;
        for j in 0..batch.chunks {
            let final_chunk = j + 1 == batch.chunks;
            let len = if !final_chunk {
                match self.direction {
                    Direction::Seal => self.chunk_size,
                    Direction::Open => stride,
                }
            } else {
                batch.final_len
            };
            let last = final_chunk && batch.ends_stream;
            let counter = batch.first_chunk + j as u64;
            // Engine::submit refused counters above u32::MAX.
            let position = u32::try_from(counter).unwrap_or(u32::MAX);
            let nonce =
                Nonce::assume_unique_for_key(chunk_nonce(&self.nonce_prefix, position, last));
            let aad = Aad::from(&self.header[..]);
            let start = j * stride;
            let done = match self.direction {
                Direction::Seal => batch
                    .data
                    .get_mut(start..start + len + TAG_LEN)
                    .ok_or(())
                    .and_then(|room| {
                        let (plain, tag_room) = room.split_at_mut(len);
                        let tag = self
                            .key
                            .seal_in_place_separate_tag(nonce, aad, plain)
                            .map_err(|_| ())?;
                        tag_room.copy_from_slice(tag.as_ref());
                        Ok(len + TAG_LEN)
                    }),
                Direction::Open if len < TAG_LEN => Err(()),
                Direction::Open => {
                    batch
                        .data
                        .get_mut(start..start + len)
                        .ok_or(())
                        .and_then(|sealed| {
                            self.key
                                .open_in_place(nonce, aad, sealed)
                                .map(|plain| plain.len())
                                .map_err(|_| ())
                        })
                }
            };
            match done {
                Ok(new_len) if final_chunk => batch.final_len = new_len,
                Ok(_) => {}
                Err(()) => {
                    batch.data.as_mut_slice().zeroize();
                    batch.refused = Some(counter);
                    return;
                }
            }
        }
    }
}

/// Where a writer's sealed batches go, in order, from whichever thread sealed them: see
/// `stream.rs`.
pub(super) trait Sink: Send + Sync {
    /// Takes `batch`, sealed: writes it once every batch submitted before it was written,
    /// and hands `back` every batch written meanwhile (or passed over, once writing failed).
    fn deliver(&self, batch: Batch, back: &mut dyn FnMut(Batch));
}

struct Workers {
    jobs: Option<mpsc::Sender<Batch>>,
    /// The queue the workers take jobs from, which the caller's thread takes from too
    /// rather than wait.
    queue: Arc<Mutex<mpsc::Receiver<Batch>>>,
    done: mpsc::Receiver<Batch>,
    handles: Vec<JoinHandle<()>>,
}

/// Seals or opens batches on `threads` threads, the caller's among them: `threads - 1`
/// workers, and the caller's thread, which takes a queued batch itself whenever it would
/// otherwise wait for one (with one thread, it does them all, in place). It hands them back
/// in the order they were submitted.
///
/// Why the caller counts: on two CPUs, two workers and the thread reading and writing the
/// files left the reading and writing waiting for a CPU half the time, and were slower
/// than one thread doing everything (loopdev-tests/bench/backup, 2026-11-26).
pub(super) struct Engine {
    cipher: Arc<Cipher>,
    /// Where sealed batches are delivered, if anywhere: then every batch handed back was
    /// delivered first.
    sink: Option<Arc<dyn Sink>>,
    threads: usize,
    allocated: usize,
    spare: Vec<Batch>,
    workers: Option<Workers>,
    next_seq: u64,
    next_out: u64,
    next_chunk: u64,
    /// Batches back from the workers ahead of their turn.
    early: BTreeMap<u64, Batch>,
    /// Tests: start no worker, so that the caller's thread takes every batch from the queue.
    #[cfg(test)]
    caller_only: bool,
}

impl Engine {
    pub fn new(
        key: &[u8; KEY_LEN],
        nonce_prefix: [u8; NONCE_PREFIX_LEN],
        header: Vec<u8>,
        chunk_size: usize,
        direction: Direction,
        threads: usize,
    ) -> io::Result<Engine> {
        let key = UnboundKey::new(&CHACHA20_POLY1305, key)
            .map_err(|_| io::Error::other("the archive key was refused by the cipher"))?;
        Ok(Engine {
            cipher: Arc::new(Cipher {
                key: LessSafeKey::new(key),
                nonce_prefix,
                header,
                chunk_size,
                direction,
            }),
            sink: None,
            threads: threads.clamp(1, MAX_THREADS),
            allocated: 0,
            spare: Vec::new(),
            workers: None,
            next_seq: 0,
            next_out: 0,
            next_chunk: 0,
            early: BTreeMap::new(),
            #[cfg(test)]
            caller_only: false,
        })
    }

    /// Tests: two threads, but no worker started: every batch goes through the queue to
    /// the caller's thread, the path it takes when the workers are busy.
    #[cfg(test)]
    pub fn caller_only(&mut self) {
        self.set_threads(2);
        self.caller_only = true;
    }

    /// Delivers every sealed batch to `sink`, on the thread that sealed it, before handing
    /// it back; only before the first batch was taken.
    pub fn set_sink(&mut self, sink: Arc<dyn Sink>) {
        debug_assert_eq!(self.allocated, 0);
        self.sink = Some(sink);
    }

    /// Sets the number of threads; only before the first batch was taken.
    pub fn set_threads(&mut self, threads: usize) {
        debug_assert_eq!(self.allocated, 0);
        self.threads = threads.clamp(1, MAX_THREADS);
    }

    pub fn chunk_size(&self) -> usize {
        self.cipher.chunk_size
    }

    pub fn batch_chunks(&self) -> usize {
        batch_chunks(self.cipher.chunk_size)
    }

    /// Submitted batches not yet handed back.
    pub fn in_flight(&self) -> usize {
        (self.next_seq - self.next_out) as usize
    }

    /// An empty batch to fill, if the pool has one left: one that came back, or a new one.
    pub fn spare(&mut self) -> Option<Batch> {
        if let Some(mut batch) = self.spare.pop() {
            batch.chunks = 0;
            batch.final_len = 0;
            batch.ends_stream = false;
            batch.refused = None;
            return Some(batch);
        }
        if self.allocated == pool_size(self.threads) {
            return None;
        }
        self.allocated += 1;
        let stride = self.cipher.chunk_size + TAG_LEN;
        Some(Batch {
            seq: 0,
            first_chunk: 0,
            chunks: 0,
            final_len: 0,
            ends_stream: false,
            // Never reallocated by pushing (that would leave a copy behind): see `reach`.
            data: Zeroizing::new(Vec::with_capacity(stride + 1)),
            // One byte more than the chunks: a reader reads it to learn whether the final
            // chunk is the last.
            room: self.batch_chunks() * stride + 1,
            refused: None,
        })
    }

    /// Gives a batch that was handed back to the pool again.
    pub fn recycle(&mut self, batch: Batch) {
        self.spare.push(batch);
    }

    /// Queues `batch` (its `chunks`, `final_len` and `ends_stream` set) to be sealed or
    /// opened, giving its chunks the next counters.
    pub fn submit(&mut self, mut batch: Batch) -> io::Result<()> {
        let after = self.next_chunk + batch.chunks as u64;
        if after > u64::from(u32::MAX) + 1 {
            return Err(io::Error::other(
                "the archive has too many chunks; use a larger chunk size",
            ));
        }
        batch.seq = self.next_seq;
        batch.first_chunk = self.next_chunk;
        batch.refused = None;
        self.next_seq += 1;
        self.next_chunk = after;
        // A stream that fits in one batch is not worth a thread.
        if self.threads == 1 || (self.workers.is_none() && batch.ends_stream) {
            self.cipher.process(&mut batch);
            hand_back(self.sink.as_deref(), &mut self.early, batch);
            return Ok(());
        }
        if self.workers.is_none() {
            self.workers = Some(self.start_workers()?);
        }
        let sent = self
            .workers
            .as_ref()
            .and_then(|w| w.jobs.as_ref())
            .map(|jobs| jobs.send(batch).is_ok());
        match sent {
            Some(true) => Ok(()),
            _ => Err(workers_gone()),
        }
    }

    /// The next batch in submission order, once it is sealed or opened; waits for it.
    /// `None` when nothing is in flight.
    pub fn next(&mut self) -> io::Result<Option<Batch>> {
        if self.in_flight() == 0 {
            return Ok(None);
        }
        loop {
            if let Some(batch) = self.early.remove(&self.next_out) {
                self.next_out += 1;
                return Ok(Some(batch));
            }
            let workers = self.workers.as_ref().ok_or_else(workers_gone)?;
            match workers.take_queued() {
                Some(mut queued) => {
                    self.cipher.process(&mut queued);
                    hand_back(self.sink.as_deref(), &mut self.early, queued);
                }
                None => {
                    let batch = workers.done.recv().map_err(|_| workers_gone())?;
                    self.early.insert(batch.seq, batch);
                }
            }
        }
    }

    /// The next batch in submission order if it is ready now.
    pub fn next_ready(&mut self) -> Option<Batch> {
        if let Some(workers) = &self.workers {
            while let Ok(batch) = workers.done.try_recv() {
                self.early.insert(batch.seq, batch);
            }
        }
        let batch = self.early.remove(&self.next_out)?;
        self.next_out += 1;
        Some(batch)
    }

    fn start_workers(&self) -> io::Result<Workers> {
        let (jobs_tx, jobs_rx) = mpsc::channel::<Batch>();
        let jobs_rx = Arc::new(Mutex::new(jobs_rx));
        let (done_tx, done_rx) = mpsc::channel();
        // The caller's thread is the last of `threads`.
        #[allow(unused_mut)]
        let mut workers = self.threads - 1;
        #[cfg(test)]
        if self.caller_only {
            workers = 0;
        }
        let mut handles = Vec::with_capacity(workers);
        for _ in 0..workers {
            let jobs = Arc::clone(&jobs_rx);
            let done = done_tx.clone();
            let cipher = Arc::clone(&self.cipher);
            let sink = self.sink.clone();
            let handle = std::thread::Builder::new()
                .name("keepsake-stream".into())
                .spawn(move || {
                    loop {
                        // The lock is held only while waiting for the next job.
                        let job = match jobs.lock() {
                            Ok(jobs) => jobs.recv(),
                            Err(_) => return,
                        };
                        let Ok(mut batch) = job else { return };
                        cipher.process(&mut batch);
                        let mut gone = false;
                        let mut back = |b| gone |= done.send(b).is_err();
                        match &sink {
                            Some(sink) => sink.deliver(batch, &mut back),
                            None => back(batch),
                        }
                        if gone {
                            return;
                        }
                    }
                })?;
            handles.push(handle);
        }
        Ok(Workers {
            jobs: Some(jobs_tx),
            queue: jobs_rx,
            done: done_rx,
            handles,
        })
    }
}

/// Puts a batch the caller's thread sealed or opened among those to hand back, through
/// the sink if there is one.
fn hand_back(sink: Option<&dyn Sink>, early: &mut BTreeMap<u64, Batch>, batch: Batch) {
    let mut back = |b: Batch| {
        early.insert(b.seq, b);
    };
    match sink {
        Some(sink) => sink.deliver(batch, &mut back),
        None => back(batch),
    }
}

impl Workers {
    /// A submitted batch no worker has taken yet, if there is one. Never waits: a worker
    /// holds the lock while it waits for a job, which it does only when the queue is empty.
    fn take_queued(&self) -> Option<Batch> {
        self.queue.try_lock().ok()?.try_recv().ok()
    }
}

fn workers_gone() -> io::Error {
    io::Error::other("the archive's worker threads stopped")
}

impl Drop for Engine {
    /// Stops the workers and waits for them, so that every batch, and the key, is wiped
    /// when the reader or writer is gone.
    fn drop(&mut self) {
        if let Some(mut workers) = self.workers.take() {
            workers.jobs = None;
            while workers.done.recv().is_ok() {}
            for handle in workers.handles {
                let _ = handle.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bound docs/backup-format.md states: `2 × N + 2` batches (one with a single
    /// thread) of `batch chunks × (C + 16) + 1` bytes, N at most 64.
    #[test]
    fn the_memory_bound_is_the_documented_one() {
        let batch = |c: usize| (BATCH_BYTES / c).max(1) * (c + TAG_LEN) + 1;
        assert_eq!(memory_bound(1, 64 * 1024), batch(64 * 1024));
        assert_eq!(memory_bound(4, 64 * 1024), 10 * batch(64 * 1024));
        assert_eq!(batch(64 * 1024), 16 * (64 * 1024 + 16) + 1, "1 MiB a batch");
        let largest = 16 * 1024 * 1024;
        assert_eq!(memory_bound(1000, largest), (2 * 64 + 2) * (largest + 17));
    }
}
