/**
 * Seeded, reproducible mutations of build files for the fuzz test: every
 * case is a pure function of (seed, index), so a failure names both and can
 * be replayed alone. A mutant is bytes, not text: some edits (invalid UTF-8,
 * byte flips, truncation in the middle of a character) only exist as bytes.
 */
import { readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';

export interface Mutant {
  /** The base file it was made from. */
  base: string;
  /** The edits, in order, as short words for the failure message. */
  ops: string[];
  bytes: Buffer;
}

export type Rng = () => number;

/** mulberry32: small, fast, and the same sequence on every platform. */
export function rng(seed: number): Rng {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** The build files to start from: the examples, and the inline build files of the config tests. */
export function baseFiles(repo: string): Array<{ name: string; text: string }> {
  const out: Array<{ name: string; text: string }> = [];
  for (const ex of readdirSync(path.join(repo, 'examples')).sort()) {
    const file = path.join(repo, 'examples', ex, 'build.yaml');
    out.push({ name: `examples/${ex}/build.yaml`, text: readFileSync(file, 'utf8') });
  }
  const tests = readdirSync(path.join(repo, 'test'))
    .filter((f) => /^config-.*\.test\.ts$/.test(f))
    .sort();
  for (const t of tests) {
    const source = readFileSync(path.join(repo, 'test', t), 'utf8');
    let n = 0;
    // Only the literal ones: a `${…}` would need the test's own values.
    for (const m of source.matchAll(/yaml`([^`]*)`/g)) {
      const body = m[1]!;
      if (body.includes('${') || !body.includes('images')) continue;
      out.push({ name: `test/${t}#${n++}`, text: dedent(body) });
    }
  }
  return out;
}

/** What `yaml` in test/config-helpers.ts does to its template. */
function dedent(body: string): string {
  const text = body.replace(/^\n/, '');
  const indent = /^ */.exec(text)?.[0].length ?? 0;
  return text
    .split('\n')
    .map((l) => l.slice(Math.min(indent, /^ */.exec(l)?.[0].length ?? 0)))
    .join('\n');
}

/** Case `index` of the run seeded with `seed`: one to three edits of one base file. */
export function mutant(bases: ReadonlyArray<{ name: string; text: string }>, seed: number, index: number): Mutant {
  const r = rng((seed ^ Math.imul(index + 1, 0x9e3779b1)) >>> 0);
  const base = pick(r, bases);
  let bytes: Buffer = Buffer.from(base.text, 'utf8');
  const ops: string[] = [];
  const count = 1 + Math.floor(r() * 3);
  for (let i = 0; i < count; i++) {
    const op = pickWeighted(r, OPS);
    const res = op.apply(bytes, r);
    bytes = res.bytes;
    ops.push(res.what);
  }
  return { base: base.name, ops, bytes };
}

interface Op {
  weight: number;
  apply(bytes: Buffer, r: Rng): { bytes: Buffer; what: string };
}

/** Values of every type YAML has, and some it only has by accident. */
const ODD_VALUES = [
  '42', '-1', '0', '1e400', '-0', '0x1F', '0o17', '.inf', '-.nan', '99999999999999999999999', '1_000', '08',
  'true', 'false', 'yes', 'off', 'null', '~', '', '[]', '{}', '[1, [2, [3]]]', '{a: {b: {c: 1}}}', '[null]',
  '"\\ud800"', '"\\0"', '"\\x00a"', '"a\\nb"', "''", '""', '!!binary aGVsbG8=', '!!set {a, b}', '!!omap [a: 1]',
  '!!timestamp 2001-12-14', '!!float 1', '!!int "x"', '!!str', '!foo bar', '!<tag:x> y', '|\n  block', '>-\n  folded',
  '__proto__', 'constructor', 'toString', 'hasOwnProperty', '{__proto__: {polluted: 1}}', '[__proto__]',
  '"../../etc/passwd"', '/', '/..', '"*"', '"**"', '"{a,b}"', '"[z-a]"', '"\\u202e"', '"😀"', 'a:b:c', '@x', '`x`',
  '&a 1', '*nosuch', '? x', '- - -', ': :', '{a: 1, a: 2}', '[a, b, ]', '{,}', '%x', '"unterminated', "'unterminated",
  // Values of the right shape and the wrong meaning: for the checks after the schema.
  '"4294967295:0"', '"0:99999999999999999999"', '"65536/tcp"', '"0/udp"', '"linux/amd64/v8/extra"', '"linux//"',
  '"localhost:99999/x:y"', '"a@sha256:zz"', '"Upper/Case:tag"', `"x:${'t'.repeat(200)}"`, '"oci:../nowhere:ref"', '"oci:"',
  '[a, a]', '[a, b, c, d]', '"/app/../../etc"', '"/"', '"//"', '"./"', '"a/../.."', '"7777"', '"0000"', '"0999"', 'scratch',
];

/** Paths a hostile file may give where paths go (`copy`, `to`, `context`, `workdir`, `from`). */
const ODD_PATHS = [
  '"a\\0b"', '"../x"', '"../*"', '"/etc/*"', '"*"', '"**"', '"**/*"', '"a/../../b"', '"./"', '"."', '".."', '"//x"', '"~/x"',
  '"$HOME"', '"a\\nb"', "' '", "'-'", '"*/.."', '"{a,b}"', '"[!a]"', '"\\\\"', `"${'a/'.repeat(3000)}"`, `"${'x'.repeat(5000)}"`,
  '"/proc/self/root"', '"/dev/zero"', '"oci:/dev/zero:x"', '"oci:../../..:x"', '"services/../../.."', '"libs/common/../../../"',
];

const KEYS = ['foo', 'tp', 'copy', 'run', 'from', 'id', 'needs', 'steps', 'images', 'env', '__proto__', 'constructor', '<<', '"quoted key"', '? complex', '[a, b]', '{a: 1}', 'version', 'context', 'ğ', '1'];

const INVALID_UTF8 = [[0xff], [0xfe], [0xc3], [0xc0, 0xaf], [0xed, 0xa0, 0x80], [0xf4, 0x90, 0x80, 0x80], [0xe2, 0x82], [0x80], [0xf8, 0x88, 0x80, 0x80, 0x80]];

const SYNTAX = ['&a ', '*a', '!!binary ', '!x ', '? ', '- ', ': ', '{', '}', '[', ']', '"', "'", '|', '>', '#', '%YAML 1.1\n', '---\n', '...\n', '<<: *a\n', '@', '`', '\\', ',', '\r', '\u2028', '\u0085', '\t', '\v', '\f', '\x1b[31m'];

const OPS: Op[] = [
  { weight: 6, apply: (b, r) => onValue(b, r, 'wrong-type', () => pick(r, ODD_VALUES)) },
  { weight: 3, apply: (b, r) => onPath(b, r) },
  {
    weight: 2,
    apply: (b, r) => {
      const depth = pick(r, [50, 101, 500, 2000, 10_000]);
      const open = r() < 0.5 ? '[' : '{a: ';
      const close = r() < 0.5 ? (open === '[' ? ']' : '}').repeat(depth) : '';
      return onValue(b, r, `nest-${open.trim()}x${depth}${close ? '' : '-unclosed'}`, () => `${open.repeat(depth)}${open === '[' ? '' : '1'}${close}`);
    },
  },
  {
    weight: 1,
    apply: (b, r) => {
      // Mostly large, rarely 10 MB: each of those costs a second to parse (the fuzz test also loads one on purpose).
      const size = r() < 0.04 ? 10 * 1024 * 1024 : pick(r, [1000, 100_000, 1024 * 1024]);
      const ch = pick(r, ['x', 'é', ' ', '/', '*']);
      const quote = pick(r, ['', '"', "'"]);
      return onValue(b, r, `huge-${size}`, () => `${quote}${ch === ' ' ? 'a' : ''}${ch.repeat(size)}${ch === ' ' ? 'a' : ''}${quote}`);
    },
  },
  { weight: 2, apply: (b, r) => laughs(b, r) },
  { weight: 4, apply: (b, r) => lineEdit(b, r, 'dup-line', (lines, i) => lines.splice(i, 0, lines[i]!)) },
  { weight: 3, apply: (b, r) => lineEdit(b, r, 'del-line', (lines, i) => lines.splice(i, 1)) },
  {
    weight: 2,
    apply: (b, r) =>
      lineEdit(b, r, 'swap-lines', (lines, i) => {
        const j = Math.floor(r() * lines.length);
        [lines[i], lines[j]] = [lines[j]!, lines[i]!];
      }),
  },
  {
    weight: 3,
    apply: (b, r) =>
      lineEdit(b, r, 'unknown-key', (lines, i) => {
        const indent = /^[ -]*/.exec(lines[i]!)![0].replace(/-/g, ' ');
        lines.splice(i + 1, 0, `${indent}${pick(r, KEYS)}: ${pick(r, ODD_VALUES)}`);
      }),
  },
  {
    weight: 2,
    apply: (b, r) =>
      lineEdit(b, r, 'dup-block', (lines, i) => {
        // Repeat a run of lines many times: many images, many steps, many duplicate keys.
        const len = 1 + Math.floor(r() * 6);
        const times = pick(r, [2, 10, 300]);
        const block = lines.slice(i, i + len);
        lines.splice(i, 0, ...Array.from({ length: times }, () => block).flat());
      }),
  },
  { weight: 3, apply: (b, r) => atByte(b, r, 'invalid-utf8', () => Buffer.from(pick(r, INVALID_UTF8))) },
  {
    weight: 3,
    apply: (b, r) => {
      const at = Math.floor(r() * b.length);
      return { bytes: b.subarray(0, at), what: `truncate@${at}` };
    },
  },
  {
    weight: 2,
    apply: (b, r) =>
      r() < 0.5
        ? lineEdit(b, r, 'tab-indent', (lines, i) => void (lines[i] = lines[i]!.replace(/^( +)/, (s) => '\t'.repeat(Math.max(1, s.length / 2)))))
        : { bytes: Buffer.from(b.toString('utf8').replace(/^( +)/gm, (s) => '\t'.repeat(s.length / 2))), what: 'tabs-everywhere' },
  },
  { weight: 2, apply: (b, r) => (r() < 0.5 ? { bytes: Buffer.concat([Buffer.from('\ufeff'), b]), what: 'bom' } : atByte(b, r, 'bom-inside', () => Buffer.from('\ufeff'))) },
  { weight: 2, apply: (b, r) => atByte(b, r, 'nul', () => Buffer.from([0])) },
  {
    weight: 4,
    apply: (b, r) => {
      if (!b.length) return { bytes: b, what: 'flip-nothing' };
      const out = Buffer.from(b);
      const at = Math.floor(r() * out.length);
      out[at] = out[at]! ^ (1 << Math.floor(r() * 8));
      return { bytes: out, what: `flip@${at}` };
    },
  },
  {
    weight: 2,
    apply: (b, r) => {
      const at = Math.floor(r() * b.length);
      const len = 1 + Math.floor(r() * 16);
      return { bytes: Buffer.concat([b.subarray(0, at), b.subarray(at + len)]), what: `delete@${at}+${len}` };
    },
  },
  { weight: 4, apply: (b, r) => atByte(b, r, 'syntax', () => Buffer.from(pick(r, SYNTAX))) },
  { weight: 1, apply: (b) => ({ bytes: Buffer.from(b.toString('utf8').replace(/\n/g, '\r\n')), what: 'crlf' }) },
  { weight: 1, apply: (b) => ({ bytes: Buffer.from(b.toString('utf8').replace(/\n/g, '\r')), what: 'cr-only' }) },
  { weight: 1, apply: (b) => ({ bytes: Buffer.from(b.toString('utf16le')), what: 'utf16' }) },
];

/** Replace the value of a random `key: value` line (or a list item) with `make()`. */
function onValue(bytes: Buffer, r: Rng, what: string, make: () => string): { bytes: Buffer; what: string } {
  const lines = bytes.toString('utf8').split('\n');
  const candidates = lines.map((l, i) => (/^\s*(- )?[^#\s][^:]*:\s*\S|^\s*- \S/.test(l) ? i : -1)).filter((i) => i >= 0);
  if (!candidates.length) return { bytes, what: `${what}-nowhere` };
  const i = pick(r, candidates);
  const line = lines[i]!;
  const m = /^(\s*(?:- )?[^#\s][^:]*:\s*)\S/.exec(line) ?? /^(\s*- )\S/.exec(line) ?? /^(\s*)/.exec(line)!;
  const value = make();
  lines[i] = m[1] + value;
  return { bytes: Buffer.from(lines.join('\n')), what: `${what}@L${i + 1}${value.length <= 40 ? `=${value}` : ''}` };
}

/** Replace a path value (`copy`, `to`, `context`, `workdir`, `from`), in block or flow style, with one of `ODD_PATHS`. */
function onPath(bytes: Buffer, r: Rng): { bytes: Buffer; what: string } {
  const lines = bytes.toString('utf8').split('\n');
  const key = /\b(copy|to|context|workdir|from):[ \t]*(\[[^\]\n]*\]|"[^"\n]*"|[^,}\]\n]*)/;
  const candidates = lines.map((l, i) => (key.test(l) ? i : -1)).filter((i) => i >= 0);
  if (!candidates.length) return { bytes, what: 'odd-path-nowhere' };
  const i = pick(r, candidates);
  const value = pick(r, ODD_PATHS);
  lines[i] = lines[i]!.replace(key, (_, k: string) => `${k}: ${value}`);
  return { bytes: Buffer.from(lines.join('\n')), what: `odd-path@L${i + 1}${value.length <= 40 ? `=${value}` : ''}` };
}

/** Anchors that double or more at each level (billion laughs), used as a value or a merge. */
function laughs(bytes: Buffer, r: Rng): { bytes: Buffer; what: string } {
  const levels = pick(r, [3, 10, 20, 30]);
  const fan = pick(r, [2, 9]);
  const merge = r() < 0.3;
  const chain = [`x-l0: &l0 ${merge ? '{a: [lol, lol]}' : '[lol, lol, lol]'}`];
  for (let i = 1; i < levels; i++) {
    const refs = Array.from({ length: fan }, () => `*l${i - 1}`).join(', ');
    chain.push(merge ? `x-l${i}: &l${i} {<<: [${refs}], k${i}: [${refs}]}` : `x-l${i}: &l${i} [${refs}]`);
  }
  const text = bytes.toString('utf8');
  // The anchors go first, so the aliases after them resolve.
  const withChain = Buffer.from(`${chain.join('\n')}\n${text}`);
  const top = `*l${levels - 1}`;
  const res = onValue(withChain, r, `laughs-${fan}^${levels}${merge ? '-merge' : ''}`, () => top);
  return res;
}

function lineEdit(bytes: Buffer, r: Rng, what: string, edit: (lines: string[], i: number) => void): { bytes: Buffer; what: string } {
  const lines = bytes.toString('utf8').split('\n');
  const i = Math.floor(r() * lines.length);
  edit(lines, i);
  return { bytes: Buffer.from(lines.join('\n')), what: `${what}@L${i + 1}` };
}

function atByte(bytes: Buffer, r: Rng, what: string, make: () => Buffer): { bytes: Buffer; what: string } {
  const at = Math.floor(r() * (bytes.length + 1));
  return { bytes: Buffer.concat([bytes.subarray(0, at), make(), bytes.subarray(at)]), what: `${what}@${at}` };
}

function pick<T>(r: Rng, items: readonly T[]): T {
  return items[Math.floor(r() * items.length)]!;
}

function pickWeighted(r: Rng, ops: readonly Op[]): Op {
  const total = ops.reduce((n, o) => n + o.weight, 0);
  let x = r() * total;
  for (const op of ops) {
    x -= op.weight;
    if (x < 0) return op;
  }
  return ops[ops.length - 1]!;
}
