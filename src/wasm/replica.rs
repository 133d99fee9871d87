//! The `Replica` class and `openReplica`: what `import { openReplica } from 'tidemark'`
//! reaches through the JS wrapper.
//!
//! ```js
//! const db = await openReplica({ name: 'app', schema });
//! await db.put('todos', { id: 'a', title: 'Milk' });
//! const open = await db.query('todos', { where: { done: false }, limit: 50 });
//! ```

use std::rc::Rc;

use serde_json::Value;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

use super::client::{self, Client, SyncConfig};
use super::convert::{check_string, to_js, to_json, to_json_items, to_json_loose, to_object, to_string};
use super::error::to_js as err_to_js;
use crate::error::{Error, OpenError};
use crate::idb::IdbStore;
use crate::replica::{Replica, Write};
use crate::migrate::Schemas;
use crate::schema::Schema;
use crate::store::Store;
use super::migrations::JsMigrator;

/// Options `openReplica` understands; later capabilities add to this list.
const OPTION_KEYS: [&str; 7] = ["name", "schema", "history", "migrations", "sync", "onProgress", "maxClockSkew"];

/// A replica open in this page: documents, queries and (later) sync.
#[wasm_bindgen(js_name = Replica)]
pub struct JsReplica {
    inner: Rc<Replica<IdbStore>>,
    client: Rc<Client>,
}

fn get(obj: &JsValue, key: &str) -> JsValue {
    js_sys::Reflect::get(obj, &key.into()).unwrap_or(JsValue::UNDEFINED)
}

fn bad_options(msg: impl Into<String>) -> Error {
    OpenError::InvalidOptions(msg.into()).into()
}

/// Opens (or creates) the replica `options.name` with `options.schema`.
#[wasm_bindgen(js_name = openReplica)]
pub async fn open_replica(options: JsValue) -> Result<JsReplica, JsValue> {
    open(options).await.map_err(err_to_js)
}

async fn open(options: JsValue) -> Result<JsReplica, Error> {
    if !options.is_object() {
        return Err(bad_options("openReplica needs an options object: { name, schema }"));
    }
    let keys = js_sys::Object::keys(options.unchecked_ref::<js_sys::Object>());
    for k in keys.iter() {
        let k = k.as_string().unwrap_or_default();
        if !OPTION_KEYS.contains(&k.as_str()) {
            return Err(bad_options(format!("unknown option {k:?}: expected one of {OPTION_KEYS:?}")));
        }
    }
    let name = get(&options, "name")
        .as_string()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| bad_options("options.name must be a non-empty string"))?;
    let schema_js = get(&options, "schema");
    if schema_js.is_undefined() {
        return Err(bad_options("options.schema is required: { version, collections }"));
    }
    let schema = Schema::from_json(to_json(&schema_js).map_err(|e| crate::error::SchemaError::Invalid(e.to_string()))?)?;
    let history_js = get(&options, "history");
    let history = if history_js.is_undefined() || history_js.is_null() {
        vec![]
    } else {
        match to_json(&history_js).map_err(|e| crate::error::SchemaError::Invalid(e.to_string()))? {
            Value::Array(items) => items.into_iter().map(Schema::from_json).collect::<Result<Vec<_>, _>>()?,
            _ => return Err(bad_options("history must be an array of older schemas")),
        }
    };
    let schemas = Schemas::new(schema, history)?;
    let migrator = JsMigrator::from_js(&get(&options, "migrations")).map_err(bad_options)?;
    let on_progress = get(&options, "onProgress").dyn_into::<js_sys::Function>().ok();
    let sync_js = get(&options, "sync");
    let sync = if sync_js.is_undefined() || sync_js.is_null() {
        None
    } else {
        Some(SyncConfig::from_js(&sync_js)?)
    };
    let skew_js = get(&options, "maxClockSkew");
    let max_clock_skew = if skew_js.is_undefined() {
        None
    } else {
        match skew_js.as_f64() {
            Some(ms) if ms.is_finite() && ms >= 0.0 && ms.fract() == 0.0 => Some(ms as u64),
            _ => return Err(bad_options("maxClockSkew must be a whole number of milliseconds >= 0")),
        }
    };
    let mut progress = |p: crate::sync::Progress| {
        if let Some(f) = &on_progress {
            let _ = f.call1(&JsValue::NULL, &to_js(&serde_json::json!({"phase": "upgrade", "step": p.phase, "done": p.done, "total": p.total})));
        }
    };
    let store = IdbStore::open_migrating(&name, &schemas, &migrator, &mut progress).await?;
    let replica = Replica::open_migrating(store, schemas, Box::new(migrator), Box::new(|| js_sys::Date::now() as u64)).await?;
    if let Some(ms) = max_clock_skew {
        replica.set_max_clock_skew(ms);
    }
    Ok(JsReplica { inner: Rc::new(replica), client: Rc::new(Client::new(sync)) })
}

