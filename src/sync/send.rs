//! The sending role of a pass, as a sans-IO state machine: preflight, the choice between
//! snapshot and diffs, batches that cover echoes, the cap, and the forwarded table.
//!
//! `Sender::start` returns the preflight; `handle` takes each answer (`point`, `ack`,
//! `done`) and returns what to send next, until the pass is done.

use std::collections::BTreeMap;

use super::apply;
use super::message::{Message, SnapshotDoc, TableEntry};
use super::pass::{is_idle, unexpected, wants_snapshot, Limits, PassReport, Phase, Progress, Step};
use crate::error::{Error, SyncError};
use crate::peer::{PeerRecord, Point};
use crate::replica::Replica;
use crate::store::{DocKey, Head, Row, Store};

/// How many rows one batch may scan past (echoes) per row it may send, so a batch over
/// a long run of echoes still ends in bounded time.
const SCAN_FACTOR: usize = 50;

/// A pass being sent to `peer`.
pub struct Sender {
    peer: String,
    session: String,
    limits: Limits,
    report: PassReport,
    state: State,
}

enum State {
    /// Preflight sent; waiting for the receiver's point.
    Preflight { peers: BTreeMap<String, PeerRecord>, head: Head },
    /// Sending rows after `cursor`; `pending` is the batch waiting for its ack.
    Diffs { diffs: Diffs, pending: Option<Sent> },
    /// Sending documents after `after`; a chunk waits for its ack.
    Snapshot { after: Option<DocKey>, end: Point, total: u64, table: Vec<TableEntry>, pending: u64 },
    /// `end` sent; waiting for `done`.
    Ending { outcome: Outcome },
    Done,
}

/// The diff phase's position and the facts its decisions rest on.
struct Diffs {
    cursor: Point,
    start: Point,
    total: u64,
    /// Whether rows that came from the receiver may be skipped (see `continuous`).
    continuous: bool,
    table: Vec<TableEntry>,
    max_row: u64,
    matched: bool,
    point: Point,
}

/// A batch in flight: the point it covers and whether it reached the end of the log.
struct Sent {
    covers: Point,
    at_end: bool,
}

/// How the pass ends, recorded once `done` arrives.
enum Outcome {
    /// A snapshot or a complete pass that moved something: a new session at `end`.
    Complete(Point),
    /// A complete idle pass: `outgoing` only, no session.
    Idle(Point),
    Capped,
}

impl Sender {
    /// Starts a pass to `peer` (its db id) and returns the preflight to send.
    pub async fn start<S: Store>(replica: &Replica<S>, peer: &str, session: &str, limits: Limits) -> Result<(Sender, Message), Error> {
        // The table we may forward is the one from before the pass began.
        let peers = replica.store().peers().await?;
        let head = replica.head();
        let mine = peers.get(peer).cloned().unwrap_or_else(PeerRecord::new);
        let preflight = Message::Preflight {
            session: session.into(),
            db_id: head.db_id.clone(),
            max_row: head.max_row,
            schema_version: head.schema_version,
            sessions: mine.out_history.clone(),
        };
        let sender = Sender {
            peer: peer.to_string(),
            session: session.to_string(),
            limits: limits.sane(),
            report: PassReport::default(),
            state: State::Preflight { peers, head },
        };
        Ok((sender, preflight))
    }

    pub fn session(&self) -> &str {
        &self.session
    }

