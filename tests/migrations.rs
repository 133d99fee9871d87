//! Schema evolution natively (DESIGN §6, issue 4): upgrading stored data, resets from
//! older-version data, mixed-version writers, and refusals that leave the store as it was.

#![cfg(not(target_arch = "wasm32"))]

use futures::executor::block_on;
use serde_json::{json, Map, Value};
use tidemark::error::MigrateError;
use tidemark::memory::MemoryStore;
use tidemark::layers::is_migration;
use tidemark::migrate::{Context, Migrator, Schemas};
use tidemark::upgrade::upgrade;
use tidemark::store::Store;
use tidemark::sync::drive;
use tidemark::sync::pass::{Limits, PassReport};
use tidemark_testkit::faults::Flaky;
use tidemark::sync::transport::pipe;
use tidemark::{Replica, Schema, Write};

fn v1() -> Schema {
    Schema::from_json(json!({"version": 1, "collections": {
        "todos": {"primaryKey": "id", "indexes": {"byDone": "done"}},
        "notes": {"primaryKey": "id"}}}))
    .unwrap()
}
fn v2() -> Schema {
    Schema::from_json(json!({"version": 2, "collections": {
        "todos": {"primaryKey": "id", "indexes": {"byDone": "done", "byName": "name"}},
        "notes": {"primaryKey": "id"}}}))
    .unwrap()
}
fn v3() -> Schema {
    Schema::from_json(json!({"version": 3, "collections": {
        "todos": {"primaryKey": "id", "indexes": {"byDone": "done", "byName": "name", "byList": "list"},
                  "defaults": {"list": "inbox"}}}}))
    .unwrap()
}

/// 2: rename `title` → `name`; 3: only declarative (drop `notes`, default `list`).
struct Steps;
impl Migrator for Steps {
    fn has_step(&self, to: u32) -> bool {
        to == 2 || to == 3
    }
    fn reads_others(&self, _to: u32) -> bool {
        false
    }
    fn migrate(&self, to: u32, _c: &str, docs: Vec<Map<String, Value>>, _ctx: &dyn Context) -> Result<Vec<Option<Map<String, Value>>>, MigrateError> {
        Ok(docs
            .into_iter()
            .map(|mut d| {
                if to == 2 {
                    if let Some(t) = d.remove("title") {
                        d.insert("name".into(), t);
                    }
                }
                Some(d)
            })
            .collect())
    }
}

fn at(store: MemoryStore, schemas: Schemas, wall: u64) -> Replica<MemoryStore> {
    block_on(Replica::open_migrating(store, schemas, Box::new(Steps), Box::new(move || wall))).unwrap()
}
fn schemas(current: Schema) -> Schemas {
    let history = [v1(), v2()].into_iter().filter(|s| s.version < current.version).collect();
    Schemas::new(current, history).unwrap()
}
fn obj(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}
fn q(r: &Replica<MemoryStore>, c: &str, query: Value) -> Vec<Value> {
    block_on(r.query(c, &query)).unwrap().into_iter().map(Value::Object).collect()
}
fn pass(s: &Replica<MemoryStore>, r: &Replica<MemoryStore>) -> PassReport {
    let (mut a, mut b) = pipe();
    let session = tidemark::peer::new_session();
    let (sid, rid) = (s.head().db_id, r.head().db_id);
    let limits = Limits { per_diff: 100, max_diffs: 100 };
    // Each side closes its end when it finishes, as a socket would.
    let session2 = session.clone();
    let (x, y) = block_on(futures::future::join(
        async move { drive::send(s, &mut a, &rid, &session, limits, &mut |_| {}).await },
        async move { drive::receive(r, &mut b, &sid, &session2, &mut |_| {}).await },
    ));
    let y = y.unwrap();
    x.unwrap();
    y
}
fn relay() -> Replica<MemoryStore> {
    block_on(Replica::open_relay(MemoryStore::new(), Box::new(|| 5))).unwrap()
}

