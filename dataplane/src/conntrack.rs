//! A worker's connection table: one entry per connection, found by one lookup from either
//! direction (the key is the 5-tuple in a canonical order), with a TCP state machine,
//! UDP and ICMP-echo pseudo-connections, timeouts, and a hard capacity.
//!
//! Ageing costs O(1) per packet: entries live in an insertion-ordered map (`IndexMap`), and
//! each packet advances a hand over two of them, removing any that expired; a lookup that
//! finds an expired entry treats it as gone. Nothing ever scans the whole table.

use std::{net::IpAddr, time::Duration};

use baton_common::net::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP};
use indexmap::IndexMap;

/// TCP flag bits as in the header.
pub mod flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

/// Both directions of a connection map to the same key: the lower (address, port) first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    lo: [u8; 16],
    hi: [u8; 16],
    lo_port: u16,
    hi_port: u16,
    proto: u8,
}

fn octets(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

impl FlowKey {
    /// The two addresses of the connection (lower first).
    pub fn addresses(&self) -> (IpAddr, IpAddr) {
        let ip = |o: [u8; 16]| {
            let a = std::net::Ipv6Addr::from(o);
            a.to_ipv4_mapped().map_or(IpAddr::V6(a), IpAddr::V4)
        };
        (ip(self.lo), ip(self.hi))
    }

    /// The ports (lo's, hi's), or ICMP echo identifiers.
    pub fn ports(&self) -> (u16, u16) {
        (self.lo_port, self.hi_port)
    }

    pub fn proto(&self) -> u8 {
        self.proto
    }

    /// The key of a packet and whether the packet goes from `lo` to `hi`.
    pub fn of(p: &Packet) -> (FlowKey, bool) {
        let (s, d) = ((octets(p.src), p.sport), (octets(p.dst), p.dport));
        let forward = s <= d;
        let (lo, hi) = if forward { (s, d) } else { (d, s) };
        (
            FlowKey {
                lo: lo.0,
                hi: hi.0,
                lo_port: lo.1,
                hi_port: hi.1,
                proto: p.proto,
            },
            forward,
        )
    }
}

/// What the table needs of a packet. For ICMP echo, `sport` and `dport` are both the
/// identifier, so a request and its reply share a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    /// TCP flags; for ICMP the message type.
    pub flags: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// TCP: SYN seen.
    SynSent,
    /// TCP: SYN-ACK seen from the responder.
    SynReceived,
    Established,
    /// TCP: FIN seen from one side.
    FinWait,
    /// TCP: FIN seen from both sides; lingers for late segments.
    TimeWait,
    /// UDP, ICMP echo and other protocols: one packet seen.
    Open,
    /// UDP and others: traffic seen both ways.
    Replied,
}

/// Timeouts per state (configurable; defaults close to Linux conntrack's).
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub syn: Duration,
    pub established: Duration,
    pub closing: Duration,
    pub udp: Duration,
    pub icmp: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            syn: Duration::from_secs(30),
            established: Duration::from_secs(3600),
            closing: Duration::from_secs(30),
            udp: Duration::from_secs(60),
            icmp: Duration::from_secs(30),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    /// Expiry, in milliseconds on the caller's clock.
    expires: u64,
    state: State,
    /// The initiator sent from `lo` to `hi`.
    initiator_lo: bool,
    /// FIN seen from lo (bit 0) / hi (bit 1).
    fins: u8,
    /// When the entry was last synced to the backup, in seconds on the caller's clock
    /// (fits in the padding: the entry stays 16 bytes).
    synced_s: u32,
}

/// What a sync record says about a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordOp {
    /// Create or update: the backup holds this state.
    Upsert = 1,
    /// The connection ended.
    Delete = 2,
}

/// Bytes of one sync record (the one size the sync wire format carries).
pub const RECORD_LEN: usize = 48;
/// One sync record: a connection's state as [`Connection::encode`] writes it.
pub type Record = [u8; RECORD_LEN];

