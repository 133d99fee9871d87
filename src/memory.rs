//! An in-memory store: the engine's rules tested natively and fast. It follows the same
//! contract as the IndexedDB store, including IndexedDB's key order for index scans.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Mutex;

use serde_json::{Map, Value};

use crate::error::{Error, StoreError};
use crate::key::{cmp, cmp_utf16};
use crate::query::{Plan, Source};
use crate::store::{Commit, DocKey, Head, Loaded, Row, Store, StoredDoc};
use crate::sync::peer::PeerRecord;

#[derive(Default, Clone)]
struct Inner {
    head: Option<Head>,
    docs: BTreeMap<String, BTreeMap<String, StoredDoc>>,
    log: Vec<Row>,
    peers: BTreeMap<String, PeerRecord>,
    closed: bool,
}

#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Every stored document of a collection, for tests that compare replicas.
    pub fn dump(&self, collection: &str) -> Vec<StoredDoc> {
        let inner = self.inner.lock().unwrap();
        let mut docs: Vec<StoredDoc> = inner.docs.get(collection).map(|m| m.values().cloned().collect()).unwrap_or_default();
        docs.sort_by(|a, b| cmp_utf16(&a.id, &b.id));
        docs
    }

    pub fn close(&self) {
        self.inner.lock().unwrap().closed = true;
    }

    /// A copy of everything stored, as a backup would hold it (for restore tests).
    pub fn backup(&self) -> MemoryStore {
        MemoryStore { inner: Mutex::new(self.inner.lock().unwrap().clone()) }
    }
}

impl Store for MemoryStore {
    type Doc = Map<String, Value>;

    async fn head(&self) -> Result<Option<Head>, StoreError> {
        Ok(self.inner.lock().unwrap().head.clone())
    }

    async fn get(&self, collection: &str, id: &str) -> Result<Option<StoredDoc>, StoreError> {
        let inner = self.inner.lock().unwrap();
        if inner.closed {
            return Err(StoreError::Closed);
        }
        Ok(inner.docs.get(collection).and_then(|c| c.get(id)).cloned())
    }

    async fn commit<F>(&self, keys: &[DocKey], f: F) -> Result<Commit, Error>
    where
        F: FnOnce(Option<Head>, Vec<Option<StoredDoc>>) -> Result<Commit, Error>,
    {
        self.commit_sync(keys, &[], |l| f(l.head, l.docs)).await
    }

    async fn commit_sync<F>(&self, keys: &[DocKey], peers: &[String], f: F) -> Result<Commit, Error>
    where
        F: FnOnce(Loaded) -> Result<Commit, Error>,
    {
        let mut inner = self.inner.lock().unwrap();
        if inner.closed {
            return Err(StoreError::Closed.into());
        }
        let loaded = Loaded {
            head: inner.head.clone(),
            docs: keys.iter().map(|(c, id)| inner.docs.get(c).and_then(|m| m.get(id)).cloned()).collect(),
            peers: peers.iter().map(|p| inner.peers.get(p).cloned()).collect(),
        };
        let commit = f(loaded)?;
        if let Some(h) = &commit.head {
            inner.head = Some(h.clone());
        }
        for (c, d) in &commit.docs {
            inner.docs.entry(c.clone()).or_default().insert(d.id.clone(), d.clone());
        }
        inner.log.extend(commit.rows.iter().cloned());
        for (id, rec) in &commit.peers {
            inner.peers.insert(id.clone(), rec.clone());
        }
        Ok(commit)
    }

    async fn peers(&self) -> Result<BTreeMap<String, PeerRecord>, StoreError> {
        Ok(self.inner.lock().unwrap().peers.clone())
    }

    async fn all_docs(&self) -> Result<(Head, Vec<(String, StoredDoc)>), StoreError> {
        let inner = self.inner.lock().unwrap();
        let head = inner.head.clone().ok_or_else(|| StoreError::Corrupt("store has no head".into()))?;
        let docs = inner.docs.iter().flat_map(|(c, m)| m.values().map(move |d| (c.clone(), d.clone()))).collect();
        Ok((head, docs))
    }

    async fn query(&self, collection: &str, primary_key: &str, plan: &Plan) -> Result<Vec<Map<String, Value>>, StoreError> {
        let inner = self.inner.lock().unwrap();
        if inner.closed {
            return Err(StoreError::Closed);
        }
        let empty = BTreeMap::new();
        let docs = inner.docs.get(collection).unwrap_or(&empty);
        let mut candidates: Vec<&StoredDoc> = match &plan.source {
            Source::Get(id) => docs.get(id).into_iter().collect(),
            Source::Primary => {
                let mut all: Vec<&StoredDoc> = docs.values().collect();
                all.sort_by(|a, b| cmp_utf16(&a.id, &b.id));
                all
            }
            Source::Index { name, lower, upper } => {
                let mut hits: Vec<(&Value, &StoredDoc)> = docs
                    .values()
                    .filter_map(|d| d.i.get(name).map(|k| (k, d)))
                    .filter(|(k, _)| {
                        lower.as_ref().is_none_or(|b| match cmp(k, &b.key) {
                            Ordering::Greater => true,
                            Ordering::Equal => !b.open,
                            Ordering::Less => false,
                        }) && upper.as_ref().is_none_or(|b| match cmp(k, &b.key) {
                            Ordering::Less => true,
                            Ordering::Equal => !b.open,
                            Ordering::Greater => false,
                        })
                    })
                    .collect();
                hits.sort_by(|a, b| cmp(a.0, b.0).then_with(|| cmp_utf16(&a.1.id, &b.1.id)));
                hits.into_iter().map(|(_, d)| d).collect()
            }
        };
        if plan.reverse {
            candidates.reverse();
        }
        let mut out = Vec::new();
        for d in candidates {
            let Some(doc) = &d.d else { continue };
            if plan.matches(doc) {
                out.push(doc.clone());
                if plan.sort.is_none() && plan.limit.is_some_and(|n| out.len() >= n) {
                    break;
                }
            }
        }
        plan.finish(&mut out, primary_key);
        Ok(out)
    }

    async fn rows_after(&self, after: u64, limit: usize) -> Result<Vec<Row>, StoreError> {
        let inner = self.inner.lock().unwrap();
        let start = inner.log.partition_point(|r| r.row <= after);
        Ok(inner.log[start..].iter().take(limit).cloned().collect())
    }
}
