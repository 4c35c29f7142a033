//! The connection generator: many short TCP connections opened, verified and closed at a
//! rate, with connect latency and duration percentiles and every failure counted by kind.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::{
    enter_netns, in_netns, io, join,
    socket::{connect_bounded, setsockopt_int, sockaddr},
    stream::fill,
    TrafficError,
};

/// Most connections one [`connections`] run opens (every load is bounded).
pub const CONN_COUNT_MAX: u64 = 10_000_000;
/// Most connections open at once (one client thread each, and as many server threads).
pub const CONN_CONCURRENCY_MAX: usize = 4096;
/// Most bytes one connection sends.
pub const CONN_BYTES_MAX: u64 = 1 << 30;

/// What [`connections`] runs: `count` connections, `concurrency` of them at a time, each
/// from the next of `clients` in turn to `server:port`. Each connection sends a header
/// (its stream id and length) and `bytes` of its stream; the server checks every byte and
/// answers with a verdict, then closes first (so TIME_WAIT stays on the server and the
/// client's ports are free again at once).
#[derive(Clone, Debug)]
pub struct ConnSpec {
    /// Source addresses to bind (addresses of the client namespace), used in turn.
    pub clients: Vec<IpAddr>,
    /// The address the server listens on (an address of the server namespace).
    pub server: IpAddr,
    /// The server's port (0: any free one).
    pub port: u16,
    /// Connections to open in all: 1..=[`CONN_COUNT_MAX`].
    pub count: u64,
    /// Connections open at once: 1..=[`CONN_CONCURRENCY_MAX`].
    pub concurrency: usize,
    /// Bytes each connection sends after its header: 0..=[`CONN_BYTES_MAX`].
    pub bytes: u64,
    /// A connection that makes no progress for this long (connect, send, or waiting for
    /// the verdict) is stalled and given up.
    pub stall_limit: Duration,
    /// No connection starts after this; one still sending a stall limit later is cut. A
    /// run returns within about this plus three stall limits.
    pub timeout: Duration,
}

impl ConnSpec {
    /// Rejects unbounded or inconsistent requests, saying what is wrong.
    pub fn check(&self) -> Result<(), TrafficError> {
        let bad = |m: String| Err(TrafficError::BadSpec(m));
        if self.clients.is_empty() {
            return bad("no client address to connect from".into());
        }
        if let Some(c) = self
            .clients
            .iter()
            .find(|c| c.is_ipv4() != self.server.is_ipv4())
        {
            return bad(format!(
                "client address {c} and server address {} are of different families",
                self.server
            ));
        }
        if !(1..=CONN_COUNT_MAX).contains(&self.count) {
            return bad(format!(
                "count must be 1..={CONN_COUNT_MAX} (every load is bounded), not {}",
                self.count
            ));
        }
        if !(1..=CONN_CONCURRENCY_MAX).contains(&self.concurrency) {
            return bad(format!(
                "concurrency must be 1..={CONN_CONCURRENCY_MAX}, not {}",
                self.concurrency
            ));
        }
        if self.bytes > CONN_BYTES_MAX {
            return bad(format!(
                "bytes per connection must be at most {CONN_BYTES_MAX}, not {}",
                self.bytes
            ));
        }
        if self.stall_limit.is_zero() || self.timeout.is_zero() {
            return bad("the stall limit and the timeout must be above zero".into());
        }
        Ok(())
    }
}

/// Percentiles of a distribution, in milliseconds (all 0 when there were no samples).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// From a histogram of microseconds.
    fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1e3;
        Self {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
        }
    }
}

