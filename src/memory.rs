//! An in-memory store: the engine's rules tested natively and fast. It follows the same
//! contract as the IndexedDB store, including IndexedDB's key order for index scans.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Mutex;

use serde_json::{Map, Value};

use crate::error::{Error, StoreError};
use crate::key::cmp_utf16;
use crate::query::{Plan, Source};
use crate::scan::select;
use crate::schema::Schema;
use crate::peer::PeerRecord;
use crate::store::{Commit, DocKey, Head, Loaded, Row, Store, StoredDoc};

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
    /// Writers waiting for the seal to lift (`settle`).
    waiters: Mutex<Vec<futures::channel::oneshot::Sender<()>>>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Every stored document of a collection, for tests that compare replicas.
    pub fn dump(&self, collection: &str) -> Vec<StoredDoc> {
        let inner = self.inner.lock().unwrap();
        let mut docs: Vec<StoredDoc> = inner.docs.get(collection).map(|m| m.values().cloned().collect()).unwrap_or_default();
        crate::sort::sort_by(&mut docs, |a, b| cmp_utf16(&a.id, &b.id));
        docs
    }

    fn wake(&self) {
        for w in self.waiters.lock().unwrap().drain(..) {
            let _ = w.send(());
        }
    }

    pub fn close(&self) {
        self.inner.lock().unwrap().closed = true;
    }

    /// A copy of everything stored, as a backup would hold it (for restore tests).
    pub fn backup(&self) -> MemoryStore {
        MemoryStore { inner: Mutex::new(self.inner.lock().unwrap().clone()), waiters: Mutex::default() }
    }
}

impl Store for MemoryStore {
    type Doc = Map<String, Value>;

    async fn head(&self) -> Result<Option<Head>, StoreError> {
        let inner = self.inner.lock().unwrap();
        if inner.closed {
            return Err(StoreError::Closed);
        }
        Ok(inner.head.clone())
    }

    async fn get(&self, collection: &str, id: &str) -> Result<Option<StoredDoc>, StoreError> {
        let inner = self.inner.lock().unwrap();
        if inner.closed {
            return Err(StoreError::Closed);
        }
        Ok(inner.docs.get(collection).and_then(|c| c.get(id)).cloned())
    }

    async fn commit<F>(&self, keys: &[DocKey], peers: &[String], f: F) -> Result<Commit, Error>
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
        let loaded_head = loaded.head.clone();
        let commit = f(loaded)?;
        commit.check(loaded_head.as_ref())?;
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
        let inner = self.inner.lock().unwrap();
        if inner.closed {
            return Err(StoreError::Closed);
        }
        Ok(inner.peers.clone())
    }

    async fn docs_after(&self, after: Option<&DocKey>, limit: usize) -> Result<Vec<(String, StoredDoc)>, StoreError> {
        let inner = self.inner.lock().unwrap();
        if inner.closed {
            return Err(StoreError::Closed);
        }
        let mut out = Vec::new();
        for (c, docs) in &inner.docs {
            if after.is_some_and(|(ac, _)| c < ac) {
                continue;
            }
            let mut ids: Vec<&StoredDoc> = docs.values().collect();
            crate::sort::sort_by(&mut ids, |a, b| cmp_utf16(&a.id, &b.id));
            for d in ids {
                if after.is_some_and(|(ac, aid)| c == ac && cmp_utf16(&d.id, aid) != Ordering::Greater) {
                    continue;
                }
                if out.len() == limit {
                    return Ok(out);
                }
                out.push((c.clone(), d.clone()));
            }
        }
        Ok(out)
    }

    async fn doc_count(&self) -> Result<u64, StoreError> {
        let inner = self.inner.lock().unwrap();
        if inner.closed {
            return Err(StoreError::Closed);
        }
        Ok(inner.docs.values().map(|m| m.len() as u64).sum())
    }

    async fn query(&self, collection: &str, primary_key: &str, plan: &Plan) -> Result<Vec<Map<String, Value>>, StoreError> {
        let inner = self.inner.lock().unwrap();
        if inner.closed {
            return Err(StoreError::Closed);
        }
        let Some(docs) = inner.docs.get(collection) else { return Ok(Vec::new()) };
        Ok(match &plan.source {
            Source::Get(id) => select(docs.get(id), primary_key, plan),
            _ => select(docs.values(), primary_key, plan),
        })
    }

    async fn resolutions_after(&self, after: u64) -> Result<Vec<Row>, StoreError> {
        let inner = self.inner.lock().expect("memory store lock");
        let start = inner.log.partition_point(|r| r.row <= after);
        Ok(inner.log[start..].iter().filter(|r| r.op.resolution).cloned().collect())
    }

    async fn rows_after(&self, after: u64, limit: usize) -> Result<Vec<Row>, StoreError> {
        let inner = self.inner.lock().unwrap();
        if inner.closed {
            return Err(StoreError::Closed);
        }
        let start = inner.log.partition_point(|r| r.row <= after);
        Ok(inner.log[start..].iter().take(limit).cloned().collect())
    }

    type Staging = MemoryStore;

    async fn stage(&self, _schema: &Schema) -> Result<MemoryStore, Error> {
        let mut inner = self.inner.lock().unwrap();
        if inner.closed {
            return Err(StoreError::Closed.into());
        }
        let head = inner.head.as_mut().ok_or_else(|| StoreError::Corrupt("store has no head".into()))?;
        if head.sealed {
            return Err(StoreError::Sealed.into());
        }
        head.sealed = true;
        Ok(MemoryStore::new())
    }

    async fn swap(&self, staging: MemoryStore) -> Result<(), Error> {
        let fresh = staging.inner.into_inner().unwrap();
        {
            let mut inner = self.inner.lock().unwrap();
            if !inner.head.as_ref().is_some_and(|h| h.sealed) {
                return Err(StoreError::Backend("swap without a staging generation".into()).into());
            }
            if fresh.head.as_ref().is_none_or(|h| h.sealed) {
                if let Some(h) = inner.head.as_mut() {
                    h.sealed = false;
                }
                drop(inner);
                self.wake();
                return Err(StoreError::Backend("the staging generation has no head, or a sealed one".into()).into());
            }
            *inner = Inner { closed: inner.closed, ..fresh };
        }
        self.wake();
        Ok(())
    }

    async fn abandon(&self, _staging: MemoryStore) -> Result<(), Error> {
        if let Some(h) = self.inner.lock().unwrap().head.as_mut() {
            h.sealed = false;
        }
        self.wake();
        Ok(())
    }

    async fn settle(&self) -> Result<(), Error> {
        let wait = {
            let inner = self.inner.lock().unwrap();
            if !inner.head.as_ref().is_some_and(|h| h.sealed) {
                return Ok(());
            }
            let (tx, rx) = futures::channel::oneshot::channel();
            self.waiters.lock().unwrap().push(tx);
            rx
        };
        let _ = wait.await;
        Ok(())
    }
}
