//! No shape of the live user's tree can make root's walks fail: a folder thousands of
//! levels deep is linked, unlinked, copied and removed with 64 descriptors allowed.
//!
//! Its own test binary, because it lowers RLIMIT_NOFILE for the whole process.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use keepsake::persistence::config::{Entry, Method};
use keepsake::persistence::features::ResolvedEntry;
use keepsake::safefs::{self, Owner};
use keepsake::session::journal;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{Mode, mkdirat};

const DEPTH: usize = 1500;
const FD_LIMIT: u64 = 64;

/// Makes `root/d/d/.../d` (DEPTH levels) with a file `f` at the bottom, through
/// descriptors (the path is far longer than PATH_MAX). Returns the relative path of the
/// bottom file.
fn make_deep(root: &Path) -> PathBuf {
    let mut dir: OwnedFd = openat(
        nix::fcntl::AT_FDCWD,
        root,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY,
        Mode::empty(),
    )
    .unwrap();
    let mut rel = PathBuf::new();
    for _ in 0..DEPTH {
        mkdirat(&dir, "d", Mode::from_bits_truncate(0o755)).unwrap();
        dir = openat(
            &dir,
            "d",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            Mode::empty(),
        )
        .unwrap();
        rel.push("d");
    }
    let f = openat(
        &dir,
        "f",
        OFlag::O_WRONLY | OFlag::O_CREAT,
        Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    drop(f);
    rel.join("f")
}

/// Whether `rel` (longer than PATH_MAX) exists below `root`, looked up by descriptors.
fn exists_below(root: &Path, rel: &Path) -> bool {
    let (base, _) = safefs::open_dir(root, None).unwrap();
    let parent = rel.parent().unwrap();
    let Ok((dir, _)) = safefs::open_beneath(&base, parent, None) else {
        return false;
    };
    let name = rel.file_name().unwrap();
    safefs::list(&dir).unwrap().iter().any(|e| e.name == name)
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn a_tree_deeper_than_the_descriptor_limit_is_linked_unlinked_copied_and_removed() {
    nix::sys::resource::setrlimit(
        nix::sys::resource::Resource::RLIMIT_NOFILE,
        FD_LIMIT,
        FD_LIMIT,
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let vol = tmp.path().join("vol");
    let home = tmp.path().join("home");
    std::fs::create_dir_all(vol.join("dotfiles")).unwrap();
    std::fs::create_dir(&home).unwrap();
    let bottom = make_deep(&vol.join("dotfiles"));
    let me = Owner {
        uid: nix::unistd::getuid().as_raw(),
        gid: nix::unistd::getgid().as_raw(),
        mode: 0o700,
    };
    let (volume, _) = safefs::open_dir(&vol, None).unwrap();
    let dotfiles = ResolvedEntry {
        feature: "dotfiles".into(),
        entry: Entry {
            destination: home.clone(),
            source: "dotfiles".into(),
            method: Method::Link,
        },
        owner: me,
        strict: false,
        service: None,
        guard: None,
    };
    let before = open_fds();
    journal::activate(&volume, &dotfiles).unwrap();
    assert!(exists_below(&home, &bottom), "the deepest file is linked");
    assert_eq!(journal::unlink_tree(&home, &vol).unwrap(), 1);
    assert!(!exists_below(&home, &bottom), "and unlinked again");

    // A new bind source starts as a copy of the destination: the copy and its undo.
    let (from, _) = safefs::open_dir(&vol.join("dotfiles"), None).unwrap();
    std::fs::create_dir(tmp.path().join("copy")).unwrap();
    let (to, _) = safefs::open_dir(&tmp.path().join("copy"), None).unwrap();
    assert_eq!(safefs::copy_contents(&from, &to).unwrap(), DEPTH as u64 + 1);
    assert!(exists_below(&tmp.path().join("copy"), &bottom));
    safefs::remove_contents(&to).unwrap();
    assert_eq!(
        std::fs::read_dir(tmp.path().join("copy")).unwrap().count(),
        0
    );
    drop((from, to));
    assert!(open_fds() <= before, "no descriptor leaked");
}
