//! End to end, with real packets: two nodes (network namespaces on an underlay bridge),
//! three pods each serving TCP and UDP echo, a real API server, each node's data plane
//! synced from it (socket-LB in the node's cgroup, XDP on its uplink, TC on pod veths),
//! and an outside client namespace reaching the NodePort.

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::json;
use skiff_client::DeleteParams;
use skiff_dataplane::localnet::{Host, NodeHost, Underlay};
use skiff_dataplane::maps::NodeConfig;
use skiff_dataplane::netns::Netns;
use skiff_dataplane::podnet::PodNetwork;
use skiff_dataplane::{DataPlane, LoadBalancer, ServiceSync};
use support::Cgroup2;

const PODS_PER_NODE: usize = 3;
const PORT: u16 = 8080;

struct Node {
    host: NodeHost,
    cgroup: Cgroup2,
    _pods: PodNetwork,
    /// Serving pods: namespace and address.
    servers: Vec<(Netns, Ipv4Addr)>,
    /// A pod that only makes requests.
    client: Netns,
    lb: Arc<Mutex<LoadBalancer>>,
    _sync: ServiceSync,
    _dp: DataPlane,
    _state: tempfile::TempDir,
}

struct Cluster {
    api: support::api::ApiServer,
    nodes: Vec<Node>,
    outside: Host,
    _underlay: Underlay,
}

