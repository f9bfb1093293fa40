//! Helpers shared by the archive's tests: cheap key-derivation costs, a sealer and opener
//! with keys given rather than derived, plaintext streams built entry by entry, and a
//! source tree with every kind of entry.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{Mode, UtimensatFlags};
use nix::sys::time::TimeSpec;
use zeroize::Zeroizing;

use super::extract::Meta;
use super::header::{
    HEADER_LEN, Header, KEY_LEN, KdfParams, MIN_CHUNK_SIZE, NONCE_PREFIX_LEN, SALT_LEN,
};
use super::stream::{Reader, Writer};
use super::tree::{
    ENTRY_DIR, ENTRY_END, ENTRY_FILE, ENTRY_SYMLINK, TreeStats, entry_start, file_layout,
    input_error, push_bytes16, read_tree,
};
use super::{Error, Result};
pub(super) use crate::error::ExitCode;
use crate::safefs::treewalk::testing::snapshot;
use crate::secrets::Secret;

/// Cheap enough to run thousands of times.
pub(super) const CHEAP_KDF: KdfParams = KdfParams {
    memory_kib: 8,
    iterations: 1,
    parallel: 1,
};

/// A realistic shape at a test-friendly cost.
pub(super) const TEST_KDF: KdfParams = KdfParams {
    memory_kib: 8 * 1024,
    iterations: 1,
    parallel: 1,
};

pub(super) const CHUNK: usize = MIN_CHUNK_SIZE as usize;

pub(super) const META: Meta = Meta {
    mode: 0o644,
    uid: 1000,
    gid: 1000,
    mtime: 1_700_000_000,
    mtime_nsec: 5,
};

pub(super) fn secret(bytes: &[u8]) -> Secret {
    Secret::from_zeroizing(Zeroizing::new(bytes.to_vec()))
}

pub(super) fn test_header(params: KdfParams, chunk_size: u32) -> Header {
    Header {
        params,
        salt: [7; SALT_LEN],
        chunk_size,
        nonce_prefix: [9; NONCE_PREFIX_LEN],
        chain: None,
    }
}

/// An archive of `plaintext`, sealed with a key given rather than derived.
pub(super) fn seal(plaintext: &[u8], header: &Header, key: &[u8; KEY_LEN]) -> Vec<u8> {
    let mut writer = Writer::with_key(Vec::new(), header, key).unwrap();
    writer.write_all(plaintext).unwrap();
    writer.finish().unwrap()
}

/// Opens an archive with a key given rather than derived: what was released, and how
/// reading ended.
pub(super) fn open(archive: &[u8], key: &[u8; KEY_LEN]) -> (Vec<u8>, Result<()>) {
    let mut released = Vec::new();
    let Some(header) = archive.first_chunk::<HEADER_LEN>() else {
        return (released, Err(Error::NotAnArchive("short".into())));
    };
    let outcome = Header::parse(header)
        .and_then(|header| Reader::with_key(&archive[HEADER_LEN..], &header, key))
        .and_then(|mut reader| reader.read_to_end(&mut released).map_err(input_error));
    (released, outcome.map(|_| ()))
}

/// Deterministic bytes that do not compress or repeat within a chunk.
pub(super) fn pseudo_random(len: usize, mut state: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            state = xorshift(state);
            state as u8
        })
        .collect()
}

pub(super) fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

/// A small tree spanning two chunks: chunk 0 full, chunk 1 short.
pub(super) fn two_chunk_plaintext() -> Vec<u8> {
    Stream::default()
        .dir("d")
        .file("d/f", &pseudo_random(4100, 11))
        .symlink("l", "d/f")
        .end()
}

/// Plaintext streams built entry by entry, with the production encoders.
#[derive(Default)]
pub(super) struct Stream(pub(super) Vec<u8>);

impl Stream {
    pub(super) fn dir(mut self, path: &str) -> Stream {
        let meta = Meta {
            mode: 0o700,
            ..META
        };
        self.0
            .extend(entry_start(ENTRY_DIR, path.as_bytes(), &meta).unwrap());
        self
    }

    pub(super) fn file(self, path: &str, content: &[u8]) -> Stream {
        let extents: &[(u64, u64)] = if content.is_empty() {
            &[]
        } else {
            &[(0, content.len() as u64)]
        };
        self.raw_file(path.as_bytes(), content.len() as u64, extents, content)
    }

    pub(super) fn raw_file(
        mut self,
        path: &[u8],
        size: u64,
        extents: &[(u64, u64)],
        data: &[u8],
    ) -> Stream {
        self.0.extend(entry_start(ENTRY_FILE, path, &META).unwrap());
        self.0.extend(file_layout(size, extents));
        self.0.extend_from_slice(data);
        self
    }

    pub(super) fn symlink(mut self, path: &str, target: &str) -> Stream {
        self.0
            .extend(entry_start(ENTRY_SYMLINK, path.as_bytes(), &META).unwrap());
        push_bytes16(&mut self.0, target.as_bytes(), "target").unwrap();
        self
    }

    pub(super) fn raw(mut self, bytes: &[u8]) -> Stream {
        self.0.extend_from_slice(bytes);
        self
    }

    pub(super) fn end(mut self) -> Vec<u8> {
        self.0.push(ENTRY_END);
        self.0
    }
}

pub(super) fn verify(plaintext: &[u8]) -> Result<TreeStats> {
    read_tree(&mut &plaintext[..], None, &mut |_| {})
}

