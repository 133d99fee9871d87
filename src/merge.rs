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
        if !self.exists() {
            return None;
        }
        let mut doc = self.doc.clone();
        doc.insert(primary_key.to_string(), Value::String(id.to_string()));
        Some(doc)
    }

    /// Merges one op into the state. Returns whether anything changed.
    pub fn apply(&mut self, op: &Op) -> bool {
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
        out.sort_by(|a, b| a.1.cmp(&b.1));
        out
    }

    /// Merges another replica's state of the same document (a snapshot), register by
    /// register, and returns the registers that changed this state — what must be logged
    /// so the change can be forwarded.
    pub fn merge_state(&mut self, other: &DocState) -> Vec<(String, Stamp, Option<Value>)> {
        other
            .registers()
            .into_iter()
            .filter(|(p, s, v)| self.apply_register(p, s, v.clone()))
            .collect()
    }

    /// Rebuilds ops equivalent to a set of registers: the root as a put or delete, other
    /// registers grouped by stamp into patches. Their origin is the stamp's writer; their
    /// origin row is 0 because a state no longer knows the op that wrote it.
    pub fn registers_to_ops(collection: &str, id: &str, version: u32, regs: Vec<(String, Stamp, Option<Value>)>) -> Vec<Op> {
        let mut ops: Vec<Op> = Vec::new();
        for (path, ts, value) in regs {
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
            ops.push(Op {
                origin: ts.node.clone(),
                origin_row: 0,
                ts,
                schema_version: version,
                collection: collection.to_string(),
                id: id.to_string(),
                kind,
                fields,
            });
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
        keep.sort_by(|a, b| a.0.cmp(&b.0));
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

    #[test]
    fn applying_twice_changes_nothing() {
        let mut s = DocState::default();
        let o = op(1, Kind::Patch, Some(json!({"x": 1})));
        assert!(s.apply(&o));
        assert!(!s.apply(&o));
    }
}
