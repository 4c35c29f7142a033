//! `baton sync stat`.

use baton_control::api::{Client, SyncStat};
use clap::Subcommand;

#[derive(Subcommand)]
pub enum SyncCommand {
    /// Records sent, received, acknowledged, retransmitted and lost per member and peer.
    Stat {
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(client: &Client, command: &SyncCommand) -> anyhow::Result<()> {
    let &SyncCommand::Stat { json } = command;
    let stat: SyncStat = client.get("/v1/sync")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&stat)?);
        return Ok(());
    }
    println!(
        "{:>6} {:>4} {:>10} {:>10} {:>10} {:>8} {:>6} {:>7} {:>7} {:>8}",
        "member",
        "peer",
        "sent",
        "received",
        "acked",
        "retrans",
        "lost",
        "resyncs",
        "queue",
        "lag_ms"
    );
    for m in &stat.members {
        if m.sync.peers.is_empty() {
            println!(
                "{:>6} {:>4}  ({})",
                m.id,
                "-",
                format!("{:?}", m.state).to_lowercase()
            );
        }
        for p in &m.sync.peers {
            println!(
                "{:>6} {:>4} {:>10} {:>10} {:>10} {:>8} {:>6} {:>7} {:>7} {:>8.1}",
                m.id,
                p.id,
                p.link.sent,
                p.link.received,
                p.link.acked,
                p.link.retransmitted,
                p.link.lost,
                p.link.resyncs,
                p.link.queue,
                p.link.lag_ms
            );
        }
    }
    println!();
    println!(
        "{:>6} {:>8} {:>6} {:>9} {:>6} {:>8} {:>9} {:>8} {:>11}",
        "member",
        "copies",
        "held",
        "hold_tmo",
        "taken",
        "auth_err",
        "replayed",
        "unknown",
        "chan_full"
    );
    for m in &stat.members {
        println!(
            "{:>6} {:>8} {:>6} {:>9} {:>6} {:>8} {:>9} {:>8} {:>11}",
            m.id,
            m.sync.backup_connections,
            m.sync.held,
            m.sync.hold_timeouts,
            m.sync.taken_over,
            m.sync.auth_failed,
            m.sync.replayed,
            m.sync.unknown_peer + m.sync.malformed,
            m.sync.channel_full
        );
    }
    Ok(())
}
