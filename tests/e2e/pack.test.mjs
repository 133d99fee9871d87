// The npm package as users get it: `npm pack` js/ (after `make build` has put the wasm
// package in js/pkg), check what the tarball holds, install it offline into a temporary
// copy of tests/e2e/sample-app, serve that folder with a tiny static server and run the
// app in headless Chromium, importing `tidemark` from node_modules through an import map.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { cp, mkdir, mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { chromium } from 'playwright-core';
import { CHROMIUM_ARGS } from './harness.mjs';
import { startServer } from '../../scripts/serve.mjs';

const run = promisify(execFile);
const ROOT = resolve(fileURLToPath(new URL('../..', import.meta.url)));
const PKG_DIR = join(ROOT, 'js');
const FIXTURE = join(ROOT, 'tests/e2e/sample-app');

let tmp;
let tarball;
let entries;

before(async () => {
  if (!existsSync(join(PKG_DIR, 'pkg/tidemark_bg.wasm'))) throw new Error('js/pkg is missing: run `make build` first');
  tmp = await mkdtemp(join(tmpdir(), 'tidemark-pack-'));
  // A cache of its own: nothing here reads or writes the user's npm cache, or the network.
  const env = { ...process.env, npm_config_cache: join(tmp, 'npm-cache'), npm_config_update_notifier: 'false', npm_config_fund: 'false', npm_config_audit: 'false' };
  const { stdout } = await run('npm', ['pack', '--json', '--pack-destination', tmp], { cwd: PKG_DIR, env });
  const [info] = JSON.parse(stdout);
  tarball = join(tmp, info.filename);
  await stat(tarball);
  // What is really in the tarball (not what npm says it would put there).
  const listing = await run('tar', ['-tzf', tarball]);
  entries = listing.stdout.split('\n').filter(Boolean).map((p) => p.replace(/^package\//, ''));

  const app = join(tmp, 'app');
  await cp(FIXTURE, app, { recursive: true });
  await run('npm', ['install', '--offline', '--no-audit', '--no-fund', tarball], { cwd: app, env });
});

after(async () => { if (tmp) await rm(tmp, { recursive: true, force: true }); });

test('the tarball holds the entry point, its types, package.json and the wasm package, and nothing from src/', async () => {
  for (const f of ['index.js', 'index.d.ts', 'package.json', 'pkg/tidemark.js', 'pkg/tidemark_bg.wasm', 'pkg/tidemark.d.ts']) {
    assert.ok(entries.includes(f), `${f} is in the tarball: ${entries.join(', ')}`);
  }
  // Every snippet module the generated JS imports ships with it.
  const generated = await readFile(join(PKG_DIR, 'pkg/tidemark.js'), 'utf8');
  const snippets = [...generated.matchAll(/from '\.\/(snippets\/[^']+)'/g)].map((m) => `pkg/${m[1]}`);
  assert.ok(snippets.length > 0, 'the generated module imports its snippets');
  for (const s of snippets) assert.ok(entries.includes(s), `${s} is in the tarball`);
  // Nothing else: no Rust sources, no build files, no tests.
  const stray = entries.filter((p) => p.startsWith('src/') || p.includes('/src/') || p.endsWith('.rs') || /(^|\/)Cargo\.(toml|lock)$/.test(p)
    || !(p === 'package.json' || p === 'index.js' || p === 'index.d.ts' || p.startsWith('pkg/') || /^(README|LICENSE)/i.test(p)));
  assert.deepEqual(stray, []);
  const manifest = JSON.parse(await readFile(join(PKG_DIR, 'package.json'), 'utf8'));
  assert.deepEqual(manifest.dependencies ?? {}, {}, 'the package has no dependencies');
});

test('installed into a sample app, openReplica, put, query and subscribe work from node_modules/tidemark', async () => {
  const app = join(tmp, 'app');
  const installed = JSON.parse(await readFile(join(app, 'node_modules/tidemark/package.json'), 'utf8'));
  assert.equal(installed.name, 'tidemark');
  assert.ok(existsSync(join(app, 'node_modules/tidemark/pkg/tidemark_bg.wasm')));

  const { server, url } = await startServer({ root: app, index: '/index.html' });
  const profile = await mkdtemp(join(tmpdir(), 'tidemark-pack-profile-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium', headless: true, args: CHROMIUM_ARGS });
  try {
    const page = await context.newPage();
    const problems = [];
    const requested = [];
    page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
    page.on('console', (m) => { if (m.type() === 'error') problems.push(`console.error: ${m.text()}`); });
    page.on('response', (r) => { requested.push(new URL(r.url()).pathname); if (r.status() >= 400) problems.push(`${r.status()} ${r.url()}`); });
    await page.goto(`${url}/index.html`);
    await page.waitForFunction(() => window.result !== undefined, undefined, { timeout: 20000 });
    const r = await page.evaluate(() => window.result);
    assert.ok(r.ok, `the sample app failed: ${r.code ?? ''} ${r.error}\n${r.stack ?? ''}`);
    assert.deepEqual(r.seen[0], [], 'subscribe calls back at once with the current (empty) results');
    assert.deepEqual(r.seen.at(-1), ['b', 'c', 'd'], 'then with every change that alters them');
    assert.equal(r.afterStop, 0, 'no calls after unsubscribing');
    assert.deepEqual(r.query.map((d) => d.id), ['d', 'c']);
    assert.deepEqual(r.get, { id: 'c', n: 3, text: 'patched' });
    assert.deepEqual(r.reopened, ['a', 'b', 'c', 'd', 'e'], 'the data survived a close and reopen');
    assert.equal(typeof r.status.dbId, 'string');
    assert.equal(r.status.schemaVersion, 1);
    // The code and the wasm came from the installed package.
    assert.ok(requested.includes('/node_modules/tidemark/index.js'), requested.join(', '));
    assert.ok(requested.includes('/node_modules/tidemark/pkg/tidemark_bg.wasm'), requested.join(', '));
    assert.deepEqual(problems, []);
  } finally {
    await context.close();
    await new Promise((ok) => server.close(ok));
    await rm(profile, { recursive: true, force: true });
  }
});
