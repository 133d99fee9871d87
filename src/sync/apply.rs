//! Applying what a pass delivers, each step in ONE store transaction together with the
//! sync points it justifies: a batch of rows with `incoming[S]`, a snapshot chunk with its
//! log rows, the end of a pass with its session and the forwarded table.
//!
//! Only ops that change a document are logged again (with the sender as `from`): an op
//! that changes nothing is already reflected by newer registers that are in the log, so
//! re-sent and echoed rows are never stored twice.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use super::message::{SnapshotDoc, TableEntry};
use crate::clock::Stamp;
use crate::error::{Error, SyncError};
use crate::layers::{is_migration, Output};
use crate::limits;
use crate::op::Op;
use crate::peer::{PeerRecord, Point};
use crate::replica::{Quarantined, Replica};
use crate::store::{Commit, DocKey, Row, Store};
use crate::work::Work;

/// Whether this replica keeps documents of `collection` (a relay keeps them all).
fn keeps<S: Store>(replica: &Replica<S>, collection: &str) -> bool {
    replica.schema().is_none_or(|s| s.collection(collection).is_some())
}

/// Checks a remote op before anything is stored: names and sizes within `limits`, a
/// stamp not too far ahead of this replica's clock (`maxClockSkew`), and the shape rules.
fn check_remote<S: Store>(replica: &Replica<S>, op: &Op) -> Result<(), SyncError> {
    let bad = |m: String| SyncError::Protocol(format!("bad op {}/{}: {m}", limits_cut(&op.collection), limits_cut(&op.id)));
    limits::check_collection(&op.collection).map_err(bad)?;
    limits::check_id(&op.id).map_err(bad)?;
    limits::check_name("an origin", &op.origin).map_err(bad)?;
    if op.ts.version != op.schema_version {
        return Err(bad("its stamp's version differs from its schemaVersion".into()));
    }
    check_stamp(replica, &op.ts).map_err(bad)?;
    check_tracking(op).map_err(bad)?;
    // Without a schema, check the shape only: the primary key is unknown here. With one,
    // the primary-key rules are checked by `quarantined` (an op breaking them is set
    // aside, not refused: one bad op must not stop a library).
    match (op.kind, &op.fields) {
        (crate::op::Kind::Delete, None) => Ok(()),
        (crate::op::Kind::Put, Some(f)) => crate::op::check_doc(f),
        (crate::op::Kind::Patch, Some(f)) => crate::op::check_patch(f, "\u{0}"),
        _ => Err(crate::error::WriteError::InvalidDocument("op has the wrong payload".into())),
    }
    .map_err(|e| bad(e.to_string()))
}

/// Conflict tracking's fields of an op (DESIGN §11): `seen` names only paths the op
/// writes, each with a stamp older than the op's own (a writer sees only what came
/// before it); a resolution is a patch that says what it saw.
fn check_tracking(op: &Op) -> Result<(), String> {
    if op.resolution && (op.kind != crate::op::Kind::Patch || op.seen.is_none()) {
        return Err("a resolution must be a patch that says what it saw".into());
    }
    let Some(seen) = &op.seen else { return Ok(()) };
    let writes = |p: &String| op.kind != crate::op::Kind::Delete && op.fields.as_ref().is_some_and(|f| f.contains_key(p));
    if seen.iter().any(|(p, s)| !writes(p) || *s >= op.ts || s.node.len() > limits::MAX_NAME_BYTES) {
        return Err("its `seen` names a path it does not write, or a stamp not older than its own".into());
    }
    Ok(())
}

/// Whether a received op (which passed `check_remote`) breaks a rule of this replica's
/// schema — a put whose primary key contradicts its id, a patch of the primary key — and
/// must be set aside: what it would be recorded as.
fn quarantined<S: Store>(replica: &Replica<S>, op: &Op) -> Option<Quarantined> {
    let pk = replica.schema()?.collection(&op.collection)?.primary_key.as_str();
    let e = op.check(pk).err()?;
    Some(Quarantined {
        collection: op.collection.clone(),
        id: op.id.clone(),
        origin: op.origin.clone(),
        origin_row: op.origin_row,
        code: Error::from(e.clone()).code().to_string(),
        reason: e.to_string(),
    })
}

