//! Hostile peers against the real `tidemark-server` binary (issue 13, DESIGN §5 "Bounded
//! metadata and input", "Clocks", "Origins are bound to identity"): each attack is sent as
//! raw protocol frames over a real WebSocket, must be refused with a protocol error, must
//! leave the server running and healthy, and must store nothing — and honest clients keep
//! syncing (a new replica can still join) afterwards.

mod support;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::*;
use tidemark::clock::{Stamp, MAX_WALL};
use tidemark::limits;
use tidemark::sync::pass::Limits;
use tidemark::sync::Message;
use tidemark_testkit::sim::rng::Rng;
use tokio_tungstenite::tungstenite::Message as Frame;

/// The raw client's db id.
const ME: &str = "feedfacecafe0001";

fn text(v: Value) -> Frame {
    Frame::Text(v.to_string().into())
}

/// A stamp at `wall` written by `node`.
fn ts(wall: u64, node: &str) -> String {
    Stamp { version: 1, wall, counter: 0, node: node.into() }.encode()
}

/// A row of the raw client's log.
fn row(n: u64, id: &str, kind: &str, fields: Option<Value>, wall: u64) -> Value {
    let mut op = json!({"origin": ME, "originRow": n, "ts": ts(wall, ME), "schemaVersion": 1, "collection": "docs", "id": id, "kind": kind});
    if let Some(f) = fields {
        op["fields"] = f;
    }
    json!({"row": n, "op": op})
}

/// What the server said to a push.
#[derive(Debug, PartialEq)]
enum Answer {
    /// The batch was acknowledged.
    Acked,
    /// Refused with this code.
    Refused(String),
    /// Neither (the connection ended without a word).
    Nothing,
}

/// Pushes `rows` as one batch on a fresh connection (hello, start, preflight, begin,
/// batch) and reads the answer.
async fn push(server: &Server, rows: Vec<Value>) -> Answer {
    let covers = rows.iter().filter_map(|r| r["row"].as_u64()).max().unwrap_or(1);
    let batch = json!({"v": 1, "type": "batch", "session": "sess1", "after": -1, "covers": covers, "rows": rows}).to_string();
    push_frame(server, covers, batch).await
}

/// Like `push`, with the batch frame given as text (frames no `Value` can build).
async fn push_frame(server: &Server, max_row: u64, batch: String) -> Answer {
    let mut ws = raw_ws(server).await;
    let frames = vec![
        text(json!({"v": 1, "type": "hello", "library": LIB, "dbId": ME, "schemaVersion": 1})),
        text(json!({"v": 1, "type": "start", "session": "sess1", "direction": "push", "perDiff": 1000, "maxDiffs": 10})),
        text(json!({"v": 1, "type": "preflight", "session": "sess1", "dbId": ME, "maxRow": max_row, "schemaVersion": 1, "sessions": []})),
        text(json!({"v": 1, "type": "begin", "session": "sess1", "start": -1, "snapshot": false})),
        Frame::Text(batch.into()),
    ];
    for f in frames {
        if ws.send(f).await.is_err() {
            break;
        }
    }
    answer(&mut ws).await
}

async fn answer(ws: &mut Ws) -> Answer {
    let got = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        while let Some(Ok(f)) = ws.next().await {
            match f {
                Frame::Text(t) => match Message::decode(t.as_str()) {
                    Ok(Message::Ack { .. }) => return Answer::Acked,
                    Ok(Message::Error { code, .. }) => return Answer::Refused(code),
                    _ => {}
                },
                Frame::Close(_) => break,
                _ => {}
            }
        }
        Answer::Nothing
    })
    .await;
    let _ = ws.close(None).await;
    got.unwrap_or(Answer::Nothing)
}

fn refused() -> Answer {
    Answer::Refused("SYNC_PROTOCOL".into())
}

