/**
 * The differ of a run step: an overlay-format upper directory (from an
 * overlay mount, or written by the copy snapshotter's tree diff) packed into
 * a layer. Overlay's markers become the image spec's: a 0/0 character device
 * becomes `.wh.<name>` (packLayer does that), an opaque directory gets
 * `.wh..wh..opq`; other extended attributes (file capabilities, ACLs) are
 * kept as PAX records.
 */
import { lutimes, readdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { isEmptyTree, packLayer } from '../oci/layer-pack.js';
import { readXattrs } from './xattrs.js';

export interface PackUpperOptions {
  /** seconds since epoch for every entry's mtime (SOURCE_DATE_EPOCH or 0) */
  mtime: number;
}

/**
 * The layer of `upper`, or null when it has no entries: a command that
 * changed nothing makes no layer. Owners and modes are the upper's own.
 * The stream must be read for `diffId` to settle (see packLayer).
 */
export async function packUpper(upper: string, opts: PackUpperOptions): Promise<ReturnType<typeof packLayer> | null> {
  if (await isEmptyTree(upper)) return null;
  const root = path.resolve(upper);
  const xattrs = await readXattrs(root);
  return packLayer(root, {
    mtime: opts.mtime,
    xattrs: (rel) => xattrs.get(rel),
    isOpaque: async (absDir) => isOpaque(xattrs.get(path.relative(root, absDir).split(path.sep).join('/'))),
  });
}

/**
 * overlayfs marks a directory that hides everything below it with "y" in
 * `trusted.overlay.opaque` (or `user.overlay.opaque` when mounted with
 * `userxattr`). Newer kernels also write "x", which means "look for
 * whiteout files inside" and does not hide the lowers.
 */
function isOpaque(attrs: ReadonlyMap<string, Buffer> | undefined): boolean {
  const y = (name: string) => attrs?.get(name)?.toString('latin1') === 'y';
  return y('trusted.overlay.opaque') || y('user.overlay.opaque');
}

/**
 * Make a packed upper look as its layer does when unpacked — every time the
 * layer's mtime, no sockets (which layers cannot hold) — so the steps above
 * see the same files whether their lower was kept from this upper or
 * unpacked from the blob on another machine.
 */
export async function settleUpper(upper: string, mtime: number): Promise<void> {
  const when = new Date(mtime * 1000);
  const dirs: string[] = [];
  const walk = async (dir: string): Promise<void> => {
    for (const entry of await readdir(dir, { withFileTypes: true })) {
      const abs = path.join(dir, entry.name);
      if (entry.isSocket()) await rm(abs);
      else if (entry.isDirectory()) {
        await walk(abs);
        dirs.push(abs);
      } else await lutimes(abs, when, when);
    }
  };
  await walk(upper);
  // Directories last, deepest first: changing what is in one sets its mtime.
  for (const dir of dirs) await lutimes(dir, when, when);
  await lutimes(upper, when, when);
}
