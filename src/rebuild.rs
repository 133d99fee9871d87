//! How document layers become stored documents: the view at the app's schema version
//! (migrated forward when older layers exist), its index keys, and the migration output
//! to log so that schema-agnostic replicas (the server) hold the migrated state too.
//!
//! A relay (no schema) keeps every layer and shows the newest one.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::clock::Stamp;
use crate::error::{Error, StoreError};
use crate::key::is_encoding;
use crate::layers::Layers;
use crate::merge::{with_primary_key, DocState};
use crate::migrate::{views, Forward, Item, Migrator, Schemas, View};
use crate::schema::{Index, Schema};
use crate::store::{DocKey, Head, Row, StoredDoc};

/// The stored form of a single-layer document state: the materialized view plus, for
/// collections the schema declares, the primary key and index keys. A relay (no schema)
/// stores the state as it is. Takes the state by value: its maps move into the stored
/// document rather than being copied and then freed (every written document comes here).
pub fn stored_doc(schema: Option<&Schema>, collection: &str, id: &str, state: DocState, version: u32) -> StoredDoc {
    let coll = schema.and_then(|s| s.collection(collection));
    let exists = state.exists();
    let DocState { doc: fields, stamps, deleted, conflicts } = state;
    let doc = exists.then(|| match coll {
        Some(c) => with_primary_key(fields, &c.primary_key, id),
        None => fields,
    });
    let index_keys = coll.map(|c| index_keys(&c.index_list(), &doc)).unwrap_or_default();
    StoredDoc { id: id.to_string(), doc, stamps, deleted, version, index_keys, layers: BTreeMap::new(), conflicts, migrated: None }
}

/// Each index's key for a document: its fields encoded (`key::encode`), none when the
/// document does not exist (so it drops out of every index).
pub fn index_keys(indexes: &[Index], doc: &Option<Map<String, Value>>) -> Map<String, Value> {
    let Some(doc) = doc else { return Map::new() };
    crate::schema::index_keys(indexes, doc)
}

/// Whether `keys` are exactly what `index_keys` gives for `doc`, checked without building
/// them: a record leaves out keys that its document gives back (`idb::codec`), which is
/// nearly every record, so every write asks (index names are unique: a schema's
/// `indexes` is an object).
pub fn has_index_keys(keys: &Map<String, Value>, indexes: &[Index], doc: &Option<Map<String, Value>>) -> bool {
    let Some(doc) = doc else { return keys.is_empty() };
    keys.len() == indexes.len()
        && indexes.iter().all(|index| match keys.get(&index.name) {
            Some(Value::Array(key)) => key.len() == index.fields.len() && key.iter().zip(&index.fields).all(|(k, f)| is_encoding(k, f.get(doc))),
            _ => false,
        })
}

/// Turns document layers into stored documents: one layer at the app's version is stored
/// as is; anything else gets its view migrated forward (`migrate::views`), and the
/// migration output is logged as a local row when it changed, so it reaches the server.
pub struct Rebuild<'a> {
    /// `None` for a relay.
    pub schemas: Option<&'a Schemas>,
    pub migrator: &'a dyn Migrator,
}

/// A replica's `Rebuild`, owned (`Replica::rebuilder`): a closure handed to
/// `Store::commit_owned` may run on another thread, after the call that made it returned.
#[derive(Clone)]
pub struct Rebuilder {
    pub schemas: Option<std::sync::Arc<Schemas>>,
    pub migrator: std::sync::Arc<dyn Migrator>,
}

impl Rebuilder {
    pub fn get(&self) -> Rebuild<'_> {
        Rebuild { schemas: self.schemas.as_deref(), migrator: self.migrator.as_ref() }
    }
}

/// One document to rebuild.
pub struct Pending {
    pub key: DocKey,
    pub layers: Layers,
    /// The last migration stamp logged for it.
    pub migrated: Option<Stamp>,
    /// Whether its older layers changed (or it is new with older layers), so its view
    /// must be migrated again. Otherwise a document migrated before keeps its migrated
    /// layer and later writes merge over it: a document is migrated once per step.
    pub remigrate: bool,
}

