// Tidemark's entry point for bundlers that neither copy `new URL('…', import.meta.url)`
// assets nor announce a build mode (esbuild, Rollup, Bun: package.json's `browser`
// condition): the wasm module comes from a JS module that embeds it (gzip, then base64:
// about as many bytes over the wire as the gzipped .wasm, but compiled only once it has all
// arrived), so no file has to be served next to the bundle and nothing needs configuring.
// `load(url)` still takes a served copy.
import { createApi } from './api.js';

export { Replica } from './replica.js';
export { defineSchema } from './api.js';

export const { load, openReplica, deleteReplica } = createApi({
  packaged: null,
  importEmbedded: () => import('./pkg/tidemark_bg.embedded.js'),
});
