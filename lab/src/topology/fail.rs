//! `baton lab fail|restore`: a lab part fails as its machine would (every link of it down at
//! both ends, every process of it killed) and is brought back. What a failure took down is
//! recorded in the state directory, so `restore` undoes exactly that and a second `fail` of
//! the same part is refused.

use std::{
    fmt, fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use baton_control::membership::MemberState;

use super::{
    check_root, ip, kill_member, ns_sgm, options, pids, poll_stat, start_member, STATE_DIR,
    UP_TIMEOUT,
};
use crate::LabError;

/// Records of failed parts, one file each, under the state directory.
const FAILED_DIR: &str = "failed";
/// How long a SIGKILLed process may take to be gone.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// A part of the lab that fails as a machine does. (The lab contract adds orchestrators,
/// the witness, sites and the inter-site link as the lab grows.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// Member K, namespace `bt-sgmK`.
    Member(u32),
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Part::Member(k) => write!(f, "member {k}"),
        }
    }
}

impl Part {
    /// The namespaces that are the part's machine.
    fn namespaces(self) -> Vec<String> {
        match self {
            Part::Member(k) => vec![ns_sgm(k)],
        }
    }

    fn record_path(self) -> PathBuf {
        let name = match self {
            Part::Member(k) => format!("member-{k}.json"),
        };
        Path::new(STATE_DIR).join(FAILED_DIR).join(name)
    }
}

/// One end of a link: an interface and the namespace it lives in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkEnd {
    pub ns: String,
    pub iface: String,
}

impl fmt::Display for LinkEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.ns, self.iface)
    }
}

/// What `fail` did (also its record in the state directory).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Failure {
    /// Every end set down: the part's own interfaces and their peers elsewhere.
    pub links: Vec<LinkEnd>,
    /// Processes killed.
    pub killed: usize,
}

