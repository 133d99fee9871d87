//! One pass of the replication protocol, in both roles (DESIGN §5). Client, server and
//! server-to-server sync all run these two functions; only the transport differs.
//!
//! The rules that keep checkpoints honest live here:
//! - the receiver advances `incoming[S]` in the same transaction as each batch, to the last
//!   row the batch covers, even when every row in it was stale or an echo;
//! - a diff-capped pass claims nothing beyond its batches: no table, no `outgoing`;
//! - the sender's `incoming` table (taken before the pass) is forwarded only after a
//!   complete pass, with each entry's session so the origin can vouch for it later;
//! - a point is used only through a session both sides remember;
//! - an *idle* pass (complete, no batch, starting at the point of a session both sides
//!   already share) records no new session on either side, so replicas that poll each
//!   other do not push the sessions their points rely on out of the short history. Both
//!   sides decide this from the same facts (`matched`, `point`, `start`, the end).

use super::apply;
use super::message::{Message, SnapshotDoc, TableEntry};
use super::peer::{Entry, PeerRecord, Point};
use super::transport::Transport;
use crate::error::{Error, SyncError};
use crate::replica::Replica;
use crate::store::{Row, Store};

/// How many rows one batch may scan past (echoes) per row it may send, so a batch over
/// a long run of echoes still ends in bounded time.
const SCAN_FACTOR: usize = 50;

/// Batch size and per-pass cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub per_diff: usize,
    pub max_diffs: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { per_diff: 1000, max_diffs: 10 }
    }
}

/// What one pass did, from the side that ran it.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(all(test, not(target_arch = "wasm32")), derive(ts_rs::TS))]
pub struct PassReport {
    /// Rows (or snapshot documents) sent.
    pub sent: u64,
    /// Rows (or snapshot documents) received.
    pub received: u64,
    pub batches: u64,
    pub capped: bool,
    pub snapshot: bool,
    /// The pass received a snapshot with data written under an older schema version,
    /// migrated forward on arrival.
    pub reset: bool,
    /// The newest schema version of ops received but not applied (newer than the app's).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(all(test, not(target_arch = "wasm32")), ts(optional))]
    pub future_version: Option<u32>,
    /// Where the pass started in the sender's row space, and where it ended.
    pub start: Point,
    pub end: Point,
}

/// Progress during a long pass: rows or documents moved so far, and how many there are.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
#[cfg_attr(all(test, not(target_arch = "wasm32")), derive(ts_rs::TS))]
pub struct Progress {
    pub done: u64,
    pub total: u64,
}

/// Whether the sender should send a snapshot instead of diffs: the receiver holds less
/// than half as many rows as the sender and the gap is more than one batch.
pub fn wants_snapshot(sender_max: u64, receiver_max: u64, per_diff: usize) -> bool {
    sender_max > 0 && (receiver_max as f64) / (sender_max as f64) < 0.5 && sender_max.saturating_sub(receiver_max) > per_diff as u64
}

fn unexpected(got: &Message, want: &str) -> SyncError {
    match got {
        Message::Error { code, message } => SyncError::Remote { code: code.clone(), message: message.clone() },
        other => SyncError::Protocol(format!("expected {want}, got {}", other.kind())),
    }
}

/// Sends a protocol error to the peer (best effort) and returns it.
async fn refuse<T: Transport>(t: &mut T, e: SyncError) -> Error {
    if let SyncError::Protocol(m) = &e {
        let _ = t.send(&Message::Error { code: "PROTOCOL".into(), message: m.clone() }).await;
    }
    e.into()
}

