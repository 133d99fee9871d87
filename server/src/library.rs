//! The library registry: which libraries exist, and one open relay replica per library, over
//! the store the server was started with.
//!
//! - **SQLite** (the default): a library is one file, `<data>/<library>.sqlite`, written by
//!   this process alone.
//! - **PostgreSQL** (`--postgres URL --instance NAME`): every library lives in one database
//!   that several instances serve at once (`postgres`); a library one instance creates is
//!   there for all of them.
//!
//! A library is opened lazily, on the first connection or status request that names it, and
//! then shared by every connection: one `Replica` (so one head cache) and one store per
//! library. Opening one library never holds up requests for another (each has its own
//! once-cell). Names are restricted to `[A-Za-z0-9_-]{1,64}` so a name can never escape the
//! data directory or collide with SQLite's `-wal`/`-shm` side files.
//!
//! Each library also tells when rows become visible to clients (`LibraryStore::subscribe`):
//! after a local commit that logged rows, and — on PostgreSQL — whenever the persisted-up-to
//! position moves because any instance's rows finished. That is where connected clients get
//! woken (poked) from.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use thiserror::Error;
use tidemark::error::{Error, StoreError};
use tidemark::peer::PeerRecord;
use tidemark::query::Plan;
use tidemark::store::{Commit, DocKey, Head, Loaded, Row, Store, StoredDoc};
use tidemark::Replica;
use tokio::sync::{watch, OnceCell};

use crate::postgres::{Database, PgStore};
use crate::sqlite::SqliteStore;

/// A server's copy of one library.
pub type Library = Replica<LibraryStore>;

#[derive(Debug, Error)]
pub enum LibraryError {
    #[error("invalid library name {0:?}: use 1 to 64 letters, digits, '_' or '-'")]
    InvalidName(String),
    #[error("library {0:?} does not exist")]
    NotFound(String),
    #[error("cannot open library {name:?}: {source}")]
    Open { name: String, source: tidemark::Error },
}

impl LibraryError {
    /// The protocol / HTTP error code for this failure.
    pub fn code(&self) -> &'static str {
        match self {
            LibraryError::InvalidName(_) => "BAD_LIBRARY",
            LibraryError::NotFound(_) => "UNKNOWN_LIBRARY",
            LibraryError::Open { .. } => "STORAGE_ERROR",
        }
    }
}

/// Whether `name` is a valid library name.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn wall_clock_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Where libraries are stored.
#[derive(Clone)]
pub enum Storage {
    /// One SQLite file per library in this directory.
    Sqlite(PathBuf),
    /// One PostgreSQL database shared with other instances.
    Postgres(Database),
}

/// A library's store: whichever the server was started with.
pub struct LibraryStore {
    backend: Backend,
    /// The newest row clients may be shown, moved when rows land (see the module doc).
    landed: watch::Sender<u64>,
}

enum Backend {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

impl LibraryStore {
    pub fn sqlite(store: SqliteStore) -> LibraryStore {
        LibraryStore { backend: Backend::Sqlite(store), landed: watch::channel(0).0 }
    }

    pub fn postgres(store: PgStore) -> LibraryStore {
        LibraryStore { backend: Backend::Postgres(store), landed: watch::channel(0).0 }
    }

    /// The PostgreSQL store, when the library lives there.
    pub fn as_postgres(&self) -> Option<&PgStore> {
        match &self.backend {
            Backend::Postgres(s) => Some(s),
            Backend::Sqlite(_) => None,
        }
    }

    /// Wakes whenever new rows become visible to clients; holds the newest visible row.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.landed.subscribe()
    }

    fn landed(&self, row: u64) {
        self.landed.send_if_modified(|seen| {
            let moved = row > *seen;
            *seen = (*seen).max(row);
            moved
        });
    }
}

macro_rules! each {
    ($self:expr, $s:ident => $e:expr) => {
        match &$self.backend {
            Backend::Sqlite($s) => $e,
            Backend::Postgres($s) => $e,
        }
    };
}

