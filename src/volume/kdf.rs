//! The key derivation of keyslots: how the cost of a new one is chosen (Tails' cost, a
//! fixed one, or libcryptsetup's calibration under a memory ceiling), and whether this
//! machine can afford to run an existing one.

use libcryptsetup_rs::CryptPbkdfType;
use libcryptsetup_rs::consts::flags::CryptPbkdf;
use libcryptsetup_rs::consts::vals::CryptKdf;

use super::error::{Error, Result};

/// Key-derivation cost for new keyslots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct KdfCost {
    /// argon2id memory in KiB.
    pub memory_kib: u32,
    /// argon2id iterations (passes).
    pub iterations: u32,
    /// argon2id threads.
    pub parallel: u32,
}

/// What was asked of a new keyslot's cost, as plain values (the command line's
/// `--pbkdf-*` options).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KdfRequest {
    /// Exactly this cost, without benchmark (for tests and for matching another machine).
    pub fixed: Option<KdfCost>,
    /// The ceiling for a calibrated cost, in KiB.
    pub max_memory_kib: Option<u32>,
}

/// How the cost of a new keyslot is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KdfChoice {
    /// libcryptsetup benchmarks this machine for about `time_ms`, using at most
    /// `max_memory_kib`.
    Benchmark { time_ms: u32, max_memory_kib: u32 },
    /// A fixed cost, without benchmark.
    Fixed(KdfCost),
}

impl KdfChoice {
    /// The cost of a new keyslot: the fixed cost when one is asked for; for a volume in the
    /// Tails layout, the cost Tails itself counts as up to date ([`tails_kdf_cost`]), so
    /// that Tails does not convert the keyslot again at its next boot; else calibrated by
    /// libcryptsetup for about 2 s under a memory ceiling this machine can afford. Chosen
    /// before anything else takes memory: the costs follow what is available now.
    pub fn for_new_keyslot(request: KdfRequest, tails_layout: bool) -> KdfChoice {
        Self::choose(request, tails_layout, mem_total_kib(), mem_available_kib())
    }

    fn choose(
        request: KdfRequest,
        tails_layout: bool,
        mem_total_kib: Option<u64>,
        mem_available_kib: Option<u64>,
    ) -> KdfChoice {
        match request {
            KdfRequest {
                fixed: Some(cost), ..
            } => KdfChoice::Fixed(cost),
            KdfRequest {
                max_memory_kib: None,
                ..
            } if tails_layout => KdfChoice::Fixed(tails_kdf_cost(mem_total_kib, mem_available_kib)),
            KdfRequest { max_memory_kib, .. } => KdfChoice::Benchmark {
                time_ms: 2000,
                max_memory_kib: max_memory_kib
                    .unwrap_or_else(|| default_max_memory_kib(mem_available_kib)),
            },
        }
    }

    pub(super) fn pbkdf_type(&self) -> CryptPbkdfType {
        match *self {
            KdfChoice::Benchmark {
                time_ms,
                max_memory_kib,
            } => CryptPbkdfType {
                type_: CryptKdf::Argon2Id,
                hash: None,
                time_ms,
                iterations: 0,
                max_memory_kb: max_memory_kib,
                parallel_threads: 4,
                flags: CryptPbkdf::empty(),
            },
            KdfChoice::Fixed(cost) => CryptPbkdfType {
                type_: CryptKdf::Argon2Id,
                hash: None,
                time_ms: 0,
                iterations: cost.iterations,
                max_memory_kb: cost.memory_kib,
                parallel_threads: cost.parallel,
                flags: CryptPbkdf::NO_BENCHMARK,
            },
        }
    }
}

/// The default ceiling for argon2id memory: half of the RAM available now, at most 1 GiB
/// (cryptsetup's own ceiling), at least 32 MiB. A live system runs from RAM: a key
/// derivation that needs more than the machine can spare would make the volume fail to
/// unlock on the next, smaller, machine.
pub fn default_max_memory_kib(mem_available_kib: Option<u64>) -> u32 {
    const CEILING: u64 = 1 << 20;
    const FLOOR: u64 = 32 * 1024;
    mem_available_kib.map_or(CEILING, |kib| (kib / 2).clamp(FLOOR, CEILING)) as u32
}