/// A fresh replica joins (pulls everything) and sees exactly `ids`.
async fn joiner_sees(server: &Server, ids: &[&str]) {
    let fresh = client().await;
    sync_fully(&fresh, server, Limits::default(), None).await;
    let got: Vec<String> = docs(&fresh).await.iter().map(|d| d["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(got, ids, "a new replica joins and reads every stored document");
}

/// Deep dotted paths, deep documents, huge ids and collection names: refused before
/// anything is stored; the 10,000-segment path (which once overflowed the server's stack)
/// leaves the server running; the library stays readable and joinable.
#[tokio::test]
async fn deep_paths_deep_documents_and_huge_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(&dir.path().join("data"), &[]);
    let now = now_ms();
    // An honest document to patch.
    assert_eq!(push(&server, vec![row(1, "a", "put", Some(json!({"id": "a", "n": 1})), now)]).await, Answer::Acked);
    let before = server.stored(LIB, "docs");
    let max = server.max_row(LIB, None);

    let path = |segments: usize| vec!["p"; segments].join(".");
    let mut nested = json!(1);
    for _ in 0..100 {
        nested = json!({ "x": nested });
    }
    let cases: Vec<(&str, Value)> = vec![
        ("127-segment patch path", row(2, "a", "patch", Some(json!({ (path(127)): 1 })), now)),
        ("33-segment patch path", row(2, "a", "patch", Some(json!({ (path(limits::MAX_PATH_SEGMENTS + 1)): 1 })), now)),
        ("32-segment path with a deep value", row(2, "a", "patch", Some(json!({ (path(32)): nested["x"]["x"]["x"] })), now)),
        ("100-deep put", row(2, "b", "put", Some(json!({"id": "b", "deep": nested})), now)),
        ("1 MB id", row(2, &"i".repeat(1 << 20), "delete", None, now)),
        ("long collection", {
            let mut r = row(2, "c", "delete", None, now);
            r["op"]["collection"] = json!("c".repeat(limits::MAX_COLLECTION_BYTES + 1));
            r
        }),
    ];
    for (what, r) in cases {
        assert_eq!(push(&server, vec![r]).await, refused(), "{what}");
        assert!(server.is_running() && server.healthy(), "{what}: the server is up");
    }
    // 10,000 segments in one ~20 KB frame: refused, and the server is still running.
    let huge = format!(
        r#"{{"v":1,"type":"batch","session":"sess1","after":-1,"covers":2,"rows":[{{"row":2,"op":{{"origin":"{ME}","originRow":2,"ts":"{}","schemaVersion":1,"collection":"docs","id":"a","kind":"patch","fields":{{"{}":1}}}}}}]}}"#,
        ts(now, ME),
        path(10_000)
    );
    for _ in 0..3 {
        assert_eq!(push_frame(&server, 2, huge.clone()).await, refused(), "10,000-segment path");
    }
    assert!(server.is_running() && server.healthy(), "the server survived the 10,000-segment path");
    assert_eq!(server.stored(LIB, "docs"), before, "nothing was stored");
    assert_eq!(server.max_row(LIB, None), max);
    // The limit itself is fine: a 32-segment path is stored and reads back everywhere.
    assert_eq!(push(&server, vec![row(2, "a", "patch", Some(json!({ (path(32)): 7 })), now)]).await, Answer::Acked);
    joiner_sees(&server, &["a"]).await;
    assert!(server.terminate().is_some());
}

/// A stamp further ahead of the server's clock than `maxClockSkew` is refused before
/// anything is stored (the largest encodable wall time among them); one within it is
/// accepted; `--max-clock-skew` narrows the window. Honest writes after the attempt win.
#[tokio::test]
async fn far_future_stamps_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--max-clock-skew", "3600"]);
    let now = now_ms();
    let before = server.stored(LIB, "docs");
    for (what, wall) in [("the end of time", MAX_WALL), ("two hours ahead", now + 2 * 3_600_000), ("a year ahead", now + 365 * 86_400_000)] {
        let put = row(1, "x", "put", Some(json!({"id": "x", "n": 666})), wall);
        assert_eq!(push(&server, vec![put]).await, refused(), "{what}");
    }
    assert_eq!(server.stored(LIB, "docs"), before, "nothing was stored");
    assert_eq!(server.max_row(LIB, None), 0);
    // Within the window (ten minutes ahead): accepted.
    assert_eq!(push(&server, vec![row(1, "x", "put", Some(json!({"id": "x", "n": 1})), now + 600_000)]).await, Answer::Acked);

    // An honest client's later write, and a delete, win over nothing forged.
    let honest = client().await;
    sync_fully(&honest, &server, Limits::default(), None).await;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    honest.patch("docs", "x", json!({"n": 2}).as_object().unwrap().clone()).await.unwrap();
    sync_fully(&honest, &server, Limits::default(), None).await;
    let fresh = client().await;
    sync_fully(&fresh, &server, Limits::default(), None).await;
    assert_eq!(docs(&fresh).await, vec![json!({"id": "x", "n": 2}).as_object().unwrap().clone()]);

    // The default window is 24 h: a server without the flag takes a stamp 2 h ahead.
    let dir2 = tempfile::tempdir().unwrap();
    let lenient = Server::start(&dir2.path().join("data"), &[]);
    assert_eq!(push(&lenient, vec![row(1, "y", "put", Some(json!({"id": "y"})), now + 2 * 3_600_000)]).await, Answer::Acked);
    assert_eq!(push(&lenient, vec![row(1, "z", "put", Some(json!({"id": "z"})), now + 25 * 3_600_000)]).await, refused());
}

