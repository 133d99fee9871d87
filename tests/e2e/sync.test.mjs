// Sync through a real tidemark-server process between browser replicas (real IndexedDB
// in headless Chromium): convergence, capped passes, a server killed mid-sync, and a
// server restored from an older backup.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setup, withReplica as openAndRun } from './harness.mjs';
import { startServer } from './server.mjs';

const SCHEMA = { version: 1, collections: { todos: { primaryKey: 'id', indexes: { byN: 'n' } } } };

let h;
before(async () => { h = await setup(); });
after(async () => { await h.teardown(); });

/** Runs `fn(db, arg)` against replica `name` synced to `sync` (`harness.withReplica`). */
const withReplica = (page, name, sync, fn, arg) => openAndRun(page, { name, sync, schema: SCHEMA }, fn, arg);

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
    // The server, the reader and the writer already hold 2,500 rows, so the 2,500 new
    // writes are not more than half of the writer's rows (seed 000's rule on the gap):
    // they travel as diffs, pushed and pulled in capped passes. A writer with nothing
    // else would push them as one snapshot.
    await seed(page, 'cap-seed', sync, 's', 2500);
    await withReplica(page, 'cap-r', sync, async (db) => { for (;;) { if (!(await db.syncNow()).capped) break; } });
    const pushed = await withReplica(page, 'cap-w', sync, async (db) => {
      for (;;) { if (!(await db.syncNow()).capped) break; }
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

test('live sync: connect() pushes writes as they happen and reconnects after a server restart', async () => {
  const srv = await startServer();
  try {
    const pageA = await h.openPage();
    const pageB = await h.openPage();
    const open = (page, name) => page.evaluate(async ({ name, schema, url }) => {
      window.db = await window.tidemark.openReplica({ name, schema, sync: { url, library: 'live' } });
      window.events = { sync: 0, online: [], errors: [] };
      window.db.on('sync', () => { window.events.sync++; });
      window.db.on('online', (on) => window.events.online.push(on));
      window.db.on('error', (e) => window.events.errors.push(e.code));
      window.db.connect();
    }, { name, schema: SCHEMA, url: srv.wsUrl });
    await open(pageA, 'live-a');
    await open(pageB, 'live-b');
    await pageA.waitForFunction(() => window.db.status().online === true);
    await pageA.evaluate(() => window.db.put('todos', { id: 'live1', title: 'typed in A', n: 1 }));
    // B sees A's write without calling syncNow.
    await pageB.waitForFunction(async () => (await window.db.get('todos', 'live1'))?.title === 'typed in A', null, { timeout: 10000 });
    // The server goes away: both go offline, keep working, and come back by themselves.
    await srv.kill('SIGKILL');
    await pageA.waitForFunction(() => window.db.status().online === false, null, { timeout: 10000 });
    await pageA.evaluate(() => window.db.put('todos', { id: 'offline1', title: 'written offline', n: 2 }));
    assert.ok((await pageA.evaluate(() => window.db.status().pending)) >= 1);
    await srv.start();
    await pageB.waitForFunction(async () => (await window.db.get('todos', 'offline1'))?.title === 'written offline', null, { timeout: 20000 });
    await pageA.waitForFunction(() => window.db.status().pending === 0, null, { timeout: 10000 });
    const a = await pageA.evaluate(async () => ({ status: window.db.status(), events: window.events }));
    assert.equal(a.status.online, true);
    assert.ok(a.events.sync > 0);
    assert.ok(a.events.online.includes(true) && a.events.online.includes(false));
    assert.ok(a.events.errors.includes('SYNC_CONNECTION'));
    // disconnect() stops live sync: later writes stay pending.
    await pageA.evaluate(() => window.db.disconnect());
    await pageA.waitForFunction(() => window.db.status().online === false, null, { timeout: 5000 });
    await pageA.evaluate(() => window.db.put('todos', { id: 'after-disconnect', n: 3 }));
    await new Promise((r) => setTimeout(r, 1500));
    assert.equal(await pageB.evaluate(async () => await window.db.get('todos', 'after-disconnect')), undefined);
    for (const p of [pageA, pageB]) { await p.evaluate(() => window.db.close()); await p.close(); }
  } finally { await srv.stop(); }
});

test('maxClockSkew: a replica refuses ops stamped further ahead than its bound and stores nothing; a wider bound accepts them', async () => {
  // The server itself allows 10 days, so the op stamped 3 days ahead is stored there.
  const srv = await startServer({ extraArgs: ['--max-clock-skew', String(10 * 24 * 3600)] });
  try {
    const page = await h.openPage();
    const sync = { url: srv.wsUrl, library: 'skew' };
    const got = await page.evaluate(async ({ sync, schema }) => {
      const { openReplica } = window.tidemark;
      const code = (p) => p.then(() => 'ok', (e) => e.code);
      const realNow = Date.now;
      // A writer whose clock runs 3 days ahead (wasm reads the clock through Date.now).
      Date.now = () => realNow() + 3 * 24 * 3600 * 1000;
      const a = await openReplica({ name: 'skew-a', schema, sync });
      await a.put('todos', { id: 'future', title: 'from a fast clock', n: 1 });
      await a.syncNow();
      await a.close();
      Date.now = realNow;
      const strict = await openReplica({ name: 'skew-strict', schema, sync, maxClockSkew: 3600 * 1000 });
      const strictSync = await code(strict.syncNow());
      const strictHas = (await strict.get('todos', 'future')) !== undefined;
      await strict.close();
      const wide = await openReplica({ name: 'skew-wide', schema, sync, maxClockSkew: 7 * 24 * 3600 * 1000 });
      const wideSync = await code(wide.syncNow());
      const wideDoc = await wide.get('todos', 'future');
      await wide.close();
      const bad = await code(openReplica({ name: 'skew-bad', schema, maxClockSkew: -1 }));
      return { strictSync, strictHas, wideSync, wideTitle: wideDoc?.title, bad };
    }, { sync, schema: SCHEMA });
    assert.equal(got.strictSync, 'SYNC_PROTOCOL', 'a stamp 3 days ahead is refused under a 1 h bound');
    assert.equal(got.strictHas, false, 'nothing from the refused batch is stored');
    assert.equal(got.wideSync, 'ok', 'a 7-day bound accepts it');
    assert.equal(got.wideTitle, 'from a fast clock');
    assert.equal(got.bad, 'INVALID_OPTIONS');
  } finally { await srv.stop(); }
});

test('opening reads the head and the peer records in one transaction, and status() after a reopen is what it was', async () => {
  const srv = await startServer();
  try {
    const page = await h.openPage();
    // Status before closing, and after opening again with the transactions the opening
    // made on the replica's live generation (not its directory).
    const reopen = (name, sync, writes) => page.evaluate(async ({ name, schema, sync, writes }) => {
      const pick = ({ dbId, maxRow, incoming, outgoing, pending }) => ({ dbId, maxRow, incoming, outgoing, pending });
      let db = await window.tidemark.openReplica({ name, schema, sync });
      await db.putMany('todos', Array.from({ length: 20 }, (_, i) => ({ id: `p${i}`, n: i })));
      if (sync) await db.syncNow();
      for (let i = 0; i < writes; i++) await db.put('todos', { id: `q${i}`, n: i });
      const before = pick(db.status());
      await db.close();
      const txs = [];
      const real = IDBDatabase.prototype.transaction;
      IDBDatabase.prototype.transaction = function (stores, mode) {
        if (/:g\d+$/.test(this.name)) txs.push([...(typeof stores === 'string' ? [stores] : stores)].sort().join(','));
        return real.call(this, stores, mode);
      };
      try {
        db = await window.tidemark.openReplica({ name, schema, sync });
      } finally {
        IDBDatabase.prototype.transaction = real;
      }
      const after = pick(db.status());
      await db.close();
      return { before, after, txs: txs.filter((t) => /meta|peers|log/.test(t)) };
    }, { name, schema: SCHEMA, sync, writes });
    // Never synced: every row is unsynced, which the head counts — one transaction reads all.
    const local = await reopen('reopen-local', undefined, 3);
    assert.equal(local.before.pending, 23);
    assert.deepEqual(local.after, local.before);
    assert.deepEqual(local.txs, ['log,meta,peers']);
    // Synced, then two writes: the unsynced rows after the acknowledged point are counted
    // from the log, in a second transaction.
    const synced = await reopen('reopen-synced', { url: srv.wsUrl, library: 'reopen' }, 2);
    assert.equal(synced.before.pending, 2);
    assert.equal(Object.keys(synced.before.outgoing).length, 1, 'the server acknowledged the sync');
    assert.deepEqual(synced.after, synced.before);
    assert.deepEqual(synced.txs, ['log,meta,peers', 'log,meta']);
    assert.deepEqual(h.errors, []);
    await page.close();
  } finally { await srv.stop(); }
});

test('a frame the replica cannot read ends the pass with SYNC_PROTOCOL and changes nothing; the next pass to a real server syncs', async () => {
  const srv = await startServer();
  try {
    const page = await h.openPage();
    // A server that answers whatever the replica says with a frame that is not a message
    // (frames are decoded as they arrive, ahead of the pass that reads them).
    const fake = 'ws://127.0.0.1:9/fake-sync';
    let said = 0;
    await page.routeWebSocket(fake, (ws) => {
      ws.onMessage(() => { said++; ws.send('{"v":1,"type":"nonsense"'); ws.send('{"v":1,"type":"nonsense"}'); });
    });
    const got = await page.evaluate(async ({ fake, real, schema }) => {
      const { openReplica } = window.tidemark;
      const code = (p) => p.then(() => 'ok', (e) => e.code);
      const a = await openReplica({ name: 'bad-frames', schema, sync: { url: fake, library: 'frames' } });
      await a.put('todos', { id: 'mine', n: 1 });
      const before = a.status();
      const bad = await code(a.syncNow());
      const after = a.status();
      const doc = await a.get('todos', 'mine');
      await a.close();
      const b = await openReplica({ name: 'bad-frames', schema, sync: { url: real, library: 'frames' } });
      const good = await code(b.syncNow());
      const pending = b.status().pending;
      await b.close();
      return { bad, before, after, doc, good, pending };
    }, { fake, real: srv.wsUrl, schema: SCHEMA });
    assert.ok(said >= 1, 'the replica spoke to the fake server');
    assert.equal(got.bad, 'SYNC_PROTOCOL');
    assert.deepEqual({ ...got.after, online: false }, { ...got.before, online: false }, 'the failed pass moved no sync point');
    assert.deepEqual(got.doc, { id: 'mine', n: 1 });
    assert.equal(got.good, 'ok');
    assert.equal(got.pending, 0, 'the write reached the real server');
    await page.close();
  } finally { await srv.stop(); }
});
