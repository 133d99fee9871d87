// Tidemark's JS entry point: loads the wasm module once and wraps the generated classes
// in a small, idiomatic API. See index.d.ts for the types.
import init, { openReplica as openRaw, deleteReplica as deleteRaw } from './pkg/tidemark.js';

let ready;
/** Loads and instantiates the wasm module (once, however often it is called). */
export function load(wasmUrl) {
  ready ??= init(wasmUrl ? { module_or_path: wasmUrl } : undefined);
  return ready;
}

/**
 * Opens (or creates) a replica.
 * @param {import('./index').OpenOptions} options
 * @returns {Promise<Replica>}
 */
export async function openReplica(options) {
  await load();
  return new Replica(await openRaw(options));
}

/** Deletes every IndexedDB database of the replica `name`. Close it first. */
export async function deleteReplica(name) {
  await load();
  return deleteRaw(name);
}

/** A replica open in this page. */
export class Replica {
  #inner;
  #closed = false;

  constructor(inner) {
    this.#inner = inner;
  }

  put(collection, doc) { return this.#inner.put(collection, doc); }
  putMany(collection, docs) { return this.#inner.putMany(collection, docs); }
  patch(collection, id, fields) { return this.#inner.patch(collection, id, fields); }
  delete(collection, id) { return this.#inner.delete(collection, id); }
  get(collection, id) { return this.#inner.get(collection, id); }
  query(collection, query) { return this.#inner.query(collection, query); }
  status() { return this.#inner.status(); }

  async close() {
    if (this.#closed) return;
    this.#closed = true;
    await this.#inner.close();
  }
}
