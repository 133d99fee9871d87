//! The IndexedDB store in a real browser: it must keep data across reopen, write all or
//! nothing, keep replicas apart, refuse a changed layout without touching data, and
//! answer every query exactly like the in-memory store fed the same writes.

#![cfg(target_arch = "wasm32")]

use indexed_db_futures::database::Database;
use indexed_db_futures::prelude::*;
use serde_json::{json, Map, Value};
use tidemark::error::StoreError;
use tidemark::idb::error::{classify, from_js};
use tidemark::idb::IdbStore;
use tidemark::store::{Row, Store};
use tidemark::{MemoryStore, Replica, Schema, Write};
use wasm_bindgen::prelude::*;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

const ITEMS: &str = "items";

fn schema() -> Schema {
    Schema::from_json(json!({"version": 1, "collections": {
        "items": {"primaryKey": "id", "indexes": {"byKind": "kind", "byKindN": ["kind", "n"], "byN": "n"}},
        "notes": {"primaryKey": "id"}}}))
    .unwrap()
}

/// A name no earlier run used, so leftovers of a failed run never interfere.
fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", (js_sys::Math::random() * 1e12) as u64)
}

fn now() -> Box<dyn Fn() -> u64> {
    Box::new(|| js_sys::Date::now() as u64)
}

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

fn put(doc: Value) -> Write {
    Write::Put { collection: ITEMS.into(), doc: obj(doc) }
}

/// Documents with the awkward cases: missing and fractional `n`, nested values, ties in
/// every index, titles and ids outside ASCII (UTF-16 order differs from UTF-8 there).
fn doc(i: usize) -> Value {
    let mut d = json!({
        "id": format!("d{i:05}"),
        "kind": format!("k{}", i % 5),
        "n": (i * 7919) % 1000,
        "flag": i % 3 == 0,
        "title": format!("item {}", i % 37),
        "meta": {"batch": i / 1000, "tags": ["a", i % 2]},
    });
    if i % 50 == 0 {
        d.as_object_mut().unwrap().remove("n");
    }
    if i % 13 == 0 {
        d["n"] = json!(((i * 7919) % 1000) as f64 + 0.5);
    }
    if i % 101 == 0 {
        d["title"] = json!(["ñu", "\u{1F600} smile", "\u{FF5E} wave"][i % 3]);
    }
    d
}

async fn open_idb(name: &str, schema: &Schema) -> Replica<IdbStore> {
    let store = IdbStore::open(name, schema).await.unwrap();
    Replica::open(store, schema.clone(), now()).await.unwrap()
}

async fn open_memory(schema: &Schema) -> Replica<MemoryStore> {
    Replica::open(MemoryStore::new(), schema.clone(), now()).await.unwrap()
}

async fn write_both(a: &Replica<IdbStore>, b: &Replica<MemoryStore>, writes: Vec<Write>) {
    a.write(writes.clone()).await.unwrap();
    b.write(writes).await.unwrap();
}

fn to_map(v: &JsValue) -> Map<String, Value> {
    let text: String = js_sys::JSON::stringify(v).unwrap().into();
    serde_json::from_str(&text).unwrap()
}

fn ids(docs: &[Map<String, Value>]) -> Vec<String> {
    docs.iter().map(|d| d["id"].as_str().unwrap().to_string()).collect()
}

/// Everything the directory and generation databases hold, by name.
async fn database_exists(name: &str) -> bool {
    let factory = js_sys::Reflect::get(&js_sys::global(), &"indexedDB".into()).unwrap();
    let f: js_sys::Function = js_sys::Reflect::get(&factory, &"databases".into()).unwrap().into();
    let list: js_sys::Array = wasm_bindgen_futures::JsFuture::from(js_sys::Promise::from(f.call0(&factory).unwrap())).await.unwrap().into();
    list.iter().any(|d| js_sys::Reflect::get(&d, &"name".into()).unwrap().as_string().as_deref() == Some(name))
}

/// (key, number of rows) of every record of a generation's `log` store.
async fn log_records(db_name: &str) -> Vec<(f64, usize)> {
    let db = Database::open(db_name).await.unwrap();
    let out = {
        let tx = db.transaction("log").build().unwrap();
        let store = tx.object_store("log").unwrap();
        let keys: Vec<f64> = store.get_all_keys::<f64>().primitive().unwrap().await.unwrap().collect::<Result<_, _>>().unwrap();
        let values: Vec<JsValue> = store.get_all::<JsValue>().primitive().unwrap().await.unwrap().collect::<Result<_, _>>().unwrap();
        let counts = values.iter().map(|v| js_sys::Array::from(&js_sys::Reflect::get(v, &"rows".into()).unwrap()).length() as usize);
        keys.into_iter().zip(counts).collect()
    };
    db.close();
    out
}

