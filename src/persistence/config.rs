//! `persistence.conf`, read and written the way its real reader reads it: Tails' Persistent
//! Storage or Debian's live-boot. Parsed and validated without I/O.
//!
//! One feature a line: `DESTINATION OPTIONS`. The two readers differ, and each layout uses
//! its own reader's rules ([`Dialect`]):
//!
//! - **Tails** splits a line as a POSIX shell would (Python's `shlex.split(line,
//!   comments=True)`): quoted destinations may hold spaces, `#` starts a comment, exactly two
//!   fields. Options are comma-separated: `source=NAME` (required), `link` (each file
//!   symlinked, the dotfiles way) and `file` (one file bind-mounted).
//! - **live-boot** reads a line with the shell's `read dir options`: the destination is the
//!   first word, the options the rest, separated by commas or blanks: `source=SUBDIR` (default:
//!   the destination's own path; `.` is the volume's root), `bind` (default), `link` and
//!   `union` (an overlay with its upper layer in the volume).
//!
//! A line its reader would skip is kept verbatim and reported with its number and reason;
//! only that feature is skipped. A line its reader accepts is never called invalid here,
//! even when keepsake will not activate it in a running session (a `/ union` takes effect
//! at boot only): that is [`boot_only`]'s verdict, not the parser's.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::persistence::layout::LayoutProfile;

/// Whose rules a `persistence.conf` follows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Dialect {
    #[default]
    Tails,
    LiveBoot,
}

impl From<LayoutProfile> for Dialect {
    fn from(profile: LayoutProfile) -> Dialect {
        match profile {
            LayoutProfile::Tails => Dialect::Tails,
            LayoutProfile::LiveBoot => Dialect::LiveBoot,
        }
    }
}

impl Dialect {
    fn reader(self) -> &'static str {
        match self {
            Dialect::Tails => "Tails",
            Dialect::LiveBoot => "live-boot",
        }
    }
}

/// How a feature is made visible at its destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// The source folder is bind-mounted over the destination.
    Bind,
    /// Each file of the source is symlinked into the destination (dotfiles).
    Link,
    /// One file of the volume is bind-mounted over the destination file (Tails' `file`).
    File,
    /// An overlay on the destination whose upper layer is `SOURCE/rw` in the volume
    /// (live-boot's `union`): the destination's files show through, changes persist.
    Union,
}

impl Method {
    /// Whether this method mounts something at the destination (all but `link`).
    pub(crate) fn mounts(self) -> bool {
        self != Method::Link
    }

    fn option(self) -> Option<&'static str> {
        match self {
            Method::Bind => None,
            Method::Link => Some("link"),
            Method::File => Some("file"),
            Method::Union => Some("union"),
        }
    }

    fn allowed_in(self, dialect: Dialect) -> bool {
        match self {
            Method::Bind | Method::Link => true,
            Method::File => dialect == Dialect::Tails,
            Method::Union => dialect == Dialect::LiveBoot,
        }
    }
}

/// One valid feature line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub destination: PathBuf,
    /// A relative path inside the volume; `.` is the volume's root (live-boot only).
    pub source: PathBuf,
    pub method: Method,
}

/// The source that stands for the volume's root (live-boot's `source=.`).
pub(crate) const VOLUME_ROOT: &str = ".";

impl Entry {
    /// The line as its reader's own tools write it: tab-separated, `source=` always
    /// explicit; Tails quotes a destination the way `shlex.quote` does.
    pub(crate) fn render(&self, dialect: Dialect) -> String {
        let mut options = format!("source={}", self.source.display());
        if let Some(opt) = self.method.option() {
            options.push(',');
            options.push_str(opt);
        }
        let dest = self.destination.to_string_lossy();
        match dialect {
            Dialect::Tails => format!("{}\t{}", shell_quote(&dest), options),
            Dialect::LiveBoot => format!("{dest}\t{options}"),
        }
    }
}

/// Quotes a word as Python's `shlex.quote` does: left bare when it holds only safe
/// characters, else in single quotes (a `'` inside as `'"'"'`).
pub(crate) fn shell_quote(word: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "@%+=:,./-_".contains(c);
    if !word.is_empty() && word.chars().all(safe) {
        return word.to_string();
    }
    format!("'{}'", word.replace('\'', "'\"'\"'"))
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
    pub dialect: Dialect,
    pub lines: Vec<Line>,
}

impl ConfigFile {
    pub(crate) fn new(dialect: Dialect) -> ConfigFile {
        ConfigFile {
            dialect,
            lines: Vec::new(),
        }
    }

