//! The distributor's cost and throughput, each beside a bare devmap redirect on the same
//! frames, in the same run.
//!
//! - cost: `BPF_PROG_TEST_RUN` with `repeat` (the kernel times the program) over a realistic
//!   mix of frames — 60% IPv4 TCP, 20% IPv4 UDP, 15% IPv6 TCP, 5% 802.1Q-tagged IPv4 TCP —
//!   one frame per flow over many flows, alternating ours and the baseline frame by frame;
//! - throughput: the live-frames generator sends frames into a veth whose peer runs
//!   `distribute` (or the bare redirect), which redirects them to three "member" veths whose
//!   peers count and drop in XDP. Rounds alternate ours and the baseline.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use anyhow::bail;
use baton_common::{key, programs, side, testbed::bench, DownlinkConf, GroupConf, UplinkConf};
use baton_control::planner;
use baton_dataplane::loader::{ifindex, Orchestrator};
use baton_lab::{
    generator::{udp_frame, Generator, HOST, SOURCE_ADDRESS},
    scratch::{Topology, MEMBERS},
    testbed::{test_run_repeat, Testbed},
};
use etherparse::{PacketBuilder, VlanId};

use crate::report::{figure, Figure};

const VMAC: [[u8; 6]; 2] = [[0x02, 0xba, 0x70, 0, 1, 0], [0x02, 0xba, 0x70, 0, 1, 1]];
const B: u32 = 4096;

/// How much work each benchmark does.
#[derive(Clone, Copy, Debug)]
pub struct Size {
    /// Frames of the cost benchmark, sampled evenly from the mix over `flows` flows. Each is
    /// one `BPF_PROG_TEST_RUN` call, and a call with `repeat` > 1 re-patches the kernel's
    /// XDP dispatcher (milliseconds), so every flow of 10,000 cannot have its own call.
    pub cost_flows: u32,
    /// Flows the throughput benchmark's generator cycles through.
    pub flows: u32,
    pub repeat: u32,
    pub rounds: usize,
    pub frames_per_round: u32,
}

impl Size {
    pub fn full() -> Self {
        Self {
            cost_flows: 400,
            flows: 10_000,
            repeat: 20_000,
            rounds: 7,
            frames_per_round: 3_000_000,
        }
    }
    pub fn quick() -> Self {
        Self {
            cost_flows: 50,
            flows: 10_000,
            repeat: 2_000,
            rounds: 2,
            frames_per_round: 200_000,
        }
    }
}

/// An orchestrator's programs with one group of three members, `distribute`'s maps set for
/// uplink `up0` (not attached unless asked).
fn orchestrator(attach: bool) -> anyhow::Result<Orchestrator> {
    orchestrator_with(MEMBERS, attach)
}

/// [`orchestrator`] with members 1..=`members` on `dl1`…
pub fn orchestrator_with(members: u32, attach: bool) -> anyhow::Result<Orchestrator> {
    let up = ifindex("up0")?;
    let mut o = Orchestrator::load(true)?;
    o.set_group(
        0,
        GroupConf {
            table: 0,
            mask: B - 1,
            flood_ifindex: [up, up],
            vmac: VMAC,
            _pad: [0; 4],
        },
    )?;
    o.install_buckets(0, &planner::plan(&(1..=members).collect::<Vec<_>>(), B))?;
    let conf = UplinkConf {
        group: 0,
        side: side::EXTERNAL,
        key: key::BOTH,
        slot: 0,
        gw_v4: [198, 18, 0, 254],
        gw_v6: "2001:db8:18::fe".parse::<Ipv6Addr>()?.octets(),
        vmac: VMAC[0],
        _pad: [0; 2],
    };
    for k in 1..=members {
        let dl = ifindex(&format!("dl{k}"))?;
        o.add_member_port(k, dl)?;
        o.configure_downlink(
            dl,
            DownlinkConf {
                group: 0,
                member: k,
            },
        )?;
    }
    if attach {
        o.attach_uplink("up0", conf)?;
    } else {
        o.configure_uplink(up, conf)?;
    }
    Ok(o)
}

