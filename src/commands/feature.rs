//! `keepsake feature`: the subcommand's options, the session's feature handling
//! ([`crate::session::features`]), one report.

use std::path::PathBuf;

use crate::cli::{FeatureCommand, GlobalArgs};
use crate::error::{Error, Result};
use crate::output::Output;
use crate::persistence::config::Method;
use crate::session::features::{self, Open};

pub fn run(global: &GlobalArgs, command: FeatureCommand, out: Output) -> Result<()> {
    super::require_root()?;
    match command {
        FeatureCommand::List => list(&Open::new(global.layout)?, out),
        FeatureCommand::Enable { names } => {
            let _lock = super::exclusive()?;
            enable(&mut Open::new(global.layout)?, &names, out)
        }
        FeatureCommand::Disable { names } => {
            let _lock = super::exclusive()?;
            disable(&mut Open::new(global.layout)?, &names, out)
        }
        FeatureCommand::Add {
            name,
            dest,
            link,
            file,
            union,
        } => {
            let _lock = super::exclusive()?;
            let method = match (link, file, union) {
                (true, _, _) => Method::Link,
                (_, true, _) => Method::File,
                (_, _, true) => Method::Union,
                _ => Method::Bind,
            };
            add(&mut Open::new(global.layout)?, &name, dest, method, out)
        }
        FeatureCommand::Remove {
            name,
            delete_data,
            yes,
        } => {
            let _lock = super::exclusive()?;
            remove(&mut Open::new(global.layout)?, &name, delete_data, yes, out)
        }
    }
}

fn list(open: &Open, out: Output) -> Result<()> {
    let listing = features::list(open)?;
    out.result(&listing, |l| {
        let mut text = String::new();
        for f in l {
            let state = match (f.enabled, f.active) {
                (true, true) => "active",
                (true, false) => "enabled",
                _ => "-",
            };
            text.push_str(&format!("{:<22} {:<8} {}\n", f.name, state, f.title));
        }
        text
    });
    Ok(())
}

fn enable(open: &mut Open, names: &[String], out: Output) -> Result<()> {
    let reports = features::enable(open, names)?;
    let changed = !reports.is_empty();
    out.result(
        &serde_json::json!({"enabled": names, "changed": changed, "features": reports}),
        |_| {
            if changed {
                format!("enabled and active: {}", names.join(", "))
            } else {
                format!("already enabled: {}", names.join(", "))
            }
        },
    );
    Ok(())
}

fn disable(open: &mut Open, names: &[String], out: Output) -> Result<()> {
    let changed = features::disable(open, names)?;
    out.result(
        &serde_json::json!({"disabled": names, "changed": changed}),
        |_| {
            if changed {
                format!("disabled (data kept in the volume): {}", names.join(", "))
            } else {
                format!("already disabled: {}", names.join(", "))
            }
        },
    );
    Ok(())
}

fn add(open: &mut Open, name: &str, dest: PathBuf, method: Method, out: Output) -> Result<()> {
    features::add(open, name, dest, method)?;
    out.result(&serde_json::json!({"added": name, "enabled": true}), |_| {
        format!("added {name}: active")
    });
    Ok(())
}

fn remove(open: &mut Open, name: &str, delete_data: bool, yes: bool, out: Output) -> Result<()> {
    features::prepare_removal(open, name)?;
    if delete_data
        && !yes
        && !out.confirm(&format!(
            "Delete the folder {name} and everything in it from the volume? Type yes"
        ))?
    {
        return Err(Error::Usage(
            "not confirmed; the feature is disabled, its data kept".into(),
        ));
    }
    let deleted = features::remove(open, name, delete_data)?;
    out.result(
        &serde_json::json!({"removed": name, "data_deleted": deleted}),
        |_| {
            if deleted {
                format!("removed {name} and deleted its data")
            } else {
                format!("removed {name}; its data stays in the volume")
            }
        },
    );
    Ok(())
}
