//! The connection driver (`sync::live`) over in-memory pipes: it reports failed connects,
//! backs off exponentially before retrying, comes online, runs rounds that carry local
//! writes to the server and the server's rows back, and stops when told.

#![cfg(not(target_arch = "wasm32"))]

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use futures::executor::LocalPool;
use futures::task::LocalSpawnExt;
use serde_json::json;
use tidemark::error::{Error, SyncError};
use tidemark::memory::MemoryStore;
use tidemark::store::Store;
use tidemark::sync::live::{self, Config, Env, Events, Shared};
use tidemark::sync::session::RoundReport;
use tidemark::sync::transport::{pipe, Pipe};
use tidemark::sync::{drive, Direction, Limits, Progress};
use tidemark::Replica;
use tidemark_testkit::scenarios::replica_at;

struct TestEnv {
    server: Rc<Replica<MemoryStore>>,
    spawner: futures::executor::LocalSpawner,
    refuse: Cell<u32>,
    sleeps: RefCell<Vec<u64>>,
}

impl Env for TestEnv {
    type Conn = Pipe;
    async fn connect(&self) -> Result<Pipe, Error> {
        if self.refuse.get() > 0 {
            self.refuse.set(self.refuse.get() - 1);
            return Err(SyncError::Connection("refused".into()).into());
        }
        let (near, mut far) = pipe();
        let server = self.server.clone();
        self.spawner
            .spawn_local(async move {
                // The server's half of the handshake, then its passes.
                let Ok(tidemark::sync::Message::Hello { db_id, .. }) = tidemark::sync::Transport::recv(&mut far).await else { return };
                let head = server.head();
                let welcome = tidemark::sync::Message::Welcome { db_id: head.db_id, max_row: head.max_row, schema_version: 0 };
                if tidemark::sync::Transport::send(&mut far, &welcome).await.is_ok() {
                    let _ = drive::serve(server.as_ref(), &mut far, &db_id, Limits::default()).await;
                }
            })
            .unwrap();
        Ok(near)
    }
    async fn sleep(&self, ms: u64) {
        self.sleeps.borrow_mut().push(ms);
        // Let the server task run: yield once, asking to be polled again.
        let mut yielded = false;
        futures::future::poll_fn(|cx| {
            if yielded {
                return std::task::Poll::Ready(());
            }
            yielded = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        })
        .await;
    }
    fn random(&self) -> f64 {
        0.0
    }
    async fn token(&self) -> Result<Option<String>, Error> {
        Ok(None)
    }
}

#[derive(Default)]
struct Log {
    online: RefCell<Vec<bool>>,
    rounds: RefCell<Vec<RoundReport>>,
    errors: RefCell<Vec<String>>,
    shared: RefCell<Option<Rc<Shared>>>,
}

impl Events for Log {
    fn online(&self, server: Option<&str>) {
        self.online.borrow_mut().push(server.is_some());
    }
    fn progress(&self, _: Direction, _: Progress) {}
    fn round(&self, report: &RoundReport) {
        self.rounds.borrow_mut().push(report.clone());
        if self.rounds.borrow().len() == 3 {
            self.shared.borrow().as_ref().unwrap().stop();
        }
    }
    fn error(&self, e: &Error) {
        self.errors.borrow_mut().push(e.code().to_string());
    }
}

#[test]
fn the_driver_backs_off_connects_syncs_and_stops() {
    let mut pool = LocalPool::new();
    let server = Rc::new(futures::executor::block_on(Replica::open_relay(MemoryStore::new(), Box::new(|| 5_000))).unwrap());
    let client = replica_at(MemoryStore::new(), 1_000);
    let doc = |v: serde_json::Value| v.as_object().unwrap().clone();
    futures::executor::block_on(client.put("docs", doc(json!({"id": "a", "n": 1})))).unwrap();
    let env = TestEnv { server: server.clone(), spawner: pool.spawner(), refuse: Cell::new(2), sleeps: RefCell::new(vec![]) };
    let shared = Rc::new(Shared::default());
    let log = Log::default();
    *log.shared.borrow_mut() = Some(shared.clone());
    let cfg = Config::new("lib", Limits::default());
    let ticket = shared.start().expect("nothing runs yet");
    assert!(shared.start().is_none(), "one live loop at a time");
    pool.run_until(live::live(&client, &env, &cfg, &shared, &log, ticket));

    assert_eq!(*log.errors.borrow(), vec!["SYNC_CONNECTION", "SYNC_CONNECTION"], "both refused connects are reported");
    let sleeps = env.sleeps.borrow().clone();
    assert_eq!(sleeps[..2], [250, 500], "backoff doubles between failed connects: {sleeps:?}");
    assert_eq!(*log.online.borrow(), vec![true, false], "online once connected, offline after stop");
    let rounds = log.rounds.borrow();
    assert_eq!(rounds.len(), 3);
    assert_eq!(rounds[0].sent, 1, "the first round pushes the local write");
    assert_eq!(rounds[1].sent + rounds[2].sent, 0, "later rounds are idle");
    assert!(futures::executor::block_on(server.store().rows_after(0, 10)).unwrap().iter().any(|r| r.op.id == "a"), "the server has the write");
    assert_eq!(client.status().pending, 0, "the write is acknowledged");
    assert!(!shared.online() && !shared.running());
}
