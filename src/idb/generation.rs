//! Generation databases `tidemark:{replica}:g{n}`: one per physical layout of a replica's
//! data. Each holds `meta` (the head under `"head"`, and the resolution log: each
//! resolution row again under `["r", row]`), `log` (one record per commit), `peers` (sync
//! points and sessions, keyed by peer db id) and one store per collection,
//! `c:{collection}`, keyed by document id, with one native index per schema index over
//! the record's key `${index}` (see `codec` for the records, `keys` for the keys).
//! Generations made by earlier builds keep their index keys in an object, `i.{index}`
//! (`KeyPlace::Nested`): they are read and written as they are.
//!
//! The object stores and indexes are only ever created when the database is new, because
//! indexed_db_futures' upgrade callback cannot reach the versionchange transaction to
//! add an index to an existing store (DESIGN §4): a different layout is a new generation.

use std::cell::Cell;
use std::rc::Rc;

use indexed_db_futures::database::Database;
use indexed_db_futures::prelude::*;
use indexed_db_futures::KeyPath;

use crate::error::StoreError;
use crate::schema::Schema;

use super::error::{from_idb, from_open};

pub const META: &str = "meta";
pub const LOG: &str = "log";
pub const PEERS: &str = "peers";
pub const HEAD: &str = "head";

/// The largest row a key can hold exactly (rows are keys as JS numbers).
pub const MAX_ROW: u64 = (1 << 53) - 1;

/// The `meta` key of resolution row `row`: the resolution log is a key range of `meta`,
/// written in the same transaction as the log record holding the row.
pub fn resolution_key(row: u64) -> wasm_bindgen::JsValue {
    js_sys::Array::of2(&"r".into(), &wasm_bindgen::JsValue::from_f64(row.min(MAX_ROW) as f64)).into()
}

pub fn name(replica: &str, generation: u32) -> String {
    format!("tidemark:{replica}:g{generation}")
}

pub fn collection_store(collection: &str) -> String {
    format!("c:{collection}")
}

/// Where a generation's records hold their index keys (`codec::DocOut`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyPlace {
    /// Each at the top of the record, as `${index}`: what every new generation has. An
    /// object less per record than `Nested`, which every read and write of a record
    /// rebuilds: a 1,000-document range query's `getAll` took ~6% less in raw IndexedDB.
    Top,
    /// In an object, `i.{index}`: generations made before `Top`.
    Nested,
}

impl KeyPlace {
    pub fn key_path(self, index: &str) -> String {
        match self {
            KeyPlace::Top => format!("${index}"),
            KeyPlace::Nested => format!("i.{index}"),
        }
    }

    /// The place of an index's key path as stored (`None`: neither).
    pub fn of(key_path: &str, index: &str) -> Option<KeyPlace> {
        [KeyPlace::Top, KeyPlace::Nested].into_iter().find(|p| p.key_path(index) == key_path)
    }
}

/// The IndexedDB version of a generation database, which is the format of its data. 2
/// since a single write keeps the head it made in its log record (`head`): a build of
/// version 1 reads the head from `meta` alone and would number its rows over such writes,
/// so it must not open one — IndexedDB refuses it with a `VersionError` (a lower version
/// than the database's), and nothing is touched. 3 since new generations hold their index
/// keys at their records' top (`KeyPlace::Top`): a build of version 2 would write them into
/// an object no index reads (a tab of it that follows another tab's swap checks no
/// layout), so the documents would drop out of every query. An older database opens as it
/// is (its head where it keeps it, its keys in their place) and is version 3 from then on.
pub const FORMAT: u32 = 3;

/// Opens generation database `db_name`, creating its stores for `schema` if it is new.
/// Returns whether it was created by this call.
pub async fn open(db_name: &str, schema: &Schema) -> Result<(Database, bool), StoreError> {
    let created = Rc::new(Cell::new(false));
    let flag = created.clone();
    let schema = schema.clone();
    let db = Database::open(db_name)
        .with_version(FORMAT)
        .with_on_upgrade_needed(move |event, db| {
            if event.old_version() > 0.0 {
                return Ok(());
            }
            flag.set(true);
            build(&db, &schema)
        })
        .await
        .map_err(from_open)?;
    Ok((db, created.get()))
}

