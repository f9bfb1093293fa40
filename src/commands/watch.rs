//! `keepsake watch`: arms the watcher ([`crate::session::watch`]) of each open volume of
//! the layout, or of one; with the hidden `--serve MAPPING`, is that watcher.

use serde::Serialize;

use crate::cli::{GlobalArgs, WatchArgs};
use crate::error::{Error, Result};
use crate::output::Output;
use crate::session::watch::{self, Watch};
use crate::session::wipe::OnRemoval;

#[derive(Debug, Serialize)]
struct WatchReport {
    armed: Vec<Watch>,
    /// Volumes whose watcher was armed before this command.
    already: Vec<String>,
}

pub fn run(global: &GlobalArgs, args: WatchArgs, out: Output) -> Result<()> {
    super::require_root()?;
    if let Some(mapping) = &args.serve {
        return watch::serve(mapping, args.on_removal).map_err(Error::UnsafeHost);
    }
    let host = crate::host::Snapshot::read()?;
    let chosen = crate::session::lock::choose(
        crate::session::unlocked::Unlocked::find_all_in(&host),
        global.layout,
        args.device.as_deref(),
    )?;
    if chosen.is_empty() {
        return Err(crate::session::Error::NotUnlocked(
            "no volume is unlocked: nothing to watch".into(),
        )
        .into());
    }
    let mut report = WatchReport {
        armed: vec![],
        already: vec![],
    };
    for u in &chosen {
        let mapping = &u.mapping.name;
        if watch::status(mapping).armed {
            report.already.push(mapping.clone());
            continue;
        }
        report
            .armed
            .push(arm(mapping, args.on_removal, global.layout).map_err(|e| {
                Error::UnsafeHost(format!(
                    "/dev/mapper/{mapping}: the watcher could not be armed: {e}"
                ))
            })?);
    }
    out.result(&report, |r| {
        let mut text = String::new();
        for w in &r.armed {
            text.push_str(&format!("{}\n", armed_line(w)));
        }
        for m in &r.already {
            text.push_str(&format!("/dev/mapper/{m}: already watched\n"));
        }
        text
    });
    Ok(())
}

/// Arms the watcher of `mapping`, for this command's layout.
pub fn arm(
    mapping: &str,
    on_removal: OnRemoval,
    layout: crate::persistence::layout::LayoutProfile,
) -> std::result::Result<Watch, String> {
    // The layout as --layout names it, for the watcher's own command line.
    let layout = clap::ValueEnum::to_possible_value(&layout)
        .ok_or("the layout has no name on the command line")?;
    watch::arm(mapping, on_removal, layout.get_name())
}

/// "watching sdb2, sdb: …" for a human.
pub fn armed_line(w: &Watch) -> String {
    format!(
        "/dev/mapper/{}: watching {} (pid {}): removing any of them wipes the key{}",
        w.mapping,
        w.devices
            .iter()
            .map(|d| format!("/dev/{}", d.name))
            .collect::<Vec<_>>()
            .join(", "),
        w.pid,
        match w.on_removal {
            OnRemoval::Wipe => "",
            OnRemoval::End => " and ends the processes holding its files",
            OnRemoval::Shutdown => ", ends the processes holding its files and powers off",
        }
    )
}
