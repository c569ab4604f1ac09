/**
 * Leftovers of runs that were killed (a second Ctrl-C, SIGKILL, a crash):
 * temp uppers under `tmp/<pid>-…` and staging files under `ingest/<pid>-…`.
 * They are never under a real name, so the cache stays valid without this;
 * sweeping only gives the disk space back. A live process's files are kept.
 */
import { readdir, rm } from 'node:fs/promises';
import path from 'node:path';

export async function sweepStale(cacheDir: string): Promise<void> {
  for (const sub of ['tmp', 'ingest']) {
    const dir = path.join(cacheDir, sub);
    const names = await readdir(dir).catch(() => [] as string[]);
    for (const name of names) {
      const pid = Number(/^(\d+)-/.exec(name)?.[1]);
      if (pid && !isAlive(pid)) await rm(path.join(dir, name), { recursive: true, force: true }).catch(() => undefined);
    }
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: it exists, it is just not ours.
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
