//! `egress`: an orchestrator downlink's ingress (frames a member sends back). Unicast goes
//! to the uplink its destination MAC was learned on; broadcast, multicast and unknown
//! destinations go to the flood uplink of the side whose virtual MAC the member used as
//! source.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use baton_common::{event, MacKey};

use crate::{
    maps::{
        count, DOWNLINKS, EVENTS, GROUPS, MACS, MEMBER_BCAST, MEMBER_STATS, UPLINK_PORTS,
        UPLINK_SLOT, UPLINK_STATS,
    },
    parse::{ptr_at, EthHdr},
};

#[xdp]
pub fn egress(ctx: XdpContext) -> u32 {
    match try_egress(&ctx) {
        Ok(action) => action,
        Err(reason) => {
            count(&EVENTS, reason);
            xdp_action::XDP_DROP
        }
    }
}

#[inline(always)]
fn try_egress(ctx: &XdpContext) -> Result<u32, u32> {
    let ifindex = ctx.ingress_ifindex() as u32;
    let dl = *DOWNLINKS.get(ifindex).ok_or(event::DROP_UNKNOWN_PORT)?;
    if dl.member == 0 {
        return Err(event::DROP_UNKNOWN_PORT);
    }
    // Only an Active member (one in the broadcast map of Active members) may send: a member declared
    // Down or detached is isolated, never left half in.
    if MEMBER_BCAST.get(dl.member).is_none() {
        return Err(event::DROP_ISOLATED);
    }
    if let Some(s) = MEMBER_STATS.get_ptr_mut(dl.member) {
        unsafe {
            (*s).from_member_packets += 1;
            (*s).from_member_bytes += (ctx.data_end() - ctx.data()) as u64;
        }
    }
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    let (dst, src) = unsafe { ((*eth).dst, (*eth).src) };
    if dst[0] & 1 == 0 {
        let k = MacKey {
            mac: dst,
            _pad: [0; 2],
        };
        if let Some(out) = unsafe { MACS.get(&k) } {
            let out = *out;
            count_tx(ctx, out);
            return UPLINK_PORTS
                .redirect(out, 0)
                .map_err(|_| event::DROP_REDIRECT);
        }
    }
    let group = GROUPS.get(dl.group).ok_or(event::DROP_UNKNOWN_PORT)?;
    let out = if src == group.vmac[0] {
        group.flood_ifindex[0]
    } else if src == group.vmac[1] {
        group.flood_ifindex[1]
    } else {
        // A member sends only with a virtual MAC as source.
        return Err(event::DROP_MALFORMED);
    };
    count(&EVENTS, event::L2_FLOODED);
    count_tx(ctx, out);
    UPLINK_PORTS
        .redirect(out, 0)
        .map_err(|_| event::DROP_REDIRECT)
}

/// Counts a frame on the uplink it leaves by.
#[inline(always)]
fn count_tx(ctx: &XdpContext, out: u32) {
    let Some(slot) = UPLINK_SLOT.get(out) else {
        return;
    };
    if *slot == 0 {
        return;
    }
    if let Some(s) = UPLINK_STATS.get_ptr_mut(*slot - 1) {
        unsafe {
            (*s).tx_packets += 1;
            (*s).tx_bytes += (ctx.data_end() - ctx.data()) as u64;
        }
    }
}
