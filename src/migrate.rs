//! Schema versions and migrations (DESIGN §6): which schemas the app knows, how a
//! document of one version becomes the next, and a document's view at the app's version.
//!
//! A document keeps one *layer* per schema version it was written under: the merge state
//! of the ops of that version only. Its view at version V is computed, never stored as
//! truth: migrate the view at V−1 (the app's function, then the declarative changes of
//! schema V: dropped collections, field defaults), put that in as a root register stamped
//! `(V, wall 0, …)` — after every op of older versions, before any real write of V — and
//! merge layer V over it. Because the view is recomputed from layers, an op of an older
//! version that arrives late simply lands in its layer and the document is migrated
//! forward again; ops of a newer version wait in their layer until the app upgrades.
//!
//! Migration output is also written as ops (stamped as above) so that schema-agnostic
//! replicas such as the server hold the migrated state; replicas that can migrate
//! recompute it themselves and ignore such ops (see `layers`). Output computed again
//! orders after the output it replaces (`settle`), so relays keep the newest.

use std::cell::RefCell;
use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::clock::Stamp;
use crate::error::{Error, MigrateError};
use crate::layers::{migration_output, strip_migrations, Layers, MIGRATION_NODE};
use crate::merge::{with_primary_key, DocState, ROOT};
use crate::op::{Kind, Op};
use crate::query::Query;
use crate::schema::Schema;
use crate::store::StoredDoc;

/// Turns documents of version `to − 1` into version `to`.
pub trait Migrator: Send + Sync {
    /// Whether the app declared the step to version `to` (a function, or `null` for "the
    /// declarative changes only").
    fn has_step(&self, to: u32) -> bool;

    /// Whether the step to `to` may read other documents through its context. A step
    /// that cannot depends on nothing but the document it migrates, so a reset migrates
    /// such documents as their snapshot chunks arrive instead of all at its end (their
    /// writes then overlap the rest of the download). When in doubt, `true`.
    fn reads_others(&self, _to: u32) -> bool {
        true
    }

    /// Runs the app's function for the step to `to` over documents of `collection`, in
    /// order; `None` drops a document. Steps declared as `null` return the input. The
    /// function may read other documents through `ctx`, naming the index (in `docs`) of
    /// the document it is migrating.
    fn migrate(&self, to: u32, collection: &str, docs: Vec<Map<String, Value>>, ctx: &dyn Context) -> Result<Vec<Option<Map<String, Value>>>, MigrateError>;
}

/// What a migration step may read besides the document it migrates: every document
/// migrated together with it, as it stood at version `to − 1` (a reset or an upgrade
/// migrates all of a replica's older-version documents together). Reads are synchronous.
pub trait Context {
    /// Document `id` of `collection`, read while migrating document `reader`.
    fn get(&self, reader: usize, collection: &str, id: &str) -> Option<Map<String, Value>>;
    /// The documents of `collection` matching `query` (`{ where, orderBy, limit }`), read
    /// while migrating document `reader`.
    fn query(&self, reader: usize, collection: &str, query: &Value) -> Result<Vec<Map<String, Value>>, MigrateError>;
}

/// No migrations at all: every step is missing.
pub struct NoMigrations;

impl Migrator for NoMigrations {
    fn has_step(&self, _to: u32) -> bool {
        false
    }
    fn migrate(&self, to: u32, _c: &str, _d: Vec<Map<String, Value>>, _ctx: &dyn Context) -> Result<Vec<Option<Map<String, Value>>>, MigrateError> {
        Err(MigrateError::MissingMigration(to))
    }
}

/// The app's current schema and the older ones it still knows.
#[derive(Clone, Debug, PartialEq)]
pub struct Schemas {
    pub current: Schema,
    /// The older schemas, each version once, in version order. A list, not a map: there
    /// are few, and a map type of its own would add its code to the wasm.
    pub history: Vec<Schema>,
}

impl Schemas {
    pub fn new(current: Schema, history: Vec<Schema>) -> Result<Schemas, Error> {
        let mut sorted: Vec<Schema> = Vec::new();
        for s in history {
            s.validate()?;
            if s.version >= current.version {
                return Err(MigrateError::BadHistory(format!("history has version {} but the current schema is version {}", s.version, current.version)).into());
            }
            match sorted.binary_search_by_key(&s.version, |h| h.version) {
                Ok(_) => return Err(MigrateError::BadHistory("two history schemas share a version".into()).into()),
                Err(at) => sorted.insert(at, s),
            }
        }
        Ok(Schemas { current, history: sorted })
    }