/// A received stamp: its node a plausible db id, its wall time within `maxClockSkew` of
/// this replica's clock (migration output, stamped at wall 0, always is).
pub(crate) fn check_stamp<S: Store>(replica: &Replica<S>, ts: &Stamp) -> Result<(), String> {
    if ts.node.len() > limits::MAX_NAME_BYTES {
        return Err(format!("a stamp's node is over {} bytes", limits::MAX_NAME_BYTES));
    }
    limits::check_skew(ts.wall, replica.now(), replica.max_clock_skew())
}

/// The start of a name that may be huge, for error messages.
fn limits_cut(s: &str) -> &str {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn unique_keys<'a>(items: impl Iterator<Item = (&'a str, &'a str)>) -> (Vec<DocKey>, HashMap<DocKey, usize>) {
    let mut keys = Vec::new();
    let mut index = HashMap::new();
    for (c, id) in items {
        let k = (c.to_string(), id.to_string());
        if !index.contains_key(&k) {
            index.insert(k.clone(), keys.len());
            keys.push(k);
        }
    }
    (keys, index)
}

/// Merges a batch of rows from `peer` and sets `incoming[peer] = covers` in the same
/// transaction — also when every row was stale or an echo. Resolutions, sent ahead of
/// the rows (DESIGN §11), cover nothing (`covers` is `None`): the point moves only when
/// the batch that holds them in order arrives.
pub async fn apply_rows<S: Store>(replica: &Replica<S>, peer: &str, session: &str, rows: Vec<Row>, covers: Option<Point>) -> Result<Applied, Error> {
    for r in &rows {
        check_remote(replica, &r.op)?;
    }
    // Ops this replica cannot apply are set aside; the batch still covers them.
    let mut set_aside = Vec::new();
    let rows: Vec<Row> = rows
        .into_iter()
        .filter(|r| match quarantined(replica, &r.op) {
            Some(q) => {
                set_aside.push(q);
                false
            }
            None => true,
        })
        .collect();
    if let Some(v) = rows.iter().map(|r| r.op.schema_version).filter(|v| replica.schema().is_some_and(|s| *v < s.version)).min() {
        replica.rebuild().check_version(v)?;
    }
    let current = replica.schema().map(|s| s.version);
    let output = current.map_or(Output::All, |version| Output::Computed { version, held: false });
    let version = replica.version();
    let (keys, index) = unique_keys(rows.iter().filter(|r| keeps(replica, &r.op.collection)).map(|r| (r.op.collection.as_str(), r.op.id.as_str())));
    // The records of the batch's origins carry the stamp half of their marks, raised in
    // this same commit (see `peer`).
    let newest = newest_by_origin(&replica.head().db_id, rows.iter().map(|r| &r.op));
    let mut ids = vec![peer.to_string()];
    ids.extend(newest.keys().filter(|o| o.as_str() != peer).cloned());
    // Owned by the closure, which a store may run on its writer thread (`commit_owned`).
    let rebuild = replica.rebuilder();
    let (from, session) = (peer.to_string(), session.to_string());
    let (read_keys, read_ids) = (keys.clone(), ids.clone());
    let future_version = Arc::new(AtomicU32::new(0));
    let newer = future_version.clone();
    let commit = replica
        .store()
        .commit_owned(&read_keys, &read_ids, move |loaded| {
            let mut recs: Vec<PeerRecord> = loaded.peers.iter().map(|p| p.clone().unwrap_or_else(PeerRecord::new)).collect();
            if let Some(covers) = covers {
                recs[0].note_incoming(&session, covers, false);
            }
            for (id, rec) in ids.iter().zip(recs.iter_mut()) {
                if let Some(stamp) = newest.get(id) {
                    rec.note_newest(stamp);
                }
            }
            let changed: Vec<(String, PeerRecord)> = ids.iter().cloned().zip(recs).zip(&loaded.peers).filter(|((_, r), b)| b.as_ref() != Some(r)).map(|(p, _)| p).collect();
            let mut w = Work::load(loaded.head, &loaded.docs, version)?;
            for r in rows {
                let slot = index.get(&(r.op.collection.clone(), r.op.id.clone())).copied();
                // Replicas that can migrate compute migration output themselves
                // (`layers::Output` says which they take in all the same).
                if is_migration(&r.op.ts) && !w.takes(slot, &r.op, output) {
                    w.observe(&r.op.ts);
                    continue;
                }
                if current.is_some_and(|c| r.op.schema_version > c) {
                    newer.fetch_max(r.op.schema_version, Ordering::Relaxed);
                }
                w.receive(slot, r.op, &from);
            }
            w.finish(&rebuild.get(), &keys, changed)
        })
        .await?;
    let applied = Applied { future_version: future_version.load(Ordering::Relaxed), ..Applied::default() };
    replica.committed(&commit);
    replica.quarantine(set_aside);
    Ok(applied)
}

