//! HyperSync's link protocol: ordered, acknowledged, authenticated delivery of fixed-size
//! connection-state records from one cluster member to another over raw Ethernet frames.
//!
//! The module is sans-IO: it never touches sockets, threads or clocks. The owner hands it
//! received payloads and the current time, calls [`Endpoint::poll`] for the frames to send
//! (at the latest at [`Endpoint::next_deadline`], and after every batch of `push`/`receive`),
//! and drains [`Endpoint::events`].
//!
//! # Wire format
//!
//! Payload after the 14-byte Ethernet header (EtherType [`ETHERTYPE`]); integers big-endian.
//!
//! | offset | size | field                                                         |
//! |-------:|-----:|---------------------------------------------------------------|
//! | 0      | 1    | version = 1                                                   |
//! | 1      | 1    | kind: 1 DATA, 2 ACK, 3 NACK, 4 RESYNC                         |
//! | 2      | 4    | group                                                         |
//! | 6      | 4    | src member                                                    |
//! | 10     | 4    | dst member                                                    |
//! | 14     | 8    | epoch of the frame's sender (its stream epoch)                |
//! | 22     | 8    | frame id: per sender epoch, strictly increasing, never reused |
//! | 30     | ..   | body (below)                                                  |
//! | end-16 | 16   | tag: HMAC-SHA256(key, every byte before it), first 16 bytes   |
//!
//! | kind   | body                                                                     |
//! |--------|--------------------------------------------------------------------------|
//! | DATA   | first_seq(8), count(2) in 1..=[`RECORDS_PER_FRAME`], count × record(48)  |
//! | ACK    | acked_epoch(8), cum(8): every seq <= cum was delivered in order          |
//! | NACK   | acked_epoch(8), cum(8), n(2) in 1..=[`MAX_NACK_RANGES`], n × (first(8), last(8)) missing |
//! | RESYNC | base(8): forget everything before `base`; the next record is `base`      |
//!
//! Every frame is at least 54 bytes, so Ethernet never pads it and lengths must add up
//! exactly. A DATA frame carries at most 30 records: 30 + 10 + 30 × 48 + 16 = 1496 bytes.
//!
//! # Reliability
//!
//! Each direction of a link is a stream of records numbered from 1, identified by the
//! sender's epoch. The sender keeps every record until it is cumulatively acked, with at
//! most `window` in flight; it retransmits what a NACK lists (not the same record twice
//! within rto/2) and, after `rto` without ack progress, everything in flight. The receiver
//! delivers in order, buffers up to `reorder_max` records past a gap, NACKs gaps (at most
//! every rto/2) and acks within `ack_every` of anything new or duplicated (a duplicate means
//! its ack was lost).
//!
//! When a queue overflows, its records are discarded and the sender emits a RESYNC marker
//! (retransmitted every `rto`) and holds everything pushed later until the marker is acked;
//! then [`Event::ResyncNeeded`] tells the owner to send its full state again. The same
//! marker, without the event, restarts the stream at the oldest unacked record when the
//! peer has lost its receive state (it restarted, or it acks less than it acked before).
//!
//! # Replay
//!
//! Frames from an epoch lower than the newest authentic one seen from that peer are
//! replays. Within an epoch, a 1024-id sliding bitmap of frame ids (as IPsec's anti-replay
//! window) rejects ids already seen or older than the window. Receive state lives in memory
//! only: a member that restarts, or a peer removed and re-added by `set_peers`, accepts the
//! first authentic epoch it sees from that peer again.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

pub const ETHERTYPE: u16 = 0x88B5;
/// Records are opaque fixed-size byte strings to this module.
pub const RECORD_LEN: usize = 48;
pub type Record = [u8; RECORD_LEN];
/// Largest payload (bytes after the 14-byte Ethernet header) a frame may have.
pub const MAX_PAYLOAD: usize = 1500;

/// Protocol version on the wire.
pub const VERSION: u8 = 1;
const KIND_DATA: u8 = 1;
const KIND_ACK: u8 = 2;
const KIND_NACK: u8 = 3;
const KIND_RESYNC: u8 = 4;
/// Common header: version, kind, group, src, dst, epoch, frame id.
pub const HEADER_LEN: usize = 30;
/// Truncated HMAC-SHA256.
pub const TAG_LEN: usize = 16;
const DATA_FIXED: usize = 10;
const ACK_BODY: usize = 16;
const NACK_FIXED: usize = 18;
const RANGE_LEN: usize = 16;
const RESYNC_BODY: usize = 8;
/// Records one DATA frame carries at most (30).
pub const RECORDS_PER_FRAME: usize = (MAX_PAYLOAD - HEADER_LEN - DATA_FIXED - TAG_LEN) / RECORD_LEN;
/// Missing ranges one NACK carries at most (89).
pub const MAX_NACK_RANGES: usize = (MAX_PAYLOAD - HEADER_LEN - NACK_FIXED - TAG_LEN) / RANGE_LEN;
/// Frame ids the anti-replay bitmap covers.
const REPLAY_WINDOW: u64 = 1024;
const REPLAY_WORDS: usize = (REPLAY_WINDOW / 64) as usize;
/// Frames one `poll` emits per peer at most; the rest waits for the next call.
pub const MAX_FRAMES_PER_POLL: usize = 256;
/// Pending retransmission ranges per peer at most (NACKs beyond it are ignored).
const MAX_RETX_RANGES: usize = 1024;

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

