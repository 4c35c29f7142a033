//! Map names, sizes and the `#[repr(C)]` types stored in them.

use core::mem::size_of;

/// Map names: the eBPF side declares statics with these names, user space looks them up.
pub mod names {
    pub const BUCKETS: &str = "BUCKETS";
    pub const GROUPS: &str = "GROUPS";
    pub const UPLINK_SLOT: &str = "UPLINK_SLOT";
    pub const UPLINKS: &str = "UPLINKS";
    pub const DOWNLINKS: &str = "DOWNLINKS";
    pub const MEMBER_PORTS: &str = "MEMBER_PORTS";
    pub const MEMBER_BCAST: &str = "MEMBER_BCAST";
    pub const UPLINK_PORTS: &str = "UPLINK_PORTS";
    pub const MACS: &str = "MACS";
    pub const MEMBER_STATS: &str = "MEMBER_STATS";
    pub const UPLINK_STATS: &str = "UPLINK_STATS";
    pub const EVENTS: &str = "EVENTS";
    pub const XSKS: &str = "XSKS";
    pub const STEER_STATS: &str = "STEER_STATS";
}

/// Program names (the `#[xdp]` functions).
pub mod programs {
    pub const DISTRIBUTE: &str = "distribute";
    pub const EGRESS: &str = "egress";
    pub const STEER: &str = "steer";
}

/// Security groups one orchestrator serves.
pub const GROUPS_MAX: u32 = 8;
/// Largest bucket table of one group (B is a power of two up to this).
pub const BUCKETS_PER_GROUP_MAX: u32 = 16384;
/// The bucket map holds two tables (see [`GroupConf::table`]) for every group.
pub const BUCKETS_ENTRIES: u32 = 2 * GROUPS_MAX * BUCKETS_PER_GROUP_MAX;
/// Member ids are 1..=MEMBER_ID_MAX, unique per orchestrator; 0 means "none".
pub const MEMBER_ID_MAX: u32 = 63;
/// Size of the maps indexed by member id.
pub const MEMBER_SLOTS: u32 = MEMBER_ID_MAX + 1;
/// Uplinks one orchestrator serves; [`UplinkConf::slot`] indexes their settings and
/// counters.
pub const UPLINKS_MAX: u32 = 32;
/// Interfaces are looked up by ifindex in arrays (an inlined array lookup costs a couple of
/// nanoseconds, a hash lookup ten or more); ports must have an ifindex below this.
pub const IFINDEX_MAX: u32 = 65536;
/// Learned MAC addresses (LRU).
pub const MACS_MAX: u32 = 65536;
/// AF_XDP sockets per member data port (one per queue).
pub const XSKS_MAX: u32 = 64;

/// Index into the bucket map of bucket `bucket` of group `group` in table `table` (0 or 1).
#[inline(always)]
pub const fn bucket_index(table: u32, group: u32, bucket: u32) -> u32 {
    ((table & 1) * GROUPS_MAX + group) * BUCKETS_PER_GROUP_MAX + bucket
}

/// One entry of the bucket table: member ids, 0 for none.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    pub active: u32,
    pub backup: u32,
}
const _: () = assert!(size_of::<Bucket>() == 8);

/// Which addresses (and optionally ports) of a packet make its flow key on an uplink.
pub mod key {
    /// Both addresses, order-independent (Maestro's *general* mode).
    pub const BOTH: u32 = 0;
    /// Source address only (*network* mode: external uplinks in auto-topology).
    pub const SRC: u32 = 1;
    /// Destination address only (*user* mode: internal uplinks in auto-topology).
    pub const DST: u32 = 2;
    /// Flag: add the L4 ports (TCP, UDP, SCTP) to the key.
    pub const F_PORTS: u32 = 1 << 8;
}

/// Uplink sides.
pub mod side {
    pub const EXTERNAL: u32 = 0;
    pub const INTERNAL: u32 = 1;
}

/// Per-group settings.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupConf {
    /// Which of the two bucket tables is live. User space writes the other one, then flips
    /// this word: one store, so every CPU sees either the old table or the new one.
    pub table: u32,
    /// B - 1 (B a power of two).
    pub mask: u32,
    /// Uplink per side that broadcasts and unknown destinations from members go to.
    pub flood_ifindex: [u32; 2],
    /// Virtual MAC of each side; a member's frame leaves on the side whose MAC is its source.
    pub vmac: [[u8; 6]; 2],
    pub _pad: [u8; 4],
}
const _: () = assert!(size_of::<GroupConf>() == 32);

