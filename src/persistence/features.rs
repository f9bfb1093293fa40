//! The feature catalogue: what can persist, where it lives in the volume, where it appears
//! in the session, and who must own it. Source names are Tails' own, so that a Tails
//! Persistent Storage works unchanged.

use std::path::{Path, PathBuf};

use crate::persistence::config::{ConfigFile, Entry, Method};
use crate::persistence::layout::LayoutProfile;
use crate::safefs::{AclEntry, Owner};

/// What the catalogue cannot do on this system, named by what happened (the exit code
/// each gets is chosen in `crate::error`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A user or system account a feature's owner is resolved from does not exist.
    #[error("{0}")]
    NoAccount(String),
    /// The catalogue's own features do not fit together in one config: a bug in the
    /// catalogue, not in anything the user did.
    #[error("{0}")]
    Catalogue(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Who owns a feature's folders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Who {
    /// The live session's user (amnesia on Tails, user on Debian live).
    LiveUser,
    /// A system account, resolved by name on the running system (never a hard-coded id).
    System(&'static str),
    /// Whoever owns the destination on this live system, with its mode (as Tails does for
    /// system folders such as /etc/cups, root:lp); root with the binding's mode if the
    /// destination does not exist yet.
    AsDestination,
}

/// Where a binding appears in the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dest {
    /// Relative to the live user's home folder ("" is the home folder itself).
    Home(&'static str),
    Absolute(&'static str),
}

/// One folder of a feature: a `persistence.conf` line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Binding {
    pub source: &'static str,
    pub destination: Dest,
    pub method: Method,
    pub owner: Who,
    pub mode: u32,
    /// The source must have exactly this owner and mode, or the feature is refused (for
    /// programs that refuse to start otherwise, such as tor).
    pub strict: bool,
}

/// A service that must be stopped while the feature's folders are bound or unbound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Tor,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Feature {
    pub name: &'static str,
    pub title: &'static str,
    pub bindings: &'static [Binding],
    pub service: Option<Service>,
    /// Enabled in the `persistence.conf` of a new volume.
    pub default: OnNewVolume,
    /// Tails does not know it: in the Tails layout its line goes to keepsake.conf.
    pub keepsake_only: bool,
}

/// Whether a feature is enabled on a new volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OnNewVolume {
    No,
    Always,
    /// In the Tails layout only, as Tails does (Additional Software).
    InTails,
}

const fn home(source: &'static str, path: &'static str) -> Binding {
    Binding {
        source,
        destination: Dest::Home(path),
        method: Method::Bind,
        owner: Who::LiveUser,
        mode: 0o700,
        strict: false,
    }
}

const fn system(source: &'static str, path: &'static str, mode: u32) -> Binding {
    Binding {
        source,
        destination: Dest::Absolute(path),
        method: Method::Bind,
        owner: Who::AsDestination,
        mode,
        strict: false,
    }
}

const fn feature(name: &'static str, title: &'static str, bindings: &'static [Binding]) -> Feature {
    Feature {
        name,
        title,
        bindings,
        service: None,
        default: OnNewVolume::No,
        keepsake_only: false,
    }
}

