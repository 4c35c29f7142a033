//! The frames a member parses and builds besides the IP packets it forwards: the
//! Ethernet header and its VLAN tags, ARP, neighbour discovery and ICMP errors, and the
//! Internet checksum they need (etherparse is used by the tests to check the results).

use std::net::{Ipv4Addr, Ipv6Addr};

use baton_common::net::{
    ETH_P_8021AD, ETH_P_8021Q, ETH_P_ARP, ETH_P_IPV4, ETH_P_IPV6, IPPROTO_ICMPV6,
};

use crate::wire::{Ipv4Packet, Ipv6Packet};

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

/// Adds big-endian 16-bit words of `data` to `sum`.
pub fn sum_words(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
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
    let ip = Ipv6Packet::new_unchecked(ip);
    ip.check_len().ok()?;
    let icmp = ip.payload();
    if ip.next_header() != IPPROTO_ICMPV6 || icmp.len() < 24 || icmp[0] != 136 {
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

/// An ICMPv6 neighbour discovery message (router/neighbour solicitation or advertisement,
/// redirect): for every worker, never forwarded.
pub fn is_neighbour_discovery(ip: &Ipv6Packet<&[u8]>) -> bool {
    ip.next_header() == IPPROTO_ICMPV6
        && ip
            .payload()
            .first()
            .is_some_and(|t| (133..=137).contains(t))
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
    sum += msg.len() as u32 + u32::from(IPPROTO_ICMPV6);
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
    let header = Ipv4Packet::new_unchecked(quoted);
    // The header and 8 bytes of the payload, as RFC 792 asks (more is allowed, not needed).
    let q = &quoted[..(header.header_len() + 8).min(quoted.len())];
    let dst = header.src_addr();
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
    let dst = Ipv6Packet::new_unchecked(quoted).src_addr();
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
        0xff00 | u16::from(t[13]),
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
    fn vlan_tags_are_skipped() {
        let mut f = vec![0u8; 30];
        f[12..14].copy_from_slice(&ETH_P_8021Q.to_be_bytes());
        f[16..18].copy_from_slice(&ETH_P_8021Q.to_be_bytes());
        f[20..22].copy_from_slice(&ETH_P_IPV4.to_be_bytes());
        assert_eq!(l2(&f), Some((ETH_P_IPV4, 22)));
        assert_eq!(l2(&f[..13]), None);
    }
}
