//! The command lines a session runs over and over (`unlock`, `lock`, `status`, with their
//! long options), read without clap.
//!
//! Under emulation (the test VM, qemu TCG) nearly all of clap's cost is code run for the
//! first time: parsing a command line took 35–55 ms, parsing it again in the same process
//! 2–3 ms; that was 3–5 % of `unlock` with one feature. This reader handles only
//! plain command lines: known long options, each given once, with plain values. Anything
//! else (a short flag, `--help`, an unknown or repeated option, two options that conflict,
//! an empty value or one that starts with `-`, a `--`, an argument that is not UTF-8, any
//! other command) gives `None`, and clap reads the line, with its help and its errors.
//!
//! So this reader is never the one that says no: it only ever says the same yes as clap.
//! A unit test holds it to that over thousands of generated command lines, and another keeps
//! its options the same as clap's definition of these three commands.

use std::ffi::OsString;
use std::path::PathBuf;

use super::{Cli, Command, GlobalArgs, LockArgs, PassphraseArgs, StatusArgs, UnlockArgs};
use super::{LayoutProfile, OnRemoval, VolumeArgs, WatchOptions};

/// The global options (`global = true` in [`GlobalArgs`]): before or after the command.
pub(super) const GLOBAL: &[&str] = &[
    "json",
    "layout",
    "allow-unencrypted-swap",
    "allow-core-dump-handler",
    "allow-disk-backed-tmp",
];

/// The commands read here and their own long options.
pub(super) const COMMANDS: &[(&str, &[&str])] = &[
    (
        "unlock",
        &[
            "device",
            "image",
            "recovery-key",
            "mount-root",
            "live-user",
            "passphrase-fd",
            "key-file",
            "on-removal",
            "require-watch",
        ],
    ),
    ("lock", &["force", "device", "now"]),
    ("status", &[]),
];

