//! The connection driver (`sync::live`) over in-memory pipes, in virtual time: a tiny
//! executor runs every task until all wait, then moves the clock to the next timer, so
//! deadlines, backoff and polls play out exactly and instantly.
//!
//! What is checked: failed connects are reported and backed off; rounds carry local
//! writes; a server that stops answering without closing is declared dead after the
//! liveness deadline and replaced by a new connection; a poke from the server makes the
//! client pull at once (long before its poll); the platform going offline drops the
//! connection at once (even in the middle of a stalled round) and coming back reconnects
//! at once; an expired token stops a static-token link and is renewed at once by a link
//! whose token renews.

#![cfg(not(target_arch = "wasm32"))]

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use futures::channel::mpsc;
use futures::executor::LocalPool;
use futures::task::{ArcWake, LocalSpawnExt};
use serde_json::json;
use tidemark::error::{Error, SyncError};
use tidemark::memory::MemoryStore;
use tidemark::store::Store;
use tidemark::sync::drive::{self, Signal};
use tidemark::sync::live::{self, Config, Env, Events, Shared};
use tidemark::sync::session::RoundReport;
use tidemark::sync::transport::{pipe, Pipe};
use tidemark::sync::{Direction, Limits, Message, Progress, Transport};
use tidemark::Replica;
use tidemark_testkit::scenarios::replica_at;

/// Virtual time: timers wake when the executor moves the clock past them.
#[derive(Default)]
struct Clock {
    now: Cell<u64>,
    timers: RefCell<Vec<(u64, Waker)>>,
}

impl Clock {
    fn sleep(self: &Rc<Self>, ms: u64) -> impl Future<Output = ()> {
        let at = self.now.get() + ms;
        let clock = self.clone();
        futures::future::poll_fn(move |cx| {
            if clock.now.get() >= at {
                return Poll::Ready(());
            }
            clock.timers.borrow_mut().push((at, cx.waker().clone()));
            Poll::Pending
        })
    }

    /// Moves to the next timer and wakes everything due; false if no timer is set.
    fn advance(&self) -> bool {
        let mut timers = self.timers.borrow_mut();
        let Some(next) = timers.iter().map(|(at, _)| *at).min() else { return false };
        self.now.set(self.now.get().max(next));
        let now = self.now.get();
        let (due, rest): (Vec<_>, Vec<_>) = timers.drain(..).partition(|(at, _)| *at <= now);
        *timers = rest;
        drop(timers);
        for (_, w) in due {
            w.wake();
        }
        true
    }
}

struct Flag(AtomicBool);
impl ArcWake for Flag {
    fn wake_by_ref(arc: &Arc<Self>) {
        arc.0.store(true, Ordering::SeqCst);
    }
}

/// Runs `fut` (and the pool's tasks) to completion in virtual time.
fn run<T>(pool: &mut LocalPool, clock: &Clock, fut: impl Future<Output = T>) -> T {
    let flag = Arc::new(Flag(AtomicBool::new(true)));
    let waker = futures::task::waker(flag.clone());
    let mut cx = Context::from_waker(&waker);
    let mut fut = pin!(fut);
    let mut spins = 0u64;
    loop {
        spins += 1;
        assert!(spins < 1_000_000, "busy loop at {} ms", clock.now.get());
        if flag.0.swap(false, Ordering::SeqCst) {
            if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
                return v;
            }
            continue;
        }
        pool.run_until_stalled();
        if flag.0.load(Ordering::SeqCst) {
            continue;
        }
        assert!(clock.advance(), "deadlock: nothing runs and no timer is set");
        assert!(clock.now.get() < 10_000_000, "virtual time ran away");
    }
}

/// How the server side of the next connection behaves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Serve,
    /// Answers the hello with `SYNC_TOKEN_EXPIRED`, as a server whose secret says so.
    Expired,
    /// Serves until `Server::swallow` is set, then neither reads nor writes nor closes.
    Swallowing,
}

/// The server's half of a pipe, which can go silent without closing.
struct Gate {
    inner: Pipe,
    shut: Rc<Cell<bool>>,
}

