//! `baton lab fail|restore member K` under traffic: the member fails as its machine would
//! (no process left, every link down at both ends, unreachable), the orchestrator marks it
//! Down and moves its buckets to their backups, its connections complete intact there; and
//! restored, it comes back Active with a share of the buckets.

use std::time::{Duration, Instant};

use baton_lab::traffic::{Pace, TcpFlow};
use baton_tests::*;
use serde_json::Value;

const SESSIONS: u64 = 60;
/// 2 KB every 20 ms, 300 rounds: 6 s per connection.
const PACE: Pace = Pace {
    chunk: 2048,
    gap: Duration::from_millis(20),
};
const ROUNDS: u64 = 300;
const VICTIM: u64 = 2;
/// The victim's links at the orchestrator's end.
const PEERS: [&str; 3] = ["dl-sgm2", "mg-sgm2", "sy-sgm2"];

fn state(s: &Value, k: u64) -> String {
    s["groups"][0]["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == k)
        .and_then(|m| m["state"].as_str())
        .unwrap_or("absent")
        .to_string()
}

/// Whether interface `iface` of `ns` is administratively up, and its operational state.
fn link(ns: &str, iface: &str) -> (bool, String) {
    let out = in_ns(ns, &["ip", "-j", "link", "show", iface]);
    assert!(out.status.success(), "{ns}:{iface}: {out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("ip -j is JSON");
    let up = v[0]["flags"].as_array().unwrap().iter().any(|f| f == "UP");
    (up, v[0]["operstate"].as_str().unwrap_or("").to_string())
}

/// The member's own interfaces, loopback aside.
fn member_links() -> Vec<String> {
    let out = in_ns("bt-sgm2", &["ip", "-j", "link", "show"]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("ip -j is JSON");
    let names: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["ifname"].as_str().unwrap().to_string())
        .filter(|n| n != "lo")
        .collect();
    assert_eq!(names.len(), 3, "data, sync and management ports: {names:?}");
    names
}

fn all_links() -> Vec<(&'static str, String)> {
    member_links()
        .into_iter()
        .map(|i| ("bt-sgm2", i))
        .chain(PEERS.iter().map(|p| ("bt-orch", p.to_string())))
        .collect()
}

/// The orchestrator reaches the member's management address.
fn reachable() -> bool {
    in_ns("bt-orch", &["ping", "-c", "1", "-W", "1", "198.51.100.2"])
        .status
        .success()
}

fn processes() -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "pids", "bt-sgm2"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Active and backup member of a flow, from `baton search`.
fn search(f: &TcpFlow) -> (u64, u64) {
    let v: Value = serde_json::from_str(&baton_ok(&[
        "search",
        &f.client.to_string(),
        &f.server.to_string(),
        "--proto",
        "tcp",
        "--json",
    ]))
    .unwrap();
    (v["active"].as_u64().unwrap(), v["backup"].as_u64().unwrap())
}

fn refused(args: &[&str], says: &str) {
    let out = baton(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert!(err.contains(says), "{args:?} says {err:?}, not {says:?}");
}

#[test]
fn a_failed_member_goes_down_keeps_its_connections_and_comes_back() {
    let lab = Lab::up(3);
    // What the failure must change holds before it.
    assert!(reachable(), "member 2's management address answers");
    assert!(!processes().is_empty(), "member 2 runs");
    for (ns, i) in all_links() {
        assert_eq!(link(ns, &i), (true, "UP".into()), "{ns}:{i} before");
    }
    refused(&["lab", "restore", "member", "2"], "has not failed");
    refused(&["lab", "fail", "member", "4"], "has no member 4");

    let flows = TcpFlow::lab(SESSIONS, 33000, PACE.chunk as u64 * ROUNDS, 7);
    let sessions = Sessions::start(
        flows.clone(),
        PACE,
        Duration::from_secs(5),
        Duration::from_secs(90),
    );
    sessions.wait_bytes(SESSIONS * PACE.chunk as u64 * 10);
    wait_synced(SESSIONS, Duration::from_secs(20));
    let table = bucket_table();
    let on_victim: Vec<(&TcpFlow, u64)> = flows
        .iter()
        .filter_map(|f| match search(f) {
            (VICTIM, backup) => Some((f, backup)),
            _ => None,
        })
        .collect();
    let victim_connections = member_field(&stat_json(), "connections")
        .into_iter()
        .find(|(id, _)| *id == VICTIM)
        .unwrap()
        .1;
    assert!(
        victim_connections >= 10 && !on_victim.is_empty(),
        "member 2 carries {victim_connections} connections: the test would prove little"
    );

    let failed_at = Instant::now();
    baton_ok(&["lab", "fail", "member", "2"]);
    // As a dead machine: no process, every link down at both ends, unreachable.
    assert_eq!(processes(), "", "processes left in bt-sgm2");
    for (ns, i) in all_links() {
        let (up, oper) = link(ns, &i);
        assert!(!up && oper == "DOWN", "{ns}:{i} is {oper} (up: {up})");
    }
    assert!(!reachable(), "member 2 answers although failed");
    refused(&["lab", "fail", "member", "2"], "already failed");
    // The orchestrator sees it Down and moves its buckets to their backups, and only them.
    let s = wait_stat(Duration::from_secs(5), |s| state(s, VICTIM) == "down");
    assert_eq!(state(&s, VICTIM), "down", "{s}");
    eprintln!("member 2 down after {:?}", failed_at.elapsed());
    let after = bucket_table();
    for i in 0..table.active.len() {
        let want = if table.active[i] == VICTIM as u32 {
            table.backup[i]
        } else {
            table.active[i]
        };
        assert_eq!(after.active[i], want, "bucket {i}");
    }
    for (f, backup) in &on_victim {
        assert_eq!(search(f).0, *backup, "{f:?} is on its backup");
    }
    // Its connections complete, every byte checked, on the backups.
    let results = sessions.finish();
    let lost: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        lost.is_empty(),
        "{} of {SESSIONS} connections lost when member 2 failed (it had \
         {victim_connections}), e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(3)]
    );

    // Restored: links up at both ends, running, Active again with a share of the buckets.
    let out = baton_ok(&["lab", "restore", "member", "2"]);
    eprintln!("{}", out.trim());
    // The rejoin includes a process start and a bulk sync: generous, for a loaded machine.
    let s = wait_stat(Duration::from_secs(30), |s| {
        state(s, VICTIM) == "active"
            && member_field(s, "buckets_active")
                .iter()
                .any(|(id, b)| *id == VICTIM && *b > 0)
    });
    assert_eq!(state(&s, VICTIM), "active", "{s}");
    let share = member_field(&s, "buckets_active")
        .into_iter()
        .find(|(id, _)| *id == VICTIM)
        .unwrap()
        .1;
    assert!(share > 0, "member 2 active again but for no bucket: {s}");
    for (ns, i) in all_links() {
        assert_eq!(link(ns, &i), (true, "UP".into()), "{ns}:{i} restored");
    }
    assert!(!processes().is_empty(), "member 2 runs again");
    assert!(reachable(), "member 2 answers again");
    refused(&["lab", "restore", "member", "2"], "has not failed");

    drop(lab);
    refused(&["lab", "fail", "member", "2"], "no lab is up");
}
