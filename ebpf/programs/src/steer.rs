//! `steer`: a member's data port hands every frame to the AF_XDP socket of its queue.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use baton_common::steer_stat;

use crate::maps::{count, STEER_STATS, XSKS};

#[xdp]
pub fn steer(ctx: XdpContext) -> u32 {
    match XSKS.redirect(ctx.rx_queue_index(), 0) {
        Ok(action) => {
            count(&STEER_STATS, steer_stat::TO_SOCKET);
            action
        }
        Err(_) => {
            // No socket on this queue: the member is not (yet) serving it.
            count(&STEER_STATS, steer_stat::NO_SOCKET);
            xdp_action::XDP_DROP
        }
    }
}
