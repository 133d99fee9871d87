// The demo page (www/) served by a real tidemark-server, driven like a user in headless
// Chromium: two replicas in one page converge through the server (each panel's
// <tidemark-devtools> names the peers), an offline panel's edits merge when it comes back
// and the panel whose edit lost to last-writer-wins explains it, a second tab follows along, and
// the reset-from-v1 flow shows its progress and migrated documents with the local writes
// kept. Saves tests/artifacts/demo.png.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CHROMIUM_ARGS } from './harness.mjs';
import { startServer } from './server.mjs';

const ARTIFACTS = fileURLToPath(new URL('../artifacts/', import.meta.url));
const WAIT = 20000;

let srv;
let profile;
let context;
let page;
/** Page errors and console errors of every page this test opens. */
const problems = [];

function watch(p) {
  p.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
  p.on('console', (m) => { if (m.type() === 'error') problems.push(`console.error: ${m.text()}`); });
  return p;
}

async function openDemo() {
  const p = watch(await context.newPage());
  await p.goto(`${srv.url}/`);
  await p.waitForSelector('html[data-ready]', { timeout: WAIT });
  assert.equal(await p.getAttribute('html', 'data-ready'), 'true', 'both replicas opened');
  return p;
}

before(async () => {
  srv = await startServer();
  profile = await mkdtemp(join(tmpdir(), 'tidemark-demo-'));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 1360, height: 900 },
  });
  page = await openDemo();
});

after(async () => {
  await context?.close();
  await srv?.stop();
  if (profile) await rm(profile, { recursive: true, force: true });
});

const panel = (side, p = page) => p.locator(`#${side}`);

/** The tasks a panel shows, in order: `[{ title, done }]`. */
function shown(side, p = page) {
  return p.$$eval(`#${side} .task`, (lis) => lis.map((li) => ({
    title: li.querySelector('.title')?.textContent ?? null,
    done: li.querySelector('.toggle').checked,
  })));
}

/** Waits for `fn(arg)` in the page; on timeout says what it waited for and what both panels show. */
async function until(what, fn, arg, p = page) {
  try {
    await p.waitForFunction(fn, arg, { timeout: WAIT, polling: 100 });
  } catch (e) {
    const state = JSON.stringify({ left: await shown('left', p), right: await shown('right', p) });
    throw new Error(`timed out waiting for ${what}; the panels show ${state}`);
  }
}

const hasTask = (side, title) => until(`"${title}" in the ${side} panel`,
  ({ side, title }) => [...document.querySelectorAll(`#${side} .task .title`)].some((t) => t.textContent === title), { side, title });

async function addTask(side, title, list) {
  await panel(side).locator('.new-title').fill(title);
  if (list) await panel(side).locator('.new-list').selectOption(list);
  await panel(side).locator('.add button[type=submit]').click();
  await hasTask(side, title);
}

const exactly = (text) => new RegExp(`^${text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`);
const row = (side, title) => panel(side).locator('.task', { has: page.locator('.title', { hasText: exactly(title) }) });

async function editTitle(side, from, to) {
  const li = row(side, from);
  await li.locator('button.edit').click();
  const input = panel(side).locator('.task .edit-input');
  await input.fill(to);
  await input.press('Enter');
  await hasTask(side, to);
}

test('both panels open online, with an empty board', async () => {
  for (const side of ['left', 'right']) {
    await until(`the ${side} panel online`, (side) => document.getElementById(side).dataset.state === 'online', side);
    assert.equal(await panel(side).locator('.badge.conn').textContent(), 'Online');
    assert.equal(await panel(side).locator('.schema').textContent(), 'v2');
    assert.deepEqual(await shown(side), []);
  }
});

test('a task added in the left panel appears in the right panel', async () => {
  await addTask('left', 'Water the plants', 'home');
  await hasTask('right', 'Water the plants');
  assert.deepEqual(await shown('right'), [{ title: 'Water the plants', done: false }]);
  assert.equal(await row('right', 'Water the plants').locator('.tag').textContent(), 'home');
  // The devtools name the server and the left replica as peers; the op log shows the put.
  await until('the right panel listing the server and Ada as peers', () => {
    const peers = [...document.querySelector('#right tidemark-devtools').shadowRoot.querySelectorAll('.points .peer')].map((n) => n.textContent);
    return peers.includes('server') && peers.includes("Ada's laptop");
  });
  const ops = await panel('right').locator('tidemark-devtools .ops li').allTextContents();
  assert.ok(ops.some((t) => t.includes('put') && t.includes('Water the plants') && t.includes("Ada's laptop")), `right's recent ops: ${ops}`);
});

