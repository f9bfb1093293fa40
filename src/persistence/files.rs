//! The config files on the volume — persistence.conf, keepsake.conf and the custom
//! features' definitions — read with the checks their readers make (a file someone other
//! than root, or Tails' own account, could have written is refused whole) and written as
//! Tails writes them; and what `check` reports of persistence.conf and `repair` makes of it.

use crate::persistence::config::{ConfigFile, Dialect, Line};
use crate::persistence::features;
use crate::persistence::layout::{
    CONFIG_FILE, CUSTOM_FEATURES_FILE, KEEPSAKE_CONFIG_FILE, LayoutProfile,
};
use crate::safefs::{self, Dir, Owner};

/// The largest persistence.conf accepted.
pub const MAX_CONFIG: u64 = 64 * 1024;

/// Why a config file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A config file keepsake will not take a line from: someone other than root (or
    /// Tails' account) could have written it, it has an ACL, or it is too large, not UTF-8
    /// or not a regular file. Nothing of it is activated.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Fs(#[from] safefs::Error),
    /// The catalogue could not give the default features (an account they need).
    #[error(transparent)]
    Feature(#[from] features::Error),
}

impl Error {
    pub fn with_note(self, note: &str) -> Error {
        match self {
            Error::Refused(m) => Error::Refused(format!("{m}; {note}")),
            Error::Fs(e) => Error::Fs(e.with_note(note)),
            e @ Error::Feature(_) => e,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

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
        Err(e @ safefs::Error::Invalid(_)) => return Err(Error::Refused(e.to_string())),
        Err(e) => return Err(e.into()),
    };
    if let Some(why) = untrusted_config(&file) {
        return Err(Error::Refused(format!(
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
    if is_trusted_tails_account(o) && o.mode == 0o600 {
        return None;
    }
    if is_tails_account(o) && tails_account().is_none() {
        return Some(format!(
            "is owned by uid {} gid {}, Tails' ids for its {TAILS_CONFIG_ACCOUNT} account, but here those ids belong to another account, which could have written it",
            o.uid, o.gid
        ));
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

/// The owner Tails requires of persistence.conf, as written: its account by name where it
/// exists, by Tails' fixed ids elsewhere.
fn tails_config_ids() -> (u32, u32) {
    tails_account().unwrap_or(TAILS_CONFIG_IDS)
}

fn tails_account() -> Option<(u32, u32)> {
    nix::unistd::User::from_name(TAILS_CONFIG_ACCOUNT)
        .ok()
        .flatten()
        .map(|u| (u.uid.as_raw(), u.gid.as_raw()))
}

/// Whether `owner` is Tails' config account, as far as Tails would see it.
fn is_tails_account(owner: Owner) -> bool {
    (owner.uid, owner.gid) == tails_config_ids()
}

/// Whether `owner` is Tails' config account *and* that account is nobody else's here: a
/// file owned by ids another account holds is that account's file, which it could have
/// written (on a Debian system uid 115 may well be a daemon's).
fn is_trusted_tails_account(owner: Owner) -> bool {
    let holder = |uid: u32, gid: u32| {
        (
            nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                .ok()
                .flatten()
                .map(|u| u.name),
            nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
                .ok()
                .flatten()
                .map(|g| g.name),
        )
    };
    let (uid_holder, gid_holder) = holder(TAILS_CONFIG_IDS.0, TAILS_CONFIG_IDS.1);
    trusted_tails_ids(
        tails_account(),
        uid_holder.as_deref(),
        gid_holder.as_deref(),
    ) == Some((owner.uid, owner.gid))
}

/// The ids whose persistence.conf is trusted as Tails' own: those of the account
/// `tails-persistent-storage` where it exists; else Tails' fixed ids 115:122 only while
/// no account or group holds them (then only root can make a file so owned).
fn trusted_tails_ids(
    account: Option<(u32, u32)>,
    uid_holder: Option<&str>,
    gid_holder: Option<&str>,
) -> Option<(u32, u32)> {
    match (account, uid_holder, gid_holder) {
        (Some(ids), _, _) => Some(ids),
        (None, None, None) => Some(TAILS_CONFIG_IDS),
        _ => None,
    }
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
    write_config_file(volume, CUSTOM_FEATURES_FILE, custom, (0, 0))
}

/// Reads the definitions of custom features, with persistence.conf's checks.
pub fn read_custom(volume: &Dir, dialect: Dialect) -> Result<ConfigFile> {
    Ok(read_config_file(volume, CUSTOM_FEATURES_FILE, dialect)?
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

/// persistence.conf as `check` reports it.
#[derive(Debug, serde::Serialize)]
pub struct ConfigReport {
    pub present: bool,
    pub owner_uid: Option<u32>,
    pub mode: Option<String>,
    pub features: usize,
    pub errors: Vec<String>,
}

/// What is wrong with the volume's config, as its layout's reader and keepsake see it.
pub(crate) fn config_report(volume: &Dir, dialect: Dialect) -> (ConfigReport, Vec<String>) {
    let mut problems = Vec::new();
    let raw = match safefs::read_file_in(volume, CONFIG_FILE, MAX_CONFIG) {
        Ok(f) => f,
        Err(e) => {
            problems.push(match e {
                safefs::Error::NotFound(_) => format!("{CONFIG_FILE} is missing"),
                e => e.to_string(),
            });
            let report = ConfigReport {
                present: false,
                owner_uid: None,
                mode: None,
                features: 0,
                errors: vec![],
            };
            return (report, problems);
        }
    };
    if let Some(why) = untrusted_config(&raw) {
        problems.push(format!("{CONFIG_FILE} {why}"));
    }
    if dialect == Dialect::Tails
        && let Some(why) = tails_refuses(&raw)
    {
        problems.push(why);
    }
    // Its lines are judged even when the file is not trusted: check only looks.
    let config = ConfigFile::parse(&raw.contents, dialect);
    let config = match with_keepsake_lines(volume, config.clone()) {
        Ok(merged) => merged,
        Err(e) => {
            problems.push(e.to_string());
            config
        }
    };
    let mut errors: Vec<String> = config.errors().map(|e| e.to_string()).collect();
    errors.extend(
        config
            .nested_sources()
            .into_iter()
            .map(|(e, why)| format!("{CONFIG_FILE}: {}: {why}", e.destination.display())),
    );
    let features = config.entries().count();
    problems.extend(errors.iter().cloned());
    let report = ConfigReport {
        present: true,
        owner_uid: Some(raw.owner.uid),
        mode: Some(format!("{:04o}", raw.owner.mode)),
        features,
        errors,
    };
    (report, problems)
}

/// Makes persistence.conf sane: present, trusted (and in the Tails layout, as Tails
/// accepts it), without lines its reader would skip (those are moved to a file beside
/// it). A line the reader accepts is never moved, except in the live-boot layout one
/// whose source is in another's: live-boot stops the boot on the whole file then.
/// Returns what it changed.
pub(crate) fn repair_config(volume: &Dir, profile: LayoutProfile) -> Result<Vec<String>> {
    let dialect = Dialect::from(profile);
    let mut changed = Vec::new();
    let raw = match safefs::read_file_in(volume, CONFIG_FILE, MAX_CONFIG) {
        Ok(f) => Some(f),
        Err(safefs::Error::NotFound(_)) => None,
        Err(e) => return Err(e.into()),
    };
    let Some(raw) = raw else {
        let host = features::SystemHost::new(None);
        write_config(volume, &features::default_config(&host, profile)?)?;
        changed.push(format!(
            "{CONFIG_FILE} was missing: written with the default features"
        ));
        return Ok(changed);
    };
    let untrusted = untrusted_config(&raw);
    let tails_refuses = (dialect == Dialect::Tails)
        .then(|| tails_refuses(&raw))
        .flatten();
    // Its own file is read as it is (the owner is judged above); keepsake.conf with the
    // usual checks.
    let config = with_keepsake_lines(volume, ConfigFile::parse(&raw.contents, dialect))?;
    let (mut kept, mut invalid) = config.without_invalid();
    if dialect == Dialect::LiveBoot {
        for (entry, _) in kept.nested_sources() {
            kept.remove_entry(&entry);
            invalid.push(entry.render(dialect));
        }
    }
    if !invalid.is_empty() {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let aside = format!("{CONFIG_FILE}.invalid-{stamp}");
        let mut text = invalid.join("\n");
        text.push('\n');
        safefs::write_file_atomically(
            volume,
            &aside,
            text.as_bytes(),
            Owner {
                uid: 0,
                gid: 0,
                mode: 0o600,
            },
        )?;
        changed.push(format!(
            "{} line(s) its reader would not accept moved to {aside}",
            invalid.len()
        ));
    }
    if let Some(why) = untrusted.as_ref().or(tails_refuses.as_ref()) {
        changed.push(format!(
            "{CONFIG_FILE} rewritten with the owner and mode its reader accepts ({why})"
        ));
    }
    if untrusted.is_some() || tails_refuses.is_some() || !invalid.is_empty() {
        write_config(volume, &kept)?;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn tails_ids_are_trusted_only_where_nobody_else_holds_them() {
        // Tails itself: the account exists, by name, with its ids.
        let tails = Some(TAILS_CONFIG_IDS);
        assert_eq!(
            trusted_tails_ids(
                tails,
                Some(TAILS_CONFIG_ACCOUNT),
                Some(TAILS_CONFIG_ACCOUNT)
            ),
            Some(TAILS_CONFIG_IDS)
        );
        // A Debian live system without that account, and nobody on 115 or 122.
        assert_eq!(trusted_tails_ids(None, None, None), Some(TAILS_CONFIG_IDS));
        // A system where a daemon holds uid 115, or group 122: that account's file.
        assert_eq!(trusted_tails_ids(None, Some("colord"), None), None);
        assert_eq!(trusted_tails_ids(None, None, Some("sambashare")), None);
        // The account under other ids: only those count.
        assert_eq!(
            trusted_tails_ids(Some((998, 997)), Some("colord"), None),
            Some((998, 997))
        );
    }

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
}
