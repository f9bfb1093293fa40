//! Writing a backup: folders sealed into an archive on any byte sink, and what it took.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::header::{DEFAULT_CHUNK_SIZE, KdfParams};
use super::stream::Writer;
use super::tree::{TreeStats, write_tree};
use super::{Error, Result};
use crate::context::Context;
use crate::secrets::Secret;

/// Seals `tops` (names directly inside `root`) into an archive written to `sink`, with a
/// key derived from `secret` at cost `params`, on `threads` worker threads. Returns what
/// the tree held and the archive's length. `progress` gets the file data bytes written so
/// far, from the first one on (the key is derived by then). An error leaves an archive that
/// no reader accepts: its last chunk is missing.
pub(crate) fn back_up(
    root: &Path,
    tops: &[String],
    sink: impl Write + Send + 'static,
    secret: &Secret,
    params: KdfParams,
    threads: usize,
    progress: &mut dyn FnMut(u64),
) -> Result<(TreeStats, u64)> {
    let counted = Counting {
        inner: std::io::BufWriter::with_capacity(1 << 20, sink),
        bytes: 0,
    };
    let mut writer =
        Writer::new(counted, secret, params, DEFAULT_CHUNK_SIZE)?.with_threads(threads);
    let tops: Vec<PathBuf> = tops.iter().map(PathBuf::from).collect();
    let stats = write_tree(root, &tops, &mut writer, progress)?;
    let mut counted = writer.finish()?;
    counted
        .inner
        .flush()
        .context(|| "writing the archive".into())
        .map_err(Error::from)?;
    Ok((stats, counted.bytes))
}

/// Counts the bytes written through it.
struct Counting<W: Write> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
