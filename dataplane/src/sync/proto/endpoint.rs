//! One member's end of all its sync links: peers and their streams, the frames in and
//! out, events for the owner, figures.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use hmac::Mac;

use super::{
    codec::{parse, ranges, Body, HmacSha256, Record, Sealer, RECORD_LEN},
    receiver::Rx,
    replay::REPLAY_WORDS,
    sender::{Entry, Tx, MAX_RETX_RANGES},
};

/// The group's shared secret (HMAC-SHA256 key).
#[derive(Clone)]
pub struct GroupKey(pub [u8; 32]);

#[derive(Clone, Debug)]
pub struct Config {
    pub group: u32,
    /// My member id.
    pub me: u32,
    /// This process's stream epoch: must grow across restarts (e.g. wall-clock ns).
    pub epoch: u64,
    /// Bound on records queued per peer (unsent + unacked).
    pub queue_max: usize,
    /// Most unacked records in flight per peer.
    pub window: usize,
    /// Retransmit after this without ack progress.
    pub rto: Duration,
    /// A receiver acks at least this often while it has something new.
    pub ack_every: Duration,
    /// Out-of-order records a receiver buffers per peer.
    pub reorder_max: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            group: 1,
            me: 0,
            epoch: 0,
            queue_max: 65536,
            window: 4096,
            rto: Duration::from_millis(20),
            // At once: the active member holds a connection's first reply until its
            // record is acked. One ack per peer still covers a whole received batch.
            ack_every: Duration::ZERO,
            reorder_max: 8192,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The stream to `peer` lost records it can no longer retransmit (queue overflow): the
    /// owner must push the full current state for that peer again. Emitted once per resync,
    /// only after the peer acknowledged the resync marker (it is alive and takes the bulk).
    ResyncNeeded(u32),
    /// `peer` started a new stream (higher epoch: it restarted). Not emitted on first contact.
    PeerRestarted(u32),
}

/// Per peer.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LinkStats {
    /// Records sent for the first time.
    pub sent: u64,
    /// Records delivered in order from the peer.
    pub received: u64,
    /// Records the peer acknowledged.
    pub acked: u64,
    /// Records sent again.
    pub retransmitted: u64,
    /// Records discarded by an overflow after they had been sent but before the peer
    /// acknowledged them (a subset of `overflowed`, which also counts never-sent ones). The
    /// resync recovers all of `overflowed`; `lost` is what the peer may have half-seen.
    pub lost: u64,
    /// Resync markers the peer acknowledged after an overflow (= `ResyncNeeded` events).
    pub resyncs: u64,
    /// Records discarded by overflows (unsent + unacked).
    pub overflowed: u64,
    /// Records queued now (unsent + unacked).
    pub queue: u64,
    /// Age of the oldest queued record at the last time passed in; 0 when none.
    pub lag_ms: f64,
    pub nacks_sent: u64,
    /// Data records received again (retransmissions of something already had).
    pub duplicates: u64,
}

/// Endpoint-wide drops.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Too short or long, bad version/kind, lengths or sequence numbers that do not add up.
    pub malformed: u64,
    /// MAC does not verify.
    pub auth_failed: u64,
    /// Src not in `set_peers`, or wrong group.
    pub unknown_peer: u64,
    pub wrong_dst: u64,
    /// Authentic frame from an older epoch of its sender, or a frame id already seen or
    /// older than the anti-replay window.
    pub replayed: u64,
}

struct Peer {
    tx: Tx,
    rx: Rx,
    stats: LinkStats,
}

impl Peer {
    fn new() -> Self {
        Self {
            tx: Tx::new(),
            rx: Rx::new(None),
            stats: LinkStats::default(),
        }
    }

    /// A peer added again: its streams continue where they stopped, so neither side
    /// mistakes the new records for old ones, and frames seen before stay replays.
    fn resumed(r: &Retired) -> Self {
        let mut p = Self::new();
        let tx = &mut p.tx;
        tx.q_first = r.next_seq;
        tx.next_seq = r.next_seq;
        tx.next_send = r.next_seq;
        tx.sent_hwm = r.next_seq - 1;
        tx.acked_upto = r.next_seq - 1;
        if r.next_seq > 1 {
            // The peer may expect less (records were discarded): move it to our numbering.
            tx.resync(false, &mut p.stats);
        }
        p.rx = Rx::new(r.epoch);
        if r.replay_top > 0 {
            p.rx.replay.top = r.replay_top;
            p.rx.replay.bits = [u64::MAX; REPLAY_WORDS];
        }
        p
    }

    fn retire(&self) -> Retired {
        Retired {
            next_seq: self.tx.next_seq,
            epoch: self.rx.epoch,
            replay_top: self.rx.replay.top,
        }
    }
}

/// What outlives a removed peer: enough to resume its streams safely if it comes back.
struct Retired {
    next_seq: u64,
    epoch: Option<u64>,
    replay_top: u64,
}

/// Removed peers remembered at most (then the memory starts over).
const MAX_RETIRED: usize = 4096;

