/**
 * Resolve a copy step's sources to the files they select.
 *
 * Docker COPY rules: a source is a path or a glob; each match is copied as a
 * unit (a file, or the contents of a directory). A source that is itself a
 * symlink is followed, as BuildKit does, but it and every parent must resolve
 * inside the root; symlinks met while walking a directory are kept as links.
 */
import { lstatSync, readdirSync, readlinkSync, type Stats } from 'node:fs';
import { lstat, readdir, realpath, stat } from 'node:fs/promises';
import path from 'node:path';
import picomatch from 'picomatch';
import type { SourcePos } from '../errors.js';
import { ConfigError, PathEscapeError } from '../errors.js';
import { isMissing } from '../util/fs-read.js';
import { relInside } from '../util/path-inside.js';
import { secureJoin } from '../util/secure-join.js';
import { NO_FILTER, type ContextFilter } from './context-filter.js';

export interface SelectedEntry {
  /** Path relative to the selected source ('' for the source itself). */
  rel: string;
  abs: string;
  stat: Stats;
  linkTarget?: string;
}

export interface Selection {
  /** The source as matched, relative to the root, e.g. `services/api`. */
  source: string;
  kind: 'file' | 'dir';
  /** For a file: one entry with rel ''. For a directory: every descendant, sorted; not the directory itself. */
  entries: SelectedEntry[];
  /** Mode of the selected directory (or file) itself. */
  stat: Stats;
}

export interface SelectOptions {
  /** Name what each source is, without listing directory contents. */
  shallow?: boolean;
  /** What of the root may not be read (the context's .dockerignore, the build's own directories). */
  filter?: ContextFilter;
  /** Modes that differ from what is on disk, by path relative to the root (see build/snapshots.ts). */
  realModes?: ReadonlyMap<string, number>;
}

export interface SourceRef {
  spec: string;
  pos: SourcePos;
}

/**
 * How paths resolve under a root. The build context refuses anything that
 * escapes; an image's root filesystem resolves absolute links against itself,
 * as a container would see them.
 */
export type RootKind = 'context' | 'image';

export async function selectSources(
  root: string,
  sources: SourceRef[],
  rootKind: RootKind,
  opts: SelectOptions = {},
): Promise<Selection[]> {
  const realRoot = await realpath(root);
  const filter = opts.filter ?? NO_FILTER;
  const selections: Selection[] = [];
  const issues: ConstructorParameters<typeof ConfigError>[0] = [];
  for (const src of sources) {
    try {
      const matches = await expand(realRoot, src.spec, rootKind, filter);
      let selected = 0;
      for (const rel of matches) {
        try {
          selections.push(await selectOne(realRoot, rel, rootKind, opts.shallow ?? false, filter));
          selected++;
        } catch (err) {
          // A glob passes over what the context leaves out; a path named outright is an error.
          if (!(err instanceof SourceExcluded && isGlob(src.spec))) throw err;
        }
      }
      if (selected === 0) throw new SourceNotFound('matches nothing');
    } catch (err) {
      if (err instanceof PathEscapeError || err instanceof SourceNotFound) {
        issues.push({ pos: src.pos, path: 'copy', message: describe(err, src.spec, rootKind) });
      } else throw err;
    }
  }
  if (issues.length) throw new ConfigError(issues);
  if (opts.realModes?.size) applyRealModes(realRoot, selections, opts.realModes);
  return selections;
}

function applyRealModes(root: string, selections: Selection[], realModes: ReadonlyMap<string, number>): void {
  const fix = (abs: string, st: Stats): void => {
    const rel = relInside(root, abs);
    const real = rel === undefined ? undefined : realModes.get(rel);
    if (real !== undefined) st.mode = (st.mode & ~0o7777) | real;
  };
  for (const sel of selections) for (const e of sel.entries) fix(e.abs, e.stat);
}

class SourceNotFound extends Error {}

/** A source that exists but is left out of the context (`.dockerignore`, the build's own directories). */
class SourceExcluded extends SourceNotFound {}

function describe(err: Error, spec: string, rootKind: RootKind): string {
  const where = rootKind === 'context' ? 'the build context' : 'the source image';
  if (err instanceof PathEscapeError) return `copy source \`${spec}\` leaves ${where}: ${err.message}`;
  if (err instanceof SourceExcluded) return `copy source \`${spec}\` is left out of ${where}: ${err.message}`;
  return `copy source \`${spec}\` ${err.message} in ${where}`;
}

const GLOB_CHARS = /[*?[\]{}]/;

function isGlob(spec: string): boolean {
  return GLOB_CHARS.test(spec);
}

/**
 * A plain path is itself; a glob is matched below its static prefix (the
 * segments before the first glob character), which is resolved like any
 * source, so globs in an image see the image's links, not the host's. Links
 * are listed as matches, never walked into; `selectOne` follows them.
 */
async function expand(root: string, spec: string, rootKind: RootKind, filter: ContextFilter): Promise<string[]> {
  const clean = path.posix.normalize(spec.replace(/^\/+/, '')).replace(/\/+$/, '') || '.';
  if (!GLOB_CHARS.test(clean)) return [clean];
  const segments = clean.split('/');
  const firstGlob = segments.findIndex((seg) => GLOB_CHARS.test(seg));
  const prefix = segments.slice(0, firstGlob).join('/');
  const pattern = segments.slice(firstGlob).join('/');
  const base = prefix ? await resolveFollowing(root, prefix, rootKind) : root;
  const depth = pattern.includes('**') ? Infinity : segments.length - firstGlob;
  const isMatch = picomatch(pattern, { dot: true });
  const matches = (await listBelow(base, depth, filter)).filter((rel) => isMatch(rel));
  if (matches.length === 0) throw new SourceNotFound('matches nothing');
  return matches.map((m) => (prefix ? `${prefix}/${m}` : m)).sort();
}

