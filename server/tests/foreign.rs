//! The foreign-store gateway (DESIGN §11) against the real stores `make foreign-stores`
//! installs: `pouchdb-server` 4.2.0 (a CouchDB-API server, `--in-memory`) as "HM" and
//! `json-server` 0.17.4 as "RT", each started on a free 127.0.0.1 port by the test, with a
//! real `tidemark-server --foreign …` between them and native client replicas as the app.

mod support;

use std::io::{Read, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use support::{client, free_addr, round, Server, LIB};
use tidemark::sync::pass::Limits;

// ---- the foreign stores ----

fn foreign_bin(name: &str) -> PathBuf {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/foreign/node_modules/.bin").join(name);
    assert!(bin.exists(), "{} is missing: run `make foreign-stores` (make test does)", bin.display());
    bin
}

/// A foreign store process, killed when dropped.
struct Store {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Store {
    /// pouchdb-server in memory, with database `hm` created.
    fn couch() -> Store {
        Store::couch_at(free_addr())
    }

    fn couch_at(addr: SocketAddr) -> Store {
        let s = Store::spawn("pouchdb-server", &["--in-memory", "--host", "127.0.0.1", "--port", &addr.port().to_string()], addr, tempfile::tempdir().unwrap());
        s.ready("/");
        let (code, _) = http(addr, "PUT", "/hm", None);
        assert!(code == 201 || code == 412, "creating hm: {code}");
        s
    }

    /// json-server over a fresh file holding an empty `tickets` collection.
    fn rest() -> Store {
        Store::rest_at(free_addr())
    }

    fn rest_at(addr: SocketAddr) -> Store {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("db.json"), "{\"tickets\": []}").unwrap();
        let s = Store::spawn("json-server", &["--host", "127.0.0.1", "--port", &addr.port().to_string(), "db.json"], addr, dir);
        s.ready("/tickets");
        s
    }

    /// Starts `name` in `dir` (where pouchdb-server writes its config and log).
    fn spawn(name: &str, args: &[&str], addr: SocketAddr, dir: tempfile::TempDir) -> Store {
        let child = Command::new(foreign_bin(name))
            .args(args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{name} starts: {e}"));
        Store { child, addr, _dir: dir }
    }

    fn ready(&self, path: &str) {
        wait("the foreign store to listen", || TcpStream::connect(self.addr).is_ok() && http(self.addr, "GET", path, None).0 == 200);
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// A blocking HTTP/1.0 request with a JSON body; returns the status and the parsed answer.
fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let Ok(mut s) = TcpStream::connect(addr) else { return (0, Value::Null) };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    write!(s, "{method} {path} HTTP/1.0\r\nHost: test\r\nContent-Type: application/json\r\nAccept: application/json\r\nContent-Length: {}\r\n\r\n{payload}", payload.len()).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let raw = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn wait(what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < Duration::from_secs(60), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

/// HM's documents: id → (rev, content without underscore fields).
fn hm_docs(hm: &Store) -> std::collections::BTreeMap<String, (String, Value)> {
    let (code, all) = http(hm.addr, "GET", "/hm/_all_docs?include_docs=true", None);
    assert_eq!(code, 200, "{all}");
    all["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let doc = r["doc"].as_object().unwrap();
            let rev = doc["_rev"].as_str().unwrap().to_string();
            let content: Map<String, Value> = doc.iter().filter(|(k, _)| !k.starts_with('_')).map(|(k, v)| (k.clone(), v.clone())).collect();
            (r["id"].as_str().unwrap().to_string(), (rev, Value::Object(content)))
        })
        .collect()
}

/// RT's tickets, in listing order.
fn rt_list(rt: &Store) -> Vec<Value> {
    let (code, list) = http(rt.addr, "GET", "/tickets", None);
    assert_eq!(code, 200);
    list.as_array().unwrap().clone()
}

fn rt_get(rt: &Store, id: &str) -> Option<Value> {
    rt_list(rt).into_iter().find(|t| id_text(&t["id"]) == id)
}

/// A record id as a document id: json-server numbers ids `1, 2, …` in a collection of
/// numbers and makes up strings otherwise.
fn id_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn foreign_status(server: &Server) -> Vec<Value> {
    foreign_status_as(server, None)
}

/// `foreign_status` of a server with a secret, with a `*` token.
fn foreign_status_as(server: &Server, bearer: Option<&str>) -> Vec<Value> {
    let (code, body) = support::http_get(server.addr, "/v1/foreign", bearer);
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["stores"].as_array().unwrap().clone()
}

/// Waits until every gateway has run `n` more complete rounds without an error.
fn quiet_rounds(server: &Server, n: u64) {
    quiet_rounds_as(server, n, None)
}

/// `quiet_rounds` of a server with a secret, with a `*` token.
fn quiet_rounds_as(server: &Server, n: u64, bearer: Option<&str>) {
    let start: Vec<u64> = foreign_status_as(server, bearer).iter().map(|s| s["rounds"].as_u64().unwrap()).collect();
    wait("gateway rounds", || foreign_status_as(server, bearer).iter().zip(&start).all(|(s, r0)| s["rounds"].as_u64().unwrap() >= r0 + n && s["lastError"].is_null()));
}

fn gateway(data: &Path, hm: Option<&Store>, rt: Option<&Store>, env: &[(&str, &str)]) -> Server {
    gateway_with(data, hm, rt, env, &[])
}

fn gateway_with(data: &Path, hm: Option<&Store>, rt: Option<&Store>, env: &[(&str, &str)], extra: &[String]) -> Server {
    let mut args: Vec<String> = vec!["--foreign-interval".into(), "100".into()];
    args.extend(extra.iter().cloned());
    if let Some(hm) = hm {
        args.extend(["--foreign".into(), format!("{LIB}/docs=couchdb+{}", hm.url("/hm"))]);
    }
    if let Some(rt) = rt {
        args.extend(["--foreign".into(), format!("{LIB}/docs=rest+{}", rt.url("/tickets"))]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start_env(Path::new(env!("CARGO_BIN_EXE_tidemark-server")), data, "127.0.0.1:0", &args, env)
}

async fn app_docs(r: &tidemark::Replica<tidemark::MemoryStore>, server: &Server) -> Vec<Value> {
    round(r, server, Limits::default(), None).await.unwrap();
    support::docs(r).await.into_iter().map(Value::Object).collect()
}

/// A gateway on `hm` where `app` wrote `x` (in HM once this returns), held between its
/// pull and its push (`TIDEMARK_FOREIGN_HOLD`): a test edits both sides, then removes the
/// returned hold file to let the push meet the other write. The directory holds the data.
async fn held_gateway(hm: &Store, app: &tidemark::Replica<tidemark::MemoryStore>) -> (Server, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let hold = dir.path().join("hold");
    let data = dir.path().join("data");
    let server = gateway(&data, Some(hm), None, &[("TIDEMARK_FOREIGN_HOLD", hold.to_str().unwrap())]);
    app.put("docs", obj(json!({"id": "x", "title": "a", "n": 1}))).await.unwrap();
    round(app, &server, Limits::default(), None).await.unwrap();
    wait("x in HM", || hm_docs(hm).get("x").is_some_and(|d| d.1 == json!({"title": "a", "n": 1})));
    let holds = || std::fs::read_to_string(data.with_extension("log")).unwrap().matches("foreign push holding").count();
    let before = holds();
    std::fs::write(&hold, "").unwrap();
    wait("the gateway to hold before pushing", || holds() > before);
    (server, hold, dir)
}

// ---- the scenarios ----

/// The seed's case: a task created in HM reaches RT through the gateway and a ticket
/// created in RT reaches HM, one copy each; the app sees both; and later rounds with
/// nothing new change nothing anywhere (no new CouchDB revision, no RT change, no row).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hm_task_reaches_rt_and_rt_ticket_reaches_hm_exactly_once() {
    let (hm, rt) = (Store::couch(), Store::rest());
    let (code, _) = http(hm.addr, "PUT", "/hm/task-1", Some(&json!({"title": "Write the report", "done": false})));
    assert_eq!(code, 201);
    let (code, made) = http(rt.addr, "POST", "/tickets", Some(&json!({"title": "Printer on fire"})));
    assert_eq!(code, 201);
    let ticket = id_text(&made["id"]);
    let dir = tempfile::tempdir().unwrap();
    let server = gateway(&dir.path().join("data"), Some(&hm), Some(&rt), &[]);

    wait("the HM task in RT", || rt_get(&rt, "task-1").is_some());
    wait("the RT ticket in HM", || hm_docs(&hm).contains_key(&ticket));
    quiet_rounds(&server, 2);
    let rt_now = rt_list(&rt);
    assert_eq!(rt_now.len(), 2, "exactly one copy of each record in RT: {rt_now:?}");
    assert_eq!(rt_get(&rt, "task-1").unwrap(), json!({"id": "task-1", "title": "Write the report", "done": false}));
    let hm_now = hm_docs(&hm);
    assert_eq!(hm_now.len(), 2, "exactly one copy of each record in HM: {hm_now:?}");
    assert_eq!(hm_now[&ticket].1, json!({"title": "Printer on fire"}));
    assert!(hm_now.values().all(|(rev, _)| rev.starts_with("1-")), "each HM document written once: {hm_now:?}");

    let app = client().await;
    let mut seen = app_docs(&app, &server).await;
    seen.sort_by_key(|d| d["id"].as_str().unwrap().to_string());
    assert_eq!(seen, vec![json!({"id": ticket, "title": "Printer on fire"}), json!({"id": "task-1", "title": "Write the report", "done": false})]);

    // Three quiet rounds: nothing changes anywhere.
    let (hm_seq, max_row) = (http(hm.addr, "GET", "/hm", None).1["update_seq"].clone(), server.max_row(LIB, None));
    quiet_rounds(&server, 3);
    assert_eq!(hm_docs(&hm), hm_now, "no new CouchDB revision");
    assert_eq!(http(hm.addr, "GET", "/hm", None).1["update_seq"], hm_seq);
    assert_eq!(rt_list(&rt), rt_now, "no RT change");
    assert_eq!(server.max_row(LIB, None), max_row, "no new library row");
    for s in foreign_status(&server) {
        assert_eq!(s["lag"], 0, "{s}");
        assert_eq!(s["pulled"], 1, "each store contributed its one record: {s}");
        assert_eq!(s["pushed"], 1, "each store received the other's one record: {s}");
        assert_eq!(s["records"], 2, "{s}");
        assert!(s["origin"].as_str().is_some_and(|o| o.len() == 16), "{s}");
    }
    // Foreign state is not in the library's peers: no transitive point for a foreign store.
    let status = server.status(LIB, None);
    for s in foreign_status(&server) {
        assert!(status["peers"].get(s["origin"].as_str().unwrap()).is_none(), "{status}");
    }
}

/// App writes, edits and deletes reach both stores; an RT edit reaches HM and the app; an
/// HM delete reaches RT and the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_writes_edits_and_deletes_reach_both_stores_and_back() {
    let (hm, rt) = (Store::couch(), Store::rest());
    let dir = tempfile::tempdir().unwrap();
    let server = gateway(&dir.path().join("data"), Some(&hm), Some(&rt), &[]);
    let app = client().await;
    let limits = Limits::default();

    app.put("docs", obj(json!({"id": "a", "title": "Milk", "n": 1}))).await.unwrap();
    app.put("docs", obj(json!({"id": "b", "title": "Eggs", "n": 2}))).await.unwrap();
    round(&app, &server, limits, None).await.unwrap();
    wait("a and b in both stores", || hm_docs(&hm).len() == 2 && rt_list(&rt).len() == 2);
    assert_eq!(hm_docs(&hm)["a"].1, json!({"title": "Milk", "n": 1}));
    assert_eq!(rt_get(&rt, "a").unwrap(), json!({"id": "a", "title": "Milk", "n": 1}));

    // An edit.
    app.patch("docs", "a", obj(json!({"title": "Oat milk"}))).await.unwrap();
    round(&app, &server, limits, None).await.unwrap();
    wait("the edit in both stores", || hm_docs(&hm)["a"].1["title"] == "Oat milk" && rt_get(&rt, "a").is_some_and(|t| t["title"] == "Oat milk"));
    // A delete.
    app.delete("docs", "b").await.unwrap();
    round(&app, &server, limits, None).await.unwrap();
    wait("the delete in both stores", || !hm_docs(&hm).contains_key("b") && rt_get(&rt, "b").is_none());
    assert_eq!(http(hm.addr, "GET", "/hm/b", None).0, 404);

    // An RT edit reaches HM and the app.
    let (code, _) = http(rt.addr, "PUT", "/tickets/a", Some(&json!({"id": "a", "title": "Oat milk", "n": 5})));
    assert_eq!(code, 200);
    wait("the RT edit in HM", || hm_docs(&hm)["a"].1 == json!({"title": "Oat milk", "n": 5}));
    let docs = app_docs(&app, &server).await;
    assert_eq!(docs, vec![json!({"id": "a", "title": "Oat milk", "n": 5})]);

    // An HM delete reaches RT and the app.
    let rev = hm_docs(&hm)["a"].0.clone();
    let (code, _) = http(hm.addr, "DELETE", &format!("/hm/a?rev={rev}"), None);
    assert_eq!(code, 200);
    wait("the HM delete in RT", || rt_list(&rt).is_empty());
    assert!(app_docs(&app, &server).await.is_empty());
    // And nothing comes back afterwards.
    quiet_rounds(&server, 3);
    assert!(rt_list(&rt).is_empty() && hm_docs(&hm).is_empty());
}

/// A gateway killed right after a foreign write, before it saved that it wrote it, never
/// duplicates the record after restart, and never rewrites it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_between_foreign_write_and_commit_duplicates_nothing() {
    let (hm, rt) = (Store::couch(), Store::rest());
    let (code, _) = http(hm.addr, "PUT", "/hm/task-1", Some(&json!({"title": "From HM"})));
    assert_eq!(code, 201);
    let (code, made) = http(rt.addr, "POST", "/tickets", Some(&json!({"title": "From RT"})));
    assert_eq!(code, 201);
    let ticket = id_text(&made["id"]);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");

    // Each run aborts right after its first foreign write; run until both records are out.
    let mut crashes = 0;
    while !(rt_get(&rt, "task-1").is_some() && hm_docs(&hm).contains_key(&ticket)) {
        let mut crashing = gateway(&data, Some(&hm), Some(&rt), &[("TIDEMARK_FOREIGN_CRASH", "after-write")]);
        wait("the gateway to abort after a foreign write", || !crashing.is_running());
        crashes += 1;
        assert!(crashes <= 4, "each run writes one record before it aborts");
    }
    assert!(crashes >= 1);
    let log = std::fs::read_to_string(data.with_extension("log")).unwrap();
    assert!(log.contains("aborting after a foreign write"), "the crash hook fired");

    let server = gateway(&data, Some(&hm), Some(&rt), &[]);
    quiet_rounds(&server, 3);
    let rt_now = rt_list(&rt);
    assert_eq!(rt_now.len(), 2, "no duplicate in RT: {rt_now:?}");
    let hm_now = hm_docs(&hm);
    assert_eq!(hm_now.len(), 2, "no duplicate in HM: {hm_now:?}");
    assert!(hm_now.values().all(|(rev, _)| rev.starts_with("1-")), "nothing written twice: {hm_now:?}");
    let app = client().await;
    assert_eq!(app_docs(&app, &server).await.len(), 2);
    for s in foreign_status(&server) {
        assert_eq!(s["records"], 2, "{s}");
    }
}

/// A CouchDB write racing the gateway's: the gateway's PUT gets 409, it re-reads the
/// document, merges the other writer's field into the library and retries — both edits
/// end up in HM and in the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_couchdb_409_is_reread_merged_and_retried() {
    let hm = Store::couch();
    let app = client().await;
    let (server, hold, _dir) = held_gateway(&hm, &app).await;
    // The app edits one field; someone edits another directly in HM.
    app.patch("docs", "x", obj(json!({"n": 2}))).await.unwrap();
    round(&app, &server, Limits::default(), None).await.unwrap();
    let rev = hm_docs(&hm)["x"].0.clone();
    let (code, _) = http(hm.addr, "PUT", "/hm/x", Some(&json!({"_rev": rev, "title": "b", "n": 1})));
    assert_eq!(code, 201);
    std::fs::remove_file(&hold).unwrap();

    wait("both edits in HM", || hm_docs(&hm)["x"].1 == json!({"title": "b", "n": 2}));
    let conflicts = foreign_status(&server)[0]["conflicts"].as_u64().unwrap();
    assert!(conflicts >= 1, "the push met a 409");
    quiet_rounds(&server, 3);
    assert_eq!(hm_docs(&hm)["x"].1, json!({"title": "b", "n": 2}));
    assert!(hm_docs(&hm)["x"].0.starts_with("3-"), "one merged write after the conflict, nothing after: {:?}", hm_docs(&hm));
    assert_eq!(app_docs(&app, &server).await, vec![json!({"id": "x", "title": "b", "n": 2})]);
}

/// The same race on a collection whose writers keep conflicts (DESIGN §11): the app and
/// HM both change the title. The gateway's merge after the 409 settles it, so it is
/// written as a resolution — in the server's resolution log and the app's after a round —
/// that saw the app's value: the app shows HM's title and no conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_settling_a_409_writes_a_resolution() {
    let hm = Store::couch();
    let schema = tidemark::Schema::from_json(json!({"version": 1, "collections": {"docs": {"primaryKey": "id", "conflicts": true}}})).unwrap();
    let app = tidemark::Replica::open(tidemark::MemoryStore::new(), schema, Box::new(support::now_ms)).await.unwrap();
    let (server, hold, _dir) = held_gateway(&hm, &app).await;
    app.patch("docs", "x", obj(json!({"title": "from the app"}))).await.unwrap();
    round(&app, &server, Limits::default(), None).await.unwrap();
    let rev = hm_docs(&hm)["x"].0.clone();
    let (code, _) = http(hm.addr, "PUT", "/hm/x", Some(&json!({"_rev": rev, "title": "from hm", "n": 1})));
    assert_eq!(code, 201);
    std::fs::remove_file(&hold).unwrap();

    wait("the 409", || foreign_status(&server)[0]["conflicts"].as_u64().unwrap() >= 1);
    quiet_rounds(&server, 2);
    assert_eq!(hm_docs(&hm)["x"].1, json!({"title": "from hm", "n": 1}));
    assert_eq!(app_docs(&app, &server).await, vec![json!({"id": "x", "title": "from hm", "n": 1})]);
    let resolutions = tidemark::store::Store::resolutions_after(app.store(), 0).await.unwrap();
    let origin = foreign_status(&server)[0]["origin"].as_str().unwrap().to_string();
    assert!(
        resolutions.iter().any(|r| r.op.origin == origin && r.op.fields.as_ref().unwrap()["title"] == "from hm"),
        "the gateway's merge came as a resolution: {resolutions:?}"
    );
    assert_eq!(app.conflicts("docs", "x").await.unwrap(), Map::new());
}

/// HM wiped (its server restarted in memory, empty): the gateway notices, pushes the
/// library's documents again, and then stays quiet — no loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_couchdb_is_detected_and_pushed_again_without_a_loop() {
    let addr = free_addr();
    let hm = Store::couch_at(addr);
    let dir = tempfile::tempdir().unwrap();
    let server = gateway(&dir.path().join("data"), Some(&hm), None, &[]);
    let app = client().await;
    for i in 0..3 {
        app.put("docs", obj(json!({"id": format!("d{i}"), "n": i}))).await.unwrap();
    }
    round(&app, &server, Limits::default(), None).await.unwrap();
    wait("3 docs in HM", || hm_docs(&hm).len() == 3);
    drop(hm);
    let hm = Store::couch_at(addr);
    assert!(hm_docs(&hm).is_empty(), "the new HM starts empty");
    wait("the docs pushed again", || hm_docs(&hm).len() == 3);
    quiet_rounds(&server, 3);
    let now = hm_docs(&hm);
    assert!(now.values().all(|(rev, _)| rev.starts_with("1-")), "{now:?}");
    assert_eq!(now["d2"].1, json!({"n": 2}));
    assert!(foreign_status(&server)[0]["resets"].as_u64().unwrap() >= 1);
    quiet_rounds(&server, 3);
    assert_eq!(hm_docs(&hm), now, "no loop after the re-push");
}

