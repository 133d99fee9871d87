export { createRxDatabase, removeRxDatabase } from 'rxdb';
export { getRxStorageDexie } from 'rxdb/plugins/storage-dexie';
