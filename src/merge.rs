//! Per-field last-writer-wins merge (DESIGN §3).
//!
//! A document's state is a set of registers, one per written path: the root register
//! (`""`, written by put and delete) and one per patched dotted path. A register at path P
//! with stamp t wins over every older register at P or below it; a register below P
//! survives only if it is newer than P's. Applying registers this way is commutative,
//! associative and idempotent, which is what lets replicas converge whatever order ops
//! arrive in.
//!
//! The state keeps only the materialized document plus each live register's stamp: a
//! surviving register's value is always visible in the materialized document, so it can
//! be re-applied from there when an older ancestor lands later.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::clock::Stamp;
use crate::op::{Kind, Op};
use crate::path::Path;

/// The path of the root register.
pub const ROOT: &str = "";

/// Everything a replica knows about one document.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DocState {
    /// Materialized fields, without regard to whether the document exists.
    pub doc: Map<String, Value>,
    /// Stamp of every live register, by dotted path (`""` is the root).
    pub stamps: BTreeMap<String, Stamp>,
    /// Whether the root register is a tombstone.
    pub deleted: bool,
    /// Conflict tracking (`conflicts: true` collections, DESIGN §11): for each written
    /// path, the writes to it that no other write there saw — the winner and the losing
    /// values of concurrent writes. Only ops that say what they saw (`Op::seen`) take part.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub conflicts: BTreeMap<String, Vec<Contender>>,
}

/// What merging another state changed: registers that now hold its values, and writes
/// newly kept by conflict tracking.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Merged {
    pub registers: Vec<(String, Stamp, Option<Value>)>,
    pub contenders: Vec<(String, Contender)>,
}

impl Merged {
    pub fn len(&self) -> usize {
        self.registers.len() + self.contenders.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One write to a path, as conflict tracking keeps it: its stamp, the newest stamp its
/// writer held at that path, and the value it wrote.
///
/// A write *saw* another when its `seen` is at least the other's stamp. The set kept for
/// a path is the writes no other write saw; since a writer's stamp is newer than anything
/// it saw, "saw" is transitive, so the set is the same whatever order writes arrive in
/// (a write dropped because one saw it stays covered by whatever later saw that one).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Contender {
    #[serde(rename = "t")]
    pub ts: Stamp,
    #[serde(rename = "s", default, skip_serializing_if = "Option::is_none")]
    pub seen: Option<Stamp>,
    #[serde(rename = "v", default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
}

impl Contender {
    fn saw(&self, other: &Contender) -> bool {
        self.seen.as_ref().is_some_and(|s| *s >= other.ts)
    }
}

/// Adds a write to one path's set of unseen writes. Returns whether the set changed.
fn contend(set: &mut Vec<Contender>, c: Contender) -> bool {
    if set.iter().any(|x| x.ts == c.ts || x.saw(&c)) {
        return false;
    }
    set.retain(|x| !c.saw(x));
    set.push(c);
    crate::sort::sort_by(set, |a, b| b.ts.cmp(&a.ts));
    set.truncate(crate::limits::MAX_CONTENDERS);
    true
}

/// A document's fields as apps see them: the primary key is always the document's id,
/// whatever a write put there (`DocState::materialize`, and `rebuild::stored_doc`, which
/// moves the fields in rather than copying them).
pub fn with_primary_key(mut fields: Map<String, Value>, primary_key: &str, id: &str) -> Map<String, Value> {
    fields.insert(primary_key.to_string(), Value::String(id.to_string()));
    fields
}

impl DocState {
    /// Whether the document is visible: something was written and not hidden by a delete.
    pub fn exists(&self) -> bool {
        match self.stamps.len() {
            0 => false,
            1 => !self.deleted,
            _ => true,
        }
    }

    /// The document as apps see it, with its primary key, or `None` when it doesn't exist.
    pub fn materialize(&self, primary_key: &str, id: &str) -> Option<Map<String, Value>> {
        self.exists().then(|| with_primary_key(self.doc.clone(), primary_key, id))
    }

    /// Merges one op into the state. Returns whether anything changed.
    pub fn apply(&mut self, op: &Op) -> bool {
        let tracked = self.track(op);
        tracked | self.apply_lww(op)
    }

