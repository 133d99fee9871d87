//! Reads: the head, single documents, planned queries, the op log, peer records and
//! whole-store snapshots.
//!
//! Queries hand back the stored `d` objects themselves whenever the plan needs no
//! filtering or sorting, so a result crosses into JS without being converted at all.
//! Otherwise documents go through `serde_json` and the planner's own `matches`/`finish`,
//! exactly as in the in-memory store, so both stores answer identically.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};

use indexed_db_futures::cursor::{Cursor, CursorDirection};
use indexed_db_futures::object_store::ObjectStore;
use indexed_db_futures::database::Database;
use indexed_db_futures::error::Error as IdbError;
use indexed_db_futures::internals::SystemRepr;
use indexed_db_futures::prelude::*;
use serde_json::{Map, Value};
use wasm_bindgen::prelude::*;

use crate::error::StoreError;
use crate::key;
use crate::query::{Bound, Plan, Source};
use crate::schema::{Index, Schema};
use crate::store::{Head, Row, StoredDoc};
use crate::peer::PeerRecord;

use super::codec::{self, doc_of};
use super::error::{from_idb, from_js};
use super::generation::{collection_store, resolution_key, LOG, MAX_ROW, META, PEERS};
use super::keys::key_string;

/// Reads one record of `store` in its own readonly transaction.
///
/// Point reads are the hot path of apps (DESIGN §10, W4), so this one goes to web-sys
/// directly: the transaction commits by itself once the request is done, as in plain JS,
/// instead of being wrapped with listeners and aborted on drop, and the request is awaited
/// through a promise wired straight to its success and error handlers.
async fn get_record(db: &Database, store: &str, key: JsValue) -> Result<Option<JsValue>, StoreError> {
    let tx = db.as_sys().transaction_with_str(store).map_err(|e| from_js(&e))?;
    let req = tx.object_store(store).and_then(|os| os.get(&key)).map_err(|e| from_js(&e))?;
    let done = js_sys::Promise::new(&mut |resolve, reject| {
        req.set_onsuccess(Some(&resolve));
        req.set_onerror(Some(&reject));
    });
    if wasm_bindgen_futures::JsFuture::from(done).await.is_err() {
        return Err(match req.error() {
            Ok(Some(e)) => from_js(&e.into()),
            _ => StoreError::Backend(format!("reading {store} failed")),
        });
    }
    let value = req.result().map_err(|e| from_js(&e))?;
    Ok((!value.is_undefined()).then_some(value))
}

/// The head (`head::read`), in a readonly transaction of its own.
pub async fn head(db: &Database) -> Result<Option<Head>, StoreError> {
    let tx = db.as_sys().transaction_with_str_sequence(&js_sys::Array::of2(&META.into(), &LOG.into())).map_err(|e| from_js(&e))?;
    let (meta, log) = (tx.object_store(META).map_err(|e| from_js(&e))?, tx.object_store(LOG).map_err(|e| from_js(&e))?);
    super::head::read(&meta, &log).await
}

/// `indexes` are the collection's, to rebuild the engine's index keys.
pub async fn get(db: &Database, collection: &str, indexes: &[Index], id: &str) -> Result<Option<StoredDoc>, StoreError> {
    get_record(db, &collection_store(collection), JsValue::from_str(id)).await?.map(|v| codec::stored_doc(&v, indexes)).transpose()
}

/// The app-visible document at `id` as IndexedDB hands it back (`None`: absent or a
/// tombstone): the stored record's `d`, with no decoding of the merge state and no JSON
/// round trip, as queries return it.
pub async fn get_visible(db: &Database, collection: &str, id: &str) -> Result<Option<JsValue>, StoreError> {
    let doc = wasm_bindgen_futures::JsFuture::from(get_visible_promise(db, collection, &JsValue::from_str(id), None)).await.map_err(|e| from_js(&e))?;
    Ok((!doc.is_undefined()).then_some(doc))
}

