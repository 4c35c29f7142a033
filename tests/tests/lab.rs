//! The lab end to end: real XDP on the orchestrator, real AF_XDP on the members, kernel
//! sockets on the hosts.

use std::{net::IpAddr, path::Path, sync::Arc, time::Duration};

use baton_lab::{
    topology::{NS_EXT, NS_INT},
    traffic::{self, Progress, TcpFlow},
};
use baton_tests::*;

fn ping(ns: &str, dst: &str) {
    let out = in_ns(ns, &["ping", "-c", "3", "-i", "0.2", "-W", "2", dst]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains(" 0% packet loss"),
        "ping {dst} from {ns}:\n{text}"
    );
}

fn assert_nothing_left() {
    assert_eq!(lab_namespaces(), Vec::<String>::new(), "namespaces left");
    assert!(
        !Path::new(baton_lab::topology::STATE_DIR).exists(),
        "state dir left"
    );
    assert!(
        !Path::new("/run/baton/api.sock").exists(),
        "API socket left"
    );
    let ps = std::process::Command::new("pgrep")
        .args(["-f", "baton (orchestrator|sgm) "])
        .output()
        .unwrap();
    assert!(
        ps.stdout.is_empty(),
        "processes left: {}",
        String::from_utf8_lossy(&ps.stdout)
    );
}

#[test]
fn three_members_carry_ping_tcp_and_udp_both_ways() {
    let lab = Lab::up(3);

    let stat = stat_json();
    let members = stat["groups"][0]["members"].as_array().unwrap();
    assert_eq!(members.len(), 3);
    for (i, m) in members.iter().enumerate() {
        assert_eq!(m["id"], i as u64 + 1);
        assert_eq!(m["state"], "active");
        assert_eq!(m["smo"], i == 0);
        for f in [
            "rx_packets",
            "tx_packets",
            "connections",
            "backup_connections",
            "policy_version",
        ] {
            assert!(m[f].is_u64(), "member field {f}");
        }
    }
    assert_eq!(stat["groups"][0]["smo"], 1);

    ping(NS_EXT, "198.19.0.1");
    ping(NS_INT, "198.18.0.2");
    ping(NS_EXT, "2001:db8:19::1");
    ping(NS_INT, "2001:db8:18::2");

    // 50 MB over TCP, every byte checked on arrival; and a smaller IPv6 stream.
    let flows = [
        TcpFlow {
            id: 1,
            client: "198.18.0.3".parse().unwrap(),
            server: "198.19.0.4".parse().unwrap(),
            port: 5001,
            bytes: 50 << 20,
        },
        TcpFlow {
            id: 2,
            client: "2001:db8:18::3".parse().unwrap(),
            server: "2001:db8:19::4".parse().unwrap(),
            port: 5002,
            bytes: 8 << 20,
        },
    ];
    let reports = traffic::tcp_streams(
        NS_EXT,
        NS_INT,
        &flows,
        Duration::from_secs(60),
        Arc::new(Progress::default()),
    )
    .expect("TCP streams arrive intact");
    assert_eq!(reports[0].bytes, 50 << 20);
    assert_eq!(reports[1].bytes, 8 << 20);
    // And the other way.
    let back = [TcpFlow {
        id: 3,
        client: "198.19.0.5".parse().unwrap(),
        server: "198.18.0.6".parse().unwrap(),
        port: 5003,
        bytes: 8 << 20,
    }];
    traffic::tcp_streams(
        NS_INT,
        NS_EXT,
        &back,
        Duration::from_secs(60),
        Arc::new(Progress::default()),
    )
    .expect("TCP from the internal side");

    // UDP both ways over 16 address pairs: every datagram arrives, on the member that
    // `baton search` names for it.
    let before = member_field(&stat_json(), "rx_packets");
    let pairs: Vec<(IpAddr, IpAddr)> = (0..16u8)
        .map(|i| {
            (
                IpAddr::from([198, 18, 0, 10 + i]),
                IpAddr::from([198, 19, 0, 30 + 2 * i]),
            )
        })
        .collect();
    let got =
        traffic::udp_pairs(NS_EXT, NS_INT, &pairs, 7000, 50, Duration::from_millis(2)).unwrap();
    assert_eq!(got, vec![50; 16], "UDP ext → int");
    let reversed: Vec<(IpAddr, IpAddr)> = pairs.iter().map(|(a, b)| (*b, *a)).collect();
    let got = traffic::udp_pairs(
        NS_INT,
        NS_EXT,
        &reversed,
        7001,
        50,
        Duration::from_millis(2),
    )
    .unwrap();
    assert_eq!(got, vec![50; 16], "UDP int → ext");
    let mut expected = std::collections::BTreeSet::new();
    for (a, b) in &pairs {
        let r: serde_json::Value = serde_json::from_str(&baton_ok(&[
            "search",
            &a.to_string(),
            &b.to_string(),
            "--proto",
            "udp",
            "--json",
        ]))
        .unwrap();
        let back: serde_json::Value = serde_json::from_str(&baton_ok(&[
            "search",
            &b.to_string(),
            &a.to_string(),
            "--proto",
            "udp",
            "--json",
        ]))
        .unwrap();
        assert_eq!(r["active"], back["active"], "search is symmetric");
        assert_ne!(r["active"], r["backup"]);
        expected.insert(r["active"].as_u64().unwrap());
    }
    assert!(
        expected.len() >= 2,
        "16 pairs spread over at least two members: {expected:?}"
    );
    // Members report their counters in heartbeats: wait for the reports.
    let grew = |s: &serde_json::Value| {
        member_field(s, "rx_packets")
            .iter()
            .filter(|(id, _)| expected.contains(id))
            .all(|(id, rx)| rx - before.iter().find(|(i, _)| i == id).unwrap().1 >= 100)
    };
    let after = member_field(&wait_stat(Duration::from_secs(5), grew), "rx_packets");
    for (id, rx) in &after {
        let grew = rx - before.iter().find(|(i, _)| i == id).unwrap().1;
        if expected.contains(id) {
            assert!(grew >= 100, "member {id} carried its flows (rx +{grew})");
        }
    }
    let carrying = after
        .iter()
        .zip(&before)
        .filter(|((_, a), (_, b))| a > b)
        .count();
    assert!(carrying >= 2, "at least two members carried traffic");

    // A second `lab up` refuses and leaves the running lab alone.
    let again = baton(&["lab", "up", "--sgms", "3"]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already up"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    ping(NS_EXT, "198.19.0.1");

    drop(lab);
    assert_nothing_left();
}

#[test]
fn lab_down_cleans_up_after_killed_processes() {
    let lab = Lab::up(2);
    // Crash everything: kill -9 every lab process.
    for ns in lab_namespaces() {
        let pids = std::process::Command::new("ip")
            .args(["netns", "pids", &ns])
            .output()
            .unwrap();
        for p in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
            // SAFETY: kill(2) on a pid that pgrep listed; a stale pid only makes it fail.
            unsafe { libc::kill(p.parse().unwrap(), libc::SIGKILL) };
        }
    }
    drop(lab);
    assert_nothing_left();
    // And with only part of a lab there (a namespace and the state dir).
    std::process::Command::new("ip")
        .args(["netns", "add", "bt-ext"])
        .status()
        .unwrap();
    std::fs::create_dir_all(baton_lab::topology::STATE_DIR).unwrap();
    let up = baton(&["lab", "up", "--sgms", "1"]);
    assert!(!up.status.success(), "lab up over a half-built lab refuses");
    baton_ok(&["lab", "down"]);
    assert_nothing_left();
}

