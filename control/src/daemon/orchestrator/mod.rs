//! `baton orchestrator`: the I/O around the cluster core. It attaches `distribute` and
//! `egress`, feeds heartbeats and ticks (on a high-priority CCP thread) and the API's
//! requests to [`Cluster`], and carries out what comes back: ports and bucket tables into
//! the kernel maps, answers to members, replies to the API, the log and the configuration
//! to disk. No decision is taken here.

mod http;

use std::{
    collections::BTreeMap,
    net::{SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::{
    ccp::{self, Heartbeat},
    cluster::{self, store, Cluster, Input, Op, Output, Refusal, Reply},
    config::{Config, Role},
    policy_dist::PolicyVersion,
};
use anyhow::Context;
use baton_common::{DownlinkConf, GroupConf, UplinkConf};
use baton_dataplane::loader::{ifindex, Orchestrator};

struct Uplink {
    iface: String,
    group: u32,
    role: Role,
    slot: u32,
    key: u32,
    prefixes: Vec<ipnet::IpNet>,
}

type Waiter = tokio::sync::oneshot::Sender<Result<Reply, Refusal>>;

struct Shared {
    cluster: Cluster,
    /// Where the configuration lives: members added, removed or moved are written back.
    config_path: PathBuf,
    programs: Orchestrator,
    /// Each member's downlink ifindex.
    downlinks: BTreeMap<u32, u32>,
    uplinks: Vec<Uplink>,
    /// API requests waiting for the core's reply.
    next_request: u64,
    waiting: BTreeMap<u64, Waiter>,
}

type SharedRef = Arc<Mutex<Shared>>;

/// Locks the shared state even if a thread panicked while holding it: every change to it
/// is made whole by the core before any I/O, so what a panic leaves is consistent.
fn lock(shared: &SharedRef) -> std::sync::MutexGuard<'_, Shared> {
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    /// Feeds one input to the core and carries out its outputs; answers go to `from`.
    fn handle(
        &mut self,
        now: Instant,
        input: Input,
        answer: Option<(&UdpSocket, SocketAddr)>,
    ) -> anyhow::Result<()> {
        let outputs = self.cluster.handle(now, input);
        self.perform(outputs, answer)
    }

    fn perform(
        &mut self,
        outputs: Vec<Output>,
        answer: Option<(&UdpSocket, SocketAddr)>,
    ) -> anyhow::Result<()> {
        let mut logged = false;
        for o in outputs {
            match o {
                Output::Logged(e) => {
                    tracing::info!(index = e.index, command = ?e.command, "cluster");
                    logged = true;
                }
                Output::Port { member, enabled } => {
                    if enabled {
                        let idx = *self
                            .downlinks
                            .get(&member)
                            .with_context(|| format!("member {member} has no downlink"))?;
                        self.programs.add_member_port(member, idx)?;
                    } else {
                        self.programs.remove_member_port(member)?;
                    }
                }
                Output::Table { group, buckets } => {
                    let slot = self
                        .cluster
                        .config()
                        .group(group)
                        .with_context(|| format!("no group {group}"))?
                        .slot();
                    self.programs.install_buckets(slot, &buckets)?;
                }
                Output::DownlinkDetach { member, iface } => {
                    self.programs.detach_downlink(&iface)?;
                    self.downlinks.remove(&member);
                }
                Output::DownlinkGroup { member, group } => {
                    let slot = self
                        .cluster
                        .config()
                        .group(group)
                        .map_or(0, super::super::config::GroupConfig::slot);
                    if let Some(idx) = self.downlinks.get(&member).copied() {
                        self.programs.configure_downlink(
                            idx,
                            DownlinkConf {
                                group: slot,
                                member,
                            },
                        )?;
                    }
                }
                Output::ConfigChanged => {
                    let path = &self.config_path;
                    self.cluster.config().save(path).with_context(|| {
                        format!(
                            "the change is made but {} could not be written",
                            path.display()
                        )
                    })?;
                }
                Output::Answer { ack, .. } => {
                    if let Some((sock, to)) = answer {
                        if let Err(e) = sock.send_to(&ccp::encode(&ack), to) {
                            tracing::warn!(member = ack.member, %to, "answer not sent: {e}");
                        }
                    }
                }
                Output::Reply { id, result } => {
                    if let Some(w) = self.waiting.remove(&id) {
                        let _ = w.send(result);
                    }
                }
            }
        }
        if logged {
            self.store();
        }
        Ok(())
    }

    /// Writes the snapshot and log (a failure is logged: the data path goes on).
    fn store(&self) {
        let path = &self.cluster.config().orchestrator.state_file;
        if path.as_os_str().is_empty() {
            return;
        }
        if let Err(e) = store::save(path, &self.cluster.stored()) {
            tracing::error!("{e}");
        }
    }

    /// Registers an API request; its reply arrives on the receiver.
    fn request(
        &mut self,
        op: Op,
    ) -> anyhow::Result<tokio::sync::oneshot::Receiver<Result<Reply, Refusal>>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.next_request += 1;
        let id = self.next_request;
        self.waiting.insert(id, tx);
        self.handle(Instant::now(), Input::Request { id, op }, None)?;
        Ok(rx)
    }
}

