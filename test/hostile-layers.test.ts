/**
 * Hostile base image layers (issue 6). Each case crafts tar (and gzip) bytes
 * by hand — tar-stream's packer where it will write them, raw header blocks
 * where it will not — into an OCI layout, then feeds them
 *   - to the applier directly,
 *   - to `layergraph unpack`,
 *   - to a build whose image is `from: oci:<layout>` and whose other image
 *     copies out of it (the path that needs no root),
 *   - as root, to a `run` step on it (overlay lowers),
 * and checks that a refusal names the layer (digest, and image where the
 * caller knows it) and the entry, and that nothing outside the target was
 * created or changed: a sibling `sentinel` directory is the bait every
 * attack aims at. Where it tells us something, `umoci unpack` gets the
 * same layout as an independent check.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmod, copyFile, lstat, mkdir, readdir, readFile, readlink, rm, stat, utimes, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { gunzipSync, gzipSync } from 'node:zlib';
import tar from 'tar-stream';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { InvalidImageError } from '../src/errors.js';
import { applyLayer, type ApplyOptions } from '../src/oci/layer-apply.js';
import { hasStaticBusybox, hostBusybox } from './helpers/busybox.js';
import { REPO, runCli } from './helpers/cli.js';
import { useTmpDirs } from './helpers/tmp.js';
import { hasTool, tool } from './helpers/tools.js';

const tmpDir = useTmpDirs();
const isRoot = process.getuid?.() === 0;

afterEach(() => {
  vi.unstubAllEnvs();
});

// ---------------------------------------------------------------------------
// Crafting layers

type Spec = Partial<tar.Header> & { name: string; body?: string | Buffer };

/** A tar holding exactly these headers, however hostile (tar-stream writes long names as PAX). */
async function tarOf(specs: Spec[]): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  const reading = (async () => {
    for await (const c of pack) chunks.push(c as Buffer);
  })();
  for (const { body, ...header } of specs) {
    await new Promise<void>((resolve, reject) => {
      const cb = (err?: Error | null) => (err ? reject(err) : resolve());
      const h = { mtime: new Date(0), uid: 0, gid: 0, ...header };
      if ((header.type ?? 'file') === 'file') pack.entry({ mode: 0o644, ...h }, body ?? '', cb);
      else pack.entry({ mode: 0o755, ...h }, cb);
    });
  }
  pack.finalize();
  await reading;
  return Buffer.concat(chunks);
}

/** One 512-byte ustar header block, written field by field (for what tar-stream will not write). */
function rawHeader(h: { name: string; type: string; size: number; linkname?: string; mode?: number }): Buffer {
  const b = Buffer.alloc(512);
  const octal = (n: number, width: number) => `${n.toString(8).padStart(width - 1, '0')}\0`;
  b.write(h.name, 0, 100, 'utf8');
  b.write(octal(h.mode ?? 0o644, 8), 100, 'latin1');
  b.write(octal(0, 8), 108, 'latin1');
  b.write(octal(0, 8), 116, 'latin1');
  b.write(octal(h.size, 12), 124, 'latin1');
  b.write(octal(0, 12), 136, 'latin1');
  b.write(h.type, 156, 1, 'latin1');
  if (h.linkname) b.write(h.linkname, 157, 100, 'utf8');
  b.write('ustar\0', 257, 'latin1');
  b.write('00', 263, 'latin1');
  b.write(' '.repeat(8), 148, 'latin1');
  let sum = 0;
  for (const x of b) sum += x;
  b.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
  return b;
}

/** A header and its body, padded to whole blocks. */
function rawEntry(h: Parameters<typeof rawHeader>[0], body: Buffer = Buffer.alloc(0)): Buffer {
  const pad = (512 - (body.length % 512)) % 512;
  return Buffer.concat([rawHeader(h), body, Buffer.alloc(pad)]);
}

const END_OF_TAR = Buffer.alloc(1024);

/** A PAX extended header record: "<len> <key>=<value>\n", len counting itself. */
function paxRecord(key: string, value: string): Buffer {
  const rest = ` ${key}=${value}\n`;
  let len = Buffer.byteLength(rest) + 1;
  while (String(len).length + Buffer.byteLength(rest) !== len) len = String(len).length + Buffer.byteLength(rest);
  return Buffer.from(`${len}${rest}`);
}

/**
 * gzip of a tar holding one file `name` of `size` zero bytes, cheaply: one
 * gzip member per part, the 16 MiB of zeros compressed once and repeated
 * (a gzip stream may be any number of members, and every reader takes them).
 */
function zeroBomb(name: string, size: number): Buffer {
  const chunk = 16 << 20;
  const zeros = gzipSync(Buffer.alloc(chunk), { level: 9 });
  const members = [gzipSync(rawHeader({ name, type: '0', size }))];
  for (let left = size; left > 0; left -= chunk) members.push(left >= chunk ? zeros : gzipSync(Buffer.alloc(left)));
  members.push(gzipSync(Buffer.concat([Buffer.alloc((512 - (size % 512)) % 512), END_OF_TAR])));
  return Buffer.concat(members);
}

const sha256 = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

interface LayerSpec {
  tar: Buffer;
  /** Store the tar gzipped (default) or plain; or these bytes as they are (a gzip bomb). */
  blob?: Buffer | 'plain';
  /** What the config says its diffID is (default: the real one). */
  diffId?: string;
}

