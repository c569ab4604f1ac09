import { describe, expect, it } from 'vitest';
import { explainMiss } from '../src/cache/explain.js';
import type { InputFile, KeyMaterial } from '../src/cache/step-key.js';

const file = (p: string, hash: string, mode = 0o644): InputFile => ({ path: p, type: 'file', mode, size: 10, hash });

function material(over: Partial<KeyMaterial> = {}): KeyMaterial {
  return {
    kind: 'layergraph.copy.v1',
    definition: { sources: ['services/api/'], to: '/app/', chmod: null },
    inputs: [
      file('services/api/main.js', 'aaaaaaaaaaaaaaaa'),
      file('services/api/package.json', 'bbbbbbbbbbbbbbbb'),
      { path: 'services/api/lib', type: 'dir', mode: 0o755 },
      { path: 'services/api/current', type: 'symlink', mode: 0o777, target: 'main.js' },
    ],
    parent: '0123456789abcdef',
    ...over,
  };
}

describe('explainMiss', () => {
  it('says there was no earlier build when there is no previous material', () => {
    expect(explainMiss(undefined, material())).toBe('no earlier build');
  });

  it('names the changed definition key', () => {
    const prev = material();
    const cur = material({ definition: { ...prev.definition, to: '/srv/' } });
    expect(explainMiss(prev, cur)).toBe('definition changed: to');
  });

  it('names every changed definition key, sorted', () => {
    const prev = material();
    const cur = material({ definition: { ...prev.definition, to: '/srv/', chmod: 0o755 } });
    expect(explainMiss(prev, cur)).toBe('definition changed: chmod, to');
  });

  it('counts a definition key that appears or disappears as changed', () => {
    const prev = material();
    const cur = material({ definition: { ...prev.definition, link: true } });
    expect(explainMiss(prev, cur)).toBe('definition changed: link');
    expect(explainMiss(cur, prev)).toBe('definition changed: link');
  });

  it('compares definitions the way keys do: object key order is not a change', () => {
    // stepKey hashes canonical JSON, so {uid, gid} and {gid, uid} are the same definition.
    const prev = material({ definition: { to: '/app/', chown: { uid: 1000, gid: 1000 } } });
    const cur = material({
      definition: { chown: { gid: 1000, uid: 1000 }, to: '/app/' },
      inputs: prev.inputs.map((f) => (f.path === 'services/api/main.js' ? { ...f, hash: 'cccccccccccccccc' } : f)),
    });
    expect(explainMiss(prev, cur)).toBe('input services/api/main.js changed');
  });

  it('puts a definition change before input and parent changes', () => {
    const prev = material();
    const cur = material({
      definition: { ...prev.definition, to: '/srv/' },
      inputs: [file('services/api/main.js', 'cccccccccccccccc')],
      parent: 'ffffffffffffffff',
    });
    expect(explainMiss(prev, cur)).toBe('definition changed: to');
  });

  it('names a single changed input', () => {
    const prev = material();
    const inputs = prev.inputs.map((f) => (f.path === 'services/api/main.js' ? { ...f, hash: 'cccccccccccccccc' } : f));
    expect(explainMiss(prev, material({ inputs }))).toBe('input services/api/main.js changed');
  });

  it('counts a mode-only change as a change', () => {
    const prev = material();
    const inputs = prev.inputs.map((f) => (f.path === 'services/api/main.js' ? { ...f, mode: 0o755 } : f));
    expect(explainMiss(prev, material({ inputs }))).toBe('input services/api/main.js changed');
  });

  it('counts a symlink target or type change as a change', () => {
    const prev = material();
    const retarget = prev.inputs.map((f) => (f.type === 'symlink' ? { ...f, target: 'package.json' } : f));
    expect(explainMiss(prev, material({ inputs: retarget }))).toBe('input services/api/current changed');
    const retype = prev.inputs.map((f): InputFile => (f.path === 'services/api/lib' ? { ...f, type: 'file', hash: 'dddd' } : f));
    expect(explainMiss(prev, material({ inputs: retype }))).toBe('input services/api/lib changed');
  });

  it('names added and removed inputs', () => {
    const prev = material();
    const added = material({ inputs: [...prev.inputs, file('services/api/new.js', 'eeeeeeeeeeeeeeee')] });
    expect(explainMiss(prev, added)).toBe('input services/api/new.js added');
    const removed = material({ inputs: prev.inputs.filter((f) => f.path !== 'services/api/package.json') });
    expect(explainMiss(prev, removed)).toBe('input services/api/package.json removed');
  });

  it('lists changes, additions and removals together', () => {
    const prev = material();
    const inputs = [
      file('services/api/main.js', 'cccccccccccccccc'),
      file('services/api/new.js', 'eeeeeeeeeeeeeeee'),
      ...prev.inputs.filter((f) => f.path !== 'services/api/main.js' && f.path !== 'services/api/package.json'),
    ];
    expect(explainMiss(prev, material({ inputs }))).toBe(
      'input services/api/main.js changed; input services/api/new.js added; input services/api/package.json removed',
    );
  });

  it('uses the plural for two or three inputs', () => {
    const prev = material({ inputs: [file('a.js', '1'), file('b.js', '1'), file('c.js', '1')] });
    expect(explainMiss(prev, material({ inputs: [file('a.js', '2'), file('b.js', '2'), file('c.js', '1')] }))).toBe(
      'inputs a.js, b.js changed',
    );
    expect(explainMiss(prev, material({ inputs: [file('a.js', '2'), file('b.js', '2'), file('c.js', '2')] }))).toBe(
      'inputs a.js, b.js, c.js changed',
    );
  });

  it('shows three inputs and counts the rest when more than three changed', () => {
    const names = ['a.js', 'b.js', 'c.js', 'd.js', 'e.js', 'f.js'];
    const prev = material({ inputs: names.map((n) => file(n, '1')) });
    const cur = material({ inputs: names.map((n) => file(n, '2')) });
    expect(explainMiss(prev, cur)).toBe('inputs a.js, b.js, c.js and 3 more changed');
    const four = material({ inputs: names.map((n, i) => file(n, i < 4 ? '2' : '1')) });
    expect(explainMiss(prev, four)).toBe('inputs a.js, b.js, c.js and 1 more changed');
  });

  it('says the parent changed when only the parent did', () => {
    const prev = material();
    expect(explainMiss(prev, material({ parent: 'fedcba9876543210' }))).toBe('parent layer changed');
    expect(explainMiss(prev, material({ parent: null }))).toBe('parent layer changed');
  });

  it('puts input changes before a parent change', () => {
    const prev = material();
    const inputs = prev.inputs.map((f) => (f.path === 'services/api/main.js' ? { ...f, hash: 'cccccccccccccccc' } : f));
    expect(explainMiss(prev, material({ inputs, parent: 'fedcba9876543210' }))).toBe('input services/api/main.js changed');
  });

  it('ignores input order', () => {
    const prev = material();
    const cur = material({ inputs: [...prev.inputs].reverse(), parent: 'fedcba9876543210' });
    expect(explainMiss(prev, cur)).toBe('parent layer changed');
  });

  it('reports a kind change', () => {
    const prev = material();
    expect(explainMiss(prev, material({ kind: 'layergraph.copy.v2' }))).toBe(
      'step kind changed (layergraph.copy.v1 → layergraph.copy.v2)',
    );
  });

  it('says the entry is missing when the material is the same', () => {
    expect(explainMiss(material(), material())).toBe('cache entry missing');
  });
});
