//! `baton orchestrator`: attaches `distribute`/`egress`, runs CCP (heartbeats →
//! membership → bucket table) on a high-priority thread, and serves the REST API.

use std::{
    collections::BTreeMap,
    net::{IpAddr, UdpSocket},
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use axum::{
    extract::{Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use baton_common::{key, Bucket, DownlinkConf, GroupConf, UplinkConf};
use baton_control::{
    api::{
        BucketTable, ErrorBody, GroupStat, MemberAdd, MemberMove, MemberStat, PolicyInstall,
        PolicyInstalled, PolicyRollback, PolicyStat, PolicyVersionStat, SearchResult, Stat,
        SyncMemberStat, SyncStat, UplinkStat, WorkersRequest,
    },
    ccp::{self, Heartbeat, HeartbeatAck, MemberReport, SyncPeer, TableUpdate},
    config::{Config, Role},
    membership::{Action, Event, MemberState, Membership},
    partition::PathWatch,
    persist, planner,
    policy_dist::{Outcome, PolicyReport, PolicyStore, PolicyVersion, PHASE_MAX},
    search,
    tasks::{self, GroupTasks, MemberTasks, TaskStat},
};
use baton_dataplane::{
    dispatch::WORKERS_MAX,
    loader::{ifindex, Orchestrator},
};
use serde::Deserialize;

struct Uplink {
    iface: String,
    group: u32,
    role: Role,
    slot: u32,
    key: u32,
    prefixes: Vec<ipnet::IpNet>,
}

struct Shared {
    config: Config,
    /// Where the configuration lives: members added, removed or moved are written back.
    config_path: std::path::PathBuf,
    programs: Orchestrator,
    membership: Membership,
    reports: BTreeMap<u32, (Instant, MemberReport)>,
    downlinks: BTreeMap<u32, u32>,
    uplinks: Vec<Uplink>,
    tables: BTreeMap<u32, Vec<Bucket>>,
    /// Worker counts asked of members (Dynamic Balancing).
    workers: BTreeMap<u32, u32>,
    /// Bumped at every bucket-table change; members sync by the version they report.
    table_version: u64,
    /// Data-path watches of Active members, and the members isolated for a partition.
    paths: BTreeMap<u32, PathWatch>,
    isolated: BTreeMap<u32, String>,
    /// Each group's policy versions and the install under way.
    policies: BTreeMap<u32, PolicyStore>,
    /// What was last written to the state file.
    saved: Option<persist::State>,
    /// Joins under way in sync groups (state before steering): the joining members are
    /// Active but serve no bucket until every serving member has synced to them the
    /// connections of the buckets they will own or back up.
    staging: BTreeMap<u32, Staging>,
}

/// Longest a join waits for the bulk sync before the member takes its buckets anyway.
const JOIN_SYNC_MAX: Duration = Duration::from_secs(10);

/// A group's joins under way.
struct Staging {
    joiners: std::collections::BTreeSet<u32>,
    /// Per bucket, the joining member its records also go to (0: none).
    extra: Vec<u32>,
    /// The table version that announced `extra`, and when.
    version: u64,
    since: Instant,
}

impl Shared {
    /// A member's state as the API shows it: Joining until its bulk sync is done.
    fn state(&self, id: u32) -> MemberState {
        match self.membership.state(id) {
            Some(MemberState::Active) if self.is_joining(id) => MemberState::Joining,
            Some(st) => st,
            None => MemberState::Down,
        }
    }

    fn is_joining(&self, id: u32) -> bool {
        self.staging.values().any(|st| st.joiners.contains(&id))
    }

    /// Members that serve the group's buckets: Active ones, less those still joining.
    fn serving(&self, group: u32) -> Vec<u32> {
        self.membership
            .active(group)
            .into_iter()
            .filter(|m| !self.is_joining(*m))
            .collect()
    }

    /// Announces (or ends, with no joiner left) the group's staging as a new table version.
    fn restage(&mut self, group: u32, now: Instant) {
        let Some(table) = self.tables.get(&group) else {
            return;
        };
        let serving = self.serving(group);
        let Some(st) = self.staging.get_mut(&group) else {
            return;
        };
        self.table_version += 1;
        if st.joiners.is_empty() {
            self.staging.remove(&group);
            return;
        }
        let joiners: Vec<u32> = st.joiners.iter().copied().collect();
        st.extra = planner::join_extra(table, &serving, &joiners);
        st.version = self.table_version;
        st.since = now;
    }

    fn sync_group(&self, member: u32) -> Option<u32> {
        let group = self.membership.group(member)?;
        self.config
            .groups
            .iter()
            .any(|g| g.id == group && g.sync)
            .then_some(group)
    }
}

type SharedRef = Arc<Mutex<Shared>>;

pub fn run(config_path: &Path) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let o = &config.orchestrator;
    let mut programs = if o.bpf_pin_dir.as_os_str().is_empty() {
        Orchestrator::load(o.xdp_driver_mode)?
    } else {
        Orchestrator::load_pinned(o.xdp_driver_mode, &o.bpf_pin_dir)?
    };
    let restored = if o.state_file.as_os_str().is_empty() {
        None
    } else {
        persist::load(&o.state_file)?
    };
    if let Some(r) = &restored {
        tracing::info!(
            table_version = r.table_version,
            members = r.members.len(),
            "state restored from {}",
            o.state_file.display()
        );
    }
    let mut uplinks = Vec::new();
    let mut downlinks = BTreeMap::new();
    let mut tables = BTreeMap::new();
    for g in &config.groups {
        let slot = g.slot();
        let flood = |role: Role| -> anyhow::Result<u32> {
            let up = g
                .uplinks
                .iter()
                .find(|u| u.role == role)
                .context("group without uplink")?;
            Ok(ifindex(&up.iface)?)
        };
        // Keep the table the data path reads now (pinned maps outlive a restart).
        let live = programs.group(slot).map_or(0, |c| c.table);
        programs.set_group(
            slot,
            GroupConf {
                table: live,
                mask: g.buckets - 1,
                flood_ifindex: [flood(Role::External)?, flood(Role::Internal)?],
                vmac: [g.vmac(0), g.vmac(1)],
                _pad: [0; 4],
            },
        )?;
        let table = restored
            .as_ref()
            .and_then(|r| r.tables.get(&g.id))
            .filter(|t| t.len() == g.buckets as usize)
            .map(|t| {
                t.iter()
                    .map(|&(active, backup)| Bucket { active, backup })
                    .collect()
            })
            .unwrap_or_else(|| planner::plan(&[], g.buckets));
        programs.install_buckets(slot, &table)?;
        tables.insert(g.id, table);
        for u in &g.uplinks {
            let uslot = uplinks.len() as u32;
            let key = g.key_for(u.role);
            programs
                .attach_uplink(
                    &u.iface,
                    UplinkConf {
                        group: slot,
                        side: u.role.index() as u32,
                        key,
                        slot: uslot,
                        gw_v4: u.gateway_v4.map_or([0; 4], |a| a.octets()),
                        gw_v6: u.gateway_v6.map_or([0; 16], |a| a.octets()),
                        vmac: g.vmac(u.role.index()),
                        _pad: [0; 2],
                    },
                )
                .with_context(|| format!("uplink {}", u.iface))?;
            uplinks.push(Uplink {
                iface: u.iface.clone(),
                group: g.id,
                role: u.role,
                slot: uslot,
                key,
                prefixes: u.prefixes.clone(),
            });
        }
        for m in &g.members {
            let idx = programs
                .attach_downlink(
                    &m.downlink,
                    DownlinkConf {
                        group: slot,
                        member: m.id,
                    },
                )
                .with_context(|| format!("downlink {} of member {}", m.downlink, m.id))?;
            downlinks.insert(m.id, idx);
        }
    }
    // Each group's policies: as persisted, else the configured starting policy.
    let mut policies = BTreeMap::new();
    for g in &config.groups {
        let mut store = PolicyStore::default();
        if let Some(h) = restored.as_ref().and_then(|r| r.policies.get(&g.id)) {
            store.history = h.clone();
        } else if let Some(f) = &config.orchestrator.policy_file {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("reading the policy {}", f.display()))?;
            let p = baton_dataplane::policy::Policy::parse(&text)
                .with_context(|| format!("the policy {}", f.display()))?;
            store.history.push(PolicyVersion {
                version: p.version,
                text,
                installed_at: unix_now(),
            });
        }
        policies.insert(g.id, store);
    }
    let mut membership = Membership::new(
        config
            .groups
            .iter()
            .flat_map(|g| g.members.iter().map(move |m| (m.id, g.id))),
        Duration::from_millis(config.orchestrator.heartbeat_interval_ms),
        config.orchestrator.dead_count,
    );
    if let Some(r) = &restored {
        membership.restore(Instant::now(), r.members.clone());
        for (id, st) in &r.members {
            if let (MemberState::Active, Some(idx)) = (st, downlinks.get(id)) {
                programs.add_member_port(*id, *idx)?;
            }
        }
    }
    let shared = Arc::new(Mutex::new(Shared {
        config: config.clone(),
        config_path: config_path.to_path_buf(),
        programs,
        membership,
        reports: BTreeMap::new(),
        downlinks,
        uplinks,
        tables,
        workers: restored
            .as_ref()
            .map(|r| r.workers.clone())
            .unwrap_or_default(),
        table_version: restored.as_ref().map_or(1, |r| r.table_version + 1),
        staging: BTreeMap::new(),
        policies,
        paths: BTreeMap::new(),
        isolated: BTreeMap::new(),
        saved: None,
    }));
    tracing::info!(groups = config.groups.len(), "XDP programs attached");

    let sock = UdpSocket::bind(config.orchestrator.ccp)
        .with_context(|| format!("binding the CCP socket {}", config.orchestrator.ccp))?;
    let ccp_shared = shared.clone();
    std::thread::Builder::new()
        .name("ccp".into())
        .spawn(move || {
            super::raise_priority("ccp");
            if let Err(e) = ccp_loop(sock, ccp_shared) {
                tracing::error!("CCP loop failed: {e:#}");
                std::process::exit(1);
            }
        })?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(serve_api(config.orchestrator.clone(), shared))
}

fn ccp_loop(sock: UdpSocket, shared: SharedRef) -> anyhow::Result<()> {
    let interval = {
        let s = shared.lock().unwrap();
        Duration::from_millis(s.config.orchestrator.heartbeat_interval_ms)
    };
    // Ticks at a tenth of the interval bound detection to interval × dead count + interval/10.
    let tick = (interval / 10).max(Duration::from_millis(1));
    sock.set_read_timeout(Some(tick))?;
    let mut buf = vec![0u8; ccp::MAX_DATAGRAM];
    let mut last_tick = Instant::now();
    loop {
        let received = match sock.recv_from(&mut buf) {
            Ok((n, from)) => Some((n, from)),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => return Err(e.into()),
        };
        let now = Instant::now();
        let mut s = shared.lock().unwrap();
        if let Some((n, from)) = received {
            match ccp::decode::<Heartbeat>(&buf[..n]) {
                Some(hb) if s.membership.state(hb.member).is_some() => {
                    let group = s.membership.group(hb.member).unwrap_or(0);
                    // A member is ready only once it enforces the group's current policy.
                    let policy_ok = s
                        .policies
                        .get(&group)
                        .is_none_or(|p| p.member_ready(&hb.report.policy));
                    let actions = s.membership.handle(
                        now,
                        Event::Heartbeat {
                            member: hb.member,
                            ready: hb.ready && policy_ok,
                        },
                    );
                    s.reports.insert(hb.member, (now, hb.report));
                    apply(&mut s, actions)?;
                    watch_path(&mut s, hb.member, now)?;
                    finish_joins(&mut s, now)?;
                    step_policies(&mut s, now);
                    let policy = s
                        .policies
                        .get(&group)
                        .and_then(|p| p.command(hb.member, &s.reports.get(&hb.member)?.1.policy));
                    let ack = HeartbeatAck {
                        member: hb.member,
                        seq: hb.seq,
                        state: s.membership.state(hb.member).unwrap_or(MemberState::Down),
                        smo: s.membership.smo(group),
                        workers: s.workers.get(&hb.member).copied(),
                        table: table_update(&s, hb.member, group),
                        policy,
                        group,
                    };
                    let _ = sock.send_to(&ccp::encode(&ack), from);
                }
                Some(hb) => {
                    tracing::warn!(member = hb.member, %from, "heartbeat from an unconfigured member ignored")
                }
                None => tracing::warn!(%from, bytes = n, "malformed CCP datagram ignored"),
            }
        }
        if now.duration_since(last_tick) >= tick {
            last_tick = now;
            let actions = s.membership.handle(now, Event::Tick);
            apply(&mut s, actions)?;
            step_policies(&mut s, now);
        }
        persist_changes(&mut s);
    }
}

/// Carries membership decisions into the kernel maps. A member becoming Active gets its
/// port before any bucket points at it; a member leaving loses its buckets before its port.
fn apply(s: &mut Shared, actions: Vec<Action>) -> anyhow::Result<()> {
    for a in actions {
        match a {
            Action::Activate(id) => {
                let idx = *s.downlinks.get(&id).context("member without downlink")?;
                s.programs.add_member_port(id, idx)?;
                let group = s.sync_group(id);
                let others = group.map_or(0, |g| s.serving(g).iter().filter(|m| **m != id).count());
                match group {
                    Some(g) if others > 0 => {
                        // State before steering: the member takes no bucket until the
                        // connections of those it will own or back up are synced to it.
                        s.staging
                            .entry(g)
                            .or_insert_with(|| Staging {
                                joiners: Default::default(),
                                extra: Vec::new(),
                                version: 0,
                                since: Instant::now(),
                            })
                            .joiners
                            .insert(id);
                        s.restage(g, Instant::now());
                        tracing::info!(
                            member = id,
                            "member joining: bulk sync of its buckets first"
                        );
                    }
                    _ => {
                        replan(s, id, planner::rebalance)?;
                        tracing::info!(member = id, "member active");
                    }
                }
            }
            Action::Deactivate(id) => {
                if let Some(g) = s.membership.group(id) {
                    if let Some(st) = s.staging.get_mut(&g) {
                        if st.joiners.remove(&id) {
                            s.restage(g, Instant::now());
                        }
                    }
                }
                // Its buckets switch to their backups; no other bucket changes hands.
                replan(s, id, |table, active| planner::fail(table, id, active))?;
                s.programs.remove_member_port(id)?;
                tracing::warn!(
                    member = id,
                    "member down: its buckets moved to their backups"
                );
            }
            Action::Smo { group, master } => {
                tracing::info!(group, ?master, "SMO master");
            }
        }
    }
    Ok(())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Isolates a member whose heartbeats arrive but whose data path is partitioned.
fn watch_path(s: &mut Shared, id: u32, now: Instant) -> anyhow::Result<()> {
    if !s.config.orchestrator.isolate_partitions
        || s.membership.state(id) != Some(MemberState::Active)
        || s.is_joining(id)
    {
        s.paths.remove(&id);
        return Ok(());
    }
    let xdp = s.programs.member_stats(id)?;
    let Some((_, r)) = s.reports.get(&id) else {
        return Ok(());
    };
    let (rx, tx) = (r.rx_packets, r.tx_packets);
    let o = &s.config.orchestrator;
    let dead = Duration::from_millis(o.heartbeat_interval_ms * o.dead_count as u64);
    let w = s.paths.entry(id).or_insert_with(|| {
        PathWatch::new(now, xdp.to_member_packets, xdp.from_member_packets, rx, tx)
    });
    if let Some(why) = w.observe(
        now,
        (xdp.to_member_packets, xdp.from_member_packets),
        (rx, tx),
        dead,
    ) {
        tracing::warn!(
            member = id,
            "member isolated: its data path is partitioned ({why}); attach it once repaired"
        );
        s.isolated.insert(id, why.to_string());
        s.paths.remove(&id);
        let actions = s.membership.handle(now, Event::Detach(id));
        apply(s, actions)?;
    }
    Ok(())
}

/// Advances every group's policy install with the members' latest reports.
fn step_policies(s: &mut Shared, now: Instant) {
    let groups: Vec<u32> = s.policies.keys().copied().collect();
    for g in groups {
        let alive = s.serving(g);
        let reports: BTreeMap<u32, PolicyReport> = s
            .reports
            .iter()
            .map(|(id, (_, r))| (*id, r.policy.clone()))
            .collect();
        if let Some(p) = s.policies.get_mut(&g) {
            p.step(now, &reports, &alive);
        }
    }
}

/// Writes the state file when what must survive a restart changed.
fn persist_changes(s: &mut Shared) {
    let path = s.config.orchestrator.state_file.clone();
    if path.as_os_str().is_empty() {
        return;
    }
    let state = persist::State {
        table_version: s.table_version,
        members: s.membership.members().map(|(id, _, st)| (id, st)).collect(),
        tables: s
            .tables
            .iter()
            .map(|(g, t)| (*g, t.iter().map(|b| (b.active, b.backup)).collect()))
            .collect(),
        workers: s.workers.clone(),
        policies: s
            .policies
            .iter()
            .map(|(g, p)| (*g, p.history.clone()))
            .collect(),
    };
    if s.saved.as_ref() == Some(&state) {
        return;
    }
    match persist::save(&path, &state) {
        Ok(()) => s.saved = Some(state),
        Err(e) => tracing::error!("{e}"),
    }
}

/// Lets joining members take their buckets once every serving member of the group has
/// bulk-synced the staged version (or after [`JOIN_SYNC_MAX`]).
fn finish_joins(s: &mut Shared, now: Instant) -> anyhow::Result<()> {
    let ready: Vec<(u32, u32)> = s
        .staging
        .iter()
        .filter(|(group, st)| {
            let synced = |m: &u32| {
                s.reports
                    .get(m)
                    .and_then(|(_, r)| r.sync.as_ref())
                    .is_some_and(|r| r.synced_version >= st.version)
            };
            let all = s.serving(**group).iter().all(synced);
            if !all && now.duration_since(st.since) > JOIN_SYNC_MAX {
                tracing::warn!(
                    group,
                    "bulk sync not complete in time: the joining members take their buckets anyway"
                );
                return true;
            }
            all
        })
        .filter_map(|(group, st)| st.joiners.iter().next().map(|j| (*group, *j)))
        .collect();
    for (group, joiner) in ready {
        let joiners = s
            .staging
            .remove(&group)
            .map(|st| st.joiners)
            .unwrap_or_default();
        replan(s, joiner, planner::rebalance)?;
        tracing::info!(?joiners, "members active (bulk sync complete)");
    }
    Ok(())
}

/// The group's bucket table and sync peers for a member whose copy is out of date (sync
/// groups only).
fn table_update(s: &Shared, member: u32, group: u32) -> Option<TableUpdate> {
    let g = s.config.groups.iter().find(|g| g.id == group)?;
    if !g.sync {
        return None;
    }
    let (_, report) = s.reports.get(&member)?;
    let have = report.sync.as_ref().map_or(0, |r| r.table_version);
    if have == s.table_version {
        return None;
    }
    let peers = s
        .membership
        .active(group)
        .into_iter()
        .filter_map(|id| {
            let mac = s.reports.get(&id)?.1.sync_mac.clone()?;
            Some(SyncPeer { id, mac })
        })
        .collect();
    Some(TableUpdate::new(
        s.table_version,
        s.tables.get(&group)?,
        s.staging.get(&group).map(|st| st.extra.as_slice()),
        peers,
    ))
}

fn replan(
    s: &mut Shared,
    member: u32,
    next: impl FnOnce(&[Bucket], &[u32]) -> Vec<Bucket>,
) -> anyhow::Result<()> {
    let Some(group) = s.membership.group(member) else {
        return Ok(());
    };
    let g = s
        .config
        .groups
        .iter()
        .find(|g| g.id == group)
        .context("unknown group")?;
    let current = s.tables.get(&group).context("group without table")?;
    let table = next(current, &s.serving(group));
    s.programs.install_buckets(g.slot(), &table)?;
    s.tables.insert(group, table);
    s.table_version += 1;
    Ok(())
}

async fn serve_api(
    o: baton_control::config::OrchestratorConfig,
    shared: SharedRef,
) -> anyhow::Result<()> {
    let path = o.api_socket.clone();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        // A socket file left by a previous run: refuse only if someone still answers.
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            bail!("another orchestrator is already serving {}", path.display());
        }
        std::fs::remove_file(&path)?;
    }
    let listener = tokio::net::UnixListener::bind(&path)
        .with_context(|| format!("binding {}", path.display()))?;
    let app = Router::new()
        .route("/v1/stat", get(stat))
        .route("/v1/search", get(search_bucket))
        .route("/v1/buckets", get(buckets))
        .route("/v1/sync", get(sync_stat))
        .route("/v1/tasks", get(task_stat))
        .route("/v1/policy", get(policy_stat).post(install_policy))
        .route("/v1/policy/rollback", axum::routing::post(rollback_policy))
        .route("/v1/members", axum::routing::post(add_member))
        .route("/v1/members/{id}", axum::routing::delete(remove_member))
        .route("/v1/members/{id}/move", axum::routing::post(move_member))
        .route("/v1/members/{id}/workers", axum::routing::post(set_workers))
        .route("/v1/members/{id}/detach", axum::routing::post(detach))
        .route("/v1/members/{id}/attach", axum::routing::post(attach))
        .with_state(shared);
    if let (Some(addr), Some(token_file)) = (o.api_tcp, o.api_token_file.as_ref()) {
        let token = std::fs::read_to_string(token_file)
            .with_context(|| format!("reading the API token {}", token_file.display()))?
            .trim()
            .to_string();
        if token.len() < 16 {
            bail!(
                "the API token in {} is shorter than 16 characters",
                token_file.display()
            );
        }
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the API's TCP address {addr}"))?;
        let remote = app.clone().layer(axum::middleware::from_fn_with_state(
            Arc::new(token),
            require_token,
        ));
        tracing::info!(%addr, "API listening on TCP (bearer token required)");
        tokio::spawn(async move {
            if let Err(e) = axum::serve(
                tcp,
                remote.into_make_service_with_connect_info::<std::net::SocketAddr>(),
            )
            .await
            {
                tracing::error!("TCP API stopped: {e}");
            }
        });
    }
    tracing::info!(socket = %path.display(), "API listening");
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    let _ = std::fs::remove_file(&path);
    tracing::info!("orchestrator stopped");
    Ok(())
}

