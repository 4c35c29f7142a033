//! `baton gen`, the in-kernel generator, through the lab: it sends what it says, at the
//! rate asked, over the flows asked, and refuses unbounded or malformed requests.

use baton_tests::*;
use serde_json::Value;

fn up_ext_rx(s: &Value) -> u64 {
    s["uplinks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["iface"] == "up-ext")
        .and_then(|u| u["rx_packets"].as_u64())
        .unwrap()
}

#[test]
fn the_generator_sends_what_it_reports() {
    let _lab = Lab::up(3);
    let before = stat_json();
    let out = baton_ok(&[
        "gen",
        "--count",
        "200000",
        "--flows",
        "5000",
        "--v6-share",
        "20",
        "--size",
        "64",
        "--json",
    ]);
    let r: Value = serde_json::from_str(&out).expect("gen --json");
    assert_eq!(r["sent"], 200_000);
    assert_eq!(r["sent_v6"], 40_000, "{r}");
    assert!(r["mpps"].as_f64().unwrap() > 0.0);
    // The orchestrator's uplink counted every frame, and spread them over the members.
    let after = wait_stat(std::time::Duration::from_secs(2), |s| {
        up_ext_rx(s) >= up_ext_rx(&before) + 199_800
    });
    let rx = up_ext_rx(&after) - up_ext_rx(&before);
    assert!((199_800..200_100).contains(&rx), "uplink rx {rx}");
    let to: Vec<(u64, u64)> = member_field(&after, "to_member_packets");
    let to0: Vec<(u64, u64)> = member_field(&before, "to_member_packets");
    let got: Vec<u64> = to.iter().zip(&to0).map(|(a, b)| a.1 - b.1).collect();
    // Every frame went to a member (a veth ring may drop the odd one under the burst; the
    // hosts add the odd ARP/ND broadcast).
    let total: u64 = got.iter().sum();
    assert!((199_800..200_100).contains(&total), "{got:?}");
    assert!(
        got.iter().all(|g| *g > 40_000),
        "5,000 flows spread: {got:?}"
    );
    // A rate is kept.
    let out = baton_ok(&["gen", "--count", "20000", "--rate", "10000", "--json"]);
    let r: Value = serde_json::from_str(&out).unwrap();
    let secs = r["seconds"].as_f64().unwrap();
    assert!(
        (1.8..3.0).contains(&secs),
        "20,000 frames at 10,000/s took {secs} s"
    );
    // Every load is bounded; bad requests say what is wrong.
    for (args, says) in [
        (&["gen", "--count", "0"][..], "bounded"),
        (&["gen", "--flows", "2000000"][..], "--flows"),
        (&["gen", "--size", "40"][..], "--size"),
        (&["gen", "--dst-mac", "zz"][..], "--dst-mac"),
    ] {
        let out = baton(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(says),
            "{args:?}"
        );
    }
}
