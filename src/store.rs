//! The storage contract: what a replica needs from the place its data lives.
//!
//! A store keeps four things for one replica generation: the head (db id, max row, clock),
//! the op log, the documents with their merge state and index keys, and the peers' sync
//! points. Every write goes through `commit`, which reads the touched documents, peer
//! records and the head, lets the engine compute the new state, and writes it all in ONE
//! atomic transaction (DESIGN §4): after a crash either all of it is there or none of it.
//!
//! Every method is required: a backend that compiled but never read its sync points back
//! would silently restart every sync from scratch. `testkit::contract` runs one suite
//! against every store (memory, SQLite, IndexedDB, PostgreSQL).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::clock::Stamp;
use crate::error::{Error, StoreError};
use crate::layers::Layers;
use crate::merge::{Contender, DocState};
use crate::op::{Op, OpKey};
use crate::peer::PeerRecord;
use crate::peer_records::PeerRecords;
use crate::query::Plan;
use crate::schema::Schema;

/// How many documents `Store::doc_keys`' default reads per `docs_after` page: the keys
/// are kept, each page's documents dropped as soon as it is listed.
pub const KEY_PAGE: usize = 1000;

/// The replica's identity and positions, rewritten by every commit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Head {
    pub db_id: String,
    /// The last row this replica's log holds; rows are never reused.
    pub max_row: u64,
    /// The newest stamp this replica has issued or seen.
    pub clock: Stamp,
    pub schema_version: u32,
    /// A staging generation is being built from this one (`Store::stage`): commits are
    /// refused until the swap or abandon, so no row is written into a dead generation.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sealed: bool,
    /// A reset began and has not completed yet (`status().resetPending`); the next sync
    /// that receives a snapshot completes it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reset_pending: bool,
    /// How many rows of the log are this replica's own (`Row::is_own`): counted as rows
    /// are logged (`Head::log`), so a replica opening with many unsynced writes knows how
    /// many without reading its log (`Store::own_rows_after` from row 0). `None`: not
    /// known (a head stored before this count existed), and it stays unknown. Stores
    /// keep it as written; only IndexedDB's `own_rows_after` reads it.
    #[serde(default, rename = "ownRows", skip_serializing_if = "Option::is_none")]
    pub own_rows: Option<u64>,
}

impl Head {
    /// A fresh replica's head.
    pub fn new(db_id: String, version: u32) -> Head {
        Head { clock: Stamp { version, wall: 0, counter: 0, node: db_id.clone() }, db_id, max_row: 0, schema_version: version, sealed: false, reset_pending: false, own_rows: Some(0) }
    }

    /// Logs `op` as the next row (from `from`, `None` for this replica's own), counting
    /// it in `own_rows` if it is this replica's own. Every row a replica logs goes
    /// through here, so the row numbers and the count cannot disagree.
    pub fn log(&mut self, op: Op, from: Option<String>) -> Row {
        self.max_row += 1;
        let row = Row { row: self.max_row, op, from };
        if row.is_own(&self.db_id) {
            self.own_rows = self.own_rows.map(|n| n + 1);
        }
        row
    }
}

/// One entry of the op log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub row: u64,
    pub op: Op,
    /// The peer the op came from, `None` for local writes (echo suppression needs it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

impl Row {
    /// Whether this row is `origin`'s own: written by it (its origin) and logged where it
    /// was written (no sender). A replica's unsynced writes are its own rows after what
    /// its peers acknowledged (`Store::own_rows_after`).
    pub fn is_own(&self, origin: &str) -> bool {
        self.from.is_none() && self.op.origin == origin
    }

