//! End-to-end tests of the `tidemark-server` binary: real processes on real ports, native
//! clients (`Replica<MemoryStore>` + the engine's `hello`/`round`) over real WebSockets.
//! Each test starts its own server on a temp data directory and kills it when done.

mod support;

use std::path::Path;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::*;
use tidemark::sync::pass::Limits;
use tidemark::sync::drive;
use tidemark::sync::{Direction, Message};
use tidemark::store::Store;
use tidemark::Write;
use tidemark_server::auth;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

/// Offline writes on two clients, including conflicting ones, a patch and a delete: after
/// syncing through the server both hold byte-identical documents.
#[tokio::test]
async fn two_clients_converge_through_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let a = client().await;
    let b = client().await;
    put_all(&a, (0..30).map(|i| format!("d{i:02}")), 1).await;
    put_all(&b, (15..45).map(|i| format!("d{i:02}")), 2).await;
    a.patch("docs", "d01", json!({"n": 100}).as_object().unwrap().clone()).await.unwrap();
    b.delete("docs", "d40").await.unwrap();
    let limits = Limits::default();
    for _ in 0..2 {
        sync_fully(&a, &server, limits, None).await;
        sync_fully(&b, &server, limits, None).await;
    }
    assert_eq!(docs(&a).await, docs(&b).await);
    assert_eq!(a.store().dump("docs"), b.store().dump("docs"), "identical stored documents, stamps included");
    let all = docs(&a).await;
    assert_eq!(all.len(), 44);
    assert!(all.iter().find(|d| d["id"] == "d01").is_some_and(|d| d["n"] == 100));
    assert!(!all.iter().any(|d| d["id"] == "d40"));
    // The status endpoint knows both clients and their points: each acknowledged all of
    // the server's rows; B synced last, so the server has all of B's rows, and A's up to
    // its last push (A pulled B's rows after it).
    let status = server.status(LIB, None);
    assert_eq!(status["library"], LIB);
    let peers = status["peers"].as_object().unwrap();
    for c in [&a, &b] {
        assert_eq!(peers[&c.head().db_id]["outgoing"], status["maxRow"], "{status}");
    }
    assert_eq!(peers[&b.head().db_id]["incoming"], json!(b.head().max_row), "{status}");
    assert!(peers[&a.head().db_id]["incoming"].as_u64().unwrap() <= a.head().max_row, "{status}");
    assert_eq!(server.get("/v1/libraries/nope/status", None).0, 404);
    assert_eq!(server.get("/v1/libraries/bad.name/status", None).0, 400);
}

/// 2,500 writes with perDiff 100 and maxDiffs 3 take several capped rounds, and every one
/// of them arrives.
#[tokio::test]
async fn capped_rounds_deliver_2500_writes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--per-diff", "100", "--max-diffs", "3"]);
    let limits = Limits { per_diff: 100, max_diffs: 3 };
    // The server first holds another client's 2,500 rows, and the writer pulls them, so
    // its 2,500 new writes are not more than half of its rows: they travel as diffs
    // (seed 000's rule on the gap; a fresh writer would push them as one snapshot).
    let other = client().await;
    put_all(&other, (0..2_500).map(|i| format!("o{i:04}")), 1).await;
    sync_fully(&other, &server, limits, None).await;
    assert_eq!(server.max_row(LIB, None), 2_500);

    let writer = client().await;
    sync_fully(&writer, &server, limits, None).await;
    put_all(&writer, (0..2_500).map(|i| format!("w{i:04}")), 2).await;
    // One long-lived connection, many rounds (the way live sync runs).
    let (mut t, id) = hello(&writer, &server, None).await.unwrap();
    let mut reports = Vec::new();
    loop {
        let r = drive::round(&writer, &mut t, &id, limits, &mut |_, _| {}).await.unwrap();
        assert!(!r.push.snapshot && !r.pull.snapshot);
        let done = !r.capped;
        reports.push(r);
        if done || reports.len() > 100 {
            break;
        }
    }
    // 300 rows per pass: the first eight rounds each push three full batches and end
    // capped; the ninth sends the last 100. Rows the writer pulled meanwhile are covered
    // but neither sent back nor counted against perDiff.
    let sent: Vec<u64> = reports.iter().map(|r| r.sent).collect();
    assert_eq!(reports.len(), 9, "{sent:?}");
    assert!(reports[..8].iter().all(|r| r.capped && r.push.capped && r.push.batches == 3 && r.sent == 300), "{sent:?}");
    assert_eq!(reports[8].sent, 100, "{sent:?}");
    assert_eq!(sent.iter().sum::<u64>(), 2_500);
    assert!(!reports.last().unwrap().capped);
    assert_eq!(server.max_row(LIB, None), 5_000);
    assert_eq!(docs(&writer).await.len(), 5_000);
    // The first client catches up too, and a fresh one gets everything.
    sync_fully(&other, &server, limits, None).await;
    assert_eq!(docs(&other).await, docs(&writer).await);
    let fresh = client().await;
    sync_fully(&fresh, &server, limits, None).await;
    assert_eq!(docs(&fresh).await.len(), 5_000);
}

