//! The sync link's fault injector (tests only): drops a configured share of HyperSync
//! frames at random, everything else passes.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_get_prandom_u32,
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use baton_common::net::ETH_P_SYNC;

use crate::parse::ptr_at;

/// Frames to drop, per million.
#[map]
pub static FAULT_CONF: Array<u32> = Array::with_max_entries(1, 0);
/// Sync frames dropped, sync frames passed (per CPU).
#[map]
pub static FAULT_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

#[xdp]
pub fn sync_loss(ctx: XdpContext) -> u32 {
    try_sync_loss(&ctx).unwrap_or(xdp_action::XDP_PASS)
}

#[inline(always)]
fn try_sync_loss(ctx: &XdpContext) -> Result<u32, ()> {
    let ethertype: *const u16 = ptr_at(ctx, 12).map_err(|_| ())?;
    if u16::from_be(unsafe { *ethertype }) != ETH_P_SYNC {
        return Ok(xdp_action::XDP_PASS);
    }
    let per_million = FAULT_CONF.get(0).copied().unwrap_or(0);
    let drop = unsafe { bpf_get_prandom_u32() } % 1_000_000 < per_million;
    if let Some(c) = FAULT_STATS.get_ptr_mut(if drop { 0 } else { 1 }) {
        unsafe { *c += 1 };
    }
    Ok(if drop {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    })
}
