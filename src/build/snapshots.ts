/**
 * Root filesystems of built images, unpacked once per image key under
 * `<cache>/snapshots/<key>` so `copy … from:` can read them. A snapshot is
 * built under a temp name and renamed into place, so a name that exists is
 * complete; concurrent asks for the same key share one unpack.
 *
 * Snapshots are kept usable without root: directories are u+rwx and files
 * u+rw on disk, and the modes the image really has where that differs are in
 * `<key>.snapshot.json` beside the snapshot, for readers to apply, with the
 * snapshot's stamp (snapshot/tree-stamp.ts). That file is renamed into place
 * after the tree, by the process whose tree won the rename only. A snapshot
 * without it (an older layergraph's, whose `<key>.modes.json` is ignored, or
 * a crash between the renames) is unpacked again, silently.
 *
 * Checking the stamp walks the whole tree, so it is done only where a wrong
 * snapshot could change a result: before a step that copies from it misses
 * (`verified`). A hit's key was computed from the files as they are, and a
 * record under that key holds what those files build. A snapshot found
 * changed is unpacked again — privately for this run when another live build
 * may be reading it.
 */
import { randomBytes } from 'node:crypto';
import { access, mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import type { ContentStore } from '../cache/content-store.js';
import { hold } from '../cache/leases.js';
import type { LayerRef } from '../cache/step-records.js';
import { asDiskFull, CacheCorruptError } from '../errors.js';
import { applyLayer } from '../oci/layer-apply.js';
import { heldElsewhere } from '../snapshot/held-elsewhere.js';
import { publishStamped, treeStamp, treeStampIfReadable } from '../snapshot/tree-stamp.js';
import { faultPoint } from '../util/fault-point.js';
import { discardTree, stageFile } from '../util/fs-atomic.js';
import { readJsonIfPresent } from '../util/fs-read.js';

export interface Snapshot {
  root: string;
  /** Real modes of entries whose on-disk mode was widened, by path relative to `root`. */
  realModes: ReadonlyMap<string, number>;
}

/** The file beside a snapshot that vouches for it (what prune, du and verify look for too). */
export const SNAPSHOT_META = '.snapshot.json'; // also in cache/usage.ts

export class SnapshotCache {
  private readonly inflight = new Map<string, Promise<Snapshot>>();
  /** Snapshots whose stamp this process checked, or which it unpacked: not walked again. */
  private readonly checked = new Map<string, Promise<{ snapshot: Snapshot; replaced: boolean }>>();

  constructor(
    private readonly cacheDir: string,
    private readonly store: ContentStore,
    /** Where to unpack before the rename: the run's temp dir, which the sweep cleans after a crash. */
    private readonly tmpDir: () => string,
    /** Told about a snapshot found damaged (it is unpacked again). */
    private readonly onDamage: (what: string) => void = () => undefined,
  ) {}

  /** The image's snapshot: the cache's, unchecked (see `verified`), or unpacked now. */
  materialize(imageKey: string, layers: LayerRef[]): Promise<Snapshot> {
    let p = this.inflight.get(imageKey);
    if (!p) {
      p = this.open(imageKey, layers);
      this.inflight.set(imageKey, p);
      p.catch(() => this.inflight.delete(imageKey));
    }
    return p;
  }

  /**
   * The image's snapshot, checked against its stamp (once per process);
   * `replaced` when the one `materialize` gave was damaged and this is a new
   * one, so what was read from the old one must be read again.
   */
  verified(imageKey: string, layers: LayerRef[]): Promise<{ snapshot: Snapshot; replaced: boolean }> {
    let p = this.checked.get(imageKey);
    if (!p) {
      p = this.check(imageKey, layers);
      this.checked.set(imageKey, p);
      p.catch(() => this.checked.delete(imageKey));
    }
    return p;
  }

  private async open(imageKey: string, layers: LayerRef[]): Promise<Snapshot> {
    // Held before it is looked at: `cache prune` leaves a held snapshot alone (cache/leases.ts).
    await hold(this.cacheDir, 'snapshot', imageKey);
    const dir = this.dirOf(imageKey);
    if (await present(dir)) {
      const saved = await readSaved(dir);
      if ('modes' in saved) return { root: dir, realModes: new Map(saved.modes) };
      if (saved.problem) this.onDamage(`image snapshot ${dir}: ${saved.problem}; unpacking it again`);
      return this.replace(imageKey, layers, dir);
    }
    return this.unpack(imageKey, layers, true);
  }

  private async check(imageKey: string, layers: LayerRef[]): Promise<{ snapshot: Snapshot; replaced: boolean }> {
    const snapshot = await this.materialize(imageKey, layers);
    const dir = this.dirOf(imageKey);
    if (snapshot.root !== dir) return { snapshot, replaced: false }; // unpacked by this process: nothing to check
    const saved = await readSaved(dir);
    if ('modes' in saved && treeStampIfReadable(dir) === saved.stamp) return { snapshot, replaced: false };
    this.onDamage(`image snapshot ${dir}: it was changed since it was unpacked; unpacking it again`);
    const fresh = this.replace(imageKey, layers, dir);
    this.inflight.set(imageKey, fresh);
    return { snapshot: await fresh, replaced: true };
  }

  /** Unpacks again in place of a snapshot that cannot be used, or privately when another live build may be reading it. */
  private async replace(imageKey: string, layers: LayerRef[], dir: string): Promise<Snapshot> {
    if (await heldElsewhere(this.cacheDir, 'snapshot', imageKey)) return this.unpack(imageKey, layers, false);
    await rm(`${dir}${SNAPSHOT_META}`, { force: true }); // first: a tree left without it is unpacked again
    await discardTree(dir, this.tmpDir());
    return this.unpack(imageKey, layers, true);
  }

  private async unpack(imageKey: string, layers: LayerRef[], publish: boolean): Promise<Snapshot> {
    const dir = this.dirOf(imageKey);
    const tmp = path.join(this.tmpDir(), `snapshot-${imageKey}-${randomBytes(4).toString('hex')}`);
    await mkdir(tmp, { recursive: true });
    await mkdir(path.dirname(dir), { recursive: true });
    const realModes = new Map<string, number>();
    let keep = false;
    try {
      for (const layer of layers) {
        const { diffId } = await applyLayer(this.store.read(layer.digest), tmp, { realModes, layer: { digest: layer.digest } });
        if (diffId !== layer.diffId) {
          throw new CacheCorruptError(`layer ${layer.digest} unpacked to diffID ${diffId}, expected ${layer.diffId}`);
        }
      }
      if (!publish) {
        keep = true; // removed with the run's temp dir
        return { root: tmp, realModes };
      }
      const saved: SavedSnapshot = { modes: [...realModes], stamp: treeStamp(tmp) };
      const staged = await stageFile(path.join(this.cacheDir, 'ingest'), JSON.stringify(saved));
      faultPoint('snapshot');
      if (await publishStamped(tmp, dir, staged, `${dir}${SNAPSHOT_META}`)) {
        this.checked.set(imageKey, Promise.resolve({ snapshot: { root: dir, realModes }, replaced: false }));
      }
      // Lost the race: theirs is as good as ours (same key, same modes), unchecked like any found.
      return { root: dir, realModes };
    } catch (err) {
      throw asDiskFull(err, tmp);
    } finally {
      if (!keep) await rm(tmp, { recursive: true, force: true });
    }
  }

  private dirOf(imageKey: string): string {
    return path.join(this.cacheDir, 'snapshots', imageKey);
  }
}

/** What `<key>.snapshot.json` holds. */
interface SavedSnapshot {
  modes: Array<[string, number]>;
  stamp: string;
}

/**
 * The snapshot of image `imageKey` in the cache, if there is one and it is
 * intact (it matches the stamp in its `.snapshot.json`); read only.
 */
export async function readSnapshot(cacheDir: string, imageKey: string): Promise<Snapshot | undefined> {
  const found = await checkSnapshot(path.join(cacheDir, 'snapshots', imageKey));
  return 'root' in found ? found : undefined;
}

/** Whether the snapshot at `dir` matches its stamp: `{ problem }` when not, undefined `problem` when it has none yet (not damage). */
export async function checkSnapshot(dir: string): Promise<Snapshot | { problem: string | undefined }> {
  const saved = await readSaved(dir);
  if (!('modes' in saved)) return saved;
  const stamp = treeStampIfReadable(dir);
  if (stamp === undefined) return { problem: 'it cannot be read' };
  return stamp === saved.stamp ? { root: dir, realModes: new Map(saved.modes) } : { problem: 'it was changed since it was unpacked' };
}

async function readSaved(dir: string): Promise<SavedSnapshot | { problem: string | undefined }> {
  let damaged = false;
  const saved = await readJsonIfPresent<SavedSnapshot>(`${dir}${SNAPSHOT_META}`, () => (damaged = true)).catch(() => undefined);
  if (!saved) return { problem: damaged ? `its ${SNAPSHOT_META} is damaged` : undefined };
  if (!Array.isArray(saved.modes) || typeof saved.stamp !== 'string') return { problem: `its ${SNAPSHOT_META} is damaged` };
  return saved;
}

async function present(p: string): Promise<boolean> {
  return access(p).then(
    () => true,
    () => false,
  );
}