/** Relative paths below `dir`, at most `depth` levels deep, without following links. */
async function listBelow(dir: string, depth: number, filter: ContextFilter): Promise<string[]> {
  const out: string[] = [];
  async function visit(abs: string, rel: string, level: number): Promise<void> {
    for (const ent of await readdir(abs, { withFileTypes: true })) {
      const excluded = filter.excluded(path.join(abs, ent.name)) !== undefined;
      const reincludes = excluded && ent.isDirectory() && filter.walkExcluded(path.join(abs, ent.name));
      if (excluded && !reincludes) continue;
      const r = rel ? `${rel}/${ent.name}` : ent.name;
      // A directory that only holds re-included files is still a match; selectOne drops it if it is empty.
      out.push(r);
      if (ent.isDirectory() && level < depth) await visit(path.join(abs, ent.name), r, level + 1);
    }
  }
  const st = await stat(dir).catch(() => undefined);
  if (st?.isDirectory()) await visit(dir, '', 1);
  return out;
}

async function selectOne(
  root: string,
  rel: string,
  rootKind: RootKind,
  shallow: boolean,
  filter: ContextFilter,
): Promise<Selection> {
  const abs = await resolveFollowing(root, rel, rootKind);
  const why = filter.excluded(abs);
  const st = await stat(abs);
  // An excluded directory still counts when `!` patterns bring back something inside it, as in Docker.
  if (why && !(st.isDirectory() && filter.walkExcluded(abs))) throw new SourceExcluded(why);
  if (st.isFile()) return { source: rel, kind: 'file', stat: st, entries: [{ rel: '', abs, stat: st }] };
  if (st.isDirectory()) {
    const entries = shallow && !why ? [] : await walk(abs, filter);
    if (why && entries.length === 0) throw new SourceExcluded(why);
    return { source: rel, kind: 'dir', stat: st, entries: shallow ? [] : entries };
  }
  throw new SourceNotFound('is neither a file nor a directory');
}

/** Resolve `rel` under `root`, following symlinks, and refuse (context) or clamp (image) escapes. */
async function resolveFollowing(root: string, rel: string, rootKind: RootKind): Promise<string> {
  if (rootKind === 'image') return resolveInImage(root, rel);
  let real: string;
  try {
    real = await realpath(path.join(root, rel));
  } catch (err) {
    if (isMissing(err)) throw new SourceNotFound('does not exist');
    // A problem with the source as written, so a problem at its place in the build file.
    if ((err as NodeJS.ErrnoException).code === 'ELOOP') throw new SourceNotFound('has too many levels of symbolic links');
    if ((err as NodeJS.ErrnoException).code === 'ENAMETOOLONG') throw new SourceNotFound('is a path too long for the file system');
    throw err;
  }
  if (real !== root && relInside(root, real) === undefined) {
    throw new PathEscapeError(rel, root, `resolves to ${real}, outside ${root}`);
  }
  return real;
}

/** Follow links the way the image itself would: `/` is the image root. */
async function resolveInImage(root: string, rel: string): Promise<string> {
  let abs: string;
  try {
    abs = await secureJoin(root, rel, { followLast: true });
    await lstat(abs);
  } catch (err) {
    if (isMissing(err)) throw new SourceNotFound('does not exist');
    if ((err as NodeJS.ErrnoException).code === 'ELOOP') throw new SourceNotFound('has too many levels of symbolic links');
    throw err;
  }
  return abs;
}

// Synchronous on purpose: a context walk is thousands of lstat calls, and a
// thread-pool round trip per call cost ten times the call itself (0.26 s of
// idle time for 5,000 files on a no-op rebuild).
async function walk(dir: string, filter: ContextFilter): Promise<SelectedEntry[]> {
  const out: SelectedEntry[] = [];
  function visit(absDir: string, relDir: string, dirExcluded: boolean): void {
    const names = readdirSync(absDir).sort();
    const check = dirExcluded || filter.mayExcludeBelow(absDir);
    for (const name of names) {
      const abs = path.join(absDir, name);
      const excluded = check && filter.excluded(abs) !== undefined;
      const rel = relDir ? `${relDir}/${name}` : name;
      const st = lstatSync(abs);
      if (excluded) {
        // An excluded directory is still walked when a `!` pattern may bring back something inside it.
        if (st.isDirectory() && filter.walkExcluded(abs)) visit(abs, rel, true);
        continue;
      }
      if (st.isSymbolicLink()) {
        out.push({ rel, abs, stat: st, linkTarget: readlinkSync(abs) });
      } else if (st.isDirectory()) {
        out.push({ rel, abs, stat: st });
        visit(abs, rel, false);
      } else if (st.isFile()) {
        out.push({ rel, abs, stat: st });
      }
      // Sockets, fifos and devices in a build context are not copyable content; Docker skips them too.
    }
  }
  visit(dir, '', filter.excluded(dir) !== undefined);
  return out;
}
