//! Resets through a staging generation (DESIGN §6, issue 11), natively over memory stores:
//! a v2 replica with unsynced writes pulls a snapshot of v1 data from a relay; the data is
//! staged at its version, migrated forward with a migration that reads other documents,
//! merged with the replica's own writes and swapped in at once. Readers see the old state
//! until the swap; a reset cut before any step leaves the live store as it was and
//! completes on the next sync, once; errors never hide data.

#![cfg(not(target_arch = "wasm32"))]

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures::executor::block_on;
use serde_json::{json, Map, Value};
use tidemark::error::{Error, MigrateError};
use tidemark::memory::MemoryStore;
use tidemark::migrate::{Context, Migrator, Schemas};
use tidemark::store::Store;
use tidemark::sync::receive::Receiver;
use tidemark::sync::send::Sender;
use tidemark::sync::{drive, Limits, Message, PassReport};
use tidemark::{Replica, Schema, Write};
use tidemark_testkit::faults::Flaky;

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

/// v1: tasks point at a tag; v2: each task carries its tag's label, the tags are gone.
fn v1() -> Schema {
    Schema::from_json(json!({"version": 1, "collections": {
        "tasks": {"primaryKey": "id", "indexes": {"byTag": "tagId"}},
        "tags": {"primaryKey": "id"}}}))
    .unwrap()
}

fn v2() -> Schema {
    Schema::from_json(json!({"version": 2, "collections": {"tasks": {"primaryKey": "id", "indexes": {"byLabel": "label"}}}})).unwrap()
}

/// Step 2 copies the tag's label into each task (through the context) and drops `tagId`.
/// Counts its calls; can be told to throw on one document.
#[derive(Default)]
struct Label {
    calls: Arc<AtomicUsize>,
    throw_on: Option<String>,
}

impl Migrator for Label {
    fn has_step(&self, to: u32) -> bool {
        to == 2
    }
    fn migrate(&self, to: u32, collection: &str, docs: Vec<Map<String, Value>>, ctx: &dyn Context) -> Result<Vec<Option<Map<String, Value>>>, MigrateError> {
        assert_eq!((to, collection), (2, "tasks"), "tags are dropped at v2, never migrated");
        self.calls.fetch_add(docs.len(), Ordering::SeqCst);
        docs.into_iter()
            .enumerate()
            .map(|(i, mut d)| {
                if self.throw_on.as_deref() == d.get("id").and_then(Value::as_str) {
                    return Err(MigrateError::Threw { index: i, message: "boom".into() });
                }
                let tag = d.remove("tagId").and_then(|t| ctx.get(i, "tags", t.as_str()?));
                let label = tag.and_then(|t| t.get("label").cloned()).unwrap_or(Value::Null);
                d.insert("label".into(), label);
                // A query reads the collection as it stood at v1, too.
                let n = ctx.query(i, "tags", &json!({})).unwrap().len();
                d.insert("tagsThen".into(), json!(n));
                Ok(Some(d))
            })
            .collect()
    }
}

fn writer_v1(wall: u64) -> Replica<MemoryStore> {
    block_on(Replica::open(MemoryStore::new(), v1(), Box::new(move || wall))).unwrap()
}

fn client_v2<S: Store>(store: S, migrator: Label) -> Replica<S> {
    block_on(Replica::open_migrating(store, Schemas::new(v2(), vec![v1()]).unwrap(), Box::new(migrator), Box::new(|| 9_000))).unwrap()
}

fn relay() -> Replica<MemoryStore> {
    block_on(Replica::open_relay(MemoryStore::new(), Box::new(|| 5_000))).unwrap()
}

/// One pass from `s` to `r` over a pipe.
fn pass<A: Store, B: Store>(s: &Replica<A>, r: &Replica<B>, limits: Limits) -> Result<PassReport, Error> {
    let (mut a, mut b) = tidemark::sync::transport::pipe();
    let (sid, rid) = (s.head().db_id, r.head().db_id);
    let session = tidemark::peer::new_session();
    let (sent, got) = block_on(futures::future::join(
        drive::send(s, &mut a, &rid, &session, limits, &mut |_| {}),
        drive::receive(r, &mut b, &sid, &session, &mut |_| {}),
    ));
    got.and_then(|g| sent.map(|_| g))
}

