//! The command-line interface: every command and flag, documented once. `--help`, the man
//! pages and the shell completions are all generated from this definition.

use std::os::fd::RawFd;
use std::path::PathBuf;

use clap::builder::PossibleValue;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::error::EXIT_CODES_HELP;
use crate::persistence::layout::LayoutProfile;
use crate::session::wipe::OnRemoval;

pub mod plain;

const ABOUT: &str = "An encrypted, chosen memory for amnesic live systems";

const LONG_ABOUT: &str = "\
keepsake gives an amnesic live system (Tails, Debian live, any live USB) an encrypted memory \
of its own choosing. It creates a LUKS2 volume on the boot stick or in a container file, \
unlocks it with a passphrase, and binds only the folders you selected (\"features\") into the \
otherwise forgetful session. `keepsake lock` unbinds, unmounts, closes the volume and drops \
the page cache, so that nothing of it is left in the session.

Passphrases are read from the terminal without echo, or from --passphrase-fd N or \
--key-file PATH for scripts; never from the command line or the environment. Before reading \
one, keepsake disables core dumps and ptrace, locks its memory, and refuses to run where a \
secret could reach a disk (unencrypted swap, a core-dump handler writing to disk).

The volume is compatible with Tails Persistent Storage and with Debian's live-boot, and opens \
with the plain cryptsetup CLI. Two layouts (--layout):

  tails (default): GPT partition named TailsData of Tails' type \
(8DA63339-0007-60C0-C436-083AC8230908), ext4 labelled TailsData, mapped as \
/dev/mapper/TailsData_unlocked and mounted at /live/persistence/TailsData_unlocked. Tails \
finds it by its partition on the boot stick and unlocks it in the Welcome Screen.

  live-boot: GPT partition named persistence of the Linux filesystem type \
(0FC63DAF-8483-4772-8E79-3D69D8477DE4), or any LUKS partition whose ext4 is labelled \
persistence (an MBR stick made as the Debian Live manual shows), or a container file named \
persistence at the root of a partition; mapped under the device's name (/dev/mapper/sdb2; \
/dev/mapper/loopN for a container file on /dev/loopN) and mounted at \
/run/live/persistence/<that name>. live-boot looks for it only when the system boots with \
the kernel parameters `persistence persistence-encryption=luks` (its defaults are \
persistence-encryption=none, persistence-storage=filesystem,file): add them to the boot \
entry to use a keepsake volume (for a container file, `persistence-encryption=none,luks`: \
live-boot must look inside the unencrypted partition that holds it).

A volume the system unlocked at boot (Tails' Welcome Screen, live-boot) is found from the \
kernel's tables (a LUKS mapping named TailsData_unlocked; a LUKS mapping mounted at \
/run/live/persistence/<its name>): status shows it, feature enable/disable change it, lock \
takes it away.";

const EXAMPLES: &str = "\
Examples:
  keepsake create --device /dev/sdb          # a TailsData partition on the live stick
  keepsake unlock                            # finds it on the boot stick
  keepsake feature enable gnupg ssh-client   # bound at once
  keepsake status --json
  keepsake lock
  keepsake create --image /media/usb/keepsake.img --size 2G   # or a container file";

#[derive(Debug, Parser)]
#[command(
    name = "keepsake",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = "Run `keepsake COMMAND --help` for a command's options and `--help` for more.",
    disable_help_subcommand = true,
    after_long_help = format!("{EXAMPLES}\n\n{EXIT_CODES_HELP}"),
    propagate_version = true,
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    #[command(flatten)]
    pub global: GlobalArgs,
}

#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// Print one JSON object on standard output instead of text; errors too.
    #[arg(long, global = true)]
    pub json: bool,

    /// Layout profile: names, mapping and mount point of the volume (see --help).
    #[arg(long, global = true, value_enum, default_value_t = LayoutProfile::Tails)]
    pub layout: LayoutProfile,

    /// Run even though unencrypted swap is active (secrets could be paged to disk).
    #[arg(long, global = true, help_heading = "Host safety overrides")]
    pub allow_unencrypted_swap: bool,

    /// Run even though a core-dump handler may write dumps to a disk.
    #[arg(long, global = true, help_heading = "Host safety overrides")]
    pub allow_core_dump_handler: bool,

    /// Run even though /tmp or /run/keepsake is not in RAM (tmpfs).
    #[arg(long, global = true, help_heading = "Host safety overrides")]
    pub allow_disk_backed_tmp: bool,
}

/// Declares `Command`, the top-level commands, and implements for it what
/// `#[derive(Subcommand)]` would, but lazily: the parser gets each command's name and about
/// at once, and the rest (its arguments, nested commands and settings) through
/// `clap::Command::defer`, built only for the command being run, or for all of them when the
/// whole definition is built (`Command::build`: man pages, completions, `debug_assert`).
/// Building all thirteen up front was most of the ~80 ms clap took under emulation before
/// keepsake did anything (natively, `lock` as a non-root user: 673k instructions in clap
/// before, 304k deferred).
///
/// Each command is written once: its one-line doc comment is its about (its final period
/// dropped, as the derive does), then its name, whether it takes `args` (a `clap::Args`
/// struct) or `subcommands` (a `clap::Subcommand` enum), and the `clap::Command` settings
/// `#[command(...)]` would have set on it, in the same order.
macro_rules! commands {
    (@augment args $inner:ty, $cmd:expr) => {
        <$inner as clap::Args>::augment_args($cmd)
    };
    (@augment subcommands $inner:ty, $cmd:expr) => {
        <$inner as clap::Subcommand>::augment_subcommands(
            $cmd.subcommand_required(true).arg_required_else_help(true),
        )
    };
    (@augment_for_update args $inner:ty, $cmd:expr) => {
        <$inner as clap::Args>::augment_args_for_update($cmd)
    };
    (@augment_for_update subcommands $inner:ty, $cmd:expr) => {
        <$inner as clap::Subcommand>::augment_subcommands_for_update(
            $cmd.subcommand_required(true).arg_required_else_help(true),
        )
    };
    // An update may leave out the nested command: the derive lifts the requirement last.
    (@finish_update args $cmd:expr) => {
        $cmd
    };
    (@finish_update subcommands $cmd:expr) => {
        $cmd.subcommand_required(false).arg_required_else_help(false)
    };
    ($(
        #[doc = $doc:literal]
        $variant:ident($inner:ty) = $name:literal, $kind:ident {
            $($setting:ident($value:expr)),* $(,)?
        }
    )*) => {
        #[derive(Debug)]
        pub enum Command {
            $(#[doc = $doc] $variant($inner),)*
        }

        impl Command {
            /// Adds every command to `cmd`, each given to `attach` with the function that
            /// completes it.
            fn subcommands(cmd: clap::Command, attach: Attach) -> clap::Command {
                cmd $(.subcommand(attach(
                    // The parent's help lists the name and about, before this is built.
                    clap::Command::new($name).about(summary($doc)).long_about(None),
                    |cmd| {
                        let propagated = argument_ids(&cmd);
                        // As the derive: the arguments, then the about again (a flattened
                        // struct's doc comment is an about too, and must not win), then the
                        // settings.
                        let cmd = commands!(@augment $kind $inner, cmd)
                            .about(summary($doc))
                            .long_about(None)
                            $(.$setting($value))*;
                        own_arguments_first(cmd, propagated)
                    },
                )))*
            }

            /// As `subcommands`, for `CommandFactory::command_for_update`.
            fn subcommands_for_update(cmd: clap::Command, attach: Attach) -> clap::Command {
                cmd $(.subcommand(attach(
                    clap::Command::new($name).about(summary($doc)).long_about(None),
                    |cmd| {
                        let propagated = argument_ids(&cmd);
                        let cmd = commands!(@augment_for_update $kind $inner, cmd)
                            .about(summary($doc))
                            .long_about(None)
                            $(.$setting($value))*;
                        own_arguments_first(commands!(@finish_update $kind cmd), propagated)
                    },
                )))*
            }
        }

        impl clap::Subcommand for Command {
            fn augment_subcommands(cmd: clap::Command) -> clap::Command {
                Self::subcommands(cmd, attach_deferred)
            }

            fn augment_subcommands_for_update(cmd: clap::Command) -> clap::Command {
                Self::subcommands_for_update(cmd, attach_deferred)
            }

            fn has_subcommand(name: &str) -> bool {
                matches!(name, $($name)|*)
            }
        }

        impl clap::FromArgMatches for Command {
            fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
                Self::from_arg_matches_mut(&mut matches.clone())
            }

            fn from_arg_matches_mut(matches: &mut clap::ArgMatches) -> Result<Self, clap::Error> {
                match matches.remove_subcommand() {
                    $(Some((name, mut sub)) if name == $name => Ok(Self::$variant(
                        <$inner as clap::FromArgMatches>::from_arg_matches_mut(&mut sub)?,
                    )),)*
                    Some((name, _)) => Err(clap::Error::raw(
                        clap::error::ErrorKind::InvalidSubcommand,
                        format!("the subcommand '{name}' wasn't recognized"),
                    )),
                    None => Err(clap::Error::raw(
                        clap::error::ErrorKind::MissingSubcommand,
                        "a subcommand is required but one was not provided",
                    )),
                }
            }

            fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
                self.update_from_arg_matches_mut(&mut matches.clone())
            }

            fn update_from_arg_matches_mut(
                &mut self,
                matches: &mut clap::ArgMatches,
            ) -> Result<(), clap::Error> {
                let Some(name) = matches.subcommand_name() else {
                    return Ok(());
                };
                match self {
                    $(Self::$variant(inner) if name == $name => {
                        if let Some((_, mut sub)) = matches.remove_subcommand() {
                            clap::FromArgMatches::update_from_arg_matches_mut(inner, &mut sub)?;
                        }
                    })*
                    // Another command than the one held: parsed afresh, as the derive does.
                    other => *other = Self::from_arg_matches_mut(matches)?,
                }
                Ok(())
            }
        }
    };
}

