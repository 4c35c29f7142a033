//! Real traffic between lab hosts, from kernel sockets in their namespaces: TCP streams
//! whose every byte is checked at the far end, and UDP datagrams counted on arrival.
//! Used by the demo, the tests and `baton traffic`. Every loop is bounded in bytes, count
//! and time.

use std::{
    fs::File,
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use thiserror::Error;

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
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TrafficError {
    let what = what.into();
    move |source| TrafficError::Io { what, source }
}

/// Moves the calling thread into network namespace `name` (as made by `ip netns add`).
/// Sockets it creates afterwards live there for good, whichever thread uses them.
pub fn enter_netns(name: &str) -> Result<(), TrafficError> {
    let f = File::open(Path::new("/run/netns").join(name))
        .map_err(|e| TrafficError::Netns(name.into(), e))?;
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(TrafficError::Netns(
            name.into(),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Runs `f` on a new thread inside namespace `ns`.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T, TrafficError> + Send + 'static,
) -> JoinHandle<Result<T, TrafficError>> {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter_netns(&ns)?;
        f()
    })
}

pub fn join<T>(h: JoinHandle<Result<T, TrafficError>>) -> Result<T, TrafficError> {
    h.join().map_err(|_| TrafficError::Panicked)?
}

/// The byte at `offset` of stream `id`: cheap to compute on both ends, different for every
/// stream and position, so a reordered, duplicated or corrupted byte is caught.
#[inline]
pub fn stream_byte(id: u64, offset: u64) -> u8 {
    (stream_word(id, offset / 8) >> ((offset % 8) * 8)) as u8
}

#[inline]
fn stream_word(id: u64, index: u64) -> u64 {
    let x = index.wrapping_add(id.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    (x ^ (x >> 31)).wrapping_mul(0xbf58_476d_1ce4_e5b9)
}

/// Writes bytes `offset..offset + buf.len()` of stream `id`, a word at a time.
fn fill(id: u64, offset: u64, buf: &mut [u8]) {
    let mut i = 0usize;
    while i < buf.len() {
        let at = offset + i as u64;
        let word = stream_word(id, at / 8).to_le_bytes();
        let skip = (at % 8) as usize;
        let n = (8 - skip).min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&word[skip..skip + n]);
        i += n;
    }
}

/// One TCP stream to run: from `client` (an address of `client_ns`) to `server:port`.
#[derive(Clone, Debug)]
pub struct TcpFlow {
    pub id: u64,
    pub client: IpAddr,
    pub server: IpAddr,
    pub port: u16,
    pub bytes: u64,
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

fn send(f: TcpFlow, timeout: Duration, pace: Option<Pace>) -> Result<(), TrafficError> {
    let sock = socket2_connect(f.client, SocketAddr::new(f.server, f.port), timeout)?;
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

/// Connects from a chosen source address (std's TcpStream cannot bind before connecting).
fn socket2_connect(
    src: IpAddr,
    dst: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, TrafficError> {
    let domain = if dst.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io("socket")(std::io::Error::last_os_error()));
    }
    let stream = unsafe { <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let (sa, len) = sockaddr(SocketAddr::new(src, 0));
    if unsafe { libc::bind(fd, &sa as *const _ as *const libc::sockaddr, len) } != 0 {
        return Err(io(format!("bind {src}"))(std::io::Error::last_os_error()));
    }
    let (da, dlen) = sockaddr(dst);
    let deadline = Instant::now() + timeout;
    loop {
        if unsafe { libc::connect(fd, &da as *const _ as *const libc::sockaddr, dlen) } == 0 {
            return Ok(stream);
        }
        let e = std::io::Error::last_os_error();
        if Instant::now() >= deadline || e.raw_os_error() != Some(libc::EINTR) {
            return Err(io(format!("connect {src} → {dst}"))(e));
        }
    }
}

fn sockaddr(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match a {
        SocketAddr::V4(v4) => {
            let sin = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as _;
            sin.sin_port = v4.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(v4.ip().octets());
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6) };
            sin.sin6_family = libc::AF_INET6 as _;
            sin.sin6_port = v6.port().to_be();
            sin.sin6_addr.s6_addr = v6.ip().octets();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

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

/// Sends `count` datagrams from each `(src, dst)` pair (src in `from_ns`, dst in `to_ns`,
/// one port) paced by `gap`, and returns how many arrived per pair.
pub fn udp_pairs(
    from_ns: &str,
    to_ns: &str,
    pairs: &[(IpAddr, IpAddr)],
    port: u16,
    count: u32,
    gap: Duration,
) -> Result<Vec<u32>, TrafficError> {
    let mut receivers = Vec::new();
    for (_, dst) in pairs {
        let addr = SocketAddr::new(*dst, port);
        receivers.push(join(in_netns(to_ns, move || {
            UdpSocket::bind(addr).map_err(io(format!("bind {addr}")))
        }))?);
    }
    let senders: Vec<UdpSocket> = pairs
        .iter()
        .map(|(src, _)| {
            let addr = SocketAddr::new(*src, 0);
            join(in_netns(from_ns, move || {
                UdpSocket::bind(addr).map_err(io(format!("bind {addr}")))
            }))
        })
        .collect::<Result<_, _>>()?;
    let counters: Vec<Arc<AtomicU64>> = pairs.iter().map(|_| Arc::new(AtomicU64::new(0))).collect();
    let window = gap * count + Duration::from_secs(2);
    let threads: Vec<_> = receivers
        .into_iter()
        .zip(counters.iter().cloned())
        .enumerate()
        .map(|(i, (r, c))| {
            std::thread::spawn(move || {
                r.set_read_timeout(Some(Duration::from_millis(100))).ok();
                let mut buf = [0u8; 64];
                let end = Instant::now() + window;
                while Instant::now() < end {
                    let Ok(n) = r.recv(&mut buf) else { continue };
                    let ours =
                        n == 8 && u32::from_be_bytes(buf[..4].try_into().unwrap()) == i as u32;
                    if ours && c.fetch_add(1, Ordering::Relaxed) + 1 == count as u64 {
                        break;
                    }
                }
            })
        })
        .collect();
    for seq in 0..count {
        for (i, ((_, dst), s)) in pairs.iter().zip(&senders).enumerate() {
            let mut msg = [0u8; 8];
            msg[..4].copy_from_slice(&(i as u32).to_be_bytes());
            msg[4..].copy_from_slice(&seq.to_be_bytes());
            s.send_to(&msg, SocketAddr::new(*dst, port))
                .map_err(io(format!("send to {dst}")))?;
        }
        std::thread::sleep(gap);
    }
    for t in threads {
        t.join().map_err(|_| TrafficError::Panicked)?;
    }
    Ok(counters
        .iter()
        .map(|c| c.load(Ordering::Relaxed) as u32)
        .collect())
}

/// Sends one datagram per flow (each from its own source address and port, bound just for
/// it) from `from_ns` to one receiver in `to_ns`, in bursts of `burst` with `gap` between
/// them. Returns how many arrived.
pub fn udp_flows(
    from_ns: &str,
    to_ns: &str,
    flows: &[SocketAddr],
    dst: SocketAddr,
    burst: usize,
    gap: Duration,
) -> Result<u64, TrafficError> {
    let rx = join(in_netns(to_ns, move || {
        UdpSocket::bind(dst).map_err(io(format!("bind {dst}")))
    }))?;
    let want = flows.len() as u64;
    let counter = std::thread::spawn(move || {
        rx.set_read_timeout(Some(Duration::from_millis(200))).ok();
        let mut got = 0u64;
        let mut idle = 0;
        let mut buf = [0u8; 64];
        // Stop when all arrived, or after a second without any.
        while got < want && idle < 5 {
            match rx.recv(&mut buf) {
                Ok(_) => {
                    got += 1;
                    idle = 0;
                }
                Err(_) => idle += 1,
            }
        }
        got
    });
    let flows = flows.to_vec();
    join(in_netns(from_ns, move || {
        for chunk in flows.chunks(burst.max(1)) {
            for src in chunk {
                let s = UdpSocket::bind(src).map_err(io(format!("bind {src}")))?;
                s.send_to(b"baton", dst)
                    .map_err(io(format!("send to {dst}")))?;
            }
            std::thread::sleep(gap);
        }
        Ok(())
    }))?;
    counter.join().map_err(|_| TrafficError::Panicked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_differ_and_are_reproducible() {
        let a: Vec<u8> = (0..64).map(|o| stream_byte(1, o)).collect();
        let b: Vec<u8> = (0..64).map(|o| stream_byte(2, o)).collect();
        assert_ne!(a, b);
        let mut c = vec![0u8; 64];
        fill(1, 0, &mut c);
        assert_eq!(a, c);
        // Any starting offset and length agree with the byte function.
        let mut d = vec![0u8; 21];
        fill(1, 5, &mut d);
        assert_eq!(&d[..], &a[5..26]);
        // Not periodic at the 8-byte word level.
        assert_ne!(a[..8], a[8..16]);
    }
}
