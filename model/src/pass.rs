//! One pass of the replication protocol, both roles, as the steps src/sync/pass.rs takes
//! (DESIGN §5): preflight, point, begin, batches or snapshot chunks each acknowledged, end,
//! done. Every function here is one atomic step of one side: it reads or commits the
//! side's store (one transaction) and sends what that side sends next. A crash between two
//! steps is the `Abort` action, which drops the pass with its connection.

use std::cmp::Reverse;

use crate::clock;
use crate::mutations::Rules;
use crate::scope::Scope;
use crate::state::*;

/// What a pass needs besides the state: the rules in force and the scope's caps.
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
    pub rules: &'a Rules,
    pub scope: &'a Scope,
}

impl Ctx<'_> {
    /// How histories are kept short.
    pub fn keep(&self) -> Keep {
        Keep { cap: self.scope.history, by_age: self.rules.history_evicts_oldest }
    }
}

/// What a delivered message did to its pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// The sender saw `done`: the pass ended, complete or capped.
    Finished { complete: bool },
    /// A side refused the message; the connection closes and the pass is gone.
    Aborted,
}

fn to_receiver(msg: Msg) -> Envelope {
    Envelope { to_receiver: true, msg }
}

fn to_sender(msg: Msg) -> Envelope {
    Envelope { to_receiver: false, msg }
}

/// Starts a pass from `s` to `r` with a fresh session: the sender takes its `incoming`
/// table (before the pass begins) and sends its preflight.
pub fn start(st: &mut State, s: Rid, r: Rid) {
    let session = st.next_session;
    st.next_session += 1;
    let store = &st.nodes[s as usize].store;
    let table = (0..st.nodes.len() as Rid)
        .filter(|&x| x != s && x != r)
        .filter_map(|x| {
            let e = store.peers[x as usize].inh.iter().max_by_key(|e| e.row)?;
            Some(TableEntry { replica: x, session: e.session, row: e.row })
        })
        .collect();
    let sessions = store.peers[r as usize].outh.clone();
    let pass = Pass {
        from: s,
        to: r,
        session,
        table,
        snd: Sender::AwaitPoint,
        rcv: Receiver::AwaitPreflight,
        chan: vec![to_receiver(Msg::Preflight { sessions })],
        steps: 0,
        durable: false,
    };
    let at = st.passes.partition_point(|p| (p.from, p.to) < (s, r));
    st.passes.insert(at, pass);
}

/// Delivers message `msg` of pass `idx` to its side.
pub fn deliver(st: &mut State, cx: Ctx, idx: usize, msg: usize) -> Flow {
    let mut p = st.passes.remove(idx);
    let env = p.chan.remove(msg);
    p.steps = p.steps.saturating_add(1);
    let flow = if env.to_receiver { on_receiver(st, cx, &mut p, env.msg) } else { on_sender(st, cx, &mut p, env.msg) };
    match flow {
        Flow::Continue => st.passes.insert(idx, p),
        Flow::Aborted => note_loss(st, &p),
        Flow::Finished { .. } => {}
    }
    flow
}

/// The second step of a batch committed in two (a batch rule off).
pub fn finish_batch(st: &mut State, cx: Ctx, idx: usize) {
    let p = &mut st.passes[idx];
    if let Receiver::Pending { open, covers, ops, noted } = std::mem::replace(&mut p.rcv, Receiver::Finished) {
        let (s, r) = (p.from, p.to);
        let store = &mut st.nodes[r as usize].store;
        if noted {
            for op in ops {
                store.merge(op, s);
            }
            p.chan.push(to_sender(Msg::Ack { point: covers }));
        } else {
            store.peers[s as usize].note_incoming(p.session, covers, false, cx.keep());
        }
        p.rcv = Receiver::Diffs { open, expected: covers };
    }
}

/// Cuts pass `idx` (a crash, a lost message, a timeout). Ghost: notes whether the receiver
/// loses progress it acknowledged.
pub fn abort(st: &mut State, idx: usize) {
    let p = st.passes.remove(idx);
    note_loss(st, &p);
}

