//! Records between Rust and JS, and their shape in IndexedDB.
//!
//! Records cross the wasm boundary as JSON text: one `JSON.parse` per written batch and
//! one `JSON.stringify` per read batch cost far less than walking every field across the
//! boundary (what serde-wasm-bindgen does).
//!
//! A document is stored as `{ id, d, m, i }`: `d` is the app's document, handed to JS as
//! is; `m` is the rest of the engine's `StoredDoc` (merge stamps, tombstone flag, schema
//! version, conflict tracking, older-version layers written as their difference from `d`)
//! as one JSON string; `${index}` holds each index key in the string form of `keys`,
//! for the native indexes, absent for tombstones (in generations made before
//! `KeyPlace::Top`, an object `i` holds them: `i.{index}`). Every JS object and every
//! byte of a record is rebuilt by every read that returns it, so the parts only Rust
//! reads are kept as one short string. The engine's own index keys are derived from `d`
//! on read, and carried in `m` only in the unusual case that they differ from that.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use wasm_bindgen::prelude::*;

use crate::clock::Stamp;
use crate::error::StoreError;
use crate::rebuild::{has_index_keys, index_keys};
use crate::merge::{Contender, DocState};
use crate::pairs::Pairs;
use crate::schema::{Index, Schema};
use crate::store::{Row, StoredDoc};

use super::error::from_js as js_error;
use super::generation::KeyPlace;
use super::keys::key_string;

/// A document as written to IndexedDB (`records` makes the JS objects).
pub struct DocOut<'a> {
    id: &'a str,
    d: &'a Option<Map<String, Value>>,
    /// Not in the records' JSON text: it is JSON text itself, and written inside it every
    /// one of its quotes would be escaped by serde and unescaped by `JSON.parse`
    /// (profiled: most of a reset's string escaping). `records` sets it on each object.
    m: String,
    i: Pairs<&'a str, String>,
    place: KeyPlace,
}

/// `{ id, d, ${index}… }`, or `{ id, d, i: { {index}… } }` for a `KeyPlace::Nested`
/// generation; no keys for a tombstone.
impl Serialize for DocOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("id", self.id)?;
        map.serialize_entry("d", self.d)?;
        if !self.i.is_empty() {
            match self.place {
                KeyPlace::Nested => map.serialize_entry("i", &self.i)?,
                KeyPlace::Top => {
                    for (name, key) in &self.i.0 {
                        map.serialize_entry(&TopKey(name), key)?;
                    }
                }
            }
        }
        map.end()
    }
}

/// An index's name as its key's property at the top of a record (`KeyPlace::Top`).
struct TopKey<'a>(&'a str);

impl Serialize for TopKey<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("${}", self.0))
    }
}

/// What `m` holds: everything of a `StoredDoc` but its id, its document and (usually)
/// its index keys.
#[derive(Serialize)]
struct MergeOut<'a> {
    s: &'a BTreeMap<String, Stamp>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    t: bool,
    v: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    i: Option<&'a Map<String, Value>>,
    #[serde(skip_serializing_if = "Pairs::is_empty")]
    l: Pairs<u32, LayerOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    m: Option<Migrated<'a>>,
    #[serde(skip_serializing_if = "no_conflicts")]
    x: &'a BTreeMap<String, Vec<Contender>>,
}

/// The last migration stamp logged for a document (`StoredDoc::migrated`): `true` when it is
/// the stamp of the root register, as it is for every document a migration wrote (the
/// stamp is long, and is already in `s`).
/// (Read back as a plain JSON value: an untagged enum's deserializer would add its
/// buffering machinery to the wasm.)
#[derive(Serialize)]
#[serde(untagged)]
enum Migrated<'a> {
    Root(bool),
    Stamp(&'a Stamp),
}

/// An older-version layer (`DocState`) as `m` keeps it: its document written as the
/// fields that differ from the record's `d` (`-` removed, `+` set) whenever `d` exists.
/// A migrated document's older layer is mostly the same fields as its view, and bytes are
/// what IndexedDB's writes cost: written whole, a reset's 10,000 layers doubled the bytes
/// of every record. Records written with the whole `doc` still read.
#[derive(Serialize)]
struct LayerOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    doc: Option<&'a Map<String, Value>>,
    #[serde(rename = "-", skip_serializing_if = "Vec::is_empty")]
    removed: Vec<&'a str>,
    #[serde(rename = "+", skip_serializing_if = "Pairs::is_empty")]
    set: Pairs<&'a str, &'a Value>,
    stamps: &'a BTreeMap<String, Stamp>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    deleted: bool,
    #[serde(skip_serializing_if = "no_conflicts")]
    conflicts: &'a BTreeMap<String, Vec<Contender>>,
}

