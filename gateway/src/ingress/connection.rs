//! One TCP connection's state beside hyper's: its requests in flight (for the idle
//! timeout), and its abandonment when the client stops reading.
//!
//! A client that stops reading stalls the socket once the kernel's buffers are full
//! ([`WriteStall`] notices), or, over HTTP/2, stalls an answer inside flow control (the
//! answer's feeder notices). Either way the connection is abandoned: dropped, and the
//! socket reset (`SO_LINGER` 0) rather than closed, since a close would leave the kernel
//! sending the megabytes it buffered to a client that reads a byte a second.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};
use tokio_rustls::server::TlsStream;

/// What a connection's requests and writes tell its serving task.
pub(crate) struct Activity {
    /// Requests in flight, and when the last one ended.
    in_flight: std::sync::Mutex<(usize, Instant)>,
    ended: Notify,
    abandoned: AtomicBool,
    abandon: Notify,
}

impl Default for Activity {
    fn default() -> Activity {
        Activity {
            in_flight: std::sync::Mutex::new((0, Instant::now())),
            ended: Notify::new(),
            abandoned: AtomicBool::new(false),
            abandon: Notify::new(),
        }
    }
}

/// A request in flight on its connection, until dropped.
pub(crate) struct RequestInFlight(Arc<Activity>);

impl Drop for RequestInFlight {
    fn drop(&mut self) {
        let mut state = self.0.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        *state = (state.0 - 1, Instant::now());
        self.0.ended.notify_waiters();
    }
}

impl Activity {
    fn now(&self) -> (usize, Instant) {
        *self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a request in flight until the guard is dropped.
    pub(crate) fn begin(self: &Arc<Self>) -> RequestInFlight {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner()).0 += 1;
        RequestInFlight(Arc::clone(self))
    }

    /// Resolves once the connection has had no request in flight for `idle`.
    pub(crate) async fn idle_for(&self, idle: Duration) {
        loop {
            let ended = self.ended.notified();
            let (n, since) = self.now();
            if n > 0 {
                ended.await;
                continue;
            }
            tokio::select! {
                () = tokio::time::sleep_until(since + idle) => {
                    if self.now() == (0, since) {
                        return;
                    }
                }
                () = ended => {}
            }
        }
    }

    /// Gives the connection up: the client stopped reading.
    pub(crate) fn abandon(&self) {
        self.abandoned.store(true, Ordering::Relaxed);
        self.abandon.notify_one();
    }

    /// Resolves once the connection is given up.
    pub(crate) async fn abandoned(&self) {
        self.abandon.notified().await;
    }
}

/// A TLS connection whose writes may stall for `timeout` at most, and whose socket is
/// reset when it closes abandoned.
pub(crate) struct WriteStall {
    inner: TlsStream<TcpStream>,
    timeout: Duration,
    /// Armed while a write is pending.
    stalled: Option<Pin<Box<Sleep>>>,
    activity: Arc<Activity>,
}

impl WriteStall {
    pub(crate) fn new(
        inner: TlsStream<TcpStream>,
        timeout: Duration,
        activity: Arc<Activity>,
    ) -> WriteStall {
        WriteStall {
            inner,
            timeout,
            stalled: None,
            activity,
        }
    }

    /// What a write that returned `poll` means, under the timeout.
    fn watch<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let timeout = self.timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        ready!(stalled.as_mut().poll(cx));
        self.activity.abandon();
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client stopped reading: ingress.write_timeout_ms passed",
        )))
    }
}

impl Drop for WriteStall {
    fn drop(&mut self) {
        if self.activity.abandoned.load(Ordering::Relaxed) {
            let socket = socket2::SockRef::from(self.inner.get_ref().0);
            if let Err(e) = socket.set_linger(Some(Duration::ZERO)) {
                tracing::debug!(error = %e, "could not set SO_LINGER before the reset");
            }
        }
    }
}

impl AsyncRead for WriteStall {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for WriteStall {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, poll)
    }
}
