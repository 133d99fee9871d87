//! IndexedDB storage for the browser (DESIGN §4): `IdbStore` implements the engine's
//! `Store` over a directory database that names the live generation, and one database
//! per generation holding the head, the op log, the peers' sync points and the documents
//! with native indexes.
//!
//! - `directory`: the live pointer and its compare-and-set flip.
//! - `generation`: creating, checking and deleting generation databases.
//! - `commit`: the one-transaction write path.
//! - `head`: where the head is kept, and the fence that lets a single write go unread.
//! - `read`: head, get, queries, log reads.
//! - `codec`: the records' IndexedDB shape, and their way across the wasm boundary.
//! - `keys`: index keys as order-preserving strings for the native indexes.
//! - `error`: IndexedDB failures as `StoreError`s.
//! - `persist`: asking for persistent storage.
//! - `upgrade`: opening data of an older schema version into a new generation.
//! - `generations`: staging a generation beside the live one, swapping it in, and
//!   following another tab's swap (resets, DESIGN §6).
//! - `locks`: Web Locks, which fence rebuilds across tabs.

pub mod codec;
pub mod commit;
pub mod directory;
pub mod error;
pub mod generation;
pub mod generations;
pub mod head;
pub mod keys;
pub mod locks;
pub mod persist;
pub mod read;
pub mod upgrade;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use indexed_db_futures::database::Database;
use indexed_db_futures::internals::SystemRepr;
use wasm_bindgen::prelude::*;

use crate::error::{Error, OpenError, StoreError};
use crate::query::Plan;
use crate::schema::Schema;
use crate::store::{Commit, DocKey, Head, Loaded, Row, Store, StoredDoc};
use crate::peer::PeerRecord;

use directory::{Flip, Live};

/// The IndexedDB store of one replica, bound to its live generation.
pub struct IdbStore {
    replica: String,
    schema: Schema,
    /// The generation this store reads and writes; it changes when a reset or an
    /// upgrade (here or in another tab) swaps a new one in.
    live: RefCell<Live>,
    dir: Database,
    db: RefCell<Database>,
    closed: Rc<Cell<bool>>,
    /// The live generation's connection was closed because another tab deleted or
    /// upgraded it (after swapping a new one in): the next operation binds to the
    /// generation the directory names now.
    stale: Rc<Cell<bool>>,
    /// Closes the directory connection when another tab deletes the replica, so it is
    /// never blocked by this one.
    _on_dir_change: Closure<dyn FnMut()>,
    /// Closes the generation's connection when another tab deletes it (and marks the
    /// store stale); kept alive as long as the store.
    on_db_change: Closure<dyn FnMut(web_sys::Event)>,
    /// Told the collections each committed transaction changed, after it committed (live
    /// queries and other tabs re-read from there).
    on_change: RefCell<Option<js_sys::Function>>,
    /// Releases the rebuild lock this store holds while a staging generation exists.
    rebuild_lock: RefCell<Option<js_sys::Function>>,
    /// This tab's writers waiting for this store's own rebuild to finish.
    waiters: RefCell<Vec<futures::channel::oneshot::Sender<()>>>,
    /// Held while rebinding, so concurrent operations rebind once.
    rebinding: futures::lock::Mutex<()>,
    /// The completion of the last write handed over by `write_staged` (a staging
    /// generation's), not yet awaited: every other operation awaits it first.
    handed_over: RefCell<Option<wasm_bindgen_futures::JsFuture>>,
    /// What this store last wrote to its generation, for `commit_expected`.
    known: RefCell<Known>,
    /// What opening read, for the replica's first reads (each taken once; all dropped by
    /// the first commit).
    opened: RefCell<Opened>,
    /// Commits `commit_expected` made without reading first (tests read it).
    unread_commits: Cell<u64>,
    /// Log records `own_rows_after` had to read (tests read it).
    log_reads: Cell<u64>,
}

