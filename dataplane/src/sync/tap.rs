//! What workers share with their member's sync thread: the channel their connection
//! changes go out by, the acknowledgement watermark that releases a connection's first
//! reply, the backup store they take over connections from, and the bulk-resync requests.
//!
//! Tickets: each worker slot numbers its records 1, 2, 3… and sends them in order on one
//! channel, so per slot the sync thread sees them in order; it publishes per slot the
//! highest ticket below which every record was acknowledged by its backup (or needed
//! none). A worker holding a frame for ticket T releases it once the watermark reaches T.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, RwLock,
    },
    time::Duration,
};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::store::BackupStore;
use crate::conntrack::{FlowKey, Record};

/// Worker slots a tap serves: one per worker, so at least as many as a member may run
/// (the dispatcher asserts it).
pub const SLOTS: usize = 16;

/// A record on its way to the sync thread.
pub struct Outbound {
    pub slot: u8,
    pub ticket: u64,
    pub record: Record,
}

/// The flow hash of a connection, as the orchestrator's `distribute` computes it.
pub type Bucketer = Arc<dyn Fn(&FlowKey) -> u32 + Send + Sync>;

/// Which connections a bulk resync re-sends: those in the marked buckets.
pub struct Resync {
    pub generation: u64,
    pub mask: u32,
    pub buckets: Vec<bool>,
}

impl Resync {
    pub fn wants(&self, bucketer: &Bucketer, key: &FlowKey) -> bool {
        self.buckets
            .get((bucketer(key) & self.mask) as usize)
            .copied()
            .unwrap_or(false)
    }
}

#[derive(Debug, Default)]
pub struct TapStats {
    /// Records the channel had no room for (the backup misses them until the next
    /// refresh or resync).
    pub channel_full: AtomicU64,
    /// First replies held until the backup acknowledged, and released.
    pub held: AtomicU64,
    /// Held first replies released without an acknowledgement (the backup did not answer
    /// within the hold limit).
    pub hold_timeouts: AtomicU64,
    /// Connections taken over from the backup store.
    pub taken_over: AtomicU64,
    /// Wall-clock time (ns since the Unix epoch) of the first takeover of the latest burst
    /// (takeovers more than a second apart start a new one): when this member forwarded
    /// the first packet of a failed member's connections.
    pub takeover_burst_ns: AtomicU64,
    pub last_takeover_ns: AtomicU64,
}

impl TapStats {
    /// Counts one takeover at the current wall-clock time.
    pub fn took_over(&self) {
        self.taken_over.fetch_add(1, Ordering::Relaxed);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let last = self.last_takeover_ns.swap(now, Ordering::Relaxed);
        if now.saturating_sub(last) > 1_000_000_000 {
            self.takeover_burst_ns.store(now, Ordering::Relaxed);
        }
    }
}

pub struct SyncTap {
    tx: Sender<Outbound>,
    next: [AtomicU64; SLOTS],
    watermark: [AtomicU64; SLOTS],
    pub store: Mutex<BackupStore>,
    pub stats: TapStats,
    /// Longest a first reply waits for the backup's acknowledgement.
    pub hold_max: Duration,
    pub bucketer: Bucketer,
    resync: RwLock<Option<Arc<Resync>>>,
    /// Worker slots in use, and the resync generation each has carried out.
    in_use: [AtomicBool; SLOTS],
    applied: [AtomicU64; SLOTS],
}

impl SyncTap {
    /// A tap and the receiving end of its record channel (for the sync thread).
    pub fn new(
        channel: usize,
        store_capacity: usize,
        hold_max: Duration,
        bucketer: Bucketer,
    ) -> (Arc<Self>, Receiver<Outbound>) {
        let (tx, rx) = crossbeam_channel::bounded(channel);
        (
            Arc::new(Self {
                tx,
                next: Default::default(),
                watermark: Default::default(),
                store: Mutex::new(BackupStore::new(store_capacity)),
                stats: TapStats::default(),
                hold_max,
                bucketer,
                resync: RwLock::new(None),
                in_use: Default::default(),
                applied: Default::default(),
            }),
            rx,
        )
    }

