//! Baton's control plane: configuration, the cluster core (every orchestrator decision),
//! the member agent, membership and SMO election, bucket planning,
//! the CCP heartbeat messages, the REST API documents and client, and the daemons.
//! The protocol logic is sans-IO so it is tested without root; the daemons (run by the
//! `baton` binary) are thin loops around it. The lab is not here: it is `baton-lab`.

pub mod agent;
pub mod api;
pub mod ccp;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod membership;
pub mod partition;
pub mod persist;
pub mod planner;
pub mod policy_dist;
pub mod search;
pub mod sim;
pub mod tasks;
