//! The wasm-bindgen API: a thin layer that translates between JS and the engine and does
//! nothing else. One module per concept: `convert` (JS values ↔ JSON), `error` (engine
//! errors → JS `Error` with `code`), `replica` (the `Replica` class), `client` (sync
//! rounds, live sync, events) and `socket` (the WebSocket transport).

mod client;
mod convert;
mod error;
mod migrations;
mod replica;
mod socket;

pub use replica::{delete_replica, open_replica, JsReplica};
