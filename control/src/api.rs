//! The REST API: the documents it serves and a small client over the orchestrator's Unix
//! socket (the CLI speaks only this).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use http_body_util::{BodyExt, Full};
use hyper::{body::Bytes, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use thiserror::Error;

use crate::membership::MemberState;

/// `GET /v1/stat`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Stat {
    pub groups: Vec<GroupStat>,
    pub uplinks: Vec<UplinkStat>,
    /// Orchestrator XDP event and drop counters by name.
    pub events: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct GroupStat {
    pub id: u32,
    /// SMO master: the lowest Active member id (null when none is Active).
    pub smo: Option<u32>,
    pub buckets: u32,
    pub members: Vec<MemberStat>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MemberStat {
    pub id: u32,
    pub state: MemberState,
    pub smo: bool,
    /// Frames the member received and sent on its data port (its own counters).
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub drops: u64,
    pub connections: u64,
    pub backup_connections: u64,
    pub policy_version: u64,
    /// When that version was installed (seconds since the Unix epoch; 0: the member's own
    /// file).
    #[serde(default)]
    pub policy_date: u64,
    /// Why the orchestrator isolated the member (a data-path partition), while it is.
    #[serde(default)]
    pub isolated: Option<String>,
    /// Why a joining member's join has not completed in time (null otherwise).
    #[serde(default)]
    pub join_blocked: Option<String>,
    /// Frames the orchestrator sent to the member and got back from it (XDP counters).
    pub to_member_packets: u64,
    pub from_member_packets: u64,
    /// Buckets the member is active / backup for.
    pub buckets_active: u32,
    pub buckets_backup: u32,
    pub drop_reasons: BTreeMap<String, u64>,
    pub table_capacity: u64,
    /// Per-packet processing time on the member, nanoseconds.
    pub latency_p50_ns: u64,
    pub latency_p99_ns: u64,
    /// Worker instances, and each one's packets and connections.
    pub workers: u32,
    pub worker_packets: Vec<u64>,
    pub worker_connections: Vec<u64>,
    pub worker_bytes: Vec<u64>,
    pub worker_drops: Vec<BTreeMap<String, u64>>,
    /// Frames received on each queue of the data port.
    pub queue_packets: Vec<u64>,
    /// Milliseconds since its last heartbeat (null: never heard).
    pub last_heartbeat_ms: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct UplinkStat {
    pub iface: String,
    pub group: u32,
    pub role: String,
    /// Flow-key mode of the uplink: general, network (source) or user (destination), and
    /// whether L4 ports are in the key.
    pub mode: String,
    pub l4: bool,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

/// `GET /v1/search?src=…&dst=…[&sport=…&dport=…&proto=…]`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SearchResult {
    pub group: u32,
    pub bucket: u32,
    pub active: Option<u32>,
    pub backup: Option<u32>,
}

/// `GET /v1/buckets?group=G`: the live table, member ids by bucket (0: none).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BucketTable {
    pub group: u32,
    pub active: Vec<u32>,
    pub backup: Vec<u32>,
}

/// `GET /v1/sync`: HyperSync figures of every member (like `cphaprob syncstat`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SyncStat {
    pub members: Vec<SyncMemberStat>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SyncMemberStat {
    pub id: u32,
    pub state: MemberState,
    /// What the member last reported: its streams to each peer, its copies, the frames it
    /// dropped and the first replies it held.
    #[serde(flatten)]
    pub sync: baton_dataplane::sync::engine::SyncReport,
}

/// `POST /v1/members`: admit a member to a group.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MemberAdd {
    pub id: u32,
    pub group: u32,
    /// The orchestrator's interface towards the member.
    pub downlink: String,
    /// Its site (1 or 2, for dual-site groups).
    #[serde(default = "site_one")]
    pub site: u8,
}

fn site_one() -> u8 {
    1
}

/// `POST /v1/members/{id}/move`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MemberMove {
    pub group: u32,
}

/// `POST /v1/policy`: a policy file's text to install on a group.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicyInstall {
    pub text: String,
    #[serde(default = "group_one")]
    pub group: u32,
}