/// How a command is completed: given the command with its name and about, and the function
/// that adds the rest.
type Attach = fn(clap::Command, fn(clap::Command) -> clap::Command) -> clap::Command;

/// Completes the command when it is built. The unit tests can have it completed at once, as
/// the derive did, to compare the two.
fn attach_deferred(
    cmd: clap::Command,
    complete: fn(clap::Command) -> clap::Command,
) -> clap::Command {
    #[cfg(test)]
    if tests::BUILD_AT_ONCE.with(std::cell::Cell::get) {
        return complete(cmd);
    }
    cmd.defer(complete)
}

/// A command's about as the derive makes it from a one-line doc comment: trimmed, and
/// without a final period (an ellipsis stays).
fn summary(doc: &'static str) -> &'static str {
    let line = doc.trim();
    match line.strip_suffix('.') {
        Some(short) if !short.ends_with('.') => short,
        _ => line,
    }
}

/// The arguments a command holds when its deferred part runs: the global ones its parent
/// propagated into it while being built.
fn argument_ids(cmd: &clap::Command) -> Vec<clap::Id> {
    cmd.get_arguments()
        .map(|arg| arg.get_id().clone())
        .collect()
}

/// Moves the propagated global arguments behind the command's own, where they are when the
/// command is built at once (the parent propagates into commands that are complete). The
/// order is visible: help lists its headings, and completions and man pages their options,
/// in the order of the arguments.
fn own_arguments_first(cmd: clap::Command, propagated: Vec<clap::Id>) -> clap::Command {
    // `mut_arg` takes the argument out and pushes it back last.
    propagated
        .iter()
        .fold(cmd, |cmd, id| cmd.mut_arg(id.as_str(), |arg| arg))
}

commands! {
    /// Create a new encrypted volume on the live stick or in a container file.
    Create(CreateArgs) = "create", args { after_long_help(CREATE_HELP) }
    /// Open the volume, mount it and activate its enabled features.
    Unlock(UnlockArgs) = "unlock", args { after_long_help(UNLOCK_HELP) }
    /// Deactivate the features, unmount and close the volume, and forget it.
    Lock(LockArgs) = "lock", args { after_long_help(LOCK_HELP) }
    /// Show the volume, its mapping and mount, and each feature's state.
    Status(StatusArgs) = "status", args { after_long_help(STATUS_HELP) }
    /// Arm the watcher that wipes the volume key when the stick is pulled out.
    Watch(WatchArgs) = "watch", args { after_long_help(WATCH_HELP) }
    /// List, enable, disable, add and remove features (the folders that persist).
    Feature(FeatureCommand) = "feature", subcommands {
        after_long_help(FEATURE_HELP),
        disable_help_subcommand(true)
    }
    /// Change the passphrase; the volume key and the data stay as they are.
    Passphrase(PassphraseCommand) = "passphrase", subcommands { disable_help_subcommand(true) }
    /// Add or remove the recovery key, for when the passphrase is lost.
    RecoveryKey(RecoveryKeyCommand) = "recovery-key", subcommands {
        after_long_help(RECOVERY_HELP),
        disable_help_subcommand(true)
    }
    /// Upgrade an older volume: LUKS1 to LUKS2, PBKDF2 keyslots to argon2id.
    Upgrade(UpgradeArgs) = "upgrade", args { after_long_help(UPGRADE_HELP) }
    /// Check the header, keyslots, filesystem and persistence.conf; changes nothing.
    Check(CheckArgs) = "check", args { after_long_help(CHECK_HELP) }
    /// Repair the filesystem (e2fsck -y) and persistence.conf; never deletes user data.
    Repair(CheckArgs) = "repair", args { after_long_help(REPAIR_HELP) }
    /// Destroy the volume for good: keyslots, header, then its partition or file.
    Delete(DeleteArgs) = "delete", args { after_long_help(DELETE_HELP) }
    /// Write an encrypted, authenticated backup of the unlocked volume (or of features).
    Backup(BackupArgs) = "backup", args {
        after_long_help(BACKUP_HELP),
        args_conflicts_with_subcommands(true),
        subcommand_negates_reqs(true),
        disable_help_subcommand(true)
    }
    /// Restore a backup into the unlocked volume, once all of it has authenticated.
    Restore(RestoreArgs) = "restore", args { after_long_help(RESTORE_HELP) }
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    #[command(subcommand)]
    pub command: Option<BackupCommand>,

    /// The archive to write: a new file, or - for standard output.
    #[arg(value_name = "FILE", required_unless_present = "to_device")]
    pub file: Option<PathBuf>,

    /// Back up only this feature (repeat for more) [default: the whole volume].
    #[arg(long = "feature", value_name = "NAME")]
    pub features: Vec<String>,

    /// Write an incremental archive after PREV, an earlier archive of this chain (full or
    /// incremental): only files new or changed since PREV (size, modification time, owner,
    /// group, a wider mode or another ACL) are stored, with a listing of every file. It takes PREV's passphrase and key derivation
    /// (the --archive-kdf options do not apply), and records PREV's file name: keep PREV
    /// and the archives before it beside the new one to restore it.
    #[arg(long, value_name = "PREV", conflicts_with = "to_device")]
    pub since: Option<PathBuf>,

    /// Instead of an archive, bring the backup volume DEV up to date with the whole
    /// unlocked volume: a LUKS partition, a disk holding one (searched as unlock searches),
    /// or a container file. Asks for the backup volume's passphrase.
    #[arg(long, value_name = "DEV", conflicts_with_all = ["file", "features"],
          help_heading = "Second stick")]
    pub to_device: Option<PathBuf>,

    /// Create the backup volume first: a new partition on the disk DEV (another live
    /// stick), or with --size a new container file DEV. Asks for its new passphrase twice.
    #[arg(long, requires = "to_device", help_heading = "Second stick")]
    pub create: bool,

    /// With --create: make DEV a container file of this size (K, M, G or T suffix).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, requires = "create",
          help_heading = "Second stick")]
    pub size: Option<u64>,

    /// With --create: do not ask before partitioning.
    #[arg(long, short = 'y', requires = "create", help_heading = "Second stick")]
    pub yes: bool,

    #[command(flatten)]
    pub volume_kdf: KdfArgs,

    #[command(flatten)]
    pub passphrase: PassphraseArgs,

    #[command(flatten)]
    pub kdf: ArchiveKdfArgs,

    #[command(flatten)]
    pub stream: ArchiveStreamArgs,
}

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Authenticate a whole archive, and every earlier archive an incremental one is made
    /// after, writing nothing.
    Verify(VerifyArgs),
    /// List what an archive holds (paths, types, sizes, owners, modes, times, and where an
    /// incremental archive's content is stored), reading its listing only.
    List(VerifyArgs),
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The archive: a file, or - for standard input.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,

    #[command(flatten)]
    pub passphrase: PassphraseArgs,

    #[command(flatten)]
    pub stream: ArchiveStreamArgs,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The archive: a file, or - for standard input.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,

    /// Restore only this feature (repeat for more) [default: everything in the archive].
    #[arg(long = "feature", value_name = "NAME")]
    pub features: Vec<String>,

    /// Restore only this file or folder (with everything below it), a path below the
    /// volume's root as `backup list` shows it (repeat for more). It goes back to its
    /// place; the folder above it must exist, and what is there already is replaced only
    /// with --overwrite.
    #[arg(long = "path", value_name = "REL/PATH", conflicts_with = "features")]
    pub paths: Vec<String>,

    /// Authenticate the archive and list what would be restored; write nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Replace the contents of features that already hold data.
    #[arg(long)]
    pub overwrite: bool,

    #[command(flatten)]
    pub passphrase: PassphraseArgs,
    #[command(flatten)]
    pub stream: ArchiveStreamArgs,
}

