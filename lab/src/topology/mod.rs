//! `baton lab`: the whole topology on one machine, in network namespaces joined by veth
//! pairs (the lab contract in the README). Every link is created with both ends inside
//! lab namespaces, so deleting the namespaces removes every link and bridge; `down` also
//! kills the lab's processes and removes its state directory, whatever state `up` left.

use std::fmt::Write as _;
use std::{
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use baton_control::{
    api::{Client, Stat},
    config::{
        default_api_socket, Config, GroupConfig, MemberConfig, Mode, OrchestratorConfig, Role,
        UplinkConfig, CCP_PORT, MEMBERS_PER_GROUP_MAX,
    },
    membership::MemberState,
};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::LabError;

mod fail;
pub use fail::{fail, restore, Failure, LinkEnd, Part};

pub const NS_EXT: &str = "bt-ext";
pub const NS_INT: &str = "bt-int";
pub const NS_ORCH: &str = "bt-orch";
/// Every lab namespace starts with this.
pub const NS_PREFIX: &str = "bt-";
pub const STATE_DIR: &str = "/run/baton/lab";
/// The lab's API token (in the state directory) and the API's TCP port.
pub const API_TOKEN_FILE: &str = "api.token";
pub const API_TCP_PORT: u16 = 8117;
/// The bpf filesystem the lab's orchestrator pins its maps and attachments in (mounted by
/// `lab up` outside the namespaces, so a restarted orchestrator finds them).
pub const PIN_DIR: &str = "/run/baton/bpf";
/// Hosts own .1 to .63 of their side.
pub const HOSTS_PER_SIDE: u8 = 63;
/// How long `up` waits for every member to be Active.
pub const UP_TIMEOUT: Duration = Duration::from_secs(60);

/// The lab's options (`LabOptions` as JSON) in the state directory, written by `up`, so a
/// later command (`restore`) starts a daemon as `up` did.
pub const OPTIONS_FILE: &str = "lab.json";

/// The members' policy file in the state directory (rewrite it and send SIGHUP to the
/// members to replace the policy).
pub const POLICY_FILE: &str = "policy.toml";
/// The lab's policy, version 1: any connection opened by a valid first packet, from either
/// side; the connection table drops what belongs to no connection.
pub const DEFAULT_POLICY: &str = r#"version = 1

[[rules]]
name = "lab: any connection opened from either side"
action = "accept"
"#;

pub fn ns_sgm(k: u32) -> String {
    format!("bt-sgm{k}")
}

/// Options of `baton lab up` (kept in the state directory as [`OPTIONS_FILE`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
// Each bool is an independent switch of `baton lab up`.
#[allow(clippy::struct_excessive_bools)]
pub struct LabOptions {
    pub sgms: u32,
    pub sync: bool,
    pub mode: Mode,
    /// L4 ports in the flow key.
    pub l4: bool,
    /// Connection table capacity of each member.
    pub table_size: usize,
    /// Worker instances per member.
    pub workers: usize,
    /// Queues of each member's data port (and of its downlink), one AF_XDP socket each.
    pub queues: u32,
    /// Busy-poll budget of the members' sockets (None: interrupts and `poll`).
    pub busy_poll: Option<u32>,
    /// Heartbeat interval of the group (the dead interval is 3 of them).
    pub heartbeat_ms: u64,
    /// Pin the orchestrator's maps and attachments (so its restart interrupts nothing);
    /// off only for the negative control of that.
    pub pins: bool,
    /// Isolate data-path partitions (off only for the negative control of that).
    pub isolation: bool,
    /// The `baton` binary the daemons run.
    pub exe: PathBuf,
}

impl LabOptions {
    /// `baton lab up`'s defaults, running the daemons from `exe`.
    pub fn new(exe: PathBuf) -> Self {
        Self {
            sgms: 3,
            sync: true,
            mode: Mode::General,
            l4: false,
            table_size: 1_000_000,
            workers: 1,
            queues: 1,
            busy_poll: None,
            heartbeat_ms: 100,
            pins: true,
            isolation: true,
            exe,
        }
    }
}

/// The options of the lab that is up, as `up` recorded them.
pub fn options() -> Result<LabOptions, LabError> {
    let path = Path::new(STATE_DIR).join(OPTIONS_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(LabError::NotUp(path.display().to_string()))
        }
        Err(e) => return Err(e.into()),
    };
    serde_json::from_str(&text).map_err(|e| LabError::Output {
        cmd: format!("read {}", path.display()),
        detail: e.to_string(),
    })
}

