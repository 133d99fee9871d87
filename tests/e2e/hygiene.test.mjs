// Value and error hygiene through the public API, in real Chromium: anything that is not
// plain JSON is NOT_JSON (Date included) in documents, patches and queries; patching a
// missing or deleted document is NOT_FOUND however it was deleted; messages name JS API
// only; a failed wasm load names its URL and can be retried; and in Node every entry point
// imports safely and refuses use with UNSUPPORTED_ENVIRONMENT.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { setup } from './harness.mjs';
import { startServer } from './server.mjs';

const SCHEMA = { version: 1, collections: { todos: { primaryKey: 'id', indexes: { byDone: 'done' } } } };

let h;
let srv;
before(async () => { h = await setup(); srv = await startServer(); });
after(async () => { await h?.teardown(); await srv?.stop(); });

test('every non-plain value is NOT_JSON in put, putMany, patch and query, and nothing is written', async () => {
  const page = await h.openPage();
  const got = await page.evaluate(async (schema) => {
    class Point { constructor() { this.x = 1; } }
    class WithToJSON { toJSON() { return 'looks like JSON'; } }
    const values = {
      date: () => new Date(0), map: () => new Map([['a', 1]]), set: () => new Set([1]), instance: () => new Point(),
      toJSON: () => new WithToJSON(), uint8: () => new Uint8Array(2), buffer: () => new ArrayBuffer(2),
      boxedNumber: () => new Number(1), boxedString: () => new String('s'), regexp: () => /x/, error: () => new Error('e'),
      promise: () => Promise.resolve(1),
    };
    const db = await window.tidemark.openReplica({ name: 'not-json', schema });
    await db.put('todos', { id: 'keep', done: false });
    const before = db.status().maxRow;
    const out = {};
    const code = async (f) => { try { await f(); return 'no error'; } catch (e) { return `${e.code}: ${e.message}`; } };
    for (const [name, make] of Object.entries(values)) {
      out[name] = {
        put: await code(() => db.put('todos', { id: 'x', v: make() })),
        nested: await code(() => db.put('todos', { id: 'x', a: { b: [1, make()] } })),
        putMany: await code(() => db.putMany('todos', [{ id: 'y' }, { id: 'x', v: make() }])),
        patch: await code(() => db.patch('todos', 'keep', { v: make() })),
        dotted: await code(() => db.patch('todos', 'keep', { 'a.b': make() })),
        where: await code(() => db.query('todos', { where: { done: make() } })),
        operator: await code(() => db.query('todos', { where: { done: { gte: make() } } })),
      };
    }
    const after = { maxRow: db.status().maxRow, docs: await db.query('todos') };
    await db.close();
    return { out, before, after };
  }, SCHEMA);
  for (const [name, calls] of Object.entries(got.out)) {
    for (const [call, result] of Object.entries(calls)) {
      assert.match(result, /^NOT_JSON: /, `${name} in ${call}: ${result}`);
    }
  }
  // The message says what was refused and where.
  assert.match(got.out.date.put, /a Date at "v" is not JSON/);
  assert.match(got.out.date.put, /getTime\(\)/, 'and what to store instead');
  assert.match(got.out.map.nested, /a Map at "1" is not JSON/);
  assert.match(got.out.instance.patch, /a Point at "v"/);
  assert.equal(got.after.maxRow, got.before, 'no refused write reached the op log');
  assert.deepEqual(got.after.docs, [{ id: 'keep', done: false }]);
  await page.close();
});