/// A CouchDB database recreated under the same name whose sequence has caught up with the
/// gateway's cursor (it went nowhere backwards) is still a new database: it lacks the
/// gateway's `_local` marker, so the gateway forgets what it knew and pushes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_couchdb_whose_sequence_caught_up_is_still_detected() {
    let addr = free_addr();
    let hm = Store::couch_at(addr);
    let app = client().await;
    let (server, hold, _dir) = held_gateway(&hm, &app).await;
    drop(hm);
    let hm = Store::couch_at(addr);
    for i in 0..10 {
        let (code, _) = http(addr, "PUT", &format!("/hm/other-{i}"), Some(&json!({"n": i})));
        assert_eq!(code, 201);
    }
    std::fs::remove_file(&hold).unwrap();
    wait("x pushed again", || hm_docs(&hm).contains_key("x"));
    assert_eq!(hm_docs(&hm)["x"].1, json!({"title": "a", "n": 1}));
    assert!(foreign_status(&server)[0]["resets"].as_u64().unwrap() >= 1);
    let docs = app_docs(&app, &server).await;
    assert!((0..10).all(|i| docs.iter().any(|d| d["id"] == json!(format!("other-{i}")))), "{docs:?}");
}

/// The seed's failing case with two servers: "Bob" (server B) gets HM's task only
/// transitively, from server A (the HM gateway), and pushes to RT. RT gets the task, and
/// RT's ticket reaches HM the other way, one copy each: B answers "what does RT have?"
/// from RT's own state, never from the points it holds for A or for HM's origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_received_transitively_reaches_the_other_foreign_store() {
    let (hm, rt) = (Store::couch(), Store::rest());
    let (code, _) = http(hm.addr, "PUT", "/hm/task-1", Some(&json!({"title": "From HM"})));
    assert_eq!(code, 201);
    let dir = tempfile::tempdir().unwrap();
    // A takes other replicas' ops only from servers with its secret: B presents it.
    let secret = "a-s3cret";
    let a = gateway_with(&dir.path().join("a"), Some(&hm), None, &[], &["--secret".into(), secret.into()]);
    let a_ops = tidemark_server::auth::issue(secret.as_bytes(), &tidemark_server::auth::Claims { library: "*".into(), user: "ops".into(), exp: None });
    // B knows the library already (an app wrote there first), and syncs with A.
    let app = client().await;
    let b_dir = dir.path().join("b");
    let peer = vec!["--peer".to_string(), a.ws_url(), "--peer-poll-ms".into(), "100".into(), "--peer-secret".into(), secret.into()];
    let b = gateway_with(&b_dir, None, Some(&rt), &[], &peer);
    app.put("docs", obj(json!({"id": "bob", "title": "From Bob's app"}))).await.unwrap();
    round(&app, &b, Limits::default(), None).await.unwrap();

    wait("HM's task in RT, through A and B", || rt_get(&rt, "task-1").is_some());
    wait("Bob's document in HM", || hm_docs(&hm).contains_key("bob"));
    let (code, made) = http(rt.addr, "POST", "/tickets", Some(&json!({"title": "From RT"})));
    assert_eq!(code, 201);
    let ticket = id_text(&made["id"]);
    wait("RT's ticket in HM, through B and A", || hm_docs(&hm).contains_key(&ticket));
    quiet_rounds_as(&a, 3, Some(&a_ops));
    quiet_rounds(&b, 3);
    let rt_now = rt_list(&rt);
    assert_eq!(rt_now.len(), 3, "one copy of each record in RT: {rt_now:?}");
    let hm_now = hm_docs(&hm);
    assert_eq!(hm_now.len(), 3, "one copy of each record in HM: {hm_now:?}");
    assert!(hm_now.values().all(|(rev, _)| rev.starts_with("1-")), "{hm_now:?}");
    assert_eq!(rt_get(&rt, "task-1").unwrap(), json!({"id": "task-1", "title": "From HM"}));
    // A's HM origin is a plain origin at B (it came through A), never a point B holds for RT.
    let hm_origin = foreign_status_as(&a, Some(&a_ops))[0]["origin"].as_str().unwrap().to_string();
    let rt_origin = foreign_status(&b)[0]["origin"].as_str().unwrap().to_string();
    assert_ne!(hm_origin, rt_origin);
    let b_status = b.status(LIB, None);
    assert!(b_status["peers"].get(&rt_origin).is_none(), "no peer record for the RT store: {b_status}");
    assert_eq!(app_docs(&app, &b).await.len(), 3);
}

