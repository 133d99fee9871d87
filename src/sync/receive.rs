//! The receiving role of a pass, as a sans-IO state machine: answers the preflight with
//! the point of the newest session both sides remember, checks that every batch follows
//! the last and stays inside what was agreed, and applies each batch in one commit with
//! the point it justifies (`apply`). A snapshot received by a replica with a schema is a
//! reset: it is built in a staging generation and swapped in at the end (`reset`); a
//! relay merges snapshot chunks as they come.

use std::collections::BTreeMap;

use super::apply;
use super::message::{Message, Table};
use super::pass::{chunk_ack, is_idle, unexpected, PassReport, Step};
use super::reset::Reset;
use crate::clock::Stamp;
use crate::error::{Error, SyncError};
use crate::peer::{Entry, Mark, PeerRecord, Point};
use crate::peer_records::PeerRecords;
use crate::progress::{Phase, Progress};
use crate::replica::Replica;
use crate::store::{Row, Store};

/// A pass being received from `peer`. `T` is the replica store's staging generation.
pub struct Receiver<T> {
    peer: String,
    session: String,
    report: PassReport,
    state: State,
    reset: Option<Reset<T>>,
    /// The newest stamp of each origin seen in snapshot documents, recorded at the end.
    newest: BTreeMap<String, Stamp>,
    /// Origins bound to identity: the peer may send only ops it wrote itself, by diffs,
    /// and its forwarded table is not taken (a server's client connections; see `bound`).
    bound: bool,
    /// The snapshot chunk being handled was acked on arrival (`ack_early`).
    acked_early: bool,
}

enum State {
    Preflight,
    /// Point sent; waiting for `begin`.
    Begin { point: Point, shared: bool, ceiling: Point, their_max: u64 },
    /// Receiving batches (or snapshot chunks) after `expected`.
    Receiving { snapshot: bool, shared: bool, point: Point, expected: Point, total: u64 },
    Done,
}

impl<T: Store> Receiver<T> {
    /// A pass from `peer` (its db id) under `session`; waits for the preflight.
    pub fn new(peer: &str, session: &str) -> Receiver<T> {
        Receiver { peer: peer.to_string(), session: session.to_string(), report: PassReport::default(), state: State::Preflight, reset: None, newest: BTreeMap::new(), bound: false, acked_early: false }
    }

    /// Binds the peer's ops to its identity: a row whose origin is not the peer's db id,
    /// a snapshot, or a forwarded table is refused (or, the table, ignored): a client
    /// cannot pass off ops as another replica's, which echo suppression would then hide
    /// from that replica forever.
    pub fn bound(mut self, yes: bool) -> Receiver<T> {
        self.bound = yes;
        self
    }

    /// Gives up: a reset under way is dropped and the live generation unsealed.
    pub async fn abort<S: Store<Staging = T>>(&mut self, replica: &Replica<S>) {
        if let Some(reset) = self.reset.take() {
            let _ = reset.abandon(replica, SyncError::Connection("the pass was cut off".into()).into()).await;
        }
    }

    pub fn session(&self) -> &str {
        &self.session
    }

    /// On a bound connection, every row must be the peer's own op.
    fn check_origins(&self, rows: &[Row]) -> Result<(), SyncError> {
        match rows.iter().find(|r| self.bound && r.op.origin != self.peer) {
            Some(r) => Err(SyncError::Protocol(format!(
                "row {} has origin {:?}: origins are bound to identity, a client pushes only its own ops (db id {})",
                r.row, r.op.origin, self.peer
            ))),
            None => Ok(()),
        }
    }

