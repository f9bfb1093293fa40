//! Executing one feature's activation: each step records what it changed in a journal,
//! so that when step k fails, steps k-1..1 are undone, newest first, and the feature
//! leaves no trace. Also the one undo of a link feature ([`unlink_tree`]). Each change is
//! held by the descriptor of its folder and its identity, never by a path (see `safefs`).

use std::path::{Path, PathBuf};

use crate::host::mounts;
use crate::persistence::config::Method;
use crate::persistence::features::ResolvedEntry;
use crate::safefs::{self, Dir, Displaced, Made};
use crate::session::error::{Error, Result};
use crate::session::trust::{refuse_a_path_others_can_change, refuse_an_untrusted_source};

/// One thing activation changed, to be undone in reverse order. Each is held by the
/// descriptor of its folder and its identity, never by a path (see `safefs`).
#[derive(Debug)]
enum Done {
    Made(Vec<Made>),
    /// A new source folder filled with a copy of the destination's contents.
    Populated(Dir),
    Mounted(PathBuf),
    Linked(Made),
    /// A file that was in a link's way, moved aside until the feature is active.
    Displaced(Displaced),
}

/// The changes made for one feature so far.
#[derive(Debug, Default)]
pub(crate) struct Journal {
    done: Vec<Done>,
}

impl Journal {
    /// Undoes everything recorded, newest first. Best effort: an undo that fails is
    /// reported, and the rest still run.
    pub(crate) fn undo(self) -> Vec<String> {
        let mut problems = Vec::new();
        for step in self.done.into_iter().rev() {
            let result = match step {
                Done::Made(made) => {
                    safefs::remove_made(&made);
                    Ok(())
                }
                Done::Populated(dir) => safefs::remove_contents(&dir).map_err(Error::from),
                Done::Displaced(file) => file.put_back().map_err(Error::from),
                Done::Mounted(path) => mounts::unmount(&path).map_err(Error::from),
                Done::Linked(link) => link.remove().map_err(Error::from),
            };
            if let Err(e) = result {
                problems.push(e.to_string());
            }
        }
        problems
    }

    /// The feature is active: files displaced by its links are dropped, as Tails does.
    fn commit(self) {
        for step in self.done {
            if let Done::Displaced(file) = step {
                let _ = file.drop_it();
            }
        }
    }
}

/// Activates one feature. On failure, whatever it changed is undone before returning.
pub fn activate(volume: &Dir, resolved: &ResolvedEntry) -> Result<()> {
    let mut journal = Journal::default();
    match activate_steps(volume, resolved, &mut journal) {
        Ok(()) => {
            journal.commit();
            Ok(())
        }
        Err(e) => {
            let problems = journal.undo();
            if problems.is_empty() {
                Err(e)
            } else {
                // Of the class of what went wrong first: an undo the live user foiled
                // (a folder moved meanwhile) is no internal error.
                Err(e.with_note(&format!("and undoing it failed: {}", problems.join("; "))))
            }
        }
    }
}

