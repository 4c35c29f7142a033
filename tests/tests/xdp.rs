//! `distribute` and `egress` run by the kernel on crafted frames (`BPF_PROG_TEST_RUN`):
//! which member each frame goes to, what is answered, what is dropped and counted.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use baton_common::{
    event, key,
    net::{ETH_P_SYNC, IPPROTO_SCTP, IPPROTO_TCP},
    programs, side, Bucket, DownlinkConf, GroupConf, UplinkConf,
};
use baton_control::{planner, search};
use baton_dataplane::loader::{ifindex, Orchestrator};
use baton_lab::scratch::Topology;
use etherparse::{PacketBuilder, VlanId};

const XDP_DROP: u32 = 1;
const XDP_REDIRECT: u32 = 4;
const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];
const INT_HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x22];
const VMAC: [[u8; 6]; 2] = [[0x02, 0xba, 0x70, 0, 1, 0], [0x02, 0xba, 0x70, 0, 1, 1]];
const B: u32 = 4096;

/// The scratch namespace with two veth ends standing in for the uplinks and one for a
/// downlink; the test thread moves into it so ifindexes resolve there. Removed on drop,
/// after the programs (fields drop in order).
struct Bench {
    orch: Orchestrator,
    ext: u32,
    int: u32,
    dl: u32,
    table: Vec<Bucket>,
    _ns: Topology,
}

fn bench(uplink_key: u32) -> Bench {
    let ns = Topology::with_pairs(&[("t-ext", "t-int"), ("t-dl", "t-m")])
        .expect("scratch namespace (root?)");
    let (ext, int, dl) = (
        ifindex("t-ext").unwrap(),
        ifindex("t-int").unwrap(),
        ifindex("t-dl").unwrap(),
    );
    let mut orch = Orchestrator::load(false).expect("load eBPF (root?)");
    orch.set_group(
        0,
        GroupConf {
            table: 0,
            mask: B - 1,
            flood_ifindex: [ext, int],
            vmac: VMAC,
            _pad: [0; 4],
        },
    )
    .unwrap();
    let table = planner::plan(&[1, 2, 3], B);
    orch.install_buckets(0, &table).unwrap();
    let up = |side: u32, slot: u32, v4: [u8; 4], v6: &str| UplinkConf {
        group: 0,
        side,
        key: uplink_key,
        slot,
        gw_v4: v4,
        gw_v6: v6.parse::<Ipv6Addr>().unwrap().octets(),
        vmac: VMAC[side as usize],
        _pad: [0; 2],
    };
    orch.configure_uplink(
        ext,
        up(side::EXTERNAL, 0, [198, 18, 0, 254], "2001:db8:18::fe"),
    )
    .unwrap();
    orch.configure_uplink(
        int,
        up(side::INTERNAL, 1, [198, 19, 0, 254], "2001:db8:19::fe"),
    )
    .unwrap();
    orch.configure_downlink(
        dl,
        DownlinkConf {
            group: 0,
            member: 2,
        },
    )
    .unwrap();
    for m in 1..=3 {
        orch.add_member_port(m, dl).unwrap();
    }
    Bench {
        orch,
        ext,
        int,
        dl,
        table,
        _ns: ns,
    }
}

impl Bench {
    fn run(&mut self, prog: &'static str, frame: &[u8], ifindex: u32) -> (u32, Vec<u8>) {
        let prog = self.orch.program(prog).expect("program loads");
        baton_lab::testbed::test_run(prog, frame, ifindex).expect("test_run")
    }

