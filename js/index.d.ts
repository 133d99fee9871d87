// Type declarations for the `tidemark` package (DESIGN §7).
//
// Documents are typed per collection. Give the types with `defineSchema<{ todos: Todo }>(…)`
// (field types, checked index fields and primary keys), or write the schema inline / `as
// const` (collection names and primary keys only). Either way `openReplica` returns a
// `Replica<Docs>` whose methods know each collection's document type.

/** A JSON value, as documents hold them. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
/** A document of a collection declared without field types: JSON fields. */
export type Doc = { [key: string]: Json };

// ---------------------------------------------------------------- field paths

type Primitive = string | number | boolean | null;
type Prev = [never, 0, 1, 2, 3, 4];

/**
 * Every field a query or patch may name in a document type `T`: top-level fields and dotted
 * paths into nested objects (up to five levels). `string` when `T` has an index signature.
 */
export type FieldPath<T, D extends number = 5> = [D] extends [never]
  ? never
  : T extends Primitive | readonly unknown[]
    ? never
    : string extends keyof T
      ? string
      : {
          [K in keyof T & string]-?: K | (NonNullable<T[K]> extends Primitive | readonly unknown[]
            ? never
            : `${K}.${FieldPath<NonNullable<T[K]>, Prev[D]>}`);
        }[keyof T & string];

/** The type of the field at `P` (a `FieldPath<T>`). */
export type FieldType<T, P extends string> = string extends keyof T
  ? Json
  : P extends keyof T
    ? T[P]
    : P extends `${infer K}.${infer Rest}`
      ? K extends keyof T
        ? FieldType<NonNullable<T[K]>, Rest>
        : never
      : never;

/** Fields of `T` that hold strings: what may be a primary key. */
type StringField<T> = string extends keyof T ? string : { [K in keyof T & string]-?: T[K] extends string ? K : never }[keyof T & string];

/**
 * What `put` accepts for a document type: the type itself — or, for a collection without
 * field types, any object (an app's `interface` has no index signature; values are checked
 * when written: anything that is not JSON is refused with `NOT_JSON`).
 */
export type DocInput<T> = string extends keyof T ? { readonly [key: string]: any } : T;

// ---------------------------------------------------------------- schemas

export interface CollectionSchema {
  /** The top-level field that holds each document's string id. */
  primaryKey: string;
  /** Index name → one field path or several (compound). Index names are identifiers. */
  indexes?: { readonly [name: string]: string | readonly string[] };
  /** Values for top-level fields a document lacks when it is migrated to this version. */
  defaults?: { readonly [field: string]: Json };
  /**
   * Keep the losing values of concurrent writes to one field (neither writer saw the
   * other's), readable with `db.conflicts` and settled with `db.resolve`. Default false.
   */
  conflicts?: boolean;
}

export interface Schema {
  /** Integer >= 1; every op is stamped with it. */
  version: number;
  collections: { readonly [name: string]: CollectionSchema };
}

/** A collection's schema, checked against its document type `T`. */
export type CollectionSchemaOf<T> = {
  primaryKey: StringField<T>;
  indexes?: { readonly [name: string]: FieldPath<T> | readonly FieldPath<T>[] };
  defaults?: { readonly [K in keyof T]?: Scalar<T[K]> };
  conflicts?: boolean;
};

declare const docTypes: unique symbol;

/** The shape `defineSchema<D>` checks: every collection of `D`, each against its type. */
export type SchemaOf<D> = {
  version: number;
  collections: { readonly [C in keyof D]: CollectionSchemaOf<D[C]> };
};

/** A schema that carries its collections' document types (what `defineSchema` returns). */
export type TypedSchema<D> = SchemaOf<D> & {
  /** Type-level only: the document type of every collection. */
  readonly [docTypes]: D;
};

/**
 * Refuses document types that cannot be stored: a field holding a `Date`, `Map`, `Set`,
 * class instance, function or `bigint` becomes `never`, so the doc map fails to compile
 * (at run time such values are refused with `NOT_JSON`).
 */
