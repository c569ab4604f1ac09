import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  chmod,
  link,
  lstat,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  readlink,
  rm,
  symlink,
  writeFile,
} from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import tar from 'tar-stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { InvalidImageError } from '../src/errors.js';
import { applyLayer } from '../src/oci/layer-apply.js';
import { packLayer } from '../src/oci/layer-pack.js';

const isRoot = process.getuid?.() === 0;
let tmp: string;
let dest: string;
let outside: string;

beforeEach(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), 'layergraph-apply-'));
  dest = path.join(tmp, 'dest');
  outside = path.join(tmp, 'outside');
  await mkdir(dest);
  await mkdir(outside);
});

afterEach(async () => {
  await rm(tmp, { recursive: true, force: true });
});

type Spec = Partial<tar.Header> & { name: string; body?: string };

/** A tar with exactly these headers, however hostile; gzipped unless told otherwise. */
async function craft(specs: Spec[], gzip = true): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  const reading = (async () => {
    for await (const c of pack) chunks.push(c as Buffer);
  })();
  for (const { body, ...header } of specs) {
    await new Promise<void>((resolve, reject) => {
      const cb = (err?: Error | null) => (err ? reject(err) : resolve());
      if ((header.type ?? 'file') === 'file') pack.entry({ mode: 0o644, ...header }, body ?? '', cb);
      else pack.entry({ mode: 0o755, ...header }, cb);
    });
  }
  pack.finalize();
  await reading;
  const tarBytes = Buffer.concat(chunks);
  return gzip ? gzipSync(tarBytes) : tarBytes;
}

function apply(bytes: Buffer, into = dest, opts?: Parameters<typeof applyLayer>[2]) {
  return applyLayer(Readable.from([bytes]), into, opts);
}

async function listing(dir: string): Promise<string[]> {
  const out: string[] = [];
  async function walk(d: string, rel: string) {
    for (const name of (await readdir(d)).sort()) {
      const r = rel ? `${rel}/${name}` : name;
      const st = await lstat(path.join(d, name));
      out.push(st.isDirectory() ? `${r}/` : r);
      if (st.isDirectory()) await walk(path.join(d, name), r);
    }
  }
  await walk(dir, '');
  return out;
}

interface Snap {
  rel: string;
  type: string;
  mode: number;
  content?: string;
  target?: string;
  mtime: number;
}

async function snapshot(dir: string): Promise<Snap[]> {
  const out: Snap[] = [];
  for (const rel of await listing(dir)) {
    const p = path.join(dir, rel);
    const st = await lstat(p);
    const s: Snap = {
      rel,
      type: st.isDirectory() ? 'dir' : st.isSymbolicLink() ? 'symlink' : st.isFile() ? 'file' : 'other',
      mode: st.mode & 0o7777,
      mtime: Math.floor(st.mtimeMs / 1000),
    };
    if (st.isFile()) s.content = createHash('sha256').update(await readFile(p)).digest('hex');
    if (st.isSymbolicLink()) {
      s.target = await readlink(p);
      s.mode = 0; // symlink modes are meaningless on Linux
    }
    out.push(s);
  }
  return out;
}