/// Lets a TCP request through only with `Authorization: Bearer <the token>`. The token is
/// compared in constant time and never logged.
async fn require_token(
    State(token): State<Arc<String>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let given = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let same = given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same {
        tracing::warn!(%peer, path = %req.uri().path(), "API request without a valid bearer token refused");
        return ApiError(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (send Authorization: Bearer <token>)".into(),
        )
        .into_response();
    }
    next.run(req).await
}

struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

async fn stat(State(shared): State<SharedRef>) -> Result<Json<Stat>, ApiError> {
    let s = shared.lock().unwrap();
    let now = Instant::now();
    let mut groups = Vec::new();
    for g in &s.config.groups {
        let smo = s.membership.smo(g.id);
        let table = s.tables.get(&g.id);
        let mut members = Vec::new();
        for m in &g.members {
            let (heard, report) = s
                .reports
                .get(&m.id)
                .map(|(t, r)| (Some(now.duration_since(*t).as_millis() as u64), r.clone()))
                .unwrap_or((None, MemberReport::default()));
            let xdp = s.programs.member_stats(m.id).map_err(internal)?;
            let count = |f: fn(&Bucket) -> u32| {
                table.map_or(0, |t| t.iter().filter(|b| f(b) == m.id).count() as u32)
            };
            members.push(MemberStat {
                id: m.id,
                state: s.state(m.id),
                smo: smo == Some(m.id),
                rx_packets: report.rx_packets,
                tx_packets: report.tx_packets,
                drops: report.drops,
                connections: report.connections,
                backup_connections: report
                    .sync
                    .as_ref()
                    .map_or(report.backup_connections, |r| r.backup_connections),
                policy_version: report.policy_version,
                policy_date: report.policy_date,
                isolated: s.isolated.get(&m.id).cloned(),
                to_member_packets: xdp.to_member_packets,
                from_member_packets: xdp.from_member_packets,
                buckets_active: count(|b| b.active),
                buckets_backup: count(|b| b.backup),
                drop_reasons: report.drop_reasons.clone(),
                table_capacity: report.table_capacity,
                latency_p50_ns: report.latency_p50_ns,
                latency_p99_ns: report.latency_p99_ns,
                workers: report.workers,
                worker_packets: report.worker_packets.clone(),
                worker_connections: report.worker_connections.clone(),
                queue_packets: report.queue_packets.clone(),
                worker_bytes: report.worker_bytes.clone(),
                worker_drops: report.worker_drops.clone(),
                last_heartbeat_ms: heard,
            });
        }
        groups.push(GroupStat {
            id: g.id,
            smo,
            buckets: g.buckets,
            members,
        });
    }
    let mut uplinks = Vec::new();
    for u in &s.uplinks {
        let st = s.programs.uplink_stats(u.slot).map_err(internal)?;
        uplinks.push(UplinkStat {
            iface: u.iface.clone(),
            group: u.group,
            role: format!("{:?}", u.role).to_lowercase(),
            mode: match u.key & 0xff {
                key::SRC => "network",
                key::DST => "user",
                _ => "general",
            }
            .into(),
            l4: u.key & key::F_PORTS != 0,
            rx_packets: st.rx_packets,
            rx_bytes: st.rx_bytes,
            tx_packets: st.tx_packets,
            tx_bytes: st.tx_bytes,
        });
    }
    let events = s
        .programs
        .events()
        .map_err(internal)?
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    Ok(Json(Stat {
        groups,
        uplinks,
        events,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupQuery {
    #[serde(default = "one")]
    group: u32,
}

fn one() -> u32 {
    1
}

/// A group's policy versions.
async fn policy_stat(
    State(shared): State<SharedRef>,
    Query(q): Query<GroupQuery>,
) -> Result<Json<PolicyStat>, ApiError> {
    let s = shared.lock().unwrap();
    let p = s
        .policies
        .get(&q.group)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no group {}", q.group)))?;
    let stat = |v: &PolicyVersion| PolicyVersionStat {
        version: v.version,
        installed_at: v.installed_at,
    };
    Ok(Json(PolicyStat {
        group: q.group,
        current: p.current().map(stat),
        versions: p.history.iter().map(stat).collect(),
        installing: p.installing().map(|(v, ph)| (v, format!("{ph:?}"))),
    }))
}

/// Installs a policy on a group through its SMO master, everywhere or nowhere; answers
/// when it took effect on every Active member, or why it did not.
async fn install_policy(
    State(shared): State<SharedRef>,
    Json(req): Json<PolicyInstall>,
) -> Result<Json<PolicyInstalled>, ApiError> {
    let policy = baton_dataplane::policy::Policy::parse(&req.text)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("policy refused: {e}")))?;
    let target = PolicyVersion {
        version: policy.version,
        text: req.text,
        installed_at: unix_now(),
    };
    run_install(shared, req.group, target, false).await
}

/// Installs the group's previous policy version again.
async fn rollback_policy(
    State(shared): State<SharedRef>,
    Json(req): Json<PolicyRollback>,
) -> Result<Json<PolicyInstalled>, ApiError> {
    let target = {
        let s = shared.lock().unwrap();
        let p = s
            .policies
            .get(&req.group)
            .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no group {}", req.group)))?;
        p.previous()
            .map_err(|e| ApiError(StatusCode::CONFLICT, e.to_string()))?
    };
    run_install(shared, req.group, target, true).await
}

async fn run_install(
    shared: SharedRef,
    group: u32,
    target: PolicyVersion,
    rollback: bool,
) -> Result<Json<PolicyInstalled>, ApiError> {
    let version = target.version;
    {
        let mut s = shared.lock().unwrap();
        let members = s.serving(group);
        let p = s
            .policies
            .get_mut(&group)
            .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no group {group}")))?;
        p.install(target, &members, rollback, Instant::now())
            .map_err(|e| ApiError(StatusCode::CONFLICT, e.to_string()))?;
        tracing::info!(group, version, rollback, ?members, "policy install started");
    }
    // Three phases, each bounded.
    let deadline = Instant::now() + PHASE_MAX * 3 + Duration::from_secs(1);
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut s = shared.lock().unwrap();
        let outcome = s
            .policies
            .get_mut(&group)
            .and_then(|p| p.take_outcome(version));
        match outcome {
            Some(Outcome::Installed { members, .. }) => {
                tracing::info!(group, version, "policy installed");
                return Ok(Json(PolicyInstalled {
                    group,
                    version,
                    members,
                }));
            }
            Some(Outcome::Aborted(why)) => {
                return Err(ApiError(
                    StatusCode::CONFLICT,
                    format!("policy version {version} not installed anywhere: {why}"),
                ))
            }
            None if Instant::now() > deadline => {
                return Err(ApiError(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("policy version {version}: no outcome in time"),
                ))
            }
            None => {}
        }
    }
}

/// Who runs which task: what the election assigns and what each member reports.
async fn task_stat(State(shared): State<SharedRef>) -> Json<TaskStat> {
    let s = shared.lock().unwrap();
    let groups = s
        .config
        .groups
        .iter()
        .map(|g| {
            let smo = s.membership.smo(g.id);
            GroupTasks {
                id: g.id,
                smo,
                members: g
                    .members
                    .iter()
                    .map(|m| {
                        let state = s.state(m.id);
                        MemberTasks {
                            id: m.id,
                            state,
                            assigned: tasks::tasks_for(m.id, state, smo),
                            running: s
                                .reports
                                .get(&m.id)
                                .filter(|_| state != MemberState::Down)
                                .map(|(_, r)| r.tasks.clone())
                                .unwrap_or_default(),
                        }
                    })
                    .collect(),
            }
        })
        .collect();
    Json(TaskStat { groups })
}

/// HyperSync figures as the members last reported them.
async fn sync_stat(State(shared): State<SharedRef>) -> Json<SyncStat> {
    let s = shared.lock().unwrap();
    let members = s
        .config
        .groups
        .iter()
        .flat_map(|g| g.members.iter())
        .map(|m| {
            let sync = s
                .reports
                .get(&m.id)
                .and_then(|(_, r)| r.sync.clone())
                .unwrap_or_default();
            SyncMemberStat {
                id: m.id,
                state: s.state(m.id),
                sync,
            }
        })
        .collect();
    Json(SyncStat { members })
}

fn config_error(e: baton_control::config::ConfigError) -> ApiError {
    let m = e.to_string();
    let code = if m.contains("no member") || m.contains("no group") {
        StatusCode::NOT_FOUND
    } else if m.contains("already") {
        StatusCode::CONFLICT
    } else {
        StatusCode::BAD_REQUEST
    };
    ApiError(code, m)
}

/// Writes the configuration back after a membership change (the members read it).
fn save_config(s: &Shared) -> Result<(), ApiError> {
    s.config.save(&s.config_path).map_err(|e| {
        internal(format!(
            "the change is made but {} could not be written: {e}",
            s.config_path.display()
        ))
    })
}

/// Admits a member to a group: its downlink gets `egress`, and it joins when heard.
async fn add_member(
    State(shared): State<SharedRef>,
    Json(req): Json<MemberAdd>,
) -> Result<(StatusCode, Json<MemberState>), ApiError> {
    let mut s = shared.lock().unwrap();
    let mut next = s.config.clone();
    next.add_member(req.id, req.group, req.site, &req.downlink)
        .map_err(config_error)?;
    let slot = next.group(req.group).map_or(0, |g| g.slot());
    let idx = s
        .programs
        .attach_downlink(
            &req.downlink,
            DownlinkConf {
                group: slot,
                member: req.id,
            },
        )
        .map_err(|e| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("downlink {}: {e}", req.downlink),
            )
        })?;
    s.downlinks.insert(req.id, idx);
    s.config = next;
    let actions = s.membership.handle(
        Instant::now(),
        Event::Add {
            member: req.id,
            group: req.group,
        },
    );
    apply(&mut s, actions).map_err(internal)?;
    tracing::info!(member = req.id, group = req.group, downlink = %req.downlink, "member added");
    save_config(&s)?;
    Ok((StatusCode::CREATED, Json(MemberState::Down)))
}

