//! The anti-replay window: which frame ids of a peer's epoch were already seen.

/// Frame ids the anti-replay bitmap covers.
pub(super) const REPLAY_WINDOW: u64 = 1024;
pub(super) const REPLAY_WORDS: usize = (REPLAY_WINDOW / 64) as usize;

/// IPsec-style sliding bitmap over frame ids: bit i stands for id `top - i`.
#[derive(Clone, Default)]
pub(super) struct ReplayWindow {
    pub(super) top: u64,
    pub(super) bits: [u64; REPLAY_WORDS],
}

impl ReplayWindow {
    pub(super) fn fresh(&self, id: u64) -> bool {
        if id > self.top {
            return true;
        }
        let off = self.top - id;
        off < REPLAY_WINDOW && self.bits[(off / 64) as usize] & (1 << (off % 64)) == 0
    }

    /// Records `id` as seen; true when it is the newest so far.
    pub(super) fn mark(&mut self, id: u64) -> bool {
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

    pub(super) fn shift(&mut self, s: u64) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