    /// The row's JSON as a batch carries it, from its op's JSON text as a store keeps it:
    /// the text serde writes for the `Row` (a server sends its stored rows as they are,
    /// `message::BatchRows`).
    pub fn wire_text(row: u64, op: &str, from: Option<&str>) -> String {
        match from {
            Some(from) => format!(r#"{{"row":{row},"op":{op},"from":{}}}"#, serde_json::to_string(from).expect("strings serialize")),
            None => format!(r#"{{"row":{row},"op":{op}}}"#),
        }
    }
}

/// A stored document as its JSON text, with its key (`Store::stored_texts_after`).
#[derive(Clone, Debug, PartialEq)]
pub struct StoredText {
    pub collection: String,
    pub id: String,
    /// The `StoredDoc`, as JSON.
    pub state: String,
}

/// A logged row as far as a sender's filter reads it (`Store::row_keys_after`).
#[derive(Clone, Debug, PartialEq)]
pub struct RowKey {
    pub row: u64,
    pub op: OpKey,
    pub from: Option<String>,
}

impl RowKey {
    /// A logged row's key from its op's JSON text as a store keeps it, reading only the
    /// fields the key holds.
    pub fn from_stored(row: u64, op: &str, from: Option<String>) -> Result<RowKey, StoreError> {
        let op = serde_json::from_str(op).map_err(|e| StoreError::Corrupt(format!("log row: {e}")))?;
        Ok(RowKey { row, op, from })
    }
}

impl From<Row> for RowKey {
    fn from(r: Row) -> RowKey {
        RowKey { row: r.row, op: OpKey { origin: r.op.origin, origin_row: r.op.origin_row, ts: r.op.ts }, from: r.from }
    }
}

/// A document as stored. The stored form keeps one-letter keys (they are repeated in
/// every record of every store); the Rust names say what each holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredDoc {
    pub id: String,
    /// What apps read: the view at the replica's schema version, `None` when the
    /// document does not exist (never written, deleted, or dropped by a migration).
    #[serde(rename = "d")]
    pub doc: Option<Map<String, Value>>,
    /// The stamps of the registers of the layer of version `version`: the app's writes
    /// of that version and, when the document was migrated from older layers, the
    /// migration output as its root register (so `doc` is this layer materialized).
    #[serde(rename = "s")]
    pub stamps: BTreeMap<String, Stamp>,
    /// Whether that layer's root register is a tombstone.
    #[serde(rename = "t", default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    /// The schema version of the view and of the layer in `stamps`.
    #[serde(rename = "v")]
    pub version: u32,
    /// Each index's key (absent when the document does not exist, so it drops out of
    /// every index).
    #[serde(rename = "i", default, skip_serializing_if = "Map::is_empty")]
    pub index_keys: Map<String, Value>,
    /// The layers of other schema versions.
    #[serde(rename = "l", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub layers: BTreeMap<u32, DocState>,
    /// Conflict tracking of the layer of version `version` (`DocState::conflicts`).
    #[serde(rename = "x", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub conflicts: BTreeMap<String, Vec<Contender>>,
    /// The stamp of the last migration output logged for this document, so the same
    /// output is logged once, not again on every later write.
    #[serde(rename = "m", default, skip_serializing_if = "Option::is_none")]
    pub migrated: Option<Stamp>,
}

impl StoredDoc {
    /// A document as a query selects among them (`scan::select`): its view `doc` with its
    /// key in each of `indexes`, and no write history (stamps, layers, conflicts).
    pub fn queried(id: &str, doc: Map<String, Value>, indexes: &[crate::schema::Index]) -> StoredDoc {
        let index_keys = crate::schema::index_keys(indexes, &doc);
        StoredDoc { id: id.to_string(), doc: Some(doc), stamps: BTreeMap::new(), deleted: false, version: 0, index_keys, layers: BTreeMap::new(), conflicts: BTreeMap::new(), migrated: None }
    }

    /// The merge state of the layer of version `version`.
    pub fn state(&self) -> DocState {
        DocState { doc: self.doc.clone().unwrap_or_default(), stamps: self.stamps.clone(), deleted: self.deleted, conflicts: self.conflicts.clone() }
    }

