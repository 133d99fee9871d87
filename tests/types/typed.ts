// Typed documents (compiled strict by tests/e2e/types.test.mjs): document types flow from
// the schema into every method and hook, an app's interfaces are accepted, and misuse —
// a wrong collection, field, value type or schema — does not compile.
import { defineSchema, openReplica, type Replica } from 'tidemark';
import { useDoc, useQuery, useSyncStatus } from 'tidemark/react';
import { peerName, type TidemarkDevtools } from 'tidemark/devtools';
import wasmUrl from 'tidemark/tidemark_bg.wasm';

// An app's own types, declared as interfaces (no index signatures).
interface Todo {
  id: string;
  title: string;
  done: boolean;
  list: string;
  createdAt: number;
  due?: number;
  meta?: { by: string; tags: string[] };
}
interface Note {
  key: string;
  text: string;
}

const schema = defineSchema<{ todos: Todo; notes: Note }>({
  version: 1,
  collections: {
    todos: { primaryKey: 'id', indexes: { byDone: 'done', byListDate: ['list', 'createdAt'], byAuthor: 'meta.by' } },
    notes: { primaryKey: 'key' },
  },
});

async function typed(): Promise<void> {
  const db = await openReplica({ name: 'typed', schema });
  const todo: Todo = { id: 'a', title: 'Milk', done: false, list: 'inbox', createdAt: 1 };
  await db.put('todos', todo);
  await db.putMany('todos', [todo, { ...todo, id: 'b' }]);
  await db.put('notes', { key: 'n', text: 'hello' });
  await db.patch('todos', 'a', { done: true, 'meta.by': 'me', due: 5 });

  // Results are typed: no casts.
  const one: Todo | undefined = await db.get('todos', 'a');
  const open: Todo[] = await db.query('todos', { where: { done: false, createdAt: { gte: 10, lt: 20 } }, orderBy: { createdAt: 'desc' }, limit: 5 });
  const byTitle = await db.query('todos', { where: { title: { startsWith: 'Mi' }, 'meta.by': 'me' }, orderBy: 'createdAt' });
  const titles: string[] = byTitle.map((t) => t.title);
  // Operators on one field combine.
  const some: Todo[] = await db.query('todos', { where: { createdAt: { gte: 0, ne: 15 }, list: { in: ['a', 'b'], ne: 'b', startsWith: 'a' } } });
  const notes: Note[] = await db.query('notes');
  db.subscribe('todos', { where: { list: 'inbox' } }, (live) => live.map((t) => t.done));
  db.subscribeDoc('notes', 'n', (note) => note?.text.toUpperCase());
  console.log(one?.title, open.length, titles, notes, some);
  const { usage, quota, persisted } = await db.storage();
  const free: number | null = usage === null || quota === null ? null : quota - usage;
  const kept: boolean | null = persisted;
  console.log(free, kept);

  // @ts-expect-error a collection the schema does not declare
  await db.put('todoz', todo);
  // @ts-expect-error a collection the schema does not declare
  await db.query('nope');
  // @ts-expect-error a field Todo does not have, in where
  await db.query('todos', { where: { titel: 'Milk' } });
  // @ts-expect-error a field Todo does not have, in orderBy
  await db.query('todos', { orderBy: 'created' });
  // @ts-expect-error a field Todo does not have, in an orderBy object
  await db.query('todos', { orderBy: { created: 'asc' } });
  // @ts-expect-error a value of the wrong type in where
  await db.query('todos', { where: { done: 'yes' } });
  // @ts-expect-error ranges apply to numbers and strings, not booleans
  await db.query('todos', { where: { done: { gt: true } } });
  // @ts-expect-error startsWith applies to strings only
  await db.query('todos', { where: { createdAt: { startsWith: '1' } } });
  // @ts-expect-error a value of the wrong type in patch
  await db.patch('todos', 'a', { done: 'yes' });
  // @ts-expect-error a wrong type at a dotted path in patch
  await db.patch('todos', 'a', { 'meta.by': 3 });
  // @ts-expect-error a field Todo does not have, in patch
  await db.patch('todos', 'a', { colour: 'red' });
  // @ts-expect-error a document of another collection's type
  await db.put('notes', todo);
  // @ts-expect-error a document missing required fields
  await db.put('todos', { id: 'c' });
  // @ts-expect-error query results are Todos, not Notes
  const wrong: Note[] = await db.query('todos');
  console.log(wrong);
}

// The schema is checked against the types.
// @ts-expect-error the primary key must be a string field of the document
defineSchema<{ todos: Todo }>({ version: 1, collections: { todos: { primaryKey: 'done' } } });
// @ts-expect-error an index on a field the document does not have
defineSchema<{ todos: Todo }>({ version: 1, collections: { todos: { primaryKey: 'id', indexes: { byX: 'x' } } } });
// @ts-expect-error every collection of the type needs a schema
defineSchema<{ todos: Todo; notes: Note }>({ version: 1, collections: { todos: { primaryKey: 'id' } } });
// @ts-expect-error documents hold JSON: a Date field is refused (store a number or a string)
defineSchema<{ events: { id: string; at: Date } }>({ version: 1, collections: { events: { primaryKey: 'id' } } });

// Without field types, a literal schema still types collection names and the primary key.
async function untyped(): Promise<void> {
  const db = await openReplica({ name: 'plain', schema: { version: 1, collections: { todos: { primaryKey: 'id' } } } });
  const todo: Todo = { id: 'a', title: 'Milk', done: false, list: 'inbox', createdAt: 1 };
  await db.put('todos', todo); // an interface is accepted
  await db.patch('todos', 'a', { anything: [1, 'two', { three: null }] });
  const docs = await db.query('todos', { where: { anything: 1 } });
  const id: string = docs[0].id;
  const field = docs[0].title; // JSON
  // @ts-expect-error a collection the schema does not declare
  await db.get('todoz', 'a');
  console.log(id, field);
}

// React hooks know the document type from the replica.
function Component(db: Replica<{ todos: Todo; notes: Note }> | null): string {
  const { data, loading, error } = useQuery(db, 'todos', { where: { done: false }, orderBy: 'createdAt' });
  const first: Todo | undefined = data?.[0];
  const note = useDoc(db, 'notes', 'n');
  const text: string | undefined = note.data?.text;
  const sync = useSyncStatus(db);
  const pct: number = sync.progress ? sync.progress.done / sync.progress.total : 1;
  // @ts-expect-error a collection the replica does not have
  useQuery(db, 'todoz');
  // @ts-expect-error a field Todo does not have
  useQuery(db, 'todos', { where: { titel: 'x' } });
  return `${loading} ${error?.code} ${first?.title} ${text} ${pct} ${sync.online} ${sync.pending}`;
}

// Devtools and the wasm export.
const el: TidemarkDevtools = document.createElement('tidemark-devtools');
el.db = null;
el.peerNames = { abc: 'server' };
const label: string = peerName('abc', { dbId: 'x', schemaVersion: 1, maxRow: 0, incoming: {}, outgoing: {}, online: false, pending: 0, resetPending: false });
const url: string = wasmUrl;

void typed;
void untyped;
void Component;
console.log(label, url);
