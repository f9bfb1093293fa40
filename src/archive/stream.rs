//! STREAM (Hoang, Reyhanitabar, Rogaway, Vizár 2015) over ChaCha20-Poly1305, as the
//! archive body: [`Writer`] seals a byte stream into fixed-size chunks, each with its
//! counter and a last-chunk flag in its nonce and the header as associated data, and
//! [`Reader`] releases a chunk's plaintext only once its tag checked out. The chunks are
//! sealed and opened in batches on worker threads (`engine.rs`); the caller's thread
//! numbers them, so the bytes do not depend on the number of threads.

use std::collections::BTreeMap;
use std::io::{self, BufRead, Read, Write};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::engine::{Batch, Direction, Engine, Sink, TAG_LEN, default_threads};
use super::header::{
    CHAIN_LEN, ChainIds, HEADER_LEN, Header, KEY_LEN, KdfParams, NONCE_PREFIX_LEN, SALT_LEN,
    check_header, chunk_size_problem, derive_key,
};
use super::{Error, Result};
use crate::context::{Context, IoError};
use crate::secrets::Secret;

/// Encrypts a byte stream into an archive. Everything written is gathered into chunks, in
/// batches of about 1 MiB that worker threads seal while the next one fills (see
/// `engine.rs`) and write out in order ([`Ordered`]); [`Writer::finish`] seals the last
/// chunk. An archive whose writer is dropped unfinished has no last chunk, and every reader
/// refuses it as truncated; dropping it waits until nothing more is written.
pub struct Writer<W: Write + Send + 'static> {
    out: Arc<Ordered<W>>,
    /// `None` once a write failed: what reached the inner writer is then unknown.
    engine: Option<Engine>,
    /// The batch being filled with plaintext, and how much it holds.
    filling: Option<Batch>,
    filled: usize,
}

impl<W: Write + Send + 'static> Writer<W> {
    /// Writes the header (fresh random salt and nonce prefix) and derives the key.
    pub fn new(inner: W, secret: &Secret, params: KdfParams, chunk_size: u32) -> Result<Writer<W>> {
        if let Some(problem) = params.problem() {
            return Err(Error::BadParameters(format!(
                "backup key derivation cost: {problem}"
            )));
        }
        if let Some(problem) = chunk_size_problem(chunk_size) {
            return Err(Error::BadParameters(format!("backup {problem}")));
        }
        let mut salt = [0u8; SALT_LEN];
        fill_random(&mut salt)?;
        let mut nonce_prefix = [0u8; NONCE_PREFIX_LEN];
        fill_random(&mut nonce_prefix)?;
        Writer::with_header(
            inner,
            secret,
            Header {
                params,
                salt,
                chunk_size,
                nonce_prefix,
                chain: None,
            },
        )
    }

    /// The deterministic part of [`Writer::new`], for test vectors.
    pub(crate) fn with_header(inner: W, secret: &Secret, header: Header) -> Result<Writer<W>> {
        let key = derive_key(secret.as_bytes(), &header)?;
        Writer::with_key(inner, &header, &key)
    }

    pub(crate) fn with_key(
        mut inner: W,
        header: &Header,
        key: &[u8; KEY_LEN],
    ) -> Result<Writer<W>> {
        let header_bytes = header.bytes();
        inner
            .write_all(&header_bytes)
            .context(|| "writing the archive header".into())?;
        let out = Arc::new(Ordered::new(inner, header.chunk_size as usize));
        let mut engine = engine(header, key, Direction::Seal)
            .context(|| "preparing the archive cipher".into())?;
        engine.set_sink(out.clone());
        Ok(Writer {
            out,
            engine: Some(engine),
            filling: None,
            filled: 0,
        })
    }

    /// Seals with `threads` worker threads (1: on the caller's thread) instead of one per
    /// CPU; at most `MAX_THREADS` (64). The archive's bytes do not depend on it.
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
            None => spare_batch(&mut engine, &self.out).context(|| "writing the archive".into())?,
        };
        batch.chunks = self.filled.div_ceil(chunk_size).max(1);
        batch.final_len = self.filled - (batch.chunks - 1) * chunk_size;
        batch.reach(batch.chunks * (chunk_size + TAG_LEN));
        batch.ends_stream = true;
        engine
            .submit(batch)
            .and_then(|()| {
                while engine.next()?.is_some() {
                    self.out.check()?;
                }
                Ok(())
            })
            .context(|| "writing the archive".into())?;
        // Every batch is back, so every worker is done with the sink.
        drop(engine);
        let mut inner = self.out.take().context(|| "writing the archive".into())?;
        inner.flush().context(|| "writing the archive".into())?;
        Ok(inner)
    }

    /// Room for plaintext in the chunk being filled, at least one byte: when the batch is
    /// full, it is sealed first (more data has come, so its final chunk is not the last).
    pub(crate) fn room(&mut self) -> io::Result<&mut [u8]> {
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
                spare_batch(engine, &self.out)
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

/// An empty batch: from the pool (one written out, or a new one), or else the oldest one
/// in flight once it is sealed and written out.
fn spare_batch<W: Write + Send + 'static>(
    engine: &mut Engine,
    out: &Ordered<W>,
) -> io::Result<Batch> {
    while let Some(batch) = engine.next_ready() {
        out.check()?;
        engine.recycle(batch);
    }
    if let Some(batch) = engine.spare() {
        return Ok(batch);
    }
    let batch = engine.next()?.ok_or_else(|| {
        io::Error::other("the archive writer has no batch to fill; this is a bug")
    })?;
    out.check()?;
    Ok(batch)
}

