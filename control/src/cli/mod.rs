//! Command-line parsing and dispatch.

mod demo;
mod lab;
mod search;
mod stat;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

use crate::daemon;

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
    /// Change the number of worker instances of a member at runtime (Dynamic Balancing);
    /// its connections move between workers, none is dropped.
    Workers {
        /// Member id.
        member: u32,
        /// Worker instances (1..=16).
        count: u32,
    },
    /// Run the orchestrator daemon.
    Orchestrator {
        #[arg(long)]
        config: PathBuf,
    },
    /// Run a member (SGM) daemon.
    Sgm {
        #[arg(long)]
        config: PathBuf,
        /// Member id (1..=63), as in the configuration.
        #[arg(long)]
        id: u32,
        /// The member's data port.
        #[arg(long, default_value = "dl0")]
        data_port: String,
        /// Core to pin the worker to.
        #[arg(long)]
        worker_core: Option<usize>,
        /// Policy file (TOML), reloaded on SIGHUP; without it every connection is accepted.
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Connection table capacity.
        #[arg(long, default_value_t = 1_000_000)]
        table_size: usize,
        /// Worker instances (CoreXL).
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// Cores to pin the workers to, comma-separated.
        #[arg(long, value_delimiter = ',')]
        worker_cores: Option<Vec<usize>>,
        /// Queue of the data port the AF_XDP socket binds to.
        #[arg(long, default_value_t = 0)]
        queue: u32,
        /// UMEM frames (at least twice the ring size).
        #[arg(long, default_value_t = 4096)]
        umem_frames: u32,
        /// Size of the fill, completion, RX and TX rings (a power of two).
        #[arg(long, default_value_t = 2048)]
        ring_size: u32,
        /// Frames handled per batch.
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// Busy-poll the queue with this budget (needs a dedicated core).
        #[arg(long)]
        busy_poll: Option<u32>,
    },
}

pub fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let client = baton_control::api::Client::new(cli.api);
    let result = match cli.command {
        Command::Lab { command } => lab::run(command),
        Command::Stat(args) => stat::run(&client, args),
        Command::Demo(args) => demo::run(&client, args),
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
        Command::Search(args) => search::run(&client, args),
        Command::Orchestrator { config } => daemon::orchestrator::run(&config),
        Command::Sgm {
            config,
            id,
            data_port,
            worker_core,
            policy,
            table_size,
            workers,
            worker_cores,
            queue,
            umem_frames,
            ring_size,
            batch,
            busy_poll,
        } => daemon::member::run(daemon::member::Options {
            config: &config,
            id,
            data_port,
            worker_core,
            policy,
            table_size,
            workers,
            worker_cores,
            queue,
            umem_frames,
            ring_size,
            batch,
            busy_poll,
        }),
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