impl Transport for Gate {
    async fn send(&mut self, msg: &Message) -> Result<(), SyncError> {
        if self.shut.get() {
            std::future::pending::<()>().await;
        }
        self.inner.send(msg).await
    }
    async fn recv(&mut self) -> Result<Message, SyncError> {
        let m = self.inner.recv().await?;
        if self.shut.get() {
            std::future::pending::<()>().await;
        }
        Ok(m)
    }
}

struct Server {
    replica: Rc<Replica<MemoryStore>>,
    modes: RefCell<Vec<Mode>>,
    swallow: Rc<Cell<bool>>,
    /// One signal sender per connection, newest last.
    signals: RefCell<Vec<mpsc::UnboundedSender<Signal>>>,
    connects: Cell<u32>,
}

struct TestEnv {
    server: Rc<Server>,
    clock: Rc<Clock>,
    spawner: futures::executor::LocalSpawner,
    refuse: Cell<u32>,
    renews: bool,
    tokens: Cell<u32>,
    sleeps: RefCell<Vec<u64>>,
}

impl Env for TestEnv {
    type Conn = Pipe;
    async fn connect(&self) -> Result<Pipe, Error> {
        self.server.connects.set(self.server.connects.get() + 1);
        if self.refuse.get() > 0 {
            self.refuse.set(self.refuse.get() - 1);
            return Err(SyncError::Connection("refused".into()).into());
        }
        let (near, far) = pipe();
        let server = self.server.clone();
        let mode = server.modes.borrow_mut().pop().unwrap_or(Mode::Serve);
        let (tx, rx) = mpsc::unbounded();
        server.signals.borrow_mut().push(tx);
        let shut = if mode == Mode::Swallowing { server.swallow.clone() } else { Rc::new(Cell::new(false)) };
        self.spawner
            .spawn_local(async move {
                let mut far = Gate { inner: far, shut };
                // The server's half of the handshake, then its passes.
                let Ok(Message::Hello { db_id, .. }) = far.recv().await else { return };
                if mode == Mode::Expired {
                    let _ = far.send(&Message::Error { code: "SYNC_TOKEN_EXPIRED".into(), message: "the token expired".into() }).await;
                    return;
                }
                let head = server.replica.head();
                let welcome = Message::Welcome { db_id: head.db_id, max_row: head.max_row, schema_version: 0 };
                if far.send(&welcome).await.is_ok() {
                    let _ = drive::serve(server.replica.as_ref(), &mut far, &db_id, Limits::default(), rx).await;
                }
            })
            .unwrap();
        Ok(near)
    }
    async fn sleep(&self, ms: u64) {
        self.sleeps.borrow_mut().push(ms);
        self.clock.sleep(ms).await
    }
    fn now_ms(&self) -> u64 {
        self.clock.now.get()
    }
    fn random(&self) -> f64 {
        0.0
    }
    async fn token(&self) -> Result<Option<String>, Error> {
        self.tokens.set(self.tokens.get() + 1);
        Ok(Some(format!("token-{}", self.tokens.get())))
    }
    fn renews_token(&self) -> bool {
        self.renews
    }
}

/// What the driver reported, with the virtual time of each event; `on_round` may act.
#[derive(Default)]
struct Log {
    clock: Rc<Clock>,
    online: RefCell<Vec<(bool, u64)>>,
    rounds: RefCell<Vec<(RoundReport, u64)>>,
    errors: RefCell<Vec<(String, u64)>>,
    #[allow(clippy::type_complexity)]
    on_round: RefCell<Option<Box<dyn FnMut(usize)>>>,
}

impl Events for Log {
    fn online(&self, server: Option<&str>) {
        self.online.borrow_mut().push((server.is_some(), self.clock.now.get()));
    }
    fn progress(&self, _: Direction, _: Progress) {}
    fn round(&self, report: &RoundReport) {
        self.rounds.borrow_mut().push((report.clone(), self.clock.now.get()));
        let n = self.rounds.borrow().len();
        if let Some(f) = self.on_round.borrow_mut().as_mut() {
            f(n);
        }
    }
    fn error(&self, e: &Error) {
        self.errors.borrow_mut().push((e.code().to_string(), self.clock.now.get()));
    }
}

