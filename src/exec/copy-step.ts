/**
 * Execute a copy step: write the selected files into an empty upper directory.
 *
 * Where things land follows Docker's COPY rules, read from the text of `to`
 * alone (as `COPY --link` does): a trailing `/` or several sources make `to`
 * a directory; a single file without a trailing `/` is written at `to`; a
 * directory's contents are copied into `to`. The parent filesystem is never
 * read, which is what lets a copy run anywhere, without root or mounts.
 *
 * Modes are set explicitly after every write, so the umask of the process
 * cannot leak into the layer. Ownership is not written here (that would need
 * root): the packer assigns uid/gid.
 */
import { constants } from 'node:fs';
import { chmod, copyFile, mkdir, symlink } from 'node:fs/promises';
import path from 'node:path';
import type { SelectedEntry, Selection } from '../context/select.js';

export const DIR_MODE = 0o755;

export interface CopyTarget {
  /** Absolute path in the image; a trailing `/` means a directory. */
  to: string;
  /** Mode for every copied file and directory, overriding the source's. */
  chmod: number | undefined;
}

export class CopyDestinationError extends Error {}

export async function writeCopy(upper: string, selections: Selection[], target: CopyTarget): Promise<void> {
  const toIsDir = target.to.endsWith('/') || selections.length > 1;
  if (selections.length > 1 && !target.to.endsWith('/')) {
    throw new CopyDestinationError(
      `\`to\` is "${target.to}" but ${selections.length} sources are copied; end it with "/" to copy them into a directory`,
    );
  }
  const toRel = target.to.split('/').filter(Boolean).join('/');
  const plan = new UpperPlan();
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
  await plan.write(upper);
}

function joinRel(a: string, b: string): string {
  return a && b ? `${a}/${b}` : a || b;
}

type Planned = { kind: 'dir'; mode: number } | { kind: 'file'; src: string; mode: number } | { kind: 'link'; target: string };

/** Files copied at once: each copy waits mostly on the filesystem, not the CPU. */
const PARALLEL_COPIES = 16;

/**
 * What the upper will hold, decided in memory first so that a later source
 * replaces an earlier one exactly as sequential copies would, and the writes
 * themselves can then run in parallel into an empty directory.
 */
class UpperPlan {
  private readonly entries = new Map<string, Planned>();

  entry(rel: string, e: SelectedEntry, modeOverride: number | undefined): void {
    if (e.stat.isDirectory()) return this.dir(rel, modeOverride ?? e.stat.mode & 0o7777);
    this.dir(parentOf(rel), undefined);
    // Only a directory has anything planned below it; scanning for that on every file would be quadratic.
    if (this.entries.get(rel)?.kind === 'dir') this.removeTree(rel);
    this.entries.set(
      rel,
      e.linkTarget !== undefined
        ? { kind: 'link', target: e.linkTarget }
        : { kind: 'file', src: e.abs, mode: modeOverride ?? e.stat.mode & 0o7777 },
    );
  }

  /** mkdir -p: missing ancestors get 0755; the directory itself `mode` when given. */
  dir(rel: string, mode: number | undefined): void {
    const parts = rel ? rel.split('/') : [];
    for (let i = 1; i <= parts.length; i++) {
      const sub = parts.slice(0, i).join('/');
      const existing = this.entries.get(sub);
      if (existing?.kind !== 'dir') {
        if (existing) this.entries.delete(sub);
        this.entries.set(sub, { kind: 'dir', mode: DIR_MODE });
      }
    }
    if (rel && mode !== undefined) this.entries.set(rel, { kind: 'dir', mode });
  }

  /** Directories first and writable, then files in parallel, then the directories' final modes, deepest first. */
  async write(upper: string): Promise<void> {
    const all = [...this.entries];
    const dirs = all.filter(([, p]) => p.kind === 'dir').sort(([a], [b]) => (a < b ? -1 : 1));
    for (const [rel] of dirs) {
      await mkdir(path.join(upper, rel));
      await chmod(path.join(upper, rel), 0o700 | DIR_MODE);
    }
    const leaves = all.filter(([, p]) => p.kind !== 'dir');
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < leaves.length) {
        const [rel, p] = leaves[next++]!;
        const dest = path.join(upper, rel);
        if (p.kind === 'link') await symlink(p.target, dest);
        else if (p.kind === 'file') {
          await copyFile(p.src, dest, constants.COPYFILE_FICLONE);
          await chmod(dest, p.mode);
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(PARALLEL_COPIES, leaves.length) }, worker));
    for (const [rel, p] of dirs.reverse()) {
      if (p.kind === 'dir' && p.mode !== (0o700 | DIR_MODE)) await chmod(path.join(upper, rel), p.mode);
    }
  }

  /** Forget `rel` and everything planned below it. */
  private removeTree(rel: string): void {
    for (const k of this.entries.keys()) if (k === rel || k.startsWith(`${rel}/`)) this.entries.delete(k);
  }
}

function parentOf(rel: string): string {
  const d = path.posix.dirname(rel);
  return d === '.' ? '' : d;
}