/// Origins are bound to identity: a client connection may push only ops whose origin is
/// its own db id, on a server with a secret (the connection is a token's user's) and on
/// one without (only servers that share a secret forward other replicas' ops). A forged origin (another replica's db id, which the
/// server would treat as that replica's echo and never send it) is refused and nothing is
/// stored; honest clients — including one holding many rows of other origins, which once
/// pushed them as a snapshot — push their own rows and converge; the victim receives
/// every real write.
#[tokio::test]
async fn forged_origins_are_refused_on_client_connections() {
    forged_origins_are_refused(Some("s3cret")).await;
}

#[tokio::test]
async fn forged_origins_are_refused_on_a_server_without_a_secret() {
    forged_origins_are_refused(None).await;
}

async fn forged_origins_are_refused(secret: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let server = match secret {
        Some(secret) => Server::start(&dir.path().join("data"), &["--secret", secret]),
        None => Server::start(&dir.path().join("data"), &[]),
    };
    let token = secret.map(|secret| tidemark_server::auth::issue(secret.as_bytes(), &tidemark_server::auth::Claims { library: LIB.into(), user: "eve".into(), exp: None }));
    let limits = Limits { per_diff: 50, max_diffs: 100 };
    let victim = client().await;
    put_all(&victim, (0..10).map(|i| format!("v{i}")), 1).await;
    sync_fully(&victim, &server, limits, token.clone()).await;
    let victim_id = victim.head().db_id;
    let max = server.max_row(LIB, token.as_deref());
    let before = server.stored(LIB, "docs");

    let mut ws = raw_ws(&server).await;
    let forged = {
        let mut r = row(1, "forged", "put", Some(json!({"id": "forged", "n": 666})), now_ms());
        r["op"]["origin"] = json!(victim_id);
        r["op"]["ts"] = json!(ts(now_ms(), &victim_id));
        r
    };
    let frames = vec![
        text(json!({"v": 1, "type": "hello", "library": LIB, "token": token, "dbId": ME, "schemaVersion": 1})),
        text(json!({"v": 1, "type": "start", "session": "sess1", "direction": "push", "perDiff": 1000, "maxDiffs": 10})),
        text(json!({"v": 1, "type": "preflight", "session": "sess1", "dbId": ME, "maxRow": 1, "schemaVersion": 1, "sessions": []})),
        text(json!({"v": 1, "type": "begin", "session": "sess1", "start": -1, "snapshot": false})),
        text(json!({"v": 1, "type": "batch", "session": "sess1", "after": -1, "covers": 1, "rows": [forged]})),
    ];
    for f in frames {
        ws.send(f).await.unwrap();
    }
    assert_eq!(answer(&mut ws).await, refused(), "a forged origin");
    assert_eq!(server.stored(LIB, "docs"), before, "nothing was stored");
    assert_eq!(server.max_row(LIB, token.as_deref()), max);

    // An honest client that holds the victim's rows and writes many of its own: its push
    // covers the victim's rows and sends its own 200, as diffs.
    let honest = client().await;
    sync_fully(&honest, &server, limits, token.clone()).await;
    put_all(&honest, (0..200).map(|i| format!("h{i:03}")), 1).await;
    let mut sent = 0;
    for _ in 0..20 {
        let r = round(&honest, &server, limits, token.clone()).await.unwrap();
        assert!(!r.push.snapshot, "a bound push never goes as a snapshot");
        sent += r.sent;
        if !r.capped {
            break;
        }
    }
    assert_eq!(sent, 200, "only its own rows were sent");
    sync_fully(&victim, &server, limits, token.clone()).await;
    assert_eq!(docs(&victim).await.len(), 210, "the victim receives every real write");
    assert_eq!(docs(&victim).await, docs(&honest).await);
}

