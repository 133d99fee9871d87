//! Stream positions on a real PostgreSQL (a private cluster started by the test run).
//!
//! The `test_*` cases port Synapse's `tests/storage/test_id_generators.py`
//! (`MultiWriterIdGeneratorTestCase`, `WorkerMultiWriterIdGeneratorTestCase`,
//! `MultiTableMultiWriterIdGeneratorTestCase`, and the older `StreamIdGenerator` case
//! `test_gen_next_while_still_waiting_for_persistence`), each under the name of the case it
//! ports. Where Tidemark differs the test says how: positions start at 0 (Synapse: 1); writers
//! are not a static list but join by opening a library, and leave ([`Positions::leave`]) or are
//! dropped as dead; Synapse's "worker" that only reads is a reader (`writer: false`). As in
//! Synapse, instances are told of each other by hand (`replicate`, i.e. `advance`) unless a test
//! is about hearing by itself (NOTIFY, re-reading the table).
//!
//! Every transaction here writes its rows into `foobar` as a store would, so instances that
//! start later find them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use tidemark_server::postgres::{self, Config, Positions, RowsTable, Stream};
use tidemark_testkit::PgCluster;

const LIB: &str = "lib";

struct Db {
    pg: tokio_postgres::Config,
    pool: Pool,
}

/// A fresh database with two rows tables and the library's sequence created.
async fn db() -> Db {
    let url = PgCluster::shared().create_database();
    let pg: tokio_postgres::Config = url.parse().expect("url");
    let pool = postgres::pool(pg.clone(), 16).expect("pool");
    let client = pool.get().await.expect("connect");
    client
        .batch_execute(
            "CREATE TABLE foobar (library TEXT NOT NULL, instance TEXT NOT NULL, row BIGINT NOT NULL);
             CREATE TABLE foobar2 (library TEXT NOT NULL, instance TEXT NOT NULL, row BIGINT NOT NULL);",
        )
        .await
        .expect("tables");
    // Opening the library (as a reader, which stores nothing) creates its sequence.
    let setup = Positions::open(pool.clone(), config("setup", false))
        .await
        .expect("open");
    setup.stream(LIB).await.expect("stream");
    Db { pg, pool }
}

fn config(instance: &str, writer: bool) -> Config {
    let mut config = Config::new(instance);
    config.writer = writer;
    config.rows_tables = ["foobar", "foobar2"]
        .iter()
        .map(|t| RowsTable {
            table: t.to_string(),
            library_column: "library".into(),
            row_column: "row".into(),
        })
        .collect();
    config
}

/// An instance with no background work, and its stream of `LIB`.
async fn instance(db: &Db, name: &str, writer: bool) -> (Positions, Arc<Stream>) {
    let positions = Positions::open(db.pool.clone(), config(name, writer))
        .await
        .expect("open");
    let stream = positions.stream(LIB).await.expect("stream");
    (positions, stream)
}

async fn writer(db: &Db, name: &str) -> (Positions, Arc<Stream>) {
    instance(db, name, true).await
}

async fn reader(db: &Db, name: &str) -> (Positions, Arc<Stream>) {
    instance(db, name, false).await
}

async fn sequence(db: &Db, library: &str) -> String {
    let client = db.pool.get().await.unwrap();
    let id: i64 = client
        .query_one(
            "SELECT id FROM stream_sequences WHERE library = $1",
            &[&library],
        )
        .await
        .unwrap()
        .get(0);
    format!("tidemark_rows_{id}")
}

/// Synapse's `_insert_rows`: `n` rows written behind the generators' backs, ids from the
/// sequence, optionally recording the writer's position too.
async fn insert_rows(db: &Db, instance: &str, n: usize, table: &str, update_positions: bool) {
    let seq = sequence(db, LIB).await;
    let client = db.pool.get().await.unwrap();
    for _ in 0..n {
        let id: i64 = client
            .query_one(&format!("SELECT nextval('{seq}')"), &[])
            .await
            .unwrap()
            .get(0);
        client
            .execute(
                &format!("INSERT INTO {table} VALUES ($1, $2, $3)"),
                &[&LIB, &instance, &id],
            )
            .await
            .unwrap();
        if update_positions {
            set_position(db, instance, id).await;
        }
    }
}

/// Synapse's `_insert_row_with_id`: one row with a chosen id, the sequence moved to it.
async fn insert_row_with_id(db: &Db, instance: &str, id: i64) {
    let seq = sequence(db, LIB).await;
    let client = db.pool.get().await.unwrap();
    client
        .execute(
            "INSERT INTO foobar VALUES ($1, $2, $3)",
            &[&LIB, &instance, &id],
        )
        .await
        .unwrap();
    client
        .execute(&format!("SELECT setval('{seq}', $1)"), &[&id])
        .await
        .unwrap();
    set_position(db, instance, id).await;
}

async fn set_position(db: &Db, instance: &str, row: i64) {
    let client = db.pool.get().await.unwrap();
    client
        .execute(
            "INSERT INTO stream_positions (library, instance, row) VALUES ($1, $2, $3)
             ON CONFLICT (library, instance) DO UPDATE SET row = EXCLUDED.row",
            &[&LIB, &instance, &row],
        )
        .await
        .unwrap();
}

/// One committed transaction of `n` rows, as a store would write it. Returns the ids.
async fn write(db: &Db, stream: &Arc<Stream>, instance: &str, n: usize) -> Vec<i64> {
    let mut client = db.pool.get().await.unwrap();
    let txn = client.transaction().await.unwrap();
    let allocation = stream.allocate(&txn, n).await.unwrap();
    for id in allocation.ids() {
        txn.execute(
            "INSERT INTO foobar VALUES ($1, $2, $3)",
            &[&LIB, &instance, id],
        )
        .await
        .unwrap();
    }
    txn.commit().await.unwrap();
    let ids = allocation.ids().to_vec();
    allocation.committed().await.unwrap();
    ids
}

