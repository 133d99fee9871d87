//! Foreign replicas (DESIGN §11, seed 002): the server as gateway between one collection of
//! a library and a store that cannot hold Tidemark's metadata — a CouchDB-API database
//! (`couchdb`) or a json-server-style REST API (`rest`), both behind the `Foreign` trait.
//!
//! `--foreign LIBRARY/COLLECTION=KIND+URL` starts one gateway task per store; every
//! `--foreign-interval` it runs a round:
//! 1. **Pull**: the store's changes since its cursor become ops of the library, written
//!    through the engine's one write path (`tidemark::work::Work`, as received ops) under the
//!    store's own origin id, so they reach every replica and every other foreign store like
//!    any op. Each record is decided three-way (`decide`): what the store holds now, what
//!    both sides last agreed on (the base), and the library's document. Only fields the store
//!    changed since the base and that differ in the library become an op — so the gateway's
//!    own writes read back change nothing (no echo), and a pull replayed after a crash
//!    changes nothing either.
//! 2. **Push**: every document of the collection touched by library rows after the push mark
//!    is written to the store when it differs from the base (deletes as deletes). A CouchDB
//!    409 is re-read, merged into the library by the same three-way rule, and retried with
//!    the fresh revision. Records are always written under their own id, so a gateway killed
//!    between a foreign write and saving its state finds the record equal on restart and
//!    writes nothing twice.
//!
//! What the gateway knows of each store lives in `state` — its own namespace, never in
//! `peers`, never forwarded, never a transitive point (the seed's bug). A store that was
//! wiped or restored (a CouchDB sequence that went backwards, a database that vanished or
//! lost the gateway's `_local` marker; a REST listing that lost every known record) is
//! detected, its state forgotten, and the library's documents compared and pushed again;
//! the library wins where both hold a record with no agreed base, so the re-push
//! converges instead of looping.
//!
//! `GET /v1/foreign` reports each store's cursor, push mark, lag and last error (`report`).

pub mod client;
pub mod couchdb;
pub mod rest;
pub mod state;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{Map, Value};
use thiserror::Error;
use tidemark::clock::Clock;
use tidemark::op::{Kind, Op};
use tidemark::store::{Commit, DocKey, Store, StoredDoc};
use tidemark::work::Work;

use crate::app::App;
use crate::library::{valid_name, Library};
use state::{Record, StateFile, StoreState};

#[derive(Debug, Error)]
pub enum ForeignError {
    #[error("invalid --foreign {0:?}: use LIBRARY/COLLECTION=couchdb+http://HOST:PORT/DB or LIBRARY/COLLECTION=rest+http://HOST:PORT/PATH")]
    Spec(String),
    #[error("cannot reach the foreign store: {0}")]
    Unreachable(String),
    #[error("the foreign store refused: {0}")]
    Refused(String),
    #[error("bad request: {0}")]
    Request(String),
    #[error("foreign state: {0}")]
    State(String),
    #[error("library: {0}")]
    Library(String),
}

impl ForeignError {
    /// A stable code for status reports.
    pub fn code(&self) -> &'static str {
        match self {
            ForeignError::Spec(_) => "BAD_FOREIGN",
            ForeignError::Unreachable(_) => "FOREIGN_UNREACHABLE",
            ForeignError::Refused(_) => "FOREIGN_REFUSED",
            ForeignError::Request(_) => "BAD_REQUEST",
            ForeignError::State(_) => "STATE_ERROR",
            ForeignError::Library(_) => "STORAGE_ERROR",
        }
    }
}

/// Which protocol a foreign store speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    Couchdb,
    Rest,
}

/// One `--foreign LIBRARY/COLLECTION=KIND+URL`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    pub library: String,
    pub collection: String,
    pub kind: StoreKind,
    /// `http://host:port/path`.
    pub url: String,
}