/// Removes a member: its buckets go to their backups, its downlink loses `egress`.
async fn remove_member(
    State(shared): State<SharedRef>,
    axum::extract::Path(id): axum::extract::Path<u32>,
) -> Result<Json<MemberState>, ApiError> {
    let mut s = shared.lock().unwrap();
    let mut next = s.config.clone();
    let (_, downlink) = next.remove_member(id).map_err(config_error)?;
    // Out of service first (while its group is known), then gone.
    let now = Instant::now();
    let actions = s.membership.handle(now, Event::Detach(id));
    apply(&mut s, actions).map_err(internal)?;
    let actions = s.membership.handle(now, Event::Remove(id));
    apply(&mut s, actions).map_err(internal)?;
    s.programs.detach_downlink(&downlink).map_err(internal)?;
    s.downlinks.remove(&id);
    s.reports.remove(&id);
    s.workers.remove(&id);
    s.config = next;
    tracing::info!(member = id, "member removed");
    save_config(&s)?;
    Ok(Json(MemberState::Down))
}

/// Moves a member to another group: it leaves its group at once (buckets to their
/// backups) and rejoins the new one.
async fn move_member(
    State(shared): State<SharedRef>,
    axum::extract::Path(id): axum::extract::Path<u32>,
    Json(req): Json<MemberMove>,
) -> Result<Json<MemberState>, ApiError> {
    let mut s = shared.lock().unwrap();
    let mut next = s.config.clone();
    next.move_member(id, req.group).map_err(config_error)?;
    let now = Instant::now();
    let actions = s.membership.handle(now, Event::Detach(id));
    apply(&mut s, actions).map_err(internal)?;
    let actions = s.membership.handle(
        now,
        Event::Move {
            member: id,
            group: req.group,
        },
    );
    apply(&mut s, actions).map_err(internal)?;
    let slot = next.group(req.group).map_or(0, |g| g.slot());
    if let Some(idx) = s.downlinks.get(&id).copied() {
        s.programs
            .configure_downlink(
                idx,
                DownlinkConf {
                    group: slot,
                    member: id,
                },
            )
            .map_err(internal)?;
    }
    s.config = next;
    tracing::info!(member = id, group = req.group, "member moved");
    save_config(&s)?;
    Ok(Json(MemberState::Down))
}

