//! What each of Baton's eBPF objects needs once: a panic handler (the verifier refuses a
//! program that could reach it) and the license section. The production object and the
//! test programs' object both include this file.

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
