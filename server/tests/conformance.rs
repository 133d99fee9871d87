//! DESIGN §9's protocol scenarios (`tidemark_testkit::scenarios`) against the server's
//! `SqliteStore` (on temp files), with backups taken both ways an operator would: `VACUUM
//! INTO` on the live database, and a plain file copy after a WAL checkpoint. The engine
//! runs the same bodies against `MemoryStore`, so the two stores are held to one
//! behaviour. Below them, the store contract suite and what only SQLite adds: durability
//! across reopen, identical queries.

use std::cell::Cell;
use std::path::PathBuf;

use futures::executor::block_on;
use serde_json::{json, Map, Value};
use tidemark::error::StoreError;
use tidemark::memory::MemoryStore;
use tidemark::store::{Store, StoredDoc};
use tidemark::{Replica, Write};
use tidemark_server::SqliteStore;

use tidemark_testkit::conformance;
use tidemark_testkit::contract::{self, Fixture};
use tidemark_testkit::scenarios::Backend;

#[derive(Clone, Copy)]
enum BackupBy {
    /// `VACUUM INTO` from a second connection while the store stays open.
    VacuumInto,
    /// Checkpoint the WAL into the main file, then copy the file alone.
    CheckpointAndCopy,
}

struct Sqlite {
    dir: tempfile::TempDir,
    next: Cell<u32>,
    by: BackupBy,
}

impl Sqlite {
    fn new(by: BackupBy) -> Sqlite {
        Sqlite { dir: tempfile::tempdir().unwrap(), next: Cell::new(0), by }
    }

    fn file(&self) -> PathBuf {
        self.next.set(self.next.get() + 1);
        self.dir.path().join(format!("db{}.sqlite", self.next.get()))
    }
}

impl Backend for Sqlite {
    type S = SqliteStore;
    fn fresh(&self) -> SqliteStore {
        SqliteStore::open(self.file()).unwrap()
    }
    fn backup(&self, store: &SqliteStore) -> SqliteStore {
        let to = self.file();
        let conn = rusqlite::Connection::open(store.path()).unwrap();
        match self.by {
            BackupBy::VacuumInto => {
                conn.execute("VACUUM INTO ?1", [to.to_str().unwrap()]).unwrap();
            }
            BackupBy::CheckpointAndCopy => {
                conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).unwrap();
                std::fs::copy(store.path(), &to).unwrap();
            }
        }
        SqliteStore::open(to).unwrap()
    }
    fn dump(&self, store: &SqliteStore, collection: &str) -> Vec<StoredDoc> {
        store.dump(collection).unwrap()
    }
}

conformance!(sqlite, Sqlite::new(BackupBy::VacuumInto));
conformance!(sqlite_file_copy, Sqlite::new(BackupBy::CheckpointAndCopy));

// ---- The store's own contract ----

fn doc(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

fn temp_store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("s.sqlite")).unwrap();
    (dir, store)
}

/// Fresh SQLite files for the contract suite.
struct SqliteFiles(tempfile::TempDir, Cell<u32>);

impl Fixture for SqliteFiles {
    type S = SqliteStore;
    async fn fresh(&self) -> SqliteStore {
        self.1.set(self.1.get() + 1);
        SqliteStore::open(self.0.path().join(format!("c{}.sqlite", self.1.get()))).unwrap()
    }
    fn json(doc: &Map<String, Value>) -> Value {
        Value::Object(doc.clone())
    }
}

#[test]
fn the_sqlite_store_keeps_the_contract() {
    block_on(contract::all(&SqliteFiles(tempfile::tempdir().unwrap(), Cell::new(0))));
}

#[test]
fn the_sqlite_store_stages_and_swaps_generations() {
    block_on(contract::generations(&SqliteFiles(tempfile::tempdir().unwrap(), Cell::new(0))));
}

#[test]
fn everything_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sqlite");
    let (db_id, docs_before, peers_before) = {
        let r = tidemark_testkit::scenarios::replica_at(SqliteStore::open(&path).unwrap(), 1_000);
        let other = tidemark_testkit::scenarios::replica_at(MemoryStore::new(), 2_000);
        block_on(other.put("docs", doc(json!({"id": "x", "n": 5})))).unwrap();
        tidemark_testkit::scenarios::pass(&other, &r, Default::default());
        block_on(r.put("docs", doc(json!({"id": "a", "n": 1, "deep": {"k": [1, 2]}})))).unwrap();
        block_on(r.delete("docs", "x")).unwrap();
        (r.head().db_id, tidemark_testkit::scenarios::docs(&r), block_on(r.store().peers()).unwrap())
    };
    let r = tidemark_testkit::scenarios::replica_at(SqliteStore::open(&path).unwrap(), 1_000);
    assert_eq!(r.head().db_id, db_id);
    assert_eq!(r.head().max_row, 3);
    assert_eq!(tidemark_testkit::scenarios::docs(&r), docs_before);
    assert_eq!(block_on(r.store().peers()).unwrap(), peers_before);
    let rows = block_on(r.store().rows_after(0, 100)).unwrap();
    assert_eq!(rows.iter().map(|r| r.row).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert!(rows[0].from.is_some() && rows[1].from.is_none());
    assert_eq!(block_on(r.store().rows_after(1, 1)).unwrap().len(), 1);
    assert!(block_on(r.store().rows_after(u64::MAX, 10)).unwrap().is_empty());
}

