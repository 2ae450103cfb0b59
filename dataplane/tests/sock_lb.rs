//! The socket-level load balancer with real sockets: programs attached to a test cgroup2
//! directory, clients and backends in a private network namespace (nothing else can be
//! reached from it: it has only `lo`). Backends listen on 127.0.0.x; the service VIP is in
//! 198.19.0.0/16 and is never routed: if a translation were missed, connect() would fail
//! with "network unreachable".

mod support;

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use skiff_dataplane::maps::SVC_SCOPE_CLUSTER;
use skiff_dataplane::{DataPlane, Endpoint, Frontend, LbService, LoadBalancer, Proto};
use support::{Cgroup2, Netns};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
const VPORT: u16 = 80;
const BACKEND_PORT: u16 = 8080;

fn backend_addr(i: u8) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 2 + i), BACKEND_PORT)
}

/// TCP backends in `ns`: each greets a connection with its index, then echoes.
fn tcp_backends(ns: &Netns, n: u8) {
    for i in 0..n {
        let listener = ns.run(|| TcpListener::bind(backend_addr(i)).expect("bind backend"));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                std::thread::spawn(move || {
                    let _ = conn.write_all(&[i]);
                    let mut buf = [0u8; 64];
                    while let Ok(n) = conn.read(&mut buf) {
                        if n == 0 || conn.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
    }
}

/// UDP backends in `ns`: each answers a datagram with its index followed by the payload.
fn udp_backends(ns: &Netns, n: u8) {
    for i in 0..n {
        let sock = ns.run(|| UdpSocket::bind(backend_addr(i)).expect("bind backend"));
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                let mut reply = vec![i];
                reply.extend_from_slice(&buf[..n]);
                let _ = sock.send_to(&reply, from);
            }
        });
    }
}

fn service(proto: Proto, backends: &[u8], affinity: Option<u32>) -> LbService {
    LbService {
        frontends: vec![Frontend {
            addr: VIP,
            port: VPORT,
            proto,
            scope: SVC_SCOPE_CLUSTER,
        }],
        endpoints: backends
            .iter()
            .map(|&i| Endpoint {
                addr: *backend_addr(i).ip(),
                port: BACKEND_PORT,
                ready: true,
                serving: true,
                terminating: false,
            })
            .collect(),
        affinity_timeout: affinity,
    }
}

struct Node {
    ns: Netns,
    cgroup: Cgroup2,
    // Declared last: detaches before the cgroup directory goes.
    lb: LoadBalancer,
    _dp: DataPlane,
}

fn node(tag: &str) -> Node {
    let ns = Netns::new();
    let cgroup = Cgroup2::new(tag);
    let mut dp = DataPlane::load().expect("load BPF object");
    dp.attach_cgroup(&cgroup.path).expect("attach");
    let lb = dp.load_balancer().expect("maps");
    Node {
        ns,
        cgroup,
        lb,
        _dp: dp,
    }
}

impl Node {
    /// Connects to the VIP from a socket of this node; returns the backend's greeting.
    fn connect(&self) -> std::io::Result<(u8, TcpStream)> {
        let mut s = self.cgroup.run(|| {
            self.ns.run(|| {
                TcpStream::connect_timeout(
                    &SocketAddr::V4(SocketAddrV4::new(VIP, VPORT)),
                    Duration::from_secs(2),
                )
            })
        })?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut who = [0u8; 1];
        s.read_exact(&mut who)?;
        Ok((who[0], s))
    }

    fn spread(&self, n: usize) -> BTreeMap<u8, usize> {
        let mut seen = BTreeMap::new();
        for _ in 0..n {
            let (who, _) = self.connect().expect("connect to VIP");
            *seen.entry(who).or_default() += 1;
        }
        seen
    }
}