interface Layout {
  dir: string;
  layers: string[];
  /** `oci:<dir>:hostile`, as a build file names it. */
  from: string;
  /** `<dir>:hostile`, as `layergraph unpack` takes it. */
  arg: string;
}

/** An OCI layout at `dir` whose image `hostile` has these layers, bottom first. */
async function writeLayout(dir: string, specs: LayerSpec[]): Promise<Layout> {
  await mkdir(path.join(dir, 'blobs', 'sha256'), { recursive: true });
  await writeFile(path.join(dir, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
  const put = async (bytes: Buffer) => {
    const digest = sha256(bytes);
    await writeFile(path.join(dir, 'blobs', 'sha256', digest.slice(7)), bytes);
    return { digest, size: bytes.length };
  };
  const layers = [];
  const diffIds = [];
  for (const s of specs) {
    const blob = Buffer.isBuffer(s.blob) ? s.blob : s.blob === 'plain' ? s.tar : gzipSync(s.tar);
    const plain = s.blob === 'plain';
    layers.push({ mediaType: `application/vnd.oci.image.layer.v1.tar${plain ? '' : '+gzip'}`, ...(await put(blob)) });
    diffIds.push(s.diffId ?? sha256(s.tar));
  }
  const config = await put(Buffer.from(JSON.stringify({ architecture: hostArch(), os: 'linux', config: {}, rootfs: { type: 'layers', diff_ids: diffIds } })));
  const manifest = await put(
    Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config },
        layers,
      }),
    ),
  );
  await writeFile(
    path.join(dir, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', ...manifest, annotations: { 'org.opencontainers.image.ref.name': 'hostile' } }],
    }),
  );
  return { dir, layers: layers.map((l) => l.digest), from: `oci:${dir}:hostile`, arg: `${dir}:hostile` };
}

function hostArch(): string {
  return ({ x64: 'amd64', arm64: 'arm64', arm: 'arm', ppc64: 'ppc64le', s390x: 's390x', riscv64: 'riscv64' } as Record<string, string>)[process.arch] ?? process.arch;
}

// ---------------------------------------------------------------------------
// The world an attack must not touch

interface World {
  root: string;
  /** The bait: a directory beside every target, with one file. */
  sentinel: string;
  secret: string;
  /** The relative climb from the deepest target to the file system root, then down to the sentinel: what `..` attacks name. */
  climb: string;
  /** Everything under `root` but the targets, as it was. */
  before: string[];
}

const TARGETS = new Set(['direct', 'unpacked', 'proj', 'bundle', 'layout']);

async function makeWorld(): Promise<World> {
  const root = await tmpDir('lg-hostile-');
  const sentinel = path.join(root, 'sentinel');
  await mkdir(sentinel);
  const secret = path.join(sentinel, 'secret');
  await writeFile(secret, 'secret');
  await utimes(secret, 1_000_000, 1_000_000);
  const climb = `${'../'.repeat(24)}${sentinel.slice(1)}`;
  return { root, sentinel, secret, climb, before: await outsideState(root) };
}

/** Every path under `root` outside the targets, with its type, size, mode, mtime, link count and content hash. */
async function outsideState(root: string): Promise<string[]> {
  const out: string[] = [];
  async function visit(dir: string, rel: string): Promise<void> {
    for (const name of (await readdir(dir)).sort()) {
      if (rel === '' && TARGETS.has(name)) continue;
      const abs = path.join(dir, name);
      const r = rel ? `${rel}/${name}` : name;
      const st = await lstat(abs);
      const what = st.isFile() ? createHash('sha256').update(await readFile(abs)).digest('hex') : st.isSymbolicLink() ? await readlink(abs) : '';
      out.push(`${r} ${st.mode.toString(8)} ${st.size} ${st.mtimeMs} ${st.nlink} ${what}`);
      if (st.isDirectory()) await visit(abs, r);
    }
  }
  await visit(root, '');
  return out;
}

async function expectUntouched(w: World): Promise<void> {
  expect(await outsideState(w.root)).toEqual(w.before);
  expect(await readFile(w.secret, 'utf8')).toBe('secret');
  expect((await stat(w.secret)).nlink).toBe(1);
}

// ---------------------------------------------------------------------------
// The paths a layer takes

/** The applier, straight: every layer in order into `<world>/direct`. */
async function applyDirect(w: World, layout: Layout, specs: LayerSpec[], opts: ApplyOptions = {}): Promise<{ error?: Error; dest: string }> {
  const dest = path.join(w.root, 'direct');
  try {
    for (const [i, s] of specs.entries()) {
      const blob = Buffer.isBuffer(s.blob) ? s.blob : s.blob === 'plain' ? s.tar : gzipSync(s.tar);
      await applyLayer(Readable.from([blob]), dest, { layer: { digest: layout.layers[i]!, image: layout.from }, ...opts });
    }
    return { dest };
  } catch (err) {
    return { error: err as Error, dest };
  }
}

/** `node <args>` as another user (the compiled CLI: run `npm run build` first). */
function spawnAs(uid: number, args: string[]): Promise<{ exitCode: number; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { uid, gid: uid, stdio: ['ignore', 'ignore', 'pipe'], env: { PATH: process.env.PATH ?? '/usr/bin:/bin' } });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ exitCode: code ?? -1, stderr }));
  });
}

