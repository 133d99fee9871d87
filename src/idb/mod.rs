//! IndexedDB storage for the browser (DESIGN §4): `IdbStore` implements the engine's
//! `Store` over a directory database that names the live generation, and one database
//! per generation holding the head, the op log, the peers' sync points and the documents
//! with native indexes.
//!
//! - `directory`: the live pointer and its compare-and-set flip.
//! - `generation`: creating, checking and deleting generation databases.
//! - `commit`: the one-transaction write path.
//! - `read`: head, get, queries, log reads.
//! - `codec`: the records' IndexedDB shape, and their way across the wasm boundary.
//! - `keys`: index keys as order-preserving strings for the native indexes.
//! - `error`: IndexedDB failures as `StoreError`s.
//! - `persist`: asking for persistent storage.
//! - `upgrade`: opening data of an older schema version into a new generation.

pub mod codec;
pub mod commit;
pub mod directory;
pub mod error;
pub mod generation;
pub mod keys;
pub mod persist;
pub mod read;
pub mod upgrade;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::rc::Rc;

use indexed_db_futures::database::Database;
use indexed_db_futures::internals::SystemRepr;
use wasm_bindgen::prelude::*;

use crate::error::{Error, OpenError, StoreError};
use crate::query::Plan;
use crate::schema::Schema;
use crate::store::{Commit, DocKey, Head, Loaded, Row, Store, StoredDoc};
use crate::sync::peer::PeerRecord;

use directory::{Flip, Live};

/// The IndexedDB store of one replica, bound to its live generation.
pub struct IdbStore {
    replica: String,
    schema: Schema,
    live: Live,
    dir: Database,
    db: Database,
    closed: Rc<Cell<bool>>,
    /// Closes both connections when another tab deletes or upgrades one of the
    /// databases, so it is never blocked by this one; kept alive as long as the store.
    _on_version_change: Closure<dyn FnMut()>,
    /// Told the collections each committed transaction changed, after it committed (live
    /// queries and other tabs re-read from there).
    on_change: std::cell::RefCell<Option<js_sys::Function>>,
}

impl IdbStore {
    /// Opens (creating on first use) the replica `name` for `schema`.
    ///
    /// Fails with `SCHEMA_MISMATCH` if the live generation was built for another layout
    /// of collections and indexes; the stored data is left untouched.
    pub async fn open(name: &str, schema: &Schema) -> Result<IdbStore, Error> {
        check_name(name)?;
        schema.validate()?;
        persist::ask_once();
        let dir = directory::open(name).await?;
        match Self::live_generation(name, schema, &dir).await {
            Ok((live, db)) => Ok(Self::new(name, schema, live, dir, db)),
            Err(e) => {
                dir.close();
                Err(e)
            }
        }
    }

    async fn live_generation(name: &str, schema: &Schema, dir: &Database) -> Result<(Live, Database), Error> {
        let layout = schema.layout();
        let mut live = directory::read_live(dir).await?;
        if live.is_none() {
            let first = Live { generation: 1, db: generation::name(name, 1), schema_version: schema.version, layout: layout.clone() };
            let db = generation::create(name, 1, schema).await?;
            match directory::flip_live(dir, None, &first).await {
                Ok(Flip::Done) => return Ok((first, db)),
                // Another tab created the replica meanwhile: use what it made live.
                Ok(Flip::Lost(current)) => {
                    db.close();
                    live = current;
                }
                Err(e) => {
                    db.close();
                    return Err(e.into());
                }
            }
        }
        let live = live.expect("set above");
        if live.layout != layout {
            return Err(OpenError::SchemaMismatch {
                stored: live.schema_version,
                opened: schema.version,
                hint: "the stored collections or indexes differ from this schema's: open it with the schema the data was \
                       written with, bump schema.version (keeping the old schema in `history`), or call \
                       deleteReplica(name) to start over"
                    .into(),
            }
            .into());
        }
        let (db, _) = generation::open(&live.db, schema).await?;
        if !generation::has_layout(&db, schema)? {
            db.close();
            return Err(StoreError::Corrupt(format!("{} lacks the stores or indexes its directory entry promises", live.db)).into());
        }
        Ok((live, db))
    }

    fn new(name: &str, schema: &Schema, live: Live, dir: Database, db: Database) -> IdbStore {
        let closed = Rc::new(Cell::new(false));
        let on_version_change = {
            let (closed, dir, db) = (closed.clone(), dir.clone(), db.clone());
            Closure::<dyn FnMut()>::new(move || {
                closed.set(true);
                dir.as_sys().close();
                db.as_sys().close();
            })
        };
        dir.as_sys().set_onversionchange(Some(on_version_change.as_ref().unchecked_ref()));
        db.as_sys().set_onversionchange(Some(on_version_change.as_ref().unchecked_ref()));
        IdbStore {
            replica: name.to_string(),
            schema: schema.clone(),
            live,
            dir,
            db,
            closed,
            _on_version_change: on_version_change,
            on_change: std::cell::RefCell::new(None),
        }
    }

    /// Sets the function called with the array of collection names a committed
    /// transaction changed.
    pub fn set_on_change(&self, f: Option<js_sys::Function>) {
        *self.on_change.borrow_mut() = f;
    }

    /// Closes the connections; every later call fails with `CLOSED`.
    pub fn close(&self) {
        if !self.closed.replace(true) {
            self.dir.as_sys().set_onversionchange(None);
            self.db.as_sys().set_onversionchange(None);
            self.dir.as_sys().close();
            self.db.as_sys().close();
        }
    }

