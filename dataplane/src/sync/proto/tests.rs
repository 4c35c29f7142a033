//! The endpoint under simulated links: delivery, loss, reordering, forgery, replay,
//! restarts and overflows.

use std::time::{Duration, Instant};

use super::{
    codec::{be64, DATA_FIXED, KIND_DATA},
    *,
};

const KEY: GroupKey = GroupKey([7; 32]);

/// xorshift64*: deterministic, seedable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// True with probability `per_mille` / 1000.
    fn chance(&mut self, per_mille: u64) -> bool {
        self.next() % 1000 < per_mille
    }
}

fn rec(seq: u64) -> Record {
    let mut r = [seq as u8; RECORD_LEN];
    r[..8].copy_from_slice(&seq.to_be_bytes());
    r
}

fn cfg(me: u32, epoch: u64) -> Config {
    Config {
        me,
        epoch,
        ..Config::default()
    }
}

fn endpoint(cfg: Config, peers: &[u32]) -> Endpoint {
    let mut e = Endpoint::new(cfg, &KEY);
    e.set_peers(peers);
    e
}

fn is_data(f: &[u8]) -> bool {
    f.get(1) == Some(&KIND_DATA)
}

fn data_first(f: &[u8]) -> u64 {
    be64(f, HEADER_LEN).unwrap()
}

type Filter = Box<dyn FnMut(u32, &[u8]) -> bool>;

/// Members 1 and 2 joined by an in-memory wire with loss, duplication and reordering.
struct Sim {
    a: Endpoint,
    b: Endpoint,
    now: Instant,
    start: Instant,
    rng: Rng,
    loss: u64,
    dup: u64,
    reorder: u64,
    /// (deliver at, order, to, payload).
    wire: Vec<(Instant, u64, u32, Vec<u8>)>,
    order: u64,
    /// Drops a frame (from, payload) when it returns true.
    filter: Option<Filter>,
    got_a: Vec<Record>,
    got_b: Vec<Record>,
    /// Records each side pushed so far.
    pushed_a: u64,
    pushed_b: u64,
    /// Records 1→2 that will never arrive (discarded by an overflow).
    skip_b: u64,
}

impl Sim {
    fn new(seed: u64, loss: u64, dup: u64, reorder: u64, ca: Config, cb: Config) -> Self {
        let now = Instant::now();
        Sim {
            a: endpoint(ca, &[2]),
            b: endpoint(cb, &[1]),
            now,
            start: now,
            rng: Rng(seed | 1),
            loss,
            dup,
            reorder,
            wire: Vec::new(),
            order: 0,
            filter: None,
            got_a: Vec::new(),
            got_b: Vec::new(),
            pushed_a: 0,
            pushed_b: 0,
            skip_b: 0,
        }
    }

    fn clean() -> Self {
        Sim::new(1, 0, 0, 0, cfg(1, 10), cfg(2, 20))
    }

    fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    fn send(&mut self, from: u32, to: u32, f: &[u8]) {
        if let Some(filter) = &mut self.filter {
            if filter(from, f) {
                return;
            }
        }
        if self.rng.chance(self.loss) {
            return;
        }
        let copies = if self.rng.chance(self.dup) { 2 } else { 1 };
        for _ in 0..copies {
            let mut delay = Duration::from_micros(100);
            if self.rng.chance(self.reorder) {
                delay += Duration::from_micros(self.rng.next() % 3000);
            }
            self.order += 1;
            self.wire
                .push((self.now + delay, self.order, to, f.to_vec()));
        }
    }

    fn step(&mut self, dt: Duration) {
        self.now += dt;
        let now = self.now;
        self.wire.sort_by_key(|w| (w.0, w.1));
        let due = self.wire.iter().take_while(|w| w.0 <= now).count();
        let frames: Vec<_> = self.wire.drain(..due).collect();
        for (_, _, to, f) in frames {
            if to == 2 {
                for (from, r) in self.b.receive(&f, now) {
                    assert_eq!(from, 1);
                    self.got_b.push(r);
                }
            } else {
                for (from, r) in self.a.receive(&f, now) {
                    assert_eq!(from, 2);
                    self.got_a.push(r);
                }
            }
        }
        let mut out = Vec::new();
        self.a.poll(now, &mut out);
        for (to, f) in out.drain(..) {
            assert_eq!(to, 2);
            self.send(1, to, &f);
        }
        self.b.poll(now, &mut out);
        for (to, f) in out.drain(..) {
            assert_eq!(to, 1);
            self.send(2, to, &f);
        }
    }