/// The built-in features, in the order they are activated: Tails' own order (its
/// `features.py`), Dotfiles last so that its links land in the folders bound before it.
/// Source names and destinations are Tails' own, so an existing Tails volume works
/// unchanged; custom features come after all of these.
pub(crate) static CATALOGUE: &[Feature] = &[
    Feature {
        default: OnNewVolume::Always,
        ..feature(
            "persistent",
            "Persistent folder",
            &[home("Persistent", "Persistent")],
        )
    },
    feature(
        "bookmarks",
        "Tor Browser bookmarks",
        &[home("bookmarks", ".mozilla/firefox/bookmarks")],
    ),
    feature(
        "greeter-settings",
        "Welcome Screen settings",
        &[system(
            "greeter-settings",
            "/var/lib/gdm3/settings/persistent",
            0o700,
        )],
    ),
    feature(
        "network-connections",
        "Network connections (Wi-Fi passwords, VPNs)",
        &[system(
            "nm-system-connections",
            "/etc/NetworkManager/system-connections",
            0o700,
        )],
    ),
    feature(
        "tor-bridges",
        "Tor bridges (Tor Connection Assistant)",
        &[system("tca", "/var/lib/tca", 0o700)],
    ),
    Feature {
        default: OnNewVolume::InTails,
        ..feature(
            "additional-software",
            "Additional software (APT lists and packages)",
            &[
                system("apt/cache", "/var/cache/apt/archives", 0o755),
                system("apt/lists", "/var/lib/apt/lists", 0o755),
            ],
        )
    },
    feature(
        "printers",
        "Printers (CUPS)",
        &[system("cups-configuration", "/etc/cups", 0o755)],
    ),
    feature(
        "thunderbird",
        "Thunderbird email",
        &[home("thunderbird", ".thunderbird")],
    ),
    feature(
        "gnupg",
        "GnuPG keys and settings",
        &[home("gnupg", ".gnupg")],
    ),
    feature(
        "electrum",
        "Electrum Bitcoin wallet",
        &[home("electrum", ".electrum")],
    ),
    feature(
        "pidgin",
        "Pidgin instant messaging",
        &[home("pidgin", ".purple")],
    ),
    feature(
        "ssh-client",
        "SSH client keys and settings",
        &[home("openssh-client", ".ssh")],
    ),
    // Not in Tails: tor's whole DataDirectory. Persisting guards resists guard-rotation
    // attacks but links sessions to each other; the documentation says so. In the Tails
    // layout its line lives in keepsake.conf, never in Tails' persistence.conf: Tails
    // would bind it at boot as a custom feature and run its tor on persistent state.
    Feature {
        service: Some(Service::Tor),
        keepsake_only: true,
        ..feature(
            "tor-state",
            "Tor state: entry guards, consensus cache, onion service keys",
            &[Binding {
                source: "tor-state",
                destination: Dest::Absolute("/var/lib/tor"),
                method: Method::Bind,
                owner: Who::System("debian-tor"),
                mode: 0o700,
                strict: true,
            }],
        )
    },
    feature(
        "dotfiles",
        "Dotfiles: each file symlinked into the home folder",
        &[Binding {
            method: Method::Link,
            ..home("dotfiles", "")
        }],
    ),
];

impl Feature {
    pub(crate) fn by_name(name: &str) -> Option<&'static Feature> {
        CATALOGUE.iter().find(|f| f.name == name)
    }

    /// Whether a new volume of this layout has it enabled.
    pub(crate) fn enabled_on_new(
        &self,
        profile: crate::persistence::layout::LayoutProfile,
    ) -> bool {
        match self.default {
            OnNewVolume::No => false,
            OnNewVolume::Always => true,
            OnNewVolume::InTails => profile == crate::persistence::layout::LayoutProfile::Tails,
        }
    }

    /// Where a feature's line goes in activation order: built-ins in catalogue order, then
    /// custom features (in the order of their lines).
    pub(crate) fn rank(source: &Path) -> usize {
        CATALOGUE
            .iter()
            .position(|f| f.bindings.iter().any(|b| Path::new(b.source) == source))
            .unwrap_or(CATALOGUE.len())
    }

    pub(crate) fn by_source(source: &Path) -> Option<(&'static Feature, &'static Binding)> {
        CATALOGUE.iter().find_map(|f| {
            f.bindings
                .iter()
                .find(|b| Path::new(b.source) == source)
                .map(|b| (f, b))
        })
    }
}

/// The live session's user, whose home the home features live in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

impl LiveUser {
    /// The named user, or else the first regular user (uid 1000) as live systems create it.
    pub(crate) fn find(name: Option<&str>) -> Result<LiveUser> {
        let user = match name {
            Some(n) => nix::unistd::User::from_name(n)
                .ok()
                .flatten()
                .ok_or_else(|| Error::NoAccount(format!("no user named {n} on this system")))?,
            None => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(1000))
                .ok()
                .flatten()
                .ok_or_else(|| {
                    Error::NoAccount(
                        "no live user (uid 1000) on this system; name one with --live-user".into(),
                    )
                })?,
        };
        Ok(LiveUser {
            name: user.name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            home: user.dir,
        })
    }
}

