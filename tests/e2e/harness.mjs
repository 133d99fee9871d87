// Shared set-up for the browser end-to-end tests: a static server on a free loopback
// port and Debian's Chromium driven by playwright-core (never a downloaded browser).
import { chromium } from 'playwright-core';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startServer } from '../../scripts/serve.mjs';

export const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

async function launch(url, errors) {
  const profile = await mkdtemp(join(tmpdir(), 'tidemark-e2e-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    args: CHROMIUM_ARGS,
  });
  async function openPage() {
    const page = await context.newPage();
    page.on('pageerror', (e) => errors.push(e));
    await page.goto(`${url}/tests/e2e/page.html`);
    await page.waitForFunction(() => window.ready === true);
    return page;
  }
  async function close() {
    await context.close();
    await rm(profile, { recursive: true, force: true });
  }
  return { context, openPage, close };
}

/** Starts the server and a persistent browser profile (so IndexedDB survives reloads). */
export async function setup() {
  const { server, url } = await startServer();
  const errors = [];
  const main = await launch(url, errors);
  async function teardown() {
    await main.close();
    await new Promise((ok) => server.close(ok));
  }
  /** A second, separate browser (its own profile and IndexedDB): another user's device. */
  const newContext = () => launch(url, errors);
  return { url, context: main.context, openPage: main.openPage, newContext, teardown, errors };
}

/**
 * Runs `fn(db, arg)` in `page` against replica `name` opened with `schema` and synced to
 * `sync`, then closes it; resolves to what `fn` returned.
 */
export async function withReplica(page, { name, sync, schema }, fn, arg) {
  return page.evaluate(async ({ name, sync, schema, fn, arg }) => {
    const db = await window.tidemark.openReplica({ name, schema, sync });
    try {
      // eslint-disable-next-line no-new-func
      return await new Function('db', 'arg', `return (${fn})(db, arg);`)(db, arg);
    } finally { await db.close(); }
  }, { name, sync, schema, fn: fn.toString(), arg });
}
