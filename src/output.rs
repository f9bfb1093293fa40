//! What the user sees: progress and warnings on stderr, one result on stdout (text, or one
//! JSON object with `--json`), and errors as one line (plus a JSON object with `--json`).

use std::io::Write;

use serde::Serialize;

use crate::context::IoError;
use crate::error::{Error, ExitCode};

#[derive(Clone, Copy, Debug)]
pub struct Output {
    pub json: bool,
}

impl Output {
    /// A step of long work, so that a person at the terminal sees progress.
    pub fn progress(&self, message: impl std::fmt::Display) {
        if !self.json {
            eprintln!("keepsake: {}", printable(&message.to_string(), false));
        }
    }

    pub fn warn(&self, message: impl std::fmt::Display) {
        eprintln!(
            "keepsake: warning: {}",
            printable(&message.to_string(), false)
        );
    }

    /// Prints the command's result: `report` as JSON, or the text `human` renders.
    pub fn result<T: Serialize>(&self, report: &T, human: impl FnOnce(&T) -> String) {
        REPORTED.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut out = std::io::stdout().lock();
        let text = if self.json {
            serde_json::to_string_pretty(report)
                .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
        } else {
            printable(&human(report), true).into_owned()
        };
        if !text.is_empty() {
            let _ = writeln!(out, "{}", text.trim_end());
        }
    }

    /// Asks a yes/no question on the terminal; only "yes" is yes. Without a terminal, the
    /// answer is an error telling scripts to pass --yes.
    pub fn confirm(&self, question: &str) -> Result<bool, Error> {
        Ok(self.ask(question)?.trim() == "yes")
    }

    fn ask(&self, question: &str) -> Result<String, Error> {
        use std::io::{BufRead, BufReader};
        let tty = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/tty")
            .map_err(|_| {
                Error::Usage("confirmation needed but there is no terminal; pass --yes".into())
            })?;
        let mut writer = &tty;
        write!(writer, "{question}: ")
            .map_err(|e| Error::Io(IoError::new("asking for confirmation", e)))?;
        let mut answer = String::new();
        BufReader::new(&tty)
            .read_line(&mut answer)
            .map_err(|e| Error::Io(IoError::new("reading the confirmation", e)))?;
        Ok(answer)
    }

    /// Asks for a word to be typed (e.g. DELETE) before something that cannot be undone.
    /// Without a terminal, the answer is an error telling scripts to pass --yes.
    pub fn confirm_typed(&self, question: &str, word: &str) -> Result<bool, Error> {
        let answer = self.ask(&format!("{question}\nType {word} to go on"))?;
        Ok(answer.trim() == word)
    }

    /// Prints a report with one secret (e.g. a new recovery key) that is shown once. The
    /// secret's bytes go straight from their zeroizing buffer to standard output, never
    /// through a String: in JSON as the string member `name`, in text on a line of its own
    /// after `intro`.
    pub fn reveal<T: Serialize>(&self, report: &T, name: &str, intro: &str, secret: &[u8]) {
        let mut out = std::io::stdout().lock();
        let mut put = |bytes: &[u8]| {
            let _ = out.write_all(bytes);
        };
        if self.json {
            let head = serde_json::to_string_pretty(report).unwrap_or_else(|_| "{}".into());
            let head = head.trim_end().trim_end_matches('}').trim_end();
            let sep = if head.ends_with('{') { "" } else { "," };
            put(format!("{head}{sep}\n  \"{name}\": \"").as_bytes());
            put(secret);
            put(b"\"\n}\n");
        } else {
            put(format!("{intro}\n\n    ").as_bytes());
            put(secret);
            put(b"\n\n");
        }
        let _ = out.flush();
    }

    pub fn error(&self, err: &Error) {
        let code = err.exit_code();
        eprintln!("keepsake: error: {}", printable(&err.to_string(), false));
        // A command that printed its report before failing (an incomplete unlock, a failed
        // check) said everything there; any other prints the error as its one object:
        // stdout is always exactly one JSON object.
        if self.json && !REPORTED.load(std::sync::atomic::Ordering::Relaxed) {
            print_error_object(code, &err.to_string());
        }
    }

    /// A command line that did not parse: clap has the message (and prints it on stderr);
    /// under --json, stdout still gets its one object.
    pub fn usage_error(&self, message: &str) {
        if self.json {
            print_error_object(ExitCode::Usage, message);
        }
    }
}

/// `text` as it may reach a terminal: every control character is shown escaped (`\x1b`),
/// line breaks too unless `lines` (a report's own). What keepsake prints holds names the
/// live user chose, and an ESC in one could move root's cursor, retitle its window or
/// rewrite what it printed; a line break could forge a line of a listing, or a warning or
/// an error (each one line, escaped whole).
pub fn printable(text: &str, lines: bool) -> std::borrow::Cow<'_, str> {
    let escaped = |c: char| c.is_control() && !(lines && c == '\n');
    if !text.chars().any(escaped) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            c if !escaped(c) => out.push(c),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            // Every control character is below U+00A0.
            c => out.push_str(&format!("\\x{:02x}", c as u32)),
        }
    }
    std::borrow::Cow::Owned(out)
}

