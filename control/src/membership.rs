//! The member state model: one word per state, the same in the cluster core, the heartbeat
//! answer, the API, the CLI and the task view (see `docs/member-states.md`).
//!
//! Down → Joining (heard) → Active (ready, enforcing the group's policy, and — in a group
//! with sync — every bucket it will own or back up bulk-synced to it and acknowledged);
//! Joining/Active → Down after the dead interval in silence; Detached (an operator's
//! immediate removal) and Isolated (a data-path partition) ignore heartbeats until
//! attached, which makes them Down again. Only Active members serve buckets; the SMO
//! master is the lowest Active id.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Not heard within the dead interval (or never).
    Down,
    /// Heard, not serving yet: waiting for its data path, the group's policy, or the bulk
    /// sync of its buckets.
    Joining,
    /// Serving its buckets.
    Active,
    /// Taken out of service by an operator; its buckets went to their backups at once.
    Detached,
    /// Taken out of service for a data-path partition; attach brings it back.
    Isolated,
}

impl MemberState {
    /// The word used everywhere (`down`, `joining`, …).
    pub fn word(self) -> &'static str {
        match self {
            Self::Down => "down",
            Self::Joining => "joining",
            Self::Active => "active",
            Self::Detached => "detached",
            Self::Isolated => "isolated",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_word_is_the_json_word() {
        for s in [
            MemberState::Down,
            MemberState::Joining,
            MemberState::Active,
            MemberState::Detached,
            MemberState::Isolated,
        ] {
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.word())
            );
        }
    }
}
