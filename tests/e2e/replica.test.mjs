// The local replica through the public JS API, in real Chromium with real IndexedDB:
// persistence across reloads, index queries, isolation, and errors with codes.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { setup } from './harness.mjs';

const SCHEMA = { version: 1, collections: { todos: { primaryKey: 'id',
  indexes: { byDone: 'done', byListDate: ['list', 'createdAt'] } } } };

let h;
before(async () => { h = await setup(); });
after(async () => { await h.teardown(); });

test('10,000 documents survive a page reload and index queries stay exact', async () => {
  const page = await h.openPage();
  await page.evaluate(async (schema) => {
    const db = await window.tidemark.openReplica({ name: 'reload', schema });
    for (let b = 0; b < 10; b++) {
      const docs = [];
      for (let i = b * 1000; i < (b + 1) * 1000; i++) {
        docs.push({ id: `t${String(i).padStart(5, '0')}`, title: `task ${i}`, done: i % 7 === 0,
          list: ['inbox', 'work', 'home'][i % 3], createdAt: i });
      }
      await db.putMany('todos', docs);
    }
    await db.patch('todos', 't00003', { title: 'patched', 'meta.by': 'e2e' });
    await db.delete('todos', 't00004');
    await db.close();
  }, SCHEMA);
  await page.reload();
  await page.waitForFunction(() => window.ready === true);
  const got = await page.evaluate(async (schema) => {
    const db = await window.tidemark.openReplica({ name: 'reload', schema });
    const all = await db.query('todos', {});
    const done = await db.query('todos', { where: { done: true } });
    const range = await db.query('todos', { where: { list: 'work', createdAt: { gte: 100, lt: 200 } },
      orderBy: { createdAt: 'desc' }, limit: 5 });
    const prefix = await db.query('todos', { where: { title: { startsWith: 'task 999' } }, orderBy: 'createdAt' });
    const out = { count: all.length, done: done.length, range: range.map((d) => d.id), prefix: prefix.map((d) => d.id),
      patched: await db.get('todos', 't00003'), deleted: await db.get('todos', 't00004'), status: db.status() };
    await db.close();
    return out;
  }, SCHEMA);
  assert.equal(got.count, 9999);
  assert.equal(got.done, Array.from({ length: 10000 }, (_, i) => i).filter((i) => i % 7 === 0 && i !== 4).length);
  assert.deepEqual(got.range, ['t00199', 't00196', 't00193', 't00190', 't00187']);
  assert.deepEqual(got.prefix, ['t00999', 't09990', 't09991', 't09992', 't09993', 't09994', 't09995', 't09996', 't09997', 't09998', 't09999']);
  assert.deepEqual(got.patched, { id: 't00003', title: 'patched', done: false, list: 'inbox', createdAt: 3, meta: { by: 'e2e' } });
  assert.equal(got.deleted, undefined);
  assert.equal(got.status.maxRow, 10002);
  assert.match(got.status.dbId, /^[0-9a-f]{16}$/);
  await page.close();
});

test('replicas with different names do not see each other', async () => {
  const page = await h.openPage();
  const got = await page.evaluate(async (schema) => {
    const a = await window.tidemark.openReplica({ name: 'iso-a', schema });
    const b = await window.tidemark.openReplica({ name: 'iso-b', schema });
    await a.put('todos', { id: 'x', title: 'only in a' });
    const r = { inB: await b.get('todos', 'x'), inA: await a.get('todos', 'x'), bAll: (await b.query('todos')).length,
      ids: [a.status().dbId, b.status().dbId] };
    await a.close(); await b.close();
    return r;
  }, SCHEMA);
  assert.equal(got.inB, undefined);
  assert.equal(got.inA.title, 'only in a');
  assert.equal(got.bAll, 0);
  assert.notEqual(got.ids[0], got.ids[1]);
  await page.close();
});