#[test]
fn open_at_v3_migrates_every_document_through_two_steps() {
    let old = at(MemoryStore::new(), schemas(v1()), 1_000);
    let writes: Vec<Write> = (0..1000)
        .map(|i| Write::Put { collection: "todos".into(), doc: obj(json!({"id": format!("t{i:04}"), "title": format!("task {i}"), "done": i % 2 == 0})) })
        .chain((0..10).map(|i| Write::Put { collection: "notes".into(), doc: obj(json!({"id": format!("n{i}"), "text": "x"})) }))
        .collect();
    block_on(old.write(writes)).unwrap();
    let before = old.head();
    let new_store = MemoryStore::new();
    let head = block_on(upgrade(old.store(), &new_store, &schemas(v3()), &Steps, &mut |_| {})).unwrap();
    assert_eq!(head.db_id, before.db_id, "the row space is kept, so is the db id");
    assert_eq!(head.schema_version, 3);
    let r = at(new_store, schemas(v3()), 2_000);
    let all = q(&r, "todos", json!({"orderBy": "id"}));
    assert_eq!(all.len(), 1000);
    assert_eq!(all[7], json!({"id": "t0007", "name": "task 7", "done": false, "list": "inbox"}));
    // The index added at v3 answers queries; the one added at v2 too.
    assert_eq!(q(&r, "todos", json!({"where": {"list": "inbox"}})).len(), 1000);
    assert_eq!(q(&r, "todos", json!({"where": {"name": "task 9"}})), vec![json!({"id": "t0009", "name": "task 9", "done": false, "list": "inbox"})]);
    // The dropped collection is gone.
    assert_eq!(block_on(r.query("notes", &json!({}))).unwrap_err().code(), "UNKNOWN_COLLECTION");
    // Migration output was logged as local rows after the copied log.
    let rows = block_on(r.store().rows_after(before.max_row, usize::MAX)).unwrap();
    assert_eq!(rows.len(), 1000);
    assert!(rows.iter().all(|row| row.from.is_none() && is_migration(&row.op.ts) && row.op.schema_version == 3));
    // Local writes at v3 win over the migrated state.
    block_on(r.patch("todos", "t0007", obj(json!({"list": "work"})))).unwrap();
    assert_eq!(block_on(r.get("todos", "t0007")).unwrap().unwrap().doc.unwrap()["list"], "work");
}

#[test]
fn missing_steps_and_schemas_are_refused_and_touch_nothing() {
    let old = at(MemoryStore::new(), schemas(v1()), 1_000);
    block_on(old.put("todos", obj(json!({"id": "a", "title": "x"})))).unwrap();
    let target = MemoryStore::new();
    struct OnlyTwo;
    impl Migrator for OnlyTwo {
        fn has_step(&self, to: u32) -> bool {
            to == 2
        }
        fn migrate(&self, _: u32, _: &str, d: Vec<Map<String, Value>>, _ctx: &dyn Context) -> Result<Vec<Option<Map<String, Value>>>, MigrateError> {
            Ok(d.into_iter().map(Some).collect())
        }
    }
    let err = block_on(upgrade(old.store(), &target, &schemas(v3()), &OnlyTwo, &mut |_| {})).unwrap_err();
    assert_eq!(err.code(), "MISSING_MIGRATION");
    let no_history = Schemas::new(v3(), vec![v2()]).unwrap();
    let err = block_on(upgrade(old.store(), &target, &no_history, &Steps, &mut |_| {})).unwrap_err();
    assert_eq!(err.code(), "MISSING_SCHEMA");
    assert!(block_on(target.head()).unwrap().is_none(), "the new generation got nothing");
    assert_eq!(q(&old, "todos", json!({})), vec![json!({"id": "a", "title": "x"})], "the live store is untouched");
}

