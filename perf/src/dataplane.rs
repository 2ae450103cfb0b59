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
//!   the client pod, sequentially, p50/p99.

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
    _state: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
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
        let state = TempDir(std::env::temp_dir().join(&tag));
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

    /// Sequential fresh connections + 1-byte exchange to random VIPs; latencies in µs.
    fn connect_latency(&self, services: usize, n: usize) -> anyhow::Result<Histogram<u64>> {
        let mut h = Histogram::<u64>::new(3)?;
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let samples = self.cgroup.run_as_member(|| {
            self.client.run(|| {
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

/// A backend: answers each connection's byte and closes.
fn serve(listener: TcpListener) {
    for conn in listener.incoming() {
        let Ok(mut c) = conn else { return };
        let _ = c.set_nodelay(true);
        let mut b = [0u8; 1];
        if c.read_exact(&mut b).is_ok() {
            let _ = c.write_all(&b);
        }
    }
}

// ---- kube-proxy's rules ---------------------------------------------------------------

/// kube-proxy names chains after a hash of the service port (and endpoint): 16 base32
/// characters. Any stable hash shows the same rule structure.
fn chain(prefix: &str, what: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in what.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
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
    node.run(|| {
        let start = Instant::now();
        let mut cmd = Command::new("iptables-restore");
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

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Ok(ScaleResult {
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
        Mode::Full => (vec![100, 1_000, 10_000], 3_000, 3),
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
            &format!("Connect + 1-byte request p50 ({label})"),
            p50.0,
            p50.1,
            "us",
            PEER,
            "",
        ));
        out.push(Measurement::lower_better(
            &format!("Connect + 1-byte request p99 ({label})"),
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
        skiff_p99_by_scale.push(p99.0);
        eprintln!(
            "{label}: program all {:.1} vs {:.1} ms, one {:.3} vs {:.1} ms, p50 {} vs {} us, p99 {} vs {} us",
            all.0, all.1, one.0, one.1, p50.0, p50.1, p99.0, p99.1
        );
    }
    if skiff_p99_by_scale.len() > 1 {
        let first = skiff_p99_by_scale[0];
        let last = skiff_p99_by_scale[skiff_p99_by_scale.len() - 1];
        eprintln!(
            "Skiff p99 flatness: {:.2}x from {} to {} services",
            last / first,
            scales[0],
            scales[scales.len() - 1]
        );
    }
    Ok(out)
}
