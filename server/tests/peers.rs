//! Server-to-server replication with real `tidemark-server` processes (issue 7): servers
//! started with `--peer` on free local ports and temp data directories (killed when the
//! test ends), native clients (`Replica<MemoryStore>` over tokio-tungstenite) writing
//! through them. Every wait is bounded.
//!
//! The topology is a line, 1 → 2 ⇄ 3: server 1 lists 2 as its peer, 2 lists 3, and 3 also
//! lists 2 (so one pair runs rounds in both directions at once).

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;
use tidemark::memory::MemoryStore;
use tidemark::sync::pass::Limits;
use tidemark::store::Store;
use tidemark::Replica;
use tidemark_server::auth;

/// Milliseconds between peer rounds in these tests.
const POLL_MS: &str = "100";

/// The secret the servers of `line` share: servers forward other replicas' ops only to
/// servers that share it (`--peer` needs it), and every client connection is then bound
/// to its own origin.
const SECRET: &str = "line-s3cret";

/// A client's token for `library` on the servers of `line` (or `*`: the listing and
/// the peer status). One user for every client: a db id belongs to the first user who
/// syncs with it.
fn tok(library: &str) -> Option<String> {
    Some(auth::issue(SECRET.as_bytes(), &auth::Claims { library: library.into(), user: "t".into(), exp: None }))
}

/// `tok`, for the HTTP endpoints.
fn bearer(library: &str) -> String {
    tok(library).unwrap()
}

/// How long anything may take to propagate.
const SETTLE: Duration = Duration::from_secs(60);

/// A server with what it takes to restart it the same way (same address, same peers).
struct Node {
    server: Server,
    data: PathBuf,
    listen: String,
    args: Vec<String>,
}

impl Node {
    fn start(data: PathBuf, listen: String, args: Vec<String>) -> Node {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = Server::start_at(&data, &listen, &refs);
        Node { server, data, listen, args }
    }

    fn url(&self) -> String {
        self.server.ws_url()
    }

    fn restart(&mut self) {
        self.server.kill();
        let refs: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.server = Server::start_at(&self.data, &self.listen, &refs);
    }
}

fn ws(addr: &str) -> String {
    format!("ws://{addr}/v1/sync")
}

/// Three servers in a line: 1 → 2 ⇄ 3, each with `extra` flags.
fn line(dir: &Path, extra: &[&str]) -> Vec<Node> {
    let addrs: Vec<String> = (0..3).map(|_| free_addr().to_string()).collect();
    let peers = [vec![ws(&addrs[1])], vec![ws(&addrs[2])], vec![ws(&addrs[1])]];
    (0..3)
        .map(|i| {
            let mut args: Vec<String> = vec!["--secret".into(), SECRET.into(), "--peer-poll-ms".into(), POLL_MS.into()];
            for p in &peers[i] {
                args.extend(["--peer".into(), p.clone()]);
            }
            args.extend(extra.iter().map(|s| s.to_string()));
            Node::start(dir.join(format!("s{}", i + 1)), addrs[i].clone(), args)
        })
        .collect()
}

