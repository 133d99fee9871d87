// Resets through a staging generation (issue 11, DESIGN §6) in real Chromium against a
// real tidemark-server: older-version data is staged, migrated and swapped in at once.
// Readers and live queries in this tab and another see the old state or the new one,
// never a mixture; writes during the reset land in the new generation; a tab closed
// mid-reset leaves the old state and the reset completes on the next sync, once;
// migrations read other documents; errors never hide data.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { setup } from './harness.mjs';
import { startServer } from './server.mjs';

// v1: tasks point at a tag. v2: each task carries its tag's label; the tags are gone.
const V1 = { version: 1, collections: { tasks: { primaryKey: 'id', indexes: { byTag: 'tagId' } }, tags: { primaryKey: 'id' } } };
const V2 = { version: 2, collections: { tasks: { primaryKey: 'id', indexes: { byLabel: 'label' } } } };
const LABEL = `(doc, collection, ctx) => {
  const { tagId, ...rest } = doc;
  const tag = tagId === undefined ? undefined : ctx.get('tags', tagId);
  return { ...rest, label: tag ? tag.label : null };
}`;

let h;
before(async () => { h = await setup(); });
after(async () => { await h.teardown(); });

/** Opens `name` in `page` (migrations as source text) and runs `body(db, arg)` there. */
function inPage(page, { name, schema, history = [], steps = {}, sync, body, arg }) {
  return page.evaluate(async ({ name, schema, history, steps, sync, body, arg }) => {
    const migrations = {};
    for (const [v, src] of Object.entries(steps)) migrations[v] = src === null ? null : (0, eval)(`(${src})`);
    let db;
    try {
      db = await window.tidemark.openReplica({ name, schema, history, migrations, sync });
    } catch (e) {
      return { error: e.code, message: e.message };
    }
    try {
      const events = { reset: [], error: [] };
      db.on('reset', (r) => events.reset.push(r));
      db.on('error', (e) => events.error.push({ code: e.code, message: e.message }));
      const out = await (0, eval)(`(${body})`)(db, arg);
      return { out, events };
    } finally { await db.close(); }
  }, { name, schema, history, steps, sync, body: body.toString(), arg });
}

/** A v1 app writes `n` tasks over 3 tags and pushes them to the server's `library`. */
async function seedV1(page, srv, library, n) {
  const sync = { url: srv.wsUrl, library, perDiff: 500, maxDiffs: 100 };
  await inPage(page, { name: `${library}-v1`, schema: V1, sync, arg: n, body: async (db, n) => {
    await db.putMany('tags', [0, 1, 2].map((t) => ({ id: `g${t}`, label: `tag ${t}` })));
    await db.putMany('tasks', Array.from({ length: n }, (_, i) => ({ id: `t${String(i).padStart(5, '0')}`, title: `task ${i}`, tagId: `g${i % 3}` })));
    for (;;) { if (!(await db.syncNow()).capped) break; }
  } });
  return sync;
}

