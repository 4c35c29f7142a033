//! Network namespaces for traffic: a thread moves into a lab namespace, and its sockets
//! live there for good.

use std::{fs::File, os::fd::AsRawFd, path::Path, thread::JoinHandle};

use super::TrafficError;

/// Moves the calling thread into network namespace `name` (as made by `ip netns add`).
/// Sockets it creates afterwards live there for good, whichever thread uses them.
pub fn enter_netns(name: &str) -> Result<(), TrafficError> {
    let f = File::open(Path::new("/run/netns").join(name))
        .map_err(|e| TrafficError::Netns(name.into(), e))?;
    // SAFETY: `f` is an open netns file for the call; setns(2) only changes this thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(TrafficError::Netns(
            name.into(),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Runs `f` on a new thread inside namespace `ns`.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T, TrafficError> + Send + 'static,
) -> JoinHandle<Result<T, TrafficError>> {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter_netns(&ns)?;
        f()
    })
}

pub fn join<T>(h: JoinHandle<Result<T, TrafficError>>) -> Result<T, TrafficError> {
    h.join().map_err(|_| TrafficError::Panicked)?
}