    /// Every layer, by schema version.
    pub fn all_layers(&self) -> Layers {
        Layers::of(self.version, self.state(), &self.layers)
    }
}

/// A document key: (collection, id).
pub type DocKey = (String, String);

/// What one commit writes.
#[derive(Clone, Debug, Default)]
pub struct Commit {
    pub head: Option<Head>,
    pub docs: Vec<(String, StoredDoc)>,
    pub rows: Vec<Row>,
    /// Peer records (sync points and sessions) to replace, by peer db id.
    pub peers: Vec<(String, PeerRecord)>,
}

impl Commit {
    /// Checks what every store must refuse before writing anything: any commit to a
    /// sealed generation, and log rows that are not numbered after the head the commit
    /// read, or not strictly ascending.
    pub fn check(&self, loaded: Option<&Head>) -> Result<(), StoreError> {
        if loaded.is_some_and(|h| h.sealed) {
            return Err(StoreError::Sealed);
        }
        let mut last = loaded.map_or(0, |h| h.max_row);
        for r in &self.rows {
            if r.row <= last {
                return Err(StoreError::Backend(format!("log row {} does not follow row {last}: rows are never reused", r.row)));
            }
            last = r.row;
        }
        Ok(())
    }

    /// Drops what its callers do not read once a store has written it: the documents'
    /// contents (kept: which documents, by collection and id) and the ops' fields (kept:
    /// every row's number, origin and sender). Callers read a commit's head, peers and
    /// rows (`Replica::committed`, the count of its own rows). Freeing a batch's
    /// thousand documents while the backend still stores them, not after, took the time
    /// from a W1 batch's completion to its resolved promise from ~4 to ~2 ms (of ~115).
    pub fn shed(&mut self) {
        for (_, d) in &mut self.docs {
            d.doc = None;
            d.stamps = BTreeMap::new();
            d.index_keys = Map::new();
            d.layers = BTreeMap::new();
            d.conflicts = BTreeMap::new();
        }
        for r in &mut self.rows {
            r.op.fields = None;
            r.op.seen = None;
        }
    }
}

/// What a commit reads before computing its writes: the head, the documents at the keys
/// it named and the records of the peers it named (in the same order).
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    pub head: Option<Head>,
    pub docs: Vec<Option<StoredDoc>>,
    pub peers: Vec<Option<PeerRecord>>,
}

/// The storage backend of one replica generation.
///
/// Futures are not required to be `Send`: IndexedDB lives on one JS thread.
#[allow(async_fn_in_trait)]
pub trait Store {
    /// How stores hand query results back: `serde_json` maps natively, JS objects in the
    /// browser (so results cross into JS without being converted twice).
    type Doc;

    /// The head, or `None` for a store that was never initialized.
    async fn head(&self) -> Result<Option<Head>, StoreError>;

    /// The head for a replica opening over this store (`Replica::open`): a store that
    /// read it as it opened hands that back, once, rather than reading it again.
    async fn opened_head(&self) -> Result<Option<Head>, StoreError> {
        self.head().await
    }

    /// Reads one stored document (tombstones included).
    async fn get(&self, collection: &str, id: &str) -> Result<Option<StoredDoc>, StoreError>;

    /// Reads the head, the documents at `keys` and the records of `peers`, passes them to
    /// `f`, and writes what it returns, all in one transaction. If `f` fails, nothing is
    /// written. A commit may only write documents whose keys it read. The commit comes
    /// back as written, or shed (`Commit::shed`) when the store freed it while writing.
    async fn commit<F>(&self, keys: &[DocKey], peers: &[String], f: F) -> Result<Commit, Error>
    where
        F: FnOnce(Loaded) -> Result<Commit, Error>;