    /// Adds a tracked op's writes to the sets of unseen writes: one for each path its
    /// `seen` names (a put's top-level fields, a patch's paths; never the primary key).
    fn track(&mut self, op: &Op) -> bool {
        let (Some(seen), Some(fields)) = (&op.seen, &op.fields) else { return false };
        let mut changed = false;
        for (path, saw) in seen {
            let Some(value) = fields.get(path) else { continue };
            let c = Contender { ts: op.ts.clone(), seen: (*saw != Stamp::zero()).then(|| saw.clone()), value: Some(value.clone()) };
            changed |= contend(self.conflicts.entry(path.clone()).or_default(), c);
        }
        changed
    }

    /// What a write at `path` saw in this state: the newest stamp among the writes kept
    /// for it, or else the stamp of the register that decides its value.
    pub fn seen_at(&self, path: &str) -> Option<Stamp> {
        let kept = self.conflicts.get(path).and_then(|set| set.first()).map(|c| &c.ts);
        kept.into_iter().chain(self.deciding(path)).max().cloned()
    }

    /// The losing values of concurrent writes, by path: for each path whose set of unseen
    /// writes holds more than one and whose newest is still what decides the path's value
    /// (a later untracked put or delete may have replaced it), the others' values that
    /// differ from it, newest first (two writers who wrote the same value do not conflict).
    pub fn losers(&self) -> Map<String, Value> {
        let mut out = Map::new();
        if !self.exists() {
            return out;
        }
        for (path, set) in &self.conflicts {
            let Some((winner, rest)) = set.split_first() else { continue };
            if rest.is_empty() || self.deciding(path) != Some(&winner.ts) {
                continue;
            }
            let mut values: Vec<Value> = Vec::new();
            for v in rest.iter().map(|c| c.value.clone().unwrap_or(Value::Null)) {
                if Some(&v) != winner.value.as_ref() && !values.contains(&v) {
                    values.push(v);
                }
            }
            if !values.is_empty() {
                out.insert(path.clone(), Value::Array(values));
            }
        }
        out
    }

    /// The stamp of the register that decides `path`'s value: the newest of its own and
    /// its ancestors'.
    fn deciding(&self, path: &str) -> Option<&Stamp> {
        std::iter::once(path)
            .chain(path.match_indices('.').map(|(i, _)| &path[..i]))
            .chain(std::iter::once(ROOT))
            .filter_map(|p| self.stamps.get(p))
            .max()
    }

    fn apply_lww(&mut self, op: &Op) -> bool {
        match op.kind {
            Kind::Put => {
                let fields = op.fields.clone().unwrap_or_default();
                self.apply_register(ROOT, &op.ts, Some(Value::Object(fields)))
            }
            Kind::Delete => self.apply_register(ROOT, &op.ts, None),
            Kind::Patch => {
                let mut changed = false;
                for (path, value) in op.fields.iter().flatten() {
                    changed |= self.apply_register(path, &op.ts, Some(value.clone()));
                }
                changed
            }
        }
    }

    /// The stamp of the newest register, i.e. when the document last changed.
    pub fn newest(&self) -> Option<&Stamp> {
        self.stamps.values().max()
    }

    /// Every live register as (path, stamp, value); values are read from the materialized
    /// document, which always shows a live register's value (`None` for a tombstone).
    pub fn registers(&self) -> Vec<(String, Stamp, Option<Value>)> {
        let mut out: Vec<_> = self
            .stamps
            .iter()
            .map(|(p, s)| {
                let v = if p == ROOT {
                    (!self.deleted).then(|| Value::Object(self.doc.clone()))
                } else {
                    Some(Path::parse(p).and_then(|pp| pp.get(&self.doc).cloned()).unwrap_or(Value::Null))
                };
                (p.clone(), s.clone(), v)
            })
            .collect();
        crate::sort::sort_by(&mut out, |a, b| a.1.cmp(&b.1));
        out
    }

    /// Whether the state is one root register and nothing else (no conflict tracking; no
    /// fields when deleted): exactly what applying that register to an empty state gives,
    /// so merging it into an empty state may move it in as it is (`Layers::merge_owned`).
    pub fn is_single_root(&self) -> bool {
        self.stamps.len() == 1 && self.stamps.contains_key(ROOT) && self.conflicts.is_empty() && !(self.deleted && !self.doc.is_empty())
    }

