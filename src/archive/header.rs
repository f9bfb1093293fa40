//! The archive's 64-byte plaintext header and the argon2id derivation of its key, with the
//! hard caps that make a forged header cost a reader 64 bytes read and a refusal.

use argon2::{Algorithm, Argon2, Block, Version};
use zeroize::Zeroizing;

use super::{Error, Result};

/// The first eight bytes of every archive.
const MAGIC: &[u8; 8] = b"KSBACKUP";

/// The first format version: a tree of entries, data inline; still read.
const FORMAT_V1: u8 = 1;

/// The format version keepsake writes: a listing first, then the data, in a chain of
/// archives (see `listing.rs`).
const FORMAT_V2: u8 = 2;

/// Length of the plaintext header of format 1, and of the first part of every header: its
/// version byte says whether [`CHAIN_LEN`] more bytes follow.
pub(crate) const HEADER_LEN: usize = 64;

/// The chain block that follows the first 64 bytes in format 2: archive id, parent id,
/// generation, reserved. The whole header (128 bytes) is then the associated data.
pub(crate) const CHAIN_LEN: usize = 64;

pub(crate) const ID_LEN: usize = 16;

/// The longest chain a writer makes and a reader follows: a bound on what a forged
/// generation number can make a reader look for, and on the archives one restore opens.
pub(crate) const MAX_GENERATION: u32 = 1000;

/// Plaintext bytes per chunk unless told otherwise.
pub(crate) const DEFAULT_CHUNK_SIZE: u32 = 64 * 1024;

pub(crate) const MIN_CHUNK_SIZE: u32 = 4096;

const MAX_CHUNK_SIZE: u32 = 16 * 1024 * 1024;

/// Hard caps on the key-derivation cost a reader accepts and a writer writes, so that a
/// hostile header cannot make a reader allocate or compute without bound: a header beyond
/// them is corrupt (exit status 7) whatever the machine. Memory is capped as cryptsetup
/// caps argon2 for LUKS2 (4 GiB), lanes at 16, passes at 64, and the work, memory times
/// passes, at `MAX_KDF_WORK`. The work is the time: this argon2 computes lanes one after
/// the other, so lanes neither multiply the memory (which is for all lanes) nor divide the
/// time. Below the caps a reader still refuses, before asking for the passphrase, a memory
/// cost above what this machine has available now (`KdfParams::require_affordable`, exit
/// status 6).
pub const MAX_KDF_MEMORY_KIB: u32 = 4 * 1024 * 1024;

pub const MAX_KDF_ITERATIONS: u32 = 64;

const MAX_KDF_PARALLEL: u32 = 16;

/// The most work (memory in KiB times passes) a key derivation may take: 16 GiB-passes,
/// about 30 s on one core of the AMD EPYC that docs/backup-benchmarks.md was measured on
/// (4 GiB x 4 passes took 28 s, 1 GiB x 4 took 7.5 s, 256 MiB x 3 took 0.8 s).
/// keepsake writes 256 MiB x 3 (0.75) by default, and RFC 9106's strongest recommendation
/// is 2 GiB x 1; a forged header asking 4 GiB x 64 (256, many minutes of one core) is
/// refused.
pub(crate) const MAX_KDF_WORK: u64 = 16 * 1024 * 1024;

const KDF_ARGON2ID: u8 = 1;

pub(crate) const SALT_LEN: usize = 16;

pub(crate) const NONCE_PREFIX_LEN: usize = 7;

pub(crate) const KEY_LEN: usize = 32;

/// argon2id cost of the archive key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes over the memory (t_cost).
    pub iterations: u32,
    /// Lanes (p_cost).
    pub parallel: u32,
}

impl Default for KdfParams {
    /// 256 MiB, 3 passes, 1 lane: affordable on any machine a live system boots on.
    fn default() -> KdfParams {
        KdfParams {
            memory_kib: 256 * 1024,
            iterations: 3,
            parallel: 1,
        }
    }
}

impl KdfParams {
    /// Refuses a cost for a new archive, before its passphrase is read: beyond the hard caps
    /// ([`Error::BadParameters`]), or more memory than `available_kib` ([`Error::Unaffordable`]).
    pub(crate) fn check_for_writing(&self, available_kib: Option<u64>) -> Result<()> {
        if let Some(problem) = self.problem() {
            return Err(Error::BadParameters(format!(
                "backup key derivation cost: {problem}; nothing was written"
            )));
        }
        self.require_affordable("writing the backup archive", available_kib)
    }

