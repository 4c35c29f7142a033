//! The copies a member holds of other members' connections (it is their bucket's backup):
//! installed from sync records, aged by the same timeouts as the originals, and taken by a
//! worker when a packet of one arrives after a failover.

use std::time::Instant;

use ahash::AHashMap;

use crate::conntrack::{Connection, FlowKey, Record, RecordOp};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreCounters {
    pub installed: u64,
    pub updated: u64,
    pub deleted: u64,
    pub expired: u64,
    /// Records refused because the store was full.
    pub full: u64,
    /// Records that made no sense.
    pub malformed: u64,
    /// Copies a worker took over after a failover.
    pub taken: u64,
}

pub struct BackupStore {
    map: AHashMap<FlowKey, (Connection, u32)>,
    capacity: usize,
    epoch: Instant,
    pub counters: StoreCounters,
}

impl BackupStore {
    /// A store for at most `capacity` copies.
    pub fn new(capacity: usize) -> Self {
        Self {
            map: AHashMap::new(),
            capacity,
            epoch: Instant::now(),
            counters: StoreCounters::default(),
        }
    }

    /// The store's clock (milliseconds since it was made).
    pub fn now_ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Applies one record from member `origin`.
    pub fn apply(&mut self, origin: u32, rec: &Record, now: Instant) {
        let ms = self.now_ms(now);
        let Some((op, conn)) = Connection::decode(rec, ms) else {
            self.counters.malformed += 1;
            return;
        };
        match op {
            RecordOp::Delete => {
                if self.map.remove(&conn.key).is_some() {
                    self.counters.deleted += 1;
                }
            }
            RecordOp::Upsert => {
                if let Some(slot) = self.map.get_mut(&conn.key) {
                    *slot = (conn, origin);
                    self.counters.updated += 1;
                } else if self.map.len() < self.capacity {
                    self.map.insert(conn.key, (conn, origin));
                    self.counters.installed += 1;
                } else {
                    self.counters.full += 1;
                }
            }
        }
    }

    /// Takes the copy of `key` out, on the clock of the table that adopts it
    /// (`to_now_ms`); None when there is none or it expired.
    pub fn take(&mut self, key: &FlowKey, now: Instant, to_now_ms: u64) -> Option<Connection> {
        let ms = self.now_ms(now);
        let (c, _) = self.map.remove(key)?;
        if c.remaining_ms(ms) == 0 {
            self.counters.expired += 1;
            return None;
        }
        self.counters.taken += 1;
        Some(c.rebase(ms, to_now_ms))
    }

    /// Drops expired copies (a full pass: call it about once a second).
    pub fn expire(&mut self, now: Instant) {
        let ms = self.now_ms(now);
        let before = self.map.len();
        self.map.retain(|_, (c, _)| c.remaining_ms(ms) > 0);
        self.counters.expired += (before - self.map.len()) as u64;
    }

    /// Copies whose key `pick` selects, encoded as records on the store's clock (for a
    /// bulk sync of connections this member now owns or backs up).
    pub fn records_where(
        &self,
        now: Instant,
        mut pick: impl FnMut(&FlowKey) -> bool,
    ) -> Vec<Record> {
        let ms = self.now_ms(now);
        self.map
            .values()
            .filter(|(c, _)| pick(&c.key))
            .map(|(c, _)| c.encode(RecordOp::Upsert, ms))
            .collect()
    }

    /// Removes the copies `drop` selects (buckets this member neither backs up nor owns).
    pub fn remove_where(&mut self, mut drop: impl FnMut(&FlowKey) -> bool) -> usize {
        let before = self.map.len();
        self.map.retain(|k, _| !drop(k));
        before - self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use baton_common::net::IPPROTO_TCP;

    use super::*;
    use crate::conntrack::{flags, ConnTable, Packet, Timeouts, Track, RECORD_LEN};

    fn syn(sport: u16) -> Packet {
        Packet {
            src: "198.18.0.1".parse().unwrap(),
            dst: "198.19.0.1".parse().unwrap(),
            proto: IPPROTO_TCP,
            sport,
            dport: 80,
            flags: flags::SYN,
        }
    }

    #[test]
    fn a_copy_carries_on_where_the_original_stopped() {
        let mut active = ConnTable::new(16, Timeouts::default());
        active.enable_journal();
        let p = syn(1000);
        active.track(&p, 0, || true);
        let reply = Packet {
            src: p.dst,
            dst: p.src,
            sport: 80,
            dport: 1000,
            flags: flags::SYN | flags::ACK,
            ..p
        };
        active.track(&reply, 5, || true);
        let changes: Vec<_> = active.journal().unwrap().drain(..).collect();
        assert_eq!(changes.len(), 2);
        assert!(!changes[0].first_reply && changes[1].first_reply);

        let t0 = Instant::now();
        let mut store = BackupStore::new(4);
        for c in &changes {
            store.apply(1, &c.conn.encode(c.op, 5), t0);
        }
        assert_eq!(store.len(), 1);
        assert_eq!(store.counters.installed, 1);
        assert_eq!(store.counters.updated, 1);
        // After the failover, the backup's table adopts the copy and the handshake goes on.
        let mut backup = ConnTable::new(16, Timeouts::default());
        backup.enable_journal();
        let (k, _) = FlowKey::of(&p);
        let c = store.take(&k, t0, 100).expect("copy");
        assert!(backup.take_over(c));
        assert_eq!(
            backup.journal().unwrap().len(),
            1,
            "its own backup hears of it"
        );
        let ack = Packet {
            flags: flags::ACK,
            ..p
        };
        assert_eq!(
            backup.track(&ack, 101, || panic!("no policy for a known connection")),
            Track::Existing(crate::conntrack::State::Established)
        );
    }

    #[test]
    fn deletes_expiry_capacity_and_garbage() {
        let mut t = ConnTable::new(16, Timeouts::default());
        t.enable_journal();
        let t0 = Instant::now();
        let mut store = BackupStore::new(2);
        for sport in 1..=3 {
            t.track(&syn(sport), 0, || true);
        }
        for c in t.journal().unwrap().drain(..) {
            store.apply(2, &c.conn.encode(c.op, 0), t0);
        }
        assert_eq!(store.len(), 2);
        assert_eq!(store.counters.full, 1);
        // A reset ends the connection: the copy goes too.
        let rst = Packet {
            flags: flags::RST,
            ..syn(1)
        };
        t.track(&rst, 1, || true);
        for c in t.journal().unwrap().drain(..) {
            store.apply(2, &c.conn.encode(c.op, 1), t0);
        }
        assert_eq!(store.len(), 1);
        assert_eq!(store.counters.deleted, 1);
        // Copies age by the timeout the record carried (30 s for a SYN).
        store.expire(t0 + Duration::from_secs(31));
        assert!(store.is_empty());
        // Garbage is counted, never installed.
        let mut junk = [0xffu8; RECORD_LEN];
        store.apply(2, &junk, t0);
        junk[0] = 1;
        store.apply(2, &junk, t0);
        assert_eq!(store.counters.malformed, 2);
        assert!(store.is_empty());
    }
}
