//! The sending role of a pass, as a sans-IO state machine: preflight, the choice between
//! snapshot and diffs, batches that cover what the receiver already holds, the cap, and
//! the forwarded table.
//!
//! `Sender::start` returns the preflight; `handle` takes each answer (`point`, `ack`,
//! `done`) and returns what to send next, until the pass is done.
//!
//! Rows the receiver provably holds are *covered* but not sent (`Filter`): echoes (rows it
//! wrote or gave us) and rows within its per-origin marks, wherever they came from. A
//! batch that only covers rows does not count against `maxDiffs`, so a pass that sends
//! nothing is never capped.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::apply;
use super::message::{BatchRows, Message, SnapshotDoc, SnapshotDocs, Table};
use super::pass::{chunk_ack, is_idle, unexpected, wants_snapshot, Limits, PassReport, Phase, Progress, Step};
use crate::clock::Stamp;
use crate::error::{Error, StoreError, SyncError};
use crate::layers::Layers;
use crate::peer::{Mark, PeerRecord, Point, MAX_MARKS};
use crate::peer_records::PeerRecords;
use crate::replica::Replica;
use crate::store::{DocKey, Head, Row, RowKey, Store};

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
    /// Preflight sent; waiting for the receiver's point. What the pass needs of the peer
    /// records taken before it began — the peer's own and the table to forward — not all
    /// of them: a server holds one per client, and every pass would hold them all.
    Preflight { known: Option<PeerRecord>, table: Table, head: Head },
    /// Sending rows after `cursor`; `pending` is the batch waiting for its ack.
    Diffs { diffs: Diffs, pending: Option<Sent> },
    /// Sending a snapshot from `at`; a chunk waits for its ack.
    Snapshot { at: Cursor, end: Point, total: u64, table: Table, pending: u64 },
    /// `end` sent; waiting for `done`.
    Ending { outcome: Outcome },
    Done,
}

/// Where a snapshot is: first the stored documents after a key, then (for a replica
/// with a schema) the log rows after a row of collections it does not store, so the
/// snapshot carries every row it covers.
enum Cursor {
    Docs(Option<DocKey>),
    Unkept(u64),
    /// Everything was sent: the next ack ends the snapshot.
    Done,
}

/// Which rows the receiver provably holds: they are covered, never sent.
struct Filter {
    peer: String,
    /// Whether rows the receiver wrote or gave us may be skipped: not if it may have lost
    /// them (it answered from an older session than our newest, or forgot a session in
    /// which it sent us rows — it was restored from a backup).
    echoes: bool,
    /// Its per-origin marks: (row, stamp) by origin (see `peer`).
    marks: HashMap<String, (Point, Stamp)>,
    /// Set (to our db id) when the receiver takes only our own ops: rows of other
    /// origins are covered, never sent.
    own: Option<String>,
}

impl Filter {
    fn sends(&self, r: &Row) -> bool {
        self.sends_op(&r.op.origin, r.op.origin_row, &r.op.ts, r.from.as_deref())
    }

    fn sends_key(&self, r: &RowKey) -> bool {
        self.sends_op(&r.op.origin, r.op.origin_row, &r.op.ts, r.from.as_deref())
    }

    /// Whether an op of `origin` (its row there and stamp), received from `from`, is sent.
    fn sends_op(&self, origin: &str, origin_row: u64, ts: &Stamp, from: Option<&str>) -> bool {
        if self.own.as_ref().is_some_and(|me| me != origin) {
            return false;
        }
        if self.echoes && (origin == self.peer || from == Some(self.peer.as_str())) {
            return false;
        }
        // A row numbered 0 (rebuilt from a snapshot's registers) proves nothing by its row.
        let held = origin_row > 0 && self.marks.get(origin).is_some_and(|(row, stamp)| origin_row as Point <= *row && ts <= stamp);
        !held
    }

    /// Whether the filter can skip anything at all.
    fn skips_nothing(&self, sender_knows_peer: bool) -> bool {
        self.marks.is_empty() && !sender_knows_peer && self.own.is_none()
    }
}

/// The diff phase's position and the facts its decisions rest on.
struct Diffs {
    cursor: Point,
    start: Point,
    total: u64,
    filter: Filter,
    /// Batches that carried rows: only those count against `maxDiffs`.
    filled: usize,
    table: Table,
    max_row: u64,
    matched: bool,
    point: Point,
}

