//! The data-segment ciphers keepsake will open a volume with. LUKS2 lets a header keep its
//! keyslots encrypted while its data segment is `cipher_null`: the volume then asks for a
//! passphrase and opens like any other, yet everything written to it reaches the stick in
//! clear. So a volume is opened read-write only when its cipher is on a short list of
//! ciphers that encrypt, with a key long enough for its mode; `create` makes only
//! [`super::CIPHER`]-[`super::CIPHER_MODE`], which is on the list.

/// Block ciphers with a 128-bit block that cryptsetup, Tails and live-boot have used.
const BLOCK_CIPHERS: [&str; 3] = ["aes", "serpent", "twofish"];

/// Why a volume whose data segment uses `cipher`-`mode` with a `key_bytes` key is not
/// opened, if it is not: `None` for the vetted list:
/// - aes, serpent or twofish in XTS (`xts-plain64`, or `xts-plain` on old LUKS1 volumes)
///   with a 256- or 512-bit key (two keys of 128 or 256 bits);
/// - aes, serpent or twofish in `cbc-essiv:sha256` (LUKS1's default before cryptsetup 1.6)
///   with a 128- to 256-bit key;
/// - Adiantum (`xchacha12,aes-adiantum-plain64` or `xchacha20,…`, cryptsetup's choice for
///   machines without AES instructions) with its 256-bit key.
pub fn unvetted(cipher: &str, mode: &str, key_bytes: usize) -> Option<String> {
    let block = BLOCK_CIPHERS.contains(&cipher);
    let vetted = match mode {
        "xts-plain64" | "xts-plain" => block && (key_bytes == 32 || key_bytes == 64),
        "cbc-essiv:sha256" => block && (16..=32).contains(&key_bytes),
        "adiantum-plain64" => {
            matches!(cipher, "xchacha12,aes" | "xchacha20,aes") && key_bytes == 32
        }
        _ => false,
    };
    if vetted {
        return None;
    }
    let what = if cipher == "cipher_null" || cipher.is_empty() {
        "does not encrypt its data (cipher_null): everything written to it would reach the disk in clear".to_string()
    } else {
        format!(
            "encrypts its data with {cipher}-{mode} and a {}-bit key, which is not one keepsake trusts (aes, serpent or twofish in xts-plain64 with a 256- or 512-bit key, cbc-essiv:sha256, or adiantum)",
            key_bytes * 8
        )
    };
    Some(what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_create_makes_and_the_usual_ciphers_are_vetted() {
        assert_eq!(
            unvetted(
                super::super::CIPHER,
                super::super::CIPHER_MODE,
                super::super::KEY_BYTES
            ),
            None
        );
        assert_eq!(unvetted("aes", "xts-plain64", 32), None);
        assert_eq!(unvetted("serpent", "xts-plain64", 64), None);
        assert_eq!(unvetted("twofish", "xts-plain", 64), None);
        assert_eq!(unvetted("aes", "cbc-essiv:sha256", 32), None);
        assert_eq!(unvetted("xchacha12,aes", "adiantum-plain64", 32), None);
    }

    #[test]
    fn a_cipher_that_does_not_encrypt_or_is_not_listed_is_named() {
        let null = unvetted("cipher_null", "ecb", 0).unwrap();
        assert!(
            null.contains("cipher_null") && null.contains("in clear"),
            "{null}"
        );
        // A listed cipher in a mode that leaks (ECB), or with a key too short for XTS.
        assert!(unvetted("aes", "ecb", 32).is_some());
        assert!(unvetted("aes", "xts-plain64", 16).is_some());
        assert!(unvetted("aes", "cbc-plain", 32).is_some());
        assert!(unvetted("des", "cbc-essiv:sha256", 8).is_some());
        assert!(unvetted("aes", "adiantum-plain64", 32).is_some());
        let odd = unvetted("aes", "ecb", 32).unwrap();
        assert!(odd.contains("aes-ecb") && odd.contains("256-bit"), "{odd}");
    }
}
