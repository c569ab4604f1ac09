import { createHash } from 'node:crypto';
import { readdir, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { ContentStore, sha256File } from '../src/cache/content-store.js';
import { CacheCorruptError } from '../src/errors.js';
import { listAll, useTmpDirs } from './helpers/tmp.js';

const tmpDir = useTmpDirs();

const sha = (b: Uint8Array): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** A stream of `n` pseudo-random bytes in several chunks. */
function bytes(n: number, seed = 1): Buffer {
  const out = Buffer.alloc(n);
  let x = seed;
  for (let i = 0; i < n; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    out[i] = x >>> 24;
  }
  return out;
}

function chunked(buf: Buffer, size = 4096): Readable {
  const parts: Buffer[] = [];
  for (let i = 0; i < buf.length; i += size) parts.push(buf.subarray(i, i + size));
  return Readable.from(parts);
}

async function ingestLeftovers(root: string): Promise<string[]> {
  return readdir(path.join(root, 'ingest')).catch(() => []);
}

describe('ContentStore', () => {
  it('ingests a stream under its sha256 digest and leaves nothing in ingest/', async () => {
    const root = await tmpDir();
    const store = new ContentStore(root);
    const data = bytes(200_000);
    const info = await store.ingest(chunked(data));
    expect(info.digest).toBe(sha(data));
    expect(info.size).toBe(data.length);
    const hex = info.digest.slice('sha256:'.length);
    const file = path.join(root, 'blobs', 'sha256', hex);
    expect(store.blobPath(info.digest)).toBe(file);
    expect((await readFile(file)).equals(data)).toBe(true);
    expect(await ingestLeftovers(root)).toEqual([]);
    expect(await store.has(info.digest)).toBe(true);
    expect(info.size).toBe(data.length);
    expect(await sha256File(file)).toBe(info.digest);
  });

  it('ingests with the right expected digest', async () => {
    const root = await tmpDir();
    const store = new ContentStore(root);
    const data = bytes(5000, 7);
    const info = await store.ingest(chunked(data, 100), sha(data));
    expect(info).toEqual({ digest: sha(data), size: 5000 });
  });

  it('rejects bytes that do not match the expected digest, leaving no blob and no staging file', async () => {
    const root = await tmpDir();
    const store = new ContentStore(root);
    const data = bytes(10_000, 3);
    const claimed = sha(Buffer.from('something else'));
    await expect(store.ingest(chunked(data), claimed)).rejects.toBeInstanceOf(CacheCorruptError);
    await expect(store.ingest(chunked(data), claimed)).rejects.toThrow(claimed);
    expect(await store.has(claimed)).toBe(false);
    expect(await store.has(sha(data))).toBe(false);
    expect(await ingestLeftovers(root)).toEqual([]);
    const blobs = await listAll(path.join(root, 'blobs')).catch(() => [] as string[]);
    expect(blobs.filter((p) => /^sha256\/./.test(p))).toEqual([]);
  });

  it('cleans up the staging file when the source stream fails', async () => {
    const root = await tmpDir();
    const store = new ContentStore(root);
    const failing = new Readable({
      read() {
        this.push(Buffer.from('partial'));
        this.destroy(new Error('network gone'));
      },
    });
    await expect(store.ingest(failing)).rejects.toThrow('network gone');
    expect(await ingestLeftovers(root)).toEqual([]);
    const blobs = await listAll(path.join(root, 'blobs')).catch(() => [] as string[]);
    expect(blobs.filter((p) => /^sha256\/./.test(p))).toEqual([]);
  });

  it('ingests the same bytes twice without error', async () => {
    const root = await tmpDir();
    const store = new ContentStore(root);
    const data = bytes(3000, 9);
    const a = await store.ingest(chunked(data));
    const b = await store.ingest(chunked(data));
    expect(b).toEqual(a);
    expect(await store.verify(a.digest)).toBe(true);
    expect(await readdir(path.join(root, 'blobs', 'sha256'))).toEqual([a.digest.slice(7)]);
    expect(await ingestLeftovers(root)).toEqual([]);
  });

  it('ingests an empty stream', async () => {
    const root = await tmpDir();
    const store = new ContentStore(root);
    const info = await store.ingest(Readable.from([]));
    expect(info).toEqual({ digest: sha(Buffer.alloc(0)), size: 0 });
    expect(await store.verify(info.digest)).toBe(true);
  });

  it('puts small bytes and reads them back', async () => {
    const root = await tmpDir();
    const store = new ContentStore(root);
    const data = new TextEncoder().encode('{"schemaVersion":2}');
    const info = await store.put(data);
    expect(info).toEqual({ digest: sha(data), size: data.length });
    expect(await readFile(store.blobPath(info.digest), 'utf8')).toBe('{"schemaVersion":2}');
    const chunks: Buffer[] = [];
    for await (const c of store.read(info.digest)) chunks.push(c as Buffer);
    expect(Buffer.concat(chunks).toString()).toBe('{"schemaVersion":2}');
    // putting it again is a no-op
    expect(await store.put(data)).toEqual(info);
    const entries = await listAll(path.join(root, 'blobs', 'sha256'));
    expect(entries).toEqual([info.digest.slice(7)]);
  });

  it('verifies a good blob and notices a flipped byte', async () => {
    const root = await tmpDir();
    const store = new ContentStore(root);
    const data = bytes(1000, 11);
    const { digest } = await store.ingest(chunked(data));
    expect(await store.verify(digest)).toBe(true);
    const file = store.blobPath(digest);
    const damaged = Buffer.from(await readFile(file));
    damaged[500] = damaged[500]! ^ 0x01;
    await writeFile(file, damaged);
    expect((await stat(file)).size).toBe(1000);
    expect(await store.verify(digest)).toBe(false);
    // still "has" it: verify is what catches damage
    expect(await store.has(digest)).toBe(true);
  });

  it('verify and has are false for a blob it never stored', async () => {
    const root = await tmpDir();
    const store = new ContentStore(root);
    const digest = sha(Buffer.from('never stored'));
    expect(await store.has(digest)).toBe(false);
    expect(await store.verify(digest)).toBe(false);
  });

  it('rewrites a small blob whose stored bytes were damaged', async () => {
    const root = await tmpDir();
    const store = new ContentStore(root);
    const { digest } = await store.put(Buffer.from('{"a":1}'));
    await writeFile(store.blobPath(digest), 'garbage');
    await store.put(Buffer.from('{"a":1}'));
    expect(await store.verify(digest)).toBe(true);
  });

  it('refuses names that are not sha256 digests', async () => {
    const store = new ContentStore(await tmpDir());
    expect(() => store.blobPath('sha256:../../etc/passwd')).toThrow(CacheCorruptError);
    expect(() => store.blobPath('sha512:' + 'a'.repeat(64))).toThrow(CacheCorruptError);
    expect(() => store.blobPath('sha256:' + 'A'.repeat(64))).toThrow(CacheCorruptError);
  });
});
