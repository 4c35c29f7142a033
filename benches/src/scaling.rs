//! Scaling: throughput with 1, 2, 3 … members behind the distributor, one member with 1 vs
//! 2 worker cores, the cost of adding members, and the model that predicts a full group.
//!
//! This machine has 2 cores, so members cannot each have their own: every figure comes with
//! the CPU time the members' threads spent per packet (each thread's own CPU clock), which
//! is what does not depend on how many cores there are. If adding a member cost nothing,
//! the CPU per packet would stay flat as members are added; its growth per member is the
//! cost of adding members (Maestro's own figure: about 1% per member for the first 10).
//!
//! The path: the live-frames generator → `gen0` → `distribute` on `up0` → `dlK` → member K's
//! data port `mK` (`steer` → AF_XDP → the member's forwarder with connection table and
//! policy, or a dispatcher with its workers) → back out `mK` → counted and dropped on `dlK`.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use baton_common::testbed::bench;
use baton_dataplane::{dispatch::Dispatcher, port::PortStats};
use baton_lab::{
    generator::{udp_frame, Generator, SOURCE_ADDRESS},
    member_port::{forwarder, serve, unpin},
    scratch::{enter, Topology, NS},
    testbed::Testbed,
};

use crate::{
    distributor::{orchestrator_with, Size},
    plot::{self, Line, Series},
    report::{figure, summary, Figure},
};

