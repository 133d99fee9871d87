//! The connection driver: one implementation of live sync for every kind of link — the
//! browser's `connect()`, `syncNow()`, and a server replicating with its peers. It
//! connects, greets, runs rounds (at once again after a capped one, else after a local
//! write or the poll interval), and on any failure closes the connection and retries
//! after an exponential backoff with jitter. Everything platform-specific — opening a
//! socket, timers, randomness, tokens — comes from an `Env`; what happens is reported
//! to `Events`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use futures::channel::mpsc;
use futures::future::{select, Either};
use futures::StreamExt;

use super::drive;
use super::message::Direction;
use super::pass::{Limits, Progress};
use super::session::RoundReport;
use super::transport::Transport;
use crate::error::Error;
use crate::replica::Replica;
use crate::store::Store;

/// What a driver needs from its platform.
#[allow(async_fn_in_trait)]
pub trait Env {
    type Conn: Transport;
    /// Opens a connection to the server.
    async fn connect(&self) -> Result<Self::Conn, Error>;
    /// Resolves after `ms` milliseconds.
    async fn sleep(&self, ms: u64);
    /// A random number in [0, 1), for backoff jitter.
    fn random(&self) -> f64;
    /// The token to present in `hello`, if any.
    async fn token(&self) -> Result<Option<String>, Error>;
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
    /// Wait between rounds when nothing happens locally.
    pub poll_ms: u64,
    /// First and longest retry delay.
    pub backoff_min_ms: u64,
    pub backoff_max_ms: u64,
}

impl Config {
    pub fn new(library: &str, limits: Limits) -> Config {
        Config { library: library.to_string(), limits, poll_ms: 1000, backoff_min_ms: 250, backoff_max_ms: 30_000 }
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
/// stop it, and the lock that keeps one round at a time per replica.
#[derive(Default)]
pub struct Shared {
    online: AtomicBool,
    /// Bumped by `stop`, so a running loop knows it is over.
    generation: AtomicU64,
    running: AtomicBool,
    wake: Mutex<Option<mpsc::UnboundedSender<()>>>,
    rounds: futures::lock::Mutex<()>,
}

impl Shared {
    pub fn online(&self) -> bool {
        self.online.load(Ordering::SeqCst)
    }

    /// Whether a live loop is running.
    pub fn running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    /// Wakes the live loop for a round now (after a local write, or a server's poke).
    pub fn wake(&self) {
        if let Some(tx) = self.wake.lock().expect("wake lock").as_ref() {
            let _ = tx.unbounded_send(());
        }
    }

    /// Claims the right to run the live loop: `None` if one is running. Taken before
    /// the loop is spawned, so a `stop()` in between is not missed.
    pub fn start(&self) -> Option<Ticket> {
        if self.running.swap(true, Ordering::SeqCst) {
            return None;
        }
        let (tx, rx) = mpsc::unbounded();
        *self.wake.lock().expect("wake lock") = Some(tx);
        Some(Ticket { generation: self.generation.load(Ordering::SeqCst), wake: rx })
    }

    /// Stops the live loop (it finishes the message it is handling, then closes).
    pub fn stop(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Some(tx) = self.wake.lock().expect("wake lock").take() {
            tx.close_channel();
        }
    }
}

/// The right to run one live loop (`Shared::start`).
pub struct Ticket {
    generation: u64,
    wake: mpsc::UnboundedReceiver<()>,
}

/// Connects and greets; returns the connection and the server's db id.
async fn open<S: Store, E: Env>(replica: &Replica<S>, env: &E, cfg: &Config) -> Result<(E::Conn, String), Error> {
    let mut t = env.connect().await?;
    let token = env.token().await?;
    let server = match drive::hello(replica, &mut t, &cfg.library, token).await {
        Ok(s) => s,
        Err(e) => return Err(drive::fail(&mut t, e).await),
    };
    Ok((t, server))
}

/// One round on an open connection, one at a time per replica; the replica's status is
/// re-read afterwards.
async fn round<S: Store, E: Env, V: Events>(replica: &Replica<S>, t: &mut E::Conn, server: &str, cfg: &Config, shared: &Shared, events: &V) -> Result<RoundReport, Error> {
    let _one = shared.rounds.lock().await;
    let report = drive::round(replica, t, server, cfg.limits, &mut |d, p| events.progress(d, p)).await;
    // Also after a failed round: its push may have gone through.
    replica.refresh_status().await?;
    let report = report?;
    events.round(&report);
    Ok(report)
}

/// One round over a fresh connection: what `syncNow()` does. Failures are reported to
/// `events` and returned.
pub async fn once<S: Store, E: Env, V: Events>(replica: &Replica<S>, env: &E, cfg: &Config, shared: &Shared, events: &V) -> Result<RoundReport, Error> {
    let result = async {
        let (mut t, server) = open(replica, env, cfg).await?;
        round::<S, E, V>(replica, &mut t, &server, cfg, shared, events).await
    }
    .await;
    if let Err(e) = &result {
        events.error(e);
    }
    result
}

/// Live sync until `shared.stop()`: rounds on a held connection, reconnecting with
/// backoff.
pub async fn live<S: Store, E: Env, V: Events>(replica: &Replica<S>, env: &E, cfg: &Config, shared: &Shared, events: &V, ticket: Ticket) {
    let Ticket { generation, mut wake } = ticket;
    let stopped = || shared.generation.load(Ordering::SeqCst) != generation;
    let mut backoff = Backoff::new(cfg.backoff_min_ms, cfg.backoff_max_ms);
    while !stopped() {
        match open(replica, env, cfg).await {
            Ok((mut t, server)) => {
                shared.online.store(true, Ordering::SeqCst);
                events.online(Some(&server));
                while !stopped() {
                    match round::<S, E, V>(replica, &mut t, &server, cfg, shared, events).await {
                        Ok(report) => {
                            backoff.reset();
                            if report.capped {
                                continue;
                            }
                        }
                        Err(e) => {
                            events.error(&e);
                            break;
                        }
                    }
                    // Wait for a local write or the poll interval.
                    let tick = Box::pin(env.sleep(cfg.poll_ms));
                    if let Either::Left((None, _)) = select(wake.next(), tick).await {
                        break;
                    }
                }
                shared.online.store(false, Ordering::SeqCst);
                events.online(None);
            }
            Err(e) => events.error(&e),
        }
        if stopped() {
            break;
        }
        env.sleep(backoff.delay(env.random())).await;
    }
    shared.running.store(false, Ordering::SeqCst);
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