    /// Pushes `to_b` records 1→2 and `to_a` 2→1 as room allows, pumping until all are
    /// delivered and acked.
    fn run(&mut self, to_b: u64, to_a: u64, limit: Duration) {
        loop {
            while self.pushed_a < to_b && self.a.room(2) > 0 {
                self.pushed_a += 1;
                let seq = self.a.push(2, &rec(self.pushed_a), self.now);
                assert_eq!(seq, Some(self.pushed_a));
            }
            while self.pushed_b < to_a && self.b.room(1) > 0 {
                self.pushed_b += 1;
                self.b.push(1, &rec(self.pushed_b), self.now);
            }
            self.step(Duration::from_micros(250));
            if self.got_b.len() as u64 + self.skip_b == to_b
                && self.got_a.len() as u64 == to_a
                && self.a.acked(2) == to_b
                && self.b.acked(1) == to_a
            {
                return;
            }
            assert!(
                self.elapsed() < limit,
                "stuck: b got {}/{to_b}, a got {}/{to_a}, acked {} {}",
                self.got_b.len(),
                self.got_a.len(),
                self.a.acked(2),
                self.b.acked(1)
            );
        }
    }

    /// Lets acks and timers settle until neither side has anything pending.
    fn quiesce(&mut self) {
        for _ in 0..400 {
            self.step(Duration::from_millis(1));
            if self.a.next_deadline().is_none()
                && self.b.next_deadline().is_none()
                && self.wire.is_empty()
            {
                return;
            }
        }
        panic!("never quiet");
    }
}

fn assert_in_order(got: &[Record], first: u64) {
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r, &rec(first + i as u64), "record {i}");
    }
}

#[test]
fn lossless_stream_delivers_all_in_order() {
    let n = 100_000;
    let mut sim = Sim::clean();
    sim.run(n, 0, Duration::from_secs(10));
    assert_in_order(&sim.got_b, 1);
    assert_eq!(sim.a.pushed(2), n);
    assert_eq!(sim.a.acked(2), n);
    let st = sim.a.stats(2).unwrap();
    assert_eq!(st.queue, 0);
    assert_eq!(st.lag_ms, 0.0);
    assert_eq!((st.sent, st.acked, st.retransmitted), (n, n, 0));
    assert_eq!(sim.b.stats(1).unwrap().received, n);
    sim.quiesce();
    assert_eq!(sim.a.counters(), Counters::default());
    assert_eq!(sim.b.counters(), Counters::default());
}

#[test]
fn the_default_acks_a_received_batch_at_once_with_one_frame() {
    let t0 = Instant::now();
    let mut a = endpoint(cfg(1, 10), &[2]);
    let mut b = endpoint(cfg(2, 20), &[1]);
    for i in 1..=90 {
        a.push(2, &rec(i), t0);
    }
    let mut out = Vec::new();
    a.poll(t0, &mut out);
    assert_eq!(out.len(), 3, "90 records, 30 per frame");
    for (_, f) in out.drain(..) {
        assert_eq!(b.receive(&f, t0).len(), 30);
    }
    // The same instant: no ack delay (the active member holds a first reply until it).
    b.poll(t0, &mut out);
    assert_eq!(out.len(), 1, "one ack for the whole batch");
    let (_, ack) = out.pop().unwrap();
    a.receive(&ack, t0);
    assert_eq!(a.acked(2), 90);
}

