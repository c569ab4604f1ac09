/**
 * Resolving untrusted paths (from build files and layer tarballs) inside a
 * root directory, in the manner of filepath-securejoin: the root acts as `/`,
 * so neither `..` nor a symlink can lead out of it.
 */
import { lstat, readlink } from 'node:fs/promises';
import path from 'node:path';
import { PathEscapeError } from '../errors.js';
import { isMissing } from './fs-read.js';

/** Linux gives up after 40 nested links; we allow more but still stop loops. */
const MAX_SYMLINKS = 255;

/**
 * The host path that `unsafePath` names when `root` is taken as `/`.
 *
 * Every component but the last is resolved as the kernel would inside a
 * chroot: `..` stops at root, and a symlink is read and its target resolved
 * relative to root (an absolute target restarts at root). The last component
 * is not followed unless `followLast` (reading a file the way a process in
 * the root would), so the caller can lstat, unlink or create exactly that
 * name. Components that do not exist are taken as written.
 *
 * `root` itself is trusted and used as given (pass a realpath). The result is
 * only safe as long as nobody else changes the tree between this call and its
 * use; layergraph is the only writer of the trees it resolves in.
 */
export async function secureJoin(root: string, unsafePath: string, opts: { followLast?: boolean } = {}): Promise<string> {
  const absRoot = path.resolve(root);
  // `resolved` never contains a symlink, `..` or `.`, which is what makes
  // treating `..` as "drop the last component" equal to what the kernel does.
  const resolved: string[] = [];
  let pending = splitComponents(unsafePath);
  let linksFollowed = 0;

  while (pending.length > 0) {
    const part = pending.shift() as string;
    if (part === '..') {
      resolved.pop();
      continue;
    }
    const candidate = [...resolved, part];
    if (pending.length === 0 && !opts.followLast) {
      resolved.push(part);
      break;
    }
    const hostPath = path.join(absRoot, ...candidate);
    const target = await readLinkIfSymlink(hostPath);
    if (target === null) {
      resolved.push(part);
      continue;
    }
    linksFollowed++;
    if (linksFollowed > MAX_SYMLINKS) {
      const err = new Error(`${unsafePath}: too many levels of symbolic links under ${absRoot}`) as NodeJS.ErrnoException;
      err.code = 'ELOOP';
      throw err;
    }
    if (target.startsWith('/')) resolved.length = 0;
    pending = [...splitComponents(target), ...pending];
  }

  return resolved.length === 0 ? absRoot : path.join(absRoot, ...resolved);
}

/**
 * `unsafePath` normalised lexically to a relative path with no leading `/`,
 * no `.` or empty components and no `..`; the root itself is `''`. Throws
 * PathEscapeError when a `..` would climb above the root. A leading `/` is
 * read as "the root", so callers that must refuse absolute paths check that
 * themselves. Does not look at the file system, so symlinks are not resolved:
 * use secureJoin before touching the result.
 */
export function cleanRelative(unsafePath: string, root = '/'): string {
  const out: string[] = [];
  for (const part of unsafePath.split('/')) {
    if (part === '' || part === '.') continue;
    if (part === '..') {
      if (out.length === 0) throw new PathEscapeError(unsafePath, root, 'climbs above the root with ".."');
      out.pop();
      continue;
    }
    out.push(part);
  }
  return out.join('/');
}

function splitComponents(p: string): string[] {
  return p.split('/').filter((c) => c !== '' && c !== '.');
}

async function readLinkIfSymlink(hostPath: string): Promise<string | null> {
  try {
    const st = await lstat(hostPath);
    if (!st.isSymbolicLink()) return null;
    return await readlink(hostPath);
  } catch (err) {
    // A missing component (or one below a non-directory) cannot redirect
    // anything; whatever uses the path will fail on it with a real error.
    if (isMissing(err)) return null;
    throw err;
  }
}
