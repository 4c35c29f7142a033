//! A member's data port: one AF_XDP socket (xsk-rs) on one queue, its UMEM and the worker
//! loop that receives a batch, runs the [`Forwarder`] on each frame in place and sends the
//! batch back out of the same port. The rings and UMEM are owned by the worker thread.

use std::{
    num::NonZeroU32,
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use xsk_rs::{
    config::{BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig},
    FrameDesc, Socket, Umem,
};

use crate::{
    error::PortError,
    forward::{DropReason, Forwarder, Verdict},
    loader::Member,
    policy::Policy,
};

/// AF_XDP settings of a data port.
#[derive(Clone, Debug)]
pub struct PortConfig {
    pub iface: String,
    pub queue: u32,
    /// UMEM frames: the fill ring's worth for receiving plus as many for sending.
    pub frames: u32,
    /// Size of each ring (fill, completion, RX, TX); a power of two.
    pub ring: u32,
    pub frame_size: u32,
    /// Frames handled per batch.
    pub batch: usize,
    /// How long `poll` waits when there is nothing to do.
    pub poll_timeout: Duration,
    /// Busy polling (SO_PREFER_BUSY_POLL with this budget): the port's thread drives the
    /// NIC queue itself instead of waiting for interrupts. Needs a dedicated core.
    pub busy_poll: Option<u32>,
}

impl Default for PortConfig {
    fn default() -> Self {
        Self {
            iface: "dl0".into(),
            queue: 0,
            frames: 4096,
            ring: 2048,
            frame_size: 2048,
            batch: 64,
            poll_timeout: Duration::from_millis(50),
            busy_poll: None,
        }
    }
}

/// What a port runs on each frame: the member's [`Forwarder`], or a trivial handler for
/// the baseline of the benchmarks.
pub trait FrameHandler {
    /// Decides about one frame, rewriting it in place; frames to send besides go to `out`.
    fn process(&mut self, frame: &mut [u8], now: Instant, out: &mut Vec<Vec<u8>>) -> Verdict;
    /// Called a few times a second.
    fn tick(&mut self, _now: Instant, _out: &mut Vec<Vec<u8>>) {}
    /// Frames dropped outside `process` (e.g. given up while held), by reason.
    fn dropped_held(&self) -> [u64; DropReason::COUNT] {
        [0; DropReason::COUNT]
    }
    fn connections(&self) -> usize {
        0
    }
    fn policy_version(&self) -> u64 {
        0
    }
    /// Installs a new policy; returns the connections it closed.
    fn set_policy(&mut self, _policy: Arc<Policy>) -> usize {
        0
    }
}

impl FrameHandler for Forwarder {
    fn process(&mut self, frame: &mut [u8], now: Instant, out: &mut Vec<Vec<u8>>) -> Verdict {
        Forwarder::process(self, frame, now, out)
    }
    fn tick(&mut self, now: Instant, out: &mut Vec<Vec<u8>>) {
        Forwarder::tick(self, now, out)
    }
    fn dropped_held(&self) -> [u64; DropReason::COUNT] {
        self.dropped_held
    }
    fn connections(&self) -> usize {
        self.connections().len()
    }
    fn policy_version(&self) -> u64 {
        self.policy().version
    }
    fn set_policy(&mut self, policy: Arc<Policy>) -> usize {
        Forwarder::set_policy(self, policy)
    }
}

/// Changes a port takes between two batches.
pub enum Control {
    Policy(Arc<Policy>),
    Workers(usize),
}

/// Decides about a batch of received frames: one handler in the port's thread, or the
/// dispatcher that spreads the batch over pinned workers.
pub trait BatchProcessor {
    /// Processes `descs` in place; pushes one verdict per frame, in order.
    fn process_batch(
        &mut self,
        umem: &Umem,
        descs: &mut [FrameDesc],
        now: Instant,
        verdicts: &mut Vec<Verdict>,
        out: &mut Vec<Vec<u8>>,
    );
    fn tick(&mut self, now: Instant, out: &mut Vec<Vec<u8>>);
    fn dropped_held(&self) -> [u64; DropReason::COUNT];
    fn connections(&self) -> usize;
    fn policy_version(&self) -> u64;
    fn set_policy(&mut self, policy: Arc<Policy>) -> usize;
    /// Changes the number of workers, keeping every connection; returns how many
    /// connections moved to another worker.
    fn resize(&mut self, _workers: usize) -> Result<usize, String> {
        Err("this member runs one worker in the port's thread; start it with --workers 2 or more to change the count at runtime".into())
    }
}

impl<H: FrameHandler> BatchProcessor for H {
    fn process_batch(
        &mut self,
        umem: &Umem,
        descs: &mut [FrameDesc],
        now: Instant,
        verdicts: &mut Vec<Verdict>,
        out: &mut Vec<Vec<u8>>,
    ) {
        for desc in descs.iter_mut() {
            // SAFETY: the frame is ours (received, not yet given back to the kernel).
            let mut data = unsafe { umem.data_mut(desc) };
            verdicts.push(self.process(data.contents_mut(), now, out));
        }
    }
    fn tick(&mut self, now: Instant, out: &mut Vec<Vec<u8>>) {
        FrameHandler::tick(self, now, out)
    }
    fn dropped_held(&self) -> [u64; DropReason::COUNT] {
        FrameHandler::dropped_held(self)
    }
    fn connections(&self) -> usize {
        FrameHandler::connections(self)
    }
    fn policy_version(&self) -> u64 {
        FrameHandler::policy_version(self)
    }
    fn set_policy(&mut self, policy: Arc<Policy>) -> usize {
        FrameHandler::set_policy(self, policy)
    }
}

/// The minimal forwarder: swaps the MAC addresses and sends the frame back (the ceiling of
/// the AF_XDP path, the baseline a member is measured against).
pub struct MacSwap;

impl FrameHandler for MacSwap {
    fn process(&mut self, f: &mut [u8], _now: Instant, _out: &mut Vec<Vec<u8>>) -> Verdict {
        if f.len() < 14 {
            return Verdict::Drop(DropReason::Truncated);
        }
        let (dst, rest) = f.split_at_mut(6);
        dst.swap_with_slice(&mut rest[..6]);
        Verdict::Forward
    }
}

/// Counters a port shares with the rest of the member (heartbeats, `baton stat`).
#[derive(Default, Debug)]
pub struct PortStats {
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub drops: [AtomicU64; DropReason::COUNT],
    /// Frames that could not be sent for lack of a free UMEM frame or TX slot.
    pub tx_full: AtomicU64,
    /// Connections in the table, and the policy version enforced.
    pub connections: AtomicU64,
    pub policy_version: AtomicU64,
    /// Per-packet processing time percentiles (ns), over the last second or so.
    pub latency_p50_ns: AtomicU64,
    pub latency_p99_ns: AtomicU64,
    pub latency_max_ns: AtomicU64,
}

impl PortStats {
    pub fn drops_total(&self) -> u64 {
        self.drops.iter().map(|d| d.load(Ordering::Relaxed)).sum()
    }
}

/// Turns on busy polling for an AF_XDP socket (as the kernel's AF_XDP documentation
/// describes: prefer busy poll, 20 µs busy-poll time, `budget` packets per poll).
fn busy_poll(fd: i32, budget: u32) -> Result<(), PortError> {
    // From the kernel's uapi (asm-generic/socket.h); not all libc versions carry them.
    const SO_BUSY_POLL: libc::c_int = 46;
    const SO_PREFER_BUSY_POLL: libc::c_int = 69;
    const SO_BUSY_POLL_BUDGET: libc::c_int = 70;
    for (opt, value) in [
        (SO_PREFER_BUSY_POLL, 1i32),
        (SO_BUSY_POLL, 20),
        (SO_BUSY_POLL_BUDGET, budget as i32),
    ] {
        // SAFETY: setsockopt with an int value on a socket we own.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                &value as *const i32 as *const libc::c_void,
                std::mem::size_of::<i32>() as u32,
            )
        };
        if rc != 0 {
            return Err(PortError::Config(format!(
                "busy polling not available (setsockopt {opt}): {}",
                std::io::Error::last_os_error()
            )));
        }
    }
    Ok(())
}