/// Writes sealed batches to the inner writer in their order, on whichever thread sealed
/// them (a worker, or the caller's when it sealed a batch itself): the thread that
/// delivers the batch that is next writes it, and every one after it that is waiting,
/// while a thread that delivers one out of turn, or while another writes, only leaves it.
/// So the archive is written beside the reading of the files, by the threads that seal,
/// with no thread of its own.
///
/// Why not an output thread: on two CPUs a third busy thread writing the archive made the
/// 1 GiB tree's backup 7 % slower, though it made the small-file tree's 20 % faster
/// (loopdev-tests/bench/backup, 2026-11-26); writing on the sealing threads did both.
struct Ordered<W: Write + Send + 'static> {
    state: Mutex<OrderedState<W>>,
    chunk_size: usize,
}

struct OrderedState<W> {
    /// `None` while a thread writes to it, or once taken back.
    inner: Option<W>,
    /// The batch to write next.
    next: u64,
    /// Batches delivered out of turn, or while another thread wrote.
    waiting: BTreeMap<u64, Batch>,
    /// Whether a write failed: batches after it are passed over, not written.
    failed: bool,
    /// Why, until it is reported.
    error: Option<io::Error>,
}

impl<W: Write + Send + 'static> Ordered<W> {
    fn new(inner: W, chunk_size: usize) -> Ordered<W> {
        Ordered {
            state: Mutex::new(OrderedState {
                inner: Some(inner),
                next: 0,
                waiting: BTreeMap::new(),
                failed: false,
                error: None,
            }),
            chunk_size,
        }
    }

    fn lock(&self) -> MutexGuard<'_, OrderedState<W>> {
        // Nothing panics while holding it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether every write so far succeeded; the error of the one that failed, the first
    /// time it is asked.
    fn check(&self) -> io::Result<()> {
        let mut state = self.lock();
        match (state.failed, state.error.take()) {
            (false, _) => Ok(()),
            (true, Some(e)) => Err(e),
            (true, None) => Err(io::Error::other(failed_earlier())),
        }
    }

    /// The inner writer, once every batch was delivered and written.
    fn take(&self) -> io::Result<W> {
        self.check()?;
        let mut state = self.lock();
        match (state.waiting.is_empty(), state.inner.take()) {
            (true, Some(inner)) => Ok(inner),
            _ => Err(io::Error::other(
                "the archive was not written in full; this is a bug",
            )),
        }
    }
}

