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
    let shutdown = crate::signal::shutdown();
    // Watches never finish on their own, so a graceful drain would wait forever: on a
    // signal, stop serving at once (every acknowledged write is already durable).
    tokio::select! {
        served = skiff_apiserver::serve(registry, listener, std::future::pending()) => served?,
        _ = shutdown => tracing::info!("shutting down"),
    }
    Ok(())
}
