//! Policy versions and their installation, as a sans-IO state machine: the orchestrator
//! keeps every version installed; an install goes first to the SMO master, which
//! validates it (compiles it as members do), then to every Active member to prepare
//! (compile and hold), and only once all have prepared is it committed everywhere; a
//! refusal or a silence aborts it and nobody switches. Rollback installs the previous
//! version the same way. A member that is not part of an install (joining, restarted) is
//! sent the current version to enforce at once, and counts as ready only when it does.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

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

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Only the SMO master has it, to validate.
    Validate { master: u32 },
    /// Every member of the install compiles it.
    Prepare,
    /// Every member enforces it now.
    Commit,
}

#[derive(Clone, Debug)]
struct Install {
    target: PolicyVersion,
    phase: Phase,
    members: BTreeSet<u32>,
    since: Instant,
}

/// How an install ended.
#[derive(Clone, Debug, PartialEq, Eq)]
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

#[derive(Clone, Debug, Default)]
pub struct PolicyStore {
    /// Installed versions, oldest first; the last is current (after rollbacks, the one
    /// rolled back to).
    pub history: Vec<PolicyVersion>,
    install: Option<Install>,
    /// Outcomes not yet collected, by version.
    outcomes: BTreeMap<u64, Outcome>,
}

impl PolicyStore {
    pub fn current(&self) -> Option<&PolicyVersion> {
        self.history.last()
    }

    pub fn installing(&self) -> Option<(u64, &Phase)> {
        self.install.as_ref().map(|i| (i.target.version, &i.phase))
    }

