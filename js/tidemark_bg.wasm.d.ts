// `tidemark/tidemark_bg.wasm`: the WebAssembly module, for apps that serve it themselves and
// pass its URL to `load(url)` (e.g. `import url from 'tidemark/tidemark_bg.wasm?url'` in Vite,
// or a webpack `asset/resource` rule). Bundlers that import it as a URL give a string.
declare const wasmUrl: string;
export default wasmUrl;
