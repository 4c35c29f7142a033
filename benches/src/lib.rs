//! Benchmarks that compare Baton with a minimal baseline on the same path in the same run,
//! and the report they write (`target/bench-report/`).

pub mod distributor;
pub mod generator;
pub mod hypersync;
pub mod membership;
pub mod micro;
pub mod nft;
pub mod plot;
pub mod report;
pub mod scaling;
pub mod sgm;

/// Lets the calling thread run on every core again. A round pins the generator's thread to
/// core 0, and threads spawned later inherit the mask: a lab benchmark's traffic threads
/// would all share one core.
pub fn unpin() {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET only writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in 0..libc::CPU_SETSIZE as usize {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

#[cfg(test)]
mod tests {
    fn cores() -> usize {
        // SAFETY: as in unpin.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set);
            libc::CPU_COUNT(&set) as usize
        }
    }

    #[test]
    fn unpin_undoes_a_pin() {
        std::thread::spawn(|| {
            let all = cores();
            core_affinity::set_for_current(core_affinity::CoreId { id: 0 });
            assert_eq!(cores(), 1);
            super::unpin();
            assert_eq!(cores(), all);
        })
        .join()
        .unwrap();
    }
}
