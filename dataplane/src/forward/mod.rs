//! A member's forwarding of one frame, without I/O: let it through the connection table
//! and the policy, choose the egress side from the destination address, decrement the
//! TTL/hop limit, and write the side's virtual MAC and the next hop's MAC. The parts live
//! beside: routing (`route`), the neighbour cache (`neighbour`), ICMP errors (`icmp`), and
//! the worker's side of HyperSync (`crate::sync::worker`).

mod icmp;
mod neighbour;
mod route;
mod token_bucket;

use std::{net::IpAddr, sync::Arc, time::Instant};

use baton_common::net::{ETH_P_ARP, ETH_P_IPV4, ETH_P_IPV6};

use self::{icmp::IcmpErrors, neighbour::Neighbours};
pub use self::{neighbour::NeighbourLimits, route::Side};
use crate::{
    conntrack::{ConnTable, Connection, Packet, Track},
    frame,
    inspect::{inspect_v4, inspect_v6, Inspect},
    policy::{Action, Policy},
    port::FrameHandler,
    sync::{tap::SyncTap, worker::WorkerSync},
    verdict::{DropReason, Verdict},
    wire::{IpPacket, Ipv4Packet, Ipv6Packet, WireError},
};

pub struct Forwarder {
    sides: [Side; 2],
    neighbours: Neighbours,
    conns: ConnTable,
    policy: Arc<Policy>,
    epoch: Instant,
    /// Frames dropped while held, by reason (the worker adds them to its counters).
    pub dropped_held: [u64; DropReason::COUNT],
    /// Non-first fragments forwarded without tracking (they carry no L4 header).
    pub untracked_fragments: u64,
    icmp: IcmpErrors,
    sync: Option<WorkerSync>,
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
            neighbours: Neighbours::new(limits),
            conns,
            policy,
            epoch: Instant::now(),
            dropped_held: [0; DropReason::COUNT],
            untracked_fragments: 0,
            icmp: IcmpErrors::new(),
            sync: None,
        }
    }

    /// Turns HyperSync on for this worker (slot `slot` of the tap): its connection changes
    /// go to the sync thread, a connection's first reply waits for the backup's
    /// acknowledgement, and packets of unknown connections are looked up among the copies
    /// this member holds as a backup.
    pub fn set_sync(&mut self, tap: Arc<SyncTap>, slot: usize) {
        self.conns.enable_journal();
        self.sync = Some(WorkerSync::new(tap, slot));
    }

    /// Frames waiting for the backup.
    pub fn holding(&self) -> usize {
        self.sync.as_ref().map_or(0, WorkerSync::holding)
    }

    fn ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// Sends the table's changes to the sync thread; returns the ticket a first reply
    /// must wait for.
    fn publish_changes(&mut self, now: Instant) -> Option<u64> {
        let ms = self.ms(now);
        self.sync.as_mut()?.publish(&mut self.conns, ms)
    }

    /// Releases first replies the backup has acknowledged, or that waited long enough.
    fn release(&mut self, now: Instant, out: &mut Vec<Vec<u8>>) {
        if let Some(s) = self.sync.as_mut() {
            s.release(now, out);
        }
    }

    /// Adds a neighbour by hand (a static entry, or a benchmark's preset).
    pub fn add_neighbour(&mut self, ip: IpAddr, mac: [u8; 6]) {
        let mut out = Vec::new();
        self.neighbours.learn(&self.sides, ip, mac, &mut out);
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
        self.neighbours.resolved()
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
        let ms = self.ms(now);
        let Some(s) = self.sync.as_ref() else {
            return false;
        };
        s.take_over(&mut self.conns, p, now, ms)
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
        route::side_of(&self.sides, ip)
    }

    /// The MAC a neighbour resolved to, if it has.
    pub fn neighbour(&self, ip: IpAddr) -> Option<[u8; 6]> {
        self.neighbours.mac(ip)
    }

    /// Handles one received frame. Frames to send besides it (solicitations, released
    /// frames) are appended to `out`.
    pub fn process(&mut self, f: &mut [u8], now: Instant, out: &mut Vec<Vec<u8>>) -> Verdict {
        self.release(now, out);
        let Some((ethertype, l3)) = frame::l2(f) else {
            return Verdict::Drop(DropReason::Truncated);
        };
        match ethertype {
            ETH_P_IPV4 | ETH_P_IPV6 => self.ip(f, l3, ethertype == ETH_P_IPV6, now, out),
            ETH_P_ARP => {
                self.arp(f, l3, out);
                Verdict::Consumed
            }
            _ => Verdict::Drop(DropReason::NotIp),
        }
    }

    /// An IPv4 or IPv6 packet at `l3`: one path for both versions.
    fn ip(
        &mut self,
        f: &mut [u8],
        l3: usize,
        v6: bool,
        now: Instant,
        out: &mut Vec<Vec<u8>>,
    ) -> Verdict {
        let parsed: Result<IpPacket<&[u8]>, WireError> = if v6 {
            Ipv6Packet::new_checked(&f[l3..]).map(IpPacket::V6)
        } else {
            Ipv4Packet::new_checked(&f[l3..]).map(IpPacket::V4)
        };
        let ip = match parsed {
            Ok(ip) => ip,
            Err(e) => return Verdict::Drop(e.into()),
        };
        if let IpPacket::V6(p) = &ip {
            // Neighbour discovery addressed to the group reaches members broadcast by the
            // orchestrator: learn from advertisements, ignore the rest.
            if frame::is_neighbour_discovery(p) {
                if let Some((target, mac)) = frame::parse_na(p.as_bytes()) {
                    self.neighbours
                        .learn(&self.sides, IpAddr::V6(target), mac, out);
                }
                return Verdict::Consumed;
            }
        }
        let dst = ip.dst_addr();
        let Some(side) = self.side_of(dst) else {
            return Verdict::Drop(DropReason::NoRoute);
        };
        if ip.hop_limit() <= 1 {
            self.icmp.time_exceeded(&self.sides, f, &ip, now, out);
            return Verdict::Drop(DropReason::TtlExceeded);
        }
        let seen = match &ip {
            IpPacket::V4(p) => inspect_v4(p),
            IpPacket::V6(p) => inspect_v6(p),
        };
        let hold = match self.admit(seen, now) {
            Ok(hold) => hold,
            Err(r) => return Verdict::Drop(r),
        };
        let mut ip = if v6 {
            IpPacket::V6(Ipv6Packet::new_unchecked(&mut f[l3..]))
        } else {
            IpPacket::V4(Ipv4Packet::new_unchecked(&mut f[l3..]))
        };
        ip.decrement_hop_limit();
        let v = self.neighbours.send(&self.sides, f, side, dst, now, out);
        match self.sync.as_mut() {
            Some(s) => s.hold_first_reply(v, f, hold, now),
            None => v,
        }
    }

    fn arp(&mut self, f: &[u8], l3: usize, out: &mut Vec<Vec<u8>>) {
        let Some(arp) = frame::parse_arp(&f[l3..]) else {
            return;
        };
        let ours = self.sides.iter().any(|s| s.gw_v4 == Some(arp.tpa));
        let asked = self.neighbours.knows(IpAddr::V4(arp.spa));
        if ours || asked {
            self.neighbours
                .learn(&self.sides, IpAddr::V4(arp.spa), arp.sha, out);
        }
    }

    /// Asks again for neighbours still unresolved, and gives up (dropping what they held)
    /// after the configured tries; sends what the sync channel kept, releases held first
    /// replies and carries out bulk resyncs. Call it a few times a second.
    pub fn tick(&mut self, now: Instant, out: &mut Vec<Vec<u8>>) {
        if let Some(s) = self.sync.as_mut() {
            s.flush();
        }
        self.release(now, out);
        let ms = self.ms(now);
        if let Some(s) = self.sync.as_mut() {
            s.resync(&self.conns, ms);
        }
        let dropped = self.neighbours.retry(&self.sides, now, out);
        self.dropped_held[DropReason::NeighbourUnreachable as usize] += dropped;
    }
}

