//! `persistence.conf`: the live-boot syntax Tails uses, parsed and validated without I/O.
//!
//! One feature a line: `DESTINATION<whitespace>OPTIONS`, where OPTIONS is a comma-separated
//! list of `source=SUBDIR`, `link` and `bind` (the default). Blank lines and lines starting
//! with `#` are kept as they are. A bad line is reported with its number and reason and
//! only that feature is skipped; the file as a whole is rejected only when it is not owned
//! by root with mode 0600, since then any line of it may be an attacker's.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

/// How a feature is made visible at its destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// The source folder is bind-mounted over the destination.
    Bind,
    /// Each file of the source is symlinked into the destination (dotfiles).
    Link,
}

/// One valid feature line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub destination: PathBuf,
    /// A relative path inside the volume.
    pub source: PathBuf,
    pub method: Method,
}

impl Entry {
    /// The line as keepsake writes it: tab-separated, `source=` always explicit.
    pub fn render(&self) -> String {
        let mut options = format!("source={}", self.source.display());
        if self.method == Method::Link {
            options.push_str(",link");
        }
        format!("{}\t{}", self.destination.display(), options)
    }
}

/// Why a line was rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineError {
    pub line: usize,
    pub reason: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "persistence.conf line {}: {}", self.line, self.reason)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Line {
    /// Blank or comment, kept verbatim.
    Other(String),
    Entry {
        text: String,
        entry: Entry,
    },
    Invalid {
        text: String,
        error: LineError,
    },
}

/// A parsed `persistence.conf`, line by line, so that rewriting it keeps comments and
/// lines keepsake does not understand.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigFile {
    pub lines: Vec<Line>,
}

impl ConfigFile {
    pub fn parse(text: &str) -> ConfigFile {
        let mut lines = Vec::new();
        let mut seen_dest: HashSet<PathBuf> = HashSet::new();
        let mut seen_source: HashSet<PathBuf> = HashSet::new();
        let mut binds: Vec<PathBuf> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let number = i + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                lines.push(Line::Other(raw.to_string()));
                continue;
            }
            let checked = parse_entry(trimmed).and_then(|entry| {
                if seen_dest.contains(&entry.destination) {
                    return Err(format!(
                        "destination {} appears twice",
                        entry.destination.display()
                    ));
                }
                if seen_source.contains(&entry.source) {
                    return Err(format!("source {} appears twice", entry.source.display()));
                }
                if entry.method == Method::Bind
                    && let Some(outer) = binds.iter().find(|b| nested(b, &entry.destination))
                {
                    return Err(format!(
                        "destination {} overlaps the bind mount at {}",
                        entry.destination.display(),
                        outer.display()
                    ));
                }
                Ok(entry)
            });
            match checked {
                Ok(entry) => {
                    seen_dest.insert(entry.destination.clone());
                    seen_source.insert(entry.source.clone());
                    if entry.method == Method::Bind {
                        binds.push(entry.destination.clone());
                    }
                    lines.push(Line::Entry {
                        text: raw.to_string(),
                        entry,
                    });
                }
                Err(reason) => lines.push(Line::Invalid {
                    text: raw.to_string(),
                    error: LineError {
                        line: number,
                        reason,
                    },
                }),
            }
        }
        ConfigFile { lines }
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.lines.iter().filter_map(|l| match l {
            Line::Entry { entry, .. } => Some(entry),
            _ => None,
        })
    }

    pub fn errors(&self) -> impl Iterator<Item = &LineError> {
        self.lines.iter().filter_map(|l| match l {
            Line::Invalid { error, .. } => Some(error),
            _ => None,
        })
    }

    pub fn find_source(&self, source: &Path) -> Option<&Entry> {
        self.entries().find(|e| e.source == source)
    }

    /// Appends an entry; refuses one that would not parse back as valid.
    pub fn add(&mut self, entry: Entry) -> Result<(), String> {
        let mut candidate = self.clone();
        let text = entry.render();
        candidate.lines.push(Line::Other(text));
        let reparsed = ConfigFile::parse(&candidate.render());
        if let Some(Line::Invalid { error, .. }) = reparsed.lines.last() {
            return Err(error.reason.clone());
        }
        *self = reparsed;
        Ok(())
    }

    /// Removes the entry with this source; returns whether there was one.
    pub fn remove_source(&mut self, source: &Path) -> bool {
        let before = self.lines.len();
        self.lines
            .retain(|l| !matches!(l, Line::Entry { entry, .. } if entry.source == source));
        before != self.lines.len()
    }

    /// The same file without its invalid lines, and those lines' text (for `repair`,
    /// which sets them aside instead of deleting them).
    pub fn without_invalid(&self) -> (ConfigFile, Vec<String>) {
        let mut kept = ConfigFile::default();
        let mut invalid = Vec::new();
        for line in &self.lines {
            match line {
                Line::Invalid { text, .. } => invalid.push(text.clone()),
                other => kept.lines.push(other.clone()),
            }
        }
        (kept, invalid)
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for line in &self.lines {
            let text = match line {
                Line::Other(t) | Line::Entry { text: t, .. } | Line::Invalid { text: t, .. } => t,
            };
            out.push_str(text);
            out.push('\n');
        }
        out
    }
}