fn group_one() -> u32 {
    1
}

/// `POST /v1/policy/rollback`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicyRollback {
    #[serde(default = "group_one")]
    pub group: u32,
}

/// The answer of an install or rollback that took effect.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PolicyInstalled {
    pub group: u32,
    pub version: u64,
    pub members: Vec<u32>,
}

/// `GET /v1/policy?group=G`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PolicyStat {
    pub group: u32,
    pub current: Option<PolicyVersionStat>,
    pub versions: Vec<PolicyVersionStat>,
    /// A version being installed, and its phase.
    pub installing: Option<(u64, String)>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PolicyVersionStat {
    pub version: u64,
    pub installed_at: u64,
}

/// `POST /v1/members/{id}/workers`: the worker count a member should run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WorkersRequest {
    pub workers: u32,
}

/// Body of every 4xx/5xx answer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ErrorBody {
    pub error: String,
}

#[derive(Debug, Error)]
pub enum ApiError {
    #[error(
        "no orchestrator answers on {0} (is the lab up — `baton lab up` — or `baton orchestrator` \
         running?)"
    )]
    NotRunning(PathBuf),
    #[error("{message} (HTTP {status})")]
    Status { status: u16, message: String },
    #[error("API I/O failed: {0}")]
    Io(String),
    #[error("unexpected answer from the API: {0}")]
    Decode(String),
}

/// A client of the orchestrator's API: on its Unix socket, or over TCP with a token.
#[derive(Clone)]
pub struct Client {
    socket: PathBuf,
    tcp: Option<(String, String)>,
}

impl std::fmt::Debug for Client {
    // Never prints the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.tcp {
            Some((addr, _)) => write!(f, "Client(tcp {addr})"),
            None => write!(f, "Client({})", self.socket.display()),
        }
    }
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            tcp: None,
        }
    }

    /// Over TCP to `addr` (host:port), sending `token` as the bearer token.
    pub fn tcp(addr: impl Into<String>, token: impl Into<String>) -> Self {
        let addr = addr.into();
        Self {
            socket: PathBuf::from(format!("http://{addr}")),
            tcp: Some((addr, token.into())),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        self.call(Method::GET, path, None)
    }

    pub fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        self.call(Method::DELETE, path, None)
    }

    pub fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ApiError> {
        let body = serde_json::to_vec(body).map_err(|e| ApiError::Decode(e.to_string()))?;
        self.call(Method::POST, path, Some(body))
    }

    fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ApiError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ApiError::Io(e.to_string()))?;
        let (status, bytes) = rt.block_on(async {
            match &self.tcp {
                None => {
                    let stream = tokio::net::UnixStream::connect(&self.socket)
                        .await
                        .map_err(|_| ApiError::NotRunning(self.socket.clone()))?;
                    exchange(stream, None, method, path, body).await
                }
                Some((addr, token)) => {
                    let stream = tokio::net::TcpStream::connect(addr.as_str())
                        .await
                        .map_err(|_| ApiError::NotRunning(self.socket.clone()))?;
                    exchange(stream, Some(token), method, path, body).await
                }
            }
        })?;
        if !status.is_success() {
            let message = serde_json::from_slice::<ErrorBody>(&bytes).map_or_else(
                |_| String::from_utf8_lossy(&bytes).into_owned(),
                |e| e.error,
            );
            return Err(ApiError::Status {
                status: status.as_u16(),
                message,
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| ApiError::Decode(e.to_string()))
    }
}

async fn exchange<S>(
    stream: S,
    token: Option<&String>,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<(StatusCode, Bytes), ApiError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ApiError::Io(e.to_string()))?;
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "baton")
        .header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| ApiError::Io(e.to_string()))?;
    let res = sender
        .send_request(req)
        .await
        .map_err(|e| ApiError::Io(e.to_string()))?;
    let status = res.status();
    let bytes = res
        .into_body()
        .collect()
        .await
        .map_err(|e| ApiError::Io(e.to_string()))?
        .to_bytes();
    Ok((status, bytes))
}
