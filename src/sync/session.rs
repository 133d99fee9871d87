//! A connection between a client and a server: the opening handshake, the client's round
//! (push its rows, then pull the server's), and the server's loop that answers passes.
//! Both ends call into `pass`, so client and server share one implementation.

use super::message::{Direction, Message};
use super::pass::{self, Limits, PassReport, Progress};
use super::peer::new_session;
use super::transport::Transport;
use crate::error::{Error, SyncError};
use crate::replica::Replica;
use crate::store::Store;

/// What one `syncNow()` did.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(all(test, not(target_arch = "wasm32")), derive(ts_rs::TS))]
pub struct RoundReport {
    /// Rows (or snapshot documents) pushed to the server.
    pub sent: u64,
    /// Rows (or snapshot documents) pulled from the server.
    pub received: u64,
    pub batches: u64,
    /// Whether either pass stopped at `maxDiffs`: call again to continue.
    pub capped: bool,
    /// Whether the server answered with a snapshot.
    pub snapshot: bool,
    /// Whether the local store was rebuilt from older-version data (schema migrations).
    pub reset: bool,
    pub push: PassReport,
    pub pull: PassReport,
}

/// Client side of the handshake; returns the server's db id.
pub async fn hello<S: Store, T: Transport>(replica: &Replica<S>, t: &mut T, library: &str, token: Option<String>) -> Result<String, Error> {
    let head = replica.head();
    t.send(&Message::Hello { library: library.into(), token, db_id: head.db_id.clone(), schema_version: head.schema_version }).await?;
    match t.recv().await? {
        Message::Welcome { db_id, .. } if !db_id.is_empty() && db_id != head.db_id => Ok(db_id),
        Message::Welcome { .. } => Err(SyncError::Protocol("the server's db id is missing or equals ours".into()).into()),
        Message::Error { code, message } => Err(SyncError::Remote { code, message }.into()),
        other => Err(SyncError::Protocol(format!("expected welcome, got {}", other.kind())).into()),
    }
}

/// One round from the client: push, then pull.
pub async fn round<S: Store, T: Transport>(
    replica: &Replica<S>,
    t: &mut T,
    server: &str,
    limits: Limits,
    progress: &mut impl FnMut(Direction, Progress),
) -> Result<RoundReport, Error> {
    let push = push(replica, t, server, limits, &mut |p| progress(Direction::Push, p)).await?;
    let pull = pull(replica, t, server, limits, &mut |p| progress(Direction::Pull, p)).await?;
    Ok(RoundReport {
        sent: push.sent,
        received: pull.received,
        batches: push.batches + pull.batches,
        capped: push.capped || pull.capped,
        snapshot: pull.snapshot,
        reset: pull.reset,
        push,
        pull,
    })
}

pub async fn push<S: Store, T: Transport>(replica: &Replica<S>, t: &mut T, server: &str, limits: Limits, progress: &mut impl FnMut(Progress)) -> Result<PassReport, Error> {
    let session = new_session();
    t.send(&Message::Start { session: session.clone(), direction: Direction::Push, per_diff: limits.per_diff, max_diffs: limits.max_diffs }).await?;
    pass::send(replica, t, server, &session, limits, progress).await
}

pub async fn pull<S: Store, T: Transport>(replica: &Replica<S>, t: &mut T, server: &str, limits: Limits, progress: &mut impl FnMut(Progress)) -> Result<PassReport, Error> {
    let session = new_session();
    t.send(&Message::Start { session: session.clone(), direction: Direction::Pull, per_diff: limits.per_diff, max_diffs: limits.max_diffs }).await?;
    pass::receive(replica, t, server, &session, progress).await
}

/// Server side, after the handshake: answers the client's passes until it disconnects.
/// The server's own limits cap what a client may ask for.
pub async fn serve<S: Store, T: Transport>(replica: &Replica<S>, t: &mut T, client: &str, limits: Limits) -> Result<(), Error> {
    loop {
        let msg = match t.recv().await {
            Ok(m) => m,
            Err(SyncError::Connection(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        match msg {
            Message::Start { session, direction, per_diff, max_diffs } => {
                if session.is_empty() || session.len() > 64 {
                    let _ = t.send(&Message::Error { code: "PROTOCOL".into(), message: "bad session id".into() }).await;
                    return Err(SyncError::Protocol("bad session id".into()).into());
                }
                let asked = Limits { per_diff: per_diff.clamp(1, limits.per_diff), max_diffs: max_diffs.clamp(1, limits.max_diffs) };
                match direction {
                    Direction::Push => pass::receive(replica, t, client, &session, &mut |_| {}).await?,
                    Direction::Pull => pass::send(replica, t, client, &session, asked, &mut |_| {}).await?,
                };
            }
            other => {
                let m = format!("expected start, got {}", other.kind());
                let _ = t.send(&Message::Error { code: "PROTOCOL".into(), message: m.clone() }).await;
                return Err(SyncError::Protocol(m).into());
            }
        }
    }
}