    /// Whether any known schema, current or older, has `collection`.
    pub fn knows(&self, collection: &str) -> bool {
        self.current.collection(collection).is_some() || self.history.iter().any(|s| s.collection(collection).is_some())
    }

    pub fn get(&self, version: u32) -> Option<&Schema> {
        if version == self.current.version {
            Some(&self.current)
        } else {
            self.history.iter().find(|s| s.version == version)
        }
    }

    /// Checks that data of version `from` can be brought to the current version: every
    /// schema on the way is known and every step is declared.
    pub fn check_path(&self, from: u32, migrator: &dyn Migrator) -> Result<(), MigrateError> {
        if from > self.current.version {
            return Err(MigrateError::Newer { stored: from, current: self.current.version });
        }
        for v in from..=self.current.version {
            if self.get(v).is_none() {
                return Err(MigrateError::MissingSchema(v));
            }
            if v > from && !migrator.has_step(v) {
                return Err(MigrateError::MissingMigration(v));
            }
        }
        Ok(())
    }

    /// The lowest version from which `to` can be reached.
    fn reachable_from(&self, to: u32, migrator: &dyn Migrator) -> u32 {
        let mut v = to;
        while v > 0 && migrator.has_step(v) && self.get(v - 1).is_some() {
            v -= 1;
        }
        v
    }
}

/// A document's view at the app's version.
#[derive(Clone, Debug, PartialEq)]
pub struct View {
    /// The document as the app sees it (with its primary key), or `None`.
    pub doc: Option<Map<String, Value>>,
    /// The merge state of the app's version: the migration output as its root register
    /// (when the view came from older layers), the version's own writes over it. Stored
    /// as the document's current layer, so later writes merge over it without migrating
    /// again. When `migration` is set, its fields have moved into `doc` (the stored
    /// document is `doc` with these stamps); otherwise they are whole.
    pub state: DocState,
    /// The migration output the view is built on, as an op to log, when the view came
    /// from older layers.
    pub migration: Option<Op>,
}

/// One document to compute a view for.
pub struct Item<'a> {
    pub collection: &'a str,
    pub id: &'a str,
    pub layers: &'a Layers,
}

/// The views of one step's input (version `v − 1`), for the migrations of step `v` to
/// read; it notes, per document being migrated, the newest stamp of what it read.
struct StepReads<'a> {
    items: &'a [Item<'a>],
    prev: &'a [Option<Map<String, Value>>],
    /// Per item, the newest stamp of its input to step `v` (its layers below `v`).
    below: &'a [Option<Stamp>],
    /// The schema at version `v − 1`, whose collections reads are planned against.
    schema: &'a Schema,
    /// Built at the first `get`: most migrations read nothing.
    index: std::cell::OnceCell<HashMap<(&'a str, &'a str), usize>>,
    /// The items being migrated by the current call, by position in its batch.
    batch: Vec<usize>,
    read: RefCell<Vec<Option<Stamp>>>,
}

impl StepReads<'_> {
    fn note(&self, reader: usize, stamp: Option<&Stamp>) {
        let (Some(&i), Some(stamp)) = (self.batch.get(reader), stamp) else { return };
        let mut read = self.read.borrow_mut();
        if read[i].as_ref().is_none_or(|r| r < stamp) {
            read[i] = Some(stamp.clone());
        }
    }
}

