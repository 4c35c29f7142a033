//! HyperSync in the lab: long-lived TCP connections survive `kill -9` of a member because
//! their backup already holds them; with sync off (the negative control) they do not.

use std::{
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use baton_control::{
    lab::{NS_EXT, NS_INT},
    traffic::{tcp_sessions, Pace, Progress, TcpFlow, TcpReport, TrafficError},
};
use baton_tests::*;
use serde_json::Value;

/// Connections per run, and how each sends: 2 KB every 20 ms for 6 s.
const SESSIONS: u64 = 200;
const PACE: Pace = Pace {
    chunk: 2048,
    gap: Duration::from_millis(20),
};
const ROUNDS: u64 = 300;
/// A connection that stalls longer than this is lost (the design's definition).
const STALL_LIMIT: Duration = Duration::from_secs(5);

fn flows(port: u16) -> Vec<TcpFlow> {
    (0..SESSIONS)
        .map(|i| TcpFlow {
            id: i,
            client: IpAddr::from([198, 18, 0, 1 + (i % 63) as u8]),
            server: IpAddr::from([198, 19, 0, 1 + ((i / 63 + i * 7) % 63) as u8]),
            port: port + i as u16,
            bytes: PACE.chunk as u64 * ROUNDS,
        })
        .collect()
}

pub fn sync_json() -> Value {
    serde_json::from_str(&baton_ok(&["sync", "stat", "--json"])).expect("sync stat --json")
}

/// Copies all members hold for others.
fn copies(s: &Value) -> u64 {
    s["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| m["backup_connections"].as_u64().unwrap_or(0))
        .sum()
}

struct Outcome {
    results: Vec<Result<TcpReport, TrafficError>>,
    victim_connections: u64,
    sync_after: Value,
}

impl Outcome {
    fn lost(&self) -> Vec<&TrafficError> {
        self.results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .collect()
    }
}

/// Runs the sessions, kills `victim` (every process of its namespace) once all are
/// established and synced, and waits for every connection to end.
fn kill_mid_transfer(victim: u32, port: u16, synced: bool) -> Outcome {
    let progress = Arc::new(Progress::default());
    let runner = {
        let progress = progress.clone();
        std::thread::spawn(move || {
            tcp_sessions(
                NS_EXT,
                NS_INT,
                &flows(port),
                PACE,
                STALL_LIMIT,
                Duration::from_secs(60),
                progress,
            )
        })
    };
    // Every connection has sent a few chunks.
    let start = Instant::now();
    while progress.bytes.load(std::sync::atomic::Ordering::Relaxed)
        < SESSIONS * PACE.chunk as u64 * 10
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "sessions did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    if synced {
        // Each connection has a copy at its backup before the kill.
        let deadline = Instant::now() + Duration::from_secs(5);
        while copies(&sync_json()) < SESSIONS && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            copies(&sync_json()) >= SESSIONS,
            "copies before the kill: {}",
            sync_json()
        );
    }
    let before = stat_json();
    let victim_connections = member_field(&before, "connections")
        .into_iter()
        .find(|(id, _)| *id == victim as u64)
        .map_or(0, |(_, c)| c);
    kill_ns(&format!("bt-sgm{victim}"));
    let results = runner
        .join()
        .expect("sessions thread")
        .expect("sessions set up");
    Outcome {
        results,
        victim_connections,
        sync_after: sync_json(),
    }
}

fn assert_hitless(o: &Outcome, victim: u32) {
    assert!(
        o.victim_connections >= 20,
        "the victim carried {} connections: the test would prove little",
        o.victim_connections
    );
    let lost = o.lost();
    assert!(
        lost.is_empty(),
        "{} of {SESSIONS} connections lost after member {victim} was killed, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    let taken: u64 = o.sync_after["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["taken_over"].as_u64().unwrap_or(0))
        .sum();
    assert!(
        taken >= o.victim_connections,
        "survivors took over {taken} connections of the {} the victim had: {}",
        o.victim_connections,
        o.sync_after
    );
    let stat = stat_json();
    let state = stat["groups"][0]["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == victim)
        .map(|m| m["state"].clone());
    assert_eq!(state, Some(Value::from("down")));
}

#[test]
fn connections_survive_the_kill_of_a_member() {
    let _lab = Lab::up(3);
    let o = kill_mid_transfer(2, 21000, true);
    assert_hitless(&o, 2);
    let longest = o
        .results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|r| r.longest_stall)
        .max()
        .unwrap_or_default();
    eprintln!("longest application-level stall across the kill: {longest:?}");
    eprintln!("{}", baton_ok(&["sync", "stat"]));
}

#[test]
fn connections_survive_the_kill_of_the_smo_master() {
    let _lab = Lab::up(3);
    let o = kill_mid_transfer(1, 22000, true);
    assert_hitless(&o, 1);
    let stat = stat_json();
    assert_eq!(stat["groups"][0]["smo"], 2, "member 2 is the new master");
}

/// The negative control: the same run with sync off loses the dead member's connections,
/// so the tests above can fail.
#[test]
fn without_sync_the_dead_members_connections_are_lost() {
    let _lab = Lab::up_with(&["--sgms", "3", "--no-sync"]);
    let o = kill_mid_transfer(2, 23000, false);
    let lost = o.lost().len() as u64;
    assert!(
        o.victim_connections >= 20,
        "victim had {}",
        o.victim_connections
    );
    assert!(
        lost >= o.victim_connections / 2,
        "with sync off only {lost} connections were lost of the {} the victim carried",
        o.victim_connections
    );
    assert!(
        lost <= o.victim_connections,
        "{lost} lost: more than the victim carried ({})",
        o.victim_connections
    );
}