#[test]
fn missing_pieces_get_one_clear_sentence() {
    let _ = baton(&["lab", "down"]);
    // No orchestrator: exit code 3 and what to do.
    let out = baton(&["--api", "/run/baton/none.sock", "stat"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("lab up"));
    // A member whose data port does not exist.
    let dir = std::env::temp_dir().join("baton-test-config");
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("baton.toml");
    let write_config = |sync: bool| {
        let c = baton_lab::topology::config(1, sync, baton_control::config::Mode::General, false);
        std::fs::write(&cfg, c.to_toml()).unwrap();
    };
    let member = || {
        baton(&[
            "sgm",
            "--config",
            cfg.to_str().unwrap(),
            "--id",
            "1",
            "--data-port",
            "nosuch0",
        ])
    };
    write_config(false);
    let out = member();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"nosuch0\" does not exist"), "{err}");
    // Sync on without the group's key.
    write_config(true);
    let out = member();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no sync_key_file"), "{err}");
    // A member that is not configured.
    let out = baton(&["sgm", "--config", cfg.to_str().unwrap(), "--id", "7"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("member 7 is not in any group"));
    // A configuration with a typo.
    std::fs::write(&cfg, "[orchestrator]\nheartbeat_interval = 5\n").unwrap();
    let out = baton(&["orchestrator", "--config", cfg.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown field"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Bad lab size.
    let out = baton(&["lab", "up", "--sgms", "15"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("between 1 and 14"));
    assert_nothing_left();
}
