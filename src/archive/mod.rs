//! The encrypted backup archive, format version 1; docs/backup-format.md is its
//! specification and this module its reference implementation.
//!
//! Two layers, usable apart. [`Writer`] and [`Reader`] turn any byte stream into an archive
//! and back: a 64-byte plaintext header, then ChaCha20-Poly1305 in the STREAM construction
//! under a key derived with argon2id. A reader hands out a chunk's plaintext only after its
//! tag checked out, so truncation, reordering, appended data and any changed bit are caught
//! before anything unauthenticated is acted on. [`write_tree`] and [`read_tree`] turn a
//! folder tree into that byte stream and back: folders, regular files (sparse ones stay
//! sparse) and symlinks, with modes, owners and modification times. Neither side follows a
//! symlink, and no archive can place anything outside the folder it is extracted into.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufRead, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};

use argon2::{Algorithm, Argon2, Block, Version};
use chacha20poly1305::aead::generic_array::GenericArray;
use chacha20poly1305::aead::stream::{NewStream, StreamBE32};
use chacha20poly1305::{ChaCha20Poly1305, KeyInit};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{Mode, UtimensatFlags, fchmod, fstat, fstatat, futimens, mkdirat, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, Whence, fchown, fchownat, lseek, symlinkat};
use zeroize::Zeroizing;

use crate::error::IoError;
use crate::error::{Context, Error, Result, at};
use crate::safefs::treewalk::{self, DirStack, list_dir, open_dir_at};
use crate::secrets::Secret;

#[cfg(test)]
mod oracle;
mod stream;

use stream::{Batch, Direction, Engine};
pub use stream::{MAX_THREADS, default_threads, memory_bound};

/// The first eight bytes of every archive.
pub const MAGIC: &[u8; 8] = b"KSBACKUP";
/// The format version this module writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// Length of the plaintext header, which is also every chunk's associated data.
pub const HEADER_LEN: usize = 64;
/// Plaintext bytes per chunk unless told otherwise.
pub const DEFAULT_CHUNK_SIZE: u32 = 64 * 1024;
pub const MIN_CHUNK_SIZE: u32 = 4096;
pub const MAX_CHUNK_SIZE: u32 = 16 * 1024 * 1024;
/// Hard caps on the key-derivation cost a reader accepts and a writer writes, so that a
/// hostile header cannot make a reader allocate or compute without bound: a header beyond
/// them is corrupt (exit status 7) whatever the machine. Memory is capped as cryptsetup
/// caps argon2 for LUKS2 (4 GiB), lanes at 16, passes at 64, and the work, memory times
/// passes, at [`MAX_KDF_WORK`]. The work is the time: this argon2 computes lanes one after
/// the other, so lanes neither multiply the memory (which is for all lanes) nor divide the
/// time. Below the caps a reader still refuses, before asking for the passphrase, a memory
/// cost above what this machine has available now ([`KdfParams::require_affordable`], exit
/// status 6).
pub const MAX_KDF_MEMORY_KIB: u32 = 4 * 1024 * 1024;
pub const MAX_KDF_ITERATIONS: u32 = 64;
pub const MAX_KDF_PARALLEL: u32 = 16;
/// The most work (memory in KiB times passes) a key derivation may take: 16 GiB-passes,
/// about 30 s on one core of the AMD EPYC that docs/backup-benchmarks.md was measured on
/// (4 GiB x 4 passes took 28 s, 1 GiB x 4 took 7.5 s, 256 MiB x 3 took 0.8 s).
/// keepsake writes 256 MiB x 3 (0.75) by default, and RFC 9106's strongest recommendation
/// is 2 GiB x 1; a forged header asking 4 GiB x 64 (256, many minutes of one core) is
/// refused.
pub const MAX_KDF_WORK: u64 = 16 * 1024 * 1024;
/// The most extents a file entry may list. A reader refuses more; a writer stores a file
/// more fragmented than that as one extent (its holes then become zeros in the archive).
pub const MAX_EXTENTS: u32 = 1 << 20;

const KDF_ARGON2ID: u8 = 1;
const SALT_LEN: usize = 16;
const NONCE_PREFIX_LEN: usize = 7;
const TAG_LEN: usize = 16;
const KEY_LEN: usize = 32;
/// File data is copied through a buffer of this size.
const COPY_BUFFER: usize = 64 * 1024;

const ENTRY_END: u8 = 0;
const ENTRY_DIR: u8 = 1;
const ENTRY_FILE: u8 = 2;
const ENTRY_SYMLINK: u8 = 3;

/// argon2id cost of the archive key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes over the memory (t_cost).
    pub iterations: u32,
    /// Lanes (p_cost).
    pub parallel: u32,
}

impl Default for KdfParams {
    /// 256 MiB, 3 passes, 1 lane: affordable on any machine a live system boots on.
    fn default() -> KdfParams {
        KdfParams {
            memory_kib: 256 * 1024,
            iterations: 3,
            parallel: 1,
        }
    }
}

impl KdfParams {
    /// Refuses a cost for a new archive, before its passphrase is read: beyond the hard caps
    /// ([`Error::Usage`]), or more memory than `available_kib` ([`Error::UnsafeHost`]).
    pub fn check_for_writing(&self, available_kib: Option<u64>) -> Result<()> {
        if let Some(problem) = self.problem() {
            return Err(Error::Usage(format!(
                "backup key derivation cost: {problem}; nothing was written"
            )));
        }
        self.require_affordable("writing the backup archive", available_kib)
    }

    /// Refuses a memory cost above `available_kib` (MemAvailable), as a volume's keyslots
    /// are refused: [`crate::host::preflight::require_kdf_memory`], [`Error::UnsafeHost`].
    pub fn require_affordable(&self, doing: &str, available_kib: Option<u64>) -> Result<()> {
        Ok(crate::host::preflight::require_kdf_memory(
            doing,
            u64::from(self.memory_kib),
            available_kib,
        )?)
    }

    /// Why these parameters are beyond the hard caps, if they are.
    fn problem(&self) -> Option<String> {
        let KdfParams {
            memory_kib,
            iterations,
            parallel,
        } = *self;
        if !(1..=MAX_KDF_PARALLEL).contains(&parallel) {
            Some(format!(
                "parallelism {parallel} is not between 1 and {MAX_KDF_PARALLEL}"
            ))
        } else if !(1..=MAX_KDF_ITERATIONS).contains(&iterations) {
            Some(format!(
                "{iterations} iterations is not between 1 and {MAX_KDF_ITERATIONS}"
            ))
        } else if memory_kib > MAX_KDF_MEMORY_KIB {
            Some(format!("{memory_kib} KiB of memory is more than 4 GiB"))
        } else if u64::from(memory_kib) * u64::from(iterations) > MAX_KDF_WORK {
            let work_gib = (u64::from(memory_kib) * u64::from(iterations)).div_ceil(1 << 20);
            Some(format!(
                "{memory_kib} KiB of memory times {iterations} passes is {work_gib} GiB-passes of work, more than the {} GiB-passes a reader accepts",
                MAX_KDF_WORK >> 20
            ))
        } else if memory_kib < 8 * parallel {
            Some(format!(
                "{memory_kib} KiB of memory is less than 8 KiB per lane"
            ))
        } else {
            None
        }
    }
}

fn chunk_size_problem(chunk_size: u32) -> Option<String> {
    (!(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size)).then(|| {
        format!(
            "chunk size {chunk_size} is not between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE} bytes"
        )
    })
}

/// The fields of the plaintext header.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Header {
    params: KdfParams,
    salt: [u8; SALT_LEN],
    chunk_size: u32,
    nonce_prefix: [u8; NONCE_PREFIX_LEN],
}

impl Header {
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut bytes = [0u8; HEADER_LEN];
        bytes[0..8].copy_from_slice(MAGIC);
        bytes[8] = FORMAT_VERSION;
        bytes[9] = KDF_ARGON2ID;
        bytes[12..16].copy_from_slice(&self.params.memory_kib.to_le_bytes());
        bytes[16..20].copy_from_slice(&self.params.iterations.to_le_bytes());
        bytes[20..24].copy_from_slice(&self.params.parallel.to_le_bytes());
        bytes[24..40].copy_from_slice(&self.salt);
        bytes[40..44].copy_from_slice(&self.chunk_size.to_le_bytes());
        bytes[44..51].copy_from_slice(&self.nonce_prefix);
        bytes
    }

    /// Parses and bounds-checks a header; nothing in it is trusted yet (it is authenticated
    /// only when the first chunk is).
    fn parse(bytes: &[u8; HEADER_LEN]) -> Result<Header> {
        let u32_at = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        if &bytes[0..8] != MAGIC {
            return Err(Error::Corrupt(
                "not a keepsake backup archive (it does not start with KSBACKUP)".into(),
            ));
        }
        if bytes[8] != FORMAT_VERSION {
            return Err(Error::Corrupt(format!(
                "backup archive format version {} is not supported; this keepsake reads version {FORMAT_VERSION}",
                bytes[8]
            )));
        }
        if bytes[9] != KDF_ARGON2ID {
            return Err(Error::Corrupt(format!(
                "the backup archive uses an unknown key derivation (id {})",
                bytes[9]
            )));
        }
        if bytes[10..12].iter().chain(&bytes[51..64]).any(|&b| b != 0) {
            return Err(Error::Corrupt(
                "the backup archive header has reserved bytes set; it is damaged or from a newer keepsake"
                    .into(),
            ));
        }
        let params = KdfParams {
            memory_kib: u32_at(12),
            iterations: u32_at(16),
            parallel: u32_at(20),
        };
        if let Some(problem) = params.problem() {
            return Err(Error::Corrupt(format!(
                "the backup archive asks for an unreasonable key derivation cost: {problem}"
            )));
        }
        let chunk_size = u32_at(40);
        if let Some(problem) = chunk_size_problem(chunk_size) {
            return Err(Error::Corrupt(format!("the backup archive's {problem}")));
        }
        let mut salt = [0u8; SALT_LEN];
        salt.copy_from_slice(&bytes[24..40]);
        let mut nonce_prefix = [0u8; NONCE_PREFIX_LEN];
        nonce_prefix.copy_from_slice(&bytes[44..51]);
        Ok(Header {
            params,
            salt,
            chunk_size,
            nonce_prefix,
        })
    }
}

fn derive_key(secret: &[u8], header: &Header) -> Result<Zeroizing<[u8; KEY_LEN]>> {
    let KdfParams {
        memory_kib,
        iterations,
        parallel,
    } = header.params;
    let params = argon2::Params::new(memory_kib, iterations, parallel, Some(KEY_LEN))
        .map_err(|e| Error::Internal(format!("argon2id parameters: {e}")))?;
    let mut blocks = kdf_memory(params.block_count())?;
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into_with_memory(secret, &header.salt, &mut key[..], &mut *blocks)
        .map_err(|e| Error::Internal(format!("deriving the archive key: {e}")))?;
    Ok(key)
}

/// argon2's working memory, allocated here rather than by argon2's `hash_password_into`,
/// which aborts the whole process when the allocation fails (a memory limit that
/// MemAvailable does not show: RLIMIT_AS, a cgroup) and frees the blocks unwiped, though
/// they are derived from the passphrase: one hash of a guess would check it against them.
/// A failed allocation is the "cannot afford" refusal; the blocks are wiped when dropped.
fn kdf_memory(blocks: usize) -> Result<Zeroizing<Vec<Block>>> {
    let mut memory = Zeroizing::new(Vec::new());
    memory.try_reserve_exact(blocks).map_err(|_| {
        Error::UnsafeHost(format!(
            "the archive's key derivation needs {} MiB of memory and this process cannot get it; free some memory or use a bigger machine (nothing was changed)",
            blocks.div_ceil(1024)
        ))
    })?;
    memory.resize(blocks, Block::default());
    Ok(memory)
}

fn cipher(key: &[u8; KEY_LEN]) -> ChaCha20Poly1305 {
    ChaCha20Poly1305::new(GenericArray::from_slice(key))
}

/// Encrypts a byte stream into an archive. Everything written is gathered into chunks, in
/// batches of about 1 MiB that worker threads seal while the next one fills (see
/// [`stream`]); [`Writer::finish`] seals the last chunk. An archive whose writer is dropped
/// unfinished has no last chunk, and every reader refuses it as truncated.
pub struct Writer<W: Write> {
    inner: W,
    /// `None` once a write failed: what reached `inner` is then unknown.
    engine: Option<Engine>,
    /// The batch being filled with plaintext, and how much it holds.
    filling: Option<Batch>,
    filled: usize,
}

impl<W: Write> Writer<W> {
    /// Writes the header (fresh random salt and nonce prefix) and derives the key.
    pub fn new(inner: W, secret: &Secret, params: KdfParams, chunk_size: u32) -> Result<Writer<W>> {
        if let Some(problem) = params.problem() {
            return Err(Error::Usage(format!(
                "backup key derivation cost: {problem}"
            )));
        }
        if let Some(problem) = chunk_size_problem(chunk_size) {
            return Err(Error::Usage(format!("backup {problem}")));
        }
        let mut salt = [0u8; SALT_LEN];
        crate::volume::recovery::fill_random(&mut salt)?;
        let mut nonce_prefix = [0u8; NONCE_PREFIX_LEN];
        crate::volume::recovery::fill_random(&mut nonce_prefix)?;
        Writer::with_header(
            inner,
            secret,
            Header {
                params,
                salt,
                chunk_size,
                nonce_prefix,
            },
        )
    }

    /// The deterministic part of [`Writer::new`], for test vectors.
    fn with_header(inner: W, secret: &Secret, header: Header) -> Result<Writer<W>> {
        let key = derive_key(secret.as_bytes(), &header)?;
        Writer::with_key(inner, &header, &key)
    }

    fn with_key(mut inner: W, header: &Header, key: &[u8; KEY_LEN]) -> Result<Writer<W>> {
        let header_bytes = header.encode();
        inner
            .write_all(&header_bytes)
            .context(|| "writing the archive header".into())?;
        Ok(Writer {
            inner,
            engine: Some(engine(header, key, Direction::Seal)),
            filling: None,
            filled: 0,
        })
    }

    /// Seals with `threads` worker threads (1: on the caller's thread) instead of one per
    /// CPU; at most [`MAX_THREADS`]. The archive's bytes do not depend on it.
    pub fn with_threads(mut self, threads: usize) -> Writer<W> {
        if let Some(engine) = &mut self.engine {
            engine.set_threads(threads);
        }
        self
    }

