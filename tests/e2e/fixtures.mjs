// The fixture apps under tests/e2e/fixtures/<name>/: each has its own pinned package.json
// and package-lock.json (installed by `make fixtures`, part of `make test`). Helpers to copy
// the shared app sources in, run a build, start a Vite dev server, and load a page in
// Chromium collecting what it requested and every error it showed.
import { spawn } from 'node:child_process';
import { cp, mkdtemp, rm } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { CHROMIUM_ARGS } from './harness.mjs';
import { freePort } from './server.mjs';
import { ROOT, run } from './package.mjs';

export const FIXTURES = join(ROOT, 'tests/e2e/fixtures');
export const fixture = (name) => join(FIXTURES, name);

/**
 * Readies a fixture for a build or a dev server: no previous output, no Vite dependency
 * cache (it would keep a previously installed tidemark) and, for the bundler fixtures, the
 * shared app in src/ (plus the shared index.html for the Vite ones).
 */
export async function prepare(name, { shared = true } = {}) {
  const dir = fixture(name);
  if (!existsSync(join(dir, 'node_modules'))) throw new Error(`${dir}/node_modules is missing: run \`make fixtures\``);
  if (shared) {
    await rm(join(dir, 'src'), { recursive: true, force: true });
    await cp(join(FIXTURES, 'shared'), join(dir, 'src'), { recursive: true, filter: (p) => !p.endsWith('index.html') });
    if (name.startsWith('vite')) await cp(join(FIXTURES, 'shared/index.html'), join(dir, 'index.html'));
  }
  await rm(join(dir, 'dist'), { recursive: true, force: true });
  await rm(join(dir, 'node_modules/.vite'), { recursive: true, force: true });
  return dir;
}

/** Runs `node <script> ...args` in the fixture; resolves to `{ stdout, stderr }`, rejects on failure. */
export function node(dir, script, args = []) {
  return run(process.execPath, [script, ...args], { cwd: dir, maxBuffer: 16 << 20 });
}

/** Runs one of the fixture's installed commands (node_modules/.bin), like `npx` would. */
export function bin(dir, name, args = []) {
  return run(join(dir, 'node_modules/.bin', name), args, { cwd: dir, maxBuffer: 16 << 20 });
}

/** A Vite dev server on a free port: `{ url, stop }`. */
export async function viteDev(dir, { bin = 'node_modules/vite/bin/vite.js' } = {}) {
  const port = await freePort();
  const child = spawn(process.execPath, [bin, '--host', '127.0.0.1', '--port', String(port), '--strictPort'], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  child.stdout.on('data', (d) => { log += d; });
  child.stderr.on('data', (d) => { log += d; });
  const url = `http://127.0.0.1:${port}`;
  const until = Date.now() + 30000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`vite exited: ${log}`);
    try { if ((await fetch(`${url}/`)).ok) break; } catch {}
    if (Date.now() > until) { child.kill(); throw new Error(`vite did not start: ${log}`); }
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    url,
    log: () => log,
    async stop() {
      if (child.exitCode !== null) return;
      const exited = new Promise((ok) => child.once('exit', ok));
      child.kill('SIGTERM');
      await exited;
    },
  };
}

/** A fresh Chromium profile: `{ context, close }`. */
export async function browser() {
  const profile = await mkdtemp(join(tmpdir(), 'tidemark-fixture-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium', headless: true, args: CHROMIUM_ARGS });
  return { context, async close() { await context.close(); await rm(profile, { recursive: true, force: true }); } };
}

/**
 * Opens `url` in a new page of `context` and waits for `window.result`. Resolves to
 * `{ page, result, responses, problems }`: every response as `{ path, status, type }`, and
 * page errors, console errors and failed responses except those matching `expect`.
 */
export async function openApp(context, url, { expect = [], timeout = 60000 } = {}) {
  const page = await context.newPage();
  const responses = [];
  const problems = [];
  const expected = (text) => expect.some((re) => re.test(text));
  const note = (text) => { if (!expected(text)) problems.push(text); };
  page.on('pageerror', (e) => note(`pageerror: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') note(`console.error: ${m.text()} (${m.location()?.url ?? ''})`); });
  page.on('response', (r) => {
    const path = new URL(r.url()).pathname;
    responses.push({ path, status: r.status(), type: r.headers()['content-type'] ?? '' });
    if (r.status() >= 400) note(`${r.status()} ${path}`);
  });
  page.on('requestfailed', (r) => note(`request failed: ${r.url()} ${r.failure()?.errorText ?? ''}`));
  await page.goto(url);
  await page.waitForFunction(() => window.result !== undefined, undefined, { timeout });
  const result = await page.evaluate(() => window.result);
  return { page, result, responses, problems };
}
