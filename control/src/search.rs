//! `baton search`: the bucket a packet falls in, computed exactly as `distribute` does.

use std::net::IpAddr;

use baton_common::{
    addr_word, flow_hash, key,
    net::{IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP},
};

/// Hash of a packet from `src` to `dst` arriving on an uplink whose flow-key selector is
/// `uplink_key` ([`baton_common::key`]).
pub fn packet_hash(
    uplink_key: u32,
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    sport: u16,
    dport: u16,
) -> u32 {
    let (s, d) = (addr_word(src), addr_word(dst));
    let (a, b) = match uplink_key & 0xff {
        key::SRC => (s, 0),
        key::DST => (d, 0),
        _ => (s, d),
    };
    let ports =
        uplink_key & key::F_PORTS != 0 && matches!(proto, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP);
    let (sp, dp) = if ports { (sport, dport) } else { (0, 0) };
    flow_hash(a, b, sp, dp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_directions_hash_alike_in_every_mode() {
        let a: IpAddr = "198.18.0.7".parse().unwrap();
        let b: IpAddr = "198.19.0.9".parse().unwrap();
        let general = key::BOTH | key::F_PORTS;
        assert_eq!(
            packet_hash(general, a, b, IPPROTO_TCP, 1234, 80),
            packet_hash(general, b, a, IPPROTO_TCP, 80, 1234)
        );
        // Auto-topology: external uplink keys on the source, internal on the destination,
        // and both see the external host.
        assert_eq!(
            packet_hash(key::SRC, a, b, IPPROTO_UDP, 1, 2),
            packet_hash(key::DST, b, a, IPPROTO_UDP, 2, 1)
        );
        let a6: IpAddr = "2001:db8:18::7".parse().unwrap();
        let b6: IpAddr = "2001:db8:19::9".parse().unwrap();
        assert_eq!(
            packet_hash(key::BOTH, a6, b6, IPPROTO_TCP, 1, 2),
            packet_hash(key::BOTH, b6, a6, IPPROTO_TCP, 2, 1)
        );
        // Ports only count for protocols that have them, and only with F_PORTS.
        assert_eq!(
            packet_hash(general, a, b, 1, 1, 2),
            packet_hash(general, a, b, 1, 3, 4)
        );
        assert_eq!(
            packet_hash(key::BOTH, a, b, IPPROTO_TCP, 1, 2),
            packet_hash(key::BOTH, a, b, IPPROTO_TCP, 3, 4)
        );
    }
}
