//! CoreXL-style workers behind one queue. A veth (and a NIC without a symmetric RSS key)
//! delivers both directions of a connection to whatever queue, so the port's thread
//! spreads each batch over the workers by a symmetric hash of the addresses and waits for
//! them: every packet of a connection, its fragments and the ICMP errors about it meet on
//! one worker, which owns that connection alone — no lock on the fast path. Workers run
//! pinned, each with its own [`Forwarder`] (connection table, neighbour table).
//!
//! Frames never move: workers get the descriptors and rewrite the frames in the shared
//! UMEM; each frame belongs to exactly one thread at a time.

use std::{
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Instant,
};

use crossbeam_channel::{Receiver, Sender};
use xsk_rs::{FrameDesc, Umem};

use baton_common::net::{ETH_P_IPV4, ETH_P_IPV6};

use crate::{
    forward::Forwarder,
    frame,
    inspect::{inspect_v4, inspect_v6, Inspect},
    policy::Policy,
    port::BatchProcessor,
    sync::tap::SLOTS,
    verdict::{DropReason, Verdict},
    wire::{Ipv4Packet, Ipv6Packet},
};

/// Most workers one member runs.
pub const WORKERS_MAX: usize = 16;
// Each worker takes its own slot of the sync tap.
const _: () = assert!(WORKERS_MAX <= SLOTS);

enum Request {
    Batch {
        descs: Vec<FrameDesc>,
        umem: Umem,
        now: Instant,
    },
    /// A control frame (ARP/ND) every worker must see: each keeps its own neighbour table.
    Copy {
        frame: Vec<u8>,
        now: Instant,
    },
    Tick(Instant),
    Policy(Arc<Policy>),
}

#[derive(Default)]
struct Reply {
    descs: Vec<FrameDesc>,
    verdicts: Vec<Verdict>,
    out: Vec<Vec<u8>>,
    closed: usize,
}

/// Counters per worker, for `baton stat`.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub packets: [AtomicU64; WORKERS_MAX],
    pub bytes: [AtomicU64; WORKERS_MAX],
    /// Frames each worker dropped, by reason (held frames given up included).
    pub drops: [[AtomicU64; DropReason::COUNT]; WORKERS_MAX],
    pub connections: [AtomicU64; WORKERS_MAX],
    /// First replies each worker holds for its backup's acknowledgement.
    pub held: [AtomicU64; WORKERS_MAX],
    dropped_held: [[AtomicU64; DropReason::COUNT]; WORKERS_MAX],
    pub workers: AtomicU64,
}

struct Worker {
    requests: Sender<Request>,
    replies: Receiver<Reply>,
    thread: Option<JoinHandle<Forwarder>>,
}

/// Makes the forwarder of worker `i` of `n` (its share of the connection table).
pub type MakeForwarder = Box<dyn Fn(usize, usize) -> Forwarder + Send>;

pub struct Dispatcher {
    workers: Vec<Worker>,
    stats: Arc<WorkerStats>,
    policy: Arc<Policy>,
    cores: Vec<usize>,
    make: MakeForwarder,
    /// Positions of the batch's frames given to each worker.
    parts: Vec<Vec<usize>>,
}

impl Dispatcher {
    /// Starts `n` workers made by `make`, the i-th pinned to `cores[i]` when given.
    pub fn new(
        n: usize,
        make: MakeForwarder,
        cores: &[usize],
    ) -> std::io::Result<(Self, Arc<WorkerStats>)> {
        assert!((1..=WORKERS_MAX).contains(&n), "1..={WORKERS_MAX} workers");
        let stats = Arc::new(WorkerStats::default());
        let forwarders: Vec<Forwarder> = (0..n).map(|i| make(i, n)).collect();
        let policy = Arc::new(forwarders[0].policy().clone());
        let mut d = Self {
            workers: Vec::new(),
            stats: stats.clone(),
            policy,
            cores: cores.to_vec(),
            make,
            parts: Vec::new(),
        };
        d.start(forwarders)?;
        Ok((d, stats))
    }

    fn start(&mut self, forwarders: Vec<Forwarder>) -> std::io::Result<()> {
        self.stats
            .workers
            .store(forwarders.len() as u64, Ordering::Relaxed);
        for (i, fwd) in forwarders.into_iter().enumerate() {
            // The slot may hold a previous worker's figures: start from this one's.
            self.stats.connections[i].store(fwd.connections().len() as u64, Ordering::Relaxed);
            self.stats.packets[i].store(0, Ordering::Relaxed);
            self.stats.bytes[i].store(0, Ordering::Relaxed);
            for d in &self.stats.drops[i] {
                d.store(0, Ordering::Relaxed);
            }
            let (requests, rx) = crossbeam_channel::bounded::<Request>(4);
            let (tx, replies) = crossbeam_channel::bounded::<Reply>(4);
            let core = self.cores.get(i).copied();
            let stats = self.stats.clone();
            let thread = std::thread::Builder::new()
                .name(format!("worker{i}"))
                .spawn(move || work(i, fwd, core, rx, tx, stats))?;
            self.workers.push(Worker {
                requests,
                replies,
                thread: Some(thread),
            });
        }
        self.parts = vec![Vec::new(); self.workers.len()];
        Ok(())
    }