test('readers and live queries in two tabs see only the old or the new state during a 3,000-document reset', async () => {
  const srv = await startServer({ perDiff: 200 });
  try {
    const seeder = await h.openPage();
    const sync = await seedV1(seeder, srv, 'big', 3000);
    await seeder.close();
    const a = await h.openPage();
    const b = await h.openPage();
    // 40 unsynced writes of the v2 app, before it ever synced.
    await inPage(a, { name: 'big-v2', schema: V2, history: [V1], steps: { 2: LABEL }, body: (db) =>
      db.putMany('tasks', Array.from({ length: 40 }, (_, i) => ({ id: `mine${i}`, title: 'mine', label: 'own' }))) });
    // Tab b: a second handle on the same replica, sampling while tab a resets.
    await b.evaluate(async ({ V1, V2, LABEL }) => {
      const db = await window.tidemark.openReplica({ name: 'big-v2', schema: V2, history: [V1], migrations: { 2: (0, eval)(`(${LABEL})`) } });
      window.handle = db;
      window.samples = [];
      window.live = [];
      db.subscribe('tasks', {}, (docs) => window.live.push(docs.length));
      // One query at a time, back to back: never a pile-up of 3,000-document reads.
      window.sampling = true;
      window.sampled = (async () => {
        while (window.sampling) {
          try { window.samples.push((await db.query('tasks')).length); } catch (e) { window.samples.push(e.code); }
          await new Promise((ok) => setTimeout(ok, 5));
        }
      })();
    }, { V1, V2, LABEL });
    const r = await a.evaluate(async ({ V1, V2, LABEL, sync }) => {
      const db = await window.tidemark.openReplica({ name: 'big-v2', schema: V2, history: [V1], migrations: { 2: (0, eval)(`(${LABEL})`) }, sync });
      const samples = [];
      const live = [];
      const resets = [];
      const phases = new Set();
      db.subscribe('tasks', {}, (docs) => live.push(docs.length));
      db.on('reset', (e) => resets.push(e));
      let wrote = false;
      const during = [];
      db.on('progress', (p) => {
        phases.add(p.phase);
        // Mid-snapshot, the app writes: it must land in the new generation.
        if (p.phase === 'snapshot' && !wrote) { wrote = true; during.push(db.put('tasks', { id: 'during', title: 'written mid-reset', label: 'own' })); }
      });
      let sampling = true;
      const sampled = (async () => {
        while (sampling) { samples.push((await db.query('tasks')).length); await new Promise((ok) => setTimeout(ok, 5)); }
      })();
      let first;
      for (;;) { const rep = await db.syncNow(); first ??= rep; if (!rep.capped) break; }
      await Promise.all(during);
      sampling = false;
      await sampled;
      await new Promise((ok) => setTimeout(ok, 100));
      const second = await db.syncNow();
      const out = { first, second, samples, live, resets, phases: [...phases], count: (await db.query('tasks')).length,
        t5: await db.get('tasks', 't00005'), status: db.status() };
      await db.close();
      return out;
    }, { V1, V2, LABEL, sync });
    // Tab b follows the swap without an error.
    await b.waitForFunction(() => window.live.at(-1) === 3041, null, { timeout: 30000 });
    const seen = await b.evaluate(async () => {
      window.sampling = false;
      await window.sampled;
      const out = { samples: window.samples, live: window.live, count: (await window.handle.query('tasks')).length };
      await window.handle.put('tasks', { id: 'from-b', title: 'after the swap', label: 'own' });
      out.after = (await window.handle.query('tasks')).length;
      await window.handle.close();
      return out;
    });

    assert.ok(r.first.snapshot && r.first.reset, 'the pull was a reset');
    assert.ok(!r.second.reset && !r.second.snapshot, 'no reset loop');
    assert.equal(r.count, 3041, '3,000 migrated + 40 own + 1 written during the reset');
    assert.deepEqual(r.t5, { id: 't00005', title: 'task 5', label: 'tag 2' }, 'the migration read the tag');
    // The old state (40), the swapped state (3,040), and the write that waited for the swap (3,041).
    const allowed = (n) => n === 40 || n === 3040 || n === 3041;
    for (const n of r.samples) assert.ok(allowed(n), `tab a sampled ${n}`);
    assert.ok(r.samples.includes(40), 'tab a sampled during the reset');
    assert.equal(r.live[0], 40);
    assert.ok(r.live.every(allowed) && r.live.length <= 3, `the live query fired once for the swap: ${r.live}`);
    assert.equal(r.resets.length, 1);
    assert.equal(r.resets[0].migrated, 3000);
    assert.equal(r.resets[0].documents, 3043, 'the snapshot carried 3,000 tasks, 3 tags and the 40 writes the push had just sent');
    assert.equal(r.resets[0].fromVersion, 1);
    for (const p of ['snapshot', 'migrate', 'swap']) assert.ok(r.phases.includes(p), `progress reported ${p}: ${r.phases}`);
    assert.equal(r.status.resetPending, false);
    for (const n of seen.samples) assert.ok(allowed(n), `tab b sampled ${n}`);
    assert.ok(seen.samples.length > 3);
    assert.equal(seen.live[0], 40);
    assert.ok(seen.live.every(allowed), `tab b's live query saw the old state, then the new one: ${seen.live}`);
    assert.equal(seen.after, 3042, 'tab b\'s next write goes into the new generation');
    await a.close();
    await b.close();
  } finally { await srv.stop(); }
});

