//! One function per command: each checks its inputs, does its work through the library
//! modules, and returns a report for [`crate::output::Output`].

mod backup;
mod check;
mod create;
mod delete;
mod feature;
mod keys;
mod lock;
mod mirror;
mod status;
mod unlock;
mod upgrade;
mod watch;

use std::path::Path;

use std::path::PathBuf;

use crate::cli::{Cli, Command, GlobalArgs, KdfArgs, PassphraseArgs, VolumeArgs};
use crate::context::IoError;
use crate::error::{Error, Result};
use crate::host::preflight::{self, Overrides};
use crate::host::{disks, mounts};
use crate::output::Output;
use crate::persistence::layout::{Layout, LayoutProfile};
use crate::secrets::{self, Secret, SecretSource};

pub fn run(cli: Cli) -> Result<()> {
    let out = Output {
        json: cli.global.json,
    };
    // Only status, which only reads, dies where a stop signal finds it; every other command
    // (check too: it opens and mounts a mapping of its own) notices it at its next safe
    // point, rolls back or finishes, and main exits 128+N.
    if !matches!(cli.command, Command::Status(_)) {
        crate::interrupt::defer_stop_signals()
            .map_err(|e| IoError::new("installing the signal handlers", e))?;
    }
    match cli.command {
        Command::Create(args) => create::run(&cli.global, args, out),
        Command::Unlock(args) => unlock::run(&cli.global, args, out),
        Command::Lock(args) => lock::run(&cli.global, args, out),
        Command::Status(args) => status::run(&cli.global, args, out),
        Command::Watch(args) => watch::run(&cli.global, args, out),
        Command::Feature(command) => feature::run(&cli.global, command, out),
        Command::Passphrase(command) => keys::passphrase(&cli.global, command, out),
        Command::RecoveryKey(command) => keys::recovery_key(&cli.global, command, out),
        Command::Upgrade(args) => upgrade::run(&cli.global, args, out),
        Command::Check(args) => check::check(&cli.global, args, out),
        Command::Repair(args) => check::repair(&cli.global, args, out),
        Command::Delete(args) => delete::run(&cli.global, args, out),
        Command::Backup(args) => backup::backup(&cli.global, args, out),
        Command::Restore(args) => backup::restore(&cli.global, args, out),
    }
}

/// Every command that touches a volume runs as root; checked before anything else.
pub fn require_root() -> Result<()> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(Error::NotPermitted(
            "keepsake must run as root (it opens dm-crypt volumes and mounts them); nothing was changed".into(),
        ))
    }
}

fn overrides(global: &GlobalArgs) -> Overrides {
    Overrides {
        unencrypted_swap: global.allow_unencrypted_swap,
        core_dump_handler: global.allow_core_dump_handler,
        disk_backed_tmp: global.allow_disk_backed_tmp,
    }
}

/// The preflight checks, the process hardening, then the secret: in that order, always.
pub fn read_secret_safely(
    global: &GlobalArgs,
    args: &PassphraseArgs,
    out: Output,
    prompt: &str,
    confirm: bool,
    volume_file: Option<&Path>,
) -> Result<Secret> {
    let table = mounts::read_mountinfo()?;
    read_secret_checked(global, args, out, prompt, confirm, volume_file, &table)
}

/// [`read_secret_safely`], the preflight checks made against the mount table the command
/// read when it started.
pub fn read_secret_checked(
    global: &GlobalArgs,
    args: &PassphraseArgs,
    out: Output,
    prompt: &str,
    confirm: bool,
    volume_file: Option<&Path>,
    table: &[mounts::Mount],
) -> Result<Secret> {
    let findings = preflight::run(&overrides(global), volume_file, table)?;
    for warning in preflight::enforce(&findings)? {
        out.warn(warning);
    }
    let hardening = secrets::harden_process()?;
    for warning in &hardening.warnings {
        out.warn(warning);
    }
    let source = SecretSource::from_options(args.passphrase_fd, args.key_file.as_deref());
    Ok(secrets::read_secret(&source, prompt, confirm)?)
}

/// The passphrase (or key) of the volume at `backing`, read the safe way.
pub fn read_passphrase(
    global: &GlobalArgs,
    args: &PassphraseArgs,
    out: Output,
    backing: &Path,
) -> Result<Secret> {
    read_secret_safely(global, args, out, "Passphrase", false, Some(backing))
}

/// Owner and mode of keepsake's own folders: root only.
pub const ROOT_ONLY: crate::safefs::Owner = crate::safefs::Owner::ROOT_0700;

