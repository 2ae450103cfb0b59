//! The gRPC client's connection: hyper's HTTP/2 client connection called directly.
//!
//! tonic's `Channel` puts a `tower::Buffer` in front of its connection: every request is
//! handed over a channel to a worker task that calls the connection, and its answer comes
//! back through another. That hop was a ninth of a busy client's time. Here a request goes
//! straight into hyper's `SendRequest` (shared, cheap to clone). The connection opens on
//! first use and again whenever it has closed; a request on a connection that closes under
//! it fails as the server's absence does (`Unavailable`), never retried.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioTimer};

type Body = tonic::body::Body;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long opening a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often an idle connection is pinged (tonic's client setting, which Skiff had).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// A connection to the API server, opened when first needed and reopened after it closed.
#[derive(Clone)]
pub(crate) struct Connection {
    inner: Arc<Inner>,
}

struct Inner {
    host: String,
    port: u16,
    current: parking_lot::Mutex<Option<SendRequest<Body>>>,
    /// Held while a connection opens, so that concurrent callers wait for that one.
    opening: tokio::sync::Mutex<()>,
}

impl Connection {
    pub(crate) fn new(host: &str, port: u16) -> Self {
        Connection {
            inner: Arc::new(Inner {
                host: host.to_string(),
                port,
                current: parking_lot::Mutex::new(None),
                opening: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// Opens the connection now unless it is open.
    pub(crate) async fn open(&self) -> Result<(), BoxError> {
        self.sender().await.map(drop)
    }

    fn live(&self) -> Option<SendRequest<Body>> {
        self.inner
            .current
            .lock()
            .as_ref()
            .filter(|s| !s.is_closed())
            .cloned()
    }

    async fn sender(&self) -> Result<SendRequest<Body>, BoxError> {
        if let Some(s) = self.live() {
            return Ok(s);
        }
        let _opening = self.inner.opening.lock().await;
        if let Some(s) = self.live() {
            return Ok(s);
        }
        let io = tokio::time::timeout(CONNECT_TIMEOUT, tcp(&self.inner.host, self.inner.port))
            .await
            .map_err(|_| format!("no connection within {CONNECT_TIMEOUT:?}"))??;
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_while_idle(true)
            .handshake(io)
            .await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "API server connection ended");
            }
        });
        *self.inner.current.lock() = Some(sender.clone());
        Ok(sender)
    }
}

/// The TCP connection: Nagle off, and the writes of each turn of the connection's task
/// leave in one system call (`skiff_api::coalesce`), so requests sent together by many
/// tasks share a write.
async fn tcp(
    host: &str,
    port: u16,
) -> std::io::Result<hyper_util::rt::TokioIo<skiff_api::coalesce::Coalescing<tokio::net::TcpStream>>>
{
    let tcp = tokio::net::TcpStream::connect((host, port)).await?;
    tcp.set_nodelay(true)?;
    Ok(hyper_util::rt::TokioIo::new(
        skiff_api::coalesce::Coalescing::new(tcp),
    ))
}

impl tower::Service<tonic::codegen::http::Request<Body>> for Connection {
    type Response = tonic::codegen::http::Response<hyper::body::Incoming>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: tonic::codegen::http::Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let mut sender = this
                .sender()
                .await
                .map_err(|e| Box::new(tonic::Status::unavailable(e.to_string())) as BoxError)?;
            Ok(sender.send_request(request).await?)
        })
    }
}