fn run(cmd: &mut Command) -> Result<String, LabError> {
    let out = cmd.stdin(Stdio::null()).output()?;
    if !out.status.success() {
        return Err(LabError::Command {
            cmd: format!("{cmd:?}").replace('"', ""),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn ip(args: &[&str]) -> Result<String, LabError> {
    run(Command::new("ip").args(args))
}

fn in_ns(ns: &str, args: &[&str]) -> Result<String, LabError> {
    run(Command::new("ip").args(["netns", "exec", ns]).args(args))
}

/// Gives the hosts' veth `host_if` in `host_ns` the side's host addresses (198.`side`.0.h
/// and 2001:db8:`side`::h for every host), brings it up and routes the other side through
/// the gateway .254 / ::fe — one `ip -batch`, as a few hundred `ip` calls would be slow.
pub fn host_addresses(host_ns: &str, host_if: &str, side: u8) -> Result<(), LabError> {
    let mut batch = String::new();
    for h in 1..=HOSTS_PER_SIDE {
        let _ = writeln!(batch, "address add 198.{side}.0.{h}/24 dev {host_if}");
        let _ = writeln!(
            batch,
            "address add 2001:db8:{side}::{h:x}/64 dev {host_if} nodad"
        );
    }
    let _ = writeln!(batch, "link set {host_if} up");
    let other = if side == 18 { 19 } else { 18 };
    let _ = writeln!(
        batch,
        "route add 198.{other}.0.0/24 via 198.{side}.0.254 dev {host_if}"
    );
    let _ = writeln!(
        batch,
        "route add 2001:db8:{other}::/64 via 2001:db8:{side}::fe dev {host_if}"
    );
    let file = std::env::temp_dir().join(format!("baton-{host_ns}-{}.batch", std::process::id()));
    fs::write(&file, batch)?;
    let added = ip(&["-n", host_ns, "-batch", &file.to_string_lossy()]);
    let _ = fs::remove_file(&file);
    added.map(|_| ())
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn check_root() -> Result<(), LabError> {
    // SAFETY: geteuid(2) takes no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(LabError::NotRoot);
    }
    Ok(())
}

/// Lab namespaces that exist now.
pub fn namespaces() -> Result<Vec<String>, LabError> {
    let out = ip(&["netns", "list"])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(NS_PREFIX))
        .map(str::to_string)
        .collect())
}

/// The lab's configuration file: one group, N members, the contract's addresses.
pub fn config(sgms: u32, sync: bool, mode: Mode, l4: bool) -> Config {
    let net = |s: &str| s.parse::<IpNet>().expect("lab prefix");
    Config {
        orchestrator: OrchestratorConfig {
            ccp: (Ipv4Addr::new(198, 51, 100, 254), CCP_PORT).into(),
            api_socket: default_api_socket(),
            heartbeat_interval_ms: 100,
            dead_count: 3,
            xdp_driver_mode: true,
            policy_file: Some(Path::new(STATE_DIR).join(POLICY_FILE)),
            isolate_partitions: true,
            api_tcp: None,
            api_token_file: None,
            bpf_pin_dir: PathBuf::from(PIN_DIR),
            state_file: Path::new(STATE_DIR).join("orchestrator.json"),
        },
        groups: vec![GroupConfig {
            id: 1,
            buckets: 4096,
            mode,
            l4,
            sync,
            sync_key_file: None,
            uplinks: vec![
                UplinkConfig {
                    iface: "up-ext".into(),
                    role: Role::External,
                    gateway_v4: Some(Ipv4Addr::new(198, 18, 0, 254)),
                    gateway_v6: Some("2001:db8:18::fe".parse().unwrap()),
                    prefixes: vec![net("198.18.0.0/24"), net("2001:db8:18::/64")],
                },
                UplinkConfig {
                    iface: "up-int".into(),
                    role: Role::Internal,
                    gateway_v4: Some(Ipv4Addr::new(198, 19, 0, 254)),
                    gateway_v6: Some("2001:db8:19::fe".parse().unwrap()),
                    prefixes: vec![net("198.19.0.0/24"), net("2001:db8:19::/64")],
                },
            ],
            members: (1..=sgms)
                .map(|id| MemberConfig {
                    id,
                    downlink: format!("dl-sgm{id}"),
                    site: 1,
                })
                .collect(),
        }],
    }
}

/// Builds the lab and starts its processes; returns once every member is Active.
pub fn up(opts: &LabOptions) -> Result<Stat, LabError> {
    check_root()?;
    if opts.sgms == 0 || opts.sgms as usize > MEMBERS_PER_GROUP_MAX {
        return Err(LabError::BadSize(opts.sgms));
    }
    for (tool, pkg) in [("ip", "iproute2"), ("ethtool", "ethtool")] {
        if !have(tool) {
            return Err(LabError::MissingTool(tool, pkg));
        }
    }
    let existing = namespaces()?;
    if !existing.is_empty() || Path::new(STATE_DIR).exists() {
        let what = if existing.is_empty() {
            STATE_DIR.to_string()
        } else {
            existing.join(", ")
        };
        return Err(LabError::AlreadyUp(what));
    }
    let result = build(opts).and_then(|()| wait_active(opts.sgms));
    if result.is_err() {
        // Keep the logs for the error message, then leave nothing behind.
        let logs = log_tails();
        let _ = down();
        return result.map_err(|e| match e {
            LabError::Timeout { secs, detail } => LabError::Timeout {
                secs,
                detail: format!("{detail}\n{logs}"),
            },
            other => other,
        });
    }
    result
}

fn build(opts: &LabOptions) -> Result<(), LabError> {
    let state = Path::new(STATE_DIR);
    fs::create_dir_all(state)?;
    let n = opts.sgms;
    let members: Vec<String> = (1..=n).map(ns_sgm).collect();
    for ns in [NS_EXT, NS_INT, NS_ORCH]
        .iter()
        .map(std::string::ToString::to_string)
        .chain(members.iter().cloned())
    {
        ip(&["netns", "add", &ns])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        if ns == NS_EXT || ns == NS_INT {
            in_ns(
                &ns,
                &[
                    "sysctl",
                    "-qw",
                    "net.ipv6.conf.all.accept_dad=0",
                    "net.ipv6.conf.default.accept_dad=0",
                ],
            )?;
        } else {
            // The orchestrator and members are not IPv6 hosts: keep their kernels quiet on
            // the data ports.
            in_ns(
                &ns,
                &[
                    "sysctl",
                    "-qw",
                    "net.ipv6.conf.all.disable_ipv6=1",
                    "net.ipv6.conf.default.disable_ipv6=1",
                ],
            )?;
        }
    }
    // Hosts and uplinks.
    for (host_ns, host_if, up_if, side) in [
        (NS_EXT, "ext0", "up-ext", 18u8),
        (NS_INT, "int0", "up-int", 19u8),
    ] {
        ip(&[
            "link", "add", host_if, "netns", host_ns, "type", "veth", "peer", "name", up_if,
            "netns", NS_ORCH,
        ])?;
        ip(&["-n", host_ns, "link", "set", host_if, "up"])?;
        ip(&["-n", NS_ORCH, "link", "set", up_if, "up"])?;
        // Redirected frames need a peer with GRO (or XDP); redirected TCP/UDP needs complete
        // checksums, so no TX checksum offload on the hosts (docs/TOOLCHAIN.md).
        in_ns(
            host_ns,
            &["ethtool", "-K", host_if, "tx", "off", "gro", "on"],
        )?;
        host_addresses(host_ns, host_if, side)?;
    }
    // Management and sync bridges.
    for (br, addr) in [("bt-mgmt", Some("198.51.100.254/24")), ("bt-sync", None)] {
        ip(&["-n", NS_ORCH, "link", "add", br, "type", "bridge"])?;
        ip(&["-n", NS_ORCH, "link", "set", br, "up"])?;
        if let Some(a) = addr {
            ip(&["-n", NS_ORCH, "address", "add", a, "dev", br])?;
        }
    }
    // Members: data port, management port, sync port.
    for k in 1..=n {
        let ns = ns_sgm(k);
        let dl = format!("dl-sgm{k}");
        let q = opts.queues.max(1).to_string();
        ip(&[
            "link",
            "add",
            &dl,
            "netns",
            NS_ORCH,
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
            "type",
            "veth",
            "peer",
            "name",
            "dl0",
            "netns",
            &ns,
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
        ])?;
        ip(&["-n", NS_ORCH, "link", "set", &dl, "up"])?;
        ip(&["-n", &ns, "link", "set", "dl0", "up"])?;
        for (br, port, inner) in [
            ("bt-mgmt", format!("mg-sgm{k}"), "mgmt0"),
            ("bt-sync", format!("sy-sgm{k}"), "sync0"),
        ] {
            ip(&[
                "link", "add", &port, "netns", NS_ORCH, "type", "veth", "peer", "name", inner,
                "netns", &ns,
            ])?;
            ip(&["-n", NS_ORCH, "link", "set", &port, "master", br, "up"])?;
            ip(&["-n", &ns, "link", "set", inner, "up"])?;
        }
        ip(&[
            "-n",
            &ns,
            "address",
            "add",
            &format!("198.51.100.{k}/24"),
            "dev",
            "mgmt0",
        ])?;
    }
    let mut cfg = config(n, opts.sync, opts.mode, opts.l4);
    cfg.orchestrator.heartbeat_interval_ms = opts.heartbeat_ms;
    if !opts.pins {
        cfg.orchestrator.bpf_pin_dir = PathBuf::new();
    }
    cfg.orchestrator.isolate_partitions = opts.isolation;
    let key_path = state.join("sync.key");
    write_private(&key_path, &random_key()?)?;
    cfg.groups[0].sync_key_file = Some(key_path);
    // The API over TCP too, on the management network, with a token only root reads.
    let token_path = state.join(API_TOKEN_FILE);
    write_private(&token_path, &random_key()?)?;
    cfg.orchestrator.api_tcp = Some((Ipv4Addr::new(198, 51, 100, 254), API_TCP_PORT).into());
    cfg.orchestrator.api_token_file = Some(token_path);
    let cfg_path = state.join("baton.toml");
    fs::write(&cfg_path, cfg.to_toml())?;
    let policy_path = state.join(POLICY_FILE);
    fs::write(&policy_path, DEFAULT_POLICY)?;
    fs::write(
        state.join(OPTIONS_FILE),
        serde_json::to_string_pretty(opts).expect("options serialize"),
    )?;

    // Pins live in a bpf filesystem mounted here, outside the namespaces (`ip netns exec`
    // remounts /sys, so /sys/fs/bpf would not outlive the orchestrator's process).
    fs::create_dir_all(PIN_DIR)?;
    if !is_mountpoint(PIN_DIR) {
        run(Command::new("mount").args(["-t", "bpf", "bpf", PIN_DIR]))?;
    }
    start_orchestrator(opts)?;
    for k in 1..=n {
        start_member(opts, k)?;
    }
    Ok(())
}

/// Starts the orchestrator's process (again, after a stop or a kill); its log is appended
/// to.
pub fn start_orchestrator(opts: &LabOptions) -> Result<(), LabError> {
    let state = Path::new(STATE_DIR);
    spawn(
        NS_ORCH,
        &state.join("orchestrator.log"),
        &opts.exe,
        &[
            "orchestrator",
            "--config",
            state.join("baton.toml").to_str().unwrap(),
        ],
    )
}

fn is_mountpoint(path: &str) -> bool {
    fs::read_to_string("/proc/self/mounts")
        .is_ok_and(|m| m.lines().any(|l| l.split_whitespace().nth(1) == Some(path)))
}

/// Starts member `k`'s process (again, after a kill) with the lab's settings; its log is
/// appended to.
pub fn start_member(opts: &LabOptions, k: u32) -> Result<(), LabError> {
    let state = Path::new(STATE_DIR);
    let cfg_path = state.join("baton.toml");
    let policy_path = state.join(POLICY_FILE);
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get) as u32;
    let core = ((k - 1) % cores).to_string();
    let busy: Vec<String> = opts
        .busy_poll
        .map(|b| vec!["--busy-poll".into(), b.to_string()])
        .unwrap_or_default();
    spawn(
        &ns_sgm(k),
        &state.join(format!("sgm{k}.log")),
        &opts.exe,
        &[
            "sgm",
            "--config",
            cfg_path.to_str().unwrap(),
            "--id",
            &k.to_string(),
            "--data-port",
            "dl0",
            "--worker-core",
            &core,
            "--policy",
            policy_path.to_str().unwrap(),
            "--table-size",
            &opts.table_size.to_string(),
            "--workers",
            &opts.workers.to_string(),
            "--queues",
            &opts.queues.to_string(),
        ]
        .into_iter()
        .chain(busy.iter().map(String::as_str))
        .collect::<Vec<_>>(),
    )
}

/// Kills (SIGKILL) every process of member `k`'s namespace; returns how many.
pub fn kill_member(k: u32) -> Result<usize, LabError> {
    let pids = ip(&["netns", "pids", &ns_sgm(k)])?;
    let mut n = 0;
    for p in pids
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        // SAFETY: kill(2) on a pid of the lab's own namespace.
        if unsafe { libc::kill(p, libc::SIGKILL) } == 0 {
            n += 1;
        }
    }
    Ok(n)
}