/// IPsec-style sliding bitmap over frame ids: bit i stands for id `top - i`.
#[derive(Clone, Default)]
struct ReplayWindow {
    top: u64,
    bits: [u64; REPLAY_WORDS],
}

impl ReplayWindow {
    fn fresh(&self, id: u64) -> bool {
        if id > self.top {
            return true;
        }
        let off = self.top - id;
        off < REPLAY_WINDOW && self.bits[(off / 64) as usize] & (1 << (off % 64)) == 0
    }

    /// Records `id` as seen; true when it is the newest so far.
    fn mark(&mut self, id: u64) -> bool {
        if id > self.top {
            self.shift(id - self.top);
            self.top = id;
            self.bits[0] |= 1;
            true
        } else {
            let off = self.top - id;
            if off < REPLAY_WINDOW {
                self.bits[(off / 64) as usize] |= 1 << (off % 64);
            }
            false
        }
    }

    fn shift(&mut self, s: u64) {
        if s >= REPLAY_WINDOW {
            self.bits = [0; REPLAY_WORDS];
            return;
        }
        let ws = (s / 64) as usize;
        let bs = (s % 64) as u32;
        for w in (0..REPLAY_WORDS).rev() {
            let hi = if w >= ws { self.bits[w - ws] << bs } else { 0 };
            let lo = if bs > 0 && w > ws {
                self.bits[w - ws - 1] >> (64 - bs)
            } else {
                0
            };
            self.bits[w] = hi | lo;
        }
    }
}

/// A queued record.
struct Entry {
    rec: Record,
    pushed: Instant,
    last_tx: Option<Instant>,
}

/// A pending RESYNC marker.
struct Marker {
    base: u64,
    /// Records were discarded: the owner must resend its state once the peer acks.
    lossy: bool,
    last_tx: Option<Instant>,
}

/// Sending half of a link. Invariant: `q_first + queue.len() == next_seq`, and
/// `q_first <= next_send <= next_seq`.
struct Tx {
    queue: VecDeque<Entry>,
    q_first: u64,
    next_seq: u64,
    /// First record not (re)sent in the current pass.
    next_send: u64,
    /// Highest seq ever transmitted: sends at or below it count as retransmissions.
    sent_hwm: u64,
    acked_upto: u64,
    /// RTO clock: last ack progress (or first send); Some while records are in flight.
    rto_from: Option<Instant>,
    retx: VecDeque<(u64, u64)>,
    marker: Option<Marker>,
}

impl Tx {
    fn new() -> Self {
        Self {
            queue: VecDeque::new(),
            q_first: 1,
            next_seq: 1,
            next_send: 1,
            sent_hwm: 0,
            acked_upto: 0,
            rto_from: None,
            retx: VecDeque::new(),
            marker: None,
        }
    }

    /// Restarts the stream at `q_first` behind a RESYNC marker; with `discard`, the queue is
    /// dropped first (overflow) and the marker becomes lossy.
    fn resync(&mut self, discard: bool, st: &mut LinkStats) {
        if discard {
            let n = self.queue.len() as u64;
            let last = self.next_seq - 1;
            let sent = if self.sent_hwm >= self.q_first {
                self.sent_hwm.min(last) - self.q_first + 1
            } else {
                0
            };
            st.overflowed += n;
            st.lost += sent;
            self.queue.clear();
            self.q_first = self.next_seq;
            self.acked_upto = last;
        }
        let lossy = discard || self.marker.as_ref().is_some_and(|m| m.lossy);
        self.marker = Some(Marker {
            base: self.q_first,
            lossy,
            last_tx: None,
        });
        self.next_send = self.q_first;
        self.retx.clear();
        self.rto_from = None;
    }

    /// A cumulative ack for my current epoch. `newest`: it came in the newest frame seen
    /// from the peer, so a cum below what it acked before means it lost its receive state.
    /// Returns true when a lossy marker got acked (the owner must resync).
    fn on_ack(&mut self, cum: u64, newest: bool, now: Instant, st: &mut LinkStats) -> bool {
        let mut resync_needed = false;
        if let Some(m) = &self.marker {
            if cum.saturating_add(1) < m.base {
                return false;
            }
            if m.lossy {
                st.resyncs += 1;
                resync_needed = true;
            }
            self.marker = None;
        }
        let top = self.sent_hwm.min(self.next_seq - 1);
        if cum >= self.q_first && cum <= top {
            let n = cum - self.q_first + 1;
            self.queue.drain(..n as usize);
            self.q_first = cum + 1;
            self.next_send = self.next_send.max(self.q_first);
            self.acked_upto = cum;
            st.acked += n;
            self.rto_from = (self.next_send > self.q_first).then_some(now);
        } else if newest && self.marker.is_none() && cum < self.acked_upto {
            self.resync(false, st);
        }
        resync_needed
    }

    fn eligible(&self, seq: u64, now: Instant, gap: Duration) -> bool {
        let Some(idx) = seq.checked_sub(self.q_first) else {
            return false;
        };
        self.queue.get(idx as usize).is_some_and(|e| {
            e.last_tx
                .is_none_or(|t| now.saturating_duration_since(t) >= gap)
        })
    }
}

