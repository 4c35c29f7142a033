//! The sync thread's I/O: one AF_XDP socket on the member's sync port (raw frames of
//! EtherType `ETH_P_SYNC`, nothing else), the workers' record channel and their tap,
//! driving the sans-IO [`Engine`].

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};

use crossbeam_channel::Receiver;

use baton_common::net::ETH_P_SYNC;

use super::{
    engine::{Engine, SyncReport, View, Workers},
    store::BackupStore,
    tap::{Outbound, SyncTap, TapStats, SLOTS},
};
use crate::{
    error::PortError,
    loader::Member,
    port::{poll_all, PortConfig, QueueSocket, HOLD_TICK},
};

/// How long the thread polls at HOLD_TICK after its last record or frame.
const BUSY_SPELL: Duration = Duration::from_millis(20);

/// Records taken from the channel per step, so receiving keeps its turn.
const DRAIN_MAX: usize = 8192;

impl Workers for SyncTap {
    fn issued(&self, slot: usize) -> u64 {
        SyncTap::issued(self, slot)
    }
    fn applied_everywhere(&self, generation: u64) -> bool {
        SyncTap::applied_everywhere(self, generation)
    }
    fn request_resync(&self, buckets: Vec<bool>, mask: u32) -> u64 {
        SyncTap::request_resync(self, buckets, mask);
        self.resync().map_or(0, |r| r.generation)
    }
    fn store(&self) -> MutexGuard<'_, BackupStore> {
        self.store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
    fn stats(&self) -> &TapStats {
        &self.stats
    }
}

/// What the sync thread drives: the engine, and the workers' tap and record channel.
pub struct SyncParts {
    pub engine: Engine,
    pub tap: Arc<SyncTap>,
    pub records: Receiver<Outbound>,
}

/// Runs the sync port until `stop`: frames in → engine → frames out, new bucket tables
/// from `views`, figures published to `report` a few times a second.
// A thread body: it owns what its thread uses for the thread's life.
#[allow(clippy::needless_pass_by_value)]
pub fn run(
    cfg: &PortConfig,
    member: &mut Member,
    mac: [u8; 6],
    parts: SyncParts,
    views: Receiver<View>,
    report: Arc<Mutex<SyncReport>>,
    stop: Arc<AtomicBool>,
) -> Result<(), PortError> {
    let SyncParts {
        mut engine,
        tap,
        records,
    } = parts;
    let mut sockets = vec![QueueSocket::open(cfg, cfg.queue, member)?];
    tracing::info!(iface = %cfg.iface, "sync port up");
    let mut out: Vec<([u8; 6], Vec<u8>)> = Vec::new();
    let mut frame = Vec::with_capacity(2048);
    let mut last_report = Instant::now();
    let mut not_sync = 0u64;
    let mut busy_until = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        while let Ok(view) = views.try_recv() {
            engine.set_view(view, now, &*tap);
        }
        let sock = &mut sockets[0];
        let n = sock.receive();
        for desc in &sock.batch[..n] {
            // SAFETY: received frames are ours until recycled below.
            let data = unsafe { sock.umem.data(desc) };
            let f = data.contents();
            if f.len() >= 14 && u16::from_be_bytes([f[12], f[13]]) == ETH_P_SYNC {
                engine.on_frame(&f[14..], now, &*tap);
            } else {
                not_sync += 1;
            }
        }
        let batch: Vec<_> = sock.batch[..n].to_vec();
        sock.recycle.extend_from_slice(&batch);
        let mut drained = 0;
        while drained < DRAIN_MAX {
            let Ok(o) = records.try_recv() else {
                break;
            };
            engine.on_record(&o, now);
            drained += 1;
        }
        engine.poll(now, &mut out, &*tap);
        for (slot, mark) in engine.watermarks().iter().enumerate().take(SLOTS) {
            tap.set_watermark(slot, *mark);
        }
        let sent = out.len();
        for (dst, payload) in out.drain(..) {
            frame.clear();
            frame.extend_from_slice(&dst);
            frame.extend_from_slice(&mac);
            frame.extend_from_slice(&ETH_P_SYNC.to_be_bytes());
            frame.extend_from_slice(&payload);
            if !sock.originate(&frame) {
                // No free frame: the protocol retransmits what did not leave.
                break;
            }
        }
        sock.flush(cfg.ring as usize)?;
        if now.duration_since(last_report) >= Duration::from_millis(50) {
            last_report = now;
            *report
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = engine.report(&*tap);
            if not_sync > 0 {
                tracing::debug!(
                    frames = not_sync,
                    "frames on the sync port that are not sync frames"
                );
            }
        }
        if n > 0 || drained > 0 || sent > 0 {
            busy_until = now + BUSY_SPELL;
        } else {
            // While records flow, records from the workers (which do not wake this
            // thread) are picked up within a HOLD_TICK, as acks are on the other side.
            poll_all(
                &mut sockets,
                if now < busy_until {
                    HOLD_TICK
                } else {
                    Duration::from_millis(1)
                },
            )?;
        }
    }
    Ok(())
}
