//! A replica: the engine's public face. It turns writes into ops (through `work`, the one
//! write path), answers reads and queries, and keeps the status apps see (`db.status()`),
//! over any `Store`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};

use crate::error::{Error, QueryError, StoreError, WriteError};
use crate::migrate::{Migrator, NoMigrations, Schemas};
use crate::op::{check_doc, check_patch, Kind};
use crate::peer::PeerRecord;
use crate::query::{Plan, Query};
use crate::rebuild::{Rebuild, Rebuilder};
use crate::schema::{Collection, Schema};
use crate::store::{Commit, DocKey, Head, Store, StoredDoc};
use crate::turns::Turns;
use crate::work::{Tracking, Work};

/// One write an app asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    Put { collection: String, doc: Map<String, Value> },
    Patch { collection: String, id: String, fields: Map<String, Value> },
    Delete { collection: String, id: String },
    /// A patch that settles the conflicts at the paths it writes (`db.resolve`, DESIGN
    /// §11), for a collection that keeps conflicts; it also goes to the resolution log.
    Resolve { collection: String, id: String, fields: Map<String, Value> },
}

impl Write {
    fn collection(&self) -> &str {
        match self {
            Write::Put { collection, .. } | Write::Patch { collection, .. } | Write::Delete { collection, .. } | Write::Resolve { collection, .. } => collection,
        }
    }
}

/// A source of wall-clock milliseconds (skewable in tests).
pub type WallClock = Box<dyn Fn() -> u64 + Send + Sync>;

/// Local status, as `db.status()` reports it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(all(test, not(target_arch = "wasm32")), derive(ts_rs::TS))]
pub struct Status {
    pub db_id: String,
    pub schema_version: u32,
    pub max_row: u64,
    /// Last row merged from each peer, by the peer's db id.
    pub incoming: BTreeMap<String, u64>,
    /// Last own row each peer acknowledged, by the peer's db id.
    pub outgoing: BTreeMap<String, u64>,
    /// Whether a live connection is up (set by the connection driver; a replica alone
    /// is never online).
    pub online: bool,
    /// Local rows no peer has acknowledged yet.
    pub pending: u64,
    /// A reset began (a snapshot was being staged) and has not completed yet: the next
    /// sync that receives a snapshot completes it, and `reset` fires then.
    pub reset_pending: bool,
    /// Received ops this replica could not apply and set aside (most recent last, at most
    /// `MAX_QUARANTINED` kept since the replica opened): the sync point moved past them
    /// and every other op applied. Absent when there are none.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(all(test, not(target_arch = "wasm32")), ts(optional))]
    pub quarantined: Option<Vec<Quarantined>>,
}

/// A received op set aside because this replica cannot apply it (DESIGN §5, "One bad op
/// never stops a library"): a primary key that contradicts its id, a patch of the primary
/// key — rules only a replica that knows the schema can check.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(all(test, not(target_arch = "wasm32")), derive(ts_rs::TS))]
pub struct Quarantined {
    pub collection: String,
    pub id: String,
    pub origin: String,
    pub origin_row: u64,
    /// The stable code of the rule it broke (`MISSING_PRIMARY_KEY`, `INVALID_PATCH`, …).
    pub code: String,
    pub reason: String,
}

/// How many quarantined ops `status()` keeps (the oldest are dropped first).
pub const MAX_QUARANTINED: usize = 100;

/// What the replica remembers for `status()` between reads of the store.
#[derive(Clone, Debug, Default)]
struct Known {
    peers: BTreeMap<String, PeerRecord>,
    pending: u64,
}

pub struct Replica<S: Store> {
    store: S,
    /// `None` for a relay (the server): it stores and forwards every collection without
    /// knowing the app's schema, and accepts no local writes.
    /// Shared (`Arc`) so a commit's closure can own a `Rebuilder` (`Store::commit_owned`).
    schemas: Option<Arc<Schemas>>,
    migrator: Arc<dyn Migrator>,
    now: WallClock,
    /// `maxClockSkew` in ms: received stamps further ahead of `now` are refused.
    max_clock_skew: AtomicU64,
    head: Mutex<Head>,
    known: Mutex<Known>,
    /// Ops set aside (for `status`), and those not yet reported as `error` events.
    quarantine: Mutex<(Vec<Quarantined>, Vec<Quarantined>)>,
    /// The call order of the writes asked for through the JS API and of the reads after
    /// them (`turns`).
    turns: Turns,
}

