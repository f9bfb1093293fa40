//! One function per command: each checks its inputs, does its work through the library
//! modules, and returns a report for [`crate::output::Output`].

mod create;
mod feature;
mod lock;
mod status;
mod unlock;

use std::path::Path;

use crate::cli::{Cli, Command, GlobalArgs, PassphraseArgs};
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::output::Output;
use crate::preflight::{self, Overrides};
use crate::secrets::{self, Secret, SecretSource};

pub fn run(cli: Cli) -> Result<()> {
    let out = Output {
        json: cli.global.json,
    };
    match cli.command {
        Command::Create(args) => create::run(&cli.global, args, out),
        Command::Unlock(args) => unlock::run(&cli.global, args, out),
        Command::Lock(args) => lock::run(&cli.global, args, out),
        Command::Status(args) => status::run(&cli.global, args, out),
        Command::Feature(command) => feature::run(&cli.global, command, out),
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
    let findings = preflight::run(&overrides(global), volume_file)?;
    for warning in preflight::enforce(&findings)? {
        out.warn(warning);
    }
    let hardening = secrets::harden_process()?;
    for warning in &hardening.warnings {
        out.warn(warning);
    }
    let source = SecretSource::from_options(args.passphrase_fd, args.key_file.as_deref());
    secrets::read_secret(&source, prompt, confirm)
}

/// One keepsake command at a time changes volumes: held for the life of the command.
pub fn exclusive() -> Result<nix::fcntl::Flock<std::fs::File>> {
    use std::os::unix::fs::OpenOptionsExt;
    let (dir, _) = crate::safefs::open_dir(
        Path::new(crate::layout::RUNTIME_DIR),
        Some(crate::safefs::Owner {
            uid: 0,
            gid: 0,
            mode: 0o700,
        }),
    )?;
    let path = dir.path.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| Error::Io {
            context: format!("opening {}", path.display()),
            source: e,
        })?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(
        |(_, errno)| match errno {
            nix::errno::Errno::EWOULDBLOCK => {
                Error::Busy("another keepsake command is running; try again when it is done".into())
            }
            e => Error::Io {
                context: format!("locking {}", path.display()),
                source: e.into(),
            },
        },
    )
}

pub fn layout(global: &GlobalArgs, mount_root: Option<&Path>) -> Layout {
    Layout::new(global.layout, mount_root)
}