/// /run/keepsake (in RAM, as the preflight checks), created root-only if missing.
pub fn runtime_dir() -> Result<crate::safefs::Dir> {
    let (dir, _) = crate::safefs::open_dir(
        Path::new(crate::persistence::layout::RUNTIME_DIR),
        Some(ROOT_ONLY),
    )?;
    Ok(dir)
}

/// One keepsake command at a time changes volumes: held for the life of the command.
pub fn exclusive() -> Result<nix::fcntl::Flock<std::fs::File>> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = runtime_dir()?;
    let path = dir.path.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| Error::Io(IoError::new(format!("opening {}", path.display()), e)))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(
        |(_, errno)| match errno {
            nix::errno::Errno::EWOULDBLOCK => {
                Error::Busy("another keepsake command is running; try again when it is done".into())
            }
            e => Error::Io(IoError::new(
                format!("locking {}", path.display()),
                e.into(),
            )),
        },
    )
}

/// A locked volume opened under a mapping of the command's own, and mounted where only
/// root can reach it; unmounted, closed and its cached pages dropped when dropped, on
/// every path out of the command.
pub struct OpenHere {
    pub device: PathBuf,
    mapping: &'static str,
    mount_point: Option<PathBuf>,
}

impl OpenHere {
    /// Opens `backing` (a device, or the loop device of a container file) as `mapping`,
    /// read-only for inspection, or read-write.
    pub fn open(
        backing: &Path,
        secret: &Secret,
        mapping: &'static str,
        read_only: bool,
    ) -> Result<OpenHere> {
        crate::volume::refuse_an_existing_mapping(mapping)?;
        crate::volume::Volume::at(backing).activate_for_inspection(mapping, secret, read_only)?;
        Ok(OpenHere {
            device: Path::new("/dev/mapper").join(mapping),
            mapping,
            mount_point: None,
        })
    }

    /// Mounts it on `name` in /run/keepsake (root only), and returns its root.
    pub fn mount(&mut self, name: &str, read_only: bool) -> Result<crate::safefs::Dir> {
        let runtime = runtime_dir()?;
        let (point, _) = crate::safefs::open_beneath(&runtime, Path::new(name), Some(ROOT_ONLY))?;
        if read_only {
            mounts::mount_ext4_read_only(&self.device, &point.path)?;
        } else {
            mounts::mount_ext4(&self.device, &point.path)?;
        }
        self.mount_point = Some(point.path.clone());
        let (dir, _) = crate::safefs::open_dir(&point.path, None)?;
        Ok(dir)
    }
}

impl Drop for OpenHere {
    fn drop(&mut self) {
        crate::session::unlocked::sync_all();
        if let Some(point) = self.mount_point.take() {
            mounts::unmount_or_detach(&point);
        }
        let _ = crate::volume::deactivate(self.mapping);
        let _ = crate::session::unlocked::drop_caches();
    }
}

/// The cost of a new keyslot asked for on the command line (see
/// [`crate::volume::KdfChoice::for_new_keyslot`]).
pub fn kdf_choice(
    kdf: &KdfArgs,
    profile: crate::persistence::layout::LayoutProfile,
) -> crate::volume::KdfChoice {
    use crate::volume::{KdfChoice, KdfCost, KdfRequest};
    let fixed = kdf
        .pbkdf_memory
        .zip(kdf.pbkdf_force_iterations)
        .map(|(memory_kib, iterations)| KdfCost {
            memory_kib,
            iterations,
            parallel: kdf.pbkdf_parallel,
        });
    let request = KdfRequest {
        fixed,
        max_memory_kib: kdf.pbkdf_max_memory,
    };
    KdfChoice::for_new_keyslot(
        request,
        profile == crate::persistence::layout::LayoutProfile::Tails,
    )
}

/// Refuses when the volume at `backing` is open: its partition, or a loop device of its
/// container file, has a holder (the dm-crypt mapping).
pub fn require_locked(backing: &Path, why: &str) -> Result<()> {
    if let Some(mapping) = crate::host::devices::holder_of(backing) {
        return Err(Error::Busy(format!(
            "{} is unlocked (as {mapping}); {why}: run keepsake lock first; nothing was changed",
            backing.display()
        )));
    }
    Ok(())
}

/// The unlocked volume and where it is mounted, or why there is none.
pub fn unlocked_volume(
    global: &GlobalArgs,
) -> Result<(crate::session::unlocked::Unlocked, PathBuf)> {
    Ok(crate::session::unlocked::Unlocked::find_mounted(&layout(
        global, None,
    ))?)
}

