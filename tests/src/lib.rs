//! Helpers of the root-only tests: the `baton` binary, a lab that removes itself (through
//! the lab crate's guard), and namespace queries. Tests panic with context rather than return errors, to keep the
//! backtrace.

use std::{
    path::PathBuf,
    process::{Command, Output},
};

use serde_json::Value;

/// The `baton` binary under test (`cargo xtask test` sets BATON_BIN).
pub fn baton_bin() -> PathBuf {
    std::env::var_os("BATON_BIN").map_or_else(
        || {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../target/debug/baton"
            ))
        },
        PathBuf::from,
    )
}

pub fn baton(args: &[&str]) -> Output {
    Command::new(baton_bin())
        .args(args)
        .output()
        .expect("run baton (build it first: cargo xtask test)")
}

/// Runs baton and panics with its output unless it succeeds.
pub fn baton_ok(args: &[&str]) -> String {
    let out = baton(args);
    assert!(
        out.status.success(),
        "baton {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until the orchestrator's API answers (a restarted orchestrator attaches its
/// programs first: seconds on a loaded machine); panics after `limit`.
pub fn wait_api(limit: std::time::Duration) {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let out = baton(&["stat", "--json"]);
        if out.status.success() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the API did not answer within {limit:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

pub fn stat_json() -> Value {
    serde_json::from_str(&baton_ok(&["stat", "--json"])).expect("stat --json is JSON")
}

/// Runs a command in a namespace.
pub fn in_ns(ns: &str, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .expect("ip netns exec")
}

/// Lab namespaces present now.
pub fn lab_namespaces() -> Vec<String> {
    baton_lab::topology::namespaces().expect("ip netns list")
}

/// A lab that is brought up on creation (by `baton lab up`, the command under test) and
/// torn down on drop, also when the test fails (the lab's one guard).
pub struct Lab {
    _guard: baton_lab::LabGuard,
}

impl Lab {
    pub fn up(sgms: u32) -> Lab {
        Lab::up_with(&["--sgms", &sgms.to_string()])
    }

    /// `baton lab up` with these options.
    pub fn up_with(options: &[&str]) -> Lab {
        let _ = baton(&["lab", "down"]);
        let lab = Lab {
            _guard: baton_lab::LabGuard::new(),
        };
        let mut args = vec!["lab", "up"];
        args.extend_from_slice(options);
        baton_ok(&args);
        lab
    }
}

impl Drop for Lab {
    /// A failed test keeps the daemons' logs; the guard then takes the lab down.
    fn drop(&mut self) {
        if std::thread::panicking() {
            keep_logs();
        }
    }
}

/// A failed test's daemon logs outlive the lab: copied to `$BATON_TEST_LOGS` (default
/// `target/failed-lab-logs`), one folder per failure, named in the test's output.
fn keep_logs() {
    let root = std::env::var_os("BATON_TEST_LOGS").map_or_else(
        || std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/failed-lab-logs"),
        std::path::PathBuf::from,
    );
    let name = std::thread::current()
        .name()
        .unwrap_or("test")
        .replace("::", "-");
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let dir = root.join(format!("{name}-{stamp}"));
    let Ok(entries) = std::fs::read_dir(baton_lab::topology::STATE_DIR) else {
        return;
    };
    if std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "log") {
            let _ = std::fs::copy(&p, dir.join(e.file_name()));
        }
    }
    eprintln!("daemon logs kept in {}", dir.display());
}

/// Per-member counter from a `stat --json` document.
pub fn member_field(stat: &Value, field: &str) -> Vec<(u64, u64)> {
    stat["groups"][0]["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            (
                m["id"].as_u64().unwrap(),
                m[field].as_u64().unwrap_or_else(|| panic!("field {field}")),
            )
        })
        .collect()
}

/// The live bucket table of group 1, from the orchestrator's API.
pub fn bucket_table() -> baton_control::api::BucketTable {
    baton_control::api::Client::new(baton_control::config::default_api_socket())
        .get("/v1/buckets?group=1")
        .expect("GET /v1/buckets")
}

/// Kills (SIGKILL) every process of a lab namespace.
pub fn kill_ns(ns: &str) {
    let pids = Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .unwrap();
    for p in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
        // SAFETY: kill(2) on a pid that pgrep listed; a stale pid only makes it fail.
        unsafe { libc::kill(p.parse().unwrap(), libc::SIGKILL) };
    }
}

