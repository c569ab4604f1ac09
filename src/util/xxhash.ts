/**
 * xxhash-wasm needs an async instantiation; do it once per process and share it.
 * Cache keys and input hashes are 64-bit xxhash in 16 lowercase hex digits.
 */
import xxhash from 'xxhash-wasm';

type XXHash = Awaited<ReturnType<typeof xxhash>>;

let instance: Promise<XXHash> | undefined;

export function getXXHash(): Promise<XXHash> {
  instance ??= xxhash();
  return instance;
}

export function toHex64(value: bigint): string {
  return value.toString(16).padStart(16, '0');
}

/** Key of a canonical value: stable JSON (sorted keys) hashed with xxh64. */
export async function hashValue(value: unknown): Promise<string> {
  const { h64 } = await getXXHash();
  return toHex64(h64(canonicalJson(value)));
}

/** JSON with object keys sorted at every level, so equal values give equal text. */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(sortKeys(value));
}

function sortKeys(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (value !== null && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const k of Object.keys(value).sort()) {
      const v = (value as Record<string, unknown>)[k];
      if (v !== undefined) out[k] = sortKeys(v);
    }
    return out;
  }
  return value;
}
