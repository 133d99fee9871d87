//! Helpers for tests that drive the real `tidemark-server` binary: start and kill it, a
//! native sync client (the engine's `Transport` over tokio-tungstenite), raw WebSockets for
//! hostile input, and a tiny HTTP GET.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tidemark::error::{Error, SyncError};
use tidemark::memory::MemoryStore;
use tidemark::sync::pass::Limits;
use tidemark::sync::drive;
use tidemark::sync::session::RoundReport;
use tidemark::sync::{Message, Transport};
use tidemark::{Replica, Schema, Write};
use tokio::net::TcpStream as TokioTcp;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const LIB: &str = "lib";

/// A running server process; killed (SIGKILL) when dropped.
pub struct Server {
    child: Child,
    _stdout: BufReader<ChildStdout>,
    pub addr: SocketAddr,
    pub data: PathBuf,
}

/// A free local address to listen on (for servers that must know each other's address
/// before they start, or restart on the same one).
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

impl Server {
    /// Starts the binary on a free port with `data` as its data directory.
    pub fn start(data: &Path, extra: &[&str]) -> Server {
        Server::start_at(data, "127.0.0.1:0", extra)
    }

    /// Starts the binary listening on `listen`.
    pub fn start_at(data: &Path, listen: &str, extra: &[&str]) -> Server {
        Server::start_binary(Path::new(env!("CARGO_BIN_EXE_tidemark-server")), data, listen, extra)
    }

    /// Starts the server binary at `bin` (benchmarks compare builds) listening on `listen`.
    pub fn start_binary(bin: &Path, data: &Path, listen: &str, extra: &[&str]) -> Server {
        Server::start_env(bin, data, listen, extra, &[])
    }

    /// Starts the server binary with extra environment variables (fault-injection hooks).
    pub fn start_env(bin: &Path, data: &Path, listen: &str, extra: &[&str], env: &[(&str, &str)]) -> Server {
        std::fs::create_dir_all(data).unwrap();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(data.with_extension("log")).unwrap();
        let mut child = Command::new(bin)
            .args(["--listen", listen, "--data"])
            .arg(data)
            .args(extra)
            .env("RUST_LOG", "info")
            .env_remove("TIDEMARK_SECRET")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("the server binary starts");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        // Read the "listening on" line, with a deadline so a broken build cannot hang tests.
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut line = String::new();
            let _ = stdout.read_line(&mut line);
            let _ = tx.send(line);
            stdout
        });
        let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
        let stdout = reader.join().unwrap();
        let addr = line
            .trim()
            .strip_prefix("tidemark-server listening on http://")
            .and_then(|s| s.trim_end_matches('/').parse().ok())
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!("the server did not start: {line:?}; see {}", data.with_extension("log").display())
            });
        Server { child, _stdout: stdout, addr, data: data.to_path_buf() }
    }

    /// SIGTERM, then wait (up to 10 s) for the process to exit by itself.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        for _ in 0..100 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    /// SIGKILL: no chance to flush or close anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The process id (to pause and resume it with signals).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/sync", self.addr)
    }

    pub fn get(&self, path: &str, bearer: Option<&str>) -> (u16, String) {
        http_get(self.addr, path, bearer)
    }

    pub fn healthy(&self) -> bool {
        self.get("/healthz", None) == (200, "ok".to_string())
    }

    pub fn status(&self, library: &str, bearer: Option<&str>) -> Value {
        let (code, body) = self.get(&format!("/v1/libraries/{library}/status"), bearer);
        assert_eq!(code, 200, "status: {body}");
        serde_json::from_str(&body).unwrap()
    }

    pub fn max_row(&self, library: &str, bearer: Option<&str>) -> u64 {
        self.status(library, bearer)["maxRow"].as_u64().unwrap()
    }

    pub fn db_id(&self, library: &str) -> String {
        self.status(library, None)["dbId"].as_str().unwrap().to_string()
    }

    /// `GET /v1/peers`, parsed.
    pub fn peers(&self, bearer: Option<&str>) -> Value {
        let (code, body) = self.get("/v1/peers", bearer);
        assert_eq!(code, 200, "peers: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Every stored document of a library's collection, read from the SQLite file (the
    /// server keeps running): id → `{d, s, t}` (view, stamps, tombstone).
    pub fn stored(&self, library: &str, collection: &str) -> std::collections::BTreeMap<String, Value> {
        let file = self.data.join(format!("{library}.sqlite"));
        if !file.is_file() {
            return Default::default();
        }
        let conn = rusqlite::Connection::open_with_flags(&file, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        // A file being created has no tables yet.
        let Ok(mut stmt) = conn.prepare("SELECT id, state FROM docs WHERE collection = ?1") else { return Default::default() };
        let rows = stmt.query_map([collection], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))).unwrap();
        rows.map(|r| {
            let (id, state) = r.unwrap();
            let v: Value = serde_json::from_str(&state).unwrap();
            (id, json!({"d": v.get("d"), "s": v.get("s"), "t": v.get("t")}))
        })
        .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A minimal HTTP/1.0 GET: status code and body.
pub fn http_get(addr: SocketAddr, path: &str, bearer: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = bearer.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.0\r\nHost: test\r\n{auth}\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, body.to_string())
}

pub type Ws = WebSocketStream<MaybeTlsStream<TokioTcp>>;

pub async fn raw_ws(server: &Server) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(server.ws_url()).await.expect("websocket connects");
    ws
}