async function unpackCli(w: World, layout: Layout) {
  const dest = path.join(w.root, 'unpacked');
  return { ...(await runCli(['unpack', layout.arg, dest])), dest };
}

/**
 * A build: image `base` is `from:` the layout with one file copied on top
 * (so every base layer's headers are read), image `app` copies `grab` out
 * of `base` (so the base is unpacked into a snapshot). No root needed.
 */
async function buildCli(w: World, layout: Layout, grab = '/marker.txt') {
  const proj = path.join(w.root, 'proj');
  await mkdir(proj, { recursive: true });
  await writeFile(path.join(proj, 'marker.txt'), 'marker\n');
  await writeFile(
    path.join(proj, 'build.yaml'),
    [
      'version: 1',
      'images:',
      '  base:',
      `    from: ${JSON.stringify(layout.from)}`,
      '    steps:',
      '      - {id: marker, copy: marker.txt, to: /marker.txt}',
      '  app:',
      '    steps:',
      `      - {id: grab, from: base, copy: ${JSON.stringify(grab)}, to: /grabbed/}`,
      '',
    ].join('\n'),
  );
  const res = await runCli(['run', path.join(proj, 'build.yaml'), '--out', path.join(proj, 'out'), '--cache-dir', path.join(proj, 'cache'), '--progress', 'quiet']);
  return { ...res, out: path.join(proj, 'out') };
}

/**
 * What a layer of `layout` refused at `entry` must say: the digest, the
 * image, the entry (quoted; a long one cut short, with its length).
 */
function expectNamed(text: string, layout: Layout, layer: number, entry: string, image?: string): void {
  expect(text).toContain(layout.layers[layer]!);
  if (image !== undefined) expect(text).toContain(image);
  if (entry.length <= 200) expect(text).toContain(`entry ${JSON.stringify(entry)}`);
  else expect(text).toContain(`entry ${JSON.stringify(entry.slice(0, 200)).slice(0, -1)}…" (${Buffer.byteLength(entry)} bytes)`);
}

/**
 * Runs every path on a layer set that must be refused at `entry` of layer
 * `layer` (default: the last), with `reason` in the message; in `w` (its
 * targets emptied first). A build refuses what the headers alone show when
 * it imports the base, naming the base; what only applying shows (`atImport:
 * false`) when a step unpacks it, naming the step.
 */
async function expectRefusedEverywhere(w: World, specs: LayerSpec[], entry: string, reason: RegExp, opts: { layer?: number; atImport?: boolean } = {}): Promise<void> {
  const layer = opts.layer ?? specs.length - 1;
  await resetTargets(w);
  const layout = await writeLayout(path.join(w.root, 'layout'), specs);

  const direct = await applyDirect(w, layout, specs);
  expect(direct.error).toBeInstanceOf(InvalidImageError);
  expect(direct.error!.message).toMatch(reason);
  expectNamed(direct.error!.message, layout, layer, entry, layout.from);
  await expectUntouched(w);

  const unpacked = await unpackCli(w, layout);
  expect(unpacked.exitCode, unpacked.stderr).toBe(1);
  expect(unpacked.stderr).toMatch(reason);
  expectNamed(unpacked.stderr, layout, layer, entry, layout.arg);
  expect(await readdir(unpacked.dest).catch(() => [])).toEqual([]);
  await expectUntouched(w);

  const built = await buildCli(w, layout);
  expect(built.exitCode, built.stderr).toBe(1);
  expect(built.stderr).toMatch(reason);
  if (opts.atImport ?? true) expectNamed(built.stderr, layout, layer, entry, layout.from);
  else {
    expectNamed(built.stderr, layout, layer, entry);
    expect(built.stderr).toContain('app/grab');
  }
  expect(built.stderr).not.toMatch(/unexpected error|bug in layergraph/);
  await expectUntouched(w);
}

async function resetTargets(w: World): Promise<void> {
  for (const t of TARGETS) await rm(path.join(w.root, t), { recursive: true, force: true });
}

/** `umoci unpack` of the same layout (an independent applier): its exit, and the world still untouched. */
async function umociUnpack(w: World, layout: Layout): Promise<{ ok: boolean; message: string }> {
  const args = ['unpack', ...(isRoot ? [] : ['--rootless']), '--image', layout.arg, path.join(w.root, 'bundle')];
  try {
    await tool('umoci', args);
    return { ok: true, message: '' };
  } catch (err) {
    return { ok: false, message: (err as Error).message };
  } finally {
    await expectUntouched(w);
  }
}

const file = (name: string, body = 'x'): Spec => ({ name, body });
const dir = (name: string): Spec => ({ name, type: 'directory' });
const symlink = (name: string, linkname: string): Spec => ({ name, type: 'symlink', linkname });
const hardlink = (name: string, linkname: string): Spec => ({ name, type: 'link', linkname });

// ---------------------------------------------------------------------------

describe('entries that climb out with ..', () => {
  it('are refused, naming the layer and the entry, on every path', async () => {
    const w = await makeWorld();
    for (const name of ['../sentinel/pwned', 'a/../../sentinel/pwned', './../x', `${w.climb}/pwned`]) {
      await expectRefusedEverywhere(w, [{ tar: await tarOf([file('ok'), file(name)]) }], name, /climbs out of the root with "\.\."/);
    }
  });

  // umoci clamps `..` to the root instead of refusing it: it writes nothing outside either.
  it('are refused in a plain (not gzipped) layer too, and umoci writes nothing outside either', async () => {
    const w = await makeWorld();
    const specs: LayerSpec[] = [{ tar: await tarOf([file('../sentinel/pwned')]), blob: 'plain' }];
    await expectRefusedEverywhere(w, specs, '../sentinel/pwned', /climbs out/);
    if (hasTool('umoci')) await umociUnpack(w, await writeLayout(path.join(w.root, 'layout'), specs));
  });
});