    /// The whole state as what merging it into an empty one changes.
    pub fn everything(&self) -> Merged {
        let contenders = self.conflicts.iter().flat_map(|(p, set)| set.iter().map(move |c| (p.clone(), c.clone()))).collect();
        Merged { registers: self.registers(), contenders }
    }

    /// Merges another replica's state of the same document (a snapshot), register by
    /// register (and its conflict tracking), and returns what changed this state — what must be logged
    /// so the change can be forwarded.
    pub fn merge_state(&mut self, other: &DocState) -> Merged {
        let registers = other.registers().into_iter().filter(|(p, s, v)| self.apply_register(p, s, v.clone())).collect();
        let mut contenders = Vec::new();
        for (path, set) in &other.conflicts {
            for c in set {
                if contend(self.conflicts.entry(path.clone()).or_default(), c.clone()) {
                    contenders.push((path.clone(), c.clone()));
                }
            }
        }
        Merged { registers, contenders }
    }

    /// Rebuilds ops equivalent to what merging a state changed: registers as the root's
    /// put or delete and patches grouped by stamp, then each newly kept conflict write as
    /// a patch of its path that says what it saw. Their origin is the stamp's writer; their
    /// origin row is 0 because a state no longer knows the op that wrote it.
    pub fn registers_to_ops(collection: &str, id: &str, version: u32, merged: Merged) -> Vec<Op> {
        let mut ops: Vec<Op> = Vec::new();
        let rebuilt = |ts: Stamp, kind, fields, seen| Op {
            origin: ts.node.clone(),
            origin_row: 0,
            ts,
            schema_version: version,
            collection: collection.to_string(),
            id: id.to_string(),
            kind,
            fields,
            seen,
            resolution: false,
        };
        for (path, ts, value) in merged.registers {
            let (kind, fields) = if path == ROOT {
                match value {
                    Some(Value::Object(m)) => (Kind::Put, Some(m)),
                    _ => (Kind::Delete, None),
                }
            } else {
                if let Some(last) = ops.last_mut() {
                    if last.kind == Kind::Patch && last.ts == ts {
                        last.fields.get_or_insert_with(Map::new).insert(path, value.unwrap_or(Value::Null));
                        continue;
                    }
                }
                let mut m = Map::new();
                m.insert(path, value.unwrap_or(Value::Null));
                (Kind::Patch, Some(m))
            };
            ops.push(rebuilt(ts, kind, fields, None));
        }
        for (path, c) in merged.contenders {
            let seen = crate::sort::map_from([(path.clone(), c.seen.unwrap_or_else(Stamp::zero))]);
            let fields = crate::sort::object_from([(path, c.value.unwrap_or(Value::Null))]);
            ops.push(rebuilt(c.ts, Kind::Patch, Some(fields), Some(seen)));
        }
        ops
    }

    pub(crate) fn apply_register(&mut self, path: &str, ts: &Stamp, value: Option<Value>) -> bool {
        if self.dominated(path, ts) {
            return false;
        }
        // Registers below `path` that are newer than this write survive it.
        let below: Vec<String> = self.descendants(path).cloned().collect();
        let mut keep: Vec<(Stamp, String, Value)> = Vec::new();
        for p in below {
            let stamp = self.stamps.remove(&p).expect("listed");
            if stamp > *ts {
                if let Some(v) = Path::parse(&p).and_then(|pp| pp.get(&self.doc).cloned()) {
                    keep.push((stamp, p, v));
                }
            }
        }
        self.stamps.insert(path.to_string(), ts.clone());
        if path == ROOT {
            self.deleted = value.is_none();
            self.doc = match value {
                Some(Value::Object(m)) => m,
                _ => Map::new(),
            };
        } else {
            let p = Path::parse(path).expect("checked op paths");
            p.set(&mut self.doc, value.unwrap_or(Value::Null));
        }
        crate::sort::sort_by(&mut keep, |a, b| a.0.cmp(&b.0));
        for (stamp, p, v) in keep {
            Path::parse(&p).expect("stored path").set(&mut self.doc, v);
            self.stamps.insert(p, stamp);
        }
        true
    }

