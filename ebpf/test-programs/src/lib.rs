//! Empty on the host: the programs are the `baton-test-ebpf` binary, built for
//! bpfel-unknown-none by `lab/build.rs`. This library exists so that the lab crate can
//! name this crate as a build-dependency and be rebuilt when it changes.
#![no_std]
