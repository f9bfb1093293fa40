//! `keepsake backup`, `keepsake backup verify`, `keepsake backup list` and `keepsake
//! restore`: the volume's folders in an encrypted, authenticated archive, full or
//! incremental (see [`crate::archive`] and docs/backup-format.md).

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use zeroize::Zeroizing;

use crate::archive::{self, KdfParams, TreeStats, restore};
use crate::cli::{
    ArchiveStreamArgs, BackupArgs, BackupCommand, GlobalArgs, RestoreArgs, VerifyArgs,
};
use crate::context::{Context, at};
use crate::error::{Error, Result};
use crate::output::{Output, Progress};
use crate::persistence::config::Dialect;
use crate::persistence::features::Feature;
use crate::persistence::files;
use crate::persistence::layout::{CONFIG_FILE, CUSTOM_FEATURES_FILE, KEEPSAKE_CONFIG_FILE};
use crate::safefs;
use crate::session::unlocked::{self, Unlocked};

/// Top-level files restored beside the features (the current ones are kept aside).
const CONFIG_FILES: &[&str] = &[CONFIG_FILE, CUSTOM_FEATURES_FILE, KEEPSAKE_CONFIG_FILE];

/// `keepsake backup FILE`, as plain values.
struct BackupConfig {
    /// A new file, or `-` for standard output.
    file: PathBuf,
    /// Feature names; none for the whole volume.
    features: Vec<String>,
    kdf: KdfParams,
    /// The archive an incremental one is made after.
    since: Option<PathBuf>,
    threads: usize,
}

impl BackupConfig {
    fn from(args: &BackupArgs, file: PathBuf) -> BackupConfig {
        BackupConfig {
            file,
            since: args.since.clone(),
            features: args.features.clone(),
            kdf: KdfParams {
                memory_kib: args.kdf.archive_kdf_memory,
                iterations: args.kdf.archive_kdf_iterations,
                parallel: 1,
            },
            threads: args.stream.threads(),
        }
    }
}

/// An archive to read (`keepsake backup verify`, `keepsake restore`), as plain values.
struct ArchiveSource {
    /// A file, or `-` for standard input.
    file: PathBuf,
    threads: usize,
}

impl ArchiveSource {
    fn from(file: &Path, stream: &ArchiveStreamArgs) -> ArchiveSource {
        ArchiveSource {
            file: file.to_path_buf(),
            threads: stream.threads(),
        }
    }
}

/// `keepsake restore FILE`, as plain values.
struct RestoreConfig {
    archive: ArchiveSource,
    /// Feature names; none for everything in the archive.
    features: Vec<String>,
    dry_run: bool,
    overwrite: bool,
    /// Paths below the volume's root to restore alone.
    paths: Vec<String>,
}

impl From<&RestoreArgs> for RestoreConfig {
    fn from(args: &RestoreArgs) -> RestoreConfig {
        RestoreConfig {
            archive: ArchiveSource::from(&args.file, &args.stream),
            paths: args.paths.clone(),
            features: args.features.clone(),
            dry_run: args.dry_run,
            overwrite: args.overwrite,
        }
    }
}

#[derive(Debug, Serialize)]
struct BackupReport {
    archive: String,
    archive_bytes: u64,
    seconds: f64,
    /// The archive's id, and for an incremental one its generation and the archive it is
    /// made after.
    id: String,
    generation: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    since: Option<String>,
    contents: TreeStats,
}

#[derive(Debug, Serialize)]
struct RestoreReport {
    archive: String,
    dry_run: bool,
    restored: Vec<String>,
    replaced: Vec<String>,
    config_replaced: bool,
    /// Lines of the restored persistence.conf left out: each would let the live user turn
    /// a feature against the system (a source nested in another's, or one the live user
    /// can change bound over a system path).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    config_dropped: Vec<String>,
    contents: TreeStats,
    /// The archives read, newest first (format 2).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    chain: Vec<archive::Member>,
}

/// The unlocked volume's mount root (root only).
fn volume_root(global: &GlobalArgs) -> Result<(Unlocked, PathBuf)> {
    super::require_root()?;
    super::unlocked_volume(global)
}

