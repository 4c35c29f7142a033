//! The cluster core's own cases; the seeded simulation (`control/tests/simulation.rs`)
//! covers the rest.

use std::time::{Duration, Instant};

use super::*;
use crate::{ccp::Heartbeat, policy_dist::PolicyReport, sim};

fn v(n: u64) -> PolicyVersion {
    PolicyVersion {
        version: n,
        text: format!("version = {n}\nrules = []\n"),
        installed_at: n,
    }
}

fn hb(member: u32, enforced: u64, synced: u64, prepared: Option<u64>) -> Input {
    Input::Heartbeat {
        hb: Box::new(Heartbeat {
            member,
            boot: 1,
            group: 1,
            seq: 1,
            ready: true,
            report: MemberReport {
                policy_version: enforced,
                policy: PolicyReport {
                    enforced,
                    prepared,
                    error: None,
                },
                sync: Some(baton_dataplane::sync::engine::SyncReport {
                    synced_version: synced,
                    table_version: synced,
                    ..Default::default()
                }),
                ..Default::default()
            },
        }),
        to_member: 0,
        from_member: 0,
    }
}

fn cluster(members: u32, t: Instant) -> Cluster {
    let config = sim::config(members, 1, 64);
    let opts = Options::from_config(&config);
    Cluster::new(config, opts, None, Some(v(1)), t).0
}

/// Every member heard, synced and Active.
fn all_active(c: &mut Cluster, members: u32, t: Instant) {
    for _ in 0..4 {
        for m in 1..=members {
            let version = c.state().table_version;
            c.handle(t, hb(m, 1, version, None));
        }
    }
    for m in 1..=members {
        assert_eq!(
            c.state().state_of(m),
            Some(MemberState::Active),
            "member {m}"
        );
    }
}

#[test]
fn a_joiner_waits_for_its_sync_and_a_blocked_join_says_why_and_retries() {
    let t = Instant::now();
    let mut c = cluster(3, t);
    // Members 1 and 2 serve; 3 joins while 2 never acknowledges its bulk sync.
    for m in [1, 2, 1, 2, 1, 2] {
        let version = c.state().table_version;
        c.handle(t, hb(m, 1, version, None));
    }
    let table = c.state().groups[&1].table.clone();
    c.handle(t, hb(3, 1, 0, None));
    assert!(c.state().is_staged(3));
    let staged = c.state().groups[&1].staging.clone().unwrap().version;
    c.handle(t, hb(1, 1, staged, None));
    let later = t + JOIN_SYNC_MAX + Duration::from_millis(1);
    // Still heard, still not synced by member 2: blocked, the table untouched.
    c.handle(later, hb(2, 1, staged - 1, None));
    c.handle(later, hb(3, 1, 0, None));
    c.handle(later, hb(1, 1, staged, None));
    let out = c.handle(later, Input::Tick);
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Logged(Entry {
            command: Command::JoinBlocked { .. },
            ..
        })
    )));
    assert_eq!(c.state().groups[&1].table, table, "no bucket changed hands");
    let why = c.member(3, later).unwrap().join_blocked.unwrap();
    assert!(why.contains("member(s) [2]"), "{why}");
    assert_eq!(c.member(3, later).unwrap().state, MemberState::Joining);
    // The retry runs under a new version; once both acknowledge it, 3 takes its buckets.
    let retry = c.state().groups[&1].staging.clone().unwrap().version;
    assert!(retry > staged);
    c.handle(later, hb(1, 1, retry, None));
    c.handle(later, hb(2, 1, retry, None));
    assert_eq!(c.state().state_of(3), Some(MemberState::Active));
    assert!(c.member(3, later).unwrap().join_blocked.is_none());
}

#[test]
fn an_install_that_answers_enforced_leaves_no_active_member_on_another_version() {
    let t = Instant::now();
    let mut c = cluster(3, t);
    all_active(&mut c, 3, t);
    let version = c.state().table_version;
    // Member 3 dies during the install of version 2 and comes back meanwhile.
    let out = c.handle(
        t,
        Input::Request {
            id: 7,
            op: Op::PolicyInstall {
                group: 1,
                target: v(2),
            },
        },
    );
    assert!(!out.iter().any(|o| matches!(o, Output::Reply { .. })));
    let t1 = t + Duration::from_secs(1);
    c.handle(t1, hb(1, 1, version, Some(2)));
    c.handle(t1, hb(2, 1, version, None));
    c.handle(t1, Input::Tick); // 3 is silent: Lost
    assert_eq!(c.state().state_of(3), Some(MemberState::Down));
    c.handle(t1, hb(3, 1, version, None));
    c.handle(t1, hb(2, 1, version, Some(2)));
    c.handle(t1, hb(1, 2, version, None));
    let out = c.handle(t1, hb(2, 2, version, None));
    let reply = out.iter().find_map(|o| match o {
        Output::Reply { id: 7, result } => Some(result.clone()),
        _ => None,
    });
    assert_eq!(
        reply,
        Some(Ok(Reply::PolicyInstalled {
            group: 1,
            version: 2,
            members: vec![1, 2]
        }))
    );
    // Member 3 enforces version 1: it may not be Active until it enforces 2.
    let table_version = c.state().table_version;
    c.handle(t1, hb(3, 1, table_version, None));
    assert_ne!(c.state().state_of(3), Some(MemberState::Active));
    let ack = c.answer(3, 9).unwrap();
    assert_eq!(ack.policy.unwrap().version, 2);
    for m in 1..=3 {
        c.handle(t1, hb(m, 2, c.state().table_version, None));
    }
    assert_eq!(c.state().state_of(3), Some(MemberState::Active));
}

