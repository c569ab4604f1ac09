/**
 * Snapshotters give a run step a root to run in and hand back what the
 * command changed, as an overlay-format upper directory (whiteouts as 0/0
 * character devices, opaque directories by xattr) that one packer turns into
 * the layer — so both give the same digests:
 *
 * - `overlay` mounts overlayfs: lowers are the per-layer snapshots of the
 *   chain below (unpacked once, or kept from the step that built them), the
 *   upper is the step's own. Needs root (or a user namespace with overlay).
 * - `copy` applies the layers below into a plain directory, notes every entry,
 *   and after the command compares the tree with those notes. Slower; works
 *   wherever the command can run.
 *
 * Both put empty mount points (/proc, /dev, …) under the image, so a runtime
 * mounting over them never creates anything the layer would keep.
 */
import { lstat, mkdir, rename, rm } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import type { ContentStore } from '../cache/content-store.js';
import type { LayerRef } from '../cache/step-records.js';
import { UsageError } from '../errors.js';
import { makeMountStubs } from '../exec/run-in-root.js';
import { LayerSnapshots } from './layer-snapshots.js';
import { canMountOverlay, mountOverlay, unmount } from './overlay-mount.js';
import { diffTree, indexTree, materializeRoot } from './tree-diff.js';
import { settleUpper } from './upper-pack.js';

export type SnapshotterName = 'overlay' | 'copy';

export interface PreparedRoot {
  rootfs: string;
  /** Stop using the root; its changes as an overlay-format upper directory. */
  commit(): Promise<string>;
  /** Unmount and remove what `prepare` made. Safe after `commit`, after a failure, and twice. */
  release(): Promise<void>;
}

export interface Snapshotter {
  readonly name: SnapshotterName;
  /** A root with `lowers` (bottom first) applied, in `dir` (which must not exist yet). */
  prepare(lowers: LayerRef[], dir: string): Promise<PreparedRoot>;
  /** Keep a committed upper as the snapshot of the layer it was packed into (with that layer's `mtime`). */
  keep(upper: string, layer: LayerRef, mtime: number): Promise<void>;
  /**
   * Keep a tree already in lower format, metadata and all, as the layer's
   * snapshot (a copy step's layer written from its plan, snapshot/tree-write.ts).
   * The tree is moved or deleted: the caller no longer owns it.
   */
  keepTree(tree: string, layer: LayerRef): Promise<void>;
}

export interface SnapshotterDeps {
  cacheDir: string;
  store: ContentStore;
  /** The run's temp dir (swept after a crash). */
  tmpDir: () => string;
  /** Told about a layer snapshot found damaged (it is unpacked again). */
  onDamage?: (what: string) => void;
}

/** `auto` picks overlay where this process can mount it, else copy. */
export async function openSnapshotter(choice: 'auto' | SnapshotterName, deps: SnapshotterDeps): Promise<Snapshotter> {
  if (choice === 'copy') return new CopySnapshotter(deps);
  const canMount = process.getuid?.() === 0 && (await canMountOverlay(path.join(deps.tmpDir(), 'probe')));
  if (canMount) return new OverlaySnapshotter(deps);
  if (choice === 'overlay') {
    throw new UsageError('--snapshotter overlay: cannot mount overlayfs here (it needs root, or a user namespace that allows it); use --snapshotter copy');
  }
  return new CopySnapshotter(deps);
}

class OverlaySnapshotter implements Snapshotter {
  readonly name = 'overlay';
  private readonly layers: LayerSnapshots;
  private stubs: Promise<string> | undefined;

  constructor(private readonly deps: SnapshotterDeps) {
    this.layers = new LayerSnapshots(deps.cacheDir, deps.store, deps.tmpDir, deps.onDamage);
  }