    /// Seals the last chunk (possibly empty) and returns the inner writer, flushed.
    pub fn finish(mut self) -> Result<W> {
        let mut engine = self.engine.take().ok_or_else(failed_earlier)?;
        let chunk_size = engine.chunk_size();
        let mut batch = match self.filling.take() {
            Some(batch) => batch,
            None => spare_batch(&mut engine, &mut self.inner)
                .context(|| "writing the archive".into())?,
        };
        batch.chunks = self.filled.div_ceil(chunk_size).max(1);
        batch.final_len = self.filled - (batch.chunks - 1) * chunk_size;
        batch.reach(batch.chunks * (chunk_size + TAG_LEN));
        batch.ends_stream = true;
        engine
            .submit(batch)
            .and_then(|()| {
                while let Some(batch) = engine.next()? {
                    write_sealed(&mut self.inner, &batch, chunk_size)?;
                }
                self.inner.flush()
            })
            .context(|| "writing the archive".into())?;
        drop(engine);
        Ok(self.inner)
    }

    /// Room for plaintext in the chunk being filled, at least one byte: when the batch is
    /// full, it is sealed first (more data has come, so its final chunk is not the last).
    fn room(&mut self) -> io::Result<&mut [u8]> {
        let engine = self
            .engine
            .as_mut()
            .ok_or_else(|| io::Error::other(failed_earlier()))?;
        let chunk_size = engine.chunk_size();
        let capacity = engine.batch_chunks() * chunk_size;
        if self.filling.is_none() || self.filled == capacity {
            let made = (|| {
                if let Some(mut full) = self.filling.take() {
                    full.chunks = engine.batch_chunks();
                    full.final_len = chunk_size;
                    full.ends_stream = false;
                    engine.submit(full)?;
                }
                spare_batch(engine, &mut self.inner)
            })();
            match made {
                Ok(batch) => {
                    self.filling = Some(batch);
                    self.filled = 0;
                }
                Err(e) => {
                    self.engine = None;
                    return Err(e);
                }
            }
        }
        let batch = self
            .filling
            .as_mut()
            .ok_or_else(|| io::Error::other(failed_earlier()))?;
        let stride = chunk_size + TAG_LEN;
        let (chunk, within) = (self.filled / chunk_size, self.filled % chunk_size);
        batch.reach((chunk + 1) * stride);
        Ok(&mut batch.data[chunk * stride + within..chunk * stride + chunk_size])
    }
}

/// An empty batch: from the pool, or else the oldest one in flight once it is sealed and
/// written out.
fn spare_batch(engine: &mut Engine, inner: &mut impl Write) -> io::Result<Batch> {
    while let Some(batch) = engine.next_ready() {
        write_sealed(inner, &batch, engine.chunk_size())?;
        engine.recycle(batch);
    }
    if let Some(batch) = engine.spare() {
        return Ok(batch);
    }
    let batch = engine.next()?.ok_or_else(|| {
        io::Error::other("the archive writer has no batch to fill; this is a bug")
    })?;
    write_sealed(inner, &batch, engine.chunk_size())?;
    Ok(batch)
}

fn write_sealed(inner: &mut impl Write, batch: &Batch, chunk_size: usize) -> io::Result<()> {
    if batch.refused.is_some() {
        return Err(io::Error::other(
            "sealing a chunk of the archive failed; this is a bug",
        ));
    }
    inner.write_all(batch.sealed(chunk_size))
}

fn engine(header: &Header, key: &[u8; KEY_LEN], direction: Direction) -> Engine {
    Engine::new(
        StreamBE32::from_aead(cipher(key), GenericArray::from_slice(&header.nonce_prefix)),
        header.encode(),
        header.chunk_size as usize,
        direction,
        default_threads(),
    )
}

fn failed_earlier() -> Error {
    Error::Internal("the archive writer failed earlier; the archive is incomplete".into())
}

impl<W: Write> Write for Writer<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        let room = self.room()?;
        let n = room.len().min(data.len());
        room[..n].copy_from_slice(&data[..n]);
        self.filled += n;
        Ok(n)
    }

    /// Flushes the inner writer only: chunks have a fixed size, so a partial one cannot be
    /// written out early.
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Where [`write_tree`] puts the plaintext stream: a [`Writer`], whose chunk buffer file
/// data is read straight into, or a `Vec` (tests, the fuzz harness).
pub trait PlainSink {
    fn put(&mut self, bytes: &[u8]) -> io::Result<()>;

    /// Lends room for between 1 and `want` (at least 1) bytes, which `fill` must fill
    /// completely; returns how many bytes that was. Nothing is added when `fill` fails.
    fn put_with(
        &mut self,
        want: usize,
        fill: &mut dyn FnMut(&mut [u8]) -> io::Result<()>,
    ) -> io::Result<usize>;
}

impl<W: Write> PlainSink for Writer<W> {
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write_all(bytes)
    }

    fn put_with(
        &mut self,
        want: usize,
        fill: &mut dyn FnMut(&mut [u8]) -> io::Result<()>,
    ) -> io::Result<usize> {
        let room = self.room()?;
        let n = room.len().min(want);
        fill(&mut room[..n])?;
        self.filled += n;
        Ok(n)
    }
}

impl PlainSink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.extend_from_slice(bytes);
        Ok(())
    }

    fn put_with(
        &mut self,
        want: usize,
        fill: &mut dyn FnMut(&mut [u8]) -> io::Result<()>,
    ) -> io::Result<usize> {
        let start = self.len();
        self.resize(start + want, 0);
        let filled = fill(&mut self[start..]);
        if filled.is_err() {
            self.truncate(start);
        }
        filled.map(|()| want)
    }
}

/// Why a chunk was refused, carried inside the `io::Error` a [`Reader`] returns.
#[derive(Debug, thiserror::Error)]
#[error("the archive was changed or truncated at chunk {chunk}")]
struct Damaged {
    chunk: u64,
}

enum ReaderState {
    Reading,
    /// The batch ending the stream was handed out: once it is used up, the stream ends.
    Ending,
    /// A chunk was refused: every later read fails the same way.
    Refused(u64),
    /// Reading the inner stream failed.
    Broken,
}

/// Decrypts an archive. Worker threads open batches of chunks ahead of the caller (see
/// [`stream`]); reading yields only plaintext of batches whose every chunk authenticated,
/// and ends (returns 0) only after the last chunk authenticated as the last. A refused chunk
/// is an `io::Error` of kind `InvalidData` naming it; nothing of its batch is released.
pub struct Reader<R: Read> {
    inner: R,
    params: KdfParams,
    engine: Engine,
    /// One byte read past the batch before, to learn whether its final chunk is the last.
    lookahead: Option<u8>,
    /// Set once the final chunk was read, or reading failed: nothing more to read.
    read_all: bool,
    /// Why reading stopped early, reported after every batch read before it.
    read_error: Option<io::Error>,
    /// The opened batch being handed out, its chunk, and how much of that was taken.
    current: Option<Batch>,
    chunk: usize,
    taken: usize,
    state: ReaderState,
}

/// An archive whose header was read and checked, before any passphrase is asked for or any
/// key derived: a forged header is refused here at the cost of reading 64 bytes.
pub struct KeylessReader<R: Read> {
    inner: R,
    header: Header,
    threads: usize,
}

impl<R: Read> KeylessReader<R> {
    /// Reads the header (onto the stack: nothing is allocated) and refuses it, as
    /// [`check_header`] does, when it is out of bounds or its key derivation needs more
    /// than `available_kib` of memory (MemAvailable; see [`crate::volume::mem_available_kib`]).
    pub fn new(mut inner: R, available_kib: Option<u64>) -> Result<KeylessReader<R>> {
        let mut header_bytes = [0u8; HEADER_LEN];
        inner
            .read_exact(&mut header_bytes)
            .map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => Error::Corrupt(
                    "not a keepsake backup archive (shorter than its 64-byte header)".into(),
                ),
                _ => Error::Io(IoError::new("reading the archive header", e)),
            })?;
        let header = check_header(&header_bytes, available_kib)?;
        Ok(KeylessReader {
            inner,
            header,
            threads: default_threads(),
        })
    }

    /// The key-derivation cost the header asks for (checked).
    pub fn kdf_params(&self) -> KdfParams {
        self.header.params
    }

    /// Opens chunks with `threads` worker threads (1: on the caller's thread) instead of
    /// one per CPU; at most [`MAX_THREADS`].
    pub fn with_threads(mut self, threads: usize) -> KeylessReader<R> {
        self.threads = threads;
        self
    }

    /// Derives the key and authenticates the first chunk, so that a wrong passphrase or key
    /// is reported here, as [`Error::WrongKey`].
    pub fn unlock(self, secret: &Secret) -> Result<Reader<R>> {
        let key = derive_key(secret.as_bytes(), &self.header)?;
        Reader::with_key_on(self.inner, &self.header, &key, self.threads)
    }
}

/// Whether the key of an archive with this header may be derived here: the header in bounds
/// (else [`Error::Corrupt`]), and its memory cost within `available_kib` (else
/// [`Error::UnsafeHost`]). A pure function of the two, so that any machine can be played.
fn check_header(bytes: &[u8; HEADER_LEN], available_kib: Option<u64>) -> Result<Header> {
    let header = Header::parse(bytes)?;
    header
        .params
        .require_affordable("opening the backup archive", available_kib)?;
    Ok(header)
}

impl<R: Read> Reader<R> {
    /// Reads and checks the header against the memory this machine has available now,
    /// derives the key and authenticates the first chunk: [`KeylessReader::new`] then
    /// [`KeylessReader::unlock`]. A command reads the passphrase between the two.
    pub fn new(inner: R, secret: &Secret) -> Result<Reader<R>> {
        KeylessReader::new(inner, crate::volume::mem_available_kib())?.unlock(secret)
    }

    /// The rest of [`Reader::new`], once the header was read and the key derived: reads
    /// and opens the first batch, so that a wrong key is reported before anything is
    /// released.
    fn with_key(inner: R, header: &Header, key: &[u8; KEY_LEN]) -> Result<Reader<R>> {
        Reader::with_key_on(inner, header, key, default_threads())
    }

    /// [`Reader::with_key`] with `threads` worker threads.
    fn with_key_on(
        inner: R,
        header: &Header,
        key: &[u8; KEY_LEN],
        threads: usize,
    ) -> Result<Reader<R>> {
        let mut engine = engine(header, key, Direction::Open);
        engine.set_threads(threads);
        let mut reader = Reader {
            inner,
            params: header.params,
            engine,
            lookahead: None,
            read_all: false,
            read_error: None,
            current: None,
            chunk: 0,
            taken: 0,
            state: ReaderState::Reading,
        };
        match reader.next_batch() {
            Ok(()) => Ok(reader),
            Err(e) => match e.get_ref().and_then(|e| e.downcast_ref::<Damaged>()) {
                Some(Damaged { chunk: 0 }) => Err(Error::WrongKey(
                    "the passphrase or key does not decrypt this archive (or its beginning is damaged); nothing was changed"
                        .into(),
                )),
                // A later chunk of the first batch: refused when it is reached, as always.
                Some(_) => Ok(reader),
                None => Err(Error::Io(IoError::new("reading the archive", e))),
            },
        }
    }

    /// The key-derivation cost the archive was written with.
    pub fn kdf_params(&self) -> KdfParams {
        self.params
    }

    /// Keeps the workers busy: reads batches of stored chunks into every spare batch and
    /// submits them, until the final chunk was read.
    fn read_ahead(&mut self) {
        let stride = self.engine.chunk_size() + TAG_LEN;
        let span = self.engine.batch_chunks() * stride;
        while !self.read_all {
            let Some(mut batch) = self.engine.spare() else {
                return;
            };
            let mut len = 0;
            if let Some(byte) = self.lookahead.take() {
                batch.reach(1);
                batch.data[0] = byte;
                len = 1;
            }
            // A chunk at a time, so that only what the archive fills is ever zeroed; one
            // byte past the batch tells whether its final chunk is the last.
            while len < span + 1 {
                batch.reach(((len / stride + 1) * stride + 1).min(span + 1));
                let end = batch.data.len();
                match read_full(&mut self.inner, &mut batch.data[len..end]) {
                    Ok(got) => len += got,
                    Err(e) => {
                        self.read_error = Some(e);
                        self.read_all = true;
                        self.engine.recycle(batch);
                        return;
                    }
                }
                if len < end {
                    break;
                }
            }
            if len == span + 1 {
                self.lookahead = Some(batch.data[span]);
                len = span;
            } else {
                self.read_all = true;
            }
            batch.chunks = len.div_ceil(stride).max(1);
            batch.final_len = len - (batch.chunks - 1) * stride;
            batch.ends_stream = self.read_all;
            if let Err(e) = self.engine.submit(batch) {
                self.read_error = Some(e);
                self.read_all = true;
                return;
            }
        }
    }

    /// Makes the next opened batch current, or records why there is none.
    fn next_batch(&mut self) -> io::Result<()> {
        if let Some(used) = self.current.take() {
            self.engine.recycle(used);
        }
        self.read_ahead();
        let next = self.engine.next();
        let batch = match next {
            Ok(Some(batch)) => batch,
            Ok(None) => {
                self.state = ReaderState::Broken;
                return Err(self.read_error.take().unwrap_or_else(|| {
                    io::Error::other("the archive reader has nothing to read; this is a bug")
                }));
            }
            Err(e) => {
                self.state = ReaderState::Broken;
                return Err(e);
            }
        };
        if let Some(chunk) = batch.refused {
            // Already wiped; the batches after it are dropped (and wiped) with the reader.
            self.state = ReaderState::Refused(chunk);
            self.engine.recycle(batch);
            return Err(refused(chunk));
        }
        if batch.ends_stream {
            self.state = ReaderState::Ending;
        }
        self.current = Some(batch);
        self.chunk = 0;
        self.taken = 0;
        Ok(())
    }

    /// Where the plaintext not yet taken is: chunk, start and end in the current batch.
    fn ready(&self) -> Option<(usize, usize)> {
        let batch = self.current.as_ref()?;
        let chunk_size = self.engine.chunk_size();
        let mut chunk = self.chunk;
        let mut taken = self.taken;
        while chunk < batch.chunks {
            let len = batch.opened_chunk(chunk, chunk_size).len();
            if taken < len {
                return Some((chunk, taken));
            }
            chunk += 1;
            taken = 0;
        }
        None
    }
}

impl<R: Read> BufRead for Reader<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        loop {
            if let Some((chunk, taken)) = self.ready() {
                self.chunk = chunk;
                self.taken = taken;
                break;
            }
            match self.state {
                ReaderState::Reading => self.next_batch()?,
                ReaderState::Ending => return Ok(&[]),
                ReaderState::Refused(chunk) => return Err(refused(chunk)),
                ReaderState::Broken => {
                    return Err(io::Error::other(
                        "reading the archive failed earlier; its end was not checked",
                    ));
                }
            }
        }
        let chunk_size = self.engine.chunk_size();
        Ok(match &self.current {
            Some(batch) => &batch.opened_chunk(self.chunk, chunk_size)[self.taken..],
            None => &[],
        })
    }

    fn consume(&mut self, amount: usize) {
        self.taken += amount;
    }
}

