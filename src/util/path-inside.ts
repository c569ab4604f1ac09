import path from 'node:path';

/**
 * `abs` relative to `root` with `/` separators, or undefined when it is not
 * strictly inside `root`. Compares path segments: `..env` at the root is
 * inside, `../x` is not.
 */
export function relInside(root: string, abs: string): string | undefined {
  const rel = path.relative(root, abs);
  if (rel === '' || rel === '..' || rel.startsWith(`..${path.sep}`) || path.isAbsolute(rel)) return undefined;
  return rel.split(path.sep).join('/');
}