// Writes started together commit in the order they were asked for, and reads asked for
// after them see them (`turns`): a single write's first attempt can be refused and made
// again later, and `get` reads at once when no write is in flight.
test('writes commit, and reads see them, in the order they were asked for, awaited or not', async () => {
  const page = await h.openPage();
  const got = await page.evaluate(async (schema) => {
    const db = await window.tidemark.openReplica({ name: 'read-after-write', schema });
    await db.putMany('todos', [{ id: 'a', title: 'v1' }, { id: 'n1', title: 'new' }]);
    const seen = [];
    for (let i = 2; i <= 12; i++) {
      const writes = [db.put('todos', { id: 'a', title: `v${i}` }), db.put('todos', { id: `n${i}`, title: 'new' }),
        db.patch('todos', 'a', { done: i % 2 === 0 }), db.patch('todos', `n${i}`, { seen: i }), db.delete('todos', `n${i - 1}`)];
      const [a, fresh, gone, listed] = await Promise.all([db.get('todos', 'a'), db.get('todos', `n${i}`),
        db.get('todos', `n${i - 1}`), db.query('todos')]);
      seen.push([a?.title, a?.done, fresh?.title, fresh?.seen, gone, listed.map((d) => d.id).join()]);
      await Promise.all(writes);
      // Nothing in flight: read at once, and still the last write.
      seen.push([(await db.get('todos', 'a'))?.title, (await db.query('todos')).map((d) => d.id).join(),
        (await db.query('todos', { where: { done: true } })).map((d) => d.id).join()]);
    }
    await db.close();
    return seen;
  }, SCHEMA);
  const want = [];
  for (let i = 2; i <= 12; i++) want.push([`v${i}`, i % 2 === 0, 'new', i, undefined, `a,n${i}`], [`v${i}`, `a,n${i}`, i % 2 === 0 ? 'a' : '']);
  assert.deepEqual(got, want);
  assert.deepEqual(h.errors, []);
  await page.close();
});

test('a run of awaited gets reads every document, and sees writes asked for between them, from this replica or another tab\'s', async () => {
  const page = await h.openPage();
  const got = await page.evaluate(async (schema) => {
    const db = await window.tidemark.openReplica({ name: 'get-run', schema });
    // Another tab: a second replica on the same IndexedDB databases.
    const other = await window.tidemark.openReplica({ name: 'get-run', schema });
    await db.putMany('todos', Array.from({ length: 300 }, (_, i) => ({ id: `g${i}`, n: i })));
    const seen = [];
    for (let i = 0; i < 300; i++) {
      seen.push((await db.get('todos', `g${i}`))?.n);
      if (i % 50 === 20) {
        const write = db.patch('todos', `g${i + 1}`, { n: `patched ${i + 1}` });
        if (i % 100 === 20) await write;
      } else if (i % 50 === 40) {
        await other.put('todos', { id: `g${i + 1}`, n: `other tab ${i + 1}` });
      }
    }
    await other.close();
    await db.close();
    return seen;
  }, SCHEMA);
  const want = Array.from({ length: 300 }, (_, i) => (i % 50 === 21 ? `patched ${i}` : i % 50 === 41 ? `other tab ${i}` : i));
  assert.deepEqual(got, want);
  assert.deepEqual(h.errors, []);
  await page.close();
});

