//! `PgStore`: one library's `tidemark::store::Store` on PostgreSQL, written by several
//! instances at once (DESIGN §12). The tables are described in `database`.
//!
//! # One commit
//! Everything of one commit happens in ONE READ COMMITTED transaction, on a task of its own
//! on the database's runtime (so dropping the caller's future never cancels a COMMIT):
//! 1. lock the documents and peer records the commit names — transaction-scoped advisory
//!    locks on a hash of each key, taken in ascending order (no deadlocks), so two instances
//!    writing one document serialize even when it does not exist yet — then read the head,
//!    the documents and the records (after the locks: READ COMMITTED reads what the previous
//!    holder committed);
//! 2. hand them to the engine's closure on the caller's side; it numbers its log rows after
//!    the head's max row, and `Commit::check` holds it to that as in every store;
//! 3. allocate that many row ids from the library's sequence (`Stream::allocate`) and
//!    renumber the rows with them, in order (an op logged as our own keeps `originRow` equal
//!    to its row); write documents, rows, peer records and head;
//! 4. COMMIT, then resolve the allocation: committed (our position moves and is announced)
//!    or rolled back. When the outcome of a COMMIT is unknown (the connection broke), the
//!    allocation stays open until PostgreSQL no longer runs that backend, so the position
//!    never passes a row that might still appear.
//!
//! # The head when several instances write
//! - `db_id`, `schema_version` and the flags are the library's, written when it is created
//!   (under an advisory lock, so two instances creating it at once agree on one db id) and
//!   rewritten only when they change; the db id never does.
//! - `max_row` is the library's **persisted-up-to position on this instance**, not a stored
//!   value: every row at or below it has committed, so no reader's point — and no snapshot,
//!   which claims the sender's max row — passes a row another writer allocated but has not
//!   committed. `rows_after` stops there too; a commit returns the head with the position
//!   as it stands after its own rows finished.
//! - `clock` is the largest stamp in the clock slots (`database`): each transaction raises
//!   only its own slot, so the clock never goes backwards and concurrent commits never wait
//!   for each other on it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use deadpool_postgres::{GenericClient, Pool, Transaction};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tidemark::clock::Stamp;
use tidemark::error::{Error as EngineError, StoreError};
use tidemark::key::cmp_utf16;
use tidemark::peer::PeerRecord;
use tidemark::peer_records::PeerRecords;
use tidemark::query::{Plan, Source};
use tidemark::scan::select;
use tidemark::store::{Commit, DocKey, Head, Loaded, Row, RowKey, Store, StoredDoc, StoredText};
use tokio::sync::oneshot;
use tokio_postgres::IsolationLevel;

use super::database::{Database, Shared};
use crate::recent_rows::{wire_row, WireRows};
use super::{generation, Allocation, Error, Stream};

/// A library's storage on PostgreSQL, as one instance sees it.
pub struct PgStore {
    db: Database,
    /// The library's name.
    name: String,
    /// The generation reads and commits go to (see `generation`).
    live: RwLock<Arc<Generation>>,
}

/// One generation of a library: the key its rows are stored under (the library's name,
/// unless a generation was swapped in) and its row stream.
pub(crate) struct Generation {
    pub(crate) key: String,
    pub(crate) stream: Arc<Stream>,
    /// The peer records lent for passes' summaries (`PgStore::refresh_summary`).
    summary: Mutex<Summary>,
    /// Held by the one read of every record under way for the summary.
    reading: tokio::sync::Mutex<()>,
}

impl Generation {
    pub(crate) fn new(key: String, stream: Arc<Stream>) -> Generation {
        Generation { key, stream, summary: Mutex::default(), reading: tokio::sync::Mutex::default() }
    }

