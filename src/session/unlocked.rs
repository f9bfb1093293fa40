//! The unlocked volume as the running system shows it: its mapping and its mount, found
//! again from the kernel's own tables (so no stale state file can mislead `status`, `lock`
//! or `feature`), and its config files (persistence.conf, keepsake.conf, custom
//! features), read and written with the checks their readers make.

use std::path::{Path, PathBuf};

use crate::context::Context;
use crate::host::devices::{self, Mapping};
use crate::host::mounts::Mount;
use crate::host::writers::{self, LiveIds, Writers};
use crate::persistence::config::Dialect;
use crate::persistence::features::{self, Host};
use crate::persistence::files;
use crate::persistence::layout::{Layout, LayoutProfile};
use crate::safefs::{self, Dir, Owner};
use crate::session::error::{Error, Result};
use crate::session::trust;

/// An open persistence volume, and where its filesystem is mounted, if it is.
#[derive(Clone, Debug)]
pub struct Unlocked {
    /// The layout it was found under.
    pub profile: LayoutProfile,
    pub mapping: Mapping,
    pub mount_root: Option<PathBuf>,
    pub table: Vec<Mount>,
}

impl Unlocked {
    /// The open volume of this layout, whoever opened it: keepsake, or the system at boot
    /// (Tails' Welcome Screen, live-boot). Several open live-boot volumes (live-boot opens
    /// every one it finds) are a usage error here, naming them.
    pub fn find(layout: &Layout) -> Result<Option<Unlocked>> {
        let mut found: Vec<Unlocked> = Unlocked::find_all()?
            .into_iter()
            .filter(|u| u.profile == layout.profile)
            .collect();
        if found.len() > 1 {
            return Err(Error::Ambiguous(format!(
                "several volumes are unlocked: {}; lock the others first (keepsake lock --device DEV)",
                describe_all(&found)
            )));
        }
        Ok(found.pop())
    }

    /// The open volume of this layout and where it is mounted, or why there is none.
    pub fn find_mounted(layout: &Layout) -> Result<(Unlocked, PathBuf)> {
        let unlocked = Unlocked::find(layout)?.ok_or_else(|| {
            Error::NotUnlocked("no volume is unlocked; run keepsake unlock first".into())
        })?;
        let root = unlocked.mount_root.clone().ok_or_else(|| {
            Error::NotUnlocked(
                "the volume is open but not mounted; lock and unlock it again".into(),
            )
        })?;
        Ok((unlocked, root))
    }

    /// Every open persistence volume of either layout, from the kernel's tables
    /// ([`crate::volume::discovery::open_volumes`]), keepsake's runtime records vouching only for
    /// the live-boot mappings keepsake opened itself.
    pub fn find_all() -> Result<Vec<Unlocked>> {
        Ok(Unlocked::find_all_in(&crate::host::Snapshot::read()?))
    }

    /// [`Unlocked::find_all`] in the tables a command read when it started.
    pub fn find_all_in(host: &crate::host::Snapshot) -> Vec<Unlocked> {
        let table = &host.mounts;
        let recorded: Vec<(LayoutProfile, String)> =
            [LayoutProfile::Tails, LayoutProfile::LiveBoot]
                .into_iter()
                .filter_map(|p| {
                    let r = crate::session::record::read_record(&Layout::new(p, None))?;
                    (!r.mapping.is_empty()).then_some((p, r.mapping))
                })
                .collect();
        crate::volume::discovery::open_volumes(&host.mappings, table, &recorded)
            .into_iter()
            .map(|v| Unlocked {
                profile: v.profile,
                mapping: v.mapping,
                mount_root: v.mount_root,
                table: table.clone(),
            })
            .collect()
    }

    /// `/dev/mapper/NAME (layout)`, for messages.
    pub fn describe(&self) -> String {
        format!(
            "/dev/mapper/{} ({} layout{})",
            self.mapping.name,
            match self.profile {
                LayoutProfile::Tails => "Tails",
                LayoutProfile::LiveBoot => "live-boot",
            },
            self.backing()
                .map(|b| format!(", on {}", b.display()))
                .unwrap_or_default()
        )
    }

    /// The file or device under the mapping: the loop device's backing file for a container.
    pub fn backing(&self) -> Option<PathBuf> {
        let slave = self.mapping.slaves.first()?;
        Some(devices::loop_backing_file(slave).unwrap_or_else(|| devices::dev_path(slave)))
    }

    /// Who could have written this volume's bytes, from the kernel's own facts: the one
    /// device under its mapping, and for a loop device the file under it. (At unlock the
    /// open container file itself was judged; this is for the commands after it.)
    pub fn writers(&self) -> Writers {
        let live = LiveIds::of_this_system(None);
        match self.mapping.slaves.as_slice() {
            [one] => writers::judge_backing(&devices::dev_path(one), &self.table, &live),
            _ => Writers::NotOnlyRoot(format!(
                "the mapping {} does not sit on one device keepsake can judge",
                self.mapping.name
            )),
        }
    }

