//! The XDP and TC programs, packet by packet, through BPF_PROG_TEST_RUN against real maps.
//!
//! Each test runs on a thread inside a private network namespace, so the programs' FIB
//! lookups see no routes: a packet that would be forwarded off the node comes back as
//! XDP_PASS, and nothing leaves the test.

mod support;

use std::net::Ipv4Addr;

use etherparse::PacketBuilder;
use proptest::prelude::*;
use skiff_dataplane::maps::{LocalPod, NodeConfig, SVC_SCOPE_CLUSTER, SVC_SCOPE_NODEPORT};
use skiff_dataplane::{DataPlane, Endpoint, Frontend, LbService, LoadBalancer, Proto};
use support::Netns;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;
const TC_ACT_OK: u32 = 0;

const NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const OTHER_NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
const LOCAL_POD: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 10);
const LOCAL_POD_2: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 11);
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 10);
const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
const LOCAL_NODEPORT: u16 = 30080;
const REMOTE_NODEPORT: u16 = 30081;
const EMPTY_NODEPORT: u16 = 30082;

struct Node {
    dp: DataPlane,
    lb: LoadBalancer,
    _ns: Netns,
}

fn endpoint(addr: Ipv4Addr) -> Endpoint {
    Endpoint {
        addr,
        port: 8080,
        ready: true,
        serving: true,
        terminating: false,
    }
}

fn frontend(addr: Ipv4Addr, port: u16, proto: Proto, scope: u8) -> Frontend {
    Frontend {
        addr,
        port,
        proto,
        scope,
    }
}

/// A node with three services: NodePort 30080 (two local pods, also ClusterIP VIP:80),
/// NodePort 30081 (one pod on another node), NodePort 30082 (no endpoints); TCP and UDP.
fn node() -> Node {
    let ns = Netns::new();
    ns.enter();
    let mut dp = DataPlane::load().expect("load");
    let mut lb = dp.load_balancer().expect("maps");
    lb.set_node(NodeConfig::new(NODE, Ipv4Addr::new(198, 18, 1, 0), 24))
        .expect("node config");
    for proto in [Proto::Tcp, Proto::Udp] {
        lb.apply(
            &format!("default/local:{proto:?}"),
            &LbService {
                frontends: vec![
                    frontend(NODE, LOCAL_NODEPORT, proto, SVC_SCOPE_NODEPORT),
                    frontend(VIP, 80, proto, SVC_SCOPE_CLUSTER),
                ],
                endpoints: vec![endpoint(LOCAL_POD), endpoint(LOCAL_POD_2)],
                affinity_timeout: None,
            },
        )
        .expect("apply");
        lb.apply(
            &format!("default/remote:{proto:?}"),
            &LbService {
                frontends: vec![frontend(NODE, REMOTE_NODEPORT, proto, SVC_SCOPE_NODEPORT)],
                endpoints: vec![endpoint(REMOTE_POD)],
                affinity_timeout: None,
            },
        )
        .expect("apply");
        lb.apply(
            &format!("default/empty:{proto:?}"),
            &LbService {
                frontends: vec![frontend(NODE, EMPTY_NODEPORT, proto, SVC_SCOPE_NODEPORT)],
                endpoints: vec![],
                affinity_timeout: None,
            },
        )
        .expect("apply");
    }
    Node { dp, lb, _ns: ns }
}

const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];

fn tcp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(src.0.octets(), dst.0.octets(), 64)
        .tcp(src.1, dst.1, 1000, 65535)
        .syn();
    let mut out = Vec::new();
    b.write(&mut out, payload).expect("build");
    out
}

fn udp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(src.0.octets(), dst.0.octets(), 64)
        .udp(src.1, dst.1);
    let mut out = Vec::new();
    b.write(&mut out, payload).expect("build");
    out
}

// ---- reading packets back -----------------------------------------------------------

fn ihl(p: &[u8]) -> usize {
    usize::from(p[14] & 0x0f) * 4
}

fn addr(p: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(p[at], p[at + 1], p[at + 2], p[at + 3])
}

fn src(p: &[u8]) -> (Ipv4Addr, u16) {
    let l4 = 14 + ihl(p);
    (addr(p, 26), u16::from_be_bytes([p[l4], p[l4 + 1]]))
}