impl<'a> LayerOut<'a> {
    fn new(layer: &'a DocState, view: Option<&'a Map<String, Value>>) -> LayerOut<'a> {
        let (doc, removed, set) = match view {
            None => (Some(&layer.doc), Vec::new(), Pairs(Vec::new())),
            Some(view) => (
                None,
                view.keys().filter(|k| !layer.doc.contains_key(*k)).map(String::as_str).collect(),
                Pairs(layer.doc.iter().filter(|(k, v)| view.get(*k) != Some(*v)).map(|(k, v)| (k.as_str(), v)).collect()),
            ),
        };
        LayerOut { doc, removed, set, stamps: &layer.stamps, deleted: layer.deleted, conflicts: &layer.conflicts }
    }
}

/// `LayerOut` read back.
#[derive(Deserialize)]
struct LayerIn {
    #[serde(default)]
    doc: Option<Map<String, Value>>,
    #[serde(rename = "-", default)]
    removed: Vec<String>,
    #[serde(rename = "+", default)]
    set: Map<String, Value>,
    stamps: BTreeMap<String, Stamp>,
    #[serde(default)]
    deleted: bool,
    #[serde(default)]
    conflicts: BTreeMap<String, Vec<Contender>>,
}

impl LayerIn {
    fn into_state(self, view: Option<&Map<String, Value>>) -> Result<DocState, String> {
        let doc = match (self.doc, view) {
            (Some(doc), _) => doc,
            (None, Some(view)) => {
                let mut doc = view.clone();
                for k in &self.removed {
                    doc.remove(k);
                }
                doc.extend(self.set);
                doc
            }
            (None, None) => return Err("an older layer written against a document that is not there".into()),
        };
        Ok(DocState { doc, stamps: self.stamps, deleted: self.deleted, conflicts: self.conflicts })
    }
}

fn no_conflicts(x: &&BTreeMap<String, Vec<Contender>>) -> bool {
    x.is_empty()
}

#[derive(Deserialize)]
struct MergeIn {
    s: BTreeMap<String, Stamp>,
    #[serde(default)]
    t: bool,
    v: u32,
    #[serde(default)]
    i: Option<Map<String, Value>>,
    #[serde(default)]
    l: Pairs<u32, LayerIn>,
    #[serde(default)]
    m: Option<Value>,
    #[serde(default)]
    x: BTreeMap<String, Vec<Contender>>,
}

/// A document as read from IndexedDB (its string index keys are not needed back).
#[derive(Deserialize)]
pub struct DocIn {
    id: String,
    d: Option<Map<String, Value>>,
    m: String,
}

