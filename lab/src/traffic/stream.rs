//! The content of every test stream: a byte sequence both ends compute from the stream's
//! id and offset, so the receiver checks each byte without a copy of what was sent.

/// The byte at `offset` of stream `id`: cheap to compute on both ends, different for every
/// stream and position, so a reordered, duplicated or corrupted byte is caught.
#[inline]
pub fn stream_byte(id: u64, offset: u64) -> u8 {
    (stream_word(id, offset / 8) >> ((offset % 8) * 8)) as u8
}

#[inline]
fn stream_word(id: u64, index: u64) -> u64 {
    let x = index.wrapping_add(id.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    (x ^ (x >> 31)).wrapping_mul(0xbf58_476d_1ce4_e5b9)
}

/// Writes bytes `offset..offset + buf.len()` of stream `id`, a word at a time.
pub(super) fn fill(id: u64, offset: u64, buf: &mut [u8]) {
    let mut i = 0usize;
    while i < buf.len() {
        let at = offset + i as u64;
        let word = stream_word(id, at / 8).to_le_bytes();
        let skip = (at % 8) as usize;
        let n = (8 - skip).min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&word[skip..skip + n]);
        i += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_differ_and_are_reproducible() {
        let a: Vec<u8> = (0..64).map(|o| stream_byte(1, o)).collect();
        let b: Vec<u8> = (0..64).map(|o| stream_byte(2, o)).collect();
        assert_ne!(a, b);
        let mut c = vec![0u8; 64];
        fill(1, 0, &mut c);
        assert_eq!(a, c);
        // Any starting offset and length agree with the byte function.
        let mut d = vec![0u8; 21];
        fill(1, 5, &mut d);
        assert_eq!(&d[..], &a[5..26]);
        // Not periodic at the 8-byte word level.
        assert_ne!(a[..8], a[8..16]);
    }
}
