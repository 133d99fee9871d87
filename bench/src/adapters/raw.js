// Raw IndexedDB: the limit every library is measured against. One object store keyed by
// `id` with the two indexes; one transaction per batch; getAll on an index range.
const req = (r) => new Promise((ok, fail) => { r.onsuccess = () => ok(r.result); r.onerror = () => fail(r.error); });
const done = (tx) => new Promise((ok, fail) => {
  tx.oncomplete = () => ok(); tx.onerror = () => fail(tx.error); tx.onabort = () => fail(tx.error ?? new Error('aborted'));
});

export const label = 'raw IndexedDB';
export const version = '';

export async function open(name) {
  const r = indexedDB.open(name, 1);
  r.onupgradeneeded = () => {
    const s = r.result.createObjectStore('docs', { keyPath: 'id' });
    s.createIndex('kind', 'kind');
    s.createIndex('kindN', ['kind', 'n']);
  };
  return req(r);
}

export const prepare = (docs) => docs;

export async function putBatch(db, docs) {
  const tx = db.transaction('docs', 'readwrite');
  const s = tx.objectStore('docs');
  for (const d of docs) s.put(d);
  await done(tx);
}

export function range(db, kind, lo, hi) {
  const tx = db.transaction('docs');
  return req(tx.objectStore('docs').index('kindN').getAll(IDBKeyRange.bound([kind, lo], [kind, hi], false, true)));
}

export function get(db, id) {
  return req(db.transaction('docs').objectStore('docs').get(id));
}

export async function put(db, doc) {
  const tx = db.transaction('docs', 'readwrite');
  tx.objectStore('docs').put(doc);
  await done(tx);
}

export async function close(db) { db.close(); }

export async function destroy(name) {
  await req(indexedDB.deleteDatabase(name));
}
