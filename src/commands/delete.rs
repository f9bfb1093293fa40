//! `keepsake delete`: crypto-erase. Without a keyslot and a header, the data area is
//! ciphertext under a key that no longer exists anywhere.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::cli::{DeleteArgs, GlobalArgs};
use crate::context::{Context, at};
use crate::error::{Error, Result};
use crate::host::disks;
use crate::output::Output;
use crate::volume::Volume;

#[derive(Debug, Serialize)]
struct DeleteReport {
    volume: PathBuf,
    keyslots_destroyed: usize,
    header_bytes_overwritten: u64,
    /// "partition" or "file".
    removed: &'static str,
}

/// What holds the volume, and so what is removed at the end.
enum Container {
    File,
    Partition { disk: PathBuf, number: u32 },
}

pub fn run(global: &GlobalArgs, args: DeleteArgs, out: Output) -> Result<()> {
    super::require_root()?;
    let _lock = super::exclusive()?;
    // A container file may sit in a folder the live user can write: it is opened once,
    // from the path given, without following a symlink anywhere on it (no canonical path
    // is resolved first: that would follow one), and everything after works on that very
    // file (`/proc/self/fd/N`), so that no file swapped in (a link to a disk) is
    // destroyed instead.
    let (named, pinned) = match &args.volume.image {
        Some(image) => {
            let pinned = PinnedFile::open(image)?.ok_or_else(|| {
                Error::Usage(format!(
                    "{} is not a regular file; give a container file, or --device for a partition",
                    image.display()
                ))
            })?;
            let named = std::fs::canonicalize(pinned.proc_path()).context(at("reading", image))?;
            (named, Some(pinned))
        }
        None => (
            super::find_volume(&args.volume, &super::layout(global, None))?,
            None,
        ),
    };
    let backing = pinned
        .as_ref()
        .map_or_else(|| named.clone(), PinnedFile::proc_path);
    let volume = Volume::at(&backing);
    let header = volume.info()?;
    super::require_locked(&named, "an open volume cannot be deleted")?;
    let container = if pinned.is_some() {
        Container::File
    } else {
        let bd = disks::block_device(&backing)?;
        let number = disks::partition_number(&backing).filter(|_| bd.is_partition());
        match number {
            Some(number) => Container::Partition {
                disk: Path::new("/dev").join(bd.disk_name()),
                number,
            },
            None => {
                return Err(Error::Usage(format!(
                    "{} is a whole disk; give the persistence partition (e.g. {}2)",
                    backing.display(),
                    backing.display()
                )));
            }
        }
    };
    if !args.yes {
        let question = format!(
            "This destroys {} ({} keyslot(s)) and everything in it, for good; no passphrase or recovery key will open it again.",
            backing.display(),
            header.keyslots.len()
        );
        if !out.confirm_typed(&question, "DELETE")? {
            return Err(Error::Usage("not confirmed; nothing was changed".into()));
        }
    }
    let erased = volume.erase(&named, |step| out.progress(step))?;
    let removed = match (container, &pinned) {
        (Container::File, Some(file)) => {
            file.remove()?;
            "file"
        }
        (Container::File, None) => unreachable_file(&named)?,
        (Container::Partition { disk, number }, _) => {
            disks::delete_partition(&disk, number)?;
            "partition"
        }
    };
    let report = DeleteReport {
        volume: named,
        keyslots_destroyed: erased.keyslots_destroyed,
        header_bytes_overwritten: erased.header_bytes,
        removed,
    };
    out.result(&report, |r| {
        format!(
            "deleted {}: {} keyslot(s) destroyed, {} KiB of header overwritten, {} removed",
            r.volume.display(),
            r.keyslots_destroyed,
            r.header_bytes_overwritten / 1024,
            r.removed
        )
    });
    Ok(())
}

fn unreachable_file(path: &Path) -> Result<&'static str> {
    Err(Error::Internal(format!(
        "{} was taken for a file but not opened as one",
        path.display()
    )))
}

/// A container file held open from the moment it was found: its folder opened without
/// following symlinks, the file itself with `O_NOFOLLOW`, and its identity kept so that it
/// is removed only while its name still holds it.
struct PinnedFile {
    folder: crate::safefs::Dir,
    name: std::ffi::OsString,
    file: std::fs::File,
    id: (u64, u64),
    path: PathBuf,
}

impl PinnedFile {
    /// `None` when `path` is not a regular file (a block device: a partition).
    fn open(path: &Path) -> Result<Option<PinnedFile>> {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let meta = std::fs::symlink_metadata(path).context(at("reading", path))?;
        if meta.file_type().is_symlink() {
            return Err(Error::Usage(format!(
                "{} is a symlink; give the volume's own path",
                path.display()
            )));
        }
        if !meta.is_file() {
            return Ok(None);
        }
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(Error::Usage(format!(
                "{} is not a file path",
                path.display()
            )));
        };
        let parent = std::path::absolute(parent).context(at("reading", parent))?;
        let (folder, _) = crate::safefs::open_dir(&parent, None)?;
        let through = folder.proc_path().join(name);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&through)
            .context(at("opening", path))?;
        let st = file.metadata().context(at("reading", path))?;
        if !st.is_file() {
            return Err(Error::Busy(format!(
                "{} changed while keepsake looked at it; nothing was done",
                path.display()
            )));
        }
        Ok(Some(PinnedFile {
            folder,
            name: name.to_os_string(),
            id: (st.dev(), st.ino()),
            file,
            path: path.to_path_buf(),
        }))
    }

    /// `/proc/self/fd/N`: a path naming exactly this file, for libcryptsetup.
    fn proc_path(&self) -> PathBuf {
        use std::os::fd::AsRawFd;
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }

    /// Removes the file's name, only while it still names this file.
    fn remove(&self) -> Result<()> {
        use nix::fcntl::AtFlags;
        let st = nix::sys::stat::fstatat(
            &self.folder.fd,
            self.name.as_os_str(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .context(|| format!("reading {}", self.path.display()))?;
        if (st.st_dev, st.st_ino) != self.id {
            return Err(Error::Busy(format!(
                "{} now names another file; its volume was destroyed, the name left as it is",
                self.path.display()
            )));
        }
        nix::unistd::unlinkat(
            &self.folder.fd,
            self.name.as_os_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        )
        .context(|| format!("removing {}", self.path.display()))?;
        Ok(())
    }
}