/// A record CouchDB will not take (a field name it reserves) is reported as the store's
/// last error and retried, without holding up the records after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_record_does_not_hold_up_the_others() {
    let hm = Store::couch();
    let dir = tempfile::tempdir().unwrap();
    let server = gateway(&dir.path().join("data"), Some(&hm), None, &[]);
    let app = client().await;
    app.put("docs", obj(json!({"id": "bad", "_secret": 1}))).await.unwrap();
    app.put("docs", obj(json!({"id": "good", "n": 1}))).await.unwrap();
    round(&app, &server, Limits::default(), None).await.unwrap();
    wait("the good record in HM", || hm_docs(&hm).contains_key("good"));
    wait("the refusal reported", || foreign_status(&server)[0]["lastError"].as_str().is_some_and(|e| e.starts_with("FOREIGN_REFUSED") && e.contains("bad")));
    assert!(!hm_docs(&hm).contains_key("bad"));
    // Fixed in the app: it goes out, and the error clears.
    app.put("docs", obj(json!({"id": "bad", "secret": 1}))).await.unwrap();
    round(&app, &server, Limits::default(), None).await.unwrap();
    wait("the fixed record in HM", || hm_docs(&hm).get("bad").is_some_and(|d| d.1 == json!({"secret": 1})));
    quiet_rounds(&server, 1);
    assert_eq!(foreign_status(&server)[0]["lag"], 0);
}