impl Context for StepReads<'_> {
    fn get(&self, reader: usize, collection: &str, id: &str) -> Option<Map<String, Value>> {
        let index = self.index.get_or_init(|| self.items.iter().enumerate().map(|(i, it)| ((it.collection, it.id), i)).collect());
        let j = *index.get(&(collection, id))?;
        self.note(reader, self.below[j].as_ref());
        self.prev[j].clone()
    }

    fn query(&self, reader: usize, collection: &str, query: &Value) -> Result<Vec<Map<String, Value>>, MigrateError> {
        let Some(coll) = self.schema.collection(collection) else { return Ok(Vec::new()) };
        let query = Query::parse(query).map_err(|e| MigrateError::Failed(format!("ctx.query({collection:?}): {e}")))?;
        let plan = query.plan(coll);
        // Every condition is checked here (a plan's filter leaves out what its index
        // scan guarantees); the documents that meet them, with their index keys, then go
        // through the selection every store without native indexes answers with, for the
        // order, ties and limit a query of the live store gives.
        let mut hits = Vec::new();
        for (j, it) in self.items.iter().enumerate() {
            if it.collection != collection {
                continue;
            }
            // The result depends on every document of the collection, matching or not.
            self.note(reader, self.below[j].as_ref());
            if let Some(doc) = self.prev[j].as_ref().filter(|d| query.matches(d)) {
                hits.push(StoredDoc::queried(it.id, doc.clone(), coll.index_list()));
            }
        }
        Ok(crate::scan::select(&hits, &coll.primary_key, &plan))
    }
}

/// What one step made of one document.
enum Stepped {
    /// The step's schema dropped the document's collection.
    Dropped,
    /// Its merge state at the step's version, its view, and the migration output it was
    /// built on (with that output's stamp) if it was migrated into the step.
    Kept { state: DocState, doc: Option<Map<String, Value>>, base: Option<(Stamp, Option<Map<String, Value>>)> },
}

/// A batch of documents on their way to the app's version. Every step but the last runs
/// over the whole batch at once (`new`); the last one runs slice by slice (`finish`), so
/// that a caller can write one slice while it computes the next. Every migration, in any
/// slice, reads through its context the whole batch as it stood before its step, and the
/// migrator is called once per step, collection and slice, never twice for a document.
pub struct Forward {
    target: u32,
    /// Per item: the version its history starts at (its lowest usable layer).
    starts: Vec<Option<u32>>,
    /// Per item: its view at the version reached so far.
    prev: Vec<Option<Map<String, Value>>>,
    /// Per item: its merge state at the version reached so far.
    states: Vec<DocState>,
    /// Per item: the newest stamp of its layers below the app's version, taken before the
    /// caller may take the layers of finished slices.
    below_target: Vec<Option<Stamp>>,
}

impl Forward {
    /// Runs every step below the app's version over all of `items`.
    pub fn new(schemas: &Schemas, migrator: &dyn Migrator, items: &[Item]) -> Result<Forward, Error> {
        let target = schemas.current.version;
        let floor = schemas.reachable_from(target, migrator);
        let n = items.len();
        let mut forward = Forward {
            target,
            starts: items.iter().map(|it| it.layers.0.range(floor..=target).next().map(|(v, _)| *v)).collect(),
            prev: vec![None; n],
            states: vec![DocState::default(); n],
            below_target: items.iter().map(|it| it.layers.newest_below(target)).collect(),
        };
        let lowest = forward.starts.iter().flatten().min().copied().unwrap_or(target);
        for v in lowest..target {
            let below: Vec<Option<Stamp>> = items.iter().map(|it| it.layers.newest_below(v)).collect();
            let stepped = forward.step(schemas, migrator, items, v, &below, 0..n)?;
            for (i, s) in stepped.into_iter().enumerate() {
                match s {
                    None => {}
                    Some(Stepped::Dropped) => forward.prev[i] = None,
                    Some(Stepped::Kept { state, doc, .. }) => {
                        forward.prev[i] = doc;
                        forward.states[i] = state;
                    }
                }
            }
        }
        Ok(forward)
    }

    /// The views at the app's version of `items[range]` (the last step). `items` is the
    /// batch `new` was given; the layers of items outside `range` are no longer read.
    pub fn finish(&mut self, schemas: &Schemas, migrator: &dyn Migrator, origin: &str, items: &[Item], range: std::ops::Range<usize>) -> Result<Vec<View>, Error> {
        let below = std::mem::take(&mut self.below_target);
        let stepped = self.step(schemas, migrator, items, self.target, &below, range.clone());
        self.below_target = below;
        let target = self.target;
        Ok(range
            .zip(stepped?)
            .map(|(i, s)| {
                let it = &items[i];
                let (doc, state, base) = match s {
                    Some(Stepped::Kept { state, doc, base }) => (doc, state, base),
                    Some(Stepped::Dropped) => (None, std::mem::take(&mut self.states[i]), None),
                    None => (self.prev[i].take(), std::mem::take(&mut self.states[i]), None),
                };
                View {
                    doc,
                    state,
                    migration: base.map(|(ts, base)| Op {
                        origin: origin.to_string(),
                        origin_row: 0,
                        ts,
                        schema_version: target,
                        collection: it.collection.to_string(),
                        id: it.id.to_string(),
                        kind: if base.is_some() { Kind::Put } else { Kind::Delete },
                        fields: base,
                        seen: None,
                        resolution: false,
                    }),
                }
            })
            .collect())
    }