/// `get_visible` as the promise JS makes of it (`tm_get_doc`), resolving to the document
/// or `undefined`: the record and its `d` never pass through wasm, and the JS API's `get`
/// hands this promise back as it is (DESIGN §10, W4). It rejects with what `map_err`
/// makes of IndexedDB's error (the error itself without it).
///
/// **Read-ahead.** A get that continues an ascending walk over a store's ids (the third
/// in a row, each id above the one before: a list rendered in key order, an export, a
/// sync of ids in order) reads the next records with it in one request (`getAll` from
/// the id, 8 records, doubling while the walk goes on, at most 64), and the gets that
/// follow are answered from those records without a round trip to IndexedDB — including
/// "absent" for an id the read covered and did not find. One request for many records
/// costs little more than one for one record, and IndexedDB's time per get is mostly the
/// request's (W4 reads 1,000 ids in order, a stride of 7 apart). Gets in any other order
/// never read ahead, so they pay nothing for it; nor do gets asked while a read ahead is
/// under way (`Promise.all` over ids in order): each would read a window of its own that
/// no other could use. A window no get used (a walk in steps wider than the window, or
/// gets a task apart, whose windows expire unread) holds the next read ahead back for
/// twice as many gets each time, up to 64, until a window is used again.
/// The records read ahead serve only the gets asked before the event loop turns (the
/// awaited gets chained on the read's answer, which run as microtasks): anything the page
/// can learn of another tab's writes (a change notice, a message) arrives as a later task,
/// whose gets read IndexedDB again, so a get never answers from older data than a
/// get asked at the same moment would have. Within the page, every write to the database
/// drops them at once, whichever replica object makes it (`forget_read_ahead`, from each
/// readwrite transaction `commit` opens; keyed by the database's name), and a read that
/// began before such a write keeps nothing; a swap binds another database. Each record
/// is handed out once: the app owns the object it gets (asked again, the id is read again).
pub fn get_visible_promise(db: &Database, collection: &str, id: &JsValue, map_err: Option<&js_sys::Function>) -> js_sys::Promise {
    tm_get_doc(db.as_sys().unchecked_ref(), &collection_store(collection), id, map_err.map_or(&JsValue::UNDEFINED, |f| f.as_ref()))
}

/// Drops the records `get_visible_promise` read ahead from `db`'s database, through any
/// connection of this page or worker: its data is about to change (see there).
pub fn forget_read_ahead(db: &web_sys::IdbDatabase) {
    tm_forget_read_ahead(db.unchecked_ref());
}

#[wasm_bindgen(inline_js = "const AHEAD = new Map();
const FIRST = 8, MOST = 64;
// A window nobody used (the walk skipped past it, or the next get came in a later task): read
// ahead again only after twice as many gets as the last time (8, 16, … 64), until one is used.
function wasted(s) {
  s.backoff = Math.min(MOST, Math.max(FIRST, s.backoff * 2));
  s.walk = -s.backoff;
}
export function tm_forget_read_ahead(db) {
  const s = AHEAD.get(db.name);
  if (s) { s.epoch++; s.buf = null; }
}
export function tm_get_doc(db, store, id, mapErr) {
  let s = AHEAD.get(db.name);
  if (!s) AHEAD.set(db.name, s = { epoch: 0, buf: null, store: null, last: null, walk: 0, backoff: 0, reading: false });
  const b = s.buf;
  if (b && b.db === db && b.store === store && id >= b.lo && (b.hi === null || id <= b.hi)) {
    const i = b.ids.indexOf(id);
    if (i < 0) return Promise.resolve(undefined);
    const d = b.docs[i];
    if (d !== null) {
      b.docs[i] = null;
      b.hits++;
      s.backoff = 0;
      return Promise.resolve(d);
    }
  }
  if (b && b.store === store && b.hits === 0 && b.hi !== null && id > b.hi) {
    s.buf = null;
    wasted(s);
  }
  s.walk = s.store === store && s.last !== null && id > s.last ? s.walk + 1 : -s.backoff;
  s.store = store;
  s.last = id;
  // One read ahead at a time: gets asked together (not awaited one by one) would each
  // read their own window of records, and none of them could use another's.
  const n = s.walk >= 2 && !s.reading ? Math.min(MOST, FIRST << Math.min(s.walk - 2, 3)) : 0;
  const epoch = s.epoch;
  return new Promise((ok, fail) => {
    const no = (e) => fail(mapErr ? mapErr(e) : e);
    try {
      const os = db.transaction(store).objectStore(store);
      if (n === 0) {
        const req = os.get(id);
        req.onsuccess = () => { const d = req.result?.d; ok(d == null ? undefined : d); };
        req.onerror = () => no(req.error);
        return;
      }
      const req = os.getAll(IDBKeyRange.lowerBound(id), n);
      s.reading = true;
      req.onsuccess = () => {
        s.reading = false;
        const recs = req.result;
        const found = recs.length > 0 && recs[0].id === id ? recs[0].d ?? undefined : undefined;
        if (s.epoch === epoch) {
          const ids = recs.map((r) => r.id);
          // A tombstone (no `d`) is an id found absent, as a missing one is; null: handed out.
          const docs = recs.map((r) => r.d ?? undefined);
          if (found !== undefined) docs[0] = null;
          const buf = s.buf = { db, store, lo: id, hi: recs.length === n ? ids[ids.length - 1] : null, ids, docs, hits: 0 };
          // Kept for this turn of the event loop only: what the page learns later (another
          // tab's change, a message) comes in a later task, which reads IndexedDB again.
          setTimeout(() => {
            if (s.buf !== buf) return;
            s.buf = null;
            if (buf.hits === 0) wasted(s);
          }, 0);
        }
        ok(found);
      };
      req.onerror = () => { s.reading = false; no(req.error); };
    } catch (e) {
      no(e);
    }
  });
}")]
extern "C" {
    fn tm_get_doc(db: &JsValue, store: &str, id: &JsValue, map_err: &JsValue) -> js_sys::Promise;
    fn tm_forget_read_ahead(db: &JsValue);
}

