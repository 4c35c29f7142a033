//! Sockets the standard library cannot make: TCP bound to a chosen source address before
//! connecting, connects with a deadline, and the raw socket options they need.

use std::{
    net::{IpAddr, SocketAddr, TcpStream},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use super::{io, TrafficError};

/// Connects from a chosen source address (std's TcpStream cannot bind before connecting).
pub(super) fn connect_from(
    src: IpAddr,
    dst: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, TrafficError> {
    let stream = bound_socket(src, dst, 0, false).map_err(io(format!("socket from {src}")))?;
    let fd = stream.as_raw_fd();
    let (da, dlen) = sockaddr(dst);
    let deadline = Instant::now() + timeout;
    loop {
        // SAFETY: `da` is a sockaddr_storage filled for `dst` and `dlen` its used length; `fd` is
        // open.
        if unsafe { libc::connect(fd, (&raw const da).cast::<libc::sockaddr>(), dlen) } == 0 {
            return Ok(stream);
        }
        let e = std::io::Error::last_os_error();
        if Instant::now() >= deadline || e.raw_os_error() != Some(libc::EINTR) {
            return Err(io(format!("connect {src} → {dst}"))(e));
        }
    }
}

/// A TCP socket of `dst`'s family (with the extra socket `flags`) bound to `src`, any
/// port. With `port_at_connect` the port is chosen at connect, by the whole 4-tuple, rather
/// than at bind, where every port in use (TIME_WAIT included) is taken: many connections
/// from one address need it. Best effort: without it the kernel picks at bind, which works
/// up to its port range.
fn bound_socket(
    src: IpAddr,
    dst: SocketAddr,
    flags: libc::c_int,
    port_at_connect: bool,
) -> std::io::Result<TcpStream> {
    let domain = if dst.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: socket(2) with constant arguments; the result is checked below.
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC | flags, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket that nothing else owns; the stream closes it once.
    let stream = unsafe { <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    if port_at_connect {
        let _ = setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1);
    }
    let (sa, len) = sockaddr(SocketAddr::new(src, 0));
    // SAFETY: `sa` is a sockaddr_storage filled for `src` and `len` its used length; `fd` is open.
    if unsafe { libc::bind(fd, (&raw const sa).cast::<libc::sockaddr>(), len) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(std::io::Error::new(e.kind(), format!("bind {src}: {e}")));
    }
    Ok(stream)
}

pub(super) fn sockaddr(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain integers: all zeroes is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match a {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in, and `ss` is
            // borrowed only here.
            let sin = unsafe { &mut *(&raw mut ss).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as _;
            sin.sin_port = v4.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(v4.ip().octets());
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6, and `ss` is
            // borrowed only here.
            let sin = unsafe { &mut *(&raw mut ss).cast::<libc::sockaddr_in6>() };
            sin.sin6_family = libc::AF_INET6 as _;
            sin.sin6_port = v6.port().to_be();
            sin.sin6_addr.s6_addr = v6.ip().octets();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// Connects from `src` (any port) to `dst`, giving up after `limit` without an answer
/// (a plain blocking connect would wait for every SYN retransmission, minutes).
pub(super) fn connect_bounded(
    src: IpAddr,
    dst: SocketAddr,
    limit: Duration,
) -> std::io::Result<TcpStream> {
    let stream = bound_socket(src, dst, libc::SOCK_NONBLOCK, true)?;
    let fd = stream.as_raw_fd();
    let (da, dlen) = sockaddr(dst);
    // SAFETY: `da` is a sockaddr_storage filled for `dst` and `dlen` its used length; `fd` is open.
    if unsafe { libc::connect(fd, (&raw const da).cast::<libc::sockaddr>(), dlen) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {limit:?}"),
                ));
            }
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLOUT,
                revents: 0,
            };
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
            // SAFETY: `p` is one live pollfd, and the count passed is 1.
            match unsafe { libc::poll(&raw mut p, 1, ms) } {
                0 => {}
                r if r < 0 => {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
                _ => break,
            }
        }
        if let Some(e) = stream.take_error()? {
            return Err(e);
        }
    }
    stream.set_nonblocking(false)?;
    Ok(stream)
}

pub(super) fn setsockopt_int(
    fd: libc::c_int,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> std::io::Result<()> {
    // SAFETY: `value` is a live c_int and the size passed is its size.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&raw const value).cast::<libc::c_void>(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