pub fn run(config_path: &Path) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let o = &config.orchestrator;
    let mut programs = if o.bpf_pin_dir.as_os_str().is_empty() {
        Orchestrator::load(o.xdp_driver_mode)?
    } else {
        Orchestrator::load_pinned(o.xdp_driver_mode, &o.bpf_pin_dir)?
    };
    let stored = if o.state_file.as_os_str().is_empty() {
        None
    } else {
        store::load(&o.state_file, &config)?
    };
    if let Some(s) = &stored {
        tracing::info!(
            snapshot_index = s.snapshot_index,
            entries = s.tail.len(),
            "state restored from {}",
            o.state_file.display()
        );
    }
    let mut uplinks = Vec::new();
    let mut downlinks = BTreeMap::new();
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
    // The groups' first policy, for groups that have none yet.
    let seed = match &config.orchestrator.policy_file {
        Some(f) => {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("reading the policy {}", f.display()))?;
            let p = baton_dataplane::policy::Policy::parse(&text)
                .with_context(|| format!("the policy {}", f.display()))?;
            Some(PolicyVersion {
                version: p.version,
                text,
                installed_at: unix_now(),
            })
        }
        None => None,
    };
    let opts = cluster::Options::from_config(&config);
    let (cluster, outputs) = Cluster::new(config.clone(), opts, stored, seed, Instant::now());
    let mut shared = Shared {
        cluster,
        config_path: config_path.to_path_buf(),
        programs,
        downlinks,
        uplinks,
        next_request: 0,
        waiting: BTreeMap::new(),
    };
    shared.perform(outputs, None)?;
    shared.store();
    let shared = Arc::new(Mutex::new(shared));
    tracing::info!(groups = config.groups.len(), "XDP programs attached");

    let sock = UdpSocket::bind(config.orchestrator.ccp)
        .with_context(|| format!("binding the CCP socket {}", config.orchestrator.ccp))?;
    let ccp_shared = shared.clone();
    std::thread::Builder::new()
        .name("ccp".into())
        .spawn(move || {
            super::raise_priority("ccp");
            if let Err(e) = ccp_loop(&sock, &ccp_shared) {
                tracing::error!("CCP loop failed: {e:#}");
                std::process::exit(1);
            }
        })?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(http::serve(config.orchestrator.clone(), shared))
}

/// Heartbeats in, answers out, and a tick at a tenth of the heartbeat interval (which
/// bounds detection to interval × dead count + interval/10).
fn ccp_loop(sock: &UdpSocket, shared: &SharedRef) -> anyhow::Result<()> {
    let interval = lock(shared).cluster.options().heartbeat_interval;
    let tick = (interval / 10).max(Duration::from_millis(1));
    sock.set_read_timeout(Some(tick))?;
    let mut buf = vec![0u8; ccp::MAX_DATAGRAM];
    let mut last_tick = Instant::now();
    loop {
        let received = recv(sock, &mut buf)?;
        let mut s = lock(shared);
        if let Some((n, from)) = received {
            heartbeat_in(&mut s, sock, &buf[..n], from, Instant::now())?;
        }
        if Instant::now().duration_since(last_tick) >= tick {
            // Every heartbeat already queued is heard before the tick judges who is
            // silent: when this thread was starved (a loaded machine), the members' latest
            // heartbeats wait in the socket, and a tick first would take them for dead.
            sock.set_nonblocking(true)?;
            let drained = drain(sock, &mut buf, &mut s);
            sock.set_nonblocking(false)?;
            drained?;
            let now = Instant::now();
            last_tick = now;
            s.handle(now, Input::Tick, None)?;
        }
    }
}

/// One datagram, or none when the read timed out (or, non-blocking, nothing is queued).
fn recv(sock: &UdpSocket, buf: &mut [u8]) -> std::io::Result<Option<(usize, SocketAddr)>> {
    match sock.recv_from(buf) {
        Ok(r) => Ok(Some(r)),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn drain(sock: &UdpSocket, buf: &mut [u8], s: &mut Shared) -> anyhow::Result<()> {
    while let Some((n, from)) = recv(sock, buf)? {
        heartbeat_in(s, sock, &buf[..n], from, Instant::now())?;
    }
    Ok(())
}

fn heartbeat_in(
    s: &mut Shared,
    sock: &UdpSocket,
    datagram: &[u8],
    from: SocketAddr,
    now: Instant,
) -> anyhow::Result<()> {
    match ccp::decode::<Heartbeat>(datagram) {
        Some(hb) if s.cluster.state().members.contains_key(&hb.member) => {
            let xdp = s.programs.member_stats(hb.member).unwrap_or_default();
            let input = Input::Heartbeat {
                hb: Box::new(hb),
                to_member: xdp.to_member_packets,
                from_member: xdp.from_member_packets,
            };
            s.handle(now, input, Some((sock, from)))?;
        }
        Some(hb) => {
            tracing::warn!(member = hb.member, %from, "heartbeat from an unconfigured member ignored");
        }
        None => tracing::warn!(%from, bytes = datagram.len(), "malformed CCP datagram ignored"),
    }
    Ok(())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