struct World {
    pool: LocalPool,
    clock: Rc<Clock>,
    server: Rc<Server>,
    client: Replica<MemoryStore>,
    shared: Rc<Shared>,
    log: Rc<Log>,
}

fn doc(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    v.as_object().unwrap().clone()
}

fn world() -> World {
    let pool = LocalPool::new();
    let clock = Rc::new(Clock::default());
    let relay = futures::executor::block_on(Replica::open_relay(MemoryStore::new(), Box::new(|| 5_000))).unwrap();
    let server = Rc::new(Server {
        replica: Rc::new(relay),
        modes: RefCell::new(vec![]),
        swallow: Rc::new(Cell::new(false)),
        signals: RefCell::new(vec![]),
        connects: Cell::new(0),
    });
    let client = replica_at(MemoryStore::new(), 1_000);
    let log = Rc::new(Log { clock: clock.clone(), ..Log::default() });
    World { pool, clock, server, client, shared: Rc::new(Shared::default()), log }
}

impl World {
    fn env(&self, refuse: u32, renews: bool) -> TestEnv {
        TestEnv {
            server: self.server.clone(),
            clock: self.clock.clone(),
            spawner: self.pool.spawner(),
            refuse: Cell::new(refuse),
            renews,
            tokens: Cell::new(0),
            sleeps: RefCell::new(vec![]),
        }
    }

    fn on_round(&self, f: impl FnMut(usize) + 'static) {
        *self.log.on_round.borrow_mut() = Some(Box::new(f));
    }

    /// Runs the live loop until it ends (a `stop()` from a callback, or by itself).
    fn live(&mut self, env: &TestEnv, cfg: &Config) {
        let ticket = self.shared.start().expect("nothing runs yet");
        assert!(self.shared.start().is_none(), "one live loop at a time");
        let fut = live::live(&self.client, env, cfg, &self.shared, self.log.as_ref(), ticket);
        run(&mut self.pool, &self.clock, fut);
        assert!(!self.shared.online() && !self.shared.running());
    }

    fn online(&self) -> Vec<bool> {
        self.log.online.borrow().iter().map(|(on, _)| *on).collect()
    }

    fn errors(&self) -> Vec<String> {
        self.log.errors.borrow().iter().map(|(c, _)| c.clone()).collect()
    }
}

#[test]
fn the_driver_backs_off_connects_syncs_and_stops() {
    let mut w = world();
    futures::executor::block_on(w.client.put("docs", doc(json!({"id": "a", "n": 1})))).unwrap();
    let env = w.env(2, false);
    let shared = w.shared.clone();
    w.on_round(move |n| {
        if n == 3 {
            shared.stop();
        }
    });
    let cfg = Config::new("lib", Limits::default());
    w.live(&env, &cfg);

    assert_eq!(w.errors(), vec!["SYNC_CONNECTION", "SYNC_CONNECTION"], "both refused connects are reported");
    let sleeps = env.sleeps.borrow().clone();
    let backoff: Vec<u64> = sleeps.iter().copied().filter(|ms| [250, 500].contains(ms)).collect();
    assert_eq!(backoff, [250, 500], "backoff doubles between failed connects: {sleeps:?}");
    assert_eq!(w.online(), vec![true, false], "online once connected, offline after stop");
    let rounds = w.log.rounds.borrow();
    assert_eq!(rounds.len(), 3);
    assert_eq!(rounds[0].0.sent, 1, "the first round pushes the local write");
    assert_eq!(rounds[1].0.sent + rounds[2].0.sent, 0, "later rounds are idle");
    assert_eq!(rounds[2].1 - rounds[1].1, cfg.poll_ms, "idle rounds come at the poll interval");
    let server_rows = futures::executor::block_on(w.server.replica.store().rows_after(0, 10)).unwrap();
    assert!(server_rows.iter().any(|r| r.op.id == "a"), "the server has the write");
    assert_eq!(w.client.status().pending, 0, "the write is acknowledged");
}