    pub(crate) fn parse(text: &str, dialect: Dialect) -> ConfigFile {
        let mut lines = Vec::new();
        let mut seen_dest: HashSet<PathBuf> = HashSet::new();
        for (i, raw) in text.lines().enumerate() {
            let number = i + 1;
            let parsed = match dialect {
                Dialect::Tails => parse_tails_line(raw),
                Dialect::LiveBoot => parse_live_boot_line(raw),
            };
            let checked = match parsed {
                Ok(None) => {
                    lines.push(Line::Other(raw.to_string()));
                    continue;
                }
                Ok(Some(entry)) => {
                    // Both readers act on one line per destination: live-boot keeps the first
                    // (`sort -u`), Tails has one feature per destination.
                    if entry.method != Method::Link && !seen_dest.insert(entry.destination.clone())
                    {
                        Err(format!(
                            "destination {} appears twice; {} uses only the first line",
                            entry.destination.display(),
                            dialect.reader()
                        ))
                    } else {
                        Ok(entry)
                    }
                }
                Err(why) => Err(why),
            };
            lines.push(match checked {
                Ok(entry) => Line::Entry {
                    text: raw.to_string(),
                    entry,
                },
                Err(reason) => Line::Invalid {
                    text: raw.to_string(),
                    error: LineError {
                        line: number,
                        reason,
                    },
                },
            });
        }
        ConfigFile { dialect, lines }
    }

