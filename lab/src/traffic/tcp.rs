//! TCP flows between lab hosts: bulk streams and long-lived paced sessions, every byte
//! checked on arrival, with stalls measured.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use super::{in_netns, io, join, socket::connect_from, stream::fill, TrafficError};

/// One TCP stream to run: from `client` (an address of `client_ns`) to `server:port`.
#[derive(Clone, Debug)]
pub struct TcpFlow {
    pub id: u64,
    pub client: IpAddr,
    pub server: IpAddr,
    pub port: u16,
    pub bytes: u64,
}

impl TcpFlow {
    /// `n` flows between the lab's hosts, `bytes` each, flow i on port `port + i` from
    /// 198.18.0.(1 + i mod 63) to 198.19.0.(1 + (i × `stride` + i / 63) mod 63): every
    /// client and server host in use, the pairs spread over the buckets.
    pub fn lab(n: u64, port: u16, bytes: u64, stride: u64) -> Vec<TcpFlow> {
        (0..n)
            .map(|i| TcpFlow {
                id: i,
                client: IpAddr::from([198, 18, 0, 1 + (i % 63) as u8]),
                server: IpAddr::from([198, 19, 0, 1 + ((i * stride + i / 63) % 63) as u8]),
                port: port + i as u16,
                bytes,
            })
            .collect()
    }
}

#[derive(Clone, Debug, Default)]
pub struct TcpReport {
    pub bytes: u64,
    pub elapsed: Duration,
    /// Longest time the receiver waited for data once the stream had started.
    pub longest_stall: Duration,
}

/// Progress counters shared with a caller that wants a live view.
#[derive(Debug, Default)]
pub struct Progress {
    pub bytes: AtomicU64,
}

/// Sends every flow's bytes from `client_ns` to listeners in `server_ns` and verifies each
/// byte on arrival. Fails on the first corrupt, reset or short stream, or after `timeout`.
// Its threads share `progress`: the caller hands over the Arc they clone.
#[allow(clippy::needless_pass_by_value)]
pub fn tcp_streams(
    client_ns: &str,
    server_ns: &str,
    flows: &[TcpFlow],
    timeout: Duration,
    progress: Arc<Progress>,
) -> Result<Vec<TcpReport>, TrafficError> {
    // Listeners first, so no connection is refused.
    let listeners = listen(server_ns, flows)?;
    let mut servers = Vec::new();
    for (f, l) in flows.iter().cloned().zip(listeners) {
        let progress = progress.clone();
        servers.push(std::thread::spawn(move || {
            receive(f, l, timeout, None, progress)
        }));
    }
    let mut clients = Vec::new();
    for f in flows.iter().cloned() {
        clients.push(in_netns(client_ns, move || send(f, timeout, None)));
    }
    for c in clients {
        join(c)?;
    }
    servers.into_iter().map(join).collect()
}

/// A listener in `server_ns` for each flow.
fn listen(server_ns: &str, flows: &[TcpFlow]) -> Result<Vec<TcpListener>, TrafficError> {
    flows
        .iter()
        .map(|f| {
            let addr = SocketAddr::new(f.server, f.port);
            join(in_netns(server_ns, move || {
                TcpListener::bind(addr).map_err(io(format!("listen on {addr}")))
            }))
        })
        .collect()
}

/// How a long-lived connection sends: `chunk` bytes every `gap`.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    pub chunk: usize,
    pub gap: Duration,
}

/// Like [`tcp_streams`], for long-lived paced connections, with one result per flow: a
/// connection is lost if it is reset, fails its byte check, or stalls for more than
/// `stall_limit`. All connections are open before the first byte is sent.
// Its threads share `progress`: the caller hands over the Arc they clone.
#[allow(clippy::needless_pass_by_value)]
pub fn tcp_sessions(
    client_ns: &str,
    server_ns: &str,
    flows: &[TcpFlow],
    pace: Pace,
    stall_limit: Duration,
    timeout: Duration,
    progress: Arc<Progress>,
) -> Result<Vec<Result<TcpReport, TrafficError>>, TrafficError> {
    let listeners = listen(server_ns, flows)?;
    let mut servers = Vec::new();
    for (f, l) in flows.iter().cloned().zip(listeners) {
        let progress = progress.clone();
        servers.push(
            std::thread::Builder::new()
                .stack_size(256 << 10)
                .spawn(move || receive(f, l, timeout, Some(stall_limit), progress))
                .map_err(io("thread"))?,
        );
    }
    let mut clients = Vec::new();
    for f in flows.iter().cloned() {
        // A sender whose connection is lost gives up once it stalls too.
        clients.push(in_netns(client_ns, move || {
            send(f, stall_limit, Some(pace))
        }));
    }
    let results = servers.into_iter().map(join).collect();
    // The receivers decide; senders only have to be gone.
    for c in clients {
        let _ = join(c);
    }
    Ok(results)
}

