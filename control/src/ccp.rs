//! CCP: the heartbeat messages between members and the orchestrator (UDP port 8116 on the
//! management network). A member's heartbeat carries its health and counters; the
//! orchestrator's answer tells the member its state and the SMO master.

use base64::{engine::general_purpose::STANDARD as B64, Engine as _};
use baton_dataplane::sync::engine::{SyncReport, View};
use serde::{Deserialize, Serialize};

use crate::membership::MemberState;

/// What a member reports about itself in every heartbeat.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct MemberReport {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub drops: u64,
    pub connections: u64,
    pub backup_connections: u64,
    pub policy_version: u64,
    pub workers: u32,
    /// Drops by reason (non-zero ones only, to keep heartbeats small).
    #[serde(default)]
    pub drop_reasons: std::collections::BTreeMap<String, u64>,
    pub table_capacity: u64,
    pub latency_p50_ns: u64,
    pub latency_p99_ns: u64,
    /// Packets and connections of each worker instance.
    #[serde(default)]
    pub worker_packets: Vec<u64>,
    #[serde(default)]
    pub worker_connections: Vec<u64>,
    #[serde(default)]
    pub worker_bytes: Vec<u64>,
    /// Drops of each worker by reason (non-zero only).
    #[serde(default)]
    pub worker_drops: Vec<std::collections::BTreeMap<String, u64>>,
    /// Frames received on each queue of the data port.
    #[serde(default)]
    pub queue_packets: Vec<u64>,
    /// HyperSync figures, when sync is on.
    #[serde(default)]
    pub sync: Option<SyncReport>,
    /// The sync port's MAC (aa:bb:…), where the other members send this one's records.
    #[serde(default)]
    pub sync_mac: Option<String>,
    /// The tasks the member runs (from its state and the master it was told).
    #[serde(default)]
    pub tasks: Vec<String>,
    /// Policy versions: enforced, prepared, refused.
    #[serde(default)]
    pub policy: crate::policy_dist::PolicyReport,
    /// When the enforced policy was installed (seconds since the Unix epoch; 0: from the
    /// member's own file).
    #[serde(default)]
    pub policy_date: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Heartbeat {
    pub member: u32,
    /// The member process's incarnation: larger after every restart (its start time in
    /// ns). A newer one tells the orchestrator that the member lost its state.
    #[serde(default)]
    pub boot: u64,
    /// The group the member process runs for (0: not said).
    #[serde(default)]
    pub group: u32,
    pub seq: u64,
    /// The member's data path is up (its socket receives).
    pub ready: bool,
    pub report: MemberReport,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HeartbeatAck {
    pub member: u32,
    pub seq: u64,
    pub state: MemberState,
    pub smo: Option<u32>,
    /// Worker instances the member should run (Dynamic Balancing), when set.
    #[serde(default)]
    pub workers: Option<u32>,
    /// The group's bucket table and sync peers, when the member's copy is out of date.
    #[serde(default)]
    pub table: Option<TableUpdate>,
    /// A policy to prepare or enforce.
    #[serde(default)]
    pub policy: Option<crate::policy_dist::PolicyCommand>,
    /// The member's group (0: unknown); a member moved to another group restarts.
    #[serde(default)]
    pub group: u32,
}

/// The bucket table as members sync by it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TableUpdate {
    pub version: u64,
    /// Base64 of one (active, backup) byte pair per bucket (member ids fit a byte).
    pub buckets: String,
    /// While members join: each joining member with the buckets whose records must also
    /// reach it (base64 of a bitmap, bucket i in bit i % 8 of byte i / 8).
    #[serde(default)]
    pub extra: Vec<ExtraBuckets>,
    /// Members of the group that sync, with their sync port's MAC.
    pub peers: Vec<SyncPeer>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ExtraBuckets {
    pub member: u32,
    pub buckets: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SyncPeer {
    pub id: u32,
    pub mac: String,
}

impl TableUpdate {
    pub fn new(
        version: u64,
        table: &[baton_common::Bucket],
        extra: Option<&[u32]>,
        peers: Vec<SyncPeer>,
    ) -> Self {
        let bytes: Vec<u8> = table
            .iter()
            .flat_map(|b| [b.active as u8, b.backup as u8])
            .collect();
        Self {
            version,
            buckets: B64.encode(bytes),
            extra: extra.map_or_else(Vec::new, |e| {
                let mut members: Vec<u32> = e.iter().copied().filter(|m| *m != 0).collect();
                members.sort_unstable();
                members.dedup();
                members
                    .into_iter()
                    .map(|member| {
                        let mut bits = vec![0u8; e.len().div_ceil(8)];
                        for (i, m) in e.iter().enumerate() {
                            if *m == member {
                                bits[i / 8] |= 1 << (i % 8);
                            }
                        }
                        ExtraBuckets {
                            member,
                            buckets: B64.encode(bits),
                        }
                    })
                    .collect()
            }),
            peers,
        }
    }

    /// The view a member's sync engine takes; None when the update is malformed.
    pub fn view(&self) -> Option<View> {
        let bytes = B64.decode(&self.buckets).ok()?;
        if bytes.len() % 2 != 0 || !(bytes.len() / 2).is_power_of_two() {
            return None;
        }
        let n = bytes.len() / 2;
        let mut extra = Vec::new();
        for x in &self.extra {
            let bits = B64.decode(&x.buckets).ok()?;
            if bits.len() != n.div_ceil(8) {
                return None;
            }
            extra.resize(n, 0);
            for (i, e) in extra.iter_mut().enumerate() {
                if bits[i / 8] & (1 << (i % 8)) != 0 {
                    *e = x.member;
                }
            }
        }
        let peers = self
            .peers
            .iter()
            .map(|p| parse_mac(&p.mac).map(|m| (p.id, m)))
            .collect::<Option<Vec<_>>>()?;
        Some(View {
            version: self.version,
            buckets: bytes
                .chunks_exact(2)
                .map(|c| (u32::from(c[0]), u32::from(c[1])))
                .collect(),
            extra,
            peers,
        })
    }
}

/// Parses aa:bb:cc:dd:ee:ff.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.trim().split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Largest datagram either side sends or accepts.
pub const MAX_DATAGRAM: usize = 65_507;

pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    serde_json::to_vec(msg).expect("CCP messages serialise")
}

pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Option<T> {
    serde_json::from_slice(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let hb = Heartbeat {
            member: 3,
            boot: 1,
            group: 1,
            seq: 7,
            ready: true,
            report: MemberReport {
                rx_packets: 5,
                ..Default::default()
            },
        };
        let bytes = encode(&hb);
        assert!(bytes.len() < MAX_DATAGRAM);
        assert_eq!(decode::<Heartbeat>(&bytes), Some(hb));
        assert_eq!(decode::<Heartbeat>(b"\\xff\\x00garbage"), None);
        assert_eq!(decode::<Heartbeat>(&bytes[..bytes.len() / 2]), None);
    }

    #[test]
    fn table_updates_fit_a_datagram_and_round_trip() {
        use baton_common::Bucket;
        let table: Vec<Bucket> = (0..baton_common::BUCKETS_PER_GROUP_MAX)
            .map(|i| Bucket {
                active: 1 + i % 52,
                backup: 1 + (i + 1) % 52,
            })
            .collect();
        let peers = vec![SyncPeer {
            id: 2,
            mac: "02:00:00:00:00:0a".into(),
        }];
        let ack = HeartbeatAck {
            member: 1,
            seq: 1,
            state: MemberState::Active,
            smo: Some(1),
            workers: None,
            policy: None,
            group: 1,
            table: Some(TableUpdate::new(
                7,
                &table,
                Some(&vec![3; table.len()]),
                peers,
            )),
        };
        let bytes = encode(&ack);
        assert!(bytes.len() < MAX_DATAGRAM, "{} bytes", bytes.len());
        let back: HeartbeatAck = decode(&bytes).unwrap();
        let view = back.table.unwrap().view().unwrap();
        assert_eq!(view.version, 7);
        assert_eq!(view.buckets.len(), table.len());
        assert_eq!(view.buckets[5], (6, 7));
        assert_eq!(view.peers, vec![(2, [2, 0, 0, 0, 0, 10])]);
        assert_eq!(view.extra[9], 3);
        let bad = TableUpdate {
            version: 1,
            buckets: "!!".into(),
            extra: Vec::new(),
            peers: vec![],
        };
        assert!(bad.view().is_none());
        assert_eq!(parse_mac("02:00:00:00:00"), None);
        assert_eq!(parse_mac("02:00:00:00:00:00:00"), None);
    }
}
