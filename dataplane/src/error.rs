//! Errors of the data plane, each with what the user needs to fix it.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum LoadError {
    #[error("loading XDP programs needs root (CAP_BPF and CAP_NET_ADMIN): run as root")]
    NotRoot,
    #[error("interface {0:?} does not exist in this network namespace (check `ip link`)")]
    NoSuchInterface(String),
    #[error(
        "the eBPF object has no program {0:?} (stale build? run `cargo clean -p baton-dataplane`)"
    )]
    MissingProgram(&'static str),
    #[error("the eBPF object has no map {0:?} of the expected type")]
    MissingMap(&'static str),
    #[error("could not load the eBPF object (kernel without BPF/BTF support, or not root?): {0}")]
    Ebpf(#[from] aya::EbpfError),
    #[error("could not load XDP program {0}: {1}")]
    Program(&'static str, #[source] aya::programs::ProgramError),
    #[error(
        "could not attach XDP program {prog} to {iface} (does the driver support XDP? is another \
         program attached?): {source}"
    )]
    Attach {
        prog: &'static str,
        iface: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("map operation failed: {0}")]
    Map(#[from] aya::maps::MapError),
    #[error("devmap operation failed: {0}")]
    XdpMap(#[from] aya::maps::xdp::XdpMapError),
    #[error("pinning under {path}: {detail} (is a bpf filesystem mounted there?)")]
    Pin { path: String, detail: String },
    #[error("invalid configuration: {0}")]
    Config(String),
}

#[derive(Debug, Error)]
pub enum PortError {
    #[error("{0}")]
    Load(#[from] LoadError),
    #[error(
        "could not create the AF_XDP socket on {iface} queue {queue} (kernel without \
         CONFIG_XDP_SOCKETS, or queue out of range?): {detail}"
    )]
    Socket {
        iface: String,
        queue: u32,
        detail: String,
    },
    #[error("could not create the UMEM ({frames} frames of {frame_size} bytes): {detail}")]
    Umem {
        frames: u32,
        frame_size: u32,
        detail: String,
    },
    #[error("invalid AF_XDP configuration: {0}")]
    Config(String),
    #[error("AF_XDP I/O failed: {0}")]
    Io(#[from] std::io::Error),
}