async function collect(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

async function expectEscape(bytes: Buffer): Promise<void> {
  const before = await listing(outside);
  await expect(apply(bytes)).rejects.toBeInstanceOf(InvalidImageError);
  expect(await listing(outside)).toEqual(before);
}

describe('applyLayer round trip', () => {
  it('pack then apply reproduces the tree', async () => {
    const src = path.join(tmp, 'src');
    await mkdir(path.join(src, 'usr/bin'), { recursive: true });
    await writeFile(path.join(src, 'usr/bin/tool'), '#!/bin/sh\necho hi\n');
    await chmod(path.join(src, 'usr/bin/tool'), 0o4755);
    await writeFile(path.join(src, 'usr/bin/.hidden'), '');
    await chmod(path.join(src, 'usr/bin/.hidden'), 0);
    await writeFile(path.join(src, 'big'), Buffer.alloc(3 * 1024 * 1024 + 17, 'x'));
    await symlink('usr/bin/tool', path.join(src, 'tool'));
    await symlink('/nowhere/at/all', path.join(src, 'dangling'));
    await writeFile(path.join(src, 'h1'), 'linked');
    await link(path.join(src, 'h1'), path.join(src, 'usr/h2'));
    await mkdir(path.join(src, 'ro/inner'), { recursive: true });
    await writeFile(path.join(src, 'ro/inner/f'), 'in a read-only dir');
    await chmod(path.join(src, 'ro/inner'), 0o555);
    await chmod(path.join(src, 'ro'), 0o500);
    await mkdir(path.join(src, 'sticky'));
    await chmod(path.join(src, 'sticky'), 0o1777);

    const packed = packLayer(src, { mtime: 1_600_000_000 });
    const gz = await collect(packed.stream);
    const oldUmask = process.umask(0o077);
    let result;
    try {
      result = await apply(gz);
    } finally {
      process.umask(oldUmask);
    }
    expect(result.diffId).toBe(await packed.diffId);

    const want = (await snapshot(src)).map((s) => ({ ...s, mtime: 1_600_000_000 }));
    expect(await snapshot(dest)).toEqual(want);
    const [a, b] = await Promise.all([lstat(path.join(dest, 'h1')), lstat(path.join(dest, 'usr/h2'))]);
    expect(a.ino).toBe(b.ino);
  });

  it('accepts plain tar and reports the diffId of the tar bytes', async () => {
    const bytes = await craft([{ name: 'f', body: 'plain' }], false);
    const { diffId } = await apply(bytes);
    expect(diffId).toBe(`sha256:${createHash('sha256').update(bytes).digest('hex')}`);
    expect(await readFile(path.join(dest, 'f'), 'utf8')).toBe('plain');
  });

  it('reports the same diffId for the gzipped form', async () => {
    const plain = await craft([{ name: 'f', body: 'x' }], false);
    const { diffId } = await apply(gzipSync(plain));
    expect(diffId).toBe(`sha256:${createHash('sha256').update(plain).digest('hex')}`);
  });

  it('rejects a corrupt gzip stream', async () => {
    const gz = await craft([{ name: 'f', body: 'x'.repeat(10_000) }]);
    const broken = Buffer.concat([gz.subarray(0, 20), Buffer.alloc(50, 0xaa)]);
    await expect(apply(broken)).rejects.toThrow();
  });

  it('chowns when asked to', { skip: !isRoot }, async () => {
    await apply(await craft([{ name: 'f', body: 'x', uid: 1234, gid: 5678, mode: 0o2755 }]));
    const st = await lstat(path.join(dest, 'f'));
    expect([st.uid, st.gid, st.mode & 0o7777]).toEqual([1234, 5678, 0o2755]);
  });

  it('leaves ownership alone when told not to', { skip: !isRoot }, async () => {
    await apply(await craft([{ name: 'f', body: 'x', uid: 1234, gid: 5678 }]), dest, { preserveOwner: false });
    expect((await lstat(path.join(dest, 'f'))).uid).toBe(0);
  });

  it('creates device nodes as root, and refuses them without root, naming the entry', async () => {
    const layer = await craft([
      { name: 'pipe', type: 'fifo', mode: 0o600 },
      { name: 'null', type: 'character-device', devmajor: 1, devminor: 3, mode: 0o666 },
    ]);
    if (isRoot) {
      await apply(layer);
      const st = await lstat(path.join(dest, 'null'));
      expect(st.isCharacterDevice()).toBe(true);
      expect(st.rdev).toBe((1 << 8) | 3);
    } else {
      await expect(apply(layer)).rejects.toThrow(/entry "null": it is a character device; creating device nodes needs root/);
    }
    expect((await lstat(path.join(dest, 'pipe'))).isFIFO()).toBe(true);
  });
});

describe('applyLayer changeset rules', () => {
  async function lower() {
    await mkdir(path.join(dest, 'a'));
    await writeFile(path.join(dest, 'a/x'), 'lower');
    await mkdir(path.join(dest, 'a/sub'));
    await writeFile(path.join(dest, 'a/sub/deep'), 'lower');
    await mkdir(path.join(dest, 'b'));
    await writeFile(path.join(dest, 'b/z'), 'lower');
    await writeFile(path.join(dest, 'b/keep'), 'lower');
    await mkdir(path.join(dest, 'c/d'), { recursive: true });
  }

  it('applies whiteouts and opaque directories', async () => {
    await lower();
    await apply(
      await craft([
        { name: '.wh.c' },
        { name: 'a/', type: 'directory' },
        { name: 'a/.wh..wh..opq' },
        { name: 'a/new', body: 'mine' },
        { name: 'b/.wh.z' },
      ]),
    );
    expect(await listing(dest)).toEqual(['a/', 'a/new', 'b/', 'b/keep']);
  });

  it('keeps what this layer wrote even when the opaque marker comes late', async () => {
    await lower();
    await apply(
      await craft([
        { name: 'a/', type: 'directory' },
        { name: 'a/new', body: 'mine' },
        { name: 'a/sub/', type: 'directory' },
        { name: 'a/sub/mine', body: 'mine' },
        { name: 'a/.wh..wh..opq' },
        { name: '.wh.b' },
      ]),
    );
    expect(await listing(dest)).toEqual(['a/', 'a/new', 'a/sub/', 'a/sub/mine', 'c/', 'c/d/']);
  });

  it('does not let a whiteout delete what the same layer wrote', async () => {
    await apply(await craft([{ name: 'f', body: 'mine' }, { name: '.wh.f' }]));
    expect(await readFile(path.join(dest, 'f'), 'utf8')).toBe('mine');
  });

  it('replaces entries of a different type, and merges a directory over a directory', async () => {
    await writeFile(path.join(dest, 'p'), 'was a file');
    await mkdir(path.join(dest, 'q'));
    await writeFile(path.join(dest, 'q/child'), 'x');
    await mkdir(path.join(dest, 'keep'));
    await writeFile(path.join(dest, 'keep/old'), 'x');
    await writeFile(path.join(dest, 'plain'), 'old');
    await apply(
      await craft([
        { name: 'p/', type: 'directory' },
        { name: 'p/in', body: 'y' },
        { name: 'q', body: 'now a file' },
        { name: 'keep/', type: 'directory', mode: 0o700 },
        { name: 'keep/new', body: 'y' },
        { name: 'plain', body: 'new' },
      ]),
    );
    expect(await listing(dest)).toEqual(['keep/', 'keep/new', 'keep/old', 'p/', 'p/in', 'plain', 'q']);
    expect(await readFile(path.join(dest, 'q'), 'utf8')).toBe('now a file');
    expect(await readFile(path.join(dest, 'plain'), 'utf8')).toBe('new');
    expect((await lstat(path.join(dest, 'keep'))).mode & 0o7777).toBe(0o700);
  });

  it('overwrites an existing symlink instead of writing through it', async () => {
    await writeFile(path.join(outside, 'target'), 'precious');
    await symlink(path.join(outside, 'target'), path.join(dest, 's'));
    await apply(await craft([{ name: 's', body: 'replaced' }]));
    expect(await readFile(path.join(outside, 'target'), 'utf8')).toBe('precious');
    expect((await lstat(path.join(dest, 's'))).isFile()).toBe(true);
  });

  it('sets modes exactly whatever the umask, and sets mtimes', async () => {
    const old = process.umask(0o777);
    try {
      await apply(
        await craft([
          { name: 'd/', type: 'directory', mode: 0o775, mtime: new Date(1000_000) },
          { name: 'd/f', body: 'x', mode: 0o664, mtime: new Date(2000_000) },
          { name: 'd/l', type: 'symlink', linkname: 'f', mtime: new Date(3000_000) },
          { name: 'implicit/parent/f', body: 'x', mode: 0o600 },
        ]),
      );
    } finally {
      process.umask(old);
    }
    const d = await lstat(path.join(dest, 'd'));
    const f = await lstat(path.join(dest, 'd/f'));
    const l = await lstat(path.join(dest, 'd/l'));
    expect([d.mode & 0o7777, f.mode & 0o7777]).toEqual([0o775, 0o664]);
    expect([d.mtimeMs, f.mtimeMs, l.mtimeMs]).toEqual([1000_000, 2000_000, 3000_000]);
    expect((await lstat(path.join(dest, 'implicit/parent'))).mode & 0o7777).toBe(0o755);
  });

  it('follows symlinks in parents inside the root (merged /usr)', async () => {
    await apply(
      await craft([
        { name: 'usr/bin/', type: 'directory' },
        { name: 'bin', type: 'symlink', linkname: 'usr/bin' },
        { name: 'bin/sh', body: 'shell' },
      ]),
    );
    expect(await readFile(path.join(dest, 'usr/bin/sh'), 'utf8')).toBe('shell');
  });
});

describe('applyLayer refusals', () => {
  it('refuses .. that escapes', async () => {
    await expectEscape(await craft([{ name: '../outside/pwned', body: 'x' }]));
    await expectEscape(await craft([{ name: 'a/../../outside/pwned', body: 'x' }]));
  });

  it('takes absolute paths as relative to the root, as Docker and containerd do', async () => {
    await apply(await craft([{ name: path.join(outside, 'pwned'), body: 'x' }]));
    expect(await listing(outside)).toEqual([]);
    expect(await readFile(path.join(dest, outside, 'pwned'), 'utf8')).toBe('x');
  });

  it('keeps writes through a symlink to outside inside the root', async () => {
    const bytes = await craft([
      { name: 'evil', type: 'symlink', linkname: outside },
      { name: 'evil/file', body: 'x' },
      { name: 'rel', type: 'symlink', linkname: '../../../../outside' },
      { name: 'rel/file', body: 'x' },
    ]);
    await apply(bytes);
    expect(await listing(outside)).toEqual([]);
    expect(await readFile(path.join(dest, outside, 'file'), 'utf8')).toBe('x');
    expect(await readFile(path.join(dest, 'outside/file'), 'utf8')).toBe('x');
  });

  it('refuses hard links that escape, and resolves the rest inside the root', async () => {
    await writeFile(path.join(outside, 'secret'), 'secret');
    await expectEscape(await craft([{ name: 'pw', type: 'link', linkname: '../../etc/passwd' }]));
    await expectEscape(await craft([{ name: 'pw', type: 'link', linkname: path.join(outside, 'secret') }]));
    await expect(
      apply(
        await craft([
          { name: 'evil', type: 'symlink', linkname: outside },
          { name: 'pw', type: 'link', linkname: 'evil/secret' },
        ]),
      ),
    ).rejects.toThrow(/not in the image/);
    expect((await lstat(path.join(outside, 'secret'))).nlink).toBe(1);
  });

  it('refuses whiteouts that name a parent or escape', async () => {
    await writeFile(path.join(dest, 'survivor'), 'x');
    await writeFile(path.join(outside, 'victim'), 'x');
    await expectEscape(await craft([{ name: '.wh..' }]));
    await expectEscape(await craft([{ name: 'sub/.wh...' }]));
    await expectEscape(await craft([{ name: '../outside/.wh.victim' }]));
    expect(await listing(dest)).toEqual(['survivor']);
  });

  it('keeps whiteouts and opaque markers behind a symlink inside the root', async () => {
    await writeFile(path.join(outside, 'victim'), 'x');
    await apply(
      await craft([
        { name: 'evil', type: 'symlink', linkname: outside },
        { name: 'evil/.wh.victim' },
        { name: 'evil/.wh..wh..opq' },
        { name: 'rel', type: 'symlink', linkname: '../outside' },
        { name: 'rel/.wh..wh..opq' },
      ]),
    );
    expect(await listing(outside)).toEqual(['victim']);
  });

  it('does not chmod through a symlink that replaced a parent directory', async () => {
    await mkdir(path.join(outside, 'b'));
    await chmod(path.join(outside, 'b'), 0o700);
    await apply(
      await craft([
        { name: 'a/', type: 'directory' },
        { name: 'a/b/', type: 'directory', mode: 0o777 },
        { name: 'a', type: 'symlink', linkname: outside },
      ]),
    );
    expect((await lstat(path.join(outside, 'b'))).mode & 0o7777).toBe(0o700);
  });

  it('writes nothing for a refused entry', async () => {
    await expect(
      apply(await craft([{ name: 'ok', body: 'fine' }, { name: '../outside/pwned', body: 'x' }])),
    ).rejects.toBeInstanceOf(InvalidImageError);
    expect(await listing(outside)).toEqual([]);
  });
});
