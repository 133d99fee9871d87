// `node bench/profile.mjs [lib]` (after `make build`): where a library's browser time goes.
// Runs the bench page's write phase (W1 + W3) and, after a reload, its read phase (cold
// open, W4, W2) under Chromium's sampling CPU profiler (CDP `Profiler`, 100 µs), and prints
// each phase's self time by function — JS, wasm (named when the wasm keeps its name
// section), IndexedDB's bindings — plus `(idle)`: time the page spent waiting, which for
// IndexedDB workloads is mostly round trips to the storage backend. Writes
// bench/profile-<lib>.json (the summaries) for the closing notes of performance work.
//
// `node bench/profile.mjs migrate` profiles the reset instead (DESIGN §6, the bench's
// `migrate` section): a real tidemark-server holding 10,000 version-1 documents, a version-2
// replica with unsynced writes syncing them — the snapshot staged, migrated and swapped in
// — beside the same run's raw IndexedDB limit. It also prints the inclusive time of the
// functions with the most of it (where a phase's time goes, callees included).
// `node bench/profile.mjs sync` profiles the bench's initial sync (then its catch-up) the
// same way: a fresh replica syncing 10,000 documents from a real server, beside the limit.
// PROFILE_WASM=path/to/tidemark_bg.wasm profiles that wasm instead of the shipped one: the
// shipped one has no function names (scripts/wasm-opt.sh drops them); one with names comes
// from `wasm-bindgen --target web --out-dir DIR --out-name tidemark
// target/wasm32-unknown-unknown/wasm-release/tidemark.wasm` (the same build, same glue).
// PROFILE_RAW=file.cpuprofile keeps the whole profile (Chromium DevTools opens it); for a
// library's phases, file-write.cpuprofile and file-read.cpuprofile.
import { chromium } from 'playwright-core';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { loadavg } from 'node:os';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { bundle } from './build.mjs';
import { startStatic } from './serve.mjs';
import { CHROMIUM_ARGS } from '../tests/e2e/harness.mjs';
import { startServer } from '../tests/e2e/server.mjs';
import { renameWasm } from '../scripts/short-imports.mjs';

const BENCH = fileURLToPath(new URL('.', import.meta.url));
const lib = process.argv[2] ?? 'tidemark';
const TOP = Number(process.env.PROFILE_TOP ?? 25);

/** Self time (ms) per function of one CPU profile, largest first. */
function summarize(profile) {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const self = new Map();
  for (let i = 0; i < profile.samples.length; i++) {
    const node = byId.get(profile.samples[i]);
    const f = node.callFrame;
    const file = f.url ? f.url.split('/').pop() : '';
    // Minified bundles: an anonymous function is told apart by where it starts.
    const at = f.functionName ? '' : `:${f.lineNumber + 1}:${f.columnNumber + 1}`;
    const key = `${f.functionName || '(anonymous)'}${file ? ` ${file}${at}` : ''}`;
    self.set(key, (self.get(key) ?? 0) + (profile.timeDeltas[i] ?? 0) / 1000);
  }
  const total = [...self.values()].reduce((a, b) => a + b, 0);
  const rows = [...self.entries()].sort((a, b) => b[1] - a[1]).slice(0, TOP).map(([fn, ms]) => ({ fn, ms: +ms.toFixed(1), share: +(ms / total).toFixed(3) }));
  return { total_ms: +total.toFixed(1), top: rows, inclusive: inclusive(profile, byId, total) };
}

/** Inclusive time (ms) per function — a sample counts once for each function on its stack. */
function inclusive(profile, byId, total) {
  const parent = new Map();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const name = (n) => n.callFrame.functionName || '(anonymous)';
  const incl = new Map();
  for (let i = 0; i < profile.samples.length; i++) {
    const ms = (profile.timeDeltas[i] ?? 0) / 1000;
    const seen = new Set();
    for (let id = profile.samples[i]; id !== undefined; id = parent.get(id)) {
      const f = name(byId.get(id));
      if (seen.has(f)) continue;
      seen.add(f);
      incl.set(f, (incl.get(f) ?? 0) + ms);
    }
  }
  return [...incl.entries()].filter(([f]) => !f.startsWith('(')).sort((a, b) => b[1] - a[1]).slice(0, TOP)
    .map(([fn, ms]) => ({ fn, ms: +ms.toFixed(1), share: +(ms / total).toFixed(3) }));
}

async function profiled(cdp, fn, keep) {
  await cdp.send('Profiler.start');
  const result = await fn();
  const { profile } = await cdp.send('Profiler.stop');
  if (keep && process.env.PROFILE_RAW) await writeFile(process.env.PROFILE_RAW.replace(/(\.cpuprofile)?$/, `-${keep}$1`), JSON.stringify(profile));
  return { result, profile: summarize(profile) };
}

