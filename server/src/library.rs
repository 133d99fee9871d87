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
//!
//! Peer records are pruned by a size policy (`PeerPolicy`, DESIGN §5 "Bounded metadata"):
//! every record written is stamped with the time (`PeerRecord::seen`); records not written
//! for `max_age` go, and beyond `max_peers` per library the least recently written go. A
//! pruned peer loses only what the record made cheap: with no session in common, its next
//! push starts from the beginning (merging is idempotent) and its next pull may be a
//! snapshot — never a lost or skipped row. Pruning runs when a library opens and then
//! every `PRUNE_EVERY`; the tables a pass forwards are capped by the engine meanwhile.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use thiserror::Error;
use tidemark::error::{Error, StoreError};
use tidemark::peer::PeerRecord;
use tidemark::query::Plan;
use tidemark::doc_pages::DocPages;
use tidemark::store::{Commit, DocKey, Head, Loaded, Row, RowKey, Store, StoredDoc, StoredText};
use tidemark::Replica;
use tokio::sync::{watch, OnceCell};

use crate::postgres::{Database, PgStore};
use crate::recent_rows::{RecentRows, WireRows};
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
            // A full disk or a damaged file keeps its own code; any other failure to open
            // is the storage's.
            LibraryError::Open { source, .. } if matches!(source.code(), "DISK_FULL" | "CORRUPT") => source.code(),
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
    /// The keys of recent log rows, for the snapshot decision of many pulls at once.
    recent: RecentRows,
    /// Snapshot pages shared by pulls while no document changes. On PostgreSQL other
    /// instances write too, unseen by this one: there a page serves only snapshots ending
    /// at or below the persisted-up-to position when it was read (`DocPages::following_rows`).
    pages: Option<DocPages>,
}

enum Backend {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

impl LibraryStore {
    pub fn sqlite(store: SqliteStore) -> LibraryStore {
        LibraryStore { backend: Backend::Sqlite(store), landed: watch::channel(0).0, recent: RecentRows::default(), pages: Some(DocPages::default()) }
    }

    pub fn postgres(store: PgStore) -> LibraryStore {
        LibraryStore { backend: Backend::Postgres(store), landed: watch::channel(0).0, recent: RecentRows::default(), pages: Some(DocPages::following_rows()) }
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
        if let Some(pages) = &self.pages {
            pages.shown(row);
        }
        self.landed.send_if_modified(|seen| {
            let moved = row > *seen;
            *seen = (*seen).max(row);
            moved
        });
    }
}

impl LibraryStore {
    /// Binds the db id `db_id` to `user` (origins are bound to identity, DESIGN §5): the
    /// first user to connect with a db id owns it from then on. Returns the other user it
    /// belongs to, if it does (the connection must be refused: its pushes would pass off
    /// ops as another user's replica's, which echo suppression then hides from it).
    pub async fn bind(&self, db_id: &str, user: &str) -> Result<Option<String>, Error> {
        let mut other = None;
        let ids = [db_id.to_string()];
        self.commit(&[], &ids, |loaded| {
            let rec = loaded.peers.into_iter().next().flatten();
            match rec {
                Some(r) if r.owner.as_deref() == Some(user) => Ok(Commit::default()),
                Some(r) if r.owner.is_some() => {
                    other = r.owner;
                    Ok(Commit::default())
                }
                r => {
                    let mut r = r.unwrap_or_else(PeerRecord::new);
                    r.owner = Some(user.to_string());
                    Ok(Commit { peers: vec![(db_id.to_string(), r)], ..Commit::default() })
                }
            }
        })
        .await?;
        Ok(other)
    }

    /// Removes the peer records `policy` prunes (see the module doc); returns their ids.
    /// A record written meanwhile is kept (each removal is conditional on the record read).
    pub async fn prune(&self, policy: &PeerPolicy, now: u64) -> Result<Vec<String>, StoreError> {
        let peers = self.peers().await?;
        let gone = policy.to_forget(&peers, now);
        if gone.is_empty() {
            return Ok(gone);
        }
        let rows = gone
            .iter()
            .filter_map(|id| Some((id.clone(), serde_json::to_string(peers.get(id)?).ok()?)))
            .collect::<Vec<_>>();
        match &self.backend {
            Backend::Sqlite(s) => s.forget_peers(rows).await?,
            Backend::Postgres(s) => s.forget_peers(rows).await?,
        };
        Ok(gone)
    }
}

/// How many peer records a library keeps, and for how long (`--max-peers`,
/// `--peer-max-age`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerPolicy {
    pub max_peers: usize,
    pub max_age: Duration,
}