/// Synapse's `_replicate`: tell every other instance the writer's current token.
fn replicate(instances: &[(&str, &Arc<Stream>)], name: &str) {
    let writer = instances.iter().find(|(n, _)| *n == name).unwrap().1;
    let token = writer.current_token_for_writer(name);
    for (other, stream) in instances {
        if *other != name {
            stream.advance(name, token);
        }
    }
}

fn replicate_all(instances: &[(&str, &Arc<Stream>)]) {
    for (name, _) in instances {
        replicate(instances, name);
    }
}

fn positions(pairs: &[(&str, i64)]) -> BTreeMap<String, i64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

async fn stored_positions(db: &Db) -> BTreeMap<String, i64> {
    let client = db.pool.get().await.unwrap();
    client
        .query(
            "SELECT instance, row FROM stream_positions WHERE library = $1",
            &[&LIB],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Makes `instance`'s heartbeat look `stale` (an hour old): it stopped announcing.
async fn backdate(db: &Db, instance: &str) {
    let client = db.pool.get().await.unwrap();
    let n = client
        .execute(
            "UPDATE stream_positions SET updated_at = now() - interval '1 hour'
             WHERE library = $1 AND instance = $2",
            &[&LIB, &instance],
        )
        .await
        .unwrap();
    assert_eq!(n, 1, "{instance} has a position row");
}

/// Polls `check` until it holds (deadline 20 s; a correctness bound, not a timing claim).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ----- MultiWriterIdGeneratorTestCase -----

/// An empty database gives sensible positions: the writer at 0 (Synapse: a dummy 1).
#[tokio::test]
async fn test_empty() {
    let db = db().await;
    let (_p, id_gen) = writer(&db, "master").await;
    assert_eq!(id_gen.positions(), positions(&[("master", 0)]));
    assert_eq!(id_gen.persisted_up_to(), 0);
    assert_eq!(
        stored_positions(&db).await,
        positions(&[("master", 0)]),
        "joined at 0"
    );
}

/// Reads and writes from one process; the position moves only once the transaction ends,
/// and is stored in `stream_positions`.
#[tokio::test]
async fn test_single_instance() {
    let db = db().await;
    insert_rows(&db, "master", 7, "foobar", true).await;
    let (_p, id_gen) = writer(&db, "master").await;
    assert_eq!(id_gen.positions(), positions(&[("master", 7)]));
    assert_eq!(id_gen.current_token_for_writer("master"), 7);

    let mut client = db.pool.get().await.unwrap();
    let txn = client.transaction().await.unwrap();
    let allocation = id_gen.allocate(&txn, 1).await.unwrap();
    assert_eq!(allocation.ids(), &[8]);
    assert_eq!(id_gen.positions(), positions(&[("master", 7)]));
    assert_eq!(id_gen.current_token_for_writer("master"), 7);
    txn.commit().await.unwrap();
    allocation.committed().await.unwrap();

    assert_eq!(id_gen.positions(), positions(&[("master", 8)]));
    assert_eq!(id_gen.current_token_for_writer("master"), 8);
    assert_eq!(id_gen.persisted_up_to(), 8);
    assert_eq!(stored_positions(&db).await, positions(&[("master", 8)]));
}

/// Ids finished out of order: the position moves only through ids with nothing unfinished
/// below them.
#[tokio::test]
async fn test_out_of_order_finish() {
    let db = db().await;
    insert_rows(&db, "master", 7, "foobar", true).await;
    let (_p, id_gen) = writer(&db, "master").await;
    assert_eq!(id_gen.positions(), positions(&[("master", 7)]));

    let (mut c1, mut c2, mut c3, mut c4) = (
        db.pool.get().await.unwrap(),
        db.pool.get().await.unwrap(),
        db.pool.get().await.unwrap(),
        db.pool.get().await.unwrap(),
    );
    let (t1, t2, t3, t4) = (
        c1.transaction().await.unwrap(),
        c2.transaction().await.unwrap(),
        c3.transaction().await.unwrap(),
        c4.transaction().await.unwrap(),
    );
    let a1 = id_gen.allocate(&t1, 1).await.unwrap();
    let a2 = id_gen.allocate(&t2, 1).await.unwrap();
    let a3 = id_gen.allocate(&t3, 1).await.unwrap();
    let a4 = id_gen.allocate(&t4, 1).await.unwrap();
    assert_eq!(
        [a1.ids(), a2.ids(), a3.ids(), a4.ids()],
        [&[8], &[9], &[10], &[11]]
    );
    assert_eq!(id_gen.positions(), positions(&[("master", 7)]));
    assert_eq!(id_gen.current_token_for_writer("master"), 7);

    t2.commit().await.unwrap();
    a2.committed().await.unwrap();
    assert_eq!(id_gen.positions(), positions(&[("master", 7)]));
    assert_eq!(id_gen.current_token_for_writer("master"), 7);

    t1.commit().await.unwrap();
    a1.committed().await.unwrap();
    assert_eq!(id_gen.positions(), positions(&[("master", 9)]));
    assert_eq!(id_gen.current_token_for_writer("master"), 9);

    t4.commit().await.unwrap();
    a4.committed().await.unwrap();
    assert_eq!(id_gen.positions(), positions(&[("master", 9)]));
    assert_eq!(id_gen.current_token_for_writer("master"), 9);

    t3.commit().await.unwrap();
    a3.committed().await.unwrap();
    assert_eq!(id_gen.positions(), positions(&[("master", 11)]));
    assert_eq!(id_gen.current_token_for_writer("master"), 11);
    assert_eq!(id_gen.persisted_up_to(), 11);
}

/// The id is allocated inside the transaction that writes the row, and finished with it.
#[tokio::test]
async fn test_get_next_txn() {
    let db = db().await;
    insert_rows(&db, "master", 7, "foobar", true).await;
    let (_p, id_gen) = writer(&db, "master").await;
    assert_eq!(id_gen.positions(), positions(&[("master", 7)]));

    let mut client = db.pool.get().await.unwrap();
    let txn = client.transaction().await.unwrap();
    let allocation = id_gen.allocate(&txn, 1).await.unwrap();
    assert_eq!(allocation.ids(), &[8]);
    txn.execute("INSERT INTO foobar VALUES ($1, 'master', 8)", &[&LIB])
        .await
        .unwrap();
    assert_eq!(id_gen.positions(), positions(&[("master", 7)]));
    assert_eq!(id_gen.current_token_for_writer("master"), 7);
    txn.commit().await.unwrap();
    allocation.committed().await.unwrap();

    assert_eq!(id_gen.positions(), positions(&[("master", 8)]));
    assert_eq!(id_gen.current_token_for_writer("master"), 8);
}

/// A transaction that rolls back, an allocation dropped unresolved and an allocation whose
/// future is cancelled mid-flight all count as finished: none holds the position back.
#[tokio::test]
async fn cancelled_allocation() {
    let db = db().await;
    insert_rows(&db, "master", 7, "foobar", true).await;
    let (_p, id_gen) = writer(&db, "master").await;

    // Rolled back.
    let mut client = db.pool.get().await.unwrap();
    let txn = client.transaction().await.unwrap();
    let allocation = id_gen.allocate(&txn, 1).await.unwrap();
    assert_eq!(allocation.ids(), &[8]);
    txn.rollback().await.unwrap();
    allocation.rolled_back();
    assert_eq!(id_gen.positions(), positions(&[("master", 8)]));
    assert_eq!(id_gen.persisted_up_to(), 8);

    // Dropped unresolved together with its transaction.
    let txn = client.transaction().await.unwrap();
    let allocation = id_gen.allocate(&txn, 2).await.unwrap();
    assert_eq!(allocation.ids(), &[9, 10]);
    drop(allocation);
    drop(txn);
    assert_eq!(id_gen.positions(), positions(&[("master", 10)]));
    drop(client);

    // The allocation's future dropped while waiting on the database.
    let mut client = db.pool.get().await.unwrap();
    let txn = client.transaction().await.unwrap();
    {
        let pending = id_gen.allocate(&txn, 1);
        tokio::pin!(pending);
        assert!(futures::poll!(&mut pending).is_pending());
        assert_eq!(
            id_gen.current_token_for_writer("master"),
            10,
            "held while allocating"
        );
    }
    assert_eq!(id_gen.current_token_for_writer("master"), 10);
    drop(txn);
    drop(client);

    // Nothing in flight is left behind: the next allocation finishes the position.
    let ids = write(&db, &id_gen, "master", 1).await;
    assert!(ids[0] > 10, "{ids:?}");
    assert_eq!(id_gen.persisted_up_to(), ids[0]);
    assert_eq!(id_gen.positions(), positions(&[("master", ids[0])]));
    // None of the cancelled ids was ever stored.
    let client = db.pool.get().await.unwrap();
    let stored: i64 = client
        .query_one("SELECT count(*) FROM foobar WHERE row > 7", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 1);
}

/// Another instance starting while a writer persists out of order does not see past the gap.
#[tokio::test]
async fn test_restart_during_out_of_order_persistence() {
    let db = db().await;
    insert_rows(&db, "master", 7, "foobar", true).await;
    let (_p, id_gen) = writer(&db, "master").await;
    assert_eq!(id_gen.positions(), positions(&[("master", 7)]));

    let (mut c1, mut c2) = (db.pool.get().await.unwrap(), db.pool.get().await.unwrap());
    let (t1, t2) = (
        c1.transaction().await.unwrap(),
        c2.transaction().await.unwrap(),
    );
    let a1 = id_gen.allocate(&t1, 1).await.unwrap();
    let a2 = id_gen.allocate(&t2, 1).await.unwrap();
    assert_eq!((a1.ids(), a2.ids()), (&[8][..], &[9][..]));
    assert_eq!(id_gen.positions(), positions(&[("master", 7)]));

    // The second row is persisted before the other instance starts.
    t2.execute("INSERT INTO foobar VALUES ($1, 'master', 9)", &[&LIB])
        .await
        .unwrap();
    t2.commit().await.unwrap();
    a2.committed().await.unwrap();

    let (_w, worker) = reader(&db, "worker").await;
    assert_eq!(worker.positions(), positions(&[("master", 7)]));
    assert_eq!(worker.current_token_for_writer("master"), 7);
    assert_eq!(
        worker.persisted_up_to(),
        7,
        "row 9 is stored but 8 is not finished"
    );

    t1.execute("INSERT INTO foobar VALUES ($1, 'master', 8)", &[&LIB])
        .await
        .unwrap();
    t1.commit().await.unwrap();
    a1.committed().await.unwrap();
    assert_eq!(id_gen.positions(), positions(&[("master", 9)]));
    worker.advance("master", 9);
    assert_eq!(worker.positions(), positions(&[("master", 9)]));
    assert_eq!(worker.persisted_up_to(), 9);
}

/// The older `StreamIdGenerator` case: a second allocation while the first is unfinished.
#[tokio::test]
async fn test_gen_next_while_still_waiting_for_persistence() {
    let db = db().await;
    insert_rows(&db, "master", 7, "foobar", true).await;
    let (_p, id_gen) = writer(&db, "master").await;
    let (mut c1, mut c2) = (db.pool.get().await.unwrap(), db.pool.get().await.unwrap());
    let t1 = c1.transaction().await.unwrap();
    let a1 = id_gen.allocate(&t1, 1).await.unwrap();
    assert_eq!(a1.ids(), &[8]);
    // While 8 is unfinished, 9 is allocated and finished: the position stays at 7.
    let t2 = c2.transaction().await.unwrap();
    let a2 = id_gen.allocate(&t2, 1).await.unwrap();
    assert_eq!(a2.ids(), &[9]);
    t2.commit().await.unwrap();
    a2.committed().await.unwrap();
    assert_eq!(id_gen.current_token_for_writer("master"), 7);
    t1.commit().await.unwrap();
    a1.committed().await.unwrap();
    assert_eq!(id_gen.current_token_for_writer("master"), 9);
}

// ----- WorkerMultiWriterIdGeneratorTestCase -----

/// The persisted-up-to position is the minimum over writers, stepped through gap-free runs.
#[tokio::test]
async fn test_get_persisted_upto_position() {
    let db = db().await;
    insert_row_with_id(&db, "first", 3).await;
    insert_row_with_id(&db, "second", 5).await;
    let (_p, id_gen) = reader(&db, "worker").await;
    assert_eq!(
        id_gen.positions(),
        positions(&[("first", 3), ("second", 5)])
    );

    // Min is 3 and there is a gap before 5.
    assert_eq!(id_gen.persisted_up_to(), 3);
    // "first" to 6: min is 5, and 6 follows with no gap.
    id_gen.advance("first", 6);
    assert_eq!(id_gen.persisted_up_to(), 6);
    id_gen.advance("second", 7);
    assert_eq!(id_gen.persisted_up_to(), 7);
    // 8 not seen yet.
    id_gen.advance("second", 9);
    assert_eq!(id_gen.persisted_up_to(), 7);
    // 7, 8 and 9 seen: straight to 9.
    id_gen.advance("first", 8);
    assert_eq!(id_gen.persisted_up_to(), 9);
    // Gaps, but everything below the minimum (11) is persisted.
    id_gen.advance("first", 11);
    id_gen.advance("second", 15);
    assert_eq!(id_gen.persisted_up_to(), 11);
}

/// A writer starts at the newest finished position, and its own allocation moves the
/// persisted-up-to position.
#[tokio::test]
async fn test_get_persisted_upto_position_get_next() {
    let db = db().await;
    insert_row_with_id(&db, "first", 3).await;
    insert_row_with_id(&db, "second", 5).await;
    let (_p, id_gen) = writer(&db, "first").await;
    assert_eq!(
        id_gen.positions(),
        positions(&[("first", 5), ("second", 5)])
    );
    assert_eq!(id_gen.persisted_up_to(), 5);

    let mut client = db.pool.get().await.unwrap();
    let txn = client.transaction().await.unwrap();
    let allocation = id_gen.allocate(&txn, 1).await.unwrap();
    assert_eq!(allocation.ids(), &[6]);
    assert_eq!(id_gen.persisted_up_to(), 5);
    txn.commit().await.unwrap();
    allocation.committed().await.unwrap();
    assert_eq!(id_gen.persisted_up_to(), 6);
}

/// Two writers, each told of the other by hand.
#[tokio::test]
async fn test_multi_instance() {
    let db = db().await;
    insert_rows(&db, "first", 3, "foobar", true).await;
    let (_p1, first) = writer(&db, "first").await;
    insert_rows(&db, "second", 4, "foobar", true).await;
    let (_p2, second) = writer(&db, "second").await;
    let all = [("first", &first), ("second", &second)];
    replicate_all(&all);

    assert_eq!(first.positions(), positions(&[("first", 3), ("second", 7)]));
    assert_eq!(first.current_token_for_writer("first"), 7);
    assert_eq!(first.current_token_for_writer("second"), 7);
    assert_eq!(
        second.positions(),
        positions(&[("first", 3), ("second", 7)])
    );
    assert_eq!(second.current_token_for_writer("first"), 7);
    assert_eq!(second.current_token_for_writer("second"), 7);

    let mut client = db.pool.get().await.unwrap();
    let txn = client.transaction().await.unwrap();
    let allocation = first.allocate(&txn, 1).await.unwrap();
    assert_eq!(allocation.ids(), &[8]);
    assert_eq!(first.positions(), positions(&[("first", 3), ("second", 7)]));
    assert_eq!(
        second.positions(),
        positions(&[("first", 3), ("second", 7)])
    );
    assert_eq!(first.persisted_up_to(), 7);
    txn.commit().await.unwrap();
    allocation.committed().await.unwrap();
    assert_eq!(first.positions(), positions(&[("first", 8), ("second", 7)]));
    // The second instance has not heard of it...
    assert_eq!(
        second.positions(),
        positions(&[("first", 3), ("second", 7)])
    );

    // ...but still gets a unique id.
    let txn = client.transaction().await.unwrap();
    let allocation = second.allocate(&txn, 1).await.unwrap();
    assert_eq!(allocation.ids(), &[9]);
    assert_eq!(
        second.positions(),
        positions(&[("first", 3), ("second", 7)])
    );
    txn.commit().await.unwrap();
    allocation.committed().await.unwrap();
    assert_eq!(
        second.positions(),
        positions(&[("first", 3), ("second", 9)])
    );

    second.advance("first", 8);
    assert_eq!(
        second.positions(),
        positions(&[("first", 8), ("second", 9)])
    );
}

/// A third writer that has written nothing starts at the persisted position, not at 0.
#[tokio::test]
async fn test_multi_instance_empty_row() {
    let db = db().await;
    insert_rows(&db, "first", 3, "foobar", true).await;
    let (_p1, first) = writer(&db, "first").await;
    insert_rows(&db, "second", 4, "foobar", true).await;
    let (_p2, second) = writer(&db, "second").await;
    let (_p3, third) = writer(&db, "third").await;
    let all = [("first", &first), ("second", &second), ("third", &third)];
    replicate_all(&all);

    let expected = positions(&[("first", 3), ("second", 7), ("third", 7)]);
    for stream in [&first, &second] {
        assert_eq!(stream.positions(), expected);
        for name in ["first", "second", "third"] {
            assert_eq!(stream.current_token_for_writer(name), 7, "{name}");
        }
    }

    let mut client = db.pool.get().await.unwrap();
    let txn = client.transaction().await.unwrap();
    let allocation = third.allocate(&txn, 1).await.unwrap();
    assert_eq!(allocation.ids(), &[8]);
    assert_eq!(third.positions(), expected);
    assert_eq!(third.persisted_up_to(), 7);
    txn.commit().await.unwrap();
    allocation.committed().await.unwrap();
    assert_eq!(
        third.positions(),
        positions(&[("first", 3), ("second", 7), ("third", 8)])
    );
}

/// Writers come and go. Synapse changes a static writer list; here a writer that stopped long
/// ago (stale heartbeat, nothing in flight) is dropped, one shuts down cleanly (`leave`), new
/// ones join at the persisted position, and a returning one never pulls it back.
#[tokio::test]
async fn test_writer_config_change() {
    let db = db().await;
    insert_row_with_id(&db, "first", 3).await;
    insert_row_with_id(&db, "second", 5).await;

    let (_w, worker) = reader(&db, "worker").await;
    assert_eq!(worker.persisted_up_to(), 3);
    assert_eq!(worker.current_token_for_writer("first"), 3);
    assert_eq!(worker.current_token_for_writer("second"), 5);

    // "first" has been gone for an hour: the next instance to open the library drops it.
    backdate(&db, "first").await;
    let (p2, id_gen_2) = writer(&db, "second").await;
    assert_eq!(id_gen_2.persisted_up_to(), 5);
    assert_eq!(id_gen_2.current_token_for_writer("second"), 5);
    assert!(!stored_positions(&db).await.contains_key("first"));

    // A writer that never wrote starts at the persisted position (no table scan from 0).
    let (_p3, id_gen_3) = writer(&db, "third").await;
    assert_eq!(id_gen_3.persisted_up_to(), 5);
    assert_eq!(id_gen_3.current_token_for_writer("third"), 5);

    let (_p4, id_gen_4) = reader(&db, "fourth").await;
    assert_eq!(id_gen_4.current_token_for_writer("third"), 5);

    assert_eq!(write(&db, &id_gen_3, "third", 1).await, vec![6]);
    assert_eq!(id_gen_3.persisted_up_to(), 6);

    // "second" shuts down cleanly; "first" comes back. It must not see the position revert
    // to its old 3.
    p2.leave().await.unwrap();
    assert!(!stored_positions(&db).await.contains_key("second"));
    let (_p5, id_gen_5) = writer(&db, "first").await;
    assert_eq!(id_gen_5.persisted_up_to(), 6);
    assert_eq!(id_gen_5.current_token_for_writer("first"), 6);
    assert_eq!(id_gen_5.current_token_for_writer("third"), 6);
    assert_eq!(
        stored_positions(&db).await,
        positions(&[("first", 6), ("third", 6)])
    );
}

/// A sequence behind the stored rows — or behind the stored positions — is moved past them at
/// start-up, so no id is handed out twice.
#[tokio::test]
async fn test_sequence_consistency() {
    let db = db().await;
    insert_row_with_id(&db, "master", 3).await;
    // A row the sequence never handed out (a restore, say).
    let client = db.pool.get().await.unwrap();
    client
        .execute("INSERT INTO foobar VALUES ($1, 'master', 26)", &[&LIB])
        .await
        .unwrap();

    let (p, id_gen) = writer(&db, "master").await;
    assert_eq!(write(&db, &id_gen, "master", 1).await, vec![27]);

    // Another library whose positions table is ahead of a fresh sequence.
    client
        .execute(
            "INSERT INTO stream_positions (library, instance, row) VALUES ('other', 'master', 40)",
            &[],
        )
        .await
        .unwrap();
    let stream = p.stream("other").await.unwrap();
    let mut c = db.pool.get().await.unwrap();
    let txn = c.transaction().await.unwrap();
    let allocation = stream.allocate(&txn, 1).await.unwrap();
    assert_eq!(allocation.ids(), &[41]);
}

/// Our own position without the idle advance.
#[tokio::test]
async fn test_minimal_local_token() {
    let db = db().await;
    insert_rows(&db, "first", 3, "foobar", true).await;
    let (_p1, first) = writer(&db, "first").await;
    insert_rows(&db, "second", 4, "foobar", true).await;
    let (_p2, second) = writer(&db, "second").await;
    replicate_all(&[("first", &first), ("second", &second)]);

    assert_eq!(first.positions(), positions(&[("first", 3), ("second", 7)]));
    assert_eq!(first.minimal_local_current_token(), 3);
    assert_eq!(
        second.positions(),
        positions(&[("first", 3), ("second", 7)])
    );
    assert_eq!(second.minimal_local_current_token(), 7);
}

/// An idle writer's token follows the newest id it has seen; one with something in flight
/// stays put; a writer that has not announced anything pins the persisted position.
#[tokio::test]
async fn test_current_token_gap() {
    let db = db().await;
    insert_rows(&db, "first", 3, "foobar", true).await;
    let (_p1, first) = writer(&db, "first").await;
    insert_rows(&db, "second", 4, "foobar", true).await;
    let (_p2, second) = writer(&db, "second").await;
    // Synapse lists "third" as a writer that never runs; here it joins and stays silent.
    let (_p3, third) = writer(&db, "third").await;
    replicate_all(&[("first", &first), ("second", &second), ("third", &third)]);

    assert_eq!(second.current_token_for_writer("first"), 7);
    assert_eq!(second.current_token_for_writer("second"), 7);
    assert_eq!(second.persisted_up_to(), 7);

    // "first" advancing moves "second"'s token, as it has nothing in flight.
    assert_eq!(write(&db, &first, "first", 2).await, vec![8, 9]);
    second.advance("first", 9);
    assert_eq!(second.current_token_for_writer("first"), 9);
    assert_eq!(second.current_token_for_writer("second"), 9);
    assert_eq!(second.persisted_up_to(), 7, "third is silent at 7");

    // ...but not while "second" has something in flight.
    assert_eq!(write(&db, &first, "first", 2).await, vec![10, 11]);
    let mut client = db.pool.get().await.unwrap();
    let txn = client.transaction().await.unwrap();
    let allocation = second.allocate(&txn, 1).await.unwrap();
    assert_eq!(allocation.ids(), &[12]);
    second.advance("first", 11);
    assert_eq!(second.current_token_for_writer("first"), 11);
    assert_eq!(second.current_token_for_writer("second"), 9);
    assert_eq!(second.persisted_up_to(), 7);

    txn.commit().await.unwrap();
    allocation.committed().await.unwrap();
    assert_eq!(second.current_token_for_writer("first"), 11);
    assert_eq!(second.current_token_for_writer("second"), 12);
    assert_eq!(second.persisted_up_to(), 7);
}

// ----- MultiTableMultiWriterIdGeneratorTestCase -----

/// Rows in several tables, some stored after the last recorded position: start-up steps
/// through all of them.
#[tokio::test]
async fn test_load_existing_stream() {
    let db = db().await;
    insert_rows(&db, "first", 3, "foobar", true).await;
    let (_p1, first) = writer(&db, "first").await;
    insert_rows(&db, "second", 3, "foobar2", true).await;
    insert_rows(&db, "second", 1, "foobar2", false).await;
    let (_p2, second) = writer(&db, "second").await;
    replicate_all(&[("first", &first), ("second", &second)]);

    for stream in [&first, &second] {
        assert_eq!(
            stream.positions(),
            positions(&[("first", 3), ("second", 7)])
        );
        assert_eq!(stream.current_token_for_writer("first"), 7);
        assert_eq!(stream.current_token_for_writer("second"), 7);
        assert_eq!(stream.persisted_up_to(), 7);
    }
}

// ----- beyond Synapse's cases -----

/// An idle writer holds readers back until it announces the newest row it has seen; its
/// periodic announcement (`tick`) then releases them.
#[tokio::test]
async fn idle_writer_advances_its_position() {
    let db = db().await;
    let (_pa, a) = writer(&db, "a").await;
    let (pb, b) = writer(&db, "b").await;
    let (po, observer) = reader(&db, "observer").await;

    let ids = write(&db, &a, "a", 3).await;
    assert_eq!(ids, vec![1, 2, 3]);
    po.refresh().await.unwrap();
    assert_eq!(observer.positions(), positions(&[("a", 3), ("b", 0)]));
    assert_eq!(observer.persisted_up_to(), 0, "idle b has not announced");

    pb.tick().await.unwrap(); // b re-reads a's position, then announces it as its own token
    assert_eq!(b.current_token_for_writer("b"), 3);
    pb.tick().await.unwrap();
    assert_eq!(
        stored_positions(&db).await,
        positions(&[("a", 3), ("b", 3)])
    );
    po.refresh().await.unwrap();
    assert_eq!(observer.persisted_up_to(), 3);
}

/// A writer with a transaction open is never dropped, however stale its heartbeat (paused,
/// not dead); once it is really dead — its connection gone, so its transaction rolled back —
/// it is dropped and stops pinning the position. Its uncommitted row never appears.
#[tokio::test]
async fn dead_writer_does_not_pin_the_position() {
    let db = db().await;
    let (pa, a) = writer(&db, "a").await;
    let (pd, dead) = writer(&db, "dead").await;

    let mut dc = db.pool.get().await.unwrap();
    let dtxn = dc.transaction().await.unwrap();
    let d_alloc = dead.allocate(&dtxn, 1).await.unwrap();
    assert_eq!(d_alloc.ids(), &[1]);
    dtxn.execute("INSERT INTO foobar VALUES ($1, 'dead', 1)", &[&LIB])
        .await
        .unwrap();
    let backend: i32 = dtxn
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);

    assert_eq!(write(&db, &a, "a", 1).await, vec![2]);
    pa.refresh().await.unwrap();
    assert_eq!(a.persisted_up_to(), 0, "dead's id 1 is in flight");

    // Paused: no heartbeat for an hour, but its transaction is open.
    backdate(&db, "dead").await;
    pa.refresh().await.unwrap();
    assert!(
        stored_positions(&db).await.contains_key("dead"),
        "a writer with an open transaction is never dropped"
    );
    assert_eq!(a.persisted_up_to(), 0);

    // Dead: the process goes (its allocation never resolved) and PostgreSQL ends its session.
    std::mem::forget(d_alloc);
    drop(pd);
    let admin = db.pool.get().await.unwrap();
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&backend])
        .await
        .unwrap();
    drop(dtxn);
    drop(deadpool_postgres::Object::take(dc)); // not back into the pool: it is dead
    eventually("the dead writer is dropped", || async {
        pa.refresh().await.unwrap();
        !stored_positions(&db).await.contains_key("dead")
    })
    .await;
    assert_eq!(a.positions(), positions(&[("a", 2)]));
    assert_eq!(a.persisted_up_to(), 2);
    let rows: i64 = admin
        .query_one("SELECT count(*) FROM foobar WHERE row = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0, "the dead writer's uncommitted row never committed");
}