/// Ends an empty push pass with a forwarded table of `entries` entries; the answer
/// (`Acked` stands for `done`) and how long the server took to answer.
async fn end_with_table(server: &Server, token: Option<&str>, entries: usize) -> (Answer, std::time::Duration) {
    let table: Vec<Value> = (0..entries).map(|i| json!({"dbId": format!("peer{i:08}"), "row": 5, "session": format!("s{i}")})).collect();
    let mut ws = raw_ws(server).await;
    let frames = vec![
        text(json!({"v": 1, "type": "hello", "library": LIB, "token": token, "dbId": ME, "schemaVersion": 1})),
        text(json!({"v": 1, "type": "start", "session": "sess1", "direction": "push", "perDiff": 1000, "maxDiffs": 10})),
        text(json!({"v": 1, "type": "preflight", "session": "sess1", "dbId": ME, "maxRow": 0, "schemaVersion": 1, "sessions": []})),
        text(json!({"v": 1, "type": "begin", "session": "sess1", "start": -1, "snapshot": false})),
    ];
    for f in frames {
        ws.send(f).await.unwrap();
    }
    let end = text(json!({"v": 1, "type": "end", "session": "sess1", "complete": true, "maxRow": 0, "incoming": table}));
    let started = std::time::Instant::now();
    ws.send(end).await.unwrap();
    let got = tokio::time::timeout(std::time::Duration::from_secs(120), async {
        while let Some(Ok(f)) = ws.next().await {
            if let Frame::Text(t) = f {
                match Message::decode(t.as_str()) {
                    Ok(Message::Done { .. }) => return Answer::Acked,
                    Ok(Message::Error { code, .. }) => return Answer::Refused(code),
                    _ => {}
                }
            }
        }
        Answer::Nothing
    })
    .await
    .unwrap_or(Answer::Nothing);
    let took = started.elapsed();
    let _ = ws.close(None).await;
    (got, took)
}

/// The 100,000-entry `incoming` table a peer server forwards: refused with a protocol
/// error (the limit is `MAX_TABLE_ENTRIES`) and nothing recorded; `/healthz` answers
/// while the server reads it; a table at the limit is merged; and a client connection
/// cannot forward a table at all (it is not taken).
#[tokio::test]
async fn huge_forwarded_tables_are_refused_and_never_stall_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "s3cret";
    let server = Server::start(&dir.path().join("data"), &["--secret", secret]);
    let token_of = |user: &str| tidemark_server::auth::issue(secret.as_bytes(), &tidemark_server::auth::Claims { library: LIB.into(), user: user.into(), exp: None });
    // Only servers that share the secret forward tables: a peer server's token.
    let peer = token_of(tidemark_server::peers::PEER_USER);
    let peers_of = |s: &Server| s.status(LIB, Some(&peer))["peers"].as_object().map_or(0, |m| m.len());
    let addr = server.addr;
    let probe = std::thread::spawn(move || {
        // Health probes all through the attack: each answers.
        let mut worst = std::time::Duration::ZERO;
        for _ in 0..20 {
            let t = std::time::Instant::now();
            assert_eq!(http_get(addr, "/healthz", None), (200, "ok".to_string()), "/healthz answers during the attack");
            worst = worst.max(t.elapsed());
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        worst
    });
    let (answer, took) = end_with_table(&server, Some(&peer), 100_000).await;
    assert_eq!(answer, refused(), "100,000 entries");
    let worst = probe.join().unwrap();
    eprintln!("100,000-entry table refused in {took:?}; slowest /healthz during it {worst:?}");
    assert_eq!(peers_of(&server), 0, "no peer record was stored");

    let (answer, took) = end_with_table(&server, Some(&peer), limits::MAX_TABLE_ENTRIES).await;
    assert_eq!(answer, Answer::Acked, "a table at the limit is merged");
    eprintln!("{}-entry table merged in {took:?}", limits::MAX_TABLE_ENTRIES);
    assert_eq!(peers_of(&server), limits::MAX_TABLE_ENTRIES + 1);
    assert!(server.healthy());

    // A client's table is not taken, on a server with a secret or without one.
    let dir2 = tempfile::tempdir().unwrap();
    let guarded = Server::start(&dir2.path().join("data"), &["--secret", secret]);
    let token = token_of("eve");
    let (answer, _) = end_with_table(&guarded, Some(&token), 5_000).await;
    assert_eq!(answer, Answer::Acked);
    assert_eq!(guarded.status(LIB, Some(&token))["peers"].as_object().map_or(0, |m| m.len()), 1, "only the client's own record");
    let dir3 = tempfile::tempdir().unwrap();
    let open = Server::start(&dir3.path().join("data"), &[]);
    let (answer, _) = end_with_table(&open, None, 5_000).await;
    assert_eq!(answer, Answer::Acked);
    assert_eq!(open.status(LIB, None)["peers"].as_object().map_or(0, |m| m.len()), 1, "only the client's own record");
}

