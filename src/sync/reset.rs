//! A reset (DESIGN §6, seed 004): a snapshot received by a replica that has a schema is
//! materialized in a **staging generation** beside the live one, migrated forward there,
//! merged with what the replica already holds (its unsynced writes survive), and swapped
//! in at once. Until the swap every reader sees the old state; after it, the new one.
//!
//! 1. `begin`: mark the reset pending in the live head, seal the live generation (no
//!    commit may land there any more, so no row is written into a dead generation) and
//!    create the staging one: the live op log copied row for row (same db id, same row
//!    space, so every sync point stays valid), the live head.
//! 2. `chunk`: each snapshot chunk lands in the staging generation, its registers logged
//!    as rows from the sender (computed from the staging head kept in memory, and handed
//!    to the store without waiting for it to be stored, when no earlier chunk carried its
//!    documents). Documents at the app's version are stored final at once;
//!    so are those with older-version layers whose migrations read no other document
//!    (`Migrator::reads_others`; in JS, a function declared without `ctx`), migrated in
//!    the chunk's commit unless the live generation holds them too. The others wait, in
//!    memory, to be migrated together.
//! 3. `finish`: the live documents merge in (unsynced writes included), every document
//!    with older-version data is migrated forward step by step in ONE batch (a migration
//!    reads, through its context, every document as it stood before its step; the last
//!    step is computed and written slice by slice, each slice stored while the next is
//!    computed), the peer records are closed for the pass, and the pointer flips
//!    (`Store::swap`).
//!
//! Any failure — a missing schema or migration, a migration that throws, a storage error,
//! a lost connection (`abandon`) — drops the staging generation and unseals the live one,
//! which is left exactly as it was; its head still says a reset is pending, and the next
//! sync builds the staging generation again.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use super::apply::{check_snapshot, close_pass, Applied};
use super::message::{SnapshotDoc, TableEntry};
use crate::clock::Stamp;
use crate::error::{Error, StoreError};
use crate::layers::{Layers, Output};
use crate::peer::Point;
use crate::progress::{Phase, Progress};
use crate::rebuild::Pending;
use crate::replica::Replica;
use crate::store::{Commit, DocKey, Head, Loaded, Row, Store, StoredDoc};
use crate::work::Work;

/// Rows or documents per staging transaction.
const CHUNK: usize = 1000;

/// What a completed reset did (the `reset` event's payload).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(all(test, not(target_arch = "wasm32")), derive(ts_rs::TS))]
pub struct ResetReport {
    /// Documents the snapshot carried.
    pub documents: u64,
    /// Documents migrated forward from an older schema version.
    pub migrated: u64,
    /// Documents this replica held before the reset, merged in (its unsynced writes
    /// among them).
    pub kept: u64,
    /// The oldest schema version among the data received (absent: all current).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(all(test, not(target_arch = "wasm32")), ts(optional))]
    pub from_version: Option<u32>,
}

/// A reset under way: the staging generation and what it holds so far.
pub struct Reset<T> {
    staging: T,
    peer: String,
    /// Keys of every snapshot document staged.
    staged: HashSet<DocKey>,
    /// Staged documents with older-version layers, waiting to be migrated together.
    older: BTreeMap<DocKey, Layers>,
    /// The newest schema version of ops stored but not applied.
    future_version: u32,
    /// Keys of the live generation's documents, read when the first chunk has documents
    /// that migrate on their own (`Rebuild::migrates_alone`): those are migrated as they
    /// arrive unless the live generation also holds them (they merge with it at the end).
    live: Option<HashSet<DocKey>>,
    /// The staging generation's head as this reset last wrote it: a chunk of documents
    /// no earlier chunk carried needs nothing read from the staging generation, so its
    /// write is handed over (`Store::write_staged`) and the next chunk is computed while
    /// IndexedDB stores it.
    head: Option<Head>,
    /// The live generation's clock, final since the seal: the swapped-in head's is never
    /// behind it.
    live_clock: Stamp,
    /// Documents migrated as they arrived, and the oldest version among them.
    migrated_early: u64,
    early_from: Option<u32>,
    report: ResetReport,
}