test('the right panel goes offline, both sides edit, it comes back and both converge', async () => {
  await panel('right').locator('.online-toggle').setChecked(false);
  await until('the right panel offline', () => document.getElementById('right').dataset.state === 'offline');
  assert.equal(await panel('right').locator('.badge.conn').textContent(), 'Offline');

  // The left panel is online: its edits reach the server.
  await editTitle('left', 'Water the plants', 'Water the plants (left)');
  await addTask('left', 'Call the plumber', 'home');
  await until('the left panel with nothing pending', () => document.getElementById('left').dataset.pending === '0');

  // The right panel is offline: its edits stay local, pending.
  await row('right', 'Water the plants').locator('.toggle').check();
  await addTask('right', 'Pack for the trip', 'inbox');
  await editTitle('right', 'Water the plants', 'Water the plants (right, later)');
  await until('pending writes on the right', () => Number(document.getElementById('right').dataset.pending) >= 3);
  assert.match(await panel('right').locator('.badge.pending').textContent(), /^\d+ pending$/);
  await new Promise((r) => setTimeout(r, 1500)); // live sync rounds run every second: give one a chance
  const offline = await shown('right');
  assert.ok(!offline.some((t) => t.title === 'Call the plumber'), 'nothing arrives while offline');

  await panel('right').locator('.online-toggle').setChecked(true);
  await until('both panels converged, nothing pending', () => {
    const read = (side) => JSON.stringify([...document.querySelectorAll(`#${side} .task`)].map((li) => [li.querySelector('.title')?.textContent, li.querySelector('.toggle').checked]));
    const l = document.getElementById('left');
    const r = document.getElementById('right');
    return read('left') === read('right') && document.querySelectorAll('#left .task').length === 3
      && l.dataset.pending === '0' && r.dataset.pending === '0' && r.dataset.state === 'online';
  });
  const left = await shown('left');
  assert.deepEqual(left, await shown('right'));
  assert.deepEqual([...left].sort((a, b) => a.title.localeCompare(b.title)), [
    { title: 'Call the plumber', done: false },
    { title: 'Pack for the trip', done: false },
    // Both sides renamed it: the later write wins on both; the done flag from the right merges in.
    { title: 'Water the plants (right, later)', done: true },
  ]);
  // The left panel's rename lost to the right's later one: it says so, in one line.
  await until('the last-writer-wins line on the left', () => !document.querySelector('#left .lww').hidden);
  assert.equal(await panel('left').locator('.lww').textContent(), 'Last writer wins: Ben\'s phone set title to '
    + '"Water the plants (right, later)" after Ada\'s laptop set it to "Water the plants (left)", so the later edit stays on every replica.');
  assert.equal(await panel('right').locator('.lww').isHidden(), true, 'the right panel lost nothing');

  // The filter is a live query too.
  await panel('left').locator('.filter button[data-filter="done"]').click();
  await until('the done filter on the left', () => document.querySelectorAll('#left .task').length === 1);
  assert.deepEqual(await shown('left'), [{ title: 'Water the plants (right, later)', done: true }]);
  await panel('left').locator('.filter button[data-filter="all"]').click();
  await until('all tasks on the left', () => document.querySelectorAll('#left .task').length === 3);
});

test('deleting a task on one side removes it on the other', async () => {
  await row('right', 'Call the plumber').locator('button.delete').click();
  await until('the task gone on both sides', () => ![...document.querySelectorAll('.task .title')].some((t) => t.textContent === 'Call the plumber'));
  await until('the delete in the left op log', () => [...document.querySelector('#left tidemark-devtools').shadowRoot.querySelectorAll('.ops li')]
    .some((li) => li.textContent.includes('delete')));
});