/// One bad op never stops a library: a put whose document's primary key contradicts its
/// id, stored by the server next to good ops (the server keeps no schema, so it cannot
/// tell), is set aside by every client that knows the schema — visible in `status()` and
/// as an `error` event coded `OP_QUARANTINED` — while the point moves past it and the
/// good ops apply; the next round has nothing more to pull.
#[tokio::test]
async fn a_poisoned_op_is_quarantined_and_the_library_keeps_syncing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let now = now_ms();
    let rows = vec![
        row(1, "a", "put", Some(json!({"id": "a", "n": 1})), now),
        row(2, "b", "put", Some(json!({"id": "not-b", "n": 2})), now),
        row(3, "c", "put", Some(json!({"id": "c", "n": 3})), now),
    ];
    assert_eq!(push(&server, rows).await, Answer::Acked);

    let c = client().await;
    let first = round(&c, &server, Limits::default(), None).await.expect("the pull succeeds");
    assert_eq!(first.received, 3);
    let got: Vec<String> = docs(&c).await.iter().map(|d| d["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(got, ["a", "c"], "every other op applied");
    let q = c.status().quarantined.unwrap_or_default();
    assert_eq!(q.len(), 1, "{q:?}");
    assert_eq!((q[0].id.as_str(), q[0].code.as_str(), q[0].origin.as_str(), q[0].origin_row), ("b", "MISSING_PRIMARY_KEY", ME, 2));
    let again = round(&c, &server, Limits::default(), None).await.unwrap();
    assert_eq!(again.received, 0, "the point moved past the bad op");
    // Later good writes still flow both ways.
    put_all(&c, std::iter::once("d".to_string()), 4).await;
    sync_fully(&c, &server, Limits::default(), None).await;
    assert_eq!(server.stored(LIB, "docs").len(), 4);

    // A live client reports it as an `error` event.
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            let cfg = tidemark::sync::live::Config { poll_ms: 60_000, ..tidemark::sync::live::Config::new(LIB, Limits::default()) };
            let live = LiveClient::start(TokioEnv::new(server.ws_url(), Box::new(|| None), false), cfg).await;
            wait_until("the live client reports the bad op", std::time::Duration::from_secs(20), async || !live.error_codes().is_empty()).await;
            assert_eq!(live.error_codes(), ["OP_QUARANTINED"]);
            assert!(live.has("d").await && live.has("a").await && !live.has("b").await);
            assert_eq!(live.replica.status().quarantined.map(|q| q.len()), Some(1));
            live.stop().await;
        })
        .await;
}

/// The corpus's generator: the simulation's seeded one (`tidemark_testkit::sim::rng`), so
/// the corpus is the same on every run; sizes as `usize`, picks by value.
struct Gen(Rng);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0.next()
    }
    fn below(&mut self, n: usize) -> usize {
        self.0.below(n as u64) as usize
    }
    fn pick<T: Clone>(&mut self, xs: &[T]) -> T {
        self.0.pick(xs).clone()
    }
}

/// An op that no replica may store, in one of many ways.
fn invalid_op(g: &mut Gen, now: u64) -> Value {
    let mut op = row(1, "k", "put", Some(json!({"id": "k", "n": 1})), now)["op"].clone();
    let deep = |n: usize| vec!["p"; n].join(".");
    match g.below(14) {
        0 => op["id"] = json!(""),
        1 => op["id"] = json!("i".repeat(limits::MAX_ID_BYTES + 1 + g.below(5000))),
        2 => op["collection"] = json!(""),
        3 => op["origin"] = json!(""),
        4 => op["ts"] = json!(ts(MAX_WALL - g.below(1000) as u64, ME)),
        5 => op["ts"] = json!(g.pick(&["", "zz", "0001", "00010000000000g00000ab", "-1"])),
        6 => op["kind"] = json!(g.pick(&["upsert", "PUT", "", "delete "])),
        7 => {
            op["kind"] = json!("patch");
            op["fields"] = json!({ (deep(limits::MAX_PATH_SEGMENTS + 1 + g.below(20_000))): 1 });
        }
        8 => {
            op["kind"] = json!("patch");
            op["fields"] = json!(g.pick(&[json!({}), json!({"a..b": 1}), json!({".a": 1}), json!({"a": 1, "a.b": 2})]));
        }
        9 => {
            op["kind"] = json!("delete");
        }
        10 => {
            op.as_object_mut().unwrap().remove("fields");
        }
        11 => op["schemaVersion"] = json!(2 + g.below(100)),
        12 => {
            let mut v = json!(1);
            for _ in 0..(limits::MAX_DEPTH + g.below(50)) {
                v = json!([v]);
            }
            op["fields"] = json!({"id": "k", "deep": v});
        }
        _ => op["collection"] = json!("c".repeat(limits::MAX_COLLECTION_BYTES + 1 + g.below(1000))),
    }
    op
}