    /// Starts installing `target` on `members` (the group's Active members, lowest first:
    /// the first is the SMO master).
    pub fn install(
        &mut self,
        target: PolicyVersion,
        members: &[u32],
        rollback: bool,
        now: Instant,
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
        let master = *members.first().ok_or(InstallError::NoMember)?;
        self.install = Some(Install {
            target,
            phase: Phase::Validate { master },
            members: members.iter().copied().collect(),
            since: now,
        });
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
                Phase::Prepare => true,
                Phase::Commit => true,
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

    /// A member may count as ready only when it enforces the current version.
    pub fn member_ready(&self, report: &PolicyReport) -> bool {
        self.current().is_none_or(|c| report.enforced == c.version)
            || self
                .install
                .as_ref()
                .is_some_and(|i| report.enforced == i.target.version)
    }

    /// Advances the install with the members' latest reports; `alive` are the members
    /// still Active.
    pub fn step(&mut self, now: Instant, reports: &BTreeMap<u32, PolicyReport>, alive: &[u32]) {
        let Some(i) = self.install.as_mut() else {
            return;
        };
        let v = i.target.version;
        // A member that died leaves the install; the others go on without it.
        i.members.retain(|m| alive.contains(m));
        let failed = i.members.iter().find_map(|m| {
            reports
                .get(m)
                .and_then(|r| r.error.as_ref())
                .filter(|(ev, _)| *ev == v)
                .map(|(_, why)| (*m, why.clone()))
        });
        if let Some((m, why)) = failed {
            return self.abort(format!("member {m} refused version {v}: {why}"));
        }
        let has = |m: &u32, f: &dyn Fn(&PolicyReport) -> bool| reports.get(m).is_some_and(f);
        let prepared = |r: &PolicyReport| r.prepared == Some(v) || r.enforced == v;
        let done = match i.phase {
            Phase::Validate { master } => {
                if !i.members.contains(&master) {
                    return self.abort(format!("the SMO master {master} left during validation"));
                }
                has(&master, &prepared)
            }
            Phase::Prepare => i.members.iter().all(|m| has(m, &prepared)),
            Phase::Commit => i.members.iter().all(|m| has(m, &|r| r.enforced == v)),
        };
        if i.members.is_empty() {
            return self.abort("no member left".into());
        }
        if !done {
            if now.duration_since(i.since) > PHASE_MAX {
                let phase = format!("{:?}", i.phase);
                let missing: Vec<u32> = i.members.iter().copied().collect();
                return self.abort(format!(
                    "version {v}: {phase} did not complete within {PHASE_MAX:?} (members {missing:?})"
                ));
            }
            return;
        }
        i.since = now;
        i.phase = match i.phase {
            Phase::Validate { .. } => Phase::Prepare,
            Phase::Prepare => Phase::Commit,
            Phase::Commit => {
                let members = i.members.iter().copied().collect();
                let target = i.target.clone();
                self.install = None;
                // A rollback makes the earlier version current again.
                self.history.retain(|h| h.version < target.version);
                self.history.push(target);
                self.outcomes.insert(
                    v,
                    Outcome::Installed {
                        version: v,
                        members,
                    },
                );
                return;
            }
        };
    }

    fn abort(&mut self, why: String) {
        if let Some(i) = self.install.take() {
            tracing::warn!(version = i.target.version, "policy install aborted: {why}");
            self.outcomes
                .insert(i.target.version, Outcome::Aborted(why));
        }
    }

    /// How the install of `version` ended, once it has.
    pub fn take_outcome(&mut self, version: u64) -> Option<Outcome> {
        self.outcomes.remove(&version)
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

    /// Members follow commands as a member does (prepare, then enforce on commit).
    fn member_follows(s: &PolicyStore, id: u32, r: &mut PolicyReport) {
        if let Some(c) = s.command(id, r) {
            if c.commit {
                r.enforced = c.version;
                r.prepared = None;
            } else {
                r.prepared = Some(c.version);
            }
        }
    }

    #[test]
    fn install_goes_master_first_then_everywhere_then_commit() {
        let t = Instant::now();
        let mut s = PolicyStore::default();
        let mut reports: BTreeMap<u32, PolicyReport> = (1..=3).map(|m| (m, rep(1, None))).collect();
        s.install(v(2), &[1, 2, 3], false, t).unwrap();
        // Only the master is offered it at first, to prepare.
        assert_eq!(s.command(2, &reports[&2]), None);
        assert!(!s.command(1, &reports[&1]).unwrap().commit);
        let mut steps = 0;
        while s.installing().is_some() {
            for m in 1..=3 {
                let mut r = reports[&m].clone();
                member_follows(&s, m, &mut r);
                reports.insert(m, r);
            }
            // Nobody enforces 2 before everybody has prepared it.
            if matches!(s.installing(), Some((_, Phase::Prepare)))
                || matches!(s.installing(), Some((_, Phase::Validate { .. })))
            {
                assert!(reports.values().all(|r| r.enforced == 1));
            }
            s.step(t, &reports, &[1, 2, 3]);
            steps += 1;
            assert!(steps < 10);
        }
        assert_eq!(
            s.take_outcome(2),
            Some(Outcome::Installed {
                version: 2,
                members: vec![1, 2, 3]
            })
        );
        assert!(reports.values().all(|r| r.enforced == 2));
        assert_eq!(s.current().unwrap().version, 2);
    }

    #[test]
    fn a_refusal_or_a_silence_aborts_and_nobody_switches() {
        let t = Instant::now();
        let mut s = PolicyStore::default();
        s.history.push(v(1));
        let mut reports: BTreeMap<u32, PolicyReport> = (1..=3).map(|m| (m, rep(1, None))).collect();
        s.install(v(2), &[1, 2, 3], false, t).unwrap();
        reports.get_mut(&1).unwrap().prepared = Some(2);
        s.step(t, &reports, &[1, 2, 3]);
        assert_eq!(s.installing().map(|i| i.1.clone()), Some(Phase::Prepare));
        reports.get_mut(&3).unwrap().error = Some((2, "rule 1: bad".into()));
        s.step(t, &reports, &[1, 2, 3]);
        assert!(matches!(s.take_outcome(2), Some(Outcome::Aborted(w)) if w.contains("member 3")));
        assert_eq!(s.current().unwrap().version, 1, "nothing changed");
        // The members are told to enforce the current version, never the aborted one.
        assert_eq!(s.command(1, &rep(1, Some(2))), None);
        // Silence: member 2 never prepares.
        reports.get_mut(&3).unwrap().error = None;
        s.install(v(3), &[1, 2, 3], false, t).unwrap();
        reports.get_mut(&1).unwrap().prepared = Some(3);
        s.step(t, &reports, &[1, 2, 3]);
        s.step(
            t + PHASE_MAX + Duration::from_millis(1),
            &reports,
            &[1, 2, 3],
        );
        assert!(
            matches!(s.take_outcome(3), Some(Outcome::Aborted(w)) if w.contains("did not complete"))
        );
        assert_eq!(s.current().unwrap().version, 1);
    }

    #[test]
    fn versions_must_grow_rollback_goes_back_and_joiners_get_the_current_one() {
        let t = Instant::now();
        let mut s = PolicyStore::default();
        assert_eq!(s.previous(), Err(InstallError::NothingToRollBack));
        s.history.extend([v(1), v(2)]);
        assert_eq!(
            s.install(v(2), &[1], false, t),
            Err(InstallError::NotNewer {
                version: 2,
                current: 2
            })
        );
        let prev = s.previous().unwrap();
        s.install(prev, &[1], true, t).unwrap();
        assert_eq!(s.install(v(5), &[1], false, t), Err(InstallError::Busy(1)));
        let mut r: BTreeMap<u32, PolicyReport> = [(1, rep(2, None))].into();
        for _ in 0..4 {
            let mut x = r[&1].clone();
            member_follows(&s, 1, &mut x);
            r.insert(1, x);
            s.step(t, &r, &[1]);
        }
        assert_eq!(s.current().unwrap().version, 1);
        assert_eq!(
            s.history.len(),
            1,
            "the rolled-back version is gone from the history"
        );
        // A member that joins with another version is told to enforce the current one, and
        // is not ready until it does.
        let joiner = rep(7, None);
        assert!(!s.member_ready(&joiner));
        let c = s.command(9, &joiner).unwrap();
        assert!(c.commit && c.version == 1);
        assert!(s.member_ready(&rep(1, None)));
    }
}
