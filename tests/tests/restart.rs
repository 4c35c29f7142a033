//! An orchestrator restart under traffic: its maps and XDP attachments are pinned and its
//! state is on disk, so the data path forwards throughout and nothing is forgotten; without
//! pins (the negative control) the group stops forwarding while it is gone.

use std::time::Duration;

use baton_lab::{
    topology::{self as lab, NS_ORCH},
    traffic::{Pace, TcpFlow, TcpReport, TrafficError},
};
use baton_tests::*;

const SESSIONS: u64 = 60;

/// Paced sessions (2 KB every 20 ms for 8 s) with the orchestrator killed (SIGKILL) after
/// 1.5 s and started again `down_for` later.
fn restart_under_traffic(port: u16, down_for: Duration) -> Vec<Result<TcpReport, TrafficError>> {
    let flows = TcpFlow::lab(SESSIONS, port, 2048 * 400, 5);
    let sessions = Sessions::start(
        flows,
        Pace {
            chunk: 2048,
            gap: Duration::from_millis(20),
        },
        Duration::from_secs(5),
        Duration::from_secs(60),
    );
    sessions.wait_bytes(SESSIONS * 2048 * 20);
    kill_ns(NS_ORCH);
    std::thread::sleep(down_for);
    lab::start_orchestrator(&lab_options()).expect("orchestrator started again");
    sessions.finish()
}

#[test]
fn an_orchestrator_restart_under_traffic_loses_no_forwarding_and_no_state() {
    let _lab = Lab::up(3);
    baton_ok(&["detach", "3"]);
    let table_before = bucket_table();
    let results = restart_under_traffic(29000, Duration::from_secs(2));
    let lost: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        lost.is_empty(),
        "{} of {SESSIONS} connections lost across the restart, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(3)]
    );
    // The restarted orchestrator knows what the old one decided.
    wait_api(Duration::from_secs(30));
    let s = wait_stat(Duration::from_secs(3), |s| {
        member_field(s, "rx_packets").iter().all(|(_, rx)| *rx > 0)
    });
    let states: Vec<(u64, String)> = s["groups"][0]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_u64().unwrap(),
                m["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        states,
        vec![
            (1, "active".to_string()),
            (2, "active".to_string()),
            (3, "detached".to_string())
        ]
    );
    let table_after = bucket_table();
    assert_eq!(
        table_after.active, table_before.active,
        "the bucket table survived"
    );
    assert_eq!(table_after.backup, table_before.backup);
    let longest = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|r| r.longest_stall)
        .max()
        .unwrap_or_default();
    eprintln!("longest stall across a 2 s orchestrator outage: {longest:?}");
    assert!(longest < Duration::from_secs(1), "stall {longest:?}");
}

/// The negative control: without pins, the orchestrator's programs go with its process and
/// the connections stall while it is gone.
#[test]
fn without_pins_an_orchestrator_outage_stalls_the_data_path() {
    let _lab = Lab::up_with(&["--sgms", "3", "--no-pins"]);
    let results = restart_under_traffic(29500, Duration::from_secs(6));
    let lost = results.iter().filter(|r| r.is_err()).count();
    assert!(
        lost as u64 >= SESSIONS / 2,
        "only {lost} of {SESSIONS} connections stalled while the unpinned orchestrator was gone"
    );
}