    /// Refuses a memory cost above `available_kib` (MemAvailable), as a volume's keyslots
    /// are refused: [`crate::host::preflight::require_kdf_memory`], [`Error::Unaffordable`].
    pub(crate) fn require_affordable(&self, doing: &str, available_kib: Option<u64>) -> Result<()> {
        // The host layer words the refusal, the same for keyslots and archives; its only
        // error is that refusal.
        crate::host::preflight::require_kdf_memory(doing, u64::from(self.memory_kib), available_kib)
            .map_err(|refusal| Error::Unaffordable(refusal.to_string()))
    }

    /// Why these parameters are beyond the hard caps, if they are.
    pub(crate) fn problem(&self) -> Option<String> {
        let KdfParams {
            memory_kib,
            iterations,
            parallel,
        } = *self;
        if !(1..=MAX_KDF_PARALLEL).contains(&parallel) {
            Some(format!(
                "parallelism {parallel} is not between 1 and {MAX_KDF_PARALLEL}"
            ))
        } else if !(1..=MAX_KDF_ITERATIONS).contains(&iterations) {
            Some(format!(
                "{iterations} iterations is not between 1 and {MAX_KDF_ITERATIONS}"
            ))
        } else if memory_kib > MAX_KDF_MEMORY_KIB {
            Some(format!("{memory_kib} KiB of memory is more than 4 GiB"))
        } else if u64::from(memory_kib) * u64::from(iterations) > MAX_KDF_WORK {
            let work_gib = (u64::from(memory_kib) * u64::from(iterations)).div_ceil(1 << 20);
            Some(format!(
                "{memory_kib} KiB of memory times {iterations} passes is {work_gib} GiB-passes of work, more than the {} GiB-passes a reader accepts",
                MAX_KDF_WORK >> 20
            ))
        } else if memory_kib < 8 * parallel {
            Some(format!(
                "{memory_kib} KiB of memory is less than 8 KiB per lane"
            ))
        } else {
            None
        }
    }
}

pub(crate) fn chunk_size_problem(chunk_size: u32) -> Option<String> {
    (!(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size)).then(|| {
        format!(
            "chunk size {chunk_size} is not between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE} bytes"
        )
    })
}

/// The fields of the plaintext header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) params: KdfParams,
    pub(crate) salt: [u8; SALT_LEN],
    pub(crate) chunk_size: u32,
    pub(crate) nonce_prefix: [u8; NONCE_PREFIX_LEN],
    /// Format 2's chain block; `None` for format 1.
    pub(crate) chain: Option<ChainIds>,
}

/// Where a format-2 archive stands in its chain: its own random id, its parent's (all
/// zeros for a full archive) and its generation (0 for a full archive, the parent's plus
/// one for an incremental).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ChainIds {
    pub(crate) id: [u8; ID_LEN],
    pub(crate) parent: [u8; ID_LEN],
    pub(crate) generation: u32,
}

impl ChainIds {
    pub(crate) fn is_full(&self) -> bool {
        self.generation == 0
    }

    fn encode(&self) -> [u8; CHAIN_LEN] {
        let mut bytes = [0u8; CHAIN_LEN];
        bytes[0..16].copy_from_slice(&self.id);
        bytes[16..32].copy_from_slice(&self.parent);
        bytes[32..36].copy_from_slice(&self.generation.to_le_bytes());
        bytes
    }

    /// Parses and checks the chain block: a non-zero id, reserved bytes zero, a parent
    /// exactly when the generation is not 0, and a generation within [`MAX_GENERATION`].
    pub(crate) fn parse(bytes: &[u8; CHAIN_LEN]) -> Result<ChainIds> {
        let mut id = [0u8; ID_LEN];
        id.copy_from_slice(&bytes[0..16]);
        let mut parent = [0u8; ID_LEN];
        parent.copy_from_slice(&bytes[16..32]);
        let generation = u32::from_le_bytes([bytes[32], bytes[33], bytes[34], bytes[35]]);
        let zero = [0u8; ID_LEN];
        let problem = if bytes[36..].iter().any(|&b| b != 0) {
            Some("reserved bytes of its chain block are set".to_string())
        } else if id == zero {
            Some("its archive id is zero".to_string())
        } else if (parent == zero) != (generation == 0) {
            Some("its parent id and generation disagree".to_string())
        } else if generation > MAX_GENERATION {
            Some(format!(
                "its generation {generation} is beyond the {MAX_GENERATION} a reader follows"
            ))
        } else if parent == id {
            Some("it names itself as its parent".to_string())
        } else {
            None
        };
        match problem {
            Some(problem) => Err(Error::HeaderOutOfBounds(format!(
                "the backup archive header is invalid: {problem}"
            ))),
            None => Ok(ChainIds {
                id,
                parent,
                generation,
            }),
        }
    }
}

