//! A member's data path and connection table.
//!
//! - throughput: the live-frames generator sends UDP frames of 10,000 flows into a veth
//!   whose peer is a member's data port (`steer` → AF_XDP → the member's forwarder with
//!   connection table and policy → TX back out); what comes back is counted and dropped in
//!   XDP on the generator's side. Beside it, the same port running the minimal forwarder
//!   (swap MACs, send back), rounds alternating.
//! - connection table: inserts and lookups per second on one core, and memory per
//!   connection at 1M connections (the table's own accounting and the process's RSS).

use std::{net::IpAddr, time::Instant};

use anyhow::Context;
use baton_common::net::IPPROTO_UDP;
use baton_dataplane::{
    conntrack::{ConnTable, Packet, Timeouts},
    port::MacSwap,
};
use baton_lab::{
    member_port::{forwarder, round, rss_bytes},
    scratch::Topology,
};

use crate::{
    distributor::Size,
    plot::{self, Line, Series},
    report::{figure, summary, Figure},
};

pub fn throughput(size: Size) -> anyhow::Result<Figure> {
    let _topo = Topology::with_member_port()?;
    let mut ours = Vec::new();
    let mut base = Vec::new();
    let frames = size.frames_per_round / 2;
    for _ in 0..size.rounds {
        ours.push(
            round(forwarder(1 << 20), frames, size.flows, 0)
                .context("member round")?
                .0,
        );
        base.push(
            round(MacSwap, frames, size.flows, 0)
                .context("baseline round")?
                .0,
        );
    }
    Ok(figure(
        "sgm_throughput",
        "mpps",
        &ours,
        &base,
        "ratio ≥ 0.8 of the minimal AF_XDP forwarder",
    ))
}

/// Throughput over 1 to 1M flows, the member against the minimal forwarder at each count
/// (rounds alternating), plotted; the figure is the largest count's.
pub fn throughput_vs_flows(size: Size, quick: bool) -> anyhow::Result<Figure> {
    let counts: &[u32] = if quick {
        &[1, 10_000, 1_000_000]
    } else {
        &[1, 100, 10_000, 100_000, 1_000_000]
    };
    let _topo = Topology::with_member_port()?;
    let frames = size.frames_per_round / 2;
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    for &flows in counts {
        let (mut o, mut b) = (Vec::new(), Vec::new());
        // Five counts: fewer rounds each than the other figures, to keep the run short.
        for _ in 0..size.rounds.min(3) {
            o.push(round(forwarder(1 << 20), frames, flows, 0)?.0);
            b.push(round(MacSwap, frames, flows, 0)?.0);
        }
        eprintln!(
            "  {flows} flows: member {:.2} Mpps | minimal forwarder {:.2} Mpps",
            summary(&o).0,
            summary(&b).0
        );
        ours.push((f64::from(flows), o));
        base.push((f64::from(flows), b));
    }
    let line = |label: &str, v: &[(f64, Vec<f64>)]| Line {
        label: label.into(),
        points: v.iter().map(|(x, s)| (*x, summary(s).0)).collect(),
    };
    plot::save(
        "throughput_vs_flows",
        &Series {
            title: "One member's throughput vs flow count (UDP, 60-byte frames)".into(),
            x_label: "flows (distinct 5-tuples)".into(),
            y_label: "Mpps".into(),
            log_x: true,
            lines: vec![
                line("Baton member (connection table + policy)", &ours),
                line("minimal AF_XDP forwarder (MAC swap)", &base),
            ],
            markers: vec![],
        },
    )?;
    let (o, b) = (&ours[ours.len() - 1].1, &base[base.len() - 1].1);
    Ok(figure(
        "sgm_throughput_1m_flows",
        "mpps",
        o,
        b,
        "reported: 1M flows (each frame a new connection until the table holds them)",
    ))
}

/// Resident memory of this process.
/// Lookups per second (median of rounds), bytes per connection by the table's accounting
/// and by RSS growth, at `n` connections.
pub struct ConntrackFigures {
    pub lookups: Figure,
    pub inserts_per_s: f64,
    pub bytes_per_conn: f64,
    pub rss_bytes_per_conn: f64,
    pub connections: usize,
}

/// `n` UDP packets of distinct connections, by source address and port.
pub fn udp_packets(n: usize) -> Vec<Packet> {
    (0..n as u32)
        .map(|i| Packet {
            src: IpAddr::from([198, 18, (i >> 16) as u8, (i >> 8) as u8]),
            dst: IpAddr::from([198, 19, 0, 1]),
            proto: IPPROTO_UDP,
            sport: i as u16,
            dport: 53,
            flags: 0,
        })
        .collect()
}

pub fn conntrack(quick: bool) -> anyhow::Result<ConntrackFigures> {
    let n: usize = if quick { 100_000 } else { 1_000_000 };
    let rounds = if quick { 3 } else { 7 };
    let packets = udp_packets(n);
    let rss0 = rss_bytes();
    let mut table = ConnTable::new(n, Timeouts::default());
    let t = Instant::now();
    for p in &packets {
        table.track(p, 1, || true);
    }
    let inserts_per_s = n as f64 / t.elapsed().as_secs_f64();
    let rss = rss_bytes().saturating_sub(rss0);
    anyhow::ensure!(table.len() == n, "table holds {} of {n}", table.len());
    // Look up in a scattered order, as traffic would.
    let order: Vec<usize> = (0..n).map(|i| (i * 7_919) % n).collect();
    let mut per_s = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        for &i in &order {
            std::hint::black_box(table.state(&packets[i], 2));
        }
        per_s.push(n as f64 / t.elapsed().as_secs_f64());
    }
    let (median, _, _) = summary(&per_s);
    Ok(ConntrackFigures {
        lookups: figure(
            "conntrack_lookups",
            "per_s",
            &per_s,
            &[median],
            "≥ 10M lookups/s per core",
        ),
        inserts_per_s,
        bytes_per_conn: table.memory_bytes() as f64 / n as f64,
        rss_bytes_per_conn: rss as f64 / n as f64,
        connections: n,
    })
}
