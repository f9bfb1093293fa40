//! Arbitrary bytes through every reading path of the backup archive: as an archive (with a
//! fixed passphrase), as a plaintext stream, and as a plaintext stream sealed in a valid
//! archive. Nothing may panic. The same harness runs in `cargo test` over mutated inputs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    keepsake::archive::check_untrusted(data);
});