pub(super) fn set_mtime(path: &Path, sec: i64, nsec: i64) {
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &TimeSpec::UTIME_OMIT,
        &TimeSpec::new(sec, nsec),
        UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

pub(super) fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A source tree with every kind of entry; returns the tops to back up.
pub(super) fn make_tree(src: &Path) -> Vec<PathBuf> {
    let p = src.join("Persistent");
    std::fs::create_dir_all(p.join("docs/deeper")).unwrap();
    std::fs::create_dir(p.join("empty")).unwrap();
    std::fs::create_dir(p.join("readonly")).unwrap();
    std::fs::create_dir(p.join("sticky")).unwrap();
    std::fs::create_dir(p.join("setgid")).unwrap();
    std::fs::write(p.join("docs/small.txt"), b"a small file\n").unwrap();
    std::fs::write(p.join("docs/empty.txt"), b"").unwrap();
    std::fs::write(
        p.join("docs/deeper/big.bin"),
        pseudo_random(5 * CHUNK + 123, 1),
    )
    .unwrap();
    std::fs::write(
        p.join("readonly/inside"),
        b"written before the folder was made read-only",
    )
    .unwrap();
    std::fs::write(p.join("setuid"), b"#!/bin/sh\n").unwrap();
    let sparse = File::create(p.join("sparse.img")).unwrap();
    sparse.set_len(10 << 20).unwrap();
    sparse
        .write_all_at(&pseudo_random(4096, 2), 1 << 20)
        .unwrap();
    sparse
        .write_all_at(&pseudo_random(3000, 3), (10 << 20) - 3000)
        .unwrap();
    drop(sparse);
    std::os::unix::fs::symlink("docs/small.txt", p.join("relative-link")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", p.join("absolute-link")).unwrap();
    nix::unistd::mkfifo(&p.join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(p.join("socket")).unwrap();
    std::fs::write(
        src.join("persistence.conf"),
        b"/home/amnesia/.gnupg source=gnupg\n",
    )
    .unwrap();
    std::fs::write(src.join("not-backed-up"), b"left out").unwrap();
    for (rel, mode) in [
        ("Persistent/docs/small.txt", 0o644),
        ("Persistent/docs/empty.txt", 0o600),
        ("Persistent/docs/deeper/big.bin", 0o640),
        ("Persistent/setuid", 0o4755),
        ("Persistent/docs", 0o755),
        ("Persistent/empty", 0o700),
        ("Persistent/sticky", 0o1777),
        ("Persistent/setgid", 0o2750),
        ("persistence.conf", 0o600),
        ("Persistent/readonly/inside", 0o444),
        ("Persistent/readonly", 0o555),
    ] {
        chmod(&src.join(rel), mode);
    }
    if nix::unistd::geteuid().is_root() {
        for rel in [
            "Persistent/docs/small.txt",
            "Persistent/relative-link",
            "Persistent/empty",
        ] {
            std::os::unix::fs::lchown(src.join(rel), Some(1234), Some(5678)).unwrap();
        }
    }
    // Distinct past times, innermost first so that setting one does not move another.
    let mut paths: Vec<PathBuf> = snapshot(src).keys().map(|k| src.join(k)).collect();
    paths.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for (i, path) in paths.iter().enumerate() {
        set_mtime(
            path,
            1_500_000_000 + i as i64 * 1000,
            123_456_789 + i as i64,
        );
    }
    vec![
        PathBuf::from("Persistent"),
        PathBuf::from("persistence.conf"),
    ]
}

pub(super) fn make_writable(root: &Path) {
    for rel in ["Persistent/readonly"] {
        if root.join(rel).exists() {
            chmod(&root.join(rel), 0o755);
        }
    }
}

/// The exit status an archive error ends keepsake with.
pub(super) fn exit_code(e: &Error) -> ExitCode {
    crate::error::archive_class(e)
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// One test vector as `tests/vectors/*.json` hold it: what `header` and `plaintext` make as
/// an archive under `passphrase`, with the key derived (and format 2's chain ids).
pub(super) fn vector_json(
    name: &str,
    passphrase: &str,
    header: &super::header::Header,
    plaintext: &[u8],
) -> serde_json::Value {
    let key = super::header::derive_key(passphrase.as_bytes(), header).unwrap();
    let mut writer =
        Writer::with_header(Vec::new(), &secret(passphrase.as_bytes()), header.clone()).unwrap();
    writer.write_all(plaintext).unwrap();
    let archive = writer.finish().unwrap();
    let mut vector = serde_json::json!({
        "name": name,
        "passphrase": passphrase,
        "kdf": {
            "algorithm": "argon2id",
            "version": 0x13,
            "memory_kib": header.params.memory_kib,
            "iterations": header.params.iterations,
            "parallel": header.params.parallel,
        },
        "salt": hex(&header.salt),
        "nonce_prefix": hex(&header.nonce_prefix),
        "chunk_size": header.chunk_size,
        "key": hex(&key[..]),
        "plaintext": hex(plaintext),
        "archive": hex(&archive),
    });
    if let Some(ids) = &header.chain {
        vector["id"] = hex(&ids.id).into();
        vector["parent"] = hex(&ids.parent).into();
        vector["generation"] = ids.generation.into();
    }
    vector
}

/// The vector file at `path`, checked to hold exactly `vectors` of `format` (rewritten
/// from them first with KEEPSAKE_BLESS=1, after an intended change).
pub(super) fn committed_vectors(
    path: &Path,
    format: &str,
    vectors: Vec<serde_json::Value>,
) -> serde_json::Value {
    let generated = serde_json::json!({ "format": format, "vectors": vectors });
    if std::env::var_os("KEEPSAKE_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(
            path,
            serde_json::to_string_pretty(&generated).unwrap() + "\n",
        )
        .unwrap();
    }
    let committed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(
        committed, generated,
        "regenerate with KEEPSAKE_BLESS=1 if the change is intended"
    );
    committed
}