/// Refuses a condition whose value is `undefined` (`{ where: { owner: user?.id } }` before
/// the user loaded): elsewhere in a query an undefined property means "not given", as in
/// `JSON.stringify`, but dropping a condition would return every document.
fn undefined_condition(query: &JsValue) -> Result<(), Error> {
    let conditions = js_sys::Reflect::get(query, &JsValue::from_str("where")).unwrap_or(JsValue::UNDEFINED);
    let undefined = properties(&conditions).find_map(|(field, value)| match value.is_undefined() {
        true => Some(field),
        // An operator object's operands: `{ n: { gte: undefined } }`.
        false => properties(&value).find(|(_, operand)| operand.is_undefined()).map(|(op, _)| format!("{field}.{op}")),
    });
    match undefined {
        Some(path) => Err(crate::error::QueryError::Invalid(format!("where.{path} is undefined: give the condition a value, or leave the field out to match any")).into()),
        None => Ok(()),
    }
}

/// The own enumerable properties of a plain object (none for anything else).
fn properties(value: &JsValue) -> impl Iterator<Item = (String, JsValue)> {
    let object = value.dyn_ref::<js_sys::Object>().filter(|_| !js_sys::Array::is_array(value));
    object.map(js_sys::Object::entries).into_iter().flat_map(|entries| entries.to_vec()).map(|pair| {
        let pair: js_sys::Array = pair.unchecked_into();
        (pair.get(0).as_string().unwrap_or_default(), pair.get(1))
    })
}

/// Deletes every database of the replica `name` (close it first).
#[wasm_bindgen(js_name = deleteReplica)]
pub async fn delete_replica(name: JsValue) -> Result<(), JsValue> {
    let Some(name) = name.as_string() else {
        return Err(err_to_js(bad_options("deleteReplica(name) takes the replica's name: the string given to openReplica({ name })")));
    };
    IdbStore::delete_replica(&name).await.map_err(err_to_js)
}

/// Runs `f` on the replica as a promise; errors become `Error`s with a `code`. It runs
/// once the writes asked for before it have finished (`Turns`): a read sees them.
fn run<F, Fut>(inner: &Rc<Replica<IdbStore>>, f: F) -> js_sys::Promise
where
    F: FnOnce(Rc<Replica<IdbStore>>) -> Fut,
    Fut: std::future::Future<Output = Result<JsValue, Error>> + 'static,
{
    let after = inner.turns().finished(inner.turns().asked());
    // Boxed: one promise wrapper serves every method, where each future type compiled its
    // own copy of it into the wasm.
    let fut: std::pin::Pin<Box<dyn std::future::Future<Output = Result<JsValue, Error>>>> = Box::pin(f(inner.clone()));
    future_to_promise(async move {
        after.await;
        fut.await.map_err(err_to_js)
    })
}

/// Like `run` for writes: each commits after the writes asked for before it (`Turns`),
/// and on success wakes live sync.
fn write<F, Fut>(this: &JsReplica, f: F) -> js_sys::Promise
where
    F: FnOnce(Rc<Replica<IdbStore>>) -> Fut,
    Fut: std::future::Future<Output = Result<(), Error>> + 'static,
{
    let ticket = this.inner.turns().write_ticket();
    // Boxed, as in `run`.
    let fut: std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Error>>>> = Box::pin(f(this.inner.clone()));
    let shared = this.client.shared.clone();
    future_to_promise(async move {
        ticket.turn().await;
        let written = fut.await;
        drop(ticket);
        written.map_err(err_to_js)?;
        shared.wake();
        Ok(JsValue::UNDEFINED)
    })
}

thread_local! {
    /// An IndexedDB error as the JS API reports it (`err_to_js`): the rejection of reads
    /// made in JS (`JsReplica::get`).
    static STORE_ERROR: Closure<dyn Fn(JsValue) -> JsValue> = Closure::new(|e: JsValue| err_to_js(crate::idb::error::from_js(&e).into()));
}

/// Validates arguments synchronously, so a bad call rejects without touching storage.
fn reject(e: Error) -> js_sys::Promise {
    js_sys::Promise::reject(&err_to_js(e))
}

#[wasm_bindgen(js_class = Replica)]
impl JsReplica {
    /// Writes a whole document (`doc[primaryKey]` names it).
    pub fn put(&self, collection: JsValue, doc: JsValue) -> js_sys::Promise {
        match (to_string(&collection, "collection"), to_object(&doc, "the document")) {
            (Ok(c), Ok(doc)) => write(self, |r| async move { r.put(&c, doc).await }),
            (Err(e), _) | (_, Err(e)) => reject(e),
        }
    }

