/**
 * Leases: what running builds use, so `cache prune` never takes it from under
 * them, and when each thing was last used, so prune can go least recently
 * used first.
 *
 * Words: an *item* is one thing in the cache a build can use, `<kind> <id>`:
 * `record <key>`, `blob <digest>`, `snapshot <image key>` (an unpacked image
 * under `snapshots/`), `layer <diffID hex>` (a layer snapshot under
 * `snapshots/layers/`). A process that builds with a cache directory keeps one
 * *lease* there, `leases/<ownerTag>-<random>`, a line per item it has used.
 *
 * Build side: `hold(cacheDir, kind, id)` is called where the cache is read or
 * written (the content store, step records, snapshots), *before* the item is
 * looked at or created. It appends the line (synchronously: it is on disk
 * before the caller goes on) and then checks for prune's removal window.
 *
 * Prune side: prune removes things only inside a *removal window*: it writes
 * `locks/removing`, then reads every live lease, then moves out of the way
 * what no lease holds, then deletes the marker. A hold that finds the marker
 * waits until it is gone. Each side writes, then reads what the other writes
 * (as in Dekker's algorithm), so at least one sees the other: either prune
 * reads the line and keeps the item, or the holder sees the marker and looks
 * at the item only once prune is done — finding it, or finding it gone and
 * making it again. Nothing is held by a lock while a build works.
 *
 * A dead process's lease or marker is harmless: one of this host (and pid
 * namespace, util/owner-tag.ts) whose process is gone is ignored (and the
 * next run sweeps it); another host's counts until it has gone a day
 * (leases) or two minutes (the marker) without its heartbeat.
 *
 * When a lease ends (with the last build that held through it: `openLease`),
 * every item it held is touched (`utimes` on the file that stands for it,
 * `usePath`): that mtime is the last-use time prune orders by. Nothing is
 * rewritten on a hit.
 */
