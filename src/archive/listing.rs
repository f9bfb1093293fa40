//! Format 2's plaintext: a preamble naming the parent archive's file, the listing (every
//! entry's metadata, extended attributes and, for a file, its extents and which archive of
//! the chain holds its content), then the data section and an end marker. The listing
//! comes first so that `backup list` and the next `backup --since` read only the first
//! chunks of an archive. Every field is checked here before anything is acted on.

use std::collections::HashMap;
use std::io::{BufRead, Read};

use super::extract::Meta;
use super::header::ID_LEN;
use super::tree::{
    ENTRY_DIR, ENTRY_END, ENTRY_FILE, ENTRY_SYMLINK, check_path, check_placement, entry_start,
    file_layout, input_error, push_bytes16, read_array, read_bytes16, read_exact, read_file_layout,
    read_meta, read_u8, read_u32, shown,
};
use super::{Error, Result};
use crate::safefs::xattr::{self, MAX_VALUE, Xattr};

/// A second name of a file stored earlier in the same listing.
pub(crate) const ENTRY_HARDLINK: u8 = 4;

/// The most extended attributes an entry may carry, and the most bytes of names and
/// values together: a reader's memory per entry stays bounded whatever the archive says.
pub(crate) const MAX_XATTRS: u16 = 1024;
pub(crate) const MAX_XATTR_BYTES: usize = 1 << 20;

/// The longest name of a parent archive's file (NAME_MAX).
pub(crate) const MAX_PARENT_NAME: usize = 255;

/// What an entry of the listing is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Dir,
    /// A regular file: its size, the extents holding data, and the id of the archive of
    /// the chain whose data section holds those extents (this archive's own id when it is
    /// stored here).
    File {
        size: u64,
        extents: Vec<(u64, u64)>,
        holder: [u8; ID_LEN],
    },
    Symlink {
        target: Vec<u8>,
    },
    /// Another name of the file entry at `target`, earlier in the same listing.
    HardLink {
        target: Vec<u8>,
    },
}

/// One entry of the listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Listed {
    pub(crate) path: Vec<u8>,
    pub(crate) meta: Meta,
    /// Sorted by name, each name once.
    pub(crate) xattrs: Vec<Xattr>,
    pub(crate) kind: Kind,
}

impl Listed {
    pub(crate) fn type_byte(&self) -> u8 {
        match self.kind {
            Kind::Dir => ENTRY_DIR,
            Kind::File { .. } => ENTRY_FILE,
            Kind::Symlink { .. } => ENTRY_SYMLINK,
            Kind::HardLink { .. } => ENTRY_HARDLINK,
        }
    }

    /// Bytes of data the entry's holder stores for it.
    pub(crate) fn data_len(&self) -> u64 {
        match &self.kind {
            Kind::File { extents, .. } => extents.iter().map(|(_, len)| len).sum(),
            _ => 0,
        }
    }

    /// Whether the data section of the archive with id `id` holds this entry's data.
    pub(crate) fn stored_in(&self, id: &[u8; ID_LEN]) -> bool {
        matches!(&self.kind, Kind::File { holder, .. } if holder == id) && self.data_len() > 0
    }

    /// The entry as the listing stores it.
    pub(crate) fn encode(&self) -> Result<Vec<u8>> {
        let mut out = entry_start(self.type_byte(), &self.path, &self.meta)?;
        out.extend_from_slice(&(self.xattrs.len() as u16).to_le_bytes());
        for (name, value) in &self.xattrs {
            out.push(name.len() as u8);
            out.extend_from_slice(name);
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
            out.extend_from_slice(value);
        }
        match &self.kind {
            Kind::Dir => {}
            Kind::File {
                size,
                extents,
                holder,
            } => {
                out.extend_from_slice(&file_layout(*size, extents));
                out.extend_from_slice(holder);
            }
            Kind::Symlink { target } => push_bytes16(&mut out, target, "symlink target of")?,
            Kind::HardLink { target } => push_bytes16(&mut out, target, "hard link target of")?,
        }
        Ok(out)
    }
}

/// The attributes of one entry that a writer stores: at most [`MAX_XATTRS`] and
/// [`MAX_XATTR_BYTES`]; what is beyond is left out and said.
pub(crate) fn storable(mut xattrs: Vec<Xattr>) -> (Vec<Xattr>, Vec<Vec<u8>>) {
    let mut dropped = Vec::new();
    let mut total = 0;
    xattrs.retain(|(name, value)| {
        total += name.len() + value.len();
        let fits = (1..=255).contains(&name.len())
            && value.len() <= MAX_VALUE
            && total <= MAX_XATTR_BYTES
            && !name.contains(&0);
        if !fits {
            dropped.push(name.clone());
        }
        fits
    });
    xattrs.truncate(usize::from(MAX_XATTRS));
    (xattrs, dropped)
}