fn dst(p: &[u8]) -> (Ipv4Addr, u16) {
    let l4 = 14 + ihl(p);
    (addr(p, 30), u16::from_be_bytes([p[l4 + 2], p[l4 + 3]]))
}

fn sum16(data: &[u8], mut sum: u32) -> u32 {
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += u32::from(word);
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The IPv4 header checksum and the TCP/UDP checksum (over the pseudo-header) both verify.
fn checksums_valid(p: &[u8]) -> bool {
    let ip = &p[14..14 + ihl(p)];
    if fold(sum16(ip, 0)) != 0xffff {
        return false;
    }
    let total = usize::from(u16::from_be_bytes([p[16], p[17]]));
    let l4 = &p[14 + ihl(p)..14 + total];
    let proto = p[23];
    if proto == 17 && l4[6] == 0 && l4[7] == 0 {
        return true;
    }
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&p[26..34]);
    pseudo.extend_from_slice(&[0, proto]);
    pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    fold(sum16(l4, sum16(&pseudo, 0))) == 0xffff
}

// ---- XDP: NodePort --------------------------------------------------------------------

#[test]
fn nodeport_to_a_local_backend_is_translated_and_passed_to_the_stack() {
    let mut n = node();
    let syn = tcp((CLIENT, 40000), (NODE, LOCAL_NODEPORT), b"");
    let v = n.dp.run_xdp(&syn).expect("run");
    assert_eq!(v.action, XDP_PASS);
    let (to, port) = dst(&v.packet);
    assert!([LOCAL_POD, LOCAL_POD_2].contains(&to), "{to}");
    assert_eq!(port, 8080);
    assert_eq!(
        src(&v.packet),
        (CLIENT, 40000),
        "no SNAT for a local backend"
    );
    assert!(checksums_valid(&v.packet));

    // The next packet of the flow goes to the same backend (conntrack), whatever Maglev
    // would say after a change.
    let ack = tcp((CLIENT, 40000), (NODE, LOCAL_NODEPORT), b"hello");
    let v2 = n.dp.run_xdp(&ack).expect("run");
    assert_eq!(dst(&v2.packet), (to, 8080));
    assert!(checksums_valid(&v2.packet));

    // The pod's reply leaves through its veth: TC gives it the NodePort's address back.
    let reply = tcp((to, 8080), (CLIENT, 40000), b"hi");
    let r = n.dp.run_tc(&reply).expect("run");
    assert_eq!(r.action, TC_ACT_OK);
    assert_eq!(src(&r.packet), (NODE, LOCAL_NODEPORT));
    assert_eq!(dst(&r.packet), (CLIENT, 40000));
    assert!(checksums_valid(&r.packet));

    let c =
        n.lb.counters("default/local:Tcp")
            .expect("read")
            .expect("known");
    assert_eq!(c.connections, 1);
    assert_eq!(c.packets, 3);
}

#[test]
fn nodeport_to_a_registered_local_pod_is_redirected_into_its_veth() {
    let mut n = node();
    let pod = |ip: Ipv4Addr, ifindex: u32| LocalPod {
        ifindex,
        mac: skiff_dataplane::podnet::pod_mac(ip),
        host_mac: [0x02, 0, 0, 0, 0x0e, ifindex as u8],
    };
    // BPF_PROG_TEST_RUN reports the verdict; the redirect target needs no real device.
    n.lb.add_local_pod(LOCAL_POD, pod(LOCAL_POD, 41))
        .expect("register");
    n.lb.add_local_pod(LOCAL_POD_2, pod(LOCAL_POD_2, 42))
        .expect("register");
    let syn = tcp((CLIENT, 40001), (NODE, LOCAL_NODEPORT), b"");
    let v = n.dp.run_xdp(&syn).expect("run");
    assert_eq!(v.action, XDP_REDIRECT);
    let (to, port) = dst(&v.packet);
    assert!([LOCAL_POD, LOCAL_POD_2].contains(&to), "{to}");
    assert_eq!(port, 8080);
    assert_eq!(src(&v.packet), (CLIENT, 40001), "no SNAT");
    let expected = pod(to, if to == LOCAL_POD { 41 } else { 42 });
    assert_eq!(v.packet[0..6], expected.mac, "to the pod's eth0");
    assert_eq!(v.packet[6..12], expected.host_mac, "from the host side");
    assert_eq!(v.packet[14 + 8], 63, "TTL decremented, as forwarding does");
    assert!(checksums_valid(&v.packet));

    // A TTL that would expire goes to the stack, which answers with ICMP.
    let mut last_hop = tcp((CLIENT, 40001), (NODE, LOCAL_NODEPORT), b"x");
    set_ttl(&mut last_hop, 1);
    assert_eq!(n.dp.run_xdp(&last_hop).expect("run").action, XDP_PASS);

    // Forgotten (the pod went): the FIB decides again (no route here: to the stack).
    n.lb.remove_local_pod(LOCAL_POD).expect("forget");
    n.lb.remove_local_pod(LOCAL_POD_2).expect("forget");
    n.lb.remove_local_pod(LOCAL_POD_2)
        .expect("forgetting twice is fine");
    let v =
        n.dp.run_xdp(&tcp((CLIENT, 40001), (NODE, LOCAL_NODEPORT), b"y"))
            .expect("run");
    assert_eq!(v.action, XDP_PASS);
    assert_eq!(dst(&v.packet), (to, 8080), "still translated (conntrack)");
}

