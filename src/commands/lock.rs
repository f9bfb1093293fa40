//! `keepsake lock`: the options, the session's lock ([`crate::session::lock`]), its report.

use crate::cli::{GlobalArgs, LockArgs};
use crate::error::Result;
use crate::output::Output;
use crate::session::lock::{LockOptions, LockReport};

pub fn run(global: &GlobalArgs, args: LockArgs, out: Output) -> Result<()> {
    super::require_root()?;
    let options = LockOptions {
        layout: global.layout,
        device: args.device,
        force: args.force,
        now: args.now,
    };
    let _lock = super::exclusive()?;
    let report = crate::session::lock::lock(&options, out)?;
    out.result(&report, human);
    Ok(report.leftovers_error()?)
}

fn human(r: &LockReport) -> String {
    if !r.was_unlocked {
        return "nothing is unlocked".to_string();
    }
    format!(
        "{}locked {}: {} mount(s) removed, mapping closed{}{}",
        r.keys_wiped_ms
            .map(|ms| format!("key(s) wiped from the kernel in {ms} ms; "))
            .unwrap_or_default(),
        r.volumes
            .iter()
            .map(|v| match &v.backing {
                Some(b) => format!("{} (/dev/mapper/{})", b.display(), v.mapping),
                None => format!("/dev/mapper/{}", v.mapping),
            })
            .collect::<Vec<_>>()
            .join(", "),
        r.unmounted.len(),
        if r.caches_dropped {
            ", page cache dropped"
        } else {
            ""
        },
        r.tor
            .as_ref()
            .map(|t| format!("; tor {t}"))
            .unwrap_or_default()
    )
}
