//! Planning, pure: from the resolved config and the mount table to what to do. Which
//! features to activate (and in which order), whether one is active now, and what `lock`
//! takes away, in order. Nothing here touches the system; the executor is in
//! [`super::lifecycle`], the steps of one feature in [`super::journal`].

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::host::mounts::{self, Mount};
use crate::host::writers::Writers;
use crate::persistence::config::{self, ConfigFile, Dialect, Entry, Method};
use crate::persistence::features::{self, Host, ResolvedEntry};
use crate::session::report::{FeatureReport, FeatureState};
use crate::session::trust;

/// What to do for one feature line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Activate,
    AlreadyActive,
    Skip(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    pub resolved: ResolvedEntry,
    pub action: Action,
}

/// Whether a bind feature is active: its destination carries a mount of its source folder
/// of the volume.
pub fn bind_is_active(
    table: &[Mount],
    volume_dev: (u32, u32),
    entry_source: &Path,
    dest: &Path,
) -> bool {
    let root = if entry_source == Path::new(crate::persistence::config::VOLUME_ROOT) {
        PathBuf::from("/")
    } else {
        Path::new("/").join(entry_source)
    };
    table
        .iter()
        .any(|m| m.dev == volume_dev && m.mount_point == dest && m.root == root)
}

/// Plans activation of `entries` (in config order) against the current mount table.
pub fn plan_activation(
    entries: &[ResolvedEntry],
    mount_root: &Path,
    volume_dev: (u32, u32),
    table: &[Mount],
) -> Vec<Planned> {
    let mut planned = Vec::new();
    for resolved in entries {
        let e = &resolved.entry;
        let action =
            if e.destination.starts_with(mount_root) || mount_root.starts_with(&e.destination) {
                Action::Skip(format!(
                    "destination {} overlaps the volume's mount point {}",
                    e.destination.display(),
                    mount_root.display()
                ))
            } else if e.method.mounts() && is_active(table, volume_dev, mount_root, e) {
                Action::AlreadyActive
            } else {
                Action::Activate
            };
        planned.push(Planned {
            resolved: resolved.clone(),
            action,
        });
    }
    planned
}

/// Whether a feature line is active now: a bind or file mount of its source at its
/// destination, the overlay with its upper layer in the source, or (link) any link into
/// the source.
pub fn is_active(table: &[Mount], volume_dev: (u32, u32), mount_root: &Path, e: &Entry) -> bool {
    match e.method {
        Method::Bind | Method::File => bind_is_active(table, volume_dev, &e.source, &e.destination),
        Method::Union => mounts::union_is_active(table, mount_root, &e.source, &e.destination),
        Method::Link => links_into(&e.destination, &mount_root.join(&e.source)),
    }
}

/// Whether any entry of `dest` is a symlink into `source` (a link feature is active).
fn links_into(dest: &Path, source: &Path) -> bool {
    std::fs::read_dir(dest).is_ok_and(|rd| {
        rd.filter_map(|e| e.ok())
            .any(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.starts_with(source)))
    })
}

/// What `lock` takes away, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Teardown {
    /// Remove the links a link feature made under this destination.
    Unlink {
        destination: PathBuf,
    },
    Unmount(PathBuf),
}

/// Plans deactivation: every mount of the volume and every mount stacked inside the
/// volume's binds, newest first; then link features' links; then the volume itself last.
fn plan_deactivation(
    table: &[Mount],
    volume_dev: (u32, u32),
    mount_root: &Path,
    link_destinations: &[PathBuf],
) -> Vec<Teardown> {
    let bind_points: Vec<&Path> = table
        .iter()
        .filter(|m| m.dev == volume_dev)
        .map(|m| m.mount_point.as_path())
        .collect();
    let mut seen = HashSet::new();
    let mut steps = Vec::new();
    for m in table.iter().rev() {
        let ours = m.dev == volume_dev
            || bind_points
                .iter()
                .any(|p| m.mount_point.starts_with(p) && m.mount_point != *p);
        if ours && m.mount_point != mount_root && seen.insert(m.mount_point.clone()) {
            steps.push(Teardown::Unmount(m.mount_point.clone()));
        }
    }
    for d in link_destinations.iter().rev() {
        steps.push(Teardown::Unlink {
            destination: d.clone(),
        });
    }
    if table
        .iter()
        .any(|m| m.mount_point == mount_root && m.dev == volume_dev)
    {
        steps.push(Teardown::Unmount(mount_root.to_path_buf()));
    }
    steps
}