/// The cost of deriving an archive's key from its passphrase. The ranges and the cap on
/// memory times passes are the reader's hard caps (crate::archive::MAX_KDF_WORK): no
/// archive is written that a reader would refuse as corrupt.
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "Archive key derivation")]
pub struct ArchiveKdfArgs {
    /// argon2id memory for the archive key, in KiB (at most 4 GiB; every machine that reads
    /// the archive needs that much available).
    #[arg(long, value_name = "KIB", default_value_t = 262_144,
          value_parser = clap::value_parser!(u32).range(8..=4_194_304))]
    pub archive_kdf_memory: u32,

    /// argon2id passes for the archive key (memory times passes at most 16 GiB).
    #[arg(long, value_name = "N", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub archive_kdf_iterations: u32,
}

/// How an archive's chunks are sealed or opened: crate::archive::Writer and Reader.
#[derive(Debug, Args, Clone)]
pub struct ArchiveStreamArgs {
    /// Threads that encrypt or decrypt the archive, each 1 MiB of it at a time [default: one
    /// per CPU available]. The archive is the same whatever the number; the memory it takes
    /// is at most (2 x N + 2) MiB (1 MiB with one thread). With more than one, a restore
    /// writes the files on one more thread, with at most 4 MiB of small files waiting.
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub threads: Option<u16>,
}

impl ArchiveStreamArgs {
    /// The number of threads asked for, or one per CPU available.
    pub fn threads(&self) -> usize {
        self.threads
            .map_or_else(crate::archive::default_threads, usize::from)
    }
}

const BACKUP_HELP: &str = "\
The archive holds the volume's folders (every feature's data, persistence.conf and \
keepsake-features.conf), or with --feature only those features' folders. Owners, modes, \
modification times, symlinks, empty folders, the holes of sparse files, hard links, \
extended attributes (user.*, trusted.*, security.capability) and POSIX ACLs are kept; \
other security.* labels are left out, and said; sockets, FIFOs and device nodes are left \
out and reported.

