//! `keepsake unlock`: passphrase → open → fsck → mount → activate features.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::cli::{GlobalArgs, UnlockArgs};
use crate::error::{Error, Result};
use crate::host::mounts;
use crate::host::writers::LiveIds;
use crate::output::Output;
use crate::persistence::layout::Layout;
use crate::session::report::FeatureState;
use crate::session::unlock::Started;
use crate::volume::{self, open};

#[derive(Debug, Serialize)]
struct UnlockReport {
    backing: PathBuf,
    mapping: String,
    mount_root: PathBuf,
    keyslot: u32,
    #[serde(flatten)]
    session: Started,
    /// The devices tried when the volume was looked for as live-boot looks for it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tried: Vec<open::TriedDevice>,
    /// The watcher that wipes the key when the stick is pulled, if it armed.
    watch: Option<crate::session::watch::Watch>,
    /// Why it did not arm.
    #[serde(skip_serializing_if = "Option::is_none")]
    watch_error: Option<String>,
}

/// What `keepsake unlock` was asked to do, in plain values.
struct UnlockConfig {
    /// The layout, with --mount-root applied.
    profile: Layout,
    /// Whether the recovery key is typed instead of a passphrase.
    recovery_key: bool,
    live_user: Option<String>,
    watch: crate::cli::WatchOptions,
}

pub fn run(global: &GlobalArgs, args: UnlockArgs, out: Output) -> Result<()> {
    super::require_root()?;
    crate::host::kernel::require_dm_crypt("unlocking a volume")?;
    let config = UnlockConfig {
        profile: super::layout(global, args.mount_root.as_deref()),
        recovery_key: args.recovery_key,
        live_user: args.live_user.clone(),
        watch: args.watch.clone(),
    };
    // The mounts and block devices, read once: every check below looks at these.
    let host = crate::host::Snapshot::read()?;
    let mut read_secret = |backing: &Path| {
        read_unlock_secret(global, &args, config.recovery_key, out, backing, &host)
    };
    unlock(&config, &host, &args.volume, &mut read_secret, out)
}

fn unlock(
    config: &UnlockConfig,
    host: &crate::host::Snapshot,
    volume_args: &crate::cli::VolumeArgs,
    read_secret: &mut dyn FnMut(&Path) -> Result<crate::secrets::Secret>,
    out: Output,
) -> Result<()> {
    let profile = &config.profile;
    let open: Vec<_> = crate::session::unlocked::Unlocked::find_all_in(host)
        .into_iter()
        .filter(|u| u.profile == profile.profile)
        .collect();
    if !open.is_empty() {
        return Err(Error::Busy(format!(
            "already unlocked: {}; run keepsake lock first",
            crate::session::unlocked::describe_all(&open)
        )));
    }
    let _lock = super::exclusive()?;
    let live = LiveIds::of_this_system(config.live_user.as_deref());
    let opened = match super::locate(volume_args, profile)? {
        super::Located::Volume(backing) => {
            open::open_at(profile, host, backing, &live, read_secret, out)?
        }
        super::Located::Unnamed { scope, not_found } => {
            open::find_as_live_boot(profile, host, &scope, &not_found, &live, read_secret, out)?
        }
    };
    let layout = &opened.layout;
    // Armed before anything of the volume shows in the session: from then on, pulling the
    // stick wipes the key. A volume that cannot be watched is closed again on request.
    let (watch, watch_error) = match super::watch::arm(
        &layout.mapping,
        config.watch.on_removal,
        profile.profile,
    ) {
        Ok(w) => (Some(w), None),
        Err(why) if config.watch.require_watch => {
            let _ = volume::deactivate(&layout.mapping);
            return Err(Error::UnsafeHost(format!(
                "the watcher could not be armed ({why}); --require-watch: the volume was closed again"
            )));
        }
        Err(why) => {
            out.warn(format!(
                    "WARNING: pulling the stick will NOT wipe the key: the watcher could not be armed ({why}); keepsake watch tries again"
                ));
            (None, Some(why))
        }
    };
    match crate::session::unlock::start(
        layout,
        &opened.backing,
        config.live_user.as_deref(),
        &opened.writers,
        &host.mounts,
        out,
    ) {
        Ok(session) => finish(
            UnlockReport {
                backing: opened.backing.clone(),
                mapping: layout.mapping.clone(),
                mount_root: layout.mount_root.clone(),
                keyslot: opened.keyslot,
                session,
                tried: opened.tried,
                watch,
                watch_error,
            },
            out,
        ),
        Err(e) => {
            // Nothing half-open is left behind: unmount if mounted, close the mapping (a
            // loop device keepsake attached goes with it: autoclear).
            let _ = mounts::unmount(&layout.mount_root);
            let _ = volume::deactivate(&layout.mapping);
            Err(e.into())
        }
    }
}

/// The passphrase, or the recovery key typed in any form, read the safe way.
fn read_unlock_secret(
    global: &GlobalArgs,
    args: &UnlockArgs,
    recovery_key: bool,
    out: Output,
    backing: &Path,
    host: &crate::host::Snapshot,
) -> Result<crate::secrets::Secret> {
    let prompt = if recovery_key {
        "Recovery key"
    } else {
        "Passphrase"
    };
    let typed = super::read_secret_checked(
        global,
        &args.passphrase,
        out,
        prompt,
        false,
        Some(backing),
        &host.mounts,
    )?;
    if recovery_key {
        Ok(crate::volume::recovery::normalize(&typed)?)
    } else {
        Ok(typed)
    }
}

fn finish(report: UnlockReport, out: Output) -> Result<()> {
    for w in report
        .session
        .warnings
        .iter()
        .chain(&report.session.config_refused)
    {
        out.warn(w);
    }
    for e in &report.session.config_errors {
        out.warn(format!(
            "persistence.conf line {}: {}; that feature is skipped",
            e.line, e.reason
        ));
    }
    let problems: Vec<String> = report
        .session
        .features
        .iter()
        .filter(|f| matches!(f.state, FeatureState::Failed | FeatureState::Skipped))
        .map(|f| {
            format!(
                "{}: {}",
                f.name,
                f.error.as_deref().unwrap_or("not activated")
            )
        })
        .collect();
    let config_refused = report.session.config_refused.is_some();
    out.result(&report, |r| {
        let mut text = format!(
            "unlocked {} at {} (keyslot {})\n",
            r.backing.display(),
            r.mount_root.display(),
            r.keyslot
        );
        for t in &r.tried {
            text.push_str(&format!("  tried {}: {}\n", t.device.display(), t.outcome));
        }
        if let Some(w) = &r.watch {
            text.push_str(&format!("  {}\n", super::watch::armed_line(w)));
        }
        for f in &r.session.features {
            let state = match f.state {
                FeatureState::Active => "active",
                FeatureState::Failed => "FAILED",
                FeatureState::Skipped => "skipped",
                FeatureState::Inactive => "inactive",
                FeatureState::AtBoot => "at boot",
            };
            text.push_str(&format!(
                "  {:<24} {:<8} {}\n",
                f.name,
                state,
                f.destination.display()
            ));
        }
        text
    });
    if !problems.is_empty() || !report.session.config_errors.is_empty() || config_refused {
        let mut parts = problems;
        if !report.session.config_errors.is_empty() {
            parts.push(format!(
                "{} bad line(s) in persistence.conf",
                report.session.config_errors.len()
            ));
        }
        if config_refused {
            parts.push("persistence.conf was refused".into());
        }
        return Err(Error::Incomplete(format!(
            "unlocked, but not every feature is active: {}",
            parts.join("; ")
        )));
    }
    Ok(())
}
