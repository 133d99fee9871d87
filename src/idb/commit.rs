//! One write = one readwrite transaction (DESIGN §4): read the head, the touched
//! documents and peer records, let the engine compute, write documents, one log record,
//! the peer records and the head, and commit. A sync batch and the point it advances are
//! thus stored together or not at all. Nothing but IndexedDB requests is awaited while
//! the transaction is open, or it would auto-commit half-done.

use std::collections::HashSet;

use indexed_db_futures::database::Database;
use indexed_db_futures::internals::SystemRepr;
use indexed_db_futures::object_store::ObjectStore;
use indexed_db_futures::prelude::*;
use indexed_db_futures::transaction::{Transaction, TransactionMode};
use serde::Serialize;
use wasm_bindgen::prelude::*;

use crate::error::{Error, StoreError};
use crate::schema::{Index, Schema};
use crate::store::{Commit, DocKey, Head, Loaded, StoredDoc};
use crate::peer::PeerRecord;

use super::{codec, head, read};
use super::error::{from_idb, from_js, from_tx};
use super::generation::{self, collection_store, resolution_key, KeyPlace, HEAD, LOG, META, PEERS};

/// A commit's peer records and head, encoded together so they cross into JS with a
/// single `JSON.parse`. Documents go in slices (`SLICE`), the log rows as one string of
/// their own (`codec::log_record`).
#[derive(Serialize)]
struct Batch<'a> {
    peers: Vec<&'a PeerRecord>,
    head: Option<&'a Head>,
}

/// Documents encoded (one `JSON.parse`) and put per slice: IndexedDB starts storing the
/// first ones while the rest are encoded, where one batch of all made it wait for the
/// whole encoding (a reset writes 10,000 in one transaction). The first slice is small:
/// until its puts are made IndexedDB has nothing to store, and for a batch of 1,000
/// documents that wait is main-thread time W1 pays in full, where the later slices' is
/// hidden behind the storing of the ones before.
const SLICE: usize = 256;
const FIRST_SLICE: usize = 32;

/// `docs` in the slices `put_all` encodes and puts: `FIRST_SLICE`, then `SLICE` each.
fn slices<T>(docs: &[T]) -> impl Iterator<Item = &[T]> {
    let (first, rest) = docs.split_at(docs.len().min(FIRST_SLICE));
    std::iter::once(first).filter(|s| !s.is_empty()).chain(rest.chunks(SLICE))
}

#[wasm_bindgen]
extern "C" {
    type BatchJs;
    #[wasm_bindgen(method, getter)]
    fn peers(this: &BatchJs) -> js_sys::Array;
    #[wasm_bindgen(method, getter)]
    fn head(this: &BatchJs) -> JsValue;
}

/// A readwrite transaction's object stores: meta, the log, peers, and each collection's
/// (in the order of its collections).
struct Stores<'t> {
    meta: ObjectStore<'t>,
    log: ObjectStore<'t>,
    peer_store: ObjectStore<'t>,
    stores: Vec<ObjectStore<'t>>,
}

impl<'t> Stores<'t> {
    fn of(tx: &'t Transaction<'_>, collections: &[&str]) -> Result<Stores<'t>, Error> {
        Ok(Stores {
            meta: tx.object_store(META).map_err(from_idb)?,
            log: tx.object_store(LOG).map_err(from_idb)?,
            peer_store: tx.object_store(PEERS).map_err(from_idb)?,
            stores: collections.iter().map(|c| tx.object_store(&collection_store(c))).collect::<Result<Vec<ObjectStore>, _>>().map_err(from_idb)?,
        })
    }
}

/// The object stores `put_all` writes to, as web-sys has them. `meta` and `peers` are
/// `None` when the transaction's scope leaves them out (a single write's: it writes no
/// head record and no peer record, and meta only for a resolution).
struct Writes {
    meta: Option<web_sys::IdbObjectStore>,
    log: web_sys::IdbObjectStore,
    peers: Option<web_sys::IdbObjectStore>,
    stores: Vec<web_sys::IdbObjectStore>,
}