/// The volume folders that hold the named features: a built-in feature's sources, or a
/// custom feature's folder (its name). The first path component, so that nested sources
/// (apt/cache) travel with their parent.
fn feature_folders(
    volume: &safefs::Dir,
    dialect: Dialect,
    names: &[String],
) -> Result<Vec<String>> {
    let config = files::read_config(volume, dialect)?.unwrap_or_default();
    let custom = files::read_custom(volume, dialect)?;
    let mut folders: Vec<String> = Vec::new();
    for name in names {
        let sources: Vec<PathBuf> = match Feature::by_name(name) {
            Some(f) => f.bindings.iter().map(|b| PathBuf::from(b.source)).collect(),
            None => {
                let source = Path::new(name);
                if config.find_source(source).is_none() && custom.find_source(source).is_none() {
                    return Err(Error::NotFound(format!(
                        "no feature named {name}; see keepsake feature list; nothing was changed"
                    )));
                }
                vec![source.to_path_buf()]
            }
        };
        for s in sources {
            if let Some(first) = s.components().next() {
                let first = first.as_os_str().to_string_lossy().into_owned();
                if !folders.contains(&first) {
                    folders.push(first);
                }
            }
        }
    }
    Ok(folders)
}

pub fn backup(global: &GlobalArgs, args: BackupArgs, out: Output) -> Result<()> {
    match args.command {
        Some(BackupCommand::Verify(v)) => return verify(global, v, out),
        Some(BackupCommand::List(l)) => return list(global, l, out),
        None => {}
    }
    if let Some(place) = &args.to_device {
        return super::mirror::run(global, &args, place, out);
    }
    let Some(file) = args.file.clone() else {
        return Err(Error::Usage(
            "keepsake backup needs a FILE (or - for standard output)".into(),
        ));
    };
    let config = BackupConfig::from(&args, file);
    let (file, params) = (&config.file, config.kdf);
    // A cost no reader accepts, or that this machine cannot afford, is refused before
    // anything else happens; an incremental archive takes its parent's, checked there.
    let parent_keyless = match &config.since {
        None => {
            params.check_for_writing(crate::volume::mem_available_kib())?;
            None
        }
        Some(since) => Some(open_since(since, file, out)?),
    };
    let (unlocked, root) = volume_root(global)?;
    let dialect = Dialect::from(unlocked.profile);
    // No lock or feature change while the archive is written.
    let _lock = super::exclusive()?;
    let (volume, _) = safefs::open_dir(&root, None)?;
    let tops: Vec<String> = if config.features.is_empty() {
        crate::mirror::tops(&volume)?
            .into_iter()
            .map(|n| n.to_string_lossy().into_owned())
            .collect()
    } else {
        feature_folders(&volume, dialect, &config.features)?
            .into_iter()
            .filter(|t| root.join(t).exists())
            .collect()
    };
    if tops.is_empty() {
        return Err(Error::NotFound(
            "the selected features have no data in the volume yet; nothing was written".into(),
        ));
    }
    let to_stdout = file == Path::new("-");
    let partial = partial_path(file);
    if to_stdout {
        use std::io::IsTerminal;
        if std::io::stdout().is_terminal() {
            return Err(Error::Usage(
                "refusing to write an archive to a terminal; give a FILE or redirect standard output".into(),
            ));
        }
    } else if file.exists() || partial.exists() {
        return Err(Error::Usage(format!(
            "{} exists already; choose a new name (nothing was written)",
            if file.exists() { file } else { &partial }.display()
        )));
    }
    // The passphrase of an incremental archive is its chain's, checked on its parent:
    // asked once.
    let secret = super::read_secret_safely(
        global,
        &args.passphrase,
        out,
        "Backup passphrase",
        parent_keyless.is_none(),
        None,
    )?;
    let parent = match (parent_keyless, &config.since) {
        (Some(keyless), Some(since)) => {
            let deriving = Progress::working(out, "deriving the archive key (argon2id)");
            let name = since.file_name().unwrap_or_default();
            let parent = archive::Parent::open(keyless, name, &secret)
                .map_err(|e| e.with_note("nothing was written"))?;
            deriving.finish();
            Some(parent)
        }
        _ => None,
    };
    let started = std::time::Instant::now();
    // The archive file's handle is kept to sync it: opened again by name, it could be
    // another file by then (a fifo, where the live user can write the folder).
    let (sink, kept): (Box<dyn Write + Send>, Option<File>) = if to_stdout {
        (Box::new(std::io::stdout()), None)
    } else {
        let created = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&partial)
            .context(at("creating", &partial))?;
        let kept = created.try_clone().context(at("creating", &partial))?;
        (Box::new(created), Some(kept))
    };
    // Until the listing starts, the key is being derived. The listing counts entries; the
    // byte count starts once it knows what the archive stores, so that its total is the
    // data this archive holds (an incremental one holds only what changed) and its rate is
    // the data's.
    let mut deriving = parent
        .is_none()
        .then(|| Progress::working(out, "deriving the archive key (argon2id)"));
    let mut listing: Option<Progress> = None;
    let mut progress: Option<Progress> = None;
    let result = archive::back_up(
        &root,
        &tops,
        sink,
        &secret,
        match &parent {
            Some(parent) => archive::BackupKind::After(parent),
            None => archive::BackupKind::Full(params),
        },
        config.threads,
        &mut |step| match step {
            archive::BackupStep::Listing { entries } => {
                deriving.take();
                listing
                    .get_or_insert_with(|| Progress::counting(out, "listing"))
                    .update(entries)
            }
            archive::BackupStep::Data { written, total } => {
                listing.take();
                progress
                    .get_or_insert_with(|| Progress::new(out, "backup", total))
                    .update(written)
            }
        },
    );
    if let Some(progress) = &progress {
        progress.finish();
    }
    drop(secret);
    let (stats, archive_bytes, ids) = match result {
        Ok(done) => done,
        Err(e) => {
            if !to_stdout {
                let _ = std::fs::remove_file(&partial);
            }
            return Err(e.into());
        }
    };
    if let Some(kept) = kept {
        // Most of the archive may still be in the page cache: on a slow stick, writing it
        // out takes as long as the backup did, after the byte count has reached its end.
        let syncing = Progress::working(out, "writing the archive out to its disk");
        kept.sync_all().context(at("syncing", &partial))?;
        syncing.finish();
        std::fs::rename(&partial, file).context(at("renaming", &partial))?;
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECTORY | libc::O_NONBLOCK)
                .open(dir)
                .and_then(|d| d.sync_all());
        }
    }
    for w in stats.warnings.iter().chain(&stats.skipped) {
        out.warn(format!("not in the archive as it was: {w}"));
    }
    let report = BackupReport {
        archive: file.display().to_string(),
        archive_bytes,
        seconds: started.elapsed().as_secs_f64(),
        id: archive::id_hex(&ids.id),
        generation: ids.generation,
        since: config.since.as_ref().map(|p| p.display().to_string()),
        contents: stats,
    };
    let human = |r: &BackupReport| {
        let mut text = format!(
            "backed up {} ({} files, {} folders, {} symlinks, {} hard links, {} of data) to {} ({}, {:.1} s)",
            r.contents.entries.join(", "),
            r.contents.files,
            r.contents.dirs,
            r.contents.symlinks,
            r.contents.hardlinks,
            crate::output::bytes(r.contents.bytes),
            r.archive,
            crate::output::bytes(r.archive_bytes),
            r.seconds
        );
        if let Some(since) = &r.since {
            text.push_str(&format!(
                "\nincremental after {since} (generation {}): {} unchanged files ({}) are in the earlier archives",
                r.generation,
                r.contents.referenced,
                crate::output::bytes(r.contents.referenced_bytes)
            ));
        }
        text
    };
    if to_stdout {
        // Standard output is the archive: the report goes to standard error.
        if out.json {
            eprintln!("{}", serde_json::to_string(&report).unwrap_or_default());
        } else {
            eprintln!("keepsake: {}", human(&report));
        }
    } else {
        out.result(&report, human);
    }
    Ok(())
}

