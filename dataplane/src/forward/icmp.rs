//! The ICMP errors a member originates about packets it cannot forward (time exceeded),
//! one path for IPv4 and IPv6, rate-limited like the kernel's `icmp_ratelimit` so a flood
//! of expiring packets cannot turn into a flood of errors.

use std::time::Instant;

use super::{
    route::{side_of, Side},
    token_bucket::TokenBucket,
};
use crate::{frame, wire::IpPacket};

pub struct IcmpErrors {
    budget: TokenBucket,
}

impl IcmpErrors {
    pub fn new() -> Self {
        Self {
            budget: TokenBucket::new(1000.0, 100.0),
        }
    }

    /// Tells the sender of `ip` (received in `frame`) that its TTL or hop limit ran out:
    /// the error goes back to the previous hop, from the gateway of the sender's side.
    pub fn time_exceeded(
        &mut self,
        sides: &[Side],
        frame: &[u8],
        ip: &IpPacket<&[u8]>,
        now: Instant,
        out: &mut Vec<Vec<u8>>,
    ) {
        // The budget is spent even for a sender behind no side or a side without a
        // gateway of its family, as it always was.
        let back = side_of(sides, ip.src_addr());
        let (Some(back), true) = (back, self.budget.take(now)) else {
            return;
        };
        let side = &sides[back];
        let mut prev_hop = [0u8; 6];
        prev_hop.copy_from_slice(&frame[6..12]);
        let error = match ip {
            IpPacket::V4(p) => side
                .gw_v4
                .map(|gw| frame::icmp_time_exceeded(side.vmac, prev_hop, gw, p.as_bytes())),
            IpPacket::V6(p) => side
                .gw_v6
                .map(|gw| frame::icmpv6_time_exceeded(side.vmac, prev_hop, gw, p.as_bytes())),
        };
        out.extend(error);
    }
}
