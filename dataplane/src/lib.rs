//! Baton's data plane: the embedded eBPF programs and their loader, a member's AF_XDP data
//! port and the forwarding it does.

pub mod conntrack;
pub mod dispatch;
pub mod error;
pub mod forward;
pub mod frame;
pub mod inspect;
pub mod loader;
pub mod policy;
pub mod port;
pub mod sync;
pub mod verdict;
pub mod wire;

pub use error::{LoadError, PortError};
