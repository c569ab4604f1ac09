/**
 * The closed set of errors users see. Each has a stable `code` that tests and
 * callers branch on; only the CLI entry maps them to exit codes.
 */
import { existsSync, readFileSync } from 'node:fs';
import nodePath from 'node:path';

/** A position in a source file, 1-based, as editors show it. */
export interface SourcePos {
  file: string;
  line: number;
  col: number;
}

export type ErrorCode =
  | 'CONFIG_INVALID'
  | 'PATH_ESCAPE'
  | 'STEP_FAILED'
  | 'CACHE_CORRUPT'
  | 'IMAGE_INVALID'
  | 'MERGE_CONFLICT'
  | 'RUNTIME_FAILED'
  | 'USAGE'
  | 'REGISTRY_DENIED'
  | 'REGISTRY_NOT_FOUND'
  | 'REGISTRY_FAILED'
  | 'BLOB_DIGEST_MISMATCH'
  | 'DISK_FULL'
  /** Stopped by SIGINT/SIGTERM (the CLI exits 130/143 by the signal, not by this code). */
  | 'INTERRUPTED';

export class LayergraphError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** One problem in a build file, pinned to where it is. */
export interface ConfigIssue {
  pos: SourcePos;
  /** Dotted path into the document, e.g. `images.api.steps[2].to`. */
  path: string;
  message: string;
  /** The source lines around `pos`, with a caret; empty when unknown. */
  excerpt?: string;
}

/** A build file that cannot be built as written. Carries every problem found, not just the first. */
export class ConfigError extends LayergraphError {
  constructor(readonly issues: ConfigIssue[]) {
    super('CONFIG_INVALID', issues.map(formatIssue).join('\n'));
  }
}

export function formatIssue(issue: ConfigIssue): string {
  const head = `${issue.pos.file}:${issue.pos.line}:${issue.pos.col}: ${issue.message}`;
  return issue.excerpt ? `${head}\n${issue.excerpt}` : head;
}

/** A path from the build file or a layer that would leave its root. */
export class PathEscapeError extends LayergraphError {
  constructor(
    readonly unsafePath: string,
    readonly root: string,
    reason: string,
  ) {
    super('PATH_ESCAPE', `${unsafePath}: ${reason}`);
  }
}

/** A step that ran and failed; the build stops, already-built steps stay cached. */
export class StepError extends LayergraphError {
  constructor(
    readonly image: string,
    readonly step: string,
    message: string,
    readonly pos?: SourcePos,
    options?: { cause?: unknown },
  ) {
    const where = pos ? `${pos.file}:${pos.line}:${pos.col}: ` : '';
    super('STEP_FAILED', `${where}${image}/${step}: ${message}`, options);
  }
}

/** Something in the cache directory does not match what its name promises. */
export class CacheCorruptError extends LayergraphError {
  constructor(message: string) {
    super('CACHE_CORRUPT', message);
  }
}

/**
 * The file system (or the user's quota on it) ran out of space while
 * layergraph wrote `path`. The message names what a user can act on — the
 * cache directory or output layout `path` is in, and the file system's mount
 * point — with `path` itself (often a staging file) as the detail.
 */
export class DiskFullError extends LayergraphError {
  /** The cache directory or output layout `path` is in, when it is in one. */
  readonly place: { kind: 'cache directory' | 'output layout'; dir: string } | undefined;
  /** Where the full file system is mounted, when /proc says. */
  readonly mountPoint: string | undefined;

  constructor(
    readonly path: string,
    options?: { cause?: unknown },
  ) {
    const place = placeOf(path);
    const mountPoint = mountPointOf(path);
    const where = place ? `the ${place.kind} ${place.dir}` : path;
    const fs = mountPoint ? ` (the file system on ${mountPoint} is full)` : '';
    const detail = place ? ` while writing ${path}` : '';
    const flag = place?.kind === 'cache directory' ? '--cache-dir' : place ? '--out' : '--cache-dir/--out';
    super('DISK_FULL', `no space left on device in ${where}${fs}${detail}; free space there (or point ${flag} elsewhere) and run again`, options);
    this.place = place;
    this.mountPoint = mountPoint;
  }
}

/**
 * `err` as a DiskFullError when the system said ENOSPC or EDQUOT, naming
 * `path` (the file the caller was writing), or else the path the error names
 * itself (a stream's write names none); any other error as it is.
 */