/// Ghost: whether a pass that ends here leaves its receiver's durable point behind a batch
/// it acknowledged.
fn note_loss(st: &mut State, p: &Pass) {
    let acked = match p.rcv {
        Receiver::Diffs { open, expected } => (expected > open.start).then_some(expected),
        Receiver::Pending { open, noted: false, covers, .. } => (covers > open.start).then_some(covers),
        _ => None,
    };
    if acked.is_some_and(|a| st.nodes[p.to as usize].store.in_point(p.from, p.session).unwrap_or(0) < a) {
        st.lost_progress = true;
    }
}

/// Whether the receiver's wall clock refuses any of `ops` (checked before anything is stored).
fn refused(cx: Ctx, st: &State, r: Rid, ops: &[Op]) -> bool {
    cx.rules.clock_skew_check && ops.iter().any(|op| clock::too_far_ahead(&op.stamp, st.nodes[r as usize].now))
}

fn on_receiver(st: &mut State, cx: Ctx, p: &mut Pass, msg: Msg) -> Flow {
    let (s, r, session, keep) = (p.from, p.to, p.session, cx.keep());
    match (&p.rcv, msg) {
        (Receiver::AwaitPreflight, Msg::Preflight { sessions }) => {
            let rec = &st.nodes[r as usize].store.peers[s as usize];
            let found = if cx.rules.session_checked_point { rec.common_point(&sessions) } else { rec.newest_direct() };
            let (point, matched) = found.map_or((0, None), |(row, sess)| (row, Some(sess)));
            let candidates: Vec<Entry> = rec.inh.iter().filter(|e| e.row > point && Some(e.session) != matched).copied().collect();
            let ceiling = candidates.iter().map(|e| e.row).max().unwrap_or(0).max(point);
            let sent = rec.outh.iter().map(|e| e.session).collect();
            let marks = st.nodes[r as usize].store.marks;
            p.chan.push(to_sender(Msg::Point { point, matched, candidates, marks, sent }));
            p.rcv = Receiver::AwaitBegin { point, matched: matched.is_some(), ceiling };
            Flow::Continue
        }
        (&Receiver::AwaitBegin { point, matched, ceiling }, Msg::Begin { start, snapshot }) => {
            if start > ceiling {
                return Flow::Aborted;
            }
            let open = Opening { point, matched, start };
            p.rcv = if snapshot { Receiver::Snapshot { open, chunks: 0 } } else { Receiver::Diffs { open, expected: start } };
            Flow::Continue
        }
        (&Receiver::Diffs { open, expected }, Msg::Batch { after, covers, ops }) => {
            if after != expected || covers <= after || refused(cx, st, r, &ops) {
                return Flow::Aborted;
            }
            p.durable = true;
            let store = &mut st.nodes[r as usize].store;
            if !cx.rules.point_not_before_rows {
                store.peers[s as usize].note_incoming(session, covers, false, keep);
                p.rcv = Receiver::Pending { open, covers, ops, noted: true };
                return Flow::Continue;
            }
            let mut changed = false;
            for op in ops {
                changed |= store.merge(op, s);
            }
            p.chan.push(to_sender(Msg::Ack { point: covers }));
            if !cx.rules.point_in_batch_tx {
                p.rcv = Receiver::Pending { open, covers, ops: Vec::new(), noted: false };
                return Flow::Continue;
            }
            if cx.rules.stale_batch_advances || changed {
                store.peers[s as usize].note_incoming(session, covers, false, keep);
            }
            p.rcv = Receiver::Diffs { open, expected: covers };
            Flow::Continue
        }
        (&Receiver::Snapshot { open, chunks }, Msg::Chunk { index, ops }) => {
            if (cx.rules.chunks_numbered && index != chunks + 1) || refused(cx, st, r, &ops) {
                return Flow::Aborted;
            }
            p.durable = true;
            let store = &mut st.nodes[r as usize].store;
            for op in ops {
                store.merge(op, s);
            }
            let chunks = chunks + 1;
            let point = if cx.rules.chunks_numbered { chunks } else { open.start };
            p.chan.push(to_sender(Msg::Ack { point }));
            p.rcv = Receiver::Snapshot { open, chunks };
            Flow::Continue
        }
        (Receiver::Diffs { .. } | Receiver::Snapshot { .. }, Msg::End { complete, max_row, table, marks }) => {
            let (open, snapshot, end) = match p.rcv {
                Receiver::Diffs { open, expected } => (open, false, expected),
                Receiver::Snapshot { open, .. } => (open, true, max_row),
                _ => unreachable!(),
            };
            if snapshot && !complete {
                return Flow::Aborted;
            }
            p.durable = true;
            let idle = complete && open.matched && !snapshot && open.start == open.point && end == open.start;
            let store = &mut st.nodes[r as usize].store;
            if !idle {
                store.peers[s as usize].note_incoming(session, end, false, keep);
            }
            if complete || !cx.rules.table_only_when_complete {
                for e in table.iter().filter(|e| e.replica != r && e.replica != s) {
                    let rec = &mut store.peers[e.replica as usize];
                    if cx.rules.table_max_merges {
                        rec.note_incoming(e.session, e.row, true, keep);
                    } else {
                        rec.incoming = e.row;
                        rec.inh = vec![Entry { session: e.session, row: e.row, transitive: true }];
                    }
                }
            }
            if let (true, Some(theirs)) = (snapshot, marks) {
                for (mine, theirs) in store.marks.iter_mut().flatten().zip(theirs.iter().flatten()) {
                    *mine = (*mine).max(*theirs);
                }
            }
            if !complete && store.in_point(s, session).unwrap_or(0) <= open.start {
                st.lost_progress = true;
            }
            p.chan.push(to_sender(Msg::Done));
            p.rcv = Receiver::Finished;
            Flow::Continue
        }
        _ => Flow::Aborted,
    }
}

