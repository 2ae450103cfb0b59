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
pub struct DataplaneArgs {
    /// This node's name.
    #[arg(long)]
    pub node: String,
    /// The node's address: NodePort destination and SNAT source.
    #[arg(long)]
    pub node_ip: Ipv4Addr,
    /// The node's pod CIDR (backends in it are local).
    #[arg(long)]
    pub pod_cidr: Ipv4Net,
    /// The node's uplink: XDP NodePort attaches there (none: no NodePort from outside).
    #[arg(long)]
    pub uplink: Option<String>,
    /// cgroup2 directory whose sockets are load-balanced (default: the node's under
    /// /sys/fs/cgroup/unified/skiff).
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
}

pub async fn run(args: DataplaneArgs, client: Client) -> anyhow::Result<()> {
    let cgroup = args.cgroup.clone().unwrap_or_else(|| {
        PathBuf::from(skiff_dataplane::cgroup2::MOUNT)
            .join("skiff")
            .join(&args.node)
    });
    let created = !cgroup.exists();
    std::fs::create_dir_all(&cgroup)
        .with_context(|| format!("creating cgroup {}", cgroup.display()))?;
    let result = serve(&args, &cgroup, client).await;
    if created {
        // Only an empty cgroup can go; processes still in it keep it.
        let _ = std::fs::remove_dir(&cgroup);
    }
    result
}

async fn serve(
    args: &DataplaneArgs,
    cgroup: &std::path::Path,
    client: Client,
) -> anyhow::Result<()> {
    let mut dp = DataPlane::load().context("loading the eBPF programs")?;
    dp.attach_cgroup(cgroup)?;
    if let Some(dev) = &args.uplink {
        dp.attach_xdp(dev)
            .with_context(|| format!("--uplink {dev}: attaching XDP"))?;
    }
    let mut lb = dp.load_balancer()?;
    lb.set_node(NodeConfig::new(
        args.node_ip,
        args.pod_cidr.network(),
        args.pod_cidr.prefix_len(),
    ))?;
    let lb = Arc::new(Mutex::new(lb));
    let sync = ServiceSync::start(&client, lb.clone(), Some(args.node_ip));
    sync.services.wait_synced().await;
    sync.slices.wait_synced().await;
    eprintln!(
        "data plane of node {} running: sockets in {} load-balanced{}; Ctrl-C stops it",
        args.node,
        cgroup.display(),
        args.uplink
            .as_deref()
            .map(|d| format!(", NodePort on {d} ({})", args.node_ip))
            .unwrap_or_default()
    );
    crate::signal::shutdown().await;
    // Dropping the sync and the programs detaches everything.
    drop(sync);
    drop(dp);
    Ok(())
}
