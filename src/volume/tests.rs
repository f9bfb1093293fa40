//! The volume's operations on real LUKS headers in container files: libcryptsetup formats,
//! converts and checks passphrases on a regular file without device-mapper, so these run
//! wherever the tests run as root (activation itself is tested in the VM).
//!
//! libcryptsetup-rs serves only the first thread that calls it (without its `mutex`
//! feature), and each test runs on a thread of its own: so one test runs every case, one
//! after another.

use std::path::Path;

use libcryptsetup_rs::consts::flags::{CryptPbkdf, CryptVolumeKey};
use libcryptsetup_rs::consts::vals::{CryptKdf, EncryptionFormat};
use libcryptsetup_rs::{CryptInit, CryptParamsLuks1Ref, CryptPbkdfType, Either};
use zeroize::Zeroizing;

use super::*;

fn secret(s: &str) -> Secret {
    Secret::from_zeroizing(Zeroizing::new(s.as_bytes().to_vec()))
}

/// The cheapest argon2id libcryptsetup accepts: keeps each key derivation short.
const CHEAP: KdfChoice = KdfChoice::Fixed(KdfCost {
    memory_kib: 32,
    iterations: 4,
    parallel: 1,
});

/// A cost libcryptsetup refuses (argon2id needs at least 4 passes): a step that fails.
const REFUSED: KdfChoice = KdfChoice::Fixed(KdfCost {
    memory_kib: 32,
    iterations: 1,
    parallel: 1,
});

#[test]
fn volume_operations_on_container_files() {
    // libcryptsetup locks headers under /run/cryptsetup: root only.
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    a_wrong_passphrase_is_told_apart_from_every_other_failure();
    the_recovery_key_is_checked_once_and_is_never_the_last_way_in();
    a_changed_passphrase_replaces_the_old_one();
    an_upgrade_converts_luks1_and_its_keyslot();
    a_failed_upgrade_puts_the_header_back_as_it_was();
    an_erased_volume_has_no_header_left();
}

fn container(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("volume");
    std::fs::File::create(&path)
        .and_then(|f| f.set_len(40 << 20))
        .unwrap();
    path
}

/// A LUKS1 header with one PBKDF2 keyslot for `passphrase`, as old Tails made them.
fn luks1(path: &Path, passphrase: &str) {
    let mut device = CryptInit::init(path).unwrap();
    device
        .settings_handle()
        .set_pbkdf_type(&CryptPbkdfType {
            type_: CryptKdf::Pbkdf2,
            hash: Some("sha256".into()),
            time_ms: 0,
            iterations: 1000,
            max_memory_kb: 0,
            parallel_threads: 0,
            flags: CryptPbkdf::NO_BENCHMARK,
        })
        .unwrap();
    device
        .context_handle()
        .format::<CryptParamsLuks1Ref<'_>>(
            EncryptionFormat::Luks1,
            (CIPHER, CIPHER_MODE),
            None,
            Either::Right(KEY_BYTES),
            None,
        )
        .unwrap();
    device
        .keyslot_handle()
        .add_by_key(None, None, passphrase.as_bytes(), CryptVolumeKey::empty())
        .unwrap();
}

fn a_wrong_passphrase_is_told_apart_from_every_other_failure() {
    let dir = tempfile::tempdir().unwrap();
    let path = container(dir.path());
    let (volume, keyslot) = Volume::format(&path, "TailsData", &secret("right"), CHEAP).unwrap();
    assert_eq!(
        volume.check_passphrase(&secret("right")).unwrap(),
        keyslot.keyslot
    );
    let wrong = volume.check_passphrase(&secret("wrong")).unwrap_err();
    assert!(matches!(wrong, Error::BadPassphrase(_)), "{wrong:?}");
    assert_eq!(
        take_last_library_error(),
        None,
        "nothing left for the next error"
    );
    let not_luks = dir.path().join("plain");
    std::fs::write(&not_luks, vec![0u8; 1 << 20]).unwrap();
    let e = Volume::at(&not_luks)
        .check_passphrase(&secret("right"))
        .unwrap_err();
    assert!(matches!(e, Error::NoLuksHeader(_)), "{e:?}");
}

