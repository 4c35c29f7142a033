//! The benchmarks' traffic source: the `generate` program run by `BPF_PROG_TEST_RUN` in
//! live-frames mode (the kernel's in-kernel generator), stamping each copy of one frame
//! with a flow number and redirecting it into a veth.

use std::time::Duration;

use baton_common::{bench, GenConf};
use baton_dataplane::loader::{ifindex, Orchestrator};
use etherparse::PacketBuilder;

/// The generated frames' source MAC.
pub const HOST: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];

/// Where the generator writes the flow number: the source address's low 16 bits (and the
/// source port above 65,536 flows), or the source port (flows ≤ 65,536; the IPv4 header,
/// whose checksum the generator does not fix, stays as built: what a Linux router needs).
pub const SOURCE_ADDRESS: (u32, u32) = (14 + 14, 14 + 20);
pub const SOURCE_PORT: (u32, u32) = (14 + 20, 14 + 28);

/// A 60-byte IPv4 UDP frame, 198.18.0.1:1024 → 198.19.0.1:53, to `dst_mac`.
pub fn udp_frame(dst_mac: [u8; 6]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(HOST, dst_mac)
        .ipv4([198, 18, 0, 1], [198, 19, 0, 1], 64)
        .udp(1024, 53)
        .write(&mut v, &[0; 18])
        .expect("a UDP frame builds");
    v
}

pub struct Generator {
    prog: Orchestrator,
    frame: Vec<u8>,
    lo: u32,
}

impl Generator {
    /// Sends copies of `frame` into `port` (whose peer must run XDP) over `flows` flows
    /// numbered at `offsets` (see [`SOURCE_ADDRESS`]). Call in the port's namespace.
    pub fn new(
        port: &str,
        flows: u32,
        offsets: (u32, u32),
        frame: Vec<u8>,
    ) -> anyhow::Result<Self> {
        let mut prog = Orchestrator::load(true)?;
        prog.set_devmap(bench::GEN_PORTS, 0, ifindex(port)?)?;
        let (addr_off, port_off) = offsets;
        prog.set_generator(GenConf {
            flows,
            addr_off,
            port_off,
            _pad: 0,
        })?;
        Ok(Self {
            prog,
            frame,
            lo: ifindex("lo")?,
        })
    }

    /// Sends `frames` frames in batches of 256; returns the time it took.
    pub fn send(&mut self, frames: u32) -> anyhow::Result<Duration> {
        Ok(self
            .prog
            .live_frames(bench::GENERATE, &self.frame, self.lo, frames, 256)?)
    }
}
