//! The orchestrator's REST API: documents read from the cluster core and the kernel maps,
//! and operator requests handed to the core (its reply is the API's answer).

use std::{
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    api::{
        BucketTable, ErrorBody, GroupStat, MemberAdd, MemberMove, MemberStat, PolicyInstall,
        PolicyInstalled, PolicyRollback, PolicyStat, PolicyVersionStat, SearchResult, Stat,
        SyncMemberStat, SyncStat, UplinkStat, WorkersRequest,
    },
    ccp::MemberReport,
    cluster::{Op, RefusalKind, Reply},
    membership::MemberState,
    policy_dist::{PolicyVersion, PHASE_MAX},
    search,
    tasks::TaskStat,
};
use anyhow::{bail, Context};
use axum::{
    extract::{Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use baton_common::{
    key,
    net::{IPPROTO_ICMP, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP},
    Bucket, DownlinkConf,
};
use serde::Deserialize;

use super::{lock, unix_now, SharedRef};

pub(super) async fn serve(
    o: crate::config::OrchestratorConfig,
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
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"))
}

/// Hands a request to the cluster core and waits for its reply (a policy install's
/// comes when the install has ended; every phase is bounded).
async fn request(shared: &SharedRef, op: Op) -> Result<Reply, ApiError> {
    let rx = lock(shared).request(op).map_err(internal)?;
    let limit = PHASE_MAX * 3 + Duration::from_secs(2);
    match tokio::time::timeout(limit, rx).await {
        Ok(Ok(Ok(reply))) => Ok(reply),
        Ok(Ok(Err(refusal))) => Err(ApiError(
            match refusal.kind {
                RefusalKind::NotFound => StatusCode::NOT_FOUND,
                RefusalKind::Conflict => StatusCode::CONFLICT,
                RefusalKind::BadRequest => StatusCode::BAD_REQUEST,
            },
            refusal.message,
        )),
        Ok(Err(_)) => Err(internal("the request was dropped")),
        Err(_) => Err(ApiError(
            StatusCode::GATEWAY_TIMEOUT,
            format!("no outcome within {limit:?}"),
        )),
    }
}

fn state_of(reply: &Reply) -> Json<MemberState> {
    match reply {
        Reply::State(s) => Json(*s),
        _ => Json(MemberState::Down),
    }
}

async fn stat(State(shared): State<SharedRef>) -> Result<Json<Stat>, ApiError> {
    let s = lock(&shared);
    let now = Instant::now();
    let empty = MemberReport::default();
    let mut groups = Vec::new();
    for g in &s.cluster.config().groups {
        let st = s.cluster.state();
        let smo = st.smo(g.id);
        let table = st.groups.get(&g.id).map(|x| &x.table);
        let mut members = Vec::new();
        for (id, _) in st.members.iter().filter(|(_, r)| r.group == g.id) {
            let Some(v) = s.cluster.member(*id, now) else {
                continue;
            };
            let report = v.report.unwrap_or(&empty);
            let xdp = s.programs.member_stats(*id).map_err(internal)?;
            let count = |f: fn(&Bucket) -> u32| {
                table.map_or(0, |t| t.iter().filter(|b| f(b) == *id).count() as u32)
            };
            members.push(MemberStat {
                id: *id,
                state: v.state,
                smo: v.smo,
                rx_packets: report.rx_packets,
                tx_packets: report.tx_packets,
                drops: report.drops,
                connections: report.connections,
                backup_connections: report.backup_connections,
                policy_version: report.policy_version,
                policy_date: report.policy_date,
                isolated: v.isolated.clone(),
                join_blocked: v.join_blocked.clone(),
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
                last_heartbeat_ms: v.heard_ago.map(|d| d.as_millis() as u64),
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
    let s = lock(&shared);
    let p = &s
        .cluster
        .state()
        .groups
        .get(&q.group)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no group {}", q.group)))?
        .policy;
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

fn installed(reply: Reply) -> Result<Json<PolicyInstalled>, ApiError> {
    match reply {
        Reply::PolicyInstalled {
            group,
            version,
            members,
        } => {
            tracing::info!(group, version, ?members, "policy installed");
            Ok(Json(PolicyInstalled {
                group,
                version,
                members,
            }))
        }
        other => Err(internal(format!("unexpected reply {other:?}"))),
    }
}

/// Installs a policy on a group through its SMO master, everywhere or nowhere; answers
/// when it took effect on every serving member, or why it did not.
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
    let op = Op::PolicyInstall {
        group: req.group,
        target,
    };
    installed(
        request(&shared, op)
            .await
            .map_err(not_installed(policy.version))?,
    )
}

/// A refused or aborted install says so, with the version.
fn not_installed(version: u64) -> impl Fn(ApiError) -> ApiError {
    move |e| {
        if e.0 == StatusCode::CONFLICT
            && !e.1.contains("not newer")
            && !e.1.contains("being installed")
        {
            ApiError(
                e.0,
                format!("policy version {version} not installed anywhere: {}", e.1),
            )
        } else {
            e
        }
    }
}

/// Installs the group's previous policy version again.
async fn rollback_policy(
    State(shared): State<SharedRef>,
    Json(req): Json<PolicyRollback>,
) -> Result<Json<PolicyInstalled>, ApiError> {
    installed(request(&shared, Op::PolicyRollback { group: req.group }).await?)
}

/// Who runs which task: what the election assigns and what each member reports.
async fn task_stat(State(shared): State<SharedRef>) -> Json<TaskStat> {
    Json(lock(&shared).cluster.tasks())
}

/// HyperSync figures as the members last reported them.
async fn sync_stat(State(shared): State<SharedRef>) -> Json<SyncStat> {
    let s = lock(&shared);
    let now = Instant::now();
    let members = s
        .cluster
        .state()
        .members
        .keys()
        .filter_map(|id| s.cluster.member(*id, now))
        .map(|v| SyncMemberStat {
            id: v.id,
            state: v.state,
            sync: v.report.and_then(|r| r.sync.clone()).unwrap_or_default(),
        })
        .collect();
    Json(SyncStat { members })
}

/// Admits a member to a group: its downlink gets `egress`, and it joins when heard.
async fn add_member(
    State(shared): State<SharedRef>,
    Json(req): Json<MemberAdd>,
) -> Result<(StatusCode, Json<MemberState>), ApiError> {
    let op = Op::Add {
        member: req.id,
        group: req.group,
        site: req.site,
        downlink: req.downlink.clone(),
    };
    {
        let mut s = lock(&shared);
        s.cluster.check(&op).map_err(|r| {
            ApiError(
                match r.kind {
                    RefusalKind::NotFound => StatusCode::NOT_FOUND,
                    RefusalKind::Conflict => StatusCode::CONFLICT,
                    RefusalKind::BadRequest => StatusCode::BAD_REQUEST,
                },
                r.message,
            )
        })?;
        let slot = s
            .cluster
            .config()
            .group(req.group)
            .map_or(0, crate::config::GroupConfig::slot);
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
    }
    let reply = request(&shared, op).await?;
    tracing::info!(member = req.id, group = req.group, downlink = %req.downlink, "member added");
    Ok((StatusCode::CREATED, state_of(&reply)))
}

/// Removes a member: its buckets go to their backups, its downlink loses `egress`.
async fn remove_member(
    State(shared): State<SharedRef>,
    axum::extract::Path(member): axum::extract::Path<u32>,
) -> Result<Json<MemberState>, ApiError> {
    Ok(state_of(&request(&shared, Op::Remove { member }).await?))
}

/// Moves a member to another group: it leaves its group at once (buckets to their
/// backups) and rejoins the new one.
async fn move_member(
    State(shared): State<SharedRef>,
    axum::extract::Path(member): axum::extract::Path<u32>,
    Json(req): Json<MemberMove>,
) -> Result<Json<MemberState>, ApiError> {
    let op = Op::Move {
        member,
        group: req.group,
    };
    Ok(state_of(&request(&shared, op).await?))
}

/// Takes a member out of service administratively: its buckets switch to their backups
/// and it stays Detached, whatever its heartbeats say, until attached.
async fn detach(
    State(shared): State<SharedRef>,
    axum::extract::Path(member): axum::extract::Path<u32>,
) -> Result<Json<MemberState>, ApiError> {
    Ok(state_of(&request(&shared, Op::Detach { member }).await?))
}

/// Returns a Detached or Isolated member to service: it rejoins at its next heartbeat.
async fn attach(
    State(shared): State<SharedRef>,
    axum::extract::Path(member): axum::extract::Path<u32>,
) -> Result<Json<MemberState>, ApiError> {
    Ok(state_of(&request(&shared, Op::Attach { member }).await?))
}

/// Asks a member to run `workers` worker instances; it applies the change at its next
/// heartbeat, moving its connections between workers without dropping any.
async fn set_workers(
    State(shared): State<SharedRef>,
    axum::extract::Path(member): axum::extract::Path<u32>,
    Json(body): Json<WorkersRequest>,
) -> Result<Json<WorkersRequest>, ApiError> {
    let op = Op::Workers {
        member,
        workers: body.workers,
    };
    request(&shared, op).await?;
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
    let s = lock(&shared);
    let g = s
        .cluster
        .config()
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
        None | Some("tcp") => IPPROTO_TCP,
        Some("udp") => IPPROTO_UDP,
        Some("sctp") => IPPROTO_SCTP,
        Some("icmp") => IPPROTO_ICMP,
        Some(other) => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("unknown protocol {other:?}: use tcp, udp, sctp or icmp"),
            ))
        }
    };
    let s = lock(&shared);
    // The ingress uplink is the one whose prefixes hold the source (longest match).
    let uplink = s
        .uplinks
        .iter()
        .filter_map(|u| {
            u.prefixes
                .iter()
                .filter(|p| p.contains(&q.src))
                .map(ipnet::IpNet::prefix_len)
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
        .cluster
        .config()
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
