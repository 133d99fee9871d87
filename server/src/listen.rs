//! The HTTP accept loop: the app's router over hyper connections, with a deadline on
//! request headers.
//!
//! `axum::serve` gives hyper no timer, so a client that opens connections and sends half a
//! request line holds each one open for as long as it likes (hundreds of them, minutes on
//! end). Here every connection gets hyper's `header_read_timeout`: headers not complete
//! within it and the connection is closed. A WebSocket upgraded from a request is the
//! sync endpoint's to time (`ws`: hello and idle timeouts). On shutdown the loop stops
//! accepting and lets open HTTP exchanges finish, as `axum::serve`'s graceful shutdown does.
//!
//! Every connection also ends with a **lingering close** (`Lingering`): when the server is
//! done with a socket it half-closes it and reads (and drops) what the client still sends,
//! for a bounded time and number of bytes, before closing. Closing a TCP socket with unread
//! input makes the kernel answer with a reset, and a reset can destroy the server's last
//! words still in flight: a client in the middle of sending an oversized frame would see a
//! connection reset (WebSocket close 1006) instead of `FRAME_TOO_LARGE` and a close frame.

use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::{Extension, Router};
use tower::Layer;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// How long a closing connection's leftover input is read before the socket closes anyway.
const LINGER: Duration = Duration::from_secs(5);
/// Most leftover bytes read from a closing connection (an oversized frame's rest).
const LINGER_BYTES: u64 = 1 << 30;

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve(listener: TcpListener, router: Router, header_timeout: Duration, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    // Every connection task holds a receiver; the sender's `closed` resolves when all are gone.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(());
    let mut shutdown = pin!(shutdown);
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // Protocol messages are small and often go out two at a time: without TCP_NODELAY
        // the second waits for the peer's delayed ACK (40 ms) — on every step of every pass.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        // Requests carry the remote address (`ConnectInfo`), as `axum::serve` gives them.
        let service = TowerToHyperService::new(Extension(ConnectInfo(remote)).layer(router.clone()));
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut builder = http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(header_timeout);
            let mut conn = pin!(builder.serve_connection(TokioIo::new(Lingering(Some(tcp))), service).with_upgrades());
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = stop.changed() => conn.as_mut().graceful_shutdown(),
            }
            let _ = conn.await;
        });
    }
    drop(stop_rx);
    let _ = stop_tx.send(());
    stop_tx.closed().await;
    Ok(())
}

/// A connection's TCP stream that closes without a reset (see the module doc): dropped,
/// it half-closes the stream and drains the client's leftover input on a task of its own.
struct Lingering(Option<TcpStream>);

impl Lingering {
    fn stream(&mut self) -> Pin<&mut TcpStream> {
        Pin::new(self.0.as_mut().expect("the stream is present until drop"))
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let (Some(mut tcp), Ok(rt)) = (self.0.take(), tokio::runtime::Handle::try_current()) else { return };
        rt.spawn(async move {
            // FIN after what was written: the client reads the server's last frames, then EOF.
            let _ = tcp.shutdown().await;
            let _ = tokio::time::timeout(LINGER, async {
                let mut rest = (&mut tcp).take(LINGER_BYTES);
                let mut buf = vec![0u8; 64 * 1024];
                while matches!(rest.read(&mut buf).await, Ok(n) if n > 0) {}
            })
            .await;
        });
    }
}

impl AsyncRead for Lingering {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_read(cx, buf)
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.stream().poll_write(cx, buf)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        self.stream().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_shutdown(cx)
    }
}