describe('absolute paths', () => {
  // Clamped, not refused: `/x` in a layer can only mean the image's /x, and
  // Docker, containerd and umoci all read it so.
  it('land inside the root, as Docker and containerd put them', async () => {
    const w = await makeWorld();
    const name = path.join(w.sentinel, 'pwned');
    const specs = [{ tar: await tarOf([file(name, 'clamped'), file('/etc/issue.hostile', 'clamped')]) }];
    const layout = await writeLayout(path.join(w.root, 'layout'), specs);

    const direct = await applyDirect(w, layout, specs);
    expect(direct.error).toBeUndefined();
    expect(await readFile(path.join(direct.dest, name), 'utf8')).toBe('clamped');
    expect(await readFile(path.join(direct.dest, 'etc/issue.hostile'), 'utf8')).toBe('clamped');
    await expectUntouched(w);

    const unpacked = await unpackCli(w, layout);
    expect(unpacked.exitCode, unpacked.stderr).toBe(0);
    expect(await readFile(path.join(unpacked.dest, name), 'utf8')).toBe('clamped');

    const built = await buildCli(w, layout, name);
    expect(built.exitCode, built.stderr).toBe(0);
    // The base layer was checked once on import; what was found is kept for the next run.
    const marker = path.join(w.root, 'proj', 'cache', 'bases', `${layout.layers[0]!.slice(7)}.checked`);
    expect(await readFile(marker, 'utf8')).toBe(sha256(specs[0]!.tar));
    await expectUntouched(w);
    if (hasTool('umoci')) expect((await umociUnpack(w, layout)).ok).toBe(true);
  });
});

describe('what the applier knows of the tree stays true as a layer changes it', () => {
  it('a directory replaced by a link to outside: later entries follow the new link, inside the root', async () => {
    const w = await makeWorld();
    const specs = [{ tar: await tarOf([dir('a/'), file('a/x'), symlink('a', w.sentinel), file('a/y', 'through')]) }];
    const layout = await writeLayout(path.join(w.root, 'layout'), specs);
    const direct = await applyDirect(w, layout, specs);
    expect(direct.error).toBeUndefined();
    expect(await readlink(path.join(direct.dest, 'a'))).toBe(w.sentinel);
    expect(await readFile(path.join(direct.dest, w.sentinel, 'y'), 'utf8')).toBe('through');
    await expectUntouched(w);
  });

  it('a lower directory whited out and made again holds only the new entries; a lower link is followed', async () => {
    const w = await makeWorld();
    const specs = [
      { tar: await tarOf([dir('d/'), file('d/old'), dir('real/'), symlink('via', 'real'), file('real/lower')]) },
      { tar: await tarOf([file('via/upper'), file('.wh.d', ''), dir('d/'), file('d/new'), file('via/.wh.lower', '')]) },
    ];
    const layout = await writeLayout(path.join(w.root, 'layout'), specs);
    const direct = await applyDirect(w, layout, specs);
    expect(direct.error).toBeUndefined();
    expect(await readdir(path.join(direct.dest, 'd'))).toEqual(['new']);
    expect(await readdir(path.join(direct.dest, 'real'))).toEqual(['upper']);
    await expectUntouched(w);
  });
});

describe('writing through a symlink', () => {
  it('resolves the link inside the root (same layer, earlier layer, relative and absolute targets, chains)', async () => {
    const w = await makeWorld();
    const specs: LayerSpec[] = [
      { tar: await tarOf([symlink('early', w.sentinel), symlink('chain', 'early')]) },
      {
        tar: await tarOf([
          symlink('abs', w.sentinel),
          file('abs/pwned1', 'in'),
          symlink('rel', w.climb),
          file('rel/pwned2', 'in'),
          file('early/pwned3', 'in'),
          file('chain/pwned4', 'in'),
          symlink('up', '../../../../../../..'),
          file('up/pwned5', 'in'),
        ]),
      },
    ];
    const layout = await writeLayout(path.join(w.root, 'layout'), specs);
    const inside = (dest: string) => path.join(dest, w.sentinel);

    const direct = await applyDirect(w, layout, specs);
    expect(direct.error).toBeUndefined();
    expect((await readdir(inside(direct.dest))).sort()).toEqual(['pwned1', 'pwned2', 'pwned3', 'pwned4']);
    expect(await readFile(path.join(direct.dest, 'pwned5'), 'utf8')).toBe('in');
    await expectUntouched(w);

    const unpacked = await unpackCli(w, layout);
    expect(unpacked.exitCode, unpacked.stderr).toBe(0);
    expect((await readdir(inside(unpacked.dest))).sort()).toEqual(['pwned1', 'pwned2', 'pwned3', 'pwned4']);
    await expectUntouched(w);

    // The copy reads the image as a container sees it: /early/pwned3 is in it.
    const built = await buildCli(w, layout, '/early/pwned3');
    expect(built.exitCode, built.stderr).toBe(0);
    await expectUntouched(w);

    if (hasTool('umoci')) expect((await umociUnpack(w, layout)).ok).toBe(true);
  });

  it('refuses a loop of links, naming the entry', async () => {
    await expectRefusedEverywhere(await makeWorld(), [{ tar: await tarOf([symlink('loop', 'loop'), file('loop/x')]) }], 'loop/x', /too many levels of symbolic links/, { atImport: false });
  });

  it('refuses a path through a file, naming the entry', async () => {
    await expectRefusedEverywhere(await makeWorld(), [{ tar: await tarOf([file('f'), symlink('l', 'f'), file('l/x')]) }], 'l/x', /is not a directory/, { atImport: false });
  });

  it('whiteouts and opaque markers behind a link to outside remove nothing outside', async () => {
    const w = await makeWorld();
    const specs: LayerSpec[] = [
      { tar: await tarOf([symlink('s', w.sentinel), symlink('r', w.climb)]) },
      { tar: await tarOf([file('s/.wh.secret'), file('r/.wh..wh..opq'), file('s/.wh..wh..opq')]) },
    ];
    const layout = await writeLayout(path.join(w.root, 'layout'), specs);
    expect((await applyDirect(w, layout, specs)).error).toBeUndefined();
    expect((await unpackCli(w, layout)).exitCode).toBe(0);
    expect((await buildCli(w, layout)).exitCode).toBe(0);
    await expectUntouched(w);
  });
});

