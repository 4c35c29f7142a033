//! The cluster's replicated state: members, bucket tables, joins under way, policies. It
//! changes only by [`ClusterState::apply`], a pure function of the state and one
//! [`Command`], so a snapshot plus the commands after it gives exactly the live state, on
//! this orchestrator after a restart or on another one.

use std::collections::{BTreeMap, BTreeSet};

use baton_common::Bucket;
use serde::{Deserialize, Serialize};

use super::command::Command;
use crate::{
    membership::MemberState,
    planner,
    policy_dist::{Outcome, PolicyState},
};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    pub group: u32,
    pub site: u8,
    pub downlink: String,
    pub state: MemberState,
    /// Worker count asked by an operator (Dynamic Balancing).
    pub workers: Option<u32>,
    /// Why it was isolated, while it is.
    pub isolated: Option<String>,
}

/// A group's joins under way (state before steering).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Staging {
    pub joiners: BTreeSet<u32>,
    /// Per bucket, the joining member its records must also reach (0: none).
    pub extra: Vec<u32>,
    /// The table version that announced `extra`.
    pub version: u64,
    /// Why the last attempt did not complete, once one has not.
    pub blocked: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupState {
    pub buckets: u32,
    pub sync: bool,
    #[serde(with = "table_serde")]
    pub table: Vec<Bucket>,
    pub staging: Option<Staging>,
    pub policy: PolicyState,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Bumped at every change of a bucket table or of a join's staging; members sync by
    /// the version they report.
    pub table_version: u64,
    pub members: BTreeMap<u32, MemberRecord>,
    pub groups: BTreeMap<u32, GroupState>,
}

/// What applying a command asks of the data path and the files, in the order given:
/// a member's port is added before a bucket points at it, and removed after.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    Port {
        member: u32,
        enabled: bool,
    },
    Table {
        group: u32,
    },
    /// The member registry changed: the configuration is written back.
    Registry,
    /// A removed member's downlink loses `egress`.
    DownlinkDetach {
        member: u32,
        iface: String,
    },
    /// A moved member's downlink belongs to another group now.
    DownlinkGroup {
        member: u32,
        group: u32,
    },
    /// A policy install ended.
    PolicyEnded {
        group: u32,
        outcome: Outcome,
    },
}

impl ClusterState {
    /// Members of `group` that serve its buckets (Active), in id order.
    pub fn serving(&self, group: u32) -> Vec<u32> {
        self.members
            .iter()
            .filter(|(_, r)| r.group == group && r.state == MemberState::Active)
            .map(|(id, _)| *id)
            .collect()
    }

    /// The SMO master of a group: its lowest Active id.
    pub fn smo(&self, group: u32) -> Option<u32> {
        self.serving(group).first().copied()
    }

    pub fn state_of(&self, member: u32) -> Option<MemberState> {
        self.members.get(&member).map(|r| r.state)
    }

    /// Whether a joining member's bulk sync is under way.
    pub fn is_staged(&self, member: u32) -> bool {
        self.members.get(&member).is_some_and(|r| {
            self.groups
                .get(&r.group)
                .and_then(|g| g.staging.as_ref())
                .is_some_and(|s| s.joiners.contains(&member))
        })
    }

