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

const EVENTS = ['sync', 'progress', 'reset', 'error', 'futureVersion', 'online'];

/** A replica open in this page. */
export class Replica {
  #inner;
  #closed = false;
  #handlers = new Map(EVENTS.map((e) => [e, new Set()]));

  constructor(inner) {
    this.#inner = inner;
    inner.setEmitter((type, payload) => {
      for (const h of this.#handlers.get(type) ?? []) {
        try { h(payload); } catch (e) { queueMicrotask(() => { throw e; }); }
      }
    });
  }

  /**
   * Listens to 'sync' | 'progress' | 'reset' | 'error' | 'futureVersion' | 'online'.
   * Returns a function that removes the handler.
   */
  on(type, handler) {
    const set = this.#handlers.get(type);
    if (!set) {
      const e = new Error(`unknown event ${JSON.stringify(type)}: use one of ${EVENTS.join(', ')}`);
      e.name = 'TidemarkError';
      e.code = 'INVALID_ARGUMENT';
      throw e;
    }
    set.add(handler);
    return () => set.delete(handler);
  }

  off(type, handler) { this.#handlers.get(type)?.delete(handler); }

  /** One sync round (push, then pull); resolves to { sent, received, batches, capped, snapshot, reset }. */
  syncNow() { return this.#inner.syncNow(); }
  /** Live sync: reconnects with exponential backoff and pushes local writes as they happen. */
  connect() { this.#inner.connect(); }
  disconnect() { this.#inner.disconnect(); }

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
    for (const set of this.#handlers.values()) set.clear();
  }
}
