//! Snapshot chunks are numbered (the model's `chunks_numbered` rule, model/README.md §5):
//! each chunk says how many documents the sender sent before it, and each ack how many the
//! receiver has taken. On a transport that duplicates or loses frames, a repeated ack
//! cannot pass for the next chunk's, nor a repeated chunk for the next one — either let
//! the sender end the snapshot while its last chunk was lost, and the receiver's point
//! claim documents it never merged (simulation seed 17251: a duplicated first chunk, a
//! lost second one).

#![cfg(not(target_arch = "wasm32"))]

use futures::executor::block_on;
use serde_json::json;
use tidemark::error::{Error, SyncError};
use tidemark::memory::MemoryStore;
use tidemark::replica::{Replica, Write};
use tidemark::store::Store;
use tidemark::sync::drive;
use tidemark::sync::message::Message;
use tidemark::sync::pass::Limits;
use tidemark::sync::transport::{pipe, Pipe, Transport};
use tidemark_testkit::scenarios::replica_at;

/// One end of a pipe that records the acks it sends and sends twice the messages
/// `twice` picks (a transport that duplicates frames).
struct Dup {
    inner: Pipe,
    twice: fn(&Message) -> bool,
    acks: Vec<i64>,
}

impl Transport for Dup {
    async fn send(&mut self, msg: &Message) -> Result<(), SyncError> {
        if let Message::Ack { point, .. } = msg {
            self.acks.push(*point);
        }
        if (self.twice)(msg) {
            self.inner.send(msg).await?;
        }
        self.inner.send(msg).await
    }

    async fn recv(&mut self) -> Result<Message, SyncError> {
        self.inner.recv().await
    }
}

fn sender_with(docs: usize) -> Replica<MemoryStore> {
    let s = replica_at(MemoryStore::new(), 1_000);
    let writes = (0..docs).map(|i| Write::Put { collection: "docs".into(), doc: json!({"id": format!("d{i}"), "n": i}).as_object().unwrap().clone() }).collect();
    block_on(s.write(writes)).unwrap();
    s
}

fn never(_: &Message) -> bool {
    false
}

fn acks(m: &Message) -> bool {
    matches!(m, Message::Ack { .. })
}

fn first_chunk(m: &Message) -> bool {
    matches!(m, Message::Snapshot { after: 0, .. })
}

/// One pass from `s` to `r` (one document per chunk), the sender's messages duplicated
/// where `sender_twice` says and the receiver's where `receiver_twice` does; both sides'
/// results and the receiver's acks.
fn snapshot_pass(s: &Replica<MemoryStore>, r: &Replica<MemoryStore>, sender_twice: fn(&Message) -> bool, receiver_twice: fn(&Message) -> bool) -> (Result<u64, Error>, Result<u64, Error>, Vec<i64>) {
    let (a, b) = pipe();
    let (mut a, mut b) = (Dup { inner: a, twice: sender_twice, acks: Vec::new() }, Dup { inner: b, twice: receiver_twice, acks: Vec::new() });
    let (sid, rid) = (s.head().db_id, r.head().db_id);
    let session = tidemark::peer::new_session();
    let limits = Limits { per_diff: 1, max_diffs: 3 };
    let (sent, got) = block_on(futures::future::join(
        async {
            let out = drive::send(s, &mut a, &rid, &session, limits, &mut |_| {}).await;
            drop(a); // a failed sender hangs up, as a socket closes
            out
        },
        drive::receive(r, &mut b, &sid, &session, &mut |_| {}),
    ));
    (sent.map(|rep| rep.sent), got.map(|rep| rep.received), b.acks)
}

fn incoming(r: &Replica<MemoryStore>, from: &Replica<MemoryStore>) -> i64 {
    block_on(r.store().peers()).unwrap().get(&from.head().db_id).map_or(-1, |p| p.incoming)
}

/// `result` is the protocol error naming `text`; `what` says which side took what.
fn refused(result: Result<u64, Error>, text: &str, what: &str) {
    match result {
        Err(Error::Sync(SyncError::Protocol(m))) => assert!(m.contains(text), "{m}"),
        other => panic!("{what}: {other:?}"),
    }
}

/// After a refused pass: `r` recorded no point for `s`, and a clean pass then completes
/// from the start.
fn nothing_claimed_then_a_clean_pass_completes(s: &Replica<MemoryStore>, r: &Replica<MemoryStore>) {
    assert_eq!(incoming(r, s), -1, "no point was recorded for the sender");
    let (sent, got, _) = snapshot_pass(s, r, never, never);
    assert_eq!((sent.unwrap(), got.unwrap()), (4, 4));
    assert_eq!(incoming(r, s), s.head().max_row as i64);
}

#[test]
fn each_snapshot_chunk_is_acked_with_the_documents_taken_so_far() {
    let s = sender_with(4);
    let r = replica_at(MemoryStore::new(), 2_000);
    let (sent, got, acks) = snapshot_pass(&s, &r, never, never);
    assert_eq!((sent.unwrap(), got.unwrap()), (4, 4), "a fresh receiver gets the 4 documents as a snapshot");
    assert_eq!(acks, vec![1, 2, 3, 4]);
    assert_eq!(incoming(&r, &s), s.head().max_row as i64);
}

#[test]
fn a_duplicated_snapshot_ack_ends_the_pass_and_claims_nothing() {
    let s = sender_with(4);
    let r = replica_at(MemoryStore::new(), 2_000);
    let (sent, got, acks) = snapshot_pass(&s, &r, never, acks);
    // The second copy of the first ack (1) is not the second chunk's ack (2): the sender
    // refuses it instead of sending the next chunk early and then the end.
    refused(sent, "ack for 1 snapshot documents, expected 2", "the sender took a duplicated ack");
    assert!(got.is_err(), "the receiver's pass ends without a point");
    assert_eq!(acks[..2], [1, 2]);
    nothing_claimed_then_a_clean_pass_completes(&s, &r);
}

#[test]
fn a_duplicated_snapshot_chunk_ends_the_pass_and_claims_nothing() {
    let s = sender_with(4);
    let r = replica_at(MemoryStore::new(), 2_000);
    let (sent, got, acks) = snapshot_pass(&s, &r, first_chunk, never);
    // The copy of the first chunk says it follows 0 documents, but the receiver has taken
    // 1: it is not the second chunk, and is not acked as if it were.
    refused(got, "a snapshot chunk after 0 documents; 1 taken so far", "the receiver took a duplicated chunk");
    assert!(sent.is_err(), "the sender's pass ends too");
    assert_eq!(acks, vec![1], "the copy was not acked");
    nothing_claimed_then_a_clean_pass_completes(&s, &r);
}