describe('hard links', () => {
  it('that climb out with .. are refused', async () => {
    await expectRefusedEverywhere(await makeWorld(), [{ tar: await tarOf([hardlink('h', '../sentinel/secret')]) }], 'h', /hard link target climbs out/);
  });

  it('to a host path, through a link, or to what is not extracted yet are refused when the layer is applied', async () => {
    const w = await makeWorld();
    const cases: Array<[Spec[], string]> = [
      [[hardlink('h', w.secret)], 'h'],
      [[symlink('s', w.sentinel), hardlink('h', 's/secret')], 'h'],
      [[hardlink('h', 'later'), file('later')], 'h'],
      [[dir('d/'), hardlink('h', 'd')], 'h'],
    ];
    for (const [entries, entry] of cases) {
      const specs = [{ tar: await tarOf(entries) }];
      const layout = await writeLayout(path.join(w.root, 'layout'), specs);
      const direct = await applyDirect(w, layout, specs);
      expect(direct.error).toBeInstanceOf(InvalidImageError);
      expect(direct.error!.message).toMatch(/hard link to .*(not in the image|a directory)/);
      expectNamed(direct.error!.message, layout, 0, entry, layout.from);

      const unpacked = await unpackCli(w, layout);
      expect(unpacked.exitCode).toBe(1);
      expectNamed(unpacked.stderr, layout, 0, entry, layout.arg);

      // Headers alone cannot tell (the target may be below): the build fails where the layer is applied, naming the layer and the step.
      const built = await buildCli(w, layout);
      expect(built.exitCode, built.stderr).toBe(1);
      expectNamed(built.stderr, layout, 0, entry);
      expect(built.stderr).toContain('app/grab');
      await expectUntouched(w);
      // umoci refuses these too (link: no such file; linking a directory: not permitted).
      if (hasTool('umoci')) expect((await umociUnpack(w, layout)).ok).toBe(false);
      await resetTargets(w);
    }
  });

  it('to a file of the same or a lower layer still work', async () => {
    const w = await makeWorld();
    const specs = [{ tar: await tarOf([file('lower', 'l')]) }, { tar: await tarOf([file('a', 'a'), hardlink('b', 'a'), hardlink('c', 'lower')]) }];
    const layout = await writeLayout(path.join(w.root, 'layout'), specs);
    const direct = await applyDirect(w, layout, specs);
    expect(direct.error).toBeUndefined();
    expect((await stat(path.join(direct.dest, 'a'))).ino).toBe((await stat(path.join(direct.dest, 'b'))).ino);
    expect((await stat(path.join(direct.dest, 'c'))).ino).toBe((await stat(path.join(direct.dest, 'lower'))).ino);
  });
});

describe('whiteouts', () => {
  it('naming their own directory or a parent are refused', async () => {
    const w = await makeWorld();
    for (const name of ['.wh.', '.wh..', '.wh...', 'a/.wh.', 'a/.wh..', 'a/.wh...']) {
      await expectRefusedEverywhere(w, [{ tar: await tarOf([dir('a/'), file('a/keep'), file(name, '')]) }], name, /whiteout of its own directory or a parent/);
    }
  });

  it('that climb out are refused', async () => {
    await expectRefusedEverywhere(await makeWorld(), [{ tar: await tarOf([file('../sentinel/.wh.secret', '')]) }], '../sentinel/.wh.secret', /climbs out/);
  });
});