/// The argon2id cost of a keyslot in the Tails layout. Tails converts at boot every volume
/// without a keyslot of at least min(MemTotal / 2, 1 GiB) (its `is_upgraded`), and makes
/// its own with 4 passes: so keepsake gives exactly that memory, with 4 passes and 4
/// lanes, unless this machine cannot afford it now, when it gives what it can (and Tails
/// will convert it once). Affordable is half of MemAvailable: Debian's libcryptsetup
/// (Debian bug 1028250) caps argon2id there on a machine without swap, which a live system
/// is, whatever cost it is asked for.
fn tails_kdf_cost(mem_total_kib: Option<u64>, mem_available_kib: Option<u64>) -> KdfCost {
    const GIB: u64 = 1 << 20;
    let wanted = tails_kdf_floor_kib(mem_total_kib).unwrap_or(GIB);
    let affordable = mem_available_kib.map_or(GIB, |a| a / 2);
    KdfCost {
        memory_kib: wanted.min(affordable).max(32 * 1024) as u32,
        iterations: 4,
        parallel: 4,
    }
}

/// The argon2id memory below which Tails converts a keyslot at boot: min(RAM/2, 1 GiB).
fn tails_kdf_floor_kib(mem_total_kib: Option<u64>) -> Option<u64> {
    mem_total_kib.map(|t| (t / 2).min(1 << 20))
}

/// The argon2id memory Tails wants of a keyslot (see [`tails_kdf_cost`]), when `cost` on
/// this machine is below it: Tails will convert such a keyslot at its next boot.
pub fn tails_will_convert(cost: &KdfCost) -> Option<u64> {
    tails_kdf_floor_kib(mem_total_kib()).filter(|&floor| u64::from(cost.memory_kib) < floor)
}

/// MemAvailable from /proc/meminfo, in KiB.
pub fn mem_available_kib() -> Option<u64> {
    meminfo_field(
        &std::fs::read_to_string("/proc/meminfo").ok()?,
        "MemAvailable:",
    )
}

/// MemTotal from /proc/meminfo, in KiB.
fn mem_total_kib() -> Option<u64> {
    meminfo_field(&std::fs::read_to_string("/proc/meminfo").ok()?, "MemTotal:")
}

fn meminfo_field(meminfo: &str, field: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|n| n.trim().parse().ok())
}

