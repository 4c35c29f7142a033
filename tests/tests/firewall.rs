//! Members as stateful firewalls in the lab: the policy decides a connection's first
//! packet, the connection table the rest.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use baton_lab::{
    topology::{NS_EXT, NS_INT, STATE_DIR},
    traffic::{in_netns, join, tcp_streams, TcpFlow, TcpReport, TrafficError},
};
use baton_tests::*;
use serde_json::Value;

/// Installs a policy through the orchestrator (`baton policy install`); waits until all
/// members enforce `version`.
fn install_policy(text: &str, version: u64) {
    let file = std::path::Path::new(STATE_DIR).join(format!("policy-v{version}.toml"));
    std::fs::write(&file, text).unwrap();
    let out = baton_ok(&["policy", "install", file.to_str().unwrap()]);
    assert!(
        out.contains(&format!("version {version} enforced")),
        "{out}"
    );
    let s = wait_stat(Duration::from_secs(3), |s| {
        s["groups"][0]["members"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["policy_version"] == version)
    });
    for m in s["groups"][0]["members"].as_array().unwrap() {
        assert_eq!(
            m["policy_version"], version,
            "member {} enforces the new policy",
            m["id"]
        );
    }
}

/// `count` TCP streams of `mb` MB, from bt-ext host `.first + i` to bt-int host
/// `.first + 10 + i` on port `port + i`, every byte checked.
fn run_streams(first: u8, count: u8, port: u16, mb: u64) -> Result<Vec<TcpReport>, TrafficError> {
    let flows: Vec<TcpFlow> = (0..count)
        .map(|i| TcpFlow {
            id: u64::from(first + i),
            client: IpAddr::from([198, 18, 0, first + i]),
            server: IpAddr::from([198, 19, 0, first + 10 + i]),
            port: port + u16::from(i),
            bytes: mb << 20,
        })
        .collect();
    tcp_streams(
        NS_EXT,
        NS_INT,
        &flows,
        Duration::from_secs(60),
        std::sync::Arc::default(),
    )
}

fn drops(stat: &Value, reason: &str) -> u64 {
    stat["groups"][0]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["drop_reasons"][reason].as_u64().unwrap_or(0))
        .sum()
}

fn listen(addr: SocketAddr) -> TcpListener {
    join(in_netns(NS_INT, move || {
        TcpListener::bind(addr).map_err(|e| TrafficError::Io {
            what: "listen".into(),
            source: e,
        })
    }))
    .unwrap()
}

fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    join(in_netns(NS_EXT, move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| TrafficError::Io {
            what: "connect".into(),
            source: e,
        })
    }))
    .map_err(|e| std::io::Error::other(e.to_string()))
}

/// Sends a line on `c` and reads it at `s`; true when it arrives within a second.
fn passes(c: &mut TcpStream, s: &mut TcpStream) -> bool {
    c.write_all(b"ping\n").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).is_ok() && &buf == b"ping\n"
}

#[test]
fn policy_decides_first_packets_and_replacement_closes_only_what_it_must() {
    let _lab = Lab::up(3);
    // Version 2: web and mail from the external side, ICMP; everything else dropped.
    install_policy(
        r#"version = 2
[[rules]]
src = ["198.18.0.0/24"]
proto = "tcp"
dport = "5001-5002"
action = "accept"
[[rules]]
proto = "icmp"
action = "accept"
"#,
        2,
    );
    let web: SocketAddr = "198.19.0.1:5001".parse().unwrap();
    let mail: SocketAddr = "198.19.0.2:5002".parse().unwrap();
    let other: SocketAddr = "198.19.0.3:6000".parse().unwrap();
    let (lw, lm, lo) = (listen(web), listen(mail), listen(other));
    let mut cw = connect(web).expect("allowed connection opens");
    let mut cm = connect(mail).expect("allowed connection opens");
    let (mut sw, _) = lw.accept().unwrap();
    let (mut sm, _) = lm.accept().unwrap();
    assert!(passes(&mut cw, &mut sw) && passes(&mut cm, &mut sm));
    let before = drops(&stat_json(), "policy");
    assert!(connect(other).is_err(), "a denied connection does not open");
    assert!(
        drops(&stat_json(), "policy") > before,
        "the refused SYNs are counted"
    );
    lo.set_nonblocking(true).unwrap();
    assert!(lo.accept().is_err(), "nothing reached the denied server");

    // Version 3 drops mail: that connection dies at once, web goes on.
    install_policy(
        r#"version = 3
[[rules]]
src = ["198.18.0.0/24"]
proto = "tcp"
dport = "5001"
action = "accept"
"#,
        3,
    );
    assert!(
        passes(&mut cw, &mut sw),
        "the still-allowed connection continues"
    );
    let before = drops(&stat_json(), "no_connection");
    assert!(
        !passes(&mut cm, &mut sm),
        "the connection the new policy refuses is closed"
    );
    assert!(
        drops(&stat_json(), "no_connection") > before,
        "its later packets are counted"
    );
}

