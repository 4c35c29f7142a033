//! The sync link's fault injector: the test programs' `sync_loss` on an interface, dropping
//! a share of the HyperSync frames it receives. Dropping it detaches the program.

use baton_common::testbed::fault;
use baton_dataplane::LoadError;

use crate::testbed::Testbed;

pub struct FaultInjector {
    bed: Testbed,
}

impl FaultInjector {
    /// Attaches to `iface` (in the calling thread's namespace), dropping `per_million`
    /// sync frames in a million.
    pub fn attach(iface: &str, per_million: u32) -> Result<Self, LoadError> {
        let mut bed = Testbed::load()?;
        bed.set_word(fault::FAULT_CONF, per_million)?;
        bed.attach(fault::SYNC_LOSS, iface)?;
        Ok(Self { bed })
    }

    /// (sync frames dropped, sync frames passed).
    pub fn stats(&self) -> Result<(u64, u64), LoadError> {
        let c = self
            .bed
            .counters(fault::FAULT_STATS, &["dropped", "passed"])?;
        Ok((c[0].1, c[1].1))
    }
}