/// The head and peer records opening read from generation `db` in one transaction, handed
/// to the replica's first reads as it opens (`Store::opened_head`, `peers`, and
/// `own_rows_after` from row 0, which the head answers) instead of each reading them again
/// in a transaction of its own: opening read the head three times and the peers once, in
/// four transactions one after another.
#[derive(Default)]
struct Opened {
    db: String,
    head: Option<Head>,
    peers: Option<BTreeMap<String, PeerRecord>>,
    /// The head's count of its own rows, with its db id.
    own_rows: Option<(String, u64)>,
    /// Opening found no head (a new replica): the replica's first read of it need not ask
    /// again before the commit that makes one (which resets all this).
    no_head: bool,
}

/// What an `IdbStore` last wrote to a generation: the head, and the documents of its
/// last small commits. Only a guess — another tab may have written
/// since — which `commit::commit_expected`'s fence checks in the transaction it writes in
/// (`head`): its log record is added at the row after this head, taken if anyone wrote.
///
/// Also the `own` counts of the log records it wrote (by first row): a record is never
/// written again once committed, so these are exact, and counting the unsynced rows after
/// a sync or a reset (`Store::own_rows_after`) need not read back records of up to 2,000
/// rows each just for their counts.
#[derive(Default)]
struct Known {
    db: String,
    head: Option<Head>,
    docs: HashMap<DocKey, StoredDoc>,
    /// By first row, in row order. A list, not a map: records are noted in row order (at
    /// the end), and a map type of its own would add its code to the wasm.
    log: Vec<(u64, LogCounts)>,
}

impl Known {
    /// Notes the `own` counts of the log record of `rows` (a commit's, in order). A record
    /// of one own row that follows a run of such records of the same origin extends that
    /// run: single writes, the most common commit, then cost one entry between them
    /// instead of one each (a thousand single writes kept ~330 KB of wasm memory).
    fn logged(&mut self, rows: &[Row]) {
        let (Some(first), Some(last)) = (rows.first(), rows.last()) else { return };
        let counts = match rows {
            [row] if row.from.is_none() => {
                if let Some((_, entry)) = self.log.last_mut() {
                    if let LogCounts::Singles { last, origin } = entry {
                        if *last + 1 == row.row && *origin == row.op.origin {
                            *last = row.row;
                            return;
                        }
                    }
                }
                LogCounts::Singles { last: row.row, origin: row.op.origin.clone() }
            }
            _ => LogCounts::Record { last: last.row, own: codec::own_counts(rows).into_iter().map(|(o, n)| (o.to_string(), n)).collect() },
        };
        if self.log.len() >= KNOWN_LOG {
            self.log.clear();
        }
        match self.log.binary_search_by_key(&first.row, |(k, _)| *k) {
            Ok(i) => self.log[i].1 = counts,
            Err(i) => self.log.insert(i, (first.row, counts)),
        }
    }

    /// The own rows of `origin` in the log record that starts at row `first`, if that is
    /// one this store wrote.
    fn own_in(&self, first: u64, origin: &str) -> Option<u64> {
        let at = self.log.partition_point(|(k, _)| *k <= first).checked_sub(1)?;
        match &self.log[at] {
            (key, LogCounts::Record { own, .. }) if *key == first => Some(own.iter().find(|(o, _)| o == origin).map_or(0, |(_, n)| u64::from(*n))),
            (_, LogCounts::Singles { last, origin: o }) if first <= *last => Some(u64::from(o == origin)),
            _ => None,
        }
    }
}

/// What a commit was computed from (`IdbStore::remember`).
#[derive(Clone, Copy)]
enum Base {
    /// What the store knew (`Known`), checked by the fence, or (a staging generation's
    /// writes) what nobody else writes.
    Known,
    /// The head it read, with this `max_row` (`None`: no head yet).
    Read(Option<u64>),
}

/// What `Known` keeps of the log records it wrote, by the first row they hold.
enum LogCounts {
    /// One record: its last row and its `own` counts (`codec::own_counts`).
    Record { last: u64, own: Vec<(String, u32)> },
    /// The records of rows `key..=last`, one row each, every one an own row of `origin`.
    Singles { last: u64, origin: String },
}

