//! Several real `tidemark-server` processes on one PostgreSQL database (DESIGN §12), with
//! native clients on each: they converge with nothing lost or duplicated; a paused instance
//! holding allocated rows never makes a client elsewhere skip them; an instance killed
//! mid-write loses nothing once restarted; a client of an idle instance sees another
//! instance's write; a fourth instance joins without moving anyone backwards; db id owners
//! and peer-record pruning are shared by the instances.
//!
//! Each test gets a database of its own on the test run's private cluster. Deadlines are
//! generous correctness bounds, never timing claims.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use support::*;
use tidemark::memory::MemoryStore;
use tidemark::sync::pass::Limits;
use tidemark::Replica;
use tidemark_testkit::PgCluster;

/// A test's database and where its instances keep their logs.
struct Db {
    url: String,
    dir: tempfile::TempDir,
    sql: tokio_postgres::Client,
}

async fn db() -> Db {
    let url = PgCluster::shared().create_database();
    let (sql, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("connect to the test database");
    tokio::spawn(connection);
    Db { url, dir: tempfile::tempdir().unwrap(), sql }
}

impl Drop for Db {
    /// A failed test shows the end of each instance's log.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for entry in std::fs::read_dir(self.dir.path()).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "log") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                eprintln!("--- {} (last lines)", path.display());
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

impl Db {
    /// Starts an instance named `name` on this database.
    fn instance(&self, name: &str) -> Server {
        start_instance(&self.dir.path().join(name), &self.url, name)
    }

    /// Every op stored more than once in the library's log (must be none).
    async fn duplicated_ops(&self) -> Vec<String> {
        let rows = self
            .sql
            .query("SELECT op FROM tidemark_log WHERE library = $1 GROUP BY op HAVING count(*) > 1", &[&LIB])
            .await
            .unwrap();
        rows.iter().map(|r| r.get(0)).collect()
    }

    async fn log_len(&self) -> i64 {
        self.sql.query_one("SELECT count(*) FROM tidemark_log WHERE library = $1", &[&LIB]).await.unwrap().get(0)
    }

    /// The library's sequence: the largest row id handed out so far.
    async fn last_allocated(&self) -> i64 {
        let id: i64 = self.sql.query_one("SELECT id FROM stream_sequences WHERE library = $1", &[&LIB]).await.unwrap().get(0);
        self.sql.query_one(&format!("SELECT last_value FROM tidemark_rows_{id}"), &[]).await.unwrap().get(0)
    }

    async fn stored_positions(&self) -> BTreeMap<String, i64> {
        let rows = self.sql.query("SELECT instance, row FROM stream_positions WHERE library = $1", &[&LIB]).await.unwrap();
        rows.iter().map(|r| (r.get(0), r.get(1))).collect()
    }

    /// Whether instance `name` has a transaction open that has allocated row ids and now sits
    /// waiting: allocating locks the writer's position row (`FOR KEY SHARE`), which holds a
    /// `RowShareLock` on `stream_positions` until the transaction ends, and gives the
    /// transaction an id (nothing a commit does before allocating does; a statement only
    /// prepared takes the table lock but no id).
    async fn holds_allocated_rows(&self, name: &str) -> bool {
        let app = format!("tidemark-server {name}");
        let row = self
            .sql
            .query_one(
                "SELECT count(*) FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid
                 WHERE a.application_name = $1 AND a.state = 'idle in transaction' AND a.backend_xid IS NOT NULL
                   AND l.locktype = 'relation' AND l.relation = 'stream_positions'::regclass AND l.mode = 'RowShareLock'",
                &[&app],
            )
            .await
            .unwrap();
        row.get::<_, i64>(0) > 0
    }
}

fn start_instance(dir: &Path, url: &str, name: &str) -> Server {
    Server::start(dir, &["--postgres", url, "--instance", name])
}

fn signal(server: &Server, sig: &str) {
    let ok = Command::new("kill").args([sig, &server.pid().to_string()]).status().unwrap().success();
    assert!(ok, "kill {sig}");
}

fn doc(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

fn persisted(server: &Server) -> i64 {
    server.status(LIB, None)["persistedUpTo"].as_i64().expect("persistedUpTo on PostgreSQL")
}

/// Rounds (with short pauses) until `done` holds for the client, or the deadline passes.
async fn until<F: Fn(&[Map<String, Value>]) -> bool>(what: &str, c: &Replica<MemoryStore>, server: &Server, done: F) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // A round may fail while an instance restarts; the next one retries.
        let _ = round(c, server, Limits::default(), None).await;
        if done(&docs(c).await) {
            return;
        }
        assert!(Instant::now() < deadline, "never happened: {what}; the client holds {} documents", docs(c).await.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Three instances, two clients on each, all writing at once (new documents, and patches to
/// one shared document): every client ends with the same documents, none lost; the log
/// holds no op twice; the instances agree on the library and its persisted position.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_converge_with_nothing_lost_or_duplicated() {
    let db = db().await;
    let servers: Vec<Arc<Server>> = ["a", "b", "c"].iter().map(|n| Arc::new(db.instance(n))).collect();
    let seed = client().await;
    seed.put("docs", doc(json!({"id": "shared"}))).await.unwrap();
    sync_fully(&seed, &servers[0], Limits::default(), None).await;

    const ROUNDS: usize = 5;
    const PER_ROUND: usize = 10;
    let mut tasks = Vec::new();
    for (i, server) in servers.iter().enumerate() {
        for j in 0..2 {
            let server = server.clone();
            tasks.push(tokio::spawn(async move {
                let c = client().await;
                until("the shared document arrives", &c, &server, |d| d.iter().any(|d| d["id"] == "shared")).await;
                for k in 0..ROUNDS {
                    put_all(&c, (0..PER_ROUND).map(|n| format!("w{i}{j}-{k}-{n}")), k as i64).await;
                    c.patch("docs", "shared", doc(json!({ format!("c{i}{j}"): k }))).await.unwrap();
                    round(&c, &server, Limits::default(), None).await.unwrap();
                }
                c
            }));
        }
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    let total = 3 * 2 * ROUNDS * PER_ROUND + 1;
    for (n, c) in clients.iter().enumerate() {
        until("every write reaches every client", c, &servers[n / 2], |d| {
            d.len() == total && d.iter().find(|d| d["id"] == "shared").is_some_and(|s| s.len() == 7)
        })
        .await;
    }
    // One more round each, so everyone has everyone's final patches.
    for (n, c) in clients.iter().enumerate() {
        until("the shared document has every final field", c, &servers[n / 2], |d| {
            let shared = d.iter().find(|d| d["id"] == "shared").unwrap();
            (0..3).all(|i| (0..2).all(|j| shared.get(&format!("c{i}{j}")) == Some(&json!(ROUNDS - 1))))
        })
        .await;
    }
    let first = docs(&clients[0]).await;
    for c in &clients {
        assert_eq!(docs(c).await, first, "clients differ");
        assert_eq!(c.store().dump("docs"), clients[0].store().dump("docs"), "stored documents differ, stamps included");
    }
    assert!(db.duplicated_ops().await.is_empty(), "an op was stored twice");
    // Each client's puts (ROUNDS × PER_ROUND) and patches (ROUNDS), plus the seed's put.
    assert_eq!(db.log_len().await as usize, 6 * ROUNDS * (PER_ROUND + 1) + 1);

    let ids: Vec<String> = servers.iter().map(|s| s.db_id(LIB)).collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "one library, one db id: {ids:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let stored = db.log_len().await;
    loop {
        let ps: Vec<i64> = servers.iter().map(|s| persisted(s)).collect();
        // Idle, every writer announces the newest row it has seen (DESIGN §12), and every
        // instance's status shows each writer's position as announced — its own included.
        let positions: Vec<Value> = servers.iter().map(|s| s.status(LIB, None)["positions"].clone()).collect();
        let settled = |p: &Value| p.as_object().is_some_and(|p| p.len() == 3 && p.values().all(|r| r.as_i64() == Some(ps[0])));
        if ps.iter().all(|p| *p == ps[0] && *p >= stored) && positions.iter().all(settled) {
            break;
        }
        assert!(Instant::now() < deadline, "the instances never agreed on the persisted position and every writer's: {ps:?} {positions:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An instance is paused (SIGSTOP) while a transaction of its holds allocated row ids. The
/// other instance keeps committing rows above them, but shows none of them — its persisted
/// position stays below the held rows — and once the paused instance resumes and commits, a
/// reader elsewhere gets every row, the held ones included.
///
/// The checks while paused use fresh clients: a client that has pulled the paused writer's
/// peer record forwards it on its next push, and that commit waits for the paused
/// transaction's lock on the record (as it must) until PostgreSQL's idle-in-transaction
/// timeout. The pause stays well inside that timeout, so the held rows do commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_instance_never_makes_another_skip_its_rows() {
    let db = db().await;
    let a = db.instance("a");
    let mut b = db.instance("b");
    let writer_b = client().await;

    // The writer on b commits batches back to back (diffs of 40 rows, never a snapshot);
    // pause b until it is caught holding rows.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writing = {
        let stop = stop.clone();
        let b_url = b.ws_url();
        tokio::spawn(async move {
            let mut k = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                put_all(&writer_b, (0..40).map(|n| format!("b{k}-{n}")), k).await;
                let _ = round_url(&writer_b, &b_url, Limits { per_diff: 50, max_diffs: 10 }, Duration::from_secs(20)).await;
                k += 1;
            }
            writer_b
        })
    };
    let mut caught = false;
    for _ in 0..400 {
        tokio::time::sleep(Duration::from_millis(7)).await;
        signal(&b, "-STOP");
        if db.holds_allocated_rows("b").await {
            caught = true;
            break;
        }
        signal(&b, "-CONT");
    }
    assert!(caught, "never caught instance b holding allocated rows");
    let paused = Instant::now();
    let ceiling = db.last_allocated().await;

    // While b is paused: a client on a writes; a's rows are stored above the held ones, but
    // a shows nothing at or past them.
    let writer_a = client().await;
    put_all(&writer_a, (0..20).map(|n| format!("a{n}")), 1).await;
    round(&writer_a, &a, Limits::default(), None).await.unwrap();
    assert!(db.last_allocated().await > ceiling, "a's rows were allocated above the held ones");
    for _ in 0..5 {
        let reader = client().await;
        round(&reader, &a, Limits::default(), None).await.unwrap();
        let p = persisted(&a);
        assert!(db.holds_allocated_rows("b").await, "b's transaction is still open");
        assert!(p < ceiling, "a shows rows up to {p}, past rows b holds (allocated up to {ceiling})");
        assert!(!docs(&reader).await.iter().any(|d| d["id"] == "a0"), "a row above b's held rows was shown");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(paused.elapsed() < Duration::from_secs(8), "the pause outlasted its purpose: {:?}", paused.elapsed());

    signal(&b, "-CONT");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let writer_b = writing.await.unwrap();
    sync_fully(&writer_b, &b, Limits::default(), None).await;
    let mut want: Vec<String> = docs(&writer_b).await.iter().map(|d| d["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(want.len(), db.log_len().await as usize, "the writer on b holds every document");
    want.sort();
    let reader = client().await;
    until("a reader on a gets every row, the held ones included", &reader, &a, |d| d.len() == want.len()).await;
    let mut got: Vec<String> = docs(&reader).await.iter().map(|d| d["id"].as_str().unwrap().to_string()).collect();
    got.sort();
    assert_eq!(got, want);
    assert!(db.duplicated_ops().await.is_empty(), "an op was stored twice");
    b.kill();
}

/// An instance is killed (SIGKILL) while its client is writing, and restarted under the same
/// name: every write of the client arrives at a reader on another instance, none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_instance_killed_mid_write_loses_nothing() {
    let db = db().await;
    let a = db.instance("a");
    let dir_b = db.dir.path().join("b");
    let mut b = start_instance(&dir_b, &db.url, "b");
    let writer = client().await;
    let reader = client().await;
    // Fewer rows than a batch, and later less than half of all rows: always diffs, so the
    // log holds exactly one row per write.
    put_all(&writer, (0..900).map(|n| format!("w{n}")), 1).await;
    sync_fully(&writer, &b, Limits::default(), None).await;

    // Writes in flight when b dies: many small batches, killed after a few have landed.
    put_all(&writer, (900..1_500).map(|n| format!("w{n}")), 2).await;
    let before = db.log_len().await;
    let url = b.ws_url();
    let pushing = tokio::spawn(async move {
        let _ = round_url(&writer, &url, Limits { per_diff: 20, max_diffs: 1000 }, Duration::from_secs(20)).await;
        writer
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while db.log_len().await < before + 60 {
        assert!(Instant::now() < deadline, "the writes never started landing");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    b.kill();
    let writer = pushing.await.unwrap();
    assert!(db.log_len().await < 1_500, "the kill came mid-write");

    let b = start_instance(&dir_b, &db.url, "b");
    sync_fully(&writer, &b, Limits::default(), None).await;
    until("the reader on a gets every write", &reader, &a, |d| d.len() == 1_500).await;
    assert_eq!(docs(&reader).await, docs(&writer).await);
    assert!(db.duplicated_ops().await.is_empty(), "an op was stored twice");
    assert_eq!(db.log_len().await, 1_500, "each write logged once");
}

/// An instance dies between committing rows and storing its position (simulated: its
/// position row is locked from outside, so its commits land but the position update after
/// them waits; then it is killed). Once it is dropped as dead, the rows it committed but
/// never announced are shown by the survivor — read back from the table — rather than
/// staying hidden until some other writer's rows pass them (DESIGN §12: a writer that dies
/// does not pin the position forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rows_a_dead_writer_committed_but_never_announced_are_shown() {
    let db = db().await;
    let a = db.instance("a");
    let mut b = db.instance("b");
    let writer = client().await;
    put_all(&writer, (0..20).map(|n| format!("w{n}")), 1).await;
    sync_fully(&writer, &b, Limits::default(), None).await;
    let reader = client().await;
    until("the reader on a gets the first writes", &reader, &a, |d| d.len() == 20).await;

    let (holder, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    holder.batch_execute("BEGIN").await.unwrap();
    holder.execute("SELECT 1 FROM stream_positions WHERE library = $1 AND instance = 'b' FOR NO KEY UPDATE", &[&LIB]).await.unwrap();
    put_all(&writer, (20..25).map(|n| format!("w{n}")), 2).await;
    let before = db.log_len().await;
    let url = b.ws_url();
    let pushing = tokio::spawn(async move {
        let _ = round_url(&writer, &url, Limits::default(), Duration::from_secs(20)).await;
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while db.log_len().await < before + 5 {
        assert!(Instant::now() < deadline, "b's writes never committed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.kill();
    // Only this test's database: other tests on the shared cluster run instances named b too.
    db.sql
        .execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'tidemark-server b' AND datname = current_database()", &[])
        .await
        .unwrap();
    holder.batch_execute("ROLLBACK").await.unwrap();
    pushing.abort();
    let stored = db.last_allocated().await;
    assert_eq!(db.stored_positions().await.get("b").copied(), Some(20), "b never stored its position past its last commit");

    // b goes once it is stale (10 s); nobody writes meanwhile.
    let deadline = Instant::now() + Duration::from_secs(40);
    while persisted(&a) < stored {
        assert!(Instant::now() < deadline, "a never showed b's committed rows: persisted {} of {stored}, positions {}", persisted(&a), a.status(LIB, None)["positions"]);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    until("the reader on a gets b's last writes", &reader, &a, |d| d.len() == 25).await;
    assert!(db.duplicated_ops().await.is_empty(), "an op was stored twice");
}

/// A client of an instance nobody writes to sees a write made through another instance: the
/// idle instance hears of it (NOTIFY, or its periodic re-read) and shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_of_an_idle_instance_sees_another_instances_write() {
    let db = db().await;
    let busy = db.instance("busy");
    let idle = db.instance("idle");
    let reader = client().await;
    let writer = client().await;
    writer.put("docs", doc(json!({"id": "first"}))).await.unwrap();
    sync_fully(&writer, &busy, Limits::default(), None).await;
    until("the first write", &reader, &idle, |d| d.len() == 1).await;
    for n in 0..3 {
        writer.put("docs", doc(json!({"id": format!("later{n}")}))).await.unwrap();
        sync_fully(&writer, &busy, Limits::default(), None).await;
        let t = Instant::now();
        until("the idle instance's client sees the write", &reader, &idle, |d| d.len() == n + 2).await;
        eprintln!("write {n} seen through the idle instance after {:?}", t.elapsed());
    }
    let status = idle.status(LIB, None);
    assert_eq!(status["maxRow"], status["persistedUpTo"], "{status}");
    assert!(status["positions"].as_object().unwrap().contains_key("busy"), "{status}");
}

/// Snapshot pages an instance shares between pulls never hide another instance's write: a
/// client that joins through `a` once a write through `b` is visible there gets it, though
/// `a` kept pages made before the write, which it never saw under way
/// (`DocPages::following_rows`: a page serves only snapshots ending at or below the row
/// shown when it was read).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shared_snapshot_pages_never_hide_another_instances_write() {
    let db = db().await;
    let a = db.instance("a");
    let b = db.instance("b");
    let writer = client().await;
    for i in 0..30 {
        writer.put("docs", doc(json!({"id": format!("d{i:02}"), "n": i}))).await.unwrap();
    }
    // Pages of 10 documents: a joiner's snapshot is several pages, each shared.
    let limits = Limits { per_diff: 10, max_diffs: 100 };
    sync_fully(&writer, &b, limits, None).await;
    for n in 0..3 {
        let written = b.status(LIB, None)["maxRow"].as_i64().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while persisted(&a) < written {
            assert!(Instant::now() < deadline, "instance a never showed row {written}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Two joiners: the first makes the pages, the second is served them.
        for j in 0..2 {
            let joiner = client().await;
            let first = round(&joiner, &a, limits, None).await.unwrap();
            assert!(first.snapshot && !first.capped, "write {n}, joiner {j}: one snapshot round: {first:?}");
            sync_fully(&joiner, &a, limits, None).await;
            assert_eq!(docs(&joiner).await, docs(&writer).await, "write {n}, joiner {j}: the joiner holds every write shown");
        }
        // A change to a document of the first page and a new one on a later page, through b.
        writer.put("docs", doc(json!({"id": "d00", "n": 100 + n}))).await.unwrap();
        writer.put("docs", doc(json!({"id": format!("d25-{n}"), "n": n}))).await.unwrap();
        sync_fully(&writer, &b, limits, None).await;
    }
}

/// Three instances hold a library with rows; a fourth starts and serves it. Nobody's stream
/// position or persisted position moves back, the newcomer starts at the persisted
/// position (not 0), and a client that moves to it keeps its points and gets the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fourth_instance_joins_without_moving_anyone_backwards() {
    let db = db().await;
    let servers: Vec<Server> = ["a", "b", "c"].iter().map(|n| db.instance(n)).collect();
    let mover = client().await;
    for (i, s) in servers.iter().enumerate() {
        let c = client().await;
        put_all(&c, (0..50).map(|n| format!("s{i}-{n}")), 1).await;
        sync_fully(&c, s, Limits::default(), None).await;
    }
    until("the mover has everything", &mover, &servers[0], |d| d.len() == 150).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while servers.iter().any(|s| persisted(s) < 150) {
        assert!(Instant::now() < deadline, "the instances never caught up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let persisted_before: Vec<i64> = servers.iter().map(persisted).collect();
    let positions_before = db.stored_positions().await;
    let mover_point = mover.status().incoming.values().copied().max().unwrap();

    let d = db.instance("d");
    // While d joins and serves, watch everyone's positions.
    let late = client().await;
    put_all(&late, (0..10).map(|n| format!("d{n}")), 1).await;
    sync_fully(&late, &d, Limits::default(), None).await;
    for _ in 0..20 {
        for (s, before) in servers.iter().zip(&persisted_before) {
            assert!(persisted(s) >= *before, "an instance's persisted position moved back");
        }
        let positions = db.stored_positions().await;
        for (instance, row) in &positions_before {
            assert!(positions.get(instance).is_some_and(|now| now >= row), "{instance}'s position moved back: {positions:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let joined_at = db.stored_positions().await["d"];
    assert!(joined_at >= 150, "the newcomer joined at {joined_at}, not at the persisted position");
    assert!(persisted(&d) >= 150);

    until("the mover gets the newcomer's rows through it", &mover, &d, |docs| docs.len() == 160).await;
    let point = mover.status().incoming.values().copied().max().unwrap();
    assert!(point >= mover_point, "the mover's point moved back: {mover_point} → {point}");
    for s in &servers {
        until("every instance serves the newcomer's rows", &client().await, s, |docs| docs.len() == 160).await;
    }
}

/// On PostgreSQL, the server's bookkeeping in peer records is shared by the instances: a
/// db id bound to one user through one instance is refused to another user on another
/// instance, and peer records are pruned to `--max-peers` (by whichever instance prunes
/// first) while every row stays stored once and a pruned client starts over safely.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_share_db_id_owners_and_prune_peer_records() {
    let db = db().await;
    let secret = "s3cret";
    let token = |user: &str| tidemark_server::auth::issue(secret.as_bytes(), &tidemark_server::auth::Claims { library: LIB.into(), user: user.into(), exp: None });
    let start = |name: &str| Server::start(&db.dir.path().join(name), &["--postgres", &db.url, "--instance", name, "--secret", secret, "--max-peers", "5"]);
    let (a, b) = (start("a"), start("b"));
    let first = client().await;
    first.put("docs", doc(json!({"id": "first"}))).await.unwrap();
    sync_fully(&first, &a, Limits::default(), Some(token("alice"))).await;
    let id = first.head().db_id;
    let refused = round(&first, &b, Limits::default(), Some(token("eve"))).await.expect_err("eve cannot use alice's db id");
    assert_eq!(refused.code(), "FORBIDDEN");
    for i in 0..12 {
        let c = client().await;
        c.put("docs", doc(json!({"id": format!("c{i}")}))).await.unwrap();
        let via = if i % 2 == 0 { &a } else { &b };
        sync_fully(&c, via, Limits::default(), Some(token(&format!("user{i}")))).await;
    }
    let peers = |s: &Server| s.status(LIB, Some(&token("alice")))["peers"].as_object().map_or(0, |p| p.len());
    wait_until("the records are pruned to 5", Duration::from_secs(30), async || peers(&a) <= 5).await;
    assert!(a.status(LIB, Some(&token("alice")))["peers"].get(&id).is_none(), "the least recently written went first");
    // Alice's record (with its owner) was pruned: her replica starts over, and gets back
    // its binding on its next connection.
    first.put("docs", doc(json!({"id": "second"}))).await.unwrap();
    sync_fully(&first, &b, Limits::default(), Some(token("alice"))).await;
    assert_eq!(docs(&first).await.len(), 14);
    assert!(db.duplicated_ops().await.is_empty(), "a re-sent row is stored once");
    assert_eq!(round(&first, &a, Limits::default(), Some(token("eve"))).await.expect_err("bound again").code(), "FORBIDDEN");
}

/// A database the server cannot use is refused at start with what PostgreSQL said — the
/// database does not exist, the connection was refused — not just "db error".
#[test]
fn an_unusable_database_is_refused_at_start_saying_why() {
    let cluster = PgCluster::shared();
    let missing = cluster.url("no_such_database");
    let refused = "postgres://postgres@127.0.0.1:1/tidemark".to_string();
    for (url, says) in [(missing, "does not exist"), (refused, "refused")] {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_tidemark-server"))
            .args(["--listen", "127.0.0.1:0", "--data"])
            .arg(dir.path())
            .args(["--postgres", &url, "--instance", "x"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{url}: {stderr}");
        assert!(stderr.to_lowercase().contains(says), "{url}: {stderr}");
    }
}
