//! Load on real `tidemark-server` processes from native clients (the engine's client over
//! tokio-tungstenite), for `make bench`:
//!
//! - `rounds N…`: N devices of one library, each synced once and then holding one new
//!   write, run one round (connect, hello, push, pull) at the same moment; per-device latency
//!   from that moment to the end of its round (p50, p99, max), and the server's peak RSS. A
//!   fresh server per N. The devices pull without merging (`Device`). Where a round's time
//!   goes: `steps_p50_ms`, when the devices were through each step (p50).
//! - `idle N`: N live clients connect and greet, then stay connected doing nothing (the
//!   server pings them); the server's RSS once all are held.
//! - `instances`: 1 and then 3 instances on one PostgreSQL database (a private cluster, fsync
//!   off: this measures the servers, not the disk): writers spread over the instances push
//!   batches for a while — rows committed per second — while a probe writes one document at a
//!   time through the first instance and a reader polls the last one — client-visible latency
//!   from the write's acknowledgement to the reader holding it.
//!
//! - `snapshots N DOCS`: a library of DOCS documents (default 100,000) on a freshly
//!   restarted server; N fresh clients (default 8) join at once, each pulling the whole
//!   library as a snapshot: the server's RSS before and its peak during (snapshots are
//!   paged from storage, `perDiff` documents per chunk, so the peak stays bounded).
//!
//! `cargo bench -p tidemark-server --bench load -- [rounds 100 500 2000] [idle 10000]
//! [snapshots 8 100000] [instances] [--postgres] [--out FILE]` (no section: all of them). `--postgres` runs
//! `rounds` and `idle` on a PostgreSQL instance instead of SQLite. `TIDEMARK_SERVER` picks
//! another server binary (to compare builds). Prints one JSON object (and writes it to
//! `--out`).

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::{Client, Server, LIB};
use tidemark::store::Store as _;
use tidemark::sync::Transport;
use tidemark::sync::pass::Limits;
use tidemark::sync::{drive, Direction, Message};
use tidemark_testkit::PgCluster;
use tokio_tungstenite::tungstenite::Message as Frame;

fn binary() -> PathBuf {
    std::env::var_os("TIDEMARK_SERVER").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_tidemark-server")))
}

/// Where a benchmark's server keeps its libraries.
enum Backing {
    Sqlite,
    Postgres(String),
}

fn start(dir: &Path, name: &str, backing: &Backing) -> Server {
    match backing {
        Backing::Sqlite => Server::start_binary(&binary(), &dir.join(name), "127.0.0.1:0", &[]),
        Backing::Postgres(url) => Server::start_binary(&binary(), &dir.join(name), "127.0.0.1:0", &["--postgres", url, "--instance", name]),
    }
}

/// A process's resident memory now and at its peak, in MB.
fn memory(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        status.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
    };
    (kb("VmRSS:") / 1024.0, kb("VmHWM:") / 1024.0)
}

/// CPU seconds (user + system) a process has used so far (`self` for this one).
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces), from field 3 on.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0.0)).collect();
    // utime and stime are fields 14 and 15, in clock ticks (100 per second on Linux).
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
}

/// The 1-minute load average (other processes share the machine).
fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg").ok().and_then(|s| s.split_whitespace().next()?.parse().ok()).unwrap_or(f64::NAN)
}

/// The value at quantile `q` of sorted `v`.
fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1]
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

