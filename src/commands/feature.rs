//! `keepsake feature`: list, enable, disable, add and remove features of the unlocked
//! volume. persistence.conf is rewritten atomically, and the change takes effect at once;
//! when it cannot (a folder in use), the config is put back as it was.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::cli::{FeatureCommand, GlobalArgs};
use crate::error::{Error, Result};
use crate::output::Output;
use crate::persistence::config::{ConfigFile, Dialect, Entry, Method};
use crate::persistence::features::{CATALOGUE, Feature, SystemHost};
use crate::safefs::Dir;
use crate::session::unlocked::{self, Unlocked};

#[derive(Debug, Serialize)]
pub struct FeatureListing {
    pub name: String,
    pub title: String,
    pub builtin: bool,
    pub enabled: bool,
    pub active: bool,
    pub folders: Vec<FolderListing>,
}

#[derive(Debug, Serialize)]
pub struct FolderListing {
    pub source: PathBuf,
    pub destination: PathBuf,
    pub method: Method,
}

/// The unlocked volume, opened for reading and changing its features.
struct Open {
    unlocked: Unlocked,
    root: PathBuf,
    dir: Dir,
    config: ConfigFile,
    custom: ConfigFile,
    host: SystemHost,
}

impl Open {
    fn new(global: &GlobalArgs) -> Result<Open> {
        let (unlocked, root) = super::unlocked_volume(global)?;
        let dir = unlocked.volume_dir()?;
        let dialect = Dialect::from(unlocked.profile);
        let config =
            unlocked::read_config(&dir, dialect)?.unwrap_or_else(|| ConfigFile::new(dialect));
        let custom = unlocked::read_custom(&dir, dialect)?;
        Ok(Open {
            unlocked,
            root,
            dir,
            config,
            custom,
            host: SystemHost::new(None),
        })
    }

    /// The entries a feature name stands for: a built-in feature's bindings, or a custom
    /// feature's definition (name = source folder).
    fn entries_of(&self, name: &str) -> Result<Vec<Entry>> {
        if let Some(f) = Feature::by_name(name) {
            return Ok(f
                .bindings
                .iter()
                .map(|b| b.entry(&self.host))
                .collect::<Result<_, _>>()?);
        }
        let source = Path::new(name);
        self.config
            .find_source(source)
            .or_else(|| self.custom.find_source(source))
            .map(|e| vec![e.clone()])
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "no feature named {name}; see keepsake feature list"
                ))
            })
    }

    fn is_enabled(&self, entries: &[Entry]) -> bool {
        entries
            .iter()
            .all(|e| self.config.find_source(&e.source).is_some())
    }

    fn resolve(
        &self,
        entries: &[Entry],
    ) -> Result<Vec<crate::persistence::features::ResolvedEntry>> {
        Ok(entries
            .iter()
            .map(|e| crate::persistence::features::resolve(e, &self.host))
            .collect::<Result<_, _>>()?)
    }

    fn dev(&self) -> (u32, u32) {
        self.unlocked.mapping.dev
    }
}

pub fn run(global: &GlobalArgs, command: FeatureCommand, out: Output) -> Result<()> {
    super::require_root()?;
    match command {
        FeatureCommand::List => list(global, out),
        FeatureCommand::Enable { names } => {
            let _lock = super::exclusive()?;
            enable(&mut Open::new(global)?, &names, out)
        }
        FeatureCommand::Disable { names } => {
            let _lock = super::exclusive()?;
            disable(&mut Open::new(global)?, &names, out)
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
            add(&mut Open::new(global)?, &name, dest, method, out)
        }
        FeatureCommand::Remove {
            name,
            delete_data,
            yes,
        } => {
            let _lock = super::exclusive()?;
            remove(&mut Open::new(global)?, &name, delete_data, yes, out)
        }
    }
}