impl<W: Write + Send + 'static> Sink for Ordered<W> {
    fn deliver(&self, batch: Batch, back: &mut dyn FnMut(Batch)) {
        let mut state = self.lock();
        state.waiting.insert(batch.seq(), batch);
        loop {
            // Another thread is writing: it writes this batch too when its turn comes.
            let Some(mut inner) = state.inner.take() else {
                return;
            };
            let next = state.next;
            let Some(batch) = state.waiting.remove(&next) else {
                state.inner = Some(inner);
                return;
            };
            state.next += 1;
            let failed = state.failed;
            drop(state);
            let written = if failed {
                Ok(())
            } else {
                write_sealed(&mut inner, &batch, self.chunk_size)
            };
            back(batch);
            state = self.lock();
            state.inner = Some(inner);
            if let Err(e) = written {
                state.failed = true;
                state.error = Some(e);
            }
        }
    }
}

fn write_sealed(inner: &mut impl Write, batch: &Batch, chunk_size: usize) -> io::Result<()> {
    if batch.refused.is_some() {
        return Err(io::Error::other(
            "sealing a chunk of the archive failed; this is a bug",
        ));
    }
    inner.write_all(batch.sealed(chunk_size))
}

pub(crate) fn engine(
    header: &Header,
    key: &[u8; KEY_LEN],
    direction: Direction,
) -> io::Result<Engine> {
    Engine::new(
        key,
        header.nonce_prefix,
        header.bytes(),
        header.chunk_size as usize,
        direction,
        default_threads(),
    )
}

/// Fills `bytes` from the kernel's random generator.
pub(crate) fn fill_random(bytes: &mut [u8]) -> Result<()> {
    crate::volume::recovery::fill_random(bytes).map_err(random_failed)
}

/// What the kernel's random generator said, in the archive's terms: the volume layer's
/// error is only shown.
fn random_failed(e: impl std::fmt::Display) -> Error {
    Error::Random(e.to_string())
}

pub(crate) fn failed_earlier() -> Error {
    Error::Internal("the archive writer failed earlier; the archive is incomplete".into())
}

impl<W: Write + Send + 'static> Write for Writer<W> {
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

    /// Flushes the inner writer only, unless a worker is writing to it (it is flushed by
    /// [`Writer::finish`] in any case): chunks have a fixed size, so a partial one cannot be
    /// written out early.
    fn flush(&mut self) -> io::Result<()> {
        match self.out.lock().inner.as_mut() {
            Some(inner) => inner.flush(),
            None => Ok(()),
        }
    }
}

/// Where [`super::write_tree`] puts the plaintext stream: a [`Writer`], whose chunk buffer file
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

impl<W: Write + Send + 'static> PlainSink for Writer<W> {
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
pub(crate) struct Damaged {
    pub(crate) chunk: u64,
}

pub(crate) enum ReaderState {
    Reading,
    /// The batch ending the stream was handed out: once it is used up, the stream ends.
    Ending,
    /// A chunk was refused: every later read fails the same way.
    Refused(u64),
    /// Reading the inner stream failed.
    Broken,
}

