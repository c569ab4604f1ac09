import path from 'node:path';

/**
 * `abs` relative to `root` with `/` separators, or undefined when it is not
 * strictly inside `root`. Compares path segments: `..env` at the root is
 * inside, `../x` is not.
 */
export function relInside(root: string, abs: string): string | undefined {
  // Context walks ask this for every file: two clean absolute paths are
  // answered by a prefix test, without path.relative.
  if (path.sep === '/' && isCleanAbsolute(root) && isCleanAbsolute(abs)) {
    return abs.length > root.length + 1 && abs.startsWith(root) && abs.charCodeAt(root.length) === 0x2f
      ? abs.slice(root.length + 1)
      : undefined;
  }
  const rel = path.relative(root, abs);
  if (rel === '' || rel === '..' || rel.startsWith(`..${path.sep}`) || path.isAbsolute(rel)) return undefined;
  return rel.split(path.sep).join('/');
}

/** Absolute, with no `.`/`..`/empty segments and no trailing slash: what path.relative would leave as it is. */
function isCleanAbsolute(p: string): boolean {
  return p.charCodeAt(0) === 0x2f && !UNCLEAN.test(p);
}

const UNCLEAN = /\/\.\.?(\/|$)|\/\/|\/$/;
