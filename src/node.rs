//! `skiff node`: the node agent.
//!
//! The container spawner is forked first, while this process still has one thread (before
//! the tokio runtime and the agent's cores exist). SIGTERM or Ctrl-C stops the agent and
//! leaves the pods running; the next `skiff node` with the same data dir adopts them.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use ipnet::Ipv4Net;
use skiff_kubelet::agent::{Agent, AgentConfig};

#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    /// Node name (default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// Pods, images and the spawner's socket.
    #[arg(long, default_value = "/var/lib/skiff/node")]
    data_dir: PathBuf,
    /// Container logs (default: <data dir>/logs).
    #[arg(long)]
    log_dir: Option<PathBuf>,
    /// The node's address (reported as InternalIP).
    #[arg(long, default_value = "127.0.0.1")]
    node_ip: Ipv4Addr,
    /// The node's pod CIDR.
    #[arg(long, default_value = "198.18.1.0/24")]
    pod_cidr: Ipv4Net,
    /// Connect pods to the node's network (veth, IPAM, routes); without it a pod gets
    /// loopback only.
    #[arg(long)]
    pod_network: bool,
    /// The node's cgroup2 directory the data plane's socket programs watch.
    #[arg(long)]
    cgroup2: Option<PathBuf>,
    /// Nameserver written into pods' resolv.conf (default: the host's resolv.conf).
    #[arg(long)]
    cluster_dns: Option<Ipv4Addr>,
    /// Executor threads (default: one per core).
    #[arg(long)]
    cores: Option<usize>,
    /// Where the node API (logs, exec; reached through the API server) listens; the port
    /// is advertised in the Node (default: the node IP, port 10250 as the kubelet's).
    #[arg(long)]
    serve: Option<std::net::SocketAddr>,
    /// Do not serve the node API.
    #[arg(long)]
    no_serve: bool,
    /// Container runtime: Skiff's own (`skiff`), or an OCI runtime binary handed a bundle
    /// (`crun`, `runc`, or a path).
    #[arg(long, default_value = "skiff")]
    runtime: String,
    /// First CrashLoopBackOff delay in seconds (Kubernetes: 10).
    #[arg(long, default_value_t = 10.0)]
    crash_backoff: f64,
    /// The node's network namespace (a bind-mounted nsfs file, as `ip netns` makes);
    /// default: the agent's own.
    #[arg(long)]
    netns: Option<PathBuf>,
    /// Run the node's eBPF data plane in this process (socket load balancing on
    /// --cgroup2, NodePort on --uplink, the pod program on pod veths).
    #[arg(long)]
    dataplane: bool,
    /// The node's uplink, in its namespace: XDP NodePort attaches there.
    #[arg(long, requires = "dataplane")]
    uplink: Option<String>,
    /// How XDP attaches to the uplink: native (physical NICs) or generic (veth uplinks).
    #[arg(long, value_parser = ["native", "generic"], default_value = "native")]
    xdp_mode: String,
    /// The Node's Hostname address (default: the node name), as kubelet's flag.
    #[arg(long)]
    hostname_override: Option<String>,
    /// How long the node's Lease lasts; the agent renews it every quarter of that
    /// (kubelet: 40 s, renewed every 10 s).
    #[arg(long, default_value = "40s", value_parser = crate::server::parse_duration)]
    node_lease_duration: Duration,
    /// Parent of the pods' cgroups in every hierarchy (default: skiff/<node name>).
    #[arg(long)]
    cgroup_parent: Option<String>,
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "node".into())
}

/// Runs the agent until SIGTERM/SIGINT. Call before any thread or runtime exists.
pub fn main(args: NodeArgs, server: &str) -> anyhow::Result<()> {
    let name = args.name.clone().unwrap_or_else(hostname);
    let data_dir = args.data_dir.clone();
    let spawner = skiff_kubelet::runtime::spawner::start(&data_dir)
        .with_context(|| format!("starting the container spawner in {}", data_dir.display()))?;
    let mut cfg = AgentConfig::new(&name, server, &data_dir);
    if let Some(l) = args.log_dir {
        cfg.log_dir = l;
    }
    cfg.node_ip = args.node_ip;
    cfg.pod_cidr = args.pod_cidr;
    cfg.pod_network = args.pod_network;
    cfg.cgroup2 = args.cgroup2;
    cfg.cluster_dns = args.cluster_dns;
    if let Some(c) = args.cores {
        cfg.cores = c.max(1);
    }
    if !(args.crash_backoff > 0.0 && args.crash_backoff.is_finite()) {
        anyhow::bail!("--crash-backoff must be a positive number of seconds");
    }
    cfg.backoff_base = Duration::from_secs_f64(args.crash_backoff);
    cfg.oci_runtime = match args.runtime.as_str() {
        "skiff" => None,
        "crun" => Some(PathBuf::from("/usr/bin/crun")),
        "runc" => Some(PathBuf::from("/usr/sbin/runc")),
        other => Some(PathBuf::from(other)),
    };
    if let Some(rt) = &cfg.oci_runtime
        && !rt.exists()
    {
        anyhow::bail!("--runtime: {} does not exist", rt.display());
    }
    if !args.no_serve {
        cfg.serve_addr = Some(
            args.serve
                .unwrap_or_else(|| std::net::SocketAddr::from((args.node_ip, 10250))),
        );
    }
    if let Some(ns) = &args.netns
        && !ns.exists()
    {
        anyhow::bail!("--netns: {} does not exist", ns.display());
    }
    cfg.node_netns = args.netns.clone();
    cfg.hostname = args.hostname_override.clone();
    cfg.lease_period = args.node_lease_duration / 4;
    if let Some(p) = &args.cgroup_parent {
        if p.trim_matches('/').is_empty() {
            anyhow::bail!("--cgroup-parent must name a directory below the cgroup roots");
        }
        cfg.cgroup_parent = p.trim_matches('/').to_string();
    }
    if args.dataplane {
        if cfg.cgroup2.is_none() {
            anyhow::bail!("--dataplane needs --cgroup2 (the node's cgroup2 directory)");
        }
        cfg.dataplane = Some(skiff_kubelet::agent::dataplane::DataplaneOptions {
            uplink: args.uplink.clone(),
            xdp_generic: args.xdp_mode == "generic",
        });
    }
    let agent = Agent::start(cfg, spawner.socket())?;
    tracing::info!(node = %name, data_dir = %data_dir.display(), "node agent running");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(crate::signal::shutdown());
    tracing::info!("stopping; pods keep running for the next agent to adopt");
    agent.stop();
    drop(spawner);
    Ok(())
}
