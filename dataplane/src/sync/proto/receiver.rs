//! The receiving half of a link: in-order delivery, the reorder buffer, and when to ack
//! or NACK.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use super::{
    codec::{Record, Sealer, MAX_NACK_RANGES},
    endpoint::LinkStats,
    replay::ReplayWindow,
};

/// Receiving half of a link.
pub(super) struct Rx {
    /// The peer's current epoch; None before first contact.
    pub(super) epoch: Option<u64>,
    pub(super) replay: ReplayWindow,
    pub(super) next_expected: u64,
    pub(super) buf: BTreeMap<u64, Record>,
    pub(super) ack_pending: bool,
    pub(super) ack_due: Option<Instant>,
    pub(super) last_nack: Option<Instant>,
}

impl Rx {
    pub(super) fn new(epoch: Option<u64>) -> Self {
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
    pub(super) fn drain(&mut self, from: u32, out: &mut Vec<(u32, Record)>, st: &mut LinkStats) {
        while let Some(rec) = self.buf.remove(&self.next_expected) {
            out.push((from, rec));
            self.next_expected += 1;
            st.received += 1;
        }
    }

    /// The receiver's frames due now: a NACK (which carries the cumulative ack too) or an
    /// ack. Nothing before the peer's first frame.
    pub(super) fn poll(
        &mut self,
        id: u32,
        s: &mut Sealer,
        half: Duration,
        now: Instant,
        out: &mut Vec<(u32, Vec<u8>)>,
        st: &mut LinkStats,
    ) {
        let Some(epoch) = self.epoch else {
            return;
        };
        let cum = self.next_expected - 1;
        let nack_due = !self.buf.is_empty()
            && self
                .last_nack
                .is_none_or(|t| now.saturating_duration_since(t) >= half);
        if nack_due {
            let mut missing = Vec::new();
            let mut expect = self.next_expected;
            for &k in self.buf.keys() {
                if k > expect {
                    missing.push((expect, k - 1));
                    if missing.len() == MAX_NACK_RANGES {
                        break;
                    }
                }
                expect = k + 1;
            }
            out.push((id, s.nack(id, epoch, cum, &missing)));
            self.last_nack = Some(now);
            self.ack_pending = false;
            self.ack_due = None;
            st.nacks_sent += 1;
        } else if self.ack_pending && self.ack_due.is_some_and(|t| now >= t) {
            out.push((id, s.ack(id, epoch, cum)));
            self.ack_pending = false;
            self.ack_due = None;
        }
    }
}