impl Stores<'_> {
    fn writes(&self) -> Writes {
        let raw = |s: &ObjectStore| -> web_sys::IdbObjectStore { s.as_sys().clone().unchecked_into() };
        Writes { meta: Some(raw(&self.meta)), log: raw(&self.log), peers: Some(raw(&self.peer_store)), stores: self.stores.iter().map(raw).collect() }
    }
}

/// What a commit makes of what it read.
pub type Compute<'a> = Box<dyn FnOnce(Loaded) -> Result<Commit, Error> + 'a>;

/// Where a commit writes the head it made (see `head`).
#[derive(Clone, Copy, PartialEq)]
enum HeadTo {
    /// The meta store's record, beside a log record put at the commit's first row (or an
    /// empty one there, `head::fence`, when it logs none): a commit that read the head.
    Record,
    /// Inside the log record, added (not put) at the commit's first row: a single write's,
    /// which did not read the head and leaves its record alone.
    Log,
}

/// The stores besides the collections' that a commit's transaction holds: the log, meta
/// and peers (any commit may move a sync point).
const COMMIT_STORES: &[&str] = &[META, LOG, PEERS];

/// A readwrite transaction's collections (sorted, once each), its scope (`stores`, then
/// each collection's store) and each collection's indexes.
fn scope_of<'k, 's>(schema: &'s Schema, stores: &[&str], names: impl Iterator<Item = &'k str>) -> (Vec<&'k str>, Vec<String>, Vec<&'s [Index]>) {
    let mut collections: Vec<&str> = names.collect();
    crate::sort::sort(&mut collections);
    collections.dedup();
    let mut scope: Vec<String> = stores.iter().map(|s| s.to_string()).collect();
    scope.extend(collections.iter().map(|c| collection_store(c)));
    let indexes = collections.iter().map(|c| schema.collection(c).map_or(&[][..], |c| c.index_list())).collect();
    (collections, scope, indexes)
}

/// `Store::commit`: reads the head (`head::read`), the documents at `keys` and the records of `peers`,
/// and writes what `f` makes of them. Not generic over `f`: one copy of this (large)
/// future serves every caller, where one per closure type added ~32 KB of gzipped wasm.
pub async fn commit(db: &Database, schema: &Schema, keys: &[DocKey], peers: &[String], f: Compute<'_>) -> Result<Commit, Error> {
    let (collections, scope, indexes) = scope_of(schema, COMMIT_STORES, keys.iter().map(|(c, _)| c.as_str()));

    let tx = db.transaction(scope.as_slice()).with_mode(TransactionMode::Readwrite).build().map_err(from_idb)?;
    read::forget_read_ahead(db.as_sys());
    let raw_tx: web_sys::IdbTransaction = tx.as_sys().clone().unchecked_into();
    let commit = {
        let opened = Stores::of(&tx, &collections)?;
        let writes = opened.writes();
        let Stores { meta, log, peer_store, stores } = opened;
        let slot = |collection: &str| collections.binary_search(&collection).ok();

        let head_req = head::read(meta.as_sys().unchecked_ref(), log.as_sys().unchecked_ref());
        let peer_reqs = peers.iter().map(|p| peer_store.get::<JsValue, _, _>(JsValue::from_str(p)).primitive()).collect::<Result<Vec<_>, _>>().map_err(from_idb)?;
        let found = read_docs(keys, &collections, &stores).await?;
        // Issued first, so these completed before the documents did.
        let head = head_req.await?;
        let mut loaded_peers = Vec::with_capacity(peers.len());
        for req in peer_reqs {
            loaded_peers.push(req.await.map_err(from_idb)?.map(|p| codec::from_js::<PeerRecord>(&p)).transpose()?);
        }
        let current: Vec<Option<StoredDoc>> = if keys.is_empty() {
            Vec::new()
        } else {
            let records: Vec<Option<codec::DocIn>> = codec::from_js(&found)?;
            let indexes_of = |(c, _): &DocKey| indexes[slot(c).expect("scope holds every key's collection")];
            records.into_iter().zip(keys).map(|(d, key)| d.map(|d| d.into_stored(indexes_of(key))).transpose()).collect::<Result<_, _>>()?
        };

        // An error here drops `tx`, which aborts it: nothing is written.
        let loaded_head = head.clone();
        let commit = f(Loaded { head, docs: current, peers: loaded_peers })?;
        commit.check(loaded_head.as_ref())?;

        put_all(&commit, &collections, &indexes, &writes, &[], HeadTo::Record)?;
        if let (Some(_), Some(h), true) = (&loaded_head, &commit.head, commit.rows.is_empty()) {
            head::fence(&writes.log, h)?;
        }
        // Freed while IndexedDB stores it rather than after: a commit too large for the
        // store to remember its documents (`keeps_docs`) needs only their keys.
        let mut commit = commit;
        if !super::keeps_docs(commit.docs.len()) {
            commit.shed();
        }
        commit
    };
    tx.commit().await.map_err(|e| from_tx(e, &raw_tx))?;
    Ok(commit)
}

