//! Web Locks (`navigator.locks`), which fence rebuilds of a replica across tabs: a tab
//! that builds a new generation (a reset or an upgrade) holds the replica's rebuild lock
//! exclusively from the moment it seals the live generation until the swap or the
//! abandon; a tab whose write found the generation sealed waits for the lock in shared
//! mode, which it gets as soon as the rebuild is over — or its tab died, releasing it.
//! Where Web Locks do not exist, locks are granted at once (one tab, no fencing needed).

use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

use crate::error::StoreError;

use super::error::from_js;

#[wasm_bindgen(inline_js = r#"
export function tm_lock(name, exclusive, ifAvailable) {
  const locks = globalThis.navigator && globalThis.navigator.locks;
  if (!locks) return Promise.resolve(() => {});
  return new Promise((granted, failed) => {
    locks.request(name, { mode: exclusive ? 'exclusive' : 'shared', ifAvailable }, (lock) => {
      if (!lock) { granted(null); return undefined; }
      return new Promise((release) => granted(() => release()));
    }).catch(failed);
  });
}
"#)]
extern "C" {
    fn tm_lock(name: &str, exclusive: bool, if_available: bool) -> js_sys::Promise;
}

/// The name of a replica's rebuild lock.
pub fn rebuild(replica: &str) -> String {
    format!("tidemark:{replica}:rebuild")
}

/// Takes lock `name`; resolves to the function that releases it, or `None` when
/// `if_available` and another holder has it.
pub async fn acquire(name: &str, exclusive: bool, if_available: bool) -> Result<Option<js_sys::Function>, StoreError> {
    let granted = wasm_bindgen_futures::JsFuture::from(tm_lock(name, exclusive, if_available)).await.map_err(|e| from_js(&e))?;
    Ok(granted.dyn_into::<js_sys::Function>().ok())
}

/// Releases a lock taken with `acquire`.
pub fn release(f: &js_sys::Function) {
    let _ = f.call0(&JsValue::NULL);
}
