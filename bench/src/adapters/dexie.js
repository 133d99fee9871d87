// Dexie 4: bulkPut, where('[kind+n]').between(), get, put.
import Dexie from 'dexie';

export const label = 'Dexie';
export const version = Dexie.semVer;

export async function open(name) {
  const db = new Dexie(name);
  db.version(1).stores({ docs: 'id, kind, [kind+n]' });
  await db.open();
  return db;
}
export const prepare = (docs) => docs;
export const putBatch = (db, docs) => db.docs.bulkPut(docs);
export const range = (db, kind, lo, hi) => db.docs.where('[kind+n]').between([kind, lo], [kind, hi], true, false).toArray();
export const get = (db, id) => db.docs.get(id);
export const put = (db, doc) => db.docs.put(doc);
export async function close(db) { db.close(); }
export const destroy = (name) => Dexie.delete(name);