    /// As `commit`, for an `f` that owns everything it uses: a store that commits on a
    /// thread of its own (the server's SQLite writer) runs it there, inside its open
    /// transaction, instead of handing what it read to the caller's task and waiting for
    /// the answer — on a busy server that wait, not the work, was most of a commit's turn
    /// on the one writer. The bookkeeping commits of every pass (peer records) take this
    /// path. By default, `commit`.
    async fn commit_owned<F>(&self, keys: &[DocKey], peers: &[String], f: F) -> Result<Commit, Error>
    where
        F: FnOnce(Loaded) -> Result<Commit, Error> + Send + 'static,
    {
        self.commit(keys, peers, f).await
    }

    /// As `commit` (no peer records), for a replica's own write, whose `f` may run twice:
    /// a store that remembers what it last read and wrote may first run `f` over that —
    /// the head and the documents at `keys` as it expects them stored, a key it knows
    /// nothing of expected absent when `absent` says every write is a whole put — and
    /// write the result in one transaction that aborts unless they are as expected (another
    /// tab wrote meanwhile, a document already existed) — the IndexedDB store checks that
    /// without reading (`idb::head`'s fence). Then it runs as `commit`. A single write so
    /// costs no read round trip before it (DESIGN §10). By default, `commit`.
    async fn commit_expected<F>(&self, keys: &[DocKey], absent: bool, f: F) -> Result<Commit, Error>
    where
        F: Fn(Loaded) -> Result<Commit, Error>,
    {
        let _ = absent;
        self.commit(keys, &[], f).await
    }

    /// Writes `commit` without reading anything first: for building a staging generation,
    /// which nobody else writes, so nothing is checked against its head. A reset writes
    /// its migrated documents this way, slice after slice, each handed to the store while
    /// the next is computed. By default, a commit of the same writes.
    async fn write_staged(&self, commit: Commit) -> Result<(), Error> {
        let keys: Vec<DocKey> = commit.docs.iter().map(|(c, d)| (c.clone(), d.id.clone())).collect();
        let peers: Vec<String> = commit.peers.iter().map(|(id, _)| id.clone()).collect();
        self.commit(&keys, &peers, move |_| Ok(commit)).await.map(|_| ())
    }

    /// Answers a planned query: scans the plan's source, keeps documents that exist and
    /// match, and applies `plan.finish`.
    async fn query(&self, collection: &str, primary_key: &str, plan: &Plan) -> Result<Vec<Self::Doc>, StoreError>;

    /// Log rows with `row > after`, ascending, at most `limit`.
    async fn rows_after(&self, after: u64, limit: usize) -> Result<Vec<Row>, StoreError>;

    /// `rows_after`, except that the store may leave out whole runs of rows that all came
    /// from `sender` (when given): a pass never sends a peer back the rows it got from that
    /// peer (`send::Filter`), and after an initial sync or a catch-up a replica's log is
    /// mostly such rows, read and decoded only to be passed over. Also returns the last row
    /// passed, left out or returned (`None`: no row after `after`), so the pass covers the
    /// rows left out. `limit` counts the rows returned. The default leaves nothing out.
    async fn rows_after_except(&self, after: u64, limit: usize, sender: Option<&str>) -> Result<(Vec<Row>, Option<u64>), StoreError> {
        let _ = sender;
        let rows = self.rows_after(after, limit).await?;
        let last = rows.last().map(|r| r.row);
        Ok((rows, last))
    }

    /// The resolution log (DESIGN §11): the rows after `after` whose op is a resolution,
    /// ascending. Every pass sends them before any other row, uncapped, so a store keeps
    /// them where it can find them without walking the log.
    async fn resolutions_after(&self, after: u64) -> Result<Vec<Row>, StoreError>;

    /// `rows_after`'s rows with only what a sender's filter reads of each. A store that
    /// keeps ops as text reads just those fields (`OpKey`).
    async fn row_keys_after(&self, after: u64, limit: usize) -> Result<Vec<RowKey>, StoreError> {
        Ok(self.rows_after(after, limit).await?.into_iter().map(RowKey::from).collect())
    }

