//! Reading and writing the few header fields a member touches, on raw frame bytes (the
//! fast path parses in place; etherparse is used by the tests to check the results).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const IPPROTO_ICMPV6: u8 = 58;

/// EtherType and L3 offset, past up to two VLAN tags; `None` when truncated.
#[inline]
pub fn l2(f: &[u8]) -> Option<(u16, usize)> {
    let mut off = 12;
    for _ in 0..3 {
        let t = u16::from_be_bytes(f.get(off..off + 2)?.try_into().ok()?);
        if t != ETH_P_8021Q && t != ETH_P_8021AD {
            return Some((t, off + 2));
        }
        off += 4;
    }
    None
}

#[inline]
pub fn set_macs(f: &mut [u8], dst: [u8; 6], src: [u8; 6]) {
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
}

/// Decrements the TTL of an IPv4 header and updates its checksum incrementally (RFC 1624).
#[inline]
pub fn decrement_ttl_v4(ip: &mut [u8]) {
    let old = u16::from_be_bytes([ip[8], ip[9]]);
    ip[8] -= 1;
    let new = u16::from_be_bytes([ip[8], ip[9]]);
    let hc = u16::from_be_bytes([ip[10], ip[11]]);
    let mut sum = (!hc as u32) + (!old as u32) + new as u32;
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
}

/// Adds big-endian 16-bit words of `data` to `sum`.
pub fn sum_words(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    if let [last] = chunks.remainder() {
        sum += (*last as u32) << 8;
    }
    sum
}

pub fn fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

pub struct Arp {
    pub oper: u16,
    pub sha: [u8; 6],
    pub spa: Ipv4Addr,
    pub tpa: Ipv4Addr,
}

/// An Ethernet/IPv4 ARP message (the bytes after the Ethernet header).
pub fn parse_arp(a: &[u8]) -> Option<Arp> {
    if a.len() < 28 || a[0..6] != [0, 1, 8, 0, 6, 4] {
        return None;
    }
    Some(Arp {
        oper: u16::from_be_bytes([a[6], a[7]]),
        sha: a[8..14].try_into().ok()?,
        spa: Ipv4Addr::new(a[14], a[15], a[16], a[17]),
        tpa: Ipv4Addr::new(a[24], a[25], a[26], a[27]),
    })
}

/// Target and link-layer address of a neighbour advertisement (`ip` starts at the IPv6
/// header, ICMPv6 directly after it).
pub fn parse_na(ip: &[u8]) -> Option<(Ipv6Addr, [u8; 6])> {
    let icmp = ip.get(40..)?;
    if ip[6] != IPPROTO_ICMPV6 || icmp.len() < 24 || icmp[0] != 136 {
        return None;
    }
    let target = Ipv6Addr::from(<[u8; 16]>::try_from(&icmp[8..24]).ok()?);
    let mut opts = &icmp[24..];
    while opts.len() >= 8 {
        let len = opts[1] as usize * 8;
        if len == 0 || len > opts.len() {
            return None;
        }
        if opts[0] == 2 {
            return Some((target, opts[2..8].try_into().ok()?));
        }
        opts = &opts[len..];
    }
    None
}

/// A broadcast ARP request for `target`, from `mac`/`spa`, padded to the Ethernet minimum.
pub fn arp_request(mac: [u8; 6], spa: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0u8; 60];
    set_macs(&mut f, [0xff; 6], mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&spa.octets());
    f[38..42].copy_from_slice(&target.octets());
    f
}

