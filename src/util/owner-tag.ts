import { readFileSync, readlinkSync } from 'node:fs';
import os from 'node:os';

/**
 * `<host>.<pid>`: who is writing a temp file or holding a lease in the cache,
 * so a later run can tell a dead writer's leftovers from a live one's (see
 * build/sweep.ts, cache/leases.ts).
 *
 * A pid means something only in the pid namespace it was given in, and
 * containers on one machine often share both its host name and a cache
 * volume: from inside a container, every pid of the host looks gone. So the
 * host part also names the pid namespace (`<hostname>_<machine>_pidns<inode>`
 * where Linux tells it), and a pid is only ever checked by a process of the
 * same namespace; anyone else treats the owner as another host's.
 *
 * The namespace inode alone does not tell machines apart: every Linux
 * machine's initial pid namespace has the same one. So `<machine>` is the
 * start of /etc/machine-id, or else of this boot's id (a boot id changes at
 * reboot, which is fine: the old boot's pids are all gone). Tags of an older
 * layergraph (`<hostname>_pidns<inode>`) still parse, and count as another
 * host's: age decides.
 */
export function ownerTag(): string {
  return `${thisHost()}.${process.pid}`;
}

/** The host and pid of a name that starts with an owner tag (`<tag>-…`), if it does. */
export function parseOwnerTag(name: string): { host: string; pid: number } | undefined {
  const m = /^([A-Za-z0-9_-]+)\.(\d+)-/.exec(name);
  return m ? { host: m[1]!, pid: Number(m[2]) } : undefined;
}

let host: string | undefined;

export function thisHost(): string {
  host ??= `${os.hostname().replace(/[^A-Za-z0-9-]/g, '_')}${machineId()}${pidNamespace()}`;
  return host;
}

/**
 * Whether the owner of a tag is still there: a process of this host (and pid
 * namespace) that is alive, or another host's whose file (`mtimeMs`) is
 * younger than `staleMs` — a pid means nothing there, so age decides.
 */
export function ownerAlive(owner: { host: string; pid: number }, mtimeMs: number, staleMs: number): boolean {
  return owner.host === thisHost() ? processAlive(owner.pid) : Date.now() - mtimeMs < staleMs;
}

export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: it exists, it is just not ours.
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** `_<12 hex>` of the machine (or this boot) where Linux tells it, else nothing. */
function machineId(): string {
  for (const file of ['/etc/machine-id', '/proc/sys/kernel/random/boot_id']) {
    try {
      const hex = readFileSync(file, 'utf8').replace(/[^0-9a-f]/gi, '').toLowerCase();
      if (hex.length >= 12) return `_${hex.slice(0, 12)}`;
    } catch {
      // not there: the next, or none
    }
  }
  return '';
}

function pidNamespace(): string {
  try {
    const m = /\[(\d+)\]/.exec(readlinkSync('/proc/self/ns/pid'));
    return m ? `_pidns${m[1]}` : '';
  } catch {
    return ''; // not Linux, or no /proc: the host name alone
  }
}
