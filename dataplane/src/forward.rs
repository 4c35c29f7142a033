//! A member's forwarding of one frame, without I/O: choose the egress side from the
//! destination address, decrement TTL/hop limit, and write the side's virtual MAC and the
//! next hop's MAC. Next hops are resolved by ARP/ND sent as the group's gateway address;
//! frames waiting for a resolution are held (bounded) and released when the answer comes.

use std::{
    collections::VecDeque,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use ahash::AHashMap;
use ipnet::IpNet;

use crate::{
    conntrack::{ConnTable, Connection, FlowKey, Packet, RecordOp, Track, RECORD_BYTES},
    frame::{self, Inspect, ETH_P_ARP, ETH_P_IPV4, ETH_P_IPV6},
    policy::{Action, Policy},
    sync::tap::SyncTap,
};

/// One side of the group as a member sees it.
#[derive(Clone, Debug)]
pub struct Side {
    /// The group's virtual MAC on this side: the source of every frame sent there.
    pub vmac: [u8; 6],
    /// Gateway addresses: the source of ARP/ND solicitations.
    pub gw_v4: Option<Ipv4Addr>,
    pub gw_v6: Option<Ipv6Addr>,
    /// Networks behind this side (on-link: the destination is its own next hop).
    pub prefixes: Vec<IpNet>,
}

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

/// Limits of the neighbour table.
#[derive(Clone, Copy, Debug)]
pub struct NeighbourLimits {
    pub entries: usize,
    /// Frames held per unresolved neighbour.
    pub pending_per_entry: usize,
    /// Interval between solicitations, and how many before giving up.
    pub retry: Duration,
    pub tries: u8,
}

impl Default for NeighbourLimits {
    fn default() -> Self {
        Self {
            entries: 65536,
            pending_per_entry: 16,
            retry: Duration::from_millis(500),
            tries: 6,
        }
    }
}

struct Neighbour {
    mac: Option<[u8; 6]>,
    side: usize,
    asked: Instant,
    tries: u8,
    pending: Vec<Vec<u8>>,
}

pub struct Forwarder {
    sides: [Side; 2],
    neighbours: AHashMap<IpAddr, Neighbour>,
    limits: NeighbourLimits,
    conns: ConnTable,
    policy: Arc<Policy>,
    epoch: Instant,
    /// Frames dropped while held, by reason (the worker adds them to its counters).
    pub dropped_held: [u64; DropReason::COUNT],
    /// Non-first fragments forwarded without tracking (they carry no L4 header).
    pub untracked_fragments: u64,
    icmp_budget: TokenBucket,
    sync: Option<SyncLink>,
}

/// A worker's part in HyperSync.
struct SyncLink {
    tap: Arc<SyncTap>,
    slot: usize,
    /// First replies waiting for the backup's acknowledgement: (ticket, deadline, frame),
    /// in ticket order.
    held: VecDeque<(u64, Instant, Vec<u8>)>,
    /// Records the sync thread's channel had no room for, in order: sent before anything
    /// newer, so each gets the ticket it was promised (the last sent + its position).
    unsent: VecDeque<[u8; RECORD_BYTES]>,
    resync_generation: u64,
    /// A resync whose records wait in `unsent`: it counts as carried out only once they
    /// have gone, or the bulk sync would be declared complete without them.
    resync_unsent: Option<u64>,
}

/// Most records a worker keeps while the channel is full; beyond, they count as lost
/// (`channel_full`) and the connections' refresh sends them again.
const UNSENT_MAX: usize = 4096;

impl SyncLink {
    /// Sends what waits, oldest first, while the channel takes it.
    fn flush(&mut self) {
        while let Some(r) = self.unsent.front() {
            if self.tap.try_emit(self.slot, *r).is_none() {
                break;
            }
            self.unsent.pop_front();
        }
    }

    /// Sends `record`, or keeps it for later; returns its ticket (to come, if kept), or
    /// None if it was lost.
    fn send(&mut self, record: [u8; RECORD_BYTES]) -> Option<u64> {
        if self.unsent.is_empty() {
            if let Some(t) = self.tap.try_emit(self.slot, record) {
                return Some(t);
            }
        }
        if self.unsent.len() >= UNSENT_MAX {
            self.tap.stats.channel_full.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.unsent.push_back(record);
        Some(self.tap.issued(self.slot) + self.unsent.len() as u64)
    }
}

impl Drop for SyncLink {
    fn drop(&mut self) {
        self.tap
            .stats
            .channel_full
            .fetch_add(self.unsent.len() as u64, Ordering::Relaxed);
        self.tap.detach_slot(self.slot);
    }
}

/// Limits the ICMP errors a member originates (like the kernel's icmp_ratelimit), so a
/// flood of expiring packets cannot turn into a flood of errors.
struct TokenBucket {
    tokens: f64,
    per_sec: f64,
    burst: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    fn new(per_sec: f64, burst: f64) -> Self {
        Self {
            tokens: burst,
            per_sec,
            burst,
            last: None,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            self.tokens = (self.tokens
                + now.saturating_duration_since(last).as_secs_f64() * self.per_sec)
                .min(self.burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Forwarder {
    pub fn new(
        sides: [Side; 2],
        limits: NeighbourLimits,
        conns: ConnTable,
        policy: Arc<Policy>,
    ) -> Self {
        Self {
            sides,
            neighbours: AHashMap::new(),
            limits,
            conns,
            policy,
            epoch: Instant::now(),
            dropped_held: [0; DropReason::COUNT],
            untracked_fragments: 0,
            icmp_budget: TokenBucket::new(1000.0, 100.0),
            sync: None,
        }
    }

    /// Turns HyperSync on for this worker (slot `slot` of the tap): its connection changes
    /// go to the sync thread, a connection's first reply waits for the backup's
    /// acknowledgement, and packets of unknown connections are looked up among the copies
    /// this member holds as a backup.
    pub fn set_sync(&mut self, tap: Arc<SyncTap>, slot: usize) {
        self.conns.enable_journal();
        let resync_generation = tap.resync().map_or(0, |r| r.generation);
        tap.attach_slot(slot, resync_generation);
        self.sync = Some(SyncLink {
            tap,
            slot,
            held: VecDeque::new(),
            unsent: VecDeque::new(),
            resync_generation,
            resync_unsent: None,
        });
    }

    /// Frames waiting for the backup.
    pub fn holding(&self) -> usize {
        self.sync.as_ref().map_or(0, |s| s.held.len())
    }

    fn ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// Sends the table's changes to the sync thread; returns the ticket a first reply
    /// must wait for.
    fn publish_changes(&mut self, now: Instant) -> Option<u64> {
        let link = self.sync.as_mut()?;
        let ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        let mut hold = None;
        link.flush();
        if let Some(j) = self.conns.journal() {
            for c in j.drain(..) {
                let ticket = link.send(c.conn.encode(c.op, ms));
                if c.first_reply {
                    hold = ticket;
                }
            }
        }
        hold
    }

    /// Releases first replies the backup has acknowledged, or that waited long enough.
    fn release(&mut self, now: Instant, out: &mut Vec<Vec<u8>>) {
        let Some(link) = self.sync.as_mut() else {
            return;
        };
        if link.held.is_empty() {
            return;
        }
        let acked = link.tap.watermark(link.slot);
        while let Some((ticket, deadline, _)) = link.held.front() {
            if *ticket <= acked {
                link.tap.stats.held.fetch_add(1, Ordering::Relaxed);
            } else if now >= *deadline {
                link.tap.stats.hold_timeouts.fetch_add(1, Ordering::Relaxed);
            } else {
                break;
            }
            if let Some((_, _, f)) = link.held.pop_front() {
                out.push(f);
            }
        }
    }

    /// Re-sends the connections a bulk resync asks for.
    fn resync(&mut self, now: Instant) {
        let Some(link) = self.sync.as_mut() else {
            return;
        };
        let Some(r) = link.tap.resync() else { return };
        // Records kept for a full channel go first: their tickets are promised. Until
        // they have gone, the resync waits for a later tick.
        if r.generation == link.resync_generation || !link.unsent.is_empty() {
            return;
        }
        link.resync_generation = r.generation;
        let ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        let mut sent = 0usize;
        for c in self.conns.snapshot() {
            if r.wants(&link.tap.bucketer, &c.key) {
                link.send(c.encode(RecordOp::Upsert, ms));
                sent += 1;
            }
        }
        if link.unsent.is_empty() {
            link.tap.mark_applied(link.slot, r.generation);
        } else {
            link.resync_unsent = Some(r.generation);
        }
        tracing::debug!(slot = link.slot, sent, "bulk resync");
    }

    /// A frame that completes a connection's state leaves once its backup holds the
    /// connection (the flush-and-ack rule), or after the hold limit.
    fn hold_first_reply(
        &mut self,
        v: Verdict,
        f: &[u8],
        hold: Option<u64>,
        now: Instant,
    ) -> Verdict {
        let (Verdict::Forward, Some(ticket), Some(link)) = (v, hold, self.sync.as_mut()) else {
            return v;
        };
        if link.tap.watermark(link.slot) >= ticket {
            return v;
        }
        link.held
            .push_back((ticket, now + link.tap.hold_max, f.to_vec()));
        Verdict::Held
    }

    /// Adds a neighbour by hand (a static entry, or a benchmark's preset).
    pub fn add_neighbour(&mut self, ip: IpAddr, mac: [u8; 6]) {
        let mut out = Vec::new();
        self.learn(ip, mac, &mut out);
    }

    /// Takes all connections out (Dynamic Balancing moves them to other workers).
    pub fn take_connections(&mut self) -> Vec<Connection> {
        self.conns.drain()
    }

    /// Adopts a connection of another worker; false when the table is full.
    pub fn adopt_connection(&mut self, c: Connection) -> bool {
        self.conns.adopt(c)
    }

    /// Resolved neighbours, to seed a new worker.
    pub fn resolved_neighbours(&self) -> Vec<(IpAddr, [u8; 6])> {
        self.neighbours
            .iter()
            .filter_map(|(ip, n)| n.mac.map(|m| (*ip, m)))
            .collect()
    }

    pub fn connections(&self) -> &ConnTable {
        &self.conns
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Replaces the policy at once: connections it no longer allows are closed, the others
    /// go on. Returns how many were closed.
    pub fn set_policy(&mut self, policy: Arc<Policy>) -> usize {
        let closed = self
            .conns
            .retain(|p| policy.evaluate(p).action == Action::Accept);
        self.policy = policy;
        closed
    }

    /// Lets the packet through the connection table (and the policy for a first packet).
    /// Ok carries the ticket a first reply must wait for, when sync is on.
    fn admit(&mut self, seen: Inspect, now: Instant) -> Result<Option<u64>, DropReason> {
        let ms = self.ms(now);
        match seen {
            Inspect::Truncated => Err(DropReason::Truncated),
            Inspect::Untracked => {
                self.untracked_fragments += 1;
                Ok(None)
            }
            // An ICMP error passes when the connection it reports on exists.
            Inspect::Related(q) => {
                if self.conns.state(&q, ms).is_none() && !self.take_over(&q, now) {
                    return Err(DropReason::NoConnection);
                }
                Ok(self.publish_changes(now))
            }
            Inspect::Track(p) => {
                let mut track = self.track(&p, ms);
                if track == Track::NoConnection && self.take_over(&p, now) {
                    // A connection of a failed member this one backed up: it goes on here.
                    self.conns.counters.no_connection -= 1;
                    track = self.track(&p, ms);
                }
                let hold = self.publish_changes(now);
                match track {
                    Track::Existing(_) | Track::Created => Ok(hold),
                    Track::Denied => Err(DropReason::Policy),
                    Track::NoConnection => Err(DropReason::NoConnection),
                    Track::TableFull => Err(DropReason::TableFull),
                }
            }
        }
    }

    /// Adopts the backup copy of the connection `p` belongs to, if this member holds one.
    fn take_over(&mut self, p: &Packet, now: Instant) -> bool {
        let Some(link) = self.sync.as_ref() else {
            return false;
        };
        let (key, _) = FlowKey::of(p);
        let ms = self.ms(now);
        let copy = link
            .tap
            .store
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(&key, now, ms);
        match copy {
            Some(c) if self.conns.take_over(c) => {
                link.tap.stats.took_over();
                true
            }
            _ => false,
        }
    }

    /// Tracks a packet, asking the policy about a new connection.
    fn track(&mut self, p: &Packet, ms: u64) -> Track {
        let policy = &self.policy;
        self.conns.track(p, ms, || {
            let v = policy.evaluate(p);
            if v.log {
                tracing::info!(
                    src = %p.src, dst = %p.dst, proto = p.proto, sport = p.sport, dport = p.dport,
                    rule = ?v.rule, action = ?v.action, "policy"
                );
            }
            v.action == Action::Accept
        })
    }

    /// The side whose prefixes contain `ip` (longest prefix wins).
    pub fn side_of(&self, ip: IpAddr) -> Option<usize> {
        let mut best: Option<(usize, u8)> = None;
        for (i, side) in self.sides.iter().enumerate() {
            for p in &side.prefixes {
                if p.contains(&ip) && best.is_none_or(|(_, len)| p.prefix_len() > len) {
                    best = Some((i, p.prefix_len()));
                }
            }
        }
        best.map(|(i, _)| i)
    }

    /// The MAC a neighbour resolved to, if it has.
    pub fn neighbour(&self, ip: IpAddr) -> Option<[u8; 6]> {
        self.neighbours.get(&ip).and_then(|n| n.mac)
    }

    /// Handles one received frame. Frames to send besides it (solicitations, released
    /// frames) are appended to `out`.
    pub fn process(&mut self, f: &mut [u8], now: Instant, out: &mut Vec<Vec<u8>>) -> Verdict {
        self.release(now, out);
        let Some((ethertype, l3)) = frame::l2(f) else {
            return Verdict::Drop(DropReason::Truncated);
        };
        match ethertype {
            ETH_P_IPV4 => self.ipv4(f, l3, now, out),
            ETH_P_IPV6 => self.ipv6(f, l3, now, out),
            ETH_P_ARP => {
                self.arp(f, l3, out);
                Verdict::Consumed
            }
            _ => Verdict::Drop(DropReason::NotIp),
        }
    }

    fn ipv4(&mut self, f: &mut [u8], l3: usize, now: Instant, out: &mut Vec<Vec<u8>>) -> Verdict {
        let ip = &mut f[l3..];
        if ip.len() < 20 {
            return Verdict::Drop(DropReason::Truncated);
        }
        let ihl = ((ip[0] & 0x0f) as usize) * 4;
        if ip[0] >> 4 != 4 || ihl < 20 {
            return Verdict::Drop(DropReason::Malformed);
        }
        if ip.len() < ihl {
            return Verdict::Drop(DropReason::Truncated);
        }
        let dst = IpAddr::V4(Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]));
        let Some(side) = self.side_of(dst) else {
            return Verdict::Drop(DropReason::NoRoute);
        };
        if ip[8] <= 1 {
            let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
            if let (Some(back), true) = (self.side_of(IpAddr::V4(src)), self.icmp_budget.take(now))
            {
                if let Some(gw) = self.sides[back].gw_v4 {
                    let prev_hop: [u8; 6] = f[6..12].try_into().unwrap();
                    out.push(frame::icmp_time_exceeded(
                        self.sides[back].vmac,
                        prev_hop,
                        gw,
                        &f[l3..],
                    ));
                }
            }
            return Verdict::Drop(DropReason::TtlExceeded);
        }
        let seen = frame::inspect_v4(ip);
        let hold = match self.admit(seen, now) {
            Ok(hold) => hold,
            Err(r) => return Verdict::Drop(r),
        };
        let ip = &mut f[l3..];
        frame::decrement_ttl_v4(ip);
        let v = self.send_to_neighbour(f, side, dst, now, out);
        self.hold_first_reply(v, f, hold, now)
    }

    fn ipv6(&mut self, f: &mut [u8], l3: usize, now: Instant, out: &mut Vec<Vec<u8>>) -> Verdict {
        let ip = &mut f[l3..];
        if ip.len() < 40 {
            return Verdict::Drop(DropReason::Truncated);
        }
        if ip[0] >> 4 != 6 {
            return Verdict::Drop(DropReason::Malformed);
        }
        // Neighbour discovery addressed to the group reaches members broadcast by the
        // orchestrator: learn from advertisements, ignore the rest.
        if ip[6] == frame::IPPROTO_ICMPV6 && ip.len() >= 41 && (133..=137).contains(&ip[40]) {
            if let Some((target, mac)) = frame::parse_na(ip) {
                self.learn(IpAddr::V6(target), mac, out);
            }
            return Verdict::Consumed;
        }
        let dst = IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).unwrap()));
        let Some(side) = self.side_of(dst) else {
            return Verdict::Drop(DropReason::NoRoute);
        };
        if ip[7] <= 1 {
            let src = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).unwrap());
            if let (Some(back), true) = (self.side_of(IpAddr::V6(src)), self.icmp_budget.take(now))
            {
                if let Some(gw) = self.sides[back].gw_v6 {
                    let prev_hop: [u8; 6] = f[6..12].try_into().unwrap();
                    out.push(frame::icmpv6_time_exceeded(
                        self.sides[back].vmac,
                        prev_hop,
                        gw,
                        &f[l3..],
                    ));
                }
            }
            return Verdict::Drop(DropReason::TtlExceeded);
        }
        let seen = frame::inspect_v6(ip);
        let hold = match self.admit(seen, now) {
            Ok(hold) => hold,
            Err(r) => return Verdict::Drop(r),
        };
        f[l3 + 7] -= 1;
        let v = self.send_to_neighbour(f, side, dst, now, out);
        self.hold_first_reply(v, f, hold, now)
    }

    fn arp(&mut self, f: &[u8], l3: usize, out: &mut Vec<Vec<u8>>) {
        let Some(arp) = frame::parse_arp(&f[l3..]) else {
            return;
        };
        let ours = self.sides.iter().any(|s| s.gw_v4 == Some(arp.tpa));
        let asked = self.neighbours.contains_key(&IpAddr::V4(arp.spa));
        if ours || asked {
            self.learn(IpAddr::V4(arp.spa), arp.sha, out);
        }
    }

    /// Records that `ip` is at `mac` (only for addresses on one of our sides) and releases
    /// the frames that waited for it.
    fn learn(&mut self, ip: IpAddr, mac: [u8; 6], out: &mut Vec<Vec<u8>>) {
        let Some(side) = self.side_of(ip) else { return };
        if mac[0] & 1 != 0 {
            return;
        }
        let vmac = self.sides[side].vmac;
        let room = self.neighbours.len() < self.limits.entries;
        match self.neighbours.get_mut(&ip) {
            Some(n) => {
                n.mac = Some(mac);
                n.side = side;
                for mut p in n.pending.drain(..) {
                    frame::set_macs(&mut p, mac, vmac);
                    out.push(p);
                }
            }
            None if room => {
                self.neighbours.insert(
                    ip,
                    Neighbour {
                        mac: Some(mac),
                        side,
                        asked: Instant::now(),
                        tries: 0,
                        pending: Vec::new(),
                    },
                );
            }
            None => {}
        }
    }

    fn send_to_neighbour(
        &mut self,
        f: &mut [u8],
        side: usize,
        next_hop: IpAddr,
        now: Instant,
        out: &mut Vec<Vec<u8>>,
    ) -> Verdict {
        let vmac = self.sides[side].vmac;
        let pending_max = self.limits.pending_per_entry;
        if let Some(n) = self.neighbours.get_mut(&next_hop) {
            if let Some(mac) = n.mac {
                frame::set_macs(f, mac, vmac);
                return Verdict::Forward;
            }
            if n.pending.len() >= pending_max {
                return Verdict::Drop(DropReason::NeighbourQueueFull);
            }
            n.pending.push(f.to_vec());
            return Verdict::Held;
        }
        if self.neighbours.len() >= self.limits.entries {
            return Verdict::Drop(DropReason::NeighbourQueueFull);
        }
        if let Some(s) = self.solicitation(side, next_hop) {
            out.push(s);
        }
        self.neighbours.insert(
            next_hop,
            Neighbour {
                mac: None,
                side,
                asked: now,
                tries: 1,
                pending: vec![f.to_vec()],
            },
        );
        Verdict::Held
    }

    fn solicitation(&self, side: usize, ip: IpAddr) -> Option<Vec<u8>> {
        let s = &self.sides[side];
        match ip {
            IpAddr::V4(t) => s.gw_v4.map(|gw| frame::arp_request(s.vmac, gw, t)),
            IpAddr::V6(t) => s
                .gw_v6
                .map(|gw| frame::neighbour_solicitation(s.vmac, gw, t)),
        }
    }

    /// Asks again for neighbours still unresolved, and gives up (dropping what they held)
    /// after the configured tries. Call it a few times a second.
    pub fn tick(&mut self, now: Instant, out: &mut Vec<Vec<u8>>) {
        if let Some(link) = self.sync.as_mut() {
            link.flush();
            if link.unsent.is_empty() {
                if let Some(generation) = link.resync_unsent.take() {
                    link.tap.mark_applied(link.slot, generation);
                }
            }
        }
        self.release(now, out);
        self.resync(now);
        let mut again = Vec::new();
        let mut dropped = 0u64;
        let limits = self.limits;
        self.neighbours.retain(|ip, n| {
            if n.mac.is_some() || now.duration_since(n.asked) < limits.retry {
                return true;
            }
            if n.tries >= limits.tries {
                dropped += n.pending.len() as u64;
                return false;
            }
            n.tries += 1;
            n.asked = now;
            again.push((n.side, *ip));
            true
        });
        self.dropped_held[DropReason::NeighbourUnreachable as usize] += dropped;
        for (side, ip) in again {
            if let Some(s) = self.solicitation(side, ip) {
                out.push(s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use etherparse::PacketBuilder;

    use super::*;

    const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];
    const INT_HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x22];
    const VMAC: [[u8; 6]; 2] = [[0x02, 0xba, 0x70, 0, 1, 0], [0x02, 0xba, 0x70, 0, 1, 1]];

    fn forwarder() -> Forwarder {
        let side = |i: usize, v4: &str, v6: &str, p4: &str, p6: &str| Side {
            vmac: VMAC[i],
            gw_v4: Some(v4.parse().unwrap()),
            gw_v6: Some(v6.parse().unwrap()),
            prefixes: vec![p4.parse().unwrap(), p6.parse().unwrap()],
        };
        Forwarder::new(
            [
                side(
                    0,
                    "198.18.0.254",
                    "2001:db8:18::fe",
                    "198.18.0.0/24",
                    "2001:db8:18::/64",
                ),
                side(
                    1,
                    "198.19.0.254",
                    "2001:db8:19::fe",
                    "198.19.0.0/24",
                    "2001:db8:19::/64",
                ),
            ],
            NeighbourLimits::default(),
            ConnTable::new(1024, crate::conntrack::Timeouts::default()),
            Arc::new(Policy::accept_all(1)),
        )
    }

    fn udp4(src: [u8; 4], dst: [u8; 4], ttl: u8) -> Vec<u8> {
        let b = PacketBuilder::ethernet2(HOST_MAC, VMAC[0])
            .ipv4(src, dst, ttl)
            .udp(1000, 2000);
        let mut v = Vec::new();
        b.write(&mut v, b"hello").unwrap();
        v
    }

    fn arp_reply(spa: [u8; 4], sha: [u8; 6], tpa: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0u8; 42];
        f[0..6].copy_from_slice(&VMAC[1]);
        f[6..12].copy_from_slice(&sha);
        f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
        f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
        f[22..28].copy_from_slice(&sha);
        f[28..32].copy_from_slice(&spa);
        f[32..38].copy_from_slice(&VMAC[1]);
        f[38..42].copy_from_slice(&tpa);
        f
    }

    #[test]
    fn holds_until_arp_answers_then_forwards_with_rewritten_headers() {
        let mut fw = forwarder();
        let now = Instant::now();
        let mut out = Vec::new();
        let mut f = udp4([198, 18, 0, 1], [198, 19, 0, 1], 64);
        assert_eq!(fw.process(&mut f, now, &mut out), Verdict::Held);
        // One ARP request, from the internal side's virtual MAC and gateway address.
        assert_eq!(out.len(), 1);
        let req = frame::parse_arp(&out[0][14..]).unwrap();
        assert_eq!(req.oper, 1);
        assert_eq!(req.spa, Ipv4Addr::new(198, 19, 0, 254));
        assert_eq!(req.tpa, Ipv4Addr::new(198, 19, 0, 1));
        assert_eq!(&out[0][6..12], &VMAC[1]);
        out.clear();

        let mut reply = arp_reply([198, 19, 0, 1], INT_HOST_MAC, [198, 19, 0, 254]);
        assert_eq!(fw.process(&mut reply, now, &mut out), Verdict::Consumed);
        assert_eq!(out.len(), 1, "the held frame is released");
        let p = &out[0];
        assert_eq!(&p[0..6], &INT_HOST_MAC);
        assert_eq!(&p[6..12], &VMAC[1]);
        let ip = etherparse::Ipv4HeaderSlice::from_slice(&p[14..]).unwrap();
        assert_eq!(ip.ttl(), 63);
        assert_eq!(ip.header_checksum(), ip.to_header().calc_header_checksum());

        // The next frame goes straight through.
        out.clear();
        let mut f = udp4([198, 18, 0, 1], [198, 19, 0, 1], 9);
        assert_eq!(fw.process(&mut f, now, &mut out), Verdict::Forward);
        assert!(out.is_empty());
        let ip = etherparse::Ipv4HeaderSlice::from_slice(&f[14..]).unwrap();
        assert_eq!(ip.ttl(), 8);
        assert_eq!(ip.header_checksum(), ip.to_header().calc_header_checksum());
    }

    #[test]
    fn ipv6_resolves_by_neighbour_solicitation() {
        let mut fw = forwarder();
        let now = Instant::now();
        let mut out = Vec::new();
        let src: Ipv6Addr = "2001:db8:19::1".parse().unwrap();
        let dst: Ipv6Addr = "2001:db8:18::2".parse().unwrap();
        let mut f = Vec::new();
        PacketBuilder::ethernet2(INT_HOST_MAC, VMAC[1])
            .ipv6(src.octets(), dst.octets(), 64)
            .tcp(5000, 80, 1, 1000)
            .syn()
            .write(&mut f, &[])
            .unwrap();
        assert_eq!(fw.process(&mut f, now, &mut out), Verdict::Held);
        assert_eq!(out.len(), 1);
        let ns = &out[0];
        // Solicited-node multicast of the target, checksum valid.
        assert_eq!(&ns[0..6], &[0x33, 0x33, 0xff, 0, 0, 2]);
        let sliced = etherparse::SlicedPacket::from_ethernet(ns).unwrap();
        match sliced.transport {
            Some(etherparse::TransportSlice::Icmpv6(icmp)) => {
                assert_eq!(icmp.type_u8(), 135);
                let ip = match sliced.net {
                    Some(etherparse::NetSlice::Ipv6(ip)) => ip,
                    _ => panic!("not ipv6"),
                };
                let expected = icmp
                    .icmp_type()
                    .calc_checksum(
                        ip.header().source(),
                        ip.header().destination(),
                        icmp.payload(),
                    )
                    .unwrap();
                assert_eq!(icmp.checksum(), expected, "NS checksum");
            }
            other => panic!("not icmpv6: {other:?}"),
        }
        // The advertisement comes back (broadcast by the orchestrator).
        let host_mac = [0x02, 0, 0, 0, 0, 0x33];
        let na = frame::neighbour_advertisement(
            host_mac,
            dst,
            VMAC[0],
            "2001:db8:18::fe".parse().unwrap(),
        );
        let mut na = na;
        out.clear();
        assert_eq!(fw.process(&mut na, now, &mut out), Verdict::Consumed);
        assert_eq!(out.len(), 1);
        assert_eq!(&out[0][0..6], &host_mac);
        assert_eq!(&out[0][6..12], &VMAC[0]);
        assert_eq!(out[0][14 + 7], 63, "hop limit decremented");
    }

    #[test]
    fn drops_are_classified() {
        let mut fw = forwarder();
        let now = Instant::now();
        let mut out = Vec::new();
        assert_eq!(
            fw.process(&mut [0u8; 10], now, &mut out),
            Verdict::Drop(DropReason::Truncated)
        );
        let mut f = udp4([198, 18, 0, 1], [203, 0, 113, 1], 64);
        assert_eq!(
            fw.process(&mut f, now, &mut out),
            Verdict::Drop(DropReason::NoRoute)
        );
        let mut f = udp4([198, 18, 0, 1], [198, 19, 0, 1], 1);
        assert_eq!(
            fw.process(&mut f, now, &mut out),
            Verdict::Drop(DropReason::TtlExceeded)
        );
        // The expired packet's sender is told, from the gateway of its own side.
        assert_eq!(out.len(), 1);
        let err = etherparse::SlicedPacket::from_ethernet(&out[0]).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = err.net else {
            panic!("not IPv4")
        };
        assert_eq!(ip.header().source(), [198, 18, 0, 254]);
        assert_eq!(ip.header().destination(), [198, 18, 0, 1]);
        assert_eq!(
            ip.header().header_checksum(),
            ip.header().to_header().calc_header_checksum()
        );
        let Some(etherparse::TransportSlice::Icmpv4(icmp)) = err.transport else {
            panic!("not ICMP")
        };
        assert_eq!(icmp.type_u8(), 11);
        assert_eq!(
            icmp.checksum(),
            icmp.icmp_type().calc_checksum(icmp.payload())
        );
        assert_eq!(&out[0][0..6], &HOST_MAC, "back to the previous hop");
        assert_eq!(&out[0][6..12], &VMAC[0]);
        out.clear();
        let mut f = udp4([198, 18, 0, 1], [198, 19, 0, 1], 64);
        f[14] = 0x43; // IHL 3
        assert_eq!(
            fw.process(&mut f, now, &mut out),
            Verdict::Drop(DropReason::Malformed)
        );
        let mut f = udp4([198, 18, 0, 1], [198, 19, 0, 1], 64);
        f.truncate(20);
        assert_eq!(
            fw.process(&mut f, now, &mut out),
            Verdict::Drop(DropReason::Truncated)
        );
        let mut f = vec![0u8; 60];
        f[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
        assert_eq!(
            fw.process(&mut f, now, &mut out),
            Verdict::Drop(DropReason::NotIp)
        );
        assert!(out.is_empty());
    }

    #[test]
    fn held_frames_are_bounded_and_given_up() {
        let limits = NeighbourLimits {
            pending_per_entry: 2,
            retry: Duration::from_millis(10),
            tries: 2,
            ..Default::default()
        };
        let mut fw = forwarder();
        fw.limits = limits;
        let t0 = Instant::now();
        let mut out = Vec::new();
        for _ in 0..2 {
            let mut f = udp4([198, 18, 0, 1], [198, 19, 0, 9], 64);
            assert_eq!(fw.process(&mut f, t0, &mut out), Verdict::Held);
        }
        let mut f = udp4([198, 18, 0, 1], [198, 19, 0, 9], 64);
        assert_eq!(
            fw.process(&mut f, t0, &mut out),
            Verdict::Drop(DropReason::NeighbourQueueFull)
        );
        assert_eq!(out.len(), 1);
        fw.tick(t0 + Duration::from_millis(20), &mut out);
        assert_eq!(out.len(), 2, "asked again");
        fw.tick(t0 + Duration::from_millis(40), &mut out);
        assert_eq!(
            fw.dropped_held[DropReason::NeighbourUnreachable as usize],
            2
        );
        assert!(fw.neighbour("198.19.0.9".parse().unwrap()).is_none());
    }

    fn tcp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, syn: bool) -> Vec<u8> {
        let b = PacketBuilder::ethernet2(HOST_MAC, VMAC[0]).ipv4(src, dst, 64);
        let b = if syn {
            b.tcp(sport, dport, 1, 1000).syn()
        } else {
            b.tcp(sport, dport, 1, 1000).ack(5)
        };
        let mut v = Vec::new();
        b.write(&mut v, &[]).unwrap();
        v
    }

    fn resolved() -> Forwarder {
        let mut fw = forwarder();
        let mut out = Vec::new();
        let mut reply = arp_reply([198, 19, 0, 1], INT_HOST_MAC, [198, 19, 0, 254]);
        fw.process(&mut reply, Instant::now(), &mut out);
        fw
    }

    #[test]
    fn records_refused_by_a_full_channel_go_later_and_the_reply_waits_for_them() {
        // A channel of one record: the SYN's record fills it.
        let (tap, records) = SyncTap::new(
            1,
            64,
            std::time::Duration::from_secs(10),
            Arc::new(|_: &FlowKey| 0),
        );
        let mut fw = resolved();
        fw.set_sync(tap.clone(), 0);
        let now = Instant::now();
        let mut out = Vec::new();
        let mut mac = arp_reply([198, 18, 0, 1], HOST_MAC, [198, 18, 0, 254]);
        fw.process(&mut mac, now, &mut out);
        let mut syn = tcp4([198, 18, 0, 1], [198, 19, 0, 1], 4000, 80, true);
        assert_eq!(fw.process(&mut syn, now, &mut out), Verdict::Forward);
        // The SYN-ACK's record finds the channel full: kept, and the reply held for it.
        let mut syn_ack = Vec::new();
        PacketBuilder::ethernet2(INT_HOST_MAC, VMAC[1])
            .ipv4([198, 19, 0, 1], [198, 18, 0, 1], 64)
            .tcp(80, 4000, 7, 1000)
            .syn()
            .ack(2)
            .write(&mut syn_ack, &[])
            .unwrap();
        assert_eq!(fw.process(&mut syn_ack, now, &mut out), Verdict::Held);
        assert_eq!(tap.stats.channel_full.load(Ordering::Relaxed), 0);
        assert_eq!(records.try_recv().unwrap().ticket, 1);
        assert!(
            records.try_recv().is_err(),
            "the kept record waits for a tick"
        );
        fw.tick(now, &mut out);
        let kept = records.try_recv().expect("sent at the next tick");
        assert_eq!(kept.ticket, 2, "the ticket the held reply waits for");
        // Held until the backup acknowledges ticket 2, then released.
        out.clear();
        tap.set_watermark(0, 1);
        fw.tick(now, &mut out);
        assert!(out.is_empty() && fw.holding() == 1);
        tap.set_watermark(0, 2);
        fw.tick(now, &mut out);
        assert_eq!(fw.holding(), 0);
        assert_eq!(out.len(), 1, "the SYN-ACK leaves");
        assert_eq!(tap.stats.channel_full.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn stateful_filtering() {
        let mut fw = resolved();
        let now = Instant::now();
        let mut out = Vec::new();
        // An ACK with no connection is dropped; after a SYN the connection's ACKs pass.
        let mut ack = tcp4([198, 18, 0, 1], [198, 19, 0, 1], 4000, 80, false);
        assert_eq!(
            fw.process(&mut ack, now, &mut out),
            Verdict::Drop(DropReason::NoConnection)
        );
        let mut syn = tcp4([198, 18, 0, 1], [198, 19, 0, 1], 4000, 80, true);
        assert_eq!(fw.process(&mut syn, now, &mut out), Verdict::Forward);
        let mut ack = tcp4([198, 18, 0, 1], [198, 19, 0, 1], 4000, 80, false);
        assert_eq!(fw.process(&mut ack, now, &mut out), Verdict::Forward);
        assert_eq!(fw.connections().len(), 1);
        // A policy that refuses port 80 closes that connection and refuses new ones.
        let no_web = Policy::parse("version = 2\n[[rules]]\nproto = \"tcp\"\ndport = \"80\"\naction = \"drop\"\n[[rules]]\naction = \"accept\"").unwrap();
        let mut ssh = tcp4([198, 18, 0, 1], [198, 19, 0, 1], 4001, 22, true);
        assert_eq!(fw.process(&mut ssh, now, &mut out), Verdict::Forward);
        assert_eq!(fw.set_policy(Arc::new(no_web)), 1);
        let mut ack = tcp4([198, 18, 0, 1], [198, 19, 0, 1], 4000, 80, false);
        assert_eq!(
            fw.process(&mut ack, now, &mut out),
            Verdict::Drop(DropReason::NoConnection)
        );
        let mut syn = tcp4([198, 18, 0, 1], [198, 19, 0, 1], 4002, 80, true);
        assert_eq!(
            fw.process(&mut syn, now, &mut out),
            Verdict::Drop(DropReason::Policy)
        );
        let mut ssh_ack = tcp4([198, 18, 0, 1], [198, 19, 0, 1], 4001, 22, false);
        assert_eq!(
            fw.process(&mut ssh_ack, now, &mut out),
            Verdict::Forward,
            "the allowed connection goes on"
        );
    }

    #[test]
    fn icmp_errors_pass_only_for_known_connections() {
        let mut fw = resolved();
        let now = Instant::now();
        let mut out = Vec::new();
        let syn = tcp4([198, 19, 0, 1], [198, 18, 0, 1], 4000, 80, true);
        let error = |quoted: &[u8]| {
            let mut v = Vec::new();
            PacketBuilder::ethernet2(HOST_MAC, VMAC[0])
                .ipv4([198, 18, 0, 200], [198, 19, 0, 1], 64)
                .icmpv4(etherparse::Icmpv4Type::TimeExceeded(
                    etherparse::icmpv4::TimeExceededCode::TtlExceededInTransit,
                ))
                .write(&mut v, &quoted[14..14 + 28])
                .unwrap();
            v
        };
        assert_eq!(
            fw.process(&mut error(&syn), now, &mut out),
            Verdict::Drop(DropReason::NoConnection)
        );
        let mut s = syn.clone();
        s[0..6].copy_from_slice(&INT_HOST_MAC);
        assert!(matches!(
            fw.process(&mut s, now, &mut out),
            Verdict::Forward | Verdict::Held
        ));
        assert!(matches!(
            fw.process(&mut error(&syn), now, &mut out),
            Verdict::Forward | Verdict::Held
        ));
    }
}