/// The preamble: the file name of the parent archive, empty for a full archive.
pub(crate) fn preamble(parent_name: &[u8]) -> Result<Vec<u8>> {
    if let Some(problem) = parent_name_problem(parent_name, !parent_name.is_empty()) {
        return Err(Error::Refused(format!(
            "the previous archive's name {} cannot be recorded: {problem}",
            shown(parent_name)
        )));
    }
    let mut out = Vec::new();
    push_bytes16(&mut out, parent_name, "name")?;
    Ok(out)
}

/// Why a recorded parent name is refused: a plain file name beside the archive, present
/// exactly when the archive is incremental.
fn parent_name_problem(name: &[u8], incremental: bool) -> Option<&'static str> {
    if name.is_empty() {
        return incremental.then_some("an incremental archive names no parent");
    }
    if !incremental {
        Some("a full archive names a parent")
    } else if name.len() > MAX_PARENT_NAME {
        Some("it is longer than 255 bytes")
    } else if name.contains(&b'/') || name.contains(&0) || name == b"." || name == b".." {
        Some("it is not a plain file name")
    } else {
        None
    }
}

/// The preamble and listing of a format-2 archive, as read and checked.
#[derive(Debug)]
pub(crate) struct Listing {
    /// The parent archive's file name, beside this one; empty for a full archive.
    pub(crate) parent_name: Vec<u8>,
    pub(crate) entries: Vec<Listed>,
}

/// Reads and checks the preamble and listing of the archive whose id is `own` (`full`
/// if it is a full archive): every path safe and placed under a folder listed before it,
/// each once; attributes of a kept namespace, sorted, within bounds; a hard link to a
/// file listed before it; a full archive's files all held by itself.
pub(crate) fn read_listing(
    input: &mut impl BufRead,
    own: &[u8; ID_LEN],
    full: bool,
) -> Result<Listing> {
    let parent_name = read_bytes16(input)?;
    if let Some(problem) = parent_name_problem(&parent_name, !full) {
        return Err(Error::BadEntry(format!(
            "the archive's parent name is invalid: {problem}"
        )));
    }
    let mut seen: HashMap<Vec<u8>, u8> = HashMap::new();
    let mut entries = Vec::new();
    loop {
        crate::interrupt::check()?;
        let kind = read_u8(input)?;
        if kind == ENTRY_END {
            break;
        }
        if !matches!(
            kind,
            ENTRY_DIR | ENTRY_FILE | ENTRY_SYMLINK | ENTRY_HARDLINK
        ) {
            return Err(Error::BadEntry(format!(
                "the archive's listing holds an entry of unknown type {kind}"
            )));
        }
        let path = read_bytes16(input)?;
        check_path(&path)?;
        let meta = read_meta(input, &path)?;
        check_placement(&seen, &path)?;
        let xattrs = read_xattrs(input, &path)?;
        let kind = match kind {
            ENTRY_DIR => Kind::Dir,
            ENTRY_SYMLINK => {
                let target = read_bytes16(input)?;
                if target.is_empty() || target.contains(&0) {
                    return Err(Error::BadEntry(format!(
                        "the archive holds a symlink {} with an empty target or one with a NUL byte",
                        shown(&path)
                    )));
                }
                Kind::Symlink { target }
            }
            ENTRY_HARDLINK => {
                let target = read_bytes16(input)?;
                if seen.get(&target) != Some(&ENTRY_FILE) {
                    return Err(Error::BadEntry(format!(
                        "the archive holds {} as a hard link to {}, which is not a file listed before it",
                        shown(&path),
                        shown(&target)
                    )));
                }
                Kind::HardLink { target }
            }
            _ => {
                let (size, extents) = read_file_layout(input, &path)?;
                let holder: [u8; ID_LEN] = read_array(input)?;
                if full && &holder != own {
                    return Err(Error::BadEntry(format!(
                        "the full archive says another archive holds the content of {}",
                        shown(&path)
                    )));
                }
                Kind::File {
                    size,
                    extents,
                    holder,
                }
            }
        };
        seen.insert(path.clone(), kind_byte(&kind));
        entries.push(Listed {
            path,
            meta,
            xattrs,
            kind,
        });
    }
    Ok(Listing {
        parent_name,
        entries,
    })
}

