// `tidemark/react`: hooks over a replica's live queries and sync events. Each hook
// subscribes in an effect and unsubscribes in its cleanup, so StrictMode's double effects
// and hot reloads leave exactly one subscription; queries are compared by value (a new
// object literal every render does not resubscribe). They take the replica as an argument
// (`null` / `undefined` while it opens: loading) and import nothing from tidemark, so they
// work with whichever entry point the app's bundler picked.
import { useEffect, useMemo, useState } from 'react';

let unique = 0;
/** A key equal for structurally equal queries (and unique for ones JSON cannot hold). */
function keyOf(value) {
  try {
    return JSON.stringify(value === undefined ? null : value);
  } catch {
    return `unserializable:${++unique}`;
  }
}

/** Runs `start(deliver, fail)` while `db` and `key` stay the same; returns the latest state. */
function useLive(db, key, start) {
  const [state, setState] = useState({ db: null, key: null, loaded: false, data: undefined, error: undefined });
  useEffect(() => {
    if (!db) return undefined;
    let live = true;
    const deliver = (data) => { if (live) setState({ db, key, loaded: true, data, error: undefined }); };
    const fail = (error) => {
      if (live) setState((s) => ({ db, key, loaded: s.db === db && s.key === key && s.loaded, data: s.db === db && s.key === key ? s.data : undefined, error }));
    };
    let stop;
    try {
      stop = start(deliver, fail);
    } catch (error) {
      fail(error);
      return () => { live = false; };
    }
    return () => { live = false; stop(); };
    // `start` is rebuilt every render; `key` says when it means something else.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [db, key]);
  const current = !!db && state.db === db && state.key === key;
  return {
    data: current ? state.data : undefined,
    error: current ? state.error : undefined,
    loading: !current || (!state.loaded && state.error === undefined),
  };
}

/**
 * The results of a live query: `{ data, loading, error }`. `data` is `undefined` until the
 * first results arrive, then the documents, updated after every change that alters them.
 */
export function useQuery(db, collection, query) {
  const key = `${collection}\u0000${keyOf(query)}`;
  // The first query object of each key: the one the subscription runs.
  // eslint-disable-next-line react-hooks/exhaustive-deps
  const stable = useMemo(() => query, [key]);
  return useLive(db, key, (deliver, fail) => db.subscribe(collection, stable, deliver, fail));
}

/**
 * One document, live: `{ data, loading, error }`; `data` is `undefined` when it is missing
 * or deleted. With no `id` (null or undefined) nothing is watched and nothing is loading.
 */
export function useDoc(db, collection, id) {
  const none = id === null || id === undefined;
  const live = useLive(none ? null : db, `${collection}\u0000${id}`, (deliver, fail) => db.subscribeDoc(collection, id, deliver, fail));
  return none ? { data: undefined, error: undefined, loading: false } : live;
}

/**
 * The replica's sync state, live: `{ loading, status, online, pending, progress, lastSync,
 * error }`. `progress` is the current pass's `{ direction, done, total }` while one runs;
 * `error` the last sync error, cleared by the next successful round.
 */
export function useSyncStatus(db) {
  const [state, setState] = useState({ db: null });
  useEffect(() => {
    if (!db) return undefined;
    let live = true;
    const update = (change) => {
      if (!live) return;
      setState((s) => ({ ...(s.db === db ? s : { progress: undefined, lastSync: undefined, error: undefined }), ...change, db, status: db.status() }));
    };
    update({});
    const offs = [
      db.on('sync', (report) => update({ lastSync: report, progress: undefined, error: undefined })),
      db.on('progress', (progress) => update({ progress })),
      db.on('error', (error) => update({ error, progress: undefined })),
      db.on('online', () => update({})),
      db.on('reset', () => update({})),
      db.on('change', () => update({})),
    ];
    return () => { live = false; for (const off of offs) off(); };
  }, [db]);
  const s = db && state.db === db ? state : null;
  return {
    loading: !s,
    status: s?.status,
    online: s?.status.online ?? false,
    pending: s?.status.pending ?? 0,
    progress: s?.progress,
    lastSync: s?.lastSync,
    error: s?.error,
  };
}