fn queries() -> Vec<Value> {
    vec![
        json!({"where": {"kind": "k2"}}),
        json!({"where": {"kind": "k2"}, "limit": 25}),
        json!({"where": {"kind": "k2"}, "limit": 0}),
        json!({"where": {"n": {"gte": 100, "lt": 200}}}),
        json!({"where": {"n": {"gte": 990}}}),
        json!({"where": {"n": {"gt": 10, "lt": 5}}}),
        json!({"where": {"n": 500.5}}),
        json!({"where": {"kind": "k3", "n": {"gt": 50, "lte": 500}}, "orderBy": {"n": "desc"}, "limit": 40}),
        json!({"where": {"kind": "k3", "n": {"gt": 50, "lte": 500}}, "orderBy": {"n": "desc"}}),
        json!({"where": {"kind": "k3", "n": {"gt": 50, "lte": 500}}, "orderBy": "n", "limit": 40}),
        json!({"where": {"kind": "k1"}, "orderBy": "title", "limit": 30}),
        json!({"where": {"kind": "k1"}, "orderBy": {"title": "desc"}}),
        json!({"where": {"kind": "k1", "flag": true}, "limit": 5}),
        json!({"where": {"kind": "k4", "flag": false}, "orderBy": {"n": "desc"}, "limit": 7}),
        json!({"where": {"kind": {"startsWith": "k"}}, "limit": 100}),
        json!({"where": {"title": {"startsWith": "item 1"}}}),
        json!({"where": {"title": {"startsWith": "item 1"}}, "limit": 10}),
        json!({"where": {"meta.batch": 3}, "orderBy": {"id": "desc"}, "limit": 12}),
        json!({"orderBy": {"id": "desc"}, "limit": 15}),
        json!({"orderBy": {"id": "desc"}}),
        json!({"limit": 20}),
        json!({"orderBy": "n", "limit": 60}),
        json!({"orderBy": {"n": "desc"}}),
        json!({"where": {"id": "d00042"}}),
        json!({"where": {"id": "d00001"}}),
        json!({"where": {"id": "d00042", "kind": "k2"}}),
        json!({"where": {"id": "d00042", "kind": "k0"}}),
        json!(null),
    ]
}

#[wasm_bindgen_test]
async fn ten_thousand_documents_survive_reopen_and_query_like_memory() {
    let name = unique("t-reopen");
    let schema = schema();
    let memory = open_memory(&schema).await;
    {
        let idb = open_idb(&name, &schema).await;
        for batch in 0..10 {
            let writes = (batch * 1000..(batch + 1) * 1000).map(|i| put(doc(i))).collect();
            write_both(&idb, &memory, writes).await;
        }
        // Tombstones at both ends of the id order and in the middle, moved index entries,
        // ids outside ASCII.
        let mut writes: Vec<Write> = [0, 1, 2, 3, 4, 9995, 9996, 9997, 9998, 9999, 4242]
            .iter()
            .map(|i| Write::Delete { collection: ITEMS.into(), id: format!("d{i:05}") })
            .collect();
        writes.extend((100..140).map(|i| Write::Patch { collection: ITEMS.into(), id: format!("d{i:05}"), fields: obj(json!({"kind": "k3", "meta.batch": 3})) }));
        writes.extend(["é1", "\u{1F600}x", "\u{FF5E}y", "Z"].iter().map(|id| put(json!({"id": id, "kind": "k2", "n": 7, "title": id}))));
        write_both(&idb, &memory, writes).await;
        assert_eq!(idb.status().max_row, memory.status().max_row);
        idb.store().close();
    }

    let idb = open_idb(&name, &schema).await;
    assert_eq!(idb.status().max_row, 10_055);
    let mut all: Vec<String> = (0..10_000).map(|i| format!("d{i:05}")).collect();
    all.extend(["é1", "\u{1F600}x", "\u{FF5E}y", "Z"].iter().map(|s| s.to_string()));
    for id in &all {
        let want = memory.get(ITEMS, id).await.unwrap().map(|d| d.d);
        let got = idb.get(ITEMS, id).await.unwrap().map(|d| d.d);
        assert_eq!(got, want, "document {id}");
    }
    for q in queries() {
        let want = memory.query(ITEMS, &q).await.unwrap();
        let got: Vec<Map<String, Value>> = idb.query(ITEMS, &q).await.unwrap().iter().map(to_map).collect();
        assert_eq!(ids(&got), ids(&want), "ids of {q}");
        assert_eq!(got, want, "documents of {q}");
    }
    // The layout the rest of the system relies on: one log record per commit.
    let records = log_records(&idb.store().live().db).await;
    assert_eq!(records.len(), 11);
    assert_eq!(records[0], (1.0, 1000));
    assert_eq!(records[10], (10_001.0, 55));
    idb.store().close();
    IdbStore::delete_replica(&name).await.unwrap();
}

