//! `SqliteStore`: the server's durable `tidemark::store::Store`, one SQLite file per library.
//!
//! It must behave exactly like the engine's reference `MemoryStore` (the conformance tests
//! run the same scenarios against both); what it adds is durability. Every `commit` is ONE
//! SQLite transaction (head, log rows, documents and peer records together), the database
//! runs in WAL mode with `synchronous=FULL`, so a server killed with SIGKILL at any moment
//! restarts with every acknowledged commit and nothing half-written: no row lost, none
//! applied twice.
//!
//! Tables (all values are the engine's own JSON forms, so the file stays readable with the
//! `sqlite3` shell and needs no migration when the engine adds optional fields):
//! - `head(id = 0, state)`: the replica's `Head`;
//! - `log(row INTEGER PRIMARY KEY, op, "from")`: the op log, ascending by row;
//! - `docs(collection, id, state)`: each document's `StoredDoc`;
//! - `peers(db_id, record)`: each peer's `PeerRecord` (sync points and sessions).
//!
//! SQLite work never runs on the async runtime, and concurrent sessions do not queue for one
//! connection: commits go to the file's writer thread (`writer`), which groups the commits
//! waiting at a time into one transaction — one fsync — and acknowledges each only after it;
//! reads run on read connections (`readers`) on the blocking pool, and see the last committed
//! state (WAL), never a group still being written.
//!
//! The peer records are also kept in memory (`Peers`), because every pass reads all of
//! them (a server's library has one per client): loaded when the file opens, updated by
//! the writer after each group commits (in commit order, before anyone is told), so
//! `peers()` never reads or decodes the table; and they are kept newest first
//! (`PeerRecords`), so a pass's table and marks take the first few instead of sorting all.
//! Only this process writes the file (another process writing it meanwhile is not
//! supported).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use tidemark::error::{Error, StoreError};
use tidemark::key::cmp_utf16;
use tidemark::scan::select;
use tidemark::query::{Plan, Source};
use tidemark::peer::PeerRecord;
use tidemark::peer_records::PeerRecords;
use tidemark::store::{Commit, DocKey, Head, Loaded, Row, RowKey, Store, StoredDoc, StoredText};

mod readers;
mod writer;

use readers::Readers;
use crate::recent_rows::{wire_row, WireRows};
use writer::{CommitJob, Compute, Job, Writer};

