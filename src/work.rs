//! The one write path: what a commit computes between reading the touched documents
//! and writing them back, for local writes (`Replica::write`) and received rows and
//! snapshot documents (`sync::apply`) alike. The store's `commit` hands in the head and
//! the documents; `Work` advances the head and the clock, merges ops into the documents'
//! layers, numbers the log rows, and `finish` rebuilds the changed documents (migrating
//! them forward and logging migration output) into the `Commit` to write.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::clock::{Clock, Stamp};
use crate::error::{Error, StoreError, WriteError};
use crate::layers::{Layers, Output};
use crate::merge::DocState;
use crate::op::{Kind, Op};
use crate::peer::PeerRecord;
use crate::rebuild::{Pending, Rebuild};
use crate::store::{Commit, DocKey, Head, Row, StoredDoc};

/// How a local write to a collection that keeps conflicts is made (`Work::write`).
#[derive(Clone, Copy, Debug)]
pub struct Tracking<'a> {
    /// The collection's primary key: a put's write of it is never a conflict.
    pub primary_key: &'a str,
    /// The write settles conflicts (`db.resolve`): it goes to the resolution log too.
    pub resolution: bool,
}

/// One commit's work in progress. Documents are addressed by their slot: the index of
/// their key in the keys the commit read.
pub struct Work {
    head: Head,
    clock: Clock,
    layers: Vec<Option<Layers>>,
    marks: Vec<Option<Stamp>>,
    exists: Vec<bool>,
    changed: Vec<bool>,
    /// Whether a layer older than `version` changed: the document's view must be
    /// migrated again.
    older: Vec<bool>,
    /// The schema version local writes are stamped with.
    version: u32,
    rows: Vec<Row>,
}

impl Work {
    /// Starts from what the commit read. `version` is the schema version local writes
    /// are stamped with.
    pub fn load(head: Option<Head>, docs: &[Option<StoredDoc>], version: u32) -> Result<Work, Error> {
        let head = head.ok_or_else(|| StoreError::Corrupt("store has no head".into()))?;
        let clock = Clock::new(head.db_id.clone(), version, Some(head.clock.clone()));
        Ok(Work {
            clock,
            head,
            layers: docs.iter().map(|d| d.as_ref().map(StoredDoc::all_layers)).collect(),
            marks: docs.iter().map(|d| d.as_ref().and_then(|d| d.migrated.clone())).collect(),
            exists: docs.iter().map(|d| d.as_ref().is_some_and(|d| d.doc.is_some())).collect(),
            changed: vec![false; docs.len()],
            older: vec![false; docs.len()],
            version,
            rows: Vec::new(),
        })
    }

    /// The head as advanced so far.
    pub fn head(&self) -> &Head {
        &self.head
    }

    /// A local write to the document in `slot`: stamps it, logs it as this replica's
    /// next row and merges it. A patch needs the document to exist (as of the writes
    /// before it in this commit). `tracking` is set for collections that keep conflicts:
    /// the write then says what it saw at each path it writes (`Op::seen`).
    pub fn write(&mut self, slot: usize, kind: Kind, collection: String, id: String, fields: Option<Map<String, Value>>, tracking: Option<Tracking>, now: u64) -> Result<(), Error> {
        match kind {
            Kind::Patch if !self.exists[slot] => return Err(WriteError::NotFound { collection, id }.into()),
            Kind::Put => self.exists[slot] = true,
            Kind::Delete => self.exists[slot] = false,
            Kind::Patch => {}
        }
        let seen = tracking.filter(|_| kind != Kind::Delete).map(|t| self.seen(slot, kind, fields.as_ref(), t.primary_key));
        let ts = self.clock.tick(now).ok_or_else(|| StoreError::Corrupt("the newest stored stamp is at the largest encodable time: no later write can order after it".into()))?;
        let op = Op {
            origin: self.head.db_id.clone(),
            origin_row: self.head.max_row + 1,
            ts,
            schema_version: self.clock.last().version,
            collection,
            id,
            kind,
            fields,
            seen,
            resolution: tracking.is_some_and(|t| t.resolution),
        };
        self.layers[slot].get_or_insert_with(Layers::default).apply(&op);
        self.changed[slot] = true;
        self.log(op, None);
        Ok(())
    }

