//! A member's sync thread, without I/O: routes its workers' records to each bucket's
//! backup through the reliable [`Endpoint`], installs the records it receives in the
//! backup store, computes the acknowledgement watermarks that release held first replies,
//! and starts bulk resyncs when backups change or a stream had to be resynced.
//!
//! Records, frames and bucket tables come in by calls; frames and watermarks go out as
//! return values. What the engine shares with the workers (their tickets and resync
//! progress, the backup store, their counters) it sees through [`Workers`], passed in by
//! the I/O layer (`io.rs`) that owns the channel and the tap.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{atomic::Ordering, MutexGuard},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::{
    proto::{Endpoint, Event, LinkStats, Record},
    store::BackupStore,
    tap::{Bucketer, Outbound, TapStats, SLOTS},
};
use crate::conntrack::{Connection, FlowKey};

/// The member's workers as the engine sees them.
pub trait Workers {
    /// The last ticket worker `slot` issued.
    fn issued(&self, slot: usize) -> u64;
    /// Every worker has carried out resync `generation`.
    fn applied_everywhere(&self, generation: u64) -> bool;
    /// Asks every worker to re-send the connections of the marked buckets; returns the
    /// request's generation.
    fn request_resync(&self, buckets: Vec<bool>, mask: u32) -> u64;
    /// The copies this member holds for others (the workers take connections over from it).
    fn store(&self) -> MutexGuard<'_, BackupStore>;
    fn stats(&self) -> &TapStats;
}

/// The bucket table as a member needs it, from the orchestrator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    pub version: u64,
    /// (active, backup) of each bucket; 0 for none. A power of two long.
    pub buckets: Vec<(u32, u32)>,
    /// A member joining the group that each bucket's records also go to (0: none; empty:
    /// no join under way): it takes over or backs up these buckets once it holds them.
    pub extra: Vec<u32>,
    /// The group's other members that sync, with their sync port's MAC.
    pub peers: Vec<(u32, [u8; 6])>,
}

/// Sync figures of one peer, for `baton sync stat`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PeerReport {
    pub id: u32,
    #[serde(flatten)]
    pub link: LinkStats,
}

/// A member's sync figures.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SyncReport {
    pub peers: Vec<PeerReport>,
    /// Copies held for other members.
    pub backup_connections: u64,
    /// The bucket-table version the member syncs by.
    pub table_version: u64,
    /// The latest version whose bulk sync (connections sent to their new backups) is
    /// acknowledged.
    #[serde(default)]
    pub synced_version: u64,
    /// Frames dropped: not authentic, replayed, from a host that is not a member, garbage.
    pub auth_failed: u64,
    pub replayed: u64,
    pub unknown_peer: u64,
    pub malformed: u64,
    /// First replies released on the backup's acknowledgement / on the hold limit.
    pub held: u64,
    pub hold_timeouts: u64,
    /// Connections taken over from the backup store after a failover.
    pub taken_over: u64,
    /// When the latest burst of takeovers began (wall clock, ns since the Unix epoch).
    #[serde(default)]
    pub takeover_burst_ns: u64,
    /// Records lost between workers and the sync thread (channel full).
    pub channel_full: u64,
}

pub struct Engine {
    me: u32,
    endpoint: Endpoint,
    bucketer: Bucketer,
    view: Option<View>,
    macs: BTreeMap<u32, [u8; 6]>,
    /// Per worker slot: records pushed and not yet acknowledged, and the last ticket seen.
    outstanding: Vec<VecDeque<(u32, u64, u64)>>,
    last_ticket: [u64; SLOTS],
    /// Per worker slot: every record up to this ticket is safe at its backup.
    watermarks: [u64; SLOTS],
    last_expiry: Instant,
    /// The bulk sync a bucket-table change started, until its records are acknowledged.
    pending: Option<PendingSync>,
    /// The latest table version whose bulk sync is complete.
    synced_version: u64,
}

/// A bulk sync in progress: first every worker re-sends what the resync generation asks
/// for; then everything issued until then must be acknowledged.
struct PendingSync {
    version: u64,
    generation: u64,
    /// Per slot, the last ticket issued once every worker had re-sent; per peer, the last
    /// record pushed then.
    marks: Option<([u64; SLOTS], BTreeMap<u32, u64>)>,
}

