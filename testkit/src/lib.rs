//! Test support shared by Tidemark's crates, so every store is held to one behaviour
//! without copying tests:
//! - `contract`: the storage contract, one async suite run against every `Store`
//!   (memory and SQLite natively, IndexedDB in the browser, PostgreSQL);
//! - `scenarios`: DESIGN §9's protocol scenarios, generic over a `Backend`, run by the
//!   engine over memory stores and by the server over SQLite (`conformance!`);
//! - `faults`: stores that fail on purpose, to cut work short at every step;
//! - `postgres`: a private PostgreSQL cluster per test run (`PgCluster`), natively only;
//! - `sim`: a deterministic simulation of the real engine under faults (issue 14).

pub mod contract;
pub mod faults;
#[cfg(not(target_arch = "wasm32"))]
pub mod postgres;
pub mod scenarios;
#[cfg(not(target_arch = "wasm32"))]
pub mod sim;

#[cfg(not(target_arch = "wasm32"))]
pub use postgres::PgCluster;
