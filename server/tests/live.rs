//! Live sync against a real `tidemark-server` process, with native clients running the
//! engine's connection driver (`sync::live`) over tokio (issue 12):
//! - a connection that stops answering without closing (a proxy that swallows traffic)
//!   is declared dead, closed and replaced, and the write made meanwhile goes through;
//! - the server pokes live clients when rows land, so a write reaches another live client
//!   without waiting for its poll (set to 60 s here);
//! - a token that expires during a live connection ends it with `SYNC_TOKEN_EXPIRED`: a
//!   static token stops live sync, a renewing one reconnects and syncs on.
//!
//! Times are printed (half-open detection, poke latency), never asserted.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::*;
use tidemark::sync::live::Config;
use tidemark::sync::pass::Limits;
use tidemark_server::auth;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::LocalSet;

/// Deadlines short enough for a test: a ping after 300 ms of silence, dead after 1.5 s.
fn quick(poll_ms: u64) -> Config {
    Config { poll_ms, ping_ms: 300, timeout_ms: 1_500, backoff_min_ms: 50, backoff_max_ms: 500, ..Config::new(LIB, Limits::default()) }
}

/// A TCP proxy that forwards both ways until told to swallow: from then on the
/// connections it already carries neither forward nor close (a half-open path, as a
/// sleeping laptop or a dead NAT leaves it). Later connections are forwarded normally.
struct Proxy {
    addr: std::net::SocketAddr,
    /// Connections numbered below this are swallowed.
    swallow_below: Arc<AtomicU64>,
    next: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(to: std::net::SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let swallow_below = Arc::new(AtomicU64::new(0));
        let next = Arc::new(AtomicU64::new(0));
        let (below, counter) = (swallow_below.clone(), next.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let id = counter.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = TcpStream::connect(to).await else { continue };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                let stuck = Arc::new(AtomicBool::new(false));
                for (mut from, mut to) in [(Box::new(cr) as Box<dyn tokio::io::AsyncRead + Unpin + Send>, Box::new(sw) as Box<dyn tokio::io::AsyncWrite + Unpin + Send>), (Box::new(sr), Box::new(cw))] {
                    let (below, stuck) = (below.clone(), stuck.clone());
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match from.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if id < below.load(Ordering::SeqCst) || stuck.load(Ordering::SeqCst) {
                                // Swallowed: hold both sockets open, forward nothing, ever.
                                stuck.store(true, Ordering::SeqCst);
                                std::future::pending::<()>().await;
                            }
                            if to.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    });
                }
            }
        });
        Proxy { addr, swallow_below, next, task }
    }

    fn ws_url(&self) -> String {
        format!("ws://{}/v1/sync", self.addr)
    }

    /// Every connection carried so far goes silent.
    fn swallow_existing(&self) {
        self.swallow_below.store(self.next.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn a_half_open_connection_is_detected_closed_and_replaced() {
    LocalSet::new()
        .run_until(async {
            let dir = tempfile::tempdir().unwrap();
            let server = Server::start(&dir.path().join("data"), &[]);
            let proxy = Proxy::start(server.addr).await;
            let c = LiveClient::start(TokioEnv::new(proxy.ws_url(), Box::new(|| None), false), quick(60_000)).await;
            wait_until("online", Duration::from_secs(20), async || c.shared.online()).await;
            c.put("before", 1).await;
            wait_until("the first write reaches the server", Duration::from_secs(20), async || server.stored(LIB, "docs").contains_key("before")).await;

            // The path goes silent without closing; the client writes meanwhile.
            proxy.swallow_existing();
            let silent = Instant::now();
            c.put("during", 2).await;
            wait_until("the dead connection is noticed", Duration::from_secs(30), async || !c.shared.online()).await;
            let detected = silent.elapsed();
            wait_until("a new connection comes up", Duration::from_secs(30), async || c.shared.online()).await;
            wait_until("the write made on the dead connection arrives", Duration::from_secs(30), async || server.stored(LIB, "docs").contains_key("during")).await;
            eprintln!("half-open connection detected after {} ms (ping 300 ms, deadline 1500 ms)", detected.as_millis());

            assert_eq!(c.online_changes(), vec![true, false, true]);
            assert!(c.error_codes().contains(&"SYNC_CONNECTION".to_string()), "{:?}", c.error_codes());
            assert_eq!(c.env.connects.get(), 2, "one reconnect");
            wait_until("the write is acknowledged", Duration::from_secs(30), async || c.replica.status().pending == 0).await;
            c.stop().await;
        })
        .await;
}

#[tokio::test]
async fn the_server_pokes_live_clients_so_writes_arrive_without_waiting_for_the_poll() {
    LocalSet::new()
        .run_until(async {
            let dir = tempfile::tempdir().unwrap();
            let server = Server::start(&dir.path().join("data"), &[]);
            // Polls every 60 s: anything sooner came from a poke.
            let cfg = quick(60_000);
            let a = LiveClient::start(TokioEnv::new(server.ws_url(), Box::new(|| None), false), cfg.clone()).await;
            let b = LiveClient::start(TokioEnv::new(server.ws_url(), Box::new(|| None), false), cfg).await;
            wait_until("both online", Duration::from_secs(20), async || a.shared.online() && b.shared.online()).await;
            let mut latencies = Vec::new();
            for i in 0..10 {
                let id = format!("w{i}");
                let rounds_before = b.log.rounds.borrow().len();
                let t0 = Instant::now();
                a.put(&id, i).await;
                wait_until("the write reaches the other live client", Duration::from_secs(30), async || b.has(&id).await).await;
                latencies.push(t0.elapsed());
                // The round that pulled it, reported once it finished.
                let pulled = async || b.log.rounds.borrow()[rounds_before..].iter().any(|(r, _)| r.received == 1);
                wait_until("a poked round pulled it", Duration::from_secs(30), pulled).await;
            }
            latencies.sort();
            eprintln!("poke latency over 10 writes: p50 {} ms, max {} ms", latencies[5].as_millis(), latencies[9].as_millis());
            assert!(b.log.rounds.borrow().len() <= 1 + 10 * 2, "no round storm: {}", b.log.rounds.borrow().len());
            assert!(a.error_codes().is_empty() && b.error_codes().is_empty());
            a.stop().await;
            b.stop().await;
        })
        .await;
}

fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test]
async fn a_token_that_expires_ends_the_live_connection() {
    LocalSet::new()
        .run_until(async {
            let dir = tempfile::tempdir().unwrap();
            let secret = "live-s3cret";
            let server = Server::start(&dir.path().join("data"), &["--secret", secret]);
            let mint = move |ttl: u64| auth::issue(secret.as_bytes(), &auth::Claims { library: LIB.into(), user: "u".into(), exp: Some(now_s() + ttl) });

            // A static token valid for 2–3 s: the live connection ends when it expires, and
            // live sync stops instead of retrying with it forever.
            let token = mint(3);
            let fixed = LiveClient::start(TokioEnv::new(server.ws_url(), Box::new(move || Some(token.clone())), false), quick(60_000)).await;
            // A renewing client: each connect mints a token valid for 2 s.
            let renewing = LiveClient::start(TokioEnv::new(server.ws_url(), Box::new(move || Some(mint(2))), true), quick(60_000)).await;
            wait_until("online", Duration::from_secs(20), async || fixed.shared.online() && renewing.shared.online()).await;
            fixed.put("early", 1).await;
            wait_until("an early write goes through", Duration::from_secs(20), async || server.stored(LIB, "docs").contains_key("early")).await;

            wait_until("the static token's live sync stops", Duration::from_secs(30), async || fixed.task.is_finished()).await;
            assert!(fixed.error_codes().contains(&"SYNC_TOKEN_EXPIRED".to_string()), "{:?}", fixed.error_codes());
            assert!(!fixed.shared.online() && !fixed.shared.running());
            let tries = fixed.env.connects.get();
            fixed.put("too-late", 2).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            assert_eq!(fixed.env.connects.get(), tries, "no retries with an expired token");
            assert!(!server.stored(LIB, "docs").contains_key("too-late"));

            // The renewing client went through at least one expiry and syncs on.
            wait_until("the renewing client's token expired once", Duration::from_secs(30), async || renewing.error_codes().contains(&"SYNC_TOKEN_EXPIRED".to_string())).await;
            renewing.put("later", 3).await;
            wait_until("a later write goes through", Duration::from_secs(30), async || server.stored(LIB, "docs").contains_key("later")).await;
            assert!(renewing.env.connects.get() >= 2);
            wait_until("back online", Duration::from_secs(30), async || renewing.shared.online()).await;
            fixed.stop().await;
            renewing.stop().await;
        })
        .await;
}
