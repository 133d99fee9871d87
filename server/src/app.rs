//! The state every request shares: the server's settings and the library registry.
//!
//! Settings are fixed at start-up (from the command line), so handlers read them without
//! locks; the registry and the peer board are the only shared mutable parts. Libraries live
//! in SQLite files under `data`, or — with `postgres` set — in a PostgreSQL database that
//! several instances share (`App::start` connects to it).

use std::path::PathBuf;
use std::time::Duration;

use tidemark::sync::Limits;

use crate::library::{PeerPolicy, Registry, Storage};
use crate::quota::{Book, Quotas};
use crate::peers::{Board, Timing};
use crate::upstream::PeerUrl;

/// Default cap on one WebSocket message: large enough for a 1000-row batch of sizeable
/// documents, small enough that one client cannot make the server buffer without bound.
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;

/// What the server was started with.
#[derive(Clone, Debug)]
pub struct Settings {
    pub data: PathBuf,
    pub www: PathBuf,
    pub pkg: PathBuf,
    /// Caps on what one pass sends; clients may ask for less, never more.
    pub limits: Limits,
    /// When set, every connection must present a token signed with it (see `auth`).
    pub secret: Option<Vec<u8>>,
    pub max_frame: usize,
    /// How long a new connection may take to send `hello`.
    pub hello_timeout: Duration,
    /// How long a connection may stay silent (pings unanswered) before it is dropped.
    pub idle_timeout: Duration,
    /// Servers this one replicates every library with (`--peer`).
    pub peers: Vec<PeerUrl>,
    /// Signs the tokens this server presents to its peers (by default its own secret).
    pub peer_secret: Option<Vec<u8>>,
    /// How often peer rounds run and retry.
    pub peer_timing: Timing,
    /// How far ahead of this server's clock a received stamp may be (`maxClockSkew`).
    pub max_clock_skew: Duration,
    /// How long a connection may take to send a request's headers (`listen`).
    pub header_timeout: Duration,
    /// Libraries on PostgreSQL instead of SQLite files (`--postgres URL --instance NAME`).
    pub postgres: Option<crate::postgres::Settings>,
    /// Connections, passes and snapshots per client (`quota`).
    pub quotas: Quotas,
    /// How many peer records each library keeps, and for how long (`library`).
    pub peer_policy: PeerPolicy,
    /// How many pull turns run at once (`socket::Admission`).
    pub pulls_at_once: usize,
}

impl Settings {
    /// Settings for tests and embedding: defaults everywhere, data under `data`.
    pub fn new(data: impl Into<PathBuf>) -> Settings {
        Settings {
            data: data.into(),
            www: "www".into(),
            pkg: "js".into(),
            limits: Limits::default(),
            secret: None,
            max_frame: DEFAULT_MAX_FRAME,
            hello_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            peers: Vec::new(),
            peer_secret: None,
            peer_timing: Timing::from_poll(Duration::from_secs(1)),
            postgres: None,
            max_clock_skew: Duration::from_millis(tidemark::limits::DEFAULT_MAX_CLOCK_SKEW_MS),
            header_timeout: Duration::from_secs(10),
            quotas: Quotas::default(),
            peer_policy: PeerPolicy::default(),
            pulls_at_once: crate::socket::PULLS_AT_ONCE,
        }
    }
}

/// Shared by every handler, behind an `Arc`.
pub struct App {
    pub settings: Settings,
    pub registry: Registry,
    /// What each peer link last saw (`GET /v1/peers`).
    pub board: Board,
    /// What each foreign-store gateway last saw (`GET /v1/foreign`).
    pub foreign: crate::foreign::Board,
    /// Open connections and rate allowances per client.
    pub quotas: std::sync::Arc<Book>,
    /// The places of pull passes (`socket::Admission`): every connection's pulls share them.
    pub admission: crate::socket::Admission,
}

impl App {
    /// An app over SQLite files in `settings.data` (`settings.postgres` is not looked at).
    pub fn new(settings: Settings) -> App {
        let registry = Registry::new(settings.data.clone());
        App::with(settings, registry)
    }

    /// An app over the storage the settings name: connects to PostgreSQL when set (and
    /// starts this instance's stream positions there), else SQLite files.
    pub async fn start(settings: Settings) -> Result<App, crate::postgres::Error> {
        let registry = match &settings.postgres {
            Some(pg) => Registry::with(Storage::Postgres(crate::postgres::Database::connect(pg).await?)),
            None => Registry::new(settings.data.clone()),
        };
        Ok(App::with(settings, registry))
    }

    fn with(settings: Settings, registry: Registry) -> App {
        let board = Board::new(&settings.peers);
        let registry = registry.with_max_clock_skew(settings.max_clock_skew.as_millis().min(u64::MAX as u128) as u64).with_peer_policy(settings.peer_policy);
        let quotas = std::sync::Arc::new(Book::new(settings.quotas));
        let admission = crate::socket::Admission::new(settings.pulls_at_once);
        App { settings, registry, board, foreign: crate::foreign::Board::default(), quotas, admission }
    }
}
