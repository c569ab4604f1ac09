/**
 * Root filesystems of built images, unpacked once per image key under
 * `<cache>/snapshots/<key>` so `copy … from:` can read them. A snapshot is
 * built under a temp name and renamed into place, so a name that exists is
 * complete; concurrent asks for the same key share one unpack.
 *
 * Snapshots are kept usable without root: directories are u+rwx and files
 * u+rw on disk, and the modes the image really has where that differs are in
 * `<key>.modes.json` beside the snapshot (written before the rename), for
 * readers to apply.
 */
import { randomBytes } from 'node:crypto';
import { access, mkdir, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import type { ContentStore } from '../cache/content-store.js';
import type { LayerRef } from '../cache/step-records.js';
import { CacheCorruptError } from '../errors.js';
import { applyLayer } from '../oci/layer-apply.js';
import { writeFileAtomic } from '../util/fs-atomic.js';
import { readJsonIfPresent } from '../util/fs-read.js';

export interface Snapshot {
  root: string;
  /** Real modes of entries whose on-disk mode was widened, by path relative to `root`. */
  realModes: ReadonlyMap<string, number>;
}

export class SnapshotCache {
  private readonly inflight = new Map<string, Promise<Snapshot>>();

  constructor(
    private readonly cacheDir: string,
    private readonly store: ContentStore,
    /** Where to unpack before the rename: the run's temp dir, which the sweep cleans after a crash. */
    private readonly tmpDir: () => string,
  ) {}

  materialize(imageKey: string, layers: LayerRef[]): Promise<Snapshot> {
    let p = this.inflight.get(imageKey);
    if (!p) {
      p = this.unpack(imageKey, layers);
      this.inflight.set(imageKey, p);
    }
    return p;
  }

  private async unpack(imageKey: string, layers: LayerRef[]): Promise<Snapshot> {
    const dir = path.join(this.cacheDir, 'snapshots', imageKey);
    const modesFile = `${dir}.modes.json`;
    if (await access(dir).then(() => true, () => false)) {
      const saved = await readJsonIfPresent<Array<[string, number]>>(modesFile);
      if (saved) return { root: dir, realModes: new Map(saved) };
      await rm(dir, { recursive: true, force: true }); // no modes beside it: not one of ours, or half removed
    }
    const tmp = path.join(this.tmpDir(), `snapshot-${imageKey}-${randomBytes(4).toString('hex')}`);
    await mkdir(tmp, { recursive: true });
    await mkdir(path.dirname(dir), { recursive: true });
    const realModes = new Map<string, number>();
    try {
      for (const layer of layers) {
        const { diffId } = await applyLayer(this.store.read(layer.digest), tmp, { realModes });
        if (diffId !== layer.diffId) {
          throw new CacheCorruptError(`layer ${layer.digest} unpacked to diffID ${diffId}, expected ${layer.diffId}`);
        }
      }
      await writeFileAtomic(modesFile, JSON.stringify([...realModes]));
      await rename(tmp, dir).catch(async (err: NodeJS.ErrnoException) => {
        // Another process finished the same snapshot first: theirs is as good as ours.
        if (err.code !== 'ENOTEMPTY' && err.code !== 'EEXIST') throw err;
      });
      return { root: dir, realModes };
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }
  }
}