/// The layout version this code writes, kept in `PRAGMA user_version`.
const FORMAT: i64 = 1;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS head (id INTEGER PRIMARY KEY CHECK (id = 0), state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS log (row INTEGER PRIMARY KEY, op TEXT NOT NULL, "from" TEXT);
CREATE TABLE IF NOT EXISTS docs (
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (collection, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS peers (db_id TEXT PRIMARY KEY, record TEXT NOT NULL) WITHOUT ROWID;
-- The resolution log (DESIGN §11): the rows of `log` that hold resolutions.
CREATE TABLE IF NOT EXISTS resolutions (row INTEGER PRIMARY KEY);
"#;

/// Log rows as a query over `log` selects them: (row, op, from).
fn log_rows(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<Vec<Row>, StoreError> {
    log_texts(conn, sql, params, |row, op, from| Ok(Row { row, op: decode("log row", op)?, from }))
}

/// The log rows `sql` selects (row, op, from), each built by `build` from its op's text.
fn log_texts<T>(conn: &Connection, sql: &str, params: impl rusqlite::Params, build: impl Fn(u64, &str, Option<String>) -> Result<T, StoreError>) -> Result<Vec<T>, StoreError> {
    let mut stmt = conn.prepare_cached(sql).map_err(backend)?;
    let mut rows = stmt.query(params).map_err(backend)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(backend)? {
        let op = r.get_ref(1).map_err(backend)?.as_str().map_err(|e| StoreError::Corrupt(format!("log row: {e}")))?;
        out.push(build(r.get::<_, i64>(0).map_err(backend)? as u64, op, r.get(2).map_err(backend)?)?);
    }
    Ok(out)
}

/// The committed peer records, as `peers()` returns them (see the module doc).
pub(crate) type Peers = Arc<Mutex<PeerRecords>>;

/// A replica's storage in one SQLite database file.
pub struct SqliteStore {
    path: PathBuf,
    peers: Peers,
    /// Dropped before the writer, so the writer's connection is the file's last to close.
    readers: Arc<Readers>,
    writer: Writer,
    /// Writers waiting for a seal to lift (`settle`).
    waiters: Mutex<Vec<futures::channel::oneshot::Sender<()>>>,
}

pub(crate) fn backend(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DiskFull) => StoreError::DiskFull,
        _ => StoreError::Backend(format!("sqlite: {e}")),
    }
}

/// A page of stored documents after a key (a snapshot's, in key order).
const DOCS_AFTER: &str = "SELECT collection, id, state FROM docs WHERE (collection, id) > (?1, ?2) ORDER BY collection, id LIMIT ?3";
/// The log rows after a row (`?1`), at most `?2`.
const ROWS_AFTER: &str = r#"SELECT row, op, "from" FROM log WHERE row > ?1 ORDER BY row LIMIT ?2"#;

fn decode<T: DeserializeOwned>(what: &str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

fn encode<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Backend(format!("cannot encode: {e}")))
}

impl SqliteStore {
    /// The log rows after `after` (at most `limit`) with their wire text, for a library's
    /// recent rows (`RecentRows`): each op's text is read once and passed on as it is.
    pub async fn wire_rows_after(&self, after: u64, limit: usize) -> Result<WireRows, StoreError> {
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |conn| log_texts(conn, ROWS_AFTER, params![after, limit], wire_row).map(WireRows::from_iter)).await
    }

    /// Opens (creating if needed) the database at `path` and makes sure its tables exist.
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteStore, StoreError> {
        let path = path.as_ref().to_path_buf();
        let conn = connect(&path)?;
        let peers: Peers = Arc::new(Mutex::new(PeerRecords::new(read_peers(&conn)?)));
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(SqliteStore { readers: Arc::new(Readers::new(path.clone())), writer: Writer::start(conn, name, peers.clone())?, peers, path, waiters: Mutex::default() })
    }

    /// Runs `f` with the write connection, between commit groups.
    async fn exclusive<T: Send + 'static>(&self, f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static) -> Result<T, StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.writer.send(Job::Exclusive(Box::new(move |conn| {
            let _ = tx.send(f(conn));
        })))?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `f` on a read connection, off the async runtime.
    /// Up to `limit` documents after `after`, as stored (`docs_after`).
    async fn stored_texts(&self, after: Option<&DocKey>, limit: usize) -> Result<Vec<StoredText>, StoreError> {
        let (c, id) = after.cloned().unwrap_or_default();
        self.read(move |conn| {
            // Row values compare (collection, id) in the primary key's order; the empty pair
            // sorts before every real key (names and ids are never empty).
            let mut stmt = conn.prepare_cached(DOCS_AFTER).map_err(backend)?;
            let rows = stmt
                .query_map(params![c, id, i64::try_from(limit).unwrap_or(i64::MAX)], |r| Ok(StoredText { collection: r.get(0)?, id: r.get(1)?, state: r.get(2)? }))
                .map_err(backend)?;
            rows.map(|r| r.map_err(backend)).collect()
        })
        .await
    }

    async fn read<T: Send + 'static>(&self, f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static) -> Result<T, StoreError> {
        let readers = self.readers.clone();
        blocking(move || readers.with(f)).await
    }

    /// Sets the head's seal (a staging generation is being built from this one).
    async fn seal(&self, sealed: bool) -> Result<(), StoreError> {
        self.exclusive(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
            let mut head = read_head(&tx)?.ok_or_else(|| StoreError::Corrupt("store has no head".into()))?;
            if sealed && head.sealed {
                return Err(StoreError::Sealed);
            }
            head.sealed = sealed;
            tx.execute("INSERT OR REPLACE INTO head (id, state) VALUES (0, ?1)", params![encode(&head)?]).map_err(backend)?;
            tx.commit().map_err(backend)
        })
        .await?;
        if !sealed {
            self.wake();
        }
        Ok(())
    }

    fn wake(&self) {
        for w in self.waiters.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            let _ = w.send(());
        }
    }

    /// Where a staging generation of this store is built.
    fn staging_path(&self) -> PathBuf {
        let mut name = self.path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        name.push(".staging");
        self.path.with_file_name(name)
    }

    /// Closes every connection of `store` (the last one checkpoints and removes the WAL).
    fn close(store: SqliteStore) {
        store.readers.close();
        drop(store);
    }

    /// Closes `store` and removes its files.
    fn discard(store: SqliteStore) {
        let path = store.path.clone();
        SqliteStore::close(store);
        remove_db_files(&path);
    }
}