    pub(crate) fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.lines.iter().filter_map(|l| match l {
            Line::Entry { entry, .. } => Some(entry),
            _ => None,
        })
    }

    pub(crate) fn errors(&self) -> impl Iterator<Item = &LineError> {
        self.lines.iter().filter_map(|l| match l {
            Line::Invalid { error, .. } => Some(error),
            _ => None,
        })
    }

    pub(crate) fn find_source(&self, source: &Path) -> Option<&Entry> {
        self.entries().find(|e| e.source == source)
    }

    /// Appends an entry; refuses one its reader would not accept back, or one that would
    /// make the file one live-boot stops the boot on (a source in another's).
    pub(crate) fn add(&mut self, entry: Entry) -> Result<(), String> {
        if !entry.method.allowed_in(self.dialect) {
            return Err(format!(
                "{} does not know the option {}",
                self.dialect.reader(),
                entry.method.option().unwrap_or("bind")
            ));
        }
        let reparsed = self.with_line(&entry);
        match reparsed.lines.last() {
            Some(Line::Invalid { error, .. }) => return Err(error.reason.clone()),
            Some(Line::Entry { entry: back, .. }) if *back == entry => {}
            _ => {
                return Err(format!(
                    "{} would not read this line back as written",
                    self.dialect.reader()
                ));
            }
        }
        if let Some(why) = self.nesting_added(&reparsed) {
            return Err(why);
        }
        *self = reparsed;
        Ok(())
    }

    /// Why adding `entry` would give two features the same or nested sources, if it would
    /// (the new line may be the inner or the outer one).
    pub(crate) fn nesting_with(&self, entry: &Entry) -> Option<String> {
        self.nesting_added(&self.with_line(entry))
    }

    /// Why live-boot would stop the boot on `entry`, if it would because of the live
    /// system it runs on: a union's read-only layers are the destination's folder in each
    /// of the live system's images (`/run/live/rootfs/*`), and with none, live-boot
    /// panics ("overlay needs at least one lower filesystem"). `images` is empty where
    /// the running system is not a live-boot one: then there is nothing to tell.
    pub(crate) fn union_without_image_folder(
        entry: &Entry,
        images: &[PathBuf],
        is_dir: impl Fn(&Path) -> bool,
    ) -> Option<String> {
        if entry.method != Method::Union || images.is_empty() {
            return None;
        }
        let relative = entry
            .destination
            .strip_prefix("/")
            .unwrap_or(&entry.destination);
        if images.iter().any(|image| is_dir(&image.join(relative))) {
            return None;
        }
        Some(format!(
            "{} is not a folder in the live system's image ({}): live-boot stops the boot on a union without one; use a bind, or a folder the image has",
            entry.destination.display(),
            images
                .iter()
                .map(|i| i.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }

    /// This file with `entry`'s line appended, read back as its reader reads it.
    fn with_line(&self, entry: &Entry) -> ConfigFile {
        let mut candidate = self.clone();
        candidate
            .lines
            .push(Line::Other(entry.render(self.dialect)));
        ConfigFile::parse(&candidate.render(), self.dialect)
    }

    /// Why `after` (this file with lines added) has same or nested sources this one has
    /// not, if it has.
    fn nesting_added(&self, after: &ConfigFile) -> Option<String> {
        let before = self.nested_sources();
        after
            .nested_sources()
            .into_iter()
            .find(|found| !before.contains(found))
            .map(|(_, why)| why)
    }

    /// Removes the entry with this source; returns whether there was one.
    pub(crate) fn remove_source(&mut self, source: &Path) -> bool {
        let before = self.lines.len();
        self.lines
            .retain(|l| !matches!(l, Line::Entry { entry, .. } if entry.source == source));
        before != self.lines.len()
    }

    /// Removes the lines of exactly this entry; returns whether there was one.
    pub(crate) fn remove_entry(&mut self, entry: &Entry) -> bool {
        let before = self.lines.len();
        self.lines
            .retain(|l| !matches!(l, Line::Entry { entry: e, .. } if e == entry));
        before != self.lines.len()
    }

    /// The same file without its invalid lines, and those lines' text (for `repair`,
    /// which sets them aside instead of deleting them). A line the reader accepts is
    /// never among them.
    pub(crate) fn without_invalid(&self) -> (ConfigFile, Vec<String>) {
        let mut kept = ConfigFile::new(self.dialect);
        let mut invalid = Vec::new();
        for line in &self.lines {
            match line {
                Line::Invalid { text, .. } => invalid.push(text.clone()),
                other => kept.lines.push(other.clone()),
            }
        }
        (kept, invalid)
    }

    pub(crate) fn render(&self) -> String {
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

    /// Each entry whose source is the same as an earlier one's or lies in (or holds)
    /// another's, with why. live-boot stops the boot on such a file ("Two persistence
    /// mounts have the same or nested sources"), and the owner of the outer folder could
    /// change the inner one: keepsake activates none of them and writes none.
    pub(crate) fn nested_sources(&self) -> Vec<(Entry, String)> {
        let entries: Vec<&Entry> = self.entries().collect();
        let within = |inner: &Path, outer: &Path| {
            outer == Path::new(VOLUME_ROOT) || inner.starts_with(outer)
        };
        let mut found = Vec::new();
        for (i, inner) in entries.iter().enumerate() {
            let outer = entries.iter().enumerate().find(|(j, outer)| {
                *j != i
                    && if outer.source == inner.source {
                        *j < i
                    } else {
                        within(&inner.source, &outer.source)
                    }
            });
            if let Some((_, outer)) = outer {
                found.push((
                    (*inner).clone(),
                    format!(
                        "same or nested sources: its source {} is {} {}, the source of {}: live-boot stops the boot on such a file, and the owner of one folder could change the other; not activated",
                        inner.source.display(),
                        if outer.source == inner.source {
                            "the same as"
                        } else {
                            "inside"
                        },
                        outer.source.display(),
                        outer.destination.display()
                    ),
                ));
            }
        }
        found
    }
}

/// Why keepsake will not activate an entry in a running session although its reader
/// accepts it, if it will not: the line takes effect at boot only (`/ union`, binds over
/// whole system folders, pseudo-filesystems). Such lines stay in the file untouched.
pub(crate) fn boot_only(entry: &Entry) -> Option<String> {
    let dest = &entry.destination;
    if dest == Path::new("/") {
        return Some(
            "a mount over / takes effect at boot only (live-boot's full persistence); keepsake does not mount over a running system's root"
                .into(),
        );
    }
    const NEVER_UNDER: &[&str] = &["/proc", "/sys", "/dev", "/live", "/run/live"];
    const NEVER_AT: &[&str] = &[
        "/run", "/boot", "/usr", "/bin", "/sbin", "/lib", "/lib64", "/etc", "/var", "/tmp",
    ];
    if NEVER_UNDER.iter().any(|f| dest.starts_with(f))
        || NEVER_AT.iter().any(|f| dest == Path::new(f))
    {
        return Some(format!(
            "{} is a system folder a running session depends on: this line takes effect at boot only",
            dest.display()
        ));
    }
    let reserved = [
        crate::persistence::layout::CONFIG_FILE,
        crate::persistence::layout::CUSTOM_FEATURES_FILE,
        crate::persistence::layout::KEEPSAKE_CONFIG_FILE,
        "lost+found",
    ];
    if reserved
        .iter()
        .any(|r| entry.source.starts_with(r) || entry.source == Path::new(r))
    {
        return Some(format!(
            "its source {} is one of the volume's own files; not activated",
            entry.source.display()
        ));
    }
    None
}

/// One line as Tails reads it: `shlex.split(line, comments=True)`, exactly two fields,
/// `source=` required, options `link` and `file`. `Ok(None)` for blank and comment lines.
fn parse_tails_line(raw: &str) -> Result<Option<Entry>, String> {
    let words = shell_split(raw)?;
    if words.is_empty() {
        return Ok(None);
    }
    let [dest, options] = words.as_slice() else {
        return Err(format!(
            "{} fields; Tails wants exactly two (destination, options): quote a path with spaces",
            words.len()
        ));
    };
    let destination = check_tails_destination(dest)?;
    let mut source = None;
    let mut method = Method::Bind;
    for opt in options.split(',') {
        match opt.split_once('=') {
            Some(("source", v)) => {
                if source.is_some() {
                    return Err("option source= given twice".into());
                }
                source = Some(check_source(v, Dialect::Tails)?);
            }
            None if opt == "link" || opt == "file" => {
                if method != Method::Bind {
                    return Err("options link and file are exclusive and given once".into());
                }
                method = if opt == "link" {
                    Method::Link
                } else {
                    Method::File
                };
            }
            _ => return Err(format!("Tails does not know the option {opt:?}")),
        }
    }
    let source = source.ok_or("Tails ignores a line without source=")?;
    Ok(Some(Entry {
        destination,
        source,
        method,
    }))
}

fn check_tails_destination(dest: &str) -> Result<PathBuf, String> {
    if dest.chars().any(char::is_control) {
        return Err("destination contains control characters".into());
    }
    if !dest.starts_with('/') {
        return Err(format!("destination {dest:?} is not an absolute path"));
    }
    // Checked on the text: Path::components() silently drops "." in the middle.
    for part in dest.split('/') {
        if part == "." || part == ".." {
            return Err(format!("destination {dest:?} contains '{part}'"));
        }
    }
    if dest.contains("//") || (dest.len() > 1 && dest.ends_with('/')) {
        return Err(format!("destination {dest:?} is not in normal form"));
    }
    Ok(PathBuf::from(dest))
}

/// Splits a line as Python's `shlex.split(line, comments=True)` does (POSIX mode):
/// blanks separate words, `#` outside quotes ends the line, `'…'` is literal, `"…"` keeps
/// `\` only before `"` and `\`, and a bare `\` escapes the next character.
pub(crate) fn shell_split(line: &str) -> Result<Vec<String>, String> {
    #[derive(PartialEq)]
    enum State {
        Blank,
        Word,
        Single,
        Double,
    }
    let mut words = Vec::new();
    let mut word = String::new();
    let mut state = State::Blank;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match state {
            State::Blank | State::Word => match c {
                ' ' | '\t' | '\n' | '\r' => {
                    if state == State::Word {
                        words.push(std::mem::take(&mut word));
                        state = State::Blank;
                    }
                }
                '#' => break,
                '\'' => state = State::Single,
                '"' => state = State::Double,
                '\\' => {
                    word.push(chars.next().ok_or("No escaped character")?);
                    state = State::Word;
                }
                c => {
                    word.push(c);
                    state = State::Word;
                }
            },
            State::Single => match c {
                '\'' => state = State::Word,
                c => word.push(c),
            },
            State::Double => match c {
                '"' => state = State::Word,
                '\\' => {
                    let next = chars.next().ok_or("No closing quotation")?;
                    if next != '"' && next != '\\' {
                        word.push('\\');
                    }
                    word.push(next);
                }
                c => word.push(c),
            },
        }
    }
    match state {
        State::Single | State::Double => Err("No closing quotation".into()),
        State::Word => {
            words.push(word);
            Ok(words)
        }
        State::Blank => Ok(words),
    }
}

/// One line as live-boot's `get_custom_mounts` reads it (`while read dir options`).
/// `Ok(None)` for blank and comment lines.
fn parse_live_boot_line(raw: &str) -> Result<Option<Entry>, String> {
    // `read` without -r drops a backslash and keeps the character after it; one at the
    // end of a line would join the next line, which keepsake does not follow.
    let mut text = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            text.push(
                chars
                    .next()
                    .ok_or("a backslash at the end of a line joins the next one; keepsake does not read such lines")?,
            );
        } else {
            text.push(c);
        }
    }
    let blank = |c: char| c == ' ' || c == '\t';
    let text = text.trim_matches(blank);
    let (dir, options) = match text.find(blank) {
        Some(at) => (&text[..at], text[at..].trim_matches(blank)),
        None => (text, ""),
    };
    if dir.is_empty() || dir.starts_with('#') {
        return Ok(None);
    }
    if dir.contains(['*', '?', '[']) || options.contains(['*', '?', '[']) {
        return Err("a line with *, ? or [ is expanded by live-boot's shell as a file pattern; keepsake does not read it".into());
    }
    let destination = check_live_boot_destination(dir)?;
    let mut source = None;
    let mut method = Method::Bind;
    for opt in options.split([',', ' ', '\t']).filter(|o| !o.is_empty()) {
        match opt {
            "bind" => method = Method::Bind,
            "link" => method = Method::Link,
            "union" => method = Method::Union,
            _ => match opt.strip_prefix("source=") {
                // As in live-boot, a later source= wins, and an empty one means the default.
                Some(v) => source = (!v.is_empty()).then(|| v.to_string()),
                None => {
                    return Err(format!(
                        "live-boot skips a line with the unknown option {opt:?}"
                    ));
                }
            },
        }
    }
    let source = match source {
        Some(s) => check_source(&s, Dialect::LiveBoot)?,
        // The default source is the destination's own path inside the volume; for / that
        // is the volume's root.
        None => match destination.strip_prefix("/") {
            Ok(rel) if rel.as_os_str().is_empty() => PathBuf::from(VOLUME_ROOT),
            Ok(rel) => rel.to_path_buf(),
            Err(_) => unreachable!("checked absolute"),
        },
    };
    Ok(Some(Entry {
        destination,
        source,
        method,
    }))
}