    /// Step `v` for `items[range]`: the migrations of step `v` over their views at `v − 1`
    /// (grouped by collection), then each one's own layer of `v` merged over the output.
    /// `below[j]` is item j's input stamp (its layers below `v`). `None` for an item
    /// whose history starts after `v`.
    fn step(&mut self, schemas: &Schemas, migrator: &dyn Migrator, items: &[Item], v: u32, below: &[Option<Stamp>], range: std::ops::Range<usize>) -> Result<Vec<Option<Stepped>>, Error> {
        let schema = schemas.get(v).expect("reachable versions have schemas");
        // By collection name, a list rather than a map: a step sees a few collections, and a
        // map type of its own would add its code to the wasm.
        let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
        for i in range.clone() {
            if self.starts[i].is_some_and(|s| s < v) && self.prev[i].is_some() {
                crate::sort::sorted_entry(&mut groups, items[i].collection, Vec::new).push(i);
            }
        }
        // A migration that reads no other document gets its input views moved to it:
        // nothing reads them again (this step's output replaces them). One that reads
        // others gets copies, for its context reads every view as it stood.
        let mut inputs: Vec<Vec<Map<String, Value>>> = match migrator.reads_others(v) {
            true => Vec::new(),
            false => groups.iter().map(|(_, idx)| idx.iter().map(|&i| self.prev[i].take().expect("grouped")).collect()).collect(),
        };
        inputs.reverse();
        let mut migrated: Vec<Option<Option<Map<String, Value>>>> = vec![None; range.len()];
        let mut reads = StepReads {
            items,
            prev: &self.prev,
            below,
            schema: schemas.get(v.saturating_sub(1)).unwrap_or(schema),
            index: std::cell::OnceCell::new(),
            batch: Vec::new(),
            read: RefCell::new(vec![None; items.len()]),
        };
        for (coll, idx) in groups {
            let input = inputs.pop();
            let out = match schema.collection(coll) {
                // Dropped in v: nothing survives.
                None => vec![None; idx.len()],
                Some(c) => {
                    let docs: Vec<_> = input.unwrap_or_else(|| idx.iter().map(|&i| self.prev[i].clone().expect("grouped")).collect());
                    reads.batch = idx.clone();
                    // The document of the batch a step failed on, by its place in the batch.
                    let id = |index: usize| idx.get(index).map_or("?", |&i| items[i].id);
                    let out = migrator.migrate(v, coll, docs, &reads).map_err(|e| match e {
                        MigrateError::Threw { index, message } => MigrateError::Failed(format!("migrations[{v}] threw on {coll}/{}: {message}", id(index))),
                        MigrateError::ReturnedUndefined { index } => MigrateError::Failed(format!(
                            "migrations[{v}] returned undefined for {coll}/{}: return the document, or null to delete it (is a `return` missing?)",
                            id(index)
                        )),
                        other => other,
                    })?;
                    if out.len() != idx.len() {
                        return Err(MigrateError::Failed(format!("migration to {v} returned {} documents for {}", out.len(), idx.len())).into());
                    }
                    out.into_iter()
                        .map(|d| {
                            d.map(|mut d| {
                                for (k, dv) in &c.defaults {
                                    d.entry(k.clone()).or_insert_with(|| dv.clone());
                                }
                                d
                            })
                        })
                        .collect()
                }
            };
            for (&i, d) in idx.iter().zip(out) {
                migrated[i - range.start] = Some(d);
            }
        }
        let read = reads.read.into_inner();
        let first = range.start;
        Ok(range
            .map(|i| {
                let it = &items[i];
                self.starts[i].filter(|s| *s <= v)?;
                let Some(coll) = schema.collection(it.collection) else { return Some(Stepped::Dropped) };
                let mut state = DocState::default();
                let mut base = None;
                if let Some(out) = migrated[i - first].take() {
                    let stamp = migration_stamp(v, it.layers, below[i].as_ref(), read[i].as_ref(), &out);
                    if v == self.target {
                        state.apply_register(ROOT, &stamp, out.clone().map(Value::Object));
                        base = Some((stamp, out));
                    } else {
                        state.apply_register(ROOT, &stamp, out.map(Value::Object));
                    }
                }
                if let Some(layer) = it.layers.0.get(&v) {
                    let mut own = layer.clone();
                    strip_migrations(&mut own);
                    if state.stamps.is_empty() {
                        // Nothing migrated in: the state is the layer itself (merging it into
                        // an empty state copies every value twice to the same result).
                        state = own;
                    } else {
                        state.merge_state(&own);
                    }
                }
                // The view takes the state's fields rather than a copy when nothing reads
                // them again: below the app's version (the next step starts a new state from
                // this view, and a document dropped at the end keeps only the stamps), and at
                // it when the view is built on migration output (`rebuild::built` applies a
                // withdrawal to the state only when there is none).
                let moves = v < self.target || base.is_some();
                let doc = match moves {
                    true => state.exists().then(|| with_primary_key(std::mem::take(&mut state.doc), &coll.primary_key, it.id)),
                    false => state.materialize(&coll.primary_key, it.id),
                };
                Some(Stepped::Kept { state, doc, base })
            })
            .collect())
    }
}

