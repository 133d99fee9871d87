//! One write = one readwrite transaction (DESIGN §4): read the head and the touched
//! documents, let the engine compute, write documents, one log record and the head, and
//! commit. Nothing but IndexedDB requests is awaited while the transaction is open, or it
//! would auto-commit half-done.

use indexed_db_futures::database::Database;
use indexed_db_futures::internals::SystemRepr;
use indexed_db_futures::object_store::ObjectStore;
use indexed_db_futures::prelude::*;
use indexed_db_futures::transaction::TransactionMode;
use serde::Serialize;
use wasm_bindgen::prelude::*;

use crate::error::{Error, StoreError};
use crate::store::{Commit, DocKey, Head, Row, StoredDoc};

use super::codec;
use super::error::{from_idb, from_tx};
use super::generation::{collection_store, HEAD, LOG, META};

/// Everything a commit writes, encoded in one go so it crosses into JS with a single
/// `JSON.parse`.
#[derive(Serialize)]
struct Batch<'a> {
    docs: Vec<&'a StoredDoc>,
    log: Option<LogValue<'a>>,
    head: Option<&'a Head>,
}

/// A log record: the rows of one commit, so a batch of 1,000 writes costs one put.
#[derive(Serialize)]
struct LogValue<'a> {
    rows: &'a [Row],
}

#[wasm_bindgen]
extern "C" {
    type BatchJs;
    #[wasm_bindgen(method, getter)]
    fn docs(this: &BatchJs) -> js_sys::Array;
    #[wasm_bindgen(method, getter)]
    fn log(this: &BatchJs) -> JsValue;
    #[wasm_bindgen(method, getter)]
    fn head(this: &BatchJs) -> JsValue;
}

pub async fn commit<F>(db: &Database, keys: &[DocKey], f: F) -> Result<Commit, Error>
where
    F: FnOnce(Option<Head>, Vec<Option<StoredDoc>>) -> Result<Commit, Error>,
{
    let mut collections: Vec<&str> = keys.iter().map(|(c, _)| c.as_str()).collect();
    collections.sort_unstable();
    collections.dedup();
    let mut scope = vec![META.to_string(), LOG.to_string()];
    scope.extend(collections.iter().map(|c| collection_store(c)));

    let tx = db.transaction(scope.as_slice()).with_mode(TransactionMode::Readwrite).build().map_err(from_idb)?;
    let raw_tx: web_sys::IdbTransaction = tx.as_sys().clone().unchecked_into();
    let commit = {
        let meta = tx.object_store(META).map_err(from_idb)?;
        let log = tx.object_store(LOG).map_err(from_idb)?;
        let stores = collections.iter().map(|c| tx.object_store(&collection_store(c))).collect::<Result<Vec<ObjectStore>, _>>().map_err(from_idb)?;
        let store_of = |collection: &str| collections.binary_search(&collection).ok().map(|i| &stores[i]);

        // All reads go out before the first await; requests complete in the order they
        // were made, so once the last one is in, the others are ready without waiting.
        let head_req = meta.get::<JsValue, _, _>(JsValue::from_str(HEAD)).primitive().map_err(from_idb)?;
        let mut doc_reqs = Vec::with_capacity(keys.len());
        for (c, id) in keys {
            let store = store_of(c).expect("scope holds every key's collection");
            doc_reqs.push(store.get::<JsValue, _, _>(JsValue::from_str(id)).primitive().map_err(from_idb)?);
        }
        let found = js_sys::Array::new_with_length(keys.len() as u32);
        for (i, req) in doc_reqs.into_iter().enumerate().rev() {
            if let Some(record) = req.await.map_err(from_idb)? {
                found.set(i as u32, record);
            }
        }
        let head = match head_req.await.map_err(from_idb)? {
            Some(h) => Some(codec::from_js::<Head>(&h)?),
            None => None,
        };
        let current: Vec<Option<StoredDoc>> = if keys.is_empty() { Vec::new() } else { codec::from_js(&found)? };

        // An error here drops `tx`, which aborts it: nothing is written.
        let commit = f(head, current)?;

        let batch = Batch {
            docs: commit.docs.iter().map(|(_, d)| d).collect(),
            log: (!commit.rows.is_empty()).then_some(LogValue { rows: &commit.rows }),
            head: commit.head.as_ref(),
        };
        let js: BatchJs = codec::to_js(&batch)?.unchecked_into();
        let docs = js.docs();
        for (i, (c, d)) in commit.docs.iter().enumerate() {
            let store = store_of(c).ok_or_else(|| {
                StoreError::Backend(format!("commit wrote {c}/{} without reading it first: pass its key to commit", d.id))
            })?;
            store.put(docs.get(i as u32)).primitive().map_err(from_idb)?;
        }
        if let Some(first) = commit.rows.first() {
            log.put(js.log()).with_key(first.row as f64).without_key_type().primitive().map_err(from_idb)?;
        }
        if commit.head.is_some() {
            meta.put(js.head()).with_key(JsValue::from_str(HEAD)).without_key_type().primitive().map_err(from_idb)?;
        }
        commit
    };
    tx.commit().await.map_err(|e| from_tx(e, &raw_tx))?;
    Ok(commit)
}