/// Takes a member out of service administratively: its buckets switch to their backups
/// and it stays Detached, whatever its heartbeats say, until attached.
async fn detach(
    State(shared): State<SharedRef>,
    axum::extract::Path(id): axum::extract::Path<u32>,
) -> Result<Json<MemberState>, ApiError> {
    admin(shared, id, Event::Detach(id))
}

/// Returns a Detached member to service: it rejoins through Joining at its next heartbeat.
async fn attach(
    State(shared): State<SharedRef>,
    axum::extract::Path(id): axum::extract::Path<u32>,
) -> Result<Json<MemberState>, ApiError> {
    shared.lock().unwrap().isolated.remove(&id);
    admin(shared, id, Event::Attach(id))
}

fn admin(shared: SharedRef, id: u32, event: Event) -> Result<Json<MemberState>, ApiError> {
    let mut s = shared.lock().unwrap();
    if s.membership.state(id).is_none() {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("no member {id}")));
    }
    let actions = s.membership.handle(Instant::now(), event);
    apply(&mut s, actions).map_err(internal)?;
    let state = s.membership.state(id).unwrap_or(MemberState::Down);
    tracing::info!(member = id, ?state, "administrative change");
    Ok(Json(state))
}

/// Asks a member to run `workers` worker instances; it applies the change at its next
/// heartbeat, moving its connections between workers without dropping any.
async fn set_workers(
    State(shared): State<SharedRef>,
    axum::extract::Path(id): axum::extract::Path<u32>,
    Json(body): Json<WorkersRequest>,
) -> Result<Json<WorkersRequest>, ApiError> {
    let mut s = shared.lock().unwrap();
    if s.membership.state(id).is_none() {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("no member {id}")));
    }
    if !(1..=WORKERS_MAX as u32).contains(&body.workers) {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("workers must be 1..={WORKERS_MAX}, not {}", body.workers),
        ));
    }
    s.workers.insert(id, body.workers);
    tracing::info!(
        member = id,
        workers = body.workers,
        "worker count requested"
    );
    Ok(Json(body))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BucketsQuery {
    group: u32,
}

