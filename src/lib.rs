//! Tidemark: an offline-first sync engine. The engine (everything outside `idb` and
//! `wasm`) is pure Rust and runs natively; the browser parts sit behind
//! `cfg(target_arch = "wasm32")`.

pub mod clock;
pub mod error;
#[cfg(target_arch = "wasm32")]
pub mod idb;
pub mod key;
pub mod memory;
pub mod merge;
pub mod migrate;
pub mod op;
pub mod path;
pub mod query;
pub mod replica;
pub mod schema;
pub mod store;
pub mod sync;
#[cfg(all(test, not(target_arch = "wasm32")))]
mod ts_types;
#[cfg(target_arch = "wasm32")]
pub mod wasm;

pub use error::{Error, Result};
pub use memory::MemoryStore;
pub use replica::{Replica, Write};
pub use schema::Schema;