impl Engine {
    /// `bucketer` is the flow hash the orchestrator distributes by.
    pub fn new(me: u32, endpoint: Endpoint, bucketer: Bucketer) -> Self {
        Self {
            me,
            endpoint,
            bucketer,
            view: None,
            macs: BTreeMap::new(),
            outstanding: vec![VecDeque::new(); SLOTS],
            last_ticket: [0; SLOTS],
            watermarks: [0; SLOTS],
            last_expiry: Instant::now(),
            pending: None,
            synced_version: 0,
        }
    }

    pub fn view(&self) -> Option<&View> {
        self.view.as_ref()
    }

    /// A new bucket table: peers change, and connections whose backup changed are sent to
    /// their new backup (bulk sync), from the workers' tables and from the copies this
    /// member took over.
    pub fn set_view(&mut self, view: View, now: Instant, workers: &impl Workers) {
        if view.buckets.is_empty() || !view.buckets.len().is_power_of_two() {
            tracing::warn!(
                len = view.buckets.len(),
                "bucket table ignored: not a power of two"
            );
            return;
        }
        let peers: Vec<u32> = view
            .peers
            .iter()
            .map(|p| p.0)
            .filter(|p| *p != self.me)
            .collect();
        self.endpoint.set_peers(&peers);
        self.macs = view.peers.iter().copied().collect();
        let me = self.me;
        let old = self.view.take();
        let changed: Vec<bool> = view
            .buckets
            .iter()
            .enumerate()
            .map(|(i, &(active, backup))| {
                let before = old
                    .as_ref()
                    .filter(|o| o.buckets.len() == view.buckets.len())
                    .map(|o| (o.buckets[i], o.extra.get(i).copied().unwrap_or(0)));
                let extra = view.extra.get(i).copied().unwrap_or(0);
                let (old_backup, old_extra) = before.map_or((0, 0), |((a, b), e)| {
                    (
                        if a == active { b } else { 0 },
                        if a == active { e } else { 0 },
                    )
                });
                active == me
                    && ((backup != 0 && backup != old_backup) || (extra != 0 && extra != old_extra))
            })
            .collect();
        let mask = view.buckets.len() as u32 - 1;
        // Copies of buckets this member now owns go to those buckets' backups; copies of
        // buckets it neither owns nor backs up are dropped. The store is read before the
        // workers are asked to resync: a copy a worker takes over after this read is in
        // its table when it resyncs; read after, a copy taken over in between (after the
        // worker's snapshot) would be in neither and never reach its new backup.
        let bucketer = self.bucketer.clone();
        let of = |k: &FlowKey| {
            let i = (bucketer(k) & mask) as usize;
            (view.buckets[i], view.extra.get(i).copied().unwrap_or(0))
        };
        let (records, dropped) = {
            let mut store = workers.store();
            let records = store.records_where(now, |k| changed[(bucketer(k) & mask) as usize]);
            let dropped = store.remove_where(|k| {
                let ((a, b), e) = of(k);
                a != me && b != me && e != me
            });
            (records, dropped)
        };
        let moved = changed.iter().filter(|c| **c).count();
        if moved > 0 {
            let generation = workers.request_resync(changed.clone(), mask);
            self.pending = Some(PendingSync {
                version: view.version,
                generation,
                marks: None,
            });
        } else if let Some(p) = self.pending.as_mut() {
            // The resync under way covers this version too (requests accumulate).
            p.version = view.version;
            p.marks = None;
        } else {
            self.synced_version = view.version;
        }
        tracing::info!(
            version = view.version,
            peers = ?peers,
            buckets_to_resync = moved,
            copies_resent = records.len(),
            copies_dropped = dropped,
            "bucket table"
        );
        self.view = Some(view);
        for r in records {
            self.route(&r, now);
        }
    }

    /// Pushes a record to its bucket's backup (and to a joining member that will hold the
    /// bucket); returns where it went.
    fn route(&mut self, rec: &Record, now: Instant) -> [Option<(u32, u64)>; 2] {
        let mut sent = [None, None];
        let Some(view) = self.view.as_ref() else {
            return sent;
        };
        let Some((_, conn)) = Connection::decode(rec, 0) else {
            return sent;
        };
        let mask = view.buckets.len() as u32 - 1;
        let i = ((self.bucketer)(&conn.key) & mask) as usize;
        let (_, backup) = view.buckets[i];
        let extra = view.extra.get(i).copied().unwrap_or(0);
        let extra = if extra == backup { 0 } else { extra };
        for (slot, peer) in sent.iter_mut().zip([backup, extra]) {
            if peer != 0 && peer != self.me && self.macs.contains_key(&peer) {
                *slot = self.endpoint.push(peer, rec, now).map(|seq| (peer, seq));
            }
        }
        sent
    }

