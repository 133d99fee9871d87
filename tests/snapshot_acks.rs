//! Snapshot chunks are acked by number (the model's `chunks_numbered` rule,
//! model/README.md §5): each ack names how many snapshot documents the receiver has taken,
//! so on a transport that duplicates or reorders, a repeated ack cannot pass for the next
//! chunk's — which let the sender end the snapshot while its last chunk was still on the
//! way, and the receiver's point claim documents it never merged.

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

/// The receiver's end of a pipe: records every ack it sends, and sends each one twice
/// when `duplicate` is set (a transport that duplicates frames).
struct Acks {
    inner: Pipe,
    duplicate: bool,
    sent: Vec<i64>,
}

impl Transport for Acks {
    async fn send(&mut self, msg: &Message) -> Result<(), SyncError> {
        if let Message::Ack { point, .. } = msg {
            self.sent.push(*point);
            if self.duplicate {
                self.inner.send(msg).await?;
            }
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

/// One pass from `s` to `r` (one document per chunk); both sides' results and the acks.
fn snapshot_pass(s: &Replica<MemoryStore>, r: &Replica<MemoryStore>, duplicate: bool) -> (Result<u64, Error>, Result<u64, Error>, Vec<i64>) {
    let (a, b) = pipe();
    let (mut a, mut b) = (a, Acks { inner: b, duplicate, sent: Vec::new() });
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
    (sent.map(|rep| rep.sent), got.map(|rep| rep.received), b.sent)
}

fn incoming(r: &Replica<MemoryStore>, from: &Replica<MemoryStore>) -> i64 {
    block_on(r.store().peers()).unwrap().get(&from.head().db_id).map_or(-1, |p| p.incoming)
}

#[test]
fn each_snapshot_chunk_is_acked_with_the_documents_taken_so_far() {
    let s = sender_with(4);
    let r = replica_at(MemoryStore::new(), 2_000);
    let (sent, got, acks) = snapshot_pass(&s, &r, false);
    assert_eq!((sent.unwrap(), got.unwrap()), (4, 4), "a fresh receiver gets the 4 documents as a snapshot");
    assert_eq!(acks, vec![1, 2, 3, 4]);
    assert_eq!(incoming(&r, &s), s.head().max_row as i64);
}

#[test]
fn a_duplicated_snapshot_ack_ends_the_pass_and_claims_nothing() {
    let s = sender_with(4);
    let r = replica_at(MemoryStore::new(), 2_000);
    let (sent, got, acks) = snapshot_pass(&s, &r, true);
    // The second copy of the first ack (1) is not the second chunk's ack (2): the sender
    // refuses it instead of sending the next chunk early and then the end.
    match sent {
        Err(Error::Sync(SyncError::Protocol(m))) => assert!(m.contains("ack for 1 snapshot documents, expected 2"), "{m}"),
        other => panic!("the sender took a duplicated ack: {other:?}"),
    }
    assert!(got.is_err(), "the receiver's pass ends without a point");
    assert_eq!(acks[..2], [1, 2]);
    assert_eq!(incoming(&r, &s), -1, "no point was recorded for the sender");
    // A clean pass afterwards completes from the start.
    let (sent, got, _) = snapshot_pass(&s, &r, false);
    assert_eq!((sent.unwrap(), got.unwrap()), (4, 4));
    assert_eq!(incoming(&r, &s), s.head().max_row as i64);
}
