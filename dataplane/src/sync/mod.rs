//! HyperSync: a member streams its connections to each bucket's backup member over its
//! sync port, and takes over the copies it holds when a member fails.

pub mod engine;
pub mod io;
pub mod proto;
pub mod store;
pub mod tap;
pub mod worker;