export type JsonChecked<T> = T extends Primitive | undefined
  ? T
  : T extends (...args: any[]) => any
    ? never
    : T extends Date | Map<any, any> | Set<any> | RegExp | ArrayBuffer | ArrayBufferView | Promise<any>
      ? never
      : T extends readonly (infer U)[]
        ? readonly JsonChecked<U>[]
        : T extends object
          ? { [K in keyof T]: JsonChecked<T[K]> }
          : never;

/**
 * Declares a schema with document types: `defineSchema<{ todos: Todo }>({ version: 1,
 * collections: { todos: { primaryKey: 'id', indexes: { byDone: 'done' } } } })`. Collection
 * names, primary keys (string fields), index fields and defaults are checked against the
 * types; at run time it returns `schema` unchanged.
 */
export declare function defineSchema<D extends { [C in keyof D]: JsonChecked<D[C]> }>(schema: SchemaOf<D>): TypedSchema<D>;

/** The document type of a collection declared without types: its primary key is a string. */
type UntypedDoc<C> = C extends { primaryKey: infer K extends string } ? (string extends K ? Doc : { [P in K]: string } & Doc) : Doc;

/** Collection name → document type, from a schema (typed by `defineSchema`, or not). */
export type DocsOf<S> = S extends { readonly [docTypes]: infer D }
  ? D
  : S extends { collections: infer C }
    ? { -readonly [K in keyof C & string]: UntypedDoc<C[K]> }
    : { [collection: string]: Doc };

// ---------------------------------------------------------------- options

export interface SyncOptions {
  url: string;
  library: string;
  /**
   * A token, or a function returning a (promise of a) token: called on every connect and
   * when the server says the token expired. An expired static token stops live sync
   * (an `error` event with code `SYNC_TOKEN_EXPIRED`).
   */
  token?: string | (() => string | Promise<string>);
  perDiff?: number;
  maxDiffs?: number;
}

/**
 * What a migration step may read besides the document it migrates: the replica's data as
 * it stood before the step (synchronously). Declare it as the third parameter only when
 * the step reads through it: a function declared `(doc, collection)` gets none, and a
 * reset then migrates its documents as they arrive.
 */
export interface MigrationContext {
  get(collection: string, id: string): Doc | undefined;
  query(collection: string, query?: Query<any>): Doc[];
}

export interface OpenOptions<S extends Schema = Schema> {
  /** IndexedDB name prefix: replicas with different names never share data. */
  name: string;
  schema: S;
  /** Older schemas: every version the stored data (or a lagging peer) may be at. */
  history?: readonly Schema[];
  /**
   * One entry per version step: `migrations[v]` turns a document of version v−1 into
   * version v (return `null` to drop it; returning `undefined`, a forgotten `return`, is
   * `MIGRATION_FAILED` and changes nothing); `null` declares a step whose changes are all
   * declarative (indexes, added or dropped collections, `defaults`). Functions must be
   * synchronous and deterministic: every replica migrating the same document must compute
   * the same result.
   */
  migrations?: { [version: number]: ((doc: Doc, collection: string, ctx: MigrationContext) => DocInput<Doc> | null) | null };
  sync?: SyncOptions;
  /** Progress of a migration run while opening (data stored under an older version). */
  onProgress?: (p: { phase: 'upgrade'; done: number; total: number }) => void;
  /**
   * How far ahead of this device's clock a received op's stamp may be, in milliseconds
   * (default 24 h). A batch holding a stamp further ahead is refused with `SYNC_PROTOCOL`
   * and nothing of it is stored, so one peer's bad clock cannot make later local writes lose.
   */
  maxClockSkew?: number;
}

// ---------------------------------------------------------------- queries

type Scalar<V> = Exclude<V, undefined>;
type Orderable<V> = Extract<Scalar<V>, number | string>;

/** Operators on one field whose values have type `V`. */
export interface Operators<V = Json> {
  eq?: Scalar<V>;
  ne?: Scalar<V>;
  /** One of these values. */
  in?: Scalar<V>[];
  gt?: Orderable<V>;
  gte?: Orderable<V>;
  lt?: Orderable<V>;
  lte?: Orderable<V>;
  /** Only for string fields. */
  startsWith?: Extract<Scalar<V>, string> extends never ? never : string;
}

