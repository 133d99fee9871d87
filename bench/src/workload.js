// The DESIGN §10 workload, shared by every library: 10,000 documents of ~200 bytes of
// JSON, secondary indexes `kind` and `[kind, n]`.
export const N = 10_000;
export const BATCH = 1_000;
export const SINGLE = 1_000;       // W2 writes and W4 gets
export const KINDS = 5;            // 2,000 documents per kind
export const RANGE = [0, 500];     // n in [0, 500) within one kind: exactly 1,000 documents

/** Document `i`: the same bytes for every library (PouchDB renames `id` to `_id`). */
export function doc(i) {
  return {
    id: 'doc-' + String(i).padStart(5, '0'),
    kind: 'k' + (i % KINDS),
    n: (i * 7919) % 1000,
    title: 'Lorem ipsum dolor sit amet ' + i,
    body: 'consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et dolore',
    done: i % 2 === 0,
    createdAt: 1700000000000 + i,
  };
}

export const id = (i) => 'doc-' + String(i).padStart(5, '0');

/** The Tidemark schema (version 1); the same two indexes every peer declares. */
export const SCHEMA = {
  version: 1,
  collections: { docs: { primaryKey: 'id', indexes: { byKind: 'kind', byKindN: ['kind', 'n'] } } },
};