/// RT replaced by an empty store: every known record gone at once is a wiped store, not a
/// mass delete — the library keeps its documents and pushes them again, then stays quiet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_rest_store_is_pushed_again_not_taken_as_deletes() {
    let addr = free_addr();
    let rt = Store::rest_at(addr);
    let dir = tempfile::tempdir().unwrap();
    let server = gateway(&dir.path().join("data"), None, Some(&rt), &[]);
    let app = client().await;
    for i in 0..3 {
        app.put("docs", obj(json!({"id": format!("t{i}"), "n": i}))).await.unwrap();
    }
    round(&app, &server, Limits::default(), None).await.unwrap();
    wait("3 tickets in RT", || rt_list(&rt).len() == 3);
    drop(rt);
    let rt = Store::rest_at(addr);
    wait("the tickets pushed again", || rt_list(&rt).len() == 3);
    assert!(foreign_status(&server)[0]["resets"].as_u64().unwrap() >= 1);
    quiet_rounds(&server, 3);
    let now = rt_list(&rt);
    assert_eq!(now.len(), 3);
    assert_eq!(rt_get(&rt, "t2").unwrap(), json!({"id": "t2", "n": 2}));
    assert_eq!(app_docs(&app, &server).await.len(), 3, "nothing was deleted in the library");
    quiet_rounds(&server, 3);
    assert_eq!(rt_list(&rt), now, "no loop after the re-push");
}