/// Runs the port until `stop` is set. `ready` is called once the socket receives.
pub fn run(
    cfg: &PortConfig,
    member: &mut Member,
    mut fwd: impl BatchProcessor,
    stats: Arc<PortStats>,
    stop: Arc<AtomicBool>,
    control: crossbeam_channel::Receiver<Control>,
    ready: impl FnOnce(),
) -> Result<(), PortError> {
    let ring = QueueSize::new(cfg.ring)
        .map_err(|e| PortError::Config(format!("ring size {}: {e}", cfg.ring)))?;
    if cfg.frames < 2 * cfg.ring {
        return Err(PortError::Config(format!(
            "frames ({}) must be at least twice the ring size ({})",
            cfg.frames, cfg.ring
        )));
    }
    let frame_size = FrameSize::new(cfg.frame_size)
        .map_err(|e| PortError::Config(format!("frame size {}: {e}", cfg.frame_size)))?;
    let umem_cfg = UmemConfig::builder()
        .frame_size(frame_size)
        .fill_queue_size(ring)
        .comp_queue_size(ring)
        .build()
        .map_err(|e| PortError::Config(e.to_string()))?;
    let count = NonZeroU32::new(cfg.frames)
        .ok_or_else(|| PortError::Config("frames must be > 0".into()))?;
    let (umem, descs) = Umem::new(umem_cfg, count, false).map_err(|e| PortError::Umem {
        frames: cfg.frames,
        frame_size: cfg.frame_size,
        detail: e.to_string(),
    })?;
    let sock_cfg = SocketConfig::builder()
        .rx_queue_size(ring)
        .tx_queue_size(ring)
        .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
        .bind_flags(BindFlags::XDP_USE_NEED_WAKEUP)
        .build();
    let iface: Interface = cfg
        .iface
        .parse()
        .map_err(|_| PortError::Config(format!("bad interface name {:?}", cfg.iface)))?;
    // SAFETY: the UMEM outlives the socket (both live until this function returns).
    let (mut tx, mut rx, fq_cq) = unsafe { Socket::new(sock_cfg, &umem, &iface, cfg.queue) }
        .map_err(|e| PortError::Socket {
            iface: cfg.iface.clone(),
            queue: cfg.queue,
            detail: e.to_string(),
        })?;
    let (mut fq, mut cq) =
        fq_cq.ok_or_else(|| PortError::Config("socket has no fill/completion queue".into()))?;
    member.register_socket(cfg.queue, rx.fd().as_raw_fd())?;
    if let Some(budget) = cfg.busy_poll {
        busy_poll(rx.fd().as_raw_fd(), budget)?;
    }

    // Half the frames wait in the fill ring for packets; the other half are free for frames
    // we originate (ARP/ND, released frames).
    let (to_fill, free) = descs.split_at(cfg.ring as usize);
    let mut free: Vec<FrameDesc> = free.to_vec();
    let filled = unsafe { fq.produce(to_fill) };
    if filled != to_fill.len() {
        return Err(PortError::Config(format!(
            "fill ring took {filled} of {} frames",
            to_fill.len()
        )));
    }
    ready();
    tracing::info!(iface = %cfg.iface, queue = cfg.queue, "data port up");

    let mut batch = vec![free[0]; cfg.batch];
    let mut send: Vec<FrameDesc> = Vec::with_capacity(cfg.batch * 2);
    let mut recycle: Vec<FrameDesc> = Vec::with_capacity(cfg.batch);
    let mut comp = vec![free[0]; cfg.ring as usize];
    let mut extra: Vec<Vec<u8>> = Vec::new();
    let mut last_tick = Instant::now();
    let poll_ms = cfg.poll_timeout.as_millis() as i32;
    let (mut rxp, mut rxb, mut txp, mut txb) = (0u64, 0u64, 0u64, 0u64);
    let mut drops = [0u64; DropReason::COUNT];
    // Processing time per packet.
    let mut latency = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 10_000_000, 2)
        .map_err(|e| PortError::Config(e.to_string()))?;
    let mut verdicts: Vec<Verdict> = Vec::with_capacity(cfg.batch);
    let mut last_publish = Instant::now();
    stats
        .policy_version
        .store(fwd.policy_version(), Ordering::Relaxed);

    while !stop.load(Ordering::Relaxed) {
        // Frames the kernel finished sending are free again.
        let n = unsafe { cq.consume(&mut comp) };
        free.extend_from_slice(&comp[..n]);

        let n = unsafe { rx.consume(&mut batch) };
        let now = Instant::now();
        // Neighbour retries run on time, busy or idle.
        if now.duration_since(last_tick) >= Duration::from_millis(100) {
            last_tick = now;
            fwd.tick(now, &mut extra);
        }
        if n == 0 {
            if fq.needs_wakeup() {
                fq.wakeup(rx.fd_mut(), 0)?;
            }
            if extra.is_empty() {
                rx.poll(poll_ms)?;
            }
        }
        if n > 0 {
            let started = Instant::now();
            fwd.process_batch(&umem, &mut batch[..n], now, &mut verdicts, &mut extra);
            // The batch's time shared by its packets: the per-packet cost, without a clock
            // read per packet.
            let _ = latency.record_n(
                (started.elapsed().as_nanos() as u64 / n as u64).max(1),
                n as u64,
            );
        }
        for (desc, verdict) in batch.iter().take(n).zip(verdicts.drain(..)) {
            let len = desc.lengths().data();
            rxp += 1;
            rxb += len as u64;
            match verdict {
                Verdict::Forward => {
                    txp += 1;
                    txb += len as u64;
                    send.push(*desc);
                }
                Verdict::Consumed | Verdict::Held => recycle.push(*desc),
                Verdict::Drop(r) => {
                    drops[r as usize] += 1;
                    recycle.push(*desc);
                }
            }
        }
        // Frames we originate go out in frames from the free pool.
        for pkt in extra.drain(..) {
            let Some(mut desc) = free.pop() else {
                stats.tx_full.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            {
                let mut data = unsafe { umem.data_mut(&mut desc) };
                let mut cur = data.cursor();
                cur.set_pos(0);
                if std::io::Write::write_all(&mut cur, &pkt).is_err() {
                    free.push(desc);
                    continue;
                }
            }
            txp += 1;
            txb += pkt.len() as u64;
            send.push(desc);
        }
        if !send.is_empty() {
            let sent = unsafe { tx.produce_and_wakeup(&send)? };
            if sent < send.len() {
                // TX ring full: give the frames back rather than wait.
                stats
                    .tx_full
                    .fetch_add((send.len() - sent) as u64, Ordering::Relaxed);
                recycle.extend_from_slice(&send[sent..]);
            }
            send.clear();
        } else if tx.needs_wakeup() {
            tx.wakeup()?;
        }
        // Received frames we are done with go back to the fill ring; so do free frames
        // beyond what sending needs, so that reception never starves.
        if !recycle.is_empty() {
            let k = unsafe { fq.produce(&recycle) };
            if k == 0 {
                free.extend_from_slice(&recycle);
            }
            recycle.clear();
        }
        if free.len() > cfg.ring as usize {
            let spare = free.len() - cfg.ring as usize;
            let want = fq.nb_free(spare as u32) as usize;
            if want > 0 {
                let at = free.len() - want.min(spare);
                if unsafe { fq.produce(&free[at..]) } > 0 {
                    free.truncate(at);
                }
            }
        }

        stats.rx_packets.store(rxp, Ordering::Relaxed);
        stats.rx_bytes.store(rxb, Ordering::Relaxed);
        stats.tx_packets.store(txp, Ordering::Relaxed);
        stats.tx_bytes.store(txb, Ordering::Relaxed);
        for (i, d) in drops.iter().enumerate() {
            stats.drops[i].store(d + fwd.dropped_held()[i], Ordering::Relaxed);
        }
        stats
            .connections
            .store(fwd.connections() as u64, Ordering::Relaxed);
        // Changes apply between two batches: each packet sees one policy, one set of
        // workers.
        match control.try_recv() {
            Ok(Control::Policy(policy)) => {
                let version = policy.version;
                let closed = fwd.set_policy(policy);
                stats.policy_version.store(version, Ordering::Relaxed);
                tracing::info!(version, closed, "policy installed");
            }
            Ok(Control::Workers(n)) => match fwd.resize(n) {
                Ok(moved) => tracing::info!(workers = n, moved, "workers changed"),
                Err(e) => tracing::warn!(workers = n, "workers not changed: {e}"),
            },
            Err(_) => {}
        }
        if now.duration_since(last_publish) >= Duration::from_secs(1) && !latency.is_empty() {
            last_publish = now;
            stats
                .latency_p50_ns
                .store(latency.value_at_quantile(0.5), Ordering::Relaxed);
            stats
                .latency_p99_ns
                .store(latency.value_at_quantile(0.99), Ordering::Relaxed);
            stats.latency_max_ns.store(latency.max(), Ordering::Relaxed);
            latency.reset();
        }
    }
    Ok(())
}