describe('device nodes', () => {
  const devices = async () => [
    {
      tar: await tarOf([
        { name: 'dev/null', type: 'character-device', devmajor: 1, devminor: 3, mode: 0o666 },
        { name: 'dev/disk', type: 'block-device', devmajor: 7, devminor: 0, mode: 0o600 },
        { name: 'dev/pipe', type: 'fifo', mode: 0o600 },
        file('marker.txt', 'm'),
      ]),
    },
  ];

  it('are created as root', { skip: !isRoot }, async () => {
    const w = await makeWorld();
    const specs = await devices();
    const layout = await writeLayout(path.join(w.root, 'layout'), specs);
    const direct = await applyDirect(w, layout, specs);
    expect(direct.error).toBeUndefined();
    expect((await lstat(path.join(direct.dest, 'dev/pipe'))).isFIFO()).toBe(true);
    expect((await lstat(path.join(direct.dest, 'dev/disk'))).isBlockDevice()).toBe(true);
    expect((await lstat(path.join(direct.dest, 'dev/null'))).rdev).toBe((1 << 8) | 3);
    expect((await unpackCli(w, layout)).exitCode).toBe(0);
    const built = await buildCli(w, layout);
    expect(built.exitCode, built.stderr).toBe(0);
    await expectUntouched(w);
  });

  it('are refused without root, naming the layer and the entry', { skip: isRoot }, async () => {
    await expectRefusedEverywhere(await makeWorld(), await devices(), 'dev/null', /a character device; creating device nodes needs root — run as root, or use an image without device nodes/, { atImport: false });
  });

  it('are refused by `layergraph unpack` run as another user than root (from a root test run)', { skip: !isRoot }, async () => {
    const w = await makeWorld();
    const specs = [{ tar: await tarOf([file('marker.txt', 'm'), { name: 'dev/sda', type: 'block-device', devmajor: 8, devminor: 0, mode: 0o600 }]) }];
    const layout = await writeLayout(path.join(w.root, 'layout'), specs);
    const dest = path.join(w.root, 'unpacked');
    await mkdir(dest);
    await chmod(w.root, 0o755);
    await tool('chown', ['-R', '65534:65534', dest, layout.dir]);
    const res = await spawnAs(65534, [path.join(REPO, 'bin', 'layergraph.js'), 'unpack', layout.arg, dest]);
    expect(res.exitCode, res.stderr).toBe(1);
    expect(res.stderr).toMatch(/a block device; creating device nodes needs root — run as root, or use an image without device nodes/);
    expectNamed(res.stderr, layout, 0, 'dev/sda', layout.arg);
    await expectUntouched(w);
  });

  it('are refused with the kernel’s reason where root may not make them (a user namespace, no CAP_MKNOD)', { skip: !isRoot }, async () => {
    const w = await makeWorld();
    const specs = await devices();
    const layout = await writeLayout(path.join(w.root, 'layout'), specs);
    const dest = path.join(w.root, 'direct');
    await mkdir(dest);
    await chmod(w.root, 0o755);
    await tool('chown', ['65534:65534', dest]);
    // Real uid stays 0 (so the applier tries), effective uid cannot mknod: as in a user namespace.
    process.setegid!(65534);
    process.seteuid!(65534);
    let res;
    try {
      res = await applyDirect(w, layout, specs, { preserveOwner: false });
    } finally {
      process.seteuid!(0);
      process.setegid!(0);
    }
    expect(res.error).toBeInstanceOf(InvalidImageError);
    expect(res.error!.message).toMatch(/a character device, and the kernel refused to create it \(Operation not permitted\)/);
    expectNamed(res.error!.message, layout, 0, 'dev/null', layout.from);
    await expectUntouched(w);
  });
});

describe('enormous headers', () => {
  it('a PAX path longer than Linux takes is refused', async () => {
    const name = `${'d/'.repeat(2100)}f`;
    await expectRefusedEverywhere(await makeWorld(), [{ tar: await tarOf([file(name)]) }], name, /is 4201 bytes long; Linux takes at most 4096/);
  });

  it('a path component longer than Linux takes is refused', async () => {
    const name = `a/${'n'.repeat(300)}`;
    await expectRefusedEverywhere(await makeWorld(), [{ tar: await tarOf([file(name)]) }], name, /component of 300 bytes; Linux takes at most 255/);
  });

  it('a GNU long name of 64 KiB is refused, and the message shows it cut short', async () => {
    const long = 'x'.repeat(65536);
    const bytes = Buffer.concat([
      rawEntry({ name: '././@LongLink', type: 'L', size: long.length + 1 }, Buffer.from(`${long}\0`)),
      rawEntry({ name: 'short', type: '0', size: 0 }),
      END_OF_TAR,
    ]);
    await expectRefusedEverywhere(await makeWorld(), [{ tar: bytes }], long, /is 65536 bytes long; Linux takes at most 4096/);
  });

  it('a PAX header over 4 MiB, and a GNU long name that claims 1 GiB, are refused before they are read', async () => {
    for (const bytes of [
      Buffer.concat([rawEntry({ name: 'ok', type: '0', size: 2 }, Buffer.from('ok')), rawEntry({ name: 'PaxHeader', type: 'x', size: 5 << 20 }, paxRecord('comment', 'z'.repeat((5 << 20) - 20))), rawEntry({ name: 'f', type: '0', size: 0 }), END_OF_TAR]),
      Buffer.concat([rawEntry({ name: 'ok', type: '0', size: 2 }, Buffer.from('ok')), rawHeader({ name: '././@LongLink', type: 'L', size: 2 ** 30 })]),
    ]) {
      const w = await makeWorld();
      const specs = [{ tar: bytes }];
      const layout = await writeLayout(path.join(w.root, 'layout'), specs);
      const direct = await applyDirect(w, layout, specs);
      expect(direct.error).toBeInstanceOf(InvalidImageError);
      expect(direct.error!.message).toContain(`${layout.layers[0]} of ${layout.from}: a PAX or GNU long-name header is larger than 4 MiB`);
      expect(direct.error!.message).toContain('(after entry "ok")');
      const unpacked = await unpackCli(w, layout);
      expect(unpacked.stderr).toContain('larger than 4 MiB');
      const built = await buildCli(w, layout);
      expect(built.exitCode).toBe(1);
      expect(built.stderr).toContain(`${layout.layers[0]} of ${layout.from}: a PAX or GNU long-name header is larger than 4 MiB`);
      await expectUntouched(w);
    }
  });

  it('a PAX size that is not a number is refused (it would put tar readers out of step)', async () => {
    const body = Buffer.from('0123456789ab');
    const bytes = Buffer.concat([rawEntry({ name: 'PaxHeader', type: 'x', size: paxRecord('size', '12abc').length }, paxRecord('size', '12abc')), rawEntry({ name: 'f', type: '0', size: 12 }, body), END_OF_TAR]);
    await expectRefusedEverywhere(await makeWorld(), [{ tar: bytes }], 'f', /PAX size "12abc" is not a number/);
  });

  it('an entry name with control characters is shown escaped', async () => {
    const name = '../\u001b[31mred';
    const w = await makeWorld();
    const specs = [{ tar: await tarOf([file(name)]) }];
    const layout = await writeLayout(path.join(w.root, 'layout'), specs);
    const direct = await applyDirect(w, layout, specs);
    expect(direct.error!.message).toContain('entry "../\\u001b[31mred"');
    expect(direct.error!.message).not.toContain('\u001b');
  });
});