impl Spec {
    pub fn parse(s: &str) -> Result<Spec, ForeignError> {
        let bad = || ForeignError::Spec(s.to_string());
        let (target, store) = s.split_once('=').ok_or_else(bad)?;
        let (library, collection) = target.split_once('/').ok_or_else(bad)?;
        let (kind, url) = store.split_once('+').ok_or_else(bad)?;
        let kind = match kind {
            "couchdb" => StoreKind::Couchdb,
            "rest" => StoreKind::Rest,
            _ => return Err(bad()),
        };
        let ok_collection = (1..=64).contains(&collection.len()) && !collection.chars().any(|c| c.is_control() || c == '/');
        let uri: hyper::Uri = url.parse().map_err(|_| bad())?;
        let path_ok = !uri.path().trim_matches('/').is_empty();
        if !valid_name(library) || !ok_collection || uri.scheme_str() != Some("http") || uri.host().is_none() || !path_ok || uri.query().is_some() {
            return Err(bad());
        }
        Ok(Spec { library: library.into(), collection: collection.into(), kind, url: url.trim_end_matches('/').into() })
    }

    /// The key its state is kept under.
    pub fn key(&self) -> String {
        format!("{}/{}={}+{}", self.library, self.collection, match self.kind { StoreKind::Couchdb => "couchdb", StoreKind::Rest => "rest" }, self.url)
    }
}

/// A foreign record as read: the document id, the id as the store spells it, the revision,
/// and the content as a Tidemark document (`None`: deleted there).
#[derive(Clone, Debug, PartialEq)]
pub struct Fetched {
    pub id: String,
    pub foreign_id: Value,
    pub rev: Option<String>,
    pub doc: Option<Map<String, Value>>,
}

/// What `Foreign::open` found.
pub struct Opened {
    /// The store was wiped, recreated or restored since the cursor was taken.
    pub wiped: bool,
}

/// One page of changes.
pub struct Changes {
    pub records: Vec<Fetched>,
    pub cursor: String,
    /// More changes wait after this page.
    pub more: bool,
    pub wiped: bool,
}

/// What a write did.
#[derive(Debug, PartialEq)]
pub enum Written {
    Done { foreign_id: Value, rev: Option<String> },
    /// The store holds a newer version than the one the write was based on (CouchDB 409):
    /// re-read, merge, retry.
    Conflict,
}

/// A foreign store, as the gateway needs it.
pub trait Foreign: Send + Sync {
    fn kind(&self) -> &'static str;
    /// Checks the store is there (creating an empty CouchDB database when it is not) and
    /// whether it was wiped or restored since `cursor`.
    fn open(&self, cursor: &str) -> impl Future<Output = Result<Opened, ForeignError>> + Send;
    /// Changes since `cursor`; `known` is what the gateway last agreed on per record.
    fn changes(&self, cursor: &str, known: &BTreeMap<String, Record>) -> impl Future<Output = Result<Changes, ForeignError>> + Send;
    /// One record as it is now.
    fn read(&self, id: &str) -> impl Future<Output = Result<Fetched, ForeignError>> + Send;
    /// Writes `doc` as record `id`, based on `known`.
    fn write(&self, id: &str, known: Option<&Record>, doc: &Map<String, Value>) -> impl Future<Output = Result<Written, ForeignError>> + Send;
    /// Deletes record `id`, based on `known`.
    fn delete(&self, id: &str, known: &Record) -> impl Future<Output = Result<Written, ForeignError>> + Send;
}

/// A stable fingerprint of a JSON value (keys sorted), for comparing listings.
pub fn fingerprint(v: &Value) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(canonical(v).as_bytes());
    digest.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

fn canonical(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let sorted: BTreeMap<&String, String> = m.iter().map(|(k, v)| (k, canonical(v))).collect();
            let inner: Vec<String> = sorted.into_iter().map(|(k, v)| format!("{}:{v}", Value::String(k.clone()))).collect();
            format!("{{{}}}", inner.join(","))
        }
        Value::Array(a) => format!("[{}]", a.iter().map(canonical).collect::<Vec<_>>().join(",")),
        other => other.to_string(),
    }
}

/// What one foreign record means for the library's document.
#[derive(Debug, PartialEq)]
pub struct Decision {
    /// The op to write (kind and fields).
    pub op: Option<(Kind, Option<Map<String, Value>>)>,
    /// The library's version differs from the store's afterwards: push it.
    pub dirty: bool,
}