impl Default for PeerPolicy {
    fn default() -> PeerPolicy {
        PeerPolicy { max_peers: tidemark::limits::MAX_TABLE_ENTRIES, max_age: Duration::from_secs(90 * 24 * 3600) }
    }
}

/// How often open libraries are pruned.
pub const PRUNE_EVERY: Duration = Duration::from_secs(5);

impl PeerPolicy {
    /// The records to remove at `now` (ms): those not written for `max_age`, then the
    /// least recently written beyond `max_peers`. A record never stamped (written by an
    /// older server) never ages out, but is the first to go when there are too many.
    pub fn to_forget(&self, peers: &BTreeMap<String, PeerRecord>, now: u64) -> Vec<String> {
        let max_age = self.max_age.as_millis().min(u64::MAX as u128) as u64;
        let mut by_age: Vec<(Option<u64>, &String)> = peers.iter().map(|(id, r)| (r.seen, id)).collect();
        // Newest first; ties by id so the choice is stable.
        by_age.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        by_age
            .iter()
            .enumerate()
            .filter(|(i, (seen, _))| *i >= self.max_peers || seen.is_some_and(|t| now.saturating_sub(t) > max_age))
            .map(|(_, (_, id))| (*id).clone())
            .collect()
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

impl LibraryStore {
    /// The backend's log rows with their wire text (`RecentRows` keeps them).
    async fn wire_rows_after(&self, after: u64, limit: usize) -> Result<WireRows, StoreError> {
        each!(self, s => s.wire_rows_after(after, limit).await)
    }
}

/// `f`, with every peer record it writes stamped with the time, for pruning (see the
/// module doc).
fn stamped<F>(f: F) -> impl FnOnce(Loaded) -> Result<Commit, Error>
where
    F: FnOnce(Loaded) -> Result<Commit, Error>,
{
    let now = wall_clock_ms();
    move |loaded| {
        let mut c = f(loaded)?;
        for (_, rec) in &mut c.peers {
            rec.seen = Some(now);
        }
        Ok(c)
    }
}

impl LibraryStore {
    /// Runs a commit (`commit`, not yet polled) of the documents at `keys`: the snapshot
    /// pages wait for it to end, and on SQLite its rows are shown to clients at once (on
    /// PostgreSQL when the persisted-up-to position reaches them: the registry's watcher
    /// reports that).
    async fn committing(&self, keys: &[DocKey], commit: impl std::future::Future<Output = Result<Commit, Error>>) -> Result<Commit, Error> {
        // A commit writes documents only at the keys it reads (the store contract).
        let writing = self.doc_pages().filter(|_| !keys.is_empty()).map(DocPages::writing);
        let commit = commit.await;
        drop(writing);
        let commit = commit?;
        if let (Backend::Sqlite(_), Some(last)) = (&self.backend, commit.rows.last()) {
            self.landed(last.row);
        }
        Ok(commit)
    }
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
        let f = stamped(f);
        each!(self, s => self.committing(keys, s.commit(keys, peers, f)).await)
    }

    async fn commit_owned<F>(&self, keys: &[DocKey], peers: &[String], f: F) -> Result<Commit, Error>
    where
        F: FnOnce(Loaded) -> Result<Commit, Error> + Send + 'static,
    {
        let f = stamped(f);
        each!(self, s => self.committing(keys, s.commit_owned(keys, peers, f)).await)
    }

    async fn query(&self, collection: &str, primary_key: &str, plan: &Plan) -> Result<Vec<Map<String, Value>>, StoreError> {
        each!(self, s => s.query(collection, primary_key, plan).await)
    }

    async fn rows_after(&self, after: u64, limit: usize) -> Result<Vec<Row>, StoreError> {
        each!(self, s => s.rows_after(after, limit).await)
    }

    async fn row_keys_after(&self, after: u64, limit: usize) -> Result<Vec<RowKey>, StoreError> {
        each!(self, s => s.row_keys_after(after, limit).await)
    }

    fn doc_pages(&self) -> Option<&DocPages> {
        self.pages.as_ref()
    }

    async fn with_row_keys_after<R>(&self, after: u64, limit: usize, f: impl FnOnce(&[RowKey]) -> R) -> Result<R, StoreError> {
        self.recent.with_after(after, limit, |a, n| self.wire_rows_after(a, n), |keys, _| f(keys)).await
    }

    async fn with_wire_rows_after<R>(&self, after: u64, limit: usize, f: impl FnOnce(&[RowKey], &[Arc<str>]) -> R) -> Result<Option<R>, StoreError> {
        self.recent.with_after(after, limit, |a, n| self.wire_rows_after(a, n), f).await.map(Some)
    }

    async fn resolutions_after(&self, after: u64) -> Result<Vec<Row>, StoreError> {
        each!(self, s => s.resolutions_after(after).await)
    }

    async fn peers(&self) -> Result<BTreeMap<String, PeerRecord>, StoreError> {
        each!(self, s => s.peers().await)
    }

    async fn with_peer_and_summary<R>(&self, peer: &str, f: impl FnOnce(Option<&PeerRecord>, &tidemark::peer_records::PeerRecords) -> R) -> Result<R, StoreError> {
        each!(self, s => s.with_peer_and_summary(peer, f).await)
    }

    async fn docs_after(&self, after: Option<&DocKey>, limit: usize) -> Result<Vec<(String, StoredDoc)>, StoreError> {
        each!(self, s => s.docs_after(after, limit).await)
    }

    async fn stored_texts_after(&self, after: Option<&DocKey>, limit: usize) -> Result<Option<Vec<StoredText>>, StoreError> {
        each!(self, s => s.stored_texts_after(after, limit).await)
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
    /// How many peer records each library keeps, and for how long.
    peer_policy: PeerPolicy,
}

impl Registry {
    /// Libraries in SQLite files under `data`.
    pub fn new(data: impl Into<PathBuf>) -> Registry {
        Registry::with(Storage::Sqlite(data.into()))
    }

    pub fn with(storage: Storage) -> Registry {
        Registry { storage, open: Mutex::new(HashMap::new()), max_clock_skew: tidemark::limits::DEFAULT_MAX_CLOCK_SKEW_MS, peer_policy: PeerPolicy::default() }
    }

    /// Libraries opened from now on refuse stamps further than `ms` ahead of this
    /// server's clock.
    pub fn with_max_clock_skew(mut self, ms: u64) -> Registry {
        self.max_clock_skew = ms;
        self
    }

    /// Libraries opened from now on prune their peer records by `policy`.
    pub fn with_peer_policy(mut self, policy: PeerPolicy) -> Registry {
        self.peer_policy = policy;
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
                // Opening creates tables and reads every peer record, and may wait on
                // SQLite's busy timeout: SQLite work never blocks the async runtime.
                let opened = tokio::task::spawn_blocking(move || SqliteStore::open(&path)).await;
                let opened = opened.map_err(|e| fail(name, StoreError::Backend(format!("opening the library failed: {e}")).into()))?;
                LibraryStore::sqlite(opened.map_err(|e| fail(name, e.into()))?)
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
        tokio::spawn(prune(name.to_string(), lib.clone(), self.peer_policy));
        Ok(lib)
    }
}

fn fail(name: &str, source: tidemark::Error) -> LibraryError {
    LibraryError::Open { name: name.to_string(), source }
}

/// Prunes the library's peer records now and every `PRUNE_EVERY` (libraries stay open).
async fn prune(name: String, lib: Arc<Library>, policy: PeerPolicy) {
    loop {
        match lib.store().prune(&policy, wall_clock_ms()).await {
            Ok(gone) if !gone.is_empty() => {
                lib.forget_peers(&gone);
                tracing::info!(library = name, pruned = gone.len(), "pruned peer records");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(library = name, error = %e, "could not prune peer records"),
        }
        tokio::time::sleep(PRUNE_EVERY).await;
    }
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
    use super::*;

    #[test]
    fn the_policy_forgets_the_old_then_the_least_recent() {
        let rec = |seen: Option<u64>| PeerRecord { seen, ..PeerRecord::new() };
        let peers: BTreeMap<String, PeerRecord> =
            [("a", Some(1_000)), ("b", Some(9_000)), ("c", Some(8_000)), ("d", None), ("e", Some(7_000))].into_iter().map(|(k, s)| (k.to_string(), rec(s))).collect();
        let policy = PeerPolicy { max_peers: 3, max_age: Duration::from_secs(5) };
        // At 10 s: b, c, e are the newest three; a is also 9 s old (over 5 s); d, never
        // stamped, is the least recent.
        assert_eq!(policy.to_forget(&peers, 10_000), vec!["a".to_string(), "d".to_string()]);
        let few = PeerPolicy { max_peers: 10, max_age: Duration::from_secs(5) };
        assert_eq!(few.to_forget(&peers, 10_000), vec!["a".to_string()], "an unstamped record never ages out");
        let roomy = PeerPolicy { max_peers: 10, max_age: Duration::from_secs(3600) };
        assert!(roomy.to_forget(&peers, 10_000).is_empty());
    }

    #[test]
    fn names() {
        assert!(valid_name("demo") && valid_name("A-b_9") && valid_name(&"x".repeat(64)));
        for bad in ["", "../x", "a/b", "a.b", "a b", "é", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }
}
