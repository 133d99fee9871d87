//! A replica: the engine's public face. It turns writes into ops, merges them into
//! documents, keeps index keys current, and answers queries, over any `Store`.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::clock::{Clock, Stamp};
use crate::error::{Error, QueryError, WriteError};
use crate::key::encode;
use crate::merge::DocState;
use crate::migrate::{views, Item, Layers, Migrator, NoMigrations, Schemas};
use crate::op::{check_patch, Kind, Op};
use crate::query::{Plan, Query};
use crate::schema::{Collection, Schema};
use crate::store::{Commit, DocKey, Head, Row, Store, StoredDoc};

/// One write an app asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    Put { collection: String, doc: Map<String, Value> },
    Patch { collection: String, id: String, fields: Map<String, Value> },
    Delete { collection: String, id: String },
}

impl Write {
    fn collection(&self) -> &str {
        match self {
            Write::Put { collection, .. } | Write::Patch { collection, .. } | Write::Delete { collection, .. } => collection,
        }
    }
}

/// A source of wall-clock milliseconds (skewable in tests).
pub type WallClock = Box<dyn Fn() -> u64 + Send + Sync>;

/// Local status, as `db.status()` reports it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(all(test, not(target_arch = "wasm32")), derive(ts_rs::TS))]
pub struct Status {
    pub db_id: String,
    pub schema_version: u32,
    pub max_row: u64,
    /// Last row merged from each peer, by the peer's db id.
    pub incoming: std::collections::BTreeMap<String, u64>,
    /// Last own row each peer acknowledged, by the peer's db id.
    pub outgoing: std::collections::BTreeMap<String, u64>,
    pub online: bool,
    /// Local rows no server has acknowledged yet.
    pub pending: u64,
}

pub struct Replica<S: Store> {
    store: S,
    /// `None` for a relay (the server): it stores and forwards every collection without
    /// knowing the app's schema, and accepts no local writes.
    schemas: Option<Schemas>,
    migrator: Box<dyn Migrator>,
    now: WallClock,
    head: std::sync::Mutex<Head>,
}