function print(title, p) {
  console.log(`\n${title}: ${p.total_ms} ms sampled`, JSON.stringify(p.figures));
  for (const r of p.top) console.log(`  ${String(r.ms).padStart(8)} ms  ${(r.share * 100).toFixed(1).padStart(5)}%  ${r.fn}`);
  console.log('  inclusive:');
  for (const r of p.inclusive) console.log(`  ${String(r.ms).padStart(8)} ms  ${(r.share * 100).toFixed(1).padStart(5)}%  ${r.fn}`);
}

/**
 * The profile cut at the phases' starts (ms after the mark, from the progress events):
 * per phase, wall time, idle, garbage collection, and the functions with the most
 * inclusive time.
 */
function byPhase(profile, phases) {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const stack = (id) => { const out = []; for (; id !== undefined; id = parent.get(id)) out.push(byId.get(id).callFrame.functionName || '(anonymous)'); return out; };
  let t = profile.startTime;
  const times = profile.timeDeltas.map((d) => (t += d));
  const at = profile.samples.findIndex((id) => stack(id).includes('profileMark'));
  if (at < 0) return null;
  const zero = times[at];
  const cuts = [{ phase: 'start', ms: 0 }, ...phases];
  const out = cuts.map((c, i) => ({ phase: c.phase, from_ms: c.ms, to_ms: cuts[i + 1]?.ms ?? null, idle: 0, gc: 0, total: 0, fns: new Map() }));
  for (let i = at; i < profile.samples.length; i++) {
    const ms = (times[i] - zero) / 1000;
    const dt = (profile.timeDeltas[i + 1] ?? 0) / 1000;
    let k = 0;
    while (k + 1 < cuts.length && cuts[k + 1].ms <= ms) k++;
    const p = out[k];
    const s = stack(profile.samples[i]);
    p.total += dt;
    if (s[0] === '(idle)') p.idle += dt;
    if (s[0] === '(garbage collector)') p.gc += dt;
    for (const f of new Set(s)) if (!f.startsWith('(')) p.fns.set(f, (p.fns.get(f) ?? 0) + dt);
  }
  return out.map(({ fns, ...p }) => ({ ...p, idle: +p.idle.toFixed(1), gc: +p.gc.toFixed(1), total: +p.total.toFixed(1),
    top: [...fns.entries()].filter(([f]) => /tidemark::|put|get|parse|stringify|JSON|indexed_db|migrat/i.test(f)).sort((a, b) => b[1] - a[1]).slice(0, 14).map(([fn, ms]) => ({ fn: fn.replace(/::h[0-9a-f]{16}/, ''), ms: +ms.toFixed(1) })) }));
}

/** The bench page, loaded, with Chromium's sampling profiler enabled on it (100 µs). */
async function benchPage(context, url) {
  const page = await context.newPage();
  await page.goto(`${url}/bench/page.html`);
  await page.waitForFunction(() => window.ready === true);
  const cdp = await context.newCDPSession(page);
  await cdp.send('Profiler.enable');
  await cdp.send('Profiler.setSamplingInterval', { interval: 100 });
  return { page, cdp };
}

/** The initial sync of the bench's `sync` section, profiled (see the top). */
async function sync(context, url) {
  const srv = await startServer();
  try {
    const { page, cdp } = await benchPage(context, url);
    const raw = await profiled(cdp, () => page.evaluate((n) => window.bench.rawLimit(n), `profile-limit-${Date.now()}`));
    const library = `profile-sync-${Date.now()}`;
    await page.evaluate(([u, l]) => window.bench.syncSeed(u, l), [srv.wsUrl, library]);
    const load = +loadavg()[0].toFixed(2);
    await cdp.send('Profiler.start');
    const result = await page.evaluate(([u, l]) => window.bench.syncRun(u, l, 0), [srv.wsUrl, library]);
    const { profile } = await cdp.send('Profiler.stop');
    if (process.env.PROFILE_RAW) await writeFile(process.env.PROFILE_RAW, JSON.stringify(profile));
    await page.close();
    const figures = { initial_sync_ms: +result.initial_sync_ms.toFixed(0), catch_up_ms: +result.catch_up_ms.toFixed(0), raw_limit_ms: +raw.result.limit_ms.toFixed(0),
      vs_limit: +(result.initial_sync_ms / raw.result.limit_ms).toFixed(2), loadavg: load };
    return { limit: { figures: raw.result, ...raw.profile }, sync: { figures, ...summarize(profile) } };
  } finally {
    await srv.stop();
  }
}

