//! The `/v1/sync` WebSocket endpoint: the handshake, then the engine's `serve()`.
//!
//! A connection must open with `hello` within the hello timeout. The server checks the
//! library name, the client's db id and (with a secret) the token, counts the connection
//! against the client's quota (`quota`), opens the library, binds the db id to the token's
//! user (with a secret: another user's connection with it is refused), answers `welcome`
//! and hands the socket to `tidemark::sync::drive::serve`, which runs every pass with the
//! engine's own rules. Any refusal — bad frame, bad message, wrong order, wrong library,
//! bad token, a quota — is answered with one protocol `error` message and a close frame
//! whose code says whose fault it was (`close_for`: 1011 when the server failed). Nothing
//! from the network is trusted enough to panic on, and nothing is stored before the engine
//! has validated it (it commits each batch atomically with the point it justifies, so a
//! connection cut anywhere leaves consistent data).

use std::net::{IpAddr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::ws::{close_code, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::response::Response;
use futures::{FutureExt, StreamExt};
use tidemark::error::{Error, SyncError};
use tidemark::sync::drive::{self, Signal};
use tidemark::sync::{Message, Transport};

use crate::app::App;
use crate::auth;
use crate::library::valid_name;
use crate::socket::{Fault, WsTransport};

/// What a connection's read buffer starts at. The WebSocket library's default (128 KiB)
/// is held by every connection for its whole life, idle or not: 10,000 live clients
/// would hold 1.3 GB for nothing. A bigger frame grows the buffer while it is read.
const READ_BUFFER: usize = 4 * 1024;

/// `GET /v1/sync`: upgrades to a WebSocket with the configured size limits.
pub async fn upgrade(ws: WebSocketUpgrade, State(app): State<Arc<App>>, ConnectInfo(remote): ConnectInfo<SocketAddr>) -> Response {
    let max = app.settings.max_frame;
    // Every send is flushed at once (`WsTransport::send`), so frames are never gathered
    // in the write buffer first.
    ws.max_message_size(max).max_frame_size(max).read_buffer_size(READ_BUFFER).write_buffer_size(0).on_upgrade(move |socket| connection(app, socket, remote.ip()))
}

/// How a connection ended.
enum Outcome {
    /// The client finished or went away: nothing to say.
    Quiet,
    /// Refused: tell the client why, then close.
    Refused(Fault),
}

fn fault(code: &'static str, message: impl Into<String>) -> Outcome {
    Outcome::Refused(Fault { code, message: message.into() })
}

async fn connection(app: Arc<App>, socket: WebSocket, remote: IpAddr) {
    let s = &app.settings;
    let mut t = WsTransport::new(socket, s.max_frame, s.idle_timeout);
    t.admission = Some(app.admission.clone());
    // Input cannot make the engine panic (the tests try), but if a bug ever did, answer
    // like any other failure instead of dropping the socket without a word.
    let outcome = match AssertUnwindSafe(run(&app, &mut t, remote)).catch_unwind().await {
        Ok(outcome) => outcome,
        Err(_) => {
            tracing::error!("a sync connection panicked; its last commit was atomic, nothing is half-written");
            fault("INTERNAL", "the server failed on this request; please report it")
        }
    };
    match outcome {
        Outcome::Quiet => {
            let close = t.refused.as_deref().map_or(close_code::NORMAL, close_for);
            t.close(close, "").await;
        }
        Outcome::Refused(f) => {
            if server_fault(f.code) {
                tracing::error!(code = f.code, message = %f.message, "a sync connection failed on the server's side");
            } else {
                tracing::warn!(code = f.code, message = %f.message, "refused a sync connection");
            }
            if t.refused.is_none() {
                let _ = t.send(&Message::Error { code: f.code.into(), message: f.message.clone() }).await;
            }
            t.close(close_for(f.code), f.code).await;
        }
    }
}

/// Whether an error code says the server failed (its storage, or a bug), not the client.
pub fn server_fault(code: &str) -> bool {
    matches!(code, "STORAGE_ERROR" | "DISK_FULL" | "CORRUPT" | "CLOSED" | "QUOTA_EXCEEDED" | "INTERNAL")
}

/// The WebSocket close code that goes with an error code: a server fault closes with
/// 1011 (the server failed), a refusal by policy with 1008, a limit to retry later with
/// 1013, an oversized frame with 1009, anything else the client sent wrong with 1002.
pub fn close_for(code: &str) -> u16 {
    match code {
        "FRAME_TOO_LARGE" => close_code::SIZE,
        "UNAUTHORIZED" | "FORBIDDEN" | "BAD_LIBRARY" | "UNKNOWN_LIBRARY" | "TIMEOUT" | "SYNC_TOKEN_EXPIRED" => close_code::POLICY,
        "TOO_MANY_CONNECTIONS" | "RATE_LIMITED" => close_code::AGAIN,
        c if server_fault(c) => close_code::ERROR,
        _ => close_code::PROTOCOL,
    }
}

/// Whether a client's db id is plausible: the engine mints 16 hex digits; accept the same
/// alphabet as library names so ids stay printable and bounded.
fn valid_db_id(id: &str) -> bool {
    valid_name(id)
}

async fn run(app: &App, t: &mut WsTransport, remote: IpAddr) -> Outcome {
    let s = &app.settings;
    let hello = match tokio::time::timeout(s.hello_timeout, t.recv()).await {
        Err(_) => return fault("TIMEOUT", format!("no hello within {} s", s.hello_timeout.as_secs())),
        Ok(Err(e)) => return transport_failure(t, e),
        Ok(Ok(m)) => m,
    };
    let Message::Hello { library, token, db_id, .. } = hello else {
        return fault("SYNC_PROTOCOL", format!("expected hello, got {}", hello.kind()));
    };
    if !valid_name(&library) {
        return fault("BAD_LIBRARY", format!("invalid library name {library:?}: use 1 to 64 letters, digits, '_' or '-'"));
    }
    if !valid_db_id(&db_id) {
        return fault("SYNC_PROTOCOL", "hello needs the client's db id (1 to 64 letters, digits, '_' or '-')");
    }
    let (user, expires) = match &s.secret {
        Some(secret) => match auth::verify(secret, token.as_deref(), &library) {
            Ok(claims) => (Some(claims.user), claims.exp),
            Err(e) => return fault(e.code(), e.to_string()),
        },
        None => (None, None),
    };
    // Servers sharing the secret are neither limited nor bound; clients are both.
    let peer_server = s.secret.is_some() && user.as_deref() == Some(crate::peers::PEER_USER);
    let _counted = if peer_server {
        None
    } else {
        let key = crate::quota::client_key(user.as_deref(), Some(remote), &db_id);
        match app.quotas.connect(&key) {
            Ok(c) => {
                t.quota = Some((app.quotas.clone(), key));
                Some(c)
            }
            Err(r) => return fault(r.code, r.message),
        }
    };
    let lib = match app.registry.open(&library).await {
        Ok(lib) => lib,
        Err(e) => {
            tracing::error!(library, error = %e, "cannot open library");
            return fault(e.code(), e.to_string());
        }
    };
    let head = lib.head();
    if head.db_id == db_id {
        return fault("SYNC_PROTOCOL", "the client's db id equals the server's: a replica cannot sync with itself");
    }
    // Origins are bound to identity: with a secret, a db id belongs to the first user who
    // connects with it, and no other user's connection may use it (it could push ops as
    // that replica's own, which echo suppression would then hide from it forever).
    if let (Some(user), false) = (&user, peer_server) {
        match lib.store().bind(&db_id, user).await {
            Ok(None) => {}
            Ok(Some(_)) => return fault("FORBIDDEN", format!("db id {db_id} belongs to another user's replica: each replica uses its own")),
            Err(e) => {
                tracing::error!(library, error = %e, "cannot bind a db id");
                return fault(e.code(), e.to_string());
            }
        }
    }
    let welcome = Message::Welcome { db_id: head.db_id.clone(), max_row: head.max_row, schema_version: head.schema_version };
    if t.send(&welcome).await.is_err() {
        return Outcome::Quiet;
    }
    tracing::info!(library, client = db_id, user = user.as_deref().unwrap_or("-"), "sync connection");
    // Origins are bound to identity (DESIGN §5): only a peer server's token (minted with
    // the secret for `peers::PEER_USER`) may forward other replicas' ops. Every other
    // connection — any connection to a server without a secret — pushes only ops whose
    // origin is the db id it said hello with.
    let bound = !peer_server;
    match drive::serve_as(lib.as_ref(), t, &db_id, s.limits, bound, signals(lib.store().subscribe(), expires)).await {
        Ok(()) => Outcome::Quiet,
        Err(Error::Sync(e)) => transport_failure(t, e),
        Err(e) => {
            tracing::error!(library, client = db_id, error = %e, "sync failed");
            fault(e.code(), e.to_string())
        }
    }
}

/// What the engine passes on between the client's messages: a poke each time rows land
/// in the library, and the token's expiry (enforced on the live connection, not only at
/// `hello`).
fn signals(landed: tokio::sync::watch::Receiver<u64>, expires: Option<u64>) -> impl futures::Stream<Item = Signal> + Unpin {
    let pokes = futures::stream::unfold(landed, |mut rx| async move {
        rx.changed().await.ok()?;
        let max_row = *rx.borrow_and_update();
        Some((Signal::Landed(max_row), rx))
    });
    let expiry = futures::stream::iter(expires).then(|exp| async move {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        tokio::time::sleep(Duration::from_secs(exp.saturating_sub(now))).await;
        Signal::Expired
    });
    Box::pin(futures::stream::select(pokes, expiry))
}

/// What to tell the client after a protocol-level failure.
fn transport_failure(t: &WsTransport, e: SyncError) -> Outcome {
    if let Some(f) = &t.fault {
        return Outcome::Refused(f.clone());
    }
    match e {
        SyncError::Protocol(m) => fault("SYNC_PROTOCOL", m),
        SyncError::TokenExpired => fault("SYNC_TOKEN_EXPIRED", e.to_string()),
        // The client went away, or refused something itself and said so.
        SyncError::Connection(_) | SyncError::Remote { .. } | SyncError::NotConfigured | SyncError::Quarantined(_) => Outcome::Quiet,
    }
}