impl<T: Store> Reset<T> {
    /// Seals the live generation and builds the staging one up to the live state's log.
    pub async fn begin<S: Store<Staging = T>>(replica: &Replica<S>, peer: &str, progress: &mut impl FnMut(Progress)) -> Result<Reset<T>, Error> {
        let schema = replica.schema().ok_or_else(|| StoreError::Unsupported("a relay merges snapshots".into()))?.clone();
        // Marked first: a crash anywhere below leaves `resetPending` for status().
        let commit = replica
            .store()
            .commit(&[], &[], |loaded| {
                let mut head = loaded.head.ok_or_else(|| StoreError::Corrupt("store has no head".into()))?;
                head.reset_pending = true;
                Ok(Commit { head: Some(head), ..Commit::default() })
            })
            .await?;
        replica.committed(&commit);
        let staging = replica.store().stage(&schema).await?;
        let reset = Reset {
            staging,
            peer: peer.to_string(),
            staged: HashSet::new(),
            older: BTreeMap::new(),
            future_version: 0,
            live: None,
            head: None,
            live_clock: Stamp::zero(),
            migrated_early: 0,
            early_from: None,
            report: ResetReport::default(),
        };
        match reset.copy_log(replica, progress).await {
            Ok(head) => Ok(Reset { live_clock: head.clock.clone(), head: Some(head), ..reset }),
            Err(e) => Err(reset.abandon(replica, e).await),
        }
    }

    /// The live generation's log and head, into the staging one (the live one is sealed,
    /// so both are final).
    async fn copy_log<S: Store<Staging = T>>(&self, replica: &Replica<S>, progress: &mut impl FnMut(Progress)) -> Result<Head, Error> {
        let mut head = replica.store().head().await?.ok_or_else(|| StoreError::Corrupt("store has no head".into()))?;
        head.sealed = false;
        let total = head.max_row;
        if total == 0 {
            // No rows (a replica's first sync): nothing to copy, and the head is written
            // with the first chunk (`chunk` computes from it, kept in memory) or at the end.
            progress(Progress { phase: Phase::Copy, done: 0, total });
            return Ok(head);
        }
        let mut after = 0;
        loop {
            let rows = replica.store().rows_after(after, CHUNK).await?;
            // The head goes with the last rows (a short page, or none): one transaction
            // fewer before the first snapshot chunk can be staged.
            let last_page = rows.len() < CHUNK;
            after = rows.last().map_or(after, |r| r.row);
            let with_head = last_page.then(|| head.clone());
            self.staging.commit(&[], &[], |_| Ok(Commit { rows, head: with_head, ..Commit::default() })).await?;
            progress(Progress { phase: Phase::Copy, done: after.min(total), total });
            if last_page {
                return Ok(head);
            }
        }
    }