    /// A worker's record (its tickets come in order per slot): pushed to its backups.
    pub fn on_record(&mut self, o: &Outbound, now: Instant) {
        let slot = o.slot as usize % SLOTS;
        self.last_ticket[slot] = o.ticket;
        for (peer, seq) in self.route(&o.record, now).into_iter().flatten() {
            self.outstanding[slot].push_back((peer, seq, o.ticket));
        }
    }

    /// One frame from the sync port (the bytes after the Ethernet header): the records it
    /// completes go into the backup store.
    pub fn on_frame(&mut self, payload: &[u8], now: Instant, workers: &impl Workers) {
        let delivered = self.endpoint.receive(payload, now);
        if delivered.is_empty() {
            return;
        }
        let mut store = workers.store();
        for (from, rec) in delivered {
            store.apply(from, &rec, now);
        }
    }

    /// Per worker slot, the ticket up to which every record is safe at its backup (as of
    /// the last `poll`): the I/O layer publishes them to the workers.
    pub fn watermarks(&self) -> &[u64; SLOTS] {
        &self.watermarks
    }

    /// Frames to send now, each with its destination MAC; also updates the watermarks,
    /// reacts to stream events and ages the backup store.
    pub fn poll(
        &mut self,
        now: Instant,
        out: &mut Vec<([u8; 6], Vec<u8>)>,
        workers: &impl Workers,
    ) {
        let mut frames = Vec::new();
        self.endpoint.poll(now, &mut frames);
        for (peer, payload) in frames {
            if let Some(mac) = self.macs.get(&peer) {
                out.push((*mac, payload));
            }
        }
        for e in self.endpoint.events() {
            match e {
                Event::ResyncNeeded(peer) => self.resync_peer(peer, now, workers),
                Event::PeerRestarted(peer) => tracing::info!(peer, "sync peer restarted"),
            }
        }
        for slot in 0..SLOTS {
            let q = &mut self.outstanding[slot];
            while let Some(&(peer, seq, _)) = q.front() {
                // A peer that left acknowledges nothing any more: its records are moot.
                if self.endpoint.acked(peer) >= seq || !self.macs.contains_key(&peer) {
                    q.pop_front();
                } else {
                    break;
                }
            }
            let mark = q.front().map_or(self.last_ticket[slot], |&(_, _, t)| t - 1);
            self.watermarks[slot] = mark;
        }
        self.check_pending(workers);
        if now.saturating_duration_since(self.last_expiry) >= Duration::from_secs(1) {
            self.last_expiry = now;
            workers.store().expire(now);
        }
    }

    /// Completes the pending bulk sync once every worker has re-sent and every record
    /// issued until then is acknowledged.
    fn check_pending(&mut self, workers: &impl Workers) {
        let Some(p) = self.pending.as_mut() else {
            return;
        };
        if p.marks.is_none() {
            if !workers.applied_everywhere(p.generation) {
                return;
            }
            let tickets = std::array::from_fn(|s| workers.issued(s));
            let pushed = self
                .macs
                .keys()
                .map(|peer| (*peer, self.endpoint.pushed(*peer)))
                .collect();
            p.marks = Some((tickets, pushed));
        }
        let Some((tickets, pushed)) = p.marks.as_ref() else {
            return;
        };
        let slots_done = (0..SLOTS).all(|s| self.watermarks[s] >= tickets[s]);
        let peers_done = pushed
            .iter()
            .all(|(peer, seq)| !self.macs.contains_key(peer) || self.endpoint.acked(*peer) >= *seq);
        if slots_done && peers_done {
            self.synced_version = p.version;
            tracing::info!(version = p.version, "bulk sync complete");
            self.pending = None;
        }
    }

    /// The stream to `peer` lost records: everything it backs up for this member goes
    /// again.
    fn resync_peer(&mut self, peer: u32, now: Instant, workers: &impl Workers) {
        let Some(view) = self.view.as_ref() else {
            return;
        };
        let me = self.me;
        let marked: Vec<bool> = view
            .buckets
            .iter()
            .map(|&(a, b)| a == me && b == peer)
            .collect();
        let mask = view.buckets.len() as u32 - 1;
        let bucketer = self.bucketer.clone();
        let records = workers
            .store()
            .records_where(now, |k| marked[(bucketer(k) & mask) as usize]);
        tracing::warn!(
            peer,
            copies = records.len(),
            "sync stream resynced: bulk resend"
        );
        workers.request_resync(marked, mask);
        for r in records {
            self.route(&r, now);
        }
    }

