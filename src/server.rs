//! `skiff server`: the API server over the embedded store (default) or etcd.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use skiff_apiserver::{Config, Registry};
use skiff_store::Store;
use skiff_store::embedded::{EmbeddedOptions, EmbeddedStore};
use skiff_store::etcd::EtcdStore;

#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// Directory of the embedded store.
    #[arg(long, default_value = "/var/lib/skiff/server")]
    pub data_dir: PathBuf,
    /// Address to serve the API on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub listen: String,
    /// Use etcd instead of the embedded store: etcd://host:port[,host:port...]
    #[arg(long)]
    pub store: Option<String>,
    /// CIDR that Service ClusterIPs come from.
    #[arg(long, default_value = "198.19.0.0/16")]
    pub service_cidr: String,
    /// NodePort range, inclusive.
    #[arg(long, default_value = "30000-32767")]
    pub service_node_port_range: String,
    /// Events kept per resource for watch resumption.
    #[arg(long, default_value_t = 32 * 1024)]
    pub watch_cache_size: usize,
    /// Do not write the client config file with this server's address.
    #[arg(long)]
    pub no_write_config: bool,
    /// Do not run the scheduler in this process.
    #[arg(long)]
    pub no_scheduler: bool,
    /// Do not run the controller manager in this process.
    #[arg(long)]
    pub no_controllers: bool,
    /// How long pods tolerate a not-ready or unreachable node before eviction (the
    /// tolerations the API server adds to pods without their own).
    #[arg(long, default_value_t = 300)]
    pub default_toleration_seconds: i64,
    /// Node address types to reach node agents at (logs, exec), in order.
    #[arg(
        long,
        default_value = "InternalIP,Hostname,ExternalIP",
        value_delimiter = ','
    )]
    pub kubelet_preferred_address_types: Vec<String>,
    #[command(flatten)]
    pub controllers: ControllerArgs,
}

/// The controller manager's settings (in `skiff server` and `skiff controller-manager`).
#[derive(Debug, Clone, clap::Args)]
pub struct ControllerArgs {
    /// How often node heartbeats are checked.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub node_monitor_period: std::time::Duration,
    /// How long a node may stay silent before it is marked NotReady (Unknown).
    #[arg(long, default_value = "40s", value_parser = parse_duration)]
    pub node_monitor_grace_period: std::time::Duration,
    /// Workers per controller.
    #[arg(long, default_value_t = 5)]
    pub controller_workers: usize,
}

impl ControllerArgs {
    pub fn manager_config(&self) -> skiff_controllers::ManagerConfig {
        skiff_controllers::ManagerConfig {
            workers: self.controller_workers.max(1),
            node_lifecycle: skiff_controllers::nodelifecycle::NodeLifecycleConfig {
                monitor_period: self.node_monitor_period,
                grace_period: self.node_monitor_grace_period,
            },
            ..Default::default()
        }
    }
}

