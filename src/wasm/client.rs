//! The browser's sync client: `syncNow()` rounds, live sync with reconnect and
//! exponential backoff, and the events and status that tell the app what happens.
//! The rounds themselves are the engine's (`sync::session`); this module only adds the
//! WebSocket, timers and events.
//!
//! ```js
//! const report = await db.syncNow();   // { sent, received, batches, capped, snapshot, reset }
//! db.on('progress', ({ direction, done, total }) => bar.update(done / total));
//! db.connect();                         // live: pushes writes at once, pulls every second
//! ```

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;

use futures::channel::mpsc;
use futures::future::{select, Either};
use futures::StreamExt;
use serde_json::Value;
use wasm_bindgen::prelude::*;

use super::convert::to_js;
use super::error::to_js as err_to_js;
use super::socket::{sleep, WsTransport};
use crate::error::{Error, SyncError};
use crate::idb::IdbStore;
use crate::replica::Replica;
use crate::store::Store;
use crate::sync::pass::Limits;
use crate::sync::peer::PeerRecord;
use crate::sync::session::{self, RoundReport};
use crate::sync::Direction;

/// How often a live connection pulls when nothing happens locally.
const POLL_MS: u32 = 1000;
const BACKOFF_MIN_MS: u32 = 250;
const BACKOFF_MAX_MS: u32 = 30_000;

/// `options.sync` as the app gives it.
#[derive(Clone, Debug)]
pub struct SyncConfig {
    pub url: String,
    pub library: String,
    pub token: Option<String>,
    pub limits: Limits,
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
        Ok(SyncConfig {
            url: url.ok_or("sync.url must be a ws:// or wss:// URL")?.to_string(),
            library: library.ok_or("sync.library must be a non-empty string")?.to_string(),
            token: o.get("token").and_then(Value::as_str).map(str::to_string),
            limits: Limits { per_diff: count("perDiff", 1000)?, max_diffs: count("maxDiffs", 10)? },
        })
    }
}

/// Sync state of one open replica.
pub struct Client {
    pub config: Option<SyncConfig>,
    emitter: RefCell<Option<js_sys::Function>>,
    online: Cell<bool>,
    /// Bumped by `disconnect`, so a running live loop knows to stop.
    live: Cell<u32>,
    running: Cell<bool>,
    poke: RefCell<Option<mpsc::UnboundedSender<()>>>,
    peers: RefCell<BTreeMap<String, PeerRecord>>,
    pending: Cell<u64>,
    /// One round at a time per replica.
    round_lock: futures::lock::Mutex<()>,
}

impl Client {
    pub fn new(config: Option<SyncConfig>) -> Client {
        Client {
            config,
            emitter: RefCell::new(None),
            online: Cell::new(false),
            live: Cell::new(0),
            running: Cell::new(false),
            poke: RefCell::new(None),
            peers: RefCell::new(BTreeMap::new()),
            pending: Cell::new(0),
            round_lock: futures::lock::Mutex::new(()),
        }
    }

    pub fn set_emitter(&self, f: Option<js_sys::Function>) {
        *self.emitter.borrow_mut() = f;
    }

    pub fn emit(&self, kind: &str, payload: &JsValue) {
        let f = self.emitter.borrow().clone();
        if let Some(f) = f {
            let _ = f.call2(&JsValue::NULL, &kind.into(), payload);
        }
    }

    pub fn online(&self) -> bool {
        self.online.get()
    }

    pub fn pending(&self) -> u64 {
        self.pending.get()
    }

    pub fn peers(&self) -> BTreeMap<String, PeerRecord> {
        self.peers.borrow().clone()
    }

    /// After local writes: count them as pending and wake the live loop.
    pub fn wrote(&self, n: u64) {
        self.pending.set(self.pending.get() + n);
        if let Some(p) = self.poke.borrow().as_ref() {
            let _ = p.unbounded_send(());
        }
    }

    /// Re-reads peer records and counts local rows no peer has acknowledged.
    pub async fn refresh(&self, replica: &Replica<IdbStore>) -> Result<(), Error> {
        let peers = replica.store().peers().await?;
        let acked = peers.values().filter(|p| !p.out_history.is_empty()).map(|p| p.outgoing).max().unwrap_or(-1);
        let me = replica.head().db_id;
        let mut pending = 0u64;
        let mut after = acked.max(0) as u64;
        loop {
            let rows = replica.store().rows_after(after, 2000).await?;
            let Some(last) = rows.last() else { break };
            after = last.row;
            pending += rows.iter().filter(|r| r.from.is_none() && r.op.origin == me).count() as u64;
        }
        *self.peers.borrow_mut() = peers;
        self.pending.set(pending);
        Ok(())
    }

