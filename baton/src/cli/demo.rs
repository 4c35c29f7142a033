//! `baton demo`: a 3-member lab, real TCP traffic through it with a live status line per
//! second, one member killed (`kill -9`) mid-run while HyperSync carries its connections
//! on at their backups, what passed through which member, and the lab torn down whatever
//! happens.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use baton_control::api::{Client, Stat, SyncStat};
use baton_lab::{
    topology::{self as lab, LabOptions, NS_EXT, NS_INT},
    traffic::{self, Progress, TcpFlow},
    LabGuard,
};
use clap::Args;

#[derive(Args)]
pub struct DemoArgs {
    #[arg(long, default_value_t = 3)]
    sgms: u32,
    /// Concurrent TCP streams from bt-ext to bt-int.
    #[arg(long, default_value_t = 16)]
    flows: u32,
    /// Megabytes per stream (the default keeps a release build busy for about ten seconds).
    #[arg(long, default_value_t = 160)]
    mb: u64,
    /// Member to kill (every process, SIGKILL) once a third of the bytes have passed; 0
    /// kills none.
    #[arg(long, default_value_t = 2)]
    kill: u32,
}

pub fn run(client: &Client, args: &DemoArgs) -> anyhow::Result<()> {
    // Whatever an earlier run left.
    lab::down()?;
    let exe = std::env::current_exe()?;
    println!("bringing up a {}-member lab ...", args.sgms);
    let _guard = LabGuard::new().reporting();
    let stat = lab::up(&LabOptions {
        sgms: args.sgms,
        ..LabOptions::new(exe)
    })?;
    println!(
        "lab up: members {:?} active, SMO master {:?}",
        ids(&stat),
        stat.groups[0].smo
    );
    let before = per_member(&stat);

    let flows = TcpFlow::lab(u64::from(args.flows), 5000, args.mb << 20, 7);
    let total = u64::from(args.flows) * (args.mb << 20);
    println!(
        "sending {} TCP streams of {} MB from bt-ext to bt-int, every byte checked ...",
        args.flows, args.mb
    );
    let progress = Arc::new(Progress::default());
    let worker = {
        let (flows, progress) = (flows.clone(), progress.clone());
        std::thread::spawn(move || {
            traffic::tcp_streams(NS_EXT, NS_INT, &flows, Duration::from_secs(120), progress)
        })
    };
    let start = Instant::now();
    let mut last_bytes = 0u64;
    let mut last = start;
    let mut killed = None;
    while !worker.is_finished() {
        std::thread::sleep(Duration::from_millis(50));
        let done = progress.bytes.load(std::sync::atomic::Ordering::Relaxed);
        if args.kill > 0 && killed.is_none() && done * 3 >= total {
            let pids = lab::kill_member(args.kill)?;
            killed = Some(start.elapsed());
            println!(
                "t={:>4.1}s KILLED member {} (kill -9 of {pids} processes): its connections carry on at their backups",
                start.elapsed().as_secs_f64(),
                args.kill
            );
        }
        if last.elapsed() < Duration::from_secs(1) && !worker.is_finished() {
            continue;
        }
        let now = Instant::now();
        let bytes = progress.bytes.load(std::sync::atomic::Ordering::Relaxed);
        let gbps = (bytes - last_bytes) as f64 * 8.0 / now.duration_since(last).as_secs_f64() / 1e9;
        let stat: Stat = client.get("/v1/stat")?;
        let line: Vec<String> = stat.groups[0]
            .members
            .iter()
            .map(|m| {
                format!(
                    "m{} {} rx={}",
                    m.id,
                    format!("{:?}", m.state).to_lowercase(),
                    m.rx_packets
                )
            })
            .collect();
        println!(
            "t={:>4.1}s {:>6.2} Gbit/s {:>5.1}% | {}",
            now.duration_since(start).as_secs_f64(),
            gbps,
            100.0 * bytes as f64 / total as f64,
            line.join(" | ")
        );
        last_bytes = bytes;
        last = now;
    }
    let reports = worker
        .join()
        .map_err(|_| anyhow::anyhow!("traffic thread panicked"))??;
    let elapsed = start.elapsed();
    let stat: Stat = client.get("/v1/stat")?;
    let after = per_member(&stat);
    let moved: u64 = reports.iter().map(|r| r.bytes).sum();
    println!(
        "done: {} streams, {} MB verified intact in {:.2} s ({:.2} Gbit/s)",
        reports.len(),
        moved >> 20,
        elapsed.as_secs_f64(),
        moved as f64 * 8.0 / elapsed.as_secs_f64() / 1e9
    );
    println!("per member (packets during the run):");
    let all: u64 = after
        .iter()
        .map(|(id, (rx, _))| rx - before.get(id).map_or(0, |b| b.0))
        .sum();
    for (id, (rx, tx)) in &after {
        let (rx0, tx0) = before.get(id).copied().unwrap_or_default();
        println!(
            "  member {id}: rx {:>9} tx {:>9} ({:>5.1}% of the packets)",
            rx - rx0,
            tx - tx0,
            100.0 * (rx - rx0) as f64 / all.max(1) as f64
        );
    }
    if let Some(at) = killed {
        let sync: SyncStat = client.get("/v1/sync")?;
        let taken: u64 = sync.members.iter().map(|m| m.sync.taken_over).sum();
        let held: u64 = sync.members.iter().map(|m| m.sync.held).sum();
        let longest = reports
            .iter()
            .map(|r| r.longest_stall)
            .max()
            .unwrap_or_default();
        println!(
            "member {} was killed at t={:.1}s: all {} streams completed with every byte intact, none reset; \
             {taken} connections were taken over by their backups; longest stall of a stream {:.0} ms \
             (dead detection + TCP retransmission); {held} first replies waited for the backup's ack",
            args.kill,
            at.as_secs_f64(),
            reports.len(),
            longest.as_secs_f64() * 1e3
        );
    }
    Ok(())
}

fn ids(stat: &Stat) -> Vec<u32> {
    stat.groups[0].members.iter().map(|m| m.id).collect()
}

fn per_member(stat: &Stat) -> BTreeMap<u32, (u64, u64)> {
    stat.groups[0]
        .members
        .iter()
        .map(|m| (m.id, (m.rx_packets, m.tx_packets)))
        .collect()
}