    pub fn name(&self) -> &str {
        &self.replica
    }

    /// The live generation this store reads and writes.
    pub fn live(&self) -> &Live {
        &self.live
    }

    /// Deletes the replica `name` entirely: its directory and every generation database.
    /// Open stores of that replica (in this or another tab) are closed by the deletion.
    pub async fn delete_replica(name: &str) -> Result<(), Error> {
        check_name(name)?;
        let mut doomed = generations_listed(name).await;
        let dir = directory::open(name).await?;
        let live = directory::read_live(&dir).await;
        dir.close();
        if let Ok(Some(live)) = live {
            doomed.push(live.db);
        }
        doomed.sort();
        doomed.dedup();
        for db in doomed {
            generation::delete(&db).await?;
        }
        generation::delete(&directory::name(name)).await?;
        Ok(())
    }

    fn check_open(&self) -> Result<(), StoreError> {
        if self.closed.get() {
            Err(StoreError::Closed)
        } else {
            Ok(())
        }
    }

    fn knows(&self, collection: &str) -> bool {
        self.schema.collections.contains_key(collection)
    }
}

impl Drop for IdbStore {
    fn drop(&mut self) {
        self.close();
    }
}

/// Replica names end up inside database names; a `:` would let replica `a` and replica
/// `a:g1` claim the same database (`tidemark:a:g1`).
fn check_name(name: &str) -> Result<(), OpenError> {
    if name.is_empty() || name.contains(':') {
        return Err(OpenError::InvalidOptions(format!("replica name {name:?} must be non-empty and must not contain ':'")));
    }
    Ok(())
}

/// Generation databases of `replica` the browser lists, including leftovers of crashed
/// rebuilds the directory no longer names. Empty where `indexedDB.databases()` is missing.
async fn generations_listed(replica: &str) -> Vec<String> {
    let prefix = format!("{}:g", directory::name(replica));
    let list = async {
        let factory = js_sys::Reflect::get(&js_sys::global(), &"indexedDB".into()).ok()?;
        let databases = js_sys::Reflect::get(&factory, &"databases".into()).ok()?.dyn_into::<js_sys::Function>().ok()?;
        let promise = databases.call0(&factory).ok()?.dyn_into::<js_sys::Promise>().ok()?;
        let infos = wasm_bindgen_futures::JsFuture::from(promise).await.ok()?.dyn_into::<js_sys::Array>().ok()?;
        Some(infos.iter().filter_map(|info| js_sys::Reflect::get(&info, &"name".into()).ok()?.as_string()).collect::<Vec<_>>())
    };
    list.await
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.strip_prefix(&prefix).is_some_and(|g| !g.is_empty() && g.bytes().all(|b| b.is_ascii_digit())))
        .collect()
}

impl Store for IdbStore {
    type Doc = JsValue;

    async fn head(&self) -> Result<Option<Head>, StoreError> {
        self.check_open()?;
        read::head(&self.db).await
    }

    async fn get(&self, collection: &str, id: &str) -> Result<Option<StoredDoc>, StoreError> {
        self.check_open()?;
        let Some(c) = self.schema.collection(collection) else { return Ok(None) };
        read::get(&self.db, collection, &c.index_list(), id).await
    }

    async fn commit<F>(&self, keys: &[DocKey], f: F) -> Result<Commit, Error>
    where
        F: FnOnce(Option<Head>, Vec<Option<StoredDoc>>) -> Result<Commit, Error>,
    {
        self.commit_sync(keys, &[], |loaded| f(loaded.head, loaded.docs)).await
    }

    async fn commit_sync<F>(&self, keys: &[DocKey], peers: &[String], f: F) -> Result<Commit, Error>
    where
        F: FnOnce(Loaded) -> Result<Commit, Error>,
    {
        self.check_open()?;
        if let Some((c, _)) = keys.iter().find(|(c, _)| !self.knows(c)) {
            return Err(StoreError::Backend(format!("collection {c:?} is not in this store's schema")).into());
        }
        let commit = commit::commit(&self.db, &self.schema, keys, peers, f).await?;
        if !commit.docs.is_empty() {
            let f = self.on_change.borrow().clone();
            if let Some(f) = f {
                let mut names: Vec<&str> = commit.docs.iter().map(|(c, _)| c.as_str()).collect();
                names.sort_unstable();
                names.dedup();
                let arr: js_sys::Array = names.into_iter().map(JsValue::from_str).collect();
                let _ = f.call1(&JsValue::NULL, &arr);
            }
        }
        Ok(commit)
    }

    async fn peers(&self) -> Result<BTreeMap<String, PeerRecord>, StoreError> {
        self.check_open()?;
        read::peers(&self.db).await
    }

    async fn all_docs(&self) -> Result<(Head, Vec<(String, StoredDoc)>), StoreError> {
        self.check_open()?;
        read::all_docs(&self.db, &self.schema).await
    }

    async fn query(&self, collection: &str, primary_key: &str, plan: &Plan) -> Result<Vec<JsValue>, StoreError> {
        self.check_open()?;
        if !self.knows(collection) {
            return Ok(Vec::new());
        }
        read::query(&self.db, collection, primary_key, plan).await
    }

    async fn rows_after(&self, after: u64, limit: usize) -> Result<Vec<Row>, StoreError> {
        self.check_open()?;
        read::rows_after(&self.db, after, limit).await
    }
}
