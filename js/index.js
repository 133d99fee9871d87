// Tidemark's entry point for browsers without a bundler (import maps, CDNs) and for
// production builds of bundlers that copy assets referenced as `new URL('…',
// import.meta.url)` (Vite, webpack, Parcel: package.json routes their `production`
// condition here). The wasm file ships next to this module and is compiled as it streams.
// It imports nothing lazily, so Vite's default IIFE worker builds accept it. Development
// builds get dev.js, bundlers that copy no assets embedded.js.
import { createApi } from './api.js';

export { Replica } from './replica.js';
export { defineSchema } from './api.js';

export const { load, openReplica, deleteReplica } = createApi({
  packaged: () => new URL('./pkg/tidemark_bg.wasm', import.meta.url),
});
