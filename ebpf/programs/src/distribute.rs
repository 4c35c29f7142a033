//! `distribute`: an orchestrator uplink's ingress. Answers ARP/ND for the gateway
//! addresses, hands other ARP/ND to the members, and sends every IP packet to the active
//! member of its bucket: `bucket = flow_hash(key) mod B`, the key chosen so that both
//! directions of a connection (and its fragments and ICMP errors) land on the same member.

use core::mem::size_of;

use aya_ebpf::{
    bindings::{xdp_action, BPF_F_BROADCAST},
    macros::xdp,
    programs::XdpContext,
};
use baton_common::{
    bucket_index, event, flow_hash, key, MacKey, UplinkConf, BUCKETS_PER_GROUP_MAX,
};

use crate::{
    maps::{
        count, BUCKETS, EVENTS, GROUPS, MACS, MEMBER_BCAST, MEMBER_PORTS, MEMBER_STATS, UPLINKS,
        UPLINK_PORTS, UPLINK_SLOT, UPLINK_STATS,
    },
    parse::*,
};

/// IPv6 extension headers walked before giving up on finding the L4 header.
const IPV6_EXT_MAX: usize = 6;
/// Furthest L4 offset accepted; keeps offsets bounded for the verifier.
const L4_OFF_MAX: usize = 512;

#[xdp]
pub fn distribute(ctx: XdpContext) -> u32 {
    match try_distribute(&ctx) {
        Ok(action) => action,
        Err(reason) => {
            count(&EVENTS, reason);
            xdp_action::XDP_DROP
        }
    }
}

/// Addresses (as hash words) and ports of a packet, in the packet's direction.
struct Flow {
    src: u32,
    dst: u32,
    sport: u16,
    dport: u16,
}

enum L3 {
    Flow(Flow),
    /// The frame was answered or handed on already.
    Done(u32),
}

#[inline(always)]
fn try_distribute(ctx: &XdpContext) -> Result<u32, u32> {
    let ifindex = ctx.ingress_ifindex() as u32;
    let slot = *UPLINK_SLOT.get(ifindex).ok_or(event::DROP_UNKNOWN_PORT)?;
    if slot == 0 {
        return Err(event::DROP_UNKNOWN_PORT);
    }
    let up: &UplinkConf = UPLINKS.get(slot - 1).ok_or(event::DROP_UNKNOWN_PORT)?;
    if let Some(s) = UPLINK_STATS.get_ptr_mut(up.slot) {
        unsafe {
            (*s).rx_packets += 1;
            (*s).rx_bytes += (ctx.data_end() - ctx.data()) as u64;
        }
    }
    let (proto, off) = l2(ctx)?;
    let l3 = match proto {
        ETH_P_IPV4 => ipv4(ctx, off, up.key)?,
        ETH_P_IPV6 => ipv6(ctx, off, up)?,
        ETH_P_ARP => {
            learn(ctx, ifindex)?;
            L3::Done(arp(ctx, off, up)?)
        }
        _ => return Err(event::DROP_NOT_IP),
    };
    let flow = match l3 {
        L3::Flow(flow) => flow,
        L3::Done(action) => return Ok(action),
    };
    let (a, b) = match up.key & 0xff {
        key::SRC => (flow.src, 0),
        key::DST => (flow.dst, 0),
        _ => (flow.src, flow.dst),
    };
    let hash = flow_hash(a, b, flow.sport, flow.dport);
    let group = GROUPS.get(up.group).ok_or(event::DROP_UNKNOWN_PORT)?;
    let bucket = hash & group.mask & (BUCKETS_PER_GROUP_MAX - 1);
    let entry = BUCKETS
        .get(bucket_index(group.table, up.group, bucket))
        .ok_or(event::DROP_UNKNOWN_PORT)?;
    let member = entry.active;
    if member == 0 {
        return Err(event::DROP_NO_MEMBER);
    }
    if let Some(s) = MEMBER_STATS.get_ptr_mut(member) {
        unsafe {
            (*s).to_member_packets += 1;
            (*s).to_member_bytes += (ctx.data_end() - ctx.data()) as u64;
        }
    }
    MEMBER_PORTS
        .redirect(member, 0)
        .map_err(|_| event::DROP_REDIRECT)
}

/// Remembers which uplink a source MAC lives behind, for `egress`. Only ARP and neighbour
/// discovery teach it (every host and router resolves before it sends, and announces a
/// move the same way), which keeps the lookup off the per-packet path; an unknown MAC is
/// flooded to its side's uplink by `egress` anyway. Looks before writing, so a repeated
/// announcement costs one lookup.
#[inline(always)]
fn learn(ctx: &XdpContext, ifindex: u32) -> Result<(), u32> {
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    let mac = unsafe { (*eth).src };
    if mac[0] & 1 != 0 {
        return Ok(());
    }
    let k = MacKey { mac, _pad: [0; 2] };
    match unsafe { MACS.get(&k) } {
        Some(known) if *known == ifindex => {}
        _ => {
            let _ = MACS.insert(&k, &ifindex, 0);
        }
    }
    Ok(())
}

