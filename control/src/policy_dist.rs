//! Policy versions and their installation (the data and its rules; the cluster core decides
//! when a phase is done and logs each step): the orchestrator
//! keeps every version installed; an install goes first to the SMO master, which
//! validates it (compiles it as members do), then to every Active member to prepare
//! (compile and hold), and only once all have prepared is it committed everywhere; a
//! refusal or a silence aborts it and nobody switches. Rollback installs the previous
//! version the same way. A member that is not part of an install (joining, restarted) is
//! sent the current version to enforce at once, and counts as ready only when it does.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One policy version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyVersion {
    pub version: u64,
    pub text: String,
    /// When it was first installed (seconds since the Unix epoch).
    pub installed_at: u64,
}

/// What a member is asked to do with a policy (in its heartbeat answer).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyCommand {
    pub version: u64,
    pub text: String,
    pub installed_at: u64,
    /// false: compile and hold it (prepare); true: enforce it now.
    pub commit: bool,
}

/// What a member says about policies (in its heartbeat).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyReport {
    /// The version it enforces.
    pub enforced: u64,
    /// A version compiled and held, ready to commit.
    pub prepared: Option<u64>,
    /// A version it could not compile, and why.
    pub error: Option<(u64, String)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Only the SMO master has it, to validate.
    Validate { master: u32 },
    /// Every member of the install compiles it.
    Prepare,
    /// Every member enforces it now.
    Commit,
}

/// An install under way: part of the cluster's replicated state (its timers are not).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Install {
    pub target: PolicyVersion,
    pub phase: Phase,
    /// The group's serving members when it began, lowest (the SMO master) first.
    pub members: Vec<u32>,
    pub rollback: bool,
}

/// How an install ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Installed { version: u64, members: Vec<u32> },
    Aborted(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InstallError {
    Busy(u64),
    NotNewer { version: u64, current: u64 },
    NothingToRollBack,
    NoMember,
}

impl std::fmt::Display for InstallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Busy(v) => write!(f, "version {v} is being installed: try again when it is done"),
            Self::NotNewer { version, current } => write!(
                f,
                "version {version} is not newer than the installed version {current} (raise `version` in the file)"
            ),
            Self::NothingToRollBack => write!(f, "there is no earlier version to roll back to"),
            Self::NoMember => write!(f, "no Active member to install the policy on"),
        }
    }
}

/// Longest each phase may take before the install is aborted.
pub const PHASE_MAX: Duration = Duration::from_secs(5);

/// A group's policies: every version installed and the install under way. Changed only by
/// the cluster core's commands; the decisions (when a phase is done, when it timed out)
/// are the core's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyState {
    /// Installed versions, oldest first; the last is current (after rollbacks, the one
    /// rolled back to).
    pub history: Vec<PolicyVersion>,
    pub install: Option<Install>,
}

impl PolicyState {
    pub fn current(&self) -> Option<&PolicyVersion> {
        self.history.last()
    }

    pub fn installing(&self) -> Option<(u64, &Phase)> {
        self.install.as_ref().map(|i| (i.target.version, &i.phase))
    }

    /// Whether `target` may be installed now on `members` (the group's serving members,
    /// lowest first: the first is the SMO master).
    pub fn check(
        &self,
        target: &PolicyVersion,
        members: &[u32],
        rollback: bool,
    ) -> Result<(), InstallError> {
        if let Some(i) = &self.install {
            return Err(InstallError::Busy(i.target.version));
        }
        let current = self.current().map_or(0, |c| c.version);
        if !rollback && target.version <= current {
            return Err(InstallError::NotNewer {
                version: target.version,
                current,
            });
        }
        if members.is_empty() {
            return Err(InstallError::NoMember);
        }
        Ok(())
    }

    /// The version before the current one, to roll back to.
    pub fn previous(&self) -> Result<PolicyVersion, InstallError> {
        let n = self.history.len();
        if n < 2 {
            return Err(InstallError::NothingToRollBack);
        }
        Ok(self.history[n - 2].clone())
    }

