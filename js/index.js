// Tidemark's entry point for browsers and for bundlers that copy assets referenced as
// `new URL('…', import.meta.url)` (Vite, webpack, Parcel; package.json routes them here
// through their `development` / `production` conditions). The wasm file ships next to this
// module; if that URL does not serve it — Vite's dev server pre-bundles dependencies into
// another folder and answers the old URL with its index page — the module falls back to
// an embedded copy, fetched as a separate chunk only then. See embedded.js for the rest.
import { createApi } from './api.js';

export { Replica } from './replica.js';
export { defineSchema } from './api.js';

export const { load, openReplica, deleteReplica } = createApi({
  packaged: () => new URL('./pkg/tidemark_bg.wasm', import.meta.url),
  importEmbedded: () => import('./pkg/tidemark_bg.embedded.js'),
});