test('gets in ascending id order read ahead: far fewer requests, the same answers, each object the app\'s own, and never older than a write the page could know of', async () => {
  const page = await h.openPage();
  const other = await h.openPage();
  const id = (i) => `r${String(i).padStart(3, '0')}`;
  const got = await page.evaluate(async ({ schema, ids }) => {
    // Counts the requests reaching IndexedDB's object stores for single documents.
    const count = { get: 0, getAll: 0 };
    for (const m of ['get', 'getAll']) {
      const real = IDBObjectStore.prototype[m];
      IDBObjectStore.prototype[m] = function (...a) { if (this.name === 'c:todos') count[m]++; return real.apply(this, a); };
    }
    window.db = await window.tidemark.openReplica({ name: 'ahead', schema });
    const db = window.db;
    // Every third id is never written; r100..r109 are written and then deleted (tombstones).
    await db.putMany('todos', ids.filter((_, i) => i % 3 !== 2).map((k) => ({ id: k, n: k })));
    for (let i = 100; i < 110; i++) if (i % 3 !== 2) await db.delete('todos', ids[i]);
    const before = { ...count };
    const walk = [];
    for (const k of ids) walk.push((await db.get('todos', k))?.n ?? null);
    const walked = { get: count.get - before.get, getAll: count.getAll - before.getAll };
    // What was read ahead serves only this turn of the event loop: within it, no request;
    // after a timer, the next get of the walk asks IndexedDB again.
    for (let i = 270; i < 280; i++) await db.get('todos', ids[i]);
    const c0 = count.get + count.getAll;
    const inTurn = (await db.get('todos', ids[280]))?.n;
    const c1 = count.get + count.getAll;
    await new Promise((ok) => setTimeout(ok, 0));
    const nextTurn = (await db.get('todos', ids[282]))?.n;
    const turns = { inTurn, nextTurn, requestsInTurn: c1 - c0, requestsNextTurn: count.get + count.getAll - c1 };
    // The same ids from both ends at once (up, down, up, …): no walk, one plain request per get.
    const scrambled = ids.map((_, i) => ids[i % 2 === 0 ? i / 2 : ids.length - 1 - (i - 1) / 2]);
    const mid = { ...count };
    const random = [];
    for (const k of scrambled) random.push((await db.get('todos', k))?.n ?? null);
    const randomly = { get: count.get - mid.get, getAll: count.getAll - mid.getAll };
    // A document asked twice while read ahead: two objects, the first one's changes stay the app's.
    await db.get('todos', ids[0]); await db.get('todos', ids[1]); await db.get('todos', ids[3]);
    const a = await db.get('todos', ids[4]);
    a.n = 'mutated by the app';
    const b = await db.get('todos', ids[4]);
    // A write of this replica between gets of a walk (awaited, and asked but not awaited).
    const own = [];
    for (let i = 150; i < 160; i++) {
      own.push((await db.get('todos', ids[i]))?.n ?? null);
      if (i === 152) await db.put('todos', { id: ids[153], n: 'own write' });
      if (i === 155) db.patch('todos', ids[156], { n: 'asked, not awaited' });
    }
    // Gets asked together, in order, not awaited one by one: one read ahead at a time, so
    // no more requests than one per get.
    const c2 = { ...count };
    const together = (await Promise.all(ids.slice(10, 90).map((k) => db.get('todos', k)))).map((d) => d?.n ?? null);
    const concurrently = { get: count.get - c2.get, getAll: count.getAll - c2.getAll };
    // Windows nobody uses hold the next read ahead back: gets a task apart (each window
    // expires unread), and a walk in steps wider than a window.
    const c3 = { ...count };
    const apart = [];
    for (let i = 0; i < 60; i++) {
      apart.push((await db.get('todos', ids[i]))?.n ?? null);
      await new Promise((ok) => setTimeout(ok, 0));
    }
    const spaced = { get: count.get - c3.get, getAll: count.getAll - c3.getAll };
    await db.get('todos', ids[299]);
    const c4 = { ...count };
    const sparse = [];
    for (let i = 0; i < 300; i += 20) sparse.push((await db.get('todos', ids[i]))?.n ?? null);
    const skipping = { get: count.get - c4.get, getAll: count.getAll - c4.getAll };
    // A walk up to r202 (reading ahead unless held back), then the other tab writes ahead of it.
    const start = [];
    for (let i = 200; i < 203; i++) start.push((await db.get('todos', ids[i]))?.n ?? null);
    return { walk, walked, random, randomly, same: a === b, b: b.n, own, turns, together, concurrently, apart, spaced, sparse, skipping, start };
  }, { schema: SCHEMA, ids: Array.from({ length: 300 }, (_, i) => id(i)) });
  const want = Array.from({ length: 300 }, (_, i) => (i % 3 === 2 || (i >= 100 && i < 110) ? null : id(i)));
  assert.deepEqual(got.walk, want, 'a walk in id order answers every get as IndexedDB holds it');
  assert.ok(got.walked.getAll > 0 && got.walked.get + got.walked.getAll <= 40,
    `300 gets in order took ${got.walked.get} get and ${got.walked.getAll} getAll requests`);
  assert.deepEqual(got.random, Array.from({ length: 300 }, (_, i) => want[i % 2 === 0 ? i / 2 : 299 - (i - 1) / 2]));
  assert.equal(got.randomly.getAll, 0, 'gets out of order never read ahead');
  assert.equal(got.randomly.get, 300);
  assert.equal(got.same, false);
  assert.equal(got.b, id(4), 'the app\'s change to a document it got is not what the next get returns');
  assert.deepEqual(got.own, [150, 151, 152, 'own write', 154, 155, 'asked, not awaited', 157, 158, 159].map((v) => (typeof v === 'number' ? id(v) : v)).map((v, i) => ((150 + i) % 3 === 2 ? null : v)));
  assert.deepEqual(got.turns, { inTurn: id(280), nextTurn: id(282), requestsInTurn: 0, requestsNextTurn: 1 });
  assert.deepEqual(got.together, want.slice(10, 90));
  assert.ok(got.concurrently.getAll <= 1 && got.concurrently.get + got.concurrently.getAll <= 80,
    `80 gets asked together took ${got.concurrently.get} get and ${got.concurrently.getAll} getAll requests`);
  assert.deepEqual(got.apart, want.slice(0, 60));
  assert.ok(got.spaced.getAll <= 4, `60 gets a task apart read ahead ${got.spaced.getAll} times`);
  assert.deepEqual(got.sparse, want.filter((_, i) => i % 20 === 0));
  assert.ok(got.skipping.getAll <= 2, `15 gets 20 ids apart read ahead ${got.skipping.getAll} times`);
  // Another tab writes ahead of the walk; this tab's next get (a later task) sees it at
  // once, before any change notice is awaited.
  await other.evaluate(async (schema) => {
    const db = await window.tidemark.openReplica({ name: 'ahead', schema });
    await db.put('todos', { id: 'r203', n: 'other tab' });
    await db.delete('todos', 'r204');
    await db.close();
  }, SCHEMA);
  const after = await page.evaluate(async () => {
    const out = [];
    for (const k of ['r203', 'r204', 'r205', 'r206']) out.push((await window.db.get('todos', k))?.n ?? null);
    await window.db.close();
    return out;
  });
  assert.deepEqual(after, ['other tab', null, 'r205', null]);
  assert.deepEqual(h.errors, []);
  await other.close();
  await page.close();
});