/// Computes the views at the current version of many documents, calling the migrator
/// once per step and collection rather than once per document. Migrations read (through
/// their `Context`) the other documents of `items` as they stood before the step.
pub fn views(schemas: &Schemas, migrator: &dyn Migrator, origin: &str, items: &[Item]) -> Result<Vec<View>, Error> {
    Forward::new(schemas, migrator, items)?.finish(schemas, migrator, origin, items, 0..items.len())
}

/// The migration output that withdraws earlier output of a document whose input (its
/// view at `v − 1`) no longer exists — deleted under an older version after it was
/// migrated. Without it, schema-agnostic replicas that got the earlier output keep
/// showing the document at `v`, and those that did not (a snapshot of the migrated
/// replica carries no output) differ from them for good.
pub fn withdrawn(v: u32, collection: &str, id: &str, layers: &Layers, origin: &str) -> Op {
    Op {
        origin: origin.to_string(),
        origin_row: 0,
        ts: migration_stamp(v, layers, layers.newest_below(v).as_ref(), None, &None),
        schema_version: v,
        collection: collection.to_string(),
        id: id.to_string(),
        kind: Kind::Delete,
        fields: None,
        seen: None,
        resolution: false,
    }
}

/// The stamp of migration output at version `v`: below every real write of v, above
/// every op of older versions, and different whenever the input or the output differs,
/// so every replica that migrates the same input writes the very same op. The input is
/// the document's own older layers (`below`: their newest stamp, `layers.newest_below(v)`,
/// which the caller computed for the whole batch already) and everything the step read
/// (`read`): output that read newer data orders after output that read older data.
///
/// The newest stamp of the input does not say everything about it: a late op older than
/// that newest stamp changes the input but not its newest stamp, and the output computed
/// again would order by its hash alone — below the output it replaces half of the time,
/// so relays kept the stale output (`make verify` seeds 5989, 11586, 14335, 14799). So
/// output that replaces different output already under the document's layer orders after
/// it (`settle`).
fn migration_stamp(v: u32, layers: &Layers, below: Option<&Stamp>, read: Option<&Stamp>, out: &Option<Map<String, Value>>) -> Stamp {
    let input = below.max(read).map(|s| s.encode()).unwrap_or_default();
    // The hash of the output's JSON text, taken as it is written (no string built).
    let mut hash = Fnv1a(0xcbf29ce484222325);
    let _ = serde_json::to_writer(&mut hash, out);
    let natural = Stamp { version: v, wall: 0, counter: 0, node: format!("{MIGRATION_NODE}{input}.{:016x}", hash.0) };
    settle(natural, layers.migration_root(v))
}

