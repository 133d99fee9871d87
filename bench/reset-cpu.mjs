// `node bench/reset-cpu.mjs` (after `make build build-server`): where a reset's CPU goes,
// per process — the page's renderer, Chromium's browser process (where IndexedDB stores
// what the page puts), its other processes, tidemark-server — beside the raw IndexedDB
// limit's in the same run, from /proc (user + system time, 10 ms ticks). On two cores
// both saturate the machine, so wall time follows their total CPU; this tells whether a
// change moved the page's share or IndexedDB's. RUNS resets (default 4).
import { chromium } from 'playwright-core';
import { mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import { startStatic } from './serve.mjs';
import { CHROMIUM_ARGS } from '../tests/e2e/harness.mjs';
import { startServer } from '../tests/e2e/server.mjs';
import { bundle } from './build.mjs';
await bundle();
const srv = await startServer();
const { server, url } = await startStatic();
const browser = await chromium.launchPersistentContext(mkdtempSync('/tmp/bp-'), { executablePath: '/usr/bin/chromium', headless: true, args: CHROMIUM_ARGS });
const page = await browser.newPage();
await page.goto(`${url}/bench/page.html`);
function cpu() {
  const out = {};
  for (const pid of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      const ticks = +f[11] + +f[12];
      let kind = null;
      if (cmd.includes('chromium')) kind = cmd.includes('--type=renderer') ? 'renderer' : cmd.includes('--type=') ? 'chromium-other' : 'browser';
      else if (cmd.includes('tidemark-server')) kind = 'server';
      if (kind) out[pid] = { kind, ticks };
    } catch {}
  }
  return out;
}
function diff(a, b) {
  const by = {};
  for (const [pid, x] of Object.entries(b)) { const t = x.ticks - (a[pid]?.ticks ?? 0); by[x.kind] = (by[x.kind] ?? 0) + t * 10; }
  return by;
}
const RUNS = +(process.env.RUNS ?? 4);
const acc = { reset: [], raw: [] };
for (let r = 0; r < RUNS; r++) {
  const lib = `lib${r}`;
  await page.evaluate(([u, l]) => window.bench.migrateSeed(u, l), [srv.wsUrl, lib]);
  await new Promise((ok) => setTimeout(ok, 1500));
  let c0 = null;
  const marker = (async () => { await page.waitForFunction(() => window.cpuMark === true, null, { polling: 20 }); c0 = cpu(); await page.evaluate(() => { window.cpuMark = false; }); })();
  const x = await page.evaluate(async ([u, l]) => {
    const T = await import('/bench/dist/tidemark.js');
    const S1 = { version: 1, collections: { docs: { primaryKey: 'id', indexes: { byKind: 'kind', byKindN: ['kind', 'n'] } } } };
    const db = await T.openReplica({ name: 'probe' + l, schema: { version: 2, collections: S1.collections }, history: [S1], migrations: { 2: (d) => ({ ...d, migrated: true }) }, sync: { url: u, library: l } });
    await db.putMany('docs', Array.from({ length: 10 }, (_, i) => ({ id: 'local-' + i, kind: 'local', n: i })));
    await new Promise((ok) => setTimeout(ok, 1000));
    window.cpuMark = true;
    await new Promise((ok) => setTimeout(ok, 300));
    const t = performance.now();
    const rep = await db.syncNow();
    const first = await db.query('docs', { where: { kind: 'k0', n: { gte: 0, lt: 500 } } });
    const ms = performance.now() - t;
    window.db = db;
    if (!rep.reset || first.length !== 1000) throw new Error('no reset');
    return { reset_migrate_ms: ms };
  }, [srv.wsUrl, lib]);
  await marker;
  const resetCpu = diff(c0, cpu());
  await page.evaluate(async () => { await window.db.close(); });
  await new Promise((ok) => setTimeout(ok, 1500));
  c0 = cpu();
  const l = await page.evaluate((n) => window.bench.rawLimit(n), `lim-${r}`);
  const rawCpu = diff(c0, cpu());
  acc.reset.push({ ms: x.reset_migrate_ms, ...resetCpu });
  acc.raw.push({ ms: l.limit_ms, ...rawCpu });
  console.log(`run ${r}: reset ${x.reset_migrate_ms.toFixed(0)} ms cpu ${JSON.stringify(resetCpu)} | raw ${l.limit_ms.toFixed(0)} ms cpu ${JSON.stringify(rawCpu)}`);
}
await browser.close(); server.close(); await srv.stop();
