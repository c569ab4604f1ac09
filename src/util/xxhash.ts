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

/**
 * JSON with object keys sorted at every level, so equal values give equal
 * text: the same text as JSON.stringify of a key-sorted copy (undefined
 * properties left out, undefined array items as null, integer-like keys
 * first), written directly because keys of thousand-file steps are
 * computed on every run.
 */
export function canonicalJson(value: unknown): string {
  return write(value) ?? 'null';
}

function write(value: unknown): string | undefined {
  if (value === null) return 'null';
  switch (typeof value) {
    case 'string':
    case 'number':
    case 'boolean':
      return JSON.stringify(value);
    case 'object':
      break;
    case 'bigint':
      return JSON.stringify(value); // throws, as JSON.stringify does
    default:
      return undefined; // undefined, functions, symbols: left out, as JSON.stringify does
  }
  if (Array.isArray(value)) {
    let out = '[';
    for (let i = 0; i < value.length; i++) out += `${i ? ',' : ''}${write(value[i]) ?? 'null'}`;
    return `${out}]`;
  }
  let out = '{';
  let first = true;
  for (const k of sortedKeys(value as object)) {
    const v = write((value as Record<string, unknown>)[k]);
    if (v === undefined) continue;
    out += `${first ? '' : ','}${JSON.stringify(k)}:${v}`;
    first = false;
  }
  return `${out}}`;
}

/**
 * Keys sorted, in the order a key-sorted copy of the object enumerates them:
 * JavaScript puts integer-like keys ("9", "10") first, in numeric order.
 */
function sortedKeys(value: object): string[] {
  const keys = Object.keys(value).sort();
  const indices = keys.filter(isArrayIndex);
  if (indices.length === 0) return keys;
  return [...indices.sort((a, b) => Number(a) - Number(b)), ...keys.filter((k) => !isArrayIndex(k))];
}

function isArrayIndex(k: string): boolean {
  return /^(0|[1-9]\d*)$/.test(k) && Number(k) < 2 ** 32 - 1;
}
