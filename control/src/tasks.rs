//! Which member runs which task (as Maestro's SMO): SMO-only tasks run on the group's
//! master alone, distributed tasks on every Active member. The orchestrator decides by
//! the election; each member reports what it runs, so the two can be compared.

use serde::{Deserialize, Serialize};

use crate::membership::MemberState;

/// Tasks only the SMO master runs.
pub const SMO_TASKS: [&str; 4] = [
    "policy_installation",
    "logging",
    "configuration_sync",
    "dr_manager",
];
/// Tasks every Active member runs.
pub const DISTRIBUTED_TASKS: [&str; 3] = ["lacp", "ch_monitor", "uipc"];

/// The tasks a member in `state` runs when `master` is the group's SMO master.
pub fn tasks_for(member: u32, state: MemberState, master: Option<u32>) -> Vec<String> {
    if state != MemberState::Active {
        return Vec::new();
    }
    let smo = master == Some(member);
    SMO_TASKS
        .iter()
        .filter(|_| smo)
        .chain(DISTRIBUTED_TASKS.iter())
        .map(std::string::ToString::to_string)
        .collect()
}

/// `GET /v1/tasks`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TaskStat {
    pub groups: Vec<GroupTasks>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct GroupTasks {
    pub id: u32,
    pub smo: Option<u32>,
    pub members: Vec<MemberTasks>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MemberTasks {
    pub id: u32,
    pub state: MemberState,
    /// What the orchestrator's election gives the member.
    pub assigned: Vec<String>,
    /// What the member last reported it runs.
    pub running: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_master_runs_everything_the_others_the_distributed_tasks() {
        let m = tasks_for(1, MemberState::Active, Some(1));
        assert_eq!(m.len(), SMO_TASKS.len() + DISTRIBUTED_TASKS.len());
        let o = tasks_for(2, MemberState::Active, Some(1));
        assert_eq!(o, DISTRIBUTED_TASKS.map(String::from).to_vec());
        assert!(tasks_for(3, MemberState::Joining, Some(1)).is_empty());
        assert!(tasks_for(1, MemberState::Down, Some(1)).is_empty());
    }
}