/**
 * A condition on one field: a plain value (not an object) means equality; an object is
 * operators only (an unknown one is `INVALID_QUERY`; equality with an object is `{ eq }`).
 */
export type Condition<V = Json> = Scalar<V> | Operators<V>;

export interface Query<T = Doc> {
  where?: { [P in FieldPath<T>]?: Condition<FieldType<T, P>> };
  /** A field (ascending) or `{ field: 'asc' | 'desc' }`. */
  orderBy?: FieldPath<T> | { [P in FieldPath<T>]?: 'asc' | 'desc' };
  limit?: number;
}

/** Some fields of a document of type `T`, by top-level name or dotted path. */
export type Patch<T> = { [P in FieldPath<T>]?: Scalar<FieldType<T, P>> };

// ---------------------------------------------------------------- status and reports

/** `db.storage()`: the browser's estimate for the whole origin; `null` where it does not tell. */
export interface StorageReport {
  /** Bytes stored by this origin (every replica of the app, and anything else it keeps). */
  usage: number | null;
  /** Bytes the origin may store. */
  quota: number | null;
  /** Whether the data is exempt from eviction under storage pressure (asked for at open). */
  persisted: boolean | null;
}

export interface Status {
  dbId: string;
  schemaVersion: number;
  maxRow: number;
  incoming: { [dbId: string]: number };
  outgoing: { [dbId: string]: number };
  /** Connected to the server: this tab, or the tab of this replica that runs live sync. */
  online: boolean;
  pending: number;
  /** A reset began and has not completed yet; the next sync that receives a snapshot completes it. */
  resetPending: boolean;
  /** Whether this tab runs live sync for the replica (one tab per replica does). */
  leader?: boolean;
  /**
   * Received ops this replica could not apply and set aside (most recent last, at most 100
   * since it opened); absent when there are none. Each also fired an `error` event with
   * code `OP_QUARANTINED`. The sync point moved past them and every other op applied.
   */
  quarantined?: Quarantined[];
}

/** A received op set aside because this replica cannot apply it. */
export interface Quarantined {
  collection: string;
  id: string;
  origin: string;
  originRow: number;
  /** The rule it broke, e.g. `MISSING_PRIMARY_KEY` (its id contradicts its primary key). */
  code: string;
  reason: string;
}

/** One op-log row, as `recentOps` returns it. */
export interface LogRow {
  row: number;
  op: {
    origin: string;
    originRow: number;
    ts: string;
    schemaVersion: number;
    collection: string;
    id: string;
    kind: 'put' | 'patch' | 'delete';
    fields?: { [key: string]: Json };
  };
  /** The peer the row came from; absent for local writes. */
  from?: string;
}

/** Every error Tidemark throws is an `Error` with one of these codes. */
export type ErrorCode =
  | 'INVALID_OPTIONS'
  | 'INVALID_SCHEMA'
  | 'SCHEMA_MISMATCH'
  | 'UNKNOWN_COLLECTION'
  | 'MISSING_PRIMARY_KEY'
  | 'INVALID_DOCUMENT'
  | 'NOT_JSON'
  | 'INVALID_PATCH'
  | 'INVALID_ARGUMENT'
  | 'NOT_FOUND'
  | 'INVALID_QUERY'
  | 'QUOTA_EXCEEDED'
  | 'CLOSED'
  | 'CORRUPT'
  | 'STORAGE_ERROR'
  | 'MISSING_SCHEMA'
  | 'MISSING_MIGRATION'
  | 'VERSION_TOO_OLD'
  | 'MIGRATION_FAILED'
  /** `connect()` or `syncNow()` on a replica opened without `sync`. */
  | 'SYNC_NOT_CONFIGURED'
  | 'SYNC_CONNECTION'
  | 'SYNC_PROTOCOL'
  /** The server refused with a code outside this list. */
  | 'SYNC_REFUSED'
  /** A received op could not be applied and was set aside: see `status().quarantined`. */
  | 'OP_QUARANTINED'
  // The server's own codes, which a refusal or fault received from it keeps (as `error`
  // events of sync, and from `syncNow()`).
  /** The sync token is missing or invalid. */
  | 'UNAUTHORIZED'
  /** The token does not grant this library. */
  | 'FORBIDDEN'
  /** The token expired (at `hello` or on a live connection); a `sync.token` function is called again. */
  | 'SYNC_TOKEN_EXPIRED'
  | 'BAD_LIBRARY'
  | 'UNKNOWN_LIBRARY'
  | 'TIMEOUT'
  /** A frame over the server's limit: send smaller batches (`perDiff`). */
  | 'FRAME_TOO_LARGE'
  | 'INTERNAL'
  | 'DISK_FULL'
  /** Over the server's per-client connection limit; retried later. */
  | 'TOO_MANY_CONNECTIONS'
  /** Over the server's per-client pass or snapshot rate; retried later. */
  | 'RATE_LIMITED'
  /** The wasm module could not be fetched or instantiated; the message names the URL. Retry with `load()`. */
  | 'WASM_LOAD_FAILED'
  /** No IndexedDB or WebAssembly here (Node, server-side rendering): open replicas in a browser or worker. */
  | 'UNSUPPORTED_ENVIRONMENT';

