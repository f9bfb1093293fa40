//! `keepsake backup`, `keepsake backup verify` and `keepsake restore`: the volume's folders
//! in an encrypted, authenticated archive (see [`crate::archive`] and
//! docs/backup-format.md).

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::archive::{self, KdfParams, TreeStats};
use crate::cli::{BackupArgs, BackupCommand, GlobalArgs, RestoreArgs, VerifyArgs};
use crate::error::{Context, Error, Result, at};
use crate::features::Feature;
use crate::layout::{CONFIG_FILE, CUSTOM_FEATURES_FILE};
use crate::output::{Output, Progress};
use crate::safefs::{self, Owner};
use crate::unlocked::{self, Unlocked};

/// Plaintext bytes per archive chunk.
const CHUNK_SIZE: u32 = 64 * 1024;
/// Folders of the volume that are never backed up or restored.
const NOT_DATA: &[&str] = &["lost+found"];
/// Top-level files restored beside the features (the current ones are kept aside).
const CONFIG_FILES: &[&str] = &[CONFIG_FILE, CUSTOM_FEATURES_FILE];

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
fn feature_folders(volume: &safefs::Dir, names: &[String]) -> Result<Vec<String>> {
    let config = unlocked::read_config(volume)?.unwrap_or_default();
    let custom = unlocked::read_config_file(volume, CUSTOM_FEATURES_FILE)?.unwrap_or_default();
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

/// Apparent bytes under `path` (for the progress line's total), not following links.
fn tree_bytes(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if meta.is_dir() {
        std::fs::read_dir(path)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| tree_bytes(&e.path()))
                    .sum()
            })
            .unwrap_or(0)
    } else if meta.is_file() {
        meta.len()
    } else {
        0
    }
}

