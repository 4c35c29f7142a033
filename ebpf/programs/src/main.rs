//! Baton's XDP programs: `distribute` (orchestrator uplinks), `egress` (orchestrator
//! downlinks) and `steer` (a member's data port → AF_XDP sockets).
#![no_std]
#![no_main]

mod bench;
mod distribute;
mod egress;
mod fault;
mod maps;
mod parse;
mod steer;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
