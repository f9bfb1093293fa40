//! `keepsake backup --to-device DEV`: a second volume (another keepsake or Tails stick, or
//! a container file) brought up to date with the unlocked one ([`crate::mirror`]),
//! created first with `--create`.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::cli::{BackupArgs, GlobalArgs, PassphraseArgs, VolumeArgs};
use crate::error::{Error, Result};
use crate::host::writers::{self, LiveIds, Writers};
use crate::mirror;
use crate::output::{Output, Progress};
use crate::safefs;
use crate::secrets::Secret;
use crate::volume::discovery;

/// The mapping the backup volume is opened as, and the folder it is mounted on.
const MAPPING: &str = "keepsake-backup";
const MOUNT_DIR: &str = "backup";

#[derive(Debug, Serialize)]
struct MirrorReport {
    /// The backup volume: its partition or container file.
    backup: PathBuf,
    /// Whether this run created it.
    created: bool,
    seconds: f64,
    #[serde(flatten)]
    work: mirror::Report,
}

/// `keepsake backup --to-device DEV`, as plain values.
struct MirrorConfig {
    place: PathBuf,
    create: Option<super::create::CreateConfig>,
}

pub fn run(global: &GlobalArgs, args: &BackupArgs, place: &Path, out: Output) -> Result<()> {
    let config = MirrorConfig {
        place: place.to_path_buf(),
        create: args.create.then(|| {
            super::create::CreateConfig::for_backup(
                global,
                place,
                args.size,
                args.yes,
                &args.volume_kdf,
            )
        }),
    };
    super::require_root()?;
    crate::host::kernel::require_dm_crypt("backing up to a second volume")?;
    let (unlocked, root) = super::unlocked_volume(global)?;
    // No lock or feature change while the backup is made.
    let _lock = super::exclusive()?;
    let started = std::time::Instant::now();
    let table = crate::host::mounts::read_mountinfo()?;
    let (backing, secret, _attached) = match &config.create {
        Some(create) => {
            let made = super::create::make(global, create, &args.passphrase, out)?;
            // A container file made where the live user can write it is theirs as well.
            let (device, attached) = judged(&made.path, &table).map_err(|e| {
                e.with_note(&format!(
                    "{} was created; remove it, or move it where only root can write",
                    made.path.display()
                ))
            })?;
            (device, made.secret, attached)
        }
        None => {
            let backing = locate(global, &config.place, &table)?;
            refuse_the_source(&backing, &unlocked)?;
            super::require_locked(&backing, "a backup volume is opened by backup itself")?;
            let (device, attached) = judged(&backing, &table)?;
            crate::volume::Volume::at(&device).require_affordable("opening the backup volume")?;
            let secret = read_backup_passphrase(global, &args.passphrase, out, &backing, &table)?;
            (device, secret, attached)
        }
    };
    let mut opened = super::OpenHere::open(&backing, &secret, MAPPING, false)?;
    drop(secret);
    let layout = super::layout(global, None);
    let label = discovery::read_ext4_label(&opened.device);
    if label.as_deref() != Some(layout.fs_label) {
        return Err(Error::Usage(format!(
            "{} holds {}, where a volume of this layout has an ext4 filesystem labelled {} (give --layout to match the unlocked volume's); nothing was changed",
            config.place.display(),
            label.map_or_else(
                || "no ext4 filesystem".to_string(),
                |l| format!("an ext4 filesystem labelled {l}")
            ),
            layout.fs_label
        )));
    }
    let dest = opened.mount(MOUNT_DIR, false)?;
    let (source, _) = safefs::open_dir(&root, None)?;
    let tops = mirror::tops(&source)?;
    let mut watch = Watch {
        out,
        progress: Progress::new(out, "copying", None),
    };
    let work = mirror::mirror(&source, &dest, &tops, &mut watch)?;
    watch.progress.finish();
    drop(dest);
    drop(opened);
    let report = MirrorReport {
        backup: config.place.clone(),
        created: config.create.is_some(),
        seconds: started.elapsed().as_secs_f64(),
        work,
    };
    for file in &report.work.changed_while_copying {
        out.warn(format!(
            "{file} changed every time it was copied: the backup holds the last copy, which may mix two versions"
        ));
    }
    for why in &report.work.facts_not_set {
        out.warn(format!(
            "{why}: its data is backed up, its facts are not; the next backup tries again"
        ));
    }
    for entry in &report.work.changed_since_compared {
        out.warn(format!(
            "{entry} changed while the backup ran: the backup keeps what it had of it; the next backup brings it"
        ));
    }
    out.result(&report, human);
    Ok(())
}

