/**
 * What a cache directory holds, entry by entry (`scanCache`), and how much
 * of it there is of each kind (`cacheUsage`, for `layergraph cache du`).
 *
 * Sizes are disk usage (allocated blocks), a file with several links
 * counted once. An entry's `lastUse` is the mtime of the file that stands
 * for it (cache/leases.ts `usePath`: a build touches it when it ends), so
 * prune can go least recently used first.
 *
 * The scan reads the directory as it is, while builds may be writing it: an
 * entry that appears meanwhile is simply not in it, one that goes is skipped.
 */
import { lstatSync, openSync, readdirSync, readFileSync, readSync, closeSync, type Stats } from 'node:fs';
import path from 'node:path';
import type { StepRecord } from './step-records.js';
import { readLeases } from './leases.js';

export interface CacheFile {
  path: string;
  /** Disk usage, what is under it included. */
  bytes: number;
  /** The file's own length (for a blob: what a record's layer size is checked against). */
  size: number;
  /** Milliseconds since the epoch. */
  lastUse: number;
}

/** A snapshot and the file beside it that vouches for it (`.snapshot.json`, `.stamp`); either may be missing. */
export interface SnapshotFiles {
  dir?: CacheFile;
  meta?: CacheFile;
  /** An older layergraph's `<key>.modes.json`, ignored by builds: removed with the snapshot. */
  legacy?: CacheFile;
}

export interface CacheInventory {
  root: string;
  exists: boolean;
  /** By key; `record` undefined when the file is not a step record (damaged). */
  records: Map<string, CacheFile & { record: StepRecord | undefined }>;
  /** By digest (`sha256:…`). */
  blobs: Map<string, CacheFile>;
  /** `names/`: the key each image/step had last (undefined when unreadable). */
  names: Array<CacheFile & { key: string | undefined }>;
  /** `snapshots/<image key>` and its `.snapshot.json`, by image key. */
  snapshots: Map<string, SnapshotFiles>;
  /** `snapshots/layers/<diffID hex>` and its `.stamp`, by diffID hex. */
  layerSnapshots: Map<string, SnapshotFiles>;
  /** `logs/<key>.log`, by key. */
  logs: Map<string, CacheFile>;
  /** `bases/` (what was worked out once about base images' layers) and the overlay mount stubs: made again when missing. */
  derived: CacheFile[];
  statCache: CacheFile[];
  /** `tmp/` and `ingest/` entries: running builds' work and what killed ones left. */
  temp: CacheFile[];
  /** `leases/` and `locks/`: who is using the cache now. */
  infra: CacheFile[];
  other: CacheFile[];
}

const HEX64 = /^[0-9a-f]{64}$/;
/** Beside an image snapshot: its modes and stamp (build/snapshots.ts SNAPSHOT_META). */
export const SNAPSHOT_META = '.snapshot.json';
/** What an older layergraph kept beside an image snapshot (build/snapshots.ts no longer reads it). */
const LEGACY_META = '.modes.json';
const KEY = /^[0-9a-f]{16,128}$/;
/** Entries of the mount stubs' lower (snapshotter.ts): never pruned, counted with the snapshots. */
const MOUNT_STUBS = /^mount-stubs-v\d+$/;

