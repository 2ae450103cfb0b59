//! Skiff's API server: Kubernetes objects over gRPC (`skiff.v1.Api`), stored in a
//! [`skiff_store::Store`], with a watch cache per resource.
//!
//! - [`registry`]: the verbs (create, get, list, update, patch, delete, bind) with
//!   Kubernetes' semantics: admission, server-set metadata, optimistic concurrency, graceful
//!   deletion, finalizers, namespaces, Service allocations.
//! - [`watch_cache`]: each event encoded once and shared by every watcher.
//! - [`grpc`]: the tonic service.
//!
//! The API server is the only component that touches the store.

pub mod allocator;
pub mod grpc;
pub mod local;
pub mod object_json;
pub mod packed;
pub mod registry;
pub mod watch_cache;

use std::future::Future;
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
pub use registry::{Config, Registry};
use skiff_api::proto::api_server::ApiServer;

/// Largest gRPC message accepted: above the 1.5 MiB object limit, so oversized objects get
/// the API's own error rather than a transport error.
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// Serves the API on `listener` until `shutdown` completes, then lets every open
/// connection finish what it carries (HTTP/2 GOAWAY) before returning.
///
/// Each connection is hyper's HTTP/2 server calling the generated gRPC service directly:
/// tonic's own server would route every request through its router and layers (boxing the
/// request body, a timeout and an error-recovery future per call), none of which the API
/// uses; the generated service already answers an unknown method with `Unimplemented`.
pub async fn serve(
    registry: Arc<Registry>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let service = ApiServer::new(grpc::ApiService::new(registry))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(usize::MAX);
    let service = hyper_util::service::TowerToHyperService::new(service);
    let mut http = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    // tonic's server settings, which the API server had before: no cap on concurrent
    // streams per connection (hyper's own default is 200; a node's connection carries its
    // informers' watches, its log and exec streams and its writes) or on reset streams.
    http.timer(TokioTimer::new())
        .keep_alive_interval(Some(KEEPALIVE_INTERVAL))
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .max_concurrent_streams(None)
        .max_pending_accept_reset_streams(None)
        .max_local_error_reset_streams(None);
    // Each connection task holds a receiver: the sender's `closed()` is all of them gone.
    let (stop, stopping) = tokio::sync::watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors or a connection reset before it was accepted: the
                    // listener itself is fine; pause briefly rather than spin.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        // Accepted sockets inherit no builder settings: disable Nagle on each, or small
        // responses wait for the peer's delayed ACK (~40 ms).
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        // Each connection's writes are coalesced per turn of its task (see `coalesce`).
        let io = TokioIo::new(skiff_api::coalesce::Coalescing::new(stream));
        let connection = http.serve_connection(io, service.clone());
        let mut stopping = stopping.clone();
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let served = tokio::select! {
                served = connection.as_mut() => served,
                _ = stopping.changed() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = served {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(stopping);
        });
    }
    // Stop accepting first, so that new clients are refused rather than left hanging.
    drop(listener);
    drop(stopping);
    let _ = stop.send(());
    stop.closed().await;
    Ok(())
}

/// How often an idle connection is pinged, and how long a ping may go unanswered before
/// the connection is closed (tonic's server defaults, which the API server used before).
const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// An API server on a free loopback port over `store`, serving until dropped: for tests,
/// benchmarks and anything that embeds a control plane.
pub struct LocalServer {
    pub address: String,
    pub registry: Arc<Registry>,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

impl LocalServer {
    pub async fn start(
        store: Arc<dyn skiff_store::Store>,
        config: Config,
    ) -> Result<LocalServer, Box<dyn std::error::Error + Send + Sync>> {
        let registry = Registry::new(store, config).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?.to_string();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(registry.clone(), listener, async {
            let _ = rx.await;
        }));
        Ok(LocalServer {
            address,
            registry,
            _shutdown: tx,
        })
    }
}
