//! The protocol conformance scenarios of DESIGN §9, natively over the in-memory store.
//! (`server/tests` runs the same scenarios against the SQLite store.)

#![cfg(not(target_arch = "wasm32"))]

use futures::executor::block_on;
use serde_json::{json, Map, Value};
use tidemark::memory::MemoryStore;
use tidemark::store::Store;
use tidemark::sync::pass::{self, wants_snapshot, Limits, PassReport};
use tidemark::sync::transport::pipe;
use tidemark::{Replica, Schema, Write};

fn schema() -> Schema {
    Schema::from_json(json!({"version": 1, "collections": {"docs": {"primaryKey": "id", "indexes": {"byN": "n"}}}})).unwrap()
}

fn replica_at(store: MemoryStore, wall: u64) -> Replica<MemoryStore> {
    block_on(Replica::open(store, schema(), Box::new(move || wall))).unwrap()
}

fn replica(wall: u64) -> Replica<MemoryStore> {
    replica_at(MemoryStore::new(), wall)
}

fn put_all(r: &Replica<MemoryStore>, ids: impl Iterator<Item = String>, n: i64) {
    let writes: Vec<Write> = ids
        .map(|id| Write::Put { collection: "docs".into(), doc: json!({"id": id, "n": n}).as_object().unwrap().clone() })
        .collect();
    for chunk in writes.chunks(500) {
        block_on(r.write(chunk.to_vec())).unwrap();
    }
}

/// One pass from `s` to `r`.
fn pass(s: &Replica<MemoryStore>, r: &Replica<MemoryStore>, limits: Limits) -> PassReport {
    let (mut a, mut b) = pipe();
    let (sid, rid) = (s.head().db_id, r.head().db_id);
    let session = tidemark::sync::peer::new_session();
    let (sent, got) = block_on(futures::future::join(
        pass::send(s, &mut a, &rid, &session, limits, &mut |_| {}),
        pass::receive(r, &mut b, &sid, &session, &mut |_| {}),
    ));
    let sent = sent.unwrap();
    let got = got.unwrap();
    assert_eq!(sent.end, got.end);
    sent
}

fn docs(r: &Replica<MemoryStore>) -> Vec<Map<String, Value>> {
    block_on(r.query("docs", &json!({}))).unwrap()
}

fn incoming(r: &Replica<MemoryStore>, from: &Replica<MemoryStore>) -> i64 {
    block_on(r.store().peers()).unwrap().get(&from.head().db_id).map_or(-1, |p| p.incoming)
}

fn outgoing(r: &Replica<MemoryStore>, to: &Replica<MemoryStore>) -> i64 {
    block_on(r.store().peers()).unwrap().get(&to.head().db_id).map_or(-1, |p| p.outgoing)
}

const SMALL: Limits = Limits { per_diff: 10, max_diffs: 3 };

#[test]
fn a_batch_of_only_stale_rows_still_advances_incoming() {
    let s = replica(1_000);
    let r = replica(9_000);
    put_all(&s, (0..5).map(|i| format!("d{i}")), 1);
    put_all(&r, (0..5).map(|i| format!("d{i}")), 2);
    let before = r.head().max_row;
    let rep = pass(&s, &r, SMALL);
    assert_eq!(rep.sent, 5);
    assert_eq!(incoming(&r, &s), 5);
    assert!(docs(&r).iter().all(|d| d["n"] == 2), "newer versions kept");
    assert_eq!(r.head().max_row, before, "stale rows are not logged again");
    // The next pass has nothing to send and does not restart at the same place.
    let again = pass(&s, &r, SMALL);
    assert_eq!((again.start, again.sent, again.batches), (5, 0, 0));
}

#[test]
fn diff_capped_pass_resumes_and_completes() {
    let s = replica(1_000);
    let r = replica(9_000);
    put_all(&r, (0..100).map(|i| format!("d{i:03}")), 2);
    put_all(&s, (0..50).map(|i| format!("d{i:03}")), 1);
    put_all(&s, std::iter::once("new".to_string()), 1);
    let first = pass(&s, &r, SMALL);
    assert!(first.capped && !first.snapshot);
    assert_eq!((first.batches, first.end), (3, 30));
    assert_eq!(incoming(&r, &s), 30);
    let second = pass(&s, &r, SMALL);
    assert!(!second.capped);
    assert_eq!(second.start, 30);
    assert_eq!(incoming(&r, &s), 51);
    let all = docs(&r);
    assert_eq!(all.len(), 101);
    assert!(all.iter().filter(|d| d["id"] != "new").all(|d| d["n"] == 2));
    assert!(all.iter().any(|d| d["id"] == "new"));
}

#[test]
fn a_capped_pass_forwards_no_third_party_points_and_records_no_outgoing() {
    let x = replica(1_000);
    let s = replica(2_000);
    let r = replica(3_000);
    put_all(&x, (0..3).map(|i| format!("x{i}")), 1);
    pass(&x, &s, Limits::default());
    put_all(&s, (0..40).map(|i| format!("s{i}")), 1);
    put_all(&r, (0..40).map(|i| format!("r{i}")), 1);
    let rep = pass(&s, &r, SMALL);
    assert!(rep.capped);
    assert_eq!(incoming(&r, &x), -1, "no third-party point");
    assert_eq!(outgoing(&s, &r), -1, "no outgoing after a capped pass");
    while pass(&s, &r, SMALL).capped {}
    assert_eq!(incoming(&r, &x), 3, "forwarded after the complete pass");
    assert_eq!(outgoing(&s, &r), s.head().max_row as i64);
}

