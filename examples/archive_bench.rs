//! Runs keepsake's backup archive code on a plain folder, for loopdev-tests/bench/backup:
//! the archive's throughput without a volume around it (the volume's own cost is the
//! subject of loopdev-tests/bench/run).
//!
//!   archive_bench backup KEY_FILE FOLDER ARCHIVE     every entry of FOLDER
//!   archive_bench backup2 KEY_FILE FOLDER ARCHIVE    the same, in format 2
//!   archive_bench restore KEY_FILE ARCHIVE FOLDER    into an empty FOLDER
//!   archive_bench cipher MIB                         the cipher alone: prints bytes/s
//!
//! The archive key is derived with a small argon2id cost (8 MiB, 1 pass) so that the
//! figures are the stream's; the command prints the seconds spent deriving it. The
//! environment variable KS_THREADS sets the number of worker threads (as `--threads`).

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use keepsake::archive::{self, KdfParams};
use keepsake::secrets::{self, SecretSource};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if let [_, mode, mib] = args.as_slice()
        && mode == "cipher"
    {
        println!("{:.0}", cipher_speed(mib.parse()?));
        return Ok(());
    }
    let [_, mode, key, from, to] = args.as_slice() else {
        return Err("usage: archive_bench backup|restore KEY_FILE FROM TO".into());
    };
    let secret = secrets::read_secret(&SecretSource::KeyFile(PathBuf::from(key)), "key", false)?;
    let params = KdfParams {
        memory_kib: 8192,
        iterations: 1,
        parallel: 1,
    };
    let threads = match std::env::var("KS_THREADS") {
        Ok(n) => n.parse()?,
        Err(_) => archive::default_threads(),
    };
    let t0 = Instant::now();
    match mode.as_str() {
        "backup" => {
            let root = Path::new(from);
            let mut tops: Vec<PathBuf> = std::fs::read_dir(root)?
                .map(|e| e.map(|e| PathBuf::from(e.file_name())))
                .collect::<Result<_, _>>()?;
            tops.sort();
            let out = BufWriter::with_capacity(1 << 20, std::fs::File::create(to)?);
            let mut writer =
                archive::Writer::new(out, &secret, params, 64 * 1024)?.with_threads(threads);
            let kdf = t0.elapsed();
            archive::write_tree(root, &tops, &mut writer, &mut |_| {})?;
            let mut out = writer.finish()?;
            out.flush()?;
            eprintln!("kdf {:.3} s", kdf.as_secs_f64());
        }
        "backup2" => {
            // Format 2 (listing, then data), as `keepsake backup` writes it.
            let out = std::fs::File::create(to)?;
            archive::back_up_folder(Path::new(from), out, &secret, params, threads)?;
        }
        "restore" => {
            let input = std::fs::File::open(from)?;
            let mut reader = archive::KeylessReader::new(input, None)?
                .with_threads(threads)
                .unlock(&secret)?;
            let kdf = t0.elapsed();
            archive::read_tree_on(&mut reader, Some(Path::new(to)), threads, &mut |_| {})?;
            eprintln!("kdf {:.3} s", kdf.as_secs_f64());
        }
        other => return Err(format!("unknown mode {other}").into()),
    }
    Ok(())
}

/// Bytes per second the cipher keepsake links (aws-lc's ChaCha20-Poly1305) seals on one
/// core, as the archive's engine calls it: chunks of 64 KiB sealed in place, the header as
/// associated data, a fresh nonce each; `mib` MiB in all, from memory.
fn cipher_speed(mib: usize) -> f64 {
    use aws_lc_rs::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
    let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &[7; 32]).expect("a key"));
    let mut chunk = vec![1u8; 64 * 1024];
    let header = [0u8; 64];
    let started = Instant::now();
    for counter in 0..(mib * 16) as u32 {
        let mut nonce = [0u8; 12];
        nonce[7..11].copy_from_slice(&counter.to_be_bytes());
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&header[..]),
                &mut chunk,
            )
            .expect("sealing");
        std::hint::black_box(tag.as_ref());
    }
    (mib << 20) as f64 / started.elapsed().as_secs_f64()
}