    /// Stops the workers and returns their forwarders.
    fn stop(&mut self) -> Vec<Forwarder> {
        self.workers
            .drain(..)
            .filter_map(|mut w| {
                // Closing the request channel ends the worker.
                drop(std::mem::replace(
                    &mut w.requests,
                    crossbeam_channel::bounded(0).0,
                ));
                w.thread.take().and_then(|t| t.join().ok())
            })
            .collect()
    }

    /// Sends `req(i)` to every worker and gathers the replies.
    fn broadcast(&mut self, mut req: impl FnMut() -> Request) -> Vec<Reply> {
        for w in &self.workers {
            let _ = w.requests.send(req());
        }
        self.workers
            .iter()
            .map(|w| w.replies.recv().unwrap_or_default())
            .collect()
    }
}

fn pick(frame: &[u8], n: usize) -> Option<usize> {
    let (ethertype, l3) = frame::l2(frame)?;
    let ip = frame.get(l3..)?;
    let (src, dst) = match ethertype {
        ETH_P_IPV4 => {
            // Any version passes here: the worker drops what is not IPv4, and counts it.
            let ip = Ipv4Packet::new_unchecked(ip);
            ip.check_len().ok()?;
            match inspect_v4(&ip) {
                Inspect::Related(q) => (q.src, q.dst),
                _ => (ip.src_addr().into(), ip.dst_addr().into()),
            }
        }
        ETH_P_IPV6 => {
            let ip = Ipv6Packet::new_unchecked(ip);
            ip.check_len().ok()?;
            // Neighbour discovery is for every worker.
            if frame::is_neighbour_discovery(&ip) {
                return None;
            }
            match inspect_v6(&ip) {
                Inspect::Related(q) => (q.src, q.dst),
                _ => (ip.src_addr().into(), ip.dst_addr().into()),
            }
        }
        _ => return None,
    };
    Some(worker_of(src, dst, n))
}

/// The worker that owns the connections between two addresses (either order).
fn worker_of(a: IpAddr, b: IpAddr, n: usize) -> usize {
    use baton_common::{addr_word, flow_hash};
    flow_hash(addr_word(a), addr_word(b), 0, 0) as usize % n
}

impl BatchProcessor for Dispatcher {
    fn process_batch(
        &mut self,
        umem: &Umem,
        descs: &mut [FrameDesc],
        now: Instant,
        verdicts: &mut Vec<Verdict>,
        out: &mut Vec<Vec<u8>>,
    ) {
        let n = self.workers.len();
        for p in &mut self.parts {
            p.clear();
        }
        let mut copies = Vec::new();
        let mut local = vec![None; descs.len()];
        for (pos, desc) in descs.iter().enumerate() {
            // SAFETY: the frame is ours until we hand it back.
            let data = unsafe { umem.data(desc) };
            match pick(data.contents(), n) {
                Some(w) => self.parts[w].push(pos),
                None if frame::l2(data.contents()).is_some() => {
                    copies.push(data.contents().to_vec());
                    local[pos] = Some(Verdict::Consumed);
                }
                None => local[pos] = Some(Verdict::Drop(DropReason::Truncated)),
            }
        }
        let mut busy = Vec::new();
        for (w, part) in self.parts.iter().enumerate() {
            if !part.is_empty() {
                let sub: Vec<FrameDesc> = part.iter().map(|&p| descs[p]).collect();
                let _ = self.workers[w].requests.send(Request::Batch {
                    descs: sub,
                    umem: umem.clone(),
                    now,
                });
                busy.push(w);
            }
        }
        let mut results = vec![None; descs.len()];
        for w in busy {
            let reply = self.workers[w].replies.recv().unwrap_or_default();
            for ((&pos, d), v) in self.parts[w].iter().zip(reply.descs).zip(reply.verdicts) {
                descs[pos] = d;
                results[pos] = Some(v);
            }
            out.extend(reply.out);
        }
        for frame in copies {
            for reply in self.broadcast(|| Request::Copy {
                frame: frame.clone(),
                now,
            }) {
                out.extend(reply.out);
            }
        }
        verdicts.extend(
            results
                .into_iter()
                .zip(local)
                .map(|(r, l)| r.or(l).unwrap_or(Verdict::Drop(DropReason::Malformed))),
        );
    }