    /// The ack of a snapshot chunk bound for a staging generation, to send as soon as the
    /// chunk arrives, before it is staged: the sender reads and sends the next chunk while
    /// this one is written, instead of waiting for it (stop-and-wait). The ack claims no
    /// point (a snapshot's point comes with its end), so nothing depends on the chunk
    /// being staged yet; if staging it fails, the `error` that follows ends the pass on
    /// both sides as before, and the staging generation is dropped.
    pub fn ack_early(&mut self, msg: &Message) -> Option<Message> {
        match (&self.state, msg) {
            (State::Receiving { snapshot: true, .. }, Message::Snapshot { session, after, docs }) if self.reset.is_some() && *session == self.session && *after == self.report.received => {
                self.acked_early = true;
                Some(Message::Ack { session: self.session.clone(), point: chunk_ack(self.report.received + docs.len() as u64) })
            }
            _ => None,
        }
    }

    /// Takes the sender's next message.
    pub async fn handle<S: Store<Staging = T>>(&mut self, replica: &Replica<S>, msg: Message, progress: &mut impl FnMut(Progress)) -> Result<Step<PassReport>, Error> {
        let step = self.step(replica, msg, progress).await;
        if step.is_err() {
            self.abort(replica).await;
        }
        step
    }

    async fn step<S: Store<Staging = T>>(&mut self, replica: &Replica<S>, msg: Message, progress: &mut impl FnMut(Progress)) -> Result<Step<PassReport>, Error> {
        match (std::mem::replace(&mut self.state, State::Done), msg) {
            (State::Preflight, Message::Preflight { session, db_id, max_row, sessions, .. }) if session == self.session => {
                if db_id != self.peer {
                    return Err(SyncError::Protocol(format!("expected db {}, got {db_id}", self.peer)).into());
                }
                if sessions.len() > crate::limits::MAX_SESSIONS {
                    return Err(SyncError::Protocol(format!("{} sessions in a preflight; at most {}", sessions.len(), crate::limits::MAX_SESSIONS)).into());
                }
                let (rec, point, matched, marks) = replica
                    .store()
                    .with_peer_and_summary(&self.peer, |rec, all| {
                        let rec = rec.cloned().unwrap_or_else(PeerRecord::new);
                        let (point, matched) = match rec.common_point(&sessions) {
                            Some((p, s)) => (p, Some(s)),
                            None => (-1, None),
                        };
                        // Marks only matter when the sender has rows past the point.
                        let marks = if point < max_row as Point { answer_marks(all, &self.peer, self.bound) } else { Vec::new() };
                        (rec, point, matched, marks)
                    })
                    .await?;
                let candidates: Vec<Entry> = rec.in_history.iter().filter(|e| e.row > point && Some(&e.session) != matched.as_ref()).cloned().collect();
                let ceiling = candidates.iter().map(|e| e.row).chain([point]).max().unwrap_or(point);
                let head = replica.head();
                let shared = matched.is_some();
                self.state = State::Begin { point, shared, ceiling, their_max: max_row };
                Ok(Step::send(vec![Message::Point {
                    session: self.session.clone(),
                    db_id: head.db_id.clone(),
                    max_row: head.max_row,
                    schema_version: head.schema_version,
                    point,
                    matched,
                    candidates,
                    sent_sessions: rec.out_history.iter().map(|e| e.session.clone()).collect(),
                    marks,
                    own_only: self.bound,
                    older_as_snapshot: replica.rebuild().older_as_snapshot(),
                }]))
            }
            (State::Begin { point, shared, ceiling, their_max }, Message::Begin { session, start, snapshot, total, resolutions }) if session == self.session => {
                if start < -1 || start > ceiling || start > their_max as Point {
                    return Err(SyncError::Protocol(format!("begin at {start} is past what we agreed ({ceiling})")).into());
                }
                if snapshot && self.bound {
                    return Err(SyncError::Protocol("origins are bound to identity on this connection: send your own rows as diffs, not a snapshot".into()).into());
                }
                if !resolutions.is_empty() {
                    // Ahead of every row, uncapped (DESIGN §11): only resolutions, past the
                    // start, ascending, under the same identity rule as rows.
                    if snapshot || !resolutions.iter().all(|r| r.op.resolution) || !rows_within(&resolutions, start, their_max as Point) {
                        return Err(SyncError::Protocol("resolutions must be resolution rows past the start, ascending, and only ahead of diffs".into()).into());
                    }
                    self.check_origins(&resolutions)?;
                    let applied = apply::apply_rows(replica, &self.peer, &self.session, resolutions, None).await?;
                    note(&mut self.report, applied);
                }
                self.report = PassReport { start, end: start, snapshot, peer_max_row: their_max, ..Default::default() };
                // The sender's count of what it will move; for diffs no more than the gap.
                let gap = (their_max as Point).saturating_sub(start).max(0) as u64;
                let total = if snapshot { total } else { total.min(gap) };
                self.state = State::Receiving { snapshot, shared, point, expected: start, total };
                if snapshot && replica.schema().is_some() {
                    self.reset = Some(Reset::begin(replica, &self.peer, progress).await?);
                }
                Ok(Step::send(vec![]))
            }
            (State::Receiving { snapshot: false, shared, point, expected, total }, Message::Batch { session, after, covers, rows }) if session == self.session => {
                let rows = rows.into_decoded().map_err(SyncError::Protocol)?;
                if after != expected || covers <= after || !rows_within(&rows, after, covers) {
                    return Err(SyncError::Protocol(format!("batch ({after}, {covers}] does not follow {expected}")).into());
                }
                self.check_origins(&rows)?;
                let n = rows.len() as u64;
                let applied = apply::apply_rows(replica, &self.peer, &self.session, rows, Some(covers)).await?;
                note(&mut self.report, applied);
                self.report.received += n;
                self.report.batches += 1;
                self.report.end = covers;
                let start = self.report.start;
                self.state = State::Receiving { snapshot: false, shared, point, expected: covers, total };
                progress(Progress { phase: Phase::Rows, done: covers.saturating_sub(start) as u64, total });
                Ok(Step::send(vec![Message::Ack { session: self.session.clone(), point: covers }]))
            }
            (State::Receiving { snapshot: true, shared, point, expected, total }, Message::Snapshot { session, after, docs }) if session == self.session => {
                if after != self.report.received {
                    return Err(SyncError::Protocol(format!("a snapshot chunk after {after} documents; {} taken so far", self.report.received)).into());
                }
                let docs = docs.into_decoded().map_err(SyncError::Protocol)?;
                let n = docs.len() as u64;
                for (origin, stamp) in apply::newest_in_docs(&replica.head().db_id, &docs) {
                    if self.newest.get(&origin).is_none_or(|s| *s < stamp) {
                        self.newest.insert(origin, stamp);
                    }
                }
                let applied = match self.reset.as_mut() {
                    Some(reset) => reset.chunk(replica, docs).await?,
                    None => apply::apply_snapshot(replica, &self.peer, docs).await?,
                };
                note(&mut self.report, applied);
                self.report.received += n;
                self.report.batches += 1;
                self.state = State::Receiving { snapshot: true, shared, point, expected, total };
                progress(Progress { phase: Phase::Snapshot, done: self.report.received, total: total.max(self.report.received) });
                if std::mem::take(&mut self.acked_early) {
                    return Ok(Step::send(vec![]));
                }
                Ok(Step::send(vec![Message::Ack { session: self.session.clone(), point: chunk_ack(self.report.received) }]))
            }
            (State::Receiving { snapshot, shared, point, expected, .. }, Message::End { session, complete, max_row, incoming }) if session == self.session => {
                if snapshot && !complete {
                    return Err(SyncError::Protocol("a snapshot pass cannot end capped".into()).into());
                }
                // A snapshot's end becomes our point: no further than the max row the
                // sender declared in its preflight (a point past its rows would hide the
                // rows it writes next).
                if snapshot && max_row > self.report.peer_max_row {
                    return Err(SyncError::Protocol(format!("a snapshot ending at {max_row}, past the sender's max row {}", self.report.peer_max_row)).into());
                }
                let end = if snapshot { max_row as Point } else { expected };
                // A bound peer cannot vouch for other replicas: its table is not taken.
                let table = if complete && !self.bound { incoming.map(Table::into_decoded).transpose().map_err(SyncError::Protocol)?.unwrap_or_default() } else { Vec::new() };
                if table.len() > crate::limits::MAX_TABLE_ENTRIES {
                    return Err(SyncError::Protocol(format!("a forwarded table of {} entries; at most {}", table.len(), crate::limits::MAX_TABLE_ENTRIES)).into());
                }
                if let Some(e) = table.iter().find(|e| crate::limits::check_name("a db id", &e.db_id).and(crate::limits::check_name("a session", &e.session)).is_err()) {
                    return Err(SyncError::Protocol(format!("a forwarded table entry has a bad db id or session ({} / {} bytes)", e.db_id.len(), e.session.len())).into());
                }
                if let Some(reset) = self.reset.take() {
                    let rebuilt = reset.finish(replica, &self.session, end, table, std::mem::take(&mut self.newest), progress).await?;
                    self.report.reset = rebuilt.from_version.is_some();
                    self.report.rebuilt = Some(rebuilt);
                } else if complete && is_idle(shared, point, self.report.start, end, snapshot) {
                    apply::finish_idle(replica, &self.peer, table).await?;
                } else {
                    apply::finish_incoming(replica, &self.peer, &self.session, end, table, std::mem::take(&mut self.newest)).await?;
                }
                self.report.capped = !complete;
                self.report.end = end;
                Ok(Step::finish(vec![Message::Done { session: self.session.clone() }], std::mem::take(&mut self.report)))
            }
            (state, other) => {
                let want = match state {
                    State::Preflight => "preflight",
                    State::Begin { .. } => "begin",
                    State::Receiving { .. } => "batch, snapshot or end",
                    State::Done => "nothing (the pass is over)",
                };
                Err(unexpected(&other, want).into())
            }
        }
    }
}

