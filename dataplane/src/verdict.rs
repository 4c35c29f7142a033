//! What became of a received frame, and why a dropped one was dropped: the words the
//! forwarder, the dispatcher and the port share.

use crate::wire::WireError;

/// Why a frame was dropped; index of the drop counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum DropReason {
    Truncated = 0,
    Malformed,
    NotIp,
    NoRoute,
    TtlExceeded,
    NeighbourQueueFull,
    NeighbourUnreachable,
    /// The policy refused the connection's first packet.
    Policy,
    /// Belongs to no connection and cannot open one (e.g. a TCP ACK out of the blue).
    NoConnection,
    /// The connection table is full.
    TableFull,
}

impl DropReason {
    pub const COUNT: usize = 10;
    pub const NAMES: [&'static str; Self::COUNT] = [
        "truncated",
        "malformed",
        "not_ip",
        "no_route",
        "ttl_exceeded",
        "neighbour_queue_full",
        "neighbour_unreachable",
        "policy",
        "no_connection",
        "table_full",
    ];
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Rewritten in place: send it.
    Forward,
    /// A control frame (ARP/ND) used or ignored: recycle the buffer.
    Consumed,
    /// Copied into the neighbour queue: recycle the buffer.
    Held,
    Drop(DropReason),
}

impl From<WireError> for DropReason {
    fn from(e: WireError) -> Self {
        match e {
            WireError::Truncated => Self::Truncated,
            WireError::Malformed => Self::Malformed,
        }
    }
}