/// TCP: greet with the pod's address, then echo. UDP: answer with the address + payload.
fn serve(ns: &Netns, ip: Ipv4Addr) {
    let (tcp, udp) = ns
        .run(|| {
            (
                TcpListener::bind((Ipv4Addr::UNSPECIFIED, PORT)).expect("bind tcp"),
                UdpSocket::bind((Ipv4Addr::UNSPECIFIED, PORT)).expect("bind udp"),
            )
        })
        .expect("in pod");
    std::thread::spawn(move || {
        for conn in tcp.incoming() {
            let Ok(mut c) = conn else { return };
            std::thread::spawn(move || {
                let _ = c.write_all(&ip.octets());
                let mut buf = [0u8; 256];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 || c.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        while let Ok((n, from)) = udp.recv_from(&mut buf) {
            let mut reply = ip.octets().to_vec();
            reply.extend_from_slice(&buf[..n]);
            let _ = udp.send_to(&reply, from);
        }
    });
}

async fn cluster(mode: skiff_dataplane::XdpAttach) -> Cluster {
    let api = support::api::start().await;
    let underlay = Underlay::create().expect("underlay");
    let hosts: Vec<NodeHost> = (0..2).map(|i| underlay.node(i).expect("node")).collect();
    let mut nodes = Vec::new();
    for (i, host) in hosts.iter().enumerate() {
        let state = tempfile::tempdir().expect("state dir");
        let pods = PodNetwork::new(
            host.host.ns.try_clone().expect("node ns"),
            host.pod_cidr,
            state.path(),
        )
        .expect("pod network");
        for (j, other) in hosts.iter().enumerate() {
            if i != j {
                pods.route_to_node(other.pod_cidr, other.host.ip)
                    .expect("route");
            }
        }
        let mut servers = Vec::new();
        let mut dp = DataPlane::load().expect("load");
        let mut ifaces = Vec::new();
        for k in 0..=PODS_PER_NODE {
            let ns = Netns::create().expect("pod ns");
            let iface = pods
                .add(&format!("pod-{i}-{k}"), &ns)
                .expect("pod plumbing");
            servers.push((ns, iface.ip));
            ifaces.push(iface);
        }
        let (client, _) = servers.pop().expect("client pod");
        for (ns, ip) in &servers {
            serve(ns, *ip);
        }
        let cgroup = Cgroup2::new(&format!("node{i}"));
        dp.attach_cgroup(&cgroup.path).expect("cgroup");
        host.host
            .ns
            .run(|| {
                dp.attach_xdp(&host.host.uplink, mode)?;
                for iface in &ifaces {
                    dp.attach_tc(&iface.host_veth)?;
                }
                anyhow::Ok(())
            })
            .expect("ns")
            .expect("attach in node");
        underlay
            .ns
            .run(|| dp.attach_xdp_pass(&host.host.port))
            .expect("ns")
            .expect("attach pass");
        let mut lb = dp.load_balancer().expect("maps");
        lb.set_node(NodeConfig::new(
            host.host.ip,
            host.pod_cidr.network(),
            host.pod_cidr.prefix_len(),
        ))
        .expect("node config");
        // As the agent does: the pods are registered for XDP's direct path into them.
        for iface in &ifaces {
            lb.add_local_pod(iface.ip, iface.local_pod())
                .expect("local pod");
        }
        let lb = Arc::new(Mutex::new(lb));
        let sync = ServiceSync::start(&api.client, lb.clone(), Some(host.host.ip));
        nodes.push((pods, servers, client, cgroup, lb, sync, dp, state));
    }
    let outside = underlay.outside(0).expect("outside host");
    let nodes = hosts
        .into_iter()
        .zip(nodes)
        .map(
            |(host, (pods, servers, client, cgroup, lb, sync, dp, state))| Node {
                host,
                cgroup,
                _pods: pods,
                servers,
                client,
                lb,
                _sync: sync,
                _dp: dp,
                _state: state,
            },
        )
        .collect();
    Cluster {
        api,
        nodes,
        outside,
        _underlay: underlay,
    }
}

impl Cluster {
    fn backends(&self) -> Vec<Ipv4Addr> {
        self.nodes
            .iter()
            .flat_map(|n| n.servers.iter().map(|s| s.1))
            .collect()
    }

    async fn create_service(&self, affinity: bool) -> (Ipv4Addr, u16) {
        let mut spec = json!({"type": "NodePort", "selector": {"app": "echo"},
                              "ports": [{"port": 80, "targetPort": PORT, "protocol": "TCP", "name": "tcp"},
                                        {"port": 80, "targetPort": PORT, "protocol": "UDP", "name": "udp"}]});
        if affinity {
            spec["sessionAffinity"] = json!("ClientIP");
        }
        let svc = json!({"apiVersion": "v1", "kind": "Service",
                         "metadata": {"name": "echo", "namespace": "default"}, "spec": spec});
        let created = self
            .api
            .client
            .create("services", "default", Bytes::from(svc.to_string()))
            .await
            .expect("create service");
        let v: serde_json::Value = serde_json::from_slice(&created).expect("json");
        let ip = v["spec"]["clusterIP"]
            .as_str()
            .expect("clusterIP")
            .parse()
            .expect("ip");
        let np = v["spec"]["ports"][0]["nodePort"]
            .as_u64()
            .expect("nodePort") as u16;
        self.set_endpoints(&self.backends()).await;
        (ip, np)
    }

    async fn set_endpoints(&self, ready: &[Ipv4Addr]) {
        let endpoints: Vec<_> = ready
            .iter()
            .map(|ip| json!({"addresses": [ip.to_string()], "conditions": {"ready": true}}))
            .collect();
        let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "echo-1", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "echo"}},
            "addressType": "IPv4",
            "ports": [{"name": "tcp", "port": PORT, "protocol": "TCP"},
                      {"name": "udp", "port": PORT, "protocol": "UDP"}],
            "endpoints": endpoints});
        let c = &self.api.client;
        match c
            .create("endpointslices", "default", Bytes::from(slice.to_string()))
            .await
        {
            Ok(_) => {}
            Err(_) => {
                let patch = json!({"endpoints": slice["endpoints"]});
                c.patch(
                    "endpointslices",
                    "default",
                    "echo-1",
                    Bytes::from(patch.to_string()),
                    "",
                )
                .await
                .expect("patch slice");
            }
        }
    }

    /// Waits until every node's maps send `vip` to exactly `backends`.
    async fn wait_programmed(&self, vip: Ipv4Addr, backends: &[Ipv4Addr]) {
        let mut want: Vec<(Ipv4Addr, u16)> = backends.iter().map(|b| (*b, PORT)).collect();
        want.sort();
        let deadline = Instant::now() + Duration::from_secs(20);
        for n in &self.nodes {
            loop {
                let dump = n.lb.lock().dump().expect("dump");
                let got: Vec<_> = dump
                    .iter()
                    .filter(|(f, _)| f.addr == vip && f.proto == skiff_dataplane::Proto::Tcp)
                    .map(|(_, b)| b.clone())
                    .collect();
                if got.len() == 1 && got[0] == want {
                    break;
                }
                assert!(Instant::now() < deadline, "not programmed: {got:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

impl Node {
    /// Connects from this node's client pod (a socket of the node's cgroup) and returns
    /// the greeting backend.
    fn connect(&self, to: SocketAddrV4) -> std::io::Result<(Ipv4Addr, TcpStream)> {
        let mut s = self.cgroup.run(|| {
            self.client
                .run(|| TcpStream::connect_timeout(&SocketAddr::V4(to), Duration::from_secs(2)))
                .expect("in pod")
        })?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut who = [0u8; 4];
        s.read_exact(&mut who)?;
        Ok((Ipv4Addr::from(who), s))
    }

    fn spread(&self, to: SocketAddrV4, n: usize) -> BTreeMap<Ipv4Addr, usize> {
        let mut seen = BTreeMap::new();
        for _ in 0..n {
            let (who, _) = self.connect(to).expect("connect");
            *seen.entry(who).or_default() += 1;
        }
        seen
    }
}

/// Connects from the outside host; returns the greeting backend.
fn outside_connect(outside: &Host, to: SocketAddrV4) -> std::io::Result<Ipv4Addr> {
    let mut s = outside
        .ns
        .run(|| TcpStream::connect_timeout(&SocketAddr::V4(to), Duration::from_secs(2)))
        .expect("in outside ns")?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut who = [0u8; 4];
    s.read_exact(&mut who)?;
    s.write_all(b"ping")?;
    let mut echo = [0u8; 4];
    s.read_exact(&mut echo)?;
    assert_eq!(&echo, b"ping");
    Ok(Ipv4Addr::from(who))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_spreads_over_both_nodes_follows_its_endpoints_and_serves_nodeports() {
    let c = cluster(skiff_dataplane::XdpAttach::Native).await;
    let (vip, node_port) = c.create_service(false).await;
    let backends = c.backends();
    c.wait_programmed(vip, &backends).await;
    let svc = SocketAddrV4::new(vip, 80);
    let n0 = &c.nodes[0];

    // 3,000 connections from a pod over 6 backends on 2 nodes: 500 +- 5 sigma (~20) each.
    let seen = n0.spread(svc, 3000);
    assert_eq!(seen.len(), 6, "{seen:?}");
    for (b, count) in &seen {
        assert!(
            (400..=600).contains(count),
            "{b}: {count} of 3000 ({seen:?})"
        );
    }

    // UDP: the reply comes from the service address.
    let sock = n0
        .cgroup
        .run(|| {
            n0.client
                .run(|| UdpSocket::bind("0.0.0.0:0"))
                .expect("in pod")
        })
        .expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    sock.send_to(b"dns?", SocketAddr::V4(svc)).expect("send");
    let mut buf = [0u8; 64];
    let (len, from) = sock.recv_from(&mut buf).expect("udp reply");
    assert_eq!(from, SocketAddr::V4(svc));
    assert_eq!(&buf[4..len], b"dns?");

    // NodePort from outside the cluster, through XDP on each node's uplink: backends on
    // both nodes answer (local ones directly, remote ones through SNAT), and replies come
    // back to the client.
    for n in &c.nodes {
        let to = SocketAddrV4::new(n.host.host.ip, node_port);
        let mut answered = BTreeMap::new();
        for _ in 0..120 {
            let who = outside_connect(&c.outside, to).expect("NodePort connect");
            *answered.entry(who).or_insert(0) += 1;
        }
        let nodes_seen: std::collections::BTreeSet<u8> =
            answered.keys().map(|ip| ip.octets()[2]).collect();
        assert_eq!(nodes_seen.len(), 2, "via {}: {answered:?}", n.host.name);
    }

    // A backend removed from the EndpointSlice: new connections avoid it, while a
    // connection already open to it keeps working.
    let victim = backends[0];
    let mut open = None;
    for _ in 0..300 {
        let (who, s) = n0.connect(svc).expect("connect");
        if who == victim {
            open = Some(s);
            break;
        }
    }
    let mut open = open.expect("a connection to the victim");
    c.set_endpoints(&backends[1..]).await;
    c.wait_programmed(vip, &backends[1..]).await;
    let seen = n0.spread(svc, 300);
    assert!(!seen.contains_key(&victim), "{seen:?}");
    open.write_all(b"still").expect("write");
    let mut echo = [0u8; 5];
    open.read_exact(&mut echo)
        .expect("echo on the old connection");
    assert_eq!(&echo, b"still");

    // Deleting the service removes every entry, on every node.
    c.api
        .client
        .delete("services", "default", "echo", &DeleteParams::default())
        .await
        .expect("delete");
    let deadline = Instant::now() + Duration::from_secs(20);
    for n in &c.nodes {
        while n.lb.lock().entries().expect("entries") != (0, 0, 0) {
            assert!(Instant::now() < deadline, "entries left behind");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The VIP is nothing now: the node's `unreachable` route for the service CIDR answers
    // the pod with an ICMP error at once (no silent drop, no path off the node).
    let err = n0.connect(svc).expect_err("no service");
    assert_eq!(err.kind(), std::io::ErrorKind::HostUnreachable, "{err}");
    drop(c.nodes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_affinity_pins_a_client_pod_to_one_backend() {
    let c = cluster(skiff_dataplane::XdpAttach::Native).await;
    let (vip, _) = c.create_service(true).await;
    c.wait_programmed(vip, &c.backends()).await;
    let seen = c.nodes[1].spread(SocketAddrV4::new(vip, 80), 50);
    assert_eq!(seen.len(), 1, "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodeports_work_with_generic_xdp_too() {
    let c = cluster(skiff_dataplane::XdpAttach::Generic).await;
    let (vip, node_port) = c.create_service(false).await;
    c.wait_programmed(vip, &c.backends()).await;
    for n in &c.nodes {
        let to = SocketAddrV4::new(n.host.host.ip, node_port);
        let mut nodes_seen = std::collections::BTreeSet::new();
        for _ in 0..60 {
            let who = outside_connect(&c.outside, to).expect("NodePort connect");
            nodes_seen.insert(who.octets()[2]);
        }
        assert_eq!(nodes_seen.len(), 2, "via {}: {nodes_seen:?}", n.host.name);
    }
}
