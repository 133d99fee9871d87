//! The server's edge against hostile and greedy clients, on the real binary (issue 13,
//! DESIGN §5 "Bounded metadata and input", "Origins are bound to identity"): oversized
//! frames answered and closed cleanly, db ids bound to the token's user, connections and
//! snapshots per client capped, peer records pruned.

mod support;

use futures::{SinkExt, StreamExt};
use serde_json::json;
use support::*;
use tidemark::sync::pass::Limits;
use tidemark::sync::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message as Frame;

/// Oversized frames of several sizes, first or after `hello`: the client can always send
/// its frame to the end, then reads `FRAME_TOO_LARGE` and a close frame with code 1009 —
/// never a reset (1006).
#[tokio::test]
async fn oversize_frames_get_their_error_and_a_clean_close() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--max-frame", "65536"]);
    for size in [65_537usize, 300_000, 4_000_000, 24_000_000] {
        for after_hello in [false, true] {
            let mut ws = raw_ws(&server).await;
            if after_hello {
                ws.send(raw_hello("feedfacecafe0001", None)).await.unwrap();
                let welcome = ws.next().await.unwrap().unwrap();
                assert!(welcome.to_text().unwrap().contains("welcome"), "{welcome:?}");
            }
            // The server reads the frame to its end: a client (a browser) that fails on a
            // write cut off by a reset never reads the answer already on its way.
            let sent = ws.send(Frame::Text("x".repeat(size).into())).await;
            assert!(sent.is_ok(), "sending a frame of {size} bytes (after hello: {after_hello}) failed: {sent:?}");
            let end = ending(&mut ws).await;
            assert_eq!(end, Ending { code: Some("FRAME_TOO_LARGE".into()), close: Some(u16::from(CloseCode::Size)) }, "a frame of {size} bytes (after hello: {after_hello})");
        }
    }
    assert!(server.healthy());
    let c = client().await;
    put_all(&c, (0..3).map(|i| format!("a{i}")), 1).await;
    sync_fully(&c, &server, Limits::default(), None).await;
    assert_eq!(server.max_row(LIB, None), 3);
}

fn token(secret: &str, user: &str) -> String {
    tidemark_server::auth::issue(secret.as_bytes(), &tidemark_server::auth::Claims { library: LIB.into(), user: user.into(), exp: None })
}

/// Sends `hello` on a fresh connection and reads the answer: the welcome keeps the
/// connection open (returned), a refusal ends it.
async fn greet(server: &Server, db_id: &str, token: Option<&str>) -> Result<Ws, Ending> {
    let mut ws = raw_ws(server).await;
    ws.send(raw_hello(db_id, token)).await.unwrap();
    match ws.next().await {
        Some(Ok(Frame::Text(t))) if t.as_str().contains("\"welcome\"") => Ok(ws),
        Some(Ok(Frame::Text(t))) => {
            let code = match Message::decode(t.as_str()) {
                Ok(Message::Error { code, .. }) => Some(code),
                other => panic!("unexpected answer to hello: {other:?}"),
            };
            let close = ending(&mut ws).await.close;
            Err(Ending { code, close })
        }
        other => panic!("no answer to hello: {other:?}"),
    }
}

/// Under `--secret`, a db id belongs to the first user who connects with it: another
/// user's valid token cannot take it over (and so cannot push ops as that replica's own,
/// which the server would never send back to it), also after a restart; its owner keeps
/// syncing with it.
#[tokio::test]
async fn a_db_id_is_bound_to_its_first_user() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "s3cret";
    let (alice, eve) = (token(secret, "alice"), token(secret, "eve"));
    let mut server = Server::start(&dir.path().join("data"), &["--secret", secret]);
    let victim = client().await;
    put_all(&victim, (0..5).map(|i| format!("v{i}")), 1).await;
    sync_fully(&victim, &server, Limits::default(), Some(alice.clone())).await;
    let id = victim.head().db_id;
    let before = server.stored(LIB, "docs");

    assert_eq!(greet(&server, &id, Some(&eve)).await.err(), Some(Ending::new("FORBIDDEN", 1008)), "another user's hello with the victim's db id");
    let forged = raw_row(&id, 1, "forged", json!({"n": 666}));
    assert_eq!(raw_ending(&server, push_frames(&id, Some(&eve), vec![forged.clone()])).await, Ending::new("FORBIDDEN", 1008), "a push under the victim's db id");
    assert_eq!(server.stored(LIB, "docs"), before, "nothing stored");

    server.terminate();
    let server = Server::start(&dir.path().join("data"), &["--secret", secret]);
    assert_eq!(raw_ending(&server, push_frames(&id, Some(&eve), vec![forged])).await, Ending::new("FORBIDDEN", 1008), "after a restart");
    // The owner is not affected, and eve's own replica syncs (with its own db id).
    victim.write(vec![tidemark::Write::Put { collection: "docs".into(), doc: json!({"id": "v9", "n": 2}).as_object().unwrap().clone() }]).await.unwrap();
    sync_fully(&victim, &server, Limits::default(), Some(alice)).await;
    let other = client().await;
    sync_fully(&other, &server, Limits::default(), Some(eve)).await;
    assert_eq!(docs(&other).await.len(), 6);
    assert!(!server.stored(LIB, "docs").contains_key("forged"));
}

