//! The gRPC client's connection: an HTTP/2 connection of the `h2` crate, called directly.
//!
//! tonic's `Channel` puts a `tower::Buffer` in front of its connection (every request
//! handed over a channel to a worker task and its answer back through another), and
//! hyper's client, below it, hands each request over another channel to its dispatch
//! task and pipes each request body from a task of its own. Here the caller's task opens
//! the stream itself and writes what the request body has ready (a unary call's whole
//! message), so a unary call crosses no task but the connection's; only a body that is not
//! complete yet (a client-streaming call, such as exec's input) is piped by a task. The
//! connection opens on first use and again whenever it has closed, and is pinged while
//! idle as hyper's was; a request on a connection that closes under it fails as the
//! server's absence does (`Unavailable`), never retried.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use http_body::{Body as _, Frame};
use tonic::codegen::http::{Request, Response};

type Body = tonic::body::Body;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long opening a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often an idle connection is pinged (tonic's client setting, which Skiff had).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a ping may go unanswered before the connection is given up.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Flow-control windows and send buffer: hyper's client defaults, which Skiff had.
const STREAM_WINDOW: u32 = 2 << 20;
const CONNECTION_WINDOW: u32 = 5 << 20;
const MAX_SEND_BUFFER: usize = 1 << 20;

/// A connection to the API server, opened when first needed and reopened after it closed.
#[derive(Clone)]
pub(crate) struct Connection {
    inner: Arc<Inner>,
}

/// An open connection: its request handle and whether it has ended.
#[derive(Clone)]
struct Open {
    sender: SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
}

struct Inner {
    host: String,
    port: u16,
    current: parking_lot::Mutex<Option<Open>>,
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

    fn live(&self) -> Option<SendRequest<Bytes>> {
        self.inner
            .current
            .lock()
            .as_ref()
            .filter(|o| !o.closed.load(Ordering::Acquire))
            .map(|o| o.sender.clone())
    }

    async fn sender(&self) -> Result<SendRequest<Bytes>, BoxError> {
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
        let (sender, mut connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_send_buffer_size(MAX_SEND_BUFFER)
            .enable_push(false)
            .handshake::<_, Bytes>(io)
            .await?;
        let closed = Arc::new(AtomicBool::new(false));
        let pings = connection.ping_pong();
        let ended = closed.clone();
        tokio::spawn(async move {
            tokio::select! {
                result = &mut connection => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "API server connection ended");
                    }
                }
                () = keepalive(pings) => {
                    tracing::debug!("API server connection gave no answer to a ping; closing it");
                }
            }
            ended.store(true, Ordering::Release);
        });
        *self.inner.current.lock() = Some(Open {
            sender: sender.clone(),
            closed,
        });
        Ok(sender)
    }
}

/// Pings the connection every interval; returns when a ping goes unanswered (or the
/// connection can no longer be pinged).
async fn keepalive(pings: Option<h2::PingPong>) {
    let Some(mut pings) = pings else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(KEEPALIVE_INTERVAL).await;
        match tokio::time::timeout(KEEPALIVE_TIMEOUT, pings.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
    }
}

/// The TCP connection: Nagle off, and the writes of each turn of the connection's task
/// leave in one system call (`skiff_api::coalesce`), so requests sent together by many
/// tasks share a write.
async fn tcp(
    host: &str,
    port: u16,
) -> std::io::Result<skiff_api::coalesce::Coalescing<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect((host, port)).await?;
    tcp.set_nodelay(true)?;
    Ok(skiff_api::coalesce::Coalescing::new(tcp))
}

/// A failure of the connection itself (rather than of one stream) as gRPC's Unavailable.
fn unavailable(e: h2::Error) -> BoxError {
    if e.is_io() || e.is_go_away() || e.reason().is_none() {
        Box::new(tonic::Status::unavailable(e.to_string()))
    } else {
        Box::new(e)
    }
}

