//! `baton conns`: the connection generator between lab hosts. A server in one namespace,
//! clients in another opening short TCP connections (connect, send a verified stream,
//! close), a number of them at a time; it reports the rate, the failures by kind and the
//! latencies, and fails if any connection did not complete.

use std::{net::IpAddr, time::Duration};

use anyhow::bail;
use baton_lab::{
    topology::{HOSTS_PER_SIDE, NS_EXT, NS_INT},
    traffic::{
        connections, ConnReport, ConnSpec, CONN_BYTES_MAX, CONN_CONCURRENCY_MAX, CONN_COUNT_MAX,
    },
};
use clap::Args;

#[derive(Args)]
pub struct ConnsArgs {
    /// Namespace the clients connect from.
    #[arg(long, default_value = NS_EXT)]
    from: String,
    /// Namespace the server runs in.
    #[arg(long, default_value = NS_INT)]
    to: String,
    /// Address the server listens on (an address of `--to`; default: the lab's first
    /// internal host address).
    #[arg(long, default_value = "198.19.0.1")]
    server: IpAddr,
    /// Source addresses, used in turn (addresses of `--from`; default: every lab external
    /// host address of the server's family).
    #[arg(long, value_delimiter = ',')]
    source: Vec<IpAddr>,
    /// The server's TCP port.
    #[arg(long, default_value_t = 41_000)]
    port: u16,
    /// Connections to open in all (bounded: at most 10,000,000).
    #[arg(long, default_value_t = 1_000)]
    count: u64,
    /// Connections open at once (1..=4096).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Bytes each connection sends, every one checked by the server.
    #[arg(long, default_value_t = 1_024)]
    bytes: u64,
    /// A connection without progress for this long is stalled and given up.
    #[arg(long, default_value_t = 5_000)]
    stall_ms: u64,
    /// No connection starts after this many seconds.
    #[arg(long, default_value_t = 60)]
    timeout_s: u64,
    /// Print one JSON document.
    #[arg(long)]
    json: bool,
}

/// The lab's external host addresses of `server`'s family.
fn lab_sources(server: IpAddr) -> Vec<IpAddr> {
    (1..=HOSTS_PER_SIDE)
        .map(|h| match server {
            IpAddr::V4(_) => IpAddr::from([198, 18, 0, h]),
            IpAddr::V6(_) => IpAddr::from([0x2001, 0xdb8, 0x18, 0, 0, 0, 0, u16::from(h)]),
        })
        .collect()
}

/// The spec, with every bound checked here so the errors name the flags.
fn spec(a: &ConnsArgs) -> anyhow::Result<ConnSpec> {
    if !(1..=CONN_COUNT_MAX).contains(&a.count) {
        bail!(
            "--count must be 1..={CONN_COUNT_MAX} (every load is bounded), not {}",
            a.count
        );
    }
    if !(1..=CONN_CONCURRENCY_MAX).contains(&a.concurrency) {
        bail!(
            "--concurrency must be 1..={CONN_CONCURRENCY_MAX}, not {}",
            a.concurrency
        );
    }
    if a.bytes > CONN_BYTES_MAX {
        bail!("--bytes must be at most {CONN_BYTES_MAX}, not {}", a.bytes);
    }
    if !(1..=600_000).contains(&a.stall_ms) {
        bail!("--stall-ms must be 1..=600000, not {}", a.stall_ms);
    }
    if !(1..=3_600).contains(&a.timeout_s) {
        bail!(
            "--timeout-s must be 1..=3600 (every load is bounded), not {}",
            a.timeout_s
        );
    }
    if a.port == 0 {
        bail!("--port must be 1..=65535");
    }
    let clients = if a.source.is_empty() {
        lab_sources(a.server)
    } else {
        a.source.clone()
    };
    if let Some(c) = clients.iter().find(|c| c.is_ipv4() != a.server.is_ipv4()) {
        bail!(
            "--source {c} and --server {} are of different address families",
            a.server
        );
    }
    Ok(ConnSpec {
        clients,
        server: a.server,
        port: a.port,
        count: a.count,
        concurrency: a.concurrency,
        bytes: a.bytes,
        stall_limit: Duration::from_millis(a.stall_ms),
        timeout: Duration::from_secs(a.timeout_s),
    })
}

fn summary(r: &ConnReport) -> String {
    format!(
        "{:.0} conn/s: {}/{} completed ({} requested), {} resets, {} stalls, {} corrupt, \
         {} other failures; connect p50 {:.2} ms p99 {:.2} ms; longest stall {:.1} ms",
        r.conn_per_s,
        r.completed,
        r.attempted,
        r.requested,
        r.reset,
        r.stalled,
        r.corrupt,
        r.failed,
        r.connect_ms.p50,
        r.connect_ms.p99,
        r.longest_stall_ms
    )
}

pub fn run(a: &ConnsArgs) -> anyhow::Result<()> {
    let spec = spec(a)?;
    let r = connections(&a.from, &a.to, &spec)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!("{}", summary(&r));
    }
    if !r.ok() {
        for e in &r.errors {
            eprintln!("  {e}");
        }
        bail!("{}", r.failures());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: ConnsArgs,
    }

    fn parse(args: &[&str]) -> ConnsArgs {
        T::try_parse_from(std::iter::once("conns").chain(args.iter().copied()))
            .expect("parses")
            .a
    }

    #[test]
    fn defaults_are_the_lab_and_bounded() {
        let s = spec(&parse(&[])).unwrap();
        assert_eq!(s.server, IpAddr::from([198, 19, 0, 1]));
        assert_eq!(s.clients.len(), HOSTS_PER_SIDE as usize);
        assert!(s.check().is_ok());
        let s = spec(&parse(&["--server", "2001:db8:19::1"])).unwrap();
        assert!(s.clients.iter().all(IpAddr::is_ipv6));
    }

    #[test]
    fn bad_arguments_name_the_flag() {
        for (args, says) in [
            (&["--count", "0"][..], "--count"),
            (&["--count", "10000001"][..], "--count"),
            (&["--concurrency", "0"][..], "--concurrency"),
            (&["--concurrency", "4097"][..], "--concurrency"),
            (&["--stall-ms", "0"][..], "--stall-ms"),
            (&["--timeout-s", "0"][..], "--timeout-s"),
            (&["--port", "0"][..], "--port"),
            (&["--source", "2001:db8:18::1"][..], "families"),
        ] {
            let e = spec(&parse(args)).expect_err("refused").to_string();
            assert!(e.contains(says), "{args:?}: {e}");
        }
    }
}