/// One member's end of all its sync links.
pub struct Endpoint {
    pub(super) cfg: Config,
    sealer: Sealer,
    peers: BTreeMap<u32, Peer>,
    retired: BTreeMap<u32, Retired>,
    events: Vec<Event>,
    counters: Counters,
    /// Latest time passed in: "now" for deadlines and lag.
    clock: Option<Instant>,
}

impl Endpoint {
    pub fn new(mut cfg: Config, key: &GroupKey) -> Self {
        cfg.window = cfg.window.max(1);
        cfg.queue_max = cfg.queue_max.max(1);
        let mac = HmacSha256::new_from_slice(&key.0).expect("HMAC takes keys of any length");
        let sealer = Sealer {
            mac,
            group: cfg.group,
            me: cfg.me,
            epoch: cfg.epoch,
            frame_id: 0,
        };
        Self {
            cfg,
            sealer,
            peers: BTreeMap::new(),
            retired: BTreeMap::new(),
            events: Vec::new(),
            counters: Counters::default(),
            clock: None,
        }
    }

    /// The peers this member may talk to (the group's other members). Frames from anyone
    /// else are dropped and counted. Removing a peer discards its queues and receive state;
    /// adding it back continues its stream numbering behind a RESYNC marker (no event: the
    /// owner knows) and keeps rejecting frames it had already seen.
    pub fn set_peers(&mut self, peers: &[u32]) {
        let want: BTreeSet<u32> = peers
            .iter()
            .copied()
            .filter(|&p| p != self.cfg.me)
            .collect();
        let gone: Vec<u32> = self
            .peers
            .keys()
            .copied()
            .filter(|k| !want.contains(k))
            .collect();
        for id in gone {
            if let Some(p) = self.peers.remove(&id) {
                if self.retired.len() >= MAX_RETIRED {
                    self.retired.clear();
                }
                self.retired.insert(id, p.retire());
            }
        }
        for id in want {
            if !self.peers.contains_key(&id) {
                let p = self
                    .retired
                    .remove(&id)
                    .map_or_else(Peer::new, |r| Peer::resumed(&r));
                self.peers.insert(id, p);
            }
        }
    }

    fn tick(&mut self, now: Instant) {
        self.clock = Some(self.clock.map_or(now, |c| c.max(now)));
    }

    /// Queues a record for `peer`; returns its sequence number (per stream, from 1). Never
    /// blocks or fails: a full queue is discarded (counted in `overflowed`) and the stream
    /// resyncs. None for an unknown peer.
    pub fn push(&mut self, peer: u32, rec: &Record, now: Instant) -> Option<u64> {
        self.tick(now);
        let qmax = self.cfg.queue_max;
        let p = self.peers.get_mut(&peer)?;
        if p.tx.queue.len() >= qmax {
            p.tx.resync(true, &mut p.stats);
        }
        let seq = p.tx.next_seq;
        p.tx.queue.push_back(Entry {
            rec: *rec,
            pushed: now,
            last_tx: None,
        });
        p.tx.next_seq += 1;
        Some(seq)
    }

    /// Records that may still be pushed to `peer` before it overflows.
    pub fn room(&self, peer: u32) -> usize {
        self.peers
            .get(&peer)
            .map_or(0, |p| self.cfg.queue_max.saturating_sub(p.tx.queue.len()))
    }