impl Store for LibraryStore {
    type Doc = Map<String, Value>;

    async fn head(&self) -> Result<Option<Head>, StoreError> {
        each!(self, s => s.head().await)
    }

    async fn get(&self, collection: &str, id: &str) -> Result<Option<StoredDoc>, StoreError> {
        each!(self, s => s.get(collection, id).await)
    }

    async fn commit<F>(&self, keys: &[DocKey], peers: &[String], f: F) -> Result<Commit, Error>
    where
        F: FnOnce(Loaded) -> Result<Commit, Error>,
    {
        let commit = each!(self, s => s.commit(keys, peers, f).await)?;
        // On PostgreSQL rows become visible when the persisted-up-to position reaches them
        // (the registry's watcher reports that); on SQLite at once.
        if let (Backend::Sqlite(_), Some(last)) = (&self.backend, commit.rows.last()) {
            self.landed(last.row);
        }
        Ok(commit)
    }

    async fn query(&self, collection: &str, primary_key: &str, plan: &Plan) -> Result<Vec<Map<String, Value>>, StoreError> {
        each!(self, s => s.query(collection, primary_key, plan).await)
    }

    async fn rows_after(&self, after: u64, limit: usize) -> Result<Vec<Row>, StoreError> {
        each!(self, s => s.rows_after(after, limit).await)
    }

    async fn peers(&self) -> Result<BTreeMap<String, PeerRecord>, StoreError> {
        each!(self, s => s.peers().await)
    }

    async fn docs_after(&self, after: Option<&DocKey>, limit: usize) -> Result<Vec<(String, StoredDoc)>, StoreError> {
        each!(self, s => s.docs_after(after, limit).await)
    }

    async fn doc_count(&self) -> Result<u64, StoreError> {
        each!(self, s => s.doc_count().await)
    }

    type Staging = LibraryStore;

    /// A server's library is a relay: it merges snapshots and never rebuilds a generation.
    async fn stage(&self, _schema: &tidemark::Schema) -> Result<LibraryStore, Error> {
        Err(StoreError::Unsupported("a server's library merges snapshots; it has no staging generation".into()).into())
    }

    async fn swap(&self, _staging: LibraryStore) -> Result<(), Error> {
        Err(StoreError::Unsupported("a server's library has no staging generation".into()).into())
    }

    async fn abandon(&self, _staging: LibraryStore) -> Result<(), Error> {
        Ok(())
    }

    /// Never sealed: nothing to wait for.
    async fn settle(&self) -> Result<(), Error> {
        Ok(())
    }
}

/// Opens libraries on demand and keeps them open.
pub struct Registry {
    storage: Storage,
    /// One cell per library name ever asked for; the map's lock is only held to find the
    /// cell, never while a library opens.
    open: Mutex<HashMap<String, Arc<OnceCell<Arc<Library>>>>>,
    /// `maxClockSkew` of every library opened here, in ms (`--max-clock-skew`).
    max_clock_skew: u64,
}

impl Registry {
    /// Libraries in SQLite files under `data`.
    pub fn new(data: impl Into<PathBuf>) -> Registry {
        Registry::with(Storage::Sqlite(data.into()))
    }

    pub fn with(storage: Storage) -> Registry {
        Registry { storage, open: Mutex::new(HashMap::new()), max_clock_skew: tidemark::limits::DEFAULT_MAX_CLOCK_SKEW_MS }
    }

