import { describe, expect, it } from 'vitest';
import { belowKey, chainKey, stepKey, type KeyMaterial } from '../src/cache/step-key.js';
import { canonicalJson, getXXHash, hashValue, toHex64 } from '../src/util/xxhash.js';

const HEX16 = /^[0-9a-f]{16}$/;

function material(): KeyMaterial {
  return {
    kind: 'layergraph.copy.v1',
    definition: { sources: ['services/api/'], to: '/app/', chmod: 493, chown: { uid: 1000, gid: 1000 } },
    inputs: [
      { path: 'services/api/main.js', type: 'file', mode: 0o644, size: 12, hash: '0011223344556677' },
      { path: 'services/api/run.sh', type: 'file', mode: 0o755, size: 30, hash: '8899aabbccddeeff' },
      { path: 'services/api/link', type: 'symlink', mode: 0o777, target: 'main.js' },
    ],
    parent: 'abcdefabcdefabcd',
  };
}

describe('canonicalJson', () => {
  it('sorts object keys at every level and keeps array order', () => {
    expect(canonicalJson({ b: 1, a: { d: [3, { z: 1, y: 2 }], c: 2 } })).toBe('{"a":{"c":2,"d":[3,{"y":2,"z":1}]},"b":1}');
    expect(canonicalJson([2, 1])).toBe('[2,1]');
  });

  it('drops undefined properties, like JSON.stringify', () => {
    expect(canonicalJson({ a: undefined, b: null })).toBe('{"b":null}');
  });

  it('gives the text JSON.stringify gives for a key-sorted copy, for any plain value (keys stay stable)', () => {
    const sorted = (v: unknown): unknown =>
      Array.isArray(v) ? v.map(sorted)
        : v !== null && typeof v === 'object'
          ? Object.fromEntries(Object.keys(v).sort().filter((k) => (v as Record<string, unknown>)[k] !== undefined).map((k) => [k, sorted((v as Record<string, unknown>)[k])]))
          : v;
    let seed = 7;
    const rand = (n: number): number => ((seed = (seed * 1103515245 + 12345) >>> 0) % n);
    const leaf = (): unknown => [null, undefined, true, false, 0, -0, 1.5, NaN, Infinity, -3, 'x', 'ü"\\\n', '', () => 1, new Date(0)][rand(15)];
    const value = (depth: number): unknown => {
      if (depth === 0 || rand(3) === 0) return leaf();
      if (rand(2)) return Array.from({ length: rand(4) }, () => value(depth - 1));
      return Object.fromEntries(Array.from({ length: rand(5) }, () => [['b', 'a', 'é', '10', '9', 'path', 'A'][rand(7)]!, value(depth - 1)]));
    };
    for (let i = 0; i < 2000; i++) {
      const v = value(5);
      expect(canonicalJson(v)).toBe(JSON.stringify(sorted(v)) ?? 'null');
    }
  });
});

describe('toHex64 / hashValue', () => {
  it('pads to 16 lowercase hex digits', () => {
    expect(toHex64(0n)).toBe('0000000000000000');
    expect(toHex64(0xabcn)).toBe('0000000000000abc');
    expect(toHex64(0xffffffffffffffffn)).toBe('ffffffffffffffff');
  });

  it('is xxh64 of the canonical JSON', async () => {
    const { h64 } = await getXXHash();
    const value = { z: [1, 2], a: 'x' };
    expect(await hashValue(value)).toBe(toHex64(h64('{"a":"x","z":[1,2]}')));
  });
});

describe('stepKey', () => {
  it('is 16 hex chars and deterministic', async () => {
    const k = await stepKey(material());
    expect(k).toMatch(HEX16);
    expect(await stepKey(material())).toBe(k);
  });

  it('does not depend on the key order of objects', async () => {
    const m = material();
    const reordered: KeyMaterial = {
      parent: m.parent,
      inputs: m.inputs.map((f) => Object.fromEntries(Object.entries(f).reverse()) as typeof f),
      definition: { chown: { gid: 1000, uid: 1000 }, chmod: 493, to: '/app/', sources: ['services/api/'] },
      kind: m.kind,
    };
    expect(await stepKey(reordered)).toBe(await stepKey(m));
  });

  it('changes when anything in the material changes', async () => {
    const base = await stepKey(material());
    const variants: Array<[string, (m: KeyMaterial) => void]> = [
      ['input hash', (m) => void (m.inputs[0]!.hash = '0011223344556678')],
      ['input mode', (m) => void (m.inputs[0]!.mode = 0o600)],
      ['input path', (m) => void (m.inputs[0]!.path = 'services/api/main.mjs')],
      ['input type', (m) => void (m.inputs[2]!.type = 'file')],
      ['link target', (m) => void (m.inputs[2]!.target = 'run.sh')],
      ['input removed', (m) => void m.inputs.pop()],
      ['input order', (m) => void m.inputs.reverse()],
      ['parent', (m) => void (m.parent = 'abcdefabcdefabce')],
      ['linked (no parent)', (m) => void (m.parent = null)],
      ['definition', (m) => void (m.definition.to = '/srv/')],
      ['nested definition', (m) => void ((m.definition.chown as { uid: number }).uid = 0)],
      ['kind', (m) => void (m.kind = 'layergraph.copy.v2')],
    ];
    const seen = new Set([base]);
    for (const [what, change] of variants) {
      const m = material();
      change(m);
      const k = await stepKey(m);
      expect(k, what).toMatch(HEX16);
      expect(k, what).not.toBe(base);
      seen.add(k);
    }
    expect(seen.size).toBe(variants.length + 1);
  });
});

describe('chainKey / belowKey', () => {
  it('chainKey is 16 hex chars and depends on both parts and their order', async () => {
    const a = 'aaaaaaaaaaaaaaaa';
    const b = 'bbbbbbbbbbbbbbbb';
    const k = await chainKey(a, b);
    expect(k).toMatch(HEX16);
    expect(await chainKey(a, b)).toBe(k);
    expect(await chainKey(b, a)).not.toBe(k);
    expect(await chainKey(a, 'cccccccccccccccc')).not.toBe(k);
  });

  it('belowKey of one key is that key', async () => {
    expect(await belowKey(['0123456789abcdef'])).toBe('0123456789abcdef');
    expect(await belowKey(['scratch'])).toBe('scratch');
  });

  it('belowKey of several keys is a new key that depends on all of them', async () => {
    const a = 'aaaaaaaaaaaaaaaa';
    const b = 'bbbbbbbbbbbbbbbb';
    const k = await belowKey([a, b]);
    expect(k).toMatch(HEX16);
    expect(k).not.toBe(a);
    expect(k).not.toBe(b);
    expect(await belowKey([a, b])).toBe(k);
    expect(await belowKey([b, a])).not.toBe(k);
    expect(await belowKey([a, b, 'cccccccccccccccc'])).not.toBe(k);
    // not confusable with a chain of the same two keys
    expect(await chainKey(a, b)).not.toBe(k);
  });
});
