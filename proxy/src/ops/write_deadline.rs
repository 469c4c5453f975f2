//! A stream whose writes may not stall for longer than a bound.
//!
//! hyper, which serves the admin listener, has a header-read timeout but no write timeout: a
//! client that asks for `/metrics` and reads nothing would hold its connection (one of the
//! admin listener's few slots) for ever once the answer outgrows the socket buffers, and enough
//! of them would keep `/ready` from a load balancer's probes. [`WriteDeadline`] fails a write
//! or flush that has made no progress for its bound, which ends the connection.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// `inner`, with writes that fail after `limit` without progress.
pub struct WriteDeadline<S> {
    inner: S,
    limit: Duration,
    /// Armed when a write or flush first waits; cleared by any progress.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> WriteDeadline<S> {
    pub fn new(inner: S, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            stalled: None,
        }
    }

    /// `polled` from the inner stream, or a `TimedOut` error once writing has waited `limit`.
    fn bound<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let limit = self.limit;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client read nothing within the write deadline",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.bound(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.bound(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.bound(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.bound(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_write_nobody_reads_fails_at_the_deadline_and_progress_resets_it() {
        // A pipe with room for 8 bytes whose other end reads nothing.
        let (near, _far) = tokio::io::duplex(8);
        let mut w = WriteDeadline::new(near, Duration::from_secs(5));
        w.write_all(b"12345678").await.unwrap();
        let started = tokio::time::Instant::now();
        let err = w.write_all(b"more").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(5) && waited < Duration::from_secs(6),
            "{waited:?}"
        );

        // A slow reader that makes room every 4 s: each stall is within the deadline, though
        // together they last 8 s, so the writes go through only if progress restarts it.
        let (near, mut far2) = tokio::io::duplex(8);
        let mut w = WriteDeadline::new(near, Duration::from_secs(5));
        w.write_all(b"12345678").await.unwrap();
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_secs(4)).await;
                far2.read_exact(&mut buf).await.unwrap();
            }
            far2
        });
        let started = tokio::time::Instant::now();
        for chunk in [b"abcdefgh", b"ijklmnop"] {
            w.write_all(chunk)
                .await
                .expect("room made within the deadline each time");
        }
        assert!(started.elapsed() >= Duration::from_secs(8));
        drop(reader.await.unwrap());
    }
}