/// live-boot's own test: absolute, no `.` or `..` component, not /lib (nor anything whose
/// name starts so), not /run/live or below. Repeated and trailing slashes are dropped, as
/// its `trim_path` does.
fn check_live_boot_destination(dir: &str) -> Result<PathBuf, String> {
    if dir.chars().any(char::is_control) {
        return Err("destination contains control characters".into());
    }
    let trimmed = trim_path(dir);
    if !trimmed.starts_with('/') {
        return Err(format!("destination {dir:?} is not an absolute path"));
    }
    if trimmed.starts_with("/lib") {
        return Err(format!("live-boot refuses the destination {dir} (/lib)"));
    }
    if trimmed == "/run/live" || trimmed.starts_with("/run/live/") {
        return Err(format!(
            "live-boot refuses the destination {dir} (/run/live)"
        ));
    }
    if trimmed.split('/').any(|p| p == "." || p == "..") {
        return Err(format!("destination {dir:?} contains '.' or '..'"));
    }
    Ok(PathBuf::from(trimmed))
}

/// live-boot's `trim_path`: repeated slashes become one, a trailing one goes (but `/`).
fn trim_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    if out.len() > 1 && out.ends_with('/') {
        out.pop();
    }
    out
}

fn check_source(src: &str, dialect: Dialect) -> Result<PathBuf, String> {
    if src.is_empty() {
        return Err("source is empty".into());
    }
    if src.chars().any(char::is_control) {
        return Err("source contains control characters".into());
    }
    if dialect == Dialect::LiveBoot && src == VOLUME_ROOT {
        return Ok(PathBuf::from(VOLUME_ROOT));
    }
    if src.starts_with('/') {
        return Err(format!("source {src:?} must be relative to the volume"));
    }
    let src = match dialect {
        Dialect::LiveBoot => trim_path(src),
        Dialect::Tails => src.to_string(),
    };
    for part in src.split('/') {
        match part {
            ".." => return Err(format!("source {src:?} contains '..'")),
            "." => return Err(format!("source {src:?} is not a plain relative path")),
            _ => {}
        }
    }
    if src.contains("//") || src.ends_with('/') {
        return Err(format!("source {src:?} is not in normal form"));
    }
    if dialect == Dialect::Tails && src.contains(',') {
        return Err(format!("source {src:?} contains a comma"));
    }
    Ok(PathBuf::from(src))
}
#[cfg(test)]
mod tests {
    use super::*;

