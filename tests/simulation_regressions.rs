//! Regressions found by the deterministic simulation (`tidemark_testkit::sim`, issue 14),
//! each named after the property it broke, with the seed that found it.

use futures::executor::block_on;
use serde_json::json;
use tidemark::memory::MemoryStore;
use tidemark::sync::pass::Limits;
use tidemark::Replica;
use tidemark_testkit::scenarios::{docs, pass, replica_at};

fn relay(wall: u64) -> Replica<MemoryStore> {
    block_on(Replica::open_relay(MemoryStore::new(), Box::new(move || wall))).unwrap()
}

fn put(r: &Replica<MemoryStore>, id: &str) {
    block_on(r.put("docs", json!({"id": id, "n": 1}).as_object().unwrap().clone())).unwrap();
}

/// Seed 7 (P2, then P1): a client pushed a write to server 1 and was then restored from a
/// backup older than it (same db id). Server 1 passed the write on to server 0, which had
/// never exchanged rows with the client. The client's next round with server 0 pushed
/// (so server 0's sessions with it all looked remembered) and pulled: server 0 skipped
/// the write as an echo because its origin was the client — yet covered it, so the
/// client's point passed a row it did not hold, and no server would ever send it back.
/// Rows are skipped as echoes only when they came from the receiver itself (within
/// sessions it still remembers), never because of their origin alone.
#[test]
fn no_acknowledged_write_is_lost_when_a_restored_client_pulls_from_another_server() {
    let limits = Limits::default();
    let (s0, s1) = (relay(1_000), relay(2_000));
    let client = replica_at(MemoryStore::new(), 3_000);
    put(&client, "before");
    let backup = client.store().backup();
    put(&client, "x");
    pass(&client, &s1, limits);
    pass(&s1, &s0, limits);
    // The client is restored from the backup: it no longer holds "x".
    let client = replica_at(backup, 4_000);
    assert_eq!(docs(&client).len(), 1);
    pass(&client, &s0, limits);
    pass(&s0, &client, limits);
    let ids: Vec<String> = docs(&client).iter().map(|d| d["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids, ["before", "x"], "the write the restore lost comes back from server 0");
}