impl<'a> DocOut<'a> {
    /// `indexes` are the document's collection's, as `Collection::index_list` gives them;
    /// `place` where its store's records hold their keys (`generation::key_place`).
    pub fn new(doc: &'a StoredDoc, indexes: &[Index], place: KeyPlace) -> Result<DocOut<'a>, StoreError> {
        // Naming every field (no `..`) turns a field added to `StoredDoc` into a compile
        // error here, rather than a field silently left out of the stored record.
        let StoredDoc { id, doc: d, stamps, deleted, version, index_keys: i, layers, migrated, conflicts } = doc;
        let derived = has_index_keys(i, indexes, d);
        let l = Pairs(layers.iter().map(|(v, layer)| (*v, LayerOut::new(layer, d.as_ref()))).collect());
        let m = migrated.as_ref().map(|m| if stamps.get(crate::merge::ROOT) == Some(m) { Migrated::Root(true) } else { Migrated::Stamp(m) });
        let merge = MergeOut { s: stamps, t: *deleted, v: *version, i: (!derived).then_some(i), l, m, x: conflicts };
        let m = serde_json::to_string(&merge).map_err(|e| StoreError::Backend(format!("cannot encode a record: {e}")))?;
        let i = Pairs(i.iter().map(|(name, key)| (name.as_str(), key_string(key))).collect());
        Ok(DocOut { id, d, m, i, place })
    }
}

impl DocIn {
    pub fn into_stored(self, indexes: &[Index]) -> Result<StoredDoc, StoreError> {
        let corrupt = |e: &dyn std::fmt::Display| StoreError::Corrupt(format!("document {:?}: {e}", self.id));
        let m: MergeIn = serde_json::from_str(&self.m).map_err(|e| corrupt(&e))?;
        let index_keys = m.i.unwrap_or_else(|| index_keys(indexes, &self.d));
        let mut layers = BTreeMap::new();
        for (v, l) in m.l.0 {
            layers.insert(v, l.into_state(self.d.as_ref()).map_err(|e| corrupt(&e))?);
        }
        let migrated = match m.m {
            Some(Value::Bool(true)) => m.s.get(crate::merge::ROOT).cloned(),
            Some(stamp @ Value::String(_)) => Some(serde_json::from_value(stamp).map_err(|e| corrupt(&e))?),
            _ => None,
        };
        Ok(StoredDoc {
            id: self.id,
            doc: self.d,
            stamps: m.s,
            deleted: m.t,
            version: m.v,
            index_keys,
            layers,
            conflicts: m.x,
            migrated,
        })
    }
}

/// A stored document from its IndexedDB record.
pub fn stored_doc(record: &JsValue, indexes: &[Index]) -> Result<StoredDoc, StoreError> {
    from_js::<DocIn>(record)?.into_stored(indexes)
}

#[wasm_bindgen]
extern "C" {
    type Encoder;
    #[wasm_bindgen(constructor, js_class = "TextEncoder")]
    fn new() -> Encoder;
    #[wasm_bindgen(method, js_class = "TextEncoder", js_name = encodeInto)]
    fn encode_into(this: &Encoder, text: &JsValue, into: &js_sys::Uint8Array) -> EncodedInto;
    type EncodedInto;
    #[wasm_bindgen(method, getter)]
    fn read(this: &EncodedInto) -> f64;
    #[wasm_bindgen(method, getter)]
    fn written(this: &EncodedInto) -> f64;
}

thread_local! {
    static ENCODER: Encoder = Encoder::new();
}

/// Strings this long or longer are converted by `TextEncoder` (see `text_of`).
const LONG_TEXT: u32 = 2048;

/// A JS string as a Rust string (`None`: not a string). wasm-bindgen's own conversion
/// copies a string character by character in JS, which for the megabytes of a snapshot
/// message, a log record or a batch of documents as JSON costs more than parsing them;
/// a long string is encoded natively (`TextEncoder`) instead. Both turn a lone surrogate
/// into U+FFFD.
pub fn text_of(value: &JsValue) -> Option<String> {
    let s = value.dyn_ref::<js_sys::JsString>()?;
    if s.length() < LONG_TEXT {
        return value.as_string();
    }
    // Encoded straight into wasm memory (`encodeInto`), no copy in between: first into as
    // many bytes as the string has units (enough for ASCII), then what is left into room
    // for its worst case (3 bytes a unit). `encodeInto` never splits a character.
    let units = s.length();
    let mut bytes: Vec<u8> = Vec::with_capacity(units as usize);
    let mut read = 0;
    ENCODER.with(|e| {
        while read < units {
            let rest: JsValue = if read == 0 { value.clone() } else { s.substring(read, units).into() };
            let filled = bytes.len();
            // SAFETY: the view covers the vector's spare capacity and lives only through
            // `encodeInto`, which allocates nothing in wasm memory (it cannot move).
            let view = unsafe { js_sys::Uint8Array::view_mut_raw(bytes.as_mut_ptr().add(filled), bytes.capacity() - filled) };
            let done = e.encode_into(&rest, &view);
            // SAFETY: `encodeInto` initialized the `written` bytes after `filled`.
            unsafe { bytes.set_len(filled + done.written() as usize) };
            read += done.read() as u32;
            bytes.reserve(3 * (units - read) as usize);
        }
    });
    Some(String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
}

// The text a commit hands to JS crosses as UTF-8 bytes (a view of wasm memory) and
// becomes a string here (`text`), not through wasm-bindgen's `TextDecoder`: Chromium
// makes every string `TextDecoder` returns an external one — its characters outside
// V8's heap — which no young collection frees. Each batch of 1,000 documents left its
// records' JSON (~0.36 MB) behind until a full collection, still held after the page
// reloaded (bench memory: the read phase began at 10.8 MB against Dexie's 7.5 MB).
// Decoded here into UTF-16 code units, 1,024 at a time, the text is an ordinary young
// string, at about the cost of `TextDecoder` and parsing its string (a probe: 0.22–0.43
// against 0.11–0.19 ms for 54 KB; ~1.5 ms of a 1,000-document batch, while IndexedDB
// stores the slices before). The bytes are always valid UTF-8: Rust wrote them.
#[wasm_bindgen(inline_js = r#"const UNITS = new Uint16Array(1026);
function text(b) {
  let s = '', n = 0;
  for (let i = 0; i < b.length;) {
    const c = b[i];
    if (c < 0x80) { UNITS[n++] = c; i += 1; }
    else if (c < 0xe0) { UNITS[n++] = ((c & 0x1f) << 6) | (b[i + 1] & 0x3f); i += 2; }
    else if (c < 0xf0) { UNITS[n++] = ((c & 0x0f) << 12) | ((b[i + 1] & 0x3f) << 6) | (b[i + 2] & 0x3f); i += 3; }
    else {
      const p = (((c & 0x07) << 18) | ((b[i + 1] & 0x3f) << 12) | ((b[i + 2] & 0x3f) << 6) | (b[i + 3] & 0x3f)) - 0x10000;
      UNITS[n++] = 0xd800 | (p >> 10); UNITS[n++] = 0xdc00 | (p & 0x3ff); i += 4;
    }
    if (n >= 1024) { s += String.fromCharCode.apply(null, UNITS.subarray(0, n)); n = 0; }
  }
  return n ? s + String.fromCharCode.apply(null, UNITS.subarray(0, n)) : s;
}
export function tm_records(json, ms, into) {
  const a = JSON.parse(text(json)); const m = text(ms).split('\n');
  for (let i = 0; i < a.length; i++) a[i].m = m[i];
  if (into) for (let i = 0; i < a.length; i++) into.put(a[i]);
  return a;
}
export function tm_parse(json) { return JSON.parse(text(json)); }
// A log record as one object literal, made in one call: set property by property from
// Rust, every key crossed as a new string and the object grew its properties one at a
// time (about a sixth of the JS garbage of a single write). Its rows come as a view of
// wasm memory: a single write's few are kept as a string (a new ArrayBuffer cost more
// than the decoding), a batch's as a copy of the bytes (`log_record`).
export function tm_log_record(rows, own, via, last, h) {
  rows = rows.length < 4096 ? text(rows) : rows.slice();
  const o = {}, v = {};
  for (let i = 0; i < own.length; i += 2) o[own[i]] = own[i + 1];
  for (let i = 0; i < via.length; i += 2) v[via[i]] = via[i + 1];
  if (last === undefined) return { rows, own: o, via: v };
  return h === undefined ? { rows, own: o, via: v, last } : { rows, own: o, via: v, last, h };
}"#)]
extern "C" {
    #[wasm_bindgen(catch)]
    fn tm_records(json: &[u8], ms: &[u8], into: Option<&web_sys::IdbObjectStore>) -> Result<js_sys::Array, JsValue>;
    #[wasm_bindgen(catch)]
    fn tm_parse(json: &[u8]) -> Result<JsValue, JsValue>;
    fn tm_log_record(rows: &[u8], own: &js_sys::Array, via: &js_sys::Array, last: Option<f64>, h: Option<&JsValue>) -> JsValue;
}

/// The IndexedDB records of `docs`, as one array: their JSON text without `m`, parsed in
/// one go, and every `m` passed as one string, split in JS. A record's `m` is compact
/// JSON, which never holds a raw line break (serde escapes those inside strings), so a
/// line break separates them. With `into`, each record is also put there, by the same
/// call: a put made from wasm crosses into JS twice per record (the record, the put),
/// and its glue cost about a sixth of what IndexedDB's own put did (profile of a reset).
pub fn records(docs: &[DocOut], into: Option<&web_sys::IdbObjectStore>) -> Result<js_sys::Array, StoreError> {
    let json = serde_json::to_string(docs).map_err(|e| StoreError::Backend(format!("cannot encode a record: {e}")))?;
    let ms = docs.iter().map(|d| d.m.as_str()).collect::<Vec<_>>().join("\n");
    tm_records(json.as_bytes(), ms.as_bytes(), into).map_err(|e| js_error(&e))
}

pub fn to_js<T: Serialize + ?Sized>(value: &T) -> Result<JsValue, StoreError> {
    let text = serde_json::to_string(value).map_err(|e| StoreError::Backend(format!("cannot encode a record: {e}")))?;
    tm_parse(text.as_bytes()).map_err(|e| js_error(&e))
}

/// `undefined` (a missing record) reads as JSON `null`, and so do `undefined` array slots.
pub fn from_js<T: DeserializeOwned>(value: &JsValue) -> Result<T, StoreError> {
    if value.is_undefined() {
        return serde_json::from_str("null").map_err(|e| StoreError::Corrupt(e.to_string()));
    }
    let text = text_of(&js_sys::JSON::stringify(value).map_err(|e| js_error(&e))?.into()).unwrap_or_default();
    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(e.to_string()))
}

#[wasm_bindgen]
extern "C" {
    /// A stored document, seen only as far as queries need: its `d` object.
    pub type DocRecord;
    #[wasm_bindgen(method, getter)]
    pub fn d(this: &DocRecord) -> JsValue;
    #[wasm_bindgen(method, getter)]
    fn m(this: &DocRecord) -> JsValue;

    /// A log record (`log_record`).
    type LogRecord;
    #[wasm_bindgen(method, getter)]
    fn rows(this: &LogRecord) -> JsValue;
    #[wasm_bindgen(method, getter)]
    fn own(this: &LogRecord) -> JsValue;
    #[wasm_bindgen(method, getter)]
    fn via(this: &LogRecord) -> JsValue;
    #[wasm_bindgen(method, getter)]
    fn last(this: &LogRecord) -> JsValue;
}

/// The log record of one commit's rows: `{ rows, own, via, last }`, `rows` their JSON
/// text as UTF-8 bytes (a `Uint8Array`) — nothing in JS ever looks inside a row, and one
/// block of bytes is what IndexedDB clones fastest (a reset logs 10,000 snapshot registers
/// and 10,000 migration ops, which as objects cost more to clone into IndexedDB and out
/// again than the documents themselves). Bytes rather than a string: they cross between
/// wasm memory and JS as one copy each way, with no UTF-16 decoding or encoding, and a
/// batch's rows (~400 KB for 1,000 documents) do not sit in the JS heap as a string, which
/// V8 keeps in its large-object space until a full collection (measured: W1 left ~12 MB
/// of garbage behind, most of it such strings). Under 4 KB of text (a single write's) they
/// are a string (`tm_log_record`): the new ArrayBuffer cost more than the decoding (W2 p50
/// −1–5% in two interleaved A/Bs of 11 pairs). `own` the number of the replica's own rows
/// (no sender) per origin, so that counting unsynced rows (`read::own_rows_after`) reads
/// no row at all, `via` the number of the other rows per sender and `last` the last row's
/// number, so that a pass to a peer passes over a record of rows all received from it
/// without reading them (`log_only_from`). A single write's record also holds the head
/// it made (`h`, see `head`).
pub fn log_record(rows: &[Row], head: Option<&JsValue>) -> Result<JsValue, StoreError> {
    let text = serde_json::to_string(rows).map_err(|e| StoreError::Backend(format!("cannot encode a record: {e}")))?;
    // Each count as a name and a number, side by side.
    let counts = |pairs: Vec<(&str, u32)>| {
        let flat = js_sys::Array::new();
        for (key, n) in pairs {
            flat.push(&JsValue::from_str(key));
            flat.push(&JsValue::from(n));
        }
        flat
    };
    let last = rows.last().map(|r| r.row as f64);
    Ok(tm_log_record(text.as_bytes(), &counts(own_counts(rows)), &counts(via_counts(rows)), last, head))
}

/// Caches as JS strings (wasm-bindgen's `intern`) the names every commit hands to JS: the
/// generation's store names and `schema`'s collections. Each crossing of one of them
/// otherwise decoded a new JS string from wasm memory: with the replica's db id
/// (`intern_origin`), ten of the fourteen strings a single write made. Interned strings stay
/// for the page's life; these are few.
pub fn intern_names(schema: &Schema) {
    for name in [super::generation::LOG, super::generation::META, super::generation::PEERS, super::generation::HEAD] {
        wasm_bindgen::intern(name);
    }
    for c in schema.collections.keys() {
        wasm_bindgen::intern(c);
        wasm_bindgen::intern(&super::generation::collection_store(c));
    }
}

/// Caches the replica's db id as a JS string (see `intern_names`): the key of its own rows'
/// counts in every log record it writes.
pub fn intern_origin(db_id: &str) {
    wasm_bindgen::intern(db_id);
}

/// The last row of a log record whose rows all came from `sender` (`via` names it alone,
/// `own` nobody); `None` for any other record, and for records of earlier versions, which
/// say neither.
pub fn log_only_from(record: &JsValue, sender: &str) -> Option<u64> {
    let record = record.unchecked_ref::<LogRecord>();
    let (own, via, last) = (record.own(), record.via(), record.last().as_f64()?);
    if !own.is_object() || !via.is_object() || js_sys::Object::keys(own.unchecked_ref::<js_sys::Object>()).length() != 0 {
        return None;
    }
    let senders = js_sys::Object::keys(via.unchecked_ref::<js_sys::Object>());
    (senders.length() == 1 && senders.get(0).as_string().as_deref() == Some(sender)).then_some(last as u64)
}

/// How many of `rows` are each origin's own (no sender): a log record's `own`.
pub fn own_counts(rows: &[Row]) -> Vec<(&str, u32)> {
    tally(rows.iter().filter(|r| r.from.is_none()).map(|r| r.op.origin.as_str()))
}

/// How many of `rows` came from each sender: a log record's `via`.
fn via_counts(rows: &[Row]) -> Vec<(&str, u32)> {
    tally(rows.iter().filter_map(|r| r.from.as_deref()))
}

/// Each key with its count, in key order. A list, not a map: a record's rows have few
/// origins and senders, and a map type of its own would add its code to the wasm.
fn tally<'a>(keys: impl Iterator<Item = &'a str>) -> Vec<(&'a str, u32)> {
    let mut counts: Vec<(&str, u32)> = Vec::new();
    for key in keys {
        *crate::sort::sorted_entry(&mut counts, key, || 0) += 1;
    }
    counts
}

