//! The storage contract: what a replica needs from the place its data lives.
//!
//! A store keeps four things for one replica generation: the head (db id, max row, clock),
//! the op log, the documents with their merge state and index keys, and (for sync) the
//! peers' points. Every write goes through `commit`, which reads the touched documents and
//! the head, lets the engine compute the new state, and writes it all in ONE atomic
//! transaction (DESIGN §4): after a crash either all of it is there or none of it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::clock::Stamp;
use crate::error::{Error, StoreError};
use crate::merge::DocState;
use crate::migrate::Layers;
use crate::op::Op;
use crate::query::Plan;
use crate::sync::peer::PeerRecord;

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

/// A document as stored: what apps read (`d`, the view at the replica's schema version
/// `v`), what merging needs (`s`, `t`: the layer of version `v`; `x`: that layer's own
/// fields when the view was migrated from older layers; `l`: the layers of other
/// versions), the last migration op written for it (`m`), and its index keys (`i`,
/// absent when the document does not exist so it drops out of every index).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredDoc {
    pub id: String,
    pub d: Option<Map<String, Value>>,
    pub s: BTreeMap<String, Stamp>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub t: bool,
    pub v: u32,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub i: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub l: BTreeMap<u32, DocState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub m: Option<Stamp>,
}

impl StoredDoc {
    /// The merge state of the layer of version `v`.
    pub fn state(&self) -> DocState {
        DocState { doc: self.x.clone().or_else(|| self.d.clone()).unwrap_or_default(), stamps: self.s.clone(), deleted: self.t }
    }

    /// Every layer, by schema version.
    pub fn layers(&self) -> Layers {
        layers_of(self.v, &self.s, self.t, self.x.as_ref().or(self.d.as_ref()), &self.l)
    }
}

/// A record's layers: those of other versions (`l`) plus the one of version `v`, whose
/// fields are `own` (its own fields, or the view when it was not migrated).
pub fn layers_of(v: u32, s: &BTreeMap<String, Stamp>, t: bool, own: Option<&Map<String, Value>>, l: &BTreeMap<u32, DocState>) -> Layers {
    let mut l = l.clone();
    if !s.is_empty() {
        l.insert(v, DocState { doc: own.cloned().unwrap_or_default(), stamps: s.clone(), deleted: t });
    }
    Layers(l)
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

/// What a sync commit reads before computing its writes.
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

    /// Reads one stored document.
    async fn get(&self, collection: &str, id: &str) -> Result<Option<StoredDoc>, StoreError>;

    /// Reads the head and the documents at `keys`, passes them to `f`, and writes what it
    /// returns, all in one transaction. If `f` fails, nothing is written.
    async fn commit<F>(&self, keys: &[DocKey], f: F) -> Result<Commit, Error>
    where
        F: FnOnce(Option<Head>, Vec<Option<StoredDoc>>) -> Result<Commit, Error>;

    /// Answers a planned query: scans the plan's source, keeps documents that exist and
    /// match, and applies `plan.finish`.
    async fn query(&self, collection: &str, primary_key: &str, plan: &Plan) -> Result<Vec<Self::Doc>, StoreError>;

    /// Log rows with `row > after`, ascending, at most `limit`.
    async fn rows_after(&self, after: u64, limit: usize) -> Result<Vec<Row>, StoreError>;

    /// Like `commit`, but also reads and writes the records of the peers named in `peers`
    /// in the same transaction, so sync points move atomically with the data they cover.
    async fn commit_sync<F>(&self, keys: &[DocKey], peers: &[String], f: F) -> Result<Commit, Error>
    where
        F: FnOnce(Loaded) -> Result<Commit, Error>,
    {
        let n = peers.len();
        self.commit(keys, move |head, docs| f(Loaded { head, docs, peers: vec![None; n] })).await
    }

    /// Every peer record, by peer db id.
    async fn peers(&self) -> Result<BTreeMap<String, PeerRecord>, StoreError> {
        Ok(BTreeMap::new())
    }

    /// The head and every stored document, read in one consistent view (for snapshots).
    async fn all_docs(&self) -> Result<(Head, Vec<(String, StoredDoc)>), StoreError> {
        Err(StoreError::Backend("this store cannot produce snapshots yet".into()))
    }
}
