// In-page measurements. bench/run.mjs calls these through Playwright; every library runs
// the same code through its adapter (src/adapters/*.js, bundled into bench/dist/).
// Timings use performance.now(); the page is cross-origin isolated (bench/serve.mjs), so
// Chromium gives it 5 µs resolution instead of 100 µs.
import { N, BATCH, SINGLE, KINDS, RANGE, doc, id, SCHEMA } from './workload.js';

const now = () => performance.now();
const sleep = (ms) => new Promise((ok) => setTimeout(ok, ms));
const load = (lib) => import(`/bench/dist/${lib}.js`);
const pct = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];

/**
 * Samples the page's used JS heap (performance.memory, precise with Chromium's
 * --enable-precise-memory-info) and, for Tidemark, the wasm linear memory, every 10 ms and at
 * start and stop; `stop()` returns the peaks in bytes: of each, and of their sum taken at the
 * same moment (the memory the page held at once). The samples run between awaited
 * IndexedDB requests, so a peak between two samples can be missed by up to 10 ms of
 * allocation: a floor, the same for every library.
 */
function memorySampler(A) {
  const heap = () => performance.memory?.usedJSHeapSize ?? NaN;
  const wasm = () => A.wasmMemoryBytes?.() ?? 0;
  let peakHeap = 0;
  let peakWasm = 0;
  let peakSum = 0;
  const sample = () => {
    const h = heap();
    const w = wasm();
    peakHeap = Math.max(peakHeap, h);
    peakWasm = Math.max(peakWasm, w);
    peakSum = Math.max(peakSum, h + w);
  };
  sample();
  const timer = setInterval(sample, 10);
  return {
    stop() {
      sample();
      clearInterval(timer);
      return { heap_peak_bytes: peakHeap, wasm_memory_bytes: peakWasm, sum_peak_bytes: peakSum };
    },
  };
}

function expectRange(rows, what) {
  if (!Array.isArray(rows) || rows.length !== 1000) throw new Error(`${what} returned ${rows?.length} rows, not 1000`);
}

/** W1, then W3: 10,000 documents in batches of 1,000 into a fresh database, then range queries. */
async function write(lib, name) {
  const A = await load(lib);
  await A.destroy(name).catch(() => {});
  const mem = memorySampler(A);
  const db = await A.open(name);
  const batches = [];
  for (let b = 0; b < N / BATCH; b++) batches.push(A.prepare(Array.from({ length: BATCH }, (_, i) => doc(b * BATCH + i))));
  let t = now();
  for (const batch of batches) await A.putBatch(db, batch);
  const w1 = now() - t;
  // Let the browser settle (IndexedDB compacts in the background after a burst of writes).
  await sleep(500);
  t = now();
  expectRange(await A.range(db, 'k0', ...RANGE), `${lib} W3`);
  const w3First = now() - t;
  // Distinct queries (one per kind), so no library answers from a cached result.
  const each = [];
  for (let k = 1; k < KINDS; k++) {
    t = now();
    expectRange(await A.range(db, 'k' + k, ...RANGE), `${lib} W3`);
    each.push(now() - t);
  }
  // Work a library deferred (PouchDB's lazy indexes), done before the reload; 0 if none.
  t = now();
  if (A.settle) await A.settle(db);
  const settle = now() - t;
  await A.close(db);
  const m = mem.stop();
  return { ...m, settle_ms: settle, w1_ms: w1, w1_docs_per_s: N / (w1 / 1000), w3_first_ms: w3First, w3_ms: each.reduce((a, b) => a + b) / each.length };
}

