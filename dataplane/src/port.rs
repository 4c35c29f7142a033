//! A member's data port: one AF_XDP socket (xsk-rs) per queue, its UMEM and the loop that
//! receives a batch, hands it to a [`BatchProcessor`] (known only by that trait) to decide
//! about each frame in place, and sends the batch back out of the same port. The rings and
//! UMEM are owned by the port's thread.

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
    CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem,
};

use crate::{
    error::PortError,
    loader::Member,
    policy::Policy,
    verdict::{DropReason, Verdict},
};

/// AF_XDP settings of a data port.
#[derive(Clone, Debug)]
pub struct PortConfig {
    pub iface: String,
    /// First queue; `queues` sockets bind queues `queue..queue + queues`.
    pub queue: u32,
    pub queues: u32,
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
            queues: 1,
            frames: 4096,
            ring: 2048,
            frame_size: 2048,
            batch: 64,
            poll_timeout: Duration::from_millis(50),
            busy_poll: None,
        }
    }
}

/// What a port runs on each frame in its own thread: the member's forwarder, or a trivial
/// handler for the baseline of the benchmarks. Every method is required, so a handler
/// says what it holds rather than inheriting zeros.
pub trait FrameHandler {
    /// Decides about one frame, rewriting it in place; frames to send besides go to `out`.
    fn process(&mut self, frame: &mut [u8], now: Instant, out: &mut Vec<Vec<u8>>) -> Verdict;
    /// Called a few times a second.
    fn tick(&mut self, now: Instant, out: &mut Vec<Vec<u8>>);
    /// Frames dropped outside `process` (e.g. given up while held), by reason.
    fn dropped_held(&self) -> [u64; DropReason::COUNT];
    fn connections(&self) -> usize;
    /// Frames are held that `tick` may release soon (it is then called every millisecond).
    fn holding(&self) -> bool;
    fn policy_version(&self) -> u64;
    /// Installs a new policy; returns the connections it closed.
    fn set_policy(&mut self, policy: Arc<Policy>) -> usize;
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
    fn holding(&self) -> bool;
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
        FrameHandler::tick(self, now, out);
    }
    fn dropped_held(&self) -> [u64; DropReason::COUNT] {
        FrameHandler::dropped_held(self)
    }
    fn connections(&self) -> usize {
        FrameHandler::connections(self)
    }
    fn holding(&self) -> bool {
        FrameHandler::holding(self)
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
    // It keeps no state: no timers, held frames, connections or policy.
    fn tick(&mut self, _now: Instant, _out: &mut Vec<Vec<u8>>) {}
    fn dropped_held(&self) -> [u64; DropReason::COUNT] {
        [0; DropReason::COUNT]
    }
    fn connections(&self) -> usize {
        0
    }
    fn holding(&self) -> bool {
        false
    }
    fn policy_version(&self) -> u64 {
        0
    }
    fn set_policy(&mut self, _policy: Arc<Policy>) -> usize {
        0
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
    /// Frames received on each queue (index from the first queue).
    pub queue_packets: [AtomicU64; QUEUES_MAX],
    /// Frames `steer` dropped because no socket served their queue (e.g. the port has more
    /// queues than the member opened); read from its counters about once a second.
    pub no_socket: AtomicU64,
}

/// Most queues one port serves.
pub const QUEUES_MAX: usize = 16;

impl PortStats {
    pub fn drops_total(&self) -> u64 {
        self.drops
            .iter()
            .map(|d| d.load(Ordering::Relaxed))
            .sum::<u64>()
            + self.no_socket.load(Ordering::Relaxed)
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
                (&raw const value).cast::<libc::c_void>(),
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

/// One AF_XDP socket on one queue, with its own UMEM and rings; owned by the port thread.
pub(crate) struct QueueSocket {
    queue: u32,
    pub(crate) umem: Umem,
    tx: TxQueue,
    rx: RxQueue,
    fq: FillQueue,
    cq: CompQueue,
    /// Frames free for sending what we originate.
    free: Vec<FrameDesc>,
    pub(crate) batch: Vec<FrameDesc>,
    comp: Vec<FrameDesc>,
    send: Vec<FrameDesc>,
    pub(crate) recycle: Vec<FrameDesc>,
}

impl QueueSocket {
    pub(crate) fn open(
        cfg: &PortConfig,
        queue: u32,
        member: &mut Member,
    ) -> Result<Self, PortError> {
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
        // SAFETY: the UMEM (an Arc inside) lives in this struct as long as the socket.
        let (tx, rx, fq_cq) =
            unsafe { Socket::new(sock_cfg, &umem, &iface, queue) }.map_err(|e| {
                PortError::Socket {
                    iface: cfg.iface.clone(),
                    queue,
                    detail: e.to_string(),
                }
            })?;
        let (mut fq, cq) =
            fq_cq.ok_or_else(|| PortError::Config("socket has no fill/completion queue".into()))?;
        member.register_socket(queue, rx.fd().as_raw_fd())?;
        if let Some(budget) = cfg.busy_poll {
            busy_poll(rx.fd().as_raw_fd(), budget)?;
        }
        // Half the frames wait in the fill ring for packets; the other half are free for
        // frames we originate (ARP/ND, released frames).
        let (to_fill, free) = descs.split_at(cfg.ring as usize);
        // SAFETY: the descriptors are fresh frames of this socket's own UMEM, in no ring yet.
        let filled = unsafe { fq.produce(to_fill) };
        if filled != to_fill.len() {
            return Err(PortError::Config(format!(
                "fill ring took {filled} of {} frames",
                to_fill.len()
            )));
        }
        let any = free[0];
        Ok(Self {
            queue,
            umem,
            tx,
            rx,
            fq,
            cq,
            free: free.to_vec(),
            batch: vec![any; cfg.batch],
            comp: vec![any; cfg.ring as usize],
            send: Vec::with_capacity(cfg.batch * 2),
            recycle: Vec::with_capacity(cfg.batch),
        })
    }

    /// Takes back the frames the kernel finished sending, then receives a batch.
    pub(crate) fn receive(&mut self) -> usize {
        // SAFETY: `comp` is ours to overwrite; the frames it gets back are of this socket's UMEM.
        let n = unsafe { self.cq.consume(&mut self.comp) };
        self.free.extend_from_slice(&self.comp[..n]);
        // SAFETY: `batch` is ours to overwrite; the frames it receives are of this socket's UMEM.
        unsafe { self.rx.consume(&mut self.batch) }
    }

    /// Copies a frame we originate into a free UMEM frame and queues it for sending.
    pub(crate) fn originate(&mut self, pkt: &[u8]) -> bool {
        let Some(mut desc) = self.free.pop() else {
            return false;
        };
        {
            // SAFETY: `desc` came off the free list: a frame of this UMEM that no ring holds, so
            // the kernel does not touch it.
            let mut data = unsafe { self.umem.data_mut(&mut desc) };
            let mut cur = data.cursor();
            cur.set_pos(0);
            if std::io::Write::write_all(&mut cur, pkt).is_err() {
                self.free.push(desc);
                return false;
            }
        }
        self.send.push(desc);
        true
    }

    /// Sends what is queued, gives received frames back to the fill ring, and keeps the
    /// fill ring stocked from spare free frames. Returns frames that found no TX slot.
    pub(crate) fn flush(&mut self, ring: usize) -> Result<usize, PortError> {
        let mut full = 0;
        if !self.send.is_empty() {
            // SAFETY: the frames in `send` are of this UMEM and in no other ring; they stay ours
            // until completion.
            let sent = unsafe { self.tx.produce_and_wakeup(&self.send)? };
            if sent < self.send.len() {
                // TX ring full: give the frames back rather than wait.
                full = self.send.len() - sent;
                self.recycle.extend_from_slice(&self.send[sent..]);
            }
            self.send.clear();
        } else if self.tx.needs_wakeup() {
            self.tx.wakeup()?;
        }
        if !self.recycle.is_empty() {
            // SAFETY: the frames in `recycle` are of this UMEM and in no ring (released by the
            // forwarder, or refused by the TX ring).
            if unsafe { self.fq.produce(&self.recycle) } == 0 {
                self.free.extend_from_slice(&self.recycle);
            }
            self.recycle.clear();
        }
        if self.free.len() > ring {
            let spare = self.free.len() - ring;
            let want = self.fq.nb_free(spare as u32) as usize;
            if want > 0 {
                let at = self.free.len() - want.min(spare);
                // SAFETY: the frames on the free list are of this UMEM and in no ring; those taken
                // are dropped from it.
                if unsafe { self.fq.produce(&self.free[at..]) } > 0 {
                    self.free.truncate(at);
                }
            }
        }
        Ok(full)
    }
}

/// Waits until one of the sockets has something to receive, or `timeout_ms`.
pub(crate) fn poll_all(sockets: &mut [QueueSocket], timeout: Duration) -> Result<(), PortError> {
    for s in sockets.iter_mut() {
        if s.fq.needs_wakeup() {
            s.fq.wakeup(s.rx.fd_mut(), 0)?;
        }
    }
    let mut fds: Vec<libc::pollfd> = sockets
        .iter()
        .map(|s| libc::pollfd {
            fd: s.rx.fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // ppoll, not poll: timeouts below a millisecond (see HOLD_TICK).
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos()),
    };
    // SAFETY: ppoll on fds we own, with the right length; no signal mask.
    let rc = unsafe {
        libc::ppoll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            &raw const ts,
            std::ptr::null(),
        )
    };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e.into());
        }
    }
    Ok(())
}