/// What `lock` takes away, in order: the deactivation plan (binds and what is mounted on them, links,
/// the volume last), with the overlay ("union") mounts whose upper folder lies in the
/// volume, and whatever is mounted on them, unmounted among the binds in reverse mount
/// order: they hold the volume, so they go before its mount does.
pub fn plan_teardown(
    table: &[mounts::Mount],
    dev: (u32, u32),
    mount_root: &Path,
    link_destinations: &[PathBuf],
) -> Vec<Teardown> {
    let base = plan_deactivation(table, dev, mount_root, link_destinations);
    let unions: Vec<&Path> = mounts::unions_of(table, mount_root)
        .into_iter()
        .map(|m| m.mount_point.as_path())
        .filter(|p| *p != Path::new("/"))
        .collect();
    if unions.is_empty() {
        return base;
    }
    let mut points: Vec<PathBuf> = base
        .iter()
        .filter_map(|s| match s {
            Teardown::Unmount(p) if p != mount_root => Some(p.clone()),
            _ => None,
        })
        .collect();
    for m in table {
        if unions.iter().any(|u| m.mount_point.starts_with(u)) {
            points.push(m.mount_point.clone());
        }
    }
    // Last mounted, first unmounted: by each point's last place in the table.
    let last_index = |p: &PathBuf| table.iter().rposition(|m| &m.mount_point == p);
    points.sort_by_key(|p| std::cmp::Reverse(last_index(p)));
    points.dedup();
    let mut steps: Vec<Teardown> = points.into_iter().map(Teardown::Unmount).collect();
    steps.extend(base.into_iter().filter(|s| match s {
        Teardown::Unlink { .. } => true,
        Teardown::Unmount(p) => p == mount_root,
    }));
    steps
}

/// Resolves the config's entries, in the order they are activated (see
/// [`activation_order`]). One whose owner cannot be resolved, or whose source is nested in
/// another's, fails alone; one that takes effect at boot only is skipped. Both are
/// reported in the second list.
pub fn resolve_entries(
    config: &ConfigFile,
    host: &dyn Host,
    writers: &Writers,
) -> (Vec<ResolvedEntry>, Vec<FeatureReport>) {
    let mut resolved = Vec::new();
    let mut refused = Vec::new();
    let nested = config.nested_sources();
    let home = host.live_user().ok().map(|u| u.home.clone());
    for entry in activation_order(config) {
        let refusal = |state, why: String| FeatureReport {
            name: entry.source.display().to_string(),
            source: entry.source.clone(),
            destination: entry.destination.clone(),
            method: entry.method,
            enabled: true,
            active: false,
            state,
            error: Some(why),
        };
        if let Some(why) = config::boot_only(entry) {
            refused.push(refusal(FeatureState::AtBoot, why));
            continue;
        }
        if let Some(why) = trust::refuse_on_a_volume_not_roots(writers, entry, home.as_deref()) {
            refused.push(refusal(FeatureState::Skipped, why));
            continue;
        }
        let outcome = match nested.iter().find(|(e, _)| e == entry) {
            Some((_, why)) => Err(why.clone()),
            None => features::resolve(entry, host).map_err(|e| e.to_string()),
        };
        match outcome {
            Ok(r) => resolved.push(r),
            Err(why) => refused.push(refusal(FeatureState::Failed, why)),
        }
    }
    (resolved, refused)
}

