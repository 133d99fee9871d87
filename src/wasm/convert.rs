//! JS values ↔ JSON. Documents cross the boundary as JSON text: one native
//! `JSON.stringify` (with a replacer that refuses what JSON cannot hold) is both the
//! fastest way across and the strictest validation, and cyclic objects make it throw
//! instead of overflowing the wasm stack. The replacer judges each original value, not
//! what its `toJSON()` returned, so a `Date` (or any class with `toJSON`) is refused
//! rather than silently stored as a string.

use serde_json::{Map, Value};
use wasm_bindgen::prelude::*;

use crate::error::{Error, WriteError};

#[wasm_bindgen(inline_js = r#"
export function tm_to_json(value, loose, offset) {
  // Where a refused value is, for the error only (the replacer runs for every key of every
  // document): `value` may be a slice of a larger array starting at `offset`
  // (`to_json_items`).
  const where = (holder, key) => key === '' ? 'the top level' : JSON.stringify(offset !== undefined && holder === value ? String(offset + Number(key)) : key);
  return JSON.stringify(value, function (key, v) {
    // `v` is what toJSON() returned (a Date is already a string here): judge the original.
    const raw = key === '' ? value : this[key];
    const t = typeof raw;
    // In queries and options an undefined property means "not given".
    if (loose && t === 'undefined' && key !== '' && !Array.isArray(this)) return undefined;
    if (t === 'function' || t === 'symbol' || t === 'bigint' || t === 'undefined') {
      throw new TypeError(`a ${t} at ${where(this, key)} is not JSON`);
    }
    if (t === 'number' && !Number.isFinite(raw)) throw new TypeError(`${raw} at ${where(this, key)} is not JSON`);
    if (raw !== null && t === 'object' && !Array.isArray(raw)) {
      const p = Object.getPrototypeOf(raw);
      if (p !== Object.prototype && p !== null) {
        const name = (raw.constructor && raw.constructor.name) || 'non-plain object';
        const hint = raw instanceof Date ? ' (store dates as numbers, e.g. date.getTime(), or ISO strings)' : ' (use plain objects and arrays)';
        throw new TypeError(`a ${name} at ${where(this, key)} is not JSON${hint}`);
      }
    }
    return v;
  });
}
"#)]
extern "C" {
    #[wasm_bindgen(catch)]
    fn tm_to_json(value: &JsValue, loose: bool, offset: Option<u32>) -> Result<JsValue, JsValue>;
}

/// Converts any JS value to JSON, refusing functions, symbols, bigints, undefined,
/// non-finite numbers, class instances and cycles (documents must be exactly JSON).
pub fn to_json(value: &JsValue) -> Result<Value, Error> {
    convert(value, false, None)
}

/// Like `to_json`, but object properties that are `undefined` are left out, as
/// `JSON.stringify` does: for queries and options, where they mean "not given".
pub fn to_json_loose(value: &JsValue) -> Result<Value, Error> {
    convert(value, true, None)
}

/// `value` (at `offset` in a larger array, if it is a slice of one) through `tm_to_json`.
fn convert(value: &JsValue, loose: bool, offset: Option<u32>) -> Result<Value, Error> {
    let text = tm_to_json(value, loose, offset).map_err(|e| {
        let msg = e.dyn_ref::<js_sys::Error>().map(|e| String::from(e.message())).unwrap_or_else(|| format!("{e:?}"));
        WriteError::NotJson(msg)
    })?;
    // `undefined` (JSON.stringify of a lone function or undefined) is refused by the replacer.
    let text = crate::idb::codec::text_of(&text).unwrap_or_default();
    serde_json::from_str(&text).map_err(|e| WriteError::NotJson(e.to_string()).into())
}

/// Elements converted per `JSON.stringify` by `to_json_items`.
const ITEMS_AT_ONCE: u32 = 128;

/// The elements of a JS array, each as `to_json` converts it, `ITEMS_AT_ONCE` at a time:
/// the JSON text of a whole batch of documents (~230 KB for 1,000) is a string V8 keeps
/// in its large-object space until a full collection, where the text of a slice is
/// young garbage gone at the next scavenge. Errors name an element by its index in the
/// whole array, as `to_json` does.
pub fn to_json_items(array: &js_sys::Array) -> Result<Vec<Value>, Error> {
    let len = array.length();
    let mut items = Vec::with_capacity(len as usize);
    let mut start = 0;
    while start < len {
        let end = len.min(start + ITEMS_AT_ONCE);
        if let Value::Array(part) = convert(&array.slice(start, end).into(), false, Some(start))? {
            items.extend(part);
        }
        start = end;
    }
    Ok(items)
}

/// Converts a JS value that must be a plain object.
pub fn to_object(value: &JsValue, what: &str) -> Result<Map<String, Value>, Error> {
    match to_json(value)? {
        Value::Object(m) => Ok(m),
        other => Err(WriteError::InvalidDocument(format!("{what} must be an object, got {}", type_name(&other))).into()),
    }
}

pub fn to_string(value: &JsValue, what: &str) -> Result<String, Error> {
    value.as_string().ok_or_else(|| not_a_string(what))
}

/// That `value` is a JS string, without reading it into Rust (`get` hands its id on as it is).
pub fn check_string(value: &JsValue, what: &str) -> Result<(), Error> {
    if value.is_string() { Ok(()) } else { Err(not_a_string(what)) }
}

fn not_a_string(what: &str) -> Error {
    WriteError::InvalidArgument(format!("{what} must be a string")).into()
}

/// JSON → a JS value (objects as plain objects).
pub fn to_js<T: serde::Serialize + ?Sized>(value: &T) -> JsValue {
    let text = serde_json::to_string(value).expect("JSON values serialize");
    js_sys::JSON::parse(&text).expect("serde_json writes valid JSON")
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
