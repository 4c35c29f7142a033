//! Empty on the host: the programs are the `baton-ebpf` binary, built for
//! bpfel-unknown-none by `dataplane/build.rs`. This library exists so that the data plane
//! can name this crate as a build-dependency and be rebuilt when it changes.
#![no_std]