/// SIGKILL between rounds and in the middle of a pass: after each restart the next pass
/// resumes from the durable point; no row is lost and none is stored twice.
#[tokio::test]
async fn sigkill_mid_sync_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let limits = Limits { per_diff: 100, max_diffs: 3 };
    let mut server = Server::start(&data, &[]);
    let seed = client().await;
    put_all(&seed, (0..1_000).map(|i| format!("s{i:04}")), 1).await;
    sync_fully(&seed, &server, limits, None).await;
    assert_eq!(server.max_row(LIB, None), 1_000);

    // The writer holds the seed's 1,000 rows first (so its own 1,000 go as diffs); its
    // rows 1..=1000 are those, covered but never sent back.
    let a = client().await;
    sync_fully(&a, &server, limits, None).await;
    put_all(&a, (0..1_000).map(|i| format!("a{i:04}")), 2).await;
    let first = round(&a, &server, limits, None).await.unwrap();
    assert!(first.push.capped && !first.push.snapshot);
    assert_eq!((first.push.end, first.sent), (1_300, 300));
    // Killed between rounds.
    server.kill();
    let mut server = Server::start(&data, &[]);
    assert_eq!(server.max_row(LIB, None), 1_300);

    // Killed in the middle of a push pass, right after its second batch was acknowledged.
    let (mut t, id) = hello(&a, &server, None).await.unwrap();
    let mut acked = 0;
    let cut = drive::round(&a, &mut t, &id, limits, &mut |dir, p| {
        if dir == Direction::Push && p.done >= 200 && server.is_running() {
            acked = p.done;
            server.kill();
        }
    })
    .await;
    assert!(cut.is_err(), "the round cannot finish without the server");
    assert_eq!(acked, 200);
    drop(server);
    let server = Server::start(&data, &[]);
    assert_eq!(server.max_row(LIB, None), 1_500, "both acknowledged batches are durable, nothing more");

    let resumed = round(&a, &server, limits, None).await.unwrap();
    assert_eq!(resumed.push.start, 1_500, "resumes from the stored point");
    sync_fully(&a, &server, limits, None).await;
    // Exactly the 2,000 distinct rows: none lost, none applied twice.
    assert_eq!(server.max_row(LIB, None), 2_000);
    let check = client().await;
    sync_fully(&check, &server, limits, None).await;
    assert_eq!(docs(&check).await.len(), 2_000);
    assert_eq!(docs(&check).await, docs(&a).await);
}

/// A consistent copy of a live library file, as a backup tool would take it.
fn backup(data: &Path, to: &Path) {
    let conn = rusqlite::Connection::open(data.join(format!("{LIB}.sqlite"))).unwrap();
    conn.execute("VACUUM INTO ?1", [to.to_str().unwrap()]).unwrap();
}