fn activate_steps(volume: &Dir, resolved: &ResolvedEntry, journal: &mut Journal) -> Result<()> {
    let e = &resolved.entry;
    // Judged before anything is made: the folders it looks at are ones the live user
    // cannot change (that is what it checks), so they stay as judged.
    refuse_an_untrusted_source(volume, resolved)?;
    match e.method {
        Method::File => return activate_file(volume, resolved, journal),
        Method::Union => return activate_union(volume, resolved, journal),
        Method::Bind | Method::Link => {}
    }
    let (dest, made) = safefs::open_dir(&e.destination, Some(resolved.owner))?;
    let dest_existed = made.is_empty();
    journal.done.push(Done::Made(made));
    let (source, made) = safefs::open_beneath(volume, &e.source, Some(resolved.owner))?;
    let source_existed = made.is_empty();
    journal.done.push(Done::Made(made));
    if resolved.strict && source_existed {
        let found = safefs::owner_of(&source)?;
        if found != resolved.owner {
            return Err(Error::WrongOwner(format!(
                "{} must be owned by uid {} gid {} with mode {:04o} (it is uid {} gid {} mode {:04o}); not activated",
                source.path.display(),
                resolved.owner.uid,
                resolved.owner.gid,
                resolved.owner.mode,
                found.uid,
                found.gid,
                found.mode
            )));
        }
    }
    if e.method == Method::Link {
        return link_tree(&source, &dest, journal);
    }
    // A new folder starts as a copy of what the session has there (as Tails and live-boot
    // do with `cp -a`): enabling a feature keeps the data of the moment, and system
    // folders such as /etc/cups keep their default files.
    if !source_existed && dest_existed {
        journal.done.push(Done::Populated(source.try_clone()?));
        safefs::copy_contents(&dest, &source)?;
    }
    mounts::bind(&source, &dest)?;
    journal.done.push(Done::Mounted(e.destination.clone()));
    Ok(())
}

/// Tails' `file`: one file of the volume bind-mounted over one file of the session. A
/// missing source starts as a copy of the session's file (as Tails does with `cp -a`); a
/// missing destination is made empty, mode 0600.
fn activate_file(volume: &Dir, resolved: &ResolvedEntry, journal: &mut Journal) -> Result<()> {
    let e = &resolved.entry;
    let split = |p: &Path| match (p.parent(), p.file_name()) {
        (Some(parent), Some(name)) => Ok((parent.to_path_buf(), name.to_os_string())),
        _ => Err(Error::NotAFile(format!(
            "{} is not a file's path",
            p.display()
        ))),
    };
    let (dest_parent, dest_name) = split(&e.destination)?;
    let (source_parent, source_name) = split(&e.source)?;
    let (dest_dir, made) = safefs::open_dir(&dest_parent, Some(resolved.owner))?;
    journal.done.push(Done::Made(made));
    let (source_dir, made) = safefs::open_beneath(volume, &source_parent, Some(resolved.owner))?;
    journal.done.push(Done::Made(made));
    let file_owner = safefs::Owner {
        mode: 0o600,
        ..resolved.owner
    };
    let (dest, made) = safefs::open_file_in(&dest_dir, &dest_name, Some((file_owner, None)))?;
    let dest_existed = made.is_none();
    if let Some(m) = made {
        journal.done.push(Done::Made(vec![m]));
    }
    let template = dest_existed.then_some(&dest);
    let (source, made) =
        safefs::open_file_in(&source_dir, &source_name, Some((file_owner, template)))?;
    if let Some(m) = made {
        journal.done.push(Done::Made(vec![m]));
    }
    mounts::bind_file(&source, &dest, &dest_dir, &dest_name)?;
    journal.done.push(Done::Mounted(e.destination.clone()));
    Ok(())
}

/// live-boot's `union`: an overlay on the destination, with the changes in `SOURCE/rw`
/// (the overlay's root takes that folder's owner and mode: the destination's, when it is
/// made) and overlayfs' work folder in `SOURCE/work`. overlayfs takes those two by path,
/// so the source folder is made root's 0755 and every folder on the way must be root's
/// and writable by nobody else: then nobody can swap a symlink into the path.
fn activate_union(volume: &Dir, resolved: &ResolvedEntry, journal: &mut Journal) -> Result<()> {
    let e = &resolved.entry;
    let (dest, made) = safefs::open_dir(&e.destination, Some(resolved.owner))?;
    journal.done.push(Done::Made(made));
    let dest_owner = safefs::owner_of(&dest)?;
    let (source, made) = safefs::open_beneath(volume, &e.source, Some(safefs::Owner::ROOT_0755))?;
    journal.done.push(Done::Made(made));
    // live-boot makes the source the destination's (chown_ref): the layers below carry
    // that owner, the source itself becomes root's.
    safefs::set_owner(&source, safefs::Owner::ROOT_0755)?;
    let (_, made) = safefs::open_beneath(&source, Path::new("rw"), Some(dest_owner))?;
    journal.done.push(Done::Made(made));
    let (_, made) =
        safefs::open_beneath(&source, Path::new("work"), Some(safefs::Owner::ROOT_0700))?;
    journal.done.push(Done::Made(made));
    refuse_a_path_others_can_change(volume, &e.source)?;
    let root = volume.path.join(&e.source);
    mounts::overlay(&dest, &root.join("rw"), &root.join("work"))?;
    journal.done.push(Done::Mounted(e.destination.clone()));
    Ok(())
}