fn kind_byte(kind: &Kind) -> u8 {
    match kind {
        Kind::Dir => ENTRY_DIR,
        Kind::File { .. } => ENTRY_FILE,
        Kind::Symlink { .. } => ENTRY_SYMLINK,
        Kind::HardLink { .. } => ENTRY_HARDLINK,
    }
}

/// An entry's attributes: a u16 count, then each as a u8 name length, the name, a u32
/// value length and the value.
fn read_xattrs(input: &mut impl Read, path: &[u8]) -> Result<Vec<Xattr>> {
    let count = u16::from_le_bytes(read_array(input)?);
    let invalid = |why: &str| {
        Error::BadEntry(format!(
            "the archive holds {} with invalid extended attributes: {why}",
            shown(path)
        ))
    };
    if count > MAX_XATTRS {
        return Err(invalid("too many"));
    }
    let mut xattrs: Vec<Xattr> = Vec::with_capacity(usize::from(count));
    let mut total = 0usize;
    for _ in 0..count {
        let name_len = usize::from(read_u8(input)?);
        let mut name = vec![0u8; name_len];
        read_exact(input, &mut name)?;
        let value_len = read_u32(input)? as usize;
        total += name_len + value_len;
        if value_len > MAX_VALUE || total > MAX_XATTR_BYTES {
            return Err(invalid("too large"));
        }
        if name.contains(&0) || !xattr::kept(&name) {
            return Err(invalid("a name outside the namespaces kept"));
        }
        if xattrs.last().is_some_and(|(last, _)| *last >= name) {
            return Err(invalid("names out of order or repeated"));
        }
        let mut value = vec![0u8; value_len];
        read_exact(input, &mut value)?;
        xattrs.push((name, value));
    }
    Ok(xattrs)
}

/// Reads and checks a whole format-2 plaintext of the archive `own` without extracting
/// anything: the listing, the data section it announces (skipped), and the end.
pub(crate) fn check_plaintext(
    input: &mut impl BufRead,
    own: &[u8; ID_LEN],
    full: bool,
) -> Result<Listing> {
    let listing = read_listing(input, own, full)?;
    for entry in listing.entries.iter().filter(|e| e.stored_in(own)) {
        let mut left = entry.data_len();
        while left > 0 {
            let ready = input.fill_buf().map_err(input_error)?;
            if ready.is_empty() {
                return Err(Error::Truncated);
            }
            let n = ready.len().min(left.min(usize::MAX as u64) as usize);
            input.consume(n);
            left -= n as u64;
        }
    }
    read_end(input)?;
    Ok(listing)
}