/// A relay holding 30 v1 tasks over 3 tags (a v1 app wrote and pushed them).
fn v1_library() -> Replica<MemoryStore> {
    let w = writer_v1(1_000);
    let mut writes: Vec<Write> = (0..3).map(|t| Write::Put { collection: "tags".into(), doc: obj(json!({"id": format!("g{t}"), "label": format!("tag {t}")})) }).collect();
    writes.extend((0..30).map(|i| Write::Put { collection: "tasks".into(), doc: obj(json!({"id": format!("t{i:02}"), "title": format!("task {i}"), "tagId": format!("g{}", i % 3)})) }));
    block_on(w.write(writes)).unwrap();
    let r = relay();
    pass(&w, &r, Limits::default()).unwrap();
    r
}

fn tasks<S: Store<Doc = Map<String, Value>>>(r: &Replica<S>) -> Vec<Map<String, Value>> {
    block_on(r.query("tasks", &json!({"orderBy": "id"}))).unwrap()
}

/// A fresh v2 replica with `n` unsynced writes of its own.
fn with_writes(store: MemoryStore, n: usize) -> Replica<MemoryStore> {
    let c = client_v2(store, Label::default());
    let writes = (0..n).map(|i| Write::Put { collection: "tasks".into(), doc: obj(json!({"id": format!("mine{i}"), "title": "mine", "label": "own"})) }).collect();
    block_on(c.write(writes)).unwrap();
    c
}

/// The head's count of own rows (`Head::own_rows`) is what the log holds: every row the
/// engine logged — local writes, received ops, migration output, rows copied by a reset
/// or an upgrade — was counted if and only if it is the replica's own.
fn own_rows_agree<S: Store>(r: &Replica<S>) {
    let head = block_on(r.store().head()).unwrap().unwrap();
    let rows = block_on(r.store().rows_after(0, 1_000_000)).unwrap();
    let own = rows.iter().filter(|row| row.is_own(&head.db_id)).count() as u64;
    assert_eq!(head.own_rows, Some(own), "{} rows, {own} of them its own", rows.len());
    assert_eq!(block_on(r.store().own_rows_after(0, &head.db_id)).unwrap(), own);
}

