//! The store every simulated replica runs on: the engine's `MemoryStore`, with an await
//! point before every storage call. The simulation's executor may run another task, or
//! crash the replica, at each of them; a commit itself stays atomic, as on IndexedDB.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tidemark::error::{Error, StoreError};
use tidemark::memory::MemoryStore;
use tidemark::peer::PeerRecord;
use tidemark::query::Plan;
use tidemark::store::{Commit, DocKey, Head, Loaded, Row, Store, StoredDoc};

/// Returns `Pending` once (waking itself), so every storage call is a scheduling point.
pub struct Yield(bool);

impl Future for Yield {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

pub fn yield_now() -> Yield {
    Yield(false)
}

/// A `MemoryStore` whose every call first yields to the simulation.
pub struct SimStore {
    pub inner: MemoryStore,
}

impl SimStore {
    pub fn new(inner: MemoryStore) -> SimStore {
        SimStore { inner }
    }

    /// What a crash leaves: the committed state only (a copy, as a reopened database).
    pub fn committed(&self) -> MemoryStore {
        self.inner.backup()
    }
}

impl Store for SimStore {
    type Doc = <MemoryStore as Store>::Doc;
    async fn head(&self) -> Result<Option<Head>, StoreError> {
        yield_now().await;
        self.inner.head().await
    }
    async fn get(&self, c: &str, id: &str) -> Result<Option<StoredDoc>, StoreError> {
        yield_now().await;
        self.inner.get(c, id).await
    }
    async fn commit<F>(&self, keys: &[DocKey], peers: &[String], f: F) -> Result<Commit, Error>
    where
        F: FnOnce(Loaded) -> Result<Commit, Error>,
    {
        yield_now().await;
        self.inner.commit(keys, peers, f).await
    }
    async fn query(&self, c: &str, pk: &str, plan: &Plan) -> Result<Vec<Self::Doc>, StoreError> {
        yield_now().await;
        self.inner.query(c, pk, plan).await
    }
    async fn rows_after(&self, after: u64, limit: usize) -> Result<Vec<Row>, StoreError> {
        yield_now().await;
        self.inner.rows_after(after, limit).await
    }
    async fn resolutions_after(&self, after: u64) -> Result<Vec<Row>, StoreError> {
        yield_now().await;
        self.inner.resolutions_after(after).await
    }
    async fn peers(&self) -> Result<BTreeMap<String, PeerRecord>, StoreError> {
        yield_now().await;
        self.inner.peers().await
    }
    async fn docs_after(&self, after: Option<&DocKey>, limit: usize) -> Result<Vec<(String, StoredDoc)>, StoreError> {
        yield_now().await;
        self.inner.docs_after(after, limit).await
    }
    async fn doc_count(&self) -> Result<u64, StoreError> {
        yield_now().await;
        self.inner.doc_count().await
    }
    type Staging = SimStore;
    async fn stage(&self, schema: &tidemark::Schema) -> Result<SimStore, Error> {
        yield_now().await;
        Ok(SimStore::new(self.inner.stage(schema).await?))
    }
    async fn swap(&self, staging: SimStore) -> Result<(), Error> {
        yield_now().await;
        self.inner.swap(staging.inner).await
    }
    async fn abandon(&self, staging: SimStore) -> Result<(), Error> {
        yield_now().await;
        self.inner.abandon(staging.inner).await
    }
    async fn settle(&self) -> Result<(), Error> {
        yield_now().await;
        self.inner.settle().await
    }
}
