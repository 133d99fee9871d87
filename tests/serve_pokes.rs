//! When the server's side of a connection (`drive::serve_as`) pokes its client.
//!
//! Between passes a poke goes out at once. During a pass it is held: sent when a push
//! ends (the client may not pull next), and dropped when a complete pull reached past it
//! (the client already has those rows) — thousands of clients in the middle of rounds are
//! not each poked at every commit. The signals are not even listened to during a pass:
//! they are taken when it ends (a token that expired meanwhile ends the connection then).
//! Driven one message at a time over in-memory pipes, with the client's own round
//! (`session::Round`), so what is asserted is the exact order of frames the client sees.

#![cfg(not(target_arch = "wasm32"))]

use std::cell::Cell;
use std::rc::Rc;

use futures::channel::mpsc;
use futures::executor::LocalPool;
use futures::task::LocalSpawnExt;
use futures::{FutureExt, StreamExt};
use serde_json::json;
use tidemark::memory::MemoryStore;
use tidemark::sync::drive::{self, Signal};
use tidemark::sync::session::Round;
use tidemark::sync::transport::{pipe, Pipe};
use tidemark::sync::{Direction, Limits, Message, Transport};
use tidemark::Replica;
use tidemark_testkit::scenarios::replica_at;

struct World {
    pool: LocalPool,
    server: Rc<Replica<MemoryStore>>,
    client: Replica<MemoryStore>,
    writer: Replica<MemoryStore>,
    /// The client's end of its connection to the server.
    conn: Pipe,
    signals: mpsc::UnboundedSender<Signal>,
    /// How many times the server's side polled its signals.
    polls: Rc<Cell<usize>>,
}

fn doc(id: &str, n: i64) -> serde_json::Map<String, serde_json::Value> {
    json!({"id": id, "n": n}).as_object().unwrap().clone()
}

fn world() -> World {
    let mut pool = LocalPool::new();
    let server = Rc::new(pool.run_until(Replica::open_relay(MemoryStore::new(), Box::new(|| 5_000))).unwrap());
    let (conn, at_server) = pipe();
    let (signals, mut landed) = mpsc::unbounded();
    let polls = Rc::new(Cell::new(0));
    let counted = polls.clone();
    let landed = futures::stream::poll_fn(move |cx| {
        counted.set(counted.get() + 1);
        landed.poll_next_unpin(cx)
    });
    let client = replica_at(MemoryStore::new(), 1_000);
    let id = client.head().db_id;
    let s = server.clone();
    pool.spawner()
        .spawn_local(async move {
            let mut t = at_server;
            let _ = drive::serve_as(s.as_ref(), &mut t, &id, Limits::default(), false, landed).await;
        })
        .unwrap();
    World { pool, server, client, writer: replica_at(MemoryStore::new(), 2_000), conn, signals, polls }
}

impl World {
    /// Another replica writes `n` documents through the server (a connection of its own);
    /// returns the server's max row after it.
    fn write_elsewhere(&mut self, n: usize) -> u64 {
        let at = self.writer.head().max_row as usize;
        let writes = (at..at + n).map(|i| tidemark::replica::Write::Put { collection: "docs".into(), doc: doc(&format!("w{i}"), i as i64) }).collect();
        self.pool.run_until(self.writer.write(writes)).unwrap();
        let (mut a, mut b) = pipe();
        let (wid, sid) = (self.writer.head().db_id, self.server.head().db_id);
        let session = tidemark::peer::new_session();
        let (sent, got) = self.pool.run_until(futures::future::join(
            drive::send(&self.writer, &mut a, &sid, &session, Limits::default(), &mut |_| {}),
            drive::receive(self.server.as_ref(), &mut b, &wid, &session, &mut |_| {}),
        ));
        assert_eq!(sent.unwrap().sent, got.unwrap().received);
        self.server.head().max_row
    }

    fn send(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            self.pool.run_until(self.conn.send(&m)).unwrap();
        }
    }

    /// Everything the server has sent by the time it waits again.
    fn drain(&mut self) -> Vec<Message> {
        self.pool.run_until_stalled();
        // Until nothing is waiting, or the server's side has closed the connection.
        std::iter::from_fn(|| self.conn.recv().now_or_never().and_then(Result::ok)).collect()
    }

    /// Runs one round of the client's (push, then pull), calling `during` once with the
    /// direction of the pass under way right after each of the server's answers is taken;
    /// returns every frame the server sent, in order.
    fn round(&mut self, mut during: impl FnMut(&mut World, Direction)) -> Vec<Message> {
        let sid = self.server.head().db_id;
        let (mut round, first) = self.pool.run_until(Round::start(&self.client, &sid, Limits::default())).unwrap();
        self.send(first);
        let mut seen = Vec::new();
        loop {
            let got = self.drain();
            assert!(!got.is_empty(), "the server answered nothing; frames so far: {seen:?}");
            let mut finished = false;
            let (from, mut closed) = (seen.len(), false);
            seen.extend(got.iter().cloned());
            for m in got {
                if closed || matches!(m, Message::Poke { .. }) {
                    continue;
                }
                assert!(!finished, "a frame after the round ended: {m:?}");
                // A refusal (the server's `error`) ends the round: the frames tell.
                let Ok(step) = self.pool.run_until(round.handle(&self.client, m, &mut |_| {})) else { return seen };
                finished = step.done.is_some();
                // The server may have closed the connection after what it sent.
                for out in step.out {
                    closed = closed || self.pool.run_until(self.conn.send(&out)).is_err();
                }
            }
            if closed {
                assert!(seen.len() > from, "closed without a word: {seen:?}");
                return seen;
            }
            if finished {
                // Anything the server sends once the round is over (a poke it held).
                seen.extend(self.drain());
                return seen;
            }
            during(self, round.direction());
        }
    }
}