/// A change the table made that its backup must hear about (see [`ConnTable::journal`]).
#[derive(Clone, Copy, Debug)]
pub struct Change {
    pub op: RecordOp,
    pub conn: Connection,
    /// The connection's first reply: the packet that completes its state. It should leave
    /// only once the backup holds the connection.
    pub first_reply: bool,
}

/// A connection in transit between two tables, state and timers intact.
#[derive(Clone, Copy, Debug)]
pub struct Connection {
    pub key: FlowKey,
    entry: Entry,
}

impl Connection {
    pub fn state(&self) -> State {
        self.entry.state
    }

    /// Milliseconds left to live at `now_ms` on the clock of the table it came from.
    pub fn remaining_ms(&self, now_ms: u64) -> u64 {
        self.entry.expires.saturating_sub(now_ms)
    }

    /// The same connection on another clock: it keeps the time it had left.
    #[must_use]
    pub fn rebase(mut self, from_now_ms: u64, to_now_ms: u64) -> Self {
        self.entry.expires = to_now_ms + self.remaining_ms(from_now_ms);
        self
    }

    /// The sync record of this connection (`now_ms` on its table's clock). Layout, all
    /// big-endian: op, state, initiator is lo, FINs, protocol, 0, lo port, hi port, 0, 0,
    /// milliseconds to live (u32), lo address, hi address (16 bytes each, IPv4 mapped).
    pub fn encode(&self, op: RecordOp, now_ms: u64) -> Record {
        let mut r = [0u8; RECORD_LEN];
        let e = &self.entry;
        r[0] = op as u8;
        r[1] = e.state as u8;
        r[2] = u8::from(e.initiator_lo);
        r[3] = e.fins;
        r[4] = self.key.proto;
        r[6..8].copy_from_slice(&self.key.lo_port.to_be_bytes());
        r[8..10].copy_from_slice(&self.key.hi_port.to_be_bytes());
        let ttl = u32::try_from(self.remaining_ms(now_ms)).unwrap_or(u32::MAX);
        r[12..16].copy_from_slice(&ttl.to_be_bytes());
        r[16..32].copy_from_slice(&self.key.lo);
        r[32..48].copy_from_slice(&self.key.hi);
        r
    }

    /// Reads a sync record (`now_ms` on the receiving table's clock); None when it makes
    /// no sense (unknown op or state, addresses out of order).
    pub fn decode(r: &Record, now_ms: u64) -> Option<(RecordOp, Connection)> {
        let op = match r[0] {
            1 => RecordOp::Upsert,
            2 => RecordOp::Delete,
            _ => return None,
        };
        let state = match r[1] {
            0 => State::SynSent,
            1 => State::SynReceived,
            2 => State::Established,
            3 => State::FinWait,
            4 => State::TimeWait,
            5 => State::Open,
            6 => State::Replied,
            _ => return None,
        };
        let be16 = |i: usize| u16::from_be_bytes([r[i], r[i + 1]]);
        let key = FlowKey {
            lo: r[16..32].try_into().ok()?,
            hi: r[32..48].try_into().ok()?,
            lo_port: be16(6),
            hi_port: be16(8),
            proto: r[4],
        };
        if (key.lo, key.lo_port) > (key.hi, key.hi_port) || r[2] > 1 || r[3] > 3 {
            return None;
        }
        let ttl = u64::from(u32::from_be_bytes([r[12], r[13], r[14], r[15]]));
        Some((
            op,
            Connection {
                key,
                entry: Entry {
                    expires: now_ms + ttl,
                    state,
                    initiator_lo: r[2] == 1,
                    fins: r[3],
                    synced_s: (now_ms / 1000) as u32,
                },
            },
        ))
    }
}