import { randomBytes } from 'node:crypto';
import { closeSync, futimesSync, lstatSync, mkdirSync, openSync, statSync, utimesSync, writeSync, type Stats } from 'node:fs';
import { mkdir, readdir, readFile, rm, stat, utimes, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { asDiskFull } from '../errors.js';
import { ownerAlive, ownerTag, parseOwnerTag } from '../util/owner-tag.js';

export type LeaseKind = 'record' | 'blob' | 'snapshot' | 'layer';

/** Another host's lease counts this long after its last heartbeat (a pid means nothing there). */
const LEASE_STALE_MS = 24 * 60 * 60 * 1000;
const LEASE_HEARTBEAT_MS = 60 * 60 * 1000;
/** The removal window lasts as long as some renames; another host's marker without a heartbeat for this long is a dead prune's. */
const WINDOW_STALE_MS = 2 * 60 * 1000;
const WINDOW_HEARTBEAT_MS = 10 * 1000;
const WINDOW_POLL_MS = 50;

/**
 * The builds of this process on each cache (by resolved directory), and the
 * lease their holds go to now (made again when a hold finds none).
 */
const open = new Map<string, { builds: Set<Build>; current: ProcessLease | undefined }>();

/** A build's part in the leases it has held through: each ends with the last build in it. */
interface Build {
  leases: Set<ProcessLease>;
}

/**
 * Start holding what is used in `cacheDir` (a build does, for as long as it
 * runs). Builds of one process on one cache share a lease; when one of them
 * ends, the others go on in a new one (made at their next hold), and the old
 * one ends, marking what it held used now, with the last build that was in
 * it. So a process whose builds always overlap still ends leases — its
 * use-times get written, its lease files stay small.
 */
/** A blob file a lease touched as it ended, with its stat just before and just after (see StatCache.retouched). */
export interface Retouched {
  file: string;
  before: Stats;
  after: Stats;
}

export function openLease(cacheDir: string): { release(): Promise<Retouched[]> } {
  const root = path.resolve(cacheDir);
  let cache = open.get(root);
  if (!cache) open.set(root, (cache = { builds: new Set(), current: undefined }));
  const build: Build = { leases: new Set() };
  cache.builds.add(build);
  // Made now, not at the first hold: a cache that cannot take a lease file fails the build at its start.
  // A new one enrols every build still running too (one that ended cleared the last), or their
  // holds would go into a lease that ends with this build.
  if (cache.current) {
    cache.current.users++;
    build.leases.add(cache.current);
  } else currentLease(root);
  const mine = cache;
  let released = false;
  return {
    release: async () => {
      if (released) return [];
      released = true;
      mine.builds.delete(build);
      if (mine.builds.size === 0) open.delete(root);
      // What this build held may be in the current lease: the builds still running hold through a new one.
      mine.current = undefined;
      const ended = [...build.leases].filter((l) => --l.users === 0);
      const touched: Retouched[] = [];
      for (const l of ended) touched.push(...(await l.close()));
      return touched;
    },
  };
}

/** The lease holds of `root` go to now, made (with every running build in it) if there is none. */
function currentLease(root: string): ProcessLease | undefined {
  const cache = open.get(root);
  if (!cache) return undefined;
  if (!cache.current) {
    cache.current = new ProcessLease(root);
    for (const b of cache.builds) {
      b.leases.add(cache.current);
      cache.current.users++;
    }
  }
  return cache.current;
}

/**
 * Hold an item of `cacheDir` before looking at it or making it; nothing when
 * no build of this process has a lease there (a plan, a test's store). The
 * promise, when there is one, settles once prune's removal window is over.
 */
export function hold(cacheDir: string, kind: LeaseKind, id: string): Promise<void> | undefined {
  if (open.size === 0) return undefined;
  const lease = currentLease(open.has(cacheDir) ? cacheDir : path.resolve(cacheDir));
  return lease?.hold(`${kind} ${id}`);
}

/** The file whose mtime says when an item was last used (and which prune removes last of the item's files). */
export function usePath(cacheDir: string, kind: LeaseKind, id: string): string {
  switch (kind) {
    case 'record':
      return path.join(cacheDir, 'records', `${id}.json`);
    case 'blob':
      return path.join(cacheDir, 'blobs', 'sha256', id.slice('sha256:'.length));
    case 'snapshot':
      return path.join(cacheDir, 'snapshots', `${id}.snapshot.json`);
    case 'layer':
      return path.join(cacheDir, 'snapshots', 'layers', `${id}.stamp`);
  }
}

/** Every item a live lease holds, and how many live leases there are. */
export async function readLeases(cacheDir: string): Promise<{ items: Set<string>; holders: number }> {
  const dir = path.join(cacheDir, 'leases');
  const items = new Set<string>();
  let holders = 0;
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    const owner = parseOwnerTag(name);
    if (!owner) continue;
    const file = path.join(dir, name);
    const st = await stat(file).catch(() => undefined);
    if (!st || !ownerAlive(owner, st.mtimeMs, LEASE_STALE_MS)) continue; // dead: the next run sweeps it
    const text = await readFile(file, 'utf8').catch(() => '');
    holders++;
    for (const line of text.split('\n')) if (line) items.add(line);
  }
  return { items, holders };
}

/**
 * Run `remove` inside a removal window, with the items live leases hold. The
 * caller must be the only remover of the cache (maintenance-lock.ts), and
 * should only rename inside the window: builds that need an item wait for it.
 */