/// Runs blocking work on the runtime's blocking pool (inline when there is no runtime, as
/// under a plain executor in tests).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, StoreError> + Send + 'static) -> Result<T, StoreError> {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => rt.spawn_blocking(f).await.map_err(|e| StoreError::Backend(format!("a SQLite task failed: {e}")))?,
        Err(_) => f(),
    }
}

/// Removes a database file and its WAL side files.
fn remove_db_files(path: &Path) {
    let _ = std::fs::remove_file(path);
    for side in ["-wal", "-shm"] {
        let mut p = path.as_os_str().to_os_string();
        p.push(side);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

/// Keeps each prepared statement's query plan whatever values are bound to it (SQLite's
/// query planner stability guarantee). The bundled SQLite is built with STAT4, under which
/// a statement with a bound value in a range on an indexed column (`row > ?1`, `(collection,
/// id) > (?1, ?2)`: every read of the log and every snapshot page) is compiled again each
/// time it is bound anew, to plan for the value — a few percent of a busy server's CPU
/// (profiled under 2,000 concurrent rounds), for plans that never change: one index serves
/// each of these statements whatever the value.
pub(crate) fn stable_plans(conn: &Connection) -> Result<(), StoreError> {
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true).map(|_| ()).map_err(backend)
}

/// Opens a connection in WAL mode with full sync and makes sure the tables exist.
fn connect(path: &Path) -> Result<Connection, StoreError> {
    {
        let conn = Connection::open(path).map_err(backend)?;
        // Another process (a backup tool, the sqlite3 shell) may hold the lock briefly.
        conn.busy_timeout(Duration::from_secs(10)).map_err(backend)?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).map_err(backend)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Backend(format!("cannot switch {} to WAL mode (got {mode})", path.display())));
        }
        conn.execute_batch("PRAGMA synchronous=FULL;").map_err(backend)?;
        stable_plans(&conn)?;
        let format: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(backend)?;
        if format > FORMAT {
            return Err(StoreError::Corrupt(format!(
                "{} has storage format {format}, newer than this server's {FORMAT}: upgrade tidemark-server",
                path.display()
            )));
        }
        conn.execute_batch(&format!("BEGIN IMMEDIATE; {SCHEMA} PRAGMA user_version = {FORMAT}; COMMIT;")).map_err(backend)?;
        Ok(conn)
    }
}

impl SqliteStore {
    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every stored document of a collection, ordered by id (for tests that compare replicas).
    pub fn dump(&self, collection: &str) -> Result<Vec<StoredDoc>, StoreError> {
        let mut docs = self.readers.with(|conn| load_collection(conn, collection))?;
        docs.sort_by(|a, b| cmp_utf16(&a.id, &b.id));
        Ok(docs)
    }

    /// Removes peer records, each only if it still reads exactly as given (a record a
    /// concurrent commit changed stays); returns how many went.
    pub async fn forget_peers(&self, gone: Vec<(String, String)>) -> Result<u64, StoreError> {
        let peers = self.peers.clone();
        self.exclusive(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
            let mut removed = Vec::new();
            {
                let mut del = tx.prepare_cached("DELETE FROM peers WHERE db_id = ?1 AND record = ?2").map_err(backend)?;
                for (id, record) in &gone {
                    if del.execute(params![id, record]).map_err(backend)? > 0 {
                        removed.push(id);
                    }
                }
            }
            tx.commit().map_err(backend)?;
            let mut cached = lock(&peers);
            for id in &removed {
                cached.remove(*id);
            }
            Ok(removed.len() as u64)
        })
        .await
    }

    /// How many rows the log holds (for checks that nothing was stored twice).
    pub fn log_len(&self) -> Result<u64, StoreError> {
        let n: i64 = self.readers.with(|conn| conn.query_row("SELECT COUNT(*) FROM log", [], |r| r.get(0)).map_err(backend))?;
        Ok(n as u64)
    }
}

