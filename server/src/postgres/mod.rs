//! PostgreSQL support: several `tidemark-server` instances serving the same libraries from
//! one database (DESIGN §12).
//!
//! - `positions` owns row ids and **stream positions**: a sequence per library, the
//!   `stream_positions` table, each instance's view of every writer (LISTEN/NOTIFY and a
//!   periodic re-read), and the persisted-up-to position that bounds what clients are shown.
//! - `tracker` is that view's bookkeeping without I/O (Synapse's `MultiWriterIdGenerator`).
//! - `database` is one process's handle on the database: pool, tables, positions, runtime.
//! - `store` is `PgStore`, a library's `tidemark::store::Store` written by every instance;
//!   `generation` its generations (stage, swap, abandon, settle).
//!
//! This module also holds what its parts share: the error type and the connection pool.

pub mod database;
mod generation;
pub mod positions;
pub mod store;
mod tracker;

pub use database::{Database, Settings};
pub use positions::{Allocation, Config, Positions, RowsTable, Stream};
pub use store::PgStore;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};

/// What can go wrong talking to PostgreSQL. `code()` gives a stable name for each kind.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("postgres: {}", with_causes(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("postgres pool: {}", with_causes(.0))]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("instance {0:?} is not a writer: it cannot allocate row ids")]
    NotAWriter(String),
    #[error("instance {0:?} was dropped from library {1:?} as dead and could not rejoin inside this transaction; roll back and retry")]
    Fenced(String, String),
    #[error("instance name {0:?} is in use by another live process on this database")]
    InstanceInUse(String),
    #[error("instance {0:?} still has a transaction open in library {1:?}")]
    Busy(String, String),
    #[error("bad configuration: {0}")]
    Config(String),
    #[error("a database task failed: {0}")]
    Task(String),
}

/// An error with the errors that caused it: tokio-postgres shows only "db error" or "error
/// connecting to server" and keeps what the database said (the database does not exist, a
/// password was refused, the connection was refused) in its source.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let said = c.to_string();
        if !text.ends_with(&said) {
            text = format!("{text}: {said}");
        }
        cause = c.source();
    }
    text
}

impl Error {
    /// A stable machine-readable code for the error's kind.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Db(_) => "postgres",
            Error::Pool(_) => "postgres_pool",
            Error::NotAWriter(..) => "not_a_writer",
            Error::Fenced(..) => "fenced",
            Error::InstanceInUse(_) => "instance_in_use",
            Error::Busy(..) => "busy",
            Error::Config(_) => "bad_config",
            Error::Task(_) => "task",
        }
    }
}

/// A connection pool on `config` (plain TCP; PostgreSQL on another host wants TLS, which is
/// not built in yet). Stream positions need at least two connections: an allocation may
/// rejoin on a second connection while the caller's transaction holds the first.
pub fn pool(config: tokio_postgres::Config, max_size: usize) -> Result<Pool, Error> {
    let manager = Manager::from_config(
        config,
        tokio_postgres::NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(max_size.max(2))
        .build()
        .map_err(|e| Error::Config(e.to_string()))
}

/// Quotes an SQL identifier (a table or column name from configuration, never user input).
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
