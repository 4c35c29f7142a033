//! HyperSync's link protocol: ordered, acknowledged, authenticated delivery of fixed-size
//! connection-state records from one cluster member to another over raw Ethernet frames.
//!
//! The module is sans-IO: it never touches sockets, threads or clocks. The owner hands it
//! received payloads and the current time, calls [`Endpoint::poll`] for the frames to send
//! (at the latest at [`Endpoint::next_deadline`], and after every batch of `push`/`receive`),
//! and drains [`Endpoint::events`].
//!
//! # Wire format
//!
//! Payload after the 14-byte Ethernet header (EtherType `ETH_P_SYNC`); integers big-endian.
//!
//! | offset | size | field                                                         |
//! |-------:|-----:|---------------------------------------------------------------|
//! | 0      | 1    | version = 1                                                   |
//! | 1      | 1    | kind: 1 DATA, 2 ACK, 3 NACK, 4 RESYNC                         |
//! | 2      | 4    | group                                                         |
//! | 6      | 4    | src member                                                    |
//! | 10     | 4    | dst member                                                    |
//! | 14     | 8    | epoch of the frame's sender (its stream epoch)                |
//! | 22     | 8    | frame id: per sender epoch, strictly increasing, never reused |
//! | 30     | ..   | body (below)                                                  |
//! | end-16 | 16   | tag: HMAC-SHA256(key, every byte before it), first 16 bytes   |
//!
//! | kind   | body                                                                     |
//! |--------|--------------------------------------------------------------------------|
//! | DATA   | first_seq(8), count(2) in 1..=[`RECORDS_PER_FRAME`], count × record(48)  |
//! | ACK    | acked_epoch(8), cum(8): every seq <= cum was delivered in order          |
//! | NACK   | acked_epoch(8), cum(8), n(2) in 1..=[`MAX_NACK_RANGES`], n × (first(8), last(8)) missing |
//! | RESYNC | base(8): forget everything before `base`; the next record is `base`      |
//!
//! Every frame is at least 54 bytes, so Ethernet never pads it and lengths must add up
//! exactly. A DATA frame carries at most 30 records: 30 + 10 + 30 × 48 + 16 = 1496 bytes.
//!
//! # Reliability
//!
//! Each direction of a link is a stream of records numbered from 1, identified by the
//! sender's epoch. The sender keeps every record until it is cumulatively acked, with at
//! most `window` in flight; it retransmits what a NACK lists (not the same record twice
//! within rto/2) and, after `rto` without ack progress, everything in flight. The receiver
//! delivers in order, buffers up to `reorder_max` records past a gap, NACKs gaps (at most
//! every rto/2) and acks within `ack_every` of anything new or duplicated (a duplicate means
//! its ack was lost).
//!
//! When a queue overflows, its records are discarded and the sender emits a RESYNC marker
//! (retransmitted every `rto`) and holds everything pushed later until the marker is acked;
//! then [`Event::ResyncNeeded`] tells the owner to send its full state again. The same
//! marker, without the event, restarts the stream at the oldest unacked record when the
//! peer has lost its receive state (it restarted, or it acks less than it acked before).
//!
//! # Replay
//!
//! Frames from an epoch lower than the newest authentic one seen from that peer are
//! replays. Within an epoch, a 1024-id sliding bitmap of frame ids (as IPsec's anti-replay
//! window) rejects ids already seen or older than the window. Receive state lives in memory
//! only: a member that restarts, or a peer removed and re-added by `set_peers`, accepts the
//! first authentic epoch it sees from that peer again.
//!
//! # Modules
//!
//! The wire format is `codec`, the anti-replay bitmap `replay`, a link's sending and
//! receiving halves `sender` and `receiver`, and `endpoint` drives them for all peers.

mod codec;
mod endpoint;
mod receiver;
mod replay;
mod sender;
#[cfg(test)]
mod tests;

pub use self::{
    codec::{
        Record, HEADER_LEN, MAX_NACK_RANGES, MAX_PAYLOAD, RECORDS_PER_FRAME, RECORD_LEN, TAG_LEN,
        VERSION,
    },
    endpoint::{Config, Counters, Endpoint, Event, GroupKey, LinkStats},
    sender::MAX_FRAMES_PER_POLL,
};
