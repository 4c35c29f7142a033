//! UDP between lab hosts: datagrams per address pair, and one datagram per flow, counted
//! on arrival.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use super::{in_netns, io, join, TrafficError};

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
                    if ours && c.fetch_add(1, Ordering::Relaxed) + 1 == u64::from(count) {
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