/// What a store expects to find for `Store::commit_expected`: the head, and per key the
/// stored document, or `None` for no record.
pub struct Expected {
    pub head: Head,
    pub docs: Vec<Option<StoredDoc>>,
}

/// `Store::commit_expected`'s attempt without reading first: computes `f` over `expected`,
/// then in one transaction writes what `f` made, its log record added at the row after
/// the expected head's with the new head inside (`head`): the add fails if any commit
/// came between, so the documents this store knows are still as it knows them. A
/// document expected absent that `f` writes is added too (the add fails if it exists);
/// one it does not write is read, and the commit waits for that read to find nothing
/// (`tm_commit_if`). Otherwise IndexedDB is asked to commit as soon as the requests are
/// made. Any refusal aborts the transaction. `None`: refused (or `f` refused the
/// expected state), and nothing was written.
pub async fn commit_expected(db: &Database, schema: &Schema, keys: &[DocKey], expected: Expected, f: &dyn Fn(Loaded) -> Result<Commit, Error>) -> Result<Option<Commit>, Error> {
    let Expected { head: want_head, docs } = expected;
    let known: Vec<bool> = docs.iter().map(Option::is_some).collect();
    // What fails over the expected state is left to `commit`, over the stored one.
    let Ok(commit) = f(Loaded { head: Some(want_head.clone()), docs, peers: Vec::new() }) else { return Ok(None) };
    if commit.head.is_none() || commit.rows.is_empty() || commit.check(Some(&want_head)).is_err() {
        // Without a row there is no fence: such a commit reads first.
        return Ok(None);
    }
    // Made with web-sys, not indexed_db_futures: nothing here is awaited but the outcome
    // (`tm_commit_if`), and its `Transaction` would add listeners the abort of a refused
    // write must not reach, and try to abort the finished transaction when dropped (an
    // exception thrown and caught per write). Its scope is what a single write touches:
    // the log, its collections, and meta only for a resolution's record.
    let resolves = commit.rows.iter().any(|r| r.op.resolution);
    let stores: &[&str] = if resolves { &[LOG, META] } else { &[LOG] };
    let (collections, scope, indexes) = scope_of(schema, stores, keys.iter().map(|(c, _)| c.as_str()));
    let scope: js_sys::Array = scope.iter().map(|s| JsValue::from_str(s)).collect();
    let tx = db.as_sys().transaction_with_str_sequence_and_mode(&scope, web_sys::IdbTransactionMode::Readwrite).map_err(|e| from_js(&e))?;
    read::forget_read_ahead(db.as_sys());
    let store = |name: &str| tx.object_store(name).map_err(|e| from_js(&e));
    let writes = Writes {
        meta: if resolves { Some(store(META)?) } else { None },
        log: store(LOG)?,
        peers: None,
        stores: collections.iter().map(|c| store(&collection_store(c))).collect::<Result<_, _>>()?,
    };
    let reads = js_sys::Array::new();
    // A document expected absent that the commit writes is added, not read and put —
    // a new document's write is the common single write (DESIGN §10's W2); a known one
    // is put, the fence vouching for it. (At most `SMALL_COMMIT` keys: plain scans.)
    let mut added: Vec<(&str, &str)> = Vec::new();
    for ((c, id), known) in keys.iter().zip(known) {
        if known {
            continue;
        }
        if commit.docs.iter().any(|(wc, d)| wc == c && d.id == *id) {
            added.push((c.as_str(), id.as_str()));
            continue;
        }
        let store = &writes.stores[collections.binary_search(&c.as_str()).expect("scope holds every key's collection")];
        reads.push(&store.get(&JsValue::from_str(id)).map_err(|e| from_js(&e))?.into());
    }
    // An error before `tm_commit_if` drops `tx` uncommitted: IndexedDB aborts it once
    // the task ends, and nothing is written. The adds' requests are not awaited: a
    // failed one aborts the transaction.
    if let Err(e) = put_all(&commit, &collections, &indexes, &writes, &added, HeadTo::Log) {
        let _ = tx.abort();
        return Err(e);
    }
    let committed = wasm_bindgen_futures::JsFuture::from(tm_commit_if(&tx, &reads)).await.map_err(|e| from_js(&e))?;
    Ok(committed.is_truthy().then_some(commit))
}

