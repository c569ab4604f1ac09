import { spawnSync } from 'node:child_process';
import { readFileSync, readlinkSync } from 'node:fs';
import { mkdir, readdir, utimes } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { sweepStale } from '../src/build/sweep.js';
import { ownerAlive, ownerTag, parseOwnerTag, thisHost } from '../src/util/owner-tag.js';
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

describe('owner tags', () => {
  it('name the machine as well as the host name and pid namespace, which every machine’s first namespace shares', () => {
    const hostname = os.hostname().replace(/[^A-Za-z0-9-]/g, '_');
    const machine = machineHex();
    const pidns = /\[(\d+)\]/.exec(readlinkSync('/proc/self/ns/pid'))![1];
    expect(thisHost()).toBe(`${hostname}_${machine.slice(0, 12)}_pidns${pidns}`);
    expect(parseOwnerTag(`${ownerTag()}-x`)).toEqual({ host: thisHost(), pid: process.pid });
    // Same host name and namespace inode, another machine: its pids are not checked here.
    const twin = `${hostname}_${machine.startsWith('0') ? 'f'.repeat(12) : '0'.repeat(12)}_pidns${pidns}`;
    expect(ownerAlive({ host: twin, pid: process.pid }, Date.now() - 2 * 24 * 60 * 60 * 1000, 24 * 60 * 60 * 1000)).toBe(false);
    expect(ownerAlive({ host: thisHost(), pid: process.pid }, Date.now() - 2 * 24 * 60 * 60 * 1000, 24 * 60 * 60 * 1000)).toBe(true);
  });

  it('of an older layergraph (without the machine) still parse, count as another host’s, and are swept after a day', async () => {
    const cache = await tmpDir();
    const oldHost = thisHost().replace(/_[0-9a-f]{12}(?=_pidns)/, '');
    expect(oldHost).not.toBe(thisHost());
    const young = `${oldHost}.${process.pid}-aaaa`;
    const old = `${oldHost}.${process.pid}-bbbb`;
    expect(parseOwnerTag(young)).toEqual({ host: oldHost, pid: process.pid });
    for (const n of [young, old]) await mkdir(path.join(cache, 'tmp', n), { recursive: true });
    const twoDaysAgo = new Date(Date.now() - 2 * 24 * 60 * 60 * 1000);
    await utimes(path.join(cache, 'tmp', old), twoDaysAgo, twoDaysAgo);
    await sweepStale(cache);
    expect(await readdir(path.join(cache, 'tmp'))).toEqual([young]);
  });
});

/** What the machine is known by: /etc/machine-id, else this boot's id. */
function machineHex(): string {
  for (const file of ['/etc/machine-id', '/proc/sys/kernel/random/boot_id']) {
    try {
      const hex = readFileSync(file, 'utf8').replace(/[^0-9a-f]/gi, '').toLowerCase();
      if (hex.length >= 12) return hex;
    } catch {
      // the next
    }
  }
  throw new Error('no machine id');
}
