// tidemark/react in a real Vite + React app (tests/e2e/fixtures/react), built with the
// packed tarball and driven in Chromium against a real tidemark-server: two devices edit
// one list through useQuery / useDoc / useSyncStatus; a refused query shows its error
// state; StrictMode, re-renders and hot reloads leave exactly one subscription per hook;
// and server-side rendering in Node shows the loading state.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startServer as staticServer } from '../../scripts/serve.mjs';
import { startServer } from './server.mjs';
import { install, pack } from './package.mjs';
import { browser, fixture, node, prepare, viteDev } from './fixtures.mjs';

const WAIT = 20000;
let srv;
let packed;

before(async () => {
  srv = await startServer();
  packed = await pack();
  await install(fixture('react'), packed);
});

after(async () => {
  await packed?.cleanup();
  await srv?.stop();
});

/** Opens the app as device `name` in its own browser profile; collects page and console errors. */
async function device(base, name, library) {
  const b = await browser();
  const page = await b.context.newPage();
  const problems = [];
  page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') problems.push(`console.error: ${m.text()}`); });
  await page.goto(`${base}/?${new URLSearchParams({ name, library, sync: srv.wsUrl })}`);
  return { page, problems, close: () => b.close() };
}

const until = (page, what, fn, arg) => page.waitForFunction(fn, arg, { timeout: WAIT, polling: 50 }).catch(async () => {
  throw new Error(`timed out waiting for ${what}; the page shows: ${await page.locator('main').innerText().catch(() => '(no main)')}`);
});
const titles = (page) => page.$$eval('#todos li .title', (els) => els.map((e) => e.textContent));
const hasTitle = (page, title) => until(page, `"${title}" in the list`, (t) => [...document.querySelectorAll('#todos li .title')].some((e) => e.textContent === t), title);

async function addTodo(page, title) {
  await page.fill('#title', title);
  await page.click('button[type=submit]');
  await hasTitle(page, title);
}

/** Live subscriptions of the app's hooks: Todos and Broken (useQuery), Detail (useDoc, once a todo is selected). */
const liveQueries = (page) => page.evaluate(() => window.db.liveQueries.length);

test('a built app: two devices share a list through useQuery, useDoc and useSyncStatus; errors and loading states show', async () => {
  const dir = await prepare('react', { shared: false });
  await node(dir, 'node_modules/vite/bin/vite.js', ['build']);
  const { server, url } = await staticServer({ root: join(dir, 'dist'), index: '/index.html' });
  const library = `react-${Date.now()}`;
  const a = await device(url, 'react-a', library);
  const b = await device(url, 'react-b', library);
  try {
    for (const d of [a, b]) {
      await until(d.page, 'the list', () => document.querySelector('#todos')?.dataset.state === 'ready');
      await until(d.page, 'online', () => document.querySelector('#sync')?.dataset.state === 'online');
      // The refused query: its error state, not an exception.
      await until(d.page, 'the refused query', () => document.querySelector('#broken')?.dataset.state === 'error');
      assert.equal(await d.page.textContent('#broken'), 'INVALID_QUERY');
      assert.equal(await d.page.getAttribute('#detail', 'data-state'), 'none');
    }
    await addTodo(a.page, 'Milk');
    await addTodo(a.page, 'Bread');
    await until(a.page, 'nothing pending', () => document.querySelector('#sync').dataset.pending === '0');
    // Device B's live query follows through the server.
    await hasTitle(b.page, 'Bread');
    assert.deepEqual(await titles(b.page), ['Milk', 'Bread']);

    // useDoc on B follows the selected todo; B completes it and it leaves A's open list.
    await b.page.click('#todos li:has-text("Milk") .title');
    await until(b.page, 'the detail', () => document.querySelector('#detail').textContent === 'Milk');
    await b.page.click('#todos li:has-text("Milk") .done');
    await until(b.page, 'the detail marked done', () => document.querySelector('#detail').textContent === 'Milk (done)');
    await until(a.page, 'Milk gone from the open list on A', () => ![...document.querySelectorAll('#todos li .title')].some((e) => e.textContent === 'Milk'));
    assert.deepEqual(await titles(a.page), ['Bread']);

    // A deletes Milk: B's useDoc shows it missing.
    const milkId = await b.page.evaluate(async () => (await window.db.query('todos', { where: { done: true } }))[0].id);
    await a.page.evaluate((id) => window.db.delete('todos', id), milkId);
    await until(b.page, 'the detail showing the deletion', () => document.querySelector('#detail').dataset.state === 'missing');

    // Typing re-renders the list with a new query object each time: no resubscription.
    const before = await b.page.evaluate(() => window.subscribeCalls);
    await b.page.type('#title', 'no resubscribe', { delay: 5 });
    assert.equal(await b.page.evaluate(() => window.subscribeCalls), before, 'typing did not resubscribe');
    assert.equal(await liveQueries(b.page), 3, 'one subscription per hook (a todo is selected)');
    assert.deepEqual([...a.problems, ...b.problems], []);
  } finally {
    await a.close();
    await b.close();
    await new Promise((ok) => { server.close(ok); server.closeAllConnections(); });
  }
});

