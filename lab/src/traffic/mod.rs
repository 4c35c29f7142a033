//! Real traffic between lab hosts, from kernel sockets in their namespaces: TCP streams
//! whose every byte is checked at the far end (`tcp`), short connections opened and closed
//! at a rate (the connection generator, `conns`), and UDP datagrams counted on arrival
//! (`udp`). Used by the demo, the tests, the benchmarks and `baton conns`. Every loop is
//! bounded in bytes, count and time.

mod conns;
mod netns;
mod socket;
mod stream;
mod tcp;
mod udp;

use std::time::Duration;

use thiserror::Error;

pub use conns::{
    connections, ConnReport, ConnSpec, Percentiles, CONN_BYTES_MAX, CONN_CONCURRENCY_MAX,
    CONN_COUNT_MAX,
};
pub use netns::{enter_netns, in_netns, join};
pub use stream::stream_byte;
pub use tcp::{tcp_sessions, tcp_streams, Pace, Progress, TcpFlow, TcpReport};
pub use udp::{udp_flows, udp_pairs};

#[derive(Debug, Error)]
pub enum TrafficError {
    #[error("cannot enter network namespace {0}: {1}")]
    Netns(String, std::io::Error),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("stream {id}: byte {offset} differs from what was sent")]
    Corrupt { id: u64, offset: u64 },
    #[error("stream {id}: {got} of {want} bytes arrived")]
    Short { id: u64, got: u64, want: u64 },
    #[error("stream {id}: stalled for more than {limit:?} after {got} bytes")]
    Stalled { id: u64, got: u64, limit: Duration },
    #[error("a traffic thread panicked")]
    Panicked,
    #[error("bad traffic request: {0}")]
    BadSpec(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TrafficError {
    let what = what.into();
    move |source| TrafficError::Io { what, source }
}
