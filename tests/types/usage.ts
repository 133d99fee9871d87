// Compiled with `tsc --noEmit --strict` by tests/e2e/types.test.mjs: the package's
// declarations must accept every documented use and reject misuse.
import { openReplica, deleteReplica, type Doc, type MigrationContext, type SyncReport, type TidemarkError } from 'tidemark';

const v1 = { version: 1, collections: { todos: { primaryKey: 'id' } } };

async function main(): Promise<void> {
  const db = await openReplica({
    name: 'app',
    schema: { version: 2, collections: { todos: { primaryKey: 'id', indexes: { byDone: 'done', byListDate: ['list', 'createdAt'] }, defaults: { list: 'inbox' } } } },
    history: [v1],
    migrations: { 2: (doc: Doc) => ({ ...doc, list: doc.list ?? 'inbox' }) },
    sync: { url: 'ws://127.0.0.1:8787/v1/sync', library: 'demo', perDiff: 100, maxDiffs: 3 },
    onProgress: ({ done, total }) => console.log(done / total),
  });
  await db.put('todos', { id: 'a', title: 'Milk', done: false, list: 'inbox', createdAt: 1 });
  await db.putMany('todos', [{ id: 'b' }]);
  await db.patch('todos', 'a', { done: true, 'meta.by': 'me' });
  const one: Doc | undefined = await db.get('todos', 'a');
  const docs: Doc[] = await db.query('todos', { where: { list: 'inbox', createdAt: { gte: 10, lt: 20 } }, orderBy: { createdAt: 'desc' }, limit: 5 });
  await db.query('todos', { where: { title: { startsWith: 'Mi' } }, orderBy: 'createdAt' });
  const stop: () => void = db.subscribe('todos', { where: { done: false } }, (live: Doc[]) => live.length);
  stop();
  const report: SyncReport = await db.syncNow();
  const capped: boolean = report.capped || report.reset || report.snapshot;
  db.on('progress', ({ direction, done, total }) => `${direction} ${done}/${total}`);
  db.on('error', (e: TidemarkError) => e.code === 'SYNC_CONNECTION');
  // The server's codes a refusal keeps are codes too.
  db.on('error', (e: TidemarkError) => e.code === 'SYNC_TOKEN_EXPIRED' || e.code === 'RATE_LIMITED' || e.code === 'FRAME_TOO_LARGE');
  db.on('futureVersion', ({ version }) => version);
  const off = db.on('sync', (r) => r.sent + r.received);
  off();
  // A step that reads other documents declares `ctx` (DESIGN §6).
  const tasks = await openReplica({
    name: 'tasks',
    schema: { version: 2, collections: { tasks: { primaryKey: 'id' } } },
    history: [{ version: 1, collections: { tasks: { primaryKey: 'id' }, tags: { primaryKey: 'id' } } }],
    migrations: {
      2: ({ tagId, ...task }: Doc, _collection: string, ctx: MigrationContext) => ({
        ...task,
        label: ctx.get('tags', String(tagId))?.label ?? null,
        tagsThen: ctx.query('tags', { where: { label: { startsWith: 'a' } } }).length,
      }),
    },
  });
  await tasks.close();
  db.connect();
  db.disconnect();
  const s = db.status();
  const n: number = s.maxRow + s.pending + (s.incoming['x'] ?? 0);
  const rows = await db.recentOps(5);
  const kind: 'put' | 'patch' | 'delete' = rows[0].op.kind;
  await db.delete('todos', 'a');
  await db.close();
  await deleteReplica('app');
  console.log(one, docs, capped, n, kind);

  // @ts-expect-error unknown event names are refused
  db.on('nope', () => {});
  // @ts-expect-error orderBy directions are 'asc' | 'desc'
  await db.query('todos', { orderBy: { createdAt: 'up' } });
  // @ts-expect-error the schema is required
  await openReplica({ name: 'x' });
  // @ts-expect-error a step returns the document or null: undefined (no `return`) is MIGRATION_FAILED
  await openReplica({ name: 'x', schema: { version: 2, collections: { todos: { primaryKey: 'id' } } }, history: [v1], migrations: { 2: (doc: Doc) => { doc.list = 'inbox'; } } });
}

void main;
