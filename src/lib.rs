//! Tidemark: an offline-first sync engine. A **replica** keeps an operation log and a
//! queryable store of JSON documents, merges concurrent writes per field (last writer
//! wins, by hybrid logical clock), migrates documents between schema versions, and syncs
//! with any other replica through one replication protocol whose checkpoints never lose
//! or duplicate a write. Everything outside `idb` and `wasm` is pure Rust and runs
//! natively; the browser parts sit behind `cfg(target_arch = "wasm32")`.
//!
//! # The layers, bottom to top
//!
//! Each module owns one rule; none imports a module above it (`tests/module_graph.rs`
//! checks that the graph stays acyclic).
//!
//! | module | owns |
//! |---|---|
//! | [`clock`] | hybrid logical clock stamps and their order (schema version first) |
//! | [`path`], [`key`] | dotted field paths; index keys in IndexedDB's key order |
//! | [`limits`] | bounds on input: path segments, nesting, sizes, table entries, clock skew |
//! | [`op`] | the op (`put` / `patch` / `delete`) and its shape rules |
//! | [`merge`] | per-field last-writer-wins over registers |
//! | [`layers`] | one merge state per schema version; migration output's stamps |
//! | [`schema`], [`query`] | collections and indexes; query parsing and planning |
//! | [`peer`] | sync points and the session histories that make them safe |
//! | [`store`] | the storage contract: one atomic `commit` per write |
//! | [`memory`], [`scan`] | the in-memory reference store; selection without native indexes |
//! | [`migrate`] | schema history, the app's migrations, a document's view at a version |
//! | [`rebuild`] | layers → stored documents (views, index keys, migration rows) |
//! | [`work`] | the one write path, for local writes and received rows alike |
//! | [`upgrade`] | building a new generation at a newer schema version |
//! | [`turns`] | call order: writes commit, and reads see them, in the order they were asked for |
//! | [`replica`] | the public face: writes, reads, queries, status |
//! | [`sync`] | the protocol: sans-IO sender/receiver machines, sessions, the connection driver |
//! | `idb`, `wasm` | IndexedDB storage and the JS API (wasm32 only) |
//!
//! The server (`tidemark-server`) adds a SQLite store and WebSockets around the same
//! `sync` machines; clients, servers and peer links share one implementation of every rule.
//!
//! # Example
//!
//! Two replicas edit one document offline; a pass each way merges them field by field:
//!
//! ```
//! use futures::executor::block_on;
//! use serde_json::json;
//! use tidemark::sync::{drive, transport::pipe, Limits};
//! use tidemark::{MemoryStore, Replica, Schema};
//!
//! let schema = Schema::from_json(json!({"version": 1, "collections": {
//!     "todos": {"primaryKey": "id", "indexes": {"byDone": "done"}}}})).unwrap();
//! let open = |wall: u64| block_on(Replica::open(MemoryStore::new(), schema.clone(), Box::new(move || wall))).unwrap();
//! let (a, b) = (open(1_000), open(2_000));
//! let doc = |v: serde_json::Value| v.as_object().unwrap().clone();
//! // One pass from `from` to `to` over an in-memory pipe, through the wire format.
//! let pass = |from: &Replica<MemoryStore>, to: &Replica<MemoryStore>| {
//!     let (mut x, mut y) = pipe();
//!     let (fid, tid) = (from.head().db_id, to.head().db_id);
//!     let session = tidemark::peer::new_session();
//!     let (sent, got) = block_on(futures::future::join(
//!         drive::send(from, &mut x, &tid, &session, Limits::default(), &mut |_| {}),
//!         drive::receive(to, &mut y, &fid, &session, &mut |_| {}),
//!     ));
//!     (sent.unwrap(), got.unwrap())
//! };
//! block_on(a.put("todos", doc(json!({"id": "milk", "title": "Milk", "done": false})))).unwrap();
//! pass(&a, &b);
//!
//! // Offline: both retitle it (b's clock reads later), only `a` ticks it off.
//! block_on(a.patch("todos", "milk", doc(json!({"title": "Whole milk", "done": true})))).unwrap();
//! block_on(b.patch("todos", "milk", doc(json!({"title": "Oat milk"})))).unwrap();
//! pass(&a, &b);
//! pass(&b, &a);
//!
//! // Per field, the later write wins: b's title, a's `done`.
//! let q = json!({"where": {"done": true}});
//! for r in [&a, &b] {
//!     let docs = block_on(r.query("todos", &q)).unwrap();
//!     assert_eq!(serde_json::Value::Object(docs[0].clone()), json!({"id": "milk", "title": "Oat milk", "done": true}));
//! }
//! ```

pub mod clock;
pub mod doc_pages;
pub mod error;
#[cfg(target_arch = "wasm32")]
pub mod idb;
pub mod key;
pub mod layers;
pub mod limits;
pub mod memory;
pub mod merge;
pub mod migrate;
pub mod op;
pub mod pairs;
pub mod path;
pub mod peer;
pub mod peer_records;
pub mod progress;
pub mod query;
pub mod rebuild;
pub mod replica;
pub mod scan;
pub mod schema;
pub mod sort;
pub mod store;
pub mod sync;
pub mod turns;
pub mod upgrade;
#[cfg(all(test, not(target_arch = "wasm32")))]
mod ts_types;
#[cfg(target_arch = "wasm32")]
pub mod wasm;
pub mod work;

pub use error::{Error, Result};
pub use memory::MemoryStore;
pub use replica::{Replica, Write};
pub use schema::Schema;