#[test]
fn a_packet_without_a_connection_is_dropped_and_counted() {
    let _lab = Lab::up(1);
    let before = drops(&stat_json(), "no_connection");
    // A TCP ACK out of the blue, through a raw socket in bt-ext.
    join(in_netns(NS_EXT, || {
        // SAFETY: socket(2) with constant arguments; the result is checked below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_TCP) };
        assert!(fd >= 0, "raw socket");
        let mut seg = [0u8; 20];
        seg[0..2].copy_from_slice(&4242u16.to_be_bytes());
        seg[2..4].copy_from_slice(&80u16.to_be_bytes());
        seg[12] = 5 << 4;
        seg[13] = 0x10; // ACK

        // SAFETY: sockaddr_in is plain integers: all zeroes is a valid value.
        let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        sa.sin_family = libc::AF_INET as _;
        sa.sin_addr.s_addr = u32::from_ne_bytes([198, 19, 0, 1]);
        for _ in 0..3 {
            // SAFETY: `seg` and `sa` are live for the call and the lengths passed are theirs; `fd`
            // is open.
            let n = unsafe {
                libc::sendto(
                    fd,
                    seg.as_ptr().cast(),
                    seg.len(),
                    0,
                    (&raw const sa).cast::<libc::sockaddr>(),
                    std::mem::size_of_val(&sa) as u32,
                )
            };
            assert_eq!(n, 20);
        }
        // SAFETY: `fd` is the socket opened above, closed once here.
        unsafe { libc::close(fd) };
        Ok(())
    }))
    .unwrap();
    let s = wait_stat(Duration::from_secs(2), |s| {
        drops(s, "no_connection") >= before + 3
    });
    assert_eq!(drops(&s, "no_connection"), before + 3);
}

#[test]
fn a_full_table_refuses_new_connections_and_keeps_the_existing_ones() {
    let _lab = Lab::up_with(&["--sgms", "1", "--table-size", "8"]);
    let dst: SocketAddr = "198.19.0.1:7000".parse().unwrap();
    let rx = join(in_netns(NS_INT, move || {
        UdpSocket::bind(dst).map_err(|e| TrafficError::Io {
            what: "bind".into(),
            source: e,
        })
    }))
    .unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let senders: Vec<UdpSocket> = (0..10u16)
        .map(|i| {
            let src = SocketAddr::from(([198, 18, 0, 1], 30000 + i));
            join(in_netns(NS_EXT, move || {
                UdpSocket::bind(src).map_err(|e| TrafficError::Io {
                    what: "bind".into(),
                    source: e,
                })
            }))
            .unwrap()
        })
        .collect();
    let mut buf = [0u8; 16];
    // The first datagram resolves the next hop; it and seven more fill the table.
    for s in &senders[..8] {
        s.send_to(b"x", dst).unwrap();
        assert!(
            rx.recv(&mut buf).is_ok(),
            "a connection while there is room"
        );
    }
    let stat = wait_stat(Duration::from_secs(2), |s| {
        s["groups"][0]["members"][0]["connections"] == 8
    });
    assert_eq!(stat["groups"][0]["members"][0]["connections"], 8);
    for s in &senders[8..] {
        s.send_to(b"x", dst).unwrap();
    }
    assert!(
        rx.recv(&mut buf).is_err(),
        "no new connection in a full table"
    );
    let s = wait_stat(Duration::from_secs(2), |s| drops(s, "table_full") >= 2);
    assert_eq!(drops(&s, "table_full"), 2);
    senders[3].send_to(b"y", dst).unwrap();
    assert!(
        rx.recv(&mut buf).is_ok(),
        "an existing connection still passes"
    );
}

