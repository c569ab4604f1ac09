/**
 * `layergraph cache prune`: give disk space back, least recently used first,
 * never taking what a running build uses.
 *
 * The cache is cut into *units*, each removed whole or not at all:
 * - a step record, with its log, and — once no record left names them — its
 *   layer blob and that layer's snapshot: a record never points at a missing blob;
 * - a blob no record names (a base image's layer, a config, a manifest);
 * - an image snapshot (`snapshots/<key>` and its `.snapshot.json`), a layer
 *   snapshot no record's layer names (`snapshots/layers/<hex>` and its `.stamp`);
 * - a log of a step that has no record (it failed), a base's directory list.
 *
 * Without limits, prune removes only what is broken or dangling (a record
 * whose blob is gone, a snapshot without the file that vouches for it, a
 * name whose record is gone) and what killed runs left. `olderThanMs`
 * removes units not used for that long; `keepStorage` then goes on, least
 * recently used first, until the cache is that small. A unit a live lease
 * holds is kept (cache/leases.ts); it is removed inside the removal window,
 * by renaming its files into a temp directory that is deleted afterwards, so
 * builds wait only for renames, and a reader never sees half a unit. A build
 * that ran between the scan and the window has no lease left to say what it
 * used: so a unit used since the scan (its use-time newer than the scan's
 * start), or named by a record written since, is kept too.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { mkdir, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { sweepStale } from '../build/sweep.js';
import { ownerTag } from '../util/owner-tag.js';
import { readLeases, usePath, withRemovalWindow, type LeaseKind } from './leases.js';
import { acquireMaintenanceLock } from './maintenance-lock.js';
import { inventoryBytes, readStepName, readStepRecord, scanCache, type CacheFile, type CacheInventory, type SnapshotFiles, SNAPSHOT_META } from './usage.js';

export interface PruneOptions {
  /** Remove least recently used units until the cache holds at most this many bytes. */
  keepStorage?: number;
  /** Remove units not used for this long. */
  olderThanMs?: number;
  /** Only say what would be removed. */
  dryRun?: boolean;
  /** Told who holds the cache's maintenance lock when prune has to wait for it. */
  onWait?: (holder: string) => void;
  /** Called between the scan and the removal window: tests act in that gap, as a build may. */
  afterScan?: () => Promise<void>;
}

export type PrunedKind = 'records' | 'blobs' | 'snapshots' | 'logs' | 'other';

export interface PruneReport {
  cacheDir: string;
  dryRun: boolean;
  /** Units removed (or, with dryRun, that would be), by kind. */
  removed: Record<PrunedKind, number>;
  freedBytes: number;
  /** Units that would have gone but a running build uses. */
  inUse: number;
  bytesBefore: number;
  bytesAfter: number;
}

interface Unit {
  kind: PrunedKind;
  lastUse: number;
  /** Broken or dangling: removed whatever the limits. */
  garbage: boolean;
  /** Lease items (`<kind> <id>`) any of which keeps the unit. */
  holds: string[];
  /** Removed in this order: the one a reader looks for first goes first. */
  files: CacheFile[];
  /** For a record: its layer's blob and diffID hex, freed with the last record that names them. */
  layer?: { digest: string; diffHex: string };
  /** Checked again just before removal (a name whose record came back). */
  stillWanted?: () => boolean;
  /** For a record: the names (`names/`) pointing at it, removed with it unless they point elsewhere by then. */
  names?: Array<CacheFile & { key: string | undefined }>;
}

export async function pruneCache(cacheDir: string, opts: PruneOptions = {}): Promise<PruneReport> {
  const dryRun = opts.dryRun ?? false;
  const empty: PruneReport = { cacheDir, dryRun, removed: { records: 0, blobs: 0, snapshots: 0, logs: 0, other: 0 }, freedBytes: 0, inUse: 0, bytesBefore: 0, bytesAfter: 0 };
  if (!existsSync(cacheDir)) return empty;
  const lock = dryRun ? undefined : await acquireMaintenanceLock(cacheDir, opts.onWait);
  try {
    if (!dryRun) await sweepStale(cacheDir);
    if (dryRun) {
      const inv = await scanCache(cacheDir);
      return report(empty, inv, choose(unitsOf(inv), inv, (await readLeases(cacheDir)).items, opts, Date.now(), () => false));
    }
    const trash = path.join(cacheDir, 'tmp', `${ownerTag()}-prune-${randomBytes(4).toString('hex')}`);
    await mkdir(trash, { recursive: true });
    try {
      // Before the scan, and by the file system's clock, the one use-times are written with.
      const scannedAt = (await stat(trash)).mtimeMs;
      const inv = await scanCache(cacheDir);
      inv.temp = inv.temp.filter((f) => f.path !== trash); // prune's own, not the cache's
      const units = unitsOf(inv);
      const now = Date.now();
      await opts.afterScan?.();
      const chosen = await withRemovalWindow(cacheDir, async (held) => {
        // A build that ran between the scan and the window has no lease left; what it used or wrote is newer than the scan.
        const c = choose(units, inv, held, opts, now, usedSince(cacheDir, scannedAt));
        const removed: Unit[] = [];
        for (const unit of c.units) {
          if (unit.stillWanted && !unit.stillWanted()) continue;
          for (const f of unit.files) await moveAside(f.path, path.join(trash, String(removed.length), path.basename(f.path)));
          for (const n of unit.names ?? []) {
            if (readStepName(n.path) === n.key) await moveAside(n.path, path.join(trash, String(removed.length), path.basename(n.path)));
          }
          removed.push(unit);
        }
        return { units: removed, inUse: c.inUse };
      });
      return report(empty, inv, chosen);
    } finally {
      await rm(trash, { recursive: true, force: true });
    }
  } finally {
    await lock?.release();
  }
}

