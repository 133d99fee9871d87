//! Sync that stays incremental, against a real `tidemark-server` process (issue 12):
//! - the edit-history case: 100 notes edited 20 times, a replica that joins by snapshot,
//!   then every new row reaches it as one row (it used to be a full snapshot each time);
//! - a replica that pulled many rows pushes its 51 own rows at perDiff 10 × maxDiffs 3 in
//!   2 rounds (it used to take 6, four of them sending nothing but still capped).
//!
//! The rows per pull are printed for the closing note.

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;
use tidemark::sync::pass::Limits;
use tidemark::Write;

#[tokio::test]
async fn an_edit_history_joiner_pulls_each_new_row_as_one_row() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let limits = Limits::default();
    let writer = client().await;
    put_all(&writer, (0..100).map(|i| format!("note{i:03}")), 0).await;
    for edit in 0..=20 {
        if edit > 0 {
            let patches = (0..100).map(|i| Write::Patch { collection: "docs".into(), id: format!("note{i:03}"), fields: json!({"n": edit}).as_object().unwrap().clone() });
            writer.write(patches.collect()).await.unwrap();
        }
        let r = round(&writer, &server, limits, None).await.unwrap();
        assert!(!r.push.snapshot && r.sent == 100, "edit {edit}: {r:?}");
    }
    assert_eq!(server.max_row(LIB, None), 2_100);

    let joiner = client().await;
    let join = round(&joiner, &server, limits, None).await.unwrap();
    assert!(join.pull.snapshot && !join.reset && join.received == 100, "{join:?}");
    assert!(joiner.head().max_row < 1_000, "the joiner holds far fewer rows than the server");
    let mut per_pull = Vec::new();
    for k in 0..5 {
        writer.patch("docs", &format!("note{k:03}"), json!({"n": 100 + k}).as_object().unwrap().clone()).await.unwrap();
        round(&writer, &server, limits, None).await.unwrap();
        let r = round(&joiner, &server, limits, None).await.unwrap();
        assert!(!r.pull.snapshot && !r.reset && !r.capped, "new row {k}: {r:?}");
        assert_eq!((r.received, r.sent), (1, 0), "new row {k}: one row, nothing pushed back");
        per_pull.push(r.received);
    }
    eprintln!("edit-history joiner: snapshot of {} documents, then rows per pull {per_pull:?}", join.received);
    assert_eq!(docs(&joiner).await, docs(&writer).await);
}

#[tokio::test]
async fn a_51_row_push_after_a_big_pull_takes_two_rounds() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--per-diff", "10", "--max-diffs", "3"]);
    let limits = Limits { per_diff: 10, max_diffs: 3 };
    let writer = client().await;
    put_all(&writer, (0..3_000).map(|i| format!("w{i:04}")), 1).await;
    sync_fully(&writer, &server, limits, None).await;
    let c = client().await;
    let pulled = round(&c, &server, limits, None).await.unwrap();
    assert!(pulled.pull.snapshot && pulled.received == 3_000, "{pulled:?}");
    // The server records the session that carried the snapshot once the client's `done`
    // arrives, which can be just after the client has closed and moved on. A push that
    // starts before it cannot skip the snapshot's rows as echoes (correct, only slower):
    // this test is about the push after the server has recorded the pull.
    let id = c.head().db_id;
    wait_until("the server records the snapshot session", Duration::from_secs(20), async || {
        server.status(LIB, None)["peers"][&id]["outgoing"].as_i64().is_some_and(|o| o >= 3_000)
    })
    .await;
    put_all(&c, (0..51).map(|i| format!("c{i:02}")), 2).await;
    let mut rounds = Vec::new();
    loop {
        let r = round(&c, &server, limits, None).await.unwrap();
        assert!(!r.push.snapshot, "{r:?}");
        rounds.push((r.push.sent, r.push.capped));
        if !r.capped || rounds.len() > 10 {
            break;
        }
    }
    eprintln!("51-row push at perDiff 10 x maxDiffs 3: rounds (sent, capped) {rounds:?}");
    assert_eq!(rounds, vec![(30, true), (21, false)]);
    let idle = round(&c, &server, limits, None).await.unwrap();
    assert_eq!((idle.sent, idle.received, idle.capped), (0, 0, false));
    assert_eq!(server.max_row(LIB, None), 3_051);
}
