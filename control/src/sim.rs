//! Deterministic simulation of a cluster: the real [`Cluster`] and N members running the
//! real member [`Agent`], on a simulated clock, over management and sync links that lose,
//! delay and partition, all driven by one seed. Members are killed and restarted, links
//! cut, and operators detach, attach, change workers and install or roll back policies at
//! random. After every step the harness checks the invariants below; a failing seed is
//! reproduced by running it again.
//!
//! Invariants: at most one SMO per group and it is the lowest Active id; a member is in at
//! most one group; every bucket's active and backup are distinct serving members whenever
//! two exist; a failure moves only the dead member's buckets; the heartbeat answer, the
//! API and the task view agree on each member's state; replaying the log gives the live
//! state; no bucket reaches a joining member before its bulk sync is acknowledged.
//!
//! A member's HyperSync is modelled, not run: on a new table view, the active member of
//! each bucket a joiner will hold sends that bucket's records to the joiner over the sync
//! link and reports the version synced once the joiner acknowledged them all.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use baton_common::Bucket;
use baton_dataplane::sync::engine::{SyncReport, View};

use crate::{
    agent::{Agent, AgentAction},
    ccp::{Heartbeat, HeartbeatAck, MemberReport},
    cluster::{self, Cluster, ClusterState, Command, Input, Op, Output},
    config::{Config, GroupConfig, MemberConfig, OrchestratorConfig, Role, UplinkConfig},
    membership::MemberState,
    policy_dist::PolicyVersion,
    tasks,
};

/// What a run simulates.
#[derive(Clone, Debug)]
pub struct SimOptions {
    pub members: u32,
    /// Groups; members are spread over them round-robin, and operators move them between.
    pub groups: u32,
    pub buckets: u32,
    /// Simulated time, in steps of `step`.
    pub steps: u32,
    pub step: Duration,
    /// Chance (per mille) that a message is lost.
    pub loss_per_mille: u32,
    /// Longest one-way delay of a message.
    pub max_delay: Duration,
    /// The negative control: joiners take their buckets after a timeout, synced or not.
    pub take_buckets_after_join_timeout: bool,
}

impl Default for SimOptions {
    fn default() -> Self {
        Self {
            members: 5,
            groups: 2,
            buckets: 64,
            steps: 1_000,
            step: Duration::from_millis(10),
            loss_per_mille: 20,
            max_delay: Duration::from_millis(15),
            take_buckets_after_join_timeout: false,
        }
    }
}

/// An invariant broken at a step of a seed's run.
#[derive(Clone, Debug)]
pub struct Violation {
    pub seed: u64,
    pub step: u32,
    pub what: String,
    /// The last events before it.
    pub trace: Vec<String>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "seed {} step {}: {}", self.seed, self.step, self.what)?;
        for t in &self.trace {
            writeln!(f, "  {t}")?;
        }
        Ok(())
    }
}

/// What a run did, to show that it exercised something.
#[derive(Clone, Debug, Default)]
pub struct SimReport {
    pub entries: u64,
    /// Members added, removed or moved by operators.
    pub registry: u64,
    pub joins: u64,
    pub blocked: u64,
    pub failures: u64,
    pub policies: u64,
}

/// SplitMix64: a seeded generator, enough to drive the simulation reproducibly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// True with the given chance per million.
    fn chance(&mut self, per_million: u64) -> bool {
        self.below(1_000_000) < per_million
    }
}

enum SyncMsg {
    Bulk {
        from: u32,
        to: u32,
        version: u64,
        buckets: Vec<usize>,
    },
    Ack {
        from: u32,
        to: u32,
        version: u64,
    },
}

struct Bulk {
    version: u64,
    buckets: Vec<usize>,
    acked: bool,
    resend: Duration,
}

struct SimMember {
    /// The group its process was started for (a move restarts it).
    group: u32,
    agent: Agent,
    up: bool,
    ready_at: Duration,
    restart_at: Duration,
    enforced: u64,
    next_heartbeat: Duration,
    mgmt_cut_until: Duration,
    sync_cut_until: Duration,
    table_version: u64,
    synced_version: u64,
    /// Buckets whose records it holds from a bulk sync.
    holds: BTreeSet<usize>,
    /// Bulk syncs it owes to joiners, by joiner.
    bulks: BTreeMap<u32, Bulk>,
}

