//! The connection driver: one implementation of live sync for every kind of link — the
//! browser's `connect()`, `syncNow()`, and a server replicating with its peers. It
//! connects, greets, runs rounds, and between rounds waits for a local write, a poke
//! from the server (rows landed there) or the poll interval. On any failure it closes the
//! connection and retries after an exponential backoff with jitter.
//!
//! Liveness is part of the protocol (browsers cannot send WebSocket pings): a connection
//! that has been silent for `ping_ms` gets a `ping`; one silent for `timeout_ms` is dead
//! — closed and reconnected — so `online` is never true on a half-open socket. The
//! platform's network events (`Shared::set_network`) drop the connection at once when
//! the network goes away and reconnect at once when it comes back.
//!
//! Tokens: `Env::token` is asked on every connect. When the server says the token
//! expired (`SYNC_TOKEN_EXPIRED`), a link whose token renews (`Env::renews_token`: the
//! app gave a function) reconnects at once with a fresh one (then backs off if that one
//! is refused too); a link with a static token stops: it would be refused forever. The
//! `error` event tells the app, which can reconnect with a new token.
//!
//! Everything platform-specific — opening a socket, timers, the clock, randomness,
//! tokens — comes from an `Env`; what happens is reported to `Events`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use futures::channel::mpsc;
use futures::future::{select, Either};
use futures::StreamExt;

use super::drive;
use super::message::{Direction, Message};
use super::pass::{unexpected, Limits, Progress};
use super::session::RoundReport;
use super::transport::Transport;
use crate::error::{Error, SyncError};
use crate::peer::Point;
use crate::replica::Replica;
use crate::store::Store;

/// The code of the refusal that ends a link with a static token.
pub const TOKEN_EXPIRED: &str = "SYNC_TOKEN_EXPIRED";

/// After a round that received rows, the next one comes this soon (or sooner): its push
/// covers them, so the server's point for us — and our `outgoing` — catch up.
const AFTER_RECEIVING_MS: u64 = 1_000;

/// What a driver needs from its platform.
#[allow(async_fn_in_trait)]
pub trait Env {
    type Conn: Transport;
    /// Opens a connection to the server.
    async fn connect(&self) -> Result<Self::Conn, Error>;
    /// Resolves after `ms` milliseconds.
    async fn sleep(&self, ms: u64);
    /// Milliseconds on a clock that never goes back (for liveness deadlines).
    fn now_ms(&self) -> u64;
    /// A random number in [0, 1), for backoff jitter.
    fn random(&self) -> f64;
    /// The token to present in `hello`, if any; asked on every connect.
    async fn token(&self) -> Result<Option<String>, Error>;
    /// Whether `token` can return a fresh token after one expired.
    fn renews_token(&self) -> bool {
        false
    }
}

/// What a driver reports.
pub trait Events {
    /// A connection came up (with the server's db id) or went down (`None`).
    fn online(&self, server: Option<&str>);
    /// A pass made progress.
    fn progress(&self, direction: Direction, p: Progress);
    /// A round finished.
    fn round(&self, report: &RoundReport);
    /// Something failed; the driver carries on (live) or returns it (`once`).
    fn error(&self, e: &Error);
}

/// How a link behaves.
#[derive(Clone, Debug)]
pub struct Config {
    pub library: String,
    pub limits: Limits,
    /// Wait between rounds when nothing happens locally and the server pokes nothing: a
    /// safety net, since the server pokes its connected clients when rows land.
    pub poll_ms: u64,
    /// First and longest retry delay.
    pub backoff_min_ms: u64,
    pub backoff_max_ms: u64,
    /// Silence after which the driver pings the server.
    pub ping_ms: u64,
    /// Silence after which the connection is dead (also the limit for connecting).
    pub timeout_ms: u64,
}

impl Config {
    pub fn new(library: &str, limits: Limits) -> Config {
        Config {
            library: library.to_string(),
            limits,
            poll_ms: 30_000,
            backoff_min_ms: 250,
            backoff_max_ms: 30_000,
            ping_ms: 4_000,
            timeout_ms: 10_000,
        }
    }
}