/// What keepsake needs to know of the running system to decide who owns what.
pub trait Host {
    fn live_user(&self) -> Result<&LiveUser>;
    fn system_account(&self, name: &str) -> Result<(u32, u32)>;
    /// Owner and mode of an existing folder (not following a symlink at its end).
    fn owner_of(&self, path: &Path) -> Option<Owner>;
    /// The groups a user is in (its own group included).
    fn groups_of(&self, user: &LiveUser) -> Vec<u32>;
}

/// The running system: its user database and its folders.
pub(crate) struct SystemHost {
    pub live_user: Result<LiveUser, String>,
    /// The groups already looked up, by user name: each entry of persistence.conf asks
    /// for the live user's, and each lookup reads the whole group database.
    groups: std::cell::RefCell<Vec<(String, Vec<u32>)>>,
}

impl SystemHost {
    pub(crate) fn new(live_user_name: Option<&str>) -> SystemHost {
        SystemHost {
            live_user: LiveUser::find(live_user_name).map_err(|e| e.to_string()),
            groups: Default::default(),
        }
    }
}

impl Host for SystemHost {
    fn live_user(&self) -> Result<&LiveUser> {
        self.live_user
            .as_ref()
            .map_err(|e| Error::NoAccount(e.clone()))
    }

    fn system_account(&self, name: &str) -> Result<(u32, u32)> {
        let user = nix::unistd::User::from_name(name)
            .ok()
            .flatten()
            .ok_or_else(|| Error::NoAccount(format!("no system account named {name}")))?;
        Ok((user.uid.as_raw(), user.gid.as_raw()))
    }

    fn groups_of(&self, user: &LiveUser) -> Vec<u32> {
        if let Some((_, gids)) = self.groups.borrow().iter().find(|(n, _)| *n == user.name) {
            return gids.clone();
        }
        let name = std::ffi::CString::new(user.name.as_bytes()).unwrap_or_default();
        let gids: Vec<u32> = nix::unistd::getgrouplist(&name, nix::unistd::Gid::from_raw(user.gid))
            .map(|gs| gs.iter().map(|g| g.as_raw()).collect())
            .unwrap_or_else(|_| vec![user.gid]);
        self.groups
            .borrow_mut()
            .push((user.name.clone(), gids.clone()));
        gids
    }

    fn owner_of(&self, path: &Path) -> Option<Owner> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::symlink_metadata(path)
            .ok()
            .filter(|m| m.is_dir())?;
        Some(Owner {
            uid: m.uid(),
            gid: m.gid(),
            mode: m.mode() & 0o7777,
        })
    }
}

impl Binding {
    pub(crate) fn owner(&self, host: &dyn Host) -> Result<Owner> {
        let (uid, gid) = match self.owner {
            Who::LiveUser => {
                let u = host.live_user()?;
                (u.uid, u.gid)
            }
            Who::System(name) => host.system_account(name)?,
            Who::AsDestination => {
                let dest = self.entry(host)?.destination;
                return Ok(host.owner_of(&dest).unwrap_or(Owner {
                    uid: 0,
                    gid: 0,
                    mode: self.mode,
                }));
            }
        };
        Ok(Owner {
            uid,
            gid,
            mode: self.mode,
        })
    }

    pub(crate) fn entry(&self, host: &dyn Host) -> Result<Entry> {
        let destination = match self.destination {
            Dest::Absolute(p) => PathBuf::from(p),
            Dest::Home("") => host.live_user()?.home.clone(),
            Dest::Home(rel) => host.live_user()?.home.join(rel),
        };
        Ok(Entry {
            destination,
            source: PathBuf::from(self.source),
            method: self.method,
        })
    }
}

/// The config of a new volume of this layout: the features enabled on a new volume
/// (Tails enables its Persistent folder and Additional Software).
pub(crate) fn default_config(host: &dyn Host, profile: LayoutProfile) -> Result<ConfigFile> {
    let mut config = ConfigFile::new(profile.into());
    for feature in CATALOGUE.iter().filter(|f| f.enabled_on_new(profile)) {
        for binding in feature.bindings {
            config.add(binding.entry(host)?).map_err(Error::Catalogue)?;
        }
    }
    Ok(config)
}