#[wasm_bindgen_test]
async fn a_failing_write_leaves_the_store_unchanged() {
    let name = unique("t-atomic");
    let schema = schema();
    let idb = open_idb(&name, &schema).await;
    idb.write((0..5).map(|i| put(doc(i))).collect()).await.unwrap();
    let head = idb.store().head().await.unwrap();
    let rows = idb.store().rows_after(0, 100).await.unwrap();

    let err = idb
        .write(vec![
            put(doc(10)),
            Write::Patch { collection: ITEMS.into(), id: "d00001".into(), fields: obj(json!({"title": "changed"})) },
            Write::Patch { collection: ITEMS.into(), id: "missing".into(), fields: obj(json!({"x": 1})) },
            put(doc(11)),
        ])
        .await
        .unwrap_err();
    assert_eq!(err.code(), "NOT_FOUND");

    assert_eq!(idb.store().head().await.unwrap(), head);
    assert_eq!(idb.store().rows_after(0, 100).await.unwrap(), rows);
    assert!(idb.get(ITEMS, "d00010").await.unwrap().is_none());
    assert!(idb.get(ITEMS, "d00011").await.unwrap().is_none());
    assert_eq!(idb.get(ITEMS, "d00001").await.unwrap().unwrap().d.unwrap()["title"], json!("item 1"));
    assert_eq!(log_records(&idb.store().live().db).await.len(), 1);

    // The store is still usable afterwards.
    idb.write(vec![put(doc(10))]).await.unwrap();
    assert_eq!(idb.status().max_row, 6);
    idb.store().close();
    IdbStore::delete_replica(&name).await.unwrap();
}

#[wasm_bindgen_test]
async fn replicas_with_different_names_are_separate() {
    let (a_name, b_name) = (unique("t-sep-a"), unique("t-sep-b"));
    let schema = schema();
    let a = open_idb(&a_name, &schema).await;
    let b = open_idb(&b_name, &schema).await;
    a.write(vec![put(json!({"id": "only-a", "kind": "k1"}))]).await.unwrap();
    b.write(vec![put(json!({"id": "only-b", "kind": "k1"})), put(json!({"id": "also-b", "kind": "k1"}))]).await.unwrap();

    assert!(a.get(ITEMS, "only-b").await.unwrap().is_none());
    assert!(b.get(ITEMS, "only-a").await.unwrap().is_none());
    let q = json!({"where": {"kind": "k1"}});
    assert_eq!(ids(&a.query(ITEMS, &q).await.unwrap().iter().map(to_map).collect::<Vec<_>>()), vec!["only-a"]);
    assert_eq!(ids(&b.query(ITEMS, &q).await.unwrap().iter().map(to_map).collect::<Vec<_>>()), vec!["also-b", "only-b"]);
    assert_eq!(a.store().rows_after(0, 10).await.unwrap().len(), 1);
    assert_eq!(b.store().rows_after(0, 10).await.unwrap().len(), 2);
    assert_ne!(a.status().db_id, b.status().db_id);

    a.store().close();
    b.store().close();
    IdbStore::delete_replica(&a_name).await.unwrap();
    // Deleting one replica leaves the other alone.
    let b = open_idb(&b_name, &schema).await;
    assert!(b.get(ITEMS, "only-b").await.unwrap().is_some());
    b.store().close();
    IdbStore::delete_replica(&b_name).await.unwrap();
}

#[wasm_bindgen_test]
async fn another_index_layout_is_a_schema_mismatch_and_touches_nothing() {
    let name = unique("t-layout");
    let schema = schema();
    let idb = open_idb(&name, &schema).await;
    idb.write((0..20).map(|i| put(doc(i))).collect()).await.unwrap();
    let head = idb.store().head().await.unwrap();
    idb.store().close();

    let mut changed = schema.clone();
    changed.version = 2;
    changed.collections.get_mut(ITEMS).unwrap().indexes.insert("byTitle".into(), tidemark::schema::IndexFields::One("title".into()));
    let err = IdbStore::open(&name, &changed).await.err().expect("a changed layout must not open");
    assert_eq!(err.code(), "SCHEMA_MISMATCH");
    assert!(matches!(err, tidemark::Error::Open(tidemark::error::OpenError::SchemaMismatch { stored: 1, opened: 2, .. })), "{err}");

    let idb = open_idb(&name, &schema).await;
    assert_eq!(idb.store().head().await.unwrap(), head);
    assert_eq!(idb.store().live().generation, 1);
    for i in 0..20 {
        assert!(idb.get(ITEMS, &format!("d{i:05}")).await.unwrap().is_some());
    }
    assert_eq!(idb.query(ITEMS, &json!({"where": {"kind": "k1"}})).await.unwrap().len(), 4);
    idb.store().close();
    IdbStore::delete_replica(&name).await.unwrap();
}

