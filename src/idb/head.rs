//! Where a generation keeps its head, and the fence that keeps single writes honest.
//!
//! The head is the meta store's `head` record, rewritten by every commit that reads
//! first (`commit::commit`). A single write (`commit::commit_expected`) reads nothing
//! and leaves that record alone: it stores the head it made inside its own log record
//! (`h`), and *adds* that record at row `max_row + 1` of the head it computed from. The
//! add is its fence: IndexedDB refuses it (and the transaction aborts) if anything took
//! that row since, and every commit that changes the head takes it — one that logs rows
//! by logging them there, one that logs none (a seal, a reset's mark) with an empty
//! record (`fence`), which the next commit that logs rows overwrites. So a single write
//! needs no read before it may commit, and IndexedDB can commit it as soon as its
//! requests are made (DESIGN §10's W2: measured ~30% faster than waiting for a read).
//!
//! The head is therefore the meta record, or the last log record's `h` when that one is
//! newer (`read`).

use wasm_bindgen::prelude::*;

use crate::store::Head;

use super::codec;
use super::error::from_js;
use crate::error::StoreError;

/// Reads the head from `meta` and the key of the log's last record in one go (two
/// requests of the caller's transaction), and that record only when it lies beyond the
/// head's `maxRow` — a single write's (or a fence's), small: after a batch, the last
/// record holds a thousand rows, and reading it for nothing cost ~400 KB of garbage per
/// commit. Resolves to the newer of the two heads, or `undefined`.
#[wasm_bindgen(inline_js = "export function tm_head(meta, log) {
  return new Promise((ok, fail) => {
    const record = meta.get('head');
    const last = log.openKeyCursor(null, 'prev');
    record.onerror = () => fail(record.error);
    last.onerror = () => fail(last.error);
    last.onsuccess = () => {
      const head = record.result;
      const key = last.result?.key;
      if (key == null || (head != null && key <= head.maxRow)) { ok(head); return; }
      const newest = log.get(key);
      newest.onerror = () => fail(newest.error);
      newest.onsuccess = () => {
        const h = newest.result?.h;
        ok(h != null && (head == null || h.maxRow > head.maxRow) ? h : head);
      };
    };
  });
}")]
extern "C" {
    fn tm_head(meta: &web_sys::IdbObjectStore, log: &web_sys::IdbObjectStore) -> js_sys::Promise;
}

/// The head of a generation, asked for in the transaction `meta` and `log` belong to
/// (over both stores). Made at once, awaited whenever: the caller may make its other
/// requests in between.
pub fn read(meta: &web_sys::IdbObjectStore, log: &web_sys::IdbObjectStore) -> impl std::future::Future<Output = Result<Option<Head>, StoreError>> {
    let found = wasm_bindgen_futures::JsFuture::from(tm_head(meta, log));
    async move {
        let head = found.await.map_err(|e| from_js(&e))?;
        (!head.is_undefined() && !head.is_null()).then(|| codec::from_js::<Head>(&head)).transpose()
    }
}

/// Takes row `head.max_row + 1` with an empty log record, for a commit that changes
/// `head` without logging a row: a single write computed from the head before it then
/// finds that row taken. Rows are not used up — the next commit that logs rows writes
/// its first one there, over this record.
pub fn fence(log: &web_sys::IdbObjectStore, head: &Head) -> Result<(), StoreError> {
    log.put_with_key(&codec::log_record(&[], None)?, &JsValue::from_f64((head.max_row + 1) as f64)).map(|_| ()).map_err(|e| from_js(&e))
}