/// Whether `v` with one field replaced stays a frame the server must refuse: only used
/// on frames whose every variant is refused or harmless (no valid op anywhere).
fn mutate_field(g: &mut Gen, mut v: Value) -> Value {
    let keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    let k = g.pick(&keys);
    let replacement = g.pick(&[json!(null), json!(-1), json!(u64::MAX), json!(i64::MIN), json!(1.5), json!("x"), json!([]), json!({}), json!(true), json!("\u{0}\u{ffff}")]);
    if g.below(4) == 0 {
        v.as_object_mut().unwrap().remove(&k);
    } else {
        v[&k] = replacement;
    }
    v
}

/// One case of the corpus: the frames to send, and whether the server must answer with
/// an `error` (false: the frame may happen to be acceptable, but must change nothing).
fn case(g: &mut Gen, now: u64) -> (Vec<Frame>, bool) {
    let hello = json!({"v": 1, "type": "hello", "library": LIB, "dbId": ME, "schemaVersion": 1});
    let start = json!({"v": 1, "type": "start", "session": "sess1", "direction": g.pick(&["push", "pull"]), "perDiff": 10, "maxDiffs": 3});
    let preflight = json!({"v": 1, "type": "preflight", "session": "sess1", "dbId": ME, "maxRow": 1, "schemaVersion": 1, "sessions": []});
    let begin = json!({"v": 1, "type": "begin", "session": "sess1", "start": -1, "snapshot": g.below(2) == 0});
    let mut prefix = vec![hello.clone(), start.clone(), preflight.clone(), begin.clone()];
    prefix.truncate(g.below(5));
    let push = |p: &mut Vec<Value>| {
        p.truncate(1);
        p.extend([json!({"v": 1, "type": "start", "session": "sess1", "direction": "push", "perDiff": 10, "maxDiffs": 3}), json!({"v": 1, "type": "preflight", "session": "sess1", "dbId": ME, "maxRow": 1, "schemaVersion": 1, "sessions": []})]);
    };
    let (last, must): (Frame, bool) = match g.below(8) {
        // Bytes that are not JSON.
        0 => {
            let n = 1 + g.below(300);
            let bytes: Vec<u8> = (0..n).map(|_| g.next() as u8).collect();
            (Frame::Text(String::from_utf8_lossy(&bytes).into_owned().into()), true)
        }
        // A valid message cut short.
        1 => {
            let whole = g.pick(&[hello.clone(), start.clone(), preflight.clone(), begin.clone()]).to_string();
            let cut = 1 + g.below(whole.len() - 1);
            (Frame::Text(whole[..cut].to_string().into()), true)
        }
        // A field of a valid message replaced or removed.
        2 => {
            let which = g.below(4);
            let base = [hello.clone(), start.clone(), preflight.clone(), begin.clone()][which].clone();
            prefix.truncate(which);
            (text(mutate_field(g, base)), false)
        }
        // An unknown type, or an extra field.
        3 => {
            let mut v = g.pick(&[hello.clone(), start.clone(), preflight.clone(), begin.clone()]);
            if g.below(2) == 0 {
                v["type"] = json!(g.pick(&["launch", "Batch", "", "hello2", "snapshots"]));
            } else {
                v["extra"] = json!(g.below(10));
            }
            (text(v), true)
        }
        // Nesting past the JSON reader's limit.
        4 => {
            let n = 129 + g.below(5000);
            (Frame::Text(format!("{}{}", "[".repeat(n), "]".repeat(n)).into()), true)
        }
        // A batch carrying an invalid op, after a correct push preflight and begin.
        5 => {
            push(&mut prefix);
            prefix.push(json!({"v": 1, "type": "begin", "session": "sess1", "start": -1, "snapshot": false}));
            let rows = json!([{"row": 1, "op": invalid_op(g, now)}]);
            (text(json!({"v": 1, "type": "batch", "session": "sess1", "after": -1, "covers": 1, "rows": rows})), true)
        }
        // A snapshot chunk with an invalid document.
        6 => {
            push(&mut prefix);
            prefix.push(json!({"v": 1, "type": "begin", "session": "sess1", "start": -1, "snapshot": true}));
            let good = ts(now, ME);
            let doc = g.pick(&[
                json!({"c": "", "id": "k", "d": {"id": "k"}, "s": {"": good}, "v": 1}),
                json!({"c": "docs", "id": "k", "d": {"id": "k"}, "s": {}, "v": 1}),
                json!({"c": "docs", "id": "k", "d": {"id": "k"}, "s": {"a..b": good}, "v": 1}),
                json!({"c": "docs", "id": "k", "d": {"id": "k"}, "s": {"": ts(MAX_WALL, ME)}, "v": 1}),
                json!({"c": "docs", "id": "k", "d": {"id": "k"}, "s": {(vec!["p"; 40].join(".")): good}, "v": 1}),
                json!({"c": "docs", "id": "i".repeat(5000), "d": {"id": "k"}, "s": {"": good}, "v": 1}),
            ]);
            (text(json!({"v": 1, "type": "snapshot", "session": "sess1", "docs": [doc]})), true)
        }
        // A batch that does not follow what was agreed.
        _ => {
            push(&mut prefix);
            prefix.push(json!({"v": 1, "type": "begin", "session": "sess1", "start": -1, "snapshot": false}));
            let (after, covers) = g.pick(&[(5, 6), (-1, -1), (-1, -5), (0, 0), (3, 2)]);
            let rows = json!([{"row": 1, "op": invalid_op(g, now)}]);
            (text(json!({"v": 1, "type": "batch", "session": "sess1", "after": after, "covers": covers, "rows": rows})), true)
        }
    };
    let mut frames: Vec<Frame> = prefix.into_iter().map(text).collect();
    frames.push(last);
    (frames, must)
}