fn the_recovery_key_is_checked_once_and_is_never_the_last_way_in() {
    let dir = tempfile::tempdir().unwrap();
    let path = container(dir.path());
    let (volume, _) = Volume::format(&path, "TailsData", &secret("pass"), CHEAP).unwrap();
    let e = volume.prepare_recovery_key_removal().err().unwrap();
    assert!(matches!(e, Error::NoRecoveryKey), "{e:?}");

    let key = recovery::generate().unwrap();
    let added = volume
        .prepare_recovery_key_add()
        .unwrap()
        .add(&secret("pass"), &key, CHEAP)
        .unwrap();
    assert_eq!(added.role, Role::Recovery, "the report names its role");
    assert!(
        volume.info().unwrap().keyslots.contains(&added),
        "the header records its role"
    );
    let e = volume.prepare_recovery_key_add().err().unwrap();
    assert!(matches!(e, Error::RecoveryKeyExists), "{e:?}");

    // The recovery key cannot remove itself, nor have its passphrase changed.
    let e = volume
        .prepare_recovery_key_removal()
        .unwrap()
        .remove(&key)
        .unwrap_err();
    assert!(matches!(e, Error::PassphraseNeeded(_)), "{e:?}");
    let e = volume
        .change_passphrase(added.keyslot, &key, &secret("other"), CHEAP)
        .unwrap_err();
    assert!(matches!(e, Error::PassphraseNeeded(_)), "{e:?}");

    let removed = volume
        .prepare_recovery_key_removal()
        .unwrap()
        .remove(&secret("pass"))
        .unwrap();
    assert_eq!(removed, vec![added.keyslot]);
    let e = volume.check_passphrase(&key).unwrap_err();
    assert!(matches!(e, Error::BadPassphrase(_)), "{e:?}");
    assert!(volume.check_passphrase(&secret("pass")).is_ok());
}

fn a_changed_passphrase_replaces_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = container(dir.path());
    let (volume, first) = Volume::format(&path, "TailsData", &secret("old"), CHEAP).unwrap();
    let slot = volume.check_passphrase(&secret("old")).unwrap();
    let new = volume
        .change_passphrase(slot, &secret("old"), &secret("new"), CHEAP)
        .unwrap();
    assert_ne!(new.keyslot, first.keyslot, "never in place");
    assert_eq!(
        volume.check_passphrase(&secret("new")).unwrap(),
        new.keyslot
    );
    assert!(matches!(
        volume.check_passphrase(&secret("old")),
        Err(Error::BadPassphrase(_))
    ));
    assert_eq!(volume.info().unwrap().keyslots.len(), 1);
}

fn an_upgrade_converts_luks1_and_its_keyslot() {
    let dir = tempfile::tempdir().unwrap();
    let path = container(dir.path());
    luks1(&path, "pass");
    let volume = Volume::at(&path);
    let plan = volume.upgrade_plan().unwrap();
    assert!(plan.convert_to_luks2 && plan.keyslots_to_argon2id == vec![0]);
    let slot = volume.check_passphrase(&secret("pass")).unwrap();
    volume
        .upgrade(&plan, slot, &secret("pass"), CHEAP, dir.path(), |_| {})
        .unwrap();
    let info = volume.info().unwrap();
    assert_eq!(info.format, "luks2");
    assert_eq!(info.keyslots.len(), 1);
    assert_eq!(info.keyslots[0].kdf, "argon2id");
    assert!(volume.check_passphrase(&secret("pass")).is_ok());
    assert!(volume.upgrade_plan().unwrap().is_empty());
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec!["volume"], "the header backup is removed");
}

