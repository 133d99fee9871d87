// Types of `tidemark/react`.
import type { Progress, Query, Replica, Status, SyncReport, TidemarkError } from './index.js';

/** What `useQuery` and `useDoc` return. */
export interface LiveResult<T> {
  /** `undefined` until the first result (and, for `useDoc`, while the document is missing). */
  data: T | undefined;
  /** True until the first result or error for the current replica, collection and query. */
  loading: boolean;
  /** The last error of the query; cleared by the next result. */
  error: TidemarkError | undefined;
}

/** What `useSyncStatus` returns. */
export interface SyncState {
  /** True while there is no replica yet. */
  loading: boolean;
  status: Status | undefined;
  online: boolean;
  /** Local rows no server has acknowledged yet. */
  pending: number;
  /** The running pass's progress; `undefined` between passes. */
  progress: Progress | undefined;
  /** The last completed round. */
  lastSync: SyncReport | undefined;
  /** The last sync error; cleared by the next successful round. */
  error: TidemarkError | undefined;
}

/** A live query. Structurally equal queries share one subscription across renders. */
export declare function useQuery<D, C extends keyof D & string>(
  db: Replica<D> | null | undefined,
  collection: C,
  query?: Query<D[C]>,
): LiveResult<D[C][]>;

/**
 * One document, live; `data` is `undefined` when it is missing or deleted. With no `id`
 * (`null` / `undefined`) nothing is watched and `loading` is false.
 */
export declare function useDoc<D, C extends keyof D & string>(
  db: Replica<D> | null | undefined,
  collection: C,
  id: string | null | undefined,
): LiveResult<D[C]>;

/** The replica's sync state, updated by its events. */
export declare function useSyncStatus(db: Replica<any> | null | undefined): SyncState;