fn nested(outer: &Path, inner: &Path) -> bool {
    inner.starts_with(outer) || outer.starts_with(inner)
}

fn parse_entry(line: &str) -> Result<Entry, String> {
    let mut fields = line.split_whitespace();
    let dest = fields.next().unwrap_or_default();
    let options = fields.next();
    if fields.next().is_some() {
        return Err(
            "more than two fields (destination, options); paths with spaces are not supported"
                .into(),
        );
    }
    let destination = check_destination(dest)?;
    let mut source = None;
    let mut method = None;
    for opt in options.unwrap_or("").split(',').filter(|o| !o.is_empty()) {
        let (name, value) = match opt.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (opt, None),
        };
        match (name, value) {
            ("source", Some(v)) => {
                if source.is_some() {
                    return Err("option source= given twice".into());
                }
                source = Some(check_source(v)?);
            }
            ("source", None) => return Err("option source needs a value (source=SUBDIR)".into()),
            ("link" | "bind", Some(_)) => return Err(format!("option {name} takes no value")),
            ("link" | "bind", None) => {
                let m = if name == "link" {
                    Method::Link
                } else {
                    Method::Bind
                };
                if method.is_some() {
                    return Err("options bind and link are exclusive and given once".into());
                }
                method = Some(m);
            }
            ("union", _) => return Err("union mounts are not supported; use bind or link".into()),
            _ => return Err(format!("unknown option {opt:?}")),
        }
    }
    // live-boot's default source is the destination path itself, inside the volume.
    let source = match source {
        Some(s) => s,
        None => check_source(dest.trim_start_matches('/'))?,
    };
    Ok(Entry {
        destination,
        source,
        method: method.unwrap_or(Method::Bind),
    })
}

fn check_destination(dest: &str) -> Result<PathBuf, String> {
    if dest.chars().any(char::is_control) {
        return Err("destination contains control characters".into());
    }
    let path = Path::new(dest);
    if !path.is_absolute() {
        return Err(format!("destination {dest:?} is not an absolute path"));
    }
    // Checked on the text: Path::components() silently drops "." in the middle.
    for part in dest.split('/') {
        match part {
            ".." => return Err(format!("destination {dest:?} contains '..'")),
            "." => return Err(format!("destination {dest:?} contains '.'")),
            _ => {}
        }
    }
    if dest.contains("//") || (dest.len() > 1 && dest.ends_with('/')) {
        return Err(format!("destination {dest:?} is not in normal form"));
    }
    if path == Path::new("/") {
        return Err("destination / would hide the whole system".into());
    }
    // Pseudo-filesystems and the persistence mounts themselves, and system folders that a
    // mount over would hide whole.
    const NEVER_UNDER: &[&str] = &["/proc", "/sys", "/dev", "/live", "/run/live"];
    const NEVER_AT: &[&str] = &[
        "/run", "/boot", "/usr", "/bin", "/sbin", "/lib", "/lib64", "/etc", "/var",
    ];
    if NEVER_UNDER.iter().any(|f| path.starts_with(f))
        || NEVER_AT.iter().any(|f| path == Path::new(f))
    {
        return Err(format!("destination {dest} is a system directory"));
    }
    Ok(path.to_path_buf())
}

