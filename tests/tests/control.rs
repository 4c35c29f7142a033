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
    let (t, _) = wait_tasks(Duration::from_secs(2), |t| {
        running(t, 1).contains(&"policy_installation".to_string())
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
