//! Stores that fail on purpose, to cut engine work short at every step: a page closed
//! mid-upgrade, a crash between two commits of a reset.

use std::cell::Cell;
use std::collections::BTreeMap;

use tidemark::error::{Error, StoreError};
use tidemark::peer::PeerRecord;
use tidemark::query::Plan;
use tidemark::store::{Commit, DocKey, Head, Loaded, Row, Store, StoredDoc};

/// Wraps a store and fails its `fail_at`-th commit (counting from 1) and every commit
/// after it, as a closed page would; reads keep working.
pub struct Flaky<S> {
    pub inner: S,
    commits: Cell<usize>,
    fail_at: usize,
}

impl<S> Flaky<S> {
    pub fn new(inner: S, fail_at: usize) -> Flaky<S> {
        Flaky { inner, commits: Cell::new(0), fail_at }
    }

    /// How many commits were attempted.
    pub fn commits(&self) -> usize {
        self.commits.get()
    }
}

impl<S: Store> Store for Flaky<S> {
    type Doc = S::Doc;
    async fn head(&self) -> Result<Option<Head>, StoreError> {
        self.inner.head().await
    }
    async fn get(&self, c: &str, id: &str) -> Result<Option<StoredDoc>, StoreError> {
        self.inner.get(c, id).await
    }
    async fn commit<F>(&self, keys: &[DocKey], peers: &[String], f: F) -> Result<Commit, Error>
    where
        F: FnOnce(Loaded) -> Result<Commit, Error>,
    {
        self.commits.set(self.commits.get() + 1);
        if self.commits.get() >= self.fail_at {
            return Err(StoreError::Backend("page closed".into()).into());
        }
        self.inner.commit(keys, peers, f).await
    }
    async fn query(&self, c: &str, pk: &str, plan: &Plan) -> Result<Vec<S::Doc>, StoreError> {
        self.inner.query(c, pk, plan).await
    }
    async fn rows_after(&self, after: u64, limit: usize) -> Result<Vec<Row>, StoreError> {
        self.inner.rows_after(after, limit).await
    }
    async fn resolutions_after(&self, after: u64) -> Result<Vec<Row>, StoreError> {
        self.inner.resolutions_after(after).await
    }
    async fn peers(&self) -> Result<BTreeMap<String, PeerRecord>, StoreError> {
        self.inner.peers().await
    }
    async fn docs_after(&self, after: Option<&DocKey>, limit: usize) -> Result<Vec<(String, StoredDoc)>, StoreError> {
        self.inner.docs_after(after, limit).await
    }
    async fn doc_count(&self) -> Result<u64, StoreError> {
        self.inner.doc_count().await
    }
    type Staging = Flaky<S::Staging>;
    /// Staging counts as a commit (it seals the live generation); the staging
    /// generation fails where the count says, as the live one would.
    async fn stage(&self, schema: &tidemark::Schema) -> Result<Flaky<S::Staging>, Error> {
        self.commits.set(self.commits.get() + 1);
        if self.commits.get() >= self.fail_at {
            return Err(StoreError::Backend("page closed".into()).into());
        }
        let staging = self.inner.stage(schema).await?;
        Ok(Flaky { inner: staging, commits: Cell::new(self.commits.get()), fail_at: self.fail_at })
    }
    async fn swap(&self, staging: Flaky<S::Staging>) -> Result<(), Error> {
        self.commits.set(staging.commits.get() + 1);
        if self.commits.get() >= self.fail_at {
            self.inner.abandon(staging.inner).await?;
            return Err(StoreError::Backend("page closed".into()).into());
        }
        self.inner.swap(staging.inner).await
    }
    async fn abandon(&self, staging: Flaky<S::Staging>) -> Result<(), Error> {
        self.inner.abandon(staging.inner).await
    }
    async fn settle(&self) -> Result<(), Error> {
        self.inner.settle().await
    }
}
