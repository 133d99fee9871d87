//! The browser's side of sync: `options.sync` parsed, and the engine's connection driver
//! (`sync::live`) given a WebSocket, timers and an event emitter. `syncNow()` is one
//! round over a fresh connection; `connect()` runs live sync until `disconnect()`.
//!
//! ```js
//! const report = await db.syncNow();   // { sent, received, batches, capped, snapshot, reset }
//! db.on('progress', ({ direction, done, total }) => bar.update(done / total));
//! db.connect();                         // live: pushes writes at once, pulls when poked
//! ```
//!
//! `sync.token` is a string or a function returning a (promise of a) string, called on
//! every connect — so a token that expires is replaced by reconnecting at once.

use std::cell::RefCell;
use std::rc::Rc;

use serde_json::Value;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

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

/// Where the token comes from.
#[derive(Clone, Debug)]
pub enum Token {
    None,
    Static(String),
    /// `() => string | Promise<string>`, called on every connect.
    Function(js_sys::Function),
}

/// `options.sync` as the app gives it.
#[derive(Clone, Debug)]
pub struct SyncConfig {
    pub url: String,
    pub token: Token,
    pub link: Config,
}

impl SyncConfig {
    /// Parses `options.sync` from JS: a function `token` is kept as is, the rest must be
    /// plain JSON.
    pub fn from_js(v: &JsValue) -> Result<SyncConfig, Error> {
        let bad = |m: String| Error::from(crate::error::OpenError::InvalidOptions(m));
        let token = js_sys::Reflect::get(v, &"token".into()).unwrap_or(JsValue::UNDEFINED);
        let (json, function) = match token.dyn_into::<js_sys::Function>() {
            Ok(f) => {
                let copy = js_sys::Object::assign(&js_sys::Object::new(), v.unchecked_ref());
                let _ = js_sys::Reflect::delete_property(&copy, &"token".into());
                (super::convert::to_json_loose(&copy).map_err(|e| bad(e.to_string()))?, Some(f))
            }
            Err(_) => (super::convert::to_json_loose(v).map_err(|e| bad(e.to_string()))?, None),
        };
        let mut cfg = SyncConfig::from_json(&json).map_err(bad)?;
        if let Some(f) = function {
            cfg.token = Token::Function(f);
        }
        Ok(cfg)
    }

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
            token: match o.get("token") {
                None | Some(Value::Null) => Token::None,
                Some(Value::String(t)) => Token::Static(t.clone()),
                Some(_) => return Err("sync.token must be a string or a function returning one".into()),
            },
            link: Config::new(library.ok_or("sync.library must be a non-empty string")?, limits),
        })
    }
}

/// The page's side of the driver: WebSocket, `setTimeout`, `performance.now`,
/// `Math.random`, the app's token.
struct BrowserEnv {
    url: String,
    token: Token,
}

impl live::Env for BrowserEnv {
    type Conn = WsTransport;

    async fn connect(&self) -> Result<WsTransport, Error> {
        Ok(WsTransport::connect(&self.url).await?)
    }

    async fn sleep(&self, ms: u64) {
        sleep(ms.min(u32::MAX as u64) as u32).await
    }

    fn now_ms(&self) -> u64 {
        now_ms()
    }

    fn random(&self) -> f64 {
        js_sys::Math::random()
    }

    async fn token(&self) -> Result<Option<String>, Error> {
        match &self.token {
            Token::None => Ok(None),
            Token::Static(t) => Ok(Some(t.clone())),
            Token::Function(f) => call_token(f).await,
        }
    }

    fn renews_token(&self) -> bool {
        matches!(self.token, Token::Function(_))
    }
}

/// Calls the app's token function and awaits its promise; its failure is a connection
/// failure (retried with backoff), not a crash.
async fn call_token(f: &js_sys::Function) -> Result<Option<String>, Error> {
    let fail = |e: JsValue| {
        let why = e.dyn_ref::<js_sys::Error>().map(|e| String::from(e.message())).or_else(|| e.as_string()).unwrap_or_else(|| format!("{e:?}"));
        Error::from(SyncError::Connection(format!("sync.token() failed: {why}")))
    };
    let got = f.call0(&JsValue::NULL).map_err(fail)?;
    let got = match got.dyn_into::<js_sys::Promise>() {
        Ok(p) => wasm_bindgen_futures::JsFuture::from(p).await.map_err(fail)?,
        Err(v) => v,
    };
    if got.is_undefined() || got.is_null() {
        return Ok(None);
    }
    got.as_string().map(Some).ok_or_else(|| SyncError::Connection("sync.token() must return a string (or a promise of one)".into()).into())
}

/// Milliseconds on a clock that never goes back: `performance.now()` where there is one.
fn now_ms() -> u64 {
    let global = js_sys::global();
    let perf = js_sys::Reflect::get(&global, &"performance".into()).ok().filter(|p| p.is_object());
    let now = perf.and_then(|p| {
        let f = js_sys::Reflect::get(&p, &"now".into()).ok()?.dyn_into::<js_sys::Function>().ok()?;
        f.call0(&p).ok()?.as_f64()
    });
    now.unwrap_or_else(js_sys::Date::now) as u64
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
            // The round's report, with what the reset did: documents, migrated, kept, fromVersion.
            let mut payload = serde_json::to_value(report).unwrap_or_default();
            if let (Some(o), Some(Ok(Value::Object(counts)))) = (payload.as_object_mut(), report.pull.rebuilt.as_ref().map(serde_json::to_value)) {
                o.extend(counts);
            }
            self.emitter.emit("reset", &to_js(&payload));
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

    /// `SYNC_NOT_CONFIGURED` when the replica was opened without `sync`.
    pub fn check(&self) -> Result<(), Error> {
        self.config().map(|_| ())
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
