import { spawnSync } from 'node:child_process';
import { mkdir, readdir } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { sweepStale } from '../src/build/sweep.js';
import { ownerTag, thisHost } from '../src/util/owner-tag.js';
import { useTmpDirs } from './helpers/tmp.js';

const tmpDir = useTmpDirs();

describe('sweepStale', () => {
  it('removes what a dead process of this host left, and keeps live and foreign leftovers', async () => {
    const cache = await tmpDir();
    const dead = spawnSync('true').pid!; // exited by the time spawnSync returns
    const names = {
      dead: `${thisHost()}.${dead}-aaaa`,
      live: `${ownerTag()}-bbbb`,
      foreign: `some-other-host.${dead}-cccc`,
    };
    for (const sub of ['tmp', 'ingest']) {
      for (const n of Object.values(names)) await mkdir(path.join(cache, sub, n), { recursive: true });
    }
    await sweepStale(cache);
    for (const sub of ['tmp', 'ingest']) {
      expect((await readdir(path.join(cache, sub))).sort()).toEqual([names.live, names.foreign].sort());
    }
  });
});