    /// Sends a frame through `distribute` and returns the member whose counter moved.
    fn member_for(&mut self, frame: &[u8], ifindex: u32) -> Option<u32> {
        let before: Vec<u64> = (1..=3)
            .map(|m| self.orch.member_stats(m).unwrap().to_member_packets)
            .collect();
        let (action, _) = self.run(programs::DISTRIBUTE, frame, ifindex);
        let moved: Vec<u32> = (1..=3)
            .filter(|m| {
                self.orch.member_stats(*m).unwrap().to_member_packets > before[*m as usize - 1]
            })
            .collect();
        assert!(
            moved.len() <= 1,
            "one frame counted for several members: {moved:?}"
        );
        if action == XDP_REDIRECT {
            assert_eq!(moved.len(), 1, "redirected without a member counter");
        }
        moved.first().copied()
    }

    fn event(&self, index: u32) -> u64 {
        self.orch.events().unwrap()[index as usize].1
    }

    fn planned(&self, k: u32, src: IpAddr, dst: IpAddr, proto: u8, sp: u16, dp: u16) -> u32 {
        let h = search::packet_hash(k, src, dst, proto, sp, dp);
        self.table[(h & (B - 1)) as usize].active
    }
}

fn tcp(src: IpAddr, dst: IpAddr, sp: u16, dp: u16, src_mac: [u8; 6], dst_mac: [u8; 6]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(src_mac, dst_mac);
    let b = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => b.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => b.ipv6(s.octets(), d.octets(), 64),
        _ => panic!("mixed families"),
    };
    let mut v = Vec::new();
    b.tcp(sp, dp, 1, 1000)
        .syn()
        .write(&mut v, b"payload")
        .unwrap();
    v
}

fn udp_vlan(src: Ipv4Addr, dst: Ipv4Addr, tags: usize) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(HOST_MAC, VMAC[0]);
    let mut v = Vec::new();
    match tags {
        0 => b
            .ipv4(src.octets(), dst.octets(), 64)
            .udp(53, 53)
            .write(&mut v, b"x")
            .unwrap(),
        1 => b
            .single_vlan(VlanId::try_new(10).unwrap())
            .ipv4(src.octets(), dst.octets(), 64)
            .udp(53, 53)
            .write(&mut v, b"x")
            .unwrap(),
        _ => b
            .double_vlan(VlanId::try_new(100).unwrap(), VlanId::try_new(10).unwrap())
            .ipv4(src.octets(), dst.octets(), 64)
            .udp(53, 53)
            .write(&mut v, b"x")
            .unwrap(),
    }
    v
}

/// A deterministic stream of addresses in the lab ranges.
fn addrs(i: u32) -> (IpAddr, IpAddr, IpAddr, IpAddr) {
    let a = (i * 7 + 1) % 250 + 1;
    let b = (i * 13 + 5) % 250 + 1;
    (
        IpAddr::V4(Ipv4Addr::new(198, 18, (i % 3) as u8, a as u8)),
        IpAddr::V4(Ipv4Addr::new(198, 19, (i % 5) as u8, b as u8)),
        IpAddr::V6(Ipv6Addr::new(
            0x2001, 0xdb8, 0x18, 0, 0, 0, i as u16, a as u16,
        )),
        IpAddr::V6(Ipv6Addr::new(
            0x2001, 0xdb8, 0x19, 0, 0, i as u16, 0, b as u16,
        )),
    )
}

#[test]
fn flows_go_to_the_planned_member_in_both_directions() {
    for k in [key::BOTH, key::BOTH | key::F_PORTS] {
        let mut t = bench(k);
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..300u32 {
            let (e4, i4, e6, i6) = addrs(i);
            let (sp, dp) = (1024 + i as u16, 80 + (i % 7) as u16);
            for (e, n) in [(e4, i4), (e6, i6)] {
                let want = t.planned(k, e, n, IPPROTO_TCP, sp, dp);
                let fwd = t.member_for(&tcp(e, n, sp, dp, HOST_MAC, VMAC[0]), t.ext);
                let rev = t.member_for(&tcp(n, e, dp, sp, INT_HOST_MAC, VMAC[1]), t.int);
                assert_eq!(fwd, Some(want), "key {k:#x} {e}:{sp} → {n}:{dp}");
                assert_eq!(rev, Some(want), "key {k:#x} reply {n}:{dp} → {e}:{sp}");
                seen.insert(want);
            }
        }
        assert_eq!(seen.len(), 3, "300 flows reach every member");
    }
}

