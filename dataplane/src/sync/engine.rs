//! A member's sync thread, without I/O: routes its workers' records to each bucket's
//! backup through the reliable [`Endpoint`], installs the records it receives in the
//! backup store, publishes the acknowledgement watermarks that release held first replies,
//! and starts bulk resyncs when backups change or a stream had to be resynced.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use crossbeam_channel::Receiver;
use serde::{Deserialize, Serialize};

use super::{
    proto::{Endpoint, Event, LinkStats, Record},
    tap::{Outbound, SyncTap, SLOTS},
};
use crate::conntrack::{Connection, FlowKey};

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
    tap: Arc<SyncTap>,
    records: Receiver<Outbound>,
    view: Option<View>,
    macs: BTreeMap<u32, [u8; 6]>,
    /// Per worker slot: records pushed and not yet acknowledged, and the last ticket seen.
    outstanding: Vec<VecDeque<(u32, u64, u64)>>,
    last_ticket: [u64; SLOTS],
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

/// Records taken from the channel per step, so receiving keeps its turn.
const DRAIN_MAX: usize = 8192;

impl Engine {
    pub fn new(
        me: u32,
        endpoint: Endpoint,
        tap: Arc<SyncTap>,
        records: Receiver<Outbound>,
    ) -> Self {
        Self {
            me,
            endpoint,
            tap,
            records,
            view: None,
            macs: BTreeMap::new(),
            outstanding: vec![VecDeque::new(); SLOTS],
            last_ticket: [0; SLOTS],
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
    pub fn set_view(&mut self, view: View, now: Instant) {
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
        // worker's snapshot) would be in neither and never reach its new backup (seen
        // under CPU load: connections lost at a second failure).
        let bucketer = self.tap.bucketer.clone();
        let of = |k: &FlowKey| {
            let i = (bucketer(k) & mask) as usize;
            (view.buckets[i], view.extra.get(i).copied().unwrap_or(0))
        };
        let (records, dropped) = {
            let mut store = self.tap.store.lock().unwrap_or_else(|e| e.into_inner());
            let records = store.records_where(now, |k| changed[(bucketer(k) & mask) as usize]);
            let dropped = store.remove_where(|k| {
                let ((a, b), e) = of(k);
                a != me && b != me && e != me
            });
            (records, dropped)
        };
        let moved = changed.iter().filter(|c| **c).count();
        if moved > 0 {
            self.tap.request_resync(changed.clone(), mask);
            let generation = self.tap.resync().map_or(0, |r| r.generation);
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
        let i = ((self.tap.bucketer)(&conn.key) & mask) as usize;
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

    /// Takes the workers' records and pushes them to their backups.
    pub fn drain_records(&mut self, now: Instant) -> usize {
        let mut n = 0;
        while n < DRAIN_MAX {
            let Ok(o) = self.records.try_recv() else {
                break;
            };
            n += 1;
            let slot = o.slot as usize % SLOTS;
            self.last_ticket[slot] = o.ticket;
            for (peer, seq) in self.route(&o.record, now).into_iter().flatten() {
                self.outstanding[slot].push_back((peer, seq, o.ticket));
            }
        }
        n
    }

    /// One frame from the sync port (the bytes after the Ethernet header).
    pub fn on_frame(&mut self, payload: &[u8], now: Instant) {
        let delivered = self.endpoint.receive(payload, now);
        if delivered.is_empty() {
            return;
        }
        let mut store = self.tap.store.lock().unwrap_or_else(|e| e.into_inner());
        for (from, rec) in delivered {
            store.apply(from, &rec, now);
        }
    }

    /// Frames to send now, each with its destination MAC; also publishes watermarks,
    /// reacts to stream events and ages the backup store.
    pub fn poll(&mut self, now: Instant, out: &mut Vec<([u8; 6], Vec<u8>)>) {
        let mut frames = Vec::new();
        self.endpoint.poll(now, &mut frames);
        for (peer, payload) in frames {
            if let Some(mac) = self.macs.get(&peer) {
                out.push((*mac, payload));
            }
        }
        for e in self.endpoint.events() {
            match e {
                Event::ResyncNeeded(peer) => self.resync_peer(peer, now),
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
            self.tap.set_watermark(slot, mark);
        }
        self.check_pending();
        if now.saturating_duration_since(self.last_expiry) >= Duration::from_secs(1) {
            self.last_expiry = now;
            self.tap
                .store
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .expire(now);
        }
    }

    /// Completes the pending bulk sync once every worker has re-sent and every record
    /// issued until then is acknowledged.
    fn check_pending(&mut self) {
        let Some(p) = self.pending.as_mut() else {
            return;
        };
        if p.marks.is_none() {
            if !self.tap.applied_everywhere(p.generation) {
                return;
            }
            let tickets = std::array::from_fn(|s| self.tap.issued(s));
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
        let slots_done = (0..SLOTS).all(|s| self.tap.watermark(s) >= tickets[s]);
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
    fn resync_peer(&mut self, peer: u32, now: Instant) {
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
        let bucketer = self.tap.bucketer.clone();
        let records = self
            .tap
            .store
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .records_where(now, |k| marked[(bucketer(k) & mask) as usize]);
        tracing::warn!(
            peer,
            copies = records.len(),
            "sync stream resynced: bulk resend"
        );
        self.tap.request_resync(marked, mask);
        for r in records {
            self.route(&r, now);
        }
    }

    /// When `poll` should run again at the latest.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.endpoint.next_deadline()
    }

    pub fn report(&self) -> SyncReport {
        let c = self.endpoint.counters();
        let t = &self.tap.stats;
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
            backup_connections: self
                .tap
                .store
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .len() as u64,
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
