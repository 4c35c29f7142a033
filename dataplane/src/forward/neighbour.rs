//! The neighbour cache: next hops' MACs learned from ARP/ND, solicitations sent as the
//! group's gateway, and the frames held (bounded) until an answer comes or the tries run
//! out.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use ahash::AHashMap;

use super::route::{side_of, Side};
use crate::{
    frame,
    verdict::{DropReason, Verdict},
};

/// Limits of the neighbour table.
#[derive(Clone, Copy, Debug)]
pub struct NeighbourLimits {
    pub entries: usize,
    /// Frames held per unresolved neighbour.
    pub pending_per_entry: usize,
    /// Interval between solicitations, and how many before giving up.
    pub retry: Duration,
    pub tries: u8,
}

impl Default for NeighbourLimits {
    fn default() -> Self {
        Self {
            entries: 65536,
            pending_per_entry: 16,
            retry: Duration::from_millis(500),
            tries: 6,
        }
    }
}

struct Neighbour {
    mac: Option<[u8; 6]>,
    side: usize,
    asked: Instant,
    tries: u8,
    pending: Vec<Vec<u8>>,
}

pub struct Neighbours {
    table: AHashMap<IpAddr, Neighbour>,
    pub limits: NeighbourLimits,
}

impl Neighbours {
    pub fn new(limits: NeighbourLimits) -> Self {
        Self {
            table: AHashMap::new(),
            limits,
        }
    }

    /// The MAC a neighbour resolved to, if it has.
    pub fn mac(&self, ip: IpAddr) -> Option<[u8; 6]> {
        self.table.get(&ip).and_then(|n| n.mac)
    }

    /// A resolution for `ip` is under way or done.
    pub fn knows(&self, ip: IpAddr) -> bool {
        self.table.contains_key(&ip)
    }

    /// Resolved neighbours, to seed a new worker.
    pub fn resolved(&self) -> Vec<(IpAddr, [u8; 6])> {
        self.table
            .iter()
            .filter_map(|(ip, n)| n.mac.map(|m| (*ip, m)))
            .collect()
    }

    /// Records that `ip` is at `mac` (only for addresses on one of our sides) and releases
    /// the frames that waited for it.
    pub fn learn(&mut self, sides: &[Side], ip: IpAddr, mac: [u8; 6], out: &mut Vec<Vec<u8>>) {
        let Some(side) = side_of(sides, ip) else {
            return;
        };
        if mac[0] & 1 != 0 {
            return;
        }
        let vmac = sides[side].vmac;
        let room = self.table.len() < self.limits.entries;
        match self.table.get_mut(&ip) {
            Some(n) => {
                n.mac = Some(mac);
                n.side = side;
                for mut p in n.pending.drain(..) {
                    frame::set_macs(&mut p, mac, vmac);
                    out.push(p);
                }
            }
            None if room => {
                self.table.insert(
                    ip,
                    Neighbour {
                        mac: Some(mac),
                        side,
                        asked: Instant::now(),
                        tries: 0,
                        pending: Vec::new(),
                    },
                );
            }
            None => {}
        }
    }

    /// Addresses `f` to `next_hop` on `side`, or holds it (asking for the neighbour first
    /// if nobody has yet).
    pub fn send(
        &mut self,
        sides: &[Side],
        f: &mut [u8],
        side: usize,
        next_hop: IpAddr,
        now: Instant,
        out: &mut Vec<Vec<u8>>,
    ) -> Verdict {
        let vmac = sides[side].vmac;
        let pending_max = self.limits.pending_per_entry;
        if let Some(n) = self.table.get_mut(&next_hop) {
            if let Some(mac) = n.mac {
                frame::set_macs(f, mac, vmac);
                return Verdict::Forward;
            }
            if n.pending.len() >= pending_max {
                return Verdict::Drop(DropReason::NeighbourQueueFull);
            }
            n.pending.push(f.to_vec());
            return Verdict::Held;
        }
        if self.table.len() >= self.limits.entries {
            return Verdict::Drop(DropReason::NeighbourQueueFull);
        }
        if let Some(s) = solicitation(&sides[side], next_hop) {
            out.push(s);
        }
        self.table.insert(
            next_hop,
            Neighbour {
                mac: None,
                side,
                asked: now,
                tries: 1,
                pending: vec![f.to_vec()],
            },
        );
        Verdict::Held
    }

    /// Asks again for neighbours still unresolved, and gives up after the configured
    /// tries; returns how many held frames were dropped with them.
    pub fn retry(&mut self, sides: &[Side], now: Instant, out: &mut Vec<Vec<u8>>) -> u64 {
        let mut again = Vec::new();
        let mut dropped = 0u64;
        let limits = self.limits;
        self.table.retain(|ip, n| {
            if n.mac.is_some() || now.duration_since(n.asked) < limits.retry {
                return true;
            }
            if n.tries >= limits.tries {
                dropped += n.pending.len() as u64;
                return false;
            }
            n.tries += 1;
            n.asked = now;
            again.push((n.side, *ip));
            true
        });
        for (side, ip) in again {
            if let Some(s) = solicitation(&sides[side], ip) {
                out.push(s);
            }
        }
        dropped
    }
}

/// An ARP request or neighbour solicitation for `ip`, from the side's gateway address.
fn solicitation(s: &Side, ip: IpAddr) -> Option<Vec<u8>> {
    match ip {
        IpAddr::V4(t) => s.gw_v4.map(|gw| frame::arp_request(s.vmac, gw, t)),
        IpAddr::V6(t) => s
            .gw_v6
            .map(|gw| frame::neighbour_solicitation(s.vmac, gw, t)),
    }
}