    fn config(&self) -> Result<&SyncConfig, Error> {
        self.config.as_ref().ok_or_else(|| SyncError::NotConfigured.into())
    }
}

/// Opens a connection and greets the server; returns the transport and the server's id.
async fn open(replica: &Replica<IdbStore>, cfg: &SyncConfig) -> Result<(WsTransport, String), Error> {
    let mut t = WsTransport::connect(&cfg.url).await?;
    let server = session::hello(replica, &mut t, &cfg.library, cfg.token.clone()).await?;
    Ok((t, server))
}

async fn round_on(replica: &Replica<IdbStore>, client: &Client, t: &mut WsTransport, server: &str) -> Result<RoundReport, Error> {
    let _guard = client.round_lock.lock().await;
    let limits = client.config()?.limits;
    let report = session::round(replica, t, server, limits, &mut |dir, p| {
        let payload = serde_json::json!({
            "direction": if dir == Direction::Push { "push" } else { "pull" },
            "done": p.done,
            "total": p.total,
        });
        client.emit("progress", &to_js(&payload));
    })
    .await?;
    client.refresh(replica).await?;
    if report.reset {
        client.emit("reset", &to_js(&report));
    }
    if let Some(version) = report.pull.future_version {
        client.emit("futureVersion", &to_js(&serde_json::json!({ "version": version, "current": replica.head().schema_version })));
    }
    client.emit("sync", &to_js(&report));
    Ok(report)
}

/// One round over a fresh connection: what `syncNow()` does.
pub async fn sync_now(replica: &Replica<IdbStore>, client: &Client) -> Result<RoundReport, Error> {
    let cfg = client.config()?.clone();
    let result = async {
        let (mut t, server) = open(replica, &cfg).await?;
        round_on(replica, client, &mut t, &server).await
    }
    .await;
    if let Err(e) = &result {
        client.emit("error", &err_to_js(e.clone()));
    }
    result
}

/// Starts live sync unless it is running; returns at once.
pub fn connect(replica: Rc<Replica<IdbStore>>, client: Rc<Client>) -> Result<(), Error> {
    client.config()?;
    if client.running.get() {
        return Ok(());
    }
    client.running.set(true);
    let generation = client.live.get();
    wasm_bindgen_futures::spawn_local(async move {
        live(&replica, &client, generation).await;
        client.running.set(false);
        client.online.set(false);
    });
    Ok(())
}

pub fn disconnect(client: &Client) {
    client.live.set(client.live.get().wrapping_add(1));
    if let Some(p) = client.poke.borrow_mut().take() {
        p.close_channel();
    }
}

async fn live(replica: &Replica<IdbStore>, client: &Client, generation: u32) {
    let stopped = || client.live.get() != generation;
    let mut backoff = BACKOFF_MIN_MS;
    while !stopped() {
        let cfg = match client.config() {
            Ok(c) => c.clone(),
            Err(_) => return,
        };
        match open(replica, &cfg).await {
            Ok((mut t, server)) => {
                client.online.set(true);
                client.emit("online", &JsValue::TRUE);
                let (tx, mut rx) = mpsc::unbounded();
                *client.poke.borrow_mut() = Some(tx);
                loop {
                    if stopped() {
                        break;
                    }
                    match round_on(replica, client, &mut t, &server).await {
                        Ok(report) => {
                            backoff = BACKOFF_MIN_MS;
                            if report.capped {
                                continue;
                            }
                        }
                        Err(e) => {
                            client.emit("error", &err_to_js(e));
                            break;
                        }
                    }
                    // Wait for a local write or the poll interval.
                    let poke = rx.next();
                    let tick = Box::pin(sleep(POLL_MS));
                    if let Either::Left((None, _)) = select(poke, tick).await {
                        break;
                    }
                }
                client.online.set(false);
                client.emit("online", &JsValue::FALSE);
            }
            Err(e) => client.emit("error", &err_to_js(e)),
        }
        if stopped() {
            break;
        }
        // Exponential backoff with jitter, so many clients do not reconnect in lockstep.
        let jitter = (js_sys::Math::random() * backoff as f64 * 0.3) as u32;
        sleep(backoff + jitter).await;
        backoff = (backoff * 2).min(BACKOFF_MAX_MS);
    }
}