/// A new group key: 32 random bytes as hex.
fn random_key() -> Result<String, LabError> {
    let mut key = [0u8; 32];
    fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut key))?;
    Ok(key.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    }))
}

/// Writes a file only its owner can read.
fn write_private(path: &Path, text: &str) -> Result<(), LabError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    std::io::Write::write_all(&mut f, text.as_bytes())?;
    Ok(())
}

/// Starts a daemon in a namespace, detached (own session, output to `log`).
fn spawn(ns: &str, log: &Path, exe: &Path, args: &[&str]) -> Result<(), LabError> {
    use std::os::unix::process::CommandExt;
    let out = fs::OpenOptions::new().create(true).append(true).open(log)?;
    let err = out.try_clone()?;
    Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()?;
    Ok(())
}

fn wait_active(sgms: u32) -> Result<Stat, LabError> {
    poll_stat(UP_TIMEOUT, |stat| {
        let members = &stat.groups[0].members;
        let active = members
            .iter()
            .filter(|m| m.state == MemberState::Active)
            .count();
        if active == sgms as usize {
            return Ok(stat);
        }
        Err(members
            .iter()
            .map(|m| format!("member {} {:?}", m.id, m.state))
            .collect::<Vec<_>>()
            .join(", "))
    })
    .map_err(|detail| LabError::Timeout {
        secs: UP_TIMEOUT.as_secs(),
        detail,
    })
}

