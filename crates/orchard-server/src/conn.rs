//! One HTTP/1 connection with llama-server's `--timeout` (its httplib read and write timeouts,
//! default 600 s): a client that stops sending a request (headers or body) or stops reading the
//! response for that long loses its connection, and its generation is cancelled like any other
//! hang-up. Time spent computing an answer never counts: only waits on the client do.
//!
//! - reading: the request head (and the idle wait for the next request of a keep-alive
//!   connection) through hyper's header read timeout, the request body per frame through
//!   [`TimeoutBody`];
//! - writing: every write that cannot make progress for that long fails ([`TimeoutIo`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use hyper::body::{Frame, Incoming};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Serves one accepted socket with `app` until the client or the server closes it.
pub(crate) async fn serve(sock: tokio::net::TcpStream, app: axum::Router, timeout: Duration) {
    let _ = sock.set_nodelay(true);
    let svc = tower::ServiceExt::map_request(app, move |req: http::Request<Incoming>| {
        req.map(|b| Body::new(TimeoutBody::new(b, timeout)))
    });
    let svc = hyper_util::service::TowerToHyperService::new(svc);
    let mut b = hyper::server::conn::http1::Builder::new();
    // llama-server's clients look headers up case-sensitively.
    b.title_case_headers(true);
    b.timer(hyper_util::rt::TokioTimer::new());
    b.header_read_timeout(timeout);
    let io = hyper_util::rt::TokioIo::new(TimeoutIo::new(sock, timeout));
    if let Err(e) = b.serve_connection(io, svc).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// The client sent nothing (or read nothing) for the whole `--timeout`.
#[derive(Debug, thiserror::Error)]
#[error("no progress from the client for {0:?} (--timeout)")]
pub struct ClientTimeout(pub Duration);

/// A timer that runs only while an operation is waiting.
struct Stall {
    limit: Duration,
    timer: Option<Pin<Box<Sleep>>>,
}

impl Stall {
    fn new(limit: Duration) -> Stall {
        Stall { limit, timer: None }
    }

    /// Call when the operation returned `Pending`: true once it has waited `limit` in a row.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let limit = self.limit;
        let t = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        t.as_mut().poll(cx).is_ready()
    }

    /// Call when the operation made progress.
    fn reset(&mut self) {
        self.timer = None;
    }
}

/// A socket whose writes fail with `TimedOut` after `limit` without progress. Reads are left
/// alone: hyper polls the socket during long computations to notice hang-ups, and those waits
/// are not the client's fault (request reads are timed by hyper and [`TimeoutBody`]).
pub(crate) struct TimeoutIo<T> {
    inner: T,
    write: Stall,
}

impl<T> TimeoutIo<T> {
    pub(crate) fn new(inner: T, limit: Duration) -> TimeoutIo<T> {
        TimeoutIo {
            inner,
            write: Stall::new(limit),
        }
    }

    fn check<R>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        match r {
            Poll::Ready(r) => {
                self.write.reset();
                Poll::Ready(r)
            }
            Poll::Pending if self.write.expired(cx) => {
                self.write.reset();
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    ClientTimeout(self.write.limit),
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TimeoutIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TimeoutIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.check(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.check(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.check(cx, r)
    }
}

/// A request body whose every frame must arrive within `limit` of asking for it.
pub(crate) struct TimeoutBody<B> {
    inner: B,
    wait: Stall,
}

impl<B> TimeoutBody<B> {
    pub(crate) fn new(inner: B, limit: Duration) -> TimeoutBody<B> {
        TimeoutBody {
            inner,
            wait: Stall::new(limit),
        }
    }
}

impl<B> http_body::Body for TimeoutBody<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(f) => {
                self.wait.reset();
                Poll::Ready(f.map(|r| r.map_err(Into::into)))
            }
            Poll::Pending => {
                if self.wait.expired(cx) {
                    self.wait.reset();
                    return Poll::Ready(Some(Err(Box::new(ClientTimeout(self.wait.limit)))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_write_the_peer_never_reads_fails_after_the_limit() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut w = TimeoutIo::new(a, Duration::from_secs(3));
        // Fits the pipe: no waiting.
        w.write_all(&[1; 64]).await.unwrap();
        let t0 = tokio::time::Instant::now();
        let err = w.write_all(&[2; 64]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(t0.elapsed(), Duration::from_secs(3));
        // A reader that keeps up resets the clock every time.
        let mut w = TimeoutIo::new(w.inner, Duration::from_secs(3));
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 32];
            let mut n = 0;
            while n < 64 + 32 * 10 {
                tokio::time::sleep(Duration::from_secs(2)).await;
                n += b.read(&mut buf).await.unwrap();
            }
        });
        for _ in 0..10 {
            w.write_all(&[3; 32]).await.unwrap();
        }
        reader.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stalls_fails_but_a_slow_one_does_not() {
        use http_body_util::BodyExt;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, io::Error>>(4);
        let stream = http_body_util::StreamBody::new(tokio_stream_of(rx));
        let mut body = TimeoutBody::new(stream, Duration::from_secs(5));
        let feeder = tokio::spawn(async move {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_secs(4)).await;
                tx.send(Ok(Frame::data(Bytes::from_static(b"ab"))))
                    .await
                    .unwrap();
            }
            // Then silence, without ending the body.
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(tx);
        });
        for _ in 0..3 {
            let f = body.frame().await.unwrap().unwrap();
            assert_eq!(f.into_data().unwrap(), Bytes::from_static(b"ab"));
        }
        let t0 = tokio::time::Instant::now();
        let e = body.frame().await.unwrap().unwrap_err();
        assert!(e.is::<ClientTimeout>(), "{e}");
        assert_eq!(t0.elapsed(), Duration::from_secs(5));
        feeder.abort();
    }

    fn tokio_stream_of<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> + Unpin {
        Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }
}
