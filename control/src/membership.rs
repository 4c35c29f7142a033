//! Member states and the SMO master, as a sans-IO state machine: heartbeats and clock ticks
//! in, state changes out. The orchestrator is the only authority; it never needs consensus.
//!
//! Down → Joining (first heartbeat) → Active (the member reports its data path ready);
//! Active/Joining → Down when `dead_count` heartbeat intervals pass in silence;
//! Detached is administrative and ignores heartbeats until attached again.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    Down,
    Joining,
    Active,
    Detached,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Heartbeat {
        member: u32,
        ready: bool,
    },
    Tick,
    Detach(u32),
    Attach(u32),
    /// The orchestrator admits a member to a group (Down until heard).
    Add {
        member: u32,
        group: u32,
    },
    /// The orchestrator removes a member (from any state).
    Remove(u32),
    /// The orchestrator moves a member to another group: it leaves its group at once and
    /// rejoins the new one through Joining.
    Move {
        member: u32,
        group: u32,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Start steering the member's buckets to it.
    Activate(u32),
    /// Stop steering to it (its buckets go to their backups).
    Deactivate(u32),
    /// The group's SMO master changed (None: no Active member).
    Smo { group: u32, master: Option<u32> },
}

#[derive(Clone, Debug)]
struct Entry {
    group: u32,
    state: MemberState,
    last_heard: Option<Instant>,
}

#[derive(Clone, Debug)]
pub struct Membership {
    members: BTreeMap<u32, Entry>,
    dead_after: Duration,
    smo: BTreeMap<u32, Option<u32>>,
}

impl Membership {
    /// `members`: (member id, group id) as configured. A member is Down until heard.
    pub fn new(
        members: impl IntoIterator<Item = (u32, u32)>,
        interval: Duration,
        dead_count: u32,
    ) -> Self {
        let members: BTreeMap<u32, Entry> = members
            .into_iter()
            .map(|(id, group)| {
                (
                    id,
                    Entry {
                        group,
                        state: MemberState::Down,
                        last_heard: None,
                    },
                )
            })
            .collect();
        let smo = members.values().map(|e| (e.group, None)).collect();
        Self {
            members,
            dead_after: interval * dead_count,
            smo,
        }
    }

    /// Takes back the states an earlier run left (an orchestrator restart), as if each
    /// Active member had just been heard: one that stays silent is declared Down after the
    /// dead interval as usual. Returns nothing to do: the data path is already so.
    pub fn restore(&mut self, now: Instant, states: impl IntoIterator<Item = (u32, MemberState)>) {
        for (id, state) in states {
            if let Some(e) = self.members.get_mut(&id) {
                e.state = match state {
                    MemberState::Active | MemberState::Detached => state,
                    _ => MemberState::Down,
                };
                e.last_heard = (state == MemberState::Active).then_some(now);
            }
        }
        let groups: Vec<u32> = self.smo.keys().copied().collect();
        for g in groups {
            let master = self.smo(g);
            self.smo.insert(g, master);
        }
    }

    pub fn state(&self, member: u32) -> Option<MemberState> {
        self.members.get(&member).map(|e| e.state)
    }

    pub fn group(&self, member: u32) -> Option<u32> {
        self.members.get(&member).map(|e| e.group)
    }

    /// SMO master of a group: the lowest Active id.
    pub fn smo(&self, group: u32) -> Option<u32> {
        self.members
            .iter()
            .find(|(_, e)| e.group == group && e.state == MemberState::Active)
            .map(|(id, _)| *id)
    }

    /// Active members of a group, in id order.
    pub fn active(&self, group: u32) -> Vec<u32> {
        self.members
            .iter()
            .filter(|(_, e)| e.group == group && e.state == MemberState::Active)
            .map(|(id, _)| *id)
            .collect()
    }

