//! `skiff dataplane`: one node's eBPF data plane on its own (the node agent will run the
//! same thing in-process): socket-level load balancing for the node's cgroup, XDP NodePort
//! on its uplink, services synced from the API server.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use ipnet::Ipv4Net;
use parking_lot::Mutex;
use skiff_client::Client;
use skiff_dataplane::maps::NodeConfig;
use skiff_dataplane::{DataPlane, ServiceSync};

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DataplaneCmd {
    #[command(subcommand)]
    pub command: Option<DataplaneSub>,
    #[command(flatten)]
    pub run: DataplaneArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum DataplaneSub {
    /// Per-service packets, bytes and new connections of a node's running data plane.
    Stats {
        /// The node whose data plane to read.
        #[arg(long)]
        node: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct DataplaneArgs {
    /// This node's name.
    #[arg(long)]
    pub node: Option<String>,
    /// The node's address: NodePort destination and SNAT source.
    #[arg(long)]
    pub node_ip: Option<Ipv4Addr>,
    /// The node's pod CIDR (backends in it are local).
    #[arg(long)]
    pub pod_cidr: Option<Ipv4Net>,
    /// The node's uplink: XDP NodePort attaches there (none: no NodePort from outside).
    #[arg(long)]
    pub uplink: Option<String>,
    /// How XDP attaches to the uplink: native (physical NICs) or generic (veth uplinks).
    #[arg(long, value_parser = ["native", "generic"], default_value = "native")]
    pub xdp_mode: String,
    /// cgroup2 directory whose sockets are load-balanced (default: the node's under
    /// /sys/fs/cgroup/unified/skiff).
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
}

/// The running data plane's node settings, all given.
struct Node {
    name: String,
    ip: Ipv4Addr,
    pod_cidr: Ipv4Net,
}

pub async fn run(cmd: DataplaneCmd, client: Client) -> anyhow::Result<()> {
    if let Some(DataplaneSub::Stats { node }) = cmd.command {
        return stats(&node, &client).await;
    }
    let args = cmd.run;
    let node = Node {
        name: args.node.clone().context("--node is required")?,
        ip: args.node_ip.context("--node-ip is required")?,
        pod_cidr: args.pod_cidr.context("--pod-cidr is required")?,
    };
    let cgroup = args.cgroup.clone().unwrap_or_else(|| {
        PathBuf::from(skiff_dataplane::cgroup2::MOUNT)
            .join("skiff")
            .join(&node.name)
    });
    let created = !cgroup.exists();
    std::fs::create_dir_all(&cgroup)
        .with_context(|| format!("creating cgroup {}", cgroup.display()))?;
    let result = serve(&args, &node, &cgroup, client).await;
    if created {
        // Only an empty cgroup can go; processes still in it keep it.
        let _ = std::fs::remove_dir(&cgroup);
    }
    result
}

async fn serve(
    args: &DataplaneArgs,
    node: &Node,
    cgroup: &std::path::Path,
    client: Client,
) -> anyhow::Result<()> {
    let mut dp = DataPlane::load().context("loading the eBPF programs")?;
    dp.attach_cgroup(cgroup)?;
    let pins = skiff_dataplane::stats::BpfFs::mount(&skiff_dataplane::stats::pin_dir(&node.name))
        .context("mounting a bpffs for the counters")?;
    dp.pin_for_readers(pins.path())?;
    if let Some(dev) = &args.uplink {
        let mode = if args.xdp_mode == "generic" {
            skiff_dataplane::XdpAttach::Generic
        } else {
            skiff_dataplane::XdpAttach::Native
        };
        dp.attach_xdp(dev, mode)
            .with_context(|| format!("--uplink {dev}: attaching XDP"))?;
    }
    let mut lb = dp.load_balancer()?;
    lb.set_node(NodeConfig::new(
        node.ip,
        node.pod_cidr.network(),
        node.pod_cidr.prefix_len(),
    ))?;
    let lb = Arc::new(Mutex::new(lb));
    let sync = ServiceSync::start(&client, lb.clone(), Some(node.ip));
    sync.services.wait_synced().await;
    sync.slices.wait_synced().await;
    eprintln!(
        "data plane of node {} running: sockets in {} load-balanced{}; Ctrl-C stops it",
        node.name,
        cgroup.display(),
        args.uplink
            .as_deref()
            .map(|d| format!(", NodePort on {d} ({})", node.ip))
            .unwrap_or_default()
    );
    crate::signal::shutdown().await;
    // Dropping the sync and the programs detaches everything; the bpffs goes last.
    drop(sync);
    drop(dp);
    drop(pins);
    Ok(())
}

/// `skiff dataplane stats`: the node's frontends, named after their Services when the API
/// server knows them, with their counters. The node's agent serves them (its data plane
/// runs in-process); a standalone `skiff dataplane` on this machine leaves them pinned
/// instead.
async fn stats(node: &str, client: &Client) -> anyhow::Result<()> {
    let rows = match client.dataplane_stats(node).await {
        Ok(rows) => rows,
        Err(api) => {
            let pinned = skiff_dataplane::stats::read(&skiff_dataplane::stats::pin_dir(node))
                .map_err(|local| {
                    anyhow::anyhow!(
                        "{}; and no standalone data plane of node {node} runs here: {local}",
                        crate::cli::server_error(&api)
                    )
                })?;
            pinned
                .iter()
                .map(|(f, c)| skiff_dataplane::stats::to_proto(f, c))
                .collect()
        }
    };
    let mut names = std::collections::HashMap::new();
    if let Ok(list) = client
        .api::<k8s_openapi::api::core::v1::Service>("")
        .list(&Default::default())
        .await
    {
        for svc in list.items {
            let (Some(ns), Some(name), Some(spec)) = (
                svc.metadata.namespace.as_deref(),
                svc.metadata.name.as_deref(),
                svc.spec.as_ref(),
            ) else {
                continue;
            };
            for p in spec.ports.iter().flatten() {
                let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
                let label = format!("{ns}/{name}");
                if let Some(ip) = spec.cluster_ip.as_deref() {
                    names.insert(format!("{ip}:{}/{proto}", p.port), label.clone());
                }
                if let Some(np) = p.node_port {
                    names.insert(format!("*:{np}/{proto}"), label);
                }
            }
        }
    }
    let mut table = vec![vec![
        "SERVICE".to_string(),
        "FRONTEND".into(),
        "PACKETS".into(),
        "BYTES".into(),
        "CONNECTIONS".into(),
    ]];
    for f in rows {
        let frontend = format!("{}:{}/{}", f.address, f.port, f.protocol);
        let name = names
            .get(&frontend)
            .or_else(|| names.get(&format!("*:{}/{}", f.port, f.protocol)))
            .cloned()
            .unwrap_or_else(|| "<unknown>".into());
        let scope = if f.node_port { " (NodePort)" } else { "" };
        table.push(vec![
            name,
            format!("{frontend}{scope}"),
            f.packets.to_string(),
            f.bytes.to_string(),
            f.connections.to_string(),
        ]);
    }
    print!("{}", crate::cli::table::render(&table));
    Ok(())
}