/// The config's entries in the order their reader activates them (and keepsake too;
/// deactivation runs backwards). Tails: its catalogue order, custom features after.
/// live-boot: mounts sorted by destination, so that /srv/www comes before
/// /srv/www/uploads, then links in the file's order, so that no mount hides them.
pub fn activation_order(config: &ConfigFile) -> Vec<&config::Entry> {
    let mut entries: Vec<&config::Entry> = config.entries().collect();
    match config.dialect {
        Dialect::Tails => entries.sort_by_key(|e| features::Feature::rank(&e.source)),
        Dialect::LiveBoot => entries.sort_by(|a, b| {
            (
                !a.method.mounts(),
                a.method.mounts().then_some(&a.destination),
            )
                .cmp(&(
                    !b.method.mounts(),
                    b.method.mounts().then_some(&b.destination),
                ))
        }),
    }
    entries
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::host::mounts::parse_mountinfo;
    use crate::persistence::config::Entry;
    use crate::persistence::features::tests::FakeHost;
    use crate::safefs::Owner;

    const VOL: (u32, u32) = (254, 0);

    pub(crate) fn resolved(dest: &str, source: &str, method: Method) -> ResolvedEntry {
        ResolvedEntry {
            feature: source.to_string(),
            entry: Entry {
                destination: dest.into(),
                source: source.into(),
                method,
            },
            owner: Owner {
                uid: 1000,
                gid: 1000,
                mode: 0o700,
            },
            strict: false,
            service: None,
            guard: None,
        }
    }

    const TABLE: &str = "\
22 1 0:21 / / rw - tmpfs tmpfs rw
40 22 254:0 / /live/persistence/TailsData_unlocked rw,nosuid,nodev - ext4 /dev/mapper/TailsData_unlocked rw
41 22 254:0 /Persistent /home/amnesia/Persistent rw,nosuid,nodev - ext4 /dev/mapper/TailsData_unlocked rw
42 22 254:0 /gnupg /home/amnesia/.gnupg rw,nosuid,nodev - ext4 /dev/mapper/TailsData_unlocked rw
43 41 0:50 / /home/amnesia/Persistent/usb rw - vfat /dev/sdc1 rw
44 22 0:51 / /media/other rw - vfat /dev/sdd1 rw
";

    #[test]
    fn activation_skips_active_and_overlapping_features() {
        let table = parse_mountinfo(TABLE);
        let root = Path::new("/live/persistence/TailsData_unlocked");
        let entries = vec![
            resolved("/home/amnesia/Persistent", "Persistent", Method::Bind),
            resolved("/home/amnesia/.ssh", "openssh-client", Method::Bind),
            resolved("/live/persistence/TailsData_unlocked/x", "x", Method::Bind),
            resolved("/live", "live", Method::Bind),
            resolved("/home/amnesia", "dotfiles", Method::Link),
        ];
        let plan = plan_activation(&entries, root, VOL, &table);
        let actions: Vec<_> = plan.iter().map(|p| p.action.clone()).collect();
        assert_eq!(actions[0], Action::AlreadyActive);
        assert_eq!(actions[1], Action::Activate);
        assert!(matches!(&actions[2], Action::Skip(r) if r.contains("overlaps")));
        assert!(matches!(&actions[3], Action::Skip(r) if r.contains("overlaps")));
        assert_eq!(actions[4], Action::Activate);
    }

    #[test]
    fn a_bind_of_another_source_at_the_destination_is_not_active() {
        let table = parse_mountinfo(TABLE);
        assert!(bind_is_active(
            &table,
            VOL,
            Path::new("gnupg"),
            Path::new("/home/amnesia/.gnupg")
        ));
        assert!(!bind_is_active(
            &table,
            VOL,
            Path::new("other"),
            Path::new("/home/amnesia/.gnupg")
        ));
        assert!(!bind_is_active(
            &table,
            (254, 1),
            Path::new("gnupg"),
            Path::new("/home/amnesia/.gnupg")
        ));
    }

    #[test]
    fn deactivation_unmounts_newest_first_and_the_volume_last() {
        let table = parse_mountinfo(TABLE);
        let root = Path::new("/live/persistence/TailsData_unlocked");
        let steps = plan_deactivation(&table, VOL, root, &[PathBuf::from("/home/amnesia")]);
        assert_eq!(
            steps,
            vec![
                Teardown::Unmount("/home/amnesia/Persistent/usb".into()),
                Teardown::Unmount("/home/amnesia/.gnupg".into()),
                Teardown::Unmount("/home/amnesia/Persistent".into()),
                Teardown::Unlink {
                    destination: "/home/amnesia".into()
                },
                Teardown::Unmount(root.into()),
            ]
        );
    }

    #[test]
    fn deactivation_of_an_unmounted_volume_is_empty() {
        let table = parse_mountinfo("22 1 0:21 / / rw - tmpfs tmpfs rw\n");
        assert!(plan_deactivation(&table, VOL, Path::new("/x"), &[]).is_empty());
    }

    /// live-boot's session: the volume, a bind, a union with a user's mount on it, links.
    pub(crate) const LIVE_BOOT: &str = "\
30 1 254:0 / /run/live/persistence/sdb2 rw - ext4 /dev/mapper/sdb2 rw
31 1 254:0 /gnupg /home/user/.gnupg rw - ext4 /dev/mapper/sdb2 rw
32 1 0:40 / /home/user/Music rw - overlay overlay rw,lowerdir=/home/user/Music,upperdir=/run/live/persistence/sdb2/Music/rw,workdir=/run/live/persistence/sdb2/Music/work
33 32 0:41 / /home/user/Music/tmp rw - tmpfs tmpfs rw
34 1 0:42 / /srv rw - overlay overlay rw,lowerdir=/srv,upperdir=/run/live/overlay/srv/rw,workdir=/run/live/overlay/srv/work
";

    fn unmounts(plan: &[Teardown]) -> Vec<String> {
        plan.iter()
            .map(|s| match s {
                Teardown::Unmount(p) => format!("umount {}", p.display()),
                Teardown::Unlink { destination } => format!("unlink {}", destination.display()),
            })
            .collect()
    }

    #[test]
    fn unions_on_the_volume_go_before_the_volume() {
        let table = parse_mountinfo(LIVE_BOOT);
        let plan = plan_teardown(
            &table,
            (254, 0),
            Path::new("/run/live/persistence/sdb2"),
            &[PathBuf::from("/home/user")],
        );
        assert_eq!(
            unmounts(&plan),
            vec![
                "umount /home/user/Music/tmp",
                "umount /home/user/Music",
                "umount /home/user/.gnupg",
                "unlink /home/user",
                "umount /run/live/persistence/sdb2",
            ],
            "the amnesic overlay on /srv is not the volume's"
        );
    }

    #[test]
    fn without_unions_the_plan_is_the_binders() {
        let table = parse_mountinfo(
            &LIVE_BOOT
                .lines()
                .filter(|l| !l.contains("overlay") && !l.contains("tmpfs"))
                .map(|l| format!("{l}\n"))
                .collect::<String>(),
        );
        let root = Path::new("/run/live/persistence/sdb2");
        assert_eq!(
            unmounts(&plan_teardown(&table, (254, 0), root, &[])),
            unmounts(&plan_deactivation(&table, (254, 0), root, &[]))
        );
    }

    #[test]
    fn a_source_nested_in_another_fails_alone() {
        let config = ConfigFile::parse(
            "/home/amnesia/Persistent\tsource=Persistent\n\
             /usr/local/sbin\tsource=Persistent/sbin\n\
             /home/amnesia/.gnupg\tsource=gnupg\n\
             /home/amnesia/other\tsource=gnupg\n",
            Dialect::Tails,
        );
        let (resolved, failed) = resolve_entries(&config, &FakeHost, &Writers::Root);
        let ok: Vec<_> = resolved.iter().map(|r| r.entry.source.clone()).collect();
        assert_eq!(
            ok,
            vec![PathBuf::from("Persistent"), PathBuf::from("gnupg")]
        );
        // Nested, and the same source twice: both fail alone, the parser lets both through.
        let errors: Vec<&str> = failed.iter().filter_map(|f| f.error.as_deref()).collect();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors.iter().any(|e| e.contains("is inside Persistent")));
        assert!(errors.iter().any(|e| e.contains("the same as gnupg")));
        assert_eq!(config.errors().count(), 0);
    }

    #[test]
    fn features_activate_in_their_readers_order() {
        let dests = |text: &str, dialect| {
            let config = ConfigFile::parse(text, dialect);
            activation_order(&config)
                .into_iter()
                .map(|e| e.destination.display().to_string())
                .collect::<Vec<_>>()
        };
        // Tails: its catalogue's order, whatever the file's; Dotfiles last of the built-ins
        // (so its links land in .ssh after .ssh is bound), custom features after.
        assert_eq!(
            dests(
                "/home/amnesia\tsource=dotfiles,link\n/opt/x\tsource=x\n/home/amnesia/.ssh\tsource=openssh-client\n/home/amnesia/Persistent\tsource=Persistent\n",
                Dialect::Tails
            ),
            [
                "/home/amnesia/Persistent",
                "/home/amnesia/.ssh",
                "/home/amnesia",
                "/opt/x"
            ]
        );
        // live-boot: mounts sorted by destination (sort -k3), then links in file order.
        assert_eq!(
            dests(
                "/home/u source=d link\n/srv/www/uploads source=up\n/srv/data union\n/srv/www source=www\n",
                Dialect::LiveBoot
            ),
            ["/srv/data", "/srv/www", "/srv/www/uploads", "/home/u"]
        );
    }

    #[test]
    fn a_volume_others_could_write_activates_only_into_the_home() {
        let config = ConfigFile::parse(
            "/home/amnesia/Persistent source=Persistent\n\
             /home/amnesia source=dotfiles link\n\
             /var/lib/tor source=tor-state\n\
             /usr/local/sbin source=sbin\n\
             /home/amnesia/.local union\n\
             /etc/NetworkManager/system-connections source=nm-system-connections\n",
            Dialect::LiveBoot,
        );
        let outcome = |writers: &Writers| {
            let (resolved, refused) = resolve_entries(&config, &FakeHost, writers);
            let mut ok: Vec<String> = resolved
                .iter()
                .map(|r| r.entry.destination.display().to_string())
                .collect();
            ok.sort();
            let skipped: Vec<(String, String)> = refused
                .iter()
                .filter(|f| f.state == FeatureState::Skipped)
                .map(|f| {
                    (
                        f.destination.display().to_string(),
                        f.error.clone().unwrap(),
                    )
                })
                .collect();
            (ok, skipped)
        };
        // The same config on a volume only root can write: everything goes (the control).
        let (ok, skipped) = outcome(&Writers::Root);
        assert_eq!(ok.len(), 6, "{ok:?}");
        assert!(skipped.is_empty());
        // On the live user's: the home's bind and links only; no system path, no union.
        let theirs = Writers::NotOnlyRoot("/media/amnesia/STICK is a udisks mount".into());
        let (ok, skipped) = outcome(&theirs);
        assert_eq!(ok, ["/home/amnesia", "/home/amnesia/Persistent"]);
        let dests: Vec<&str> = skipped.iter().map(|(d, _)| d.as_str()).collect();
        assert_eq!(
            dests,
            [
                "/etc/NetworkManager/system-connections",
                "/home/amnesia/.local",
                "/usr/local/sbin",
                "/var/lib/tor"
            ]
        );
        for (dest, why) in &skipped {
            assert!(
                why.contains("udisks mount") && why.contains("keepsake create --device"),
                "{dest}: {why}"
            );
        }
        assert!(
            skipped[1].1.contains("never as a union"),
            "{}",
            skipped[1].1
        );
    }

    #[test]
    fn features_outside_the_home_are_guarded_inside_it_not() {
        let config = ConfigFile::parse(
            "/home/amnesia/Persistent\tsource=Persistent\n/var/lib/tor\tsource=tor-state\n",
            Dialect::Tails,
        );
        let (resolved, _) = resolve_entries(&config, &FakeHost, &Writers::Root);
        assert_eq!(resolved[0].guard, None);
        let guard = resolved[1].guard.as_ref().unwrap();
        assert_eq!(guard.owners, vec![0, 101], "root or debian-tor");
        assert_eq!(guard.live_uid, 1000);
    }
}
