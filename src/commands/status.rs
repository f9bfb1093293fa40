//! `keepsake status`: the session's state ([`crate::session::status`]), printed.

use crate::cli::{GlobalArgs, StatusArgs};
use crate::error::Result;
use crate::output::Output;
use crate::persistence::layout::LayoutProfile;
use crate::session::report::FeatureState;
use crate::session::status::{StatusReport, VolumeStatus};

pub fn run(global: &GlobalArgs, _args: StatusArgs, out: Output) -> Result<()> {
    super::require_root()?;
    let report = crate::session::status::status(global.layout, out)?;
    out.result(&report, human);
    Ok(())
}

fn volume_text(text: &mut String, vs: &VolumeStatus) {
    let v = &vs.volume;
    text.push_str(&format!(
        "unlocked: {} on {}{} ({} layout{})\nmounted at {}\n",
        v.mapping,
        v.backing
            .as_ref()
            .map_or_else(|| "?".into(), |b| b.display().to_string()),
        v.image
            .as_ref()
            .map(|i| format!(" ({})", i.display()))
            .unwrap_or_default(),
        match v.layout {
            LayoutProfile::Tails => "Tails",
            LayoutProfile::LiveBoot => "live-boot",
        },
        if v.opened_at_boot {
            ", opened at boot"
        } else {
            ""
        },
        v.mount_root
            .as_ref()
            .map_or_else(|| "(not mounted)".into(), |m| m.display().to_string()),
    ));
    let w = &v.watch;
    if w.armed {
        text.push_str(&format!(
            "  watched: pulling {} wipes the key (watcher pid {}, on removal: {})\n",
            w.devices
                .iter()
                .map(|d| format!("/dev/{d}"))
                .collect::<Vec<_>>()
                .join(" or "),
            w.pid.unwrap_or_default(),
            w.on_removal.map_or("?", |o| o.name())
        ));
    } else {
        text.push_str(
            "  NOT WATCHED: pulling the stick does not wipe the key (keepsake watch arms it)\n",
        );
    }
    if let Some(why) = &v.not_only_root {
        text.push_str(&format!(
            "  the live user's volume: someone other than root could have written it ({why}); only features in their home are activated\n"
        ));
    }
    for k in &v.keyslots {
        text.push_str(&format!(
            "  keyslot {}: {}, {} ({} MiB)\n",
            k.keyslot,
            match k.role {
                crate::volume::Role::Passphrase => "passphrase",
                crate::volume::Role::Recovery => "recovery key",
            },
            k.kdf,
            k.cost.memory_kib / 1024
        ));
    }
    for f in &vs.features {
        let state = match f.state {
            FeatureState::Active => "active",
            FeatureState::AtBoot => "at boot",
            FeatureState::Skipped => "skipped",
            FeatureState::Failed => "FAILED",
            FeatureState::Inactive if f.error.is_some() => "FAILED",
            FeatureState::Inactive => "inactive",
        };
        text.push_str(&format!(
            "  {:<24} {:<8} {}",
            f.name,
            state,
            f.destination.display()
        ));
        if let Some(e) = &f.error {
            text.push_str(&format!("  ({e})"));
        }
        text.push('\n');
    }
    for e in &vs.config_errors {
        text.push_str(&format!(
            "  persistence.conf line {}: {}\n",
            e.line, e.reason
        ));
    }
}

fn human(r: &StatusReport) -> String {
    let tor = match (r.tor.running, r.tor.state) {
        (true, state) => format!("tor: running on the {state} state\n"),
        (false, "persistent") => "tor: stopped (its persistent state is bound)\n".to_string(),
        (false, _) => String::new(),
    };
    let wiped: String = r
        .wiped
        .iter()
        .map(|w| format!("{}\n", crate::session::wipe::summary(w)))
        .collect();
    if r.volumes.is_empty() {
        return format!("locked: no volume is unlocked\n{wiped}{tor}");
    }
    let mut text = String::new();
    for vs in &r.volumes {
        volume_text(&mut text, vs);
    }
    text.push_str(&wiped);
    text.push_str(&tor);
    text
}
