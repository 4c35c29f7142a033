//! `baton sgm`: a member. Attaches `steer` to its data port, runs the AF_XDP worker pinned
//! to a core, and sends heartbeats with its counters to the orchestrator.

use std::{
    net::UdpSocket,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use baton_control::{
    ccp::{self, Heartbeat, HeartbeatAck, MemberReport},
    config::Config,
    membership::MemberState,
};
use baton_dataplane::{
    conntrack::{ConnTable, Timeouts},
    dispatch::{Dispatcher, MakeForwarder, WorkerStats, WORKERS_MAX},
    forward::{DropReason, Forwarder, NeighbourLimits},
    loader::Member,
    policy::Policy,
    port::{self, Control, PortConfig, PortStats, QUEUES_MAX},
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
}

pub fn run(opts: Options) -> anyhow::Result<()> {
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
        Box::new(move |n| {
            Forwarder::new(
                sides.clone(),
                NeighbourLimits::default(),
                ConnTable::new(table_size.div_ceil(n), Timeouts::default()),
                policy.clone(),
            )
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
            let cores: Vec<usize> = match &opts.worker_cores {
                Some(list) => list.clone(),
                None => {
                    let n = std::thread::available_parallelism().map_or(1, |c| c.get());
                    (0..WORKERS_MAX).map(|i| i % n).collect()
                }
            };
            let (d, ws) = Dispatcher::new(workers, make, &cores)?;
            worker_stats = Some(ws);
            Ok(d)
        } else {
            Err(make(1))
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

    super::raise_priority("ccp");
    let interval = Duration::from_millis(config.orchestrator.heartbeat_interval_ms);
    let sock = UdpSocket::bind("0.0.0.0:0").context("binding the CCP socket")?;
    sock.connect(config.orchestrator.ccp)
        .with_context(|| format!("no route to the orchestrator {}", config.orchestrator.ccp))?;
    sock.set_read_timeout(Some(interval / 4))?;
    let mut seq = 0u64;
    let mut requested_workers = workers;
    let mut state = MemberState::Down;
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
        if Instant::now() >= next {
            next += interval;
            seq += 1;
            let hb = Heartbeat {
                member: opts.id,
                seq,
                ready: ready.load(Ordering::Acquire),
                report: MemberReport {
                    rx_packets: stats.rx_packets.load(Ordering::Relaxed),
                    tx_packets: stats.tx_packets.load(Ordering::Relaxed),
                    rx_bytes: stats.rx_bytes.load(Ordering::Relaxed),
                    tx_bytes: stats.tx_bytes.load(Ordering::Relaxed),
                    drops: stats.drops_total(),
                    connections: stats.connections.load(Ordering::Relaxed),
                    backup_connections: 0,
                    policy_version: stats.policy_version.load(Ordering::Relaxed),
                    workers: current_workers(&worker_stats) as u32,
                    worker_packets: worker_stats.as_ref().map_or_else(
                        || vec![stats.rx_packets.load(Ordering::Relaxed)],
                        |w| {
                            w.packets[..current_workers(&worker_stats)]
                                .iter()
                                .map(|p| p.load(Ordering::Relaxed))
                                .collect()
                        },
                    ),
                    worker_bytes: worker_stats.as_ref().map_or_else(
                        || vec![stats.rx_bytes.load(Ordering::Relaxed)],
                        |w| {
                            w.bytes[..current_workers(&worker_stats)]
                                .iter()
                                .map(|p| p.load(Ordering::Relaxed))
                                .collect()
                        },
                    ),
                    worker_drops: worker_stats.as_ref().map_or_else(
                        || vec![named_drops(&stats.drops)],
                        |w| {
                            w.drops[..current_workers(&worker_stats)]
                                .iter()
                                .map(named_drops)
                                .collect()
                        },
                    ),
                    worker_connections: worker_stats.as_ref().map_or_else(
                        || vec![stats.connections.load(Ordering::Relaxed)],
                        |w| {
                            w.connections[..current_workers(&worker_stats)]
                                .iter()
                                .map(|p| p.load(Ordering::Relaxed))
                                .collect()
                        },
                    ),
                    drop_reasons: named_drops(&stats.drops),
                    table_capacity: opts.table_size as u64,
                    queue_packets: stats.queue_packets[..(opts.queues as usize).min(QUEUES_MAX)]
                        .iter()
                        .map(|q| q.load(Ordering::Relaxed))
                        .collect(),
                    latency_p50_ns: stats.latency_p50_ns.load(Ordering::Relaxed),
                    latency_p99_ns: stats.latency_p99_ns.load(Ordering::Relaxed),
                },
            };
            // The orchestrator may not be up yet: keep trying, never give up.
            let _ = sock.send(&ccp::encode(&hb));
        }
        if let Ok(n) = sock.recv(&mut buf) {
            if let Some(ack) = ccp::decode::<HeartbeatAck>(&buf[..n]) {
                // The orchestrator asks for another worker count (Dynamic Balancing).
                if let Some(n) = ack.workers.map(|n| n as usize) {
                    if n != requested_workers {
                        requested_workers = n;
                        let _ = control_tx.send(Control::Workers(n));
                    }
                }
                if ack.state != state {
                    tracing::info!(from = ?state, to = ?ack.state, smo = ?ack.smo, "member state");
                    state = ack.state;
                }
            }
        }
    }
    let r = worker
        .join()
        .map_err(|_| anyhow::anyhow!("worker panicked"))?;
    r.context("data port")?;
    tracing::info!("member stopped");
    Ok(())
}

/// Workers running now (one when the port runs its forwarder itself).
fn current_workers(stats: &Option<Arc<WorkerStats>>) -> usize {
    stats
        .as_ref()
        .map_or(1, |w| w.workers.load(Ordering::Relaxed) as usize)
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