    fn summary(&self) -> MutexGuard<'_, Summary> {
        self.summary.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How long the peer records read for passes' summaries serve before they are read again
/// (`Store::with_peer_and_summary`). Every pass of every client needs the summary: with
/// 2,000 clients pulling at once, reading all 2,000 records for each pass was 4 million
/// records read and decoded (21–24 s p50 for 2,000 rounds, against 2 s on SQLite, which
/// keeps its records in memory). This instance's own writes go into the summary as they
/// commit; other instances' show within this long.
const PEER_SUMMARY_AGE: Duration = Duration::from_secs(1);

/// Every peer record as last read, with this instance's writes since applied.
#[derive(Default)]
struct Summary {
    peers: PeerRecords,
    /// When `peers` was read (`None`: not yet).
    read_at: Option<Instant>,
    /// While a read is under way: the records this instance wrote meanwhile, which the
    /// read may have missed (applied again over its result).
    written: Option<Vec<(String, PeerRecord)>>,
}

impl Summary {
    fn fresh(&self) -> bool {
        self.read_at.is_some_and(|at| at.elapsed() < PEER_SUMMARY_AGE)
    }
}

/// The stored parts of the head: its fixed part (max row 0, clock zero) and the clock slots'
/// largest stamp.
#[derive(Clone, Debug)]
struct HeadRow {
    fixed: Head,
    clock: Option<String>,
}

/// The part of a head stored in `tidemark_libraries`: everything but max row and clock.
fn fixed_part(head: &Head) -> Head {
    Head { max_row: 0, clock: Stamp::zero(), ..head.clone() }
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn db(e: tokio_postgres::Error) -> StoreError {
    backend(Error::Db(e))
}

/// The log rows after a row, up to the persisted-up-to position (`log_texts`' parameters).
const ROWS_AFTER: &str = r#"SELECT row, op, "from" FROM tidemark_log WHERE library = $1 AND row > $2 AND row <= $3 ORDER BY row LIMIT $4"#;

fn decode<T: DeserializeOwned>(what: &str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

fn encode<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Backend(format!("cannot encode: {e}")))
}

fn to_i64(n: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| StoreError::Backend(format!("{what} {n} is out of range")))
}

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The advisory lock key of one document or peer record of a library: the first 8 bytes of
/// a SHA-256, the same on every instance. A collision only makes two keys wait for each other.
pub(crate) fn lock_key(library: &str, kind: &str, a: &str, b: &str) -> i64 {
    let mut h = Sha256::new();
    for part in [library, kind, a, b] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    let digest = h.finalize();
    i64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// The advisory lock key of a generation's seal.
pub(crate) fn seal_key(key: &str) -> i64 {
    lock_key(key, "seal", "", "")
}

impl PgStore {
    /// Opens `library` at its live generation (its row stream is loaded and this instance
    /// joins as a writer). The library itself is created by the first commit that writes a
    /// head.
    pub async fn open(db: &Database, library: &str) -> Result<PgStore, Error> {
        let live = generation::live(db, library).await?;
        Ok(PgStore { db: db.clone(), name: library.to_string(), live: RwLock::new(live) })
    }

    /// A store over one generation's key (a staging generation).
    pub(crate) async fn at(db: &Database, name: &str, key: &str) -> Result<PgStore, Error> {
        let stream = db.stream(key).await?;
        let live = Arc::new(Generation::new(key.to_string(), stream));
        Ok(PgStore { db: db.clone(), name: name.to_string(), live: RwLock::new(live) })
    }

    pub fn library(&self) -> &str {
        &self.name
    }

    pub(crate) fn database(&self) -> &Database {
        &self.db
    }

    pub(crate) fn live(&self) -> Arc<Generation> {
        self.live.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn bind(&self, generation: Arc<Generation>) {
        *self.live.write().unwrap_or_else(|p| p.into_inner()) = generation;
    }

    /// The library's row stream on this instance: positions, persisted-up-to, wake-ups.
    pub fn stream(&self) -> Arc<Stream> {
        self.live().stream.clone()
    }

    async fn read<T, F>(&self, f: impl FnOnce(Pool, String) -> F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T, Error>> + Send + 'static,
    {
        self.read_in(&self.live(), f).await
    }

    /// `read` in the given generation.
    async fn read_in<T, F>(&self, generation: &Generation, f: impl FnOnce(Pool, String) -> F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T, Error>> + Send + 'static,
    {
        self.db.run(f(self.db.shared.pool.clone(), generation.key.clone())).await.map_err(backend)
    }

    /// Every peer record of `generation`.
    async fn peers_in(&self, generation: &Generation) -> Result<BTreeMap<String, PeerRecord>, StoreError> {
        let rows = self
            .read_in(generation, |pool, library| async move {
                let client = pool.get().await?;
                let stmt = client.prepare_cached("SELECT db_id, record FROM tidemark_peers WHERE library = $1").await?;
                Ok(client.query(&stmt, &[&library]).await?.iter().map(|r| (r.get::<_, String>(0), r.get::<_, String>(1))).collect::<Vec<_>>())
            })
            .await?;
        rows.into_iter().map(|(id, text)| Ok((id, decode("peer record", &text)?))).collect()
    }

    /// Reads every peer record into `live`'s summary unless it was read less than
    /// `PEER_SUMMARY_AGE` ago: one read serves the passes of every client meanwhile (a pass
    /// waits for a read under way rather than starting another).
    async fn refresh_summary(&self, live: &Generation) -> Result<(), StoreError> {
        if live.summary().fresh() {
            return Ok(());
        }
        let _reading = live.reading.lock().await;
        if live.summary().fresh() {
            return Ok(());
        }
        live.summary().written = Some(Vec::new());
        let read = self.peers_in(live).await;
        let mut s = live.summary();
        let written = s.written.take().unwrap_or_default();
        let mut peers = read?;
        peers.extend(written);
        s.peers = PeerRecords::new(peers);
        s.read_at = Some(Instant::now());
        Ok(())
    }

    /// Puts the records a commit wrote into the summary (see `refresh_summary`).
    fn note_written(&self, live: &Generation, commit: &Commit) {
        if commit.peers.is_empty() {
            return;
        }
        let mut s = live.summary();
        for (id, rec) in &commit.peers {
            s.peers.insert(id.clone(), rec.clone());
            if let Some(w) = &mut s.written {
                w.push((id.clone(), rec.clone()));
            }
        }
    }

    /// The record of one peer, as it is now.
    async fn peer(&self, id: &str) -> Result<Option<PeerRecord>, StoreError> {
        let id = id.to_string();
        let text = self
            .read(|pool, library| async move {
                let client = pool.get().await?;
                let stmt = client.prepare_cached("SELECT record FROM tidemark_peers WHERE library = $1 AND db_id = $2").await?;
                Ok(client.query_opt(&stmt, &[&library, &id]).await?.map(|r| r.get::<_, String>(0)))
            })
            .await?;
        text.map(|t| decode("peer record", &t)).transpose()
    }

    /// Up to `limit_docs` documents after `after`, as stored (`docs_after`).
    async fn stored_texts(&self, after: Option<&DocKey>, limit_docs: usize) -> Result<Vec<StoredText>, StoreError> {
        let (c, id) = after.map_or((String::new(), String::new()), |(c, id)| (c.clone(), id.clone()));
        let n = limit(limit_docs);
        self.read(|pool, library| async move {
            let client = pool.get().await?;
            // The empty pair sorts before every real key (names and ids are never empty).
            let stmt = client
                .prepare_cached(
                    "SELECT collection, id, state FROM tidemark_docs WHERE library = $1 AND (collection, id) > ($2, $3)
                     ORDER BY collection, id LIMIT $4",
                )
                .await?;
            Ok(client.query(&stmt, &[&library, &c, &id, &n]).await?.iter().map(|r| StoredText { collection: r.get(0), id: r.get(1), state: r.get(2) }).collect())
        })
        .await
    }

    /// Removes peer records, each only if it still reads exactly as given (a record a
    /// concurrent commit changed stays); returns how many went.
    pub async fn forget_peers(&self, gone: Vec<(String, String)>) -> Result<u64, StoreError> {
        self.read(|pool, library| async move {
            let client = pool.get().await?;
            let stmt = client.prepare_cached("DELETE FROM tidemark_peers WHERE library = $1 AND db_id = $2 AND record = $3").await?;
            let mut n = 0;
            for (id, record) in &gone {
                n += client.execute(&stmt, &[&library, id, record]).await?;
            }
            Ok(n)
        })
        .await
    }

    /// Every stored document of a collection in UTF-16 id order (for tests that compare
    /// replicas).
    pub async fn dump(&self, collection: &str) -> Result<Vec<StoredDoc>, StoreError> {
        let collection = collection.to_string();
        let texts = self
            .read(|pool, library| async move {
                let client = pool.get().await?;
                let rows = client.query("SELECT state FROM tidemark_docs WHERE library = $1 AND collection = $2", &[&library, &collection]).await?;
                Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>())
            })
            .await?;
        let mut docs: Vec<StoredDoc> = texts.iter().map(|t| decode("document", t)).collect::<Result<_, _>>()?;
        docs.sort_by(|a, b| cmp_utf16(&a.id, &b.id));
        Ok(docs)
    }

    /// How many rows the library's log holds, visible or not (checks that nothing was
    /// stored twice).
    pub async fn log_len(&self) -> Result<u64, StoreError> {
        self.read(|pool, library| async move {
            let client = pool.get().await?;
            let n: i64 = client.query_one("SELECT count(*) FROM tidemark_log WHERE library = $1", &[&library]).await?.get(0);
            Ok(n as u64)
        })
        .await
    }

    /// Copies everything of this library into a new library `to` (same db id, rows, documents
    /// and peer records), as a restored backup would hold it. `to` must not exist yet.
    pub async fn copy_to(&self, to: &str) -> Result<(), StoreError> {
        let to = to.to_string();
        self.read(|pool, library| async move {
            let mut client = pool.get().await?;
            let txn = client.transaction().await?;
            for sql in [
                "INSERT INTO tidemark_libraries SELECT $2, head FROM tidemark_libraries WHERE library = $1",
                "INSERT INTO tidemark_clocks SELECT $2, instance, slot, stamp FROM tidemark_clocks WHERE library = $1",
                r#"INSERT INTO tidemark_log SELECT $2, row, op, "from", resolution FROM tidemark_log WHERE library = $1"#,
                "INSERT INTO tidemark_docs SELECT $2, collection, id, state FROM tidemark_docs WHERE library = $1",
                "INSERT INTO tidemark_peers SELECT $2, db_id, record FROM tidemark_peers WHERE library = $1",
            ] {
                txn.execute(sql, &[&library, &to]).await?;
            }
            txn.commit().await?;
            Ok(())
        })
        .await
    }
}

fn head_of(row: HeadRow, max_row: i64) -> Result<Head, StoreError> {
    let clock = match &row.clock {
        Some(text) => Stamp::parse(text).ok_or_else(|| StoreError::Corrupt(format!("head clock {text:?}")))?,
        None => Head::new(row.fixed.db_id.clone(), row.fixed.schema_version).clock,
    };
    Ok(Head { max_row: max_row.max(0) as u64, clock, ..row.fixed })
}

const READ_HEAD: &str = "SELECT l.head, (SELECT max(c.stamp) FROM tidemark_clocks c WHERE c.library = l.library)
                         FROM tidemark_libraries l WHERE l.library = $1";

async fn read_head(c: &impl GenericClient, library: &str) -> Result<Option<HeadRow>, StoreError> {
    let stmt = c.prepare_cached(READ_HEAD).await.map_err(db)?;
    let Some(row) = c.query_opt(&stmt, &[&library]).await.map_err(db)? else { return Ok(None) };
    Ok(Some(HeadRow { fixed: decode("head", &row.get::<_, String>(0))?, clock: row.get(1) }))
}

async fn read_doc(c: &impl GenericClient, library: &str, collection: &str, id: &str) -> Result<Option<String>, tokio_postgres::Error> {
    let stmt = c.prepare_cached("SELECT state FROM tidemark_docs WHERE library = $1 AND collection = $2 AND id = $3").await?;
    Ok(c.query_opt(&stmt, &[&library, &collection, &id]).await?.map(|r| r.get(0)))
}

/// What the read phase of a commit found.
struct Read {
    head: Option<HeadRow>,
    docs: Vec<Option<StoredDoc>>,
    peers: Vec<Option<PeerRecord>>,
    /// The backend running the transaction (to wait for it when a COMMIT's outcome is unknown).
    pid: i32,
}

/// Step 1 of a commit (module doc): lock, then read.
async fn read_phase(txn: &Transaction<'_>, library: &str, keys: &[DocKey], peers: &[String]) -> Result<Read, StoreError> {
    let mut locks: Vec<i64> =
        keys.iter().map(|(c, id)| lock_key(library, "doc", c, id)).chain(peers.iter().map(|p| lock_key(library, "peer", p, ""))).collect();
    locks.sort_unstable();
    locks.dedup();
    // First the generation's seal, shared (sealing takes it alone: it waits for the commits
    // under way, and the commits after it read a sealed head); then the keys, in order.
    locks.insert(0, seal_key(library));
    let (lock, pid, docs_stmt, peers_stmt) = futures::try_join!(
        txn.prepare_cached(
            "SELECT count(CASE WHEN i = 1 THEN pg_advisory_xact_lock_shared(k) ELSE pg_advisory_xact_lock(k) END)
             FROM unnest($1::bigint[]) WITH ORDINALITY AS t(k, i)"
        ),
        txn.prepare_cached("SELECT pg_backend_pid()"),
        txn.prepare_cached(
            "SELECT d.collection, d.id, d.state FROM tidemark_docs d
             JOIN unnest($2::text[], $3::text[]) AS k(collection, id) ON d.collection = k.collection AND d.id = k.id
             WHERE d.library = $1"
        ),
        txn.prepare_cached("SELECT db_id, record FROM tidemark_peers WHERE library = $1 AND db_id = ANY($2)"),
    )
    .map_err(db)?;
    // The locks come first, in a statement of their own: each later statement takes a new
    // snapshot, which sees everything the previous holder of a lock committed.
    let lock_params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&locks];
    let (_, pid) = futures::try_join!(txn.query_one(&lock, &lock_params), txn.query_one(&pid, &[])).map_err(db)?;
    let collections: Vec<&str> = keys.iter().map(|(c, _)| c.as_str()).collect();
    let ids: Vec<&str> = keys.iter().map(|(_, id)| id.as_str()).collect();
    let (mut head, doc_rows, peer_rows) = futures::try_join!(
        read_head(txn, library),
        async {
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            txn.query(&docs_stmt, &[&library, &collections, &ids]).await.map_err(db)
        },
        async {
            if peers.is_empty() {
                return Ok(Vec::new());
            }
            txn.query(&peers_stmt, &[&library, &peers]).await.map_err(db)
        },
    )?;
    if head.is_none() {
        // The library is being created: whoever gets here first mints its db id; the others
        // wait for it and read that head.
        txn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", &[&format!("tidemark-create:{library}")]).await.map_err(db)?;
        head = read_head(txn, library).await?;
    }
    let mut found: HashMap<(String, String), String> = doc_rows.into_iter().map(|r| ((r.get(0), r.get(1)), r.get(2))).collect();
    let docs = keys.iter().map(|k| found.remove(k).map(|t| decode("document", &t)).transpose()).collect::<Result<_, _>>()?;
    let records: HashMap<String, String> = peer_rows.into_iter().map(|r| (r.get(0), r.get(1))).collect();
    let peers = peers.iter().map(|p| records.get(p).map(|t| decode("peer record", t)).transpose()).collect::<Result<_, _>>()?;
    Ok(Read { head, docs, peers, pid: pid.get(0) })
}

/// Keeps the last of several entries for one key (as replacing them one by one would).
fn last_per_key<K: std::hash::Hash + Eq + Clone, T>(items: impl Iterator<Item = (K, T)>) -> Vec<(K, T)> {
    let mut index: HashMap<K, usize> = HashMap::new();
    let mut out: Vec<(K, T)> = Vec::new();
    for (k, v) in items {
        match index.get(&k) {
            Some(&i) => out[i].1 = v,
            None => {
                index.insert(k.clone(), out.len());
                out.push((k, v));
            }
        }
    }
    out
}

/// Step 3 of a commit (module doc): everything the commit writes, rows already renumbered.
async fn write_phase(txn: &Transaction<'_>, library: &str, instance: &str, slot: i32, commit: &Commit, before: Option<&HeadRow>) -> Result<(), StoreError> {
    let docs = last_per_key(commit.docs.iter().map(|(c, d)| ((c.as_str(), d.id.as_str()), d)));
    let (mut doc_collections, mut doc_ids, mut doc_states) = (Vec::new(), Vec::new(), Vec::new());
    for ((c, id), d) in docs {
        doc_collections.push(c);
        doc_ids.push(id);
        doc_states.push(encode(d)?);
    }
    let (mut rows, mut ops, mut froms, mut resolutions) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in &commit.rows {
        rows.push(to_i64(r.row, "row")?);
        ops.push(encode(&r.op)?);
        froms.push(r.from.as_deref());
        resolutions.push(r.op.resolution);
    }
    let peers = last_per_key(commit.peers.iter().map(|(id, rec)| (id.as_str(), rec)));
    let (mut peer_ids, mut records) = (Vec::new(), Vec::new());
    for (id, rec) in peers {
        peer_ids.push(id);
        records.push(encode(rec)?);
    }
    let head = commit.head.as_ref();
    let fixed = head.map(fixed_part);
    let library_row = match (&fixed, before) {
        (Some(f), None) => Some(("INSERT INTO tidemark_libraries (library, head) VALUES ($1, $2)", encode(f)?)),
        (Some(f), Some(b)) if *f != b.fixed => Some(("UPDATE tidemark_libraries SET head = $2 WHERE library = $1", encode(f)?)),
        _ => None,
    };
    let clock = head.map(|h| h.clock.encode()).filter(|c| before.and_then(|b| b.clock.as_ref()).is_none_or(|b| c > b));
    futures::try_join!(
        async {
            match &library_row {
                Some((sql, text)) => txn.execute(*sql, &[&library, text]).await.map(drop),
                None => Ok(()),
            }
        },
        async {
            match &clock {
                Some(stamp) => {
                    let stmt = txn
                        .prepare_cached(
                            "INSERT INTO tidemark_clocks (library, instance, slot, stamp) VALUES ($1, $2, $3, $4)
                             ON CONFLICT (library, instance, slot) DO UPDATE SET stamp = EXCLUDED.stamp
                             WHERE tidemark_clocks.stamp < EXCLUDED.stamp",
                        )
                        .await?;
                    txn.execute(&stmt, &[&library, &instance, &slot, stamp]).await.map(drop)
                }
                None => Ok(()),
            }
        },
        async {
            if doc_ids.is_empty() {
                return Ok(());
            }
            let stmt = txn
                .prepare_cached(
                    "INSERT INTO tidemark_docs (library, collection, id, state)
                     SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[])
                     ON CONFLICT (library, collection, id) DO UPDATE SET state = EXCLUDED.state",
                )
                .await?;
            txn.execute(&stmt, &[&library, &doc_collections, &doc_ids, &doc_states]).await.map(drop)
        },
        async {
            if rows.is_empty() {
                return Ok(());
            }
            // A plain INSERT: a row id that already exists fails the whole commit rather than
            // replacing a logged op.
            let stmt = txn
                .prepare_cached(r#"INSERT INTO tidemark_log (library, row, op, "from", resolution) SELECT $1, * FROM unnest($2::bigint[], $3::text[], $4::text[], $5::boolean[])"#)
                .await?;
            txn.execute(&stmt, &[&library, &rows, &ops, &froms, &resolutions]).await.map(drop)
        },
        async {
            if peer_ids.is_empty() {
                return Ok(());
            }
            let stmt = txn
                .prepare_cached(
                    "INSERT INTO tidemark_peers (library, db_id, record) SELECT $1, * FROM unnest($2::text[], $3::text[])
                     ON CONFLICT (library, db_id) DO UPDATE SET record = EXCLUDED.record",
                )
                .await?;
            txn.execute(&stmt, &[&library, &peer_ids, &records]).await.map(drop)
        },
    )
    .map_err(db)?;
    Ok(())
}

/// Allocates row ids for `rows` (numbered by the engine after the head's max row). Normally
/// that is one id per row. A commit numbered past the sequence (rows the engine numbered
/// after a max row this library's sequence never reached, as a test or a restore may write)
/// gets more ids, so that its rows can keep their numbers: the top ones are used and the
/// rest count as finished, never stored.
async fn allocate(stream: &Arc<Stream>, txn: &Transaction<'_>, rows: &[Row]) -> Result<Vec<Allocation>, Error> {
    let Some(last) = rows.last() else { return Ok(Vec::new()) };
    let mut allocations = vec![stream.allocate(txn, rows.len()).await?];
    let top = allocations[0].ids().last().copied().unwrap_or(0);
    let wanted = i64::try_from(last.row).unwrap_or(i64::MAX);
    if top < wanted && wanted - top <= MAX_SKIP {
        allocations.push(stream.allocate(txn, (wanted - top) as usize).await?);
    }
    Ok(allocations)
}

/// The most ids a commit skips to keep its rows' numbers (beyond this they are renumbered).
const MAX_SKIP: i64 = 100_000;

/// Gives the commit's rows the allocated ids, in order. An op this replica logged as its own
/// (`originRow` equal to its row) keeps the two equal.
fn renumber(commit: &mut Commit, ids: &[i64], own: Option<&str>) {
    for (r, &id) in commit.rows.iter_mut().zip(ids) {
        if own.is_some_and(|o| r.is_own(o)) && r.op.origin_row == r.row {
            r.op.origin_row = id as u64;
        }
        r.row = id as u64;
    }
}

/// Waits until PostgreSQL no longer runs backend `pid` (terminating it if it lingers): after
/// that, its transaction has either committed or rolled back for good.
async fn wait_backend_gone(pool: &Pool, pid: i32) {
    let mut waited = Duration::ZERO;
    loop {
        let gone = async {
            let client = pool.get().await.map_err(backend)?;
            let alive = client.query_opt("SELECT 1 FROM pg_stat_activity WHERE pid = $1", &[&pid]).await.map_err(db)?.is_some();
            if alive && waited >= Duration::from_secs(30) {
                client.execute("SELECT pg_terminate_backend($1)", &[&pid]).await.map_err(db)?;
            }
            Ok::<bool, StoreError>(!alive)
        }
        .await;
        if let Ok(true) = gone {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        waited += Duration::from_millis(200);
    }
}

/// A commit, run on the database's runtime: the caller gets what was read through `loaded`
/// and answers with what to write through `answer` (dropped: roll back).
async fn run_commit(
    shared: Arc<Shared>,
    stream: Arc<Stream>,
    library: String,
    keys: Vec<DocKey>,
    peers: Vec<String>,
    loaded: oneshot::Sender<Result<(Loaded, Option<HeadRow>), StoreError>>,
    answer: oneshot::Receiver<Commit>,
) -> Result<Commit, StoreError> {
    let mut client = match shared.pool.get().await {
        Ok(c) => c,
        Err(e) => {
            let e = backend(Error::Pool(e));
            let _ = loaded.send(Err(e.clone()));
            return Err(e);
        }
    };
    let txn = match client.build_transaction().isolation_level(IsolationLevel::ReadCommitted).start().await {
        Ok(t) => t,
        Err(e) => {
            let e = db(e);
            let _ = loaded.send(Err(e.clone()));
            return Err(e);
        }
    };
    let read = match read_phase(&txn, &library, &keys, &peers).await {
        Ok(r) => r,
        Err(e) => {
            let _ = loaded.send(Err(e.clone()));
            return Err(e);
        }
    };
    let before = read.head.clone();
    let head = match read.head.map(|h| head_of(h, stream.persisted_up_to())).transpose() {
        Ok(h) => h,
        Err(e) => {
            let _ = loaded.send(Err(e.clone()));
            return Err(e);
        }
    };
    if loaded.send(Ok((Loaded { head, docs: read.docs, peers: read.peers }, before.clone()))).is_err() {
        return Err(StoreError::Backend("the commit was abandoned".into()));
    }
    let Ok(mut commit) = answer.await else {
        // The engine refused, or the caller went away: nothing is written.
        let _ = txn.rollback().await;
        return Err(StoreError::Backend("the commit was abandoned".into()));
    };
    let allocations = match allocate(&stream, &txn, &commit.rows).await {
        Ok(a) => a,
        Err(e) => return Err(backend(e)),
    };
    if !commit.rows.is_empty() {
        let mut ids: Vec<i64> = allocations.iter().flat_map(|a| a.ids().iter().copied()).collect();
        ids.sort_unstable();
        let own = commit.head.as_ref().map(|h| h.db_id.clone()).or_else(|| before.as_ref().map(|b| b.fixed.db_id.clone()));
        let first = ids.len() - commit.rows.len();
        renumber(&mut commit, &ids[first..], own.as_deref());
    }
    let slot = shared.slot();
    if let Err(e) = write_phase(&txn, &library, &shared.instance, slot.number, &commit, before.as_ref()).await {
        // No COMMIT was sent: these ids can never commit.
        drop(txn);
        allocations.into_iter().for_each(Allocation::rolled_back);
        return Err(e);
    }
    let outcome = txn.commit().await;
    drop(slot);
    // The connection goes back before the allocation is resolved: announcing our position
    // takes a connection of its own, and a full pool must not wait on itself.
    drop(client);
    match outcome {
        Ok(()) => {
            for a in allocations {
                if let Err(e) = a.committed().await {
                    // The rows are committed; our position reaches the table with the next
                    // heartbeat.
                    tracing::warn!(library, error = %e, "could not announce a new position");
                }
            }
        }
        Err(e) => {
            if e.as_db_error().is_none() {
                tracing::warn!(library, error = %e, pid = read.pid, "a COMMIT's outcome is unknown; waiting for its backend to end");
                wait_backend_gone(&shared.pool, read.pid).await;
            }
            allocations.into_iter().for_each(Allocation::rolled_back);
            return Err(db(e));
        }
    }
    if let Some(h) = &mut commit.head {
        h.max_row = stream.persisted_up_to().max(0) as u64;
    }
    Ok(commit)
}

impl PgStore {
    /// Log rows after `after` as `sql` selects them (row, op, from; parameters: library,
    /// after, the persisted-up-to position, a limit): never above persisted-up-to — rows
    /// above it may have committed, but a row below them may still be in flight on
    /// another instance.
    async fn log_rows(&self, sql: &'static str, after: u64, n: i64) -> Result<Vec<Row>, StoreError> {
        let rows = self.log_texts(sql, after, n).await?;
        rows.into_iter().map(|(row, op, from)| Ok(Row { row: row as u64, op: decode("log row", &op)?, from })).collect()
    }

    /// The log rows after `after` (at most `limit`) with their wire text, for a library's
    /// recent rows (`RecentRows`): each op's text is read once and passed on as it is.
    pub async fn wire_rows_after(&self, after: u64, limit_rows: usize) -> Result<WireRows, StoreError> {
        let rows = self.log_texts(ROWS_AFTER, after, limit(limit_rows)).await?;
        rows.into_iter().map(|(row, op, from)| wire_row(row as u64, &op, from)).collect()
    }

    /// The log rows `sql` selects, their ops as stored text.
    async fn log_texts(&self, sql: &'static str, after: u64, n: i64) -> Result<Vec<(i64, String, Option<String>)>, StoreError> {
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let upto = self.live().stream.persisted_up_to().max(0);
        if after >= upto {
            return Ok(Vec::new());
        }
        self.read(|pool, library| async move {
            let client = pool.get().await?;
            let stmt = client.prepare_cached(sql).await?;
            let rows = client.query(&stmt, &[&library, &after, &upto, &n]).await?;
            Ok(rows.iter().map(|r| (r.get::<_, i64>(0), r.get::<_, String>(1), r.get::<_, Option<String>>(2))).collect::<Vec<_>>())
        })
        .await
    }
}

impl Store for PgStore {
    type Doc = Map<String, Value>;

    async fn head(&self) -> Result<Option<Head>, StoreError> {
        let row = self
            .read(|pool, library| async move {
                let client = pool.get().await?;
                Ok(read_head(&client, &library).await)
            })
            .await??;
        row.map(|r| head_of(r, self.live().stream.persisted_up_to())).transpose()
    }

    async fn get(&self, collection: &str, id: &str) -> Result<Option<StoredDoc>, StoreError> {
        let (collection, id) = (collection.to_string(), id.to_string());
        let text = self
            .read(|pool, library| async move {
                let client = pool.get().await?;
                Ok(read_doc(&client, &library, &collection, &id).await?)
            })
            .await?;
        text.map(|t| decode("document", &t)).transpose()
    }

    async fn commit<F>(&self, keys: &[DocKey], peers: &[String], f: F) -> Result<Commit, EngineError>
    where
        F: FnOnce(Loaded) -> Result<Commit, EngineError>,
    {
        let (loaded_tx, loaded_rx) = oneshot::channel();
        let (answer_tx, answer_rx) = oneshot::channel();
        let live = self.live();
        let task = self.db.shared.rt.spawn(run_commit(
            self.db.shared.clone(),
            live.stream.clone(),
            live.key.clone(),
            keys.to_vec(),
            peers.to_vec(),
            loaded_tx,
            answer_rx,
        ));
        let finished = |r: Result<Result<Commit, StoreError>, tokio::task::JoinError>| -> Result<Commit, EngineError> {
            match r {
                Ok(r) => Ok(r?),
                Err(e) => Err(backend(Error::Task(e.to_string())).into()),
            }
        };
        let (loaded, before) = match loaded_rx.await {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(finished(task.await).err().unwrap_or_else(|| backend("the commit task ended early").into())),
        };
        let loaded_head = loaded.head.clone();
        let commit = f(loaded)?;
        commit.check(loaded_head.as_ref())?;
        if before.is_some() && commit.head.as_ref().is_some_and(|h| Some(&h.db_id) != loaded_head.as_ref().map(|l| &l.db_id)) {
            // Several instances share the library's identity: it is never replaced under them.
            return Err(StoreError::Unsupported("a library's db id never changes on PostgreSQL".into()).into());
        }
        if answer_tx.send(commit).is_err() {
            return finished(task.await);
        }
        let commit = finished(task.await)?;
        self.note_written(&live, &commit);
        Ok(commit)
    }

    /// A relay has no schema and no native indexes, so this scans the collection and
    /// selects exactly as `MemoryStore` does (same key order, same bounds, same limits).
    async fn query(&self, collection: &str, primary_key: &str, plan: &Plan) -> Result<Vec<Map<String, Value>>, StoreError> {
        let docs = match &plan.source {
            Source::Get(id) => self.get(collection, id).await?.into_iter().collect(),
            _ => {
                let collection = collection.to_string();
                let texts = self
                    .read(|pool, library| async move {
                        let client = pool.get().await?;
                        let stmt = client.prepare_cached("SELECT state FROM tidemark_docs WHERE library = $1 AND collection = $2").await?;
                        Ok(client.query(&stmt, &[&library, &collection]).await?.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>())
                    })
                    .await?;
                texts.iter().map(|t| decode("document", t)).collect::<Result<Vec<StoredDoc>, _>>()?
            }
        };
        Ok(select(&docs, primary_key, plan))
    }

    /// Rows after `after`, up to the persisted-up-to position only (`log_rows`).
    async fn rows_after(&self, after: u64, limit_rows: usize) -> Result<Vec<Row>, StoreError> {
        self.log_rows(ROWS_AFTER, after, limit(limit_rows)).await
    }

    async fn row_keys_after(&self, after: u64, limit_rows: usize) -> Result<Vec<RowKey>, StoreError> {
        let rows = self.log_texts(ROWS_AFTER, after, limit(limit_rows)).await?;
        rows.into_iter().map(|(row, op, from)| RowKey::from_stored(row as u64, &op, from)).collect()
    }

    /// The resolution log, up to the persisted-up-to position like every read of the log.
    async fn resolutions_after(&self, after: u64) -> Result<Vec<Row>, StoreError> {
        let sql = r#"SELECT row, op, "from" FROM tidemark_log WHERE library = $1 AND row > $2 AND row <= $3 AND resolution ORDER BY row LIMIT $4"#;
        self.log_rows(sql, after, i64::MAX).await
    }

    async fn peers(&self) -> Result<BTreeMap<String, PeerRecord>, StoreError> {
        self.peers_in(&self.live()).await
    }

    /// The one record read now, the rest from the summary (`refresh_summary`).
    async fn with_peer_and_summary<R>(&self, peer: &str, f: impl FnOnce(Option<&PeerRecord>, &PeerRecords) -> R) -> Result<R, StoreError> {
        let live = self.live();
        let (one, ()) = futures::try_join!(self.peer(peer), self.refresh_summary(&live))?;
        let s = live.summary();
        Ok(f(one.as_ref(), &s.peers))
    }

    async fn docs_after(&self, after: Option<&DocKey>, limit_docs: usize) -> Result<Vec<(String, StoredDoc)>, StoreError> {
        let texts = self.stored_texts(after, limit_docs).await?;
        texts.into_iter().map(|t| Ok((t.collection, decode("document", &t.state)?))).collect()
    }

    async fn stored_texts_after(&self, after: Option<&DocKey>, limit_docs: usize) -> Result<Option<Vec<StoredText>>, StoreError> {
        self.stored_texts(after, limit_docs).await.map(Some)
    }

    async fn doc_count(&self) -> Result<u64, StoreError> {
        self.read(|pool, library| async move {
            let client = pool.get().await?;
            let n: i64 = client.query_one("SELECT count(*) FROM tidemark_docs WHERE library = $1", &[&library]).await?.get(0);
            Ok(n as u64)
        })
        .await
    }

    type Staging = PgStore;

    /// Seals the live generation and opens an empty one under a key of its own (see
    /// `generation`). A server's relay library never does this (it merges snapshots); full
    /// replicas on PostgreSQL do, when a reset rebuilds them.
    async fn stage(&self, _schema: &tidemark::Schema) -> Result<PgStore, EngineError> {
        Ok(generation::stage(self).await?)
    }

    async fn swap(&self, staging: PgStore) -> Result<(), EngineError> {
        Ok(generation::swap(self, staging).await?)
    }

    async fn abandon(&self, staging: PgStore) -> Result<(), EngineError> {
        Ok(generation::abandon(self, staging).await?)
    }

    async fn settle(&self) -> Result<(), EngineError> {
        Ok(generation::settle(self).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidemark::op::Op;

    #[test]
    fn lock_keys_depend_on_every_part() {
        let k = lock_key("lib", "doc", "a", "b");
        assert_eq!(k, lock_key("lib", "doc", "a", "b"));
        for other in [lock_key("lib", "doc", "ab", ""), lock_key("lib2", "doc", "a", "b"), lock_key("lib", "peer", "a", "b")] {
            assert_ne!(k, other);
        }
    }

    #[test]
    fn renumbering_keeps_own_origin_rows_equal_to_rows() {
        let op = |origin: &str, origin_row: u64| Op {
            origin: origin.into(),
            origin_row,
            ts: Stamp { version: 1, wall: 1, counter: 0, node: origin.into() },
            schema_version: 1,
            collection: "c".into(),
            id: "x".into(),
            kind: tidemark::op::Kind::Delete,
            fields: None,
            seen: None,
            resolution: false,
        };
        let mut commit = Commit {
            rows: vec![Row { row: 4, op: op("me", 4), from: None }, Row { row: 5, op: op("you", 9), from: Some("you".into()) }],
            ..Commit::default()
        };
        renumber(&mut commit, &[17, 20], Some("me"));
        assert_eq!((commit.rows[0].row, commit.rows[0].op.origin_row), (17, 17));
        assert_eq!((commit.rows[1].row, commit.rows[1].op.origin_row), (20, 9), "a received op keeps its origin's row");
    }
}