/// What happened to a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Track {
    /// It belongs to a known connection (now in this state).
    Existing(State),
    /// A valid first packet the policy accepted: a connection was created.
    Created,
    /// A valid first packet the policy refused.
    Denied,
    /// It belongs to no connection and cannot open one (e.g. a TCP ACK out of the blue).
    NoConnection,
    /// The table is full: no new connection (existing ones are unaffected).
    TableFull,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub created: u64,
    pub expired: u64,
    pub closed: u64,
    pub denied: u64,
    pub no_connection: u64,
    pub table_full: u64,
}

pub struct ConnTable {
    map: IndexMap<FlowKey, Entry, ahash::RandomState>,
    capacity: usize,
    timeouts: Timeouts,
    hand: usize,
    pub counters: Counters,
    /// Changes for the backup, when sync is on: the owner drains it after each packet.
    journal: Option<Vec<Change>>,
}

/// Entries the hand visits per packet.
const SWEEP_PER_PACKET: usize = 2;

impl ConnTable {
    /// A table that never holds more than `capacity` connections; its memory is allocated
    /// up front, so a flood cannot make it grow.
    pub fn new(capacity: usize, timeouts: Timeouts) -> Self {
        Self {
            map: IndexMap::with_capacity_and_hasher(capacity, ahash::RandomState::new()),
            capacity,
            timeouts,
            hand: 0,
            counters: Counters::default(),
            journal: None,
        }
    }

    /// Keeps a journal of the changes a backup must hear about: creations, state changes,
    /// ends, and a refresh of each live connection a few times per timeout (expiry needs
    /// no record: the backup ages its copies by the same timeouts).
    pub fn enable_journal(&mut self) {
        self.journal = Some(Vec::new());
    }

    /// The changes since the last call.
    pub fn journal(&mut self) -> Option<&mut Vec<Change>> {
        self.journal.as_mut()
    }