/// Retries `check` until it passes, failing the test with its last complaint after `SETTLE`.
async fn eventually(what: &str, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + SETTLE;
    loop {
        match check() {
            Ok(()) => return,
            Err(e) if Instant::now() >= deadline => panic!("{what}: not within {} s: {e}", SETTLE.as_secs()),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Whether every server stores the same `want` documents of a library (stamps included).
fn same_everywhere(nodes: &[Node], library: &str, want: usize) -> Result<(), String> {
    let all: Vec<BTreeMap<String, Value>> = nodes.iter().map(|n| n.server.stored(library, "docs")).collect();
    let counts: Vec<usize> = all.iter().map(|d| d.len()).collect();
    if counts.iter().any(|c| *c != want) || all.windows(2).any(|w| w[0] != w[1]) {
        return Err(format!("documents per server {counts:?}, want {want} and identical"));
    }
    Ok(())
}

/// Whether every peer link of every server is connected and caught up (lag 0, no error).
fn caught_up(nodes: &[Node], library: &str) -> Result<(), String> {
    for n in nodes {
        for p in n.server.peers(Some(&bearer("*"))).as_array().unwrap() {
            let l = &p["libraries"][library];
            if p["connected"] != true || l["lag"] != 0 || !l["lastError"].is_null() || l["lastRound"].is_null() {
                return Err(format!("{}: {p}", n.listen));
            }
        }
    }
    Ok(())
}

async fn writer(ids: impl Iterator<Item = String>, n: i64) -> Replica<MemoryStore> {
    let c = client().await;
    put_all(&c, ids, n).await;
    c
}

fn ids(prefix: &str, n: usize) -> impl Iterator<Item = String> + '_ {
    (0..n).map(move |i| format!("{prefix}{i:03}"))
}

/// A fresh client's documents through `server` (what a new device would see).
async fn fresh_docs(server: &Server) -> Vec<serde_json::Map<String, Value>> {
    let c = client().await;
    sync_fully(&c, server, Limits::default(), tok(LIB)).await;
    docs(&c).await
}

/// Writes through clients of every server — including a conflict on one document written
/// on servers 1 and 3, and a delete — converge on every server; a library that only server
/// 3 holds reaches server 1; the status endpoints show each link caught up.
#[tokio::test]
async fn writes_on_every_server_converge_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = line(dir.path(), &[]);
    let limits = Limits::default();
    let mut clients = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let c = writer(ids(&format!("s{}-", i + 1), 40), i as i64).await;
        sync_fully(&c, &n.server, limits, tok(LIB)).await;
        clients.push(c);
    }
    // The same document on 1 and 3 (3 writes later, so its version wins), and a delete on 2
    // of a document written on 1.
    put_all(&clients[0], std::iter::once("shared".to_string()), 1).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    put_all(&clients[2], std::iter::once("shared".to_string()), 3).await;
    sync_fully(&clients[0], &nodes[0].server, limits, tok(LIB)).await;
    sync_fully(&clients[2], &nodes[2].server, limits, tok(LIB)).await;
    eventually("s1-000 reaches server 2", || {
        nodes[1].server.stored(LIB, "docs").contains_key("s1-000").then_some(()).ok_or_else(|| "not yet".into())
    })
    .await;
    let deleter = client().await;
    sync_fully(&deleter, &nodes[1].server, limits, tok(LIB)).await;
    deleter.delete("docs", "s1-000").await.unwrap();
    sync_fully(&deleter, &nodes[1].server, limits, tok(LIB)).await;
    // A library only server 3 holds.
    let other = writer(ids("o", 7), 1).await;
    round_lib(&other, &nodes[2].server, "other", limits, tok("other")).await.unwrap();

    // 3 × 40 + "shared"; the deleted document stays as a tombstone.
    eventually("the servers converge", || same_everywhere(&nodes, LIB, 121)).await;
    eventually("every link catches up", || caught_up(&nodes, LIB)).await;
    eventually("the library of server 3 reaches server 1", || same_everywhere(&nodes, "other", 7)).await;

    let first = fresh_docs(&nodes[0].server).await;
    assert_eq!(first.len(), 120);
    assert!(!first.iter().any(|d| d["id"] == "s1-000"), "the delete made on server 2 holds on server 1");
    assert_eq!(first.iter().find(|d| d["id"] == "shared").unwrap()["n"], 3, "the later write wins everywhere");
    for n in &nodes[1..] {
        assert_eq!(fresh_docs(&n.server).await, first);
    }
    for c in &clients {
        sync_fully(c, &nodes[0].server, limits, tok(LIB)).await;
        assert_eq!(docs(c).await, first);
    }

    // The listing, and the status of server 1's only peer.
    let (code, body) = nodes[0].server.get("/v1/libraries", Some(&bearer("*")));
    assert_eq!((code, serde_json::from_str::<Value>(&body).unwrap()), (200, json!({"libraries": ["lib", "other"]})));
    let peers = nodes[0].server.peers(Some(&bearer("*")));
    let p = &peers.as_array().unwrap()[0];
    assert_eq!((p["url"].as_str().unwrap(), &p["connected"]), (nodes[1].url().as_str(), &json!(true)), "{peers}");
    let l = &p["libraries"][LIB];
    let two = nodes[1].server.status(LIB, Some(&bearer(LIB)));
    assert_eq!(l["peerDbId"], two["dbId"], "{peers}");
    assert_eq!((&l["incoming"], &l["peerMaxRow"], &l["lag"]), (&two["maxRow"], &two["maxRow"], &json!(0)), "{peers}");
    assert_eq!(l["outgoing"], nodes[0].server.status(LIB, Some(&bearer(LIB)))["maxRow"], "{peers}");
    assert!(l["lastRound"].as_u64().is_some() && l["rounds"].as_u64().unwrap() > 0 && l["lastError"].is_null(), "{peers}");
    // Server 2's status lists server 1 like any client, with its points.
    let one_id = nodes[0].server.status(LIB, Some(&bearer(LIB)))["dbId"].as_str().unwrap().to_string();
    assert_eq!(two["peers"][&one_id]["incoming"], nodes[0].server.status(LIB, Some(&bearer(LIB)))["maxRow"]);
}