impl<R: Read> Read for Reader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        let ready = self.fill_buf()?;
        let n = ready.len().min(out.len());
        out[..n].copy_from_slice(&ready[..n]);
        self.consume(n);
        Ok(n)
    }
}

fn refused(chunk: u64) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, Damaged { chunk })
}

/// Reads until `buf` is full or the stream ends; returns how much was read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut len = 0;
    while len < buf.len() {
        match reader.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(len)
}

/// What a tree was made of, as written or read.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TreeStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Bytes of file data stored (holes are not counted).
    pub bytes: u64,
    /// Sockets, FIFOs and device nodes the writer left out, by path.
    pub skipped: Vec<String>,
    /// Entries that changed while the writer read them, by path and what happened.
    pub warnings: Vec<String>,
    /// The top-level names in the archive, in order.
    pub entries: Vec<String>,
}

/// Ownership, permissions and modification time of an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Meta {
    /// Permission bits, with setuid, setgid and sticky (st_mode & 0o7777).
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    mtime_nsec: u32,
}

impl Meta {
    fn of(st: &nix::sys::stat::FileStat) -> Meta {
        Meta {
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            mtime: st.st_mtime,
            mtime_nsec: st.st_mtime_nsec as u32,
        }
    }

    fn mtime(&self) -> TimeSpec {
        TimeSpec::new(self.mtime, i64::from(self.mtime_nsec))
    }
}

/// The fields every entry starts with: type, path, metadata.
fn entry_start(kind: u8, path: &[u8], meta: &Meta) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(3 + path.len() + 24);
    out.push(kind);
    push_bytes16(&mut out, path, "path")?;
    out.extend_from_slice(&meta.mode.to_le_bytes());
    out.extend_from_slice(&meta.uid.to_le_bytes());
    out.extend_from_slice(&meta.gid.to_le_bytes());
    out.extend_from_slice(&meta.mtime.to_le_bytes());
    out.extend_from_slice(&meta.mtime_nsec.to_le_bytes());
    Ok(out)
}

/// The fields of a file entry between its metadata and its data.
fn file_layout(size: u64, extents: &[(u64, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + 16 * extents.len());
    out.extend_from_slice(&size.to_le_bytes());
    out.extend_from_slice(&(extents.len() as u32).to_le_bytes());
    for (offset, length) in extents {
        out.extend_from_slice(&offset.to_le_bytes());
        out.extend_from_slice(&length.to_le_bytes());
    }
    out
}

fn push_bytes16(out: &mut Vec<u8>, bytes: &[u8], what: &str) -> Result<()> {
    let len = u16::try_from(bytes.len()).map_err(|_| {
        Error::Usage(format!(
            "cannot archive the {what} {}: longer than 65535 bytes",
            shown(bytes)
        ))
    })?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

fn shown(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

/// Writes the plaintext of an archive to `out`: each of `tops` (names directly inside
/// `root`, such as `Persistent` or `persistence.conf`) with everything below it, then the
/// end marker. Nothing is followed: every entry is opened relative to its open parent with
/// `O_NOFOLLOW`, so a symlink swapped in meanwhile is never read through. Sockets, FIFOs and
/// device nodes are skipped and listed in the stats; entries that vanish or change type
/// while being read are listed as warnings. `progress` gets the file data bytes written so
/// far. `root` itself is not stored.
pub fn write_tree(
    root: &Path,
    tops: &[PathBuf],
    out: &mut impl PlainSink,
    progress: &mut dyn FnMut(u64),
) -> Result<TreeStats> {
    let root_fd = openat(
        nix::fcntl::AT_FDCWD,
        root,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .context(at("opening", root))?;
    let mut names: Vec<&OsStr> = Vec::with_capacity(tops.len());
    for top in tops {
        let mut components = top.components();
        let name = match (components.next(), components.next()) {
            (Some(Component::Normal(name)), None) => name,
            _ => {
                return Err(Error::Usage(format!(
                    "{} is not a name directly inside {}",
                    top.display(),
                    root.display()
                )));
            }
        };
        if names.contains(&name) {
            return Err(Error::Usage(format!("{} is given twice", top.display())));
        }
        if let Err(e) = fstatat(&root_fd, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            return Err(match e {
                Errno::ENOENT => {
                    Error::NotFound(format!("{} does not exist", root.join(name).display()))
                }
                e => Error::Io(IoError::new(
                    format!("reading {}", root.join(name).display()),
                    e.into(),
                )),
            });
        }
        names.push(name);
    }
    let mut walk = TreeWriter {
        root,
        out,
        progress,
        stats: TreeStats::default(),
    };
    walk.stats.entries = names
        .iter()
        .map(|name| name.to_string_lossy().into_owned())
        .collect();
    // Iterative, with a bounded number of folders open: see crate::safefs::treewalk.
    treewalk::walk(root_fd, root, &names, &mut |parent, name, path| {
        walk.entry(parent, name, path)
    })?;
    walk.emit(&[ENTRY_END])?;
    Ok(walk.stats)
}

struct TreeWriter<'a> {
    root: &'a Path,
    out: &'a mut dyn PlainSink,
    progress: &'a mut dyn FnMut(u64),
    stats: TreeStats,
}

impl TreeWriter<'_> {
    fn emit(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.put(bytes).context(|| "writing the archive".into())
    }

    fn shown(&self, path: &[u8]) -> PathBuf {
        self.root.join(OsStr::from_bytes(path))
    }

    fn changed(&mut self, path: &[u8], what: &str) {
        self.stats.warnings.push(format!("{}: {what}", shown(path)));
    }

    /// Writes the entry `name` in `parent`; for a folder, returns it open so that the walk
    /// writes what it holds next.
    fn entry(&mut self, parent: &OwnedFd, name: &OsStr, path: &[u8]) -> Result<Option<OwnedFd>> {
        let st = match fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => {
                self.changed(path, "vanished while being backed up; left out");
                return Ok(None);
            }
            Err(e) => return Err(e).context(at("reading", &self.shown(path))),
        };
        match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => self.directory(parent, name, path),
            libc::S_IFREG => self.file(parent, name, path).map(|()| None),
            libc::S_IFLNK => self.symlink(parent, name, path, &st).map(|()| None),
            _ => {
                self.stats.skipped.push(shown(path));
                Ok(None)
            }
        }
    }

    /// Opens `name` in `parent` without following a symlink; `None` (and a warning) if it
    /// is no longer what it was a moment ago.
    fn open(
        &mut self,
        parent: &OwnedFd,
        name: &OsStr,
        path: &[u8],
        flags: OFlag,
    ) -> Result<Option<OwnedFd>> {
        match openat(
            parent,
            name,
            flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => Ok(Some(fd)),
            Err(Errno::ENOENT | Errno::ELOOP | Errno::ENOTDIR) => {
                self.changed(path, "changed while being backed up; left out");
                Ok(None)
            }
            Err(e) => Err(e).context(at("opening", &self.shown(path))),
        }
    }

    fn directory(
        &mut self,
        parent: &OwnedFd,
        name: &OsStr,
        path: &[u8],
    ) -> Result<Option<OwnedFd>> {
        let Some(fd) = self.open(parent, name, path, OFlag::O_RDONLY | OFlag::O_DIRECTORY)? else {
            return Ok(None);
        };
        let st = fstat(&fd).context(at("reading", &self.shown(path)))?;
        self.emit(&entry_start(ENTRY_DIR, path, &Meta::of(&st))?)?;
        self.stats.dirs += 1;
        Ok(Some(fd))
    }

    fn file(&mut self, parent: &OwnedFd, name: &OsStr, path: &[u8]) -> Result<()> {
        // O_NONBLOCK: should a FIFO have been swapped in, opening it must not hang.
        let Some(fd) = self.open(parent, name, path, OFlag::O_RDONLY | OFlag::O_NONBLOCK)? else {
            return Ok(());
        };
        let shown_path = self.shown(path);
        let st = fstat(&fd).context(at("reading", &shown_path))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            self.changed(path, "changed while being backed up; left out");
            return Ok(());
        }
        let size = st.st_size as u64;
        let extents = data_extents(&fd, size);
        let mut head = entry_start(ENTRY_FILE, path, &Meta::of(&st))?;
        head.extend_from_slice(&file_layout(size, &extents));
        self.emit(&head)?;
        let file = File::from(fd);
        let mut shrank = false;
        for (offset, length) in extents {
            let mut done = 0;
            while done < length {
                // Read straight into the archive's chunk buffer.
                let want = (length - done).min(COPY_BUFFER as u64) as usize;
                let mut read_error = None;
                let put = self.out.put_with(want, &mut |room| match read_full_at(
                    &file,
                    room,
                    offset + done,
                ) {
                    Ok(got) => {
                        if got < room.len() {
                            room[got..].fill(0);
                            shrank = true;
                        }
                        Ok(())
                    }
                    Err(e) => {
                        let failed = io::Error::new(e.kind(), "reading a file");
                        read_error = Some(e);
                        Err(failed)
                    }
                });
                if let Some(e) = read_error {
                    return Err(e).context(at("reading", &shown_path));
                }
                let n = put.context(|| "writing the archive".into())?;
                done += n as u64;
                self.stats.bytes += n as u64;
                (self.progress)(self.stats.bytes);
            }
        }
        if shrank {
            self.changed(
                path,
                "shrank while being backed up; its missing end is stored as zeros",
            );
        }
        self.stats.files += 1;
        Ok(())
    }

    fn symlink(
        &mut self,
        parent: &OwnedFd,
        name: &OsStr,
        path: &[u8],
        st: &nix::sys::stat::FileStat,
    ) -> Result<()> {
        let target = match nix::fcntl::readlinkat(parent, name) {
            Ok(target) => target,
            Err(Errno::ENOENT | Errno::EINVAL) => {
                self.changed(path, "changed while being backed up; left out");
                return Ok(());
            }
            Err(e) => return Err(e).context(at("reading the link", &self.shown(path))),
        };
        let mut entry = entry_start(ENTRY_SYMLINK, path, &Meta::of(st))?;
        push_bytes16(&mut entry, target.as_bytes(), "symlink target of")?;
        self.emit(&entry)?;
        self.stats.symlinks += 1;
        Ok(())
    }
}

/// The ranges of a file that hold data, from SEEK_DATA/SEEK_HOLE; the whole file as one
/// extent where the filesystem cannot tell, or where there would be too many.
fn data_extents(fd: &OwnedFd, size: u64) -> Vec<(u64, u64)> {
    let whole = if size == 0 { vec![] } else { vec![(0, size)] };
    let mut extents = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let start = match lseek(fd, pos as libc::off_t, Whence::SeekData) {
            Ok(start) => start as u64,
            // No data after `pos`: the rest is a hole.
            Err(Errno::ENXIO) => break,
            Err(_) => return whole,
        };
        if start >= size {
            break;
        }
        let end = match lseek(fd, start as libc::off_t, Whence::SeekHole) {
            Ok(end) => (end as u64).min(size),
            Err(_) => return whole,
        };
        if end <= start || extents.len() >= MAX_EXTENTS as usize {
            return whole;
        }
        extents.push((start, end - start));
        pos = end;
    }
    extents
}

/// Reads at `offset` until `buf` is full or the file ends; returns how much was read.
fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut len = 0;
    while len < buf.len() {
        match file.read_at(&mut buf[len..], offset + len as u64) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(len)
}

/// Reads the plaintext of an archive from `input` (usually a [`Reader`]) and checks all of
/// it: every path, the order of entries, every extent list, and that the end marker is
/// followed by nothing. With `Some(dest)`, an existing empty folder, the tree is recreated
/// there: owners only when running as root, modes, modification times, holes of sparse
/// files; folders get their mode and time after their contents are written. Nothing outside
/// `dest` is touched: an entry's parent must be a folder the archive created earlier, and
/// each is opened with `O_NOFOLLOW`. On an error the extraction stops where it was, so
/// `dest` should be thrown away then. `progress` gets the file data bytes read so far.
pub fn read_tree(
    input: &mut impl BufRead,
    dest: Option<&Path>,
    progress: &mut dyn FnMut(u64),
) -> Result<TreeStats> {
    let mut extractor = dest.map(Extractor::new).transpose()?;
    let mut stats = TreeStats::default();
    // Every path seen and its entry type: duplicates and parents are checked against it.
    let mut seen: HashMap<Vec<u8>, u8> = HashMap::new();
    loop {
        let kind = read_u8(input)?;
        if kind == ENTRY_END {
            break;
        }
        if !matches!(kind, ENTRY_DIR | ENTRY_FILE | ENTRY_SYMLINK) {
            return Err(Error::Corrupt(format!(
                "the archive holds an entry of unknown type {kind}"
            )));
        }
        let path = read_bytes16(input)?;
        check_path(&path)?;
        let meta = read_meta(input, &path)?;
        let (parent, _) = split_path(&path);
        if parent.is_empty() {
            stats.entries.push(shown(&path));
        } else {
            match seen.get(parent) {
                Some(&ENTRY_DIR) => {}
                Some(_) => {
                    return Err(Error::Corrupt(format!(
                        "the archive holds {} inside {}, which is not a folder; refusing to follow it",
                        shown(&path),
                        shown(parent)
                    )));
                }
                None => {
                    return Err(Error::Corrupt(format!(
                        "the archive holds {} before its folder {}",
                        shown(&path),
                        shown(parent)
                    )));
                }
            }
        }
        if seen.contains_key(&path) {
            return Err(Error::Corrupt(format!(
                "the archive holds {} twice",
                shown(&path)
            )));
        }
        match kind {
            ENTRY_DIR => {
                if let Some(extractor) = &mut extractor {
                    extractor.directory(&path, meta)?;
                }
                stats.dirs += 1;
            }
            ENTRY_SYMLINK => {
                let target = read_bytes16(input)?;
                if target.is_empty() || target.contains(&0) {
                    return Err(Error::Corrupt(format!(
                        "the archive holds a symlink {} with an empty target or one with a NUL byte",
                        shown(&path)
                    )));
                }
                if let Some(extractor) = &mut extractor {
                    extractor.symlink(&path, &target, &meta)?;
                }
                stats.symlinks += 1;
            }
            _ => {
                let (size, extents) = read_file_layout(input, &path)?;
                let file = match &mut extractor {
                    Some(extractor) => Some(extractor.file(&path, size)?),
                    None => None,
                };
                for (offset, length) in extents {
                    let mut done = 0;
                    while done < length {
                        // Written straight from the reader's opened chunk.
                        let ready = input.fill_buf().map_err(input_error)?;
                        if ready.is_empty() {
                            return Err(input_error(io::ErrorKind::UnexpectedEof.into()));
                        }
                        let n = ready
                            .len()
                            .min((length - done).min(usize::MAX as u64) as usize);
                        if let (Some(file), Some(extractor)) = (&file, &extractor) {
                            file.write_all_at(&ready[..n], offset + done)
                                .context(at("writing", &extractor.shown(&path)))?;
                        }
                        input.consume(n);
                        done += n as u64;
                        stats.bytes += n as u64;
                        progress(stats.bytes);
                    }
                }
                if let (Some(file), Some(extractor)) = (&file, &extractor) {
                    extractor.finish_file(file, &path, &meta)?;
                }
                stats.files += 1;
            }
        }
        seen.insert(path, kind);
    }
    // Reading to the end also makes a Reader authenticate the last chunk as the last.
    let mut one = [0u8; 1];
    if read_full(input, &mut one).map_err(input_error)? != 0 {
        return Err(Error::Corrupt(
            "the archive holds data after its end marker".into(),
        ));
    }
    if let Some(extractor) = extractor {
        extractor.finish()?;
    }
    Ok(stats)
}

