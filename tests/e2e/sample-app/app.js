// Uses the installed package the way an app would; the test reads `window.result`.
import { openReplica, deleteReplica } from 'tidemark';

const schema = { version: 1, collections: { notes: { primaryKey: 'id', indexes: { byN: 'n' } } } };
const waitFor = async (check, ms = 5000) => {
  const until = Date.now() + ms;
  while (!check()) {
    if (Date.now() > until) throw new Error('timed out waiting for the live query');
    await new Promise((r) => setTimeout(r, 20));
  }
};

try {
  const db = await openReplica({ name: 'sample-app', schema });
  const seen = [];
  const stop = db.subscribe('notes', { where: { n: { gte: 2 } }, orderBy: 'n' }, (docs) => seen.push(docs.map((d) => d.id)));
  await waitFor(() => seen.length >= 1);
  await db.put('notes', { id: 'a', n: 1, text: 'not in the live query' });
  await db.put('notes', { id: 'b', n: 2, text: 'hello' });
  await db.putMany('notes', [{ id: 'c', n: 3 }, { id: 'd', n: 4 }]);
  await db.patch('notes', 'c', { text: 'patched' });
  await waitFor(() => JSON.stringify(seen.at(-1)) === '["b","c","d"]');
  const query = await db.query('notes', { where: { n: { gte: 2 } }, orderBy: { n: 'desc' }, limit: 2 });
  const get = await db.get('notes', 'c');
  stop();
  const before = seen.length;
  await db.put('notes', { id: 'e', n: 5 });
  await new Promise((r) => setTimeout(r, 200));
  const status = db.status();
  await db.close();
  // Reopen: the data survived in IndexedDB.
  const again = await openReplica({ name: 'sample-app', schema });
  const reopened = (await again.query('notes', { orderBy: 'n' })).map((d) => d.id);
  await again.close();
  await deleteReplica('sample-app');
  window.result = { ok: true, seen, query, get, afterStop: seen.length - before, status, reopened };
} catch (e) {
  window.result = { ok: false, error: String(e), code: e.code, stack: e.stack };
}
document.getElementById('out').textContent = JSON.stringify(window.result, null, 2);
