//! Typed views of the IP headers a member reads and writes: a view wraps the packet's
//! bytes and names each field's offset (as smoltcp's `wire` module does), so no other
//! module indexes a header by hand.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use baton_common::net::{IPV4_HLEN, IPV6_HLEN};

/// Why a header cannot be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    /// Shorter than the header it claims.
    Truncated,
    /// A version or header length that cannot be.
    Malformed,
}

mod v4 {
    use std::ops::Range;
    pub const VER_IHL: usize = 0;
    pub const FLAGS_FRAG: Range<usize> = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Range<usize> = 10..12;
    pub const SRC: Range<usize> = 12..16;
    pub const DST: Range<usize> = 16..20;
}

mod v6 {
    use std::ops::Range;
    pub const VER_TC: usize = 0;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC: Range<usize> = 8..24;
    pub const DST: Range<usize> = 24..40;
}

/// An IPv4 header and what follows it.
#[derive(Clone, Copy, Debug)]
pub struct Ipv4Packet<T> {
    buf: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// A view without any check: every accessor may then panic on a short buffer.
    pub fn new_unchecked(buf: T) -> Self {
        Self { buf }
    }

    /// A view of a complete IPv4 header (options included) of version 4.
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        let p = Self::new_unchecked(buf);
        if p.buf.as_ref().len() < IPV4_HLEN {
            return Err(WireError::Truncated);
        }
        if p.version() != 4 {
            return Err(WireError::Malformed);
        }
        p.check_len()?;
        Ok(p)
    }

    /// The header is complete, whatever its version says.
    pub fn check_len(&self) -> Result<(), WireError> {
        let len = self.buf.as_ref().len();
        if len < IPV4_HLEN {
            return Err(WireError::Truncated);
        }
        if self.header_len() < IPV4_HLEN {
            return Err(WireError::Malformed);
        }
        if len < self.header_len() {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    pub fn version(&self) -> u8 {
        self.buf.as_ref()[v4::VER_IHL] >> 4
    }

    /// Header length in bytes, from the IHL field.
    pub fn header_len(&self) -> usize {
        usize::from(self.buf.as_ref()[v4::VER_IHL] & 0x0f) * 4
    }

    /// Fragment offset (in 8-byte units): non-zero for every fragment but the first.
    pub fn frag_offset(&self) -> u16 {
        be16(self.buf.as_ref(), v4::FLAGS_FRAG.start) & 0x1fff
    }

    pub fn ttl(&self) -> u8 {
        self.buf.as_ref()[v4::TTL]
    }

    pub fn protocol(&self) -> u8 {
        self.buf.as_ref()[v4::PROTOCOL]
    }

    pub fn src_addr(&self) -> Ipv4Addr {
        addr4(&self.buf.as_ref()[v4::SRC])
    }

    pub fn dst_addr(&self) -> Ipv4Addr {
        addr4(&self.buf.as_ref()[v4::DST])
    }

    /// The bytes after the header (empty when the header claims more than there is).
    pub fn payload(&self) -> &[u8] {
        let b = self.buf.as_ref();
        &b[self.header_len().min(b.len())..]
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.buf.as_ref()
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    /// Decrements the TTL and updates the header checksum incrementally (RFC 1624).
    pub fn decrement_ttl(&mut self) {
        let ip = self.buf.as_mut();
        let old = be16(ip, v4::TTL);
        ip[v4::TTL] -= 1;
        let new = be16(ip, v4::TTL);
        let hc = be16(ip, v4::CHECKSUM.start);
        let mut sum = u32::from(!hc) + u32::from(!old) + u32::from(new);
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        ip[v4::CHECKSUM].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    }
}

/// An IPv6 header and what follows it.
#[derive(Clone, Copy, Debug)]
pub struct Ipv6Packet<T> {
    buf: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    /// A view without any check: every accessor may then panic on a short buffer.
    pub fn new_unchecked(buf: T) -> Self {
        Self { buf }
    }

    /// A view of a complete fixed IPv6 header of version 6.
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        let p = Self::new_unchecked(buf);
        p.check_len()?;
        if p.version() != 6 {
            return Err(WireError::Malformed);
        }
        Ok(p)
    }

    /// The fixed header is complete, whatever its version says.
    pub fn check_len(&self) -> Result<(), WireError> {
        if self.buf.as_ref().len() < IPV6_HLEN {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    pub fn version(&self) -> u8 {
        self.buf.as_ref()[v6::VER_TC] >> 4
    }

    /// The fixed header's next header (the first extension header's kind, or the L4
    /// protocol).
    pub fn next_header(&self) -> u8 {
        self.buf.as_ref()[v6::NEXT_HEADER]
    }

    pub fn hop_limit(&self) -> u8 {
        self.buf.as_ref()[v6::HOP_LIMIT]
    }

    pub fn src_addr(&self) -> Ipv6Addr {
        addr6(&self.buf.as_ref()[v6::SRC])
    }

    pub fn dst_addr(&self) -> Ipv6Addr {
        addr6(&self.buf.as_ref()[v6::DST])
    }

    /// The bytes after the fixed header.
    pub fn payload(&self) -> &[u8] {
        &self.buf.as_ref()[IPV6_HLEN..]
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.buf.as_ref()
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    /// IPv6 has no header checksum: the hop limit alone changes.
    pub fn decrement_hop_limit(&mut self) {
        self.buf.as_mut()[v6::HOP_LIMIT] -= 1;
    }
}

/// An IPv4 or IPv6 packet, for what both versions do alike (routing, TTL, ICMP errors).
#[derive(Clone, Copy, Debug)]
pub enum IpPacket<T> {
    V4(Ipv4Packet<T>),
    V6(Ipv6Packet<T>),
}

impl<T: AsRef<[u8]>> IpPacket<T> {
    pub fn src_addr(&self) -> IpAddr {
        match self {
            Self::V4(p) => p.src_addr().into(),
            Self::V6(p) => p.src_addr().into(),
        }
    }

    pub fn dst_addr(&self) -> IpAddr {
        match self {
            Self::V4(p) => p.dst_addr().into(),
            Self::V6(p) => p.dst_addr().into(),
        }
    }

    /// TTL (IPv4) or hop limit (IPv6).
    pub fn hop_limit(&self) -> u8 {
        match self {
            Self::V4(p) => p.ttl(),
            Self::V6(p) => p.hop_limit(),
        }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> IpPacket<T> {
    pub fn decrement_hop_limit(&mut self) {
        match self {
            Self::V4(p) => p.decrement_ttl(),
            Self::V6(p) => p.decrement_hop_limit(),
        }
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn addr4(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

fn addr6(b: &[u8]) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a.copy_from_slice(b);
    Ipv6Addr::from(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_checks_follow_the_header() {
        let mut h = [0u8; 24];
        h[0] = 0x46; // IHL 6: 24 bytes
        assert!(Ipv4Packet::new_checked(&h[..]).is_ok());
        assert_eq!(
            Ipv4Packet::new_checked(&h[..20]).unwrap_err(),
            WireError::Truncated
        );
        assert_eq!(
            Ipv4Packet::new_checked(&h[..19]).unwrap_err(),
            WireError::Truncated
        );
        h[0] = 0x43;
        assert_eq!(
            Ipv4Packet::new_checked(&h[..]).unwrap_err(),
            WireError::Malformed
        );
        h[0] = 0x65;
        assert_eq!(
            Ipv4Packet::new_checked(&h[..]).unwrap_err(),
            WireError::Malformed
        );
        assert!(Ipv4Packet::new_unchecked(&h[..]).check_len().is_ok());
    }

    #[test]
    fn incremental_ttl_checksum_matches_full_recompute() {
        for ttl in [2u8, 64, 128, 255] {
            for id in [0u16, 1, 0xffff, 0x1234] {
                let mut h = etherparse::Ipv4Header::new(
                    10,
                    ttl,
                    etherparse::IpNumber::UDP,
                    [198, 18, 0, 1],
                    [198, 19, 0, 7],
                )
                .unwrap();
                h.identification = id;
                h.header_checksum = h.calc_header_checksum();
                let mut b = h.to_bytes().to_vec();
                Ipv4Packet::new_checked(&mut b[..]).unwrap().decrement_ttl();
                let (d, _) = etherparse::Ipv4Header::from_slice(&b).unwrap();
                assert_eq!(d.time_to_live, ttl - 1);
                assert_eq!(d.header_checksum, d.calc_header_checksum());
            }
        }
    }

    #[test]
    fn ipv6_fields() {
        let mut h = [0u8; 40];
        h[0] = 0x60;
        h[6] = 17;
        h[7] = 9;
        h[23] = 1;
        h[39] = 2;
        let mut p = Ipv6Packet::new_checked(&mut h[..]).unwrap();
        assert_eq!(p.next_header(), 17);
        assert_eq!(p.src_addr(), "::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(p.dst_addr(), "::2".parse::<Ipv6Addr>().unwrap());
        p.decrement_hop_limit();
        assert_eq!(p.hop_limit(), 8);
        assert_eq!(
            Ipv6Packet::new_checked(&h[..39]).unwrap_err(),
            WireError::Truncated
        );
        h[0] = 0x40;
        assert_eq!(
            Ipv6Packet::new_checked(&h[..]).unwrap_err(),
            WireError::Malformed
        );
    }
}