function report(empty: PruneReport, inv: CacheInventory, chosen: { units: Unit[]; inUse: number }): PruneReport {
  const removed = { ...empty.removed };
  let freed = 0;
  for (const u of chosen.units) {
    removed[u.kind]++;
    freed += [...u.files, ...(u.names ?? [])].reduce((n, f) => n + f.bytes, 0);
  }
  const before = inventoryBytes(inv);
  return { ...empty, removed, freedBytes: freed, inUse: chosen.inUse, bytesBefore: before, bytesAfter: before - freed };
}

/**
 * The units to remove, in order: garbage first, then by last use. A record's
 * blob and layer snapshot join the list when the last record naming them
 * does (unless something holds them).
 */
function choose(
  all: { units: Unit[]; dependents: Map<string, Unit> },
  inv: CacheInventory,
  held: Set<string>,
  opts: PruneOptions,
  now: number,
  /** Used since the scan: kept, as if held (but not counted as in use). */
  recent: (u: Unit) => boolean,
): { units: Unit[]; inUse: number } {
  const refs = new Map<string, number>();
  for (const u of all.units) {
    if (!u.layer) continue;
    for (const id of [`blob ${u.layer.digest}`, `layer ${u.layer.diffHex}`]) refs.set(id, (refs.get(id) ?? 0) + 1);
  }
  let total = inventoryBytes(inv);
  const cutoff = opts.olderThanMs === undefined ? -Infinity : now - opts.olderThanMs;
  const sorted = [...all.units].sort((a, b) => Number(b.garbage) - Number(a.garbage) || a.lastUse - b.lastUse);
  const out: Unit[] = [];
  let inUse = 0;
  const take = (u: Unit): void => {
    out.push(u);
    total -= u.files.reduce((n, f) => n + f.bytes, 0);
  };
  for (const u of sorted) {
    const wanted = u.garbage || u.lastUse < cutoff || (opts.keepStorage !== undefined && total > opts.keepStorage);
    if (!wanted) continue;
    if (u.holds.some((h) => held.has(h))) {
      inUse++;
      continue;
    }
    if (recent(u)) continue;
    take(u);
    if (!u.layer) continue;
    for (const id of [`blob ${u.layer.digest}`, `layer ${u.layer.diffHex}`]) {
      const left = refs.get(id)! - 1;
      refs.set(id, left);
      const dep = all.dependents.get(id);
      if (left === 0 && dep && !dep.holds.some((h) => held.has(h)) && !recent(dep)) take(dep);
    }
  }
  return { units: out, inUse };
}