/// A writer dropped while idle (it only looked dead) rejoins before allocating: its new ids
/// are above everything before, and once others hear of it again it pins them until it
/// commits.
#[tokio::test]
async fn dropped_writer_rejoins_before_allocating() {
    let db = db().await;
    let (pa, a) = writer(&db, "a").await;
    let (_pd, paused) = writer(&db, "paused").await;
    assert_eq!(write(&db, &a, "a", 2).await, vec![1, 2]);
    backdate(&db, "paused").await;
    pa.refresh().await.unwrap();
    assert!(
        !stored_positions(&db).await.contains_key("paused"),
        "idle and stale: dropped"
    );
    assert_eq!(a.persisted_up_to(), 2);

    // It was only paused, and now writes.
    let mut client = db.pool.get().await.unwrap();
    let txn = client.transaction().await.unwrap();
    let allocation = paused.allocate(&txn, 1).await.unwrap();
    assert_eq!(allocation.ids(), &[3]);
    assert!(
        stored_positions(&db).await.contains_key("paused"),
        "rejoined"
    );

    pa.refresh().await.unwrap();
    assert_eq!(write(&db, &a, "a", 1).await, vec![4]);
    assert_eq!(a.persisted_up_to(), 2, "paused's id 3 is in flight");
    txn.commit().await.unwrap();
    allocation.committed().await.unwrap();
    pa.refresh().await.unwrap();
    assert_eq!(a.persisted_up_to(), 4);
}