impl LogCounts {
    /// The last row of the records counted.
    fn last(&self) -> u64 {
        match self {
            LogCounts::Record { last, .. } | LogCounts::Singles { last, .. } => *last,
        }
    }
}

/// The most log records `Known` keeps counts of (then it starts over; those it no longer
/// needs go at every `own_rows_after` that counts from above). A run of single writes
/// counts as one.
const KNOWN_LOG: usize = 4096;

/// Commits of at most this many documents are written without reading first when their
/// documents are known, and are remembered; larger ones are read first (a batch of new
/// documents is probed with one request, `commit::read_docs`).
const SMALL_COMMIT: usize = 8;

/// Whether `remember` keeps the documents of a commit that wrote `docs` of them. One that
/// it does not keep is shed as it is written (`commit::commit`), so the two must agree: a
/// shed document remembered would be a wrong base for the next write.
fn keeps_docs(docs: usize) -> bool {
    docs <= SMALL_COMMIT
}

/// The most documents `Known` keeps (then it starts over). A document an app writes again
/// soon (the edits of one screen) is among them; a long run of writes to ever new documents
/// only churns them. Each costs ~1.8 KB of wasm memory, which never shrinks: at 512 a
/// thousand single writes grew it by 0.9 MB more than at 64 (`make bench`'s W2).
const KNOWN_DOCS: usize = 128;

impl IdbStore {
    /// Opens (creating on first use) the replica `name` for `schema`.
    ///
    /// Fails with `SCHEMA_MISMATCH` if the live generation was built for another layout
    /// of collections and indexes; the stored data is left untouched.
    pub async fn open(name: &str, schema: &Schema) -> Result<IdbStore, Error> {
        check_name(name)?;
        schema.validate()?;
        let dir = directory::open(name).await?;
        let live = match directory::read_live(&dir).await {
            Ok(live) => live,
            Err(e) => {
                dir.close();
                return Err(e.into());
            }
        };
        Self::open_in(name, schema, dir, live).await
    }

    /// `open` with the directory already open and its live pointer as read from it (what
    /// `open_migrating` has in hand when there is nothing to migrate: opening the
    /// directory again would cost a second database open on every page load). `schema`
    /// is validated by the caller, before the directory is opened.
    async fn open_in(name: &str, schema: &Schema, dir: Database, live: Option<Live>) -> Result<IdbStore, Error> {
        persist::ask_once();
        let store = match Self::live_generation(name, schema, &dir, live).await {
            Ok((live, db)) => Self::new(name, schema, live, dir, db),
            Err(e) => {
                dir.close();
                return Err(e);
            }
        };
        // A tab that died mid-rebuild left the live generation sealed: lift the seal
        // (unless another tab is rebuilding right now).
        let db = store.db().await?;
        match read::head_and_peers(&db).await? {
            (Some(h), _) if h.sealed => generations::recover(&store).await?,
            // The first single write need not read it again (`commit_expected` checks it).
            (Some(h), peers) => {
                codec::intern_origin(&h.db_id);
                let own_rows = h.own_rows.map(|n| (h.db_id.clone(), n));
                *store.opened.borrow_mut() = Opened { db: db.name(), head: Some(h.clone()), peers: Some(peers), own_rows, no_head: false };
                *store.known.borrow_mut() = Known { db: db.name(), head: Some(h), ..Known::default() };
            }
            (None, _) => *store.opened.borrow_mut() = Opened { db: db.name(), no_head: true, ..Opened::default() },
        }
        Ok(store)
    }

