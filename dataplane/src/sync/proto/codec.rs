//! HyperSync's wire format: the frame header, the four bodies, and the HMAC tag that
//! seals a frame; building (`Sealer`) and structural parsing (`parse`).

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub(super) type HmacSha256 = Hmac<Sha256>;

/// Records are opaque fixed-size byte strings to the protocol; their size is the
/// connection record's.
pub use crate::conntrack::{Record, RECORD_LEN};
/// Largest payload (bytes after the 14-byte Ethernet header) a frame may have.
pub const MAX_PAYLOAD: usize = 1500;

/// Protocol version on the wire.
pub const VERSION: u8 = 1;
pub(super) const KIND_DATA: u8 = 1;
pub(super) const KIND_ACK: u8 = 2;
pub(super) const KIND_NACK: u8 = 3;
pub(super) const KIND_RESYNC: u8 = 4;
/// Common header: version, kind, group, src, dst, epoch, frame id.
pub const HEADER_LEN: usize = 30;
/// Truncated HMAC-SHA256.
pub const TAG_LEN: usize = 16;
pub(super) const DATA_FIXED: usize = 10;
pub(super) const ACK_BODY: usize = 16;
pub(super) const NACK_FIXED: usize = 18;
pub(super) const RANGE_LEN: usize = 16;
pub(super) const RESYNC_BODY: usize = 8;
/// Records one DATA frame carries at most (30).
pub const RECORDS_PER_FRAME: usize = (MAX_PAYLOAD - HEADER_LEN - DATA_FIXED - TAG_LEN) / RECORD_LEN;
/// Missing ranges one NACK carries at most (89).
pub const MAX_NACK_RANGES: usize = (MAX_PAYLOAD - HEADER_LEN - NACK_FIXED - TAG_LEN) / RANGE_LEN;

/// Builds and authenticates my frames.
pub(super) struct Sealer {
    pub(super) mac: HmacSha256,
    pub(super) group: u32,
    pub(super) me: u32,
    pub(super) epoch: u64,
    /// Last frame id used: one counter for all peers, so re-adding a peer never reuses ids.
    pub(super) frame_id: u64,
}

impl Sealer {
    pub(super) fn start(&mut self, kind: u8, dst: u32, body: usize) -> Vec<u8> {
        self.frame_id += 1;
        let mut b = Vec::with_capacity(HEADER_LEN + body + TAG_LEN);
        b.push(VERSION);
        b.push(kind);
        b.extend_from_slice(&self.group.to_be_bytes());
        b.extend_from_slice(&self.me.to_be_bytes());
        b.extend_from_slice(&dst.to_be_bytes());
        b.extend_from_slice(&self.epoch.to_be_bytes());
        b.extend_from_slice(&self.frame_id.to_be_bytes());
        b
    }

    pub(super) fn seal(&self, mut b: Vec<u8>) -> Vec<u8> {
        let mut m = self.mac.clone();
        m.update(&b);
        let tag = m.finalize().into_bytes();
        b.extend_from_slice(&tag[..TAG_LEN]);
        b
    }

    pub(super) fn ack(&mut self, dst: u32, acked_epoch: u64, cum: u64) -> Vec<u8> {
        let mut b = self.start(KIND_ACK, dst, ACK_BODY);
        b.extend_from_slice(&acked_epoch.to_be_bytes());
        b.extend_from_slice(&cum.to_be_bytes());
        self.seal(b)
    }

    pub(super) fn nack(
        &mut self,
        dst: u32,
        acked_epoch: u64,
        cum: u64,
        ranges: &[(u64, u64)],
    ) -> Vec<u8> {
        let mut b = self.start(KIND_NACK, dst, NACK_FIXED + ranges.len() * RANGE_LEN);
        b.extend_from_slice(&acked_epoch.to_be_bytes());
        b.extend_from_slice(&cum.to_be_bytes());
        b.extend_from_slice(&(ranges.len() as u16).to_be_bytes());
        for (first, last) in ranges {
            b.extend_from_slice(&first.to_be_bytes());
            b.extend_from_slice(&last.to_be_bytes());
        }
        self.seal(b)
    }

    pub(super) fn resync(&mut self, dst: u32, base: u64) -> Vec<u8> {
        let mut b = self.start(KIND_RESYNC, dst, RESYNC_BODY);
        b.extend_from_slice(&base.to_be_bytes());
        self.seal(b)
    }
}

pub(super) enum Body<'a> {
    Data {
        first: u64,
        recs: &'a [u8],
    },
    Ack {
        acked_epoch: u64,
        cum: u64,
    },
    Nack {
        acked_epoch: u64,
        cum: u64,
        ranges: &'a [u8],
    },
    Resync {
        base: u64,
    },
}

pub(super) struct Frame<'a> {
    pub(super) group: u32,
    pub(super) src: u32,
    pub(super) dst: u32,
    pub(super) epoch: u64,
    pub(super) id: u64,
    pub(super) body: Body<'a>,
    pub(super) signed: &'a [u8],
    pub(super) tag: &'a [u8],
}

pub(super) fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

pub(super) fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

pub(super) fn be64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Range pairs of a NACK body, already length-checked by `parse`.
pub(super) fn ranges(b: &[u8]) -> impl Iterator<Item = (u64, u64)> + '_ {
    b.chunks_exact(RANGE_LEN)
        .filter_map(|c| Some((be64(c, 0)?, be64(c, 8)?)))
}

/// Structural checks only; None means malformed.
pub(super) fn parse(p: &[u8]) -> Option<Frame<'_>> {
    if p.len() < HEADER_LEN + TAG_LEN || p.len() > MAX_PAYLOAD {
        return None;
    }
    let (signed, tag) = p.split_at(p.len() - TAG_LEN);
    if signed[0] != VERSION {
        return None;
    }
    let id = be64(signed, 22)?;
    if id == 0 {
        return None;
    }
    let b = &signed[HEADER_LEN..];
    let body = match signed[1] {
        KIND_DATA => {
            let first = be64(b, 0)?;
            let count = usize::from(be16(b, 8)?);
            let recs = b.get(DATA_FIXED..)?;
            if first == 0
                || count == 0
                || count > RECORDS_PER_FRAME
                || recs.len() != count * RECORD_LEN
            {
                return None;
            }
            first.checked_add(count as u64)?;
            Body::Data { first, recs }
        }
        KIND_ACK if b.len() == ACK_BODY => Body::Ack {
            acked_epoch: be64(b, 0)?,
            cum: be64(b, 8)?,
        },
        KIND_NACK => {
            let n = usize::from(be16(b, 16)?);
            let r = b.get(NACK_FIXED..)?;
            if n == 0 || n > MAX_NACK_RANGES || r.len() != n * RANGE_LEN {
                return None;
            }
            if ranges(r).any(|(first, last)| first == 0 || first > last) {
                return None;
            }
            Body::Nack {
                acked_epoch: be64(b, 0)?,
                cum: be64(b, 8)?,
                ranges: r,
            }
        }
        KIND_RESYNC if b.len() == RESYNC_BODY => {
            let base = be64(b, 0)?;
            if base == 0 {
                return None;
            }
            Body::Resync { base }
        }
        _ => return None,
    };
    Some(Frame {
        group: be32(signed, 2)?,
        src: be32(signed, 6)?,
        dst: be32(signed, 10)?,
        epoch: be64(signed, 14)?,
        id,
        body,
        signed,
        tag,
    })
}