function unitsOf(inv: CacheInventory): { units: Unit[]; dependents: Map<string, Unit> } {
  const units: Unit[] = [];
  /** Blobs and layer snapshots some record names: freed with the last of those records. */
  const dependents = new Map<string, Unit>();
  const named = new Set<string>();
  const namesOf = new Map<string, CacheInventory['names']>();
  for (const n of inv.names) if (n.key) namesOf.set(n.key, [...(namesOf.get(n.key) ?? []), n]);
  for (const [key, r] of inv.records) {
    const log = inv.logs.get(key);
    const files = [r, ...(log ? [log] : [])];
    const names = namesOf.get(key) ?? [];
    const layer = r.record?.layer;
    const broken = !r.record || (layer && !inv.blobs.has(layer.digest));
    if (broken || !layer) {
      // Checked again at removal: a build may have written the record anew meanwhile.
      const stillBroken = (): boolean => {
        const now = readStepRecord(r.path, key);
        return !now || (now.layer !== null && !existsSync(path.join(inv.root, 'blobs', 'sha256', now.layer.digest.slice('sha256:'.length))));
      };
      units.push({ kind: 'records', lastUse: r.lastUse, garbage: !!broken, holds: [`record ${key}`], files, names, ...(broken ? { stillWanted: stillBroken } : {}) });
      continue;
    }
    const diffHex = layer.diffId.slice('sha256:'.length);
    units.push({ kind: 'records', lastUse: r.lastUse, garbage: false, holds: [`record ${key}`], files, names, layer: { digest: layer.digest, diffHex } });
    named.add(`blob ${layer.digest}`).add(`layer ${diffHex}`);
  }
  for (const [digest, f] of inv.blobs) {
    const unit: Unit = { kind: 'blobs', lastUse: f.lastUse, garbage: false, holds: [`blob ${digest}`], files: [f] };
    if (named.has(`blob ${digest}`)) dependents.set(`blob ${digest}`, unit);
    else units.push(unit);
  }
  for (const [key, s] of inv.snapshots) units.push(snapshotUnit(s, `snapshot ${key}`));
  for (const [hex, s] of inv.layerSnapshots) {
    const unit = snapshotUnit(s, `layer ${hex}`);
    if (named.has(`layer ${hex}`) && !unit.garbage) dependents.set(`layer ${hex}`, unit);
    else units.push(unit);
  }
  for (const [key, f] of inv.logs) {
    if (!inv.records.has(key)) units.push({ kind: 'logs', lastUse: f.lastUse, garbage: false, holds: [`record ${key}`], files: [f] });
  }
  for (const f of inv.derived) {
    if (path.basename(path.dirname(f.path)) === 'layers') continue; // the mount stubs: tiny, and every run mounts them
    units.push({ kind: 'other', lastUse: f.lastUse, garbage: false, holds: [], files: [f] });
  }
  for (const n of inv.names) {
    // A name whose record is gone explains nothing (a damaged record's names go with it).
    const record = n.key && path.join(inv.root, 'records', `${n.key}.json`);
    if (!n.key || !inv.records.has(n.key)) {
      units.push({ kind: 'other', lastUse: n.lastUse, garbage: true, holds: [], files: [n], stillWanted: () => !record || !existsSync(record) });
    }
  }
  return { units, dependents };
}

/**
 * Whether a unit was used since `since` (ms, file system clock): its
 * use-time (`usePath`, or its files' when it has no lease item) is newer,
 * or a record written since then names it (a build killed before it could
 * mark what it used still wrote its record). Read in the removal window,
 * after the builds that ran since the scan; each unit is looked at once.
 */
function usedSince(root: string, since: number): (u: Unit) => boolean {
  const newer = (file: string, slack = 0): boolean => (statSync(file, { throwIfNoEntry: false })?.mtimeMs ?? -Infinity) >= since + slack;
  let named: Set<string> | undefined;
  const namedByNewRecords = (): Set<string> => {
    if (named) return named;
    named = new Set();
    const dir = path.join(root, 'records');
    for (const name of readdirOr(dir)) {
      const file = path.join(dir, name);
      if (!name.endsWith('.json') || !newer(file)) continue;
      const layer = readStepRecord(file, name.slice(0, -'.json'.length))?.layer;
      if (layer) named.add(`blob ${layer.digest}`).add(`layer ${layer.diffId.slice('sha256:'.length)}`);
    }
    return named;
  };
  return (u) => {
    if (u.holds.length === 0) return u.files.some((f) => newer(f.path));
    return u.holds.some((h) => {
      const space = h.indexOf(' ');
      return newer(usePath(root, h.slice(0, space) as LeaseKind, h.slice(space + 1)), USE_TIME_SLACK_MS) || namedByNewRecords().has(h);
    });
  };
}

/**
 * Use-times are set with the wall clock (utimes), which runs up to a timer
 * tick ahead of the file system's coarse clock that `since` comes from: a
 * use that ended just before the scan could look newer than it. Only
 * last-use order depends on this; what a build wrote is found by its
 * records' own (file-system clock) times, with no slack.
 */
const USE_TIME_SLACK_MS = 20;

function readdirOr(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

/** A snapshot goes directory first (a reader that finds it finds it whole); one missing either half is garbage. */
function snapshotUnit(s: SnapshotFiles, hold: string): Unit {
  const files = [s.dir, s.meta, s.legacy].filter((f): f is CacheFile => f !== undefined);
  const garbage = !s.dir || !s.meta;
  // Half of it may have been made since the scan (the tree goes first, then the file beside it).
  const stillWanted = () => files.every((f) => existsSync(f.path)) && !existsSync(s.dir ? metaOf(s.dir.path) : dirOf((s.meta ?? s.legacy)!.path));
  return { kind: 'snapshots', lastUse: s.meta?.lastUse ?? s.dir?.lastUse ?? s.legacy!.lastUse, garbage, holds: [hold], files, ...(garbage ? { stillWanted } : {}) };
}

/** The file beside a snapshot that vouches for it, and the other way round. */
function metaOf(dir: string): string {
  return path.basename(path.dirname(dir)) === 'layers' ? `${dir}.stamp` : `${dir}${SNAPSHOT_META}`;
}

function dirOf(meta: string): string {
  return meta.replace(/\.(stamp|snapshot\.json|modes\.json)$/, '');
}

async function moveAside(from: string, to: string): Promise<void> {
  await mkdir(path.dirname(to), { recursive: true });
  await rename(from, to).catch(async (err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return; // gone already
    if (err.code === 'EXDEV') return rm(from, { recursive: true, force: true });
    throw err;
  });
}
