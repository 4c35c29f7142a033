//! `baton sgm`: a member. Attaches `steer` to its data port, runs the AF_XDP worker pinned
//! to a core, and runs the member agent (`agent.rs`) over the CCP socket: heartbeats with
//! its counters out, the orchestrator's answers in.

use std::{
    net::UdpSocket,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use crate::{
    agent::{Agent, AgentAction},
    ccp::{self, HeartbeatAck, MemberReport},
    config::{Config, GroupConfig, Role},
    search, tasks,
};
use anyhow::Context;
use baton_dataplane::{
    conntrack::{ConnTable, FlowKey, Timeouts},
    dispatch::{Dispatcher, MakeForwarder, WorkerStats, WORKERS_MAX},
    forward::{Forwarder, NeighbourLimits},
    loader::Member,
    policy::Policy,
    port::{self, Control, PortConfig, PortStats, QUEUES_MAX},
    sync::{
        engine::{Engine, SyncReport},
        proto::{self, Endpoint, GroupKey},
        tap::{Bucketer, Outbound, SyncTap},
    },
    verdict::DropReason,
};

/// `baton sgm`'s options.
#[derive(clap::Args)]
pub struct Options {
    #[arg(long)]
    pub config: PathBuf,
    /// Member id (1..=63), as in the configuration.
    #[arg(long)]
    pub id: u32,
    /// The member's data port.
    #[arg(long, default_value = "dl0")]
    pub data_port: String,
    /// Core to pin the port's thread to.
    #[arg(long)]
    pub worker_core: Option<usize>,
    /// Policy file (TOML), reloaded on SIGHUP; without it every connection is accepted.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Connection table capacity (shared out among the workers).
    #[arg(long, default_value_t = 1_000_000)]
    pub table_size: usize,
    /// Worker instances (CoreXL); more than one puts the dispatcher in front of them.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Cores to pin the workers to, comma-separated (default: round-robin over the cores).
    #[arg(long, value_delimiter = ',')]
    pub worker_cores: Option<Vec<usize>>,
    /// First queue of the data port the AF_XDP sockets bind to.
    #[arg(long, default_value_t = 0)]
    pub queue: u32,
    /// Queues to serve, one AF_XDP socket each (`--queue` onwards), all by the port's
    /// thread, so a connection's two directions meet whatever queue each arrives on.
    #[arg(long, default_value_t = 1)]
    pub queues: u32,
    /// UMEM frames (at least twice the ring size).
    #[arg(long, default_value_t = 4096)]
    pub umem_frames: u32,
    /// Size of the fill, completion, RX and TX rings (a power of two).
    #[arg(long, default_value_t = 2048)]
    pub ring_size: u32,
    /// Frames handled per batch.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Busy-poll the queue with this budget (needs a dedicated core).
    #[arg(long)]
    pub busy_poll: Option<u32>,
    /// The member's sync port (HyperSync frames to and from the other members).
    #[arg(long, default_value = "sync0")]
    pub sync_port: String,
    /// Longest a connection's first reply waits for the backup's acknowledgement (ms).
    #[arg(long, default_value_t = 100)]
    pub sync_hold_ms: u64,
}

/// HyperSync's parts in a member: the tap its workers write to, and what the sync thread
/// needs.
struct SyncSetup {
    tap: Arc<SyncTap>,
    records: crossbeam_channel::Receiver<Outbound>,
    key: GroupKey,
    mac: [u8; 6],
}

fn sync_setup(opts: &Options, group: &GroupConfig) -> anyhow::Result<Option<SyncSetup>> {
    if !group.sync {
        tracing::info!(group = group.id, "HyperSync is off for this group");
        return Ok(None);
    }
    let path = group.sync_key_file.as_ref().with_context(|| {
        format!(
            "group {} has sync on but no sync_key_file (64 hex digits) in its configuration",
            group.id
        )
    })?;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the sync key {}", path.display()))?;
    let text = text.trim();
    let mut key = [0u8; 32];
    if text.len() != 64 || !text.is_ascii() {
        anyhow::bail!("the sync key {} must be 64 hex digits", path.display());
    }
    for (i, b) in key.iter_mut().enumerate() {
        *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
            .with_context(|| format!("the sync key {} must be 64 hex digits", path.display()))?;
    }
    let mac_text = std::fs::read_to_string(format!("/sys/class/net/{}/address", opts.sync_port))
        .with_context(|| format!("sync port {} not found", opts.sync_port))?;
    let mac = ccp::parse_mac(&mac_text)
        .with_context(|| format!("sync port {}: bad MAC {mac_text:?}", opts.sync_port))?;
    let (tap, records) = SyncTap::new(
        1 << 16,
        opts.table_size,
        Duration::from_millis(opts.sync_hold_ms),
        bucketer(group),
    );
    Ok(Some(SyncSetup {
        tap,
        records,
        key: GroupKey(key),
        mac,
    }))
}

/// The flow hash `distribute` gives a connection: keyed as its external uplink sees it,
/// the external host as the source.
fn bucketer(group: &GroupConfig) -> Bucketer {
    let key = group.key_for(Role::External);
    let external = group.sides()[Role::External.index()].prefixes.clone();
    Arc::new(move |k: &FlowKey| {
        let (lo, hi) = k.addresses();
        let (lo_port, hi_port) = k.ports();
        let lo_outside = external.iter().any(|p| p.contains(&lo));
        let (src, dst, sport, dport) = if lo_outside {
            (lo, hi, lo_port, hi_port)
        } else {
            (hi, lo, hi_port, lo_port)
        };
        search::packet_hash(key, src, dst, k.proto(), sport, dport)
    })
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    let config = Config::load(&opts.config)?;
    if opts.queues == 0 || opts.queues as usize > QUEUES_MAX {
        anyhow::bail!("--queues must be 1..={QUEUES_MAX}, not {}", opts.queues);
    }
    let group = config
        .group_of(opts.id)
        .with_context(|| {
            format!(
                "member {} is not in any group of {}",
                opts.id,
                opts.config.display()
            )
        })?
        .clone();
    let sync = sync_setup(opts, &group)?;
    let mut programs = Member::load()?;
    programs.attach_steer(&opts.data_port, config.orchestrator.xdp_driver_mode)?;

    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    let stats = Arc::new(PortStats::default());
    let ready = Arc::new(AtomicBool::new(false));
    let policy = match &opts.policy {
        Some(p) => Arc::new(Policy::load(p)?),
        None => Arc::new(Policy::accept_all(1)),
    };
    // Each worker owns its share of the table; together they hold `table_size`.
    let workers = opts.workers.clamp(1, WORKERS_MAX);
    let make: MakeForwarder = {
        let (sides, table_size, policy) = (group.sides(), opts.table_size, policy.clone());
        let tap = sync.as_ref().map(|s| s.tap.clone());
        Box::new(move |i, n| {
            let mut f = Forwarder::new(
                sides.clone(),
                NeighbourLimits::default(),
                ConnTable::new(table_size.div_ceil(n), Timeouts::default()),
                policy.clone(),
            );
            if let Some(tap) = &tap {
                f.set_sync(tap.clone(), i);
            }
            f
        })
    };
    let (control_tx, control_rx) = crossbeam_channel::bounded(4);
    let reload = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, reload.clone())?;
    let port_cfg = PortConfig {
        iface: opts.data_port.clone(),
        queue: opts.queue,
        queues: opts.queues,
        frames: opts.umem_frames,
        ring: opts.ring_size,
        batch: opts.batch,
        busy_poll: opts.busy_poll,
        ..Default::default()
    };

    let mut worker_stats = None;
    let worker = {
        let (stats, stop, ready) = (stats.clone(), stop.clone(), ready.clone());
        let core = opts.worker_core;
        // One worker runs in the port's own thread; more run behind the dispatcher.
        let dispatcher = if workers > 1 {
            let cores: Vec<usize> = if let Some(list) = &opts.worker_cores {
                list.clone()
            } else {
                let n = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
                (0..WORKERS_MAX).map(|i| i % n).collect()
            };
            let (d, ws) = Dispatcher::new(workers, make, &cores)?;
            worker_stats = Some(ws);
            Ok(d)
        } else {
            Err(make(0, 1))
        };
        std::thread::Builder::new()
            .name("port0".into())
            .spawn(move || {
                if let Some(c) = core {
                    if !core_affinity::set_for_current(core_affinity::CoreId { id: c }) {
                        tracing::warn!(core = c, "could not pin the worker");
                    }
                }
                let on_ready = || ready.store(true, Ordering::Release);
                let r = match dispatcher {
                    Ok(d) => port::run(
                        &port_cfg,
                        &mut programs,
                        d,
                        stats,
                        stop.clone(),
                        control_rx,
                        on_ready,
                    ),
                    Err(fwd) => port::run(
                        &port_cfg,
                        &mut programs,
                        fwd,
                        stats,
                        stop.clone(),
                        control_rx,
                        on_ready,
                    ),
                };
                // A dead data path must not keep sending heartbeats.
                stop.store(true, Ordering::Release);
                r
            })?
    };

    let sync_report = Arc::new(Mutex::new(SyncReport::default()));
    let (views_tx, views_rx) = crossbeam_channel::bounded(4);
    let mut sync_mac = None;
    let sync_thread = match sync {
        None => None,
        Some(s) => {
            sync_mac = Some(
                s.mac
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":"),
            );
            let mut sync_programs = Member::load()?;
            sync_programs.attach_steer(&opts.sync_port, config.orchestrator.xdp_driver_mode)?;
            let epoch = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64);
            let endpoint = Endpoint::new(
                proto::Config {
                    group: group.id,
                    me: opts.id,
                    epoch,
                    ..Default::default()
                },
                &s.key,
            );
            let engine = Engine::new(opts.id, endpoint, s.tap.bucketer.clone());
            let cfg = PortConfig {
                iface: opts.sync_port.clone(),
                ..Default::default()
            };
            let (report, stop) = (sync_report.clone(), stop.clone());
            Some(
                std::thread::Builder::new()
                    .name("sync".into())
                    .spawn(move || {
                        let r = baton_dataplane::sync::io::run(
                            &cfg,
                            &mut sync_programs,
                            s.mac,
                            baton_dataplane::sync::io::SyncParts {
                                engine,
                                tap: s.tap,
                                records: s.records,
                            },
                            views_rx,
                            report,
                            stop.clone(),
                        );
                        if let Err(e) = &r {
                            tracing::error!("sync port failed: {e}");
                        }
                        // A member that cannot sync must not go on as if it did.
                        stop.store(true, Ordering::Release);
                        r
                    })?,
            )
        }
    };

    super::raise_priority("ccp");
    let interval = Duration::from_millis(config.orchestrator.heartbeat_interval_ms);
    let sock = UdpSocket::bind("0.0.0.0:0").context("binding the CCP socket")?;
    sock.connect(config.orchestrator.ccp)
        .with_context(|| format!("no route to the orchestrator {}", config.orchestrator.ccp))?;
    sock.set_read_timeout(Some(interval / 4))?;
    // The start time is this process's incarnation: a restart gives a larger one.
    let boot = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let mut agent = Agent::new(opts.id, boot, group.id, workers);
    let mut next = Instant::now();
    let mut buf = vec![0u8; ccp::MAX_DATAGRAM];
    tracing::info!(member = opts.id, group = group.id, "member started");
    while !stop.load(Ordering::Acquire) {
        if reload.swap(false, Ordering::AcqRel) {
            match opts.policy.as_deref().map(Policy::load) {
                Some(Ok(p)) => {
                    tracing::info!(version = p.version, "policy reloaded");
                    let _ = control_tx.send(Control::Policy(Arc::new(p)));
                }
                // A broken file changes nothing: the running policy stays.
                Some(Err(e)) => tracing::error!("policy not reloaded: {e}"),
                None => tracing::warn!("SIGHUP without --policy: nothing to reload"),
            }
        }
        let enforced = stats.policy_version.load(Ordering::Relaxed);
        if Instant::now() >= next {
            next += interval;
            let n = current_workers(worker_stats.as_ref());
            let per_worker =
                |pick: fn(&WorkerStats) -> &[std::sync::atomic::AtomicU64; WORKERS_MAX],
                 own: &std::sync::atomic::AtomicU64| {
                    worker_stats.as_ref().map_or_else(
                        || vec![own.load(Ordering::Relaxed)],
                        |w| {
                            pick(w)[..n]
                                .iter()
                                .map(|p| p.load(Ordering::Relaxed))
                                .collect()
                        },
                    )
                };
            let report = MemberReport {
                rx_packets: stats.rx_packets.load(Ordering::Relaxed),
                tx_packets: stats.tx_packets.load(Ordering::Relaxed),
                rx_bytes: stats.rx_bytes.load(Ordering::Relaxed),
                tx_bytes: stats.tx_bytes.load(Ordering::Relaxed),
                drops: stats.drops_total(),
                connections: stats.connections.load(Ordering::Relaxed),
                workers: n as u32,
                worker_packets: per_worker(|w| &w.packets, &stats.rx_packets),
                worker_bytes: per_worker(|w| &w.bytes, &stats.rx_bytes),
                worker_connections: per_worker(|w| &w.connections, &stats.connections),
                worker_drops: worker_stats.as_ref().map_or_else(
                    || vec![named_drops(&stats.drops)],
                    |w| w.drops[..n].iter().map(named_drops).collect(),
                ),
                drop_reasons: {
                    let mut d = named_drops(&stats.drops);
                    let no_socket = stats.no_socket.load(Ordering::Relaxed);
                    if no_socket > 0 {
                        d.insert("no_socket".into(), no_socket);
                    }
                    d
                },
                table_capacity: opts.table_size as u64,
                queue_packets: stats.queue_packets[..(opts.queues as usize).min(QUEUES_MAX)]
                    .iter()
                    .map(|q| q.load(Ordering::Relaxed))
                    .collect(),
                latency_p50_ns: stats.latency_p50_ns.load(Ordering::Relaxed),
                latency_p99_ns: stats.latency_p99_ns.load(Ordering::Relaxed),
                sync: sync_thread.as_ref().map(|_| {
                    sync_report
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .clone()
                }),
                sync_mac: sync_mac.clone(),
                ..Default::default()
            };
            let hb = agent.heartbeat(ready.load(Ordering::Acquire), enforced, report);
            // The orchestrator may not be up yet: keep trying, never give up.
            let _ = sock.send(&ccp::encode(&hb));
        }
        let Ok(n) = sock.recv(&mut buf) else {
            continue;
        };
        let Some(ack) = ccp::decode::<HeartbeatAck>(&buf[..n]) else {
            tracing::warn!(bytes = n, "malformed answer from the orchestrator ignored");
            continue;
        };
        let malformed = agent.malformed_tables;
        for action in agent.handle(&ack, enforced) {
            match action {
                AgentAction::Workers(n) => {
                    let _ = control_tx.send(Control::Workers(n));
                }
                AgentAction::Moved { to } => {
                    // Its settings (sides, sync key) are another group's now; the
                    // supervisor restarts it with them.
                    tracing::error!(
                        from = group.id,
                        to,
                        "member moved to another group: stopping to be restarted"
                    );
                    stop.store(true, Ordering::Release);
                }
                AgentAction::Enforce(p) => {
                    let version = p.version;
                    if control_tx.try_send(Control::Policy(p)).is_err() {
                        agent.enforce_failed(version);
                    }
                }
                AgentAction::View(v) => {
                    if sync_thread.is_some() {
                        let _ = views_tx.try_send(v);
                    }
                }
                AgentAction::Role { state, smo } => {
                    tracing::info!(to = state.word(), ?smo, tasks = ?tasks::tasks_for(opts.id, state, smo), "member state");
                }
            }
        }
        if agent.malformed_tables > malformed {
            tracing::warn!("malformed bucket table from the orchestrator ignored");
        }
    }
    let r = worker
        .join()
        .map_err(|_| anyhow::anyhow!("worker panicked"))?;
    r.context("data port")?;
    if let Some(t) = sync_thread {
        t.join()
            .map_err(|_| anyhow::anyhow!("sync thread panicked"))?
            .context("sync port")?;
    }
    tracing::info!("member stopped");
    Ok(())
}

/// Workers running now (one when the port runs its forwarder itself).
fn current_workers(stats: Option<&Arc<WorkerStats>>) -> usize {
    stats.map_or(1, |w| w.workers.load(Ordering::Relaxed) as usize)
}

/// Non-zero drop counters by reason name.
fn named_drops(
    drops: &[std::sync::atomic::AtomicU64; DropReason::COUNT],
) -> std::collections::BTreeMap<String, u64> {
    DropReason::NAMES
        .iter()
        .zip(drops)
        .map(|(n, d)| (n.to_string(), d.load(Ordering::Relaxed)))
        .filter(|(_, d)| *d > 0)
        .collect()
}