/// The archive an incremental one is to be made after, opened and its header checked
/// (before the passphrase is read): a file, not the new archive, of format 2.
fn open_since(since: &Path, file: &Path, out: Output) -> Result<archive::KeylessReader<File>> {
    if since == Path::new("-") {
        return Err(Error::Usage(
            "--since needs the earlier archive's file, not standard input (nothing was written)"
                .into(),
        ));
    }
    if since == file {
        return Err(Error::Usage(
            "--since names the archive to write; give the earlier one (nothing was written)".into(),
        ));
    }
    let input = crate::safefs::open_regular(since).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::NotFound(format!(
            "the earlier archive {} does not exist (nothing was written)",
            since.display()
        )),
        std::io::ErrorKind::InvalidInput => Error::Usage(format!(
            "the earlier archive {} is not a regular file (nothing was written)",
            since.display()
        )),
        _ => crate::context::io_at("opening", since)(e).into(),
    })?;
    let keyless = archive::KeylessReader::new(input, crate::volume::mem_available_kib())
        .map_err(|e| e.with_note("nothing was written"))?;
    if !keyless.is_format_2() {
        return Err(Error::Usage(format!(
            "{} is a format-1 archive, which lists nothing to compare with; make a full backup first (nothing was written)",
            since.display()
        )));
    }
    if since.parent() != file.parent() && file != Path::new("-") {
        // Not refused: the user may move them together later; but said now.
        out.warn(format!(
            "keep {} beside {}: restoring the new archive looks for it there",
            since.display(),
            file.display()
        ));
    }
    Ok(keyless)
}

