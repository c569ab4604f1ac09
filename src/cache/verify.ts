/**
 * `layergraph cache verify`: hash every blob again, check every step
 * record against the blob it names, and every snapshot (image and layer)
 * against its stamp (snapshot/tree-stamp.ts; a snapshot no live build holds
 * that does not match is removed, and unpacked again when next needed). Each bad thing is reported once (a bad
 * blob with the records that name it), then removed — the blob, and the
 * records that name it — so the next build rebuilds those steps instead of
 * using them. `dryRun` only reports.
 *
 * A blob is moved aside before it is deleted, and hashed again there: if a
 * build wrote good bytes under that name meanwhile (a commit renames over
 * it), what was moved aside is those, and it goes back. A record is removed
 * only while the blob it names is still missing, so verify never leaves a
 * record without its blob, nor removes one a build has just made good.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import { heldElsewhere } from '../snapshot/held-elsewhere.js';
import { treeStampIfReadable } from '../snapshot/tree-stamp.js';
import { ownerTag } from '../util/owner-tag.js';
import { sha256File } from './content-store.js';
import { StatCache } from '../context/stat-cache.js';
import { acquireMaintenanceLock } from './maintenance-lock.js';
import { readStepRecord, scanCache, SNAPSHOT_META } from './usage.js';

export interface VerifyOptions {
  /** Only report. */
  dryRun?: boolean;
  /** Stops hashing; what was found so far is reported, nothing is removed. */
  signal?: AbortSignal;
  /** Told who holds the cache's maintenance lock when verify has to wait for it. */
  onWait?: (holder: string) => void;
  /** Blobs hashed at once (default 4). */
  concurrency?: number;
}

export interface VerifyProblem {
  kind: 'blob' | 'record' | 'snapshot';
  /** The blob's digest, the record's key, or the snapshot's image key or diffID hex. */
  id: string;
  path: string;
  problem: string;
  /** For a blob: the keys of the step records that name it (removed with it). */
  records?: string[];
}

export interface VerifyReport {
  cacheDir: string;
  dryRun: boolean;
  /** Blobs hashed, their bytes, and step records checked. */
  blobs: number;
  bytes: number;
  records: number;
  /** Snapshots checked against their stamps. */
  snapshots: number;
  problems: VerifyProblem[];
  removed: { blobs: number; records: number; snapshots: number };
  /** Stopped by the signal before every blob was hashed. */
  interrupted?: boolean;
}

