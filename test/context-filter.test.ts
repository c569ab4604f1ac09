import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadContextFilter, type ContextFilter } from '../src/context/context-filter.js';
import { selectSources } from '../src/context/select.js';
import { rng } from './helpers/build-file-mutations.js';
import { useTmpDirs } from './helpers/tmp.js';

const tmpDir = useTmpDirs();

// Mixed case and regex characters: the matcher ignores case and lets most regex syntax through.
const NAMES = ['a', 'b', 'src', 'Src', 'keep', 'x.log', 'y.txt', 'node_modules', 'DOCS', 'aa+b', 'x(1)'];
const PATTERN_PARTS = ['a', 'b', 'src', 'SRC', 'keep', '*', '**', '*.log', 'Docs', 'node_modules', 'y.txt', '?', '[ab]', 'x*', '(a|src)', 'a+', 'a+b', 'x\\(1\\)', 'a{1,2}', 'S?c'];

function pick<T>(r: () => number, xs: readonly T[]): T {
  return xs[Math.floor(r() * xs.length)]!;
}

async function randomContext(r: () => number, root: string): Promise<void> {
  const make = async (dir: string, depth: number): Promise<void> => {
    await mkdir(dir, { recursive: true });
    const n = 1 + Math.floor(r() * 4);
    for (let i = 0; i < n; i++) {
      const name = pick(r, NAMES);
      const p = path.join(dir, name);
      if (depth < 3 && r() < 0.5) await make(p, depth + 1).catch(() => undefined);
      else await writeFile(p, name).catch(() => undefined); // a name already taken by a directory
    }
  };
  await make(root, 0);
}

function randomPatterns(r: () => number): string[] {
  const out: string[] = [];
  const n = Math.floor(r() * 4);
  for (let i = 0; i < n; i++) {
    const segs = Array.from({ length: 1 + Math.floor(r() * 3) }, () => pick(r, PATTERN_PARTS));
    const lead = r() < 0.15 ? '/' : r() < 0.1 ? './' : '';
    out.push(`${r() < 0.25 ? '!' : ''}${lead}${segs.join('/')}${r() < 0.1 ? '/' : ''}`);
  }
  return out;
}

/** The same filter, made to ask about every entry: the walk before it learned to skip. */
function unpruned(f: ContextFilter): ContextFilter {
  return { excluded: (p) => f.excluded(p), walkExcluded: (p) => f.walkExcluded(p), mayExcludeBelow: () => true };
}

describe('ContextFilter.mayExcludeBelow', () => {
  it('a walk that skips the pattern checks where nothing can match selects exactly what a walk asking for every entry does (random trees and .dockerignore files)', async () => {
    const cases = Number(process.env.FILTER_CASES ?? 200);
    for (let seed = 1; seed <= cases; seed++) {
      const r = rng(seed);
      const ctx = path.join(await tmpDir('lg-filter-'), 'ctx');
      await randomContext(r, ctx);
      const patterns = randomPatterns(r);
      await writeFile(path.join(ctx, '.dockerignore'), patterns.join('\n'));
      // The build's own directories: inside the context, or (as usual) beside it.
      const own = r() < 0.5 ? [path.join(ctx, pick(r, NAMES), 'cache')] : [path.join(ctx, '..', 'cache'), path.join(ctx, '..', 'out')];
      const filter = await loadContextFilter(ctx, own);
      const select = (f: ContextFilter) =>
        selectSources(ctx, [{ spec: '.', pos: { file: 'b.yaml', line: 1, col: 1 } }], 'context', { filter: f }).then(
          (s) => s.flatMap((sel) => sel.entries.map((e) => e.rel)),
          (err: Error) => `error: ${err.message}`,
        );
      const [fast, full] = [await select(filter), await select(unpruned(filter))];
      expect({ seed, patterns, selected: fast }).toEqual({ seed, patterns, selected: full });
    }
  });

  it('says no below a directory no pattern reaches, and yes on the way to a pattern or the build’s own directory', async () => {
    const ctx = await tmpDir('lg-filter-');
    await writeFile(path.join(ctx, '.dockerignore'), 'build.yaml\ndocs/*.md\n!keep\n');
    const f = await loadContextFilter(ctx, [path.join(ctx, 'services', 'api', '.cache')]);
    const at = (rel: string) => f.mayExcludeBelow(path.join(ctx, rel));
    expect(at('')).toBe(true);
    expect(at('src')).toBe(false);
    expect(at('docs')).toBe(true);
    expect(at('services')).toBe(true);
    expect(at('services/api')).toBe(true);
    expect(at('services/web')).toBe(false);
  });
});
