//! Each foreign store's own state, durable beside the libraries (DESIGN §11): its origin id,
//! its cursor in the store's change feed (or listing fingerprint), the push mark (the last
//! library row written out to it), and per record the foreign id, revision and the content
//! both sides last agreed on (the base of every three-way decision).
//!
//! This is the seed's separate state namespace: it lives in its own SQLite file
//! (`<data>/foreign-state.db`, a name no library can have), keyed by the store's spec, and
//! is never written to a library's `peers`, never forwarded in an `incoming` table and never
//! used as a transitive point — what a foreign store holds is only ever answered from here.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{Map, Value};

use super::ForeignError;

/// The file name, in the data directory; not `*.sqlite`, so never listed as a library.
pub const FILE: &str = "foreign-state.db";

/// What the gateway knows of one foreign record.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Record {
    /// The id as the store spells it (json-server keeps numbers as numbers).
    pub foreign_id: Value,
    /// CouchDB's `_rev` of the version last read or written.
    pub rev: Option<String>,
    /// The content both sides last agreed on (`None`: deleted there).
    pub base: Option<Map<String, Value>>,
}

/// One foreign store's state, held in memory and written through.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StoreState {
    /// The origin id its records are written under in the library.
    pub origin: String,
    /// Its change-feed position (CouchDB `since`) or listing fingerprint (REST).
    pub cursor: String,
    /// The last library row whose changes were written to it.
    pub push_mark: u64,
    /// The schema version its records are written under (the newest seen in the collection).
    pub version: u32,
    pub records: BTreeMap<String, Record>,
}

/// The state file, shared by every gateway of this server.
#[derive(Clone)]
pub struct StateFile {
    conn: Arc<Mutex<Connection>>,
}

fn backend(e: impl std::fmt::Display) -> ForeignError {
    ForeignError::State(e.to_string())
}

impl StateFile {
    pub fn open(dir: &Path) -> Result<StateFile, ForeignError> {
        std::fs::create_dir_all(dir).map_err(backend)?;
        let conn = Connection::open(dir.join(FILE)).map_err(backend)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
             CREATE TABLE IF NOT EXISTS stores (key TEXT PRIMARY KEY, origin TEXT NOT NULL, cursor TEXT NOT NULL,
                 push_mark INTEGER NOT NULL, version INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS records (store TEXT NOT NULL, id TEXT NOT NULL, foreign_id TEXT NOT NULL,
                 rev TEXT, base TEXT, PRIMARY KEY (store, id));",
        )
        .map_err(backend)?;
        Ok(StateFile { conn: Arc::new(Mutex::new(conn)) })
    }

