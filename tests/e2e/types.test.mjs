// The package's TypeScript declarations accept every documented use and refuse misuse:
// tests/types/ is compiled with the project's own TypeScript, strict — usage.ts (the
// documented API), typed.ts (typed documents, hooks, devtools; @ts-expect-error for each
// misuse) and generated.ts (index.d.ts against the types ts-rs generates from Rust).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

test('the declarations type-check the documented API, typed documents and hooks, refuse misuse, and match the Rust types (strict)', () => {
  const tsc = fileURLToPath(new URL('../../node_modules/typescript/bin/tsc', import.meta.url));
  const project = fileURLToPath(new URL('../types/tsconfig.json', import.meta.url));
  let out = '';
  try {
    execFileSync(process.execPath, [tsc, '-p', project], { encoding: 'utf8' });
  } catch (e) {
    out = `${e.stdout}${e.stderr}`;
  }
  assert.equal(out, '', out);
});