/// Sends one case; the code of the server's `error`, if it sent one before closing (or
/// before going quiet for a while).
async fn run_case(server: &Server, frames: Vec<Frame>) -> Option<String> {
    let mut ws = raw_ws(server).await;
    for f in frames {
        if ws.send(f).await.is_err() {
            break;
        }
    }
    let code = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        while let Some(Ok(f)) = ws.next().await {
            match f {
                Frame::Text(t) => {
                    if let Ok(Message::Error { code, .. }) = Message::decode(t.as_str()) {
                        return Some(code);
                    }
                }
                Frame::Close(_) => return None,
                _ => {}
            }
        }
        None
    })
    .await
    .unwrap_or(None);
    let _ = ws.close(None).await;
    code
}

/// The malformed-message corpus: 1,200 deterministic hostile cases (well over 1,000
/// hostile frames, after their valid prefixes) against one real server: it never
/// crashes, stays healthy, answers every frame that must be refused with an `error`, and
/// its library — documents, max row and peer records — is exactly as before.
#[tokio::test]
async fn a_malformed_message_corpus_crashes_nothing_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(&dir.path().join("data"), &["--hello-timeout", "2"]);
    let honest = client().await;
    put_all(&honest, (0..20).map(|i| format!("h{i}")), 1).await;
    sync_fully(&honest, &server, Limits::default(), None).await;
    // The server records the honest client's last pull when its `done` arrives: wait for it.
    let acked = || server.status(LIB, None)["peers"][honest.head().db_id.as_str()]["outgoing"].as_i64();
    wait_until("the last pull is recorded", std::time::Duration::from_secs(10), async || acked() == Some(20)).await;
    let before = (server.stored(LIB, "docs"), server.max_row(LIB, None), server.status(LIB, None)["peers"].clone());
    let mut g = Gen(Rng::new(0x9e37_79b9_7f4a_7c15));
    let now = now_ms();
    let cases: Vec<(Vec<Frame>, bool)> = (0..1_200).map(|_| case(&mut g, now)).collect();
    let (mut refused, mut hostile_frames) = (0usize, 0usize);
    for chunk in cases.chunks(8) {
        let answers = futures::future::join_all(chunk.iter().map(|(frames, _)| run_case(&server, frames.clone()))).await;
        for ((_, must), code) in chunk.iter().zip(answers) {
            hostile_frames += 1;
            if *must {
                assert!(code.as_deref().is_some_and(|c| tidemark::error::CODES.contains(&c)), "a hostile frame was not refused with a code: {code:?}");
            }
            refused += code.is_some() as usize;
        }
        assert!(server.is_running(), "the server crashed");
    }
    eprintln!("corpus: {} cases, {hostile_frames} hostile frames, {refused} refused with an error", cases.len());
    assert!(hostile_frames >= 1_000);
    assert!(server.healthy());
    let after = (server.stored(LIB, "docs"), server.max_row(LIB, None), server.status(LIB, None)["peers"].clone());
    assert_eq!(after, before, "the corpus changed nothing");
    // And the library still serves a new replica.
    let fresh = client().await;
    sync_fully(&fresh, &server, Limits::default(), None).await;
    assert_eq!(docs(&fresh).await, docs(&honest).await);
    assert!(server.terminate().is_some());
}