#[test]
fn lossy_reordering_link_delivers_exactly_once() {
    let n = 20_000;
    // Delayed acks (as a loaded receiver's would be) also exercise duplicates.
    let delayed = |me, epoch| Config {
        ack_every: Duration::from_millis(2),
        ..cfg(me, epoch)
    };
    let mut sim = Sim::new(42, 50, 20, 100, delayed(1, 10), delayed(2, 20));
    sim.run(n, n / 4, Duration::from_secs(60));
    assert_in_order(&sim.got_b, 1);
    assert_in_order(&sim.got_a, 1);
    let (sa, sb) = (sim.a.stats(2).unwrap(), sim.b.stats(1).unwrap());
    assert!(sa.retransmitted > 0 && sb.retransmitted > 0);
    assert_eq!(sa.lost + sb.lost, 0);
    assert!(sb.nacks_sent > 0);
    assert!(sb.duplicates > 0);
    sim.quiesce();
}

#[test]
fn tail_loss_recovers_by_rto() {
    let mut sim = Sim::clean();
    let mut dropped = false;
    sim.filter = Some(Box::new(move |from, f: &[u8]| {
        if from == 1 && !dropped && is_data(f) && data_first(f) == 91 {
            dropped = true;
            return true;
        }
        false
    }));
    sim.run(95, 0, Duration::from_secs(1));
    assert_in_order(&sim.got_b, 1);
    // No gap was visible, so only the timer could have found the loss.
    assert_eq!(sim.b.stats(1).unwrap().nacks_sent, 0);
    assert!(sim.a.stats(2).unwrap().retransmitted >= 5);
    assert!(sim.elapsed() >= Config::default().rto);
}

/// One authentic DATA frame 1→2 carrying record 1.
fn data_frame(a: &mut Endpoint, now: Instant) -> Vec<u8> {
    let seq = a.pushed(2) + 1;
    a.push(2, &rec(seq), now);
    let mut out = Vec::new();
    a.poll(now, &mut out);
    out.into_iter().find(|(_, f)| is_data(f)).unwrap().1
}

#[test]
fn forged_and_garbage_frames_are_counted_not_delivered() {
    let now = Instant::now();
    let mut b = endpoint(cfg(2, 20), &[1]);

    let mut a = endpoint(cfg(1, 10), &[2, 3]);
    let good = data_frame(&mut a, now);
    let mut flipped = good.clone();
    flipped[HEADER_LEN + DATA_FIXED + 5] ^= 0x10;
    assert!(b.receive(&flipped, now).is_empty());
    assert_eq!(b.counters().auth_failed, 1);

    let mut wrong_key = Endpoint::new(cfg(1, 10), &GroupKey([8; 32]));
    wrong_key.set_peers(&[2]);
    assert!(b.receive(&data_frame(&mut wrong_key, now), now).is_empty());
    assert_eq!(b.counters().auth_failed, 2);

    let mut stranger = endpoint(cfg(9, 10), &[2]);
    assert!(b.receive(&data_frame(&mut stranger, now), now).is_empty());
    assert_eq!(b.counters().unknown_peer, 1);

    let mut other_group = endpoint(
        Config {
            group: 5,
            ..cfg(1, 10)
        },
        &[2],
    );
    assert!(b
        .receive(&data_frame(&mut other_group, now), now)
        .is_empty());
    assert_eq!(b.counters().unknown_peer, 2);

    a.push(3, &rec(1), now);
    let mut out = Vec::new();
    a.poll(now, &mut out);
    let to_3 = out.into_iter().find(|(p, _)| *p == 3).unwrap().1;
    assert!(b.receive(&to_3, now).is_empty());
    assert_eq!(b.counters().wrong_dst, 1);

    // Every truncation of a valid frame, and random bytes of every length up to 100.
    for len in 0..good.len() {
        assert!(b.receive(&good[..len], now).is_empty());
    }
    let mut rng = Rng(99);
    for len in 0..100 {
        let junk: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        assert!(b.receive(&junk, now).is_empty());
    }
    let c = b.counters();
    assert_eq!(c.malformed, good.len() as u64 + 100);
    assert_eq!(b.stats(1).unwrap().received, 0);

    // The authentic frame still gets through after all that.
    assert_eq!(b.receive(&good, now), vec![(1, rec(1))]);
}

