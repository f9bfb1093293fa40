//! The single-threaded chunk writer and reader as they were before the batched, threaded
//! ones (src/archive/stream.rs and engine.rs), kept verbatim as a test oracle: whatever the new ones
//! write, these must read, and the other way round, byte for byte.

use std::io::{self, Read, Write};

use chacha20poly1305::ChaCha20Poly1305;
use chacha20poly1305::KeyInit;
use chacha20poly1305::aead::generic_array::GenericArray;
use chacha20poly1305::aead::stream::{DecryptorBE32, EncryptorBE32};
use zeroize::Zeroizing;

use super::engine::TAG_LEN;
use super::header::{HEADER_LEN, Header, KEY_LEN};
use super::stream::{read_full, refused};
use super::{Error, Result};
use crate::context::{Context, IoError};

/// The archive's AEAD from the `chacha20poly1305` crate, independent of the production
/// cipher (aws-lc, src/archive/engine.rs): the oracle's STREAM is that crate's own.
pub(crate) fn cipher(key: &[u8; KEY_LEN]) -> ChaCha20Poly1305 {
    ChaCha20Poly1305::new(GenericArray::from_slice(key))
}

/// Encrypts a byte stream into an archive. Everything written is buffered into chunks;
/// `finish` seals the last one. An archive whose writer is dropped unfinished has
/// no last chunk, and every reader refuses it as truncated.
pub(super) struct OldWriter<W: Write> {
    inner: W,
    header: [u8; HEADER_LEN],
    chunk_size: usize,
    /// `None` once a write failed: what reached `inner` is then unknown.
    encryptor: Option<EncryptorBE32<ChaCha20Poly1305>>,
    /// Plaintext of the chunk being filled, allocated once with room for the tag so that
    /// sealing in place never leaves a copy behind.
    buffer: Zeroizing<Vec<u8>>,
}

impl<W: Write> OldWriter<W> {
    pub(super) fn with_key(
        mut inner: W,
        header: &Header,
        key: &[u8; KEY_LEN],
    ) -> Result<OldWriter<W>> {
        let header_bytes = header.encode();
        inner
            .write_all(&header_bytes)
            .context(|| "writing the archive header".into())?;
        let chunk_size = header.chunk_size as usize;
        Ok(OldWriter {
            inner,
            header: header_bytes,
            chunk_size,
            encryptor: Some(EncryptorBE32::from_aead(
                cipher(key),
                GenericArray::from_slice(&header.nonce_prefix),
            )),
            buffer: Zeroizing::new(Vec::with_capacity(chunk_size + TAG_LEN)),
        })
    }

    /// Seals the last chunk (possibly empty) and returns the inner writer, flushed.
    pub fn finish(mut self) -> Result<W> {
        let encryptor = self.encryptor.take().ok_or_else(failed_earlier)?;
        encryptor
            .encrypt_last_in_place(&self.header, &mut *self.buffer)
            .map_err(|_| Error::Internal("sealing the last chunk of the archive".into()))?;
        self.inner
            .write_all(&self.buffer)
            .and_then(|()| self.inner.flush())
            .context(|| "writing the archive".into())?;
        Ok(self.inner)
    }

    /// Seals the full buffer as a chunk that is not the last.
    fn seal_chunk(&mut self) -> io::Result<()> {
        let encryptor = self
            .encryptor
            .as_mut()
            .ok_or_else(|| io::Error::other(failed_earlier()))?;
        let sealed = encryptor
            .encrypt_next_in_place(&self.header, &mut *self.buffer)
            .map_err(|_| {
                io::Error::other("the archive has too many chunks; use a larger chunk size")
            })
            .and_then(|()| self.inner.write_all(&self.buffer));
        self.buffer.clear();
        if sealed.is_err() {
            self.encryptor = None;
        }
        sealed
    }
}

fn failed_earlier() -> Error {
    Error::Internal("the archive writer failed earlier; the archive is incomplete".into())
}

impl<W: Write> Write for OldWriter<W> {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        if self.encryptor.is_none() {
            return Err(io::Error::other(failed_earlier()));
        }
        let total = data.len();
        while !data.is_empty() {
            // A full chunk is sealed only once more data comes: until `finish` it may be
            // the last.
            if self.buffer.len() == self.chunk_size {
                self.seal_chunk()?;
            }
            let take = (self.chunk_size - self.buffer.len()).min(data.len());
            self.buffer.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
        Ok(total)
    }