    /// Libraries opened from now on refuse stamps further than `ms` ahead of this
    /// server's clock.
    pub fn with_max_clock_skew(mut self, ms: u64) -> Registry {
        self.max_clock_skew = ms;
        self
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The SQLite data directory (`None` on PostgreSQL).
    pub fn data_dir(&self) -> Option<&Path> {
        match &self.storage {
            Storage::Sqlite(dir) => Some(dir),
            Storage::Postgres(_) => None,
        }
    }

    /// Every library stored, sorted (on PostgreSQL: created by any instance).
    pub async fn names(&self) -> Result<Vec<String>, LibraryError> {
        match &self.storage {
            Storage::Sqlite(dir) => Ok(crate::listing::local(dir)),
            Storage::Postgres(db) => {
                let mut names = db.libraries().await.map_err(|e| LibraryError::Open { name: "*".into(), source: StoreError::Backend(e.to_string()).into() })?;
                names.retain(|n| valid_name(n));
                Ok(names)
            }
        }
    }

    /// The library, opened (and created) if needed: what a sync connection uses.
    pub async fn open(&self, name: &str) -> Result<Arc<Library>, LibraryError> {
        self.get(name, true).await
    }

    /// The library if it exists (status requests never create one).
    pub async fn existing(&self, name: &str) -> Result<Arc<Library>, LibraryError> {
        self.get(name, false).await
    }

    async fn get(&self, name: &str, create: bool) -> Result<Arc<Library>, LibraryError> {
        if !valid_name(name) {
            return Err(LibraryError::InvalidName(name.to_string()));
        }
        let cell = self.open.lock().unwrap_or_else(|p| p.into_inner()).entry(name.to_string()).or_default().clone();
        if let Some(lib) = cell.get() {
            return Ok(lib.clone());
        }
        if !create && !self.exists(name).await? {
            return Err(LibraryError::NotFound(name.to_string()));
        }
        cell.get_or_try_init(|| self.load(name)).await.cloned()
    }

    async fn exists(&self, name: &str) -> Result<bool, LibraryError> {
        match &self.storage {
            Storage::Sqlite(dir) => Ok(dir.join(format!("{name}.sqlite")).is_file()),
            Storage::Postgres(db) => db.exists(name).await.map_err(|e| fail(name, StoreError::Backend(e.to_string()).into())),
        }
    }

    async fn load(&self, name: &str) -> Result<Arc<Library>, LibraryError> {
        let store = match &self.storage {
            Storage::Sqlite(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| fail(name, StoreError::Backend(format!("cannot create {}: {e}", dir.display())).into()))?;
                let path = dir.join(format!("{name}.sqlite"));
                LibraryStore::sqlite(SqliteStore::open(&path).map_err(|e| fail(name, e.into()))?)
            }
            Storage::Postgres(db) => LibraryStore::postgres(PgStore::open(db, name).await.map_err(|e| fail(name, StoreError::Backend(e.to_string()).into()))?),
        };
        let replica = Replica::open_relay(store, Box::new(wall_clock_ms)).await.map_err(|e| fail(name, e))?;
        replica.set_max_clock_skew(self.max_clock_skew);
        let head = replica.head();
        tracing::info!(library = name, db_id = %head.db_id, max_row = head.max_row, "opened library");
        let lib = Arc::new(replica);
        if lib.store().as_postgres().is_some() {
            tokio::spawn(follow(lib.clone()));
        }
        Ok(lib)
    }
}

fn fail(name: &str, source: tidemark::Error) -> LibraryError {
    LibraryError::Open { name: name.to_string(), source }
}

/// On PostgreSQL: follows the library's persisted-up-to position, which moves when any
/// instance's rows finish (LISTEN/NOTIFY, or the periodic re-read). Each move refreshes the
/// replica's cached head (what `welcome` and every pass start from) and wakes the library's
/// subscribers.
async fn follow(lib: Arc<Library>) {
    let Some(pg) = lib.store().as_postgres() else { return };
    let mut moved = pg.stream().subscribe();
    loop {
        let visible = (*moved.borrow_and_update()).max(0) as u64;
        let head = lib.head();
        if visible > head.max_row {
            lib.committed(&Commit { head: Some(Head { max_row: visible, ..head }), ..Commit::default() });
        }
        lib.store().landed(visible);
        if moved.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::valid_name;

    #[test]
    fn names() {
        assert!(valid_name("demo") && valid_name("A-b_9") && valid_name(&"x".repeat(64)));
        for bad in ["", "../x", "a/b", "a.b", "a b", "é", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }
}
