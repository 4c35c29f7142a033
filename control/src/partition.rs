//! Data-path partition detection: a member whose heartbeats arrive but whose data path
//! does not work (frames sent to it never reach it, or frames it sends never come back) is
//! partitioned. The orchestrator compares its own XDP counters with the member's; a
//! partition that lasts the dead interval isolates the member (detached until an operator
//! attaches it), so it is never left half in.

use std::time::{Duration, Instant};

/// Counters at the start of the current observation.
#[derive(Clone, Copy, Debug)]
pub struct PathWatch {
    to_member: u64,
    from_member: u64,
    rx: u64,
    tx: u64,
    since: Instant,
}

/// Frames the orchestrator must have sent (or the member), unanswered, before it counts.
const MIN_FRAMES: u64 = 8;

impl PathWatch {
    pub fn new(now: Instant, to_member: u64, from_member: u64, rx: u64, tx: u64) -> Self {
        Self {
            to_member,
            from_member,
            rx,
            tx,
            since: now,
        }
    }

    /// Takes the latest counters: the orchestrator's (to / from the member) and the
    /// member's own (rx / tx on its data port). Returns the reason when the member has
    /// been partitioned for `dead`.
    pub fn observe(
        &mut self,
        now: Instant,
        (to_member, from_member): (u64, u64),
        (rx, tx): (u64, u64),
        dead: Duration,
    ) -> Option<&'static str> {
        let lost_in = to_member >= self.to_member + MIN_FRAMES && rx == self.rx;
        let lost_out = tx >= self.tx + MIN_FRAMES && from_member == self.from_member;
        if !lost_in && !lost_out {
            *self = Self::new(now, to_member, from_member, rx, tx);
            return None;
        }
        if now.duration_since(self.since) < dead {
            return None;
        }
        Some(if lost_in {
            "frames sent to it do not reach it"
        } else {
            "frames it sends do not reach the orchestrator"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEAD: Duration = Duration::from_millis(300);

    #[test]
    fn a_working_path_is_never_partitioned() {
        let t = Instant::now();
        let mut w = PathWatch::new(t, 0, 0, 0, 0);
        for i in 1..100u64 {
            let now = t + Duration::from_millis(50 * i);
            // Traffic both ways, the member's counters a little behind the orchestrator's.
            assert_eq!(
                w.observe(now, (i * 100, i * 90), (i * 100 - 50, i * 90 + 20), DEAD),
                None
            );
        }
        // Idle: nothing sent, nothing to miss.
        for i in 100..120u64 {
            let now = t + Duration::from_millis(50 * i);
            assert_eq!(w.observe(now, (9_900, 8_910), (9_900, 8_910), DEAD), None);
        }
    }

    #[test]
    fn a_one_way_path_is_partitioned_after_the_dead_interval() {
        let t = Instant::now();
        let mut w = PathWatch::new(t, 100, 100, 100, 100);
        // Frames go to the member; it receives none.
        assert_eq!(
            w.observe(t + Duration::from_millis(100), (200, 100), (100, 100), DEAD),
            None
        );
        assert_eq!(
            w.observe(t + Duration::from_millis(200), (300, 100), (100, 100), DEAD),
            None
        );
        assert_eq!(
            w.observe(t + Duration::from_millis(310), (400, 100), (100, 100), DEAD),
            Some("frames sent to it do not reach it")
        );
        // The other way: it sends, nothing comes back to the orchestrator.
        let mut w = PathWatch::new(t, 100, 100, 100, 100);
        w.observe(t + Duration::from_millis(100), (100, 100), (100, 150), DEAD);
        assert_eq!(
            w.observe(t + Duration::from_millis(400), (100, 100), (100, 300), DEAD),
            Some("frames it sends do not reach the orchestrator")
        );
        // A recovery before the dead interval starts the watch again.
        let mut w = PathWatch::new(t, 100, 100, 100, 100);
        w.observe(t + Duration::from_millis(200), (200, 100), (100, 100), DEAD);
        assert_eq!(
            w.observe(t + Duration::from_millis(250), (300, 100), (280, 100), DEAD),
            None
        );
        assert_eq!(
            w.observe(t + Duration::from_millis(400), (300, 100), (280, 100), DEAD),
            None
        );
    }
}
