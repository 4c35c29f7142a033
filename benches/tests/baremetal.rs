//! The bare-metal kit (`benches/baremetal/`): the pktgen script's commands, from dry runs,
//! and the TRex profile's streams, from its `describe()`, checked against the traffic of
//! the project's own generator. Needs bash and python3; no root, no TRex, no traffic.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::{Command, Output};

use baton_benches::distributor::frame_mix;
use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice, VlanSlice};
use serde_json::Value;

// The generator's frame, hard-coded here on purpose so that a change on either side shows:
// lab/src/generator.rs (`udp_frame`, sent by benches/src/distributor.rs `throughput`)
// builds it (Ethernet to group 1's external virtual MAC, IPv4 198.18.0.1 -> 198.19.0.1 TTL
// 64, UDP 1024 -> 53, 18 zero bytes), and `generate` (ebpf/test-programs/src/bench.rs,
// GenConf in ebpf/common/src/testbed.rs) writes flow `seq mod flows` into the source address's low 16 bits (addr_off 14 + 14), above 65,536
// flows into the source port (port_off 14 + 20) too; 10,000 flows in `Size`.
const GEN_SRC: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const GEN_DST: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
const GEN_TTL: u8 = 64;
const GEN_SPORT: u16 = 1024;
const GEN_DPORT: u16 = 53;
const GEN_PAYLOAD: usize = 18;
const GEN_SIZE: usize = 60; // bytes without FCS
const GEN_FLOWS: u32 = 10_000;
const GEN_ADDR_OFF: usize = 14 + 14;
const VMAC: &str = "02:ba:70:00:01:00";

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/baremetal");

