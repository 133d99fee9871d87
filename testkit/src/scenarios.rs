//! The protocol conformance scenarios of DESIGN §9, generic over the store.
//!
//! One body per scenario runs against any `Backend`: the in-memory reference store and
//! the server's `SqliteStore`, whose behaviour must be identical. A backend also says how
//! to take a backup, so the restore scenarios exercise real SQLite file copies.
//! `conformance!(name, backend)` declares one `#[test]` per scenario.

use futures::executor::block_on;
use serde_json::{json, Map, Value};
use tidemark::merge::DocState;
use tidemark::store::{Store, StoredDoc};
use tidemark::sync::drive;
use tidemark::sync::pass::{wants_snapshot, Limits, PassReport};
use tidemark::sync::transport::pipe;
use tidemark::{Replica, Schema, Write};

/// Where a scenario's replicas keep their data.
pub trait Backend {
    type S: Store<Doc = Map<String, Value>>;
    /// A new, empty store.
    fn fresh(&self) -> Self::S;
    /// A copy of what `store` holds right now, as a restored backup would hold it.
    fn backup(&self, store: &Self::S) -> Self::S;
    /// Every stored document of a collection, ordered by id.
    fn dump(&self, store: &Self::S, collection: &str) -> Vec<StoredDoc>;
}

/// The engine's in-memory reference store; a backup is a copy.
pub struct Memory;

impl Backend for Memory {
    type S = tidemark::memory::MemoryStore;
    fn fresh(&self) -> Self::S {
        tidemark::memory::MemoryStore::new()
    }
    fn backup(&self, store: &Self::S) -> Self::S {
        store.backup()
    }
    fn dump(&self, store: &Self::S, collection: &str) -> Vec<StoredDoc> {
        store.dump(collection)
    }
}

pub fn schema() -> Schema {
    Schema::from_json(json!({"version": 1, "collections": {"docs": {"primaryKey": "id", "indexes": {"byN": "n"}}}})).unwrap()
}

pub fn replica_at<S: Store>(store: S, wall: u64) -> Replica<S> {
    block_on(Replica::open(store, schema(), Box::new(move || wall))).unwrap()
}

fn replica<B: Backend>(b: &B, wall: u64) -> Replica<B::S> {
    replica_at(b.fresh(), wall)
}

fn put_all<S: Store>(r: &Replica<S>, ids: impl Iterator<Item = String>, n: i64) {
    let writes: Vec<Write> = ids
        .map(|id| Write::Put { collection: "docs".into(), doc: json!({"id": id, "n": n}).as_object().unwrap().clone() })
        .collect();
    for chunk in writes.chunks(500) {
        block_on(r.write(chunk.to_vec())).unwrap();
    }
}

/// One pass from `s` to `r` over an in-memory pipe (through the wire format).
pub fn pass<S: Store, R: Store>(s: &Replica<S>, r: &Replica<R>, limits: Limits) -> PassReport {
    try_pass(s, r, limits, None).expect("the pass succeeds")
}

/// A pass that may be cut after `cut` messages from the sender; `None` if it failed.
pub fn try_pass<S: Store, R: Store>(s: &Replica<S>, r: &Replica<R>, limits: Limits, cut: Option<usize>) -> Option<PassReport> {
    both_sides(s, r, limits, cut).map(|(sent, _)| sent)
}

/// One pass; the receiver's report (which says whether it was a reset).
pub fn pass_received<S: Store, R: Store>(s: &Replica<S>, r: &Replica<R>, limits: Limits) -> PassReport {
    both_sides(s, r, limits, None).expect("the pass succeeds").1
}

fn both_sides<S: Store, R: Store>(s: &Replica<S>, r: &Replica<R>, limits: Limits, cut: Option<usize>) -> Option<(PassReport, PassReport)> {
    let (mut a, mut b) = pipe();
    a.cut_after = cut;
    let (sid, rid) = (s.head().db_id, r.head().db_id);
    let session = tidemark::peer::new_session();
    let (sent, got) = block_on(futures::future::join(
        drive::send(s, &mut a, &rid, &session, limits, &mut |_| {}),
        drive::receive(r, &mut b, &sid, &session, &mut |_| {}),
    ));
    match (sent, got) {
        (Ok(sent), Ok(got)) => {
            assert_eq!(sent.end, got.end);
            Some((sent, got))
        }
        _ if cut.is_some() => None,
        (s, g) => panic!("pass failed: {s:?} / {g:?}"),
    }
}

pub fn docs<S: Store<Doc = Map<String, Value>>>(r: &Replica<S>) -> Vec<Map<String, Value>> {
    block_on(r.query("docs", &json!({}))).unwrap()
}

fn incoming<S: Store, F: Store>(r: &Replica<S>, from: &Replica<F>) -> i64 {
    block_on(r.store().peers()).unwrap().get(&from.head().db_id).map_or(-1, |p| p.incoming)
}

fn outgoing<S: Store, T: Store>(r: &Replica<S>, to: &Replica<T>) -> i64 {
    block_on(r.store().peers()).unwrap().get(&to.head().db_id).map_or(-1, |p| p.outgoing)
}

const SMALL: Limits = Limits { per_diff: 10, max_diffs: 3 };