export async function verifyCache(cacheDir: string, opts: VerifyOptions = {}): Promise<VerifyReport> {
  const dryRun = opts.dryRun ?? false;
  const rep: VerifyReport = { cacheDir, dryRun, blobs: 0, bytes: 0, records: 0, snapshots: 0, problems: [], removed: { blobs: 0, records: 0, snapshots: 0 } };
  if (!existsSync(cacheDir)) return rep;
  const lock = dryRun ? undefined : await acquireMaintenanceLock(cacheDir, opts.onWait);
  try {
    const inv = await scanCache(cacheDir);
    const badBlobs = new Map<string, VerifyProblem>();
    const queue = [...inv.blobs];
    const worker = async (): Promise<void> => {
      for (let next = queue.shift(); next; next = queue.shift()) {
        if (opts.signal?.aborted) return;
        const [digest, f] = next;
        const problem = await blobProblem(f.path, digest);
        if (problem === 'gone') continue;
        rep.blobs++;
        rep.bytes += f.size;
        if (problem) badBlobs.set(digest, { kind: 'blob', id: digest, path: f.path, problem, records: [] });
      }
    };
    await Promise.all(Array.from({ length: Math.max(1, opts.concurrency ?? 4) }, worker));
    if (opts.signal?.aborted) rep.interrupted = true;

    const badRecords: VerifyProblem[] = [];
    for (const [key, r] of inv.records) {
      rep.records++;
      const layer = r.record?.layer;
      const blob = layer ? inv.blobs.get(layer.digest) : undefined;
      let problem: string | undefined;
      if (!r.record) problem = 'not a valid step record';
      else if (layer && badBlobs.has(layer.digest)) badBlobs.get(layer.digest)!.records!.push(key);
      else if (layer && !blob && !existsSync(blobPath(cacheDir, layer.digest))) problem = `its layer blob ${layer.digest} is missing`;
      else if (layer && blob && blob.size !== layer.size) problem = `its layer blob ${layer.digest} is ${blob.size} bytes, but the record says ${layer.size}`;
      if (problem) badRecords.push({ kind: 'record', id: key, path: r.path, problem });
    }
    const badSnapshots: VerifyProblem[] = [];
    for (const [id, s] of [...inv.snapshots, ...inv.layerSnapshots]) {
      if (opts.signal?.aborted) break;
      if (!s.dir || !s.meta) continue; // half made or half removed: prune's, and a build unpacks it again
      rep.snapshots++;
      const problem = snapshotProblem(s.dir.path, s.meta.path);
      if (problem) badSnapshots.push({ kind: 'snapshot', id, path: s.dir.path, problem });
    }
    if (opts.signal?.aborted) rep.interrupted = true;
    rep.problems = [...badBlobs.values(), ...badRecords, ...badSnapshots];
    // Builds vouch for a blob they hashed once by its stat; a bad one, removed or not (dry run), is hashed again.
    if (badBlobs.size) await StatCache.forBlobs(cacheDir).forget([...badBlobs.values()].map((b) => b.path));
    if (dryRun || rep.interrupted || rep.problems.length === 0) return rep;

    const trash = path.join(cacheDir, 'tmp', `${ownerTag()}-verify-${randomBytes(4).toString('hex')}`);
    await mkdir(trash, { recursive: true });
    try {
      let n = 0;
      for (const bad of badBlobs.values()) {
        const aside = path.join(trash, String(n++));
        if (!(await moveAside(bad.path, aside))) continue;
        // Good bytes now (a build committed the blob again just before the move): put them back.
        if ((await blobProblem(aside, bad.id)) === undefined) await rename(aside, bad.path);
        else rep.removed.blobs++;
        for (const key of bad.records!) {
          if (existsSync(bad.path)) break;
          if (await moveAside(path.join(cacheDir, 'records', `${key}.json`), path.join(trash, String(n++)))) rep.removed.records++;
        }
      }
      for (const bad of badRecords) {
        // Unless a build wrote a good record under that key meanwhile.
        const now = readStepRecord(bad.path, bad.id);
        if (now && (!now.layer || existsSync(blobPath(cacheDir, now.layer.digest)))) continue;
        if (await moveAside(bad.path, path.join(trash, String(n++)))) rep.removed.records++;
      }
      for (const bad of badSnapshots) {
        const layer = path.basename(path.dirname(bad.path)) === 'layers';
        // One a build may have mounted or be copying from stays; that build checks it itself.
        if (await heldElsewhere(cacheDir, layer ? 'layer' : 'snapshot', bad.id)) continue;
        // The stamp first: a tree without one is unpacked again, never trusted.
        await rm(layer ? `${bad.path}.stamp` : `${bad.path}${SNAPSHOT_META}`, { force: true });
        if (await moveAside(bad.path, path.join(trash, String(n++)))) rep.removed.snapshots++;
      }
    } finally {
      await rm(trash, { recursive: true, force: true });
    }
    return rep;
  } finally {
    await lock?.release();
  }
}

/** Why a blob file is bad, undefined when its bytes hash to its name, or `gone` when it is not there (removed meanwhile). */
async function blobProblem(file: string, digest: string): Promise<string | undefined | 'gone'> {
  let actual: string;
  try {
    actual = await sha256File(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 'gone';
    return `cannot be read: ${(err as Error).message}`;
  }
  return actual === digest ? undefined : `its bytes hash to ${actual}`;
}

/** Why a snapshot does not match the stamp in `meta` (a layer's `.stamp`, an image's `.snapshot.json`), or undefined. */
function snapshotProblem(dir: string, meta: string): string | undefined {
  let saved: string | undefined;
  try {
    const text = readFileSync(meta, 'utf8');
    saved = meta.endsWith('.stamp') ? text : (JSON.parse(text) as { stamp?: unknown }).stamp as string | undefined;
  } catch {
    return existsSync(meta) ? `its stamp ${meta} cannot be read` : undefined;
  }
  if (typeof saved !== 'string') return `its stamp ${meta} is damaged`;
  const now = treeStampIfReadable(dir);
  if (now === undefined) return existsSync(dir) ? 'it cannot be read' : undefined;
  return now === saved ? undefined : 'it was changed since it was unpacked';
}

function blobPath(cacheDir: string, digest: string): string {
  return path.join(cacheDir, 'blobs', 'sha256', digest.slice('sha256:'.length));
}

async function moveAside(from: string, to: string): Promise<boolean> {
  try {
    await rename(from, to);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    if ((err as NodeJS.ErrnoException).code !== 'EXDEV') throw err;
    await rm(from, { force: true });
    return true;
  }
}
