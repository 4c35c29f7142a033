//! A worker's side of HyperSync: its connection changes go to the sync thread in ticket
//! order (kept while the channel is full), a connection's first reply waits for the
//! backup's acknowledgement (the flush-and-ack rule), bulk resyncs re-send the
//! connections asked for, and a packet of an unknown connection may take over the copy
//! this member holds as a backup.

use std::{
    collections::VecDeque,
    sync::{atomic::Ordering, Arc},
    time::Instant,
};

use super::tap::SyncTap;
use crate::{
    conntrack::{ConnTable, FlowKey, Packet, Record, RecordOp},
    verdict::Verdict,
};

/// Most records a worker keeps while the channel is full; beyond, they count as lost
/// (`channel_full`) and the connections' refresh sends them again.
const UNSENT_MAX: usize = 4096;

pub struct WorkerSync {
    tap: Arc<SyncTap>,
    slot: usize,
    /// First replies waiting for the backup's acknowledgement: (ticket, deadline, frame),
    /// in ticket order.
    held: VecDeque<(u64, Instant, Vec<u8>)>,
    /// Records the sync thread's channel had no room for, in order: sent before anything
    /// newer, so each gets the ticket it was promised (the last sent + its position).
    unsent: VecDeque<Record>,
    resync_generation: u64,
    /// A resync whose records wait in `unsent`: it counts as carried out only once they
    /// have gone, or the bulk sync would be declared complete without them.
    resync_unsent: Option<u64>,
}

impl WorkerSync {
    /// Takes slot `slot` of the tap (the connection table must keep a journal).
    pub fn new(tap: Arc<SyncTap>, slot: usize) -> Self {
        let resync_generation = tap.resync().map_or(0, |r| r.generation);
        tap.attach_slot(slot, resync_generation);
        Self {
            tap,
            slot,
            held: VecDeque::new(),
            unsent: VecDeque::new(),
            resync_generation,
            resync_unsent: None,
        }
    }

    /// Frames waiting for the backup.
    pub fn holding(&self) -> usize {
        self.held.len()
    }

    /// Sends what waits, oldest first, while the channel takes it.
    pub fn flush(&mut self) {
        while let Some(r) = self.unsent.front() {
            if self.tap.try_emit(self.slot, *r).is_none() {
                break;
            }
            self.unsent.pop_front();
        }
        if self.unsent.is_empty() {
            if let Some(generation) = self.resync_unsent.take() {
                self.tap.mark_applied(self.slot, generation);
            }
        }
    }

    /// Sends `record`, or keeps it for later; returns its ticket (to come, if kept), or
    /// None if it was lost.
    fn send(&mut self, record: Record) -> Option<u64> {
        if self.unsent.is_empty() {
            if let Some(t) = self.tap.try_emit(self.slot, record) {
                return Some(t);
            }
        }
        if self.unsent.len() >= UNSENT_MAX {
            self.tap.stats.channel_full.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.unsent.push_back(record);
        Some(self.tap.issued(self.slot) + self.unsent.len() as u64)
    }

    /// Sends the table's changes to the sync thread; returns the ticket a first reply
    /// must wait for.
    pub fn publish(&mut self, conns: &mut ConnTable, ms: u64) -> Option<u64> {
        let mut hold = None;
        self.flush();
        if let Some(j) = conns.journal() {
            for c in j.drain(..) {
                let ticket = self.send(c.conn.encode(c.op, ms));
                if c.first_reply {
                    hold = ticket;
                }
            }
        }
        hold
    }

    /// Releases first replies the backup has acknowledged, or that waited long enough.
    pub fn release(&mut self, now: Instant, out: &mut Vec<Vec<u8>>) {
        if self.held.is_empty() {
            return;
        }
        let acked = self.tap.watermark(self.slot);
        while let Some((ticket, deadline, _)) = self.held.front() {
            if *ticket <= acked {
                self.tap.stats.held.fetch_add(1, Ordering::Relaxed);
            } else if now >= *deadline {
                self.tap.stats.hold_timeouts.fetch_add(1, Ordering::Relaxed);
            } else {
                break;
            }
            if let Some((_, _, f)) = self.held.pop_front() {
                out.push(f);
            }
        }
    }

    /// Re-sends the connections a bulk resync asks for.
    pub fn resync(&mut self, conns: &ConnTable, ms: u64) {
        let Some(r) = self.tap.resync() else { return };
        // Records kept for a full channel go first: their tickets are promised. Until
        // they have gone, the resync waits for a later tick.
        if r.generation == self.resync_generation || !self.unsent.is_empty() {
            return;
        }
        self.resync_generation = r.generation;
        let mut sent = 0usize;
        for c in conns.snapshot() {
            if r.wants(&self.tap.bucketer, &c.key) {
                self.send(c.encode(RecordOp::Upsert, ms));
                sent += 1;
            }
        }
        if self.unsent.is_empty() {
            self.tap.mark_applied(self.slot, r.generation);
        } else {
            self.resync_unsent = Some(r.generation);
        }
        tracing::debug!(slot = self.slot, sent, "bulk resync");
    }

    /// A frame that completes a connection's state leaves once its backup holds the
    /// connection (the flush-and-ack rule), or after the hold limit.
    pub fn hold_first_reply(
        &mut self,
        v: Verdict,
        f: &[u8],
        hold: Option<u64>,
        now: Instant,
    ) -> Verdict {
        let (Verdict::Forward, Some(ticket)) = (v, hold) else {
            return v;
        };
        if self.tap.watermark(self.slot) >= ticket {
            return v;
        }
        self.held
            .push_back((ticket, now + self.tap.hold_max, f.to_vec()));
        Verdict::Held
    }

    /// Adopts the backup copy of the connection `p` belongs to, if this member holds one.
    pub fn take_over(&self, conns: &mut ConnTable, p: &Packet, now: Instant, ms: u64) -> bool {
        let (key, _) = FlowKey::of(p);
        let copy = self
            .tap
            .store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take(&key, now, ms);
        match copy {
            Some(c) if conns.take_over(c) => {
                self.tap.stats.took_over();
                true
            }
            _ => false,
        }
    }
}

impl Drop for WorkerSync {
    fn drop(&mut self) {
        self.tap
            .stats
            .channel_full
            .fetch_add(self.unsent.len() as u64, Ordering::Relaxed);
        self.tap.detach_slot(self.slot);
    }
}
