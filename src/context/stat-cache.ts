/**
 * What input files hashed to, kept between runs in `<cache>/stat-cache.json`:
 * path → (size, mtime, ctime, inode, device) → content hash. A file whose
 * stat is unchanged is not read again, so a no-op rebuild reads no file
 * content (git's index does the same). The cache's own blobs that hashed to
 * their digest are kept the same way, in `stat-cache-blobs.json`.
 *
 * "Racily clean" files are never kept (git's rule): before hashing, the run
 * writes a probe file into the cache directory and notes its timestamp; a
 * file whose mtime or ctime is not older than that could change again within
 * the same timestamp tick after it was read, and a matching stat would then
 * vouch for old content. The probe speaks for the inputs' clock only on its
 * own file system, and tells that file system's granularity: a file on
 * another device, or on a file system whose probe got a whole-second time,
 * must be older by a margin that covers coarse (FAT's 2 s) timestamps and
 * some clock skew. The file keeps the entries this
 * run used, and older ones up to a bound. Concurrent runs may overwrite
 * each other's file; every entry is checked against the file's stat before
 * use, so a lost entry only costs a read.
 */
import type { Stats } from 'node:fs';
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { writeFileAtomic } from '../util/fs-atomic.js';
import { readJsonIfPresent } from '../util/fs-read.js';