    /// The pages made from this store's documents that readers share (a server's library,
    /// which many clients pull the same snapshot pages from), if it keeps any; such a store
    /// marks every write with `DocPages::writing`.
    fn doc_pages(&self) -> Option<&crate::doc_pages::DocPages> {
        None
    }

    /// Passes `row_keys_after(after, limit)`'s rows to `f`. A store that keeps recent
    /// row keys in memory (a server's, for the many pulls that count the same rows) lends
    /// them without reading or copying anything.
    async fn with_row_keys_after<R>(&self, after: u64, limit: usize, f: impl FnOnce(&[RowKey]) -> R) -> Result<R, StoreError> {
        Ok(f(&self.row_keys_after(after, limit).await?))
    }

    /// Passes `rows_after(after, limit)`'s rows to `f` as their keys and, beside them, their
    /// wire text (`Row::wire_text`), if the store keeps rows so: a server's, whose many
    /// pulls send the same recent rows, each read and written as text once rather than
    /// decoded and encoded again for every pull. `None` (the default): the store keeps no
    /// such text, and a sender reads `rows_after_except`.
    async fn with_wire_rows_after<R>(&self, after: u64, limit: usize, f: impl FnOnce(&[RowKey], &[Arc<str>]) -> R) -> Result<Option<R>, StoreError> {
        let _ = (after, limit, f);
        Ok(None)
    }

    /// How many rows after `after` are local writes of `origin` (logged here, not received):
    /// the writes a replica still has to push, counted when it opens. Provided through
    /// `rows_after`; a store whose rows are costly to decode counts them where they lie.
    async fn own_rows_after(&self, after: u64, origin: &str) -> Result<u64, StoreError> {
        let (mut after, mut n) = (after, 0);
        loop {
            let rows = self.rows_after(after, 2000).await?;
            let Some(last) = rows.last() else { return Ok(n) };
            after = last.row;
            n += rows.iter().filter(|r| r.is_own(origin)).count() as u64;
        }
    }

    /// Every peer record, by peer db id.
    async fn peers(&self) -> Result<BTreeMap<String, PeerRecord>, StoreError>;

    /// Reads the record of `peer` as it is now, and every record, through `f`: a pass needs
    /// the one record of the replica at the other end and a summary of all of them (the
    /// table a sender forwards, the marks a receiver answers with). The summary only lets
    /// the other side skip what it already holds, and what it says stays true as records
    /// move forward, so a store that reads its records from elsewhere (PostgreSQL, with
    /// thousands of clients) may lend every record as it read them a moment ago rather
    /// than read them all at every pass; the one record is always current.
    ///
    /// The summary takes the records newest first (`PeerRecords`): a store that keeps its
    /// records in memory keeps that order with them (and lends them without copying: a
    /// server would otherwise copy thousands of records at every pass); this default reads
    /// the records and orders them.
    async fn with_peer_and_summary<R>(&self, peer: &str, f: impl FnOnce(Option<&PeerRecord>, &PeerRecords) -> R) -> Result<R, StoreError> {
        let all = PeerRecords::new(self.peers().await?);
        Ok(f(all.get(peer), &all))
    }

    /// Up to `limit` stored documents (tombstones included) after `after` in the store's
    /// own (collection, id) order, for snapshots streamed page by page. Documents are
    /// never removed, so a scan that starts after the head was read sees every document
    /// that existed then (possibly newer states of them, which merging tolerates).
    async fn docs_after(&self, after: Option<&DocKey>, limit: usize) -> Result<Vec<(String, StoredDoc)>, StoreError>;

    /// `docs_after`'s page as each document's stored JSON text (a `StoredDoc`), for a
    /// store that keeps documents as text: a snapshot passes them on without decoding them
    /// (`SnapshotDoc::wire_from_stored`). `None`: this store does not, use `docs_after`.
    async fn stored_texts_after(&self, _after: Option<&DocKey>, _limit: usize) -> Result<Option<Vec<StoredText>>, StoreError> {
        Ok(None)
    }

