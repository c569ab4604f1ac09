import os from 'node:os';

/**
 * `<host>.<pid>`: who is writing a temp file in the cache, so a later run can
 * tell a dead writer's leftovers from a live one's (see build/sweep.ts).
 */
export function ownerTag(): string {
  return `${os.hostname().replace(/[^A-Za-z0-9-]/g, '_')}.${process.pid}`;
}