#[test]
fn a_newer_storage_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sqlite");
    drop(SqliteStore::open(&path).unwrap());
    rusqlite::Connection::open(&path).unwrap().execute_batch("PRAGMA user_version = 99").unwrap();
    assert!(matches!(SqliteStore::open(&path), Err(StoreError::Corrupt(_))));
}

/// Random writes through both stores, then a set of queries covering every plan source
/// (get, primary scan, index ranges, prefixes, order, limit): identical answers.
#[test]
fn queries_answer_exactly_like_the_memory_store() {
    let (_dir, store) = temp_store();
    let sq = block_on(Replica::open(store, query_schema(), Box::new(|| 1_000))).unwrap();
    let mem = block_on(Replica::open(MemoryStore::new(), query_schema(), Box::new(|| 1_000))).unwrap();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut rand = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let titles = ["Milk", "Mint", "bread", "Ä", "😀", "", "Mi"];
    for i in 0..400 {
        let id = format!("{}{}", ["a", "B", "é", "z"][rand(4) as usize], rand(60));
        let w = match rand(5) {
            0 => Write::Delete { collection: "todos".into(), id },
            _ => {
                let (title, list) = (titles[rand(7) as usize], ["inbox", "work"][rand(2) as usize]);
                let mut d = doc(json!({"id": id, "title": title, "createdAt": rand(30), "list": list}));
                if rand(3) == 0 {
                    d.insert("done".into(), json!(rand(2) == 0));
                }
                if rand(7) == 0 {
                    d.insert("createdAt".into(), json!(format!("s{i}")));
                }
                Write::Put { collection: "todos".into(), doc: d }
            }
        };
        block_on(sq.write(vec![w.clone()])).unwrap();
        block_on(mem.write(vec![w])).unwrap();
    }
    let queries = [
        json!({}),
        json!({"where": {"id": "a3"}}),
        json!({"where": {"done": false}}),
        json!({"where": {"done": true}, "orderBy": "createdAt", "limit": 5}),
        json!({"where": {"list": "inbox", "createdAt": {"gte": 10, "lt": 20}}, "orderBy": {"createdAt": "desc"}}),
        json!({"where": {"title": {"startsWith": "Mi"}}}),
        json!({"where": {"createdAt": {"gt": 5}}, "limit": 7}),
        json!({"orderBy": {"title": "desc"}, "limit": 12}),
        json!({"where": {"list": "work"}, "orderBy": "createdAt"}),
        json!({"where": {"createdAt": {"lte": 3}}, "orderBy": {"createdAt": "desc"}, "limit": 3}),
        json!({"where": {"done": {"in": [true]}}}),
        json!({"where": {"createdAt": {"in": [3, 5, "s7", 29]}}, "orderBy": {"createdAt": "desc"}}),
        json!({"where": {"list": "work", "createdAt": {"in": [1, 2, 3, 4]}}, "orderBy": "createdAt"}),
        json!({"where": {"title": {"in": ["Milk", "Ä", ""]}}, "limit": 6}),
        json!({"where": {"id": {"in": ["a3", "B7", "zz"]}}}),
        json!({"where": {"done": {"ne": true}}, "orderBy": "createdAt", "limit": 9}),
        json!({"where": {"list": {"ne": "inbox"}, "title": {"startsWith": "M"}}}),
    ];
    for q in &queries {
        let a = block_on(sq.query("todos", q)).unwrap();
        let b = block_on(mem.query("todos", q)).unwrap();
        assert_eq!(a, b, "query {q}");
    }
    // `in` and `ne` against a filter written out by hand over every document.
    let all = block_on(mem.query("todos", &json!({}))).unwrap();
    let by_hand = |f: &dyn Fn(&Map<String, Value>) -> bool| all.iter().filter(|d| f(d)).cloned().collect::<Vec<_>>();
    let got = block_on(sq.query("todos", &json!({"where": {"title": {"in": ["Milk", "Ä"]}}, "orderBy": "id"}))).unwrap();
    assert_eq!(got, by_hand(&|d| d["title"] == "Milk" || d["title"] == "Ä"));
    assert!(!got.is_empty());
    let got = block_on(sq.query("todos", &json!({"where": {"done": {"ne": true}}}))).unwrap();
    assert_eq!(got, by_hand(&|d| d.get("done") != Some(&json!(true))));
    assert!(got.len() < all.len() && !got.is_empty());
    // Stored documents match too, all but the stamps' node (each replica has its own id).
    let strip = |docs: Vec<StoredDoc>| docs.into_iter().map(|d| (d.id, d.doc, d.deleted, d.version, d.index_keys, d.stamps.len())).collect::<Vec<_>>();
    assert_eq!(strip(sq.store().dump("todos").unwrap()), strip(mem.store().dump("todos")));
    assert_eq!(sq.head().max_row, mem.head().max_row);
    assert_eq!(block_on(sq.store().doc_count()).unwrap(), block_on(mem.store().doc_count()).unwrap());
}