async fn rounds(n: usize, backing: &Backing) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), "rounds", backing);
    let url = server.ws_url();
    // Devices that have synced before (so each round is the small one of a device in use:
    // its own new write up, what landed since its last pull down), then write once.
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        clients.push(Device { replica: support::client().await, pulled: None, pushed: None, steps: Vec::new() });
    }
    for chunk in clients.chunks_mut(100) {
        let synced = futures::future::join_all(chunk.iter_mut().map(|d| d.round(&url))).await;
        if let Some(Err(e)) = synced.into_iter().find(|r| r.is_err()) {
            panic!("a device's first sync failed: {e}");
        }
    }
    for (i, d) in clients.iter().enumerate() {
        d.replica.put("docs", json!({"id": format!("c{i}"), "n": i}).as_object().unwrap().clone()).await.unwrap();
    }
    let (go, ready) = tokio::sync::watch::channel(None::<Instant>);
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|c| {
            let (url, mut ready) = (url.clone(), ready.clone());
            tokio::spawn(async move {
                let mut c = c;
                let start = loop {
                    if let Some(t) = *ready.borrow_and_update() {
                        break t;
                    }
                    ready.changed().await.unwrap();
                };
                let r = tokio::time::timeout(Duration::from_secs(120), c.round(&url)).await.unwrap_or_else(|_| Err("the round timed out".into()));
                // The replica is handed back, so dropping it (this process shares the
                // machine with the server) waits until every round is over.
                (start.elapsed().as_secs_f64() * 1000.0, r, c)
            })
        })
        .collect();
    drop(ready);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let load = loadavg();
    let (server_cpu, own_cpu) = (cpu_seconds(&server.pid().to_string()), cpu_seconds("self"));
    let began = Instant::now();
    go.send(Some(began)).unwrap();
    let mut ms = Vec::new();
    let mut pushed_ms = Vec::new();
    let mut steps: std::collections::BTreeMap<&str, Vec<f64>> = Default::default();
    let mut errors = Vec::new();
    let mut pulled = 0u64;
    let mut done = Vec::with_capacity(n);
    for t in tasks {
        let (elapsed, r, c) = t.await.unwrap();
        if let Some(at) = c.pushed {
            pushed_ms.push(at.saturating_duration_since(began).as_secs_f64() * 1000.0);
        }
        for (name, at) in &c.steps {
            steps.entry(*name).or_default().push(at.saturating_duration_since(began).as_secs_f64() * 1000.0);
        }
        done.push(c);
        match r {
            Ok(received) => {
                ms.push(elapsed);
                pulled += received;
            }
            Err(e) => errors.push(e),
        }
    }
    let wall = began.elapsed().as_secs_f64();
    let (server_cpu, own_cpu) = (cpu_seconds(&server.pid().to_string()) - server_cpu, cpu_seconds("self") - own_cpu);
    drop(done);
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    pushed_ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (_, peak) = memory(server.pid());
    // When the devices reached each step of the round (p50 from the start): the pushes,
    // the wait for a pull's admission (`preflight`), the rows (`begin` → the end).
    let steps_p50: serde_json::Map<String, Value> = steps
        .into_iter()
        .map(|(name, mut v)| {
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
            (name.to_string(), json!(round2(quantile(&v, 0.5))))
        })
        .collect();
    if !errors.is_empty() {
        eprintln!("load: {} of {n} rounds failed, e.g. {}", errors.len(), errors[0]);
    }
    let out = json!({
        "clients": n,
        "p50_ms": round2(quantile(&ms, 0.5)),
        "p99_ms": round2(quantile(&ms, 0.99)),
        "max_ms": round2(quantile(&ms, 1.0)),
        "peak_rss_mb": round2(peak),
        "errors": errors.len(),
        "rows_pulled_per_client": round2(pulled as f64 / n.max(1) as f64),
        // When the devices' pushes ended (each pulls right after): the rounds start at
        // once, so every push is served before most pulls begin.
        "pushed_p50_ms": round2(quantile(&pushed_ms, 0.5)),
        "pushed_max_ms": round2(quantile(&pushed_ms, 1.0)),
        "steps_p50_ms": steps_p50,
        // Where the time went: the whole run's wall time, the CPU the server and this
        // load generator used meanwhile (they share the machine), and its load average.
        "wall_s": round2(wall),
        "server_cpu_s": round2(server_cpu),
        "generator_cpu_s": round2(own_cpu),
        "loadavg_before": load,
    });
    eprintln!("load: rounds {out}");
    out
}