/// The `--path` values, checked as paths an archive may hold, and not a configuration file
/// (those come back only with a full restore, whose lines are then checked); `None` when
/// none was given.
fn checked_paths(paths: &[String]) -> Result<Option<Vec<Vec<u8>>>> {
    if paths.is_empty() {
        return Ok(None);
    }
    let mut checked = Vec::new();
    for path in paths {
        let plain = !path.is_empty()
            && !path.starts_with('/')
            && path
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != "..");
        if !plain {
            return Err(Error::Usage(format!(
                "--path {path:?}: give a path below the volume's root, such as Persistent/notes.txt (nothing was changed)"
            )));
        }
        if CONFIG_FILES.contains(&path.as_str()) || crate::mirror::NOT_DATA.contains(&path.as_str())
        {
            return Err(Error::Usage(format!(
                "--path {path}: the configuration files come back only with a full restore (nothing was changed)"
            )));
        }
        checked.push(path.as_bytes().to_vec());
    }
    // A path given twice would be moved twice: the second move takes out what the first
    // brought in, and the folder is left empty.
    for (i, path) in checked.iter().enumerate() {
        if checked[..i].contains(path) {
            return Err(Error::Usage(format!(
                "--path {} is given twice (nothing was changed)",
                String::from_utf8_lossy(path)
            )));
        }
    }
    // One path inside another would be moved twice: the outer one brings it already.
    for inner in &checked {
        if let Some(outer) = checked
            .iter()
            .find(|o| inner.len() > o.len() && inner.starts_with(o) && inner[o.len()] == b'/')
        {
            return Err(Error::Usage(format!(
                "--path {} is inside --path {}, which restores it already (nothing was changed)",
                String::from_utf8_lossy(inner),
                String::from_utf8_lossy(outer)
            )));
        }
    }
    Ok(Some(checked))
}

fn partial_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

/// The archive, unbuffered: its reader reads it 1 MiB at a time.
fn open_archive(file: &Path) -> Result<(Box<dyn Read>, Option<u64>)> {
    if file == Path::new("-") {
        return Ok((Box::new(std::io::stdin().lock()), None));
    }
    let f = crate::safefs::open_regular(file).map_err(|e| match e.kind() {
        std::io::ErrorKind::InvalidInput => Error::Usage(format!(
            "{} is not a regular file: give an archive file, or - for standard input (nothing was changed)",
            file.display()
        )),
        _ => crate::context::io_at("opening", file)(e).into(),
    })?;
    let len = f.metadata().ok().map(|m| m.len());
    Ok((Box::new(f), len))
}

