/**
 * The paths a container mounts over. A runtime creates a missing mount point
 * in the root, and in an overlay root that creation would land in the step's
 * layer; so the snapshotters put empty stubs of them under the image (the
 * lowest lower, or into a copied root before it is noted), and the runtimes
 * here only mount over what already exists.
 */
import { chmod, chown, lstat, mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { RuntimeError } from '../errors.js';

export interface MountPoint {
  /** Absolute path in the image. */
  path: string;
  type: 'dir' | 'file';
}

/** Everything a run mounts; /dev's own entries (pts, shm, the nodes) live in the fresh /dev tmpfs. */
export const MOUNT_POINTS: ReadonlyArray<MountPoint> = [
  { path: '/proc', type: 'dir' },
  { path: '/dev', type: 'dir' },
  { path: '/sys', type: 'dir' },
  { path: '/tmp', type: 'dir' },
  { path: '/etc/resolv.conf', type: 'file' },
  { path: '/etc/hosts', type: 'file' },
  { path: '/etc/hostname', type: 'file' },
];

/** Creates every mount point under `dir` (with missing parents): directories 0755, files 0644 and empty, all root-owned. */
export async function makeMountStubs(dir: string): Promise<void> {
  const asRoot = process.getuid?.() === 0;
  for (const point of MOUNT_POINTS) {
    const rel = point.path.slice(1).split('/');
    for (let i = 1; i < rel.length; i++) await makeDir(path.join(dir, ...rel.slice(0, i)), asRoot);
    const abs = path.join(dir, ...rel);
    if (point.type === 'dir') await makeDir(abs, asRoot);
    else {
      await writeFile(abs, '', { flag: 'wx' }).catch(ignoreExists);
      await chmod(abs, 0o644);
      if (asRoot) await chown(abs, 0, 0);
    }
  }
}

/**
 * Checks that every mount point exists in `rootfs` as the right kind of
 * entry, not a symlink, with no symlink among its parents: a runtime that
 * mounts with the host's `mount` (the chroot fallback) would otherwise follow
 * a link the image planted and mount over a host path.
 */
export async function checkMountPoints(rootfs: string, runtime: string): Promise<void> {
  for (const point of MOUNT_POINTS) {
    const parts = point.path.slice(1).split('/');
    for (let i = 1; i <= parts.length; i++) {
      const rel = `/${parts.slice(0, i).join('/')}`;
      const st = await lstat(path.join(rootfs, rel)).catch(() => undefined);
      const wantDir = i < parts.length || point.type === 'dir';
      const ok = st !== undefined && (wantDir ? st.isDirectory() : st.isFile());
      if (!ok) {
        const found = st === undefined ? 'is missing' : st.isSymbolicLink() ? 'is a symbolic link' : 'is not a ' + (wantDir ? 'directory' : 'regular file');
        throw new RuntimeError(runtime, `cannot mount over ${rel} in the image: it ${found} (mount points must be plain ${wantDir ? 'directories' : 'files'}; see makeMountStubs)`);
      }
    }
  }
}

async function makeDir(abs: string, asRoot: boolean): Promise<void> {
  const made = await mkdir(abs).then(
    () => true,
    (err: NodeJS.ErrnoException) => ignoreExists(err) ?? false,
  );
  if (!made) return;
  await chmod(abs, 0o755);
  if (asRoot) await chown(abs, 0, 0);
}

function ignoreExists(err: NodeJS.ErrnoException): undefined {
  if (err.code !== 'EEXIST') throw err;
  return undefined;
}
