//! The bounds on what a replica accepts, locally or from a peer (DESIGN §5, "Bounded
//! metadata and input"): sizes of ids, collection names and session strings, the number of
//! segments in a field path, how deeply a document may nest, how many entries a forwarded
//! table or a session list may carry, and how far ahead of the local wall clock a stamp
//! may be.
//!
//! Why these exist: a document is stored as JSON and read back by a JSON reader that stops
//! at 128 levels (serde_json's recursion limit), and dropping or printing a deeply nested
//! value recurses. A patch path of many segments nests its value that deep, so without a
//! bound one write could store a document no replica can read again — or crash a server
//! outright. Every check here is iterative (no input drives recursion), and every limit is
//! well inside what the readers accept, so nothing that passes can fail to read back.

use serde_json::{Map, Value};

/// Most segments in a dotted field path (`a.b.c` has 3).
pub const MAX_PATH_SEGMENTS: usize = 32;
/// Most levels of nesting in a stored document, counting the document itself as 1: a
/// patch's path segments count towards it together with its value's own nesting. Well
/// under serde_json's reading limit of 128.
pub const MAX_DEPTH: usize = 64;
/// Longest document id, in bytes.
pub const MAX_ID_BYTES: usize = 1024;
/// Longest collection name, in bytes.
pub const MAX_COLLECTION_BYTES: usize = 128;
/// Longest db id or session id a peer may use, in bytes.
pub const MAX_NAME_BYTES: usize = 64;
/// Most entries in a forwarded `incoming` table (one per replica the sender has merged
/// from directly or transitively).
pub const MAX_TABLE_ENTRIES: usize = 10_000;
/// Most entries a sender forwards in one table: the origins whose ops it merged most
/// recently. A server with thousands of clients would otherwise send every client a
/// table of every other client at every pull (as many bytes as the rows themselves at
/// 2,000 clients) and make each client store a record per other client. An entry left
/// out only fast-forwards less: the receiver's per-origin marks still skip what it holds,
/// and anything else is re-sent, which merging makes harmless.
pub const MAX_FORWARDED: usize = 256;
/// Most session entries (histories, candidates, marks) one message may carry.
pub const MAX_SESSIONS: usize = 1_000;
/// Most writes conflict tracking keeps for one path (`merge::Contender`): the newest
/// unseen ones. Beyond it the oldest losing values are forgotten, never the winner.
pub const MAX_CONTENDERS: usize = 32;
/// Default `maxClockSkew`: how far ahead of the receiver's wall clock a received stamp
/// may be, in milliseconds (24 h).
pub const DEFAULT_MAX_CLOCK_SKEW_MS: u64 = 24 * 60 * 60 * 1000;

/// How many levels `value` nests: a scalar is 0, `{}` and `[]` are 1, `{"a": {}}` is 2.
/// Iterative, so any value can be measured without deep recursion.
pub fn depth(value: &Value) -> usize {
    let mut deepest = 0;
    let mut stack: Vec<(&Value, usize)> = vec![(value, 0)];
    while let Some((v, d)) = stack.pop() {
        match v {
            Value::Object(m) => {
                deepest = deepest.max(d + 1);
                stack.extend(m.values().map(|c| (c, d + 1)));
            }
            Value::Array(a) => {
                deepest = deepest.max(d + 1);
                stack.extend(a.iter().map(|c| (c, d + 1)));
            }
            _ => deepest = deepest.max(d),
        }
    }
    deepest
}

/// The nesting of a whole document given as its field map (the map itself is level 1).
pub fn doc_depth(fields: &Map<String, Value>) -> usize {
    1 + fields.values().map(depth).max().unwrap_or(0)
}

/// Why a value is over a limit (the caller wraps it in its own error kind).
pub fn check_doc(fields: &Map<String, Value>) -> Result<(), String> {
    let d = doc_depth(fields);
    if d > MAX_DEPTH {
        return Err(format!("the document nests {d} levels deep; the limit is {MAX_DEPTH}"));
    }
    Ok(())
}

/// A patch: each path within `MAX_PATH_SEGMENTS`, and each path's segments plus its
/// value's nesting within `MAX_DEPTH` (that is how deep the stored document becomes).
pub fn check_patch_depth(fields: &Map<String, Value>) -> Result<(), String> {
    for (k, v) in fields {
        let segments = k.split('.').count();
        if segments > MAX_PATH_SEGMENTS {
            return Err(format!("the path {:?}… has {segments} segments; the limit is {MAX_PATH_SEGMENTS}", truncated(k)));
        }
        let d = segments + depth(v);
        if d > MAX_DEPTH {
            return Err(format!("the path {:?}… would nest the document {d} levels deep; the limit is {MAX_DEPTH}", truncated(k)));
        }
    }
    Ok(())
}