    /// What member `id` should be told, given its report (None: nothing).
    pub fn command(&self, id: u32, report: &PolicyReport) -> Option<PolicyCommand> {
        if let Some(i) = self.install.as_ref().filter(|i| i.members.contains(&id)) {
            let offer = match i.phase {
                Phase::Validate { master } => id == master,
                Phase::Prepare | Phase::Commit => true,
            };
            if offer {
                let commit = i.phase == Phase::Commit;
                if commit && report.enforced == i.target.version {
                    return None;
                }
                return Some(command(&i.target, commit));
            }
            return None;
        }
        // Outside an install: enforce the current version.
        let cur = self.current()?;
        (report.enforced != cur.version).then(|| command(cur, true))
    }

    /// A member may take buckets only when it enforces the current version.
    pub fn member_ready(&self, report: &PolicyReport) -> bool {
        self.current().is_none_or(|c| report.enforced == c.version)
    }

    /// Ends the install: an installed version becomes current (a rollback makes the
    /// earlier version current again and forgets the later ones).
    pub fn end(&mut self, outcome: &Outcome) {
        if let (Some(i), Outcome::Installed { .. }) = (self.install.as_ref(), outcome) {
            let target = i.target.clone();
            self.history.retain(|h| h.version < target.version);
            self.history.push(target);
        }
        self.install = None;
    }
}

fn command(p: &PolicyVersion, commit: bool) -> PolicyCommand {
    PolicyCommand {
        version: p.version,
        text: p.text.clone(),
        installed_at: p.installed_at,
        commit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(n: u64) -> PolicyVersion {
        PolicyVersion {
            version: n,
            text: format!("version = {n}\nrules = []\n"),
            installed_at: n,
        }
    }

    fn rep(enforced: u64, prepared: Option<u64>) -> PolicyReport {
        PolicyReport {
            enforced,
            prepared,
            error: None,
        }
    }

    #[test]
    fn the_master_validates_first_then_everyone_prepares_then_commits() {
        let mut s = PolicyState::default();
        s.history.push(v(1));
        s.install = Some(Install {
            target: v(2),
            phase: Phase::Validate { master: 1 },
            members: vec![1, 2, 3],
            rollback: false,
        });
        // Only the master is offered it at first, to prepare.
        assert_eq!(s.command(2, &rep(1, None)), None);
        assert!(!s.command(1, &rep(1, None)).unwrap().commit);
        s.install.as_mut().unwrap().phase = Phase::Prepare;
        assert!(!s.command(3, &rep(1, None)).unwrap().commit);
        s.install.as_mut().unwrap().phase = Phase::Commit;
        assert!(s.command(3, &rep(1, Some(2))).unwrap().commit);
        assert_eq!(s.command(3, &rep(2, None)), None, "already enforced");
        // A member outside the install is told to enforce the current version.
        let c = s.command(9, &rep(7, None)).unwrap();
        assert!(c.commit && c.version == 1);
        s.end(&Outcome::Installed {
            version: 2,
            members: vec![1, 2, 3],
        });
        assert_eq!(s.current().unwrap().version, 2);
        assert!(s.install.is_none());
    }

    #[test]
    fn versions_must_grow_rollback_goes_back_and_joiners_need_the_current_one() {
        let mut s = PolicyState::default();
        assert_eq!(s.previous(), Err(InstallError::NothingToRollBack));
        s.history.extend([v(1), v(2)]);
        assert_eq!(
            s.check(&v(2), &[1], false),
            Err(InstallError::NotNewer {
                version: 2,
                current: 2
            })
        );
        assert_eq!(s.check(&v(3), &[], false), Err(InstallError::NoMember));
        let prev = s.previous().unwrap();
        assert_eq!(s.check(&prev, &[1], true), Ok(()));
        s.install = Some(Install {
            target: prev,
            phase: Phase::Commit,
            members: vec![1],
            rollback: true,
        });
        assert_eq!(s.check(&v(5), &[1], false), Err(InstallError::Busy(1)));
        // An aborted install changes nothing.
        let mut aborted = s.clone();
        aborted.end(&Outcome::Aborted("no".into()));
        assert_eq!(aborted.current().unwrap().version, 2);
        s.end(&Outcome::Installed {
            version: 1,
            members: vec![1],
        });
        assert_eq!(s.current().unwrap().version, 1);
        assert_eq!(s.history.len(), 1, "the rolled-back version is gone");
        assert!(!s.member_ready(&rep(2, None)));
        assert!(s.member_ready(&rep(1, None)));
    }
}