/// The header-backup guard: a step that fails after the conversion leaves the header as
/// it was, byte for byte, not half upgraded.
fn a_failed_upgrade_puts_the_header_back_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let path = container(dir.path());
    luks1(&path, "pass");
    let volume = Volume::at(&path);
    // The header and the keyslot areas: what a header backup holds. (The conversion also
    // moves keyslot areas into the unused space after them, up to the data; a restore
    // leaves that space as it is.)
    let header_bytes = {
        let mut device = volume.load().unwrap();
        (0..8)
            .map(|slot| device.keyslot_handle().area(slot).unwrap())
            .map(|(offset, length)| offset + length)
            .max()
            .unwrap() as usize
    };
    let before = std::fs::read(&path).unwrap()[..header_bytes].to_vec();
    let plan = volume.upgrade_plan().unwrap();
    let slot = volume.check_passphrase(&secret("pass")).unwrap();
    let steps = std::cell::RefCell::new(Vec::new());
    let e = volume
        .upgrade(&plan, slot, &secret("pass"), REFUSED, dir.path(), |s| {
            steps.borrow_mut().push(s.to_string())
        })
        .unwrap_err();
    assert_eq!(
        steps.into_inner().len(),
        2,
        "the conversion was done before the failing step"
    );
    assert!(matches!(e, Error::UpgradeUndone(_)), "{e:?}");
    assert!(
        e.to_string()
            .ends_with("the header was put back as it was, and the volume opens as before"),
        "{e}"
    );
    let after = std::fs::read(&path).unwrap()[..header_bytes].to_vec();
    let differ: Vec<usize> = (0..header_bytes)
        .filter(|&i| before[i] != after[i])
        .collect();
    assert!(
        differ.is_empty(),
        "the header is back, byte for byte: {} bytes differ, from {:?} to {:?} of {header_bytes}",
        differ.len(),
        differ.first(),
        differ.last()
    );
    assert_eq!(volume.info().unwrap().format, "luks1");
    assert!(volume.check_passphrase(&secret("pass")).is_ok());
}

fn an_erased_volume_has_no_header_left() {
    let dir = tempfile::tempdir().unwrap();
    let path = container(dir.path());
    let (volume, _) = Volume::format(&path, "TailsData", &secret("pass"), CHEAP).unwrap();
    let header_bytes = volume.header_area_bytes().unwrap();
    let erased = volume.erase(&path, |_| {}).unwrap();
    assert_eq!(erased.keyslots_destroyed, 1);
    assert_eq!(erased.header_bytes, header_bytes);
    assert!(!has_luks_magic(&path) && !volume.is_luks());
    let head = std::fs::read(&path).unwrap();
    assert!(
        head[..header_bytes as usize]
            .windows(64)
            .all(|w| w.iter().any(|&b| b != 0)),
        "the header area is random, not zeros"
    );
}

/// Scripts tell failures apart by exit code: each case keeps the code the same situation
/// had before the volume had its own error type.
#[test]
fn each_volume_failure_keeps_its_exit_code() {
    use crate::error::ExitCode;
    let code = |e: Error| crate::error::Error::from(e).exit_code();
    let library = |errno| Error::Library {
        context: "x".into(),
        errno: Some(errno),
        message: "y".into(),
    };
    let cases = [
        (Error::BadPassphrase("v".into()), ExitCode::BadPassphrase),
        (Error::NoLuksHeader("v".into()), ExitCode::Corrupt),
        (Error::NotEnoughMemory("m".into()), ExitCode::UnsafeHost),
        (Error::MappingExists("m".into()), ExitCode::Busy),
        (Error::RecoveryKeyExists, ExitCode::Busy),
        (Error::NoRecoveryKey, ExitCode::NotFound),
        (Error::PassphraseNeeded("p".into()), ExitCode::Usage),
        (Error::NotARecoveryKey, ExitCode::Usage),
        (Error::BackupFileExists("f".into()), ExitCode::Usage),
        (
            Error::UpgradeUndone(Box::new(library(libc::EIO))),
            ExitCode::Internal,
        ),
        (
            Error::UpgradeNotUndone {
                failed: Box::new(library(libc::EIO)),
                restore: Box::new(library(libc::EIO)),
            },
            ExitCode::Corrupt,
        ),
        (Error::StillLuks("v".into()), ExitCode::Internal),
        (library(libc::EBUSY), ExitCode::Busy),
        (library(libc::ENOENT), ExitCode::NotFound),
        (library(libc::EACCES), ExitCode::NotPermitted),
        (library(libc::EIO), ExitCode::Internal),
    ];
    for (error, expected) in cases {
        let shown = format!("{error:?}");
        assert_eq!(code(error), expected, "{shown}");
    }
    assert!(
        code(library(libc::EBUSY).with_note("already locked: v")).eq(&ExitCode::Busy),
        "a note keeps the class"
    );
    // The refusal unlock and check print for a taken name reads as one sentence.
    assert_eq!(
        Error::MappingExists("TailsData_unlocked (dm-0)".into()).to_string(),
        "a mapping named TailsData_unlocked (dm-0) exists already; nothing was changed"
    );
}