test('a tab closed mid-reset reopens with the old state, says a reset is pending, and completes it once', async () => {
  const srv = await startServer({ perDiff: 50 });
  try {
    const page = await h.openPage();
    const sync = await seedV1(page, srv, 'cut', 1000);
    await inPage(page, { name: 'cut-v2', schema: V2, history: [V1], steps: { 2: LABEL }, body: (db) => db.put('tasks', { id: 'mine', title: 'unsynced', label: 'own' }) });
    await page.evaluate(async ({ V1, V2, LABEL, sync }) => {
      const db = await window.tidemark.openReplica({ name: 'cut-v2', schema: V2, history: [V1], migrations: { 2: (0, eval)(`(${LABEL})`) }, sync });
      let chunks = 0;
      db.on('progress', (p) => { if (p.phase === 'snapshot' && ++chunks === 5) window.midway = true; });
      db.syncNow().catch(() => {});
    }, { V1, V2, LABEL, sync });
    await page.waitForFunction(() => window.midway === true);
    await page.close();
    const page2 = await h.openPage();
    const r = await inPage(page2, { name: 'cut-v2', schema: V2, history: [V1], steps: { 2: LABEL }, sync, body: async (db) => {
      const before = { count: (await db.query('tasks')).length, pending: db.status().resetPending };
      await db.put('tasks', { id: 'after', title: 'written after reopening', label: 'own' });
      const first = await db.syncNow();
      const second = await db.syncNow();
      return { before, first, second, count: (await db.query('tasks')).length, mine: await db.get('tasks', 'mine'), pending: db.status().resetPending };
    } });
    assert.deepEqual(r.out.before, { count: 1, pending: true }, 'the old state, whole, and the reset still pending');
    assert.ok(r.out.first.reset, 'the next sync completes the reset');
    assert.equal(r.events.reset.length, 1, 'the app hears reset when it completes');
    assert.ok(!r.out.second.reset && !r.out.second.snapshot, 'no reset loop');
    assert.equal(r.out.count, 1002);
    assert.deepEqual(r.out.mine, { id: 'mine', title: 'unsynced', label: 'own' });
    assert.equal(r.out.pending, false);
    await page2.close();
  } finally { await srv.stop(); }
});

// A replica that never wrote copies no log into its staging generation: the staging head is
// written with the first chunk. Cut off after some chunks, it reopens empty, still pending,
// and its next sync stages everything again, once.
test('a new replica whose first sync (a reset) is cut off reopens empty and completes it on the next sync, once', async () => {
  const srv = await startServer({ perDiff: 50 });
  try {
    const page = await h.openPage();
    const sync = await seedV1(page, srv, 'cut-new', 600);
    await page.evaluate(async ({ V1, V2, LABEL, sync }) => {
      const db = await window.tidemark.openReplica({ name: 'cut-new-v2', schema: V2, history: [V1], migrations: { 2: (0, eval)(`(${LABEL})`) }, sync });
      window.copied = [];
      let chunks = 0;
      db.on('progress', (p) => {
        if (p.phase === 'copy') window.copied.push(p.total);
        if (p.phase === 'snapshot' && ++chunks === 4) window.midway = true;
      });
      db.syncNow().catch(() => {});
    }, { V1, V2, LABEL, sync });
    await page.waitForFunction(() => window.midway === true);
    const copied = await page.evaluate(() => window.copied);
    await page.close();
    assert.deepEqual(copied, [0], 'a replica with no rows has no log to copy');
    const page2 = await h.openPage();
    const r = await inPage(page2, { name: 'cut-new-v2', schema: V2, history: [V1], steps: { 2: LABEL }, sync, body: async (db) => {
      const before = { count: (await db.query('tasks')).length, pending: db.status().resetPending, maxRow: db.status().maxRow };
      const first = await db.syncNow();
      const second = await db.syncNow();
      return { before, first, second, count: (await db.query('tasks')).length, t7: await db.get('tasks', 't00007'), pending: db.status().resetPending };
    } });
    assert.deepEqual(r.out.before, { count: 0, pending: true, maxRow: 0 }, 'nothing of the cut-off reset is visible; it is still pending');
    assert.ok(r.out.first.reset, 'the next sync completes the reset');
    assert.equal(r.events.reset.length, 1, 'the app hears reset once');
    assert.ok(!r.out.second.reset && !r.out.second.snapshot, 'no reset loop');
    assert.equal(r.out.count, 600);
    assert.deepEqual(r.out.t7, { id: 't00007', title: 'task 7', label: 'tag 1' }, 'migrated on the way in');
    assert.equal(r.out.pending, false);
    await page2.close();
  } finally { await srv.stop(); }
});

