//! The one entry point of the fuzz target (fuzz/fuzz_targets/archive_reader.rs), also run
//! by `cargo test` over mutated inputs.

use std::io::Write;

use zeroize::Zeroizing;

use super::chain::{Chain, ReadRequest, open_listing, read_chain};
use super::header::{
    ChainIds, HEADER_LEN, Header, ID_LEN, KEY_LEN, KdfParams, MIN_CHUNK_SIZE, NONCE_PREFIX_LEN,
    SALT_LEN,
};
use super::listing::check_plaintext;
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
        if let Ok(reader) = Reader::new(data, &secret) {
            read_either(reader);
        }
    }
    let _ = read_tree(&mut &data[..], None, &mut |_| {});
    for full in [true, false] {
        let _ = check_plaintext(&mut &data[..], &FUZZ_ID, full);
    }
    for chain in [None, Some(FUZZ_CHAIN)] {
        let header = Header {
            params: KdfParams {
                memory_kib: 8,
                iterations: 1,
                parallel: 1,
            },
            salt: [0; SALT_LEN],
            chunk_size: MIN_CHUNK_SIZE,
            nonce_prefix: [0; NONCE_PREFIX_LEN],
            chain,
        };
        let sealed = Writer::with_key(Vec::new(), &header, &FUZZ_KEY).and_then(|mut writer| {
            writer
                .write_all(data)
                .context(|| "sealing the fuzz input".into())?;
            writer.finish()
        });
        let body = header.bytes().len();
        if let Ok(sealed) = sealed
            && let Ok(reader) = Reader::with_key(&sealed[body..], &header, &FUZZ_KEY)
        {
            read_either(reader);
        }
    }
}

/// The id of the format-2 archives the harness seals its input in.
const FUZZ_ID: [u8; ID_LEN] = [0x24; ID_LEN];

const FUZZ_CHAIN: ChainIds = ChainIds {
    id: FUZZ_ID,
    parent: [0; ID_LEN],
    generation: 0,
};

/// Reads an opened archive to its end as `backup verify` does, whichever its format (an
/// incremental one cannot find its chain here, and is refused when it looks for it).
fn read_either(mut reader: Reader<&[u8]>) {
    if reader.header().chain.is_none() {
        let _ = read_tree(&mut reader, None, &mut |_| {});
        return;
    }
    let Ok(opened) = open_listing(reader) else {
        return;
    };
    let key = Zeroizing::new(FUZZ_KEY);
    let chain = Chain {
        dir: None,
        shown: "fuzz".into(),
        key: &key,
        threads: 1,
        available_kib: None,
    };
    let request = ReadRequest {
        dest: None,
        paths: None,
        whole_chain: true,
    };
    let _ = read_chain(opened, &chain, &request, &mut |_| {});
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
        // Format 2: a listing (a folder with an attribute, a file, a hard link to it, a
        // symlink, a file of another archive) and its data section, and sealed.
        let listing2 = crate::archive::listing::tests::sample_plaintext(&FUZZ_ID);
        assert!(check_plaintext(&mut &listing2[..], &FUZZ_ID, false).is_ok());
        let header2 = Header {
            chain: Some(FUZZ_CHAIN),
            ..test_header(CHEAP_KDF, MIN_CHUNK_SIZE)
        };
        let mut writer =
            Writer::with_header(Vec::new(), &secret(FUZZ_PASSPHRASE), header2).unwrap();
        let full2 = crate::archive::listing::tests::sample_plaintext_full(&FUZZ_ID);
        writer.write_all(&full2).unwrap();
        let archive2 = writer.finish().unwrap();

        let mut state = 0x9e3779b97f4a7c15u64;
        let mut next = |bound: usize| {
            state = xorshift(state);
            (state % bound.max(1) as u64) as usize
        };
        for round in 0..4000 {
            let mut input = match round % 4 {
                0 => archive.clone(),
                1 => plaintext.clone(),
                2 => archive2.clone(),
                _ => listing2.clone(),
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
        check_untrusted(&archive2);
        check_untrusted(&listing2);
        check_untrusted(&pseudo_random(100_000, 10));
    }
}
