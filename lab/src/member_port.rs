//! One member's data port under the live-frames generator, in the scratch namespace: a
//! member's forwarder (or any frame handler) on `steer` and AF_XDP, frames counted as they
//! come back. The SGM benchmarks and the flood test run their rounds with it.

use std::{
    net::IpAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use baton_common::testbed::bench;
use baton_control::config::Mode;
use baton_dataplane::{
    conntrack::{ConnTable, Timeouts},
    forward::{Forwarder, NeighbourLimits},
    loader::Member,
    policy::Policy,
    port::{self, BatchProcessor, FrameHandler, PortConfig, PortStats},
};

use crate::{
    generator::{udp_frame, Generator, SOURCE_ADDRESS},
    scratch,
    testbed::Testbed,
    topology, LabError,
};

const NEXT_HOP: [u8; 6] = [0x02, 0, 0, 0, 0, 0x22];

/// A member's forwarder as in the lab, with the next hop of the generated frames known.
pub fn forwarder(table_size: usize) -> Forwarder {
    let sides = topology::config(1, true, Mode::General, false).groups[0].sides();
    let mut f = Forwarder::new(
        sides,
        NeighbourLimits::default(),
        ConnTable::new(table_size, Timeouts::default()),
        Arc::new(Policy::accept_all(1)),
    );
    f.add_neighbour(IpAddr::from([198, 19, 0, 1]), NEXT_HOP);
    f
}

/// A member's data port on `iface` (`steer` and AF_XDP, default settings) served by `fwd`
/// until `stop`; `ready` is set once it receives.
// A thread body: it owns what its thread uses for the thread's life.
#[allow(clippy::needless_pass_by_value)]
pub fn serve(
    iface: &str,
    fwd: impl BatchProcessor,
    stats: Arc<PortStats>,
    stop: Arc<AtomicBool>,
    ready: Arc<AtomicBool>,
) -> Result<(), LabError> {
    let mut member = Member::load()?;
    member.attach_steer(iface, true)?;
    let (_tx, rx) = crossbeam_channel::bounded(1);
    let cfg = PortConfig {
        iface: iface.into(),
        ..Default::default()
    };
    port::run(&cfg, &mut member, fwd, stats, stop, rx, || {
        ready.store(true, Ordering::Release);
    })?;
    Ok(())
}

/// Runs one member port with `handler` (in the scratch namespace, see
/// [`scratch::Topology::with_member_port`]) while the generator sends `frames` over
/// `flows` flows; returns the Mpps that came back and the port's counters. With
/// `until_seen` > 0 it sends `frames` again and again until the member has received that
/// many.
pub fn round(
    handler: impl FrameHandler + Send + 'static,
    frames: u32,
    flows: u32,
    until_seen: u64,
) -> Result<(f64, Arc<PortStats>), LabError> {
    round_with(handler, frames, flows, until_seen, SOURCE_ADDRESS)
}

/// [`round`] with the flow number written at `(addr_off, port_off)`.
pub fn round_with(
    handler: impl FrameHandler + Send + 'static,
    frames: u32,
    flows: u32,
    until_seen: u64,
    offsets: (u32, u32),
) -> Result<(f64, Arc<PortStats>), LabError> {
    let mut sink = Testbed::load()?;
    sink.attach(bench::SINK, "gen0")?;
    let mut gen = Generator::new(
        "gen0",
        flows,
        offsets,
        udp_frame([0x02, 0xba, 0x70, 0, 1, 0]),
    )?;
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(PortStats::default());
    let worker = {
        let (stop, ready, stats) = (stop.clone(), ready.clone(), stats.clone());
        std::thread::spawn(move || -> Result<(), LabError> {
            scratch::enter(scratch::NS)?;
            let _ = core_affinity::set_for_current(core_affinity::CoreId { id: 1 });
            serve("m0", handler, stats, stop, ready)
        })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ready.load(Ordering::Acquire) && Instant::now() < deadline && !worker.is_finished() {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(50));
    let _ = core_affinity::set_for_current(core_affinity::CoreId { id: 0 });
    let (before, _) = sink.sink_stats()?;
    let mut elapsed = gen.send(frames)?;
    // A flood keeps going until the member has seen `until_seen` frames (at most 30 s).
    let deadline = Instant::now() + Duration::from_secs(30);
    while stats.rx_packets.load(Ordering::Relaxed) < until_seen && Instant::now() < deadline {
        elapsed += gen.send(frames)?;
    }
    std::thread::sleep(Duration::from_millis(50));
    let (after, _) = sink.sink_stats()?;
    unpin();
    stop.store(true, Ordering::Release);
    worker
        .join()
        .map_err(|_| LabError::Panicked("member thread panicked"))??;
    Ok(((after - before) as f64 / elapsed.as_secs_f64() / 1e6, stats))
}

/// The process's resident memory, in bytes.
pub fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Lets the calling thread run on every core again. A round pins the generator's thread to
/// core 0, and threads spawned later inherit the mask: a lab benchmark's traffic threads
/// would all share one core.
pub fn unpin() {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET only writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in 0..libc::CPU_SETSIZE as usize {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &raw const set);
    }
}

#[cfg(test)]
mod tests {
    fn cores() -> usize {
        // SAFETY: as in unpin.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &raw mut set);
            libc::CPU_COUNT(&set) as usize
        }
    }

    #[test]
    fn unpin_undoes_a_pin() {
        std::thread::spawn(|| {
            let all = cores();
            core_affinity::set_for_current(core_affinity::CoreId { id: 0 });
            assert_eq!(cores(), 1);
            super::unpin();
            assert_eq!(cores(), all);
        })
        .join()
        .unwrap();
    }
}
