//! What both roles of a pass share (DESIGN §5): the caps, the report, the snapshot rule,
//! the idle-pass rule, and `Step`, what a protocol machine returns for each message.
//!
//! The roles themselves are sans-IO state machines: `send::Sender` and
//! `receive::Receiver` consume messages and return messages (reading and committing the
//! store as the rules require), never touching a socket. `session` strings them into a
//! client's round and a server's connection; `drive` runs any of them over a `Transport`.
//!
//! The rules that keep checkpoints honest:
//! - the receiver advances `incoming[S]` in the same transaction as each batch, to the last
//!   row the batch covers, even when every row in it was stale or an echo;
//! - a diff-capped pass claims nothing beyond its batches: no table, no `outgoing`;
//! - the sender's `incoming` table (taken before the pass) is forwarded only after a
//!   complete pass, with each entry's session so the origin can vouch for it later;
//! - a point is used only through a session both sides remember;
//! - rows the receiver provably holds (echoes, rows within its per-origin marks) are
//!   covered, not sent, and a batch that only covers rows does not count against the
//!   cap: a pass that sends nothing is never capped;
//! - an *idle* pass (complete, no batch, starting at the point of a session both sides
//!   already share) records no new session on either side, so replicas that poll each
//!   other do not push the sessions their points rely on out of the short history. Both
//!   sides decide this from the same facts (`matched`, `point`, `start`, the end).

use super::message::Message;
use super::reset::ResetReport;
use crate::error::SyncError;
use crate::peer::Point;
pub use crate::progress::{Phase, Progress};

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

impl Limits {
    /// At least one row per batch and one batch per pass.
    pub fn sane(self) -> Limits {
        Limits { per_diff: self.per_diff.max(1), max_diffs: self.max_diffs.max(1) }
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
    /// The other side's max row, as it said in the preflight (or its answer).
    pub peer_max_row: u64,
    /// A received snapshot was built in a staging generation and swapped in: what it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(all(test, not(target_arch = "wasm32")), ts(optional))]
    pub rebuilt: Option<ResetReport>,
}

/// What a protocol machine returns for one message: messages to send and, when it has
/// finished, its result. (Progress goes to the callback each machine is handed.)
#[derive(Debug)]
pub struct Step<T> {
    pub out: Vec<Message>,
    pub done: Option<T>,
}

impl<T> Step<T> {
    pub fn send(out: Vec<Message>) -> Step<T> {
        Step { out, done: None }
    }

    pub fn finish(out: Vec<Message>, done: T) -> Step<T> {
        Step { out, done: Some(done) }
    }
}

/// Seed 000's rule: the sender sends a snapshot instead of diffs when the rows it would
/// send since the receiver's point are more than half of its rows and more than one
/// batch, or when the point predates its compaction horizon (rows it no longer has).
/// The two sides' row counts are never compared: a replica that joined by snapshot holds
/// far fewer rows than its sender, and comparing counts made every later pull a snapshot.
pub fn wants_snapshot(sender_max: u64, rows_to_send: u64, per_diff: usize, predates_horizon: bool) -> bool {
    predates_horizon || rows_to_send > snapshot_threshold(sender_max, per_diff)
}

/// The ack of a snapshot chunk: the number of snapshot documents the receiver has taken
/// in the pass, that chunk included (each chunk carries the count before it, `after`).
/// With unnumbered chunks and acks, a duplicated chunk or ack passed for the next one,
/// and the sender ended the snapshot while its last chunk was lost: a point over
/// documents never merged (the model's `chunks_numbered` rule; tests/snapshot_acks.rs).
pub fn chunk_ack(docs: u64) -> Point {
    Point::try_from(docs).unwrap_or(Point::MAX)
}

/// The most rows a pass sends as diffs: half of the sender's rows, at least one batch.
pub fn snapshot_threshold(sender_max: u64, per_diff: usize) -> u64 {
    (sender_max / 2).max(per_diff as u64)
}

/// Whether a complete pass is idle: it started at the point of a session both sides
/// share (`matched`), was not fast-forwarded, and covered nothing.
pub fn is_idle(matched: bool, point: Point, start: Point, end: Point, snapshot: bool) -> bool {
    matched && !snapshot && start == point && end == start
}

/// The error for a message a machine did not expect in its state.
pub fn unexpected(got: &Message, want: &str) -> SyncError {
    match got {
        Message::Error { code, message } => SyncError::Remote { code: code.clone(), message: message.clone() },
        other => SyncError::Protocol(format!("expected {want}, got {}", other.kind())),
    }
}
