//! `baton lab up|down|fail|restore`.

use baton_control::config::Mode;
use baton_lab::topology::{self as lab, LabOptions};
use clap::Subcommand;

#[derive(Subcommand)]
pub enum LabCommand {
    /// Build the lab and start the orchestrator and members; returns when all are Active.
    Up {
        /// Number of members (1..=14).
        #[arg(long, default_value_t = 3)]
        sgms: u32,
        /// Start the group with HyperSync off.
        #[arg(long)]
        no_sync: bool,
        /// Distribution mode: general or auto-topology.
        #[arg(long, default_value = "general", value_parser = parse_mode)]
        mode: Mode,
        /// Add L4 ports to the flow key.
        #[arg(long)]
        l4: bool,
        /// Connection table capacity of each member.
        #[arg(long, default_value_t = 1_000_000)]
        table_size: usize,
        /// Worker instances per member (more than one adds the dispatcher).
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// Queues of each member's data port, one AF_XDP socket each.
        #[arg(long, default_value_t = 1)]
        queues: u32,
        /// Busy-poll the members' sockets with this budget.
        #[arg(long)]
        busy_poll: Option<u32>,
        /// Heartbeat interval in ms; a member is Down after 3 intervals of silence.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(5..=10_000))]
        heartbeat_ms: u64,
        /// Do not pin the orchestrator's maps and XDP attachments: its restart then stops
        /// the data path (the negative control of the restart test).
        #[arg(long, hide = true)]
        no_pins: bool,
        /// Do not isolate data-path partitions (the negative control of that).
        #[arg(long, hide = true)]
        no_isolation: bool,
    },
    /// Remove everything a lab made (safe to run any time).
    Down,
    /// Fail a part of the lab as its machine would fail: its links go down (at both ends)
    /// and its processes are killed (SIGKILL).
    Fail {
        #[command(subcommand)]
        part: PartArg,
    },
    /// Bring a failed part back: its links up, its processes started again; returns once it
    /// is Active (or fails after 60 s).
    Restore {
        #[command(subcommand)]
        part: PartArg,
    },
}

/// A part of the lab, for `fail` and `restore`.
#[derive(Subcommand)]
pub enum PartArg {
    /// Member K (namespace bt-sgmK): its data, sync and management links and its daemon.
    Member {
        /// Member id.
        k: u32,
    },
}

impl From<PartArg> for lab::Part {
    fn from(p: PartArg) -> Self {
        match p {
            PartArg::Member { k } => lab::Part::Member(k),
        }
    }
}

pub fn run(cmd: LabCommand) -> anyhow::Result<()> {
    match cmd {
        LabCommand::Up {
            sgms,
            no_sync,
            mode,
            l4,
            table_size,
            workers,
            queues,
            busy_poll,
            heartbeat_ms,
            no_pins,
            no_isolation,
        } => {
            let exe = std::env::current_exe()?;
            let stat = lab::up(&LabOptions {
                sgms,
                sync: !no_sync,
                mode,
                l4,
                table_size,
                workers,
                queues,
                busy_poll,
                heartbeat_ms,
                pins: !no_pins,
                isolation: !no_isolation,
                exe,
            })?;
            let g = &stat.groups[0];
            println!(
                "lab up: {} members active, SMO master {}; hosts bt-ext (198.18.0.1-63) and bt-int (198.19.0.1-63)",
                g.members.len(),
                g.smo.map_or("none".into(), |s| s.to_string())
            );
        }
        LabCommand::Down => {
            let removed = lab::down()?;
            if removed.is_empty() {
                println!("lab down: nothing to remove");
            } else {
                println!("lab down: removed {}", removed.join(", "));
            }
        }
        LabCommand::Fail { part } => {
            let part = lab::Part::from(part);
            let f = lab::fail(part)?;
            println!(
                "lab fail {part}: links down ({}), {} killed",
                ends(&f.links),
                match f.killed {
                    1 => "1 process".to_string(),
                    n => format!("{n} processes"),
                }
            );
        }
        LabCommand::Restore { part } => {
            let part = lab::Part::from(part);
            let (f, took) = lab::restore(part)?;
            println!(
                "lab restore {part}: links up ({}), started, active after {:.1} s",
                ends(&f.links),
                took.as_secs_f64()
            );
        }
    }
    Ok(())
}

fn ends(links: &[lab::LinkEnd]) -> String {
    links
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    match s {
        "general" => Ok(Mode::General),
        "auto-topology" => Ok(Mode::AutoTopology),
        _ => Err(format!("unknown mode {s:?}: use general or auto-topology")),
    }
}
