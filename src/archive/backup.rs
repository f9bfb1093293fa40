//! Writing a backup: folders sealed into an archive on any byte sink, full or incremental
//! after an earlier archive of the same chain, and what it took.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::chain::open_listing;
use super::header::{
    ChainIds, DEFAULT_CHUNK_SIZE, Header, ID_LEN, KEY_LEN, KdfParams, MAX_GENERATION,
    NONCE_PREFIX_LEN, SALT_LEN, derive_key,
};
use super::stream::{KeylessReader, Writer, fill_random};
use super::tree::{Step, TreeStats};
use super::walk::{InChain, Previous, write_tree_v2};
use super::{Error, Result};
use crate::context::{Context, at};
use crate::secrets::Secret;

/// The archive an incremental one is made after: its header (whose salt and cost the new
/// archive takes, so that the whole chain has one key), that key, what its listing says
/// of each file, and its file name, recorded in the new archive.
pub(crate) struct Parent {
    header: Header,
    ids: ChainIds,
    key: Zeroizing<[u8; KEY_LEN]>,
    previous: Previous,
    name: Vec<u8>,
}

impl Parent {
    /// Opens the archive `keyless` (its header checked), called `name`, with `secret`:
    /// its first chunks authenticated and its listing read, nothing more.
    pub(crate) fn open<R: Read>(
        keyless: KeylessReader<R>,
        name: &OsStr,
        secret: &Secret,
    ) -> Result<Parent> {
        let header = keyless.header().clone();
        let Some(ids) = header.chain else {
            return Err(Error::Refused(
                "the previous archive is of format 1, which has no listing to compare with; make a full backup first (nothing was written)".into(),
            ));
        };
        if ids.generation >= MAX_GENERATION {
            return Err(Error::Refused(format!(
                "the previous archive ends a chain of {MAX_GENERATION} incremental archives, the most a reader follows; make a full backup (nothing was written)"
            )));
        }
        let key = derive_key(secret.as_bytes(), &header)?;
        let opened = open_listing(keyless.unlock_with_key(&key)?)?;
        Ok(Parent {
            previous: Previous::from_listing(&opened.listing),
            header,
            ids,
            key,
            name: name.as_bytes().to_vec(),
        })
    }

    pub(crate) fn params(&self) -> KdfParams {
        self.header.params
    }
}

/// What a new archive is: full, with a key derived at this cost, or incremental after an
/// archive, under its chain's key.
#[derive(Clone, Copy)]
pub(crate) enum Kind<'a> {
    Full(KdfParams),
    After(&'a Parent),
}

/// Seals `tops` (names directly inside `root`) into a format-2 archive written to
/// `sink`: full, with a key derived from `secret`, or incremental after a parent, under
/// the chain's key (see [`Kind`]). On `threads` worker
/// threads. Returns what the tree held, the archive's length and its chain ids.
/// `progress` gets the entries listed so far, from none on (the key is derived by then),
/// then the file data bytes written so far, of the total the archive stores.
/// An error leaves an archive that no reader accepts: its last chunk is missing.
pub(crate) fn back_up(
    root: &Path,
    tops: &[String],
    sink: impl Write + Send + 'static,
    secret: &Secret,
    kind: Kind,
    threads: usize,
    progress: &mut dyn FnMut(Step),
) -> Result<(TreeStats, u64, ChainIds)> {
    let (params, parent) = match kind {
        Kind::Full(params) => (params, None),
        Kind::After(parent) => (parent.params(), Some(parent)),
    };
    let counted = Counting {
        inner: std::io::BufWriter::with_capacity(1 << 20, sink),
        bytes: 0,
    };
    let (header, key) = new_header(secret, params, parent)?;
    let ids = header
        .chain
        .ok_or_else(|| Error::Internal("no chain ids".into()))?;
    let mut writer = Writer::with_key(counted, &header, &key)?.with_threads(threads);
    let tops: Vec<PathBuf> = tops.iter().map(PathBuf::from).collect();
    let parent_name = parent.map_or(&[][..], |p| &p.name[..]);
    let previous = parent.map(|p| &p.previous);
    let stats = write_tree_v2(
        root,
        &tops,
        InChain {
            own: ids.id,
            parent_name,
            previous,
        },
        &mut writer,
        threads,
        progress,
    )?;
    let mut counted = writer.finish()?;
    counted
        .inner
        .flush()
        .context(|| "writing the archive".into())
        .map_err(Error::from)?;
    Ok((stats, counted.bytes, ids))
}

/// A full format-2 archive of every name in `root`, with a key derived from `secret` at
/// `params`, on `threads` worker threads: what `keepsake backup` writes, without a volume
/// around it (for examples/archive_bench). Returns what the tree held.
pub fn back_up_folder(
    root: &Path,
    sink: impl Write + Send + 'static,
    secret: &Secret,
    params: KdfParams,
    threads: usize,
) -> Result<TreeStats> {
    let mut tops: Vec<String> = Vec::new();
    for entry in std::fs::read_dir(root).context(at("listing", root))? {
        let entry = entry.context(at("listing", root))?;
        tops.push(entry.file_name().to_string_lossy().into_owned());
    }
    tops.sort();
    back_up(
        root,
        &tops,
        sink,
        secret,
        Kind::Full(params),
        threads,
        &mut |_| {},
    )
    .map(|(stats, _, _)| stats)
}

/// The header of a new archive and its key: a fresh salt and cost for a full archive,
/// the parent's for an incremental one; a fresh nonce prefix (never the parent's: the key
/// is the same) and a fresh id either way.
fn new_header(
    secret: &Secret,
    params: KdfParams,
    parent: Option<&Parent>,
) -> Result<(Header, Zeroizing<[u8; KEY_LEN]>)> {
    let mut id = [0u8; ID_LEN];
    while id == [0; ID_LEN] || parent.is_some_and(|p| p.ids.id == id) {
        fill_random(&mut id)?;
    }
    let mut nonce_prefix = [0u8; NONCE_PREFIX_LEN];
    fill_random(&mut nonce_prefix)?;
    while parent.is_some_and(|p| p.header.nonce_prefix == nonce_prefix) {
        fill_random(&mut nonce_prefix)?;
    }
    match parent {
        Some(parent) => Ok((
            Header {
                nonce_prefix,
                chain: Some(ChainIds {
                    id,
                    parent: parent.ids.id,
                    generation: parent.ids.generation + 1,
                }),
                ..parent.header.clone()
            },
            parent.key.clone(),
        )),
        None => {
            if let Some(problem) = params.problem() {
                return Err(Error::BadParameters(format!(
                    "backup key derivation cost: {problem}"
                )));
            }
            let mut salt = [0u8; SALT_LEN];
            fill_random(&mut salt)?;
            let header = Header {
                params,
                salt,
                chunk_size: DEFAULT_CHUNK_SIZE,
                nonce_prefix,
                chain: Some(ChainIds {
                    id,
                    parent: [0; ID_LEN],
                    generation: 0,
                }),
            };
            let key = derive_key(secret.as_bytes(), &header)?;
            Ok((header, key))
        }
    }
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