/// The engine's transport over a tokio-tungstenite client socket.
pub struct Client {
    pub ws: Ws,
}

impl Client {
    pub async fn connect(server: &Server) -> Result<Client, Error> {
        let (ws, _) = tokio_tungstenite::connect_async_with_config(server.ws_url(), None, true)
            .await
            .map_err(|e| SyncError::Connection(format!("cannot connect: {e}")))?;
        Ok(Client { ws })
    }
}

impl Transport for Client {
    async fn send(&mut self, msg: &Message) -> Result<(), SyncError> {
        self.ws.send(Frame::Text(msg.encode().into())).await.map_err(|e| SyncError::Connection(e.to_string()))
    }

    async fn recv(&mut self) -> Result<Message, SyncError> {
        loop {
            match self.ws.next().await {
                None => return Err(SyncError::Connection("closed".into())),
                Some(Err(e)) => return Err(SyncError::Connection(e.to_string())),
                Some(Ok(Frame::Text(t))) => return Message::decode(t.as_str()).map_err(SyncError::Protocol),
                Some(Ok(Frame::Ping(_) | Frame::Pong(_) | Frame::Frame(_))) => continue,
                Some(Ok(Frame::Close(_))) => return Err(SyncError::Connection("closed by the server".into())),
                Some(Ok(Frame::Binary(_))) => return Err(SyncError::Protocol("binary frame".into())),
            }
        }
    }
}