    /// Takes the receiver's next message.
    pub async fn handle<S: Store>(&mut self, replica: &Replica<S>, msg: Message, progress: &mut impl FnMut(Progress)) -> Result<Step<PassReport>, Error> {
        match (std::mem::replace(&mut self.state, State::Done), msg) {
            (State::Preflight { peers, head }, Message::Point { session, db_id, max_row, point, matched, candidates, sent_sessions, .. })
                if session == self.session =>
            {
                if db_id != self.peer {
                    return Err(SyncError::Protocol(format!("expected db {}, got {db_id}", self.peer)).into());
                }
                self.begin(replica, peers, head, point, matched, candidates, sent_sessions, max_row).await
            }
            (State::Diffs { diffs, pending: Some(sent) }, Message::Ack { session, point }) if session == self.session => {
                if point != sent.covers {
                    return Err(SyncError::Protocol(format!("ack for {point}, expected {}", sent.covers)).into());
                }
                self.acked(replica, diffs, sent, progress).await
            }
            (State::Snapshot { after, end, total, table, pending }, Message::Ack { session, point }) if session == self.session => {
                if point != self.report.start {
                    return Err(SyncError::Protocol(format!("ack for {point}, expected {}", self.report.start)).into());
                }
                self.report.sent += pending;
                self.report.batches += 1;
                progress(Progress { phase: Phase::Snapshot, done: self.report.sent, total });
                self.snapshot_chunk(replica, after, end, total, table).await
            }
            (State::Ending { outcome }, Message::Done { session }) if session == self.session => {
                match outcome {
                    Outcome::Complete(end) => apply::note_sent(replica, &self.peer, &self.session, end, true).await?,
                    Outcome::Idle(end) => apply::note_idle_sent(replica, &self.peer, end).await?,
                    Outcome::Capped => {}
                }
                Ok(Step::finish(vec![], std::mem::take(&mut self.report)))
            }
            (state, other) => {
                let want = match state {
                    State::Preflight { .. } => "point",
                    State::Diffs { .. } | State::Snapshot { .. } => "ack",
                    State::Ending { .. } => "done",
                    State::Done => "nothing (the pass is over)",
                };
                Err(unexpected(&other, want).into())
            }
        }
    }

    /// Chooses where to start and how (snapshot or diffs), and sends the first chunk.
    #[allow(clippy::too_many_arguments)]
    async fn begin<S: Store>(
        &mut self,
        replica: &Replica<S>,
        peers: BTreeMap<String, PeerRecord>,
        head: Head,
        point: Point,
        matched: Option<String>,
        candidates: Vec<crate::peer::Entry>,
        sent_sessions: Vec<String>,
        their_max: u64,
    ) -> Result<Step<PassReport>, Error> {
        let me = head.db_id.clone();
        let mine = peers.get(&self.peer).cloned().unwrap_or_else(PeerRecord::new);
        // Fast-forward through a transitive entry only if we still remember its session.
        let mut start = point.max(-1);
        let mut cands = candidates;
        cands.sort_by_key(|e| std::cmp::Reverse(e.row));
        for c in &cands {
            let remembered = peers.values().flat_map(|p| p.out_history.iter()).filter(|e| e.session == c.session).map(|e| e.row).max();
            if let Some(row) = remembered {
                start = start.max(c.row.min(row));
                break;
            }
        }
        start = start.min(head.max_row as Point);

        // Rows the peer wrote or gave us are not sent back — unless the peer may have lost
        // them: it answered from an older session than our newest, or has forgotten a
        // session in which it sent rows to us (it was restored from a backup).
        let continuous = mine.newest_out().map(|e| Some(&e.session) == matched.as_ref()).unwrap_or(true)
            && mine.in_history.iter().filter(|e| !e.transitive).all(|e| sent_sessions.contains(&e.session));

        let snapshot = (start as i128) < head.max_row as i128 && wants_snapshot(head.max_row, their_max, self.limits.per_diff);
        self.report = PassReport { start, end: start, snapshot, peer_max_row: their_max, ..Default::default() };
        let table: Vec<TableEntry> = peers
            .iter()
            .filter(|(id, _)| **id != self.peer && **id != me)
            .filter_map(|(id, rec)| {
                let e = rec.in_history.iter().max_by_key(|e| e.row)?;
                Some(TableEntry { db_id: id.clone(), row: e.row, session: e.session.clone() })
            })
            .collect();
        let begin = Message::Begin { session: self.session.clone(), start, snapshot };
        let mut step = if snapshot {
            let total = replica.store().doc_count().await?;
            self.snapshot_chunk(replica, None, head.max_row as Point, total, table).await?
        } else {
            let diffs = Diffs {
                cursor: start,
                start,
                total: (head.max_row as Point - start).max(0) as u64,
                continuous,
                table,
                max_row: head.max_row,
                matched: matched.is_some(),
                point,
            };
            self.next_batch(replica, diffs).await?
        };
        step.out.insert(0, begin);
        Ok(step)
    }