/// The real code's `continuous`: the receiver answered from our newest session with it and
/// still remembers every session in which it sent us rows.
fn continuous(mine: &PeerRecord, matched: Option<Session>, sent: &[Session]) -> bool {
    let newest = mine.outh.iter().max_by_key(|e| e.row).map(|e| Some(e.session) == matched).unwrap_or(true);
    newest && mine.inh.iter().filter(|e| !e.transitive).all(|e| sent.contains(&e.session))
}

fn skips(skip: &Skip, row: &LogRow, r: Rid) -> bool {
    match skip {
        Skip::Marks(m) => {
            let o = row.op.origin();
            m[o.replica as usize][o.inc as usize] >= row.op.seq
        }
        Skip::Echo { continuous } => *continuous && (row.op.origin().replica == r || row.from == r),
    }
}

fn on_sender(st: &mut State, cx: Ctx, p: &mut Pass, msg: Msg) -> Flow {
    let (s, r, session, keep) = (p.from, p.to, p.session, cx.keep());
    match (&p.snd, msg) {
        (Sender::AwaitPoint, Msg::Point { point, matched, candidates, marks, sent }) => {
            let store = &st.nodes[s as usize].store;
            // Fast-forward through the best transitive entry whose session we remember.
            let mut start = point;
            let mut cands = candidates;
            cands.sort_by_key(|e| Reverse(e.row));
            for c in &cands {
                if !cx.rules.fast_forward_session_check {
                    start = start.max(c.row);
                    break;
                }
                if let Some(q) = store.remembered(c.session) {
                    start = start.max(c.row.min(q));
                    break;
                }
            }
            let max_row = store.max_row();
            let start = start.min(max_row);
            // Seed 000's rule, on the gap since the last sync point.
            let gap = max_row - start;
            let snapshot = cx.scope.snapshots && gap > 0 && 2 * gap > max_row && gap > cx.scope.per_diff;
            p.chan.push(to_receiver(Msg::Begin { start, snapshot }));
            if snapshot {
                let ops = store.doc.iter().flatten().filter(|op| cx.rules.snapshot_carries_unkept || cx.scope.keeps(s, op.field)).copied().collect();
                p.snd = Sender::Snapshot { start, awaiting: 0, next: 0, ops, max_row, marks: store.marks };
                next_chunk(cx, p);
            } else {
                let skip = if cx.rules.echo_by_proof { Skip::Marks(marks) } else { Skip::Echo { continuous: continuous(&store.peers[r as usize], matched, &sent) } };
                let idle_at = matched.is_some().then_some(point);
                next_batch(st, cx, p, start, start, 0, skip, idle_at);
            }
            Flow::Continue
        }
        (Sender::Diffs { awaiting, .. }, Msg::Ack { point }) if point == *awaiting => {
            let Sender::Diffs { start, batches, skip, idle_at, .. } = std::mem::replace(&mut p.snd, Sender::AwaitPoint) else { unreachable!() };
            p.durable = true;
            st.nodes[s as usize].store.peers[r as usize].note_outgoing(session, point, keep);
            next_batch(st, cx, p, start, point, batches, skip, idle_at);
            Flow::Continue
        }
        (Sender::Snapshot { awaiting, .. }, Msg::Ack { point }) if point == *awaiting => {
            next_chunk(cx, p);
            Flow::Continue
        }
        (&Sender::AwaitDone { complete, end, idle }, Msg::Done) => {
            if complete && !idle {
                p.durable = true;
                st.nodes[s as usize].store.peers[r as usize].note_outgoing(session, end, keep);
            }
            Flow::Finished { complete }
        }
        _ => Flow::Aborted,
    }
}