// A thread body: it owns what its thread uses for the thread's life.
#[allow(clippy::needless_pass_by_value)]
fn send(f: TcpFlow, timeout: Duration, pace: Option<Pace>) -> Result<(), TrafficError> {
    let sock = connect_from(f.client, SocketAddr::new(f.server, f.port), timeout)?;
    let mut sock = sock;
    sock.set_write_timeout(Some(timeout))
        .map_err(io("set timeout"))?;
    let mut buf = vec![0u8; pace.map_or(64 * 1024, |p| p.chunk.max(1))];
    let mut off = 0u64;
    let start = Instant::now();
    let mut round = 0u32;
    while off < f.bytes {
        let n = (f.bytes - off).min(buf.len() as u64) as usize;
        fill(f.id, off, &mut buf[..n]);
        sock.write_all(&buf[..n])
            .map_err(io(format!("stream {} send", f.id)))?;
        off += n as u64;
        if let Some(p) = pace {
            // Paced from the start, so a stall is caught up rather than stretched.
            round += 1;
            let due = start + p.gap * round;
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
    }
    sock.shutdown(std::net::Shutdown::Write)
        .map_err(io("shutdown"))?;
    // Wait for the receiver to close, so the last bytes are acknowledged end to end.
    let _ = sock.set_read_timeout(Some(timeout));
    let _ = sock.read(&mut [0u8; 1]);
    Ok(())
}

// A thread body: it owns what its thread uses for the thread's life.
#[allow(clippy::needless_pass_by_value)]
fn receive(
    f: TcpFlow,
    l: TcpListener,
    timeout: Duration,
    stall_limit: Option<Duration>,
    progress: Arc<Progress>,
) -> Result<TcpReport, TrafficError> {
    l.set_nonblocking(false).map_err(io("listener"))?;
    let start = Instant::now();
    let (mut s, _) = accept_within(&l, timeout)?;
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(io("set timeout"))?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut expect = vec![0u8; 64 * 1024];
    let mut got = 0u64;
    let mut last = Instant::now();
    let mut longest = Duration::ZERO;
    loop {
        if start.elapsed() > timeout {
            return Err(TrafficError::Short {
                id: f.id,
                got,
                want: f.bytes,
            });
        }
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                fill(f.id, got, &mut expect[..n]);
                if buf[..n] != expect[..n] {
                    let i = (0..n).find(|&i| buf[i] != expect[i]).unwrap_or(0);
                    return Err(TrafficError::Corrupt {
                        id: f.id,
                        offset: got + i as u64,
                    });
                }
                got += n as u64;
                progress.bytes.fetch_add(n as u64, Ordering::Relaxed);
                longest = longest.max(last.elapsed());
                last = Instant::now();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if stall_limit.is_some_and(|limit| last.elapsed() > limit) {
                    return Err(TrafficError::Stalled {
                        id: f.id,
                        got,
                        limit: stall_limit.unwrap_or_default(),
                    });
                }
            }
            Err(e) => return Err(io(format!("stream {} receive", f.id))(e)),
        }
    }
    if got != f.bytes {
        return Err(TrafficError::Short {
            id: f.id,
            got,
            want: f.bytes,
        });
    }
    Ok(TcpReport {
        bytes: got,
        elapsed: start.elapsed(),
        longest_stall: longest,
    })
}

fn accept_within(
    l: &TcpListener,
    timeout: Duration,
) -> Result<(TcpStream, SocketAddr), TrafficError> {
    l.set_nonblocking(true).map_err(io("listener"))?;
    let deadline = Instant::now() + timeout;
    loop {
        match l.accept() {
            Ok((s, a)) => {
                s.set_nonblocking(false).map_err(io("accept"))?;
                return Ok((s, a));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(io("accept")(e)),
        }
    }
}