/// A batch in flight: the point it covers.
struct Sent {
    covers: Point,
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
        let head = replica.head();
        let (table, known) = replica.store().with_peer_and_summary(peer, |known, all| (forwarded(all, peer, &head.db_id), known.cloned())).await?;
        let preflight = Message::Preflight {
            session: session.into(),
            db_id: head.db_id.clone(),
            max_row: head.max_row,
            schema_version: head.schema_version,
            sessions: known.as_ref().map(|k| k.out_history.clone()).unwrap_or_default(),
        };
        let sender = Sender {
            peer: peer.to_string(),
            session: session.to_string(),
            limits: limits.sane(),
            report: PassReport::default(),
            state: State::Preflight { known, table, head },
        };
        Ok((sender, preflight))
    }

    pub fn session(&self) -> &str {
        &self.session
    }

    /// Takes the receiver's next message.
    pub async fn handle<S: Store>(&mut self, replica: &Replica<S>, msg: Message, progress: &mut impl FnMut(Progress)) -> Result<Step<PassReport>, Error> {
        match (std::mem::replace(&mut self.state, State::Done), msg) {
            (State::Preflight { known, table, head }, Message::Point { session, db_id, max_row, schema_version, point, matched, candidates, sent_sessions, marks, own_only, older_as_snapshot })
                if session == self.session =>
            {
                if db_id != self.peer {
                    return Err(SyncError::Protocol(format!("expected db {}, got {db_id}", self.peer)).into());
                }
                if candidates.len() > crate::limits::MAX_SESSIONS || sent_sessions.len() > crate::limits::MAX_SESSIONS {
                    return Err(SyncError::Protocol(format!("a preflight answer with more than {} sessions", crate::limits::MAX_SESSIONS)).into());
                }
                if marks.len() > MAX_MARKS {
                    return Err(SyncError::Protocol(format!("{} marks in a preflight answer; at most {MAX_MARKS}", marks.len())).into());
                }
                self.begin(replica, known, table, head, Answer { point, matched, candidates, sent_sessions, their_max: max_row, their_version: schema_version, marks, own_only, older_as_snapshot }).await
            }
            (State::Diffs { diffs, pending: Some(sent) }, Message::Ack { session, point }) if session == self.session => {
                if point != sent.covers {
                    return Err(SyncError::Protocol(format!("ack for {point}, expected {}", sent.covers)).into());
                }
                self.acked(replica, diffs, sent, progress).await
            }
            (State::Snapshot { at, end, total, table, pending }, Message::Ack { session, point }) if session == self.session => {
                let want = chunk_ack(self.report.sent + pending);
                if point != want {
                    return Err(SyncError::Protocol(format!("ack for {point} snapshot documents, expected {want}")).into());
                }
                self.report.sent += pending;
                self.report.batches += 1;
                progress(Progress { phase: Phase::Snapshot, done: self.report.sent, total: total.max(self.report.sent) });
                self.snapshot_chunk(replica, at, end, total, table).await
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
    async fn begin<S: Store>(&mut self, replica: &Replica<S>, known: Option<PeerRecord>, table: Table, head: Head, answer: Answer) -> Result<Step<PassReport>, Error> {
        let Answer { point, matched, candidates, sent_sessions, their_max, their_version, marks, own_only, older_as_snapshot } = answer;
        let me = head.db_id.clone();
        let mine = known.clone().unwrap_or_else(PeerRecord::new);
        // Fast-forward through a transitive entry only if we still remember its session
        // (read now: a session remembered now carried rows up to its row then too).
        let mut start = point.max(-1);
        let mut cands = candidates;
        crate::sort::sort_by_key(&mut cands, |e| std::cmp::Reverse(e.row));
        let peers = if cands.is_empty() { BTreeMap::new() } else { replica.store().peers().await? };
        for c in &cands {
            let remembered = peers.values().flat_map(|p| p.out_history.iter()).filter(|e| e.session == c.session).map(|e| e.row).max();
            if let Some(row) = remembered {
                start = start.max(c.row.min(row));
                break;
            }
        }
        start = start.min(head.max_row as Point);

        let echoes = mine.newest_out().map(|e| Some(&e.session) == matched.as_ref()).unwrap_or(true)
            && mine.in_history.iter().filter(|e| !e.transitive).all(|e| sent_sessions.contains(&e.session));
        let own = own_only.then(|| me.clone());
        let filter = Filter { peer: self.peer.clone(), echoes, marks: marks.into_iter().map(|m: Mark| (m.origin, (m.row, m.stamp))).collect(), own };

        // Seed 000's rule on the gap since the receiver's point. The gap is what we would
        // send: when it looks big enough for a snapshot and the receiver may already hold
        // some of it (it has marks, or we know it), count the rows we would really send —
        // a moving client or a replica that joined by snapshot holds most of them.
        // Logs are never compacted (no store drops rows), so no point predates a horizon.
        let gap = (head.max_row as Point - start.max(0)).max(0) as u64;
        // A receiver that takes only our own ops gets them as diffs: a snapshot would
        // carry every origin's registers.
        let mut snapshot = !own_only && wants_snapshot(head.max_row, gap, self.limits.per_diff, false);
        if snapshot && !filter.skips_nothing(known.is_some()) {
            let threshold = super::pass::snapshot_threshold(head.max_row, self.limits.per_diff);
            let sending = count_sent(replica, start, threshold + 1, &filter).await?;
            snapshot = wants_snapshot(head.max_row, sending, self.limits.per_diff, false);
        }
        // Older-version data goes as a snapshot, staged and migrated in one batch (DESIGN
        // §6), where diffs would leave the receiver's migrations without what they read:
        // to a replica that never took rows from us (joining, perhaps holding unsynced
        // writes, which its reset re-applies), whose migrations then read every document —
        // also of collections its schema dropped, which a diff pass never stores; and to a
        // receiver whose migrations read other documents (`older_as_snapshot`), for a late
        // write of an older version as well. The rows this pass would send are looked at.
        if !snapshot && !own_only && gap > 0 && their_version > 0 && (point < 0 || older_as_snapshot) {
            let limit = self.limits.per_diff.saturating_mul(self.limits.max_diffs) as u64;
            snapshot = sends_older(replica, start, their_version, limit, &filter).await?;
        }
        self.report = PassReport { start, end: start, snapshot, peer_max_row: their_max, ..Default::default() };
        // A receiver that takes only our own ops gets no table.
        let table = if own_only { Table::Decoded(Vec::new()) } else { table };
        let total = if snapshot { doc_total(replica, head.max_row).await? } else { gap };
        // Resolutions go first, uncapped: no receiver shows a conflict already settled
        // (DESIGN §11). A snapshot carries them in its document states.
        let resolutions = match snapshot {
            true => Vec::new(),
            false => replica.store().resolutions_after(start.max(0) as u64).await?.into_iter().filter(|r| filter.sends(r)).collect(),
        };
        let begin = Message::Begin { session: self.session.clone(), start, snapshot, total, resolutions };
        let mut step = if snapshot {
            self.snapshot_chunk(replica, Cursor::Docs(None), head.max_row as Point, total, table).await?
        } else {
            let diffs = Diffs {
                cursor: start,
                start,
                total: gap,
                filter,
                filled: 0,
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

    /// Sends the next chunk of a snapshot — stored documents, then log rows of
    /// collections this replica does not store (rebuilt into document states) — or ends it.
    async fn snapshot_chunk<S: Store>(&mut self, replica: &Replica<S>, at: Cursor, end: Point, total: u64, table: Table) -> Result<Step<PassReport>, Error> {
        let (docs, next): (SnapshotDocs, Cursor) = match at {
            Cursor::Docs(after) => match stored_page(replica, after.as_ref(), self.limits.per_diff, end.max(0) as u64).await? {
                Some((docs, last)) => (docs, Cursor::Docs(Some(last))),
                None if replica.schema().is_some() => {
                    let (docs, next) = unkept_docs(replica, 0, end, self.limits.per_diff).await?;
                    (docs.into(), next)
                }
                None => (SnapshotDocs::Decoded(Vec::new()), Cursor::Done),
            },
            Cursor::Unkept(after) => {
                let (docs, next) = unkept_docs(replica, after, end, self.limits.per_diff).await?;
                (docs.into(), next)
            }
            Cursor::Done => (SnapshotDocs::Decoded(Vec::new()), Cursor::Done),
        };
        if docs.is_empty() {
            self.report.end = end;
            self.state = State::Ending { outcome: Outcome::Complete(end) };
            let msg = Message::End { session: self.session.clone(), complete: true, max_row: end.max(0) as u64, incoming: Some(table) };
            return Ok(Step::send(vec![msg]));
        }
        self.state = State::Snapshot { at: next, end, total, table, pending: docs.len() as u64 };
        Ok(Step::send(vec![Message::Snapshot { session: self.session.clone(), after: self.report.sent, docs }]))
    }

    /// After an acked batch: records it, then sends the next batch or ends the pass.
    async fn acked<S: Store>(&mut self, replica: &Replica<S>, mut diffs: Diffs, sent: Sent, progress: &mut impl FnMut(Progress)) -> Result<Step<PassReport>, Error> {
        self.report.batches += 1;
        diffs.cursor = sent.covers;
        self.report.end = sent.covers;
        apply::note_sent(replica, &self.peer, &self.session, sent.covers, false).await?;
        let moved = (sent.covers - diffs.start).max(0) as u64;
        progress(Progress { phase: Phase::Rows, done: moved, total: diffs.total.max(moved) });
        self.next_batch(replica, diffs).await
    }

    /// Fills and sends the next batch: up to `per_diff` rows to send (none once
    /// `max_diffs` batches carried rows), covering every row the receiver holds on the
    /// way, so its point moves past them. Ends the pass when nothing is left to cover
    /// (complete) or the next row to send does not fit (capped).
    async fn next_batch<S: Store>(&mut self, replica: &Replica<S>, mut diffs: Diffs) -> Result<Step<PassReport>, Error> {
        let per_diff = self.limits.per_diff;
        let room = if diffs.filled < self.limits.max_diffs { per_diff } else { 0 };
        let (rows, covers, blocked) = match fill_wire(replica, &diffs.filter, Filling::new(diffs.cursor, room, per_diff)).await? {
            Some(f) => (BatchRows::Wire(f.rows.into()), f.covers, f.blocked),
            None => {
                let f = fill_decoded(replica, &diffs.filter, Filling::new(diffs.cursor, room, per_diff)).await?;
                (BatchRows::Decoded(f.rows), f.covers, f.blocked)
            }
        };
        if covers == diffs.cursor {
            return Ok(self.end(diffs, !blocked));
        }
        if !rows.is_empty() {
            diffs.filled += 1;
        }
        self.report.sent += rows.len() as u64;
        let msg = Message::Batch { session: self.session.clone(), after: diffs.cursor, covers, rows };
        self.state = State::Diffs { diffs, pending: Some(Sent { covers }) };
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

/// A batch being filled (`Sender::next_batch`): up to `per_diff` rows to send (none when
/// `room` is 0: `max_diffs` batches carried rows), in whichever form the store gives them,
/// covering every row the receiver holds on the way, so its point moves past them.
struct Filling<T> {
    rows: Vec<T>,
    covers: Point,
    room: usize,
    per_diff: usize,
    /// The next row to send did not fit (the pass ends capped).
    blocked: bool,
    scanned: usize,
}

impl<T> Filling<T> {
    fn new(cursor: Point, room: usize, per_diff: usize) -> Self {
        Filling { rows: Vec::new(), covers: cursor, room, per_diff, blocked: false, scanned: 0 }
    }

    /// Whether to read more rows: the batch has room, and not too many were passed over.
    fn more(&self) -> bool {
        self.rows.len() < self.room.max(1) && self.scanned < self.per_diff.saturating_mul(SCAN_FACTOR)
    }

    /// Takes rows in order, each with its number and whether the filter sends it. False
    /// once the batch is full or the next row to send does not fit: the rows after it are
    /// not covered.
    fn take(&mut self, rows: impl Iterator<Item = (u64, bool, T)>) -> bool {
        for (row, sends, r) in rows {
            if sends {
                if self.rows.len() == self.room {
                    self.blocked = true;
                    return false;
                }
                self.covers = row as Point;
                self.rows.push(r);
                if self.rows.len() == self.per_diff {
                    return false;
                }
            } else {
                self.covers = row as Point;
            }
            self.scanned += 1;
        }
        true
    }
}

/// Fills a batch with rows as their wire text, if the store keeps them so
/// (`Store::with_wire_rows_after`); `None` if it does not.
async fn fill_wire<S: Store>(replica: &Replica<S>, filter: &Filter, mut fill: Filling<Arc<str>>) -> Result<Option<Filling<Arc<str>>>, Error> {
    while fill.more() {
        let at = fill.covers.max(0) as u64;
        let taken = replica
            .store()
            .with_wire_rows_after(at, fill.per_diff, |keys, texts| {
                let go_on = fill.take(keys.iter().zip(texts).map(|(k, t)| (k.row, filter.sends_key(k), t.clone())));
                (go_on, keys.last().map(|k| k.row))
            })
            .await?;
        let Some((go_on, last)) = taken else { return Ok(None) };
        let Some(last) = last.filter(|_| go_on) else { break };
        fill.covers = fill.covers.max(last as Point);
    }
    Ok(Some(fill))
}

/// Fills a batch with decoded rows. Rows the receiver sent us are never sent back while it
/// echoes: the store may pass over runs of them without reading them
/// (`Store::rows_after_except`).
async fn fill_decoded<S: Store>(replica: &Replica<S>, filter: &Filter, mut fill: Filling<Row>) -> Result<Filling<Row>, Error> {
    let echo = filter.echoes.then_some(filter.peer.as_str());
    while fill.more() {
        let (chunk, last) = replica.store().rows_after_except(fill.covers.max(0) as u64, fill.per_diff, echo).await?;
        let Some(last) = last else { break };
        if !fill.take(chunk.into_iter().map(|r| (r.row, filter.sends(&r), r))) {
            break;
        }
        // Every row up to `last` was passed: the ones left out came from the receiver.
        fill.covers = fill.covers.max(last as Point);
    }
    Ok(fill)
}

/// The table a pass to `peer` forwards, from the records taken before it began: the
/// newest incoming entry of every other peer. The table carries points, never stamps: a
/// receiver's per-origin mark takes its stamp only from ops it merged itself. Where rows
/// become visible out of order (several instances on PostgreSQL) a record can be ahead of
/// the rows a pass sends, and a forwarded stamp would let the mark cover rows the
/// receiver never got.
///
/// At most `MAX_FORWARDED` entries, those of the origins whose ops were merged most
/// recently (like the marks), newest first: a shorter table only fast-forwards less. A
/// server starts a pass for every pull of each of its clients over a table of all of them,
/// so the entries come from the records' newest-first order (`PeerRecords`), which it keeps
/// as records change, each entry already as its text: a pass shares them, copying none.
fn forwarded(peers: &PeerRecords, peer: &str, me: &str) -> Table {
    let entries: Vec<Arc<str>> = peers
        .ranked()
        .filter(|(id, _, _)| *id != peer && *id != me)
        .filter_map(|(_, _, r)| r.forward.clone())
        .take(crate::limits::MAX_FORWARDED)
        .collect();
    Table::Wire(entries.into())
}

/// The receiver's preflight answer, as `begin` uses it.
struct Answer {
    point: Point,
    matched: Option<String>,
    candidates: Vec<crate::peer::Entry>,
    sent_sessions: Vec<String>,
    their_max: u64,
    /// The receiver's schema version (0: a relay, which never migrates).
    their_version: u32,
    marks: Vec<Mark>,
    own_only: bool,
    /// Older-version rows must reach it as a snapshot (`Message::Point`).
    older_as_snapshot: bool,
}

/// The next page of stored documents after `after` as a snapshot sends them, and the key
/// of its last; `None` when there are no more. A store that keeps its documents as text (a
/// server's) hands them over as such, and they go out without being decoded.
/// A store whose pages many readers share (`Store::doc_pages`) hands out a page another
/// pull made while no document has changed since, and which holds every change up to the
/// snapshot's `end`.
async fn stored_page<S: Store>(replica: &Replica<S>, after: Option<&DocKey>, limit: usize, end: u64) -> Result<Option<(SnapshotDocs, DocKey)>, Error> {
    let shared = replica.store().doc_pages();
    if let Some((docs, last)) = shared.and_then(|p| p.get(after, limit, end)) {
        return Ok(Some((SnapshotDocs::Wire(docs), last)));
    }
    let seen = shared.and_then(|p| p.begin());
    if let Some(page) = replica.store().stored_texts_after(after, limit).await? {
        let Some(last) = page.last().map(|d| (d.collection.clone(), d.id.clone())) else { return Ok(None) };
        let docs = page.iter().map(|d| SnapshotDoc::wire_from_stored(&d.collection, &d.state).map_err(|e| StoreError::Corrupt(format!("document {:?} in {:?}: {e}", d.id, d.collection))));
        let docs: std::sync::Arc<[String]> = docs.collect::<Result<_, _>>()?;
        if let (Some(p), Some(seen)) = (shared, seen) {
            p.keep(seen, after, limit, (docs.clone(), last.clone()));
        }
        return Ok(Some((SnapshotDocs::Wire(docs), last)));
    }
    let page = replica.store().docs_after(after, limit).await?;
    let Some(last) = page.last().map(|(c, d)| (c.clone(), d.id.clone())) else { return Ok(None) };
    Ok(Some((SnapshotDocs::Decoded(page.into_iter().map(|(c, d)| SnapshotDoc::from_stored(c, d)).collect()), last)))
}

/// How many documents a snapshot ending at row `end` sends (its `total`): counted by the
/// store, or the count another pull made while no document has changed since
/// (`Store::doc_pages`, as `stored_page` shares pages).
async fn doc_total<S: Store>(replica: &Replica<S>, end: u64) -> Result<u64, Error> {
    let shared = replica.store().doc_pages();
    if let Some(n) = shared.and_then(|p| p.count(end)) {
        return Ok(n);
    }
    let seen = shared.and_then(|p| p.begin());
    let n = replica.store().doc_count().await?;
    if let (Some(p), Some(seen)) = (shared, seen) {
        p.keep_count(seen, n);
    }
    Ok(n)
}

/// How many rows after `start` the filter lets through, counting no further than `limit`.
/// Each read takes no more rows than could still be needed to reach `limit` (a server
/// counts this for every pull that looks like a snapshot).
async fn count_sent<S: Store>(replica: &Replica<S>, start: Point, limit: u64, filter: &Filter) -> Result<u64, Error> {
    let mut n = 0;
    walk_keys(replica, start, limit, |rows| {
        n += rows.iter().filter(|r| filter.sends_key(r)).count() as u64;
        limit.saturating_sub(n)
    })
    .await?;
    Ok(n)
}

/// Whether the first `limit` rows after `start` hold an op of a schema version below
/// `version` that `filter` sends. From the rows' keys alone: an op's stamp carries its
/// schema version (`apply::check_remote` refuses one whose does not).
async fn sends_older<S: Store>(replica: &Replica<S>, start: Point, version: u32, limit: u64, filter: &Filter) -> Result<bool, Error> {
    let (mut older, mut left) = (false, limit);
    walk_keys(replica, start, limit, |rows| {
        older = rows.iter().any(|r| r.op.ts.version < version && filter.sends_key(r));
        left = left.saturating_sub(rows.len() as u64);
        if older { 0 } else { left }
    })
    .await?;
    Ok(older)
}

/// Hands the keys of the rows after `start` to `f` a chunk at a time — at most 2,000 rows,
/// and no more than `f` last said it still wants (`want` at first) — until it wants none
/// or the log ends.
async fn walk_keys<S: Store>(replica: &Replica<S>, start: Point, want: u64, mut f: impl FnMut(&[RowKey]) -> u64) -> Result<(), Error> {
    const CHUNK: u64 = 2000;
    let (mut after, mut want) = (start.max(0) as u64, want);
    while want > 0 {
        let take = CHUNK.min(want) as usize;
        let chunk = replica.store().with_row_keys_after(after, take, |rows| Some((rows.last()?.row, f(rows)))).await?;
        let Some((last, more)) = chunk else { return Ok(()) };
        (after, want) = (last, more);
    }
    Ok(())
}

/// The next snapshot documents rebuilt from log rows (after row `after`, up to `end`) of
/// collections this replica does not store: a replica with a schema logs such rows to
/// forward them but keeps no document, and a snapshot must still carry them. Each run of
/// rows of one document becomes one state; the same document may come again later in
/// the log, which merging tolerates. Returns the documents and where to go on.
async fn unkept_docs<S: Store>(replica: &Replica<S>, after: u64, end: Point, per_diff: usize) -> Result<(Vec<SnapshotDoc>, Cursor), Error> {
    let keeps = |c: &str| replica.schema().is_none_or(|s| s.collection(c).is_some());
    let mut docs: Vec<SnapshotDoc> = Vec::new();
    let mut run: Option<(String, String, Layers)> = None;
    let mut at = after;
    let mut scanned = 0usize;
    let flush = |run: &mut Option<(String, String, Layers)>, docs: &mut Vec<SnapshotDoc>| {
        if let Some((c, id, layers)) = run.take() {
            docs.extend(SnapshotDoc::from_layers(&c, &id, layers));
        }
    };
    loop {
        let rows = replica.store().rows_after(at, per_diff.max(1)).await?;
        let done = rows.is_empty();
        for r in rows {
            if r.row as Point > end {
                flush(&mut run, &mut docs);
                return Ok((docs, Cursor::Done));
            }
            at = r.row;
            scanned += 1;
            if keeps(&r.op.collection) {
                continue;
            }
            if !run.as_ref().is_some_and(|(c, id, _)| *c == r.op.collection && *id == r.op.id) {
                flush(&mut run, &mut docs);
                run = Some((r.op.collection.clone(), r.op.id.clone(), Layers::default()));
            }
            if let Some((_, _, layers)) = run.as_mut() {
                layers.apply(&r.op);
            }
        }
        if done {
            flush(&mut run, &mut docs);
            return Ok((docs, Cursor::Done));
        }
        if docs.len() >= per_diff || (scanned >= per_diff.saturating_mul(SCAN_FACTOR) && !docs.is_empty()) {
            flush(&mut run, &mut docs);
            return Ok((docs, Cursor::Unkept(at)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Stamp;
    use crate::peer::Entry;

    fn record(wall: u64, row: Point) -> PeerRecord {
        let mut r = PeerRecord::new();
        r.in_history.push(Entry { session: format!("s{wall}"), row, transitive: false });
        r.newest = Some(Stamp { version: 1, wall, counter: 0, node: "n".into() });
        r
    }

    #[test]
    fn a_forwarded_table_keeps_the_most_recently_merged_origins() {
        let n = crate::limits::MAX_FORWARDED + 50;
        let mut peers: BTreeMap<String, PeerRecord> = (0..n as u64).map(|i| (format!("o{i:04}"), record(1_000 + i, i as Point))).collect();
        peers.insert("receiver".into(), record(9_999, 1));
        peers.insert("me".into(), record(9_999, 1));
        let table = forwarded(&PeerRecords::new(peers.clone()), "receiver", "me").into_decoded().unwrap();
        assert_eq!(table.len(), crate::limits::MAX_FORWARDED);
        let kept: std::collections::BTreeSet<_> = table.iter().map(|e| e.db_id.as_str()).collect();
        // The 50 oldest origins are left out; every newer one is there, with its entry.
        assert!((0..50).all(|i| !kept.contains(format!("o{i:04}").as_str())));
        assert!((50..n).all(|i| kept.contains(format!("o{i:04}").as_str())));
        assert!(table.iter().all(|e| e.session == format!("s{}", 1_000 + e.row) && e.db_id != "receiver" && e.db_id != "me"));
        // A small table is forwarded whole.
        let few: BTreeMap<_, _> = peers.into_iter().filter(|(id, _)| id.starts_with('o')).take(10).collect();
        assert_eq!(forwarded(&PeerRecords::new(few), "receiver", "me").len(), 10);
    }

    #[test]
    fn a_table_is_ordered_newest_first_with_ties_in_the_records_order() {
        // Stamps repeat (every 7th origin shares one), so ties decide part of the cut.
        let n = crate::limits::MAX_FORWARDED * 2 + 3;
        let peers: BTreeMap<String, PeerRecord> = (0..n as u64).map(|i| (format!("o{i:04}"), record(1_000 + (i * 37) % 7, i as Point))).collect();
        let table = forwarded(&PeerRecords::new(peers.clone()), "receiver", "me").into_decoded().unwrap();
        // What a stable sort of every entry by newest stamp, newest first, keeps.
        let mut all: Vec<(&String, &PeerRecord)> = peers.iter().collect();
        all.sort_by(|a, b| b.1.newest.cmp(&a.1.newest));
        let expected: Vec<&str> = all.iter().take(crate::limits::MAX_FORWARDED).map(|(id, _)| id.as_str()).collect();
        assert_eq!(table.iter().map(|e| e.db_id.as_str()).collect::<Vec<_>>(), expected);
    }
}