    /// The state a snapshot and the entries after it give.
    pub fn replay<'a>(
        snapshot: &ClusterState,
        tail: impl IntoIterator<Item = &'a Command>,
    ) -> Self {
        let mut s = snapshot.clone();
        for c in tail {
            s.apply(c);
        }
        s
    }

    /// Applies one command. Commands are validated before they are logged; one that no
    /// longer fits (a member gone meanwhile) changes nothing.
    pub fn apply(&mut self, command: &Command) -> Vec<Effect> {
        let mut fx = Vec::new();
        match command {
            Command::Group {
                group,
                buckets,
                sync,
            } => {
                let serving = self.serving(*group);
                let g = self.groups.entry(*group).or_insert_with(|| GroupState {
                    buckets: 0,
                    sync: *sync,
                    table: Vec::new(),
                    staging: None,
                    policy: PolicyState::default(),
                });
                g.sync = *sync;
                if g.buckets != *buckets || g.table.len() != *buckets as usize {
                    g.buckets = *buckets;
                    g.table = planner::plan(&serving, *buckets);
                    g.staging = None;
                    self.table_version += 1;
                    fx.push(Effect::Table { group: *group });
                }
            }
            Command::PolicySeed { group, target } => {
                if let Some(g) = self.groups.get_mut(group) {
                    if g.policy.history.is_empty() {
                        g.policy.history.push(target.clone());
                    }
                }
            }
            Command::Add {
                member,
                group,
                site,
                downlink,
            } => {
                if !self.members.contains_key(member) && self.groups.contains_key(group) {
                    self.members.insert(
                        *member,
                        MemberRecord {
                            group: *group,
                            site: *site,
                            downlink: downlink.clone(),
                            state: MemberState::Down,
                            workers: None,
                            isolated: None,
                        },
                    );
                    fx.push(Effect::Registry);
                }
            }
            Command::Remove { member } => {
                if self.members.contains_key(member) {
                    self.leave(*member, MemberState::Down, &mut fx);
                    let r = self.members.remove(member).expect("checked above");
                    fx.push(Effect::DownlinkDetach {
                        member: *member,
                        iface: r.downlink,
                    });
                    fx.push(Effect::Registry);
                }
            }
            Command::Move { member, group } => {
                let known = self.groups.contains_key(group);
                if known && self.members.get(member).is_some_and(|r| r.group != *group) {
                    self.leave(*member, MemberState::Down, &mut fx);
                    let r = self.members.get_mut(member).expect("checked above");
                    r.group = *group;
                    fx.push(Effect::DownlinkGroup {
                        member: *member,
                        group: *group,
                    });
                    fx.push(Effect::Registry);
                }
            }
            Command::Heard { member } => {
                if let Some(r) = self.members.get_mut(member) {
                    if r.state == MemberState::Down {
                        r.state = MemberState::Joining;
                    }
                }
            }
            Command::StartJoin { member } => {
                let Some(r) = self.members.get(member) else {
                    return fx;
                };
                if r.state != MemberState::Joining {
                    return fx;
                }
                let group = r.group;
                let Some(g) = self.groups.get_mut(&group) else {
                    return fx;
                };
                g.staging
                    .get_or_insert_with(|| Staging {
                        joiners: BTreeSet::new(),
                        extra: Vec::new(),
                        version: 0,
                        blocked: None,
                    })
                    .joiners
                    .insert(*member);
                fx.push(Effect::Port {
                    member: *member,
                    enabled: true,
                });
                self.restage(group, None);
            }
            Command::Activate { group, members } => {
                let mut joined = Vec::new();
                for m in members {
                    if let Some(r) = self.members.get_mut(m) {
                        if r.group == *group && r.state == MemberState::Joining {
                            r.state = MemberState::Active;
                            joined.push(*m);
                            fx.push(Effect::Port {
                                member: *m,
                                enabled: true,
                            });
                        }
                    }
                }
                if joined.is_empty() {
                    return fx;
                }
                let serving = self.serving(*group);
                if let Some(g) = self.groups.get_mut(group) {
                    if let Some(st) = g.staging.as_mut() {
                        st.joiners.retain(|j| !joined.contains(j));
                    }
                    if g.staging.as_ref().is_some_and(|st| st.joiners.is_empty()) {
                        g.staging = None;
                    }
                    g.table = planner::rebalance(&g.table, &serving);
                    self.table_version += 1;
                    fx.push(Effect::Table { group: *group });
                    if self.groups[group].staging.is_some() {
                        self.restage(*group, None);
                    }
                }
            }
            Command::JoinBlocked { group, reason } => {
                if self.groups.get(group).is_some_and(|g| g.staging.is_some()) {
                    self.restage(*group, Some(reason.clone()));
                }
            }
            Command::Lost { member } => {
                if self
                    .state_of(*member)
                    .is_some_and(|s| matches!(s, MemberState::Active | MemberState::Joining))
                {
                    self.leave(*member, MemberState::Down, &mut fx);
                }
            }
            Command::Detach { member } => {
                if self.members.contains_key(member) {
                    self.leave(*member, MemberState::Detached, &mut fx);
                }
            }
            Command::Isolate { member, reason } => {
                if self.state_of(*member) == Some(MemberState::Active) {
                    self.leave(*member, MemberState::Isolated, &mut fx);
                    if let Some(r) = self.members.get_mut(member) {
                        r.isolated = Some(reason.clone());
                    }
                }
            }
            Command::Attach { member } => {
                if let Some(r) = self.members.get_mut(member) {
                    if matches!(r.state, MemberState::Detached | MemberState::Isolated) {
                        r.state = MemberState::Down;
                        r.isolated = None;
                    }
                }
            }
            Command::Workers { member, workers } => {
                if let Some(r) = self.members.get_mut(member) {
                    r.workers = Some(*workers);
                }
            }
            Command::PolicyBegin {
                group,
                target,
                members,
                rollback,
            } => {
                if let Some(g) = self.groups.get_mut(group) {
                    if g.policy.install.is_none() {
                        if let Some(master) = members.first() {
                            g.policy.install = Some(crate::policy_dist::Install {
                                target: target.clone(),
                                phase: crate::policy_dist::Phase::Validate { master: *master },
                                members: members.clone(),
                                rollback: *rollback,
                            });
                        }
                    }
                }
            }
            Command::PolicyPhase { group, phase } => {
                if let Some(i) = self
                    .groups
                    .get_mut(group)
                    .and_then(|g| g.policy.install.as_mut())
                {
                    i.phase = phase.clone();
                }
            }
            Command::PolicyEnd { group, outcome } => {
                if let Some(g) = self.groups.get_mut(group) {
                    if g.policy.install.is_some() {
                        g.policy.end(outcome);
                        fx.push(Effect::PolicyEnded {
                            group: *group,
                            outcome: outcome.clone(),
                        });
                    }
                }
            }
        }
        fx
    }

    /// A member stops serving (failure, detach, isolation, removal, move): an Active
    /// member's buckets switch to their backups and nothing else changes hands; a joining
    /// member leaves the staging.
    fn leave(&mut self, member: u32, to: MemberState, fx: &mut Vec<Effect>) {
        let Some(r) = self.members.get_mut(&member) else {
            return;
        };
        let (was, group) = (r.state, r.group);
        r.state = to;
        if was == MemberState::Active {
            let survivors = self.serving(group);
            if let Some(g) = self.groups.get_mut(&group) {
                g.table = planner::fail(&g.table, member, &survivors);
                self.table_version += 1;
                fx.push(Effect::Table { group });
            }
        }
        let staged = self
            .groups
            .get_mut(&group)
            .and_then(|g| g.staging.as_mut())
            .is_some_and(|st| st.joiners.remove(&member));
        if staged || self.groups.get(&group).is_some_and(|g| g.staging.is_some()) {
            // The joiners' extra buckets follow the new table.
            self.restage(group, None);
        }
        if was == MemberState::Active || staged {
            fx.push(Effect::Port {
                member,
                enabled: false,
            });
        }
    }

    /// Announces the group's staging anew under a new table version (or ends it when no
    /// joiner is left).
    fn restage(&mut self, group: u32, blocked: Option<String>) {
        let serving = self.serving(group);
        let Some(g) = self.groups.get_mut(&group) else {
            return;
        };
        let Some(st) = g.staging.as_mut() else {
            return;
        };
        self.table_version += 1;
        if st.joiners.is_empty() {
            g.staging = None;
            return;
        }
        let joiners: Vec<u32> = st.joiners.iter().copied().collect();
        st.extra = planner::join_extra(&g.table, &serving, &joiners);
        st.version = self.table_version;
        if blocked.is_some() {
            st.blocked = blocked;
        }
    }
}

/// Bucket tables as (active, backup) pairs.
mod table_serde {
    use baton_common::Bucket;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(t: &[Bucket], s: S) -> Result<S::Ok, S::Error> {
        let pairs: Vec<(u32, u32)> = t.iter().map(|b| (b.active, b.backup)).collect();
        pairs.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Bucket>, D::Error> {
        let pairs: Vec<(u32, u32)> = Vec::deserialize(d)?;
        Ok(pairs
            .into_iter()
            .map(|(active, backup)| Bucket { active, backup })
            .collect())
    }
}