/// Symlinks every file of `source` into `dest`, recreating its folders (with the owner
/// and mode they have in `source`). A file already at the destination is replaced by the
/// link, as Tails does (and put back if the feature cannot be activated); a folder where
/// a file must go is an error.
fn link_tree(source: &Dir, dest: &Dir, journal: &mut Journal) -> Result<()> {
    let mut dest_cursor = safefs::Cursor::new(dest);
    walk(source, |src, rel, entries| {
        let dst = dest_cursor.open(rel).ok_or_else(|| {
            Error::InTheWay(format!(
                "{} was changed by someone else meanwhile; not activated",
                dest.path.join(rel).display()
            ))
        })?;
        let present = safefs::list(dst)?;
        for entry in entries {
            let name = entry.name.as_os_str();
            if entry.is_dir() {
                // Made now, so that the walk finds it when it enters the folder.
                let (_, made) = safefs::open_beneath(dst, Path::new(name), Some(entry.owner()))?;
                journal.done.push(Done::Made(made));
                continue;
            }
            let link_target = src.path.join(name);
            if let Some(there) = present.iter().find(|p| p.name == entry.name) {
                if safefs::link_target(dst, name).as_deref() == Some(link_target.as_path()) {
                    continue;
                }
                if there.is_dir() {
                    return Err(Error::InTheWay(format!(
                        "{} is a folder where the volume has a file; move it away first",
                        dst.path.join(name).display()
                    )));
                }
                journal
                    .done
                    .push(Done::Displaced(Displaced::move_aside(dst, there)?));
            }
            let link =
                safefs::symlink_in(dst, name, &link_target, entry.st.st_uid, entry.st.st_gid)?;
            journal.done.push(Done::Linked(link));
        }
        Ok(())
    })
}

/// [`safefs::walk`] with a visitor that fails with this layer's errors: the walk stops at
/// the first, which is returned as it was.
fn walk(
    root: &Dir,
    mut visit: impl FnMut(&Dir, &Path, &[safefs::Entry]) -> Result<()>,
) -> Result<()> {
    safefs::walk(root, |dir, rel, entries| visit(dir, rel, entries))
}