/// The IDBKeyRange for an index scan over the string form of the bounds (see `keys`);
/// `Ok(None)` when the bounds admit no key at all (IndexedDB would throw where the
/// in-memory store simply finds nothing).
pub fn key_range(lower: Option<&Bound>, upper: Option<&Bound>) -> Result<Option<JsValue>, StoreError> {
    if let (Some(lo), Some(hi)) = (lower, upper) {
        match key::cmp(&lo.key, &hi.key) {
            Ordering::Greater => return Ok(None),
            Ordering::Equal if lo.open || hi.open => return Ok(None),
            _ => {}
        }
    }
    let range = match (lower, upper) {
        (None, None) => return Ok(Some(JsValue::UNDEFINED)),
        (Some(lo), None) => web_sys::IdbKeyRange::lower_bound_with_open(&string_key(lo), lo.open),
        (None, Some(hi)) => web_sys::IdbKeyRange::upper_bound_with_open(&string_key(hi), hi.open),
        (Some(lo), Some(hi)) => web_sys::IdbKeyRange::bound_with_lower_open_and_upper_open(&string_key(lo), &string_key(hi), lo.open, hi.open),
    };
    range.map(|r| Some(r.into())).map_err(|e| from_js(&e))
}

fn string_key(bound: &Bound) -> JsValue {
    JsValue::from_str(&key_string(&bound.key))
}

/// Where the scan reads from: the collection's object store or one of its indexes. Both
/// order their records the way the in-memory store does (index key, then id).
enum Scan<'a> {
    Store(&'a indexed_db_futures::object_store::ObjectStore<'a>),
    Index(indexed_db_futures::index::Index<'a>),
}

macro_rules! on_source {
    ($scan:expr, $s:ident => $body:expr) => {
        match $scan {
            Scan::Store($s) => $body,
            Scan::Index($s) => $body,
        }
    };
}

impl Scan<'_> {
    /// The documents of up to `limit` records of `range` in ascending order (reversed
    /// when `reverse`), tombstones skipped, in one request — and how many records that
    /// was. Picked out of the records in JS (`tm_docs`): a query's documents cross into
    /// wasm and back as one array, not one by one.
    async fn docs_in(&self, range: &JsValue, limit: Option<usize>, reverse: bool) -> Result<(js_sys::Array, usize), StoreError> {
        let source: &JsValue = on_source!(self, s => s.as_sys().unchecked_ref());
        let limit = limit.map_or(JsValue::UNDEFINED, |n| JsValue::from_f64(n.min(u32::MAX as usize) as f64));
        let read = wasm_bindgen_futures::JsFuture::from(tm_docs(source, range, &limit, reverse)).await.map_err(|e| from_js(&e))?;
        let docs: js_sys::Array = js_sys::Reflect::get(&read, &JsValue::from_str("docs")).map_err(|e| from_js(&e))?.unchecked_into();
        let records = js_sys::Reflect::get(&read, &JsValue::from_str("records")).map_err(|e| from_js(&e))?.as_f64().unwrap_or(0.0) as usize;
        Ok((docs, records))
    }

    /// Walks the records in `direction`, handing each document (tombstones skipped) to
    /// `keep` until it says stop.
    async fn walk(&self, range: &JsValue, reverse: bool, mut keep: impl FnMut(JsValue) -> Result<bool, StoreError>) -> Result<(), StoreError> {
        let direction = if reverse { CursorDirection::Prev } else { CursorDirection::Next };
        on_source!(self, s => {
            let opened = s.open_cursor().with_query::<JsValue, _>(range.clone()).with_direction(direction).primitive().map_err(from_idb)?.await;
            let Some(mut cursor) = opened.map_err(from_idb)? else { return Ok(()) };
            while let Some(record) = cursor.next_record::<JsValue>().await.map_err(from_idb)? {
                if let Some(doc) = doc_of(&record) {
                    if !keep(doc)? {
                        break;
                    }
                }
            }
            Ok(())
        })
    }

    /// The documents of the whole range in scan order (tombstones skipped).
    async fn docs(&self, range: &JsValue, reverse: bool) -> Result<js_sys::Array, StoreError> {
        Ok(self.docs_in(range, None, reverse).await?.0)
    }
}