    fn one(line: &str, dialect: Dialect) -> Result<Entry, String> {
        let cfg = ConfigFile::parse(line, dialect);
        match cfg.lines.into_iter().next().expect("a line") {
            Line::Entry { entry, .. } => Ok(entry),
            Line::Invalid { error, .. } => Err(error.reason),
            Line::Other(t) => panic!("not an entry: {t}"),
        }
    }

    fn tails(line: &str) -> Result<Entry, String> {
        one(line, Dialect::Tails)
    }

    fn live(line: &str) -> Result<Entry, String> {
        one(line, Dialect::LiveBoot)
    }

    fn entry(dest: &str, source: &str, method: Method) -> Entry {
        Entry {
            destination: dest.into(),
            source: source.into(),
            method,
        }
    }

    #[test]
    fn tails_lines_parse_as_tails_writes_them() {
        assert_eq!(
            tails("/home/amnesia/Persistent\tsource=Persistent").unwrap(),
            entry("/home/amnesia/Persistent", "Persistent", Method::Bind)
        );
        assert_eq!(
            tails("/home/amnesia source=dotfiles,link").unwrap().method,
            Method::Link
        );
        assert_eq!(
            tails("/etc/hosts\tsource=hosts,file").unwrap(),
            entry("/etc/hosts", "hosts", Method::File)
        );
        assert_eq!(
            tails("'/home/amnesia/My Documents'\tsource=docs").unwrap(),
            entry("/home/amnesia/My Documents", "docs", Method::Bind)
        );
        assert_eq!(
            tails("\"/home/amnesia/a b\" source=ab # a comment").unwrap(),
            entry("/home/amnesia/a b", "ab", Method::Bind)
        );
    }