#[test]
fn auto_topology_keys_on_the_external_host() {
    let mut t = bench(key::BOTH);
    // Internal uplink in user mode (destination), external in network mode (source).
    let conf = |side: u32, k: u32, slot: u32| UplinkConf {
        group: 0,
        side,
        key: k,
        slot,
        gw_v4: [0; 4],
        gw_v6: [0; 16],
        vmac: VMAC[side as usize],
        _pad: [0; 2],
    };
    let (ext, int) = (t.ext, t.int);
    t.orch
        .configure_uplink(ext, conf(side::EXTERNAL, key::SRC, 0))
        .unwrap();
    t.orch
        .configure_uplink(int, conf(side::INTERNAL, key::DST, 1))
        .unwrap();
    for i in 0..100u32 {
        let (e, n, _, _) = addrs(i);
        let want = t.planned(key::SRC, e, n, IPPROTO_TCP, 1, 2);
        assert_eq!(
            t.member_for(&tcp(e, n, 1000, 80, HOST_MAC, VMAC[0]), ext),
            Some(want)
        );
        assert_eq!(
            t.member_for(&tcp(n, e, 80, 1000, INT_HOST_MAC, VMAC[1]), int),
            Some(want)
        );
        // Another internal host, same external host: same member.
        let other = IpAddr::V4(Ipv4Addr::new(198, 19, 9, 9));
        assert_eq!(
            t.member_for(&tcp(e, other, 1000, 443, HOST_MAC, VMAC[0]), ext),
            Some(want)
        );
    }
}

#[test]
fn vlan_and_qinq_frames_follow_their_flow() {
    let mut t = bench(key::BOTH);
    for i in 0..50u32 {
        let (IpAddr::V4(e), IpAddr::V4(n), _, _) = addrs(i) else {
            unreachable!()
        };
        let plain = t.member_for(&udp_vlan(e, n, 0), t.ext);
        assert!(plain.is_some());
        assert_eq!(t.member_for(&udp_vlan(e, n, 1), t.ext), plain, "802.1Q");
        assert_eq!(t.member_for(&udp_vlan(e, n, 2), t.ext), plain, "QinQ");
    }
}

#[test]
fn truncated_frames_are_dropped_and_counted() {
    let mut t = bench(key::BOTH | key::F_PORTS);
    let v4 = tcp(
        "198.18.0.1".parse().unwrap(),
        "198.19.0.1".parse().unwrap(),
        1,
        2,
        HOST_MAC,
        VMAC[0],
    );
    let v6 = tcp(
        "2001:db8:18::1".parse().unwrap(),
        "2001:db8:19::1".parse().unwrap(),
        1,
        2,
        HOST_MAC,
        VMAC[0],
    );
    let tagged = {
        let mut f = udp_vlan(
            Ipv4Addr::new(198, 18, 0, 1),
            Ipv4Addr::new(198, 19, 0, 1),
            1,
        );
        f.truncate(18 + 20 + 8);
        f
    };
    // With ports in the key, a frame is complete once its L4 ports are there.
    for (frame, complete) in [
        (&v4, 14 + 20 + 4),
        (&v6, 14 + 40 + 4),
        (&tagged, 18 + 20 + 4),
    ] {
        // The kernel hands XDP no frame shorter than an Ethernet header (and test_run
        // refuses one), so lengths start there.
        for len in 14..frame.len() {
            let before = t.event(event::DROP_TRUNCATED);
            let (action, _) = t.run(programs::DISTRIBUTE, &frame[..len], t.ext);
            if len < complete {
                assert_eq!(action, XDP_DROP, "length {len}");
                assert_eq!(
                    t.event(event::DROP_TRUNCATED),
                    before + 1,
                    "length {len} counted"
                );
            } else {
                assert_eq!(action, XDP_REDIRECT, "length {len}");
            }
        }
    }
}

