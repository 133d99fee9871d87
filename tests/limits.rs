//! The input bounds (`tidemark::limits`, DESIGN §5) on the engine's own paths: local
//! writes over a limit fail with a stable code and store nothing, and a pass from a peer
//! whose clock runs further ahead than `maxClockSkew` is refused before anything is
//! stored, while the receiver's later writes still win.

#![cfg(not(target_arch = "wasm32"))]

use futures::executor::block_on;
use serde_json::{json, Map, Value};
use tidemark::error::Error;
use tidemark::limits::{DEFAULT_MAX_CLOCK_SKEW_MS, MAX_DEPTH, MAX_ID_BYTES, MAX_PATH_SEGMENTS};
use tidemark::memory::MemoryStore;
use tidemark::store::Store;
use tidemark::sync::{drive, transport::pipe, Limits};
use tidemark::{Replica, Schema};

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

fn replica(wall: u64) -> Replica<MemoryStore> {
    let schema = Schema::from_json(json!({"version": 1, "collections": {"docs": {"primaryKey": "id"}}})).unwrap();
    block_on(Replica::open(MemoryStore::new(), schema, Box::new(move || wall))).unwrap()
}

fn code(r: Result<(), Error>) -> &'static str {
    r.expect_err("refused").code()
}

#[test]
fn local_writes_over_a_limit_fail_with_a_code_and_store_nothing() {
    let r = replica(1_000);
    block_on(r.put("docs", obj(json!({"id": "a"})))).unwrap();
    let path = |n: usize| vec!["p"; n].join(".");
    let mut deep = json!(1);
    for _ in 0..MAX_DEPTH {
        deep = json!({ "x": deep });
    }
    assert_eq!(code(block_on(r.patch("docs", "a", obj(json!({ (path(MAX_PATH_SEGMENTS + 1)): 1 }))))), "INVALID_PATCH");
    assert_eq!(code(block_on(r.patch("docs", "a", obj(json!({ (path(10_000)): 1 }))))), "INVALID_PATCH");
    assert_eq!(code(block_on(r.patch("docs", "a", obj(json!({ (path(MAX_PATH_SEGMENTS)): deep["x"].clone() }))))), "INVALID_PATCH");
    assert_eq!(code(block_on(r.put("docs", obj(json!({"id": "b", "deep": deep.clone()}))))), "INVALID_DOCUMENT");
    assert_eq!(code(block_on(r.put("docs", obj(json!({"id": "i".repeat(MAX_ID_BYTES + 1)}))))), "INVALID_ARGUMENT");
    assert_eq!(code(block_on(r.delete("docs", &"i".repeat(MAX_ID_BYTES + 1)))), "INVALID_ARGUMENT");
    assert_eq!(r.status().max_row, 1, "nothing was stored");
    // At the limits: stored, and read back.
    block_on(r.patch("docs", "a", obj(json!({ (path(MAX_PATH_SEGMENTS)): 1 })))).unwrap();
    block_on(r.put("docs", obj(json!({"id": "b", "deep": deep["x"].clone()})))).unwrap();
    assert!(block_on(r.get("docs", "b")).unwrap().is_some());
}

/// One pass from `from` to `to` through the wire format; the receiver's result.
fn pass(from: &Replica<MemoryStore>, to: &Replica<MemoryStore>) -> Result<(), Error> {
    let (mut x, mut y) = pipe();
    let (fid, tid) = (from.head().db_id, to.head().db_id);
    let session = tidemark::peer::new_session();
    let (_, got) = block_on(futures::future::join(
        drive::send(from, &mut x, &tid, &session, Limits::default(), &mut |_| {}),
        drive::receive(to, &mut y, &fid, &session, &mut |_| {}),
    ));
    got.map(|_| ())
}

#[test]
fn a_peer_clock_past_max_clock_skew_is_refused_before_anything_is_stored() {
    let now = 1_700_000_000_000;
    let honest = replica(now);
    let ahead = replica(now + DEFAULT_MAX_CLOCK_SKEW_MS + 60_000);
    block_on(ahead.put("docs", obj(json!({"id": "x", "n": 666})))).unwrap();
    assert_eq!(code(pass(&ahead, &honest)), "SYNC_PROTOCOL");
    assert_eq!(honest.status().max_row, 0);
    assert!(block_on(honest.get("docs", "x")).unwrap().is_none());
    // Its own later writes are stamped at its own time, not the far future.
    block_on(honest.put("docs", obj(json!({"id": "y"})))).unwrap();
    let rows = block_on(honest.store().rows_after(0, 10)).unwrap();
    assert_eq!(rows[0].op.ts.wall, now);
    // A receiver configured with a wider window takes it.
    honest.set_max_clock_skew(2 * DEFAULT_MAX_CLOCK_SKEW_MS);
    pass(&ahead, &honest).unwrap();
    assert!(block_on(honest.get("docs", "x")).unwrap().is_some());
}
