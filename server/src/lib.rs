//! `tidemark-server`: the Tidemark sync server as a library, so integration tests and
//! embedders can reach its parts. The binary (`main.rs`) only parses flags and starts it.
//!
//! The server is a relay replica per library (DESIGN §8): it stores and forwards every
//! collection without knowing the app's schema, and all merge and protocol rules come from
//! the `tidemark` engine — this crate only adds durable storage (`sqlite`), the network
//! (`http`, `ws`, `socket`), access control (`auth`), the library registry (`library`) and
//! replication with other servers (`peers`, over `upstream` connections, with `listing`
//! to learn which libraries a peer holds), per-client quotas (`quota`), and gateways to foreign stores (`foreign`:
//! CouchDB and plain REST APIs, DESIGN §11).

pub mod app;
pub mod auth;
pub mod foreign;
pub mod http;
pub mod library;
pub mod listen;
pub mod listing;
pub mod peers;
pub mod postgres;
pub mod quota;
pub mod recent_rows;
pub mod socket;
pub mod sqlite;
pub mod upstream;
pub mod ws;

pub use app::{App, Settings};
pub use sqlite::SqliteStore;
