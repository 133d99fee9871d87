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

test('2,500 writes arrive over several capped passes (perDiff 100, maxDiffs 3)', async () => {
  const srv = await startServer({ perDiff: 100, maxDiffs: 3 });
  try {
    const page = await h.openPage();
    const sync = { url: srv.wsUrl, library: 'capped', perDiff: 100, maxDiffs: 3 };
    const pushed = await withReplica(page, 'cap-w', sync, async (db) => {
      const docs = Array.from({ length: 2500 }, (_, i) => ({ id: `d${i}`, n: i }));
      for (let i = 0; i < docs.length; i += 500) await db.putMany('todos', docs.slice(i, i + 500));
      const reports = [];
      for (;;) { const r = await db.syncNow(); reports.push(r); if (!r.capped) break; }
      return { reports, status: db.status() };
    });
    assert.ok(pushed.reports.length >= 8, `expected several capped rounds, got ${pushed.reports.length}`);
    assert.ok(pushed.reports.slice(0, -1).every((r) => r.capped));
    assert.equal(pushed.reports.reduce((n, r) => n + r.sent, 0), 2500);
    assert.equal(pushed.status.pending, 0);
    assert.equal((await srv.status('capped')).maxRow, 2500);
    const pulled = await withReplica(page, 'cap-r', sync, async (db) => {
      const reports = [];
      for (;;) { const r = await db.syncNow(); reports.push(r); if (!r.capped) break; }
      return { reports, count: (await db.query('todos')).length, last: await db.get('todos', 'd2499') };
    });
    assert.equal(pulled.count, 2500);
    assert.deepEqual(pulled.last, { id: 'd2499', n: 2499 });
    await page.close();
  } finally { await srv.stop(); }
});

test('a server killed between batches resumes with no row lost or doubled', async () => {
  const srv = await startServer({ perDiff: 100, maxDiffs: 3 });
  try {
    const page = await h.openPage();
    const sync = { url: srv.wsUrl, library: 'killed', perDiff: 100, maxDiffs: 3 };
    const first = await withReplica(page, 'kill-w', sync, async (db) => {
      await db.putMany('todos', Array.from({ length: 1000 }, (_, i) => ({ id: `k${i}`, n: i })));
      return db.syncNow();
    });
    assert.ok(first.capped);
    await srv.restart('SIGKILL');
    const before = (await srv.status('killed')).maxRow;
    assert.equal(before, 300);
    const rest = await withReplica(page, 'kill-w', sync, async (db) => {
      const reports = [];
      for (;;) { const r = await db.syncNow(); reports.push(r); if (!r.capped) break; }
      return reports;
    });
    assert.equal(rest[0].push.start, 300, 'resumes from the stored point');
    assert.equal((await srv.status('killed')).maxRow, 1000, 'no row applied twice');
    const count = await withReplica(page, 'kill-r', sync, async (db) => {
      for (;;) { if (!(await db.syncNow()).capped) break; }
      return (await db.query('todos')).length;
    });
    assert.equal(count, 1000);
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
