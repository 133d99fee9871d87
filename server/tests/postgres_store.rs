//! `PgStore` on a real PostgreSQL (a private cluster started by the test run): the storage
//! contract suite and DESIGN §9's scenarios, exactly as SQLite and the memory store run them,
//! then what only several writers on one database add — one shared head, no lost update on a
//! document two instances write at once, rows renumbered from the library's sequence, and no
//! reader shown a row past one another instance has allocated but not committed.
//!
//! Every store here runs its database work on one runtime kept for the whole test binary;
//! the tests themselves drive stores from plain `block_on`, as the scenarios do.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use futures::executor::block_on;
use serde_json::{json, Map, Value};
use tidemark::clock::Stamp;
use tidemark::error::{Error, StoreError};
use tidemark::op::{Kind, Op};
use tidemark::store::{Store, StoredDoc};
use tidemark::{Replica, Write};
use tidemark_server::postgres::{Database, PgStore, Settings};
use tidemark_testkit::conformance;
use tidemark_testkit::contract::{self, Fixture};
use tidemark_testkit::scenarios::{self, Backend};
use tidemark_testkit::PgCluster;

/// One database for the binary, with two instances on it, and the runtime they run on.
struct Pg {
    rt: tokio::runtime::Runtime,
    url: String,
    a: Database,
    b: Database,
    next: AtomicU64,
}

fn pg() -> &'static Pg {
    static PG: OnceLock<Pg> = OnceLock::new();
    PG.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let url = PgCluster::shared().create_database();
        let a = rt.block_on(Database::connect(&Settings::new(url.clone(), "a"))).expect("instance a");
        let b = rt.block_on(Database::connect(&Settings::new(url.clone(), "b"))).expect("instance b");
        Pg { rt, url, a, b, next: AtomicU64::new(0) }
    })
}

/// A library name no other test uses.
fn library() -> String {
    format!("lib{}", pg().next.fetch_add(1, Ordering::Relaxed))
}

fn open(db: &Database, library: &str) -> PgStore {
    block_on(PgStore::open(db, library)).expect("open the library")
}

/// Fresh libraries on instance `a`; a backup is a copy of the library under a new name.
struct Postgres;

impl Backend for Postgres {
    type S = PgStore;
    fn fresh(&self) -> PgStore {
        open(&pg().a, &library())
    }
    fn backup(&self, store: &PgStore) -> PgStore {
        let to = library();
        block_on(store.copy_to(&to)).unwrap();
        open(&pg().a, &to)
    }
    fn dump(&self, store: &PgStore, collection: &str) -> Vec<StoredDoc> {
        block_on(store.dump(collection)).unwrap()
    }
}

conformance!(postgres, Postgres);

impl Fixture for Postgres {
    type S = PgStore;
    async fn fresh(&self) -> PgStore {
        PgStore::open(&pg().a, &library()).await.unwrap()
    }
    fn json(doc: &Map<String, Value>) -> Value {
        Value::Object(doc.clone())
    }
}

#[test]
fn the_postgres_store_keeps_the_contract() {
    block_on(contract::all(&Postgres));
}

#[test]
fn the_postgres_store_stages_and_swaps_generations() {
    block_on(contract::generations(&Postgres));
}

/// After a swap the library is still listed and found under its name, and a store opened
/// later (another instance, or after a restart) reads the swapped-in generation.
#[test]
fn a_swapped_generation_is_the_library_everywhere() {
    let name = library();
    let store = open(&pg().a, &name);
    let r = replica(store, 1_000);
    block_on(r.put("docs", doc(json!({"id": "old"})))).unwrap();
    let staging = block_on(r.store().stage(&scenarios::schema())).unwrap();
    let fresh = replica(staging, 2_000);
    block_on(fresh.put("docs", doc(json!({"id": "new"})))).unwrap();
    let db_id = fresh.head().db_id;
    let staging = block_on(PgStore::open(&pg().a, &name)).unwrap();
    assert!(matches!(block_on(staging.commit(&[], &[], |_| Ok(Default::default()))), Err(Error::Store(StoreError::Sealed))), "the live generation is sealed");
    drop(staging);
    // Swap the generation the fresh replica wrote into the library.
    block_on(r.store().swap(fresh.into_store())).unwrap();
    assert!(block_on(pg().a.exists(&name)).unwrap());
    assert!(block_on(pg().b.libraries()).unwrap().contains(&name));
    let elsewhere = open(&pg().b, &name);
    let head = block_on(elsewhere.head()).unwrap().unwrap();
    assert_eq!(head.db_id, db_id, "the swapped-in generation's head");
    assert!(!head.sealed);
    assert!(block_on(elsewhere.get("docs", "new")).unwrap().is_some());
    assert!(block_on(elsewhere.get("docs", "old")).unwrap().is_none(), "nothing of the old generation remains");
}