/// The newest stamp each origin wrote among `ops`: ops an origin wrote itself (their
/// stamp's node is the origin), not migration output, and none of this replica's own.
pub fn newest_by_origin<'a>(me: &str, ops: impl Iterator<Item = &'a Op>) -> BTreeMap<String, Stamp> {
    let mut out: BTreeMap<String, Stamp> = BTreeMap::new();
    for op in ops.filter(|op| op.origin != me && op.ts.node == op.origin) {
        match out.get_mut(&op.origin) {
            Some(s) if *s >= op.ts => {}
            Some(s) => *s = op.ts.clone(),
            None => {
                out.insert(op.origin.clone(), op.ts.clone());
            }
        }
    }
    out
}

/// What applying a batch or snapshot chunk noticed.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Applied {
    /// The newest schema version of ops stored but not applied (0: none).
    pub future_version: u32,
    /// Data written under an older schema version changed a stored document (it was
    /// migrated forward on arrival).
    pub older_version: bool,
}

/// Checks received snapshot documents before anything is stored: names and sizes within
/// `limits`, stamps at valid paths of bounded length and within `maxClockSkew`, and
/// documents that nest no deeper than a stored document may.
pub(crate) fn check_snapshot<S: Store>(replica: &Replica<S>, docs: &[SnapshotDoc]) -> Result<(), SyncError> {
    // Stamp keys become register paths, which merging assumes are valid.
    let bad_path = |p: &String| p != crate::merge::ROOT && (p.split('.').count() > limits::MAX_PATH_SEGMENTS || crate::path::Path::parse(p).is_none());
    let bad = |m: String| SyncError::Protocol(format!("bad snapshot document: {m}"));
    for d in docs {
        limits::check_collection(&d.collection).map_err(bad)?;
        limits::check_id(&d.id).map_err(bad)?;
        if d.stamps.is_empty() && d.layers.is_empty() {
            return Err(bad("it has no stamps".into()));
        }
        let tracked = std::iter::once(&d.conflicts).chain(d.layers.values().map(|l| &l.conflicts));
        for conflicts in tracked {
            for (path, set) in conflicts {
                if bad_path(path) || path.is_empty() || set.is_empty() || set.len() > limits::MAX_CONTENDERS {
                    return Err(bad(format!("conflict tracking at an invalid path, or with none or more than {} writes", limits::MAX_CONTENDERS)));
                }
                for c in set {
                    check_stamp(replica, &c.ts).map_err(bad)?;
                    if c.seen.as_ref().is_some_and(|s| *s >= c.ts || s.node.len() > limits::MAX_NAME_BYTES) {
                        return Err(bad("a tracked write saw a stamp not older than its own".into()));
                    }
                    if let Some(v) = &c.value {
                        limits::check_doc(&crate::sort::object_from([(path.clone(), v.clone())])).map_err(bad)?;
                    }
                }
            }
        }
        let states = std::iter::once((&d.stamps, d.doc.as_ref())).chain(d.layers.values().map(|l| (&l.stamps, Some(&l.doc))));
        for (stamps, doc) in states {
            if stamps.keys().any(bad_path) {
                return Err(bad("a stamp is at an invalid path (or one of too many segments)".into()));
            }
            for ts in stamps.values() {
                check_stamp(replica, ts).map_err(bad)?;
            }
            if let Some(doc) = doc {
                limits::check_doc(doc).map_err(bad)?;
            }
        }
    }
    Ok(())
}

