// Schema evolution in real Chromium with real IndexedDB (issue 4): upgrade on open through
// two steps, reset from older-version data by a real server, interrupted upgrades and
// resets, mixed-version writers, and refusals that leave the live store untouched.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { setup } from './harness.mjs';
import { startServer } from './server.mjs';

// v1: todos with `title`, and notes. v2: `title` renamed `name`, index on it.
// v3: notes dropped, an index on `list`, default list 'inbox'.
const V1 = { version: 1, collections: { todos: { primaryKey: 'id', indexes: { byDone: 'done' } }, notes: { primaryKey: 'id' } } };
const V2 = { version: 2, collections: { todos: { primaryKey: 'id', indexes: { byDone: 'done', byName: 'name' } }, notes: { primaryKey: 'id' } } };
const V3 = { version: 3, collections: { todos: { primaryKey: 'id', indexes: { byDone: 'done', byName: 'name', byList: 'list' }, defaults: { list: 'inbox' } } } };
// Migrations travel into the page as source text.
const RENAME = `(doc) => { const { title, ...rest } = doc; return title === undefined ? doc : { ...rest, name: title }; }`;

let h;
before(async () => { h = await setup(); });
after(async () => { await h.teardown(); });

/** Opens `name` in `page` with the given schemas and runs `body(db)` (source text). */
function inPage(page, { name, schema, history = [], steps = {}, sync, body, arg }) {
  return page.evaluate(async ({ name, schema, history, steps, sync, body, arg }) => {
    const migrations = {};
    for (const [v, src] of Object.entries(steps)) migrations[v] = src === null ? null : (0, eval)(`(${src})`);
    const progress = [];
    let db;
    try {
      db = await window.tidemark.openReplica({ name, schema, history, migrations, sync, onProgress: (p) => progress.push(p) });
    } catch (e) {
      return { error: e.code, message: e.message };
    }
    try {
      const events = { reset: [], futureVersion: [] };
      db.on('reset', (r) => events.reset.push(r));
      db.on('futureVersion', (f) => events.futureVersion.push(f));
      const out = await (0, eval)(`(${body})`)(db, arg);
      return { out, progress: progress.length, events };
    } finally { await db.close(); }
  }, { name, schema, history, steps, sync, body: body.toString(), arg });
}

const FULL = { 2: RENAME, 3: null };

test('open at v1, write 1,000 documents, reopen at v3: migrated through two steps', async () => {
  const page = await h.openPage();
  await inPage(page, { name: 'up3', schema: V1, body: async (db) => {
    await db.putMany('todos', Array.from({ length: 1000 }, (_, i) => ({ id: `t${String(i).padStart(4, '0')}`, title: `task ${i}`, done: i % 2 === 0 })));
    await db.putMany('notes', [{ id: 'n1', text: 'gone at v3' }]);
  } });
  const r = await inPage(page, { name: 'up3', schema: V3, history: [V1, V2], steps: FULL, body: async (db) => ({
    count: (await db.query('todos')).length,
    one: await db.get('todos', 't0007'),
    byList: (await db.query('todos', { where: { list: 'inbox' } })).length,
    byName: await db.query('todos', { where: { name: 'task 9' } }),
    notes: await db.query('notes').then(() => 'still there', (e) => e.code),
    status: db.status(),
  }) });
  assert.equal(r.out.count, 1000);
  assert.deepEqual(r.out.one, { id: 't0007', name: 'task 7', done: false, list: 'inbox' });
  assert.equal(r.out.byList, 1000, 'the index added at v3 answers queries');
  assert.deepEqual(r.out.byName, [{ id: 't0009', name: 'task 9', done: false, list: 'inbox' }]);
  assert.equal(r.out.notes, 'UNKNOWN_COLLECTION', 'the dropped collection is gone');
  assert.equal(r.out.status.schemaVersion, 3);
  assert.ok(r.progress > 0, 'onProgress reported the migration');
  // Reopening at v3 again does not migrate again.
  const again = await inPage(page, { name: 'up3', schema: V3, history: [V1, V2], steps: FULL, body: async (db) => (await db.query('todos')).length });
  assert.equal(again.out, 1000);
  assert.equal(again.progress, 0);
  await page.close();
});