    async fn live_generation(name: &str, schema: &Schema, dir: &Database, mut live: Option<Live>) -> Result<(Live, Database), Error> {
        let layout = schema.layout();
        if live.is_none() {
            let first = Live { generation: 1, db: generation::name(name, 1), schema_version: schema.version, layout: layout.clone() };
            let db = generation::create(name, 1, schema).await?;
            match directory::flip_live(dir, None, &first).await {
                Ok(Flip::Done) => return Ok((first, db)),
                // Another tab created the replica meanwhile: use what it made live.
                Ok(Flip::Lost(current)) => {
                    db.close();
                    live = current;
                }
                Err(e) => {
                    db.close();
                    return Err(e.into());
                }
            }
        }
        let live = live.expect("set above");
        if live.layout != layout {
            return Err(OpenError::SchemaMismatch {
                stored: live.schema_version,
                opened: schema.version,
                hint: "the stored collections or indexes differ from this schema's: open it with the schema the data was \
                       written with, bump schema.version (keeping the old schema in `history`), or call \
                       deleteReplica(name) to start over"
                    .into(),
            }
            .into());
        }
        let (db, _) = generation::open(&live.db, schema).await?;
        if !generation::has_layout(&db, schema)? {
            db.close();
            return Err(StoreError::Corrupt(format!("{} lacks the stores or indexes its directory entry promises", live.db)).into());
        }
        Ok((live, db))
    }

    fn new(name: &str, schema: &Schema, live: Live, dir: Database, db: Database) -> IdbStore {
        codec::intern_names(schema);
        let closed = Rc::new(Cell::new(false));
        let stale = Rc::new(Cell::new(false));
        let on_dir_change = {
            let (closed, dir) = (closed.clone(), dir.clone());
            Closure::<dyn FnMut()>::new(move || {
                closed.set(true);
                dir.as_sys().close();
            })
        };
        let on_db_change = {
            let stale = stale.clone();
            // The connection that got `versionchange` is the event's target, whichever
            // generation this store is bound to by then.
            Closure::<dyn FnMut(web_sys::Event)>::new(move |e: web_sys::Event| {
                stale.set(true);
                if let Some(db) = e.target().and_then(|t| t.dyn_into::<web_sys::IdbDatabase>().ok()) {
                    db.close();
                }
            })
        };
        dir.as_sys().set_onversionchange(Some(on_dir_change.as_ref().unchecked_ref()));
        db.as_sys().set_onversionchange(Some(on_db_change.as_ref().unchecked_ref()));
        IdbStore {
            replica: name.to_string(),
            schema: schema.clone(),
            live: RefCell::new(live),
            dir,
            db: RefCell::new(db),
            closed,
            stale,
            _on_dir_change: on_dir_change,
            on_db_change,
            on_change: RefCell::new(None),
            rebuild_lock: RefCell::new(None),
            waiters: RefCell::new(Vec::new()),
            rebinding: futures::lock::Mutex::new(()),
            handed_over: RefCell::new(None),
            known: RefCell::new(Known::default()),
            opened: RefCell::new(Opened::default()),
            unread_commits: Cell::new(0),
            log_reads: Cell::new(0),
        }
    }

    /// How many log records `own_rows_after` read rather than counting from what this
    /// store wrote.
    pub fn log_records_read(&self) -> u64 {
        self.log_reads.get()
    }

    /// `Store::query`'s documents as the JS array the query hands back: the JS API
    /// returns it as it is, without taking it apart into a `Vec` and building it again.
    pub async fn query_docs(&self, collection: &str, primary_key: &str, plan: &Plan) -> Result<js_sys::Array, StoreError> {
        let db = self.db().await?;
        if !self.knows(collection) {
            return Ok(js_sys::Array::new());
        }
        read::query(&db, collection, primary_key, plan).await
    }

    /// How many commits were written without reading first (`Store::commit_expected`).
    pub fn unread_commits(&self) -> u64 {
        self.unread_commits.get()
    }

    /// What a commit of `keys` to generation `db` expects to read, if this store knows it.
    /// The documents are taken out of `Known`, not copied: the commit puts back what it
    /// writes, whichever way it goes (and a write that fails leaves them unknown).
    fn expected(&self, db: &str, keys: &[DocKey], absent: bool) -> Option<commit::Expected> {
        let mut known = self.known.borrow_mut();
        if known.db != db || keys.len() > SMALL_COMMIT || !keys.iter().all(|k| absent || known.docs.contains_key(k)) {
            return None;
        }
        let head = known.head.clone()?;
        let docs = keys.iter().map(|k| known.docs.remove(k)).collect();
        Some(commit::Expected { head, docs })
    }