    #[test]
    fn tails_comments_and_blanks_are_not_entries() {
        let cfg = ConfigFile::parse("# mine\n\n   # indented\n/a source=a\n", Dialect::Tails);
        assert_eq!(cfg.entries().count(), 1);
        assert_eq!(cfg.errors().count(), 0);
    }

    #[test]
    fn tails_refuses_what_tails_refuses() {
        let cases: &[(&str, &str)] = &[
            ("/etc/cups link", "Tails ignores a line without source="),
            ("/etc/cups", "1 fields"),
            ("/a source=x extra", "3 fields"),
            ("/a b source=x", "3 fields"),
            ("'/a source=x", "No closing quotation"),
            ("/a source=x,union", "does not know the option \"union\""),
            ("/a source=x,bind", "does not know the option \"bind\""),
            ("/a source=x,link,file", "exclusive"),
            ("/a source=x,source=y", "twice"),
            ("relative source=x", "not an absolute path"),
            ("/a/../b source=x", "'..'"),
            ("/a source=../up", "'..'"),
            ("/a source=/abs", "relative to the volume"),
            ("/a source=.", "not a plain relative path"),
        ];
        for (line, want) in cases {
            let err = tails(line).expect_err(line);
            assert!(err.contains(want), "{line:?}: got {err:?}, want {want:?}");
        }
    }

    #[test]
    fn live_boot_reads_its_manual_lines() {
        // The Debian Live manual's full persistence, and its other examples.
        assert_eq!(
            live("/ union").unwrap(),
            entry("/", VOLUME_ROOT, Method::Union)
        );
        assert_eq!(live("/home").unwrap(), entry("/home", "home", Method::Bind));
        assert_eq!(
            live("/usr union").unwrap(),
            entry("/usr", "usr", Method::Union)
        );
        assert_eq!(
            live("/home/user source=dotfiles link").unwrap(),
            entry("/home/user", "dotfiles", Method::Link)
        );
        assert_eq!(
            live("  /srv//www/  source=www//data/,bind").unwrap(),
            entry("/srv/www", "www/data", Method::Bind)
        );
        assert_eq!(
            live("/media/all source=.").unwrap(),
            entry("/media/all", VOLUME_ROOT, Method::Bind)
        );
        // The last method and the last source win, an empty source means the default.
        assert_eq!(
            live("/a source=x,link,bind source=y").unwrap(),
            entry("/a", "y", Method::Bind)
        );
        assert_eq!(live("/opt/a source=").unwrap().source, Path::new("opt/a"));
        // read drops a backslash and keeps what follows it.
        assert_eq!(live("/opt/\\x").unwrap().destination, Path::new("/opt/x"));
        // A comment starts a line only.
        assert_eq!(
            ConfigFile::parse("#/a source=x\n   \n", Dialect::LiveBoot)
                .entries()
                .count(),
            0
        );
    }

    #[test]
    fn live_boot_refuses_what_live_boot_refuses() {
        let cases: &[(&str, &str)] = &[
            ("relative source=x", "not an absolute path"),
            ("/lib/x source=x", "/lib"),
            ("/lib64 source=x", "/lib"),
            ("/run/live source=x", "/run/live"),
            ("/run/live/persistence/x source=x", "/run/live"),
            ("/a/./b source=x", "'.' or '..'"),
            ("/a/.. source=x", "'.' or '..'"),
            ("/a source=/abs", "relative to the volume"),
            ("/a source=x/../y", "'..'"),
            ("/a source=./x", "not a plain relative path"),
            ("/a source=x,noexec", "unknown option \"noexec\""),
            ("/a source=x #comment", "unknown option \"#comment\""),
            ("/a/* source=x", "file pattern"),
            ("/a source=x\\", "backslash at the end"),
        ];
        for (line, want) in cases {
            let err = live(line).expect_err(line);
            assert!(err.contains(want), "{line:?}: got {err:?}, want {want:?}");
        }
    }