#[test]
fn fifty_percent_rule() {
    assert!(wants_snapshot(20, 9, 10));
    assert!(!wants_snapshot(20, 10, 10));
    for (r_rows, snap) in [(9, true), (10, false)] {
        let s = replica(1_000);
        let r = replica(2_000);
        put_all(&s, (0..20).map(|i| format!("s{i}")), 1);
        put_all(&r, (0..r_rows).map(|i| format!("r{i}")), 1);
        let rep = pass(&s, &r, Limits { per_diff: 10, max_diffs: 10 });
        assert_eq!(rep.snapshot, snap);
        assert_eq!(docs(&r).len(), 20 + r_rows);
        assert_eq!(incoming(&r, &s), 20);
    }
}

#[test]
fn a_snapshot_merges_and_keeps_unsynced_local_writes() {
    let s = replica(1_000);
    let r = replica(5_000);
    put_all(&s, (0..30).map(|i| format!("d{i}")), 1);
    put_all(&r, (0..2).map(|i| format!("d{i}")), 7);
    let rep = pass(&s, &r, SMALL);
    assert!(rep.snapshot);
    let all = docs(&r);
    assert_eq!(all.len(), 30);
    assert!(all.iter().filter(|d| d["id"] == "d0" || d["id"] == "d1").all(|d| d["n"] == 7));
    // R's own writes still flow back to S, and S converges.
    while pass(&r, &s, Limits::default()).capped {}
    assert_eq!(docs(&s), docs(&r));
}

#[test]
fn a_rebuilt_replica_gets_a_new_db_id_and_peers_start_over() {
    let s = replica(1_000);
    let r = replica(2_000);
    put_all(&s, (0..5).map(|i| format!("d{i}")), 1);
    pass(&s, &r, Limits::default());
    let rebuilt = replica(2_000);
    assert_ne!(rebuilt.head().db_id, r.head().db_id);
    let rep = pass(&s, &rebuilt, Limits { per_diff: 100, max_diffs: 10 });
    assert_eq!(rep.start, -1);
    assert_eq!(docs(&rebuilt).len(), 5);
}

#[test]
fn transitive_fast_forward() {
    let a = replica(1_000);
    let b = replica(2_000);
    let c = replica(3_000);
    put_all(&a, (0..20).map(|i| format!("a{i}")), 1);
    pass(&a, &b, Limits::default());
    put_all(&b, (0..20).map(|i| format!("b{i}")), 1);
    pass(&b, &c, Limits::default());
    assert_eq!(incoming(&c, &a), 20);
    let rep = pass(&a, &c, Limits::default());
    assert_eq!(rep.start, 20, "A→C starts where C already is for A");
    assert_eq!(rep.sent, 0);
}

#[test]
fn a_restored_replica_is_not_fast_forwarded_past_rows_it_lost() {
    let client = replica(1_000);
    let server = replica(2_000);
    put_all(&client, (0..10).map(|i| format!("d{i}")), 1);
    pass(&client, &server, Limits::default());
    let backup = server.store().backup();
    put_all(&client, (10..20).map(|i| format!("d{i}")), 1);
    pass(&client, &server, Limits::default());
    assert_eq!(incoming(&server, &client), 20);
    // Restore the server from the backup: same db id, rows 11..20 of the client lost.
    let restored = replica_at(backup, 2_000);
    assert_eq!(restored.head().db_id, server.head().db_id);
    let rep = pass(&client, &restored, Limits::default());
    assert_eq!(rep.start, 10, "resumes from the newest session the backup remembers");
    assert_eq!(docs(&restored).len(), 20);
}

#[test]
fn a_restored_sender_does_not_reuse_forgotten_points() {
    // The server (sender) is restored; a client that pulled rows the server lost must not
    // skip the server's new rows that reuse those row numbers.
    let server = replica(1_000);
    let client = replica(2_000);
    put_all(&server, (0..10).map(|i| format!("a{i}")), 1);
    pass(&server, &client, Limits { per_diff: 100, max_diffs: 10 });
    let backup = server.store().backup();
    put_all(&server, (0..10).map(|i| format!("lost{i}")), 1);
    pass(&server, &client, Limits { per_diff: 100, max_diffs: 10 });
    let restored = replica_at(backup, 3_000);
    put_all(&restored, (0..10).map(|i| format!("new{i}")), 1);
    let rep = pass(&restored, &client, Limits { per_diff: 100, max_diffs: 10 });
    assert_eq!(rep.start, 10);
    let ids: Vec<String> = docs(&client).iter().map(|d| d["id"].as_str().unwrap().to_string()).collect();
    assert!(ids.iter().filter(|i| i.starts_with("new")).count() == 10, "{ids:?}");
    // And the client gives the restored server back what it lost.
    while pass(&client, &restored, Limits::default()).capped {}
    assert_eq!(docs(&restored).len(), 30);
}

#[test]
fn echoes_are_not_sent_back_but_points_advance() {
    let a = replica(1_000);
    let b = replica(2_000);
    put_all(&a, (0..10).map(|i| format!("a{i}")), 1);
    pass(&a, &b, Limits::default());
    // B's log now holds A's rows; sending to A skips them but covers them.
    let rep = pass(&b, &a, Limits::default());
    assert_eq!(rep.sent, 0);
    assert_eq!(rep.end, b.head().max_row as i64);
    assert_eq!(incoming(&a, &b), b.head().max_row as i64);
}
