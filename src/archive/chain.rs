//! Reading format-2 archives, alone or as a chain: an incremental archive lists the whole
//! tree but holds only what changed; the rest is in the archives before it, found beside
//! it by the file names each records and trusted only once their ids, salt and key match
//! and their chunks authenticate. One archive is open at a time: the newest one's listing
//! decides what is extracted, then each archive's data section fills the files it holds.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::extract::{Extractor, split_path};
use super::header::{ChainIds, Header, ID_LEN, KEY_LEN, id_hex};
use super::listing::{Kind, Listed, Listing, read_end, read_listing};
use super::stream::{KeylessReader, Reader};
use super::tree::{TreeStats, input_error, shown};
use super::{Error, Result};
use crate::context::{Context, at};

/// One archive of a chain that was read, for reports.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Member {
    /// Its file (`-` for standard input).
    pub file: String,
    /// Its archive id, in hex.
    pub id: String,
    /// 0 for a full archive.
    pub generation: u32,
}

/// What reading a chain found: the tree as of the newest archive, and the archives read.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ChainRead {
    pub contents: TreeStats,
    pub chain: Vec<Member>,
}

/// How the archives of a chain are opened: beside the newest one, with the one key the
/// whole chain shares.
pub(crate) struct Chain<'a> {
    /// The folder of the newest archive; `None` when it was read from standard input.
    pub dir: Option<PathBuf>,
    /// What the newest archive is called, for messages.
    pub shown: String,
    pub key: &'a Zeroizing<[u8; KEY_LEN]>,
    pub threads: usize,
    pub available_kib: Option<u64>,
}

/// What to read: everything (`paths` `None`), or the entries at and below `paths`; into
/// `dest` or (`None`) only authenticated and checked; and with `whole_chain`, every archive
/// back to the full one, needed or not (`backup verify`).
pub(crate) struct ReadRequest<'a> {
    pub dest: Option<&'a Path>,
    pub paths: Option<&'a [Vec<u8>]>,
    pub whole_chain: bool,
}

/// A format-2 archive opened and its listing read.
pub(crate) struct Opened<R: Read> {
    pub reader: Reader<R>,
    pub ids: ChainIds,
    pub listing: Listing,
}

/// Reads the preamble and listing of `reader`, a format-2 archive.
pub(crate) fn open_listing<R: Read>(mut reader: Reader<R>) -> Result<Opened<R>> {
    let ids = reader.header().chain.ok_or_else(|| {
        Error::Refused(
            "this is a format-1 archive: it has no listing and cannot start a chain".into(),
        )
    })?;
    let listing = read_listing(&mut reader, &ids.id, ids.is_full())?;
    Ok(Opened {
        reader,
        ids,
        listing,
    })
}

/// A file's content as a chain holds it: the archive that holds it, and the path it is
/// stored under there.
type ContentKey = ([u8; ID_LEN], Vec<u8>);

/// Where a content goes, and the layout the newest listing expects of it.
struct Wanted {
    size: u64,
    extents: Vec<(u64, u64)>,
    /// The extracted files that take it: each is finished (metadata, attributes) once it
    /// is written.
    to: Vec<Listed>,
}

/// Reads the newest archive `tip` of a chain and, through `chain`, the archives before it
/// that hold content it needs (or all of them, with `whole_chain`), and extracts the tree
/// as of `tip` (or the entries asked for) into `request.dest`. Nothing is extracted
/// outside `dest`; an error leaves a partial tree there, to be thrown away.
pub(crate) fn read_chain<R: Read>(
    tip: Opened<R>,
    chain: &Chain,
    request: &ReadRequest,
    progress: &mut dyn FnMut(u64),
) -> Result<ChainRead> {
    let tip_header = tip.reader.header().clone();
    let entries = select(&tip.listing.entries, request.paths)?;
    let mut stats = TreeStats::default();
    let mut extractor = request
        .dest
        .map(|dest| Extractor::new(dest, chain.threads))
        .transpose()?;
    let mut wanted: HashMap<ContentKey, Wanted> = HashMap::new();
    for selected in &entries {
        // A safe point: what was extracted is in a folder the caller removes.
        crate::interrupt::check()?;
        let entry = &selected.entry;
        if split_path(&entry.path).0.is_empty() {
            stats.entries.push(shown(&entry.path));
        }
        stats.xattrs += entry.xattrs.len() as u64;
        create(&mut extractor, selected, &mut wanted, &mut stats)?;
    }
    let mut bytes = 0u64;
    let mut counted = |n: u64| {
        bytes += n;
        progress(bytes)
    };
    let mut members = vec![Member {
        file: chain.shown.clone(),
        id: id_hex(&tip.ids.id),
        generation: tip.ids.generation,
    }];
    let (mut child, mut child_name, mut child_shown) = (
        tip.ids,
        tip.listing.parent_name.clone(),
        chain.shown.clone(),
    );
    fill(tip, &mut extractor, &mut wanted, &mut counted)?;
    while child.generation > 0 && (request.whole_chain || !wanted.is_empty()) {
        let (opened, file) = open_parent(chain, &tip_header, &child, &child_name, &child_shown)?;
        members.push(Member {
            file: file.clone(),
            id: id_hex(&opened.ids.id),
            generation: opened.ids.generation,
        });
        (child, child_name, child_shown) =
            (opened.ids, opened.listing.parent_name.clone(), file.clone());
        fill(opened, &mut extractor, &mut wanted, &mut counted)
            .map_err(|e| in_ancestor(e, &file))?;
    }
    if let Some(((holder, path), _)) = wanted.iter().next() {
        return Err(Error::BadEntry(format!(
            "{} says the archive {} holds the content of {}, and no archive of its chain does",
            chain.shown,
            id_hex(holder),
            shown(path)
        )));
    }
    if let Some(extractor) = extractor {
        stats.warnings.extend(extractor.finish()?);
    }
    Ok(ChainRead {
        contents: stats,
        chain: members,
    })
}