/// What a [`connections`] run saw. Every connection attempted ends in exactly one of
/// completed, reset, stalled, corrupt or failed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ConnReport {
    /// Connections asked for.
    pub requested: u64,
    /// Connections started (fewer than requested when the timeout came first).
    pub attempted: u64,
    /// Connected, sent everything, and the server verified every byte.
    pub completed: u64,
    /// Refused, reset, or the pipe broke.
    pub reset: u64,
    /// No progress for the stall limit.
    pub stalled: u64,
    /// The server found a byte (or the header) other than what was sent.
    pub corrupt: u64,
    /// Anything else: no route, no address, closed without a verdict, cut by the timeout.
    pub failed: u64,
    /// Connections the server accepted.
    pub accepted: u64,
    pub elapsed_s: f64,
    /// Completed connections per second of the run.
    pub conn_per_s: f64,
    /// From `connect` to the connection being established (completed connections).
    pub connect_ms: Percentiles,
    /// From `connect` to the server's close (completed connections).
    pub duration_ms: Percentiles,
    /// The longest any connection waited without progress (connect, one send, the verdict).
    pub longest_stall_ms: f64,
    /// The first few distinct failures, for a person to read.
    pub errors: Vec<String>,
}

impl ConnReport {
    /// Every requested connection completed.
    pub fn ok(&self) -> bool {
        self.completed == self.requested
    }

    /// Connections requested that did not complete (failed or never started).
    pub fn lost(&self) -> u64 {
        self.requested - self.completed
    }

    /// What did not complete, by kind.
    pub fn failures(&self) -> String {
        format!(
            "{} of {} connections did not complete ({} reset, {} stalled, {} corrupt, {} other, {} not started)",
            self.lost(),
            self.requested,
            self.reset,
            self.stalled,
            self.corrupt,
            self.failed,
            self.requested - self.attempted
        )
    }
}

const VERDICT_OK: u8 = b'K';
const VERDICT_CORRUPT: u8 = b'C';
const VERDICT_BAD_HEADER: u8 = b'H';
/// Stream id and length, little-endian u64 each.
const CONN_HEADER: usize = 16;
/// How often an idle server thread looks whether the run is over.
const SERVER_POLL: Duration = Duration::from_millis(100);
const CONN_BUF: usize = 16 << 10;
const ERRORS_KEPT: usize = 8;
/// Samples a client thread keeps before adding them to the shared histograms.
const SAMPLE_BATCH: usize = 1024;

/// Opens `spec.count` TCP connections from `client_ns` to a server this call runs in
/// `server_ns`, `spec.concurrency` at a time, each sending a stream the server verifies
/// byte by byte. Failed connections are counted, not returned as errors: an error means
/// the run could not be set up (bad spec, no namespace, the server address not there).
pub fn connections(
    client_ns: &str,
    server_ns: &str,
    spec: &ConnSpec,
) -> Result<ConnReport, TrafficError> {
    run_connections(Some(client_ns), Some(server_ns), spec)
}