/** After a reload: cold open (load the library, open, first query), then W4 and W2. */
async function read(lib, name) {
  const t0 = now();
  const A = await load(lib);
  const mem = memorySampler(A);
  if (A.init) await A.init();
  const t1 = now();
  const db = await A.open(name);
  expectRange(await A.range(db, 'k0', ...RANGE), `${lib} cold query`);
  const cold = now() - t0;
  // W4: 1,000 awaited point gets, spread over the whole key space.
  const ids = Array.from({ length: SINGLE }, (_, i) => id((i * 7) % N));
  let t = now();
  for (const k of ids) if (!(await A.get(db, k))) throw new Error(`${lib} W4: ${k} missing`);
  const w4 = now() - t;
  // W2: 1,000 awaited single-document writes of new documents.
  const docs = A.prepare(Array.from({ length: SINGLE }, (_, i) => doc(N + i)));
  const times = [];
  const t2 = now();
  for (const d of docs) {
    t = now();
    await A.put(db, d);
    times.push(now() - t);
  }
  const w2Total = now() - t2;
  times.sort((a, b) => a - b);
  await A.close(db);
  const m = mem.stop();
  return { read_heap_peak_bytes: m.heap_peak_bytes, read_wasm_memory_bytes: m.wasm_memory_bytes, read_sum_peak_bytes: m.sum_peak_bytes, cold_open_ms: cold, cold_load_ms: t1 - t0, w4_ms: w4, w2_p50_ms: pct(times, 0.5), w2_p95_ms: pct(times, 0.95), w2_total_ms: w2Total };
}

async function destroy(lib, name) {
  const A = await load(lib);
  await A.destroy(name);
}

async function untilDone(db) {
  const reports = [];
  for (let i = 0; i < 1000; i++) {
    const r = await db.syncNow();
    reports.push(r);
    if (!r.capped) return reports;
  }
  throw new Error('sync never completed');
}

/** The writer replica puts 10,000 documents and pushes them to the server. */
async function syncSeed(url, library) {
  const T = await load('tidemark');
  await T.deleteReplica('sync-writer').catch(() => {});
  const db = await T.openReplica({ name: 'sync-writer', schema: SCHEMA, sync: { url, library } });
  for (let b = 0; b < N / BATCH; b++) await db.putMany('docs', Array.from({ length: BATCH }, (_, i) => doc(b * BATCH + i)));
  const reports = await untilDone(db);
  await db.close();
  return { reports };
}

/**
 * Initial sync: a fresh replica opens and syncs until its 10,000 documents are queryable.
 * Catch-up: the writer rewrites 1,000 documents and pushes them; the replica syncs again
 * until the new versions are queryable.
 */
async function syncRun(url, library, run) {
  const T = await load('tidemark');
  const name = `sync-reader-${run}`;
  await T.deleteReplica(name).catch(() => {});
  const sync = { url, library };
  await T.init(); // the wasm module is loaded once per page, not per replica
  let t = now();
  const db = await T.openReplica({ name, schema: SCHEMA, sync });
  const marks = [];
  let phase = 'initial';
  db.on('progress', (p) => marks.push({ phase, ms: now() - t, ...p }));
  const initialReports = await untilDone(db);
  expectRange(await db.query('docs', { where: { kind: 'k0', n: { gte: RANGE[0], lt: RANGE[1] } } }), 'initial sync query');
  const initial = now() - t;
  const all = await db.query('docs', {});
  if (all.length !== N) throw new Error(`initial sync: ${all.length} documents, not ${N}`);

  const writer = await T.openReplica({ name: 'sync-writer', schema: SCHEMA, sync });
  const first = (run * SINGLE) % N;
  const title = `rewritten in run ${run}`;
  await writer.putMany('docs', Array.from({ length: SINGLE }, (_, i) => ({ ...doc(first + i), title })));
  await untilDone(writer);
  await writer.close();

  phase = 'catch_up';
  t = now();
  const catchReports = await untilDone(db);
  const last = await db.get('docs', id(first + SINGLE - 1));
  const catchUp = now() - t;
  if (last?.title !== title) throw new Error(`catch-up: ${id(first + SINGLE - 1)} has title ${last?.title}`);
  const changed = (await db.query('docs', {})).filter((d) => d.title === title).length;
  if (changed !== SINGLE) throw new Error(`catch-up: ${changed} rewritten documents, not ${SINGLE}`);
  await db.close();
  await T.deleteReplica(name);
  return { initial_sync_ms: initial, catch_up_ms: catchUp, initial_reports: initialReports, catch_up_reports: catchReports, progress: marks };
}