/// Receiving half of a link.
struct Rx {
    /// The peer's current epoch; None before first contact.
    epoch: Option<u64>,
    replay: ReplayWindow,
    next_expected: u64,
    buf: BTreeMap<u64, Record>,
    ack_pending: bool,
    ack_due: Option<Instant>,
    last_nack: Option<Instant>,
}

impl Rx {
    fn new(epoch: Option<u64>) -> Self {
        Self {
            epoch,
            replay: ReplayWindow::default(),
            next_expected: 1,
            buf: BTreeMap::new(),
            ack_pending: false,
            ack_due: None,
            last_nack: None,
        }
    }

    /// Delivers what the buffer holds from `next_expected` on.
    fn drain(&mut self, from: u32, out: &mut Vec<(u32, Record)>, st: &mut LinkStats) {
        while let Some(rec) = self.buf.remove(&self.next_expected) {
            out.push((from, rec));
            self.next_expected += 1;
            st.received += 1;
        }
    }
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

/// Builds and authenticates my frames.
struct Sealer {
    mac: HmacSha256,
    group: u32,
    me: u32,
    epoch: u64,
    /// Last frame id used: one counter for all peers, so re-adding a peer never reuses ids.
    frame_id: u64,
}

impl Sealer {
    fn start(&mut self, kind: u8, dst: u32, body: usize) -> Vec<u8> {
        self.frame_id += 1;
        let mut b = Vec::with_capacity(HEADER_LEN + body + TAG_LEN);
        b.push(VERSION);
        b.push(kind);
        b.extend_from_slice(&self.group.to_be_bytes());
        b.extend_from_slice(&self.me.to_be_bytes());
        b.extend_from_slice(&dst.to_be_bytes());
        b.extend_from_slice(&self.epoch.to_be_bytes());
        b.extend_from_slice(&self.frame_id.to_be_bytes());
        b
    }

    fn seal(&self, mut b: Vec<u8>) -> Vec<u8> {
        let mut m = self.mac.clone();
        m.update(&b);
        let tag = m.finalize().into_bytes();
        b.extend_from_slice(&tag[..TAG_LEN]);
        b
    }

    fn ack(&mut self, dst: u32, acked_epoch: u64, cum: u64) -> Vec<u8> {
        let mut b = self.start(KIND_ACK, dst, ACK_BODY);
        b.extend_from_slice(&acked_epoch.to_be_bytes());
        b.extend_from_slice(&cum.to_be_bytes());
        self.seal(b)
    }

    fn nack(&mut self, dst: u32, acked_epoch: u64, cum: u64, ranges: &[(u64, u64)]) -> Vec<u8> {
        let mut b = self.start(KIND_NACK, dst, NACK_FIXED + ranges.len() * RANGE_LEN);
        b.extend_from_slice(&acked_epoch.to_be_bytes());
        b.extend_from_slice(&cum.to_be_bytes());
        b.extend_from_slice(&(ranges.len() as u16).to_be_bytes());
        for (first, last) in ranges {
            b.extend_from_slice(&first.to_be_bytes());
            b.extend_from_slice(&last.to_be_bytes());
        }
        self.seal(b)
    }

    fn resync(&mut self, dst: u32, base: u64) -> Vec<u8> {
        let mut b = self.start(KIND_RESYNC, dst, RESYNC_BODY);
        b.extend_from_slice(&base.to_be_bytes());
        self.seal(b)
    }
}

enum Body<'a> {
    Data {
        first: u64,
        recs: &'a [u8],
    },
    Ack {
        acked_epoch: u64,
        cum: u64,
    },
    Nack {
        acked_epoch: u64,
        cum: u64,
        ranges: &'a [u8],
    },
    Resync {
        base: u64,
    },
}

struct Frame<'a> {
    group: u32,
    src: u32,
    dst: u32,
    epoch: u64,
    id: u64,
    body: Body<'a>,
    signed: &'a [u8],
    tag: &'a [u8],
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn be64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Range pairs of a NACK body, already length-checked by `parse`.
fn ranges(b: &[u8]) -> impl Iterator<Item = (u64, u64)> + '_ {
    b.chunks_exact(RANGE_LEN)
        .filter_map(|c| Some((be64(c, 0)?, be64(c, 8)?)))
}

/// Structural checks only; None means malformed.
fn parse(p: &[u8]) -> Option<Frame<'_>> {
    if p.len() < HEADER_LEN + TAG_LEN || p.len() > MAX_PAYLOAD {
        return None;
    }
    let (signed, tag) = p.split_at(p.len() - TAG_LEN);
    if signed[0] != VERSION {
        return None;
    }
    let id = be64(signed, 22)?;
    if id == 0 {
        return None;
    }
    let b = &signed[HEADER_LEN..];
    let body = match signed[1] {
        KIND_DATA => {
            let first = be64(b, 0)?;
            let count = usize::from(be16(b, 8)?);
            let recs = b.get(DATA_FIXED..)?;
            if first == 0
                || count == 0
                || count > RECORDS_PER_FRAME
                || recs.len() != count * RECORD_LEN
            {
                return None;
            }
            first.checked_add(count as u64)?;
            Body::Data { first, recs }
        }
        KIND_ACK if b.len() == ACK_BODY => Body::Ack {
            acked_epoch: be64(b, 0)?,
            cum: be64(b, 8)?,
        },
        KIND_NACK => {
            let n = usize::from(be16(b, 16)?);
            let r = b.get(NACK_FIXED..)?;
            if n == 0 || n > MAX_NACK_RANGES || r.len() != n * RANGE_LEN {
                return None;
            }
            if ranges(r).any(|(first, last)| first == 0 || first > last) {
                return None;
            }
            Body::Nack {
                acked_epoch: be64(b, 0)?,
                cum: be64(b, 8)?,
                ranges: r,
            }
        }
        KIND_RESYNC if b.len() == RESYNC_BODY => {
            let base = be64(b, 0)?;
            if base == 0 {
                return None;
            }
            Body::Resync { base }
        }
        _ => return None,
    };
    Some(Frame {
        group: be32(signed, 2)?,
        src: be32(signed, 6)?,
        dst: be32(signed, 10)?,
        epoch: be64(signed, 14)?,
        id,
        body,
        signed,
        tag,
    })
}

