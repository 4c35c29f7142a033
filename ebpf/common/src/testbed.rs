//! Map names, program names and settings of the test and benchmark programs
//! (`ebpf/test-programs`, loaded by the lab's testbed): no orchestrator or member loads
//! them, so nothing here is part of the production object.

use core::mem::size_of;

/// Benchmark programs' map names and settings.
pub mod bench {
    pub const BENCH_PORTS: &str = "BENCH_PORTS";
    pub const GEN_PORTS: &str = "GEN_PORTS";
    pub const GEN_CONF: &str = "GEN_CONF";
    pub const GEN_SEQ: &str = "GEN_SEQ";
    pub const SINK_STATS: &str = "SINK_STATS";
    pub const STACK_CPUS: &str = "STACK_CPUS";
    pub const TO_STACK: &str = "to_stack";
    pub const BARE_REDIRECT: &str = "bare_redirect";
    pub const SINK: &str = "sink";
    pub const GENERATE: &str = "generate";
}

/// The sync link's fault injector (tests).
pub mod fault {
    pub const FAULT_CONF: &str = "FAULT_CONF";
    pub const FAULT_STATS: &str = "FAULT_STATS";
    pub const SYNC_LOSS: &str = "sync_loss";
}

/// Settings of the `generate` program: each frame gets flow number `seq mod flows`, written
/// as the low 16 bits of the source address (at `addr_off`) and, above 65536 flows, the
/// source port (at `port_off`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GenConf {
    pub flows: u32,
    pub addr_off: u32,
    pub port_off: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<GenConf>() == 16);

// SAFETY: `repr(C)`, four `u32`s, no padding (size asserted above).
#[cfg(feature = "user")]
unsafe impl aya::Pod for GenConf {}