test('a query that needs no filtering asks IndexedDB at once when no write is in flight, and after the writes asked before it otherwise', async () => {
  const page = await h.openPage();
  const got = await page.evaluate(async (schema) => {
    const db = await window.tidemark.openReplica({ name: 'query-now', schema });
    await db.putMany('todos', Array.from({ length: 10 }, (_, i) => ({ id: `q${i}`, done: i % 2 === 0, list: 'l', createdAt: i })));
    // Which object stores a transaction was made on, synchronously within a call.
    const made = [];
    const real = IDBDatabase.prototype.transaction;
    IDBDatabase.prototype.transaction = function (stores, mode) { made.push(String(stores)); return real.call(this, stores, mode); };
    const during = async (f) => { made.length = 0; const p = f(); const at = made.slice(); return { at, result: await p }; };
    try {
      const direct = await during(() => db.query('todos', { where: { done: true } }));
      const all = await during(() => db.query('todos'));
      const limited = await during(() => db.query('todos', { where: { done: true }, limit: 2 }));
      const sorted = await during(() => db.query('todos', { where: { list: 'l' }, orderBy: { createdAt: 'desc' }, limit: 3 }));
      const write = db.put('todos', { id: 'q10', done: true });
      const afterWrite = await during(() => db.query('todos', { where: { done: true } }));
      await write;
      const unknown = await db.query('nope', {}).catch((e) => e.code);
      return {
        direct: [direct.at.includes('c:todos'), direct.result.map((d) => d.id).join()],
        all: [all.at.includes('c:todos'), all.result.length],
        limited: [limited.at.includes('c:todos'), limited.result.map((d) => d.id).join()],
        sorted: sorted.result.map((d) => d.id).join(),
        afterWrite: [afterWrite.at.includes('c:todos'), afterWrite.result.map((d) => d.id).join()],
        unknown,
      };
    } finally {
      IDBDatabase.prototype.transaction = real;
      await db.close();
    }
  }, SCHEMA);
  assert.deepEqual(got, {
    direct: [true, 'q0,q2,q4,q6,q8'],
    all: [true, 10],
    limited: [true, 'q0,q2'],
    sorted: 'q9,q8,q7',
    afterWrite: [false, 'q0,q10,q2,q4,q6,q8'],
    unknown: 'UNKNOWN_COLLECTION',
  });
  assert.deepEqual(h.errors, []);
  await page.close();
});