/// Exponential backoff: each failure doubles the delay up to a ceiling; success resets it.
#[derive(Clone, Debug)]
pub struct Backoff {
    min: u64,
    max: u64,
    next: u64,
}

impl Backoff {
    pub fn new(min: u64, max: u64) -> Backoff {
        Backoff { min, max: max.max(min), next: min }
    }

    /// The delay before the next attempt, with up to 30% jitter (`random` in [0, 1)) so
    /// many clients do not retry in lockstep; doubles the following one.
    pub fn delay(&mut self, random: f64) -> u64 {
        let d = self.next + (random.clamp(0.0, 1.0) * self.next as f64 * 0.3) as u64;
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// The state a link shares with its owner: whether it is online, how to wake it, how to
/// stop it, the platform's network state, and the lock that keeps one round at a time
/// per replica.
#[derive(Default)]
pub struct Shared {
    online: AtomicBool,
    /// The platform said the network is gone (`navigator.onLine` false).
    offline: AtomicBool,
    /// Bumped by `stop`, so a running loop knows it is over.
    generation: AtomicU64,
    running: AtomicBool,
    /// Local writes (on a server: rows that landed from elsewhere).
    wake: Mutex<Option<mpsc::UnboundedSender<()>>>,
    /// Network changes: watched even in the middle of a round.
    net: Mutex<Option<mpsc::UnboundedSender<()>>>,
    rounds: futures::lock::Mutex<()>,
}

impl Shared {
    /// Whether a connection is up and answering.
    pub fn online(&self) -> bool {
        self.online.load(Ordering::SeqCst)
    }

    /// Whether a live loop is running.
    pub fn running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    /// Wakes the live loop for a round now (after a local write).
    pub fn wake(&self) {
        if let Some(tx) = self.wake.lock().expect("wake lock").as_ref() {
            let _ = tx.unbounded_send(());
        }
    }

    /// The platform's network went up or down: down drops the connection at once (even
    /// mid-round) and waits; up reconnects at once (skipping any backoff).
    pub fn set_network(&self, up: bool) {
        self.offline.store(!up, Ordering::SeqCst);
        if let Some(tx) = self.net.lock().expect("net lock").as_ref() {
            let _ = tx.unbounded_send(());
        }
    }

    fn network_down(&self) -> bool {
        self.offline.load(Ordering::SeqCst)
    }

    /// Claims the right to run the live loop: `None` if one is running. Taken before
    /// the loop is spawned, so a `stop()` in between is not missed.
    pub fn start(&self) -> Option<Ticket> {
        if self.running.swap(true, Ordering::SeqCst) {
            return None;
        }
        let (tx, wake) = mpsc::unbounded();
        *self.wake.lock().expect("wake lock") = Some(tx);
        let (tx, net) = mpsc::unbounded();
        *self.net.lock().expect("net lock") = Some(tx);
        Some(Ticket { generation: self.generation.load(Ordering::SeqCst), wake, net })
    }

    /// Stops the live loop (it finishes the message it is handling, then closes).
    pub fn stop(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Some(tx) = self.wake.lock().expect("wake lock").take() {
            tx.close_channel();
        }
        if let Some(tx) = self.net.lock().expect("net lock").take() {
            tx.close_channel();
        }
    }
}

/// The right to run one live loop (`Shared::start`).
pub struct Ticket {
    generation: u64,
    wake: mpsc::UnboundedReceiver<()>,
    net: mpsc::UnboundedReceiver<()>,
}

/// The platform's network, as a live connection watches it.
struct Network<'a> {
    shared: &'a Shared,
    changes: &'a mut mpsc::UnboundedReceiver<()>,
}

/// A connection with deadlines: pings the server after `ping_ms` of silence, fails
/// after `timeout_ms`, answers the server's pings, and keeps the server's pokes aside
/// (`poked`) so the protocol machines never see them.
pub struct Watched<'e, E: Env> {
    conn: E::Conn,
    env: &'e E,
    /// Network changes (live sync only): going offline fails the connection at once.
    net: Option<Network<'e>>,
    ping_ms: u64,
    timeout_ms: u64,
    /// When the server was last heard, or this side last started waiting for it.
    last_heard: u64,
    /// When the last ping went out (one per silence).
    pinged: Option<u64>,
    /// The highest max row a poke announced (−1: none yet).
    pub poked: Point,
}