    /// Takes note of what a commit computed from `base` wrote to generation `db`
    /// (its documents kept when `keep` says it was small enough to remember them).
    fn remember(&self, db: &str, commit: &Commit, keep: bool, base: Base) {
        *self.opened.borrow_mut() = Opened::default();
        let mut known = self.known.borrow_mut();
        if known.db != db {
            *known = Known { db: db.to_string(), ..Known::default() };
        }
        if let Base::Read(read) = base {
            // Another tab wrote since this store's last commit: the documents it knows may
            // have changed (every commit that changes a document logs a row).
            if known.head.as_ref().map(|h| h.max_row) != read {
                known.docs.clear();
            }
        }
        if let Some(h) = &commit.head {
            if known.head.as_ref().is_none_or(|k| k.db_id != h.db_id) {
                codec::intern_origin(&h.db_id);
            }
            // A head changed without a row over a head it read left the fence on the next
            // row (`commit::commit`): the next write reads first, and logs its rows over it.
            let fenced = commit.rows.is_empty() && matches!(base, Base::Read(Some(_)));
            known.head = (!fenced).then(|| h.clone());
        }
        known.logged(&commit.rows);
        if keep && keeps_docs(commit.docs.len()) {
            if known.docs.len() + commit.docs.len() > KNOWN_DOCS {
                known.docs.clear();
            }
            for (c, d) in &commit.docs {
                known.docs.insert((c.clone(), d.id.clone()), d.clone());
            }
        } else if !commit.docs.is_empty() {
            // A batch (a sync, a reset's, a large write): what it wrote is not kept, and
            // nothing written before it is trusted either — simpler than finding its keys.
            known.docs.clear();
        }
    }

    /// Tells `on_change` the collections a committed transaction changed.
    fn changed(&self, commit: &Commit) {
        if commit.docs.is_empty() {
            return;
        }
        let f = self.on_change.borrow().clone();
        if let Some(f) = f {
            let mut names: Vec<&str> = commit.docs.iter().map(|(c, _)| c.as_str()).collect();
            crate::sort::sort(&mut names);
            names.dedup();
            let arr: js_sys::Array = names.into_iter().map(JsValue::from_str).collect();
            let _ = f.call1(&JsValue::NULL, &arr);
        }
    }

    /// Waits for the write `write_staged` handed over last, if any, and returns its error.
    async fn settle_handed_over(&self) -> Result<(), StoreError> {
        let pending = self.handed_over.borrow_mut().take();
        match pending {
            Some(done) => done.await.map(|_| ()).map_err(|e| error::from_js(&e)),
            None => Ok(()),
        }
    }

    /// Sets the function called with the array of collection names a committed
    /// transaction changed.
    pub fn set_on_change(&self, f: Option<js_sys::Function>) {
        *self.on_change.borrow_mut() = f;
    }

    /// Closes the connections; every later call fails with `CLOSED`.
    pub fn close(&self) {
        if !self.closed.replace(true) {
            let db = self.db.borrow();
            self.dir.as_sys().set_onversionchange(None);
            db.as_sys().set_onversionchange(None);
            self.dir.as_sys().close();
            db.as_sys().close();
            if let Some(release) = self.rebuild_lock.borrow_mut().take() {
                let _ = release.call0(&JsValue::NULL);
            }
        }
    }

    pub fn name(&self) -> &str {
        &self.replica
    }

    /// The live generation this store reads and writes.
    pub fn live(&self) -> Live {
        self.live.borrow().clone()
    }

    /// Deletes the replica `name` entirely: its directory and every generation database.
    /// Open stores of that replica (in this or another tab) are closed by the deletion.
    pub async fn delete_replica(name: &str) -> Result<(), Error> {
        check_name(name)?;
        let mut doomed = generations_listed(name).await;
        let dir = directory::open(name).await?;
        let live = directory::read_live(&dir).await;
        dir.close();
        if let Ok(Some(live)) = live {
            doomed.push(live.db);
        }
        crate::sort::sort(&mut doomed);
        doomed.dedup();
        for db in doomed {
            generation::delete(&db).await?;
        }
        generation::delete(&directory::name(name)).await?;
        Ok(())
    }

