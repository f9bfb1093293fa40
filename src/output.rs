//! What the user sees: progress and warnings on stderr, one result on stdout (text, or one
//! JSON object with `--json`), and errors as one line (plus a JSON object with `--json`).

use std::io::Write;

use serde::Serialize;

use crate::error::Error;

#[derive(Clone, Copy, Debug)]
pub struct Output {
    pub json: bool,
}

impl Output {
    /// A step of long work, so that a person at the terminal sees progress.
    pub fn progress(&self, message: impl std::fmt::Display) {
        if !self.json {
            eprintln!("keepsake: {message}");
        }
    }

    pub fn warn(&self, message: impl std::fmt::Display) {
        eprintln!("keepsake: warning: {message}");
    }

    /// Prints the command's result: `report` as JSON, or the text `human` renders.
    pub fn result<T: Serialize>(&self, report: &T, human: impl FnOnce(&T) -> String) {
        let mut out = std::io::stdout().lock();
        let text = if self.json {
            serde_json::to_string_pretty(report)
                .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
        } else {
            human(report)
        };
        if !text.is_empty() {
            let _ = writeln!(out, "{}", text.trim_end());
        }
    }

    /// Asks a yes/no question on the terminal; only "yes" is yes. Without a terminal, the
    /// answer is an error telling scripts to pass --yes.
    pub fn confirm(&self, question: &str) -> Result<bool, Error> {
        use std::io::{BufRead, BufReader};
        let tty = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/tty")
            .map_err(|_| {
                Error::Usage("confirmation needed but there is no terminal; pass --yes".into())
            })?;
        let mut writer = &tty;
        write!(writer, "{question}: ").map_err(|e| Error::Io {
            context: "asking for confirmation".into(),
            source: e,
        })?;
        let mut answer = String::new();
        BufReader::new(&tty)
            .read_line(&mut answer)
            .map_err(|e| Error::Io {
                context: "reading the confirmation".into(),
                source: e,
            })?;
        Ok(answer.trim() == "yes")
    }

    pub fn error(&self, err: &Error) {
        let code = err.exit_code();
        eprintln!("keepsake: error: {err}");
        // An incomplete unlock has already printed its report, which carries the details:
        // stdout stays one JSON object.
        if self.json && code != crate::error::ExitCode::Incomplete {
            let value = serde_json::json!({
                "error": { "code": code as u8, "kind": code.name(), "message": err.to_string() }
            });
            println!("{value}");
        }
    }
}