#[test]
fn a_restart_restores_the_state_and_an_old_state_file_is_imported() {
    let t = Instant::now();
    let mut c = cluster(3, t);
    all_active(&mut c, 3, t);
    c.handle(
        t,
        Input::Request {
            id: 1,
            op: Op::Detach { member: 3 },
        },
    );
    let stored: Stored =
        serde_json::from_str(&serde_json::to_string(&c.stored()).unwrap()).unwrap();
    let config = c.config().clone();
    let opts = Options::from_config(&config);
    let (d, out) = Cluster::new(config.clone(), opts.clone(), Some(stored), None, t);
    assert_eq!(d.state(), c.state());
    assert!(out.contains(&Output::Table {
        group: 1,
        buckets: c.state().groups[&1].table.clone()
    }));
    assert!(
        !out.iter().any(|o| matches!(o, Output::Logged(_))),
        "nothing to decide"
    );
    // Restored Active members count as heard at the first tick (however long the start
    // took): silent, they are Lost a dead interval later, not before.
    let mut d = d;
    let dead = opts.heartbeat_interval * opts.dead_count;
    let first = t + dead * 4;
    d.handle(first, Input::Tick);
    assert_eq!(d.state().state_of(1), Some(MemberState::Active));
    d.handle(first + dead, Input::Tick);
    assert_eq!(d.state().state_of(1), Some(MemberState::Active));
    d.handle(first + dead + Duration::from_millis(1), Input::Tick);
    assert_eq!(d.state().state_of(1), Some(MemberState::Down));
    // A state file of the orchestrator before the cluster core.
    let old = crate::persist::State {
        table_version: 9,
        members: [(1, MemberState::Active), (3, MemberState::Detached)].into(),
        tables: [(
            1,
            c.state().groups[&1]
                .table
                .iter()
                .map(|b| (b.active, b.backup))
                .collect(),
        )]
        .into(),
        workers: [(2, 4)].into(),
        policies: [(1, vec![v(1), v(5)])].into(),
    };
    let s = store::import(&old, &config);
    assert_eq!(s.table_version, 9);
    assert_eq!(s.state_of(1), Some(MemberState::Active));
    assert_eq!(s.state_of(2), Some(MemberState::Down));
    assert_eq!(s.state_of(3), Some(MemberState::Detached));
    assert_eq!(s.members[&2].workers, Some(4));
    assert_eq!(s.groups[&1].policy.current().unwrap().version, 5);
    assert_eq!(s.groups[&1].table, c.state().groups[&1].table);
}

#[test]
fn requests_are_refused_with_a_reason_and_change_nothing() {
    let t = Instant::now();
    let mut c = cluster(2, t);
    all_active(&mut c, 2, t);
    let before = c.applied_index();
    for (op, says) in [
        (Op::Detach { member: 9 }, "no member 9"),
        (
            Op::Workers {
                member: 1,
                workers: 0,
            },
            "workers must be",
        ),
        (Op::PolicyRollback { group: 1 }, "no earlier version"),
        (
            Op::PolicyInstall {
                group: 1,
                target: v(1),
            },
            "not newer",
        ),
        (
            Op::Add {
                member: 2,
                group: 1,
                site: 1,
                downlink: "x".into(),
            },
            "already",
        ),
    ] {
        let out = c.handle(t, Input::Request { id: 3, op });
        match &out[..] {
            [Output::Reply {
                id: 3,
                result: Err(r),
            }] => assert!(r.message.contains(says), "{r:?}"),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(c.applied_index(), before);
}

#[test]
fn a_member_restarted_within_the_dead_interval_gives_up_its_buckets_and_rejoins() {
    let t = Instant::now();
    let mut c = cluster(3, t);
    all_active(&mut c, 3, t);
    let table = c.state().groups[&1].table.clone();
    let restarted = |boot| {
        let Input::Heartbeat { mut hb, .. } = hb(2, 1, 0, None) else {
            unreachable!()
        };
        hb.boot = boot;
        Input::Heartbeat {
            hb,
            to_member: 0,
            from_member: 0,
        }
    };
    // A late heartbeat of the old process changes nothing.
    c.handle(t, restarted(0));
    assert_eq!(c.state().state_of(2), Some(MemberState::Active));
    // The new process (a larger incarnation) has lost its connections: its buckets go to
    // their backups at once, and it joins again.
    c.handle(t, restarted(2));
    assert_ne!(c.state().state_of(2), Some(MemberState::Active));
    let after = &c.state().groups[&1].table;
    for (x, y) in table.iter().zip(after) {
        if x.active == 2 {
            assert_eq!(y.active, x.backup);
        } else {
            assert_eq!(y.active, x.active);
        }
    }
}
