/**
 * Leftovers of runs that were killed (a second Ctrl-C, SIGKILL, a crash):
 * temp uppers (and overlay mounts) under `tmp/`, staging files under `ingest/` and leases under
 * `leases/` (cache/leases.ts), named by `ownerTag()` (util/owner-tag.ts). They are never under a real name, so the cache stays valid
 * without this; sweeping only gives the disk space back.
 *
 * A pid means something only on the host (and pid namespace) that wrote it,
 * and CI containers often share one cache volume: so a leftover is swept when
 * its writer is this host and that pid is gone, or when it is a day old.
 */
import { execFile } from 'node:child_process';
import { readdir, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { ownerAlive, parseOwnerTag } from '../util/owner-tag.js';
import { mountsUnder, unmount } from '../snapshot/overlay-mount.js';

const DAY_MS = 24 * 60 * 60 * 1000;
const run = promisify(execFile);

export async function sweepStale(cacheDir: string): Promise<void> {
  for (const sub of ['tmp', 'ingest', 'leases']) {
    const dir = path.join(cacheDir, sub);
    const names = await readdir(dir).catch(() => [] as string[]);
    for (const name of names) {
      const abs = path.join(dir, name);
      const owner = parseOwnerTag(name);
      const mtimeMs = (await stat(abs).catch(() => undefined))?.mtimeMs ?? Date.now();
      // A live run of this host may well be older than a day: never pull its steps away.
      const live = owner ? ownerAlive(owner, mtimeMs, DAY_MS) : Date.now() - mtimeMs <= DAY_MS;
      if (!live) await removeTree(abs);
    }
  }
}

/**
 * A run killed mid-step can leave its overlay mounted: unmount before
 * removing, or the removal would reach through the mount into the layers.
 */
export async function removeTree(dir: string): Promise<void> {
  await stopContainers(dir);
  for (const point of await mountsUnder(dir)) await unmount(point).catch(() => undefined);
  if ((await mountsUnder(dir)).length) return; // still mounted: leave it rather than delete through it
  await rm(dir, { recursive: true, force: true }).catch(() => undefined);
}

/**
 * Containers a killed run left running (their runtime state is under the
 * run's directory, `run-*\/runtime/state`): killed and deleted, before their
 * root is unmounted from under them.
 */
async function stopContainers(dir: string): Promise<void> {
  const steps = await readdir(dir).catch(() => [] as string[]);
  for (const step of steps.filter((s) => s.startsWith('run-'))) {
    const state = path.join(dir, step, 'runtime', 'state');
    for (const id of await readdir(state).catch(() => [] as string[])) {
      for (const runtime of ['runc', 'crun']) {
        await run(runtime, [`--root=${state}`, 'kill', id, 'KILL']).catch(() => undefined);
        await run(runtime, [`--root=${state}`, 'delete', '--force', id]).catch(() => undefined);
      }
    }
  }
}
