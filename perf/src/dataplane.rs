//! Data-plane benchmarks against kube-proxy's iptables mode, side by side on one node.
//!
//! The node is a network namespace with a client pod and ten backend pods (real veths,
//! routes and addresses from `podnet`). Every service has the same ten backends, as
//! endpoints; N services are N VIPs. Skiff programs its maps (socket-level load balancing
//! for the client pod's cgroup); the peer is kube-proxy's ruleset as proxier.go writes it
//! (KUBE-SERVICES -> KUBE-SVC-* -> KUBE-SEP-* with `statistic --mode random
//! --probability 1/(n-i)` DNAT, masquerade marks), loaded with iptables-restore into the
//! node's namespace, with Skiff's programs detached.
//!
//! - Programming: all N services, then one incremental change (one service loses a
//!   backend). Skiff: map updates. kube-proxy: iptables-restore of the whole ruleset, then
//!   of KUBE-SERVICES plus the changed service's chains (what its partial sync writes).
//! - Connect: a fresh TCP connection and a 1-byte request/response to a random VIP from
//!   the client pod, sequentially, p50/p99 (each connection closed, client first, before
//!   the next).
//! - NodePort: an outside host blasts small UDP datagrams through the node to a pod:
//!   packets/s and CPU per packet for the whole machine.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use skiff_dataplane::cgroup2::{self, Cgroup2};
use skiff_dataplane::maps::SVC_SCOPE_CLUSTER;
use skiff_dataplane::netlink::Netlink;
use skiff_dataplane::netns::Netns;
use skiff_dataplane::podnet::PodNetwork;
use skiff_dataplane::{DataPlane, Endpoint, Frontend, LbService, Proto};

use crate::report::Measurement;
use crate::{Mode, median};

const BACKENDS: usize = 10;
const PORT: u16 = 8080;
const PEER: &str = "kube-proxy iptables mode (iptables-nft, iptables-restore)";
const PEER_LEGACY: &str = "kube-proxy iptables mode (iptables-legacy, iptables-legacy-restore)";

fn vip(i: usize) -> Ipv4Addr {
    // 198.19.0.0/16, skipping .0 of each /24 for readability.
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 0, 0)) + 1 + i as u32)
}

/// A node namespace with a client pod and the backend pods, serving.
struct Bench {
    node: Netns,
    client: Netns,
    backends: Vec<Ipv4Addr>,
    cgroup: Cgroup2,
    _pods: Vec<Netns>,
    _net: PodNetwork,
    _state: crate::tempdir::Dir,
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = self.cgroup.remove();
    }
}

impl Bench {
    fn new() -> anyhow::Result<Self> {
        static RUN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let tag = format!(
            "skiff-bench-dp-{}-{}",
            std::process::id(),
            RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let state = crate::tempdir::Dir(std::env::temp_dir().join(&tag));
        let node = Netns::create()?;
        node.block_on(async { Netlink::open()?.set_up("lo").await })??;
        let net = PodNetwork::new(node.try_clone()?, "198.18.1.0/24".parse()?, &state.0)?;
        let mut pods = Vec::new();
        let mut backends = Vec::new();
        for i in 0..BACKENDS {
            let ns = Netns::create()?;
            let ip = net.add(&format!("backend-{i}"), &ns)?.ip;
            let listener = ns.run(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, PORT)))??;
            std::thread::spawn(move || serve(listener));
            pods.push(ns);
            backends.push(ip);
        }
        let client = Netns::create()?;
        net.add("client", &client)?;
        let cgroup = Cgroup2::create(&std::path::Path::new(cgroup2::MOUNT).join(&tag))?;
        Ok(Bench {
            node,
            client,
            backends,
            cgroup,
            _pods: pods,
            _net: net,
            _state: state,
        })
    }

    fn service(&self, i: usize, backends: &[Ipv4Addr]) -> LbService {
        cluster_service(i, backends)
    }

    /// Sequential fresh connections to random VIPs: connect + 1-byte request and response,
    /// timed; then a close that completes before the next connection. Latencies in µs.
    fn connect_latency(&self, services: usize, n: usize) -> anyhow::Result<Histogram<u64>> {
        let mut h = Histogram::<u64>::new(3)?;
        crate::settle();
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let samples = self.cgroup.run_as_member(|| {
            self.client.run(|| {
                pin_to_cpu(0);
                let mut samples = Vec::with_capacity(n);
                for k in 0..n + n / 10 {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let to = SocketAddrV4::new(vip(rng as usize % services), 80);
                    let start = Instant::now();
                    let mut s = TcpStream::connect_timeout(&to.into(), Duration::from_secs(2))
                        .with_context(|| format!("connect {to}"))?;
                    s.set_nodelay(true)?;
                    s.write_all(b"x")?;
                    let mut b = [0u8; 1];
                    s.read_exact(&mut b)?;
                    let took = start.elapsed();
                    // Close, and wait for the backend's close before the next one: nothing
                    // of this connection runs into the next, and TIME_WAIT stays in the
                    // client's namespace (fresh for every run), not in the backends.
                    s.shutdown(std::net::Shutdown::Write)?;
                    let _ = s.read(&mut b)?;
                    // The first tenth warms caches and conntrack; it is not counted.
                    if k >= n / 10 {
                        samples.push(took.as_micros() as u64);
                    }
                }
                anyhow::Ok(samples)
            })
        })???;
        for s in samples {
            h.record(s.max(1))?;
        }
        if std::env::var_os("SKIFF_BENCH_VERBOSE").is_some() {
            eprintln!(
                "  {services} services: {} connects, p50 {} p90 {} p99 {} max {} us",
                h.len(),
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.9),
                h.value_at_quantile(0.99),
                h.max()
            );
        }
        Ok(h)
    }
}