fn list(global: &GlobalArgs, out: Output) -> Result<()> {
    let open = Open::new(global)?;
    let mut listing = Vec::new();
    let mut described =
        |name: String, title: String, builtin: bool, entries: Vec<Entry>| -> Result<()> {
            let resolved = open.resolve(&entries)?;
            let states = unlocked::feature_states(
                &resolved,
                &open.unlocked.table,
                open.dev(),
                &open.root,
                None,
            );
            listing.push(FeatureListing {
                name,
                title,
                builtin,
                enabled: open.is_enabled(&entries),
                active: !states.is_empty() && states.iter().all(|s| s.active),
                folders: entries
                    .iter()
                    .map(|e| FolderListing {
                        source: e.source.clone(),
                        destination: e.destination.clone(),
                        method: e.method,
                    })
                    .collect(),
            });
            Ok(())
        };
    for f in CATALOGUE {
        let entries = f
            .bindings
            .iter()
            .map(|b| b.entry(&open.host))
            .collect::<Result<Vec<_>, _>>()?;
        described(f.name.to_string(), f.title.to_string(), true, entries)?;
    }
    let mut customs: Vec<Entry> = open
        .config
        .entries()
        .chain(open.custom.entries())
        .filter(|e| Feature::by_source(&e.source).is_none())
        .cloned()
        .collect();
    customs.sort_by(|a, b| a.source.cmp(&b.source));
    customs.dedup_by(|a, b| a.source == b.source);
    for e in customs {
        let name = e.source.display().to_string();
        described(
            name,
            format!("custom: {}", e.destination.display()),
            false,
            vec![e],
        )?;
    }
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
    let reports = enable_names(open, names)?;
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

/// Adds the features' lines to persistence.conf and activates them: all or nothing.
/// Returns the activated lines (none when all were enabled already).
fn enable_names(open: &mut Open, names: &[String]) -> Result<Vec<unlocked::FeatureReport>> {
    let before = open.config.clone();
    let mut added = Vec::new();
    for name in names {
        for e in open.entries_of(name)? {
            if open.config.find_source(&e.source).is_none() {
                // A source nested in another feature's is refused before anything changes
                // (live-boot stops the boot on it, and the outer folder's owner could
                // change the inner one).
                if let Some(why) = open.config.nesting_with(&e) {
                    open.config = before;
                    return Err(Error::Incomplete(format!(
                        "not enabled, nothing changed: {}: {why}",
                        e.destination.display()
                    )));
                }
                open.config
                    .add(e.clone())
                    .map_err(|why| Error::Usage(format!("cannot enable {name}: {why}")))?;
                added.push(e);
            }
        }
    }
    if added.is_empty() {
        return Ok(Vec::new());
    }
    let resolved = open.resolve(&added)?;
    unlocked::write_config(&open.dir, &open.config)?;
    let reports = unlocked::activate_entries(&open.dir, &open.root, open.dev(), &resolved)?;
    let failed: Vec<String> = reports
        .iter()
        .filter(|r| !r.active)
        .map(|r| {
            format!(
                "{}: {}",
                r.destination.display(),
                r.error.as_deref().unwrap_or("not activated")
            )
        })
        .collect();
    if !failed.is_empty() {
        let _ = unlocked::deactivate_entries(&open.dir, &open.root, open.dev(), &resolved);
        open.config = before;
        unlocked::write_config(&open.dir, &open.config)?;
        return Err(Error::Incomplete(format!(
            "not enabled, nothing changed: {}",
            failed.join("; ")
        )));
    }
    Ok(reports)
}

fn disable(open: &mut Open, names: &[String], out: Output) -> Result<()> {
    let changed = disable_names(open, names)?;
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

/// Deactivates the features and removes their lines from persistence.conf: all or
/// nothing. Returns whether anything was enabled.
fn disable_names(open: &mut Open, names: &[String]) -> Result<bool> {
    let mut removed = Vec::new();
    for name in names {
        for e in open.entries_of(name)? {
            if let Some(current) = open.config.find_source(&e.source).cloned() {
                removed.push(current);
            }
        }
    }
    if removed.is_empty() {
        return Ok(false);
    }
    let resolved = open.resolve(&removed)?;
    let tor = unlocked::deactivate_entries(&open.dir, &open.root, open.dev(), &resolved)?;
    // A custom feature keeps its definition, so that it can be enabled again.
    let mut custom_changed = false;
    for e in removed
        .iter()
        .filter(|e| Feature::by_source(&e.source).is_none())
    {
        if open.custom.find_source(&e.source).is_none() {
            open.custom.add(e.clone()).map_err(Error::Internal)?;
            custom_changed = true;
        }
    }
    let mut config = open.config.clone();
    for e in &removed {
        config.remove_source(&e.source);
    }
    let written = (|| {
        if custom_changed {
            unlocked::write_custom(&open.dir, &open.custom)?;
        }
        unlocked::write_config(&open.dir, &config)
    })();
    if let Err(e) = written {
        let _ = unlocked::activate_entries(&open.dir, &open.root, open.dev(), &resolved);
        return Err(e);
    }
    open.config = config;
    if let unlocked::TorRestart::Failed(e) = tor {
        return Err(Error::Incomplete(format!(
            "disabled, but tor did not start again: {e}"
        )));
    }
    Ok(true)
}

fn check_custom_name(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !valid {
        return Err(Error::Usage(format!(
            "{name:?} is not a feature name: use up to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )));
    }
    if Feature::by_name(name).is_some() || Feature::by_source(Path::new(name)).is_some() {
        return Err(Error::Usage(format!(
            "{name} is a built-in feature or folder; choose another name"
        )));
    }
    Ok(())
}

fn add(open: &mut Open, name: &str, dest: PathBuf, method: Method, out: Output) -> Result<()> {
    check_custom_name(name)?;
    let source = PathBuf::from(name);
    if open.custom.find_source(&source).is_some() || open.config.find_source(&source).is_some() {
        return Err(Error::Usage(format!(
            "a feature named {name} exists already"
        )));
    }
    let entry = Entry {
        destination: dest,
        source,
        method,
    };
    // Validated as persistence.conf would validate it, against both files.
    if let Some(why) = open.config.nesting_with(&entry) {
        return Err(Error::Incomplete(format!(
            "not added, nothing changed: {why}"
        )));
    }
    let mut probe = open.config.clone();
    probe
        .add(entry.clone())
        .map_err(|why| Error::Usage(format!("cannot add {name}: {why}")))?;
    let before = open.custom.clone();
    open.custom
        .add(entry)
        .map_err(|why| Error::Usage(format!("cannot add {name}: {why}")))?;
    unlocked::write_custom(&open.dir, &open.custom)?;
    if let Err(e) = enable_names(open, &[name.to_string()]) {
        // Not added at all when it cannot be activated.
        open.custom = before;
        unlocked::write_custom(&open.dir, &open.custom)?;
        return Err(e);
    }
    out.result(&serde_json::json!({"added": name, "enabled": true}), |_| {
        format!("added {name}: active")
    });
    Ok(())
}

fn remove(open: &mut Open, name: &str, delete_data: bool, yes: bool, out: Output) -> Result<()> {
    if Feature::by_name(name).is_some() {
        return Err(Error::Usage(format!(
            "{name} is built in; it can be disabled, not removed"
        )));
    }
    let entries = open.entries_of(name)?;
    if open.is_enabled(&entries) {
        disable_names(open, &[name.to_string()])?;
    }
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
    let source = PathBuf::from(name);
    open.custom.remove_source(&source);
    unlocked::write_custom(&open.dir, &open.custom)?;
    let mut deleted = false;
    if delete_data {
        // The folders on the way are the user's: reached and removed by handle.
        match crate::safefs::remove_tree(&open.dir, &source) {
            Ok(()) => deleted = true,
            Err(crate::safefs::Error::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
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