/// The live bucket table of a group, read back from the kernel.
async fn buckets(
    State(shared): State<SharedRef>,
    Query(q): Query<BucketsQuery>,
) -> Result<Json<BucketTable>, ApiError> {
    let s = shared.lock().unwrap();
    let g = s
        .config
        .groups
        .iter()
        .find(|g| g.id == q.group)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no group {}", q.group)))?;
    let table = s.programs.buckets(g.slot()).map_err(internal)?;
    Ok(Json(BucketTable {
        group: g.id,
        active: table.iter().map(|b| b.active).collect(),
        backup: table.iter().map(|b| b.backup).collect(),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchQuery {
    src: IpAddr,
    dst: IpAddr,
    sport: Option<u16>,
    dport: Option<u16>,
    proto: Option<String>,
}

async fn search_bucket(
    State(shared): State<SharedRef>,
    Query(q): Query<SearchQuery>,
) -> Result<Json<SearchResult>, ApiError> {
    let proto = match q.proto.as_deref() {
        None | Some("tcp") => search::TCP,
        Some("udp") => search::UDP,
        Some("sctp") => search::SCTP,
        Some("icmp") => 1,
        Some(other) => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("unknown protocol {other:?}: use tcp, udp, sctp or icmp"),
            ))
        }
    };
    let s = shared.lock().unwrap();
    // The ingress uplink is the one whose prefixes hold the source (longest match).
    let uplink = s
        .uplinks
        .iter()
        .filter_map(|u| {
            u.prefixes
                .iter()
                .filter(|p| p.contains(&q.src))
                .map(|p| p.prefix_len())
                .max()
                .map(|l| (l, u))
        })
        .max_by_key(|(l, _)| *l)
        .map(|(_, u)| u)
        .ok_or_else(|| {
            ApiError(
                StatusCode::NOT_FOUND,
                format!("no uplink's prefixes contain {}", q.src),
            )
        })?;
    let g = s
        .config
        .groups
        .iter()
        .find(|g| g.id == uplink.group)
        .ok_or_else(|| internal("group missing"))?;
    let hash = search::packet_hash(
        uplink.key,
        q.src,
        q.dst,
        proto,
        q.sport.unwrap_or(0),
        q.dport.unwrap_or(0),
    );
    let bucket = hash & (g.buckets - 1);
    let table = s.programs.buckets(g.slot()).map_err(internal)?;
    let b = table.get(bucket as usize).copied().unwrap_or_default();
    Ok(Json(SearchResult {
        group: g.id,
        bucket,
        active: (b.active != 0).then_some(b.active),
        backup: (b.backup != 0).then_some(b.backup),
    }))
}