/// Commits `tx` at once, or, when it has `reads` (of documents expected absent), once the
/// last of them is done and all found nothing — and aborts it otherwise. Decided in JS,
/// in the last read's success handler, so the commit is asked for in the task the reads
/// complete in, not after a trip through the Rust executor, and without waiting for the
/// adds' results (an add that finds its key taken — a document, or the fence's log row —
/// aborts the transaction with a `ConstraintError`; no other request of a commit can).
/// Resolves to `true` once committed, `false` when refused (nothing written); rejects
/// with the transaction's error if it aborts for any other reason.
#[wasm_bindgen(inline_js = "export function tm_commit_if(tx, reads) {
  return new Promise((ok, fail) => {
    let refused = false;
    tx.addEventListener('complete', () => ok(true));
    tx.addEventListener('abort', () => {
      if (refused || tx.error?.name === 'ConstraintError') ok(false);
      else fail(tx.error ?? new DOMException('the transaction was aborted', 'AbortError'));
    });
    if (reads.length === 0) { tx.commit(); return; }
    reads[reads.length - 1].addEventListener('success', () => {
      if (reads.some((r) => r.result != null)) { refused = true; tx.abort(); } else tx.commit();
    });
  });
}")]
extern "C" {
    fn tm_commit_if(tx: &web_sys::IdbTransaction, reads: &js_sys::Array) -> js_sys::Promise;
}

/// Settles when a transaction completes; rejects with its error when it aborts. Listens
/// with `addEventListener`, beside the handlers indexed_db_futures sets.
#[wasm_bindgen(inline_js = "export function tm_tx_done(tx) { return new Promise((ok, fail) => { tx.addEventListener('complete', () => ok()); tx.addEventListener('abort', () => fail(tx.error ?? new DOMException('the transaction was aborted', 'AbortError'))); }); }")]
extern "C" {
    fn tm_tx_done(tx: &web_sys::IdbTransaction) -> js_sys::Promise;
}