/// Per-uplink settings, keyed by ifindex.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UplinkConf {
    pub group: u32,
    /// [`side`] constant.
    pub side: u32,
    /// [`key`] constant, optionally with [`key::F_PORTS`].
    pub key: u32,
    /// Index into the uplink counters.
    pub slot: u32,
    /// Gateway IPv4 address the group answers ARP for on this uplink (0.0.0.0: none).
    pub gw_v4: [u8; 4],
    /// Gateway IPv6 address the group answers neighbour solicitations for (:: none).
    pub gw_v6: [u8; 16],
    pub vmac: [u8; 6],
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<UplinkConf>() == 44);

/// Per-downlink settings (orchestrator port towards one member), keyed by ifindex.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DownlinkConf {
    pub group: u32,
    pub member: u32,
}
const _: () = assert!(size_of::<DownlinkConf>() == 8);

/// Key of the learned-MAC table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MacKey {
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<MacKey>() == 8);

/// Per-member packet counters kept by the orchestrator (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemberStats {
    /// Frames sent to the member (uplink → downlink).
    pub to_member_packets: u64,
    pub to_member_bytes: u64,
    /// Frames the member sent back (downlink → uplink).
    pub from_member_packets: u64,
    pub from_member_bytes: u64,
}
const _: () = assert!(size_of::<MemberStats>() == 32);

/// Per-uplink counters (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UplinkStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}
const _: () = assert!(size_of::<UplinkStats>() == 32);

/// Counters of what the programs did with frames they did not simply forward; index of the
/// `EVENTS` per-CPU array. Drop reasons first.
pub mod event {
    /// Shorter than the headers it claims to have.
    pub const DROP_TRUNCATED: u32 = 0;
    /// A header field that cannot be (IPv4 IHL < 5, wrong IP version, too many headers).
    pub const DROP_MALFORMED: u32 = 1;
    /// An EtherType the group does not carry.
    pub const DROP_NOT_IP: u32 = 2;
    /// The bucket has no active member.
    pub const DROP_NO_MEMBER: u32 = 3;
    /// The frame came in on an interface that has no configuration.
    pub const DROP_UNKNOWN_PORT: u32 = 4;
    /// The redirect target was missing (member port gone).
    pub const DROP_REDIRECT: u32 = 5;
    /// ARP requests for a gateway address answered by `distribute`.
    pub const ARP_REPLIED: u32 = 6;
    /// Neighbour solicitations for a gateway address answered by `distribute`.
    pub const ND_REPLIED: u32 = 7;
    /// ARP/ND frames broadcast to the members.
    pub const L2_TO_MEMBERS: u32 = 8;
    /// Frames from members flooded to a side's uplink (broadcast or unknown destination).
    pub const L2_FLOODED: u32 = 9;
    /// IP fragments (hashed on addresses only).
    pub const FRAGMENTS: u32 = 10;
    /// ICMP errors hashed on the header they quote.
    pub const ICMP_ERRORS: u32 = 11;
    /// Frames from a member that is not Active (Down, detached, partitioned): isolated.
    pub const DROP_ISOLATED: u32 = 12;
    pub const COUNT: u32 = 13;

    /// Names as shown by `baton stat`, indexed like the constants.
    pub const NAMES: [&str; COUNT as usize] = [
        "drop_truncated",
        "drop_malformed",
        "drop_not_ip",
        "drop_no_member",
        "drop_unknown_port",
        "drop_redirect",
        "arp_replied",
        "nd_replied",
        "l2_to_members",
        "l2_flooded",
        "fragments",
        "icmp_errors",
        "drop_isolated",
    ];
}

/// `steer` counters (per CPU), index of `STEER_STATS`.
pub mod steer_stat {
    pub const TO_SOCKET: u32 = 0;
    pub const NO_SOCKET: u32 = 1;
    pub const COUNT: u32 = 2;
}

#[cfg(feature = "user")]
mod pod {
    use super::{Bucket, DownlinkConf, GroupConf, MacKey, MemberStats, UplinkConf, UplinkStats};
    // SAFETY: #[repr(C)] integers and byte arrays, no implicit padding: any bits are valid.
    unsafe impl aya::Pod for Bucket {}
    // SAFETY: #[repr(C)] integers and byte arrays, no implicit padding: any bits are valid.
    unsafe impl aya::Pod for GroupConf {}
    // SAFETY: #[repr(C)] integers and byte arrays, no implicit padding: any bits are valid.
    unsafe impl aya::Pod for UplinkConf {}
    // SAFETY: #[repr(C)] integers and byte arrays, no implicit padding: any bits are valid.
    unsafe impl aya::Pod for DownlinkConf {}
    // SAFETY: #[repr(C)] integers and byte arrays, no implicit padding: any bits are valid.
    unsafe impl aya::Pod for MacKey {}
    // SAFETY: #[repr(C)] integers and byte arrays, no implicit padding: any bits are valid.
    unsafe impl aya::Pod for MemberStats {}
    // SAFETY: #[repr(C)] integers and byte arrays, no implicit padding: any bits are valid.
    unsafe impl aya::Pod for UplinkStats {}
}
