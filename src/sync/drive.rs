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

/// A protocol machine over a replica whose store is `S`: takes one message, returns a
/// `Step`; `abort` drops what a cut-off exchange left under way (a reset's staging).
#[allow(async_fn_in_trait)]
pub trait Machine<S: Store> {
    type Out;
    async fn step<P: FnMut(Progress)>(&mut self, replica: &Replica<S>, msg: Message, progress: &mut P) -> Result<Step<Self::Out>, Error>;
    async fn abort(&mut self, replica: &Replica<S>);
    /// A message to send as soon as `msg` arrives, before `step` handles it.
    fn ack_early(&mut self, _msg: &Message) -> Option<Message> {
        None
    }
}

impl<S: Store> Machine<S> for Sender {
    type Out = PassReport;
    async fn step<P: FnMut(Progress)>(&mut self, replica: &Replica<S>, msg: Message, progress: &mut P) -> Result<Step<PassReport>, Error> {
        self.handle(replica, msg, progress).await
    }
    async fn abort(&mut self, _replica: &Replica<S>) {}
}

impl<S: Store> Machine<S> for Receiver<S::Staging> {
    type Out = PassReport;
    async fn step<P: FnMut(Progress)>(&mut self, replica: &Replica<S>, msg: Message, progress: &mut P) -> Result<Step<PassReport>, Error> {
        self.handle(replica, msg, progress).await
    }
    async fn abort(&mut self, replica: &Replica<S>) {
        Receiver::abort(self, replica).await
    }
    fn ack_early(&mut self, msg: &Message) -> Option<Message> {
        Receiver::ack_early(self, msg)
    }
}