pub fn a_batch_of_only_stale_rows_still_advances_incoming<B: Backend>(b: &B) {
    let s = replica(b, 1_000);
    let r = replica(b, 9_000);
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

/// A history of `n` rows from `s` that `r` already holds (one diff pass): a capped pass
/// needs a gap of no more than half the sender's rows, or seed 000's rule sends a
/// snapshot instead.
fn synced_history<S: Store, R: Store>(s: &Replica<S>, r: &Replica<R>, prefix: &str, n: usize) {
    put_all(s, (0..n).map(|i| format!("{prefix}{i:03}")), 0);
    let rep = pass(s, r, Limits { per_diff: n.max(1), max_diffs: 1 });
    assert!(!rep.snapshot && !rep.capped, "{rep:?}");
}

pub fn diff_capped_pass_resumes_and_completes<B: Backend>(b: &B) {
    let s = replica(b, 1_000);
    let r = replica(b, 9_000);
    put_all(&r, (0..100).map(|i| format!("d{i:03}")), 2);
    // S wrote the same 60 documents before (older than R's copies) and R has those rows.
    synced_history(&s, &r, "d", 60);
    put_all(&s, (0..50).map(|i| format!("d{i:03}")), 1);
    put_all(&s, std::iter::once("new".to_string()), 1);
    let first = pass(&s, &r, SMALL);
    assert!(first.capped && !first.snapshot);
    assert_eq!((first.batches, first.start, first.end), (3, 60, 90));
    assert_eq!(incoming(&r, &s), 90);
    let second = pass(&s, &r, SMALL);
    assert!(!second.capped);
    assert_eq!(second.start, 90);
    assert_eq!(incoming(&r, &s), 111);
    let all = docs(&r);
    assert_eq!(all.len(), 101);
    assert!(all.iter().filter(|d| d["id"] != "new").all(|d| d["n"] == 2));
    assert!(all.iter().any(|d| d["id"] == "new"));
}

pub fn a_capped_pass_forwards_no_third_party_points_and_records_no_outgoing<B: Backend>(b: &B) {
    let x = replica(b, 1_000);
    let s = replica(b, 2_000);
    let r = replica(b, 3_000);
    synced_history(&s, &r, "h", 50);
    let acked = outgoing(&s, &r);
    put_all(&x, (0..3).map(|i| format!("x{i}")), 1);
    pass(&x, &s, Limits::default());
    put_all(&s, (0..40).map(|i| format!("s{i}")), 1);
    put_all(&r, (0..40).map(|i| format!("r{i}")), 1);
    let rep = pass(&s, &r, SMALL);
    assert!(rep.capped && !rep.snapshot);
    assert_eq!(incoming(&r, &x), -1, "no third-party point");
    assert_eq!(outgoing(&s, &r), acked, "no outgoing after a capped pass");
    while pass(&s, &r, SMALL).capped {}
    assert_eq!(incoming(&r, &x), 3, "forwarded after the complete pass");
    assert_eq!(outgoing(&s, &r), s.head().max_row as i64);
}

/// Points merged 5, then 4, then −1 stay 5 — here through the store, so the durable
/// record (not only the in-memory type) keeps the maximum.
pub fn points_only_move_forward<B: Backend>(b: &B) {
    let r = replica(b, 1_000);
    for row in [5, 4, -1] {
        block_on(tidemark::sync::apply::finish_incoming(&r, "peer", "s", row, vec![], Default::default())).unwrap();
    }
    let peers = block_on(r.store().peers()).unwrap();
    assert_eq!(peers["peer"].incoming, 5);
}

/// Seed 000's rule on the gap since the receiver's point (perDiff 10, sender maxRow 20):
/// point 9 → snapshot (11 rows to send), point 10 → diffs (10 rows) — whatever the
/// receiver holds itself (nothing, or more rows than the sender).
pub fn fifty_percent_rule<B: Backend>(b: &B) {
    assert!(wants_snapshot(20, 11, 10, false));
    assert!(!wants_snapshot(20, 10, 10, false));
    assert!(!wants_snapshot(2_000, 1_000, 10, false), "half is not more than half");
    assert!(!wants_snapshot(20, 15, 100, false), "not more than one batch");
    assert!(wants_snapshot(20, 0, 10, true), "a point before the compaction horizon");
    let limits = Limits { per_diff: 10, max_diffs: 10 };
    for (point, own, snap) in [(9, 0, true), (10, 0, false), (9, 50, true), (10, 50, false)] {
        let s = replica(b, 1_000);
        let r = replica(b, 2_000);
        put_all(&r, (0..own).map(|i| format!("r{i}")), 1);
        put_all(&s, (0..point).map(|i| format!("s{i}")), 1);
        assert!(!pass(&s, &r, limits).snapshot);
        assert_eq!(incoming(&r, &s), point as i64);
        put_all(&s, (point..20).map(|i| format!("s{i}")), 1);
        let rep = pass(&s, &r, limits);
        assert_eq!((rep.start, rep.snapshot), (point as i64, snap), "point {point}, receiver rows {own}");
        assert_eq!(docs(&r).len(), 20 + own);
        assert_eq!(incoming(&r, &s), 20);
    }
}

/// The edit-history case (issue 12): 100 notes edited 20 times, each round synced as
/// diffs (the server holds 2,100 rows); a replica joins by snapshot and holds far fewer
/// rows — then every new row reaches it as one row, never another snapshot, and nothing
/// is reported as a reset. The same between two servers (relays).
pub fn edit_history_pulls_stay_incremental<B: Backend>(b: &B) {
    let server = relay(b, 5_000);
    let writer = replica(b, 1_000);
    put_all(&writer, (0..100).map(|i| format!("note{i:03}")), 0);
    for edit in 0..=20 {
        if edit > 0 {
            let writes = (0..100).map(|i| Write::Patch { collection: "docs".into(), id: format!("note{i:03}"), fields: json!({"n": edit}).as_object().unwrap().clone() });
            block_on(writer.write(writes.collect())).unwrap();
        }
        let rep = pass(&writer, &server, Limits::default());
        assert!(!rep.snapshot && rep.sent == 100, "edit {edit}: {rep:?}");
    }
    assert_eq!(server.head().max_row, 2_100);
    let joiner = replica(b, 2_000);
    let join = pass_received(&server, &joiner, Limits::default());
    assert!(join.snapshot && !join.reset && join.received == 100, "{join:?}");
    assert!(joiner.head().max_row < 1_000, "the joiner holds far fewer rows than the server");
    let second = relay(b, 6_000);
    let relay_join = pass(&server, &second, Limits::default());
    assert!(relay_join.snapshot);
    for k in 0..5 {
        block_on(writer.patch("docs", &format!("note{k:03}"), json!({"n": 100 + k}).as_object().unwrap().clone())).unwrap();
        pass(&writer, &server, Limits::default());
        for (rep, who) in [(pass_received(&server, &joiner, Limits::default()), "joiner"), (pass_received(&server, &second, Limits::default()), "server")] {
            assert!(!rep.snapshot && !rep.reset && !rep.capped, "{who}, new row {k}: {rep:?}");
            assert_eq!(rep.received, 1, "{who}, new row {k}: one row per pull");
        }
        // Its own first push covers what it holds and sends nothing.
        let back = pass(&joiner, &server, Limits::default());
        assert!(!back.snapshot && back.sent == 0, "{back:?}");
    }
    assert_eq!(docs(&joiner), docs(&writer));
    assert_eq!(b.dump(second.store(), "docs"), b.dump(server.store(), "docs"));
}

pub fn a_snapshot_merges_and_keeps_unsynced_local_writes<B: Backend>(b: &B) {
    let s = replica(b, 1_000);
    let r = replica(b, 5_000);
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

pub fn a_rebuilt_replica_gets_a_new_db_id_and_peers_start_over<B: Backend>(b: &B) {
    let s = replica(b, 1_000);
    let r = replica(b, 2_000);
    put_all(&s, (0..5).map(|i| format!("d{i}")), 1);
    pass(&s, &r, Limits::default());
    let rebuilt = replica(b, 2_000);
    assert_ne!(rebuilt.head().db_id, r.head().db_id);
    let rep = pass(&s, &rebuilt, Limits { per_diff: 100, max_diffs: 10 });
    assert_eq!(rep.start, -1);
    assert_eq!(docs(&rebuilt).len(), 5);
}

pub fn transitive_fast_forward<B: Backend>(b: &B) {
    let a = replica(b, 1_000);
    let bb = replica(b, 2_000);
    let c = replica(b, 3_000);
    put_all(&a, (0..20).map(|i| format!("a{i}")), 1);
    pass(&a, &bb, Limits::default());
    put_all(&bb, (0..20).map(|i| format!("b{i}")), 1);
    pass(&bb, &c, Limits::default());
    assert_eq!(incoming(&c, &a), 20);
    let rep = pass(&a, &c, Limits::default());
    assert_eq!(rep.start, 20, "A→C starts where C already is for A");
    assert_eq!(rep.sent, 0);
}

pub fn a_restored_replica_is_not_fast_forwarded_past_rows_it_lost<B: Backend>(b: &B) {
    let client = replica(b, 1_000);
    let server = replica(b, 2_000);
    put_all(&client, (0..10).map(|i| format!("d{i}")), 1);
    pass(&client, &server, Limits::default());
    let backup = b.backup(server.store());
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

pub fn a_restored_sender_does_not_reuse_forgotten_points<B: Backend>(b: &B) {
    // The server (sender) is restored; a client that pulled rows the server lost must not
    // skip the server's new rows that reuse those row numbers.
    let server = replica(b, 1_000);
    let client = replica(b, 2_000);
    put_all(&server, (0..10).map(|i| format!("a{i}")), 1);
    pass(&server, &client, Limits { per_diff: 100, max_diffs: 10 });
    let backup = b.backup(server.store());
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

pub fn echoes_are_not_sent_back_but_points_advance<B: Backend>(b: &B) {
    let a = replica(b, 1_000);
    let bb = replica(b, 2_000);
    put_all(&a, (0..10).map(|i| format!("a{i}")), 1);
    pass(&a, &bb, Limits::default());
    // B's log now holds A's rows; sending to A skips them but covers them.
    let rep = pass(&bb, &a, Limits::default());
    assert_eq!(rep.sent, 0);
    assert_eq!(rep.end, bb.head().max_row as i64);
    assert_eq!(incoming(&a, &bb), bb.head().max_row as i64);
}

/// A relay (the server's kind of replica, no schema) in the middle: two clients converge
/// through it, and it keeps every collection it is given.
pub fn clients_converge_through_a_relay<B: Backend>(b: &B) {
    let relay = block_on(Replica::open_relay(b.fresh(), Box::new(|| 5_000))).unwrap();
    let c1 = replica(b, 1_000);
    let c2 = replica(b, 2_000);
    put_all(&c1, (0..30).map(|i| format!("d{i:02}")), 1);
    put_all(&c2, (15..45).map(|i| format!("d{i:02}")), 2);
    for _ in 0..2 {
        for c in [&c1, &c2] {
            while pass(c, &relay, SMALL).capped {}
            while pass(&relay, c, SMALL).capped {}
        }
    }
    assert_eq!(docs(&c1), docs(&c2));
    assert_eq!(docs(&c1).len(), 45);
    assert_eq!(b.dump(relay.store(), "docs").len(), 45);
}

// ---- Checkpoints between servers (CouchDB-style cases, issue 7) ----
//
// Servers are relays (no schema), as `tidemark-server` opens them; each pass runs through
// the wire format. "Data-moving" passes are those that cover rows; idle passes (nothing to
// move from a session both sides share) record no new session.

fn relay<B: Backend>(b: &B, wall: u64) -> Replica<B::S> {
    block_on(Replica::open_relay(b.fresh(), Box::new(move || wall))).unwrap()
}

fn relay_over<S: Store>(store: S, wall: u64) -> Replica<S> {
    block_on(Replica::open_relay(store, Box::new(move || wall))).unwrap()
}

fn record<S: Store, P: Store>(r: &Replica<S>, peer: &Replica<P>) -> tidemark::peer::PeerRecord {
    block_on(r.store().peers()).unwrap().get(&peer.head().db_id).cloned().unwrap_or_else(tidemark::peer::PeerRecord::new)
}

/// Rewrites `r`'s record of `peer` (as if a checkpoint had been lost).
fn edit_record<S: Store, P: Store>(r: &Replica<S>, peer: &Replica<P>, f: impl FnOnce(&mut tidemark::peer::PeerRecord)) {
    let id = peer.head().db_id;
    let mut rec = record(r, peer);
    f(&mut rec);
    let keys = vec![id.clone()];
    block_on(r.store().commit(&[], &keys, move |_| Ok(tidemark::store::Commit { peers: vec![(id, rec)], ..Default::default() }))).unwrap();
}

/// Relays take no local writes: a fresh client writes the documents and pushes them.
fn feed<B: Backend>(b: &B, r: &Replica<B::S>, ids: impl Iterator<Item = String>) {
    let w = replica(b, 500);
    put_all(&w, ids, 1);
    pass(&w, r, Limits { per_diff: 100, max_diffs: 100 });
}

fn log_len<S: Store>(r: &Replica<S>) -> usize {
    block_on(r.store().rows_after(0, usize::MAX)).unwrap().len()
}

/// Three data-moving passes from `s1` to `s2` ending at rows 10, 20 and 30 of `s1`.
fn three_sessions<B: Backend>(b: &B, s1: &Replica<B::S>, s2: &Replica<B::S>) {
    for k in 0..3 {
        feed(b, s1, (0..10).map(|i| format!("k{k}-{i}")));
        let rep = pass(s1, s2, Limits::default());
        assert_eq!((rep.start, rep.end), (if k == 0 { -1 } else { k * 10 }, k * 10 + 10));
    }
}

/// Matching sessions resume: each pass starts where the last one both sides recorded
/// ended, and the two sides record the same session.
pub fn matching_sessions_resume<B: Backend>(b: &B) {
    let s1 = relay(b, 1_000);
    let s2 = relay(b, 2_000);
    three_sessions(b, &s1, &s2);
    let (out, inn) = (record(&s1, &s2), record(&s2, &s1));
    assert_eq!(out.newest_out().map(|e| (&e.session, e.row)), inn.newest_in().map(|e| (&e.session, e.row)));
    feed(b, &s1, (0..5).map(|i| format!("more{i}")));
    let rep = pass(&s1, &s2, Limits::default());
    assert_eq!((rep.start, rep.sent, rep.end), (30, 5, 35));
    assert_eq!(b.dump(s2.store(), "docs"), b.dump(s1.store(), "docs"));
}

/// A peer that lost its last checkpoint (either side's record of the newest session)
/// resumes from the newest session both still remember, not from the beginning.
pub fn a_lost_checkpoint_resumes_from_the_newest_common_session<B: Backend>(b: &B) {
    for receiver_lost in [true, false] {
        let s1 = relay(b, 1_000);
        let s2 = relay(b, 2_000);
        three_sessions(b, &s1, &s2);
        if receiver_lost {
            edit_record(&s2, &s1, |r| {
                r.in_history.pop();
            });
        } else {
            edit_record(&s1, &s2, |r| {
                r.out_history.pop();
            });
        }
        feed(b, &s1, (0..5).map(|i| format!("more{i}")));
        let before = log_len(&s2);
        let rep = pass(&s1, &s2, Limits::default());
        // From the newest common session: the 10 rows after it are covered, not sent
        // again — the receiver's marks show it holds them — and the 5 new ones are sent.
        assert_eq!((rep.start, rep.end, rep.sent), (20, 35, 5), "receiver lost it: {receiver_lost}");
        assert_eq!(log_len(&s2), before + 5, "re-sent rows are not stored twice");
        assert_eq!(b.dump(s2.store(), "docs"), b.dump(s1.store(), "docs"));
    }
}

/// A peer restored from a backup resumes from the session the backup remembers — in both
/// roles — and gets back the rows it lost; polling (idle passes) in between changes nothing.
pub fn a_restored_peer_resumes_from_the_backups_session<B: Backend>(b: &B) {
    // The receiver is restored.
    let s1 = relay(b, 1_000);
    let s2 = relay(b, 2_000);
    three_sessions(b, &s1, &s2);
    let saved = b.backup(s2.store());
    feed(b, &s1, (0..10).map(|i| format!("lost{i}")));
    pass(&s1, &s2, Limits::default());
    for _ in 0..3 * tidemark::peer::HISTORY {
        assert_eq!(pass(&s1, &s2, Limits::default()).sent, 0);
        assert_eq!(pass(&s2, &s1, Limits::default()).sent, 0);
    }
    let s2 = relay_over(saved, 2_000);
    let rep = pass(&s1, &s2, Limits::default());
    assert_eq!((rep.start, rep.sent), (30, 10), "from the backup's session, not from the start");
    assert_eq!(b.dump(s2.store(), "docs"), b.dump(s1.store(), "docs"));

    // The sender is restored: the receiver pulls from the backup's session, and gets the
    // sender's new rows even though they reuse row numbers it saw before.
    let s1 = relay(b, 1_000);
    let s2 = relay(b, 2_000);
    three_sessions(b, &s1, &s2);
    let saved = b.backup(s1.store());
    feed(b, &s1, (0..10).map(|i| format!("lost{i}")));
    pass(&s1, &s2, Limits::default());
    let s1 = relay_over(saved, 1_000);
    feed(b, &s1, (0..10).map(|i| format!("new{i}")));
    let rep = pass(&s1, &s2, Limits::default());
    assert_eq!((rep.start, rep.sent), (30, 10));
    while pass(&s2, &s1, Limits::default()).capped {}
    assert_eq!(b.dump(s1.store(), "docs").len(), 50);
    assert_eq!(b.dump(s2.store(), "docs"), b.dump(s1.store(), "docs"));
}

/// No common history (the backup predates every session still remembered): the pass starts
/// from the beginning, and re-sent rows are merged without being stored twice.
pub fn no_common_history_starts_from_the_beginning<B: Backend>(b: &B) {
    let s1 = relay(b, 1_000);
    let s2 = relay(b, 2_000);
    feed(b, &s2, (0..5).map(|i| format!("own{i}")));
    let saved = b.backup(s2.store());
    for k in 0..tidemark::peer::HISTORY as i64 + 2 {
        feed(b, &s1, std::iter::once(format!("k{k}")));
        assert_eq!(pass(&s1, &s2, Limits::default()).start, if k == 0 { -1 } else { k });
    }
    let s2 = relay_over(saved, 2_000);
    feed(b, &s1, std::iter::once("last".to_string()));
    let rep = pass(&s1, &s2, Limits { per_diff: 100, max_diffs: 10 });
    assert_eq!((rep.start, rep.sent), (-1, s1.head().max_row));
    assert_eq!(log_len(&s2), 5 + s1.head().max_row as usize);
    // Starting over with a replica that kept everything stores nothing twice either.
    let s3 = relay(b, 3_000);
    pass(&s1, &s3, Limits { per_diff: 100, max_diffs: 10 });
    edit_record(&s3, &s1, |r| *r = tidemark::peer::PeerRecord::new());
    let before = log_len(&s3);
    let rep = pass(&s1, &s3, Limits { per_diff: 100, max_diffs: 10 });
    assert_eq!(rep.start, -1);
    assert_eq!(log_len(&s3), before);
}

/// A→B and B→C complete, then A→C starts at the point C holds for A — only because A
/// still remembers the session that point came from: a restored A that forgot it starts
/// over. With a relay in every role.
pub fn transitive_fast_forward_is_verified_with_the_origins_sessions<B: Backend>(b: &B) {
    let a = relay(b, 1_000);
    let bb = relay(b, 2_000);
    let c = relay(b, 3_000);
    feed(b, &a, (0..20).map(|i| format!("a{i}")));
    let saved = b.backup(a.store());
    pass(&a, &bb, Limits::default());
    feed(b, &bb, (0..20).map(|i| format!("b{i}")));
    pass(&bb, &c, Limits::default());
    assert_eq!(incoming(&c, &a), 20);
    // Polling in between (idle passes) does not make A forget the session.
    for _ in 0..3 * tidemark::peer::HISTORY {
        pass(&a, &bb, Limits::default());
        pass(&bb, &c, Limits::default());
    }
    let restored = relay_over(b.backup(a.store()), 1_000);
    let rep = pass(&a, &c, Limits::default());
    assert_eq!((rep.start, rep.sent), (20, 0), "A→C starts where C already is for A");
    // A copy of A from before it met B does not remember that session: no fast-forward.
    let forgot = relay_over(saved, 1_000);
    let c2 = relay(b, 4_000);
    pass(&bb, &c2, Limits::default());
    assert_eq!(incoming(&c2, &a), 20);
    let rep = pass(&forgot, &c2, Limits::default());
    assert_eq!(rep.start, -1, "an unconfirmed transitive point is never used");
    // A restored after meeting B still remembers it.
    let c3 = relay(b, 5_000);
    pass(&bb, &c3, Limits::default());
    assert_eq!(pass(&restored, &c3, Limits::default()).start, 20);
}

/// After a capped B→C pass, C claims nothing for A: an A→C pass starts from the beginning.
pub fn a_capped_pass_claims_nothing_for_third_parties<B: Backend>(b: &B) {
    let a = relay(b, 1_000);
    let bb = relay(b, 2_000);
    let c = relay(b, 3_000);
    feed(b, &bb, (0..50).map(|i| format!("h{i}")));
    pass(&bb, &c, Limits { per_diff: 50, max_diffs: 1 });
    feed(b, &a, (0..5).map(|i| format!("a{i}")));
    pass(&a, &bb, Limits::default());
    feed(b, &bb, (0..40).map(|i| format!("b{i}")));
    feed(b, &c, (0..40).map(|i| format!("c{i}")));
    assert!(pass(&bb, &c, SMALL).capped);
    assert_eq!(incoming(&c, &a), -1);
    let rep = pass(&a, &c, Limits::default());
    assert_eq!((rep.start, rep.sent), (-1, 5));
}

/// Idle passes record no session, so a replica polling its peers keeps the sessions that
/// transitive points and restores rely on (the history is short: `peer::HISTORY`).
pub fn idle_passes_record_no_session<B: Backend>(b: &B) {
    let s1 = relay(b, 1_000);
    let s2 = relay(b, 2_000);
    three_sessions(b, &s1, &s2);
    let (out, inn) = (record(&s1, &s2).out_history, record(&s2, &s1).in_history);
    for _ in 0..3 * tidemark::peer::HISTORY {
        let rep = pass(&s1, &s2, Limits::default());
        assert_eq!((rep.start, rep.end, rep.sent), (30, 30, 0));
    }
    assert_eq!(record(&s1, &s2).out_history, out);
    assert_eq!(record(&s2, &s1).in_history, inn);
    // A pass that moves rows records its session as before.
    feed(b, &s1, std::iter::once("x".to_string()));
    pass(&s1, &s2, Limits::default());
    assert_eq!(record(&s1, &s2).out_history.len(), out.len() + 1);
}

// ---- Incremental sync (issue 12) ----

/// A replica that pulled many rows (by snapshot) and then wrote 51 pushes them at perDiff
/// 10 × maxDiffs 3 in exactly two passes: the rows it pulled are covered, not sent, and
/// batches that only cover rows do not count against the cap. A pass that then sends
/// nothing is not capped.
pub fn a_push_after_a_big_pull_is_not_capped_by_covered_rows<B: Backend>(b: &B) {
    let server = relay(b, 5_000);
    let writer = replica(b, 1_000);
    put_all(&writer, (0..3_000).map(|i| format!("w{i:04}")), 1);
    pass(&writer, &server, Limits::default());
    let c = replica(b, 2_000);
    assert!(pass(&server, &c, Limits::default()).snapshot);
    put_all(&c, (0..51).map(|i| format!("c{i:02}")), 2);
    let mut reports = Vec::new();
    loop {
        let rep = pass(&c, &server, SMALL);
        assert!(!rep.snapshot, "{rep:?}");
        reports.push((rep.sent, rep.capped));
        if !rep.capped || reports.len() > 10 {
            break;
        }
    }
    assert_eq!(reports, vec![(30, true), (21, false)], "51 rows in two passes");
    let idle = pass(&c, &server, SMALL);
    assert_eq!((idle.sent, idle.capped), (0, false));
    assert_eq!(b.dump(server.store(), "docs").len(), 3_051);
}

/// Three servers in a line (relays 0 – 1 – 2). A client that synced with server 0 moves to
/// server 2 after server 2 forgot every session its checkpoints could vouch for: the pass
/// from server 2 starts from scratch, yet it pushes only its 5 offline writes and pulls
/// only the 9 rows written since it left — not the 130 server 2 holds that it already
/// has, which came to server 2 by another path. Its marks say what it holds.
pub fn a_moving_client_transfers_only_what_is_missing<B: Backend>(b: &B) {
    let s: Vec<Replica<B::S>> = (0..3).map(|i| relay(b, 1_000 + i)).collect();
    let mover = replica(b, 4_000);
    let other = replica(b, 5_000);
    let full = Limits::default();
    let around = |s: &[Replica<B::S>]| {
        for _ in 0..2 {
            for (x, y) in [(0, 1), (1, 2), (2, 1), (1, 0)] {
                while pass(&s[x], &s[y], full).capped {}
            }
        }
    };
    put_all(&other, (0..30).map(|i| format!("o{i:02}")), 1);
    pass(&other, &s[2], full);
    put_all(&mover, (0..100).map(|i| format!("m{i:03}")), 1);
    pass(&mover, &s[0], full);
    around(&s);
    let pulled = pass(&s[0], &mover, full);
    assert_eq!(pulled.sent, 30, "the other client's rows, not its own");
    // Server 2 moves on: more data-moving passes to server 1 than its session history
    // holds, so no checkpoint the mover learned about server 2 can be confirmed.
    for k in 0..=tidemark::peer::HISTORY {
        put_all(&other, std::iter::once(format!("late{k}")), 2);
        pass(&other, &s[2], full);
        pass(&s[2], &s[1], full);
    }
    put_all(&mover, (0..5).map(|i| format!("away{i}")), 3);
    let small = Limits { per_diff: 10, max_diffs: 3 };
    let push = pass(&mover, &s[2], small);
    assert_eq!((push.sent, push.snapshot, push.capped), (5, false, false), "{push:?}");
    let pull = pass(&s[2], &mover, small);
    assert_eq!(pull.start, -1, "no checkpoint to start from");
    assert_eq!((pull.sent, pull.snapshot, pull.capped), (9, false, false), "{pull:?}");
    assert_eq!(pull.end, s[2].head().max_row as i64);
    assert_eq!(docs(&mover).len(), 144);
    around(&s);
    assert_eq!(b.dump(s[0].store(), "docs"), b.dump(s[2].store(), "docs"));
}

/// Two servers that both got a client's rows straight from it transfer none of them to
/// each other: each one's marks show it holds them, so the passes only cover them.
pub fn servers_that_both_got_a_clients_rows_transfer_nothing_twice<B: Backend>(b: &B) {
    let (one, two) = (relay(b, 1_000), relay(b, 2_000));
    let c = replica(b, 3_000);
    put_all(&c, (0..50).map(|i| format!("c{i:02}")), 1);
    pass(&c, &one, Limits::default());
    pass(&c, &two, Limits::default());
    for (x, y) in [(&one, &two), (&two, &one)] {
        let rep = pass(x, y, Limits::default());
        assert_eq!((rep.sent, rep.end), (0, x.head().max_row as i64), "{rep:?}");
    }
    // A row only one of them has still travels.
    put_all(&c, std::iter::once("late".to_string()), 2);
    pass(&c, &one, Limits::default());
    assert_eq!(pass(&one, &two, Limits::default()).sent, 1);
    assert_eq!(b.dump(one.store(), "docs"), b.dump(two.store(), "docs"));
}

fn wide_schema() -> Schema {
    Schema::from_json(json!({"version": 1, "collections": {"docs": {"primaryKey": "id", "indexes": {"byN": "n"}}, "notes": {"primaryKey": "id"}}})).unwrap()
}

/// A replica whose schema lacks a collection still forwards its rows — and a snapshot it
/// sends carries them too: every row the snapshot claims to cover arrives.
pub fn a_snapshot_carries_collections_the_sender_does_not_store<B: Backend>(b: &B) {
    let server = relay(b, 5_000);
    let wide = block_on(Replica::open(b.fresh(), wide_schema(), Box::new(|| 1_000))).unwrap();
    let notes: Vec<Write> = (0..20).map(|i| Write::Put { collection: "notes".into(), doc: json!({"id": format!("n{i:02}"), "text": i}).as_object().unwrap().clone() }).collect();
    block_on(wide.write(notes)).unwrap();
    block_on(wide.patch("notes", "n03", json!({"text": "edited"}).as_object().unwrap().clone())).unwrap();
    block_on(wide.delete("notes", "n04")).unwrap();
    put_all(&wide, (0..5).map(|i| format!("w{i}")), 1);
    pass(&wide, &server, Limits::default());
    let narrow = replica(b, 2_000);
    pass(&server, &narrow, Limits::default());
    assert!(block_on(narrow.query("notes", &json!({}))).is_err(), "the narrow replica does not store notes");
    put_all(&narrow, (0..30).map(|i| format!("own{i}")), 2);
    // A fresh relay gets the narrow replica's data by snapshot.
    let fresh = relay(b, 6_000);
    let rep = pass(&narrow, &fresh, SMALL);
    assert!(rep.snapshot, "{rep:?}");
    assert_eq!(b.dump(fresh.store(), "notes"), b.dump(server.store(), "notes"), "every note, the edit and the delete included");
    assert_eq!(b.dump(fresh.store(), "notes").len(), 20);
    assert_eq!(b.dump(fresh.store(), "docs").len(), 35);
    // And on to a replica that stores notes.
    let reader = block_on(Replica::open(b.fresh(), wide_schema(), Box::new(|| 7_000))).unwrap();
    pass(&fresh, &reader, Limits::default());
    let got = block_on(reader.query("notes", &json!({"orderBy": "id"}))).unwrap();
    assert_eq!(got.len(), 19);
    assert_eq!(got[3]["text"], "edited");
}

fn versioned(v: u32) -> Schema {
    Schema::from_json(json!({"version": v, "collections": {"docs": {"primaryKey": "id", "indexes": {"byN": "n"}}}})).unwrap()
}

/// Version 2 marks every document it migrates (deterministic, as migrations must be);
/// the simulation's mixed-version clients use it too. It reads no other document, so a
/// reset migrates its documents as their snapshot chunks arrive (`reads_others`); the
/// migrations of `tests/reset.rs` read other documents and take the path where all are
/// migrated at the end.
pub struct MarkV2;
impl tidemark::migrate::Migrator for MarkV2 {
    fn has_step(&self, to: u32) -> bool {
        to == 2
    }
    fn reads_others(&self, _: u32) -> bool {
        false
    }
    fn migrate(&self, _: u32, _: &str, docs: Vec<Map<String, Value>>, _: &dyn tidemark::migrate::Context) -> Result<Vec<Option<Map<String, Value>>>, tidemark::error::MigrateError> {
        Ok(docs
            .into_iter()
            .map(|mut d| {
                d.insert("v2".into(), json!(true));
                Some(d)
            })
            .collect())
    }
}

/// `reset` is reported when older-version data changed something, not whenever a
/// snapshot holds older layers: a second snapshot whose version-1 data the replica has
/// already migrated is no reset.
pub fn reset_only_when_older_version_data_changes_something<B: Backend>(b: &B) {
    let at = |v: u32, wall: u64| {
        let schemas = tidemark::migrate::Schemas::new(versioned(v), (1..v).map(versioned).collect()).unwrap();
        block_on(Replica::open_migrating(b.fresh(), schemas, Box::new(MarkV2), Box::new(move || wall))).unwrap()
    };
    let limits = Limits { per_diff: 10, max_diffs: 100 };
    let server = relay(b, 5_000);
    let old = at(1, 1_000);
    put_all(&old, (0..30).map(|i| format!("old{i:02}")), 1);
    pass(&old, &server, limits);
    let c = at(2, 2_000);
    let first = pass_received(&server, &c, limits);
    assert!(first.snapshot && first.reset, "{first:?}");
    assert!(docs(&c).iter().all(|d| d["v2"] == true));
    pass(&c, &server, limits);
    assert!(!pass_received(&server, &c, limits).reset);
    // Many new version-2 rows: the next pull is a snapshot again, with the same
    // version-1 layers — nothing older changed, so no reset.
    let new = at(2, 3_000);
    put_all(&new, (0..300).map(|i| format!("new{i:03}")), 2);
    while pass(&new, &server, limits).capped {}
    let second = pass_received(&server, &c, limits);
    assert!(second.snapshot && !second.reset, "{second:?}");
    assert_eq!(docs(&c).len(), 330);
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// DESIGN §9's last scenario: five replicas, random writes, random partitions, capped and
/// cut passes; after healing all hold identical documents, equal to merging every write.
pub fn five_replicas_converge<B: Backend>(b: &B, seed: u64) {
    let mut rng = Rng(seed | 1);
    let replicas: Vec<Replica<B::S>> = (0..5).map(|i| replica(b, 1_000 + i * 7)).collect();
    for step in 0..200 {
        let who = rng.below(5) as usize;
        if rng.below(3) > 0 {
            let id = format!("d{}", rng.below(12));
            let w = match rng.below(4) {
                0 => Write::Delete { collection: "docs".into(), id },
                1 => Write::Patch { collection: "docs".into(), id, fields: json!({"b.x": step, "n": rng.below(4)}).as_object().unwrap().clone() },
                _ => Write::Put { collection: "docs".into(), doc: json!({"id": id, "n": rng.below(4), "b": {"y": step}}).as_object().unwrap().clone() },
            };
            let _ = block_on(replicas[who].write(vec![w]));
        } else {
            let to = rng.below(5) as usize;
            let partitioned = step < 100 && ((who < 2 && to >= 3) || (who >= 3 && to < 2));
            if to != who && !partitioned {
                let cut = (rng.below(5) == 0).then(|| rng.below(6) as usize);
                let limits = Limits { per_diff: 1 + rng.below(4) as usize, max_diffs: 1 + rng.below(3) as usize };
                try_pass(&replicas[who], &replicas[to], limits, cut);
            }
        }
    }
    let full = Limits { per_diff: 7, max_diffs: 2 };
    for _ in 0..4 {
        for i in 0..5 {
            for j in [(i + 1) % 5, (i + 4) % 5] {
                while pass(&replicas[i], &replicas[j], full).capped {}
            }
        }
    }
    let mut reference: std::collections::BTreeMap<String, DocState> = Default::default();
    for r in &replicas {
        for row in block_on(r.store().rows_after(0, usize::MAX)).unwrap() {
            if row.from.is_none() {
                reference.entry(row.op.id.clone()).or_default().apply(&row.op);
            }
        }
    }
    let expected: Vec<Map<String, Value>> = reference.iter().filter_map(|(id, st)| st.materialize("id", id)).collect();
    let first = serde_json::to_string(&b.dump(replicas[0].store(), "docs")).unwrap();
    for r in &replicas {
        assert_eq!(serde_json::to_string(&b.dump(r.store(), "docs")).unwrap(), first, "seed {seed}: replicas differ");
        assert_eq!(docs(r), expected, "seed {seed}: a write was lost or resurrected");
    }
}

// ---- Conflicts and resolutions (DESIGN §11) ----

/// A schema whose `tasks` keep conflicts.
pub fn conflict_schema() -> Schema {
    Schema::from_json(json!({"version": 1, "collections": {
        "docs": {"primaryKey": "id"},
        "tasks": {"primaryKey": "id", "conflicts": true}}})).unwrap()
}

fn tracked<B: Backend>(b: &B, wall: u64) -> Replica<B::S> {
    block_on(Replica::open(b.fresh(), conflict_schema(), Box::new(move || wall))).unwrap()
}

fn task_patch<S: Store>(r: &Replica<S>, fields: Value) {
    block_on(r.patch("tasks", "t1", fields.as_object().unwrap().clone())).unwrap();
}

fn conflicts_of<S: Store>(r: &Replica<S>) -> Value {
    Value::Object(block_on(r.conflicts("tasks", "t1")).unwrap())
}

fn task<S: Store>(r: &Replica<S>) -> Value {
    Value::Object(block_on(r.get("tasks", "t1")).unwrap().and_then(|d| d.doc).unwrap_or_default())
}

/// Every pass in both directions between each client and the relay, until none is capped.
fn sync_all<S: Store, R: Store>(relay: &Replica<R>, clients: &[&Replica<S>], limits: Limits) {
    for _ in 0..2 {
        for c in clients {
            while pass(*c, relay, limits).capped {}
            while pass(relay, *c, limits).capped {}
        }
    }
}

/// Two clients write one field concurrently (neither saw the other's write): after they
/// sync through a relay, both show the same winner and keep the loser's value, readable
/// with `conflicts`; a write that saw both is no conflict, and `resolve` settles one
/// everywhere. The relay, which has no schema, keeps the tracking too.
pub fn concurrent_writes_keep_the_losing_value_until_resolved<B: Backend>(b: &B) {
    let relay = relay(b, 10_000);
    let (a, c) = (tracked(b, 1_000), tracked(b, 2_000));
    block_on(a.put("tasks", json!({"id": "t1", "title": "draft", "done": false}).as_object().unwrap().clone())).unwrap();
    sync_all(&relay, &[&a, &c], Limits::default());
    assert_eq!(conflicts_of(&c), json!({}));

    // Concurrent: both saw only the put.
    task_patch(&a, json!({"title": "from a"}));
    task_patch(&c, json!({"title": "from c", "done": true}));
    sync_all(&relay, &[&a, &c], Limits::default());
    // c's stamp is newer (wall 2,000): it wins on both; a's value is kept as the loser.
    for r in [&a, &c] {
        assert_eq!(task(r)["title"], "from c");
        assert_eq!(conflicts_of(r), json!({"title": ["from a"]}), "done was written once: no conflict there");
    }
    assert!(b.dump(relay.store(), "tasks").iter().any(|d| d.conflicts.get("title").is_some_and(|s| s.len() == 2)));

    // A write that saw both values replaces them: no conflict remains.
    task_patch(&a, json!({"title": "merged by a"}));
    sync_all(&relay, &[&a, &c], Limits::default());
    assert_eq!(conflicts_of(&c), json!({}));
    assert_eq!(task(&c)["title"], "merged by a");

    // A new conflict, settled by `resolve` on one side, is settled on the other too.
    task_patch(&a, json!({"title": "a again"}));
    task_patch(&c, json!({"title": "c again"}));
    sync_all(&relay, &[&a, &c], Limits::default());
    // Both clocks now run at wall 2,000 (a observed c's stamps), so which write wins
    // depends on counters and db ids; either way both sides agree and keep the other.
    let winner = task(&a)["title"].clone();
    let loser = if winner == "a again" { "c again" } else { "a again" };
    assert_eq!(task(&c)["title"], winner);
    assert_eq!(conflicts_of(&a), json!({"title": [loser]}));
    assert_eq!(conflicts_of(&c), json!({"title": [loser]}));
    block_on(a.resolve("tasks", "t1", json!({"title": "settled"}).as_object().unwrap().clone())).unwrap();
    assert_eq!(conflicts_of(&a), json!({}));
    sync_all(&relay, &[&a, &c], Limits::default());
    for r in [&a, &c] {
        assert_eq!(conflicts_of(r), json!({}));
        assert_eq!(task(r)["title"], "settled");
        assert_eq!(task(r)["done"], true);
    }
    // The resolution is in the relay's resolution log, and only it.
    let res = block_on(relay.store().resolutions_after(0)).unwrap();
    assert_eq!(res.len(), 1);
    assert!(res[0].op.resolution && res[0].op.fields.as_ref().unwrap()["title"] == "settled");
    // Resolving in a collection that does not keep conflicts is refused, and stores nothing.
    let before = a.head().max_row;
    let e = block_on(a.resolve("docs", "x", json!({"n": 1}).as_object().unwrap().clone())).unwrap_err();
    assert_eq!(e.code(), "INVALID_ARGUMENT");
    assert_eq!(a.head().max_row, before);
}

/// Resolutions go first, uncapped (DESIGN §11): a replica pulling under perDiff 1 and
/// maxDiffs 1 gets a resolution written after 5 ordinary rows in its first pass, and
/// never shows the conflict it settled while the conflicting rows trickle in.
pub fn a_resolution_reaches_a_capped_receiver_first<B: Backend>(b: &B) {
    let relay = relay(b, 10_000);
    let (a, c, late) = (tracked(b, 1_000), tracked(b, 2_000), tracked(b, 3_000));
    let puts: Vec<Write> = (0..40).map(|i| Write::Put { collection: "docs".into(), doc: json!({"id": format!("d{i:02}"), "n": 0}).as_object().unwrap().clone() }).collect();
    block_on(a.write(puts)).unwrap();
    block_on(a.put("tasks", json!({"id": "t1", "title": "draft"}).as_object().unwrap().clone())).unwrap();
    sync_all(&relay, &[&a, &c, &late], Limits::default());
    assert_eq!(task(&late)["title"], "draft");

    task_patch(&a, json!({"title": "from a"}));
    task_patch(&c, json!({"title": "from c"}));
    sync_all(&relay, &[&a, &c], Limits::default());
    assert_eq!(conflicts_of(&a), json!({"title": ["from a"]}));
    for i in 0..5 {
        block_on(a.patch("docs", &format!("d{i:02}"), json!({"n": i + 1}).as_object().unwrap().clone())).unwrap();
    }
    block_on(a.resolve("tasks", "t1", json!({"title": "settled"}).as_object().unwrap().clone())).unwrap();
    sync_all(&relay, &[&a], Limits::default());

    let capped = Limits { per_diff: 1, max_diffs: 1 };
    let first = pass(&relay, &late, capped);
    assert!(first.capped && !first.snapshot, "a capped pass of diffs: {first:?}");
    assert_eq!(task(&late)["title"], "settled", "the resolution came ahead of the rows");
    assert_eq!(conflicts_of(&late), json!({}));
    let mut passes = 1;
    while pass(&relay, &late, capped).capped {
        passes += 1;
        assert_eq!(conflicts_of(&late), json!({}), "pass {passes} showed a settled conflict");
        assert_eq!(task(&late)["title"], "settled");
    }
    assert!(passes >= 7, "the conflicting rows and the 5 others came one per pass ({passes} passes)");
    assert_eq!(docs(&late).iter().filter(|d| d["n"] != 0).count(), 5);
}

/// Declares one `#[test]` per scenario for a backend expression.
#[macro_export]
macro_rules! conformance {
    ($name:ident, $backend:expr) => {
        mod $name {
            use super::*;
            use $crate::scenarios;
            #[test]
            fn a_batch_of_only_stale_rows_still_advances_incoming() {
                scenarios::a_batch_of_only_stale_rows_still_advances_incoming(&$backend);
            }
            #[test]
            fn diff_capped_pass_resumes_and_completes() {
                scenarios::diff_capped_pass_resumes_and_completes(&$backend);
            }
            #[test]
            fn a_capped_pass_forwards_no_third_party_points_and_records_no_outgoing() {
                scenarios::a_capped_pass_forwards_no_third_party_points_and_records_no_outgoing(&$backend);
            }
            #[test]
            fn points_only_move_forward() {
                scenarios::points_only_move_forward(&$backend);
            }
            #[test]
            fn fifty_percent_rule() {
                scenarios::fifty_percent_rule(&$backend);
            }
            #[test]
            fn edit_history_pulls_stay_incremental() {
                scenarios::edit_history_pulls_stay_incremental(&$backend);
            }
            #[test]
            fn a_snapshot_merges_and_keeps_unsynced_local_writes() {
                scenarios::a_snapshot_merges_and_keeps_unsynced_local_writes(&$backend);
            }
            #[test]
            fn a_rebuilt_replica_gets_a_new_db_id_and_peers_start_over() {
                scenarios::a_rebuilt_replica_gets_a_new_db_id_and_peers_start_over(&$backend);
            }
            #[test]
            fn transitive_fast_forward() {
                scenarios::transitive_fast_forward(&$backend);
            }
            #[test]
            fn a_restored_replica_is_not_fast_forwarded_past_rows_it_lost() {
                scenarios::a_restored_replica_is_not_fast_forwarded_past_rows_it_lost(&$backend);
            }
            #[test]
            fn a_restored_sender_does_not_reuse_forgotten_points() {
                scenarios::a_restored_sender_does_not_reuse_forgotten_points(&$backend);
            }
            #[test]
            fn echoes_are_not_sent_back_but_points_advance() {
                scenarios::echoes_are_not_sent_back_but_points_advance(&$backend);
            }
            #[test]
            fn clients_converge_through_a_relay() {
                scenarios::clients_converge_through_a_relay(&$backend);
            }
            #[test]
            fn matching_sessions_resume() {
                scenarios::matching_sessions_resume(&$backend);
            }
            #[test]
            fn a_lost_checkpoint_resumes_from_the_newest_common_session() {
                scenarios::a_lost_checkpoint_resumes_from_the_newest_common_session(&$backend);
            }
            #[test]
            fn a_restored_peer_resumes_from_the_backups_session() {
                scenarios::a_restored_peer_resumes_from_the_backups_session(&$backend);
            }
            #[test]
            fn no_common_history_starts_from_the_beginning() {
                scenarios::no_common_history_starts_from_the_beginning(&$backend);
            }
            #[test]
            fn transitive_fast_forward_is_verified_with_the_origins_sessions() {
                scenarios::transitive_fast_forward_is_verified_with_the_origins_sessions(&$backend);
            }
            #[test]
            fn a_capped_pass_claims_nothing_for_third_parties() {
                scenarios::a_capped_pass_claims_nothing_for_third_parties(&$backend);
            }
            #[test]
            fn idle_passes_record_no_session() {
                scenarios::idle_passes_record_no_session(&$backend);
            }
            #[test]
            fn a_push_after_a_big_pull_is_not_capped_by_covered_rows() {
                scenarios::a_push_after_a_big_pull_is_not_capped_by_covered_rows(&$backend);
            }
            #[test]
            fn a_moving_client_transfers_only_what_is_missing() {
                scenarios::a_moving_client_transfers_only_what_is_missing(&$backend);
            }
            #[test]
            fn servers_that_both_got_a_clients_rows_transfer_nothing_twice() {
                scenarios::servers_that_both_got_a_clients_rows_transfer_nothing_twice(&$backend);
            }
            #[test]
            fn a_snapshot_carries_collections_the_sender_does_not_store() {
                scenarios::a_snapshot_carries_collections_the_sender_does_not_store(&$backend);
            }
            #[test]
            fn reset_only_when_older_version_data_changes_something() {
                scenarios::reset_only_when_older_version_data_changes_something(&$backend);
            }
            #[test]
            fn concurrent_writes_keep_the_losing_value_until_resolved() {
                scenarios::concurrent_writes_keep_the_losing_value_until_resolved(&$backend);
            }
            #[test]
            fn a_resolution_reaches_a_capped_receiver_first() {
                scenarios::a_resolution_reaches_a_capped_receiver_first(&$backend);
            }
            #[test]
            fn five_replicas_converge() {
                for seed in [1, 0x9e37_79b9_7f4a_7c15, 42, 7_777] {
                    scenarios::five_replicas_converge(&$backend, seed);
                }
            }
        }
    };
}