/// The library file is replaced by an older backup while the server is down: the clients'
/// next rounds give it back every row it lost, and no client skips the server's new rows.
#[tokio::test]
async fn a_server_restored_from_a_backup_gets_back_what_it_lost() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let saved = dir.path().join("backup.sqlite");
    let limits = Limits::default();
    let mut server = Server::start(&data, &[]);
    let a = client().await;
    let b = client().await;
    put_all(&a, (0..50).map(|i| format!("a{i:02}")), 1).await;
    sync_fully(&a, &server, limits, None).await;
    sync_fully(&b, &server, limits, None).await;
    backup(&data, &saved);
    let at_backup = server.max_row(LIB, None);
    assert_eq!(at_backup, 50);

    // After the backup: more writes from both clients reach the server (and each other).
    put_all(&a, (50..100).map(|i| format!("a{i:02}")), 1).await;
    sync_fully(&a, &server, limits, None).await;
    put_all(&b, (0..30).map(|i| format!("b{i:02}")), 1).await;
    sync_fully(&b, &server, limits, None).await;
    sync_fully(&a, &server, limits, None).await;
    assert_eq!(server.max_row(LIB, None), 130);
    let b_had = b.store().peers().await.unwrap()[&server.status(LIB, None)["dbId"].as_str().unwrap().to_string()].incoming;

    // Restore while stopped: the backup replaces the file, the stale WAL goes with it.
    server.kill();
    let file = data.join(format!("{LIB}.sqlite"));
    std::fs::copy(&saved, &file).unwrap();
    for side in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{side}", file.display()));
    }
    let server = Server::start(&data, &[]);
    assert_eq!(server.max_row(LIB, None), at_backup);

    // A new write lands on the restored server, reusing row numbers B once pulled.
    let c = client().await;
    put_all(&c, (0..5).map(|i| format!("c{i}")), 1).await;
    sync_fully(&c, &server, limits, None).await;

    // A pushes from the last point the backup remembers, not from where the lost copy was.
    let ra = round(&a, &server, limits, None).await.unwrap();
    assert_eq!(ra.push.start, 50, "A is not fast-forwarded past the rows the server lost");
    let rb = round(&b, &server, limits, None).await.unwrap();
    assert!(rb.pull.start <= at_backup as i64, "B is not fast-forwarded: pulls from {} (it once had {b_had})", rb.pull.start);
    for _ in 0..2 {
        for r in [&a, &b, &c] {
            sync_fully(r, &server, limits, None).await;
        }
    }
    let fresh = client().await;
    sync_fully(&fresh, &server, limits, None).await;
    let all = docs(&fresh).await;
    assert_eq!(all.len(), 135, "every row the server lost came back");
    for r in [&a, &b, &c] {
        assert_eq!(docs(r).await, all);
    }
}

/// A client that closes the connection gets the closing handshake answered (RFC 6455 §5.5.1:
/// a close frame back, with its code), so its close is clean — a browser reports
/// `wasClean` and 1000, not 1006 — after a hello and mid-way through a session alike.
#[tokio::test]
async fn a_client_close_is_answered_with_a_close_frame() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    for greet in [false, true] {
        let mut ws = raw_ws(&server).await;
        if greet {
            ws.send(raw_hello("closer", None)).await.unwrap();
            let answer = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next()).await.expect("an answer to hello");
            assert!(matches!(answer, Some(Ok(Frame::Text(_)))), "{answer:?}");
        }
        ws.send(Frame::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "bye".into() }))).await.unwrap();
        let mut echoed = None;
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while let Some(Ok(f)) = ws.next().await {
                if let Frame::Close(c) = f {
                    echoed = Some(c.map(|c| c.code));
                }
            }
        })
        .await;
        assert_eq!(echoed, Some(Some(CloseCode::Normal)), "after hello: {greet}");
    }
}

/// Reads what the server answers until it closes: the error's code, if it sent one.
async fn refusal(ws: &mut Ws) -> Option<String> {
    let mut code = None;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while let Some(Ok(f)) = ws.next().await {
            match f {
                Frame::Text(t) => {
                    if let Ok(Message::Error { code: c, .. }) = Message::decode(t.as_str()) {
                        code.get_or_insert(c);
                    }
                }
                Frame::Close(_) => break,
                _ => {}
            }
        }
    })
    .await;
    code
}