fn human(r: &MirrorReport) -> String {
    use mirror::TopState;
    let names = |state: TopState| -> String {
        let n: Vec<&str> = r
            .work
            .tops
            .iter()
            .filter(|t| t.state == state)
            .map(|t| t.name.as_str())
            .collect();
        if n.is_empty() {
            "none".into()
        } else {
            n.join(", ")
        }
    };
    let mut text = String::new();
    if let Some(steps) = r.work.finished_interrupted {
        text += &format!(
            "first finished the backup stopped half way before this one ({steps} steps)\n"
        );
    }
    text += &format!(
        "{} is up to date ({:.1} s): {} files copied ({}), {} kept as they were, {} with new facts alone, {} entries removed\n\
         new: {}\nupdated: {}\nremoved: {}\nunchanged: {}",
        r.backup.display(),
        r.seconds,
        r.work.files_copied,
        crate::output::bytes(r.work.bytes_copied),
        r.work.files_kept,
        r.work.facts_set,
        r.work.removed,
        names(TopState::New),
        names(TopState::Updated),
        names(TopState::Removed),
        names(TopState::Unchanged),
    );
    if !r.work.skipped.is_empty() {
        text += &format!(
            "\nleft out (not files, folders or symlinks): {}",
            r.work.skipped.join(", ")
        );
    }
    if !r.work.leftovers_removed.is_empty() {
        text += &format!(
            "\nremoved what an interrupted backup had left: {}",
            r.work.leftovers_removed.join(", ")
        );
    }
    text
}

struct Watch {
    out: Output,
    progress: Progress,
}

impl mirror::Watch for Watch {
    fn step(&mut self, message: &str) {
        self.progress.step(self.out, message);
    }
    fn bytes(&mut self, total: u64) {
        self.progress.update(total);
    }
}

/// The backup volume at `place`: a container file, a LUKS partition, or on a disk the
/// one persistence partition or LUKS volume not open yet.
fn locate(
    global: &GlobalArgs,
    place: &Path,
    table: &[crate::host::mounts::Mount],
) -> Result<PathBuf> {
    let is_file = std::fs::symlink_metadata(place).is_ok_and(|m| m.is_file());
    let args = VolumeArgs {
        device: (!is_file).then(|| place.to_path_buf()),
        image: is_file.then(|| place.to_path_buf()),
    };
    match super::locate(&args, &super::layout(global, None))? {
        super::Located::Volume(backing) => Ok(backing),
        super::Located::Unnamed { scope, not_found } => crate::host::devices::the_only_one(
            &discovery::unopened_candidates(table, &scope),
            &format!(
                "no partition named persistence, and several LUKS volumes it could be{}",
                scope.on()
            ),
            "the partition",
        )?
        .ok_or_else(|| Error::NotFound(discovery::none_to_look_into(&not_found, &scope))),
    }
}

/// Refuses the unlocked volume itself as its own backup.
fn refuse_the_source(backing: &Path, unlocked: &crate::session::unlocked::Unlocked) -> Result<()> {
    if crate::host::devices::holder_of(backing).as_deref() == Some(unlocked.mapping.name.as_str()) {
        return Err(Error::Usage(format!(
            "{} is the unlocked volume itself; give the backup stick; nothing was changed",
            backing.display()
        )));
    }
    Ok(())
}

/// The device to open for `backing`, refused if someone other than root could have
/// written its bytes: the backup is mounted and written by root, and carries root's
/// files. A container file is judged as the open file that then goes on a loop device,
/// so the file judged is the file opened.
fn judged(
    backing: &Path,
    table: &[crate::host::mounts::Mount],
) -> Result<(PathBuf, Option<crate::host::devices::AttachedLoop>)> {
    let live = LiveIds::of_this_system(None);
    let refuse = |w: &Writers| -> Result<()> {
        match w.why() {
            Some(why) => Err(Error::NotPermitted(format!(
                "someone other than root could have written {} ({why}); a backup carries root's files, so it goes on a volume only root can write: keepsake backup --to-device DISK --create adds a partition to a stick; nothing was changed",
                backing.display()
            ))),
            None => Ok(()),
        }
    };
    if std::fs::symlink_metadata(backing).is_ok_and(|m| m.is_file()) {
        crate::volume::require_luks(backing)?;
        let (file, w) = writers::open_container(backing, table, &live)
            .map_err(crate::context::io_at("opening", backing))?;
        refuse(&w)?;
        let attached = crate::host::devices::attach_loop_to(&file, backing)
            .map_err(crate::context::io_at("attaching a loop device to", backing))?;
        Ok((attached.path(), Some(attached)))
    } else {
        refuse(&writers::judge_backing(backing, table, &live))?;
        crate::volume::require_luks(backing)?;
        Ok((backing.to_path_buf(), None))
    }
}

fn read_backup_passphrase(
    global: &GlobalArgs,
    args: &PassphraseArgs,
    out: Output,
    backing: &Path,
    table: &[crate::host::mounts::Mount],
) -> Result<Secret> {
    super::read_secret_checked(
        global,
        args,
        out,
        "Passphrase of the backup volume",
        false,
        Some(backing),
        table,
    )
}
