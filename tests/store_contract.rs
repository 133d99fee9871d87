//! The storage contract (`tidemark_testkit::contract`) against the in-memory store; the
//! server runs it against SQLite and PostgreSQL, `tests/idb.rs` against IndexedDB.

#![cfg(not(target_arch = "wasm32"))]

use serde_json::{Map, Value};
use tidemark::memory::MemoryStore;
use tidemark_testkit::contract::{self, Fixture};

struct Memory;

impl Fixture for Memory {
    type S = MemoryStore;
    async fn fresh(&self) -> MemoryStore {
        MemoryStore::new()
    }
    fn json(doc: &Map<String, Value>) -> Value {
        Value::Object(doc.clone())
    }
}

#[test]
fn the_memory_store_keeps_the_contract() {
    futures::executor::block_on(contract::all(&Memory));
}

#[test]
fn the_memory_store_stages_and_swaps_generations() {
    futures::executor::block_on(contract::generations(&Memory));
}