/// Sends the next snapshot chunk (`per_diff` registers), or the end of the snapshot.
fn next_chunk(cx: Ctx, p: &mut Pass) {
    let Sender::Snapshot { start, awaiting, next, ops, max_row, marks } = &mut p.snd else { unreachable!() };
    let n = cx.scope.per_diff as usize;
    let from = *next as usize * n;
    if from < ops.len() {
        *next += 1;
        let index = if cx.rules.chunks_numbered { *next } else { 0 };
        p.chan.push(to_receiver(Msg::Chunk { index, ops: ops[from..(from + n).min(ops.len())].to_vec() }));
        // The real code acknowledges every chunk with the pass start.
        *awaiting = if cx.rules.chunks_numbered { *next } else { *start };
    } else {
        let (max_row, marks) = (*max_row, *marks);
        p.chan.push(to_receiver(Msg::End { complete: true, max_row, table: p.table.clone(), marks: Some(marks) }));
        p.snd = Sender::AwaitDone { complete: true, end: max_row, idle: false };
    }
}

/// Sends the next batch after `cursor`: up to `per_diff` rows to send, covering the rows
/// skipped before them (or every remaining row when fewer are left to send). Rows that are
/// only covered never count against `max_diffs`; the pass ends complete when nothing is
/// left after `cursor`, capped when rows to send remain after `max_diffs` batches.
#[allow(clippy::too_many_arguments)]
fn next_batch(st: &State, cx: Ctx, p: &mut Pass, start: Row, cursor: Row, batches: u8, skip: Skip, idle_at: Option<Row>) {
    let store = &st.nodes[p.from as usize].store;
    let max_row = store.max_row();
    if cursor >= max_row {
        let idle = idle_at == Some(start) && cursor == start;
        p.chan.push(to_receiver(Msg::End { complete: true, max_row, table: p.table.clone(), marks: None }));
        p.snd = Sender::AwaitDone { complete: true, end: cursor, idle };
        return;
    }
    let mut ops = Vec::new();
    let mut covers = cursor;
    for k in cursor + 1..=max_row {
        covers = k;
        let row = &store.log[k as usize - 1];
        if !skips(&skip, row, p.to) {
            ops.push(row.op);
            if ops.len() == cx.scope.per_diff as usize {
                break;
            }
        }
    }
    if !ops.is_empty() && batches >= cx.scope.max_diffs {
        let table = if cx.rules.table_only_when_complete { Vec::new() } else { p.table.clone() };
        p.chan.push(to_receiver(Msg::End { complete: false, max_row, table, marks: None }));
        p.snd = Sender::AwaitDone { complete: false, end: cursor, idle: false };
        return;
    }
    let batches = batches + u8::from(!ops.is_empty());
    p.chan.push(to_receiver(Msg::Batch { after: cursor, covers, ops }));
    p.snd = Sender::Diffs { start, cursor, awaiting: covers, batches, skip, idle_at };
}
