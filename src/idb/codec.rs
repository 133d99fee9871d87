//! Moving records between Rust and JS as JSON text. One `JSON.parse` per written batch
//! and one `JSON.stringify` per read batch cost far less than walking every field across
//! the wasm boundary (what serde-wasm-bindgen does).

use serde::de::DeserializeOwned;
use serde::Serialize;
use wasm_bindgen::prelude::*;

use crate::error::StoreError;

use super::error::from_js as js_error;

pub fn to_js<T: Serialize + ?Sized>(value: &T) -> Result<JsValue, StoreError> {
    let text = serde_json::to_string(value).map_err(|e| StoreError::Backend(format!("cannot encode a record: {e}")))?;
    js_sys::JSON::parse(&text).map_err(|e| js_error(&e))
}

/// `undefined` (a missing record) reads as JSON `null`, and so do `undefined` array slots.
pub fn from_js<T: DeserializeOwned>(value: &JsValue) -> Result<T, StoreError> {
    if value.is_undefined() {
        return serde_json::from_str("null").map_err(|e| StoreError::Corrupt(e.to_string()));
    }
    let text: String = js_sys::JSON::stringify(value).map_err(|e| js_error(&e))?.into();
    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(e.to_string()))
}

#[wasm_bindgen]
extern "C" {
    /// A stored document, seen only as far as queries need: its `d` object.
    pub type DocRecord;
    #[wasm_bindgen(method, getter)]
    pub fn d(this: &DocRecord) -> JsValue;

    /// A log record: the rows of one commit.
    pub type LogRecord;
    #[wasm_bindgen(method, getter)]
    pub fn rows(this: &LogRecord) -> JsValue;
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
