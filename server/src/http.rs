//! The HTTP surface: routes, the status endpoint, and static files.
//!
//! - `GET /healthz` → `ok` (for load balancers and tests);
//! - `GET /v1/libraries` → `{ "libraries": [names] }`: what this server stores, so peers
//!   replicate every library (with a secret: a token for library `*`);
//! - `GET /v1/libraries/<library>/status` → the library's db id, max row and every peer's
//!   points, as JSON; on PostgreSQL also every writer's position (`positions`, by instance)
//!   and `persistedUpTo`, the row clients of this instance are shown up to (the max row);
//!   with a secret configured it needs `Authorization: Bearer <token>` for that library,
//!   since it lists the library's replicas;
//! - `GET /v1/peers` → each `--peer`'s links: points, lag, last round, last error (with a
//!   secret: a token for library `*`);
//! - `GET /v1/foreign` → each `--foreign` store's cursor, push mark, lag and last error
//!   (with a secret: a token for library `*`);
//! - `/v1/sync` → the WebSocket endpoint (`ws`);
//! - `/js/…` → the npm package directory (`--pkg`), so the demo's import map works;
//! - everything else → the demo page directory (`--www`).
//!
//! Errors are JSON `{ "error": { "code", "message" } }` with a fitting status code.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::json;
use tidemark::store::Store;
use tower_http::services::ServeDir;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::app::App;
use crate::auth;
use crate::library::LibraryError;
use crate::{peers, ws};

/// All routes, over shared state.
pub fn router(app: Arc<App>) -> Router {
    let s = &app.settings;
    // Static files are the developer's working copy: never let a browser cache them stale.
    let no_cache = SetResponseHeaderLayer::overriding(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/libraries", get(libraries))
        .route("/v1/libraries/{library}/status", get(status))
        .route("/v1/peers", get(peer_status))
        .route("/v1/foreign", get(foreign_status))
        .route("/v1/sync", get(ws::upgrade))
        .nest_service("/js", ServeDir::new(&s.pkg))
        .fallback_service(ServeDir::new(&s.www))
        .layer(no_cache)
        .with_state(app)
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": { "code": code, "message": message.into() } }))).into_response()
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PeerStatus {
    incoming: i64,
    outgoing: i64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LibraryStatus {
    library: String,
    db_id: String,
    max_row: u64,
    peers: BTreeMap<String, PeerStatus>,
    /// Every writer's stream position, by instance (PostgreSQL only).
    #[serde(skip_serializing_if = "Option::is_none")]
    positions: Option<BTreeMap<String, i64>>,
    /// Every row at or below this has committed, on every instance (PostgreSQL only).
    #[serde(skip_serializing_if = "Option::is_none")]
    persisted_up_to: Option<i64>,
}

/// With a secret configured, the request must carry a token for `library`: the refusal
/// to answer if it does not.
fn refusal(app: &App, headers: &HeaderMap, library: &str) -> Option<Response> {
    let secret = app.settings.secret.as_ref()?;
    let token = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let e = auth::verify(secret, token, library).err()?;
    let status = if e.code() == "FORBIDDEN" { StatusCode::FORBIDDEN } else { StatusCode::UNAUTHORIZED };
    Some(error(status, e.code(), e.to_string()))
}

async fn libraries(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Some(r) = refusal(&app, &headers, peers::ANY_LIBRARY) {
        return r;
    }
    match app.registry.names().await {
        Ok(names) => Json(json!({ "libraries": names })).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.code(), e.to_string()),
    }
}

async fn peer_status(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Some(r) = refusal(&app, &headers, peers::ANY_LIBRARY) {
        return r;
    }
    Json(peers::report(&app).await).into_response()
}

async fn foreign_status(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Some(r) = refusal(&app, &headers, peers::ANY_LIBRARY) {
        return r;
    }
    Json(app.foreign.report()).into_response()
}

/// `ok` when the server can serve: with SQLite, its data directory must take a write (a
/// read-only or vanished directory makes every library unopenable, so say so: 503).
async fn healthz(State(app): State<Arc<App>>) -> Response {
    let Some(dir) = app.registry.data_dir().map(std::path::Path::to_path_buf) else { return "ok".into_response() };
    let probe = tokio::task::spawn_blocking(move || {
        let file = dir.join(".healthz-probe");
        std::fs::write(&file, b"ok").and_then(|_| std::fs::remove_file(&file)).map_err(|e| format!("the data directory {} cannot be written: {e}", dir.display()))
    })
    .await
    .unwrap_or_else(|e| Err(format!("the probe failed: {e}")));
    match probe {
        Ok(()) => "ok".into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
    }
}

async fn status(Path(library): Path<String>, State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Some(r) = refusal(&app, &headers, &library) {
        return r;
    }
    let lib = match app.registry.existing(&library).await {
        Ok(lib) => lib,
        Err(e) => {
            let status = match e {
                LibraryError::InvalidName(_) => StatusCode::BAD_REQUEST,
                LibraryError::NotFound(_) => StatusCode::NOT_FOUND,
                LibraryError::Open { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            };
            return error(status, e.code(), e.to_string());
        }
    };
    // Read from the store, not the head cache: the status reports what is durable.
    let (head, peers) = match (lib.store().head().await, lib.store().peers().await) {
        (Ok(Some(head)), Ok(peers)) => (head, peers),
        (Ok(None), _) => return error(StatusCode::INTERNAL_SERVER_ERROR, "CORRUPT", "the library has no head"),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(library, error = %e, "status read failed");
            return error(StatusCode::INTERNAL_SERVER_ERROR, "STORAGE_ERROR", e.to_string());
        }
    };
    let peers = peers.into_iter().map(|(id, p)| (id, PeerStatus { incoming: p.incoming, outgoing: p.outgoing })).collect();
    let stream = lib.store().as_postgres().map(|s| s.stream());
    Json(LibraryStatus {
        library,
        db_id: head.db_id,
        max_row: head.max_row,
        peers,
        positions: stream.as_ref().map(|s| s.announced_positions()),
        persisted_up_to: stream.map(|s| s.persisted_up_to()),
    })
    .into_response()
}
