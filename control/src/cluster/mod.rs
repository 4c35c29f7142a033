//! The cluster core: every orchestrator decision, as one deterministic sans-IO state
//! machine (in the manner of quinn-proto's `Connection`). Heartbeats, ticks and operator
//! requests go in with the time (`now` is an input, never read here); what to program,
//! answer, persist and reply comes out.
//!
//! Two halves. What must be the same everywhere is the [`ClusterState`], changed only by
//! logged [`Command`]s (snapshot + replay of the tail = the live state). What this
//! orchestrator has merely observed — the members' latest reports, when each was heard,
//! the data-path watches, phase timers — is kept beside it and never logged: decisions
//! taken from it are logged as commands.

pub mod command;
pub mod state;
pub mod store;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use baton_common::Bucket;

pub use self::{
    command::{Command, Entry, LOG_FORMAT},
    state::{ClusterState, Effect, GroupState, MemberRecord, Staging},
};
use crate::{
    ccp::{Heartbeat, HeartbeatAck, MemberReport, SyncPeer, TableUpdate},
    config::{Config, ConfigError, MemberConfig},
    membership::MemberState,
    partition::PathWatch,
    policy_dist::{Outcome, Phase, PolicyVersion, PHASE_MAX},
    tasks,
};

/// How the core decides; from the orchestrator's configuration.
#[derive(Clone, Debug)]
pub struct Options {
    pub heartbeat_interval: Duration,
    pub dead_count: u32,
    pub isolate_partitions: bool,
    /// How long a join's bulk sync (or a joiner's readiness) may take before the join is
    /// reported blocked and started again.
    pub join_sync_max: Duration,
    /// The old rule, kept only as the negative control of the simulation: after
    /// `join_sync_max`, joiners take their buckets whether or not their sync completed.
    pub take_buckets_after_join_timeout: bool,
    /// Log entries kept after the snapshot before a new snapshot is taken.
    pub snapshot_every: usize,
}

impl Options {
    pub fn from_config(config: &Config) -> Self {
        let o = &config.orchestrator;
        Self {
            heartbeat_interval: Duration::from_millis(o.heartbeat_interval_ms),
            dead_count: o.dead_count,
            isolate_partitions: o.isolate_partitions,
            join_sync_max: JOIN_SYNC_MAX,
            take_buckets_after_join_timeout: false,
            snapshot_every: 256,
        }
    }

    fn dead_after(&self) -> Duration {
        self.heartbeat_interval * self.dead_count
    }
}

