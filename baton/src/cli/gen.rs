//! `baton gen`: the in-kernel packet generator (`BPF_PROG_TEST_RUN` in live-frames mode)
//! from a lab host: UDP frames over up to a million flows, IPv4 and IPv6, at a size, a
//! count and optionally a rate; it reports what it sent. The frames leave by the host's
//! interface towards the group's uplink, as a host's would.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use baton_control::ccp::parse_mac;
use baton_lab::{
    generator::{frame_v4, frame_v6, Generator, GEN_HOST, SOURCE_ADDRESS, SOURCE_ADDRESS_V6},
    topology::NS_EXT,
    traffic::enter_netns,
};
use clap::Args;

#[derive(Args)]
pub struct GenArgs {
    /// Namespace to send from (a lab host).
    #[arg(long, default_value = NS_EXT)]
    ns: String,
    /// Interface the frames leave by (its peer must run XDP, as the group's uplink does).
    #[arg(long, default_value = "ext0")]
    iface: String,
    /// Destination MAC: the group's virtual MAC on that side.
    #[arg(long, default_value = "02:ba:70:00:01:00")]
    dst_mac: String,
    /// Distinct flows (source address low 16 bits, then source port): 1..=1,000,000.
    #[arg(long, default_value_t = 10_000)]
    flows: u32,
    /// Frame size without FCS (IPv4 at least 60, IPv6 at least 62).
    #[arg(long, default_value_t = 60)]
    size: usize,
    /// Frames to send (bounded: at most 1,000,000,000).
    #[arg(long, default_value_t = 1_000_000)]
    count: u64,
    /// Frames per second (default: as fast as the kernel sends).
    #[arg(long)]
    rate: Option<u64>,
    /// Share of IPv6 frames, in percent.
    #[arg(long, default_value_t = 0)]
    v6_share: u8,
    /// Print one JSON document.
    #[arg(long)]
    json: bool,
}

#[derive(serde::Serialize)]
struct Report {
    sent: u64,
    sent_v4: u64,
    sent_v6: u64,
    flows: u32,
    size: usize,
    seconds: f64,
    mpps: f64,
    gbps: f64,
}

pub fn run(args: &GenArgs) -> anyhow::Result<()> {
    if !(1..=1_000_000).contains(&args.flows) {
        bail!("--flows must be 1..=1000000, not {}", args.flows);
    }
    if !(1..=1_000_000_000).contains(&args.count) {
        bail!(
            "--count must be 1..=1000000000 (every load is bounded), not {}",
            args.count
        );
    }
    let min = if args.v6_share > 0 { 62 } else { 60 };
    if !(min..=1514).contains(&args.size) {
        bail!("--size must be {min}..=1514 bytes, not {}", args.size);
    }
    if args.v6_share > 100 {
        bail!("--v6-share is a percentage: 0..=100");
    }
    if args.rate == Some(0) {
        bail!("--rate must be above 0 frames per second");
    }
    let dst =
        parse_mac(&args.dst_mac).with_context(|| format!("bad --dst-mac {:?}", args.dst_mac))?;
    enter_netns(&args.ns)?;
    // The kernel sends at most this many per call; a rate is kept by pacing chunks.
    let chunk: u64 = match args.rate {
        // Each call costs milliseconds (the kernel re-patches its XDP dispatcher): pace
        // in tenths of a second.
        Some(r) => (r / 10).clamp(1, 1 << 20),
        None => 1 << 20,
    };
    // Each template's share of the count, sent in interleaved chunks.
    let v6_total = args.count * u64::from(args.v6_share) / 100;
    let templates = [
        (
            frame_v4(GEN_HOST, Ipv4Addr::new(198, 18, 0, 0), dst, args.size),
            SOURCE_ADDRESS,
            args.count - v6_total,
        ),
        // (Built at its minimum size when no IPv6 is asked for: never sent then.)
        (
            frame_v6(dst, args.size.max(62)),
            SOURCE_ADDRESS_V6,
            v6_total,
        ),
    ];
    let mut gen = Generator::new(
        &args.iface,
        args.flows,
        templates[0].1,
        templates[0].0.clone(),
    )?;
    let mut sent = [0u64; 2];
    let start = Instant::now();
    let mut done = 0u64;
    while done < args.count {
        for (i, (frame, offsets, total)) in templates.iter().enumerate() {
            let share = (chunk * total).div_ceil(args.count).max(1);
            let n = share.min(total - sent[i]);
            if n == 0 {
                continue;
            }
            gen.set_frame(frame, *offsets)?;
            gen.send(n as u32)?;
            sent[i] += n;
            done += n;
        }
        if let Some(r) = args.rate {
            let due = start + Duration::from_secs_f64(done as f64 / r as f64);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let bytes = done * args.size as u64;
    let r = Report {
        sent: done,
        sent_v4: sent[0],
        sent_v6: sent[1],
        flows: args.flows,
        size: args.size,
        seconds: secs,
        mpps: done as f64 / secs / 1e6,
        gbps: bytes as f64 * 8.0 / secs / 1e9,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "sent {} frames ({} IPv4, {} IPv6) of {} bytes over {} flows in {:.3} s: {:.2} Mpps, {:.2} Gbit/s",
            r.sent, r.sent_v4, r.sent_v6, r.size, r.flows, r.seconds, r.mpps, r.gbps
        );
    }
    Ok(())
}