#[test]
fn a_reset_migrates_across_documents_keeps_unsynced_writes_and_swaps_at_once() {
    let server = v1_library();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = client_v2(MemoryStore::new(), Label { calls: calls.clone(), throw_on: None });
    let mine: Vec<Write> = (0..5).map(|i| Write::Put { collection: "tasks".into(), doc: obj(json!({"id": format!("mine{i}"), "title": "mine", "label": "own"})) }).collect();
    block_on(c.write(mine)).unwrap();
    // A v2 edit of a v1 task, written before the replica ever saw it: a newer register.
    block_on(c.write(vec![Write::Put { collection: "tasks".into(), doc: obj(json!({"id": "t07", "title": "mine now", "label": "own"})) }])).unwrap();
    let db_id = c.head().db_id;

    // Drive the pull by hand, message by message: readers see the old state throughout.
    let session = tidemark::peer::new_session();
    let (mut sender, preflight) = block_on(Sender::start(&server, &db_id, &session, Limits { per_diff: 7, max_diffs: 10 })).unwrap();
    let mut receiver = Receiver::new(&server.head().db_id, &session);
    let mut to_receiver = vec![preflight];
    let mut report = None;
    let mut steps = 0;
    let mut phases = Vec::new();
    while report.is_none() {
        let mut to_sender = Vec::new();
        for m in to_receiver.drain(..) {
            let step = block_on(receiver.handle(&c, m, &mut |p| phases.push(p.phase))).unwrap();
            to_sender.extend(step.out);
            if let Some(r) = step.done {
                report = Some(r);
            } else {
                steps += 1;
                assert_eq!(tasks(&c).len(), 6, "step {steps}: readers see the old state until the swap");
            }
        }
        for m in to_sender {
            let step = block_on(sender.handle(&server, m, &mut |_| {})).unwrap();
            to_receiver.extend(step.out);
        }
    }
    let report = report.unwrap();
    assert!(report.snapshot && report.reset, "{report:?}");
    own_rows_agree(&c);
    assert_eq!(c.head().own_rows, Some(36), "6 writes of its own and 30 migrated documents");
    let rebuilt = report.rebuilt.clone().unwrap();
    assert_eq!((rebuilt.documents, rebuilt.migrated, rebuilt.kept, rebuilt.from_version), (33, 30, 6, Some(1)), "{rebuilt:?}");
    assert!(steps > 5, "the snapshot came in several chunks");
    assert!(phases.contains(&tidemark::progress::Phase::Migrate) && phases.contains(&tidemark::progress::Phase::Swap), "{phases:?}");

    let all = tasks(&c);
    assert_eq!(all.len(), 35, "30 migrated + 5 of its own");
    let t04 = all.iter().find(|d| d["id"] == "t04").unwrap();
    assert_eq!(Value::Object(t04.clone()), json!({"id": "t04", "title": "task 4", "label": "tag 1", "tagsThen": 3}));
    let t07 = all.iter().find(|d| d["id"] == "t07").unwrap();
    assert_eq!(t07["title"], "mine now", "the replica's own newer write wins over the migrated one");
    assert!(block_on(c.query("tags", &json!({}))).is_err(), "tags are gone at v2");
    assert!(!c.head().reset_pending && !c.head().sealed);
    assert_eq!(block_on(c.query("tasks", &json!({"where": {"label": "tag 2"}}))).unwrap().len(), 10, "the index of v2 answers");

    // Migrated once: local writes to migrated documents do not call the migrator again.
    let after_reset = calls.load(Ordering::SeqCst);
    for i in 0..5 {
        block_on(c.patch("tasks", "t04", obj(json!({"done": i})))).unwrap();
    }
    assert_eq!(calls.load(Ordering::SeqCst), after_reset, "patches merge over the migrated layer");
    assert_eq!(block_on(c.get("tasks", "t04")).unwrap().unwrap().doc.unwrap()["label"], "tag 1");

    // The next sync: no reset again; the replica's writes and the migrated state reach the server.
    pass(&c, &server, Limits::default()).unwrap();
    let again = pass(&server, &c, Limits::default()).unwrap();
    assert!(!again.snapshot && !again.reset, "no reset loop: {again:?}");
    own_rows_agree(&c);
    own_rows_agree(&server);
    assert_eq!(server.head().own_rows, Some(0), "a relay logs only what it received");
    let on_server: Vec<_> = block_on(server.store().docs_after(None, 1000)).unwrap();
    let t04 = on_server.iter().find(|(c, d)| c == "tasks" && d.id == "t04").unwrap();
    assert_eq!(t04.1.doc.as_ref().unwrap()["label"], "tag 1", "the relay holds the migrated state");
    assert!(on_server.iter().any(|(_, d)| d.id == "mine3"));
}

#[test]
fn a_reset_cut_before_any_step_leaves_the_live_store_and_completes_once_on_the_next_sync() {
    let server = v1_library();
    let base = with_writes(MemoryStore::new(), 4);
    let live_before = (tasks(&base), block_on(base.store().rows_after(0, 1000)).unwrap());
    let base = base.into_store();
    let mut k = 1;
    loop {
        let store = Flaky::new(base.backup(), k);
        let c = client_v2(store, Label::default());
        let cut = pass(&server, &c, Limits { per_diff: 7, max_diffs: 10 });
        let completed = cut.is_ok();
        let store = c.into_store().inner;
        let c = client_v2(store, Label::default());
        if completed {
            assert!(k > 5, "the reset has several steps to cut");
            break;
        }
        // Cut: the live store is exactly as it was, unsealed, and says a reset is pending.
        assert_eq!((tasks(&c), block_on(c.store().rows_after(0, 1000)).unwrap()), live_before, "cut at commit {k}");
        assert!(!c.head().sealed, "cut at commit {k}: unsealed");
        assert_eq!(c.head().reset_pending, k > 1, "cut at commit {k}: a reset is pending once it began");
        assert!(c.status().pending == 4);
        block_on(c.put("tasks", obj(json!({"id": "after-cut", "label": "x"})))).unwrap();
        // The next sync completes it, once.
        let done = pass(&server, &c, Limits { per_diff: 7, max_diffs: 10 }).unwrap();
        assert!(done.reset, "cut at commit {k}: the next sync completes the reset");
        assert_eq!(tasks(&c).len(), 35, "cut at commit {k}");
        assert!(!c.head().reset_pending);
        let next = pass(&server, &c, Limits::default()).unwrap();
        assert!(!next.reset && !next.snapshot, "cut at commit {k}: no reset loop");
        k += 1;
    }
}