    /// How many documents (tombstones included) `docs_after` would walk: a snapshot's
    /// progress total.
    async fn doc_count(&self) -> Result<u64, StoreError>;

    /// The keys of every stored document (tombstones included), in `docs_after`'s order.
    /// A store that can list keys without reading the documents says so here; by default
    /// they come from `docs_after`'s pages.
    async fn doc_keys(&self) -> Result<Vec<DocKey>, StoreError> {
        let mut keys: Vec<DocKey> = Vec::new();
        loop {
            let page = self.docs_after(keys.last(), KEY_PAGE).await?;
            if page.is_empty() {
                return Ok(keys);
            }
            keys.extend(page.into_iter().map(|(c, d)| (c, d.id)));
        }
    }

    /// Where a new generation is built before it is swapped in (a reset, DESIGN §6).
    type Staging: Store<Doc = Self::Doc>;

    /// Seals the live generation — from now on its commits fail with `StoreError::Sealed`,
    /// while reads go on — and returns an empty staging generation laid out for `schema`.
    /// Fails if another staging is under way. Servers' stores, which never reset (they
    /// merge snapshots), refuse with `Unsupported`.
    async fn stage(&self, schema: &Schema) -> Result<Self::Staging, Error>;

    /// Makes `staging` the live generation in one step (a pointer flip, never a copy) and
    /// unseals; the old generation is deleted after. Readers see the old generation until
    /// this returns and the new one after, never a mixture. If it fails, the staging
    /// generation is dropped and the live one unsealed, as by `abandon`.
    async fn swap(&self, staging: Self::Staging) -> Result<(), Error>;

    /// Drops `staging` and unseals the live generation, which is left as it was.
    async fn abandon(&self, staging: Self::Staging) -> Result<(), Error>;

    /// Waits until the live generation is no longer sealed — swapped or abandoned, here or
    /// in another tab — and binds to whichever generation is live then.
    async fn settle(&self) -> Result<(), Error>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::Kind;
    use serde_json::json;

    /// `shed` frees the documents' contents and the ops' fields, and keeps their keys and
    /// every row's number, origin and sender.
    #[test]
    fn a_shed_commit_keeps_its_keys_only() {
        let stamp = Stamp { version: 1, wall: 5, counter: 0, node: "n0".into() };
        let fields = json!({"id": "x", "t": "a body"}).as_object().cloned();
        let doc = StoredDoc {
            id: "x".into(),
            doc: fields.clone(),
            stamps: BTreeMap::from([("t".to_string(), stamp.clone())]),
            deleted: false,
            version: 1,
            index_keys: json!({"byT": "a body"}).as_object().cloned().unwrap(),
            layers: BTreeMap::new(),
            conflicts: BTreeMap::new(),
            migrated: None,
        };
        let op = Op { origin: "n0".into(), origin_row: 5, ts: stamp.clone(), schema_version: 1, collection: "a".into(), id: "x".into(), kind: Kind::Put, fields, seen: Some(BTreeMap::from([("t".to_string(), stamp)])), resolution: false };
        let mut c = Commit { head: Some(Head::new("db".into(), 1)), docs: vec![("a".into(), doc)], rows: vec![Row { row: 5, op, from: Some("peer".into()) }], peers: vec![] };
        c.shed();
        let (coll, d) = &c.docs[0];
        assert_eq!((coll.as_str(), d.id.as_str()), ("a", "x"));
        assert_eq!((&d.doc, d.stamps.len(), d.index_keys.len()), (&None, 0, 0), "the document's contents are freed");
        let r = &c.rows[0];
        assert_eq!((r.row, r.op.origin.as_str(), r.from.as_deref(), r.op.id.as_str()), (5, "n0", Some("peer"), "x"));
        assert_eq!((&r.op.fields, &r.op.seen), (&None, &None), "the op's fields are freed");
        assert!(c.head.is_some());
    }
}