#[test]
fn non_ip_and_malformed_frames_are_dropped_and_counted() {
    let mut t = bench(key::BOTH);
    let mut other = vec![0u8; 60];
    other[0..6].copy_from_slice(&VMAC[0]);
    // A sync frame arriving on an uplink: a real non-IP EtherType Baton itself sends.
    other[12..14].copy_from_slice(&ETH_P_SYNC.to_be_bytes());
    let before = t.event(event::DROP_NOT_IP);
    assert_eq!(t.run(programs::DISTRIBUTE, &other, t.ext).0, XDP_DROP);
    assert_eq!(t.event(event::DROP_NOT_IP), before + 1);

    let good = tcp(
        "198.18.0.1".parse().unwrap(),
        "198.19.0.1".parse().unwrap(),
        1,
        2,
        HOST_MAC,
        VMAC[0],
    );
    for (at, value) in [(14usize, 0x43u8), (14, 0x55), (14, 0x65)] {
        let mut bad = good.clone();
        bad[at] = value;
        let before = t.event(event::DROP_MALFORMED);
        assert_eq!(
            t.run(programs::DISTRIBUTE, &bad, t.ext).0,
            XDP_DROP,
            "byte {value:#x}"
        );
        assert_eq!(t.event(event::DROP_MALFORMED), before + 1);
    }
    // An unconfigured port drops everything.
    let before = t.event(event::DROP_UNKNOWN_PORT);
    assert_eq!(t.run(programs::DISTRIBUTE, &good, 1).0, XDP_DROP);
    assert_eq!(t.event(event::DROP_UNKNOWN_PORT), before + 1);
}

#[test]
fn arp_for_the_gateway_is_answered_other_arp_goes_to_members() {
    let mut t = bench(key::BOTH);
    let arp = |target: [u8; 4]| {
        let mut f = vec![0u8; 42];
        f[0..6].copy_from_slice(&[0xff; 6]);
        f[6..12].copy_from_slice(&HOST_MAC);
        f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        f[22..28].copy_from_slice(&HOST_MAC);
        f[28..32].copy_from_slice(&[198, 18, 0, 1]);
        f[38..42].copy_from_slice(&target);
        f
    };
    let (action, out) = t.run(programs::DISTRIBUTE, &arp([198, 18, 0, 254]), t.ext);
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(&out[0..6], &HOST_MAC, "to the asker");
    assert_eq!(&out[6..12], &VMAC[0], "from the external virtual MAC");
    assert_eq!(&out[20..22], &[0, 2], "an ARP reply");
    assert_eq!(&out[22..28], &VMAC[0]);
    assert_eq!(&out[28..32], &[198, 18, 0, 254]);
    assert_eq!(&out[32..38], &HOST_MAC);
    assert_eq!(&out[38..42], &[198, 18, 0, 1]);
    assert_eq!(t.event(event::ARP_REPLIED), 1);
    // The internal gateway is not answered on the external uplink.
    let (action, out) = t.run(programs::DISTRIBUTE, &arp([198, 19, 0, 254]), t.ext);
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(&out[20..22], &[0, 1], "left as it was, for the members");
    assert_eq!(t.event(event::L2_TO_MEMBERS), 1);
}

