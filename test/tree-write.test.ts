import { lstat, readFile, readlink, rm, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { selectSources } from '../src/context/select.js';
import { planCopy, type CopyTarget } from '../src/exec/copy-step.js';
import { applyLayer } from '../src/oci/layer-apply.js';
import { packTree } from '../src/oci/layer-pack.js';
import { treeStamp } from '../src/snapshot/tree-stamp.js';
import { writeTree } from '../src/snapshot/tree-write.js';
import { listAll, makeTree, useTmpDirs } from './helpers/tmp.js';

// Owners are part of what is compared, and only root can set them (as for every layer snapshot).
const asRoot = process.getuid?.() === 0;
const tmpDir = useTmpDirs();

let savedUmask: number;
beforeEach(() => {
  savedUmask = process.umask(0o077);
});
afterEach(() => {
  process.umask(savedUmask);
});

const BIG = 700 * 1024 + 13; // more than one read of the copy loop

async function context(): Promise<string> {
  const ctx = path.join(await tmpDir('lg-tree-write-'), 'ctx');
  await makeTree(ctx, {
    'x.txt': 'x\n',
    'empty.txt': '',
    'run.sh': { file: '#!/bin/sh\necho hi\n', mode: 0o755 },
    'suid': { file: 'suid\n', mode: 0o4755 },
    'secret.key': { file: 'secret\n', mode: 0o600 },
    'alias.txt': { link: 'x.txt' },
    'abs-link': { link: '/usr/bin/env' },
    pkg: {
      dir: {
        'index.js': 'index\n',
        sealed: { dir: { 'inner.txt': 'inner\n', deeper: { dir: { 'z.txt': 'z\n' } } }, mode: 0o555 },
        'private': { dir: { 'k.pem': { file: 'pem\n', mode: 0o400 } }, mode: 0o700 },
      },
    },
  });
  await writeFile(path.join(ctx, 'pkg', 'big.bin'), Buffer.alloc(BIG, 7));
  return ctx;
}

/** The copy packed, then unpacked as a layer snapshot is, and also written straight from its plan. */
async function bothWays(ctx: string, specs: string[], target: CopyTarget, below = new Map()) {
  const selections = await selectSources(ctx, specs.map((spec, i) => ({ spec, pos: { file: 'b.yaml', line: i + 1, col: 1 } })), 'context');
  const plan = planCopy(selections, target, below);
  const meta = (rel: string) => plan.meta(rel);
  const packed = packTree(plan.treeEntries(), { mtime: 1_700_000_000, owner: meta, mode: (rel) => meta(rel).mode });
  const work = await tmpDir('lg-tree-write-out-');
  const unpacked = path.join(work, 'unpacked');
  const written = path.join(work, 'written');
  await applyLayer(packed.stream, unpacked, { whiteouts: 'overlay', xattrs: true, preserveOwner: true });
  writeTree(plan.treeEntries(), written, meta, 1_700_000_000);
  return { unpacked, written };
}

async function sameTrees(a: string, b: string): Promise<void> {
  expect(await listAll(b)).toEqual(await listAll(a));
  for (const rel of await listAll(a)) {
    const [sa, sb] = [await lstat(path.join(a, rel)), await lstat(path.join(b, rel))];
    const shape = (s: typeof sa) => ({ rel, mode: s.mode.toString(8), uid: s.uid, gid: s.gid, size: s.isDirectory() ? 0 : s.size, mtime: s.mtimeMs });
    expect(shape(sb)).toEqual(shape(sa));
    if (sa.isFile()) expect((await readFile(path.join(b, rel))).equals(await readFile(path.join(a, rel)))).toBe(true);
    if (sa.isSymbolicLink()) expect(await readlink(path.join(b, rel))).toBe(await readlink(path.join(a, rel)));
  }
  expect(treeStamp(b)).toBe(treeStamp(a));
}

describe.skipIf(!asRoot)('writeTree: a copy written from its plan is the layer unpacked', () => {
  it('a whole context, with owners, modes (setuid, read-only dirs), links and a big file', async () => {
    const ctx = await context();
    const { unpacked, written } = await bothWays(ctx, ['.'], { to: '/app/', chmod: undefined, chown: { uid: 1000, gid: 1001 } });
    await sameTrees(unpacked, written);
    expect((await lstat(path.join(written, 'app/suid'))).mode & 0o7777).toBe(0o4755);
    expect((await lstat(path.join(written, 'app/pkg/big.bin'))).size).toBe(BIG);
  });

  it('chmod, several sources, directories passed through keeping what is below', async () => {
    const ctx = await context();
    const below = new Map([['usr', { mode: 0o750, uid: 3, gid: 4 }]]);
    const { unpacked, written } = await bothWays(ctx, ['x.txt', 'pkg', 'run.sh'], { to: '/usr/share/app/', chmod: 0o640, chown: undefined }, below);
    await sameTrees(unpacked, written);
    expect((await lstat(path.join(written, 'usr'))).mode & 0o7777).toBe(0o750);
  });

  it('a single file renamed at `to`', async () => {
    const ctx = await context();
    const { unpacked, written } = await bothWays(ctx, ['secret.key'], { to: '/etc/app.key', chmod: undefined, chown: { uid: 0, gid: 0 } });
    await sameTrees(unpacked, written);
  });

  it('fails on a source that shrank since it was listed, and never follows a source swapped for a link', async () => {
    const ctx = await context();
    const selections = await selectSources(ctx, [{ spec: 'pkg', pos: { file: 'b.yaml', line: 1, col: 1 } }], 'context');
    const plan = planCopy(selections, { to: '/app/', chmod: undefined, chown: undefined }, new Map());
    await writeFile(path.join(ctx, 'pkg/big.bin'), 'short');
    const out = path.join(await tmpDir('lg-tree-write-out-'), 'w');
    expect(() => writeTree(plan.treeEntries(), out, (rel) => plan.meta(rel), 0)).toThrow(/changed size/);

    const again = await selectSources(ctx, [{ spec: 'x.txt', pos: { file: 'b.yaml', line: 1, col: 1 } }], 'context');
    const plan2 = planCopy(again, { to: '/x', chmod: undefined, chown: undefined }, new Map());
    await rm(path.join(ctx, 'x.txt'));
    await symlink('/etc/passwd', path.join(ctx, 'x.txt'));
    const out2 = path.join(await tmpDir('lg-tree-write-out-'), 'w');
    expect(() => writeTree(plan2.treeEntries(), out2, (rel) => plan2.meta(rel), 0)).toThrow(/ELOOP|symbolic/);
  });
});
