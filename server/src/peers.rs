//! Server-to-server replication (`--peer`): this server syncs every library with each peer
//! as a client of that peer, with the engine's own client rounds (push, then pull) over
//! and over — so the passes, batches, caps,
//! sessions and transitive checkpoints are exactly those of client sync. Nothing about
//! merging or points is decided here.
//!
//! - One *supervisor* task per peer keeps the set of libraries to replicate: every library
//!   stored here plus every library the peer lists (`GET /v1/libraries`), re-read every
//!   `refresh`. A library only the peer holds is created here by the first round.
//! - One *link* task per (peer, library) holds a WebSocket open and runs rounds: a capped
//!   round is followed at once by the next; after a complete one the link waits for rows
//!   to land here (pushed at once), a poke from the peer (rows landed there: pulled at
//!   once) or the `poll` interval. Idle rounds record nothing (the engine's idle-pass
//!   rule), so polling costs a few messages.
//! - A failure (peer down, refused, timed out) closes the connection; the link retries
//!   after an exponential backoff with jitter, from `poll` up to `backoff_max`.
//!
//! Two servers may list each other: their rounds are independent passes with their own
//! sessions, and every commit carries the points it justifies, so concurrent passes in
//! both directions are safe. What each link last saw is kept on the `Board` for
//! `GET /v1/peers`.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tidemark::error::Error;
use tidemark::store::Store;
use tidemark::sync::live;
use tidemark::sync::session::RoundReport;
use tidemark::sync::{Direction, Progress};

use crate::app::App;
use crate::auth::{self, Claims};
use crate::listing;
use crate::upstream::{PeerUrl, Upstream};

/// The library name a listing token is issued for (never a valid library name, so such a
/// token cannot open a sync connection).
pub const ANY_LIBRARY: &str = "*";

/// The user named in the tokens this server mints for its peers.
pub const PEER_USER: &str = "tidemark-server";

/// How often links run rounds and retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Wait after a complete round (and the first retry delay).
    pub poll: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// How often the library lists are re-read.
    pub refresh: Duration,
}

impl Timing {
    /// Derived from the poll interval: retries back off up to 30 polls (at least 1 s, at
    /// most 30 s); library lists are re-read every 5 polls (1 s to 30 s).
    pub fn from_poll(poll: Duration) -> Timing {
        let poll = poll.max(Duration::from_millis(10));
        Timing {
            poll,
            backoff_max: (poll * 30).clamp(Duration::from_secs(1), Duration::from_secs(30)),
            refresh: (poll * 5).clamp(Duration::from_secs(1), Duration::from_secs(30)),
        }
    }
}

/// What one link last saw.
#[derive(Clone, Debug, Default)]
struct Link {
    connected: bool,
    peer_db_id: Option<String>,
    peer_max_row: Option<u64>,
    last_round: Option<u64>,
    last_error: Option<String>,
    rounds: u64,
    sent: u64,
    received: u64,
}

#[derive(Debug, Default)]
struct PeerState {
    /// Whether the last listing request succeeded (`None`: not tried yet).
    listed: Option<bool>,
    last_error: Option<String>,
    links: BTreeMap<String, Link>,
}

/// One configured peer and what its links last saw.
pub struct Peer {
    pub url: PeerUrl,
    state: Mutex<PeerState>,
}

impl Peer {
    fn state(&self) -> MutexGuard<'_, PeerState> {
        // The state is plain data, consistent after any panic: keep using it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn link(&self, library: &str, f: impl FnOnce(&mut Link)) {
        f(self.state().links.entry(library.to_string()).or_default());
    }
}

/// Every configured peer, fixed at start-up.
#[derive(Default)]
pub struct Board {
    peers: Vec<Arc<Peer>>,
}

impl Board {
    pub fn new(peers: &[PeerUrl]) -> Board {
        Board { peers: peers.iter().map(|url| Arc::new(Peer { url: url.clone(), state: Mutex::default() })).collect() }
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }
}

