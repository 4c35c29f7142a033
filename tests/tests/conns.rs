//! `baton conns`, the connection generator, through the lab: every connection completes,
//! through the members; with the members gone the same run counts its failures and exits
//! non-zero, quickly; unbounded or malformed requests are refused.

use std::time::{Duration, Instant};

use baton_tests::*;
use serde_json::Value;

fn members_rx(s: &Value) -> u64 {
    member_field(s, "rx_packets").iter().map(|m| m.1).sum()
}

fn report(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "conns --json is one JSON document ({e}):\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn connections_complete_through_the_members_and_fail_without_them() {
    let _lab = Lab::up(2);
    let before = stat_json();
    let out = baton(&["conns", "--count", "500", "--concurrency", "20", "--json"]);
    let r = report(&out);
    assert!(
        out.status.success(),
        "{r:#}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (field, want) in [
        ("requested", 500),
        ("attempted", 500),
        ("completed", 500),
        ("accepted", 500),
        ("reset", 0),
        ("stalled", 0),
        ("corrupt", 0),
        ("failed", 0),
    ] {
        assert_eq!(r[field], want, "{field}: {r:#}");
    }
    assert!(r["conn_per_s"].as_f64().unwrap() > 0.0, "{r:#}");
    let connect = &r["connect_ms"];
    assert!(connect["p50"].as_f64().unwrap() <= connect["p99"].as_f64().unwrap());
    // The members carried them: each connection is at least SYN, ACK, data and FIN from
    // the client and SYN-ACK, verdict and FIN from the server.
    let after = wait_stat(Duration::from_secs(2), |s| {
        members_rx(s) >= members_rx(&before) + 500 * 6
    });
    let rx = members_rx(&after) - members_rx(&before);
    assert!(
        rx >= 500 * 6,
        "members received {rx} packets for 500 connections"
    );

    // An address nothing in the server's namespace owns: refused before any connection.
    let out = baton(&["conns", "--server", "198.19.0.200", "--count", "10"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("listen on 198.19.0.200"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Negative control: no member forwards any more. Nothing completes, every failure is
    // counted, and the run ends within its timeout and stall limit.
    kill_ns("bt-sgm1");
    kill_ns("bt-sgm2");
    let t = Instant::now();
    let out = baton(&[
        "conns",
        "--count",
        "200",
        "--concurrency",
        "20",
        "--stall-ms",
        "500",
        "--timeout-s",
        "5",
        "--json",
    ]);
    let took = t.elapsed();
    let r = report(&out);
    assert_eq!(out.status.code(), Some(1), "{r:#}");
    assert_eq!(r["completed"], 0, "{r:#}");
    assert_eq!(r["accepted"], 0, "{r:#}");
    let attempted = r["attempted"].as_u64().unwrap();
    assert!(attempted > 0, "{r:#}");
    let failures: u64 = ["reset", "stalled", "corrupt", "failed"]
        .iter()
        .map(|f| r[*f].as_u64().unwrap())
        .sum();
    assert_eq!(failures, attempted, "every attempt is counted once: {r:#}");
    assert!(r["stalled"].as_u64().unwrap() > 0, "{r:#}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("did not complete"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(took < Duration::from_secs(15), "took {took:?}");
}

#[test]
fn unbounded_or_malformed_requests_are_refused() {
    for (args, says) in [
        (&["conns", "--count", "0"][..], "--count"),
        (&["conns", "--count", "10000001"][..], "bounded"),
        (&["conns", "--concurrency", "0"][..], "--concurrency"),
        (&["conns", "--concurrency", "5000"][..], "--concurrency"),
        (&["conns", "--stall-ms", "0"][..], "--stall-ms"),
        (&["conns", "--timeout-s", "0"][..], "--timeout-s"),
        (&["conns", "--source", "2001:db8:18::1"][..], "families"),
        (
            &[
                "conns", "--from", "bt-none", "--to", "bt-none", "--count", "1",
            ][..],
            "namespace bt-none",
        ),
    ] {
        let t = Instant::now();
        let out = baton(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{args:?} is refused at once"
        );
    }
    // Not a flag value clap can read.
    let out = baton(&["conns", "--server", "nowhere"]);
    assert_eq!(out.status.code(), Some(2));
}
