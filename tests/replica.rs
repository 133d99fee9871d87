//! The replica's local rules, natively over the in-memory store: writes, validation that
//! changes nothing, queries through the planner.

#![cfg(not(target_arch = "wasm32"))]

use futures::executor::block_on;
use serde_json::{json, Map, Value};
use tidemark::memory::MemoryStore;
use tidemark::store::Store;
use tidemark::{Replica, Schema, Write};


fn obj(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

fn replica() -> Replica<MemoryStore> {
    let schema = Schema::from_json(json!({"version": 1, "collections": {"todos": {"primaryKey": "id",
        "indexes": {"byDone": "done", "byListDate": ["list", "createdAt"]}}}}))
    .unwrap();
    block_on(Replica::open(MemoryStore::new(), schema, Box::new(|| 1_000))).unwrap()
}

fn ids(docs: &[Map<String, Value>]) -> Vec<&str> {
    docs.iter().map(|d| d["id"].as_str().unwrap()).collect()
}

#[test]
fn put_patch_delete_get() {
    let r = replica();
    block_on(r.put("todos", obj(json!({"id": "a", "title": "Milk", "done": false})))).unwrap();
    block_on(r.patch("todos", "a", obj(json!({"done": true, "meta.by": "me"})))).unwrap();
    let d = block_on(r.get("todos", "a")).unwrap().unwrap();
    assert_eq!(Value::Object(d.doc.unwrap()), json!({"id": "a", "title": "Milk", "done": true, "meta": {"by": "me"}}));
    block_on(r.delete("todos", "a")).unwrap();
    assert!(block_on(r.get("todos", "a")).unwrap().is_none());
    assert_eq!(r.status().max_row, 3);
    let rows = block_on(r.store().rows_after(0, 10)).unwrap();
    assert_eq!(rows.iter().map(|r| r.row).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert!(rows.windows(2).all(|w| w[0].op.ts < w[1].op.ts));
}

#[test]
fn failed_batch_changes_nothing() {
    let r = replica();
    block_on(r.put("todos", obj(json!({"id": "a", "done": false})))).unwrap();
    let before = block_on(r.store().head()).unwrap();
    let err = block_on(r.write(vec![
        Write::Put { collection: "todos".into(), doc: obj(json!({"id": "b"})) },
        Write::Patch { collection: "todos".into(), id: "missing".into(), fields: obj(json!({"x": 1})) },
    ]))
    .unwrap_err();
    assert_eq!(err.code(), "NOT_FOUND");
    assert_eq!(block_on(r.store().head()).unwrap(), before);
    assert!(block_on(r.get("todos", "b")).unwrap().is_none());
    assert_eq!(block_on(r.store().rows_after(0, 10)).unwrap().len(), 1);
}

#[test]
fn bad_writes_have_codes() {
    let r = replica();
    let code = |res: Result<(), tidemark::Error>| res.unwrap_err().code();
    assert_eq!(code(block_on(r.put("nope", obj(json!({"id": "a"}))))), "UNKNOWN_COLLECTION");
    assert_eq!(code(block_on(r.put("todos", obj(json!({"title": "x"}))))), "MISSING_PRIMARY_KEY");
    assert_eq!(code(block_on(r.put("todos", obj(json!({"id": 5}))))), "MISSING_PRIMARY_KEY");
    assert_eq!(code(block_on(r.put("todos", obj(json!({"id": ""}))))), "MISSING_PRIMARY_KEY");
    block_on(r.put("todos", obj(json!({"id": "a"})))).unwrap();
    assert_eq!(code(block_on(r.patch("todos", "a", obj(json!({"id": "b"}))))), "INVALID_PATCH");
    assert_eq!(code(block_on(r.patch("todos", "a", obj(json!({"x": 1, "x.y": 2}))))), "INVALID_PATCH");
    assert_eq!(code(block_on(r.patch("todos", "", obj(json!({"x": 1}))))), "INVALID_ARGUMENT");
    assert_eq!(block_on(r.query("todos", &json!({"where": 3}))).unwrap_err().code(), "INVALID_QUERY");
    assert_eq!(block_on(r.query("nope", &json!({}))).unwrap_err().code(), "UNKNOWN_COLLECTION");
    assert_eq!(r.status().max_row, 1);
}

#[test]
fn queries_use_indexes_and_scans_alike() {
    let r = replica();
    let docs: Vec<Write> = (0..200)
        .map(|n| Write::Put {
            collection: "todos".into(),
            doc: obj(json!({"id": format!("t{n:03}"), "done": n % 3 == 0, "list": if n % 2 == 0 { "inbox" } else { "work" },
                "createdAt": n, "title": format!("item {n}")})),
        })
        .collect();
    block_on(r.write(docs)).unwrap();
    let q = |v: Value| block_on(r.query("todos", &v)).unwrap();

    let range = q(json!({"where": {"list": "inbox", "createdAt": {"gte": 10, "lt": 20}}, "orderBy": {"createdAt": "desc"}, "limit": 3}));
    assert_eq!(ids(&range), vec!["t018", "t016", "t014"]);

    let done = q(json!({"where": {"done": true}, "orderBy": {"createdAt": "desc"}, "limit": 2}));
    assert_eq!(ids(&done), vec!["t198", "t195"]);

    let prefix = q(json!({"where": {"title": {"startsWith": "item 19"}}, "orderBy": "createdAt"}));
    assert_eq!(ids(&prefix), vec!["t019", "t190", "t191", "t192", "t193", "t194", "t195", "t196", "t197", "t198", "t199"]);

    let compound_prefix = q(json!({"where": {"list": "work"}, "orderBy": "createdAt", "limit": 3}));
    assert_eq!(ids(&compound_prefix), vec!["t001", "t003", "t005"]);

    let by_pk = q(json!({"orderBy": {"id": "desc"}, "limit": 2}));
    assert_eq!(ids(&by_pk), vec!["t199", "t198"]);

    block_on(r.delete("todos", "t018")).unwrap();
    let after = q(json!({"where": {"list": "inbox", "createdAt": {"gte": 10, "lt": 20}}, "orderBy": {"createdAt": "desc"}, "limit": 3}));
    assert_eq!(ids(&after), vec!["t016", "t014", "t012"]);
}
