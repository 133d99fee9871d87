//! Running the sans-IO protocol machines over a `Transport`: send what a machine returns,
//! feed it what arrives, until it is done. A local failure is told to the peer (one
//! `error` message with the failure's code) before it is returned; a lost connection or
//! the peer's own refusal is not answered.

use super::message::{Direction, Message};
use super::pass::{Limits, PassReport, Progress, Step};
use super::receive::Receiver;
use super::send::Sender;
use super::session::{self, Round, RoundReport, Serve};
use super::transport::Transport;
use crate::error::{Error, SyncError};
use crate::replica::Replica;
use crate::store::Store;

/// A protocol machine: takes one message, returns a `Step`.
#[allow(async_fn_in_trait)]
pub trait Machine {
    type Out;
    async fn step<S: Store>(&mut self, replica: &Replica<S>, msg: Message) -> Result<Step<Self::Out>, Error>;
}

impl Machine for Sender {
    type Out = PassReport;
    async fn step<S: Store>(&mut self, replica: &Replica<S>, msg: Message) -> Result<Step<PassReport>, Error> {
        self.handle(replica, msg).await
    }
}

impl Machine for Receiver {
    type Out = PassReport;
    async fn step<S: Store>(&mut self, replica: &Replica<S>, msg: Message) -> Result<Step<PassReport>, Error> {
        self.handle(replica, msg).await
    }
}

impl Machine for Round {
    type Out = RoundReport;
    async fn step<S: Store>(&mut self, replica: &Replica<S>, msg: Message) -> Result<Step<RoundReport>, Error> {
        self.handle(replica, msg).await
    }
}

/// The `error` message that tells the peer why this side gave up, when it should be
/// told: every local failure, but not a lost connection or the peer's own refusal.
pub fn refusal(e: &Error) -> Option<Message> {
    match e {
        Error::Sync(SyncError::Connection(_) | SyncError::Remote { .. }) => None,
        e => Some(Message::Error { code: e.code().to_string(), message: e.to_string() }),
    }
}

/// Tells the peer (best effort) and returns the error.
pub async fn fail<T: Transport>(t: &mut T, e: Error) -> Error {
    if let Some(m) = refusal(&e) {
        let _ = t.send(&m).await;
    }
    e
}

async fn send_all<T: Transport>(t: &mut T, out: Vec<Message>) -> Result<(), Error> {
    for m in out {
        t.send(&m).await?;
    }
    Ok(())
}

/// Runs `m` until it is done, after sending `first`.
pub async fn run<M: Machine, S: Store, T: Transport>(
    m: &mut M,
    replica: &Replica<S>,
    t: &mut T,
    first: Vec<Message>,
    progress: &mut impl FnMut(&M, Progress),
) -> Result<M::Out, Error> {
    send_all(t, first).await?;
    loop {
        let msg = t.recv().await?;
        let step = match m.step(replica, msg).await {
            Ok(s) => s,
            Err(e) => return Err(fail(t, e).await),
        };
        send_all(t, step.out).await?;
        if let Some(p) = step.progress {
            progress(m, p);
        }
        if let Some(out) = step.done {
            return Ok(out);
        }
    }
}

/// The client's handshake; returns the server's db id.
pub async fn hello<S: Store, T: Transport>(replica: &Replica<S>, t: &mut T, library: &str, token: Option<String>) -> Result<String, Error> {
    t.send(&session::hello(replica, library, token)).await?;
    let msg = t.recv().await?;
    session::welcome(replica, msg)
}

/// One round from the client: push, then pull.
pub async fn round<S: Store, T: Transport>(
    replica: &Replica<S>,
    t: &mut T,
    server: &str,
    limits: Limits,
    progress: &mut impl FnMut(Direction, Progress),
) -> Result<RoundReport, Error> {
    let (mut r, first) = Round::start(replica, server, limits).await?;
    run(&mut r, replica, t, first, &mut |r: &Round, p| progress(r.direction(), p)).await
}

/// Sends one pass to `peer` under `session` (tests and tools; clients use `round`).
pub async fn send<S: Store, T: Transport>(
    replica: &Replica<S>,
    t: &mut T,
    peer: &str,
    session: &str,
    limits: Limits,
    progress: &mut impl FnMut(Progress),
) -> Result<PassReport, Error> {
    let (mut s, preflight) = Sender::start(replica, peer, session, limits).await?;
    run(&mut s, replica, t, vec![preflight], &mut |_, p| progress(p)).await
}

/// Receives one pass from `peer` under `session`.
pub async fn receive<S: Store, T: Transport>(
    replica: &Replica<S>,
    t: &mut T,
    peer: &str,
    session: &str,
    progress: &mut impl FnMut(Progress),
) -> Result<PassReport, Error> {
    let mut r = Receiver::new(peer, session);
    run(&mut r, replica, t, vec![], &mut |_, p| progress(p)).await
}

/// Server side, after the handshake: answers the client's passes until it disconnects.
pub async fn serve<S: Store, T: Transport>(replica: &Replica<S>, t: &mut T, client: &str, limits: Limits) -> Result<(), Error> {
    let mut serve = Serve::new(client, limits);
    loop {
        let msg = match t.recv().await {
            Ok(m) => m,
            Err(SyncError::Connection(_)) if serve.idle() => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        match serve.handle(replica, msg).await {
            Ok(step) => send_all(t, step.out).await?,
            Err(e) => return Err(fail(t, e).await),
        }
    }
}