#[test]
fn neighbour_solicitation_for_the_gateway_is_answered() {
    let mut t = bench(key::BOTH);
    let host: Ipv6Addr = "2001:db8:18::1".parse().unwrap();
    let gw: Ipv6Addr = "2001:db8:18::fe".parse().unwrap();
    let ns = baton_dataplane::frame::neighbour_solicitation(HOST_MAC, host, gw);
    let (action, out) = t.run(programs::DISTRIBUTE, &ns, t.ext);
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(t.event(event::ND_REPLIED), 1);
    assert_eq!(&out[0..6], &HOST_MAC);
    assert_eq!(&out[6..12], &VMAC[0]);
    let p = etherparse::SlicedPacket::from_ethernet(&out).expect("parses");
    let Some(etherparse::NetSlice::Ipv6(ip)) = p.net else {
        panic!("not IPv6")
    };
    assert_eq!(ip.header().source_addr(), gw);
    assert_eq!(ip.header().destination_addr(), host);
    assert_eq!(ip.header().hop_limit(), 255);
    let Some(etherparse::TransportSlice::Icmpv6(icmp)) = p.transport else {
        panic!("not ICMPv6")
    };
    assert_eq!(icmp.type_u8(), 136);
    let sum = icmp
        .icmp_type()
        .calc_checksum(
            ip.header().source(),
            ip.header().destination(),
            icmp.payload(),
        )
        .unwrap();
    assert_eq!(icmp.checksum(), sum, "checksum");
    assert_eq!(
        baton_dataplane::frame::parse_na(&out[14..]),
        Some((gw, VMAC[0]))
    );
}

#[test]
fn fragments_and_icmp_errors_follow_their_connection() {
    let mut t = bench(key::BOTH);
    let e: IpAddr = "198.18.0.7".parse().unwrap();
    let n: IpAddr = "198.19.0.9".parse().unwrap();
    let owner = t
        .member_for(&tcp(e, n, 4000, 80, HOST_MAC, VMAC[0]), t.ext)
        .unwrap();
    // Fragments: first (MF) and a later one, no L4 header in the latter.
    for frag in [0x2000u16, 0x0010] {
        let mut f = tcp(e, n, 4000, 80, HOST_MAC, VMAC[0]);
        f[20..22].copy_from_slice(&frag.to_be_bytes());
        assert_eq!(t.member_for(&f, t.ext), Some(owner), "fragment {frag:#x}");
    }
    assert!(t.event(event::FRAGMENTS) >= 2);
    // A router on the internal side reports the connection's packet as unreachable.
    let quoted = tcp(e, n, 4000, 80, HOST_MAC, VMAC[0]);
    let mut err = Vec::new();
    PacketBuilder::ethernet2(INT_HOST_MAC, VMAC[1])
        .ipv4([198, 19, 0, 200], [198, 18, 0, 7], 64)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Host,
        ))
        .write(&mut err, &quoted[14..14 + 28])
        .unwrap();
    assert_eq!(t.member_for(&err, t.int), Some(owner), "ICMP error");
    assert_eq!(t.event(event::ICMP_ERRORS), 1);
    // The same for IPv6 (packet too big).
    let e6: IpAddr = "2001:db8:18::7".parse().unwrap();
    let n6: IpAddr = "2001:db8:19::9".parse().unwrap();
    let owner6 = t
        .member_for(&tcp(e6, n6, 4000, 80, HOST_MAC, VMAC[0]), t.ext)
        .unwrap();
    let quoted6 = tcp(e6, n6, 4000, 80, HOST_MAC, VMAC[0]);
    let mut err6 = Vec::new();
    PacketBuilder::ethernet2(INT_HOST_MAC, VMAC[1])
        .ipv6(
            "2001:db8:19::200".parse::<Ipv6Addr>().unwrap().octets(),
            "2001:db8:18::7".parse::<Ipv6Addr>().unwrap().octets(),
            64,
        )
        .icmpv6(etherparse::Icmpv6Type::PacketTooBig { mtu: 1280 })
        .write(&mut err6, &quoted6[14..14 + 48])
        .unwrap();
    assert_eq!(t.member_for(&err6, t.int), Some(owner6), "ICMPv6 error");
}

