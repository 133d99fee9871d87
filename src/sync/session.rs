//! A connection between a client and a server, as sans-IO state machines: the opening
//! handshake (`hello`/`welcome`), the client's `Round` (push its rows, then pull the
//! server's) and the server's `Serve`, which answers the client's passes. Both ends run
//! the same `Sender` and `Receiver`, so client and server share one implementation.

use super::message::{Direction, Message};
use super::pass::{unexpected, Limits, PassReport, Progress, Step};
use super::receive::Receiver;
use super::send::Sender;
use crate::error::{Error, SyncError};
use crate::peer::new_session;
use crate::replica::Replica;
use crate::store::Store;

/// Longest session id a peer may choose.
pub const MAX_SESSION: usize = 64;

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
    /// The newest schema version of ops pulled but not applied, newer than the app's (the
    /// `futureVersion` event says the same): the app should upgrade.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(all(test, not(target_arch = "wasm32")), ts(optional))]
    pub future_version: Option<u32>,
    pub push: PassReport,
    pub pull: PassReport,
}

/// The client's greeting.
pub fn hello<S: Store>(replica: &Replica<S>, library: &str, token: Option<String>) -> Message {
    let head = replica.head();
    Message::Hello { library: library.into(), token, db_id: head.db_id.clone(), schema_version: head.schema_version }
}

/// Checks the server's answer to `hello`; returns the server's db id.
pub fn welcome<S: Store>(replica: &Replica<S>, msg: Message) -> Result<String, Error> {
    let me = replica.head().db_id;
    match msg {
        Message::Welcome { db_id, .. } if !db_id.is_empty() && db_id != me => Ok(db_id),
        Message::Welcome { .. } => Err(SyncError::Protocol("the server's db id is missing or equals ours".into()).into()),
        other => Err(unexpected(&other, "welcome").into()),
    }
}

/// One round from the client: a push pass, then a pull pass. `T` is the replica store's
/// staging generation (a pulled snapshot may be a reset).
pub struct Round<T> {
    server: String,
    limits: Limits,
    state: RoundState<T>,
}

enum RoundState<T> {
    Push(Sender),
    Pull { push: PassReport, receiver: Receiver<T> },
    Done,
}

impl<T: Store> Round<T> {
    /// Starts a round with `server` (its db id); returns the messages that open the push.
    pub async fn start<S: Store<Staging = T>>(replica: &Replica<S>, server: &str, limits: Limits) -> Result<(Round<T>, Vec<Message>), Error> {
        let session = new_session();
        let (sender, preflight) = Sender::start(replica, server, &session, limits).await?;
        let start = Message::Start { session, direction: Direction::Push, per_diff: limits.per_diff, max_diffs: limits.max_diffs };
        Ok((Round { server: server.to_string(), limits, state: RoundState::Push(sender) }, vec![start, preflight]))
    }

    /// Which pass is running (for progress reports).
    pub fn direction(&self) -> Direction {
        match self.state {
            RoundState::Push(_) => Direction::Push,
            _ => Direction::Pull,
        }
    }

    /// The pull's early ack of a snapshot chunk (`Receiver::ack_early`).
    pub fn ack_early(&mut self, msg: &Message) -> Option<Message> {
        match &mut self.state {
            RoundState::Pull { receiver, .. } => receiver.ack_early(msg),
            _ => None,
        }
    }

    /// Gives up (a lost connection): a reset under way is dropped.
    pub async fn abort<S: Store<Staging = T>>(&mut self, replica: &Replica<S>) {
        if let RoundState::Pull { receiver, .. } = &mut self.state {
            receiver.abort(replica).await;
        }
    }