#[test]
fn an_expiring_ttl_is_reported_by_the_gateway() {
    let _lab = Lab::up(1);
    let out = in_ns(
        NS_EXT,
        &["ping", "-c", "1", "-t", "1", "-W", "2", "198.19.0.1"],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("From 198.18.0.254") && text.contains("Time to live exceeded"),
        "{text}"
    );
    let out = in_ns(
        NS_EXT,
        &[
            "ping",
            "-6",
            "-c",
            "1",
            "-t",
            "1",
            "-W",
            "2",
            "2001:db8:19::1",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("From 2001:db8:18::fe") && text.contains("Time exceeded"),
        "{text}"
    );
    let s = wait_stat(Duration::from_secs(2), |s| drops(s, "ttl_exceeded") >= 2);
    assert_eq!(drops(&s, "ttl_exceeded"), 2);
    // With a TTL to spare, the same destination answers.
    let out = in_ns(
        NS_EXT,
        &["ping", "-c", "1", "-t", "2", "-W", "2", "198.19.0.1"],
    );
    assert!(out.status.success());
}

#[test]
fn two_workers_share_the_connections_of_one_member() {
    let _lab = Lab::up_with(&["--sgms", "1", "--workers", "2"]);
    run_streams(10, 8, 5100, 4).expect("streams through two workers arrive intact");
    let s = wait_stat(Duration::from_secs(2), |s| {
        s["groups"][0]["members"][0]["worker_packets"][1]
            .as_u64()
            .unwrap_or(0)
            > 0
    });
    let m = &s["groups"][0]["members"][0];
    assert_eq!(m["workers"], 2);
    let packets: Vec<u64> = m["worker_packets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert!(
        packets.iter().all(|p| *p > 100),
        "both workers carried connections: {packets:?}"
    );
    let bytes: Vec<u64> = m["worker_bytes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert!(
        bytes.iter().zip(&packets).all(|(b, p)| *b >= 60 * p),
        "bytes per worker: {bytes:?}"
    );
    assert_eq!(
        m["worker_drops"].as_array().unwrap().len(),
        2,
        "drops by reason per worker"
    );
    // The member's count and its workers' counts come from one heartbeat; give them a
    // moment to agree after the last packet.
    let sum = |s: &Value| -> (u64, u64) {
        let m = &s["groups"][0]["members"][0];
        let w = m["worker_connections"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .sum();
        (w, m["connections"].as_u64().unwrap())
    };
    let (w, total) = sum(&wait_stat(Duration::from_secs(2), |s| sum(s).0 == sum(s).1));
    assert_eq!(w, total, "the workers' tables make the member's");
    // A ping in each direction (ARP/ND reach every worker).
    let out = in_ns(NS_INT, &["ping", "-c", "2", "-W", "2", "198.18.0.33"]);
    assert!(out.status.success());
}

#[test]
fn the_worker_count_changes_at_runtime_without_dropping_connections() {
    let _lab = Lab::up_with(&["--sgms", "1", "--workers", "2"]);
    let mut pairs = Vec::new();
    for i in 0..8u8 {
        let addr = SocketAddr::from(([198, 19, 0, 40 + i], 5200 + u16::from(i)));
        let l = listen(addr);
        let c = connect(addr).expect("connection opens");
        let (srv, _) = l.accept().unwrap();
        pairs.push((c, srv));
    }
    let all_pass =
        |pairs: &mut Vec<(TcpStream, TcpStream)>| pairs.iter_mut().all(|(c, s)| passes(c, s));
    assert!(all_pass(&mut pairs));
    let conns = |s: &Value| {
        s["groups"][0]["members"][0]["connections"]
            .as_u64()
            .unwrap()
    };
    let before = conns(&wait_stat(Duration::from_secs(2), |s| conns(s) >= 8));
    assert!(before >= 8);
    for n in [3u64, 1, 2] {
        baton_ok(&["workers", "1", &n.to_string()]);
        let s = wait_stat(Duration::from_secs(3), |s| {
            s["groups"][0]["members"][0]["workers"] == n
        });
        assert_eq!(
            s["groups"][0]["members"][0]["workers"], n,
            "member runs {n} workers"
        );
        assert!(
            all_pass(&mut pairs),
            "every connection survives the change to {n} workers"
        );
        let s = wait_stat(Duration::from_secs(2), |s| conns(s) >= before);
        assert!(conns(&s) >= before, "no connection was dropped");
    }
    // Bad requests change nothing and say why.
    let out = baton(&["workers", "9", "2"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no member 9"));
    let out = baton(&["workers", "1", "17"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("1..=16"));
    assert_eq!(stat_json()["groups"][0]["members"][0]["workers"], 2);
}

#[test]
fn a_member_serves_every_queue_of_its_data_port() {
    let _lab = Lab::up_with(&["--sgms", "1", "--queues", "2"]);
    // Senders pinned to each core: a veth delivers on the queue of the sending core, so
    // both queues carry traffic, and the replies may come back on the other queue.
    let senders: Vec<_> = (0..2usize)
        .map(|core| {
            std::thread::spawn(move || {
                core_affinity::set_for_current(core_affinity::CoreId { id: core });
                run_streams(30 + 4 * core as u8, 4, 5300 + 4 * core as u16, 4)
            })
        })
        .collect();
    for s in senders {
        s.join()
            .unwrap()
            .expect("streams over both queues arrive intact");
    }
    let s = wait_stat(Duration::from_secs(2), |s| {
        s["groups"][0]["members"][0]["queue_packets"]
            .as_array()
            .is_some_and(|q| q.len() == 2 && q.iter().all(|p| p.as_u64().unwrap() > 0))
    });
    let q = &s["groups"][0]["members"][0]["queue_packets"];
    assert!(
        q.as_array()
            .unwrap()
            .iter()
            .all(|p| p.as_u64().unwrap() > 100),
        "both queues carried traffic: {q}"
    );
}

#[test]
fn members_can_busy_poll_their_sockets() {
    let _lab = Lab::up_with(&["--sgms", "2", "--busy-poll", "64"]);
    run_streams(1, 4, 5400, 2).expect("streams through busy-polling members arrive intact");
    let log = std::fs::read_to_string(std::path::Path::new(STATE_DIR).join("sgm1.log")).unwrap();
    assert!(!log.contains("busy polling not available"), "{log}");
}
