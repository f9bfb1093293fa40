use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = keepsake::cli::Cli::parse();
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