/// An archive id as shown to people: its 16 bytes in hex.
pub(crate) fn id_hex(id: &[u8; ID_LEN]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

impl Header {
    /// The whole header as written, and as every chunk's associated data: 64 bytes in
    /// format 1, 128 in format 2.
    pub(crate) fn bytes(&self) -> Vec<u8> {
        let mut bytes = self.encode().to_vec();
        if let Some(chain) = &self.chain {
            bytes.extend_from_slice(&chain.encode());
        }
        bytes
    }

    /// The first 64 bytes of the header (all of it in format 1).
    pub(crate) fn encode(&self) -> [u8; HEADER_LEN] {
        let mut bytes = [0u8; HEADER_LEN];
        bytes[0..8].copy_from_slice(MAGIC);
        bytes[8] = if self.chain.is_some() {
            FORMAT_V2
        } else {
            FORMAT_V1
        };
        bytes[9] = KDF_ARGON2ID;
        bytes[12..16].copy_from_slice(&self.params.memory_kib.to_le_bytes());
        bytes[16..20].copy_from_slice(&self.params.iterations.to_le_bytes());
        bytes[20..24].copy_from_slice(&self.params.parallel.to_le_bytes());
        bytes[24..40].copy_from_slice(&self.salt);
        bytes[40..44].copy_from_slice(&self.chunk_size.to_le_bytes());
        bytes[44..51].copy_from_slice(&self.nonce_prefix);
        bytes
    }

    /// Parses and bounds-checks a header; nothing in it is trusted yet (it is authenticated
    /// only when the first chunk is).
    pub(crate) fn parse(bytes: &[u8; HEADER_LEN]) -> Result<Header> {
        let u32_at = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        if &bytes[0..8] != MAGIC {
            return Err(Error::NotAnArchive(
                "not a keepsake backup archive (it does not start with KSBACKUP)".into(),
            ));
        }
        if bytes[8] != FORMAT_V1 && bytes[8] != FORMAT_V2 {
            return Err(Error::Unsupported(format!(
                "backup archive format version {} is not supported; this keepsake reads versions {FORMAT_V1} and {FORMAT_V2}",
                bytes[8]
            )));
        }
        if bytes[9] != KDF_ARGON2ID {
            return Err(Error::Unsupported(format!(
                "the backup archive uses an unknown key derivation (id {})",
                bytes[9]
            )));
        }
        if bytes[10..12].iter().chain(&bytes[51..64]).any(|&b| b != 0) {
            return Err(Error::Unsupported(
                "the backup archive header has reserved bytes set; it is damaged or from a newer keepsake"
                    .into(),
            ));
        }
        let params = KdfParams {
            memory_kib: u32_at(12),
            iterations: u32_at(16),
            parallel: u32_at(20),
        };
        if let Some(problem) = params.problem() {
            return Err(Error::HeaderOutOfBounds(format!(
                "the backup archive asks for an unreasonable key derivation cost: {problem}"
            )));
        }
        let chunk_size = u32_at(40);
        if let Some(problem) = chunk_size_problem(chunk_size) {
            return Err(Error::HeaderOutOfBounds(format!(
                "the backup archive's {problem}"
            )));
        }
        let mut salt = [0u8; SALT_LEN];
        salt.copy_from_slice(&bytes[24..40]);
        let mut nonce_prefix = [0u8; NONCE_PREFIX_LEN];
        nonce_prefix.copy_from_slice(&bytes[44..51]);
        Ok(Header {
            params,
            salt,
            chunk_size,
            nonce_prefix,
            chain: None,
        })
    }

    /// Whether the first 64 bytes (checked by [`Header::parse`]) say a chain block follows.
    pub(crate) fn has_chain_block(bytes: &[u8; HEADER_LEN]) -> bool {
        bytes[8] == FORMAT_V2
    }
}

/// Whether the key of an archive with this header may be derived here: the header in bounds
/// (else [`Error::HeaderOutOfBounds`]), and its memory cost within `available_kib` (else
/// [`Error::Unaffordable`]). A pure function of the two, so that any machine can be played.
pub(crate) fn check_header(bytes: &[u8; HEADER_LEN], available_kib: Option<u64>) -> Result<Header> {
    let header = Header::parse(bytes)?;
    header
        .params
        .require_affordable("opening the backup archive", available_kib)?;
    Ok(header)
}

pub(crate) fn derive_key(secret: &[u8], header: &Header) -> Result<Zeroizing<[u8; KEY_LEN]>> {
    let KdfParams {
        memory_kib,
        iterations,
        parallel,
    } = header.params;
    let params = argon2::Params::new(memory_kib, iterations, parallel, Some(KEY_LEN))
        .map_err(|e| Error::Internal(format!("argon2id parameters: {e}")))?;
    let mut blocks = kdf_memory(params.block_count())?;
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into_with_memory(secret, &header.salt, &mut key[..], &mut *blocks)
        .map_err(|e| Error::Internal(format!("deriving the archive key: {e}")))?;
    Ok(key)
}

/// argon2's working memory, allocated here rather than by argon2's `hash_password_into`,
/// which aborts the whole process when the allocation fails (a memory limit that
/// MemAvailable does not show: RLIMIT_AS, a cgroup) and frees the blocks unwiped, though
/// they are derived from the passphrase: one hash of a guess would check it against them.
/// A failed allocation is the "cannot afford" refusal; the blocks are wiped when dropped.
fn kdf_memory(blocks: usize) -> Result<Zeroizing<Vec<Block>>> {
    let mut memory = Zeroizing::new(Vec::new());
    memory.try_reserve_exact(blocks).map_err(|_| {
        Error::Unaffordable(format!(
            "the archive's key derivation needs {} MiB of memory and this process cannot get it; free some memory or use a bigger machine (nothing was changed)",
            blocks.div_ceil(1024)
        ))
    })?;
    memory.resize(blocks, Block::default());
    Ok(memory)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::stream::{KeylessReader, Reader, Writer};
    use crate::archive::testing::*;
    use crate::archive::tree::read_tree;
    use std::io::Write;

    #[test]
    fn header_bit_flips_are_refused_through_the_passphrase() {
        // The same through key derivation, for every header bit that cannot raise the
        // cost (the cost fields are covered above, with the key given).
        let pass = secret(b"passphrase");
        let plaintext = two_chunk_plaintext();
        let mut writer =
            Writer::with_header(Vec::new(), &pass, test_header(CHEAP_KDF, MIN_CHUNK_SIZE)).unwrap();
        writer.write_all(&plaintext).unwrap();
        let archive = writer.finish().unwrap();
        let mut reader = Reader::new(&archive[..], &pass).unwrap();
        assert_eq!(read_tree(&mut reader, None, &mut |_| {}).unwrap().files, 1);
        for byte in (0..12).chain(24..HEADER_LEN) {
            for bit in 0..8 {
                let mut damaged = archive.clone();
                damaged[byte] ^= 1 << bit;
                let err = Reader::new(&damaged[..], &pass).err();
                assert!(
                    err.as_ref()
                        .map(exit_code)
                        .is_some_and(|c| c == ExitCode::Corrupt || c == ExitCode::BadPassphrase),
                    "byte {byte} bit {bit}: {err:?}"
                );
            }
        }
    }

    #[test]
    fn hostile_headers_are_refused_before_any_key_derivation() {
        let good = test_header(CHEAP_KDF, MIN_CHUNK_SIZE).encode();
        let patch = |at: usize, bytes: &[u8]| {
            let mut header = good;
            header[at..at + bytes.len()].copy_from_slice(bytes);
            header
        };
        let cases = [
            (patch(0, b"KSBACKUQ"), "KSBACKUP"),
            (patch(8, &[3]), "version 3"),
            (patch(9, &[2]), "unknown key derivation"),
            (patch(10, &[1]), "reserved"),
            (patch(63, &[1]), "reserved"),
            // Deriving with these would try to allocate 4 TiB, or run 2^32 passes.
            (patch(12, &u32::MAX.to_le_bytes()), "more than 4 GiB"),
            (
                patch(12, &(MAX_KDF_MEMORY_KIB + 1).to_le_bytes()),
                "more than 4 GiB",
            ),
            // 4 GiB and 64 passes are each allowed, together 256 GiB-passes: minutes.
            (
                test_header(
                    KdfParams {
                        memory_kib: MAX_KDF_MEMORY_KIB,
                        iterations: MAX_KDF_ITERATIONS,
                        parallel: 1,
                    },
                    MIN_CHUNK_SIZE,
                )
                .encode(),
                "16 GiB-passes",
            ),
            (patch(16, &u32::MAX.to_le_bytes()), "iterations"),
            (patch(16, &0u32.to_le_bytes()), "iterations"),
            (patch(20, &0u32.to_le_bytes()), "parallelism"),
            (patch(20, &17u32.to_le_bytes()), "parallelism"),
            (patch(20, &2u32.to_le_bytes()), "8 KiB per lane"),
            (patch(40, &4095u32.to_le_bytes()), "chunk size"),
            (patch(40, &(MAX_CHUNK_SIZE + 1).to_le_bytes()), "chunk size"),
        ];
        // A keyless reader never derives a key: a bound that stopped holding fails this test
        // instead of running the derivation it should have refused. All the memory in the
        // world is available, so only the header's own bounds refuse.
        for (header, expected) in cases {
            let archive = [&header[..], &[0; 100]].concat();
            let err = KeylessReader::new(&archive[..], Some(u64::MAX))
                .err()
                .unwrap();
            assert!(exit_code(&err) == ExitCode::Corrupt, "{err}");
            assert!(err.to_string().contains(expected), "{err} lacks {expected}");
        }
        let err = Reader::new(&good[..40], &secret(b"pass")).err().unwrap();
        assert!(
            err.to_string().contains("shorter than its 64-byte header"),
            "{err}"
        );
    }

    const GIB_KIB: u64 = 1 << 20;

    /// The forged header of issue 11: 4 GiB of memory, 64 passes, behind 200 bytes of junk
    /// (264 bytes in all). It used to abort `backup verify` (a failed 4 GiB allocation) on a
    /// 1.5 GiB machine, and to run for minutes on a big one.
    fn forged_archive(memory_kib: u32, iterations: u32) -> Vec<u8> {
        let header = test_header(
            KdfParams {
                memory_kib,
                iterations,
                parallel: 1,
            },
            DEFAULT_CHUNK_SIZE,
        );
        [&header.encode()[..], &[0x5a; 200]].concat()
    }

    #[test]
    fn a_forged_kdf_cost_is_refused_from_the_header_alone() {
        let forged = forged_archive(MAX_KDF_MEMORY_KIB, MAX_KDF_ITERATIONS);
        assert_eq!(forged.len(), 264);
        let header: &[u8; HEADER_LEN] = forged.first_chunk().unwrap();
        // Beyond the hard cap: corrupt, however much memory the machine has.
        for available in [Some(GIB_KIB * 3 / 2), Some(u64::MAX), None] {
            let err = check_header(header, available).unwrap_err();
            assert!(exit_code(&err) == ExitCode::Corrupt, "{err}");
            assert_eq!(exit_code(&err), ExitCode::Corrupt);
            assert!(err.to_string().contains("16 GiB-passes"), "{err}");
        }
        // Within the caps (4 GiB x 4 passes) but more memory than a 1.5 GiB machine has:
        // the class unlock uses for a keyslot this machine cannot afford.
        let heavy = forged_archive(MAX_KDF_MEMORY_KIB, 4);
        let header: &[u8; HEADER_LEN] = heavy.first_chunk().unwrap();
        let err = check_header(header, Some(GIB_KIB * 3 / 2)).unwrap_err();
        assert!(exit_code(&err) == ExitCode::UnsafeHost, "{err}");
        assert_eq!(exit_code(&err), ExitCode::UnsafeHost);
        assert_eq!(
            err.to_string(),
            "opening the backup archive needs 4096 MiB of memory for its key derivation and this machine has 1536 MiB available; free some memory or use a bigger machine (nothing was changed)"
        );
        assert!(check_header(header, Some(8 * GIB_KIB)).is_ok());
        // The reader says the same from the stream, having read the header only: it has no
        // passphrase to derive with yet.
        let err = KeylessReader::new(&heavy[..], Some(GIB_KIB * 3 / 2))
            .err()
            .unwrap();
        assert!(exit_code(&err) == ExitCode::UnsafeHost, "{err}");
        let err = KeylessReader::new(&forged[..], Some(u64::MAX))
            .err()
            .unwrap();
        assert!(exit_code(&err) == ExitCode::Corrupt, "{err}");
    }

    #[test]
    fn ordinary_kdf_costs_pass_the_header_check() {
        let checked = |params: KdfParams, available_kib: u64| {
            check_header(
                &test_header(params, DEFAULT_CHUNK_SIZE).encode(),
                Some(available_kib),
            )
            .map(|h| h.params)
        };
        // keepsake's default, on the smallest machine a live system boots on.
        assert_eq!(
            checked(KdfParams::default(), GIB_KIB).unwrap(),
            KdfParams::default()
        );
        // The corners of what the caps allow, on a machine that has the memory.
        for (memory_kib, iterations, parallel) in [
            (MAX_KDF_MEMORY_KIB, 4, 1),
            (1 << 20, 16, 1),
            (256 * 1024, MAX_KDF_ITERATIONS, 1),
            (2 << 20, 1, MAX_KDF_PARALLEL),
            (8, 1, 1),
        ] {
            let params = KdfParams {
                memory_kib,
                iterations,
                parallel,
            };
            assert!(checked(params, 8 * GIB_KIB).is_ok(), "{params:?}");
            assert!(params.check_for_writing(Some(8 * GIB_KIB)).is_ok());
        }
        // One KiB of memory more, or one pass more, than the work cap allows.
        for (memory_kib, iterations) in [(MAX_KDF_MEMORY_KIB, 5), ((1 << 20) + 1, 16)] {
            let params = KdfParams {
                memory_kib,
                iterations,
                parallel: 1,
            };
            let err = checked(params, u64::MAX).unwrap_err();
            assert!(exit_code(&err) == ExitCode::Corrupt, "{err}");
        }
    }

    #[test]
    fn a_writer_refuses_what_no_reader_accepts_or_this_machine_cannot_afford() {
        let forged = KdfParams {
            memory_kib: MAX_KDF_MEMORY_KIB,
            iterations: MAX_KDF_ITERATIONS,
            parallel: 1,
        };
        let err = forged.check_for_writing(Some(u64::MAX)).unwrap_err();
        assert!(exit_code(&err) == ExitCode::Usage, "{err}");
        assert!(err.to_string().contains("16 GiB-passes"), "{err}");
        let big = KdfParams {
            memory_kib: 1 << 20,
            ..KdfParams::default()
        };
        let err = big.check_for_writing(Some(512 * 1024)).unwrap_err();
        assert!(exit_code(&err) == ExitCode::UnsafeHost, "{err}");
        assert!(big.check_for_writing(Some(2 * GIB_KIB)).is_ok());
    }

    #[test]
    fn key_derivation_memory_that_cannot_be_had_is_a_refusal() {
        // More blocks than an address space holds: refused without allocating.
        let err = kdf_memory(usize::MAX / 2).err().unwrap();
        assert!(exit_code(&err) == ExitCode::UnsafeHost, "{err}");
        assert!(err.to_string().contains("cannot get it"), "{err}");
        assert_eq!(kdf_memory(8).unwrap().len(), 8);
    }

    #[test]
    fn writer_refuses_out_of_bounds_parameters() {
        let pass = secret(b"pass");
        for (params, chunk) in [
            (
                KdfParams {
                    memory_kib: 4,
                    ..CHEAP_KDF
                },
                MIN_CHUNK_SIZE,
            ),
            (
                KdfParams {
                    iterations: 0,
                    ..CHEAP_KDF
                },
                MIN_CHUNK_SIZE,
            ),
            (
                KdfParams {
                    parallel: 0,
                    ..CHEAP_KDF
                },
                MIN_CHUNK_SIZE,
            ),
            (CHEAP_KDF, MIN_CHUNK_SIZE - 1),
            (CHEAP_KDF, MAX_CHUNK_SIZE + 1),
        ] {
            let err = Writer::new(Vec::new(), &pass, params, chunk).err().unwrap();
            assert!(exit_code(&err) == ExitCode::Usage, "{err}");
        }
        assert_eq!(
            KdfParams::default(),
            KdfParams {
                memory_kib: 262144,
                iterations: 3,
                parallel: 1
            }
        );
    }
}
