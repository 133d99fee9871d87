//! Regressions found by the deterministic simulation (`tidemark_testkit::sim`, issue 14),
//! each named after the property it broke, with the seed that found it.

use futures::executor::block_on;
use serde_json::json;
use tidemark::memory::MemoryStore;
use tidemark::sync::pass::Limits;
use tidemark::Replica;
use tidemark_testkit::scenarios::{pass, replica_at};

fn relay(wall: u64) -> Replica<MemoryStore> {
    block_on(Replica::open_relay(MemoryStore::new(), Box::new(move || wall))).unwrap()
}

fn put(r: &Replica<MemoryStore>, id: &str) {
    block_on(r.put("docs", json!({"id": id, "n": 1}).as_object().unwrap().clone())).unwrap();
}

fn versioned(v: u32) -> tidemark::Schema {
    tidemark::Schema::from_json(json!({"version": v, "collections": {"docs": {"primaryKey": "id"}}})).unwrap()
}

/// Version 2 marks every document it migrates.
struct MarkV2;
impl tidemark::migrate::Migrator for MarkV2 {
    fn has_step(&self, to: u32) -> bool {
        to == 2
    }
    fn migrate(&self, _: u32, _: &str, docs: Vec<serde_json::Map<String, serde_json::Value>>, _: &dyn tidemark::migrate::Context) -> Result<Vec<Option<serde_json::Map<String, serde_json::Value>>>, tidemark::error::MigrateError> {
        Ok(docs.into_iter().map(|mut d| {
            d.insert("v2".into(), json!(true));
            Some(d)
        }).collect())
    }
}

fn without_bookkeeping(r: &Replica<MemoryStore>) -> Vec<tidemark::store::StoredDoc> {
    r.store().dump("docs").into_iter().map(|d| tidemark::store::StoredDoc { migrated: None, ..d }).collect()
}

/// Two relays, a version-1 client that wrote `d`, and a version-2 client that migrated
/// it; the first relay holds the migration output.
fn migrated_on_a_server(limits: Limits) -> (Replica<MemoryStore>, Replica<MemoryStore>, Replica<MemoryStore>, Replica<MemoryStore>) {
    let (s0, s1) = (relay(1_000), relay(2_000));
    let old = replica_at(MemoryStore::new(), 3_000);
    let schemas = tidemark::migrate::Schemas::new(versioned(2), vec![versioned(1)]).unwrap();
    let new = block_on(Replica::open_migrating(MemoryStore::new(), schemas, Box::new(MarkV2), Box::new(|| 4_000))).unwrap();
    put(&old, "d");
    pass(&old, &s0, limits);
    pass(&s0, &new, limits);
    pass(&new, &s0, limits);
    assert_eq!(s0.store().dump("docs")[0].doc.as_ref().map(|d| d["v2"].clone()), Some(json!(true)), "the server holds the migration output");
    (s0, s1, old, new)
}

/// Seed 180 (P4): a version-2 client migrated a version-1 document and logged the output;
/// the document was then deleted under version 1. The client's view went away, but it
/// logged nothing to withdraw the output: the server that got the output kept showing
/// the document at version 2, a server that got the client's data by snapshot (which
/// carried no output, yet covered the output's row) did not — relays never converged.
/// Now the migration output of a deleted input is a withdrawal, logged and kept in the
/// stored layer, the same on every replica that migrates the document.
#[test]
fn quiescent_replicas_converge_when_a_migrated_document_is_deleted_under_an_older_version() {
    let limits = Limits::default();
    let (s0, s1, old, new) = migrated_on_a_server(limits);
    block_on(old.delete("docs", "d")).unwrap();
    pass(&old, &s0, limits);
    pass(&s0, &new, limits);
    pass(&new, &s0, limits);
    assert_eq!(s0.store().dump("docs")[0].doc, None, "the deleted document is gone at version 2 too");
    // A second server gets the same data by other paths: the client's snapshot, the old
    // client's rows, and then the first server's.
    pass(&new, &s1, limits);
    pass(&old, &s1, limits);
    pass(&s0, &s1, limits);
    pass(&s1, &s0, limits);
    assert_eq!(without_bookkeeping(&s0), without_bookkeeping(&s1));
}

/// Seed 864 (P4, found when the resolution log added an await point to every diff pass):
/// as seed 180, but the version-2 client had also patched the migrated document before the
/// version-1 delete arrived. Its own write kept the document alive, so the client logged
/// no withdrawal: the server that got the migration output kept showing its fields, and
/// one that got the client's data by snapshot never did. Now the output of a deleted input
/// is withdrawn whether or not writes at the newer version keep the document alive (they
/// are newer than the withdrawal and survive it).
#[test]
fn quiescent_replicas_converge_when_a_migrated_and_patched_document_is_deleted_under_an_older_version() {
    let limits = Limits::default();
    let (s0, s1, old, new) = migrated_on_a_server(limits);
    block_on(new.patch("docs", "d", json!({"n": 3}).as_object().unwrap().clone())).unwrap();
    pass(&new, &s0, limits);
    block_on(old.delete("docs", "d")).unwrap();
    pass(&old, &s0, limits);
    pass(&s0, &new, limits);
    pass(&new, &s0, limits);
    let client = block_on(new.get("docs", "d")).unwrap().and_then(|d| d.doc);
    assert_eq!(client, Some(json!({"id": "d", "n": 3}).as_object().unwrap().clone()), "the version-2 write survives the delete of its input");
    let server = s0.store().dump("docs")[0].doc.clone().unwrap();
    assert_eq!(server.get("v2"), None, "the server no longer shows the withdrawn output: {server:?}");
    assert_eq!(server.get("n"), Some(&json!(3)));
    pass(&new, &s1, limits);
    pass(&old, &s1, limits);
    pass(&s0, &s1, limits);
    pass(&s1, &s0, limits);
    assert_eq!(without_bookkeeping(&s0), without_bookkeeping(&s1));
}