With --since PREV the archive is incremental: it lists every file but stores only those \
new or changed since PREV (another size, modification time, owner or group, as a file's \
owner can fake the first two; or a wider mode or another ACL, which would open old content \
to someone new), and refers to PREV's chain for the rest. Restoring it needs PREV and every archive before it, beside it under the \
names they had (a missing or different one is refused: exit status 11).

It is encrypted and authenticated with ChaCha20-Poly1305 in the STREAM construction, 64 KiB \
chunks, under a key derived with argon2id from a backup passphrase (asked twice on a \
terminal; --passphrase-fd or --key-file in scripts; it need not be the volume's). Truncation, \
reordering, appended data and any changed bit are detected. The format is documented in \
docs/backup-format.md. A FILE is written as FILE.partial and renamed when complete.

`keepsake backup verify FILE` authenticates a whole archive without writing anything (an \
incremental one with every archive before it); `keepsake backup list FILE` shows what it \
holds, reading only its listing.

The archive key's argon2id cost is at most 4 GiB of memory, 64 passes and 16 GiB-passes of \
work (memory times passes; the default, 256 MiB x 3, is 0.75). Before asking for the \
passphrase, verify and restore refuse an archive whose header asks for more as corrupt \
(exit status 7), and one whose memory is more than this machine has available now as an \
unsafe host (exit status 6, as unlock does for a keyslot).

With --to-device, the backup is a second volume instead: another keepsake or Tails stick \
that opens as a working Persistent Storage by Tails' and keepsake's rules, kept up to date \
with the unlocked volume. Only what changed is written: both trees are compared (type, \
owner, mode, modification time, size, extended attributes and ACLs, link targets, hard \
links); new and changed files are copied into a work folder on the backup volume, and once \
they are on the disk a plan (what is renamed into place, what is removed, which entries get \
new facts) is committed beside them and carried out, one rename or one setting of facts a \
step. Unchanged files are not touched, and a new mode or attribute alone is set in place. \
So, stopped before the commit, the backup is the previous one, whole; after it, the plan \
is carried out in milliseconds with no safe point between its steps, and a power cut among \
them leaves the plan, which the next backup to that volume, or unlock of it, carries out \
first. No file is ever half written under its real name. Folders and files gone from the \
volume are removed from the backup. persistence.conf and keepsake-features.conf come \
along. A file that changes while it is copied is copied again, and named in the report if \
it never held still. The backup volume is mounted where only root can reach it, and closed \
when done. A volume someone other than root could have written (a container file on a \
stick the live user mounted) is refused: root writes root's files into it.

Examples:
  keepsake backup /media/other-stick/keepsake-2026-11.ksb
  keepsake backup --feature gnupg --feature ssh-client - | ssh host 'cat > keys.ksb'
  keepsake backup --since /media/other-stick/keepsake-2026-11.ksb /media/other-stick/keepsake-2026-12.ksb
  keepsake backup list --json /media/other-stick/keepsake-2026-12.ksb
  keepsake backup verify /media/other-stick/keepsake-2026-12.ksb
  keepsake backup --to-device /dev/sdc --create     (another live stick: a new partition)
  keepsake backup --to-device /dev/sdc              (every week after: only the changes)";

const RESTORE_HELP: &str = "\
Nothing is changed before the whole archive has authenticated: it is extracted into a \
staging folder inside the (encrypted) volume, and only then are its folders moved into \
place; on a wrong passphrase or any tampering the staging folder is removed and the volume \
is as it was. A feature folder that already holds data is only replaced with --overwrite: \
its old contents are moved aside and deleted only once the whole archive is in place, and \
should anything fail on the way (a mount point inside the folder, say: exit status 5), \
everything moved is put back and the folder is as it was. \
A full restore also brings back persistence.conf and keepsake-features.conf (the current \
ones are kept beside them as *.before-restore); lock and unlock to activate the restored \
features. Active features see their restored data at once.

An incremental archive restores the whole state of the volume at its time, its unchanged \
files read from the archives before it (beside it; see keepsake backup --help). With --path \
REL/PATH only that file or folder is restored, into its place in the volume: the folder \
above it must be there, an existing file or folder there is replaced only with \
--overwrite (moved aside, and deleted once everything is in place), nothing else changes, \
and the configuration files are not restored that way.

Examples:
  keepsake restore --dry-run /media/other-stick/keepsake-2026-11.ksb
  keepsake restore /media/other-stick/keepsake-2026-11.ksb
  keepsake restore --feature gnupg --overwrite keys.ksb
  keepsake restore --path Persistent/docs/letter.odt --overwrite keepsake-2026-12.ksb";

#[derive(Debug, Subcommand)]
pub enum PassphraseCommand {
    /// Replace the passphrase by a new one (asked twice on a terminal). Done in one header
    /// update: the old passphrase works until the new one does, and not afterwards.
    #[command(after_long_help = PASSPHRASE_CHANGE_HELP)]
    Change(PassphraseChangeArgs),
}

#[derive(Debug, Subcommand)]
pub enum RecoveryKeyCommand {
    /// Generate a recovery key, add it in its own keyslot and show it once.
    Add(RecoveryAddArgs),
    /// Destroy the recovery key's keyslot (the passphrase is asked, and must still work).
    Remove(RecoveryRemoveArgs),
}

/// Which volume: found by name on the boot stick unless one of these is given.
#[derive(Debug, Args, Clone, Default)]
pub struct VolumeArgs {
    /// The persistence partition, or the disk to look for it on [default: found by name].
    #[arg(long, value_name = "DEV", conflicts_with = "image")]
    pub device: Option<PathBuf>,

    /// A container file holding the volume.
    #[arg(long, value_name = "FILE")]
    pub image: Option<PathBuf>,
}

/// Where a new passphrase comes from, for scripts.
#[derive(Debug, Args, Clone, Default)]
pub struct NewPassphraseArgs {
    /// Read the new passphrase from file descriptor N (one line).
    #[arg(long, value_name = "N", conflicts_with = "new_key_file")]
    pub new_passphrase_fd: Option<RawFd>,

    /// Read the new key from FILE, whole and byte for byte.
    #[arg(long, value_name = "FILE")]
    pub new_key_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PassphraseChangeArgs {
    #[command(flatten)]
    pub volume: VolumeArgs,
    #[command(flatten)]
    pub passphrase: PassphraseArgs,
    #[command(flatten)]
    pub new: NewPassphraseArgs,
    #[command(flatten)]
    pub kdf: KdfArgs,
}

#[derive(Debug, Args)]
pub struct RecoveryAddArgs {
    #[command(flatten)]
    pub volume: VolumeArgs,
    #[command(flatten)]
    pub passphrase: PassphraseArgs,
    #[command(flatten)]
    pub kdf: KdfArgs,
}

#[derive(Debug, Args)]
pub struct RecoveryRemoveArgs {
    #[command(flatten)]
    pub volume: VolumeArgs,
    #[command(flatten)]
    pub passphrase: PassphraseArgs,
}

#[derive(Debug, Args)]
pub struct UpgradeArgs {
    /// Only report what would change.
    #[arg(long)]
    pub dry_run: bool,
    /// Also save a copy of the header to FILE (on other media) before changing anything;
    /// it must not exist. It restores the volume with `cryptsetup luksHeaderRestore` if
    /// power fails during the conversion. Delete it afterwards: it holds the old keyslot.
    #[arg(long, value_name = "FILE")]
    pub header_backup: Option<PathBuf>,
    #[command(flatten)]
    pub volume: VolumeArgs,
    #[command(flatten)]
    pub passphrase: PassphraseArgs,
    #[command(flatten)]
    pub kdf: KdfArgs,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub volume: VolumeArgs,
    #[command(flatten)]
    pub passphrase: PassphraseArgs,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    #[command(flatten)]
    pub volume: VolumeArgs,
    /// Do not ask for the typed confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
}

const PASSPHRASE_CHANGE_HELP: &str = "\
The current passphrase is read first (terminal, --passphrase-fd or --key-file), then the new \
one (terminal, asked twice, or --new-passphrase-fd / --new-key-file). libcryptsetup writes the \
new keyslot into free keyslot space and switches the header over in one metadata update, so \
that a power cut leaves a volume that opens with one of the two. The new keyslot's argon2id \
cost is calibrated on this machine, as for create. Works locked or unlocked.

Examples:
  keepsake passphrase change
  keepsake passphrase change --key-file old.key --new-key-file new.key";

const RECOVERY_HELP: &str = "\
The recovery key is 40 random characters (200 bits) in eight groups of five, shown once on \
standard output (in the JSON object under --json) and never written anywhere by keepsake: \
write it on paper and keep it apart from the stick. It opens the volume with \
`keepsake unlock --recovery-key`, typed with or without the dashes, in either case. Its \
keyslot is marked with a keepsake-role token in the LUKS2 header, so that `status` can tell \
it from the passphrase's.

Examples:
  keepsake recovery-key add
  keepsake unlock --recovery-key
  keepsake recovery-key remove";

const UPGRADE_HELP: &str = "\
Volumes made by older Tails (before 5.13) or by hand may be LUKS1, or have PBKDF2 keyslots, \
which make guessing the passphrase cheap on GPUs. upgrade converts the header to LUKS2 (the \
volume must be locked for that) and re-derives the keyslot the passphrase opens with \
argon2id, as Tails did in 2023. A copy of the header is kept in /run/keepsake (RAM) first \
and written back if any step fails; it is wiped afterwards. --dry-run reports the plan and \
changes nothing. Other PBKDF2 keyslots are reported: each needs its own passphrase.

A keyslot is never rewritten in place: the argon2id keyslot is added first and the PBKDF2 one \
destroyed afterwards, so a power cut leaves a volume that opens. The LUKS1 to LUKS2 \
conversion itself (libcryptsetup moves the keyslots and rewrites the header in place, a few \
milliseconds) has no such guarantee and the RAM copy does not survive a power cut: keep \
--header-backup FILE on other media until the upgrade is done.

Examples:
  keepsake upgrade --dry-run
  keepsake upgrade --device /dev/sdb2 --header-backup /media/other/header.img";

const CHECK_HELP: &str = "\
check reads the LUKS header and each keyslot's parameters, opens the volume read-only with \
the passphrase, runs e2fsck -n on it, and validates persistence.conf (owner, mode, every \
line). It changes nothing, and needs the volume locked (a mounted filesystem cannot be \
checked). After an unclean shutdown (pulled out, power cut) the journal has not been replayed \
yet: check says so and leaves the filesystem to the next check, as e2fsck -n cannot judge it \
before `keepsake unlock` replays the journal. A data segment that does not encrypt (cipher_null) or uses a cipher unlock refuses is named. Exit status 0 when all is well (also after an \
unclean shutdown alone), 7 when something is wrong.

The volume is found as unlock finds it, except that with --layout live-boot, when no \
partition has the name or label, check takes the only container file named persistence or \
LUKS device not open yet (on the disk given with --device DISK, or on any), and names them \
when there are several.";

const REPAIR_HELP: &str = "\
repair opens the volume, runs e2fsck -y, and makes persistence.conf sane: owner root and \
mode 0600, lines that are not valid moved to persistence.conf.invalid-<time> next to it. \
It deletes no user data. The volume must be locked, and is found as check finds it.";

const DELETE_HELP: &str = "\
delete destroys every keyslot and overwrites the whole header area (both LUKS2 headers and \
the keyslots) with random data, so that no passphrase or recovery key can open the volume \
again, then removes the TailsData partition or the container file. There is no undo. It asks \
you to type DELETE unless --yes is given. The volume must be locked.

Examples:
  keepsake delete --device /dev/sdb2
  keepsake delete --image /media/usb/keepsake.img --yes";

#[derive(Debug, Subcommand)]
pub enum FeatureCommand {
    /// List the built-in and custom features, and whether each is enabled and active.
    List,
    /// Enable features: add them to persistence.conf and activate them now.
    Enable {
        /// Feature names, as `keepsake feature list` shows them.
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
    /// Disable features: deactivate them now and remove them from persistence.conf.
    /// Their data stays in the volume.
    Disable {
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
    /// Add a custom feature: the folder DEST persists, in the volume folder NAME.
    Add {
        /// Name of the feature and of its folder in the volume: letters, digits, '.', '_', '-'.
        #[arg(value_name = "NAME")]
        name: String,
        /// The folder in the session that persists (an absolute path).
        #[arg(long, value_name = "PATH")]
        dest: PathBuf,
        /// Symlink each file into DEST instead of binding the whole folder.
        #[arg(long, conflicts_with_all = ["file", "union"])]
        link: bool,
        /// DEST is one file, bind-mounted from the file NAME of the volume (Tails layout).
        #[arg(long, conflicts_with = "union")]
        file: bool,
        /// Overlay DEST: its files show through, changes persist in NAME/rw (live-boot
        /// layout).
        #[arg(long)]
        union: bool,
    },
    /// Remove a custom feature (disabling it first).
    Remove {
        #[arg(value_name = "NAME")]
        name: String,
        /// Also delete its folder from the volume (asks for confirmation without --yes).
        #[arg(long)]
        delete_data: bool,
        /// Do not ask for confirmation.
        #[arg(long, short = 'y')]
        yes: bool,
    },
}

const FEATURE_HELP: &str = "\
Features are the folders that persist. Each is one line of persistence.conf at the root of the \
volume, written as the layout's reader at boot reads it: Tails (quoted paths; options source=, \
link, file) or live-boot (options source=, bind, link, union, separated by commas or blanks). \
The volume must be unlocked: enabling a feature binds its folder at once, disabling one \
unbinds it (processes using it must close it first). Disabling never deletes data; \
`feature remove NAME --delete-data` does, for custom features. Two features whose folders are \
the same or one inside the other are refused (live-boot stops the boot on them).

Built-in features, in the order they are activated (Tails' order): persistent, bookmarks, \
greeter-settings, network-connections, tor-bridges, additional-software, printers, \
thunderbird, gnupg, electrum, pidgin, ssh-client, tor-state (tor's DataDirectory \
/var/lib/tor: entry guards, consensus cache, onion service keys; tor is stopped while it is \
bound or unbound, and started again; in the Tails layout its line is kept in keepsake.conf, \
which Tails does not read) and dotfiles last. Custom features come after them.

Examples:
  keepsake feature list
  keepsake feature enable dotfiles gnupg
  keepsake feature add projects --dest /home/amnesia/Projects
  keepsake feature add hosts --dest /etc/hosts --file
  keepsake --layout live-boot feature add srv --dest /srv --union
  keepsake feature disable gnupg";

const CREATE_HELP: &str = "\
With --device DISK, a new GPT partition is made in the \
largest free region after the live system's partitions; keepsake refuses, writing nothing, when \
DISK is a partition, has no GPT or no partitions, already has a persistence partition, has too \
little free space, is mounted (other than the live system read-only), or holds the running \
system. It is named TailsData with Tails' partition type (8DA63339-0007-60C0-C436-083AC8230908), \
or with --layout live-boot named persistence with the Linux filesystem type \
(0FC63DAF-8483-4772-8E79-3D69D8477DE4). It asks for confirmation unless --yes is given. With \
--image FILE, a container file of --size bytes is made instead (for live-boot to find it at \
boot, name it persistence, at the root of a partition).

The volume is LUKS2 (aes-xts-plain64, 512-bit key) with an ext4 filesystem labelled \
TailsData inside, and a persistence.conf as Tails writes it (owned by Tails' \
tails-persistent-storage account, 115:122, 0600) that enables the Persistent folder and \
Additional Software, as Tails does. Its argon2id keyslot has the cost Tails counts as up to \
date: min(RAM/2, 1 GiB) with 4 passes, or less when this machine cannot afford that now. \
With --layout live-boot the label is persistence, persistence.conf is root's (0600) and \
enables the Persistent folder, and the keyslot's cost is calibrated by libcryptsetup on this \
machine; a live-boot system uses the volume only when booted with \
`persistence persistence-encryption=luks`.

The container file is created sparse: its free space is not filled with random data, so the \
amount of data ever written can be estimated from the file.

Examples:
  keepsake create --device /dev/sdb
  keepsake create --device /dev/sdb --yes --passphrase-fd 3 3<passphrase.txt
  keepsake create --image /media/usb/keepsake.img --size 2G";

const UNLOCK_HELP: &str = "\
Without --device or --image, keepsake looks for the persistence partition (GPT partition name \
TailsData, or persistence with --layout live-boot, or a LUKS2 header labelled so) and prefers \
the one on the stick the live system booted from. With --layout live-boot, when none is \
found, it looks further as live-boot does: a container file named persistence at the root of \
a mounted partition (other than the live medium); else it reads the passphrase once and \
tries it on every LUKS partition or disk that is not open, opening each under its device \
name and keeping the one whose ext4 filesystem is labelled persistence; the others are \
closed again, and every device tried is reported with what came of it. A container file someone other than root could have written is never taken before such a device. \
--device DISK (a whole disk that is not itself LUKS) looks only there: for a partition with \
the name or label, else, with --layout live-boot, as live-boot does on that disk's \
partitions and the filesystems on them.

Who can write the volume's bytes decides what it may do. The live user knows the passphrase (it is typed in their session), so a container file they could have replaced is theirs, whatever owners it shows inside: one they own, or with a mode or ACL that lets them write, or in a folder they can write, or on a FUSE filesystem, one udisks mounted for them (/media/USER/...), or a vfat/exfat/ntfs stick mounted with their uid. Such a volume activates only the features that bind or link into the live user's home; the others (tor-state, additional software, network connections, printers, greeter settings, custom system paths, unions) are skipped with why, and the exit status is 9. No option changes this: keep system features on a partition (keepsake create --device) or in a container file only root can write. The file is opened once, judged as that open file, and that same file goes on the loop device that is opened. A volume whose data segment does not encrypt (cipher_null) or uses a cipher outside a short vetted list (aes, serpent or twofish in XTS, cbc-essiv:sha256, adiantum) is refused with exit 7.

Unlocking runs these steps, and undoes them if one fails: read the passphrase; open the \
volume (as /dev/mapper/TailsData_unlocked; with --layout live-boot as /dev/mapper/<device \
name>, a container file on a loop device as /dev/mapper/loopN, as live-boot names it); \
arm the watcher that wipes the key when the stick is pulled out (see keepsake watch \
--help; --on-removal says what else it does then; a watcher that cannot start is warned \
about, or with --require-watch fails the unlock with exit 6); check the filesystem \
(e2fsck -p); mount it at the mount root; activate each enabled feature (bind mounts are \
nosuid,nodev). A feature that cannot be activated is reported and skipped; the others are \
still activated, and the exit status is then 9.

Examples:
  keepsake unlock
  keepsake unlock --device /dev/sdb2 --key-file /run/keyfile --json
  keepsake --layout live-boot unlock --device /dev/sdb   # the stick the manual makes
  keepsake unlock --image /media/usb/keepsake.img";

const LOCK_HELP: &str = "\
Locking deactivates the features in reverse order, unmounts the volume, closes the mapping \
(dm-crypt wipes its copy of the key), releases the loop device of a container file and drops \
the page cache; then it checks that no mapping, mount or loop device of the volume remains. \
Overlay (union) mounts whose upper folder is in the volume are unmounted with the binds.

It locks volumes the system unlocked at boot as well as its own. Without --device it locks \
every unlocked volume of the layout (live-boot opens every persistence volume it finds, and \
the session's persistence is all of them), each with the same checks; --device DEV locks \
only that one, whatever its layout, and --device DISK the volumes on that disk. When only a volume of the other layout is unlocked, lock \
names it and exits 4, changing nothing. When the running system's root is a union on the \
volume (live-boot's `/ union`, full persistence), lock refuses before changing anything, \
with exit status 10: shut down instead.

When processes hold files of the volume open, or keep it mounted in a mount namespace of \
their own (chrooted or not), lock names them and stops with exit status 5, leaving everything \
mounted; --force detaches the volume in those namespaces where it can, ends those processes \
(SIGTERM, then SIGKILL) and locks.

--now is the panic command (for a keyboard shortcut): before anything else it wipes the \
volume key from the kernel (suspend, dm-crypt's key wipe, an error table in its place), so \
the volume is unreadable within milliseconds; then it locks as --force does. Whatever was \
not yet written to the stick is lost, and programs with files of the volume open get I/O \
errors until they are ended.";

const WATCH_HELP: &str = "\
unlock arms a watcher for the volume it opens; watch arms one for a volume that is already \
open: one the system unlocked at boot (Tails' Welcome Screen, live-boot), or one whose \
watcher was stopped. There is one watcher per volume; it stops when the volume is locked.

The watcher is a small root process, in a session of its own (no terminal, not sudo's \
child), with its whole code locked in memory, holding no passphrase or key (wiping needs \
none). It follows the kernel's device events (netlink; no udev needed) for the devices under \
the volume: its partition and that partition's stick, the loop device of a container file, \
and the partition and stick that hold the file. When one of them goes, it at once:
  1. wipes the volume key from the kernel: the mapping is suspended and dm-crypt told to \
wipe its key (as cryptsetup luksSuspend does), and an error table replaces it, so that \
nothing waits on the stick that is gone;
  2. detaches the volume's mounts and binds (nothing new is opened on it);
  3. with --on-removal end (the default) or shutdown, kills (SIGKILL) every process that \
holds files of the volume, in any mount namespace: their memory holds what they read;
  4. drops the page cache and removes the mapping (at once, or the moment the last process \
holding it lets go);
  5. reports it on the console and in the system log (kernel log and syslog), and in \
keepsake status;
  6. with --on-removal shutdown, powers the machine off at once, as Tails does when its boot \
stick is pulled; otherwise it removes the links into the volume (dotfiles).
None of these reads a disk or runs a program: when the stick also holds the live system, \
its files are gone with it. The key is wiped within milliseconds of the kernel noticing \
the removal (see the README for measurements).

What it does not do: it cannot take back what the session already copied elsewhere (files \
saved outside the volume, the clipboard, a program's memory when --on-removal wipe lets it \
run), and it protects nothing while the machine is off or after it was seized running with \
the stick still in. Unlike Tails' own emergency shutdown, which powers the whole machine off \
when its boot stick goes, the watcher wipes one volume and leaves the session running \
(unless --on-removal shutdown), and it does so for a container file or a second stick too.

Examples:
  keepsake watch                        # arm it for a volume unlocked at boot
  keepsake watch --on-removal shutdown
  keepsake status                       # says whether it is armed
  keepsake lock --now                   # the same wipe, from a keyboard shortcut";

const STATUS_HELP: &str = "\
Status shows every open persistence volume, of either layout, whether keepsake or the system \
(Tails' Welcome Screen, live-boot at boot) opened it.

JSON output (--json) is one object:
  {\"version\": 1, \"layout\": \"tails\", \"unlocked\": bool,
   \"volume\": null | {\"layout\", \"opened_at_boot\", \"mapping\", \"device\", \"backing\",
                     \"image\", \"mount_root\",
                     \"watch\": {\"armed\": bool, \"pid\", \"on_removal\", \"devices\": [name]},
                     \"keyslots\": [{\"keyslot\", \"role\", \"kdf\",
                                   \"cost\": {\"memory_kib\", \"iterations\", \"parallel\"}}]},
   \"features\": [{\"name\", \"source\", \"destination\", \"method\", \"enabled\",
                 \"active\", \"state\", \"error\"}],
   \"config_errors\": [{\"line\", \"reason\"}],
   \"tor\": {\"running\": bool, \"pids\": [int], \"state\": \"persistent\" | \"amnesic\"},
   \"kdf\": {\"mem_available_kib\", \"default_max_memory_kib\"},
   \"volumes\": [{...as volume, \"features\": [...], \"config_errors\": [...]}],
   \"wiped\": [{\"mapping\", \"trigger\", \"at\", \"key_wiped_ms\", \"key_error\", \"ended\",
               \"unmounted\", \"caches_dropped\", \"mapping_removed_ms\", \"links_removed\"}]}
\"volume\", \"features\" and \"config_errors\" describe the open volume of the layout (else \
the first open one); \"volumes\" lists every open volume, with the layout it was found under. \
\"watch\" says whether pulling the stick wipes the volume's key (see keepsake watch --help); \
\"wiped\" lists the volumes whose stick was pulled since they were unlocked, with what the \
watcher did and when (in ms after it heard of the removal).
A keyslot's role is \"passphrase\" or \"recovery\". default_max_memory_kib is the argon2id
memory ceiling a new keyslot gets here: half the available RAM, at most 1 GiB.";

/// Where a passphrase comes from, for scripts. Without either, it is asked on the terminal.
#[derive(Debug, Args, Clone, Default)]
pub struct PassphraseArgs {
    /// Read the passphrase from file descriptor N: one line, the newline is dropped.
    #[arg(long, value_name = "N", conflicts_with = "key_file")]
    pub passphrase_fd: Option<RawFd>,

    /// Read the key from FILE, whole and byte for byte (as `cryptsetup --key-file`).
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
}

/// Key-derivation cost. Lowering it makes guessing the passphrase cheaper: for tests only.
#[derive(Debug, Args, Clone, Default)]
#[command(next_help_heading = "Key derivation (testing only: lowers security)")]
pub struct KdfArgs {
    /// Use exactly this argon2id memory, in KiB, instead of the calibrated cost.
    #[arg(long, value_name = "KIB", requires = "pbkdf_force_iterations",
          value_parser = clap::value_parser!(u32).range(32..=4_194_304))]
    pub pbkdf_memory: Option<u32>,

    /// Use exactly this many argon2id iterations, without benchmark.
    #[arg(long, value_name = "N", requires = "pbkdf_memory",
          value_parser = clap::value_parser!(u32).range(4..))]
    pub pbkdf_force_iterations: Option<u32>,

    /// The most memory a calibrated argon2id keyslot may take, in KiB [default: half of
    /// the available RAM, at most 1 GiB]. Raise it for a stronger key on a big machine:
    /// every machine that unlocks the volume needs that much free RAM.
    #[arg(long, value_name = "KIB", conflicts_with = "pbkdf_memory", help_heading = "Key derivation",
          value_parser = clap::value_parser!(u32).range(32_768..=4_194_304))]
    pub pbkdf_max_memory: Option<u32>,

    /// argon2id threads with a fixed cost.
    #[arg(long, value_name = "N", default_value_t = 1, requires = "pbkdf_memory",
          value_parser = clap::value_parser!(u32).range(1..=16))]
    pub pbkdf_parallel: u32,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["image", "device"])))]
pub struct CreateArgs {
    /// The whole disk of the live stick (e.g. /dev/sdb): a TailsData partition is added.
    #[arg(long, value_name = "DISK")]
    pub device: Option<PathBuf>,

    /// A container file to create instead; it must not exist yet.
    #[arg(long, value_name = "FILE", requires = "size")]
    pub image: Option<PathBuf>,

    /// Size of the container file: bytes, or with a K, M, G or T suffix (powers of 1024).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, requires = "image", conflicts_with = "device")]
    pub size: Option<u64>,

    /// Do not ask for confirmation before partitioning.
    #[arg(long, short = 'y')]
    pub yes: bool,

    /// The live session's user, owner of the home folder features [default: the user
    /// with uid 1000].
    #[arg(long, value_name = "USER")]
    pub live_user: Option<String>,

    #[command(flatten)]
    pub passphrase: PassphraseArgs,

    #[command(flatten)]
    pub kdf: KdfArgs,
}

#[derive(Debug, Args)]
pub struct UnlockArgs {
    #[command(flatten)]
    pub volume: VolumeArgs,

    /// Read the recovery key instead of the passphrase (same sources).
    #[arg(long)]
    pub recovery_key: bool,

    /// Mount the volume here instead of the layout's mount point (for tests).
    #[arg(long, value_name = "DIR")]
    pub mount_root: Option<PathBuf>,

    /// The live session's user [default: the user with uid 1000].
    #[arg(long, value_name = "USER")]
    pub live_user: Option<String>,

    #[command(flatten)]
    pub watch: WatchOptions,

    #[command(flatten)]
    pub passphrase: PassphraseArgs,
}

/// How the watcher that wipes the key when the stick is pulled is armed.
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "When the stick is pulled")]
pub struct WatchOptions {
    /// What follows the key wipe: wipe (detach the volume only), end (also kill the
    /// processes holding its files), shutdown (end, then power off).
    #[arg(long, value_enum, value_name = "WHAT", default_value_t = OnRemoval::End)]
    pub on_removal: OnRemoval,