test('the dev server: StrictMode double effects and a hot reload of the hook component leave one subscription per hook', async () => {
  const dir = await prepare('react', { shared: false });
  const file = join(dir, 'app/Todos.jsx');
  const original = await readFile(file, 'utf8');
  const dev = await viteDev(dir);
  const d = await device(dev.url, `react-dev-${Date.now()}`, `react-dev-${Date.now()}`);
  try {
    await until(d.page, 'the list', () => document.querySelector('#todos')?.dataset.state === 'ready');
    await until(d.page, 'the refused query', () => document.querySelector('#broken')?.dataset.state === 'error');
    // StrictMode mounts, unmounts and mounts again in development: still one each.
    assert.equal(await d.page.evaluate(() => window.subscribeCalls), 4, 'StrictMode ran both effects twice');
    assert.equal(await liveQueries(d.page), 2);
    await d.page.evaluate(() => { window.hotMarker = 'kept'; });
    await addTodo(d.page, 'Before the reload');

    // Edit the component that calls useQuery, adding a hook: React Fast Refresh remounts it
    // (its effects are cleaned up and run again) and keeps the rest of the page.
    await writeFile(file, original
      .replace("import { useQuery } from 'tidemark/react';", "import { useState } from 'react';\nimport { useQuery } from 'tidemark/react';")
      .replace("  const { data, loading, error } = useQuery(", "  const [edited] = useState(' (edited)');\n  const { data, loading, error } = useQuery(")
      .replace('<h2 id="todos-title">Open todos</h2>', '<h2 id="todos-title">Open todos{edited}</h2>'));
    await until(d.page, 'the hot update', () => document.querySelector('#todos-title')?.textContent === 'Open todos (edited)');
    assert.equal(await d.page.evaluate(() => window.hotMarker), 'kept', 'a hot update, not a page reload');
    assert.equal(await liveQueries(d.page), 2, 'the reload replaced the subscription instead of adding one');
    // …and the replaced subscription is live.
    await addTodo(d.page, 'After the reload');
    assert.deepEqual(await titles(d.page), ['Before the reload', 'After the reload']);
    assert.deepEqual(d.problems, []);
  } finally {
    await writeFile(file, original);
    await d.close();
    await dev.stop();
  }
});

test('server-side rendering in Node: the hooks render their loading state and opening a replica is UNSUPPORTED_ENVIRONMENT', async () => {
  const { stdout } = await node(fixture('react'), 'ssr.mjs');
  const { html, open } = JSON.parse(stdout);
  assert.equal(html, '<p>todos loading, doc loading, sync loading</p>');
  assert.equal(open.code, 'UNSUPPORTED_ENVIRONMENT');
});