/// Removes the symlinks under `destination` that point under `target_prefix` (the volume,
/// or one feature's folder of it). Other files, and the folders the links were in, stay:
/// they may hold what the user made there during the session. Walks by descriptors with a
/// bounded number of them open ([`safefs::walk`]), and removes each link through its
/// folder's descriptor, only while it is the link that was read.
pub fn unlink_tree(destination: &Path, target_prefix: &Path) -> Result<usize> {
    let root = match safefs::open_dir(destination, None) {
        Ok((root, _)) => root,
        Err(safefs::Error::NotFound(_)) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let mut removed = 0;
    safefs::walk(&root, |dir, _, entries| {
        for entry in entries.iter().filter(|e| e.is_symlink()) {
            let ours =
                safefs::link_target(dir, &entry.name).is_some_and(|t| t.starts_with(target_prefix));
            if ours && safefs::remove_entry(dir, entry).is_ok() {
                removed += 1;
            }
        }
        Ok::<(), Error>(())
    })?;
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::persistence::features::SourceGuard;
    use crate::safefs::Owner;
    use crate::session::plan::is_active;
    use crate::session::plan::tests::resolved;

    #[test]
    fn link_tree_links_files_and_undo_removes_them() {
        let tmp = tempfile::tempdir().unwrap();
        let vol = tmp.path().join("vol");
        let home = tmp.path().join("home");
        std::fs::create_dir_all(vol.join("dotfiles/.config/app")).unwrap();
        std::fs::write(vol.join("dotfiles/.bashrc"), "alias x=y\n").unwrap();
        std::fs::write(vol.join("dotfiles/.config/app/rc"), "k=v\n").unwrap();
        std::fs::create_dir(&home).unwrap();
        std::fs::write(home.join("keep-me"), "mine").unwrap();
        let (volume, _) = safefs::open_dir(&vol, None).unwrap();
        let me = Owner {
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            mode: 0o700,
        };
        let r = ResolvedEntry {
            owner: me,
            ..resolved(home.to_str().unwrap(), "dotfiles", Method::Link)
        };
        activate(&volume, &r).unwrap();
        assert_eq!(
            std::fs::read_link(home.join(".bashrc")).unwrap(),
            vol.join("dotfiles/.bashrc")
        );
        assert_eq!(
            std::fs::read_to_string(home.join(".config/app/rc")).unwrap(),
            "k=v\n"
        );
        // Running again is harmless: the links are already there.
        activate(&volume, &r).unwrap();
        assert_eq!(unlink_tree(&home, &vol).unwrap(), 2);
        assert!(!home.join(".bashrc").exists());
        assert_eq!(
            std::fs::read_to_string(home.join("keep-me")).unwrap(),
            "mine"
        );
    }

    fn me(mode: u32) -> Owner {
        Owner {
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            mode,
        }
    }

    #[test]
    fn a_failed_link_feature_leaves_nothing_behind_and_puts_files_back() {
        let tmp = tempfile::tempdir().unwrap();
        let vol = tmp.path().join("vol");
        let home = tmp.path().join("home");
        std::fs::create_dir_all(vol.join("dotfiles")).unwrap();
        std::fs::write(vol.join("dotfiles/.a"), "a").unwrap();
        std::fs::write(vol.join("dotfiles/.b"), "b").unwrap();
        std::fs::write(vol.join("dotfiles/.c"), "c").unwrap();
        std::fs::create_dir(&home).unwrap();
        std::fs::write(home.join(".b"), "the session's own").unwrap();
        std::fs::create_dir(home.join(".c")).unwrap();
        let (volume, _) = safefs::open_dir(&vol, None).unwrap();
        let r = ResolvedEntry {
            owner: me(0o700),
            ..resolved(home.to_str().unwrap(), "dotfiles", Method::Link)
        };
        let err = activate(&volume, &r).unwrap_err();
        assert!(err.to_string().contains(".c is a folder"), "{err}");
        assert!(
            std::fs::symlink_metadata(home.join(".a")).is_err(),
            ".a was rolled back"
        );
        assert_eq!(
            std::fs::read_to_string(home.join(".b")).unwrap(),
            "the session's own"
        );
        assert!(
            !home.join(".b.keepsake-displaced").exists()
                && !home.join("..b.keepsake-displaced").exists()
        );
        // Without the folder in the way, the file is replaced by the link.
        std::fs::remove_dir(home.join(".c")).unwrap();
        activate(&volume, &r).unwrap();
        assert_eq!(
            std::fs::read_link(home.join(".b")).unwrap(),
            vol.join("dotfiles/.b")
        );
        assert_eq!(
            std::fs::read_dir(&home).unwrap().count(),
            3,
            "no displaced copy left"
        );
    }

    /// A tmpfs at `path` (a filesystem of its own, as the volume is), unmounted when the
    /// guard is dropped. With `unbindable`, no folder of it can be bind-mounted (the kernel
    /// says EINVAL): a bind that fails after everything before it was done.
    fn tmpfs(path: &Path, unbindable: bool) -> Unmount {
        nix::mount::mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        let guard = Unmount(path.to_path_buf());
        if unbindable {
            set_propagation(path, nix::mount::MsFlags::MS_UNBINDABLE);
        }
        guard
    }

    fn set_propagation(path: &Path, flag: nix::mount::MsFlags) {
        nix::mount::mount(None::<&str>, path, None::<&str>, flag, None::<&str>).unwrap();
    }

    fn mounted_at(path: &Path) -> bool {
        mounts::read_mountinfo()
            .unwrap()
            .iter()
            .any(|m| m.mount_point == path)
    }

    #[test]
    fn a_new_bind_source_starts_as_a_copy_and_is_emptied_on_failure() {
        let tmp = root_only_tempdir();
        let vol = tmp.path().join("vol");
        std::fs::create_dir(&vol).unwrap();
        let dest = tmp.path().join("etc-cups");
        std::fs::create_dir(&dest).unwrap();
        std::fs::write(dest.join("cupsd.conf"), "Listen localhost:631\n").unwrap();
        std::fs::create_dir(dest.join("ppd")).unwrap();
        std::fs::write(dest.join("ppd/printer.ppd"), "*PPD-Adobe\n").unwrap();
        let _unmount = tmpfs(&vol, true);
        let (volume, _) = safefs::open_dir(&vol, None).unwrap();
        let r = ResolvedEntry {
            owner: Owner::ROOT_0755,
            ..resolved(dest.to_str().unwrap(), "cups-configuration", Method::Bind)
        };
        // The source is new, so it is filled with a copy of the destination; then the
        // bind fails (the volume is unbindable): the copy must go, and the folder with it.
        let err = activate(&volume, &r).unwrap_err();
        assert!(err.to_string().contains("binding"), "{err}");
        assert!(
            !vol.join("cups-configuration").exists(),
            "the copied source was emptied and removed"
        );
        assert!(!mounted_at(&dest), "nothing mounted");
        // The negative control: bindable, the same activation goes through, with the copy.
        set_propagation(&vol, nix::mount::MsFlags::MS_PRIVATE);
        activate(&volume, &r).unwrap();
        assert_eq!(
            std::fs::read_to_string(vol.join("cups-configuration/ppd/printer.ppd")).unwrap(),
            "*PPD-Adobe\n"
        );
        mounts::unmount(&dest).unwrap();
        assert_eq!(
            std::fs::read_to_string(dest.join("cupsd.conf")).unwrap(),
            "Listen localhost:631\n",
            "the session's own files are untouched"
        );
    }

    #[test]
    fn new_source_and_destination_folders_are_removed_again_when_the_bind_fails() {
        let tmp = root_only_tempdir();
        let vol = tmp.path().join("vol");
        std::fs::create_dir(&vol).unwrap();
        let _unmount = tmpfs(&vol, true);
        // One folder of the source's path exists already, and one of the destination's.
        std::fs::create_dir(vol.join("projects")).unwrap();
        std::fs::create_dir(tmp.path().join("home")).unwrap();
        let (volume, _) = safefs::open_dir(&vol, None).unwrap();
        let dest = tmp.path().join("home/work/code");
        let r = ResolvedEntry {
            owner: Owner::ROOT_0755,
            ..resolved(dest.to_str().unwrap(), "projects/2026/code", Method::Bind)
        };
        // Both made (the destination first, then the source), then the bind fails.
        let err = activate(&volume, &r).unwrap_err();
        assert!(err.to_string().contains("binding"), "{err}");
        assert!(
            !vol.join("projects/2026").exists(),
            "the new source folders were removed"
        );
        assert!(
            vol.join("projects").is_dir(),
            "the one that was there stays"
        );
        assert!(
            !tmp.path().join("home/work").exists(),
            "the new destination folders were removed"
        );
        assert!(tmp.path().join("home").is_dir());
        assert!(!mounted_at(&dest));
    }

    /// Unmounts a test's filesystem when the test ends, passed or not.
    struct Unmount(PathBuf);

    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }

    /// A folder under /run (root's 0755 all the way up), as a volume's mount root is.
    fn root_only_tempdir() -> tempfile::TempDir {
        assert!(nix::unistd::geteuid().is_root(), "this test needs root");
        tempfile::Builder::new()
            .prefix("keepsake-test-")
            .tempdir_in("/run")
            .unwrap()
    }

    #[test]
    fn a_file_feature_binds_one_file_and_starts_as_a_copy() {
        let tmp = root_only_tempdir();
        let vol = tmp.path().join("vol");
        let etc = tmp.path().join("etc");
        std::fs::create_dir_all(&vol).unwrap();
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(etc.join("hosts"), "127.0.0.1 localhost\n").unwrap();
        // A filesystem of its own, as the volume is: the bind's root is then /hosts.
        let _unmount = tmpfs(&vol, false);
        let (volume, _) = safefs::open_dir(&vol, None).unwrap();
        let dest = etc.join("hosts");
        let r = ResolvedEntry {
            owner: Owner::ROOT_0755,
            ..resolved(dest.to_str().unwrap(), "hosts", Method::File)
        };
        activate(&volume, &r).unwrap();
        let table = mounts::read_mountinfo().unwrap();
        let dev = std::os::unix::fs::MetadataExt::dev(&std::fs::metadata(&vol).unwrap());
        let dev = (
            nix::sys::stat::major(dev) as u32,
            nix::sys::stat::minor(dev) as u32,
        );
        assert!(
            is_active(&table, dev, &vol, &r.entry),
            "a bind of /hosts at {dest:?}"
        );
        // The new source is a copy; writes through the destination land in the volume.
        std::fs::write(&dest, "10.0.0.1 kept\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(vol.join("hosts")).unwrap(),
            "10.0.0.1 kept\n"
        );
        mounts::unmount(&dest).unwrap();
        assert_eq!(
            std::fs::read_to_string(&dest).unwrap(),
            "127.0.0.1 localhost\n",
            "the session's own file is back"
        );
        // A symlink in place of the source is refused, nothing is mounted.
        std::fs::remove_file(vol.join("hosts")).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", vol.join("hosts")).unwrap();
        let err = activate(&volume, &r).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        assert_eq!(
            std::fs::read_to_string(&dest).unwrap(),
            "127.0.0.1 localhost\n"
        );
    }

    #[test]
    fn a_union_feature_overlays_the_destination_with_changes_in_the_volume() {
        let tmp = root_only_tempdir();
        let vol = tmp.path().join("vol");
        let srv = tmp.path().join("srv");
        std::fs::create_dir_all(&vol).unwrap();
        std::fs::create_dir_all(&srv).unwrap();
        std::fs::write(srv.join("from-the-image"), "lower\n").unwrap();
        let (volume, _) = safefs::open_dir(&vol, None).unwrap();
        let r = ResolvedEntry {
            owner: Owner::ROOT_0755,
            ..resolved(srv.to_str().unwrap(), "srv", Method::Union)
        };
        activate(&volume, &r).unwrap();
        let table = mounts::read_mountinfo().unwrap();
        assert!(
            is_active(&table, (0, 0), &vol, &r.entry),
            "an overlay with upper vol/srv/rw"
        );
        assert_eq!(
            std::fs::read_to_string(srv.join("from-the-image")).unwrap(),
            "lower\n"
        );
        std::fs::write(srv.join("new"), "upper\n").unwrap();
        mounts::unmount(&srv).unwrap();
        assert_eq!(
            std::fs::read_to_string(vol.join("srv/rw/new")).unwrap(),
            "upper\n"
        );
        assert!(
            !srv.join("new").exists(),
            "the change lives in the volume only"
        );
        let (uid, mode) = {
            use std::os::unix::fs::MetadataExt;
            let m = std::fs::metadata(vol.join("srv")).unwrap();
            (m.uid(), m.mode() & 0o7777)
        };
        assert_eq!((uid, mode), (0, 0o755), "the union's folder is root's");
    }

    #[test]
    fn a_union_under_a_folder_others_can_write_is_refused() {
        assert!(nix::unistd::geteuid().is_root(), "this test needs root");
        // /tmp is world-writable: a symlink could be swapped into the overlay's paths.
        let tmp = tempfile::tempdir_in("/tmp").unwrap();
        let vol = tmp.path().join("vol");
        let srv = tmp.path().join("srv");
        std::fs::create_dir_all(&vol).unwrap();
        std::fs::create_dir_all(&srv).unwrap();
        let (volume, _) = safefs::open_dir(&vol, None).unwrap();
        let r = ResolvedEntry {
            owner: Owner::ROOT_0755,
            ..resolved(srv.to_str().unwrap(), "srv", Method::Union)
        };
        let err = activate(&volume, &r).unwrap_err();
        assert!(err.to_string().contains("/tmp (uid 0, mode 1777)"), "{err}");
        let table = mounts::read_mountinfo().unwrap();
        assert!(
            !table.iter().any(|m| m.mount_point == srv),
            "nothing mounted"
        );
        assert!(!vol.join("srv").exists(), "and what was made is gone");
    }

    #[test]
    fn a_strict_source_with_the_wrong_mode_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let vol = tmp.path().join("vol");
        std::fs::create_dir_all(vol.join("tor")).unwrap();
        std::fs::set_permissions(
            vol.join("tor"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let (volume, _) = safefs::open_dir(&vol, None).unwrap();
        let me = Owner {
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            mode: 0o700,
        };
        let dest = tmp.path().join("dest");
        let r = ResolvedEntry {
            owner: me,
            strict: true,
            ..resolved(dest.to_str().unwrap(), "tor", Method::Bind)
        };
        let err = activate(&volume, &r).unwrap_err();
        assert!(err.to_string().contains("mode 0700 (it is"), "{err}");
        assert!(err.to_string().contains("mode 0755"), "{err}");
        assert!(!dest.exists(), "nothing made at the destination");
    }

    #[test]
    fn a_destination_through_a_symlink_is_refused_before_the_source_is_made() {
        let tmp = tempfile::tempdir().unwrap();
        let vol = tmp.path().join("vol");
        std::fs::create_dir(&vol).unwrap();
        // The destination runs through a symlink: refused before the source is made (the
        // rollback of a new source is tested where a later step fails, above).
        std::os::unix::fs::symlink("/etc", tmp.path().join("evil")).unwrap();
        let (volume, _) = safefs::open_dir(&vol, None).unwrap();
        let me = Owner {
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            mode: 0o700,
        };
        let dest = tmp.path().join("evil/keepsake-test");
        let r = ResolvedEntry {
            owner: me,
            ..resolved(dest.to_str().unwrap(), "src", Method::Bind)
        };
        let err = activate(&volume, &r).unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        assert!(!vol.join("src").exists(), "no source was made");
        assert!(!Path::new("/etc/keepsake-test").exists());
    }

    /// A guard for a live user with uid/gid 4242 (a uid the test's files never have).
    fn guard() -> SourceGuard {
        SourceGuard {
            owners: vec![0],
            live_uid: 4242,
            live_gids: vec![4242],
        }
    }

    /// Sets an access ACL giving `uid` the permissions `perm` (and the mask rwx).
    fn set_acl(path: &Path, uid: u32, perm: u16) {
        let acl = safefs::acl_giving(uid, perm);
        let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: NUL-terminated path and name, and a buffer of the length given.
        let rc = unsafe {
            libc::setxattr(
                path.as_ptr(),
                c"system.posix_acl_access".as_ptr(),
                acl.as_ptr().cast(),
                acl.len(),
                0,
            )
        };
        assert_eq!(rc, 0, "setting an ACL: {}", std::io::Error::last_os_error());
    }

    fn chown(path: &Path, uid: u32, gid: u32, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
        std::fs::set_permissions(path, PermissionsExt::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_source_the_live_user_can_change_is_never_bound_over_a_system_path() {
        // As root (how the suite runs): the files can be given to the "live user".
        assert!(nix::unistd::geteuid().is_root(), "this test needs root");
        let tmp = tempfile::tempdir().unwrap();
        let vol = tmp.path().join("vol");
        std::fs::create_dir_all(vol.join("Persistent/sbin")).unwrap();
        std::fs::write(vol.join("Persistent/sbin/ls"), "#!/bin/sh\necho owned\n").unwrap();
        chown(&vol, 0, 0, 0o770);
        chown(&vol.join("Persistent"), 4242, 4242, 0o700);
        chown(&vol.join("Persistent/sbin"), 0, 0, 0o755);
        let sbin = tmp.path().join("usr-local-sbin");
        std::fs::create_dir(&sbin).unwrap();
        let (volume, _) = safefs::open_dir(&vol, None).unwrap();
        let r = ResolvedEntry {
            owner: Owner::ROOT_0755,
            guard: Some(guard()),
            ..resolved(sbin.to_str().unwrap(), "Persistent/sbin", Method::Bind)
        };
        // sbin itself is root's, but Persistent above it is the user's: refused.
        let err = activate(&volume, &r).unwrap_err();
        assert!(matches!(err, Error::UntrustedSource(_)), "{err}");
        assert!(
            err.to_string()
                .contains("Persistent is writable by the live user"),
            "{err}"
        );
        assert!(!sbin.join("ls").exists(), "nothing was bound");
        // A source owned by the live user, in a root-owned path: refused too.
        std::fs::create_dir(vol.join("tools")).unwrap();
        chown(&vol.join("tools"), 4242, 4242, 0o500);
        let r = ResolvedEntry {
            owner: Owner::ROOT_0755,
            guard: Some(guard()),
            ..resolved(sbin.to_str().unwrap(), "tools", Method::Bind)
        };
        let err = activate(&volume, &r).unwrap_err();
        assert!(err.to_string().contains("owned by uid 4242"), "{err}");
        // Group-writable by one of the user's groups, or writable by all: refused.
        for (gid, mode) in [(4242, 0o775), (0, 0o777)] {
            chown(&vol.join("tools"), 0, gid, mode);
            let err = activate(&volume, &r).unwrap_err();
            assert!(
                err.to_string().contains("is writable by the live user"),
                "{err}"
            );
        }
        // Root's by owner and mode, but an ACL lets the user write: refused. Tails' own
        // ACL on the mount root (user:amnesia:x) lets nothing be written, and passes.
        chown(&vol.join("tools"), 0, 0, 0o755);
        set_acl(&vol.join("tools"), 4242, 0o7);
        let err = activate(&volume, &r).unwrap_err();
        assert!(
            err.to_string().contains("is writable by the live user"),
            "{err}"
        );
        set_acl(&vol.join("tools"), 4242, 0o1);
        // A file of the user's inside (a restored archive keeps owners): refused.
        std::fs::write(vol.join("tools/profile.sh"), "echo hi\n").unwrap();
        chown(&vol.join("tools/profile.sh"), 4242, 4242, 0o644);
        let err = activate(&volume, &r).unwrap_err();
        assert!(err.to_string().contains("profile.sh belongs to"), "{err}");
        chown(&vol.join("tools/profile.sh"), 0, 0, 0o644);
        // Root's all the way down: bound (the negative control: the guard lets it pass).
        activate(&volume, &r).unwrap();
        mounts::unmount(&sbin).unwrap();
    }
}