/// An entry to extract, and the path its content is stored under (its own, or for a
/// hard link extracted without its first name, that name's).
struct Selected {
    entry: Listed,
    content_path: Vec<u8>,
}

/// The entries to extract: all, or those at and below `paths` and the folders above
/// them. A hard link whose first name is not extracted becomes a copy of that file.
fn select(entries: &[Listed], paths: Option<&[Vec<u8>]>) -> Result<Vec<Selected>> {
    let whole = |e: &Listed| Selected {
        content_path: e.path.clone(),
        entry: e.clone(),
    };
    let Some(paths) = paths else {
        return Ok(entries.iter().map(whole).collect());
    };
    for path in paths {
        if !entries.iter().any(|e| &e.path == path) {
            return Err(Error::Missing(format!(
                "the archive holds no {}; nothing was changed",
                shown(path)
            )));
        }
    }
    let below = |path: &[u8], top: &[u8]| {
        path == top || (path.starts_with(top) && path.get(top.len()) == Some(&b'/'))
    };
    let included = |path: &[u8]| {
        paths
            .iter()
            .any(|p| below(path, p) || (below(p, path) && p.len() > path.len()))
    };
    let by_path: HashMap<&[u8], &Listed> = entries.iter().map(|e| (&e.path[..], e)).collect();
    let mut out = Vec::new();
    for entry in entries.iter().filter(|e| included(&e.path)) {
        let mut selected = whole(entry);
        if let Kind::HardLink { target } = &entry.kind
            && !included(target)
            && let Some(first) = by_path.get(&target[..])
        {
            // A copy of the first name: its content, stored under that name.
            selected.entry.kind = first.kind.clone();
            selected.entry.xattrs = first.xattrs.clone();
            selected.content_path = target.clone();
        }
        out.push(selected);
    }
    Ok(out)
}

/// Creates `entry` in the extraction (if any), and records where its content comes from.
fn create(
    extractor: &mut Option<Extractor>,
    selected: &Selected,
    wanted: &mut HashMap<ContentKey, Wanted>,
    stats: &mut TreeStats,
) -> Result<()> {
    let entry = &selected.entry;
    match &entry.kind {
        Kind::Dir => {
            stats.dirs += 1;
            if let Some(x) = extractor {
                x.directory_with(&entry.path, entry.meta, entry.xattrs.clone())?;
            }
        }
        Kind::Symlink { target } => {
            stats.symlinks += 1;
            if let Some(x) = extractor {
                x.symlink_with(&entry.path, target, &entry.meta, &entry.xattrs)?;
            }
        }
        Kind::HardLink { target } => {
            stats.hardlinks += 1;
            if let Some(x) = extractor {
                x.hardlink(&entry.path, target)?;
            }
        }
        Kind::File {
            size,
            extents,
            holder,
        } => {
            stats.files += 1;
            stats.bytes += entry.data_len();
            if let Some(x) = extractor {
                let file = x.file(&entry.path, *size, 0)?;
                if entry.data_len() == 0 {
                    // Complete already: finished now (on the finishing thread, if any).
                    x.finish_file_with(file, None, &entry.path, &entry.meta, entry.xattrs.clone())?;
                }
            }
            if entry.data_len() > 0 {
                let content = selected.content_path.clone();
                let slot = wanted.entry((*holder, content)).or_insert_with(|| Wanted {
                    size: *size,
                    extents: extents.clone(),
                    to: Vec::new(),
                });
                slot.to.push(entry.clone());
            }
        }
    }
    Ok(())
}

/// Reads the data section of `opened` to its end marker, writing the content that is
/// wanted from it into the extracted files and skipping the rest.
fn fill<R: Read>(
    mut opened: Opened<R>,
    extractor: &mut Option<Extractor>,
    wanted: &mut HashMap<ContentKey, Wanted>,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    let id = opened.ids.id;
    let input = &mut opened.reader;
    for entry in opened.listing.entries.iter().filter(|e| e.stored_in(&id)) {
        let Kind::File { size, extents, .. } = &entry.kind else {
            continue;
        };
        let key = (id, entry.path.clone());
        let targets = match wanted.remove(&key) {
            Some(w) if w.size != *size || &w.extents != extents => {
                return Err(Error::BadEntry(format!(
                    "the archives of the chain disagree on the layout of {}",
                    shown(&entry.path)
                )));
            }
            Some(w) => w.to,
            None => Vec::new(),
        };
        let files: Vec<(File, PathBuf)> = match extractor {
            Some(x) => targets
                .iter()
                .map(|t| Ok((x.reopen(&t.path)?, x.shown(&t.path))))
                .collect::<Result<_>>()?,
            None => Vec::new(),
        };
        for &(offset, length) in extents {
            let mut done = 0;
            while done < length {
                crate::interrupt::check()?;
                let ready = input.fill_buf().map_err(input_error)?;
                if ready.is_empty() {
                    return Err(Error::Truncated);
                }
                let n = ready
                    .len()
                    .min((length - done).min(usize::MAX as u64) as usize);
                for (file, shown_path) in &files {
                    file.write_all_at(&ready[..n], offset + done)
                        .context(at("writing", shown_path))?;
                }
                input.consume(n);
                done += n as u64;
                progress(n as u64);
            }
        }
        // All its content is written: its metadata and attributes now, on its descriptor.
        if let Some(x) = extractor {
            for ((file, _), target) in files.into_iter().zip(targets) {
                x.finish_file_with(file, None, &target.path, &target.meta, target.xattrs)?;
            }
        }
    }
    read_end(input)?;
    // Whatever the listing said this archive holds and nothing here matched is still
    // wanted: another archive must hold it, or the chain is inconsistent (checked last).
    Ok(())
}