/// A `persistence.conf` entry with the feature it belongs to and the owner its folders get.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedEntry {
    /// The catalogue feature's name, or the source for a custom feature.
    pub feature: String,
    pub entry: Entry,
    pub owner: Owner,
    /// The source must already have exactly `owner` (see [`Binding::strict`]).
    pub strict: bool,
    pub service: Option<Service>,
    /// Set for a destination outside the live user's home: what the source must satisfy.
    pub guard: Option<SourceGuard>,
}

/// What a source bound outside the live user's home must satisfy, so that a folder the
/// live user can write never appears over a system path (`/usr/local/sbin`,
/// `/etc/profile.d`): it is owned by root or by the account keepsake gives it (never the
/// live user), and no folder from the volume's root down to it is writable by the live
/// user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceGuard {
    pub owners: Vec<u32>,
    pub live_uid: u32,
    pub live_gids: Vec<u32>,
}

impl SourceGuard {
    /// The guard for `entry`, whose source gets `owner`; `None` inside the live user's
    /// home (where the user could place the same files anyway).
    pub(crate) fn for_entry(
        entry: &Entry,
        owner: Owner,
        host: &dyn Host,
    ) -> Result<Option<SourceGuard>> {
        let Ok(user) = host.live_user() else {
            // No live user known: nobody's folders but root's pass as safe.
            return Ok(Some(SourceGuard {
                owners: vec![0, owner.uid],
                live_uid: u32::MAX,
                live_gids: vec![],
            }));
        };
        if entry.destination.starts_with(&user.home) {
            return Ok(None);
        }
        let mut owners = vec![0];
        if owner.uid != user.uid {
            owners.push(owner.uid);
        }
        Ok(Some(SourceGuard {
            owners,
            live_uid: user.uid,
            live_gids: host.groups_of(user),
        }))
    }

    /// Whether the live user may write a folder with this owner, mode and access ACL (an
    /// ACL entry naming the live user or one of its groups with write permission, as far
    /// as the ACL's mask lets it through).
    pub(crate) fn writable_by_live_user(&self, folder: Owner, acl: &[AclEntry]) -> bool {
        let mask = acl
            .iter()
            .find(|e| e.tag == AclEntry::MASK)
            .map_or(0o7, |e| e.perm);
        let acl_grants = acl.iter().any(|e| {
            let named = (e.tag == AclEntry::USER && e.id == self.live_uid)
                || (e.tag == AclEntry::GROUP && self.live_gids.contains(&e.id));
            named && e.perm & mask & 0o2 != 0
        });
        acl_grants
            || folder.mode & 0o002 != 0
            || (folder.uid == self.live_uid && folder.mode & 0o200 != 0)
            || (self.live_gids.contains(&folder.gid) && folder.mode & 0o020 != 0)
    }
}