test('putMany of many documents: every one arrives in order, and a refused one is named by its index in the whole array', async () => {
  // putMany converts its array a slice at a time (to_json_items): the slices' seams and the
  // index an error names must not show.
  const page = await h.openPage();
  const got = await page.evaluate(async (schema) => {
    const db = await window.tidemark.openReplica({ name: 'put-many-slices', schema });
    const docs = Array.from({ length: 300 }, (_, i) => ({ id: `d${String(i).padStart(3, '0')}`, title: `t${i}`, n: i, tags: [i, { at: i }] }));
    await db.putMany('todos', docs);
    const stored = await db.query('todos');
    const code = async (f) => { try { await f(); return 'no error'; } catch (e) { return `${e.code}: ${e.message}`; } };
    const before = db.status().maxRow;
    const withDate = docs.map((d) => ({ ...d, id: `x${d.id}` }));
    withDate[200] = new Date(0);
    const withFunction = docs.map((d) => ({ ...d, id: `y${d.id}` }));
    withFunction[257] = { id: 'f', v: () => 1 };
    const refused = { element: await code(() => db.putMany('todos', withDate)), nested: await code(() => db.putMany('todos', withFunction)) };
    const after = { maxRow: db.status().maxRow, count: (await db.query('todos')).length };
    await db.close();
    return { docs, stored, refused, before, after };
  }, SCHEMA);
  assert.deepEqual(got.stored, got.docs, 'all 300, as written, in id order');
  assert.match(got.refused.element, /^NOT_JSON: .*a Date at "200" is not JSON/);
  assert.match(got.refused.nested, /^NOT_JSON: .*a function at "v" is not JSON/);
  assert.deepEqual(got.after, { maxRow: got.before, count: 300 }, 'a refused putMany writes nothing');
  await page.close();
});

test('patching a missing or deleted document is NOT_FOUND, however it was deleted', async () => {
  const page = await h.openPage();
  const got = await page.evaluate(async ({ schema, ws }) => {
    const { openReplica } = window.tidemark;
    const sync = { url: ws, library: 'hygiene-not-found' };
    const a = await openReplica({ name: 'nf-a', schema, sync });
    const b = await openReplica({ name: 'nf-b', schema, sync });
    const code = async (f) => { try { await f(); return 'no error'; } catch (e) { return e.code; } };
    const out = {};
    out.missing = await code(() => a.patch('todos', 'never', { done: true }));
    await a.putMany('todos', [{ id: 'local', title: 'Milk' }, { id: 'same-tick', title: 'Eggs' }, { id: 'remote', title: 'Bread' }, { id: 'tab', title: 'Tea' }]);
    await a.delete('todos', 'local');
    out.deletedLocally = await code(() => a.patch('todos', 'local', { done: true }));
    // A delete and a patch issued together: the patch sees the delete (one transaction each).
    const [, patched] = await Promise.all([code(() => a.delete('todos', 'same-tick')), code(() => a.patch('todos', 'same-tick', { done: true }))]);
    out.deletedConcurrently = patched;
    // Deleted by another replica, through the server.
    await a.syncNow();
    await b.syncNow();
    await b.delete('todos', 'remote');
    await b.syncNow();
    await a.syncNow();
    out.deletedRemotely = await code(() => a.patch('todos', 'remote', { done: true }));
    // Deleted by another tab of the same replica.
    const tab = await openReplica({ name: 'nf-a', schema });
    await tab.delete('todos', 'tab');
    out.deletedInAnotherTab = await code(() => a.patch('todos', 'tab', { done: true }));
    out.docs = (await a.query('todos')).map((d) => d.id);
    for (const db of [a, b, tab]) await db.close();
    return out;
  }, { schema: SCHEMA, ws: srv.wsUrl });
  assert.deepEqual(got, { missing: 'NOT_FOUND', deletedLocally: 'NOT_FOUND', deletedConcurrently: 'NOT_FOUND',
    deletedRemotely: 'NOT_FOUND', deletedInAnotherTab: 'NOT_FOUND', docs: [] });
  await page.close();
});