fn icmpv6_frame(
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    msg: &mut [u8],
) -> Vec<u8> {
    let mut sum = sum_words(0, &src.octets());
    sum = sum_words(sum, &dst.octets());
    sum += msg.len() as u32 + IPPROTO_ICMPV6 as u32;
    msg[2] = 0;
    msg[3] = 0;
    sum = sum_words(sum, msg);
    msg[2..4].copy_from_slice(&fold(sum).to_be_bytes());

    let mut f = Vec::with_capacity(54 + msg.len());
    f.extend_from_slice(&eth_dst);
    f.extend_from_slice(&eth_src);
    f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    f.extend_from_slice(&[IPPROTO_ICMPV6, 255]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(msg);
    f
}

/// An ICMP time-exceeded error (type 11, code 0) about `quoted` (the offending IPv4
/// header and the start of its payload), from `src` to the packet's source, as a frame
/// from `mac` to `dst_mac`.
pub fn icmp_time_exceeded(mac: [u8; 6], dst_mac: [u8; 6], src: Ipv4Addr, quoted: &[u8]) -> Vec<u8> {
    let ihl = ((quoted[0] & 0x0f) as usize) * 4;
    // The header and 8 bytes of the payload, as RFC 792 asks (more is allowed, not needed).
    let q = &quoted[..(ihl + 8).min(quoted.len())];
    let dst = Ipv4Addr::new(quoted[12], quoted[13], quoted[14], quoted[15]);
    let mut icmp = vec![11u8, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(q);
    let sum = fold(sum_words(0, &icmp));
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let total = (20 + icmp.len()) as u16;
    let mut ip = vec![0x45u8, 0xc0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let hsum = fold(sum_words(0, &ip));
    ip[10..12].copy_from_slice(&hsum.to_be_bytes());
    let mut f = Vec::with_capacity(14 + ip.len() + icmp.len());
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ETH_P_IPV4.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&icmp);
    f
}

/// An ICMPv6 time-exceeded error (type 3, code 0) about `quoted` (the offending packet,
/// cut so the error fits the IPv6 minimum MTU), from `src` to the packet's source.
pub fn icmpv6_time_exceeded(
    mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv6Addr,
    quoted: &[u8],
) -> Vec<u8> {
    let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&quoted[8..24]).unwrap());
    let q = &quoted[..quoted.len().min(1280 - 40 - 8)];
    let mut msg = vec![3u8, 0, 0, 0, 0, 0, 0, 0];
    msg.extend_from_slice(q);
    icmpv6_frame(dst_mac, mac, src, dst, &mut msg)
}

/// A neighbour solicitation for `target` to its solicited-node multicast address.
pub fn neighbour_solicitation(mac: [u8; 6], src: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    let t = target.octets();
    let dst = Ipv6Addr::from([
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | t[13] as u16,
        u16::from_be_bytes([t[14], t[15]]),
    ]);
    let mut msg = [0u8; 32];
    msg[0] = 135;
    msg[8..24].copy_from_slice(&t);
    msg[24] = 1; // source link-layer address
    msg[25] = 1;
    msg[26..32].copy_from_slice(&mac);
    icmpv6_frame(
        [0x33, 0x33, 0xff, t[13], t[14], t[15]],
        mac,
        src,
        dst,
        &mut msg,
    )
}

