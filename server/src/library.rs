//! The library registry: which libraries exist, and one open relay replica per library.
//!
//! A library is one SQLite file, `<data>/<library>.sqlite`. It is opened lazily, on the
//! first connection or status request that names it, and then shared by every connection:
//! one `Replica` (so one head cache) and one `SqliteStore` connection per file, so
//! concurrent clients' commits serialize on the store's lock instead of racing on the file.
//! Names are restricted to `[A-Za-z0-9_-]{1,64}` so a name can never escape the data
//! directory or collide with SQLite's `-wal`/`-shm` side files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use thiserror::Error;
use tidemark::Replica;
use tokio::sync::Mutex;

use crate::sqlite::SqliteStore;

/// A server's copy of one library.
pub type Library = Replica<SqliteStore>;

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

/// Opens libraries on demand and keeps them open.
pub struct Registry {
    data: PathBuf,
    /// An async lock, held while a library is opened, so two first connections to the same
    /// library cannot open the file twice.
    open: Mutex<HashMap<String, Arc<Library>>>,
}

impl Registry {
    pub fn new(data: impl Into<PathBuf>) -> Registry {
        Registry { data: data.into(), open: Mutex::new(HashMap::new()) }
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    fn file(&self, name: &str) -> PathBuf {
        self.data.join(format!("{name}.sqlite"))
    }

    /// The library, opened (and created on disk) if needed: what a sync connection uses.
    pub async fn open(&self, name: &str) -> Result<Arc<Library>, LibraryError> {
        self.get(name, true).await
    }

    /// The library if it exists on disk (status requests never create one).
    pub async fn existing(&self, name: &str) -> Result<Arc<Library>, LibraryError> {
        self.get(name, false).await
    }

    async fn get(&self, name: &str, create: bool) -> Result<Arc<Library>, LibraryError> {
        if !valid_name(name) {
            return Err(LibraryError::InvalidName(name.to_string()));
        }
        let mut open = self.open.lock().await;
        if let Some(lib) = open.get(name) {
            return Ok(lib.clone());
        }
        let path = self.file(name);
        if !create && !path.is_file() {
            return Err(LibraryError::NotFound(name.to_string()));
        }
        let fail = |source: tidemark::Error| LibraryError::Open { name: name.to_string(), source };
        std::fs::create_dir_all(&self.data)
            .map_err(|e| fail(tidemark::error::StoreError::Backend(format!("cannot create {}: {e}", self.data.display())).into()))?;
        let store = SqliteStore::open(&path).map_err(|e| fail(e.into()))?;
        let replica = Replica::open_relay(store, Box::new(wall_clock_ms)).await.map_err(fail)?;
        let head = replica.head();
        tracing::info!(library = name, db_id = %head.db_id, max_row = head.max_row, "opened library");
        let lib = Arc::new(replica);
        open.insert(name.to_string(), lib.clone());
        Ok(lib)
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