/// [`connections`], with `None` for the caller's own namespace.
fn run_connections(
    client_ns: Option<&str>,
    server_ns: Option<&str>,
    spec: &ConnSpec,
) -> Result<ConnReport, TrafficError> {
    spec.check()?;
    let addr = SocketAddr::new(spec.server, spec.port);
    let listener = match server_ns {
        Some(ns) => join(in_netns(ns, move || conn_listener(addr)))?,
        None => conn_listener(addr)?,
    };
    let port = listener
        .local_addr()
        .map_err(io("listener address"))?
        .port();
    let spec = Arc::new(ConnSpec {
        port,
        ..spec.clone()
    });
    let listener = Arc::new(listener);
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let hists = Arc::new(Mutex::new(Hists::new()));
    let clients_n = spec.concurrency.min(spec.count as usize);
    // Spare server threads, so a connection its client gave up on cannot hold up others.
    let servers_n = clients_n + clients_n.div_ceil(4);

    let mut setup: Result<(), TrafficError> = Ok(());
    let mut servers = Vec::new();
    for _ in 0..servers_n {
        let (l, spec, stop, accepted) = (
            listener.clone(),
            spec.clone(),
            stop.clone(),
            accepted.clone(),
        );
        match spawn_small(move || server_loop(&l, &spec, &stop, &accepted)) {
            Ok(h) => servers.push(h),
            Err(e) => {
                setup = Err(e);
                break;
            }
        }
    }
    let start = Instant::now();
    let mut clients = Vec::new();
    if setup.is_ok() {
        let (no_new_after, cut) = (
            start + spec.timeout,
            start + spec.timeout + spec.stall_limit,
        );
        for _ in 0..clients_n {
            let (ns, sp, nx, hs) = (
                client_ns.map(str::to_string),
                spec.clone(),
                next.clone(),
                hists.clone(),
            );
            let spawned = spawn_small(move || {
                if let Some(ns) = ns {
                    if let Err(e) = enter_netns(&ns) {
                        // Every other client stops at its next connection.
                        nx.store(sp.count, Ordering::Relaxed);
                        return Err(e);
                    }
                }
                Ok(client_loop(&sp, &nx, no_new_after, cut, &hs))
            });
            match spawned {
                Ok(h) => clients.push(h),
                Err(e) => {
                    next.store(spec.count, Ordering::Relaxed);
                    setup = Err(e);
                    break;
                }
            }
        }
    }
    let mut tally = Tally::default();
    for c in clients {
        match c.join() {
            Ok(Ok(t)) => tally.merge(t),
            Ok(Err(e)) => setup = setup.and(Err(e)),
            Err(_) => setup = setup.and(Err(TrafficError::Panicked)),
        }
    }
    let elapsed = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    for s in servers {
        if s.join().is_err() {
            setup = setup.and(Err(TrafficError::Panicked));
        }
    }
    setup?;
    let hists = hists
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    Ok(ConnReport {
        requested: spec.count,
        attempted: tally.attempted,
        completed: tally.completed,
        reset: tally.reset,
        stalled: tally.stalled,
        corrupt: tally.corrupt,
        failed: tally.failed,
        accepted: accepted.load(Ordering::Relaxed),
        elapsed_s: elapsed.as_secs_f64(),
        conn_per_s: tally.completed as f64 / elapsed.as_secs_f64().max(1e-9),
        connect_ms: Percentiles::of(&hists.connect),
        duration_ms: Percentiles::of(&hists.duration),
        longest_stall_ms: tally.longest_stall.as_secs_f64() * 1e3,
        errors: tally.errors,
    })
}

fn spawn_small<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<JoinHandle<T>, TrafficError> {
    // Buffers are on the heap; thousands of these threads should not reserve 2 MiB each.
    std::thread::Builder::new()
        .stack_size(256 << 10)
        .spawn(f)
        .map_err(io("start a traffic thread"))
}

/// Connect latency and connection duration, in microseconds.
struct Hists {
    connect: Histogram<u64>,
    duration: Histogram<u64>,
}

impl Hists {
    fn new() -> Self {
        // 1 µs to an hour at 3 significant digits; larger values are saturated.
        let h = || Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant bounds");
        Self {
            connect: h(),
            duration: h(),
        }
    }

    fn add(&mut self, connect: &[u64], duration: &[u64]) {
        for &v in connect {
            self.connect.saturating_record(v.max(1));
        }
        for &v in duration {
            self.duration.saturating_record(v.max(1));
        }
    }
}

/// How a connection ended, when it did not complete.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Outcome {
    Reset,
    Stalled,
    Corrupt,
    Failed,
}

fn outcome_of(e: &std::io::Error) -> Outcome {
    use std::io::ErrorKind::{
        BrokenPipe, ConnectionAborted, ConnectionRefused, ConnectionReset, TimedOut, WouldBlock,
    };
    match e.kind() {
        ConnectionReset | ConnectionRefused | ConnectionAborted | BrokenPipe => Outcome::Reset,
        WouldBlock | TimedOut => Outcome::Stalled,
        _ => Outcome::Failed,
    }
}

/// One client thread's counts.
#[derive(Default)]
struct Tally {
    attempted: u64,
    completed: u64,
    reset: u64,
    stalled: u64,
    corrupt: u64,
    failed: u64,
    longest_stall: Duration,
    errors: Vec<String>,
}

impl Tally {
    fn note(&mut self, outcome: Outcome, why: String) {
        *match outcome {
            Outcome::Reset => &mut self.reset,
            Outcome::Stalled => &mut self.stalled,
            Outcome::Corrupt => &mut self.corrupt,
            Outcome::Failed => &mut self.failed,
        } += 1;
        if self.errors.len() < ERRORS_KEPT && !self.errors.contains(&why) {
            self.errors.push(why);
        }
    }

