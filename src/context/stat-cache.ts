/**
 * What input files hashed to, kept between runs in `<cache>/stat-cache.json`:
 * path → (size, mtime, ctime, inode, device) → content hash. A file whose
 * stat is unchanged is not read again, so a no-op rebuild reads no file
 * content (git's index does the same).
 *
 * "Racily clean" files are never kept (git's rule): before hashing, the run
 * writes a probe file and notes its timestamp, on the same file system clock
 * and granularity as the inputs'; a file whose mtime or ctime is not older
 * than that could change again within the same timestamp tick after it was
 * read, and a matching stat would then vouch for old content. Concurrent runs may overwrite
 * each other's file; every entry is checked against the file's stat before
 * use, so a lost entry only costs a read.
 */
import type { Stats } from 'node:fs';
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { writeFileAtomic } from '../util/fs-atomic.js';
import { readJsonIfPresent } from '../util/fs-read.js';

const VERSION = 1;

type Entry = [size: number, mtimeMs: number, ctimeMs: number, ino: number, dev: number, hash: string];

interface StatCacheFile {
  version: number;
  entries: Record<string, Entry>;
}

export class StatCache {
  private entries = new Map<string, Entry>();
  private loaded: Promise<void> | undefined;
  private changed = false;
  /** File-system time of the probe written before any hashing; files changed since are not kept. */
  private since = -Infinity;

  constructor(private readonly file: string | undefined) {}

  /** A cache that keeps nothing between runs (no cache directory, or one that must stay untouched). */
  static none(): StatCache {
    return new StatCache(undefined);
  }

  static in(cacheDir: string): StatCache {
    return new StatCache(path.join(cacheDir, 'stat-cache.json'));
  }

  async lookup(absPath: string, st: Stats): Promise<string | undefined> {
    await this.load();
    const e = this.entries.get(absPath);
    return e && matches(e, st) ? e[5] : undefined;
  }

  remember(absPath: string, st: Stats, hash: string): void {
    if (!this.file || Math.max(st.mtimeMs, st.ctimeMs) >= this.since) return;
    this.entries.set(absPath, [st.size, st.mtimeMs, st.ctimeMs, st.ino, st.dev, hash]);
    this.changed = true;
  }

  /** Writes what this run learned; does nothing for `none()` or when nothing changed. */
  async save(): Promise<void> {
    if (!this.file || !this.changed) return;
    const data: StatCacheFile = { version: VERSION, entries: Object.fromEntries(this.entries) };
    await writeFileAtomic(this.file, JSON.stringify(data));
    this.changed = false;
  }

  private load(): Promise<void> {
    this.loaded ??= (async () => {
      if (!this.file) return;
      const probe = `${this.file}.probe`;
      await writeFileAtomic(probe, '');
      this.since = (await stat(probe)).mtimeMs;
      const data = await readJsonIfPresent<StatCacheFile>(this.file).catch(() => undefined);
      // Another version's file, or a damaged one, is just an empty cache.
      if (data?.version === VERSION && data.entries && typeof data.entries === 'object') this.entries = new Map(Object.entries(data.entries));
    })();
    return this.loaded;
  }
}

function matches(e: Entry, st: Stats): boolean {
  return e[0] === st.size && e[1] === st.mtimeMs && e[2] === st.ctimeMs && e[3] === st.ino && e[4] === st.dev;
}
