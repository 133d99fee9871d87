//! Running the sans-IO protocol machines over a `Transport`: send what a machine returns,
//! feed it what arrives (answering pings, skipping pongs and pokes), until it is done. A
//! local failure is told to the peer (one `error` message with the failure's code) before
//! it is returned; a lost connection or the peer's own refusal is not answered.

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
        // Liveness messages can come at any time; the machines never see them.
        let msg = match t.recv().await? {
            Message::Ping {} => {
                t.send(&Message::Pong {}).await?;
                continue;
            }
            Message::Pong {} | Message::Poke { .. } => continue,
            m => m,
        };
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

/// What a server tells a connection between the client's messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// Rows landed in the library: its max row is now this.
    Landed(u64),
    /// The token the connection was opened with has expired.
    Expired,
}

/// Server side, after the handshake: answers the client's passes (and pings) until it
/// disconnects. Between messages it passes on `signals`: a poke when rows land (so a
/// live client pulls at once), and the end of the connection when its token expires.
pub async fn serve<S: Store, T: Transport>(
    replica: &Replica<S>,
    t: &mut T,
    client: &str,
    limits: Limits,
    mut signals: impl futures::Stream<Item = Signal> + Unpin,
) -> Result<(), Error> {
    use futures::future::{select, Either};
    use futures::StreamExt;
    let mut serve = Serve::new(client, limits);
    let mut signalling = true;
    loop {
        let next = if signalling {
            match select(Box::pin(t.recv()), signals.next()).await {
                Either::Left((m, _)) => Either::Left(m),
                Either::Right((s, _)) => Either::Right(s),
            }
        } else {
            Either::Left(t.recv().await)
        };
        let msg = match next {
            Either::Right(Some(Signal::Landed(max_row))) => {
                t.send(&Message::Poke { max_row }).await?;
                continue;
            }
            Either::Right(Some(Signal::Expired)) => return Err(fail(t, SyncError::TokenExpired.into()).await),
            Either::Right(None) => {
                signalling = false;
                continue;
            }
            Either::Left(Ok(Message::Ping {})) => {
                t.send(&Message::Pong {}).await?;
                continue;
            }
            Either::Left(Ok(Message::Pong {})) => continue,
            Either::Left(Ok(m)) => m,
            Either::Left(Err(SyncError::Connection(_))) if serve.idle() => return Ok(()),
            Either::Left(Err(e)) => return Err(e.into()),
        };
        match serve.handle(replica, msg).await {
            Ok(step) => send_all(t, step.out).await?,
            Err(e) => return Err(fail(t, e).await),
        }
    }
}
