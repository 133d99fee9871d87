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
    pub future_version: Option<u32>,
    /// Where the pass started in the sender's row space, and where it ended.
    pub start: Point,
    pub end: Point,
    /// The other side's max row, as it said in the preflight (or its answer).
    pub peer_max_row: u64,
    /// A received snapshot was built in a staging generation and swapped in: what it did.
    #[serde(skip_serializing_if = "Option::is_none")]
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

/// Whether the sender should send a snapshot instead of diffs: the receiver holds less
/// than half as many rows as the sender and the gap is more than one batch.
pub fn wants_snapshot(sender_max: u64, receiver_max: u64, per_diff: usize) -> bool {
    sender_max > 0 && (receiver_max as f64) / (sender_max as f64) < 0.5 && sender_max.saturating_sub(receiver_max) > per_diff as u64
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