/// How often a port holding first replies (until their connections' records are acked by
/// the backup) looks at the acks: the hold adds up to this to a connection's set-up.
pub const HOLD_TICK: Duration = Duration::from_micros(100);

/// Runs the port until `stop` is set: one AF_XDP socket on each of the queues
/// `cfg.queue .. cfg.queue + cfg.queues`, all served by this thread and `fwd`, so the two
/// directions of a connection meet in one place whatever queue each arrives on. `ready` is
/// called once every socket receives.
// A thread body: it owns what its thread uses for the thread's life.
#[allow(clippy::needless_pass_by_value)]
pub fn run(
    cfg: &PortConfig,
    member: &mut Member,
    mut fwd: impl BatchProcessor,
    stats: Arc<PortStats>,
    stop: Arc<AtomicBool>,
    control: crossbeam_channel::Receiver<Control>,
    ready: impl FnOnce(),
) -> Result<(), PortError> {
    let mut sockets = (cfg.queue..cfg.queue + cfg.queues.max(1))
        .map(|q| QueueSocket::open(cfg, q, member))
        .collect::<Result<Vec<_>, _>>()?;
    ready();
    tracing::info!(iface = %cfg.iface, queues = ?sockets.iter().map(|s| s.queue).collect::<Vec<_>>(), "data port up");

    let mut extra: Vec<Vec<u8>> = Vec::new();
    let mut last_tick = Instant::now();
    let (mut rxp, mut rxb, mut txp, mut txb) = (0u64, 0u64, 0u64, 0u64);
    let mut drops = [0u64; DropReason::COUNT];
    let mut per_queue = vec![0u64; sockets.len()];
    // Processing time per packet.
    let mut latency = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 10_000_000, 2)
        .map_err(|e| PortError::Config(e.to_string()))?;
    let mut verdicts: Vec<Verdict> = Vec::with_capacity(cfg.batch);
    let mut last_publish = Instant::now();
    stats
        .policy_version
        .store(fwd.policy_version(), Ordering::Relaxed);

    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        // Neighbour retries run on time, busy or idle; held first replies are looked at
        // every HOLD_TICK.
        let holding = fwd.holding();
        let tick_every = if holding {
            HOLD_TICK
        } else {
            Duration::from_millis(100)
        };
        if now.duration_since(last_tick) >= tick_every {
            last_tick = now;
            fwd.tick(now, &mut extra);
        }
        let mut received = 0;
        for (qi, sock) in sockets.iter_mut().enumerate() {
            let n = sock.receive();
            if n == 0 {
                continue;
            }
            received += n;
            per_queue[qi] += n as u64;
            let started = Instant::now();
            fwd.process_batch(
                &sock.umem,
                &mut sock.batch[..n],
                now,
                &mut verdicts,
                &mut extra,
            );
            // The batch's time shared by its packets: the per-packet cost, without a clock
            // read per packet.
            let _ = latency.record_n(
                (started.elapsed().as_nanos() as u64 / n as u64).max(1),
                n as u64,
            );
            for (desc, verdict) in sock.batch[..n].iter().zip(verdicts.drain(..)) {
                let len = desc.lengths().data();
                rxp += 1;
                rxb += len as u64;
                match verdict {
                    Verdict::Forward => {
                        txp += 1;
                        txb += len as u64;
                        sock.send.push(*desc);
                    }
                    Verdict::Consumed | Verdict::Held => sock.recycle.push(*desc),
                    Verdict::Drop(r) => {
                        drops[r as usize] += 1;
                        sock.recycle.push(*desc);
                    }
                }
            }
        }
        if received == 0 && extra.is_empty() {
            poll_all(
                &mut sockets,
                if holding { HOLD_TICK } else { cfg.poll_timeout },
            )?;
        }
        // Frames we originate leave by the first queue: every queue reaches the same wire.
        for pkt in extra.drain(..) {
            if sockets[0].originate(&pkt) {
                txp += 1;
                txb += pkt.len() as u64;
            } else {
                stats.tx_full.fetch_add(1, Ordering::Relaxed);
            }
        }
        for sock in &mut sockets {
            let full = sock.flush(cfg.ring as usize)?;
            if full > 0 {
                stats.tx_full.fetch_add(full as u64, Ordering::Relaxed);
            }
        }

        stats.rx_packets.store(rxp, Ordering::Relaxed);
        stats.rx_bytes.store(rxb, Ordering::Relaxed);
        stats.tx_packets.store(txp, Ordering::Relaxed);
        stats.tx_bytes.store(txb, Ordering::Relaxed);
        for (i, d) in drops.iter().enumerate() {
            stats.drops[i].store(d + fwd.dropped_held()[i], Ordering::Relaxed);
        }
        for (slot, q) in stats.queue_packets.iter().zip(&per_queue) {
            slot.store(*q, Ordering::Relaxed);
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
        if now.duration_since(last_publish) >= Duration::from_secs(1) {
            last_publish = now;
            match member.steer_stats() {
                Ok((_, no_socket)) => stats.no_socket.store(no_socket, Ordering::Relaxed),
                Err(e) => tracing::debug!("steer counters unreadable: {e}"),
            }
            if !latency.is_empty() {
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
    }
    Ok(())
}