    /// Sends the next page of documents, or ends the snapshot.
    async fn snapshot_chunk<S: Store>(&mut self, replica: &Replica<S>, after: Option<DocKey>, end: Point, total: u64, table: Vec<TableEntry>) -> Result<Step<PassReport>, Error> {
        let page = replica.store().docs_after(after.as_ref(), self.limits.per_diff).await?;
        let Some((c, last)) = page.last() else {
            self.report.end = end;
            self.state = State::Ending { outcome: Outcome::Complete(end) };
            let msg = Message::End { session: self.session.clone(), complete: true, max_row: end.max(0) as u64, incoming: Some(table) };
            return Ok(Step::send(vec![msg]));
        };
        let next = Some((c.clone(), last.id.clone()));
        let docs: Vec<SnapshotDoc> = page.iter().map(|(c, d)| SnapshotDoc::from_stored(c, d)).collect();
        self.state = State::Snapshot { after: next, end, total, table, pending: docs.len() as u64 };
        Ok(Step::send(vec![Message::Snapshot { session: self.session.clone(), docs }]))
    }

    /// After an acked batch: records it, then sends the next batch or ends the pass.
    async fn acked<S: Store>(&mut self, replica: &Replica<S>, mut diffs: Diffs, sent: Sent, progress: &mut impl FnMut(Progress)) -> Result<Step<PassReport>, Error> {
        self.report.batches += 1;
        diffs.cursor = sent.covers;
        self.report.end = sent.covers;
        apply::note_sent(replica, &self.peer, &self.session, sent.covers, false).await?;
        let moved = (sent.covers - diffs.start).max(0) as u64;
        progress(Progress { phase: Phase::Rows, done: moved, total: diffs.total.max(moved) });
        if sent.at_end && replica.store().rows_after(diffs.cursor.max(0) as u64, 1).await?.is_empty() {
            Ok(self.end(diffs, true))
        } else {
            self.next_batch(replica, diffs).await
        }
    }

    /// Fills and sends the next batch with up to `per_diff` rows to send. Echoes are
    /// skipped without counting, but the batch still covers them so the receiver's point
    /// moves past. Ends the pass when nothing is left or the cap is reached.
    async fn next_batch<S: Store>(&mut self, replica: &Replica<S>, diffs: Diffs) -> Result<Step<PassReport>, Error> {
        if self.report.batches as usize >= self.limits.max_diffs {
            let complete = replica.store().rows_after(diffs.cursor.max(0) as u64, 1).await?.is_empty();
            return Ok(self.end(diffs, complete));
        }
        let per_diff = self.limits.per_diff;
        let sendable = |r: &Row| !diffs.continuous || (r.op.origin != self.peer && r.from.as_deref() != Some(self.peer.as_str()));
        let mut rows: Vec<Row> = Vec::new();
        let mut covers = diffs.cursor;
        let mut at_end = false;
        let mut scanned = 0usize;
        'fill: while rows.len() < per_diff && scanned < per_diff.saturating_mul(SCAN_FACTOR) {
            let chunk = replica.store().rows_after(covers.max(0) as u64, per_diff).await?;
            if chunk.len() < per_diff {
                at_end = true;
            }
            if chunk.is_empty() {
                break;
            }
            for r in chunk {
                covers = r.row as Point;
                scanned += 1;
                if sendable(&r) {
                    rows.push(r);
                    if rows.len() == per_diff {
                        at_end = false;
                        break 'fill;
                    }
                }
            }
            if at_end {
                break;
            }
        }
        if covers == diffs.cursor {
            return Ok(self.end(diffs, true));
        }
        self.report.sent += rows.len() as u64;
        let msg = Message::Batch { session: self.session.clone(), after: diffs.cursor, covers, rows };
        self.state = State::Diffs { diffs, pending: Some(Sent { covers, at_end }) };
        Ok(Step::send(vec![msg]))
    }

    /// Ends a diff pass; only a complete one forwards the table.
    fn end(&mut self, diffs: Diffs, complete: bool) -> Step<PassReport> {
        self.report.capped = !complete;
        let outcome = match complete {
            false => Outcome::Capped,
            true if is_idle(diffs.matched, diffs.point, diffs.start, diffs.cursor, false) => Outcome::Idle(diffs.cursor),
            true => Outcome::Complete(diffs.cursor),
        };
        self.state = State::Ending { outcome };
        Step::send(vec![Message::End {
            session: self.session.clone(),
            complete,
            max_row: diffs.max_row,
            incoming: complete.then_some(diffs.table),
        }])
    }
}