/// `500ms`, `5s`, `2m`, or plain seconds.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let t = text.trim();
    let (num, unit) = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or((t, "s"), |i| t.split_at(i));
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 500ms, 5s, 2m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    if !(secs.is_finite() && secs > 0.0) {
        return Err(format!("{text:?} must be positive"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

async fn open_store(args: &ServerArgs) -> anyhow::Result<Arc<dyn Store>> {
    match &args.store {
        None => {
            let store = EmbeddedStore::open(&args.data_dir, EmbeddedOptions::default())
                .with_context(|| format!("opening the store in {}", args.data_dir.display()))?;
            Ok(Arc::new(store))
        }
        Some(url) => {
            let Some(rest) = url.strip_prefix("etcd://") else {
                bail!("--store: expected etcd://host:port[,host:port...], got {url:?}");
            };
            let endpoints: Vec<String> = rest
                .split(',')
                .filter(|e| !e.is_empty())
                .map(|e| format!("http://{e}"))
                .collect();
            if endpoints.is_empty() {
                bail!("--store: no etcd endpoint in {url:?}");
            }
            Ok(Arc::new(EtcdStore::connect(&endpoints).await?))
        }
    }
}

fn node_port_range(text: &str) -> anyhow::Result<(u16, u16)> {
    let (a, b) = text
        .split_once('-')
        .with_context(|| format!("--service-node-port-range: expected FIRST-LAST, got {text:?}"))?;
    let (a, b): (u16, u16) = (
        a.trim()
            .parse()
            .context("--service-node-port-range: first port")?,
        b.trim()
            .parse()
            .context("--service-node-port-range: last port")?,
    );
    if a == 0 || a > b {
        bail!("--service-node-port-range: {a}-{b} is not a range of ports");
    }
    Ok((a, b))
}

pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    let service_cidr = args.service_cidr.parse().with_context(|| {
        format!(
            "--service-cidr: {:?} is not an IPv4 CIDR",
            args.service_cidr
        )
    })?;
    let config = Config {
        service_cidr,
        node_port_range: node_port_range(&args.service_node_port_range)?,
        cache: skiff_apiserver::watch_cache::CacheOptions {
            max_events: args.watch_cache_size.max(16),
            ..Default::default()
        },
        default_toleration_seconds: args.default_toleration_seconds.max(0),
        kubelet_address_types: args.kubelet_preferred_address_types.clone(),
    };
    let store = open_store(&args).await?;
    let backend = store.backend();
    let registry = Registry::new(store, config)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("--listen: cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?.to_string();
    if !args.no_write_config {
        crate::config::save(&crate::config::ClientConfig {
            server: address.clone(),
        })?;
    }
    tracing::info!(%address, store = backend, "skiff server is serving");
    eprintln!("skiff server listening on {address} (store: {backend})");
    // The scheduler and the controller manager are API clients like any other, calling
    // this server in-process: no loopback connection, no encoding, and their caches share
    // the server's bytes of every object.
    let own = skiff_client::Client::local(skiff_apiserver::local::api(registry.clone()), &address);
    // Both in this process: one pod cache and one node cache for the two (at 150,000 pods
    // each cache is hundreds of megabytes).
    let shared_handles = (!args.no_scheduler && !args.no_controllers)
        .then(|| skiff_controllers::start_shared_informers(&own));
    let shared = shared_handles
        .as_ref()
        .map(|h| h.informers.clone())
        .unwrap_or_default();
    let _scheduler = (!args.no_scheduler).then(|| {
        skiff_scheduler::Scheduler::start_shared(
            own.clone(),
            skiff_scheduler::SchedulerConfig::default(),
            &shared,
        )
    });
    let _controllers = (!args.no_controllers).then(|| {
        skiff_controllers::ControllerManager::start_shared(
            own.clone(),
            args.controllers.manager_config(),
            shared.clone(),
        )
    });
    let shutdown = crate::signal::shutdown();
    // Watches never finish on their own, so a graceful drain would wait forever: on a
    // signal, stop serving at once (every acknowledged write is already durable).
    tokio::select! {
        served = skiff_apiserver::serve(registry, listener, std::future::pending()) => served?,
        _ = shutdown => tracing::info!("shutting down"),
    }
    Ok(())
}

/// `skiff scheduler`: the scheduler on its own, against a running API server.
pub async fn scheduler(client: skiff_client::Client) -> anyhow::Result<()> {
    let _s = skiff_scheduler::Scheduler::start(client, skiff_scheduler::SchedulerConfig::default());
    eprintln!("skiff scheduler running");
    crate::signal::shutdown().await;
    Ok(())
}

/// `skiff controller-manager`: the controllers on their own (leader-elected).
pub async fn controller_manager(
    client: skiff_client::Client,
    args: ControllerArgs,
) -> anyhow::Result<()> {
    let cfg = args.manager_config();
    eprintln!(
        "skiff controller-manager {} waiting for the leader lease",
        cfg.identity
    );
    let _m = skiff_controllers::ControllerManager::start(client, cfg);
    crate::signal::shutdown().await;
    Ok(())
}