/// A document id: non-empty, at most `MAX_ID_BYTES`.
pub fn check_id(id: &str) -> Result<(), String> {
    non_empty_within("document id", id, MAX_ID_BYTES)
}

/// A collection name: non-empty, at most `MAX_COLLECTION_BYTES`.
pub fn check_collection(name: &str) -> Result<(), String> {
    non_empty_within("collection name", name, MAX_COLLECTION_BYTES)
}

fn non_empty_within(what: &str, s: &str, max: usize) -> Result<(), String> {
    if s.is_empty() {
        return Err(format!("a {what} is a non-empty string"));
    }
    if s.len() > max {
        return Err(format!("a {what} of {} bytes is over the limit of {max}", s.len()));
    }
    Ok(())
}

/// A db id or session id received from a peer: non-empty, at most `MAX_NAME_BYTES`.
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(format!("{what} must be 1 to {MAX_NAME_BYTES} bytes (got {})", name.len()));
    }
    Ok(())
}

/// A received stamp's wall time against the local wall clock `now_ms`.
pub fn check_skew(wall: u64, now_ms: u64, max_skew_ms: u64) -> Result<(), String> {
    if wall > now_ms.saturating_add(max_skew_ms) {
        return Err(format!(
            "a stamp {} s ahead of this replica's clock is over maxClockSkew ({} s): the writer's clock is wrong",
            (wall - now_ms) / 1000,
            max_skew_ms / 1000
        ));
    }
    Ok(())
}

/// The start of a long string, for error messages.
fn truncated(s: &str) -> &str {
    let mut end = s.len().min(40);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn depth_counts_levels_without_recursion() {
        assert_eq!(depth(&json!(1)), 0);
        assert_eq!(depth(&json!({})), 1);
        assert_eq!(depth(&json!({"a": [1, {"b": 2}]})), 3);
        // Far deeper than any recursive walk would survive on a small stack.
        let mut v = json!(0);
        for _ in 0..100_000 {
            v = Value::Array(vec![v]);
        }
        assert_eq!(depth(&v), 100_000);
        // Dropping it must not recurse either: take it apart by hand.
        let mut cur = v;
        while let Value::Array(mut a) = cur {
            cur = a.pop().unwrap_or(Value::Null);
        }
    }

    #[test]
    fn patch_paths_and_documents_are_bounded() {
        let deep_path = vec!["a"; MAX_PATH_SEGMENTS + 1].join(".");
        let ok_path = vec!["a"; MAX_PATH_SEGMENTS].join(".");
        let m = |k: &str, v: Value| json!({ (k): v }).as_object().unwrap().clone();
        assert!(check_patch_depth(&m(&deep_path, json!(1))).is_err());
        assert!(check_patch_depth(&m(&ok_path, json!(1))).is_ok());
        // Path and value together.
        let mut v = json!(1);
        for _ in 0..(MAX_DEPTH - MAX_PATH_SEGMENTS + 1) {
            v = json!({ "x": v });
        }
        assert!(check_patch_depth(&m(&ok_path, v)).is_err());
        let mut doc = json!(1);
        for _ in 0..=MAX_DEPTH {
            doc = json!({ "x": doc });
        }
        assert!(check_doc(doc.as_object().unwrap()).is_err());
        assert!(check_doc(doc["x"].as_object().unwrap()).is_ok());
    }

    #[test]
    fn sizes_and_skew() {
        assert!(check_id("").is_err() && check_id(&"x".repeat(MAX_ID_BYTES + 1)).is_err() && check_id("a").is_ok());
        assert!(check_collection(&"c".repeat(MAX_COLLECTION_BYTES + 1)).is_err());
        assert!(check_name("session", "").is_err() && check_name("session", "s1").is_ok());
        let day = DEFAULT_MAX_CLOCK_SKEW_MS;
        assert!(check_skew(1_000 + day, 1_000, day).is_ok());
        assert!(check_skew(1_001 + day, 1_000, day).is_err());
        assert!(check_skew(u64::MAX, u64::MAX - 5, day).is_ok());
    }
}