    /// The live generation's connection, after following another tab's swap if one
    /// happened; fails with `CLOSED` once the store is closed.
    async fn db(&self) -> Result<Database, StoreError> {
        self.settle_handed_over().await?;
        self.bound_db().await
    }

    /// The generation's connection, without waiting for a write handed over.
    async fn bound_db(&self) -> Result<Database, StoreError> {
        if self.closed.get() {
            return Err(StoreError::Closed);
        }
        if self.stale.get() {
            // One rebind at a time; callers that waited find it done.
            let _one = self.rebinding.lock().await;
            if self.stale.get() {
                self.rebind().await?;
            }
        }
        Ok(self.db.borrow().clone())
    }

    /// The app-visible document at `id` (`None`: absent, deleted, or a collection this
    /// store does not keep), straight from its record: what `get` in the JS API returns.
    pub async fn get_visible(&self, collection: &str, id: &str) -> Result<Option<JsValue>, StoreError> {
        if !self.knows(collection) {
            return Ok(None);
        }
        read::get_visible(&self.db().await?, collection, id).await
    }

    /// `get_visible` as a promise (`read::get_visible_promise`) made at once, when the
    /// generation can be read right away — the store open and bound to it, no staged
    /// write to wait for; `None` otherwise (then `get_visible` waits for those). Its
    /// errors are what `map_err` makes of IndexedDB's.
    pub fn get_visible_now(&self, collection: &str, id: &JsValue, map_err: &js_sys::Function) -> Option<js_sys::Promise> {
        if !self.readable_now() {
            return None;
        }
        if !self.knows(collection) {
            return Some(js_sys::Promise::resolve(&JsValue::UNDEFINED));
        }
        Some(read::get_visible_promise(&self.db.borrow(), collection, id, Some(map_err)))
    }

    /// `query_docs` of a direct plan read in one request as a promise made at once
    /// (`read::query_promise`), when the generation can be read right away (as for
    /// `get_visible_now`); `None` otherwise, or for another plan.
    pub fn query_now(&self, collection: &str, plan: &Plan, map_err: &js_sys::Function) -> Option<Result<js_sys::Promise, StoreError>> {
        if !self.readable_now() {
            return None;
        }
        if !self.knows(collection) {
            return Some(Ok(js_sys::Promise::resolve(&JsValue::from(js_sys::Array::new()))));
        }
        read::query_promise(&self.db.borrow(), collection, plan, Some(map_err)).transpose()
    }

    /// Whether a read can go to the bound generation at once: the store open and bound to
    /// it, no staged write to wait for.
    fn readable_now(&self) -> bool {
        !self.closed.get() && !self.stale.get() && self.handed_over.borrow().is_none()
    }

    /// `take` of what opening read, while it is of `db` (no other generation bound since).
    fn opened<T>(&self, db: &Database, take: impl FnOnce(&mut Opened) -> Option<T>) -> Option<T> {
        let mut opened = self.opened.borrow_mut();
        if opened.db != db.name() {
            return None;
        }
        take(&mut opened)
    }

    /// Drops the documents `get` read ahead (`read::get_visible_promise`): another tab
    /// changed the replica.
    pub fn forget_read_ahead(&self) {
        read::forget_read_ahead(self.db.borrow().as_sys());
    }

    fn knows(&self, collection: &str) -> bool {
        self.schema.collections.contains_key(collection)
    }
}

impl Drop for IdbStore {
    fn drop(&mut self) {
        self.close();
    }
}

/// Replica names end up inside database names; a `:` would let replica `a` and replica
/// `a:g1` claim the same database (`tidemark:a:g1`).
fn check_name(name: &str) -> Result<(), OpenError> {
    if name.is_empty() || name.contains(':') {
        return Err(OpenError::InvalidOptions(format!("replica name {name:?} must be non-empty and must not contain ':'")));
    }
    Ok(())
}

