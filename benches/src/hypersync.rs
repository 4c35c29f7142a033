//! HyperSync figures: the failover gap over repeated kills, the cost of sync on the data
//! path (sync on vs off, same run), and how many records per second the sync protocol and
//! the backup store move on one core.

use std::{
    net::IpAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context};
use baton_common::net::IPPROTO_TCP;
use baton_control::{
    api::{Client, SyncStat},
    config::default_api_socket,
    membership::MemberState,
};
use baton_dataplane::{
    conntrack::{flags, ConnTable, Packet, Timeouts},
    sync::{
        proto::{Config, Endpoint, GroupKey},
        store::BackupStore,
    },
};
use baton_lab::{
    topology::{self as lab, LabOptions, NS_EXT, NS_INT},
    traffic::{tcp_sessions, tcp_streams, Pace, Progress, TcpFlow},
    LabGuard,
};

use crate::{
    membership::{release_baton, state},
    plot::{self, Line, Marker, Series},
    report::{figure, Figure},
};

fn options(sync: bool, heartbeat_ms: u64) -> anyhow::Result<LabOptions> {
    let exe = release_baton()?;
    Ok(LabOptions {
        sync,
        table_size: 65_536,
        heartbeat_ms,
        ..LabOptions::new(exe)
    })
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn flows(n: u64, port: u16, bytes: u64) -> Vec<TcpFlow> {
    TcpFlow::lab(n, port, bytes, 7)
}

/// Kills member 2 under `sessions` paced connections, `kills` times (restarting it in
/// between). Returns the data-path gap (kill → first packet of its connections forwarded
/// by a backup, from the members' wall clocks) and the longest application-level stall.
pub fn failover(
    kills: usize,
    sessions: u64,
    heartbeat_ms: u64,
) -> anyhow::Result<(Figure, Figure)> {
    lab::down()?;
    let opts = options(true, heartbeat_ms)?;
    let _guard = LabGuard::new();
    lab::up(&opts)?;
    let client = Client::new(default_api_socket());
    let config =
        baton_control::config::Config::load(&PathBuf::from(lab::STATE_DIR).join("baton.toml"))?;
    let dead_ms = (config.orchestrator.heartbeat_interval_ms
        * u64::from(config.orchestrator.dead_count)) as f64;
    let pace = Pace {
        chunk: 1024,
        gap: Duration::from_millis(10),
    };
    let (mut gaps, mut stalls) = (Vec::new(), Vec::new());
    for round in 0..kills {
        let progress = Arc::new(Progress::default());
        let runner = {
            let (progress, flows) = (
                progress.clone(),
                flows(sessions, 30000 + (round as u16 % 8) * 1000, 1024 * 250),
            );
            std::thread::spawn(move || {
                tcp_sessions(
                    NS_EXT,
                    NS_INT,
                    &flows,
                    pace,
                    Duration::from_secs(5),
                    Duration::from_secs(30),
                    progress,
                )
            })
        };
        let t = Instant::now();
        while progress.bytes.load(Ordering::Relaxed) < sessions * 1024 * 20 {
            if t.elapsed() > Duration::from_secs(20) {
                bail!("sessions did not start");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Each connection has its copy (the heartbeat-reported figures lag ≤ 100 ms).
        let t = Instant::now();
        loop {
            let s: SyncStat = client.get("/v1/sync")?;
            let copies: u64 = s
                .members
                .iter()
                .filter(|m| m.state == MemberState::Active)
                .map(|m| m.sync.backup_connections)
                .sum();
            if copies >= sessions {
                break;
            }
            if t.elapsed() > Duration::from_secs(10) {
                bail!("only {copies} of {sessions} connections synced");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // The first kill's timeline: bytes received, sampled every 10 ms.
        let sampler = (round == 0).then(|| {
            let progress = progress.clone();
            let done = Arc::new(AtomicBool::new(false));
            let d = done.clone();
            let h = std::thread::spawn(move || {
                let mut samples = Vec::new();
                let end = Instant::now() + Duration::from_secs(40);
                while !d.load(Ordering::Relaxed) && Instant::now() < end {
                    samples.push((unix_ns(), progress.bytes.load(Ordering::Relaxed)));
                    std::thread::sleep(Duration::from_millis(10));
                }
                samples
            });
            (done, h)
        });
        if sampler.is_some() {
            std::thread::sleep(Duration::from_millis(300));
        }
        let killed_at = unix_ns();
        lab::kill_member(2)?;
        let results = runner
            .join()
            .map_err(|_| anyhow::anyhow!("sessions panicked"))??;
        let samples = match sampler {
            Some((done, h)) => {
                done.store(true, Ordering::Relaxed);
                h.join().map_err(|_| anyhow::anyhow!("sampler panicked"))?
            }
            None => Vec::new(),
        };
        let lost = results.iter().filter(|r| r.is_err()).count();
        if lost > 0 {
            bail!("round {round}: {lost} connections lost across the kill");
        }
        stalls.push(
            results
                .iter()
                .filter_map(|r| r.as_ref().ok())
                .map(|r| r.longest_stall.as_secs_f64() * 1e3)
                .fold(0.0, f64::max),
        );
        let s: SyncStat = client.get("/v1/sync")?;
        let first = s
            .members
            .iter()
            .filter(|m| m.id != 2)
            .map(|m| m.sync.takeover_burst_ns)
            .filter(|t| *t >= killed_at)
            .min()
            .context("no takeover after the kill")?;
        gaps.push((first - killed_at) as f64 / 1e6);
        if !samples.is_empty() {
            plot::save(
                &format!("failover_timeline_hb{heartbeat_ms}ms"),
                &timeline(&samples, killed_at, gaps[round], dead_ms, heartbeat_ms),
            )?;
        }
        eprintln!(
            "  kill {}: data-path gap {:.1} ms, longest stream stall {:.0} ms",
            round + 1,
            gaps[round],
            stalls[round]
        );
        lab::start_member(&opts, 2)?;
        let t = Instant::now();
        while state(&client.get("/v1/stat")?, 2) != MemberState::Active {
            if t.elapsed() > Duration::from_secs(10) {
                bail!("member 2 did not come back");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Let its bulk sync and the rebalance settle, and takeover bursts end.
        std::thread::sleep(Duration::from_millis(1200));
    }
    Ok((
        figure(
            "failover_gap",
            "ms",
            &gaps,
            &[dead_ms],
            "≤ 100 ms (baseline column: the configured dead interval, which bounds it here)",
        ),
        figure(
            "failover_app_stall",
            "ms",
            &stalls,
            &[dead_ms],
            "reported: includes TCP's retransmission timeout (≥ 200 ms)",
        ),
    ))
}

/// The received rate of all connections around one kill, in 50 ms bins from 0.3 s before
/// it to 2 s after, with the kill, the dead interval and the first takeover marked.
pub fn timeline(
    samples: &[(u64, u64)],
    killed_at: u64,
    gap_ms: f64,
    dead_ms: f64,
    heartbeat_ms: u64,
) -> Series {
    let ms = |t: u64| (t as f64 - killed_at as f64) / 1e6;
    let mut points = Vec::new();
    let mut prev: Option<(f64, u64)> = None;
    for &(t, bytes) in samples {
        let x = ms(t);
        if !(-300.0..=2000.0).contains(&x) {
            continue;
        }
        match prev {
            Some((px, pb)) if x - px >= 50.0 => {
                let mbps = (bytes - pb) as f64 * 8.0 / ((x - px) / 1e3) / 1e6;
                points.push((f64::midpoint(px, x), mbps));
                prev = Some((x, bytes));
            }
            None => prev = Some((x, bytes)),
            _ => {}
        }
    }
    Series {
        title: format!("Failover timeline: member 2 killed (heartbeat {heartbeat_ms} ms × 3)"),
        x_label: "ms from the kill".into(),
        y_label: "Mbit/s received, all connections".into(),
        log_x: false,
        lines: vec![Line {
            label: "received (paced connections, verified)".into(),
            points,
        }],
        markers: vec![
            Marker {
                x: 0.0,
                label: "kill -9".into(),
            },
            Marker {
                x: gap_ms,
                label: format!("first takeover {gap_ms:.0} ms"),
            },
            Marker {
                x: dead_ms,
                label: "dead interval".into(),
            },
        ],
    }
}

/// Throughput (Gbit/s) and new connections per second through a 3-member lab.
fn lab_rates(sync: bool, streams: u64, mb: u64, conns: u64) -> anyhow::Result<(f64, f64)> {
    lab::down()?;
    let _guard = LabGuard::new();
    lab::up(&options(sync, 100)?)?;
    let t = Instant::now();
    let r = tcp_streams(
        NS_EXT,
        NS_INT,
        &flows(streams, 40000, mb << 20),
        Duration::from_secs(120),
        Arc::new(Progress::default()),
    )?;
    let bytes: u64 = r.iter().map(|r| r.bytes).sum();
    let gbps = bytes as f64 * 8.0 / t.elapsed().as_secs_f64() / 1e9;
    // Short connections: connect, 1 KB, close, all at once.
    let t = Instant::now();
    tcp_streams(
        NS_EXT,
        NS_INT,
        &flows(conns, 50000, 1024),
        Duration::from_secs(60),
        Arc::new(Progress::default()),
    )?;
    let cps = conns as f64 / t.elapsed().as_secs_f64();
    Ok((gbps, cps))
}

/// Sync on vs off, alternating, `runs` times each.
pub fn overhead(runs: usize, quick: bool) -> anyhow::Result<(Figure, Figure)> {
    let (streams, mb, conns) = if quick { (4, 16, 100) } else { (8, 64, 300) };
    let (mut on, mut off, mut cps_on, mut cps_off) = (vec![], vec![], vec![], vec![]);
    for _ in 0..runs {
        let (g, c) = lab_rates(true, streams, mb, conns)?;
        on.push(g);
        cps_on.push(c);
        let (g, c) = lab_rates(false, streams, mb, conns)?;
        off.push(g);
        cps_off.push(c);
        eprintln!(
            "  sync on {:.2} Gbit/s {:.0} conn/s | off {:.2} Gbit/s {:.0} conn/s",
            on[on.len() - 1],
            cps_on[cps_on.len() - 1],
            off[off.len() - 1],
            cps_off[cps_off.len() - 1]
        );
    }
    Ok((
        figure(
            "sync_overhead_throughput",
            "Gbit/s",
            &on,
            &off,
            "sync on / off ≥ 0.95",
        ),
        figure(
            "sync_overhead_connections",
            "conn/s",
            &cps_on,
            &cps_off,
            "sync on / off ≥ 0.95",
        ),
    ))
}

/// Records per second from one endpoint's push to the other's backup store, over a
/// lossless in-memory link, on one core; the baseline is encoding the same records and
/// copying them into a vector (the least any sync must do).
pub fn records(n: usize) -> anyhow::Result<Figure> {
    let mut table = ConnTable::new(n, Timeouts::default());
    table.enable_journal();
    for i in 0..n as u32 {
        let p = Packet {
            src: IpAddr::from((0xc612_0000u32 | (i & 0xffff)).to_be_bytes()),
            dst: IpAddr::from([198, 19, 0, 1]),
            proto: IPPROTO_TCP,
            sport: (i >> 16) as u16 + 1024,
            dport: 80,
            flags: flags::SYN,
        };
        table.track(&p, 0, || true);
    }
    let records: Vec<[u8; 48]> = table
        .journal()
        .context("journal")?
        .drain(..)
        .map(|c| c.conn.encode(c.op, 0))
        .collect();
    let mut ours = Vec::new();
    let mut base = Vec::new();
    for _ in 0..3 {
        let key = GroupKey([7; 32]);
        let cfg = |me| Config {
            me,
            epoch: 1,
            ..Default::default()
        };
        let (mut a, mut b) = (Endpoint::new(cfg(1), &key), Endpoint::new(cfg(2), &key));
        a.set_peers(&[2]);
        b.set_peers(&[1]);
        let mut store = BackupStore::new(n);
        let (mut wire_ab, mut wire_ba) = (Vec::new(), Vec::new());
        let t = Instant::now();
        let mut now = Instant::now();
        let mut next = 0;
        while store.len() < n {
            while next < records.len() && a.room(2) > 0 {
                a.push(2, &records[next], now);
                next += 1;
            }
            a.poll(now, &mut wire_ab);
            for (_, f) in wire_ab.drain(..) {
                for (from, r) in b.receive(&f, now) {
                    store.apply(from, &r, now);
                }
            }
            b.poll(now, &mut wire_ba);
            for (_, f) in wire_ba.drain(..) {
                a.receive(&f, now);
            }
            now += Duration::from_micros(100);
            if t.elapsed() > Duration::from_secs(60) {
                bail!("records benchmark did not finish");
            }
        }
        ours.push(n as f64 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        let mut copy = Vec::with_capacity(n);
        for c in table.snapshot() {
            copy.push(c.encode(baton_dataplane::conntrack::RecordOp::Upsert, 0));
        }
        std::hint::black_box(&copy);
        base.push(n as f64 / t.elapsed().as_secs_f64());
    }
    Ok(figure(
        "sync_records",
        "records/s",
        &ours,
        &base,
        "reported: one core sends, authenticates, receives and installs this many records per second",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timeline_shows_the_dip_and_the_markers() {
        // 1 MB/s steady, nothing from 0 to 400 ms after the kill, then the backlog.
        let kill = 10_000_000_000u64;
        let mut bytes = 0u64;
        let mut samples = Vec::new();
        for i in -50i64..200 {
            let t = (kill as i64 + i * 10_000_000) as u64;
            if !(0..40).contains(&i) {
                bytes += 10_000;
            }
            if i == 40 {
                bytes += 400_000;
            }
            samples.push((t, bytes));
        }
        let s = timeline(&samples, kill, 400.0, 300.0, 100);
        let points = &s.lines[0].points;
        assert!(points.first().unwrap().0 >= -300.0);
        assert!(points.last().unwrap().0 <= 2000.0);
        let at = |x: f64| {
            points
                .iter()
                .min_by(|a, b| (a.0 - x).abs().total_cmp(&(b.0 - x).abs()))
                .unwrap()
                .1
        };
        assert!((at(-200.0) - 8.0).abs() < 0.5, "{points:?}");
        assert!(at(200.0) < 0.1, "{points:?}");
        assert!(at(375.0) > 20.0, "{points:?}");
        let labels: Vec<&str> = s.markers.iter().map(|m| m.label.as_str()).collect();
        assert_eq!(labels[0], "kill -9");
        assert_eq!(s.markers[1].x, 400.0);
        assert_eq!(s.markers[2].x, 300.0);
    }
}
