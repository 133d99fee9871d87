//! The simulated world: nodes, the network, the tasks that run the engine's protocol
//! machines (client rounds, server connections, server-to-server passes, local writes)
//! and the single-threaded executor that polls them in an order drawn from the seed.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use serde_json::json;
use tidemark::clock::Stamp;
use tidemark::error::Error;
use tidemark::op::Op;
use tidemark::store::Store;
use tidemark::sync::pass::Limits;
use tidemark::sync::session::RoundReport;
use tidemark::sync::{drive, Message, PassReport, Transport};
use tidemark::{Replica, Write};

use super::net::{End, Shared, BLOCKED};
use super::nodes::{Node, Now, Role};
use super::rng::Rng;
use super::store::SimStore;

/// What a finished task reports.
pub enum Outcome {
    /// A local write was acknowledged: its op, and the replica's clock before it.
    Wrote { node: usize, op: Op, before: Stamp },
    WriteFailed { node: usize, error: Error },
    Rounds(Result<Vec<RoundReport>, Error>),
    Pass(Result<PassReport, Error>),
    Served,
}

pub struct Task {
    /// The nodes whose crash ends this task.
    pub nodes: Vec<usize>,
    pub fut: Pin<Box<dyn Future<Output = Outcome>>>,
    /// The endpoint it waits on, if it waits for a frame.
    pub blocked: Option<(usize, usize)>,
    /// A client session (client, server) or a server pass (from, to).
    pub link: Option<(usize, usize)>,
}

/// Counts of what a run did.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub steps: u64,
    pub polls: u64,
    pub frames: u64,
    pub acked: u64,
    pub passes_ok: u64,
    pub passes_failed: u64,
    pub snapshots: u64,
    pub resets: u64,
    pub capped: u64,
    pub crashes: u64,
    pub backups: u64,
    pub restores: u64,
    pub cuts: u64,
    pub lost_by_restore: u64,
    pub quiesce_rounds: u64,
}

pub struct World {
    pub rng: Rng,
    pub now: Now,
    pub net: Shared,
    pub nodes: Vec<Node>,
    pub tasks: Vec<Task>,
    pub stats: Stats,
    /// Limits of every pass this run (small, so passes cap and snapshots happen).
    pub limits: Limits,
    /// Whether connections may duplicate and reorder frames.
    pub hostile: bool,
}