/// Sets an IPv4 packet's TTL, keeping its header checksum right.
fn set_ttl(p: &mut [u8], ttl: u8) {
    p[14 + 8] = ttl;
    p[14 + 10] = 0;
    p[14 + 11] = 0;
    let c = !fold(sum16(&p[14..14 + ihl(p)], 0));
    p[14 + 10..14 + 12].copy_from_slice(&c.to_be_bytes());
}

#[test]
fn nodeport_to_a_remote_backend_is_snated_and_its_reply_translated_back() {
    let mut n = node();
    let syn = tcp((CLIENT, 40001), (NODE, REMOTE_NODEPORT), b"");
    let v = n.dp.run_xdp(&syn).expect("run");
    // No route in this namespace: the FIB lookup fails and the stack gets it.
    assert!([XDP_PASS, XDP_TX, XDP_REDIRECT].contains(&v.action));
    assert_eq!(dst(&v.packet), (REMOTE_POD, 8080));
    let (snat, snat_port) = src(&v.packet);
    assert_eq!(snat, NODE, "source NATed to the node");
    assert!(checksums_valid(&v.packet));

    let reply = tcp((REMOTE_POD, 8080), (NODE, snat_port), b"pong");
    let r = n.dp.run_xdp(&reply).expect("run");
    assert_eq!(src(&r.packet), (NODE, REMOTE_NODEPORT));
    assert_eq!(dst(&r.packet), (CLIENT, 40001));
    assert!(checksums_valid(&r.packet));
}

#[test]
fn udp_nodeport_flows_are_translated_both_ways() {
    let mut n = node();
    let q = udp((CLIENT, 5353), (NODE, REMOTE_NODEPORT), b"query");
    let v = n.dp.run_xdp(&q).expect("run");
    assert_eq!(dst(&v.packet), (REMOTE_POD, 8080));
    assert!(checksums_valid(&v.packet));
    let (_, snat_port) = src(&v.packet);
    let a = udp((REMOTE_POD, 8080), (NODE, snat_port), b"answer");
    let r = n.dp.run_xdp(&a).expect("run");
    assert_eq!(src(&r.packet), (NODE, REMOTE_NODEPORT));
    assert_eq!(dst(&r.packet), (CLIENT, 5353));
    assert!(checksums_valid(&r.packet));
}

#[test]
fn a_nodeport_without_endpoints_goes_to_the_stack_untouched() {
    // Nothing listens on the NodePort there: the kernel answers RST / port unreachable.
    let mut n = node();
    for p in [
        tcp((CLIENT, 40002), (NODE, EMPTY_NODEPORT), b""),
        udp((CLIENT, 40002), (NODE, EMPTY_NODEPORT), b"x"),
    ] {
        let v = n.dp.run_xdp(&p).expect("run");
        assert_eq!(v.action, XDP_PASS);
        assert_eq!(v.packet, p);
    }
}

#[test]
fn traffic_to_no_service_is_untouched() {
    let mut n = node();
    for p in [
        tcp((CLIENT, 40003), (NODE, 22), b"ssh"),
        udp((CLIENT, 40003), (OTHER_NODE, LOCAL_NODEPORT), b"x"),
        tcp((CLIENT, 40003), (LOCAL_POD, 8080), b"direct"),
    ] {
        let v = n.dp.run_xdp(&p).expect("run");
        assert_eq!((v.action, &v.packet), (XDP_PASS, &p));
        let t = n.dp.run_tc(&p).expect("run");
        assert_eq!((t.action, &t.packet), (TC_ACT_OK, &p));
    }
}