/// CPU time of thread `tid` of this process, from its per-thread CPU clock.
fn thread_cpu_ns(tid: i32) -> Option<u64> {
    // The kernel's clock id for a thread's CPU time: !tid << 3 | CPUCLOCK_PERTHREAD |
    // CPUCLOCK_SCHED (see clock_getcpuclockid(3); valid within the thread group).
    let clock = ((!tid) << 3) | 4 | 2;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a live, writable timespec for the call; a bad clock id only makes it fail.
    (unsafe { libc::clock_gettime(clock, &raw mut ts) } == 0)
        .then(|| ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// CPU ns of every member thread (ports named `bench-m*`, dispatcher workers `worker*`).
fn member_cpu() -> HashMap<i32, u64> {
    let mut out = HashMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for t in tasks.flatten() {
        let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.starts_with("bench-m") || comm.starts_with("worker") {
            if let Some(ns) = thread_cpu_ns(tid) {
                out.insert(tid, ns);
            }
        }
    }
    out
}

/// One round's result.
#[derive(Clone, Copy, Debug)]
pub struct Round {
    /// Frames per second that came back from the members, in millions.
    pub mpps: f64,
    /// CPU ns the members' threads spent per frame they received.
    pub cpu_ns_per_pkt: f64,
}

/// One round through `members` members of `workers` workers each (the topology of
/// [`Topology::with_members`] must be up and this thread in it).
pub fn round(members: u32, workers: usize, frames: u32, flows: u32) -> anyhow::Result<Round> {
    let mut sinks = Testbed::load()?;
    for k in 1..=members {
        sinks.attach(bench::SINK, &format!("dl{k}"))?;
    }
    let _dut = orchestrator_with(members, true)?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    let mut all_stats = Vec::new();
    let mut readies = Vec::new();
    for k in 1..=members {
        let stats = Arc::new(PortStats::default());
        let ready = Arc::new(AtomicBool::new(false));
        let (stop, st, rd) = (stop.clone(), stats.clone(), ready.clone());
        all_stats.push(stats);
        readies.push(ready);
        let core = (k % 2) as usize;
        threads.push(
            std::thread::Builder::new()
                .name(format!("bench-m{k}"))
                .spawn(move || -> anyhow::Result<()> {
                    enter(NS)?;
                    let _ = core_affinity::set_for_current(core_affinity::CoreId { id: core });
                    if workers == 1 {
                        Ok(serve(&format!("m{k}"), forwarder(1 << 20), st, stop, rd)?)
                    } else {
                        let (d, _) = Dispatcher::new(
                            workers,
                            Box::new(|_, _| forwarder(1 << 20)),
                            // Beside the port's thread: core 0 is the generator's, whose
                            // kernel loop would starve a worker there for milliseconds.
                            &[1, 1],
                        )?;
                        Ok(serve(&format!("m{k}"), d, st, stop, rd)?)
                    }
                })?,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !readies.iter().all(|r| r.load(Ordering::Acquire))
        && Instant::now() < deadline
        && !threads.iter().any(std::thread::JoinHandle::is_finished)
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(50));
    let mut gen = Generator::new(
        "gen0",
        flows,
        SOURCE_ADDRESS,
        udp_frame([0x02, 0xba, 0x70, 0, 1, 0]),
    )?;
    let _ = core_affinity::set_for_current(core_affinity::CoreId { id: 0 });
    let cpu0 = member_cpu();
    let rx0: u64 = all_stats
        .iter()
        .map(|s| s.rx_packets.load(Ordering::Relaxed))
        .sum();
    let (before, _) = sinks.sink_stats()?;
    let elapsed = gen.send(frames)?;
    std::thread::sleep(Duration::from_millis(50));
    let (after, _) = sinks.sink_stats()?;
    let cpu1 = member_cpu();
    unpin();
    let rx1: u64 = all_stats
        .iter()
        .map(|s| s.rx_packets.load(Ordering::Relaxed))
        .sum();
    stop.store(true, Ordering::Release);
    for t in threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("member thread panicked"))??;
    }
    let cpu: u64 = cpu1
        .iter()
        .filter_map(|(tid, ns)| cpu0.get(tid).map(|b| ns.saturating_sub(*b)))
        .sum();
    let received = rx1.saturating_sub(rx0).max(1);
    Ok(Round {
        mpps: (after - before) as f64 / elapsed.as_secs_f64() / 1e6,
        cpu_ns_per_pkt: cpu as f64 / received as f64,
    })
}

/// Medians of `rounds` rounds, each also kept.
fn rounds(
    n: usize,
    members: u32,
    workers: usize,
    frames: u32,
    flows: u32,
) -> anyhow::Result<Vec<Round>> {
    (0..n)
        .map(|_| {
            round(members, workers, frames, flows)
                .with_context(|| format!("{members} members × {workers} workers"))
        })
        .collect()
}

fn mpps(r: &[Round]) -> Vec<f64> {
    r.iter().map(|r| r.mpps).collect()
}

fn cpu(r: &[Round]) -> Vec<f64> {
    r.iter().map(|r| r.cpu_ns_per_pkt).collect()
}

/// The model's inputs, measured.
#[derive(Clone, Copy, Debug)]
pub struct Model {
    /// Mpps one worker core forwards: 1e3 / its CPU ns per packet.
    pub core_mpps: f64,
    /// CPU per packet with 1 worker over CPU per packet with 2 (≤ 1: the dispatcher's cost).
    pub worker_efficiency: f64,
    /// Relative growth of CPU per packet per added member.
    pub member_cost: f64,
}

impl Model {
    /// Predicted Mpps of `members` members of `cores` worker cores each: every core forwards
    /// `core_mpps × worker_efficiency` (shared-nothing workers, as CoreXL instances are), and
    /// each member after the first takes `member_cost` off every member. A model, not a
    /// measurement: it assumes the NICs, the orchestrator and the traffic spread are not the
    /// limit.
    pub fn predict(&self, members: u32, cores: u32) -> f64 {
        let per_member = self.core_mpps * f64::from(cores) * self.worker_efficiency;
        let efficiency = (1.0 - self.member_cost.max(0.0)).powi(members as i32 - 1);
        per_member * f64::from(members) * efficiency
    }
}

/// Every scaling figure, and the plots of throughput vs members and of the model.
pub fn run(size: Size, quick: bool) -> anyhow::Result<Vec<Figure>> {
    let max: u32 = if quick { 3 } else { 4 };
    let frames = size.frames_per_round / 2;
    let _topo = Topology::with_members(max)?;
    let mut by_members = Vec::new();
    for n in 1..=max {
        let r = rounds(size.rounds, n, 1, frames, size.flows)?;
        let (m, _, _) = summary(&mpps(&r));
        let (c, _, _) = summary(&cpu(&r));
        eprintln!("  {n} member(s): {m:.2} Mpps, {c:.0} CPU ns per packet");
        by_members.push(r);
    }
    // One member, 1 vs 2 workers, rounds alternating.
    let (mut one, mut two) = (Vec::new(), Vec::new());
    for _ in 0..size.rounds {
        one.push(round(1, 1, frames, size.flows).context("1 worker")?);
        two.push(round(1, 2, frames, size.flows).context("2 workers")?);
        eprintln!(
            "  one member, 1 worker {:.2} Mpps ({:.0} ns/pkt) | 2 workers {:.2} Mpps ({:.0} ns/pkt)",
            one[one.len() - 1].mpps,
            one[one.len() - 1].cpu_ns_per_pkt,
            two[two.len() - 1].mpps,
            two[two.len() - 1].cpu_ns_per_pkt
        );
    }
    let first = &by_members[0];
    let last = &by_members[max as usize - 1];
    let members_mpps = figure(
        "scaling_members_mpps",
        "mpps",
        &mpps(last),
        &mpps(first),
        &format!("reported: {max} members vs 1 (baseline); all share this machine's 2 cores"),
    );
    let members_cpu = figure(
        "scaling_members_cpu_ns_per_pkt",
        "ns_per_pkt",
        &cpu(last),
        &cpu(first),
        &format!("member CPU per packet, {max} members vs 1 (baseline); flat = adding members costs nothing"),
    );
    let member_cost = members_cpu.ratio.powf(1.0 / f64::from(max - 1)) - 1.0;
    let cost = figure(
        "scaling_cost_per_member_pct",
        "percent",
        &[member_cost * 100.0],
        &[1.0],
        "≈ 1% per member for the first 10 (Maestro's figure, the baseline column)",
    );
    let workers_mpps = figure(
        "scaling_two_workers_mpps",
        "mpps",
        &mpps(&two),
        &mpps(&one),
        "one member, 2 worker cores vs 1 (baseline); 2 cores here are shared with the generator",
    );
    let workers_cpu = figure(
        "scaling_two_workers_cpu_ns_per_pkt",
        "ns_per_pkt",
        &cpu(&two),
        &cpu(&one),
        "member CPU per packet, 2 workers vs 1 (baseline): the dispatcher's cost",
    );
    let model = Model {
        core_mpps: 1e3 / workers_cpu.baseline_median,
        worker_efficiency: (workers_cpu.baseline_median / workers_cpu.median).min(1.0),
        member_cost,
    };
    let linear = Model {
        worker_efficiency: 1.0,
        member_cost: 0.0,
        ..model
    };
    let predicted = figure(
        "model_28_members_16_cores_mpps",
        "mpps",
        &[model.predict(28, 16)],
        &[linear.predict(28, 16)],
        &format!(
            "a MODEL, not a measurement: 28 × 16 × {:.2} Mpps/core × worker efficiency {:.2} × (1 − {:.3})^27; baseline: linear",
            model.core_mpps, model.worker_efficiency, model.member_cost.max(0.0)
        ),
    );
    let per_n = |f: &dyn Fn(&[Round]) -> f64| -> Vec<(f64, f64)> {
        by_members
            .iter()
            .enumerate()
            .map(|(i, r)| ((i + 1) as f64, f(r)))
            .collect()
    };
    plot::save(
        "throughput_vs_members",
        &Series {
            title: "Throughput vs members (measured; 2 shared cores)".into(),
            x_label: "members".into(),
            y_label: "Mpps".into(),
            log_x: false,
            lines: vec![
                Line {
                    label: "forwarded (all members share 2 cores)".into(),
                    points: per_n(&|r| summary(&mpps(r)).0),
                },
                Line {
                    label: "per member core: 1e3 / member CPU ns per packet".into(),
                    points: per_n(&|r| 1e3 / summary(&cpu(r)).0),
                },
            ],
            markers: vec![],
        },
    )?;
    plot::save(
        "model_members_16_cores",
        &Series {
            title: "MODEL: throughput vs members, 16 worker cores each".into(),
            x_label: "members".into(),
            y_label: "Mpps (predicted)".into(),
            log_x: false,
            lines: vec![
                Line {
                    label: "model with the measured costs".into(),
                    points: (1..=28)
                        .map(|n| (f64::from(n), model.predict(n, 16)))
                        .collect(),
                },
                Line {
                    label: "linear (no cost per member or worker)".into(),
                    points: (1..=28)
                        .map(|n| (f64::from(n), linear.predict(n, 16)))
                        .collect(),
                },
            ],
            markers: vec![],
        },
    )?;
    Ok(vec![
        members_mpps,
        members_cpu,
        cost,
        workers_mpps,
        workers_cpu,
        predicted,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_is_linear_without_costs_and_bends_with_them() {
        let linear = Model {
            core_mpps: 2.0,
            worker_efficiency: 1.0,
            member_cost: 0.0,
        };
        assert_eq!(linear.predict(1, 1), 2.0);
        assert_eq!(linear.predict(28, 16), 2.0 * 16.0 * 28.0);
        let costly = Model {
            worker_efficiency: 0.9,
            member_cost: 0.01,
            ..linear
        };
        let p = costly.predict(28, 16);
        let want = 2.0 * 16.0 * 0.9 * 28.0 * 0.99f64.powi(27);
        assert!((p - want).abs() < 1e-9, "{p} vs {want}");
        // A measured cost below zero (noise) does not make members free-er than linear.
        let negative = Model {
            member_cost: -0.05,
            ..linear
        };
        assert_eq!(negative.predict(28, 16), linear.predict(28, 16));
    }

    #[test]
    fn this_threads_cpu_clock_reads() {
        // SAFETY: gettid(2) takes no arguments and cannot fail.
        let tid = unsafe { libc::gettid() };
        let a = thread_cpu_ns(tid).expect("own CPU clock");
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_add(std::hint::black_box(i));
        }
        std::hint::black_box(x);
        let b = thread_cpu_ns(tid).unwrap();
        assert!(b > a, "{a} → {b}");
        assert!(thread_cpu_ns(i32::MAX - 1).is_none());
    }
}