#[test]
fn reset_from_older_version_data_keeps_local_writes_and_does_not_loop() {
    let server = relay();
    let writer = at(MemoryStore::new(), schemas(v1()), 1_000);
    block_on(writer.write((0..200).map(|i| Write::Put { collection: "todos".into(), doc: obj(json!({"id": format!("t{i:03}"), "title": format!("v1 {i}"), "done": false})) }).collect())).unwrap();
    pass(&writer, &server);
    // A v2 replica with 50 unsynced writes, one of them to a document the server has.
    let fresh = at(MemoryStore::new(), schemas(v2()), 9_000);
    block_on(fresh.write((0..50).map(|i| Write::Put { collection: "todos".into(), doc: obj(json!({"id": format!("mine{i}"), "name": "local", "done": true})) }).collect())).unwrap();
    block_on(fresh.put("todos", obj(json!({"id": "t000", "name": "edited at v2", "done": true})))).unwrap();
    let pull = pass(&server, &fresh);
    assert!(pull.snapshot && pull.reset, "{pull:?}");
    let docs = q(&fresh, "todos", json!({"orderBy": "id"}));
    assert_eq!(docs.len(), 250);
    assert!(docs.contains(&json!({"id": "t005", "name": "v1 5", "done": false})), "migrated");
    assert!(docs.contains(&json!({"id": "t000", "name": "edited at v2", "done": true})), "local write kept");
    assert_eq!(docs.iter().filter(|d| d["name"] == "local").count(), 50);
    // Push the writes and the migrated state; the next pull is no reset.
    pass(&fresh, &server);
    let again = pass(&server, &fresh);
    assert!(!again.snapshot && !again.reset);
    // A fresh v2 replica that syncs afterwards sees the same documents.
    let other = at(MemoryStore::new(), schemas(v2()), 3_000);
    pass(&server, &other);
    assert_eq!(q(&other, "todos", json!({"orderBy": "id"})), docs);
}

#[test]
fn mixed_versions_converge_and_future_ops_wait_for_the_upgrade() {
    let server = relay();
    let old_writer = at(MemoryStore::new(), schemas(v1()), 1_000);
    let new_writer = at(MemoryStore::new(), schemas(v2()), 2_000);
    block_on(old_writer.put("todos", obj(json!({"id": "a", "title": "from v1", "done": false})))).unwrap();
    block_on(new_writer.put("todos", obj(json!({"id": "b", "name": "from v2", "done": false})))).unwrap();
    for r in [&old_writer, &new_writer] {
        pass(r, &server);
    }
    // The v2 replica, which never pulled, gets the v1 op by snapshot (a reset: DESIGN §6)
    // and migrates it, keeping its own write.
    let rep = pass(&server, &new_writer);
    assert!(rep.snapshot && rep.reset, "{rep:?}");
    assert_eq!(q(&new_writer, "todos", json!({"orderBy": "id"})), vec![json!({"id": "a", "name": "from v1", "done": false}), json!({"id": "b", "name": "from v2", "done": false})]);
    // A late v1 patch (after the v2 replica migrated) is migrated forward again.
    block_on(old_writer.patch("todos", "a", obj(json!({"title": "late v1 edit"})))).unwrap();
    pass(&old_writer, &server);
    let rep = pass(&server, &new_writer);
    assert!(!rep.snapshot, "its migrations read nothing else: diffs, that document rebuilt alone: {rep:?}");
    assert_eq!(q(&new_writer, "todos", json!({"where": {"id": "a"}}))[0]["name"], "late v1 edit");
    // The v1 replica stores the v2 op without applying it, and says so.
    let rep = pass(&server, &old_writer);
    assert_eq!(rep.future_version, Some(2));
    assert_eq!(q(&old_writer, "todos", json!({})).len(), 1, "v2 document not applied at v1");
    // After the app upgrades to v2, it applies.
    let upgraded = MemoryStore::new();
    block_on(upgrade(old_writer.store(), &upgraded, &schemas(v2()), &Steps, &mut |_| {})).unwrap();
    let r = at(upgraded, schemas(v2()), 4_000);
    assert_eq!(q(&r, "todos", json!({"orderBy": "id"})), q(&new_writer, "todos", json!({"orderBy": "id"})));
}