impl tower::Service<Request<Body>> for Connection {
    type Response = Response<ResponseBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let sender = this
                .sender()
                .await
                .map_err(|e| Box::new(tonic::Status::unavailable(e.to_string())) as BoxError)?;
            let mut sender = sender.ready().await.map_err(unavailable)?;
            let (parts, mut body) = request.into_parts();
            let (response, mut send) = sender
                .send_request(Request::from_parts(parts, ()), false)
                .map_err(unavailable)?;
            // What the body has ready goes now (a unary call's whole message, with the end
            // of the stream on its frame: each frame is held until the next look shows
            // whether more follows); a body still being produced is piped by a task.
            let mut held: Option<Bytes> = None;
            loop {
                match next_frame(&mut body).now_or_never() {
                    Some(Some(Ok(frame))) => match frame.into_data() {
                        Ok(data) => {
                            if let Some(before) = held.replace(data) {
                                send.send_data(before, false).map_err(unavailable)?;
                            }
                        }
                        Err(frame) => {
                            if let Some(before) = held.take() {
                                send.send_data(before, false).map_err(unavailable)?;
                            }
                            if let Ok(trailers) = frame.into_trailers() {
                                send.send_trailers(trailers).map_err(unavailable)?;
                                break;
                            }
                        }
                    },
                    Some(Some(Err(status))) => {
                        send.send_reset(h2::Reason::CANCEL);
                        return Err(Box::new(status) as BoxError);
                    }
                    Some(None) => {
                        let last = held.take().unwrap_or_default();
                        send.send_data(last, true).map_err(unavailable)?;
                        break;
                    }
                    None => {
                        if let Some(before) = held.take() {
                            send.send_data(before, false).map_err(unavailable)?;
                        }
                        tokio::spawn(pipe(body, send));
                        break;
                    }
                }
            }
            let (parts, recv) = response.await.map_err(unavailable)?.into_parts();
            Ok(Response::from_parts(
                parts,
                ResponseBody {
                    recv,
                    data_done: false,
                },
            ))
        })
    }
}

/// The body's next frame.
async fn next_frame(body: &mut Body) -> Option<Result<Frame<Bytes>, tonic::Status>> {
    std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
}

/// Sends the rest of a request body as it is produced, within the stream's flow-control
/// window; stops when the server resets the stream.
async fn pipe(mut body: Body, mut send: SendStream<Bytes>) {
    loop {
        let frame = tokio::select! {
            frame = next_frame(&mut body) => frame,
            _ = std::future::poll_fn(|cx| send.poll_reset(cx)) => return,
        };
        match frame {
            None => {
                let _ = send.send_data(Bytes::new(), true);
                return;
            }
            Some(Err(_)) => {
                send.send_reset(h2::Reason::CANCEL);
                return;
            }
            Some(Ok(frame)) => {
                let end = body.is_end_stream();
                match frame.into_data() {
                    Ok(data) => {
                        if send_within_window(&mut send, data, end).await.is_err() || end {
                            return;
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            let _ = send.send_trailers(trailers);
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// Sends `data` as the stream's window allows.
async fn send_within_window(
    send: &mut SendStream<Bytes>,
    mut data: Bytes,
    end: bool,
) -> Result<(), h2::Error> {
    if data.is_empty() {
        return if end {
            send.send_data(data, true)
        } else {
            Ok(())
        };
    }
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let granted = match std::future::poll_fn(|cx| send.poll_capacity(cx)).await {
            Some(granted) => granted?,
            None => return Err(h2::Error::from(h2::Reason::CANCEL)),
        };
        let chunk = data.split_to(granted.min(data.len()));
        send.send_data(chunk, end && data.is_empty())?;
    }
    Ok(())
}

/// A response's body: its DATA frames (their flow-control window given back as they are
/// read), then its trailers (gRPC's status).
pub(crate) struct ResponseBody {
    recv: RecvStream,
    data_done: bool,
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = &mut *self;
        if !this.data_done {
            match std::task::ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => this.data_done = true,
            }
        }
        Poll::Ready(match std::task::ready!(this.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Some(Ok(Frame::trailers(trailers))),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        })
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }
}