/// A client that synced with server 1 and then moves to server 3 transfers only what
/// server 3 lacked: it pushes only its writes made after it left, and pulls only the rows
/// written elsewhere since — not everything again.
#[tokio::test]
async fn a_client_moving_to_another_server_transfers_only_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = line(dir.path(), &[]);
    let limits = Limits::default();
    // Some history on servers 2 and 3 first.
    for (i, n) in nodes.iter().enumerate().skip(1) {
        let c = writer(ids(&format!("h{i}-"), 30), 1).await;
        sync_fully(&c, &n.server, limits, tok(LIB)).await;
    }
    let mover = writer(ids("m", 100), 1).await;
    sync_fully(&mover, &nodes[0].server, limits, tok(LIB)).await;
    eventually("everything everywhere", || same_everywhere(&nodes, LIB, 160)).await;
    // Live sync keeps running rounds: until one pulls nothing new, so its push covered
    // every row the mover holds (the rows it pulled are echoes, covered but not sent).
    for _ in 0..10 {
        if round(&mover, &nodes[0].server, limits, tok(LIB)).await.unwrap().received == 0 {
            break;
        }
    }
    // Wait until server 3 knows (through 2, through 1) everything the mover gave server 1,
    // and server 1 knows (through 2) how far server 3's rows go; then the mover's last
    // round with server 1 brings that knowledge home.
    let mover_id = mover.head().db_id;
    let three_id = nodes[2].server.status(LIB, Some(&bearer(LIB)))["dbId"].as_str().unwrap().to_string();
    let mover_max = mover.head().max_row as i64;
    let mut three_max = 0;
    eventually("the checkpoints travel", || {
        three_max = nodes[2].server.max_row(LIB, Some(&bearer(LIB)));
        let at3 = nodes[2].server.status(LIB, Some(&bearer(LIB)))["peers"][&mover_id]["incoming"].as_i64().unwrap_or(-1);
        let at1 = nodes[0].server.status(LIB, Some(&bearer(LIB)))["peers"][&three_id]["incoming"].as_i64().unwrap_or(-1);
        (at3 == mover_max && at1 == three_max as i64).then_some(()).ok_or(format!("server 3 holds the mover to {at3} of {mover_max}; server 1 holds server 3 to {at1} of {three_max}"))
    })
    .await;
    let last = round(&mover, &nodes[0].server, limits, tok(LIB)).await.unwrap();
    assert_eq!((last.sent, last.received), (0, 0));
    let before = mover.head().max_row;

    // The mover is away: 5 offline writes; 20 writes on server 2 and 10 on server 3.
    put_all(&mover, ids("away", 5), 1).await;
    let two = writer(ids("w2-", 20), 1).await;
    sync_fully(&two, &nodes[1].server, limits, tok(LIB)).await;
    let three = writer(ids("w3-", 10), 1).await;
    sync_fully(&three, &nodes[2].server, limits, tok(LIB)).await;
    eventually("the new writes reach server 3", || {
        let n = nodes[2].server.stored(LIB, "docs").len();
        (n == 190).then_some(()).ok_or(format!("{n} documents"))
    })
    .await;

    let moved = round(&mover, &nodes[2].server, limits, tok(LIB)).await.unwrap();
    assert!(!moved.capped && !moved.push.snapshot && !moved.pull.snapshot, "{moved:?}");
    assert_eq!((moved.push.start, moved.sent), (before as i64, 5), "pushes only its 5 offline writes: {moved:?}");
    assert_eq!((moved.pull.start, moved.received), (three_max as i64, 30), "pulls only the 30 rows written since it left: {moved:?}");
    assert_eq!(docs(&mover).await.len(), 195);
    // For contrast: a client with the same documents but no shared history would have
    // pulled everything server 3 holds beyond its own writes.
    assert!(nodes[2].server.max_row(LIB, Some(&bearer(LIB))) > 150);
    eventually("the offline writes spread", || same_everywhere(&nodes, LIB, 195)).await;
    assert_eq!(fresh_docs(&nodes[0].server).await, docs(&mover).await);
}