    fn tick(&mut self, now: Instant, out: &mut Vec<Vec<u8>>) {
        for reply in self.broadcast(|| Request::Tick(now)) {
            out.extend(reply.out);
        }
    }

    fn dropped_held(&self) -> [u64; DropReason::COUNT] {
        let mut sum = [0u64; DropReason::COUNT];
        for w in &self.stats.dropped_held[..self.workers.len()] {
            for (s, d) in sum.iter_mut().zip(w) {
                *s += d.load(Ordering::Relaxed);
            }
        }
        sum
    }

    fn connections(&self) -> usize {
        self.stats.connections[..self.workers.len()]
            .iter()
            .map(|c| c.load(Ordering::Relaxed) as usize)
            .sum()
    }

    fn policy_version(&self) -> u64 {
        self.policy.version
    }

    fn holding(&self) -> bool {
        self.stats.held[..self.workers.len()]
            .iter()
            .any(|h| h.load(Ordering::Relaxed) > 0)
    }

    fn set_policy(&mut self, policy: Arc<Policy>) -> usize {
        self.policy = policy.clone();
        self.broadcast(|| Request::Policy(policy.clone()))
            .iter()
            .map(|r| r.closed)
            .sum()
    }

    /// Dynamic Balancing: replaces the workers with `n` new ones and hands every
    /// connection to the worker its addresses hash to under the new count, state and
    /// timers intact. Runs between two batches, so no packet is in flight; the new workers
    /// start with every neighbour the old ones had resolved.
    fn resize(&mut self, n: usize) -> Result<usize, String> {
        if !(1..=WORKERS_MAX).contains(&n) {
            return Err(format!("the worker count must be 1..={WORKERS_MAX}"));
        }
        let old = self.stop();
        let mut new: Vec<Forwarder> = (0..n).map(|i| (self.make)(i, n)).collect();
        let mut moved = 0;
        for (i, mut f) in old.into_iter().enumerate() {
            for (ip, mac) in f.resolved_neighbours() {
                for g in &mut new {
                    g.add_neighbour(ip, mac);
                }
            }
            for c in f.take_connections() {
                let (a, b) = c.key.addresses();
                let w = worker_of(a, b, n);
                moved += usize::from(w != i);
                if !new[w].adopt_connection(c) {
                    tracing::warn!(
                        worker = w,
                        "connection lost in a resize: the new worker's table is full"
                    );
                }
            }
        }
        for f in &mut new {
            f.set_policy(self.policy.clone());
        }
        self.start(new).map_err(|e| e.to_string())?;
        Ok(moved)
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        self.stop();
    }
}

// A thread body: it owns what its thread uses for the thread's life.
#[allow(clippy::needless_pass_by_value)]
fn work(
    i: usize,
    mut fwd: Forwarder,
    core: Option<usize>,
    requests: Receiver<Request>,
    replies: Sender<Reply>,
    stats: Arc<WorkerStats>,
) -> Forwarder {
    if let Some(c) = core {
        if !core_affinity::set_for_current(core_affinity::CoreId { id: c }) {
            tracing::warn!(worker = i, core = c, "could not pin the worker");
        }
    }
    let mut packets = 0u64;
    let mut bytes = 0u64;
    let mut drops = [0u64; DropReason::COUNT];
    while let Ok(req) = requests.recv() {
        let mut reply = Reply::default();
        match req {
            Request::Batch {
                mut descs,
                umem,
                now,
            } => {
                for d in &mut descs {
                    // SAFETY: the dispatcher gave this frame to this worker alone.
                    let mut data = unsafe { umem.data_mut(d) };
                    bytes += data.contents().len() as u64;
                    let v = fwd.process(data.contents_mut(), now, &mut reply.out);
                    if let Verdict::Drop(r) = v {
                        drops[r as usize] += 1;
                    }
                    reply.verdicts.push(v);
                }
                packets += descs.len() as u64;
                reply.descs = descs;
            }
            Request::Copy { mut frame, now } => {
                fwd.process(&mut frame, now, &mut reply.out);
            }
            Request::Tick(now) => fwd.tick(now, &mut reply.out),
            Request::Policy(p) => reply.closed = fwd.set_policy(p),
        }
        stats.packets[i].store(packets, Ordering::Relaxed);
        stats.bytes[i].store(bytes, Ordering::Relaxed);
        for ((s, d), h) in stats.drops[i].iter().zip(drops).zip(fwd.dropped_held) {
            s.store(d + h, Ordering::Relaxed);
        }
        stats.connections[i].store(fwd.connections().len() as u64, Ordering::Relaxed);
        stats.held[i].store(fwd.holding() as u64, Ordering::Relaxed);
        for (s, d) in stats.dropped_held[i].iter().zip(fwd.dropped_held) {
            s.store(d, Ordering::Relaxed);
        }
        if replies.send(reply).is_err() {
            break;
        }
    }
    fwd
}
