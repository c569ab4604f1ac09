import os from 'node:os';

/**
 * `<host>.<pid>`: who is writing a temp file in the cache, so a later run can
 * tell a dead writer's leftovers from a live one's (see build/sweep.ts).
 */
export function ownerTag(): string {
  return `${os.hostname().replace(/[^A-Za-z0-9-]/g, '_')}.${process.pid}`;
}

/** The host and pid of a name that starts with an owner tag (`<tag>-…`), if it does. */
export function parseOwnerTag(name: string): { host: string; pid: number } | undefined {
  const m = /^([A-Za-z0-9_-]+)\.(\d+)-/.exec(name);
  return m ? { host: m[1]!, pid: Number(m[2]) } : undefined;
}

export function thisHost(): string {
  return ownerTag().split('.')[0]!;
}