#[wasm_bindgen_test]
async fn rows_after_spans_commit_records() {
    let name = unique("t-rows");
    let schema = schema();
    let idb = open_idb(&name, &schema).await;
    let memory = open_memory(&schema).await;
    let mut i = 0;
    for size in [3, 1, 5, 2, 1, 4] {
        let writes = (i..i + size).map(|j| put(doc(j))).collect();
        write_both(&idb, &memory, writes).await;
        i += size;
    }
    let total = 16u64;
    let key = |r: &Row| (r.row, r.op.id.clone(), r.op.kind, r.op.fields.clone(), r.from.clone());
    for after in 0..=total + 1 {
        for limit in 0..=total as usize + 1 {
            let got = idb.store().rows_after(after, limit).await.unwrap();
            let want = memory.store().rows_after(after, limit).await.unwrap();
            assert_eq!(got.iter().map(key).collect::<Vec<_>>(), want.iter().map(key).collect::<Vec<_>>(), "after {after}, limit {limit}");
            let expected: Vec<u64> = (after + 1..=total).take(limit).collect();
            assert_eq!(got.iter().map(|r| r.row).collect::<Vec<_>>(), expected);
        }
    }
    assert!(idb.store().rows_after(3, 100).await.unwrap().iter().all(|r| r.op.origin == idb.status().db_id));
    assert_eq!(log_records(&idb.store().live().db).await, vec![(1.0, 3), (4.0, 1), (5.0, 5), (10.0, 2), (12.0, 1), (13.0, 4)]);
    idb.store().close();
    IdbStore::delete_replica(&name).await.unwrap();
}

#[wasm_bindgen_test]
async fn closed_stores_refuse_and_deleted_replicas_are_gone() {
    let name = unique("t-close");
    let schema = schema();
    let idb = open_idb(&name, &schema).await;
    idb.write(vec![put(doc(1))]).await.unwrap();
    let db_name = idb.store().live().db.clone();
    assert!(database_exists(&db_name).await);
    idb.store().close();
    assert_eq!(idb.store().head().await, Err(StoreError::Closed));
    assert_eq!(idb.write(vec![put(doc(2))]).await.unwrap_err().code(), "CLOSED");
    assert_eq!(idb.query(ITEMS, &json!(null)).await.unwrap_err().code(), "CLOSED");
    assert_eq!(idb.store().rows_after(0, 1).await, Err(StoreError::Closed));

    // Deleting while another store of the replica is still open closes that one rather
    // than waiting for it forever.
    let other = IdbStore::open(&name, &schema).await.unwrap();
    IdbStore::delete_replica(&name).await.unwrap();
    assert_eq!(other.head().await, Err(StoreError::Closed));
    assert!(!database_exists(&db_name).await);
    assert!(!database_exists(&format!("tidemark:{name}")).await);

    let fresh = IdbStore::open(&name, &schema).await.unwrap();
    assert_eq!(fresh.head().await.unwrap(), None);
    fresh.close();
    IdbStore::delete_replica(&name).await.unwrap();
}

#[wasm_bindgen_test]
async fn replica_names_that_could_collide_are_refused() {
    for name in ["", "a:g1"] {
        let err = IdbStore::open(name, &schema()).await.err().unwrap();
        assert_eq!(err.code(), "INVALID_OPTIONS");
    }
}

#[wasm_bindgen_test]
fn quota_errors_are_recognized() {
    assert_eq!(classify("QuotaExceededError", "The quota has been exceeded."), StoreError::QuotaExceeded);
    assert_eq!(classify("NS_ERROR_DOM_QUOTA_REACHED", ""), StoreError::QuotaExceeded);
    assert_eq!(classify("ConstraintError", "Key already exists"), StoreError::Backend("ConstraintError: Key already exists".into()));
    assert_eq!(classify("UnknownError", ""), StoreError::Backend("UnknownError".into()));
    let quota = web_sys::DomException::new_with_message_and_name("disk full", "QuotaExceededError").unwrap();
    assert_eq!(from_js(&quota.into()), StoreError::QuotaExceeded);
    let other = web_sys::DomException::new_with_message_and_name("bad key", "DataError").unwrap();
    assert_eq!(from_js(&other.into()), StoreError::Backend("DataError: bad key".into()));
    assert_eq!(from_js(&js_sys::Error::new("boom").into()), StoreError::Backend("Error: boom".into()));
}