    /// What a write to `slot` sees at each path it writes, in the layer local writes go to
    /// (deletes write no path: `write` asks only for puts and patches).
    fn seen(&self, slot: usize, kind: Kind, fields: Option<&Map<String, Value>>, primary_key: &str) -> BTreeMap<String, Stamp> {
        let layer = self.layers[slot].as_ref().and_then(|l| l.0.get(&self.version));
        crate::sort::map_from(
            fields
                .into_iter()
                .flat_map(|f| f.keys())
                .filter(|p| kind == Kind::Patch || *p != primary_key)
                .map(|p| (p.clone(), layer.and_then(|l| l.seen_at(p)).unwrap_or_else(Stamp::zero))),
        )
    }

    /// Takes note of a received stamp, so later local stamps order after it.
    pub fn observe(&mut self, ts: &Stamp) {
        self.clock.observe(ts);
    }

    /// Whether received migration output `op` merges into the document in `slot` (`None`:
    /// a collection this replica does not keep), as `output` says.
    pub fn takes(&self, slot: Option<usize>, op: &Op, output: Output) -> bool {
        output.takes(slot.and_then(|i| self.layers[i].as_ref()), op.schema_version, &op.ts)
    }

    /// A received op: merged into the document in `slot` (`None`: a collection this
    /// replica does not keep, logged for forwarding). Logged again, with its sender, only
    /// if it changed something: an op that changes nothing is already reflected by newer
    /// registers in the log, so re-sent and echoed rows are never stored twice.
    pub fn receive(&mut self, slot: Option<usize>, op: Op, from: &str) {
        self.observe(&op.ts);
        let keep = match slot {
            Some(i) => {
                let did = self.layers[i].get_or_insert_with(Layers::default).apply(&op);
                self.changed[i] |= did;
                self.older[i] |= did && op.schema_version < self.version;
                did
            }
            None => true,
        };
        if keep {
            self.log(op, Some(from));
        }
    }

    /// A received document state (a snapshot): its registers merge into the document in
    /// `slot` (never overwriting newer local ones), and the registers that changed it are
    /// logged as ops so they can be forwarded. `output` says which received migration
    /// output is taken in (replicas that can migrate compute their own). Returns the schema
    /// versions of the stored document's layers that changed (none for a collection this
    /// replica does not keep).
    pub fn merge(&mut self, slot: Option<usize>, collection: &str, id: &str, theirs: Layers, output: Output, from: &str) -> Vec<u32> {
        for s in theirs.0.values().flat_map(|l| l.stamps.values()) {
            self.clock.observe(s);
        }
        let (regs, stored) = match slot {
            Some(i) => {
                let regs = self.layers[i].get_or_insert_with(Layers::default).merge_owned(theirs, output);
                self.changed[i] |= !regs.is_empty();
                self.older[i] |= regs.iter().any(|(v, _)| *v < self.version);
                (regs, true)
            }
            None => (theirs.0.iter().map(|(v, l)| (*v, l.everything())).collect(), false),
        };
        let mut changed = Vec::new();
        for (v, regs) in regs {
            if stored && !regs.is_empty() {
                changed.push(v);
            }
            for op in DocState::registers_to_ops(collection, id, v, regs) {
                self.log(op, Some(from));
            }
        }
        changed
    }

    fn log(&mut self, op: Op, from: Option<&str>) {
        let row = self.head.log(op, from.map(str::to_string));
        self.rows.push(row);
    }

    /// Takes out the changed documents whose layers include a version older than the
    /// one written now, except those `alone` keeps in: a reset migrates them at its end,
    /// all together, so migrations read every document as it stood before their step.
    pub fn take_older(&mut self, keys: &[DocKey], mut alone: impl FnMut(&DocKey, &Layers) -> bool) -> Vec<(DocKey, Layers)> {
        let mut out = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let older = self.changed[i] && self.layers[i].as_ref().is_some_and(|l| l.0.keys().any(|v| *v < self.version) && !alone(key, l));
            if older {
                self.changed[i] = false;
                out.push((key.clone(), self.layers[i].take().expect("checked above")));
            }
        }
        out
    }

    /// Rebuilds the changed documents and returns what to commit, with `peers`' records.
    pub fn finish(mut self, rebuild: &Rebuild, keys: &[DocKey], peers: Vec<(String, PeerRecord)>) -> Result<Commit, Error> {
        self.head.clock = self.clock.last().clone();
        let items = keys
            .iter()
            .zip(self.layers)
            .zip(self.marks)
            .zip(self.changed.iter().zip(&self.older))
            .filter(|(_, (changed, _))| **changed)
            .filter_map(|(((k, l), m), (_, older))| l.map(|layers| Pending { key: k.clone(), layers, migrated: m, remigrate: *older }))
            .collect();
        let docs = rebuild.docs(items, &mut self.head, &mut self.rows)?;
        Ok(Commit { head: Some(self.head), docs, rows: self.rows, peers })
    }
}