    /// Whether a write at `path` stamped `ts` loses to what is already there: the same
    /// path or an ancestor holds a stamp at least as new.
    fn dominated(&self, path: &str, ts: &Stamp) -> bool {
        let at = |p: &str| self.stamps.get(p).is_some_and(|s| s >= ts);
        if at(path) || (path != ROOT && at(ROOT)) {
            return true;
        }
        path.match_indices('.').any(|(i, _)| at(&path[..i]))
    }

    fn descendants<'a>(&'a self, path: &'a str) -> Box<dyn Iterator<Item = &'a String> + 'a> {
        if path == ROOT {
            Box::new(self.stamps.keys().filter(|k| !k.is_empty()))
        } else {
            let prefix = format!("{path}.");
            Box::new(
                self.stamps
                    .range(prefix.clone()..)
                    .map(|(k, _)| k)
                    .take_while(move |k| k.starts_with(&prefix)),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn st(wall: u64) -> Stamp {
        Stamp { version: 1, wall, counter: 0, node: "n".into() }
    }

    fn op(wall: u64, kind: Kind, fields: Option<Value>) -> Op {
        Op {
            origin: "o".into(),
            origin_row: wall,
            ts: st(wall),
            schema_version: 1,
            collection: "c".into(),
            id: "a".into(),
            kind,
            fields: fields.map(|v| v.as_object().unwrap().clone()),
            seen: None,
            resolution: false,
        }
    }

    fn doc(s: &DocState) -> Option<Value> {
        s.materialize("id", "a").map(Value::Object)
    }

    #[test]
    fn newer_field_wins_in_any_order() {
        let a = op(1, Kind::Put, Some(json!({"id": "a", "x": 1, "y": 1})));
        let b = op(2, Kind::Patch, Some(json!({"x": 2})));
        let mut s1 = DocState::default();
        s1.apply(&a);
        s1.apply(&b);
        let mut s2 = DocState::default();
        s2.apply(&b);
        s2.apply(&a);
        assert_eq!(s1, s2);
        assert_eq!(doc(&s1), Some(json!({"id": "a", "x": 2, "y": 1})));
    }

    #[test]
    fn put_removes_fields_it_lacks_but_not_newer_ones() {
        let mut s = DocState::default();
        s.apply(&op(1, Kind::Put, Some(json!({"id": "a", "x": 1, "y": 1}))));
        s.apply(&op(3, Kind::Patch, Some(json!({"z": 3}))));
        s.apply(&op(2, Kind::Put, Some(json!({"id": "a", "x": 9}))));
        assert_eq!(doc(&s), Some(json!({"id": "a", "x": 9, "z": 3})));
    }

    #[test]
    fn delete_hides_older_fields_and_later_writes_resurrect() {
        let mut s = DocState::default();
        s.apply(&op(1, Kind::Put, Some(json!({"id": "a", "x": 1, "y": 1}))));
        s.apply(&op(2, Kind::Delete, None));
        assert_eq!(doc(&s), None);
        s.apply(&op(3, Kind::Patch, Some(json!({"y": 5}))));
        assert_eq!(doc(&s), Some(json!({"id": "a", "y": 5})));
        // A patch older than the delete stays hidden.
        assert!(!s.apply(&op(1, Kind::Patch, Some(json!({"x": 7})))));
        assert_eq!(doc(&s), Some(json!({"id": "a", "y": 5})));
    }

    #[test]
    fn nested_paths_merge_per_leaf() {
        let mut s = DocState::default();
        s.apply(&op(1, Kind::Put, Some(json!({"id": "a", "addr": {"city": "A", "zip": "1"}}))));
        s.apply(&op(3, Kind::Patch, Some(json!({"addr.city": "B"}))));
        s.apply(&op(2, Kind::Patch, Some(json!({"addr": {"city": "C"}}))));
        assert_eq!(doc(&s), Some(json!({"id": "a", "addr": {"city": "B"}})));
    }

    #[test]
    fn merging_a_state_equals_merging_its_ops() {
        let a_ops = [op(1, Kind::Put, Some(json!({"id": "a", "x": 1, "b": {"q": 0}}))), op(4, Kind::Patch, Some(json!({"b.q": 5})))];
        let b_ops = [op(2, Kind::Patch, Some(json!({"b": {"y": 1}}))), op(3, Kind::Delete, None), op(5, Kind::Patch, Some(json!({"z": 1})))];
        let mut all = DocState::default();
        let mut a = DocState::default();
        let mut b = DocState::default();
        for o in &a_ops { a.apply(o); all.apply(o); }
        for o in &b_ops { b.apply(o); all.apply(o); }
        let changed = a.merge_state(&b);
        assert_eq!(doc(&a), doc(&all));
        assert_eq!(a.stamps, all.stamps);
        // The changed registers, replayed as ops onto the old state, give the same result.
        let ops = DocState::registers_to_ops("c", "a", 1, changed);
        let mut replay = DocState::default();
        for o in &a_ops { replay.apply(o); }
        for o in &ops { replay.apply(o); }
        assert_eq!(replay.stamps, all.stamps);
        assert_eq!(doc(&replay), doc(&all));
    }

    fn tracked(wall: u64, node: &str, fields: Value, saw: u64) -> Op {
        let fields = fields.as_object().unwrap().clone();
        let seen = fields.keys().filter(|k| *k != "id").map(|k| (k.clone(), if saw == 0 { Stamp::zero() } else { st(saw) })).collect();
        Op { ts: Stamp { node: node.into(), ..st(wall) }, kind: if fields.contains_key("id") { Kind::Put } else { Kind::Patch }, fields: Some(fields), seen: Some(seen), ..op(wall, Kind::Patch, None) }
    }

    #[test]
    fn concurrent_writes_keep_the_loser_and_a_write_that_saw_both_clears_it() {
        let base = tracked(1, "n", json!({"id": "a", "t": "x"}), 0);
        let a = tracked(2, "a", json!({"t": "from a"}), 1);
        let b = tracked(3, "b", json!({"t": "from b", "u": 1}), 1);
        let mut s = DocState::default();
        for o in [&b, &base, &a] {
            s.apply(o);
        }
        assert_eq!(Value::Object(s.losers()), json!({"t": ["from a"]}), "u and id were written once");
        // A later write that saw b (the newest) saw a too.
        let c = tracked(4, "c", json!({"t": "merged"}), 3);
        assert!(s.apply(&c));
        assert_eq!(s.losers(), Map::new());
        assert_eq!(s.conflicts["t"].len(), 1);
        // A stale concurrent write arriving now stays out: c saw past it.
        assert!(!s.apply(&tracked(2, "z", json!({"t": "late"}), 1)), "a write c saw changes nothing");
    }

    #[test]
    fn the_same_value_written_twice_is_no_conflict_and_untracked_writes_hide_nothing() {
        let mut s = DocState::default();
        s.apply(&tracked(1, "n", json!({"id": "a", "t": "x"}), 0));
        s.apply(&tracked(2, "a", json!({"t": "same"}), 1));
        s.apply(&tracked(3, "b", json!({"t": "same"}), 1));
        assert_eq!(s.losers(), Map::new(), "both wrote the same value");
        s.apply(&tracked(4, "c", json!({"t": "other"}), 1));
        assert_eq!(Value::Object(s.losers()), json!({"t": ["same"]}), "one entry per distinct losing value");
        // A newer untracked put replaces the field: no conflict is shown for a value no
        // tracked write decides any more.
        s.apply(&op(9, Kind::Put, Some(json!({"id": "a", "t": "plain"}))));
        assert_eq!(s.losers(), Map::new());
        // Nothing is shown for a deleted document.
        let mut d = DocState::default();
        d.apply(&tracked(2, "a", json!({"t": 1}), 0));
        d.apply(&tracked(3, "b", json!({"t": 2}), 0));
        assert_eq!(d.losers().len(), 1);
        d.apply(&op(9, Kind::Delete, None));
        assert_eq!(d.losers(), Map::new());
    }

    #[test]
    fn applying_twice_changes_nothing() {
        let mut s = DocState::default();
        let o = op(1, Kind::Patch, Some(json!({"x": 1})));
        assert!(s.apply(&o));
        assert!(!s.apply(&o));
    }
}
