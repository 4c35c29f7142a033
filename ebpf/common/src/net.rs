//! Protocol numbers and header lengths of the frames Baton reads and writes, for the eBPF
//! programs and user space alike: each written here once.

/// EtherTypes.
pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
/// HyperSync frames between members' sync ports (IEEE 802 local experimental EtherType 1).
pub const ETH_P_SYNC: u16 = 0x88b5;

/// IP protocol numbers (IPv4 protocol, IPv6 next header).
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_SCTP: u8 = 132;

/// Header lengths in bytes (IPv4: without options).
pub const ETH_HLEN: usize = 14;
pub const VLAN_HLEN: usize = 4;
pub const IPV4_HLEN: usize = 20;
pub const IPV6_HLEN: usize = 40;
pub const ARP_LEN: usize = 28;
/// An ICMP/ICMPv6 header up to its body (type, code, checksum, 4 bytes of rest).
pub const ICMP_HLEN: usize = 8;