  async prepare(lowers: LayerRef[], dir: string): Promise<PreparedRoot> {
    const lowerDirs = await Promise.all(lowers.map((l) => this.layers.get(l)));
    const stubs = await this.mountStubs();
    const d = (name: string) => path.join(dir, name);
    await mkdir(dir);
    await Promise.all(['upper', 'work', 'rootfs'].map((n) => mkdir(d(n))));
    // Nearest first; the stubs lowest, so every layer of the image wins over them.
    // overlayfs refuses a directory twice; the nearest copy of a layer decides
    // every path it touches anyway, so the ones further down can go.
    const nearestFirst = [...new Set(lowerDirs.reverse())];
    await mountOverlay({ lowers: [...nearestFirst, stubs], upper: d('upper'), work: d('work'), target: d('rootfs') });
    let mounted = true;
    const unmountOnce = async () => {
      if (!mounted) return;
      mounted = false;
      await unmount(d('rootfs'));
    };
    return {
      rootfs: d('rootfs'),
      commit: async () => {
        await unmountOnce();
        return d('upper');
      },
      release: async () => {
        await unmountOnce();
        await rm(dir, { recursive: true, force: true });
      },
    };
  }

  async keep(upper: string, layer: LayerRef, mtime: number): Promise<void> {
    await settleUpper(upper, mtime);
    await this.layers.adopt(upper, layer);
  }

  async keepTree(tree: string, layer: LayerRef): Promise<void> {
    await this.layers.adopt(tree, layer);
  }

  /** One lower of empty mount points, shared by every mount (it never changes). */
  private mountStubs(): Promise<string> {
    this.stubs ??= (async () => {
      const dir = path.join(this.deps.cacheDir, 'snapshots', 'layers', 'mount-stubs-v1');
      if (await exists(dir)) return dir;
      const tmp = path.join(this.deps.tmpDir(), `stubs-${randomBytes(4).toString('hex')}`);
      await mkdir(tmp, { recursive: true });
      await makeMountStubs(tmp);
      await mkdir(path.dirname(dir), { recursive: true });
      await rename(tmp, dir).catch(async (err: NodeJS.ErrnoException) => {
        await rm(tmp, { recursive: true, force: true });
        if (err.code !== 'ENOTEMPTY' && err.code !== 'EEXIST') throw err;
      });
      return dir;
    })();
    return this.stubs;
  }
}

class CopySnapshotter implements Snapshotter {
  readonly name = 'copy';
  private readonly layers: LayerSnapshots;

  constructor(private readonly deps: SnapshotterDeps) {
    this.layers = new LayerSnapshots(deps.cacheDir, deps.store, deps.tmpDir, deps.onDamage);
  }

  async prepare(lowers: LayerRef[], dir: string): Promise<PreparedRoot> {
    const rootfs = path.join(dir, 'rootfs');
    await mkdir(dir);
    try {
      await materializeRoot(lowers, this.deps.store, rootfs);
      // Mount points the image lacks, added before the tree is noted, so they are never part of the diff.
      await makeMountStubs(rootfs);
      const before = await indexTree(rootfs);
      return {
        rootfs,
        commit: async () => {
          const upper = path.join(dir, 'upper');
          await diffTree(before, rootfs, upper);
          return upper;
        },
        release: () => rm(dir, { recursive: true, force: true }),
      };
    } catch (err) {
      await rm(dir, { recursive: true, force: true });
      throw err;
    }
  }

  async keep(upper: string, layer: LayerRef, mtime: number): Promise<void> {
    // Only useful to a later overlay mount, and only where one can mount.
    if (process.getuid?.() !== 0) return;
    await settleUpper(upper, mtime);
    await this.layers.adopt(upper, layer);
  }

  async keepTree(tree: string, layer: LayerRef): Promise<void> {
    // Copies of the layers below are made from blobs (materializeRoot); kept only for a later overlay mount.
    if (process.getuid?.() !== 0) return rm(tree, { recursive: true, force: true });
    await this.layers.adopt(tree, layer);
  }
}

async function exists(p: string): Promise<boolean> {
  return lstat(p).then(
    () => true,
    () => false,
  );
}
