//! The one entry point of the fuzz target (fuzz/fuzz_targets/archive_reader.rs), also run
//! by `cargo test` over mutated inputs.

use std::io::Write;

use zeroize::Zeroizing;

use super::header::{
    HEADER_LEN, Header, KEY_LEN, KdfParams, MIN_CHUNK_SIZE, NONCE_PREFIX_LEN, SALT_LEN,
};
use super::stream::{Reader, Writer};
use super::tree::read_tree;
use crate::context::Context;
use crate::secrets::Secret;

/// The passphrase [`check_untrusted`] tries on archives.
#[doc(hidden)]
const FUZZ_PASSPHRASE: &[u8] = b"keepsake fuzz";

const FUZZ_KEY: [u8; KEY_LEN] = [0x42; KEY_LEN];

/// The fuzz harness (fuzz/fuzz_targets/archive_reader.rs, and a unit test): runs untrusted
/// bytes through every reading path, which must refuse them without panicking or
/// allocating without bound. The bytes are read as an archive (with [`FUZZ_PASSPHRASE`],
/// when the header's key derivation is cheap enough to run on every input), as a plaintext
/// stream, and as a plaintext stream sealed in a valid archive, so that the tree parser is
/// also reached through the authenticated path.
#[doc(hidden)]
pub fn check_untrusted(data: &[u8]) {
    if let Some(header) = data.first_chunk::<HEADER_LEN>()
        && let Ok(parsed) = Header::parse(header)
        && parsed.params.memory_kib <= 64
        && parsed.params.iterations <= 2
    {
        let secret = Secret::from_zeroizing(Zeroizing::new(FUZZ_PASSPHRASE.to_vec()));
        if let Ok(mut reader) = Reader::new(data, &secret) {
            let _ = read_tree(&mut reader, None, &mut |_| {});
        }
    }
    let _ = read_tree(&mut &data[..], None, &mut |_| {});
    let header = Header {
        params: KdfParams {
            memory_kib: 8,
            iterations: 1,
            parallel: 1,
        },
        salt: [0; SALT_LEN],
        chunk_size: MIN_CHUNK_SIZE,
        nonce_prefix: [0; NONCE_PREFIX_LEN],
        chain: None,
    };
    let sealed = Writer::with_key(Vec::new(), &header, &FUZZ_KEY).and_then(|mut writer| {
        writer
            .write_all(data)
            .context(|| "sealing the fuzz input".into())?;
        writer.finish()
    });
    if let Ok(sealed) = sealed
        && let Ok(mut reader) = Reader::with_key(&sealed[HEADER_LEN..], &header, &FUZZ_KEY)
    {
        let _ = read_tree(&mut reader, None, &mut |_| {});
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::testing::*;

    #[test]
    fn the_fuzz_harness_survives_mutated_inputs() {
        let plaintext = Stream::default()
            .dir("d")
            .raw_file(
                b"d/f",
                5000,
                &[(0, 100), (4000, 1000)],
                &pseudo_random(1100, 9),
            )
            .symlink("d/l", "f")
            .file("top", b"hello")
            .end();
        let mut writer = Writer::with_header(
            Vec::new(),
            &secret(FUZZ_PASSPHRASE),
            Header {
                params: CHEAP_KDF,
                ..test_header(CHEAP_KDF, MIN_CHUNK_SIZE)
            },
        )
        .unwrap();
        writer.write_all(&plaintext).unwrap();
        let archive = writer.finish().unwrap();
        let mut reader = Reader::new(&archive[..], &secret(FUZZ_PASSPHRASE)).unwrap();
        assert_eq!(read_tree(&mut reader, None, &mut |_| {}).unwrap().files, 2);

        let mut state = 0x9e3779b97f4a7c15u64;
        let mut next = |bound: usize| {
            state = xorshift(state);
            (state % bound.max(1) as u64) as usize
        };
        for round in 0..3000 {
            let mut input = if round % 2 == 0 {
                archive.clone()
            } else {
                plaintext.clone()
            };
            for _ in 0..=next(3) {
                let at = next(input.len());
                match next(6) {
                    0 => input[at] ^= 1 << next(8),
                    1 => input[at] = next(256) as u8,
                    2 => input.truncate(at),
                    3 => input
                        .splice(at..at, (0..next(16)).map(|_| next(256) as u8))
                        .for_each(drop),
                    4 => {
                        let end = (at + next(64)).min(input.len());
                        let copy = input[at..end].to_vec();
                        let to = next(input.len());
                        input.splice(to..to, copy).for_each(drop);
                    }
                    _ => {
                        let end = (at + 8).min(input.len());
                        input[at..end].fill(0xff);
                    }
                }
                if input.is_empty() {
                    break;
                }
            }
            check_untrusted(&input);
        }
        check_untrusted(&[]);
        check_untrusted(&archive);
        check_untrusted(&pseudo_random(100_000, 10));
    }
}
