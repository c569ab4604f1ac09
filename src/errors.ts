/**
 * The closed set of errors users see. Each has a stable `code` that tests and
 * callers branch on; only the CLI entry maps them to exit codes.
 */

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
  | 'BLOB_DIGEST_MISMATCH';

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