/// Pins the calling thread to one CPU (modulo the CPUs there are): the client and the
/// backends each get their own, for both peers alike, so that where the scheduler happens
/// to put them does not decide the latency.
fn pin_to_cpu(cpu: usize) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET writes within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu % cpus, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Service i: VIP i, port 80/TCP, to `backends` on port 8080, all ready.
fn cluster_service(i: usize, backends: &[Ipv4Addr]) -> LbService {
    LbService {
        frontends: vec![Frontend {
            addr: vip(i),
            port: 80,
            proto: Proto::Tcp,
            scope: SVC_SCOPE_CLUSTER,
        }],
        endpoints: backends
            .iter()
            .map(|&addr| Endpoint {
                addr,
                port: PORT,
                ready: true,
                serving: true,
                terminating: false,
            })
            .collect(),
        affinity_timeout: None,
    }
}

/// A backend: answers each connection's byte, then waits for the client to close first
/// (as in netperf's TCP_CRR), so TIME_WAIT state piles up in the client's namespace,
/// which is fresh for every run, not in the backends.
fn serve(listener: TcpListener) {
    pin_to_cpu(1);
    for conn in listener.incoming() {
        let Ok(mut c) = conn else { return };
        let _ = c.set_nodelay(true);
        let mut b = [0u8; 1];
        if c.read_exact(&mut b).is_ok() && c.write_all(&b).is_ok() {
            let _ = c.read(&mut b);
        }
    }
}

// ---- kube-proxy's rules ---------------------------------------------------------------

/// kube-proxy names chains after a hash of the service port (and endpoint): 16 base32
/// characters. Any stable hash shows the same rule structure.
fn chain(prefix: &str, what: &str) -> String {
    let h = skiff_dataplane::hash::fnv1a(what.bytes());
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut s = String::from(prefix);
    for k in 0..16 {
        let bits = (h.rotate_left(k * 5) & 31) as usize;
        s.push(ALPHABET[bits] as char);
    }
    s
}

/// The rules of one service's chains (KUBE-SVC-* and its KUBE-SEP-*s), and their
/// declarations.
fn service_chains(i: usize, backends: &[Ipv4Addr], decl: &mut String, rules: &mut String) {
    let name = format!("default/svc-{i}:http");
    let svc = chain("KUBE-SVC-", &format!("{name}tcp"));
    decl.push_str(&format!(":{svc} - [0:0]\n"));
    rules.push_str(&format!(
        "-A {svc} ! -s 198.18.0.0/15 -d {}/32 -p tcp -m comment --comment \"{name} cluster IP\" -m tcp --dport 80 -j KUBE-MARK-MASQ\n",
        vip(i)
    ));
    let n = backends.len();
    for (k, b) in backends.iter().enumerate() {
        let sep = chain("KUBE-SEP-", &format!("{name}tcp{b}:{PORT}"));
        decl.push_str(&format!(":{sep} - [0:0]\n"));
        if k + 1 < n {
            rules.push_str(&format!(
                "-A {svc} -m comment --comment \"{name} -> {b}:{PORT}\" -m statistic --mode random --probability {:.10} -j {sep}\n",
                1.0 / (n - k) as f64
            ));
        } else {
            rules.push_str(&format!(
                "-A {svc} -m comment --comment \"{name} -> {b}:{PORT}\" -j {sep}\n"
            ));
        }
        rules.push_str(&format!(
            "-A {sep} -s {b}/32 -m comment --comment \"{name}\" -j KUBE-MARK-MASQ\n"
        ));
        rules.push_str(&format!(
            "-A {sep} -p tcp -m comment --comment \"{name}\" -m tcp -j DNAT --to-destination {b}:{PORT}\n"
        ));
    }
}

/// The KUBE-SERVICES dispatch rules (always written in full by kube-proxy).
fn services_chain(services: usize) -> String {
    let mut rules = String::new();
    for i in 0..services {
        let name = format!("default/svc-{i}:http");
        let svc = chain("KUBE-SVC-", &format!("{name}tcp"));
        rules.push_str(&format!(
            "-A KUBE-SERVICES -d {}/32 -p tcp -m comment --comment \"{name} cluster IP\" -m tcp --dport 80 -j {svc}\n",
            vip(i)
        ));
    }
    rules.push_str("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n");
    rules
}

const NAT_BASE: &str = ":KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n";

