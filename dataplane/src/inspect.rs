//! What the connection table gets to see of an IP packet: its connection's addresses,
//! protocol, ports and flags, or, for an ICMP error, those of the packet it quotes.

use std::net::IpAddr;

use baton_common::net::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP};

use crate::{
    conntrack::Packet,
    wire::{Ipv4Packet, Ipv6Packet},
};

/// What the connection table gets to see of an IP packet.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Inspect {
    /// A packet of its own connection.
    Track(Packet),
    /// An ICMP error about the packet quoted in it (given in the quoted packet's direction).
    Related(Packet),
    /// A fragment after the first: it has no L4 header to track.
    Untracked,
    /// Too short for the L4 header it claims.
    Truncated,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Ports (or the echo identifier, in both) and flags (TCP flags, ICMP type) of an L4
/// header; `None` when it is cut short.
fn l4_fields(proto: u8, l4: &[u8], echo_types: [u8; 2]) -> Option<(u16, u16, u8)> {
    match proto {
        IPPROTO_TCP => Some((be16(l4, 0)?, be16(l4, 2)?, *l4.get(13)?)),
        IPPROTO_UDP | IPPROTO_SCTP => Some((be16(l4, 0)?, be16(l4, 2)?, 0)),
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let kind = *l4.first()?;
            if echo_types.contains(&kind) {
                let id = be16(l4, 4)?;
                Some((id, id, kind))
            } else {
                Some((0, 0, kind))
            }
        }
        _ => Some((0, 0, 0)),
    }
}

/// The fields of a quoted L4 header: an ICMP error carries only its first 8 bytes, so
/// TCP flags are not there (and not needed).
fn quoted_fields(proto: u8, l4: &[u8], echo_types: [u8; 2]) -> Option<(u16, u16, u8)> {
    if proto == IPPROTO_TCP {
        return Some((be16(l4, 0)?, be16(l4, 2)?, 0));
    }
    l4_fields(proto, l4, echo_types)
}

/// Inspects an IPv4 packet (its header already checked to be complete).
pub fn inspect_v4(ip: &Ipv4Packet<&[u8]>) -> Inspect {
    let proto = ip.protocol();
    if ip.frag_offset() != 0 {
        return Inspect::Untracked;
    }
    let l4 = ip.payload();
    let Some((sport, dport, flags)) = l4_fields(proto, l4, [8, 0]) else {
        return Inspect::Truncated;
    };
    if proto == IPPROTO_ICMP && matches!(flags, 3 | 4 | 5 | 11 | 12) {
        let q = Ipv4Packet::new_unchecked(&l4[8.min(l4.len())..]);
        // The quoted header may be cut after its addresses: only its length is checked.
        if q.as_bytes().len() < 20 || q.version() != 4 {
            return Inspect::Truncated;
        }
        let Some((qs, qd, qf)) = quoted_fields(q.protocol(), q.payload(), [8, 0]) else {
            return Inspect::Truncated;
        };
        return Inspect::Related(Packet {
            src: IpAddr::V4(q.src_addr()),
            dst: IpAddr::V4(q.dst_addr()),
            proto: q.protocol(),
            sport: qs,
            dport: qd,
            flags: qf,
        });
    }
    Inspect::Track(Packet {
        src: IpAddr::V4(ip.src_addr()),
        dst: IpAddr::V4(ip.dst_addr()),
        proto,
        sport,
        dport,
        flags,
    })
}

/// Inspects an IPv6 packet (its fixed header already checked), walking its extension
/// headers.
pub fn inspect_v6(ip: &Ipv6Packet<&[u8]>) -> Inspect {
    let b = ip.as_bytes();
    let mut next = ip.next_header();
    let mut off = baton_common::net::IPV6_HLEN;
    for _ in 0..8 {
        if !matches!(next, 0 | 43 | 44 | 51 | 60) {
            break;
        }
        let (Some(&nh), Some(&len)) = (b.get(off), b.get(off + 1)) else {
            return Inspect::Truncated;
        };
        match next {
            51 => off += (len as usize + 2) * 4,
            44 => {
                if be16(b, off + 2).is_none_or(|o| o >> 3 != 0) {
                    return Inspect::Untracked;
                }
                off += 8;
            }
            _ => off += (len as usize + 1) * 8,
        }
        next = nh;
    }
    let l4 = &b[off.min(b.len())..];
    let Some((sport, dport, flags)) = l4_fields(next, l4, [128, 129]) else {
        return Inspect::Truncated;
    };
    if next == IPPROTO_ICMPV6 && (1..=4).contains(&flags) {
        let q = Ipv6Packet::new_unchecked(&l4[8.min(l4.len())..]);
        if q.check_len().is_err() || q.version() != 6 {
            return Inspect::Truncated;
        }
        let Some((qs, qd, qf)) = quoted_fields(q.next_header(), q.payload(), [128, 129]) else {
            return Inspect::Truncated;
        };
        return Inspect::Related(Packet {
            src: IpAddr::V6(q.src_addr()),
            dst: IpAddr::V6(q.dst_addr()),
            proto: q.next_header(),
            sport: qs,
            dport: qd,
            flags: qf,
        });
    }
    Inspect::Track(Packet {
        src: IpAddr::V6(ip.src_addr()),
        dst: IpAddr::V6(ip.dst_addr()),
        proto: next,
        sport,
        dport,
        flags,
    })
}