#[test]
fn non_ipv4_and_truncated_packets_pass_untouched() {
    let mut n = node();
    let full = tcp((CLIENT, 40004), (NODE, LOCAL_NODEPORT), b"");
    let mut arp = full.clone();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    let mut ipv6 = full.clone();
    ipv6[12..14].copy_from_slice(&[0x86, 0xdd]);
    let cut_in_ip = full[..14 + 12].to_vec();
    let cut_in_tcp = full[..14 + 20 + 10].to_vec();
    for p in [arp, ipv6, cut_in_ip, cut_in_tcp] {
        let v = n.dp.run_xdp(&p).expect("run");
        assert_eq!((v.action, &v.packet), (XDP_PASS, &p));
        if let Some(t) = tc_run(&mut n.dp, &p) {
            assert_eq!((t.action, &t.packet), (TC_ACT_OK, &p));
        }
    }
}

/// Inserts IPv4 options (NOPs and an end-of-list) and fixes the header.
fn with_ip_options(mut p: Vec<u8>, words: usize) -> Vec<u8> {
    let options = vec![1u8; words * 4 - 1].into_iter().chain([0u8]);
    let at = 14 + 20;
    p.splice(at..at, options);
    p[14] = 0x40 | (5 + words as u8);
    let total = u16::from_be_bytes([p[16], p[17]]) + (words * 4) as u16;
    p[16..18].copy_from_slice(&total.to_be_bytes());
    p[24..26].copy_from_slice(&[0, 0]);
    let c = !fold(sum16(&p[14..14 + 20 + words * 4], 0));
    p[24..26].copy_from_slice(&c.to_be_bytes());
    p
}

#[test]
fn packets_with_ip_options_are_translated_at_the_right_offsets() {
    let mut n = node();
    let p = with_ip_options(tcp((CLIENT, 40005), (NODE, REMOTE_NODEPORT), b"opt"), 2);
    assert!(checksums_valid(&p));
    let v = n.dp.run_xdp(&p).expect("run");
    assert_eq!(dst(&v.packet), (REMOTE_POD, 8080));
    assert_eq!(&v.packet[34..42], &p[34..42], "options kept");
    assert!(checksums_valid(&v.packet));
}

#[test]
fn fragments_follow_their_first_fragment() {
    let mut n = node();
    // A UDP datagram in two fragments, as the client's stack would cut it.
    let whole = udp((CLIENT, 40006), (NODE, REMOTE_NODEPORT), &[7u8; 64]);
    let ip_len = 20;
    let first_payload = 8 + 32; // UDP header + 32 bytes (a multiple of 8)
    let mut first = whole[..14 + ip_len + first_payload].to_vec();
    first[20..22].copy_from_slice(&0x2000u16.to_be_bytes()); // MF, offset 0
    first[16..18].copy_from_slice(&((ip_len + first_payload) as u16).to_be_bytes());
    let mut second = whole[..14 + ip_len].to_vec();
    second.extend_from_slice(&whole[14 + ip_len + first_payload..]);
    second[20..22].copy_from_slice(&((first_payload / 8) as u16).to_be_bytes());
    let second_len = (second.len() - 14) as u16;
    second[16..18].copy_from_slice(&second_len.to_be_bytes());
    for f in [&mut first, &mut second] {
        f[24..26].copy_from_slice(&[0, 0]);
        let c = !fold(sum16(&f[14..34], 0));
        f[24..26].copy_from_slice(&c.to_be_bytes());
    }

    let v1 = n.dp.run_xdp(&first).expect("run");
    assert_eq!(addr(&v1.packet, 30), REMOTE_POD);
    assert_eq!(addr(&v1.packet, 26), NODE);
    let v2 = n.dp.run_xdp(&second).expect("run");
    assert_eq!(
        addr(&v2.packet, 30),
        REMOTE_POD,
        "later fragment follows the first"
    );
    assert_eq!(addr(&v2.packet, 26), NODE);
    assert_eq!(fold(sum16(&v2.packet[14..34], 0)), 0xffff, "IP checksum");
    assert_eq!(&v2.packet[34..], &second[34..], "payload untouched");

    // A later fragment of a datagram we never saw passes untouched.
    let mut stray = second.clone();
    stray[18..20].copy_from_slice(&[0xab, 0xcd]); // another IP id
    let v3 = n.dp.run_xdp(&stray).expect("run");
    assert_eq!((v3.action, &v3.packet), (XDP_PASS, &stray));
}