/// The parent of the archive `child` (recorded as `name` beside the newest archive),
/// opened and checked to be that parent: its id and generation, and the salt and
/// key-derivation cost of the whole chain, so that the one key opens it.
fn open_parent(
    chain: &Chain,
    tip: &Header,
    child: &ChainIds,
    name: &[u8],
    child_shown: &str,
) -> Result<(Opened<File>, String)> {
    let Some(dir) = &chain.dir else {
        return Err(Error::BrokenChain(format!(
            "{} is an incremental archive read from standard input: its earlier archives cannot be found; give its file name",
            chain.shown
        )));
    };
    let path = dir.join(std::ffi::OsStr::from_bytes(name));
    let file = path.display().to_string();
    let input = match crate::safefs::open_regular(&path) {
        Ok(input) => input,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::BrokenChain(format!(
                "{file} is missing: {child_shown} was made after it (archive {}) and needs it beside it; nothing was changed",
                id_hex(&child.parent)
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
            return Err(Error::BrokenChain(format!(
                "{file} is not a regular file: {child_shown} was made after the archive {} of that name and needs it beside it; nothing was changed",
                id_hex(&child.parent)
            )));
        }
        Err(e) => return Err(e).context(at("opening", &path)).map_err(Error::from),
    };
    let keyless = KeylessReader::new(input, chain.available_kib)
        .map_err(|e| in_ancestor(e, &file))?
        .with_threads(chain.threads);
    let header = keyless.header();
    let matches = header
        .chain
        .is_some_and(|ids| ids.id == child.parent && ids.generation + 1 == child.generation)
        && header.salt == tip.salt
        && header.params == tip.params;
    if !matches {
        return Err(Error::BrokenChain(format!(
            "{file} is not the archive {child_shown} was made after (archive {}, generation {}); nothing was changed",
            id_hex(&child.parent),
            child.generation - 1
        )));
    }
    let reader = keyless
        .unlock_with_key(chain.key)
        .map_err(|e| match e {
            // The key opened the newest archive: a first chunk it does not open was changed.
            Error::WrongKey => Error::Tampered { chunk: 0 },
            e => e,
        })
        .map_err(|e| in_ancestor(e, &file))?;
    let opened = open_listing(reader).map_err(|e| in_ancestor(e, &file))?;
    Ok((opened, file))
}

/// An error found in an earlier archive of the chain, naming it (same meaning).
fn in_ancestor(e: Error, file: &str) -> Error {
    match e {
        Error::Tampered { chunk } => Error::BadEntry(format!(
            "the earlier archive {file} was changed or truncated at chunk {chunk}"
        )),
        Error::Truncated => Error::BadEntry(format!(
            "the earlier archive {file}'s contents end in the middle of an entry"
        )),
        e @ (Error::BrokenChain(_) | Error::Interrupted { .. }) => e,
        e => e.with_note(&format!("in the earlier archive {file}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::backup::{Kind as BackupKind, Parent, back_up};
    use crate::archive::testing::*;
    use crate::archive::tree::Step;
    use crate::safefs::acl_giving;
    use crate::safefs::treewalk::testing::{snapshot, with_descriptor_limit};
    use crate::safefs::xattr::{ACL_ACCESS, ACL_DEFAULT, On};
    use nix::fcntl::AT_FDCWD;
    use nix::sys::stat::{UtimensatFlags, utimensat};
    use nix::sys::time::TimeSpec;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    const PASS: &[u8] = b"chain passphrase";

    fn xattrs_of(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
        let fd = File::open(path).unwrap();
        On::Fd(&fd).read().unwrap().0
    }

    fn set(path: &Path, name: &[u8], value: &[u8]) -> bool {
        let fd = File::open(path).unwrap();
        On::Fd(&fd).set(name, value).is_ok()
    }

    /// A tree with attributes, ACLs (where the file system has them) and hard links.
    fn source(root: &Path) -> bool {
        let p = root.join("Persistent");
        std::fs::create_dir_all(p.join("docs")).unwrap();
        std::fs::write(p.join("docs/a.txt"), b"first").unwrap();
        std::fs::write(p.join("docs/b.txt"), b"second").unwrap();
        std::fs::hard_link(p.join("docs/b.txt"), p.join("b-again.txt")).unwrap();
        std::os::unix::fs::symlink("docs/a.txt", p.join("link")).unwrap();
        let acl = acl_giving(1000, 5);
        set(&p.join("docs/a.txt"), b"user.origin", b"kept")
            && set(&p.join("docs"), ACL_ACCESS, &acl)
            && set(&p.join("docs"), ACL_DEFAULT, &acl)
    }

    fn write(root: &Path, to: &Path, parent: Option<&Path>) -> TreeStats {
        write_stepping(root, to, parent, 1, &mut |_| {})
    }

    /// [`write`] on `threads`, the backup's progress given to `step`.
    fn write_stepping(
        root: &Path,
        to: &Path,
        parent: Option<&Path>,
        threads: usize,
        step: &mut dyn FnMut(Step),
    ) -> TreeStats {
        try_write(root, to, parent, threads, step).unwrap()
    }

    /// [`write_stepping`], its failure returned.
    fn try_write(
        root: &Path,
        to: &Path,
        parent: Option<&Path>,
        threads: usize,
        step: &mut dyn FnMut(Step),
    ) -> Result<TreeStats> {
        let pass = secret(PASS);
        let parent = parent.map(|prev| {
            let keyless = KeylessReader::new(File::open(prev).unwrap(), None).unwrap();
            Parent::open(keyless, prev.file_name().unwrap(), &pass).unwrap()
        });
        let sink = File::create(to).unwrap();
        let tops = ["Persistent".to_string()];
        let kind = match &parent {
            Some(parent) => BackupKind::After(parent),
            None => BackupKind::Full(CHEAP_KDF),
        };
        back_up(root, &tops, sink, &pass, kind, threads, step).map(|(stats, _, _)| stats)
    }

    fn read_at(
        archive: &Path,
        dest: Option<&Path>,
        paths: Option<&[Vec<u8>]>,
    ) -> Result<ChainRead> {
        let keyless = KeylessReader::new(File::open(archive).unwrap(), None)?;
        let key = keyless.derive(&secret(PASS))?;
        let opened = open_listing(keyless.unlock_with_key(&key)?)?;
        let chain = Chain {
            dir: archive.parent().map(Path::to_path_buf),
            shown: archive.display().to_string(),
            key: &key,
            // Files are finished on a thread of their own, as on any machine with two CPUs.
            threads: 2,
            available_kib: None,
        };
        let request = ReadRequest {
            dest,
            paths,
            whole_chain: dest.is_none(),
        };
        read_chain(opened, &chain, &request, &mut |_| {})
    }

    fn fresh(tmp: &Path, name: &str) -> PathBuf {
        let dest = tmp.join(name);
        std::fs::create_dir(&dest).unwrap();
        dest
    }

    #[test]
    fn a_hard_link_left_alone_when_its_first_name_goes_is_stored_again() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, store) = (tmp.path().join("src"), tmp.path().join("store"));
        std::fs::create_dir_all(&store).unwrap();
        source(&src);
        write(&src, &store.join("full.ksb"), None);
        // b-again.txt, listed first, holds the content; docs/b.txt is its hard link. With
        // b-again.txt gone, docs/b.txt is a file of its own, its size and time unchanged:
        // the full archive holds its content, but under the other name.
        std::fs::remove_file(src.join("Persistent/b-again.txt")).unwrap();
        let inc = write(&src, &store.join("inc.ksb"), Some(&store.join("full.ksb")));
        assert_eq!((inc.files, inc.referenced), (1, 1), "{inc:?}");
        let second = write(&src, &store.join("inc2.ksb"), Some(&store.join("inc.ksb")));
        assert_eq!((second.files, second.referenced), (0, 2), "{second:?}");
        for tip in ["inc.ksb", "inc2.ksb"] {
            read_at(&store.join(tip), None, None).unwrap();
            let dest = fresh(tmp.path(), &format!("dest-{tip}"));
            read_at(&store.join(tip), Some(&dest), None).unwrap();
            assert_eq!(snapshot(&src), snapshot(&dest), "{tip}");
        }
    }

    #[test]
    fn a_file_the_live_user_put_in_place_of_roots_is_stored_again() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, store) = (tmp.path().join("src"), tmp.path().join("store"));
        std::fs::create_dir_all(&store).unwrap();
        source(&src);
        let root_only = src.join("Persistent/docs/root-only");
        std::fs::write(&root_only, b"ROOT'S SECRET").unwrap();
        std::fs::set_permissions(&root_only, PermissionsExt::from_mode(0o600)).unwrap();
        write(&src, &store.join("full.ksb"), None);
        // The live user's own file, of the same size and time, renamed over root's: all
        // a folder the live user can write allows.
        let mine = src.join("Persistent/docs/mine");
        std::fs::write(&mine, b"the user's 13").unwrap();
        std::os::unix::fs::lchown(&mine, Some(1000), Some(1000)).unwrap();
        std::fs::set_permissions(&mine, PermissionsExt::from_mode(0o644)).unwrap();
        let was = std::fs::metadata(&root_only).unwrap();
        set_mtime(&mine, TimeSpec::new(was.mtime(), was.mtime_nsec()));
        std::fs::rename(&mine, &root_only).unwrap();
        stored_again(
            tmp.path(),
            &src,
            "Persistent/docs/root-only",
            b"the user's 13",
        );
    }

    /// The incremental after `full.ksb` in `src`'s `store`: it stores `want`, the content
    /// now at `rel`, again, and restores the source as it is.
    fn stored_again(tmp: &Path, src: &Path, rel: &str, want: &[u8]) {
        let store = tmp.join("store");
        let inc = write(src, &store.join("inc.ksb"), Some(&store.join("full.ksb")));
        assert_eq!((inc.files, inc.bytes), (1, want.len() as u64), "{inc:?}");
        let dest = fresh(tmp, "dest");
        read_at(&store.join("inc.ksb"), Some(&dest), None).unwrap();
        assert_eq!(snapshot(src), snapshot(&dest));
        assert_eq!(std::fs::read(dest.join(rel)).unwrap(), want);
    }

    fn set_mtime(path: &Path, time: TimeSpec) {
        utimensat(
            AT_FDCWD,
            path,
            &time,
            &time,
            UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    }

    #[test]
    fn a_fifo_put_in_place_of_the_earlier_archive_is_refused_at_once() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, store) = (tmp.path().join("src"), tmp.path().join("store"));
        std::fs::create_dir_all(&store).unwrap();
        source(&src);
        write(&src, &store.join("full.ksb"), None);
        std::fs::write(src.join("Persistent/new.txt"), b"new").unwrap();
        write(&src, &store.join("inc.ksb"), Some(&store.join("full.ksb")));
        // Where the live user can write the folder: its fifo, which nobody ever opens to
        // write, would hold the restore (and keepsake's lock) for good.
        std::fs::remove_file(store.join("full.ksb")).unwrap();
        nix::unistd::mkfifo(&store.join("full.ksb"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let (done, outcome) = std::sync::mpsc::channel();
        let inc = store.join("inc.ksb");
        let dest = fresh(tmp.path(), "dest");
        std::thread::spawn(move || {
            let read = read_at(&inc, Some(&dest), None).map(|_| ());
            done.send(read.map_err(|e| e.to_string())).unwrap();
        });
        let outcome = outcome
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("the restore is still waiting on the fifo after 20 s");
        let message = outcome.unwrap_err();
        assert!(message.contains("not a regular file"), "{message}");
    }

    #[test]
    fn roots_private_file_swapped_for_its_public_twin_is_stored_again() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, store) = (tmp.path().join("src"), tmp.path().join("store"));
        std::fs::create_dir_all(&store).unwrap();
        source(&src);
        // Two of root's files in the live user's folder, of one size and time (as tar
        // leaves them): one private, one anyone may read.
        let docs = src.join("Persistent/docs");
        let (private, public) = (docs.join("private"), docs.join("public"));
        std::fs::write(&private, b"ROOT'S SECRET").unwrap();
        std::fs::write(&public, b"for everyone.").unwrap();
        std::fs::set_permissions(&private, PermissionsExt::from_mode(0o600)).unwrap();
        std::fs::set_permissions(&public, PermissionsExt::from_mode(0o644)).unwrap();
        for file in [&private, &public] {
            set_mtime(file, TimeSpec::new(1_600_000_000, 0));
        }
        write(&src, &store.join("full.ksb"), None);
        // The live user may rename root's files in its own folder.
        std::fs::rename(&public, &private).unwrap();
        stored_again(
            tmp.path(),
            &src,
            "Persistent/docs/private",
            b"for everyone.",
        );
    }

    #[test]
    fn a_chain_restores_changed_and_unchanged_files_links_and_attributes() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, store) = (tmp.path().join("src"), tmp.path().join("store"));
        std::fs::create_dir_all(&store).unwrap();
        let has_xattrs = source(&src);
        let full = write(&src, &store.join("full.ksb"), None);
        assert_eq!((full.files, full.hardlinks, full.referenced), (2, 1, 0));
        // A change, a new file, and one left as it was.
        std::fs::write(src.join("Persistent/docs/b.txt"), b"second, changed").unwrap();
        std::fs::write(src.join("Persistent/new.txt"), b"new").unwrap();
        let inc = write(&src, &store.join("inc.ksb"), Some(&store.join("full.ksb")));
        assert_eq!((inc.files, inc.referenced), (2, 1), "{inc:?}");
        // Only the changed bytes are stored again.
        assert_eq!(inc.bytes, 15 + 3);
        let second = write(&src, &store.join("inc2.ksb"), Some(&store.join("inc.ksb")));
        assert_eq!((second.files, second.referenced), (0, 3));

        for tip in ["inc.ksb", "inc2.ksb"] {
            let dest = fresh(tmp.path(), &format!("dest-{tip}"));
            let restored = read_at(&store.join(tip), Some(&dest), None).unwrap();
            assert_eq!(snapshot(&src), snapshot(&dest), "{tip}");
            let (b, again) = (
                std::fs::metadata(dest.join("Persistent/docs/b.txt")).unwrap(),
                std::fs::metadata(dest.join("Persistent/b-again.txt")).unwrap(),
            );
            assert_eq!(b.ino(), again.ino(), "a hard link, not a copy");
            if has_xattrs {
                for path in ["Persistent/docs/a.txt", "Persistent/docs"] {
                    assert_eq!(
                        xattrs_of(&src.join(path)),
                        xattrs_of(&dest.join(path)),
                        "{path}"
                    );
                }
                assert!(
                    restored.contents.warnings.is_empty(),
                    "{:?}",
                    restored.contents.warnings
                );
            }
            // Verifying reads every archive back to the full one.
            let verified = read_at(&store.join(tip), None, None).unwrap();
            let generations: Vec<u32> = verified.chain.iter().map(|m| m.generation).collect();
            assert_eq!(generations.first(), Some(&(generations.len() as u32 - 1)));
        }
    }

    /// The steps a backup of `src` into `to` (on two threads, the look-ahead's) gives its
    /// progress line, checked to be the listing's, counting up from none to every entry
    /// listed, then the data's, counting up to their total; with what it wrote and that
    /// total.
    fn steps_of(src: &Path, to: &Path, parent: Option<&Path>) -> (TreeStats, u64) {
        let mut steps = Vec::new();
        let stats = write_stepping(src, to, parent, 2, &mut |step| steps.push(step));
        let data_from = steps
            .iter()
            .position(|step| matches!(step, Step::Data { .. }))
            .expect("data steps");
        let (listing, data) = steps.split_at(data_from);
        let entries: Vec<u64> = listing
            .iter()
            .map(|step| match step {
                Step::Listing { entries } => *entries,
                Step::Data { .. } => unreachable!(),
            })
            .collect();
        let listed = stats.dirs + stats.files + stats.referenced + stats.symlinks + stats.hardlinks;
        assert_eq!(entries.first(), Some(&0), "{entries:?}");
        assert_eq!(entries.last(), Some(&listed), "{entries:?}");
        assert!(entries.is_sorted(), "{entries:?}");
        let Some(Step::Data {
            total: Some(total), ..
        }) = data.first()
        else {
            panic!("no total: {data:?}");
        };
        let written: Vec<u64> = data
            .iter()
            .map(|step| match step {
                Step::Data { written, total: t } if t == &Some(*total) => *written,
                other => panic!("{other:?} among the data's steps, of {total}"),
            })
            .collect();
        assert_eq!(written.first(), Some(&0));
        assert_eq!(written.last(), Some(total), "{written:?}");
        assert!(written.is_sorted(), "{written:?}");
        (stats, *total)
    }

    #[test]
    fn the_progress_counts_the_listing_then_the_data_this_archive_stores() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, store) = (tmp.path().join("src"), tmp.path().join("store"));
        std::fs::create_dir_all(&store).unwrap();
        source(&src);
        // More entries than a listing step, and more data than a chunk.
        let many = src.join("Persistent/many");
        std::fs::create_dir(&many).unwrap();
        for i in 0..600 {
            std::fs::write(many.join(format!("f{i}")), vec![i as u8; 1000]).unwrap();
        }
        let (full, total) = steps_of(&src, &store.join("full.ksb"), None);
        assert_eq!((full.files, total), (602, 600 * 1000 + 5 + 6));
        assert_eq!(full.bytes, total);
        // An incremental archive stores the changed files alone: its total is theirs, not
        // the tree's, so the line reaches its end.
        std::fs::write(many.join("f7"), vec![1; 3000]).unwrap();
        std::fs::write(src.join("Persistent/docs/a.txt"), b"changed").unwrap();
        let (inc, total) = steps_of(&src, &store.join("inc.ksb"), Some(&store.join("full.ksb")));
        assert_eq!((inc.files, inc.referenced, total), (2, 600, 3000 + 7));
        assert_eq!(inc.bytes, total);
    }

    #[test]
    fn a_stop_signal_stops_a_backup_in_its_listing_or_its_data_and_no_reader_takes_what_it_left() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        source(&src);
        let many = src.join("Persistent/many");
        std::fs::create_dir(&many).unwrap();
        for i in 0..600 {
            std::fs::write(many.join(format!("f{i}")), vec![i as u8; 1000]).unwrap();
        }
        std::fs::write(src.join("Persistent/big"), vec![7u8; 4 << 20]).unwrap();
        // The signal arrives at a listing step past the first (256 entries listed), or once
        // the first piece of data is written.
        for (at_data, signal, code) in [
            (false, libc::SIGINT, ExitCode::Interrupt),
            (true, libc::SIGTERM, ExitCode::Terminated),
        ] {
            let archive = tmp.path().join(format!("stopped-{at_data}.ksb"));
            let mut last = None;
            let err = try_write(&src, &archive, None, 2, &mut |step| {
                last = Some(step);
                let now = match step {
                    Step::Listing { entries } => !at_data && entries > 0,
                    Step::Data { written, .. } => at_data && written > 0,
                };
                if now {
                    crate::interrupt::pretend_received(signal);
                }
            })
            .unwrap_err();
            crate::interrupt::pretend_received(0);
            assert!(exit_code(&err) == code, "{err}");
            assert_eq!(
                err.to_string(),
                format!("interrupted by {}", crate::interrupt::signal_name(signal))
            );
            match last {
                Some(Step::Listing { entries }) => assert!(!at_data && entries < 607, "{entries}"),
                Some(Step::Data { written, total }) => {
                    assert!(at_data && Some(written) < total, "{written} of {total:?}")
                }
                None => panic!("no step"),
            }
            // What it wrote lacks its last chunk: neither a restore nor a verify takes it.
            let dest = fresh(tmp.path(), &format!("dest-{at_data}"));
            assert!(read_at(&archive, Some(&dest), None).is_err());
            assert!(read_at(&archive, None, None).is_err());
        }
        // Nothing the stopped backups held stands in the way of the next.
        let done = write(&src, &tmp.path().join("full.ksb"), None);
        assert_eq!(done.files, 2 + 600 + 1);
    }

    #[test]
    fn more_files_than_descriptors_to_spare_are_held_then_reopened_and_restore() {
        // 300 descriptors: the writer holds files open from the listing to the data pass
        // while 256 stay free, so of these 400 files the first 44 are held and the rest
        // reopened, in one archive (held all, they would run the listing out of them).
        with_descriptor_limit(
            "archive::chain::tests::more_files_than_descriptors_to_spare_are_held_then_reopened_and_restore",
            300,
            || {
                let tmp = tempfile::tempdir().unwrap();
                let src = tmp.path().join("src");
                for d in ["a", "b"] {
                    let dir = src.join("Persistent").join(d);
                    std::fs::create_dir_all(&dir).unwrap();
                    for i in 0..200u32 {
                        let content = format!("{d}{i}").repeat(i as usize + 1);
                        std::fs::write(dir.join(format!("f{i}")), content).unwrap();
                    }
                }
                // The progress of files held and reopened alike reaches its total.
                let (written, total) = steps_of(&src, &tmp.path().join("full.ksb"), None);
                assert_eq!((written.files, written.warnings.len()), (400, 0));
                assert_eq!(written.bytes, total);
                let dest = fresh(tmp.path(), "dest");
                read_at(&tmp.path().join("full.ksb"), Some(&dest), None).unwrap();
                assert_eq!(snapshot(&src), snapshot(&dest));
            },
        );
    }

    #[test]
    fn one_path_is_restored_alone_and_a_lone_hard_link_becomes_a_copy() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, store) = (tmp.path().join("src"), tmp.path().join("store"));
        std::fs::create_dir_all(&store).unwrap();
        source(&src);
        write(&src, &store.join("full.ksb"), None);
        std::fs::write(src.join("Persistent/docs/a.txt"), b"first, changed").unwrap();
        write(&src, &store.join("inc.ksb"), Some(&store.join("full.ksb")));
        let dest = fresh(tmp.path(), "dest");
        let paths = [
            b"Persistent/b-again.txt".to_vec(),
            b"Persistent/docs/a.txt".to_vec(),
        ];
        read_at(&store.join("inc.ksb"), Some(&dest), Some(&paths)).unwrap();
        let got: Vec<String> = snapshot(&dest).into_keys().collect();
        assert_eq!(
            got,
            [
                "Persistent",
                "Persistent/b-again.txt",
                "Persistent/docs",
                "Persistent/docs/a.txt"
            ]
        );
        assert_eq!(
            std::fs::read(dest.join("Persistent/b-again.txt")).unwrap(),
            b"second"
        );
        assert_eq!(
            std::fs::read(dest.join("Persistent/docs/a.txt")).unwrap(),
            b"first, changed"
        );
        let missing = [b"Persistent/nothing".to_vec()];
        let err = read_at(&store.join("inc.ksb"), None, Some(&missing)).unwrap_err();
        assert!(exit_code(&err) == ExitCode::NotFound, "{err}");
    }

    #[test]
    fn a_missing_changed_or_foreign_ancestor_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, store) = (tmp.path().join("src"), tmp.path().join("store"));
        std::fs::create_dir_all(&store).unwrap();
        source(&src);
        let full = store.join("full.ksb");
        write(&src, &full, None);
        std::fs::write(src.join("Persistent/new.txt"), b"new").unwrap();
        let inc = store.join("inc.ksb");
        write(&src, &inc, Some(&full));
        assert!(read_at(&inc, None, None).is_ok());

        // Missing: its own exit status, and nothing extracted needs removing but what
        // the caller's staging folder holds.
        std::fs::rename(&full, store.join("away.ksb")).unwrap();
        let err = read_at(&inc, None, None).unwrap_err();
        assert!(exit_code(&err) == ExitCode::BrokenChain, "{err}");
        assert!(err.to_string().contains("full.ksb is missing"), "{err}");

        // Another full archive under its name: its id differs.
        write(&src, &full, None);
        let err = read_at(&inc, None, None).unwrap_err();
        assert!(exit_code(&err) == ExitCode::BrokenChain, "{err}");
        assert!(err.to_string().contains("is not the archive"), "{err}");

        // The real one, with one byte changed in its last chunk: corrupt.
        std::fs::rename(store.join("away.ksb"), &full).unwrap();
        let mut bytes = std::fs::read(&full).unwrap();
        let at = bytes.len() - 20;
        bytes[at] ^= 1;
        std::fs::write(&full, &bytes).unwrap();
        let err = read_at(&inc, None, None).unwrap_err();
        assert!(exit_code(&err) == ExitCode::Corrupt, "{err}");
        assert!(err.to_string().contains("full.ksb was changed"), "{err}");
    }

    #[test]
    fn an_archive_of_the_same_chain_is_not_taken_for_the_parent() {
        // Two incrementals after the same full archive share its salt and key: only the
        // id (and generation) in the header tells one from the other.
        let tmp = tempfile::tempdir().unwrap();
        let (src, store) = (tmp.path().join("src"), tmp.path().join("store"));
        std::fs::create_dir_all(&store).unwrap();
        source(&src);
        write(&src, &store.join("full.ksb"), None);
        std::fs::write(src.join("Persistent/a.txt"), b"a").unwrap();
        write(&src, &store.join("a.ksb"), Some(&store.join("full.ksb")));
        std::fs::write(src.join("Persistent/b.txt"), b"b").unwrap();
        write(&src, &store.join("b.ksb"), Some(&store.join("full.ksb")));
        std::fs::write(src.join("Persistent/c.txt"), b"c").unwrap();
        let tip = store.join("c.ksb");
        write(&src, &tip, Some(&store.join("a.ksb")));
        assert!(read_at(&tip, None, None).is_ok());
        std::fs::rename(store.join("b.ksb"), store.join("a.ksb")).unwrap();
        let err = read_at(&tip, None, None).unwrap_err();
        assert!(exit_code(&err) == ExitCode::BrokenChain, "{err}");
        assert!(err.to_string().contains("is not the archive"), "{err}");
    }

    #[test]
    fn attributes_the_file_system_refuses_are_reported_not_dropped() {
        use crate::archive::header::{ChainIds, MIN_CHUNK_SIZE};
        use crate::archive::listing::{Listed, preamble};
        use crate::archive::stream::Writer;
        use std::io::Write;
        // An ACL the kernel refuses as malformed, and user.* on a symlink (Linux refuses
        // it): each is said, and the rest is restored.
        let own = [5; ID_LEN];
        let header = Header {
            chain: Some(ChainIds {
                id: own,
                parent: [0; ID_LEN],
                generation: 0,
            }),
            ..test_header(CHEAP_KDF, MIN_CHUNK_SIZE)
        };
        let dir = Listed {
            path: b"d".to_vec(),
            meta: META,
            xattrs: vec![(ACL_ACCESS.to_vec(), b"\x02\0\0\0not an acl".to_vec())],
            kind: Kind::Dir,
        };
        let link = Listed {
            path: b"d/l".to_vec(),
            meta: META,
            xattrs: vec![(b"user.x".to_vec(), b"y".to_vec())],
            kind: Kind::Symlink {
                target: b"f".to_vec(),
            },
        };
        // A file's, set on the finishing thread when there is one.
        let file = Listed {
            path: b"d/f".to_vec(),
            meta: META,
            xattrs: vec![(ACL_ACCESS.to_vec(), b"\x02\0\0\0bad".to_vec())],
            kind: Kind::File {
                size: 3,
                extents: vec![(0, 3)],
                holder: own,
            },
        };
        let mut plaintext = preamble(b"").unwrap();
        for listed in [&dir, &file, &link] {
            plaintext.extend(listed.encode().unwrap());
        }
        plaintext.push(0);
        plaintext.extend_from_slice(b"abc");
        plaintext.push(0);
        let key = Zeroizing::new([3u8; KEY_LEN]);
        let mut writer = Writer::with_key(Vec::new(), &header, &key).unwrap();
        writer.write_all(&plaintext).unwrap();
        let archive = writer.finish().unwrap();
        let body = &archive[header.bytes().len()..];
        for threads in [1, 2] {
            let reader = Reader::with_key(body, &header, &key).unwrap();
            let chain = Chain {
                dir: None,
                shown: "crafted".into(),
                key: &key,
                threads,
                available_kib: None,
            };
            let tmp = tempfile::tempdir().unwrap();
            let request = ReadRequest {
                dest: Some(tmp.path()),
                paths: None,
                whole_chain: false,
            };
            let read =
                read_chain(open_listing(reader).unwrap(), &chain, &request, &mut |_| {}).unwrap();
            check_refusals(&read, tmp.path());
        }
    }

    fn check_refusals(read: &ChainRead, dest: &Path) {
        let warnings = read.contents.warnings.join("\n");
        assert_eq!(read.contents.warnings.len(), 3, "{warnings}");
        assert!(
            warnings.contains("d/f: the extended attribute"),
            "{warnings}"
        );
        assert_eq!(std::fs::read(dest.join("d/f")).unwrap(), b"abc");
        assert!(
            warnings.contains("system.posix_acl_access could not be restored"),
            "{warnings}"
        );
        assert!(
            warnings.contains("user.x could not be restored"),
            "{warnings}"
        );
        assert!(dest.join("d").is_dir() && dest.join("d/l").is_symlink());
    }

    #[test]
    fn an_incremental_that_disagrees_with_its_holder_on_a_layout_is_refused() {
        use crate::archive::header::ChainIds;
        use crate::archive::listing::preamble;
        use crate::archive::stream::Writer;
        use std::io::Write;
        let tmp = tempfile::tempdir().unwrap();
        let (src, store) = (tmp.path().join("src"), tmp.path().join("store"));
        std::fs::create_dir_all(&store).unwrap();
        source(&src);
        let full = store.join("full.ksb");
        write(&src, &full, None);
        let keyless = KeylessReader::new(File::open(&full).unwrap(), None).unwrap();
        let key = keyless.derive(&secret(PASS)).unwrap();
        let parent = keyless.header().clone();
        let full_id = parent.chain.unwrap().id;
        // Made with the chain's key (by whoever knows the passphrase), claiming the full
        // archive holds a.txt as 999 bytes where it holds 5.
        let header = Header {
            nonce_prefix: [0x31; 7],
            chain: Some(ChainIds {
                id: [0x32; ID_LEN],
                parent: full_id,
                generation: 1,
            }),
            ..parent
        };
        let entry = |path: &str, kind: Kind| Listed {
            path: path.into(),
            meta: META,
            xattrs: vec![],
            kind,
        };
        let mut plaintext = preamble(b"full.ksb").unwrap();
        for listed in [
            entry("Persistent", Kind::Dir),
            entry("Persistent/docs", Kind::Dir),
            entry(
                "Persistent/docs/a.txt",
                Kind::File {
                    size: 999,
                    extents: vec![(0, 999)],
                    holder: full_id,
                },
            ),
        ] {
            plaintext.extend(listed.encode().unwrap());
        }
        plaintext.extend([0, 0]);
        let forged = store.join("forged.ksb");
        let mut writer = Writer::with_key(File::create(&forged).unwrap(), &header, &key).unwrap();
        writer.write_all(&plaintext).unwrap();
        writer.finish().unwrap();
        let err = read_at(&forged, None, None).unwrap_err();
        assert!(exit_code(&err) == ExitCode::Corrupt, "{err}");
        assert!(err.to_string().contains("disagree on the layout"), "{err}");
    }

    #[test]
    fn an_incremental_read_from_standard_input_cannot_find_its_chain() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, store) = (tmp.path().join("src"), tmp.path().join("store"));
        std::fs::create_dir_all(&store).unwrap();
        source(&src);
        write(&src, &store.join("full.ksb"), None);
        write(&src, &store.join("inc.ksb"), Some(&store.join("full.ksb")));
        let keyless = KeylessReader::new(File::open(store.join("inc.ksb")).unwrap(), None).unwrap();
        let key = keyless.derive(&secret(PASS)).unwrap();
        let opened = open_listing(keyless.unlock_with_key(&key).unwrap()).unwrap();
        let chain = Chain {
            dir: None,
            shown: "-".into(),
            key: &key,
            threads: 1,
            available_kib: None,
        };
        let request = ReadRequest {
            dest: None,
            paths: None,
            whole_chain: true,
        };
        let err = read_chain(opened, &chain, &request, &mut |_| {}).unwrap_err();
        assert!(exit_code(&err) == ExitCode::BrokenChain, "{err}");
    }
}