/// `Store::write_staged`: puts `commit` in one transaction without reading anything first
/// and asks IndexedDB to commit it, without waiting for that: the returned future settles
/// when the transaction has completed. Only for a staging generation, which nobody else
/// writes: nothing is checked against its head, and IndexedDB runs its transactions in
/// the order they were made, so later ones see this one's writes.
pub async fn hand_over(db: &Database, schema: &Schema, commit: &Commit) -> Result<wasm_bindgen_futures::JsFuture, Error> {
    let (collections, scope, indexes) = scope_of(schema, COMMIT_STORES, commit.docs.iter().map(|(c, _)| c.as_str()));
    let tx = db.transaction(scope.as_slice()).with_mode(TransactionMode::Readwrite).build().map_err(from_idb)?;
    read::forget_read_ahead(db.as_sys());
    let raw_tx: web_sys::IdbTransaction = tx.as_sys().clone().unchecked_into();
    put_all(commit, &collections, &indexes, &Stores::of(&tx, &collections)?.writes(), &[], HeadTo::Record)?;
    let done = wasm_bindgen_futures::JsFuture::from(tm_tx_done(&raw_tx));
    // The first poll of `commit` asks IndexedDB to commit and marks the transaction done
    // (so dropping it does not abort it); its completion is `done`'s to tell.
    let mut committing = Box::pin(tx.commit());
    if let std::task::Poll::Ready(r) = futures::poll!(committing.as_mut()) {
        r.map_err(|e| from_tx(e, &raw_tx))?;
    }
    Ok(done)
}

/// Puts what `commit` writes: documents (into the stores of `collections`, in order),
/// the log rows as one record, resolutions, peer records and the head (where `to` says).
/// The documents in `added` (`commit_expected`'s expected-absent ones) are
/// written with `add` rather than `put`.
fn put_all(commit: &Commit, collections: &[&str], indexes: &[&[Index]], writes: &Writes, added: &[(&str, &str)], to: HeadTo) -> Result<(), Error> {
    let Writes { meta, log, peers: peer_store, stores } = writes;
    let unscoped = |name: &str| StoreError::Backend(format!("commit wrote to {name}, outside its transaction's scope"));
    let slot = |collection: &str| collections.binary_search(&collection).ok();
    // Where each collection's records hold their index keys, asked of its store once.
    let mut places: Vec<Option<KeyPlace>> = vec![None; stores.len()];
    for slice in slices(&commit.docs) {
        let mut out = Vec::with_capacity(slice.len());
        for (c, d) in slice {
            let store = slot(c).ok_or_else(|| StoreError::Backend(format!("commit wrote {c}/{} without reading it first: pass its key to commit", d.id)))?;
            let place = match places[store] {
                Some(place) => place,
                None => *places[store].insert(generation::key_place(&stores[store], indexes[store])?.unwrap_or(KeyPlace::Top)),
            };
            out.push(codec::DocOut::new(d, indexes[store], place)?);
        }
        // A slice of one collection, in a commit that adds nothing (a batch's, a reset's),
        // is put by the call that makes its records.
        let into = match slice.first() {
            Some((c, _)) if added.is_empty() && slice.iter().all(|(other, _)| other == c) => {
                Some(&stores[slot(c).expect("checked above")])
            }
            _ => None,
        };
        let docs = codec::records(&out, into)?;
        if into.is_none() {
            for (i, (c, d)) in slice.iter().enumerate() {
                let store = &stores[slot(c).expect("checked above")];
                let record = docs.get(i as u32);
                if added.iter().any(|(ac, aid)| ac == c && *aid == d.id) {
                    store.add(&record).map_err(|e| from_js(&e))?;
                } else {
                    store.put(&record).map_err(|e| from_js(&e))?;
                }
            }
        }
    }
    let batch = Batch { peers: commit.peers.iter().map(|(_, p)| p).collect(), head: commit.head.as_ref() };
    let js: BatchJs = codec::to_js(&batch)?.unchecked_into();
    let head = commit.head.is_some().then(|| js.head());
    if let Some(first) = commit.rows.first() {
        let key = JsValue::from_f64(first.row as f64);
        if to == HeadTo::Log {
            log.add_with_key(&codec::log_record(&commit.rows, head.as_ref())?, &key).map_err(|e| from_js(&e))?;
        } else {
            log.put_with_key(&codec::log_record(&commit.rows, None)?, &key).map_err(|e| from_js(&e))?;
        }
        for r in commit.rows.iter().filter(|r| r.op.resolution) {
            meta.as_ref().ok_or_else(|| unscoped(META))?.put_with_key(&codec::to_js(r)?, &resolution_key(r.row)).map_err(|e| from_js(&e))?;
        }
    }
    let peer_values = js.peers();
    for (i, (id, _)) in commit.peers.iter().enumerate() {
        peer_store.as_ref().ok_or_else(|| unscoped(PEERS))?.put_with_key(&peer_values.get(i as u32), &JsValue::from_str(id)).map_err(|e| from_js(&e))?;
    }
    if let (Some(js_head), HeadTo::Record) = (&head, to) {
        meta.as_ref().ok_or_else(|| unscoped(META))?.put_with_key(js_head, &JsValue::from_str(HEAD)).map_err(|e| from_js(&e))?;
    }
    Ok(())
}