fn print_error_object(code: ExitCode, message: &str) {
    let value = serde_json::json!({
        "error": { "code": code as u8, "kind": code.name(), "message": message }
    });
    println!("{value}");
}

/// Whether this run has printed its report on standard output.
static REPORTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Progress of long work on standard error, drawn by indicatif: a line of bytes, rate and
/// time left, or, for work whose length is not known beforehand, a spinner with the time
/// spent (a key derivation that calibrates itself) or a count of entries (a listing).
/// Only on a terminal and without --json: scripts and logs see nothing of it. Cleared
/// when dropped, so that an error after it starts is not printed on the same line.
pub struct Progress {
    bar: indicatif::ProgressBar,
}

impl Progress {
    pub fn new(out: Output, what: &'static str, total: Option<u64>) -> Progress {
        let template = if total.is_some() {
            "{msg}: {binary_bytes} of {binary_total_bytes}, {binary_bytes_per_sec}, {eta} left"
        } else {
            "{msg}: {binary_bytes}, {binary_bytes_per_sec}"
        };
        Progress::styled(
            out,
            total,
            what,
            template,
            indicatif::ProgressStyle::default_bar,
        )
    }

    /// A spinner with `what` and the time spent, turning on its own while the caller waits
    /// for work that reports nothing until it is done. Where no spinner is drawn, `what` is
    /// a line of [`Output::progress`], as a step of the work.
    pub fn working(out: Output, what: impl Into<std::borrow::Cow<'static, str>>) -> Progress {
        let what = what.into();
        let progress = Progress::styled(
            out,
            None,
            what.clone(),
            "{spinner} {msg} ({elapsed})",
            indicatif::ProgressStyle::default_spinner,
        );
        if progress.bar.is_hidden() {
            out.progress(&what);
        } else {
            progress
                .bar
                .enable_steady_tick(std::time::Duration::from_millis(200));
        }
        progress
    }

    /// A count of entries done, with the time spent, for work whose length is not known
    /// beforehand (a listing of folders).
    pub fn counting(out: Output, what: &'static str) -> Progress {
        Progress::styled(
            out,
            None,
            what,
            "{msg}: {human_pos} entries ({elapsed})",
            indicatif::ProgressStyle::default_spinner,
        )
    }

    /// A line for `what` of `total` (if known) drawn by `template`, or by `fallback`
    /// should the template not parse.
    fn styled(
        out: Output,
        total: Option<u64>,
        what: impl Into<std::borrow::Cow<'static, str>>,
        template: &str,
        fallback: fn() -> indicatif::ProgressStyle,
    ) -> Progress {
        let bar = indicatif::ProgressBar::with_draw_target(total, draw_target(out))
            .with_message(what)
            .with_style(
                indicatif::ProgressStyle::with_template(template).unwrap_or_else(|_| fallback()),
            );
        Progress { bar }
    }

    pub fn update(&mut self, done: u64) {
        self.bar.set_position(done);
    }

    /// A step of the work, as [`Output::progress`] prints it: above the spinner on a
    /// terminal, as a line of its own elsewhere.
    pub fn step(&self, out: Output, message: impl std::fmt::Display) {
        if self.bar.is_hidden() {
            out.progress(message);
        } else {
            self.bar.println(format!("keepsake: {message}"));
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if !self.bar.is_finished() {
            self.bar.finish_and_clear();
        }
    }
}

/// Standard error when a person watches it: a terminal, and no --json.
fn draw_target(out: Output) -> indicatif::ProgressDrawTarget {
    use std::io::IsTerminal;
    if !out.json && std::io::stderr().is_terminal() {
        indicatif::ProgressDrawTarget::stderr_with_hz(4)
    } else {
        indicatif::ProgressDrawTarget::hidden()
    }
}

/// Bytes in binary units with one decimal: "1.5 GiB".
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_well() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 << 29), "1.5 GiB");
        assert_eq!(bytes(100 << 20), "100.0 MiB");
    }

    #[test]
    fn control_characters_in_names_reach_no_terminal() {
        let name = "a\x1b]0;owned\x07b\x1b[2J\u{9b}c";
        assert_eq!(printable(name, false), "a\\x1b]0;owned\\x07b\\x1b[2J\\x9bc");
        // A line break forges no line of a listing; the text's own are kept.
        assert_eq!(
            printable("x\nfile  0:0 forged", false),
            "x\\nfile  0:0 forged"
        );
        assert_eq!(printable("one\ntwo\tthree", true), "one\ntwo\\tthree");
        assert!(matches!(
            printable("plain, été", false),
            std::borrow::Cow::Borrowed("plain, été")
        ));
    }
}