test('SCHEMA_MISMATCH tells the app to call deleteReplica(), in JS terms', async () => {
  const page = await h.openPage();
  const got = await page.evaluate(async (schema) => {
    const db = await window.tidemark.openReplica({ name: 'mismatch', schema });
    await db.close();
    const other = { version: 1, collections: { todos: { primaryKey: 'id', indexes: { byTitle: 'title' } } } };
    try { await window.tidemark.openReplica({ name: 'mismatch', schema: other }); return null; } catch (e) { return { code: e.code, message: e.message }; }
  }, SCHEMA);
  assert.equal(got.code, 'SCHEMA_MISMATCH');
  assert.match(got.message, /deleteReplica\(/);
  assert.doesNotMatch(got.message, /::|[a-z]+_[a-z_]+\(|IdbStore/, 'no Rust names');
  await page.close();
});

test('a failed wasm load names its URL and does not poison later loads; another source once loaded is refused', async () => {
  const page = await h.openPage();
  const got = await page.evaluate(async (schema) => {
    const { load, openReplica } = window.tidemark;
    const code = async (f) => { try { await f(); return { ok: true }; } catch (e) { return { code: e.code, message: e.message }; } };
    const bad = await code(() => load('/no-such-dir/tidemark_bg.wasm'));
    const notWasm = await code(() => load('/tests/e2e/page.html'));
    const opened = await code(async () => { const db = await openReplica({ name: 'after-bad-load', schema }); await db.close(); });
    const again = await code(() => load());
    const other = await code(() => load('/js/pkg/tidemark_bg.wasm'));
    return { bad, notWasm, opened, again, other };
  }, SCHEMA);
  assert.equal(got.bad.code, 'WASM_LOAD_FAILED');
  assert.match(got.bad.message, /http:\/\/127\.0\.0\.1:\d+\/no-such-dir\/tidemark_bg\.wasm: the server answered 404/);
  assert.equal(got.notWasm.code, 'WASM_LOAD_FAILED');
  assert.match(got.notWasm.message, /page\.html: the response is not WebAssembly: text\/html/);
  assert.deepEqual(got.opened, { ok: true }, 'openReplica loads the package wasm after the failures');
  assert.deepEqual(got.again, { ok: true });
  assert.equal(got.other.code, 'INVALID_ARGUMENT');
  assert.match(got.other.message, /already loaded/);
  assert.deepEqual(h.errors, [], 'no uncaught page errors');
  await page.close();
});

test('load() asks IndexedDB something while the wasm loads, once, and a failure of that question changes nothing', async () => {
  for (const broken of [null, 'throws', 'rejects']) {
    const page = await h.openPage();
    const got = await page.evaluate(async ([schema, broken]) => {
      const { load, openReplica } = window.tidemark;
      const calls = [];
      const databases = IDBFactory.prototype.databases;
      IDBFactory.prototype.databases = function () {
        calls.push(typeof WebAssembly.Memory);
        if (broken === 'throws') throw new DOMException('no', 'SecurityError');
        if (broken === 'rejects') return Promise.reject(new DOMException('no', 'UnknownError'));
        return databases.call(this);
      };
      const loading = load();
      const asked = calls.length; // before the load resolved: while it was under way
      await loading;
      await load();
      const db = await openReplica({ name: 'warmed-' + broken, schema });
      await db.put('todos', { id: 'a', done: false });
      const doc = await db.get('todos', 'a');
      await db.close();
      return { asked, calls: calls.length, doc };
    }, [SCHEMA, broken]);
    assert.equal(got.asked, 1, `${broken}: asked as the load began`);
    assert.equal(got.calls, 1, `${broken}: asked once, not again by a second load() or the open`);
    assert.deepEqual(got.doc, { id: 'a', done: false }, `${broken}: the replica opens and works`);
    await page.close();
  }
  assert.deepEqual(h.errors, [], 'no uncaught page errors (a rejected question is caught)');
});

test('in Node, every entry point imports safely and using the API is UNSUPPORTED_ENVIRONMENT', async () => {
  for (const entry of ['index.js', 'dev.js', 'embedded.js']) {
    const mod = await import(`../../js/${entry}`);
    for (const [name, call] of [['openReplica', () => mod.openReplica({ name: 'x', schema: SCHEMA })], ['deleteReplica', () => mod.deleteReplica('x')], ['load', () => mod.load()]]) {
      await assert.rejects(call(), (e) => {
        assert.equal(e.code, 'UNSUPPORTED_ENVIRONMENT', `${entry} ${name}: ${e}`);
        assert.match(e.message, /browser page or Web Worker/);
        return true;
      });
    }
    assert.equal(typeof mod.defineSchema, 'function');
    assert.equal(mod.defineSchema(SCHEMA), SCHEMA);
  }
  const devtools = await import('../../js/devtools.js');
  assert.equal(devtools.peerName('abc', { dbId: 'x', outgoing: { abc: 1 } }), 'server');
});
