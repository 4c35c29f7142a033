//! The lab's one error type: what went wrong building, changing or measuring the lab, with
//! what the user needs to fix it.

use baton_control::config::MEMBERS_PER_GROUP_MAX;
use baton_dataplane::error::{LoadError, PortError};
use thiserror::Error;

use crate::{topology::Part, traffic::TrafficError};

#[derive(Debug, Error)]
pub enum LabError {
    #[error("the lab needs root (it creates network namespaces): run as root")]
    NotRoot,
    #[error("`{0}` is not installed; run `cargo xtask setup` (or apt-get install {1})")]
    MissingTool(&'static str, &'static str),
    #[error("a lab is already up (namespaces: {0}); run `baton lab down` first")]
    AlreadyUp(String),
    #[error("--sgms must be between 1 and {MEMBERS_PER_GROUP_MAX}, not {0}")]
    BadSize(u32),
    #[error("`{cmd}` failed: {stderr}")]
    Command { cmd: String, stderr: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the lab did not come up within {secs} s: {detail}")]
    Timeout { secs: u64, detail: String },
    #[error("no lab is up ({0} is missing): run `baton lab up` first")]
    NotUp(String),
    #[error("the lab has no {part} (it has members 1 to {sgms})")]
    NoSuchPart { part: Part, sgms: u32 },
    #[error("{0} has already failed: `baton lab restore {0}` brings it back")]
    AlreadyFailed(Part),
    #[error("{0} has not failed (`baton lab fail {0}` fails it)")]
    NotFailed(Part),
    #[error("unexpected output of `{cmd}`: {detail}")]
    Output { cmd: String, detail: String },
    #[error("{part} did not come back within {secs} s: {detail}")]
    NotBack {
        part: Part,
        secs: u64,
        detail: String,
    },
    /// Loading or driving the test programs (the testbed, the generator).
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Traffic(#[from] TrafficError),
    /// A member's data port under the generator.
    #[error(transparent)]
    Port(#[from] PortError),
    #[error("{0}")]
    Panicked(&'static str),
}
