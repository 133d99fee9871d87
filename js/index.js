// Tidemark's JS entry point: loads the wasm module once and wraps the generated classes
// in a small, idiomatic API — events, live queries and multi-tab coordination live here,
// everything else is the engine's. See index.d.ts for the types.
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
  const inner = await openRaw(options);
  return new Replica(inner, options.name);
}

/** Deletes every IndexedDB database of the replica `name`. Close it first. */
export async function deleteReplica(name) {
  await load();
  return deleteRaw(name);
}

const EVENTS = ['sync', 'progress', 'reset', 'error', 'futureVersion', 'online', 'change'];

function tidemarkError(code, message) {
  const e = new Error(message);
  e.name = 'TidemarkError';
  e.code = code;
  return e;
}

/** A replica open in this page. */
export class Replica {
  #inner;
  #name;
  #closed = false;
  #handlers = new Map(EVENTS.map((e) => [e, new Set()]));
  #subs = new Set();
  #channel = null;
  #leader = false;
  #releaseLock = null;
  #onNetwork = null;

  constructor(inner, name) {
    this.#inner = inner;
    this.#name = name;
    inner.setEmitter((type, payload) => this.#emit(type, payload));
    // Every committed transaction in this tab: re-run the live queries it touches, and
    // tell the other tabs of this replica.
    inner.setOnChange((collections) => {
      this.#changed(collections);
      this.#channel?.postMessage({ collections });
    });
    // The page's network events: offline drops live sync's connection at once (so
    // status().online is never true on a dead socket), online reconnects at once.
    if (typeof globalThis.addEventListener === 'function') {
      this.#onNetwork = () => this.#inner.setNetwork(globalThis.navigator?.onLine !== false);
      globalThis.addEventListener('online', this.#onNetwork);
      globalThis.addEventListener('offline', this.#onNetwork);
      if (globalThis.navigator?.onLine === false) this.#onNetwork();
    }
    if (typeof BroadcastChannel === 'function') {
      this.#channel = new BroadcastChannel(`tidemark:${name}`);
      this.#channel.onmessage = (e) => {
        if (this.#closed) return;
        // Another tab wrote or synced: its rows are in the same database.
        this.#inner.refresh().then(() => this.#changed(e.data?.collections ?? []), () => {});
      };
    }
  }

  #emit(type, payload) {
    for (const h of this.#handlers.get(type) ?? []) {
      try { h(payload); } catch (e) { queueMicrotask(() => { throw e; }); }
    }
  }

  /**
   * Listens to 'sync' | 'progress' | 'reset' | 'error' | 'futureVersion' | 'online' | 'change'.
   * Returns a function that removes the handler.
   */
  on(type, handler) {
    const set = this.#handlers.get(type);
    if (!set) throw tidemarkError('INVALID_ARGUMENT', `unknown event ${JSON.stringify(type)}: use one of ${EVENTS.join(', ')}`);
    if (typeof handler !== 'function') throw tidemarkError('INVALID_ARGUMENT', 'the handler must be a function');
    set.add(handler);
    return () => set.delete(handler);
  }

  off(type, handler) { this.#handlers.get(type)?.delete(handler); }

  put(collection, doc) { return this.#inner.put(collection, doc); }
  putMany(collection, docs) { return this.#inner.putMany(collection, docs); }
  patch(collection, id, fields) { return this.#inner.patch(collection, id, fields); }
  delete(collection, id) { return this.#inner.delete(collection, id); }
  get(collection, id) { return this.#inner.get(collection, id); }
  query(collection, query) { return this.#inner.query(collection, query); }
  /** The newest `limit` op-log rows, newest first: `[{ row, op, from }]`. */
  recentOps(limit = 20) { return this.#inner.recentOps(limit); }

  /**
   * A live query: calls `callback(docs)` at once with the current results, then after
   * every change — local writes, other tabs, sync, migrations, resets — that alters them.
   * Bursts of changes are coalesced: at most one query runs per subscription at a time.
   * Returns a function that stops it.
   */
  subscribe(collection, query, callback) {
    if (typeof callback !== 'function') throw tidemarkError('INVALID_ARGUMENT', 'subscribe(collection, query, callback): callback must be a function');
    const sub = { collection, query, callback, last: undefined, running: false, dirty: false, active: true };
    this.#subs.add(sub);
    this.#refresh(sub);
    return () => { sub.active = false; this.#subs.delete(sub); };
  }

  #changed(collections) {
    for (const sub of this.#subs) {
      if (collections.includes(sub.collection)) this.#refresh(sub);
    }
    if (collections.length) this.#emit('change', { collections });
  }

  async #refresh(sub) {
    if (sub.running) { sub.dirty = true; return; }
    sub.running = true;
    try {
      do {
        sub.dirty = false;
        // Let a burst of commits land before re-reading.
        await new Promise((r) => setTimeout(r, 0));
        if (!sub.active || this.#closed) return;
        let docs;
        try {
          docs = await this.#inner.query(sub.collection, sub.query);
        } catch (e) {
          if (!this.#closed) this.#emit('error', e);
          return;
        }
        const key = JSON.stringify(docs);
        if (key !== sub.last && sub.active) {
          sub.last = key;
          try { sub.callback(docs); } catch (e) { queueMicrotask(() => { throw e; }); }
        }
      } while (sub.dirty && sub.active);
    } finally {
      sub.running = false;
    }
  }

  /** `{ dbId, schemaVersion, maxRow, incoming, outgoing, online, pending, leader }`. */
  status() { return { ...this.#inner.status(), leader: this.#leader }; }

  /** One sync round (push, then pull); resolves to { sent, received, batches, capped, snapshot, reset }. */
  syncNow() { return this.#inner.syncNow(); }

  /**
   * Live sync: reconnects with exponential backoff and pushes local writes as they happen.
   * With several tabs of one replica, exactly one runs it (a Web Lock); when that tab
   * closes, the next waiting tab takes over, and pushes whatever any tab wrote meanwhile.
   */
  connect() {
    if (this.#closed || this.#releaseLock) return;
    const locks = globalThis.navigator?.locks;
    if (!locks) {
      this.#leader = true;
      this.#inner.connect();
      return;
    }
    let release;
    const held = new Promise((r) => { release = r; });
    this.#releaseLock = release;
    locks.request(`tidemark:${this.#name}:sync`, async () => {
      if (this.#releaseLock !== release) return;
      this.#leader = true;
      await this.#inner.refresh().catch(() => {});
      this.#inner.connect();
      await held;
      this.#leader = false;
    }).catch((e) => this.#emit('error', e));
  }

  disconnect() {
    this.#inner.disconnect();
    this.#releaseLock?.();
    this.#releaseLock = null;
  }

  async close() {
    if (this.#closed) return;
    this.#closed = true;
    this.disconnect();
    this.#subs.clear();
    this.#channel?.close();
    if (this.#onNetwork) {
      globalThis.removeEventListener('online', this.#onNetwork);
      globalThis.removeEventListener('offline', this.#onNetwork);
    }
    this.#inner.setOnChange(null);
    await this.#inner.close();
    for (const set of this.#handlers.values()) set.clear();
  }
}