    pub fn volume_dir(&self) -> Result<Dir> {
        let root = self.mount_root.as_ref().ok_or_else(|| {
            Error::NotUnlocked(format!(
                "the mapping {} is open but not mounted",
                self.mapping.name
            ))
        })?;
        Ok(safefs::open_dir(root, None)?.0)
    }
}

/// The volumes, for messages.
pub fn describe_all(volumes: &[Unlocked]) -> String {
    volumes
        .iter()
        .map(Unlocked::describe)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Removes from the volume's persistence.conf every line that activation would refuse as
/// one the live user could turn against the system: a source nested in another's, or a
/// source outside the home that the live user can change ([`trust::refuse_an_untrusted_source`]).
/// Returns the lines dropped, each with why. (For a config that came from elsewhere: a
/// restored archive.)
pub fn drop_untrusted_lines(
    volume: &Dir,
    dialect: Dialect,
    host: &dyn Host,
) -> Result<Vec<String>> {
    let Some(mut config) = files::read_config(volume, dialect)? else {
        return Ok(vec![]);
    };
    let nested = config.nested_sources();
    let mut dropped = Vec::new();
    for entry in config.entries() {
        let why = match nested.iter().find(|(e, _)| e == entry) {
            Some((_, why)) => Some(why.clone()),
            None => features::resolve(entry, host)
                .ok()
                .and_then(|r| trust::refuse_an_untrusted_source(volume, &r).err())
                .map(|e| e.to_string()),
        };
        if let Some(why) = why {
            dropped.push((entry.clone(), why));
        }
    }
    for (entry, _) in &dropped {
        config.remove_entry(entry);
    }
    if !dropped.is_empty() {
        files::write_config(volume, &config)?;
    }
    Ok(dropped
        .into_iter()
        .map(|(entry, why)| format!("'{}' ({why})", entry.render(dialect)))
        .collect())
}
/// The mount root as a path to create: parents root-owned 0755, the root itself 0755 (the
/// volume's own root folder, once mounted over it, carries its own mode).
pub fn ensure_mount_point(path: &Path) -> Result<Vec<safefs::Made>> {
    let (_, created) = safefs::open_dir(path, Some(Owner::ROOT_0755))?;
    Ok(created)
}

pub fn sync_all() {
    nix::unistd::sync();
}

/// Asks the kernel to drop clean page-cache pages, dentries and inodes, so that plaintext
/// read from the volume does not linger in RAM after lock.
/// Drops clean cached pages, dentries and inodes. The volume's own are gone already with
/// its unmount and close; this is the belt to those braces.
pub fn drop_caches() -> Result<()> {
    Ok(std::fs::write("/proc/sys/vm/drop_caches", b"3\n")
        .context(|| "dropping the page cache".into())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::persistence::config::ConfigFile;
    use crate::persistence::features::tests::FakeHost;

    #[test]
    fn a_restored_config_keeps_only_the_lines_activation_would_trust() {
        assert!(nix::unistd::geteuid().is_root(), "this test needs root");
        let tmp = tempfile::tempdir().unwrap();
        let vol = tmp.path();
        for d in ["Persistent/sbin", "tools", "ok"] {
            std::fs::create_dir_all(vol.join(d)).unwrap();
        }
        // FakeHost's live user is uid 1000.
        std::os::unix::fs::chown(vol.join("Persistent"), Some(1000), Some(1000)).unwrap();
        std::os::unix::fs::chown(vol.join("tools"), Some(1000), Some(1000)).unwrap();
        let (volume, _) = safefs::open_dir(vol, None).unwrap();
        let config = ConfigFile::parse(
            "/home/amnesia/Persistent\tsource=Persistent\n\
             /usr/local/sbin\tsource=Persistent/sbin\n\
             /opt/tools\tsource=tools\n\
             /opt/ok\tsource=ok\n",
            Dialect::Tails,
        );
        files::write_config(&volume, &config).unwrap();
        let dropped = drop_untrusted_lines(&volume, Dialect::Tails, &FakeHost).unwrap();
        assert_eq!(dropped.len(), 2, "{dropped:?}");
        // (Tails' file is sorted: the order of the lines is not the order given.)
        assert!(
            dropped
                .iter()
                .any(|d| d.contains("Persistent/sbin") && d.contains("inside Persistent")),
            "{dropped:?}"
        );
        assert!(
            dropped
                .iter()
                .any(|d| d.contains("tools is writable by the live user")),
            "{dropped:?}"
        );
        let kept = files::read_config(&volume, Dialect::Tails)
            .unwrap()
            .unwrap();
        let sources: Vec<_> = kept.entries().map(|e| e.source.clone()).collect();
        assert_eq!(
            sources,
            vec![PathBuf::from("Persistent"), PathBuf::from("ok")]
        );
        // Nothing more to drop the second time.
        assert!(
            drop_untrusted_lines(&volume, Dialect::Tails, &FakeHost)
                .unwrap()
                .is_empty()
        );
    }
}