/// A snapshot pass may not claim to end past the max row its sender declared: the point
/// it would set would hide the sender's next rows (or, as `u64::MAX`, wrap around).
#[tokio::test]
async fn a_snapshot_cannot_end_past_the_declared_max_row() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let honest = client().await;
    put_all(&honest, (0..3).map(|i| format!("h{i}")), 1).await;
    sync_fully(&honest, &server, Limits::default(), None).await;
    let acked = || server.status(LIB, None)["peers"][honest.head().db_id.as_str()]["outgoing"].as_i64();
    wait_until("the last pull is recorded", std::time::Duration::from_secs(10), async || acked() == Some(3)).await;
    let before = server.status(LIB, None)["peers"].clone();
    for claimed in [2u64, 1_000_000, u64::MAX] {
        let mut ws = raw_ws(&server).await;
        let frames = vec![
            text(json!({"v": 1, "type": "hello", "library": LIB, "dbId": ME, "schemaVersion": 1})),
            text(json!({"v": 1, "type": "start", "session": "sess1", "direction": "push", "perDiff": 1000, "maxDiffs": 10})),
            text(json!({"v": 1, "type": "preflight", "session": "sess1", "dbId": ME, "maxRow": 1, "schemaVersion": 1, "sessions": []})),
            text(json!({"v": 1, "type": "begin", "session": "sess1", "start": -1, "snapshot": true})),
            text(json!({"v": 1, "type": "end", "session": "sess1", "complete": true, "maxRow": claimed, "incoming": []})),
        ];
        for f in frames {
            ws.send(f).await.unwrap();
        }
        assert_eq!(answer(&mut ws).await, refused(), "a snapshot ending at {claimed}");
    }
    assert_eq!(server.status(LIB, None)["peers"], before, "no point was recorded");
}

/// A process's resident memory in MB: now (`VmRSS`) and its peak so far (`VmHWM`).
fn rss_mb(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| status.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()).unwrap_or(0.0);
    (kb("VmRSS:") / 1024.0, kb("VmHWM:") / 1024.0)
}

/// Snapshots are streamed from storage page by page, never loaded whole (DESIGN §5
/// "Bounded metadata"): eight replicas joining a 10,000-document library at the same moment
/// each start with a snapshot and end holding every document, identical to the writer's.
/// The server's resident memory before and at its peak is printed, as a figure (memory is
/// measured, not asserted: `make bench`'s load section joins 8 replicas to 100,000 documents).
#[tokio::test]
async fn eight_concurrent_snapshots_are_streamed_and_each_joiner_gets_everything() {
    const DOCS: usize = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let limits = Limits::default();
    let writer = client().await;
    put_all(&writer, (0..DOCS).map(|i| format!("d{i:05}")), 1).await;
    sync_fully(&writer, &server, limits, None).await;
    assert_eq!(server.max_row(LIB, None), DOCS as u64);
    let (before, _) = rss_mb(server.pid());

    let joiners = futures::future::join_all((0..8).map(|_| client())).await;
    let first = futures::future::join_all(joiners.iter().map(|j| round(j, &server, limits, None))).await;
    let (_, peak) = rss_mb(server.pid());
    for r in first {
        let r = r.unwrap();
        assert!(r.pull.snapshot && r.received > 0, "a joiner starts with a snapshot: {r:?}");
    }
    let want = docs(&writer).await;
    assert_eq!(want.len(), DOCS);
    for j in &joiners {
        sync_fully(j, &server, limits, None).await;
        assert!(docs(j).await == want, "a joiner holds every document, as the writer does");
    }
    assert!(server.healthy());
    eprintln!("8 concurrent snapshots of {DOCS} documents: server RSS {before:.1} MB before, {peak:.1} MB peak");
}
