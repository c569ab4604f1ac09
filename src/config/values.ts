/**
 * Parsers for the values the schema checks only by shape: each returns the
 * normalised value or why it cannot be one.
 */
import path from 'node:path';

export type Parsed<T> = { ok: true; value: T } | { ok: false; problem: string };

const MAX_ID = 2 ** 32 - 2; // 2^32-1 is (uid_t)-1, "no change"

/** `8080` or `"53/udp"` → `"8080/tcp"` / `"53/udp"`. */
export function parseExpose(item: number | string): Parsed<string> {
  const [port = '', proto = 'tcp'] = String(item).split('/');
  const n = Number(port);
  if (!/^[0-9]+$/.test(port) || n < 1 || n > 65535) return { ok: false, problem: 'a port from 1 to 65535' };
  return { ok: true, value: `${n}/${proto}` };
}

/** `"0755"` → 0o755. */
export function parseChmod(text: string): number {
  return parseInt(text, 8);
}

/** `"1000:1000"`, `"1000"` (gid = uid) or `1000` → {uid, gid}. */
export function parseChown(value: string | number): Parsed<{ uid: number; gid: number }> {
  const [u = '', g = u] = String(value).split(':');
  const uid = Number(u);
  const gid = Number(g);
  if (uid > MAX_ID || gid > MAX_ID) return { ok: false, problem: `ids from 0 to ${MAX_ID}` };
  return { ok: true, value: { uid, gid } };
}

/** `"linux/arm64/v8"` → {os, architecture, variant}. */
export function parsePlatform(text: string): { os: string; architecture: string; variant?: string } {
  const [os = '', architecture = '', variant] = text.split('/');
  return variant === undefined ? { os, architecture } : { os, architecture, variant };
}

/** A shell-form command (a string) as Docker runs it. */
export function commandOf(value: string | string[]): string[] {
  return typeof value === 'string' ? ['/bin/sh', '-c', value] : [...value];
}

/**
 * Why a copy source read from the build context is refused, if it is: it must
 * be relative and must not climb out with `..` (symlinks are checked on disk,
 * later). Sources read from another image may be absolute: `/` is its root.
 */
export function contextSourceProblem(source: string): string | undefined {
  if (source.startsWith('/')) return 'is an absolute path; copy sources are relative to the build context';
  const clean = path.posix.normalize(source);
  if (clean === '..' || clean.startsWith('../')) return 'leaves the build context';
  return undefined;
}