/// A commit's NOTIFY wakes another instance's tracker, with no re-read of the table.
#[tokio::test]
async fn notify_wakes_another_instance() {
    let db = db().await;
    let (_pa, a) = writer(&db, "a").await;
    let pb = Positions::open(db.pool.clone(), config("b", true))
        .await
        .unwrap();
    pb.listen(db.pg.clone()).await.unwrap();
    let b = pb.stream(LIB).await.unwrap();
    let mut woken = b.subscribe();
    assert_eq!(*woken.borrow_and_update(), 0);

    let ids = write(&db, &a, "a", 2).await;
    let last = *ids.last().unwrap();
    tokio::time::timeout(Duration::from_secs(20), woken.wait_for(|p| *p >= last))
        .await
        .expect("woken by NOTIFY")
        .unwrap();
    assert_eq!(b.positions().get("a"), Some(&last));
    assert_eq!(b.persisted_up_to(), last);
}

/// The periodic re-read of `stream_positions` finds what no notification told.
#[tokio::test]
async fn reread_finds_positions_missed_by_notifications() {
    let db = db().await;
    let (_pa, a) = writer(&db, "a").await;
    let (pb, b) = reader(&db, "b").await;
    let ids = write(&db, &a, "a", 1).await;
    assert_eq!(b.persisted_up_to(), 0, "b does not listen");
    pb.refresh().await.unwrap();
    assert_eq!(b.persisted_up_to(), ids[0]);
}