test('a second tab follows along: one tab per replica runs live sync', async () => {
  const second = await openDemo();
  try {
    for (const side of ['left', 'right']) {
      await until(`the ${side} panel of the second tab following`, (side) => document.getElementById(side).dataset.state === 'follower', side, second);
    }
    assert.equal(await panel('left').locator('.leader').textContent(), 'runs live sync');
    assert.equal(await panel('left', second).locator('.leader').textContent(), 'follows');
    // A write in the first tab shows up in the second through the shared IndexedDB…
    await addTask('left', 'Buy stamps');
    await until('the second tab showing the new task on both sides', () => ['left', 'right'].every((side) =>
      [...document.querySelectorAll(`#${side} .task .title`)].some((t) => t.textContent === 'Buy stamps')), undefined, second);
    // …and a write in the second tab is synced by the first.
    await second.locator('#right .new-title').fill('Written in the second tab');
    await second.locator('#right .add button[type=submit]').click();
    await hasTask('left', 'Written in the second tab');
  } finally {
    await second.close();
  }
});

test('the reset flow: v1 data reaches a fresh v2 replica as a migrated snapshot, local writes kept', async () => {
  await page.locator('#run-reset').click();
  await page.waitForSelector('#upgrade[data-state="done"], #upgrade[data-state="failed"]', { timeout: 30000 });
  const steps = await page.$$eval('#steps > li', (lis) => lis.map((li) => [li.dataset.step, li.dataset.state, li.querySelector('.detail').textContent]));
  assert.equal(await page.getAttribute('#upgrade', 'data-state'), 'done', JSON.stringify(steps));
  assert.deepEqual(steps.map(([s, st]) => [s, st]), [['v1', 'done'], ['local', 'done'], ['sync', 'done'], ['result', 'done']]);
  const syncStep = steps[2][2];
  for (const f of ['snapshot: true', 'reset: true', "'reset' event: fired"]) assert.ok(syncStep.includes(f), syncStep);
  // The reset arrived in several batches: the progress bar showed them, and stays at the total.
  const bar = await page.$eval('#reset-progress', (el) => ({ hidden: el.hidden, last: el.dataset.last, events: Number(el.dataset.events),
    text: el.querySelector('.progress-text').textContent }));
  assert.equal(bar.hidden, false);
  assert.ok(bar.events >= 2, JSON.stringify(bar));
  // It ends on the swap: one pointer flip, after the snapshot was staged and migrated.
  assert.equal(bar.last, 'pull swap 1/1', JSON.stringify(bar));
  assert.equal(bar.text, 'Swapping in 1 / 1');
  const phases = await page.$$eval('#reset-phases li', (lis) => lis.map((li) => [li.dataset.phase, li.textContent]));
  const names = phases.map(([p]) => p);
  for (const p of ['snapshot', 'migrate', 'swap']) assert.ok(names.includes(p), JSON.stringify(phases));
  assert.ok(names.indexOf('snapshot') < names.indexOf('migrate') && names.indexOf('migrate') < names.indexOf('swap'), JSON.stringify(phases));
  const [, done, total] = /^snapshot: (\d+)\/(\d+)$/.exec(phases.find(([p]) => p === 'snapshot')[1]) ?? [];
  assert.ok(Number(total) >= 10 && done === total, JSON.stringify(phases));
  assert.equal(names.filter((p) => p === 'swap').length, 1, 'one swap');
  assert.match(await page.locator('#reset-live').textContent(), /showed 2 tasks throughout the reset, then 12 — 1 update, one swap/);
  const summary = await page.locator('#reset-summary').textContent();
  assert.match(summary, /reset: true/);
  assert.match(summary, /10 v1 tasks migrated/);
  assert.match(summary, /2 of 2 local writes kept/);
  assert.match(summary, /0 pending/);
  const rows = await page.$$eval('#reset-result tbody tr', (trs) => trs.map((tr) => ({
    title: tr.cells[0].textContent, list: tr.cells[1].textContent, from: tr.cells[3].textContent })));
  assert.equal(rows.length, 12);
  assert.deepEqual(rows.filter((r) => r.from === 'local write · kept').map((r) => r.title).sort(), ['Invite the team', 'Try the new app']);
  assert.deepEqual(rows.find((r) => r.title === 'Book flights'), { title: 'Book flights', list: 'travel', from: 'app v1 · migrated' });
  assert.ok(rows.every((r) => !r.title.includes('#')), 'every hashtag became a list');
  // The boards are untouched by the flow (it runs in a library of its own).
  assert.equal((await shown('left')).length, 4);

  await page.waitForTimeout(300); // let the last badges settle for the picture
  await mkdir(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: join(ARTIFACTS, 'demo.png'), fullPage: true });
});

test('no page errors and no console errors', () => {
  assert.deepEqual(problems, []);
});