    /// Sends a record from worker `slot`; returns its ticket, or None when the channel
    /// was full (counted).
    pub fn emit(&self, slot: usize, record: Record) -> Option<u64> {
        let ticket = self.try_emit(slot, record);
        if ticket.is_none() {
            self.stats.channel_full.fetch_add(1, Ordering::Relaxed);
        }
        ticket
    }

    /// [`emit`](Self::emit) that leaves a refusal to the caller (which keeps the record
    /// to try again) rather than counting it lost.
    pub fn try_emit(&self, slot: usize, record: Record) -> Option<u64> {
        let ticket = self.issued(slot) + 1;
        match self.tx.try_send(Outbound {
            slot: slot as u8,
            ticket,
            record,
        }) {
            Ok(()) => {
                // Only this slot's worker writes its counter.
                self.next[slot].store(ticket, Ordering::Relaxed);
                Some(ticket)
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => None,
        }
    }

    /// A worker takes `slot`; it has nothing to resend from before `generation`.
    pub fn attach_slot(&self, slot: usize, generation: u64) {
        self.applied[slot].store(generation, Ordering::Release);
        self.in_use[slot].store(true, Ordering::Release);
    }

    pub fn detach_slot(&self, slot: usize) {
        self.in_use[slot].store(false, Ordering::Release);
    }

    /// The worker in `slot` has re-sent what resync `generation` asked for.
    pub fn mark_applied(&self, slot: usize, generation: u64) {
        self.applied[slot].store(generation, Ordering::Release);
    }

    /// Every worker has carried out resync `generation`.
    pub fn applied_everywhere(&self, generation: u64) -> bool {
        (0..SLOTS).all(|s| {
            !self.in_use[s].load(Ordering::Acquire)
                || self.applied[s].load(Ordering::Acquire) >= generation
        })
    }

    /// The last ticket `slot` issued.
    pub fn issued(&self, slot: usize) -> u64 {
        self.next[slot].load(Ordering::Relaxed)
    }

    /// Every record of `slot` up to this ticket is safe at its backup.
    pub fn watermark(&self, slot: usize) -> u64 {
        self.watermark[slot].load(Ordering::Acquire)
    }

    pub fn set_watermark(&self, slot: usize, ticket: u64) {
        self.watermark[slot].store(ticket, Ordering::Release);
    }

    /// Asks every worker to re-send the connections of the marked buckets.
    pub fn request_resync(&self, buckets: Vec<bool>, mask: u32) {
        let mut r = self
            .resync
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let generation = r.as_ref().map_or(0, |r| r.generation) + 1;
        // A worker may not have carried out the previous request yet: keep its buckets
        // too, until every worker has (then a new request re-sends only its own).
        let mut buckets = buckets;
        if let Some(prev) = r
            .as_ref()
            .filter(|p| p.mask == mask && !self.applied_everywhere(p.generation))
        {
            for (b, p) in buckets.iter_mut().zip(&prev.buckets) {
                *b |= *p;
            }
        }
        *r = Some(Arc::new(Resync {
            generation,
            mask,
            buckets,
        }));
    }

    /// The latest resync request.
    pub fn resync(&self) -> Option<Arc<Resync>> {
        self.resync
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tap() -> Arc<SyncTap> {
        SyncTap::new(4, 16, Duration::from_millis(100), Arc::new(|_: &FlowKey| 0)).0
    }

    fn marked(r: &Resync) -> Vec<usize> {
        (0..r.buckets.len()).filter(|&i| r.buckets[i]).collect()
    }

    #[test]
    fn a_resync_keeps_earlier_buckets_only_until_every_worker_has_sent_them() {
        let t = tap();
        t.attach_slot(0, 0);
        t.attach_slot(1, 0);
        t.request_resync(vec![true, false, false, false], 3);
        // Worker 1 has not carried out request 1 yet: request 2 covers both.
        t.mark_applied(0, 1);
        t.request_resync(vec![false, true, false, false], 3);
        let r = t.resync().unwrap();
        assert_eq!((r.generation, marked(&r)), (2, vec![0, 1]));
        // Both have carried out request 2: request 3 re-sends only its own buckets.
        t.mark_applied(0, 2);
        t.mark_applied(1, 2);
        t.request_resync(vec![false, false, true, false], 3);
        let r = t.resync().unwrap();
        assert_eq!((r.generation, marked(&r)), (3, vec![2]));
    }
}