#[test]
fn an_upgrade_cut_at_any_step_leaves_the_old_generation_whole_and_can_start_again() {
    let old = at(MemoryStore::new(), schemas(v1()), 1_000);
    block_on(old.write((0..2500).map(|i| Write::Put { collection: "todos".into(), doc: obj(json!({"id": format!("t{i:04}"), "title": "x"})) }).collect())).unwrap();
    let before = serde_json::to_string(&old.store().dump("todos")).unwrap();
    // 3 log chunks + 3 document chunks + 1 head/peers commit.
    for fail_at in 1..=7 {
        let target = Flaky::new(MemoryStore::new(), fail_at);
        assert!(block_on(upgrade(old.store(), &target, &schemas(v3()), &Steps, &mut |_| {})).is_err(), "step {fail_at}");
        assert_eq!(serde_json::to_string(&old.store().dump("todos")).unwrap(), before, "old generation untouched at step {fail_at}");
    }
    // The next attempt (into a fresh generation) completes.
    let fresh = MemoryStore::new();
    block_on(upgrade(old.store(), &fresh, &schemas(v3()), &Steps, &mut |_| {})).unwrap();
    let r = at(fresh, schemas(v3()), 2_000);
    assert_eq!(q(&r, "todos", json!({"where": {"list": "inbox"}})).len(), 2500);
}

#[test]
fn a_reset_cut_between_any_two_messages_loses_nothing_and_ends_migrated() {
    let server = relay();
    let writer = at(MemoryStore::new(), schemas(v1()), 1_000);
    block_on(writer.write((0..300).map(|i| Write::Put { collection: "todos".into(), doc: obj(json!({"id": format!("s{i:03}"), "title": format!("v1 {i}")})) }).collect())).unwrap();
    pass(&writer, &server);
    // The server sends six messages in a snapshot pass of 300 documents in chunks of 100
    // (preflight, begin, 3 snapshot chunks, end), each answered by the replica. Cut the
    // connection before each of them, then sync again.
    for k in 0..6 {
        let fresh = at(MemoryStore::new(), schemas(v2()), 9_000);
        block_on(fresh.put("todos", obj(json!({"id": "mine", "name": "unsynced"})))).unwrap();
        block_on(fresh.put("todos", obj(json!({"id": "s001", "name": "local edit"})))).unwrap();
        let (mut a, mut b) = pipe();
        a.cut_after = Some(k);
        let session = tidemark::peer::new_session();
        let (sid, rid) = (server.head().db_id, fresh.head().db_id);
        let limits = Limits { per_diff: 100, max_diffs: 100 };
        let (s, r) = (&server, &fresh);
        let session2 = session.clone();
        let (sent, got) = block_on(futures::future::join(
            async move { drive::send(s, &mut a, &rid, &session, limits, &mut |_| {}).await },
            async move { drive::receive(r, &mut b, &sid, &session2, &mut |_| {}).await },
        ));
        assert!(sent.is_err() && got.is_err(), "cut after {k} messages");
        // The pass claimed nothing, so the next one starts over (a snapshot, or diffs if
        // enough chunks had landed for the 50% rule).
        let again = pass(&server, &fresh);
        assert_eq!(again.start, -1, "cut {k}");
        let docs = q(&fresh, "todos", json!({"orderBy": "id"}));
        assert_eq!(docs.len(), 301, "cut {k}");
        assert!(docs.contains(&json!({"id": "mine", "name": "unsynced"})));
        assert!(docs.contains(&json!({"id": "s001", "name": "local edit"})));
        assert!(docs.contains(&json!({"id": "s299", "name": "v1 299"})));
        assert!(!again.capped && pass(&server, &fresh).sent == 0, "and no reset loop (cut {k})");
    }
}