#[test]
fn a_server_that_stops_answering_is_dropped_after_the_deadline_and_replaced() {
    let mut w = world();
    // The first connection goes silent after the first round; the next one works.
    w.server.modes.borrow_mut().push(Mode::Swallowing);
    let env = w.env(0, false);
    let (swallow, shared) = (w.server.swallow.clone(), w.shared.clone());
    w.on_round(move |n| match n {
        1 => swallow.set(true),
        2 => shared.stop(),
        _ => {}
    });
    let cfg = Config::new("lib", Limits::default());
    w.live(&env, &cfg);

    let online = w.log.online.borrow().clone();
    assert_eq!(online.iter().map(|(on, _)| *on).collect::<Vec<_>>(), vec![true, false, true, false]);
    let went_silent = w.log.rounds.borrow()[0].1;
    let detected = online[1].1 - went_silent;
    // A ping after `ping_ms` of silence, dead at `timeout_ms`: never later.
    assert!(detected <= cfg.timeout_ms, "dead socket detected after {detected} ms");
    assert!(detected >= cfg.ping_ms, "not before a ping went unanswered ({detected} ms)");
    assert_eq!(w.errors(), vec!["SYNC_CONNECTION"]);
    assert_eq!(w.server.connects.get(), 2, "a new connection replaced the dead one");
    assert!(w.log.rounds.borrow()[1].1 < cfg.poll_ms * 2);
}

#[test]
fn a_poke_makes_the_client_pull_at_once() {
    let mut w = world();
    let writer = Rc::new(replica_at(MemoryStore::new(), 3_000));
    let env = w.env(0, false);
    let (server, shared, clock) = (w.server.clone(), w.shared.clone(), w.clock.clone());
    let spawner = w.pool.spawner();
    w.on_round(move |n| match n {
        1 => {
            // A second after the first round, another client writes through the server,
            // and the server pokes this connection.
            let (server, writer, clock) = (server.clone(), writer.clone(), clock.clone());
            spawner
                .spawn_local(async move {
                    clock.sleep(1_000).await;
                    writer.put("docs", doc(json!({"id": "elsewhere", "n": 7}))).await.unwrap();
                    let (mut a, mut b) = pipe();
                    let (wid, sid) = (writer.head().db_id, server.replica.head().db_id);
                    let session = tidemark::peer::new_session();
                    let (sent, got) = futures::future::join(
                        drive::send(writer.as_ref(), &mut a, &sid, &session, Limits::default(), &mut |_| {}),
                        drive::receive(server.replica.as_ref(), &mut b, &wid, &session, &mut |_| {}),
                    )
                    .await;
                    assert_eq!(sent.unwrap().sent, got.unwrap().received);
                    let max_row = server.replica.head().max_row;
                    server.signals.borrow().last().unwrap().unbounded_send(Signal::Landed(max_row)).unwrap();
                })
                .unwrap();
        }
        3 => shared.stop(),
        _ => {}
    });
    let cfg = Config { poll_ms: 60_000, ..Config::new("lib", Limits::default()) };
    w.live(&env, &cfg);
    let rounds = w.log.rounds.borrow();
    assert_eq!(rounds[1].0.received, 1, "the poked round pulled the new row");
    assert_eq!(rounds[1].1, 1_000, "at once, not at the 60 s poll");
    // A second after receiving, one more round: its push covers the received row, so the
    // server's point for this client catches up (nothing is sent back).
    assert_eq!(rounds[2].1, 2_000);
    assert_eq!(rounds[2].0.sent, 0);
    assert!(rounds[2].0.push.end > rounds[1].0.push.end, "{:?}", rounds[2].0.push);
    assert_eq!(w.client.status().outgoing.get(&w.server.replica.head().db_id).copied(), Some(w.client.head().max_row));
    let got = futures::executor::block_on(w.client.get("docs", "elsewhere")).unwrap();
    assert!(got.is_some());
}

#[test]
fn going_offline_drops_the_connection_and_coming_back_reconnects_at_once() {
    let mut w = world();
    let env = w.env(0, false);
    let (shared, clock, spawner) = (w.shared.clone(), w.clock.clone(), w.pool.spawner());
    w.on_round(move |n| match n {
        1 => {
            let (shared, clock) = (shared.clone(), clock.clone());
            spawner
                .spawn_local(async move {
                    clock.sleep(500).await;
                    shared.set_network(false);
                    // Offline for a long while: no connect attempts meanwhile.
                    clock.sleep(120_000).await;
                    shared.set_network(true);
                })
                .unwrap();
        }
        2 => shared.stop(),
        _ => {}
    });
    let cfg = Config::new("lib", Limits::default());
    w.live(&env, &cfg);
    let online = w.log.online.borrow().clone();
    assert_eq!(online, vec![(true, 0), (false, 500), (true, 120_500), (false, 120_500)]);
    assert_eq!(w.server.connects.get(), 2, "no attempt while offline");
    assert!(w.errors().is_empty(), "going offline is not an error: {:?}", w.errors());
}