test('bad input gives an Error with a code and changes nothing', async () => {
  const page = await h.openPage();
  const got = await page.evaluate(async (schema) => {
    const db = await window.tidemark.openReplica({ name: 'bad-input', schema });
    await db.put('todos', { id: 'keep', title: 'safe' });
    const cyclic = { id: 'cyc' }; cyclic.self = cyclic;
    const attempts = {
      unknownCollection: () => db.put('nope', { id: 'a' }),
      missingKey: () => db.put('todos', { title: 'no id' }),
      numberKey: () => db.put('todos', { id: 7 }),
      fn: () => db.put('todos', { id: 'f', run() {} }),
      undefinedField: () => db.put('todos', { id: 'u', x: undefined }),
      cyclic: () => db.put('todos', cyclic),
      bigint: () => db.put('todos', { id: 'b', n: 10n }),
      map: () => db.put('todos', { id: 'm', m: new Map() }),
      notObject: () => db.put('todos', 'just a string'),
      collectionType: () => db.put(42, { id: 'a' }),
      patchMissing: () => db.patch('todos', 'ghost', { x: 1 }),
      patchKey: () => db.patch('todos', 'keep', { id: 'other' }),
      idType: () => db.get('todos', {}),
      badQuery: () => db.query('todos', { where: { createdAt: { gt: 1, nope: 2 } } }),
      queryType: () => db.query('todos', 'all'),
      manyNotArray: () => db.putMany('todos', { id: 'x' }),
      manyOneBad: () => db.putMany('todos', [{ id: 'ok1' }, { title: 'no id' }]),
      // An undefined condition (a value not loaded yet) would otherwise match everything.
      whereUndefined: () => db.query('todos', { where: { title: undefined } }),
      operandUndefined: () => db.query('todos', { where: { createdAt: { gte: undefined } } }),
      deleteUndefined: () => window.tidemark.deleteReplica(undefined),
      deleteNumber: () => window.tidemark.deleteReplica(42),
      deleteObject: () => window.tidemark.deleteReplica({}),
    };
    const codes = {};
    for (const [k, f] of Object.entries(attempts)) {
      try { await f(); codes[k] = 'no error'; } catch (e) { codes[k] = e instanceof Error ? e.code : `not an Error: ${e}`; }
    }
    let openCode;
    try { await window.tidemark.openReplica({ name: 'x', schema: { version: 0, collections: {} } }); } catch (e) { openCode = e.code; }
    let schemaMessage;
    try { await window.tidemark.openReplica({ name: 'x', schema: { version: '1', collections: { t: { primaryKey: 'id' } } } }); } catch (e) { schemaMessage = e.message; }
    let optCode;
    try { await window.tidemark.openReplica({ name: 'x', schema, bogus: 1 }); } catch (e) { optCode = e.code; }
    // In queries, an undefined property means "not given" (as in JSON.stringify).
    const loose = (await db.query('todos', { where: undefined, orderBy: undefined, limit: undefined })).length;
    const all = (await db.query('todos')).map((d) => d.id);
    const status = db.status();
    await db.close();
    let closedCode;
    try { await db.get('todos', 'keep'); } catch (e) { closedCode = e.code; }
    return { codes, all, loose, maxRow: status.maxRow, openCode, optCode, closedCode, schemaMessage };
  }, SCHEMA);
  assert.deepEqual(got.codes, {
    unknownCollection: 'UNKNOWN_COLLECTION', missingKey: 'MISSING_PRIMARY_KEY', numberKey: 'MISSING_PRIMARY_KEY',
    fn: 'NOT_JSON', undefinedField: 'NOT_JSON', cyclic: 'NOT_JSON', bigint: 'NOT_JSON', map: 'NOT_JSON', notObject: 'INVALID_DOCUMENT',
    collectionType: 'INVALID_ARGUMENT', patchMissing: 'NOT_FOUND', patchKey: 'INVALID_PATCH', idType: 'INVALID_ARGUMENT',
    badQuery: 'INVALID_QUERY', queryType: 'INVALID_QUERY', manyNotArray: 'INVALID_ARGUMENT', manyOneBad: 'MISSING_PRIMARY_KEY',
    whereUndefined: 'INVALID_QUERY', operandUndefined: 'INVALID_QUERY',
    deleteUndefined: 'INVALID_OPTIONS', deleteNumber: 'INVALID_OPTIONS', deleteObject: 'INVALID_OPTIONS',
  });
  assert.match(got.schemaMessage, /expected a whole number/);
  assert.doesNotMatch(got.schemaMessage, /u32/, 'JS terms, never a Rust type');
  assert.deepEqual(got.all, ['keep']);
  assert.equal(got.loose, 1);
  assert.equal(got.maxRow, 1);
  assert.equal(got.openCode, 'INVALID_SCHEMA');
  assert.equal(got.optCode, 'INVALID_OPTIONS');
  assert.equal(got.closedCode, 'CLOSED');
  assert.deepEqual(h.errors, []);
  await page.close();
});