/// Sends `frames` on a fresh connection and returns the error code the server answers.
async fn send_raw(server: &Server, frames: Vec<Frame>) -> Option<String> {
    let mut ws = raw_ws(server).await;
    for f in frames {
        if ws.send(f).await.is_err() {
            break;
        }
    }
    refusal(&mut ws).await
}

fn text(v: Value) -> Frame {
    Frame::Text(v.to_string().into())
}

fn hello_frame(library: &str, token: Option<&str>) -> Frame {
    text(json!({"v": 1, "type": "hello", "library": library, "token": token, "dbId": "feedfacecafe0001", "schemaVersion": 1}))
}

fn row(origin: &str, n: u64) -> Value {
    json!({"row": n, "op": {"origin": origin, "originRow": n, "ts": format!("{:011x}00000{origin}", 1_000 + n), "schemaVersion": 1,
        "collection": "docs", "id": format!("evil{n}"), "kind": "put", "fields": {"n": 1}}})
}

/// Hostile and broken input: each gets an error reply (or a clean close), the server stays
/// up, and nothing is stored.
#[tokio::test]
async fn bad_input_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "s3cret";
    let server = Server::start(&dir.path().join("data"), &["--secret", secret, "--max-frame", "65536", "--hello-timeout", "1"]);
    // A token from the CLI, as an operator would mint it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidemark-server"))
        .args(["token", "--secret", secret, "--library", LIB, "--user", "alice"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let good = client().await;
    put_all(&good, (0..10).map(|i| format!("g{i}")), 1).await;
    sync_fully(&good, &server, Limits::default(), Some(token.clone())).await;
    let max = server.max_row(LIB, Some(&token));
    assert_eq!(max, 10);
    assert_eq!(server.get(&format!("/v1/libraries/{LIB}/status"), None).0, 401, "status needs a token too");

    let pre = |more: Vec<Frame>| {
        let mut v = vec![hello_frame(LIB, Some(&token))];
        v.extend(more);
        v
    };
    let start = |dir: &str| text(json!({"v": 1, "type": "start", "session": "sess1", "direction": dir, "perDiff": 10, "maxDiffs": 3}));
    let preflight = text(json!({"v": 1, "type": "preflight", "session": "sess1", "dbId": "feedfacecafe0001", "maxRow": 5, "schemaVersion": 1, "sessions": []}));
    let cases: Vec<(&str, Vec<Frame>, Option<&str>)> = vec![
        ("garbage text", vec![Frame::Text("\u{0}garbage{{{".into())], Some("SYNC_PROTOCOL")),
        ("binary frame", vec![Frame::Binary(vec![0xff, 0x00, 0x13, 0x37].into())], Some("SYNC_PROTOCOL")),
        ("wrong JSON", vec![text(json!({"v": 1, "type": "hello", "library": LIB}))], Some("SYNC_PROTOCOL")),
        ("not an object", vec![text(json!([1, 2, 3]))], Some("SYNC_PROTOCOL")),
        ("unknown type", vec![text(json!({"v": 1, "type": "launch", "what": "missiles"}))], Some("SYNC_PROTOCOL")),
        ("wrong version", vec![text(json!({"v": 2, "type": "hello", "library": LIB, "dbId": "x1", "schemaVersion": 1}))], Some("SYNC_PROTOCOL")),
        ("huge frame", vec![Frame::Text("x".repeat(200_000).into())], Some("FRAME_TOO_LARGE")),
        ("wrong library", vec![hello_frame("../etc/passwd", Some(&token))], Some("BAD_LIBRARY")),
        ("no token", vec![hello_frame(LIB, None)], Some("UNAUTHORIZED")),
        ("forged token", vec![hello_frame(LIB, Some(&auth::issue(b"guess", &auth::Claims { library: LIB.into(), user: "eve".into(), exp: None })))], Some("UNAUTHORIZED")),
        ("garbage token", vec![hello_frame(LIB, Some("tm1.abc.def"))], Some("UNAUTHORIZED")),
        ("other library's token", vec![hello_frame(LIB, Some(&auth::issue(secret.as_bytes(), &auth::Claims { library: "other".into(), user: "eve".into(), exp: None })))], Some("FORBIDDEN")),
        ("expired token", vec![hello_frame(LIB, Some(&auth::issue(secret.as_bytes(), &auth::Claims { library: LIB.into(), user: "bob".into(), exp: Some(1) })))], Some("SYNC_TOKEN_EXPIRED")),
        ("batch before hello", vec![text(json!({"v": 1, "type": "batch", "session": "s", "after": -1, "covers": 1, "rows": [row("feedfacecafe0001", 1)]}))], Some("SYNC_PROTOCOL")),
        ("batch before start", pre(vec![text(json!({"v": 1, "type": "batch", "session": "sess1", "after": -1, "covers": 1, "rows": [row("feedfacecafe0001", 1)]}))]), Some("SYNC_PROTOCOL")),
        ("batch before preflight", pre(vec![start("push"), text(json!({"v": 1, "type": "batch", "session": "sess1", "after": -1, "covers": 1, "rows": [row("feedfacecafe0001", 1)]}))]), Some("SYNC_PROTOCOL")),
        ("second hello", pre(vec![hello_frame(LIB, Some(&token))]), Some("SYNC_PROTOCOL")),
        ("preflight from another db", pre(vec![start("push"), text(json!({"v": 1, "type": "preflight", "session": "sess1", "dbId": "someoneelse", "maxRow": 5, "schemaVersion": 1, "sessions": []}))]), Some("SYNC_PROTOCOL")),
        ("rows outside the batch", pre(vec![start("push"), preflight.clone(), text(json!({"v": 1, "type": "begin", "session": "sess1", "start": -1, "snapshot": false})),
            text(json!({"v": 1, "type": "batch", "session": "sess1", "after": -1, "covers": 1, "rows": [row("feedfacecafe0001", 5)]}))]), Some("SYNC_PROTOCOL")),
        ("bad op in a batch", pre(vec![start("push"), preflight.clone(), text(json!({"v": 1, "type": "begin", "session": "sess1", "start": -1, "snapshot": false})),
            text(json!({"v": 1, "type": "batch", "session": "sess1", "after": -1, "covers": 1, "rows": [{"row": 1, "op": {"origin": "", "originRow": 1, "ts": "0000000000100000x", "schemaVersion": 1, "collection": "docs", "id": "e", "kind": "put"}}]}))]), Some("SYNC_PROTOCOL")),
        ("snapshot stamp at a bad path", pre(vec![start("push"), preflight.clone(), text(json!({"v": 1, "type": "begin", "session": "sess1", "start": -1, "snapshot": true})),
            text(json!({"v": 1, "type": "snapshot", "session": "sess1", "docs": [{"c": "docs", "id": "e", "d": {"a": 1}, "s": {"a..b": "0000000000100000x"}, "v": 1}]}))]), Some("SYNC_PROTOCOL")),
        ("begin past the agreed point", pre(vec![start("push"), preflight.clone(), text(json!({"v": 1, "type": "begin", "session": "sess1", "start": 4, "snapshot": false}))]), Some("SYNC_PROTOCOL")),
        ("absurd numbers", pre(vec![start("push"), text(json!({"v": 1, "type": "preflight", "session": "sess1", "dbId": "feedfacecafe0001", "maxRow": u64::MAX, "schemaVersion": 1, "sessions": []})),
            text(json!({"v": 1, "type": "begin", "session": "sess1", "start": -1, "snapshot": false})),
            text(json!({"v": 1, "type": "batch", "session": "sess1", "after": -1, "covers": i64::MAX, "rows": []})),
            text(json!({"v": 1, "type": "batch", "session": "sess1", "after": -5, "covers": i64::MIN, "rows": []}))]), Some("SYNC_PROTOCOL")),
        ("bad session id", pre(vec![text(json!({"v": 1, "type": "start", "session": "x".repeat(500), "direction": "pull", "perDiff": 0, "maxDiffs": 0}))]), Some("SYNC_PROTOCOL")),
        ("silence", vec![], Some("TIMEOUT")),
    ];
    for (name, frames, want) in cases {
        let got = send_raw(&server, frames).await;
        assert_eq!(got.as_deref(), want, "{name}: wrong reply");
        assert!(server.healthy(), "{name}: the server must stay up");
        assert_eq!(server.max_row(LIB, Some(&token)), max, "{name}: nothing may be stored");
    }
    // Plain garbage on the TCP port, and a non-WebSocket request to the endpoint.
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(server.addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        let _ = s.write_all(b"\x16\x03\x01\x02\x00garbage\r\n\r\n");
        let _ = s.read(&mut [0u8; 256]);
    }
    assert_eq!(server.get("/v1/sync", None).0 / 100, 4);
    // No library was created by any of it, and a well-behaved client still syncs.
    assert_eq!(server.get("/v1/libraries/other/status", Some(&auth::issue(secret.as_bytes(), &auth::Claims { library: "other".into(), user: "x".into(), exp: None }))).0, 404);
    let later = client().await;
    later.write(vec![Write::Put { collection: "docs".into(), doc: json!({"id": "late", "n": 1}).as_object().unwrap().clone() }]).await.unwrap();
    sync_fully(&later, &server, Limits::default(), Some(token.clone())).await;
    assert_eq!(docs(&later).await.len(), 11);
    assert_eq!(server.max_row(LIB, Some(&token)), 11);
}

/// Many clients at once on one library: commits serialize, nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_clients_on_one_library() {
    let dir = tempfile::tempdir().unwrap();
    let server = std::sync::Arc::new(Server::start(&dir.path().join("data"), &["--per-diff", "50", "--max-diffs", "2"]));
    let mut tasks = Vec::new();
    for k in 0..6 {
        let server = server.clone();
        tasks.push(tokio::spawn(async move {
            let c = client().await;
            put_all(&c, (0..200).map(|i| format!("k{k}-{i:03}")), k).await;
            sync_fully(&c, &server, Limits { per_diff: 50, max_diffs: 2 }, None).await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(server.max_row(LIB, None), 1_200);
    let check = client().await;
    sync_fully(&check, &server, Limits::default(), None).await;
    assert_eq!(docs(&check).await.len(), 1_200);
}

/// The demo page and the package are served as files — the package from the `js`
/// directory beside `--www` when `--pkg` is not given, wherever the server was started
/// from; `/healthz` answers; SIGTERM stops the server promptly even with a sync connection
/// open.
#[tokio::test]
async fn serves_files_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (www, pkg) = (dir.path().join("www"), dir.path().join("js"));
    std::fs::create_dir_all(pkg.join("pkg")).unwrap();
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "<!doctype html><title>demo</title>").unwrap();
    std::fs::write(pkg.join("index.js"), "export const x = 1;").unwrap();
    std::fs::write(pkg.join("pkg/tidemark_bg.wasm"), b"\0asm").unwrap();
    let mut server = Server::start(&dir.path().join("data"), &["--www", www.to_str().unwrap()]);
    assert!(server.healthy());
    let (code, body) = server.get("/", None);
    assert_eq!((code, body.contains("<title>demo</title>")), (200, true));
    assert_eq!(server.get("/js/index.js", None), (200, "export const x = 1;".to_string()));
    assert_eq!(server.get("/js/pkg/tidemark_bg.wasm", None).0, 200);
    assert_eq!(server.get("/missing.html", None).0, 404);
    assert_eq!(server.get("/js/../../etc/passwd", None).0 / 100, 4);
    // An open sync connection does not keep the server from stopping.
    let c = client().await;
    let (_t, _) = hello(&c, &server, None).await.unwrap();
    let status = server.terminate().expect("the server exits on SIGTERM");
    assert!(status.success(), "{status:?}");
}

/// A transport that notes the kind of every message it receives.
struct Recording<'a> {
    inner: &'a mut Client,
    kinds: Vec<&'static str>,
}

impl tidemark::sync::Transport for Recording<'_> {
    async fn send(&mut self, msg: &Message) -> Result<(), tidemark::error::SyncError> {
        self.inner.send(msg).await
    }

    async fn recv(&mut self) -> Result<Message, tidemark::error::SyncError> {
        let msg = self.inner.recv().await?;
        self.kinds.push(msg.kind());
        Ok(msg)
    }
}