fn note(report: &mut PassReport, a: apply::Applied) {
    report.reset |= a.older_version;
    if a.future_version > 0 {
        report.future_version = Some(report.future_version.unwrap_or(0).max(a.future_version));
    }
}

/// Rows must be strictly ascending and inside the range the batch claims to cover.
fn rows_within(rows: &[Row], after: Point, covers: Point) -> bool {
    rows.iter().all(|r| (r.row as Point) > after && (r.row as Point) <= covers) && rows.windows(2).all(|w| w[0].row < w[1].row)
}

/// The marks a preflight answer carries (the sender has rows past the point). A sender
/// bound to its identity sends only its own ops and covers every other row, so only the
/// mark of its own origin can spare it a row: that one alone, also when it is not among
/// the newest `MAX_MARKS` — a server answers each of its thousands of clients' pushes, and
/// building, sending and reading all the marks was much of such a pass.
fn answer_marks(all: &PeerRecords, peer: &str, bound: bool) -> Vec<Mark> {
    match bound {
        true => all.mark_of(peer).into_iter().collect(),
        false => all.marks(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::MAX_MARKS;

    #[test]
    fn a_bound_sender_gets_its_own_mark_alone_and_others_get_the_newest() {
        let record = |wall: u64, incoming: Point| PeerRecord { incoming, newest: Some(Stamp { version: 1, wall, counter: 0, node: "n".into() }), ..PeerRecord::new() };
        let mut records: BTreeMap<String, PeerRecord> = (0..MAX_MARKS as u64 + 10).map(|i| (format!("o{i:04}"), record(1_000 + i, 5))).collect();
        // The client's record is older than the newest MAX_MARKS.
        records.insert("client".into(), record(1, 7));
        let all = PeerRecords::new(records);
        let unbound = answer_marks(&all, "client", false);
        assert_eq!(unbound.len(), MAX_MARKS);
        assert!(unbound.iter().all(|m| m.origin != "client"));
        let bound = answer_marks(&all, "client", true);
        assert_eq!(bound, vec![Mark { origin: "client".into(), row: 7, stamp: Stamp { version: 1, wall: 1, counter: 0, node: "n".into() } }]);
        // No mark for a client the receiver holds nothing from.
        assert!(answer_marks(&all, "stranger", true).is_empty());
    }
}
