//! Asking the browser to keep the replica's data (`navigator.storage.persist()`), so an
//! offline-first app's unsynced writes are not evicted under storage pressure.

use std::cell::Cell;

use wasm_bindgen::prelude::*;

thread_local! {
    static ASKED: Cell<bool> = const { Cell::new(false) };
}

/// Asks once per page. Never waits for the answer (Firefox may show a prompt) and ignores
/// every failure: workers, for one, have `navigator.storage` but no `persist()`.
pub fn ask_once() {
    if ASKED.with(|a| a.replace(true)) {
        return;
    }
    let get = |target: &JsValue, key: &str| js_sys::Reflect::get(target, &JsValue::from_str(key)).ok().filter(|v| !v.is_undefined() && !v.is_null());
    let Some(storage) = get(&js_sys::global(), "navigator").and_then(|n| get(&n, "storage")) else { return };
    let Some(persist) = get(&storage, "persist").and_then(|f| f.dyn_into::<js_sys::Function>().ok()) else { return };
    if let Ok(promise) = persist.call0(&storage).and_then(|p| p.dyn_into::<js_sys::Promise>()) {
        // Awaited in the background only so a rejection is handled rather than reported.
        wasm_bindgen_futures::spawn_local(async move {
            let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
        });
    }
}