/// The three-way rule (see the module doc): `stored` is the library's document (a
/// tombstone or `None` if never written), `base` what both sides last agreed on, `theirs`
/// the store's record now (`None`: deleted there).
pub fn decide(stored: Option<&StoredDoc>, base: Option<&Map<String, Value>>, theirs: Option<&Map<String, Value>>) -> Decision {
    let lib = stored.and_then(|s| s.doc.as_ref());
    let nothing = |dirty| Decision { op: None, dirty };
    match (theirs, lib, base) {
        // Deleted there after we agreed on it: delete here.
        (None, Some(_), Some(_)) => Decision { op: Some((Kind::Delete, None)), dirty: false },
        // Deleted there, never agreed on: the library's document is pushed (back).
        (None, Some(_), None) => nothing(true),
        (None, None, _) => nothing(false),
        // New there.
        (Some(f), None, _) if stored.is_none() => Decision { op: Some((Kind::Put, Some(f.clone()))), dirty: false },
        // Deleted here: changed there since → it comes back; else the delete goes out.
        (Some(f), None, Some(b)) if f != b => Decision { op: Some((Kind::Put, Some(f.clone()))), dirty: false },
        (Some(_), None, _) => nothing(true),
        // Both hold it with no agreed base (a wiped store, a crash before the state was
        // saved): the library wins, so a re-push converges instead of flip-flopping.
        (Some(f), Some(l), None) => nothing(f != l),
        (Some(f), Some(l), Some(b)) => {
            let keys: BTreeSet<&String> = f.keys().chain(b.keys()).filter(|k| k.as_str() != "id").collect();
            let take: Vec<&String> = keys.into_iter().filter(|k| f.get(*k) != b.get(*k) && f.get(*k) != l.get(*k)).collect();
            let mut after = l.clone();
            for k in &take {
                match f.get(*k) {
                    Some(v) => after.insert((*k).clone(), v.clone()),
                    None => after.remove(*k),
                };
            }
            let dirty = &after != f;
            if take.is_empty() {
                return nothing(dirty);
            }
            // A field removed there, or a name a patch would read as a nested path (`a.b`):
            // only a whole-document write says it here.
            let whole = |k: &&String| !f.contains_key(*k) || k.is_empty() || k.contains('.');
            if take.iter().any(whole) {
                Decision { op: Some((Kind::Put, Some(after))), dirty }
            } else {
                let fields = take.iter().map(|k| ((*k).clone(), f[*k].clone())).collect();
                Decision { op: Some((Kind::Patch, Some(fields))), dirty }
            }
        }
    }
}

/// What `GET /v1/foreign` shows of one store.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub library: String,
    pub collection: String,
    pub kind: String,
    pub url: String,
    /// The origin id its records carry in the library.
    pub origin: String,
    pub cursor: String,
    pub push_mark: u64,
    /// Library rows not yet looked at for this store (max row − push mark).
    pub lag: u64,
    pub records: usize,
    pub rounds: u64,
    /// Records written into the library from the store, and to the store from the library.
    pub pulled: u64,
    pub pushed: u64,
    /// Writes refused as conflicting (CouchDB 409) and retried after a merge.
    pub conflicts: u64,
    /// Times the store was found wiped or restored and pushed again.
    pub resets: u64,
    pub last_round: Option<u64>,
    pub last_error: Option<String>,
}

/// Every gateway's report, for `GET /v1/foreign`.
#[derive(Default)]
pub struct Board {
    stores: Mutex<Vec<Arc<Mutex<Report>>>>,
}

impl Board {
    fn add(&self, report: Report) -> Arc<Mutex<Report>> {
        let r = Arc::new(Mutex::new(report));
        self.stores.lock().unwrap_or_else(|p| p.into_inner()).push(r.clone());
        r
    }

    pub fn is_empty(&self) -> bool {
        self.stores.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
    }

    /// Each store's report, in start order.
    pub fn report(&self) -> Value {
        let stores: Vec<Report> = self.stores.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|r| r.lock().unwrap_or_else(|p| p.into_inner()).clone()).collect();
        serde_json::json!({ "stores": stores })
    }
}

fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Starts one gateway task per `--foreign` store. The state file lives in `data`.
pub fn spawn(app: Arc<App>, specs: &[Spec], interval: Duration) -> Result<(), ForeignError> {
    if specs.is_empty() {
        return Ok(());
    }
    let file = StateFile::open(&app.settings.data)?;
    let http = client::Http::new();
    for spec in specs {
        let report = app.foreign.add(Report {
            library: spec.library.clone(),
            collection: spec.collection.clone(),
            kind: format!("{:?}", spec.kind).to_lowercase(),
            url: spec.url.clone(),
            ..Report::default()
        });
        let (app, file, spec) = (app.clone(), file.clone(), spec.clone());
        match spec.kind {
            StoreKind::Couchdb => {
                let adapter = couchdb::CouchDb::new(http.clone(), spec.url.clone());
                tokio::spawn(run(app, file, spec, adapter, report, interval));
            }
            StoreKind::Rest => {
                let adapter = rest::Rest::new(http.clone(), spec.url.clone());
                tokio::spawn(run(app, file, spec, adapter, report, interval));
            }
        }
    }
    Ok(())
}

/// Test hooks (fault injection for the real-process tests, never set in production):
/// `TIDEMARK_FOREIGN_CRASH=after-write` aborts the process right after the first foreign
/// write, before the gateway saves its state; `TIDEMARK_FOREIGN_HOLD=PATH` makes each push
/// wait while PATH exists (after the round's pull), so a test can race a write against it.
struct Hooks {
    crash_after_write: bool,
    hold: Option<std::path::PathBuf>,
}

impl Hooks {
    fn from_env() -> Hooks {
        Hooks {
            crash_after_write: std::env::var("TIDEMARK_FOREIGN_CRASH").is_ok_and(|v| v == "after-write"),
            hold: std::env::var_os("TIDEMARK_FOREIGN_HOLD").map(Into::into),
        }
    }
}

struct Gateway<A: Foreign> {
    app: Arc<App>,
    file: StateFile,
    key: String,
    spec: Spec,
    adapter: A,
    state: StoreState,
    report: Arc<Mutex<Report>>,
    hooks: Hooks,
    /// Records the store refused to take (retried every round).
    refused: BTreeSet<String>,
}

async fn run<A: Foreign + 'static>(app: Arc<App>, file: StateFile, spec: Spec, adapter: A, report: Arc<Mutex<Report>>, interval: Duration) {
    let key = spec.key();
    let state = loop {
        match file.load(&key).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::error!(store = %key, error = %e, "cannot read the foreign state");
                report.lock().unwrap_or_else(|p| p.into_inner()).last_error = Some(e.to_string());
                tokio::time::sleep(interval.max(Duration::from_secs(1))).await;
            }
        }
    };
    tracing::info!(store = %key, origin = %state.origin, kind = adapter.kind(), "foreign gateway started");
    let mut gw = Gateway { app, file, key, spec, adapter, state, report, hooks: Hooks::from_env(), refused: BTreeSet::new() };
    loop {
        let outcome = gw.round().await;
        if let Err(e) = &outcome {
            tracing::warn!(store = %gw.key, error = %e, "foreign round failed");
        }
        gw.reported(|r| {
            r.rounds += 1;
            r.last_round = Some(wall_ms());
            r.last_error = outcome.as_ref().err().map(|e| format!("{}: {e}", e.code()));
        });
        tokio::time::sleep(interval).await;
    }
}

impl<A: Foreign> Gateway<A> {
    fn reported(&self, f: impl FnOnce(&mut Report)) {
        f(&mut self.report.lock().unwrap_or_else(|p| p.into_inner()));
    }

    async fn library(&self) -> Result<Arc<Library>, ForeignError> {
        self.app.registry.open(&self.spec.library).await.map_err(|e| ForeignError::Library(e.to_string()))
    }

    /// One pull and one push, then the report of where the store stands.
    async fn round(&mut self) -> Result<(), ForeignError> {
        let lib = self.library().await?;
        let outcome = self.exchange(&lib).await;
        let max_row = lib.head().max_row;
        let (cursor, mark, n) = (self.state.cursor.clone(), self.state.push_mark, self.state.records.len());
        let origin = self.state.origin.clone();
        self.reported(|r| {
            r.origin = origin;
            r.cursor = cursor;
            r.push_mark = mark;
            r.lag = max_row.saturating_sub(mark);
            r.records = n;
        });
        outcome
    }

