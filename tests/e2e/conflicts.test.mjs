// Conflicts and resolutions (DESIGN §11) between browser replicas (real IndexedDB in
// headless Chromium) through a real tidemark-server: concurrent writes keep the loser,
// `resolve` settles it everywhere, and a resolution reaches a capped receiver first.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { setup, withReplica as openAndRun } from './harness.mjs';
import { startServer } from './server.mjs';

const SCHEMA = { version: 1, collections: {
  notes: { primaryKey: 'id' },
  tasks: { primaryKey: 'id', conflicts: true },
} };

let h;
before(async () => { h = await setup(); });
after(async () => { await h.teardown(); });

/** Runs `fn(db, arg)` against replica `name` synced to `sync` (`harness.withReplica`). */
const withReplica = (page, name, sync, fn, arg) => openAndRun(page, { name, sync, schema: SCHEMA }, fn, arg);

test('concurrent edits keep the losing value until one replica resolves them', async () => {
  const srv = await startServer();
  try {
    const page = await h.openPage();
    const sync = { url: srv.wsUrl, library: 'conflicts' };
    const round = async (...names) => { for (const n of names) await withReplica(page, n, sync, (db) => (async () => { for (;;) { if (!(await db.syncNow()).capped) return; } })()); };
    await withReplica(page, 'cf-a', sync, (db) => db.put('tasks', { id: 't1', title: 'draft', done: false }));
    await round('cf-a', 'cf-b');
    // Offline, each edits the title without having seen the other's edit.
    await withReplica(page, 'cf-a', sync, (db) => db.patch('tasks', 't1', { title: 'from a' }));
    await withReplica(page, 'cf-b', sync, (db) => db.patch('tasks', 't1', { title: 'from b', done: true }));
    await round('cf-a', 'cf-b', 'cf-a');
    const seen = async (name) => withReplica(page, name, sync, async (db) => ({ doc: await db.get('tasks', 't1'), conflicts: await db.conflicts('tasks', 't1') }));
    const [a, b] = [await seen('cf-a'), await seen('cf-b')];
    assert.deepEqual(a, b, 'both replicas show the same winner and the same losing value');
    const winner = a.doc.title;
    assert.ok(['from a', 'from b'].includes(winner));
    assert.deepEqual(a.conflicts, { title: [winner === 'from a' ? 'from b' : 'from a'] });
    assert.equal(a.doc.done, true, 'a field written once is no conflict');

    // b watches the document; a settles the conflict; b hears of it once it syncs.
    const settled = await withReplica(page, 'cf-a', sync, async (db) => {
      await db.resolve('tasks', 't1', { title: 'agreed' });
      const local = await db.conflicts('tasks', 't1');
      let refused = null;
      try { await db.resolve('notes', 'n1', { text: 'x' }); } catch (e) { refused = e.code; }
      for (;;) { if (!(await db.syncNow()).capped) break; }
      return { local, refused };
    });
    assert.deepEqual(settled.local, {});
    assert.equal(settled.refused, 'INVALID_ARGUMENT', 'notes do not keep conflicts');
    const after = await withReplica(page, 'cf-b', sync, async (db) => {
      const events = [];
      const stop = db.subscribeDoc('tasks', 't1', (d) => events.push(d?.title));
      for (;;) { if (!(await db.syncNow()).capped) break; }
      // The live query answers after the sync's commit: wait for its answer (or 5 s).
      for (let i = 0; i < 250 && events.at(-1) !== 'agreed'; i++) await new Promise((r) => setTimeout(r, 20));
      stop();
      return { doc: await db.get('tasks', 't1'), conflicts: await db.conflicts('tasks', 't1'), events };
    });
    assert.equal(after.doc.title, 'agreed');
    assert.deepEqual(after.conflicts, {});
    assert.equal(after.events.at(-1), 'agreed', 'the live query saw the resolution');
    await page.close();
  } finally { await srv.stop(); }
});

test('a resolution written after 5 ordinary rows reaches a perDiff 1, maxDiffs 1 receiver in its first pass', async () => {
  const srv = await startServer();
  try {
    const page = await h.openPage();
    const sync = { url: srv.wsUrl, library: 'res-first' };
    const round = async (names, s = sync) => { for (const n of names) await withReplica(page, n, s, (db) => (async () => { for (;;) { if (!(await db.syncNow()).capped) return; } })()); };
    await withReplica(page, 'rf-a', sync, async (db) => {
      await db.putMany('notes', Array.from({ length: 40 }, (_, i) => ({ id: `n${i}`, n: 0 })));
      await db.put('tasks', { id: 't1', title: 'draft' });
    });
    await round(['rf-a', 'rf-b', 'rf-late']);
    await withReplica(page, 'rf-a', sync, (db) => db.patch('tasks', 't1', { title: 'from a' }));
    await withReplica(page, 'rf-b', sync, (db) => db.patch('tasks', 't1', { title: 'from b' }));
    await round(['rf-a', 'rf-b', 'rf-a']);
    await withReplica(page, 'rf-a', sync, async (db) => {
      for (let i = 0; i < 5; i++) await db.patch('notes', `n${i}`, { n: i + 1 });
      await db.resolve('tasks', 't1', { title: 'settled' });
      for (;;) { if (!(await db.syncNow()).capped) break; }
    });
    const capped = { ...sync, perDiff: 1, maxDiffs: 1 };
    const seenByLate = await withReplica(page, 'rf-late', capped, async (db) => {
      const passes = [];
      for (;;) {
        const r = await db.syncNow();
        passes.push({ capped: r.capped, title: (await db.get('tasks', 't1'))?.title, conflicts: await db.conflicts('tasks', 't1') });
        if (!r.capped) break;
      }
      return { passes, changed: (await db.query('notes', {})).filter((d) => d.n !== 0).length };
    });
    const { passes } = seenByLate;
    assert.ok(passes[0].capped, 'the first pass was capped');
    assert.ok(passes.length >= 7, `rows came one per pass (${passes.length} passes)`);
    for (const [i, p] of passes.entries()) {
      assert.equal(p.title, 'settled', `pass ${i + 1}: the resolution was there`);
      assert.deepEqual(p.conflicts, {}, `pass ${i + 1}: no settled conflict showed`);
    }
    assert.equal(seenByLate.changed, 5);
    await page.close();
  } finally { await srv.stop(); }
});
