/**
 * Root filesystems of built images, unpacked once per image key under
 * `<cache>/snapshots/<key>` so `copy … from:` can read them. A snapshot is
 * built under a temp name and renamed into place, so a name that exists is
 * complete; concurrent asks for the same key share one unpack.
 */
import { randomBytes } from 'node:crypto';
import { access, mkdir, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import type { ContentStore } from '../cache/content-store.js';
import type { LayerRef } from '../cache/step-records.js';
import { CacheCorruptError } from '../errors.js';
import { applyLayer } from '../oci/layer-apply.js';

export class SnapshotCache {
  private readonly inflight = new Map<string, Promise<string>>();

  constructor(
    private readonly cacheDir: string,
    private readonly store: ContentStore,
  ) {}

  materialize(imageKey: string, layers: LayerRef[]): Promise<string> {
    let p = this.inflight.get(imageKey);
    if (!p) {
      p = this.unpack(imageKey, layers);
      this.inflight.set(imageKey, p);
    }
    return p;
  }

  private async unpack(imageKey: string, layers: LayerRef[]): Promise<string> {
    const dir = path.join(this.cacheDir, 'snapshots', imageKey);
    if (await access(dir).then(() => true, () => false)) return dir;
    const tmp = path.join(this.cacheDir, 'snapshots', `.tmp-${imageKey}-${randomBytes(4).toString('hex')}`);
    await mkdir(tmp, { recursive: true });
    try {
      for (const layer of layers) {
        const { diffId } = await applyLayer(this.store.read(layer.digest), tmp);
        if (diffId !== layer.diffId) {
          throw new CacheCorruptError(`layer ${layer.digest} unpacked to diffID ${diffId}, expected ${layer.diffId}`);
        }
      }
      await rename(tmp, dir).catch(async (err: NodeJS.ErrnoException) => {
        // Another process finished the same snapshot first: theirs is as good as ours.
        if (err.code !== 'ENOTEMPTY' && err.code !== 'EEXIST') throw err;
      });
      return dir;
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }
  }
}