#[inline(always)]
fn to_members() -> Result<u32, u32> {
    count(&EVENTS, event::L2_TO_MEMBERS);
    MEMBER_BCAST
        .redirect(0, BPF_F_BROADCAST as u64)
        .map_err(|_| event::DROP_REDIRECT)
}

/// Sends a frame rewritten in place back out of the port it came in on. A devmap redirect
/// rather than XDP_TX: on veth, XDP_TX frames are only flushed to a peer that runs an XDP
/// program itself, while a devmap redirect flushes to any peer with NAPI (GRO) on.
#[inline(always)]
fn reply(ctx: &XdpContext) -> Result<u32, u32> {
    UPLINK_PORTS
        .redirect(ctx.ingress_ifindex() as u32, 0)
        .map_err(|_| event::DROP_REDIRECT)
}

#[inline(always)]
fn arp(ctx: &XdpContext, off: usize, up: &UplinkConf) -> Result<u32, u32> {
    let h: *mut ArpHdr = ptr_at(ctx, off)?;
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    unsafe {
        let for_gateway = be16((*h).oper) == 1
            && (*h).hlen == 6
            && (*h).plen == 4
            && up.gw_v4 != [0; 4]
            && (*h).tpa == up.gw_v4;
        if !for_gateway {
            return to_members();
        }
        let (sha, spa) = ((*h).sha, (*h).spa);
        (*h).oper = [0, 2];
        (*h).tha = sha;
        (*h).tpa = spa;
        (*h).sha = up.vmac;
        (*h).spa = up.gw_v4;
        (*eth).dst = (*eth).src;
        (*eth).src = up.vmac;
    }
    count(&EVENTS, event::ARP_REPLIED);
    reply(ctx)
}

#[inline(always)]
fn has_ports(proto: u8) -> bool {
    proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_SCTP
}

#[inline(always)]
fn ports_at(ctx: &XdpContext, off: usize) -> Result<(u16, u16), u32> {
    let p: *const Ports = ptr_at(ctx, off)?;
    Ok(unsafe { (be16((*p).src), be16((*p).dst)) })
}

#[inline(always)]
fn ipv4(ctx: &XdpContext, off: usize, keymode: u32) -> Result<L3, u32> {
    let ip: *const Ipv4Hdr = ptr_at(ctx, off)?;
    let (vhl, frag, proto) = unsafe { ((*ip).vhl, be16((*ip).frag), (*ip).proto) };
    if vhl >> 4 != 4 || vhl & 0x0f < 5 {
        return Err(event::DROP_MALFORMED);
    }
    let mut flow = unsafe {
        Flow {
            src: addr4((*ip).src.as_ptr()),
            dst: addr4((*ip).dst.as_ptr()),
            sport: 0,
            dport: 0,
        }
    };
    // Fragments (first one included) hash on addresses only: later fragments carry no
    // ports, and all pieces of a datagram must meet on one member.
    if frag & 0x3fff != 0 {
        count(&EVENTS, event::FRAGMENTS);
        return Ok(L3::Flow(flow));
    }
    let l4 = off + ((vhl & 0x0f) as usize) * 4;
    let ports = keymode & key::F_PORTS != 0;
    if has_ports(proto) {
        if ports {
            (flow.sport, flow.dport) = ports_at(ctx, l4)?;
        }
    } else if proto == IPPROTO_ICMP {
        let icmp: *const IcmpHdr = ptr_at(ctx, l4)?;
        let kind = unsafe { (*icmp).kind };
        // Errors quote the packet that caused them: hash on that, reversed, so the error
        // reaches the member owning the connection.
        if kind == 3 || kind == 4 || kind == 5 || kind == 11 || kind == 12 {
            let q = l4 + size_of::<IcmpHdr>();
            let inner: *const Ipv4Hdr = ptr_at(ctx, q)?;
            let (ivhl, ifrag, iproto) =
                unsafe { ((*inner).vhl, be16((*inner).frag), (*inner).proto) };
            if ivhl >> 4 != 4 || ivhl & 0x0f < 5 {
                return Err(event::DROP_MALFORMED);
            }
            unsafe {
                flow.src = addr4((*inner).dst.as_ptr());
                flow.dst = addr4((*inner).src.as_ptr());
            }
            if ports && has_ports(iproto) && ifrag & 0x3fff == 0 {
                let (s, d) = ports_at(ctx, q + ((ivhl & 0x0f) as usize) * 4)?;
                (flow.sport, flow.dport) = (d, s);
            }
            count(&EVENTS, event::ICMP_ERRORS);
        }
    }
    Ok(L3::Flow(flow))
}