/// A lost LISTEN connection is re-established, and what was announced meanwhile is read back.
#[tokio::test]
async fn listener_reconnects_after_losing_its_connection() {
    let db = db().await;
    let (_pa, a) = writer(&db, "a").await;
    let pb = Positions::open(db.pool.clone(), config("b", false))
        .await
        .unwrap();
    let mut pg = db.pg.clone();
    pg.application_name("listener-b");
    pb.listen(pg).await.unwrap();
    let b = pb.stream(LIB).await.unwrap();

    let admin = db.pool.get().await.unwrap();
    let killed: i64 = admin
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE application_name = 'listener-b' AND datname = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(killed, 1);
    let ids = write(&db, &a, "a", 1).await;
    eventually("b hears of a's row after reconnecting", || async {
        b.persisted_up_to() >= ids[0]
    })
    .await;
    eventually("b listens again", || async {
        let n: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'listener-b'
                 AND datname = current_database()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        n == 1
    })
    .await;
    let ids = write(&db, &a, "a", 1).await;
    eventually("b is notified on the new connection", || async {
        b.persisted_up_to() >= ids[0]
    })
    .await;
}

/// A TCP relay to the cluster: `cut` closes every connection through it and refuses new
/// ones (counting the attempts) until `restore` — an outage of only the connections made
/// through it.
struct Relay {
    port: u16,
    open: Arc<AtomicBool>,
    refused: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
    links: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    async fn start(to: u16) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay = Relay {
            port: listener.local_addr().unwrap().port(),
            open: Arc::new(true.into()),
            refused: Arc::default(),
            accepted: Arc::default(),
            links: Arc::default(),
        };
        let (open, refused, accepted, links) = (relay.open.clone(), relay.refused.clone(), relay.accepted.clone(), relay.links.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !open.load(Ordering::SeqCst) {
                    refused.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                accepted.fetch_add(1, Ordering::SeqCst);
                links.lock().unwrap().push(tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                }));
            }
        });
        relay
    }

    /// `pg` with its connections made through the relay.
    fn config(&self, pg: &tokio_postgres::Config) -> tokio_postgres::Config {
        let mut through = tokio_postgres::Config::new();
        through.host("127.0.0.1").port(self.port);
        through.user(pg.get_user().unwrap()).dbname(pg.get_dbname().unwrap());
        if let Some(password) = pg.get_password() {
            through.password(password);
        }
        through
    }

    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }

    fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// While the LISTEN connection is down and cannot be re-established, the re-reads alone move