export function asDiskFull(err: unknown, path?: string): unknown {
  const e = err as (NodeJS.ErrnoException & { dest?: string }) | undefined;
  if (e?.code !== 'ENOSPC' && e?.code !== 'EDQUOT') return err;
  return new DiskFullError(path ?? e.dest ?? e.path ?? '(a path the system did not name)', { cause: err });
}

/** An image (a layout we read, a layer in it) that is damaged or not what its descriptors say. */
export class InvalidImageError extends LayergraphError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('IMAGE_INVALID', message, options);
  }
}

/** Two steps with no order between them change the same path, and the image does not say which wins. */
export class MergeConflictError extends LayergraphError {
  constructor(
    readonly image: string,
    readonly conflicts: ReadonlyArray<{ path: string; steps: [string, string] }>,
  ) {
    const shown = conflicts.slice(0, 5).map((c) => `\n  ${c.path}: changed by both \`${c.steps[0]}\` and \`${c.steps[1]}\``);
    const more = conflicts.length > 5 ? `\n  and ${conflicts.length - 5} more` : '';
    super(
      'MERGE_CONFLICT',
      `image ${image}: steps with no order between them change the same path:${shown.join('')}${more}\n` +
        'Make one step need the other, or set `merge: declared-order` on the image to let the later-declared step win.',
    );
  }
}

/** Wrong command-line arguments. */
export class UsageError extends LayergraphError {
  constructor(message: string) {
    super('USAGE', message);
  }
}

/**
 * The container runtime (runc, crun, or the chroot fallback) is missing or
 * could not start the command: not the command's own failure. `detail` is
 * the runtime's own message.
 */
export class RuntimeError extends LayergraphError {
  constructor(
    readonly runtime: string,
    readonly detail: string,
    options?: { cause?: unknown },
  ) {
    super('RUNTIME_FAILED', `${runtime}: ${detail}`, options);
  }
}

/** What a registry error is about: the registry host always, the repository and blob or manifest when known. */
export interface RegistryErrorSubject {
  registry: string;
  repository?: string;
  /** `blob sha256:…` or `manifest <tag or digest>`. */
  object?: string;
}

/**
 * A registry refused, lacked, or failed to serve something. `REGISTRY_DENIED`
 * (credentials), `REGISTRY_NOT_FOUND` (no such repository, tag or blob),
 * `REGISTRY_FAILED` (unreachable, or still failing after retries, or an answer
 * we cannot use), `BLOB_DIGEST_MISMATCH` (bytes that are not what their digest
 * promises: never retried).
 */
export class RegistryError extends LayergraphError {
  constructor(
    code: 'REGISTRY_DENIED' | 'REGISTRY_NOT_FOUND' | 'REGISTRY_FAILED' | 'BLOB_DIGEST_MISMATCH',
    readonly subject: RegistryErrorSubject,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(code, `${describeSubject(subject)}: ${message}`, options);
  }
}

function describeSubject(s: RegistryErrorSubject): string {
  const repo = s.repository ? `/${s.repository}` : '';
  return s.object ? `${s.registry}${repo}: ${s.object}` : `${s.registry}${repo}`;
}

/**
 * The layergraph cache (a directory with `blobs/` and `records/` or `ingest/`)
 * or OCI layout (with an `oci-layout` file) that `file` is in, if any.
 */
function placeOf(file: string): DiskFullError['place'] {
  for (let dir = nodePath.dirname(nodePath.resolve(file)); dir !== nodePath.dirname(dir); dir = nodePath.dirname(dir)) {
    if (existsSync(nodePath.join(dir, 'oci-layout'))) return { kind: 'output layout', dir };
    if (existsSync(nodePath.join(dir, 'leases')) || (existsSync(nodePath.join(dir, 'blobs')) && existsSync(nodePath.join(dir, 'ingest')))) {
      return { kind: 'cache directory', dir };
    }
  }
  return undefined;
}

/** The mount point of the file system `file` is on: the longest mount point that is a prefix of it (/proc/self/mountinfo). */
function mountPointOf(file: string): string | undefined {
  let best: string | undefined;
  try {
    const abs = nodePath.resolve(file);
    for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
      const mp = line.split(' ')[4]?.replace(/\\(\d{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
      if (mp && (abs === mp || abs.startsWith(mp.endsWith('/') ? mp : `${mp}/`)) && mp.length >= (best?.length ?? 0)) best = mp;
    }
  } catch {
    // not Linux: the path alone
  }
  return best;
}