#[test]
fn errors_during_a_reset_never_hide_data_and_the_replica_still_pushes() {
    let server = v1_library();
    // No v1 schema in the history: MISSING_SCHEMA, not 0 visible documents.
    let blind = block_on(Replica::open_migrating(MemoryStore::new(), Schemas::new(v2(), vec![]).unwrap(), Box::new(Label::default()), Box::new(|| 9_000))).unwrap();
    block_on(blind.put("tasks", obj(json!({"id": "mine", "label": "own"})))).unwrap();
    for _ in 0..2 {
        let e = pass(&server, &blind, Limits::default()).unwrap_err();
        assert_eq!(e.code(), "MISSING_SCHEMA", "{e}");
        assert_eq!(tasks(&blind).len(), 1, "the live store is untouched");
        assert!(!blind.head().sealed);
    }
    pass(&blind, &server, Limits::default()).unwrap();
    assert!(block_on(server.store().docs_after(None, 100)).unwrap().iter().any(|(_, d)| d.id == "mine"), "its own writes still reach the server");

    // A migration that throws on one document: MIGRATION_FAILED naming it; nothing merged.
    let c = client_v2(MemoryStore::new(), Label { calls: Default::default(), throw_on: Some("t13".into()) });
    block_on(c.put("tasks", obj(json!({"id": "mine", "label": "own"})))).unwrap();
    let e = pass(&server, &c, Limits { per_diff: 5, max_diffs: 10 }).unwrap_err();
    assert_eq!(e.code(), "MIGRATION_FAILED");
    assert!(e.to_string().contains("tasks/t13"), "{e}");
    assert_eq!(tasks(&c).len(), 1, "no chunk was merged into the live store");
    block_on(c.put("tasks", obj(json!({"id": "later", "label": "own"})))).unwrap();
    assert_eq!(tasks(&c).len(), 2, "the replica still takes writes");
}

#[test]
fn a_write_during_a_reset_waits_and_lands_in_the_new_generation() {
    let server = v1_library();
    let c = with_writes(MemoryStore::new(), 1);
    let db_id = c.head().db_id;
    let session = tidemark::peer::new_session();
    let (mut sender, preflight) = block_on(Sender::start(&server, &db_id, &session, Limits { per_diff: 10, max_diffs: 10 })).unwrap();
    let mut receiver = Receiver::new(&server.head().db_id, &session);
    // Preflight → point → begin (seals) + the first chunk.
    let point = block_on(receiver.handle(&c, preflight, &mut |_| {})).unwrap().out;
    let mut to_receiver = block_on(sender.handle(&server, point.into_iter().next().unwrap(), &mut |_| {})).unwrap().out;
    assert!(matches!(to_receiver[0], Message::Begin { snapshot: true, .. }));
    let begin = to_receiver.remove(0);
    block_on(receiver.handle(&c, begin, &mut |_| {})).unwrap();
    assert!(block_on(c.store().head()).unwrap().unwrap().sealed, "the live generation is sealed");

    // A write now waits for the swap; the pass goes on meanwhile.
    let wrote = Cell::new(false);
    let write = async {
        c.put("tasks", obj(json!({"id": "during", "label": "own"}))).await.unwrap();
        wrote.set(true);
    };
    let rest = async {
        let mut queue = to_receiver;
        loop {
            let mut back = Vec::new();
            for m in queue.drain(..) {
                assert!(!wrote.get(), "the write waits while the reset runs");
                let step = receiver.handle(&c, m, &mut |_| {}).await.unwrap();
                back.extend(step.out);
                if step.done.is_some() {
                    return;
                }
            }
            for m in back {
                queue.extend(sender.handle(&server, m, &mut |_| {}).await.unwrap().out);
            }
        }
    };
    block_on(futures::future::join(write, rest));
    assert!(wrote.get());
    let all = tasks(&c);
    assert_eq!(all.len(), 32, "30 migrated + its own + the one written during the reset");
    assert!(all.iter().any(|d| d["id"] == "during"));
    let rows = block_on(c.store().rows_after(0, 10_000)).unwrap();
    let mut numbers: Vec<u64> = rows.iter().map(|r| r.row).collect();
    numbers.dedup();
    assert_eq!(numbers.len(), rows.len(), "no row number used twice");
    assert!(rows.iter().any(|r| r.op.id == "during" && r.from.is_none()));
}