/// Resolves each config entry: catalogue features get their declared owner; custom ones the
/// destination's current owner and mode, or else the live user's under their home and
/// root's elsewhere.
pub(crate) fn resolve(entry: &Entry, host: &dyn Host) -> Result<ResolvedEntry> {
    if let Some((feature, binding)) = Feature::by_source(&entry.source) {
        let owner = binding.owner(host)?;
        return Ok(ResolvedEntry {
            feature: feature.name.to_string(),
            entry: entry.clone(),
            owner,
            strict: binding.strict,
            service: feature.service,
            guard: SourceGuard::for_entry(entry, owner, host)?,
        });
    }
    let owner = match (host.owner_of(&entry.destination), host.live_user()) {
        (Some(existing), _) => existing,
        (None, Ok(u)) if entry.destination.starts_with(&u.home) => Owner {
            uid: u.uid,
            gid: u.gid,
            mode: 0o700,
        },
        _ => Owner::ROOT_0755,
    };
    Ok(ResolvedEntry {
        feature: entry.source.display().to_string(),
        entry: entry.clone(),
        owner,
        strict: false,
        service: None,
        guard: SourceGuard::for_entry(entry, owner, host)?,
    })
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A fixed host for tests that must not depend on the machine they run on.
    pub struct FakeHost;

    impl Host for FakeHost {
        fn live_user(&self) -> Result<&LiveUser> {
            static USER: std::sync::OnceLock<LiveUser> = std::sync::OnceLock::new();
            Ok(USER.get_or_init(|| LiveUser {
                name: "amnesia".into(),
                uid: 1000,
                gid: 1000,
                home: "/home/amnesia".into(),
            }))
        }

        fn system_account(&self, name: &str) -> Result<(u32, u32)> {
            match name {
                "debian-tor" => Ok((101, 102)),
                _ => Err(Error::NoAccount(name.into())),
            }
        }

        fn groups_of(&self, user: &LiveUser) -> Vec<u32> {
            vec![user.gid, 27]
        }

        fn owner_of(&self, path: &Path) -> Option<Owner> {
            (path == Path::new("/etc/cups")).then_some(Owner {
                uid: 0,
                gid: 7,
                mode: 0o755,
            })
        }
    }

    #[test]
    fn names_and_sources_are_unique() {
        let mut names = std::collections::HashSet::new();
        let mut sources = std::collections::HashSet::new();
        for f in CATALOGUE {
            assert!(names.insert(f.name), "duplicate feature {}", f.name);
            for b in f.bindings {
                assert!(sources.insert(b.source), "duplicate source {}", b.source);
            }
        }
    }

    #[test]
    fn persistent_folder_resolves_to_the_live_users_home() {
        let f = Feature::by_name("persistent").unwrap();
        let e = f.bindings[0].entry(&FakeHost).unwrap();
        assert_eq!(e.destination, Path::new("/home/amnesia/Persistent"));
        assert_eq!(
            e.render(crate::persistence::config::Dialect::Tails),
            "/home/amnesia/Persistent\tsource=Persistent"
        );
        let r = resolve(&e, &FakeHost).unwrap();
        assert_eq!(r.feature, "persistent");
        assert_eq!(
            r.owner,
            Owner {
                uid: 1000,
                gid: 1000,
                mode: 0o700
            }
        );
    }

    #[test]
    fn tor_state_belongs_to_the_tor_account_strictly() {
        let f = Feature::by_name("tor-state").unwrap();
        assert_eq!(f.service, Some(Service::Tor));
        let e = f.bindings[0].entry(&FakeHost).unwrap();
        let r = resolve(&e, &FakeHost).unwrap();
        assert_eq!(r.entry.destination, Path::new("/var/lib/tor"));
        assert_eq!(
            r.owner,
            Owner {
                uid: 101,
                gid: 102,
                mode: 0o700
            }
        );
        assert!(r.strict);
        assert_eq!(r.service, Some(Service::Tor));
    }

    #[test]
    fn system_features_copy_the_destination_owner() {
        let f = Feature::by_name("printers").unwrap();
        let r = resolve(&f.bindings[0].entry(&FakeHost).unwrap(), &FakeHost).unwrap();
        assert_eq!(
            r.owner,
            Owner {
                uid: 0,
                gid: 7,
                mode: 0o755
            }
        );
        // Absent destinations fall back to root with the declared mode.
        let f = Feature::by_name("tor-bridges").unwrap();
        let r = resolve(&f.bindings[0].entry(&FakeHost).unwrap(), &FakeHost).unwrap();
        assert_eq!(
            r.owner,
            Owner {
                uid: 0,
                gid: 0,
                mode: 0o700
            }
        );
    }

    #[test]
    fn custom_entries_get_a_conservative_owner() {
        let home = Entry {
            destination: "/home/amnesia/Projects".into(),
            source: "projects".into(),
            method: Method::Bind,
        };
        let r = resolve(&home, &FakeHost).unwrap();
        assert_eq!(r.feature, "projects");
        assert_eq!(r.owner.uid, 1000);
        let sys = Entry {
            destination: "/opt/tools".into(),
            source: "tools".into(),
            method: Method::Bind,
        };
        assert_eq!(resolve(&sys, &FakeHost).unwrap().owner, Owner::ROOT_0755);
    }
}