impl<'e, E: Env> Watched<'e, E> {
    fn new(conn: E::Conn, env: &'e E, cfg: &Config, net: Option<Network<'e>>) -> Watched<'e, E> {
        let timeout_ms = cfg.timeout_ms.max(1);
        Watched { conn, env, net, ping_ms: cfg.ping_ms.clamp(1, timeout_ms), timeout_ms, last_heard: env.now_ms(), pinged: None, poked: -1 }
    }

    /// The next message from the server — pokes included, pings answered, pongs noted —
    /// or an error once it has been silent past the deadline. Silence counts from when
    /// this side started waiting, never the time it spent on its own work (a long commit
    /// is not the server's silence).
    pub async fn next_event(&mut self) -> Result<Message, SyncError> {
        self.last_heard = self.last_heard.max(self.env.now_ms());
        loop {
            let now = self.env.now_ms();
            let dead_at = self.last_heard.saturating_add(self.timeout_ms);
            if now >= dead_at {
                return Err(SyncError::Connection(format!("no answer from the server for {} ms: the connection is dead", now - self.last_heard)));
            }
            let ping_at = match self.pinged {
                Some(p) if p > self.last_heard => u64::MAX,
                _ => self.last_heard.saturating_add(self.ping_ms),
            };
            if now >= ping_at {
                self.conn.send(&Message::Ping {}).await?;
                self.pinged = Some(now);
                continue;
            }
            let wait = ping_at.min(dead_at) - now;
            let timer = Box::pin(self.env.sleep(wait));
            let changed = match self.net.as_mut() {
                Some(n) => Either::Left(n.changes.next()),
                None => Either::Right(futures::future::pending()),
            };
            let got = match select(Box::pin(self.conn.recv()), select(timer, changed)).await {
                Either::Left((got, _)) => Some(Ok(got)),
                Either::Right((Either::Left(_), _)) => None,
                Either::Right((Either::Right((change, _)), _)) => Some(Err(change)),
            };
            let got = match got {
                None => continue,
                Some(Ok(got)) => got,
                Some(Err(None)) => {
                    // Stopped: finish what is running without watching the network.
                    self.net = None;
                    continue;
                }
                Some(Err(Some(()))) => match &self.net {
                    Some(n) if n.shared.network_down() => return Err(SyncError::Connection("the network went away".into())),
                    _ => continue,
                },
            };
            let msg = got?;
            self.last_heard = self.env.now_ms();
            match msg {
                Message::Ping {} => self.conn.send(&Message::Pong {}).await?,
                Message::Pong {} => {}
                Message::Poke { max_row } => {
                    self.poked = self.poked.max(max_row as Point);
                    return Ok(Message::Poke { max_row });
                }
                m => return Ok(m),
            }
        }
    }
}

impl<E: Env> Transport for Watched<'_, E> {
    /// A send that fails because the server closed the connection reports the server's
    /// reason when it said one just before (an expired token, a refusal).
    async fn send(&mut self, msg: &Message) -> Result<(), SyncError> {
        match self.conn.send(msg).await {
            Err(SyncError::Connection(e)) => match futures::FutureExt::now_or_never(self.conn.recv()) {
                Some(Ok(Message::Error { code, message })) => Err(SyncError::Remote { code, message }),
                _ => Err(SyncError::Connection(e)),
            },
            other => other,
        }
    }

    async fn recv(&mut self) -> Result<Message, SyncError> {
        loop {
            match self.next_event().await? {
                Message::Poke { .. } => continue,
                m => return Ok(m),
            }
        }
    }
}

/// Asks for a token, connects and greets, all within `timeout_ms`; returns the watched
/// connection and the server's db id.
async fn open<'e, S: Store, E: Env>(replica: &Replica<S>, env: &'e E, cfg: &Config, net: Option<Network<'e>>) -> Result<(Watched<'e, E>, String), Error> {
    let token = env.token().await?;
    let attempt = async {
        let mut t = env.connect().await?;
        match drive::hello(replica, &mut t, &cfg.library, token).await {
            Ok(server) => Ok((t, server)),
            Err(e) => Err(drive::fail(&mut t, e).await),
        }
    };
    let opened = match select(Box::pin(attempt), Box::pin(env.sleep(cfg.timeout_ms))).await {
        Either::Left((r, _)) => r?,
        Either::Right(_) => return Err(SyncError::Connection(format!("no answer from the server within {} ms", cfg.timeout_ms)).into()),
    };
    let (t, server) = opened;
    Ok((Watched::new(t, env, cfg, net), server))
}

