// RxDB 17 with its free Dexie storage: bulkInsert, find() on a [kind, n] index,
// findOne(id), insert.
import { createRxDatabase, removeRxDatabase, RXDB_VERSION } from 'rxdb';
import { getRxStorageDexie } from 'rxdb/plugins/storage-dexie';

export const label = 'RxDB (Dexie storage)';
export const version = RXDB_VERSION;

const schema = {
  version: 0,
  primaryKey: 'id',
  type: 'object',
  properties: {
    id: { type: 'string', maxLength: 16 },
    kind: { type: 'string', maxLength: 8 },
    n: { type: 'number', minimum: 0, maximum: 1000, multipleOf: 1 },
    title: { type: 'string' },
    body: { type: 'string' },
    done: { type: 'boolean' },
    createdAt: { type: 'number' },
  },
  required: ['id', 'kind', 'n'],
  indexes: ['kind', ['kind', 'n']],
};

export async function open(name) {
  const db = await createRxDatabase({ name, storage: getRxStorageDexie(), multiInstance: false, eventReduce: true });
  await db.addCollections({ docs: { schema } });
  return db;
}
export const prepare = (docs) => docs;
export async function putBatch(db, docs) {
  const res = await db.docs.bulkInsert(docs);
  if (res.error.length) throw new Error(`bulkInsert: ${JSON.stringify(res.error[0]).slice(0, 300)}`);
}
export const range = (db, kind, lo, hi) => db.docs.find({ selector: { kind, n: { $gte: lo, $lt: hi } } }).exec();
export const get = (db, id) => db.docs.findOne(id).exec();
export const put = (db, doc) => db.docs.insert(doc);
export const close = (db) => db.close();
export const destroy = (name) => removeRxDatabase(name, getRxStorageDexie());