    fn merge(&mut self, t: Tally) {
        self.attempted += t.attempted;
        self.completed += t.completed;
        self.reset += t.reset;
        self.stalled += t.stalled;
        self.corrupt += t.corrupt;
        self.failed += t.failed;
        self.longest_stall = self.longest_stall.max(t.longest_stall);
        for e in t.errors {
            if self.errors.len() < ERRORS_KEPT && !self.errors.contains(&e) {
                self.errors.push(e);
            }
        }
    }
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u128::from(u64::MAX)) as u64
}

/// One client thread: takes the next connection id until all are taken or it is too late.
fn client_loop(
    spec: &ConnSpec,
    next: &AtomicU64,
    no_new_after: Instant,
    cut: Instant,
    hists: &Mutex<Hists>,
) -> Tally {
    let mut t = Tally::default();
    let mut buf = vec![0u8; CONN_HEADER + (spec.bytes as usize).min(CONN_BUF)];
    let (mut connects, mut durations) = (
        Vec::with_capacity(SAMPLE_BATCH),
        Vec::with_capacity(SAMPLE_BATCH),
    );
    let flush = |c: &mut Vec<u64>, d: &mut Vec<u64>| {
        hists
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .add(c, d);
        c.clear();
        d.clear();
    };
    while Instant::now() < no_new_after {
        let id = next.fetch_add(1, Ordering::Relaxed);
        if id >= spec.count {
            break;
        }
        t.attempted += 1;
        let src = spec.clients[(id % spec.clients.len() as u64) as usize];
        let began = Instant::now();
        let mut waited = Duration::ZERO;
        match one_connection(spec, id, src, &mut buf, cut, &mut waited) {
            Ok(connect) => {
                t.completed += 1;
                connects.push(micros(connect));
                durations.push(micros(began.elapsed()));
                if connects.len() >= SAMPLE_BATCH {
                    flush(&mut connects, &mut durations);
                }
            }
            Err((outcome, why)) => t.note(outcome, why),
        }
        t.longest_stall = t.longest_stall.max(waited);
    }
    flush(&mut connects, &mut durations);
    t
}

/// Connect, send the header and the stream, read the server's verdict and wait for its
/// close. Returns the connect latency; `waited` gets the longest wait without progress.
fn one_connection(
    spec: &ConnSpec,
    id: u64,
    src: IpAddr,
    buf: &mut [u8],
    cut: Instant,
    waited: &mut Duration,
) -> Result<Duration, (Outcome, String)> {
    let fail = |what: &str, e: std::io::Error| (outcome_of(&e), format!("{what}: {e}"));
    let dst = SocketAddr::new(spec.server, spec.port);
    let t = Instant::now();
    let connected = connect_bounded(src, dst, spec.stall_limit);
    let connect = t.elapsed();
    *waited = (*waited).max(connect);
    let mut s = connected.map_err(|e| fail("connect", e))?;
    s.set_nodelay(true)
        .and_then(|()| s.set_write_timeout(Some(spec.stall_limit)))
        .and_then(|()| s.set_read_timeout(Some(spec.stall_limit)))
        .map_err(|e| fail("socket options", e))?;
    // The header goes out with the first bytes of the stream.
    buf[..8].copy_from_slice(&id.to_le_bytes());
    buf[8..CONN_HEADER].copy_from_slice(&spec.bytes.to_le_bytes());
    let mut head = CONN_HEADER;
    let mut off = 0u64;
    loop {
        let n = (spec.bytes - off).min((buf.len() - head) as u64) as usize;
        fill(id, off, &mut buf[head..head + n]);
        if Instant::now() > cut {
            return Err((Outcome::Failed, "cut by the overall timeout".into()));
        }
        send_all(&mut s, &buf[..head + n], waited).map_err(|e| fail("send", e))?;
        off += n as u64;
        head = 0;
        if off == spec.bytes {
            break;
        }
    }
    let mut v = [0u8; 1];
    let t = Instant::now();
    let got = read_some(&mut s, &mut v);
    *waited = (*waited).max(t.elapsed());
    match got.map_err(|e| fail("waiting for the verdict", e))? {
        0 => {
            return Err((
                Outcome::Failed,
                "the server closed without a verdict".into(),
            ))
        }
        _ if v[0] == VERDICT_OK => {}
        _ if v[0] == VERDICT_CORRUPT => {
            return Err((
                Outcome::Corrupt,
                "the server found a byte other than what was sent".into(),
            ))
        }
        _ => {
            return Err((
                Outcome::Corrupt,
                format!("the server rejected the header (verdict {:#04x})", v[0]),
            ))
        }
    }
    // The server closes first; closing after it leaves no TIME_WAIT on this side. The
    // verdict is in, so whatever happens now does not fail the connection.
    let _ = read_some(&mut s, &mut v);
    Ok(connect)
}