test('a missing migration, an unknown old schema, a throwing step or one returning undefined is an error and the live store is untouched', async () => {
  const page = await h.openPage();
  await inPage(page, { name: 'refuse', schema: V1, body: (db) => db.put('todos', { id: 'a', title: 'kept' }) });
  const noStep = await inPage(page, { name: 'refuse', schema: V3, history: [V1, V2], steps: { 2: RENAME }, body: () => 'opened' });
  assert.equal(noStep.error, 'MISSING_MIGRATION');
  const noSchema = await inPage(page, { name: 'refuse', schema: V3, history: [V2], steps: FULL, body: () => 'opened' });
  assert.equal(noSchema.error, 'MISSING_SCHEMA');
  const throws = await inPage(page, { name: 'refuse', schema: V2, history: [V1], steps: { 2: '() => { throw new Error("boom"); }' }, body: () => 'opened' });
  assert.equal(throws.error, 'MIGRATION_FAILED');
  // A step that returns undefined (a forgotten `return`) fails; it never deletes.
  const forgot = await inPage(page, { name: 'refuse', schema: V2, history: [V1], steps: { 2: '(doc) => { doc.name = doc.title; }' }, body: () => 'opened' });
  assert.equal(forgot.error, 'MIGRATION_FAILED');
  assert.match(forgot.message, /todos\/a/, 'names the collection and id');
  assert.match(forgot.message, /returned undefined.*return the document, or null to delete it/);
  const still = await inPage(page, { name: 'refuse', schema: V1, body: async (db) => ({ doc: await db.get('todos', 'a'), v: db.status().schemaVersion }) });
  assert.deepEqual(still.out, { doc: { id: 'a', title: 'kept' }, v: 1 });
  // null does delete.
  await inPage(page, { name: 'refuse', schema: V1, body: (db) => db.put('todos', { id: 'b', title: 'dropped' }) });
  const dropped = await inPage(page, { name: 'refuse', schema: V2, history: [V1], steps: { 2: `(doc) => doc.id === 'b' ? null : (${RENAME})(doc)` },
    body: async (db) => db.query('todos') });
  assert.deepEqual(dropped.out, [{ id: 'a', name: 'kept' }]);
  // And an app older than the stored data is refused instead of corrupting it.
  await inPage(page, { name: 'newer', schema: V2, history: [V1], steps: { 2: RENAME }, body: (db) => db.put('todos', { id: 'x', name: 'v2' }) });
  const old = await inPage(page, { name: 'newer', schema: V1, body: () => 'opened' });
  assert.equal(old.error, 'VERSION_TOO_OLD');
  await page.close();
});

test('an upgrade interrupted by closing the page completes on the next open', async () => {
  const page = await h.openPage();
  await inPage(page, { name: 'crash-up', schema: V1, body: (db) => db.putMany('todos', Array.from({ length: 3000 }, (_, i) => ({ id: `c${i}`, title: `t${i}` }))) });
  // Start the upgrade and close the page at its first progress report.
  await page.evaluate(({ V1, V2, V3, RENAME }) => {
    window.tidemark.openReplica({ name: 'crash-up', schema: V3, history: [V1, V2], migrations: { 2: (0, eval)(`(${RENAME})`), 3: null },
      onProgress: () => { window.sawProgress = true; } }).catch(() => {});
  }, { V1, V2, V3, RENAME });
  await page.waitForFunction(() => window.sawProgress === true);
  await page.close();
  const page2 = await h.openPage();
  const r = await inPage(page2, { name: 'crash-up', schema: V3, history: [V1, V2], steps: FULL, body: async (db) => ({ n: (await db.query('todos')).length, one: await db.get('todos', 'c42') }) });
  assert.equal(r.out.n, 3000);
  assert.deepEqual(r.out.one, { id: 'c42', name: 't42', list: 'inbox' });
  await page2.close();
});

test('a v2 replica reset by a server holding only v1 data keeps its writes and does not loop', async () => {
  const srv = await startServer({ perDiff: 100 });
  try {
    const page = await h.openPage();
    const sync = { url: srv.wsUrl, library: 'reset', perDiff: 100, maxDiffs: 50 };
    await inPage(page, { name: 'reset-v1', schema: V1, sync, body: async (db) => {
      await db.putMany('todos', Array.from({ length: 500 }, (_, i) => ({ id: `s${i}`, title: `server ${i}`, done: false })));
      await db.syncNow();
    } });
    const r = await inPage(page, { name: 'reset-v2', schema: V2, history: [V1], steps: { 2: RENAME }, sync, body: async (db) => {
      await db.putMany('todos', Array.from({ length: 49 }, (_, i) => ({ id: `mine${i}`, name: 'local', done: true })));
      await db.put('todos', { id: 's3', name: 'edited locally at v2', done: true });
      const first = await db.syncNow();
      const second = await db.syncNow();
      return { first, second, docs: await db.query('todos', { orderBy: 'id' }), pending: db.status().pending };
    } });
    assert.ok(r.out.first.snapshot && r.out.first.reset, 'the server answered with older-version data');
    assert.equal(r.events.reset.length, 1);
    assert.ok(!r.out.second.reset && !r.out.second.snapshot, 'no reset loop');
    assert.equal(r.out.docs.length, 549);
    assert.deepEqual(r.out.docs.find((d) => d.id === 's7'), { id: 's7', name: 'server 7', done: false });
    assert.deepEqual(r.out.docs.find((d) => d.id === 's3'), { id: 's3', name: 'edited locally at v2', done: true });
    assert.equal(r.out.docs.filter((d) => d.name === 'local').length, 49);
    assert.equal(r.out.pending, 0, 'the unsynced writes and the migration output reached the server');
    const fresh = await inPage(page, { name: 'reset-fresh', schema: V2, history: [V1], steps: { 2: RENAME }, sync, body: async (db) => {
      for (;;) { if (!(await db.syncNow()).capped) break; }
      return db.query('todos', { orderBy: 'id' });
    } });
    assert.deepEqual(fresh.out, r.out.docs);
    await page.close();
  } finally { await srv.stop(); }
});

