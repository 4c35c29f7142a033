//! The one driver of the live-frames generator: the test programs' `generate` run by
//! `BPF_PROG_TEST_RUN` in live-frames mode (the kernel's in-kernel generator) stamps each
//! copy of a frame with a flow number and redirects it out of a port. `baton gen` and the
//! benchmarks both send through [`Generator`]; the frames they send are built here.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use baton_common::testbed::{bench, GenConf};
use baton_dataplane::loader::ifindex;

use crate::{testbed::Testbed, LabError};

/// The benchmarks' frames' source MAC.
pub const HOST: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];
/// `baton gen`'s frames' source MAC (a bt-ext host's).
pub const GEN_HOST: [u8; 6] = [0x02, 0, 0, 0, 0x18, 0x01];

/// Where the generator writes the flow number: the source address's low 16 bits (and the
/// source port above 65,536 flows), or the source port (flows ≤ 65,536; the IPv4 header,
/// whose checksum the generator does not fix, stays as built: what a Linux router needs).
pub const SOURCE_ADDRESS: (u32, u32) = (14 + 14, 14 + 20);
pub const SOURCE_PORT: (u32, u32) = (14 + 20, 14 + 28);
/// The IPv6 frame's flow number: the source address's low 16 bits, then the source port.
pub const SOURCE_ADDRESS_V6: (u32, u32) = (14 + 22, 14 + 40);

/// The live-frames batch: the most the kernel takes.
const BATCH: u32 = 256;

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A UDP frame `src:1024 → 198.19.0.1:53` from MAC `from` to `dst`, `size` bytes (at
/// least 60).
pub fn frame_v4(from: [u8; 6], src: Ipv4Addr, dst: [u8; 6], size: usize) -> Vec<u8> {
    let mut f = vec![0u8; size];
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&from);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip_len = (size - 14) as u16;
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&Ipv4Addr::new(198, 19, 0, 1).octets());
    let c = checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let udp = &mut f[34..42];
    udp[0..2].copy_from_slice(&1024u16.to_be_bytes());
    udp[2..4].copy_from_slice(&53u16.to_be_bytes());
    udp[4..6].copy_from_slice(&(ip_len - 20).to_be_bytes());
    // Checksum 0: none (IPv4 allows it; the generator rewrites the source anyway).
    f
}

/// A UDP frame 2001:db8:18::0 → 2001:db8:19::1, 1024 → 53, `size` bytes (at least 62),
/// from `baton gen`'s host.
pub fn frame_v6(dst: [u8; 6], size: usize) -> Vec<u8> {
    let mut f = vec![0u8; size];
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&GEN_HOST);
    f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
    let payload = (size - 54) as u16;
    let ip = &mut f[14..54];
    ip[0] = 0x60;
    ip[4..6].copy_from_slice(&payload.to_be_bytes());
    ip[6] = 17;
    ip[7] = 64;
    ip[8..24].copy_from_slice(&Ipv6Addr::new(0x2001, 0xdb8, 0x18, 0, 0, 0, 0, 0).octets());
    ip[24..40].copy_from_slice(&Ipv6Addr::new(0x2001, 0xdb8, 0x19, 0, 0, 0, 0, 1).octets());
    let udp = &mut f[54..62];
    udp[0..2].copy_from_slice(&1024u16.to_be_bytes());
    udp[2..4].copy_from_slice(&53u16.to_be_bytes());
    udp[4..6].copy_from_slice(&payload.to_be_bytes());
    f
}

/// The benchmarks' frame: 60 bytes of IPv4 UDP, 198.18.0.1:1024 → 198.19.0.1:53, to
/// `dst_mac`.
pub fn udp_frame(dst_mac: [u8; 6]) -> Vec<u8> {
    frame_v4(HOST, Ipv4Addr::new(198, 18, 0, 1), dst_mac, 60)
}

/// Sends copies of a frame out of one port over a number of flows.
pub struct Generator {
    bed: Testbed,
    frame: Vec<u8>,
    conf: GenConf,
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
    ) -> Result<Self, LabError> {
        let mut bed = Testbed::load()?;
        bed.set_devmap(bench::GEN_PORTS, 0, ifindex(port)?)?;
        let conf = gen_conf(flows, offsets);
        bed.set_generator(conf)?;
        Ok(Self {
            bed,
            frame,
            conf,
            lo: ifindex("lo")?,
        })
    }

    /// Sends another frame from now on, its flow number at `offsets` (`baton gen`
    /// interleaves its IPv4 and IPv6 templates).
    pub fn set_frame(&mut self, frame: &[u8], offsets: (u32, u32)) -> Result<(), LabError> {
        let conf = gen_conf(self.conf.flows, offsets);
        if conf != self.conf {
            self.bed.set_generator(conf)?;
            self.conf = conf;
        }
        if frame != self.frame.as_slice() {
            self.frame = frame.to_vec();
        }
        Ok(())
    }

    /// Sends `frames` frames in batches of 256; returns the time it took.
    pub fn send(&mut self, frames: u32) -> Result<Duration, LabError> {
        Ok(self
            .bed
            .live_frames(bench::GENERATE, &self.frame, self.lo, frames, BATCH)?)
    }
}

fn gen_conf(flows: u32, (addr_off, port_off): (u32, u32)) -> GenConf {
    GenConf {
        flows,
        addr_off,
        port_off,
        _pad: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_well_formed() {
        let f = frame_v4(
            GEN_HOST,
            Ipv4Addr::new(198, 18, 0, 0),
            [2, 0, 0, 0, 0, 1],
            60,
        );
        assert_eq!(f.len(), 60);
        assert_eq!(checksum(&f[14..34]), 0, "IPv4 header checksum verifies");
        assert_eq!(u16::from_be_bytes([f[16], f[17]]), 46);
        let f = frame_v6([2, 0, 0, 0, 0, 1], 100);
        assert_eq!(
            u16::from_be_bytes([f[18], f[19]]),
            46,
            "IPv6 payload length"
        );
        assert_eq!(&f[54..56], &1024u16.to_be_bytes());
    }

    #[test]
    fn the_benchmarks_frame_is_a_60_byte_udp_frame() {
        let f = udp_frame([2, 0, 0, 0, 0, 1]);
        assert_eq!(f.len(), 60);
        assert_eq!(&f[26..30], &[198, 18, 0, 1]);
        assert_eq!(checksum(&f[14..34]), 0);
    }
}
