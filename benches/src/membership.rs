//! Failure detection and SMO election in the lab: kill a member's process (`kill -9`),
//! time until the orchestrator declares it Down (polling the API every millisecond), check
//! the master moved in the same step, restart the member, repeat. The configured dead
//! interval (heartbeat interval × dead count) is the baseline.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use baton_control::{
    api::{Client, Stat},
    config::default_api_socket,
    membership::MemberState,
};
use baton_lab::{
    topology::{self as lab, LabOptions},
    LabGuard,
};

use crate::report::{figure, Figure};

/// The release `baton` the lab benchmarks run, or an error saying how to build it.
pub(crate) fn release_baton() -> anyhow::Result<PathBuf> {
    let exe = baton_exe();
    if !exe.exists() {
        bail!(
            "{} is missing: build it (cargo build --release -p baton)",
            exe.display()
        );
    }
    Ok(exe)
}

/// The `baton` binary the lab's daemons run (release build, or BATON_BIN).
fn baton_exe() -> PathBuf {
    std::env::var_os("BATON_BIN").map_or_else(
        || {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../target/release/baton"
            ))
        },
        PathBuf::from,
    )
}

/// Member `id`'s state in a stat document.
pub(crate) fn state(stat: &Stat, id: u32) -> MemberState {
    stat.groups[0]
        .members
        .iter()
        .find(|m| m.id == id)
        .map_or(MemberState::Down, |m| m.state)
}

/// Detection times (ms) over `kills` kills, and the election check.
pub fn detection(kills: usize) -> anyhow::Result<(Figure, Figure)> {
    let exe = release_baton()?;
    lab::down()?;
    let opts = LabOptions {
        table_size: 65_536,
        ..LabOptions::new(exe)
    };
    let _guard = LabGuard::new();
    lab::up(&opts)?;
    let client = Client::new(default_api_socket());
    let config =
        baton_control::config::Config::load(&PathBuf::from(lab::STATE_DIR).join("baton.toml"))?;
    let dead_ms = (config.orchestrator.heartbeat_interval_ms
        * u64::from(config.orchestrator.dead_count)) as f64;
    let mut detect = Vec::new();
    let mut election = Vec::new();
    for i in 0..kills {
        let victim = 1 + (i % 3) as u32;
        let before: Stat = client.get("/v1/stat")?;
        let was_master = before.groups[0].smo == Some(victim);
        let t0 = Instant::now();
        lab::kill_member(victim)?;
        let (down_at, stat) = loop {
            let s: Stat = client.get("/v1/stat")?;
            if state(&s, victim) == MemberState::Down {
                break (t0.elapsed(), s);
            }
            if t0.elapsed() > Duration::from_secs(5) {
                bail!("member {victim} not declared down within 5 s");
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        detect.push(down_at.as_secs_f64() * 1e3);
        if was_master {
            // The master moves in the same state-machine step as the detection: the very
            // snapshot that shows the member Down names the new master.
            let t = Instant::now();
            let mut s = stat;
            while s.groups[0].smo == Some(victim) {
                if t.elapsed() > Duration::from_secs(2) {
                    bail!("no new master");
                }
                s = client.get("/v1/stat")?;
            }
            election.push(t.elapsed().as_secs_f64() * 1e3);
        }
        lab::start_member(&opts, victim)?;
        let t = Instant::now();
        loop {
            let s: Stat = client.get("/v1/stat").context("stat")?;
            if state(&s, victim) == MemberState::Active {
                break;
            }
            if t.elapsed() > Duration::from_secs(10) {
                bail!("member {victim} did not come back");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok((
        figure(
            "member_detection",
            "ms",
            &detect,
            &[dead_ms],
            "≤ heartbeat interval × dead count + 10 ms",
        ),
        figure(
            "smo_election",
            "ms",
            &election,
            &[0.0],
            "< 1 ms after detection",
        ),
    ))
}
