/**
 * One `cache prune` or `cache verify` at a time on a cache directory (builds
 * never take this lock: they hold leases, cache/leases.ts).
 *
 * Each contender writes `locks/maintenance/<ownerTag>-<random>`, then lists
 * the directory: the lock is its own when no other live entry is there. Two
 * that arrive together both see each other, both step back and try again
 * after a random pause; one that arrives later sees the holder and waits. An
 * entry of a dead process is ignored and removed (owner-tag.ts: same host
 * and pid namespace, pid gone; another host's, no heartbeat for two minutes).
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, rm, stat, utimes, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { ownerAlive, ownerTag, parseOwnerTag } from '../util/owner-tag.js';

const STALE_MS = 2 * 60 * 1000;
const HEARTBEAT_MS = 10 * 1000;

export interface MaintenanceLock {
  release(): Promise<void>;
}

/** Waits while another prune or verify has the lock; `onWait` hears who, once. */
export async function acquireMaintenanceLock(cacheDir: string, onWait?: (holder: string) => void): Promise<MaintenanceLock> {
  const dir = path.join(cacheDir, 'locks', 'maintenance');
  await mkdir(dir, { recursive: true });
  const mine = path.join(dir, `${ownerTag()}-${randomBytes(4).toString('hex')}`);
  let told = false;
  for (;;) {
    await writeFile(mine, '');
    const others = await liveOthers(dir, path.basename(mine));
    if (others.length === 0) break;
    await rm(mine, { force: true });
    if (!told) onWait?.(others[0]!);
    told = true;
    await sleep(100 + Math.random() * 400);
  }
  const beat = setInterval(() => {
    const now = new Date();
    utimes(mine, now, now).catch(() => undefined);
  }, HEARTBEAT_MS);
  beat.unref();
  return {
    release: async () => {
      clearInterval(beat);
      await rm(mine, { force: true });
    },
  };
}

/** Owners of live entries other than `mine` (`<host>.<pid>`); dead ones are removed. */
async function liveOthers(dir: string, mine: string): Promise<string[]> {
  const live: string[] = [];
  for (const name of await readdir(dir)) {
    if (name === mine) continue;
    const owner = parseOwnerTag(name);
    const st = await stat(path.join(dir, name)).catch(() => undefined);
    if (!owner || !st) continue;
    if (ownerAlive(owner, st.mtimeMs, STALE_MS)) live.push(`${owner.host}.${owner.pid}`);
    else await rm(path.join(dir, name), { force: true });
  }
  return live;
}