export interface TidemarkError extends Error {
  name: 'TidemarkError';
  code: ErrorCode;
}

/** What one pass did. `start`/`end` are points in the sender's row space. */
export interface PassReport {
  sent: number;
  received: number;
  batches: number;
  capped: boolean;
  snapshot: boolean;
  reset: boolean;
  /** The newest schema version of ops received but not applied (newer than the app's). */
  futureVersion?: number;
  start: number;
  end: number;
  /** The other side's max row, as it said in the pass. */
  peerMaxRow: number;
  /** A received snapshot was staged in a new generation and swapped in: what that did. */
  rebuilt?: ResetReport;
}

/** What a reset did: the `reset` event carries these beside the round's report. */
export interface ResetReport {
  /** Documents the snapshot carried. */
  documents: number;
  /** Documents migrated forward from an older schema version. */
  migrated: number;
  /** Documents this replica held before, merged in (its unsynced writes among them). */
  kept: number;
  /** The oldest schema version among the data received (absent: all current). */
  fromVersion?: number;
}

/** What one `syncNow()` round did. */
export interface SyncReport {
  /** Rows (or snapshot documents) pushed to the server. */
  sent: number;
  /** Rows (or snapshot documents) pulled from the server. */
  received: number;
  batches: number;
  /** A pass stopped at `maxDiffs`: call `syncNow()` again to continue. */
  capped: boolean;
  /** The server answered with a snapshot instead of rows. */
  snapshot: boolean;
  /** The server answered with a snapshot of older-version data, migrated on arrival. */
  reset: boolean;
  /** The newest schema version of ops pulled but not applied (newer than the app's; `futureVersion` fires too). */
  futureVersion?: number;
  push: PassReport;
  pull: PassReport;
}

/** Progress of a long pass: rows (or snapshot documents) moved so far, of `total`. */
export interface Progress {
  direction: 'push' | 'pull';
  /** `rows` and `snapshot` while data moves; a reset adds `copy`, `merge`, `migrate` and `swap`. */
  phase: 'rows' | 'snapshot' | 'copy' | 'merge' | 'migrate' | 'swap';
  done: number;
  total: number;
}

export interface EventMap {
  sync: SyncReport;
  progress: Progress;
  reset: SyncReport & ResetReport;
  error: TidemarkError;
  futureVersion: { version: number; current: number };
  online: boolean;
  /** Collections a committed transaction (in this tab or another) changed. */
  change: { collections: string[] };
}

/** A live query or document this page watches (`subscribe` / `subscribeDoc`). */
export type LiveQuery = { collection: string; query?: Query<any> } | { collection: string; id: string };

// ---------------------------------------------------------------- the replica

