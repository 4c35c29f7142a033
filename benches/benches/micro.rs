//! Criterion micro-benchmarks: each group measures Baton's code ("baton") and a minimal
//! baseline ("baseline") on the same inputs in the same run. `baton_benches::micro` turns
//! the medians into report figures. One iteration is one operation (the groups' goals in
//! `baton_benches::micro::GROUPS` say which), so criterion's time is ns per operation.
//!
//! Quick run: `cargo bench -p baton-benches --bench micro -- --warm-up-time 0.2
//! --measurement-time 0.5`.

use std::{
    collections::HashMap,
    hint::black_box,
    net::IpAddr,
    time::{Duration, Instant},
};

use baton_benches::micro::{
    BASELINE, CONNECTIONS, CONNTRACK_INSERT, CONNTRACK_LOOKUP, FLOW_HASH, FORWARDER, OURS,
    SYNC_DECODE, SYNC_ENCODE,
};
use baton_common::{addr_word, flow_hash};
use baton_dataplane::{
    conntrack::{ConnTable, Packet, Timeouts},
    port::{FrameHandler, MacSwap},
    sync::proto::{Config, Endpoint, GroupKey, Record, RECORDS_PER_FRAME, RECORD_LEN},
    verdict::Verdict,
};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use etherparse::PacketBuilder;

/// The baseline's key: the packet's 5-tuple as it comes, no canonical order.
type FiveTuple = (IpAddr, IpAddr, u8, u16, u16);

fn five_tuple(p: &Packet) -> FiveTuple {
    (p.src, p.dst, p.proto, p.sport, p.dport)
}

/// `n` UDP packets of distinct connections (as the sgm benchmark's table).
use baton_benches::sgm::udp_packets as packets;

/// A scattered visiting order over `n` items, as traffic would look them up; its length
/// is a power of two so the benchmarks step through it with a mask, not a division.
fn scattered(n: usize) -> Vec<usize> {
    (0..n.next_power_of_two())
        .map(|i| (i * 7_919) % n)
        .collect()
}

fn conntrack_lookup(c: &mut Criterion) {
    let packets = packets(CONNECTIONS);
    let order = scattered(CONNECTIONS);
    let mask = order.len() - 1;
    let mut table = ConnTable::new(CONNECTIONS, Timeouts::default());
    let mut map: HashMap<FiveTuple, u64, ahash::RandomState> =
        HashMap::with_capacity_and_hasher(CONNECTIONS, ahash::RandomState::new());
    for p in &packets {
        table.track(p, 1, || true);
        map.insert(five_tuple(p), 1);
    }
    assert_eq!(table.len(), CONNECTIONS, "every connection is in the table");

    let mut g = c.benchmark_group(CONNTRACK_LOOKUP);
    g.throughput(Throughput::Elements(1));
    g.bench_function(OURS, |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) & mask;
            black_box(table.state(&packets[order[i]], 2))
        });
    });
    g.bench_function(BASELINE, |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) & mask;
            black_box(map.get(&five_tuple(&packets[order[i]])))
        });
    });
    g.finish();
}

/// Times `iters` inserts of distinct connections: a fresh structure (made by `fresh`,
/// untimed) every `CONNECTIONS` inserts, so it never overflows.
fn inserts<T>(
    iters: u64,
    packets: &[Packet],
    mut fresh: impl FnMut() -> T,
    mut insert: impl FnMut(&mut T, &Packet),
) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters as usize;
    while left > 0 {
        let n = left.min(packets.len());
        let mut t = fresh();
        let start = Instant::now();
        for p in &packets[..n] {
            insert(&mut t, p);
        }
        total += start.elapsed();
        drop(black_box(t));
        left -= n;
    }
    total
}

fn conntrack_insert(c: &mut Criterion) {
    let packets = packets(CONNECTIONS);
    let mut g = c.benchmark_group(CONNTRACK_INSERT);
    g.throughput(Throughput::Elements(1));
    g.bench_function(OURS, |b| {
        b.iter_custom(|iters| {
            inserts(
                iters,
                &packets,
                || ConnTable::new(CONNECTIONS, Timeouts::default()),
                |t, p| {
                    black_box(t.track(p, 1, || true));
                },
            )
        });
    });
    g.bench_function(BASELINE, |b| {
        b.iter_custom(|iters| {
            inserts(
                iters,
                &packets,
                || {
                    HashMap::<FiveTuple, u64, _>::with_capacity_and_hasher(
                        CONNECTIONS,
                        ahash::RandomState::new(),
                    )
                },
                |m, p| {
                    black_box(m.insert(five_tuple(p), 1));
                },
            )
        });
    });
    g.finish();
}

const SENDER: u32 = 1;
const RECEIVER: u32 = 2;

fn endpoint(me: u32, peer: u32) -> Endpoint {
    let mut e = Endpoint::new(
        Config {
            me,
            epoch: 1,
            ..Config::default()
        },
        &GroupKey([0x42; 32]),
    );
    e.set_peers(&[peer]);
    e
}

/// A full DATA frame's worth of records.
fn records() -> Vec<Record> {
    (0..RECORDS_PER_FRAME)
        .map(|i| {
            let mut r = [0u8; RECORD_LEN];
            r[0] = 1;
            r[16..24].copy_from_slice(&(i as u64).to_be_bytes());
            r
        })
        .collect()
}

/// The payloads a fresh sender emits for `recs` (one DATA frame when they fit).
fn encode(sender: &mut Endpoint, recs: &[Record], now: Instant) -> Vec<(u32, Vec<u8>)> {
    for r in recs {
        sender.push(RECEIVER, r, now);
    }
    let mut out = Vec::with_capacity(1);
    sender.poll(now, &mut out);
    out
}