impl SimMember {
    fn new(id: u32, group: u32, ready_at: Duration) -> Self {
        Self {
            group,
            // Started later, a larger incarnation.
            agent: Agent::new(id, ready_at.as_nanos() as u64 + 1, group, 1),
            up: true,
            ready_at,
            restart_at: Duration::ZERO,
            enforced: 1,
            next_heartbeat: ready_at,
            mgmt_cut_until: Duration::ZERO,
            sync_cut_until: Duration::ZERO,
            table_version: 0,
            synced_version: 0,
            holds: BTreeSet::new(),
            bulks: BTreeMap::new(),
        }
    }
}

pub struct Sim {
    seed: u64,
    opts: SimOptions,
    rng: Rng,
    t0: Instant,
    now: Duration,
    step: u32,
    cluster: Cluster,
    members: BTreeMap<u32, SimMember>,
    to_orchestrator: Vec<(Duration, Heartbeat)>,
    to_members: Vec<(Duration, HeartbeatAck)>,
    sync: Vec<(Duration, SyncMsg)>,
    /// Tables as programmed.
    tables: BTreeMap<u32, Vec<Bucket>>,
    next_request: u64,
    next_policy: u64,
    report: SimReport,
    trace: Vec<String>,
    /// The log index at the last replay check (replay can only diverge when it grows).
    checked_index: u64,
}

fn policy(version: u64) -> PolicyVersion {
    PolicyVersion {
        version,
        text: format!("version = {version}\nrules = []\n"),
        installed_at: 1_700_000_000 + version,
    }
}

/// A configuration of `groups` groups and `members` members, spread round-robin.
pub fn config(members: u32, groups: u32, buckets: u32) -> Config {
    let uplink = |iface: String, role, prefix: String| UplinkConfig {
        iface,
        role,
        gateway_v4: None,
        gateway_v6: None,
        prefixes: vec![prefix.parse().expect("prefix")],
    };
    Config {
        orchestrator: toml::from_str::<OrchestratorConfig>("").expect("defaults"),
        groups: (1..=groups)
            .map(|g| GroupConfig {
                buckets,
                sync: true,
                sync_key_file: None,
                uplinks: vec![
                    uplink(
                        format!("up-ext{g}"),
                        Role::External,
                        format!("198.18.{g}.0/24"),
                    ),
                    uplink(
                        format!("up-int{g}"),
                        Role::Internal,
                        format!("198.19.{g}.0/24"),
                    ),
                ],
                members: (1..=members)
                    .filter(|id| home(*id, groups) == g)
                    .map(|id| MemberConfig {
                        id,
                        downlink: format!("dl-sgm{id}"),
                        site: 1,
                    })
                    .collect(),
                ..toml::from_str::<GroupConfig>(&format!("id = {g}\nuplinks = []"))
                    .expect("defaults")
            })
            .collect(),
    }
}

/// The group a member is configured in at the start.
fn home(member: u32, groups: u32) -> u32 {
    1 + (member - 1) % groups.max(1)
}

impl Sim {
    pub fn new(seed: u64, opts: SimOptions) -> Self {
        let t0 = Instant::now();
        let config = config(opts.members, opts.groups, opts.buckets);
        let mut copts = cluster::Options::from_config(&config);
        copts.join_sync_max = Duration::from_secs(2);
        copts.take_buckets_after_join_timeout = opts.take_buckets_after_join_timeout;
        copts.snapshot_every = 32;
        let (cluster, outputs) = Cluster::new(config, copts, None, Some(policy(1)), t0);
        let mut rng = Rng(seed);
        let members = (1..=opts.members)
            .map(|id| {
                let ready = Duration::from_millis(rng.below(300));
                (id, SimMember::new(id, home(id, opts.groups), ready))
            })
            .collect();
        let mut sim = Self {
            seed,
            opts,
            rng,
            t0,
            now: Duration::ZERO,
            step: 0,
            cluster,
            members,
            to_orchestrator: Vec::new(),
            to_members: Vec::new(),
            sync: Vec::new(),
            tables: BTreeMap::new(),
            next_request: 0,
            next_policy: 2,
            report: SimReport::default(),
            trace: Vec::new(),
            checked_index: 0,
        };
        // The first outputs program the tables.
        let _ = sim.outputs(outputs);
        sim
    }

