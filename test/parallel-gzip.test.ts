import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { buffer } from 'node:stream/consumers';
import { gunzipSync, gzipSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { GZIP_PIECE_BYTES, parallelGzip } from '../src/oci/parallel-gzip.js';
import { useTmpDirs } from './helpers/tmp.js';

// Compressible but not trivial: text-like lines from a seeded generator.
function sample(bytes: number, seed = 1): Buffer {
  let a = seed;
  const words = ['const', 'item', 'value', 'return', 'map', 'order', 'total', 'fetch'];
  let s = '';
  while (s.length < bytes) {
    a = (a * 1103515245 + 12345) >>> 0;
    s += `${words[a % words.length]}${a % 1000} `;
    if (a % 7 === 0) s += '\n';
  }
  return Buffer.from(s.slice(0, bytes));
}

async function compress(data: Buffer, chunkSizes: number[]): Promise<Buffer> {
  const pieces: Buffer[] = [];
  for (let at = 0, i = 0; at < data.length; i++) {
    const n = chunkSizes[i % chunkSizes.length]!;
    pieces.push(data.subarray(at, at + n));
    at += n;
  }
  return buffer(Readable.from(pieces).pipe(parallelGzip({ level: 6 })));
}

describe('parallelGzip', () => {
  const tmp = useTmpDirs();

  it('gives a small input exactly the bytes of one zlib stream (OS byte "unknown")', async () => {
    const data = sample(100_000);
    const expected = gzipSync(data, { level: 6 });
    expected[9] = 255;
    expect((await compress(data, [4096])).equals(expected)).toBe(true);
  });

  it('writes one member per piece that gunzip reads back whole, the same for any write pattern', async () => {
    const data = sample(GZIP_PIECE_BYTES * 3 + 12_345);
    const a = await compress(data, [65_536]);
    const b = await compress(data, [1, 999_999, 3 * GZIP_PIECE_BYTES, 17]);
    expect(a.equals(b)).toBe(true);
    expect(gunzipSync(a).equals(data)).toBe(true);
    // Members: one gzip magic at each start (a cheap count; a member's deflate data could contain the bytes too).
    expect(countMembers(a)).toBeGreaterThanOrEqual(4);
  });

  it('adds no empty member when the input is a whole number of pieces, and one for an empty input', async () => {
    const whole = sample(GZIP_PIECE_BYTES * 2);
    const out = await compress(whole, [300_000]);
    expect(gunzipSync(out).equals(whole)).toBe(true);
    const twoMembers = Buffer.concat([gzipSync(whole.subarray(0, GZIP_PIECE_BYTES)), gzipSync(whole.subarray(GZIP_PIECE_BYTES))]);
    expect(out.length).toBe(twoMembers.length);
    const empty = await buffer(Readable.from([]).pipe(parallelGzip()));
    const expected = gzipSync(Buffer.alloc(0));
    expected[9] = 255;
    expect(empty.equals(expected)).toBe(true);
  });

  it('is read whole by the system gzip, which we did not write', async () => {
    const data = sample(GZIP_PIECE_BYTES * 2 + 5);
    const file = path.join(await tmp(), 'x.gz');
    writeFileSync(file, await compress(data, [100_000]));
    execFileSync('gzip', ['-t', file]);
    expect(execFileSync('gzip', ['-dc', file], { maxBuffer: 1 << 26 }).equals(data)).toBe(true);
  });
});

function countMembers(buf: Buffer): number {
  let n = 0;
  for (let i = buf.indexOf(MAGIC); i !== -1; i = buf.indexOf(MAGIC, i + 1)) n++;
  return n;
}
const MAGIC = Buffer.from([0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00]);
