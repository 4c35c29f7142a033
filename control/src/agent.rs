//! The member agent: a member's side of CCP as a sans-IO state machine. It builds each
//! heartbeat from the member's counters and handles the orchestrator's answer: the state
//! and SMO master it is told (hence the tasks it runs), policies to prepare or enforce,
//! the bucket table its sync engine follows, the worker count asked, a move to another
//! group. `baton sgm` runs it around sockets and threads; the cluster simulation runs the
//! same code around simulated links.

use std::sync::Arc;

use baton_dataplane::{policy::Policy, sync::engine::View};

use crate::{
    ccp::{Heartbeat, HeartbeatAck, MemberReport},
    membership::MemberState,
    policy_dist::{PolicyCommand, PolicyReport},
    tasks,
};

/// What the member must do after an answer.
#[derive(Clone, Debug)]
pub enum AgentAction {
    /// Run this many workers.
    Workers(usize),
    /// Enforce this policy now (send it to the workers).
    Enforce(Arc<Policy>),
    /// The sync engine's new view of the bucket table.
    View(View),
    /// Moved to another group: stop, to be restarted with that group's settings.
    Moved { to: u32 },
    /// The orchestrator's state or SMO master for this member changed.
    Role {
        state: MemberState,
        smo: Option<u32>,
    },
}

pub struct Agent {
    id: u32,
    boot: u64,
    group: u32,
    seq: u64,
    workers: usize,
    state: MemberState,
    smo: Option<u32>,
    /// A policy compiled and held (prepared), one refused, and the version and install
    /// date of the one last sent to the workers.
    prepared: Option<Arc<Policy>>,
    error: Option<(u64, String)>,
    sent: Option<(u64, u64)>,
    /// Answers whose table could not be read.
    pub malformed_tables: u64,
}

impl Agent {
    /// `boot`: this process's incarnation, larger than any earlier one's.
    pub fn new(id: u32, boot: u64, group: u32, workers: usize) -> Self {
        Self {
            id,
            boot,
            group,
            seq: 0,
            workers,
            state: MemberState::Down,
            smo: None,
            prepared: None,
            error: None,
            sent: None,
            malformed_tables: 0,
        }
    }

    pub fn state(&self) -> MemberState {
        self.state
    }

    pub fn smo(&self) -> Option<u32> {
        self.smo
    }

    /// The next heartbeat. `report` holds the member's counters; the agent fills in what
    /// it owns: the tasks it runs, its policy versions and their date, and the copies it
    /// holds for others (from the sync engine's own count).
    pub fn heartbeat(&mut self, ready: bool, enforced: u64, mut report: MemberReport) -> Heartbeat {
        self.seq += 1;
        report.tasks = tasks::tasks_for(self.id, self.state, self.smo);
        report.policy_version = enforced;
        report.policy = PolicyReport {
            enforced,
            prepared: self.prepared.as_ref().map(|p| p.version),
            error: self.error.clone(),
        };
        report.policy_date = self
            .sent
            .filter(|(v, _)| *v == enforced)
            .map_or(0, |(_, d)| d);
        report.backup_connections = report.sync.as_ref().map_or(0, |s| s.backup_connections);
        Heartbeat {
            member: self.id,
            boot: self.boot,
            group: self.group,
            seq: self.seq,
            ready,
            report,
        }
    }

    /// Handles an answer; `enforced` is the policy version the workers enforce now.
    pub fn handle(&mut self, ack: &HeartbeatAck, enforced: u64) -> Vec<AgentAction> {
        let mut out = Vec::new();
        if ack.member != self.id {
            return out;
        }
        if let Some(n) = ack.workers.map(|n| n as usize) {
            if n != self.workers {
                self.workers = n;
                out.push(AgentAction::Workers(n));
            }
        }
        if ack.group != 0 && ack.group != self.group {
            out.push(AgentAction::Moved { to: ack.group });
        }
        if let Some(cmd) = &ack.policy {
            if let Some(p) = self.follow_policy(cmd, enforced) {
                out.push(AgentAction::Enforce(p));
            }
        }
        if let Some(t) = &ack.table {
            match t.view() {
                Some(v) => out.push(AgentAction::View(v)),
                None => self.malformed_tables += 1,
            }
        }
        if ack.state != self.state || ack.smo != self.smo {
            self.state = ack.state;
            self.smo = ack.smo;
            out.push(AgentAction::Role {
                state: ack.state,
                smo: ack.smo,
            });
        }
        out
    }

    /// The workers could not take the policy sent: offer it again at the next answer.
    pub fn enforce_failed(&mut self, version: u64) {
        if self.sent.is_some_and(|(v, _)| v == version) {
            self.sent = None;
        }
    }

