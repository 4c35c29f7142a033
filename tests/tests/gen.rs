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

/// Frames the kernel dropped leaving the generating host (`ip -s link`'s tx dropped of
/// ext0; for a veth it includes the frames its peer's ring refused).
fn ext0_tx_dropped() -> u64 {
    let out = in_ns("bt-ext", &["ip", "-s", "-j", "link", "show", "ext0"]);
    assert!(out.status.success(), "{out:?}");
    let links: Value = serde_json::from_slice(&out.stdout).expect("ip -j is JSON");
    links[0]["stats64"]["tx"]["dropped"]
        .as_u64()
        .unwrap_or_else(|| panic!("no tx dropped in {links}"))
}

// The hosts add the odd frame of their own (ARP, neighbour discovery, MLD).
const HOST_FRAMES: u64 = 50;

#[test]
fn the_generator_sends_what_it_reports() {
    let _lab = Lab::up(3);
    let before = stat_json();
    let dropped_before = ext0_tx_dropped();
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
    // The orchestrator's uplink counted every frame the kernel did not drop on the way
    // (a veth ring refuses frames when its reader falls behind, e.g. under CPU load; the
    // sending end counts them as tx drops), and spread them over the members.
    let sent = r["sent"].as_u64().unwrap();
    let dropped = ext0_tx_dropped() - dropped_before;
    let arrived = sent - dropped;
    let after = wait_stat(std::time::Duration::from_secs(10), |s| {
        up_ext_rx(s) >= up_ext_rx(&before) + arrived
    });
    let rx = up_ext_rx(&after) - up_ext_rx(&before);
    assert!(
        (arrived..=arrived + HOST_FRAMES).contains(&rx),
        "uplink rx {rx}: sent {sent}, dropped {dropped} on the way"
    );
    let to: Vec<(u64, u64)> = member_field(&after, "to_member_packets");
    let to0: Vec<(u64, u64)> = member_field(&before, "to_member_packets");
    let got: Vec<u64> = to.iter().zip(&to0).map(|(a, b)| a.1 - b.1).collect();
    // Every frame that arrived went to a member.
    let total: u64 = got.iter().sum();
    assert!(
        (arrived..=arrived + HOST_FRAMES).contains(&total),
        "{got:?}: sent {sent}, dropped {dropped} on the way"
    );
    assert!(
        got.iter().all(|g| *g > total / 5),
        "5,000 flows spread: {got:?}"
    );
    // A rate is kept: never faster than asked (the pacer sleeps until each chunk is due,
    // the last at 2 s); a loaded machine can only make it slower, so the upper bound is
    // generous and catches only a pacer that waits far too long.
    let out = baton_ok(&["gen", "--count", "20000", "--rate", "10000", "--json"]);
    let r: Value = serde_json::from_str(&out).unwrap();
    let secs = r["seconds"].as_f64().unwrap();
    assert!(
        (2.0..8.0).contains(&secs),
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