/// Runs the sending side of a pass to `peer` (its db id).
pub async fn send<S: Store, T: Transport>(
    replica: &Replica<S>,
    t: &mut T,
    peer: &str,
    session: &str,
    limits: Limits,
    progress: &mut impl FnMut(Progress),
) -> Result<PassReport, Error> {
    let limits = Limits { per_diff: limits.per_diff.max(1), max_diffs: limits.max_diffs.max(1) };
    // The table we may forward is the one from before the pass began.
    let peers = replica.store().peers().await?;
    let mine = peers.get(peer).cloned().unwrap_or_else(PeerRecord::new);
    let head = replica.head();
    let me = head.db_id.clone();
    t.send(&Message::Preflight {
        session: session.into(),
        db_id: me.clone(),
        max_row: head.max_row,
        schema_version: head.schema_version,
        sessions: mine.out_history.clone(),
    })
    .await?;
    let (point, matched, candidates, sent_sessions, their_max) = match t.recv().await? {
        Message::Point { session: s, db_id, max_row, point, matched, candidates, sent_sessions, .. } if s == session => {
            if db_id != peer {
                return Err(refuse(t, SyncError::Protocol(format!("expected db {peer}, got {db_id}"))).await);
            }
            (point, matched, candidates, sent_sessions, max_row)
        }
        other => return Err(refuse(t, unexpected(&other, "point")).await),
    };

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
    // them: it answered from an older session than our newest, or has forgotten a session
    // in which it sent rows to us (it was restored from a backup).
    let continuous = mine.newest_out().map(|e| Some(&e.session) == matched.as_ref()).unwrap_or(true)
        && mine.in_history.iter().filter(|e| !e.transitive).all(|e| sent_sessions.contains(&e.session));

    let snapshot = (start as i128) < head.max_row as i128 && wants_snapshot(head.max_row, their_max, limits.per_diff);
    let idle = |end: Point| is_idle(matched.is_some(), point, start, end, snapshot);
    t.send(&Message::Begin { session: session.into(), start, snapshot }).await?;
    let mut report = PassReport { start, end: start, snapshot, ..Default::default() };

    let table: Vec<TableEntry> = peers
        .iter()
        .filter(|(id, _)| id.as_str() != peer && id.as_str() != me)
        .filter_map(|(id, rec)| {
            let e = rec.in_history.iter().max_by_key(|e| e.row)?;
            Some(TableEntry { db_id: id.clone(), row: e.row, session: e.session.clone() })
        })
        .collect();

    if snapshot {
        let (snap_head, docs) = replica.store().all_docs().await?;
        let total = docs.len() as u64;
        for chunk in docs.chunks(limits.per_diff) {
            let docs: Vec<SnapshotDoc> = chunk.iter().map(|(c, d)| SnapshotDoc::from_stored(c, d)).collect();
            t.send(&Message::Snapshot { session: session.into(), docs }).await?;
            expect_ack(t, session, start).await?;
            report.sent += chunk.len() as u64;
            report.batches += 1;
            progress(Progress { done: report.sent, total });
        }
        let end = snap_head.max_row as Point;
        t.send(&Message::End { session: session.into(), complete: true, max_row: snap_head.max_row, incoming: Some(table) }).await?;
        expect_done(t, session).await?;
        report.end = end;
        apply::note_sent(replica, peer, session, end, true).await?;
        return Ok(report);
    }

    let total = (head.max_row as Point - start).max(0) as u64;
    let sendable = |r: &Row| !continuous || (r.op.origin != peer && r.from.as_deref() != Some(peer));
    let mut cursor = start;
    let complete = loop {
        if report.batches as usize >= limits.max_diffs {
            break replica.store().rows_after(cursor.max(0) as u64, 1).await?.is_empty();
        }
        // Fill a batch with up to `per_diff` rows to send. Echoes are skipped without
        // counting, but the batch still covers them so the receiver's point moves past.
        let mut rows: Vec<Row> = Vec::new();
        let mut covers = cursor;
        let mut at_end = false;
        let mut scanned = 0usize;
        'fill: while rows.len() < limits.per_diff && scanned < limits.per_diff.saturating_mul(SCAN_FACTOR) {
            let chunk = replica.store().rows_after(covers.max(0) as u64, limits.per_diff).await?;
            if chunk.len() < limits.per_diff {
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
                    if rows.len() == limits.per_diff {
                        at_end = false;
                        break 'fill;
                    }
                }
            }
            if at_end {
                break;
            }
        }
        if covers == cursor {
            break true;
        }
        report.sent += rows.len() as u64;
        t.send(&Message::Batch { session: session.into(), after: cursor, covers, rows }).await?;
        expect_ack(t, session, covers).await?;
        report.batches += 1;
        cursor = covers;
        report.end = cursor;
        apply::note_sent(replica, peer, session, cursor, false).await?;
        progress(Progress { done: (cursor - start).max(0) as u64, total: total.max((cursor - start).max(0) as u64) });
        if at_end && replica.store().rows_after(cursor.max(0) as u64, 1).await?.is_empty() {
            break true;
        }
    };
    report.capped = !complete;
    t.send(&Message::End {
        session: session.into(),
        complete,
        max_row: head.max_row,
        incoming: complete.then_some(table),
    })
    .await?;
    expect_done(t, session).await?;
    if complete && idle(cursor) {
        apply::note_idle_sent(replica, peer, cursor).await?;
    } else if complete {
        apply::note_sent(replica, peer, session, cursor, true).await?;
    }
    Ok(report)
}

async fn expect_ack<T: Transport>(t: &mut T, session: &str, want: Point) -> Result<(), Error> {
    match t.recv().await? {
        Message::Ack { session: s, point } if s == session && point == want => Ok(()),
        Message::Ack { point, .. } => Err(refuse(t, SyncError::Protocol(format!("ack for {point}, expected {want}"))).await),
        other => Err(refuse(t, unexpected(&other, "ack")).await),
    }
}

async fn expect_done<T: Transport>(t: &mut T, session: &str) -> Result<(), Error> {
    match t.recv().await? {
        Message::Done { session: s } if s == session => Ok(()),
        other => Err(refuse(t, unexpected(&other, "done")).await),
    }
}