    /// Runs every step; the first broken invariant ends it.
    pub fn run(mut self) -> Result<SimReport, Violation> {
        for _ in 0..self.opts.steps {
            self.step().map_err(|what| Violation {
                seed: self.seed,
                step: self.step,
                what,
                trace: self.trace.iter().rev().take(25).rev().cloned().collect(),
            })?;
        }
        self.report.entries = self.cluster.applied_index();
        Ok(self.report)
    }

    fn note(&mut self, s: &str) {
        if self.trace.len() > 200 {
            self.trace.drain(..100);
        }
        self.trace
            .push(format!("[{:>6} ms] {s}", self.now.as_millis()));
    }

    fn delay(&mut self) -> Duration {
        self.now + Duration::from_micros(self.rng.below(self.opts.max_delay.as_micros() as u64 + 1))
    }

    fn lost(&mut self) -> bool {
        self.rng.chance(u64::from(self.opts.loss_per_mille) * 1_000)
    }

    fn step(&mut self) -> Result<(), String> {
        self.step += 1;
        self.now += self.opts.step;
        self.chaos();
        let ids: Vec<u32> = self.members.keys().copied().collect();
        // Members: restart, heartbeat.
        for id in &ids {
            let now = self.now;
            let m = self.members.get_mut(id).expect("member");
            if !m.up && m.restart_at != Duration::ZERO && now >= m.restart_at {
                let ready = now + Duration::from_millis(50 + self.rng.below(400));
                // Started with the group its configuration names now.
                let group = self
                    .cluster
                    .state()
                    .members
                    .get(id)
                    .map_or(m.group, |r| r.group);
                *m = SimMember::new(*id, group, ready);
                m.next_heartbeat = now;
                self.note(&format!("member {id} restarts"));
            }
            let m = self.members.get_mut(id).expect("member");
            if m.up && now >= m.next_heartbeat {
                m.next_heartbeat = now + self.cluster.options().heartbeat_interval;
                let report = MemberReport {
                    sync: Some(SyncReport {
                        table_version: m.table_version,
                        synced_version: m.synced_version,
                        backup_connections: m.holds.len() as u64,
                        ..Default::default()
                    }),
                    sync_mac: Some(format!("02:00:00:00:00:{id:02x}")),
                    ..Default::default()
                };
                let hb = m.agent.heartbeat(now >= m.ready_at, m.enforced, report);
                let cut = now < m.mgmt_cut_until;
                if !cut && !self.lost() {
                    let at = self.delay();
                    self.to_orchestrator.push((at, hb));
                }
            }
        }
        // The orchestrator: heartbeats due, then a tick.
        let due: Vec<Heartbeat> = take_due(&mut self.to_orchestrator, self.now);
        for hb in due {
            let out = self.cluster.handle(
                self.t0 + self.now,
                Input::Heartbeat {
                    hb: Box::new(hb),
                    to_member: 0,
                    from_member: 0,
                },
            );
            self.outputs(out)?;
        }
        let out = self.cluster.handle(self.t0 + self.now, Input::Tick);
        self.outputs(out)?;
        // Members: answers and sync messages due.
        let due: Vec<HeartbeatAck> = take_due(&mut self.to_members, self.now);
        for ack in due {
            self.member_answer(ack);
        }
        let due: Vec<SyncMsg> = take_due(&mut self.sync, self.now);
        for msg in due {
            self.sync_message(msg);
        }
        self.resend_bulks();
        self.check_state()
    }

