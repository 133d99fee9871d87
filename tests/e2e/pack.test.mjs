// The npm package as users get it: `npm pack` js/ (after `make build` has put the wasm
// package in js/pkg), check what the tarball holds and what its package.json promises,
// install it offline into every fixture app and check each tool's conditions resolve the
// entry point meant for it, then install it into a temporary copy of tests/e2e/sample-app,
// serve that folder with a tiny static server and run the app in headless Chromium,
// importing `tidemark` from node_modules through an import map.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { cp, mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { CHROMIUM_ARGS } from './harness.mjs';
import { startServer } from '../../scripts/serve.mjs';
import { FIXTURES } from './fixtures.mjs';
import { PKG_DIR, ROOT, install, pack, run } from './package.mjs';

const SAMPLE = join(ROOT, 'tests/e2e/sample-app');
let packed;
let manifest;

before(async () => {
  packed = await pack();
  manifest = JSON.parse(await readFile(join(PKG_DIR, 'package.json'), 'utf8'));
});

after(async () => { await packed?.cleanup(); });

test('the tarball holds the entry points, their types, the wasm and its embedded copy, README and LICENSE, and nothing else', async () => {
  const { entries } = packed;
  const expected = ['package.json', 'README.md', 'LICENSE', 'index.js', 'dev.js', 'embedded.js', 'api.js', 'replica.js', 'react.js', 'devtools.js',
    'index.d.ts', 'react.d.ts', 'devtools.d.ts', 'tidemark_bg.wasm.d.ts',
    'pkg/tidemark.js', 'pkg/tidemark.d.ts', 'pkg/tidemark_bg.wasm', 'pkg/tidemark_bg.embedded.js'];
  for (const f of expected) assert.ok(entries.includes(f), `${f} is in the tarball: ${entries.join(', ')}`);
  // Every snippet module the generated JS imports ships with it.
  const generated = await readFile(join(PKG_DIR, 'pkg/tidemark.js'), 'utf8');
  // wasm-bindgen writes `import { f } from './snippets/…'` for a snippet used through its
  // glue and `import * as importN from "./snippets/…"` for one the wasm imports directly.
  const snippets = [...generated.matchAll(/from (['"])\.\/(snippets\/[^'"]+)\1/g)].map((m) => `pkg/${m[2]}`);
  assert.ok(snippets.length > 0, 'the generated module imports its snippets');
  for (const s of snippets) assert.ok(entries.includes(s), `${s} is in the tarball`);
  // Nothing else: no Rust sources, build files, build scripts or tests.
  assert.deepEqual(entries.filter((p) => !expected.includes(p) && !snippets.includes(p)), []);
  assert.match(await readFile(join(PKG_DIR, 'LICENSE'), 'utf8'), /^MIT License/);
  // The generated module no longer carries a wasm URL of its own (js/build.mjs).
  assert.doesNotMatch(generated, /import\.meta\.url/);
});

test('the wasm imports its glue by short names, each defined once by the glue, and no hashed name is left (scripts/short-imports.mjs)', async () => {
  const wasm = await readFile(join(PKG_DIR, 'pkg/tidemark_bg.wasm'));
  const glue = await readFile(join(PKG_DIR, 'pkg/tidemark.js'), 'utf8');
  const names = WebAssembly.Module.imports(new WebAssembly.Module(wasm)).filter((i) => i.module === './tidemark_bg.js').map((i) => i.name);
  assert.ok(names.length > 100, `the wasm imports ${names.length} functions from its glue`);
  assert.equal(new Set(names).size, names.length, 'no import name repeats');
  for (const name of names) {
    assert.match(name, /^[a-zA-Z]{1,2}$/, `${name} is a short name`);
    assert.equal(glue.match(new RegExp(`^\\s+${name}: function\\(`, 'gm'))?.length, 1, `the glue defines ${name} once`);
  }
  assert.doesNotMatch(glue, /__wbg_\w+_[0-9a-f]{16}/, 'the glue keeps no hashed import name');
});

test('package.json: exports with types for every entry, side effects, repository, license, an optional React peer', () => {
  assert.equal(manifest.name, 'tidemark');
  assert.equal(manifest.license, 'MIT');
  assert.equal(manifest.type, 'module');
  assert.match(manifest.repository?.url ?? '', /^git\+https:\/\//);
  assert.deepEqual(manifest.dependencies ?? {}, {}, 'the package has no dependencies');
  assert.deepEqual(manifest.peerDependencies, { react: '>=18' });
  assert.deepEqual(manifest.peerDependenciesMeta, { react: { optional: true } });
  // Only the devtools module has an import-time effect (it defines the custom element).
  assert.deepEqual(manifest.sideEffects, ['./devtools.js']);
  for (const entry of ['.', './react', './devtools', './tidemark_bg.wasm']) {
    const conditions = manifest.exports[entry];
    assert.ok(conditions, `exports has ${entry}`);
    assert.equal(Object.keys(conditions)[0], 'types', `${entry}: types come first`);
    for (const target of Object.values(conditions)) assert.ok(packed.entries.includes(target.replace(/^\.\//, '')), `${entry} → ${target} is shipped`);
  }
});

/** What Node resolves `specifier` to from `dir` with extra export `conditions`. */
async function resolveFrom(dir, specifier, conditions = []) {
  const { stdout } = await run(process.execPath, [...conditions.map((c) => `--conditions=${c}`), '--input-type=module', '-e',
    `console.log(import.meta.resolve(${JSON.stringify(specifier)}))`], { cwd: dir });
  return stdout.trim().replace(/^.*\/node_modules\/tidemark\//, '');
}

test('installed offline into every fixture app, each tool\'s conditions resolve the entry point meant for it', async () => {
  const apps = (await readdir(FIXTURES, { withFileTypes: true })).filter((d) => d.isDirectory() && existsSync(join(FIXTURES, d.name, 'package-lock.json')));
  assert.ok(apps.length >= 6, apps.map((d) => d.name).join(', '));
  for (const { name } of apps) {
    const dir = join(FIXTURES, name);
    await install(dir, packed);
    const installed = JSON.parse(await readFile(join(dir, 'node_modules/tidemark/package.json'), 'utf8'));
    assert.equal(installed.version, manifest.version);
    // Vite and webpack builds announce `production`, their dev modes `development`;
    // esbuild, Rollup and Bun only `browser`; Node and import maps none of these.
    assert.equal(await resolveFrom(dir, 'tidemark', ['production', 'browser']), 'index.js');
    assert.equal(await resolveFrom(dir, 'tidemark', ['development', 'browser']), 'dev.js');
    assert.equal(await resolveFrom(dir, 'tidemark', ['browser']), 'embedded.js');
    assert.equal(await resolveFrom(dir, 'tidemark'), 'index.js');
    assert.equal(await resolveFrom(dir, 'tidemark/react'), 'react.js');
    assert.equal(await resolveFrom(dir, 'tidemark/devtools'), 'devtools.js');
    assert.equal(await resolveFrom(dir, 'tidemark/tidemark_bg.wasm'), 'pkg/tidemark_bg.wasm');
  }
});

test('installed into a sample app without a bundler, openReplica, put, query and subscribe work from node_modules/tidemark', async () => {
  const tmp = await mkdtemp(join(tmpdir(), 'tidemark-sample-'));
  const app = join(tmp, 'app');
  await cp(SAMPLE, app, { recursive: true });
  await install(app, packed);
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
    // The code and the wasm came from the installed package; the embedded copy was not needed.
    assert.ok(requested.includes('/node_modules/tidemark/index.js'), requested.join(', '));
    assert.ok(requested.includes('/node_modules/tidemark/pkg/tidemark_bg.wasm'), requested.join(', '));
    assert.ok(!requested.some((p) => p.includes('embedded')), requested.join(', '));
    assert.deepEqual(problems, []);
  } finally {
    await context.close();
    await new Promise((ok) => { server.close(ok); server.closeAllConnections(); });
    await rm(profile, { recursive: true, force: true });
    await rm(tmp, { recursive: true, force: true });
  }
});