/// A fresh random db id: 16 hex digits.
pub fn new_db_id() -> String {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("the platform has a random source");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl<S: Store> Replica<S> {
    /// Opens a replica over `store`, initializing a fresh store with a new db id.
    pub async fn open(store: S, schema: Schema, now: WallClock) -> Result<Replica<S>, Error> {
        schema.validate()?;
        Self::open_with(store, Some(Schemas::new(schema, vec![])?), Box::new(NoMigrations), now).await
    }

    /// Opens a replica that knows older schemas and how to migrate from them: documents
    /// and ops of older versions are migrated forward as they are read or arrive.
    pub async fn open_migrating(store: S, schemas: Schemas, migrator: Box<dyn Migrator>, now: WallClock) -> Result<Replica<S>, Error> {
        schemas.current.validate()?;
        Self::open_with(store, Some(schemas), migrator, now).await
    }

    /// Opens a relay replica: a server's copy of a library, schema-agnostic.
    pub async fn open_relay(store: S, now: WallClock) -> Result<Replica<S>, Error> {
        Self::open_with(store, None, Box::new(NoMigrations), now).await
    }

    async fn open_with(store: S, schemas: Option<Schemas>, migrator: Box<dyn Migrator>, now: WallClock) -> Result<Replica<S>, Error> {
        let head = match store.head().await? {
            Some(h) => h,
            None => {
                let version = schemas.as_ref().map_or(0, |s| s.current.version);
                let commit = store
                    .commit(&[], move |existing, _| {
                        // Another opener may have initialized the store meanwhile.
                        let head = existing.unwrap_or_else(|| {
                            let db_id = new_db_id();
                            Head { clock: Stamp { version, wall: 0, counter: 0, node: db_id.clone() }, db_id, max_row: 0, schema_version: version }
                        });
                        Ok(Commit { head: Some(head), ..Commit::default() })
                    })
                    .await?;
                commit.head.expect("init writes the head")
            }
        };
        Ok(Replica { store, schemas, migrator, now, head: std::sync::Mutex::new(head) })
    }

    pub fn schema(&self) -> Option<&Schema> {
        self.schemas.as_ref().map(|s| &s.current)
    }

    /// How this replica turns document layers into stored documents.
    pub(crate) fn rebuild(&self) -> Rebuild<'_> {
        Rebuild { schemas: self.schemas.as_ref(), migrator: self.migrator.as_ref() }
    }

    /// The head as of the last commit this replica made or loaded.
    pub fn head(&self) -> Head {
        self.head.lock().expect("head lock").clone()
    }

    /// Re-reads the head from the store (another tab may have written).
    pub async fn reload_head(&self) -> Result<(), Error> {
        if let Some(h) = self.store.head().await? {
            self.set_head(h);
        }
        Ok(())
    }

    pub(crate) fn set_head(&self, head: Head) {
        let mut h = self.head.lock().expect("head lock");
        if head.max_row >= h.max_row {
            *h = head;
        }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn status(&self) -> Status {
        let h = self.head.lock().expect("head lock").clone();
        // Until sync exists every row is a local write nobody has acknowledged.
        Status {
            db_id: h.db_id.clone(),
            schema_version: self.schema().map_or(h.schema_version, |s| s.version),
            max_row: h.max_row,
            incoming: Default::default(),
            outgoing: Default::default(),
            online: false,
            pending: h.max_row,
        }
    }

    fn collection(&self, name: &str) -> Result<&Collection, WriteError> {
        self.schema().and_then(|s| s.collection(name)).ok_or_else(|| WriteError::UnknownCollection(name.to_string()))
    }

    pub async fn put(&self, collection: &str, doc: Map<String, Value>) -> Result<(), Error> {
        self.write(vec![Write::Put { collection: collection.into(), doc }]).await
    }

    pub async fn patch(&self, collection: &str, id: &str, fields: Map<String, Value>) -> Result<(), Error> {
        self.write(vec![Write::Patch { collection: collection.into(), id: id.into(), fields }]).await
    }

    pub async fn delete(&self, collection: &str, id: &str) -> Result<(), Error> {
        self.write(vec![Write::Delete { collection: collection.into(), id: id.into() }]).await
    }

    /// Applies several writes atomically: one transaction, one group of log rows.
    pub async fn write(&self, writes: Vec<Write>) -> Result<(), Error> {
        // Validate everything before touching storage.
        let mut keys: Vec<DocKey> = Vec::with_capacity(writes.len());
        let mut slots = Vec::with_capacity(writes.len());
        let mut index = std::collections::HashMap::new();
        for w in &writes {
            let coll = self.collection(w.collection())?;
            let id = match w {
                Write::Put { doc, .. } => match doc.get(&coll.primary_key) {
                    Some(Value::String(id)) if !id.is_empty() => id.clone(),
                    _ => return Err(WriteError::MissingPrimaryKey { field: coll.primary_key.clone() }.into()),
                },
                Write::Patch { id, fields, .. } => {
                    check_id(id)?;
                    check_patch(fields, &coll.primary_key)?;
                    id.clone()
                }
                Write::Delete { id, .. } => {
                    check_id(id)?;
                    id.clone()
                }
            };
            let key = (w.collection().to_string(), id);
            let slot = *index.entry(key.clone()).or_insert_with(|| {
                keys.push(key);
                keys.len() - 1
            });
            slots.push(slot);
        }
        if writes.is_empty() {
            return Ok(());
        }
        let now = (self.now)();
        let schema = self.schema().expect("writes were validated against the schema");
        let rebuild = self.rebuild();
        let commit = self
            .store
            .commit(&keys, |head, current| {
                let mut head = head.ok_or_else(|| crate::error::StoreError::Corrupt("store has no head".into()))?;
                let mut clock = Clock::new(head.db_id.clone(), schema.version, Some(head.clock.clone()));
                let mut layers: Vec<Option<Layers>> = current.iter().map(|d| d.as_ref().map(StoredDoc::layers)).collect();
                let mut exists: Vec<bool> = current.iter().map(|d| d.as_ref().is_some_and(|d| d.d.is_some())).collect();
                let marks: Vec<Option<Stamp>> = current.iter().map(|d| d.as_ref().and_then(|d| d.m.clone())).collect();
                let mut rows = Vec::with_capacity(writes.len());
                for (w, slot) in writes.into_iter().zip(&slots) {
                    let (collection, id, kind, fields) = match w {
                        Write::Put { collection, doc } => {
                            let id = keys[*slot].1.clone();
                            exists[*slot] = true;
                            (collection, id, Kind::Put, Some(doc))
                        }
                        Write::Patch { collection, id, fields } => {
                            if !exists[*slot] {
                                return Err(WriteError::NotFound { collection, id }.into());
                            }
                            (collection, id, Kind::Patch, Some(fields))
                        }
                        Write::Delete { collection, id } => {
                            exists[*slot] = false;
                            (collection, id, Kind::Delete, None)
                        }
                    };
                    head.max_row += 1;
                    let op = Op {
                        origin: head.db_id.clone(),
                        origin_row: head.max_row,
                        ts: clock.tick(now),
                        schema_version: schema.version,
                        collection,
                        id,
                        kind,
                        fields,
                    };
                    layers[*slot].get_or_insert_with(Layers::default).apply(&op);
                    rows.push(Row { row: head.max_row, op, from: None });
                }
                head.clock = clock.last().clone();
                let items = keys.iter().zip(layers).zip(marks).filter_map(|((k, l), m)| l.map(|l| (k.clone(), l, m))).collect();
                let docs = rebuild.docs(items, &mut head, &mut rows)?;
                Ok(Commit { head: Some(head), docs, rows, peers: vec![] })
            })
            .await?;
        if let Some(h) = commit.head {
            self.set_head(h);
        }
        Ok(())
    }

    /// The document, or `None` if it doesn't exist (or was deleted).
    pub async fn get(&self, collection: &str, id: &str) -> Result<Option<StoredDoc>, Error> {
        self.query_collection(collection)?;
        Ok(self.store.get(collection, id).await?.filter(|d| d.d.is_some()))
    }

    pub async fn query(&self, collection: &str, query: &Value) -> Result<Vec<S::Doc>, Error> {
        let (coll, plan) = self.plan(collection, query)?;
        Ok(self.store.query(collection, &coll.primary_key, &plan).await?)
    }

    /// Parses and plans a query without running it.
    pub fn plan(&self, collection: &str, query: &Value) -> Result<(&Collection, Plan), Error> {
        let coll = self.query_collection(collection)?;
        Ok((coll, Query::parse(query)?.plan(coll)))
    }

    fn query_collection(&self, collection: &str) -> Result<&Collection, QueryError> {
        self.schema().and_then(|s| s.collection(collection)).ok_or_else(|| QueryError::UnknownCollection(collection.to_string()))
    }
}

fn check_id(id: &str) -> Result<(), WriteError> {
    if id.is_empty() {
        return Err(WriteError::InvalidArgument("a document id is a non-empty string".into()));
    }
    Ok(())
}

/// The stored form of a single-layer document state: the materialized view plus, for
/// collections the schema declares, the primary key and index keys. A relay (no schema)
/// stores the state as it is.
pub fn stored_doc(schema: Option<&Schema>, collection: &str, id: &str, state: &DocState, version: u32) -> StoredDoc {
    let coll = schema.and_then(|s| s.collection(collection));
    let d = match coll {
        Some(c) => state.materialize(&c.primary_key, id),
        None => state.exists().then(|| state.doc.clone()),
    };
    let i = coll.map(|c| index_keys(c, &d)).unwrap_or_default();
    StoredDoc { id: id.to_string(), d, s: state.stamps.clone(), t: state.deleted, v: version, i, x: None, l: BTreeMap::new(), m: None }
}

/// Each index's key for a document (none when it does not exist).
fn index_keys(coll: &Collection, d: &Option<Map<String, Value>>) -> Map<String, Value> {
    let mut i = Map::new();
    if let Some(doc) = d {
        for index in coll.index_list() {
            let key: Vec<Value> = index.fields.iter().map(|f| encode(f.get(doc))).collect();
            i.insert(index.name, Value::Array(key));
        }
    }
    i
}

/// Turns document layers into stored documents: one layer at the app's version is stored
/// as is; anything else gets its view migrated forward (`migrate::views`), and the
/// migration output is logged as a local row when it changed, so it reaches the server.
pub(crate) struct Rebuild<'a> {
    pub schemas: Option<&'a Schemas>,
    pub migrator: &'a dyn Migrator,
}

