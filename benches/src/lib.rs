//! Benchmarks that compare Baton with a minimal baseline on the same path in the same run,
//! and the report they write (`target/bench-report/`).

pub mod distributor;
pub mod generator;
pub mod hypersync;
pub mod membership;
pub mod micro;
pub mod nft;
pub mod plot;
pub mod report;
pub mod scaling;
pub mod sgm;