fn query_schema() -> tidemark::Schema {
    tidemark::Schema::from_json(json!({"version": 1, "collections": {"todos": {"primaryKey": "id",
        "indexes": {"byDone": "done", "byListDate": ["list", "createdAt"], "byTitle": "title", "byDate": "createdAt"}}}}))
    .unwrap()
}

/// The library store a server serves from lends row keys from its in-memory run
/// (`recent_rows`): whatever the start and the limit, and as rows keep landing, exactly
/// the keys SQLite holds.
#[test]
fn the_library_store_lends_exactly_the_row_keys_sqlite_holds() {
    let dir = tempfile::tempdir().unwrap();
    let store = tidemark_server::library::LibraryStore::sqlite(SqliteStore::open(dir.path().join("l.sqlite")).unwrap());
    let r = tidemark_testkit::scenarios::replica_at(store, 1_000);
    let check = |after: u64, limit: usize| {
        let lent = block_on(r.store().with_row_keys_after(after, limit, |k| k.to_vec())).unwrap();
        assert_eq!(lent, block_on(r.store().row_keys_after(after, limit)).unwrap(), "after {after}, limit {limit}");
        lent.len()
    };
    for round in 0..6u64 {
        for i in 0..40 {
            block_on(r.put("docs", doc(json!({"id": format!("d{round}-{i}"), "n": i})))).unwrap();
        }
        let max = r.head().max_row;
        for (after, limit) in [(0, 10), (max / 2, 1000), (max.saturating_sub(3), 2), (max / 3, 25), (max, 5), (1, 3), (max / 2 + 7, 60)] {
            check(after, limit);
        }
    }
    assert_eq!(check(0, 1000), 240);
    assert_eq!(check(200, 1000), 40);
}

/// Snapshot pages a server made for one pull go to the next while no document changes,
/// and never after a write: a client that joins after a write gets it.
#[test]
fn shared_snapshot_pages_never_outlive_a_write() {
    use tidemark::sync::pass::Limits;
    use tidemark_testkit::scenarios::{docs, pass, replica_at};
    let dir = tempfile::tempdir().unwrap();
    let store = tidemark_server::library::LibraryStore::sqlite(SqliteStore::open(dir.path().join("l.sqlite")).unwrap());
    let server = block_on(Replica::open_relay(store, Box::new(|| 1_000))).unwrap();
    let limits = Limits { per_diff: 10, max_diffs: 100 };
    let writer = replica_at(MemoryStore::new(), 1_000);
    for i in 0..30 {
        block_on(writer.put("docs", doc(json!({"id": format!("d{i:02}"), "n": i})))).unwrap();
    }
    pass(&writer, &server, limits);
    let pages = server.store().doc_pages().expect("a SQLite library shares its pages");
    for round in 0..3 {
        let joiner = replica_at(MemoryStore::new(), 1_000);
        let sent = pass(&server, &joiner, limits);
        assert!(sent.snapshot, "round {round}: the joiner gets a snapshot");
        assert_eq!(docs(&joiner), docs(&writer), "round {round}");
        assert!(pages.get(None, limits.per_diff, server.head().max_row).is_some(), "round {round}: the first page is kept for the next pull");
        // The next joiner must see this write, in the first page and in a later one.
        block_on(writer.put("docs", doc(json!({"id": "d00", "n": 100 + round})))).unwrap();
        block_on(writer.put("docs", doc(json!({"id": format!("d25-{round}"), "n": round})))).unwrap();
        pass(&writer, &server, limits);
    }
}