/// A device of the `rounds` section, as the server sees it: it pushes its writes with the
/// engine's own sender, and pulls acknowledging each batch the way the engine's receiver
/// does, without merging the rows into a store. The 2,000 devices of a real deployment
/// merge on their own machines; here they share the server's two cores, and merging ~2,000
/// rows each (4 million in all) would measure the generator, not the server. What crosses
/// the wire is exactly a real client's round.
struct Device {
    replica: tidemark::Replica<tidemark::MemoryStore>,
    /// The session and point of its last pull: the server remembers them too.
    pulled: Option<(String, i64)>,
    /// When its last round's push ended (the pull follows).
    pushed: Option<Instant>,
    /// When each step of its last round ended: connected, hello answered, push done,
    /// the pull's preflight received (its admission), the pull's first frame of rows.
    steps: Vec<(&'static str, Instant)>,
}

/// The fields of a pull's frames a device acts on; rows and documents are skipped unread.
#[derive(serde::Deserialize)]
struct PullFrame {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    start: i64,
    #[serde(default)]
    covers: i64,
    #[serde(default)]
    max_row: i64,
    #[serde(default)]
    rows: Vec<serde::de::IgnoredAny>,
    #[serde(default)]
    docs: Vec<serde::de::IgnoredAny>,
    #[serde(default)]
    message: String,
}

/// A device's WebSocket settings: a 16 KiB read buffer. With the library's default
/// (128 KiB) every read of the socket zero-fills up to 128 KiB of buffer before reading
/// into it, and a pull's frames arrive a few dozen KiB per read: the 2,000 devices spent
/// ~6% of the machine's CPU zeroing memory (2,000 rounds: the generator's CPU 2.1–2.4 s
/// with it, 1.4–1.8 s without), CPU the server they share the two cores with did not get.
fn device_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(16 * 1024)
}

impl Device {
    /// One round (connect, hello, push, pull); returns the rows (or documents) pulled.
    async fn round(&mut self, url: &str) -> Result<u64, String> {
        let err = |e: &dyn std::fmt::Display| e.to_string();
        let c = &self.replica;
        let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(device_config()), true).await.map_err(|e| err(&e))?;
        self.steps = vec![("connected", Instant::now())];
        let mut t = Client { ws };
        let server = drive::hello(c, &mut t, LIB, None).await.map_err(|e| err(&e))?;
        self.steps.push(("hello", Instant::now()));
        let limits = Limits::default();
        let start = |session: &String, direction| Message::Start { session: session.clone(), direction, per_diff: limits.per_diff, max_diffs: limits.max_diffs };
        let push = tidemark::peer::new_session();
        t.send(&start(&push, Direction::Push)).await.map_err(|e| err(&e))?;
        drive::send(c, &mut t, &server, &push, limits, &mut |_| {}).await.map_err(|e| err(&e))?;
        self.pushed = Some(Instant::now());
        self.steps.push(("pushed", Instant::now()));
        let session = tidemark::peer::new_session();
        t.send(&start(&session, Direction::Pull)).await.map_err(|e| err(&e))?;
        loop {
            match t.recv().await.map_err(|e| err(&e))? {
                Message::Preflight { .. } => {
                    self.steps.push(("preflight", Instant::now()));
                    break;
                }
                // Rows landed meanwhile: the server says so between and during passes.
                Message::Poke { .. } => continue,
                other => return Err(format!("expected preflight, got {}", other.kind())),
            }
        }
        // The session of its last pull, which the server lists too (a first pull: none). No
        // marks: the device holds only its own writes, which the server skips as echoes.
        let (matched, point) = match &self.pulled {
            Some((s, p)) => (Some(s.clone()), *p),
            None => (None, -1),
        };
        let head = c.head();
        let sent = c.store().peers().await.map_err(|e| err(&e))?.remove(&server).unwrap_or_else(tidemark::peer::PeerRecord::new);
        let answer = Message::Point {
            session: session.clone(),
            db_id: head.db_id.clone(),
            max_row: head.max_row,
            schema_version: head.schema_version,
            point,
            matched,
            candidates: vec![],
            // The sessions it pushed under (echo suppression relies on them).
            sent_sessions: sent.out_history.iter().map(|e| e.session.clone()).collect(),
            marks: vec![],
            own_only: false,
            older_as_snapshot: false,
        };
        t.send(&answer).await.map_err(|e| err(&e))?;
        let (mut expected, mut received, mut snapshot) = (point, 0u64, false);
        loop {
            let text = match t.ws.next().await {
                Some(Ok(Frame::Text(text))) => text,
                Some(Ok(Frame::Ping(_) | Frame::Pong(_))) => continue,
                other => return Err(format!("the pull ended early: {other:?}")),
            };
            let f: PullFrame = serde_json::from_str(text.as_str()).map_err(|e| err(&e))?;
            let ack = |point| Message::Ack { session: session.clone(), point };
            match f.kind.as_str() {
                "begin" => {
                    self.steps.push(("begin", Instant::now()));
                    expected = f.start;
                }
                "poke" => {}
                "batch" => {
                    received += f.rows.len() as u64;
                    expected = f.covers;
                    t.send(&ack(f.covers)).await.map_err(|e| err(&e))?;
                }
                "snapshot" => {
                    snapshot = true;
                    received += f.docs.len() as u64;
                    // As the engine's receiver acks a chunk: the snapshot documents so far.
                    t.send(&ack(tidemark::sync::pass::chunk_ack(received))).await.map_err(|e| err(&e))?;
                }
                "end" => {
                    t.send(&Message::Done { session: session.clone() }).await.map_err(|e| err(&e))?;
                    let _ = t.ws.close(None).await;
                    self.pulled = Some((session.clone(), if snapshot { f.max_row } else { expected }));
                    return Ok(received);
                }
                "error" => return Err(f.message),
                other => return Err(format!("unexpected {other} in a pull")),
            }
        }
    }
}

