//! `keepsake create`: a new volume on the live stick (a new GPT partition) or in a
//! container file. Whatever it made is removed again if a later step fails.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::cli::{CreateArgs, GlobalArgs};
use crate::context::{Context, at};
use crate::error::{Error, Result};
use crate::host::disks::{self, Region};
use crate::host::mounts;
use crate::host::tools;
use crate::output::{Output, Progress};
use crate::persistence::config::ConfigFile;
use crate::persistence::features::SystemHost;
use crate::persistence::files;
use crate::persistence::layout::{Layout, LayoutProfile, TAILS_PARTITION_TYPE};
use crate::safefs;
use crate::secrets::Secret;
use crate::session::unlocked;
use crate::volume::{self, KeyslotInfo, Volume};

/// The smallest volume: the LUKS2 header takes 16 MiB, ext4 needs a few more.
pub const MIN_SIZE: u64 = 32 << 20;

#[derive(Debug, Serialize)]
struct CreateReport {
    /// The partition or container file holding the volume.
    volume: PathBuf,
    kind: &'static str,
    size: u64,
    cipher: String,
    keyslot: KeyslotInfo,
    filesystem_label: String,
    features: Vec<String>,
}

/// What `create` is asked to do, from the command line.
pub(super) struct CreateConfig {
    target: Target,
    confirmed: bool,
    live_user: Option<String>,
    kdf: volume::KdfChoice,
}

/// Where the new volume goes.
pub(super) enum Target {
    /// A new partition on this disk.
    Device(PathBuf),
    /// A new container file of this size.
    Image { path: PathBuf, size: u64 },
}

impl CreateConfig {
    /// A second volume for `backup --to-device DEV --create`: a new partition on the disk
    /// DEV, or, with a size, a new container file DEV.
    pub(super) fn for_backup(
        global: &GlobalArgs,
        place: &Path,
        size: Option<u64>,
        confirmed: bool,
        kdf: &crate::cli::KdfArgs,
    ) -> CreateConfig {
        CreateConfig {
            target: match size {
                Some(size) => Target::Image {
                    path: place.to_path_buf(),
                    size,
                },
                None => Target::Device(place.to_path_buf()),
            },
            confirmed,
            live_user: None,
            kdf: super::kdf_choice(kdf, global.layout),
        }
    }

    fn from_args(global: &GlobalArgs, args: &CreateArgs) -> Result<CreateConfig> {
        let target = match (&args.device, &args.image, args.size) {
            (Some(disk), _, _) => Target::Device(disk.clone()),
            (None, Some(image), Some(size)) => Target::Image {
                path: image.clone(),
                size,
            },
            _ => {
                return Err(Error::Usage(
                    "give --device DISK, or --image FILE with --size SIZE".into(),
                ));
            }
        };
        Ok(CreateConfig {
            target,
            confirmed: args.yes,
            live_user: args.live_user.clone(),
            // Chosen before anything else takes memory: in the Tails layout the cost
            // follows what this machine has available now.
            kdf: super::kdf_choice(&args.kdf, global.layout),
        })
    }
}

/// Undoes what create made unless told to keep it.
enum Made {
    File(PathBuf),
    Partition { disk: PathBuf, number: u32 },
}

struct Rollback(Option<Made>);

