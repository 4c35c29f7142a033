//! Helpers of the root-only tests: the `baton` binary, a lab that removes itself, and
//! namespace queries. Tests panic with context rather than return errors, to keep the
//! backtrace.

use std::{
    path::PathBuf,
    process::{Command, Output},
};

use serde_json::Value;

/// The `baton` binary under test (`cargo xtask test` sets BATON_BIN).
pub fn baton_bin() -> PathBuf {
    std::env::var_os("BATON_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../target/debug/baton"
            ))
        })
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
    baton_control::lab::namespaces().expect("ip netns list")
}

/// A lab that is brought up on creation and torn down on drop (also when the test fails).
pub struct Lab;

impl Lab {
    pub fn up(sgms: u32) -> Lab {
        let _ = baton(&["lab", "down"]);
        let lab = Lab;
        baton_ok(&["lab", "up", "--sgms", &sgms.to_string()]);
        lab
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let out = baton(&["lab", "down"]);
        if !out.status.success() {
            eprintln!("lab down failed: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
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