/// A direct plan (`Plan::is_direct`) read by one `getAll` as the promise JS makes at once
/// (`tm_query_docs`), resolving to its documents: what `query` hands back for it, without
/// a wasm future awaiting the read in between (as `get_visible_promise` for gets). Its
/// rejections are what `map_err` makes of IndexedDB's errors (the errors themselves
/// without it). `None`: another plan — a limit the scan cannot stop at by itself
/// (descending, or on the primary store, whose tombstones take slots) goes the general way
/// (`query`, which hands the plans this takes to it).
pub fn query_promise(db: &Database, collection: &str, plan: &Plan, map_err: Option<&js_sys::Function>) -> Result<Option<js_sys::Promise>, StoreError> {
    if !plan.is_direct() || plan.limit == Some(0) {
        return Ok(None);
    }
    let (index, range) = match (&plan.source, plan.limit) {
        (Source::Primary, None) => (JsValue::UNDEFINED, JsValue::UNDEFINED),
        (Source::Index { name, lower, upper }, limit) if limit.is_none() || !plan.reverse => match key_range(lower.as_ref(), upper.as_ref())? {
            None => return Ok(Some(js_sys::Promise::resolve(&JsValue::from(js_sys::Array::new())))),
            Some(range) => (JsValue::from_str(name), range),
        },
        _ => return Ok(None),
    };
    let limit = plan.limit.map_or(JsValue::UNDEFINED, |n| JsValue::from_f64(n as f64));
    let map_err = map_err.map_or(JsValue::UNDEFINED, |f| f.clone().into());
    Ok(Some(tm_query_docs(db.as_sys().unchecked_ref(), &collection_store(collection), &index, &range, &limit, plan.reverse, &map_err)))
}

/// `source.getAll(range, limit)` (an object store or an index), resolving to `{ docs,
/// records }`: the records' documents (`d`, tombstones skipped; reversed when `reverse`)
/// and how many records were read.
#[wasm_bindgen(inline_js = "export function tm_docs(source, range, limit, reverse) {
  return new Promise((ok, fail) => {
    const req = limit === undefined ? source.getAll(range) : source.getAll(range, limit);
    req.onsuccess = () => {
      const records = req.result;
      const docs = [];
      for (const r of records) if (r.d != null) docs.push(r.d);
      if (reverse) docs.reverse();
      ok({ docs, records: records.length });
    };
    req.onerror = () => fail(req.error);
  });
}
export function tm_query_docs(db, store, index, range, limit, reverse, mapErr) {
  const no = (e) => (mapErr ? mapErr(e) : e);
  let source;
  try {
    const os = db.transaction(store).objectStore(store);
    source = index === undefined ? os : os.index(index);
  } catch (e) {
    return Promise.reject(no(e));
  }
  return tm_docs(source, range, limit, reverse).then((r) => r.docs, (e) => { throw no(e); });
}")]
extern "C" {
    fn tm_docs(source: &JsValue, range: &JsValue, limit: &JsValue, reverse: bool) -> js_sys::Promise;
    fn tm_query_docs(db: &JsValue, store: &str, index: &JsValue, range: &JsValue, limit: &JsValue, reverse: bool, map_err: &JsValue) -> js_sys::Promise;
}