impl World {
    /// A round during whose `pass` (once the server has answered in it) another replica
    /// writes `n` documents through the server and the server hears that rows landed;
    /// returns the frames and the max row the signal carried.
    fn round_landing(&mut self, pass: Direction, n: usize) -> (Vec<Message>, u64) {
        let mut landed = None;
        let frames = self.round(|w, direction| {
            if direction == pass && landed.is_none() {
                let max_row = if n == 0 { w.server.head().max_row } else { w.write_elsewhere(n) };
                w.signals.unbounded_send(Signal::Landed(max_row)).unwrap();
                landed = Some(max_row);
            }
        });
        (frames, landed.unwrap_or_else(|| panic!("the round had no {pass:?} pass")))
    }
}

fn pokes(frames: &[Message]) -> Vec<u64> {
    frames.iter().filter_map(|m| if let Message::Poke { max_row } = m { Some(*max_row) } else { None }).collect()
}

#[test]
fn between_passes_a_poke_goes_out_at_once() {
    let mut w = world();
    let max_row = w.write_elsewhere(2);
    w.signals.unbounded_send(Signal::Landed(max_row)).unwrap();
    assert_eq!(w.drain(), vec![Message::Poke { max_row }]);
}

#[test]
fn a_poke_during_a_push_waits_for_its_end() {
    let mut w = world();
    w.pool.run_until(w.client.put("docs", doc("mine", 1))).unwrap();
    let (frames, landed) = w.round_landing(Direction::Push, 1);
    assert_eq!(pokes(&frames), vec![landed], "one poke: {frames:?}");
    let done = frames.iter().position(|m| matches!(m, Message::Done { .. })).expect("the push's done");
    let poke = frames.iter().position(|m| matches!(m, Message::Poke { .. })).unwrap();
    assert_eq!(poke, done + 1, "held until the push ended, sent right after: {frames:?}");
}

#[test]
fn a_pull_that_reached_past_a_held_poke_drops_it_and_one_that_did_not_sends_it() {
    let mut w = world();
    // The pull takes every row up to the server's max row when it begins: a poke for rows
    // at or below that, held during the pull, tells the client nothing new.
    let before = w.write_elsewhere(3);
    let (frames, held) = w.round_landing(Direction::Pull, 0);
    assert_eq!(held, before);
    assert_eq!(pokes(&frames), Vec::<u64>::new(), "the pull reached past it: {frames:?}");
    let received: usize = frames.iter().map(|m| if let Message::Batch { rows, .. } = m { rows.len() } else { 0 }).sum();
    assert_eq!(received, 3);

    // Rows that land once the pull has begun are past what it reaches: the poke goes out
    // after the pull, so the client runs another round.
    let (frames, landed) = w.round_landing(Direction::Pull, 2);
    assert_eq!(pokes(&frames), vec![landed], "{frames:?}");
    assert!(matches!(frames.last(), Some(Message::Poke { .. })), "after the pull ended: {frames:?}");
    let end = frames.iter().find_map(|m| if let Message::End { max_row, .. } = m { Some(*max_row) } else { None }).unwrap();
    assert!(end < landed, "the pull reached {end}, the rows landed up to {landed}");
}

#[test]
fn signals_are_not_listened_to_during_a_pass_and_what_landed_is_taken_at_its_end() {
    let mut w = world();
    w.pool.run_until(w.client.put("docs", doc("mine", 1))).unwrap();
    let (mut polls_at, mut landed) = (None, Vec::new());
    let frames = w.round(|w, direction| {
        if direction != Direction::Push {
            return;
        }
        match polls_at {
            // Three commits land during the push, each signalled.
            None => {
                for _ in 0..3 {
                    let max_row = w.write_elsewhere(1);
                    w.signals.unbounded_send(Signal::Landed(max_row)).unwrap();
                    landed.push(max_row);
                }
                polls_at = Some(w.polls.get());
            }
            // The server took the client's next message in the pass and never looked.
            Some(at) => assert_eq!(w.polls.get(), at, "the signals were polled during the push"),
        }
    });
    assert!(polls_at.is_some(), "the push had more than one step: {frames:?}");
    assert_eq!(pokes(&frames), vec![*landed.last().unwrap()], "one poke, for the newest rows: {frames:?}");
    let done = frames.iter().position(|m| matches!(m, Message::Done { .. })).expect("the push's done");
    let poke = frames.iter().position(|m| matches!(m, Message::Poke { .. })).unwrap();
    assert_eq!(poke, done + 1, "taken when the push ended: {frames:?}");
}

#[test]
fn a_token_that_expires_during_a_pass_ends_the_connection_when_the_pass_ends() {
    let mut w = world();
    w.pool.run_until(w.client.put("docs", doc("mine", 1))).unwrap();
    let mut expired = false;
    let frames = w.round(|w, direction| {
        if direction == Direction::Push && !expired {
            w.signals.unbounded_send(Signal::Expired).unwrap();
            expired = true;
        }
    });
    let done = frames.iter().position(|m| matches!(m, Message::Done { .. })).unwrap_or_else(|| panic!("the push finished: {frames:?}"));
    let error = frames.iter().position(|m| matches!(m, Message::Error { code, .. } if code == "SYNC_TOKEN_EXPIRED")).unwrap_or_else(|| panic!("the expiry was told: {frames:?}"));
    assert!(error > done, "after the push: {frames:?}");
    assert!(!frames[done..].iter().any(|m| matches!(m, Message::Preflight { .. } | Message::Begin { .. })), "no pull was served after: {frames:?}");
    // The connection is over: the server's side has returned and dropped its end.
    assert!(w.pool.run_until(w.conn.recv()).is_err(), "the connection is closed");
}
