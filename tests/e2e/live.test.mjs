// Live queries and several tabs of one replica, in real Chromium with real IndexedDB:
// subscriptions fire for changes that alter their results (and only those), a big sync
// fires a few callbacks, tabs see each other's writes live, exactly one tab runs sync
// and another takes over when it closes, and a same-field conflict resolves alike.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { setup } from './harness.mjs';
import { startServer } from './server.mjs';

const SCHEMA = { version: 1, collections: { todos: { primaryKey: 'id', indexes: { byList: 'list' } }, other: { primaryKey: 'id' } } };

let h;
before(async () => { h = await setup(); });
after(async () => { await h.teardown(); });

async function open(page, name, sync) {
  await page.evaluate(async ({ name, schema, sync }) => {
    window.db = await window.tidemark.openReplica({ name, schema, sync });
    window.calls = [];
    window.stop = window.db.subscribe('todos', { where: { list: 'inbox' }, orderBy: 'id' }, (docs) => window.calls.push(docs.map((d) => `${d.id}:${d.title}`)));
  }, { name, schema: SCHEMA, sync });
  await page.waitForFunction(() => window.calls.length === 1);
}
const calls = (page) => page.evaluate(() => window.calls);
const settle = (ms = 300) => new Promise((r) => setTimeout(r, ms));
/** Counts every message the page posts on any BroadcastChannel (in `window.posted`). */
const counting = () => {
  window.posted = [];
  const post = BroadcastChannel.prototype.postMessage;
  BroadcastChannel.prototype.postMessage = function (m) { window.posted.push(m); return post.call(this, m); };
};

test('a live query fires at once, on changes that alter it, and not on others', async () => {
  const page = await h.openPage();
  await open(page, 'live-q');
  assert.deepEqual(await calls(page), [[]]);
  await page.evaluate(() => window.db.put('todos', { id: 'a', title: 'Milk', list: 'inbox' }));
  await page.waitForFunction(() => window.calls.length === 2);
  // Changes that do not touch the result: another list, another collection.
  await page.evaluate(async () => {
    await window.db.put('todos', { id: 'w', title: 'Work', list: 'work' });
    await window.db.put('other', { id: 'x' });
  });
  await settle();
  assert.equal((await calls(page)).length, 2);
  await page.evaluate(() => window.db.patch('todos', 'a', { title: 'Oat milk' }));
  await page.waitForFunction(() => window.calls.length === 3);
  await page.evaluate(() => window.db.delete('todos', 'a'));
  await page.waitForFunction(() => window.calls.length === 4);
  assert.deepEqual(await calls(page), [[], ['a:Milk'], ['a:Oat milk'], []]);
  // 10,000 documents in 10 transactions fire a few callbacks, not thousands.
  await page.evaluate(async () => {
    for (let b = 0; b < 10; b++) {
      await window.db.putMany('todos', Array.from({ length: 1000 }, (_, i) => ({ id: `b${b}-${i}`, title: 't', list: 'inbox' })));
    }
  });
  await page.waitForFunction(() => window.calls.at(-1).length === 10000);
  const n = (await calls(page)).length - 4;
  assert.ok(n >= 1 && n <= 10, `${n} callbacks for 10 transactions`);
  // Unsubscribed: no more calls.
  await page.evaluate(async () => { window.stop(); await window.db.put('todos', { id: 'late', title: 'x', list: 'inbox' }); });
  await settle();
  assert.equal((await calls(page)).length, 4 + n);
  await page.evaluate(() => window.db.close());
  await page.close();
});

test('a sync that brings 10,000 rows fires a few callbacks', async () => {
  const srv = await startServer();
  try {
    const sync = { url: srv.wsUrl, library: 'live-sync' };
    const writer = await h.openPage();
    await writer.evaluate(async ({ schema, sync }) => {
      const db = await window.tidemark.openReplica({ name: 'ls-w', schema, sync });
      for (let b = 0; b < 10; b++) await db.putMany('todos', Array.from({ length: 1000 }, (_, i) => ({ id: `s${b}-${i}`, title: 's', list: 'inbox' })));
      await db.syncNow();
      await db.close();
    }, { schema: SCHEMA, sync });
    const reader = await h.openPage();
    await open(reader, 'ls-r', sync);
    await reader.evaluate(async () => { for (;;) { if (!(await window.db.syncNow()).capped) break; } });
    await reader.waitForFunction(() => window.calls.at(-1).length === 10000);
    const n = (await calls(reader)).length - 1;
    assert.ok(n >= 1 && n <= 12, `${n} callbacks for a 10,000-row sync`);
    await reader.evaluate(() => window.db.close());
    await writer.close(); await reader.close();
  } finally { await srv.stop(); }
});