/// The documents a planned query returns, as the array handed to JS.
pub async fn query(db: &Database, collection: &str, primary_key: &str, plan: &Plan) -> Result<js_sys::Array, StoreError> {
    if plan.limit == Some(0) {
        return Ok(js_sys::Array::new());
    }
    if let Some(docs) = query_promise(db, collection, plan, None)? {
        return wasm_bindgen_futures::JsFuture::from(docs).await.map(|d| d.unchecked_into()).map_err(|e| from_js(&e));
    }
    let store_name = collection_store(collection);
    let tx = db.transaction(store_name.as_str()).build().map_err(from_idb)?;
    let os = tx.object_store(&store_name).map_err(from_idb)?;
    let (scan, range) = match &plan.source {
        Source::Get(id) => {
            let record: Option<JsValue> = os.get(JsValue::from_str(id)).primitive().map_err(from_idb)?.await.map_err(from_idb)?;
            let docs: js_sys::Array = record.as_ref().and_then(doc_of).into_iter().collect();
            return if plan.is_direct() { Ok(docs) } else { filter(docs, plan, primary_key) };
        }
        Source::Primary => (Scan::Store(&os), JsValue::UNDEFINED),
        Source::Index { name, lower, upper } => match key_range(lower.as_ref(), upper.as_ref())? {
            None => return Ok(js_sys::Array::new()),
            Some(range) => (Scan::Index(os.index(name).map_err(from_idb)?), range),
        },
    };
    // The scan may stop after `limit` hits only when nothing reorders them afterwards.
    let stop_after = if plan.sort.is_none() { plan.limit } else { None };
    if plan.is_direct() {
        // What one `getAll` answers went to `query_promise` above; left here are a limit on
        // the primary store and a descending one.
        return match stop_after {
            None => scan.docs(&range, plan.reverse).await,
            Some(n) if !plan.reverse => {
                let (docs, records) = scan.docs_in(&range, Some(n), false).await?;
                if docs.length() as usize == records || records < n {
                    return Ok(docs);
                }
                // Tombstones (only the primary store holds them) took some of the slots.
                collect(&scan, &range, false, n).await
            }
            Some(n) => collect(&scan, &range, true, n).await,
        };
    }
    match stop_after {
        None => filter(scan.docs(&range, plan.reverse).await?, plan, primary_key),
        Some(n) => {
            let mut kept = Vec::new();
            scan.walk(&range, plan.reverse, |doc| {
                let map: Map<String, Value> = codec::from_js(&doc)?;
                if plan.matches(&map) {
                    kept.push((map, doc));
                }
                Ok(kept.len() < n)
            })
            .await?;
            finish(kept, plan, primary_key)
        }
    }
}

/// The first `n` documents of a cursor walk.
async fn collect(scan: &Scan<'_>, range: &JsValue, reverse: bool, n: usize) -> Result<js_sys::Array, StoreError> {
    let docs = js_sys::Array::new();
    scan.walk(range, reverse, |doc| {
        docs.push(&doc);
        Ok((docs.length() as usize) < n)
    })
    .await?;
    Ok(docs)
}

/// Applies the plan's residual conditions, order and limit to scanned documents.
fn filter(docs: js_sys::Array, plan: &Plan, primary_key: &str) -> Result<js_sys::Array, StoreError> {
    if docs.length() == 0 {
        return Ok(docs);
    }
    // One stringify for the whole candidate set.
    let maps: Vec<Map<String, Value>> = codec::from_js(&docs)?;
    let kept = maps.into_iter().zip(docs.iter()).filter(|(m, _)| plan.matches(m)).collect();
    finish(kept, plan, primary_key)
}

/// `plan.finish`, then back to the JS objects the documents came from.
fn finish(kept: Vec<(Map<String, Value>, JsValue)>, plan: &Plan, primary_key: &str) -> Result<js_sys::Array, StoreError> {
    let id_of = |m: &Map<String, Value>| m.get(primary_key).and_then(Value::as_str).map(str::to_string);
    let (mut maps, objects): (Vec<_>, Vec<_>) = kept.into_iter().unzip();
    let mut by_id: HashMap<String, JsValue> = maps.iter().zip(objects).filter_map(|(m, o)| Some((id_of(m)?, o))).collect();
    plan.finish(&mut maps, primary_key);
    maps.iter()
        .map(|m| match id_of(m).and_then(|id| by_id.remove(&id)) {
            Some(o) => Ok(o),
            None => codec::to_js(m),
        })
        .collect()
}

/// `Store::rows_after_except` (and, with no `sender`, `Store::rows_after`): the rows after
/// `after`, passing over the records whose rows all came from `sender`
/// (`codec::log_only_from`) without decoding them.
pub async fn rows_after_except(db: &Database, after: u64, limit: usize, sender: Option<&str>) -> Result<(Vec<Row>, Option<u64>), StoreError> {
    let mut rows = Vec::new();
    let mut last = None;
    if limit == 0 {
        return Ok((rows, last));
    }
    let tx = db.transaction(LOG).build().map_err(from_idb)?;
    let log = tx.object_store(LOG).map_err(from_idb)?;
    let Some(mut cursor) = log_records_from(&log, after).await? else { return Ok((rows, last)) };
    while let Some(record) = cursor.next_record::<JsValue>().await.map_err(from_idb)? {
        if let Some(end) = sender.and_then(|s| codec::log_only_from(&record, s)) {
            last = last.max(Some(end).filter(|e| *e > after));
            continue;
        }
        let batch: Vec<Row> = codec::log_rows(&record)?;
        for row in batch {
            if row.row > after {
                last = Some(row.row);
                rows.push(row);
                if rows.len() == limit {
                    return Ok((rows, last));
                }
            }
        }
    }
    Ok((rows, last))
}