#[test]
fn tcp_connections_spread_over_backends_and_follow_changes() {
    let mut n = node("tcp");
    tcp_backends(&n.ns, 3);
    n.lb.apply("default/web:http", &service(Proto::Tcp, &[0, 1, 2], None))
        .expect("apply");

    // 900 connections over 3 backends: each gets 300 +- 5 sigma (sigma ~ 14).
    let seen = n.spread(900);
    assert_eq!(seen.len(), 3, "{seen:?}");
    for (b, c) in &seen {
        assert!(
            (230..=370).contains(c),
            "backend {b} got {c} of 900: {seen:?}"
        );
    }
    let counters =
        n.lb.counters("default/web:http")
            .expect("read")
            .expect("known");
    assert_eq!(counters.connections, 900);

    // The socket sees the service address, not the backend's.
    let (_, mut open) = n.connect().expect("connect");
    assert_eq!(
        open.peer_addr().expect("peer"),
        SocketAddr::V4(SocketAddrV4::new(VIP, VPORT))
    );

    // Remove backend 2: new connections avoid it; a connection open to it keeps working.
    let mut to_two = None;
    for _ in 0..200 {
        let (who, s) = n.connect().expect("connect");
        if who == 2 {
            to_two = Some(s);
            break;
        }
    }
    let mut to_two = to_two.expect("a connection to backend 2");
    n.lb.apply("default/web:http", &service(Proto::Tcp, &[0, 1], None))
        .expect("apply");
    let seen = n.spread(200);
    assert!(
        !seen.contains_key(&2),
        "removed backend still chosen: {seen:?}"
    );
    assert_eq!(seen.len(), 2, "{seen:?}");
    to_two.write_all(b"still there").expect("write");
    let mut buf = [0u8; 11];
    to_two
        .read_exact(&mut buf)
        .expect("echo from removed backend");
    assert_eq!(&buf, b"still there");
    open.write_all(b"x").expect("write");

    // Traffic to a non-service address is left alone.
    let direct = n
        .cgroup
        .run(|| n.ns.run(|| TcpStream::connect(backend_addr(1))))
        .expect("direct connect");
    assert_eq!(
        direct.peer_addr().expect("peer"),
        SocketAddr::V4(backend_addr(1))
    );
}

#[test]
fn a_service_without_endpoints_refuses_connections() {
    let mut n = node("zero");
    tcp_backends(&n.ns, 1);
    n.lb.apply("default/empty:http", &service(Proto::Tcp, &[], None))
        .expect("apply");
    let err = n.connect().expect_err("no backend");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");

    // N -> 0 -> N: endpoints coming back are used at once.
    n.lb.apply("default/empty:http", &service(Proto::Tcp, &[0], None))
        .expect("apply");
    assert_eq!(n.connect().expect("connect").0, 0);
}

#[test]
fn terminating_endpoints_take_no_new_flows_unless_nothing_else_serves() {
    let mut n = node("term");
    tcp_backends(&n.ns, 2);
    let mut svc = service(Proto::Tcp, &[0, 1], None);
    svc.endpoints[1].ready = false;
    svc.endpoints[1].terminating = true;
    n.lb.apply("default/roll:http", &svc).expect("apply");
    let seen = n.spread(100);
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        vec![0],
        "{seen:?}"
    );

    // Only a serving-but-terminating endpoint is left: it takes new flows (KEP-1669).
    svc.endpoints.remove(0);
    n.lb.apply("default/roll:http", &svc).expect("apply");
    let seen = n.spread(20);
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        vec![1],
        "{seen:?}"
    );

    // Not serving either: rejected.
    svc.endpoints[0].serving = false;
    n.lb.apply("default/roll:http", &svc).expect("apply");
    assert_eq!(
        n.connect().expect_err("nothing serves").kind(),
        ErrorKind::ConnectionRefused
    );
}