export async function scanCache(root: string): Promise<CacheInventory> {
  const inv: CacheInventory = {
    root,
    exists: statOf(root)?.isDirectory() ?? false,
    records: new Map(),
    blobs: new Map(),
    names: [],
    snapshots: new Map(),
    layerSnapshots: new Map(),
    logs: new Map(),
    derived: [],
    statCache: [],
    temp: [],
    infra: [],
    other: [],
  };
  if (!inv.exists) return inv;
  const seen = new Set<string>();
  const entry = (abs: string): CacheFile | undefined => {
    const st = statOf(abs);
    return st ? { path: abs, bytes: diskUsage(abs, st, seen), size: st.size, lastUse: st.mtimeMs } : undefined;
  };
  // Records before blobs: a record is written after its blob, so one the scan finds has its blob in the scan too.
  for (const name of list(root).sort((x, y) => Number(y === 'records') - Number(x === 'records'))) {
    const abs = path.join(root, name);
    switch (name) {
      case 'records':
        for (const n of list(abs)) {
          const f = entry(path.join(abs, n));
          const key = n.endsWith('.json') ? n.slice(0, -'.json'.length) : '';
          if (f && KEY.test(key)) inv.records.set(key, { ...f, record: readStepRecord(f.path, key) });
          else if (f) inv.other.push(f);
        }
        break;
      case 'blobs':
        for (const algo of list(abs)) {
          const dir = path.join(abs, algo);
          for (const n of algo === 'sha256' ? list(dir) : []) {
            const f = entry(path.join(dir, n));
            if (f && HEX64.test(n)) inv.blobs.set(`sha256:${n}`, f);
            else if (f) inv.other.push(f);
          }
          if (algo !== 'sha256') pushIf(inv.other, entry(dir));
        }
        break;
      case 'names':
        for (const n of list(abs)) {
          const f = entry(path.join(abs, n));
          if (f) inv.names.push({ ...f, key: readStepName(f.path) });
        }
        break;
      case 'snapshots':
        scanSnapshots(abs, inv, entry);
        break;
      case 'logs':
        for (const n of list(abs)) {
          const f = entry(path.join(abs, n));
          const key = n.endsWith('.log') ? n.slice(0, -'.log'.length) : '';
          if (f && KEY.test(key)) inv.logs.set(key, f);
          else if (f) inv.other.push(f);
        }
        break;
      case 'bases':
        for (const n of list(abs)) pushIf(inv.derived, entry(path.join(abs, n)));
        break;
      case 'leases':
      case 'locks':
        pushIf(inv.infra, entry(abs));
        break;
      case 'tmp':
      case 'ingest':
        for (const n of list(abs)) pushIf(inv.temp, entry(path.join(abs, n)));
        break;
      default:
        if (name.startsWith('stat-cache')) pushIf(inv.statCache, entry(abs));
        else pushIf(inv.other, entry(abs));
    }
  }
  return inv;
}

function scanSnapshots(dir: string, inv: CacheInventory, entry: (abs: string) => CacheFile | undefined): void {
  const slot = (m: Map<string, SnapshotFiles>, id: string): SnapshotFiles => {
    let s = m.get(id);
    if (!s) m.set(id, (s = {}));
    return s;
  };
  for (const name of list(dir)) {
    const abs = path.join(dir, name);
    if (name === 'layers') {
      for (const n of list(abs)) {
        const f = entry(path.join(abs, n));
        if (!f) continue;
        if (HEX64.test(n)) slot(inv.layerSnapshots, n).dir = f;
        else if (n.endsWith('.stamp') && HEX64.test(n.slice(0, -'.stamp'.length))) slot(inv.layerSnapshots, n.slice(0, -'.stamp'.length)).meta = f;
        else if (MOUNT_STUBS.test(n)) inv.derived.push(f);
        else inv.other.push(f);
      }
      continue;
    }
    const f = entry(abs);
    if (!f) continue;
    if (KEY.test(name)) slot(inv.snapshots, name).dir = f;
    else if (name.endsWith(SNAPSHOT_META) && KEY.test(name.slice(0, -SNAPSHOT_META.length))) slot(inv.snapshots, name.slice(0, -SNAPSHOT_META.length)).meta = f;
    else if (name.endsWith(LEGACY_META) && KEY.test(name.slice(0, -LEGACY_META.length))) slot(inv.snapshots, name.slice(0, -LEGACY_META.length)).legacy = f;
    else inv.other.push(f);
  }
}

export type UsageKind = 'layers' | 'configs' | 'records' | 'snapshots' | 'logs' | 'stat-cache' | 'temp' | 'other';

export const USAGE_KINDS: ReadonlyArray<{ kind: UsageKind; label: string }> = [
  { kind: 'layers', label: 'layer blobs' },
  { kind: 'configs', label: 'config/manifest blobs' },
  { kind: 'records', label: 'step records' },
  { kind: 'snapshots', label: 'snapshots' },
  { kind: 'logs', label: 'logs' },
  { kind: 'stat-cache', label: 'stat cache' },
  { kind: 'temp', label: 'temp/ingest' },
  { kind: 'other', label: 'other' },
];

export interface CacheUsage {
  cacheDir: string;
  exists: boolean;
  totalBytes: number;
  kinds: Array<{ kind: UsageKind; label: string; count: number; bytes: number }>;
  /** Processes building with this cache now (their leases). */
  runningBuilds: number;
}