/// Concurrent connections per client: the token's user with a secret, the db id on
/// loopback without one. The connection over the cap is refused with
/// `TOO_MANY_CONNECTIONS` and a close that says to retry later (1013); other clients are
/// not affected, and a closed connection frees its place.
#[tokio::test]
async fn connections_per_client_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "s3cret";
    let (alice, bob) = (token(secret, "alice"), token(secret, "bob"));
    let server = Server::start(&dir.path().join("data"), &["--secret", secret, "--max-client-connections", "2"]);
    let mut first = greet(&server, "alicephone00001", Some(&alice)).await.unwrap();
    let _second = greet(&server, "alicelaptop0001", Some(&alice)).await.unwrap();
    assert_eq!(greet(&server, "alicetablet0001", Some(&alice)).await.err(), Some(Ending::new("TOO_MANY_CONNECTIONS", 1013)));
    let _bob = greet(&server, "bobphone0000001", Some(&bob)).await.unwrap();
    first.close(None).await.unwrap();
    drop(first);
    wait_until("a closed connection frees its place", std::time::Duration::from_secs(10), async || greet(&server, "alicetablet0001", Some(&alice)).await.is_ok()).await;

    let open = Server::start(&dir.path().join("open"), &["--max-client-connections", "2"]);
    let _a = greet(&open, "feedfacecafe0001", None).await.unwrap();
    let _b = greet(&open, "feedfacecafe0001", None).await.unwrap();
    assert_eq!(greet(&open, "feedfacecafe0001", None).await.err(), Some(Ending::new("TOO_MANY_CONNECTIONS", 1013)));
    assert!(greet(&open, "feedfacecafe0002", None).await.is_ok(), "another replica");
}

/// A client cannot make the server do unbounded work: snapshots and passes per client
/// per minute are capped (`RATE_LIMITED`), while other clients are served.
#[tokio::test]
async fn snapshots_and_passes_per_client_are_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "s3cret";
    let (alice, bob) = (token(secret, "alice"), token(secret, "bob"));
    let server = Server::start(&dir.path().join("data"), &["--secret", secret, "--per-diff", "10", "--max-client-snapshots", "2", "--max-client-passes", "12"]);
    let writer = client().await;
    put_all(&writer, (0..40).map(|i| format!("d{i}")), 1).await;
    sync_fully(&writer, &server, Limits::default(), Some(bob.clone())).await;
    // Each fresh replica joins by snapshot (40 rows, more than one batch of 10).
    let mut joined = Vec::new();
    for _ in 0..2 {
        let joiner = client().await;
        let report = round(&joiner, &server, Limits::default(), Some(alice.clone())).await.unwrap();
        assert!(report.snapshot);
        assert_eq!(docs(&joiner).await.len(), 40);
        joined.push(joiner);
    }
    let third = client().await;
    let refused = round(&third, &server, Limits::default(), Some(alice.clone())).await.expect_err("a third snapshot within the minute");
    assert_eq!(refused.code(), "RATE_LIMITED");
    assert!(docs(&third).await.is_empty());
    let other = client().await;
    assert!(round(&other, &server, Limits::default(), Some(bob.clone())).await.unwrap().snapshot, "another client still gets its snapshot");
    // Passes: alice has spent 6 of 12 (two passes per round); idle rounds of a replica
    // that has joined spend the rest.
    let idle = &joined[0];
    let mut rounds = 0;
    let code = loop {
        match round(idle, &server, Limits::default(), Some(alice.clone())).await {
            Ok(_) => rounds += 1,
            Err(e) => break e.code().to_string(),
        }
        assert!(rounds < 10, "passes are not limited");
    };
    assert_eq!((code.as_str(), rounds), ("RATE_LIMITED", 3));
    assert!(round(&writer, &server, Limits::default(), Some(bob)).await.is_ok(), "bob's passes are his own");
}

/// Peer records are pruned by a size policy: a flood of fresh db ids leaves at most
/// `--max-peers` records, records unwritten for `--peer-max-age` go, and a pruned client
/// only starts over: nothing lost, nothing stored twice.
#[tokio::test]
async fn peer_records_are_pruned_and_a_pruned_client_starts_over_safely() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--max-peers", "20"]);
    let first = client().await;
    put_all(&first, (0..30).map(|i| format!("f{i}")), 1).await;
    sync_fully(&first, &server, Limits::default(), None).await;
    for i in 0..60 {
        let c = client().await;
        put_all(&c, std::iter::once(format!("c{i}")), 1).await;
        round(&c, &server, Limits::default(), None).await.unwrap();
    }
    let peers = |s: &Server| s.status(LIB, None)["peers"].as_object().map_or(0, |p| p.len());
    let first_id = first.head().db_id;
    wait_until("the flood is pruned to 20 records", std::time::Duration::from_secs(30), async || peers(&server) <= 20).await;
    assert!(server.status(LIB, None)["peers"].get(&first_id).is_none(), "the least recently seen went first");
    assert_eq!(server.max_row(LIB, None), 90);
    // The pruned client writes more and syncs: its rows are re-sent from the start and
    // merged once; it gets everything.
    put_all(&first, (30..35).map(|i| format!("f{i}")), 1).await;
    sync_fully(&first, &server, Limits::default(), None).await;
    assert_eq!(server.max_row(LIB, None), 95, "re-sent rows are not stored twice");
    assert_eq!(docs(&first).await.len(), 95);
    let joiner = client().await;
    sync_fully(&joiner, &server, Limits::default(), None).await;
    assert_eq!(docs(&joiner).await, docs(&first).await);

    // By age: a record unwritten for 1 s goes at the next prune.
    let aging = Server::start(&dir.path().join("aging"), &["--peer-max-age", "1"]);
    sync_fully(&first, &aging, Limits::default(), None).await;
    assert!(peers(&aging) >= 1);
    wait_until("an old record is pruned", std::time::Duration::from_secs(30), async || peers(&aging) == 0).await;
    put_all(&first, std::iter::once("late".to_string()), 1).await;
    sync_fully(&first, &aging, Limits::default(), None).await;
    // Its own 36 rows once each (a client forwards no other replica's ops: origins are
    // bound to identity).
    assert_eq!(aging.max_row(LIB, None), 36);
}