const VERSION = 1;
export const BLOB_STATS_FILE = 'stat-cache-blobs.json';
/** How much older than the probe a file on another device, or on a whole-second file system, must be. */
const COARSE_MARGIN_MS = 3000;
/** Entries kept that this run did not use (another context's, a deleted file's). */
const KEEP_UNUSED = 100_000;

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
  private probeDev = -1;
  /** The probe's file system keeps whole seconds (or the probe landed on one: then only a margin too many). */
  private probeCoarse = true;
  private readonly probe: Probe | undefined;
  /** Paths this run looked up or hashed: always kept. */
  private readonly used = new Set<string>();

  constructor(
    private readonly file: string | undefined,
    /** Told when the file is there but damaged (it is then an empty cache: every input is read again). */
    private readonly onDamage: (what: string) => void = () => undefined,
    /** Another cache's probe, written in the same directory by the same run (default: its own). */
    probe?: Probe,
  ) {
    this.probe = file ? (probe ?? new Probe(`${file}.probe`, path.join(path.dirname(file), 'ingest'))) : undefined;
  }

  /** A cache that keeps nothing between runs (no cache directory, or one that must stay untouched). */
  static none(): StatCache {
    return new StatCache(undefined);
  }

  static in(cacheDir: string, onDamage?: (what: string) => void): StatCache {
    return new StatCache(path.join(cacheDir, 'stat-cache.json'), onDamage);
  }

  /**
   * The cache's own blobs already hashed (cache/content-store.ts), kept apart
   * from the input files: each build marks the blobs it used, which changes
   * their stats, so this file is rewritten by every build and is kept small.
   */
  static forBlobs(cacheDir: string, onDamage?: (what: string) => void, sharingProbeWith?: StatCache): StatCache {
    return new StatCache(path.join(cacheDir, BLOB_STATS_FILE), onDamage, sharingProbeWith?.probe);
  }

  async lookup(absPath: string, st: Stats): Promise<string | undefined> {
    await this.load();
    return this.known(absPath, st);
  }

  /** Loads the file; after this, `known` answers without a promise per file. */
  async ready(): Promise<void> {
    await this.load();
  }

  /** The hash this stat vouches for, once loaded (see `ready`); undefined when unknown or not loaded yet. */
  known(absPath: string, st: Stats): string | undefined {
    const e = this.entries.get(absPath);
    if (!e || !matches(e, st)) return undefined;
    this.used.add(absPath);
    return e[5];
  }

  remember(absPath: string, st: Stats, hash: string): void {
    if (!this.file) return;
    // Granularity is the file system's, so the probe speaks for it: judging each file by its own
    // timestamps took a fine-grained file that happened to land on a whole second for a coarse one.
    if (!this.settled(st)) return;
    this.entries.set(absPath, [st.size, st.mtimeMs, st.ctimeMs, st.ino, st.dev, hash]);
    this.used.add(absPath);
    this.changed = true;
  }

  /**
   * Whether the file was last changed before this run's probe (see `ready`), by
   * enough for its file system's timestamps: any later change then changes its
   * stat. Not so for a "racily clean" file, which a write in the same tick as a
   * read could change unseen.
   */
  /** On the probe's file system, and that keeps finer than whole seconds. */
  private fineGrained(st: Stats): boolean {
    return st.dev === this.probeDev && !this.probeCoarse;
  }

  settled(st: Stats): boolean {
    const coarse = !this.fineGrained(st);
    return Math.max(st.mtimeMs, st.ctimeMs) < this.since - (coarse ? COARSE_MARGIN_MS : 0);
  }

  /**
   * Files whose times this process just set itself (a build's lease marks the
   * blobs it used when it ends: cache/leases.ts), content untouched: an entry
   * that vouched for the stat before moves to the stat after, so marking a
   * blob used does not cost hashing it again next run. Only when the stat
   * before is the one vouched for (nothing else changed the file meanwhile).
   */
  retouched(files: ReadonlyArray<{ file: string; before: Stats; after: Stats }>): void {
    for (const { file, before, after } of files) {
      // The new stat must be as telling as a remembered one: a same-tick write after the touch would keep it.
      if (!this.fineGrained(after)) continue;
      const e = this.entries.get(file);
      if (!e || !matches(e, before)) continue;
      this.entries.set(file, [after.size, after.mtimeMs, after.ctimeMs, after.ino, after.dev, e[5]]);
      this.changed = true;
    }
  }

  /** Drops what is kept for these paths (blobs `cache verify` found bad, so no build vouches for them), and writes the file. */
  async forget(paths: readonly string[]): Promise<void> {
    await this.load();
    for (const p of paths) if (this.entries.delete(p)) this.changed = true;
    await this.save();
  }

  /** Writes what this run learned; does nothing for `none()` or when nothing changed. */
  async save(): Promise<void> {
    if (!this.file || !this.changed) return;
    const kept = [...this.entries].filter(([p]) => this.used.has(p));
    const unused = [...this.entries].filter(([p]) => !this.used.has(p)).slice(-KEEP_UNUSED);
    const data: StatCacheFile = { version: VERSION, entries: Object.fromEntries([...unused, ...kept]) };
    await writeFileAtomic(this.file, JSON.stringify(data), this.staging());
    this.changed = false;
  }

  private load(): Promise<void> {
    this.loaded ??= (async () => {
      if (!this.file) return;
      const st = await this.probe!.take();
      if (!st) return; // no probe (a read-only cache): nothing is vouched for, nothing kept
      this.since = st.mtimeMs;
      this.probeDev = st.dev;
      this.probeCoarse = st.mtimeMs % 1000 === 0;
      const damaged = (why: string) => this.onDamage(`${this.file} ${why}; every input file is read again`);
      const data = await readJsonIfPresent<StatCacheFile>(this.file, () => damaged('is not valid JSON')).catch(() => undefined);
      if (data === undefined) return;
      const shaped = typeof data === 'object' && data !== null && typeof data.version === 'number' && typeof data.entries === 'object' && data.entries !== null && !Array.isArray(data.entries);
      // Another version's file is just an empty cache; a damaged one is one too, and said.
      if (!shaped) damaged('is not a stat cache');
      else if (data.version === VERSION) this.entries = new Map(Object.entries(data.entries));
    })();
    return this.loaded;
  }

  /** The cache's staging directory (ingest/, swept after a crash), on the same file system as the file. */
  private staging(): string {
    return path.join(path.dirname(this.file!), 'ingest');
  }
}

/**
 * The file system's "now", taken once: a file written before the first
 * lookup, and its stat. Two caches of one run in one directory share it (an
 * earlier probe only makes the racily-clean rule stricter).
 */
class Probe {
  private taken: Promise<Stats | undefined> | undefined;

  constructor(
    private readonly file: string,
    /** Where the write is staged (the cache's ingest/, swept after a crash). */
    private readonly staging: string,
  ) {}

  /** The probe's stat, or undefined when it cannot be written (a read-only cache). */
  take(): Promise<Stats | undefined> {
    this.taken ??= writeFileAtomic(this.file, '', this.staging).then(
      () => stat(this.file),
      () => undefined,
    );
    return this.taken.catch(() => undefined);
  }
}

function matches(e: Entry, st: Stats): boolean {
  // An entry of another shape (a damaged file) matches nothing.
  return Array.isArray(e) && typeof e[5] === 'string' && e[0] === st.size && e[1] === st.mtimeMs && e[2] === st.ctimeMs && e[3] === st.ino && e[4] === st.dev;
}
