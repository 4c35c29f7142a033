//! Routing: the two sides of the group as a member sees them, and which side a destination
//! lies behind (longest prefix wins).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// One side of the group as a member sees it.
#[derive(Clone, Debug)]
pub struct Side {
    /// The group's virtual MAC on this side: the source of every frame sent there.
    pub vmac: [u8; 6],
    /// Gateway addresses: the source of ARP/ND solicitations.
    pub gw_v4: Option<Ipv4Addr>,
    pub gw_v6: Option<Ipv6Addr>,
    /// Networks behind this side (on-link: the destination is its own next hop).
    pub prefixes: Vec<IpNet>,
}

/// The side whose prefixes contain `ip` (longest prefix wins).
pub fn side_of(sides: &[Side], ip: IpAddr) -> Option<usize> {
    let mut best: Option<(usize, u8)> = None;
    for (i, side) in sides.iter().enumerate() {
        for p in &side.prefixes {
            if p.contains(&ip) && best.is_none_or(|(_, len)| p.prefix_len() > len) {
                best = Some((i, p.prefix_len()));
            }
        }
    }
    best.map(|(i, _)| i)
}