/// Decrypts an archive. Worker threads open batches of chunks ahead of the caller (see
/// `engine.rs`); reading yields only plaintext of batches whose every chunk authenticated,
/// and ends (returns 0) only after the last chunk authenticated as the last. A refused chunk
/// is an `io::Error` of kind `InvalidData` naming it; nothing of its batch is released.
pub struct Reader<R: Read> {
    inner: R,
    header: Header,
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
    /// `check_header` does, when it is out of bounds or its key derivation needs more
    /// than `available_kib` of memory (MemAvailable; see [`crate::volume::mem_available_kib`]).
    pub fn new(mut inner: R, available_kib: Option<u64>) -> Result<KeylessReader<R>> {
        let mut header_bytes = [0u8; HEADER_LEN];
        inner
            .read_exact(&mut header_bytes)
            .map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => Error::NotAnArchive(
                    "not a keepsake backup archive (shorter than its 64-byte header)".into(),
                ),
                _ => Error::Io(IoError::new("reading the archive header", e)),
            })?;
        let mut header = check_header(&header_bytes, available_kib)?;
        if Header::has_chain_block(&header_bytes) {
            let mut chain = [0u8; CHAIN_LEN];
            inner.read_exact(&mut chain).map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => Error::Truncated,
                _ => Error::Io(IoError::new("reading the archive header", e)),
            })?;
            header.chain = Some(ChainIds::parse(&chain)?);
        }
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

    /// Whether the archive is of format 2 (a listing, in a chain).
    pub fn is_format_2(&self) -> bool {
        self.header.chain.is_some()
    }

    /// The header, checked but not yet authenticated.
    pub(crate) fn header(&self) -> &Header {
        &self.header
    }

    /// Derives the archive's key from `secret` (argon2id at the header's cost).
    pub(crate) fn derive(&self, secret: &Secret) -> Result<zeroize::Zeroizing<[u8; KEY_LEN]>> {
        derive_key(secret.as_bytes(), &self.header)
    }

    /// Opens the archive with a key already derived (one of its chain's): its first chunk
    /// authenticated, as [`KeylessReader::unlock`] does.
    pub(crate) fn unlock_with_key(self, key: &[u8; KEY_LEN]) -> Result<Reader<R>> {
        Reader::with_key_on(self.inner, &self.header, key, self.threads)
    }

    /// Opens chunks with `threads` worker threads (1: on the caller's thread) instead of
    /// one per CPU; at most `MAX_THREADS` (64).
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
    pub(crate) fn with_key(inner: R, header: &Header, key: &[u8; KEY_LEN]) -> Result<Reader<R>> {
        Reader::with_key_on(inner, header, key, default_threads())
    }

    /// [`Reader::with_key`] with `threads` worker threads.
    fn with_key_on(
        inner: R,
        header: &Header,
        key: &[u8; KEY_LEN],
        threads: usize,
    ) -> Result<Reader<R>> {
        let mut engine = engine(header, key, Direction::Open)
            .context(|| "preparing the archive cipher".into())?;
        engine.set_threads(threads);
        let mut reader = Reader {
            inner,
            header: header.clone(),
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
                Some(Damaged { chunk: 0 }) => Err(Error::WrongKey),
                // A later chunk of the first batch: refused when it is reached, as always.
                Some(_) => Ok(reader),
                None => Err(Error::Io(IoError::new("reading the archive", e))),
            },
        }
    }

    /// The key-derivation cost the archive was written with.
    pub fn kdf_params(&self) -> KdfParams {
        self.header.params
    }

    /// Whether the archive is of format 2 (a listing, in a chain).
    pub fn is_format_2(&self) -> bool {
        self.header.chain.is_some()
    }

    /// The header, authenticated with the first chunk.
    pub(crate) fn header(&self) -> &Header {
        &self.header
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
    pub(crate) fn ready(&self) -> Option<(usize, usize)> {
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

pub(crate) fn refused(chunk: u64) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, Damaged { chunk })
}