/// With `--secret`, `GET /v1/foreign` needs a token for library `*`; a library token or
/// none is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_status_needs_a_token_for_every_library() {
    let hm = Store::couch();
    let dir = tempfile::tempdir().unwrap();
    let secret = "s3cret";
    let server = gateway_with(&dir.path().join("data"), Some(&hm), None, &[], &["--secret".into(), secret.into()]);
    let token = |library: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_tidemark-server")).args(["token", "--secret", secret, "--library", library, "--user", "ops"]).output().unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    assert_eq!(support::http_get(server.addr, "/v1/foreign", None).0, 401);
    assert_eq!(support::http_get(server.addr, "/v1/foreign", Some(&token(LIB))).0, 403);
    let (code, body) = support::http_get(server.addr, "/v1/foreign", Some(&token("*")));
    assert_eq!(code, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["stores"][0]["kind"], "couchdb");
    assert_eq!(v["stores"][0]["url"], hm.url("/hm"));
}

/// A malformed `--foreign` is refused at start-up with a message saying the form.
#[test]
fn a_bad_foreign_flag_is_refused_at_start() {
    for bad in ["lib=couchdb+http://127.0.0.1:1/db", "lib/docs=mongo+http://127.0.0.1:1/db", "lib/docs=rest+https://x/t"] {
        let out = Command::new(env!("CARGO_BIN_EXE_tidemark-server")).args(["--listen", "127.0.0.1:0", "--foreign", bad]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("LIBRARY/COLLECTION=couchdb+http://HOST:PORT/DB"), "{bad}: {err}");
    }
}