/// The same move, with no checkpoint to start the pull from: the mover leaves server 1 as
/// soon as its rows are everywhere, and server 3 then runs more passes to server 2 than
/// its session history holds, so the checkpoints the mover learned about server 3 cannot
/// be confirmed. The pull starts from scratch — and still transfers exactly the 30 rows
/// written since (the per-origin marks in the mover's preflight answer show it holds the
/// rest, which reached it through other servers); the push sends its 5 offline writes.
#[tokio::test]
async fn a_client_moving_at_once_transfers_exactly_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = line(dir.path(), &[]);
    let limits = Limits::default();
    for (i, n) in nodes.iter().enumerate().skip(1) {
        let c = writer(ids(&format!("h{i}-"), 30), 1).await;
        sync_fully(&c, &n.server, limits, tok(LIB)).await;
    }
    let mover = writer(ids("m", 100), 1).await;
    sync_fully(&mover, &nodes[0].server, limits, tok(LIB)).await;
    eventually("everything everywhere", || same_everywhere(&nodes, LIB, 160)).await;
    for _ in 0..100 {
        if docs(&mover).await.len() == 160 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        round(&mover, &nodes[0].server, limits, tok(LIB)).await.unwrap();
    }
    assert_eq!(docs(&mover).await.len(), 160);

    put_all(&mover, ids("away", 5), 1).await;
    let two = writer(ids("w2-", 20), 1).await;
    sync_fully(&two, &nodes[1].server, limits, tok(LIB)).await;
    // Ten writes on server 3, one at a time, each passed on to server 2: more passes than
    // server 3's session history holds, so no checkpoint the mover learned about server 3
    // can be confirmed any more.
    let three = client().await;
    for k in 0..10 {
        let id = format!("w3-{k:03}");
        put_all(&three, std::iter::once(id.clone()), 1).await;
        sync_fully(&three, &nodes[2].server, limits, tok(LIB)).await;
        eventually("each write reaches server 2", || nodes[1].server.stored(LIB, "docs").contains_key(&id).then_some(()).ok_or_else(|| "not yet".into())).await;
    }
    eventually("the new writes reach server 3", || {
        let n = nodes[2].server.stored(LIB, "docs").len();
        (n == 190).then_some(()).ok_or(format!("{n} documents"))
    })
    .await;

    let moved = round(&mover, &nodes[2].server, limits, tok(LIB)).await.unwrap();
    eprintln!(
        "moving client: pushed {} rows (push from {}), pulled {} rows (pull from {} of server 3's {})",
        moved.sent,
        moved.push.start,
        moved.received,
        moved.pull.start,
        nodes[2].server.max_row(LIB, Some(&bearer(LIB)))
    );
    assert!(!moved.capped && !moved.push.snapshot && !moved.pull.snapshot, "{moved:?}");
    assert_eq!(moved.pull.start, -1, "no checkpoint to start the pull from");
    assert_eq!((moved.sent, moved.received), (5, 30), "exactly what was missing: {moved:?}");
    assert_eq!(docs(&mover).await.len(), 195);
    eventually("the offline writes spread", || same_everywhere(&nodes, LIB, 195)).await;
}

