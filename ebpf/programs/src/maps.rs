//! The maps of all three programs (one object, so the orchestrator's two programs share
//! them). Names and sizes come from `baton-common`.

use aya_ebpf::{
    macros::map,
    maps::{Array, DevMap, DevMapHash, LruHashMap, PerCpuArray, XskMap},
};
use baton_common::{
    event, steer_stat, Bucket, DownlinkConf, GroupConf, MacKey, MemberStats, UplinkConf,
    UplinkStats, BUCKETS_ENTRIES, GROUPS_MAX, IFINDEX_MAX, MACS_MAX, MEMBER_SLOTS, UPLINKS_MAX,
    XSKS_MAX,
};

#[map]
pub static BUCKETS: Array<Bucket> = Array::with_max_entries(BUCKETS_ENTRIES, 0);
#[map]
pub static GROUPS: Array<GroupConf> = Array::with_max_entries(GROUPS_MAX, 0);
/// Ifindex → uplink slot + 1 (0: not an uplink).
#[map]
pub static UPLINK_SLOT: Array<u32> = Array::with_max_entries(IFINDEX_MAX, 0);
/// Uplink slot → settings.
#[map]
pub static UPLINKS: Array<UplinkConf> = Array::with_max_entries(UPLINKS_MAX, 0);
/// Ifindex → downlink settings (member 0: not a downlink).
#[map]
pub static DOWNLINKS: Array<DownlinkConf> = Array::with_max_entries(IFINDEX_MAX, 0);
/// Member id → the orchestrator's downlink to it, for unicast. Buckets only ever point at
/// Active members, so an entry left for a member that went down is never used.
#[map]
pub static MEMBER_PORTS: DevMap = DevMap::with_max_entries(MEMBER_SLOTS, 0);
/// The Active members' downlinks only: a broadcast over it reaches exactly them.
#[map]
pub static MEMBER_BCAST: DevMapHash = DevMapHash::with_max_entries(MEMBER_SLOTS, 0);
/// Uplink ifindex → itself, for redirects from `egress`.
#[map]
pub static UPLINK_PORTS: DevMapHash = DevMapHash::with_max_entries(UPLINKS_MAX, 0);
/// MAC address → uplink ifindex it was last seen on.
#[map]
pub static MACS: LruHashMap<MacKey, u32> = LruHashMap::with_max_entries(MACS_MAX, 0);
#[map]
pub static MEMBER_STATS: PerCpuArray<MemberStats> = PerCpuArray::with_max_entries(MEMBER_SLOTS, 0);
#[map]
pub static UPLINK_STATS: PerCpuArray<UplinkStats> = PerCpuArray::with_max_entries(UPLINKS_MAX, 0);
#[map]
pub static EVENTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(event::COUNT, 0);
#[map]
pub static XSKS: XskMap = XskMap::with_max_entries(XSKS_MAX, 0);
#[map]
pub static STEER_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(steer_stat::COUNT, 0);

#[inline(always)]
pub fn count(map: &PerCpuArray<u64>, index: u32) {
    if let Some(c) = map.get_ptr_mut(index) {
        // Per-CPU slot: no other writer.
        unsafe { *c += 1 };
    }
}
