// Bundles every benchmarked library for the page with esbuild (minified ES modules, as an
// app's bundler would ship them) into bench/dist/, plus size-only bundles of just what an
// app imports (bench/dist/size/). Tidemark's wasm is copied to pkg/ beside its bundle, where the
// package's entry looks for it.
import { build } from 'esbuild';
import { copyFile, mkdir, rm } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';

const BENCH = fileURLToPath(new URL('.', import.meta.url));
const DIST = join(BENCH, 'dist');
export const LIBS = ['raw', 'tidemark', 'dexie', 'pouchdb', 'rxdb'];
const PKG = join(BENCH, '../js/pkg');

export async function bundle() {
  if (!existsSync(join(PKG, 'tidemark_bg.wasm'))) throw new Error('js/pkg is missing: run `make build` first');
  await rm(DIST, { recursive: true, force: true });
  await mkdir(join(DIST, 'size'), { recursive: true });
  const common = {
    bundle: true, format: 'esm', platform: 'browser', target: 'es2022', minify: true,
    legalComments: 'none', logLevel: 'warning',
    define: { 'process.env.NODE_ENV': '"production"', global: 'globalThis' },
  };
  await build({ ...common, entryPoints: Object.fromEntries(LIBS.map((l) => [l, join(BENCH, 'src/adapters', `${l}.js`)])), outdir: DIST });
  await build({ ...common, entryPoints: Object.fromEntries(LIBS.filter((l) => l !== 'raw').map((l) => [l, join(BENCH, 'src/size', `${l}.js`)])), outdir: join(DIST, 'size') });
  // Where the package's entry looks for it (`new URL('./pkg/tidemark_bg.wasm', import.meta.url)`).
  for (const dir of [join(DIST, 'pkg'), join(DIST, 'size', 'pkg')]) {
    await mkdir(dir, { recursive: true });
    await copyFile(join(PKG, 'tidemark_bg.wasm'), join(dir, 'tidemark_bg.wasm'));
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  await bundle();
  console.log('bench: bundles in bench/dist/');
}
