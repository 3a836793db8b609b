//! The socket under a WebSocket connection, with a read budget for the time before `connect`
//! succeeds: an unauthenticated client can make the server buffer at most one 64 KiB frame,
//! whatever `maxPayload` allows afterwards. When the budget runs out, reads stall (nothing
//! more is buffered) and the connection is told, so it can close with a clear reason.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// Largest frame payload accepted before authentication (OpenClaw's pre-auth limit), bytes.
pub const PREAUTH_FRAME_BYTES_MAX: usize = 64 * 1024;
/// Largest WebSocket frame header (2 + 8 length + 4 mask), bytes.
const FRAME_HEADER_BYTES_MAX: usize = 14;
/// Bytes a client may send before authentication: one maximal frame with its header.
pub(crate) const PREAUTH_READ_BYTES_MAX: usize = PREAUTH_FRAME_BYTES_MAX + FRAME_HEADER_BYTES_MAX;
/// Chunk read at a time while the budget applies, bytes.
const PREAUTH_READ_CHUNK_BYTES: usize = 4096;

/// How many bytes may still be read; shared between the socket and its connection task.
#[derive(Debug)]
pub(crate) struct ReadBudget {
    remaining: AtomicUsize,
    unlimited: AtomicBool,
    exhausted: Notify,
    waker: Mutex<Option<Waker>>,
}

impl ReadBudget {
    pub(crate) fn new(bytes: usize) -> Arc<Self> {
        Arc::new(ReadBudget {
            remaining: AtomicUsize::new(bytes),
            unlimited: AtomicBool::new(false),
            exhausted: Notify::new(),
            waker: Mutex::new(None),
        })
    }

    /// Removes the limit (after authentication) and resumes a stalled read.
    pub(crate) fn lift(&self) {
        self.unlimited.store(true, Ordering::Release);
        let waker = self.waker.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Resolves once a read stalled on an empty budget.
    pub(crate) async fn exhausted(&self) {
        self.exhausted.notified().await;
    }
}

/// An async socket whose reads are limited by a [`ReadBudget`].
pub(crate) struct BudgetedIo<T> {
    inner: T,
    budget: Arc<ReadBudget>,
}

impl<T> BudgetedIo<T> {
    pub(crate) fn new(inner: T, budget: Arc<ReadBudget>) -> Self {
        BudgetedIo { inner, budget }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for BudgetedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.budget.unlimited.load(Ordering::Acquire) {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let remaining = self.budget.remaining.load(Ordering::Acquire);
        if remaining == 0 {
            *self.budget.waker.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some(cx.waker().clone());
            // `lift` may have run between the check above and storing the waker.
            if self.budget.unlimited.load(Ordering::Acquire) {
                return Pin::new(&mut self.inner).poll_read(cx, buf);
            }
            self.budget.exhausted.notify_one();
            return Poll::Pending;
        }
        let limit = remaining.min(buf.remaining()).min(PREAUTH_READ_CHUNK_BYTES);
        let mut chunk = [0u8; PREAUTH_READ_CHUNK_BYTES];
        let mut limited = ReadBuf::new(&mut chunk[..limit]);
        match Pin::new(&mut self.inner).poll_read(cx, &mut limited) {
            Poll::Ready(Ok(())) => {
                let n = limited.filled().len();
                buf.put_slice(limited.filled());
                self.budget.remaining.fetch_sub(n, Ordering::AcqRel);
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for BudgetedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn reads_stop_at_the_budget_and_resume_when_lifted() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let budget = ReadBudget::new(10);
        let mut io = BudgetedIo::new(server, budget.clone());
        client.write_all(&[1u8; 32]).await.unwrap();

        let mut got = vec![0u8; 32];
        let n = io.read(&mut got).await.unwrap();
        assert_eq!(n, 10);

        // The next read stalls and reports exhaustion.
        let read = tokio::spawn(async move {
            let mut rest = vec![0u8; 32];
            io.read(&mut rest).await.unwrap()
        });
        tokio::time::timeout(std::time::Duration::from_secs(5), budget.exhausted()).await.unwrap();
        assert!(!read.is_finished());
        budget.lift();
        assert_eq!(read.await.unwrap(), 22);
    }
}
