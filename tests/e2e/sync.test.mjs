// Sync through a real tidemark-server process between browser replicas (real IndexedDB
// in headless Chromium): convergence, capped passes, a server killed mid-sync, and a
// server restored from an older backup.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setup } from './harness.mjs';
import { startServer } from './server.mjs';

const SCHEMA = { version: 1, collections: { todos: { primaryKey: 'id', indexes: { byN: 'n' } } } };

let h;
before(async () => { h = await setup(); });
after(async () => { await h.teardown(); });

/** Runs `fn(db, arg)` in a page against replica `name` synced to `sync`, then closes it. */
async function withReplica(page, name, sync, fn, arg) {
  return page.evaluate(async ({ name, sync, schema, fn, arg }) => {
    const db = await window.tidemark.openReplica({ name, schema, sync });
    try {
      // eslint-disable-next-line no-new-func
      return await new Function('db', 'arg', `return (${fn})(db, arg);`)(db, arg);
    } finally { await db.close(); }
  }, { name, sync, schema: SCHEMA, fn: fn.toString(), arg });
}

async function syncUntilDone(db) {
  const reports = [];
  for (;;) { const r = await db.syncNow(); reports.push(r); if (!r.capped) return reports; }
}

test('two browser replicas with offline writes converge through the server', async () => {
  const srv = await startServer();
  try {
    const page = await h.openPage();
    const sync = { url: srv.wsUrl, library: 'conv' };
    await withReplica(page, 'conv-a', sync, async (db) => {
      await db.put('todos', { id: 'a1', title: 'from a', n: 1 });
      await db.put('todos', { id: 'shared', title: 'a wrote first', n: 1 });
    });
    await withReplica(page, 'conv-b', sync, async (db) => {
      await db.put('todos', { id: 'b1', title: 'from b', n: 2 });
      await new Promise((r) => setTimeout(r, 5));
      await db.put('todos', { id: 'shared', title: 'b wrote last', n: 2 });
    });
    const syncBoth = async () => {
      for (const name of ['conv-a', 'conv-b', 'conv-a']) {
        await withReplica(page, name, sync, async (db) => { for (;;) { if (!(await db.syncNow()).capped) break; } });
      }
    };
    await syncBoth();
    const a = await withReplica(page, 'conv-a', sync, (db) => db.query('todos', { orderBy: 'id' }));
    const b = await withReplica(page, 'conv-b', sync, (db) => db.query('todos', { orderBy: 'id' }));
    assert.deepEqual(a, b);
    assert.deepEqual(a.map((d) => d.id), ['a1', 'b1', 'shared']);
    assert.equal(a.find((d) => d.id === 'shared').title, 'b wrote last');
    const st = await withReplica(page, 'conv-a', sync, (db) => db.status());
    assert.equal(st.pending, 0);
    assert.ok(Object.keys(st.incoming).length >= 1);
    await page.close();
  } finally { await srv.stop(); }
});

/** Puts `n` documents `${prefix}${i}` and syncs until nothing is capped. */
async function seed(page, name, sync, prefix, n) {
  return withReplica(page, name, sync, async (db, { prefix, n }) => {
    const docs = Array.from({ length: n }, (_, i) => ({ id: `${prefix}${i}`, n: i }));
    for (let i = 0; i < docs.length; i += 500) await db.putMany('todos', docs.slice(i, i + 500));
    for (;;) { if (!(await db.syncNow()).capped) break; }
  }, { prefix, n });
}

test('2,500 writes arrive over several capped passes (perDiff 100, maxDiffs 3)', async () => {
  const srv = await startServer({ perDiff: 100, maxDiffs: 3 });
  try {
    const page = await h.openPage();
    const sync = { url: srv.wsUrl, library: 'capped', perDiff: 100, maxDiffs: 3 };
    // The server and the reader already hold 2,500 rows, so by the 50% rule the new
    // writes travel as diffs (an empty receiver would get one snapshot instead).
    await seed(page, 'cap-seed', sync, 's', 2500);
    await withReplica(page, 'cap-r', sync, async (db) => { for (;;) { if (!(await db.syncNow()).capped) break; } });
    const pushed = await withReplica(page, 'cap-w', sync, async (db) => {
      const docs = Array.from({ length: 2500 }, (_, i) => ({ id: `d${i}`, n: i }));
      for (let i = 0; i < docs.length; i += 500) await db.putMany('todos', docs.slice(i, i + 500));
      const reports = [];
      for (;;) { const r = await db.syncNow(); reports.push(r); if (!r.capped) break; }
      return { reports, status: db.status() };
    });
    const pushes = pushed.reports.map((r) => r.push);
    assert.ok(pushes.length >= 9, `expected several capped passes, got ${pushes.length}`);
    assert.ok(pushes.slice(0, 8).every((p) => p.capped && !p.snapshot && p.batches === 3 && p.sent === 300));
    assert.equal(pushes.reduce((n, p) => n + p.sent, 0), 2500);
    assert.equal(pushed.status.pending, 0);
    assert.equal((await srv.status('capped')).maxRow, 5000);
    const pulled = await withReplica(page, 'cap-r', sync, async (db) => {
      const reports = [];
      for (;;) { const r = await db.syncNow(); reports.push(r); if (!r.capped) break; }
      return { pulls: reports.map((r) => r.pull), count: (await db.query('todos')).length, last: await db.get('todos', 'd2499') };
    });
    assert.ok(pulled.pulls.length >= 9 && pulled.pulls.slice(0, -1).every((p) => p.capped && !p.snapshot));
    assert.equal(pulled.pulls.reduce((n, p) => n + p.received, 0), 2500);
    assert.equal(pulled.count, 5000);
    assert.deepEqual(pulled.last, { id: 'd2499', n: 2499 });
    await page.close();
  } finally { await srv.stop(); }
});