fn doc(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

fn replica(store: PgStore, wall: u64) -> Replica<PgStore> {
    scenarios::replica_at(store, wall)
}

/// A library created on one instance is the same library on another: one db id, one head,
/// each other's documents and rows.
#[test]
fn instances_share_one_library() {
    let name = library();
    let on_a = replica(open(&pg().a, &name), 1_000);
    let on_b = replica(open(&pg().b, &name), 2_000);
    assert_eq!(on_a.head().db_id, on_b.head().db_id, "one db id");
    block_on(on_a.put("docs", doc(json!({"id": "x", "n": 1})))).unwrap();
    block_on(on_b.put("docs", doc(json!({"id": "y", "n": 2})))).unwrap();
    for r in [&on_a, &on_b] {
        let got = block_on(r.get("docs", "x")).unwrap().and_then(|d| d.doc);
        assert_eq!(got, Some(doc(json!({"id": "x", "n": 1}))));
        assert_eq!(block_on(r.query("docs", &json!({}))).unwrap().len(), 2);
    }
    // b's write came after a's: its stamp is later, so the shared clock is b's.
    let head_a = block_on(on_a.store().head()).unwrap().unwrap();
    let head_b = block_on(on_b.store().head()).unwrap().unwrap();
    assert_eq!(head_a.clock, head_b.clock);
    assert_eq!(head_a.clock.wall, 2_000, "the clock is the largest stamp any instance stored");
}

/// Two instances patch different fields of one document at once, many times: every field
/// survives (no commit read a document another was about to change), every row has its own
/// id, and the visible rows are exactly the rows stored.
#[test]
fn concurrent_writers_lose_no_update() {
    let name = library();
    let seed = replica(open(&pg().a, &name), 1_000);
    block_on(seed.put("docs", doc(json!({"id": "x"})))).unwrap();
    const N: usize = 40;
    let writers: Vec<std::thread::JoinHandle<()>> = [("a", &pg().a), ("b", &pg().b)]
        .into_iter()
        .map(|(who, db)| {
            let r = replica(open(db, &name), 1_000);
            std::thread::spawn(move || {
                for i in 0..N {
                    let w = Write::Patch { collection: "docs".into(), id: "x".into(), fields: doc(json!({ format!("{who}{i}"): i })) };
                    block_on(r.write(vec![w])).unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let got = block_on(seed.get("docs", "x")).unwrap().unwrap().doc.unwrap();
    for who in ["a", "b"] {
        for i in 0..N {
            assert_eq!(got.get(&format!("{who}{i}")), Some(&json!(i)), "field {who}{i} lost: {got:?}");
        }
    }
    let store = open(&pg().a, &name);
    let rows = block_on(store.rows_after(0, usize::MAX)).unwrap();
    let ids: Vec<u64> = rows.iter().map(|r| r.row).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ascending and unique: {ids:?}");
    assert_eq!(ids.len() as u64, block_on(store.log_len()).unwrap(), "every stored row is visible once all have finished");
    assert_eq!(ids.len(), 2 * N + 1);
    // Own ops keep originRow equal to their row.
    assert!(rows.iter().all(|r| r.op.origin_row == r.row), "originRow follows the renumbering");
}

/// A row another instance has allocated but not committed holds back what readers are
/// shown, on every instance, the writer's own included: rows above it stay invisible until
/// it finishes, then everything appears in order.
#[test]
fn an_allocated_row_holds_readers_back_until_it_commits() {
    let name = library();
    let on_a = replica(open(&pg().a, &name), 1_000);
    let on_b = replica(open(&pg().b, &name), 2_000);
    block_on(on_a.put("docs", doc(json!({"id": "first"})))).unwrap();
    let visible = |s: &PgStore| block_on(s.rows_after(0, usize::MAX)).unwrap().iter().map(|r| r.row).collect::<Vec<u64>>();
    let wait_for = |s: &PgStore, n: usize| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while visible(s).len() < n {
            assert!(std::time::Instant::now() < deadline, "rows never became visible: {:?}", visible(s));
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    wait_for(on_b.store(), 1);

    // Instance a allocates a row id inside a transaction that stays open.
    let stream = on_a.store().stream().clone();
    let pool = pg().a.pool().clone();
    let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
    let (allocated_tx, allocated_rx) = std::sync::mpsc::channel::<i64>();
    let held = pg().rt.spawn(async move {
        let mut client = pool.get().await.unwrap();
        let txn = client.transaction().await.unwrap();
        let allocation = stream.allocate(&txn, 1).await.unwrap();
        let id = allocation.ids()[0];
        allocated_tx.send(id).unwrap();
        tokio::task::spawn_blocking(move || hold_rx.recv().unwrap()).await.unwrap();
        let op = Op {
            origin: "held".into(),
            origin_row: 1,
            ts: Stamp { version: 1, wall: 1, counter: 0, node: "held".into() },
            schema_version: 1,
            collection: "docs".into(),
            id: "held".into(),
            kind: Kind::Delete,
            fields: None,
            seen: None,
            resolution: false,
        };
        let op = serde_json::to_string(&op).unwrap();
        txn.execute(r#"INSERT INTO tidemark_log (library, row, op, "from") VALUES ($1, $2, $3, 'held')"#, &[&stream.library(), &id, &op])
            .await
            .unwrap();
        txn.commit().await.unwrap();
        allocation.committed().await.unwrap();
    });
    let held_id = allocated_rx.recv().unwrap() as u64;

    // Both instances write after it; neither shows its own row or the other's yet.
    block_on(on_b.put("docs", doc(json!({"id": "after-b"})))).unwrap();
    block_on(on_a.put("docs", doc(json!({"id": "after-a"})))).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    for r in [&on_a, &on_b] {
        let rows = visible(r.store());
        assert!(rows.iter().all(|&row| row < held_id), "a row past the held one {held_id} is shown: {rows:?}");
        assert!(r.head().max_row < held_id && block_on(r.store().head()).unwrap().unwrap().max_row < held_id);
    }
    assert_eq!(block_on(on_a.store().log_len()).unwrap(), 3, "the later rows are stored, only not shown");

    hold_tx.send(()).unwrap();
    pg().rt.block_on(held).unwrap();
    for r in [&on_a, &on_b] {
        wait_for(r.store(), 4);
        let rows = visible(r.store());
        assert_eq!(rows.len(), 4);
        assert!(rows.contains(&held_id), "{rows:?}");
    }
}

/// An instance that connects later lists the library, opens it with the same db id and
/// starts at the persisted position, not at 0.
#[test]
fn a_later_instance_finds_the_library() {
    let name = library();
    let on_a = replica(open(&pg().a, &name), 1_000);
    block_on(on_a.put("docs", doc(json!({"id": "x", "n": 1})))).unwrap();
    let late = pg().rt.block_on(Database::connect(&Settings::new(pg().url.clone(), "late"))).unwrap();
    assert!(block_on(late.exists(&name)).unwrap());
    assert!(block_on(late.libraries()).unwrap().contains(&name));
    let on_late = replica(open(&late, &name), 3_000);
    assert_eq!(on_late.head().db_id, on_a.head().db_id);
    assert_eq!(on_late.head().max_row, 1, "starts at the persisted position");
    assert_eq!(block_on(on_late.store().rows_after(0, 10)).unwrap().len(), 1);
    block_on(late.leave()).unwrap();
}

/// A pass's view of the peer records on PostgreSQL (`Store::with_peer_and_summary`): the
/// record it asks for is read as it is now; every record is lent from a summary read at
/// most once a second, with this instance's own writes in it as soon as they commit and
/// another instance's within the second.
#[test]
fn a_pass_reads_its_peer_now_and_the_summary_within_a_second() {
    use tidemark::peer::PeerRecord;
    use tidemark::store::Commit;
    let name = library();
    let a = replica(open(&pg().a, &name), 1_000);
    let b = replica(open(&pg().b, &name), 1_000);
    let write = |r: &Replica<PgStore>, peer: &str, row: i64| {
        let mut rec = PeerRecord::new();
        rec.note_incoming("s", row, false);
        let peers = vec![(peer.to_string(), rec)];
        block_on(r.store().commit(&[], &[peer.to_string()], move |_| Ok(Commit { peers, ..Commit::default() }))).unwrap();
    };
    let view = |r: &Replica<PgStore>, peer: &str, other: &str| {
        block_on(r.store().with_peer_and_summary(peer, |one, all| (one.map(|p| p.incoming), all.get(other).map(|p| p.incoming)))).unwrap()
    };
    write(&a, "p", 1);
    write(&a, "q", 1);
    assert_eq!(view(&a, "p", "q"), (Some(1), Some(1)), "the summary is read at first use");
    // This instance's own write: in the summary at once.
    write(&a, "q", 2);
    assert_eq!(view(&a, "p", "q"), (Some(1), Some(2)), "its own write, at once");
    // Another instance's: the record asked for at once, the summary within a second.
    write(&b, "p", 3);
    write(&b, "q", 3);
    let (one, _) = view(&a, "p", "q");
    assert_eq!(one, Some(3), "the record a pass asks for is always current");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while view(&a, "p", "q").1 != Some(3) {
        assert!(std::time::Instant::now() < deadline, "another instance's write never reached the summary");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(view(&a, "q", "p"), (Some(3), Some(3)));
}