/** Sizes by kind. A blob is a layer when a record names it as one, or when its bytes are not JSON (a base image's layer). */
export async function cacheUsage(cacheDir: string): Promise<CacheUsage> {
  const inv = await scanCache(cacheDir);
  const layerDigests = new Set([...inv.records.values()].flatMap((r) => (r.record?.layer ? [r.record.layer.digest] : [])));
  const sums = new Map<UsageKind, { count: number; bytes: number }>(USAGE_KINDS.map((k) => [k.kind, { count: 0, bytes: 0 }]));
  const add = (kind: UsageKind, files: Array<CacheFile | undefined>, count = files.filter(Boolean).length): void => {
    const s = sums.get(kind)!;
    s.count += count;
    for (const f of files) s.bytes += f?.bytes ?? 0;
  };
  for (const [digest, f] of inv.blobs) add(layerDigests.has(digest) || !looksLikeJson(f.path) ? 'layers' : 'configs', [f]);
  add('records', [...inv.records.values()]);
  add('records', inv.names, 0);
  for (const s of [...inv.snapshots.values(), ...inv.layerSnapshots.values()]) add('snapshots', [s.dir, s.meta, s.legacy], 1);
  add('snapshots', inv.derived, 0);
  add('logs', [...inv.logs.values()]);
  add('stat-cache', inv.statCache.filter((f) => !f.path.endsWith('.probe')));
  add('stat-cache', inv.statCache.filter((f) => f.path.endsWith('.probe')), 0);
  add('temp', inv.temp);
  add('other', inv.other);
  add('other', inv.infra, 0);
  const kinds = USAGE_KINDS.map(({ kind, label }) => ({ kind, label, ...sums.get(kind)! }));
  return {
    cacheDir,
    exists: inv.exists,
    totalBytes: kinds.reduce((n, k) => n + k.bytes, 0),
    kinds,
    runningBuilds: inv.exists ? (await readLeases(cacheDir)).holders : 0,
  };
}

/** Every byte the inventory counts. */
export function inventoryBytes(inv: CacheInventory): number {
  let n = 0;
  const add = (f: CacheFile | undefined): void => void (n += f?.bytes ?? 0);
  [...inv.records.values(), ...inv.blobs.values(), ...inv.names, ...inv.logs.values(), ...inv.derived, ...inv.statCache, ...inv.temp, ...inv.infra, ...inv.other].forEach(add);
  for (const s of [...inv.snapshots.values(), ...inv.layerSnapshots.values()]) {
    add(s.dir);
    add(s.meta);
    add(s.legacy);
  }
  return n;
}

/** A step record as `StepRecords.put` writes it for `key`, or undefined (missing or damaged). */
export function readStepRecord(file: string, key: string): StepRecord | undefined {
  let r: Partial<StepRecord> | null;
  try {
    r = JSON.parse(readFileSync(file, 'utf8')) as Partial<StepRecord> | null;
  } catch {
    return undefined;
  }
  if (typeof r !== 'object' || r === null || r.key !== key || r.recordVersion !== 1) return undefined;
  const l = r.layer;
  if (l === null) return r as StepRecord;
  const digest = /^sha256:[0-9a-f]{64}$/;
  if (typeof l !== 'object' || l === undefined || !digest.test(String(l.digest)) || !digest.test(String(l.diffId)) || !Number.isSafeInteger(l.size)) return undefined;
  return r as StepRecord;
}

/** The key a `names/` file points at, or undefined (missing or damaged). */
export function readStepName(file: string): string | undefined {
  try {
    const key = (JSON.parse(readFileSync(file, 'utf8')) as { key?: unknown } | null)?.key;
    return typeof key === 'string' && KEY.test(key) ? key : undefined;
  } catch {
    return undefined;
  }
}

/** Configs, manifests and other small JSON start with `{` (layers are gzip or tar). */
function looksLikeJson(file: string): boolean {
  let fd: number | undefined;
  try {
    fd = openSync(file, 'r');
    const buf = Buffer.alloc(16);
    const n = readSync(fd, buf, 0, buf.length, 0);
    return /^\s*[{[]/.test(buf.subarray(0, n).toString('latin1'));
  } catch {
    return false;
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/** Disk usage of `abs` and everything under it; files with several links are counted once (`seen`). */
function diskUsage(abs: string, st: Stats, seen: Set<string>): number {
  if (st.nlink > 1 && !st.isDirectory()) {
    const id = `${st.dev}:${st.ino}`;
    if (seen.has(id)) return 0;
    seen.add(id);
  }
  let n = st.blocks * 512;
  if (st.isDirectory()) {
    for (const name of list(abs)) {
      const child = path.join(abs, name);
      const cst = statOf(child);
      if (cst) n += diskUsage(child, cst, seen);
    }
  }
  return n;
}

function statOf(abs: string): Stats | undefined {
  try {
    return lstatSync(abs);
  } catch {
    return undefined;
  }
}

function list(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

function pushIf(to: CacheFile[], f: CacheFile | undefined): void {
  if (f) to.push(f);
}
