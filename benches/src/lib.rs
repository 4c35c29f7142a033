//! Benchmarks that compare Baton with a minimal baseline on the same path in the same run,
//! and the report they write (`target/bench-report/`).

pub mod distributor;
pub mod hypersync;
pub mod membership;
pub mod nft;
pub mod report;
pub mod sgm;