test('two tabs of one replica see each other\'s writes live', async () => {
  const a = await h.openPage();
  const b = await h.openPage();
  await open(a, 'tabs');
  await open(b, 'tabs');
  await a.evaluate(() => window.db.put('todos', { id: 't1', title: 'from tab A', list: 'inbox' }));
  await b.waitForFunction(() => window.calls.at(-1).includes('t1:from tab A'));
  await b.evaluate(() => window.db.patch('todos', 't1', { title: 'edited in tab B' }));
  await a.waitForFunction(() => window.calls.at(-1).includes('t1:edited in tab B'));
  // One op log: both tabs' writes got distinct rows.
  const rows = await a.evaluate(async () => (await window.db.recentOps(5)).map((r) => r.row));
  assert.deepEqual(rows, [2, 1]);
  for (const p of [a, b]) { await p.evaluate(() => window.db.close()); await p.close(); }
});

test('two tabs writing one replica at the same time lose no write and number every row once', async () => {
  const a = await h.openPage();
  const b = await h.openPage();
  await open(a, 'tabs-race');
  await open(b, 'tabs-race');
  await a.evaluate(() => window.db.put('todos', { id: 'shared', title: 'both tabs patch me', list: 'work' }));
  // Each tab: 150 new documents and 15 patches of the shared one (a field of its own), in
  // groups of 5 made at once — both tabs' writes interleave in one op log.
  const run = (page, tab) => page.evaluate(async (tab) => {
    for (let g = 0; g < 30; g++) {
      const writes = [];
      for (let k = 0; k < 5; k++) writes.push(window.db.put('todos', { id: `${tab}-${g * 5 + k}`, title: tab, list: 'work' }));
      if (g % 2 === 0) writes.push(window.db.patch('todos', 'shared', { [tab]: g }));
      await Promise.all(writes);
    }
  }, tab);
  await Promise.all([run(a, 'a'), run(b, 'b')]);
  for (const page of [a, b]) {
    const got = await page.evaluate(async () => {
      const docs = await window.db.query('todos');
      const rows = (await window.db.recentOps(1000)).map((r) => r.row).sort((x, y) => x - y);
      return { n: docs.length, shared: docs.find((d) => d.id === 'shared'), rows, maxRow: window.db.status().maxRow };
    });
    assert.equal(got.n, 301, 'every document of both tabs');
    assert.deepEqual([got.shared.a, got.shared.b], [28, 28], 'each tab\'s last patch');
    assert.equal(got.maxRow, 331);
    assert.deepEqual(got.rows, Array.from({ length: 331 }, (_, i) => i + 1), 'rows 1..331, each once');
  }
  for (const p of [a, b]) { await p.evaluate(() => window.db.close()); await p.close(); }
});

test('a tab tells the others what it changed once its writes resolve, and before it closes', async () => {
  const a = await h.openPage();
  const b = await h.openPage();
  await open(a, 'announce');
  await open(b, 'announce');
  // What tab B hears on the replica's channel, beside the replica's own listener.
  await b.evaluate(() => {
    window.heard = [];
    window.ear = new BroadcastChannel('tidemark:announce');
    window.ear.onmessage = (e) => window.heard.push(e.data.collections);
  });
  await a.evaluate(() => Promise.all([
    window.db.put('todos', { id: 'b1', title: 'one', list: 'inbox' }),
    window.db.put('todos', { id: 'b2', title: 'two', list: 'inbox' }),
    window.db.put('other', { id: 'o1' }),
  ]));
  await b.waitForFunction(() => window.calls.at(-1).join() === 'b1:one,b2:two', null, { timeout: 5000 });
  await b.waitForFunction(() => new Set(window.heard.flat()).size === 2, null, { timeout: 5000 });
  const heard = await b.evaluate(() => window.heard);
  assert.deepEqual([...new Set(heard.flat())].sort(), ['other', 'todos']);
  assert.ok(heard.length >= 1 && heard.length <= 3, `one message per commit at most: ${JSON.stringify(heard)}`);
  // A write right before close() is still announced: tab B's live query shows it.
  await a.evaluate(async () => { await window.db.put('todos', { id: 'b3', title: 'last', list: 'inbox' }); await window.db.close(); });
  await b.waitForFunction(() => window.calls.at(-1).includes('b3:last'), null, { timeout: 5000 });
  await b.evaluate(() => { window.ear.close(); return window.db.close(); });
  for (const p of [a, b]) await p.close();
});