fn doc(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    v.as_object().unwrap().clone()
}

/// Seeds 14799, 14335 and 11586 of `make verify`'s 20,000 (P4): a version-2 client
/// migrated a document whose newest version-1 write was a patch, and a version-1 put
/// older than that patch but newer than the document's first put arrived late. The
/// input changed (the put's fields), its newest stamp did not, and the migration output
/// computed again was ordered against the first one by its hash alone — lower here, so
/// the relay that got both kept the stale output, and a relay that got the client's
/// snapshot showed the new one. Now output that replaces different output under a
/// document's layer orders after it (`migrate::settle`). Seed 11586 did the same through
/// a reset, whose staging generation now keeps the output the document was built on.
#[test]
fn quiescent_replicas_converge_when_a_late_op_is_older_than_the_newest_input_of_a_migration() {
    use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
    use std::sync::Arc;
    let limits = Limits::default();
    let (s0, s1) = (relay(1_000), relay(1_000));
    let wall = Arc::new(AtomicU64::new(1_000));
    let clock = wall.clone();
    let x = block_on(Replica::open(MemoryStore::new(), tidemark_testkit::scenarios::schema(), Box::new(move || clock.load(SeqCst)))).unwrap();
    let y = replica_at(MemoryStore::new(), 2_000);
    let schemas = tidemark::migrate::Schemas::new(versioned(2), vec![versioned(1)]).unwrap();
    let new = block_on(Replica::open_migrating(MemoryStore::new(), schemas, Box::new(MarkV2), Box::new(|| 4_000))).unwrap();
    block_on(x.put("docs", doc(json!({"id": "d", "a": 1, "n": 1})))).unwrap();
    wall.store(3_000, SeqCst);
    block_on(x.patch("docs", "d", doc(json!({"n": 2})))).unwrap();
    // Written at 2,000: after x's put, before its patch.
    block_on(y.put("docs", doc(json!({"id": "d", "a": 289, "n": 1})))).unwrap();
    pass(&x, &s0, limits);
    pass(&s0, &new, limits);
    pass(&new, &s0, limits);
    let shown = |r: &Replica<MemoryStore>| r.store().dump("docs")[0].doc.clone().unwrap();
    assert_eq!(shown(&s0), doc(json!({"id": "d", "a": 1, "n": 2, "v2": true})), "the server holds the first output");
    // The late put reaches the client through the other server.
    pass(&y, &s1, limits);
    pass(&s1, &new, limits);
    let client = block_on(new.get("docs", "d")).unwrap().and_then(|d| d.doc);
    assert_eq!(client, Some(doc(json!({"id": "d", "a": 289, "n": 2, "v2": true}))), "the client migrated the new input");
    pass(&new, &s0, limits);
    pass(&new, &s1, limits);
    for s in [&s0, &s1] {
        pass(&x, s, limits);
        pass(&y, s, limits);
    }
    pass(&s0, &s1, limits);
    pass(&s1, &s0, limits);
    assert_eq!(shown(&s0), doc(json!({"id": "d", "a": 289, "n": 2, "v2": true})), "the output of the complete input wins on the server that held the stale one");
    assert_eq!(without_bookkeeping(&s0), without_bookkeeping(&s1));
    let at_client = &new.store().dump("docs")[0];
    assert_eq!(at_client.stamps, s0.store().dump("docs")[0].stamps, "the client's document carries the stamp the servers keep");
}

/// Seed 5989 of `make verify`'s 20,000 (P4): a version-1 client pulled a version-2
/// client's migration output from one server and dropped it (it took the output for one
/// it computes itself), yet the table it then passed to another server said it had
/// everything of the version-2 client up to that row — so that server never asked for
/// the output, and the two servers differed for good. A replica now keeps (and forwards)
/// migration output of versions newer than its own, like any newer op.
#[test]
fn quiescent_replicas_converge_when_an_older_client_forwards_a_newer_clients_migration_output() {
    let limits = Limits::default();
    let (s0, s1, old, new) = migrated_on_a_server(limits);
    pass(&s0, &old, limits);
    let held = old.store().dump("docs")[0].layers.get(&2).map(|l| l.doc.clone());
    assert_eq!(held, Some(doc(json!({"id": "d", "n": 1, "v2": true}))), "the version-1 client keeps the version-2 output");
    pass(&old, &s1, limits);
    pass(&new, &s1, limits);
    pass(&s0, &s1, limits);
    pass(&s1, &s0, limits);
    assert_eq!(s1.store().dump("docs")[0].doc.as_ref().map(|d| d["v2"].clone()), Some(json!(true)), "the second server got the output");
    assert_eq!(without_bookkeeping(&s0), without_bookkeeping(&s1));
}