/// A consistent copy of a running server's library file.
fn backup(node: &Node, to: &Path) {
    let conn = rusqlite::Connection::open(node.data.join(format!("{LIB}.sqlite"))).unwrap();
    conn.execute("VACUUM INTO ?1", [to.to_str().unwrap()]).unwrap();
}

/// Server 2 (in the middle) is restored from an old copy of its SQLite file while its
/// peers ran on: after sync, every row is back everywhere — those written through server 2
/// after the backup included — and nothing is missing for a fresh client.
#[tokio::test]
async fn a_server_restored_from_an_old_copy_loses_nothing_anywhere() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = line(dir.path(), &[]);
    let limits = Limits::default();
    let mut clients = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let c = writer(ids(&format!("a{}-", i + 1), 30), 1).await;
        sync_fully(&c, &n.server, limits, tok(LIB)).await;
        clients.push(c);
    }
    eventually("first convergence", || same_everywhere(&nodes, LIB, 90)).await;
    let saved = dir.path().join("s2-backup.sqlite");
    backup(&nodes[1], &saved);
    let at_backup = nodes[1].server.max_row(LIB, Some(&bearer(LIB)));

    // After the backup, writes through every server — server 2's included — spread.
    for (i, n) in nodes.iter().enumerate() {
        put_all(&clients[i], ids(&format!("b{}-", i + 1), 20), 2).await;
        sync_fully(&clients[i], &n.server, limits, tok(LIB)).await;
    }
    eventually("second convergence", || same_everywhere(&nodes, LIB, 150)).await;
    assert!(nodes[1].server.max_row(LIB, Some(&bearer(LIB))) > at_backup);

    // Restore server 2 while it is down; its peers keep running (and retrying).
    nodes[1].server.kill();
    let file = nodes[1].data.join(format!("{LIB}.sqlite"));
    std::fs::copy(&saved, &file).unwrap();
    for side in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{side}", file.display()));
    }
    put_all(&clients[0], ids("c1-", 10), 3).await;
    sync_fully(&clients[0], &nodes[0].server, limits, tok(LIB)).await;
    nodes[1].restart();
    assert_eq!(nodes[1].server.max_row(LIB, Some(&bearer(LIB))), at_backup);
    // Its peers alone give it back every row it lost — among them the writes its own
    // client made through it after the backup, which it had passed on before the restore.
    eventually("server 2 gets back what it lost from its peers", || same_everywhere(&nodes, LIB, 160)).await;
    // New writes on the restored server reuse row numbers its peers once pulled from it;
    // they reach them all the same.
    put_all(&clients[1], ids("c2-", 10), 3).await;
    let r = round(&clients[1], &nodes[1].server, limits, tok(LIB)).await.unwrap();
    assert!(r.sent >= 10 && !r.capped, "{r:?}");

    eventually("every row is back everywhere", || same_everywhere(&nodes, LIB, 170)).await;
    eventually("every link catches up", || caught_up(&nodes, LIB)).await;
    let all = fresh_docs(&nodes[1].server).await;
    assert_eq!(all.len(), 170, "nothing missing through the restored server");
    for n in [&nodes[0], &nodes[2]] {
        assert_eq!(fresh_docs(&n.server).await, all);
    }
    for c in &clients {
        sync_fully(c, &nodes[1].server, limits, tok(LIB)).await;
        assert_eq!(docs(c).await, all);
    }
}

