//! `baton gen`: the in-kernel packet generator (`BPF_PROG_TEST_RUN` in live-frames mode)
//! from a lab host: UDP frames over up to a million flows, IPv4 and IPv6, at a size, a
//! count and optionally a rate; it reports what it sent. The frames leave by the host's
//! interface towards the group's uplink, as a host's would.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use baton_common::{bench, GenConf};
use baton_control::{ccp::parse_mac, lab::NS_EXT, traffic::enter_netns};
use baton_dataplane::loader::{ifindex, Orchestrator};
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

const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x18, 0x01];

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A UDP frame 198.18.0.0 → 198.19.0.1, 1024 → 53, `size` bytes.
fn frame_v4(dst: [u8; 6], size: usize) -> Vec<u8> {
    let mut f = vec![0u8; size];
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&HOST_MAC);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip_len = (size - 14) as u16;
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&Ipv4Addr::new(198, 18, 0, 0).octets());
    ip[16..20].copy_from_slice(&Ipv4Addr::new(198, 19, 0, 1).octets());
    let c = checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let udp = &mut f[34..42];
    udp[0..2].copy_from_slice(&1024u16.to_be_bytes());
    udp[2..4].copy_from_slice(&53u16.to_be_bytes());
    udp[4..6].copy_from_slice(&(ip_len - 20).to_be_bytes());
    // Checksum 0: none (IPv4 allows it; the generator rewrites the source anyway).
    f
}

/// A UDP frame 2001:db8:18::0 → 2001:db8:19::1, 1024 → 53, `size` bytes.
fn frame_v6(dst: [u8; 6], size: usize) -> Vec<u8> {
    let mut f = vec![0u8; size];
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&HOST_MAC);
    f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
    let payload = (size - 54) as u16;
    let ip = &mut f[14..54];
    ip[0] = 0x60;
    ip[4..6].copy_from_slice(&payload.to_be_bytes());
    ip[6] = 17;
    ip[7] = 64;
    ip[8..24].copy_from_slice(&Ipv6Addr::new(0x2001, 0xdb8, 0x18, 0, 0, 0, 0, 0).octets());
    ip[24..40].copy_from_slice(&Ipv6Addr::new(0x2001, 0xdb8, 0x19, 0, 0, 0, 0, 1).octets());
    let udp = &mut f[54..62];
    udp[0..2].copy_from_slice(&1024u16.to_be_bytes());
    udp[2..4].copy_from_slice(&53u16.to_be_bytes());
    udp[4..6].copy_from_slice(&payload.to_be_bytes());
    f
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

pub fn run(args: GenArgs) -> anyhow::Result<()> {
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
    let lo = ifindex("lo")?;
    let out = ifindex(&args.iface)?;
    let mut gen = Orchestrator::load(true)?;
    gen.set_devmap(bench::GEN_PORTS, 0, out)?;
    // The kernel sends at most this many per call; a rate is kept by pacing chunks.
    let chunk: u64 = match args.rate {
        // Each call costs milliseconds (the kernel re-patches its XDP dispatcher): pace
        // in tenths of a second.
        Some(r) => (r / 10).clamp(1, 1 << 20),
        None => 1 << 20,
    };
    // Each template's share of the count, sent in interleaved chunks.
    let v6_total = args.count * args.v6_share as u64 / 100;
    let templates = [
        (
            frame_v4(dst, args.size),
            14 + 14,
            14 + 20,
            args.count - v6_total,
        ),
        // (Built at its minimum size when no IPv6 is asked for: never sent then.)
        (frame_v6(dst, args.size.max(62)), 14 + 22, 14 + 40, v6_total),
    ];
    let mut sent = [0u64; 2];
    let start = Instant::now();
    let mut done = 0u64;
    while done < args.count {
        for (i, (frame, addr_off, port_off, total)) in templates.iter().enumerate() {
            let share = (chunk * total).div_ceil(args.count).max(1);
            let n = share.min(total - sent[i]);
            if n == 0 {
                continue;
            }
            gen.set_generator(GenConf {
                flows: args.flows,
                addr_off: *addr_off,
                port_off: *port_off,
                _pad: 0,
            })?;
            gen.live_frames(bench::GENERATE, frame, lo, n as u32, 256)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_well_formed() {
        let f = frame_v4([2, 0, 0, 0, 0, 1], 60);
        assert_eq!(f.len(), 60);
        assert_eq!(checksum(&f[14..34]), 0, "IPv4 header checksum verifies");
        assert_eq!(u16::from_be_bytes([f[16], f[17]]), 46);
        let f = frame_v6([2, 0, 0, 0, 0, 1], 100);
        assert_eq!(
            u16::from_be_bytes([f[18], f[19]]),
            46,
            "IPv6 payload length"
        );
        assert_eq!(&f[54..56], &1024u16.to_be_bytes());
    }
}