#[test]
fn session_affinity_pins_a_client_to_one_backend() {
    let mut n = node("affinity");
    tcp_backends(&n.ns, 3);
    n.lb.apply(
        "default/sticky:http",
        &service(Proto::Tcp, &[0, 1, 2], Some(10_800)),
    )
    .expect("apply");
    let seen = n.spread(60);
    assert_eq!(seen.len(), 1, "affinity ignored: {seen:?}");

    // Without affinity the same client spreads again.
    n.lb.apply(
        "default/sticky:http",
        &service(Proto::Tcp, &[0, 1, 2], None),
    )
    .expect("apply");
    assert!(n.spread(60).len() > 1);
}

#[test]
fn udp_datagrams_are_balanced_per_socket_and_replies_come_from_the_vip() {
    let mut n = node("udp");
    udp_backends(&n.ns, 3);
    n.lb.apply(
        "kube-system/dns:dns",
        &service(Proto::Udp, &[0, 1, 2], None),
    )
    .expect("apply");
    let vip = SocketAddr::V4(SocketAddrV4::new(VIP, VPORT));

    let mut seen = BTreeMap::new();
    for round in 0..60u8 {
        let sock = n
            .cgroup
            .run(|| n.ns.run(|| UdpSocket::bind("127.0.0.1:0")))
            .expect("bind client");
        sock.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        // Unconnected: sendto the VIP, three times; one socket keeps one backend.
        let mut backends = Vec::new();
        for k in 0..3u8 {
            sock.send_to(&[round, k], vip).expect("sendto VIP");
            let mut buf = [0u8; 8];
            let (len, from) = sock.recv_from(&mut buf).expect("reply");
            assert_eq!(from, vip, "reply must come from the service address");
            assert_eq!(&buf[1..len], &[round, k]);
            backends.push(buf[0]);
        }
        assert!(backends.windows(2).all(|w| w[0] == w[1]), "{backends:?}");
        *seen.entry(backends[0]).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 3, "{seen:?}");

    // Connected UDP: getpeername and replies show the VIP.
    let sock = n
        .cgroup
        .run(|| n.ns.run(|| UdpSocket::bind("127.0.0.1:0")))
        .expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    sock.connect(vip).expect("connect");
    assert_eq!(sock.peer_addr().expect("peer"), vip);
    sock.send(b"q").expect("send");
    let mut buf = [0u8; 8];
    let len = sock.recv(&mut buf).expect("reply");
    assert_eq!(&buf[1..len], b"q");

    // No endpoints: sending is refused, not black-holed.
    n.lb.apply("kube-system/dns:dns", &service(Proto::Udp, &[], None))
        .expect("apply");
    let fresh = n
        .cgroup
        .run(|| n.ns.run(|| UdpSocket::bind("127.0.0.1:0")))
        .expect("bind");
    let err = fresh.send_to(b"q", vip).expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
}

#[test]
fn removing_the_service_and_dropping_the_data_plane_leave_nothing_behind() {
    let mut n = node("cleanup");
    tcp_backends(&n.ns, 2);
    n.lb.apply("default/web:http", &service(Proto::Tcp, &[0, 1], None))
        .expect("apply");
    assert!(n.connect().is_ok());
    assert_eq!(n.lb.entries().expect("entries"), (1, 2, 2));
    n.lb.remove("default/web:http").expect("remove");
    assert_eq!(n.lb.entries().expect("entries"), (0, 0, 0));
    // The VIP is nothing now: this netns has no route to it.
    let err = n.connect().expect_err("no service");
    assert_eq!(err.kind(), ErrorKind::NetworkUnreachable, "{err}");

    n.lb.apply("default/web:http", &service(Proto::Tcp, &[0, 1], None))
        .expect("apply");
    let Node {
        ns,
        cgroup,
        lb,
        _dp,
    } = n;
    drop(lb);
    drop(_dp);
    // Programs detached: the VIP is unreachable again, and the cgroup can go.
    let err = cgroup
        .run(|| ns.run(|| TcpStream::connect(SocketAddrV4::new(VIP, VPORT))))
        .expect_err("detached");
    assert_eq!(err.kind(), ErrorKind::NetworkUnreachable, "{err}");
    let path = cgroup.path.clone();
    drop(cgroup);
    assert!(!path.exists());
}