test('a migration that reads other documents works the same on open and on reset', async () => {
  const srv = await startServer();
  try {
    const page = await h.openPage();
    const sync = await seedV1(page, srv, 'ctx', 30);
    // Upgrade on open: a v1 replica with the data, reopened at v2.
    await inPage(page, { name: 'ctx-local', schema: V1, sync, body: async (db) => { for (;;) { if (!(await db.syncNow()).capped) break; } } });
    const opened = await inPage(page, { name: 'ctx-local', schema: V2, history: [V1], steps: { 2: LABEL }, body: async (db) => ({
      t4: await db.get('tasks', 't00004'), byLabel: (await db.query('tasks', { where: { label: 'tag 0' } })).length,
      tags: await db.query('tags').then(() => 'kept', (e) => e.code) }) });
    assert.deepEqual(opened.out.t4, { id: 't00004', title: 'task 4', label: 'tag 1' });
    assert.equal(opened.out.byLabel, 10);
    assert.equal(opened.out.tags, 'UNKNOWN_COLLECTION', 'tags are dropped at v2');
    // Reset: a fresh v2 replica pulls the v1 data.
    const reset = await inPage(page, { name: 'ctx-reset', schema: V2, history: [V1], steps: { 2: LABEL }, sync, body: async (db) => {
      await db.syncNow();
      return { t4: await db.get('tasks', 't00004'), byLabel: (await db.query('tasks', { where: { label: 'tag 0' } })).length };
    } });
    assert.deepEqual(reset.out, { t4: opened.out.t4, byLabel: 10 });
    assert.equal(reset.events.reset.length, 1);
    await page.close();
  } finally { await srv.stop(); }
});