impl World {
    pub fn servers(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].role == Role::Server).collect()
    }

    pub fn clients(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].role != Role::Server).collect()
    }

    fn busy(&self, a: usize, b: usize) -> bool {
        self.tasks.iter().any(|t| t.link == Some((a, b)))
    }

    /// Starts a local write on client `node`: a put, patch or delete of a small id space.
    pub fn start_write(&mut self, node: usize) {
        let Role::Client(version) = self.nodes[node].role else { return };
        if self.nodes[node].writing {
            return;
        }
        let collection = if version >= 2 && self.rng.chance(1, 3) { "notes" } else { "docs" };
        let id = format!("{}{}", &collection[..1], self.rng.below(6));
        let n = self.rng.below(5);
        let tag = self.rng.below(1000);
        let w = match self.rng.below(6) {
            0 => Write::Delete { collection: collection.into(), id },
            1 | 2 => Write::Patch { collection: collection.into(), id, fields: obj(json!({"n": n})) },
            3 => Write::Patch { collection: collection.into(), id, fields: obj(json!({"a.x": tag, "a.y": n})) },
            _ => Write::Put { collection: collection.into(), doc: obj(json!({"id": id, "n": n, "a": {"x": tag}})) },
        };
        self.nodes[node].writing = true;
        let r = self.nodes[node].replica.clone();
        let fut = async move {
            match write(&r, w).await {
                Ok((op, before)) => Outcome::Wrote { node, op, before },
                Err(error) => Outcome::WriteFailed { node, error },
            }
        };
        self.tasks.push(Task { nodes: vec![node], fut: Box::pin(fut), blocked: None, link: None });
    }

    /// Connects client `c` to server `s`: the handshake, then one to three rounds.
    pub fn start_session(&mut self, c: usize, s: usize, rounds: usize, hostile: bool) {
        if self.busy(c, s) {
            return;
        }
        let (mut ce, mut se) = End::pair(&self.net, hostile);
        let limits = self.limits;
        let client = self.nodes[c].replica.clone();
        let client_id = self.nodes[c].db_id.clone();
        let cfut = async move {
            let result = async {
                let server = drive::hello(&client, &mut ce, "sim", None).await?;
                let mut reports = Vec::new();
                for _ in 0..rounds {
                    let rep = drive::round(&client, &mut ce, &server, limits, &mut |_, _| {}).await?;
                    let capped = rep.capped;
                    reports.push(rep);
                    if !capped && reports.len() > 1 {
                        break;
                    }
                }
                Ok(reports)
            }
            .await;
            Outcome::Rounds(result)
        };
        let server = self.nodes[s].replica.clone();
        let sfut = async move {
            let _ = serve(&server, &mut se, &client_id, limits).await;
            Outcome::Served
        };
        self.tasks.push(Task { nodes: vec![c], fut: Box::pin(cfut), blocked: None, link: Some((c, s)) });
        self.tasks.push(Task { nodes: vec![s], fut: Box::pin(sfut), blocked: None, link: None });
    }

    /// One pass from server `a` to server `b` (a peer link).
    pub fn start_pass(&mut self, a: usize, b: usize, hostile: bool) {
        if self.busy(a, b) {
            return;
        }
        let (mut ae, mut be) = End::pair(&self.net, hostile);
        let session = self.rng.hex_id();
        let limits = self.limits;
        let (ra, rb) = (self.nodes[a].replica.clone(), self.nodes[b].replica.clone());
        let (ida, idb) = (self.nodes[a].db_id.clone(), self.nodes[b].db_id.clone());
        let s2 = session.clone();
        let sender = async move { Outcome::Pass(drive::send(&ra, &mut ae, &idb, &session, limits, &mut |_| {}).await) };
        let receiver = async move {
            let _ = drive::receive(&rb, &mut be, &ida, &s2, &mut |_| {}).await;
            Outcome::Served
        };
        self.tasks.push(Task { nodes: vec![a], fut: Box::pin(sender), blocked: None, link: Some((a, b)) });
        self.tasks.push(Task { nodes: vec![b], fut: Box::pin(receiver), blocked: None, link: None });
    }

    /// Whether task `i` can make progress if polled.
    pub fn runnable(&self, i: usize) -> bool {
        match self.tasks[i].blocked {
            Some((conn, side)) => self.net.borrow().readable(conn, side),
            None => true,
        }
    }

    /// Polls task `i` once; returns its outcome if it finished.
    pub fn poll(&mut self, i: usize) -> Option<Outcome> {
        self.stats.polls += 1;
        BLOCKED.with(|b| b.set(None));
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        match self.tasks[i].fut.as_mut().poll(&mut cx) {
            Poll::Ready(o) => {
                self.tasks.remove(i);
                Some(o)
            }
            Poll::Pending => {
                self.tasks[i].blocked = BLOCKED.with(|b| b.get());
                None
            }
        }
    }

    /// A crash of `node`: every task it runs is dropped mid-await (its connections
    /// close), and it reopens from what its store committed — or from `backup`.
    pub fn crash(&mut self, node: usize, backup: Option<tidemark::memory::MemoryStore>) {
        let (dead, live): (Vec<Task>, Vec<Task>) = std::mem::take(&mut self.tasks).into_iter().partition(|t| t.nodes.contains(&node));
        self.tasks = live;
        drop(dead);
        let store = backup.unwrap_or_else(|| self.nodes[node].replica.store().committed());
        let now = self.now.clone();
        self.nodes[node].reopen(store, &now);
    }

    pub fn advance_clock(&mut self, ms: u64) {
        self.now.fetch_add(ms, Ordering::Relaxed);
    }
}

fn obj(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    v.as_object().expect("an object").clone()
}

/// A local write, and the op it logged: the newest local op of that document after it.
async fn write(r: &Rc<Replica<SimStore>>, w: Write) -> Result<(Op, Stamp), Error> {
    let head = r.store().head().await?.expect("an opened replica has a head");
    let (collection, id) = match &w {
        Write::Put { collection, doc } => (collection.clone(), doc["id"].as_str().unwrap_or_default().to_string()),
        Write::Patch { collection, id, .. } | Write::Resolve { collection, id, .. } | Write::Delete { collection, id } => (collection.clone(), id.clone()),
    };
    r.write(vec![w]).await?;
    let me = r.head().db_id;
    let rows = r.store().rows_after(head.max_row, usize::MAX).await?;
    let op = rows
        .into_iter()
        .filter(|row| row.is_own(&me) && !tidemark::layers::is_migration(&row.op.ts))
        .filter(|row| row.op.collection == collection && row.op.id == id)
        .map(|row| row.op)
        .max_by(|a, b| a.ts.cmp(&b.ts))
        .expect("an acknowledged write is in the log");
    Ok((op, head.clock))
}

/// The server's side of a client connection: the handshake, then `drive::serve`.
async fn serve(server: &Replica<SimStore>, t: &mut End, client: &str, limits: Limits) -> Result<(), Error> {
    match t.recv().await? {
        Message::Hello { db_id, .. } if db_id == client => {}
        other => return Err(tidemark::error::SyncError::Protocol(format!("expected hello, got {}", other.kind())).into()),
    }
    let head = server.head();
    t.send(&Message::Welcome { db_id: head.db_id, max_row: head.max_row, schema_version: head.schema_version }).await?;
    drive::serve(server, t, client, limits, futures::stream::pending()).await
}
