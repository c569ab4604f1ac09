/**
 * The snapshot layer against a real overlay mount: lowers unpacked by
 * LayerSnapshots, shell commands in the merged view, the upper packed by
 * packUpper and applied again; and the copying snapshotter's tree diff
 * giving the very same layer for the same commands.
 */
import { execFileSync } from 'node:child_process';
import { chmod, chown, link, lstat, mkdir, readdir, readFile, readlink, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { gunzipSync } from 'node:zlib';
import tar from 'tar-stream';
import { describe, expect, it } from 'vitest';
import { ContentStore } from '../src/cache/content-store.js';
import type { LayerRef } from '../src/cache/step-records.js';
import { CacheCorruptError } from '../src/errors.js';
import { applyLayer } from '../src/oci/layer-apply.js';
import { LayerSnapshots } from '../src/snapshot/layer-snapshots.js';
import { treeStamp } from '../src/snapshot/tree-stamp.js';
import { thisHost } from '../src/util/owner-tag.js';
import { mountOverlay, unmount } from '../src/snapshot/overlay-mount.js';
import { diffTree, indexTree, materializeRoot } from '../src/snapshot/tree-diff.js';
import { packUpper } from '../src/snapshot/upper-pack.js';
import { readXattrs, setXattr } from '../src/snapshot/xattrs.js';
import { hasTool } from './helpers/tools.js';
import { useTmpDirs } from './helpers/tmp.js';

const tmpDir = useTmpDirs();
const isRoot = process.getuid?.() === 0;
const canRun = isRoot && hasTool('setfattr') && hasTool('mount');

/** Changes of every kind overlayfs has to record, run in the root with the host's sh. */
const SCRIPT = `
set -e
echo v3 > etc/conf
rm etc/keep
rm -rf d/sub
echo n > d/newfile
chmod 600 e/f
rm -rf s && mkdir s && echo fresh > s/only
rm file2dir && mkdir file2dir && echo in > file2dir/in
rm -rf dir2file && echo now-a-file > dir2file
mkdir -p newdir/deep && echo deep > newdir/deep/file
ln -s ../etc/conf newdir/link
echo one > n1 && ln n1 n2
ln bin/tool bin/tool-link
printf x > bin/cap && chmod 755 bin/cap
setfattr -n security.capability -v 0x0100000200040000000000000000000000000000 bin/cap
setfattr -n user.added -v 0xff00 etc/other
chown 1000:1000 etc/other2
rm o/new
rmdir emptydir
chmod 0755 r && echo w > r/written && chmod 0555 r
rm h2
mv mvdir moved
`;

/** What SCRIPT's layer holds: its whiteouts where overlayfs puts them, and nothing it did not touch. */
const EXPECTED_ENTRIES = [
  '.wh.emptydir',
  'bin/',
  'bin/cap',
  'bin/tool',
  'bin/tool-link',
  'd/',
  'd/.wh.sub',
  'd/newfile',
  'dir2file',
  'e/',
  'e/f',
  'etc/',
  'etc/.wh.keep',
  'etc/conf',
  'etc/other',
  'etc/other2',
  'file2dir/',
  'file2dir/.wh..wh..opq',
  'file2dir/in',
  '.wh.h2',
  '.wh.mvdir',
  'moved/',
  'moved/f',
  'n1',
  'n2',
  'newdir/',
  'newdir/deep/',
  'newdir/deep/file',
  'newdir/link',
  'o/',
  'o/.wh.new',
  'r/',
  'r/written',
  's/',
  's/.wh..wh..opq',
  's/only',
];

describe.skipIf(!canRun)('snapshots on a real overlay mount', () => {
  it('unpacks lowers, packs the upper, and the copy snapshotter gives the same layer', async () => {
    const { store, layers, tmp } = await setup();
    const [base, top] = layers;
    const snapshots = new LayerSnapshots(path.join(tmp, 'cache'), store, () => path.join(tmp, 'run'));

    // Lowers in overlay format: the whiteout a device, the opaque directory marked.
    const [baseDir, topDir] = await Promise.all([snapshots.get(base!), snapshots.get(top!)]);
    expect(baseDir).toBe(path.join(tmp, 'cache', 'snapshots', 'layers', base!.diffId.slice('sha256:'.length)));
    expect(await snapshots.get(top!)).toBe(topDir);
    const gone = await lstat(path.join(topDir, 'gone'));
    expect(gone.isCharacterDevice() && gone.rdev === 0).toBe(true);
    expect((await readXattrs(topDir)).get('o')?.get('trusted.overlay.opaque')?.toString()).toBe('y');
    // The run's temp dir keeps nothing of the staging.
    expect(await readdir(path.join(tmp, 'run'))).toEqual([]);

    const mounted = path.join(tmp, 'm');
    const { upper, view } = await withOverlay([topDir, baseDir], mounted, async (merged) => {
      // The lowers behave: the whiteout hides, the opaque directory hides what the base had in it.
      expect(await readdir(merged)).not.toContain('gone');
      expect(await readdir(path.join(merged, 'o'))).toEqual(['new']);
      expect(await readFile(path.join(merged, 'etc/conf'), 'utf8')).toBe('v2\n');
      execFileSync('sh', ['-c', SCRIPT], { cwd: merged });
      return describeTree(merged);
    });

    const overlayLayer = await ingest(store, upper);
    expect(overlayLayer).not.toBeNull();
    expect(await tarNames(store, overlayLayer!)).toEqual([...EXPECTED_ENTRIES].sort());

    // Applied on top of the lowers, the layer gives what the mount showed.
    const applied = await tmpDir();
    for (const layer of [base!, top!, overlayLayer!]) await applyLayer(store.read(layer.digest), applied, { xattrs: true });
    expect(await describeTree(applied)).toEqual(view);

    // The copying snapshotter: same lowers, same commands, same layer to the byte.
    const root = path.join(await tmpDir(), 'rootfs');
    await materializeRoot([base!, top!], store, root);
    const before = await indexTree(root);
    execFileSync('sh', ['-c', SCRIPT], { cwd: root });
    const copyUpper = path.join(path.dirname(root), 'upper');
    await diffTree(before, root, copyUpper);
    const copyLayer = await ingest(store, copyUpper);
    expect(await tarNames(store, copyLayer!)).toEqual([...EXPECTED_ENTRIES].sort());
    expect(copyLayer).toEqual(overlayLayer);
    expect(await describeTree(root)).toEqual(view);

    // Kept as the new layer's snapshot, the upper is a lower the next step mounts as is.
    const kept = await snapshots.adopt(upper, overlayLayer!);
    expect(kept).toBe(snapshots.pathOf(overlayLayer!.diffId));
    expect(await snapshots.get(overlayLayer!)).toBe(kept);
    const again = await withOverlay([kept, topDir, baseDir], path.join(tmp, 'm2'), describeTree);
    expect(again.view).toEqual(view);
    // A second upper for a layer that has a snapshot is deleted.
    await snapshots.adopt(copyUpper, overlayLayer!);
    await expect(lstat(copyUpper)).rejects.toThrow(/ENOENT/);
  });

  it('makes no layer when the command changed nothing, with either snapshotter', async () => {
    const { store, layers, tmp } = await setup();
    const snapshots = new LayerSnapshots(path.join(tmp, 'cache'), store, () => path.join(tmp, 'run'));
    const lowers = await Promise.all([...layers].reverse().map((l) => snapshots.get(l)));
    const readOnly = 'cat etc/conf > /dev/null && ls -lR > /dev/null';
    const { upper } = await withOverlay(lowers, path.join(tmp, 'm'), async (merged) => {
      execFileSync('sh', ['-c', readOnly], { cwd: merged });
    });
    expect(await packUpper(upper, { mtime: 0 })).toBeNull();

    const root = path.join(await tmpDir(), 'rootfs');
    await materializeRoot(layers, store, root);
    const before = await indexTree(root);
    execFileSync('sh', ['-c', readOnly], { cwd: root });
    const copyUpper = path.join(path.dirname(root), 'upper');
    await diffTree(before, root, copyUpper);
    expect(await readdir(copyUpper)).toEqual([]);
    expect(await packUpper(copyUpper, { mtime: 0 })).toBeNull();
  });

  it('refuses a layer whose diffID is not what it was stored as, and keeps nothing', async () => {
    const { store, layers, tmp } = await setup();
    const snapshots = new LayerSnapshots(path.join(tmp, 'cache'), store, () => path.join(tmp, 'run'));
    const lying = { ...layers[0]!, diffId: layers[1]!.diffId };
    await expect(snapshots.get(lying)).rejects.toThrow(CacheCorruptError);
    await expect(lstat(snapshots.pathOf(lying.diffId))).rejects.toThrow(/ENOENT/);
    expect(await readdir(path.join(tmp, 'run'))).toEqual([]);
  });
});

describe.skipIf(!canRun)('layer snapshots published by several unpackers at once', () => {
  it('leave one tree, and the stamp of that tree (a loser never writes its own)', async () => {
    const { store, layers, tmp } = await setup();
    const cache = path.join(tmp, 'cache');
    // Separate instances: as separate processes, each unpacks and races for the rename.
    const dirs = await Promise.all(Array.from({ length: 8 }, (_, i) => new LayerSnapshots(cache, store, () => path.join(tmp, `run${i}`)).get(layers[0]!)));
    const dir = new LayerSnapshots(cache, store, () => tmp).pathOf(layers[0]!.diffId);
    expect(new Set(dirs)).toEqual(new Set([dir]));
    expect(await readFile(`${dir}.stamp`, 'utf8')).toBe(treeStamp(dir));
    expect(await readdir(path.join(cache, 'ingest'))).toEqual([]);
    // And the next user finds it whole: no damage said.
    const said: string[] = [];
    expect(await new LayerSnapshots(cache, store, () => path.join(tmp, 'next'), (w) => said.push(w)).get(layers[0]!)).toBe(dir);
    expect(said).toEqual([]);
  });

  it('a damaged tree another live build holds is left alone: this run unpacks its own copy', async () => {
    const { store, layers, tmp } = await setup();
    const cache = path.join(tmp, 'cache');
    const dir = await new LayerSnapshots(cache, store, () => path.join(tmp, 'run0')).get(layers[0]!);
    await writeFile(path.join(dir, 'etc', 'conf'), 'changed under a live mount\n');
    // A lease of a live process of this host (our parent) that holds the layer.
    await mkdir(path.join(cache, 'leases'), { recursive: true });
    await writeFile(path.join(cache, 'leases', `${thisHost()}.${process.ppid}-abcd`), `layer ${dir.split('/').pop()}\n`);
    const said: string[] = [];
    const run = path.join(tmp, 'run1');
    const got = await new LayerSnapshots(cache, store, () => run, (w) => said.push(w)).get(layers[0]!);
    expect(said).toEqual([expect.stringMatching(/was changed since it was unpacked/)]);
    expect(path.dirname(got)).toBe(run);
    expect(await readFile(path.join(got, 'etc', 'conf'), 'utf8')).not.toBe('changed under a live mount\n');
    expect(await readFile(path.join(dir, 'etc', 'conf'), 'utf8')).toBe('changed under a live mount\n');
  });
});

/** Two layers: a base with files of every kind, and one made from a hand-written overlay upper (a whiteout, an opaque dir). */
async function setup(): Promise<{ store: ContentStore; layers: LayerRef[]; tmp: string }> {
  const tmp = await tmpDir();
  await mkdir(path.join(tmp, 'run'));
  const store = new ContentStore(path.join(tmp, 'cache'));

  const base = path.join(tmp, 'base');
  const files: Record<string, string> = {
    'etc/conf': 'v1\n',
    'etc/keep': 'k\n',
    'etc/other': 'o\n',
    'etc/other2': 'o2\n',
    'd/x': 'x\n',
    'd/y': 'y\n',
    'd/sub/z': 'z\n',
    'd/sub/deeper/w': 'w\n',
    'o/old': 'old\n',
    gone: 'bye\n',
    'e/f': 'f\n',
    's/a': 'a\n',
    's/b/c': 'c\n',
    file2dir: 'file\n',
    'dir2file/inner': 'inner\n',
    h1: 'linked\n',
    'bin/tool': '#!/bin/sh\n',
    'r/file': 'ro\n',
    owned: 'mine\n',
    suid: 'root\n',
    'mvdir/f': 'moving\n',
  };
  for (const [rel, content] of Object.entries(files)) {
    await mkdir(path.dirname(path.join(base, rel)), { recursive: true, mode: 0o755 });
    await writeFile(path.join(base, rel), content, { mode: 0o644 });
  }
  await link(path.join(base, 'h1'), path.join(base, 'h2'));
  await symlink('etc/conf', path.join(base, 'ln'));
  await mkdir(path.join(base, 'emptydir'));
  await chmod(path.join(base, 'bin/tool'), 0o755);
  await setXattr(path.join(base, 'bin/tool'), 'user.comment', Buffer.from('tool'));
  await chown(path.join(base, 'owned'), 1000, 2000);
  await chmod(path.join(base, 'owned'), 0o640);
  await chmod(path.join(base, 'suid'), 0o4755);
  await setXattr(path.join(base, 'mvdir/f'), 'user.moving', Buffer.from('along'));
  await chmod(path.join(base, 'r'), 0o555);

  const top = path.join(tmp, 'top');
  await mkdir(path.join(top, 'o'), { recursive: true });
  await mkdir(path.join(top, 'etc'));
  execFileSync('mknod', [path.join(top, 'gone'), 'c', '0', '0']);
  await setXattr(path.join(top, 'o'), 'trusted.overlay.opaque', Buffer.from('y'));
  await writeFile(path.join(top, 'o/new'), 'new\n');
  await writeFile(path.join(top, 'etc/conf'), 'v2\n');

  const layers = [(await ingest(store, base))!, (await ingest(store, top))!];
  expect(await tarNames(store, layers[1]!)).toEqual(['.wh.gone', 'etc/', 'etc/conf', 'o/', 'o/.wh..wh..opq', 'o/new']);
  return { store, layers, tmp };
}

/** Mounts overlay over `lowers` (nearest first) with a fresh upper, runs `use`, always unmounts. */
async function withOverlay<T>(lowers: string[], dir: string, use: (merged: string) => Promise<T>): Promise<{ upper: string; view: T }> {
  const d = (n: string) => path.join(dir, n);
  await mkdir(dir);
  await Promise.all(['upper', 'work', 'merged'].map((n) => mkdir(d(n))));
  await mountOverlay({ lowers, upper: d('upper'), work: d('work'), target: d('merged') });
  try {
    return { upper: d('upper'), view: await use(d('merged')) };
  } finally {
    await unmount(d('merged'));
  }
}

async function ingest(store: ContentStore, upper: string): Promise<LayerRef | null> {
  const packed = await packUpper(upper, { mtime: 0 });
  if (!packed) return null;
  const blob = await store.ingest(packed.stream);
  return { digest: blob.digest, size: blob.size, diffId: await packed.diffId };
}

async function tarNames(store: ContentStore, layer: LayerRef): Promise<string[]> {
  const chunks: Buffer[] = [];
  for await (const c of store.read(layer.digest)) chunks.push(c as Buffer);
  const extract = tar.extract();
  const names: string[] = [];
  const reading = (async () => {
    for await (const e of extract) {
      names.push(e.header.name);
      e.resume();
    }
  })();
  extract.end(gunzipSync(Buffer.concat(chunks)));
  await reading;
  return names.sort();
}

interface Described {
  type: string;
  mode: string;
  owner: string;
  content?: string;
  target?: string;
  xattrs?: Record<string, string>;
  /** every name in the tree of a file that has more than one there */
  links?: string[];
}

/** What a process in the tree sees: every entry's kind, mode, owner, content, attributes and hard links. */
async function describeTree(root: string): Promise<Record<string, Described>> {
  const out: Record<string, Described> = {};
  const inodes = new Map<number, string[]>();
  const xattrs = await readXattrs(root);
  async function visit(rel: string): Promise<void> {
    for (const name of (await readdir(path.join(root, rel))).sort()) {
      const r = rel ? `${rel}/${name}` : name;
      const abs = path.join(root, r);
      const st = await lstat(abs);
      const e: Described = {
        type: st.isDirectory() ? 'dir' : st.isSymbolicLink() ? 'symlink' : st.isFile() ? 'file' : 'other',
        mode: (st.mode & 0o7777).toString(8),
        owner: `${st.uid}:${st.gid}`,
      };
      if (st.isFile()) e.content = await readFile(abs, 'utf8');
      if (st.isSymbolicLink()) e.target = await readlink(abs);
      const attrs = [...(xattrs.get(r) ?? [])].filter(([n]) => !n.startsWith('trusted.overlay.'));
      if (attrs.length) e.xattrs = Object.fromEntries(attrs.map(([n, v]) => [n, v.toString('hex')]));
      if (st.isFile() && st.nlink > 1) inodes.set(st.ino, [...(inodes.get(st.ino) ?? []), r]);
      out[r] = e;
      if (st.isDirectory()) await visit(r);
    }
  }
  await visit('');
  // Names in the tree, not nlink: overlayfs shows a lower file's own link count even when a name of it was deleted.
  for (const names of inodes.values()) if (names.length > 1) for (const n of names) out[n]!.links = names;
  return out;
}