test('older-version data within one batch reaches a v2 replica holding its own writes, and later v1 writes reach it, by reset: the migration reads the dropped tags, again after a relabel', async () => {
  const srv = await startServer();
  try {
    const page = await h.openPage();
    const v1 = await seedV1(page, srv, 'late', 10);
    const sync = { url: srv.wsUrl, library: 'late' }; // default perDiff: all of it fits one batch
    const all = async (db) => (await db.query('tasks', { orderBy: 'id' }));
    const joined = await inPage(page, { name: 'late-v2', schema: V2, history: [V1], steps: { 2: LABEL }, sync, body: async (db) => {
      await db.put('tasks', { id: 'mine', title: 'mine', label: 'own' });
      const report = await db.syncNow();
      return { reset: report.reset, t4: await db.get('tasks', 't00004'), mine: await db.get('tasks', 'mine'), n: (await db.query('tasks')).length };
    } });
    assert.equal(joined.out.reset, true, 'a replica with unsynced writes joins by reset');
    assert.equal(joined.events.reset.length, 1);
    assert.deepEqual(joined.out.t4, { id: 't00004', title: 'task 4', label: 'tag 1' });
    assert.deepEqual(joined.out.mine, { id: 'mine', title: 'mine', label: 'own' });
    assert.equal(joined.out.n, 11);
    // A v1 app still in use writes a task pointing at a tag the v2 schema dropped.
    await inPage(page, { name: 'late-v1', schema: V1, sync: v1, body: async (db) => {
      await db.syncNow();
      await db.put('tasks', { id: 't99999', title: 'late', tagId: 'g2' });
      await db.syncNow();
    } });
    const late = await inPage(page, { name: 'late-v2', schema: V2, history: [V1], steps: { 2: LABEL }, sync, body: async (db) => {
      const report = await db.syncNow();
      const again = await db.syncNow();
      return { reset: report.reset, again: again.reset, t99999: await db.get('tasks', 't99999') };
    } });
    assert.equal(late.out.reset, true, 'its migration reads other documents: the late v1 write comes by reset');
    assert.equal(late.out.again, false, 'no reset loop');
    assert.equal(late.events.reset.length, 1);
    assert.deepEqual(late.out.t99999, { id: 't99999', title: 'late', label: 'tag 2' });
    // The v1 app relabels a tag the tasks copied: the v2 replica migrates them again.
    await inPage(page, { name: 'late-v1', schema: V1, sync: v1, body: async (db) => {
      await db.put('tags', { id: 'g1', label: 'tag one relabelled' });
      await db.syncNow();
    } });
    const relabelled = await inPage(page, { name: 'late-v2', schema: V2, history: [V1], steps: { 2: LABEL }, sync, body: async (db) => {
      const report = await db.syncNow();
      await db.syncNow();
      return { reset: report.reset, t4: await db.get('tasks', 't00004') };
    } });
    assert.equal(relabelled.out.reset, true);
    assert.deepEqual(relabelled.out.t4, { id: 't00004', title: 'task 4', label: 'tag one relabelled' });
    const mine = await inPage(page, { name: 'late-v2', schema: V2, history: [V1], steps: { 2: LABEL }, body: all });
    const fresh = await inPage(page, { name: 'late-fresh', schema: V2, history: [V1], steps: { 2: LABEL }, sync, body: async (db) => { await db.syncNow(); return db.query('tasks', { orderBy: 'id' }); } });
    assert.equal(fresh.out.length, 12);
    assert.deepEqual(fresh.out, mine.out, 'a replica joining afterwards holds the same documents');
    await page.close();
  } finally { await srv.stop(); }
});

test('a missing schema, a missing migration, a throwing one or one returning undefined is an error during sync; nothing is hidden and writes still push', async () => {
  const srv = await startServer();
  try {
    const page = await h.openPage();
    const sync = await seedV1(page, srv, 'err', 20);
    const cases = [
      { name: 'err-noschema', history: [], steps: { 2: LABEL }, code: 'MISSING_SCHEMA' },
      { name: 'err-nostep', history: [V1], steps: {}, code: 'MISSING_MIGRATION' },
      { name: 'err-throws', history: [V1], steps: { 2: `(doc) => { if (doc.id === 't00013') throw new Error('boom'); return doc; }` }, code: 'MIGRATION_FAILED' },
      // A forgotten return is an error, not a delete.
      { name: 'err-undefined', history: [V1], steps: { 2: `(doc) => { if (doc.id !== 't00013') return doc; }` }, code: 'MIGRATION_FAILED' },
    ];
    for (const c of cases) {
      const r = await inPage(page, { name: c.name, schema: V2, history: c.history, steps: c.steps, sync, arg: c.name, body: async (db, name) => {
        await db.put('tasks', { id: `${name}-own`, title: 'mine', label: 'own' });
        const tries = [];
        for (let i = 0; i < 2; i++) tries.push(await db.syncNow().then(() => 'ok', (e) => e.code));
        return { tries, docs: await db.query('tasks'), status: db.status() };
      } });
      assert.deepEqual(r.out.tries, [c.code, c.code], `${c.name}: the error each round`);
      assert.equal(r.events.error.length, 2, `${c.name}: the error event each round`);
      if (c.code === 'MIGRATION_FAILED') assert.match(r.events.error[0].message, /tasks\/t00013/, 'names the collection and id');
      assert.deepEqual(r.out.docs.map((d) => d.id), [`${c.name}-own`], `${c.name}: the live store is untouched`);
      assert.equal(r.out.status.pending, 0, `${c.name}: its own write still reached the server`);
    }
    await page.close();
  } finally { await srv.stop(); }
});