#[inline(always)]
fn ipv6(ctx: &XdpContext, off: usize, up: &UplinkConf) -> Result<L3, u32> {
    let ip: *mut Ipv6Hdr = ptr_at(ctx, off)?;
    if unsafe { (*ip).vtf[0] } >> 4 != 6 {
        return Err(event::DROP_MALFORMED);
    }
    let mut flow = unsafe {
        Flow {
            src: addr6((*ip).src.as_ptr()),
            dst: addr6((*ip).dst.as_ptr()),
            sport: 0,
            dport: 0,
        }
    };
    let mut next = unsafe { (*ip).next };
    let mut l4 = off + size_of::<Ipv6Hdr>();
    let mut fragment = false;
    for _ in 0..IPV6_EXT_MAX {
        match next {
            // Hop-by-hop, routing, destination options: length in 8-byte units, less one.
            0 | 43 | 60 => {
                let e: *const Ipv6Ext = ptr_at(ctx, l4)?;
                unsafe {
                    next = (*e).next;
                    l4 += ((*e).len as usize + 1) * 8;
                }
            }
            // Authentication header: length in 4-byte units, less two.
            51 => {
                let e: *const Ipv6Ext = ptr_at(ctx, l4)?;
                unsafe {
                    next = (*e).next;
                    l4 += ((*e).len as usize + 2) * 4;
                }
            }
            44 => {
                let e: *const Ipv6Ext = ptr_at(ctx, l4)?;
                next = unsafe { (*e).next };
                l4 += 8;
                fragment = true;
            }
            _ => break,
        }
        if l4 > L4_OFF_MAX {
            return Err(event::DROP_MALFORMED);
        }
    }
    if fragment {
        count(&EVENTS, event::FRAGMENTS);
        return Ok(L3::Flow(flow));
    }
    let ports = up.key & key::F_PORTS != 0;
    if has_ports(next) {
        if ports {
            (flow.sport, flow.dport) = ports_at(ctx, l4)?;
        }
    } else if next == IPPROTO_ICMPV6 {
        let icmp: *const IcmpHdr = ptr_at(ctx, l4)?;
        let kind = unsafe { (*icmp).kind };
        match kind {
            135 => {
                learn(ctx, ctx.ingress_ifindex() as u32)?;
                let direct = l4 == off + size_of::<Ipv6Hdr>();
                return Ok(L3::Done(neighbour_solicitation(ctx, ip, l4, up, direct)?));
            }
            133 | 134 | 136 | 137 => {
                learn(ctx, ctx.ingress_ifindex() as u32)?;
                return Ok(L3::Done(to_members()?));
            }
            1..=4 => {
                let q = l4 + size_of::<IcmpHdr>();
                let inner: *const Ipv6Hdr = ptr_at(ctx, q)?;
                let inext = unsafe {
                    flow.src = addr6((*inner).dst.as_ptr());
                    flow.dst = addr6((*inner).src.as_ptr());
                    (*inner).next
                };
                if ports && has_ports(inext) {
                    let (s, d) = ports_at(ctx, q + size_of::<Ipv6Hdr>())?;
                    (flow.sport, flow.dport) = (d, s);
                }
                count(&EVENTS, event::ICMP_ERRORS);
            }
            _ => {}
        }
    }
    Ok(L3::Flow(flow))
}

/// Answers a solicitation for the uplink's gateway address with an advertisement of the
/// side's virtual MAC (rewritten in place, sent back out by [`reply`]). Anything else goes
/// to the members.
#[inline(always)]
fn neighbour_solicitation(
    ctx: &XdpContext,
    ip: *mut Ipv6Hdr,
    l4: usize,
    up: &UplinkConf,
    direct: bool,
) -> Result<u32, u32> {
    let nd: *mut NdMsg = ptr_at(ctx, l4)?;
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    unsafe {
        let peer = (*ip).src;
        let answer = direct
            && be16((*ip).plen) as usize == size_of::<NdMsg>()
            && up.gw_v6 != [0; 16]
            && (*nd).target == up.gw_v6
            && peer != [0; 16]
            && (*nd).opt_type == 1;
        if !answer {
            return to_members();
        }
        (*ip).dst = peer;
        (*ip).src = up.gw_v6;
        (*ip).hop = 255;
        (*nd).kind = 136;
        (*nd).code = 0;
        (*nd).flags = [0xe0, 0, 0, 0]; // router, solicited, override
        (*nd).opt_type = 2;
        (*nd).opt_len = 1;
        (*nd).opt_mac = up.vmac;
        // Pseudo-header (source, destination, length, next header) and the message.
        let sum = sum16(&up.gw_v6)
            + sum16(&peer)
            + size_of::<NdMsg>() as u32
            + IPPROTO_ICMPV6 as u32
            + (136 << 8)
            + 0xe000
            + sum16(&up.gw_v6)
            + ((2 << 8) | 1)
            + sum6(&up.vmac);
        (*nd).csum = fold(sum).to_be_bytes();
        (*eth).dst = (*eth).src;
        (*eth).src = up.vmac;
    }
    count(&EVENTS, event::ND_REPLIED);
    reply(ctx)
}
