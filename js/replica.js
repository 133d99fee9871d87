// The `Replica` class apps hold: a small, idiomatic wrapper over the generated wasm class.
// Events, live queries and multi-tab coordination live here, everything else is the
// engine's. It imports nothing, so the entry points (index.js, embedded.js) choose how the
// wasm module is loaded. See index.d.ts for the types.

const EVENTS = ['sync', 'progress', 'reset', 'error', 'futureVersion', 'online', 'change'];
/** How often the tab running live sync tells the others it is online, and how long they believe it. */
const HEARTBEAT_MS = 2000;
const LEADER_SILENT_MS = 5000;

/** An `Error` with a stable `code`, like the ones the engine throws. */
export function tidemarkError(code, message, cause) {
  const e = new Error(message, cause === undefined ? undefined : { cause });
  e.name = 'TidemarkError';
  e.code = code;
  return e;
}

/** What a subscription has not delivered yet (distinct from every JSON text). */
const NOTHING = Symbol('nothing delivered');

/** A replica open in this page. */
export class Replica {
  #inner;
  #name;
  #closed = false;
  #handlers = new Map(EVENTS.map((e) => [e, new Set()]));
  #subs = new Set();
  #channel = null;
  /** Collections changed since the last message to the other tabs (`#announce`). */
  #unannounced = null;
  /** This object's name on the channel, and the other replica objects known to listen there. */
  #tab = `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
  #peers = new Set();
  /** Collections changed while no other tab listened: told to the first one that appears. */
  #quiet = [];
  #onPageHide = null;
  #leader = false;
  #releaseLock = null;
  #onNetwork = null;
  /** When the tab running live sync last said it was online (`#heard`); 0: it is not. */
  #leaderOnlineAt = 0;
  #heartbeat = null;

  constructor(inner, name) {
    this.#inner = inner;
    this.#name = name;
    inner.setEmitter((type, payload) => {
      this.#emit(type, payload);
      // The other tabs' status() follows this tab's sync: their points, pending count and
      // (from the tab running live sync) online state.
      if (type === 'sync') this.#tellSync(payload);
      else if (type === 'online') this.#tellSync(undefined);
    });
    // Every committed transaction in this tab: re-run the live queries it touches, and
    // tell the other tabs of this replica.
    inner.setOnChange((collections) => {
      this.#changed(collections);
      this.#announce(collections);
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
        const { collections = [], sync, hello, here, bye } = e.data ?? {};
        // Another replica object of this replica opened (`hello`, answered with `here`), is
        // there (`here`), or closed (`bye`).
        if (bye) this.#peers.delete(bye);
        if (hello || here) this.#met(hello ?? here, hello !== undefined);
        if (!Array.isArray(collections)) return;
        // The sync tab's heartbeat or connection change: nothing new is stored.
        if (sync && sync.report === undefined && collections.length === 0) {
          this.#heard(sync);
          return;
        }
        if (collections.length === 0 && !sync) return;
        // Another tab wrote or synced: its rows and sync points are in the same database.
        this.#inner.refresh().then(() => {
          this.#changed(collections);
          if (sync) this.#heard(sync);
        }, () => {});
      };
      // Listening from here on: the others answer, and tell what this one may have missed.
      this.#channel.postMessage({ hello: this.#tab });
      // A page that goes away without closing the replica is gone for the others too (and
      // says so again if it comes back from the back/forward cache).
      if (typeof globalThis.addEventListener === 'function') {
        this.#onPageHide = (e) => {
          if (this.#closed) return;
          if (e.type === 'pagehide') this.#channel?.postMessage({ bye: this.#tab });
          else if (e.persisted) this.#channel?.postMessage({ hello: this.#tab });
        };
        globalThis.addEventListener('pagehide', this.#onPageHide);
        globalThis.addEventListener('pageshow', this.#onPageHide);
      }
    }
  }