/// Longest a join waits for its bulk sync before it is reported blocked and retried.
pub const JOIN_SYNC_MAX: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub enum Input {
    /// A member's heartbeat, with the orchestrator's own XDP counters of frames sent to
    /// the member and received from it (for partition detection).
    Heartbeat {
        hb: Box<Heartbeat>,
        to_member: u64,
        from_member: u64,
    },
    Tick,
    /// An operator's request; its answer comes back as [`Output::Reply`] with `id`
    /// (a policy install's only when it has ended).
    Request {
        id: u64,
        op: Op,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Add {
        member: u32,
        group: u32,
        site: u8,
        downlink: String,
    },
    Remove {
        member: u32,
    },
    Move {
        member: u32,
        group: u32,
    },
    Detach {
        member: u32,
    },
    Attach {
        member: u32,
    },
    Workers {
        member: u32,
        workers: u32,
    },
    PolicyInstall {
        group: u32,
        target: PolicyVersion,
    },
    PolicyRollback {
        group: u32,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// The member's state after the change.
    State(MemberState),
    Workers(u32),
    PolicyInstalled {
        group: u32,
        version: u64,
        members: Vec<u32>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalKind {
    NotFound,
    Conflict,
    BadRequest,
}

/// Why a request was refused; nothing changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub kind: RefusalKind,
    pub message: String,
}

impl Refusal {
    fn new(kind: RefusalKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// A command was decided and applied (persist it; a pair replicates it).
    Logged(Entry),
    /// Add or remove a member's port in the redirect map.
    Port { member: u32, enabled: bool },
    /// Program a group's bucket table.
    Table { group: u32, buckets: Vec<Bucket> },
    /// Detach `egress` from a removed member's downlink.
    DownlinkDetach { member: u32, iface: String },
    /// A moved member's downlink belongs to `group` now.
    DownlinkGroup { member: u32, group: u32 },
    /// The member registry changed: write the configuration back.
    ConfigChanged,
    /// Send this answer to the member that sent the heartbeat.
    Answer { member: u32, ack: HeartbeatAck },
    Reply {
        id: u64,
        result: Result<Reply, Refusal>,
    },
}

/// What this orchestrator has seen of a member (never logged).
#[derive(Clone, Debug)]
struct Seen {
    heard: Instant,
    /// The incarnation of the process last heard, and the group it runs for.
    boot: u64,
    group: u32,
    report: MemberReport,
    ready: bool,
    /// Heard at least once by this process (a restored member has only a restored time).
    reported: bool,
    path: Option<PathWatch>,
}

/// One member as the API shows it.
#[derive(Clone, Debug)]
pub struct MemberView<'a> {
    pub id: u32,
    pub group: u32,
    pub site: u8,
    pub state: MemberState,
    pub smo: bool,
    pub join_blocked: Option<String>,
    pub isolated: Option<String>,
    pub workers_asked: Option<u32>,
    /// Its latest report (None: not heard by this orchestrator process).
    pub report: Option<&'a MemberReport>,
    pub heard_ago: Option<Duration>,
}

pub struct Cluster {
    opts: Options,
    config: Config,
    state: ClusterState,
    /// The state at the snapshot, and the entries after it.
    snapshot: ClusterState,
    snapshot_index: u64,
    tail: Vec<Entry>,
    seen: BTreeMap<u32, Seen>,
    /// When each joining member was heard first (its join's deadline runs from then).
    waiting: BTreeMap<u32, Instant>,
    /// When each group's current staging was announced.
    staged: BTreeMap<u32, Instant>,
    /// When each group's install entered its phase.
    phase_since: BTreeMap<u32, Instant>,
    /// Policy requests waiting for their install to end: group → request ids.
    pending: BTreeMap<u32, Vec<u64>>,
    /// Whether a tick was handled yet (restored members count as heard at the first).
    ticked: bool,
}

/// A stored cluster: the snapshot, its index and the entries after it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Stored {
    pub format: u32,
    pub snapshot_index: u64,
    pub snapshot: ClusterState,
    pub tail: Vec<Entry>,
}

impl Cluster {
    /// A cluster from its configuration and, after a restart, what was stored. The
    /// configuration's groups and members are reconciled with the stored state through
    /// logged commands (an operator may have edited the file meanwhile); members the
    /// stored state knew Joining or Active count as heard just now. The outputs program
    /// the data path as the state says (ports, then tables).
    // What was stored is handed over: the caller has no use for it after.
    #[allow(clippy::needless_pass_by_value)]
    pub fn new(
        config: Config,
        opts: Options,
        stored: Option<Stored>,
        seed_policy: Option<PolicyVersion>,
        now: Instant,
    ) -> (Self, Vec<Output>) {
        let (snapshot, snapshot_index, tail) = match stored {
            Some(s) => (s.snapshot, s.snapshot_index, s.tail),
            None => (ClusterState::default(), 0, Vec::new()),
        };
        let state = ClusterState::replay(&snapshot, tail.iter().map(|e| &e.command));
        let mut c = Self {
            opts,
            config,
            state,
            snapshot,
            snapshot_index,
            tail,
            seen: BTreeMap::new(),
            waiting: BTreeMap::new(),
            staged: BTreeMap::new(),
            phase_since: BTreeMap::new(),
            pending: BTreeMap::new(),
            ticked: false,
        };
        for (id, r) in &c.state.members {
            if matches!(r.state, MemberState::Active | MemberState::Joining) {
                c.seen.insert(
                    *id,
                    Seen {
                        heard: now,
                        boot: 0,
                        group: 0,
                        report: MemberReport::default(),
                        ready: false,
                        reported: false,
                        path: None,
                    },
                );
            }
        }
        for g in c.state.groups.keys() {
            c.staged.insert(*g, now);
            c.phase_since.insert(*g, now);
        }
        let mut out = Vec::new();
        let config = c.config.clone();
        for g in &config.groups {
            let same = c
                .state
                .groups
                .get(&g.id)
                .is_some_and(|s| s.buckets == g.buckets && s.sync == g.sync);
            if !same {
                c.commit(
                    now,
                    Command::Group {
                        group: g.id,
                        buckets: g.buckets,
                        sync: g.sync,
                    },
                    &mut out,
                );
            }
            if let Some(p) = &seed_policy {
                if c.state.groups[&g.id].policy.history.is_empty() {
                    c.commit(
                        now,
                        Command::PolicySeed {
                            group: g.id,
                            target: p.clone(),
                        },
                        &mut out,
                    );
                }
            }
            for m in &g.members {
                match c.state.members.get(&m.id).map(|r| r.group) {
                    None => c.commit(
                        now,
                        Command::Add {
                            member: m.id,
                            group: g.id,
                            site: m.site,
                            downlink: m.downlink.clone(),
                        },
                        &mut out,
                    ),
                    Some(other) if other != g.id => c.commit(
                        now,
                        Command::Move {
                            member: m.id,
                            group: g.id,
                        },
                        &mut out,
                    ),
                    Some(_) => {}
                }
            }
        }
        let configured: Vec<u32> = config
            .groups
            .iter()
            .flat_map(|g| g.members.iter().map(|m| m.id))
            .collect();
        let gone: Vec<u32> = c
            .state
            .members
            .keys()
            .copied()
            .filter(|id| !configured.contains(id))
            .collect();
        for member in gone {
            c.commit(now, Command::Remove { member }, &mut out);
        }
        // Program everything as the state says, whatever the commands above did.
        let mut program = Vec::new();
        for (id, r) in &c.state.members {
            if r.state == MemberState::Active || c.state.is_staged(*id) {
                program.push(Output::Port {
                    member: *id,
                    enabled: true,
                });
            }
        }
        for (g, s) in &c.state.groups {
            program.push(Output::Table {
                group: *g,
                buckets: s.table.clone(),
            });
        }
        out.retain(|o| !matches!(o, Output::Port { .. } | Output::Table { .. }));
        out.extend(program);
        (c, out)
    }

    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn options(&self) -> &Options {
        &self.opts
    }

    /// What to store: the snapshot and the entries after it.
    pub fn stored(&self) -> Stored {
        Stored {
            format: LOG_FORMAT,
            snapshot_index: self.snapshot_index,
            snapshot: self.snapshot.clone(),
            tail: self.tail.clone(),
        }
    }

    /// The index of the last applied entry.
    pub fn applied_index(&self) -> u64 {
        self.snapshot_index + self.tail.len() as u64
    }

    /// The snapshot and the entries after it, to check that replay gives the live state.
    pub fn log(&self) -> (&ClusterState, &[Entry]) {
        (&self.snapshot, &self.tail)
    }

    pub fn handle(&mut self, now: Instant, input: Input) -> Vec<Output> {
        let mut out = Vec::new();
        match input {
            Input::Heartbeat {
                hb,
                to_member,
                from_member,
            } => self.heartbeat(now, *hb, (to_member, from_member), &mut out),
            Input::Tick => self.tick(now, &mut out),
            Input::Request { id, op } => {
                if let Err(e) = self.request(now, id, op, &mut out) {
                    out.push(Output::Reply { id, result: Err(e) });
                }
            }
        }
        out
    }

    /// Whether `op` would be accepted now (the daemon checks before it touches a link).
    pub fn check(&self, op: &Op) -> Result<(), Refusal> {
        let known = |m: &u32| {
            self.state
                .members
                .contains_key(m)
                .then_some(())
                .ok_or_else(|| Refusal::new(RefusalKind::NotFound, format!("no member {m}")))
        };
        match op {
            Op::Add {
                member,
                group,
                site,
                downlink,
            } => {
                let mut next = self.config.clone();
                next.add_member(*member, *group, *site, downlink)
                    .map_err(|e| config_refusal(&e))?;
            }
            Op::Move { member, group } => {
                let mut next = self.config.clone();
                next.move_member(*member, *group)
                    .map_err(|e| config_refusal(&e))?;
            }
            Op::Remove { member } | Op::Detach { member } | Op::Attach { member } => {
                known(member)?;
            }
            Op::Workers { member, workers } => {
                known(member)?;
                let max = baton_dataplane::dispatch::WORKERS_MAX as u32;
                if !(1..=max).contains(workers) {
                    return Err(Refusal::new(
                        RefusalKind::BadRequest,
                        format!("workers must be 1..={max}, not {workers}"),
                    ));
                }
            }
            Op::PolicyInstall { group, target } => {
                let g = self.group(*group)?;
                g.policy
                    .check(target, &self.state.serving(*group), false)
                    .map_err(|e| Refusal::new(RefusalKind::Conflict, e.to_string()))?;
            }
            Op::PolicyRollback { group } => {
                let g = self.group(*group)?;
                let prev = g
                    .policy
                    .previous()
                    .map_err(|e| Refusal::new(RefusalKind::Conflict, e.to_string()))?;
                g.policy
                    .check(&prev, &self.state.serving(*group), true)
                    .map_err(|e| Refusal::new(RefusalKind::Conflict, e.to_string()))?;
            }
        }
        Ok(())
    }

    fn group(&self, group: u32) -> Result<&GroupState, Refusal> {
        self.state
            .groups
            .get(&group)
            .ok_or_else(|| Refusal::new(RefusalKind::NotFound, format!("no group {group}")))
    }

    fn request(
        &mut self,
        now: Instant,
        id: u64,
        op: Op,
        out: &mut Vec<Output>,
    ) -> Result<(), Refusal> {
        self.check(&op)?;
        let member_reply =
            |c: &Self, m: u32| Reply::State(c.state.state_of(m).unwrap_or(MemberState::Down));
        let reply = match op {
            Op::Add {
                member,
                group,
                site,
                downlink,
            } => {
                self.commit(
                    now,
                    Command::Add {
                        member,
                        group,
                        site,
                        downlink,
                    },
                    out,
                );
                member_reply(self, member)
            }
            Op::Remove { member } => {
                self.commit(now, Command::Remove { member }, out);
                Reply::State(MemberState::Down)
            }
            Op::Move { member, group } => {
                self.commit(now, Command::Move { member, group }, out);
                member_reply(self, member)
            }
            Op::Detach { member } => {
                self.commit(now, Command::Detach { member }, out);
                member_reply(self, member)
            }
            Op::Attach { member } => {
                self.commit(now, Command::Attach { member }, out);
                member_reply(self, member)
            }
            Op::Workers { member, workers } => {
                self.commit(now, Command::Workers { member, workers }, out);
                Reply::Workers(workers)
            }
            Op::PolicyInstall { group, target } => {
                self.begin_install(now, id, group, target, false, out);
                return Ok(());
            }
            Op::PolicyRollback { group } => {
                // A rollback keeps the version's own date: it is the same policy.
                let target = self
                    .group(group)?
                    .policy
                    .previous()
                    .map_err(|e| Refusal::new(RefusalKind::Conflict, e.to_string()))?;
                self.begin_install(now, id, group, target, true, out);
                return Ok(());
            }
        };
        out.push(Output::Reply {
            id,
            result: Ok(reply),
        });
        Ok(())
    }

    fn begin_install(
        &mut self,
        now: Instant,
        id: u64,
        group: u32,
        target: PolicyVersion,
        rollback: bool,
        out: &mut Vec<Output>,
    ) {
        let members = self.state.serving(group);
        self.pending.entry(group).or_default().push(id);
        self.phase_since.insert(group, now);
        self.commit(
            now,
            Command::PolicyBegin {
                group,
                target,
                members,
                rollback,
            },
            out,
        );
        // A master that already has it prepared moves the install on at once.
        self.step_policy(now, group, out);
    }

    /// Logs and applies one command, and turns its effects into outputs.
    fn commit(&mut self, _now: Instant, command: Command, out: &mut Vec<Output>) {
        let effects = self.state.apply(&command);
        let entry = Entry {
            index: self.applied_index() + 1,
            command,
        };
        self.tail.push(entry.clone());
        out.push(Output::Logged(entry));
        if self.tail.len() >= self.opts.snapshot_every.max(1) {
            self.snapshot = self.state.clone();
            self.snapshot_index += self.tail.len() as u64;
            self.tail.clear();
        }
        for fx in effects {
            match fx {
                Effect::Port { member, enabled } => out.push(Output::Port { member, enabled }),
                Effect::Table { group } => {
                    if let Some(g) = self.state.groups.get(&group) {
                        out.push(Output::Table {
                            group,
                            buckets: g.table.clone(),
                        });
                    }
                }
                Effect::Registry => {
                    self.mirror_registry();
                    out.push(Output::ConfigChanged);
                }
                Effect::DownlinkDetach { member, iface } => {
                    self.seen.remove(&member);
                    out.push(Output::DownlinkDetach { member, iface });
                }
                Effect::DownlinkGroup { member, group } => {
                    out.push(Output::DownlinkGroup { member, group });
                }
                Effect::PolicyEnded { group, outcome } => self.answer_pending(group, &outcome, out),
            }
        }
    }

    /// The configuration's member lists follow the registry (written back by the daemon).
    fn mirror_registry(&mut self) {
        for g in &mut self.config.groups {
            g.members = self
                .state
                .members
                .iter()
                .filter(|(_, r)| r.group == g.id)
                .map(|(id, r)| MemberConfig {
                    id: *id,
                    downlink: r.downlink.clone(),
                    site: r.site,
                })
                .collect();
        }
    }

    /// Answers the requests waiting on the group's install with how it ended.
    fn answer_pending(&mut self, group: u32, outcome: &Outcome, out: &mut Vec<Output>) {
        for id in self.pending.remove(&group).unwrap_or_default() {
            let result = match outcome {
                Outcome::Installed { version, members } => Ok(Reply::PolicyInstalled {
                    group,
                    version: *version,
                    members: members.clone(),
                }),
                Outcome::Aborted(why) => Err(Refusal::new(RefusalKind::Conflict, why.clone())),
            };
            out.push(Output::Reply { id, result });
        }
    }

    fn heartbeat(&mut self, now: Instant, hb: Heartbeat, xdp: (u64, u64), out: &mut Vec<Output>) {
        let id = hb.member;
        let Some(group) = self.state.members.get(&id).map(|r| r.group) else {
            return; // not a configured member: no answer
        };
        let seen = self.seen.entry(id).or_insert_with(|| Seen {
            heard: now,
            boot: hb.boot,
            group: hb.group,
            report: MemberReport::default(),
            ready: false,
            reported: false,
            path: None,
        });
        if hb.boot < seen.boot {
            return; // a late heartbeat of an earlier incarnation
        }
        // A member restarted since it was last heard lost its connections and the
        // records synced to it: whatever it was doing, it starts again from Down, its
        // buckets going to their backups (who hold its connections), and rejoins.
        let restarted = seen.reported && hb.boot > seen.boot;
        seen.boot = hb.boot;
        seen.group = hb.group;
        seen.heard = now;
        seen.report = hb.report;
        seen.ready = hb.ready;
        seen.reported = true;
        if restarted
            && matches!(
                self.state.state_of(id),
                Some(MemberState::Active | MemberState::Joining)
            )
        {
            self.commit(now, Command::Lost { member: id }, out);
        }
        if self.state.state_of(id) == Some(MemberState::Down) {
            self.waiting.insert(id, now);
            self.commit(now, Command::Heard { member: id }, out);
        }
        if self.state.state_of(id) == Some(MemberState::Joining)
            && !self.state.is_staged(id)
            && self.join_wait(id).is_none()
        {
            let sync = self.state.groups.get(&group).is_some_and(|g| g.sync);
            if sync && !self.state.serving(group).is_empty() {
                self.staged.insert(group, now);
                self.commit(now, Command::StartJoin { member: id }, out);
            } else if self.no_install(group) {
                self.commit(
                    now,
                    Command::Activate {
                        group,
                        members: vec![id],
                    },
                    out,
                );
            }
        }
        self.watch_path(now, id, xdp, out);
        self.finish_joins(group, out, now);
        self.step_policy(now, group, out);
        if let Some(ack) = self.answer(id, hb.seq) {
            out.push(Output::Answer { member: id, ack });
        }
    }

    fn no_install(&self, group: u32) -> bool {
        self.state
            .groups
            .get(&group)
            .is_none_or(|g| g.policy.install.is_none())
    }

    /// Why a joining member cannot take buckets yet (None: it can).
    fn join_wait(&self, id: u32) -> Option<String> {
        let r = self.state.members.get(&id)?;
        let Some(seen) = self.seen.get(&id).filter(|s| s.reported) else {
            return Some("not heard since the orchestrator started".into());
        };
        if seen.group != 0 && seen.group != r.group {
            // Moved: this process has the other group's settings and restarts.
            return Some(format!(
                "its process runs for group {}, not {} (it restarts)",
                seen.group, r.group
            ));
        }
        if !seen.ready {
            return Some("its data path is not ready".into());
        }
        let g = self.state.groups.get(&r.group)?;
        if !g.policy.member_ready(&seen.report.policy) {
            return Some(format!(
                "it enforces policy version {}, not the current {}",
                seen.report.policy.enforced,
                g.policy.current().map_or(0, |c| c.version)
            ));
        }
        None
    }

    /// Joiners take their buckets once every serving member of the group reports the
    /// staged version's bulk sync acknowledged, every joiner is still ready, and no policy
    /// install is under way (whose members would not include them).
    fn finish_joins(&mut self, group: u32, out: &mut Vec<Output>, now: Instant) {
        let Some(st) = self
            .state
            .groups
            .get(&group)
            .and_then(|g| g.staging.as_ref())
        else {
            return;
        };
        if !self.no_install(group) || st.joiners.iter().any(|j| self.join_wait(*j).is_some()) {
            return;
        }
        if self.unsynced(group, st.version).is_empty() {
            let members = st.joiners.iter().copied().collect();
            self.commit(now, Command::Activate { group, members }, out);
        }
    }

    /// Serving members of the group that have not acknowledged the bulk sync of `version`.
    fn unsynced(&self, group: u32, version: u64) -> Vec<u32> {
        self.state
            .serving(group)
            .into_iter()
            .filter(|m| {
                self.seen
                    .get(m)
                    .and_then(|s| s.report.sync.as_ref())
                    .is_none_or(|r| r.synced_version < version)
            })
            .collect()
    }

    fn tick(&mut self, now: Instant, out: &mut Vec<Output>) {
        if !self.ticked {
            // A restarted orchestrator counts the members it knew as heard when it is
            // ready to hear them, not when it read its state (loading the programs may
            // take longer than the dead interval on a busy machine).
            self.ticked = true;
            for s in self.seen.values_mut().filter(|s| !s.reported) {
                s.heard = now;
            }
        }
        let dead_after = self.opts.dead_after();
        let silent: Vec<u32> = self
            .state
            .members
            .iter()
            .filter(|(_, r)| matches!(r.state, MemberState::Active | MemberState::Joining))
            .filter(|(id, _)| {
                self.seen
                    .get(id)
                    .is_none_or(|s| now.duration_since(s.heard) > dead_after)
            })
            .map(|(id, _)| *id)
            .collect();
        for member in silent {
            self.waiting.remove(&member);
            self.commit(now, Command::Lost { member }, out);
        }
        let groups: Vec<u32> = self.state.groups.keys().copied().collect();
        for group in groups {
            self.finish_joins(group, out, now);
            self.join_timeout(now, group, out);
            self.step_policy(now, group, out);
        }
    }

    /// A join whose bulk sync has not completed within `join_sync_max`: reported blocked
    /// (nothing changes hands) and started again under a new version.
    fn join_timeout(&mut self, now: Instant, group: u32, out: &mut Vec<Output>) {
        let Some(st) = self
            .state
            .groups
            .get(&group)
            .and_then(|g| g.staging.as_ref())
        else {
            return;
        };
        let since = *self.staged.entry(group).or_insert(now);
        if now.duration_since(since) <= self.opts.join_sync_max {
            return;
        }
        self.staged.insert(group, now);
        if self.opts.take_buckets_after_join_timeout {
            let members = st.joiners.iter().copied().collect();
            self.commit(now, Command::Activate { group, members }, out);
            return;
        }
        let mut why = Vec::new();
        let unsynced = self.unsynced(group, st.version);
        if !unsynced.is_empty() {
            why.push(format!(
                "bulk sync of table version {} not acknowledged by member(s) {unsynced:?} within {:?}",
                st.version, self.opts.join_sync_max
            ));
        }
        for j in &st.joiners {
            if let Some(w) = self.join_wait(*j) {
                why.push(format!("member {j}: {w}"));
            }
        }
        if !self.no_install(group) {
            why.push("a policy install is under way".into());
        }
        let reason = if why.is_empty() {
            "the join did not complete in time".into()
        } else {
            why.join("; ")
        };
        self.commit(now, Command::JoinBlocked { group, reason }, out);
    }

    /// Isolates an Active member whose heartbeats arrive but whose data path does not
    /// work (compares the orchestrator's XDP counters with the member's own).
    fn watch_path(&mut self, now: Instant, id: u32, xdp: (u64, u64), out: &mut Vec<Output>) {
        let active = self.state.state_of(id) == Some(MemberState::Active);
        let dead = self.opts.dead_after();
        let Some(seen) = self.seen.get_mut(&id) else {
            return;
        };
        if !self.opts.isolate_partitions || !active {
            seen.path = None;
            return;
        }
        let (rx, tx) = (seen.report.rx_packets, seen.report.tx_packets);
        let w = seen
            .path
            .get_or_insert_with(|| PathWatch::new(now, xdp.0, xdp.1, rx, tx));
        if let Some(why) = w.observe(now, xdp, (rx, tx), dead) {
            seen.path = None;
            self.commit(
                now,
                Command::Isolate {
                    member: id,
                    reason: why.to_string(),
                },
                out,
            );
        }
    }

    /// Advances the group's policy install with the members' latest reports.
    fn step_policy(&mut self, now: Instant, group: u32, out: &mut Vec<Output>) {
        let Some(i) = self
            .state
            .groups
            .get(&group)
            .and_then(|g| g.policy.install.clone())
        else {
            return;
        };
        let v = i.target.version;
        // A member that stopped serving leaves the install; the others go on without it.
        let serving = self.state.serving(group);
        let live: Vec<u32> = i
            .members
            .iter()
            .copied()
            .filter(|m| serving.contains(m))
            .collect();
        let report = |m: &u32| self.seen.get(m).map(|s| &s.report.policy);
        let end = |c: &mut Self, outcome: Outcome, out: &mut Vec<Output>| {
            c.commit(now, Command::PolicyEnd { group, outcome }, out);
        };
        if let Some((m, why)) = live.iter().find_map(|m| {
            report(m)
                .and_then(|r| r.error.as_ref())
                .filter(|(ev, _)| *ev == v)
                .map(|(_, why)| (*m, why.clone()))
        }) {
            return end(
                self,
                Outcome::Aborted(format!("member {m} refused version {v}: {why}")),
                out,
            );
        }
        if live.is_empty() {
            return end(self, Outcome::Aborted("no member left".into()), out);
        }
        let prepared =
            |m: &u32| report(m).is_some_and(|r| r.prepared == Some(v) || r.enforced == v);
        let done = match i.phase {
            Phase::Validate { master } => {
                if !live.contains(&master) {
                    return end(
                        self,
                        Outcome::Aborted(format!("the SMO master {master} left during validation")),
                        out,
                    );
                }
                prepared(&master)
            }
            Phase::Prepare => live.iter().all(prepared),
            Phase::Commit => live
                .iter()
                .all(|m| report(m).is_some_and(|r| r.enforced == v)),
        };
        let since = *self.phase_since.entry(group).or_insert(now);
        if !done {
            if now.duration_since(since) > PHASE_MAX {
                let missing: Vec<u32> = live
                    .iter()
                    .copied()
                    .filter(|m| match i.phase {
                        Phase::Validate { master } => *m == master && !prepared(m),
                        Phase::Prepare => !prepared(m),
                        Phase::Commit => report(m).is_none_or(|r| r.enforced != v),
                    })
                    .collect();
                return end(
                    self,
                    Outcome::Aborted(format!(
                        "version {v}: {:?} did not complete within {PHASE_MAX:?} (members {missing:?})",
                        i.phase
                    )),
                    out,
                );
            }
            return;
        }
        self.phase_since.insert(group, now);
        let next = match i.phase {
            Phase::Validate { .. } => Phase::Prepare,
            Phase::Prepare => Phase::Commit,
            Phase::Commit => {
                return end(
                    self,
                    Outcome::Installed {
                        version: v,
                        members: live,
                    },
                    out,
                )
            }
        };
        self.commit(now, Command::PolicyPhase { group, phase: next }, out);
        // The next phase may be done already (a master that validated has prepared).
        self.step_policy(now, group, out);
    }

    /// The answer to member `id`'s heartbeat `seq`: its state, the SMO master, the worker
    /// count asked, the table when its copy is out of date, and a policy to follow.
    pub fn answer(&self, id: u32, seq: u64) -> Option<HeartbeatAck> {
        let r = self.state.members.get(&id)?;
        let g = self.state.groups.get(&r.group)?;
        let report = self.seen.get(&id).map(|s| &s.report);
        Some(HeartbeatAck {
            member: id,
            seq,
            state: r.state,
            smo: self.state.smo(r.group),
            workers: r.workers,
            table: self.table_update(id),
            policy: report.and_then(|rep| g.policy.command(id, &rep.policy)),
            group: r.group,
        })
    }

    /// The group's bucket table, joins and sync peers for a member whose copy is out of
    /// date (groups with sync only).
    fn table_update(&self, member: u32) -> Option<TableUpdate> {
        let r = self.state.members.get(&member)?;
        let g = self.state.groups.get(&r.group)?;
        if !g.sync {
            return None;
        }
        let have = self
            .seen
            .get(&member)?
            .report
            .sync
            .as_ref()
            .map_or(0, |s| s.table_version);
        if have == self.state.table_version {
            return None;
        }
        let peers = self
            .state
            .members
            .iter()
            .filter(|(id, m)| {
                m.group == r.group && (m.state == MemberState::Active || self.state.is_staged(**id))
            })
            .filter_map(|(id, _)| {
                let mac = self.seen.get(id)?.report.sync_mac.clone()?;
                Some(SyncPeer { id: *id, mac })
            })
            .collect();
        Some(TableUpdate::new(
            self.state.table_version,
            &g.table,
            g.staging.as_ref().map(|s| s.extra.as_slice()),
            peers,
        ))
    }

    /// Member `id` as the API shows it.
    pub fn member(&self, id: u32, now: Instant) -> Option<MemberView<'_>> {
        let r = self.state.members.get(&id)?;
        let seen = self.seen.get(&id).filter(|s| s.reported);
        Some(MemberView {
            id,
            group: r.group,
            site: r.site,
            state: r.state,
            smo: self.state.smo(r.group) == Some(id),
            join_blocked: self.join_blocked(id, now),
            isolated: r.isolated.clone(),
            workers_asked: r.workers,
            report: seen.map(|s| &s.report),
            heard_ago: seen.map(|s| now.duration_since(s.heard)),
        })
    }

    /// Why a joining member's join has not completed within `join_sync_max` (None while
    /// it is on time, or not joining).
    pub fn join_blocked(&self, id: u32, now: Instant) -> Option<String> {
        let r = self.state.members.get(&id)?;
        if r.state != MemberState::Joining {
            return None;
        }
        if self.state.is_staged(id) {
            return self
                .state
                .groups
                .get(&r.group)?
                .staging
                .as_ref()?
                .blocked
                .clone();
        }
        let since = self.waiting.get(&id)?;
        if now.duration_since(*since) <= self.opts.join_sync_max {
            return None;
        }
        self.join_wait(id)
            .or_else(|| (!self.no_install(r.group)).then(|| "a policy install is under way".into()))
    }

    /// Who runs which task: what the election assigns and what each member reports.
    pub fn tasks(&self) -> tasks::TaskStat {
        let groups = self
            .config
            .groups
            .iter()
            .map(|g| {
                let smo = self.state.smo(g.id);
                tasks::GroupTasks {
                    id: g.id,
                    smo,
                    members: self
                        .state
                        .members
                        .iter()
                        .filter(|(_, r)| r.group == g.id)
                        .map(|(id, r)| tasks::MemberTasks {
                            id: *id,
                            state: r.state,
                            assigned: tasks::tasks_for(*id, r.state, smo),
                            running: self
                                .seen
                                .get(id)
                                .filter(|_| r.state != MemberState::Down)
                                .map(|s| s.report.tasks.clone())
                                .unwrap_or_default(),
                        })
                        .collect(),
                }
            })
            .collect();
        tasks::TaskStat { groups }
    }
}

fn config_refusal(e: &ConfigError) -> Refusal {
    let m = e.to_string();
    let kind = if m.contains("no member") || m.contains("no group") {
        RefusalKind::NotFound
    } else if m.contains("already") {
        RefusalKind::Conflict
    } else {
        RefusalKind::BadRequest
    };
    Refusal::new(kind, m)
}

#[cfg(test)]
mod tests;