    async fn blocking<T: Send + 'static>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static) -> Result<T, ForeignError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || f(&mut conn.lock().unwrap_or_else(|p| p.into_inner())))
            .await
            .map_err(backend)?
            .map_err(backend)
    }

    /// The state of the store `key`, or a fresh one (with a new origin id) saved at once.
    pub async fn load(&self, key: &str) -> Result<StoreState, ForeignError> {
        let key = key.to_string();
        self.blocking(move |c| {
            let tx = c.transaction()?;
            let head = tx
                .query_row("SELECT origin, cursor, push_mark, version FROM stores WHERE key = ?1", [&key], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?, r.get::<_, i64>(3)?))
                })
                .optional()?;
            let state = match head {
                Some((origin, cursor, push_mark, version)) => {
                    let mut records = BTreeMap::new();
                    let mut stmt = tx.prepare("SELECT id, foreign_id, rev, base FROM records WHERE store = ?1")?;
                    let rows = stmt.query_map([&key], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, Option<String>>(2)?, r.get::<_, Option<String>>(3)?)))?;
                    for row in rows {
                        let (id, fid, rev, base) = row?;
                        let foreign_id = serde_json::from_str(&fid).unwrap_or(Value::String(id.clone()));
                        let base = base.and_then(|b| serde_json::from_str::<Map<String, Value>>(&b).ok());
                        records.insert(id, Record { foreign_id, rev, base });
                    }
                    drop(stmt);
                    StoreState { origin, cursor, push_mark: push_mark.max(0) as u64, version: version.max(1) as u32, records }
                }
                None => {
                    let s = StoreState { origin: tidemark::replica::new_db_id(), cursor: String::new(), push_mark: 0, version: 1, records: BTreeMap::new() };
                    tx.execute("INSERT INTO stores (key, origin, cursor, push_mark, version) VALUES (?1, ?2, '', 0, 1)", params![key, s.origin])?;
                    s
                }
            };
            tx.commit()?;
            Ok(state)
        })
        .await
    }

    /// Writes the head (cursor, push mark, version) and the given records, in one transaction.
    pub async fn save(&self, key: &str, state: &StoreState, ids: impl IntoIterator<Item = String>) -> Result<(), ForeignError> {
        let key = key.to_string();
        let head = (state.cursor.clone(), state.push_mark as i64, state.version as i64);
        let records: Vec<(String, Option<Record>)> = ids.into_iter().map(|id| {
            let r = state.records.get(&id).cloned();
            (id, r)
        }).collect();
        self.blocking(move |c| {
            let tx = c.transaction()?;
            tx.execute("UPDATE stores SET cursor = ?2, push_mark = ?3, version = ?4 WHERE key = ?1", params![key, head.0, head.1, head.2])?;
            for (id, r) in records {
                match r {
                    Some(r) => {
                        let base = r.base.as_ref().map(|b| Value::Object(b.clone()).to_string());
                        tx.execute(
                            "INSERT INTO records (store, id, foreign_id, rev, base) VALUES (?1, ?2, ?3, ?4, ?5)
                             ON CONFLICT (store, id) DO UPDATE SET foreign_id = excluded.foreign_id, rev = excluded.rev, base = excluded.base",
                            params![key, id, r.foreign_id.to_string(), r.rev, base],
                        )?;
                    }
                    None => {
                        tx.execute("DELETE FROM records WHERE store = ?1 AND id = ?2", params![key, id])?;
                    }
                }
            }
            tx.commit()
        })
        .await
    }

    /// Forgets every record of `key` and resets its positions (the store was wiped or
    /// restored: everything is compared and pushed again).
    pub async fn reset(&self, key: &str, state: &StoreState) -> Result<(), ForeignError> {
        let key = key.to_string();
        let head = (state.cursor.clone(), state.push_mark as i64, state.version as i64);
        self.blocking(move |c| {
            let tx = c.transaction()?;
            tx.execute("DELETE FROM records WHERE store = ?1", [&key])?;
            tx.execute("UPDATE stores SET cursor = ?2, push_mark = ?3, version = ?4 WHERE key = ?1", params![key, head.0, head.1, head.2])?;
            tx.commit()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn state_survives_reopening_and_reset_forgets_records() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::open(dir.path()).unwrap();
        let mut s = file.load("lib/c=rest+http://x/t").await.unwrap();
        assert_eq!((s.push_mark, s.cursor.as_str(), s.records.len()), (0, "", 0));
        s.push_mark = 7;
        s.cursor = "abc".into();
        s.records.insert("1".into(), Record { foreign_id: json!(1), rev: None, base: Some(json!({"id": "1", "t": "x"}).as_object().unwrap().clone()) });
        file.save("lib/c=rest+http://x/t", &s, ["1".to_string()]).await.unwrap();
        let again = StateFile::open(dir.path()).unwrap().load("lib/c=rest+http://x/t").await.unwrap();
        assert_eq!(again, s, "everything written comes back, the origin id included");
        let other = file.load("lib/c=couchdb+http://x/db").await.unwrap();
        assert_ne!(other.origin, s.origin, "every store has its own origin id");
        let mut wiped = again.clone();
        wiped.records.clear();
        wiped.push_mark = 0;
        file.reset("lib/c=rest+http://x/t", &wiped).await.unwrap();
        assert_eq!(file.load("lib/c=rest+http://x/t").await.unwrap(), wiped);
    }
}