    #[test]
    fn nested_destinations_are_valid_repeated_ones_are_not() {
        for dialect in [Dialect::Tails, Dialect::LiveBoot] {
            let text = "/srv/www source=www\n/srv/www/uploads source=uploads\n/srv/www source=other\n/home/u source=dots,link\n/home/u source=more,link\n";
            let cfg = ConfigFile::parse(text, dialect);
            let errors: Vec<_> = cfg.errors().map(|e| (e.line, e.reason.clone())).collect();
            assert_eq!(errors.len(), 1, "{dialect:?}: {errors:?}");
            assert_eq!(errors[0].0, 3);
            assert!(errors[0].1.contains("appears twice"));
            assert_eq!(cfg.entries().count(), 4, "links may share a destination");
        }
    }

    #[test]
    fn same_or_nested_sources_are_found() {
        let cfg = ConfigFile::parse(
            "/a source=apt\n/b source=apt/cache\n/c source=gnupg\n/d source=gnupg\n/e source=aptx\n",
            Dialect::LiveBoot,
        );
        let nested: Vec<_> = cfg
            .nested_sources()
            .into_iter()
            .map(|(e, why)| (e.destination, why))
            .collect();
        assert_eq!(nested.len(), 2, "{nested:?}");
        assert_eq!(nested[0].0, Path::new("/b"));
        assert!(nested[0].1.contains("inside apt"));
        assert_eq!(nested[1].0, Path::new("/d"));
        assert!(nested[1].1.contains("the same as gnupg"));
        // The volume's root holds every other source.
        let cfg = ConfigFile::parse("/media/all source=.\n/a source=a\n", Dialect::LiveBoot);
        let nested = cfg.nested_sources();
        assert_eq!(nested.len(), 1);
        assert_eq!(nested[0].0.destination, Path::new("/a"));
    }

    #[test]
    fn a_union_needs_its_folder_in_the_live_systems_image() {
        let images = [PathBuf::from("/run/live/rootfs/filesystem.squashfs")];
        let in_image = |p: &Path| p == Path::new("/run/live/rootfs/filesystem.squashfs/opt");
        let union = |dest: &str| entry(dest, "x", Method::Union);
        assert_eq!(
            ConfigFile::union_without_image_folder(&union("/opt"), &images, in_image),
            None
        );
        let why = ConfigFile::union_without_image_folder(&union("/srv/data"), &images, in_image)
            .expect("no folder in the image");
        assert!(why.contains("/srv/data is not a folder"), "{why}");
        // A bind needs none; off a live-boot system nothing can be told.
        let bind = entry("/srv/data", "x", Method::Bind);
        assert_eq!(
            ConfigFile::union_without_image_folder(&bind, &images, in_image),
            None
        );
        assert_eq!(
            ConfigFile::union_without_image_folder(&union("/srv/data"), &[], in_image),
            None
        );
    }

    #[test]
    fn add_refuses_what_the_reader_would_not_accept_or_live_boot_would_panic_on() {
        let mut cfg = ConfigFile::parse(
            "/var/cache/apt/archives\tsource=apt/cache\n",
            Dialect::LiveBoot,
        );
        let err = cfg.add(entry("/opt/apt", "apt", Method::Bind)).unwrap_err();
        assert!(err.contains("live-boot stops the boot"), "{err}");
        let err = cfg.add(entry("/opt/x y", "xy", Method::Bind)).unwrap_err();
        assert!(
            err.contains("unknown option") || err.contains("read this line back"),
            "{err}"
        );
        assert!(cfg.add(entry("/etc/hosts", "hosts", Method::File)).is_err());
        cfg.add(entry("/srv", "srv", Method::Union)).unwrap();
        assert_eq!(
            cfg.render(),
            "/var/cache/apt/archives\tsource=apt/cache\n/srv\tsource=srv,union\n"
        );
        let mut cfg = ConfigFile::new(Dialect::Tails);
        cfg.add(entry("/home/amnesia/My Docs", "docs", Method::Bind))
            .unwrap();
        cfg.add(entry("/etc/hosts", "hosts", Method::File)).unwrap();
        assert!(cfg.add(entry("/srv", "srv", Method::Union)).is_err());
        assert_eq!(
            cfg.render(),
            "'/home/amnesia/My Docs'\tsource=docs\n/etc/hosts\tsource=hosts,file\n"
        );
    }