impl Rebuild<'_> {
    /// Checks that data written under `version` can be brought to the app's version:
    /// data is never silently hidden for want of a schema or a migration.
    pub fn check_version(&self, version: u32) -> Result<(), Error> {
        match self.schemas {
            Some(schemas) if version < schemas.current.version => Ok(schemas.check_path(version, self.migrator)?),
            _ => Ok(()),
        }
    }

    /// Whether data written under `version` migrates to the app's version on its own: its
    /// path is complete (`check_version`) and no step on it reads other documents. Such a
    /// document's migration depends on nothing else, so a reset migrates it as it arrives.
    pub fn migrates_alone(&self, version: u32) -> bool {
        let Some(schemas) = self.schemas else { return false };
        version < schemas.current.version && self.check_version(version).is_ok() && (version + 1..=schemas.current.version).all(|v| !self.migrator.reads_others(v))
    }

    /// `migrates_alone`, worked out once for every version below the app's: for a loop over
    /// many documents, which asks it per document (it walks the migration path).
    pub fn alone_by_version(&self) -> impl Fn(u32) -> bool {
        let current = self.schemas.map_or(0, |s| s.current.version);
        let alone: Vec<bool> = (0..current).map(|v| self.migrates_alone(v)).collect();
        move |v| alone.get(v as usize).copied().unwrap_or(false)
    }

    /// Whether data of an older schema version must reach this replica as a snapshot: some
    /// version it knows migrates only together with other documents (a step on its path
    /// reads them through `ctx`). A diff pass carries just the rows past the point — a late
    /// old write, not the older-version documents it may read (a collection this schema
    /// dropped is not stored at all) — so migrating it there could compute another result
    /// than every replica that staged the same data (DESIGN §6: migrations read the data as
    /// it stood at version v−1; migrations are deterministic).
    pub fn older_as_snapshot(&self) -> bool {
        self.schemas.is_some_and(|s| s.history.iter().any(|h| !self.migrates_alone(h.version)))
    }

    /// Builds the stored form of each item. Appends migration rows to `rows`, numbering
    /// them after `head.max_row`.
    pub fn docs(&self, mut items: Vec<Pending>, head: &mut Head, rows: &mut Vec<Row>) -> Result<Vec<(String, StoredDoc)>, Error> {
        let Some(schemas) = self.schemas else {
            // A relay keeps every layer; its document is the newest one.
            return Ok(items
                .into_iter()
                .map(|Pending { key: (c, id), mut layers, migrated, .. }| {
                    let v = layers.0.keys().next_back().copied().unwrap_or(0);
                    let state = layers.0.remove(&v).unwrap_or_default();
                    let mut stored = stored_doc(None, &c, &id, state, v);
                    stored.layers = layers.0;
                    stored.migrated = migrated;
                    (c, stored)
                })
                .collect());
        };
        let current = schemas.current.version;
        let mut out: Vec<Option<(String, StoredDoc)>> = vec![None; items.len()];
        let mut slow = Vec::new();
        for (n, it) in items.iter_mut().enumerate() {
            let single = it.layers.0.keys().all(|v| *v == current);
            if single || (!it.remigrate && it.layers.migrated_into(current)) {
                // Moved out of `it`, which nothing reads again (only the others go on).
                let state = it.layers.0.remove(&current).unwrap_or_default();
                let mut doc = stored_doc(Some(&schemas.current), &it.key.0, &it.key.1, state, current);
                doc.layers = std::mem::take(&mut it.layers.0);
                doc.migrated = it.migrated.take();
                out[n] = Some((std::mem::take(&mut it.key.0), doc));
            } else {
                slow.push(n);
            }
        }
        if !slow.is_empty() {
            let batch: Vec<Item> = slow.iter().map(|&n| Item { collection: &items[n].key.0, id: &items[n].key.1, layers: &items[n].layers }).collect();
            let views = views(schemas, self.migrator, &head.db_id, &batch)?;
            drop(batch);
            for (&n, view) in slow.iter().zip(views) {
                out[n] = Some(built(schemas, &mut items[n], view, head, rows));
            }
        }
        Ok(out.into_iter().map(|o| o.expect("every item built")).collect())
    }
}