pub fn layout(global: &GlobalArgs, mount_root: Option<&Path>) -> Layout {
    Layout::new(global.layout, mount_root)
}

/// What --device, --image and the layout's names lead to.
pub enum Located {
    /// The container file or device given, or the one partition with the layout's name.
    Volume(PathBuf),
    /// No partition has the layout's name (the live-boot layout only: live-boot needs none,
    /// an ext4 label inside LUKS will do). The command's own search goes on in `scope`,
    /// the disk given or every disk; `not_found` says what was looked for, and where.
    Unnamed {
        scope: disks::Scope,
        not_found: String,
    },
}

/// Where the volume a command is about is: the container file or partition given (or a
/// whole disk that is itself LUKS), else the persistence partition found by name on the
/// disk given, or on any disk (preferring the live system's stick). A disk given is only
/// where to look: the commands that search as live-boot does (unlock, check, repair)
/// search that disk, and only it, as they search every disk without --device.
pub fn locate(args: &VolumeArgs, layout: &Layout) -> Result<Located> {
    if let Some(image) = &args.image {
        return check_backing(image).map(Located::Volume);
    }
    let scope = match &args.device {
        Some(dev) => {
            let bd = disks::block_device(dev)?;
            if bd.is_partition() || crate::volume::has_luks_magic(dev) {
                return check_backing(dev).map(Located::Volume);
            }
            disks::Scope::disk(&bd, &disks::all_partitions())
        }
        None => disks::Scope::Everywhere,
    };
    let mut found = disks::find_persistence(layout.partition_name, layout.fs_label, &scope);
    if found.len() > 1 {
        let table = mounts::read_mountinfo()?;
        if let Some(live) = disks::live_medium_disk(&table) {
            let on_live: Vec<_> = found.iter().filter(|p| p.disk == live).cloned().collect();
            if !on_live.is_empty() {
                found = on_live;
            }
        }
    }
    let paths: Vec<PathBuf> = found.iter().map(|p| p.path()).collect();
    if let Some(one) =
        crate::host::devices::the_only_one(&paths, "several persistence partitions", "--device")?
    {
        return Ok(Located::Volume(one));
    }
    let not_found = format!(
        "no persistence partition (GPT name {} or LUKS label {}) found{}",
        layout.partition_name,
        layout.fs_label,
        scope.on()
    );
    match layout.profile {
        LayoutProfile::LiveBoot => Ok(Located::Unnamed { scope, not_found }),
        LayoutProfile::Tails => Err(give_a_place(&not_found)),
    }
}

/// The volume, for the commands that do not search inside LUKS volumes: delete takes no
/// passphrase to try, and upgrade, passphrase change and recovery-key change the header of
/// the volume they are given rather than of one they guessed. Given a disk on which no
/// partition has the layout's name, the error names the LUKS partitions there to give.
pub fn find_volume(args: &VolumeArgs, layout: &Layout) -> Result<PathBuf> {
    match locate(args, layout)? {
        Located::Volume(path) => Ok(path),
        Located::Unnamed {
            scope: disks::Scope::Everywhere,
            not_found,
        } => Err(give_a_place(&not_found)),
        Located::Unnamed { scope, not_found } => {
            let luks: Vec<String> = disks::all_partitions()
                .iter()
                .filter(|p| scope.covers(p.dev) && crate::volume::has_luks_magic(&p.path()))
                .map(|p| format!("--device {}", p.path().display()))
                .collect();
            Err(Error::NotFound(format!(
                "{not_found}; only unlock, check and repair search a disk further, for a LUKS volume without that name; {}",
                if luks.is_empty() {
                    format!("and there is no LUKS partition{}", scope.on())
                } else {
                    format!("give the partition: {}", luks.join(" or "))
                }
            )))
        }
    }
}

/// The error when no partition has the layout's name and no search goes on.
fn give_a_place(not_found: &str) -> Error {
    Error::NotFound(format!("{not_found}; give --device or --image"))
}

fn check_backing(image: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::metadata(image).map_err(crate::context::io_at("reading", image))?;
    if !(meta.is_file() || meta.file_type().is_block_device()) {
        return Err(Error::Usage(format!(
            "{} is neither a file nor a block device",
            image.display()
        )));
    }
    std::fs::canonicalize(image)
        .map_err(|e| Error::Io(IoError::new(format!("resolving {}", image.display()), e)))
}