type ArchiveReader = archive::Reader<Box<dyn Read>>;

/// An archive opened for reading, its first chunk authenticated, with the key its whole
/// chain shares and its length when it is a file.
struct OpenedArchive {
    reader: ArchiveReader,
    key: Zeroizing<[u8; 32]>,
    len: Option<u64>,
}

/// The archive opened for reading: its header checked (in bounds, affordable on this
/// machine now, and of format 2 when `needs_listing` says what is asked needs a listing)
/// before its passphrase is read the safe way, then its key derived and its first chunk
/// authenticated.
fn open_reader(
    global: &GlobalArgs,
    args: &crate::cli::PassphraseArgs,
    source: &ArchiveSource,
    out: Output,
    needs_listing: Option<&str>,
) -> Result<OpenedArchive> {
    let (input, len) = open_archive(&source.file)?;
    let keyless = archive::KeylessReader::new(input, crate::volume::mem_available_kib())?
        .with_threads(source.threads);
    if let Some(what) = needs_listing
        && !keyless.is_format_2()
    {
        return Err(Error::Usage(format!(
            "{} is a format-1 archive, which has no listing: {what} (nothing was changed)",
            source.file.display()
        )));
    }
    let secret = super::read_secret_safely(global, args, out, "Backup passphrase", false, None)?;
    let deriving = Progress::working(out, "deriving the archive key (argon2id)");
    let key = keyless.derive(&secret)?;
    drop(secret);
    let reader = keyless.unlock_with_key(&key)?;
    deriving.finish();
    Ok(OpenedArchive { reader, key, len })
}

/// Authenticates the archive `opened` (with, for an incremental one, the archives before
/// it: all of them with `whole_chain`, else those it needs) and, with `dest`, extracts it
/// there, or only `paths` of it. Returns what it held and the archives read.
fn extract(
    opened: OpenedArchive,
    source: &ArchiveSource,
    dest: Option<&Path>,
    paths: Option<&[Vec<u8>]>,
    whole_chain: bool,
    progress: &mut dyn FnMut(u64),
) -> archive::Result<archive::ChainRead> {
    let OpenedArchive {
        mut reader, key, ..
    } = opened;
    if !reader.is_format_2() {
        if paths.is_some() {
            return Err(archive::Error::Refused(
                "--path needs an archive of format 2 (keepsake writes it since incremental backups came); restore this one whole or by --feature (nothing was changed)".into(),
            ));
        }
        let contents = archive::read_tree_on(&mut reader, dest, source.threads, progress)?;
        return Ok(archive::ChainRead {
            contents,
            chain: vec![],
        });
    }
    let chain = archive::Chain {
        dir: (source.file != Path::new("-")).then(|| {
            source
                .file
                .parent()
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
        }),
        shown: source.file.display().to_string(),
        key: &key,
        threads: source.threads,
        available_kib: crate::volume::mem_available_kib(),
    };
    let request = archive::ReadRequest {
        dest,
        paths,
        whole_chain,
    };
    archive::read_chain(archive::open_listing(reader)?, &chain, &request, progress)
}