impl Rollback {
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for Rollback {
    fn drop(&mut self) {
        match self.0.take() {
            Some(Made::File(path)) => {
                let _ = std::fs::remove_file(path);
            }
            Some(Made::Partition { disk, number }) => {
                let _ = disks::delete_partition(&disk, number);
            }
            None => {}
        }
    }
}

pub fn run(global: &GlobalArgs, args: CreateArgs, out: Output) -> Result<()> {
    let config = CreateConfig::from_args(global, &args)?;
    super::require_root()?;
    crate::host::kernel::require_dm_crypt("creating a volume")?;
    let _lock = super::exclusive()?;
    let made = make(global, &config, &args.passphrase, out)?;
    let report = CreateReport {
        volume: made.path,
        kind: made.kind,
        size: made.size,
        cipher: format!("{}-{}", volume::CIPHER, volume::CIPHER_MODE),
        keyslot: made.keyslot,
        filesystem_label: super::layout(global, None).fs_label.to_string(),
        features: made
            .features
            .entries()
            .map(|e| e.source.display().to_string())
            .collect(),
    };
    out.result(&report, |r| {
        let next = if r.kind == "partition" {
            "keepsake unlock".to_string()
        } else {
            format!("keepsake unlock --image {}", r.volume.display())
        };
        format!(
            "created {} {} ({} MiB, LUKS2 {}, keyslot {})\nenabled: {}\nnext: {next}",
            r.kind,
            r.volume.display(),
            r.size >> 20,
            r.cipher,
            r.keyslot.keyslot,
            r.features.join(", "),
        )
    });
    Ok(())
}

/// A volume [`make`] made, and the passphrase it was made with.
pub(super) struct NewVolume {
    pub(super) path: PathBuf,
    pub(super) kind: &'static str,
    pub(super) size: u64,
    pub(super) keyslot: KeyslotInfo,
    pub(super) features: ConfigFile,
    pub(super) secret: Secret,
}

/// Makes the volume `config` asks for, asking for its new passphrase (twice) once the
/// place is checked; whatever it made is removed again if a later step fails. The
/// caller holds keepsake's exclusive lock.
pub(super) fn make(
    global: &GlobalArgs,
    config: &CreateConfig,
    passphrase: &crate::cli::PassphraseArgs,
    out: Output,
) -> Result<NewVolume> {
    let layout = super::layout(global, None);
    let host = SystemHost::new(config.live_user.as_deref());
    let features = crate::persistence::features::default_config(&host, global.layout)?;
    let (path, size, rollback, kind, keyslot, secret) = match &config.target {
        Target::Device(disk) => {
            let (region, sector) = check_device_target(disk, &layout)?;
            confirm_partitioning(disk, region, sector, config.confirmed, out)?;
            let secret =
                super::read_secret_safely(global, passphrase, out, "New passphrase", true, None)?;
            out.progress(format!(
                "adding a {} partition to {}",
                layout.partition_name,
                disk.display()
            ));
            let number =
                disks::add_partition(disk, region, layout.partition_type, layout.partition_name)?;
            let rollback = Rollback(Some(Made::Partition {
                disk: disk.clone(),
                number,
            }));
            let part = disks::partition_path(disk, number);
            disks::wait_for_device(&part)?;
            let keyslot = format_and_populate(&part, &layout, &secret, config.kdf, &features, out)?;
            let size = region.sectors * sector;
            (part, size, rollback, "partition", keyslot, secret)
        }
        Target::Image { path: image, size } => {
            check_image_target(image, *size)?;
            let secret = super::read_secret_safely(
                global,
                passphrase,
                out,
                "New passphrase",
                true,
                Some(image),
            )?;
            create_sparse_file(image, *size)?;
            let rollback = Rollback(Some(Made::File(image.clone())));
            let keyslot = format_and_populate(image, &layout, &secret, config.kdf, &features, out)?;
            (
                image.clone(),
                *size,
                rollback,
                "container file",
                keyslot,
                secret,
            )
        }
    };
    rollback.keep();
    Ok(NewVolume {
        path,
        kind,
        size,
        keyslot,
        features,
        secret,
    })
}

/// LUKS2 format, ext4, default config: the same for a partition and a container file.
fn format_and_populate(
    path: &Path,
    layout: &Layout,
    secret: &Secret,
    kdf: volume::KdfChoice,
    config: &ConfigFile,
    out: Output,
) -> Result<KeyslotInfo> {
    let working = Progress::working(
        out,
        format!("formatting {} as LUKS2 (argon2id)", path.display()),
    );
    let (volume, keyslot) = Volume::format(path, layout.fs_label, secret, kdf)?;
    working.finish();
    out.progress(format!(
        "keyslot {}: argon2id, {} MiB, {} iterations, {} threads",
        keyslot.keyslot,
        keyslot.cost.memory_kib / 1024,
        keyslot.cost.iterations,
        keyslot.cost.parallel
    ));
    if layout.profile == LayoutProfile::Tails
        && let Some(floor) = volume::tails_will_convert(&keyslot.cost)
    {
        out.warn(format!(
            "this machine cannot afford the key derivation Tails counts as up to date ({} MiB): Tails will convert the keyslot at its next boot",
            floor / 1024
        ));
    }
    let mapping = format!("keepsake-new-{}", std::process::id());
    let opened = volume.activate_for_a_while(&mapping, secret)?;
    populate(layout, &opened.device(), &mapping, config, out)?;
    opened.close()?;
    Ok(keyslot)
}

/// Checks a stick before anything is written to it; returns where the partition goes.
fn check_device_target(disk: &Path, layout: &Layout) -> Result<(Region, u64)> {
    let dev = disks::block_device(disk)?;
    if let Some(parent) = &dev.parent {
        return Err(Error::Usage(format!(
            "{} is a partition; give the whole disk (/dev/{parent})",
            disk.display()
        )));
    }
    let table = disks::read_table(disk)?;
    if table.label != "gpt" {
        return Err(Error::Usage(format!(
            "{} has a {} partition table; keepsake adds to GPT sticks (as Tails makes them)",
            disk.display(),
            table.label
        )));
    }
    if table.partitions.is_empty() {
        return Err(Error::Usage(format!(
            "{} has no partitions: it does not hold a live system",
            disk.display()
        )));
    }
    if let Some(p) = table.partitions.iter().find(|p| {
        p.name.as_deref() == Some(layout.partition_name)
            || p.type_guid.eq_ignore_ascii_case(TAILS_PARTITION_TYPE)
    }) {
        return Err(Error::Usage(format!(
            "{} already has a persistence partition ({}); nothing was changed",
            disk.display(),
            p.node.display()
        )));
    }
    let mount_table = mounts::read_mountinfo()?;
    let partitions = disks::all_partitions();
    disks::check_disk_not_in_use(
        disk,
        &disks::mounts_in(&mount_table, &disks::Scope::disk(&dev, &partitions)),
    )?;
    let free = disks::plan_new_partition(&table);
    match free {
        Some(r) if r.sectors * table.sectorsize >= MIN_SIZE => Ok((r, table.sectorsize)),
        _ => Err(Error::Usage(format!(
            "{} has {} MiB free after its partitions; a volume needs at least {} MiB",
            disk.display(),
            free.map_or(0, |r| (r.sectors * table.sectorsize) >> 20),
            MIN_SIZE >> 20
        ))),
    }
}

fn confirm_partitioning(
    disk: &Path,
    region: Region,
    sector: u64,
    yes: bool,
    out: Output,
) -> Result<()> {
    if yes {
        return Ok(());
    }
    let question = format!(
        "Add an encrypted {} MiB partition to {}? The live system on it is kept. Type yes to go on",
        (region.sectors * sector) >> 20,
        disk.display()
    );
    if out.confirm(&question)? {
        Ok(())
    } else {
        Err(Error::Usage("not confirmed; nothing was changed".into()))
    }
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

fn create_sparse_file(image: &Path, size: u64) -> Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(image)
        .context(at("creating", image))?;
    file.set_len(size).context(at("sizing", image))?;
    file.sync_all().context(at("syncing", image))?;
    Ok(())
}

/// Makes the filesystem and writes the config, on the freshly opened mapping.
fn populate(
    layout: &Layout,
    device: &Path,
    mapping: &str,
    config: &ConfigFile,
    out: Output,
) -> Result<()> {
    out.progress(format!(
        "making an ext4 filesystem labelled {}",
        layout.fs_label
    ));
    tools::mkfs_ext4(device, layout.fs_label)?;
    let runtime = super::runtime_dir()?;
    let mount_point = runtime.path.join(mapping);
    std::fs::create_dir(&mount_point).context(at("creating", &mount_point))?;
    let result = (|| -> Result<()> {
        mounts::mount_ext4(device, &mount_point)?;
        let written = (|| -> Result<()> {
            // Tails' mount root: root:root 0770 (unlock adds the live user's ACL);
            // features' folders carry their own owners.
            let (dir, _) = safefs::open_dir(&mount_point, None)?;
            safefs::set_mount_root_access(&dir, None)?;
            Ok(files::write_config(&dir, config)?)
        })();
        unlocked::sync_all();
        let unmounted = mounts::unmount(&mount_point).map_err(Error::from);
        written.and(unmounted)
    })();
    let _ = std::fs::remove_dir(&mount_point);
    result
}