test('a tab alone posts nothing per write; the next tab to open hears what changed meanwhile, and a tab closed is left alone', async () => {
  const a = await h.openPage();
  await a.evaluate(counting);
  await open(a, 'alone');
  await a.evaluate(async () => {
    for (let i = 0; i < 20; i++) await window.db.put('todos', { id: `q${i}`, title: 'quiet', list: 'inbox' });
    await window.db.put('other', { id: 'o1' });
    await new Promise((r) => setTimeout(r, 50));
  });
  assert.deepEqual(await a.evaluate(() => window.posted.map((m) => Object.keys(m).join())), ['hello'], 'only its own hello');
  // Tab B listens on the channel before its replica opens: tab A answers the hello with
  // the collections it changed while alone.
  const b = await h.openPage();
  await b.evaluate(() => {
    window.heard = [];
    window.ear = new BroadcastChannel('tidemark:alone');
    window.ear.onmessage = (e) => window.heard.push(e.data);
  });
  await open(b, 'alone');
  await b.waitForFunction(() => window.heard.some((m) => m.here), null, { timeout: 5000 });
  const here = await b.evaluate(() => window.heard.find((m) => m.here));
  assert.deepEqual([...here.collections].sort(), ['other', 'todos']);
  // Now that it knows tab B, tab A tells it of each write, and B's live query follows.
  await a.evaluate(() => window.db.put('todos', { id: 'q20', title: 'heard', list: 'inbox' }));
  await b.waitForFunction(() => window.calls.at(-1).includes('q20:heard'), null, { timeout: 5000 });
  // Tab A closes: it says so, and tab B, alone again, posts nothing per write.
  await a.evaluate(() => window.db.close());
  await b.waitForFunction(() => window.heard.some((m) => m.bye), null, { timeout: 5000 });
  await b.evaluate(counting);
  await b.evaluate(async () => {
    for (let i = 0; i < 5; i++) await window.db.put('todos', { id: `b${i}`, title: 'alone again', list: 'inbox' });
    await new Promise((r) => setTimeout(r, 50));
  });
  assert.deepEqual(await b.evaluate(() => window.posted), []);
  await b.evaluate(() => { window.ear.close(); return window.db.close(); });
  for (const p of [a, b]) await p.close();
});

test('a tab running live sync alone posts nothing on the channel; a tab that opens hears at once that it is online, then follows its syncs', async () => {
  const srv = await startServer();
  try {
    const sync = { url: srv.wsUrl, library: 'alone-sync' };
    const a = await h.openPage();
    await a.evaluate(counting);
    await open(a, 'alone-sync', sync);
    await a.evaluate(() => window.db.connect());
    await a.waitForFunction(() => window.db.status().leader && window.db.status().online);
    await a.evaluate(() => window.db.put('todos', { id: 'a1', title: 'from a', list: 'inbox' }));
    await a.waitForFunction(() => window.db.status().pending === 0, null, { timeout: 5000 });
    // Past a heartbeat (every 2 s while online): still only its own hello.
    await settle(2500);
    assert.deepEqual(await a.evaluate(() => window.posted.map((m) => Object.keys(m).join())), ['hello'], 'no sync reports, no heartbeats');
    // Tab B opens: it hears that A is online as they meet, well before A's next heartbeat.
    const b = await h.openPage();
    await open(b, 'alone-sync', sync);
    await b.waitForFunction(() => window.db.status().online, null, { timeout: 1500 });
    assert.equal(await b.evaluate(() => window.db.status().leader), false);
    const told = await a.evaluate(() => window.posted.map((m) => Object.keys(m)[0]));
    assert.deepEqual(told.slice(0, 3), ['hello', 'here', 'sync'], JSON.stringify(told));
    // From now on A tells B of its syncs: B's write is pushed by A, and B's status says so.
    await b.evaluate(() => {
      window.events = [];
      window.db.on('sync', () => window.events.push('sync'));
      return window.db.put('todos', { id: 'b1', title: 'from b', list: 'inbox' });
    });
    await b.waitForFunction(() => window.db.status().pending === 0 && window.events.includes('sync'), null, { timeout: 5000 });
    for (const p of [a, b]) { await p.evaluate(() => window.db.close()); await p.close(); }
  } finally { await srv.stop(); }
});