    /// Stages one snapshot chunk.
    pub async fn chunk<S: Store<Staging = T>>(&mut self, replica: &Replica<S>, docs: Vec<SnapshotDoc>) -> Result<Applied, Error> {
        check_snapshot(replica, &docs)?;
        let n = docs.len() as u64;
        let current = replica.version();
        let keeps = |c: &str| replica.schema().is_some_and(|s| s.collection(c).is_some());
        let mut keys: Vec<DocKey> = Vec::new();
        let mut index: HashMap<DocKey, usize> = HashMap::new();
        for d in docs.iter().filter(|d| keeps(&d.collection)) {
            let k = (d.collection.clone(), d.id.clone());
            if !index.contains_key(&k) {
                index.insert(k.clone(), keys.len());
                keys.push(k);
            }
        }
        let rebuild = replica.rebuild();
        let mut applied = Applied::default();
        let mut older = Vec::new();
        let peer = self.peer.clone();
        // Documents of collections the app's schema dropped are not stored, but older
        // ones join the migration batch: a migration may read them (`ctx.get`).
        for d in docs.iter().filter(|d| !keeps(&d.collection)) {
            let theirs = d.layers();
            if theirs.0.keys().any(|v| *v < current) {
                let entry = self.older.entry((d.collection.clone(), d.id.clone())).or_default();
                entry.merge_owned(theirs, Output::Computed { version: current, held: false });
            }
        }
        // A document whose migration reads nothing but itself is migrated in this chunk's
        // commit, so IndexedDB stores it while later chunks download, rather than all of
        // them after the last chunk. Its result is the same either way (a migration that
        // reads no other document depends on nothing else), and it is migrated once: the
        // live generation does not hold it (or it would merge with that at the end) and no
        // earlier chunk carried it.
        let migrates_alone = rebuild.alone_by_version();
        let alone_from = |l: &Layers| l.0.keys().next().copied().filter(|v| migrates_alone(*v));
        if self.live.is_none() && (0..current).any(&migrates_alone) {
            self.live = Some(replica.store().doc_keys().await?.into_iter().collect());
        }
        let (mut early, mut early_from) = (0u64, None::<u32>);
        let (live, staged) = (&self.live, &self.staged);
        let alone = |key: &DocKey, l: &Layers| {
            let Some(v) = alone_from(l) else { return false };
            if live.as_ref().is_none_or(|live| live.contains(key)) || staged.contains(key) {
                return false;
            }
            early += 1;
            early_from = Some(early_from.map_or(v, |f: u32| f.min(v)));
            true
        };
        let compute = |loaded: Loaded| {
            let mut w = Work::load(loaded.head, &loaded.docs, current)?;
            for mut d in docs {
                let theirs = d.take_layers();
                if theirs.0.keys().next().is_some_and(|v| *v < current) {
                    applied.older_version = true;
                }
                if let Some(v) = theirs.0.keys().next_back().filter(|v| **v > current) {
                    applied.future_version = applied.future_version.max(*v);
                }
                let slot = index.get(&(d.collection.clone(), d.id.clone())).copied();
                w.merge(slot, &d.collection, &d.id, theirs, Output::Computed { version: current, held: true }, &peer);
            }
            older = w.take_older(&keys, alone);
            w.finish(&rebuild, &keys, vec![])
        };
        let fresh = keys.iter().all(|k| !self.staged.contains(k));
        self.head = match self.head.clone().filter(|_| fresh) {
            Some(head) => {
                let commit = compute(Loaded { head: Some(head), docs: vec![None; keys.len()], peers: vec![] })?;
                let head = commit.head.clone();
                self.staging.write_staged(commit).await?;
                head
            }
            None => self.staging.commit(&keys, &[], compute).await?.head,
        };
        self.migrated_early += early;
        self.early_from = self.early_from.into_iter().chain(early_from).min();
        self.report.documents += n;
        self.staged.extend(keys);
        self.older.extend(older);
        self.future_version = self.future_version.max(applied.future_version);
        // The staging generation is not the replica's: its head stays out of `replica`.
        Ok(applied)
    }

    /// Merges the live documents in, migrates, closes the pass's peer records (`session`
    /// reached `end`; `table` is the sender's forwarded one) and swaps the staging
    /// generation in. On failure the staging generation is dropped and the live one is
    /// left as it was.
    pub async fn finish<S: Store<Staging = T>>(
        mut self,
        replica: &Replica<S>,
        session: &str,
        end: Point,
        table: Vec<TableEntry>,
        newest: BTreeMap<String, Stamp>,
        progress: &mut impl FnMut(Progress),
    ) -> Result<ResetReport, Error> {
        if let Err(e) = self.build(replica, session, end, table, &newest, progress).await {
            return Err(self.abandon(replica, e).await);
        }
        let report = std::mem::take(&mut self.report);
        progress(Progress { phase: Phase::Swap, done: 0, total: 1 });
        replica.store().swap(self.staging).await?;
        replica.reload_head().await?;
        progress(Progress { phase: Phase::Swap, done: 1, total: 1 });
        Ok(report)
    }