export async function withRemovalWindow<T>(cacheDir: string, remove: (held: Set<string>) => Promise<T>): Promise<T> {
  const marker = windowMarker(cacheDir);
  await mkdir(path.dirname(marker), { recursive: true });
  // The owner tag ends in `-` so that parseOwnerTag reads it as it reads file names.
  await writeFile(marker, `${ownerTag()}-removing\n`);
  const beat = setInterval(() => {
    const now = new Date();
    utimes(marker, now, now).catch(() => undefined);
  }, WINDOW_HEARTBEAT_MS);
  beat.unref();
  try {
    // Only now, with the marker written: a hold whose line this misses sees the marker and waits.
    const { items } = await readLeases(cacheDir);
    return await remove(items);
  } finally {
    clearInterval(beat);
    await rm(marker, { force: true });
  }
}

class ProcessLease {
  users = 0;
  /** Held items; a promise while the item waits for a removal window to end. */
  private readonly items = new Map<string, Promise<void> | undefined>();
  private readonly file: string;
  private readonly fd: number;
  private readonly heartbeat: NodeJS.Timeout;
  private deadMarker: { ino: number; mtimeMs: number } | undefined;

  constructor(private readonly root: string) {
    const dir = path.join(root, 'leases');
    this.file = path.join(dir, `${ownerTag()}-${randomBytes(4).toString('hex')}`);
    try {
      mkdirSync(dir, { recursive: true });
      this.fd = openSync(this.file, 'a', 0o644);
    } catch (err) {
      throw asDiskFull(err, this.file);
    }
    this.heartbeat = setInterval(() => {
      try {
        futimesSync(this.fd, new Date(), new Date());
      } catch {
        // closed meanwhile
      }
    }, LEASE_HEARTBEAT_MS);
    this.heartbeat.unref();
  }

  hold(item: string): Promise<void> | undefined {
    if (this.items.has(item)) return this.items.get(item);
    try {
      writeSync(this.fd, `${item}\n`);
    } catch (err) {
      throw asDiskFull(err, this.file);
    }
    const marker = statSync(windowMarker(this.root), { throwIfNoEntry: false });
    // A killed prune's marker stays until the next prune: once found dead, it is not read again.
    if (!marker || (marker.ino === this.deadMarker?.ino && marker.mtimeMs === this.deadMarker.mtimeMs)) {
      this.items.set(item, undefined);
      return undefined;
    }
    const wait = this.waitForWindow().then(() => void this.items.set(item, undefined));
    this.items.set(item, wait);
    return wait;
  }

  private async waitForWindow(): Promise<void> {
    const marker = windowMarker(this.root);
    for (;;) {
      const st = await stat(marker).catch(() => undefined);
      if (!st) return;
      const owner = parseOwnerTag((await readFile(marker, 'utf8').catch(() => '')).trim());
      // A marker still being written has no owner yet: young, it counts.
      const live = owner ? ownerAlive(owner, st.mtimeMs, WINDOW_STALE_MS) : Date.now() - st.mtimeMs < WINDOW_STALE_MS;
      if (!live) {
        this.deadMarker = { ino: st.ino, mtimeMs: st.mtimeMs };
        return;
      }
      await sleep(WINDOW_POLL_MS);
    }
  }

  /** Ends the lease; returns the blobs it touched, with their stats (a stat cache may vouch for them by stat). */
  async close(): Promise<Retouched[]> {
    clearInterval(this.heartbeat);
    closeSync(this.fd);
    // Last use, before the lease goes: prune orders by these times. One
    // synchronous call each is several times faster than through the thread pool.
    const now = new Date();
    const touched: Retouched[] = [];
    for (const item of this.items.keys()) {
      const space = item.indexOf(' ');
      const kind = item.slice(0, space) as LeaseKind;
      const file = usePath(this.root, kind, item.slice(space + 1));
      try {
        const before = kind === 'blob' ? lstatSync(file) : undefined;
        utimesSync(file, now, now);
        if (before) touched.push({ file, before, after: lstatSync(file) });
      } catch {
        // gone (a miss that failed), or not ours to touch
      }
    }
    await rm(this.file, { force: true });
    return touched;
  }
}

function windowMarker(cacheDir: string): string {
  return path.join(cacheDir, 'locks', 'removing');
}