    /// When `poll` should run again at the latest.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.endpoint.next_deadline()
    }

    pub fn report(&self, workers: &impl Workers) -> SyncReport {
        let c = self.endpoint.counters();
        let t = workers.stats();
        SyncReport {
            peers: self
                .macs
                .keys()
                .filter(|p| **p != self.me)
                .filter_map(|p| {
                    self.endpoint
                        .stats(*p)
                        .map(|link| PeerReport { id: *p, link })
                })
                .collect(),
            backup_connections: workers.store().len() as u64,
            table_version: self.view.as_ref().map_or(0, |v| v.version),
            synced_version: self.synced_version,
            auth_failed: c.auth_failed,
            replayed: c.replayed,
            unknown_peer: c.unknown_peer + c.wrong_dst,
            malformed: c.malformed,
            held: t.held.load(Ordering::Relaxed),
            hold_timeouts: t.hold_timeouts.load(Ordering::Relaxed),
            taken_over: t.taken_over.load(Ordering::Relaxed),
            takeover_burst_ns: t.takeover_burst_ns.load(Ordering::Relaxed),
            channel_full: t.channel_full.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    //! Two engines joined by a simulated link that loses, reorders and duplicates frames:
    //! every record the active member's worker hands its engine ends up in the backup's
    //! store, and the worker's watermark reaches its last ticket (the acks came back).

    use std::{
        collections::{BTreeSet, HashSet},
        hash::{DefaultHasher, Hash, Hasher},
        sync::{atomic::AtomicU64, Arc, Mutex},
    };

    use baton_common::net::IPPROTO_UDP;

    use super::*;
    use crate::{
        conntrack::{ConnTable, Packet, RecordOp, Timeouts},
        sync::proto::{Config, GroupKey},
    };

    /// SplitMix64, as the cluster simulation uses: seeded, reproducible.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn chance(&mut self, per_mille: u64) -> bool {
            self.next() % 1000 < per_mille
        }
    }

    /// The workers' side, without workers: nothing issued, every resync carried out.
    struct FakeWorkers {
        store: Mutex<BackupStore>,
        stats: TapStats,
        generation: AtomicU64,
    }

    impl FakeWorkers {
        fn new() -> Self {
            Self {
                store: Mutex::new(BackupStore::new(1 << 16)),
                stats: TapStats::default(),
                generation: AtomicU64::new(0),
            }
        }
    }

    impl Workers for FakeWorkers {
        fn issued(&self, _slot: usize) -> u64 {
            0
        }
        fn applied_everywhere(&self, _generation: u64) -> bool {
            true
        }
        fn request_resync(&self, _buckets: Vec<bool>, _mask: u32) -> u64 {
            self.generation.fetch_add(1, Ordering::Relaxed) + 1
        }
        fn store(&self) -> MutexGuard<'_, BackupStore> {
            self.store.lock().unwrap()
        }
        fn stats(&self) -> &TapStats {
            &self.stats
        }
    }

    const MAC: [[u8; 6]; 2] = [[2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]];

    fn bucketer() -> Bucketer {
        Arc::new(|k: &FlowKey| {
            let mut h = DefaultHasher::new();
            k.hash(&mut h);
            h.finish() as u32
        })
    }

    fn engine(me: u32, rto: Duration) -> Engine {
        let cfg = Config {
            me,
            epoch: u64::from(me) * 10,
            rto,
            ..Config::default()
        };
        Engine::new(me, Endpoint::new(cfg, &GroupKey([7; 32])), bucketer())
    }

    /// Member 1 is every bucket's active, member 2 its backup.
    fn view() -> View {
        View {
            version: 1,
            buckets: vec![(1, 2); 8],
            extra: Vec::new(),
            peers: vec![(1, MAC[0]), (2, MAC[1])],
        }
    }

    /// `n` distinct UDP connections, as their records.
    fn records(n: usize) -> Vec<Record> {
        let mut t = ConnTable::new(n, Timeouts::default());
        for i in 0..n {
            let p = Packet {
                src: "198.18.0.1".parse().unwrap(),
                dst: "198.19.0.1".parse().unwrap(),
                proto: IPPROTO_UDP,
                sport: 1000 + i as u16,
                dport: 53,
                flags: 0,
            };
            t.track(&p, 0, || true);
        }
        t.snapshot()
            .map(|c| c.encode(RecordOp::Upsert, 0))
            .collect()
    }

    struct Link {
        rng: Rng,
        /// Per mille of frames lost, duplicated, delayed past later ones.
        loss: u64,
        dup: u64,
        reorder: u64,
        /// (deliver at, order, to member index, payload).
        wire: Vec<(Instant, u64, usize, Vec<u8>)>,
        order: u64,
    }

    impl Link {
        fn send(&mut self, now: Instant, to: usize, f: &[u8]) {
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
                self.wire.push((now + delay, self.order, to, f.to_vec()));
            }
        }

        fn due(&mut self, now: Instant) -> Vec<(usize, Vec<u8>)> {
            self.wire.sort_by_key(|w| (w.0, w.1));
            let n = self.wire.iter().take_while(|w| w.0 <= now).count();
            self.wire.drain(..n).map(|(_, _, to, f)| (to, f)).collect()
        }
    }

    /// Runs `n` records from member 1's worker through the pair; Err says what was
    /// missing when the simulated time ran out.
    fn pair(
        seed: u64,
        n: usize,
        (loss, dup, reorder): (u64, u64, u64),
        rto: Duration,
    ) -> Result<(), String> {
        let workers = [FakeWorkers::new(), FakeWorkers::new()];
        let mut engines = [engine(1, rto), engine(2, rto)];
        let start = Instant::now();
        let mut now = start;
        for (e, w) in engines.iter_mut().zip(&workers) {
            e.set_view(view(), now, w);
        }
        let mut link = Link {
            rng: Rng(seed),
            loss,
            dup,
            reorder,
            wire: Vec::new(),
            order: 0,
        };
        let sent = records(n);
        let mut next = 0;
        let mut out = Vec::new();
        while now - start < Duration::from_secs(20) {
            // A worker's burst: up to 64 records a step.
            for r in sent.iter().skip(next).take(64) {
                next += 1;
                let o = Outbound {
                    slot: 0,
                    ticket: next as u64,
                    record: *r,
                };
                engines[0].on_record(&o, now);
            }
            now += Duration::from_micros(250);
            for (to, f) in link.due(now) {
                engines[to].on_frame(&f, now, &workers[to]);
            }
            for (i, (e, w)) in engines.iter_mut().zip(&workers).enumerate() {
                e.poll(now, &mut out, w);
                for (mac, f) in out.drain(..) {
                    assert_eq!(mac, MAC[1 - i], "frames go to the peer");
                    link.send(now, 1 - i, &f);
                }
            }
            let acked = engines[0].watermarks()[0] == n as u64;
            if acked && next == n && workers[1].store().len() == n {
                break;
            }
        }
        let held: BTreeSet<Record> = workers[1]
            .store()
            .records_where(now, |_| true)
            .into_iter()
            .collect();
        let keys = |rs: &mut dyn Iterator<Item = &Record>| -> HashSet<FlowKey> {
            rs.filter_map(|r| Connection::decode(r, 0).map(|(_, c)| c.key))
                .collect()
        };
        let want = keys(&mut sent.iter());
        let got = keys(&mut held.iter());
        let mark = engines[0].watermarks()[0];
        if got != want || mark != n as u64 {
            return Err(format!(
                "seed {seed}: the backup holds {} of {n} connections, watermark {mark}",
                got.intersection(&want).count()
            ));
        }
        Ok(())
    }

    #[test]
    fn a_clean_link_delivers_every_record() {
        pair(1, 500, (0, 0, 0), Config::default().rto).unwrap();
    }

    #[test]
    fn lossy_reordering_duplicating_links_deliver_every_record() {
        for seed in 1..=40 {
            let link = [(50, 20, 100), (200, 50, 300), (10, 200, 50)][seed as usize % 3];
            pair(seed, 400, link, Config::default().rto).unwrap();
        }
    }

    #[test]
    fn without_retransmission_loss_loses_records() {
        // The negative control: an RTO longer than the run switches retransmission off
        // (a record is sent again only after rto/2), and the check above must then fail.
        let off = Duration::from_secs(3600);
        pair(7, 400, (0, 0, 0), off).expect("a clean link needs no retransmission");
        for seed in 1..=5 {
            assert!(
                pair(seed, 400, (100, 0, 0), off).is_err(),
                "seed {seed}: the check passed without retransmissions"
            );
        }
    }
}
