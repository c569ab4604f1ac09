import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmod, link, mkdir, mkdtemp, rm, symlink, utimes, writeFile } from 'node:fs/promises';
import { statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { gunzipSync } from 'node:zlib';
import tar from 'tar-stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { isEmptyTree, packLayer, packTree } from '../src/oci/layer-pack.js';

const isRoot = process.getuid?.() === 0;
let tmp: string;

beforeEach(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), 'layergraph-pack-'));
});

afterEach(async () => {
  await rm(tmp, { recursive: true, force: true });
});

interface TarEntry {
  header: tar.Header & { pax?: Record<string, string> | null };
  data: Buffer;
}

async function collect(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

async function readTar(tarBytes: Buffer): Promise<TarEntry[]> {
  const ex = tar.extract();
  ex.end(tarBytes);
  const out: TarEntry[] = [];
  for await (const entry of ex) {
    const chunks: Buffer[] = [];
    for await (const c of entry) chunks.push(c as Buffer);
    out.push({ header: entry.header as TarEntry['header'], data: Buffer.concat(chunks) });
  }
  return out;
}

async function packAll(dir: string, opts: Parameters<typeof packLayer>[1]) {
  const packed = packLayer(dir, opts);
  const gz = await collect(packed.stream);
  const tarBytes = gunzipSync(gz);
  return { gz, tarBytes, diffId: await packed.diffId, entries: await packed.entries, list: await readTar(tarBytes) };
}

/** Builds the same tree in a different order, under a different umask, with different times. */
async function buildTree(dir: string, variant: 0 | 1): Promise<void> {
  const steps: Array<() => Promise<void>> = [
    async () => {
      await mkdir(path.join(dir, 'a/b'), { recursive: true });
      await writeFile(path.join(dir, 'a/b/file.txt'), 'hello\n');
    },
    async () => writeFile(path.join(dir, 'a-b'), 'dash'),
    async () => writeFile(path.join(dir, 'z'), Buffer.alloc(100_000, 7)),
    async () => symlink('a/b/file.txt', path.join(dir, 'link')),
    async () => {
      await writeFile(path.join(dir, 'h1'), 'same inode');
      await link(path.join(dir, 'h1'), path.join(dir, 'h2'));
    },
    async () => {
      await mkdir(path.join(dir, 'empty'));
      await writeFile(path.join(dir, 'empty/nothing'), '');
    },
  ];
  await mkdir(dir, { recursive: true });
  const old = process.umask(variant === 0 ? 0o022 : 0o077);
  try {
    for (const step of variant === 0 ? steps : [...steps].reverse()) await step();
  } finally {
    process.umask(old);
  }
  await chmod(path.join(dir, 'a'), 0o750);
  await chmod(path.join(dir, 'a/b'), 0o755);
  await chmod(path.join(dir, 'a/b/file.txt'), 0o4755);
  await chmod(path.join(dir, 'a-b'), 0o600);
  await chmod(path.join(dir, 'z'), 0o644);
  await chmod(path.join(dir, 'h1'), 0o640);
  await chmod(path.join(dir, 'empty'), 0o700);
  const t = variant === 0 ? new Date('2001-01-01') : new Date('2022-06-15');
  await chmod(path.join(dir, 'empty/nothing'), 0o644);
  for (const p of ['a', 'a/b', 'a/b/file.txt', 'a-b', 'z', 'h1', 'empty', 'empty/nothing']) await utimes(path.join(dir, p), t, t);
}

describe('packLayer', () => {
  it('is deterministic across creation order, umask and mtimes', async () => {
    const one = path.join(tmp, 'one');
    const two = path.join(tmp, 'two');
    await buildTree(one, 0);
    await buildTree(two, 1);
    const owner = () => ({ uid: 0, gid: 0 });
    const a = await packAll(one, { mtime: 1_700_000_000, owner });
    const b = await packAll(two, { mtime: 1_700_000_000, owner });
    expect(a.diffId).toBe(b.diffId);
    expect(a.gz.equals(b.gz)).toBe(true);
    expect(a.diffId).toBe(`sha256:${createHash('sha256').update(a.tarBytes).digest('hex')}`);
    // gzip header: mtime 0, OS byte pinned
    expect(a.gz.readUInt32LE(4)).toBe(0);
    expect(a.gz[9]).toBe(255);
  });

  it('writes sorted entries with normalised metadata', async () => {
    await buildTree(tmp, 0);
    const { list, entries } = await packAll(tmp, {
      mtime: 1234,
      owner: (rel) => (rel === 'z' ? { uid: 1000, gid: 1001 } : { uid: 0, gid: 0 }),
    });
    expect(list.map((e) => e.header.name)).toEqual([
      'a-b',
      'a/',
      'a/b/',
      'a/b/file.txt',
      'empty/',
      'empty/nothing',
      'h1',
      'h2',
      'link',
      'z',
    ]);
    expect(entries).toBe(list.length);
    const by = Object.fromEntries(list.map((e) => [e.header.name, e]));
    for (const e of list) {
      expect(e.header.mtime.getTime()).toBe(1234_000);
      expect(e.header.uname).toBe('');
      expect(e.header.gname).toBe('');
      expect(e.header.name.startsWith('./')).toBe(false);
    }
    expect(by['a/']?.header).toMatchObject({ type: 'directory', mode: 0o750 });
    expect(by['a/b/file.txt']?.header).toMatchObject({ type: 'file', mode: 0o4755, size: 6 });
    expect(by['a/b/file.txt']?.data.toString()).toBe('hello\n');
    expect(by['a-b']?.header).toMatchObject({ type: 'file', mode: 0o600 });
    expect(by['z']?.header).toMatchObject({ uid: 1000, gid: 1001, size: 100_000 });
    expect(by['z']?.data.equals(Buffer.alloc(100_000, 7))).toBe(true);
    expect(by['empty/']?.header).toMatchObject({ type: 'directory', mode: 0o700 });
    expect(by['empty/nothing']?.header).toMatchObject({ type: 'file', size: 0 });
    expect(by['link']?.header).toMatchObject({ type: 'symlink', linkname: 'a/b/file.txt' });
    expect(by['h1']?.header).toMatchObject({ type: 'file', mode: 0o640, size: 10 });
    expect(by['h2']?.header).toMatchObject({ type: 'link', linkname: 'h1', size: 0 });
  });

  it('defaults owner to the files own uid/gid', async () => {
    await writeFile(path.join(tmp, 'f'), 'x');
    if (isRoot) execFileSync('chown', ['4242:4343', path.join(tmp, 'f')]);
    const { list } = await packAll(tmp, { mtime: 0 });
    const uid = isRoot ? 4242 : process.getuid?.();
    expect(list[0]?.header.uid).toBe(uid);
  });

  it('keeps a 0000 mode and records ids too big for ustar in PAX', async () => {
    await writeFile(path.join(tmp, 'locked'), 'x');
    await chmod(path.join(tmp, 'locked'), 0);
    const { list } = await packAll(tmp, { mtime: 0, owner: () => ({ uid: 300_000, gid: 5 }) });
    expect(list[0]?.header.mode).toBe(0);
    expect(list[0]?.header.pax?.uid).toBe('300000');
  });

  it('turns an overlay whiteout device into .wh.<name>', { skip: !isRoot }, async () => {
    await mkdir(path.join(tmp, 'etc'));
    execFileSync('mknod', [path.join(tmp, 'etc/gone'), 'c', '0', '0']);
    execFileSync('mknod', [path.join(tmp, 'gone-too'), 'c', '0', '0']);
    const { list } = await packAll(tmp, { mtime: 5, owner: () => ({ uid: 7, gid: 7 }) });
    expect(list.map((e) => e.header.name)).toEqual(['.wh.gone-too', 'etc/', 'etc/.wh.gone']);
    expect(list[0]?.header).toMatchObject({ type: 'file', mode: 0, uid: 0, gid: 0, size: 0 });
  });

  it('packs other devices and fifos as their tar types', { skip: !isRoot }, async () => {
    execFileSync('mknod', [path.join(tmp, 'null'), 'c', '1', '3']);
    execFileSync('mknod', [path.join(tmp, 'loop'), 'b', '7', '300']);
    execFileSync('mknod', [path.join(tmp, 'pipe'), 'p']);
    const { list } = await packAll(tmp, { mtime: 0 });
    const by = Object.fromEntries(list.map((e) => [e.header.name, e.header]));
    expect(by['null']).toMatchObject({ type: 'character-device', devmajor: 1, devminor: 3 });
    expect(by['loop']).toMatchObject({ type: 'block-device', devmajor: 7, devminor: 300 });
    expect(by['pipe']).toMatchObject({ type: 'fifo' });
  });

  it('adds the opaque marker right after an opaque directory', async () => {
    await mkdir(path.join(tmp, 'd'));
    await writeFile(path.join(tmp, 'd/!first'), 'x');
    const { list } = await packAll(tmp, { mtime: 0, isOpaque: async (abs) => abs.endsWith('/d') });
    expect(list.map((e) => e.header.name)).toEqual(['d/', 'd/.wh..wh..opq', 'd/!first']);
  });

  it('refuses files that would read as whiteouts', async () => {
    await writeFile(path.join(tmp, '.wh.sneaky'), '');
    const packed = packLayer(tmp, { mtime: 0 });
    await expect(collect(packed.stream)).rejects.toThrow(/whiteout/);
    await expect(packed.diffId).rejects.toThrow(/whiteout/);
  });

  it('refuses names that are not UTF-8', async () => {
    writeFileSync(Buffer.concat([Buffer.from(`${tmp}/bad-`), Buffer.from([0xff])]), '');
    const packed = packLayer(tmp, { mtime: 0 });
    await expect(collect(packed.stream)).rejects.toThrow(/UTF-8/);
  });

  it('refuses an mtime tar-stream cannot encode', () => {
    expect(() => packLayer(tmp, { mtime: 2 ** 31 })).toThrow(RangeError);
    expect(() => packLayer(tmp, { mtime: 1.5 })).toThrow(RangeError);
  });
});

describe('isEmptyTree', () => {
  it('is true only for an empty or missing directory', async () => {
    expect(await isEmptyTree(tmp)).toBe(true);
    expect(await isEmptyTree(path.join(tmp, 'missing'))).toBe(true);
    await mkdir(path.join(tmp, 'sub'));
    expect(await isEmptyTree(tmp)).toBe(false);
  });
});

describe('packTree', () => {
  it('packs a described tree to the same bytes packLayer gives for that tree on disk, source hardlinks as separate files', async () => {
    const src = path.join(tmp, 'src');
    const upper = path.join(tmp, 'upper');
    {
      await mkdir(path.join(src, 'a/b'), { recursive: true });
      await writeFile(path.join(src, 'a/one.txt'), 'one\n');
      await writeFile(path.join(src, 'a/b/big.bin'), Buffer.alloc(3 << 20, 7)); // several gzip pieces
      await link(path.join(src, 'a/one.txt'), path.join(src, 'a/b/same.txt'));
      // The same tree as a copy makes it: every file its own inode.
      await mkdir(path.join(upper, 'a/b'), { recursive: true });
      await writeFile(path.join(upper, 'a/one.txt'), 'one\n');
      await writeFile(path.join(upper, 'a/b/big.bin'), Buffer.alloc(3 << 20, 7));
      await writeFile(path.join(upper, 'a/b/same.txt'), 'one\n');
      await symlink('../one.txt', path.join(upper, 'a/b/ln'));
      const meta = (rel: string) => ({ uid: rel.length, gid: 7, mode: rel.endsWith('.txt') ? 0o640 : 0o755 });
      const opts = { mtime: 0, owner: (rel: string) => meta(rel), mode: (rel: string) => meta(rel).mode };
      const onDisk = packLayer(upper, opts);
      const fromDisk = await collect(onDisk.stream);
      const described = packTree([
        { rel: 'a/b/same.txt', kind: 'file', abs: path.join(src, 'a/b/same.txt'), st: statSync(path.join(src, 'a/b/same.txt')) },
        { rel: 'a', kind: 'directory' },
        { rel: 'a/b', kind: 'directory' },
        { rel: 'a/b/ln', kind: 'symlink', linkTarget: '../one.txt' },
        { rel: 'a/one.txt', kind: 'file', abs: path.join(src, 'a/one.txt'), st: statSync(path.join(src, 'a/one.txt')) },
        { rel: 'a/b/big.bin', kind: 'file', abs: path.join(src, 'a/b/big.bin'), st: statSync(path.join(src, 'a/b/big.bin')) },
      ], opts);
      const fromTree = await collect(described.stream);
      expect(await described.diffId).toBe(await onDisk.diffId);
      expect(fromTree.equals(fromDisk)).toBe(true);
      expect((await readTar(gunzipSync(fromTree))).map((e) => e.header.type)).not.toContain('link');
    }
  });

  it('refuses an entry whose name would read as a whiteout, naming it', async () => {
    const packed = packTree([{ rel: 'a/.wh.x', kind: 'symlink', linkTarget: 'y' }], { mtime: 0, owner: () => ({ uid: 0, gid: 0 }), mode: () => 0o644 });
    packed.diffId.catch(() => undefined);
    packed.entries.catch(() => undefined);
    await expect(collect(packed.stream)).rejects.toThrow(/a\/\.wh\.x: a file named "\.wh\.\*" cannot be stored in a layer/);
  });
});