/// Whether a complete pass is idle: it started at the point of a session both sides
/// share (`matched`), was not fast-forwarded, and covered nothing.
fn is_idle(matched: bool, point: Point, start: Point, end: Point, snapshot: bool) -> bool {
    matched && !snapshot && start == point && end == start
}

/// Runs the receiving side of a pass from `peer` (its db id).
pub async fn receive<S: Store, T: Transport>(
    replica: &Replica<S>,
    t: &mut T,
    peer: &str,
    session: &str,
    progress: &mut impl FnMut(Progress),
) -> Result<PassReport, Error> {
    let their_max = match t.recv().await? {
        Message::Preflight { session: s, db_id, max_row, sessions, .. } if s == session => {
            if db_id != peer {
                return Err(refuse(t, SyncError::Protocol(format!("expected db {peer}, got {db_id}"))).await);
            }
            let rec = replica.store().peers().await?.remove(peer).unwrap_or_else(PeerRecord::new);
            let (point, matched) = match rec.common_point(&sessions) {
                Some((p, s)) => (p, Some(s)),
                None => (-1, None),
            };
            let candidates: Vec<Entry> = rec.in_history.iter().filter(|e| e.row > point && Some(&e.session) != matched.as_ref()).cloned().collect();
            let head = replica.head();
            let shared = matched.is_some();
            t.send(&Message::Point {
                session: session.into(),
                db_id: head.db_id.clone(),
                max_row: head.max_row,
                schema_version: head.schema_version,
                point,
                matched,
                candidates: candidates.clone(),
                sent_sessions: rec.out_history.iter().map(|e| e.session.clone()).collect(),
            })
            .await?;
            let ceiling = candidates.iter().map(|e| e.row).chain([point]).max().unwrap_or(point);
            match t.recv().await? {
                Message::Begin { session: s, start, snapshot } if s == session => {
                    if start < -1 || start > ceiling || start > max_row as Point {
                        return Err(refuse(t, SyncError::Protocol(format!("begin at {start} is past what we agreed ({ceiling})"))).await);
                    }
                    (max_row, start, snapshot, shared, point)
                }
                other => return Err(refuse(t, unexpected(&other, "begin")).await),
            }
        }
        other => return Err(refuse(t, unexpected(&other, "preflight")).await),
    };
    let (sender_max, start, snapshot, shared, point) = their_max;
    let mut report = PassReport { start, end: start, snapshot, ..Default::default() };
    let mut expected = start;
    let total = (sender_max as Point).saturating_sub(start).max(0) as u64;
    loop {
        match t.recv().await? {
            Message::Batch { session: s, after, covers, rows } if s == session && !snapshot => {
                if after != expected || covers <= after || !rows_within(&rows, after, covers) {
                    return Err(refuse(t, SyncError::Protocol(format!("batch ({after}, {covers}] does not follow {expected}"))).await);
                }
                let n = rows.len() as u64;
                match apply::apply_rows(replica, peer, session, rows, covers).await {
                    Ok(a) => note(&mut report, a),
                    Err(e) => return Err(refuse(t, to_protocol(e)).await),
                }
                t.send(&Message::Ack { session: session.into(), point: covers }).await?;
                expected = covers;
                report.received += n;
                report.batches += 1;
                report.end = covers;
                progress(Progress { done: covers.saturating_sub(start) as u64, total });
            }
            Message::Snapshot { session: s, docs } if s == session && snapshot => {
                let n = docs.len() as u64;
                match apply::apply_snapshot(replica, peer, docs).await {
                    Ok(a) => note(&mut report, a),
                    Err(e) => return Err(refuse(t, to_protocol(e)).await),
                }
                t.send(&Message::Ack { session: session.into(), point: expected }).await?;
                report.received += n;
                report.batches += 1;
                progress(Progress { done: report.received, total: report.received.max(n) });
            }
            Message::End { session: s, complete, max_row, incoming } if s == session => {
                if snapshot && !complete {
                    return Err(refuse(t, SyncError::Protocol("a snapshot pass cannot end capped".into())).await);
                }
                let end = if snapshot { max_row as Point } else { expected };
                let table = if complete { incoming.unwrap_or_default() } else { Vec::new() };
                if complete && is_idle(shared, point, start, end, snapshot) {
                    apply::finish_idle(replica, peer, table).await?;
                } else {
                    apply::finish_incoming(replica, peer, session, end, table).await?;
                }
                t.send(&Message::Done { session: session.into() }).await?;
                report.capped = !complete;
                report.end = end;
                return Ok(report);
            }
            other => return Err(refuse(t, unexpected(&other, "batch, snapshot or end")).await),
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

fn to_protocol(e: Error) -> SyncError {
    match e {
        Error::Sync(s) => s,
        other => SyncError::Protocol(format!("{}: {other}", other.code())),
    }
}