/// The baseline of both sync groups: the records copied into one buffer of a frame's size.
fn copy_records(recs: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(1500);
    b.extend_from_slice(recs);
    b
}

fn sync_encode(c: &mut Criterion) {
    let recs = records();
    let flat: Vec<u8> = recs.concat();
    let now = Instant::now();
    let frames = encode(&mut endpoint(SENDER, RECEIVER), &recs, now);
    assert_eq!(frames.len(), 1, "30 records go out in one frame");
    assert_eq!(frames[0].1.len(), 1496, "a full DATA frame");

    let mut g = c.benchmark_group(SYNC_ENCODE);
    g.throughput(Throughput::Elements(RECORDS_PER_FRAME as u64));
    // A fresh sender per frame: a long-lived one would fill its window with unacked
    // records. Making it is not timed.
    g.bench_function(OURS, |b| {
        b.iter_batched_ref(
            || endpoint(SENDER, RECEIVER),
            |s| encode(s, &recs, now),
            BatchSize::SmallInput,
        );
    });
    g.bench_function(BASELINE, |b| {
        b.iter_batched_ref(|| (), |()| copy_records(&flat), BatchSize::SmallInput);
    });
    g.finish();
}

fn sync_decode(c: &mut Criterion) {
    let recs = records();
    let now = Instant::now();
    let frame = encode(&mut endpoint(SENDER, RECEIVER), &recs, now)
        .pop()
        .expect("a DATA frame")
        .1;
    let got = endpoint(RECEIVER, SENDER).receive(&frame, now);
    assert_eq!(
        got.len(),
        RECORDS_PER_FRAME,
        "the frame verifies and delivers"
    );
    // Records start after the header (30 bytes) and first_seq + count (10).
    let body = &frame[40..40 + RECORDS_PER_FRAME * RECORD_LEN];
    assert_eq!(body, recs.concat().as_slice());

    let mut g = c.benchmark_group(SYNC_DECODE);
    g.throughput(Throughput::Elements(RECORDS_PER_FRAME as u64));
    // A fresh receiver per frame: a long-lived one would reject the same frame as a
    // replay after verifying it. Making it is not timed.
    g.bench_function(OURS, |b| {
        b.iter_batched_ref(
            || endpoint(RECEIVER, SENDER),
            |r| r.receive(&frame, now),
            BatchSize::SmallInput,
        );
    });
    g.bench_function(BASELINE, |b| {
        b.iter_batched_ref(
            || (),
            |()| {
                body.chunks_exact(RECORD_LEN)
                    .map(|c| (SENDER, <Record>::try_from(c).expect("48 bytes")))
                    .collect::<Vec<_>>()
            },
            BatchSize::SmallInput,
        );
    });
    g.finish();
}

fn udp_frame(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2([0x02, 0, 0, 0, 0, 0x11], [0x02, 0xba, 0x70, 0, 1, 0])
        .ipv4(src, dst, 64)
        .udp(sport, dport)
        .write(&mut v, &[0; 18])
        .expect("build a UDP frame");
    v
}

fn forwarder(c: &mut Criterion) {
    let mut fwd = baton_lab::member_port::forwarder(CONNECTIONS);
    let request = udp_frame([198, 18, 0, 1], [198, 19, 0, 1], 1024, 53);
    let reply = udp_frame([198, 19, 0, 1], [198, 18, 0, 1], 53, 1024);
    let now = Instant::now();
    let mut out = Vec::new();
    // The flow is established (traffic seen both ways) before the measurement.
    assert_eq!(
        fwd.process(&mut request.clone(), now, &mut out),
        Verdict::Forward
    );
    fwd.process(&mut reply.clone(), now, &mut out);
    out.clear();
    let mut buf = request.clone();
    assert_eq!(fwd.process(&mut buf, now, &mut out), Verdict::Forward);
    assert_eq!(fwd.connections().len(), 1);

    let mut g = c.benchmark_group(FORWARDER);
    g.throughput(Throughput::Elements(1));
    // Both restore the received frame first: the forwarder decrements its TTL.
    g.bench_function(OURS, |b| {
        b.iter(|| {
            buf.copy_from_slice(&request);
            let v = fwd.process(&mut buf, now, &mut out);
            out.clear();
            black_box(v)
        });
    });
    g.bench_function(BASELINE, |b| {
        b.iter(|| {
            buf.copy_from_slice(&request);
            let v = MacSwap.process(&mut buf, now, &mut out);
            out.clear();
            black_box(v)
        });
    });
    g.finish();
}

fn flow_hash_group(c: &mut Criterion) {
    // The address words and ports `distribute` and the workers' dispatch hash.
    let flows: Vec<(u32, u32, u16, u16)> = packets(4096)
        .iter()
        .map(|p| (addr_word(p.src), addr_word(p.dst), p.sport, p.dport))
        .collect();
    let mask = flows.len() - 1;
    let hasher = ahash::RandomState::with_seeds(1, 2, 3, 4);

    let mut g = c.benchmark_group(FLOW_HASH);
    g.throughput(Throughput::Elements(1));
    g.bench_function(OURS, |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) & mask;
            let (a, d, pa, pd) = black_box(flows[i]);
            flow_hash(a, d, pa, pd)
        });
    });
    g.bench_function(BASELINE, |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) & mask;
            hasher.hash_one(black_box(flows[i]))
        });
    });
    g.finish();
}

criterion_group!(
    micro,
    conntrack_lookup,
    conntrack_insert,
    sync_encode,
    sync_decode,
    forwarder,
    flow_hash_group
);
criterion_main!(micro);