/// The rows of a log record, in any form it was written in: `log_record`'s bytes, the JSON
/// text of earlier versions, or the rows as objects of the earliest.
pub fn log_rows<T: DeserializeOwned>(record: &JsValue) -> Result<Vec<T>, StoreError> {
    let rows = record.unchecked_ref::<LogRecord>().rows();
    let corrupt = |e: &dyn std::fmt::Display| StoreError::Corrupt(format!("a log record: {e}"));
    if let Some(bytes) = rows.dyn_ref::<js_sys::Uint8Array>() {
        // Through `from_str` (a text check first): `from_slice` would add a second copy of
        // every row deserializer to the wasm (~30 KB).
        let text = String::from_utf8(bytes.to_vec()).map_err(|e| corrupt(&e))?;
        return serde_json::from_str(&text).map_err(|e| corrupt(&e));
    }
    match text_of(&rows) {
        Some(text) => serde_json::from_str(&text).map_err(|e| corrupt(&e)),
        None => from_js(&rows),
    }
}

/// How many of a log record's rows are `origin`'s own (no sender), from its `own` counts;
/// `None` for records of earlier versions, which have none.
pub fn log_own(record: &JsValue, origin: &str) -> Option<u64> {
    let own = record.unchecked_ref::<LogRecord>().own();
    if own.is_undefined() {
        return None;
    }
    Some(js_sys::Reflect::get(&own, &JsValue::from_str(origin)).ok()?.as_f64().unwrap_or(0.0) as u64)
}

/// The app-visible document of a stored record, `None` for tombstones.
pub fn doc_of(record: &JsValue) -> Option<JsValue> {
    let d = record.unchecked_ref::<DocRecord>().d();
    if d.is_null() || d.is_undefined() {
        None
    } else {
        Some(d)
    }
}
