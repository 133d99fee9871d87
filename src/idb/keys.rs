//! Index keys as single strings for the native IndexedDB indexes.
//!
//! The engine encodes an index key as an array of `[tag, value]` elements (see `key`).
//! IndexedDB can index that directly, but every record then carries several small arrays
//! that each `getAll` must rebuild as JS objects, which made index queries about a third
//! slower than reading plain documents. One string per key costs one string instead.
//!
//! The string form preserves order exactly: for any two engine keys (documents' keys and
//! the planner's bounds alike), comparing the strings by UTF-16 code unit, as IndexedDB
//! does, gives what `key::cmp` gives for the arrays. So an index scan returns the same
//! documents in the same order as the in-memory store.
//!
//! Each element becomes its tag as one character (`'0' + tag`, so `top()` is `'9'`),
//! then its value, if it has one, in a self-delimiting form:
//! - a number: the 16 hex digits of its IEEE-754 bits, flipped so they sort like the
//!   numbers (`-0` counts as `0`, as in IndexedDB);
//! - a string: its characters, each U+0000 written as U+0000 U+FFFF, then a U+0000
//!   terminator. After a terminator comes a tag (below U+FFFF) or the end, so a string
//!   sorts before every longer string it is a prefix of, as in UTF-16 order.
//!
//! Elements of one key are simply concatenated: a prefix of a key sorts first, as with
//! arrays. Only a value-less element (`[t]`, a one-sided range bound or `top()`) may be
//! followed by a value of the other key at the same position, and the planner only
//! ever puts those last in a bound, where "prefix sorts first" is exactly right.

use std::fmt::Write;

use serde_json::Value;

/// The string form of an encoded index key or bound.
pub fn key_string(key: &Value) -> String {
    let mut out = String::new();
    match key {
        Value::Array(elements) => elements.iter().for_each(|e| element(e, &mut out)),
        other => element(other, &mut out),
    }
    out
}

fn element(e: &Value, out: &mut String) {
    let Value::Array(parts) = e else {
        // Not an engine encoding; keep it indexable rather than fail.
        return text(&e.to_string(), out);
    };
    let tag = parts.first().and_then(Value::as_u64).unwrap_or(0);
    out.push(char::from_u32(u32::from(b'0') + tag.min(0xFF) as u32).expect("ASCII range"));
    match parts.get(1) {
        None => {}
        Some(Value::Number(n)) => number(n.as_f64().unwrap_or(0.0), out),
        Some(Value::String(s)) => text(s, out),
        Some(other) => text(&other.to_string(), out),
    }
}

fn number(x: f64, out: &mut String) {
    let x = if x == 0.0 { 0.0 } else { x };
    let bits = x.to_bits();
    let ordered = if bits >> 63 == 1 { !bits } else { bits | 1 << 63 };
    write!(out, "{ordered:016x}").expect("writing to a String");
}

fn text(s: &str, out: &mut String) {
    for c in s.chars() {
        out.push(c);
        if c == '\0' {
            out.push('\u{FFFF}');
        }
    }
    out.push('\0');
}