    /// Random failures and operator requests.
    fn chaos(&mut self) {
        let ids: Vec<u32> = self.members.keys().copied().collect();
        let id = ids[self.rng.below(ids.len() as u64) as usize];
        let now = self.now;
        let roll = self.rng.below(10_000);
        let m = self.members.get_mut(&id).expect("member");
        match roll {
            0..=14 if m.up => {
                m.up = false;
                m.restart_at = now + Duration::from_millis(200 + self.rng.below(3_000));
                self.note(&format!("member {id} killed"));
            }
            15..=39 => {
                m.sync_cut_until = now + Duration::from_millis(500 + self.rng.below(5_000));
                self.note(&format!("member {id}: sync link cut"));
            }
            40..=49 => {
                m.mgmt_cut_until = now + Duration::from_millis(50 + self.rng.below(600));
                self.note(&format!("member {id}: management link cut"));
            }
            50..=54 => self.request(Op::Detach { member: id }),
            55..=69 => self.request(Op::Attach { member: id }),
            70..=74 => {
                let workers = 1 + self.rng.below(4) as u32;
                self.request(Op::Workers {
                    member: id,
                    workers,
                });
            }
            75..=84 => {
                let v = self.next_policy;
                self.next_policy += 1;
                let group = 1 + self.rng.below(u64::from(self.opts.groups)) as u32;
                self.request(Op::PolicyInstall {
                    group,
                    target: policy(v),
                });
            }
            85..=87 => {
                let group = 1 + self.rng.below(u64::from(self.opts.groups)) as u32;
                self.request(Op::PolicyRollback { group });
            }
            88..=90 => {
                let group = 1 + self.rng.below(u64::from(self.opts.groups)) as u32;
                self.request(Op::Move { member: id, group });
            }
            91..=92 => self.request(Op::Remove { member: id }),
            93..=99 => {
                let group = 1 + self.rng.below(u64::from(self.opts.groups)) as u32;
                self.request(Op::Add {
                    member: id,
                    group,
                    site: 1,
                    downlink: format!("dl-sgm{id}"),
                });
            }
            _ => {}
        }
    }

    fn request(&mut self, op: Op) {
        self.next_request += 1;
        self.note(&format!("request {op:?}"));
        let out = self.cluster.handle(
            self.t0 + self.now,
            Input::Request {
                id: self.next_request,
                op,
            },
        );
        // A broken invariant here shows at the end of the step, as the state check.
        let _ = self.outputs(out);
    }

    /// Carries out the core's outputs, checking each against the invariants.
    fn outputs(&mut self, out: Vec<Output>) -> Result<(), String> {
        let mut last: Option<Command> = None;
        for o in out {
            match o {
                Output::Logged(e) => {
                    match &e.command {
                        Command::StartJoin { .. } => self.report.joins += 1,
                        Command::JoinBlocked { .. } => self.report.blocked += 1,
                        Command::Lost { .. } => self.report.failures += 1,
                        Command::PolicyEnd { .. } => self.report.policies += 1,
                        Command::Add { .. } | Command::Remove { .. } | Command::Move { .. } => {
                            self.report.registry += 1;
                        }
                        _ => {}
                    }
                    self.note(&format!("log {}: {:?}", e.index, e.command));
                    last = Some(e.command);
                }
                Output::Table { group, buckets } => {
                    let before = self.tables.insert(group, buckets.clone());
                    if let (Some(before), Some(cmd)) = (before, &last) {
                        self.check_move(cmd, &before, &buckets)?;
                    }
                }
                Output::Answer { member, ack } => {
                    self.check_answer(member, &ack)?;
                    let cut = self
                        .members
                        .get(&member)
                        .is_some_and(|m| self.now < m.mgmt_cut_until);
                    if !cut && !self.lost() {
                        let at = self.delay();
                        self.to_members.push((at, ack));
                    }
                }
                Output::Reply { id, result } => self.note(&format!("reply {id}: {result:?}")),
                Output::Port { .. }
                | Output::DownlinkDetach { .. }
                | Output::DownlinkGroup { .. }
                | Output::ConfigChanged => {}
            }
        }
        Ok(())
    }

