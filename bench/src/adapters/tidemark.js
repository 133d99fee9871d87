// Tidemark through its npm entry point, exactly as apps call it.
import { openReplica, deleteReplica, load } from '../../../js/index.js';
// The wasm-bindgen glue the entry point loads (the same module instance in this bundle):
// once loaded, its init returns the instance's exports, `memory` among them.
import wasmInit from '../../../js/pkg/tidemark.js';
import { SCHEMA } from '../workload.js';

export { openReplica, deleteReplica };
let memory = null;
/** Fetches and instantiates the wasm module (openReplica would do it on first use). */
export async function init() {
  await load();
  memory = (await wasmInit()).memory;
}
/** Bytes of wasm linear memory (it only grows, so the current size is the peak); 0 before init. */
export const wasmMemoryBytes = () => memory?.buffer.byteLength ?? 0;
export const label = 'Tidemark';
export const version = '0.1.0';

export const open = async (name) => { await init(); return openReplica({ name, schema: SCHEMA }); };
export const prepare = (docs) => docs;
export const putBatch = (db, docs) => db.putMany('docs', docs);
export const range = (db, kind, lo, hi) => db.query('docs', { where: { kind, n: { gte: lo, lt: hi } } });
export const get = (db, id) => db.get('docs', id);
export const put = (db, doc) => db.put('docs', doc);
export const close = (db) => db.close();
export const destroy = (name) => deleteReplica(name);