/// The lock of the in-memory peer records (plain data: usable after a panic elsewhere).
pub(crate) fn lock(peers: &Peers) -> std::sync::MutexGuard<'_, PeerRecords> {
    peers.lock().unwrap_or_else(|p| p.into_inner())
}

/// Every peer record in the file.
fn read_peers(conn: &Connection) -> Result<BTreeMap<String, PeerRecord>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT db_id, record FROM peers").map_err(backend)?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))).map_err(backend)?;
    rows.map(|r| {
        let (id, text) = r.map_err(backend)?;
        Ok((id, decode("peer record", &text)?))
    })
    .collect()
}

pub(crate) fn read_head(conn: &Connection) -> Result<Option<Head>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT state FROM head WHERE id = 0").map_err(backend)?;
    let text: Option<String> = stmt.query_row([], |r| r.get(0)).optional().map_err(backend)?;
    text.map(|t| decode("head", &t)).transpose()
}

pub(crate) fn read_doc(conn: &Connection, collection: &str, id: &str) -> Result<Option<StoredDoc>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT state FROM docs WHERE collection = ?1 AND id = ?2").map_err(backend)?;
    let text: Option<String> = stmt.query_row(params![collection, id], |r| r.get(0)).optional().map_err(backend)?;
    text.map(|t| decode("document", &t)).transpose()
}

pub(crate) fn read_peer(conn: &Connection, db_id: &str) -> Result<Option<PeerRecord>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT record FROM peers WHERE db_id = ?1").map_err(backend)?;
    let text: Option<String> = stmt.query_row(params![db_id], |r| r.get(0)).optional().map_err(backend)?;
    text.map(|t| decode("peer record", &t)).transpose()
}

fn load_collection(conn: &Connection, collection: &str) -> Result<Vec<StoredDoc>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT state FROM docs WHERE collection = ?1").map_err(backend)?;
    let texts = stmt.query_map(params![collection], |r| r.get::<_, String>(0)).map_err(backend)?;
    texts.map(|t| decode("document", &t.map_err(backend)?)).collect()
}