/// `Store::resolutions_after`: the resolution log's records in `meta` after `after`.
pub async fn resolutions_after(db: &Database, after: u64) -> Result<Vec<Row>, StoreError> {
    let tx = db.transaction(META).build().map_err(from_idb)?;
    let meta = tx.object_store(META).map_err(from_idb)?;
    let range = web_sys::IdbKeyRange::bound(&resolution_key(after + 1), &resolution_key(MAX_ROW)).map_err(|e| from_js(&e))?;
    let req = meta.get_all::<JsValue>().with_query::<JsValue, JsValue>(range.into()).primitive().map_err(from_idb)?;
    let records = req.await.map_err(from_idb)?.collect::<Result<js_sys::Array, _>>().map_err(from_idb)?;
    codec::from_js(&records)
}

/// What `own_rows_after` reads of a row: its number, whether it came from a peer, its
/// origin (the rest of the row is skipped, not built).
#[derive(serde::Deserialize)]
struct RowOrigin {
    row: u64,
    #[serde(default)]
    from: Option<serde::de::IgnoredAny>,
    op: OpOrigin,
}

#[derive(serde::Deserialize)]
struct OpOrigin {
    origin: String,
}

/// `Store::own_rows_after`, from the records' `own` counts (`codec::log_record`) — those
/// of the records this store wrote come from `counted` (by a record's first row), so
/// only the others are read. A record that holds rows on both sides of `after` is read
/// row by row — and only when it holds own rows at all, decoding of each only its
/// number, origin and sender. Returns the count, how many records were read, and whether
/// it counted the records at or below `after` (below).
///
/// When the head (read in the same transaction) knows how many own rows the log holds
/// (`Head::own_rows`) and fewer rows lie at or below `after` than above it, the rows
/// below are counted and subtracted instead: a replica that never synced (`after` 0)
/// reads no record at all, where counting the rows above read its whole log — about
/// half of opening a replica holding 10,000 unsynced writes.
pub async fn own_rows_after(db: &Database, after: u64, origin: &str, counted: &dyn Fn(u64) -> Option<u64>) -> Result<(u64, u64, bool), StoreError> {
    let tx = db.transaction([LOG, META].as_slice()).build().map_err(from_idb)?;
    let log = tx.object_store(LOG).map_err(from_idb)?;
    let meta = tx.object_store(META).map_err(from_idb)?;
    let head = super::head::read(meta.as_sys().unchecked_ref(), log.as_sys().unchecked_ref()).await?;
    if let Some((total, max_row)) = head.filter(|h| h.db_id == origin).and_then(|h| Some((h.own_rows?, h.max_row))) {
        if after >= max_row {
            return Ok((0, 0, false));
        }
        if after == 0 {
            // Every own row: what a replica that never pushed counts as it opens.
            return Ok((total, 0, false));
        }
        if after <= max_row - after {
            // The records holding rows 1..=after: those keyed at or below it, unless the
            // next one starts right after it, the last of them partly above it.
            let upto = web_sys::IdbKeyRange::upper_bound(&JsValue::from_f64((after + 1) as f64)).map_err(|e| from_js(&e))?;
            let mut keys = log.get_all_keys::<f64>().with_query::<JsValue, JsValue>(upto.into()).primitive().map_err(from_idb)?.await.map_err(from_idb)?.map(|k| k.map(|k| k as u64)).collect::<Result<Vec<u64>, _>>().map_err(from_idb)?;
            let whole = keys.last() == Some(&(after + 1));
            if whole {
                keys.pop();
            }
            let last = keys.len().wrapping_sub(1);
            let (below, read) = count_own(&log, keys.into_iter().enumerate().map(|(i, k)| (k, !whole && i == last)), origin, counted, |row| row <= after).await?;
            return Ok((total.saturating_sub(below), read, true));
        }
    }
    let start = first_log_record(&log, after).await?;
    let keys = log.get_all_keys::<f64>().with_query::<JsValue, JsValue>(log_range(start)?).primitive().map_err(from_idb)?.await.map_err(from_idb)?;
    let keys = keys.map(|k| k.map(|k| k as u64)).collect::<Result<Vec<u64>, _>>().map_err(from_idb)?;
    // The first record may hold rows at or below `after` too, unless it starts right
    // after it (as it does after a push of everything up to a record's end, or a reset's
    // chunks): then its count serves and its rows are not parsed.
    let partly = |i: usize| i == 0 && start.is_some_and(|k| k != after + 1);
    let (n, read) = count_own(&log, keys.into_iter().enumerate().map(|(i, k)| (k, partly(i))), origin, counted, |row| row > after).await?;
    Ok((n, read, false))
}

