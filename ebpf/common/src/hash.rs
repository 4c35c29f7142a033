//! The symmetric flow hash: the kernel's `distribute` and `baton search` both call this, so
//! the member the CLI names is the member the kernel picks.
//!
//! Address words are the address bytes read as a native-endian `u32` (what a load from the
//! packet gives on the little-endian targets Baton runs on), IPv6 addresses folded to one
//! word by [`fold_v6`].

/// Seed of the flow hash; a constant so that every orchestrator and the CLI agree.
pub const HASH_SEED: u32 = 0x6261_746f; // "bato"

/// A 32-bit finaliser (lowbias32): every input bit flips each output bit with probability
/// close to 1/2, at the cost of two multiplications.
#[inline(always)]
pub const fn mix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x7feb_352d);
    h ^= h >> 15;
    h = h.wrapping_mul(0x846c_a68b);
    h ^= h >> 16;
    h
}

/// Folds an IPv6 address (four native-endian words) into one word.
#[inline(always)]
pub const fn fold_v6(w: [u32; 4]) -> u32 {
    w[0] ^ w[1] ^ w[2] ^ w[3]
}

/// The hash word of an address, as `distribute` reads it from a packet: the address bytes
/// as a native-endian `u32`, IPv6 folded by [`fold_v6`]. User space (`baton search`, the
/// members' worker dispatch) hashes through this so it agrees with the kernel.
pub fn addr_word(ip: core::net::IpAddr) -> u32 {
    match ip {
        core::net::IpAddr::V4(a) => u32::from_ne_bytes(a.octets()),
        core::net::IpAddr::V6(a) => {
            let o = a.octets();
            let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            fold_v6([w(0), w(4), w(8), w(12)])
        }
    }
}

/// Hash of a flow key. `a`/`b` are the two address words (or one of them 0 in a single-address
/// mode), `pa`/`pb` the two ports (0 when ports are not part of the key). The result does not
/// depend on the order of the pairs, so both directions of a connection hash alike.
#[inline(always)]
pub const fn flow_hash(a: u32, b: u32, pa: u16, pb: u16) -> u32 {
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    let (plo, phi) = if pa < pb { (pa, pb) } else { (pb, pa) };
    let ports = (plo as u32) | ((phi as u32) << 16);
    let mut h = mix32(lo ^ HASH_SEED);
    h = mix32(h ^ hi);
    mix32(h ^ ports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symmetric() {
        for i in 0..1000u32 {
            let a = mix32(i);
            let b = mix32(i + 7919);
            assert_eq!(flow_hash(a, b, i as u16, 80), flow_hash(b, a, 80, i as u16));
        }
    }

    #[test]
    fn spreads_over_buckets() {
        // 64 × 64 host pairs, as in the lab, over 16 buckets: no bucket gets less than half
        // or more than double its share.
        let mut counts = [0u32; 16];
        for s in 1..=64u32 {
            for d in 1..=64u32 {
                let a = u32::from_ne_bytes([198, 18, 0, s as u8]);
                let b = u32::from_ne_bytes([198, 19, 0, d as u8]);
                counts[(flow_hash(a, b, 0, 0) & 15) as usize] += 1;
            }
        }
        let share = 64 * 64 / 16;
        for c in counts {
            assert!(c > share / 2 && c < share * 2, "{counts:?}");
        }
    }
}