/// Fails `part`: its links go down at both ends (so carrier drops both ways), then every
/// process of it is killed (SIGKILL) and gone. Refused when no lab is up, the lab has no
/// such part or it has already failed.
pub fn fail(part: Part) -> Result<Failure, LabError> {
    check_root()?;
    check_part(part)?;
    let record = part.record_path();
    if record.exists() {
        return Err(LabError::AlreadyFailed(part));
    }
    let mut links = Vec::new();
    for ns in part.namespaces() {
        links.extend(links_of(&ns)?);
    }
    let mut failure = Failure { links, killed: 0 };
    // Recorded before anything changes: a fail cut short can still be restored.
    write_record(&record, &failure)?;
    // Processes first, links after: a machine stops everything at once, and with its
    // links taken down one `ip` call at a time while it still ran, the orchestrator
    // heard heartbeats from a member whose data path was gone and isolated it instead of
    // seeing it down (seen on a loaded machine).
    match part {
        Part::Member(k) => failure.killed = kill_member(k)?,
    }
    for end in &failure.links {
        ip(&["-n", &end.ns, "link", "set", &end.iface, "down"])?;
    }
    for ns in part.namespaces() {
        let deadline = Instant::now() + KILL_TIMEOUT;
        loop {
            let left = pids(&ns)?;
            if left.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                return Err(LabError::Command {
                    cmd: format!("kill -9 the processes of {ns}"),
                    stderr: format!("still running after {KILL_TIMEOUT:?}: {left:?}"),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    write_record(&record, &failure)?;
    Ok(failure)
}

/// Brings a failed `part` back: the links its failure took down go up again and its
/// processes start with the lab's options; returns once the orchestrator has it Active
/// again (members rejoin through Joining), with how long that took after the start, or
/// fails after [`UP_TIMEOUT`].
pub fn restore(part: Part) -> Result<(Failure, Duration), LabError> {
    check_root()?;
    let opts = check_part(part)?;
    let record = part.record_path();
    let failure: Failure = match fs::read_to_string(&record) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| LabError::Output {
            cmd: format!("read {}", record.display()),
            detail: e.to_string(),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(LabError::NotFailed(part))
        }
        Err(e) => return Err(e.into()),
    };
    for end in &failure.links {
        ip(&["-n", &end.ns, "link", "set", &end.iface, "up"])?;
    }
    let start = Instant::now();
    match part {
        Part::Member(k) => start_member(&opts, k)?,
    }
    fs::remove_file(&record)?;
    match part {
        Part::Member(k) => {
            wait_member(k, MemberState::Active, UP_TIMEOUT).map_err(|detail| {
                LabError::NotBack {
                    part,
                    secs: UP_TIMEOUT.as_secs(),
                    detail,
                }
            })?;
        }
    }
    Ok((failure, start.elapsed()))
}

/// The lab's options, once `part` is known to be one of the lab's.
fn check_part(part: Part) -> Result<super::LabOptions, LabError> {
    let opts = options()?;
    match part {
        Part::Member(k) if k == 0 || k > opts.sgms => Err(LabError::NoSuchPart {
            part,
            sgms: opts.sgms,
        }),
        Part::Member(_) => Ok(opts),
    }
}

fn write_record(path: &Path, failure: &Failure) -> Result<(), LabError> {
    fs::create_dir_all(path.parent().expect("record in a directory"))?;
    fs::write(
        path,
        serde_json::to_string_pretty(failure).expect("record serializes"),
    )?;
    Ok(())
}

/// `ip -j link show`: the fields used here.
#[derive(Deserialize)]
struct IpLink {
    ifindex: u32,
    ifname: String,
    /// The peer's ifindex (veth), in namespace `link_netnsid`.
    link_index: Option<u32>,
    link_netnsid: Option<i32>,
}

/// `ip -j netns list-id`.
#[derive(Deserialize)]
struct NsId {
    nsid: i32,
    name: Option<String>,
}

fn json<T: serde::de::DeserializeOwned>(args: &[&str]) -> Result<T, LabError> {
    let out = ip(args)?;
    // iproute2 prints nothing at all for an empty list.
    let text = if out.trim().is_empty() { "[]" } else { &out };
    serde_json::from_str(text).map_err(|e| LabError::Output {
        cmd: format!("ip {}", args.join(" ")),
        detail: e.to_string(),
    })
}

/// Every interface of namespace `ns` but loopback, each followed by its peer end when that
/// lives in another namespace (a veth's far end).
fn links_of(ns: &str) -> Result<Vec<LinkEnd>, LabError> {
    let ids: Vec<NsId> = json(&["-j", "-n", ns, "netns", "list-id"])?;
    let links: Vec<IpLink> = json(&["-j", "-n", ns, "link", "show"])?;
    let mut ends = Vec::new();
    for l in links.iter().filter(|l| l.ifname != "lo") {
        ends.push(LinkEnd {
            ns: ns.to_string(),
            iface: l.ifname.clone(),
        });
        let (Some(index), Some(nsid)) = (l.link_index, l.link_netnsid) else {
            continue;
        };
        let peer_ns = ids
            .iter()
            .find(|i| i.nsid == nsid)
            .and_then(|i| i.name.clone())
            .ok_or_else(|| LabError::Output {
                cmd: format!("ip -n {ns} netns list-id"),
                detail: format!(
                    "no named namespace has id {nsid} (the peer of {})",
                    l.ifname
                ),
            })?;
        let peers: Vec<IpLink> = json(&["-j", "-n", &peer_ns, "link", "show"])?;
        let peer = peers
            .iter()
            .find(|p| p.ifindex == index)
            .ok_or_else(|| LabError::Output {
                cmd: format!("ip -n {peer_ns} link show"),
                detail: format!("no interface {index} (the peer of {ns}:{})", l.ifname),
            })?;
        ends.push(LinkEnd {
            ns: peer_ns,
            iface: peer.ifname.clone(),
        });
    }
    Ok(ends)
}

/// Polls the orchestrator until member `k` is in `state`; the last thing seen otherwise.
fn wait_member(k: u32, state: MemberState, limit: Duration) -> Result<(), String> {
    poll_stat(limit, |stat| {
        match stat
            .groups
            .iter()
            .flat_map(|g| &g.members)
            .find(|m| m.id == k)
        {
            Some(m) if m.state == state => Ok(()),
            Some(m) => Err(format!("member {k} is {:?}", m.state).to_lowercase()),
            None => Err(format!("the orchestrator has no member {k}")),
        }
    })
}