#[test]
fn icmp_errors_about_a_snated_flow_reach_the_client() {
    let mut n = node();
    let syn = tcp((CLIENT, 40007), (NODE, REMOTE_NODEPORT), b"");
    let sent = n.dp.run_xdp(&syn).expect("run").packet;
    let (_, snat_port) = src(&sent);

    // The other node says "fragmentation needed" about the packet we sent it.
    let quoted = &sent[14..14 + 20 + 8];
    let mut icmp = vec![3u8, 4, 0, 0, 0, 0, 0x05, 0xdc];
    icmp.extend_from_slice(quoted);
    let c = !fold(sum16(&icmp, 0));
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let b = PacketBuilder::ethernet2(MAC_A, MAC_B).ipv4(OTHER_NODE.octets(), NODE.octets(), 64);
    let mut err = Vec::new();
    b.write(&mut err, etherparse::IpNumber::ICMP, &icmp)
        .expect("build");

    let v = n.dp.run_xdp(&err).expect("run");
    let p = &v.packet;
    assert_eq!(addr(p, 30), CLIENT, "outer destination is the client");
    assert_eq!(fold(sum16(&p[14..34], 0)), 0xffff, "outer IP checksum");
    let icmp_out = &p[34..];
    assert_eq!(fold(sum16(icmp_out, 0)), 0xffff, "ICMP checksum");
    let inner = &icmp_out[8..];
    assert_eq!(fold(sum16(&inner[..20], 0)), 0xffff, "inner IP checksum");
    assert_eq!(addr(inner, 12), CLIENT);
    assert_eq!(addr(inner, 16), NODE);
    assert_eq!(u16::from_be_bytes([inner[20], inner[21]]), 40007);
    assert_eq!(
        u16::from_be_bytes([inner[22], inner[23]]),
        REMOTE_NODEPORT,
        "the client sees its own packet quoted"
    );
    assert_ne!(snat_port, 0);
}

#[test]
fn client_ip_affinity_sends_every_flow_of_a_client_to_one_backend() {
    let mut n = node();
    let sticky = LbService {
        frontends: vec![frontend(NODE, 30090, Proto::Tcp, SVC_SCOPE_NODEPORT)],
        endpoints: (10..20)
            .map(|i| endpoint(Ipv4Addr::new(198, 18, 1, i)))
            .collect(),
        affinity_timeout: Some(10_800),
    };
    n.lb.apply("default/sticky:Tcp", &sticky).expect("apply");
    let backends: std::collections::BTreeSet<Ipv4Addr> = (0..50)
        .map(|p| {
            let syn = tcp((CLIENT, 41000 + p), (NODE, 30090), b"");
            dst(&n.dp.run_xdp(&syn).expect("run").packet).0
        })
        .collect();
    assert_eq!(backends.len(), 1, "{backends:?}");

    // Without affinity the same client's flows spread.
    let spread = LbService {
        affinity_timeout: None,
        ..sticky
    };
    n.lb.apply("default/sticky:Tcp", &spread).expect("apply");
    let backends: std::collections::BTreeSet<Ipv4Addr> = (0..50)
        .map(|p| {
            let syn = tcp((CLIENT, 42000 + p), (NODE, 30090), b"");
            dst(&n.dp.run_xdp(&syn).expect("run").packet).0
        })
        .collect();
    assert!(backends.len() > 3, "{backends:?}");
}

// ---- TC: ClusterIP per packet ---------------------------------------------------------

#[test]
fn tc_translates_clusterip_packets_the_socket_hooks_missed() {
    let mut n = node();
    let pod = Ipv4Addr::new(198, 18, 1, 20);
    let p = tcp((pod, 45000), (VIP, 80), b"GET /");
    let v = n.dp.run_tc(&p).expect("run");
    assert_eq!(v.action, TC_ACT_OK);
    let (to, port) = dst(&v.packet);
    assert!([LOCAL_POD, LOCAL_POD_2].contains(&to));
    assert_eq!(port, 8080);
    assert!(checksums_valid(&v.packet));

    // The backend's reply, leaving through its own veth, comes from the VIP again.
    let r =
        n.dp.run_tc(&tcp((to, 8080), (pod, 45000), b"200"))
            .expect("run");
    assert_eq!(src(&r.packet), (VIP, 80));
    assert!(checksums_valid(&r.packet));

    // UDP with a zero (absent) checksum keeps it absent.
    let mut q = udp((pod, 45001), (VIP, 80), b"q");
    q[40..42].copy_from_slice(&[0, 0]);
    let v = n.dp.run_tc(&q).expect("run");
    assert_eq!(&v.packet[40..42], &[0, 0]);
    assert!([LOCAL_POD, LOCAL_POD_2].contains(&dst(&v.packet).0));
}

