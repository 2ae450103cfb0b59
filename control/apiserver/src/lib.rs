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

pub use registry::{Config, Registry};
use skiff_api::proto::api_server::ApiServer;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;

/// Largest gRPC message accepted: above the 1.5 MiB object limit, so oversized objects get
/// the API's own error rather than a transport error.
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    registry: Arc<Registry>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let service = ApiServer::new(grpc::ApiService::new(registry))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(usize::MAX);
    // Sockets accepted here do not get the builder's TCP settings: disable Nagle on each,
    // or small responses wait for the peer's delayed ACK (~40 ms).
    // Each connection's writes are coalesced per turn of its task (see `coalesce`).
    let incoming = TcpListenerStream::new(listener).map(|conn| {
        conn.inspect(|stream| {
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        })
        .map(skiff_api::coalesce::Coalescing::new)
    });
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

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