#[test]
fn an_upgrade_on_open_runs_migrations_that_read_other_documents() {
    let w = writer_v1(1_000);
    let mut writes: Vec<Write> = (0..3).map(|t| Write::Put { collection: "tags".into(), doc: obj(json!({"id": format!("g{t}"), "label": format!("tag {t}")})) }).collect();
    writes.extend((0..9).map(|i| Write::Put { collection: "tasks".into(), doc: obj(json!({"id": format!("t{i:02}"), "tagId": format!("g{}", i % 3)})) }));
    block_on(w.write(writes)).unwrap();
    let to = MemoryStore::new();
    block_on(to.commit(&[], &[], |_| Ok(tidemark::store::Commit::default()))).unwrap();
    block_on(tidemark::upgrade::upgrade(w.store(), &to, &Schemas::new(v2(), vec![v1()]).unwrap(), &Label::default(), &mut |_| {})).unwrap();
    let c = client_v2(to, Label::default());
    let t4 = block_on(c.get("tasks", "t04")).unwrap().unwrap().doc.unwrap();
    assert_eq!(Value::Object(t4), json!({"id": "t04", "label": "tag 1", "tagsThen": 3}));
    own_rows_agree(&w);
    own_rows_agree(&c);
    assert_eq!(c.head().own_rows, Some(12 + 9), "the copied log's 12 writes and 9 migrated tasks");
}

/// A new v2 replica joining a library whose older-version data fits in one batch still
/// gets it as a snapshot (staged, migrated in one batch): its migrations read the tags
/// its schema dropped, which a diff pass would never store. A v1 joiner gets diffs.
#[test]
fn a_joiner_gets_older_data_within_one_batch_as_a_snapshot_so_migrations_read_dropped_collections() {
    let server = v1_library();
    let c = client_v2(MemoryStore::new(), Label::default());
    let rep = pass(&server, &c, Limits::default()).unwrap();
    assert!(rep.snapshot && rep.reset, "{rep:?}");
    let got = tasks(&c);
    assert_eq!(got.len(), 30);
    assert!(got.iter().all(|t| t["label"] == json!(format!("tag {}", t["id"].as_str().unwrap()[1..].parse::<usize>().unwrap() % 3))), "{got:?}");
    let again = pass(&server, &c, Limits::default()).unwrap();
    assert!(!again.snapshot && !again.reset, "{again:?}");
    let v1 = writer_v1(2_000);
    let rep = pass(&server, &v1, Limits::default()).unwrap();
    assert!(!rep.snapshot, "same version: diffs, {rep:?}");
}

/// A v2 replica holding unsynced writes that never pulled from the library still joins by
/// snapshot when the library's older-version data fits in one batch (DESIGN §9's reset
/// scenario at its smallest): staged, migrated reading the dropped tags, its writes
/// re-applied, no reset on the next sync, and the server ends with the migrated state a
/// fresh replica agrees with. (Before, a replica with any write of its own got diffs: no
/// reset, and every migrated task's label was null.)
#[test]
fn a_joiner_holding_unsynced_writes_gets_older_data_within_one_batch_as_a_snapshot() {
    let server = v1_library();
    let c = with_writes(MemoryStore::new(), 2);
    let rep = pass(&server, &c, Limits::default()).unwrap();
    assert!(rep.snapshot && rep.reset, "{rep:?}");
    let got = tasks(&c);
    assert_eq!(got.len(), 32, "30 migrated tasks and its 2 own");
    for t in got.iter().filter(|t| t["id"].as_str().unwrap().starts_with('t')) {
        let n: usize = t["id"].as_str().unwrap()[1..].parse().unwrap();
        assert_eq!(t["label"], json!(format!("tag {}", n % 3)), "{t:?}");
    }
    assert!(got.iter().filter(|t| t["label"] == "own").count() == 2, "its unsynced writes are kept");
    pass(&c, &server, Limits::default()).unwrap();
    let again = pass(&server, &c, Limits::default()).unwrap();
    assert!(!again.snapshot && !again.reset, "no reset loop: {again:?}");
    let fresh = client_v2(MemoryStore::new(), Label::default());
    pass(&server, &fresh, Limits::default()).unwrap();
    assert_eq!(tasks(&fresh), tasks(&c), "the server holds the migrated state and the writes");
}

