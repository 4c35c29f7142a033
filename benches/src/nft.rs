//! The Linux router baseline: forwarding with nftables stateful filtering (`ct state
//! established,related accept`, new connections accepted as the lab's policy does) in a
//! namespace, against a Baton member's stateful forwarding, both as one hop that sends the
//! frames back where they came from, with the same generator, frames and sink, rounds
//! alternating; and the new-connection rate of a whole lab against such a router standing
//! in for the group between the same hosts, with the same connection generator.

use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use baton_common::testbed::bench;
use baton_lab::{
    generator::{udp_frame, Generator, SOURCE_PORT},
    member_port::{forwarder, round_with, unpin},
    scratch::{enter, remove_netns, Topology, NS},
    testbed::Testbed,
    LabGuard,
};

use crate::{
    distributor::Size,
    membership::release_baton,
    report::{figure, Figure},
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
        remove_netns(NS_NFT);
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
        remove_netns(NS_NFT);
    }
}

/// Mpps the router sends back for `frames` frames over `flows` flows.
fn router_round(mac: [u8; 6], frames: u32, flows: u32) -> anyhow::Result<f64> {
    enter(NS)?;
    let mut sink = Testbed::load()?;
    sink.attach(bench::SINK, "gen1")?;
    // The live-frames generator's bursts reach the router's stack through a CPU map (a
    // plain veth port takes one batch of them and drops the rest).
    let stack = std::thread::spawn(move || -> anyhow::Result<Testbed> {
        enter(NS_NFT)?;
        let mut bed = Testbed::load()?;
        bed.set_stack_cpu(4096)?;
        bed.attach(bench::TO_STACK, "r0")?;
        Ok(bed)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("attach thread"))??;
    let mut frame = udp_frame(mac);
    // No UDP checksum (IPv4 allows it): the generator rewrites the source port without
    // fixing it, and conntrack would call such a frame invalid.
    frame[40..42].copy_from_slice(&[0, 0]);
    let mut gen = Generator::new("gen1", flows, SOURCE_PORT, frame)?;
    // The generator on core 0, as in the member's rounds.
    let _ = core_affinity::set_for_current(core_affinity::CoreId { id: 0 });
    let (before, _) = sink.sink_stats()?;
    let elapsed = gen.send(frames)?;
    unpin();
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
        ours.push(round_with(forwarder(1 << 20), frames, size.flows, 0, SOURCE_PORT)?.0);
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

/// The router that stands in for the group: hosts with the lab hosts' addresses on either
/// side of it (`bt-*` namespaces, so `baton lab down` removes them too).
const NR_EXT: &str = "bt-nr-ext";
const NR_RT: &str = "bt-nr-rt";
const NR_INT: &str = "bt-nr-int";

fn in_ns(ns: &str, args: &[&str]) -> anyhow::Result<String> {
    run(Command::new("ip").args(["netns", "exec", ns]).args(args))
}

/// `bt-nr-ext` (ext0) — `bt-nr-rt` (up-ext, up-int) — `bt-nr-int` (int0), the hosts
/// addressed and routed as the lab's, the router forwarding through [`RULES`]. Removed on
/// drop.
struct NftRouter;

impl NftRouter {
    fn remove() {
        for ns in [NR_EXT, NR_RT, NR_INT] {
            remove_netns(ns);
        }
    }

    fn new() -> anyhow::Result<Self> {
        Self::remove();
        // From here on, a failure removes whatever was made.
        let r = NftRouter;
        for ns in [NR_EXT, NR_RT, NR_INT] {
            run(Command::new("ip").args(["netns", "add", ns]))?;
            run(Command::new("ip").args(["-n", ns, "link", "set", "lo", "up"]))?;
        }
        for (host_ns, host_if, up_if, side) in [
            (NR_EXT, "ext0", "up-ext", 18u8),
            (NR_INT, "int0", "up-int", 19u8),
        ] {
            run(Command::new("ip").args([
                "link", "add", host_if, "netns", host_ns, "type", "veth", "peer", "name", up_if,
                "netns", NR_RT,
            ]))?;
            run(Command::new("ip").args(["-n", NR_RT, "link", "set", up_if, "up"]))?;
            in_ns(
                host_ns,
                &["sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0"],
            )?;
            // The lab's hosts have TX checksum offload off (XDP redirect needs complete
            // checksums); these do the same, so both sides' hosts cost the same.
            in_ns(
                host_ns,
                &["ethtool", "-K", host_if, "tx", "off", "gro", "on"],
            )?;
            baton_lab::topology::host_addresses(host_ns, host_if, side)?;
            for args in [
                &[
                    "address",
                    "add",
                    &format!("198.{side}.0.254/24"),
                    "dev",
                    up_if,
                ][..],
                &[
                    "address",
                    "add",
                    &format!("2001:db8:{side}::fe/64"),
                    "dev",
                    up_if,
                    "nodad",
                ],
            ] {
                run(Command::new("ip").args(["-n", NR_RT]).args(args))?;
            }
        }
        for key in [
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
            "net.ipv4.conf.all.send_redirects=0",
        ] {
            in_ns(NR_RT, &["sysctl", "-qw", key])?;
        }
        let rules = std::env::temp_dir().join("baton-nft-router.nft");
        std::fs::write(&rules, RULES)?;
        let loaded = in_ns(NR_RT, &["nft", "-f", rules.to_str().context("path")?]);
        let _ = std::fs::remove_file(&rules);
        loaded.context("loading the nftables rules (is the nftables package installed?)")?;
        Ok(r)
    }
}

impl Drop for NftRouter {
    fn drop(&mut self) {
        Self::remove();
    }
}

/// One run of the connection generator; a run in which any connection failed is an error,
/// not a rate.
fn conn_round(
    who: &str,
    client_ns: &str,
    server_ns: &str,
    spec: &baton_lab::traffic::ConnSpec,
) -> anyhow::Result<f64> {
    let r = baton_lab::traffic::connections(client_ns, server_ns, spec)
        .with_context(|| format!("connection generator through the {who}"))?;
    if !r.ok() {
        bail!("through the {who}, {}: {:?}", r.failures(), r.errors);
    }
    Ok(r.conn_per_s)
}

/// New connections per second between the lab's hosts through a Baton lab (3 members,
/// the lab's policy) vs through one Linux router with nftables connection tracking in
/// its place, the same generator spec both sides (short connections: connect, 1 KiB
/// checked by the server, close), rounds alternating: once with HyperSync (every
/// connection's first reply waits for its backup's ack) and once without (`--no-sync`,
/// which is what the router does: no state leaves it).
pub fn connections_versus(quick: bool) -> anyhow::Result<Vec<Figure>> {
    let mut figures = Vec::new();
    for sync in [true, false] {
        let (ours, base) = connection_rounds(quick, sync)?;
        let (name, goal) = if sync {
            (
                "connections_vs_nftables",
                "Baton's new-connection rate (HyperSync on) higher than the nftables router's",
            )
        } else {
            (
                "connections_vs_nftables_no_sync",
                "reported: Baton without HyperSync vs the same router",
            )
        };
        figures.push(figure(name, "conn/s", &ours, &base, goal));
    }
    Ok(figures)
}

/// Rounds of connections through the lab (HyperSync on or off) and the router, alternating.
fn connection_rounds(quick: bool, sync: bool) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    use baton_lab::{
        topology::{self as lab, LabOptions, HOSTS_PER_SIDE, NS_EXT, NS_INT},
        traffic::ConnSpec,
    };
    let (rounds, count) = if quick { (1, 300) } else { (3, 2_000) };
    let exe = release_baton()?;
    lab::down()?;
    let _lab = LabGuard::new();
    lab::up(&LabOptions {
        table_size: 65_536,
        sync,
        ..LabOptions::new(exe)
    })?;
    // After the lab: `lab up` refuses to start beside other `bt-*` namespaces.
    let _router = NftRouter::new()?;
    let spec = ConnSpec {
        clients: (1..=HOSTS_PER_SIDE)
            .map(|h| std::net::IpAddr::from([198, 18, 0, h]))
            .collect(),
        server: std::net::IpAddr::from([198, 19, 0, 1]),
        port: 41_000,
        count,
        concurrency: 32,
        bytes: 1024,
        stall_limit: std::time::Duration::from_secs(5),
        timeout: std::time::Duration::from_secs(120),
    };
    // Unmeasured, so neither side's first round pays for neighbour resolution and cold
    // caches.
    let warm = ConnSpec {
        count: 64,
        ..spec.clone()
    };
    conn_round("Baton lab", NS_EXT, NS_INT, &warm)?;
    conn_round("nftables router", NR_EXT, NR_INT, &warm)?;
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        ours.push(conn_round("Baton lab", NS_EXT, NS_INT, &spec)?);
        base.push(conn_round("nftables router", NR_EXT, NR_INT, &spec)?);
        eprintln!(
            "  baton lab (sync {}) {:.0} conn/s | nftables router {:.0} conn/s",
            if sync { "on" } else { "off" },
            ours[ours.len() - 1],
            base[base.len() - 1]
        );
    }
    Ok((ours, base))
}