/// The options given so far, by name, with their values (a flag's is empty).
#[derive(Default)]
struct Given(Vec<(&'static str, String)>);

impl Given {
    /// Records `name`; `None` if it was given before (clap refuses that).
    fn add(&mut self, name: &'static str, value: String) -> Option<()> {
        if self.0.iter().any(|(n, _)| *n == name) {
            return None;
        }
        self.0.push((name, value));
        Some(())
    }

    fn flag(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _)| *n == name)
    }

    fn value(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    fn path(&self, name: &str) -> Option<PathBuf> {
        self.value(name).map(PathBuf::from)
    }

    /// Whether both of two conflicting options were given.
    fn both(&self, a: &str, b: &str) -> bool {
        self.flag(a) && self.flag(b)
    }
}

/// Whether the option `name` takes a value.
fn takes_value(name: &str) -> bool {
    !matches!(
        name,
        "json"
            | "allow-unencrypted-swap"
            | "allow-core-dump-handler"
            | "allow-disk-backed-tmp"
            | "recovery-key"
            | "force"
            | "require-watch"
            | "now"
    )
}

/// `args` (the program name first) as clap would read them, if the line is a plain one.
pub fn parse(args: &[OsString]) -> Option<Cli> {
    let mut words = args.iter().skip(1).map(|a| a.to_str());
    let mut command: Option<(&'static str, &'static [&'static str])> = None;
    let mut given = Given::default();
    while let Some(word) = words.next() {
        let word = word?;
        let Some(option) = word.strip_prefix("--") else {
            // The command, once; no positional argument, no short flag.
            if command.is_some() {
                return None;
            }
            command = Some(*COMMANDS.iter().find(|(name, _)| *name == word)?);
            continue;
        };
        let (name, inline) = match option.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (option, None),
        };
        let own = command.map_or(&[][..], |(_, own)| own);
        let name: &'static str = GLOBAL.iter().chain(own).find(|n| **n == name)?;
        let value = if takes_value(name) {
            let value = match inline {
                Some(value) => value,
                None => words.next()??,
            };
            if value.is_empty() || value.starts_with('-') {
                return None;
            }
            value.to_string()
        } else if inline.is_some() {
            return None;
        } else {
            String::new()
        };
        given.add(name, value)?;
    }
    let (name, _) = command?;
    if given.both("device", "image") || given.both("passphrase-fd", "key-file") {
        return None;
    }
    let layout = match given.value("layout") {
        None | Some("tails") => LayoutProfile::Tails,
        Some("live-boot") => LayoutProfile::LiveBoot,
        Some(_) => return None,
    };
    let on_removal = match given.value("on-removal") {
        None | Some("end") => OnRemoval::End,
        Some("wipe") => OnRemoval::Wipe,
        Some("shutdown") => OnRemoval::Shutdown,
        Some(_) => return None,
    };
    let global = GlobalArgs {
        json: given.flag("json"),
        layout,
        allow_unencrypted_swap: given.flag("allow-unencrypted-swap"),
        allow_core_dump_handler: given.flag("allow-core-dump-handler"),
        allow_disk_backed_tmp: given.flag("allow-disk-backed-tmp"),
    };
    let command = match name {
        "unlock" => Command::Unlock(UnlockArgs {
            volume: VolumeArgs {
                device: given.path("device"),
                image: given.path("image"),
            },
            recovery_key: given.flag("recovery-key"),
            mount_root: given.path("mount-root"),
            live_user: given.value("live-user").map(str::to_string),
            watch: WatchOptions {
                on_removal,
                require_watch: given.flag("require-watch"),
            },
            passphrase: PassphraseArgs {
                passphrase_fd: match given.value("passphrase-fd") {
                    Some(fd) => Some(file_descriptor(fd)?),
                    None => None,
                },
                key_file: given.path("key-file"),
            },
        }),
        "lock" => Command::Lock(LockArgs {
            force: given.flag("force"),
            device: given.path("device"),
            now: given.flag("now"),
        }),
        _ => Command::Status(StatusArgs {}),
    };
    Some(Cli { command, global })
}

/// A file descriptor written in decimal digits only (clap takes a sign too: left to it).
fn file_descriptor(text: &str) -> Option<i32> {
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    fn os(words: &[&str]) -> Vec<OsString> {
        std::iter::once("keepsake")
            .chain(words.iter().copied())
            .map(OsString::from)
            .collect()
    }

    /// What clap makes of `args`, as text, if it takes them.
    fn by_clap(args: &[OsString]) -> Option<String> {
        Cli::try_parse_from(args).ok().map(|cli| format!("{cli:?}"))
    }

    /// Checks one line: whatever this reader takes, clap takes the same way.
    fn agrees(args: &[OsString]) -> bool {
        let Some(plain) = parse(args) else {
            return false;
        };
        let plain = format!("{plain:?}");
        assert_eq!(
            by_clap(args).as_deref(),
            Some(plain.as_str()),
            "clap reads {args:?} otherwise"
        );
        true
    }

    #[test]
    fn the_lines_a_session_runs_are_read_as_clap_reads_them() {
        for line in [
            &["unlock"][..],
            &["lock"],
            &["status"],
            &["--json", "status"],
            &["status", "--json"],
            &[
                "unlock",
                "--image",
                "/media/usb/keepsake.img",
                "--key-file",
                "/run/p",
            ],
            &["unlock", "--image=/bench/vol 1.img", "--passphrase-fd", "0"],
            &["unlock", "--passphrase-fd=007", "--recovery-key"],
            &["--layout", "live-boot", "unlock", "--device", "/dev/sdb2"],
            &["unlock", "--layout=tails", "--mount-root", "/mnt/x"],
            &[
                "unlock",
                "--live-user",
                "amnesia",
                "--allow-unencrypted-swap",
            ],
            &[
                "--allow-core-dump-handler",
                "lock",
                "--force",
                "--device",
                "/dev/sdb",
            ],
            &["lock", "--allow-disk-backed-tmp", "--json"],
            &["unlock", "--on-removal", "shutdown", "--require-watch"],
            &["unlock", "--on-removal=wipe"],
            &["lock", "--now"],
        ] {
            assert!(agrees(&os(line)), "{line:?} is a plain line");
        }
    }

    #[test]
    fn every_other_line_is_left_to_clap() {
        for line in [
            &[][..],
            &["--json"],
            &["unlock", "-h"],
            &["unlock", "--help"],
            &["--version"],
            &["create", "--image", "/x"],
            &["unlock", "lock"],
            &["unlock", "extra"],
            &["unlock", "--image", "/a", "--device", "/b"],
            &["unlock", "--passphrase-fd", "3", "--key-file", "/k"],
            &["unlock", "--image", "/a", "--image", "/a"],
            &["--json", "status", "--json"],
            &["unlock", "--image"],
            &["unlock", "--image="],
            &["unlock", "--image", "-x"],
            &["unlock", "--passphrase-fd", "+3"],
            &["unlock", "--passphrase-fd", "99999999999"],
            &["status", "--json=true"],
            &["lock", "--recovery-key"],
            &["status", "--device", "/dev/sdb"],
            &["--layout", "TAILS", "status"],
            &["--", "status"],
            &["status", "--"],
            &["lock", "-"],
            &["unlock", "--on-removal", "reboot"],
            &["lock", "--require-watch"],
        ] {
            assert!(parse(&os(line)).is_none(), "{line:?} is left to clap");
        }
        let mut args = os(&["unlock", "--image"]);
        args.push(std::os::unix::ffi::OsStringExt::from_vec(vec![b'/', 0xff]));
        assert!(
            parse(&args).is_none(),
            "a value that is not UTF-8 is left to clap"
        );
    }

    /// xorshift64*: the same lines on every run.
    fn generator(mut state: u64) -> impl FnMut(usize) -> usize {
        move |bound| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % bound
        }
    }

    const WORDS: &[&str] = &[
        "unlock",
        "lock",
        "status",
        "create",
        "feature",
        "--json",
        "--json=1",
        "--layout",
        "--layout=live-boot",
        "tails",
        "live-boot",
        "Tails",
        "--device",
        "--device=/dev/sdb1",
        "/dev/sdb",
        "--image",
        "--image=/m/k.img",
        "/m/k.img",
        "",
        "--image=",
        "--key-file",
        "/run/pass",
        "--passphrase-fd",
        "3",
        "007",
        "-1",
        "--passphrase-fd=-1",
        "--passphrase-fd=+4",
        "2147483647",
        "2147483648",
        "--recovery-key",
        "--recovery-key=yes",
        "--mount-root",
        "/mnt/r",
        "--live-user",
        "amnesia",
        "a=b",
        "--force",
        "--allow-unencrypted-swap",
        "--allow-core-dump-handler",
        "--allow-disk-backed-tmp",
        "-h",
        "--help",
        "--version",
        "-V",
        "--",
        "-",
        "--unknown",
        "-y",
        "--size",
        "1G",
    ];

    /// Thousands of command lines made of the words clap and this reader know, and of
    /// words they must refuse, in any order: every line this reader takes, clap takes, the
    /// same way.
    #[test]
    fn random_lines_are_read_as_clap_reads_them_or_left_to_it() {
        let mut next = generator(0x9E37_79B9_7F4A_7C15);
        let (mut taken, total) = (0, 20_000);
        for _ in 0..total {
            let len = 1 + next(7);
            let line: Vec<&str> = (0..len).map(|_| WORDS[next(WORDS.len())]).collect();
            taken += usize::from(agrees(&os(&line)));
        }
        assert!(taken > 0, "no random line was plain");
    }

    /// Lines shaped as users write them: a command, then options of any of the three
    /// commands, each with a value from a pool of good and bad ones, inline or not. Most
    /// are plain; those that are must read as clap reads them.
    #[test]
    fn shaped_lines_are_read_as_clap_reads_them_or_left_to_it() {
        const VALUES: &[&str] = &[
            "/dev/sdb",
            "/m/k.img",
            "a b",
            "0",
            "3",
            "12",
            "tails",
            "live-boot",
            "amnesia",
            "",
            "-x",
            "+1",
            "x=y",
        ];
        let options: Vec<&str> = COMMANDS
            .iter()
            .flat_map(|(_, own)| own.iter())
            .chain(GLOBAL)
            .copied()
            .collect();
        let mut next = generator(0x2545_F491_4F6C_DD1D);
        let (mut taken, total) = (0, 20_000);
        for _ in 0..total {
            let mut line: Vec<String> = Vec::new();
            for _ in 0..next(5) {
                let name = options[next(options.len())];
                let value = VALUES[next(VALUES.len())];
                match (takes_value(name), next(5)) {
                    (true, 0) => line.push(format!("--{name}={value}")),
                    (true, _) => line.extend([format!("--{name}"), value.to_string()]),
                    (false, 0) => line.push(format!("--{name}={value}")),
                    (false, _) => line.push(format!("--{name}")),
                }
            }
            let at = next(line.len() + 1);
            line.insert(at, COMMANDS[next(COMMANDS.len())].0.to_string());
            let words: Vec<&str> = line.iter().map(String::as_str).collect();
            taken += usize::from(agrees(&os(&words)));
        }
        // The reader must take a fair share, or this would prove little.
        assert!(
            taken > total / 5,
            "only {taken} of {total} lines were plain"
        );
    }

    /// The options read here are those clap defines for these commands: an option added to
    /// one of them in clap must be added here too (or the command falls back to clap, and
    /// this test says so).
    #[test]
    fn the_options_are_those_of_the_clap_definition() {
        let mut cli = Cli::command();
        cli.build();
        for (name, own) in COMMANDS {
            let sub = cli.find_subcommand(name).unwrap();
            let mut clap_options: Vec<&str> = sub
                .get_arguments()
                .filter(|a| !matches!(a.get_id().as_str(), "help" | "version"))
                .map(|a| a.get_long().unwrap())
                .collect();
            clap_options.sort_unstable();
            let mut here: Vec<&str> = GLOBAL.iter().chain(own.iter()).copied().collect();
            here.sort_unstable();
            assert_eq!(here, clap_options, "the options of {name}");
            for arg in sub.get_arguments() {
                if let Some(long) = arg.get_long().filter(|l| here.contains(l)) {
                    assert_eq!(
                        takes_value(long),
                        arg.get_action().takes_values(),
                        "--{long} takes a value"
                    );
                    assert!(arg.get_short().is_none(), "--{long} has no short form");
                    assert!(arg.get_aliases().is_none(), "--{long} has no alias");
                }
            }
        }
    }
}
