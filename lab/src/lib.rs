//! Baton's lab: everything that builds, drives or measures a Baton on one machine, and
//! nothing an orchestrator or member needs.
//!
//! - `topology`: the lab contract's namespaces, links, daemons, `up`/`down`, and
//!   `fail`/`restore` of a part;
//! - `guard`: the one RAII guard that takes a lab down, whatever happens;
//! - `traffic`: real traffic from kernel sockets (TCP flows, UDP, the connection generator);
//! - `testbed`: the test and benchmark eBPF programs (their own object) and running any XDP
//!   program on crafted frames; `fault`: the sync link's fault injector;
//! - `generator`: the one driver of the live-frames generator;
//! - `scratch`: a throwaway namespace of veth pairs for the benchmarks and XDP tests;
//! - `member_port`: one member's data port served under the generator.

mod error;
pub mod fault;
pub mod generator;
pub mod guard;
pub mod member_port;
pub mod scratch;
pub mod testbed;
pub mod topology;
pub mod traffic;

pub use error::LabError;
pub use guard::LabGuard;