/// `write_all` that notes the longest single wait (each write returns on any progress).
fn send_all(s: &mut TcpStream, mut data: &[u8], waited: &mut Duration) -> std::io::Result<()> {
    while !data.is_empty() {
        let t = Instant::now();
        match s.write(data) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        *waited = (*waited).max(t.elapsed());
    }
    Ok(())
}

fn read_some(s: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match s.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            r => return r,
        }
    }
}

/// The generator's listener: a long backlog, reusable address (the last run's TIME_WAITs
/// hold its port), and an accept that gives up after [`SERVER_POLL`] so its threads can
/// see the run end.
fn conn_listener(addr: SocketAddr) -> Result<TcpListener, TrafficError> {
    let what = format!("listen on {addr}");
    let err = |e: std::io::Error| io(what.clone())(e);
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: socket(2) with constant arguments; the result is checked below.
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a fresh socket that nothing else owns; the listener closes it once.
    let l = unsafe { <TcpListener as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1).map_err(err)?;
    let (sa, len) = sockaddr(addr);
    // SAFETY: `sa` is a sockaddr_storage filled for `addr` and `len` its used length; `fd` is open.
    if unsafe { libc::bind(fd, (&raw const sa).cast::<libc::sockaddr>(), len) } != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    // SAFETY: listen(2) on the open socket `fd`.
    if unsafe { libc::listen(fd, CONN_CONCURRENCY_MAX as libc::c_int) } != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    // accept(2) honours SO_RCVTIMEO.
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: SERVER_POLL.as_micros() as libc::suseconds_t,
    };
    // SAFETY: `tv` is a live timeval and the size passed is its size; `fd` is open.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast::<libc::c_void>(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(l)
}