/// One member's end of all its sync links.
pub struct Endpoint {
    cfg: Config,
    sealer: Sealer,
    peers: BTreeMap<u32, Peer>,
    retired: BTreeMap<u32, Retired>,
    events: Vec<Event>,
    counters: Counters,
    /// Latest time passed in: "now" for deadlines and lag.
    clock: Option<Instant>,
}

impl Endpoint {
    pub fn new(mut cfg: Config, key: GroupKey) -> Self {
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
        for (&id, p) in self.peers.iter_mut() {
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

/// One DATA frame of `n` queued records from `first`; notes their transmission.
fn send_data(
    id: u32,
    tx: &mut Tx,
    st: &mut LinkStats,
    s: &mut Sealer,
    first: u64,
    n: u64,
    now: Instant,
) -> Vec<u8> {
    let mut b = s.start(KIND_DATA, id, DATA_FIXED + n as usize * RECORD_LEN);
    b.extend_from_slice(&first.to_be_bytes());
    b.extend_from_slice(&(n as u16).to_be_bytes());
    let from = (first - tx.q_first) as usize;
    for (k, e) in tx.queue.range_mut(from..from + n as usize).enumerate() {
        b.extend_from_slice(&e.rec);
        e.last_tx = Some(now);
        let seq = first + k as u64;
        if seq > tx.sent_hwm {
            tx.sent_hwm = seq;
            st.sent += 1;
        } else {
            st.retransmitted += 1;
        }
    }
    s.seal(b)
}

fn poll_peer(
    id: u32,
    p: &mut Peer,
    s: &mut Sealer,
    cfg: &Config,
    now: Instant,
    out: &mut Vec<(u32, Vec<u8>)>,
) {
    let half = cfg.rto / 2;
    // Receiver duties: a NACK carries the cumulative ack too.
    if let Some(epoch) = p.rx.epoch {
        let rx = &mut p.rx;
        let cum = rx.next_expected - 1;
        let nack_due = !rx.buf.is_empty()
            && rx
                .last_nack
                .is_none_or(|t| now.saturating_duration_since(t) >= half);
        if nack_due {
            let mut missing = Vec::new();
            let mut expect = rx.next_expected;
            for &k in rx.buf.keys() {
                if k > expect {
                    missing.push((expect, k - 1));
                    if missing.len() == MAX_NACK_RANGES {
                        break;
                    }
                }
                expect = k + 1;
            }
            out.push((id, s.nack(id, epoch, cum, &missing)));
            rx.last_nack = Some(now);
            rx.ack_pending = false;
            rx.ack_due = None;
            p.stats.nacks_sent += 1;
        } else if rx.ack_pending && rx.ack_due.is_some_and(|t| now >= t) {
            out.push((id, s.ack(id, epoch, cum)));
            rx.ack_pending = false;
            rx.ack_due = None;
        }
    }

    let tx = &mut p.tx;
    if let Some(m) = &mut tx.marker {
        // Nothing flows until the peer has taken the marker.
        if m.last_tx
            .is_none_or(|t| now.saturating_duration_since(t) >= cfg.rto)
        {
            m.last_tx = Some(now);
            let base = m.base;
            out.push((id, s.resync(id, base)));
        }
        return;
    }
    if let Some(t) = tx.rto_from {
        if tx.next_send > tx.q_first && now.saturating_duration_since(t) >= cfg.rto {
            tx.retx.clear();
            tx.retx.push_back((tx.q_first, tx.next_send - 1));
            tx.rto_from = Some(now);
        }
    }
    let mut budget = MAX_FRAMES_PER_POLL;
    let per_frame = RECORDS_PER_FRAME as u64;
    while budget > 0 {
        let Some(&(a, b)) = tx.retx.front() else {
            break;
        };
        let hi = b.min(tx.next_send - 1);
        let mut seq = a.max(tx.q_first);
        while seq <= hi && budget > 0 {
            if !tx.eligible(seq, now, half) {
                seq += 1;
                continue;
            }
            let start = seq;
            while seq <= hi && seq - start < per_frame && tx.eligible(seq, now, half) {
                seq += 1;
            }
            out.push((
                id,
                send_data(id, tx, &mut p.stats, s, start, seq - start, now),
            ));
            budget -= 1;
        }
        if seq > hi {
            tx.retx.pop_front();
        } else if let Some(front) = tx.retx.front_mut() {
            front.0 = seq;
        }
    }
    let window = cfg.window as u64;
    while budget > 0 && tx.next_send < tx.next_seq {
        let in_flight = tx.next_send - tx.q_first;
        if in_flight >= window {
            break;
        }
        let n = per_frame
            .min(tx.next_seq - tx.next_send)
            .min(window - in_flight);
        let first = tx.next_send;
        out.push((id, send_data(id, tx, &mut p.stats, s, first, n, now)));
        tx.next_send += n;
        tx.rto_from.get_or_insert(now);
        budget -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: GroupKey = GroupKey([7; 32]);

    /// xorshift64*: deterministic, seedable.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        /// True with probability `per_mille` / 1000.
        fn chance(&mut self, per_mille: u64) -> bool {
            self.next() % 1000 < per_mille
        }
    }

    fn rec(seq: u64) -> Record {
        let mut r = [seq as u8; RECORD_LEN];
        r[..8].copy_from_slice(&seq.to_be_bytes());
        r
    }

    fn cfg(me: u32, epoch: u64) -> Config {
        Config {
            me,
            epoch,
            ..Config::default()
        }
    }

    fn endpoint(cfg: Config, peers: &[u32]) -> Endpoint {
        let mut e = Endpoint::new(cfg, KEY);
        e.set_peers(peers);
        e
    }

    fn is_data(f: &[u8]) -> bool {
        f.get(1) == Some(&KIND_DATA)
    }

    fn data_first(f: &[u8]) -> u64 {
        be64(f, HEADER_LEN).unwrap()
    }

    type Filter = Box<dyn FnMut(u32, &[u8]) -> bool>;

    /// Members 1 and 2 joined by an in-memory wire with loss, duplication and reordering.
    struct Sim {
        a: Endpoint,
        b: Endpoint,
        now: Instant,
        start: Instant,
        rng: Rng,
        loss: u64,
        dup: u64,
        reorder: u64,
        /// (deliver at, order, to, payload).
        wire: Vec<(Instant, u64, u32, Vec<u8>)>,
        order: u64,
        /// Drops a frame (from, payload) when it returns true.
        filter: Option<Filter>,
        got_a: Vec<Record>,
        got_b: Vec<Record>,
        /// Records each side pushed so far.
        pushed_a: u64,
        pushed_b: u64,
        /// Records 1→2 that will never arrive (discarded by an overflow).
        skip_b: u64,
    }

    impl Sim {
        fn new(seed: u64, loss: u64, dup: u64, reorder: u64, ca: Config, cb: Config) -> Self {
            let now = Instant::now();
            Sim {
                a: endpoint(ca, &[2]),
                b: endpoint(cb, &[1]),
                now,
                start: now,
                rng: Rng(seed | 1),
                loss,
                dup,
                reorder,
                wire: Vec::new(),
                order: 0,
                filter: None,
                got_a: Vec::new(),
                got_b: Vec::new(),
                pushed_a: 0,
                pushed_b: 0,
                skip_b: 0,
            }
        }

        fn clean() -> Self {
            Sim::new(1, 0, 0, 0, cfg(1, 10), cfg(2, 20))
        }

        fn elapsed(&self) -> Duration {
            self.now - self.start
        }

        fn send(&mut self, from: u32, to: u32, f: Vec<u8>) {
            if let Some(filter) = &mut self.filter {
                if filter(from, &f) {
                    return;
                }
            }
            if self.rng.chance(self.loss) {
                return;
            }
            let copies = if self.rng.chance(self.dup) { 2 } else { 1 };
            for _ in 0..copies {
                let mut delay = Duration::from_micros(100);
                if self.rng.chance(self.reorder) {
                    delay += Duration::from_micros(self.rng.next() % 3000);
                }
                self.order += 1;
                self.wire
                    .push((self.now + delay, self.order, to, f.clone()));
            }
        }

        fn step(&mut self, dt: Duration) {
            self.now += dt;
            let now = self.now;
            self.wire.sort_by_key(|w| (w.0, w.1));
            let due = self.wire.iter().take_while(|w| w.0 <= now).count();
            let frames: Vec<_> = self.wire.drain(..due).collect();
            for (_, _, to, f) in frames {
                if to == 2 {
                    for (from, r) in self.b.receive(&f, now) {
                        assert_eq!(from, 1);
                        self.got_b.push(r);
                    }
                } else {
                    for (from, r) in self.a.receive(&f, now) {
                        assert_eq!(from, 2);
                        self.got_a.push(r);
                    }
                }
            }
            let mut out = Vec::new();
            self.a.poll(now, &mut out);
            for (to, f) in out.drain(..) {
                assert_eq!(to, 2);
                self.send(1, to, f);
            }
            self.b.poll(now, &mut out);
            for (to, f) in out.drain(..) {
                assert_eq!(to, 1);
                self.send(2, to, f);
            }
        }

        /// Pushes `to_b` records 1→2 and `to_a` 2→1 as room allows, pumping until all are
        /// delivered and acked.
        fn run(&mut self, to_b: u64, to_a: u64, limit: Duration) {
            loop {
                while self.pushed_a < to_b && self.a.room(2) > 0 {
                    self.pushed_a += 1;
                    let seq = self.a.push(2, &rec(self.pushed_a), self.now);
                    assert_eq!(seq, Some(self.pushed_a));
                }
                while self.pushed_b < to_a && self.b.room(1) > 0 {
                    self.pushed_b += 1;
                    self.b.push(1, &rec(self.pushed_b), self.now);
                }
                self.step(Duration::from_micros(250));
                if self.got_b.len() as u64 + self.skip_b == to_b
                    && self.got_a.len() as u64 == to_a
                    && self.a.acked(2) == to_b
                    && self.b.acked(1) == to_a
                {
                    return;
                }
                assert!(
                    self.elapsed() < limit,
                    "stuck: b got {}/{to_b}, a got {}/{to_a}, acked {} {}",
                    self.got_b.len(),
                    self.got_a.len(),
                    self.a.acked(2),
                    self.b.acked(1)
                );
            }
        }

        /// Lets acks and timers settle until neither side has anything pending.
        fn quiesce(&mut self) {
            for _ in 0..400 {
                self.step(Duration::from_millis(1));
                if self.a.next_deadline().is_none()
                    && self.b.next_deadline().is_none()
                    && self.wire.is_empty()
                {
                    return;
                }
            }
            panic!("never quiet");
        }
    }

    fn assert_in_order(got: &[Record], first: u64) {
        for (i, r) in got.iter().enumerate() {
            assert_eq!(r, &rec(first + i as u64), "record {i}");
        }
    }

    #[test]
    fn lossless_stream_delivers_all_in_order() {
        let n = 100_000;
        let mut sim = Sim::clean();
        sim.run(n, 0, Duration::from_secs(10));
        assert_in_order(&sim.got_b, 1);
        assert_eq!(sim.a.pushed(2), n);
        assert_eq!(sim.a.acked(2), n);
        let st = sim.a.stats(2).unwrap();
        assert_eq!(st.queue, 0);
        assert_eq!(st.lag_ms, 0.0);
        assert_eq!((st.sent, st.acked, st.retransmitted), (n, n, 0));
        assert_eq!(sim.b.stats(1).unwrap().received, n);
        sim.quiesce();
        assert_eq!(sim.a.counters(), Counters::default());
        assert_eq!(sim.b.counters(), Counters::default());
    }

    #[test]
    fn the_default_acks_a_received_batch_at_once_with_one_frame() {
        let t0 = Instant::now();
        let mut a = endpoint(cfg(1, 10), &[2]);
        let mut b = endpoint(cfg(2, 20), &[1]);
        for i in 1..=90 {
            a.push(2, &rec(i), t0);
        }
        let mut out = Vec::new();
        a.poll(t0, &mut out);
        assert_eq!(out.len(), 3, "90 records, 30 per frame");
        for (_, f) in out.drain(..) {
            assert_eq!(b.receive(&f, t0).len(), 30);
        }
        // The same instant: no ack delay (the active member holds a first reply until it).
        b.poll(t0, &mut out);
        assert_eq!(out.len(), 1, "one ack for the whole batch");
        let (_, ack) = out.pop().unwrap();
        a.receive(&ack, t0);
        assert_eq!(a.acked(2), 90);
    }

    #[test]
    fn lossy_reordering_link_delivers_exactly_once() {
        let n = 20_000;
        // Delayed acks (as a loaded receiver's would be) also exercise duplicates.
        let delayed = |me, epoch| Config {
            ack_every: Duration::from_millis(2),
            ..cfg(me, epoch)
        };
        let mut sim = Sim::new(42, 50, 20, 100, delayed(1, 10), delayed(2, 20));
        sim.run(n, n / 4, Duration::from_secs(60));
        assert_in_order(&sim.got_b, 1);
        assert_in_order(&sim.got_a, 1);
        let (sa, sb) = (sim.a.stats(2).unwrap(), sim.b.stats(1).unwrap());
        assert!(sa.retransmitted > 0 && sb.retransmitted > 0);
        assert_eq!(sa.lost + sb.lost, 0);
        assert!(sb.nacks_sent > 0);
        assert!(sb.duplicates > 0);
        sim.quiesce();
    }

    #[test]
    fn tail_loss_recovers_by_rto() {
        let mut sim = Sim::clean();
        let mut dropped = false;
        sim.filter = Some(Box::new(move |from, f: &[u8]| {
            if from == 1 && !dropped && is_data(f) && data_first(f) == 91 {
                dropped = true;
                return true;
            }
            false
        }));
        sim.run(95, 0, Duration::from_secs(1));
        assert_in_order(&sim.got_b, 1);
        // No gap was visible, so only the timer could have found the loss.
        assert_eq!(sim.b.stats(1).unwrap().nacks_sent, 0);
        assert!(sim.a.stats(2).unwrap().retransmitted >= 5);
        assert!(sim.elapsed() >= Config::default().rto);
    }

    /// One authentic DATA frame 1→2 carrying record 1.
    fn data_frame(a: &mut Endpoint, now: Instant) -> Vec<u8> {
        let seq = a.pushed(2) + 1;
        a.push(2, &rec(seq), now);
        let mut out = Vec::new();
        a.poll(now, &mut out);
        out.into_iter().find(|(_, f)| is_data(f)).unwrap().1
    }

    #[test]
    fn forged_and_garbage_frames_are_counted_not_delivered() {
        let now = Instant::now();
        let mut b = endpoint(cfg(2, 20), &[1]);

        let mut a = endpoint(cfg(1, 10), &[2, 3]);
        let good = data_frame(&mut a, now);
        let mut flipped = good.clone();
        flipped[HEADER_LEN + DATA_FIXED + 5] ^= 0x10;
        assert!(b.receive(&flipped, now).is_empty());
        assert_eq!(b.counters().auth_failed, 1);

        let mut wrong_key = Endpoint::new(cfg(1, 10), GroupKey([8; 32]));
        wrong_key.set_peers(&[2]);
        assert!(b.receive(&data_frame(&mut wrong_key, now), now).is_empty());
        assert_eq!(b.counters().auth_failed, 2);

        let mut stranger = endpoint(cfg(9, 10), &[2]);
        assert!(b.receive(&data_frame(&mut stranger, now), now).is_empty());
        assert_eq!(b.counters().unknown_peer, 1);

        let mut other_group = endpoint(
            Config {
                group: 5,
                ..cfg(1, 10)
            },
            &[2],
        );
        assert!(b
            .receive(&data_frame(&mut other_group, now), now)
            .is_empty());
        assert_eq!(b.counters().unknown_peer, 2);

        a.push(3, &rec(1), now);
        let mut out = Vec::new();
        a.poll(now, &mut out);
        let to_3 = out.into_iter().find(|(p, _)| *p == 3).unwrap().1;
        assert!(b.receive(&to_3, now).is_empty());
        assert_eq!(b.counters().wrong_dst, 1);

        // Every truncation of a valid frame, and random bytes of every length up to 100.
        for len in 0..good.len() {
            assert!(b.receive(&good[..len], now).is_empty());
        }
        let mut rng = Rng(99);
        for len in 0..100 {
            let junk: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            assert!(b.receive(&junk, now).is_empty());
        }
        let c = b.counters();
        assert_eq!(c.malformed, good.len() as u64 + 100);
        assert_eq!(b.stats(1).unwrap().received, 0);

        // The authentic frame still gets through after all that.
        assert_eq!(b.receive(&good, now), vec![(1, rec(1))]);
    }

    #[test]
    fn mutated_frames_never_panic() {
        let now = Instant::now();
        let mut a = endpoint(cfg(1, 10), &[2]);
        let mut b = endpoint(cfg(2, 20), &[1]);
        let good = data_frame(&mut a, now);
        let mut rng = Rng(7);
        for i in 0..20_000u64 {
            let mut f = good.clone();
            match i % 3 {
                0 => {
                    let at = (rng.next() as usize) % f.len();
                    f[at] ^= 1 << (rng.next() % 8);
                }
                1 => f.truncate((rng.next() as usize) % f.len()),
                _ => f.extend((0..1 + rng.next() % 40).map(|_| rng.next() as u8)),
            }
            assert!(b.receive(&f, now).is_empty());
        }
        let c = b.counters();
        assert_eq!(
            c.malformed + c.auth_failed + c.unknown_peer + c.wrong_dst,
            20_000
        );
    }

    #[test]
    fn replays_are_dropped() {
        let t0 = Instant::now();
        let mut a = endpoint(cfg(1, 100), &[2]);
        let mut b = endpoint(cfg(2, 20), &[1]);
        let first = data_frame(&mut a, t0);
        assert_eq!(b.receive(&first, t0), vec![(1, rec(1))]);
        let t1 = t0 + Duration::from_millis(5);
        assert!(b.receive(&first, t1).is_empty());
        assert_eq!(b.counters().replayed, 1);
        assert_eq!(b.stats(1).unwrap().received, 1);
        // A later frame of the old stream, never delivered.
        let unseen = data_frame(&mut a, t1);

        // Member 1 restarts with a higher epoch; its new stream starts at 1.
        let mut a2 = endpoint(cfg(1, 200), &[2]);
        let new = data_frame(&mut a2, t1);
        assert_eq!(b.receive(&new, t1), vec![(1, rec(1))]);
        assert_eq!(b.events(), vec![Event::PeerRestarted(1)]);
        assert!(b.receive(&first, t1).is_empty());
        assert!(b.receive(&unseen, t1).is_empty());
        assert_eq!(b.counters().replayed, 3);
        assert_eq!(b.receive(&data_frame(&mut a2, t1), t1), vec![(1, rec(2))]);
        assert!(b.events().is_empty());
    }

    #[test]
    fn replay_window_tracks_ids() {
        let mut w = ReplayWindow::default();
        for id in [5, 3, 70, 1000, 4] {
            assert!(w.fresh(id));
            w.mark(id);
            assert!(!w.fresh(id));
        }
        assert!(w.fresh(6) && w.fresh(999));
        assert!(w.mark(2000));
        assert!(!w.fresh(976) && w.fresh(977) && !w.fresh(1000));
        w.mark(5000);
        assert!(!w.fresh(2000) && w.fresh(4999));
    }

    #[test]
    fn restarted_sender_resumes_cleanly() {
        let mut sim = Sim::clean();
        sim.run(500, 0, Duration::from_secs(1));
        // Member 2 restarts: member 1 must restart its stream to it at the unacked point.
        sim.b = endpoint(cfg(2, 21), &[1]);
        sim.run(1500, 0, Duration::from_secs(2));
        assert_eq!(sim.a.events(), vec![Event::PeerRestarted(2)]);
        assert_eq!(sim.a.stats(2).unwrap().resyncs, 0);
        // The new process gets the stream from where the old one's acks stopped.
        assert_in_order(&sim.got_b, 1);
        assert_eq!(sim.b.stats(1).unwrap().received, 1000);
    }

    #[test]
    fn overflow_resyncs_once_after_marker_ack() {
        let ca = Config {
            queue_max: 64,
            ..cfg(1, 10)
        };
        let mut sim = Sim::new(3, 0, 0, 0, ca, cfg(2, 20));
        let cut = std::rc::Rc::new(std::cell::Cell::new(true));
        let c = cut.clone();
        sim.filter = Some(Box::new(move |_, _| c.get()));
        for seq in 1..=64 {
            sim.a.push(2, &rec(seq), sim.now);
        }
        sim.step(Duration::from_millis(1)); // sends 1..=64 into the void
        for seq in 65..=200 {
            assert_eq!(sim.a.push(2, &rec(seq), sim.now), Some(seq));
        }
        sim.pushed_a = 200;
        for _ in 0..100 {
            sim.step(Duration::from_millis(1));
        }
        let st = sim.a.stats(2).unwrap();
        assert_eq!(
            (st.overflowed, st.lost, st.resyncs, st.queue),
            (192, 64, 0, 8)
        );
        assert_eq!(sim.a.acked(2), 192);
        assert!(sim.a.events().is_empty());

        cut.set(false);
        sim.skip_b = 192;
        sim.run(250, 0, Duration::from_secs(2));
        assert_eq!(sim.a.events(), vec![Event::ResyncNeeded(2)]);
        let st = sim.a.stats(2).unwrap();
        assert_eq!((st.resyncs, st.queue), (1, 0));
        assert_eq!(sim.got_b.len(), 58);
        assert_in_order(&sim.got_b, 193);
        sim.quiesce();
        assert!(sim.a.events().is_empty());
        assert!(sim.b.events().is_empty());
    }

    #[test]
    fn random_links_deliver_in_order_exactly_once() {
        // (loss, duplication, reordering) per mille.
        let links = [
            (0, 0, 300),
            (10, 10, 50),
            (50, 50, 200),
            (100, 0, 0),
            (200, 100, 300),
        ];
        for seed in 1..=3u64 {
            for &(loss, dup, reorder) in &links {
                let ca = Config {
                    window: 512,
                    ..cfg(1, 10)
                };
                let mut sim = Sim::new(seed * 7919, loss, dup, reorder, ca, cfg(2, 20));
                sim.run(3000, 1000, Duration::from_secs(120));
                assert_in_order(&sim.got_b, 1);
                assert_in_order(&sim.got_a, 1);
                for st in [sim.a.stats(2).unwrap(), sim.b.stats(1).unwrap()] {
                    assert_eq!((st.lost, st.overflowed, st.queue), (0, 0, 0));
                }
                assert!(sim.a.events().is_empty() && sim.b.events().is_empty());
                sim.quiesce();
            }
        }
    }

    #[test]
    fn readded_peers_resume() {
        let mut sim = Sim::clean();
        let tap = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let t = tap.clone();
        sim.filter = Some(Box::new(move |from, f: &[u8]| {
            if from == 1 && is_data(f) {
                t.borrow_mut().push(f.to_vec());
            }
            false
        }));
        sim.run(500, 0, Duration::from_secs(1));
        sim.a.set_peers(&[]);
        sim.a.set_peers(&[2]);
        assert_eq!(sim.a.pushed(2), 500);
        sim.run(1000, 0, Duration::from_secs(1));
        sim.b.set_peers(&[3]);
        sim.b.set_peers(&[1, 3]);
        sim.run(1500, 0, Duration::from_secs(1));
        assert_in_order(&sim.got_b, 1);
        let old = tap.borrow()[0].clone();
        assert!(sim.b.receive(&old, sim.now).is_empty());
        assert_eq!(sim.b.counters().replayed, 1);
        assert!(sim.a.events().is_empty() && sim.b.events().is_empty());
        assert_eq!(sim.a.stats(2).unwrap().resyncs, 0);
        sim.quiesce();
    }

    #[test]
    fn deadline_and_room() {
        let now = Instant::now();
        let mut a = endpoint(cfg(1, 10), &[2]);
        assert_eq!(a.next_deadline(), None);
        assert_eq!(a.push(7, &rec(1), now), None);
        assert_eq!(a.room(2), 65536);
        a.push(2, &rec(1), now);
        assert_eq!(a.room(2), 65535);
        assert_eq!(a.next_deadline(), Some(now));
        let mut out = Vec::new();
        a.poll(now, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].1.len(),
            HEADER_LEN + DATA_FIXED + RECORD_LEN + TAG_LEN
        );
        assert_eq!(a.next_deadline(), Some(now + a.cfg.rto));
        a.set_peers(&[3]);
        assert_eq!(a.stats(2), None);
        assert_eq!(a.next_deadline(), None);
    }

    #[test]
    fn frame_size_math() {
        assert_eq!(RECORDS_PER_FRAME, 30);
        let now = Instant::now();
        let mut a = endpoint(cfg(1, 10), &[2]);
        for seq in 1..=31 {
            a.push(2, &rec(seq), now);
        }
        let mut out = Vec::new();
        a.poll(now, &mut out);
        assert_eq!(out.len(), 2);
        assert!(out[0].1.len() <= MAX_PAYLOAD);
        assert_eq!(out[0].1.len(), 1496);
    }
}
