//! A scratch namespace for the benchmarks and the XDP tests: veth pairs inside one
//! namespace, `bt-bench`, that the calling thread moves into; removed on drop.

use std::process::{Command, Stdio};

use crate::{topology::ip, traffic::enter_netns, LabError};

/// The scratch namespace's name.
pub const NS: &str = "bt-bench";
/// Member veths of the default topology.
pub const MEMBERS: u32 = 3;

/// A namespace with the generator's veth (gen0 → up0) and three member veths (dlK → mK).
/// The calling thread moves into it. Removed on drop.
pub struct Topology;

impl Topology {
    pub fn new() -> Result<Self, LabError> {
        Self::with_members(MEMBERS)
    }

    /// The generator's veth (gen0 → up0) and `n` member veths (dlK → mK).
    pub fn with_members(n: u32) -> Result<Self, LabError> {
        let mut pairs = vec![("gen0".to_string(), "up0".to_string())];
        pairs.extend((1..=n).map(|k| (format!("dl{k}"), format!("m{k}"))));
        Self::build(&pairs)
    }

    /// The generator's veth facing a member's data port (gen0 → m0).
    pub fn with_member_port() -> Result<Self, LabError> {
        Self::build(&[("gen0".into(), "m0".into())])
    }

    /// The namespace with these veth pairs.
    pub fn with_pairs(pairs: &[(&str, &str)]) -> Result<Self, LabError> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        Self::build(&pairs)
    }

    fn build(pairs: &[(String, String)]) -> Result<Self, LabError> {
        remove_netns(NS);
        ip(&["netns", "add", NS])?;
        let t = Topology;
        ip(&["-n", NS, "link", "set", "lo", "up"])?;
        for (a, b) in pairs {
            ip(&[
                "-n", NS, "link", "add", a, "type", "veth", "peer", "name", b,
            ])?;
            ip(&["-n", NS, "link", "set", a, "up"])?;
            ip(&["-n", NS, "link", "set", b, "up"])?;
        }
        enter(NS)?;
        Ok(t)
    }
}

/// Deletes a namespace the benchmarks made, if it is there (errors are moot: it may not be).
pub fn remove_netns(ns: &str) {
    let _ = Command::new("ip")
        .args(["netns", "del", ns])
        .stderr(Stdio::null())
        .status();
}

/// Moves the calling thread into a scratch namespace.
pub fn enter(ns: &str) -> Result<(), LabError> {
    Ok(enter_netns(ns)?)
}

impl Drop for Topology {
    fn drop(&mut self) {
        remove_netns(NS);
    }
}
