//! Client connections write many small HTTP/2 frames in one system call.
//!
//! HTTP/2 writes and flushes its connection each time a stream hands it a frame. When a batch
//! of puts is applied, or an event fans out to hundreds of watch streams, the stream tasks
//! wake one by one and the connection task runs after each of them, so every response went
//! out in its own `writev` (and over loopback, its own trip through the receiver's network
//! stack). This wrapper accepts writes into a buffer and, on the first flush that finds
//! bytes waiting, yields to the runtime until tokio has run the other ready tasks (the rest
//! of the batch adds its frames meanwhile; flushes in between only buffer), then writes all
//! of it together. The delay is bounded by the runtime's own scheduling, not by a timer:
//! tokio wakes yielded tasks once a worker runs out of ready ones, and at least every few
//! dozen task polls.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll, Wake, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::limits::CONNECTION_HELD_BYTES;

/// The waker a flush's yield is polled with: it tells whether the runtime has woken the
/// yield (other wake-ups of the connection must not end the wait early).
#[derive(Default)]
struct Resumed {
    woken: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for Resumed {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(w) = task {
            w.wake();
        }
    }
}

pub struct Coalesce<T> {
    inner: T,
    held: Vec<u8>,
    /// How much of `held` the socket has taken.
    written: usize,
    /// A flush is waiting for the runtime to resume it.
    waiting: bool,
    resumed: Arc<Resumed>,
}

impl<T> Coalesce<T> {
    pub fn new(inner: T) -> Coalesce<T> {
        Coalesce {
            inner,
            held: Vec::new(),
            written: 0,
            waiting: false,
            resumed: Arc::default(),
        }
    }
}

impl<T: AsyncWrite + Unpin> Coalesce<T> {
    /// Writes everything held to the socket.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.held.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.held[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.held.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }

    /// Makes room for `incoming` more bytes: a full buffer is written out first.
    fn poll_room(&mut self, cx: &mut Context<'_>, incoming: usize) -> Poll<io::Result<()>> {
        if self.held.len() + incoming > CONNECTION_HELD_BYTES && !self.held.is_empty() {
            ready!(self.poll_drain(cx))?;
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesce<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesce<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_room(cx, buf.len()))?;
        if buf.len() > CONNECTION_HELD_BYTES {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        this.held.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        ready!(this.poll_room(cx, total))?;
        if total > CONNECTION_HELD_BYTES {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        }
        for b in bufs {
            this.held.extend_from_slice(b);
        }
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.held.is_empty() {
            return Pin::new(&mut this.inner).poll_flush(cx);
        }
        *this.resumed.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(cx.waker().clone());
        if !this.waiting {
            this.resumed.woken.store(false, Ordering::Release);
            // Polled once, with our waker: the runtime keeps it among its yielded tasks.
            let waker = Waker::from(this.resumed.clone());
            let yielded = std::pin::pin!(tokio::task::yield_now())
                .poll(&mut Context::from_waker(&waker))
                .is_pending();
            this.waiting = yielded;
        }
        // Polls for other reasons (a stream handing over a frame) only buffer.
        if this.waiting && !this.resumed.woken.load(Ordering::Acquire) {
            return Poll::Pending;
        }
        this.waiting = false;
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn writes_reach_the_peer_only_after_a_flush_and_all_together() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut w = Coalesce::new(a);
        w.write_all(b"one ").await.unwrap();
        w.write_all(b"two").await.unwrap();
        let mut buf = [0u8; 16];
        let early = tokio::time::timeout(std::time::Duration::from_millis(50), b.read(&mut buf));
        assert!(early.await.is_err(), "nothing is sent before a flush");
        w.flush().await.unwrap();
        let n = b.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"one two");
    }

    #[tokio::test]
    async fn a_flush_lets_the_other_ready_tasks_run_before_it_writes() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut w = Coalesce::new(a);
        let ran = Arc::new(AtomicBool::new(false));
        let other = {
            let ran = ran.clone();
            tokio::spawn(async move { ran.store(true, Ordering::SeqCst) })
        };
        w.write_all(b"frame").await.unwrap();
        w.flush().await.unwrap();
        assert!(
            ran.load(Ordering::SeqCst),
            "the ready task ran before the write"
        );
        let mut buf = [0u8; 8];
        let n = b.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"frame");
        other.await.unwrap();
    }

    #[tokio::test]
    async fn a_full_buffer_goes_out_without_a_flush_and_shutdown_drains() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut w = Coalesce::new(a);
        let big = vec![7u8; CONNECTION_HELD_BYTES];
        w.write_all(&big).await.unwrap();
        w.write_all(b"x").await.unwrap();
        let mut got = vec![0u8; CONNECTION_HELD_BYTES];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(got, big);
        w.write_all(&vec![1u8; 3 * CONNECTION_HELD_BYTES])
            .await
            .unwrap();
        w.shutdown().await.unwrap();
        let mut rest = Vec::new();
        b.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest.len(), 1 + 3 * CONNECTION_HELD_BYTES);
        assert_eq!(rest[0], b'x');
    }
}