/// The decision of [`super::Volume::require_affordable`], from each keyslot's KDF memory
/// in KiB (0 for PBKDF2): the passphrase may open any keyslot, so one that fits is enough,
/// and the cheapest is what the refusal names. No keyslot at all is left to libcryptsetup
/// to report. (libcryptsetup still tries keyslots in their order, so a passphrase whose
/// keyslot fits but comes after one that does not can still fail inside it.)
pub(super) fn require_affordable_keyslots(
    doing: &str,
    costs_kib: &[u64],
    available_kib: Option<u64>,
) -> Result<()> {
    match costs_kib.iter().min() {
        Some(&cheapest) => {
            crate::host::preflight::require_kdf_memory(doing, cheapest, available_kib)
                .map_err(|refused| Error::NotEnoughMemory(refused.to_string()))
        }
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 20;

    #[test]
    fn tails_keyslots_meet_the_cost_tails_counts_as_upgraded() {
        // 8 GiB machine: 1 GiB, 4 passes, as Tails makes them.
        let c = tails_kdf_cost(Some(8 * GIB), Some(6 * GIB));
        assert_eq!((c.memory_kib, c.iterations, c.parallel), (1 << 20, 4, 4));
        // 3 GiB machine with 2.5 GiB free: min(MemTotal/2, 1 GiB) = 1 GiB, affordable.
        let c = tails_kdf_cost(Some(3 * GIB), Some(5 * GIB / 2));
        assert_eq!(u64::from(c.memory_kib), GIB);
        // 2 GiB machine: Tails wants 1 GiB, half of what is available is all there is.
        let c = tails_kdf_cost(Some(2 * GIB), Some(1536 << 10));
        assert_eq!(c.memory_kib, 768 << 10);
        // 768 MiB machine: half of MemTotal wanted, half of MemAvailable affordable.
        let c = tails_kdf_cost(Some(768 << 10), Some(600 << 10));
        assert_eq!(c.memory_kib, 300 << 10);
    }

    #[test]
    fn kdf_memory_ceiling_is_half_the_available_ram_within_bounds() {
        assert_eq!(default_max_memory_kib(Some(600 * 1024)), 300 * 1024);
        assert_eq!(
            default_max_memory_kib(Some(16 << 20)),
            1 << 20,
            "at most 1 GiB"
        );
        assert_eq!(
            default_max_memory_kib(Some(20 * 1024)),
            32 * 1024,
            "at least 32 MiB"
        );
        assert_eq!(default_max_memory_kib(None), 1 << 20);
    }

    #[test]
    fn a_new_keyslot_costs_what_was_asked_else_what_tails_wants_else_a_calibration() {
        let fixed = KdfCost {
            memory_kib: 65536,
            iterations: 4,
            parallel: 1,
        };
        let (total, available) = (Some(8 * GIB), Some(GIB));
        let asked = KdfRequest {
            fixed: Some(fixed),
            max_memory_kib: None,
        };
        for tails in [false, true] {
            assert_eq!(
                KdfChoice::choose(asked, tails, total, available),
                KdfChoice::Fixed(fixed)
            );
        }
        assert_eq!(
            KdfChoice::choose(KdfRequest::default(), true, total, available),
            KdfChoice::Fixed(tails_kdf_cost(total, available))
        );
        assert_eq!(
            KdfChoice::choose(KdfRequest::default(), false, total, available),
            KdfChoice::Benchmark {
                time_ms: 2000,
                max_memory_kib: (GIB / 2) as u32
            }
        );
        let ceiling = KdfRequest {
            fixed: None,
            max_memory_kib: Some(2 * GIB as u32),
        };
        assert_eq!(
            KdfChoice::choose(ceiling, true, total, available),
            KdfChoice::Benchmark {
                time_ms: 2000,
                max_memory_kib: 2 * GIB as u32
            },
            "a ceiling asked for is a calibration, in the Tails layout too"
        );
    }

    #[test]
    fn a_volume_is_affordable_when_its_cheapest_keyslot_fits() {
        const MIB: u64 = 1024;
        let available = Some(768 * MIB);
        let judge = |costs: &[u64]| require_affordable_keyslots("unlocking v", costs, available);
        assert!(judge(&[]).is_ok(), "no keyslot: libcryptsetup says so");
        assert!(judge(&[256 * MIB]).is_ok());
        assert!(judge(&[768 * MIB]).is_ok(), "exactly what is available");
        assert!(
            judge(&[1024 * MIB, 64 * MIB]).is_ok(),
            "the recovery keyslot fits"
        );
        assert!(
            judge(&[4096 * MIB, 0]).is_ok(),
            "a PBKDF2 keyslot always fits"
        );
        let err = judge(&[1024 * MIB, 4096 * MIB]).unwrap_err();
        assert!(matches!(err, Error::NotEnoughMemory(_)), "{err:?}");
        assert!(
            err.to_string()
                .starts_with("unlocking v needs 1024 MiB of memory for its key derivation and this machine has 768 MiB available"),
            "{err}"
        );
        assert!(
            require_affordable_keyslots("unlocking v", &[4096 * MIB], None).is_ok(),
            "MemAvailable unknown"
        );
    }

    #[test]
    fn reads_mem_available() {
        let text = "MemTotal:        8000000 kB\nMemFree:  100 kB\nMemAvailable:    5120000 kB\n";
        assert_eq!(meminfo_field(text, "MemAvailable:"), Some(5_120_000));
        assert_eq!(meminfo_field(text, "MemTotal:"), Some(8_000_000));
        assert_eq!(meminfo_field("MemTotal: 1 kB\n", "MemAvailable:"), None);
    }
}
