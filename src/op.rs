//! Operations: the unit of change that is logged, synced and merged.
//!
//! Every write becomes one op. Ops are immutable facts; documents are derived from them
//! by `merge`, so any replica that has the same set of ops has the same documents.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::clock::Stamp;
use crate::error::WriteError;
use crate::limits;
use crate::path::{is_ancestor, Path};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The whole document: fields it lacks are removed as of its timestamp.
    Put,
    /// Some fields, addressed by dotted path.
    Patch,
    /// A tombstone: hides every field older than it.
    Delete,
}

/// What identifies an op, read from its logged form without its payload: the fields a
/// sender's filter decides by (`store::RowKey`). A server decides this for every pull, over
/// rows it would otherwise decode whole.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OpKey {
    pub origin: String,
    pub origin_row: u64,
    pub ts: Stamp,
}

/// One write, as logged and as sent over the wire (DESIGN §3).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Op {
    /// Db id of the replica that wrote the op.
    pub origin: String,
    /// The row the op got in its origin's log.
    pub origin_row: u64,
    pub ts: Stamp,
    pub schema_version: u32,
    pub collection: String,
    pub id: String,
    pub kind: Kind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<Map<String, Value>>,
    /// Set on writes to a collection that keeps conflicts (`conflicts: true`, DESIGN §11):
    /// for each path the op writes (a put's top-level fields but its primary key, a
    /// patch's paths), the newest stamp its writer held there — what the write saw, so a
    /// receiver can tell a concurrent write (neither saw the other) from an ordered one.
    /// `Stamp::zero()` for a path the writer had never seen written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen: Option<BTreeMap<String, Stamp>>,
    /// A resolution: a write that settles a conflict (`db.resolve`). It is logged like any
    /// op and also in the resolution log, which every pass sends before its rows, uncapped.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resolution: bool,
}

impl Op {
    /// Checks the shape rules every op must follow, local or remote: puts carry an object
    /// whose primary key is the op's id, patches carry non-overlapping paths that leave the
    /// primary key alone, deletes carry nothing.
    pub fn check(&self, primary_key: &str) -> Result<(), WriteError> {
        match (self.kind, &self.fields) {
            (Kind::Put, Some(f)) => match f.get(primary_key) {
                Some(Value::String(id)) if *id == self.id => check_doc(f),
                _ => Err(WriteError::MissingPrimaryKey { field: primary_key.to_string() }),
            },
            (Kind::Patch, Some(f)) => check_patch(f, primary_key),
            (Kind::Delete, None) => Ok(()),
            _ => Err(WriteError::InvalidDocument(format!("{:?} op has the wrong payload", self.kind))),
        }
    }
}

/// A whole document within the nesting limit (`limits`), so it reads back.
pub fn check_doc(fields: &Map<String, Value>) -> Result<(), WriteError> {
    limits::check_doc(fields).map_err(WriteError::InvalidDocument)
}

/// The rules for a patch's field map: paths within the segment limit, and no path that
/// would nest the document past the depth limit (checked first, before any path is split
/// into parts).
pub fn check_patch(fields: &Map<String, Value>, primary_key: &str) -> Result<(), WriteError> {
    if fields.is_empty() {
        return Err(WriteError::InvalidPatch("a patch needs at least one field".into()));
    }
    limits::check_patch_depth(fields).map_err(WriteError::InvalidPatch)?;
    let mut keys: Vec<&str> = Vec::with_capacity(fields.len());
    for k in fields.keys() {
        let path = Path::parse(k).ok_or_else(|| {
            WriteError::InvalidPatch(format!("{k:?} is not a field path (use names joined by dots)"))
        })?;
        if path.parts()[0] == primary_key {
            return Err(WriteError::InvalidPatch(format!("the primary key {primary_key:?} cannot be patched")));
        }
        keys.push(k);
    }
    // Sorted, an ancestor comes right before its first descendant.
    crate::sort::sort(&mut keys);
    for w in keys.windows(2) {
        if is_ancestor(w[0], w[1]) {
            return Err(WriteError::InvalidPatch(format!("paths {:?} and {:?} overlap", w[0], w[1])));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn op(kind: Kind, fields: Option<Value>) -> Op {
        Op {
            origin: "o".into(),
            origin_row: 1,
            ts: Stamp::zero(),
            schema_version: 1,
            collection: "c".into(),
            id: "a".into(),
            kind,
            fields: fields.map(|v| v.as_object().unwrap().clone()),
            seen: None,
            resolution: false,
        }
    }

    #[test]
    fn wire_shape_matches_design() {
        let o = op(Kind::Delete, None);
        let v = serde_json::to_value(&o).unwrap();
        assert_eq!(v["kind"], "delete");
        assert_eq!(v["originRow"], 1);
        assert!(v.get("fields").is_none());
        assert_eq!(serde_json::from_value::<Op>(v).unwrap(), o);
    }

    #[test]
    fn shape_rules() {
        assert!(op(Kind::Put, Some(json!({"id": "a", "x": 1}))).check("id").is_ok());
        assert!(op(Kind::Put, Some(json!({"id": "b"}))).check("id").is_err());
        assert!(op(Kind::Put, Some(json!({"x": 1}))).check("id").is_err());
        assert!(op(Kind::Patch, Some(json!({"x.y": 1, "z": 2}))).check("id").is_ok());
        assert!(op(Kind::Patch, Some(json!({"x": 1, "x.y": 2}))).check("id").is_err());
        assert!(op(Kind::Patch, Some(json!({"id": "q"}))).check("id").is_err());
        assert!(op(Kind::Patch, Some(json!({}))).check("id").is_err());
        assert!(op(Kind::Delete, Some(json!({}))).check("id").is_err());
    }
}