/// the persisted-up-to position on (its clients keep getting rows) — yet never past the
/// in-flight id of a writer that joined meanwhile, unheard; once the connection is back,
/// notifications move it again.
#[tokio::test]
async fn rereads_move_positions_on_while_the_listen_connection_is_down() {
    let db = db().await;
    let (_pa, a) = writer(&db, "a").await;
    let relay = Relay::start(db.pg.get_ports()[0]).await;
    let pb = Positions::open(db.pool.clone(), config("b", false))
        .await
        .unwrap();
    pb.listen(relay.config(&db.pg)).await.unwrap();
    let b = pb.stream(LIB).await.unwrap();
    let ids = write(&db, &a, "a", 1).await;
    eventually("b is notified", || async { b.persisted_up_to() >= ids[0] }).await;

    relay.cut();
    eventually("b tries to listen again", || async { relay.refused() > 0 }).await;
    let ids = write(&db, &a, "a", 2).await;
    pb.refresh().await.unwrap(); // what b's one-second tick does
    assert_eq!(b.persisted_up_to(), ids[1], "a re-read moves b on while it cannot listen");

    // A writer joins unheard and holds an id in flight; rows committed above it stay unshown.
    let (_pc, c) = writer(&db, "c").await;
    let mut client = db.pool.get().await.unwrap();
    let txn = client.transaction().await.unwrap();
    let in_flight = c.allocate(&txn, 1).await.unwrap();
    let held = in_flight.ids()[0];
    let above = write(&db, &a, "a", 1).await;
    assert!(above[0] > held);
    pb.refresh().await.unwrap();
    assert!(b.persisted_up_to() < held, "b passed c's in-flight row {held}: {}", b.persisted_up_to());
    txn.execute("INSERT INTO foobar VALUES ($1, $2, $3)", &[&LIB, &"c", &held]).await.unwrap();
    txn.commit().await.unwrap();
    in_flight.committed().await.unwrap();
    pb.refresh().await.unwrap();
    assert!(b.persisted_up_to() >= held, "c's row committed: {}", b.persisted_up_to());

    relay.restore();
    eventually("b connects again", || async { relay.accepted() == 2 }).await;
    let (_pd, d) = writer(&db, "d").await;
    let ids = write(&db, &d, "d", 1).await;
    // b has no ticker here: only its new connection (its notifications, or the re-read
    // made on it) can tell it of d.
    eventually("b hears of d's row", || async { b.positions().get("d") == Some(&ids[0]) }).await;
}

