import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { relInside } from '../src/util/path-inside.js';

// What relInside promised before it had a fast path: path.relative, segment-wise.
function reference(root: string, abs: string): string | undefined {
  const rel = path.relative(root, abs);
  if (rel === '' || rel === '..' || rel.startsWith('../') || path.isAbsolute(rel)) return undefined;
  return rel;
}

describe('relInside', () => {
  const cases: [string, string][] = [
    ['/ctx', '/ctx/a/b'], ['/ctx', '/ctx'], ['/ctx', '/ctx/'], ['/ctx', '/ctxa/b'], ['/ctx', '/ctx/../etc'],
    ['/ctx', '/ctx/a/../../etc'], ['/ctx', '/ctx/./a'], ['/ctx', '/ctx//a'], ['/ctx', '/ctx/a/'], ['/ctx', '/ctx/..env'],
    ['/ctx', '/ctx/a/..'], ['/ctx', '/ctx/a/.'], ['/', '/etc/passwd'], ['/', '/'], ['/ctx/', '/ctx/a'],
    ['/ctx/./x', '/ctx/x/a'], ['/ctx', '/ctx/a/.b/..c'], ['/a/b', '/a/b/c/d/e'], ['/a/b', '/a/c'], ['/a/b', '/a'],
    ['/a/b', '/a/b/../b/c'], ['/a/../a/b', '/a/b/c'], ['a/b', 'a/b/c'], ['/a/b', 'a/b/c'], ['/', '/a'], ['/a/b.', '/a/b./c'],
  ];
  it.each(cases)('%s contains %s as path.relative says', (root, abs) => {
    expect(relInside(root, abs)).toBe(reference(root, abs));
  });
});
