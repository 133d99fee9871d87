//! The HTTP accept loop: the app's router over hyper connections, with a deadline on
//! request headers.
//!
//! `axum::serve` gives hyper no timer, so a client that opens connections and sends half a
//! request line holds each one open for as long as it likes (hundreds of them, minutes on
//! end). Here every connection gets hyper's `header_read_timeout`: headers not complete
//! within it and the connection is closed. A WebSocket upgraded from a request is the
//! sync endpoint's to time (`ws`: hello and idle timeouts). On shutdown the loop stops
//! accepting and lets open HTTP exchanges finish, as `axum::serve`'s graceful shutdown does.

use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve(listener: TcpListener, router: Router, header_timeout: Duration, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    // Every connection task holds a receiver; the sender's `closed` resolves when all are gone.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(());
    let mut shutdown = pin!(shutdown);
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
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
        let service = TowerToHyperService::new(router.clone());
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut builder = http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(header_timeout);
            let mut conn = pin!(builder.serve_connection(TokioIo::new(tcp), service).with_upgrades());
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