/// The end of a format-2 plaintext, after the data section: the end marker, then nothing.
pub(crate) fn read_end(input: &mut impl BufRead) -> Result<()> {
    if read_u8(input)? != ENTRY_END {
        return Err(Error::BadEntry(
            "the archive's data section is not followed by its end marker".into(),
        ));
    }
    let mut one = [0u8; 1];
    if super::stream::read_full(input, &mut one).map_err(input_error)? != 0 {
        return Err(Error::BadEntry(
            "the archive holds data after its end marker".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::archive::testing::*;
    use crate::safefs::xattr::ACL_ACCESS;
    use crate::safefs::{AclEntry, acl_xattr};

    const OWN: [u8; ID_LEN] = [1; ID_LEN];

    /// The entries of the samples: a folder with an attribute and an ACL, a file, a hard
    /// link to it, a symlink, and (`with_old`) a file held by another archive.
    pub(crate) fn sample_entries(own: &[u8; ID_LEN], with_old: bool) -> Vec<Listed> {
        let acl = acl_xattr(&[
            AclEntry {
                tag: AclEntry::USER_OBJ,
                perm: 7,
                id: u32::MAX,
            },
            AclEntry {
                tag: AclEntry::USER,
                perm: 5,
                id: 1000,
            },
            AclEntry {
                tag: AclEntry::GROUP_OBJ,
                perm: 5,
                id: u32::MAX,
            },
            AclEntry {
                tag: 0x10,
                perm: 5,
                id: u32::MAX,
            },
            AclEntry {
                tag: 0x20,
                perm: 0,
                id: u32::MAX,
            },
        ]);
        let mut entries = vec![
            Listed {
                xattrs: vec![
                    (ACL_ACCESS.to_vec(), acl),
                    (b"user.comment".to_vec(), b"kept".to_vec()),
                ],
                ..dir("d")
            },
            file("d/f", 10, *own),
            Listed {
                path: b"d/g".to_vec(),
                meta: META,
                xattrs: vec![],
                kind: Kind::HardLink {
                    target: b"d/f".to_vec(),
                },
            },
            Listed {
                path: b"d/l".to_vec(),
                meta: META,
                xattrs: vec![],
                kind: Kind::Symlink {
                    target: b"f".to_vec(),
                },
            },
        ];
        if with_old {
            entries.push(file("d/old", 5, [0x77; ID_LEN]));
        }
        entries
    }

    /// A whole plaintext: listing, data section (10 bytes for d/f), end.
    fn plaintext_of(parent: &[u8], entries: &[Listed]) -> Vec<u8> {
        let mut out = encode(parent, entries);
        out.extend_from_slice(b"0123456789");
        out.push(ENTRY_END);
        out
    }

    pub(crate) fn sample_plaintext(own: &[u8; ID_LEN]) -> Vec<u8> {
        plaintext_of(b"prev.ksb", &sample_entries(own, true))
    }

    pub(crate) fn sample_plaintext_full(own: &[u8; ID_LEN]) -> Vec<u8> {
        plaintext_of(b"", &sample_entries(own, false))
    }

    fn file(path: &str, data: u64, holder: [u8; ID_LEN]) -> Listed {
        Listed {
            path: path.into(),
            meta: META,
            xattrs: vec![],
            kind: Kind::File {
                size: data,
                extents: if data == 0 { vec![] } else { vec![(0, data)] },
                holder,
            },
        }
    }

    fn dir(path: &str) -> Listed {
        Listed {
            path: path.into(),
            meta: META,
            xattrs: vec![(b"user.a".to_vec(), b"1".to_vec())],
            kind: Kind::Dir,
        }
    }

    fn encode(parent: &[u8], entries: &[Listed]) -> Vec<u8> {
        let mut out = preamble(parent).unwrap();
        for e in entries {
            out.extend(e.encode().unwrap());
        }
        out.push(ENTRY_END);
        out
    }

    /// The inputs of tests/vectors/backup-v2.json: a full archive, and an incremental one
    /// after it (same salt and cost, so the same key) in which d/f is unchanged (held by the
    /// full archive) and d/new is new.
    fn v2_vector_inputs() -> Vec<(&'static str, crate::archive::header::Header, Vec<u8>)> {
        use crate::archive::header::{ChainIds, Header, MIN_CHUNK_SIZE};
        let (full_id, inc_id) = ([0x11; ID_LEN], [0x22; ID_LEN]);
        let base = Header {
            params: crate::archive::KdfParams {
                memory_kib: 16,
                iterations: 1,
                parallel: 1,
            },
            salt: std::array::from_fn(|i| 0x40 + i as u8),
            chunk_size: MIN_CHUNK_SIZE,
            nonce_prefix: std::array::from_fn(|i| 0xc0 + i as u8),
            chain: Some(ChainIds {
                id: full_id,
                parent: [0; ID_LEN],
                generation: 0,
            }),
        };
        let incremental = Header {
            nonce_prefix: std::array::from_fn(|i| 0xd0 + i as u8),
            chain: Some(ChainIds {
                id: inc_id,
                parent: full_id,
                generation: 1,
            }),
            ..base.clone()
        };
        let mut entries = sample_entries(&inc_id, false);
        if let Kind::File { holder, .. } = &mut entries[1].kind {
            *holder = full_id;
        }
        entries.push(file("d/new", 3, inc_id));
        let mut inc_plaintext = encode(b"full.ksb", &entries);
        inc_plaintext.extend_from_slice(b"new");
        inc_plaintext.push(ENTRY_END);
        vec![
            ("full", base, sample_plaintext_full(&full_id)),
            ("incremental after full.ksb", incremental, inc_plaintext),
        ]
    }

    #[test]
    fn test_vectors_v2_match_and_parse() {
        use crate::archive::stream::Reader;
        use std::io::Read;
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/backup-v2.json");
        let passphrase = "correct horse battery staple";
        let vectors = v2_vector_inputs()
            .into_iter()
            .map(|(name, header, plaintext)| vector_json(name, passphrase, &header, &plaintext))
            .collect();
        let committed = committed_vectors(
            &path,
            "keepsake backup archive, version 2 (docs/backup-format.md)",
            vectors,
        );
        for vector in committed["vectors"].as_array().unwrap() {
            let field = |name: &str| unhex(vector[name].as_str().unwrap());
            let (archive, plaintext) = (field("archive"), field("plaintext"));
            // The header is 128 bytes: its chain block is where the spec says.
            assert_eq!(archive[8], 2);
            assert_eq!(archive[64..80], field("id")[..]);
            assert_eq!(archive[80..96], field("parent")[..]);
            let pass = secret(vector["passphrase"].as_str().unwrap().as_bytes());
            let mut reader = Reader::new(&archive[..], &pass).unwrap();
            let mut released = Vec::new();
            reader.read_to_end(&mut released).unwrap();
            assert_eq!(released, plaintext);
            let own: [u8; ID_LEN] = field("id").try_into().unwrap();
            let full = vector["generation"] == 0;
            check_plaintext(&mut &plaintext[..], &own, full).unwrap();
        }
    }

    #[test]
    fn a_listing_round_trips() {
        let entries = vec![
            dir("d"),
            file("d/f", 10, OWN),
            Listed {
                path: b"d/g".to_vec(),
                meta: META,
                xattrs: vec![],
                kind: Kind::HardLink {
                    target: b"d/f".to_vec(),
                },
            },
            Listed {
                path: b"d/l".to_vec(),
                meta: META,
                xattrs: vec![(b"trusted.t".to_vec(), vec![])],
                kind: Kind::Symlink {
                    target: b"/etc".to_vec(),
                },
            },
            file("d/old", 5, [2; ID_LEN]),
        ];
        let bytes = encode(b"prev.ksb", &entries);
        let listing = read_listing(&mut &bytes[..], &OWN, false).unwrap();
        assert_eq!(listing.entries, entries);
        assert_eq!(listing.parent_name, b"prev.ksb");
        assert!(listing.entries[1].stored_in(&OWN) && !listing.entries[4].stored_in(&OWN));
    }

    #[test]
    fn bad_listings_are_refused_as_corrupt() {
        let mut bad_xattr = dir("d");
        bad_xattr.xattrs = vec![(b"security.selinux".to_vec(), b"x".to_vec())];
        let mut unsorted = dir("d");
        unsorted.xattrs = vec![(b"user.b".to_vec(), vec![]), (b"user.a".to_vec(), vec![])];
        let link = |target: &str| Listed {
            path: b"l".to_vec(),
            meta: META,
            xattrs: vec![],
            kind: Kind::HardLink {
                target: target.into(),
            },
        };
        let cases: Vec<(&str, Vec<u8>, bool)> = vec![
            ("a full archive naming a parent", encode(b"p", &[]), true),
            ("an incremental naming none", encode(b"", &[]), false),
            ("a kept namespace only", encode(b"", &[bad_xattr]), true),
            ("sorted attributes", encode(b"", &[unsorted]), true),
            ("a hard link to nothing", encode(b"", &[link("f")]), true),
            (
                "a hard link to a folder",
                encode(b"", &[dir("f"), link("f")]),
                true,
            ),
            (
                "a full archive's file held elsewhere",
                encode(b"", &[file("f", 3, [2; ID_LEN])]),
                true,
            ),
            (
                "a child before its folder",
                encode(b"", &[file("d/f", 1, OWN)]),
                true,
            ),
        ];
        for (what, bytes, full) in cases {
            let err = read_listing(&mut &bytes[..], &OWN, full).unwrap_err();
            assert!(exit_code(&err) == ExitCode::Corrupt, "{what}: {err}");
        }
        let mut slash = vec![3, 0];
        slash.extend_from_slice(b"a/b");
        slash.push(ENTRY_END);
        assert!(read_listing(&mut &slash[..], &OWN, false).is_err());
        assert!(preamble(b"../x").is_err());
        // A huge attribute count is refused before anything is allocated for it.
        let mut huge = preamble(b"").unwrap();
        huge.extend(entry_start(ENTRY_DIR, b"d", &META).unwrap());
        huge.extend_from_slice(&u16::MAX.to_le_bytes());
        assert!(read_listing(&mut &huge[..], &OWN, true).is_err());
    }

    #[test]
    fn the_end_marker_must_end_the_stream() {
        assert!(read_end(&mut &[0u8][..]).is_ok());
        for bad in [&[][..], &[1], &[0, 0]] {
            assert!(read_end(&mut &bad[..]).is_err(), "{bad:?}");
        }
    }
}