/// A migrated document's stored form: its view, its older layers (moved out of `it`),
/// and its migration output logged as a row (numbered after `head.max_row`) when that
/// output is not the one logged for it before.
fn built(schemas: &Schemas, it: &mut Pending, view: View, head: &mut Head, rows: &mut Vec<Row>) -> (String, StoredDoc) {
    let current = schemas.current.version;
    let (c, id) = &it.key;
    let index_keys = schemas.current.collection(c).map(|cl| index_keys(&cl.index_list(), &view.doc)).unwrap_or_default();
    let mut migrated = it.migrated.clone();
    let mut view = view;
    // Older layers but no input at all (deleted under an older version):
    // the output is a withdrawal — of whatever output was logged before,
    // here or by any replica — kept in the stored layer too, so a snapshot
    // carries it, and the same on every replica that migrates the document.
    // Also when writes at the current version keep the document alive: they
    // survive the withdrawal (their registers are newer), but earlier output
    // held by relays must still be replaced, or the relays that got it show
    // its fields and those that did not (a snapshot carries no stripped
    // output) never do (simulation seed 864).
    let older = it.layers.0.keys().any(|v| *v < current) && schemas.current.collection(c).is_some();
    if view.migration.is_none() && older {
        let op = crate::migrate::withdrawn(current, c, id, &it.layers, &head.db_id);
        view.state.apply(&op);
        view.migration = Some(op);
    }
    if let Some(op) = view.migration {
        // Output the layer is already built on (adopted from another replica) is not new.
        if migrated.as_ref() != Some(&op.ts) && it.layers.migration_root(current) != Some(&op.ts) {
            migrated = Some(op.ts.clone());
            let mut row = head.log(op, None);
            row.op.origin_row = row.row;
            rows.push(row);
        }
    }
    // The item is done with: its older layers move into the stored document.
    let mut layers = std::mem::take(&mut it.layers.0);
    layers.remove(&current);
    let stored = StoredDoc {
        id: id.clone(),
        doc: view.doc,
        stamps: view.state.stamps,
        deleted: view.state.deleted,
        version: current,
        index_keys,
        layers,
        conflicts: view.state.conflicts,
        migrated,
    };
    (c.clone(), stored)
}

/// A batch of documents with older-version data being migrated forward (a reset's), built
/// slice by slice: every step but the last has run over the whole batch, and each
/// `next` runs the last step for one slice, so the caller writes a slice while the next
/// one is computed. The result is the same as `Rebuild::docs` over the whole batch.
pub struct Migrating {
    items: Vec<Pending>,
    forward: Forward,
    done: usize,
}

impl Rebuild<'_> {
    /// Starts migrating `items` (the app's schema is required: a relay does not migrate).
    pub fn migrating(&self, items: Vec<Pending>) -> Result<Migrating, Error> {
        let schemas = self.schemas.ok_or_else(|| StoreError::Unsupported("a relay does not migrate".into()))?;
        let forward = {
            let batch: Vec<Item> = items.iter().map(|p| Item { collection: &p.key.0, id: &p.key.1, layers: &p.layers }).collect();
            Forward::new(schemas, self.migrator, &batch)?
        };
        Ok(Migrating { items, forward, done: 0 })
    }

    /// The next (up to) `n` documents built, their migration rows appended to `rows`
    /// (numbered after `head.max_row`); `None` when every document is built.
    pub fn next_slice(&self, m: &mut Migrating, n: usize, head: &mut Head, rows: &mut Vec<Row>) -> Result<Option<Vec<(String, StoredDoc)>>, Error> {
        let schemas = self.schemas.ok_or_else(|| StoreError::Unsupported("a relay does not migrate".into()))?;
        let range = m.done..(m.done + n).min(m.items.len());
        if range.is_empty() {
            return Ok(None);
        }
        let views = {
            let batch: Vec<Item> = m.items.iter().map(|p| Item { collection: &p.key.0, id: &p.key.1, layers: &p.layers }).collect();
            m.forward.finish(schemas, self.migrator, &head.db_id, &batch, range.clone())?
        };
        m.done = range.end;
        Ok(Some(range.zip(views).map(|(i, view)| built(schemas, &mut m.items[i], view, head, rows)).collect()))
    }
}