#[test]
fn mutated_frames_never_panic() {
    let now = Instant::now();
    let mut a = endpoint(cfg(1, 10), &[2]);
    let mut b = endpoint(cfg(2, 20), &[1]);
    let good = data_frame(&mut a, now);
    let mut rng = Rng(7);
    for i in 0..20_000u64 {
        let mut f = good.clone();
        match i % 3 {
            0 => {
                let at = (rng.next() as usize) % f.len();
                f[at] ^= 1 << (rng.next() % 8);
            }
            1 => f.truncate((rng.next() as usize) % f.len()),
            _ => f.extend((0..=(rng.next() % 40)).map(|_| rng.next() as u8)),
        }
        assert!(b.receive(&f, now).is_empty());
    }
    let c = b.counters();
    assert_eq!(
        c.malformed + c.auth_failed + c.unknown_peer + c.wrong_dst,
        20_000
    );
}

#[test]
fn replays_are_dropped() {
    let t0 = Instant::now();
    let mut a = endpoint(cfg(1, 100), &[2]);
    let mut b = endpoint(cfg(2, 20), &[1]);
    let first = data_frame(&mut a, t0);
    assert_eq!(b.receive(&first, t0), vec![(1, rec(1))]);
    let t1 = t0 + Duration::from_millis(5);
    assert!(b.receive(&first, t1).is_empty());
    assert_eq!(b.counters().replayed, 1);
    assert_eq!(b.stats(1).unwrap().received, 1);
    // A later frame of the old stream, never delivered.
    let unseen = data_frame(&mut a, t1);

    // Member 1 restarts with a higher epoch; its new stream starts at 1.
    let mut a2 = endpoint(cfg(1, 200), &[2]);
    let new = data_frame(&mut a2, t1);
    assert_eq!(b.receive(&new, t1), vec![(1, rec(1))]);
    assert_eq!(b.events(), vec![Event::PeerRestarted(1)]);
    assert!(b.receive(&first, t1).is_empty());
    assert!(b.receive(&unseen, t1).is_empty());
    assert_eq!(b.counters().replayed, 3);
    assert_eq!(b.receive(&data_frame(&mut a2, t1), t1), vec![(1, rec(2))]);
    assert!(b.events().is_empty());
}

#[test]
fn restarted_sender_resumes_cleanly() {
    let mut sim = Sim::clean();
    sim.run(500, 0, Duration::from_secs(1));
    // Member 2 restarts: member 1 must restart its stream to it at the unacked point.
    sim.b = endpoint(cfg(2, 21), &[1]);
    sim.run(1500, 0, Duration::from_secs(2));
    assert_eq!(sim.a.events(), vec![Event::PeerRestarted(2)]);
    assert_eq!(sim.a.stats(2).unwrap().resyncs, 0);
    // The new process gets the stream from where the old one's acks stopped.
    assert_in_order(&sim.got_b, 1);
    assert_eq!(sim.b.stats(1).unwrap().received, 1000);
}

#[test]
fn overflow_resyncs_once_after_marker_ack() {
    let ca = Config {
        queue_max: 64,
        ..cfg(1, 10)
    };
    let mut sim = Sim::new(3, 0, 0, 0, ca, cfg(2, 20));
    let cut = std::rc::Rc::new(std::cell::Cell::new(true));
    let c = cut.clone();
    sim.filter = Some(Box::new(move |_, _| c.get()));
    for seq in 1..=64 {
        sim.a.push(2, &rec(seq), sim.now);
    }
    sim.step(Duration::from_millis(1)); // sends 1..=64 into the void
    for seq in 65..=200 {
        assert_eq!(sim.a.push(2, &rec(seq), sim.now), Some(seq));
    }
    sim.pushed_a = 200;
    for _ in 0..100 {
        sim.step(Duration::from_millis(1));
    }
    let st = sim.a.stats(2).unwrap();
    assert_eq!(
        (st.overflowed, st.lost, st.resyncs, st.queue),
        (192, 64, 0, 8)
    );
    assert_eq!(sim.a.acked(2), 192);
    assert!(sim.a.events().is_empty());

    cut.set(false);
    sim.skip_b = 192;
    sim.run(250, 0, Duration::from_secs(2));
    assert_eq!(sim.a.events(), vec![Event::ResyncNeeded(2)]);
    let st = sim.a.stats(2).unwrap();
    assert_eq!((st.resyncs, st.queue), (1, 0));
    assert_eq!(sim.got_b.len(), 58);
    assert_in_order(&sim.got_b, 193);
    sim.quiesce();
    assert!(sim.a.events().is_empty());
    assert!(sim.b.events().is_empty());
}

