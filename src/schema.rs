//! The app's schema: its version, collections, primary keys and secondary indexes.
//!
//! The schema is the contract between the app and the stored data: it decides which
//! object stores and indexes a generation has (DESIGN §4), and its version stamps every
//! op (DESIGN §6).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::SchemaError;
use crate::path::Path;

/// One schema version as the app declares it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schema {
    pub version: u32,
    pub collections: BTreeMap<String, Collection>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Collection {
    pub primary_key: String,
    #[serde(default)]
    pub indexes: BTreeMap<String, IndexFields>,
    /// Values given to top-level fields a document lacks when it is migrated to this
    /// version (a declarative change that needs no migration function).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub defaults: Map<String, Value>,
    /// Keep the losing values of concurrent writes to one field (DESIGN §11): local
    /// writes say what they saw (`Op::seen`), `db.conflicts` reads the losers and
    /// `db.resolve` settles them. Off by default: last writer wins silently.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub conflicts: bool,
    /// `indexes` with their paths parsed, built on first use: every written document's
    /// index keys need them, and parsing them per document showed up in write profiles.
    #[serde(skip)]
    parsed: ParsedIndexes,
}

/// The parsed form of a collection's indexes, a cache that never takes part in equality
/// (two collections with the same declaration are equal whether or not either parsed).
#[derive(Clone, Debug, Default)]
struct ParsedIndexes(std::sync::OnceLock<Vec<Index>>);

impl PartialEq for ParsedIndexes {
    fn eq(&self, _: &ParsedIndexes) -> bool {
        true
    }
}

/// An index over one field (`'done'`) or several (`['list', 'createdAt']`).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum IndexFields {
    One(String),
    Many(Vec<String>),
}

/// Read by hand: an untagged enum's derived reader buffers its input to try each variant,
/// machinery the wasm would carry for this one type.
impl<'de> Deserialize<'de> for IndexFields {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = IndexFields;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a field name or a list of field names")
            }

            fn visit_str<E: serde::de::Error>(self, field: &str) -> Result<IndexFields, E> {
                Ok(IndexFields::One(field.to_owned()))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<IndexFields, A::Error> {
                Vec::deserialize(serde::de::value::SeqAccessDeserializer::new(seq)).map(IndexFields::Many)
            }
        }
        d.deserialize_any(Fields)
    }
}

impl IndexFields {
    pub fn fields(&self) -> Vec<&str> {
        match self {
            IndexFields::One(f) => vec![f.as_str()],
            IndexFields::Many(fs) => fs.iter().map(String::as_str).collect(),
        }
    }
}

/// A validated index: its name and parsed field paths.
#[derive(Clone, Debug, PartialEq)]
pub struct Index {
    pub name: String,
    pub fields: Vec<Path>,
}

impl Index {
    /// The document's key in this index: its fields encoded (`key::encode`), in order.
    pub fn key_of(&self, doc: &Map<String, Value>) -> Value {
        Value::Array(self.fields.iter().map(|f| crate::key::encode(f.get(doc))).collect())
    }
}

/// The document's key in each of `indexes`, by index name.
pub fn index_keys(indexes: &[Index], doc: &Map<String, Value>) -> Map<String, Value> {
    crate::sort::object_from(indexes.iter().map(|index| (index.name.clone(), index.key_of(doc))))
}

impl Schema {
    /// Parses and validates a schema given as JSON.
    pub fn from_json(value: serde_json::Value) -> Result<Schema, SchemaError> {
        let schema: Schema = serde_json::from_value(value).map_err(|e| SchemaError::Invalid(in_js_terms(&e.to_string())))?;
        schema.validate()?;
        Ok(schema)
    }

    pub fn validate(&self) -> Result<(), SchemaError> {
        let bad = |m: String| Err(SchemaError::Invalid(m));
        if self.version == 0 {
            return bad("version must be an integer >= 1".into());
        }
        if self.collections.is_empty() {
            return bad("declare at least one collection".into());
        }
        for (name, c) in &self.collections {
            if name.is_empty() {
                return bad("collection names must not be empty".into());
            }
            if Path::parse(&c.primary_key).map(|p| p.len() != 1).unwrap_or(true) {
                return bad(format!("collection {name:?}: primaryKey must be a top-level field name"));
            }
            for (iname, fields) in &c.indexes {
                if !is_identifier(iname) {
                    return bad(format!("collection {name:?}: index name {iname:?} must be an identifier (letters, digits, _ and $)"));
                }
                let fs = fields.fields();
                if fs.is_empty() {
                    return bad(format!("collection {name:?}: index {iname:?} has no fields"));
                }
                for f in fs {
                    if Path::parse(f).is_none() {
                        return bad(format!("collection {name:?}: index {iname:?} has an invalid field path {f:?}"));
                    }
                }
            }
        }
        Ok(())
    }

