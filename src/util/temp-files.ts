/**
 * Temp siblings (`.layergraph-tmp-<owner>-<name>-<random hex>`, see
 * fs-atomic.ts tempSibling) that a killed writer left beside its targets — in
 * an output layout, next to an archive — removed by the next writer of that
 * place. Only names of exactly that shape are touched (for `target`, only
 * those of that target): the directory may be a user's. A temp file is a
 * leftover when its writer is a process of this host that is gone, or when
 * it is a day old (a pid means nothing on another host, which may share the
 * directory).
 */
import { readdir, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { TEMP_PREFIX, TEMP_RANDOM_BYTES } from './fs-atomic.js';
import { ownerAlive, parseOwnerTag } from './owner-tag.js';

const DAY_MS = 24 * 60 * 60 * 1000;

/** Sweeps `dir`; with `target` (a file name in `dir`), only that target's temp siblings. */
export async function sweepTempFiles(dir: string, target?: string): Promise<void> {
  const shape = tempShape(target);
  const names = await readdir(dir).catch(() => [] as string[]);
  for (const name of names) {
    if (!shape.test(name)) continue;
    const owner = parseOwnerTag(name.slice(TEMP_PREFIX.length));
    if (!owner) continue; // not one of ours
    const abs = path.join(dir, name);
    const mtimeMs = (await stat(abs).catch(() => undefined))?.mtimeMs ?? Date.now();
    if (!ownerAlive(owner, mtimeMs, DAY_MS)) await rm(abs, { force: true });
  }
}

/** The names tempSibling gives (for `target`, or any target). */
export function tempShape(target?: string): RegExp {
  const name = target === undefined ? '.+' : escape(target);
  return new RegExp(`^${escape(TEMP_PREFIX)}[A-Za-z0-9_-]+\\.\\d+-${name}-[0-9a-f]{${TEMP_RANDOM_BYTES * 2}}$`);
}

function escape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