/// Every rule kube-proxy writes to the nat table for `services` services.
fn full_ruleset(services: usize, backends: &[Ipv4Addr]) -> String {
    let (mut decl, mut rules) = (String::from(NAT_BASE), String::new());
    rules.push_str(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
    );
    rules.push_str(
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
    );
    rules.push_str("-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n");
    rules.push_str("-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n");
    rules.push_str("-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n");
    rules.push_str("-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n");
    rules.push_str("-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n");
    for i in 0..services {
        service_chains(i, backends, &mut decl, &mut rules);
    }
    rules.push_str(&services_chain(services));
    format!("*nat\n{decl}{rules}COMMIT\n")
}

/// What kube-proxy's partial sync writes after one service changed: KUBE-SERVICES in full,
/// the changed service's chains, and the removal of the endpoint chain that went.
fn incremental_ruleset(
    services: usize,
    changed: usize,
    backends: &[Ipv4Addr],
    gone: Ipv4Addr,
) -> String {
    let (mut decl, mut rules) = (String::from(":KUBE-SERVICES - [0:0]\n"), String::new());
    service_chains(changed, backends, &mut decl, &mut rules);
    rules.push_str(&services_chain(services));
    let name = format!("default/svc-{changed}:http");
    let old_sep = chain("KUBE-SEP-", &format!("{name}tcp{gone}:{PORT}"));
    format!("*nat\n{decl}:{old_sep} - [0:0]\n{rules}-X {old_sep}\nCOMMIT\n")
}

/// Runs iptables-restore in the node's namespace; returns how long it took.
fn iptables_restore(node: &Netns, input: &str, noflush: bool) -> anyhow::Result<Duration> {
    restore_with("iptables-restore", node, input, noflush)
}