pub fn schema() -> Schema {
    Schema::from_json(json!({"version": 1, "collections": {"docs": {"primaryKey": "id", "indexes": {"byN": "n"}}}})).unwrap()
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// A native client replica (in memory).
pub async fn client() -> Replica<MemoryStore> {
    Replica::open(MemoryStore::new(), schema(), Box::new(now_ms)).await.unwrap()
}

pub async fn put_all(r: &Replica<MemoryStore>, ids: impl Iterator<Item = String>, n: i64) {
    let writes: Vec<Write> = ids
        .map(|id| Write::Put { collection: "docs".into(), doc: json!({"id": id, "n": n}).as_object().unwrap().clone() })
        .collect();
    for chunk in writes.chunks(500) {
        r.write(chunk.to_vec()).await.unwrap();
    }
}

/// Connects and greets the server; returns the transport and the server's db id.
pub async fn hello(r: &Replica<MemoryStore>, server: &Server, token: Option<String>) -> Result<(Client, String), Error> {
    hello_lib(r, server, LIB, token).await
}

pub async fn hello_lib(r: &Replica<MemoryStore>, server: &Server, library: &str, token: Option<String>) -> Result<(Client, String), Error> {
    let mut t = Client::connect(server).await?;
    let id = drive::hello(r, &mut t, library, token).await?;
    Ok((t, id))
}

/// One round (push then pull) over a fresh connection, like `syncNow()`.
pub async fn round(r: &Replica<MemoryStore>, server: &Server, limits: Limits, token: Option<String>) -> Result<RoundReport, Error> {
    round_lib(r, server, LIB, limits, token).await
}

pub async fn round_lib(r: &Replica<MemoryStore>, server: &Server, library: &str, limits: Limits, token: Option<String>) -> Result<RoundReport, Error> {
    let (mut t, id) = hello_lib(r, server, library, token).await?;
    let report = drive::round(r, &mut t, &id, limits, &mut |_, _| {}).await;
    let _ = t.ws.close(None).await;
    report
}

/// One round against `url` (a server that may be paused, slow or gone): connecting has 5 s,
/// the round `timeout`; failures are returned, never waited out.
pub async fn round_url(r: &Replica<MemoryStore>, url: &str, limits: Limits, timeout: Duration) -> Result<RoundReport, Error> {
    let (ws, _) = match tokio::time::timeout(Duration::from_secs(5), tokio_tungstenite::connect_async_with_config(url, None, true)).await {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => return Err(SyncError::Connection(format!("cannot connect: {e}")).into()),
        Err(_) => return Err(SyncError::Connection("connecting timed out".into()).into()),
    };
    let mut t = Client { ws };
    let go = async {
        let id = drive::hello(r, &mut t, LIB, None).await?;
        drive::round(r, &mut t, &id, limits, &mut |_, _| {}).await
    };
    let report = match tokio::time::timeout(timeout, go).await {
        Ok(r) => r,
        Err(_) => Err(SyncError::Connection("the round timed out".into()).into()),
    };
    let _ = t.ws.close(None).await;
    report
}

/// Rounds until one is complete (not capped); returns how many it took.
pub async fn sync_fully(r: &Replica<MemoryStore>, server: &Server, limits: Limits, token: Option<String>) -> usize {
    for n in 1..=200 {
        if !round(r, server, limits, token.clone()).await.unwrap().capped {
            return n;
        }
    }
    panic!("sync did not complete in 200 rounds");
}

pub async fn docs(r: &Replica<MemoryStore>) -> Vec<serde_json::Map<String, Value>> {
    r.query("docs", &json!({})).await.unwrap()
}

// ---- A native live client: the engine's connection driver over tokio ----

/// What a live client's driver reported, with when.
#[derive(Default)]
pub struct LiveLog {
    pub online: std::cell::RefCell<Vec<(bool, std::time::Instant)>>,
    pub rounds: std::cell::RefCell<Vec<(RoundReport, std::time::Instant)>>,
    pub errors: std::cell::RefCell<Vec<(String, std::time::Instant)>>,
}

impl tidemark::sync::live::Events for LiveLog {
    fn online(&self, server: Option<&str>) {
        self.online.borrow_mut().push((server.is_some(), std::time::Instant::now()));
    }
    fn progress(&self, _: tidemark::sync::Direction, _: tidemark::sync::Progress) {}
    fn round(&self, report: &RoundReport) {
        self.rounds.borrow_mut().push((report.clone(), std::time::Instant::now()));
    }
    fn error(&self, e: &Error) {
        self.errors.borrow_mut().push((e.code().to_string(), std::time::Instant::now()));
    }
}

/// Tokio sockets and timers for the driver; the token comes from `token` on every connect.
pub struct TokioEnv {
    pub url: String,
    pub token: Box<dyn Fn() -> Option<String>>,
    pub renews: bool,
    pub connects: std::cell::Cell<u32>,
    started: std::time::Instant,
}

impl TokioEnv {
    pub fn new(url: String, token: Box<dyn Fn() -> Option<String>>, renews: bool) -> TokioEnv {
        TokioEnv { url, token, renews, connects: std::cell::Cell::new(0), started: std::time::Instant::now() }
    }
}

impl tidemark::sync::live::Env for TokioEnv {
    type Conn = tidemark_server::upstream::Upstream;
    async fn connect(&self) -> Result<Self::Conn, Error> {
        self.connects.set(self.connects.get() + 1);
        let url = tidemark_server::upstream::PeerUrl::parse(&self.url).map_err(SyncError::Connection)?;
        Ok(tidemark_server::upstream::Upstream::connect(&url, 16 << 20, Duration::from_secs(10), Duration::from_secs(120)).await?)
    }
    async fn sleep(&self, ms: u64) {
        tokio::time::sleep(Duration::from_millis(ms)).await
    }
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
    fn random(&self) -> f64 {
        0.5
    }
    async fn token(&self) -> Result<Option<String>, Error> {
        Ok((self.token)())
    }
    fn renews_token(&self) -> bool {
        self.renews
    }
}

/// A client replica running live sync on the current `LocalSet` until `stop()`.
pub struct LiveClient {
    pub replica: std::rc::Rc<Replica<MemoryStore>>,
    pub shared: std::rc::Rc<tidemark::sync::live::Shared>,
    pub log: std::rc::Rc<LiveLog>,
    pub env: std::rc::Rc<TokioEnv>,
    pub task: tokio::task::JoinHandle<()>,
}

impl LiveClient {
    /// Starts live sync of a new client replica with `cfg` (library `LIB`).
    pub async fn start(env: TokioEnv, cfg: tidemark::sync::live::Config) -> LiveClient {
        let replica = std::rc::Rc::new(client().await);
        let shared = std::rc::Rc::new(tidemark::sync::live::Shared::default());
        let log = std::rc::Rc::new(LiveLog::default());
        let env = std::rc::Rc::new(env);
        let ticket = shared.start().expect("not running yet");
        let (r, s, l, e) = (replica.clone(), shared.clone(), log.clone(), env.clone());
        let task = tokio::task::spawn_local(async move {
            tidemark::sync::live::live(r.as_ref(), e.as_ref(), &cfg, s.as_ref(), l.as_ref(), ticket).await;
        });
        LiveClient { replica, shared, log, env, task }
    }

    /// A local write, then a wake (as the browser's writes do).
    pub async fn put(&self, id: &str, n: i64) {
        put_all(&self.replica, std::iter::once(id.to_string()), n).await;
        self.shared.wake();
    }

    pub fn online_changes(&self) -> Vec<bool> {
        self.log.online.borrow().iter().map(|(on, _)| *on).collect()
    }

    pub fn error_codes(&self) -> Vec<String> {
        self.log.errors.borrow().iter().map(|(c, _)| c.clone()).collect()
    }

    pub async fn has(&self, id: &str) -> bool {
        self.replica.get("docs", id).await.unwrap().is_some()
    }

    pub async fn stop(self) {
        self.shared.stop();
        let _ = tokio::time::timeout(Duration::from_secs(20), self.task).await;
    }
}

/// Waits (bounded by `within`) until `check` holds; panics with `what` otherwise.
pub async fn wait_until(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !check().await {
        assert!(std::time::Instant::now() < deadline, "{what}: not within {} s", within.as_secs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A JSON protocol frame.
pub fn json_frame(v: Value) -> Frame {
    Frame::Text(v.to_string().into())
}

/// A raw `hello` for library `LIB` from `db_id`.
pub fn raw_hello(db_id: &str, token: Option<&str>) -> Frame {
    json_frame(json!({"v": 1, "type": "hello", "library": LIB, "token": token, "dbId": db_id, "schemaVersion": 1}))
}

/// Row `n` of `origin`'s log: a put of `docs/<id>` with `fields`, stamped now.
pub fn raw_row(origin: &str, n: u64, id: &str, fields: Value) -> Value {
    let ts = tidemark::clock::Stamp { version: 1, wall: now_ms(), counter: n as u32, node: origin.into() }.encode();
    json!({"row": n, "op": {"origin": origin, "originRow": n, "ts": ts, "schemaVersion": 1, "collection": "docs", "id": id, "kind": "put", "fields": fields}})
}

/// The frames of a push of `rows` (rows 1..=n of `db_id`'s log) as one batch: hello,
/// start, preflight, begin, batch.
pub fn push_frames(db_id: &str, token: Option<&str>, rows: Vec<Value>) -> Vec<Frame> {
    let n = rows.len();
    vec![
        raw_hello(db_id, token),
        json_frame(json!({"v": 1, "type": "start", "session": "sess1", "direction": "push", "perDiff": 1000, "maxDiffs": 10})),
        json_frame(json!({"v": 1, "type": "preflight", "session": "sess1", "dbId": db_id, "maxRow": n, "schemaVersion": 1, "sessions": []})),
        json_frame(json!({"v": 1, "type": "begin", "session": "sess1", "start": -1, "snapshot": false})),
        json_frame(json!({"v": 1, "type": "batch", "session": "sess1", "after": -1, "covers": n, "rows": rows})),
    ]
}

/// How a raw connection ended: the error code the server sent (if any) and the close code
/// of its close frame (`None`: the connection ended without one, as a reset does — 1006).
#[derive(Debug, PartialEq)]
pub struct Ending {
    pub code: Option<String>,
    pub close: Option<u16>,
}

impl Ending {
    pub fn new(code: &str, close: u16) -> Ending {
        Ending { code: Some(code.into()), close: Some(close) }
    }
}

/// Reads until the server's close frame (or the end of the connection), skipping what
/// comes before (welcome, point, acks).
pub async fn ending(ws: &mut Ws) -> Ending {
    let mut end = Ending { code: None, close: None };
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(frame) = ws.next().await {
            match frame {
                Ok(Frame::Text(t)) => {
                    if let Ok(Message::Error { code, .. }) = Message::decode(t.as_str()) {
                        end.code.get_or_insert(code);
                    }
                }
                Ok(Frame::Close(c)) => {
                    end.close = Some(c.map_or(1005, |c| u16::from(c.code)));
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server neither answered nor closed within 30 s");
    end
}

/// Sends `frames` on a fresh connection (stopping at the first that cannot be sent) and
/// reads how the server ended it.
pub async fn raw_ending(server: &Server, frames: Vec<Frame>) -> Ending {
    let mut ws = raw_ws(server).await;
    for f in frames {
        if ws.send(f).await.is_err() {
            break;
        }
    }
    ending(&mut ws).await
}