/// Reads until `buf` is full or the stream ends; returns how much was read.
pub(crate) fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::header::{DEFAULT_CHUNK_SIZE, MIN_CHUNK_SIZE};
    use crate::archive::oracle;
    use crate::archive::oracle::cipher;
    use crate::archive::testing::*;
    use crate::archive::tree::{TreeStats, input_error, read_tree};
    use chacha20poly1305::aead::generic_array::GenericArray;
    use chacha20poly1305::aead::stream::EncryptorBE32;
    use std::path::Path;

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
        assert!(exit_code(&err) == ExitCode::BadPassphrase, "{err}");
        let mut reader = Reader::with_key(after_chunk(2), &header, &key).unwrap();
        let err = read_tree(&mut reader, None, &mut |_| {}).unwrap_err();
        assert!(exit_code(&err) == ExitCode::Corrupt, "{err}");
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
            assert!(exit_code(&err) == ExitCode::Corrupt, "{len}: {err}");
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
        // A slow sink, so that batches are still being written when the writer is dropped.
        let shared = Shared {
            delay: std::time::Duration::from_millis(20),
            ..Shared::default()
        };
        // Enough for batches to be written out before the writer is dropped.
        let written = 8 * BATCH_CHUNKS * CHUNK + 100;
        let mut writer = Writer::with_key(shared.clone(), &header, &key)
            .unwrap()
            .with_threads(2);
        writer.write_all(&pseudo_random(written, 8)).unwrap();
        drop(writer);
        // Dropping the writer waited for its output thread: nothing comes after.
        let archive = shared.bytes.lock().unwrap().clone();
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert_eq!(
            archive.len(),
            shared.bytes.lock().unwrap().len(),
            "written after the drop"
        );
        // Whole chunks, none of them the last: at most the 8 full batches, however many of
        // them the workers sealed before the drop, never the 100 bytes after them.
        let body = archive.len() - HEADER_LEN;
        assert!(
            body > 0 && body <= 8 * BATCH_CHUNKS * (CHUNK + TAG_LEN),
            "{body}"
        );
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
        assert!(exit_code(&err) == ExitCode::BadPassphrase, "{err}");
        assert_eq!(exit_code(&err), ExitCode::BadPassphrase);
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
                    chain: None,
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
                    chain: None,
                },
                two_chunks,
            ),
        ]
    }

    #[test]
    fn test_vectors_match_and_follow_the_documented_construction() {
        use chacha20poly1305::aead::{Aead, Payload};
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/backup-v1.json");
        let vectors = vector_inputs()
            .into_iter()
            .map(|(name, passphrase, header, plaintext)| {
                vector_json(name, passphrase, &header, &plaintext)
            })
            .collect();
        let committed = committed_vectors(
            &path,
            "keepsake backup archive, version 1 (docs/backup-format.md)",
            vectors,
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
            let aead = cipher(key.as_slice().try_into().unwrap());
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

    /// A byte sink the test keeps a handle on while a writer owns the other; each write
    /// takes `delay`.
    #[derive(Clone, Default)]
    struct Shared {
        bytes: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
        delay: std::time::Duration,
    }

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            std::thread::sleep(self.delay);
            self.bytes.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A sink that takes `room` bytes, then fails every write, counting them.
    struct Full {
        room: usize,
        failed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Write for Full {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                self.failed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Err(io::Error::other("no space left on the test's sink"));
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A write that fails on a worker is the writer's error, reported by the next write or
    /// by `finish`, on every number of threads, wherever in the stream it fails; nothing is
    /// written after it, and nothing hangs.
    #[test]
    fn a_failing_sink_fails_the_writer_on_every_thread_count() {
        let key = [9u8; KEY_LEN];
        let header = test_header(CHEAP_KDF, MIN_CHUNK_SIZE);
        let plaintext = pseudo_random(12 * BATCH_CHUNKS * CHUNK + 7, 21);
        let archive_len = seal(&plaintext, &header, &key).len();
        for threads in [1, 2, 4] {
            for room in [
                0,
                HEADER_LEN,
                HEADER_LEN + 1,
                archive_len / 2,
                archive_len - 1,
            ] {
                let failed = std::sync::Arc::default();
                let full = Full {
                    room,
                    failed: std::sync::Arc::clone(&failed),
                };
                let writer = Writer::with_key(full, &header, &key);
                let Ok(writer) = writer else {
                    assert!(room < HEADER_LEN, "{threads} threads, room {room}");
                    continue;
                };
                let mut writer = writer.with_threads(threads);
                let write_failed = plaintext
                    .chunks(100_000)
                    .try_for_each(|piece| writer.write_all(piece))
                    .is_err();
                let finished = writer.finish();
                assert_eq!(
                    failed.load(std::sync::atomic::Ordering::Relaxed),
                    1,
                    "{threads} threads, room {room}: writes tried after the first failure"
                );
                let err = match (write_failed, finished) {
                    (true, _) => continue,
                    (false, Ok(_)) => panic!("{threads} threads, room {room}: no error"),
                    (false, Err(e)) => e,
                };
                assert!(
                    err.to_string().contains("no space left"),
                    "{threads} threads, room {room}: {err}"
                );
            }
        }
    }

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

    /// The production cipher (aws-lc) against an independent STREAM: every archive the
    /// writer seals, on any number of threads, opens with the oracle's reader (the
    /// `chacha20poly1305` crate's `DecryptorBE32`), and every archive that crate seals
    /// opens with the reader, at lengths around chunk and batch boundaries.
    #[test]
    fn the_writer_and_reader_agree_with_the_oracle_at_every_boundary_and_thread_count() {
        let key = [42u8; KEY_LEN];
        for chunk_size in [MIN_CHUNK_SIZE, DEFAULT_CHUNK_SIZE] {
            let header = test_header(CHEAP_KDF, chunk_size);
            let c = chunk_size as usize;
            let batch = (1 << 20) / c * c;
            let mut lengths = vec![0, 1, 15, 16, 17, c - 1, c, c + 1, 2 * c];
            lengths.extend([batch - 1, batch, batch + 1, batch + c, 4 * batch + 3]);
            lengths.extend([9 * batch - c, 9 * batch, 9 * batch + 1]);
            for len in lengths {
                let plaintext = pseudo_random(len, 7 * len as u64 + 3);
                let mut old = oracle::OldWriter::with_key(Vec::new(), &header, &key).unwrap();
                old.write_all(&plaintext).unwrap();
                let old = old.finish().unwrap();
                for threads in [1, 2, 4] {
                    let what = format!("chunk {c}, length {len}, {threads} threads");
                    let new = seal_on(&plaintext, &header, &key, threads, 100_000);
                    let (released, outcome) = old_open(&new, &key);
                    outcome.unwrap_or_else(|e| panic!("{what}: the oracle refused: {e}"));
                    assert!(released == plaintext, "{what}: the oracle read other bytes");
                    let (released, outcome) = open_on(&old, &key, threads);
                    outcome.unwrap_or_else(|e| panic!("{what}: refused the oracle's: {e}"));
                    assert!(released == plaintext, "{what}: read other bytes");
                }
            }
        }
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
            assert!(exit_code(&err) == ExitCode::Corrupt, "{err}");
            assert_eq!(err.to_string(), old_err);
            assert!(
                err.to_string().contains(&format!("at chunk {bad}")),
                "{err}"
            );
        }
    }

    #[test]
    fn a_refused_batch_is_wiped_before_it_comes_back() {
        let mut engine = |key: &[u8; KEY_LEN], header: &Header| {
            let mut engine = engine(header, key, Direction::Open).unwrap();
            engine.set_threads(2);
            engine
        };
        refused_batch_is_wiped(&mut engine);
    }

    /// The caller's thread opens queued batches itself when the workers are busy: what it
    /// opens is checked and wiped the same way.
    #[test]
    fn a_batch_the_callers_thread_opens_is_checked_and_wiped_too() {
        let mut engine = |key: &[u8; KEY_LEN], header: &Header| {
            let mut engine = engine(header, key, Direction::Open).unwrap();
            engine.caller_only();
            engine
        };
        refused_batch_is_wiped(&mut engine);
    }

    fn refused_batch_is_wiped(engine: &mut dyn FnMut(&[u8; KEY_LEN], &Header) -> Engine) {
        let (archive, _, key, bad) = tampered_in_third_batch();
        let header = Header::parse(archive.first_chunk().unwrap()).unwrap();
        let mut engine = engine(&key, &header);
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
            assert!(exit_code(&err) == ExitCode::BadPassphrase, "{err}");
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
