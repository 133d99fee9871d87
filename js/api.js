// Loading the wasm module, and the functions that need it: `load`, `openReplica`,
// `deleteReplica`. The entry points (index.js, dev.js, embedded.js) differ only in where
// the module's bytes come from by default, so they build these from one factory.
import init, { openReplica as openRaw, deleteReplica as deleteRaw } from './pkg/tidemark.js';
import { Replica, tidemarkError } from './replica.js';

const MAGIC = [0x00, 0x61, 0x73, 0x6d]; // "\0asm"

function unsupported(what) {
  return tidemarkError('UNSUPPORTED_ENVIRONMENT', `${what} needs IndexedDB and WebAssembly, which this environment lacks `
    + '(Node or server-side rendering?). Importing tidemark is safe anywhere; open replicas in a browser page or '
    + 'Web Worker only, e.g. in an effect (the tidemark/react hooks wait for one).');
}

const supported = () => typeof WebAssembly === 'object' && typeof globalThis.indexedDB === 'object' && globalThis.indexedDB !== null;

/** Fetches a wasm file: a `Response` to compile while it streams, or checked bytes. */
async function fetchWasm(url) {
  let res;
  try {
    res = await fetch(url);
  } catch (e) {
    throw new Error(`the request failed (${e?.message ?? e})`);
  }
  if (!res.ok) throw new Error(`the server answered ${res.status}${res.statusText ? ` ${res.statusText}` : ''}`);
  const type = (res.headers.get('content-type') ?? '').split(';')[0].trim();
  if (type === 'application/wasm') return res;
  const bytes = new Uint8Array(await res.arrayBuffer());
  if (!MAGIC.every((b, i) => bytes[i] === b)) {
    const html = bytes[0] === 0x3c ? ' (an HTML page: the file is probably missing and the server answered with a fallback page)' : '';
    throw new Error(`the response is not WebAssembly: ${type || 'no content type'}${html}`);
  }
  return bytes;
}

/** The module's bytes from the embedded copy: base64 of the gzip-compressed wasm. */
async function embeddedBytes(importEmbedded) {
  const { default: base64 } = await importEmbedded();
  const gz = typeof Uint8Array.fromBase64 === 'function'
    ? Uint8Array.fromBase64(base64)
    : Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  const stream = new Blob([gz]).stream().pipeThrough(new DecompressionStream('gzip'));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

const message = (e) => String(e?.message ?? e);

/**
 * Asks IndexedDB something (the names of the databases, a read) while the wasm module
 * loads: a page's first IndexedDB request pays for setting up the browser's side of it
 * (~2 ms here), which the replica's first open would otherwise wait for after the load.
 * Errors are ignored: the open that follows reports its own.
 */
function warmIndexedDB() {
  try {
    globalThis.indexedDB.databases?.().catch(() => {});
  } catch {
    // Not allowed here (an opaque origin): the open will say so.
  }
}

/**
 * Builds the API around a default source for the wasm module: `packaged()` returns the
 * URL of the file shipped next to the code (or throws when there is none: an IIFE bundle
 * has no `import.meta.url`), and `importEmbedded()` imports the embedded copy, tried when
 * there is no such URL or it does not serve WebAssembly. Either may be absent.
 */
export function createApi({ packaged, importEmbedded }) {
  /** `{ key, promise, done }` of the load in flight or done; cleared when a load fails. */
  let current = null;

  async function fromDefault() {
    const failures = [];
    let url = null;
    try { url = packaged?.() ?? null; } catch { url = null; }
    if (packaged && !url) failures.push('next to the code (this bundle has no import.meta.url)');
    if (url) {
      try {
        return await init({ module_or_path: await fetchWasm(url) });
      } catch (e) {
        failures.push(`from ${url}: ${message(e)}`);
      }
    }
    if (importEmbedded) {
      try {
        return await init({ module_or_path: await embeddedBytes(importEmbedded) });
      } catch (e) {
        failures.push(`from its embedded copy: ${message(e)}`);
      }
    }
    throw tidemarkError('WASM_LOAD_FAILED', `could not load tidemark's WebAssembly module ${failures.join('; nor ')}. `
      + "Retry, or serve tidemark_bg.wasm (exported as 'tidemark/tidemark_bg.wasm') and pass its URL to load(url) before openReplica().");
  }

  async function fromSource(source, key) {
    try {
      const bytes = typeof source === 'string' || source instanceof URL ? await fetchWasm(key) : source;
      return await init({ module_or_path: bytes });
    } catch (e) {
      const where = typeof source === 'string' || source instanceof URL ? `from ${key}` : 'from the given bytes or module';
      throw tidemarkError('WASM_LOAD_FAILED', `could not load tidemark's WebAssembly module ${where}: ${message(e)}`, e);
    }
  }

  /**
   * Loads and instantiates the wasm module, once. `source` (a URL, bytes or a compiled
   * `WebAssembly.Module`) replaces the default; it must come before the first load, as a
   * module cannot be swapped once instantiated. A failed load can be retried.
   */
  function load(source) {
    if (!supported()) return Promise.reject(unsupported('load()'));
    let key;
    if (source === undefined || source === null) key = undefined;
    else if (typeof source === 'string' || source instanceof URL) {
      try {
        key = new URL(source, globalThis.location?.href).href;
      } catch {
        return Promise.reject(tidemarkError('INVALID_ARGUMENT', `load(source): ${JSON.stringify(String(source))} is not a URL`));
      }
    } else if (source instanceof ArrayBuffer || ArrayBuffer.isView(source) || source instanceof WebAssembly.Module) key = source;
    else return Promise.reject(tidemarkError('INVALID_ARGUMENT', 'load(source): source is a URL (string or URL), the bytes of tidemark_bg.wasm or a WebAssembly.Module'));
    if (current) {
      if (key === undefined || key === current.key) return current.promise;
      const from = typeof current.key === 'string' ? current.key : current.key === undefined ? 'the package' : 'other bytes';
      return Promise.reject(tidemarkError('INVALID_ARGUMENT', `load(source): the WebAssembly module is already ${current.done ? 'loaded' : 'loading'} `
        + `from ${from}, and an instantiated module cannot be replaced: call load(source) once, before the first openReplica()`));
    }
    warmIndexedDB();
    const entry = { key, done: false, promise: null };
    entry.promise = (key === undefined ? fromDefault() : fromSource(source, key)).then(
      () => { entry.done = true; },
      (e) => { if (current === entry) current = null; throw e; },
    );
    current = entry;
    return entry.promise;
  }

  /** Opens (or creates) a replica. */
  async function openReplica(options) {
    if (!supported()) throw unsupported('openReplica()');
    await load();
    const inner = await openRaw(options);
    return new Replica(inner, options.name);
  }

  /** Deletes every IndexedDB database of the replica `name`. Close it first. */
  async function deleteReplica(name) {
    if (!supported()) throw unsupported('deleteReplica()');
    await load();
    return deleteRaw(name);
  }

  return { load, openReplica, deleteReplica };
}

/** Identity at run time: `defineSchema<{ todos: Todo }>(schema)` only carries types. */
export function defineSchema(schema) {
  return schema;
}