/// A v1 write arriving after a v2 replica has synced — a v1 app still in use — reaches a
/// replica whose migrations read other documents as a snapshot (`older_as_snapshot`), not
/// diffs: its migration finds the tag the new task points at, which the v2 schema dropped
/// and a diff pass would not carry, and it agrees with a replica that joins afterwards;
/// a later v1 edit of a tag migrates the tasks that read it again, everywhere. A
/// replica whose migrations read nothing else takes the same write as diffs, migrated
/// alone (no reset).
#[test]
fn a_late_older_write_reaches_a_replica_whose_migrations_read_others_as_a_snapshot() {
    let server = v1_library();
    let c = client_v2(MemoryStore::new(), Label::default());
    assert!(pass(&server, &c, Limits::default()).unwrap().reset);
    let renamed = renaming(MemoryStore::new(), Arc::new(AtomicUsize::new(0)));
    assert!(pass(&server, &renamed, Limits::default()).unwrap().reset);

    let late = writer_v1(2_000);
    pass(&server, &late, Limits::default()).unwrap();
    block_on(late.put("tasks", obj(json!({"id": "t99", "title": "late", "tagId": "g2"})))).unwrap();
    pass(&late, &server, Limits::default()).unwrap();

    let rep = pass(&server, &c, Limits::default()).unwrap();
    assert!(rep.snapshot && rep.reset, "{rep:?}");
    let t99 = block_on(c.get("tasks", "t99")).unwrap().unwrap().doc.unwrap();
    assert_eq!(t99["label"], "tag 2", "the migration read the dropped tag: {t99:?}");
    assert_eq!(tasks(&c).len(), 31);
    let again = pass(&server, &c, Limits::default()).unwrap();
    assert!(!again.snapshot && !again.reset, "no reset loop: {again:?}");
    let fresh = client_v2(MemoryStore::new(), Label::default());
    pass(&server, &fresh, Limits::default()).unwrap();
    assert_eq!(tasks(&fresh), tasks(&c));

    // A v1 app relabels a tag the tasks copied: the replicas that migrated already migrate
    // those tasks again (their migration read it), and agree with one joining now.
    block_on(late.put("tags", obj(json!({"id": "g1", "label": "tag one relabelled"})))).unwrap();
    pass(&late, &server, Limits::default()).unwrap();
    let rep = pass(&server, &c, Limits::default()).unwrap();
    assert!(rep.snapshot && rep.reset, "{rep:?}");
    let label = |r: &Replica<MemoryStore>| block_on(r.get("tasks", "t01")).unwrap().unwrap().doc.unwrap()["label"].clone();
    assert_eq!(label(&c), "tag one relabelled");
    pass(&c, &server, Limits::default()).unwrap();
    assert!(pass(&server, &fresh, Limits::default()).unwrap().reset);
    let joiner = client_v2(MemoryStore::new(), Label::default());
    pass(&server, &joiner, Limits::default()).unwrap();
    assert_eq!(label(&joiner), "tag one relabelled");
    assert_eq!(tasks(&fresh), tasks(&c));
    assert_eq!(tasks(&joiner), tasks(&c));

    let rep = pass(&server, &renamed, Limits::default()).unwrap();
    assert!(!rep.snapshot && !rep.reset, "migrated alone, by diffs: {rep:?}");
    let t99 = block_on(renamed.get("tasks", "t99")).unwrap().unwrap().doc.unwrap();
    assert_eq!(t99["name"], "late");
}