/// A client whose pull waits for the server's turn is not poked while it waits: rows land
/// meanwhile, but the pull it is waiting to run takes them (with thousands of clients
/// queued, every commit poked every one of them). Its first message is the pull's
/// preflight, and after that pull, which reached past the rows, no poke follows either.
#[tokio::test]
async fn a_pull_waiting_its_turn_is_not_poked() {
    use tidemark::sync::Transport as _;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--pulls-at-once", "1"]);
    let limits = Limits { per_diff: 100, max_diffs: 10 };
    let start = |direction| Message::Start { session: tidemark::peer::new_session(), direction, per_diff: 100, max_diffs: 10 };
    // The holder takes the only place and keeps it (it does not answer the preflight).
    let holder = client().await;
    let (mut h, _) = hello(&holder, &server, None).await.unwrap();
    h.send(&start(Direction::Pull)).await.unwrap();
    assert_eq!(h.recv().await.unwrap().kind(), "preflight");
    // The waiter asks for a pull and waits for the place.
    let waiter = client().await;
    let (mut w, _) = hello(&waiter, &server, None).await.unwrap();
    let pull = start(Direction::Pull);
    w.send(&pull).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // Meanwhile another client pushes twice: two commits land.
    let pusher = client().await;
    let (mut p, server_id) = hello(&pusher, &server, None).await.unwrap();
    for i in 0..2 {
        put_all(&pusher, std::iter::once(format!("p{i}")), i).await;
        let push = start(Direction::Push);
        let Message::Start { session, .. } = &push else { unreachable!() };
        let session = session.clone();
        p.send(&push).await.unwrap();
        drive::send(&pusher, &mut p, &server_id, &session, limits, &mut |_| {}).await.unwrap();
    }
    assert_eq!(server.max_row(LIB, None), 2, "both rows landed while the pull waited");
    // The holder goes away and its place goes to the waiter, whose pull runs: the first
    // message it hears is the pull's preflight, and the pull takes both rows.
    drop(h);
    let Message::Start { session, .. } = &pull else { unreachable!() };
    let mut heard = Recording { inner: &mut w, kinds: Vec::new() };
    let mut progress = |_| {};
    let pull = drive::receive(&waiter, &mut heard, &server_id, session, &mut progress);
    tokio::time::timeout(std::time::Duration::from_secs(10), pull).await.expect("the waiter's turn came").unwrap();
    assert_eq!(heard.kinds.first().copied(), Some("preflight"), "no poke before the pull it waited for: {:?}", heard.kinds);
    assert!(!heard.kinds.contains(&"poke"), "{:?}", heard.kinds);
    let ids: Vec<String> = docs(&waiter).await.iter().map(|d| d["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids, ["p0", "p1"], "the pull took both rows");
    let after = tokio::time::timeout(std::time::Duration::from_millis(500), w.recv()).await;
    assert!(after.is_err(), "no poke for rows the pull already took: {after:?}");
}

/// With one place for pull turns (`--pulls-at-once 1`), 40 clients syncing at once in small
/// batches all wait their turns and converge: a turn cut short by a poke while it waits
/// keeps its message and its place in the queue, and nothing is lost or stored twice.
#[tokio::test]
async fn pulls_waiting_their_turn_all_converge() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--pulls-at-once", "1", "--per-diff", "5"]);
    let limits = Limits { per_diff: 5, max_diffs: 3 };
    let mut clients = Vec::new();
    for i in 0..40 {
        let c = client().await;
        put_all(&c, (0..3).map(|j| format!("c{i:02}-{j}")), i).await;
        clients.push(c);
    }
    // Twice: the second time every client pulls what the others pushed after its pull.
    for _ in 0..2 {
        let rounds = clients.iter().map(|c| async { sync_fully(c, &server, limits, None).await });
        futures::future::join_all(rounds).await;
    }
    assert_eq!(server.max_row(LIB, None), 120, "each write stored once");
    for c in &clients {
        let ids: Vec<String> = docs(c).await.iter().map(|d| d["id"].as_str().unwrap().to_string()).collect();
        assert_eq!(ids.len(), 120);
    }
}