/// Generation databases of `replica` the browser lists, including leftovers of crashed
/// rebuilds the directory no longer names. Empty where `indexedDB.databases()` is missing.
async fn generations_listed(replica: &str) -> Vec<String> {
    let prefix = format!("{}:g", directory::name(replica));
    let list = async {
        let factory = js_sys::Reflect::get(&js_sys::global(), &"indexedDB".into()).ok()?;
        let databases = js_sys::Reflect::get(&factory, &"databases".into()).ok()?.dyn_into::<js_sys::Function>().ok()?;
        let promise = databases.call0(&factory).ok()?.dyn_into::<js_sys::Promise>().ok()?;
        let infos = wasm_bindgen_futures::JsFuture::from(promise).await.ok()?.dyn_into::<js_sys::Array>().ok()?;
        Some(infos.iter().filter_map(|info| js_sys::Reflect::get(&info, &"name".into()).ok()?.as_string()).collect::<Vec<_>>())
    };
    list.await
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.strip_prefix(&prefix).is_some_and(|g| !g.is_empty() && g.bytes().all(|b| b.is_ascii_digit())))
        .collect()
}

impl Store for IdbStore {
    type Doc = JsValue;

    async fn head(&self) -> Result<Option<Head>, StoreError> {
        read::head(&self.db().await?).await
    }

    /// The head `open` read (to check the seal), if nothing was committed and no other
    /// generation bound since: opening a replica read it three times.
    async fn opened_head(&self) -> Result<Option<Head>, StoreError> {
        let db = self.db().await?;
        match self.opened(&db, |o| if o.no_head { Some(None) } else { o.head.take().map(Some) }) {
            Some(h) => Ok(h),
            None => read::head(&db).await,
        }
    }

    async fn get(&self, collection: &str, id: &str) -> Result<Option<StoredDoc>, StoreError> {
        let db = self.db().await?;
        let Some(c) = self.schema.collection(collection) else { return Ok(None) };
        read::get(&db, collection, &c.index_list(), id).await
    }

    async fn commit<F>(&self, keys: &[DocKey], peers: &[String], f: F) -> Result<Commit, Error>
    where
        F: FnOnce(Loaded) -> Result<Commit, Error>,
    {
        let db = self.db().await?;
        if let Some((c, _)) = keys.iter().find(|(c, _)| !self.knows(c)) {
            return Err(StoreError::Backend(format!("collection {c:?} is not in this store's schema")).into());
        }
        let name = db.name();
        let read = Cell::new(None);
        let commit = commit::commit(&db, &self.schema, keys, peers, Box::new(|loaded: Loaded| {
            read.set(loaded.head.as_ref().map(|h| h.max_row));
            f(loaded)
        }))
        .await?;
        let opened_headless = { let o = self.opened.borrow(); o.no_head && o.db == name };
        self.remember(&name, &commit, keys.len() <= SMALL_COMMIT, Base::Read(read.get()));
        // The commit that made the head of a live generation that had none when this store
        // opened it (a new replica's) found its log empty — a live generation logs no row
        // without a head (a staging one does: its copied log comes first) — and wrote no
        // row: counting the own rows needs no read.
        if let (true, None, Some(h), true) = (opened_headless, read.get(), &commit.head, commit.rows.is_empty()) {
            *self.opened.borrow_mut() = Opened { db: name.clone(), own_rows: Some((h.db_id.clone(), 0)), ..Opened::default() };
        }
        self.changed(&commit);
        Ok(commit)
    }

    async fn commit_expected<F>(&self, keys: &[DocKey], absent: bool, f: F) -> Result<Commit, Error>
    where
        F: Fn(Loaded) -> Result<Commit, Error>,
    {
        let db = self.db().await?;
        let name = db.name();
        if let Some(expected) = self.expected(&name, keys, absent).filter(|_| keys.iter().all(|(c, _)| self.knows(c))) {
            if let Some(commit) = commit::commit_expected(&db, &self.schema, keys, expected, &f).await? {
                self.unread_commits.set(self.unread_commits.get() + 1);
                self.remember(&name, &commit, true, Base::Known);
                self.changed(&commit);
                return Ok(commit);
            }
        }
        self.commit(keys, &[], f).await
    }