fn verify(global: &GlobalArgs, args: VerifyArgs, out: Output) -> Result<()> {
    let source = ArchiveSource::from(&args.file, &args.stream);
    let opened = open_reader(global, &args.passphrase, &source, out, None)?;
    let mut progress = Progress::new(out, "verify", opened.len);
    let read = extract(opened, &source, None, None, true, &mut |b| {
        progress.update(b)
    })?;
    progress.finish();
    let report = RestoreReport {
        archive: source.file.display().to_string(),
        dry_run: true,
        restored: vec![],
        replaced: vec![],
        config_replaced: false,
        config_dropped: vec![],
        contents: read.contents,
        chain: read.chain,
    };
    out.result(&report, |r| {
        let mut text = format!(
            "{} is intact: {} ({} files, {} folders, {} symlinks, {} hard links, {} of data)",
            r.archive,
            r.contents.entries.join(", "),
            r.contents.files,
            r.contents.dirs,
            r.contents.symlinks,
            r.contents.hardlinks,
            crate::output::bytes(r.contents.bytes)
        );
        if r.chain.len() > 1 {
            text.push_str(&format!(
                "\nand so are the {} archives it is made after: {}",
                r.chain.len() - 1,
                r.chain[1..]
                    .iter()
                    .map(|m| m.file.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        text
    });
    Ok(())
}

/// One entry of `backup list`.
#[derive(Debug, Serialize)]
struct ListedEntry {
    path: String,
    #[serde(rename = "type")]
    kind: &'static str,
    size: u64,
    uid: u32,
    gid: u32,
    mode: String,
    /// Modification time: seconds and nanoseconds since the epoch.
    mtime: i64,
    mtime_nsec: u32,
    /// Names of its extended attributes (ACLs are system.posix_acl_*).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    xattrs: Vec<String>,
    /// A symlink's target, or the first name of a hard-linked file.
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<String>,
    /// For a file with content: `here`, or the id of the earlier archive that holds it.
    #[serde(skip_serializing_if = "Option::is_none")]
    stored: Option<String>,
}

#[derive(Debug, Serialize)]
struct ListReport {
    archive: String,
    format: u8,
    id: Option<String>,
    generation: Option<u32>,
    /// The file name of the archive an incremental one is made after.
    #[serde(skip_serializing_if = "Option::is_none")]
    since: Option<String>,
    entries: Vec<ListedEntry>,
}

fn list(global: &GlobalArgs, args: VerifyArgs, out: Output) -> Result<()> {
    let source = ArchiveSource::from(&args.file, &args.stream);
    let needs = "keepsake backup verify shows what it holds";
    let opened = open_reader(global, &args.passphrase, &source, out, Some(needs))?;
    let listed = archive::open_listing(opened.reader)?;
    let own = listed.ids.id;
    let entries = listed
        .listing
        .entries
        .iter()
        .map(|e| listed_entry(e, &own))
        .collect();
    let parent = &listed.listing.parent_name;
    let report = ListReport {
        archive: source.file.display().to_string(),
        format: 2,
        id: Some(archive::id_hex(&own)),
        generation: Some(listed.ids.generation),
        since: (!parent.is_empty()).then(|| String::from_utf8_lossy(parent).into_owned()),
        entries,
    };
    out.result(&report, |r| {
        let mut lines = vec![format!(
            "{}: generation {}{}",
            r.archive,
            r.generation.unwrap_or(0),
            r.since
                .as_ref()
                .map(|s| format!(", incremental after {s}"))
                .unwrap_or_default()
        )];
        for e in &r.entries {
            let mut line = format!(
                "{:<8} {} {:>5}:{:<5} {:>12} {} {}",
                e.kind,
                e.mode,
                e.uid,
                e.gid,
                e.size,
                e.mtime,
                crate::output::printable(&e.path, false)
            );
            if let Some(target) = &e.target {
                line.push_str(&format!(" -> {}", crate::output::printable(target, false)));
            }
            match e.stored.as_deref() {
                Some("here") | None => {}
                Some(holder) => line.push_str(&format!(" [in archive {holder}]")),
            }
            lines.push(line);
        }
        lines.join("\n")
    });
    Ok(())
}

fn listed_entry(e: &archive::ListedItem, own: &[u8; 16]) -> ListedEntry {
    use archive::ListedKind as K;
    let (kind, size, target, stored) = match &e.kind {
        K::Dir => ("folder", 0, None, None),
        K::Symlink { target } => ("symlink", 0, Some(target.clone()), None),
        K::HardLink { target } => ("hardlink", 0, Some(target.clone()), None),
        K::File { size, holder, .. } => (
            "file",
            *size,
            None,
            Some(if holder == own {
                "here".to_string()
            } else {
                archive::id_hex(holder)
            }),
        ),
    };
    ListedEntry {
        path: String::from_utf8_lossy(&e.path).into_owned(),
        kind,
        size,
        uid: e.meta.uid,
        gid: e.meta.gid,
        mode: format!("{:04o}", e.meta.mode),
        mtime: e.meta.mtime,
        mtime_nsec: e.meta.mtime_nsec,
        xattrs: e
            .xattrs
            .iter()
            .map(|(n, _)| String::from_utf8_lossy(n).into_owned())
            .collect(),
        target: target.map(|t| String::from_utf8_lossy(&t).into_owned()),
        stored,
    }
}

pub fn restore(global: &GlobalArgs, args: RestoreArgs, out: Output) -> Result<()> {
    let config = RestoreConfig::from(&args);
    let paths = checked_paths(&config.paths)?;
    let (unlocked, root) = volume_root(global)?;
    let dialect = Dialect::from(unlocked.profile);
    let (volume, _) = safefs::open_dir(&root, None)?;
    let wanted = if config.features.is_empty() {
        None
    } else {
        Some(feature_folders(&volume, dialect, &config.features)?)
    };
    let _lock = super::exclusive()?;
    let needs = "--path needs format 2; restore it whole or by --feature";
    let needs = paths.is_some().then_some(needs);
    let opened = open_reader(global, &args.passphrase, &config.archive, out, needs)?;
    let mut progress = Progress::new(out, "restore", opened.len);
    let request = restore::Request {
        folders: wanted.as_deref(),
        config_files: CONFIG_FILES,
        overwrite: config.overwrite,
        dry_run: config.dry_run,
        paths: paths.as_ref().map(|_| &config.paths[..]),
    };
    let mut opened = Some(opened);
    let mut chain = Vec::new();
    let restored = restore::restore(
        &volume,
        &mut |dest| {
            let opened = opened
                .take()
                .ok_or_else(|| archive::Error::Internal("the archive was read twice".into()))?;
            let read = extract(
                opened,
                &config.archive,
                dest,
                paths.as_deref(),
                false,
                &mut |b| progress.update(b),
            )?;
            chain = read.chain;
            Ok(read.contents)
        },
        &request,
    );
    progress.finish();
    let restored = restored?;
    for warning in &restored.contents.warnings {
        out.warn(warning);
    }
    for leftover in restored.leftovers {
        out.warn(leftover);
    }
    let mut report = RestoreReport {
        archive: config.archive.file.display().to_string(),
        dry_run: config.dry_run,
        restored: restored
            .folders
            .iter()
            .chain(&restored.configs)
            .cloned()
            .collect(),
        replaced: restored.replaced,
        config_replaced: !config.dry_run && !restored.configs.is_empty(),
        config_dropped: vec![],
        contents: restored.contents,
        chain,
    };
    if !config.dry_run {
        if report.config_replaced {
            // The archive's config is not trusted as it is: only lines that pass the rules
            // of every activation stay.
            let host = crate::persistence::features::SystemHost::new(None);
            report.config_dropped = unlocked::drop_untrusted_lines(&volume, dialect, &host)?;
            for line in &report.config_dropped {
                out.warn(format!("persistence.conf: dropped {line}"));
            }
        }
        unlocked::sync_all();
    }
    out.result(&report, |r| {
        let mut text = format!(
            "{} {} from {} ({} files, {} of data)",
            if r.dry_run {
                "would restore"
            } else {
                "restored"
            },
            r.restored.join(", "),
            r.archive,
            r.contents.files,
            crate::output::bytes(r.contents.bytes)
        );
        if !r.replaced.is_empty() {
            text.push_str(&format!(
                "\n{} {}",
                if r.dry_run {
                    "would need --overwrite for:"
                } else {
                    "replaced:"
                },
                r.replaced.join(", ")
            ));
        }
        if r.config_replaced {
            text.push_str(
                "\npersistence.conf restored: lock and unlock to activate the restored features",
            );
        }
        text
    });
    Ok(())
}
