//! The unlocked volume as the running system shows it: its mapping and its mount, found
//! again from the kernel's own tables (so no stale state file can mislead `status`, `lock`
//! or `feature`), and its config files (persistence.conf, keepsake.conf, custom
//! features), read and written with the checks their readers make.

use std::path::{Path, PathBuf};

use crate::error::{Context, Error, Result};
use crate::host::devices::{self, Mapping};
use crate::host::mounts::{self, Mount};
use crate::persistence::config::{ConfigFile, Dialect, Line};
use crate::persistence::features::{self, Host};
use crate::persistence::layout::{CONFIG_FILE, KEEPSAKE_CONFIG_FILE, Layout, LayoutProfile};
use crate::safefs::{self, Dir, Owner};
use crate::session::trust;

/// The largest persistence.conf accepted.
pub const MAX_CONFIG: u64 = 64 * 1024;

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
            return Err(Error::Usage(format!(
                "several volumes are unlocked: {}; lock the others first (keepsake lock --device DEV)",
                describe_all(&found)
            )));
        }
        Ok(found.pop())
    }

    /// The open volume of this layout and where it is mounted, or why there is none.
    pub fn find_mounted(layout: &Layout) -> Result<(Unlocked, PathBuf)> {
        let unlocked = Unlocked::find(layout)?.ok_or_else(|| {
            Error::NotFound("no volume is unlocked; run keepsake unlock first".into())
        })?;
        let root = unlocked.mount_root.clone().ok_or_else(|| {
            Error::NotFound("the volume is open but not mounted; lock and unlock it again".into())
        })?;
        Ok((unlocked, root))
    }

    /// Every open persistence volume of either layout, from the kernel's tables
    /// ([`crate::volume::discovery::open_volumes`]), keepsake's runtime records vouching only for
    /// the live-boot mappings keepsake opened itself.
    pub fn find_all() -> Result<Vec<Unlocked>> {
        let table = mounts::read_mountinfo()?;
        let recorded: Vec<(LayoutProfile, String)> =
            [LayoutProfile::Tails, LayoutProfile::LiveBoot]
                .into_iter()
                .filter_map(|p| {
                    let r = crate::session::record::read_record(&Layout::new(p, None))?;
                    (!r.mapping.is_empty()).then_some((p, r.mapping))
                })
                .collect();
        Ok(
            crate::volume::discovery::open_volumes(&devices::all_mappings(), &table, &recorded)
                .into_iter()
                .map(|v| Unlocked {
                    profile: v.profile,
                    mapping: v.mapping,
                    mount_root: v.mount_root,
                    table: table.clone(),
                })
                .collect(),
        )
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

    pub fn volume_dir(&self) -> Result<Dir> {
        let root = self.mount_root.as_ref().ok_or_else(|| {
            Error::NotFound(format!(
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

/// Reads the volume's enabled features: persistence.conf, read with its layout's reader's
/// rules ([`Dialect`]), and in the Tails layout also keepsake.conf (the features Tails
/// does not know; their lines follow). A file someone other than root (or Tails' own
/// account) could have written is refused whole: then any line of it may be an
/// attacker's.
pub fn read_config(volume: &Dir, dialect: Dialect) -> Result<Option<ConfigFile>> {
    match read_config_file(volume, CONFIG_FILE, dialect)? {
        Some(shared) => with_keepsake_lines(volume, shared).map(Some),
        // No persistence.conf: keepsake.conf's lines, if it has any, are the config.
        None => {
            let own = with_keepsake_lines(volume, ConfigFile::new(dialect))?;
            Ok((!own.lines.is_empty()).then_some(own))
        }
    }
}

/// In the Tails layout, `config` (persistence.conf) followed by the lines of keepsake.conf
/// (checked as persistence.conf is); a line in both files (a rewrite cut short) counts
/// once. In the live-boot layout, `config` as it is.
pub fn with_keepsake_lines(volume: &Dir, config: ConfigFile) -> Result<ConfigFile> {
    let dialect = config.dialect;
    if dialect != Dialect::Tails {
        return Ok(config);
    }
    let Some(own) = read_config_file(volume, KEEPSAKE_CONFIG_FILE, dialect)? else {
        return Ok(config);
    };
    let mut config = config;
    let own_lines: Vec<Line> = own
        .lines
        .into_iter()
        .filter(|l| match l {
            Line::Entry { entry, .. } => config.find_source(&entry.source).is_none(),
            Line::Invalid { .. } => true,
            Line::Other(_) => false,
        })
        .collect();
    config.lines.extend(own_lines);
    Ok(ConfigFile::parse(&config.render(), dialect))
}

/// Reads one file of the volume in persistence.conf syntax, with the same checks.
pub fn read_config_file(volume: &Dir, name: &str, dialect: Dialect) -> Result<Option<ConfigFile>> {
    let file = match safefs::read_file_in(volume, name, MAX_CONFIG) {
        Ok(f) => f,
        Err(safefs::Error::NotFound(_)) => return Ok(None),
        // Too large, not UTF-8, a symlink: the config is refused (unlock goes on without
        // its features), as one with an untrusted owner is.
        Err(e @ safefs::Error::Invalid(_)) => return Err(Error::Corrupt(e.to_string())),
        Err(e) => return Err(e.into()),
    };
    if let Some(why) = untrusted_config(&file) {
        return Err(Error::Corrupt(format!(
            "{} {why}; no feature was activated",
            volume.path.join(name).display()
        )));
    }
    Ok(Some(ConfigFile::parse(&file.contents, dialect)))
}

/// Why a config file may hold lines someone other than root wrote, if it may: trusted are
/// root's files that nobody else can write (a live-boot config made with `echo > …` is
/// root's 0644), and Tails' own (its tails-persistent-storage account, mode 0600); never a
/// file with an ACL.
pub fn untrusted_config(file: &safefs::CheckedFile) -> Option<String> {
    let o = file.owner;
    if file.has_acl {
        return Some("has an ACL".into());
    }
    if o.uid == 0 && o.mode & 0o022 == 0 {
        return None;
    }
    if is_tails_account(o) && o.mode == 0o600 {
        return None;
    }
    Some(format!(
        "must be root's and writable by nobody else, or Tails' with mode 0600 (it is uid {} gid {}, mode {:04o})",
        o.uid, o.gid, o.mode
    ))
}

/// Why Tails would refuse this persistence.conf at boot (rename it to
/// persistence.conf.invalid and activate nothing), if it would: Tails accepts only a
/// regular file of its tails-persistent-storage account, mode exactly 0600, without ACL.
pub fn tails_refuses(file: &safefs::CheckedFile) -> Option<String> {
    let o = file.owner;
    if !is_tails_account(o) || o.mode != 0o600 || file.has_acl {
        return Some(format!(
            "Tails accepts persistence.conf only as {}:{} mode 0600 without ACL (it is uid {} gid {}, mode {:04o}{}): Tails would set it aside and activate nothing at boot",
            TAILS_CONFIG_IDS.0,
            TAILS_CONFIG_IDS.1,
            o.uid,
            o.gid,
            o.mode,
            if file.has_acl { ", with an ACL" } else { "" }
        ));
    }
    None
}

/// Tails' own account for persistence.conf, and the ids Tails fixes for it on every
/// release (its build hook 05-adduser_tails-persistent-storage).
const TAILS_CONFIG_ACCOUNT: &str = "tails-persistent-storage";
const TAILS_CONFIG_IDS: (u32, u32) = (115, 122);

/// The owner Tails requires of persistence.conf: its account by name where it exists, by
/// Tails' fixed ids elsewhere.
fn tails_config_ids() -> (u32, u32) {
    nix::unistd::User::from_name(TAILS_CONFIG_ACCOUNT)
        .ok()
        .flatten()
        .map_or(TAILS_CONFIG_IDS, |u| (u.uid.as_raw(), u.gid.as_raw()))
}

fn is_tails_account(owner: Owner) -> bool {
    (owner.uid, owner.gid) == tails_config_ids()
}

/// Writes the volume's enabled features: in the Tails layout, persistence.conf as Tails
/// wants it (its account, mode 0600, no ACL) without the features Tails does not know,
/// whose lines go to keepsake.conf (root's, 0600); in the live-boot layout, everything to
/// persistence.conf, root's, 0600. Each file is replaced atomically.
pub fn write_config(volume: &Dir, config: &ConfigFile) -> Result<()> {
    if config.dialect != Dialect::Tails {
        return write_config_file(volume, CONFIG_FILE, config, (0, 0));
    }
    let keepsake_only = |l: &Line| {
        matches!(l, Line::Entry { entry, .. }
            if features::Feature::by_source(&entry.source).is_some_and(|(f, _)| f.keepsake_only))
    };
    let mut shared = ConfigFile::new(config.dialect);
    let mut own = ConfigFile::new(config.dialect);
    let mut entries = Vec::new();
    for line in &config.lines {
        if keepsake_only(line) {
            own.lines.push(line.clone());
        } else if let Line::Entry { text, .. } = line {
            entries.push((text.clone(), line.clone()));
        } else {
            shared.lines.push(line.clone());
        }
    }
    // Its lines sorted and each once, as Tails' own save() writes them (comments and lines
    // Tails would skip, which it drops at its next save, are kept first).
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries.dedup_by(|a, b| a.0 == b.0);
    shared.lines.extend(entries.into_iter().map(|(_, l)| l));
    // keepsake.conf first: cut short, a line is in both files, and read once.
    if own.lines.is_empty() {
        safefs::remove_file_in(volume, KEEPSAKE_CONFIG_FILE)?;
    } else {
        write_config_file(volume, KEEPSAKE_CONFIG_FILE, &own, (0, 0))?;
    }
    write_config_file(volume, CONFIG_FILE, &shared, tails_config_ids())
}

/// Writes the definitions of custom features (keepsake-features.conf): root's, 0600.
pub fn write_custom(volume: &Dir, custom: &ConfigFile) -> Result<()> {
    write_config_file(
        volume,
        crate::persistence::layout::CUSTOM_FEATURES_FILE,
        custom,
        (0, 0),
    )
}

/// Reads the definitions of custom features, with persistence.conf's checks.
pub fn read_custom(volume: &Dir, dialect: Dialect) -> Result<ConfigFile> {
    Ok(read_config_file(
        volume,
        crate::persistence::layout::CUSTOM_FEATURES_FILE,
        dialect,
    )?
    .unwrap_or_else(|| ConfigFile::new(dialect)))
}

/// Replaces one config file atomically, mode 0600, owned by `owner`.
pub fn write_config_file(
    volume: &Dir,
    name: &str,
    config: &ConfigFile,
    owner: (u32, u32),
) -> Result<()> {
    safefs::write_file_atomically(
        volume,
        name,
        config.render().as_bytes(),
        Owner {
            uid: owner.0,
            gid: owner.1,
            mode: 0o600,
        },
    )?;
    Ok(())
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
    let Some(mut config) = read_config(volume, dialect)? else {
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
        write_config(volume, &config)?;
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
    std::fs::write("/proc/sys/vm/drop_caches", b"3\n").context(|| "dropping the page cache".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::persistence::features::tests::FakeHost;

    #[test]
    fn a_tails_config_is_written_as_tails_writes_it_and_tor_state_apart() {
        use std::os::unix::fs::MetadataExt;
        assert!(nix::unistd::geteuid().is_root(), "this test needs root");
        let tmp = tempfile::tempdir().unwrap();
        let (volume, _) = safefs::open_dir(tmp.path(), None).unwrap();
        let config = ConfigFile::parse(
            "# mine\n/home/amnesia/.ssh\tsource=openssh-client\n/var/lib/tor\tsource=tor-state\n\
             '/home/amnesia/My Docs'\tsource=docs\n/home/amnesia\tsource=dotfiles,link\n",
            Dialect::Tails,
        );
        write_config(&volume, &config).unwrap();
        let shared = std::fs::read_to_string(tmp.path().join(CONFIG_FILE)).unwrap();
        assert_eq!(
            shared,
            "# mine\n'/home/amnesia/My Docs'\tsource=docs\n/home/amnesia\tsource=dotfiles,link\n/home/amnesia/.ssh\tsource=openssh-client\n"
        );
        let m = std::fs::metadata(tmp.path().join(CONFIG_FILE)).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (115, 122, 0o600));
        let own = std::fs::read_to_string(tmp.path().join(KEEPSAKE_CONFIG_FILE)).unwrap();
        assert_eq!(own, "/var/lib/tor\tsource=tor-state\n");
        let m = std::fs::metadata(tmp.path().join(KEEPSAKE_CONFIG_FILE)).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o7777), (0, 0o600));
        // Read back: one config, tor-state included; disabling it removes keepsake.conf.
        let mut back = read_config(&volume, Dialect::Tails).unwrap().unwrap();
        assert_eq!(back.entries().count(), 4);
        assert!(back.remove_source(Path::new("tor-state")));
        write_config(&volume, &back).unwrap();
        assert!(!tmp.path().join(KEEPSAKE_CONFIG_FILE).exists());
    }

    #[test]
    fn an_empty_persistence_conf_is_a_config_with_no_feature_not_a_missing_one() {
        assert!(nix::unistd::geteuid().is_root(), "this test needs root");
        let tmp = tempfile::tempdir().unwrap();
        let (volume, _) = safefs::open_dir(tmp.path(), None).unwrap();
        for dialect in [Dialect::Tails, Dialect::LiveBoot] {
            assert_eq!(read_config(&volume, dialect).unwrap(), None);
        }
        std::fs::write(tmp.path().join(CONFIG_FILE), "").unwrap();
        std::fs::set_permissions(
            tmp.path().join(CONFIG_FILE),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        for dialect in [Dialect::Tails, Dialect::LiveBoot] {
            let config = read_config(&volume, dialect).unwrap().expect("present");
            assert_eq!(config.entries().count(), 0);
        }
    }

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
        write_config(&volume, &config).unwrap();
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
        let kept = read_config(&volume, Dialect::Tails).unwrap().unwrap();
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
