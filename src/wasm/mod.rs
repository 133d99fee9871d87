//! The wasm-bindgen API: a thin layer that translates between JS and the engine and does
//! nothing else. One module per concept: `convert` (JS values ↔ JSON), `error` (engine
//! errors → JS `Error` with `code`), `replica` (the `Replica` class).

mod convert;
mod error;
mod replica;

pub use replica::{delete_replica, open_replica, JsReplica};