/// Polls the orchestrator's stat until `check` accepts it, for at most `limit`; otherwise
/// what `check` (or the API) said last.
fn poll_stat<T>(limit: Duration, check: impl Fn(Stat) -> Result<T, String>) -> Result<T, String> {
    let client = Client::new(default_api_socket());
    let start = Instant::now();
    let mut last = String::from("the orchestrator's API never answered");
    while start.elapsed() < limit {
        match client.get::<Stat>("/v1/stat") {
            Ok(stat) => match check(stat) {
                Ok(v) => return Ok(v),
                Err(e) => last = e,
            },
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(last)
}

fn log_tails() -> String {
    let mut out = String::new();
    let Ok(dir) = fs::read_dir(STATE_DIR) else {
        return out;
    };
    let mut logs: Vec<PathBuf> = dir
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    for p in logs {
        let text = fs::read_to_string(&p).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(8).collect();
        let _ = writeln!(out, "--- {}", p.display());
        for l in tail.iter().rev() {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// Removes everything a lab made: processes, namespaces (and with them every link and
/// bridge), the API socket and the state directory. Safe to run at any time, any number
/// of times. Returns what it removed.
pub fn down() -> Result<Vec<String>, LabError> {
    check_root()?;
    let mut removed = Vec::new();
    let nss = namespaces()?;
    // Kill first, in every namespace, so nothing restarts or holds a link.
    for ns in &nss {
        kill_all(ns)?;
    }
    for ns in &nss {
        ip(&["netns", "del", ns])?;
        removed.push(format!("namespace {ns}"));
    }
    let sock = default_api_socket();
    if sock.exists() {
        fs::remove_file(&sock)?;
        removed.push(sock.display().to_string());
    }
    // The orchestrator's pins (maps, attachments), then their filesystem.
    if Path::new(PIN_DIR).exists() {
        let pins = baton_dataplane::loader::Orchestrator::remove_pins(Path::new(PIN_DIR))?;
        if is_mountpoint(PIN_DIR) {
            run(Command::new("umount").arg(PIN_DIR))?;
        }
        fs::remove_dir(PIN_DIR)?;
        removed.push(format!("{PIN_DIR} ({pins} pins)"));
    }
    if Path::new(STATE_DIR).exists() {
        fs::remove_dir_all(STATE_DIR)?;
        removed.push(STATE_DIR.to_string());
    }
    Ok(removed)
}

fn pids(ns: &str) -> Result<Vec<i32>, LabError> {
    Ok(ip(&["netns", "pids", ns])?
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

fn kill_all(ns: &str) -> Result<(), LabError> {
    for sig in [libc::SIGTERM, libc::SIGKILL] {
        let list = pids(ns)?;
        if list.is_empty() {
            return Ok(());
        }
        for p in &list {
            // SAFETY: kill(2) on a pid listed in the lab's own namespace; a stale pid only makes
            // it fail.
            unsafe { libc::kill(*p, sig) };
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && !pids(ns)?.is_empty() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let left = pids(ns)?;
    if !left.is_empty() {
        return Err(LabError::Command {
            cmd: format!("kill processes in {ns}"),
            stderr: format!("still running: {left:?}"),
        });
    }
    Ok(())
}