    async fn build<S: Store<Staging = T>>(
        &mut self,
        replica: &Replica<S>,
        session: &str,
        end: Point,
        table: Vec<TableEntry>,
        newest: &BTreeMap<String, Stamp>,
        progress: &mut impl FnMut(Progress),
    ) -> Result<(), Error> {
        let current = replica.version();
        let rebuild = replica.rebuild();
        // The live generation is sealed, so its documents and peer records are final: both
        // are asked for at once. (A store answers them after the staging writes still in
        // flight; asked one after the other, each waited its own turn after those.)
        let (total, live_peers) = futures::future::join(replica.store().doc_count(), replica.store().peers()).await;
        let (total, mut peers) = (total?, live_peers?);
        // The live documents: those the snapshot did not carry are copied as they are
        // (or join the migration when they hold older-version data); the others merge
        // into their staged state. Their registers are already in the copied log.
        let mut after: Option<DocKey> = None;
        let mut merge: Vec<(DocKey, Layers, Option<Stamp>)> = Vec::new();
        while total > 0 {
            let page = replica.store().docs_after(after.as_ref(), CHUNK).await?;
            let Some((c, last)) = page.last() else { break };
            after = Some((c.clone(), last.id.clone()));
            let mut copy: Vec<(String, StoredDoc)> = Vec::new();
            for (c, d) in page {
                self.report.kept += 1;
                let key = (c.clone(), d.id.clone());
                let layers = d.all_layers();
                if self.staged.contains(&key) {
                    merge.push((key, layers, d.migrated.clone()));
                } else if layers.0.keys().any(|v| *v < current) && !layers.migrated_into(current) {
                    self.older.insert(key, layers);
                } else {
                    copy.push((c, d));
                }
            }
            if !copy.is_empty() {
                let keys: Vec<DocKey> = copy.iter().map(|(c, d)| (c.clone(), d.id.clone())).collect();
                self.staging.commit(&keys, &[], |_| Ok(Commit { docs: copy, ..Commit::default() })).await?;
            }
            progress(Progress { phase: Phase::Merge, done: self.report.kept.min(total), total });
        }
        // Live documents the snapshot also carried: each chunk's staged states are read in
        // the transaction that writes the merged ones (a get per document, awaited one by
        // one, made a reset cost a round trip per unsynced write it kept).
        let migrates_alone = rebuild.alone_by_version();
        for chunk in merge.chunks(CHUNK) {
            let mut ready: Vec<Pending> = Vec::new();
            let mut reads: Vec<(&DocKey, &Layers, &Option<Stamp>)> = Vec::new();
            for (key, live, migrated) in chunk {
                let Some(staged) = self.older.get(key) else {
                    reads.push((key, live, migrated));
                    continue;
                };
                // Older-version data the live document already holds (and was migrated
                // from) changes nothing — the document keeps its migration — unless its
                // migration reads other documents, whose older-version data this snapshot
                // may have changed (a v1 app relabelling the tag a task copies): it is
                // migrated again with the rest, as a replica joining now would migrate it.
                let mut both = live.clone();
                let changed = both.merge(staged, Output::Computed { version: current, held: false });
                let alone = both.0.keys().next().is_none_or(|&v| v >= current || migrates_alone(v));
                if alone && live.migrated_into(current) && !changed.iter().any(|(v, _)| *v < current) {
                    self.older.remove(key);
                    ready.push(Pending { key: key.clone(), layers: both, migrated: migrated.clone(), remigrate: false });
                } else if let Some(staged) = self.older.get_mut(key) {
                    staged.merge(live, Output::Computed { version: current, held: true });
                }
            }
            if ready.is_empty() && reads.is_empty() {
                continue;
            }
            // The ready ones' staged states are not needed: their keys come after the others'.
            let keys: Vec<DocKey> = reads.iter().map(|(k, _, _)| (*k).clone()).chain(ready.iter().map(|p| p.key.clone())).collect();
            let mut to_migrate: Vec<(DocKey, Layers)> = Vec::new();
            let merged = self
                .staging
                .commit(&keys, &[], |loaded| {
                    let mut head = loaded.head.ok_or_else(|| StoreError::Corrupt("the staging generation has no head".into()))?;
                    let mut items: Vec<Pending> = ready;
                    for ((key, live, migrated), staged) in reads.into_iter().zip(loaded.docs) {
                        let mut layers = staged.as_ref().map(StoredDoc::all_layers).unwrap_or_default();
                        let changed = layers.merge(live, Output::Computed { version: current, held: true });
                        if layers.0.keys().any(|v| *v < current) {
                            to_migrate.push((key.clone(), layers));
                        } else if staged.as_ref().is_some_and(|d| d.migrated.is_some() || migrated.is_none()) && changed.iter().all(|(_, m)| m.is_empty()) {
                            // Staged as it would be written (the replica's own writes of
                            // this round come back in the snapshot): nothing to write.
                        } else {
                            items.push(Pending { key: key.clone(), layers, migrated: staged.and_then(|d| d.migrated).or_else(|| migrated.clone()), remigrate: false });
                        }
                    }
                    let mut rows: Vec<Row> = Vec::new();
                    let docs = rebuild.docs(items, &mut head, &mut rows)?;
                    Ok(Commit { head: Some(head), docs, rows, peers: vec![] })
                })
                .await?;
            self.head = merged.head;
            self.older.extend(to_migrate);
        }
        // Every document with older-version data, migrated together.
        if let Some(v) = self.older.values().filter_map(|l| l.0.keys().next().copied()).min() {
            rebuild.check_version(v)?;
        }
        let keeps = |c: &str| replica.schema().is_some_and(|s| s.collection(c).is_some());
        self.report.from_version = self.older.iter().filter(|(k, _)| keeps(&k.0)).filter_map(|(_, l)| l.0.keys().next().copied()).chain(self.early_from).min();
        let older = std::mem::take(&mut self.older);
        // The staging head as this reset last wrote it (`self.head` follows every write).
        let mut head = match self.head.clone() {
            Some(h) => h,
            None => self.staging.head().await?.ok_or_else(|| StoreError::Corrupt("the staging generation has no head".into()))?,
        };
        let items: Vec<Pending> = older.into_iter().map(|(key, layers)| Pending { key, layers, migrated: None, remigrate: true }).collect();
        let early = self.migrated_early;
        let n = items.iter().filter(|p| keeps(&p.key.0)).count() as u64 + early;
        progress(Progress { phase: Phase::Migrate, done: early, total: n });
        // Every step but the last runs over the whole batch here; the last one runs per
        // slice, and each slice is handed to IndexedDB (the first poll of its write issues
        // the puts) before the next is computed, so storing one slice and computing the
        // next overlap, where one batch made the store wait for all the computing and
        // then the swap for all the storing. A reset cut off midway leaves slices in the
        // staging generation only, which is dropped.
        let mut migrating = rebuild.migrating(items)?;
        let staging = &self.staging;
        let mut in_flight = None;
        let (mut built, mut written) = (early, early);
        loop {
            let mut rows = Vec::new();
            let Some(mut docs) = rebuild.next_slice(&mut migrating, CHUNK, &mut head, &mut rows)? else { break };
            // Documents of dropped collections were only there to be read.
            docs.retain(|(c, _)| keeps(c));
            let count = docs.len() as u64;
            built += count;
            let mut write = Box::pin(staging.write_staged(Commit { docs, rows, ..Commit::default() }));
            let started = futures::poll!(write.as_mut());
            if let Some((count, previous)) = in_flight.take() {
                previous.await?;
                written += count;
                progress(Progress { phase: Phase::Migrate, done: written, total: n });
            }
            match started {
                std::task::Poll::Ready(r) => {
                    r?;
                    written += count;
                }
                std::task::Poll::Pending => in_flight = Some((count, write)),
            }
        }
        if let Some((_, previous)) = in_flight.take() {
            previous.await?;
        }
        self.report.migrated = built;
        // The peer records closed for this pass and the head, in one transaction after
        // every slice: until it lands, the staging generation's head says nothing of it.
        // Nothing is read for it (the swap waits for it to be stored).
        for (id, rec) in close_pass(&peers, &head.db_id, &self.peer, Some((session, end)), &table, newest) {
            peers.insert(id, rec);
        }
        head.clock = head.clock.max(self.live_clock.clone());
        head.sealed = false;
        head.reset_pending = false;
        self.staging.write_staged(Commit { head: Some(head), docs: vec![], rows: vec![], peers: peers.into_iter().collect() }).await?;
        progress(Progress { phase: Phase::Migrate, done: n, total: n });
        Ok(())
    }

    /// The newest schema version of ops stored but not applied.
    pub fn future_version(&self) -> u32 {
        self.future_version
    }

    /// Drops the staging generation, unseals the live one, and returns `cause`. (If even
    /// that fails, the live generation stays sealed until `Store::settle` recovers it.)
    pub async fn abandon<S: Store<Staging = T>>(self, replica: &Replica<S>, cause: Error) -> Error {
        let _ = replica.store().abandon(self.staging).await;
        cause
    }
}