test('exactly one tab runs sync; when it closes another takes over without losing writes', async () => {
  const srv = await startServer();
  try {
    const sync = { url: srv.wsUrl, library: 'leader' };
    const a = await h.openPage();
    const b = await h.openPage();
    await open(a, 'lead', sync);
    await open(b, 'lead', sync);
    await a.evaluate(() => window.db.connect());
    await a.waitForFunction(() => window.db.status().leader && window.db.status().online);
    await b.evaluate(() => window.db.connect());
    await settle(500);
    assert.equal(await b.evaluate(() => window.db.status().leader), false, 'only one leader');
    // A write in the follower tab is pushed by the leader.
    await b.evaluate(() => window.db.put('todos', { id: 'by-b', title: 'queued in B', list: 'inbox' }));
    const observer = await h.openPage();
    const seen = (id) => observer.evaluate(async ({ id, schema, sync }) => {
      const db = await window.tidemark.openReplica({ name: 'lead-observer', schema, sync });
      for (let i = 0; i < 50; i++) {
        await db.syncNow();
        if (await db.get('todos', id)) { await db.close(); return true; }
        await new Promise((r) => setTimeout(r, 200));
      }
      await db.close();
      return false;
    }, { id, schema: SCHEMA, sync });
    assert.ok(await seen('by-b'));
    // The leader tab closes: B takes over, and its new writes reach the server.
    await a.close();
    await b.waitForFunction(() => window.db.status().leader && window.db.status().online, null, { timeout: 10000 });
    await b.evaluate(() => window.db.put('todos', { id: 'after', title: 'written after takeover', list: 'inbox' }));
    assert.ok(await seen('after'));
    await b.evaluate(() => window.db.close());
    await b.close(); await observer.close();
  } finally { await srv.stop(); }
});

test('a tab that does not run sync follows the one that does: online, pending and its sync events', async () => {
  const srv = await startServer();
  try {
    const sync = { url: srv.wsUrl, library: 'follow' };
    const a = await h.openPage();
    const b = await h.openPage();
    await open(a, 'follow', sync);
    await open(b, 'follow', sync);
    await b.evaluate(() => {
      window.events = [];
      window.db.on('sync', () => window.events.push('sync'));
      window.db.on('online', (on) => window.events.push(`online:${on}`));
    });
    assert.deepEqual(await b.evaluate(() => [window.db.status().online, window.db.status().leader]), [false, false]);
    await a.evaluate(() => window.db.connect());
    await a.waitForFunction(() => window.db.status().leader && window.db.status().online);
    await b.waitForFunction(() => window.db.status().online, null, { timeout: 5000 });
    assert.equal(await b.evaluate(() => window.db.status().leader), false);
    // B writes; A's live sync pushes it; B's status says so, as A's does.
    await b.evaluate(() => window.db.put('todos', { id: 'from-b', title: 'b', list: 'inbox' }));
    await b.waitForFunction(() => window.db.status().pending === 0 && window.events.includes('sync'), null, { timeout: 5000 });
    assert.equal(await a.evaluate(() => window.db.status().pending), 0);
    // Still online while A stays connected and quiet (it repeats it), offline at once when it disconnects.
    await settle(6000);
    assert.equal(await b.evaluate(() => window.db.status().online), true);
    await a.evaluate(() => window.db.disconnect());
    await b.waitForFunction(() => !window.db.status().online, null, { timeout: 2000 });
    const events = await b.evaluate(() => window.events);
    assert.equal(events.filter((e) => e.startsWith('online')).at(-1), 'online:false');
    assert.ok(events.includes('online:true'), JSON.stringify(events));
    await a.close(); await b.close();
  } finally { await srv.stop(); }
});

test('a conflict on the same field resolves the same way in two browsers', async () => {
  const srv = await startServer();
  const other = await h.newContext();
  try {
    const sync = { url: srv.wsUrl, library: 'conflict' };
    const p1 = await h.openPage();
    const p2 = await other.openPage();
    const run = (page, fn, arg) => page.evaluate(async ({ fn, arg, schema, sync }) => {
      const db = await window.tidemark.openReplica({ name: 'conflict', schema, sync });
      try { return await (0, eval)(`(${fn})`)(db, arg); } finally { await db.close(); }
    }, { fn: fn.toString(), arg, schema: SCHEMA, sync });
    await run(p1, async (db) => { await db.put('todos', { id: 'c', title: 'base', list: 'inbox', done: false }); await db.syncNow(); });
    await run(p2, (db) => db.syncNow());
    // Both edit the same field offline, plus one field each.
    await run(p1, (db) => db.patch('todos', 'c', { title: 'title from browser 1', done: true }));
    await run(p2, (db) => db.patch('todos', 'c', { title: 'title from browser 2', list: 'work' }));
    for (const p of [p1, p2, p1]) await run(p, (db) => db.syncNow());
    const d1 = await run(p1, (db) => db.get('todos', 'c'));
    const d2 = await run(p2, (db) => db.get('todos', 'c'));
    assert.deepEqual(d1, d2);
    assert.equal(d1.title, 'title from browser 2', 'the later write wins the field');
    assert.equal(d1.done, true, 'a field only one side wrote is kept');
    assert.equal(d1.list, 'work');
    await p1.close(); await p2.close();
  } finally { await other.close(); await srv.stop(); }
});
