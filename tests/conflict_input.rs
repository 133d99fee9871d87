//! Bad conflict-tracking input from a peer (DESIGN §11) is refused with a protocol error
//! before anything is stored: a `seen` map naming a path the op does not write, a seen
//! stamp not older than the op's own, a resolution that is not a tracked patch.

#![cfg(not(target_arch = "wasm32"))]

use std::collections::BTreeMap;

use futures::executor::block_on;
use serde_json::json;
use tidemark::clock::Stamp;
use tidemark::memory::MemoryStore;
use tidemark::op::{Kind, Op};
use tidemark::store::{Row, Store};
use tidemark::sync::apply::apply_rows;
use tidemark::{Replica, Schema};

fn stamp(wall: u64) -> Stamp {
    Stamp { version: 1, wall, counter: 0, node: "peer".into() }
}

fn op(kind: Kind, fields: serde_json::Value, seen: Option<BTreeMap<String, Stamp>>, resolution: bool) -> Op {
    Op {
        origin: "peer".into(),
        origin_row: 1,
        ts: stamp(1_000),
        schema_version: 1,
        collection: "tasks".into(),
        id: "t1".into(),
        kind,
        fields: fields.as_object().cloned(),
        seen,
        resolution,
    }
}

#[test]
fn bad_tracking_is_refused_and_stores_nothing() {
    let schema = Schema::from_json(json!({"version": 1, "collections": {"tasks": {"primaryKey": "id", "conflicts": true}}})).unwrap();
    let r = block_on(Replica::open(MemoryStore::new(), schema, Box::new(|| 2_000))).unwrap();
    let saw = |p: &str, wall: u64| Some(BTreeMap::from([(p.to_string(), stamp(wall))]));
    let bad = [
        ("a path it does not write", op(Kind::Patch, json!({"title": "x"}), saw("other", 10), false)),
        ("a stamp as new as its own", op(Kind::Patch, json!({"title": "x"}), saw("title", 1_000), false)),
        ("a resolution that is a put", op(Kind::Put, json!({"id": "t1", "title": "x"}), saw("title", 10), true)),
        ("a resolution that says nothing it saw", op(Kind::Patch, json!({"title": "x"}), None, true)),
    ];
    for (what, o) in bad {
        let before = (r.head(), block_on(r.store().rows_after(0, 100)).unwrap());
        let e = block_on(apply_rows(&r, "peer", "s1", vec![Row { row: 1, op: o, from: None }], Some(1))).unwrap_err();
        assert_eq!(e.code(), "SYNC_PROTOCOL", "{what}: {e}");
        assert_eq!((r.head(), block_on(r.store().rows_after(0, 100)).unwrap()), before, "{what}: nothing stored");
        assert!(block_on(r.store().peers()).unwrap().is_empty(), "{what}: no point moved");
    }
    // The same op with a sound `seen` applies.
    let good = op(Kind::Patch, json!({"title": "x"}), saw("title", 10), true);
    block_on(apply_rows(&r, "peer", "s1", vec![Row { row: 1, op: good, from: None }], Some(1))).unwrap();
    assert_eq!(block_on(r.store().resolutions_after(0)).unwrap().len(), 1);
}
