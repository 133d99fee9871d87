//! The `tidemark-server` binary: command-line flags, logging, and the listening socket.
//!
//! `tidemark-server [--listen ADDR] [--data DIR | --postgres URL --instance NAME] [--www DIR]
//! [--pkg DIR] [--peer URL]… …` serves (and replicates with its peers); `tidemark-server
//! token --secret S --library L --user U` prints an access token (the format is documented
//! in `auth`).

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};
use tidemark::sync::Limits;
use tidemark_server::app::DEFAULT_MAX_FRAME;
use tidemark_server::library::Storage;
use tidemark_server::peers::{self, Timing};
use tidemark_server::upstream::PeerUrl;
use tidemark_server::{auth, foreign, http, listen, App, Settings};

#[derive(Parser)]
#[command(name = "tidemark-server", version, about = "Sync server for Tidemark replicas", args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: Serve,
}

#[derive(Subcommand)]
enum Command {
    /// Print an access token for one library (or `*`: listing and peer status) and user,
    /// signed with the server's secret.
    Token {
        #[arg(long, env = "TIDEMARK_SECRET", hide_env_values = true)]
        secret: String,
        #[arg(long)]
        library: String,
        #[arg(long)]
        user: String,
        /// Validity in seconds from now (default: no expiry).
        #[arg(long)]
        ttl: Option<u64>,
    },
}

#[derive(Args)]
struct Serve {
    /// Address to listen on (port 0 picks a free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8787")]
    listen: SocketAddr,
    /// Directory holding one `<library>.sqlite` per library (unused with --postgres).
    #[arg(long, default_value = "./data")]
    data: PathBuf,
    /// Keep libraries in this PostgreSQL database (a postgres:// URL or key=value string)
    /// instead of SQLite files; several instances may serve the same database.
    #[arg(long, env = "TIDEMARK_POSTGRES", hide_env_values = true, value_name = "URL", requires = "instance")]
    postgres: Option<String>,
    /// This instance's name on the PostgreSQL database: unique among the running instances,
    /// and the same after a restart (its stream position is kept under it).
    #[arg(long, env = "TIDEMARK_INSTANCE", value_name = "NAME", requires = "postgres")]
    instance: Option<String>,
    /// Most PostgreSQL connections this instance opens (besides one for LISTEN).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(2..=1000))]
    pg_pool: u64,
    /// The demo page, served at `/`.
    #[arg(long, default_value = "./www")]
    www: PathBuf,
    /// The npm package directory, served at `/js/` (the demo page imports it from there).
    /// By default the `js` directory beside the `--www` directory, else `./js`: the
    /// repository's layout, wherever the server is started from.
    #[arg(long)]
    pkg: Option<PathBuf>,
    /// Most rows per batch the server sends.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    per_diff: u64,
    /// Most batches per pass the server sends before the pass ends capped.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    max_diffs: u64,
    /// Require tokens signed with this secret (see `tidemark-server token`).
    #[arg(long, env = "TIDEMARK_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Largest WebSocket message accepted, in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_FRAME)]
    max_frame: usize,
    /// Seconds a new connection has to send `hello`.
    #[arg(long, default_value_t = 10)]
    hello_timeout: u64,
    /// Seconds of silence (unanswered pings) after which a connection is dropped.
    #[arg(long, default_value_t = 120)]
    idle_timeout: u64,
    /// Another server to replicate every library with (ws://HOST:PORT/v1/sync); repeatable.
    /// Needs --secret (or --peer-secret): a server forwards other replicas' ops only to
    /// servers that share the secret, and takes them only from those.
    #[arg(long = "peer", value_name = "URL")]
    peers: Vec<String>,
    /// Milliseconds between rounds with each peer once caught up.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    peer_poll_ms: u64,
    /// Seconds a received stamp may be ahead of this server's clock before the op is
    /// refused (maxClockSkew; default 24 h).
    #[arg(long, default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(1..))]
    max_clock_skew: u64,
    /// Seconds a connection has to send a request's headers before it is closed.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    header_timeout: u64,
    /// Most sync connections one client holds at once (0: no limit). A client is the
    /// token's user with --secret, else the remote IP address (on loopback: the replica's
    /// db id).
    #[arg(long, default_value_t = 64)]
    max_client_connections: usize,
    /// Most passes (push or pull) the server runs for one client per minute (0: no limit).
    #[arg(long, default_value_t = 3_000)]
    max_client_passes: u32,
    /// Most snapshots the server sends one client per minute (0: no limit).
    #[arg(long, default_value_t = 10)]
    max_client_snapshots: u32,
    /// How many pull passes run at once across all connections; a later pull waits for a
    /// place (first come, first served), at most 30 s.
    #[arg(long, default_value_t = tidemark_server::socket::PULLS_AT_ONCE as u64, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pulls_at_once: u64,
    /// Most peer records (sync points of clients and servers) a library keeps; beyond it
    /// the least recently written are pruned.
    #[arg(long, default_value_t = tidemark::limits::MAX_TABLE_ENTRIES as u64, value_parser = clap::value_parser!(u64).range(1..=tidemark::limits::MAX_TABLE_ENTRIES as u64))]
    max_peers: u64,
    /// Seconds after which a peer record not written since is pruned (default 90 days).
    #[arg(long, default_value_t = 90 * 24 * 3600, value_parser = clap::value_parser!(u64).range(1..))]
    peer_max_age: u64,
    /// Secret to sign the tokens presented to peers (default: --secret).
    #[arg(long, env = "TIDEMARK_PEER_SECRET", hide_env_values = true)]
    peer_secret: Option<String>,
    /// Gateway a collection to a foreign store, both ways (repeatable):
    /// LIBRARY/COLLECTION=couchdb+http://HOST:PORT/DB or LIBRARY/COLLECTION=rest+http://HOST:PORT/PATH.
    #[arg(long = "foreign", value_name = "LIBRARY/COLLECTION=KIND+URL", value_parser = |s: &str| foreign::Spec::parse(s).map_err(|e| e.to_string()))]
    foreign: Vec<foreign::Spec>,
    /// Milliseconds between rounds with each foreign store.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    foreign_interval: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Token { secret, library, user, ttl }) => {
            if library != peers::ANY_LIBRARY && !tidemark_server::library::valid_name(&library) {
                eprintln!("invalid library name {library:?}: use 1 to 64 letters, digits, '_' or '-'");
                return ExitCode::from(2);
            }
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let claims = auth::Claims { library, user, exp: ttl.map(|t| now.saturating_add(t)) };
            println!("{}", auth::issue(secret.as_bytes(), &claims));
            ExitCode::SUCCESS
        }
        None => serve(cli.serve),
    }
}