test('connect() on a replica opened without sync throws SYNC_NOT_CONFIGURED at once, with or without Web Locks, and changes nothing', async () => {
  const page = await h.openPage();
  const got = await page.evaluate(async (schema) => {
    const db = await window.tidemark.openReplica({ name: 'no-sync', schema });
    const errors = [];
    db.on('error', (e) => errors.push(e.code));
    const attempt = () => {
      try { db.connect(); return 'no error'; } catch (e) { return e instanceof Error ? e.code : `not an Error: ${e}`; }
    };
    const withLocks = [attempt(), attempt()];
    const afterLocks = db.status();
    // The same without Web Locks (older browsers, some workers).
    Object.defineProperty(navigator, 'locks', { value: undefined, configurable: true });
    let withoutLocks;
    try { withoutLocks = [attempt(), attempt()]; } finally { delete navigator.locks; }
    const afterNoLocks = db.status();
    // Whatever the lock request would have done has had its turn.
    await new Promise((r) => setTimeout(r, 200));
    const syncNow = await db.syncNow().then(() => 'no error', (e) => e.code);
    await db.put('todos', { id: 'a' });
    const still = await db.get('todos', 'a');
    await db.close();
    return { hasLocks: !!navigator.locks, withLocks, withoutLocks, afterLocks, afterNoLocks, errors, syncNow, still };
  }, SCHEMA);
  assert.equal(got.hasLocks, true, 'Chromium has Web Locks (the first path)');
  assert.deepEqual(got.withLocks, ['SYNC_NOT_CONFIGURED', 'SYNC_NOT_CONFIGURED']);
  assert.deepEqual(got.withoutLocks, ['SYNC_NOT_CONFIGURED', 'SYNC_NOT_CONFIGURED']);
  for (const s of [got.afterLocks, got.afterNoLocks]) {
    assert.equal(s.leader, false, 'no tab became the sync leader');
    assert.equal(s.online, false);
  }
  assert.deepEqual(got.errors, [], 'thrown, not an error event');
  assert.equal(got.syncNow, 'SYNC_NOT_CONFIGURED');
  assert.deepEqual(got.still, { id: 'a' });
  assert.deepEqual(h.errors, []);
  await page.close();
});

test('batch writes leave no text outside the JS heap for a full collection to free', async () => {
  // Strings TextDecoder returns are external (their characters outside V8's heap) and no
  // young collection frees them: when the records' JSON crossed into JS that way, every
  // batch of 1,000 documents left ~0.36 MB behind (DevTools' backing storage), which a
  // page still held after reloading. Now it crosses as bytes decoded into an ordinary string.
  const browser = await h.newContext();
  const page = await browser.openPage();
  const cdp = await page.context().newCDPSession(page);
  const backing = async () => (await cdp.send('Runtime.getHeapUsage')).backingStorageSize;
  const before = await backing();
  await page.evaluate(async (schema) => {
    const db = await window.tidemark.openReplica({ name: 'backing', schema });
    for (let b = 0; b < 8; b++) {
      // Text outside ASCII in half the batches: it is decoded the same way.
      const title = (i) => (b % 2 ? `todo ${i} ` : `tâche ${i} 日本 😀 `).repeat(12);
      await db.putMany('todos', Array.from({ length: 1000 }, (_, i) => ({ id: `b${b}-${i}`, title: title(i), createdAt: i })));
    }
    await db.close();
    // Young garbage: a few scavenges, no full collection.
    let junk = []; for (let i = 0; i < 200000; i++) junk.push({ i, s: `x${i}` }); junk = null;
  }, SCHEMA);
  const after = await backing();
  assert.equal(typeof after, 'number');
  assert.ok(after - before < 1_000_000, `8 batches of ~1 MB of records each left ${after - before} bytes of backing storage`);
  await browser.close();
});