    pub fn collection(&self, name: &str) -> Option<&Collection> {
        self.collections.get(name)
    }

    /// What decides the physical layout of a generation: two schemas with the same layout
    /// can share stored data without a rebuild.
    pub fn layout(&self) -> String {
        serde_json::to_string(&self.collections).expect("schema serializes")
    }
}

impl Collection {
    /// The validated indexes, in name order (parsed once per collection).
    pub fn index_list(&self) -> &[Index] {
        self.parsed.0.get_or_init(|| {
            self.indexes
                .iter()
                .map(|(name, f)| Index {
                    name: name.clone(),
                    fields: f.fields().into_iter().map(|p| Path::parse(p).expect("validated")).collect(),
                })
                .collect()
        })
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == '$')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
}


/// A serde message about a schema in the words of the JS value the app wrote: "expected
/// u32" names a Rust type, "a map" and "a sequence" are an object and an array there.
fn in_js_terms(message: &str) -> String {
    [("u32", "a whole number"), ("u64", "a whole number"), ("a map", "an object"), ("map", "object"), ("a sequence", "an array"), ("sequence", "array"), ("unit value", "null")]
        .iter()
        .fold(message.to_string(), |m, (rust, js)| m.replace(&format!(" {rust}"), &format!(" {js}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Messages about a malformed schema name JS types, never Rust ones (DESIGN §7).
    #[test]
    fn a_malformed_schema_is_described_in_js_terms() {
        let message = |v| Schema::from_json(v).unwrap_err().to_string();
        let version = message(json!({"version": "1", "collections": {"t": {"primaryKey": "id"}}}));
        assert!(version.contains("expected a whole number") && !version.contains("u32"), "{version}");
        let collections = message(json!({"version": 1, "collections": [1]}));
        assert!(collections.contains("invalid type: array, expected an object"), "{collections}");
        let collection = message(json!({"version": 1, "collections": {"t": []}}));
        assert!(!collection.contains("sequence") && !collection.contains("map"), "{collection}");
    }

    #[test]
    fn parses_the_design_example() {
        let s = Schema::from_json(json!({"version": 2, "collections": {"todos": {"primaryKey": "id",
            "indexes": {"byDone": "done", "byListDate": ["list", "createdAt"]}}}}))
        .unwrap();
        let idx = s.collection("todos").unwrap().index_list();
        assert_eq!(idx.len(), 2);
        assert_eq!(idx[0].name, "byDone");
        assert_eq!(idx[1].fields.len(), 2);
        assert_eq!(serde_json::to_value(&s).unwrap(), json!({"version": 2, "collections": {"todos": {"primaryKey": "id",
            "indexes": {"byDone": "done", "byListDate": ["list", "createdAt"]}}}}), "written back as declared");
    }

    #[test]
    fn rejects_bad_schemas() {
        for bad in [
            json!({"version": 0, "collections": {"t": {"primaryKey": "id"}}}),
            json!({"version": 1, "collections": {}}),
            json!({"version": 1, "collections": {"t": {"primaryKey": ""}}}),
            json!({"version": 1, "collections": {"t": {"primaryKey": "a.b"}}}),
            json!({"version": 1, "collections": {"t": {"primaryKey": "id", "indexes": {"bad name": "x"}}}}),
            json!({"version": 1, "collections": {"t": {"primaryKey": "id", "indexes": {"i": []}}}}),
            json!({"version": 1, "collections": {"t": {"primaryKey": "id", "indexes": {"i": "a..b"}}}}),
            json!({"version": "1", "collections": {"t": {"primaryKey": "id"}}}),
            json!({"version": 1, "collections": {"t": {"primaryKey": "id", "oops": 1}}}),
            json!({"version": 1, "collections": {"t": {"primaryKey": "id", "indexes": {"i": 5}}}}),
            json!({"version": 1, "collections": {"t": {"primaryKey": "id", "indexes": {"i": ["a", 5]}}}}),
            json!({"version": 1, "collections": {"t": {"primaryKey": "id", "indexes": {"i": {"a": 1}}}}}),
        ] {
            assert!(Schema::from_json(bad.clone()).is_err(), "{bad}");
        }
    }
}