/// With a shared secret, servers mint their own tokens for each other; the listing and the
/// peer status need a token for `*`; a peer with another secret is refused and says so.
#[tokio::test]
async fn servers_with_a_secret_replicate_with_their_own_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "shared-s3cret";
    let two = Node::start(dir.path().join("two"), free_addr().to_string(), vec!["--secret".into(), secret.into()]);
    let mut args = vec!["--secret".into(), secret.into(), "--peer-poll-ms".into(), POLL_MS.into(), "--peer".into(), two.url()];
    let mut one = Node::start(dir.path().join("one"), free_addr().to_string(), args.clone());
    args[1] = "another-secret".into();
    let stranger = Node::start(dir.path().join("stranger"), free_addr().to_string(), args);
    let token = |library: &str| auth::issue(secret.as_bytes(), &auth::Claims { library: library.into(), user: "t".into(), exp: None });

    let c = writer(ids("x", 12), 1).await;
    sync_fully(&c, &one.server, Limits::default(), Some(token(LIB))).await;
    eventually("replicated with minted tokens", || same_everywhere(std::slice::from_ref(&two), LIB, 12)).await;
    assert_eq!(one.server.stored(LIB, "docs"), two.server.stored(LIB, "docs"));

    assert_eq!(one.server.get("/v1/peers", None).0, 401);
    assert_eq!(one.server.get("/v1/libraries", Some(&token(LIB))).0, 403, "a library token does not list");
    let (code, body) = one.server.get("/v1/libraries", Some(&token("*")));
    assert_eq!((code, body.as_str()), (200, r#"{"libraries":["lib"]}"#));
    let status = one.server.peers(Some(&token("*")));
    assert_eq!(status[0]["libraries"][LIB]["connected"], true, "{status}");

    // The stranger's tokens are refused: nothing of the library leaks to it or from it.
    eventually("the stranger reports the refusal", || {
        let s = stranger.server.peers(Some(&auth::issue(b"another-secret", &auth::Claims { library: "*".into(), user: "t".into(), exp: None })));
        let e = s[0]["lastError"].as_str().unwrap_or_default().to_string();
        (e.contains("401") && s[0]["connected"] == false).then_some(()).ok_or(s.to_string())
    })
    .await;
    assert!(stranger.server.stored(LIB, "docs").is_empty());
    assert_eq!(two.server.max_row(LIB, Some(&token(LIB))), 12);
    // A "*" token cannot open a sync connection.
    let probe = client().await;
    assert!(round_lib(&probe, &two.server, "*", Limits::default(), Some(token("*"))).await.is_err());
    // Peer links (outgoing and incoming) do not keep a server from stopping on SIGTERM.
    let status = one.server.terminate().expect("the server exits on SIGTERM");
    assert!(status.success(), "{status:?}");
}

/// Bad `--peer` values, and `--peer` without a secret, stop the server at start with a
/// clear message.
#[test]
fn bad_peer_addresses_are_refused_at_start() {
    for bad in ["http://127.0.0.1:1/v1/sync", "wss://example.com/v1/sync", "ws://:80/"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidemark-server")).args(["--peer", bad]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("invalid peer"), "{bad}: {}", String::from_utf8_lossy(&out.stderr));
    }
    // A peer without a secret to present could forward nothing: refused, not started.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidemark-server")).args(["--peer", "ws://127.0.0.1:1/v1/sync"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--peer needs --secret"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The peer store's view of a client (its record on server `n`), for debugging failures.
#[allow(dead_code)]
async fn record_of(c: &Replica<MemoryStore>, server_id: &str) -> Option<tidemark::sync::PeerRecord> {
    c.store().peers().await.unwrap().remove(server_id)
}
