import { lstat, utimes, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ContentHasher } from '../src/context/file-hasher.js';
import { StatCache } from '../src/context/stat-cache.js';
import { useTmpDirs } from './helpers/tmp.js';

const tmpDir = useTmpDirs();

/** Hash every file with a fresh hasher over the cache in `cacheDir`, as one run does; return the hashes and how many files it read. */
async function run(cacheDir: string, files: string[]): Promise<{ hashes: string[]; reads: number }> {
  const hasher = new ContentHasher(StatCache.in(cacheDir));
  const hashes = [];
  for (const f of files) hashes.push(await hasher.hash(f, await lstat(f)));
  await hasher.save();
  return { hashes, reads: hasher.reads };
}

/** A file whose timestamps are well before now, as files are that nobody is editing. */
async function oldFile(dir: string, name: string, content: string): Promise<string> {
  const f = path.join(dir, name);
  await writeFile(f, content);
  const past = new Date(Date.now() - 60_000);
  await utimes(f, past, past);
  return f;
}

describe('the stat cache', () => {
  it('lets a second run hash unchanged files without reading them', async () => {
    const [ctx, cache] = [await tmpDir(), await tmpDir()];
    // utimes sets ctime to now: let the clock move past it before the first run's probe.
    const files = [await oldFile(ctx, 'a', 'one'), await oldFile(ctx, 'b', 'two')];
    await new Promise((r) => setTimeout(r, 20));
    const first = await run(cache, files);
    expect(first.reads).toBe(2);
    const second = await run(cache, files);
    expect(second).toEqual({ hashes: first.hashes, reads: 0 });
  });

  it('reads a file again when it changed', async () => {
    const [ctx, cache] = [await tmpDir(), await tmpDir()];
    const f = await oldFile(ctx, 'a', 'one');
    await new Promise((r) => setTimeout(r, 20));
    const first = await run(cache, [f]);
    await writeFile(f, 'two');
    const second = await run(cache, [f]);
    expect(second.reads).toBe(1);
    expect(second.hashes[0]).not.toBe(first.hashes[0]);
  });

  it('does not keep a file changed after the run began: it could change again within the same timestamp tick', async () => {
    const [ctx, cache] = [await tmpDir(), await tmpDir()];
    const hasher = new ContentHasher(StatCache.in(cache));
    const early = await oldFile(ctx, 'early', 'x');
    await new Promise((r) => setTimeout(r, 20));
    await hasher.hash(early, await lstat(early)); // writes the probe
    await new Promise((r) => setTimeout(r, 20));
    const late = path.join(ctx, 'late');
    await writeFile(late, 'y');
    await hasher.hash(late, await lstat(late));
    await hasher.save();
    expect((await run(cache, [early, late])).reads).toBe(1);
  });

  it('treats a damaged cache file as empty', async () => {
    const [ctx, cache] = [await tmpDir(), await tmpDir()];
    const f = await oldFile(ctx, 'a', 'one');
    await writeFile(path.join(cache, 'stat-cache.json'), '{"version":1,"entries":{"' + f + '":"nonsense"}}');
    expect((await run(cache, [f])).reads).toBe(1);
    await writeFile(path.join(cache, 'stat-cache.json'), 'not json');
    expect((await run(cache, [f])).reads).toBe(1);
  });

  it('keeps nothing without a cache directory', async () => {
    const ctx = await tmpDir();
    const f = await oldFile(ctx, 'a', 'one');
    const hasher = new ContentHasher();
    await hasher.hash(f, await lstat(f));
    await hasher.save();
    expect(hasher.reads).toBe(1);
  });
});

describe('the stat cache with coarse or foreign timestamps', () => {
  /** A stat as another file system would give it. */
  const fake = (st: import('node:fs').Stats, over: Partial<import('node:fs').Stats>) => Object.assign(Object.create(Object.getPrototypeOf(st) as object) as import('node:fs').Stats, st, over);

  it('keeps a file of another device only when it is older than the probe by a margin; on the probe\'s own file system a whole-second time is no sign of coarse timestamps', async () => {
    const [ctx, cache] = [await tmpDir(), await tmpDir()];
    const f = await oldFile(ctx, 'a', 'one');
    const real = await lstat(f);
    await new Promise((r) => setTimeout(r, 20));
    const stats = StatCache.in(cache);
    await stats.lookup(f, real); // writes the probe
    const oneSecondAgo = Date.now() - 1000;
    const cases = {
      foreignRecent: fake(real, { dev: real.dev + 1, mtimeMs: oneSecondAgo, ctimeMs: oneSecondAgo }),
      wholeSecondsRecent: fake(real, { mtimeMs: Math.floor(oneSecondAgo / 1000) * 1000, ctimeMs: Math.floor(oneSecondAgo / 1000) * 1000 }),
      foreignOld: fake(real, { dev: real.dev + 1, mtimeMs: Date.now() - 60_000, ctimeMs: Date.now() - 60_000 }),
    };
    for (const [name, st] of Object.entries(cases)) stats.remember(path.join(ctx, name), st, `hash-${name}`);
    await stats.save();
    const next = StatCache.in(cache);
    expect(await next.lookup(path.join(ctx, 'foreignRecent'), cases.foreignRecent)).toBeUndefined();
    // A fine-grained file system's clock lands on a whole second now and then (bench:check once read such a file again).
    expect(await next.lookup(path.join(ctx, 'wholeSecondsRecent'), cases.wholeSecondsRecent)).toBe('hash-wholeSecondsRecent');
    expect(await next.lookup(path.join(ctx, 'foreignOld'), cases.foreignOld)).toBe('hash-foreignOld');
  });
});
