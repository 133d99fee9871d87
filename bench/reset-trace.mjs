// `node bench/reset-trace.mjs` (after `make build build-server`): a timeline of resets.
// A real tidemark-server holds 10,000 version-1 documents; a version-2 replica with LOCAL
// (default 10) unsynced writes syncs and resets, as the bench's `migrate` section does.
// Prints per reset: when the first snapshot chunk was staged, the mean interval between
// chunks 2–9, when the last full chunk was and the total to the first query (ms). With
// VERBOSE=1 also every WebSocket message, progress event and IndexedDB open, delete and
// transaction (with its completion) in order: which waits sit between the phases — e.g.
// that the last chunk waits ~90 ms for IndexedDB to commit the one before it, or how the
// staging generation is set up before the first chunk. RUNS resets (default 2).
import { chromium } from 'playwright-core';
import { mkdtempSync } from 'node:fs';
import { startStatic } from './serve.mjs';
import { CHROMIUM_ARGS } from '../tests/e2e/harness.mjs';
import { startServer } from '../tests/e2e/server.mjs';
import { bundle } from './build.mjs';
await bundle();
const srv = await startServer();
const { server, url } = await startStatic();
const browser = await chromium.launchPersistentContext(mkdtempSync('/tmp/bp-'), { executablePath: '/usr/bin/chromium', headless: true, args: CHROMIUM_ARGS });
const page = await browser.newPage();
await page.addInitScript(() => {
  const W = window.WebSocket; window.wslog = [];
  window.WebSocket = function (...a) { const ws = new W(...a); const t = () => (performance.now() - (window.t0 ?? 0)).toFixed(1);
    const s = ws.send.bind(ws); ws.send = (d) => { window.wslog.push(`${t()} send ${typeof d === 'string' ? d.slice(0, 60) : d.byteLength}`); s(d); };
    ws.addEventListener('message', (e) => window.wslog.push(`${t()} recv ${typeof e.data === 'string' ? e.data.length + ' ' + e.data.slice(0, 60) : e.data.byteLength ?? e.data.size}`));
    ws.addEventListener('open', () => window.wslog.push(`${t()} open`));
    return ws; };
  window.WebSocket.prototype = W.prototype; Object.assign(window.WebSocket, W);
  {
    const T = () => (performance.now() - (window.t0 ?? 0)).toFixed(1);
    const o = IDBFactory.prototype.open; IDBFactory.prototype.open = function (n, v) { const r = o.apply(this, arguments); window.wslog?.push(`${T()} idb open ${n} ${v ?? ''}`); r.addEventListener('success', () => window.wslog?.push(`${T()} idb opened ${n}`)); return r; };
    const d = IDBFactory.prototype.deleteDatabase; IDBFactory.prototype.deleteDatabase = function (n) { const r = d.apply(this, arguments); window.wslog?.push(`${T()} idb delete ${n}`); r.addEventListener('success', () => window.wslog?.push(`${T()} idb deleted ${n}`)); return r; };
    const t = IDBDatabase.prototype.transaction; IDBDatabase.prototype.transaction = function (s, m) { const x = t.apply(this, arguments); const id = Math.random().toString(36).slice(2, 6); window.wslog?.push(`${T()} tx ${id} ${m ?? 'readonly'} ${[].concat(s).join(',').slice(0, 40)} ${this.name.slice(-12)}`); x.addEventListener('complete', () => window.wslog?.push(`${T()} tx ${id} complete`)); return x; };
  }
});
await page.goto(`${url}/bench/page.html`);
await page.evaluate((n) => { window.LOCAL = n; }, +(process.env.LOCAL ?? 10));
const RUNS = +(process.env.RUNS ?? 2);
for (let r = 0; r < RUNS; r++) {
await page.evaluate(([u, l]) => window.bench.migrateSeed(u, l), [srv.wsUrl, 'lib' + r]);
const out = await page.evaluate(async ([u, l]) => {
  const T = await import('/bench/dist/tidemark.js');
  const S1 = { version: 1, collections: { docs: { primaryKey: 'id', indexes: { byKind: 'kind', byKindN: ['kind', 'n'] } } } };
  const db = await T.openReplica({ name: 'probe' + l, schema: { version: 2, collections: S1.collections }, history: [S1], migrations: { 2: (d) => ({ ...d, migrated: true }) }, sync: { url: u, library: l } });
  await db.putMany('docs', Array.from({ length: +(window.LOCAL ?? 10) }, (_, i) => ({ id: 'local-' + i, kind: 'local', n: i })));
  window.wslog = [];
  window.t0 = performance.now();
  db.on('progress', (p) => window.wslog.push(`${(performance.now() - window.t0).toFixed(1)} progress ${p.direction} ${p.phase} ${p.done}/${p.total}`));
  const r = await db.syncNow();
  await db.query('docs', { where: { kind: 'k0', n: { gte: 0, lt: 500 } } });
  window.wslog.push(`${(performance.now() - window.t0).toFixed(1)} done`);
  await db.close();
  return window.wslog;
}, [srv.wsUrl, 'lib' + r]);
const ps = out.filter((l) => l.includes('progress pull snapshot')).map((l) => parseFloat(l));
const iv = ps.slice(2, 10).map((t, i) => t - ps[i + 1]);
console.log('first', ps[0].toFixed(0), 'interval', (iv.reduce((a, b) => a + b, 0) / iv.length).toFixed(1), 'last10000', ps[9].toFixed(0), 'total', parseFloat(out[out.length - 1]).toFixed(0));
if (process.env.VERBOSE) console.log(out.join('\n'));
}
await browser.close(); server.close(); await srv.stop();
