use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = match keepsake::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // --help and --version are not errors and print as clap prints them; a bad
            // command line under --json still gets its one JSON object on stdout.
            if err.use_stderr() {
                let json = keepsake::cli::asks_for_json(std::env::args_os());
                keepsake::output::Output { json }.usage_error(&keepsake::cli::first_line(&err));
            }
            err.exit()
        }
    };
    let out = keepsake::output::Output {
        json: cli.global.json,
    };
    match keepsake::commands::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            out.error(&err);
            std::process::ExitCode::from(err.exit_code() as u8)
        }
    }
}