    /// Writes many whole documents in one transaction.
    #[wasm_bindgen(js_name = putMany)]
    pub fn put_many(&self, collection: JsValue, docs: JsValue) -> js_sys::Promise {
        let parsed = to_string(&collection, "collection").and_then(|c| {
            let items = match docs.dyn_ref::<js_sys::Array>() {
                Some(array) => to_json_items(array)?,
                // Not an array, though it may turn into one (a `toJSON` that returns one).
                None => match to_json(&docs)? {
                    Value::Array(items) => items,
                    _ => return Err(crate::error::WriteError::InvalidArgument("putMany takes an array of documents".into()).into()),
                },
            };
            items
                .into_iter()
                .map(|d| match d {
                    Value::Object(doc) => Ok(Write::Put { collection: c.clone(), doc }),
                    _ => Err(crate::error::WriteError::InvalidDocument("putMany takes an array of objects".into()).into()),
                })
                .collect::<Result<Vec<_>, Error>>()
        });
        match parsed {
            Ok(writes) => write(self, |r| async move { r.write(writes).await }),
            Err(e) => reject(e),
        }
    }

    /// Sets some fields; keys may be dotted paths (`'address.city'`).
    pub fn patch(&self, collection: JsValue, id: JsValue, fields: JsValue) -> js_sys::Promise {
        let args = (|| Ok::<_, Error>((to_string(&collection, "collection")?, to_string(&id, "id")?, to_object(&fields, "the patch")?)))();
        match args {
            Ok((c, id, f)) => write(self, |r| async move { r.patch(&c, &id, f).await }),
            Err(e) => reject(e),
        }
    }

    /// Settles conflicts (DESIGN §11): writes `fields` as a resolution, which every pass
    /// sends ahead of its rows. Only for collections declared with `conflicts: true`.
    pub fn resolve(&self, collection: JsValue, id: JsValue, fields: JsValue) -> js_sys::Promise {
        let args = (|| Ok::<_, Error>((to_string(&collection, "collection")?, to_string(&id, "id")?, to_object(&fields, "the resolution")?)))();
        match args {
            Ok((c, id, f)) => write(self, |r| async move { r.resolve(&c, &id, f).await }),
            Err(e) => reject(e),
        }
    }

    /// The losing values of concurrent writes to a document: `{ [path]: values }`, newest
    /// first; `{}` when there are none.
    pub fn conflicts(&self, collection: JsValue, id: JsValue) -> js_sys::Promise {
        match (to_string(&collection, "collection"), to_string(&id, "id")) {
            (Ok(c), Ok(id)) => run(&self.inner, |r| async move { Ok(to_js(&r.conflicts(&c, &id).await?)) }),
            (Err(e), _) | (_, Err(e)) => reject(e),
        }
    }

    pub fn delete(&self, collection: JsValue, id: JsValue) -> js_sys::Promise {
        match (to_string(&collection, "collection"), to_string(&id, "id")) {
            (Ok(c), Ok(id)) => write(self, |r| async move { r.delete(&c, &id).await }),
            (Err(e), _) | (_, Err(e)) => reject(e),
        }
    }

    /// The document, or `undefined`. Read at once, in a promise JS makes
    /// (`IdbStore::get_visible_now`), unless a write asked for before it has not finished
    /// (`Turns`) or the store must first catch up with a swap or a staged write.
    /// The id goes on to IndexedDB as the JS string it came as (only the slower path
    /// reads it into Rust).
    pub fn get(&self, collection: JsValue, id: JsValue) -> js_sys::Promise {
        match (to_string(&collection, "collection"), check_string(&id, "id")) {
            (Ok(c), Ok(())) => {
                if let Err(e) = self.inner.query_collection(&c) {
                    return reject(e.into());
                }
                let now = self.inner.turns().idle().then(|| STORE_ERROR.with(|f| self.inner.store().get_visible_now(&c, &id, f.as_ref().unchecked_ref()))).flatten();
                now.unwrap_or_else(|| {
                    let id = id.as_string().unwrap_or_default();
                    run(&self.inner, |r| async move { Ok(r.store().get_visible(&c, &id).await?.unwrap_or(JsValue::UNDEFINED)) })
                })
            }
            (Err(e), _) | (_, Err(e)) => reject(e),
        }
    }