    /// One received payload (after the Ethernet header). Returns the records now
    /// deliverable in order from its sender; anything invalid is counted and dropped.
    pub fn receive(&mut self, payload: &[u8], now: Instant) -> Vec<(u32, Record)> {
        self.tick(now);
        let mut out = Vec::new();
        let Some(f) = parse(payload) else {
            self.counters.malformed += 1;
            return out;
        };
        if f.group != self.cfg.group {
            self.counters.unknown_peer += 1;
            return out;
        }
        if f.dst != self.cfg.me {
            self.counters.wrong_dst += 1;
            return out;
        }
        let Some(p) = self.peers.get_mut(&f.src) else {
            self.counters.unknown_peer += 1;
            return out;
        };
        let mut mac = self.sealer.mac.clone();
        mac.update(f.signed);
        if mac.verify_truncated_left(f.tag).is_err() {
            self.counters.auth_failed += 1;
            return out;
        }
        match p.rx.epoch {
            Some(e) if f.epoch < e => {
                self.counters.replayed += 1;
                return out;
            }
            Some(e) if f.epoch == e => {
                if !p.rx.replay.fresh(f.id) {
                    self.counters.replayed += 1;
                    return out;
                }
            }
            prev => {
                p.rx = Rx::new(Some(f.epoch));
                if prev.is_some() {
                    // It lost my stream with its old process: restart it where acks stopped.
                    self.events.push(Event::PeerRestarted(f.src));
                    p.tx.resync(false, &mut p.stats);
                }
            }
        }
        let newest = p.rx.replay.mark(f.id);
        let cfg = &self.cfg;
        match f.body {
            Body::Data { first, recs } => {
                let rx = &mut p.rx;
                let mut touched = false;
                for (i, chunk) in recs.chunks_exact(RECORD_LEN).enumerate() {
                    let Ok(rec) = Record::try_from(chunk) else {
                        continue;
                    };
                    let seq = first + i as u64;
                    if seq < rx.next_expected || rx.buf.contains_key(&seq) {
                        p.stats.duplicates += 1;
                        touched = true;
                    } else if seq == rx.next_expected {
                        out.push((f.src, rec));
                        rx.next_expected += 1;
                        p.stats.received += 1;
                        touched = true;
                    } else if rx.buf.len() < cfg.reorder_max {
                        rx.buf.insert(seq, rec);
                    }
                }
                rx.drain(f.src, &mut out, &mut p.stats);
                if touched {
                    rx.ack_pending = true;
                    rx.ack_due.get_or_insert(now + cfg.ack_every);
                }
            }
            Body::Resync { base } => {
                let rx = &mut p.rx;
                if base > rx.next_expected {
                    rx.next_expected = base;
                    rx.buf = rx.buf.split_off(&base);
                    rx.drain(f.src, &mut out, &mut p.stats);
                }
                rx.ack_pending = true;
                rx.ack_due = Some(now);
            }
            Body::Ack { acked_epoch, cum } => {
                if acked_epoch == cfg.epoch && p.tx.on_ack(cum, newest, now, &mut p.stats) {
                    self.events.push(Event::ResyncNeeded(f.src));
                }
            }
            Body::Nack {
                acked_epoch,
                cum,
                ranges: r,
            } => {
                if acked_epoch == cfg.epoch {
                    if p.tx.on_ack(cum, newest, now, &mut p.stats) {
                        self.events.push(Event::ResyncNeeded(f.src));
                    }
                    let tx = &mut p.tx;
                    if tx.marker.is_none() {
                        for (a, b) in ranges(r) {
                            let lo = a.max(tx.q_first);
                            let hi = b.min(tx.next_send - 1);
                            if lo <= hi && tx.retx.len() < MAX_RETX_RANGES {
                                tx.retx.push_back((lo, hi));
                            }
                        }
                    }
                }
            }
        }
        out
    }

    /// Frames to send now, as (peer, payload): acks, nacks, resync markers,
    /// retransmissions, then new data within the window.
    pub fn poll(&mut self, now: Instant, out: &mut Vec<(u32, Vec<u8>)>) {
        self.tick(now);
        let cfg = &self.cfg;
        for (&id, p) in &mut self.peers {
            poll_peer(id, p, &mut self.sealer, cfg, now, out);
        }
    }

    /// When `poll` is due at the latest (ack, nack, RTO or marker deadline, or now when
    /// something is ready to send); None when nothing is pending.
    pub fn next_deadline(&self) -> Option<Instant> {
        let now = self.clock?;
        let half = self.cfg.rto / 2;
        let window = self.cfg.window as u64;
        let mut best: Option<Instant> = None;
        let mut consider = |t: Instant| best = Some(best.map_or(t, |b| b.min(t)));
        for p in self.peers.values() {
            if p.rx.epoch.is_some() {
                if !p.rx.buf.is_empty() {
                    consider(p.rx.last_nack.map_or(now, |t| t + half));
                }
                if let (true, Some(t)) = (p.rx.ack_pending, p.rx.ack_due) {
                    consider(t);
                }
            }
            let tx = &p.tx;
            if let Some(m) = &tx.marker {
                consider(m.last_tx.map_or(now, |t| t + self.cfg.rto));
                continue;
            }
            if !tx.retx.is_empty()
                || (tx.next_send < tx.next_seq && tx.next_send - tx.q_first < window)
            {
                consider(now);
            }
            if let Some(t) = tx.rto_from {
                consider(t + self.cfg.rto);
            }
        }
        best
    }

    /// Events for the owner, drained.
    pub fn events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Highest seq such that every record <= it was acked by `peer` or discarded by an
    /// overflow (those are never acked: the owner resends state). 0 if none.
    pub fn acked(&self, peer: u32) -> u64 {
        self.peers.get(&peer).map_or(0, |p| p.tx.acked_upto)
    }

    /// Last sequence number `push` returned for `peer` (0 if none).
    pub fn pushed(&self, peer: u32) -> u64 {
        self.peers.get(&peer).map_or(0, |p| p.tx.next_seq - 1)
    }

    pub fn stats(&self, peer: u32) -> Option<LinkStats> {
        let p = self.peers.get(&peer)?;
        let lag_ms = match (p.tx.queue.front(), self.clock) {
            (Some(e), Some(now)) => now.saturating_duration_since(e.pushed).as_secs_f64() * 1e3,
            _ => 0.0,
        };
        Some(LinkStats {
            queue: p.tx.queue.len() as u64,
            lag_ms,
            ..p.stats.clone()
        })
    }

    pub fn counters(&self) -> Counters {
        self.counters.clone()
    }
}

fn poll_peer(
    id: u32,
    p: &mut Peer,
    s: &mut Sealer,
    cfg: &Config,
    now: Instant,
    out: &mut Vec<(u32, Vec<u8>)>,
) {
    p.rx.poll(id, s, cfg.rto / 2, now, out, &mut p.stats);
    p.tx.poll(id, s, cfg, now, out, &mut p.stats);
}