/// A solicited neighbour advertisement of `target` at `mac`, to `dst_ip` at `dst_mac`.
pub fn neighbour_advertisement(
    mac: [u8; 6],
    target: Ipv6Addr,
    dst_mac: [u8; 6],
    dst_ip: Ipv6Addr,
) -> Vec<u8> {
    let mut msg = [0u8; 32];
    msg[0] = 136;
    msg[4] = 0x60; // solicited, override
    msg[8..24].copy_from_slice(&target.octets());
    msg[24] = 2; // target link-layer address
    msg[25] = 1;
    msg[26..32].copy_from_slice(&mac);
    icmpv6_frame(dst_mac, mac, target, dst_ip, &mut msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incremental_ttl_checksum_matches_full_recompute() {
        for ttl in [2u8, 64, 128, 255] {
            for id in [0u16, 1, 0xffff, 0x1234] {
                let mut h = etherparse::Ipv4Header::new(
                    10,
                    ttl,
                    etherparse::IpNumber::UDP,
                    [198, 18, 0, 1],
                    [198, 19, 0, 7],
                )
                .unwrap();
                h.identification = id;
                h.header_checksum = h.calc_header_checksum();
                let mut b = h.to_bytes().to_vec();
                decrement_ttl_v4(&mut b);
                let (d, _) = etherparse::Ipv4Header::from_slice(&b).unwrap();
                assert_eq!(d.time_to_live, ttl - 1);
                assert_eq!(d.header_checksum, d.calc_header_checksum());
            }
        }
    }

    #[test]
    fn vlan_tags_are_skipped() {
        let mut f = vec![0u8; 30];
        f[12..14].copy_from_slice(&ETH_P_8021Q.to_be_bytes());
        f[16..18].copy_from_slice(&ETH_P_8021Q.to_be_bytes());
        f[20..22].copy_from_slice(&ETH_P_IPV4.to_be_bytes());
        assert_eq!(l2(&f), Some((ETH_P_IPV4, 22)));
        assert_eq!(l2(&f[..13]), None);
    }
}

/// What the connection table gets to see of an IP packet.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Inspect {
    /// A packet of its own connection.
    Track(crate::conntrack::Packet),
    /// An ICMP error about the packet quoted in it (given in the quoted packet's direction).
    Related(crate::conntrack::Packet),
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
    use crate::conntrack::{ICMP, ICMPV6, TCP, UDP};
    match proto {
        TCP => Some((be16(l4, 0)?, be16(l4, 2)?, *l4.get(13)?)),
        UDP | 132 => Some((be16(l4, 0)?, be16(l4, 2)?, 0)),
        ICMP | ICMPV6 => {
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
    use crate::conntrack::TCP;
    if proto == TCP {
        return Some((be16(l4, 0)?, be16(l4, 2)?, 0));
    }
    l4_fields(proto, l4, echo_types)
}

/// Inspects an IPv4 packet (`ip` starts at its header, already checked to be complete).
pub fn inspect_v4(ip: &[u8]) -> Inspect {
    use crate::conntrack::{Packet, ICMP};
    let ihl = ((ip[0] & 0x0f) as usize) * 4;
    let proto = ip[9];
    let addr = |at: usize| IpAddr::V4(Ipv4Addr::new(ip[at], ip[at + 1], ip[at + 2], ip[at + 3]));
    if u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff != 0 {
        return Inspect::Untracked;
    }
    let l4 = &ip[ihl.min(ip.len())..];
    let Some((sport, dport, flags)) = l4_fields(proto, l4, [8, 0]) else {
        return Inspect::Truncated;
    };
    if proto == ICMP && matches!(flags, 3 | 4 | 5 | 11 | 12) {
        let q = &l4[8.min(l4.len())..];
        if q.len() < 20 || q[0] >> 4 != 4 {
            return Inspect::Truncated;
        }
        let qihl = ((q[0] & 0x0f) as usize) * 4;
        let qaddr = |at: usize| IpAddr::V4(Ipv4Addr::new(q[at], q[at + 1], q[at + 2], q[at + 3]));
        let Some((qs, qd, qf)) = quoted_fields(q[9], &q[qihl.min(q.len())..], [8, 0]) else {
            return Inspect::Truncated;
        };
        return Inspect::Related(Packet {
            src: qaddr(12),
            dst: qaddr(16),
            proto: q[9],
            sport: qs,
            dport: qd,
            flags: qf,
        });
    }
    Inspect::Track(Packet {
        src: addr(12),
        dst: addr(16),
        proto,
        sport,
        dport,
        flags,
    })
}

/// Inspects an IPv6 packet, walking its extension headers.
pub fn inspect_v6(ip: &[u8]) -> Inspect {
    use crate::conntrack::{Packet, ICMPV6};
    let addr = |b: &[u8], at: usize| {
        IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(&b[at..at + 16]).unwrap(),
        ))
    };
    let mut next = ip[6];
    let mut off = 40;
    for _ in 0..8 {
        if !matches!(next, 0 | 43 | 44 | 51 | 60) {
            break;
        }
        let (Some(&nh), Some(&len)) = (ip.get(off), ip.get(off + 1)) else {
            return Inspect::Truncated;
        };
        match next {
            51 => off += (len as usize + 2) * 4,
            44 => {
                if be16(ip, off + 2).is_none_or(|o| o >> 3 != 0) {
                    return Inspect::Untracked;
                }
                off += 8;
            }
            _ => off += (len as usize + 1) * 8,
        }
        next = nh;
    }
    let l4 = &ip[off.min(ip.len())..];
    let Some((sport, dport, flags)) = l4_fields(next, l4, [128, 129]) else {
        return Inspect::Truncated;
    };
    if next == ICMPV6 && (1..=4).contains(&flags) {
        let q = &l4[8.min(l4.len())..];
        if q.len() < 40 || q[0] >> 4 != 6 {
            return Inspect::Truncated;
        }
        let Some((qs, qd, qf)) = quoted_fields(q[6], &q[40..], [128, 129]) else {
            return Inspect::Truncated;
        };
        return Inspect::Related(Packet {
            src: addr(q, 8),
            dst: addr(q, 24),
            proto: q[6],
            sport: qs,
            dport: qd,
            flags: qf,
        });
    }
    Inspect::Track(Packet {
        src: addr(ip, 8),
        dst: addr(ip, 24),
        proto: next,
        sport,
        dport,
        flags,
    })
}
