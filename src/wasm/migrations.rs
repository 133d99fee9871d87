//! The app's migration functions as the engine's `Migrator`: `migrations[v]` turns a
//! document of version v−1 into version v (or `null` to drop it), `migrations[v] = null`
//! declares a step with only declarative changes. Documents cross to JS in batches (one
//! call per step, collection and transaction), not one by one.
//!
//! ```js
//! openReplica({ name, schema: v3, history: [v1, v2], migrations: {
//!   2: (doc) => { const { title, ...rest } = doc; return { ...rest, name: title }; },
//!   3: null,   // v3 only adds an index, drops a collection and sets a default
//! } });
//! ```

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

use crate::error::MigrateError;
use crate::migrate::Migrator;

#[wasm_bindgen(inline_js = r#"
export function tm_migrate(fn, text, collection) {
  const docs = JSON.parse(text);
  const out = docs.map((doc) => {
    const r = fn(doc, collection);
    if (r === null || r === undefined) return null;
    if (typeof r.then === 'function') throw new TypeError('migrations must be synchronous functions (this one returned a Promise)');
    if (typeof r !== 'object' || Array.isArray(r)) throw new TypeError('a migration must return a document object or null');
    return r;
  });
  return JSON.stringify(out);
}
"#)]
extern "C" {
    #[wasm_bindgen(catch)]
    fn tm_migrate(f: &js_sys::Function, text: &str, collection: &str) -> Result<String, JsValue>;
}

pub struct JsMigrator {
    /// Step → the app's function, or `None` for a declarative-only step.
    steps: BTreeMap<u32, Option<js_sys::Function>>,
}

// wasm32 runs this on one thread only; the engine asks for Send + Sync because the
// server shares replicas across threads, which never applies to a JS migrator.
unsafe impl Send for JsMigrator {}
unsafe impl Sync for JsMigrator {}

impl JsMigrator {
    /// Reads `options.migrations`: `{ [version]: function | null }`.
    pub fn from_js(value: &JsValue) -> Result<JsMigrator, String> {
        let mut steps = BTreeMap::new();
        if value.is_undefined() || value.is_null() {
            return Ok(JsMigrator { steps });
        }
        if !value.is_object() {
            return Err("migrations must be an object: { [version]: (doc, collection) => doc | null }".into());
        }
        let entries = js_sys::Object::entries(value.unchecked_ref::<js_sys::Object>());
        for entry in entries.iter() {
            let pair: js_sys::Array = entry.unchecked_into();
            let key = pair.get(0).as_string().unwrap_or_default();
            let version: u32 = key.parse().ok().filter(|v| *v >= 2).ok_or(format!("migrations key {key:?} must be a schema version >= 2"))?;
            let f = pair.get(1);
            let step = if f.is_null() {
                None
            } else {
                Some(f.dyn_into::<js_sys::Function>().map_err(|_| format!("migrations[{version}] must be a function or null"))?)
            };
            steps.insert(version, step);
        }
        Ok(JsMigrator { steps })
    }
}

impl Migrator for JsMigrator {
    fn has_step(&self, to: u32) -> bool {
        self.steps.contains_key(&to)
    }

    fn migrate(&self, to: u32, collection: &str, docs: Vec<Map<String, Value>>) -> Result<Vec<Option<Map<String, Value>>>, MigrateError> {
        let f = match self.steps.get(&to) {
            None => return Err(MigrateError::MissingMigration(to)),
            Some(None) => return Ok(docs.into_iter().map(Some).collect()),
            Some(Some(f)) => f,
        };
        let text = serde_json::to_string(&docs).map_err(|e| MigrateError::Failed(e.to_string()))?;
        let out = tm_migrate(f, &text, collection).map_err(|e| {
            let msg = e.dyn_ref::<js_sys::Error>().map(|e| String::from(e.message())).unwrap_or_else(|| format!("{e:?}"));
            MigrateError::Failed(format!("migrations[{to}] threw on {collection:?}: {msg}"))
        })?;
        serde_json::from_str(&out).map_err(|e| MigrateError::Failed(format!("migrations[{to}] returned something that is not JSON documents: {e}")))
    }
}