/// The stamp of new migration output (stamped `natural`) for a document whose layer is
/// built on output stamped `held` (its own earlier output, or the same output from
/// another replica, adopted: `Layers::adopts`). The new output orders after `held`:
/// - `natural` is already later: it stands;
/// - `held` carries the same output: it is the same op, under the later stamp;
/// - otherwise the output is `held`'s stamp bumped: same input part, a bump count one
///   higher (`/nnnnnnnn`, which orders after both `.` and a lower count), and the new
///   output's hash. Bumps happen only when a replica's input changes, so they are
///   few; the replica whose input is complete bumps last, and its output wins at every
///   relay.
fn settle(natural: Stamp, held: Option<&Stamp>) -> Stamp {
    let Some(held) = held.filter(|h| **h > natural) else { return natural };
    if migration_output(held) == migration_output(&natural) {
        return held.clone();
    }
    let head = held.node.rsplit_once('.').map_or(held.node.as_str(), |(head, _)| head);
    let (base, bumps) = match head.rsplit_once('/') {
        Some((base, n)) if n.len() == 8 => match u32::from_str_radix(n, 16) {
            Ok(n) => (base, n),
            Err(_) => (head, 0),
        },
        _ => (head, 0),
    };
    Stamp { node: format!("{base}/{:08x}.{}", bumps.saturating_add(1), migration_output(&natural)), ..natural }
}

/// FNV-1a over the bytes written to it.
struct Fnv1a(u64);

impl std::io::Write for Fnv1a {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0 = bytes.iter().fold(self.0, |h, b| (h ^ *b as u64).wrapping_mul(0x100000001b3));
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::is_migration;
    use serde_json::json;

    /// Test migrations: 2 renames `title` → `name`; 3 is declarative only.
    struct Steps;
    impl Migrator for Steps {
        fn has_step(&self, to: u32) -> bool {
            to == 2 || to == 3
        }
        fn migrate(&self, to: u32, _c: &str, docs: Vec<Map<String, Value>>, _ctx: &dyn Context) -> Result<Vec<Option<Map<String, Value>>>, MigrateError> {
            Ok(docs
                .into_iter()
                .map(|mut d| {
                    if to == 2 {
                        if let Some(t) = d.remove("title") {
                            d.insert("name".into(), t);
                        }
                        if d.get("drop") == Some(&json!(true)) {
                            return None;
                        }
                    }
                    Some(d)
                })
                .collect())
        }
    }

    fn schemas() -> Schemas {
        let s = |v: u32, extra: Value| {
            let mut colls = json!({"todos": {"primaryKey": "id"}, "old": {"primaryKey": "id"}});
            if v == 3 {
                colls = json!({"todos": {"primaryKey": "id", "defaults": {"list": "inbox"}}});
            }
            let _ = extra;
            Schema::from_json(json!({"version": v, "collections": colls})).unwrap()
        };
        Schemas::new(s(3, json!(null)), vec![s(1, json!(null)), s(2, json!(null))]).unwrap()
    }

    fn op(v: u32, wall: u64, kind: Kind, fields: Option<Value>) -> Op {
        Op {
            origin: "w".into(),
            origin_row: wall,
            ts: Stamp { version: v, wall, counter: 0, node: "w".into() },
            schema_version: v,
            collection: "todos".into(),
            id: "a".into(),
            kind,
            fields: fields.map(|f| f.as_object().unwrap().clone()),
            seen: None,
            resolution: false,
        }
    }

    fn view(layers: &Layers) -> View {
        views(&schemas(), &Steps, "me", &[Item { collection: "todos", id: "a", layers }]).unwrap().remove(0)
    }

    #[test]
    fn a_v1_document_is_migrated_through_every_step() {
        let mut l = Layers::default();
        l.apply(&op(1, 10, Kind::Put, Some(json!({"id": "a", "title": "Milk"}))));
        let v = view(&l);
        assert_eq!(v.doc.map(Value::Object), Some(json!({"id": "a", "name": "Milk", "list": "inbox"})));
        let m = v.migration.unwrap();
        assert!(is_migration(&m.ts) && m.ts.version == 3 && m.kind == Kind::Put);
    }

    #[test]
    fn real_writes_of_the_new_version_win_over_migration_output() {
        let mut l = Layers::default();
        l.apply(&op(1, 10, Kind::Put, Some(json!({"id": "a", "title": "Milk"}))));
        l.apply(&op(3, 5, Kind::Patch, Some(json!({"list": "work"}))));
        // A late v1 write (even with a later wall clock) is migrated forward again.
        l.apply(&op(1, 99, Kind::Patch, Some(json!({"title": "Oat milk"}))));
        assert_eq!(view(&l).doc.map(Value::Object), Some(json!({"id": "a", "name": "Oat milk", "list": "work"})));
    }

