/**
 * Plan a copy step: decide what its layer holds, entry by entry, so the
 * packer can read each file straight from the context (no upper directory).
 *
 * Where things land follows Docker's COPY rules, read from the text of `to`
 * alone (as `COPY --link` does): a trailing `/` or several sources make `to`
 * a directory; a single file without a trailing `/` is written at `to`; a
 * directory's contents are copied into `to`. File contents never depend on
 * the filesystem below, which is what lets a copy run without root or mounts
 * and build in parallel with the steps it sits on.
 *
 * What does depend on what is below: a directory the copy only passes
 * through (`/app` in `to: /app/conf/`) keeps the mode and owner it already
 * has there, as in Docker; a directory that is new gets 0755 and the step's
 * owner. A linked step sees nothing below, so its directories are all new.
 *
 * Modes and owners live in the plan, not on disk: nothing is written but the
 * layer (no root needed, any umask), and the packer takes the layer's modes
 * and owners from the plan.
 */
import { statSync } from 'node:fs';
import path from 'node:path';
import type { SelectedEntry, Selection } from '../context/select.js';
import type { TreeEntry } from '../oci/layer-pack.js';

export const DIR_MODE = 0o755;

export interface Meta {
  mode: number;
  uid: number;
  gid: number;
}

/** Directories of a filesystem (relative paths, no leading `/`) and their metadata. */
export type DirMeta = ReadonlyMap<string, Meta>;

export interface CopyTarget {
  /** Absolute path in the image; a trailing `/` means a directory. */
  to: string;
  /** Mode for every copied file and directory, overriding the source's. */
  chmod: number | undefined;
  /** Owner of everything the step writes; default 0:0. */
  chown: { uid: number; gid: number } | undefined;
}

export class CopyDestinationError extends Error {}

/** An input file changed between hashing and copying: its key would not describe its layer. */
export class InputChangedError extends Error {}

type Planned =
  | ({ kind: 'dir' } & Meta)
  | ({ kind: 'file'; entry: SelectedEntry } & Meta)
  | ({ kind: 'link'; target: string } & Meta);

export function planCopy(selections: Selection[], target: CopyTarget, below: DirMeta): CopyPlan {
  if (selections.length > 1 && !target.to.endsWith('/')) {
    throw new CopyDestinationError(
      `\`to\` is "${target.to}" but ${selections.length} sources are copied; end it with "/" to copy them into a directory`,
    );
  }
  const toIsDir = target.to.endsWith('/') || selections.length > 1;
  const parts = target.to.split('/').filter((p) => p && p !== '.');
  if (parts.includes('..')) throw new CopyDestinationError(`\`to\` is "${target.to}"; \`..\` would leave the image root`);
  const toRel = parts.join('/');
  const plan = new CopyPlan(below, target.chown ?? { uid: 0, gid: 0 });
  for (const sel of selections) {
    if (sel.kind === 'dir') {
      plan.dir(toRel, target.chmod);
      for (const e of sel.entries) plan.entry(joinRel(toRel, e.rel), e, target.chmod);
    } else {
      const destRel = toIsDir ? joinRel(toRel, path.posix.basename(sel.source)) : toRel;
      if (destRel === '') throw new CopyDestinationError('cannot copy a file onto `/`; end `to` with "/" to copy into the root');
      plan.entry(destRel, sel.entries[0]!, target.chmod);
    }
  }
  return plan;
}

/**
 * What the layer will hold, decided in memory so that a later source
 * replaces an earlier one exactly as sequential copies would.
 */
export class CopyPlan {
  private readonly entries = new Map<string, Planned>();

  constructor(
    private readonly below: DirMeta,
    private readonly owner: { uid: number; gid: number },
  ) {}

  get isEmpty(): boolean {
    return this.entries.size === 0;
  }

  /** Mode and owner of an entry of the upper, for the packer. */
  meta(rel: string): Meta {
    const p = this.entries.get(rel);
    if (!p) throw new Error(`internal: ${rel} is in the upper but not in the copy plan`);
    return p;
  }

