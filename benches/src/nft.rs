//! The Linux router baseline: forwarding with nftables stateful filtering (`ct state
//! established,related accept`, new connections accepted as the lab's policy does) in a
//! namespace, against a Baton member's stateful forwarding, both as one hop that sends the
//! frames back where they came from, with the same generator, frames and sink, rounds
//! alternating.

use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use baton_common::{bench, GenConf};
use baton_dataplane::loader::{ifindex, Orchestrator};
use etherparse::PacketBuilder;

use crate::{
    distributor::{enter, Size, Topology, NS},
    report::{figure, Figure},
    sgm,
};

/// The router's namespace (a `bt-*` one: `baton lab down` removes it too).
const NS_NFT: &str = "bt-bench-nft";

const RULES: &str = "table inet baton_baseline {
  chain forward {
    type filter hook forward priority 0; policy drop;
    ct state established,related accept
    ct state invalid drop
    ct state new accept
  }
}
";

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.stdin(Stdio::null()).output()?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn in_nft(args: &[&str]) -> anyhow::Result<String> {
    run(Command::new("ip")
        .args(["netns", "exec", NS_NFT])
        .args(args))
}

/// The router namespace, removed on drop.
struct Router;

impl Router {
    /// Moves `r0` (peer of `gen1` in the benchmark namespace) into a router namespace
    /// that forwards 198.19.0.0/24 back out of it, through nftables connection tracking.
    fn new() -> anyhow::Result<(Self, [u8; 6])> {
        let _ = Command::new("ip")
            .args(["netns", "del", NS_NFT])
            .stderr(Stdio::null())
            .status();
        run(Command::new("ip").args(["netns", "add", NS_NFT]))?;
        let r = Router;
        run(Command::new("ip").args(["-n", NS, "link", "set", "r0", "netns", NS_NFT]))?;
        for args in [
            &["ip", "link", "set", "lo", "up"][..],
            &["ip", "link", "set", "r0", "up"],
            &["ip", "addr", "add", "198.51.100.1/32", "dev", "r0"],
            &["ip", "route", "add", "198.19.0.0/24", "dev", "r0"],
            &["ip", "route", "add", "198.18.0.0/16", "dev", "r0"],
            &[
                "ip",
                "neigh",
                "add",
                "198.19.0.1",
                "lladdr",
                "02:00:00:00:00:22",
                "dev",
                "r0",
            ],
            &["sysctl", "-qw", "net.ipv4.ip_forward=1"],
            &["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"],
            &["sysctl", "-qw", "net.ipv4.conf.r0.rp_filter=0"],
            &["sysctl", "-qw", "net.ipv4.conf.all.send_redirects=0"],
            &["sysctl", "-qw", "net.ipv4.conf.r0.send_redirects=0"],
        ] {
            in_nft(args)?;
        }
        let rules = std::env::temp_dir().join("baton-nft-baseline.nft");
        std::fs::write(&rules, RULES)?;
        in_nft(&["nft", "-f", rules.to_str().context("path")?])
            .context("loading the nftables rules (is the nftables package installed?)")?;
        let mac = in_nft(&["cat", "/sys/class/net/r0/address"])?;
        let mac = baton_control::ccp::parse_mac(&mac).context("r0's MAC")?;
        Ok((r, mac))
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", NS_NFT])
            .stderr(Stdio::null())
            .status();
    }
}

/// Mpps the router sends back for `frames` frames over `flows` flows.
fn router_round(mac: [u8; 6], frames: u32, flows: u32) -> anyhow::Result<f64> {
    enter(NS)?;
    let mut sink = Orchestrator::load(true)?;
    sink.attach_program(bench::SINK, "gen1")?;
    // The live-frames generator's bursts reach the router's stack through a CPU map (a
    // plain veth port takes one batch of them and drops the rest).
    let stack = std::thread::spawn(move || -> anyhow::Result<Orchestrator> {
        enter(NS_NFT)?;
        let mut o = Orchestrator::load(true)?;
        o.set_stack_cpu(4096)?;
        o.attach_program(bench::TO_STACK, "r0")?;
        Ok(o)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("attach thread"))??;
    let mut gen = Orchestrator::load(true)?;
    gen.set_devmap(bench::GEN_PORTS, 0, ifindex("gen1")?)?;
    let (addr_off, port_off) = sgm::SOURCE_PORT;
    gen.set_generator(GenConf {
        flows,
        addr_off,
        port_off,
        _pad: 0,
    })?;
    let frame = {
        let mut v = Vec::new();
        PacketBuilder::ethernet2([0x02, 0, 0, 0, 0, 0x11], mac)
            .ipv4([198, 18, 0, 1], [198, 19, 0, 1], 64)
            .udp(1024, 53)
            .write(&mut v, &[0; 18])?;
        // No UDP checksum (IPv4 allows it): the generator rewrites the source port without
        // fixing it, and conntrack would call such a frame invalid.
        v[40..42].copy_from_slice(&[0, 0]);
        v
    };
    let (before, _) = sink.sink_stats()?;
    let elapsed = gen.live_frames(bench::GENERATE, &frame, ifindex("lo")?, frames, 256)?;
    std::thread::sleep(std::time::Duration::from_millis(50));
    let (after, _) = sink.sink_stats()?;
    drop(stack);
    Ok((after - before) as f64 / elapsed.as_secs_f64() / 1e6)
}

/// Baton's member vs the nftables router, stateful forwarding of UDP over `size.flows`
/// flows; rounds alternate.
pub fn versus(size: Size) -> anyhow::Result<Figure> {
    let _topo = Topology::with_pairs(&[("gen0", "m0"), ("gen1", "r0")])?;
    let (_router, mac) = Router::new()?;
    let frames = size.frames_per_round / 2;
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    for _ in 0..size.rounds {
        ours.push(
            sgm::round_with(
                sgm::forwarder(1 << 20),
                frames,
                size.flows,
                0,
                sgm::SOURCE_PORT,
            )?
            .0,
        );
        base.push(router_round(mac, frames, size.flows)?);
        eprintln!(
            "  baton member {:.2} Mpps | nftables router {:.2} Mpps",
            ours[ours.len() - 1],
            base[base.len() - 1]
        );
    }
    Ok(figure(
        "stateful_vs_nftables",
        "mpps",
        &ours,
        &base,
        "Baton's stateful throughput ≥ 2× the nftables router's",
    ))
}