/// A reset of more documents than one slice (the last migration step is computed and
/// written 1,000 documents at a time): every document is migrated exactly once, a task in
/// a later slice still reads the tags of the first one, and the result — values and the
/// migration stamps every replica must agree on — is what migrating the whole batch at
/// once gives (an upgrade on open).
#[test]
fn a_reset_larger_than_a_slice_migrates_each_document_once_as_one_batch_would() {
    let w = writer_v1(1_000);
    let mut writes: Vec<Write> = (0..3).map(|t| Write::Put { collection: "tags".into(), doc: obj(json!({"id": format!("g{t}"), "label": format!("tag {t}")})) }).collect();
    writes.extend((0..2_100).map(|i| Write::Put { collection: "tasks".into(), doc: obj(json!({"id": format!("t{i:04}"), "tagId": format!("g{}", i % 3)})) }));
    block_on(w.write(writes)).unwrap();
    let server = relay();
    pass(&w, &server, Limits::default()).unwrap();

    let calls = Arc::new(AtomicUsize::new(0));
    let c = client_v2(MemoryStore::new(), Label { calls: calls.clone(), throw_on: None });
    let report = pass(&server, &c, Limits::default()).unwrap();
    assert!(report.reset);
    assert_eq!(calls.load(Ordering::SeqCst), 2_100, "each task migrated once");

    let whole = MemoryStore::new();
    block_on(whole.commit(&[], &[], |_| Ok(tidemark::store::Commit::default()))).unwrap();
    block_on(tidemark::upgrade::upgrade(w.store(), &whole, &Schemas::new(v2(), vec![v1()]).unwrap(), &Label::default(), &mut |_| {})).unwrap();
    let whole = client_v2(whole, Label::default());
    for i in [0, 999, 1_000, 1_997, 2_099] {
        let id = format!("t{i:04}");
        let got = block_on(c.get("tasks", &id)).unwrap().unwrap();
        assert_eq!(Value::Object(got.doc.clone().unwrap()), json!({"id": id, "label": format!("tag {}", i % 3), "tagsThen": 3}));
        let once = block_on(whole.get("tasks", &id)).unwrap().unwrap();
        assert_eq!((&got.doc, &got.stamps), (&once.doc, &once.stamps), "{id}");
    }
    assert_eq!(tasks(&c).len(), 2_100);
    // Every migrated document logged its output once, numbered after the copied log.
    let rows = block_on(c.store().rows_after(0, 10_000)).unwrap();
    let own: Vec<u64> = rows.iter().filter(|r| r.from.is_none()).map(|r| r.row).collect();
    assert_eq!(own.len(), 2_100);
    assert!(own.windows(2).all(|p| p[0] < p[1]) && *own.first().unwrap() > rows.iter().filter(|r| r.from.is_some()).map(|r| r.row).max().unwrap());
}

/// Step 2 renames `title` to `name` and reads nothing else (`reads_others` is false), so
/// a reset migrates its documents as their snapshot chunks arrive. Counts its calls.
#[derive(Default)]
struct Rename {
    calls: Arc<AtomicUsize>,
}

impl Migrator for Rename {
    fn has_step(&self, to: u32) -> bool {
        to == 2
    }
    fn reads_others(&self, _to: u32) -> bool {
        false
    }
    fn migrate(&self, _to: u32, _c: &str, docs: Vec<Map<String, Value>>, _ctx: &dyn Context) -> Result<Vec<Option<Map<String, Value>>>, MigrateError> {
        self.calls.fetch_add(docs.len(), Ordering::SeqCst);
        Ok(docs
            .into_iter()
            .map(|mut d| {
                let title = d.remove("title").unwrap_or(Value::Null);
                d.remove("tagId");
                d.insert("name".into(), title);
                Some(d)
            })
            .collect())
    }
}

fn renaming<S: Store>(store: S, calls: Arc<AtomicUsize>) -> Replica<S> {
    block_on(Replica::open_migrating(store, Schemas::new(v2(), vec![v1()]).unwrap(), Box::new(Rename { calls }), Box::new(|| 9_000))).unwrap()
}

/// One pass from `s` to `r`, with `r`'s progress events.
fn pass_watched<A: Store, B: Store>(s: &Replica<A>, r: &Replica<B>, limits: Limits) -> (Result<PassReport, Error>, Vec<tidemark::progress::Progress>) {
    let (mut a, mut b) = tidemark::sync::transport::pipe();
    let (sid, rid) = (s.head().db_id, r.head().db_id);
    let session = tidemark::peer::new_session();
    let mut seen = Vec::new();
    let (sent, got) = block_on(futures::future::join(
        drive::send(s, &mut a, &rid, &session, limits, &mut |_| {}),
        drive::receive(r, &mut b, &sid, &session, &mut |p| seen.push(p)),
    ));
    (got.and_then(|g| sent.map(|_| g)), seen)
}

