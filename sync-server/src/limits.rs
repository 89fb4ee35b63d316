//! The limits a node sets itself so that it refuses clearly instead of falling over:
//! the open-files limit raised as far as the system allows at start, and a cap on
//! connections beyond which a newcomer gets `503` with `Retry-After` and is closed.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// File descriptors kept for everything but client connections (database files and
/// connections, the metrics listener, logs).
pub const RESERVED_FILES: u64 = 256;

/// Seconds a refused client is asked to wait.
pub const RETRY_AFTER_SECS: u32 = 5;

/// Raises this process's open-files limit to its hard limit and returns the soft limit
/// now in force (None where the platform has no such limit).
pub fn raise_open_files_limit() -> Option<u64> {
    rlimit::increase_nofile_limit(u64::MAX).ok()
}

/// The connection cap in force: the configured one, lowered to what the open-files
/// limit leaves after [`RESERVED_FILES`] (each connection is one descriptor).
pub fn connection_cap(configured: usize, open_files: Option<u64>) -> usize {
    match open_files {
        Some(limit) => {
            let room = usize::try_from(limit.saturating_sub(RESERVED_FILES)).unwrap_or(usize::MAX);
            configured.min(room.max(1))
        }
        None => configured,
    }
}

/// The event-stream cap in force: the configured one, lowered so that a tenth of the
/// connections stay free for pushes and pulls (streams stay open; requests come and go).
pub fn stream_cap(configured: usize, connection_cap: usize) -> usize {
    configured.min(connection_cap - connection_cap / 10).max(1)
}

/// The whole answer a connection over the cap gets before it is closed.
fn refusal() -> Vec<u8> {
    let body = r#"{"error":{"code":"overloaded","message":"server busy: too many connections open"}}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: {RETRY_AFTER_SECS}\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A listener that holds at most `max` connections open; beyond, each new connection is
/// answered 503 with `Retry-After` and closed (in a task of its own, so accepting goes on).
pub struct Capped<L> {
    inner: L,
    open: Arc<AtomicUsize>,
    max: usize,
}

impl<L> Capped<L> {
    /// Caps `inner` at `max` open connections.
    pub fn new(inner: L, max: usize) -> Self {
        Self { inner, open: Arc::new(AtomicUsize::new(0)), max }
    }

    /// The number of connections open now.
    pub fn open(&self) -> Arc<AtomicUsize> {
        self.open.clone()
    }
}

impl<L> axum::serve::Listener for Capped<L>
where
    L: axum::serve::Listener,
{
    type Io = Counted<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (mut io, addr) = self.inner.accept().await;
            if self.open.fetch_add(1, Ordering::AcqRel) < self.max {
                return (Counted { io, open: self.open.clone() }, addr);
            }
            self.open.fetch_sub(1, Ordering::AcqRel);
            tokio::spawn(async move {
                let _ = io.write_all(&refusal()).await;
                let _ = io.shutdown().await;
            });
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection counted against the cap until it is dropped.
pub struct Counted<Io> {
    io: Io,
    open: Arc<AtomicUsize>,
}

impl<Io> Drop for Counted<Io> {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<Io: AsyncRead + Unpin> AsyncRead for Counted<Io> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for Counted<Io> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_room_for_the_servers_own_files() {
        for (configured, open_files, cap) in [
            (50_000, Some(20_000), 20_000 - 256),
            (1_000, Some(20_000), 1_000),
            (50_000, None, 50_000),
            (50_000, Some(100), 1),
        ] {
            assert_eq!(connection_cap(configured, open_files), cap, "{configured} {open_files:?}");
        }
    }

    #[test]
    fn streams_leave_a_tenth_of_the_connections_to_requests() {
        for (configured, connections, cap) in [(45_000, 50_000, 45_000), (45_000, 19_744, 17_770), (10, 1, 1)] {
            assert_eq!(stream_cap(configured, connections), cap, "{configured} {connections}");
        }
    }

    #[test]
    fn the_refusal_is_a_complete_http_answer() {
        let text = String::from_utf8(refusal()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        assert!(head.contains("retry-after: 5"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(serde_json::from_str::<serde_json::Value>(body).is_ok());
    }
}