#[test]
fn egress_sends_to_the_learned_uplink_or_floods_the_side() {
    let mut t = bench(key::BOTH);
    let (ext, dl) = (t.ext, t.dl);
    // An IP frame from the internal host teaches nothing (learning is kept off the per-packet path).
    let from_int = tcp(
        "198.19.0.1".parse().unwrap(),
        "198.18.0.1".parse().unwrap(),
        80,
        1000,
        INT_HOST_MAC,
        VMAC[1],
    );
    t.run(programs::DISTRIBUTE, &from_int, t.int);
    assert!(
        t.orch.learned_macs().unwrap().is_empty(),
        "IP frames do not teach MACs"
    );
    // It is learned from its ARP on the internal uplink.
    let probe = baton_dataplane::frame::arp_request(
        INT_HOST_MAC,
        Ipv4Addr::new(198, 19, 0, 1),
        Ipv4Addr::new(198, 19, 0, 254),
    );
    t.run(programs::DISTRIBUTE, &probe, t.int);
    assert_eq!(t.orch.learned_macs().unwrap(), vec![(INT_HOST_MAC, t.int)]);
    let to_int = tcp(
        "198.18.0.1".parse().unwrap(),
        "198.19.0.1".parse().unwrap(),
        1000,
        80,
        VMAC[1],
        INT_HOST_MAC,
    );
    let mut reply = to_int.clone();
    reply[0..6].copy_from_slice(&INT_HOST_MAC);
    reply[6..12].copy_from_slice(&VMAC[1]);
    let flooded = t.event(event::L2_FLOODED);
    assert_eq!(t.run(programs::EGRESS, &reply, dl).0, XDP_REDIRECT);
    assert_eq!(t.event(event::L2_FLOODED), flooded, "known MAC: no flood");
    assert_eq!(t.orch.member_stats(2).unwrap().from_member_packets, 1);
    let int_slot = 1;
    assert_eq!(
        t.orch.uplink_stats(int_slot).unwrap().tx_packets,
        1,
        "counted on the uplink it leaves by"
    );
    // Broadcast (an ARP request from a member) floods its side.
    let arp = baton_dataplane::frame::arp_request(
        VMAC[0],
        Ipv4Addr::new(198, 18, 0, 254),
        Ipv4Addr::new(198, 18, 0, 1),
    );
    assert_eq!(t.run(programs::EGRESS, &arp, dl).0, XDP_REDIRECT);
    assert_eq!(t.event(event::L2_FLOODED), flooded + 1);
    // A member must use a virtual MAC as source.
    let mut bad = arp.clone();
    bad[6..12].copy_from_slice(&HOST_MAC);
    let malformed = t.event(event::DROP_MALFORMED);
    assert_eq!(t.run(programs::EGRESS, &bad, dl).0, XDP_DROP);
    assert_eq!(t.event(event::DROP_MALFORMED), malformed + 1);
    // Frames on a port that is not a downlink are dropped.
    assert_eq!(t.run(programs::EGRESS, &reply, ext).0, XDP_DROP);
    // A member that is not Active (no port in the member map) is isolated.
    t.orch.remove_member_port(2).unwrap();
    let isolated = t.event(event::DROP_ISOLATED);
    assert_eq!(t.run(programs::EGRESS, &reply, dl).0, XDP_DROP);
    assert_eq!(t.event(event::DROP_ISOLATED), isolated + 1);
}

/// Rewrites an IPv4 frame's header with `options` (4-byte multiple) inserted.
fn with_ipv4_options(f: &[u8], options: &[u8]) -> Vec<u8> {
    let ihl = ((f[14] & 0x0f) as usize) * 4;
    let mut v = f[..14 + ihl].to_vec();
    v.extend_from_slice(options);
    v.extend_from_slice(&f[14 + ihl..]);
    v[14] = 0x40 | ((ihl + options.len()) / 4) as u8;
    let total = (v.len() - 14) as u16;
    v[16..18].copy_from_slice(&total.to_be_bytes());
    v
}