/** The reset of the bench's `migrate` section, profiled (see the top). */
async function migrate(context, url) {
  const srv = await startServer();
  try {
    const { page, cdp } = await benchPage(context, url);
    // The limit profiled too: what raw IndexedDB's own writes cost in the same page.
    const raw = await profiled(cdp, () => page.evaluate((n) => window.bench.rawLimit(n), `profile-limit-${Date.now()}`));
    const limit = raw.result;
    const library = `profile-migrate-${Date.now()}`;
    await page.evaluate(([u, l]) => window.bench.migrateSeed(u, l), [srv.wsUrl, library]);
    const load = +loadavg()[0].toFixed(2);
    // The page calls afterTimed once the timed part is over; the profile stops there.
    let stopped = null;
    await page.exposeFunction('afterTimed', async () => { stopped = (await cdp.send('Profiler.stop')).profile; });
    // A 5 ms spin in a function of its own where the timed part begins: its first sample
    // places the page's clock in the profile's.
    await page.evaluate(() => {
      window.beforeTimed = function profileMark() { const end = performance.now() + 5; while (performance.now() < end); };
    });
    await cdp.send('Profiler.start');
    const result = await page.evaluate(([u, l]) => window.bench.migrateRun(u, l, 0), [srv.wsUrl, library]);
    if (!stopped) throw new Error('the page never called afterTimed');
    if (process.env.PROFILE_RAW) await writeFile(process.env.PROFILE_RAW, JSON.stringify(stopped));
    const run = { result, profile: summarize(stopped) };
    await page.close();
    const figures = { reset_migrate_ms: +run.result.reset_migrate_ms.toFixed(0), raw_limit_ms: +limit.limit_ms.toFixed(0),
      vs_limit: +(run.result.reset_migrate_ms / limit.limit_ms).toFixed(2), loadavg: load };
    // Where each phase began (ms after syncNow was called), from the progress events.
    const phases = [];
    for (const p of run.result.progress) {
      const k = `${p.direction}:${p.phase}`;
      if (phases.at(-1)?.phase !== k) phases.push({ phase: k, ms: +p.ms.toFixed(0) });
    }
    return { limit: { figures: limit, ...raw.profile }, reset: { figures: { ...figures, phases }, ...run.profile, by_phase: byPhase(stopped, phases) } };
  } finally {
    await srv.stop();
  }
}

async function main() {
  await bundle();
  if (process.env.PROFILE_WASM) {
    // Its imports named as js/build.mjs named the bundle's (scripts/short-imports.mjs).
    const short = new Map(Object.entries(JSON.parse(await readFile(join(BENCH, '../js/pkg/imports.json'), 'utf8'))));
    await writeFile(join(BENCH, 'dist/pkg/tidemark_bg.wasm'), renameWasm(await readFile(process.env.PROFILE_WASM), short));
  }
  const { server, url } = await startStatic();
  const dir = await mkdtemp(join(tmpdir(), 'tidemark-profile-'));
  const context = await chromium.launchPersistentContext(dir, { executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium', headless: true, args: CHROMIUM_ARGS });
  try {
    if (lib === 'sync') {
      const out = { lib, generated: new Date().toISOString(), ...(await sync(context, url)) };
      print('raw IndexedDB limit', out.limit);
      print('tidemark initial sync, then catch-up (sampled together)', out.sync);
      await writeFile(join(BENCH, 'profile-sync.json'), JSON.stringify(out, null, 2) + '\n');
      return;
    }
    if (lib === 'migrate') {
      const out = { lib, generated: new Date().toISOString(), ...(await migrate(context, url)) };
      print('raw IndexedDB limit', out.limit);
      print('tidemark reset + migrate', out.reset);
      for (const p of out.reset.by_phase ?? []) {
        console.log(`\nphase ${p.phase} (${p.from_ms}–${p.to_ms ?? 'end'} ms): ${p.total} ms sampled, idle ${p.idle}, gc ${p.gc}`);
        for (const r of p.top) console.log(`  ${String(r.ms).padStart(8)} ms  ${r.fn}`);
      }
      await writeFile(join(BENCH, 'profile-migrate.json'), JSON.stringify(out, null, 2) + '\n');
      return;
    }
    const { page, cdp } = await benchPage(context, url);
    const name = `profile-${Date.now()}`;
    const write = await profiled(cdp, () => page.evaluate(([l, n]) => window.bench.write(l, n), [lib, name]), 'write');
    await page.reload();
    await page.waitForFunction(() => window.ready === true);
    const read = await profiled(cdp, () => page.evaluate(([l, n]) => window.bench.read(l, n), [lib, name]), 'read');
    await page.evaluate(([l, n]) => window.bench.destroy(l, n), [lib, name]);
    const out = { lib, generated: new Date().toISOString(), write: { figures: write.result, ...write.profile }, read: { figures: read.result, ...read.profile } };
    for (const phase of ['write', 'read']) print(`${lib} ${phase} phase`, out[phase]);
    await writeFile(join(BENCH, `profile-${lib}.json`), JSON.stringify(out, null, 2) + '\n');
  } finally {
    await context.close();
    await new Promise((ok) => server.close(ok));
    await rm(dir, { recursive: true, force: true });
  }
}

main().catch((e) => { console.error(e); process.exit(1); });