/// The realistic mix, one frame per flow.
pub fn frame_mix(flows: u32) -> Vec<Vec<u8>> {
    (0..flows)
        .map(|i| {
            let src = Ipv4Addr::new(198, 18, (i >> 8) as u8, i as u8);
            let dst = Ipv4Addr::new(198, 19, (i % 61) as u8, (i % 251) as u8);
            let (sp, dp) = (1024 + (i % 50000) as u16, 443);
            let b = PacketBuilder::ethernet2(HOST, VMAC[0]);
            let mut v = Vec::new();
            match i % 20 {
                0..=11 => b
                    .ipv4(src.octets(), dst.octets(), 64)
                    .tcp(sp, dp, i, 1000)
                    .ack(1)
                    .write(&mut v, &[0; 6]),
                12..=15 => b
                    .ipv4(src.octets(), dst.octets(), 64)
                    .udp(sp, 53)
                    .write(&mut v, &[0; 18]),
                16..=18 => {
                    let s6 =
                        Ipv6Addr::new(0x2001, 0xdb8, 0x18, 0, 0, 0, (i >> 16) as u16, i as u16);
                    let d6 = Ipv6Addr::new(0x2001, 0xdb8, 0x19, 0, 0, 0, 0, (i % 251) as u16);
                    b.ipv6(s6.octets(), d6.octets(), 64)
                        .tcp(sp, dp, i, 1000)
                        .ack(1)
                        .write(&mut v, &[])
                }
                _ => b
                    .single_vlan(VlanId::try_new(10).unwrap())
                    .ipv4(src.octets(), dst.octets(), 64)
                    .tcp(sp, dp, i, 1000)
                    .ack(1)
                    .write(&mut v, &[0; 2]),
            }
            .expect("frame builds");
            v
        })
        .collect()
}

/// ns per packet of `distribute` and of the bare redirect on the same frames.
pub fn cost(size: Size) -> anyhow::Result<Figure> {
    let _topo = Topology::new()?;
    let up = ifindex("up0")?;
    let mut o = orchestrator(false)?;
    let mut bed = Testbed::load()?;
    bed.set_devmap(bench::BENCH_PORTS, 0, ifindex("dl1")?)?;
    let mut ours = Vec::new();
    let mut base = Vec::new();
    let mix = frame_mix(size.flows);
    // A prime stride, coprime with the mix's period of 20, samples every kind of frame in
    // its proportion.
    for f in (0..size.cost_flows as usize).map(|k| &mix[(k * 10_007) % mix.len()]) {
        let (a, _, d) =
            test_run_repeat(o.program(programs::DISTRIBUTE)?, f, up, size.repeat, None)?;
        let (b, _, e) =
            test_run_repeat(bed.program(bench::BARE_REDIRECT)?, f, up, size.repeat, None)?;
        if a != 4 || b != 4 {
            bail!("expected XDP_REDIRECT from both programs, got {a} and {b}");
        }
        ours.push(d.as_nanos() as f64);
        base.push(e.as_nanos() as f64);
    }
    Ok(figure(
        "distributor_cost",
        "ns_per_pkt",
        &ours,
        &base,
        "≤ 40 ns/packet and ≤ 2.5× the bare redirect",
    ))
}

/// Mpps delivered to the members' sinks through `distribute` and through the bare redirect.
pub fn throughput(size: Size) -> anyhow::Result<Figure> {
    let _topo = Topology::new()?;
    let mut sinks = Testbed::load()?;
    for k in 1..=MEMBERS {
        sinks.attach(bench::SINK, &format!("m{k}"))?;
    }
    // The generator's redirect into gen0 needs its peer (up0) to run XDP: either program.
    let mut gen = Generator::new("gen0", size.flows, SOURCE_ADDRESS, udp_frame(VMAC[0]))?;
    let mut ours = Vec::new();
    let mut base = Vec::new();
    for round in 0..size.rounds * 2 {
        let baseline = round % 2 == 1;
        // Either program on up0, detached when dropped at the end of the round.
        let dut: Box<dyn std::any::Any> = if baseline {
            let mut bed = Testbed::load()?;
            bed.set_devmap(bench::BENCH_PORTS, 0, ifindex("dl1")?)?;
            bed.attach(bench::BARE_REDIRECT, "up0")?;
            Box::new(bed)
        } else {
            Box::new(orchestrator(true)?)
        };
        // Let the attach settle, then count only this round's frames.
        std::thread::sleep(Duration::from_millis(50));
        let (before, _) = sinks.sink_stats()?;
        let elapsed = gen.send(size.frames_per_round)?;
        std::thread::sleep(Duration::from_millis(20));
        let (after, _) = sinks.sink_stats()?;
        drop(dut);
        let mpps = (after - before) as f64 / elapsed.as_secs_f64() / 1e6;
        if baseline { &mut base } else { &mut ours }.push(mpps);
    }
    Ok(figure(
        "distributor_throughput",
        "mpps",
        &ours,
        &base,
        "ratio ≥ 0.9 of the bare redirect",
    ))
}
