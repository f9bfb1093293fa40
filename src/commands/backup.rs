//! `keepsake backup`, `keepsake backup verify` and `keepsake restore`: the volume's folders
//! in an encrypted, authenticated archive (see [`crate::archive`] and
//! docs/backup-format.md).

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

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

/// Folders of the volume that are never backed up or restored.
const NOT_DATA: &[&str] = &["lost+found"];
/// Top-level files restored beside the features (the current ones are kept aside).
const CONFIG_FILES: &[&str] = &[CONFIG_FILE, CUSTOM_FEATURES_FILE, KEEPSAKE_CONFIG_FILE];

/// `keepsake backup FILE`, as plain values.
struct BackupConfig {
    /// A new file, or `-` for standard output.
    file: PathBuf,
    /// Feature names; none for the whole volume.
    features: Vec<String>,
    kdf: KdfParams,
    threads: usize,
}

impl BackupConfig {
    fn from(args: &BackupArgs, file: PathBuf) -> BackupConfig {
        BackupConfig {
            file,
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
}

impl From<&RestoreArgs> for RestoreConfig {
    fn from(args: &RestoreArgs) -> RestoreConfig {
        RestoreConfig {
            archive: ArchiveSource::from(&args.file, &args.stream),
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

/// Everything at the root of the volume but lost+found, sorted.
fn all_tops(root: &Path) -> Result<Vec<String>> {
    let mut tops: Vec<String> = std::fs::read_dir(root)
        .context(at("listing", root))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !NOT_DATA.contains(&n.as_str()) && !n.starts_with(".keepsake-"))
        .collect();
    tops.sort();
    Ok(tops)
}

pub fn backup(global: &GlobalArgs, args: BackupArgs, out: Output) -> Result<()> {
    if let Some(BackupCommand::Verify(v)) = args.command {
        return verify(global, v, out);
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
    // anything else happens.
    params.check_for_writing(crate::volume::mem_available_kib())?;
    let (unlocked, root) = volume_root(global)?;
    let dialect = Dialect::from(unlocked.profile);
    // No lock or feature change while the archive is written.
    let _lock = super::exclusive()?;
    let (volume, _) = safefs::open_dir(&root, None)?;
    let tops = if config.features.is_empty() {
        all_tops(&root)?
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
    let secret = super::read_secret_safely(
        global,
        &args.passphrase,
        out,
        "Backup passphrase",
        true,
        None,
    )?;
    let started = std::time::Instant::now();
    let total = archive::tree_bytes(&root, &tops);
    let sink: Box<dyn Write + Send> = if to_stdout {
        Box::new(std::io::stdout())
    } else {
        Box::new(
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&partial)
                .context(at("creating", &partial))?,
        )
    };
    // Until the first byte of data, the key is being derived; the byte count starts then,
    // so that its rate is the data's.
    let mut deriving = Some(Progress::working(
        out,
        "deriving the archive key (argon2id)",
    ));
    let mut progress: Option<Progress> = None;
    let result = archive::back_up(
        &root,
        &tops,
        sink,
        &secret,
        params,
        config.threads,
        &mut |b| {
            deriving.take();
            progress
                .get_or_insert_with(|| Progress::new(out, "backup", Some(total)))
                .update(b)
        },
    );
    if let Some(progress) = &progress {
        progress.finish();
    }
    drop(secret);
    let (stats, archive_bytes) = match result {
        Ok(done) => done,
        Err(e) => {
            if !to_stdout {
                let _ = std::fs::remove_file(&partial);
            }
            return Err(e.into());
        }
    };
    if !to_stdout {
        File::open(&partial)
            .and_then(|f| f.sync_all())
            .context(at("syncing", &partial))?;
        std::fs::rename(&partial, file).context(at("renaming", &partial))?;
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
    }
    for w in stats.warnings.iter().chain(&stats.skipped) {
        out.warn(format!("not in the archive as it was: {w}"));
    }
    let report = BackupReport {
        archive: file.display().to_string(),
        archive_bytes,
        seconds: started.elapsed().as_secs_f64(),
        contents: stats,
    };
    let human = |r: &BackupReport| {
        format!(
            "backed up {} ({} files, {} folders, {} symlinks, {} of data) to {} ({}, {:.1} s)",
            r.contents.entries.join(", "),
            r.contents.files,
            r.contents.dirs,
            r.contents.symlinks,
            crate::output::bytes(r.contents.bytes),
            r.archive,
            crate::output::bytes(r.archive_bytes),
            r.seconds
        )
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
    let f = File::open(file).map_err(crate::context::io_at("opening", file))?;
    let len = f.metadata().ok().map(|m| m.len());
    Ok((Box::new(f), len))
}

type ArchiveReader = archive::Reader<Box<dyn Read>>;

/// The archive opened for reading: its header checked (in bounds, and affordable on this
/// machine now) before its passphrase is read the safe way, then its key derived and its
/// first chunk authenticated. Also its length, when it is a file.
fn open_reader(
    global: &GlobalArgs,
    args: &crate::cli::PassphraseArgs,
    source: &ArchiveSource,
    out: Output,
) -> Result<(ArchiveReader, Option<u64>)> {
    let (input, len) = open_archive(&source.file)?;
    let keyless = archive::KeylessReader::new(input, crate::volume::mem_available_kib())?
        .with_threads(source.threads);
    let secret = super::read_secret_safely(global, args, out, "Backup passphrase", false, None)?;
    let deriving = Progress::working(out, "deriving the archive key (argon2id)");
    let reader = keyless.unlock(&secret)?;
    deriving.finish();
    Ok((reader, len))
}

fn verify(global: &GlobalArgs, args: VerifyArgs, out: Output) -> Result<()> {
    let source = ArchiveSource::from(&args.file, &args.stream);
    let (mut reader, len) = open_reader(global, &args.passphrase, &source, out)?;
    let mut progress = Progress::new(out, "verify", len);
    let stats = archive::read_tree(&mut reader, None, &mut |b| progress.update(b))?;
    progress.finish();
    let report = RestoreReport {
        archive: source.file.display().to_string(),
        dry_run: true,
        restored: vec![],
        replaced: vec![],
        config_replaced: false,
        config_dropped: vec![],
        contents: stats,
    };
    out.result(&report, |r| {
        format!(
            "{} is intact: {} ({} files, {} folders, {} symlinks, {} of data)",
            r.archive,
            r.contents.entries.join(", "),
            r.contents.files,
            r.contents.dirs,
            r.contents.symlinks,
            crate::output::bytes(r.contents.bytes)
        )
    });
    Ok(())
}

pub fn restore(global: &GlobalArgs, args: RestoreArgs, out: Output) -> Result<()> {
    let config = RestoreConfig::from(&args);
    let (unlocked, root) = volume_root(global)?;
    let dialect = Dialect::from(unlocked.profile);
    let (volume, _) = safefs::open_dir(&root, None)?;
    let wanted = if config.features.is_empty() {
        None
    } else {
        Some(feature_folders(&volume, dialect, &config.features)?)
    };
    let _lock = super::exclusive()?;
    let (mut reader, len) = open_reader(global, &args.passphrase, &config.archive, out)?;
    let mut progress = Progress::new(out, "restore", len);
    let request = restore::Request {
        folders: wanted.as_deref(),
        config_files: CONFIG_FILES,
        overwrite: config.overwrite,
        dry_run: config.dry_run,
        threads: config.archive.threads,
    };
    let restored = restore::restore(&volume, &mut reader, &request, &mut |b| progress.update(b));
    progress.finish();
    let restored = restored?;
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