describe('gzip bombs', () => {
  it('a layer over the size cap is refused, naming the entry being written and the setting', async () => {
    vi.stubEnv('LAYERGRAPH_MAX_LAYER_SIZE', '1MiB');
    const specs: LayerSpec[] = [{ tar: Buffer.alloc(0), blob: zeroBomb('zeros', 4 << 20) }];
    specs[0]!.tar = gunzipSync(specs[0]!.blob as Buffer);
    await expectRefusedEverywhere(await makeWorld(), specs, 'zeros', /decompresses to more than 1 MiB, the most a layer may \(set LAYERGRAPH_MAX_LAYER_SIZE to allow more\)/);
  });

  it('a layer that expands more than 1000:1 is refused once past the point the ratio is judged from', async () => {
    const w = await makeWorld();
    const blob = zeroBomb('zeros', 64 << 20);
    const specs = [{ tar: gunzipSync(blob), blob }];
    const layout = await writeLayout(path.join(w.root, 'layout'), specs);
    const limits = { maxBytes: Infinity, maxRatio: 1000, ratioAfter: 8 << 20 };
    const direct = await applyDirect(w, layout, specs, { limits });
    expect(direct.error).toBeInstanceOf(InvalidImageError);
    expect(direct.error!.message).toMatch(/entry "zeros": it decompresses more than 1000:1 \(.* out of .* so far\), as a gzip bomb does; .* set LAYERGRAPH_MAX_LAYER_RATIO=0/);
    expectNamed(direct.error!.message, layout, 0, 'zeros', layout.from);
    // The same bytes under the defaults (judged from 1 GiB on) are a genuine 64 MiB file of zeros.
    await rm(direct.dest, { recursive: true, force: true });
    expect((await applyDirect(w, layout, specs)).error).toBeUndefined();
    // And LAYERGRAPH_MAX_LAYER_RATIO=0 turns the check off.
    vi.stubEnv('LAYERGRAPH_MAX_LAYER_RATIO', '0');
    await rm(direct.dest, { recursive: true, force: true });
    expect((await applyDirect(w, layout, specs, { limits: undefined })).error).toBeUndefined();
    await expectUntouched(w);
  });

  it('with the default limits, a 1.05 GiB zero bomb is refused by a build without writing it anywhere', async () => {
    const w = await makeWorld();
    const blob = zeroBomb('zeros', Math.floor(1.05 * 2 ** 30));
    // The config's diffID is not known without inflating it all; any will do, the bomb is refused first.
    const layout = await writeLayout(path.join(w.root, 'layout'), [{ tar: Buffer.alloc(0), blob, diffId: sha256(Buffer.alloc(0)) }]);
    const built = await buildCli(w, layout);
    expect(built.exitCode, built.stderr).toBe(1);
    expect(built.stderr).toMatch(/entry "zeros": it decompresses more than 1000:1 \(1\.0 GiB out of [\d.]+ (KiB|MiB) so far\)/);
    expectNamed(built.stderr, layout, 0, 'zeros', layout.from);
    await expectUntouched(w);
  });

  it('refuses a bad limit setting as a usage error', async () => {
    vi.stubEnv('LAYERGRAPH_MAX_LAYER_SIZE', 'lots');
    const w = await makeWorld();
    const layout = await writeLayout(path.join(w.root, 'layout'), [{ tar: await tarOf([file('f')]) }]);
    const res = await unpackCli(w, layout);
    expect(res.exitCode).toBe(2);
    expect(res.stderr).toContain('LAYERGRAPH_MAX_LAYER_SIZE=lots: expected a size');
  });
});

