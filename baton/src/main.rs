//! `baton`: the CLI and the daemons. `main` parses and dispatches; each subcommand lives in
//! its own module. The daemons are `baton_control::daemon`; the lab's commands (`lab`,
//! `gen`, `conns`, `demo`) call `baton_lab`.

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli::dispatch(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("baton: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