    /// Every connection, for a bulk sync.
    pub fn snapshot(&self) -> impl Iterator<Item = Connection> + '_ {
        self.map
            .iter()
            .map(|(k, e)| Connection { key: *k, entry: *e })
    }

    fn note(&mut self, op: RecordOp, key: FlowKey, entry: Entry, first_reply: bool) {
        if let Some(j) = self.journal.as_mut() {
            j.push(Change {
                op,
                conn: Connection { key, entry },
                first_reply,
            });
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes the table holds for its capacity (entries and index).
    pub fn memory_bytes(&self) -> usize {
        let entries = self.map.capacity()
            * (std::mem::size_of::<FlowKey>() + std::mem::size_of::<Entry>() + 8);
        // The index: one usize and one control byte per slot, slots a power of two at
        // 7/8 load.
        let slots = (self.map.capacity() * 8 / 7).next_power_of_two();
        entries + slots * (std::mem::size_of::<usize>() + 1)
    }

    /// The state of the connection a packet belongs to, if any.
    pub fn state(&self, p: &Packet, now_ms: u64) -> Option<State> {
        let (k, _) = FlowKey::of(p);
        self.map
            .get(&k)
            .filter(|e| e.expires > now_ms)
            .map(|e| e.state)
    }

    /// Tracks one packet at `now_ms`. `allow` (the policy) is asked only for a valid first
    /// packet of a new connection.
    pub fn track(&mut self, p: &Packet, now_ms: u64, allow: impl FnOnce() -> bool) -> Track {
        self.sweep(now_ms, SWEEP_PER_PACKET);
        let (k, forward) = FlowKey::of(p);
        if let Some(i) = self.map.get_index_of(&k) {
            let e = self.map[i];
            if e.expires > now_ms {
                let from_initiator = forward == e.initiator_lo;
                if let Some(mut next) = self.advance(e, p, forward, from_initiator, now_ms) {
                    if self.journal.is_some() {
                        let now_s = (now_ms / 1000) as u32;
                        let refresh = (self.timeout(next.state, p.proto) / 3000) as u32;
                        if next.state != e.state
                            || now_s.saturating_sub(e.synced_s) > refresh.max(1)
                        {
                            next.synced_s = now_s;
                            let first_reply = matches!(
                                (e.state, next.state),
                                (State::SynSent, State::SynReceived)
                                    | (State::Open, State::Replied)
                            );
                            self.note(RecordOp::Upsert, k, next, first_reply);
                        }
                    }
                    self.map[i] = next;
                    return Track::Existing(next.state);
                }
                self.note(RecordOp::Delete, k, e, false);
                self.remove(i);
                self.counters.closed += 1;
                return Track::Existing(State::TimeWait);
            }
            self.remove(i);
            self.counters.expired += 1;
        }
        let state = match p.proto {
            IPPROTO_TCP if p.flags & (flags::SYN | flags::ACK | flags::RST) == flags::SYN => {
                State::SynSent
            }
            IPPROTO_TCP => {
                self.counters.no_connection += 1;
                return Track::NoConnection;
            }
            // Echo requests open; replies and errors never do.
            IPPROTO_ICMP if p.flags != 8 => {
                self.counters.no_connection += 1;
                return Track::NoConnection;
            }
            IPPROTO_ICMPV6 if p.flags != 128 => {
                self.counters.no_connection += 1;
                return Track::NoConnection;
            }
            _ => State::Open,
        };
        if self.map.len() >= self.capacity {
            // Reclaim a little before refusing.
            self.sweep(now_ms, 16);
            if self.map.len() >= self.capacity {
                self.counters.table_full += 1;
                return Track::TableFull;
            }
        }
        if !allow() {
            self.counters.denied += 1;
            return Track::Denied;
        }
        let e = Entry {
            expires: now_ms + self.timeout(state, p.proto),
            state,
            initiator_lo: forward,
            fins: 0,
            synced_s: (now_ms / 1000) as u32,
        };
        self.map.insert(k, e);
        self.note(RecordOp::Upsert, k, e, false);
        self.counters.created += 1;
        Track::Created
    }

    /// Takes every connection out (to hand them to other workers).
    pub fn drain(&mut self) -> Vec<Connection> {
        self.hand = 0;
        self.map
            .drain(..)
            .map(|(key, entry)| Connection { key, entry })
            .collect()
    }

    /// Adopts a connection from another table; false when this one is full.
    pub fn adopt(&mut self, c: Connection) -> bool {
        if self.map.len() >= self.capacity {
            self.counters.table_full += 1;
            return false;
        }
        self.map.insert(c.key, c.entry);
        true
    }

    /// Adopts a connection a backup held for a failed member: from now on this table owns
    /// it, and its own backup must hear about it.
    pub fn take_over(&mut self, c: Connection) -> bool {
        if !self.adopt(c) {
            return false;
        }
        self.note(RecordOp::Upsert, c.key, c.entry, false);
        true
    }

    /// Closes every connection `keep` refuses (a policy replacement). Returns how many.
    pub fn retain(&mut self, mut keep: impl FnMut(&Packet) -> bool) -> usize {
        let before = self.map.len();
        self.map.retain(|k, e| {
            let to_ip = |o: [u8; 16]| {
                let a = std::net::Ipv6Addr::from(o);
                a.to_ipv4_mapped().map_or(IpAddr::V6(a), IpAddr::V4)
            };
            // Ask about the connection as its initiator opened it.
            let (src, sport, dst, dport) = if e.initiator_lo {
                (to_ip(k.lo), k.lo_port, to_ip(k.hi), k.hi_port)
            } else {
                (to_ip(k.hi), k.hi_port, to_ip(k.lo), k.lo_port)
            };
            keep(&Packet {
                src,
                dst,
                proto: k.proto,
                sport,
                dport,
                flags: 0,
            })
        });
        self.hand = 0;
        let closed = before - self.map.len();
        self.counters.closed += closed as u64;
        closed
    }

    fn timeout(&self, state: State, proto: u8) -> u64 {
        let t = match state {
            State::SynSent | State::SynReceived => self.timeouts.syn,
            State::Established => self.timeouts.established,
            State::FinWait | State::TimeWait => self.timeouts.closing,
            State::Open | State::Replied if proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6 => {
                self.timeouts.icmp
            }
            State::Open | State::Replied => self.timeouts.udp,
        };
        t.as_millis() as u64
    }

    /// The entry after packet `p`; `None` when the connection ends (RST).
    fn advance(
        &self,
        mut e: Entry,
        p: &Packet,
        forward: bool,
        from_initiator: bool,
        now_ms: u64,
    ) -> Option<Entry> {
        if p.proto == IPPROTO_TCP {
            let f = p.flags;
            if f & flags::RST != 0 {
                return None;
            }
            e.state = match e.state {
                State::SynSent
                    if !from_initiator
                        && f & (flags::SYN | flags::ACK) == flags::SYN | flags::ACK =>
                {
                    State::SynReceived
                }
                State::SynReceived
                    if from_initiator && f & flags::ACK != 0 && f & flags::SYN == 0 =>
                {
                    State::Established
                }
                s => s,
            };
            if f & flags::FIN != 0 && matches!(e.state, State::Established | State::FinWait) {
                e.fins |= if forward { 1 } else { 2 };
                e.state = if e.fins == 3 {
                    State::TimeWait
                } else {
                    State::FinWait
                };
            }
        } else if e.state == State::Open && !from_initiator {
            e.state = State::Replied;
        }
        e.expires = now_ms + self.timeout(e.state, p.proto);
        Some(e)
    }

    fn remove(&mut self, i: usize) {
        // swap_remove moves the last entry into `i`: the hand will visit it there.
        self.map.swap_remove_index(i);
    }

    /// Advances the ageing hand over `n` entries, removing expired ones.
    fn sweep(&mut self, now_ms: u64, n: usize) {
        for _ in 0..n {
            if self.map.is_empty() {
                self.hand = 0;
                return;
            }
            if self.hand >= self.map.len() {
                self.hand = 0;
            }
            if self.map[self.hand].expires <= now_ms {
                self.remove(self.hand);
                self.counters.expired += 1;
            } else {
                self.hand += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use baton_common::net::IPPROTO_UDP;

    use super::*;

    fn tcp(src: &str, sport: u16, dst: &str, dport: u16, f: u8) -> Packet {
        Packet {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            proto: IPPROTO_TCP,
            sport,
            dport,
            flags: f,
        }
    }

    const C: &str = "198.18.0.1";
    const S: &str = "198.19.0.1";

    #[test]
    fn tcp_handshake_data_and_close() {
        use flags::*;
        let mut t = ConnTable::new(16, Timeouts::default());
        assert_eq!(
            t.track(&tcp(C, 5000, S, 80, SYN), 0, || true),
            Track::Created
        );
        assert_eq!(
            t.track(&tcp(S, 80, C, 5000, SYN | ACK), 1, || unreachable!()),
            Track::Existing(State::SynReceived)
        );
        assert_eq!(
            t.track(&tcp(C, 5000, S, 80, ACK), 2, || unreachable!()),
            Track::Existing(State::Established)
        );
        assert_eq!(
            t.track(&tcp(S, 80, C, 5000, ACK), 3, || unreachable!()),
            Track::Existing(State::Established)
        );
        assert_eq!(
            t.track(&tcp(C, 5000, S, 80, FIN | ACK), 4, || unreachable!()),
            Track::Existing(State::FinWait)
        );
        assert_eq!(
            t.track(&tcp(S, 80, C, 5000, FIN | ACK), 5, || unreachable!()),
            Track::Existing(State::TimeWait)
        );
        assert_eq!(t.len(), 1);
        // Time-wait lingers for the closing timeout, then the entry is gone.
        let later = 5 + Timeouts::default().closing.as_millis() as u64 + 1;
        assert_eq!(
            t.track(&tcp(C, 5000, S, 80, ACK), later, || true),
            Track::NoConnection
        );
        assert!(t.is_empty());
    }

    #[test]
    fn out_of_state_and_reset() {
        use flags::*;
        let mut t = ConnTable::new(16, Timeouts::default());
        // An ACK, a SYN-ACK or a RST out of the blue opens nothing.
        for f in [ACK, SYN | ACK, RST, FIN] {
            assert_eq!(
                t.track(&tcp(C, 1, S, 2, f), 0, || panic!("policy asked")),
                Track::NoConnection
            );
        }
        assert_eq!(t.counters.no_connection, 4);
        t.track(&tcp(C, 1, S, 2, SYN), 0, || true);
        assert_eq!(
            t.track(&tcp(S, 2, C, 1, RST), 1, || true),
            Track::Existing(State::TimeWait)
        );
        assert!(t.is_empty(), "a reset closes at once");
        assert_eq!(
            t.track(&tcp(C, 1, S, 2, ACK), 2, || true),
            Track::NoConnection
        );
    }

    #[test]
    fn policy_is_asked_once_per_connection() {
        let mut t = ConnTable::new(16, Timeouts::default());
        assert_eq!(
            t.track(&tcp(C, 1, S, 2, flags::SYN), 0, || false),
            Track::Denied
        );
        assert!(t.is_empty());
        let udp = Packet {
            src: C.parse().unwrap(),
            dst: S.parse().unwrap(),
            proto: IPPROTO_UDP,
            sport: 53,
            dport: 53,
            flags: 0,
        };
        let reply = Packet {
            src: udp.dst,
            dst: udp.src,
            ..udp
        };
        assert_eq!(t.track(&udp, 0, || true), Track::Created);
        assert_eq!(
            t.track(&reply, 1, || panic!("asked again")),
            Track::Existing(State::Replied)
        );
        // ICMP: only an echo request opens; the reply (type 0) then matches.
        let echo = Packet {
            proto: IPPROTO_ICMP,
            sport: 7,
            dport: 7,
            flags: 8,
            ..udp
        };
        let echo_reply = Packet {
            src: udp.dst,
            dst: udp.src,
            flags: 0,
            ..echo
        };
        assert_eq!(t.track(&echo_reply, 2, || true), Track::NoConnection);
        assert_eq!(t.track(&echo, 2, || true), Track::Created);
        assert_eq!(
            t.track(&echo_reply, 3, || true),
            Track::Existing(State::Replied)
        );
        // IPv6 works alike.
        let v6 = Packet {
            src: "2001:db8:18::1".parse().unwrap(),
            dst: "2001:db8:19::1".parse().unwrap(),
            proto: IPPROTO_UDP,
            sport: 1,
            dport: 2,
            flags: 0,
        };
        assert_eq!(t.track(&v6, 4, || true), Track::Created);
        assert_eq!(
            t.track(
                &Packet {
                    src: v6.dst,
                    dst: v6.src,
                    sport: 2,
                    dport: 1,
                    ..v6
                },
                5,
                || true
            ),
            Track::Existing(State::Replied)
        );
    }

    #[test]
    fn full_table_refuses_new_and_keeps_existing() {
        let mut t = ConnTable::new(4, Timeouts::default());
        for p in 0..4 {
            assert_eq!(
                t.track(&tcp(C, p, S, 80, flags::SYN), 0, || true),
                Track::Created
            );
        }
        assert_eq!(
            t.track(&tcp(C, 99, S, 80, flags::SYN), 1, || true),
            Track::TableFull
        );
        assert_eq!(t.counters.table_full, 1);
        assert_eq!(
            t.track(&tcp(S, 80, C, 2, flags::SYN | flags::ACK), 1, || true),
            Track::Existing(State::SynReceived)
        );
        // Once entries expire, there is room again without any scan of the table.
        let later = Timeouts::default().syn.as_millis() as u64 + 10;
        assert_eq!(
            t.track(&tcp(C, 99, S, 80, flags::SYN), later, || true),
            Track::Created
        );
    }

    #[test]
    fn ageing_is_incremental_and_complete() {
        let timeouts = Timeouts {
            udp: Duration::from_millis(100),
            ..Default::default()
        };
        let mut t = ConnTable::new(10_000, timeouts);
        for i in 0..5_000u16 {
            let p = Packet {
                src: C.parse().unwrap(),
                dst: S.parse().unwrap(),
                proto: IPPROTO_UDP,
                sport: i,
                dport: 9,
                flags: 0,
            };
            t.track(&p, 0, || true);
        }
        assert_eq!(t.len(), 5_000);
        // Each later packet removes at most two expired entries.
        let fresh = Packet {
            src: C.parse().unwrap(),
            dst: S.parse().unwrap(),
            proto: IPPROTO_UDP,
            sport: 60000,
            dport: 9,
            flags: 0,
        };
        t.track(&fresh, 200, || true);
        assert!(t.len() >= 4_998);
        for _ in 0..3_000 {
            t.track(&fresh, 200, || true);
        }
        assert_eq!(
            t.len(),
            1,
            "all expired entries were swept, the live one stays"
        );
        assert_eq!(t.counters.expired, 5_000);
    }

    #[test]
    fn retain_closes_only_what_the_new_policy_refuses() {
        let mut t = ConnTable::new(16, Timeouts::default());
        t.track(&tcp(C, 1, S, 80, flags::SYN), 0, || true);
        t.track(&tcp(C, 2, S, 22, flags::SYN), 0, || true);
        t.track(&tcp(S, 3, C, 443, flags::SYN), 0, || true);
        let closed = t.retain(|p| p.dport != 22);
        assert_eq!(closed, 1);
        assert_eq!(t.len(), 2);
        // The kept connection was asked about in its initiator's direction.
        assert!(t.state(&tcp(S, 3, C, 443, 0), 1).is_some());
    }

    #[test]
    fn connections_move_between_tables_intact() {
        let mut a = ConnTable::new(4, Timeouts::default());
        let mut b = ConnTable::new(1, Timeouts::default());
        a.track(&tcp(C, 1, S, 2, flags::SYN), 0, || true);
        a.track(&tcp(S, 2, C, 1, flags::SYN | flags::ACK), 1, || true);
        a.track(&tcp(C, 3, S, 2, flags::SYN), 0, || true);
        let moved = a.drain();
        assert!(a.is_empty());
        assert_eq!(moved.len(), 2);
        let (lo, hi) = moved[0].key.addresses();
        assert_eq!((lo, hi), (C.parse().unwrap(), S.parse().unwrap()));
        let mut adopted = 0;
        for c in moved {
            adopted += usize::from(b.adopt(c));
        }
        assert_eq!(adopted, 1, "capacity holds for adopted connections too");
        assert_eq!(b.counters.table_full, 1);
        assert_eq!(b.len(), 1);
        // The adopted connection keeps its state: the handshake goes on.
        let ack = if b.state(&tcp(C, 1, S, 2, 0), 2).is_some() {
            tcp(C, 1, S, 2, flags::ACK)
        } else {
            tcp(C, 3, S, 2, flags::ACK)
        };
        let want = if b.state(&tcp(C, 1, S, 2, 0), 2).is_some() {
            State::Established
        } else {
            State::SynSent
        };
        assert_eq!(
            b.track(&ack, 2, || panic!("no policy for an existing connection")),
            Track::Existing(want)
        );
    }

    #[test]
    fn memory_per_connection_at_one_million() {
        let t = ConnTable::new(1_000_000, Timeouts::default());
        let per = t.memory_bytes() / 1_000_000;
        assert!(per <= 128, "{per} bytes per connection");
    }
}