    /// Compiles and holds a policy (prepare), or hands it to the workers (commit),
    /// compiling it first if it was not prepared.
    fn follow_policy(&mut self, cmd: &PolicyCommand, enforced: u64) -> Option<Arc<Policy>> {
        let compile = |text: &str| -> Result<Arc<Policy>, String> {
            let p = Policy::parse(text).map_err(|e| e.to_string())?;
            if p.version != cmd.version {
                return Err(format!(
                    "the text says version {}, not {}",
                    p.version, cmd.version
                ));
            }
            Ok(Arc::new(p))
        };
        if !cmd.commit {
            if self
                .prepared
                .as_ref()
                .is_some_and(|p| p.version == cmd.version)
                || self.error.as_ref().is_some_and(|(v, _)| *v == cmd.version)
            {
                return None;
            }
            match compile(&cmd.text) {
                Ok(p) => {
                    tracing::info!(version = cmd.version, "policy prepared");
                    self.prepared = Some(p);
                }
                Err(e) => {
                    tracing::error!(version = cmd.version, "policy refused: {e}");
                    self.error = Some((cmd.version, e));
                }
            }
            return None;
        }
        if enforced == cmd.version || self.sent.is_some_and(|(v, _)| v == cmd.version) {
            return None;
        }
        let policy = match self.prepared.take().filter(|p| p.version == cmd.version) {
            Some(p) => p,
            None => match compile(&cmd.text) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(version = cmd.version, "policy refused: {e}");
                    self.error = Some((cmd.version, e));
                    return None;
                }
            },
        };
        tracing::info!(version = cmd.version, "policy committed");
        self.sent = Some((cmd.version, cmd.installed_at));
        Some(policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(state: MemberState) -> HeartbeatAck {
        HeartbeatAck {
            member: 1,
            seq: 1,
            state,
            smo: Some(1),
            workers: None,
            table: None,
            policy: None,
            group: 1,
        }
    }

    fn cmd(version: u64, commit: bool) -> PolicyCommand {
        PolicyCommand {
            version,
            text: format!("version = {version}\nrules = []\n"),
            installed_at: 100 + version,
            commit,
        }
    }

    #[test]
    fn heartbeats_carry_the_real_backup_count_and_the_tasks_of_the_state_told() {
        let mut a = Agent::new(1, 1, 1, 1);
        let report = MemberReport {
            sync: Some(baton_dataplane::sync::engine::SyncReport {
                backup_connections: 42,
                ..Default::default()
            }),
            ..Default::default()
        };
        let hb = a.heartbeat(true, 1, report.clone());
        assert_eq!(hb.report.backup_connections, 42);
        assert!(hb.report.tasks.is_empty(), "Down runs nothing");
        let acts = a.handle(&ack(MemberState::Joining), 1);
        assert!(matches!(
            acts[..],
            [AgentAction::Role {
                state: MemberState::Joining,
                ..
            }]
        ));
        assert!(a.heartbeat(true, 1, report.clone()).report.tasks.is_empty());
        a.handle(&ack(MemberState::Active), 1);
        let hb = a.heartbeat(true, 1, report);
        assert_eq!(
            hb.report.tasks,
            tasks::tasks_for(1, MemberState::Active, Some(1))
        );
        assert_eq!(hb.seq, 3);
    }

    #[test]
    fn prepare_then_commit_and_refusals_are_reported() {
        let mut a = Agent::new(1, 1, 1, 1);
        let mut x = ack(MemberState::Active);
        x.policy = Some(cmd(2, false));
        assert!(a
            .handle(&x, 1)
            .iter()
            .all(|a| !matches!(a, AgentAction::Enforce(_))));
        assert_eq!(
            a.heartbeat(true, 1, MemberReport::default())
                .report
                .policy
                .prepared,
            Some(2)
        );
        x.policy = Some(cmd(2, true));
        let acts = a.handle(&x, 1);
        assert!(acts
            .iter()
            .any(|a| matches!(a, AgentAction::Enforce(p) if p.version == 2)));
        // Sent once only; its date is reported once enforced.
        assert!(a
            .handle(&x, 1)
            .iter()
            .all(|a| !matches!(a, AgentAction::Enforce(_))));
        assert_eq!(
            a.heartbeat(true, 2, MemberReport::default())
                .report
                .policy_date,
            102
        );
        let mut bad = cmd(3, false);
        bad.text = "version = 4\nrules = []\n".into();
        x.policy = Some(bad);
        a.handle(&x, 2);
        let hb = a.heartbeat(true, 2, MemberReport::default());
        assert!(hb.report.policy.error.unwrap().1.contains("not 3"));
        // A moved member is told to stop; an answer for another member is ignored.
        x.policy = None;
        x.group = 2;
        assert!(a
            .handle(&x, 2)
            .iter()
            .any(|a| matches!(a, AgentAction::Moved { to: 2 })));
        x.member = 9;
        assert!(a.handle(&x, 2).is_empty());
    }
}
