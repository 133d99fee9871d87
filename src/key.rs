//! Index keys: how field values become keys that IndexedDB can index and sort.
//!
//! IndexedDB cannot index booleans or null, and orders types as number < string < array.
//! Every value is therefore encoded as a small array whose first element is a type tag, so
//! all JSON values are indexable and sort in one fixed order:
//! missing `[0]` < null `[1]` < false `[2,0]` < true `[2,1]` < numbers `[3,n]` <
//! strings `[4,s]` < objects and arrays `[5, canonical JSON]`.
//! An index key is the array of its fields' encodings. `cmp` reproduces IndexedDB's key
//! order exactly, so the in-memory store and the browser store return identical results.

use std::cmp::Ordering;

use serde_json::{json, Value};

pub const TAG_MISSING: u8 = 0;
pub const TAG_NULL: u8 = 1;
pub const TAG_BOOL: u8 = 2;
pub const TAG_NUMBER: u8 = 3;
pub const TAG_STRING: u8 = 4;
pub const TAG_JSON: u8 = 5;

/// An element larger than every encoded value: appended to a key prefix it makes an upper
/// bound that covers every longer key with that prefix.
pub fn top() -> Value {
    json!([9])
}

/// Encodes one field value (`None` when the field is missing).
pub fn encode(v: Option<&Value>) -> Value {
    match v {
        None => json!([TAG_MISSING]),
        Some(Value::Null) => json!([TAG_NULL]),
        Some(Value::Bool(b)) => json!([TAG_BOOL, *b as u8]),
        Some(Value::Number(n)) => json!([TAG_NUMBER, n]),
        Some(Value::String(s)) => json!([TAG_STRING, s]),
        // serde_json maps are sorted, so this text is canonical.
        Some(other) => json!([TAG_JSON, other.to_string()]),
    }
}

/// Whether `key` is `encode(v)`, told without building it: a written record's index keys
/// are checked against its document's on every write (`rebuild::has_index_keys`).
pub fn is_encoding(key: &Value, v: Option<&Value>) -> bool {
    let Value::Array(parts) = key else { return false };
    match (v, parts.as_slice()) {
        (None, [t]) => *t == TAG_MISSING,
        (Some(Value::Null), [t]) => *t == TAG_NULL,
        (Some(Value::Bool(b)), [t, x]) => *t == TAG_BOOL && *x == u8::from(*b),
        (Some(n @ Value::Number(_)), [t, x]) => *t == TAG_NUMBER && x == n,
        (Some(Value::String(s)), [t, x]) => *t == TAG_STRING && x.as_str() == Some(s.as_str()),
        (Some(other @ (Value::Array(_) | Value::Object(_))), [t, x]) => *t == TAG_JSON && x.as_str() == Some(other.to_string().as_str()),
        _ => false,
    }
}

/// The type tag of an encoded value.
pub fn tag(encoded: &Value) -> u8 {
    encoded.get(0).and_then(Value::as_u64).unwrap_or(TAG_MISSING as u64) as u8
}

/// IndexedDB's key order over the keys Tidemark produces: number < string < array; arrays
/// element by element, a prefix first; strings by UTF-16 code unit.
pub fn cmp(a: &Value, b: &Value) -> Ordering {
    fn rank(v: &Value) -> u8 {
        match v {
            Value::Number(_) => 0,
            Value::String(_) => 1,
            Value::Array(_) => 2,
            _ => 3,
        }
    }
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap_or(0.0), y.as_f64().unwrap_or(0.0));
            x.partial_cmp(&y).unwrap_or(Ordering::Equal)
        }
        (Value::String(x), Value::String(y)) => cmp_utf16(x, y),
        (Value::Array(x), Value::Array(y)) => {
            for (p, q) in x.iter().zip(y) {
                match cmp(p, q) {
                    Ordering::Equal => continue,
                    o => return o,
                }
            }
            x.len().cmp(&y.len())
        }
        _ => rank(a).cmp(&rank(b)),
    }
}

/// Compares strings the way IndexedDB (and JavaScript) does: by UTF-16 code units.
pub fn cmp_utf16(a: &str, b: &str) -> Ordering {
    if a.is_ascii() && b.is_ascii() {
        return a.cmp(b);
    }
    a.encode_utf16().cmp(b.encode_utf16())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `is_encoding` says exactly what comparing with `encode` says, for every kind of
    /// value against the encodings of every other.
    #[test]
    fn is_encoding_agrees_with_encode() {
        let vals = [None, Some(json!(null)), Some(json!(false)), Some(json!(true)), Some(json!(0)), Some(json!(-5)), Some(json!(2.5)), Some(json!(1)), Some(json!("")), Some(json!("a")), Some(json!("1")), Some(json!([1])), Some(json!({"a": 1})), Some(json!([]))];
        let mut keys: Vec<Value> = vals.iter().map(|v| encode(v.as_ref())).collect();
        keys.extend([json!([]), json!("x"), json!([TAG_BOOL, 1, 0]), json!([TAG_STRING]), json!([TAG_NUMBER, "1"]), json!([TAG_JSON, [1]])]);
        for v in &vals {
            for k in &keys {
                assert_eq!(is_encoding(k, v.as_ref()), *k == encode(v.as_ref()), "{k} against {v:?}");
            }
        }
    }

    #[test]
    fn types_sort_in_a_fixed_order() {
        let vals = [None, Some(json!(null)), Some(json!(false)), Some(json!(true)), Some(json!(-5)),
            Some(json!(2.5)), Some(json!("")), Some(json!("b")), Some(json!({"a": 1}))];
        for w in vals.windows(2) {
            assert_eq!(cmp(&encode(w[0].as_ref()), &encode(w[1].as_ref())), Ordering::Less, "{w:?}");
        }
        assert_eq!(cmp(&encode(Some(&json!({"a": 1}))), &top()), Ordering::Less);
    }

    #[test]
    fn strings_compare_by_utf16_units() {
        // U+FF5E (one unit 0xFF5E) sorts after U+1F600 (surrogates 0xD83D...) in UTF-16.
        assert_eq!(cmp_utf16("\u{1F600}", "\u{FF5E}"), Ordering::Less);
        assert_eq!("\u{1F600}".cmp("\u{FF5E}"), Ordering::Greater);
    }

    #[test]
    fn prefixes_sort_first() {
        assert_eq!(cmp(&json!([[3, 1]]), &json!([[3, 1], [4, "a"]])), Ordering::Less);
        assert_eq!(cmp(&json!([[3, 1], [4, "z"]]), &json!([[3, 1], top()])), Ordering::Less);
    }
}