/// Migrations that read nothing but their document run as the snapshot arrives (their
/// documents are stored while later chunks download), each document once, with the result
/// a whole-batch migration gives; a document the replica itself holds still waits to merge
/// with it at the end; a cut before any commit leaves the live store as it was.
#[test]
fn a_migration_that_reads_nothing_else_runs_as_chunks_arrive_with_the_same_result() {
    let w = writer_v1(1_000);
    let writes = (0..60).map(|i| Write::Put { collection: "tasks".into(), doc: obj(json!({"id": format!("t{i:02}"), "title": format!("task {i}"), "tagId": "g0"})) }).collect();
    block_on(w.write(writes)).unwrap();
    let server = relay();
    pass(&w, &server, Limits::default()).unwrap();

    let calls = Arc::new(AtomicUsize::new(0));
    let c = renaming(MemoryStore::new(), calls.clone());
    // The replica's own v2 write of a task the snapshot also carries (merged at the end).
    block_on(c.put("tasks", obj(json!({"id": "t05", "label": "mine"})))).unwrap();
    let (report, progress) = pass_watched(&server, &c, Limits { per_diff: 7, max_diffs: 100 });
    let report = report.unwrap();
    assert!(report.reset);
    assert_eq!(calls.load(Ordering::SeqCst), 60, "each document migrated once");
    let first = progress.iter().find(|p| p.phase == tidemark::progress::Phase::Migrate).unwrap();
    assert_eq!((first.done, first.total), (59, 60), "all but the replica's own document were migrated as they arrived");

    let whole = MemoryStore::new();
    block_on(whole.commit(&[], &[], |_| Ok(tidemark::store::Commit::default()))).unwrap();
    block_on(tidemark::upgrade::upgrade(w.store(), &whole, &Schemas::new(v2(), vec![v1()]).unwrap(), &Rename::default(), &mut |_| {})).unwrap();
    let whole = renaming(whole, Arc::default());
    for i in [0, 6, 7, 59] {
        let id = format!("t{i:02}");
        let got = block_on(c.get("tasks", &id)).unwrap().unwrap();
        assert_eq!(Value::Object(got.doc.clone().unwrap()), json!({"id": id, "name": format!("task {i}")}));
        let once = block_on(whole.get("tasks", &id)).unwrap().unwrap();
        assert_eq!((&got.doc, &got.stamps, &got.layers), (&once.doc, &once.stamps, &once.layers), "{id}");
    }
    let mine = block_on(c.get("tasks", "t05")).unwrap().unwrap().doc.unwrap();
    // The replica's put (newer than any migration output) replaces the document.
    assert_eq!(Value::Object(mine), json!({"id": "t05", "label": "mine"}));
    let rows = block_on(c.store().rows_after(0, 10_000)).unwrap();
    assert_eq!(rows.iter().filter(|r| r.from.is_none() && r.op.origin == c.head().db_id).count(), 61, "the own write and one migration row per document");

    // Cut before every commit: the live store stays as it was; the next sync completes.
    let base = MemoryStore::new();
    let c = renaming(base, Arc::default());
    block_on(c.put("tasks", obj(json!({"id": "t05", "label": "mine"})))).unwrap();
    let before = (tasks(&c), block_on(c.store().rows_after(0, 1000)).unwrap());
    let base = c.into_store();
    let mut k = 1;
    loop {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = renaming(Flaky::new(base.backup(), k), calls.clone());
        let (cut, _) = pass_watched(&server, &c, Limits { per_diff: 7, max_diffs: 100 });
        let c = renaming(c.into_store().inner, calls.clone());
        if cut.is_ok() {
            assert!(k > 10, "a reset of 9 chunks has more than 10 commits to cut");
            break;
        }
        assert_eq!((tasks(&c), block_on(c.store().rows_after(0, 1000)).unwrap()), before, "cut at commit {k}");
        assert!(!c.head().sealed, "cut at commit {k}");
        let done = pass(&server, &c, Limits { per_diff: 7, max_diffs: 100 }).unwrap();
        assert!(done.reset, "cut at commit {k}");
        assert_eq!(tasks(&c).len(), 60, "cut at commit {k}");
        assert!(!pass(&server, &c, Limits::default()).unwrap().reset, "cut at commit {k}: no reset loop");
        k += 1;
    }
}
