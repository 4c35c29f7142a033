//! Command-line parsing and dispatch.

mod conns;
mod demo;
mod gen;
mod lab;
mod policy;
mod search;
mod sgm;
mod stat;
mod sync;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

use baton_control::daemon;

/// Exit code when no orchestrator answers (as opposed to 1, the command failed).
pub const EXIT_NO_ORCHESTRATOR: u8 = 3;

#[derive(Parser)]
#[command(
    name = "baton",
    version,
    about = "Baton: a kernel-bypass packet distributor (a software Maestro)"
)]
pub struct Cli {
    /// The orchestrator's API socket.
    #[arg(
        long,
        global = true,
        env = "BATON_API",
        default_value = "/run/baton/api.sock"
    )]
    api: PathBuf,
    /// With `--api http://HOST:PORT` (the API over TCP): the file holding the bearer token
    /// (or set BATON_API_TOKEN).
    #[arg(long, global = true, env = "BATON_API_TOKEN_FILE")]
    api_token_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build or remove the lab topology (network namespaces on this machine).
    Lab {
        #[command(subcommand)]
        command: lab::LabCommand,
    },
    /// Show groups, members, states and counters.
    Stat(stat::StatArgs),
    /// Which member is active and which is backup for a connection.
    Search(search::SearchArgs),
    /// Bring up a lab, run traffic through it with a live status, tear it down.
    Demo(demo::DemoArgs),
    /// Take a member out of service (its buckets go to their backups) until attached.
    Detach {
        /// Member id.
        member: u32,
    },
    /// Return a detached member to service (it rejoins at its next heartbeat).
    Attach {
        /// Member id.
        member: u32,
    },
    /// Change the number of worker instances of a member at runtime (Dynamic Balancing);
    /// its connections move between workers, none is dropped.
    Workers {
        /// Member id.
        member: u32,
        /// Worker instances (1..=16).
        count: u32,
    },
    /// HyperSync: per member and peer, records sent, received, acknowledged,
    /// retransmitted, lost, resyncs, queue and lag (like `cphaprob syncstat`).
    Sync {
        #[command(subcommand)]
        command: sync::SyncCommand,
    },
    /// Send UDP frames from a lab host with the in-kernel generator (flows, size, count,
    /// rate, IPv4/IPv6 mix), and report the rate.
    Gen(gen::GenArgs),
    /// Open short TCP connections between lab hosts (connect, send a verified stream,
    /// close), many at a time, and report the rate, failures and latencies.
    Conns(conns::ConnsArgs),
    /// Policy versions: install through the SMO master, roll back, show.
    Policy {
        #[command(subcommand)]
        command: policy::PolicyCommand,
    },
    /// Print a shell completion script (e.g. `baton completions bash > /etc/bash_completion.d/baton`).
    Completions { shell: clap_complete::Shell },
    /// Run the orchestrator daemon.
    Orchestrator {
        #[arg(long)]
        config: PathBuf,
    },
    /// Run a member (SGM) daemon (`baton sgm --config FILE --id K …`), or change the
    /// members: `baton sgm add|remove|move|detach|attach`.
    Sgm(SgmArgs),
}

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct SgmArgs {
    #[command(subcommand)]
    command: Option<sgm::SgmCommand>,
    #[command(flatten)]
    run: Option<daemon::member::Options>,
}

pub fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let client = match cli.api.to_str().and_then(|a| a.strip_prefix("http://")) {
        Some(addr) => {
            let token = match (&cli.api_token_file, std::env::var("BATON_API_TOKEN")) {
                (Some(f), _) => std::fs::read_to_string(f)
                    .map_err(|e| anyhow::anyhow!("reading the API token {}: {e}", f.display()))?
                    .trim()
                    .to_string(),
                (None, Ok(t)) => t,
                (None, Err(_)) => anyhow::bail!(
                    "--api over TCP needs a bearer token: --api-token-file FILE or BATON_API_TOKEN"
                ),
            };
            baton_control::api::Client::tcp(addr.trim_end_matches('/'), token)
        }
        None => baton_control::api::Client::new(cli.api),
    };
    let result = match cli.command {
        Command::Lab { command } => lab::run(command),
        Command::Stat(args) => stat::run(&client, &args),
        Command::Demo(args) => demo::run(&client, &args),
        Command::Detach { member } => admin(&client, member, "detach"),
        Command::Attach { member } => admin(&client, member, "attach"),
        Command::Workers { member, count } => {
            let r: baton_control::api::WorkersRequest = client.post(
                &format!("/v1/members/{member}/workers"),
                &baton_control::api::WorkersRequest { workers: count },
            )?;
            println!(
                "member {member}: {} workers requested (applied at its next heartbeat)",
                r.workers
            );
            Ok(())
        }
        Command::Search(args) => search::run(&client, &args),
        Command::Sync { command } => sync::run(&client, &command),
        Command::Policy { command } => policy::run(&client, command),
        Command::Gen(args) => gen::run(&args),
        Command::Conns(args) => conns::run(&args),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "baton", &mut std::io::stdout());
            Ok(())
        }
        Command::Orchestrator { config } => daemon::orchestrator::run(&config),
        Command::Sgm(SgmArgs { command: None, run }) => match run {
            Some(opts) => daemon::member::run(&opts),
            None => {
                anyhow::bail!("baton sgm needs --config and --id, or a subcommand (see --help)")
            }
        },
        Command::Sgm(SgmArgs {
            command: Some(cmd), ..
        }) => sgm::run(&client, cmd),
    };
    match result {
        Err(e)
            if matches!(
                e.downcast_ref(),
                Some(baton_control::api::ApiError::NotRunning(_))
            ) =>
        {
            eprintln!("baton: {e:#}");
            Ok(ExitCode::from(EXIT_NO_ORCHESTRATOR))
        }
        Err(e) => Err(e),
        Ok(()) => Ok(ExitCode::SUCCESS),
    }
}

/// `baton detach|attach`: an administrative change of a member's state.
fn admin(client: &baton_control::api::Client, member: u32, verb: &str) -> anyhow::Result<()> {
    let state: baton_control::membership::MemberState = client.post(
        &format!("/v1/members/{member}/{verb}"),
        &serde_json::json!({}),
    )?;
    println!("member {member}: {}", format!("{state:?}").to_lowercase());
    Ok(())
}
