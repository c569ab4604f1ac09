import { execFileSync } from 'node:child_process';
import { link, lstat, mkdir, readFile, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { gunzipSync } from 'node:zlib';
import tar from 'tar-stream';
import { describe, expect, it } from 'vitest';
import { applyLayer } from '../src/oci/layer-apply.js';
import { packLayer } from '../src/oci/layer-pack.js';
import { readXattrs, setXattr, setXattrs, XattrToolsMissingError } from '../src/snapshot/xattrs.js';
import { hasTool } from './helpers/tools.js';
import { useTmpDirs } from './helpers/tmp.js';

const tmpDir = useTmpDirs();
const isRoot = process.getuid?.() === 0;
const hasAttr = hasTool('getfattr') && hasTool('setfattr');
/** Not UTF-8, with a NUL and a newline: what a careless string encoding would break. */
const BINARY = Buffer.from([0xff, 0x00, 0x0a, 0x80, 0x3d, 0x5c]);

async function gather(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

describe.skipIf(!hasAttr)('readXattrs / setXattrs', () => {
  it('reads a whole tree, names with odd bytes included, without following symlinks', async () => {
    const root = await tmpDir();
    const odd = 'new\nline \\ back=slash ü';
    await writeFile(path.join(root, odd), '');
    await writeFile(path.join(root, 'plain'), '');
    await mkdir(path.join(root, 'dir'));
    await writeFile(path.join(root, 'dir', 'target'), '');
    await symlink('target', path.join(root, 'dir', 'link'));
    await setXattrs([
      [path.join(root, odd), new Map([['user.odd=name', BINARY]])],
      [path.join(root, 'dir', 'target'), new Map([['user.t', Buffer.from('t')]])],
      [root, new Map([['user.root', Buffer.from('r')]])],
    ]);
    await setXattr(path.join(root, 'dir'), 'user.empty', Buffer.alloc(0));

    const got = await readXattrs(root);
    expect(got.get(odd)).toEqual(new Map([['user.odd=name', BINARY]]));
    expect(got.get('dir/target')).toEqual(new Map([['user.t', Buffer.from('t')]]));
    expect(got.get('')).toEqual(new Map([['user.root', Buffer.from('r')]]));
    expect(got.get('dir')).toEqual(new Map([['user.empty', Buffer.alloc(0)]]));
    expect(got.has('plain')).toBe(false);
    // The symlink's own attributes (it has none), not its target's.
    expect(got.has('dir/link')).toBe(false);
  });

  it.skipIf(!isRoot)('sets attributes on a symlink itself', async () => {
    const root = await tmpDir();
    await writeFile(path.join(root, 'target'), '');
    await symlink('target', path.join(root, 'link'));
    await setXattr(path.join(root, 'link'), 'trusted.mark', Buffer.from('l'));
    const got = await readXattrs(root);
    expect(got.get('link')).toEqual(new Map([['trusted.mark', Buffer.from('l')]]));
    expect(got.has('target')).toBe(false);
  });

  it('says to install attr when the tools are missing', async () => {
    const root = await tmpDir();
    const saved = process.env.PATH;
    process.env.PATH = root;
    try {
      const err = await readXattrs(root).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(XattrToolsMissingError);
      expect((err as Error).message).toContain('Install the `attr` package');
    } finally {
      process.env.PATH = saved;
    }
  });
});

describe.skipIf(!hasAttr)('extended attributes in layers', () => {
  async function packed(dir: string, attrs: Map<string, Map<string, Buffer>>) {
    const p = packLayer(dir, { mtime: 0, xattrs: (rel) => attrs.get(rel) });
    const gz = await gather(p.stream);
    return { gz, diffId: await p.diffId };
  }

  it('writes binary SCHILY.xattr records, sorted, never overlay bookkeeping, and reads them back byte for byte', async () => {
    const src = await tmpDir();
    const longDir = 'ü'.repeat(40) + '/' + 'd'.repeat(120);
    await mkdir(path.join(src, longDir), { recursive: true });
    await writeFile(path.join(src, longDir, 'f'), 'long');
    await writeFile(path.join(src, 'bin'), 'x');
    await symlink('x'.repeat(150), path.join(src, 'far'));
    const attrs = new Map([
      ['bin', new Map([['user.z', Buffer.from('last')], ['user.bin', BINARY], ['trusted.overlay.origin', Buffer.from('no')], ['user.overlay.opaque', Buffer.from('y')]])],
      [`${longDir}/f`, new Map([['user.long', Buffer.from('ok')]])],
      ['far', new Map([['user.far', Buffer.from('away')]])],
    ]);
    const first = await packed(src, attrs);
    // Deterministic: the marker is random, what replaces it is not.
    expect((await packed(src, attrs)).gz.equals(first.gz)).toBe(true);

    // tar-stream decodes values as UTF-8, so look at the raw records.
    const tarBytes = gunzipSync(first.gz);
    const paxBodies: string[] = [];
    for (let at = 0; at + 512 <= tarBytes.length; ) {
      const block = tarBytes.subarray(at, at + 512);
      if (block.every((b) => b === 0)) break;
      const size = parseInt(block.subarray(124, 136).toString('latin1').replace(/\0/g, '').trim() || '0', 8);
      if (block[156] === 0x78) paxBodies.push(tarBytes.subarray(at + 512, at + 512 + size).toString('latin1'));
      expect(block.subarray(0, 30).toString('latin1')).not.toContain('@layergraph-pax');
      at += 512 + Math.ceil(size / 512) * 512;
    }
    const binRecords = paxBodies.find((b) => b.includes('SCHILY.xattr.user.bin'))!;
    expect(binRecords).toBe(
      `32 SCHILY.xattr.user.bin=${BINARY.toString('latin1')}\n` + '28 SCHILY.xattr.user.z=last\n',
    );
    expect(paxBodies.join('')).not.toContain('overlay');

    // GNU tar, which we did not write, reads the same names and values.
    if (isRoot && hasTool('tar')) {
      const viaTar = await tmpDir();
      execFileSync('tar', ['--xattrs', '--xattrs-include=*', '-xzf', '-', '-C', viaTar], { input: first.gz, stdio: ['pipe', 'pipe', 'pipe'] });
      const got = await readXattrs(viaTar);
      expect(got.get('bin')).toEqual(new Map([['user.bin', BINARY], ['user.z', Buffer.from('last')]]));
      expect(got.get(`${longDir}/f`)).toEqual(new Map([['user.long', Buffer.from('ok')]]));
    }

    const dest = await tmpDir();
    const { diffId } = await applyLayer(Readable.from([first.gz]), dest, { xattrs: true });
    expect(diffId).toBe(first.diffId);
    const got = await readXattrs(dest);
    expect(got.get('bin')).toEqual(new Map([['user.bin', BINARY], ['user.z', Buffer.from('last')]]));
    expect(got.get(`${longDir}/f`)).toEqual(new Map([['user.long', Buffer.from('ok')]]));
    expect(got.get('far')).toBeUndefined(); // user.* cannot be set on a symlink; kept in the tar all the same

    // Names that needed PAX come through tar-stream intact.
    const names: string[] = [];
    const extract = tar.extract();
    const listing = (async () => {
      for await (const e of extract) {
        names.push(e.header.name + (e.header.linkname ? ` -> ${e.header.linkname}` : ''));
        e.resume();
      }
    })();
    extract.end(tarBytes);
    await listing;
    expect(names).toContain(`${longDir}/f`);
    expect(names).toContain(`far -> ${'x'.repeat(150)}`);
  });

  it('keeps the records of files too large to read ahead, and of hard links', async () => {
    const src = await tmpDir();
    const big = Buffer.alloc(600 * 1024, 7);
    await writeFile(path.join(src, 'big'), big);
    await writeFile(path.join(src, 'small'), 's');
    await link(path.join(src, 'small'), path.join(src, 'twin'));
    const attrs = new Map([
      ['big', new Map([['user.size', Buffer.from('600k')]])],
      ['small', new Map([['user.pair', BINARY]])],
      ['twin', new Map([['user.pair', BINARY]])],
    ]);
    const { gz, diffId } = await packed(src, attrs);
    const dest = await tmpDir();
    expect((await applyLayer(Readable.from([gz]), dest, { xattrs: true })).diffId).toBe(diffId);
    expect((await readFile(path.join(dest, 'big'))).equals(big)).toBe(true);
    const got = await readXattrs(dest);
    expect(got.get('big')).toEqual(attrs.get('big'));
    expect(got.get('twin')).toEqual(attrs.get('twin'));
    expect((await lstat(path.join(dest, 'twin'))).ino).toBe((await lstat(path.join(dest, 'small'))).ino);
  });

  it('ignores the records unless asked', async () => {
    const src = await tmpDir();
    await writeFile(path.join(src, 'f'), 'x');
    const { gz } = await packed(src, new Map([['f', new Map([['user.a', Buffer.from('1')]])]]));
    const dest = await tmpDir();
    await applyLayer(Readable.from([gz]), dest);
    expect(await readXattrs(dest)).toEqual(new Map());
  });
});