/// Creates generation `n` of `replica` for `schema` and returns it open.
///
/// An existing database of that name with the same structure is reused: for generation 1
/// that is another tab opening the same new replica at the same moment. Callers that are
/// about to fill a generation with data (migrations, resets) delete it first, so a
/// half-built leftover of a crashed rebuild is never mistaken for a fresh one.
pub async fn create(replica: &str, n: u32, schema: &Schema) -> Result<Database, StoreError> {
    let db_name = name(replica, n);
    let (db, created) = open(&db_name, schema).await?;
    if created || has_layout(&db, schema)? {
        return Ok(db);
    }
    // A leftover with another structure is never live (the caller checked), so it is garbage.
    db.close();
    delete(&db_name).await?;
    let (db, _) = open(&db_name, schema).await?;
    if !has_layout(&db, schema)? {
        db.close();
        return Err(StoreError::Backend(format!("could not create {db_name} with the schema's stores and indexes")));
    }
    Ok(db)
}

pub async fn delete(db_name: &str) -> Result<(), StoreError> {
    Database::delete_by_name(db_name).map_err(from_open)?.await.map_err(from_idb)
}

fn build(db: &Database, schema: &Schema) -> indexed_db_futures::Result<()> {
    db.create_object_store(META).build()?;
    db.create_object_store(LOG).build()?;
    db.create_object_store(PEERS).build()?;
    for (collection, c) in &schema.collections {
        let store = db.create_object_store(collection_store(collection)).with_key_path(KeyPath::One("id")).build()?;
        for index in c.index_list() {
            store.create_index(&index.name, KeyPath::One(KeyPlace::Top.key_path(&index.name))).build()?;
        }
    }
    Ok(())
}

/// Whether an existing generation has exactly the stores and indexes `schema` needs, its
/// index keys all in one place (`KeyPlace`).
pub fn has_layout(db: &Database, schema: &Schema) -> Result<bool, StoreError> {
    let mut want: Vec<String> = vec![META.into(), LOG.into(), PEERS.into()];
    want.extend(schema.collections.keys().map(|c| collection_store(c)));
    crate::sort::sort(&mut want);
    let mut have: Vec<String> = db.object_store_names().collect();
    crate::sort::sort(&mut have);
    if have != want {
        return Ok(false);
    }
    let stores: Vec<String> = schema.collections.keys().map(|c| collection_store(c)).collect();
    let tx = db.transaction(stores.as_slice()).build().map_err(from_idb)?;
    let mut places = Vec::new();
    for (collection, c) in &schema.collections {
        let store = tx.object_store(&collection_store(collection)).map_err(from_idb)?;
        if store.key_path() != Some(KeyPath::One("id".to_string())) {
            return Ok(false);
        }
        let mut want: Vec<String> = c.index_list().iter().map(|i| i.name.clone()).collect();
        crate::sort::sort(&mut want);
        let mut have = Vec::new();
        for index in store.index_names() {
            match store.index(&index).map_err(from_idb)?.key_path() {
                Some(KeyPath::One(path)) => match KeyPlace::of(&path, &index) {
                    Some(place) => places.push(place),
                    None => return Ok(false),
                },
                _ => return Ok(false),
            }
            have.push(index);
        }
        crate::sort::sort(&mut have);
        if have != want {
            return Ok(false);
        }
    }
    Ok(places.windows(2).all(|w| w[0] == w[1]))
}

/// Where the records of `store` (a collection's, in a transaction) hold their index keys,
/// read from its first index (`None`: it has no index, and its records hold no keys).
/// Asked of the transaction's own store, it is right for whichever generation the
/// transaction writes, live or staging, made by this build or an earlier one.
pub fn key_place(store: &web_sys::IdbObjectStore, indexes: &[crate::schema::Index]) -> Result<Option<KeyPlace>, StoreError> {
    let Some(first) = indexes.first() else { return Ok(None) };
    let path = store.index(&first.name).map_err(|e| super::error::from_js(&e))?.key_path().map_err(|e| super::error::from_js(&e))?;
    let path = path.as_string().unwrap_or_default();
    KeyPlace::of(&path, &first.name).map(Some).ok_or_else(|| StoreError::Corrupt(format!("index {} of {} has the key path {path:?}", first.name, store.name())))
}