    async fn peers(&self) -> Result<BTreeMap<String, PeerRecord>, StoreError> {
        let db = self.db().await?;
        match self.opened(&db, |o| o.peers.take()) {
            Some(peers) => Ok(peers),
            None => read::peers(&db).await,
        }
    }

    /// Hands the write to IndexedDB and returns once the one before it has completed:
    /// the caller computes its next write while IndexedDB stores this one.
    async fn write_staged(&self, commit: Commit) -> Result<(), Error> {
        let db = self.bound_db().await?;
        let done = commit::hand_over(&db, &self.schema, &commit).await?;
        // Remembered before it completes: if it fails, the staging generation is dropped,
        // and this store with it.
        self.remember(&db.name(), &commit, false, Base::Known);
        // Freed while IndexedDB stores it, not after the wait for the one before.
        drop(commit);
        let previous = self.handed_over.replace(Some(done));
        if let Some(previous) = previous {
            previous.await.map_err(|e| StoreError::from(error::from_js(&e)))?;
        }
        Ok(())
    }

    async fn docs_after(&self, after: Option<&DocKey>, limit: usize) -> Result<Vec<(String, StoredDoc)>, StoreError> {
        read::docs_after(&self.db().await?, &self.schema, after, limit).await
    }

    async fn doc_count(&self) -> Result<u64, StoreError> {
        read::doc_count(&self.db().await?, &self.schema).await
    }

    async fn doc_keys(&self) -> Result<Vec<DocKey>, StoreError> {
        read::doc_keys(&self.db().await?, &self.schema).await
    }

    type Staging = IdbStore;

    async fn stage(&self, schema: &Schema) -> Result<IdbStore, Error> {
        generations::stage(self, schema).await
    }

    async fn swap(&self, staging: IdbStore) -> Result<(), Error> {
        // Everything written to the staging generation is in before the pointer flips.
        if let Err(e) = staging.settle_handed_over().await {
            let _ = generations::abandon(self, staging).await;
            return Err(e.into());
        }
        generations::swap(self, staging).await
    }

    async fn abandon(&self, staging: IdbStore) -> Result<(), Error> {
        let _ = staging.settle_handed_over().await;
        generations::abandon(self, staging).await
    }

    async fn settle(&self) -> Result<(), Error> {
        generations::settle(self).await
    }

    async fn query(&self, collection: &str, primary_key: &str, plan: &Plan) -> Result<Vec<JsValue>, StoreError> {
        Ok(self.query_docs(collection, primary_key, plan).await?.iter().collect())
    }

    async fn rows_after(&self, after: u64, limit: usize) -> Result<Vec<Row>, StoreError> {
        Ok(read::rows_after_except(&self.db().await?, after, limit, None).await?.0)
    }

    async fn rows_after_except(&self, after: u64, limit: usize, sender: Option<&str>) -> Result<(Vec<Row>, Option<u64>), StoreError> {
        read::rows_after_except(&self.db().await?, after, limit, sender).await
    }

    async fn resolutions_after(&self, after: u64) -> Result<Vec<Row>, StoreError> {
        read::resolutions_after(&self.db().await?, after).await
    }

    async fn own_rows_after(&self, after: u64, origin: &str) -> Result<u64, StoreError> {
        let db = self.db().await?;
        // Every own row (a replica that never pushed, as it opens): the head opening read says.
        if after == 0 {
            if let Some((_, n)) = self.opened(&db, |o| o.own_rows.take_if(|(id, _)| id == origin)) {
                return Ok(n);
            }
        }
        let name = db.name();
        let counted = |first: u64| {
            let known = self.known.borrow();
            (known.db == name).then(|| known.own_in(first, origin))?
        };
        let (n, read, below) = read::own_rows_after(&db, after, origin, &counted).await?;
        self.log_reads.set(self.log_reads.get() + read);
        // Counted from above, records wholly at or below `after` are not asked about again
        // while it grows and stays past half the log (if not, they are read). Counted from
        // below, they are what the next count reads.
        if !below {
            self.known.borrow_mut().log.retain(|(_, c)| c.last() > after);
        }
        Ok(n)
    }
}
