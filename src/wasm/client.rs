//! The browser's side of sync: `options.sync` parsed, and the engine's connection driver
//! (`sync::live`) given a WebSocket, timers and an event emitter. `syncNow()` is one
//! round over a fresh connection; `connect()` runs live sync until `disconnect()`.
//!
//! ```js
//! const report = await db.syncNow();   // { sent, received, batches, capped, snapshot, reset }
//! db.on('progress', ({ direction, done, total }) => bar.update(done / total));
//! db.connect();                         // live: pushes writes at once, pulls every second
//! ```

use std::cell::RefCell;
use std::rc::Rc;

use serde_json::Value;
use wasm_bindgen::prelude::*;

use super::convert::to_js;
use super::error::to_js as err_to_js;
use super::socket::{sleep, WsTransport};
use crate::error::{Error, SyncError};
use crate::idb::IdbStore;
use crate::replica::Replica;
use crate::sync::live::{self, Config};
use crate::sync::pass::{Limits, Progress};
use crate::sync::session::RoundReport;
use crate::sync::Direction;

/// `options.sync` as the app gives it.
#[derive(Clone, Debug)]
pub struct SyncConfig {
    pub url: String,
    pub token: Option<String>,
    pub link: Config,
}

impl SyncConfig {
    pub fn from_json(v: &Value) -> Result<SyncConfig, String> {
        let o = v.as_object().ok_or("sync must be an object: { url, library, token?, perDiff?, maxDiffs? }")?;
        for k in o.keys() {
            if !["url", "library", "token", "perDiff", "maxDiffs"].contains(&k.as_str()) {
                return Err(format!("unknown sync option {k:?}"));
            }
        }
        let url = o.get("url").and_then(Value::as_str).filter(|u| u.starts_with("ws://") || u.starts_with("wss://"));
        let library = o.get("library").and_then(Value::as_str).filter(|l| !l.is_empty());
        let count = |k: &str, d: usize| match o.get(k) {
            None | Some(Value::Null) => Ok(d),
            Some(v) => v.as_u64().filter(|n| *n >= 1).map(|n| n as usize).ok_or(format!("sync.{k} must be an integer >= 1")),
        };
        let limits = Limits { per_diff: count("perDiff", 1000)?, max_diffs: count("maxDiffs", 10)? };
        Ok(SyncConfig {
            url: url.ok_or("sync.url must be a ws:// or wss:// URL")?.to_string(),
            token: o.get("token").and_then(Value::as_str).map(str::to_string),
            link: Config::new(library.ok_or("sync.library must be a non-empty string")?, limits),
        })
    }
}

/// The page's side of the driver: WebSocket, `setTimeout`, `Math.random`.
struct BrowserEnv {
    url: String,
    token: Option<String>,
}

impl live::Env for BrowserEnv {
    type Conn = WsTransport;

    async fn connect(&self) -> Result<WsTransport, Error> {
        Ok(WsTransport::connect(&self.url).await?)
    }

    async fn sleep(&self, ms: u64) {
        sleep(ms.min(u32::MAX as u64) as u32).await
    }

    fn random(&self) -> f64 {
        js_sys::Math::random()
    }

    async fn token(&self) -> Result<Option<String>, Error> {
        Ok(self.token.clone())
    }
}

/// The wrapper's event dispatcher: `(type, payload) => void`.
#[derive(Clone, Default)]
pub struct Emitter(Rc<RefCell<Option<js_sys::Function>>>);

impl Emitter {
    pub fn set(&self, f: Option<js_sys::Function>) {
        *self.0.borrow_mut() = f;
    }

    pub fn emit(&self, kind: &str, payload: &JsValue) {
        let f = self.0.borrow().clone();
        if let Some(f) = f {
            let _ = f.call2(&JsValue::NULL, &kind.into(), payload);
        }
    }
}

/// Driver events as the app's events: `online`, `progress`, `reset`, `futureVersion`,
/// `sync`, `error`.
struct JsEvents {
    emitter: Emitter,
    version: u32,
}

impl live::Events for JsEvents {
    fn online(&self, server: Option<&str>) {
        self.emitter.emit("online", &JsValue::from_bool(server.is_some()));
    }

    fn progress(&self, direction: Direction, p: Progress) {
        let dir = if direction == Direction::Push { "push" } else { "pull" };
        self.emitter.emit("progress", &to_js(&serde_json::json!({ "direction": dir, "phase": p.phase, "done": p.done, "total": p.total })));
    }

    fn round(&self, report: &RoundReport) {
        if report.reset {
            self.emitter.emit("reset", &to_js(report));
        }
        if let Some(version) = report.pull.future_version {
            self.emitter.emit("futureVersion", &to_js(&serde_json::json!({ "version": version, "current": self.version })));
        }
        self.emitter.emit("sync", &to_js(report));
    }

    fn error(&self, e: &Error) {
        self.emitter.emit("error", &err_to_js(e.clone()));
    }
}

/// Sync state of one open replica.
pub struct Client {
    pub config: Option<SyncConfig>,
    pub emitter: Emitter,
    pub shared: Rc<live::Shared>,
}

impl Client {
    pub fn new(config: Option<SyncConfig>) -> Client {
        Client { config, emitter: Emitter::default(), shared: Rc::new(live::Shared::default()) }
    }

    fn config(&self) -> Result<&SyncConfig, Error> {
        self.config.as_ref().ok_or_else(|| SyncError::NotConfigured.into())
    }

    fn parts(&self, replica: &Replica<IdbStore>) -> Result<(BrowserEnv, JsEvents, Config), Error> {
        let cfg = self.config()?;
        let env = BrowserEnv { url: cfg.url.clone(), token: cfg.token.clone() };
        let events = JsEvents { emitter: self.emitter.clone(), version: replica.version() };
        Ok((env, events, cfg.link.clone()))
    }
}

/// One round over a fresh connection: what `syncNow()` does.
pub async fn sync_now(replica: &Replica<IdbStore>, client: &Client) -> Result<RoundReport, Error> {
    let (env, events, cfg) = client.parts(replica)?;
    live::once(replica, &env, &cfg, &client.shared, &events).await
}

/// Starts live sync unless it is running; returns at once.
pub fn connect(replica: Rc<Replica<IdbStore>>, client: &Client) -> Result<(), Error> {
    let (env, events, cfg) = client.parts(&replica)?;
    let Some(ticket) = client.shared.start() else { return Ok(()) };
    let shared = client.shared.clone();
    wasm_bindgen_futures::spawn_local(async move {
        live::live(replica.as_ref(), &env, &cfg, &shared, &events, ticket).await;
    });
    Ok(())
}
