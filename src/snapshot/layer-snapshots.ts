/**
 * One directory per layer, in overlayfs lower format, to stack in overlay
 * mounts: `<cacheDir>/snapshots/layers/<diffID hex>`. Named by the diffID
 * (the tar's content), so a layer shared by many images and steps is
 * unpacked once, whatever its compressed digest.
 *
 * A snapshot is staged under the run's temp dir and renamed into place, so a
 * name that exists is complete. Within a process one unpack per diffID runs
 * at a time; a concurrent process that wins the rename wins, theirs is as good.
 *
 * Lower format is the layer as overlayfs stores it in an upper: `.wh.<name>`
 * is a 0/0 character device `<name>`, `.wh..wh..opq` the attribute
 * `trusted.overlay.opaque=y` on its directory. Writing those needs root.
 */
import { randomBytes } from 'node:crypto';
import { lstat, mkdir, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import type { ContentStore } from '../cache/content-store.js';
import type { LayerRef } from '../cache/step-records.js';
import { CacheCorruptError } from '../errors.js';
import { applyLayer } from '../oci/layer-apply.js';

export class LayerSnapshots {
  private readonly inflight = new Map<string, Promise<string>>();

  constructor(
    private readonly cacheDir: string,
    private readonly store: Pick<ContentStore, 'read'>,
    /** Where to unpack before the rename: the run's temp dir, on the cache's file system and swept after a crash. */
    private readonly tmpDir: () => string,
  ) {}

  /** Where the snapshot of a layer with this diffID lives (whether or not it exists yet). */
  pathOf(diffId: string): string {
    return path.join(this.cacheDir, 'snapshots', 'layers', hexOf(diffId));
  }

  /** The layer's lower directory, unpacked from the store the first time it is asked for. */
  get(layer: LayerRef): Promise<string> {
    let p = this.inflight.get(layer.diffId);
    if (!p) {
      p = this.unpack(layer);
      this.inflight.set(layer.diffId, p);
      // A failure is not remembered: the next ask tries again.
      p.catch(() => this.inflight.delete(layer.diffId));
    }
    return p;
  }

  /**
   * Keeps a run step's upper as the snapshot of the layer it was just packed
   * into, so the steps above mount it without unpacking. The upper is moved
   * (or deleted, when the layer has a snapshot already): the caller no longer
   * owns it. Returns the snapshot's path.
   */
  async adopt(upperDir: string, layer: LayerRef): Promise<string> {
    const dir = this.pathOf(layer.diffId);
    const pending = this.inflight.get(layer.diffId);
    if (pending || (await exists(dir))) {
      await rm(upperDir, { recursive: true, force: true });
      return pending ?? dir;
    }
    await mkdir(path.dirname(dir), { recursive: true });
    const adopted = rename(upperDir, dir).then(
      () => dir,
      async (err: NodeJS.ErrnoException) => {
        await rm(upperDir, { recursive: true, force: true });
        // Someone made it meanwhile: theirs is as good. Another file system: unpack when asked.
        if (err.code === 'ENOTEMPTY' || err.code === 'EEXIST') return dir;
        if (err.code === 'EXDEV') return this.unpack(layer);
        throw err;
      },
    );
    this.inflight.set(layer.diffId, adopted);
    adopted.catch(() => this.inflight.delete(layer.diffId));
    return adopted;
  }

  private async unpack(layer: LayerRef): Promise<string> {
    const dir = this.pathOf(layer.diffId);
    if (await exists(dir)) return dir;
    const tmp = path.join(this.tmpDir(), `layer-${hexOf(layer.diffId).slice(0, 16)}-${randomBytes(4).toString('hex')}`);
    await mkdir(path.dirname(dir), { recursive: true });
    try {
      const { diffId } = await applyLayer(this.store.read(layer.digest), tmp, {
        whiteouts: 'overlay',
        xattrs: true,
        preserveOwner: true,
      });
      if (diffId !== layer.diffId) {
        throw new CacheCorruptError(`layer ${layer.digest} unpacked to diffID ${diffId}, expected ${layer.diffId}`);
      }
      await rename(tmp, dir).catch((err: NodeJS.ErrnoException) => {
        // Another process finished the same snapshot first.
        if (err.code !== 'ENOTEMPTY' && err.code !== 'EEXIST') throw err;
      });
      return dir;
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }
  }
}

function hexOf(diffId: string): string {
  const m = /^sha256:([0-9a-f]{64})$/.exec(diffId);
  if (!m?.[1]) throw new CacheCorruptError(`not a sha256 diffID: ${diffId}`);
  return m[1];
}

async function exists(p: string): Promise<boolean> {
  return lstat(p).then(
    () => true,
    () => false,
  );
}