/// The own rows of `origin` in the log records `records` (first row, and whether only
/// some of its rows count: those whose number `counts`). Returns the count and how many
/// records were read.
async fn count_own(log: &ObjectStore<'_>, records: impl Iterator<Item = (u64, bool)>, origin: &str, counted: &dyn Fn(u64) -> Option<u64>, counts: impl Fn(u64) -> bool) -> Result<(u64, u64), StoreError> {
    let mut n = 0;
    // Every read goes out before the first is awaited.
    let mut reads = Vec::new();
    for (key, partly) in records {
        match counted(key).filter(|_| !partly) {
            Some(own) => n += own,
            None => reads.push((partly, log.get::<JsValue, _, _>(JsValue::from_f64(key as f64)).primitive().map_err(from_idb)?)),
        }
    }
    let read = reads.len() as u64;
    for (partly, req) in reads {
        let Some(record) = req.await.map_err(from_idb)? else { continue };
        match codec::log_own(&record, origin) {
            Some(0) => {}
            Some(own) if !partly => n += own,
            _ => {
                let rows: Vec<RowOrigin> = codec::log_rows(&record)?;
                n += rows.iter().filter(|r| counts(r.row) && r.from.is_none() && r.op.origin == origin).count() as u64;
            }
        }
    }
    Ok((n, read))
}

/// The key (first row) of the log record holding row `after + 1`: the last one keyed at
/// or below it. `None`: every record starts after `after + 1`.
async fn first_log_record(log: &ObjectStore<'_>, after: u64) -> Result<Option<u64>, StoreError> {
    let below = web_sys::IdbKeyRange::upper_bound(&JsValue::from_f64((after + 1) as f64)).map_err(|e| from_js(&e))?;
    let opened = log.open_key_cursor().with_query::<JsValue, JsValue>(below.into()).with_direction(CursorDirection::Prev).primitive().map_err(from_idb)?.await;
    Ok(match opened.map_err(from_idb)? {
        Some(mut c) => c.next_key::<f64>().await.map_err(from_idb)?.map(|k| k as u64),
        None => None,
    })
}

/// The log records from the one keyed `start` on (`None`: all of them).
fn log_range(start: Option<u64>) -> Result<JsValue, StoreError> {
    Ok(match start {
        Some(k) => web_sys::IdbKeyRange::lower_bound(&JsValue::from_f64(k as f64)).map_err(|e| from_js(&e))?.into(),
        None => JsValue::UNDEFINED,
    })
}

/// A cursor over the log records from the one holding row `after + 1` on (`None`: none).
async fn log_records_from<'a>(log: &'a ObjectStore<'a>, after: u64) -> Result<Option<Cursor<'a, ObjectStore<'a>>>, StoreError> {
    let start = first_log_record(log, after).await?;
    log.open_cursor().with_query::<JsValue, _>(log_range(start)?).primitive().map_err(from_idb)?.await.map_err(from_idb)
}

/// Every peer record, keyed by peer db id, from one transaction.
pub async fn peers(db: &Database) -> Result<BTreeMap<String, PeerRecord>, StoreError> {
    let tx = db.transaction(PEERS).build().map_err(from_idb)?;
    peer_records(&tx.object_store(PEERS).map_err(from_idb)?).await
}

/// The head and every peer record as of one transaction: what opening a replica reads
/// (`IdbStore::open`), in one round of requests.
pub async fn head_and_peers(db: &Database) -> Result<(Option<Head>, BTreeMap<String, PeerRecord>), StoreError> {
    let tx = db.transaction([META, LOG, PEERS].as_slice()).build().map_err(from_idb)?;
    let (meta, log, peers) = (tx.object_store(META).map_err(from_idb)?, tx.object_store(LOG).map_err(from_idb)?, tx.object_store(PEERS).map_err(from_idb)?);
    let (head, peers) = futures::join!(super::head::read(meta.as_sys().unchecked_ref(), log.as_sys().unchecked_ref()), peer_records(&peers));
    Ok((head?, peers?))
}

