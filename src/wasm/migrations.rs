//! The app's migration functions as the engine's `Migrator`: `migrations[v]` turns a
//! document of version v−1 into version v (or `null` to drop it; `undefined`, a forgotten
//! `return`, is `MIGRATION_FAILED`, never a drop), `migrations[v] = null`
//! declares a step with only declarative changes. Documents cross to JS in batches (one
//! call per step, collection and transaction), not one by one.
//!
//! ```js
//! openReplica({ name, schema: v3, history: [v1, v2], migrations: {
//!   2: (doc) => { const { title, ...rest } = doc; return { ...rest, name: title }; },
//!   3: null,   // v3 only adds an index, drops a collection and sets a default
//! } });
//! ```


use serde_json::{Map, Value};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

use crate::error::MigrateError;
use crate::migrate::{Context, Migrator};

#[wasm_bindgen(inline_js = r#"
export function tm_migrate(fn, text, collection, get, query) {
  const docs = JSON.parse(text);
  const out = [];
  // A function declared without a third parameter gets no ctx: the engine counts on it
  // reading nothing but its document (Migrator::reads_others).
  const wantsCtx = fn.length >= 3;
  for (let i = 0; i < docs.length; i++) {
    const ctx = !wantsCtx ? undefined : Object.freeze({
      get: (c, id) => { const d = get(i, String(c), String(id)); return d === undefined ? undefined : JSON.parse(d); },
      query: (c, q) => JSON.parse(query(i, String(c), JSON.stringify(q ?? {}))),
    });
    let r;
    try {
      r = fn(docs[i], collection, ctx);
      if (r !== null && r !== undefined && typeof r.then === 'function') throw new TypeError('migrations must be synchronous functions (this one returned a Promise)');
      if (r !== null && r !== undefined && (typeof r !== 'object' || Array.isArray(r))) throw new TypeError('a migration must return a document object or null');
    } catch (e) {
      return JSON.stringify({ threw: i, message: e instanceof Error ? e.message : String(e) });
    }
    // Only null deletes: undefined is most likely a forgotten return, and must not wipe data.
    if (r === undefined) return JSON.stringify({ undefined: i });
    out.push(r);
  }
  return JSON.stringify({ docs: out });
}
"#)]
extern "C" {
    #[wasm_bindgen(catch)]
    fn tm_migrate(f: &js_sys::Function, text: &str, collection: &str, get: &js_sys::Function, query: &js_sys::Function) -> Result<JsValue, JsValue>;
}

pub struct JsMigrator {
    /// Step → the app's function, or `None` for a declarative-only step; as declared (each
    /// version once). A list: there are few, and a map type of its own adds code to the wasm.
    steps: Vec<(u32, Option<js_sys::Function>)>,
}

// wasm32 runs this on one thread only; the engine asks for Send + Sync because the
// server shares replicas across threads, which never applies to a JS migrator.
unsafe impl Send for JsMigrator {}
unsafe impl Sync for JsMigrator {}

impl JsMigrator {
    /// Reads `options.migrations`: `{ [version]: function | null }`.
    pub fn from_js(value: &JsValue) -> Result<JsMigrator, String> {
        let mut steps = Vec::new();
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
            steps.push((version, step));
        }
        Ok(JsMigrator { steps })
    }
}

impl JsMigrator {
    /// Step `to`: `Some(None)` for a declarative-only step, `None` if none is declared.
    fn step(&self, to: u32) -> Option<&Option<js_sys::Function>> {
        self.steps.iter().find(|(v, _)| *v == to).map(|(_, f)| f)
    }
}

impl Migrator for JsMigrator {
    fn has_step(&self, to: u32) -> bool {
        self.step(to).is_some()
    }

    /// A function declared with fewer than three parameters, `(doc, collection)`, has no
    /// `ctx` to read through (`tm_migrate` passes none to it); a declarative step reads
    /// nothing.
    fn reads_others(&self, to: u32) -> bool {
        match self.step(to) {
            Some(Some(f)) => f.length() >= 3,
            Some(None) => false,
            None => true,
        }
    }

    fn migrate(&self, to: u32, collection: &str, docs: Vec<Map<String, Value>>, ctx: &dyn Context) -> Result<Vec<Option<Map<String, Value>>>, MigrateError> {
        let f = match self.step(to) {
            None => return Err(MigrateError::MissingMigration(to)),
            Some(None) => return Ok(docs.into_iter().map(Some).collect()),
            Some(Some(f)) => f,
        };
        let text = serde_json::to_string(&docs).map_err(|e| MigrateError::Failed(e.to_string()))?;
        // The context is borrowed for this call only; the closures are dropped before it
        // returns, after which JS calling them gets an error instead of a dangling read.
        // SAFETY: the 'static lifetime never outlives this function: both closures are
        // dropped at its end, and wasm runs this synchronously on one thread.
        let ctx: &'static dyn Context = unsafe { std::mem::transmute::<&dyn Context, &'static dyn Context>(ctx) };
        let query_error = std::rc::Rc::new(std::cell::RefCell::new(None::<MigrateError>));
        let get = Closure::<dyn Fn(u32, String, String) -> JsValue>::new(move |i: u32, c: String, id: String| {
            ctx.get(i as usize, &c, &id).and_then(|d| serde_json::to_string(&d).ok()).map_or(JsValue::UNDEFINED, |t| JsValue::from_str(&t))
        });
        let errors = query_error.clone();
        let query = Closure::<dyn Fn(u32, String, String) -> Result<String, JsValue>>::new(move |i: u32, c: String, q: String| {
            let q: Value = serde_json::from_str(&q).map_err(|e| JsValue::from_str(&e.to_string()))?;
            match ctx.query(i as usize, &c, &q) {
                Ok(docs) => serde_json::to_string(&docs).map_err(|e| JsValue::from_str(&e.to_string())),
                Err(e) => {
                    let msg = e.to_string();
                    *errors.borrow_mut() = Some(e);
                    Err(js_sys::Error::new(&msg).into())
                }
            }
        });
        let result = tm_migrate(f, &text, collection, get.as_ref().unchecked_ref(), query.as_ref().unchecked_ref());
        drop(get);
        drop(query);
        let out = result.map_err(|e| {
            let msg = e.dyn_ref::<js_sys::Error>().map(|e| String::from(e.message())).unwrap_or_else(|| format!("{e:?}"));
            MigrateError::Failed(format!("migrations[{to}] failed on {collection:?}: {msg}"))
        })?;
        let out = crate::idb::codec::text_of(&out).unwrap_or_default();
        // `{ docs }` or `{ threw, message }`, read in one pass (an untagged enum would
        // buffer the whole output first).
        #[derive(serde::Deserialize)]
        struct Outcome {
            docs: Option<Vec<Option<Map<String, Value>>>>,
            threw: Option<usize>,
            #[serde(default)]
            message: String,
            undefined: Option<usize>,
        }
        match serde_json::from_str(&out) {
            Ok(Outcome { docs: Some(docs), .. }) => Ok(docs),
            Ok(Outcome { threw: Some(threw), message, .. }) => Err(query_error.borrow_mut().take().unwrap_or(MigrateError::Threw { index: threw, message })),
            Ok(Outcome { undefined: Some(index), .. }) => Err(MigrateError::ReturnedUndefined { index }),
            Ok(_) => Err(MigrateError::Failed(format!("migrations[{to}] returned something that is not JSON documents"))),
            Err(e) => Err(MigrateError::Failed(format!("migrations[{to}] returned something that is not JSON documents: {e}"))),
        }
    }
}