/**
 * The physical limit for syncing 10,000 documents (DESIGN §10): raw IndexedDB writing the
 * same documents into a fresh database (the same object store and two indexes as the raw
 * adapter), one readwrite transaction per 1,000 as a well-written raw app would, timed from
 * opening (creating) the database to the last transaction's commit. Tidemark's initial sync
 * and reset + migrate are divided by this, measured in the same run.
 */
async function rawLimit(name) {
  const R = await load('raw');
  await R.destroy(name).catch(() => {});
  const batches = [];
  for (let b = 0; b < N / BATCH; b++) batches.push(Array.from({ length: BATCH }, (_, i) => doc(b * BATCH + i)));
  const t = now();
  const db = await R.open(name);
  const opened = now() - t;
  for (const batch of batches) await R.putBatch(db, batch);
  const ms = now() - t;
  expectRange(await R.range(db, 'k0', ...RANGE), 'raw limit query');
  await R.close(db);
  await R.destroy(name);
  return { limit_ms: ms, open_ms: opened };
}

/**
 * PouchDB replication from a CouchDB-API server (pouchdb-server): a fresh browser PouchDB
 * replicates the server's 10,000 documents to completion, then a get of the last document
 * proves they are readable (`replicate_ms`, the time Tidemark's initial sync is compared
 * with). batch_size 1,000 (PouchDB's default is 100): the chunk size Tidemark's snapshot
 * uses, and faster for PouchDB than its default. Then, timed separately, the first indexed query a W3-style read needs: creating the
 * [kind, n] index and finding 1,000 documents on it (`index_query_ms`).
 */
async function pouchReplicate(remote, name) {
  const P = await load('pouchdb');
  await P.destroy(name).catch(() => {});
  let t = now();
  const local = new P.PouchDB(name, { auto_compaction: false });
  const r = await P.PouchDB.replicate(remote, local, { batch_size: BATCH });
  if (!r.ok || r.docs_written !== N) throw new Error(`PouchDB replication: ok ${r.ok}, ${r.docs_written} documents written, not ${N}`);
  const last = await local.get(id(N - 1));
  const replicate = now() - t;
  if (last.title !== doc(N - 1).title) throw new Error(`PouchDB replication: ${id(N - 1)} has title ${last.title}`);
  t = now();
  await local.createIndex({ index: { fields: ['kind', 'n'], ddoc: 'kindN', name: 'kindN' } });
  expectRange(await P.range(local, 'k0', ...RANGE), 'PouchDB replicated query');
  const query = now() - t;
  const info = await local.info();
  await local.destroy();
  if (info.doc_count < N) throw new Error(`PouchDB replication: ${info.doc_count} documents, not ${N}`);
  return { replicate_ms: replicate, index_query_ms: query, docs_read: r.docs_read, docs_written: r.docs_written };
}

// Reset + migrate (DESIGN §6): the server holds data written under schema version 1; a
// replica at version 2 (history [v1], a migration to 2) with unsynced writes of its own
// syncs, gets a snapshot of older-version data, and must migrate it and keep its writes.
const V2 = { version: 2, collections: SCHEMA.collections };
const MIGRATIONS = { 2: (d) => ({ ...d, migrated: true }) };
const LOCAL = 10;

async function migrateSeedN(url, library, n) {
  const T = await load('tidemark');
  const name = `mig-writer-${library}`;
  await T.deleteReplica(name).catch(() => {});
  const db = await T.openReplica({ name, schema: SCHEMA, sync: { url, library } });
  for (let b = 0; b < n; b += BATCH) await db.putMany('docs', Array.from({ length: Math.min(BATCH, n - b) }, (_, i) => doc(b + i)));
  await untilDone(db);
  await db.close();
  await T.deleteReplica(name);
}

