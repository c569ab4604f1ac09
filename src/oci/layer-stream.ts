/**
 * The tar bytes of a layer blob (gunzipped when it is gzip), with the limits
 * that keep a hostile blob from filling the disk: a cap on the size it
 * decompresses to, and on its expansion ratio.
 *
 * Why these numbers. Deflate cannot expand more than about 1030:1 (that is a
 * stream of one repeated byte), and real layers sit far below that: text and
 * binaries 2–10:1. A gzip bomb is a stream near the ceiling, so a ratio cap of
 * 1000:1 catches it; but a genuine layer can get there too when nearly all of
 * it is one huge file of zeros (the sparse `/var/log/lastlog` that `useradd`
 * with a large UID writes, a `dd if=/dev/zero` image). The ratio is therefore
 * only judged once 1 GiB has come out: a bomb is stopped after writing 1 GiB,
 * and a zero-filled file has to be larger than that to be mistaken for one.
 * The absolute cap, 64 GiB per layer, is above the largest layers registries
 * take, and bounds bombs built to stay under the ratio.
 *
 * Both are configurable: LAYERGRAPH_MAX_LAYER_SIZE (bytes, or `128GiB`, `0`
 * for no cap) and LAYERGRAPH_MAX_LAYER_RATIO (`0` for no check).
 */
import { pipeline, Readable, Transform } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { UsageError } from '../errors.js';

export interface LayerLimits {
  /** Most bytes a layer may decompress to; Infinity for no cap. */
  maxBytes: number;
  /** Most output bytes per compressed byte; Infinity for no check. */
  maxRatio: number;
  /** Output size from which the ratio is judged (the start of a stream says little). */
  ratioAfter: number;
}

export const SIZE_ENV = 'LAYERGRAPH_MAX_LAYER_SIZE';
export const RATIO_ENV = 'LAYERGRAPH_MAX_LAYER_RATIO';

export const DEFAULT_LAYER_LIMITS: Readonly<LayerLimits> = { maxBytes: 64 * 2 ** 30, maxRatio: 1000, ratioAfter: 2 ** 30 };

/** The limits as the environment sets them (read when a layer is opened, so a test or a wrapper can change them). */
export function layerLimits(env: NodeJS.ProcessEnv = process.env): LayerLimits {
  const limits = { ...DEFAULT_LAYER_LIMITS };
  const size = env[SIZE_ENV];
  if (size !== undefined && size !== '') {
    const n = parseBytes(size);
    if (n === undefined) throw new UsageError(`${SIZE_ENV}=${size}: expected a size in bytes, or like 64GiB or 500MiB (0: no cap)`);
    limits.maxBytes = n === 0 ? Infinity : n;
  }
  const ratio = env[RATIO_ENV];
  if (ratio !== undefined && ratio !== '') {
    if (!/^\d+$/.test(ratio)) throw new UsageError(`${RATIO_ENV}=${ratio}: expected a whole number like 1000 (0: no check)`);
    limits.maxRatio = Number(ratio) === 0 ? Infinity : Number(ratio);
  }
  return limits;
}

/** Thrown by the stream `uncompressed` returns when a limit is crossed; the reader adds which layer and entry. */
export class LayerLimitError extends Error {}

/**
 * The tar bytes of a layer, gunzipped when it starts with gzip's magic.
 * With `limits`, the stream fails with a LayerLimitError once a limit is
 * crossed; without, it is not limited (our own layers on their way out).
 */
export async function uncompressed(input: Readable, limits?: LayerLimits): Promise<Readable> {
  const it = (input as AsyncIterable<unknown>)[Symbol.asyncIterator]();
  const head: Buffer[] = [];
  let length = 0;
  while (length < 2) {
    const next = await it.next();
    if (next.done) break;
    const chunk = toBuffer(next.value);
    head.push(chunk);
    length += chunk.length;
  }
  const first = Buffer.concat(head);
  const raw = Readable.from(replay(first, it), { objectMode: false });
  const gzip = first[0] === 0x1f && first[1] === 0x8b;
  if (!limits || (limits.maxBytes === Infinity && (!gzip || limits.maxRatio === Infinity))) {
    return gzip ? pipeline(raw, createGunzip(), () => {}) : raw;
  }
  if (!gzip) return pipeline(raw, new LimitGuard(limits, undefined), () => {});
  const gunzip = createGunzip();
  // What inflate has consumed, not what was read: the stream reads ahead, and
  // 64 KiB read ahead of a bomb is 64 MiB of output the ratio would miss.
  return pipeline(raw, gunzip, new LimitGuard(limits, () => gunzip.bytesWritten), () => {});
}

/** Counts what comes out against the limits; `compressed` tells how much went in (absent for a plain tar). */
class LimitGuard extends Transform {
  private out = 0;

  constructor(
    private readonly limits: LayerLimits,
    private readonly compressed: (() => number) | undefined,
  ) {
    super();
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null, data?: Buffer) => void): void {
    this.out += chunk.length;
    const { maxBytes, maxRatio, ratioAfter } = this.limits;
    if (this.out > maxBytes) {
      cb(new LayerLimitError(`it decompresses to more than ${showBytes(maxBytes)}, the most a layer may (set ${SIZE_ENV} to allow more)`));
      return;
    }
    const compressed = this.compressed?.() ?? 0;
    if (this.compressed && this.out > ratioAfter && this.out > maxRatio * Math.max(compressed, 1)) {
      cb(
        new LayerLimitError(
          `it decompresses more than ${maxRatio}:1 (${showBytes(this.out)} out of ${showBytes(compressed)} so far), as a gzip bomb does; ` +
            `if it is genuine (say, a huge file of zeros), set ${RATIO_ENV}=0 to turn this check off`,
        ),
      );
      return;
    }
    cb(null, chunk);
  }
}

async function* replay(head: Buffer, rest: AsyncIterator<unknown>): AsyncGenerator<Buffer> {
  try {
    if (head.length > 0) yield head;
    for (;;) {
      const next = await rest.next();
      if (next.done) return;
      yield toBuffer(next.value);
    }
  } finally {
    await rest.return?.();
  }
}

const UNITS: Record<string, number> = { '': 1, b: 1, k: 2 ** 10, kib: 2 ** 10, m: 2 ** 20, mib: 2 ** 20, g: 2 ** 30, gib: 2 ** 30, t: 2 ** 40, tib: 2 ** 40, kb: 1e3, mb: 1e6, gb: 1e9, tb: 1e12 };

/** `1048576`, `512MiB`, `64GiB`, `2GB`; undefined when it is none of these. */
function parseBytes(text: string): number | undefined {
  const m = /^(\d+(?:\.\d+)?)\s*([a-z]*)$/i.exec(text.trim());
  const unit = m ? UNITS[m[2]!.toLowerCase()] : undefined;
  return m && unit !== undefined ? Math.floor(Number(m[1]) * unit) : undefined;
}

export function showBytes(n: number): string {
  const units = ['bytes', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${n} bytes` : `${Number.isInteger(v) ? v : v.toFixed(1)} ${units[i]}`;
}

function toBuffer(chunk: unknown): Buffer {
  if (Buffer.isBuffer(chunk)) return chunk;
  if (chunk instanceof Uint8Array) return Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  if (typeof chunk === 'string') return Buffer.from(chunk);
  throw new TypeError('layer stream must yield bytes');
}
