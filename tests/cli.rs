//! The command line as a user meets it: parsing, help and usage errors (pinned as data files
//! under tests/cmd/, one file a case), and the JSON shape of `status`.

use std::process::Command;

#[test]
fn cli_cases() {
    trycmd::TestCases::new().case("tests/cmd/*.toml");
}

fn keepsake() -> Command {
    Command::new(env!("CARGO_BIN_EXE_keepsake"))
}

/// As root on a machine with nothing unlocked, `status --json` prints the documented shape;
/// as anyone else, it refuses with exit status 8 before touching anything.
#[test]
fn status_json_shape_or_not_root() {
    let out = keepsake().args(["--json", "status"]).output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    if nix::unistd::geteuid().is_root() {
        assert_eq!(out.status.code(), Some(0), "{stdout}");
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "config_errors",
                "features",
                "kdf",
                "layout",
                "tor",
                "unlocked",
                "version",
                "volume",
                "volumes",
                "wiped"
            ]
        );
        let mut tor_keys: Vec<_> = v["tor"].as_object().unwrap().keys().cloned().collect();
        tor_keys.sort();
        assert_eq!(tor_keys, ["pids", "running", "state"]);
        let ceiling = v["kdf"]["default_max_memory_kib"].as_u64().unwrap();
        assert!((32 * 1024..=1 << 20).contains(&ceiling), "{ceiling}");
        if let Some(available) = v["kdf"]["mem_available_kib"].as_u64() {
            assert!(
                ceiling <= (available / 2).max(32 * 1024),
                "{ceiling} > half of {available}"
            );
        }
        assert_eq!(v["version"], 1);
        assert_eq!(v["layout"], "tails");
        assert_eq!(
            v["unlocked"], false,
            "this test expects nothing unlocked on the test machine"
        );
        assert!(v["volume"].is_null());
        assert_eq!(v["volumes"], serde_json::json!([]));
        assert_eq!(v["wiped"], serde_json::json!([]));
    } else {
        assert_eq!(out.status.code(), Some(8));
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(v["error"]["kind"], "not-permitted");
        assert_eq!(v["error"]["code"], 8);
    }
}

/// Secrets never come from argv or the environment: there is no such option to misuse.
#[test]
fn no_passphrase_option_exists() {
    let out = keepsake()
        .args(["unlock", "--image", "x", "--passphrase", "hunter2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let help = keepsake().args(["unlock", "--help"]).output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    assert!(!help.contains("--passphrase "), "{help}");
    assert!(!help.contains("KEEPSAKE_PASSPHRASE"));
}

/// An archive of `bytes` bytes of data, with the key `key` and a small key derivation cost,
/// written by the library as `keepsake backup` writes it.
fn small_archive(dir: &std::path::Path, key: &std::path::Path, bytes: usize) -> std::path::PathBuf {
    use keepsake::archive::{self, KdfParams};
    use keepsake::secrets::{self, SecretSource};
    let tree = dir.join("tree");
    std::fs::create_dir(&tree).unwrap();
    std::fs::write(tree.join("data"), vec![7u8; bytes]).unwrap();
    std::fs::write(key, b"a key for the progress test").unwrap();
    let secret =
        secrets::read_secret(&SecretSource::KeyFile(key.to_path_buf()), "key", false).unwrap();
    let params = KdfParams {
        memory_kib: 8192,
        iterations: 1,
        parallel: 1,
    };
    let path = dir.join("a.ksb");
    let file = std::fs::File::create(&path).unwrap();
    let mut writer = archive::Writer::new(file, &secret, params, 64 * 1024).unwrap();
    archive::write_tree(&tree, &["data".into()], &mut writer, &mut |_| {}).unwrap();
    writer.finish().unwrap();
    path
}

/// Runs `command` with standard error on a new terminal; returns its exit status, what it
/// wrote on that terminal and on standard output.
fn on_a_terminal(mut command: Command) -> (Option<i32>, String, String) {
    use std::io::Read;
    let pty = nix::pty::openpty(None, None).unwrap();
    let child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::from(pty.slave))
        .spawn()
        .unwrap();
    // Closed in this process by the spawn (it was moved into the command, dropped with it).
    drop(command);
    let mut master = std::fs::File::from(pty.master);
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        // Ends with EIO once the child, the last holder of the terminal, exits.
        let _ = master.read_to_end(&mut seen);
        seen
    });
    let out = child.wait_with_output().unwrap();
    let seen = reader.join().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&seen).into_owned(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Long work draws its progress on a terminal, and only there: with `--json`, or with
/// standard error not a terminal, nothing of it is written.
#[test]
fn progress_is_drawn_on_a_terminal_only() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    let archive = small_archive(dir.path(), &key, 8 << 20);
    let verify = |json: bool| {
        let mut command = keepsake();
        if json {
            command.arg("--json");
        }
        // This is not a live system; what is tested here is not the preflight.
        command
            .args([
                "--allow-disk-backed-tmp",
                "--allow-unencrypted-swap",
                "--allow-core-dump-handler",
            ])
            .args(["backup", "verify", "--key-file"])
            .arg(&key)
            .arg(&archive);
        command
    };

    let (code, terminal, stdout) = on_a_terminal(verify(false));
    assert_eq!(code, Some(0), "{terminal}{stdout}");
    assert!(stdout.contains("is intact"), "{stdout}");
    assert!(
        terminal.contains("verify: "),
        "no progress line on the terminal: {terminal:?}"
    );
    assert!(
        terminal.contains("deriving the archive key (argon2id) ("),
        "no spinner while the key is derived: {terminal:?}"
    );

    let (code, terminal, stdout) = on_a_terminal(verify(true));
    assert_eq!(code, Some(0), "{terminal}{stdout}");
    let drawn = |text: &str| text.contains("verify: ") || text.contains('\x1b');
    assert!(!drawn(&terminal), "--json draws progress: {terminal:?}");
    assert!(
        !terminal.contains("deriving"),
        "--json prints steps: {terminal:?}"
    );
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["contents"]["files"], 1);

    let piped = verify(false).output().unwrap();
    let stderr = String::from_utf8_lossy(&piped.stderr);
    assert_eq!(piped.status.code(), Some(0), "{stderr}");
    assert!(!drawn(&stderr), "progress drawn off a terminal: {stderr:?}");
    assert_eq!(
        stderr
            .lines()
            .filter(|line| !line.starts_with("keepsake: warning: "))
            .collect::<Vec<_>>(),
        ["keepsake: deriving the archive key (argon2id)"],
        "without a terminal, the steps as lines and no progress drawing"
    );
}
