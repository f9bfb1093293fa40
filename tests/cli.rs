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
                "volumes"
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