    pub async fn handle<S: Store<Staging = T>>(&mut self, replica: &Replica<S>, msg: Message, progress: &mut impl FnMut(Progress)) -> Result<Step<RoundReport>, Error> {
        match &mut self.state {
            RoundState::Push(sender) => {
                let step = sender.handle(replica, msg, progress).await?;
                let Some(push) = step.done else { return Ok(Step::send(step.out)) };
                let session = new_session();
                let receiver = Receiver::new(&self.server, &session);
                let mut out = step.out;
                out.push(Message::Start { session, direction: Direction::Pull, per_diff: self.limits.per_diff, max_diffs: self.limits.max_diffs });
                self.state = RoundState::Pull { push, receiver };
                Ok(Step::send(out))
            }
            RoundState::Pull { receiver, .. } => {
                let step = receiver.handle(replica, msg, progress).await?;
                let Some(pull) = step.done else { return Ok(Step::send(step.out)) };
                let RoundState::Pull { push, .. } = std::mem::replace(&mut self.state, RoundState::Done) else { unreachable!() };
                let report = RoundReport {
                    sent: push.sent,
                    received: pull.received,
                    batches: push.batches + pull.batches,
                    capped: push.capped || pull.capped,
                    snapshot: pull.snapshot,
                    reset: pull.reset,
                    future_version: pull.future_version,
                    push,
                    pull,
                };
                Ok(Step::finish(step.out, report))
            }
            RoundState::Done => Err(unexpected(&msg, "nothing (the round is over)").into()),
        }
    }
}

/// The server's side of a connection, after the handshake: answers the client's passes.
/// The server's own limits cap what a client may ask for.
pub struct Serve<T> {
    client: String,
    limits: Limits,
    /// Whether the client's pushes are bound to its identity (`Receiver::bound`).
    bound: bool,
    pass: Option<Pass<T>>,
}

enum Pass<T> {
    Send(Sender),
    Receive(Receiver<T>),
}

impl<T: Store> Serve<T> {
    pub fn new(client: &str, limits: Limits) -> Serve<T> {
        Serve { client: client.to_string(), limits, bound: false, pass: None }
    }

    /// Binds the client's pushes to its identity: only ops it wrote itself are taken
    /// (a server's connections from clients; servers sharing the secret forward others').
    pub fn bound(mut self, yes: bool) -> Serve<T> {
        self.bound = yes;
        self
    }

    /// Whether no pass is running (the connection is between rounds).
    pub fn idle(&self) -> bool {
        self.pass.is_none()
    }

    /// Gives up (a lost connection): a pass under way is dropped.
    pub async fn abort<S: Store<Staging = T>>(&mut self, replica: &Replica<S>) {
        if let Some(Pass::Receive(r)) = &mut self.pass {
            r.abort(replica).await;
        }
        self.pass = None;
    }

    /// Takes the client's next message; `done` carries each finished pass's report.
    pub async fn handle<S: Store<Staging = T>>(&mut self, replica: &Replica<S>, msg: Message) -> Result<Step<PassReport>, Error> {
        let step = match (&mut self.pass, msg) {
            (None, Message::Start { session, direction, per_diff, max_diffs }) => {
                if session.is_empty() || session.len() > MAX_SESSION {
                    return Err(SyncError::Protocol("bad session id".into()).into());
                }
                let asked = Limits { per_diff: per_diff.clamp(1, self.limits.per_diff), max_diffs: max_diffs.clamp(1, self.limits.max_diffs) };
                match direction {
                    Direction::Push => {
                        self.pass = Some(Pass::Receive(Receiver::new(&self.client, &session).bound(self.bound)));
                        return Ok(Step::send(vec![]));
                    }
                    Direction::Pull => {
                        let (sender, preflight) = Sender::start(replica, &self.client, &session, asked).await?;
                        self.pass = Some(Pass::Send(sender));
                        return Ok(Step::send(vec![preflight]));
                    }
                }
            }
            (None, other) => return Err(unexpected(&other, "start").into()),
            (Some(Pass::Send(s)), msg) => s.handle(replica, msg, &mut |_| {}).await?,
            (Some(Pass::Receive(r)), msg) => r.handle(replica, msg, &mut |_| {}).await?,
        };
        if step.done.is_some() {
            self.pass = None;
        }
        Ok(step)
    }
}
