//! The control plane in the lab: the SMO master's tasks move with the election.

use std::time::{Duration, Instant};

use baton_tests::*;
use serde_json::Value;

fn tasks_json() -> Value {
    serde_json::from_str(&baton_ok(&["stat", "-i", "tasks", "--json"])).expect("tasks JSON")
}

fn running(t: &Value, id: u64) -> Vec<String> {
    t["groups"][0]["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == id)
        .map(|m| {
            m["running"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn wait_tasks(limit: Duration, check: impl Fn(&Value) -> bool) -> (Value, Duration) {
    let start = Instant::now();
    loop {
        let t = tasks_json();
        if check(&t) || start.elapsed() > limit {
            return (t, start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn killing_the_master_moves_its_tasks_to_the_new_master() {
    let _lab = Lab::up(3);
    // A member reports the tasks of its new state at its next heartbeat after the answer
    // that told it (members become Active once their bulk sync is acknowledged).
    let (t, _) = wait_tasks(Duration::from_secs(2), |t| {
        running(t, 1).contains(&"policy_installation".to_string())
            && [2, 3].iter().all(|id| running(t, *id).len() == 3)
    });
    assert_eq!(t["groups"][0]["smo"], 1);
    assert!(
        running(&t, 1).contains(&"policy_installation".to_string()),
        "{t}"
    );
    for id in [2, 3] {
        assert_eq!(running(&t, id), vec!["lacp", "ch_monitor", "uipc"], "{t}");
    }
    kill_ns("bt-sgm1");
    // Dead detection (300 ms) plus a heartbeat for member 2 to hear it is master.
    let (t, took) = wait_tasks(Duration::from_secs(2), |t| {
        t["groups"][0]["smo"] == 2 && running(t, 2).contains(&"policy_installation".to_string())
    });
    assert_eq!(t["groups"][0]["smo"], 2, "{t}");
    assert!(
        running(&t, 2).contains(&"logging".to_string()),
        "member 2 runs the SMO tasks: {t}"
    );
    assert!(running(&t, 1).is_empty(), "a dead member runs nothing: {t}");
    assert_eq!(running(&t, 3), vec!["lacp", "ch_monitor", "uipc"]);
    eprintln!("tasks moved {took:?} after the kill");
    assert!(
        took < Duration::from_millis(700),
        "tasks moved after {took:?}"
    );
}

#[test]
fn the_cli_prints_shell_completions() {
    for shell in ["bash", "zsh", "fish"] {
        let out = baton_ok(&["completions", shell]);
        assert!(out.contains("baton") && out.contains("sync"), "{shell}");
    }
    let out = baton(&["completions", "tcsh"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

const NO_SSH: &str = r#"version = 2
[[rules]]
name = "no ssh"
proto = "tcp"
dport = "22"
action = "drop"
[[rules]]
name = "the rest"
action = "accept"
"#;

/// Whether a TCP connection from bt-ext to bt-int port `port` opens within 2 s.
fn tcp_ok(port: u16) -> bool {
    use baton_lab::{
        topology::{NS_EXT, NS_INT},
        traffic::{in_netns, join},
    };
    let addr: std::net::SocketAddr = format!("198.19.0.5:{port}").parse().unwrap();
    let listener = join(in_netns(NS_INT, move || {
        std::net::TcpListener::bind(addr).map_err(|e| baton_lab::traffic::TrafficError::Io {
            what: "listen".into(),
            source: e,
        })
    }))
    .expect("listener");
    let connected = join(in_netns(NS_EXT, move || {
        Ok(std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok())
    }))
    .expect("connect");
    drop(listener);
    connected
}

fn policy_versions() -> Vec<(u64, u64)> {
    member_field(&stat_json(), "policy_version")
}

#[test]
fn policies_install_everywhere_roll_back_and_reach_a_restarted_member() {
    let _lab = Lab::up(3);
    assert!(tcp_ok(22) && tcp_ok(80), "version 1 accepts everything");
    let dir = std::env::temp_dir().join(format!("baton-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("v2.toml");
    std::fs::write(&file, NO_SSH).unwrap();
    let out = baton_ok(&["policy", "install", file.to_str().unwrap()]);
    assert!(
        out.contains("version 2 enforced by members [1, 2, 3]"),
        "{out}"
    );
    let s = stat_json();
    for m in s["groups"][0]["members"].as_array().unwrap() {
        assert_eq!(m["policy_version"], 2, "{m}");
        assert!(m["policy_date"].as_u64().unwrap() > 0, "{m}");
    }
    assert!(!tcp_ok(22), "version 2 drops ssh");
    assert!(tcp_ok(80), "version 2 accepts the rest");

    // Bad input changes nothing.
    std::fs::write(&file, "version = 3\n[[rules]]\naction = \"allow\"\n").unwrap();
    let out = baton(&["policy", "install", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("policy refused"));
    std::fs::write(&file, NO_SSH).unwrap();
    let out = baton(&["policy", "install", file.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not newer"));
    assert!(policy_versions().iter().all(|(_, v)| *v == 2));

    // A member that restarts with its own file (version 1) becomes Active only once it
    // enforces version 2.
    kill_ns("bt-sgm2");
    wait_stat(Duration::from_secs(2), |s| {
        s["groups"][0]["members"][1]["state"] == "down"
    });
    baton_lab::topology::start_member(&lab_options(), 2).unwrap();
    let start = Instant::now();
    loop {
        let s = stat_json();
        let m = &s["groups"][0]["members"][1];
        if m["state"] == "active" {
            assert_eq!(
                m["policy_version"], 2,
                "active before enforcing the current policy: {m}"
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "member 2 did not come back: {m}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }

    // Rollback: version 1 everywhere again.
    let out = baton_ok(&["policy", "rollback"]);
    assert!(out.contains("version 1 enforced"), "{out}");
    assert!(
        policy_versions().iter().all(|(_, v)| *v == 1),
        "{:?}",
        policy_versions()
    );
    assert!(tcp_ok(22));
    let _ = std::fs::remove_dir_all(&dir);
}

fn member_ids() -> Vec<u64> {
    member_field(&stat_json(), "rx_packets")
        .into_iter()
        .map(|(id, _)| id)
        .collect()
}

/// `baton sgm remove|add`: the orchestrator alone changes the members, within the limits,
/// writing its configuration back; bad requests change nothing.
#[test]
fn members_are_removed_and_added_back_by_the_orchestrator() {
    let _lab = Lab::up(3);
    let config = std::path::Path::new(baton_lab::topology::STATE_DIR).join("baton.toml");
    baton_ok(&["sgm", "remove", "3"]);
    assert_eq!(member_ids(), vec![1, 2]);
    let table = bucket_table();
    assert!(
        !table.active.contains(&3) && !table.backup.contains(&3),
        "member 3 holds no bucket"
    );
    assert!(!std::fs::read_to_string(&config)
        .unwrap()
        .contains("dl-sgm3"));
    for (args, says) in [
        (&["sgm", "remove", "3"][..], "no member 3"),
        (
            &["sgm", "add", "1", "--downlink", "dl-sgm3"][..],
            "already in group 1",
        ),
        (
            &["sgm", "add", "64", "--downlink", "dl-sgm3"][..],
            "outside 1..=63",
        ),
        (
            &["sgm", "add", "5", "--group", "7", "--downlink", "dl-sgm3"][..],
            "no group 7",
        ),
        (&["sgm", "add", "5", "--downlink", "nosuch0"][..], "nosuch0"),
        (
            &["sgm", "move", "1", "--group", "1"][..],
            "already in group 1",
        ),
    ] {
        let out = baton(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(err.contains("HTTP 4"), "{args:?}: a 4xx: {err}");
    }
    assert_eq!(member_ids(), vec![1, 2], "nothing changed");
    // Its daemon still runs: added back, it joins and takes buckets again.
    baton_ok(&["sgm", "add", "3", "--downlink", "dl-sgm3"]);
    let s = wait_stat(Duration::from_secs(10), |s| {
        member_field(s, "buckets_active")
            .iter()
            .any(|(id, b)| *id == 3 && *b > 0)
    });
    let m3 = &s["groups"][0]["members"][2];
    assert_eq!(m3["state"], "active", "{m3}");
    assert!(std::fs::read_to_string(&config)
        .unwrap()
        .contains("dl-sgm3"));
}

/// Connections of `sessions`.
const SESSIONS: u64 = 60;

/// Paced TCP sessions through the lab (2 KB every 20 ms for 8 s each).
fn sessions(port: u16) -> Sessions {
    let flows = baton_lab::traffic::TcpFlow::lab(SESSIONS, port, 2048 * 400, 11);
    let s = Sessions::start(
        flows,
        baton_lab::traffic::Pace {
            chunk: 2048,
            gap: Duration::from_millis(20),
        },
        Duration::from_secs(5),
        Duration::from_secs(60),
    );
    s.wait_bytes(SESSIONS * 2048 * 20);
    s
}

/// Member 2's data port goes down while its heartbeats still arrive.
fn partition_member_2() {
    let out = in_ns("bt-sgm2", &["ip", "link", "set", "dl0", "down"]);
    assert!(out.status.success(), "{out:?}");
}

/// A member whose heartbeats arrive but whose data path is cut is isolated (its buckets go
/// to their backups, which hold its connections), never left half in.
#[test]
fn a_member_with_a_partitioned_data_path_is_isolated() {
    let _lab = Lab::up(3);
    let s = sessions(31000);
    // Every connection has its copy at its backup before the cut.
    wait_synced(SESSIONS, Duration::from_secs(20));
    partition_member_2();
    // The dead interval once 8 frames went unanswered; retransmissions back off, and a
    // loaded machine delays them further: the bound is generous, the outcome is exact.
    let st = wait_stat(Duration::from_secs(8), |s| {
        s["groups"][0]["members"][1]["state"] == "isolated"
    });
    let m2 = &st["groups"][0]["members"][1];
    assert_eq!(m2["state"], "isolated", "{m2}");
    assert!(
        m2["isolated"]
            .as_str()
            .unwrap_or("")
            .contains("do not reach it"),
        "{m2}"
    );
    let lost = s
        .finish()
        .into_iter()
        .filter(std::result::Result::is_err)
        .count();
    assert_eq!(lost, 0, "connections lost although the member was isolated");
}

/// The negative control: without isolation the partitioned member keeps its buckets and
/// its connections are lost.
#[test]
fn without_isolation_a_partitioned_member_loses_its_connections() {
    let _lab = Lab::up_with(&["--sgms", "3", "--no-isolation"]);
    let s = sessions(32000);
    // As above: only the missing isolation can lose a connection.
    wait_synced(SESSIONS, Duration::from_secs(20));
    partition_member_2();
    let lost = s
        .finish()
        .into_iter()
        .filter(std::result::Result::is_err)
        .count();
    assert!(lost >= 5, "only {lost} connections lost");
    assert_eq!(stat_json()["groups"][0]["members"][1]["state"], "active");
}