    async fn exchange(&mut self, lib: &Library) -> Result<(), ForeignError> {
        let opened = self.adapter.open(&self.state.cursor).await?;
        if opened.wiped {
            self.reset().await?;
        }
        let mut dirty = BTreeSet::new();
        let mut resets = 0;
        loop {
            let changes = self.adapter.changes(&self.state.cursor, &self.state.records).await?;
            if changes.wiped && resets == 0 {
                resets += 1;
                self.reset().await?;
                continue;
            }
            let ids: Vec<String> = changes.records.iter().map(|r| r.id.clone()).collect();
            dirty.extend(self.ingest(lib, changes.records, false).await?);
            self.state.cursor = changes.cursor;
            self.file.save(&self.key, &self.state, ids).await?;
            if !changes.more {
                break;
            }
        }
        self.push(lib, dirty).await
    }

    /// The store was wiped or restored: forget what it held and compare everything again.
    async fn reset(&mut self) -> Result<(), ForeignError> {
        tracing::warn!(store = %self.key, "the foreign store was wiped or restored: comparing and pushing everything again");
        self.state.records.clear();
        self.state.cursor = String::new();
        self.state.push_mark = 0;
        self.file.reset(&self.key, &self.state).await?;
        self.reported(|r| r.resets += 1);
        Ok(())
    }

    /// Writes what `records` mean for the library (one commit through `Work`) and takes
    /// them as the new bases. Returns the ids whose library version must be pushed.
    ///
    /// `settles`: the records were re-read after a conflict (a CouchDB 409), so the merge
    /// settles it. Where the library tracks conflicts for the document (its writers keep
    /// them, DESIGN §11), a patch is then written as a resolution that saw everything the
    /// library holds at its paths: it goes ahead of ordinary rows to every replica, and
    /// none of them shows the conflict the gateway settled.
    async fn ingest(&mut self, lib: &Library, records: Vec<Fetched>, settles: bool) -> Result<BTreeSet<String>, ForeignError> {
        if records.is_empty() {
            return Ok(BTreeSet::new());
        }
        let collection = self.spec.collection.clone();
        let keys: Vec<DocKey> = records.iter().map(|r| (collection.clone(), r.id.clone())).collect::<BTreeSet<_>>().into_iter().collect();
        let origin = self.state.origin.clone();
        let fallback_version = self.state.version;
        let bases: Vec<Option<Map<String, Value>>> = records.iter().map(|r| self.state.records.get(&r.id).and_then(|k| k.base.clone())).collect();
        let now = lib.now();
        let rebuild = lib.rebuild();
        let version = lib.version();
        let mut dirty = BTreeSet::new();
        let mut pulled = 0u64;
        let commit = lib
            .store()
            .commit(&keys, &[], |loaded| {
                let mut clock_head = loaded.head.as_ref().map(|h| h.clock.clone());
                let mut w = Work::load(loaded.head, &loaded.docs, version)?;
                for (rec, base) in records.iter().zip(&bases) {
                    let slot = keys.iter().position(|k| k.1 == rec.id).expect("every record has a key");
                    let stored = loaded.docs[slot].as_ref();
                    let d = decide(stored, base.as_ref(), rec.doc.as_ref());
                    if d.dirty {
                        dirty.insert(rec.id.clone());
                    }
                    let Some((kind, fields)) = d.op else { continue };
                    // The store's records carry the schema version of the document they
                    // change (new ones: the newest seen in the collection), and stamps
                    // after everything the library has seen, under the store's origin.
                    let v = stored.map_or(fallback_version, |s| s.version.max(1));
                    let mut clock = Clock::new(origin.clone(), v, clock_head.clone());
                    let ts = clock.tick(now).ok_or_else(|| tidemark::error::StoreError::Corrupt("the library's newest stamp is at the largest encodable time".into()))?;
                    clock_head = Some(ts.clone());
                    let tracked = stored.filter(|s| settles && kind == Kind::Patch && !s.conflicts.is_empty()).map(StoredDoc::state);
                    let seen = tracked.as_ref().map(|state| {
                        let paths = fields.iter().flat_map(|f| f.keys());
                        paths.map(|p| (p.clone(), state.seen_at(p).unwrap_or_else(tidemark::clock::Stamp::zero))).collect()
                    });
                    let op = Op {
                        origin: origin.clone(),
                        origin_row: w.head().max_row + 1,
                        ts,
                        schema_version: v,
                        collection: collection.clone(),
                        id: rec.id.clone(),
                        kind,
                        fields,
                        resolution: seen.is_some(),
                        seen,
                    };
                    pulled += 1;
                    w.receive(Some(slot), op, &origin);
                }
                if pulled == 0 {
                    return Ok(Commit::default());
                }
                w.finish(&rebuild, &keys, vec![])
            })
            .await
            .map_err(|e| ForeignError::Library(e.to_string()))?;
        lib.committed(&commit);
        for rec in records {
            let known = self.state.records.entry(rec.id.clone()).or_default();
            known.foreign_id = rec.foreign_id;
            if rec.rev.is_some() {
                known.rev = rec.rev;
            }
            known.base = rec.doc;
        }
        if pulled > 0 {
            tracing::info!(store = %self.key, records = pulled, "pulled from the foreign store");
            self.reported(|r| r.pulled += pulled);
        }
        Ok(dirty)
    }

