//! The sending half of a link: the queue of records until they are acknowledged, the
//! window, retransmissions (NACKed ranges, the RTO) and RESYNC markers.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use super::{
    codec::{Record, Sealer, DATA_FIXED, KIND_DATA, RECORDS_PER_FRAME, RECORD_LEN},
    endpoint::{Config, LinkStats},
};

/// Frames one `poll` emits per peer at most; the rest waits for the next call.
pub const MAX_FRAMES_PER_POLL: usize = 256;
/// Pending retransmission ranges per peer at most (NACKs beyond it are ignored).
pub(super) const MAX_RETX_RANGES: usize = 1024;

/// A queued record.
pub(super) struct Entry {
    pub(super) rec: Record,
    pub(super) pushed: Instant,
    pub(super) last_tx: Option<Instant>,
}

/// A pending RESYNC marker.
pub(super) struct Marker {
    pub(super) base: u64,
    /// Records were discarded: the owner must resend its state once the peer acks.
    pub(super) lossy: bool,
    pub(super) last_tx: Option<Instant>,
}

/// Sending half of a link. Invariant: `q_first + queue.len() == next_seq`, and
/// `q_first <= next_send <= next_seq`.
pub(super) struct Tx {
    pub(super) queue: VecDeque<Entry>,
    pub(super) q_first: u64,
    pub(super) next_seq: u64,
    /// First record not (re)sent in the current pass.
    pub(super) next_send: u64,
    /// Highest seq ever transmitted: sends at or below it count as retransmissions.
    pub(super) sent_hwm: u64,
    pub(super) acked_upto: u64,
    /// RTO clock: last ack progress (or first send); Some while records are in flight.
    pub(super) rto_from: Option<Instant>,
    pub(super) retx: VecDeque<(u64, u64)>,
    pub(super) marker: Option<Marker>,
}

impl Tx {
    pub(super) fn new() -> Self {
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
    pub(super) fn resync(&mut self, discard: bool, st: &mut LinkStats) {
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
    pub(super) fn on_ack(
        &mut self,
        cum: u64,
        newest: bool,
        now: Instant,
        st: &mut LinkStats,
    ) -> bool {
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

    pub(super) fn eligible(&self, seq: u64, now: Instant, gap: Duration) -> bool {
        let Some(idx) = seq.checked_sub(self.q_first) else {
            return false;
        };
        self.queue.get(idx as usize).is_some_and(|e| {
            e.last_tx
                .is_none_or(|t| now.saturating_duration_since(t) >= gap)
        })
    }

    /// The sender's frames due now: a RESYNC marker, or retransmissions (NACKed ranges, or
    /// everything in flight after an RTO) and then new records within the window.
    pub(super) fn poll(
        &mut self,
        id: u32,
        s: &mut Sealer,
        cfg: &Config,
        now: Instant,
        out: &mut Vec<(u32, Vec<u8>)>,
        st: &mut LinkStats,
    ) {
        let half = cfg.rto / 2;
        if let Some(m) = &mut self.marker {
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
        if let Some(t) = self.rto_from {
            if self.next_send > self.q_first && now.saturating_duration_since(t) >= cfg.rto {
                self.retx.clear();
                self.retx.push_back((self.q_first, self.next_send - 1));
                self.rto_from = Some(now);
            }
        }
        let mut budget = MAX_FRAMES_PER_POLL;
        let per_frame = RECORDS_PER_FRAME as u64;
        while budget > 0 {
            let Some(&(a, b)) = self.retx.front() else {
                break;
            };
            let hi = b.min(self.next_send - 1);
            let mut seq = a.max(self.q_first);
            while seq <= hi && budget > 0 {
                if !self.eligible(seq, now, half) {
                    seq += 1;
                    continue;
                }
                let start = seq;
                while seq <= hi && seq - start < per_frame && self.eligible(seq, now, half) {
                    seq += 1;
                }
                out.push((id, send_data(id, self, st, s, start, seq - start, now)));
                budget -= 1;
            }
            if seq > hi {
                self.retx.pop_front();
            } else if let Some(front) = self.retx.front_mut() {
                front.0 = seq;
            }
        }
        let window = cfg.window as u64;
        while budget > 0 && self.next_send < self.next_seq {
            let in_flight = self.next_send - self.q_first;
            if in_flight >= window {
                break;
            }
            let n = per_frame
                .min(self.next_seq - self.next_send)
                .min(window - in_flight);
            let first = self.next_send;
            out.push((id, send_data(id, self, st, s, first, n, now)));
            self.next_send += n;
            self.rto_from.get_or_insert(now);
            budget -= 1;
        }
    }
}

/// One DATA frame of `n` queued records from `first`; notes their transmission.
pub(super) fn send_data(
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