/** A replica open in this page. `D` maps each collection to its document type. */
export declare class Replica<D = { [collection: string]: Doc }> {
  /** The replica's name (its IndexedDB name prefix). */
  readonly name: string;
  /** Subscribes to an event; returns a function that unsubscribes. */
  on<K extends keyof EventMap>(type: K, handler: (payload: EventMap[K]) => void): () => void;
  off<K extends keyof EventMap>(type: K, handler: (payload: EventMap[K]) => void): void;
  /** One sync round: push local rows, then pull the server's. */
  syncNow(): Promise<SyncReport>;
  /**
   * Live sync with reconnect and exponential backoff. Throws `SYNC_NOT_CONFIGURED` at once
   * (and changes nothing) on a replica opened without `sync`.
   */
  connect(): void;
  disconnect(): void;
  /** Writes a whole document; fields it lacks are removed. */
  put<C extends keyof D & string>(collection: C, doc: DocInput<D[C]>): Promise<void>;
  /** Writes many whole documents in one transaction. */
  putMany<C extends keyof D & string>(collection: C, docs: readonly DocInput<D[C]>[]): Promise<void>;
  /**
   * Sets some fields of an existing document; keys may be dotted paths. A missing or
   * deleted document is `NOT_FOUND`.
   */
  patch<C extends keyof D & string>(collection: C, id: string, fields: Patch<D[C]>): Promise<void>;
  delete<C extends keyof D & string>(collection: C, id: string): Promise<void>;
  /**
   * The losing values of concurrent writes to a document of a `conflicts: true`
   * collection: for each field path written concurrently, the values that lost, newest
   * first (the winner is the document's value). `{}` when there are none.
   */
  conflicts<C extends keyof D & string>(collection: C, id: string): Promise<{ [path: string]: Json[] }>;
  /**
   * Settles conflicts: writes `fields` (like `patch`) as a resolution, which replaces every
   * value the replica has seen at those paths and reaches other replicas ahead of ordinary
   * writes, so none of them shows the settled conflict. `INVALID_ARGUMENT` unless the
   * collection declares `conflicts: true`.
   */
  resolve<C extends keyof D & string>(collection: C, id: string, fields: Patch<D[C]>): Promise<void>;
  /** The document, or `undefined` when it is missing or deleted. */
  get<C extends keyof D & string>(collection: C, id: string): Promise<D[C] | undefined>;
  query<C extends keyof D & string>(collection: C, query?: Query<D[C]>): Promise<D[C][]>;
  /**
   * A live query: `callback` runs at once with the results, then after every change (this
   * tab, other tabs, sync, migrations, resets) that alters them. A failing query calls
   * `onError` (else the 'error' event). Returns an unsubscribe function.
   */
  subscribe<C extends keyof D & string>(
    collection: C,
    query: Query<D[C]> | undefined,
    callback: (docs: D[C][]) => void,
    onError?: (error: TidemarkError) => void,
  ): () => void;
  /** Like `subscribe`, for one document: `callback(doc)`, `undefined` when missing or deleted. */
  subscribeDoc<C extends keyof D & string>(
    collection: C,
    id: string,
    callback: (doc: D[C] | undefined) => void,
    onError?: (error: TidemarkError) => void,
  ): () => void;
  /** The live queries this page runs on the replica. */
  readonly liveQueries: LiveQuery[];
  /** The newest op-log rows, newest first. */
  recentOps(limit?: number): Promise<LogRow[]>;
  status(): Status;
  /** The browser's storage for this origin: usage, quota, and whether it is persistent. */
  storage(): Promise<StorageReport>;
  close(): Promise<void>;
}

/**
 * Opens (or creates) a replica. Its collections' document types come from the schema:
 * `defineSchema<Docs>(…)` for field types, or a literal schema for names only.
 */
export declare function openReplica<const S extends Schema>(options: OpenOptions<S>): Promise<Replica<DocsOf<S>>>;
/** Deletes every IndexedDB database of the replica `name`. Close it first. */
export declare function deleteReplica(name: string): Promise<void>;
/**
 * Loads the wasm module ahead of time (optional: `openReplica` does it on first use). With
 * `source` — the URL of `tidemark_bg.wasm`, its bytes or a compiled `WebAssembly.Module` —
 * it loads that instead of the packaged file; call it before the first `openReplica`, since
 * a loaded module cannot be replaced (a different source then rejects with
 * `INVALID_ARGUMENT`). Failures reject with `WASM_LOAD_FAILED` and can be retried.
 */
export declare function load(source?: string | URL | BufferSource | WebAssembly.Module): Promise<void>;