    pub fn members(&self) -> impl Iterator<Item = (u32, u32, MemberState)> + '_ {
        self.members.iter().map(|(id, e)| (*id, e.group, e.state))
    }

    pub fn handle(&mut self, now: Instant, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::Heartbeat { member, ready } => {
                let Some(e) = self.members.get_mut(&member) else {
                    return out; // not configured: ignored
                };
                e.last_heard = Some(now);
                let was = e.state;
                match e.state {
                    MemberState::Down => {
                        e.state = if ready {
                            MemberState::Active
                        } else {
                            MemberState::Joining
                        };
                    }
                    MemberState::Joining if ready => e.state = MemberState::Active,
                    _ => {}
                }
                if was != MemberState::Active && e.state == MemberState::Active {
                    out.push(Action::Activate(member));
                }
            }
            Event::Tick => {
                let dead_after = self.dead_after;
                for (id, e) in self.members.iter_mut() {
                    let silent = e
                        .last_heard
                        .is_none_or(|t| now.duration_since(t) > dead_after);
                    if matches!(e.state, MemberState::Active | MemberState::Joining) && silent {
                        if e.state == MemberState::Active {
                            out.push(Action::Deactivate(*id));
                        }
                        e.state = MemberState::Down;
                    }
                }
            }
            Event::Detach(member) => {
                if let Some(e) = self.members.get_mut(&member) {
                    if e.state == MemberState::Active {
                        out.push(Action::Deactivate(member));
                    }
                    e.state = MemberState::Detached;
                }
            }
            Event::Attach(member) => {
                if let Some(e) = self.members.get_mut(&member) {
                    if e.state == MemberState::Detached {
                        e.state = MemberState::Down;
                        e.last_heard = None;
                    }
                }
            }
            Event::Add { member, group } => {
                if let std::collections::btree_map::Entry::Vacant(v) = self.members.entry(member) {
                    v.insert(Entry {
                        group,
                        state: MemberState::Down,
                        last_heard: None,
                    });
                    self.smo.entry(group).or_insert(None);
                }
            }
            Event::Remove(member) => {
                if let Some(e) = self.members.remove(&member) {
                    if e.state == MemberState::Active {
                        out.push(Action::Deactivate(member));
                    }
                }
            }
            Event::Move { member, group } => {
                if let Some(e) = self.members.get_mut(&member) {
                    if e.group != group {
                        if e.state == MemberState::Active {
                            out.push(Action::Deactivate(member));
                        }
                        e.group = group;
                        e.state = MemberState::Down;
                        e.last_heard = None;
                        self.smo.entry(group).or_insert(None);
                    }
                }
            }
        }
        self.update_smo(&mut out);
        out
    }

    fn update_smo(&mut self, out: &mut Vec<Action>) {
        let groups: Vec<u32> = self.smo.keys().copied().collect();
        for g in groups {
            let now = self.smo(g);
            if self.smo.get(&g).copied().flatten() != now {
                self.smo.insert(g, now);
                out.push(Action::Smo {
                    group: g,
                    master: now,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const T: Duration = Duration::from_millis(100);

    #[test]
    fn join_activate_die() {
        let t0 = Instant::now();
        let mut m = Membership::new([(1, 1), (2, 1)], T, 3);
        assert_eq!(
            m.handle(
                t0,
                Event::Heartbeat {
                    member: 2,
                    ready: false
                }
            ),
            vec![]
        );
        assert_eq!(m.state(2), Some(MemberState::Joining));
        assert_eq!(
            m.handle(
                t0,
                Event::Heartbeat {
                    member: 2,
                    ready: true
                }
            ),
            vec![
                Action::Activate(2),
                Action::Smo {
                    group: 1,
                    master: Some(2)
                }
            ]
        );
        // A lower id becoming Active takes the master role at once.
        assert_eq!(
            m.handle(
                t0,
                Event::Heartbeat {
                    member: 1,
                    ready: true
                }
            ),
            vec![
                Action::Activate(1),
                Action::Smo {
                    group: 1,
                    master: Some(1)
                }
            ]
        );
        // Member 1 falls silent; 2 keeps talking.
        let t1 = t0 + Duration::from_millis(250);
        m.handle(
            t1,
            Event::Heartbeat {
                member: 2,
                ready: true,
            },
        );
        assert_eq!(m.handle(t1, Event::Tick), vec![]);
        let t2 = t0 + Duration::from_millis(301);
        assert_eq!(
            m.handle(t2, Event::Tick),
            vec![
                Action::Deactivate(1),
                Action::Smo {
                    group: 1,
                    master: Some(2)
                }
            ]
        );
        assert_eq!(m.state(1), Some(MemberState::Down));
        // Unknown members are ignored.
        assert_eq!(
            m.handle(
                t2,
                Event::Heartbeat {
                    member: 9,
                    ready: true
                }
            ),
            vec![]
        );
    }

    #[test]
    fn detached_ignores_heartbeats_until_attached() {
        let t0 = Instant::now();
        let mut m = Membership::new([(1, 1)], T, 3);
        m.handle(
            t0,
            Event::Heartbeat {
                member: 1,
                ready: true,
            },
        );
        assert_eq!(
            m.handle(t0, Event::Detach(1)),
            vec![
                Action::Deactivate(1),
                Action::Smo {
                    group: 1,
                    master: None
                }
            ]
        );
        assert_eq!(
            m.handle(
                t0,
                Event::Heartbeat {
                    member: 1,
                    ready: true
                }
            ),
            vec![]
        );
        assert_eq!(m.state(1), Some(MemberState::Detached));
        m.handle(t0, Event::Attach(1));
        assert_eq!(
            m.handle(
                t0,
                Event::Heartbeat {
                    member: 1,
                    ready: true
                }
            )[0],
            Action::Activate(1)
        );
    }

    fn event() -> impl Strategy<Value = (u64, Event)> {
        let member = 1u32..=6;
        (
            0u64..400,
            prop_oneof![
                (member.clone(), any::<bool>())
                    .prop_map(|(member, ready)| Event::Heartbeat { member, ready }),
                Just(Event::Tick),
                member.clone().prop_map(Event::Detach),
                member.clone().prop_map(Event::Attach),
                (member.clone(), 1u32..=2).prop_map(|(member, group)| Event::Add { member, group }),
                member.clone().prop_map(Event::Remove),
                (member, 1u32..=2).prop_map(|(member, group)| Event::Move { member, group }),
            ],
        )
    }

    proptest! {
        /// Over any sequence of heartbeats, silences, detaches, attaches, additions,
        /// removals and moves: at most one master per group, always the lowest Active id,
        /// announced exactly when it changes; Activate/Deactivate alternate per member; no
        /// member is in two groups.
        #[test]
        fn master_is_always_lowest_active(events in proptest::collection::vec(event(), 1..200)) {
            let t0 = Instant::now();
            let mut now = t0;
            let mut m = Membership::new((1..=6).map(|id| (id, 1 + id % 2)), T, 3);
            let mut announced: BTreeMap<u32, Option<u32>> = BTreeMap::new();
            let mut steering = std::collections::BTreeSet::new();
            for (dt, e) in events {
                now += Duration::from_millis(dt);
                for a in m.handle(now, e) {
                    match a {
                        Action::Activate(id) => prop_assert!(steering.insert(id)),
                        Action::Deactivate(id) => prop_assert!(steering.remove(&id)),
                        Action::Smo { group, master } => { announced.insert(group, master); }
                    }
                }
                for g in [1, 2] {
                    let active = m.active(g);
                    prop_assert_eq!(m.smo(g), active.first().copied());
                    prop_assert_eq!(announced.get(&g).copied().flatten(), active.first().copied());
                    for id in active {
                        prop_assert_eq!(m.group(id), Some(g));
                        prop_assert!(steering.contains(&id));
                    }
                }
                let active_total: usize = [1, 2].iter().map(|g| m.active(*g).len()).sum();
                prop_assert_eq!(active_total, steering.len());
                // No member is in two groups: each appears once, in the group it reports.
                let mut seen = std::collections::BTreeSet::new();
                for (id, g, _) in m.members() {
                    prop_assert!(seen.insert(id));
                    prop_assert_eq!(m.group(id), Some(g));
                }
            }
        }
    }
}