/// Merges one chunk of a snapshot from `peer`: each document's registers merge into the
/// local state (never overwriting newer local writes), and the registers that changed it
/// are logged as ops so they can be forwarded.
pub async fn apply_snapshot<S: Store>(replica: &Replica<S>, peer: &str, docs: Vec<SnapshotDoc>) -> Result<Applied, Error> {
    check_snapshot(replica, &docs)?;
    let current = replica.schema().map(|s| s.version);
    let output = current.map_or(Output::All, |version| Output::Computed { version, held: false });
    let version = replica.version();
    let (keys, index) = unique_keys(docs.iter().filter(|d| keeps(replica, &d.collection)).map(|d| (d.collection.as_str(), d.id.as_str())));
    let rebuild = replica.rebuild();
    let mut applied = Applied::default();
    let commit = replica
        .store()
        .commit(&keys, &[], |loaded| {
            let mut w = Work::load(loaded.head, &loaded.docs, version)?;
            for mut d in docs {
                let theirs = d.take_layers();
                if let Some(c) = current {
                    if let Some(v) = theirs.0.keys().next_back().filter(|v| **v > c) {
                        applied.future_version = applied.future_version.max(*v);
                    }
                }
                let slot = index.get(&(d.collection.clone(), d.id.clone())).copied();
                let changed = w.merge(slot, &d.collection, &d.id, theirs, output, peer);
                // A reset only when older-version data changed a stored document.
                applied.older_version |= current.is_some_and(|c| changed.iter().any(|v| *v < c));
            }
            w.finish(&rebuild, &keys, vec![])
        })
        .await?;
    replica.committed(&commit);
    Ok(applied)
}

/// Closes a received pass: records the session at its final point (for a snapshot, the
/// sender's max row), max-merges the sender's forwarded table as transitive entries, and
/// raises the origins' newest stamps (`newest`: what a snapshot's documents showed).
pub async fn finish_incoming<S: Store>(
    replica: &Replica<S>,
    peer: &str,
    session: &str,
    end: Point,
    table: Vec<TableEntry>,
    newest: BTreeMap<String, Stamp>,
) -> Result<(), Error> {
    finish(replica, peer, Some((session, end)), table, newest).await
}

/// Closes an idle pass (see `pass`): records no session, only max-merges the table.
pub async fn finish_idle<S: Store>(replica: &Replica<S>, peer: &str, table: Vec<TableEntry>) -> Result<(), Error> {
    finish(replica, peer, None, table, BTreeMap::new()).await
}

/// The newest stamp each origin wrote among a snapshot's document states (all layers).
pub fn newest_in_docs(me: &str, docs: &[SnapshotDoc]) -> BTreeMap<String, Stamp> {
    let mut out: BTreeMap<String, Stamp> = BTreeMap::new();
    let stamps = docs.iter().flat_map(|d| d.stamps.values().chain(d.layers.values().flat_map(|l| l.stamps.values())));
    for s in stamps.filter(|s| s.node != me && !is_migration(s)) {
        if out.get(&s.node).is_none_or(|n| n < s) {
            out.insert(s.node.clone(), s.clone());
        }
    }
    out
}

async fn finish<S: Store>(replica: &Replica<S>, peer: &str, reached: Option<(&str, Point)>, table: Vec<TableEntry>, newest: BTreeMap<String, Stamp>) -> Result<(), Error> {
    let me = replica.head().db_id;
    let ids = closed_ids(&me, peer, &table, &newest);
    let (peer, reached) = (peer.to_string(), reached.map(|(s, p)| (s.to_string(), p)));
    let read = ids.clone();
    let commit = replica
        .store()
        .commit_owned(&[], &ids, move |loaded| {
            let before: std::collections::BTreeMap<String, PeerRecord> = read.into_iter().zip(loaded.peers).filter_map(|(id, p)| Some((id, p?))).collect();
            let reached = reached.as_ref().map(|(s, p)| (s.as_str(), *p));
            Ok(Commit { peers: close_pass(&before, &me, &peer, reached, &table, &newest), ..Commit::default() })
        })
        .await?;
    replica.committed(&commit);
    Ok(())
}