  /** The directories this step's layer holds, with their metadata. */
  dirs(): Map<string, Meta> {
    const out = new Map<string, Meta>();
    for (const [rel, p] of this.entries) if (p.kind === 'dir') out.set(rel, { mode: p.mode, uid: p.uid, gid: p.gid });
    return out;
  }

  entry(rel: string, e: SelectedEntry, modeOverride: number | undefined): void {
    if (e.stat.isDirectory()) {
      this.implied(parentOf(rel));
      this.set(rel, { kind: 'dir', mode: modeOverride ?? e.stat.mode & 0o7777, ...this.owner });
      return;
    }
    this.implied(parentOf(rel));
    this.set(
      rel,
      e.linkTarget !== undefined
        ? { kind: 'link', target: e.linkTarget, mode: 0o777, ...this.owner }
        : { kind: 'file', entry: e, mode: modeOverride ?? e.stat.mode & 0o7777, ...this.owner },
    );
  }

  /** The directory a directory source is copied into: implied, but `chmod` applies when it is new. */
  dir(rel: string, mode: number | undefined): void {
    if (!rel) return;
    this.implied(parentOf(rel));
    if (this.entries.get(rel)?.kind !== 'dir') this.set(rel, this.impliedMeta(rel, mode));
  }

  /** Directories the step passes through: kept as they are below, else new. */
  private implied(rel: string): void {
    const parts = rel ? rel.split('/') : [];
    for (let i = 1; i <= parts.length; i++) {
      const sub = parts.slice(0, i).join('/');
      if (this.entries.get(sub)?.kind !== 'dir') this.set(sub, this.impliedMeta(sub, undefined));
    }
  }

  private impliedMeta(rel: string, mode: number | undefined): Planned {
    const existing = this.below.get(rel);
    return existing ? { kind: 'dir', ...existing } : { kind: 'dir', mode: mode ?? DIR_MODE, ...this.owner };
  }

  private set(rel: string, p: Planned): void {
    // Only a directory has anything planned below it; scanning for that on every file would be quadratic.
    if (this.entries.get(rel)?.kind === 'dir' && p.kind !== 'dir') {
      for (const k of this.entries.keys()) if (k.startsWith(`${rel}/`)) this.entries.delete(k);
    }
    this.entries.set(rel, p);
  }

  /** The layer's entries, to pack straight from the sources (see packTree). */
  treeEntries(): TreeEntry[] {
    return [...this.entries].map(([rel, p]): TreeEntry => {
      if (p.kind === 'dir') return { rel, kind: 'directory' };
      if (p.kind === 'link') return { rel, kind: 'symlink', linkTarget: p.target };
      return { rel, kind: 'file', abs: p.entry.abs, st: p.entry.stat };
    });
  }

  /**
   * Fails when a source file changed since its hash was taken (after
   * packing it straight from the context): the key would not describe the layer.
   */
  checkUnchanged(): void {
    // Synchronous: a stat the page cache answers costs less than a trip to the thread pool.
    for (const p of this.entries.values()) if (p.kind === 'file') assertUnchanged(p.entry);
  }
}

function assertUnchanged(e: SelectedEntry): void {
  const now = statSync(e.abs);
  const was = e.stat;
  if (now.size !== was.size || now.mtimeMs !== was.mtimeMs || now.ctimeMs !== was.ctimeMs || now.ino !== was.ino) {
    throw new InputChangedError(`${e.abs} changed while it was being packed; run the build again`);
  }
}

/** Directories of the filesystem after `layers`, each later layer's entries winning. */
export function mergeDirs(...layers: DirMeta[]): DirMeta {
  if (layers.length === 1) return layers[0]!;
  const out = new Map<string, Meta>();
  for (const l of layers) for (const [k, v] of l) out.set(k, v);
  return out;
}

function joinRel(a: string, b: string): string {
  return a && b ? `${a}/${b}` : a || b;
}

function parentOf(rel: string): string {
  const d = path.posix.dirname(rel);
  return d === '.' ? '' : d;
}
