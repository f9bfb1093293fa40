//! `keepsake delete`: crypto-erase. Without a keyslot and a header, the data area is
//! ciphertext under a key that no longer exists anywhere.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::cli::{DeleteArgs, GlobalArgs};
use crate::disks;
use crate::error::{Context, Error, Result, at};
use crate::output::Output;
use crate::volume;

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
    let backing = super::find_volume(&args.volume, &super::layout(global, None))?;
    let header = volume::header_info(&backing)?;
    super::require_locked(&backing, "an open volume cannot be deleted")?;
    let container = if std::fs::metadata(&backing)
        .context(at("reading", &backing))?
        .is_file()
    {
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
    let header_bytes = volume::header_area_bytes(&backing)?;
    out.progress("destroying the keyslots");
    let keyslots = volume::destroy_keyslots(&backing)?;
    out.progress(format!(
        "overwriting the header area ({} KiB) with random data",
        header_bytes / 1024
    ));
    overwrite_random(&backing, header_bytes)?;
    if volume::is_luks(&backing) {
        return Err(Error::Internal(format!(
            "{} still reads as LUKS after the overwrite; its partition or file was left in place",
            backing.display()
        )));
    }
    let removed = match container {
        Container::File => {
            std::fs::remove_file(&backing).context(at("removing", &backing))?;
            "file"
        }
        Container::Partition { disk, number } => {
            disks::delete_partition(&disk, number)?;
            "partition"
        }
    };
    let report = DeleteReport {
        volume: backing,
        keyslots_destroyed: keyslots,
        header_bytes_overwritten: header_bytes,
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

/// Writes `len` random bytes from the start of `path`, then syncs it to the device.
fn overwrite_random(path: &Path, len: u64) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .context(at("opening", path))?;
    f.seek(SeekFrom::Start(0)).context(at("seeking in", path))?;
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        crate::recovery::fill_random(&mut chunk[..n])?;
        f.write_all(&chunk[..n]).context(at("overwriting", path))?;
        left -= n as u64;
    }
    f.sync_all().context(at("syncing", path))
}
