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
import { chmod, copyFile, lstat, mkdir, rm, symlink } from 'node:fs/promises';
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
  const writer = new UpperWriter(upper);
  for (const sel of selections) {
    if (sel.kind === 'dir') {
      await writer.dir(toRel, target.chmod);
      for (const e of sel.entries) await writer.entry(joinRel(toRel, e.rel), e, target.chmod);
    } else {
      const destRel = toIsDir ? joinRel(toRel, path.posix.basename(sel.source)) : toRel;
      if (destRel === '') throw new CopyDestinationError('cannot copy a file onto `/`; end `to` with "/" to copy into the root');
      await writer.entry(destRel, sel.entries[0]!, target.chmod);
    }
  }
  await writer.finish();
}

function joinRel(a: string, b: string): string {
  return a && b ? `${a}/${b}` : a || b;
}

/**
 * Writes into the upper. Directories stay writable until `finish`, which sets
 * their final modes deepest first, so a read-only source directory can still
 * be filled without root.
 */
class UpperWriter {
  private readonly dirModes = new Map<string, number>();

  constructor(private readonly upper: string) {}

  async entry(rel: string, e: SelectedEntry, modeOverride: number | undefined): Promise<void> {
    if (e.stat.isDirectory()) return this.dir(rel, modeOverride ?? e.stat.mode & 0o7777);
    await this.dir(parentOf(rel), undefined);
    const dest = path.join(this.upper, rel);
    await rm(dest, { recursive: true, force: true });
    for (const k of this.dirModes.keys()) if (k === rel || k.startsWith(`${rel}/`)) this.dirModes.delete(k);
    if (e.linkTarget !== undefined) {
      await symlink(e.linkTarget, dest);
      return;
    }
    await copyFile(e.abs, dest, constants.COPYFILE_FICLONE);
    await chmod(dest, modeOverride ?? e.stat.mode & 0o7777);
  }

  /** mkdir -p: missing ancestors get 0755; the directory itself `mode` when given. */
  async dir(rel: string, mode: number | undefined): Promise<void> {
    const parts = rel ? rel.split('/') : [];
    for (let i = 1; i <= parts.length; i++) {
      const sub = parts.slice(0, i).join('/');
      const abs = path.join(this.upper, sub);
      const st = await lstat(abs).catch(() => undefined);
      if (!st?.isDirectory()) {
        if (st) await rm(abs, { force: true });
        await mkdir(abs);
        await chmod(abs, 0o700 | DIR_MODE);
        this.dirModes.set(sub, DIR_MODE);
      }
    }
    if (rel && mode !== undefined) this.dirModes.set(rel, mode);
  }

  async finish(): Promise<void> {
    const deepestFirst = [...this.dirModes].sort((a, b) => b[0].split('/').length - a[0].split('/').length);
    for (const [rel, mode] of deepestFirst) await chmod(path.join(this.upper, rel), mode);
  }
}

function parentOf(rel: string): string {
  const d = path.posix.dirname(rel);
  return d === '.' ? '' : d;
}
