//! Write coalescing for HTTP/2 connections.
//!
//! h2 writes a DATA frame larger than 256 bytes straight from its buffer (vectored I/O) and
//! flushes the socket right after it, so each such frame costs a `writev` and a TCP segment
//! of its own: a unary gRPC answer carrying an object is two (headers and data, then the
//! trailers), and a connection carrying a hundred watches writes once per watch per event.
//!
//! [`Coalescing`] copies what the connection writes into one buffer and, when the
//! connection asks for a flush, writes it out at the start of the connection task's next
//! turn instead: the flush wakes the task, which runs again after the tasks already queued,
//! so everything the connection produced in between (the trailers, other streams' answers
//! and events) leaves in one `writev`. h2 reads the socket at the start of every turn, so
//! the pending bytes go out there; past [`LIMIT`] they are written at once, and a shutdown
//! writes them before closing. The delay is one pass of the runtime's queue, not a timer.
//! While the socket is full the flush asks for no turn: the socket's readiness wakes the
//! task.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Pending bytes past which a write goes to the socket without waiting for a turn.
pub const LIMIT: usize = 64 << 10;

/// A socket whose flushes are deferred to the connection task's next turn.
#[derive(Debug)]
pub struct Coalescing<T> {
    inner: T,
    pending: Vec<u8>,
    /// How much of `pending` the socket already took.
    sent: usize,
    /// A wake-up was asked for to write `pending` out.
    deferred: bool,
    /// The socket refused the last write: it wakes the task when it takes more, so a flush
    /// must not (a peer that stops reading would keep the task spinning).
    blocked: bool,
}

impl<T> Coalescing<T> {
    pub fn new(inner: T) -> Self {
        Coalescing {
            inner,
            pending: Vec::new(),
            sent: 0,
            deferred: false,
            blocked: false,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    fn unsent(&self) -> usize {
        self.pending.len() - self.sent
    }
}

impl<T: AsyncWrite + Unpin> Coalescing<T> {
    /// Writes the pending bytes to the socket; Ready once all are taken.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.pending.len() {
            let written = Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.sent..]);
            self.blocked = written.is_pending();
            let n = ready!(written)?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.pending.clear();
        self.sent = 0;
        if self.pending.capacity() > 4 * LIMIT {
            self.pending = Vec::new();
        }
        Poll::Ready(Ok(()))
    }

    /// Makes room for a write: past the limit the pending bytes go out first.
    fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.unsent() >= LIMIT {
            ready!(self.poll_drain(cx))?;
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for Coalescing<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        // The start of a turn: what the last one left goes out now. A full socket keeps it
        // pending (the task is woken when the socket takes more) and reading goes on.
        me.deferred = false;
        if me.unsent() > 0
            && let Poll::Ready(Err(e)) = me.poll_drain(cx)
        {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut me.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalescing<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        ready!(me.poll_room(cx))?;
        let take = buf.len().min(LIMIT);
        me.pending.extend_from_slice(&buf[..take]);
        Poll::Ready(Ok(take))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        ready!(me.poll_room(cx))?;
        let mut taken = 0;
        for b in bufs {
            let take = b.len().min(LIMIT.saturating_sub(taken));
            me.pending.extend_from_slice(&b[..take]);
            taken += take;
            if take < b.len() {
                break;
            }
        }
        Poll::Ready(Ok(taken))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if me.unsent() == 0 {
            return Pin::new(&mut me.inner).poll_flush(cx);
        }
        if me.unsent() >= LIMIT {
            ready!(me.poll_drain(cx))?;
            return Pin::new(&mut me.inner).poll_flush(cx);
        }
        if !me.deferred && !me.blocked {
            me.deferred = true;
            cx.waker().wake_by_ref();
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        ready!(me.poll_drain(cx))?;
        Pin::new(&mut me.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Flushed bytes reach the peer once the writer's task reads again, in order, and a
    /// shutdown writes what is left.
    #[tokio::test]
    async fn flushed_bytes_arrive_in_order() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut a = Coalescing::new(a);
        a.write_all(b"hello ").await.expect("write");
        a.flush().await.expect("flush");
        a.write_all(b"world").await.expect("write");
        a.flush().await.expect("flush");
        // Not written yet: the flush waits for the next turn.
        let mut got = [0u8; 11];
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), b.read_exact(&mut got))
                .await
                .is_err()
        );
        // The writer's next turn starts with a read: the bytes go out.
        let mut none = [0u8; 1];
        let _ = tokio::time::timeout(std::time::Duration::from_millis(10), a.read(&mut none)).await;
        b.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"hello world");
        // Beyond the limit, writes go out without waiting.
        let big = vec![7u8; 3 * LIMIT];
        let reader = tokio::spawn(async move {
            let mut all = vec![0u8; 3 * LIMIT + 3];
            b.read_exact(&mut all).await.expect("read");
            all
        });
        a.write_all(&big).await.expect("write");
        a.write_all(b"end").await.expect("write");
        a.shutdown().await.expect("shutdown");
        let all = reader.await.expect("reader");
        assert!(all[..3 * LIMIT].iter().all(|&x| x == 7));
        assert_eq!(&all[3 * LIMIT..], b"end");
    }

    struct Count(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: std::sync::Arc<Self>) {
            self.wake_by_ref()
        }
        fn wake_by_ref(self: &std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// A peer that stops reading does not keep the writer's task spinning: with the socket
    /// full, a flush asks for no turn (the socket wakes the task when it takes more).
    #[tokio::test]
    async fn a_full_socket_asks_for_no_turn() {
        let (a, mut b) = tokio::io::duplex(16);
        let mut a = Coalescing::new(a);
        let count = std::sync::Arc::new(Count(std::sync::atomic::AtomicUsize::new(0)));
        let waker = std::task::Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let wakes = || count.0.load(std::sync::atomic::Ordering::SeqCst);
        assert!(matches!(
            Pin::new(&mut a).poll_write(&mut cx, &[1u8; 100]),
            Poll::Ready(Ok(100))
        ));
        // An idle socket: the flush defers, asking for one turn.
        assert!(matches!(
            Pin::new(&mut a).poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(wakes(), 1);
        // The turn: 16 bytes fit, the rest waits for the peer.
        let mut space = [0u8; 8];
        let mut rb = ReadBuf::new(&mut space);
        assert!(Pin::new(&mut a).poll_read(&mut cx, &mut rb).is_pending());
        assert!(matches!(
            Pin::new(&mut a).poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(
            wakes(),
            1,
            "a flush on a full socket must not ask for a turn"
        );
        // The peer reads: the socket wakes the task, and the rest goes out.
        let mut got = vec![0u8; 16];
        b.read_exact(&mut got).await.expect("read");
        assert!(wakes() >= 2);
        let mut rb = ReadBuf::new(&mut space);
        assert!(Pin::new(&mut a).poll_read(&mut cx, &mut rb).is_pending());
        let mut rest = vec![0u8; 16];
        b.read_exact(&mut rest).await.expect("read");
        assert_eq!(rest, vec![1u8; 16]);
    }
}
