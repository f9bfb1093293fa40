//! `feature`: list, enable, disable, add and remove features of the unlocked volume.
//! persistence.conf is rewritten atomically, and the change takes effect at once; when it
//! cannot (a folder in use), the config is put back as it was.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::persistence::config::{ConfigFile, Dialect, Entry, Method};
use crate::persistence::features::{CATALOGUE, Feature, ResolvedEntry, SystemHost};
use crate::persistence::files;
use crate::persistence::layout::{Layout, LayoutProfile};
use crate::safefs::Dir;
use crate::session::error::{Error, Result};
use crate::session::lifecycle;
use crate::session::report::FeatureReport;
use crate::session::tor::TorRestart;
use crate::session::unlocked::Unlocked;

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
pub struct Open {
    unlocked: Unlocked,
    root: PathBuf,
    dir: Dir,
    pub config: ConfigFile,
    pub custom: ConfigFile,
    host: SystemHost,
}

impl Open {
    /// The unlocked volume of `layout`, with its config and custom features read.
    pub fn new(layout: LayoutProfile) -> Result<Open> {
        let (unlocked, root) = Unlocked::find_mounted(&Layout::new(layout, None))?;
        let dir = unlocked.volume_dir()?;
        let dialect = Dialect::from(unlocked.profile);
        let config = files::read_config(&dir, dialect)?.unwrap_or_else(|| ConfigFile::new(dialect));
        let custom = files::read_custom(&dir, dialect)?;
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
    pub fn entries_of(&self, name: &str) -> Result<Vec<Entry>> {
        if let Some(f) = Feature::by_name(name) {
            return f
                .bindings
                .iter()
                .map(|b| b.entry(&self.host).map_err(Error::from))
                .collect();
        }
        let source = Path::new(name);
        self.config
            .find_source(source)
            .or_else(|| self.custom.find_source(source))
            .map(|e| vec![e.clone()])
            .ok_or_else(|| {
                Error::NoSuchFeature(format!(
                    "no feature named {name}; see keepsake feature list"
                ))
            })
    }

    pub fn is_enabled(&self, entries: &[Entry]) -> bool {
        entries
            .iter()
            .all(|e| self.config.find_source(&e.source).is_some())
    }

    fn resolve(&self, entries: &[Entry]) -> Result<Vec<ResolvedEntry>> {
        entries
            .iter()
            .map(|e| crate::persistence::features::resolve(e, &self.host).map_err(Error::from))
            .collect()
    }

    fn dev(&self) -> (u32, u32) {
        self.unlocked.mapping.dev
    }
}

/// Every built-in feature, then every custom one (enabled or only defined), with whether
/// it is enabled and active.
pub fn list(open: &Open) -> Result<Vec<FeatureListing>> {
    let mut listing = Vec::new();
    let mut described =
        |name: String, title: String, builtin: bool, entries: Vec<Entry>| -> Result<()> {
            let resolved = open.resolve(&entries)?;
            let states = lifecycle::feature_states(
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
            .map(|b| b.entry(&open.host).map_err(Error::from))
            .collect::<Result<Vec<_>>>()?;
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
    Ok(listing)
}

/// Adds the features' lines to persistence.conf and activates them: all or nothing.
/// Returns the activated lines (none when all were enabled already).
pub fn enable(open: &mut Open, names: &[String]) -> Result<Vec<FeatureReport>> {
    let before = open.config.clone();
    let mut added = Vec::new();
    let images = crate::host::mounts::live_boot_images();
    for name in names {
        for e in open.entries_of(name)? {
            if open.config.find_source(&e.source).is_none() {
                // A source nested in another feature's is refused before anything changes
                // (live-boot stops the boot on it, and the outer folder's owner could
                // change the inner one).
                if let Some(why) = open
                    .config
                    .nesting_with(&e)
                    .or_else(|| ConfigFile::union_without_image_folder(&e, &images, Path::is_dir))
                {
                    open.config = before;
                    return Err(Error::NotApplied(format!(
                        "not enabled, nothing changed: {}: {why}",
                        e.destination.display()
                    )));
                }
                open.config
                    .add(e.clone())
                    .map_err(|why| Error::BadFeature(format!("cannot enable {name}: {why}")))?;
                added.push(e);
            }
        }
    }
    if added.is_empty() {
        return Ok(Vec::new());
    }
    // A volume someone other than root could have written gets nothing outside the live
    // user's home: refused before anything changes.
    let writers = open.unlocked.writers();
    let home = open.host.live_user.as_ref().ok().map(|u| u.home.clone());
    if let Some(why) = added.iter().find_map(|e| {
        crate::session::trust::refuse_on_a_volume_not_roots(&writers, e, home.as_deref())
    }) {
        open.config = before;
        return Err(Error::UntrustedSource(why.replacen(
            "not activated",
            "not enabled, nothing changed",
            1,
        )));
    }
    let resolved = open.resolve(&added)?;
    files::write_config(&open.dir, &open.config)?;
    let reports = lifecycle::activate_features(
        &open.dir,
        &open.root,
        open.dev(),
        &resolved,
        &open.unlocked.table,
    )?;
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
        let _ = lifecycle::deactivate_features(&open.dir, &open.root, open.dev(), &resolved);
        open.config = before;
        files::write_config(&open.dir, &open.config)?;
        return Err(Error::NotApplied(format!(
            "not enabled, nothing changed: {}",
            failed.join("; ")
        )));
    }
    Ok(reports)
}

/// Deactivates the features and removes their lines from persistence.conf: all or
/// nothing. Returns whether anything was enabled.
pub fn disable(open: &mut Open, names: &[String]) -> Result<bool> {
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
    let tor = lifecycle::deactivate_features(&open.dir, &open.root, open.dev(), &resolved)?;
    // A custom feature keeps its definition, so that it can be enabled again.
    let mut custom_changed = false;
    for e in removed
        .iter()
        .filter(|e| Feature::by_source(&e.source).is_none())
    {
        if open.custom.find_source(&e.source).is_none() {
            open.custom.add(e.clone()).map_err(Error::Unexpected)?;
            custom_changed = true;
        }
    }
    let mut config = open.config.clone();
    for e in &removed {
        config.remove_source(&e.source);
    }
    let written = (|| {
        if custom_changed {
            files::write_custom(&open.dir, &open.custom)?;
        }
        files::write_config(&open.dir, &config)
    })();
    if let Err(e) = written {
        // A rollback, planned against the table as it is now (it changed since the volume
        // was found); without a table to plan against, none is tried, as before.
        if let Ok(table) = crate::host::mounts::read_mountinfo() {
            let _ =
                lifecycle::activate_features(&open.dir, &open.root, open.dev(), &resolved, &table);
        }
        return Err(e.into());
    }
    open.config = config;
    if let TorRestart::Failed(e) = tor {
        return Err(Error::NotApplied(format!(
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
        return Err(Error::BadFeature(format!(
            "{name:?} is not a feature name: use up to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )));
    }
    if Feature::by_name(name).is_some() || Feature::by_source(Path::new(name)).is_some() {
        return Err(Error::BadFeature(format!(
            "{name} is a built-in feature or folder; choose another name"
        )));
    }
    Ok(())
}

/// Defines a custom feature (keepsake-features.conf) and enables it; not added at all
/// when it cannot be activated.
pub fn add(open: &mut Open, name: &str, dest: PathBuf, method: Method) -> Result<()> {
    check_custom_name(name)?;
    let source = PathBuf::from(name);
    if open.custom.find_source(&source).is_some() || open.config.find_source(&source).is_some() {
        return Err(Error::BadFeature(format!(
            "a feature named {name} exists already"
        )));
    }
    let entry = Entry {
        destination: dest,
        source,
        method,
    };
    // Validated as persistence.conf would validate it, against both files, and as
    // live-boot would take it at the next boot, before anything is written.
    let images = crate::host::mounts::live_boot_images();
    if let Some(why) = open
        .config
        .nesting_with(&entry)
        .or_else(|| ConfigFile::union_without_image_folder(&entry, &images, Path::is_dir))
    {
        return Err(Error::NotApplied(format!(
            "not added, nothing changed: {why}"
        )));
    }
    let mut probe = open.config.clone();
    probe
        .add(entry.clone())
        .map_err(|why| Error::BadFeature(format!("cannot add {name}: {why}")))?;
    let before = open.custom.clone();
    open.custom
        .add(entry)
        .map_err(|why| Error::BadFeature(format!("cannot add {name}: {why}")))?;
    files::write_custom(&open.dir, &open.custom)?;
    if let Err(e) = enable(open, &[name.to_string()]) {
        // Not added at all when it cannot be activated.
        open.custom = before;
        files::write_custom(&open.dir, &open.custom)?;
        return Err(e);
    }
    Ok(())
}

/// Before removing a custom feature: refused for a built-in one; disabled first.
pub fn prepare_removal(open: &mut Open, name: &str) -> Result<()> {
    if Feature::by_name(name).is_some() {
        return Err(Error::BadFeature(format!(
            "{name} is built in; it can be disabled, not removed"
        )));
    }
    let entries = open.entries_of(name)?;
    if open.is_enabled(&entries) {
        disable(open, &[name.to_string()])?;
    }
    Ok(())
}

/// Forgets a (disabled) custom feature's definition, and deletes its folder from the
/// volume if `delete_data`. Returns whether data was deleted.
pub fn remove(open: &mut Open, name: &str, delete_data: bool) -> Result<bool> {
    let source = PathBuf::from(name);
    open.custom.remove_source(&source);
    files::write_custom(&open.dir, &open.custom)?;
    if delete_data {
        // The folders on the way are the user's: reached and removed by handle.
        match crate::safefs::remove_tree(&open.dir, &source) {
            Ok(()) => return Ok(true),
            Err(crate::safefs::Error::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(false)
}