/// Why a path from an archive is refused, if it is: only plain relative paths are allowed.
fn check_path(path: &[u8]) -> Result<()> {
    let problem = if path.is_empty() {
        Some("it is empty")
    } else if path[0] == b'/' {
        Some("it is absolute")
    } else if path.contains(&0) {
        Some("it holds a NUL byte")
    } else if path.split(|&b| b == b'/').any(|c| c.is_empty()) {
        Some("it has an empty component")
    } else if path.split(|&b| b == b'/').any(|c| c == b"." || c == b"..") {
        Some("it has a . or .. component")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(Error::Corrupt(format!(
            "the archive holds the path {:?}, which is refused: {problem}",
            shown(path)
        ))),
        None => Ok(()),
    }
}

/// The parent (empty at the top) and the last component of a checked path.
fn split_path(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(slash) => (&path[..slash], &path[slash + 1..]),
        None => (&[], path),
    }
}

fn input_error(e: io::Error) -> Error {
    if let Some(damaged) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<Damaged>())
    {
        return Error::Corrupt(damaged.to_string());
    }
    match e.kind() {
        io::ErrorKind::UnexpectedEof => {
            Error::Corrupt("the archive's contents end in the middle of an entry".into())
        }
        _ => Error::Io(IoError::new("reading the archive", e)),
    }
}

fn read_exact(input: &mut impl Read, buf: &mut [u8]) -> Result<()> {
    input.read_exact(buf).map_err(input_error)
}

fn read_array<const N: usize>(input: &mut impl Read) -> Result<[u8; N]> {
    let mut bytes = [0u8; N];
    read_exact(input, &mut bytes)?;
    Ok(bytes)
}

fn read_u8(input: &mut impl Read) -> Result<u8> {
    Ok(read_array::<1>(input)?[0])
}

fn read_u32(input: &mut impl Read) -> Result<u32> {
    Ok(u32::from_le_bytes(read_array(input)?))
}

fn read_u64(input: &mut impl Read) -> Result<u64> {
    Ok(u64::from_le_bytes(read_array(input)?))
}

/// A u16 length and that many bytes (so at most 64 KiB is ever allocated for it).
fn read_bytes16(input: &mut impl Read) -> Result<Vec<u8>> {
    let len = u16::from_le_bytes(read_array(input)?);
    let mut bytes = vec![0u8; usize::from(len)];
    read_exact(input, &mut bytes)?;
    Ok(bytes)
}

fn read_meta(input: &mut impl Read, path: &[u8]) -> Result<Meta> {
    let meta = Meta {
        mode: read_u32(input)?,
        uid: read_u32(input)?,
        gid: read_u32(input)?,
        mtime: i64::from_le_bytes(read_array(input)?),
        mtime_nsec: read_u32(input)?,
    };
    if meta.mode & !0o7777 != 0 || meta.mtime_nsec >= 1_000_000_000 {
        return Err(Error::Corrupt(format!(
            "the archive holds {} with an invalid mode or time",
            shown(path)
        )));
    }
    Ok(meta)
}

/// The size and extent list of a file entry, checked: at most [`MAX_EXTENTS`], each
/// non-empty, in order, not overlapping, inside the size.
fn read_file_layout(input: &mut impl Read, path: &[u8]) -> Result<(u64, Vec<(u64, u64)>)> {
    let size = read_u64(input)?;
    let count = read_u32(input)?;
    let invalid = || {
        Error::Corrupt(format!(
            "the archive holds the file {} with an invalid extent list",
            shown(path)
        ))
    };
    if count > MAX_EXTENTS {
        return Err(invalid());
    }
    // Grown as extents are read, so the space taken follows what the archive really holds.
    let mut extents = Vec::with_capacity(count.min(1024) as usize);
    let mut end = 0u64;
    for _ in 0..count {
        let offset = read_u64(input)?;
        let length = read_u64(input)?;
        match offset.checked_add(length) {
            Some(extent_end) if length > 0 && offset >= end && extent_end <= size => {
                end = extent_end;
            }
            _ => return Err(invalid()),
        }
        extents.push((offset, length));
    }
    Ok((size, extents))
}

/// Recreates entries below an empty folder.
struct Extractor {
    dest: PathBuf,
    /// The folders last walked down to, by name, with descriptors open for the innermost
    /// few only (see crate::safefs::treewalk): consecutive entries mostly share their parent, so
    /// each folder is opened about once, and a deep tree does not run out of descriptors.
    open: DirStack,
    /// Folders created, in archive order, with the metadata to give them at the end.
    dirs: Vec<(Vec<u8>, Meta)>,
    as_root: bool,
}

