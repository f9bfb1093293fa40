//! One function per command: each checks its inputs, does its work through the library
//! modules, and returns a report for [`crate::output::Output`].

mod create;
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

pub fn layout(global: &GlobalArgs, mount_root: Option<&Path>) -> Layout {
    Layout::new(global.layout, mount_root)
}
