//! CCP: the heartbeat messages between members and the orchestrator (UDP port 8116 on the
//! management network). A member's heartbeat carries its health and counters; the
//! orchestrator's answer tells the member its state and the SMO master.

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
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Heartbeat {
    pub member: u32,
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
}

/// Largest datagram either side sends or accepts.
pub const MAX_DATAGRAM: usize = 2048;

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
}
