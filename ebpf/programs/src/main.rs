//! Baton's XDP programs: `distribute` (orchestrator uplinks), `egress` (orchestrator
//! downlinks) and `steer` (a member's data port → AF_XDP sockets).
#![no_std]
#![no_main]

mod distribute;
mod egress;
mod maps;
mod parse;
mod runtime;
mod steer;