    /// Documents matching `{ where, orderBy, limit }`, as an array.
    pub fn query(&self, collection: JsValue, query: JsValue) -> js_sys::Promise {
        let q = if query.is_undefined() { Ok(Value::Null) } else { undefined_condition(&query).and_then(|()| to_json_loose(&query)) };
        match (to_string(&collection, "collection"), q) {
            (Ok(c), Ok(q)) => {
                // No write waiting: planned now, and for a direct plan IndexedDB is asked at
                // once, in a promise JS makes (`IdbStore::query_now`), as for `get`.
                let planned = if self.inner.turns().idle() {
                    let (key, plan) = match self.inner.plan(&c, &q) {
                        Ok((coll, plan)) => (coll.primary_key.clone(), plan),
                        Err(e) => return reject(e),
                    };
                    if let Some(now) = STORE_ERROR.with(|f| self.inner.store().query_now(&c, &plan, f.as_ref().unchecked_ref())) {
                        return now.unwrap_or_else(|e| reject(e.into()));
                    }
                    Some((key, plan))
                } else {
                    None
                };
                run(&self.inner, |r| async move {
                    let (key, plan) = match planned {
                        Some(planned) => planned,
                        None => r.plan(&c, &q).map(|(coll, plan)| (coll.primary_key.clone(), plan))?,
                    };
                    Ok(r.store().query_docs(&c, &key, &plan).await?.into())
                })
            }
            (Err(e), _) | (_, Err(e)) => reject(e),
        }
    }

    /// `{ dbId, schemaVersion, maxRow, incoming, outgoing, online, pending }` —
    /// synchronous, from memory (points as of the last commit or refresh).
    pub fn status(&self) -> JsValue {
        let mut s = self.inner.status();
        s.online = self.client.shared.online();
        to_js(&s)
    }

    /// One sync round (push, then pull) over a fresh connection; resolves to
    /// `{ sent, received, batches, capped, snapshot, reset }`.
    #[wasm_bindgen(js_name = syncNow)]
    pub fn sync_now(&self) -> js_sys::Promise {
        let client = self.client.clone();
        run(&self.inner, |r| async move { client::sync_now(&r, &client).await.map(|rep| to_js(&rep)) })
    }

    /// Starts live sync: reconnects with exponential backoff, pushes local writes at once.
    pub fn connect(&self) -> Result<(), JsValue> {
        client::connect(self.inner.clone(), &self.client).map_err(err_to_js)
    }

    /// Throws `SYNC_NOT_CONFIGURED` when the replica was opened without `sync`: the
    /// wrapper's `connect()` asks before it waits for the sync lock, so it throws at once
    /// and changes nothing, with or without Web Locks.
    #[wasm_bindgen(js_name = checkSync)]
    pub fn check_sync(&self) -> Result<(), JsValue> {
        self.client.check().map_err(err_to_js)
    }

    /// Stops live sync.
    pub fn disconnect(&self) {
        self.client.shared.stop();
    }

    /// The page's `online` / `offline` events: offline drops the live connection at once
    /// (`status().online` turns false), online reconnects at once.
    #[wasm_bindgen(js_name = setNetwork)]
    pub fn set_network(&self, online: bool) {
        self.client.shared.set_network(online);
    }

    /// The wrapper's event dispatcher: `(type, payload) => void`.
    #[wasm_bindgen(js_name = setEmitter)]
    pub fn set_emitter(&self, f: Option<js_sys::Function>) {
        self.client.emitter.set(f);
    }

    /// Called with the array of collections every committed transaction changed (local
    /// writes, sync, migrations): what live queries and other tabs listen to.
    #[wasm_bindgen(js_name = setOnChange)]
    pub fn set_on_change(&self, f: Option<js_sys::Function>) {
        self.inner.store().set_on_change(f);
    }

    /// Re-reads the head and sync points, after another tab wrote, synced or swapped a
    /// new generation in (this tab follows it); when the log grew (another tab wrote),
    /// wakes live sync so the writes are pushed at once.
    pub fn refresh(&self) -> js_sys::Promise {
        // At once, not in turn: no `get` asked after this call may be answered from
        // documents read before the other tab's write (`read::get_visible_promise`).
        self.inner.store().forget_read_ahead();
        let shared = self.client.shared.clone();
        run(&self.inner, |r| async move {
            let before = r.head().max_row;
            r.store().follow().await?;
            r.reload_head().await?;
            if r.head().max_row > before {
                shared.wake();
            }
            Ok(JsValue::UNDEFINED)
        })
    }

    /// The newest `limit` rows of the op log, newest first: `[{ row, op, from }]`.
    #[wasm_bindgen(js_name = recentOps)]
    pub fn recent_ops(&self, limit: JsValue) -> js_sys::Promise {
        let limit = limit.as_f64().filter(|n| *n >= 0.0).map_or(20, |n| n.min(10_000.0) as u64);
        run(&self.inner, |r| async move {
            // The stored head: another tab may have written since this one last did.
            let max = r.store().head().await?.map_or(0, |h| h.max_row);
            let mut rows = r.store().rows_after(max.saturating_sub(limit), limit as usize).await?;
            rows.reverse();
            Ok(to_js(&rows))
        })
    }

    /// Closes the replica's databases; later calls reject with code `CLOSED`.
    pub fn close(&self) -> js_sys::Promise {
        self.client.shared.stop();
        self.inner.store().close();
        js_sys::Promise::resolve(&JsValue::UNDEFINED)
    }
}