impl Rebuild<'_> {
    /// `items`: (key, layers, last migration stamp written). Appends migration rows to
    /// `rows`, numbering them after `head.max_row`.
    pub fn docs(&self, items: Vec<(DocKey, Layers, Option<Stamp>)>, head: &mut Head, rows: &mut Vec<Row>) -> Result<Vec<(String, StoredDoc)>, Error> {
        let Some(schemas) = self.schemas else {
            // A relay keeps every layer; its document is the newest one.
            return Ok(items
                .into_iter()
                .map(|((c, id), mut layers, m)| {
                    let v = layers.0.keys().next_back().copied().unwrap_or(0);
                    let state = layers.0.remove(&v).unwrap_or_default();
                    let d = state.exists().then(|| state.doc.clone());
                    (c, StoredDoc { id, d, s: state.stamps, t: state.deleted, v, i: Map::new(), x: None, l: layers.0, m })
                })
                .collect());
        };
        let current = schemas.current.version;
        let mut out: Vec<Option<(String, StoredDoc)>> = vec![None; items.len()];
        let mut slow = Vec::new();
        for (n, ((c, id), layers, m)) in items.iter().enumerate() {
            if layers.0.keys().all(|v| *v == current) {
                let state = layers.0.get(&current).cloned().unwrap_or_default();
                let mut doc = stored_doc(Some(&schemas.current), c, id, &state, current);
                doc.m = m.clone();
                out[n] = Some((c.clone(), doc));
            } else {
                slow.push(n);
            }
        }
        if !slow.is_empty() {
            let batch: Vec<Item> = slow.iter().map(|&n| Item { collection: &items[n].0 .0, id: &items[n].0 .1, layers: &items[n].1 }).collect();
            let views = views(schemas, self.migrator, &head.db_id, &batch)?;
            for (&n, view) in slow.iter().zip(views) {
                let ((c, id), layers, m) = &items[n];
                let own = layers.0.get(&current).cloned().unwrap_or_default();
                let coll = schemas.current.collection(c);
                let i = coll.map(|cl| index_keys(cl, &view.doc)).unwrap_or_default();
                let mut m = m.clone();
                if let Some(mut op) = view.migration {
                    if m.as_ref() != Some(&op.ts) {
                        m = Some(op.ts.clone());
                        head.max_row += 1;
                        op.origin_row = head.max_row;
                        rows.push(Row { row: head.max_row, op, from: None });
                    }
                }
                let l = layers.0.iter().filter(|(v, _)| **v != current).map(|(v, st)| (*v, st.clone())).collect();
                out[n] = Some((
                    c.clone(),
                    StoredDoc { id: id.clone(), d: view.doc, s: own.stamps, t: own.deleted, v: current, i, x: Some(own.doc), l, m },
                ));
            }
        }
        Ok(out.into_iter().map(|o| o.expect("every item built")).collect())
    }
}