/// Inserts IPv6 extension headers (each `[next, len, ...]`, already chained to the
/// original next header by the caller) after the fixed header.
fn with_ipv6_ext(f: &[u8], first: u8, ext: &[u8]) -> Vec<u8> {
    let mut v = f[..54].to_vec();
    v.extend_from_slice(ext);
    v.extend_from_slice(&f[54..]);
    v[20] = first;
    let plen = (v.len() - 54) as u16;
    v[18..20].copy_from_slice(&plen.to_be_bytes());
    v
}

#[test]
fn options_extension_headers_and_other_protocols_follow_their_flow() {
    let k = key::BOTH | key::F_PORTS;
    let mut t = bench(k);
    let e: IpAddr = "198.18.0.7".parse().unwrap();
    let n: IpAddr = "198.19.0.9".parse().unwrap();
    let plain = tcp(e, n, 4000, 80, HOST_MAC, VMAC[0]);
    let owner = t.member_for(&plain, t.ext).unwrap();
    assert_eq!(owner, t.planned(k, e, n, IPPROTO_TCP, 4000, 80));
    // IPv4 options (record route, 12 bytes incl. padding): ports read after them.
    let opts = with_ipv4_options(&plain, &[7, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    assert_eq!(t.member_for(&opts, t.ext), Some(owner), "IPv4 options");

    // IPv6 hop-by-hop (8 bytes) and destination options (16 bytes) before TCP.
    let e6: IpAddr = "2001:db8:18::7".parse().unwrap();
    let n6: IpAddr = "2001:db8:19::9".parse().unwrap();
    let plain6 = tcp(e6, n6, 4000, 80, HOST_MAC, VMAC[0]);
    let owner6 = t.member_for(&plain6, t.ext).unwrap();
    let mut ext = vec![60, 0, 1, 4, 0, 0, 0, 0]; // hop-by-hop → destination options
    ext.extend_from_slice(&[6, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]); // → TCP
    let chained = with_ipv6_ext(&plain6, 0, &ext);
    assert_eq!(
        t.member_for(&chained, t.ext),
        Some(owner6),
        "IPv6 extension headers"
    );

    // SCTP carries ports like TCP and UDP.
    let mut sctp = plain.clone();
    sctp[23] = 132;
    assert_eq!(
        t.member_for(&sctp, t.ext),
        Some(t.planned(k, e, n, IPPROTO_SCTP, 4000, 80)),
        "SCTP"
    );
    // GRE and ESP have no ports: they hash on addresses alone, even with L4 in the key.
    for proto in [47u8, 50] {
        let mut f = plain.clone();
        f[23] = proto;
        assert_eq!(
            t.member_for(&f, t.ext),
            Some(t.planned(k, e, n, proto, 0, 0)),
            "protocol {proto}"
        );
    }

    // In an L4 mode, fragments hash on addresses only (later fragments have no ports), so
    // all pieces of a datagram meet on one member: the one for (addresses, no ports).
    let frag_owner = t.planned(k, e, n, 0, 0, 0);
    for frag in [0x2000u16, 0x0010, 0x2020] {
        let mut f = plain.clone();
        f[20..22].copy_from_slice(&frag.to_be_bytes());
        assert_eq!(
            t.member_for(&f, t.ext),
            Some(frag_owner),
            "IPv4 fragment {frag:#x}"
        );
    }
    // IPv6 fragment header (first and later fragment).
    for offset_flags in [0x0001u16, 0x0100] {
        let mut fh = vec![6, 0];
        fh.extend_from_slice(&offset_flags.to_be_bytes());
        fh.extend_from_slice(&[0, 0, 0, 42]);
        let f = with_ipv6_ext(&plain6, 44, &fh);
        assert_eq!(
            t.member_for(&f, t.ext),
            Some(t.planned(k, e6, n6, 0, 0, 0)),
            "IPv6 fragment {offset_flags:#x}"
        );
    }
}
