// Live sync that stays truthful, in real Chromium against a real tidemark-server (issue 12):
// `sync.token` as a function (called on every connect and again when the server says the
// token expired, while a static token that expires stops live sync with an error), a
// server that stops answering without closing (SIGSTOP) turns status().online false by
// the protocol's own ping deadline, a killed server turns it false at once, and the
// page's offline/online events drop and restore the connection.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { setup } from './harness.mjs';
import { startServer } from './server.mjs';

const SCHEMA = { version: 1, collections: { todos: { primaryKey: 'id', indexes: { byN: 'n' } } } };
const SECRET = 'e2e-live-s3cret';

let h;
before(async () => { h = await setup(); });
after(async () => { await h.teardown(); });

/** A token in the server's format (see server/src/auth.rs), valid for `ttl` seconds. */
function mint(library, ttl) {
  const b64 = (b) => Buffer.from(b).toString('base64url');
  const claims = b64(JSON.stringify({ library, user: 'e2e', exp: Math.floor(Date.now() / 1000) + ttl }));
  const signed = `tm1.${claims}`;
  return `${signed}.${b64(createHmac('sha256', SECRET).update(signed).digest())}`;
}

/** Opens replica `name` in `page` as `window.db`, recording events in `window.events`. */
async function open(page, name, sync) {
  await page.evaluate(async ({ name, schema, sync }) => {
    const options = { ...sync };
    if (sync.tokenFrom === 'node') {
      delete options.tokenFrom;
      window.tokenCalls = 0;
      options.token = async () => { window.tokenCalls++; return window.mintToken(); };
    }
    window.db = await window.tidemark.openReplica({ name, schema, sync: options });
    window.events = { online: [], errors: [], syncs: 0 };
    window.db.on('online', (on) => window.events.online.push(on));
    window.db.on('error', (e) => window.events.errors.push(e.code));
    window.db.on('sync', () => { window.events.syncs++; });
    window.db.connect();
  }, { name, schema: SCHEMA, sync });
}

test('sync.token as a function renews an expiring token; an expired static token stops live sync', async () => {
  const srv = await startServer({ extraArgs: ['--secret', SECRET] });
  try {
    const page = await h.openPage();
    // Tokens valid for 2–3 s: the server ends each live connection when its token expires.
    await page.exposeFunction('mintToken', () => mint('tok', 3));
    await open(page, 'tok-fn', { url: srv.wsUrl, library: 'tok', tokenFrom: 'node' });
    await page.waitForFunction(() => window.db.status().online === true, null, { timeout: 20000 });
    await page.evaluate(() => window.db.put('todos', { id: 'first', n: 1 }));
    await page.waitForFunction(() => window.db.status().pending === 0, null, { timeout: 20000 });
    // At least one expiry, renewed by calling the function again, and still syncing.
    await page.waitForFunction(() => window.events.errors.includes('SYNC_TOKEN_EXPIRED') && window.tokenCalls >= 2, null, { timeout: 30000 });
    await page.waitForFunction(() => window.db.status().online === true, null, { timeout: 20000 });
    await page.evaluate(() => window.db.put('todos', { id: 'after-renewal', n: 2 }));
    await page.waitForFunction(() => window.db.status().pending === 0, null, { timeout: 20000 });
    const status = await (await fetch(`${srv.url}/v1/libraries/tok/status`, { headers: { authorization: `Bearer ${mint('tok', 60)}` } })).json();
    assert.equal(status.maxRow, 2);

    // A static token that expires: one SYNC_TOKEN_EXPIRED error, then no more tries.
    const other = await h.openPage();
    await open(other, 'tok-static', { url: srv.wsUrl, library: 'tok', token: mint('tok', 3) });
    await other.waitForFunction(() => window.db.status().online === true, null, { timeout: 20000 });
    await other.waitForFunction(() => window.events.errors.includes('SYNC_TOKEN_EXPIRED'), null, { timeout: 30000 });
    await other.waitForFunction(() => window.db.status().online === false, null, { timeout: 10000 });
    const errorsThen = await other.evaluate(() => window.events.errors.length);
    await other.evaluate(() => window.db.put('todos', { id: 'never', n: 3 }));
    await new Promise((r) => setTimeout(r, 3000));
    const later = await other.evaluate(() => ({ errors: window.events.errors, online: window.db.status().online, pending: window.db.status().pending }));
    assert.equal(later.errors.length, errorsThen, `no retries: ${later.errors}`);
    assert.equal(later.online, false);
    assert.equal(later.pending, 1);
    for (const p of [page, other]) { await p.evaluate(() => window.db.close()); await p.close(); }
  } finally { await srv.stop(); }
});

test('status().online turns false on a silent server (ping deadline), a killed one, and offline events', async () => {
  const srv = await startServer();
  try {
    const page = await h.openPage();
    await open(page, 'alive', { url: srv.wsUrl, library: 'alive' });
    await page.waitForFunction(() => window.db.status().online === true, null, { timeout: 20000 });

    // The server stops answering without closing anything: only the protocol's own
    // ping and deadline can tell (browsers cannot send WebSocket pings).
    srv.pause();
    const paused = Date.now();
    try {
      await page.waitForFunction(() => window.db.status().online === false, null, { timeout: 40000 });
    } finally { srv.resume(); }
    console.log(`# silent server noticed after ${Date.now() - paused} ms`);
    await page.waitForFunction(() => window.db.status().online === true, null, { timeout: 40000 });

    // The page goes offline: the connection is dropped at once; back online, at once again.
    await page.context().setOffline(true);
    await page.waitForFunction(() => window.db.status().online === false, null, { timeout: 5000 });
    await page.context().setOffline(false);
    await page.waitForFunction(() => window.db.status().online === true, null, { timeout: 20000 });

    // The server is killed: the socket closes and online is false right away.
    await srv.kill('SIGKILL');
    await page.waitForFunction(() => window.db.status().online === false, null, { timeout: 10000 });
    const events = await page.evaluate(() => window.events);
    assert.deepEqual(events.online.slice(0, 6), [true, false, true, false, true, false]);
    assert.ok(events.errors.includes('SYNC_CONNECTION'));
    await page.evaluate(() => window.db.close());
    await page.close();
  } finally { await srv.stop(); }
});
