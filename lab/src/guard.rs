//! The one lab guard: a lab is taken down when its guard drops, also when a test fails, a
//! benchmark errors or the demo panics, so no run leaves namespaces or daemons behind.

use crate::topology;

/// Takes the lab down when dropped.
#[derive(Debug, Default)]
pub struct LabGuard {
    report: bool,
}

impl LabGuard {
    /// Guards the lab about to be brought up (or already up).
    pub fn new() -> Self {
        Self::default()
    }

    /// Also says on stdout that the lab was torn down (the demo's last line).
    #[must_use]
    pub fn reporting(self) -> Self {
        Self { report: true }
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        match topology::down() {
            Ok(_) if self.report => println!("lab torn down"),
            Ok(_) => {}
            Err(e) => eprintln!("baton: lab down failed: {e}"),
        }
    }
}
