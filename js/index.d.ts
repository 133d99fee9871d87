// Type declarations for the `tidemark` package (DESIGN §7).

/** A JSON value, as documents hold them. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
/** A document: a JSON object with a string primary key. */
export type Doc = { [key: string]: Json };

export interface CollectionSchema {
  /** The top-level field that holds each document's string id. */
  primaryKey: string;
  /** Index name → one field path or several (compound). Index names are identifiers. */
  indexes?: { [name: string]: string | string[] };
  /** Values for top-level fields a document lacks when it is migrated to this version. */
  defaults?: { [field: string]: Json };
}

export interface Schema {
  /** Integer >= 1; every op is stamped with it. */
  version: number;
  collections: { [name: string]: CollectionSchema };
}

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

export interface OpenOptions {
  /** IndexedDB name prefix: replicas with different names never share data. */
  name: string;
  schema: Schema;
  /** Older schemas: every version the stored data (or a lagging peer) may be at. */
  history?: Schema[];
  /**
   * One entry per version step: `migrations[v]` turns a document of version v−1 into
   * version v (return `null` to drop it); `null` declares a step whose changes are all
   * declarative (indexes, added or dropped collections, `defaults`). Functions must be
   * synchronous and deterministic: every replica migrating the same document must compute
   * the same result.
   */
  migrations?: { [version: number]: ((doc: Doc, collection: string) => Doc | null) | null };
  sync?: SyncOptions;
  /** Progress of a migration run while opening (data stored under an older version). */
  onProgress?: (p: { phase: 'upgrade'; done: number; total: number }) => void;
}

/**
 * A condition on one field: a plain value (not an object) means equality; an object is
 * operators only (an unknown one is `INVALID_QUERY`; equality with an object is `{ eq }`).
 */
export type Condition =
  | Json
  | { eq: Json }
  | { ne: Json }
  | { in: Json[] }
  | { gt?: number | string; gte?: number | string; lt?: number | string; lte?: number | string }
  | { startsWith: string };

export interface Query {
  where?: { [fieldPath: string]: Condition };
  /** A field name (ascending) or `{ field: 'asc' | 'desc' }`. */
  orderBy?: string | { [fieldPath: string]: 'asc' | 'desc' };
  limit?: number;
}

export interface Status {
  dbId: string;
  schemaVersion: number;
  maxRow: number;
  incoming: { [dbId: string]: number };
  outgoing: { [dbId: string]: number };
  online: boolean;
  pending: number;
  /** Whether this tab runs live sync for the replica (one tab per replica does). */
  leader?: boolean;
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
  | 'SYNC_NOT_CONFIGURED'
  | 'SYNC_CONNECTION'
  | 'SYNC_PROTOCOL'
  | 'SYNC_REFUSED';

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
  push: PassReport;
  pull: PassReport;
}

export interface Progress {
  direction: 'push' | 'pull';
  done: number;
  total: number;
}

export interface EventMap {
  sync: SyncReport;
  progress: Progress;
  reset: SyncReport;
  error: TidemarkError;
  futureVersion: { version: number; current: number };
  online: boolean;
  /** Collections a committed transaction (in this tab or another) changed. */
  change: { collections: string[] };
}

export declare class Replica {
  /** Subscribes to an event; returns a function that unsubscribes. */
  on<K extends keyof EventMap>(type: K, handler: (payload: EventMap[K]) => void): () => void;
  off<K extends keyof EventMap>(type: K, handler: (payload: EventMap[K]) => void): void;
  /** One sync round: push local rows, then pull the server's. */
  syncNow(): Promise<SyncReport>;
  /** Live sync with reconnect and exponential backoff. */
  connect(): void;
  disconnect(): void;
  /** Writes a whole document; fields it lacks are removed. */
  put(collection: string, doc: Doc): Promise<void>;
  /** Writes many whole documents in one transaction. */
  putMany(collection: string, docs: Doc[]): Promise<void>;
  /** Sets some fields of an existing document; keys may be dotted paths. */
  patch(collection: string, id: string, fields: { [fieldPath: string]: Json }): Promise<void>;
  delete(collection: string, id: string): Promise<void>;
  get(collection: string, id: string): Promise<Doc | undefined>;
  query(collection: string, query?: Query): Promise<Doc[]>;
  /**
   * A live query: `callback` runs at once with the results, then after every change (this
   * tab, other tabs, sync, migrations, resets) that alters them. Returns an unsubscribe
   * function.
   */
  subscribe(collection: string, query: Query | undefined, callback: (docs: Doc[]) => void): () => void;
  /** The newest op-log rows, newest first. */
  recentOps(limit?: number): Promise<LogRow[]>;
  status(): Status;
  close(): Promise<void>;
}

export declare function openReplica(options: OpenOptions): Promise<Replica>;
export declare function deleteReplica(name: string): Promise<void>;
/** Loads the wasm module ahead of time (optional; openReplica does it on first use). */
export declare function load(wasmUrl?: string | URL): Promise<unknown>;