/** Opens a v2 replica with unsynced writes, syncs it, and checks the outcome. */
async function migrateOnce(url, library, name, n) {
  const T = await load('tidemark');
  await T.deleteReplica(name).catch(() => {});
  const sync = { url, library };
  const db = await T.openReplica({ name, schema: V2, history: [SCHEMA], migrations: MIGRATIONS, sync });
  try {
    await db.putMany('docs', Array.from({ length: LOCAL }, (_, i) => ({ ...doc(N + i), id: `local-${i}`, kind: 'local' })));
    // bench/profile.mjs marks the start here (to place the progress events in its profile).
    window.beforeTimed?.();
    const t = now();
    const progress = [];
    db.on('progress', (p) => progress.push({ ms: now() - t, ...p }));
    const reports = await untilDone(db);
    const first = await db.query('docs', { where: { kind: 'k0', n: { gte: RANGE[0], lt: RANGE[1] } } });
    const ms = now() - t;
    // bench/profile.mjs stops its profiler here: what follows is not timed.
    if (window.afterTimed) await window.afterTimed();
    const all = await db.query('docs', {});
    const migrated = all.filter((d) => d.id.startsWith('doc-') && d.migrated === true).length;
    const local = all.filter((d) => d.id.startsWith('local-')).length;
    const again = await db.syncNow();
    const problems = [];
    if (!reports.some((r) => r.reset)) problems.push('no sync report says reset');
    if (migrated !== n) problems.push(`${migrated} of ${n} documents migrated`);
    if (local !== LOCAL) problems.push(`${local} of ${LOCAL} unsynced local writes kept`);
    if (again.reset) problems.push('reset again on the next sync');
    if (db.status().schemaVersion !== 2) problems.push(`schemaVersion ${db.status().schemaVersion}`);
    return { ms, rows: first.length, problems, reports, progress, again };
  } finally {
    await db.close();
    await T.deleteReplica(name).catch(() => {});
  }
}

async function migrateProbe(url, library) {
  try {
    await migrateSeedN(url, library, 2 * BATCH);
    const r = await migrateOnce(url, library, 'mig-probe', 2 * BATCH);
    return r.problems.length ? { ok: false, reason: r.problems.join('; ') } : { ok: true };
  } catch (e) {
    return { ok: false, reason: `${e.code ?? e.name}: ${e.message}`.slice(0, 300) };
  }
}

const migrateSeed = (url, library) => migrateSeedN(url, library, N);

async function migrateRun(url, library, run) {
  const r = await migrateOnce(url, library, `mig-reader-${run}`, N);
  if (r.problems.length) throw new Error(`reset + migrate: ${r.problems.join('; ')}`);
  if (r.rows !== 1000) throw new Error(`reset + migrate: first query returned ${r.rows} rows`);
  return { reset_migrate_ms: r.ms, reports: r.reports, progress: r.progress, next_round: r.again };
}

// ---- Poke latency: two live replicas of one library, in two pages ----

/** Wall-clock ms with sub-ms precision, comparable across pages of one browser. */
const wall = () => performance.timeOrigin + performance.now();

/** Opens replica `name` with live sync; arrivals of `poke-<i>` are stamped on `change`. */
async function pokeOpen(url, library, name) {
  const T = await load('tidemark');
  await T.deleteReplica(name).catch(() => {});
  const db = await T.openReplica({ name, schema: SCHEMA, sync: { url, library } });
  const seen = new Map();
  window.poke = { db, seen, expect: null };
  db.on('change', async () => {
    const t = wall();
    const i = window.poke.expect;
    if (i !== null && !seen.has(i) && (await db.get('docs', `poke-${i}`))) seen.set(i, t);
  });
  db.connect();
  for (let k = 0; k < 400 && !db.status().online; k++) await sleep(25);
  if (!db.status().online) throw new Error('poke: live sync did not come online');
}

/** Writes `poke-<i>`; returns when the write was made. */
async function pokePut(i) {
  const t = wall();
  await window.poke.db.put('docs', { id: `poke-${i}`, kind: 'poke', n: i, title: 'poke' });
  return t;
}

window.bench = { write, read, destroy, rawLimit, pouchReplicate, syncSeed, syncRun, migrateProbe, migrateSeed, migrateRun, pokeOpen, pokePut };
window.ready = true;
