/**
 * Writes that never leave a half-written file under its real name: write a
 * temp file, fsync it, rename it into place.
 *
 * Temp files are named by their writer (`ownerTag()`), so what a killed
 * process left can be told from what a live one is writing: inside the cache
 * they are staged in its `ingest/` directory (`stagingDir`), which every run
 * sweeps (build/sweep.ts); elsewhere (an output layout, an archive) they sit
 * beside the target as `.layergraph-tmp-<owner>-<name>-<random hex>`, and the writer of that
 * place sweeps them (util/temp-files.ts).
 */
import { randomBytes } from 'node:crypto';
import { mkdir, open, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import { asDiskFull } from '../errors.js';
import { faultPoint } from './fault-point.js';
import { ownerTag } from './owner-tag.js';

/** With `stagingDir` (on the target's file system), the temp file is made there instead of beside the target. */
export async function writeFileAtomic(target: string, data: string | Uint8Array, stagingDir?: string): Promise<void> {
  await mkdir(path.dirname(target), { recursive: true });
  const tmp = stagingDir ? await stagingName(stagingDir) : tempSibling(target);
  try {
    await writeSynced(tmp, data, 'w');
    faultPoint('write');
    await rename(tmp, target);
  } catch (err) {
    await rm(tmp, { force: true });
    throw asDiskFull(err, target);
  }
}

/** A name in the same directory (so rename is atomic) that no other writer picks. */
export function tempSibling(target: string): string {
  return path.join(path.dirname(target), `${TEMP_PREFIX}${ownerTag()}-${path.basename(target)}-${randomBytes(TEMP_RANDOM_BYTES).toString('hex')}`);
}

/** What every temp sibling's name starts with, before its owner tag: distinctive, as it sits among a user's files. */
export const TEMP_PREFIX = '.layergraph-tmp-';
/** Random bytes at the end of a temp sibling's name (twice as many hex digits). */
export const TEMP_RANDOM_BYTES = 6;

/**
 * Writes `data` to a new file in `stagingDir` (the cache's `ingest/`, swept
 * after a crash) and fsyncs it, for a caller that renames it into place only
 * once something else has succeeded (tree-stamp.ts's publishStamped).
 */
export async function stageFile(stagingDir: string, data: string): Promise<string> {
  const file = await stagingName(stagingDir);
  try {
    await writeSynced(file, data, 'wx');
  } catch (err) {
    await rm(file, { force: true });
    throw err;
  }
  return file;
}

async function writeSynced(file: string, data: string | Uint8Array, flags: 'w' | 'wx'): Promise<void> {
  const fh = await open(file, flags, 0o644);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

async function stagingName(dir: string): Promise<string> {
  await mkdir(dir, { recursive: true });
  return path.join(dir, `${ownerTag()}-${randomBytes(8).toString('hex')}`);
}

/**
 * Removes a tree that must not be seen half removed: it is first renamed into
 * `scratchDir` (on the same file system, swept after a crash), then deleted.
 */
export async function discardTree(dir: string, scratchDir: string): Promise<void> {
  await mkdir(scratchDir, { recursive: true });
  const away = path.join(scratchDir, `discard-${randomBytes(6).toString('hex')}`);
  try {
    await rename(dir, away);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return; // someone else took it away already
    throw err;
  }
  await rm(away, { recursive: true, force: true });
}
