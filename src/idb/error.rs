//! How IndexedDB failures become Tidemark errors. A full disk must reach the app as
//! `QUOTA_EXCEEDED`, because that is the one storage failure it can do something about;
//! everything else becomes a storage error carrying the browser's own words.

use indexed_db_futures::error::{Error as IdbError, OpenDbError, UnexpectedDataError};
use wasm_bindgen::{JsCast, JsValue};

use crate::error::StoreError;

/// The mapping itself, kept free of JS values so it can be tested without filling a disk.
pub fn classify(name: &str, message: &str) -> StoreError {
    match name {
        // Firefox used its own name for the same condition before adopting the standard one.
        "QuotaExceededError" | "NS_ERROR_DOM_QUOTA_REACHED" => StoreError::QuotaExceeded,
        "" => StoreError::Backend(message.to_string()),
        _ if message.is_empty() => StoreError::Backend(name.to_string()),
        _ => StoreError::Backend(format!("{name}: {message}")),
    }
}

/// Anything a JS call threw or a request reported.
pub fn from_js(value: &JsValue) -> StoreError {
    if let Some(e) = value.dyn_ref::<web_sys::DomException>() {
        return classify(&e.name(), &e.message());
    }
    if let Some(e) = value.dyn_ref::<js_sys::Error>() {
        return classify(&String::from(e.name()), &String::from(e.message()));
    }
    classify("", &value.as_string().unwrap_or_else(|| format!("{value:?}")))
}

pub fn from_idb(e: IdbError) -> StoreError {
    match e {
        IdbError::DomException(d) => from_js(&d.into()),
        IdbError::Unknown(j) => from_js(&j.into()),
        other => StoreError::Backend(other.to_string()),
    }
}

pub fn from_open(e: OpenDbError) -> StoreError {
    match e {
        OpenDbError::Base(e) => from_idb(e),
        other => StoreError::Backend(other.to_string()),
    }
}

/// A failed commit. When the browser aborts a transaction on its own (a quota failure
/// while flushing, for example), the commit only learns "aborted"; the reason is on the
/// transaction.
pub fn from_tx(e: IdbError, tx: &web_sys::IdbTransaction) -> StoreError {
    if let IdbError::MissingData(UnexpectedDataError::TransactionAborted) = e {
        if let Some(reason) = tx.error() {
            return from_js(&reason.into());
        }
        return StoreError::Backend("the transaction was aborted".into());
    }
    from_idb(e)
}
