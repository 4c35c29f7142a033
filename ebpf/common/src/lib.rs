//! Types, names and functions shared by Baton's eBPF programs and user space.
//!
//! Every map key and value is `#[repr(C)]`, `Copy`, free of padding, `bool`, `Option` and
//! enums, and has its size asserted, so the kernel and user-space views cannot drift apart.
#![no_std]

pub mod hash;
pub mod maps;
pub mod net;
pub mod testbed;

pub use hash::{addr_word, flow_hash, fold_v6, mix32};
pub use maps::*;
