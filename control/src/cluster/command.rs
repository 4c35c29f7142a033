//! The log's entries: every change of the cluster's state is one `Command`, decided once
//! (by the orchestrator, or later by a Raft leader) and applied everywhere the same way.
//! Commands carry no clock: what they need of time (an install date) is data in them.

use serde::{Deserialize, Serialize};

use crate::policy_dist::{Outcome, Phase, PolicyVersion};

/// The log format; a stored log of another format is refused, never misread.
pub const LOG_FORMAT: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// A group as configured (new, or its bucket count or sync setting changed).
    Group {
        group: u32,
        buckets: u32,
        sync: bool,
    },
    /// The group's first policy version (from the orchestrator's policy file).
    PolicySeed { group: u32, target: PolicyVersion },
    /// An operator admits a member to a group (Down until heard).
    Add {
        member: u32,
        group: u32,
        site: u8,
        downlink: String,
    },
    /// An operator removes a member (its buckets go to their backups).
    Remove { member: u32 },
    /// An operator moves a member to another group: it leaves its group at once and
    /// rejoins the new one from Down.
    Move { member: u32, group: u32 },
    /// A Down member was heard: Joining.
    Heard { member: u32 },
    /// A joining member is ready: the serving members bulk-sync to it the buckets it will
    /// own or back up (a new table version announces which).
    StartJoin { member: u32 },
    /// Joining members take their buckets (their bulk sync is acknowledged, or the group
    /// had nobody to sync from).
    Activate { group: u32, members: Vec<u32> },
    /// A join did not complete in time: nothing changes hands, the reason is kept, and the
    /// bulk sync starts again under a new table version.
    JoinBlocked { group: u32, reason: String },
    /// A member fell silent for the dead interval: Down, its buckets to their backups.
    Lost { member: u32 },
    /// An operator takes a member out of service at once.
    Detach { member: u32 },
    /// A member's data path is partitioned: Isolated, its buckets to their backups.
    Isolate { member: u32, reason: String },
    /// An operator returns a Detached or Isolated member: Down, it rejoins when heard.
    Attach { member: u32 },
    /// An operator asks a member for another worker count (Dynamic Balancing).
    Workers { member: u32, workers: u32 },
    /// A policy install begins on the group's serving members.
    PolicyBegin {
        group: u32,
        target: PolicyVersion,
        members: Vec<u32>,
        rollback: bool,
    },
    /// The install moves to its next phase.
    PolicyPhase { group: u32, phase: Phase },
    /// The install ended.
    PolicyEnd { group: u32, outcome: Outcome },
}

/// One entry of the log: its index (from 1, never reused) and its command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub index: u64,
    pub command: Command,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_as_json() {
        let c = [
            Command::Add {
                member: 4,
                group: 1,
                site: 1,
                downlink: "dl-sgm4".into(),
            },
            Command::JoinBlocked {
                group: 1,
                reason: "why".into(),
            },
            Command::PolicyPhase {
                group: 1,
                phase: Phase::Validate { master: 2 },
            },
            Command::PolicyEnd {
                group: 1,
                outcome: Outcome::Aborted("no".into()),
            },
        ];
        for command in c {
            let e = Entry { index: 9, command };
            let text = serde_json::to_string(&e).unwrap();
            assert_eq!(serde_json::from_str::<Entry>(&text).unwrap(), e, "{text}");
        }
        assert!(serde_json::from_str::<Entry>(r#"{"index":1,"command":{"op":"nope"}}"#).is_err());
    }
}