test('a server killed between batches resumes with no row lost or doubled', async () => {
  const srv = await startServer({ perDiff: 100, maxDiffs: 3 });
  try {
    const page = await h.openPage();
    const sync = { url: srv.wsUrl, library: 'killed', perDiff: 100, maxDiffs: 3 };
    await seed(page, 'kill-seed', sync, 's', 1000);
    const first = await withReplica(page, 'kill-w', sync, async (db) => {
      for (;;) { if (!(await db.syncNow()).capped) break; }
      await db.putMany('todos', Array.from({ length: 1000 }, (_, i) => ({ id: `k${i}`, n: i })));
      return db.syncNow();
    });
    assert.ok(first.push.capped && !first.push.snapshot);
    await srv.restart('SIGKILL');
    assert.equal((await srv.status('killed')).maxRow, 1300, 'the acknowledged batches survived the kill');
    const rest = await withReplica(page, 'kill-w', sync, async (db) => {
      const reports = [];
      for (;;) { const r = await db.syncNow(); reports.push(r); if (!r.capped) break; }
      return reports;
    });
    assert.equal(rest[0].push.start, first.push.end, 'resumes from the stored point');
    assert.equal(rest.reduce((n, r) => n + r.push.sent, 0), 700);
    assert.equal((await srv.status('killed')).maxRow, 2000, 'no row applied twice');
    const count = await withReplica(page, 'kill-r', sync, async (db) => {
      for (;;) { if (!(await db.syncNow()).capped) break; }
      return (await db.query('todos')).length;
    });
    assert.equal(count, 2000);
    await page.close();
  } finally { await srv.stop(); }
});

test('a server restored from an older backup gets back every row it lost', async () => {
  const srv = await startServer();
  const backup = await mkdtemp(join(tmpdir(), 'tidemark-backup-'));
  try {
    const page = await h.openPage();
    const sync = { url: srv.wsUrl, library: 'restored' };
    await withReplica(page, 'rs-a', sync, async (db) => {
      await db.putMany('todos', Array.from({ length: 50 }, (_, i) => ({ id: `early${i}`, n: i })));
      await db.syncNow();
    });
    await srv.kill();
    await srv.copyData(backup);
    await srv.start();
    await withReplica(page, 'rs-a', sync, async (db) => {
      await db.putMany('todos', Array.from({ length: 50 }, (_, i) => ({ id: `late${i}`, n: i })));
      await db.syncNow();
    });
    await withReplica(page, 'rs-b', sync, async (db) => {
      await db.put('todos', { id: 'from-b', n: 1 });
      await db.syncNow();
    });
    assert.equal((await srv.status('restored')).maxRow, 101);
    // Disaster: the server comes back from the older backup.
    await srv.kill();
    await srv.replaceData(backup);
    await srv.start();
    assert.equal((await srv.status('restored')).maxRow, 50);
    for (const name of ['rs-a', 'rs-b']) {
      const reports = await withReplica(page, name, sync, async (db) => {
        const out = [];
        for (;;) { const r = await db.syncNow(); out.push(r); if (!r.capped) break; }
        return out;
      });
      assert.ok(reports[0].push.start <= 50, `${name} must not be fast-forwarded past the backup (${reports[0].push.start})`);
    }
    const fresh = await withReplica(page, 'rs-fresh', sync, async (db) => {
      for (;;) { if (!(await db.syncNow()).capped) break; }
      return (await db.query('todos')).map((d) => d.id).sort();
    });
    assert.equal(fresh.length, 101);
    assert.ok(fresh.includes('from-b') && fresh.includes('late49') && fresh.includes('early0'));
    await page.close();
  } finally { await srv.stop(); await rm(backup, { recursive: true, force: true }); }
});