#[test]
fn removing_a_backend_purges_its_conntrack_entries() {
    let mut n = node();
    let syn = tcp((CLIENT, 40008), (NODE, REMOTE_NODEPORT), b"");
    assert_eq!(dst(&n.dp.run_xdp(&syn).expect("run").packet).0, REMOTE_POD);
    n.lb.apply(
        "default/remote:Tcp",
        &LbService {
            frontends: vec![frontend(
                NODE,
                REMOTE_NODEPORT,
                Proto::Tcp,
                SVC_SCOPE_NODEPORT,
            )],
            endpoints: vec![endpoint(LOCAL_POD)],
            affinity_timeout: None,
        },
    )
    .expect("apply");
    // The same flow is chosen again, now towards the remaining backend.
    let again = n.dp.run_xdp(&syn).expect("run");
    assert_eq!(dst(&again.packet), (LOCAL_POD, 8080));
    assert_eq!(src(&again.packet), (CLIENT, 40008), "local now: no SNAT");
}

// ---- arbitrary input ------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Arbitrary bytes: a valid verdict, and a packet that is not a translatable flow to
    /// one of our services comes out exactly as it went in.
    #[test]
    fn arbitrary_packets_get_a_verdict_and_unknown_ones_stay_unchanged(
        mut bytes in proptest::collection::vec(any::<u8>(), 14..160),
        ipv4 in any::<bool>(),
        to_nodeport in any::<bool>(),
    ) {
        if ipv4 {
            bytes[12..14].copy_from_slice(&[0x08, 0x00]);
        }
        if to_nodeport && bytes.len() >= 34 {
            bytes[30..34].copy_from_slice(&NODE.octets());
        }
        let (v, t) = FUZZ_NODE.with(|n| {
            let mut n = n.borrow_mut();
            let n = n.get_or_insert_with(node);
            (n.dp.run_xdp(&bytes).expect("run"), tc_run(&mut n.dp, &bytes))
        });
        prop_assert!([XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT].contains(&v.action));
        // A run the harness refused stands for "passed untouched".
        let t = t.unwrap_or_else(|| skiff_dataplane::PacketVerdict {
            action: TC_ACT_OK,
            packet: bytes.clone(),
        });
        prop_assert!(t.action == TC_ACT_OK || t.action == 2 /* TC_ACT_SHOT */);
        let translatable = bytes.len() >= 14 + 20
            && bytes[12..14] == [0x08, 0x00]
            && bytes[14] >> 4 == 4
            && bytes[14] & 0x0f >= 5
            && (bytes[23] == 6 || bytes[23] == 17 || bytes[23] == 1);
        if !translatable {
            prop_assert_eq!(&v.packet, &bytes);
            prop_assert_eq!(&t.packet, &bytes);
        }
        if !to_nodeport && bytes.len() >= 34 && addr(&bytes, 30) != VIP && addr(&bytes, 30) != NODE {
            // Random destinations are no service of ours.
            prop_assert_eq!(&v.packet, &bytes);
        }
    }
}

/// Runs the TC program, except on IPv4 frames too short for an IP header: the kernel's
/// test harness refuses those (EINVAL) before any program runs; a real skb that short
/// never reaches TC as IPv4.
fn tc_run(dp: &mut DataPlane, bytes: &[u8]) -> Option<skiff_dataplane::PacketVerdict> {
    if bytes.len() < 14 + 20 && bytes[12..14] == [0x08, 0x00] {
        return None;
    }
    Some(dp.run_tc(bytes).expect("run"))
}

thread_local! {
    /// One node for every case (loading and verifying the programs per case is slow).
    static FUZZ_NODE: std::cell::RefCell<Option<Node>> = const { std::cell::RefCell::new(None) };
}