  /**
   * Another replica object of this replica listens on the channel (`hello`: it just opened,
   * and hears this one's `here`). The first one met after a time alone is told the
   * collections changed meanwhile: it opened before it could hear of them, and may have
   * read them before they were written.
   */
  #met(tab, answer) {
    const alone = this.#peers.size === 0;
    this.#peers.add(tab);
    const quiet = alone ? this.#quiet : [];
    if (alone) this.#quiet = [];
    if (answer) this.#channel?.postMessage(quiet.length ? { here: this.#tab, collections: quiet } : { here: this.#tab });
    else if (quiet.length) this.#channel?.postMessage({ collections: quiet });
    // A tab that just opened (or one met after a time alone, when this one said nothing:
    // `#tellSync`) hears at once that the tab running live sync is online, not at its
    // next heartbeat.
    if ((answer || alone) && this.#leader && this.#inner.status().online) this.#sayOnline();
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
  /** Settles conflicts (`conflicts: true` collections): writes `fields` as a resolution. */
  resolve(collection, id, fields) { return this.#inner.resolve(collection, id, fields); }
  /** The losing values of concurrent writes to a document, `{ [path]: values }` (newest first). */
  conflicts(collection, id) { return this.#inner.conflicts(collection, id); }
  get(collection, id) { return this.#inner.get(collection, id); }
  query(collection, query) { return this.#inner.query(collection, query); }
  /** The newest `limit` op-log rows, newest first: `[{ row, op, from }]`. */
  recentOps(limit = 20) { return this.#inner.recentOps(limit); }

  /**
   * The browser's storage for this origin (DESIGN §4: report usage): `{ usage, quota,
   * persisted }` — bytes used and allowed (the browser's estimate for the whole origin,
   * every replica of the app included) and whether the data is exempt from eviction (the
   * replica asks for that when it opens). `null` for what the browser does not tell.
   */
  async storage() {
    const s = globalThis.navigator?.storage;
    const ask = async (method) => (typeof s?.[method] === 'function' ? s[method]().catch(() => null) : null);
    const [estimate, persisted] = await Promise.all([ask('estimate'), ask('persisted')]);
    const bytes = (n) => (typeof n === 'number' ? n : null);
    return { usage: bytes(estimate?.usage), quota: bytes(estimate?.quota), persisted: typeof persisted === 'boolean' ? persisted : null };
  }

  /** The replica's name (its IndexedDB name prefix). */
  get name() { return this.#name; }

  /**
   * A live query: calls `callback(docs)` at once with the current results, then after
   * every change — local writes, other tabs, sync, migrations, resets — that alters them.
   * Bursts of changes are coalesced: at most one query runs per subscription at a time.
   * A failing query calls `onError(error)` when given (else the 'error' event) and runs
   * again at the next change. Returns a function that stops it.
   */
  subscribe(collection, query, callback, onError) {
    return this.#watch('subscribe(collection, query, callback)', { collection, query }, () => this.#inner.query(collection, query), callback, onError);
  }

  /**
   * Like `subscribe`, for one document: `callback(doc)` with the document or `undefined`
   * (missing or deleted), at once and after every change to it.
   */
  subscribeDoc(collection, id, callback, onError) {
    return this.#watch('subscribeDoc(collection, id, callback)', { collection, id }, () => this.#inner.get(collection, id), callback, onError);
  }

  /** The live queries of this page, as `[{ collection, query }]` or `[{ collection, id }]` (what devtools show). */
  get liveQueries() {
    return [...this.#subs].map((s) => ({ ...s.what }));
  }

  #watch(usage, what, read, callback, onError) {
    if (typeof callback !== 'function') throw tidemarkError('INVALID_ARGUMENT', `${usage}: callback must be a function`);
    if (onError !== undefined && typeof onError !== 'function') throw tidemarkError('INVALID_ARGUMENT', `${usage}: onError must be a function`);
    const sub = { collection: what.collection, what, read, callback, onError, last: NOTHING, running: false, dirty: false, active: true };
    this.#subs.add(sub);
    this.#refresh(sub);
    return () => { sub.active = false; this.#subs.delete(sub); };
  }

  /**
   * Tells the other tabs which collections changed — after the write that changed them
   * has resolved, not inside it: posting to a BroadcastChannel clones and sends a message,
   * about a tenth of an awaited single write, and nothing in this tab waits for it. The
   * collections of the commits made meanwhile go in one message. With no other tab
   * listening nothing is posted (and no timer set, together ~8% of an awaited single
   * write): the collections wait in `#quiet` for the first one that appears (`#met`).
   */
  #announce(collections) {
    if (!this.#channel) return;
    if (this.#peers.size === 0) {
      for (const c of collections) if (!this.#quiet.includes(c)) this.#quiet.push(c);
      return;
    }
    // An array, not a Set: a commit names one collection or a few (and an awaited write
    // announces alone), so `includes` is as quick and a Set per write was garbage.
    if (this.#unannounced) {
      for (const c of collections) if (!this.#unannounced.includes(c)) this.#unannounced.push(c);
      return;
    }
    this.#unannounced = collections.slice();
    setTimeout(() => this.#flushAnnounce(), 0);
  }

  #flushAnnounce() {
    const pending = this.#unannounced;
    this.#unannounced = null;
    if (pending?.length) this.#channel?.postMessage({ collections: pending });
  }

  /**
   * Tells the other tabs this tab synced (`report`: a round's, then they emit `sync` too) or
   * that its connection went up or down; the tab running live sync also says whether it
   * is online, and repeats it every 2 s while it is (`#heartbeat`). With no other tab
   * listening nothing is posted: one that opens later reads the sync points from the
   * database, and hears from the tab running live sync as they meet (`#met`).
   */
  #tellSync(report) {
    if (!this.#channel || this.#closed) return;
    const online = this.#leader && this.#inner.status().online;
    if (this.#peers.size > 0) this.#channel.postMessage({ sync: { report, leader: this.#leader, online } });
    if (online && !this.#heartbeat) {
      this.#heartbeat = setInterval(() => {
        if (!this.#leader || !this.#inner.status().online || this.#closed) this.#stopHeartbeat();
        else if (this.#peers.size > 0) this.#sayOnline();
      }, HEARTBEAT_MS);
    } else if (!online) this.#stopHeartbeat();
  }

  /** The tab running live sync says it is online (`#heard` in the others). */
  #sayOnline() {
    this.#channel?.postMessage({ sync: { leader: true, online: true } });
  }

  #stopHeartbeat() {
    clearInterval(this.#heartbeat);
    this.#heartbeat = null;
  }

  /** Another tab synced or its connection changed (`#tellSync`). */
  #heard({ report, leader, online }) {
    const before = this.status().online;
    if (leader) this.#leaderOnlineAt = online ? Date.now() : 0;
    if (report !== undefined) this.#emit('sync', report);
    const now = this.status().online;
    if (now !== before) this.#emit('online', now);
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
        let result;
        try {
          result = await sub.read();
        } catch (e) {
          if (this.#closed || !sub.active) return;
          // A failed read is reported once; the next success is delivered even if equal.
          sub.last = NOTHING;
          if (sub.onError) {
            try { sub.onError(e); } catch (t) { queueMicrotask(() => { throw t; }); }
          } else {
            this.#emit('error', e);
          }
          return;
        }
        const key = result === undefined ? 'undefined' : JSON.stringify(result);
        if (key !== sub.last && sub.active) {
          sub.last = key;
          try { sub.callback(result); } catch (e) { queueMicrotask(() => { throw e; }); }
        }
      } while (sub.dirty && sub.active);
    } finally {
      sub.running = false;
    }
  }

  /**
   * `{ dbId, schemaVersion, maxRow, incoming, outgoing, online, pending, leader }`. In a tab
   * that does not run live sync, `online` says whether the tab that does is connected (as
   * it said within the last few seconds), and the points and `pending` follow its rounds.
   */
  status() {
    const s = this.#inner.status();
    if (!s.online && !this.#leader && Date.now() - this.#leaderOnlineAt < LEADER_SILENT_MS) s.online = true;
    return { ...s, leader: this.#leader };
  }

  /** One sync round (push, then pull); resolves to { sent, received, batches, capped, snapshot, reset }. */
  syncNow() { return this.#inner.syncNow(); }

  /**
   * Live sync: reconnects with exponential backoff and pushes local writes as they happen.
   * With several tabs of one replica, exactly one runs it (a Web Lock); when that tab
   * closes, the next waiting tab takes over, and pushes whatever any tab wrote meanwhile.
   * A replica opened without `sync` throws `SYNC_NOT_CONFIGURED` here, at once, and
   * changes nothing.
   */
  connect() {
    if (this.#closed || this.#releaseLock) return;
    this.#inner.checkSync();
    const locks = globalThis.navigator?.locks;
    if (!locks) {
      this.#inner.connect();
      this.#leader = true;
      return;
    }
    let release;
    const held = new Promise((r) => { release = r; });
    this.#releaseLock = release;
    locks.request(`tidemark:${this.#name}:sync`, async () => {
      if (this.#releaseLock !== release) return;
      this.#leader = true;
      try {
        await this.#inner.refresh().catch(() => {});
        this.#inner.connect();
        await held;
      } finally {
        this.#leader = false;
      }
    }).catch((e) => {
      // Live sync did not start: a later connect() tries again.
      if (this.#releaseLock === release) this.#releaseLock = null;
      this.#emit('error', e);
    });
  }

  disconnect() {
    this.#inner.disconnect();
    this.#releaseLock?.();
    this.#releaseLock = null;
    if (this.#heartbeat && this.#peers.size > 0) this.#channel?.postMessage({ sync: { leader: true, online: false } });
    this.#stopHeartbeat();
  }

  async close() {
    if (this.#closed) return;
    this.#closed = true;
    this.disconnect();
    this.#subs.clear();
    // What this tab changed last still reaches the others.
    this.#flushAnnounce();
    this.#channel?.postMessage({ bye: this.#tab });
    this.#channel?.close();
    if (this.#onNetwork) {
      globalThis.removeEventListener('online', this.#onNetwork);
      globalThis.removeEventListener('offline', this.#onNetwork);
    }
    if (this.#onPageHide) {
      globalThis.removeEventListener('pagehide', this.#onPageHide);
      globalThis.removeEventListener('pageshow', this.#onPageHide);
    }
    this.#inner.setOnChange(null);
    await this.#inner.close();
    for (const set of this.#handlers.values()) set.clear();
  }
}
