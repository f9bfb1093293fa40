//! `keepsake create`: a new volume in a container file.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::cli::{CreateArgs, GlobalArgs, KdfArgs};
use crate::config::ConfigFile;
use crate::error::{Context, Error, Result, at};
use crate::features::{CATALOGUE, SystemAccounts};
use crate::layout::{Layout, RUNTIME_DIR};
use crate::mounts;
use crate::output::Output;
use crate::safefs::{self, Owner};
use crate::tools;
use crate::unlocked;
use crate::volume::{self, KdfChoice, KdfCost, KeyslotInfo};

/// The smallest volume: the LUKS2 header takes 16 MiB, ext4 needs a few more.
pub const MIN_SIZE: u64 = 32 << 20;

#[derive(Debug, Serialize)]
struct CreateReport {
    image: PathBuf,
    size: u64,
    cipher: String,
    keyslot: KeyslotInfo,
    filesystem_label: String,
    features: Vec<String>,
}

pub fn kdf_choice(kdf: &KdfArgs) -> KdfChoice {
    match (kdf.pbkdf_memory, kdf.pbkdf_force_iterations) {
        (Some(memory_kib), Some(iterations)) => KdfChoice::Fixed(KdfCost {
            memory_kib,
            iterations,
            parallel: kdf.pbkdf_parallel,
        }),
        // cryptsetup's LUKS2 defaults: about 2 s of argon2id, at most 1 GiB.
        _ => KdfChoice::Benchmark {
            time_ms: 2000,
            max_memory_kib: 1 << 20,
        },
    }
}

pub fn run(global: &GlobalArgs, args: CreateArgs, out: Output) -> Result<()> {
    super::require_root()?;
    let layout = super::layout(global, None);
    check_image_target(&args.image, args.size)?;
    let accounts = SystemAccounts::new(args.live_user.as_deref());
    let default_config = default_config(&accounts)?;
    let secret = super::read_secret_safely(
        global,
        &args.passphrase,
        out,
        "New passphrase",
        true,
        Some(&args.image),
    )?;

    create_sparse_file(&args.image, args.size)?;
    let created_file = CreatedFile(args.image.clone());
    out.progress(format!(
        "formatting {} as LUKS2 (argon2id)",
        args.image.display()
    ));
    let keyslot = volume::format(&args.image, layout.fs_label, &secret, kdf_choice(&args.kdf))?;
    out.progress(format!(
        "keyslot {}: argon2id, {} MiB, {} iterations, {} threads",
        keyslot.keyslot,
        keyslot.cost.memory_kib / 1024,
        keyslot.cost.iterations,
        keyslot.cost.parallel
    ));
    let mapping = format!("keepsake-new-{}", std::process::id());
    volume::activate(&args.image, &mapping, &secret)?;
    drop(secret);
    let result = populate(&layout, &mapping, &default_config, out);
    let closed = volume::deactivate(&mapping);
    result?;
    closed?;
    created_file.keep();

    let report = CreateReport {
        image: args.image.clone(),
        size: args.size,
        cipher: format!("{}-{}", volume::CIPHER, volume::CIPHER_MODE),
        keyslot,
        filesystem_label: layout.fs_label.to_string(),
        features: default_config
            .entries()
            .map(|e| e.source.display().to_string())
            .collect(),
    };
    out.result(&report, |r| {
        format!(
            "created {} ({} MiB, LUKS2 {}, keyslot {})\nenabled: {}\nnext: keepsake unlock --image {}",
            r.image.display(),
            r.size >> 20,
            r.cipher,
            r.keyslot.keyslot,
            r.features.join(", "),
            r.image.display()
        )
    });
    Ok(())
}

fn check_image_target(image: &Path, size: u64) -> Result<()> {
    if size < MIN_SIZE {
        return Err(Error::Usage(format!(
            "--size {size} is too small: a volume needs at least {} MiB",
            MIN_SIZE >> 20
        )));
    }
    if image.symlink_metadata().is_ok() {
        return Err(Error::Usage(format!(
            "{} already exists; refusing to overwrite it (nothing was changed)",
            image.display()
        )));
    }
    let parent = image
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !parent.is_dir() {
        return Err(Error::NotFound(format!(
            "folder {} does not exist",
            parent.display()
        )));
    }
    Ok(())
}

/// The container file, removed again unless creation got through.
struct CreatedFile(PathBuf);

impl CreatedFile {
    fn keep(self) {
        std::mem::forget(self);
    }
}

impl Drop for CreatedFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn create_sparse_file(image: &Path, size: u64) -> Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(image)
        .context(at("creating", image))?;
    file.set_len(size).context(at("sizing", image))?;
    file.sync_all().context(at("syncing", image))
}

fn default_config(accounts: &SystemAccounts) -> Result<ConfigFile> {
    let mut config = ConfigFile::parse("");
    for feature in CATALOGUE.iter().filter(|f| f.default) {
        for binding in feature.bindings {
            config
                .add(binding.entry(accounts)?)
                .map_err(Error::Internal)?;
        }
    }
    Ok(config)
}

/// Makes the filesystem and writes the config, on the freshly opened mapping.
fn populate(layout: &Layout, mapping: &str, config: &ConfigFile, out: Output) -> Result<()> {
    let device = Path::new("/dev/mapper").join(mapping);
    out.progress(format!(
        "making an ext4 filesystem labelled {}",
        layout.fs_label
    ));
    tools::mkfs_ext4(&device, layout.fs_label)?;
    let (runtime, _) = safefs::open_dir(
        Path::new(RUNTIME_DIR),
        Some(Owner {
            uid: 0,
            gid: 0,
            mode: 0o700,
        }),
    )?;
    let mount_point = runtime.path.join(mapping);
    std::fs::create_dir(&mount_point).context(at("creating", &mount_point))?;
    let result = (|| {
        mounts::mount_ext4(&device, &mount_point)?;
        let written = (|| {
            // Tails' mount root: root:root 0770; features' folders carry their own owners.
            std::fs::set_permissions(
                &mount_point,
                std::os::unix::fs::PermissionsExt::from_mode(0o770),
            )
            .context(at("setting the mode of", &mount_point))?;
            let (dir, _) = safefs::open_dir(&mount_point, None)?;
            unlocked::write_config(&dir, config)
        })();
        unlocked::sync_all();
        let unmounted = mounts::unmount(&mount_point);
        written.and(unmounted)
    })();
    let _ = std::fs::remove_dir(&mount_point);
    result
}