#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn has_index_keys_says_whether_keys_are_the_ones_the_document_gives() {
        let schema = Schema::from_json(json!({"version": 1, "collections": {"docs": {"primaryKey": "id", "indexes": {"byKind": "kind", "byKindN": ["kind", "n"], "deep": "a.b"}}}})).unwrap();
        let indexes = schema.collection("docs").unwrap().index_list();
        for doc in [json!({"id": "x", "kind": "k1", "n": 3, "a": {"b": [1]}}), json!({"id": "y", "kind": null}), json!({"id": "z"})] {
            let doc = doc.as_object().cloned();
            let keys = index_keys(indexes, &doc);
            assert!(has_index_keys(&keys, indexes, &doc), "{doc:?}");
            // A key of another value, one missing, one extra: not the document's.
            let mut other = keys.clone();
            other.insert("byKindN".into(), crate::key::encode(Some(&json!("k9"))));
            assert!(!has_index_keys(&other, indexes, &doc));
            let mut fewer = keys.clone();
            fewer.remove("deep");
            assert!(!has_index_keys(&fewer, indexes, &doc));
            let mut more = keys.clone();
            more.insert("gone".into(), json!([]));
            assert!(!has_index_keys(&more, indexes, &doc));
            assert!(!has_index_keys(&keys, indexes, &None), "a tombstone has no index keys");
        }
        assert!(has_index_keys(&Map::new(), indexes, &None));
    }

    /// `stored_doc` moves the state's fields in instead of materializing a copy: what it
    /// stores must be what `DocState::materialize` shows (the primary key set to the id,
    /// nothing for a deleted or empty state), and a relay's document the fields as they are.
    #[test]
    fn stored_doc_holds_the_materialized_view() {
        use crate::clock::Stamp;
        use crate::op::{Kind, Op};
        let schema = Schema::from_json(json!({"version": 1, "collections": {"docs": {"primaryKey": "key", "indexes": {"byKind": "kind"}}}})).unwrap();
        let op = |counter: u32, kind: Kind, fields: Option<Value>| Op {
            origin: "n".into(),
            origin_row: u64::from(counter),
            ts: Stamp { version: 1, wall: 1, counter, node: "n".into() },
            schema_version: 1,
            collection: "docs".into(),
            id: "a".into(),
            kind,
            fields: fields.and_then(|f| f.as_object().cloned()),
            seen: None,
            resolution: false,
        };
        let put = op(1, Kind::Put, Some(json!({"key": "other", "kind": "k1", "n": 2})));
        let patch = op(3, Kind::Patch, Some(json!({"n": 5})));
        let delete = op(2, Kind::Delete, None);
        for ops in [vec![], vec![&put], vec![&put, &patch], vec![&put, &delete], vec![&delete], vec![&put, &delete, &patch]] {
            let mut state = DocState::default();
            for o in &ops {
                state.apply(o);
            }
            let want = state.materialize("key", "a");
            let stored = stored_doc(Some(&schema), "docs", "a", state.clone(), 1);
            assert_eq!(stored.doc, want, "{ops:?}");
            assert_eq!((&stored.stamps, stored.deleted, &stored.conflicts), (&state.stamps, state.deleted, &state.conflicts));
            assert_eq!(stored.index_keys, index_keys(schema.collection("docs").unwrap().index_list(), &want));
            let relay = stored_doc(None, "docs", "a", state.clone(), 1);
            assert_eq!(relay.doc, state.exists().then(|| state.doc.clone()), "{ops:?}");
            assert!(relay.index_keys.is_empty());
        }
    }
}