fn serve(args: Serve) -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    if args.secret.as_deref() == Some("") || args.peer_secret.as_deref() == Some("") {
        eprintln!("--secret and --peer-secret must not be empty");
        return ExitCode::from(2);
    }
    let mut peer_urls = Vec::new();
    for p in &args.peers {
        match PeerUrl::parse(p) {
            Ok(u) if !peer_urls.contains(&u) => peer_urls.push(u),
            Ok(_) => {}
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        }
    }
    let peer_secret = args.peer_secret.clone().or_else(|| args.secret.clone()).map(String::into_bytes);
    // Origins are bound to identity (DESIGN §5): a connection without a peer token pushes
    // only ops it wrote itself, so a link without one would bring nothing of this
    // server's rows to the peer.
    if !peer_urls.is_empty() && peer_secret.is_none() {
        eprintln!("--peer needs --secret (or --peer-secret): servers forward other replicas' ops only to servers that share the secret");
        return ExitCode::from(2);
    }
    let postgres = match (&args.postgres, &args.instance) {
        (Some(url), Some(instance)) => {
            if !tidemark_server::library::valid_name(instance) {
                eprintln!("invalid --instance {instance:?}: use 1 to 64 letters, digits, '_' or '-'");
                return ExitCode::from(2);
            }
            if url.trim().is_empty() {
                eprintln!("--postgres must not be empty");
                return ExitCode::from(2);
            }
            let mut pg = tidemark_server::postgres::Settings::new(url.clone(), instance.clone());
            pg.pool_size = args.pg_pool as usize;
            Some(pg)
        }
        // clap's `requires` refuses one without the other.
        _ => None,
    };
    let settings = Settings {
        data: args.data,
        pkg: args.pkg.unwrap_or_else(|| beside(&args.www, "js")),
        www: args.www,
        limits: Limits { per_diff: args.per_diff as usize, max_diffs: args.max_diffs as usize },
        secret: args.secret.map(String::into_bytes),
        max_frame: args.max_frame.max(1024),
        hello_timeout: Duration::from_secs(args.hello_timeout.max(1)),
        idle_timeout: Duration::from_secs(args.idle_timeout.max(1)),
        peers: peer_urls,
        peer_secret,
        peer_timing: Timing::from_poll(Duration::from_millis(args.peer_poll_ms)),
        postgres,
        max_clock_skew: Duration::from_secs(args.max_clock_skew),
        header_timeout: Duration::from_secs(args.header_timeout),
        quotas: tidemark_server::quota::Quotas {
            connections: args.max_client_connections,
            passes_per_minute: args.max_client_passes,
            snapshots_per_minute: args.max_client_snapshots,
        },
        peer_policy: tidemark_server::library::PeerPolicy { max_peers: args.max_peers as usize, max_age: Duration::from_secs(args.peer_max_age) },
        pulls_at_once: args.pulls_at_once as usize,
    };
    if settings.postgres.is_none() {
        if let Err(e) = std::fs::create_dir_all(&settings.data) {
            eprintln!("cannot create the data directory {}: {e}", settings.data.display());
            return ExitCode::FAILURE;
        }
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let gateways = (args.foreign, Duration::from_millis(args.foreign_interval));
    match runtime.block_on(run(args.listen, settings, gateways)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tidemark-server: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(listen: SocketAddr, settings: Settings, (foreign, interval): (Vec<foreign::Spec>, Duration)) -> std::io::Result<()> {
    let listener = bind(listen)?;
    let addr = listener.local_addr()?;
    let app = match App::start(settings).await {
        Ok(app) => Arc::new(app),
        Err(e) => return Err(std::io::Error::other(format!("cannot use the PostgreSQL database: {e}"))),
    };
    match app.registry.storage() {
        Storage::Sqlite(data) => tracing::info!(%addr, data = %data.display(), tokens = app.settings.secret.is_some(), "tidemark-server listening"),
        Storage::Postgres(db) => tracing::info!(%addr, instance = db.instance(), tokens = app.settings.secret.is_some(), "tidemark-server listening on PostgreSQL"),
    }
    // Tests (and scripts) read the chosen address from this line.
    println!("tidemark-server listening on http://{addr}/");
    let _ = std::io::stdout().flush();
    if !app.board.is_empty() {
        tracing::info!(peers = ?app.settings.peers.iter().map(|p| p.url.as_str()).collect::<Vec<_>>(), "replicating with peers");
        peers::spawn(app.clone());
    }
    foreign::spawn(app.clone(), &foreign, interval).map_err(std::io::Error::other)?;
    // TCP_NODELAY and the header-read timeout are set per connection there.
    let served = listen::serve(listener, http::router(app.clone()), app.settings.header_timeout, shutdown()).await;
    if let Storage::Postgres(db) = app.registry.storage() {
        // Leave cleanly, so the other instances need not wait for our heartbeat to go stale.
        if let Err(e) = db.leave().await {
            tracing::warn!(error = %e, "could not leave the stream positions cleanly");
        }
    }
    served
}

/// The listening socket, with a backlog deep enough for thousands of clients that
/// (re)connect at once (a server restart, a network blip): the default 1024 drops SYNs,
/// which clients retry only after a second.
fn bind(listen: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if listen.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(listen)?;
    socket.listen(8192)
}

/// Resolves on Ctrl-C or SIGTERM. Commits are atomic, so stopping mid-pass is safe.
async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutting down");
}

/// The directory `name` beside `dir` (its sibling) when there is one, else `./name`.
fn beside(dir: &std::path::Path, name: &str) -> PathBuf {
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let sibling = parent.join(name);
    if sibling.is_dir() { sibling } else { PathBuf::from(".").join(name) }
}