test('storage() reports the origin\'s usage and quota, and grows with what the replica stores', async () => {
  // A browser of its own: in the shared one, the backing store compacting what the other
  // tests wrote and deleted can shrink the origin's usage by more than this test adds.
  const browser = await h.newContext();
  const page = await browser.openPage();
  const got = await page.evaluate(async (schema) => {
    const db = await window.tidemark.openReplica({ name: 'usage', schema });
    const before = await db.storage();
    const docs = Array.from({ length: 2000 }, (_, i) => ({ id: `u${i}`, title: 'x'.repeat(500), createdAt: i }));
    await db.putMany('todos', docs);
    const after = await db.storage();
    await db.close();
    return { before, after };
  }, SCHEMA);
  for (const r of [got.before, got.after]) {
    assert.deepEqual(Object.keys(r).sort(), ['persisted', 'quota', 'usage']);
    assert.equal(typeof r.usage, 'number');
    assert.ok(r.quota > r.usage, JSON.stringify(r));
    assert.equal(typeof r.persisted, 'boolean');
  }
  assert.ok(got.after.usage > got.before.usage, `1 MB written shows in usage: ${JSON.stringify(got)}`);
  await browser.close();
});

test('a write refused for lack of space is QUOTA_EXCEEDED and stores nothing of itself', async () => {
  // A browser of its own: Chromium takes an origin's quota as its IndexedDB first opens
  // there, so the override below must come before anything of the origin is open.
  const browser = await h.newContext();
  const page = await browser.openPage();
  const origin = new URL(page.url()).origin;
  const cdp = await page.context().newCDPSession(page);
  // The origin may store only a few MB more than it does.
  const usage = await page.evaluate(async () => (await navigator.storage.estimate()).usage);
  await cdp.send('Storage.overrideQuotaForOrigin', { origin, quotaSize: usage + 4 * 1024 * 1024 });
  try {
    const got = await page.evaluate(async (schema) => {
      const db = await window.tidemark.openReplica({ name: 'quota', schema });
      await db.putMany('todos', Array.from({ length: 50 }, (_, i) => ({ id: `q${i}`, title: 'small', createdAt: i })));
      const before = db.status().maxRow;
      // Text that does not compress: the backing store compresses what it writes.
      const noise = (n) => { let s = ''; while (s.length < n) s += Math.random().toString(36).slice(2); return s.slice(0, n); };
      const big = Array.from({ length: 400 }, (_, i) => ({ id: `big${i}`, title: noise(20000), createdAt: 1000 + i }));
      const many = await db.putMany('todos', big).then(() => null, (e) => e.code);
      const single = await db.put('todos', { id: 'huge', title: noise(6_000_000) }).then(() => null, (e) => e.code);
      const all = await db.query('todos', {});
      window.quotaDb = db;
      return { many, single, ids: all.map((d) => d.id), before, after: db.status().maxRow };
    }, SCHEMA);
    const detail = JSON.stringify({ ...got, ids: got.ids.length });
    assert.equal(got.many, 'QUOTA_EXCEEDED', detail);
    assert.equal(got.single, 'QUOTA_EXCEEDED', detail);
    assert.equal(got.ids.length, 50, `nothing of the refused writes is stored: ${detail}`);
    assert.ok(got.ids.every((id) => id.startsWith('q')));
    assert.equal(got.after, got.before, 'no op of theirs was logged');
  } finally {
    await cdp.send('Storage.overrideQuotaForOrigin', { origin });
  }
  // A write that fits still goes through.
  const after = await page.evaluate(async () => {
    const db = window.quotaDb;
    await db.put('todos', { id: 'later', title: 'fits' });
    const n = (await db.query('todos', {})).length;
    await db.close();
    return n;
  });
  assert.equal(after, 51);
  await browser.close();
});