async fn idle(n: usize, backing: &Backing) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), "idle", backing);
    let url = server.ws_url();
    let (base, _) = memory(server.pid());
    let started = Instant::now();
    let mut held = Vec::with_capacity(n);
    let mut failed = 0;
    // Connect in waves, so the listen queue is never the bottleneck being measured.
    for wave in (0..n).collect::<Vec<_>>().chunks(500) {
        let opened = futures::future::join_all(wave.iter().map(|i| {
            let url = url.clone();
            async move {
                let (mut ws, _) = tokio_tungstenite::connect_async_with_config(&url, None, true).await.ok()?;
                let hello = Message::Hello { library: LIB.into(), token: None, db_id: format!("idle{i:05}"), schema_version: 1 };
                ws.send(Frame::Text(hello.encode().into())).await.ok()?;
                loop {
                    match ws.next().await? {
                        Ok(Frame::Text(t)) => return matches!(Message::decode(t.as_str()), Ok(Message::Welcome { .. })).then_some(ws),
                        Ok(_) => continue,
                        Err(_) => return None,
                    }
                }
            }
        }))
        .await;
        for ws in opened {
            match ws {
                Some(ws) => held.push(ws),
                None => failed += 1,
            }
        }
    }
    let connect_s = started.elapsed().as_secs_f64();
    // Keep reading (answering the server's pings) while the memory settles.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let readers: Vec<_> = held
        .into_iter()
        .map(|mut ws| {
            let mut stopped = stopped.clone();
            tokio::spawn(async move {
                let mut alive = true;
                loop {
                    tokio::select! {
                        _ = stopped.changed() => break,
                        f = ws.next() => if !matches!(f, Some(Ok(_))) { alive = false; break },
                    }
                }
                let _ = ws.close(None).await;
                alive
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (rss, peak) = memory(server.pid());
    stop.send(true).unwrap();
    let mut alive = 0;
    for r in readers {
        alive += r.await.unwrap() as usize;
    }
    let out = json!({
        "clients": n,
        "held": alive,
        "failed": failed,
        "connect_s": round2(connect_s),
        "rss_mb": round2(rss),
        "peak_rss_mb": round2(peak),
        "empty_rss_mb": round2(base),
        "kb_per_client": round2((rss - base) * 1024.0 / n.max(1) as f64),
    });
    eprintln!("load: idle {out}");
    out
}

/// A push-only pass of the client's new rows (writers need not pull what others write).
async fn push(c: &tidemark::Replica<tidemark::MemoryStore>, url: &str) -> Result<u64, tidemark::Error> {
    let (ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true).await.map_err(|e| tidemark::error::SyncError::Connection(e.to_string()))?;
    let mut t = Client { ws };
    let server = drive::hello(c, &mut t, LIB, None).await?;
    let session = tidemark::peer::new_session();
    let limits = Limits::default();
    t.ws.send(Frame::Text(Message::Start { session: session.clone(), direction: Direction::Push, per_diff: limits.per_diff, max_diffs: limits.max_diffs }.encode().into()))
        .await
        .map_err(|e| tidemark::error::SyncError::Connection(e.to_string()))?;
    let report = drive::send(c, &mut t, &server, &session, limits, &mut |_| {}).await?;
    let _ = t.ws.close(None).await;
    Ok(report.sent)
}

async fn instances(count: usize, cluster: &PgCluster) -> Value {
    const WRITERS: usize = 6;
    const BATCH: usize = 50;
    const RUN: Duration = Duration::from_secs(10);
    let url = cluster.create_database();
    let dir = tempfile::tempdir().unwrap();
    let servers: Vec<Server> = (0..count).map(|i| start(dir.path(), &format!("i{i}"), &Backing::Postgres(url.clone()))).collect();
    let urls: Vec<String> = servers.iter().map(Server::ws_url).collect();
    // The library exists before the clock starts.
    let seed = support::client().await;
    support::round_url(&seed, &urls[0], Limits::default(), Duration::from_secs(30)).await.unwrap();

    let until = Instant::now() + RUN;
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let url = urls[w % count].clone();
            tokio::spawn(async move {
                let c = support::client().await;
                let mut sent = 0u64;
                let mut k = 0;
                while Instant::now() < until {
                    let docs = (0..BATCH).map(|n| tidemark::Write::Put {
                        collection: "docs".into(),
                        doc: json!({"id": format!("w{w}-{k}-{n}"), "n": n}).as_object().unwrap().clone(),
                    });
                    c.write(docs.collect()).await.unwrap();
                    sent += push(&c, &url).await.unwrap_or(0);
                    k += 1;
                }
                sent
            })
        })
        .collect();
    // The probe: one write at a time through the first instance, a reader on the last.
    let (probe_url, reader_url) = (urls[0].clone(), urls[count - 1].clone());
    let probe = tokio::spawn(async move {
        let writer = support::client().await;
        let reader = support::client().await;
        let mut latencies = Vec::new();
        let mut j = 0;
        while Instant::now() + Duration::from_secs(1) < until {
            let id = format!("probe{j}");
            writer.put("docs", json!({"id": id}).as_object().unwrap().clone()).await.unwrap();
            if push(&writer, &probe_url).await.is_err() {
                continue;
            }
            let acked = Instant::now();
            loop {
                let _ = support::round_url(&reader, &reader_url, Limits::default(), Duration::from_secs(30)).await;
                if reader.get("docs", &id).await.is_ok_and(|d| d.is_some()) {
                    break;
                }
                if acked.elapsed() > Duration::from_secs(30) {
                    break;
                }
            }
            latencies.push(acked.elapsed().as_secs_f64() * 1000.0);
            j += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        latencies
    });
    let started = Instant::now();
    let mut rows = 0;
    for w in writers {
        rows += w.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut latencies = probe.await.unwrap();
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let out = json!({
        "instances": count,
        "writers": WRITERS,
        "rows_per_s": round2(rows as f64 / elapsed),
        "visible_p50_ms": round2(quantile(&latencies, 0.5)),
        "visible_p99_ms": round2(quantile(&latencies, 0.99)),
        "probes": latencies.len(),
    });
    eprintln!("load: instances {out}");
    out
}

/// `clients` fresh replicas pull a library of `n_docs` documents at once (see the module
/// doc): the server's RSS before, its peak during, and how long the slowest join took.
async fn snapshots(clients: usize, n_docs: usize, backing: &Backing) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path(), "snapshots", backing);
    let seed = support::client().await;
    support::put_all(&seed, (0..n_docs).map(|i| format!("d{i:07}")), 1).await;
    support::sync_fully(&seed, &server, Limits::default(), None).await;
    assert_eq!(server.max_row(LIB, None), n_docs as u64);
    // A fresh process, so the peak is the joins' alone.
    server.terminate();
    let server = start(dir.path(), "snapshots", backing);
    let (before, _) = memory(server.pid());
    let started = Instant::now();
    let joins = (0..clients).map(|_| async {
        let r = support::client().await;
        support::sync_fully(&r, &server, Limits::default(), None).await;
        let n = support::docs(&r).await.len();
        assert_eq!(n, n_docs, "a joiner got the whole library");
        started.elapsed().as_secs_f64()
    });
    let times = futures::future::join_all(joins).await;
    let (_, peak) = memory(server.pid());
    json!({
        "clients": clients,
        "docs": n_docs,
        "rssBeforeMb": (before * 10.0).round() / 10.0,
        "peakRssMb": (peak * 10.0).round() / 10.0,
        "slowestJoinS": times.iter().cloned().fold(0.0, f64::max),
    })
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let mut out_file = None;
    if let Some(i) = args.iter().position(|a| a == "--out") {
        out_file = args.get(i + 1).cloned();
        args.drain(i..(i + 2).min(args.len()));
    }
    let postgres = args.iter().any(|a| a == "--postgres");
    args.retain(|a| a != "--postgres");
    let all = args.is_empty();
    let numbers_after = |key: &str, default: &[usize]| -> Option<Vec<usize>> {
        let i = args.iter().position(|a| a == key)?;
        let n: Vec<usize> = args[i + 1..].iter().map_while(|a| a.parse().ok()).collect();
        Some(if n.is_empty() { default.to_vec() } else { n })
    };
    let round_sizes = numbers_after("rounds", &[100, 500, 2000]).or(all.then(|| vec![100, 500, 2000]));
    let idle_sizes = numbers_after("idle", &[10_000]).or(all.then(|| vec![10_000]));
    let run_instances = all || args.iter().any(|a| a == "instances");
    let snapshot_sizes = numbers_after("snapshots", &[8, 100_000]).or(all.then(|| vec![8, 100_000]));

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let mut result = json!({ "server": binary().display().to_string() });
    runtime.block_on(async {
        let cluster = (postgres || run_instances).then(|| PgCluster::start().expect("a PostgreSQL cluster"));
        let backing = || match &cluster {
            Some(c) if postgres => Backing::Postgres(c.create_database()),
            _ => Backing::Sqlite,
        };
        result["store"] = json!(if postgres { "postgres" } else { "sqlite" });
        if let Some(sizes) = round_sizes {
            let mut out = Vec::new();
            for n in sizes {
                out.push(rounds(n, &backing()).await);
            }
            result["rounds"] = json!(out);
        }
        if let Some(sizes) = idle_sizes {
            let mut out = Vec::new();
            for n in sizes {
                out.push(idle(n, &backing()).await);
            }
            result["idle"] = json!(out);
        }
        if let Some(sizes) = snapshot_sizes {
            let clients = sizes.first().copied().unwrap_or(8);
            let n_docs = sizes.get(1).copied().unwrap_or(100_000);
            result["snapshots"] = snapshots(clients, n_docs, &backing()).await;
        }
        if run_instances {
            let cluster = cluster.as_ref().unwrap();
            result["instances"] = json!([instances(1, cluster).await, instances(3, cluster).await]);
        }
    });
    let text = serde_json::to_string_pretty(&result).unwrap();
    println!("{text}");
    if let Some(path) = out_file {
        std::fs::write(&path, text + "\n").unwrap();
    }
}