    #[test]
    fn migrations_can_drop_documents_and_ignore_received_migration_output() {
        let mut l = Layers::default();
        l.apply(&op(1, 10, Kind::Put, Some(json!({"id": "a", "drop": true}))));
        assert_eq!(view(&l).doc, None);
        // Someone else's migration output in layer 3 does not override ours.
        let mut foreign = op(3, 0, Kind::Put, Some(json!({"id": "a", "name": "x"})));
        foreign.ts.node = format!("{MIGRATION_NODE}zzz");
        l.apply(&foreign);
        assert_eq!(view(&l).doc, None);
    }

    #[test]
    fn same_input_gives_the_same_migration_op_anywhere() {
        let mut a = Layers::default();
        let mut b = Layers::default();
        let o1 = op(1, 10, Kind::Put, Some(json!({"id": "a", "title": "x"})));
        let o2 = op(1, 11, Kind::Patch, Some(json!({"title": "y"})));
        a.apply(&o1);
        a.apply(&o2);
        b.apply(&o2);
        b.apply(&o1);
        assert_eq!(view(&a).migration, view(&b).migration);
        a.apply(&op(1, 12, Kind::Patch, Some(json!({"title": "z"}))));
        assert!(view(&a).migration.unwrap().ts > view(&b).migration.unwrap().ts);
    }

