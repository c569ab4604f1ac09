/**
 * What of the build context a build may read. Two things are left out:
 * paths `.dockerignore` excludes (Docker's rules and file, so a repository
 * that already has one behaves the same; via @balena/dockerignore, a port of
 * Docker's own matcher), and the build's own output and cache directories,
 * which would otherwise feed every build into the next.
 */
import { readFile, realpath } from 'node:fs/promises';
import path from 'node:path';
import dockerignore from '@balena/dockerignore';

export const IGNORE_FILE = '.dockerignore';

export interface ContextFilter {
  /** Why `absPath` is not part of the context, or undefined when it is. */
  excluded(absPath: string): string | undefined;
  /**
   * Whether an excluded directory may still hold included paths (a `!`
   * pattern brings them back), so a walk has to look inside it.
   */
  walkExcluded(absDir: string): boolean;
}

export const NO_FILTER: ContextFilter = { excluded: () => undefined, walkExcluded: () => false };

export async function loadContextFilter(context: string, ownDirs: string[]): Promise<ContextFilter> {
  const root = await realpath(context);
  const own = new Set(await Promise.all(ownDirs.map((d) => realpath(d).catch(() => path.resolve(d)))));
  const text = await readFile(path.join(root, IGNORE_FILE), 'utf8').catch(() => '');
  const patterns = text.split(/\r?\n/).map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
  // A CommonJS package whose types declare an ES default export: under NodeNext the default import is
  // the module object, which at run time is also the function.
  const ig = (dockerignore as unknown as typeof dockerignore.default)().add(patterns);
  return {
    walkExcluded: (absDir) => !own.has(absDir) && patterns.some((p) => p.startsWith('!')),
    excluded(absPath) {
      if (own.has(absPath)) return 'it is this build’s own output or cache';
      const rel = path.relative(root, absPath);
      if (!rel || rel.startsWith('..') || path.isAbsolute(rel)) return undefined;
      return patterns.length && ig.ignores(rel.split(path.sep).join('/')) ? `excluded by ${IGNORE_FILE}` : undefined;
    },
  };
}