test('a reset interrupted mid-way loses nothing and ends migrated', async () => {
  const srv = await startServer({ perDiff: 50 });
  try {
    const page = await h.openPage();
    const sync = { url: srv.wsUrl, library: 'reset-crash', perDiff: 50, maxDiffs: 50 };
    await inPage(page, { name: 'rc-v1', schema: V1, sync, body: async (db) => {
      await db.putMany('todos', Array.from({ length: 1000 }, (_, i) => ({ id: `s${i}`, title: `server ${i}` })));
      await db.syncNow();
    } });
    await inPage(page, { name: 'rc-v2', schema: V2, history: [V1], steps: { 2: RENAME }, body: (db) => db.put('todos', { id: 'mine', name: 'unsynced' }) });
    // Abort the reset after a few snapshot chunks by closing the page.
    await page.evaluate(async ({ V1, V2, RENAME, sync }) => {
      const db = await window.tidemark.openReplica({ name: 'rc-v2', schema: V2, history: [V1], migrations: { 2: (0, eval)(`(${RENAME})`) }, sync });
      let chunks = 0;
      db.on('progress', () => { if (++chunks === 3) window.midway = true; });
      db.syncNow().catch(() => {});
    }, { V1, V2, RENAME, sync });
    await page.waitForFunction(() => window.midway === true);
    await page.close();
    const page2 = await h.openPage();
    const r = await inPage(page2, { name: 'rc-v2', schema: V2, history: [V1], steps: { 2: RENAME }, sync, body: async (db) => {
      const partial = (await db.query('todos')).length;
      for (;;) { if (!(await db.syncNow()).capped) break; }
      return { partial, docs: await db.query('todos'), mine: await db.get('todos', 'mine'), one: await db.get('todos', 's999') };
    } });
    assert.ok(r.out.partial >= 1, 'the local write survived the interruption');
    assert.equal(r.out.docs.length, 1001);
    assert.deepEqual(r.out.mine, { id: 'mine', name: 'unsynced' });
    assert.deepEqual(r.out.one, { id: 's999', name: 'server 999' });
    await page2.close();
  } finally { await srv.stop(); }
});

test('mixed versions: v2 migrates v1 ops; v1 stores v2 ops, raises futureVersion, applies them after upgrading', async () => {
  const srv = await startServer();
  try {
    const page = await h.openPage();
    const sync = { url: srv.wsUrl, library: 'mixed' };
    const v1 = (body) => inPage(page, { name: 'mx-v1', schema: V1, sync, body });
    const v2 = (body) => inPage(page, { name: 'mx-v2', schema: V2, history: [V1], steps: { 2: RENAME }, sync, body });
    await v1(async (db) => { await db.put('todos', { id: 'old', title: 'from v1', done: false }); await db.syncNow(); });
    const a = await v2(async (db) => {
      await db.put('todos', { id: 'new', name: 'from v2', done: true });
      await db.syncNow();
      return db.query('todos', { orderBy: 'id' });
    });
    assert.deepEqual(a.out, [{ id: 'new', name: 'from v2', done: true }, { id: 'old', name: 'from v1', done: false }]);
    const b = await v1(async (db) => { const r = await db.syncNow(); return { r, docs: await db.query('todos') }; });
    assert.deepEqual(b.out.docs, [{ id: 'old', title: 'from v1', done: false }], 'v2 ops are stored, not applied');
    assert.deepEqual(b.events.futureVersion, [{ version: 2, current: 1 }]);
    assert.equal(b.out.r.futureVersion, 2, "the round's report says so too");
    const c = await inPage(page, { name: 'mx-v1', schema: V2, history: [V1], steps: { 2: RENAME }, sync, body: (db) => db.query('todos', { orderBy: 'id' }) });
    assert.deepEqual(c.out, a.out, 'after upgrading, the stored v2 ops apply');
    await page.close();
  } finally { await srv.stop(); }
});
