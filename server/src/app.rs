//! The state every request shares: the server's settings and the library registry.
//!
//! Settings are fixed at start-up (from the command line), so handlers read them without
//! locks; the registry and the peer board are the only shared mutable parts.

use std::path::PathBuf;
use std::time::Duration;

use tidemark::sync::Limits;

use crate::library::Registry;
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
        }
    }
}

/// Shared by every handler, behind an `Arc`.
pub struct App {
    pub settings: Settings,
    pub registry: Registry,
    /// What each peer link last saw (`GET /v1/peers`).
    pub board: Board,
}

impl App {
    pub fn new(settings: Settings) -> App {
        let registry = Registry::new(settings.data.clone());
        let board = Board::new(&settings.peers);
        App { settings, registry, board }
    }
}