/// Two live processes cannot share an instance name; a reader cannot allocate.
#[tokio::test]
async fn instance_names_are_exclusive_and_readers_cannot_write() {
    let db = db().await;
    let one = Positions::open(db.pool.clone(), config("same", true))
        .await
        .unwrap();
    one.listen(db.pg.clone()).await.unwrap();
    let two = Positions::open(db.pool.clone(), config("same", true))
        .await
        .unwrap();
    let err = two.listen(db.pg.clone()).await.unwrap_err();
    assert_eq!(err.code(), "instance_in_use", "{err}");

    let (_p, stream) = reader(&db, "reader").await;
    let mut client = db.pool.get().await.unwrap();
    let txn = client.transaction().await.unwrap();
    let err = stream
        .allocate(&txn, 1)
        .await
        .err()
        .expect("a reader cannot allocate");
    assert_eq!(err.code(), "not_a_writer");
}

/// Fully started instances (LISTEN + the one-second tick) need no help: a silent writer's
/// periodic announcement releases an observer once another writer has committed.
#[tokio::test]
async fn started_instances_follow_each_other_unaided() {
    let db = db().await;
    let start = |name: &'static str, writer: bool| {
        let (pool, pg) = (db.pool.clone(), db.pg.clone());
        async move {
            Positions::start(pool, pg, config(name, writer))
                .await
                .unwrap()
        }
    };
    let pa = start("a", true).await;
    let pb = start("b", true).await;
    let po = start("observer", false).await;
    let a = pa.stream(LIB).await.unwrap();
    let b = pb.stream(LIB).await.unwrap();
    let observer = po.stream(LIB).await.unwrap();

    let ids = write(&db, &a, "a", 2).await;
    let last = *ids.last().unwrap();
    let mut woken = observer.subscribe();
    tokio::time::timeout(Duration::from_secs(20), woken.wait_for(|p| *p >= last))
        .await
        .expect("b announced the newest row it saw")
        .unwrap();
    assert_eq!(b.current_token_for_writer("b"), last);
    assert_eq!(observer.positions(), positions(&[("a", last), ("b", last)]));
    assert_eq!(
        stored_positions(&db).await,
        positions(&[("a", last), ("b", last)])
    );
}