impl Extractor {
    fn new(dest: &Path) -> Result<Extractor> {
        let root = openat(
            nix::fcntl::AT_FDCWD,
            dest,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .context(at("opening", dest))?;
        if !list_dir(&root, dest)?.is_empty() {
            return Err(Error::Usage(format!(
                "{} is not empty; restore into an empty folder",
                dest.display()
            )));
        }
        Ok(Extractor {
            dest: dest.to_path_buf(),
            open: DirStack::new(root, dest),
            dirs: Vec::new(),
            as_root: nix::unistd::geteuid().is_root(),
        })
    }

    fn shown(&self, path: &[u8]) -> PathBuf {
        self.dest.join(OsStr::from_bytes(path))
    }

    /// The open folder `parent` (a checked path, empty for `dest`), walked down to one
    /// component at a time without following symlinks.
    fn parent(&mut self, parent: &[u8]) -> Result<&OwnedFd> {
        let components: Vec<&[u8]> = if parent.is_empty() {
            Vec::new()
        } else {
            parent.split(|&b| b == b'/').collect()
        };
        let keep = self
            .open
            .names()
            .zip(&components)
            .take_while(|(open, wanted)| open.as_bytes() == **wanted)
            .count();
        self.open.truncate(keep)?;
        for (depth, name) in components.iter().enumerate().skip(keep) {
            let fd = open_dir_at(self.open.top()?, OsStr::from_bytes(name)).map_err(|e| {
                let walked = self.shown(&components[..=depth].join(&b'/'));
                match e {
                    Errno::ELOOP | Errno::ENOTDIR => Error::Corrupt(format!(
                        "{} is not a folder this restore created; refusing to follow it",
                        walked.display()
                    )),
                    e => Error::Io(IoError::new(
                        format!("opening {}", walked.display()),
                        e.into(),
                    )),
                }
            })?;
            self.open.push(OsStr::from_bytes(name), fd)?;
        }
        Ok(self.open.top()?)
    }

    fn directory(&mut self, path: &[u8], meta: Meta) -> Result<()> {
        let shown_path = self.shown(path);
        let (parent, name) = split_path(path);
        let name = OsStr::from_bytes(name);
        let parent = self.parent(parent)?;
        mkdirat(parent, name, Mode::from_bits_truncate(0o700))
            .context(at("creating", &shown_path))?;
        // Whatever the umask, the folder stays writable until its own mode is set last.
        let fd = openat(
            parent,
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .context(at("opening", &shown_path))?;
        fchmod(&fd, Mode::from_bits_truncate(0o700))
            .context(at("setting the mode of", &shown_path))?;
        self.dirs.push((path.to_vec(), meta));
        Ok(())
    }

    fn file(&mut self, path: &[u8], size: u64) -> Result<File> {
        let shown_path = self.shown(path);
        let (parent, name) = split_path(path);
        let parent = self.parent(parent)?;
        let fd = openat(
            parent,
            OsStr::from_bytes(name),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .context(at("creating", &shown_path))?;
        let file = File::from(fd);
        // The holes are what set_len leaves unwritten.
        file.set_len(size).context(at("sizing", &shown_path))?;
        Ok(file)
    }

    fn finish_file(&self, file: &File, path: &[u8], meta: &Meta) -> Result<()> {
        apply_meta(file, meta, self.as_root, &self.shown(path))
    }

    fn symlink(&mut self, path: &[u8], target: &[u8], meta: &Meta) -> Result<()> {
        let shown_path = self.shown(path);
        let as_root = self.as_root;
        let (parent, name) = split_path(path);
        let name = OsStr::from_bytes(name);
        let parent = self.parent(parent)?;
        symlinkat(OsStr::from_bytes(target), parent, name).context(at("creating", &shown_path))?;
        if as_root {
            fchownat(
                parent,
                name,
                Some(Uid::from_raw(meta.uid)),
                Some(Gid::from_raw(meta.gid)),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .context(at("setting the owner of", &shown_path))?;
        }
        utimensat(
            parent,
            name,
            &TimeSpec::UTIME_OMIT,
            &meta.mtime(),
            UtimensatFlags::NoFollowSymlink,
        )
        .context(at("setting the time of", &shown_path))
    }

    /// Gives folders their owner, mode and time, innermost first: a folder's own mode may
    /// forbid writing into it, and writing into it would change its time.
    fn finish(mut self) -> Result<()> {
        let dirs = std::mem::take(&mut self.dirs);
        for (path, meta) in dirs.iter().rev() {
            let shown_path = self.shown(path);
            let as_root = self.as_root;
            let (parent, name) = split_path(path);
            let parent = self.parent(parent)?;
            let fd = openat(
                parent,
                OsStr::from_bytes(name),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .context(at("opening", &shown_path))?;
            apply_meta(&fd, meta, as_root, &shown_path)?;
        }
        Ok(())
    }
}

/// Owner (as root only: others cannot give files away), then mode (chown clears setuid
/// and setgid), then time (last, as anything else would change it).
fn apply_meta(fd: impl AsFd, meta: &Meta, as_root: bool, shown: &Path) -> Result<()> {
    if as_root {
        fchown(
            &fd,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
        )
        .context(at("setting the owner of", shown))?;
    }
    fchmod(&fd, Mode::from_bits_truncate(meta.mode)).context(at("setting the mode of", shown))?;
    futimens(&fd, &TimeSpec::UTIME_OMIT, &meta.mtime()).context(at("setting the time of", shown))
}

/// The passphrase [`check_untrusted`] tries on archives.
#[doc(hidden)]
pub const FUZZ_PASSPHRASE: &[u8] = b"keepsake fuzz";
const FUZZ_KEY: [u8; KEY_LEN] = [0x42; KEY_LEN];

/// The fuzz harness (fuzz/fuzz_targets/archive_reader.rs, and a unit test): runs untrusted
/// bytes through every reading path, which must refuse them without panicking or
/// allocating without bound. The bytes are read as an archive (with [`FUZZ_PASSPHRASE`],
/// when the header's key derivation is cheap enough to run on every input), as a plaintext
/// stream, and as a plaintext stream sealed in a valid archive, so that the tree parser is
/// also reached through the authenticated path.
#[doc(hidden)]
pub fn check_untrusted(data: &[u8]) {
    if let Some(header) = data.first_chunk::<HEADER_LEN>()
        && let Ok(parsed) = Header::parse(header)
        && parsed.params.memory_kib <= 64
        && parsed.params.iterations <= 2
    {
        let secret = Secret::from_zeroizing(Zeroizing::new(FUZZ_PASSPHRASE.to_vec()));
        if let Ok(mut reader) = Reader::new(data, &secret) {
            let _ = read_tree(&mut reader, None, &mut |_| {});
        }
    }
    let _ = read_tree(&mut &data[..], None, &mut |_| {});
    let header = Header {
        params: KdfParams {
            memory_kib: 8,
            iterations: 1,
            parallel: 1,
        },
        salt: [0; SALT_LEN],
        chunk_size: MIN_CHUNK_SIZE,
        nonce_prefix: [0; NONCE_PREFIX_LEN],
    };
    let sealed = Writer::with_key(Vec::new(), &header, &FUZZ_KEY).and_then(|mut writer| {
        writer
            .write_all(data)
            .context(|| "sealing the fuzz input".into())?;
        writer.finish()
    });
    if let Ok(sealed) = sealed
        && let Ok(mut reader) = Reader::with_key(&sealed[HEADER_LEN..], &header, &FUZZ_KEY)
    {
        let _ = read_tree(&mut reader, None, &mut |_| {});
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::safefs::treewalk::testing::{deep_chain, snapshot, with_descriptor_limit};
    use chacha20poly1305::aead::stream::EncryptorBE32;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    /// Cheap enough to run thousands of times.
    const CHEAP_KDF: KdfParams = KdfParams {
        memory_kib: 8,
        iterations: 1,
        parallel: 1,
    };
    /// A realistic shape at a test-friendly cost.
    const TEST_KDF: KdfParams = KdfParams {
        memory_kib: 8 * 1024,
        iterations: 1,
        parallel: 1,
    };
    const CHUNK: usize = MIN_CHUNK_SIZE as usize;
    const META: Meta = Meta {
        mode: 0o644,
        uid: 1000,
        gid: 1000,
        mtime: 1_700_000_000,
        mtime_nsec: 5,
    };

    fn secret(bytes: &[u8]) -> Secret {
        Secret::from_zeroizing(Zeroizing::new(bytes.to_vec()))
    }

    fn test_header(params: KdfParams, chunk_size: u32) -> Header {
        Header {
            params,
            salt: [7; SALT_LEN],
            chunk_size,
            nonce_prefix: [9; NONCE_PREFIX_LEN],
        }
    }

    /// An archive of `plaintext`, sealed with a key given rather than derived.
    fn seal(plaintext: &[u8], header: &Header, key: &[u8; KEY_LEN]) -> Vec<u8> {
        let mut writer = Writer::with_key(Vec::new(), header, key).unwrap();
        writer.write_all(plaintext).unwrap();
        writer.finish().unwrap()
    }

    /// Opens an archive with a key given rather than derived: what was released, and how
    /// reading ended.
    fn open(archive: &[u8], key: &[u8; KEY_LEN]) -> (Vec<u8>, Result<()>) {
        let mut released = Vec::new();
        let Some(header) = archive.first_chunk::<HEADER_LEN>() else {
            return (released, Err(Error::Corrupt("short".into())));
        };
        let outcome = Header::parse(header)
            .and_then(|header| Reader::with_key(&archive[HEADER_LEN..], &header, key))
            .and_then(|mut reader| reader.read_to_end(&mut released).map_err(input_error));
        (released, outcome.map(|_| ()))
    }

    /// Deterministic bytes that do not compress or repeat within a chunk.
    fn pseudo_random(len: usize, mut state: u64) -> Vec<u8> {
        (0..len)
            .map(|_| {
                state = xorshift(state);
                state as u8
            })
            .collect()
    }

    fn xorshift(mut x: u64) -> u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }

    /// Plaintext streams built entry by entry, with the production encoders.
    #[derive(Default)]
    struct Stream(Vec<u8>);

    impl Stream {
        fn dir(mut self, path: &str) -> Stream {
            let meta = Meta {
                mode: 0o700,
                ..META
            };
            self.0
                .extend(entry_start(ENTRY_DIR, path.as_bytes(), &meta).unwrap());
            self
        }

        fn file(self, path: &str, content: &[u8]) -> Stream {
            let extents: &[(u64, u64)] = if content.is_empty() {
                &[]
            } else {
                &[(0, content.len() as u64)]
            };
            self.raw_file(path.as_bytes(), content.len() as u64, extents, content)
        }

        fn raw_file(
            mut self,
            path: &[u8],
            size: u64,
            extents: &[(u64, u64)],
            data: &[u8],
        ) -> Stream {
            self.0.extend(entry_start(ENTRY_FILE, path, &META).unwrap());
            self.0.extend(file_layout(size, extents));
            self.0.extend_from_slice(data);
            self
        }

        fn symlink(mut self, path: &str, target: &str) -> Stream {
            self.0
                .extend(entry_start(ENTRY_SYMLINK, path.as_bytes(), &META).unwrap());
            push_bytes16(&mut self.0, target.as_bytes(), "target").unwrap();
            self
        }

        fn raw(mut self, bytes: &[u8]) -> Stream {
            self.0.extend_from_slice(bytes);
            self
        }

        fn end(mut self) -> Vec<u8> {
            self.0.push(ENTRY_END);
            self.0
        }
    }

    fn verify(plaintext: &[u8]) -> Result<TreeStats> {
        read_tree(&mut &plaintext[..], None, &mut |_| {})
    }

    fn set_mtime(path: &Path, sec: i64, nsec: i64) {
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            path,
            &TimeSpec::UTIME_OMIT,
            &TimeSpec::new(sec, nsec),
            UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    }

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// A source tree with every kind of entry; returns the tops to back up.
    fn make_tree(src: &Path) -> Vec<PathBuf> {
        let p = src.join("Persistent");
        std::fs::create_dir_all(p.join("docs/deeper")).unwrap();
        std::fs::create_dir(p.join("empty")).unwrap();
        std::fs::create_dir(p.join("readonly")).unwrap();
        std::fs::create_dir(p.join("sticky")).unwrap();
        std::fs::create_dir(p.join("setgid")).unwrap();
        std::fs::write(p.join("docs/small.txt"), b"a small file\n").unwrap();
        std::fs::write(p.join("docs/empty.txt"), b"").unwrap();
        std::fs::write(
            p.join("docs/deeper/big.bin"),
            pseudo_random(5 * CHUNK + 123, 1),
        )
        .unwrap();
        std::fs::write(
            p.join("readonly/inside"),
            b"written before the folder was made read-only",
        )
        .unwrap();
        std::fs::write(p.join("setuid"), b"#!/bin/sh\n").unwrap();
        let sparse = File::create(p.join("sparse.img")).unwrap();
        sparse.set_len(10 << 20).unwrap();
        sparse
            .write_all_at(&pseudo_random(4096, 2), 1 << 20)
            .unwrap();
        sparse
            .write_all_at(&pseudo_random(3000, 3), (10 << 20) - 3000)
            .unwrap();
        drop(sparse);
        std::os::unix::fs::symlink("docs/small.txt", p.join("relative-link")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", p.join("absolute-link")).unwrap();
        nix::unistd::mkfifo(&p.join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        let _socket = std::os::unix::net::UnixListener::bind(p.join("socket")).unwrap();
        std::fs::write(
            src.join("persistence.conf"),
            b"/home/amnesia/.gnupg source=gnupg\n",
        )
        .unwrap();
        std::fs::write(src.join("not-backed-up"), b"left out").unwrap();
        for (rel, mode) in [
            ("Persistent/docs/small.txt", 0o644),
            ("Persistent/docs/empty.txt", 0o600),
            ("Persistent/docs/deeper/big.bin", 0o640),
            ("Persistent/setuid", 0o4755),
            ("Persistent/docs", 0o755),
            ("Persistent/empty", 0o700),
            ("Persistent/sticky", 0o1777),
            ("Persistent/setgid", 0o2750),
            ("persistence.conf", 0o600),
            ("Persistent/readonly/inside", 0o444),
            ("Persistent/readonly", 0o555),
        ] {
            chmod(&src.join(rel), mode);
        }
        if nix::unistd::geteuid().is_root() {
            for rel in [
                "Persistent/docs/small.txt",
                "Persistent/relative-link",
                "Persistent/empty",
            ] {
                std::os::unix::fs::lchown(src.join(rel), Some(1234), Some(5678)).unwrap();
            }
        }
        // Distinct past times, innermost first so that setting one does not move another.
        let mut paths: Vec<PathBuf> = snapshot(src).keys().map(|k| src.join(k)).collect();
        paths.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for (i, path) in paths.iter().enumerate() {
            set_mtime(
                path,
                1_500_000_000 + i as i64 * 1000,
                123_456_789 + i as i64,
            );
        }
        vec![
            PathBuf::from("Persistent"),
            PathBuf::from("persistence.conf"),
        ]
    }

    fn make_writable(root: &Path) {
        for rel in ["Persistent/readonly"] {
            if root.join(rel).exists() {
                chmod(&root.join(rel), 0o755);
            }
        }
    }

    #[test]
    fn round_trip_keeps_every_kind_mode_owner_time_and_hole() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, dest) = (tmp.path().join("src"), tmp.path().join("dest"));
        std::fs::create_dir(&src).unwrap();
        std::fs::create_dir(&dest).unwrap();
        let tops = make_tree(&src);
        let pass = secret(b"correct horse battery staple");

        let mut progressed = 0;
        let mut writer = Writer::new(Vec::new(), &pass, TEST_KDF, MIN_CHUNK_SIZE).unwrap();
        let written = write_tree(&src, &tops, &mut writer, &mut |n| progressed = n).unwrap();
        let archive = writer.finish().unwrap();
        assert_eq!(progressed, written.bytes);
        assert_eq!(written.entries, ["Persistent", "persistence.conf"]);
        assert_eq!(written.skipped, ["Persistent/fifo", "Persistent/socket"]);
        assert!(written.warnings.is_empty(), "{:?}", written.warnings);
        assert_eq!((written.files, written.dirs, written.symlinks), (7, 7, 2));
        // The sparse file's 10 MiB of holes are not stored.
        assert!(
            archive.len() < 64 * 1024,
            "archive of {} bytes",
            archive.len()
        );

        let mut reader = Reader::new(&archive[..], &pass).unwrap();
        assert_eq!(reader.kdf_params(), TEST_KDF);
        let read = read_tree(&mut reader, Some(&dest), &mut |_| {}).unwrap();
        assert_eq!(
            TreeStats {
                skipped: vec![],
                ..written.clone()
            },
            read
        );

        let mut expected = snapshot(&src);
        expected.remove("not-backed-up");
        let extracted = snapshot(&dest);
        assert_eq!(expected, extracted);
        assert!(extracted.contains_key("Persistent/empty"));
        assert!(!dest.join("Persistent/fifo").exists() && !dest.join("Persistent/socket").exists());
        if !nix::unistd::geteuid().is_root() {
            let me = nix::unistd::geteuid().as_raw();
            assert_eq!(
                std::fs::metadata(dest.join("Persistent/docs/small.txt"))
                    .unwrap()
                    .uid(),
                me
            );
        } else {
            let small = std::fs::metadata(dest.join("Persistent/docs/small.txt")).unwrap();
            assert_eq!((small.uid(), small.gid()), (1234, 5678));
        }
        let sparse = std::fs::metadata(dest.join("Persistent/sparse.img")).unwrap();
        assert_eq!(sparse.len(), 10 << 20);
        assert!(
            sparse.blocks() * 512 <= 64 * 1024,
            "{} blocks: holes were filled",
            sparse.blocks()
        );

        // Verifying without extracting sees the same.
        let mut reader = Reader::new(&archive[..], &pass).unwrap();
        assert_eq!(read_tree(&mut reader, None, &mut |_| {}).unwrap(), read);
        make_writable(&src);
        make_writable(&dest);
    }

    #[test]
    fn trees_1100_and_3000_deep_round_trip_with_64_descriptors() {
        with_descriptor_limit(
            "archive::tests::trees_1100_and_3000_deep_round_trip_with_64_descriptors",
            64,
            || {
                let tmp = tempfile::tempdir().unwrap();
                let (src, dest) = (tmp.path().join("src"), tmp.path().join("dest"));
                std::fs::create_dir_all(src.join("Persistent")).unwrap();
                std::fs::create_dir(&dest).unwrap();
                let files = deep_chain(&src.join("Persistent"), "d", 3000)
                    + deep_chain(&src.join("Persistent"), "e", 1100);
                std::fs::write(src.join("Persistent/top.txt"), b"after the deep ones").unwrap();
                // Plaintext: the walk is what is tested here, and the cipher is slow unoptimised.
                let mut plaintext = Vec::new();
                let tops = [PathBuf::from("Persistent")];
                let written = write_tree(&src, &tops, &mut plaintext, &mut |_| {}).unwrap();
                assert_eq!(
                    (written.dirs, written.files),
                    (1 + 3000 + 1100, files as u64 + 1)
                );
                let read = read_tree(&mut &plaintext[..], Some(&dest), &mut |_| {}).unwrap();
                assert_eq!(read, written);
                assert_eq!(snapshot(&src), snapshot(&dest));
            },
        );
    }

    #[test]
    fn write_tree_writes_parents_first_and_names_in_bytewise_order() {
        // The order the recursive writer had, which the iterative one must keep.
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("Persistent");
        std::fs::create_dir_all(p.join("a/y")).unwrap();
        for file in ["B", "a/x", "a/y/z", "b"] {
            std::fs::write(p.join(file), file).unwrap();
        }
        std::os::unix::fs::symlink("x", p.join("a/l")).unwrap();
        let mut expected = Vec::new();
        for rel in [
            "Persistent",
            "Persistent/B",
            "Persistent/a",
            "Persistent/a/l",
            "Persistent/a/x",
            "Persistent/a/y",
            "Persistent/a/y/z",
            "Persistent/b",
        ] {
            let st = fstatat(
                nix::fcntl::AT_FDCWD,
                &tmp.path().join(rel),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .unwrap();
            let meta = Meta::of(&st);
            match st.st_mode & libc::S_IFMT {
                libc::S_IFDIR => {
                    expected.extend(entry_start(ENTRY_DIR, rel.as_bytes(), &meta).unwrap())
                }
                libc::S_IFLNK => {
                    expected.extend(entry_start(ENTRY_SYMLINK, rel.as_bytes(), &meta).unwrap());
                    push_bytes16(&mut expected, b"x", "target").unwrap();
                }
                _ => {
                    let data = std::fs::read(tmp.path().join(rel)).unwrap();
                    expected.extend(entry_start(ENTRY_FILE, rel.as_bytes(), &meta).unwrap());
                    expected.extend(file_layout(data.len() as u64, &[(0, data.len() as u64)]));
                    expected.extend(data);
                }
            }
        }
        expected.push(ENTRY_END);
        let mut plaintext = Vec::new();
        write_tree(
            tmp.path(),
            &[PathBuf::from("Persistent")],
            &mut plaintext,
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(plaintext, expected);
    }

    #[test]
    fn stream_round_trips_at_every_length_around_chunk_boundaries() {
        let key = [1u8; KEY_LEN];
        let header = test_header(CHEAP_KDF, MIN_CHUNK_SIZE);
        for len in [
            0,
            1,
            CHUNK - 1,
            CHUNK,
            CHUNK + 1,
            2 * CHUNK,
            2 * CHUNK + 1,
            3 * CHUNK + 5,
        ] {
            let plaintext = pseudo_random(len, len as u64 + 1);
            let mut writer = Writer::with_key(Vec::new(), &header, &key).unwrap();
            for piece in plaintext.chunks(1000) {
                writer.write_all(piece).unwrap();
            }
            let archive = writer.finish().unwrap();
            // A full last chunk is allowed, so only non-empty plaintext adds chunks.
            let chunks = len.div_ceil(CHUNK).max(1);
            assert_eq!(
                archive.len(),
                HEADER_LEN + len + chunks * TAG_LEN,
                "length {len}"
            );
            let (released, outcome) = open(&archive, &key);
            outcome.unwrap();
            assert_eq!(released, plaintext, "length {len}");
        }
    }

    #[test]
    fn reader_accepts_an_empty_last_chunk_after_a_full_one() {
        // The other encoding of a plaintext that fills its chunks exactly.
        let key = [1u8; KEY_LEN];
        let header = test_header(CHEAP_KDF, MIN_CHUNK_SIZE);
        let plaintext = pseudo_random(CHUNK, 5);
        let mut encryptor =
            EncryptorBE32::from_aead(cipher(&key), GenericArray::from_slice(&header.nonce_prefix));
        let aad = header.encode();
        let mut archive = aad.to_vec();
        archive.extend(
            encryptor
                .encrypt_next(chacha20poly1305::aead::Payload {
                    msg: &plaintext,
                    aad: &aad,
                })
                .unwrap(),
        );
        archive.extend(
            encryptor
                .encrypt_last(chacha20poly1305::aead::Payload {
                    msg: &[],
                    aad: &aad,
                })
                .unwrap(),
        );
        let (released, outcome) = open(&archive, &key);
        outcome.unwrap();
        assert_eq!(released, plaintext);
    }

    /// A small tree spanning two chunks: chunk 0 full, chunk 1 short.
    fn two_chunk_plaintext() -> Vec<u8> {
        Stream::default()
            .dir("d")
            .file("d/f", &pseudo_random(4100, 11))
            .symlink("l", "d/f")
            .end()
    }

    #[test]
    fn every_single_bit_flip_is_refused_before_its_plaintext_is_released() {
        let key = [3u8; KEY_LEN];
        let header = test_header(CHEAP_KDF, MIN_CHUNK_SIZE);
        let plaintext = two_chunk_plaintext();
        let archive = seal(&plaintext, &header, &key);
        assert_eq!(archive.len(), HEADER_LEN + plaintext.len() + 2 * TAG_LEN);
        let bits = archive.len() * 8;
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        std::thread::scope(|scope| {
            for worker in 0..workers {
                let archive = &archive;
                scope.spawn(move || {
                    let mut damaged = archive.clone();
                    for bit in (worker..bits).step_by(workers) {
                        damaged[bit / 8] ^= 1 << (bit % 8);
                        let (released, outcome) = open(&damaged, &key);
                        assert!(outcome.is_err(), "flipping bit {bit} went unnoticed");
                        let chunk = (bit / 8).saturating_sub(HEADER_LEN) / (CHUNK + TAG_LEN);
                        let allowed = if bit / 8 < HEADER_LEN {
                            0
                        } else {
                            chunk * CHUNK
                        };
                        assert!(
                            released.len() <= allowed,
                            "flipping bit {bit} released {} bytes",
                            released.len()
                        );
                        damaged[bit / 8] ^= 1 << (bit % 8);
                    }
                });
            }
        });
    }

    #[test]
    fn header_bit_flips_are_refused_through_the_passphrase() {
        // The same through key derivation, for every header bit that cannot raise the
        // cost (the cost fields are covered above, with the key given).
        let pass = secret(b"passphrase");
        let plaintext = two_chunk_plaintext();
        let mut writer =
            Writer::with_header(Vec::new(), &pass, test_header(CHEAP_KDF, MIN_CHUNK_SIZE)).unwrap();
        writer.write_all(&plaintext).unwrap();
        let archive = writer.finish().unwrap();
        let mut reader = Reader::new(&archive[..], &pass).unwrap();
        assert_eq!(read_tree(&mut reader, None, &mut |_| {}).unwrap().files, 1);
        for byte in (0..12).chain(24..HEADER_LEN) {
            for bit in 0..8 {
                let mut damaged = archive.clone();
                damaged[byte] ^= 1 << bit;
                let err = Reader::new(&damaged[..], &pass).err();
                assert!(
                    matches!(err, Some(Error::Corrupt(_) | Error::WrongKey(_))),
                    "byte {byte} bit {bit}: {err:?}"
                );
            }
        }
    }

    #[test]
    fn truncation_anywhere_is_refused() {
        let key = [4u8; KEY_LEN];
        let header = test_header(CHEAP_KDF, MIN_CHUNK_SIZE);
        // Three chunks, the last one short.
        let plaintext = Stream::default()
            .file("f", &pseudo_random(2 * CHUNK + 100, 6))
            .end();
        let archive = seal(&plaintext, &header, &key);
        // Every length within 80 bytes of the start of the archive or of a chunk boundary
        // (header, tags, the boundaries themselves), and every 37th elsewhere.
        let boundaries: Vec<usize> = (0..4).map(|i| HEADER_LEN + i * (CHUNK + TAG_LEN)).collect();
        let lengths = (0..archive.len()).filter(|&len| {
            len % 37 == 0 || len < 80 || boundaries.iter().any(|&b| len.abs_diff(b) <= 80)
        });
        for len in lengths {
            let (released, outcome) = open(&archive[..len], &key);
            assert!(outcome.is_err(), "truncated to {len} bytes went unnoticed");
            assert!(released.len() < plaintext.len());
        }
        // Exactly at the chunk boundaries: a full chunk followed by nothing does not
        // authenticate as the last one. The first chunk is read when the reader is made.
        let header = Header::parse(archive.first_chunk().unwrap()).unwrap();
        let after_chunk = |n: usize| &archive[HEADER_LEN..HEADER_LEN + n * (CHUNK + TAG_LEN)];
        let err = Reader::with_key(after_chunk(1), &header, &key)
            .err()
            .unwrap();
        assert!(matches!(err, Error::WrongKey(_)), "{err}");
        let mut reader = Reader::with_key(after_chunk(2), &header, &key).unwrap();
        let err = read_tree(&mut reader, None, &mut |_| {}).unwrap_err();
        assert!(matches!(err, Error::Corrupt(_)), "{err}");
        assert!(
            err.to_string().contains("changed or truncated at chunk 1"),
            "{err}"
        );
        // Through the passphrase: inside the header, right after it, inside chunk 0.
        let pass = secret(b"pass");
        let mut writer =
            Writer::with_header(Vec::new(), &pass, test_header(CHEAP_KDF, MIN_CHUNK_SIZE)).unwrap();
        writer.write_all(&plaintext).unwrap();
        let archive = writer.finish().unwrap();
        for len in [0, 8, 63] {
            let err = Reader::new(&archive[..len], &pass).err().unwrap();
            assert!(matches!(err, Error::Corrupt(_)), "{len}: {err}");
        }
        for len in [64, 65, 64 + 15, 64 + 16, 64 + 100] {
            assert!(Reader::new(&archive[..len], &pass).is_err(), "{len}");
        }
    }

    #[test]
    fn appended_dropped_and_swapped_chunks_are_refused() {
        let key = [5u8; KEY_LEN];
        let header = test_header(CHEAP_KDF, MIN_CHUNK_SIZE);
        let plaintext = Stream::default()
            .file("f", &pseudo_random(3 * CHUNK + 100, 7))
            .end();
        let archive = seal(&plaintext, &header, &key);
        let chunk = |i: usize| {
            let start = HEADER_LEN + i * (CHUNK + TAG_LEN);
            &archive[start..(start + CHUNK + TAG_LEN).min(archive.len())]
        };
        let mut tampered: Vec<(&str, Vec<u8>)> = Vec::new();
        for extra in [&[0u8][..], &[0; 16], &[0; 4200], chunk(3)] {
            tampered.push(("appended", [&archive[..], extra].concat()));
        }
        tampered.push((
            "appended a copy",
            [&archive[..], &archive[HEADER_LEN..]].concat(),
        ));
        tampered.push((
            "dropped chunk 1",
            [&archive[..HEADER_LEN], chunk(0), chunk(2), chunk(3)].concat(),
        ));
        tampered.push((
            "swapped 0 and 1",
            [
                &archive[..HEADER_LEN],
                chunk(1),
                chunk(0),
                chunk(2),
                chunk(3),
            ]
            .concat(),
        ));
        tampered.push((
            "swapped 1 and 2",
            [
                &archive[..HEADER_LEN],
                chunk(0),
                chunk(2),
                chunk(1),
                chunk(3),
            ]
            .concat(),
        ));
        tampered.push((
            "swapped 2 and 3",
            [
                &archive[..HEADER_LEN],
                chunk(0),
                chunk(1),
                chunk(3),
                chunk(2),
            ]
            .concat(),
        ));
        tampered.push((
            "repeated 0",
            [
                &archive[..HEADER_LEN],
                chunk(0),
                chunk(0),
                chunk(2),
                chunk(3),
            ]
            .concat(),
        ));
        for (what, damaged) in tampered {
            let (_, outcome) = open(&damaged, &key);
            assert!(outcome.is_err(), "{what} went unnoticed");
        }
        let (released, outcome) = open(&archive, &key);
        outcome.unwrap();
        assert_eq!(released, plaintext);
    }

    #[test]
    fn an_unfinished_writer_leaves_an_archive_every_reader_refuses() {
        let key = [6u8; KEY_LEN];
        let header = test_header(CHEAP_KDF, MIN_CHUNK_SIZE);
        let mut archive = Vec::new();
        // Enough for batches to be written out before the writer is dropped.
        let written = 8 * BATCH_CHUNKS * CHUNK + 100;
        let mut writer = Writer::with_key(&mut archive, &header, &key)
            .unwrap()
            .with_threads(2);
        writer.write_all(&pseudo_random(written, 8)).unwrap();
        drop(writer);
        // Whole chunks, none of them the last.
        let body = archive.len() - HEADER_LEN;
        assert!(body > 0 && body < written, "{body}");
        assert_eq!(body % (CHUNK + TAG_LEN), 0);
        assert!(open(&archive, &key).1.is_err());
        assert!(old_open(&archive, &key).1.is_err());
    }

    #[test]
    fn a_wrong_passphrase_is_a_bad_passphrase() {
        let mut writer =
            Writer::new(Vec::new(), &secret(b"right"), TEST_KDF, DEFAULT_CHUNK_SIZE).unwrap();
        writer.write_all(&Stream::default().end()).unwrap();
        let archive = writer.finish().unwrap();
        let err = Reader::new(&archive[..], &secret(b"wrong")).err().unwrap();
        assert!(matches!(err, Error::WrongKey(_)), "{err}");
        assert_eq!(err.exit_code(), crate::error::ExitCode::BadPassphrase);
        assert!(err.to_string().contains("damaged"), "{err}");
        let mut reader = Reader::new(&archive[..], &secret(b"right")).unwrap();
        assert_eq!(
            read_tree(&mut reader, None, &mut |_| {}).unwrap(),
            TreeStats::default()
        );
    }

    #[test]
    fn two_archives_of_the_same_data_share_no_salt_or_nonce() {
        let pass = secret(b"pass");
        let archives: Vec<Vec<u8>> = (0..2)
            .map(|_| {
                Writer::new(Vec::new(), &pass, CHEAP_KDF, MIN_CHUNK_SIZE)
                    .unwrap()
                    .finish()
                    .unwrap()
            })
            .collect();
        assert_ne!(archives[0][24..40], archives[1][24..40]);
        assert_ne!(archives[0][44..51], archives[1][44..51]);
    }

    #[test]
    fn hostile_headers_are_refused_before_any_key_derivation() {
        let good = test_header(CHEAP_KDF, MIN_CHUNK_SIZE).encode();
        let patch = |at: usize, bytes: &[u8]| {
            let mut header = good;
            header[at..at + bytes.len()].copy_from_slice(bytes);
            header
        };
        let cases = [
            (patch(0, b"KSBACKUQ"), "KSBACKUP"),
            (patch(8, &[2]), "version 2"),
            (patch(9, &[2]), "unknown key derivation"),
            (patch(10, &[1]), "reserved"),
            (patch(63, &[1]), "reserved"),
            // Deriving with these would try to allocate 4 TiB, or run 2^32 passes.
            (patch(12, &u32::MAX.to_le_bytes()), "more than 4 GiB"),
            (
                patch(12, &(MAX_KDF_MEMORY_KIB + 1).to_le_bytes()),
                "more than 4 GiB",
            ),
            // 4 GiB and 64 passes are each allowed, together 256 GiB-passes: minutes.
            (
                test_header(
                    KdfParams {
                        memory_kib: MAX_KDF_MEMORY_KIB,
                        iterations: MAX_KDF_ITERATIONS,
                        parallel: 1,
                    },
                    MIN_CHUNK_SIZE,
                )
                .encode(),
                "16 GiB-passes",
            ),
            (patch(16, &u32::MAX.to_le_bytes()), "iterations"),
            (patch(16, &0u32.to_le_bytes()), "iterations"),
            (patch(20, &0u32.to_le_bytes()), "parallelism"),
            (patch(20, &17u32.to_le_bytes()), "parallelism"),
            (patch(20, &2u32.to_le_bytes()), "8 KiB per lane"),
            (patch(40, &4095u32.to_le_bytes()), "chunk size"),
            (patch(40, &(MAX_CHUNK_SIZE + 1).to_le_bytes()), "chunk size"),
        ];
        // A keyless reader never derives a key: a bound that stopped holding fails this test
        // instead of running the derivation it should have refused. All the memory in the
        // world is available, so only the header's own bounds refuse.
        for (header, expected) in cases {
            let archive = [&header[..], &[0; 100]].concat();
            let err = KeylessReader::new(&archive[..], Some(u64::MAX))
                .err()
                .unwrap();
            assert!(matches!(err, Error::Corrupt(_)), "{err}");
            assert!(err.to_string().contains(expected), "{err} lacks {expected}");
        }
        let err = Reader::new(&good[..40], &secret(b"pass")).err().unwrap();
        assert!(
            err.to_string().contains("shorter than its 64-byte header"),
            "{err}"
        );
    }

    const GIB_KIB: u64 = 1 << 20;

    /// The forged header of issue 11: 4 GiB of memory, 64 passes, behind 200 bytes of junk
    /// (264 bytes in all). It used to abort `backup verify` (a failed 4 GiB allocation) on a
    /// 1.5 GiB machine, and to run for minutes on a big one.
    fn forged_archive(memory_kib: u32, iterations: u32) -> Vec<u8> {
        let header = test_header(
            KdfParams {
                memory_kib,
                iterations,
                parallel: 1,
            },
            DEFAULT_CHUNK_SIZE,
        );
        [&header.encode()[..], &[0x5a; 200]].concat()
    }

    #[test]
    fn a_forged_kdf_cost_is_refused_from_the_header_alone() {
        let forged = forged_archive(MAX_KDF_MEMORY_KIB, MAX_KDF_ITERATIONS);
        assert_eq!(forged.len(), 264);
        let header: &[u8; HEADER_LEN] = forged.first_chunk().unwrap();
        // Beyond the hard cap: corrupt, however much memory the machine has.
        for available in [Some(GIB_KIB * 3 / 2), Some(u64::MAX), None] {
            let err = check_header(header, available).unwrap_err();
            assert!(matches!(err, Error::Corrupt(_)), "{err}");
            assert_eq!(err.exit_code(), crate::error::ExitCode::Corrupt);
            assert!(err.to_string().contains("16 GiB-passes"), "{err}");
        }
        // Within the caps (4 GiB x 4 passes) but more memory than a 1.5 GiB machine has:
        // the class unlock uses for a keyslot this machine cannot afford.
        let heavy = forged_archive(MAX_KDF_MEMORY_KIB, 4);
        let header: &[u8; HEADER_LEN] = heavy.first_chunk().unwrap();
        let err = check_header(header, Some(GIB_KIB * 3 / 2)).unwrap_err();
        assert!(
            matches!(err, Error::Host(crate::host::Error::Unsafe(_))),
            "{err}"
        );
        assert_eq!(err.exit_code(), crate::error::ExitCode::UnsafeHost);
        assert_eq!(
            err.to_string(),
            "opening the backup archive needs 4096 MiB of memory for its key derivation and this machine has 1536 MiB available; free some memory or use a bigger machine (nothing was changed)"
        );
        assert!(check_header(header, Some(8 * GIB_KIB)).is_ok());
        // The reader says the same from the stream, having read the header only: it has no
        // passphrase to derive with yet.
        let err = KeylessReader::new(&heavy[..], Some(GIB_KIB * 3 / 2))
            .err()
            .unwrap();
        assert!(
            matches!(err, Error::Host(crate::host::Error::Unsafe(_))),
            "{err}"
        );
        let err = KeylessReader::new(&forged[..], Some(u64::MAX))
            .err()
            .unwrap();
        assert!(matches!(err, Error::Corrupt(_)), "{err}");
    }

    #[test]
    fn ordinary_kdf_costs_pass_the_header_check() {
        let checked = |params: KdfParams, available_kib: u64| {
            check_header(
                &test_header(params, DEFAULT_CHUNK_SIZE).encode(),
                Some(available_kib),
            )
            .map(|h| h.params)
        };
        // keepsake's default, on the smallest machine a live system boots on.
        assert_eq!(
            checked(KdfParams::default(), GIB_KIB).unwrap(),
            KdfParams::default()
        );
        // The corners of what the caps allow, on a machine that has the memory.
        for (memory_kib, iterations, parallel) in [
            (MAX_KDF_MEMORY_KIB, 4, 1),
            (1 << 20, 16, 1),
            (256 * 1024, MAX_KDF_ITERATIONS, 1),
            (2 << 20, 1, MAX_KDF_PARALLEL),
            (8, 1, 1),
        ] {
            let params = KdfParams {
                memory_kib,
                iterations,
                parallel,
            };
            assert!(checked(params, 8 * GIB_KIB).is_ok(), "{params:?}");
            assert!(params.check_for_writing(Some(8 * GIB_KIB)).is_ok());
        }
        // One KiB of memory more, or one pass more, than the work cap allows.
        for (memory_kib, iterations) in [(MAX_KDF_MEMORY_KIB, 5), ((1 << 20) + 1, 16)] {
            let params = KdfParams {
                memory_kib,
                iterations,
                parallel: 1,
            };
            let err = checked(params, u64::MAX).unwrap_err();
            assert!(matches!(err, Error::Corrupt(_)), "{err}");
        }
    }

    #[test]
    fn a_writer_refuses_what_no_reader_accepts_or_this_machine_cannot_afford() {
        let forged = KdfParams {
            memory_kib: MAX_KDF_MEMORY_KIB,
            iterations: MAX_KDF_ITERATIONS,
            parallel: 1,
        };
        let err = forged.check_for_writing(Some(u64::MAX)).unwrap_err();
        assert!(matches!(err, Error::Usage(_)), "{err}");
        assert!(err.to_string().contains("16 GiB-passes"), "{err}");
        let big = KdfParams {
            memory_kib: 1 << 20,
            ..KdfParams::default()
        };
        let err = big.check_for_writing(Some(512 * 1024)).unwrap_err();
        assert!(
            matches!(err, Error::Host(crate::host::Error::Unsafe(_))),
            "{err}"
        );
        assert!(big.check_for_writing(Some(2 * GIB_KIB)).is_ok());
    }

    #[test]
    fn key_derivation_memory_that_cannot_be_had_is_a_refusal() {
        // More blocks than an address space holds: refused without allocating.
        let err = kdf_memory(usize::MAX / 2).err().unwrap();
        assert!(matches!(err, Error::UnsafeHost(_)), "{err}");
        assert!(err.to_string().contains("cannot get it"), "{err}");
        assert_eq!(kdf_memory(8).unwrap().len(), 8);
    }

    #[test]
    fn writer_refuses_out_of_bounds_parameters() {
        let pass = secret(b"pass");
        for (params, chunk) in [
            (
                KdfParams {
                    memory_kib: 4,
                    ..CHEAP_KDF
                },
                MIN_CHUNK_SIZE,
            ),
            (
                KdfParams {
                    iterations: 0,
                    ..CHEAP_KDF
                },
                MIN_CHUNK_SIZE,
            ),
            (
                KdfParams {
                    parallel: 0,
                    ..CHEAP_KDF
                },
                MIN_CHUNK_SIZE,
            ),
            (CHEAP_KDF, MIN_CHUNK_SIZE - 1),
            (CHEAP_KDF, MAX_CHUNK_SIZE + 1),
        ] {
            let err = Writer::new(Vec::new(), &pass, params, chunk).err().unwrap();
            assert!(matches!(err, Error::Usage(_)), "{err}");
        }
        assert_eq!(
            KdfParams::default(),
            KdfParams {
                memory_kib: 262144,
                iterations: 3,
                parallel: 1
            }
        );
    }

    #[test]
    fn a_symlink_in_the_archive_cannot_lead_outside() {
        let tmp = tempfile::tempdir().unwrap();
        let (dest, outside) = (tmp.path().join("dest"), tmp.path().join("outside"));
        std::fs::create_dir(&dest).unwrap();
        std::fs::create_dir(&outside).unwrap();
        let target = outside.to_str().unwrap();
        for stream in [
            Stream::default()
                .symlink("a", target)
                .file("a/passwd", b"root::0:0::/:/bin/sh\n")
                .end(),
            Stream::default().symlink("a", target).dir("a/sub").end(),
            Stream::default()
                .symlink("a", target)
                .symlink("a/b", "/")
                .end(),
            Stream::default()
                .symlink("a", target)
                .dir("a")
                .file("a/passwd", b"x")
                .end(),
            Stream::default()
                .file("a", b"x")
                .file("a/passwd", b"x")
                .end(),
        ] {
            let err = verify(&stream).unwrap_err();
            assert!(matches!(err, Error::Corrupt(_)), "{err}");
            let err = read_tree(&mut &stream[..], Some(&dest), &mut |_| {}).unwrap_err();
            assert!(matches!(err, Error::Corrupt(_)), "{err}");
            assert_eq!(
                std::fs::read_dir(&outside).unwrap().count(),
                0,
                "wrote outside"
            );
            crate::safefs::empty_dir(&dest).unwrap();
        }
    }

    #[test]
    fn extraction_never_follows_a_symlink_it_finds() {
        // Should a symlink appear in the destination anyway (put there by someone else),
        // walking to a parent refuses it.
        let tmp = tempfile::tempdir().unwrap();
        let (dest, outside) = (tmp.path().join("dest"), tmp.path().join("outside"));
        std::fs::create_dir(&dest).unwrap();
        std::fs::create_dir(&outside).unwrap();
        let mut extractor = Extractor::new(&dest).unwrap();
        std::os::unix::fs::symlink(&outside, dest.join("a")).unwrap();
        let err = extractor.file(b"a/passwd", 1).err().unwrap();
        assert!(err.to_string().contains("refusing to follow"), "{err}");
        assert!(extractor.directory(b"a/sub", META).is_err());
        assert!(extractor.symlink(b"a/link", b"/", &META).is_err());
        assert!(
            extractor.file(b"a", 1).is_err(),
            "O_EXCL: the symlink is not written through"
        );
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    }

    #[test]
    fn unsafe_paths_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("dest");
        std::fs::create_dir(&dest).unwrap();
        for path in [
            &b""[..],
            b"/etc/passwd",
            b"..",
            b".",
            b"../x",
            b"a/../../x",
            b"./a",
            b"a/.",
            b"a//b",
            b"a/",
            b"a\0b",
        ] {
            let stream = Stream::default()
                .dir("a")
                .raw_file(path, 1, &[(0, 1)], b"x")
                .end();
            let err = verify(&stream).unwrap_err();
            assert!(err.to_string().contains("refused"), "{path:?}: {err}");
            let err = read_tree(&mut &stream[..], Some(&dest), &mut |_| {}).unwrap_err();
            assert!(err.to_string().contains("refused"), "{path:?}: {err}");
            crate::safefs::empty_dir(&dest).unwrap();
        }
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
    }

    #[test]
    fn malformed_streams_are_refused() {
        let entry =
            |kind: u8, path: &str, meta: Meta| entry_start(kind, path.as_bytes(), &meta).unwrap();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty stream", vec![]),
            ("no end marker", Stream::default().dir("a").0),
            ("unknown type", Stream::default().raw(&[4]).end()),
            (
                "data after the end",
                [Stream::default().end(), vec![0]].concat(),
            ),
            ("parent missing", Stream::default().file("a/b", b"x").end()),
            (
                "parent after child",
                Stream::default().file("a/b", b"x").dir("a").end(),
            ),
            ("twice", Stream::default().dir("a").dir("a").end()),
            (
                "file then dir",
                Stream::default().file("a", b"x").dir("a").end(),
            ),
            (
                "cut in a path",
                Stream::default().raw(&[ENTRY_DIR, 10, 0, b'a']).0,
            ),
            (
                "cut in data",
                Stream::default().raw_file(b"f", 10, &[(0, 10)], b"short").0,
            ),
            (
                "mode bits beyond 0o7777",
                Stream::default()
                    .raw(&entry(
                        ENTRY_DIR,
                        "a",
                        Meta {
                            mode: 0o10000,
                            ..META
                        },
                    ))
                    .end(),
            ),
            (
                "nanoseconds beyond a second",
                Stream::default()
                    .raw(&entry(
                        ENTRY_DIR,
                        "a",
                        Meta {
                            mtime_nsec: 1_000_000_000,
                            ..META
                        },
                    ))
                    .end(),
            ),
            (
                "empty symlink target",
                Stream::default().symlink("l", "").end(),
            ),
            (
                "symlink target with NUL",
                Stream::default().symlink("l", "a\0b").end(),
            ),
            (
                "empty extent",
                Stream::default().raw_file(b"f", 10, &[(0, 0)], b"").end(),
            ),
            (
                "extent past size",
                Stream::default()
                    .raw_file(b"f", 10, &[(5, 6)], b"xxxxxx")
                    .end(),
            ),
            (
                "overlapping",
                Stream::default()
                    .raw_file(b"f", 10, &[(0, 4), (3, 2)], b"xxxxxx")
                    .end(),
            ),
            (
                "unsorted",
                Stream::default()
                    .raw_file(b"f", 10, &[(5, 2), (0, 2)], b"xxxx")
                    .end(),
            ),
            (
                "extent end overflows",
                Stream::default()
                    .raw_file(b"f", u64::MAX, &[(u64::MAX - 1, 2)], b"xx")
                    .end(),
            ),
        ];
        for (what, stream) in cases {
            let err = verify(&stream).err();
            assert!(matches!(err, Some(Error::Corrupt(_))), "{what}: {err:?}");
        }
        // A huge extent count is refused before anything is allocated for it, and a
        // plausible one fails at the first missing byte.
        for count in [u32::MAX, MAX_EXTENTS + 1, MAX_EXTENTS] {
            let mut stream = entry(ENTRY_FILE, "f", META);
            stream.extend_from_slice(&u64::MAX.to_le_bytes());
            stream.extend_from_slice(&count.to_le_bytes());
            let err = verify(&stream).unwrap_err();
            assert!(matches!(err, Error::Corrupt(_)), "{count}: {err}");
        }
    }

    #[test]
    fn a_valid_stream_with_a_sparse_file_is_accepted() {
        let stream = Stream::default()
            .dir("a")
            .raw_file(
                b"a/disk",
                1 << 40,
                &[(0, 3), (1 << 30, 2), ((1 << 40) - 1, 1)],
                b"abcdef",
            )
            .file("a/empty", b"")
            .symlink("a/link", "/etc/passwd")
            .end();
        let stats = verify(&stream).unwrap();
        assert_eq!(
            (stats.dirs, stats.files, stats.symlinks, stats.bytes),
            (1, 2, 1, 6)
        );
        assert_eq!(stats.entries, ["a"]);
    }

    #[test]
    fn extraction_needs_an_empty_destination() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("there"), b"").unwrap();
        let stream = Stream::default().end();
        let err = read_tree(&mut &stream[..], Some(tmp.path()), &mut |_| {}).unwrap_err();
        assert!(matches!(err, Error::Usage(_)), "{err}");
    }

    #[test]
    fn write_tree_takes_only_names_directly_inside_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("a")).unwrap();
        for tops in [
            vec![PathBuf::from("a/b")],
            vec![PathBuf::from("../a")],
            vec![PathBuf::from("/a")],
            vec![PathBuf::from("a"), PathBuf::from("a")],
        ] {
            let err = write_tree(tmp.path(), &tops, &mut Vec::new(), &mut |_| {}).unwrap_err();
            assert!(matches!(err, Error::Usage(_)), "{tops:?}: {err}");
        }
        let err = write_tree(
            tmp.path(),
            &[PathBuf::from("missing")],
            &mut Vec::new(),
            &mut |_| {},
        )
        .unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err}");
    }

