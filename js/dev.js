// Tidemark's entry point for development servers and builds (package.json's `development`
// condition: Vite's dev server, webpack in development mode). Like index.js it loads the
// wasm file shipped next to this module — but Vite 5 and 6 pre-bundle dependencies into
// node_modules/.vite/deps and answer that URL with the app's index page, so when the URL
// does not serve WebAssembly it falls back to the embedded copy (embedded.js), imported
// as a separate chunk only then.
import { createApi } from './api.js';

export { Replica } from './replica.js';
export { defineSchema } from './api.js';

export const { load, openReplica, deleteReplica } = createApi({
  packaged: () => new URL('./pkg/tidemark_bg.wasm', import.meta.url),
  importEmbedded: () => import('./pkg/tidemark_bg.embedded.js'),
});
