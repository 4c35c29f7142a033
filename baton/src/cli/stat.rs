//! `baton stat`.

use baton_control::api::{Client, Stat};
use clap::Args;

#[derive(Args)]
pub struct StatArgs {
    /// Print one JSON document.
    #[arg(long)]
    json: bool,
    /// Show one aspect: `tasks` (who runs which SMO-only and distributed task).
    #[arg(short = 'i', long = "info", value_parser = ["tasks"])]
    info: Option<String>,
}

pub fn run(client: &Client, args: &StatArgs) -> anyhow::Result<()> {
    if args.info.as_deref() == Some("tasks") {
        return tasks(client, args.json);
    }
    let stat: Stat = client.get("/v1/stat")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&stat)?);
        return Ok(());
    }
    for g in &stat.groups {
        println!(
            "group {}  smo {}  buckets {}",
            g.id,
            g.smo.map_or("-".into(), |s| s.to_string()),
            g.buckets
        );
        println!(
            "  {:>3} {:<9} {:>3} {:>12} {:>12} {:>10} {:>8} {:>8} {:>7}",
            "id",
            "state",
            "smo",
            "rx_packets",
            "tx_packets",
            "drops",
            "b_active",
            "b_backup",
            "policy"
        );
        for m in &g.members {
            println!(
                "  {:>3} {:<9} {:>3} {:>12} {:>12} {:>10} {:>8} {:>8} {:>7}",
                m.id,
                m.state.word(),
                if m.smo { "*" } else { "" },
                m.rx_packets,
                m.tx_packets,
                m.drops,
                m.buckets_active,
                m.buckets_backup,
                m.policy_version
            );
            if let Some(why) = &m.isolated {
                println!("      isolated: {why}");
            }
            if let Some(why) = &m.join_blocked {
                println!("      join blocked: {why}");
            }
        }
    }
    for u in &stat.uplinks {
        println!(
            "uplink {} ({}, group {}, {} mode{}): rx {} packets {} bytes, tx {} packets {} bytes",
            u.iface,
            u.role,
            u.group,
            u.mode,
            if u.l4 { " with L4 ports" } else { "" },
            u.rx_packets,
            u.rx_bytes,
            u.tx_packets,
            u.tx_bytes
        );
    }
    let nonzero: Vec<String> = stat
        .events
        .iter()
        .filter(|(_, v)| **v > 0)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if !nonzero.is_empty() {
        println!("xdp events: {}", nonzero.join(" "));
    }
    Ok(())
}

/// `baton stat -i tasks`.
fn tasks(client: &Client, json: bool) -> anyhow::Result<()> {
    let t: baton_control::tasks::TaskStat = client.get("/v1/tasks")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&t)?);
        return Ok(());
    }
    for g in &t.groups {
        println!(
            "group {}  smo {}",
            g.id,
            g.smo.map_or("-".into(), |s| s.to_string())
        );
        println!(
            "  {:>3} {:<9} tasks (reported by the member; * where it differs from the election)",
            "id", "state"
        );
        for m in &g.members {
            let mark = if m.running == m.assigned { "" } else { " *" };
            println!(
                "  {:>3} {:<9} {}{mark}",
                m.id,
                m.state.word(),
                if m.running.is_empty() {
                    "-".to_string()
                } else {
                    m.running.join(", ")
                }
            );
        }
    }
    Ok(())
}
