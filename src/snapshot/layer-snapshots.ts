/**
 * One directory per layer, in overlayfs lower format, to stack in overlay
 * mounts: `<cacheDir>/snapshots/layers/<diffID hex>`. Named by the diffID
 * (the tar's content), so a layer shared by many images and steps is
 * unpacked once, whatever its compressed digest.
 *
 * A snapshot is staged under the run's temp dir and renamed into place, so a
 * name that exists is complete; then its stamp (`<hex>.stamp`, tree-stamp.ts),
 * staged beside the tree, is renamed beside it — by the process whose tree
 * won the rename only. A snapshot checked against its stamp (only when a run
 * step misses and mounts it) and found changed is unpacked again; one with no
 * stamp (an older layergraph's, or a crash between the two renames) too,
 * silently. One another live build may have mounted is not discarded: this
 * run unpacks the layer privately under its temp dir instead.
 * Within a process one unpack per diffID runs at a time; a concurrent
 * process that wins the rename wins, theirs is as good.
 *
 * Lower format is the layer as overlayfs stores it in an upper: `.wh.<name>`
 * is a 0/0 character device `<name>`, `.wh..wh..opq` the attribute
 * `trusted.overlay.opaque=y` on its directory. Writing those needs root.
 */
import { randomBytes } from 'node:crypto';
import { lstat, mkdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import type { ContentStore } from '../cache/content-store.js';
import { hold } from '../cache/leases.js';
import type { LayerRef } from '../cache/step-records.js';
import { asDiskFull, CacheCorruptError } from '../errors.js';
import { applyLayer } from '../oci/layer-apply.js';
import { faultPoint } from '../util/fault-point.js';
import { discardTree, stageFile } from '../util/fs-atomic.js';
import { heldElsewhere } from './held-elsewhere.js';
import { publishStamped, treeStamp, treeStampIfReadable } from './tree-stamp.js';

export class LayerSnapshots {
  private readonly inflight = new Map<string, Promise<string>>();

  constructor(
    private readonly cacheDir: string,
    private readonly store: Pick<ContentStore, 'read'>,
    /** Where to unpack before the rename: the run's temp dir, on the cache's file system and swept after a crash. */
    private readonly tmpDir: () => string,
    /** Told about a snapshot found damaged (it is unpacked again). */
    private readonly onDamage: (what: string) => void = () => undefined,
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
  adopt(upperDir: string, layer: LayerRef): Promise<string> {
    const pending = this.inflight.get(layer.diffId);
    if (pending) return rm(upperDir, { recursive: true, force: true }).then(() => pending);
    // In flight from here on, before anything is awaited: a `get` meanwhile waits for this tree
    // instead of starting an unpack that could find it renamed into place but not yet stamped.
    const adopted = this.publish(upperDir, layer);
    this.inflight.set(layer.diffId, adopted);
    adopted.catch(() => this.inflight.delete(layer.diffId));
    return adopted;
  }

  private async publish(upperDir: string, layer: LayerRef): Promise<string> {
    await hold(this.cacheDir, 'layer', hexOf(layer.diffId));
    const dir = this.pathOf(layer.diffId);
    if (await exists(dir)) {
      await rm(upperDir, { recursive: true, force: true });
      // Checked against its stamp, as any existing snapshot.
      return this.unpack(layer);
    }
    await mkdir(path.dirname(dir), { recursive: true });
    try {
      const staged = await this.stageStamp(upperDir);
      if (!(await publishStamped(upperDir, dir, staged, stampFile(dir)))) await rm(upperDir, { recursive: true, force: true });
      return dir;
    } catch (err) {
      await rm(upperDir, { recursive: true, force: true });
      // Another file system: unpack when asked.
      if ((err as NodeJS.ErrnoException).code === 'EXDEV') return this.unpack(layer);
      throw err;
    }
  }

  private async unpack(layer: LayerRef): Promise<string> {
    const hex = hexOf(layer.diffId);
    // Held before it is looked at: `cache prune` leaves a held snapshot alone (cache/leases.ts).
    await hold(this.cacheDir, 'layer', hex);
    const dir = this.pathOf(layer.diffId);
    if (await exists(dir)) {
      const saved = await readFile(stampFile(dir), 'utf8').catch(() => undefined);
      const now = treeStampIfReadable(dir);
      if (saved !== undefined && saved === now) return dir;
      if (now !== undefined || (await exists(dir))) {
        // No stamp: an older layergraph's snapshot, or one whose maker died between its renames; not damage.
        if (saved !== undefined) this.onDamage(`layer snapshot ${dir} was changed since it was unpacked; unpacking it again`);
        // Unreadable, or perhaps mounted by another live build: leave it, and use a private copy for this run.
        if (now === undefined || (await heldElsewhere(this.cacheDir, 'layer', hex))) return this.unpackTo(layer, false);
        await rm(stampFile(dir), { force: true }); // first: a tree left without a stamp is unpacked again
        await discardTree(dir, this.tmpDir());
      }
    }
    return this.unpackTo(layer, true);
  }

  /** Unpacks the layer under the run's temp dir, then publishes it as the snapshot, or (`publish` false) leaves it there for this run. */
  private async unpackTo(layer: LayerRef, publish: boolean): Promise<string> {
    const dir = this.pathOf(layer.diffId);
    const tmp = path.join(this.tmpDir(), `layer-${hexOf(layer.diffId).slice(0, 16)}-${randomBytes(4).toString('hex')}`);
    await mkdir(path.dirname(dir), { recursive: true });
    let keep = false;
    try {
      const { diffId } = await applyLayer(this.store.read(layer.digest), tmp, {
        whiteouts: 'overlay',
        xattrs: true,
        preserveOwner: true,
        layer: { digest: layer.digest },
      });
      if (diffId !== layer.diffId) {
        throw new CacheCorruptError(`layer ${layer.digest} unpacked to diffID ${diffId}, expected ${layer.diffId}`);
      }
      if (!publish) {
        keep = true; // removed with the run's temp dir
        return tmp;
      }
      const staged = await this.stageStamp(tmp);
      faultPoint('snapshot');
      await publishStamped(tmp, dir, staged, stampFile(dir));
      return dir;
    } catch (err) {
      throw asDiskFull(err, tmp);
    } finally {
      if (!keep) await rm(tmp, { recursive: true, force: true });
    }
  }

  private stageStamp(tree: string): Promise<string> {
    return stageFile(path.join(this.cacheDir, 'ingest'), treeStamp(tree));
  }
}

/** Beside the snapshot: its tree stamp (tree-stamp.ts), checked before the snapshot is mounted. */
function stampFile(dir: string): string {
  return `${dir}.stamp`;
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