impl FrameHandler for Forwarder {
    fn process(&mut self, frame: &mut [u8], now: Instant, out: &mut Vec<Vec<u8>>) -> Verdict {
        Forwarder::process(self, frame, now, out)
    }
    fn tick(&mut self, now: Instant, out: &mut Vec<Vec<u8>>) {
        Forwarder::tick(self, now, out);
    }
    fn dropped_held(&self) -> [u64; DropReason::COUNT] {
        self.dropped_held
    }
    fn connections(&self) -> usize {
        self.connections().len()
    }
    fn holding(&self) -> bool {
        Forwarder::holding(self) > 0
    }
    fn policy_version(&self) -> u64 {
        self.policy().version
    }
    fn set_policy(&mut self, policy: Arc<Policy>) -> usize {
        Forwarder::set_policy(self, policy)
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::{Ipv4Addr, Ipv6Addr},
        sync::atomic::Ordering,
        time::Duration,
    };

    use baton_common::net::ETH_P_SYNC;
    use etherparse::PacketBuilder;

    use super::*;
    use crate::conntrack::FlowKey;

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
                let Some(etherparse::NetSlice::Ipv6(ip)) = sliced.net else {
                    panic!("not ipv6")
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
        f[12..14].copy_from_slice(&ETH_P_SYNC.to_be_bytes());
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
        fw.neighbours.limits = limits;
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
