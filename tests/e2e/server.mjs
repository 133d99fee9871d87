// Starts and stops real tidemark-server processes on free loopback ports for the
// browser end-to-end tests. Every test stops the servers it started.
import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { mkdtemp, rm, copyFile, readdir } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(fileURLToPath(new URL('../..', import.meta.url)));
export const SERVER_BIN = process.env.TIDEMARK_SERVER ?? join(ROOT, 'target/release/tidemark-server');

export function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => ok(port)); });
    s.on('error', fail);
  });
}

async function waitHealthy(url, ms = 10000) {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    try { if ((await fetch(`${url}/healthz`)).ok) return; } catch {}
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`tidemark-server at ${url} did not become healthy`);
}

/** A tidemark-server on its own data dir; `restart()` keeps the data and the port. */
export async function startServer({ perDiff, maxDiffs, extraArgs = [] } = {}) {
  if (!existsSync(SERVER_BIN)) throw new Error(`${SERVER_BIN} missing: run make build-server`);
  const data = await mkdtemp(join(tmpdir(), 'tidemark-data-'));
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const args = ['--listen', `127.0.0.1:${port}`, '--data', data, '--www', join(ROOT, 'www'), '--pkg', join(ROOT, 'js'), ...extraArgs];
  if (perDiff) args.push('--per-diff', String(perDiff));
  if (maxDiffs) args.push('--max-diffs', String(maxDiffs));
  let child;
  const srv = {
    url,
    wsUrl: `ws://127.0.0.1:${port}/v1/sync`,
    data,
    async start() {
      child = spawn(SERVER_BIN, args, { stdio: ['ignore', 'ignore', 'pipe'] });
      child.stderr.on('data', (d) => { if (process.env.TIDEMARK_DEBUG) process.stderr.write(d); });
      await waitHealthy(url);
    },
    /** Stops the process with `signal` and waits for it to exit. */
    async kill(signal = 'SIGTERM') {
      if (!child || child.exitCode !== null || child.signalCode) return;
      const exited = new Promise((ok) => child.once('exit', ok));
      child.kill(signal);
      await exited;
    },
    async restart(signal = 'SIGTERM') { await srv.kill(signal); await srv.start(); },
    /** SIGSTOP: the process keeps its sockets open but answers nothing (a half-open path). */
    pause() { child.kill('SIGSTOP'); },
    resume() { child.kill('SIGCONT'); },
    async status(library) { return (await fetch(`${url}/v1/libraries/${library}/status`)).json(); },
    /** Copies every file of the data dir (the SQLite file and its WAL) to `dir`. */
    async copyData(dir) {
      for (const f of await readdir(data)) await copyFile(join(data, f), join(dir, f));
    },
    async replaceData(dir) {
      for (const f of await readdir(data)) await rm(join(data, f), { force: true });
      for (const f of await readdir(dir)) await copyFile(join(dir, f), join(data, f));
    },
    async stop() { await srv.kill('SIGTERM'); await rm(data, { recursive: true, force: true }); },
  };
  await srv.start();
  return srv;
}
