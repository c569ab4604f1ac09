import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { readLeases, type LeaseKind } from '../cache/leases.js';
import { ownerTag } from '../util/owner-tag.js';

/**
 * Whether another live build may be using an item of the cache (a snapshot it
 * has mounted or is copying from), so it must not be discarded under it.
 * Leases list items, not whose they are: while another build has a lease on
 * the cache, an item this process holds too counts as held by it (it may be).
 */
export async function heldElsewhere(cacheDir: string, kind: LeaseKind, id: string): Promise<boolean> {
  const { items, holders } = await readLeases(cacheDir);
  const mine = (await readdir(path.join(cacheDir, 'leases')).catch(() => [] as string[])).filter((n) => n.startsWith(`${ownerTag()}-`)).length;
  return holders > mine && items.has(`${kind} ${id}`);
}
