//! The daemons: thin I/O loops around the library's state machines.

pub mod member;
pub mod orchestrator;

/// Runs the calling thread at a real-time priority so heartbeats are not starved by the
/// data path on the same cores. Without the privilege it carries on at normal priority.
pub fn raise_priority(what: &str) {
    let param = libc::sched_param { sched_priority: 10 };
    // SAFETY: plain syscall on the calling thread (pid 0).
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &raw const param) };
    if rc != 0 {
        tracing::warn!(
            thread = what,
            "could not raise scheduling priority: {}",
            std::io::Error::last_os_error()
        );
    }
}