#[test]
fn random_links_deliver_in_order_exactly_once() {
    // (loss, duplication, reordering) per mille.
    let links = [
        (0, 0, 300),
        (10, 10, 50),
        (50, 50, 200),
        (100, 0, 0),
        (200, 100, 300),
    ];
    for seed in 1..=3u64 {
        for &(loss, dup, reorder) in &links {
            let ca = Config {
                window: 512,
                ..cfg(1, 10)
            };
            let mut sim = Sim::new(seed * 7919, loss, dup, reorder, ca, cfg(2, 20));
            sim.run(3000, 1000, Duration::from_secs(120));
            assert_in_order(&sim.got_b, 1);
            assert_in_order(&sim.got_a, 1);
            for st in [sim.a.stats(2).unwrap(), sim.b.stats(1).unwrap()] {
                assert_eq!((st.lost, st.overflowed, st.queue), (0, 0, 0));
            }
            assert!(sim.a.events().is_empty() && sim.b.events().is_empty());
            sim.quiesce();
        }
    }
}

#[test]
fn readded_peers_resume() {
    let mut sim = Sim::clean();
    let tap = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let t = tap.clone();
    sim.filter = Some(Box::new(move |from, f: &[u8]| {
        if from == 1 && is_data(f) {
            t.borrow_mut().push(f.to_vec());
        }
        false
    }));
    sim.run(500, 0, Duration::from_secs(1));
    sim.a.set_peers(&[]);
    sim.a.set_peers(&[2]);
    assert_eq!(sim.a.pushed(2), 500);
    sim.run(1000, 0, Duration::from_secs(1));
    sim.b.set_peers(&[3]);
    sim.b.set_peers(&[1, 3]);
    sim.run(1500, 0, Duration::from_secs(1));
    assert_in_order(&sim.got_b, 1);
    let old = tap.borrow()[0].clone();
    assert!(sim.b.receive(&old, sim.now).is_empty());
    assert_eq!(sim.b.counters().replayed, 1);
    assert!(sim.a.events().is_empty() && sim.b.events().is_empty());
    assert_eq!(sim.a.stats(2).unwrap().resyncs, 0);
    sim.quiesce();
}

#[test]
fn deadline_and_room() {
    let now = Instant::now();
    let mut a = endpoint(cfg(1, 10), &[2]);
    assert_eq!(a.next_deadline(), None);
    assert_eq!(a.push(7, &rec(1), now), None);
    assert_eq!(a.room(2), 65536);
    a.push(2, &rec(1), now);
    assert_eq!(a.room(2), 65535);
    assert_eq!(a.next_deadline(), Some(now));
    let mut out = Vec::new();
    a.poll(now, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].1.len(),
        HEADER_LEN + DATA_FIXED + RECORD_LEN + TAG_LEN
    );
    assert_eq!(a.next_deadline(), Some(now + a.cfg.rto));
    a.set_peers(&[3]);
    assert_eq!(a.stats(2), None);
    assert_eq!(a.next_deadline(), None);
}

#[test]
fn frame_size_math() {
    assert_eq!(RECORDS_PER_FRAME, 30);
    let now = Instant::now();
    let mut a = endpoint(cfg(1, 10), &[2]);
    for seq in 1..=31 {
        a.push(2, &rec(seq), now);
    }
    let mut out = Vec::new();
    a.poll(now, &mut out);
    assert_eq!(out.len(), 2);
    assert!(out[0].1.len() <= MAX_PAYLOAD);
    assert_eq!(out[0].1.len(), 1496);
}