async fn peer_records(store: &ObjectStore<'_>) -> Result<BTreeMap<String, PeerRecord>, StoreError> {
    let keys = store.get_all_keys::<JsValue>().primitive().map_err(from_idb)?;
    let values = store.get_all::<JsValue>().primitive().map_err(from_idb)?;
    let keys = keys.await.map_err(from_idb)?.map(|k| k.map(|k| k.as_string().unwrap_or_default())).collect::<Result<Vec<String>, _>>().map_err(from_idb)?;
    let values = values.await.map_err(from_idb)?.collect::<Result<js_sys::Array, _>>().map_err(from_idb)?;
    let records: Vec<PeerRecord> = codec::from_js(&values)?;
    Ok(crate::sort::map_from(keys.into_iter().zip(records)))
}

/// The head and every stored document (tombstones included) as of one transaction, so a
/// snapshot never mixes two states. Collections in name order, documents in id order.
/// Up to `limit` documents after `after`, in (collection name, id) order: collections in
/// the schema's (sorted) order, ids in IndexedDB's key order within each.
pub async fn docs_after(db: &Database, schema: &Schema, after: Option<&(String, String)>, limit: usize) -> Result<Vec<(String, StoredDoc)>, StoreError> {
    let mut out = Vec::new();
    for (name, collection) in &schema.collections {
        if out.len() >= limit {
            break;
        }
        let range = match after {
            Some((c, _)) if name < c => continue,
            Some((c, id)) if name == c => web_sys::IdbKeyRange::lower_bound_with_open(&JsValue::from_str(id), true).map_err(|e| from_js(&e))?.into(),
            _ => JsValue::UNDEFINED,
        };
        let tx = db.transaction(collection_store(name).as_str()).build().map_err(from_idb)?;
        let store = tx.object_store(&collection_store(name)).map_err(from_idb)?;
        let want = u32::try_from(limit - out.len()).unwrap_or(u32::MAX);
        let req = store.get_all::<JsValue>().with_query::<JsValue, _>(range).with_limit(want).primitive().map_err(from_idb)?;
        let records = req.await.map_err(from_idb)?.collect::<Result<js_sys::Array, _>>().map_err(from_idb)?;
        let records: Vec<codec::DocIn> = codec::from_js(&records)?;
        let indexes = collection.index_list();
        for record in records {
            out.push((name.clone(), record.into_stored(indexes)?));
        }
    }
    Ok(out)
}

/// `Store::doc_keys`: every collection's ids (`getAllKeys`), no record read.
pub async fn doc_keys(db: &Database, schema: &Schema) -> Result<Vec<(String, String)>, StoreError> {
    let per = each_collection(db, schema, |store| store.get_all_keys::<JsValue>().primitive()).await?;
    let mut keys = Vec::new();
    for (name, ids) in per {
        for id in ids {
            keys.push((name.clone(), id.map_err(from_idb)?.as_string().unwrap_or_default()));
        }
    }
    Ok(keys)
}

/// How many documents every collection holds (tombstones included).
pub async fn doc_count(db: &Database, schema: &Schema) -> Result<u64, StoreError> {
    let per = each_collection(db, schema, |store| store.count().primitive()).await?;
    Ok(per.into_iter().map(|(_, n)| n as u64).sum())
}

/// `request` made on every collection's store in one readonly transaction, all made before
/// any is awaited; the answers with their collections, in the schema's order.
async fn each_collection<'s, T, F>(db: &Database, schema: &'s Schema, request: impl Fn(&ObjectStore<'_>) -> Result<F, IdbError>) -> Result<Vec<(&'s String, T)>, StoreError>
where
    F: std::future::Future<Output = Result<T, IdbError>>,
{
    let scope: Vec<String> = schema.collections.keys().map(|c| collection_store(c)).collect();
    if scope.is_empty() {
        return Ok(Vec::new());
    }
    let tx = db.transaction(scope.as_slice()).build().map_err(from_idb)?;
    let mut reqs = Vec::new();
    for (name, store) in schema.collections.keys().zip(&scope) {
        reqs.push((name, request(&tx.object_store(store).map_err(from_idb)?).map_err(from_idb)?));
    }
    let mut out = Vec::with_capacity(reqs.len());
    for (name, req) in reqs {
        out.push((name, req.await.map_err(from_idb)?));
    }
    Ok(out)
}