fn script() -> String {
    format!("{DIR}/pktgen_baton.sh")
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// The script with `args` and `--dry-run`: exit status, pktgen commands as (file, command)
/// in order, stderr.
fn dry_run(args: &[&str]) -> (Option<i32>, Vec<(String, String)>, String) {
    let out = run(Command::new("bash")
        .arg(script())
        .args(args)
        .arg("--dry-run"));
    let stdout = String::from_utf8(out.stdout).expect("utf-8 output");
    let cmds = stdout
        .lines()
        .filter_map(|l| {
            // echo "CMD" > /proc/net/pktgen/FILE
            let rest = l.strip_prefix("echo \"")?;
            let (cmd, file) = rest.split_once("\" > ")?;
            let file = file.strip_prefix("/proc/net/pktgen/").expect("pktgen path");
            Some((file.to_string(), cmd.to_string()))
        })
        .collect();
    (
        out.status.code(),
        cmds,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The commands written to one pktgen device, by name (`count 10`, ...), and their values.
fn device(cmds: &[(String, String)], dev: &str) -> BTreeMap<String, String> {
    cmds.iter()
        .filter(|(f, _)| f == dev)
        .filter_map(|(_, c)| c.split_once(' '))
        .filter(|(k, _)| *k != "flag")
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn devices(cmds: &[(String, String)]) -> Vec<(String, String)> {
    cmds.iter()
        .filter_map(|(f, c)| {
            c.strip_prefix("add_device ")
                .map(|d| (f.clone(), d.to_string()))
        })
        .collect()
}

fn v4(s: &str) -> Ipv4Addr {
    s.parse()
        .unwrap_or_else(|_| panic!("not an IPv4 address: {s}"))
}

/// In 198.18.0.0/15, the benchmark range.
fn bench_v4(a: Ipv4Addr) -> bool {
    let o = a.octets();
    o[0] == 198 && o[1] & 0xfe == 18
}

/// In 2001:db8::/32, the documentation range.
fn doc_v6(a: Ipv6Addr) -> bool {
    a.segments()[..2] == [0x2001, 0x0db8]
}

#[test]
fn generator_constants_are_its_frame() {
    let mut frame = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0x11], [0x02, 0xba, 0x70, 0, 1, 0])
        .ipv4(GEN_SRC.octets(), GEN_DST.octets(), GEN_TTL)
        .udp(GEN_SPORT, GEN_DPORT)
        .write(&mut frame, &[0; GEN_PAYLOAD])
        .expect("frame builds");
    assert_eq!(frame.len(), GEN_SIZE);
    // addr_off points at the low half of the source address.
    assert_eq!(frame[GEN_ADDR_OFF..GEN_ADDR_OFF + 2], GEN_SRC.octets()[2..]);
    assert_eq!(frame[GEN_ADDR_OFF - 2..GEN_ADDR_OFF], [198, 18]);
}

#[test]
fn script_parses() {
    let out = run(Command::new("bash").arg("-n").arg(script()));
    assert!(
        out.status.success(),
        "bash -n: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn pktgen_default_is_the_generator_traffic() {
    let (code, cmds, err) = dry_run(&["-i", "eth9", "-d", VMAC]);
    assert_eq!(code, Some(0), "stderr: {err}");
    assert_eq!(cmds.first(), Some(&("pgctrl".into(), "reset".into())));
    assert_eq!(cmds.last(), Some(&("pgctrl".into(), "start".into())));
    assert_eq!(devices(&cmds), [("kpktgend_0".into(), "eth9@0".into())]);
    let d = device(&cmds, "eth9@0");
    let want = [
        ("count", "10000000".to_string()),
        ("clone_skb", "0".into()),
        // pktgen's pkt_size excludes the FCS (net/core/pktgen.c builds exactly pkt_size
        // bytes; the NIC appends the FCS), so the generator's 60 bytes are pkt_size 60.
        ("pkt_size", GEN_SIZE.to_string()),
        ("dst_mac", VMAC.into()),
        ("dst", GEN_DST.to_string()),
        // Flows 0..10,000 in the low 16 bits: 198.18.0.0 ..= 198.18.39.15 (9,999 = 39·256 + 15).
        ("src_min", "198.18.0.0".into()),
        ("src_max", "198.18.39.15".into()),
        ("udp_src_min", GEN_SPORT.to_string()),
        ("udp_src_max", GEN_SPORT.to_string()),
        ("udp_dst_min", GEN_DPORT.to_string()),
        ("udp_dst_max", GEN_DPORT.to_string()),
        ("delay", "0".into()),
    ];
    for (k, v) in want {
        assert_eq!(d.get(k), Some(&v), "{k} in {d:?}");
    }
    assert!(!d.contains_key("ratep"), "no rate asked: {d:?}");
    let src_max = v4(&d["src_max"]);
    assert_eq!(
        u32::from(src_max) - u32::from(v4(&d["src_min"])) + 1,
        GEN_FLOWS,
        "one address per flow"
    );
    assert!(bench_v4(src_max) && bench_v4(v4(&d["dst"])));
}

#[test]
fn pktgen_size_count_and_one_port_up_to_65536_flows() {
    let (code, cmds, err) = dry_run(&[
        "-i", "eth9", "-d", VMAC, "-s", "128", "-n", "5000", "-f", "65536",
    ]);
    assert_eq!(code, Some(0), "stderr: {err}");
    let d = device(&cmds, "eth9@0");
    assert_eq!(d["pkt_size"], "128");
    assert_eq!(d["count"], "5000");
    assert_eq!(d["src_min"], "198.18.0.0");
    assert_eq!(d["src_max"], "198.18.255.255");
    assert_eq!(d["udp_src_min"], "1024");
    assert_eq!(d["udp_src_max"], "1024");
    assert_eq!(devices(&cmds).len(), 1);
}

#[test]
fn pktgen_above_65536_flows_threads_and_rate() {
    let args = [
        "-i", "eth9", "-d", VMAC, "-f", "100000", "-t", "2", "-c", "2", "-n", "1000000", "-r",
        "100000",
    ];
    let (code, cmds, err) = dry_run(&args);
    assert_eq!(code, Some(0), "stderr: {err}");
    let devs = devices(&cmds);
    // Thread 0 (CPU 2): flows 0..50,000; thread 1 (CPU 3): 50,000..100,000, split where
    // the source port changes at 65,536.
    let threads: Vec<&str> = devs.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(threads, ["kpktgend_2", "kpktgend_3", "kpktgend_3"]);
    let (mut flows, mut count, mut rate) = (0u64, 0u64, 0u64);
    let mut ports = Vec::new();
    for (_, dev) in &devs {
        let d = device(&cmds, dev);
        let (lo, hi) = (v4(&d["src_min"]), v4(&d["src_max"]));
        assert!(bench_v4(lo) && bench_v4(hi) && lo <= hi, "{d:?}");
        flows += u64::from(u32::from(hi) - u32::from(lo) + 1);
        count += d["count"].parse::<u64>().expect("count");
        rate += d["ratep"].parse::<u64>().expect("ratep");
        assert_eq!(d["udp_src_min"], d["udp_src_max"], "one port per device");
        ports.push(d["udp_src_min"].clone());
        assert!(!d.contains_key("delay"), "paced: {d:?}");
    }
    assert_eq!(flows, 100_000);
    assert_eq!(count, 1_000_000);
    assert_eq!(rate, 100_000);
    assert_eq!(ports, ["1024", "1024", "1025"]);
    // Flows 65,536..100,000: port 1025, addresses from 198.18.0.0 again.
    let last = device(&cmds, &devs[2].1);
    assert_eq!(last["src_min"], "198.18.0.0");
    assert_eq!(last["src_max"], "198.18.134.159");
}

#[test]
fn pktgen_bad_arguments_exit_2() {
    let base = ["-i", "eth9", "-d", VMAC];
    let cases: &[(&[&str], &str)] = &[
        (&["-n", "0"], "forever"),
        (&["--bogus"], "unknown argument"),
        (&["-s", "59"], "SIZE"),
        (&["-f", "0"], "FLOWS"),
        (&["-f", "16777217"], "FLOWS"),
        (&["-t", "3", "-f", "2"], "more threads"),
        (&["-n", "1", "-t", "2"], "too small"),
        (&["-r", "x"], "RATE_PPS"),
    ];
    for (extra, msg) in cases {
        let args: Vec<&str> = base.iter().chain(extra.iter()).copied().collect();
        let (code, cmds, err) = dry_run(&args);
        assert_eq!(code, Some(2), "{args:?}: stderr {err}");
        assert!(err.contains(msg), "{args:?}: stderr {err:?} lacks {msg:?}");
        assert!(cmds.is_empty(), "{args:?} printed commands");
    }
    for (args, msg) in [
        (&["-d", VMAC][..], "missing -i"),
        (&["-i", "eth9"][..], "missing -d"),
        (&["-i", "eth9", "-d", "01:00:5e:00:00:01"][..], "multicast"),
        (&["-i", "eth9", "-d", VMAC, "-n"][..], "needs a value"),
    ] {
        let out = run(Command::new("bash").arg(script()).args(args));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: stderr {err}");
        assert!(err.contains(msg), "{args:?}: stderr {err:?} lacks {msg:?}");
    }
}

/// python3 with `code`, the profile's folder on sys.path and no bytecode written there.
fn python(code: &str) -> Output {
    let probe = Command::new("python3").arg("--version").output();
    if matches!(&probe, Err(e) if e.kind() == std::io::ErrorKind::NotFound) {
        panic!("python3 is not on PATH: the TRex profile's checks need it (CI has it)");
    }
    run(Command::new("python3")
        .arg("-B")
        .arg("-c")
        .arg(format!("import sys; sys.path.insert(0, {DIR:?})\n{code}")))
}

fn describe(args: &str) -> Vec<Value> {
    let out = python(&format!(
        "import json, trex_baton\nprint(json.dumps(trex_baton.describe({args})))"
    ));
    assert!(
        out.status.success(),
        "describe({args}): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Value>(&out.stdout)
        .expect("describe() prints JSON")
        .as_array()
        .expect("a list of streams")
        .clone()
}

fn text<'a>(s: &'a Value, key: &str) -> &'a str {
    s[key].as_str().unwrap_or_else(|| panic!("{key} in {s}"))
}

fn num(s: &Value, key: &str) -> f64 {
    s[key].as_f64().unwrap_or_else(|| panic!("{key} in {s}"))
}

/// "lo-hi" or one value.
fn range(s: &str) -> (&str, &str) {
    s.split_once('-').unwrap_or((s, s))
}

#[test]
fn trex_udp_is_the_generator_frame() {
    let streams = describe("mix='udp'");
    assert_eq!(streams.len(), 1);
    let s = &streams[0];
    assert_eq!(text(s, "l3"), "ipv4");
    assert_eq!(text(s, "l4"), "udp");
    assert!(s["vlan"].is_null());
    // The generator's source with the flow number in its low 16 bits: flows 0..10,000.
    let (lo, hi) = range(text(s, "src"));
    let first = u32::from(GEN_SRC) & 0xffff_0000;
    assert_eq!(v4(lo), Ipv4Addr::from(first));
    assert_eq!(v4(hi), Ipv4Addr::from(first + GEN_FLOWS - 1));
    assert_eq!(v4(text(s, "dst")), GEN_DST);
    assert_eq!(text(s, "sport"), GEN_SPORT.to_string());
    assert_eq!(text(s, "dport"), GEN_DPORT.to_string());
    assert_eq!(num(s, "size") as usize, GEN_SIZE);
    assert_eq!(num(s, "ttl") as u8, GEN_TTL);
    assert_eq!(num(s, "flows") as u32, GEN_FLOWS);
    assert_eq!(num(s, "share"), 100.0);
    assert_eq!(text(s, "dst_mac"), VMAC);

    // Above 65,536 flows the source port carries the high bits, as `generate` writes it.
    let s = &describe("flows=100000")[0];
    assert_eq!(text(s, "src"), "198.18.0.0-198.18.255.255");
    assert_eq!(text(s, "sport"), "1024-1025");
    assert_eq!(num(&describe("flows=1000, size=128")[0], "size"), 128.0);
}

/// (l3, l4, vlan) of one frame of `frame_mix`, and its length.
fn kind(frame: &[u8]) -> ((String, String, Option<u16>), usize) {
    let p = SlicedPacket::from_ethernet(frame).expect("frame_mix frame parses");
    let l3 = match p.net {
        Some(NetSlice::Ipv4(_)) => "ipv4",
        Some(NetSlice::Ipv6(_)) => "ipv6",
        _ => panic!("frame_mix frame without IP"),
    };
    let l4 = match p.transport {
        Some(TransportSlice::Tcp(_)) => "tcp",
        Some(TransportSlice::Udp(_)) => "udp",
        _ => panic!("frame_mix frame without TCP/UDP"),
    };
    let vlan = match p.vlan {
        Some(VlanSlice::SingleVlan(v)) => Some(v.vlan_identifier().value()),
        Some(VlanSlice::DoubleVlan(_)) => panic!("frame_mix has no QinQ"),
        None => None,
    };
    ((l3.into(), l4.into(), vlan), frame.len())
}

#[test]
fn trex_realistic_is_frame_mix() {
    let streams = describe("mix='realistic', flows=10000");
    // Per kind: share of the frames and frame size, the profile's and frame_mix's.
    let mut ours: BTreeMap<(String, String, Option<u16>), (f64, usize)> = BTreeMap::new();
    let mut flows = 0;
    for s in &streams {
        let vlan = s["vlan"].as_u64().map(|v| v as u16);
        let key = (text(s, "l3").to_string(), text(s, "l4").to_string(), vlan);
        let e = ours.entry(key).or_insert((0.0, num(s, "size") as usize));
        e.0 += num(s, "share");
        flows += num(s, "flows") as u32;
        let (lo, hi) = range(text(s, "src"));
        let (dlo, dhi) = range(text(s, "dst"));
        for a in [lo, hi, dlo, dhi] {
            if text(s, "l3") == "ipv4" {
                assert!(bench_v4(v4(a)), "{a} outside 198.18.0.0/15");
            } else {
                let a: Ipv6Addr = a.parse().expect("IPv6 address");
                assert!(doc_v6(a), "{a} outside 2001:db8::/32");
            }
        }
        let (plo, phi) = range(text(s, "sport"));
        let (plo, phi): (u16, u16) = (plo.parse().unwrap(), phi.parse().unwrap());
        assert!(
            (1024..=51023).contains(&plo) && plo <= phi && phi <= 51023,
            "{s}"
        );
        let dport = if text(s, "l4") == "tcp" { "443" } else { "53" };
        assert_eq!(text(s, "dport"), dport);
    }
    assert_eq!(flows, 10_000);

    let want = [
        (("ipv4", "tcp", None), 60.0),
        (("ipv4", "udp", None), 20.0),
        (("ipv6", "tcp", None), 15.0),
        (("ipv4", "tcp", Some(10)), 5.0),
    ];
    assert_eq!(ours.len(), want.len(), "{ours:?}");
    for ((l3, l4, vlan), share) in want {
        let got = ours[&(l3.to_string(), l4.to_string(), vlan)].0;
        assert!((got - share).abs() < 1e-9, "{l3} {l4} {vlan:?}: {got}%");
    }

    // The same proportions and sizes as the project's own mix, frame by frame.
    let mut theirs: BTreeMap<(String, String, Option<u16>), (usize, usize)> = BTreeMap::new();
    let mix = frame_mix(10_000);
    for f in &mix {
        let (k, len) = kind(f);
        let e = theirs.entry(k).or_insert((0, len));
        e.0 += 1;
        assert_eq!(e.1, len, "one size per kind");
    }
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>()
    );
    for (k, (n, len)) in &theirs {
        let (share, size) = ours[k];
        assert!(
            (share - 100.0 * *n as f64 / mix.len() as f64).abs() < 1e-9,
            "{k:?}"
        );
        assert_eq!(size, *len, "{k:?}");
    }

    // A larger size pads every kind to it.
    for s in describe("mix='realistic', size=128") {
        assert_eq!(num(&s, "size"), 128.0, "{s}");
    }
}

#[test]
fn trex_profile_refuses_bad_tunables_and_imports_without_trex() {
    let out = python(
        "import trex_baton\n\
         for kw in (dict(size=59), dict(mix='tcp'), dict(flows=0), dict(vlan=4095)):\n\
         \x20   try:\n\
         \x20       trex_baton.describe(**kw)\n\
         \x20       print('accepted', kw)\n\
         \x20   except ValueError as e:\n\
         \x20       print('refused', e)\n\
         if not trex_baton.HAVE_TREX:\n\
         \x20   try:\n\
         \x20       trex_baton.register().get_streams()\n\
         \x20   except RuntimeError as e:\n\
         \x20       print('no trex', e)\n",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains("accepted"), "{stdout}");
    assert_eq!(stdout.matches("refused").count(), 4, "{stdout}");
    for word in ["size", "mix", "flows", "vlan"] {
        assert!(stdout.contains(word), "{stdout}");
    }
    // As a command it prints the streams, and refuses with exit 2.
    let cli = |args: &[&str]| {
        run(Command::new("python3")
            .arg("-B")
            .arg(format!("{DIR}/trex_baton.py"))
            .args(args))
    };
    let out = cli(&["--mix", "realistic"]);
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v.as_array().map(Vec::len), Some(4));
    let out = cli(&["--size", "59"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("size"));
}