    /// Flushes the inner writer only: chunks have a fixed size, so a partial one cannot be
    /// written out early.
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

enum ReaderState {
    Reading,
    Finished,
    /// A chunk was refused: every later read fails the same way.
    Refused(u64),
    /// Reading the inner stream failed.
    Broken,
}

enum ChunkError {
    Io(io::Error),
    Refused(u64),
}

/// Decrypts an archive. Reading yields only plaintext whose chunk authenticated, and ends
/// (returns 0) only after the last chunk authenticated as the last; a refused chunk is an
/// `io::Error` of kind `InvalidData` naming it.
pub(super) struct OldReader<R: Read> {
    inner: R,
    header: [u8; HEADER_LEN],
    chunk_size: usize,
    decryptor: Option<DecryptorBE32<ChaCha20Poly1305>>,
    /// Ciphertext being read, then the plaintext of the current chunk; allocated once.
    buffer: Zeroizing<Vec<u8>>,
    /// How much of `buffer` was handed out.
    taken: usize,
    /// One byte read past a full chunk to learn whether it is the last.
    lookahead: Option<u8>,
    next_chunk: u64,
    state: ReaderState,
}

impl<R: Read> OldReader<R> {
    /// The rest of [`OldReader::new`], once the header was read and the key derived.
    pub(super) fn with_key(inner: R, header: &Header, key: &[u8; KEY_LEN]) -> Result<OldReader<R>> {
        let chunk_size = header.chunk_size as usize;
        let mut reader = OldReader {
            inner,
            header: header.encode(),
            chunk_size,
            decryptor: Some(DecryptorBE32::from_aead(
                cipher(key),
                GenericArray::from_slice(&header.nonce_prefix),
            )),
            buffer: Zeroizing::new(Vec::with_capacity(chunk_size + TAG_LEN)),
            taken: 0,
            lookahead: None,
            next_chunk: 0,
            state: ReaderState::Reading,
        };
        match reader.read_chunk() {
            Ok(()) => Ok(reader),
            Err(ChunkError::Io(e)) => Err(Error::Io(IoError::new("reading the archive", e))),
            Err(ChunkError::Refused(_)) => Err(Error::WrongKey),
        }
    }

    /// Reads, authenticates and decrypts the next chunk into `buffer`.
    fn read_chunk(&mut self) -> std::result::Result<(), ChunkError> {
        let chunk = self.next_chunk;
        let full = self.chunk_size + TAG_LEN;
        self.buffer.clear();
        self.taken = 0;
        let mut len = 0;
        if let Some(byte) = self.lookahead.take() {
            self.buffer.push(byte);
            len = 1;
        }
        self.buffer.resize(full, 0);
        let got = read_full(&mut self.inner, &mut self.buffer[len..]);
        let got = got.map_err(|e| self.broken(e))?;
        len += got;
        self.buffer.truncate(len);
        let last = if len < full {
            true
        } else {
            let mut one = [0u8; 1];
            let more = read_full(&mut self.inner, &mut one).map_err(|e| self.broken(e))?;
            self.lookahead = (more == 1).then_some(one[0]);
            more == 0
        };
        let opened = if len < TAG_LEN {
            Err(chacha20poly1305::aead::Error)
        } else if last {
            match self.decryptor.take() {
                Some(decryptor) => decryptor.decrypt_last_in_place(&self.header, &mut *self.buffer),
                None => Err(chacha20poly1305::aead::Error),
            }
        } else {
            match self.decryptor.as_mut() {
                Some(decryptor) => decryptor.decrypt_next_in_place(&self.header, &mut *self.buffer),
                None => Err(chacha20poly1305::aead::Error),
            }
        };
        if opened.is_err() {
            self.buffer.clear();
            self.decryptor = None;
            self.state = ReaderState::Refused(chunk);
            return Err(ChunkError::Refused(chunk));
        }
        self.next_chunk += 1;
        if last {
            self.state = ReaderState::Finished;
        }
        Ok(())
    }

    fn broken(&mut self, e: io::Error) -> ChunkError {
        self.buffer.clear();
        self.decryptor = None;
        self.state = ReaderState::Broken;
        ChunkError::Io(e)
    }
}

impl<R: Read> Read for OldReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            let ready = &self.buffer[self.taken..];
            if !ready.is_empty() || out.is_empty() {
                let n = ready.len().min(out.len());
                out[..n].copy_from_slice(&ready[..n]);
                self.taken += n;
                return Ok(n);
            }
            match self.state {
                ReaderState::Finished => return Ok(0),
                ReaderState::Refused(chunk) => return Err(refused(chunk)),
                ReaderState::Broken => {
                    return Err(io::Error::other(
                        "reading the archive failed earlier; its end was not checked",
                    ));
                }
                ReaderState::Reading => match self.read_chunk() {
                    Ok(()) => {}
                    Err(ChunkError::Io(e)) => return Err(e),
                    Err(ChunkError::Refused(chunk)) => return Err(refused(chunk)),
                },
            }
        }
    }
}