/// One server thread: accepts and serves connections one at a time until `stop`.
fn server_loop(l: &TcpListener, spec: &ConnSpec, stop: &AtomicBool, accepted: &AtomicU64) {
    let mut bufs: Option<(Vec<u8>, Vec<u8>)> = None;
    while !stop.load(Ordering::Relaxed) {
        match l.accept() {
            Ok((s, _)) => {
                accepted.fetch_add(1, Ordering::Relaxed);
                let (buf, expect) =
                    bufs.get_or_insert_with(|| (vec![0u8; CONN_BUF], vec![0u8; CONN_BUF]));
                serve_connection(s, spec, stop, buf, expect);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            // An aborted handshake, or out of descriptors for a moment: keep serving.
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Reads the header and the stream, checks every byte, answers with the verdict and
/// closes. A connection that stalls or breaks is closed without a verdict.
fn serve_connection(
    mut s: TcpStream,
    spec: &ConnSpec,
    stop: &AtomicBool,
    buf: &mut [u8],
    expect: &mut [u8],
) -> Option<()> {
    s.set_read_timeout(Some(SERVER_POLL.min(spec.stall_limit)))
        .ok()?;
    let _ = s.set_nodelay(true);
    let mut last = Instant::now();
    // Some bytes, or None on close, error, stall, or the run's end.
    let mut read = |s: &mut TcpStream, into: &mut [u8]| -> Option<usize> {
        loop {
            match s.read(into) {
                Ok(0) => return None,
                Ok(n) => {
                    last = Instant::now();
                    return Some(n);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    if stop.load(Ordering::Relaxed) || last.elapsed() > spec.stall_limit {
                        return None;
                    }
                }
                Err(_) => return None,
            }
        }
    };
    let mut header = [0u8; CONN_HEADER];
    let mut got = 0;
    while got < CONN_HEADER {
        got += read(&mut s, &mut header[got..])?;
    }
    let id = u64::from_le_bytes(header[..8].try_into().ok()?);
    let len = u64::from_le_bytes(header[8..].try_into().ok()?);
    if len != spec.bytes {
        let _ = s.write_all(&[VERDICT_BAD_HEADER]);
        return Some(());
    }
    let mut verdict = if id < spec.count {
        VERDICT_OK
    } else {
        VERDICT_BAD_HEADER
    };
    let mut off = 0u64;
    while off < len {
        let want = (len - off).min(buf.len() as u64) as usize;
        let n = read(&mut s, &mut buf[..want])?;
        if verdict == VERDICT_OK {
            fill(id, off, &mut expect[..n]);
            if buf[..n] != expect[..n] {
                verdict = VERDICT_CORRUPT;
            }
        }
        off += n as u64;
    }
    let _ = s.write_all(&[verdict]);
    // Dropped here: this side closes first and keeps the TIME_WAIT.
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback(count: u64, concurrency: usize, bytes: u64) -> ConnSpec {
        ConnSpec {
            clients: vec![IpAddr::from([127, 0, 0, 1]), IpAddr::from([127, 0, 0, 2])],
            server: IpAddr::from([127, 0, 0, 1]),
            port: 0,
            count,
            concurrency,
            bytes,
            stall_limit: Duration::from_secs(5),
            timeout: Duration::from_secs(30),
        }
    }

    #[test]
    fn the_connection_generator_completes_every_connection_on_loopback() {
        // In this process's own namespace: no root, no lab.
        let r = run_connections(None, None, &loopback(300, 8, 5000)).expect("run");
        assert!(r.ok(), "{r:?}");
        assert_eq!((r.attempted, r.completed, r.accepted), (300, 300, 300));
        assert_eq!(r.reset + r.stalled + r.corrupt + r.failed, 0, "{r:?}");
        assert!(r.conn_per_s > 0.0);
        assert!(r.connect_ms.p50 <= r.connect_ms.p99 && r.connect_ms.p99 <= r.connect_ms.max);
        assert!(r.duration_ms.max > 0.0);
        // No header-only or single-connection corner is special.
        let r = run_connections(None, None, &loopback(1, 4, 0)).expect("run");
        assert!(r.ok(), "{r:?}");
    }

    #[test]
    fn failed_connections_are_counted_not_crashed_on() {
        // A source address this host does not have: every connection fails at once.
        let spec = ConnSpec {
            clients: vec![IpAddr::from([192, 0, 2, 1])],
            ..loopback(50, 4, 100)
        };
        let r = run_connections(None, None, &spec).expect("run");
        assert!(!r.ok());
        assert_eq!((r.attempted, r.completed, r.failed), (50, 0, 50), "{r:?}");
        assert_eq!(r.lost(), 50);
        assert_eq!(r.errors.len(), 1, "one distinct reason: {:?}", r.errors);
        assert_eq!(r.conn_per_s, 0.0);
    }

    #[test]
    fn unbounded_or_inconsistent_requests_are_refused() {
        for spec in [
            ConnSpec {
                count: 0,
                ..loopback(1, 1, 0)
            },
            ConnSpec {
                count: CONN_COUNT_MAX + 1,
                ..loopback(1, 1, 0)
            },
            ConnSpec {
                concurrency: CONN_CONCURRENCY_MAX + 1,
                ..loopback(1, 1, 0)
            },
            ConnSpec {
                bytes: CONN_BYTES_MAX + 1,
                ..loopback(1, 1, 0)
            },
            ConnSpec {
                clients: vec![],
                ..loopback(1, 1, 0)
            },
            ConnSpec {
                server: "::1".parse().unwrap(),
                ..loopback(1, 1, 0)
            },
        ] {
            assert!(
                matches!(spec.check(), Err(TrafficError::BadSpec(_))),
                "{spec:?}"
            );
        }
    }
}