/// Polls `stat --json` until `check` holds, for at most `limit`; returns the last document.
pub fn wait_stat(limit: std::time::Duration, check: impl Fn(&Value) -> bool) -> Value {
    let start = std::time::Instant::now();
    loop {
        let s = stat_json();
        if check(&s) || start.elapsed() > limit {
            return s;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Paced TCP sessions from bt-ext to bt-int running in the background.
pub struct Sessions {
    runner: std::thread::JoinHandle<
        Result<
            Vec<Result<baton_lab::traffic::TcpReport, baton_lab::traffic::TrafficError>>,
            baton_lab::traffic::TrafficError,
        >,
    >,
    progress: std::sync::Arc<baton_lab::traffic::Progress>,
}

impl Sessions {
    /// Starts `flows`, each sending `pace`; a connection stalled longer than `stall` is lost.
    pub fn start(
        flows: Vec<baton_lab::traffic::TcpFlow>,
        pace: baton_lab::traffic::Pace,
        stall: std::time::Duration,
        timeout: std::time::Duration,
    ) -> Sessions {
        let progress = std::sync::Arc::new(baton_lab::traffic::Progress::default());
        let runner = {
            let progress = progress.clone();
            std::thread::spawn(move || {
                baton_lab::traffic::tcp_sessions(
                    baton_lab::topology::NS_EXT,
                    baton_lab::topology::NS_INT,
                    &flows,
                    pace,
                    stall,
                    timeout,
                    progress,
                )
            })
        };
        Sessions { runner, progress }
    }

    /// Waits until `bytes` have arrived (every connection is under way); panics after 20 s.
    pub fn wait_bytes(&self, bytes: u64) {
        let start = std::time::Instant::now();
        while self
            .progress
            .bytes
            .load(std::sync::atomic::Ordering::Relaxed)
            < bytes
        {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(20),
                "sessions did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Waits for every connection to end; one result per connection.
    pub fn finish(
        self,
    ) -> Vec<Result<baton_lab::traffic::TcpReport, baton_lab::traffic::TrafficError>> {
        self.runner
            .join()
            .expect("sessions thread")
            .expect("sessions set up")
    }
}

/// The options `baton lab up` uses by default, with the binary under test (to start a
/// daemon of a live lab again).
pub fn lab_options() -> baton_lab::topology::LabOptions {
    baton_lab::topology::LabOptions::new(baton_bin())
}

pub fn sync_json() -> Value {
    serde_json::from_str(&baton_ok(&["sync", "stat", "--json"])).expect("sync stat --json")
}

/// Copies held by members still active, from a `sync stat --json` document.
pub fn live_copies(s: &Value) -> u64 {
    s["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter(|m| m["state"] == "active")
        .map(|m| m["backup_connections"].as_u64().unwrap_or(0))
        .sum()
}

/// The newest bucket table version an active member reports.
pub fn table_version(s: &Value) -> u64 {
    s["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter(|m| m["state"] == "active")
        .filter_map(|m| m["table_version"].as_u64())
        .max()
        .unwrap_or(0)
}

/// Every active member has a bucket table newer than `than` (the same one) and reports its
/// bulk sync for it acknowledged (`synced_version`): copies of moved buckets are at their
/// new backups. A copy count alone is not enough after a failover: it can include copies
/// that no takeover has consumed yet while the resync to the new backups is still under
/// way (seen under CPU load: a second failure then lost connections).
pub fn resynced(s: &Value, than: u64) -> bool {
    let newest = table_version(s);
    newest > than
        && s["members"]
            .as_array()
            .expect("members")
            .iter()
            .filter(|m| m["state"] == "active")
            .all(|m| {
                m["table_version"].as_u64() == Some(newest)
                    && m["synced_version"].as_u64() >= Some(newest)
            })
}

/// Waits until `connections` have a copy at a live backup, every active member's bulk sync
/// for the current table is acknowledged and no stream has anything unacknowledged;
/// panics after `limit`.
pub fn wait_synced(connections: u64, limit: std::time::Duration) {
    wait_resynced(connections, limit, 0);
}

/// As [`wait_synced`], for a bucket table newer than version `than` (the one before a
/// failure).
pub fn wait_resynced(connections: u64, limit: std::time::Duration, than: u64) {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let s = sync_json();
        let idle =
            s["members"].as_array().unwrap().iter().all(|m| {
                m["state"] != "active"
                    || m["peers"].as_array().unwrap().iter().all(|p| {
                        p["queue"].as_u64() == Some(0) || p["lag_ms"].as_f64() < Some(50.0)
                    })
            });
        if live_copies(&s) >= connections && idle && resynced(&s, than) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not synced within {limit:?}: {s}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