/// The peers whose records closing a pass from `peer` may change.
/// Linear in the table's size (a set, not a scan per entry: tables come from peers).
fn closed_ids(me: &str, peer: &str, table: &[TableEntry], newest: &BTreeMap<String, Stamp>) -> Vec<String> {
    let mut ids = vec![peer.to_string()];
    let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::from([peer]);
    let others = table.iter().map(|e| &e.db_id).chain(newest.keys());
    for id in others.filter(|id| *id != me && !id.is_empty()) {
        if seen.insert(id.as_str()) {
            ids.push(id.clone());
        }
    }
    ids
}

/// The peer records that closing a pass from `peer` changes, given the records `before`
/// (by db id): the session at the pass's final point (none for an idle pass), and the
/// sender's forwarded table max-merged as transitive entries, and the newest stamp seen
/// from each origin (its per-origin mark). Records that do not change are left out (an
/// idle pass usually changes none).
pub(crate) fn close_pass(
    before: &std::collections::BTreeMap<String, PeerRecord>,
    me: &str,
    peer: &str,
    reached: Option<(&str, Point)>,
    table: &[TableEntry],
    newest: &BTreeMap<String, Stamp>,
) -> Vec<(String, PeerRecord)> {
    let ids = closed_ids(me, peer, table, newest);
    let mut recs: Vec<PeerRecord> = ids.iter().map(|id| before.get(id).cloned().unwrap_or_else(PeerRecord::new)).collect();
    if let Some((session, end)) = reached {
        recs[0].note_incoming(session, end, false);
    }
    let slot: HashMap<&str, usize> = ids.iter().enumerate().map(|(i, id)| (id.as_str(), i)).collect();
    for e in table.iter().filter(|e| e.db_id != me && e.db_id != peer) {
        if let Some(&i) = slot.get(e.db_id.as_str()) {
            recs[i].note_incoming(&e.session, e.row, true);
        }
    }
    for (id, rec) in ids.iter().zip(recs.iter_mut()) {
        if let Some(n) = newest.get(id) {
            rec.note_newest(n);
        }
    }
    ids.into_iter().zip(recs).filter(|(id, r)| before.get(id) != Some(r)).collect()
}

/// Records `outgoing[peer]` after a complete idle pass, without a session (see `pass`).
pub async fn note_idle_sent<S: Store>(replica: &Replica<S>, peer: &str, row: Point) -> Result<(), Error> {
    let peer = peer.to_string();
    let commit = replica
        .store()
        .commit_owned(&[], &[peer.clone()], move |loaded| {
            let mut rec = loaded.peers.into_iter().next().flatten().unwrap_or_else(PeerRecord::new);
            if rec.outgoing >= row {
                return Ok(Commit::default());
            }
            rec.merge_outgoing(row);
            Ok(Commit { peers: vec![(peer, rec)], ..Commit::default() })
        })
        .await?;
    replica.committed(&commit);
    Ok(())
}

/// Records on the sending side that the peer acknowledged own rows up to `row` in
/// `session`; after a complete pass also `outgoing[peer]`.
pub async fn note_sent<S: Store>(replica: &Replica<S>, peer: &str, session: &str, row: Point, complete: bool) -> Result<(), Error> {
    let (peer, session) = (peer.to_string(), session.to_string());
    let commit = replica
        .store()
        .commit_owned(&[], &[peer.clone()], move |loaded| {
            let mut rec = loaded.peers.into_iter().next().flatten().unwrap_or_else(PeerRecord::new);
            rec.note_outgoing(&session, row);
            if complete {
                rec.merge_outgoing(row);
            }
            Ok(Commit { peers: vec![(peer, rec)], ..Commit::default() })
        })
        .await?;
    replica.committed(&commit);
    Ok(())
}
