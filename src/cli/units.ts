/**
 * Sizes and ages as people type them on the command line (`10GB`, `7d`),
 * and sizes as the CLI prints them.
 */
import { UsageError } from '../errors.js';

const SIZE_UNITS: Record<string, number> = {
  '': 1,
  b: 1,
  kb: 1e3,
  mb: 1e6,
  gb: 1e9,
  tb: 1e12,
  k: 2 ** 10,
  m: 2 ** 20,
  g: 2 ** 30,
  t: 2 ** 40,
  kib: 2 ** 10,
  mib: 2 ** 20,
  gib: 2 ** 30,
  tib: 2 ** 40,
};

/** `10GB` (decimal: kB, MB, GB, TB), `512MiB` or `512M` (binary), `1234` (bytes). */
export function parseSize(flag: string, text: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([a-z]*)$/i.exec(text.trim());
  const unit = m ? SIZE_UNITS[m[2]!.toLowerCase()] : undefined;
  if (!m || unit === undefined) {
    throw new UsageError(`${flag} ${text}: expected a size such as 10GB, 500MB, 2GiB or 1048576 (bytes)`);
  }
  return Math.floor(Number(m[1]) * unit);
}

const AGE_UNITS: Record<string, number> = { s: 1e3, m: 60e3, h: 3600e3, d: 86400e3, w: 7 * 86400e3 };

/** `7d`, `12h`, `30m`, `90s`, `2w`, or several (`1d12h`); milliseconds. */
export function parseAge(flag: string, text: string): number {
  const parts = [...text.trim().matchAll(/(\d+(?:\.\d+)?)([smhdw])/g)];
  if (!parts.length || parts.map((p) => p[0]).join('') !== text.trim()) {
    throw new UsageError(`${flag} ${text}: expected an age such as 7d, 12h, 30m or 1d12h (s, m, h, d, w)`);
  }
  return parts.reduce((ms, p) => ms + Number(p[1]) * AGE_UNITS[p[2]!]!, 0);
}

/** `1.5 GB`, `340 kB`, `12 B`: decimal units, as `parseSize` reads them back. */
export function formatBytes(n: number): string {
  if (n < 1000) return `${n} B`;
  const units = ['kB', 'MB', 'GB', 'TB'];
  let v = n;
  let i = -1;
  do {
    v /= 1000;
    i++;
  } while (v >= 1000 && i < units.length - 1);
  return `${v >= 100 ? v.toFixed(0) : v.toFixed(1)} ${units[i]}`;
}
