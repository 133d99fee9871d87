// The packed tarball in apps built the way their tools do by default, with no
// configuration for tidemark: Vite 5, 6 and 8 (dev server and build), esbuild and webpack.
// Each app (tests/e2e/fixtures/shared/checks.js) fails a load from a bad URL, retries,
// opens a replica, writes, runs a live query, is refused a Date, syncs with a real
// tidemark-server, and runs the same in a module Web Worker; every page error, console
// error and failed request fails the test.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { startServer as staticServer } from '../../scripts/serve.mjs';
import { startServer } from './server.mjs';
import { install, pack } from './package.mjs';
import { bin, browser, fixture, node, openApp, prepare, viteDev } from './fixtures.mjs';

let srv;
let packed;
let chromium;

before(async () => {
  srv = await startServer();
  packed = await pack();
  for (const name of ['vite5', 'vite6', 'vite7', 'vite8', 'esbuild', 'webpack']) await install(fixture(name), packed);
  chromium = await browser();
});

after(async () => {
  await chromium?.close();
  await packed?.cleanup();
  await srv?.stop();
});

/** The bad load of checks.js answers 404 on a static server: expected, nothing else is. */
const BAD_LOAD = [/no-such-dir/, /Failed to load resource: the server responded with a status of 404 \(Not Found\) \(.*no-such-dir/];

let runs = 0;
/** Opens the app at `base` (+ `page`) with a sync URL and asserts everything checks.js saw. */
async function check(base, page = '/') {
  const q = new URLSearchParams({ sync: srv.wsUrl, library: `fixtures-${++runs}`, name: `fixture-${runs}` });
  const app = await openApp(chromium.context, `${base}${page}?${q}`, { expect: BAD_LOAD });
  const r = app.result;
  await app.page.close();
  assert.ok(r.ok, `the app failed: ${JSON.stringify(r.error)}\n${r.stack ?? ''}`);
  assert.equal(r.badLoad.ok, false);
  assert.equal(r.badLoad.code, 'WASM_LOAD_FAILED');
  assert.match(r.badLoad.message, /\/no-such-dir\/tidemark_bg\.wasm/, 'the message names the URL');
  assert.equal(r.load.ok, true, `load() after a failed load: ${JSON.stringify(r.load)}`);
  assert.equal(r.otherSource.code, 'INVALID_ARGUMENT', 'load(url) once loaded is refused, not ignored');
  assert.deepEqual(r.live, ['b', 'c']);
  assert.deepEqual(r.get, { id: 'c', n: 3, text: 'patched' });
  assert.equal(r.date.code, 'NOT_JSON');
  assert.equal(r.sync.ok, true, JSON.stringify(r.sync));
  assert.ok(r.sync.value.sent >= 4, `synced ${JSON.stringify(r.sync)}`);
  assert.equal(r.worker.ok, true, `the worker: ${JSON.stringify(r.worker)}`);
  assert.deepEqual(r.worker.ids, ['w']);
  assert.equal(r.worker.sent, 1);
  assert.equal(r.worker.hasDocument, false, 'it ran in a worker');
  assert.deepEqual(app.problems, []);
  return app;
}

/** The wasm requests a page made, apart from the deliberate bad one. */
const wasmFetches = (app) => app.responses.filter((r) => r.path.endsWith('.wasm') && !r.path.includes('no-such-dir') && !r.path.includes('/other/'));
const embeddedFetches = (app) => app.responses.filter((r) => /embedded/.test(r.path));

async function files(dir) {
  const out = [];
  for (const e of await readdir(dir, { recursive: true, withFileTypes: true })) {
    if (e.isFile()) out.push({ name: join(e.parentPath ?? e.path, e.name).slice(dir.length + 1), size: (await stat(join(e.parentPath ?? e.path, e.name))).size });
  }
  return out;
}

/** Serves `root` statically while `fn(url)` runs; the shared browser's idle keep-alive connections are cut at the end. */
async function serve(root, fn) {
  const { server, url } = await staticServer({ root, index: '/index.html' });
  try {
    return await fn(url);
  } finally {
    const closed = new Promise((ok) => server.close(ok));
    server.closeAllConnections();
    await closed;
  }
}

// Vite 5, 6 and 7 pre-bundle dependencies with esbuild, which moves the module away from its
// wasm: the dev entry falls back to the embedded copy. Vite 8's optimizer (Rolldown)
// rewrites the URL, so the packaged file is streamed there.
for (const [name, version, devSource] of [['vite5', '5', 'embedded'], ['vite6', '6', 'embedded'], ['vite7', '7', 'embedded'], ['vite8', '8', 'packaged']]) {
  test(`Vite ${version} dev server: works without configuration (wasm: ${devSource} copy)`, async () => {
    const dir = await prepare(name);
    const dev = await viteDev(dir);
    try {
      const app = await check(dev.url);
      const packaged = wasmFetches(app).filter((r) => r.type.startsWith('application/wasm'));
      if (devSource === 'embedded') {
        assert.ok(embeddedFetches(app).length > 0, `the embedded copy was loaded: ${JSON.stringify(app.responses.map((r) => r.path))}`);
        assert.deepEqual(packaged, []);
      } else {
        assert.ok(packaged.length > 0, `the packaged wasm was streamed: ${JSON.stringify(app.responses)}`);
        assert.deepEqual(embeddedFetches(app), []);
      }
      assert.doesNotMatch(dev.log(), /error/i, dev.log());
    } finally {
      await dev.stop();
    }
  });

  test(`Vite ${version} build: the wasm is emitted as an asset and streamed; the embedded copy is never fetched`, async () => {
    const dir = await prepare(name);
    const { stdout, stderr } = await node(dir, 'node_modules/vite/bin/vite.js', ['build']);
    assert.doesNotMatch(`${stdout}${stderr}`, /error|warn.*tidemark/i, `${stdout}${stderr}`);
    const out = await files(join(dir, 'dist'));
    assert.ok(out.some((f) => /\.wasm$/.test(f.name)), `a .wasm asset in dist: ${JSON.stringify(out)}`);
    await serve(join(dir, 'dist'), async (url) => {
      const app = await check(url);
      const wasm = wasmFetches(app);
      // The page and its worker each fetch it once, served as application/wasm.
      assert.ok(wasm.length >= 1 && wasm.every((r) => r.status === 200 && r.type.startsWith('application/wasm')), JSON.stringify(wasm));
      assert.deepEqual(embeddedFetches(app), []);
    });
  });
}

test('esbuild with its default options (an IIFE bundle): the embedded wasm, no warnings, no extra files', async () => {
  const dir = await prepare('esbuild');
  const { stderr } = await bin(dir, 'esbuild', ['main.js', 'worker.js', '--bundle', '--outdir=dist']);
  assert.doesNotMatch(stderr, /warning|error/i, stderr);
  assert.deepEqual((await files(join(dir, 'dist'))).map((f) => f.name).sort(), ['main.js', 'worker.js']);
  await serve(dir, async (url) => {
    const app = await check(url, '/index.html');
    assert.deepEqual(wasmFetches(app), [], 'no wasm file is fetched: the bundle embeds it');
  });
});

for (const mode of ['production', 'development']) {
  test(`webpack 5, ${mode} mode, no loaders or rules: the wasm is emitted as an asset and streamed`, async () => {
    const dir = await prepare('webpack');
    const { stdout } = await node(dir, 'build.mjs', [mode]);
    const stats = JSON.parse(stdout);
    assert.deepEqual(stats.errors, []);
    // Only webpack's size hints (the wasm is larger than its 244 KiB advice) may warn.
    assert.deepEqual(stats.warnings.filter((w) => !/size limit|performance/i.test(w)), []);
    assert.ok(stats.assets.some((a) => a.name.endsWith('.wasm')), JSON.stringify(stats.assets));
    await serve(dir, async (url) => {
      const app = await check(url, '/index.html');
      const wasm = wasmFetches(app);
      assert.ok(wasm.length >= 1 && wasm.every((r) => r.status === 200), JSON.stringify(wasm));
      assert.deepEqual(embeddedFetches(app), []);
    });
  });
}
