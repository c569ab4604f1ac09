/**
 * A stamp of an unpacked tree (a snapshot in the cache): a hash over every
 * entry's path, type, mode, owner, size and mtime, taken when the snapshot is
 * made and checked before it is used. Snapshots are never changed once made,
 * so a different stamp means outside damage — a file edited, truncated,
 * added or removed, a half-deleted tree — and the snapshot is unpacked again
 * rather than mounted or copied from.
 *
 * Only metadata is read (git's index makes the same trade): a write that
 * keeps size and mtime is not seen. Inode numbers and ctimes are left out so
 * a cache copied elsewhere (`cp -a`, rsync) keeps its snapshots; the root's
 * own entry is left out because renaming the tree into place changes it.
 */
import { createHash } from 'node:crypto';
import { lstatSync, readdirSync } from 'node:fs';
import { rename, rm } from 'node:fs/promises';
import path from 'node:path';

export const STAMP_VERSION = 'tree-stamp.v1';

/** Synchronous: a walk of lstat calls is several times faster without a promise per entry. */
export function treeStamp(root: string): string {
  const hash = createHash('sha256').update(STAMP_VERSION);
  const visit = (abs: string, rel: string): void => {
    for (const name of readdirSync(abs).sort()) {
      const childAbs = path.join(abs, name);
      const childRel = rel ? `${rel}/${name}` : name;
      const st = lstatSync(childAbs, { bigint: true });
      const size = st.isFile() || st.isSymbolicLink() ? st.size : 0n;
      hash.update(`${childRel}\0${st.mode}\0${st.uid}\0${st.gid}\0${size}\0${st.mtimeNs}\0${st.rdev}\n`);
      if (st.isDirectory()) visit(childAbs, childRel);
    }
  };
  visit(root, '');
  return hash.digest('hex');
}

/** The tree's stamp, or undefined when it cannot be walked (removed meanwhile by another process, unreadable). */
export function treeStampIfReadable(root: string): string | undefined {
  try {
    return treeStamp(root);
  } catch {
    return undefined;
  }
}

/**
 * Renames the staged `tree` to `dir`, then its staged stamp file to `stampFile`
 * — only if this process won the tree's rename: the loser of a race must not
 * replace the winner's stamp with the stamp of a tree that is not there.
 * Returns whether this process's tree is the one in place.
 */
export async function publishStamped(tree: string, dir: string, stagedStamp: string, stampFile: string): Promise<boolean> {
  try {
    await rename(tree, dir);
  } catch (err) {
    await rm(stagedStamp, { force: true });
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOTEMPTY' || code === 'EEXIST') return false; // another process finished first: theirs is as good
    throw err;
  }
  // A crash just here leaves a tree without a stamp: the next run unpacks it again.
  await rename(stagedStamp, stampFile);
  return true;
}
