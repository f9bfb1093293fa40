//! Recovery keys: 200 random bits written as 40 base32 characters in eight groups of five
//! (`abcde-fghij-…`), easy to read aloud and to type back. The canonical text, dashes
//! included, is the keyslot's passphrase; what a user types is normalized to it first.

use zeroize::Zeroizing;

use super::error::{Error, Result};
use crate::context::IoError;
use crate::secrets::Secret;

/// RFC 4648 base32, lower case: no 0, 1 or 8 to confuse with o, l and b.
const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
const RANDOM_BYTES: usize = 25;
const CHARS: usize = RANDOM_BYTES * 8 / 5;
const GROUP: usize = 5;
/// Length of the canonical text: 40 characters and 7 dashes.
pub const TEXT_LEN: usize = CHARS + CHARS / GROUP - 1;

/// A new recovery key from the kernel's random generator.
pub fn generate() -> Result<Secret> {
    let mut random = Zeroizing::new([0u8; RANDOM_BYTES]);
    fill_random(&mut random[..])?;
    Ok(encode(&random))
}

/// Fills `buf` from the kernel's random generator (getrandom): for keys, salts and nonces,
/// and to overwrite a destroyed header.
pub fn fill_random(buf: &mut [u8]) -> Result<(), IoError> {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`.
        let n =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(IoError::new("reading random bytes", e));
        }
        filled += n as usize;
    }
    Ok(())
}

/// The canonical text of 25 bytes, in a buffer allocated once at its final size.
fn encode(bytes: &[u8; RANDOM_BYTES]) -> Secret {
    let mut text = Zeroizing::new(Vec::with_capacity(TEXT_LEN));
    for i in 0..CHARS {
        let bit = i * 5;
        let (byte, shift) = (bit / 8, bit % 8);
        let two =
            (u16::from(bytes[byte]) << 8) | u16::from(bytes.get(byte + 1).copied().unwrap_or(0));
        let index = (two >> (11 - shift)) & 0x1f;
        if i > 0 && i % GROUP == 0 {
            text.push(b'-');
        }
        text.push(ALPHABET[index as usize]);
    }
    Secret::from_zeroizing(text)
}

/// The canonical form of a typed recovery key: case, spaces and dashes do not matter, and
/// 0 and 1 are read as o and l.
pub fn normalize(typed: &Secret) -> Result<Secret> {
    let mut text = Zeroizing::new(Vec::with_capacity(TEXT_LEN));
    let mut count = 0;
    for &c in typed.as_bytes() {
        let c = match c.to_ascii_lowercase() {
            b'-' | b' ' | b'\t' | b'\n' | b'\r' => continue,
            b'0' => b'o',
            b'1' => b'l',
            c => c,
        };
        if !ALPHABET.contains(&c) || count == CHARS {
            return Err(Error::NotARecoveryKey);
        }
        if count > 0 && count % GROUP == 0 {
            text.push(b'-');
        }
        text.push(c);
        count += 1;
    }
    if count != CHARS {
        return Err(Error::NotARecoveryKey);
    }
    Ok(Secret::from_zeroizing(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> Secret {
        Secret::from_zeroizing(Zeroizing::new(s.as_bytes().to_vec()))
    }

    #[test]
    fn encodes_as_rfc4648_base32_in_groups() {
        // RFC 4648 test vector "foobar" is MZXW6YTBOI; 25 bytes of 0xff are all '7'.
        let mut bytes = [0u8; RANDOM_BYTES];
        bytes[..6].copy_from_slice(b"foobar");
        let text = encode(&bytes);
        let text = std::str::from_utf8(text.as_bytes()).unwrap().to_string();
        assert!(text.starts_with("mzxw6-ytboi-"), "{text}");
        assert_eq!(text.len(), TEXT_LEN);
        let sevens = encode(&[0xff; RANDOM_BYTES]);
        assert_eq!(
            std::str::from_utf8(sevens.as_bytes()).unwrap(),
            "77777-77777-77777-77777-77777-77777-77777-77777"
        );
    }

    #[test]
    fn generated_keys_differ_and_normalize_to_themselves() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert!(a != b);
        assert!(normalize(&a).unwrap() == a);
    }

    #[test]
    fn typing_variants_are_accepted() {
        let canonical = secret("abcde-fghij-klmno-pqrst-uvwxy-z2345-67abc-defgh");
        for typed in [
            "abcde-fghij-klmno-pqrst-uvwxy-z2345-67abc-defgh",
            "ABCDE FGHIJ KLMNO PQRST UVWXY Z2345 67ABC DEFGH\n",
            "abcdefghijk1mn0pqrstuvwxyz234567abcdefgh",
        ] {
            assert!(normalize(&secret(typed)).unwrap() == canonical, "{typed}");
        }
    }

    #[test]
    fn wrong_lengths_and_characters_are_refused() {
        for typed in [
            "",
            "abcde",
            "abcde-fghij-klmno-pqrst-uvwxy-z2345-67abc-defg",
            "abcde-fghij-klmno-pqrst-uvwxy-z2345-67abc-defghi",
            "abcde-fghij-klmno-pqrst-uvwxy-z2345-67abc-defg8",
            "abcde-fghij-klmno-pqrst-uvwxy-z2345-67abc-defg!",
        ] {
            let e = normalize(&secret(typed)).expect_err(typed);
            assert!(e.to_string().contains("not a recovery key"), "{e}");
        }
    }
}