/// One library's replication with one peer, as `GET /v1/peers` shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkReport {
    pub connected: bool,
    pub peer_db_id: Option<String>,
    /// This server's max row for the library.
    pub max_row: Option<u64>,
    /// The peer's max row, as of the last message that carried it.
    pub peer_max_row: Option<u64>,
    /// The last row of the peer's row space merged here.
    pub incoming: Option<i64>,
    /// The last own row the peer acknowledged.
    pub outgoing: Option<i64>,
    /// `peerMaxRow − incoming`: rows of the peer not yet merged here (0 when caught up).
    pub lag: Option<u64>,
    /// When the last round completed (Unix milliseconds).
    pub last_round: Option<u64>,
    pub last_error: Option<String>,
    pub rounds: u64,
    pub sent: u64,
    pub received: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerReport {
    pub url: String,
    /// Some link holds an open connection (or, with no library yet, the listing answered).
    pub connected: bool,
    pub last_error: Option<String>,
    pub libraries: BTreeMap<String, LinkReport>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The status of every peer, with points read from the libraries' stores.
pub async fn report(app: &App) -> Vec<PeerReport> {
    let mut out = Vec::new();
    for peer in &app.board.peers {
        let (listed, last_error, links) = {
            let s = peer.state();
            (s.listed, s.last_error.clone(), s.links.clone())
        };
        let mut libraries = BTreeMap::new();
        for (name, link) in &links {
            let lib = app.registry.existing(name).await.ok();
            let max_row = match &lib {
                Some(lib) => lib.store().head().await.ok().flatten().map(|h| h.max_row),
                None => None,
            };
            let rec = match (&lib, &link.peer_db_id) {
                (Some(lib), Some(id)) => lib.store().peers().await.ok().and_then(|mut p| p.remove(id)),
                _ => None,
            };
            let incoming = rec.as_ref().map(|r| r.incoming);
            let lag = link.peer_max_row.map(|m| (m as i128 - incoming.unwrap_or(-1).max(0) as i128).max(0) as u64);
            libraries.insert(
                name.clone(),
                LinkReport {
                    connected: link.connected,
                    peer_db_id: link.peer_db_id.clone(),
                    max_row,
                    peer_max_row: link.peer_max_row,
                    incoming,
                    outgoing: rec.as_ref().map(|r| r.outgoing),
                    lag,
                    last_round: link.last_round,
                    last_error: link.last_error.clone(),
                    rounds: link.rounds,
                    sent: link.sent,
                    received: link.received,
                },
            );
        }
        let connected = links.values().any(|l| l.connected) || (links.is_empty() && listed == Some(true));
        out.push(PeerReport { url: peer.url.url.clone(), connected, last_error, libraries });
    }
    out
}

/// Starts one supervisor per peer (on the current tokio runtime).
pub fn spawn(app: Arc<App>) {
    for peer in app.board.peers.clone() {
        tokio::spawn(supervise(app.clone(), peer));
    }
}

/// A token for `library` signed with the peer secret, if there is one.
fn token(app: &App, library: &str) -> Option<String> {
    let secret = app.settings.peer_secret.as_deref()?;
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) + 3600;
    Some(auth::issue(secret, &Claims { library: library.into(), user: PEER_USER.into(), exp: Some(exp) }))
}

/// Keeps one link running per library either side holds.
async fn supervise(app: Arc<App>, peer: Arc<Peer>) {
    let timing = app.settings.peer_timing;
    let mut running: BTreeSet<String> = BTreeSet::new();
    loop {
        let mut names: BTreeSet<String> = app.registry.names().await.unwrap_or_default().into_iter().collect();
        match listing::fetch(&peer.url, token(&app, ANY_LIBRARY).as_deref(), app.settings.hello_timeout).await {
            Ok(theirs) => {
                names.extend(theirs);
                let mut s = peer.state();
                s.listed = Some(true);
                s.last_error = None;
            }
            Err(e) => {
                let mut s = peer.state();
                if s.last_error.as_ref() != Some(&e) {
                    tracing::warn!(peer = %peer.url.url, error = %e, "cannot list the peer's libraries");
                }
                s.listed = Some(false);
                s.last_error = Some(e);
            }
        }
        for name in names {
            if running.insert(name.clone()) {
                peer.link(&name, |_| {});
                tokio::spawn(link(app.clone(), peer.clone(), name));
            }
        }
        tokio::time::sleep(timing.refresh).await;
    }
}