fn check_source(src: &str) -> Result<PathBuf, String> {
    if src.is_empty() {
        return Err("source is empty".into());
    }
    if src.chars().any(char::is_control) {
        return Err("source contains control characters".into());
    }
    let path = Path::new(src);
    if path.is_absolute() {
        return Err(format!("source {src:?} must be relative to the volume"));
    }
    for part in src.split('/') {
        match part {
            ".." => return Err(format!("source {src:?} contains '..'")),
            "." => return Err(format!("source {src:?} is not a plain relative path")),
            _ => {}
        }
    }
    if src.contains("//") || src.ends_with('/') || src.starts_with("./") {
        return Err(format!("source {src:?} is not in normal form"));
    }
    if path == Path::new(crate::layout::CONFIG_FILE)
        || path == Path::new(crate::layout::CUSTOM_FEATURES_FILE)
        || path.starts_with("lost+found")
    {
        return Err(format!("source {src} is reserved"));
    }
    Ok(path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(line: &str) -> Result<Entry, String> {
        let cfg = ConfigFile::parse(line);
        match cfg.lines.into_iter().next().expect("a line") {
            Line::Entry { entry, .. } => Ok(entry),
            Line::Invalid { error, .. } => Err(error.reason),
            Line::Other(t) => panic!("not an entry: {t}"),
        }
    }

    #[test]
    fn tails_lines_parse() {
        let e = one("/home/amnesia/Persistent\tsource=Persistent").unwrap();
        assert_eq!(e.destination, Path::new("/home/amnesia/Persistent"));
        assert_eq!(e.source, Path::new("Persistent"));
        assert_eq!(e.method, Method::Bind);
        let e = one("/home/amnesia source=dotfiles,link").unwrap();
        assert_eq!(e.method, Method::Link);
        let e = one("/var/cache/apt/archives  source=apt/cache").unwrap();
        assert_eq!(e.source, Path::new("apt/cache"));
    }

    #[test]
    fn source_defaults_to_destination_path() {
        let e = one("/etc/cups").unwrap();
        assert_eq!(e.source, Path::new("etc/cups"));
        assert_eq!(e.method, Method::Bind);
    }

    #[test]
    fn explicit_bind_is_accepted() {
        assert_eq!(one("/a/b source=x,bind").unwrap().method, Method::Bind);
    }

    #[test]
    fn comments_and_blanks_survive_a_rewrite() {
        let text = "# my settings\n\n/home/amnesia/Persistent\tsource=Persistent\n  # indented\n";
        let cfg = ConfigFile::parse(text);
        assert_eq!(cfg.render(), text);
        assert_eq!(cfg.entries().count(), 1);
    }

    #[test]
    fn invalid_lines_are_set_aside_and_the_rest_kept_verbatim() {
        let text = "# mine\n/home/amnesia/Persistent\tsource=Persistent\nrelative/path source=x\n/etc/cups source=../up\n/home/amnesia source=dotfiles,link\n";
        let (kept, invalid) = ConfigFile::parse(text).without_invalid();
        assert_eq!(
            kept.render(),
            "# mine\n/home/amnesia/Persistent\tsource=Persistent\n/home/amnesia source=dotfiles,link\n"
        );
        assert_eq!(
            invalid,
            ["relative/path source=x", "/etc/cups source=../up"]
        );
        assert_eq!(ConfigFile::parse(&kept.render()).errors().count(), 0);
    }

    #[test]
    fn render_round_trips() {
        let e = Entry {
            destination: "/home/amnesia".into(),
            source: "dotfiles".into(),
            method: Method::Link,
        };
        assert_eq!(e.render(), "/home/amnesia\tsource=dotfiles,link");
        assert_eq!(one(&e.render()).unwrap(), e);
    }

    /// Each malformed line is rejected with a reason naming what is wrong.
    #[test]
    fn malformed_lines_are_rejected_with_a_reason() {
        let cases: &[(&str, &str)] = &[
            ("relative/dest source=x", "not an absolute path"),
            ("~/dest source=x", "not an absolute path"),
            ("/home/../etc source=x", "'..'"),
            ("/home/./x source=x", "'.'"),
            ("/home//x source=x", "normal form"),
            ("/home/x/ source=x", "normal form"),
            ("/ source=root", "whole system"),
            ("/proc source=p", "system directory"),
            ("/sys/kernel source=p", "system directory"),
            ("/etc source=p", "system directory"),
            ("/live/persistence/x source=p", "system directory"),
            ("/a source=/abs", "relative to the volume"),
            ("/a source=../up", "'..'"),
            ("/a source=x/../../up", "'..'"),
            ("/a source=./x", "not a plain relative path"),
            ("/a source=x//y", "normal form"),
            ("/a source=x/", "normal form"),
            ("/a source=", "empty"),
            ("/a source", "needs a value"),
            ("/a source=x,source=y", "twice"),
            ("/a source=x,link,bind", "exclusive"),
            ("/a source=x,link,link", "exclusive"),
            ("/a source=x,link=yes", "takes no value"),
            ("/a source=x,union", "union mounts are not supported"),
            ("/a source=x,noexec", "unknown option"),
            ("/a source=x extra", "more than two fields"),
            ("/a source=persistence.conf", "reserved"),
            ("/a source=lost+found", "reserved"),
            ("/a\u{7}b source=x", "control characters"),
            ("/a source=x\u{1b}", "control characters"),
        ];
        for (line, want) in cases {
            let err = one(line).expect_err(line);
            assert!(err.contains(want), "{line:?}: got {err:?}, want {want:?}");
        }
        assert!(cases.len() >= 20);
    }

    #[test]
    fn duplicates_and_overlaps_skip_only_the_later_line() {
        let text = "\
/home/amnesia/Persistent source=Persistent
/home/amnesia/Persistent source=Other
/home/amnesia/.gnupg source=Persistent
/home/amnesia/Persistent/sub source=sub
/home source=home
/home/amnesia source=dotfiles,link
/home/amnesia/.ssh source=openssh-client
";
        let cfg = ConfigFile::parse(text);
        let errors: Vec<_> = cfg.errors().map(|e| (e.line, e.reason.clone())).collect();
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert_eq!(errors[0].0, 2);
        assert!(
            errors[0]
                .1
                .contains("destination /home/amnesia/Persistent appears twice")
        );
        assert_eq!(errors[1].0, 3);
        assert!(errors[1].1.contains("source Persistent appears twice"));
        assert_eq!(errors[2].0, 4);
        assert!(errors[2].1.contains("overlaps"));
        assert_eq!(errors[3].0, 5);
        let sources: Vec<_> = cfg.entries().map(|e| e.source.clone()).collect();
        assert_eq!(
            sources,
            vec![
                PathBuf::from("Persistent"),
                PathBuf::from("dotfiles"),
                PathBuf::from("openssh-client")
            ]
        );
    }

    #[test]
    fn add_refuses_an_entry_that_would_be_invalid() {
        let mut cfg = ConfigFile::parse("/home/amnesia/Persistent\tsource=Persistent\n");
        let dup = Entry {
            destination: "/home/amnesia/Persistent".into(),
            source: "again".into(),
            method: Method::Bind,
        };
        assert!(cfg.add(dup).is_err());
        assert_eq!(cfg.entries().count(), 1);
        let ok = Entry {
            destination: "/home/amnesia/.gnupg".into(),
            source: "gnupg".into(),
            method: Method::Bind,
        };
        cfg.add(ok).unwrap();
        assert_eq!(
            cfg.render(),
            "/home/amnesia/Persistent\tsource=Persistent\n/home/amnesia/.gnupg\tsource=gnupg\n"
        );
    }

    #[test]
    fn remove_source_keeps_other_lines() {
        let mut cfg = ConfigFile::parse("# c\n/a source=a\n/b source=b\n");
        assert!(cfg.remove_source(Path::new("a")));
        assert!(!cfg.remove_source(Path::new("a")));
        assert_eq!(cfg.render(), "# c\n/b source=b\n");
    }
}