/// A fresh random db id: 16 hex digits.
pub fn new_db_id() -> String {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("the platform has a random source");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl<S: Store> Replica<S> {
    /// Opens a replica over `store`, initializing a fresh store with a new db id.
    pub async fn open(store: S, schema: Schema, now: WallClock) -> Result<Replica<S>, Error> {
        schema.validate()?;
        Self::open_with(store, Some(Schemas::new(schema, vec![])?), Box::new(NoMigrations), now).await
    }

    /// Opens a replica that knows older schemas and how to migrate from them: documents
    /// and ops of older versions are migrated forward as they are read or arrive.
    pub async fn open_migrating(store: S, schemas: Schemas, migrator: Box<dyn Migrator>, now: WallClock) -> Result<Replica<S>, Error> {
        schemas.current.validate()?;
        Self::open_with(store, Some(schemas), migrator, now).await
    }

    /// Opens a relay replica: a server's copy of a library, schema-agnostic.
    pub async fn open_relay(store: S, now: WallClock) -> Result<Replica<S>, Error> {
        Self::open_with(store, None, Box::new(NoMigrations), now).await
    }

    async fn open_with(store: S, schemas: Option<Schemas>, migrator: Box<dyn Migrator>, now: WallClock) -> Result<Replica<S>, Error> {
        let head = match store.opened_head().await? {
            Some(h) => h,
            None => {
                let version = schemas.as_ref().map_or(0, |s| s.current.version);
                let commit = store
                    .commit(&[], &[], move |loaded| {
                        // Another opener may have initialized the store meanwhile.
                        let head = loaded.head.unwrap_or_else(|| Head::new(new_db_id(), version));
                        Ok(Commit { head: Some(head), ..Commit::default() })
                    })
                    .await?;
                commit.head.expect("init writes the head")
            }
        };
        let (schemas, migrator) = (schemas.map(Arc::new), Arc::from(migrator));
        let replica = Replica { store, schemas, migrator, now, max_clock_skew: AtomicU64::new(crate::limits::DEFAULT_MAX_CLOCK_SKEW_MS), head: Mutex::new(head), known: Mutex::new(Known::default()), quarantine: Mutex::default(), turns: Turns::default() };
        replica.refresh_status().await?;
        Ok(replica)
    }

    pub fn schema(&self) -> Option<&Schema> {
        self.schemas.as_deref().map(|s| &s.current)
    }

    /// The schema version this replica writes under (a relay: its head's).
    pub fn version(&self) -> u32 {
        self.schema().map_or_else(|| self.head().schema_version, |s| s.version)
    }

    /// The wall clock, in milliseconds.
    pub fn now(&self) -> u64 {
        (self.now)()
    }

    /// How far ahead of this replica's wall clock a received stamp may be, in ms
    /// (`maxClockSkew`, default 24 h): a peer whose clock is further ahead is refused
    /// before anything is stored, so one bad clock cannot make later local writes lose.
    pub fn max_clock_skew(&self) -> u64 {
        self.max_clock_skew.load(Ordering::Relaxed)
    }

    pub fn set_max_clock_skew(&self, ms: u64) {
        self.max_clock_skew.store(ms, Ordering::Relaxed);
    }

    /// How this replica turns document layers into stored documents.
    pub fn rebuild(&self) -> Rebuild<'_> {
        Rebuild { schemas: self.schemas.as_deref(), migrator: self.migrator.as_ref() }
    }

    /// `rebuild`, owned: for a commit's closure that must own what it uses.
    pub fn rebuilder(&self) -> Rebuilder {
        Rebuilder { schemas: self.schemas.clone(), migrator: self.migrator.clone() }
    }

    /// The head as of the last commit this replica made or loaded.
    pub fn head(&self) -> Head {
        self.head.lock().expect("head lock").clone()
    }

    /// Re-reads the head and the sync status from the store (another tab may have written).
    pub async fn reload_head(&self) -> Result<(), Error> {
        if let Some(h) = self.store.head().await? {
            self.set_head(h);
        }
        self.refresh_status().await
    }

    fn set_head(&self, head: Head) {
        let mut h = self.head.lock().expect("head lock");
        if head.max_row >= h.max_row {
            *h = head;
        }
    }

    /// Takes note of what a commit wrote: its head, and the peer records it replaced.
    pub fn committed(&self, commit: &Commit) {
        if let Some(h) = &commit.head {
            self.set_head(h.clone());
        }
        if !commit.peers.is_empty() {
            let mut known = self.known.lock().expect("status lock");
            for (id, rec) in &commit.peers {
                known.peers.insert(id.clone(), rec.clone());
            }
        }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// Where the writes asked for of this replica stand (`turns`): an API that lets
    /// callers start writes without awaiting them takes a ticket per write and per read
    /// as each is asked for, so they commit and read in the order they were asked for.
    pub fn turns(&self) -> &Turns {
        &self.turns
    }

    /// Gives the store back (to reopen it, as a restarted app would).
    pub fn into_store(self) -> S {
        self.store
    }

    /// The status as of the last commit or `refresh_status`: db id, points, pending rows.
    pub fn status(&self) -> Status {
        let h = self.head();
        let known = self.known.lock().expect("status lock").clone();
        let point = |p: i64| (p >= 0).then_some(p as u64);
        Status {
            db_id: h.db_id.clone(),
            schema_version: self.version(),
            max_row: h.max_row,
            incoming: crate::sort::map_from(known.peers.iter().filter_map(|(id, p)| Some((id.clone(), point(p.incoming)?)))),
            outgoing: crate::sort::map_from(known.peers.iter().filter_map(|(id, p)| Some((id.clone(), point(p.outgoing)?)))),
            online: false,
            pending: known.pending,
            reset_pending: h.reset_pending,
            quarantined: Some(self.quarantine.lock().expect("quarantine lock").0.clone()).filter(|q| !q.is_empty()),
        }
    }

    /// Records ops set aside by a received batch (see `Quarantined`).
    pub fn quarantine(&self, ops: Vec<Quarantined>) {
        if ops.is_empty() {
            return;
        }
        let mut guard = self.quarantine.lock().expect("quarantine lock");
        let (all, fresh) = &mut *guard;
        for list in [all, fresh] {
            list.extend(ops.iter().cloned());
            let over = list.len().saturating_sub(MAX_QUARANTINED);
            list.drain(..over);
        }
    }

    /// The ops set aside since the last call, for `error` events.
    pub fn take_quarantined(&self) -> Vec<Quarantined> {
        std::mem::take(&mut self.quarantine.lock().expect("quarantine lock").1)
    }

    /// Drops peers from the status cache once their records are gone from the store (a
    /// server prunes records by a size policy; the cache must not outgrow the store).
    pub fn forget_peers(&self, ids: &[String]) {
        let mut known = self.known.lock().expect("status lock");
        for id in ids {
            known.peers.remove(id);
        }
    }

    /// Re-reads the peer records and counts the local rows no peer has acknowledged.
    pub async fn refresh_status(&self) -> Result<(), Error> {
        let peers = self.store.peers().await?;
        let acked = peers.values().filter(|p| !p.out_history.is_empty()).map(|p| p.outgoing).max().unwrap_or(-1);
        let pending = self.store.own_rows_after(acked.max(0) as u64, &self.head().db_id).await?;
        *self.known.lock().expect("status lock") = Known { peers, pending };
        Ok(())
    }

    fn collection(&self, name: &str) -> Result<&Collection, WriteError> {
        self.schema().and_then(|s| s.collection(name)).ok_or_else(|| WriteError::UnknownCollection(name.to_string()))
    }

    pub async fn put(&self, collection: &str, doc: Map<String, Value>) -> Result<(), Error> {
        self.write(vec![Write::Put { collection: collection.into(), doc }]).await
    }

    pub async fn patch(&self, collection: &str, id: &str, fields: Map<String, Value>) -> Result<(), Error> {
        self.write(vec![Write::Patch { collection: collection.into(), id: id.into(), fields }]).await
    }

    pub async fn delete(&self, collection: &str, id: &str) -> Result<(), Error> {
        self.write(vec![Write::Delete { collection: collection.into(), id: id.into() }]).await
    }

    /// Applies several writes atomically: one transaction, one group of log rows.
    pub async fn write(&self, writes: Vec<Write>) -> Result<(), Error> {
        // Validate everything before touching storage.
        let mut keys: Vec<DocKey> = Vec::with_capacity(writes.len());
        let mut slots = Vec::with_capacity(writes.len());
        let mut index = HashMap::new();
        let mut tracking = Vec::with_capacity(writes.len());
        for w in &writes {
            let coll = self.collection(w.collection())?;
            let id = match w {
                Write::Put { doc, .. } => match doc.get(&coll.primary_key) {
                    Some(Value::String(id)) if !id.is_empty() => {
                        check_id(id)?;
                        check_doc(doc)?;
                        id.clone()
                    }
                    _ => return Err(WriteError::MissingPrimaryKey { field: coll.primary_key.clone() }.into()),
                },
                Write::Patch { id, fields, .. } => {
                    check_id(id)?;
                    check_patch(fields, &coll.primary_key)?;
                    id.clone()
                }
                Write::Resolve { collection, id, fields } => {
                    if !coll.conflicts {
                        return Err(WriteError::InvalidArgument(format!(
                            "collection {collection:?} does not keep conflicts: declare `conflicts: true` in its schema to resolve them"
                        ))
                        .into());
                    }
                    check_id(id)?;
                    check_patch(fields, &coll.primary_key)?;
                    id.clone()
                }
                Write::Delete { id, .. } => {
                    check_id(id)?;
                    id.clone()
                }
            };
            let key = (w.collection().to_string(), id);
            let slot = *index.entry(key.clone()).or_insert_with(|| {
                keys.push(key);
                keys.len() - 1
            });
            slots.push(slot);
            tracking.push(coll.conflicts.then(|| Tracking { primary_key: &coll.primary_key, resolution: matches!(w, Write::Resolve { .. }) }));
        }
        if writes.is_empty() {
            return Ok(());
        }
        let version = self.version();
        let rebuild = self.rebuild();
        let puts_only = writes.iter().all(|w| matches!(w, Write::Put { .. }));
        // A sealed generation (a reset or an upgrade under way, here or in another tab)
        // refuses the commit: wait for the new generation, then write there.
        let commit = loop {
            let now = self.now();
            let attempt = self
                .store
                .commit_expected(&keys, puts_only, |loaded| {
                    let mut work = Work::load(loaded.head, &loaded.docs, version)?;
                    for ((w, &slot), &t) in writes.iter().zip(&slots).zip(&tracking) {
                        let id = keys[slot].1.clone();
                        match w.clone() {
                            Write::Put { collection, doc } => work.write(slot, Kind::Put, collection, id, Some(doc), t, now)?,
                            Write::Patch { collection, fields, .. } | Write::Resolve { collection, fields, .. } => {
                                work.write(slot, Kind::Patch, collection, id, Some(fields), t, now)?
                            }
                            Write::Delete { collection, .. } => work.write(slot, Kind::Delete, collection, id, None, t, now)?,
                        }
                    }
                    work.finish(&rebuild, &keys, vec![])
                })
                .await;
            match attempt {
                Err(Error::Store(StoreError::Sealed)) => {
                    self.store.settle().await?;
                    self.reload_head().await?;
                }
                other => break other?,
            }
        };
        let me = self.head().db_id;
        let local = commit.rows.iter().filter(|r| r.is_own(&me)).count() as u64;
        self.committed(&commit);
        self.known.lock().expect("status lock").pending += local;
        Ok(())
    }

    /// Settles conflicts of a document (DESIGN §11): writes `fields` as a resolution.
    pub async fn resolve(&self, collection: &str, id: &str, fields: Map<String, Value>) -> Result<(), Error> {
        self.write(vec![Write::Resolve { collection: collection.into(), id: id.into(), fields }]).await
    }

    /// The losing values of concurrent writes to a document, by path, newest first
    /// (`DocState::losers`); empty when there are none or the document does not exist.
    pub async fn conflicts(&self, collection: &str, id: &str) -> Result<Map<String, Value>, Error> {
        self.query_collection(collection)?;
        Ok(self.store.get(collection, id).await?.map(|d| d.state().losers()).unwrap_or_default())
    }

    /// The document, or `None` if it doesn't exist (or was deleted).
    pub async fn get(&self, collection: &str, id: &str) -> Result<Option<StoredDoc>, Error> {
        self.query_collection(collection)?;
        Ok(self.store.get(collection, id).await?.filter(|d| d.doc.is_some()))
    }

    pub async fn query(&self, collection: &str, query: &Value) -> Result<Vec<S::Doc>, Error> {
        let (coll, plan) = self.plan(collection, query)?;
        Ok(self.store.query(collection, &coll.primary_key, &plan).await?)
    }

    /// Parses and plans a query without running it.
    pub fn plan(&self, collection: &str, query: &Value) -> Result<(&Collection, Plan), Error> {
        let coll = self.query_collection(collection)?;
        Ok((coll, Query::parse(query)?.plan(coll)))
    }

    /// The current schema's collection `collection`, or `UNKNOWN_COLLECTION`: what every
    /// read checks first.
    pub fn query_collection(&self, collection: &str) -> Result<&Collection, QueryError> {
        self.schema().and_then(|s| s.collection(collection)).ok_or_else(|| QueryError::UnknownCollection(collection.to_string()))
    }
}

fn check_id(id: &str) -> Result<(), WriteError> {
    crate::limits::check_id(id).map_err(WriteError::InvalidArgument)
}