/// Runs `binary` (iptables-restore or iptables-legacy-restore) in the node's namespace.
fn restore_with(
    binary: &str,
    node: &Netns,
    input: &str,
    noflush: bool,
) -> anyhow::Result<Duration> {
    node.run(|| {
        let start = Instant::now();
        let mut cmd = Command::new(binary);
        cmd.arg("-w");
        if noflush {
            cmd.arg("--noflush");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("iptables-restore (cargo xtask setup installs iptables)")?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(input.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "iptables-restore failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(start.elapsed())
    })?
}

struct ScaleResult {
    program_all: (f64, f64),
    program_one: (f64, f64),
    p50: (f64, f64),
    p99: (f64, f64),
    /// iptables-legacy: (programming all, connect p99).
    legacy: (f64, f64),
}

/// One measurement of both peers at one scale. Each peer gets a node of its own, built
/// fresh: neither inherits the other's conntrack entries or TIME_WAIT sockets.
fn run_scale(services: usize, connects: usize) -> anyhow::Result<ScaleResult> {
    let bench = Bench::new()?;
    let backends = bench.backends.clone();
    let fewer = &backends[1..];

    // Skiff: load the programs, attach to the client's cgroup, program every service.
    let mut dp = DataPlane::load()?;
    dp.attach_cgroup(&bench.cgroup.path)?;
    let mut lb = dp.load_balancer()?;
    let wanted: Vec<LbService> = (0..services).map(|i| bench.service(i, &backends)).collect();
    let start = Instant::now();
    for (i, svc) in wanted.iter().enumerate() {
        lb.apply(&format!("default/svc-{i}:80/TCP"), svc)?;
    }
    let skiff_all = start.elapsed();
    let skiff_hist = bench.connect_latency(services, connects)?;
    let changed = services / 2;
    let start = Instant::now();
    lb.apply(
        &format!("default/svc-{changed}:80/TCP"),
        &bench.service(changed, fewer),
    )?;
    let skiff_one = start.elapsed();
    drop(lb);
    drop(dp);
    drop(bench);

    // kube-proxy: the same services as iptables rules in the node's namespace.
    let bench = Bench::new()?;
    let ipt_all = iptables_restore(&bench.node, &full_ruleset(services, &bench.backends), false)?;
    let ipt_hist = bench.connect_latency(services, connects)?;
    let ipt_one = iptables_restore(
        &bench.node,
        &incremental_ruleset(services, changed, &bench.backends[1..], bench.backends[0]),
        true,
    )?;

    drop(bench);

    // The same with the legacy (x_tables) backend of iptables.
    let bench = Bench::new()?;
    let legacy_all = restore_with(
        "iptables-legacy-restore",
        &bench.node,
        &full_ruleset(services, &bench.backends),
        false,
    )?;
    let legacy_hist = bench.connect_latency(services, connects)?;
    drop(bench);

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Ok(ScaleResult {
        legacy: (ms(legacy_all), legacy_hist.value_at_quantile(0.99) as f64),
        program_all: (ms(skiff_all), ms(ipt_all)),
        program_one: (ms(skiff_one), ms(ipt_one)),
        p50: (
            skiff_hist.value_at_quantile(0.5) as f64,
            ipt_hist.value_at_quantile(0.5) as f64,
        ),
        p99: (
            skiff_hist.value_at_quantile(0.99) as f64,
            ipt_hist.value_at_quantile(0.99) as f64,
        ),
    })
}

/// Programming time and connect latency at 100, 1,000 and 10,000 services.
pub fn services(mode: Mode) -> anyhow::Result<Vec<Measurement>> {
    let (mut scales, mut connects, repeats): (Vec<usize>, usize, usize) = match mode {
        Mode::Quick => (vec![100], 200, 1),
        Mode::Full => (vec![100, 1_000, 10_000], 10_000, 3),
    };
    // For profiling runs only: SKIFF_BENCH_SCALES=100,1000.
    if let Ok(v) = std::env::var("SKIFF_BENCH_SCALES") {
        scales = v.split(',').filter_map(|s| s.parse().ok()).collect();
    }
    // For profiling runs only: SKIFF_BENCH_CONNECTS=n.
    if let Some(n) = std::env::var("SKIFF_BENCH_CONNECTS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        connects = n;
    }
    let mut out = Vec::new();
    let mut skiff_p99_by_scale = Vec::new();
    for &n in &scales {
        let mut runs = Vec::new();
        for _ in 0..repeats {
            runs.push(run_scale(n, connects)?);
        }
        let med = |f: &dyn Fn(&ScaleResult) -> (f64, f64)| {
            (
                median(runs.iter().map(|r| f(r).0).collect()),
                median(runs.iter().map(|r| f(r).1).collect()),
            )
        };
        let label = format!("{n} services x {BACKENDS} backends");
        let all = med(&|r| r.program_all);
        let one = med(&|r| r.program_one);
        let p50 = med(&|r| r.p50);
        let p99 = med(&|r| r.p99);
        let goal_prog = if n == 10_000 { ">= 20x at 10,000" } else { "" };
        out.push(Measurement::lower_better(
            &format!("Programming all services ({label})"),
            all.0,
            all.1,
            "ms",
            PEER,
            goal_prog,
        ));
        out.push(Measurement::lower_better(
            &format!("Programming one change ({label})"),
            one.0,
            one.1,
            "ms",
            PEER,
            goal_prog,
        ));
        out.push(Measurement::lower_better(
            &format!("Connect + 1-byte request/response p50 ({label})"),
            p50.0,
            p50.1,
            "us",
            PEER,
            "",
        ));
        out.push(Measurement::lower_better(
            &format!("Connect + 1-byte request/response p99 ({label})"),
            p99.0,
            p99.1,
            "us",
            PEER,
            if n == 10_000 {
                "p99 <= 0.5x iptables; flat (<= 1.1x from 100)"
            } else {
                ""
            },
        ));
        let legacy = med(&|r| r.legacy);
        out.push(Measurement::lower_better(
            &format!("Programming all services ({label})"),
            all.0,
            legacy.0,
            "ms",
            PEER_LEGACY,
            "",
        ));
        out.push(Measurement::lower_better(
            &format!("Connect + 1-byte request/response p99 ({label})"),
            p99.0,
            legacy.1,
            "us",
            PEER_LEGACY,
            "",
        ));
        skiff_p99_by_scale.push((p99.0, p99.1));
        eprintln!(
            "{label}: program all {:.1} vs {:.1} ms, one {:.3} vs {:.1} ms, p50 {} vs {} us, p99 {} vs {} us",
            all.0, all.1, one.0, one.1, p50.0, p50.1, p99.0, p99.1
        );
    }
    if let (Some(first), Some(last)) = (skiff_p99_by_scale.first(), skiff_p99_by_scale.last())
        && skiff_p99_by_scale.len() > 1
    {
        out.push(Measurement::lower_better(
            &format!(
                "Connect p99 growth from {} to {} services (p99 at the most / at the fewest)",
                scales[0],
                scales[scales.len() - 1]
            ),
            last.0 / first.0,
            last.1 / first.1,
            "x",
            PEER,
            "Skiff <= 1.1x",
        ));
    }
    Ok(out)
}

// ---- UDP through a NodePort -----------------------------------------------------------

const NODE_PORT: u16 = 30080;
const UDP_PORT: u16 = 9000;

enum UdpPeer {
    Skiff,
    KubeProxy,
}

struct UdpResult {
    pps: f64,
    cpu_ns_per_packet: f64,
    /// Softirq time per packet: the network path (bridge, node, delivery into the pod),
    /// without the sender's and receiver's system calls.
    softirq_ns_per_packet: f64,
}

/// A node with one pod behind a UDP NodePort, an outside host and the underlay between
/// them, with `peer`'s translation in place (dropped in reverse order).
struct NodePortBench {
    _dp: Option<(DataPlane, skiff_dataplane::LoadBalancer)>,
    pod: Netns,
    _net: PodNetwork,
    _state: crate::tempdir::Dir,
    outside: skiff_dataplane::localnet::Host,
    node: skiff_dataplane::localnet::NodeHost,
    underlay: skiff_dataplane::localnet::Underlay,
}

/// Builds the NodePort topology. `xdp` is how Skiff's program attaches to the uplink
/// (generic for traffic that arrives as socket buffers from a socket, native for frames
/// that arrive as XDP frames); the peer's uplink gets a NAPI context (GRO) so that it can
/// take XDP frames too.
fn nodeport_bench(
    peer: &UdpPeer,
    xdp: skiff_dataplane::XdpAttach,
) -> anyhow::Result<NodePortBench> {
    use skiff_dataplane::localnet::Underlay;
    let underlay = Underlay::create()?;
    let node = underlay.node(0)?;
    let outside = underlay.outside(0)?;
    let state = crate::tempdir::Dir(std::env::temp_dir().join(format!(
        "skiff-bench-udp-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    )));
    let net = PodNetwork::new(node.host.ns.try_clone()?, node.pod_cidr, &state.0)?;
    let pod = Netns::create()?;
    let iface = net.add("udp-backend", &pod)?;
    let mut dp_and_lb = None;
    match peer {
        UdpPeer::Skiff => {
            let mut dp = DataPlane::load()?;
            node.host.ns.run(|| -> anyhow::Result<()> {
                dp.attach_xdp(&node.host.uplink, xdp)?;
                dp.attach_tc(&iface.host_veth)?;
                Ok(())
            })??;
            underlay.ns.run(|| dp.attach_xdp_pass(&node.host.port))??;
            let mut lb = dp.load_balancer()?;
            lb.set_node(skiff_dataplane::maps::NodeConfig::new(
                node.host.ip,
                node.pod_cidr.network(),
                node.pod_cidr.prefix_len(),
            ))?;
            // As the agent does when it plumbs a pod: registered for XDP's direct path.
            lb.add_local_pod(iface.ip, iface.local_pod())?;
            lb.apply(
                "default/udp:30080/UDP",
                &LbService {
                    frontends: vec![Frontend {
                        addr: node.host.ip,
                        port: NODE_PORT,
                        proto: Proto::Udp,
                        scope: skiff_dataplane::maps::SVC_SCOPE_NODEPORT,
                    }],
                    endpoints: vec![Endpoint {
                        addr: iface.ip,
                        port: UDP_PORT,
                        ready: true,
                        serving: true,
                        terminating: false,
                    }],
                    affinity_timeout: None,
                },
            )?;
            dp_and_lb = Some((dp, lb));
        }
        UdpPeer::KubeProxy => {
            iptables_restore(&node.host.ns, &nodeport_ruleset(iface.ip), false)?;
            if matches!(xdp, skiff_dataplane::XdpAttach::Native) {
                let uplink = node.host.uplink.clone();
                node.host
                    .ns
                    .run(|| skiff_dataplane::ethtool::set_gro(&uplink, true))??;
            }
        }
    }
    Ok(NodePortBench {
        _dp: dp_and_lb,
        pod,
        _net: net,
        _state: state,
        outside,
        node,
        underlay,
    })
}

/// An outside host blasts 18-byte UDP datagrams at node:NodePort for `secs`; a pod on the
/// node counts what arrives.
fn udp_run(peer: UdpPeer, secs: f64) -> anyhow::Result<UdpResult> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    // The uplink is a veth and the datagrams arrive as socket buffers: generic XDP is the
    // cheaper attachment there (native XDP on a veth converts every skb and, with the
    // node's receive path on a CPU of its own through threaded NAPI, cost ~2,000 ns per
    // packet there against generic's ~400).
    let bench = nodeport_bench(&peer, skiff_dataplane::XdpAttach::Generic)?;
    let (node, outside, pod) = (&bench.node, &bench.outside, &bench.pod);
    let received = Arc::new(AtomicU64::new(0));
    let sock = pod.run(|| std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, UDP_PORT)))??;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let counter = received.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let stop_rx = stop.clone();
    let receiver = std::thread::spawn(move || {
        while !stop_rx.load(Ordering::Relaxed) {
            counter.fetch_add(mmsg(&sock, false) as u64, Ordering::Relaxed);
        }
    });

    let sender = outside
        .ns
        .run(|| std::net::UdpSocket::bind("0.0.0.0:0"))??;
    sender.connect(SocketAddrV4::new(node.host.ip, NODE_PORT))?;
    crate::settle();
    // The sender on a thread of its own: it warms up (the first
    // packets resolve neighbours and create conntrack entries), waits for the counters to
    // be read, then sends for `secs`.
    let barrier = Arc::new(std::sync::Barrier::new(2));
    let go = barrier.clone();
    let sending = std::thread::spawn(move || {
        for _ in 0..16 {
            mmsg(&sender, true);
        }
        std::thread::sleep(Duration::from_millis(300));
        go.wait();
        go.wait();
        let start = Instant::now();
        while start.elapsed().as_secs_f64() < secs {
            for _ in 0..16 {
                mmsg(&sender, true);
            }
        }
        start.elapsed().as_secs_f64()
    });
    barrier.wait();
    let before = received.load(Ordering::Relaxed);
    let all0 = crate::cpu_stat(None)?;
    barrier.wait();
    let elapsed = sending
        .join()
        .map_err(|_| anyhow::anyhow!("the sender panicked"))?;
    std::thread::sleep(Duration::from_millis(100));
    let all1 = crate::cpu_stat(None)?;
    let got = received.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    let _ = receiver.join();
    // USER_HZ is 100 on Linux: one jiffy is 10 ms.
    let per_packet = |jiffies: u64| jiffies as f64 * 10_000_000.0 / got.max(1) as f64;
    Ok(UdpResult {
        pps: got as f64 / elapsed,
        cpu_ns_per_packet: per_packet(all1.busy - all0.busy),
        softirq_ns_per_packet: per_packet(all1.softirq - all0.softirq),
    })
}

/// The benchmarks' own BPF object (`perf/bpf/trafficgen.c`).
static TRAFFICGEN: &[u8] = aya::include_bytes_aligned!(env!("SKIFF_TRAFFICGEN_OBJECT"));

struct ForwardResult {
    /// Frames that reached the pod per second.
    pps: f64,
    /// Machine CPU per frame that reached the pod (generator and sink included).
    cpu_ns_per_packet: f64,
    /// Of the frames generated, the share that reached the pod.
    delivered: f64,
}

/// The 60-byte frame of an 18-byte UDP datagram from the outside host to node:NodePort.
fn nodeport_frame(dst_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr) -> anyhow::Result<[u8; 60]> {
    let mut f = Vec::with_capacity(60);
    etherparse::PacketBuilder::ethernet2([0x02, 0x00, 0xc6, 0x12, 0x00, 0xc8], dst_mac)
        .ipv4(src.octets(), dst.octets(), 64)
        .udp(40000, NODE_PORT)
        .write(&mut f, &[7u8; 18])?;
    f.as_slice()
        .try_into()
        .context("an 18-byte UDP datagram is a 60-byte frame")
}

/// `packets` 18-byte UDP datagrams to node:NodePort, generated in the kernel on the
/// underlay's end of the node's uplink (BPF_PROG_RUN in live-frames mode, as
/// xdp-trafficgen does): a sender that is not the bottleneck. The pod's interface runs the
/// same counting XDP sink on both sides, so the difference is the node's forwarding path:
/// Skiff's XDP program (native on the uplink, redirecting into the pod's veth) against
/// netfilter's DNAT and the IP forwarding path.
fn forward_run(peer: UdpPeer, packets: u32) -> anyhow::Result<ForwardResult> {
    use aya::programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode};
    let bench = nodeport_bench(&peer, skiff_dataplane::XdpAttach::Native)?;
    let (port, uplink) = (bench.node.host.port.clone(), bench.node.host.uplink.clone());
    let port_index = bench
        .underlay
        .ns
        .block_on(async { Netlink::open()?.index(&port).await })??;
    let uplink_mac = bench
        .node
        .host
        .ns
        .block_on(async { Netlink::open()?.mac(&uplink).await })??;
    let mac: [u8; 6] = uplink_mac
        .as_slice()
        .try_into()
        .context("the uplink's MAC")?;
    let frame = nodeport_frame(mac, bench.outside.ip, bench.node.host.ip)?;
    let mut obj = aya::EbpfLoader::new()
        .override_global("target_ifindex", &port_index, true)
        .override_global("frame", &frame, true)
        .load(TRAFFICGEN)?;
    let count: aya::maps::PerCpuArray<_, u64> =
        aya::maps::PerCpuArray::try_from(obj.take_map("sink_count").context("sink_count")?)?;
    let counted = || -> anyhow::Result<u64> { Ok(count.get(&0, 0)?.iter().sum()) };
    let sink: &mut Xdp = obj.program_mut("sink").context("sink")?.try_into()?;
    sink.load()?;
    bench.pod.run(|| sink.attach("eth0", XdpMode::Driver))??;
    let generator: &mut Xdp = obj
        .program_mut("trafficgen")
        .context("trafficgen")?
        .try_into()?;
    generator.load()?;
    let send = |n: u32| -> anyhow::Result<f64> {
        let t = Instant::now();
        bench.underlay.ns.run(|| {
            // On one CPU: the frames' receive paths (NAPI, raised where they are sent) run
            // there too, so buffers are recycled where they were taken.
            pin_to_cpu(0);
            // In chunks, yielding between them: receive work the kernel deferred to
            // ksoftirqd (on this CPU) gets to run instead of the generator overfilling
            // the veth rings (dropped frames would cost CPU without being forwarded).
            let mut left = n;
            while left > 0 {
                let chunk = left.min(262_144);
                generator.test_run(TestRunOptions {
                    data_in: Some(&frame[..]),
                    repeat: chunk,
                    attrs: TestRunAttrs::new().xdp_live_frames(64),
                    ..TestRunOptions::default()
                })?;
                left -= chunk;
                std::thread::yield_now();
            }
            anyhow::Ok(())
        })??;
        Ok(t.elapsed().as_secs_f64())
    };
    // Warm-up: neighbours resolved, conntrack entries made, caches warm.
    send(10_000)?;
    std::thread::sleep(Duration::from_millis(300));
    crate::settle();
    let before = counted()?;
    let cpu0 = crate::cpu_stat(None)?;
    let elapsed = send(packets)?;
    std::thread::sleep(Duration::from_millis(100));
    let cpu1 = crate::cpu_stat(None)?;
    let got = counted()? - before;
    if got == 0 {
        bail!("no generated frame reached the pod");
    }
    Ok(ForwardResult {
        pps: got as f64 / elapsed,
        // USER_HZ is 100 on Linux: one jiffy is 10 ms.
        cpu_ns_per_packet: (cpu1.busy - cpu0.busy) as f64 * 10_000_000.0 / got as f64,
        delivered: got as f64 / f64::from(packets),
    })
}

/// Sends (or receives) one batch of 64 18-byte datagrams with sendmmsg/recvmmsg, so the
/// cost per packet is the network path's, not the system call's. Returns how many.
fn mmsg(sock: &std::net::UdpSocket, send: bool) -> usize {
    use std::os::fd::AsRawFd;
    const BATCH: usize = 64;
    let mut bufs = [[7u8; 64]; BATCH];
    // SAFETY: zeroed iovec/mmsghdr are valid; the pointers set below point into `bufs` and
    // `iov`, which outlive the system call.
    let mut iov: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for i in 0..BATCH {
        iov[i].iov_base = bufs[i].as_mut_ptr().cast();
        iov[i].iov_len = if send { 18 } else { 64 };
        msgs[i].msg_hdr.msg_iov = &mut iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: `msgs` holds BATCH valid headers for the duration of the call; the socket is
    // open (borrowed).
    let n = unsafe {
        if send {
            libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, 0)
        } else {
            libc::recvmmsg(
                sock.as_raw_fd(),
                msgs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        }
    };
    usize::try_from(n).unwrap_or(0)
}

/// kube-proxy's rules for one UDP NodePort service with one endpoint.
fn nodeport_ruleset(backend: Ipv4Addr) -> String {
    let name = "default/udp:udp";
    let svc = chain("KUBE-SVC-", &format!("{name}udp"));
    let ext = chain("KUBE-EXT-", &format!("{name}udp"));
    let sep = chain("KUBE-SEP-", &format!("{name}udp{backend}"));
    format!(
        "*nat\n{NAT_BASE}:{svc} - [0:0]\n:{ext} - [0:0]\n:{sep} - [0:0]\n\
         -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
         -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n\
         -A KUBE-NODEPORTS -p udp -m comment --comment \"{name}\" -m udp --dport {NODE_PORT} -j {ext}\n\
         -A {ext} -m comment --comment \"masquerade traffic for {name} external destinations\" -j KUBE-MARK-MASQ\n\
         -A {ext} -j {svc}\n\
         -A {svc} -m comment --comment \"{name} -> {backend}:{UDP_PORT}\" -j {sep}\n\
         -A {sep} -s {backend}/32 -m comment --comment \"{name}\" -j KUBE-MARK-MASQ\n\
         -A {sep} -p udp -m comment --comment \"{name}\" -m udp -j DNAT --to-destination {backend}:{UDP_PORT}\n\
         -A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n\
         COMMIT\n"
    )
}

/// Small UDP packets through a NodePort on veth: XDP (Skiff) vs iptables DNAT.
pub fn nodeport_udp(mode: Mode) -> anyhow::Result<Vec<Measurement>> {
    let (secs, repeats) = match mode {
        Mode::Quick => (0.5, 1),
        Mode::Full => (3.0, 3),
    };
    let frames: u32 = match mode {
        Mode::Quick => 100_000,
        Mode::Full => 2_000_000,
    };
    let (mut fwd, mut fwd_cpu) = ((vec![], vec![]), (vec![], vec![]));
    for _ in 0..repeats {
        let s = forward_run(UdpPeer::Skiff, frames)?;
        let k = forward_run(UdpPeer::KubeProxy, frames)?;
        eprintln!(
            "NodePort forwarding (generated frames): {:.0} vs {:.0} packets/s ({:.1}% vs {:.1}% of the frames reached the pod), {:.0} vs {:.0} ns CPU/packet",
            s.pps,
            k.pps,
            s.delivered * 100.0,
            k.delivered * 100.0,
            s.cpu_ns_per_packet,
            k.cpu_ns_per_packet,
        );
        fwd.0.push(s.pps);
        fwd.1.push(k.pps);
        fwd_cpu.0.push(s.cpu_ns_per_packet);
        fwd_cpu.1.push(k.cpu_ns_per_packet);
    }
    let (mut pps, mut cpu, mut softirq) = ((vec![], vec![]), (vec![], vec![]), (vec![], vec![]));
    for _ in 0..repeats {
        let s = udp_run(UdpPeer::Skiff, secs)?;
        let k = udp_run(UdpPeer::KubeProxy, secs)?;
        eprintln!(
            "UDP NodePort: {:.0} vs {:.0} packets/s, {:.0} vs {:.0} ns CPU/packet, {:.0} vs {:.0} ns softirq/packet",
            s.pps,
            k.pps,
            s.cpu_ns_per_packet,
            k.cpu_ns_per_packet,
            s.softirq_ns_per_packet,
            k.softirq_ns_per_packet
        );
        softirq.0.push(s.softirq_ns_per_packet);
        softirq.1.push(k.softirq_ns_per_packet);
        pps.0.push(s.pps);
        pps.1.push(k.pps);
        cpu.0.push(s.cpu_ns_per_packet);
        cpu.1.push(k.cpu_ns_per_packet);
    }
    let label = "18-byte UDP, outside host -> NodePort -> pod, one flow, veth";
    let goal = ">= 3x on packets/s or CPU, no worse on the other";
    let gen_label = "18-byte UDP generated in the kernel (BPF_PROG_RUN live frames) at the \
                     node's uplink -> NodePort -> pod, one flow, veth; counted and dropped by \
                     the same XDP sink at the pod on both sides";
    Ok(vec![
        Measurement::higher_better(
            &format!("NodePort forwarding packets/s ({gen_label})"),
            median(fwd.0),
            median(fwd.1),
            "packets/s",
            PEER,
            goal,
        ),
        Measurement::lower_better(
            &format!("Machine CPU per forwarded packet ({gen_label})"),
            median(fwd_cpu.0),
            median(fwd_cpu.1),
            "ns",
            PEER,
            goal,
        ),
        Measurement::higher_better(
            &format!("NodePort packets/s ({label})"),
            median(pps.0),
            median(pps.1),
            "packets/s",
            PEER,
            goal,
        ),
        Measurement::lower_better(
            &format!("Machine CPU per delivered packet, sender and receiver included ({label})"),
            median(cpu.0),
            median(cpu.1),
            "ns",
            PEER,
            goal,
        ),
        Measurement::lower_better(
            &format!(
                "Softirq CPU per delivered packet, the network path only, tick-sampled ({label})"
            ),
            median(softirq.0),
            median(softirq.1),
            "ns",
            PEER,
            "",
        ),
    ])
}

// ---- memory -----------------------------------------------------------------------------

/// memlock / max_entries of every BPF map this process holds, by name (from fdinfo): the
/// kernel's own figure for what one entry of each map costs.
fn map_entry_bytes() -> anyhow::Result<std::collections::BTreeMap<String, f64>> {
    let mut out = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir("/proc/self/fdinfo")?.flatten() {
        let Ok(info) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let field = |k: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_string())
        };
        let (Some(memlock), Some(max), Some(id)) =
            (field("memlock:"), field("max_entries:"), field("map_id:"))
        else {
            continue;
        };
        let (Ok(memlock), Ok(max)) = (memlock.parse::<f64>(), max.parse::<f64>()) else {
            continue;
        };
        // The name is not in fdinfo: ask the kernel by id through bpftool-free sysfs-less
        // means is not possible, so match by id through aya's map info.
        let Ok(id) = id.parse::<u32>() else { continue };
        if let Ok(m) = aya::maps::MapInfo::from_id(id)
            && let Ok(name) = m.name_as_str().map(str::to_string).ok_or(())
            && max > 0.0
        {
            out.insert(name, memlock / max);
        }
    }
    Ok(out)
}