#[test]
fn an_expired_static_token_stops_live_sync_and_a_renewing_one_reconnects() {
    for renews in [false, true] {
        let mut w = world();
        let env = w.env(0, renews);
        let (server, shared) = (w.server.clone(), w.shared.clone());
        w.on_round(move |n| match n {
            1 => server.signals.borrow().last().unwrap().unbounded_send(Signal::Expired).unwrap(),
            2 => shared.stop(),
            _ => {}
        });
        let cfg = Config::new("lib", Limits::default());
        // Without a stop() from the second round, only the expiry can end the loop.
        w.live(&env, &cfg);
        assert_eq!(w.errors(), vec!["SYNC_TOKEN_EXPIRED"], "renews: {renews}");
        if renews {
            assert_eq!((env.tokens.get(), w.server.connects.get()), (2, 2), "a fresh token, at once");
            assert_eq!(w.log.rounds.borrow()[1].1, 0);
        } else {
            assert_eq!((env.tokens.get(), w.server.connects.get()), (1, 1), "no retry with the same expired token");
            assert_eq!(w.log.rounds.borrow().len(), 1);
        }
    }
}

/// `syncNow()` with a token the server says expired: a renewing token is asked for again
/// and the round goes through on a second connection; a static one is refused once.
#[test]
fn sync_now_asks_a_renewing_token_again_when_the_server_says_it_expired() {
    for renews in [false, true] {
        let mut w = world();
        futures::executor::block_on(w.client.put("docs", doc(json!({"id": "a", "n": 1})))).unwrap();
        w.server.modes.borrow_mut().push(Mode::Expired);
        let env = w.env(0, renews);
        let cfg = Config::new("lib", Limits::default());
        let result = run(&mut w.pool, &w.clock, live::once(&w.client, &env, &cfg, &w.shared, w.log.as_ref()));
        if renews {
            let report = result.unwrap();
            assert_eq!(report.sent, 1);
            assert_eq!((env.tokens.get(), w.server.connects.get()), (2, 2), "a fresh token on a second connection");
            assert_eq!(w.errors(), Vec::<String>::new(), "the renewed round succeeded: nothing to report");
        } else {
            assert_eq!(result.unwrap_err().code(), "SYNC_TOKEN_EXPIRED");
            assert_eq!((env.tokens.get(), w.server.connects.get()), (1, 1));
            assert_eq!(w.errors(), vec!["SYNC_TOKEN_EXPIRED"]);
        }
    }
}

#[test]
fn going_offline_in_the_middle_of_a_stalled_round_drops_it_at_once() {
    let mut w = world();
    w.server.modes.borrow_mut().push(Mode::Swallowing);
    let env = w.env(0, false);
    let (shared, clock, spawner, swallow) = (w.shared.clone(), w.clock.clone(), w.pool.spawner(), w.server.swallow.clone());
    w.on_round(move |n| match n {
        1 => {
            // The path goes silent, a write starts a round that stalls, then the
            // platform reports the network gone.
            swallow.set(true);
            shared.wake();
            let (shared, clock) = (shared.clone(), clock.clone());
            spawner
                .spawn_local(async move {
                    clock.sleep(500).await;
                    shared.set_network(false);
                    clock.sleep(5_000).await;
                    shared.set_network(true);
                })
                .unwrap();
        }
        2 => shared.stop(),
        _ => {}
    });
    let cfg = Config::new("lib", Limits::default());
    w.live(&env, &cfg);
    let online = w.log.online.borrow().clone();
    assert_eq!(online, vec![(true, 0), (false, 500), (true, 5_500), (false, 5_500)], "dropped at once, not at the ping deadline");
    assert!(w.errors().is_empty(), "{:?}", w.errors());
}
