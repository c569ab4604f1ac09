/**
 * What of the build context a build may read. Two things are left out:
 * paths `.dockerignore` excludes (Docker's rules and file, so a repository
 * that already has one behaves the same; via @balena/dockerignore, a port of
 * Docker's own matcher), and the build's own output and cache directories,
 * which would otherwise feed every build into the next.
 */
import { readFile, realpath, stat } from 'node:fs/promises';
import path from 'node:path';
import dockerignore from '@balena/dockerignore';
import { UsageError } from '../errors.js';
import { relInside } from '../util/path-inside.js';

export const IGNORE_FILE = '.dockerignore';

export interface ContextFilter {
  /** Why `absPath` is not part of the context, or undefined when it is. */
  excluded(absPath: string): string | undefined;
  /**
   * Whether an excluded directory may still hold included paths (a `!`
   * pattern that can match below it), so a walk has to look inside it.
   */
  walkExcluded(absDir: string): boolean;
  /**
   * Whether anything below `absDir` (a directory that is itself part of the
   * context) may be excluded. When not, a walk of it asks nothing per entry:
   * matching every file of a big tree against every pattern cost a no-op
   * rebuild more than stat'ing it.
   */
  mayExcludeBelow(absDir: string): boolean;
}

export const NO_FILTER: ContextFilter = { excluded: () => undefined, walkExcluded: () => false, mayExcludeBelow: () => false };

export async function loadContextFilter(context: string, ownDirs: string[]): Promise<ContextFilter> {
  const root = await realpath(context);
  const own = await Promise.all(ownDirs.map((d) => realpath(d).catch(() => path.resolve(d))));
  const patterns = await readPatterns(path.join(root, IGNORE_FILE));
  // A CommonJS package whose types declare an ES default export: under NodeNext the default import is
  // the module object, which at run time is also the function.
  const ig = (dockerignore as unknown as typeof dockerignore.default)().add(patterns);
  const exceptionPrefixes = patterns.filter((p) => p.startsWith('!')).map((p) => asciiLower(literalPrefix(p.slice(1))));
  const exclusionPrefixes = patterns.filter((p) => !p.startsWith('!')).map((p) => asciiLower(literalPrefix(p)));
  const isOwn = (abs: string): boolean => own.some((d) => abs === d || relInside(d, abs) !== undefined);
  const relOf = (abs: string): string | undefined => relInside(root, abs);
  return {
    excluded(absPath) {
      if (isOwn(absPath)) return 'it is this build’s own output or cache';
      const rel = relOf(absPath);
      return rel !== undefined && patterns.length && ig.ignores(rel) ? `excluded by ${IGNORE_FILE}` : undefined;
    },
    walkExcluded(absDir) {
      const rel = relOf(absDir);
      if (rel === undefined || isOwn(absDir)) return false;
      // An exception can only bring back something below `rel` if its fixed start
      // lies on the way to `rel` or below it (`!src/**` for src, `!**/keep` for any).
      const dir = `${asciiLower(rel)}/`;
      return exceptionPrefixes.some((prefix) => dir.startsWith(prefix) || prefix.startsWith(dir));
    },
    mayExcludeBelow(absDir) {
      if (own.some((d) => relInside(absDir, d) !== undefined)) return true;
      if (absDir === root) return exclusionPrefixes.length > 0;
      const rel = relOf(absDir);
      if (rel === undefined) return false;
      // Patterns match whole paths from the context root, so a path below `rel` can only match
      // one whose fixed start lies on the way to `rel` or below it. (Exceptions only bring
      // paths back, and `rel` itself is not excluded.) The matcher ignores case.
      const dir = `${asciiLower(rel)}/`;
      return exclusionPrefixes.some((prefix) => dir.startsWith(prefix) || prefix.startsWith(dir));
    },
  };
}

async function readPatterns(file: string): Promise<string[]> {
  let text: string;
  try {
    // A fifo would block the build for ever, and /dev/zero never end.
    if (!(await stat(file)).isFile()) throw new Error('not a regular file');
    text = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw new UsageError(`cannot read ${file}: ${(err as Error).message}`);
  }
  return text
    .replace(/^\uFEFF/, '')
    .split(/\r?\n/)
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'));
}

/**
 * The start of a pattern that can only match itself (up to ASCII case): the
 * matcher builds a case-insensitive regex and escapes only `.` and `$`, so
 * any other character but letters, digits, `/`, `_` and `-` may be special.
 */
function literalPrefix(pattern: string): string {
  const clean = path.posix.normalize(pattern.trim().replace(/^\/+/, ''));
  const special = clean.search(/[^A-Za-z0-9/._-]/);
  return special === -1 ? clean : clean.slice(0, special);
}

function asciiLower(s: string): string {
  return s.replace(/[A-Z]/g, (c) => c.toLowerCase());
}
