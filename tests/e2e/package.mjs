// The npm package as users get it, for the tests that install it: `npm pack` js/ (after
// `make build` filled js/pkg) into a temporary folder, and install that tarball offline
// into an app folder. npm runs with a cache of its own: nothing here reads or writes the
// user's npm cache, or reaches the network.
import { execFile } from 'node:child_process';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

export const run = promisify(execFile);
export const ROOT = resolve(fileURLToPath(new URL('../..', import.meta.url)));
export const PKG_DIR = join(ROOT, 'js');

/** Packs js/: `{ tmp, tarball, entries, env, cleanup }`, `entries` as the tarball really holds them. */
export async function pack() {
  if (!existsSync(join(PKG_DIR, 'pkg/tidemark_bg.wasm'))) throw new Error('js/pkg is missing: run `make build` first');
  const tmp = await mkdtemp(join(tmpdir(), 'tidemark-pack-'));
  const env = { ...process.env, npm_config_cache: join(tmp, 'npm-cache'), npm_config_update_notifier: 'false',
    npm_config_fund: 'false', npm_config_audit: 'false' };
  const { stdout } = await run('npm', ['pack', '--json', '--pack-destination', tmp], { cwd: PKG_DIR, env });
  const [info] = JSON.parse(stdout);
  const tarball = join(tmp, info.filename);
  await stat(tarball);
  const listing = await run('tar', ['-tzf', tarball]);
  const entries = listing.stdout.split('\n').filter(Boolean).map((p) => p.replace(/^package\//, ''));
  return { tmp, tarball, entries, env, size: info.size, unpackedSize: info.unpackedSize,
    cleanup: () => rm(tmp, { recursive: true, force: true }) };
}

/** Installs the tarball into `app` offline, leaving its package.json and lockfile as they are. */
export async function install(app, { tarball, env }) {
  await run('npm', ['install', '--offline', '--no-save', '--no-audit', '--no-fund', tarball], { cwd: app, env });
}
