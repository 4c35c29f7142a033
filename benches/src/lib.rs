//! Benchmarks that compare Baton with a minimal baseline on the same path in the same run,
//! and the report they write (`target/bench-report/`). What builds and drives their
//! namespaces, traffic and test programs is the lab crate's (`baton-lab`).

pub mod distributor;
pub mod hypersync;
pub mod membership;
pub mod micro;
pub mod nft;
pub mod plot;
pub mod report;
pub mod scaling;
pub mod sgm;
