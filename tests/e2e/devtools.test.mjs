// <tidemark-devtools> (js/devtools.js) in real Chromium against a real tidemark-server:
// what it shows of a replica — op log, pending rows, sync points with readable peer names,
// live queries, live progress of a long pull — and that quarantined ops and conflicts
// appear only when the replica reports them.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { setup } from './harness.mjs';
import { startServer } from './server.mjs';

const SCHEMA = { version: 1, collections: { todos: { primaryKey: 'id' } } };
let h;
let srv;
let page;

before(async () => {
  h = await setup();
  srv = await startServer({ perDiff: 10 });
  page = await h.openPage();
  await page.evaluate(async ({ schema, ws }) => {
    await import('tidemark/devtools');
    const sync = { url: ws, library: 'devtools' };
    window.a = await window.tidemark.openReplica({ name: 'dt-a', schema, sync });
    window.b = await window.tidemark.openReplica({ name: 'dt-b', schema, sync });
    const el = document.createElement('tidemark-devtools');
    el.db = window.a;
    document.body.append(el);
    window.el = el;
    // What a test reads: the text of one part of the shadow root, its children separated by spaces.
    const text = (n) => (n.childNodes.length > 1 ? [...n.childNodes].map(text).filter(Boolean).join(' ') : n.textContent.replace(/\s+/g, ' ').trim());
    window.part = (sel) => [...el.shadowRoot.querySelectorAll(sel)].map(text);
  }, { schema: SCHEMA, ws: srv.wsUrl });
});

after(async () => {
  await h?.teardown();
  await srv?.stop();
});

const until = (what, fn, arg) => page.waitForFunction(fn, arg, { timeout: 15000, polling: 50 }).catch(async () => {
  throw new Error(`timed out waiting for ${what}; the element shows: ${await page.evaluate(() => window.el.shadowRoot.textContent.replace(/\s+/g, ' '))}`);
});

test('before any sync: the op log, pending rows and live queries of the replica', async () => {
  await page.evaluate(async () => {
    await window.a.put('todos', { id: 't1', title: 'Milk' });
    await window.a.patch('todos', 't1', { done: true });
    window.stopLive = window.a.subscribe('todos', { where: { done: true } }, () => {});
  });
  await until('two pending rows', () => window.part('.pending li').length === 2);
  const got = await page.evaluate(() => ({
    head: window.part('.head')[0], ops: window.part('.ops li'), pending: window.part('.pending h4')[0],
    points: window.part('.points tbody tr'), queries: window.part('.queries li'),
    hidden: ['.quarantined', '.conflicts', '.progress'].map((s) => window.el.shadowRoot.querySelector(s).hidden),
  }));
  assert.match(got.head, /^dt-a this replica · [0-9a-f]{6} offline 2 pending schema v1 · 2 rows$/);
  assert.deepEqual(got.ops, ['#2 patch todos/t1 done: true local', '#1 put todos/t1 title: "Milk" local']);
  assert.equal(got.pending, 'Pending rows (2)');
  assert.deepEqual(got.points, ['not synced yet']);
  assert.deepEqual(got.queries, ['todos {"where":{"done":true}}']);
  assert.deepEqual(got.hidden, [true, true, true], 'no quarantine, conflicts or progress to show');
  await page.evaluate(() => window.stopLive());
  await until('no live query', () => window.part('.queries li')[0] === 'none');
});

test('after syncing: sync points name the server and other replicas, remote ops say who wrote them', async () => {
  await page.evaluate(async () => {
    await window.a.syncNow();
    await window.b.put('todos', { id: 't2', title: 'Bread' });
    await window.b.syncNow();
    await window.a.syncNow();
  });
  await until('the server in the sync points', () => window.part('.points .peer').includes('server'));
  await until('nothing pending', () => window.part('.pending h4')[0] === 'Pending rows (0)');
  const ids = await page.evaluate(() => ({ a: window.a.status().dbId, b: window.b.status().dbId }));
  let got = await page.evaluate(() => ({ peers: window.part('.points .peer'), ops: window.part('.ops li'), pending: window.part('.pending li') }));
  // The server is the direct peer; B reached A through it and is shown by its short id.
  assert.deepEqual(got.peers.sort(), ['replica ' + ids.b.slice(0, 6), 'server'].sort());
  assert.equal(got.ops[0], `#3 put todos/t2 title: "Bread" replica ${ids.b.slice(0, 6)} via server`);
  assert.deepEqual(got.pending, ['none: every local write is acknowledged']);
  // Names the app gives replace the short ids.
  await page.evaluate((b) => { window.el.peerNames = { [b]: "Ben's phone" }; }, ids.b);
  await until('the given name', () => window.part('.points .peer').includes("Ben's phone"));
  got = await page.evaluate(() => window.part('.ops li')[0]);
  assert.equal(got, `#3 put todos/t2 title: "Bread" Ben's phone via server`);
});