    #[test]
    fn render_round_trips_in_both_dialects() {
        let cases = [
            (
                Dialect::Tails,
                entry("/home/amnesia", "dotfiles", Method::Link),
            ),
            (
                Dialect::Tails,
                entry("/home/amnesia/it's here", "q", Method::Bind),
            ),
            (Dialect::Tails, entry("/etc/x.conf", "x", Method::File)),
            (Dialect::LiveBoot, entry("/", VOLUME_ROOT, Method::Union)),
            (Dialect::LiveBoot, entry("/srv/www", "www", Method::Bind)),
        ];
        for (dialect, e) in cases {
            assert_eq!(one(&e.render(dialect), dialect).unwrap(), e, "{dialect:?}");
        }
    }

    #[test]
    fn invalid_lines_are_set_aside_and_the_rest_kept_verbatim() {
        let text = "# mine\n/home/amnesia/Persistent\tsource=Persistent\nrelative/path source=x\n/ union\n/etc/cups source=../up\n/home/amnesia source=dotfiles,link\n";
        let (kept, invalid) = ConfigFile::parse(text, Dialect::LiveBoot).without_invalid();
        assert_eq!(
            kept.render(),
            "# mine\n/home/amnesia/Persistent\tsource=Persistent\n/ union\n/home/amnesia source=dotfiles,link\n"
        );
        assert_eq!(
            invalid,
            ["relative/path source=x", "/etc/cups source=../up"]
        );
    }

    #[test]
    fn boot_only_lines_are_valid_but_not_activated_at_runtime() {
        for (line, want) in [
            ("/ union", Some("at boot only")),
            ("/etc union", Some("at boot only")),
            ("/usr/local union", None),
            ("/proc/x source=x", Some("at boot only")),
            ("/srv source=persistence.conf", Some("volume's own files")),
            ("/srv/www source=www", None),
        ] {
            let e = live(line).unwrap();
            let got = boot_only(&e);
            match want {
                Some(w) => assert!(got.as_deref().unwrap_or("").contains(w), "{line}: {got:?}"),
                None => assert_eq!(got, None, "{line}"),
            }
        }
    }

    #[test]
    fn remove_source_keeps_other_lines() {
        let mut cfg = ConfigFile::parse("# c\n/a source=a\n/b source=b\n", Dialect::Tails);
        assert!(cfg.remove_source(Path::new("a")));
        assert!(!cfg.remove_source(Path::new("a")));
        assert_eq!(cfg.render(), "# c\n/b source=b\n");
    }

    /// keepsake splits and quotes Tails' lines exactly as Python's shlex, which is what
    /// Tails runs: checked against python3 itself on lines that trip simpler readers.
    #[test]
    fn shell_split_and_quote_agree_with_python_shlex() {
        let lines = [
            "/a source=x",
            "'/a b'\tsource=x,link",
            "\"/a \\\"q\\\" \\$x\" source=y",
            "/a\\ b source=z",
            "/a#b source=c",
            "/a 'source=x'#c",
            "'it'\"'\"'s' source=q",
            "\"\" source=e",
            "/x\\\\y source=f",
            "  /lead   source=g  ",
        ];
        let words = [
            "/plain",
            "/with space",
            "it's",
            "",
            "/é",
            "a\"b",
            "$HOME",
            "a\\b",
        ];
        let script = r#"
import json, shlex, sys
data = json.load(sys.stdin)
print(json.dumps({"split": [shlex.split(l, comments=True) for l in data["lines"]],
                  "quote": [shlex.quote(w) for w in data["words"]]}))
"#;
        let input = serde_json::json!({"lines": lines, "words": words}).to_string();
        let mut child = std::process::Command::new("python3")
            .args(["-c", script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 (scripts/install-deps installs it)");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let want: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        for (i, line) in lines.iter().enumerate() {
            let got = shell_split(line).unwrap();
            assert_eq!(serde_json::json!(got), want["split"][i], "{line:?}");
        }
        for (i, word) in words.iter().enumerate() {
            assert_eq!(
                serde_json::json!(shell_quote(word)),
                want["quote"][i],
                "{word:?}"
            );
        }
        assert_eq!(shell_split("'open").unwrap_err(), "No closing quotation");
    }
}