pub fn backup(global: &GlobalArgs, args: BackupArgs, out: Output) -> Result<()> {
    if let Some(BackupCommand::Verify(v)) = args.command {
        return verify(global, v, out);
    }
    let file = args
        .file
        .clone()
        .expect("clap requires FILE without a subcommand");
    let params = KdfParams {
        memory_kib: args.kdf.archive_kdf_memory,
        iterations: args.kdf.archive_kdf_iterations,
        parallel: 1,
    };
    // A cost no reader accepts, or that this machine cannot afford, is refused before
    // anything else happens.
    params.check_for_writing(crate::volume::mem_available_kib())?;
    let (_unlocked, root) = volume_root(global)?;
    // No lock or feature change while the archive is written.
    let _lock = super::exclusive()?;
    let (volume, _) = safefs::open_dir(&root, None)?;
    let tops = if args.features.is_empty() {
        all_tops(&root)?
    } else {
        feature_folders(&volume, &args.features)?
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
    let partial = partial_path(&file);
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
            if file.exists() { &file } else { &partial }.display()
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
    let total: u64 = tops.iter().map(|t| tree_bytes(&root.join(t))).sum();
    let sink: Box<dyn Write> = if to_stdout {
        Box::new(std::io::stdout().lock())
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
    let result = (|| -> Result<(TreeStats, u64)> {
        out.progress("deriving the archive key (argon2id)");
        let counted = Counting {
            inner: std::io::BufWriter::with_capacity(1 << 20, sink),
            bytes: 0,
        };
        let mut writer = archive::Writer::new(counted, &secret, params, CHUNK_SIZE)?;
        let mut progress = Progress::new(out, "backup", Some(total));
        let tops: Vec<PathBuf> = tops.iter().map(PathBuf::from).collect();
        let stats = archive::write_tree(&root, &tops, &mut writer, &mut |b| progress.update(b))?;
        progress.finish();
        let mut counted = writer.finish()?;
        counted
            .inner
            .flush()
            .context(|| "writing the archive".into())?;
        Ok((stats, counted.bytes))
    })();
    drop(secret);
    let (stats, archive_bytes) = match result {
        Ok(done) => done,
        Err(e) => {
            if !to_stdout {
                let _ = std::fs::remove_file(&partial);
            }
            return Err(e);
        }
    };
    if !to_stdout {
        File::open(&partial)
            .and_then(|f| f.sync_all())
            .context(at("syncing", &partial))?;
        std::fs::rename(&partial, &file).context(at("renaming", &partial))?;
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

fn open_archive(file: &Path) -> Result<(Box<dyn Read>, Option<u64>)> {
    if file == Path::new("-") {
        return Ok((Box::new(std::io::stdin().lock()), None));
    }
    let f = File::open(file).map_err(crate::error::io_at("opening", file))?;
    let len = f.metadata().ok().map(|m| m.len());
    Ok((Box::new(std::io::BufReader::with_capacity(1 << 20, f)), len))
}

type ArchiveReader = archive::Reader<Box<dyn Read>>;

/// The archive opened for reading: its header checked (in bounds, and affordable on this
/// machine now) before its passphrase is read the safe way, then its key derived and its
/// first chunk authenticated. Also its length, when it is a file.
fn open_reader(
    global: &GlobalArgs,
    args: &crate::cli::PassphraseArgs,
    out: Output,
    file: &Path,
) -> Result<(ArchiveReader, Option<u64>)> {
    let (input, len) = open_archive(file)?;
    let keyless = archive::KeylessReader::new(input, crate::volume::mem_available_kib())?;
    let secret = super::read_secret_safely(global, args, out, "Backup passphrase", false, None)?;
    out.progress("deriving the archive key (argon2id)");
    Ok((keyless.unlock(&secret)?, len))
}

fn verify(global: &GlobalArgs, args: VerifyArgs, out: Output) -> Result<()> {
    let (mut reader, len) = open_reader(global, &args.passphrase, out, &args.file)?;
    let mut progress = Progress::new(out, "verify", len);
    let stats = archive::read_tree(&mut reader, None, &mut |b| progress.update(b))?;
    progress.finish();
    let report = RestoreReport {
        archive: args.file.display().to_string(),
        dry_run: true,
        restored: vec![],
        replaced: vec![],
        config_replaced: false,
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

/// A folder inside the volume, removed with everything in it when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch(volume: &safefs::Dir, name: &str) -> Result<Scratch> {
    let root = Owner {
        uid: 0,
        gid: 0,
        mode: 0o700,
    };
    let path = volume
        .path
        .join(format!(".keepsake-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&path);
    let (dir, _) = safefs::open_beneath(
        volume,
        Path::new(path.file_name().unwrap_or_default()),
        Some(root),
    )?;
    Ok(Scratch(dir.path))
}

fn is_empty_dir(path: &Path) -> bool {
    std::fs::read_dir(path).is_ok_and(|mut rd| rd.next().is_none())
}

pub fn restore(global: &GlobalArgs, args: RestoreArgs, out: Output) -> Result<()> {
    let (_unlocked, root) = volume_root(global)?;
    let (volume, _) = safefs::open_dir(&root, None)?;
    let wanted = if args.features.is_empty() {
        None
    } else {
        Some(feature_folders(&volume, &args.features)?)
    };
    let _lock = super::exclusive()?;
    let (mut reader, len) = open_reader(global, &args.passphrase, out, &args.file)?;
    let mut progress = Progress::new(out, "restore", len);
    let staging = if args.dry_run {
        None
    } else {
        Some(scratch(&volume, "restore")?)
    };
    // Everything is authenticated (and, unless --dry-run, extracted into the staging
    // folder) before anything in the volume changes. On an error the staging folder goes.
    let stats = archive::read_tree(
        &mut reader,
        staging.as_ref().map(|s| s.0.as_path()),
        &mut |b| progress.update(b),
    )?;
    progress.finish();
    let selected: Vec<String> = match &wanted {
        None => stats.entries.clone(),
        Some(folders) => {
            if let Some(missing) = folders.iter().find(|f| !stats.entries.contains(f)) {
                return Err(Error::NotFound(format!(
                    "the archive holds no folder {missing}; it holds {}; nothing was changed",
                    stats.entries.join(", ")
                )));
            }
            folders.clone()
        }
    };
    let (configs, folders): (Vec<String>, Vec<String>) = selected
        .into_iter()
        .partition(|t| CONFIG_FILES.contains(&t.as_str()));
    // Config files come back only with a full restore.
    let configs = if wanted.is_none() { configs } else { vec![] };
    let occupied: Vec<String> = folders
        .iter()
        .filter(|f| {
            let target = root.join(f);
            target.exists() && !is_empty_dir(&target)
        })
        .cloned()
        .collect();
    if !occupied.is_empty() && !args.overwrite && !args.dry_run {
        return Err(Error::Busy(format!(
            "{} already hold data; restore with --overwrite to replace it (nothing was changed)",
            occupied.join(", ")
        )));
    }
    let mut report = RestoreReport {
        archive: args.file.display().to_string(),
        dry_run: args.dry_run,
        restored: folders.iter().chain(&configs).cloned().collect(),
        replaced: occupied,
        config_replaced: !configs.is_empty(),
        contents: stats,
    };
    if let Some(staging) = &staging {
        apply(&volume, &root, &staging.0, &folders, &configs)?;
        unlocked::sync_all();
    } else {
        report.config_replaced = false;
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

/// Moves the authenticated, extracted folders from `staging` into the volume. A folder
/// that exists keeps its inode (an active feature's bind mount goes on showing it): its old
/// contents move to a trash folder that is deleted afterwards, the new ones move in.
fn apply(
    volume: &safefs::Dir,
    root: &Path,
    staging: &Path,
    folders: &[String],
    configs: &[String],
) -> Result<()> {
    let trash = scratch(volume, "replaced")?;
    for folder in folders {
        let from = staging.join(folder);
        let to = root.join(folder);
        let meta = std::fs::symlink_metadata(&from).context(at("reading", &from))?;
        match std::fs::symlink_metadata(&to) {
            Err(_) => std::fs::rename(&from, &to).context(at("moving into place", &to))?,
            Ok(existing) if existing.is_dir() && meta.is_dir() => {
                let aside = trash.0.join(folder);
                std::fs::create_dir(&aside).context(at("creating", &aside))?;
                move_children(&to, &aside)?;
                // Moving the children out changes the staged folder's time: read it first.
                move_children(&from, &to)?;
                set_dir_meta(&to, &meta)?;
            }
            Ok(_) => {
                std::fs::rename(&to, trash.0.join(folder)).context(at("moving aside", &to))?;
                std::fs::rename(&from, &to).context(at("moving into place", &to))?;
            }
        }
    }
    for name in configs {
        let from = staging.join(name);
        let to = root.join(name);
        if to.exists() {
            let kept = root.join(format!("{name}.before-restore"));
            std::fs::rename(&to, &kept).context(at("keeping", &to))?;
        }
        std::fs::rename(&from, &to).context(at("moving into place", &to))?;
    }
    Ok(())
}

fn move_children(from: &Path, to: &Path) -> Result<()> {
    for entry in std::fs::read_dir(from).context(at("listing", from))? {
        let entry = entry.context(at("listing", from))?;
        let target = to.join(entry.file_name());
        std::fs::rename(entry.path(), &target).context(at("moving", &target))?;
    }
    Ok(())
}

/// Gives the folder `to` the owner, mode and modification time in `meta` (those of the
/// folder the archive made).
fn set_dir_meta(to: &Path, meta: &std::fs::Metadata) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    std::os::unix::fs::lchown(to, Some(meta.uid()), Some(meta.gid()))
        .context(at("setting the owner of", to))?;
    std::fs::set_permissions(
        to,
        std::os::unix::fs::PermissionsExt::from_mode(meta.mode() & 0o7777),
    )
    .context(at("setting the mode of", to))?;
    let since = std::time::Duration::new(meta.mtime().unsigned_abs(), 0);
    let mtime = if meta.mtime() >= 0 {
        std::time::UNIX_EPOCH + since
    } else {
        std::time::UNIX_EPOCH - since
    } + std::time::Duration::from_nanos(meta.mtime_nsec() as u64);
    File::open(to)
        .and_then(|f| f.set_modified(mtime))
        .context(at("setting the time of", to))
}
