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

/**
 * Creates the mount points `dir` lacks (with missing parents): directories
 * 0755, files 0644 and empty, all root-owned, whatever the umask. What exists
 * is left as it is, and nothing is created through a symbolic link: in a
 * copied image root, a link could point out of it.
 */
export async function makeMountStubs(dir: string): Promise<void> {
  const asRoot = process.getuid?.() === 0;
  points: for (const point of MOUNT_POINTS) {
    const rel = point.path.slice(1).split('/');
    for (let i = 1; i < rel.length; i++) {
      const parent = path.join(dir, ...rel.slice(0, i));
      const st = await lstat(parent).catch(() => undefined);
      if (st && !st.isDirectory()) continue points; // a link or a file: the runtime will say what is wrong
      if (!st) await made(mkdir(parent), parent, 0o755, asRoot);
    }
    const abs = path.join(dir, ...rel);
    if (point.type === 'dir') await made(mkdir(abs), abs, 0o755, asRoot);
    else await made(writeFile(abs, '', { flag: 'wx' }), abs, 0o644, asRoot);
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

/** Once `creating` has made `abs` (one already there is left alone), gives it its mode and, as root, owner 0:0. */
async function made(creating: Promise<unknown>, abs: string, mode: number, asRoot: boolean): Promise<void> {
  const created = await creating.then(
    () => true,
    (err: NodeJS.ErrnoException) => {
      if (err.code !== 'EEXIST') throw err;
      return false;
    },
  );
  if (!created) return;
  await chmod(abs, mode);
  if (asRoot) await chown(abs, 0, 0);
}
