//! Header layouts and bounds-checked access to packet bytes.
//!
//! Every header is a struct of byte arrays (alignment 1), so reading a field never assumes
//! the packet is aligned. Each access goes through [`ptr_at`], which checks the whole header
//! against `data_end` first: a frame shorter than a header it claims is `DROP_TRUNCATED`.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use baton_common::event;

pub use baton_common::net::{
    ETH_P_8021AD, ETH_P_8021Q, ETH_P_ARP, ETH_P_IPV4, ETH_P_IPV6, IPPROTO_ICMP, IPPROTO_ICMPV6,
    IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP,
};

#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub proto: [u8; 2],
}

#[repr(C)]
pub struct VlanHdr {
    pub tci: [u8; 2],
    pub proto: [u8; 2],
}

#[repr(C)]
pub struct ArpHdr {
    pub htype: [u8; 2],
    pub ptype: [u8; 2],
    pub hlen: u8,
    pub plen: u8,
    pub oper: [u8; 2],
    pub sha: [u8; 6],
    pub spa: [u8; 4],
    pub tha: [u8; 6],
    pub tpa: [u8; 4],
}

#[repr(C)]
pub struct Ipv4Hdr {
    pub vhl: u8,
    pub tos: u8,
    pub len: [u8; 2],
    pub id: [u8; 2],
    pub frag: [u8; 2],
    pub ttl: u8,
    pub proto: u8,
    pub csum: [u8; 2],
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

#[repr(C)]
pub struct Ipv6Hdr {
    pub vtf: [u8; 4],
    pub plen: [u8; 2],
    pub next: u8,
    pub hop: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

/// First two bytes of every IPv6 extension header.
#[repr(C)]
pub struct Ipv6Ext {
    pub next: u8,
    pub len: u8,
    pub rest: [u8; 6],
}

#[repr(C)]
pub struct Ports {
    pub src: [u8; 2],
    pub dst: [u8; 2],
}

#[repr(C)]
pub struct IcmpHdr {
    pub kind: u8,
    pub code: u8,
    pub csum: [u8; 2],
    pub rest: [u8; 4],
}

/// ICMPv6 neighbour solicitation/advertisement with one link-layer address option.
#[repr(C)]
pub struct NdMsg {
    pub kind: u8,
    pub code: u8,
    pub csum: [u8; 2],
    pub flags: [u8; 4],
    pub target: [u8; 16],
    pub opt_type: u8,
    pub opt_len: u8,
    pub opt_mac: [u8; 6],
}

#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Result<*mut T, u32> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + size_of::<T>() > end {
        return Err(event::DROP_TRUNCATED);
    }
    Ok((start + off) as *mut T)
}

#[inline(always)]
pub fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

/// The hash word of an IPv4 address in the packet, read as two 16-bit loads: IP headers
/// sit at an even offset behind Ethernet (and VLAN) headers in an XDP buffer whose start is
/// aligned, so these loads are aligned and half as many as byte loads. On little-endian
/// targets this is `u32::from_ne_bytes(address)`, the word `baton_common::flow_hash` and
/// `baton search` use.
#[inline(always)]
pub unsafe fn addr4(p: *const u8) -> u32 {
    let h = p as *const u16;
    unsafe { (*h as u32) | ((*h.add(1) as u32) << 16) }
}

/// `baton_common::fold_v6` of an IPv6 address in the packet, from 16-bit loads (see
/// [`addr4`]).
#[inline(always)]
pub unsafe fn addr6(p: *const u8) -> u32 {
    let h = p as *const u16;
    unsafe {
        let lo = *h ^ *h.add(2) ^ *h.add(4) ^ *h.add(6);
        let hi = *h.add(1) ^ *h.add(3) ^ *h.add(5) ^ *h.add(7);
        (lo as u32) | ((hi as u32) << 16)
    }
}

/// Skips up to two VLAN tags (802.1Q, QinQ). Returns the inner EtherType and the offset of
/// the L3 header.
#[inline(always)]
pub fn l2(ctx: &XdpContext) -> Result<(u16, usize), u32> {
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    let mut proto = be16(unsafe { (*eth).proto });
    let mut off = size_of::<EthHdr>();
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        let v: *const VlanHdr = ptr_at(ctx, off)?;
        proto = be16(unsafe { (*v).proto });
        off += size_of::<VlanHdr>();
        if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
            let v: *const VlanHdr = ptr_at(ctx, off)?;
            proto = be16(unsafe { (*v).proto });
            off += size_of::<VlanHdr>();
        }
    }
    Ok((proto, off))
}

/// The Internet checksum of 16-bit words already summed into `sum`.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

#[inline(always)]
pub fn sum16(b: &[u8; 16]) -> u32 {
    let mut s = 0u32;
    let mut i = 0;
    while i < 16 {
        s += ((b[i] as u32) << 8) | b[i + 1] as u32;
        i += 2;
    }
    s
}

#[inline(always)]
pub fn sum6(b: &[u8; 6]) -> u32 {
    (((b[0] as u32) << 8) | b[1] as u32)
        + (((b[2] as u32) << 8) | b[3] as u32)
        + (((b[4] as u32) << 8) | b[5] as u32)
}