/// Writes what a commit returned, inside the writer's open transaction.
pub(crate) fn write_commit(tx: &Connection, commit: &Commit) -> Result<(), StoreError> {
    if let Some(h) = &commit.head {
        tx.prepare_cached("INSERT OR REPLACE INTO head (id, state) VALUES (0, ?1)").map_err(backend)?.execute(params![encode(h)?]).map_err(backend)?;
    }
    let mut put_doc = tx.prepare_cached("INSERT OR REPLACE INTO docs (collection, id, state) VALUES (?1, ?2, ?3)").map_err(backend)?;
    for (c, d) in &commit.docs {
        put_doc.execute(params![c, d.id, encode(d)?]).map_err(backend)?;
    }
    // A plain INSERT: a row number that already exists fails the whole commit rather than
    // silently replacing a logged op.
    let mut put_row = tx.prepare_cached(r#"INSERT INTO log (row, op, "from") VALUES (?1, ?2, ?3)"#).map_err(backend)?;
    for r in &commit.rows {
        let row = i64::try_from(r.row).map_err(|_| StoreError::Backend(format!("row {} is out of range", r.row)))?;
        put_row.execute(params![row, encode(&r.op)?, r.from]).map_err(backend)?;
        if r.op.resolution {
            tx.prepare_cached("INSERT INTO resolutions (row) VALUES (?1)").map_err(backend)?.execute(params![row]).map_err(backend)?;
        }
    }
    let mut put_peer = tx.prepare_cached("INSERT OR REPLACE INTO peers (db_id, record) VALUES (?1, ?2)").map_err(backend)?;
    for (id, rec) in &commit.peers {
        put_peer.execute(params![id, encode(rec)?]).map_err(backend)?;
    }
    Ok(())
}

impl Store for SqliteStore {
    type Doc = Map<String, Value>;

    async fn head(&self) -> Result<Option<Head>, StoreError> {
        self.read(read_head).await
    }

    async fn get(&self, collection: &str, id: &str) -> Result<Option<StoredDoc>, StoreError> {
        let (collection, id) = (collection.to_string(), id.to_string());
        self.read(move |conn| read_doc(conn, &collection, &id)).await
    }

    /// Queued for the writer, which reads in its open group transaction (`writer`): what `f`
    /// reads cannot change under it, even if another process opened the same file (the group
    /// holds the write lock from its first read).
    async fn commit<F>(&self, keys: &[DocKey], peers: &[String], f: F) -> Result<Commit, Error>
    where
        F: FnOnce(Loaded) -> Result<Commit, Error>,
    {
        let (loaded_tx, loaded_rx) = tokio::sync::oneshot::channel();
        let (answer_tx, answer_rx) = tokio::sync::oneshot::channel();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let compute = Compute::Caller { loaded: loaded_tx, answer: answer_rx };
        self.writer.send(Job::Commit(CommitJob { keys: keys.to_vec(), peers: peers.to_vec(), compute, done: done_tx }))?;
        let loaded = loaded_rx.await.map_err(|_| StoreError::Closed)??;
        // If `f` fails, or the check does, the answer is dropped and the writer rolls back.
        let loaded_head = loaded.head.clone();
        let commit = f(loaded)?;
        commit.check(loaded_head.as_ref())?;
        answer_tx.send(commit).map_err(|_| StoreError::Closed)?;
        done_rx.await.map_err(|_| StoreError::Closed)?
    }

    /// `f` runs on the writer thread, in the group transaction (`writer::Compute::Here`).
    async fn commit_owned<F>(&self, keys: &[DocKey], peers: &[String], f: F) -> Result<Commit, Error>
    where
        F: FnOnce(Loaded) -> Result<Commit, Error> + Send + 'static,
    {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        self.writer.send(Job::Commit(CommitJob { keys: keys.to_vec(), peers: peers.to_vec(), compute: Compute::Here(Box::new(f)), done: done_tx }))?;
        done_rx.await.map_err(|_| StoreError::Closed)?
    }

    /// From memory (see the module doc).
    async fn peers(&self) -> Result<BTreeMap<String, PeerRecord>, StoreError> {
        Ok(lock(&self.peers).records().clone())
    }

    /// From memory, in the order kept there (see the module doc).
    async fn with_peer_and_summary<R>(&self, peer: &str, f: impl FnOnce(Option<&PeerRecord>, &PeerRecords) -> R) -> Result<R, StoreError> {
        let all = lock(&self.peers);
        Ok(f(all.get(peer), &all))
    }

    async fn docs_after(&self, after: Option<&DocKey>, limit: usize) -> Result<Vec<(String, StoredDoc)>, StoreError> {
        let texts = self.stored_texts(after, limit).await?;
        texts.into_iter().map(|t| Ok((t.collection, decode("document", &t.state)?))).collect()
    }

    async fn stored_texts_after(&self, after: Option<&DocKey>, limit: usize) -> Result<Option<Vec<StoredText>>, StoreError> {
        self.stored_texts(after, limit).await.map(Some)
    }

    async fn doc_count(&self) -> Result<u64, StoreError> {
        let n: i64 = self.read(|conn| conn.query_row("SELECT COUNT(*) FROM docs", [], |r| r.get(0)).map_err(backend)).await?;
        Ok(n as u64)
    }

    /// A relay has no schema and no native indexes, so this scans the collection and
    /// selects exactly as `MemoryStore` does (same key order, same bounds, same limits).
    async fn query(&self, collection: &str, primary_key: &str, plan: &Plan) -> Result<Vec<Map<String, Value>>, StoreError> {
        let (collection, primary_key, plan) = (collection.to_string(), primary_key.to_string(), plan.clone());
        self.read(move |conn| {
            let docs = match &plan.source {
                Source::Get(id) => read_doc(conn, &collection, id)?.into_iter().collect(),
                _ => load_collection(conn, &collection)?,
            };
            Ok(select(&docs, &primary_key, &plan))
        })
        .await
    }

    async fn rows_after(&self, after: u64, limit: usize) -> Result<Vec<Row>, StoreError> {
        // Rows above i64::MAX cannot exist; clamp rather than wrap.
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |conn| log_rows(conn, ROWS_AFTER, params![after, limit])).await
    }

    async fn row_keys_after(&self, after: u64, limit: usize) -> Result<Vec<RowKey>, StoreError> {
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |conn| log_texts(conn, ROWS_AFTER, params![after, limit], RowKey::from_stored)).await
    }

    async fn resolutions_after(&self, after: u64) -> Result<Vec<Row>, StoreError> {
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        self.read(move |conn| {
            let sql = r#"SELECT l.row, l.op, l."from" FROM resolutions r JOIN log l ON l.row = r.row WHERE r.row > ?1 ORDER BY r.row"#;
            log_rows(conn, sql, params![after])
        })
        .await
    }

    type Staging = SqliteStore;

    /// Seals this file and builds the staging generation in a sibling file
    /// (`<file>.staging`); a leftover of a crashed reset there is discarded first.
    async fn stage(&self, _schema: &tidemark::Schema) -> Result<SqliteStore, Error> {
        self.seal(true).await?;
        let path = self.staging_path();
        let opened = blocking(move || {
            remove_db_files(&path);
            SqliteStore::open(&path)
        })
        .await;
        match opened {
            Ok(s) => Ok(s),
            Err(e) => {
                self.seal(false).await?;
                Err(e.into())
            }
        }
    }

    /// Renames the staging file over this one (atomic on POSIX) and reopens it. Every read
    /// connection is closed first and readers wait until the new file is open, so every
    /// read sees the old file or the new one.
    async fn swap(&self, staging: SqliteStore) -> Result<(), Error> {
        let from = staging.path.clone();
        // Closing the staging file's last connection checkpoints it and removes its WAL.
        blocking(move || {
            SqliteStore::close(staging);
            Ok(())
        })
        .await?;
        let readers = self.readers.clone();
        blocking(move || {
            readers.close();
            Ok(())
        })
        .await?;
        let (path, staged, peers) = (self.path.clone(), from.clone(), self.peers.clone());
        let flipped = self
            .exclusive(move |conn| {
                if !read_head(conn)?.is_some_and(|h| h.sealed) {
                    return Err(StoreError::Backend("swap without a staging generation".into()));
                }
                // Closing the last connection checkpoints and removes this file's WAL.
                drop(std::mem::replace(conn, Connection::open_in_memory().map_err(backend)?));
                let renamed = std::fs::rename(&staged, &path).map_err(|e| StoreError::Backend(format!("cannot swap in {}: {e}", staged.display())));
                *conn = connect(&path)?;
                *lock(&peers) = PeerRecords::new(read_peers(conn)?);
                renamed
            })
            .await;
        self.readers.reopen();
        match flipped {
            Ok(()) => {
                remove_db_files(&from);
                self.wake();
                Ok(())
            }
            Err(e) => {
                remove_db_files(&from);
                let _ = self.seal(false).await;
                Err(e.into())
            }
        }
    }

    async fn abandon(&self, staging: SqliteStore) -> Result<(), Error> {
        blocking(move || {
            SqliteStore::discard(staging);
            Ok(())
        })
        .await?;
        Ok(self.seal(false).await?)
    }

    async fn settle(&self) -> Result<(), Error> {
        // Registered before the head is read, so an unseal in between still wakes us.
        let (tx, rx) = futures::channel::oneshot::channel();
        self.waiters.lock().unwrap_or_else(|p| p.into_inner()).push(tx);
        if !self.read(read_head).await?.is_some_and(|h| h.sealed) {
            return Ok(());
        }
        let _ = rx.await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidemark::peer::Point;

    fn record(incoming: Point) -> PeerRecord {
        let mut r = PeerRecord::new();
        r.note_incoming("s1", incoming, false);
        r
    }

    /// A statement read again with new values keeps its compiled plan, on the read
    /// connections and on the writer's (`stable_plans`): with the bundled SQLite's STAT4 it
    /// was compiled again on every new binding of a range's bound.
    #[test]
    fn range_reads_are_not_compiled_again_for_each_bound() {
        use rusqlite::StatementStatus;
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("lib.sqlite")).unwrap();
        let recompiled = |conn: &Connection| -> Result<Vec<i32>, StoreError> {
            let mut counts = Vec::new();
            for sql in [ROWS_AFTER, DOCS_AFTER] {
                let mut stmt = conn.prepare(sql).map_err(backend)?;
                for after in 0..5 {
                    let mut rows = if sql == ROWS_AFTER { stmt.query(params![after, 10]) } else { stmt.query(params!["docs", after.to_string(), 10]) }.map_err(backend)?;
                    while rows.next().map_err(backend)?.is_some() {}
                }
                counts.push(stmt.get_status(StatementStatus::RePrepare));
            }
            Ok(counts)
        };
        futures::executor::block_on(async {
            assert_eq!(store.read(move |conn| recompiled(conn)).await.unwrap(), [0, 0], "read connections");
            assert_eq!(store.exclusive(move |conn| recompiled(conn)).await.unwrap(), [0, 0], "the writer's connection");
        });
    }

    /// A commit computed on the writer thread that panics fails alone: the writer goes on
    /// serving commits, and the panicking one wrote nothing.
    #[test]
    fn a_panic_in_an_owned_commit_fails_that_commit_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("lib.sqlite")).unwrap();
        futures::executor::block_on(async {
            let init = |l: Loaded| Ok(Commit { head: Some(l.head.unwrap_or_else(|| Head::new("me".into(), 0))), ..Commit::default() });
            store.commit(&[], &[], init).await.unwrap();
            let panicked = store.commit_owned(&[], &["a".to_string()], |_| -> Result<Commit, Error> { panic!("a bug in the engine") }).await;
            assert_eq!(panicked.unwrap_err().code(), "STORAGE_ERROR");
            store.commit_owned(&[], &["b".to_string()], |_| Ok(Commit { peers: vec![("b".into(), record(3))], ..Commit::default() })).await.unwrap();
            let peers = store.peers().await.unwrap();
            assert_eq!(peers.keys().collect::<Vec<_>>(), ["b"]);
        });
    }

    /// The in-memory peer records follow every commit, a conditional removal and a
    /// failed commit exactly as the file does: reopening reads back what `peers()` said.
    #[test]
    fn the_peers_in_memory_are_the_peers_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lib.sqlite");
        let store = SqliteStore::open(&path).unwrap();
        futures::executor::block_on(async {
            let init = |l: Loaded| Ok(Commit { head: Some(l.head.unwrap_or_else(|| Head::new("me".into(), 0))), ..Commit::default() });
            store.commit(&[], &[], init).await.unwrap();
            let ids = ["a".to_string(), "b".to_string(), "c".to_string()];
            store.commit(&[], &ids, |_| Ok(Commit { peers: ids.iter().map(|id| (id.clone(), record(1))).collect(), ..Commit::default() })).await.unwrap();
            // A later commit of the same record wins.
            store.commit(&[], &ids[..1], |_| Ok(Commit { peers: vec![("a".into(), record(7))], ..Commit::default() })).await.unwrap();
            // A refused commit changes nothing.
            let refused = store.commit(&[], &ids[1..2], |_| Err(StoreError::Backend("no".into()).into())).await;
            assert!(refused.is_err());
            let before = store.peers().await.unwrap();
            assert_eq!(before.get("a").map(|r| r.incoming), Some(7));
            assert_eq!(before.len(), 3);
            // Removed only where the record still reads as given: b goes, c (stale text) stays.
            let gone = vec![("b".to_string(), encode(&before["b"]).unwrap()), ("c".to_string(), encode(&record(0)).unwrap())];
            assert_eq!(store.forget_peers(gone).await.unwrap(), 1);
            let after = store.peers().await.unwrap();
            assert_eq!(after.keys().collect::<Vec<_>>(), ["a", "c"]);
            SqliteStore::close(store);
            let reopened = SqliteStore::open(&path).unwrap();
            assert_eq!(reopened.peers().await.unwrap(), after, "the file holds what memory said");
        });
    }
}