describe('wrong digests', () => {
  it('a blob whose bytes are not its digest is refused by unpack and by a build (and by umoci)', async () => {
    const w = await makeWorld();
    const layout = await writeLayout(path.join(w.root, 'layout'), [{ tar: await tarOf([file('f', 'genuine')]) }]);
    // Same length, other bytes: what a swapped or damaged blob looks like.
    const blobFile = path.join(layout.dir, 'blobs', 'sha256', layout.layers[0]!.slice(7));
    await writeFile(blobFile, gzipSync(await tarOf([file('f', 'tampered')])));

    const unpacked = await unpackCli(w, layout);
    expect(unpacked.exitCode).toBe(1);
    expect(unpacked.stderr).toMatch(new RegExp(`blob ${layout.layers[0]} has digest sha256:[0-9a-f]{64}: the image is damaged`));
    expect(await readdir(unpacked.dest)).toEqual([]);

    const built = await buildCli(w, layout);
    expect(built.exitCode).toBe(1);
    expect(built.stderr).toContain(`${layout.from}: layer ${layout.layers[0]}: blob ${layout.layers[0]} arrived with digest sha256:`);
    await expectUntouched(w);
    if (hasTool('umoci')) expect((await umociUnpack(w, layout)).ok).toBe(false);
  });

  it('a layer whose tar is not the diffID its config says is refused, even by a build that never unpacks it (and by umoci)', async () => {
    const w = await makeWorld();
    const tarBytes = await tarOf([file('f', 'x')]);
    const wrong = sha256(Buffer.from('something else'));
    const layout = await writeLayout(path.join(w.root, 'layout'), [{ tar: tarBytes, diffId: wrong }]);

    const unpacked = await unpackCli(w, layout);
    expect(unpacked.exitCode).toBe(1);
    expect(unpacked.stderr).toContain(`layer ${layout.layers[0]} of ${layout.arg}: unpacked to diffID ${sha256(tarBytes)}, but its config says ${wrong}`);
    expect(await readdir(unpacked.dest)).toEqual([]);

    const built = await buildCli(w, layout);
    expect(built.exitCode).toBe(1);
    expect(built.stderr).toContain(`layer ${layout.layers[0]} of ${layout.from}: its config gives it diffID ${wrong}, but its tar has diffID ${sha256(tarBytes)}`);
    // Checked again on the next run (nothing was let into the cache as good).
    const again = await buildCli(w, layout);
    expect(again.stderr).toContain('its config gives it diffID');
    await expectUntouched(w);
    if (hasTool('umoci')) expect((await umociUnpack(w, layout)).ok).toBe(false);
  });

  it('a gzip stream that is damaged is refused, naming the layer', async () => {
    const w = await makeWorld();
    const good = gzipSync(await tarOf([file('f', 'x'.repeat(100_000))]));
    const blob = Buffer.concat([good.subarray(0, 40), Buffer.alloc(200, 0xaa)]);
    const layout = await writeLayout(path.join(w.root, 'layout'), [{ tar: Buffer.alloc(0), blob }]);
    const built = await buildCli(w, layout);
    expect(built.exitCode).toBe(1);
    expect(built.stderr).toContain(`layer ${layout.layers[0]} of ${layout.from}: its gzip stream is damaged`);
    const direct = await applyDirect(w, layout, [{ tar: Buffer.alloc(0), blob }]);
    expect(direct.error?.message).toContain(`layer ${layout.layers[0]} of ${layout.from}`);
  });
});

describe('run steps on a hostile base (overlay lowers)', { skip: !isRoot }, () => {
  it('keep a link-through write inside the image, and refuse a hard link to nowhere naming the layer', async () => {
    if (!hasStaticBusybox()) return;
    const w = await makeWorld();
    const proj = path.join(w.root, 'proj');
    const build = async (specs: LayerSpec[]) => {
      const layout = await writeLayout(path.join(w.root, 'layout'), specs);
      await mkdir(proj, { recursive: true });
      await copyFile(hostBusybox(), path.join(proj, 'busybox'));
      await writeFile(
        path.join(proj, 'build.yaml'),
        [
          'version: 1',
          'images:',
          '  app:',
          `    from: ${JSON.stringify(layout.from)}`,
          '    steps:',
          '      - {id: bb, copy: busybox, to: /bin/busybox, chmod: "0755"}',
          '      - id: look',
          '        run: ["/bin/busybox", "sh", "-c", "/bin/busybox ls / /early/ && /bin/busybox echo x > /early/fromrun"]',
          '',
        ].join('\n'),
      );
      const res = await runCli(['run', path.join(proj, 'build.yaml'), '--out', path.join(proj, 'out'), '--cache-dir', path.join(proj, 'cache'), '--progress', 'quiet']);
      return { ...res, layout };
    };
    const ok = await build([
      { tar: await tarOf([symlink('early', w.sentinel)]) },
      { tar: await tarOf([file('early/pwned', 'in'), symlink('abs', w.sentinel), file('abs/pwned2', 'in')]) },
    ]);
    expect(ok.exitCode, ok.stderr).toBe(0);
    await expectUntouched(w);

    const bad = await build([{ tar: await tarOf([symlink('s', w.sentinel), hardlink('h', 's/secret')]) }]);
    expect(bad.exitCode).toBe(1);
    expectNamed(bad.stderr, bad.layout, 0, 'h');
    expect(bad.stderr).toContain('app/look');
    await expectUntouched(w);
  });
});