/// A random factor in [0, 1), for backoff jitter (no RNG crate needed).
fn jitter() -> f64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(now_ms());
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// How a link reaches its peer: tokio sockets and timers, tokens minted from the secret.
struct PeerEnv<'a> {
    app: &'a App,
    peer: &'a Peer,
    library: &'a str,
    started: std::time::Instant,
}

impl live::Env for PeerEnv<'_> {
    type Conn = Upstream;

    async fn connect(&self) -> Result<Upstream, Error> {
        let s = &self.app.settings;
        Ok(Upstream::connect(&self.peer.url, s.max_frame, s.hello_timeout, s.idle_timeout).await?)
    }

    async fn sleep(&self, ms: u64) {
        tokio::time::sleep(Duration::from_millis(ms)).await
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn random(&self) -> f64 {
        jitter()
    }

    async fn token(&self) -> Result<Option<String>, Error> {
        Ok(token(self.app, self.library))
    }

    /// Every connect mints a fresh token, so one that expired on a long-lived link is
    /// replaced at once.
    fn renews_token(&self) -> bool {
        true
    }
}

/// What a link reports lands on the peer's board (`GET /v1/peers`) and in the log.
struct PeerEvents<'a> {
    peer: &'a Peer,
    library: &'a str,
}

impl live::Events for PeerEvents<'_> {
    fn online(&self, server: Option<&str>) {
        if let Some(id) = server {
            tracing::info!(peer = %self.peer.url.url, library = self.library, peer_db_id = id, "peer sync connected");
        }
        self.peer.link(self.library, |l| {
            l.connected = server.is_some();
            if let Some(id) = server {
                l.peer_db_id = Some(id.to_string());
            }
        });
    }

    fn progress(&self, _: Direction, _: Progress) {}

    fn round(&self, report: &RoundReport) {
        if report.sent + report.received > 0 {
            tracing::debug!(peer = %self.peer.url.url, library = self.library, sent = report.sent, received = report.received, capped = report.capped, "peer round");
        }
        self.peer.link(self.library, |l| {
            l.rounds += 1;
            l.sent += report.sent;
            l.received += report.received;
            l.last_round = Some(now_ms());
            l.last_error = None;
            l.peer_max_row = Some(report.push.peer_max_row.max(report.pull.peer_max_row));
        });
    }

    fn error(&self, e: &Error) {
        tracing::warn!(peer = %self.peer.url.url, library = self.library, error = %e, "peer sync interrupted");
        self.peer.link(self.library, |l| l.last_error = Some(e.to_string()));
    }
}

/// Replicates one library with one peer, forever: the engine's connection driver with
/// this server's timing, reconnecting after failures.
async fn link(app: Arc<App>, peer: Arc<Peer>, library: String) {
    let lib = loop {
        match app.registry.open(&library).await {
            Ok(lib) => break lib,
            Err(e) => {
                peer.link(&library, |l| l.last_error = Some(e.to_string()));
                tokio::time::sleep(app.settings.peer_timing.backoff_max).await;
            }
        }
    };
    let timing = app.settings.peer_timing;
    let config = live::Config {
        poll_ms: timing.poll.as_millis() as u64,
        backoff_min_ms: timing.poll.as_millis() as u64,
        backoff_max_ms: timing.backoff_max.as_millis() as u64,
        ..live::Config::new(&library, app.settings.limits)
    };
    let env = PeerEnv { app: &app, peer: &peer, library: &library, started: std::time::Instant::now() };
    let events = PeerEvents { peer: &peer, library: &library };
    let shared = Arc::new(live::Shared::default());
    let ticket = shared.start().expect("a fresh link is not running");
    // Rows landing here (from clients, or other links) are this link's local writes:
    // push them at once instead of at the next poll.
    let mut landed = lib.store().subscribe();
    let waker = shared.clone();
    tokio::spawn(async move {
        while landed.changed().await.is_ok() {
            waker.wake();
        }
    });
    live::live(lib.as_ref(), &env, &config, &shared, &events, ticket).await;
}