/// One round on an open connection, one at a time per replica; the replica's status is
/// re-read afterwards.
async fn round<S: Store, E: Env, V: Events>(replica: &Replica<S>, t: &mut Watched<'_, E>, server: &str, cfg: &Config, shared: &Shared, events: &V) -> Result<RoundReport, Error> {
    let _one = shared.rounds.lock().await;
    let report = drive::round(replica, t, server, cfg.limits, &mut |d, p| events.progress(d, p)).await;
    // Also after a failed round: its push may have gone through.
    replica.refresh_status().await?;
    // Ops set aside by the round's batches (also a failed one's): one `error` event each.
    for q in replica.take_quarantined() {
        let what = format!("{} of {}/{} from {} (row {}): {}", q.code, q.collection, q.id, q.origin, q.origin_row, q.reason);
        events.error(&SyncError::Quarantined(what).into());
    }
    let report = report?;
    events.round(&report);
    Ok(report)
}

/// One round over a fresh connection: what `syncNow()` does. Failures are reported to
/// `events` and returned.
pub async fn once<S: Store, E: Env, V: Events>(replica: &Replica<S>, env: &E, cfg: &Config, shared: &Shared, events: &V) -> Result<RoundReport, Error> {
    let attempt = || async {
        let (mut t, server) = open(replica, env, cfg, None).await?;
        round(replica, &mut t, &server, cfg, shared, events).await
    };
    let mut result = attempt().await;
    // A token the server says expired is asked for again, once, where the app can renew
    // it (DESIGN §7); a pass cut off by the expiry resumes from its checkpoint.
    if env.renews_token() && result.as_ref().is_err_and(|e| e.code() == TOKEN_EXPIRED) {
        result = attempt().await;
    }
    if let Err(e) = &result {
        events.error(e);
    }
    result
}

/// How a connection ended.
enum Ended {
    /// `stop()` was called.
    Stopped,
    /// The platform's network went away.
    Offline,
    /// It failed (already reported).
    Failed(Error),
}

/// What woke the wait between rounds.
enum Idle {
    Stop,
    Write,
    Tick,
    Event(Result<Message, SyncError>),
}

/// Live sync until `shared.stop()`: rounds on a held connection, reconnecting with
/// backoff; stops by itself when a static token expires.
pub async fn live<S: Store, E: Env, V: Events>(replica: &Replica<S>, env: &E, cfg: &Config, shared: &Shared, events: &V, ticket: Ticket) {
    let Ticket { generation, mut wake, mut net } = ticket;
    let stopped = || shared.generation.load(Ordering::SeqCst) != generation;
    let mut backoff = Backoff::new(cfg.backoff_min_ms, cfg.backoff_max_ms);
    // Whether the last connection was refused for an expired token and renewed at once.
    let mut renewed = false;
    while !stopped() {
        if shared.network_down() {
            // Nothing to try until the network comes back (writes wait too).
            match net.next().await {
                Some(()) => continue,
                None => break,
            }
        }
        let watch = Network { shared, changes: &mut net };
        let ended = match open(replica, env, cfg, Some(watch)).await {
            Ok((mut t, server)) => {
                shared.online.store(true, Ordering::SeqCst);
                events.online(Some(&server));
                let ended = connected(replica, cfg, shared, events, &mut wake, &mut t, &server, &mut backoff, &mut renewed, generation).await;
                shared.online.store(false, Ordering::SeqCst);
                events.online(None);
                ended
            }
            Err(_) if shared.network_down() => Ended::Offline,
            Err(e) => {
                events.error(&e);
                Ended::Failed(e)
            }
        };
        if stopped() {
            break;
        }
        let delay = match ended {
            Ended::Stopped => break,
            Ended::Offline => 0,
            Ended::Failed(e) if e.code() == TOKEN_EXPIRED => {
                if !env.renews_token() {
                    // A static token stays expired: retrying would be refused forever.
                    break;
                }
                if renewed {
                    backoff.delay(env.random())
                } else {
                    renewed = true;
                    0
                }
            }
            Ended::Failed(_) => backoff.delay(env.random()),
        };
        if delay > 0 && !pause(env, shared, &mut net, delay).await {
            break;
        }
    }
    shared.running.store(false, Ordering::SeqCst);
}

