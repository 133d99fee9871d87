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