    #[test]
    fn migration_stamps_hash_the_output_json_text() {
        // The stamp's hash is FNV-1a over exactly the output's JSON text, as every
        // replica (of any version) computes it: taken while writing, it must not change.
        let mut l = Layers::default();
        l.apply(&op(1, 10, Kind::Put, Some(json!({"id": "a", "title": "Milk \u{1F95B}", "n": [1, 2.5, null]}))));
        for out in [Some(obj(json!({"id": "a", "name": "Milk \u{1F95B}", "n": [1, 2.5, null]}))), None] {
            let text = serde_json::to_string(&out).unwrap();
            let want = text.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3));
            let stamp = migration_stamp(2, &l, l.newest_below(2).as_ref(), None, &out);
            assert!(stamp.node.ends_with(&format!(".{want:016x}")), "{} for {text}", stamp.node);
        }
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    /// New output orders after the output a document's layer is built on: it stands when
    /// its input is newer, takes the held stamp when it is the same output, and otherwise
    /// bumps the held stamp (same input part, count + 1, its own hash), again and again.
    #[test]
    fn output_that_replaces_other_output_orders_after_it() {
        let m = |node: &str| Stamp { version: 2, wall: 0, counter: 0, node: format!("{MIGRATION_NODE}{node}") };
        let held = m("0001aaaa.ffff000000000000");
        // Same input part, a lower hash: the natural stamp would order below.
        let natural = m("0001aaaa.0000000000000001");
        assert!(natural < held);
        let once = settle(natural.clone(), Some(&held));
        assert_eq!(once.node, format!("{MIGRATION_NODE}0001aaaa/00000001.0000000000000001"));
        assert!(once > held && migration_output(&once) == migration_output(&natural));
        let twice = settle(m("0001aaaa.ffff000000000001"), Some(&once));
        assert_eq!(twice.node, format!("{MIGRATION_NODE}0001aaaa/00000002.ffff000000000001"));
        assert!(twice > once);
        // The same output as held: the held stamp, no new op.
        assert_eq!(settle(m("0001aaaa.0000000000000001"), Some(&once)), once);
        // A newer input stands on its own, and so does output with nothing held.
        let newer = m("0001aaab.0000000000000001");
        assert_eq!(settle(newer.clone(), Some(&twice)), newer);
        assert_eq!(settle(natural.clone(), None), natural);
    }

    #[test]
    fn future_layers_wait() {
        let mut l = Layers::default();
        l.apply(&op(3, 10, Kind::Put, Some(json!({"id": "a", "name": "now"}))));
        l.apply(&op(4, 11, Kind::Patch, Some(json!({"name": "future"}))));
        assert_eq!(view(&l).doc.map(Value::Object), Some(json!({"id": "a", "name": "now"})));
    }

    #[test]
    fn paths_need_every_schema_and_step() {
        let s = schemas();
        assert!(s.check_path(1, &Steps).is_ok());
        assert_eq!(s.check_path(0, &Steps), Err(MigrateError::MissingSchema(0)));
        assert_eq!(s.check_path(1, &NoMigrations), Err(MigrateError::MissingMigration(2)));
        assert!(matches!(s.check_path(4, &Steps), Err(MigrateError::Newer { .. })));
    }

    /// Reads the other documents of the collection through `ctx.query` in step 2.
    struct Reads(std::sync::Mutex<Vec<Vec<Value>>>);
    impl Migrator for Reads {
        fn has_step(&self, to: u32) -> bool {
            to == 2
        }
        fn migrate(&self, _to: u32, _c: &str, docs: Vec<Map<String, Value>>, ctx: &dyn Context) -> Result<Vec<Option<Map<String, Value>>>, MigrateError> {
            for q in [json!({"where": {"done": true}}), json!({"where": {"id": "b"}}), json!({"orderBy": {"n": "desc"}}),
                json!({"where": {"n": {"gte": 2, "ne": 3}}}), json!({"where": {"done": false}, "orderBy": "n", "limit": 1}),
                json!({"where": {"n": {"in": [1, 2], "gt": 2}}}), json!({})] {
                let ids = ctx.query(0, "todos", &q)?.iter().map(|d| d["id"].clone()).collect();
                self.0.lock().unwrap().push(ids);
            }
            Ok(docs.into_iter().map(Some).collect())
        }
    }

    /// `ctx.query` answers as a query of the store does: by every condition, including
    /// those an index serves, and in the order the query asks for.
    #[test]
    fn ctx_query_checks_every_condition_and_orders_as_asked() {
        let s = |v: u32| Schema::from_json(json!({"version": v, "collections": {"todos": {"primaryKey": "id", "indexes": {"byDone": "done", "byN": "n"}}}})).unwrap();
        let schemas = Schemas::new(s(2), vec![s(1)]).unwrap();
        let layers: Vec<Layers> = [("c", false, 2), ("a", true, 1), ("b", false, 3)]
            .iter()
            .map(|(id, done, n)| {
                let mut o = op(1, *n, Kind::Put, Some(json!({"id": id, "done": done, "n": n})));
                o.id = id.to_string();
                let mut l = Layers::default();
                l.apply(&o);
                l
            })
            .collect();
        let items: Vec<Item> = ["c", "a", "b"].iter().zip(&layers).map(|(id, layers)| Item { collection: "todos", id, layers }).collect();
        let reads = Reads(std::sync::Mutex::new(Vec::new()));
        views(&schemas, &reads, "me", &items).unwrap();
        let want: Vec<Vec<Value>> = [vec!["a"], vec!["b"], vec!["b", "c", "a"], vec!["c"], vec!["c"], vec![], vec!["a", "b", "c"]]
            .iter()
            .map(|ids| ids.iter().map(|id| json!(id)).collect())
            .collect();
        assert_eq!(reads.0.into_inner().unwrap(), want);
    }

    /// A step whose function returned undefined (the JS migrator's report) fails naming
    /// the document; it is never a delete.
    #[test]
    fn a_step_returning_undefined_fails_naming_the_document() {
        struct Forgot;
        impl Migrator for Forgot {
            fn has_step(&self, to: u32) -> bool {
                to == 2 || to == 3
            }
            fn migrate(&self, _to: u32, _c: &str, _docs: Vec<Map<String, Value>>, _ctx: &dyn Context) -> Result<Vec<Option<Map<String, Value>>>, MigrateError> {
                Err(MigrateError::ReturnedUndefined { index: 0 })
            }
        }
        let mut l = Layers::default();
        l.apply(&op(1, 10, Kind::Put, Some(json!({"id": "a", "title": "Milk"}))));
        let Err(e) = views(&schemas(), &Forgot, "me", &[Item { collection: "todos", id: "a", layers: &l }]) else { panic!("migrated") };
        assert_eq!(e.code(), "MIGRATION_FAILED");
        let message = e.to_string();
        assert!(message.contains("todos/a") && message.contains("return the document, or null to delete it"), "{message}");
    }
}
