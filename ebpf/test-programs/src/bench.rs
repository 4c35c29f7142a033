//! Programs of the benchmarks: a bare redirect to one fixed devmap port (the ceiling of
//! the path, the baseline `distribute` is compared with), a sink that counts and drops
//! (member ports in the orchestrator-only benchmark), and the live-frames generator.

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, CpuMap, DevMap, PerCpuArray},
    programs::XdpContext,
};
use baton_common::testbed::GenConf;

use crate::parse::ptr_at;

#[map]
pub static BENCH_PORTS: DevMap = DevMap::with_max_entries(1, 0);
#[map]
pub static GEN_PORTS: DevMap = DevMap::with_max_entries(1, 0);
#[map]
pub static GEN_CONF: Array<GenConf> = Array::with_max_entries(1, 0);
/// CPU 0, whose map thread builds socket buffers for `to_stack`.
#[map]
pub static STACK_CPUS: CpuMap = CpuMap::with_max_entries(1, 0);
#[map]
pub static GEN_SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);
/// Frames and bytes the sinks saw (per CPU).
#[map]
pub static SINK_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

/// Offsets the generator may write at: within the headers of any frame it sends.
const GEN_OFF_MAX: u32 = 128;

#[xdp]
pub fn bare_redirect(_ctx: XdpContext) -> u32 {
    BENCH_PORTS.redirect(0, 0).unwrap_or(xdp_action::XDP_DROP)
}

/// Hands every frame to the kernel's stack through a CPU map: what a Linux router needs to
/// receive the live-frames generator's bursts (a plain veth port takes one batch of them).
#[xdp]
pub fn to_stack(_ctx: XdpContext) -> u32 {
    STACK_CPUS.redirect(0, 0).unwrap_or(xdp_action::XDP_PASS)
}

#[xdp]
pub fn sink(ctx: XdpContext) -> u32 {
    if let Some(c) = SINK_STATS.get_ptr_mut(0) {
        unsafe { *c += 1 };
    }
    if let Some(c) = SINK_STATS.get_ptr_mut(1) {
        unsafe { *c += (ctx.data_end() - ctx.data()) as u64 };
    }
    xdp_action::XDP_DROP
}

#[xdp]
pub fn generate(ctx: XdpContext) -> u32 {
    match try_generate(&ctx) {
        Ok(action) => action,
        Err(_) => xdp_action::XDP_ABORTED,
    }
}

#[inline(always)]
fn try_generate(ctx: &XdpContext) -> Result<u32, u32> {
    let conf = GEN_CONF.get(0).ok_or(0u32)?;
    let seq = GEN_SEQ.get_ptr_mut(0).ok_or(0u32)?;
    let flow = unsafe {
        *seq += 1;
        // Per-CPU sequences start together; spread them by CPU so cores send other flows.
        ((*seq).wrapping_add(aya_ebpf::helpers::bpf_get_smp_processor_id() as u64 * 7919)
            % conf.flows.max(1) as u64) as u32
    };
    if conf.addr_off > GEN_OFF_MAX || conf.port_off > GEN_OFF_MAX {
        return Err(0);
    }
    let a: *mut [u8; 2] = ptr_at(ctx, conf.addr_off as usize)?;
    let p: *mut [u8; 2] = ptr_at(ctx, conf.port_off as usize)?;
    unsafe {
        *a = (flow as u16).to_be_bytes();
        *p = (1024 + (flow >> 16) as u16).to_be_bytes();
    }
    Ok(GEN_PORTS.redirect(0, 0).unwrap_or(xdp_action::XDP_DROP))
}
