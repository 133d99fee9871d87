// Renames the wasm's imports from wasm-bindgen's glue module to short names, in the wasm's
// import section and in the glue's import object alike (js/build.mjs, on `make build`).
//
// wasm-bindgen names each import after its JS function plus a 16-hex-digit hash
// (`__wbg_new_93a7394a5f1ff665`): ~190 names, each written twice — in the wasm and as a key of
// the glue's import object — whose hashes gzip cannot compress. Short names take ~5 KB off the
// gzip download (measured on this build: wasm 338,305 → 335,201 bytes, glue 11,273 → 8,933).
//
// Each import's new name is fixed by its place among the old names sorted, so any build with
// the same imports is renamed the same way: bench/profile.mjs renames a build that keeps its
// function names (not wasm-opt'ed) to fit the bench's glue.

/** The module wasm-bindgen's glue answers imports for. */
const GLUE_MODULE = './tidemark_bg.js';

/** The short name of the `i`th import: a, b, …, Z, ba, bb, … (letters only). */
export function shortName(i) {
  const letters = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ';
  let name = letters[i % letters.length];
  for (let n = Math.floor(i / letters.length); n > 0; n = Math.floor(n / letters.length)) {
    name = letters[n % letters.length] + name;
  }
  return name;
}

function readU32(bytes, at) {
  let value = 0;
  let shift = 0;
  for (;;) {
    const b = bytes[at.p++];
    if (b === undefined) throw new Error('short-imports: the wasm ends inside a number');
    value += (b & 0x7f) * 2 ** shift;
    if (!(b & 0x80)) return value;
    shift += 7;
  }
}

function writeU32(value) {
  const out = [];
  do {
    let b = value % 128;
    value = Math.floor(value / 128);
    if (value > 0) b |= 0x80;
    out.push(b);
  } while (value > 0);
  return out;
}

/** The import section's place in `bytes` and its imports, each with its bytes as read. */
function importSection(bytes) {
  if (bytes.readUInt32LE(0) !== 0x6d736100) throw new Error('short-imports: not a wasm module');
  const at = { p: 8 };
  while (at.p < bytes.length) {
    const start = at.p;
    const id = bytes[at.p++];
    const size = readU32(bytes, at);
    const end = at.p + size;
    if (id === 2) {
      const entries = [];
      const count = readU32(bytes, at);
      const text = () => {
        const n = readU32(bytes, at);
        const s = bytes.subarray(at.p, at.p + n).toString('utf8');
        at.p += n;
        return s;
      };
      for (let i = 0; i < count; i++) {
        const module = text();
        const name = text();
        const descStart = at.p;
        const kind = bytes[at.p++];
        if (kind !== 0) throw new Error(`short-imports: import ${module} ${name} is not a function (kind ${kind}); only functions are expected`);
        readU32(bytes, at); // its type's index
        entries.push({ module, name, desc: bytes.subarray(descStart, at.p) });
      }
      if (at.p !== end) throw new Error('short-imports: the import section has bytes past its imports');
      return { start, end, entries };
    }
    at.p = end;
  }
  throw new Error('short-imports: the wasm has no import section');
}

/** The renames of `wasm`'s glue imports: old name → short name. */
export function renames(wasm) {
  const names = importSection(wasm).entries.filter((e) => e.module === GLUE_MODULE).map((e) => e.name);
  if (new Set(names).size !== names.length) throw new Error('short-imports: an import name repeats');
  const sorted = [...names].sort();
  return new Map(sorted.map((name, i) => [name, shortName(i)]));
}

/** `wasm` with its glue imports named as `map` says (every one of them must be in it). */
export function renameWasm(wasm, map) {
  const { start, end, entries } = importSection(wasm);
  const vec = (s) => {
    const b = Buffer.from(s, 'utf8');
    return [...writeU32(b.length), ...b];
  };
  const body = [...writeU32(entries.length)];
  for (const e of entries) {
    let name = e.name;
    if (e.module === GLUE_MODULE) {
      name = map.get(e.name);
      if (name === undefined) throw new Error(`short-imports: the glue has no import named ${e.name}`);
    }
    body.push(...vec(e.module), ...vec(name), ...e.desc);
  }
  return Buffer.concat([wasm.subarray(0, start), Buffer.from([2, ...writeU32(body.length), ...body]), wasm.subarray(end)]);
}

/** The glue `text` with each import key renamed as `map` says; each must be there once. */
export function renameGlue(text, map) {
  for (const [from, to] of map) {
    const key = new RegExp(`(?<![\\w$])${from}(?![\\w$])`, 'g');
    const found = text.match(key)?.length ?? 0;
    if (found !== 1) throw new Error(`short-imports: the glue names ${from} ${found} times, not once; update scripts/short-imports.mjs for this wasm-bindgen version`);
    text = text.replace(key, to);
  }
  return text;
}
