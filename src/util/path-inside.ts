import path from 'node:path';

/**
 * `abs` relative to `root` with `/` separators, or undefined when it is not
 * strictly inside `root`. Compares path segments: `..env` at the root is
 * inside, `../x` is not.
 */
export function relInside(root: string, abs: string): string | undefined {
  // Context walks ask this for every file; a plain prefix test answers the
  // common case (clean paths joined below the root) without path.relative.
  if (path.sep === '/' && abs.startsWith(root) && abs.charCodeAt(root.length) === 0x2f && isClean(root)) {
    const rest = abs.slice(root.length + 1);
    if (rest && isClean(rest)) return rest;
  }
  const rel = path.relative(root, abs);
  if (rel === '' || rel === '..' || rel.startsWith(`..${path.sep}`) || path.isAbsolute(rel)) return undefined;
  return rel.split(path.sep).join('/');
}

/** No `.`/`..`/empty segments and no trailing slash: what path.relative would leave as it is. */
function isClean(p: string): boolean {
  return !UNCLEAN.test(p);
}

const UNCLEAN = /(^|\/)\.\.?(\/|$)|\/\/|\/$|^\//;