/// Kernel slab memory in bytes (/proc/meminfo).
fn slab_bytes() -> anyhow::Result<f64> {
    let info = std::fs::read_to_string("/proc/meminfo")?;
    let kb: f64 = info
        .lines()
        .find_map(|l| l.strip_prefix("Slab:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("Slab in /proc/meminfo")?;
    Ok(kb * 1024.0)
}

/// Map memory per service (its frontend, its 10 slots, its counters) and per backend, from
/// the kernel's accounting; the peer: kernel slab memory kube-proxy's rules take per
/// service at the largest scale.
pub fn memory(mode: Mode) -> anyhow::Result<Vec<Measurement>> {
    let services = match mode {
        Mode::Quick => 100,
        Mode::Full => 10_000,
    };
    let mut dp = DataPlane::load()?;
    let mut lb = dp.load_balancer()?;
    // The service map is not preallocated: its footprint shows once it holds entries.
    let sample = 1000;
    let backends: Vec<Ipv4Addr> = (0..BACKENDS as u8)
        .map(|i| Ipv4Addr::new(198, 18, 1, 2 + i))
        .collect();
    for i in 0..sample {
        let svc = cluster_service(i, &backends);
        lb.apply(&format!("s{i}"), &svc)?;
    }
    let mut per_entry = map_entry_bytes()?;
    if let Some(v) = per_entry.get_mut("skiff_services") {
        // memlock / max_entries -> memlock / entries held.
        *v *= f64::from(skiff_dataplane::maps::MAX_SERVICES) / sample as f64;
    }
    drop(lb);
    drop(dp);
    let get = |name: &str| {
        per_entry
            .get(name)
            .copied()
            .with_context(|| format!("map {name} not found in fdinfo"))
    };
    // Names are cut to 15 characters by the kernel.
    let svc = get("skiff_services")?;
    let slot = get("skiff_slots")?;
    let stats = get("skiff_svc_stats")?;
    let backend = get("skiff_backends")?;
    let per_service = svc + BACKENDS as f64 * slot + stats;

    let bench = Bench::new()?;
    let before = slab_bytes()?;
    iptables_restore(&bench.node, &full_ruleset(services, &bench.backends), false)?;
    std::thread::sleep(Duration::from_millis(200));
    let after = slab_bytes()?;
    let peer_per_service = (after - before).max(0.0) / services as f64;
    eprintln!(
        "memory: {per_service:.0} B/service ({svc:.0} frontend + {BACKENDS} x {slot:.0} slot + {stats:.0} counters), {backend:.0} B/backend; kube-proxy rules {peer_per_service:.0} B/service of slab"
    );
    Ok(vec![
        Measurement::lower_better(
            &format!(
                "Kernel memory per service ({BACKENDS} backends; peer at {services} services)"
            ),
            per_service,
            peer_per_service,
            "bytes",
            PEER,
            "",
        ),
        Measurement::lower_better(
            &format!(
                "Kernel memory per backend (peer: its per-service slab / {BACKENDS} endpoints)"
            ),
            backend,
            peer_per_service / BACKENDS as f64,
            "bytes",
            PEER,
            "",
        ),
    ])
}