    /// Writes the library's changes since the push mark (and `dirty`) to the store.
    async fn push(&mut self, lib: &Library, mut ids: BTreeSet<String>) -> Result<(), ForeignError> {
        if let Some(hold) = &self.hooks.hold {
            if hold.exists() {
                tracing::info!(store = %self.key, "foreign push holding");
                while hold.exists() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        let mut after = self.state.push_mark;
        loop {
            let rows = lib.store().rows_after(after, 1000).await.map_err(|e| ForeignError::Library(e.to_string()))?;
            let Some(last) = rows.last() else { break };
            after = last.row;
            for r in rows.iter().filter(|r| r.op.collection == self.spec.collection) {
                ids.insert(r.op.id.clone());
                if r.op.origin != self.state.origin {
                    self.state.version = self.state.version.max(r.op.schema_version);
                }
            }
        }
        ids.extend(std::mem::take(&mut self.refused));
        let mut refusal = None;
        for id in ids {
            match self.push_one(lib, &id).await {
                Ok(()) => {}
                // One record the store will not take (say, a field name CouchDB reserves)
                // must not hold up the others: it is tried again every round.
                Err(e @ ForeignError::Refused(_)) => {
                    tracing::warn!(store = %self.key, id, error = %e, "the foreign store refused a record");
                    self.refused.insert(id);
                    refusal.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        if after != self.state.push_mark {
            self.state.push_mark = after;
            self.file.save(&self.key, &self.state, []).await?;
        }
        refusal.map_or(Ok(()), Err)
    }

    async fn push_one(&mut self, lib: &Library, id: &str) -> Result<(), ForeignError> {
        for _attempt in 0..8 {
            let stored = lib.store().get(&self.spec.collection, id).await.map_err(|e| ForeignError::Library(e.to_string()))?;
            let desired = stored.and_then(|s| s.doc);
            let known = self.state.records.get(id).cloned();
            let base = known.as_ref().and_then(|k| k.base.clone());
            if desired == base {
                return Ok(());
            }
            let written = match (&desired, &known) {
                (Some(doc), _) => self.adapter.write(id, known.as_ref(), doc).await?,
                (None, Some(k)) => self.adapter.delete(id, k).await?,
                (None, None) => return Ok(()),
            };
            match written {
                Written::Done { foreign_id, rev } => {
                    if self.hooks.crash_after_write {
                        tracing::warn!(store = %self.key, id, "TIDEMARK_FOREIGN_CRASH: aborting after a foreign write");
                        std::process::abort();
                    }
                    let rec = self.state.records.entry(id.to_string()).or_default();
                    rec.foreign_id = foreign_id;
                    if rev.is_some() {
                        rec.rev = rev;
                    }
                    rec.base = desired;
                    self.file.save(&self.key, &self.state, [id.to_string()]).await?;
                    self.reported(|r| r.pushed += 1);
                    return Ok(());
                }
                Written::Conflict => {
                    // Someone wrote it meanwhile: read it, merge it in, try again.
                    self.reported(|r| r.conflicts += 1);
                    tracing::info!(store = %self.key, id, "foreign write conflicted: re-reading and merging");
                    let fresh = self.adapter.read(id).await?;
                    self.ingest(lib, vec![fresh], true).await?;
                    self.file.save(&self.key, &self.state, [id.to_string()]).await?;
                }
            }
        }
        Err(ForeignError::Refused(format!("record {id} kept conflicting; trying again next round")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn m(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn stored(doc: Option<Value>) -> StoredDoc {
        StoredDoc { id: "a".into(), doc: doc.map(m), stamps: Default::default(), deleted: false, version: 1, index_keys: Map::new(), layers: Default::default(), conflicts: Default::default(), migrated: None }
    }

    #[test]
    fn specs() {
        let s = Spec::parse("demo/tasks=couchdb+http://127.0.0.1:5984/hm/").unwrap();
        assert_eq!((s.library.as_str(), s.collection.as_str(), s.kind, s.url.as_str()), ("demo", "tasks", StoreKind::Couchdb, "http://127.0.0.1:5984/hm"));
        assert_eq!(Spec::parse("d/t=rest+http://h:3000/tickets").unwrap().kind, StoreKind::Rest);
        for bad in ["demo=couchdb+http://h/db", "demo/t", "demo/t=ftp+http://h/x", "../x/t=rest+http://h/t", "d/t=rest+https://h/t", "d/t=rest+http://h/", "d/t=rest+http://h/t?x=1", "d/=rest+http://h/t"] {
            assert_eq!(Spec::parse(bad).unwrap_err().code(), "BAD_FOREIGN", "{bad}");
        }
    }

    #[test]
    fn fingerprints_ignore_key_order() {
        assert_eq!(fingerprint(&json!({"a": 1, "b": [1, {"y": 2, "x": 1}]})), fingerprint(&json!({"b": [1, {"x": 1, "y": 2}], "a": 1})));
        assert_ne!(fingerprint(&json!({"a": 1})), fingerprint(&json!({"a": 2})));
    }

    #[test]
    fn the_three_way_rule() {
        let base = m(json!({"id": "a", "t": "x", "n": 1}));
        // Our own write read back, or a replay after a crash: nothing.
        let same = stored(Some(json!({"id": "a", "t": "x", "n": 1})));
        assert_eq!(decide(Some(&same), Some(&base), Some(&base)), Decision { op: None, dirty: false });
        // Changed there: only the changed field, as a patch.
        let theirs = m(json!({"id": "a", "t": "y", "n": 1}));
        assert_eq!(decide(Some(&same), Some(&base), Some(&theirs)).op, Some((Kind::Patch, Some(m(json!({"t": "y"}))))));
        // Changed here too (another field): the library keeps its change and pushes it.
        let here = stored(Some(json!({"id": "a", "t": "x", "n": 2})));
        assert_eq!(decide(Some(&here), Some(&base), Some(&theirs)), Decision { op: Some((Kind::Patch, Some(m(json!({"t": "y"}))))), dirty: true });
        // A field removed there: a whole-document write.
        let removed = m(json!({"id": "a", "t": "x"}));
        assert_eq!(decide(Some(&same), Some(&base), Some(&removed)).op, Some((Kind::Put, Some(removed.clone()))));
        // A field name with a dot is a name there, not a path: a whole-document write.
        let dotted = m(json!({"id": "a", "t": "x", "n": 1, "a.b": 2}));
        assert_eq!(decide(Some(&same), Some(&base), Some(&dotted)).op, Some((Kind::Put, Some(dotted.clone()))));
        // New there; deleted there; deleted there but never agreed on.
        assert_eq!(decide(None, None, Some(&base)).op, Some((Kind::Put, Some(base.clone()))));
        assert_eq!(decide(Some(&same), Some(&base), None).op, Some((Kind::Delete, None)));
        assert_eq!(decide(Some(&same), None, None), Decision { op: None, dirty: true });
        // No base and both hold it (a wiped store, a crash): the library wins.
        assert_eq!(decide(Some(&here), None, Some(&base)), Decision { op: None, dirty: true });
        assert_eq!(decide(Some(&same), None, Some(&base)), Decision { op: None, dirty: false });
        // Deleted here: pushed out unless it changed there since.
        let tomb = stored(None);
        assert_eq!(decide(Some(&tomb), Some(&base), Some(&base)), Decision { op: None, dirty: true });
        assert_eq!(decide(Some(&tomb), Some(&base), Some(&theirs)).op, Some((Kind::Put, Some(theirs.clone()))));
    }
}