    /// A failure moves only the dead member's buckets; joiners get only buckets whose
    /// records they hold.
    fn check_move(&self, cmd: &Command, before: &[Bucket], after: &[Bucket]) -> Result<(), String> {
        let moved = |b: usize| before[b].active != after[b].active;
        match cmd {
            Command::Lost { member }
            | Command::Detach { member }
            | Command::Isolate { member, .. } => {
                for b in (0..after.len()).filter(|b| moved(*b)) {
                    if before[b].active != *member {
                        return Err(format!(
                            "{cmd:?} moved bucket {b} of member {} to {}",
                            before[b].active, after[b].active
                        ));
                    }
                }
            }
            Command::Activate { members, .. } => {
                for b in (0..after.len()).filter(|b| moved(*b)) {
                    let j = after[b].active;
                    let held = self.members.get(&j).is_some_and(|m| m.holds.contains(&b));
                    if members.contains(&j) && before[b].active != 0 && !held {
                        return Err(format!(
                            "bucket {b} reached joining member {j} before its sync was acknowledged"
                        ));
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The answer, the API and the task view say the same of a member.
    fn check_answer(&self, member: u32, ack: &HeartbeatAck) -> Result<(), String> {
        let now = self.t0 + self.now;
        let view = self
            .cluster
            .member(member, now)
            .ok_or("answer to an unknown member")?;
        let tasks = self.cluster.tasks();
        let t = tasks
            .groups
            .iter()
            .flat_map(|g| g.members.iter())
            .find(|t| t.id == member)
            .ok_or("member missing from the task view")?;
        if ack.state != view.state || t.state != view.state {
            return Err(format!(
                "member {member}: answer says {:?}, API {:?}, tasks {:?}",
                ack.state, view.state, t.state
            ));
        }
        if t.assigned != tasks::tasks_for(member, ack.state, ack.smo) {
            return Err(format!(
                "member {member}: tasks assigned disagree with its answer"
            ));
        }
        if ack.smo != self.cluster.state().smo(view.group) {
            return Err(format!("member {member} told SMO {:?}", ack.smo));
        }
        Ok(())
    }

    fn check_state(&mut self) -> Result<(), String> {
        let st = self.cluster.state();
        // One group per member (the registry and the configuration mirror it).
        let mut seen = BTreeSet::new();
        for g in &self.cluster.config().groups {
            for m in &g.members {
                if !seen.insert(m.id) {
                    return Err(format!("member {} is in two groups", m.id));
                }
            }
        }
        for (g, gs) in &st.groups {
            let serving = st.serving(*g);
            let smos: Vec<u32> = serving
                .iter()
                .copied()
                .filter(|m| {
                    self.cluster
                        .member(*m, self.t0 + self.now)
                        .is_some_and(|v| v.smo)
                })
                .collect();
            if smos.len() > 1 || smos.first() != serving.first() {
                return Err(format!("group {g}: SMO {smos:?} among serving {serving:?}"));
            }
            let table = self
                .tables
                .get(g)
                .ok_or("a group's table was never programmed")?;
            if *table != gs.table {
                return Err(format!(
                    "group {g}: the programmed table is not the state's"
                ));
            }
            for (b, x) in table.iter().enumerate() {
                let ok = match serving.len() {
                    0 => x.active == 0 && x.backup == 0,
                    1 => x.active == serving[0] && x.backup == 0,
                    _ => {
                        serving.contains(&x.active)
                            && serving.contains(&x.backup)
                            && x.active != x.backup
                    }
                };
                if !ok {
                    return Err(format!(
                        "group {g} bucket {b}: active {} backup {} with serving {serving:?}",
                        x.active, x.backup
                    ));
                }
            }
        }
        if self.cluster.applied_index() != self.checked_index {
            self.checked_index = self.cluster.applied_index();
            let (snapshot, tail) = self.cluster.log();
            if ClusterState::replay(snapshot, tail.iter().map(|e| &e.command)) != *st {
                return Err("replaying the log does not give the live state".into());
            }
        }
        Ok(())
    }

    // The answer is delivered, as a message is, by value.
    #[allow(clippy::needless_pass_by_value)]
    fn member_answer(&mut self, ack: HeartbeatAck) {
        let id = ack.member;
        let Some(m) = self.members.get_mut(&id) else {
            return;
        };
        if !m.up {
            return;
        }
        let actions = m.agent.handle(&ack, m.enforced);
        for a in actions {
            let m = self.members.get_mut(&id).expect("member");
            match a {
                AgentAction::Enforce(p) => m.enforced = p.version,
                AgentAction::View(v) => {
                    let msgs = sync_view(id, m, &v, self.now);
                    self.sync.extend(msgs);
                }
                AgentAction::Moved { to } => {
                    // As `baton sgm` does: it stops, and its supervisor starts it again
                    // with the new group's settings.
                    m.up = false;
                    m.restart_at = self.now + Duration::from_millis(100);
                    m.group = to;
                    self.note(&format!("member {id} moved to group {to}: restarts"));
                    return;
                }
                AgentAction::Workers(_) | AgentAction::Role { .. } => {}
            }
        }
    }

    fn sync_message(&mut self, msg: SyncMsg) {
        let (from, to) = match &msg {
            SyncMsg::Bulk { from, to, .. } | SyncMsg::Ack { from, to, .. } => (*from, *to),
        };
        let now = self.now;
        let cut = |m: Option<&SimMember>| m.is_none_or(|m| !m.up || now < m.sync_cut_until);
        if cut(self.members.get(&from)) || cut(self.members.get(&to)) || self.lost() {
            return;
        }
        match msg {
            SyncMsg::Bulk {
                from,
                to,
                version,
                buckets,
            } => {
                let m = self.members.get_mut(&to).expect("checked");
                m.holds.extend(buckets);
                let at = self.delay();
                self.sync.push((
                    at,
                    SyncMsg::Ack {
                        from: to,
                        to: from,
                        version,
                    },
                ));
            }
            SyncMsg::Ack { from, to, version } => {
                let m = self.members.get_mut(&to).expect("checked");
                if let Some(b) = m.bulks.get_mut(&from).filter(|b| b.version == version) {
                    b.acked = true;
                }
                if m.bulks.values().all(|b| b.acked) {
                    m.synced_version = m.synced_version.max(m.table_version);
                }
            }
        }
    }

    fn resend_bulks(&mut self) {
        let now = self.now;
        let mut msgs = Vec::new();
        for (id, m) in &mut self.members {
            if !m.up {
                continue;
            }
            for (to, b) in m
                .bulks
                .iter_mut()
                .filter(|(_, b)| !b.acked && now >= b.resend)
            {
                b.resend = now + Duration::from_millis(50);
                msgs.push(SyncMsg::Bulk {
                    from: *id,
                    to: *to,
                    version: b.version,
                    buckets: b.buckets.clone(),
                });
            }
        }
        for m in msgs {
            let at = self.delay();
            self.sync.push((at, m));
        }
    }
}

/// A member takes a new view: it owes each joiner the records of the buckets it is active
/// for that the joiner will hold; with nothing owed, the version is synced at once.
fn sync_view(id: u32, m: &mut SimMember, v: &View, now: Duration) -> Vec<(Duration, SyncMsg)> {
    m.table_version = v.version;
    m.bulks.clear();
    let mut owed: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (b, joiner) in v.extra.iter().enumerate() {
        if *joiner != 0 && *joiner != id && v.buckets[b].0 == id {
            owed.entry(*joiner).or_default().push(b);
        }
    }
    if owed.is_empty() {
        m.synced_version = v.version;
        return Vec::new();
    }
    let mut msgs = Vec::new();
    for (to, buckets) in owed {
        msgs.push((
            now,
            SyncMsg::Bulk {
                from: id,
                to,
                version: v.version,
                buckets: buckets.clone(),
            },
        ));
        m.bulks.insert(
            to,
            Bulk {
                version: v.version,
                buckets,
                acked: false,
                resend: now + Duration::from_millis(50),
            },
        );
    }
    msgs
}

/// Removes and returns the messages due by `now`, in the order they were sent.
fn take_due<T>(queue: &mut Vec<(Duration, T)>, now: Duration) -> Vec<T> {
    let mut due = Vec::new();
    let mut i = 0;
    while i < queue.len() {
        if queue[i].0 <= now {
            due.push(queue.remove(i).1);
        } else {
            i += 1;
        }
    }
    due
}

/// Runs `seeds` seeds from `first`; the first violation found, if any.
pub fn run_seeds(first: u64, seeds: u64, opts: &SimOptions) -> Result<SimReport, Violation> {
    let mut total = SimReport::default();
    for seed in first..first + seeds {
        let r = Sim::new(seed, opts.clone()).run()?;
        total.entries += r.entries;
        total.joins += r.joins;
        total.blocked += r.blocked;
        total.failures += r.failures;
        total.policies += r.policies;
        total.registry += r.registry;
    }
    Ok(total)
}

/// The member state model's words, for the state-diagram check in the docs.
pub const STATES: [MemberState; 5] = [
    MemberState::Down,
    MemberState::Joining,
    MemberState::Active,
    MemberState::Detached,
    MemberState::Isolated,
];
