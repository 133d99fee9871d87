// Tidemark through its npm entry point, exactly as apps call it.
import { openReplica, deleteReplica, load } from '../../../js/index.js';
import { SCHEMA } from '../workload.js';

export { openReplica, deleteReplica };
/** Fetches and instantiates the wasm module (openReplica would do it on first use). */
export const init = () => load();
export const label = 'Tidemark';
export const version = '0.1.0';

export const open = (name) => openReplica({ name, schema: SCHEMA });
export const prepare = (docs) => docs;
export const putBatch = (db, docs) => db.putMany('docs', docs);
export const range = (db, kind, lo, hi) => db.query('docs', { where: { kind, n: { gte: lo, lt: hi } } });
export const get = (db, id) => db.get('docs', id);
export const put = (db, doc) => db.put('docs', doc);
export const close = (db) => db.close();
export const destroy = (name) => deleteReplica(name);
