//! Pod networking with real namespaces, veths and routes: pods reach each other through
//! their node, addresses never collide and survive an agent restart, and removing pods
//! leaves nothing behind.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::Arc;

use ipnet::Ipv4Net;
use skiff_dataplane::netlink::Netlink;
use skiff_dataplane::netns::Netns;
use skiff_dataplane::podnet::{PodNetwork, pod_mac};

fn cidr() -> Ipv4Net {
    "198.18.1.0/24".parse().expect("cidr")
}

fn links(ns: &Netns) -> Vec<String> {
    ns.block_on(async { Netlink::open()?.links().await })
        .expect("in ns")
        .expect("links")
}

#[test]
fn pods_reach_each_other_through_their_node_and_leave_nothing_behind() {
    let state = tempfile::tempdir().expect("tempdir");
    let node = Netns::create().expect("node ns");
    node.block_on(async { Netlink::open()?.set_up("lo").await })
        .expect("ns")
        .expect("lo");
    let net =
        PodNetwork::new(node.try_clone().expect("dup"), cidr(), state.path()).expect("podnet");

    let pods: Vec<(Netns, Ipv4Addr)> = (0..3)
        .map(|i| {
            let ns = Netns::create().expect("pod ns");
            let iface = net.add(&format!("uid-{i}"), &ns).expect("add pod");
            // What it reports is what the kernel has, and an agent reading it back later
            // (after a restart) gets the same.
            let (index, host_mac) = node
                .block_on(async { Netlink::open()?.index_and_mac(&iface.host_veth).await })
                .expect("ns")
                .expect("host veth");
            assert_eq!(
                (iface.host_ifindex, iface.host_mac.to_vec()),
                (index, host_mac)
            );
            // NodePort replies come back with the node's own address as their source: the
            // host end accepts them (and only that link was changed).
            let accept_local = |link: &str| {
                node.run(|| {
                    std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{link}/accept_local"))
                })
                .expect("ns")
                .expect("sysctl")
            };
            assert_eq!(accept_local(&iface.host_veth).trim(), "1");
            assert_eq!(accept_local("default").trim(), "0");
            let mac = ns
                .block_on(async { Netlink::open()?.mac("eth0").await })
                .expect("ns")
                .expect("eth0");
            assert_eq!(
                mac,
                pod_mac(iface.ip).to_vec(),
                "eth0's address follows its IP"
            );
            assert_eq!(
                net.interface(&format!("uid-{i}"), &ns).expect("read back"),
                Some(iface.clone())
            );
            (ns, iface.ip)
        })
        .collect();
    assert_eq!(net.interface("uid-none", &pods[0].0).expect("read"), None);
    let ips: Vec<Ipv4Addr> = pods.iter().map(|p| p.1).collect();
    assert_eq!(
        ips,
        [
            Ipv4Addr::new(198, 18, 1, 2),
            Ipv4Addr::new(198, 18, 1, 3),
            Ipv4Addr::new(198, 18, 1, 4)
        ]
    );
    // Adding a pod again is idempotent: same address.
    assert_eq!(net.add("uid-1", &pods[1].0).expect("again").ip, ips[1]);

    // Pod 0 serves; pod 2 connects to it: out of its eth0, through the node, into pod 0.
    let listener = pods[0]
        .0
        .run(|| TcpListener::bind((ips[0], 80)))
        .expect("ns")
        .expect("bind");
    let server = std::thread::spawn(move || {
        let (mut c, peer) = listener.accept().expect("accept");
        c.write_all(b"hi").expect("write");
        peer
    });
    let mut c = pods[2]
        .0
        .run(|| TcpStream::connect((ips[0], 80)))
        .expect("ns")
        .expect("pod-to-pod connect");
    let mut buf = [0u8; 2];
    c.read_exact(&mut buf).expect("read");
    assert_eq!(&buf, b"hi");
    assert_eq!(
        server.join().expect("server").ip(),
        ips[2],
        "no NAT between pods"
    );

    // A restarted agent finds every allocation and hands out only free addresses.
    drop(net);
    let net =
        PodNetwork::new(node.try_clone().expect("dup"), cidr(), state.path()).expect("podnet");
    assert_eq!(
        net.allocations().expect("allocations"),
        vec![
            (ips[0], "uid-0".to_string()),
            (ips[1], "uid-1".to_string()),
            (ips[2], "uid-2".to_string())
        ]
    );
    let extra = Netns::create().expect("pod ns");
    assert_eq!(
        net.add("uid-3", &extra).expect("add").ip,
        Ipv4Addr::new(198, 18, 1, 5)
    );

    for i in 0..4 {
        net.remove(&format!("uid-{i}")).expect("remove");
    }
    net.remove("uid-0").expect("removing twice is fine");
    assert!(net.allocations().expect("allocations").is_empty());
    assert_eq!(links(&node), vec!["lo".to_string()], "veths left behind");
    assert_eq!(
        links(&pods[0].0),
        vec!["lo".to_string()],
        "pod eth0 left behind"
    );
}

#[test]
fn concurrent_allocations_never_share_an_address() {
    let state = tempfile::tempdir().expect("tempdir");
    let nets: Vec<Arc<PodNetwork>> = (0..2)
        .map(|_| {
            Arc::new(
                PodNetwork::new(Netns::create().expect("node"), cidr(), state.path())
                    .expect("podnet"),
            )
        })
        .collect();
    // Both "agents" plumb 20 pods each at the same time from the same state directory.
    let handles: Vec<_> = nets
        .iter()
        .enumerate()
        .map(|(n, net)| {
            let net = net.clone();
            std::thread::spawn(move || {
                (0..20)
                    .map(|i| {
                        let ns = Netns::create().expect("pod ns");
                        net.add(&format!("n{n}-pod{i}"), &ns).expect("add").ip
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all: Vec<Ipv4Addr> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("thread"))
        .collect();
    all.sort();
    let before = all.len();
    all.dedup();
    assert_eq!(all.len(), before, "an address was handed out twice");
    assert_eq!(all.len(), 40);
}
