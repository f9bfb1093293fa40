//! The feature catalogue: what can persist, where it lives in the volume, where it appears
//! in the session, and who must own it. Source names are Tails' own, so that a Tails
//! Persistent Storage works unchanged.

use std::path::{Path, PathBuf};

use crate::config::{Entry, Method};
use crate::error::{Error, Result};
use crate::safefs::Owner;

/// Who owns a feature's folders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Who {
    /// The live session's user (amnesia on Tails, user on Debian live).
    LiveUser,
    Root,
    /// A system account, resolved by name on the running system (never a hard-coded id).
    System(&'static str),
}

/// Where a binding appears in the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest {
    /// Relative to the live user's home folder ("" is the home folder itself).
    Home(&'static str),
    Absolute(&'static str),
}

/// One folder of a feature: a `persistence.conf` line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Binding {
    pub source: &'static str,
    pub destination: Dest,
    pub method: Method,
    pub owner: Who,
    pub mode: u32,
}

/// A service that must be stopped while the feature's folders are bound or unbound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Tor,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Feature {
    pub name: &'static str,
    pub title: &'static str,
    pub bindings: &'static [Binding],
    pub service: Option<Service>,
    /// Enabled in the `persistence.conf` of a new volume.
    pub default: bool,
}

const fn home(source: &'static str, path: &'static str) -> Binding {
    Binding {
        source,
        destination: Dest::Home(path),
        method: Method::Bind,
        owner: Who::LiveUser,
        mode: 0o700,
    }
}

/// The built-in features, in the order they are activated.
pub static CATALOGUE: &[Feature] = &[Feature {
    name: "persistent",
    title: "Persistent folder",
    bindings: &[home("Persistent", "Persistent")],
    service: None,
    default: true,
}];

impl Feature {
    pub fn by_name(name: &str) -> Option<&'static Feature> {
        CATALOGUE.iter().find(|f| f.name == name)
    }

    pub fn by_source(source: &Path) -> Option<(&'static Feature, &'static Binding)> {
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
    pub fn find(name: Option<&str>) -> Result<LiveUser> {
        let user = match name {
            Some(n) => nix::unistd::User::from_name(n)
                .ok()
                .flatten()
                .ok_or_else(|| Error::NotFound(format!("no user named {n} on this system")))?,
            None => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(1000))
                .ok()
                .flatten()
                .ok_or_else(|| {
                    Error::NotFound(
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

/// Resolves who owns what on this system.
pub trait Accounts {
    fn live_user(&self) -> Result<&LiveUser>;
    fn system_account(&self, name: &str) -> Result<(u32, u32)>;
}

/// Accounts from the running system's user database.
pub struct SystemAccounts {
    pub live_user: Result<LiveUser, String>,
}

impl SystemAccounts {
    pub fn new(live_user_name: Option<&str>) -> SystemAccounts {
        SystemAccounts {
            live_user: LiveUser::find(live_user_name).map_err(|e| e.to_string()),
        }
    }
}

impl Accounts for SystemAccounts {
    fn live_user(&self) -> Result<&LiveUser> {
        self.live_user
            .as_ref()
            .map_err(|e| Error::NotFound(e.clone()))
    }

    fn system_account(&self, name: &str) -> Result<(u32, u32)> {
        let user = nix::unistd::User::from_name(name)
            .ok()
            .flatten()
            .ok_or_else(|| Error::NotFound(format!("no system account named {name}")))?;
        Ok((user.uid.as_raw(), user.gid.as_raw()))
    }
}

impl Binding {
    pub fn owner(&self, accounts: &dyn Accounts) -> Result<Owner> {
        let (uid, gid) = match self.owner {
            Who::Root => (0, 0),
            Who::LiveUser => {
                let u = accounts.live_user()?;
                (u.uid, u.gid)
            }
            Who::System(name) => accounts.system_account(name)?,
        };
        Ok(Owner {
            uid,
            gid,
            mode: self.mode,
        })
    }

    pub fn entry(&self, accounts: &dyn Accounts) -> Result<Entry> {
        let destination = match self.destination {
            Dest::Absolute(p) => PathBuf::from(p),
            Dest::Home("") => accounts.live_user()?.home.clone(),
            Dest::Home(rel) => accounts.live_user()?.home.join(rel),
        };
        Ok(Entry {
            destination,
            source: PathBuf::from(self.source),
            method: self.method,
        })
    }
}

/// A `persistence.conf` entry with the feature it belongs to and the owner its folders get.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedEntry {
    /// The catalogue feature's name, or the source for a custom feature.
    pub feature: String,
    pub entry: Entry,
    pub owner: Owner,
    pub service: Option<Service>,
}

/// Resolves each config entry: catalogue features get their declared owner; custom ones the
/// live user's when under their home, root's otherwise.
pub fn resolve(entry: &Entry, accounts: &dyn Accounts) -> Result<ResolvedEntry> {
    if let Some((feature, binding)) = Feature::by_source(&entry.source) {
        return Ok(ResolvedEntry {
            feature: feature.name.to_string(),
            entry: entry.clone(),
            owner: binding.owner(accounts)?,
            service: feature.service,
        });
    }
    let owner = match accounts.live_user() {
        Ok(u) if entry.destination.starts_with(&u.home) => Owner {
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
        service: None,
    })
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// Fixed accounts for tests that must not depend on the machine's user database.
    pub struct FakeAccounts;

    impl Accounts for FakeAccounts {
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
                _ => Err(Error::NotFound(name.into())),
            }
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
        let e = f.bindings[0].entry(&FakeAccounts).unwrap();
        assert_eq!(e.destination, Path::new("/home/amnesia/Persistent"));
        assert_eq!(e.render(), "/home/amnesia/Persistent\tsource=Persistent");
        let r = resolve(&e, &FakeAccounts).unwrap();
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
    fn custom_entries_get_a_conservative_owner() {
        let home = Entry {
            destination: "/home/amnesia/Projects".into(),
            source: "projects".into(),
            method: Method::Bind,
        };
        let r = resolve(&home, &FakeAccounts).unwrap();
        assert_eq!(r.feature, "projects");
        assert_eq!(r.owner.uid, 1000);
        let sys = Entry {
            destination: "/opt/tools".into(),
            source: "tools".into(),
            method: Method::Bind,
        };
        assert_eq!(
            resolve(&sys, &FakeAccounts).unwrap().owner,
            Owner::ROOT_0755
        );
    }
}
