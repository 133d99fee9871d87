// `node bench/profile.mjs [lib]` (after `make build`): where a library's browser time goes.
// Runs the bench page's write phase (W1 + W3) and, after a reload, its read phase (cold
// open, W4, W2) under Chromium's sampling CPU profiler (CDP `Profiler`, 100 µs), and prints
// each phase's self time by function — JS, wasm (named when the wasm keeps its name
// section), IndexedDB's bindings — plus `(idle)`: time the page spent waiting, which for
// IndexedDB workloads is mostly round trips to the storage backend. Writes
// bench/profile-<lib>.json (the summaries) for the closing notes of performance work.
import { chromium } from 'playwright-core';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { bundle } from './build.mjs';
import { startStatic } from './serve.mjs';
import { CHROMIUM_ARGS } from '../tests/e2e/harness.mjs';

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
  return { total_ms: +total.toFixed(1), top: rows };
}

async function profiled(cdp, fn) {
  await cdp.send('Profiler.start');
  const result = await fn();
  const { profile } = await cdp.send('Profiler.stop');
  return { result, profile: summarize(profile) };
}

async function main() {
  await bundle();
  const { server, url } = await startStatic();
  const dir = await mkdtemp(join(tmpdir(), 'tidemark-profile-'));
  const context = await chromium.launchPersistentContext(dir, { executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium', headless: true, args: CHROMIUM_ARGS });
  try {
    const page = await context.newPage();
    await page.goto(`${url}/bench/page.html`);
    await page.waitForFunction(() => window.ready === true);
    const cdp = await context.newCDPSession(page);
    await cdp.send('Profiler.enable');
    await cdp.send('Profiler.setSamplingInterval', { interval: 100 });
    const name = `profile-${Date.now()}`;
    const write = await profiled(cdp, () => page.evaluate(([l, n]) => window.bench.write(l, n), [lib, name]));
    await page.reload();
    await page.waitForFunction(() => window.ready === true);
    const read = await profiled(cdp, () => page.evaluate(([l, n]) => window.bench.read(l, n), [lib, name]));
    await page.evaluate(([l, n]) => window.bench.destroy(l, n), [lib, name]);
    const out = { lib, generated: new Date().toISOString(), write: { figures: write.result, ...write.profile }, read: { figures: read.result, ...read.profile } };
    for (const phase of ['write', 'read']) {
      const p = out[phase];
      console.log(`\n${lib} ${phase} phase: ${p.total_ms} ms sampled`, JSON.stringify(p.figures));
      for (const r of p.top) console.log(`  ${String(r.ms).padStart(8)} ms  ${(r.share * 100).toFixed(1).padStart(5)}%  ${r.fn}`);
    }
    await writeFile(join(BENCH, `profile-${lib}.json`), JSON.stringify(out, null, 2) + '\n');
  } finally {
    await context.close();
    await new Promise((ok) => server.close(ok));
    await rm(dir, { recursive: true, force: true });
  }
}

main().catch((e) => { console.error(e); process.exit(1); });