test('a long pull shows live progress while it runs, and hides it when the round ends', async () => {
  const seen = await page.evaluate(async () => {
    const docs = Array.from({ length: 120 }, (_, i) => ({ id: `bulk${i}`, n: i }));
    await window.b.putMany('todos', docs);
    await window.b.syncNow();
    const bar = window.el.shadowRoot.querySelector('.progress');
    const states = [];
    let shown = 0;
    const observer = new MutationObserver(() => {
      if (bar.getBoundingClientRect().height > 0) shown += 1;
      if (states.at(-1) !== bar.dataset.progress) states.push(bar.dataset.progress);
    });
    observer.observe(bar, { attributes: true, subtree: true, childList: true, characterData: true });
    await window.a.syncNow();
    await new Promise((r) => setTimeout(r, 200));
    observer.disconnect();
    return { states, shown, hiddenAfter: bar.hidden && bar.getBoundingClientRect().height === 0 };
  });
  const pulls = seen.states.filter((s) => /^pull \d+\/\d+$/.test(s ?? ''));
  assert.ok(pulls.length >= 2, `several steps of the pull: ${JSON.stringify(seen.states)}`);
  assert.ok(seen.shown > 0, 'the bar was visible during the pull');
  const last = pulls.at(-1).match(/(\d+)\/(\d+)/);
  assert.equal(last[1], last[2], `the pull's progress reached its total: ${JSON.stringify(seen.states)}`);
  assert.equal(seen.hiddenAfter, true);
});

test('quarantined ops and conflicts are shown when the replica reports them, and only then', async () => {
  await page.evaluate(() => {
    // What replicas with those capabilities report: status().quarantined and db.conflicts.
    const status = window.a.status.bind(window.a);
    window.a.status = () => ({ ...status(), quarantined: [{ op: { collection: 'todos', id: 'q1', fields: { title: 7 } }, reason: 'INVALID_DOCUMENT' }] });
    window.a.conflicts = async () => [{ collection: 'todos', id: 't1', field: 'title', lost: 'Milk', won: 'Oat milk' }];
    window.el.refresh();
  });
  await until('both sections', () => !window.el.shadowRoot.querySelector('.quarantined').hidden && !window.el.shadowRoot.querySelector('.conflicts').hidden);
  const got = await page.evaluate(() => ({ q: window.part('.quarantined li'), qTitle: window.part('.quarantined h4')[0],
    c: window.part('.conflicts li'), cTitle: window.part('.conflicts h4')[0] }));
  assert.deepEqual(got, {
    qTitle: 'Quarantined ops (1)', q: ['todos/q1 INVALID_DOCUMENT title: 7'],
    cTitle: 'Conflicts (1)', c: ['todos/t1 field: "title", lost: "Milk", won: "Oat milk"'],
  });
  await page.evaluate(() => { delete window.a.status; delete window.a.conflicts; window.el.refresh(); });
  await until('both sections hidden again', () => window.el.shadowRoot.querySelector('.quarantined').hidden && window.el.shadowRoot.querySelector('.conflicts').hidden);
});

test('without a replica it says so, and it follows a replica it is given later', async () => {
  await page.evaluate(() => { window.el.db = null; });
  await until('the empty state', () => window.part('.head')[0] === "No replica: set the element's db property.");
  await page.evaluate(() => { window.el.db = window.b; });
  await until('replica B', () => window.part('.head .db-name')[0] === 'dt-b');
  assert.deepEqual(h.errors, []);
});

test('writes committing while the panel reads the op log never draw a head that disagrees with the lists under it', async () => {
  const drawn = await page.evaluate(async ({ schema }) => {
    const db = await window.tidemark.openReplica({ name: 'dt-c', schema });
    const el = document.createElement('tidemark-devtools');
    document.body.append(el);
    el.db = db;
    const root = el.shadowRoot;
    const states = [];
    const observer = new MutationObserver(() => {
      const rows = root.querySelector('.head .muted')?.textContent.match(/· (\d+) rows/)?.[1];
      const newest = root.querySelector('.ops li')?.textContent.match(/^#(\d+)/)?.[1] ?? '0';
      const pending = root.querySelectorAll('.pending li:not(.none)').length;
      const badge = root.querySelector('.head .unsynced')?.textContent ?? '0 pending';
      if (rows !== undefined) states.push({ rows, newest, pending, badge });
    });
    observer.observe(root, { subtree: true, childList: true, characterData: true });
    // Asked together: the first write's change event starts a pass whose op-log read waits
    // for the writes asked before it, so that read sees rows the first status did not.
    const writes = [db.put('todos', { id: 'c1' }), db.patch('todos', 'c1', { title: 'x' }), db.put('todos', { id: 'c2' })];
    await Promise.all(writes);
    const settled = () => states.at(-1)?.rows === '3' && states.at(-1)?.newest === '3';
    for (let i = 0; i < 250 && !settled(); i++) await new Promise((r) => setTimeout(r, 20));
    observer.disconnect();
    el.remove();
    await db.close();
    return states;
  }, { schema: SCHEMA });
  assert.deepEqual(drawn.at(-1), { rows: '3', newest: '3', pending: 3, badge: '3 pending' }, JSON.stringify(drawn));
  for (const s of drawn) {
    assert.equal(s.rows, s.newest, `head and op log drawn together: ${JSON.stringify(drawn)}`);
    assert.equal(s.badge, `${s.pending} pending`, `head and pending rows drawn together: ${JSON.stringify(drawn)}`);
  }
});
