//! A member under a flood of distinct 5-tuples: the connection table fills to its
//! capacity, refuses the rest with a counter, and memory stays bounded.

use std::sync::atomic::Ordering;

use baton_dataplane::{
    conntrack::{ConnTable, Timeouts},
    verdict::DropReason,
};
use baton_lab::{
    member_port::{forwarder, round, rss_bytes},
    scratch::Topology,
};

#[test]
fn a_flood_of_a_million_tuples_leaves_memory_bounded() {
    let _topo = Topology::with_member_port().expect("benchmark namespace");
    let capacity = 100_000;
    let table_bytes = ConnTable::new(capacity, Timeouts::default()).memory_bytes();
    let before = rss_bytes();
    // Frames over 1M distinct (source, port) tuples until the member has received 1M of
    // them (the generator is faster than the member; what it cannot take is dropped
    // before it).
    let (_, stats) = round(forwarder(capacity), 200_000, 1_000_000, 1_000_000).expect("flood");
    let grown = rss_bytes().saturating_sub(before);
    let seen = stats.rx_packets.load(Ordering::Relaxed);
    let full = stats.drops[DropReason::TableFull as usize].load(Ordering::Relaxed);
    assert!(seen >= 1_000_000, "the member saw {seen} frames");
    assert_eq!(
        stats.connections.load(Ordering::Relaxed),
        capacity as u64,
        "the table is full"
    );
    assert!(
        full > capacity as u64 / 2,
        "new tuples beyond capacity are refused and counted ({full})"
    );
    // The table's own memory plus a fixed allowance (UMEM, rings, histogram, the neighbour
    // table and the held-frame queues).
    let bound = table_bytes + (48 << 20);
    assert!(grown <= bound, "RSS grew by {grown} bytes, bound {bound}");
    eprintln!(
        "flood: {seen} frames seen, {full} refused, RSS +{} MiB (table {} MiB)",
        grown >> 20,
        table_bytes >> 20
    );
}