/// Waits `ms` before a retry; the network coming back cuts it short (local writes do
/// not: they would defeat the backoff). `false` when stopped.
async fn pause<E: Env>(env: &E, shared: &Shared, net: &mut mpsc::UnboundedReceiver<()>, ms: u64) -> bool {
    let mut tick = Box::pin(env.sleep(ms));
    loop {
        match select(net.next(), &mut tick).await {
            Either::Left((None, _)) => return false,
            Either::Left((Some(()), _)) if !shared.network_down() => return true,
            Either::Left((Some(()), _)) => continue,
            Either::Right(_) => return true,
        }
    }
}

/// Rounds on an open connection until it fails, the network goes away or the loop stops.
#[allow(clippy::too_many_arguments)]
async fn connected<S: Store, E: Env, V: Events>(
    replica: &Replica<S>,
    cfg: &Config,
    shared: &Shared,
    events: &V,
    wake: &mut mpsc::UnboundedReceiver<()>,
    t: &mut Watched<'_, E>,
    server: &str,
    backoff: &mut Backoff,
    renewed: &mut bool,
    generation: u64,
) -> Ended {
    // How far our pulls have reached in the server's row space: pokes below it are old news.
    let mut reached: Point = -1;
    let mut wait_ms;
    loop {
        if shared.generation.load(Ordering::SeqCst) != generation {
            return Ended::Stopped;
        }
        if shared.network_down() {
            return Ended::Offline;
        }
        match round(replica, t, server, cfg, shared, events).await {
            Ok(report) => {
                backoff.reset();
                *renewed = false;
                reached = reached.max(report.pull.end);
                if report.capped || t.poked > reached {
                    continue;
                }
                wait_ms = if report.received > 0 { cfg.poll_ms.min(AFTER_RECEIVING_MS) } else { cfg.poll_ms };
            }
            Err(_) if shared.network_down() => return Ended::Offline,
            Err(e) => {
                events.error(&e);
                return Ended::Failed(e);
            }
        }
        // Wait for a local write, a poke or the poll interval, answering pings meanwhile.
        let mut tick = Box::pin(t.env.sleep(wait_ms));
        loop {
            let idle = {
                let waiting = select(&mut tick, Box::pin(t.next_event()));
                match select(wake.next(), waiting).await {
                    Either::Left((None, _)) => Idle::Stop,
                    Either::Left((Some(()), _)) => Idle::Write,
                    Either::Right((Either::Left(_), _)) => Idle::Tick,
                    Either::Right((Either::Right((got, _)), _)) => Idle::Event(got),
                }
            };
            match idle {
                Idle::Stop => return Ended::Stopped,
                Idle::Write | Idle::Tick => break,
                Idle::Event(Ok(Message::Poke { max_row })) if max_row as Point > reached => break,
                Idle::Event(Ok(Message::Poke { .. })) => continue,
                Idle::Event(Ok(other)) => {
                    let e: Error = unexpected(&other, "nothing between rounds").into();
                    events.error(&e);
                    return Ended::Failed(e);
                }
                Idle::Event(Err(_)) if shared.network_down() => return Ended::Offline,
                Idle::Event(Err(e)) => {
                    let e: Error = e.into();
                    events.error(&e);
                    return Ended::Failed(e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Backoff;

    #[test]
    fn backoff_doubles_to_its_ceiling_and_resets() {
        let mut b = Backoff::new(250, 1000);
        assert_eq!([b.delay(0.0), b.delay(0.0), b.delay(0.0), b.delay(0.0)], [250, 500, 1000, 1000]);
        b.reset();
        assert_eq!(b.delay(0.0), 250);
        let jittered = b.delay(0.99);
        assert!((500..=650).contains(&jittered), "{jittered}");
    }
}