/// Below this many keys in one collection, plain gets are cheaper than a probe first.
const PROBE_MIN: usize = 16;

/// The stored records at `keys` (`undefined` where there is none), in key order.
///
/// A batch of new documents is the common large write, and a get per document only to
/// learn that none exists costs about as much as writing them. So for larger batches one
/// `getAllKeys` over the batch's id range (capped, keys only) says which ids exist, and
/// only those are read. If the range holds more ids than the cap, every key is read.
async fn read_docs(keys: &[DocKey], collections: &[&str], stores: &[ObjectStore<'_>]) -> Result<js_sys::Array, Error> {
    let found = js_sys::Array::new_with_length(keys.len() as u32);
    let mut probes = Vec::new();
    for (c, store) in collections.iter().zip(stores) {
        let mut ids: Vec<&str> = keys.iter().filter(|(k, _)| k == c).map(|(_, id)| id.as_str()).collect();
        if ids.len() < PROBE_MIN {
            continue;
        }
        crate::sort::sort_by(&mut ids, |a, b| crate::key::cmp_utf16(a, b));
        let range = web_sys::IdbKeyRange::bound(&JsValue::from_str(ids[0]), &JsValue::from_str(ids[ids.len() - 1])).map_err(|e| from_js(&e))?;
        let cap = 2 * ids.len() + 64;
        let req = store.get_all_keys::<JsValue>().with_query::<JsValue, JsValue>(range.into()).with_limit(cap as u32).primitive().map_err(from_idb)?;
        probes.push((*c, cap, req));
    }
    // Collections whose existing ids are known: (collection, ids that exist).
    let mut known: Vec<(&str, HashSet<String>)> = Vec::new();
    for (c, cap, req) in probes {
        let existing = req.await.map_err(from_idb)?.map(|k| k.map(|k| k.as_string().unwrap_or_default())).collect::<Result<HashSet<String>, _>>().map_err(from_idb)?;
        if existing.len() < cap {
            known.push((c, existing));
        }
    }
    // All gets go out before the first await; requests complete in the order they were
    // made, so once the last one is in, the others are ready without waiting.
    let mut reqs = Vec::with_capacity(keys.len());
    for (i, (c, id)) in keys.iter().enumerate() {
        if known.iter().any(|(k, existing)| k == c && !existing.contains(id)) {
            continue;
        }
        let store = &stores[collections.binary_search(&c.as_str()).expect("scope holds every key's collection")];
        reqs.push((i, store.get::<JsValue, _, _>(JsValue::from_str(id)).primitive().map_err(from_idb)?));
    }
    for (i, req) in reqs.into_iter().rev() {
        if let Some(record) = req.await.map_err(from_idb)? {
            found.set(i as u32, record);
        }
    }
    Ok(found)
}