impl<S: Store> Machine<S> for Round<S::Staging> {
    type Out = RoundReport;
    async fn step<P: FnMut(Progress)>(&mut self, replica: &Replica<S>, msg: Message, progress: &mut P) -> Result<Step<RoundReport>, Error> {
        self.handle(replica, msg, progress).await
    }
    async fn abort(&mut self, replica: &Replica<S>) {
        Round::abort(self, replica).await
    }
    fn ack_early(&mut self, msg: &Message) -> Option<Message> {
        Round::ack_early(self, msg)
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

/// Runs `m` until it is done, after sending `first`. If the exchange fails anywhere —
/// here, at the peer, or on the wire — the machine is aborted first.
pub async fn run<S: Store, M: Machine<S>, T: Transport>(m: &mut M, replica: &Replica<S>, t: &mut T, first: Vec<Message>, progress: &mut impl FnMut(Progress)) -> Result<M::Out, Error> {
    let result = exchange(m, replica, t, first, progress).await;
    if result.is_err() {
        m.abort(replica).await;
    }
    result
}

async fn exchange<S: Store, M: Machine<S>, T: Transport>(m: &mut M, replica: &Replica<S>, t: &mut T, first: Vec<Message>, progress: &mut impl FnMut(Progress)) -> Result<M::Out, Error> {
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
        if let Some(ack) = m.ack_early(&msg) {
            t.send(&ack).await?;
        }
        let step = match m.step(replica, msg, progress).await {
            Ok(s) => s,
            Err(e) => return Err(fail(t, e).await),
        };
        send_all(t, step.out).await?;
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
    let (mut round, first) = Round::start(replica, server, limits).await?;
    run(&mut Tracked { round: &mut round, progress }, replica, t, first, &mut |_| {}).await
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
    run(&mut s, replica, t, vec![preflight], progress).await
}

/// Receives one pass from `peer` under `session`.
pub async fn receive<S: Store, T: Transport>(
    replica: &Replica<S>,
    t: &mut T,
    peer: &str,
    session: &str,
    progress: &mut impl FnMut(Progress),
) -> Result<PassReport, Error> {
    let mut r = Receiver::<S::Staging>::new(peer, session);
    run(&mut r, replica, t, vec![], progress).await
}

/// A round whose progress reports say which pass they are about.
struct Tracked<'a, T, F> {
    round: &'a mut Round<T>,
    progress: &'a mut F,
}

impl<S: Store, F: FnMut(Direction, Progress)> Machine<S> for Tracked<'_, S::Staging, F> {
    type Out = RoundReport;
    async fn step<P: FnMut(Progress)>(&mut self, replica: &Replica<S>, msg: Message, _: &mut P) -> Result<Step<RoundReport>, Error> {
        let direction = self.round.direction();
        let outer = &mut *self.progress;
        self.round.handle(replica, msg, &mut |p| outer(direction, p)).await
    }
    async fn abort(&mut self, replica: &Replica<S>) {
        self.round.abort(replica).await
    }
    fn ack_early(&mut self, msg: &Message) -> Option<Message> {
        self.round.ack_early(msg)
    }
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
///
/// A poke is sent at once only between passes. During a pass — or while the client's pull
/// waits for the server's turn (`Transport::waiting`) — it is held and sent when the pass
/// ends, and dropped when that pass was a complete pull that reached past it (the client
/// already has those rows). While thousands of clients run rounds at once, every commit
/// would otherwise poke every one of them in the middle of its pass, or of its wait, for
/// nothing: the pull they are about to run (or running) takes the rows anyway.
///
/// Meanwhile the signals are not even listened to: they are taken, all at once, when the
/// pass ends. Listening, each commit woke every connection in a pass or waiting for its
/// turn, and cut short the `recv` it was in, to be made anew — with 2,000 connections
/// waiting for a place and commits landing one small group after another, that was about
/// half of the server's CPU. So a token that expires during a pass (or its wait for a
/// place) ends the connection when the pass ends.
pub async fn serve<S: Store, T: Transport>(
    replica: &Replica<S>,
    t: &mut T,
    client: &str,
    limits: Limits,
    signals: impl futures::Stream<Item = Signal> + Unpin,
) -> Result<(), Error> {
    serve_as(replica, t, client, limits, false, signals).await
}

/// `serve`, with the client's pushes bound to its identity when `bound` (only ops it
/// wrote itself are taken: `Receiver::bound`).
pub async fn serve_as<S: Store, T: Transport>(
    replica: &Replica<S>,
    t: &mut T,
    client: &str,
    limits: Limits,
    bound: bool,
    mut signals: impl futures::Stream<Item = Signal> + Unpin,
) -> Result<(), Error> {
    use futures::future::{select, Either};
    use futures::{FutureExt, StreamExt};
    let mut serve = Serve::<S::Staging>::new(client, limits).bound(bound);
    let mut signalling = true;
    // A poke held back during a pass, and how far the pass's pull reached.
    let (mut held, mut reached): (Option<u64>, Option<u64>) = (None, None);
    let result = async {
        loop {
            let quiet = !serve.idle() || t.waiting();
            if !quiet {
                // What landed or expired while the pass ran (or was just taken between
                // passes), as one signal of each kind.
                while signalling {
                    match signals.next().now_or_never() {
                        None => break,
                        Some(Some(Signal::Landed(max_row))) => held = held.max(Some(max_row)),
                        Some(Some(Signal::Expired)) => return Err(fail(t, SyncError::TokenExpired.into()).await),
                        Some(None) => signalling = false,
                    }
                }
                if let Some(max_row) = held.take().filter(|h| reached.is_none_or(|r| h > &r)) {
                    t.send(&Message::Poke { max_row }).await?;
                }
                reached = None;
            }
            let next = if signalling && !quiet {
                match select(Box::pin(t.recv()), signals.next()).await {
                    Either::Left((m, _)) => Either::Left(m),
                    Either::Right((s, _)) => Either::Right(s),
                }
            } else {
                Either::Left(t.recv().await)
            };
            let msg = match next {
                // Sent by the top of the loop: at once between passes, or, when the
                // transport started waiting for a place meanwhile, when the pass ends.
                Either::Right(Some(Signal::Landed(max_row))) => {
                    held = held.max(Some(max_row));
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
                Ok(step) => {
                    for m in &step.out {
                        if let Message::End { complete: true, max_row, .. } = m {
                            reached = Some(*max_row);
                        }
                    }
                    send_all(t, step.out).await?;
                }
                Err(e) => return Err(fail(t, e).await),
            }
        }
    }
    .await;
    if result.is_err() {
        serve.abort(replica).await;
    }
    result
}
