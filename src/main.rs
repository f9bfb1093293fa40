use clap::Parser;

fn main() -> std::process::ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // A plain `unlock`, `lock` or `status` is read without clap (it says yes as clap would,
    // and leaves every other line to clap).
    let parsed = keepsake::cli::plain::parse(&args)
        .map_or_else(|| keepsake::cli::Cli::try_parse_from(&args), Ok);
    let cli = match parsed {
        Ok(cli) => cli,
        Err(err) => {
            // --help and --version are not errors and print as clap prints them; a bad
            // command line under --json still gets its one JSON object on stdout.
            if err.use_stderr() {
                let json = keepsake::cli::asks_for_json(args);
                keepsake::output::Output { json }.usage_error(&keepsake::cli::first_line(&err));
            }
            err.exit()
        }
    };
    let out = keepsake::output::Output {
        json: cli.global.json,
    };
    // Before anything is opened: see require_open_fds.
    let started = keepsake::secrets::require_open_fds(&args).map_err(keepsake::error::Error::from);
    let outcome = started.and_then(|()| keepsake::commands::run(cli));
    match keepsake::error::settle(outcome, keepsake::interrupt::received()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            out.error(&err);
            std::process::ExitCode::from(err.exit_code() as u8)
        }
    }
}