    /// Fail (exit 6, the volume closed again) when the watcher cannot be armed, instead of
    /// warning.
    #[arg(long)]
    pub require_watch: bool,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// What follows the key wipe: wipe, end or shutdown (see keepsake unlock --help).
    #[arg(long, value_enum, value_name = "WHAT", default_value_t = OnRemoval::End)]
    pub on_removal: OnRemoval,

    /// Arm it for this volume only: its partition, container file, loop device or
    /// /dev/mapper name [default: every unlocked volume of the layout].
    #[arg(long, value_name = "DEV", conflicts_with = "serve")]
    pub device: Option<PathBuf>,

    /// Be the watcher of this mapping (run by unlock and watch, never by hand).
    #[arg(long, value_name = "MAPPING", hide = true)]
    pub serve: Option<String>,
}

#[derive(Debug, Args)]
pub struct LockArgs {
    /// End the processes that hold files of the volume open (SIGTERM, then SIGKILL).
    #[arg(long)]
    pub force: bool,

    /// Lock only this volume: its partition, container file, loop device or
    /// /dev/mapper name; or the volumes on this disk [default: every unlocked volume of
    /// the layout].
    #[arg(long, value_name = "DEV")]
    pub device: Option<PathBuf>,

    /// Panic: wipe the volume key from the kernel first, at once, then lock as --force
    /// does. Data not yet written to the stick is lost.
    #[arg(long)]
    pub now: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {}

/// Parses "512M", "2G", "1073741824" (binary multiples).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, suffix) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (examples: 512M, 2G)"))?;
    let shift = match suffix.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(format!("{text:?} has an unknown unit (use K, M, G or T)")),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// The layouts as `--layout` names them. The library's `LayoutProfile` knows nothing of
/// clap: the command line's words for it live here.
impl ValueEnum for LayoutProfile {
    fn value_variants<'a>() -> &'a [Self] {
        &[LayoutProfile::Tails, LayoutProfile::LiveBoot]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(match self {
            LayoutProfile::Tails => PossibleValue::new("tails").help(
                "Tails Persistent Storage: partition and filesystem `TailsData`, unlocked as \
                 `TailsData_unlocked` and mounted at /live/persistence/TailsData_unlocked",
            ),
            LayoutProfile::LiveBoot => PossibleValue::new("live-boot").help(
                "Debian live-boot persistence: filesystem label `persistence`, mounted under \
                 /run/live/persistence",
            ),
        })
    }
}

/// Whether a command line that clap could not parse asked for --json: the flag is global, so
/// it may stand anywhere before a `--`.
pub fn asks_for_json(args: impl IntoIterator<Item = std::ffi::OsString>) -> bool {
    args.into_iter()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--json")
}

/// The message of a parse error on one line, without clap's "error: " and its usage block
/// (its first paragraph, e.g. "the following required arguments were not provided:
/// `--size <SIZE>`").
pub fn first_line(err: &clap::Error) -> String {
    let text = err.render().to_string();
    let paragraph: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|line| !line.is_empty())
        .collect();
    let message = paragraph.join(" ");
    message
        .strip_prefix("error: ")
        .unwrap_or(&message)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    thread_local! {
        /// Whether `Command`'s commands are completed at once instead of when built.
        pub(super) static BUILD_AT_ONCE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// The definition with every command completed before its parent is built, as the derive
    /// made it.
    fn built_at_once(command: fn() -> clap::Command) -> clap::Command {
        BUILD_AT_ONCE.with(|at_once| at_once.set(true));
        let cmd = command();
        BUILD_AT_ONCE.with(|at_once| at_once.set(false));
        cmd
    }

    /// Every command's words on the command line, nested ones included: ["feature", "add"].
    fn command_paths(cmd: &clap::Command, above: &[String], paths: &mut Vec<Vec<String>>) {
        for sub in cmd.get_subcommands() {
            let path: Vec<String> = above
                .iter()
                .cloned()
                .chain([sub.get_name().to_string()])
                .collect();
            command_paths(sub, &path, paths);
            paths.push(path);
        }
    }

    /// What parsing `args` with `cmd` shows: the error's text (help is one) and exit code.
    fn parse(mut cmd: clap::Command, args: &[&str]) -> Result<(), (String, i32)> {
        let args = std::iter::once("keepsake").chain(args.iter().copied());
        cmd.try_get_matches_from_mut(args)
            .map(drop)
            .map_err(|err| (err.render().to_string(), err.exit_code()))
    }

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn deferred_commands_build_as_when_built_at_once() {
        for command in [Cli::command, Cli::command_for_update] {
            let mut deferred = command();
            let mut at_once = built_at_once(command);
            deferred.build();
            at_once.build();
            // Every setting, argument (in its order), group and text of every command.
            assert_eq!(format!("{deferred:#?}"), format!("{at_once:#?}"));
        }
    }

    /// A command completed when the parser reaches it shows the same help, and turns down the
    /// same bad input, as the whole definition built at once.
    #[test]
    fn deferred_commands_parse_as_when_built_at_once() {
        let mut built = Cli::command();
        built.build();
        let mut paths = Vec::new();
        command_paths(&built, &[], &mut paths);
        assert_eq!(paths.len(), 24, "{paths:?}");
        for path in &paths {
            let words: Vec<&str> = path.iter().map(String::as_str).collect();
            let sub = words
                .iter()
                .try_fold(&mut built, |cmd, word| cmd.find_subcommand_mut(word))
                .unwrap();
            let (long, short) = (sub.render_long_help(), sub.render_help());
            for (flag, help) in [("--help", long.to_string()), ("-h", short.to_string())] {
                let args = [&words[..], &[flag]].concat();
                assert_eq!(parse(Cli::command(), &args), Err((help, 0)), "{args:?}");
            }
            for bad in [&["--bogus"][..], &["bogus"], &["--force"], &["--device"]] {
                let args = [&words[..], bad].concat();
                assert_eq!(
                    parse(Cli::command(), &args),
                    parse(built_at_once(Cli::command), &args),
                    "{args:?}"
                );
            }
        }
    }

    /// Settings no man page shows, pinned by the first line and exit code the derived
    /// definition gave (keepsake 247c4e9, as under --json).
    #[test]
    fn bad_command_lines_are_turned_down_as_before() {
        // The arguments, and the first line and exit code of the error (None: they parse).
        type Case = (&'static [&'static str], Option<(&'static str, i32)>);
        let cases: &[Case] = &[
            (&["bogus"], Some(("unrecognized subcommand 'bogus'", 2))),
            (&["help"], Some(("unrecognized subcommand 'help'", 2))),
            (
                &["lock", "--bogus"],
                Some(("unexpected argument '--bogus' found", 2)),
            ),
            (
                &["--force"],
                Some(("unexpected argument '--force' found", 2)),
            ),
            (
                &["status", "extra"],
                Some(("unexpected argument 'extra' found", 2)),
            ),
            (
                &["create"],
                Some((
                    "the following required arguments were not provided: \
                     <--image <FILE>|--device <DISK>>",
                    2,
                )),
            ),
            (
                &["feature"],
                Some((
                    "List, enable, disable, add and remove features (the folders that persist)",
                    2,
                )),
            ),
            (
                &["feature", "help"],
                Some(("unrecognized subcommand 'help'", 2)),
            ),
            (
                &["feature", "add", "x"],
                Some((
                    "the following required arguments were not provided: --dest <PATH>",
                    2,
                )),
            ),
            (
                &["passphrase"],
                Some((
                    "Change the passphrase; the volume key and the data stay as they are",
                    2,
                )),
            ),
            (
                &["recovery-key", "help"],
                Some(("unrecognized subcommand 'help'", 2)),
            ),
            (
                &["backup"],
                Some((
                    "the following required arguments were not provided: <FILE>",
                    2,
                )),
            ),
            // subcommand_negates_reqs: verify needs no FILE of backup's own.
            (&["backup", "verify", "x.ksb"], None),
            (
                &["backup", "verify"],
                Some((
                    "the following required arguments were not provided: <FILE>",
                    2,
                )),
            ),
            // args_conflicts_with_subcommands.
            (
                &["backup", "out.ksb", "verify", "x.ksb"],
                Some(("the subcommand 'verify' cannot be used with '[FILE]'", 2)),
            ),
            // A second stick instead of an archive: one or the other.
            (
                &["backup", "--to-device", "/dev/sdc", "out.ksb"],
                Some((
                    "the argument '--to-device <DEV>' cannot be used with '[FILE]'",
                    2,
                )),
            ),
            (
                &["backup", "--to-device", "/dev/sdc", "--feature", "gnupg"],
                Some((
                    "the argument '--to-device <DEV>' cannot be used with '--feature <NAME>'",
                    2,
                )),
            ),
            (
                &[
                    "backup",
                    "--to-device",
                    "/dev/sdc",
                    "--create",
                    "--size",
                    "1G",
                ],
                None,
            ),
            (
                &["restore"],
                Some((
                    "the following required arguments were not provided: <FILE>",
                    2,
                )),
            ),
            (
                &["unlock", "--device", "a", "--image", "b"],
                Some((
                    "the argument '--device <DEV>' cannot be used with '--image <FILE>'",
                    2,
                )),
            ),
        ];
        for (args, expected) in cases {
            let argv = std::iter::once("keepsake").chain(args.iter().copied());
            let got = Cli::try_parse_from(argv)
                .map(drop)
                .map_err(|err| (first_line(&err), err.exit_code()));
            let expected = match expected {
                None => Ok(()),
                Some((line, code)) => Err((line.to_string(), *code)),
            };
            assert_eq!(got, expected, "{args:?}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("1.5G").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999999T").is_err());
    }

    #[test]
    fn passphrase_sources_conflict() {
        let r = Cli::try_parse_from([
            "keepsake",
            "unlock",
            "--image",
            "x",
            "--passphrase-fd",
            "3",
            "--key-file",
            "k",
        ]);
        assert!(r.is_err());
    }

    #[test]
    fn create_needs_exactly_one_target() {
        assert!(Cli::try_parse_from(["keepsake", "create"]).is_err());
        assert!(Cli::try_parse_from(["keepsake", "create", "--device", "/dev/sdb"]).is_ok());
        assert!(Cli::try_parse_from(["keepsake", "create", "--image", "x"]).is_err());
        assert!(
            Cli::try_parse_from([
                "keepsake", "create", "--device", "d", "--image", "x", "--size", "1G"
            ])
            .is_err()
        );
        assert!(
            Cli::try_parse_from(["keepsake", "create", "--device", "d", "--size", "1G"]).is_err()
        );
    }

    #[test]
    fn kdf_flags_come_together() {
        assert!(
            Cli::try_parse_from([
                "keepsake",
                "create",
                "--image",
                "x",
                "--size",
                "64M",
                "--pbkdf-memory",
                "64"
            ])
            .is_err()
        );
        assert!(
            Cli::try_parse_from([
                "keepsake",
                "create",
                "--image",
                "x",
                "--size",
                "64M",
                "--pbkdf-memory",
                "64",
                "--pbkdf-force-iterations",
                "4"
            ])
            .is_ok()
        );
    }

    #[test]
    fn a_bad_command_line_asks_for_json_anywhere_before_the_separator() {
        let args =
            |list: &[&str]| -> Vec<std::ffi::OsString> { list.iter().map(|a| a.into()).collect() };
        assert!(asks_for_json(args(&[
            "keepsake", "lock", "--json", "--bogus"
        ])));
        assert!(asks_for_json(args(&["keepsake", "--json", "lock"])));
        // The first argument is the program's own name, never an option.
        assert!(!asks_for_json(args(&["--json", "lock"])));
        assert!(!asks_for_json(args(&[
            "keepsake", "restore", "--", "--json"
        ])));
        assert!(!asks_for_json(args(&["keepsake", "lock", "--jsonx"])));
    }
}