    #[test]
    fn a_symlinked_top_is_stored_as_a_symlink_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("secret")).unwrap();
        std::fs::write(tmp.path().join("secret/shadow"), b"x").unwrap();
        std::os::unix::fs::symlink("secret", tmp.path().join("Persistent")).unwrap();
        let mut plaintext = Vec::new();
        let stats = write_tree(
            tmp.path(),
            &[PathBuf::from("Persistent")],
            &mut plaintext,
            &mut |_| {},
        )
        .unwrap();
        assert_eq!((stats.symlinks, stats.files, stats.dirs), (1, 0, 0));
        assert_eq!(
            verify(&plaintext).unwrap(),
            TreeStats {
                skipped: vec![],
                ..stats
            }
        );
    }

    #[test]
    fn the_fuzz_harness_survives_mutated_inputs() {
        let plaintext = Stream::default()
            .dir("d")
            .raw_file(
                b"d/f",
                5000,
                &[(0, 100), (4000, 1000)],
                &pseudo_random(1100, 9),
            )
            .symlink("d/l", "f")
            .file("top", b"hello")
            .end();
        let mut writer = Writer::with_header(
            Vec::new(),
            &secret(FUZZ_PASSPHRASE),
            Header {
                params: CHEAP_KDF,
                ..test_header(CHEAP_KDF, MIN_CHUNK_SIZE)
            },
        )
        .unwrap();
        writer.write_all(&plaintext).unwrap();
        let archive = writer.finish().unwrap();
        let mut reader = Reader::new(&archive[..], &secret(FUZZ_PASSPHRASE)).unwrap();
        assert_eq!(read_tree(&mut reader, None, &mut |_| {}).unwrap().files, 2);

        let mut state = 0x9e3779b97f4a7c15u64;
        let mut next = |bound: usize| {
            state = xorshift(state);
            (state % bound.max(1) as u64) as usize
        };
        for round in 0..3000 {
            let mut input = if round % 2 == 0 {
                archive.clone()
            } else {
                plaintext.clone()
            };
            for _ in 0..=next(3) {
                let at = next(input.len());
                match next(6) {
                    0 => input[at] ^= 1 << next(8),
                    1 => input[at] = next(256) as u8,
                    2 => input.truncate(at),
                    3 => input
                        .splice(at..at, (0..next(16)).map(|_| next(256) as u8))
                        .for_each(drop),
                    4 => {
                        let end = (at + next(64)).min(input.len());
                        let copy = input[at..end].to_vec();
                        let to = next(input.len());
                        input.splice(to..to, copy).for_each(drop);
                    }
                    _ => {
                        let end = (at + 8).min(input.len());
                        input[at..end].fill(0xff);
                    }
                }
                if input.is_empty() {
                    break;
                }
            }
            check_untrusted(&input);
        }
        check_untrusted(&[]);
        check_untrusted(&archive);
        check_untrusted(&pseudo_random(100_000, 10));
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn unhex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The inputs of the committed test vectors.
    fn vector_inputs() -> Vec<(&'static str, &'static str, Header, Vec<u8>)> {
        let small = Stream::default()
            .dir("notes")
            .file("notes/hello.txt", b"hello, keepsake\n")
            .symlink("latest", "notes/hello.txt")
            .end();
        let data: Vec<u8> = (0..4500u32).map(|i| (i * 7 % 251) as u8).collect();
        let two_chunks = Stream::default()
            .raw_file(
                b"disk.img",
                1 << 20,
                &[(0, 3000), ((1 << 20) - 1500, 1500)],
                &data,
            )
            .file("empty", b"")
            .end();
        let range = |start: u8| -> [u8; SALT_LEN] { std::array::from_fn(|i| start + i as u8) };
        vec![
            (
                "one-chunk",
                "correct horse battery staple",
                Header {
                    params: CHEAP_KDF,
                    salt: range(0),
                    chunk_size: MIN_CHUNK_SIZE,
                    nonce_prefix: std::array::from_fn(|i| 0xa0 + i as u8),
                },
                small,
            ),
            (
                "two-chunks-sparse-file",
                "tr0ub4dor&3",
                Header {
                    params: KdfParams {
                        memory_kib: 16,
                        iterations: 2,
                        parallel: 2,
                    },
                    salt: range(0x10),
                    chunk_size: MIN_CHUNK_SIZE,
                    nonce_prefix: std::array::from_fn(|i| 0xb0 + i as u8),
                },
                two_chunks,
            ),
        ]
    }

    #[test]
    fn test_vectors_match_and_follow_the_documented_construction() {
        use chacha20poly1305::aead::{Aead, Payload};
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/backup-v1.json");
        let mut vectors = Vec::new();
        for (name, passphrase, header, plaintext) in vector_inputs() {
            let key = derive_key(passphrase.as_bytes(), &header).unwrap();
            let mut writer =
                Writer::with_header(Vec::new(), &secret(passphrase.as_bytes()), header.clone())
                    .unwrap();
            writer.write_all(&plaintext).unwrap();
            let archive = writer.finish().unwrap();
            vectors.push(serde_json::json!({
                "name": name,
                "passphrase": passphrase,
                "kdf": {
                    "algorithm": "argon2id",
                    "version": 0x13,
                    "memory_kib": header.params.memory_kib,
                    "iterations": header.params.iterations,
                    "parallel": header.params.parallel,
                },
                "salt": hex(&header.salt),
                "nonce_prefix": hex(&header.nonce_prefix),
                "chunk_size": header.chunk_size,
                "key": hex(&key[..]),
                "plaintext": hex(&plaintext),
                "archive": hex(&archive),
            }));
        }
        let generated = serde_json::json!({
            "format": "keepsake backup archive, version 1 (docs/backup-format.md)",
            "vectors": vectors,
        });
        if std::env::var_os("KEEPSAKE_BLESS").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(
                &path,
                serde_json::to_string_pretty(&generated).unwrap() + "\n",
            )
            .unwrap();
        }
        let committed: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(
            committed, generated,
            "regenerate with KEEPSAKE_BLESS=1 if the change is intended"
        );

        for vector in committed["vectors"].as_array().unwrap() {
            let field = |name: &str| unhex(vector[name].as_str().unwrap());
            let (archive, plaintext, key) = (field("archive"), field("plaintext"), field("key"));
            let pass = secret(vector["passphrase"].as_str().unwrap().as_bytes());
            let mut released = Vec::new();
            Reader::new(&archive[..], &pass)
                .unwrap()
                .read_to_end(&mut released)
                .unwrap();
            assert_eq!(released, plaintext);
            verify(&plaintext).unwrap();
            // Decrypted again, chunk by chunk, straight from the specification.
            let aad = &archive[..HEADER_LEN];
            let aead = ChaCha20Poly1305::new(GenericArray::from_slice(&key));
            let sealed: Vec<&[u8]> = archive[HEADER_LEN..].chunks(CHUNK + TAG_LEN).collect();
            let mut opened = Vec::new();
            for (i, chunk) in sealed.iter().enumerate() {
                let mut nonce = [0u8; 12];
                nonce[..7].copy_from_slice(&field("nonce_prefix"));
                nonce[7..11].copy_from_slice(&(i as u32).to_be_bytes());
                nonce[11] = u8::from(i == sealed.len() - 1);
                let msg = aead
                    .decrypt(
                        GenericArray::from_slice(&nonce),
                        Payload { msg: chunk, aad },
                    )
                    .unwrap();
                opened.extend(msg);
            }
            assert_eq!(opened, plaintext);
        }
    }

    /// Chunks of MIN_CHUNK_SIZE in one batch.
    const BATCH_CHUNKS: usize = (1 << 20) / CHUNK;

    /// What the single-threaded reader this replaced releases from `archive`, and how it
    /// ends.
    fn old_open(archive: &[u8], key: &[u8; KEY_LEN]) -> (Vec<u8>, Result<()>) {
        let mut released = Vec::new();
        let header = Header::parse(archive.first_chunk().unwrap()).unwrap();
        let outcome = oracle::OldReader::with_key(&archive[HEADER_LEN..], &header, key)
            .and_then(|mut reader| reader.read_to_end(&mut released).map_err(input_error));
        (released, outcome.map(|_| ()))
    }

    /// [`open`] with `threads` workers, reading through `fill_buf` as read_tree does.
    fn open_on(archive: &[u8], key: &[u8; KEY_LEN], threads: usize) -> (Vec<u8>, Result<()>) {
        let mut released = Vec::new();
        let header = Header::parse(archive.first_chunk().unwrap()).unwrap();
        let outcome = Reader::with_key_on(&archive[HEADER_LEN..], &header, key, threads).and_then(
            |mut reader| loop {
                let ready = reader.fill_buf().map_err(input_error)?;
                if ready.is_empty() {
                    return Ok(());
                }
                let n = ready.len();
                released.extend_from_slice(ready);
                reader.consume(n);
            },
        );
        (released, outcome)
    }

    fn seal_on(
        plaintext: &[u8],
        header: &Header,
        key: &[u8; KEY_LEN],
        threads: usize,
        piece: usize,
    ) -> Vec<u8> {
        let mut writer = Writer::with_key(Vec::new(), header, key)
            .unwrap()
            .with_threads(threads);
        for piece in plaintext.chunks(piece) {
            writer.write_all(piece).unwrap();
        }
        writer.finish().unwrap()
    }

    #[test]
    fn threaded_writer_and_reader_match_the_single_threaded_ones_byte_for_byte() {
        let key = [11u8; KEY_LEN];
        for chunk_size in [MIN_CHUNK_SIZE, DEFAULT_CHUNK_SIZE] {
            let header = test_header(CHEAP_KDF, chunk_size);
            let c = chunk_size as usize;
            let batch = (1 << 20) / c * c;
            let lengths: &[usize] = if c == CHUNK {
                &[
                    0,
                    1,
                    c - 1,
                    c,
                    c + 1,
                    batch - 1,
                    batch,
                    batch + 1,
                    3 * batch + c - 1,
                ]
            } else {
                &[0, c, batch, batch + 1, 2 * batch + 5]
            };
            for &len in lengths {
                let plaintext = pseudo_random(len, len as u64 + 1);
                let mut old = oracle::OldWriter::with_key(Vec::new(), &header, &key).unwrap();
                old.write_all(&plaintext).unwrap();
                let old = old.finish().unwrap();
                for threads in [1, 2, 3] {
                    for piece in [1000, 3 << 20] {
                        let new = seal_on(&plaintext, &header, &key, threads, piece);
                        assert!(new == old, "chunk {c}, length {len}, {threads} threads");
                    }
                    let (released, outcome) = open_on(&old, &key, threads);
                    outcome.unwrap();
                    assert!(
                        released == plaintext,
                        "chunk {c}, length {len}, {threads} threads"
                    );
                }
                let (released, outcome) = old_open(&old, &key);
                outcome.unwrap();
                assert!(released == plaintext);
            }
        }
    }

    #[test]
    fn an_empty_last_chunk_right_after_a_full_batch_is_accepted() {
        let key = [12u8; KEY_LEN];
        let header = test_header(CHEAP_KDF, MIN_CHUNK_SIZE);
        let aad = header.encode();
        let plaintext = pseudo_random(BATCH_CHUNKS * CHUNK, 12);
        let mut encryptor =
            EncryptorBE32::from_aead(cipher(&key), GenericArray::from_slice(&header.nonce_prefix));
        let mut archive = aad.to_vec();
        for chunk in plaintext.chunks(CHUNK) {
            let payload = chacha20poly1305::aead::Payload {
                msg: chunk,
                aad: &aad,
            };
            archive.extend(encryptor.encrypt_next(payload).unwrap());
        }
        let payload = chacha20poly1305::aead::Payload {
            msg: &[],
            aad: &aad,
        };
        archive.extend(encryptor.encrypt_last(payload).unwrap());
        for threads in [1, 2, 5] {
            let (released, outcome) = open_on(&archive, &key, threads);
            outcome.unwrap();
            assert!(released == plaintext, "{threads} threads");
        }
        // Without its empty last chunk, the full batch ends in a chunk sealed as not last.
        let cut = &archive[..archive.len() - TAG_LEN];
        for threads in [1, 2, 5] {
            let (_, outcome) = open_on(cut, &key, threads);
            let err = outcome.unwrap_err().to_string();
            let last = BATCH_CHUNKS - 1;
            assert!(err.contains(&format!("at chunk {last}")), "{err}");
        }
    }

    /// A chunk in the middle of the third batch, tampered with.
    fn tampered_in_third_batch() -> (Vec<u8>, Vec<u8>, [u8; KEY_LEN], usize) {
        let key = [13u8; KEY_LEN];
        let header = test_header(CHEAP_KDF, MIN_CHUNK_SIZE);
        let plaintext = pseudo_random(4 * BATCH_CHUNKS * CHUNK + 10, 13);
        let mut archive = seal(&plaintext, &header, &key);
        let bad = 2 * BATCH_CHUNKS + 17;
        archive[HEADER_LEN + bad * (CHUNK + TAG_LEN) + 5] ^= 0x20;
        (archive, plaintext, key, bad)
    }

    #[test]
    fn a_tampered_chunk_releases_nothing_of_its_batch_and_what_came_before_as_it_did() {
        let (archive, plaintext, key, bad) = tampered_in_third_batch();
        // The single-threaded reader released every chunk before the bad one.
        let (old_released, old_outcome) = old_open(&archive, &key);
        assert_eq!(old_released.len(), bad * CHUNK);
        let old_err = old_outcome.unwrap_err().to_string();
        for threads in [1, 2, 4] {
            let (released, outcome) = open_on(&archive, &key, threads);
            // The two batches before it, authenticated, and nothing of its own batch.
            assert_eq!(
                released.len(),
                2 * BATCH_CHUNKS * CHUNK,
                "{threads} threads"
            );
            assert!(released[..] == plaintext[..released.len()]);
            let err = outcome.unwrap_err();
            assert!(matches!(err, Error::Corrupt(_)), "{err}");
            assert_eq!(err.to_string(), old_err);
            assert!(
                err.to_string().contains(&format!("at chunk {bad}")),
                "{err}"
            );
        }
    }

    #[test]
    fn a_refused_batch_is_wiped_before_it_comes_back() {
        let (archive, _, key, bad) = tampered_in_third_batch();
        let header = Header::parse(archive.first_chunk().unwrap()).unwrap();
        let mut engine = engine(&header, &key, Direction::Open);
        engine.set_threads(2);
        let stride = CHUNK + TAG_LEN;
        let body = &archive[HEADER_LEN..];
        for batch_index in 0..3 {
            let mut batch = engine.spare().unwrap();
            let from = batch_index * BATCH_CHUNKS * stride;
            batch.reach(BATCH_CHUNKS * stride);
            batch.data[..BATCH_CHUNKS * stride]
                .copy_from_slice(&body[from..from + BATCH_CHUNKS * stride]);
            batch.chunks = BATCH_CHUNKS;
            batch.final_len = stride;
            engine.submit(batch).unwrap();
        }
        for batch_index in 0..3 {
            let batch = engine.next().unwrap().unwrap();
            if batch_index < 2 {
                assert_eq!(batch.refused, None);
                continue;
            }
            assert_eq!(batch.refused, Some(bad as u64));
            assert!(
                batch.data.iter().all(|&b| b == 0),
                "a refused batch kept bytes"
            );
        }
    }

    #[test]
    fn a_wrong_key_is_found_before_anything_is_released_or_written() {
        let header = test_header(CHEAP_KDF, MIN_CHUNK_SIZE);
        let stream = Stream::default()
            .dir("d")
            .file("d/f", &pseudo_random(3 * BATCH_CHUNKS * CHUNK, 14))
            .end();
        let archive = seal(&stream, &header, &[14u8; KEY_LEN]);
        for threads in [1, 2, 4] {
            let (released, outcome) = open_on(&archive, &[15u8; KEY_LEN], threads);
            assert!(released.is_empty());
            let err = outcome.unwrap_err();
            assert!(matches!(err, Error::WrongKey(_)), "{err}");
        }
        // A bad chunk in the first batch after chunk 0: the reader opens, and releases
        // nothing; extraction writes nothing.
        let mut damaged = archive.clone();
        damaged[HEADER_LEN + 3 * (CHUNK + TAG_LEN) + 1] ^= 1;
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("dest");
        std::fs::create_dir(&dest).unwrap();
        for threads in [1, 3] {
            let mut reader =
                Reader::with_key_on(&damaged[HEADER_LEN..], &header, &[14u8; KEY_LEN], threads)
                    .unwrap();
            let err = read_tree(&mut reader, Some(&dest), &mut |_| {}).unwrap_err();
            assert!(err.to_string().contains("at chunk 3"), "{err}");
            assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 0);
        }
    }

    #[test]
    fn counters_go_on_across_batches_and_only_the_final_chunk_is_last() {
        // Each chunk opened by hand, with the counter and last flag the format says.
        let key = [16u8; KEY_LEN];
        let header = test_header(CHEAP_KDF, MIN_CHUNK_SIZE);
        let plaintext = pseudo_random(2 * BATCH_CHUNKS * CHUNK + CHUNK, 16);
        let archive = seal_on(&plaintext, &header, &key, 3, 100_000);
        let aead = cipher(&key);
        let aad = header.encode();
        let stored: Vec<&[u8]> = archive[HEADER_LEN..].chunks(CHUNK + TAG_LEN).collect();
        assert_eq!(stored.len(), 2 * BATCH_CHUNKS + 1);
        for (i, chunk) in stored.iter().enumerate() {
            let mut nonce = [0u8; 12];
            nonce[..7].copy_from_slice(&header.nonce_prefix);
            nonce[7..11].copy_from_slice(&(i as u32).to_be_bytes());
            nonce[11] = u8::from(i + 1 == stored.len());
            let payload = chacha20poly1305::aead::Payload {
                msg: chunk,
                aad: &aad,
            };
            let opened = chacha20poly1305::aead::Aead::decrypt(
                &aead,
                GenericArray::from_slice(&nonce),
                payload,
            )
            .unwrap_or_else(|_| panic!("chunk {i}"));
            assert!(opened[..] == plaintext[i * CHUNK..(i * CHUNK + CHUNK).min(plaintext.len())]);
        }
    }
}
