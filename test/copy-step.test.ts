import { lstat, mkdir, readdir, readFile, readlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { selectSources, type Selection } from '../src/context/select.js';
import { CopyDestinationError, InputChangedError, planCopy, type CopyPlan, type CopyTarget } from '../src/exec/copy-step.js';
import { applyLayer } from '../src/oci/layer-apply.js';
import { packTree } from '../src/oci/layer-pack.js';
import { listAll, makeTree, useTmpDirs } from './helpers/tmp.js';

const tmpDir = useTmpDirs();

let savedUmask: number;
beforeEach(() => {
  // Every test runs under a strict umask: nothing written may depend on it.
  savedUmask = process.umask(0o077);
});
afterEach(() => {
  process.umask(savedUmask);
});

interface Env {
  ctx: string;
  upper: string;
  select: (...specs: string[]) => Promise<Selection[]>;
}

async function setup(): Promise<Env> {
  const work = await tmpDir('lg-copy-');
  const ctx = path.join(work, 'ctx');
  const upper = path.join(work, 'upper');
  await makeTree(ctx, {
    'x.txt': 'x content\n',
    'y.txt': 'y content\n',
    'run.sh': { file: '#!/bin/sh\necho hi\n', mode: 0o755 },
    'secret.key': { file: 'top secret\n', mode: 0o600 },
    'alias.txt': { link: 'x.txt' },
    pkg: {
      dir: {
        'index.js': 'index\n',
        'bin.sh': { file: 'bin\n', mode: 0o755 },
        private: { dir: { 'key.pem': { file: 'pem\n', mode: 0o600 } }, mode: 0o700 },
        lib: { dir: { 'a.js': 'a\n', deep: { dir: { 'b.js': 'b\n' } } } },
        'rel-link': { link: 'index.js' },
        'abs-link': { link: '/usr/bin/env' },
        'dangling': { link: 'does/not/exist' },
        'dir-link': { link: 'lib' },
      },
    },
    other: { dir: { 'index.js': 'other index\n', 'extra.js': 'extra\n' } },
    ro: {
      dir: {
        'file.txt': 'inside read-only\n',
        sealed: { dir: { 'inner.txt': 'inner\n' }, mode: 0o555 },
      },
    },
    outer: {
      dir: {
        ro: { dir: { 'r.txt': 'r\n', 'exec.sh': { file: 'e\n', mode: 0o755 } }, mode: 0o555 },
      },
    },
  });
  await mkdir(upper);
  return {
    ctx,
    upper,
    select: (...specs) => selectSources(ctx, specs.map((spec, i) => ({ spec, pos: { file: 'build.yaml', line: i + 1, col: 1 } })), 'context'),
  };
}

const plans = new Map<string, CopyPlan>();

/**
 * Plan on nothing below, pack the plan straight from the sources as a build does, and unpack the layer
 * into `upper`; modes are the plan's (unpacked for us, the tree on disk stays readable).
 */
async function writeCopy(upper: string, selections: Selection[], target: Omit<CopyTarget, 'chown'>): Promise<CopyPlan> {
  const plan = planCopy(selections, { ...target, chown: undefined }, new Map());
  const packed = packTree(plan.treeEntries(), { mtime: 0, owner: (rel) => plan.meta(rel), mode: (rel) => plan.meta(rel).mode });
  await applyLayer(packed.stream, upper, { realModes: new Map(), preserveOwner: false });
  plan.checkUnchanged();
  plans.set(upper, plan);
  return plan;
}

async function modeOf(p: string): Promise<number> {
  await lstat(p); // it must exist on disk too
  for (const [upper, plan] of plans) if (p.startsWith(`${upper}/`)) return plan.meta(path.relative(upper, p)).mode;
  throw new Error(`${p} is in no planned upper`);
}

const text = (p: string): Promise<string> => readFile(p, 'utf8');

describe('writeCopy: where things land', () => {
  it('writes a single file at `to` when it has no trailing slash', async () => {
    const { upper, select } = await setup();
    await writeCopy(upper, await select('x.txt'), { to: '/app/renamed.txt', chmod: undefined });
    expect(await listAll(upper)).toEqual(['app', 'app/renamed.txt']);
    expect(await text(path.join(upper, 'app/renamed.txt'))).toBe('x content\n');
  });

  it('writes a single file into `to` under its own name when `to` ends with /', async () => {
    const { upper, select } = await setup();
    await writeCopy(upper, await select('x.txt'), { to: '/app/', chmod: undefined });
    expect(await listAll(upper)).toEqual(['app', 'app/x.txt']);
    expect(await text(path.join(upper, 'app/x.txt'))).toBe('x content\n');
  });

  it('writes a file into the root with `to: /`', async () => {
    const { upper, select } = await setup();
    await writeCopy(upper, await select('x.txt'), { to: '/', chmod: undefined });
    expect(await listAll(upper)).toEqual(['x.txt']);
  });

  it('uses the basename of a nested source', async () => {
    const { upper, select } = await setup();
    await writeCopy(upper, await select('pkg/lib/a.js'), { to: '/srv/', chmod: undefined });
    expect(await listAll(upper)).toEqual(['srv', 'srv/a.js']);
  });

  it("copies a directory's contents into `to`, with or without a trailing slash", async () => {
    for (const to of ['/app', '/app/']) {
      const { upper, select } = await setup();
      await writeCopy(upper, await select('pkg/lib'), { to, chmod: undefined });
      expect(await listAll(upper), to).toEqual(['app', 'app/a.js', 'app/deep', 'app/deep/b.js']);
      expect(await text(path.join(upper, 'app/deep/b.js'))).toBe('b\n');
    }
  });

  it('copies a whole directory tree, links included, into a nested `to`', async () => {
    const { upper, select } = await setup();
    await writeCopy(upper, await select('pkg'), { to: '/opt/pkg/', chmod: undefined });
    expect(await listAll(upper)).toEqual([
      'opt',
      'opt/pkg',
      'opt/pkg/abs-link',
      'opt/pkg/bin.sh',
      'opt/pkg/dangling',
      'opt/pkg/dir-link',
      'opt/pkg/index.js',
      'opt/pkg/lib',
      'opt/pkg/lib/a.js',
      'opt/pkg/lib/deep',
      'opt/pkg/lib/deep/b.js',
      'opt/pkg/private',
      'opt/pkg/private/key.pem',
      'opt/pkg/rel-link',
    ]);
  });

  it('refuses several sources when `to` has no trailing slash, and writes nothing', async () => {
    const { upper, select } = await setup();
    const sels = await select('x.txt', 'y.txt');
    await expect(writeCopy(upper, sels, { to: '/app', chmod: undefined })).rejects.toBeInstanceOf(CopyDestinationError);
    await expect(writeCopy(upper, sels, { to: '/app', chmod: undefined })).rejects.toThrow(/end it with "\/"/);
    expect(await readdir(upper)).toEqual([]);
  });

  it('refuses a glob that matches several files when `to` has no trailing slash', async () => {
    const { upper, select } = await setup();
    const sels = await select('*.txt');
    expect(sels.length).toBeGreaterThan(1);
    await expect(writeCopy(upper, sels, { to: '/app/file.txt', chmod: undefined })).rejects.toBeInstanceOf(CopyDestinationError);
  });

  it('copies several sources into `to/` when it ends with a slash', async () => {
    const { upper, select } = await setup();
    await writeCopy(upper, await select('x.txt', 'y.txt', 'pkg/lib'), { to: '/app/', chmod: undefined });
    expect(await listAll(upper)).toEqual(['app', 'app/a.js', 'app/deep', 'app/deep/b.js', 'app/x.txt', 'app/y.txt']);
    expect(await text(path.join(upper, 'app/x.txt'))).toBe('x content\n');
    expect(await text(path.join(upper, 'app/y.txt'))).toBe('y content\n');
  });

  it('lets a later source overwrite an earlier one of the same name', async () => {
    const { upper, select } = await setup();
    await writeCopy(upper, await select('pkg', 'other'), { to: '/app/', chmod: undefined });
    expect(await text(path.join(upper, 'app/index.js'))).toBe('other index\n');
    expect(await text(path.join(upper, 'app/extra.js'))).toBe('extra\n');
    expect(await text(path.join(upper, 'app/lib/a.js'))).toBe('a\n');
  });

  it('writes a followed source symlink as a regular file', async () => {
    const { upper, select } = await setup();
    await writeCopy(upper, await select('alias.txt'), { to: '/app/', chmod: undefined });
    const st = await lstat(path.join(upper, 'app/alias.txt'));
    expect(st.isFile()).toBe(true);
    expect(await text(path.join(upper, 'app/alias.txt'))).toBe('x content\n');
  });
});

describe('writeCopy: modes', () => {
  it('creates missing parents 0755 whatever the umask', async () => {
    const { upper, select } = await setup();
    await writeCopy(upper, await select('x.txt'), { to: '/a/b/c/x.txt', chmod: undefined });
    for (const d of ['a', 'a/b', 'a/b/c']) expect(await modeOf(path.join(upper, d)), d).toBe(0o755);
    expect(await modeOf(path.join(upper, 'a/b/c/x.txt'))).toBe(0o644);
  });

  it('creates the destination directory of a directory copy 0755 whatever the umask', async () => {
    const { upper, select } = await setup();
    await writeCopy(upper, await select('pkg/lib'), { to: '/usr/local/lib/', chmod: undefined });
    for (const d of ['usr', 'usr/local', 'usr/local/lib']) expect(await modeOf(path.join(upper, d)), d).toBe(0o755);
  });

  it('keeps the modes of the source files and directories', async () => {
    const { upper, select } = await setup();
    await writeCopy(upper, await select('run.sh', 'secret.key', 'x.txt'), { to: '/app/', chmod: undefined });
    expect(await modeOf(path.join(upper, 'app/run.sh'))).toBe(0o755);
    expect(await modeOf(path.join(upper, 'app/secret.key'))).toBe(0o600);
    expect(await modeOf(path.join(upper, 'app/x.txt'))).toBe(0o644);

    const second = path.join(upper, '..', 'upper2');
    await mkdir(second);
    await writeCopy(second, await select('pkg'), { to: '/pkg', chmod: undefined });
    expect(await modeOf(path.join(second, 'pkg/bin.sh'))).toBe(0o755);
    expect(await modeOf(path.join(second, 'pkg/index.js'))).toBe(0o644);
    expect(await modeOf(path.join(second, 'pkg/private'))).toBe(0o700);
    expect(await modeOf(path.join(second, 'pkg/private/key.pem'))).toBe(0o600);
    expect(await modeOf(path.join(second, 'pkg/lib'))).toBe(0o755);
    expect(await modeOf(path.join(second, 'pkg/lib/deep'))).toBe(0o755);
  });

  it('applies chmod to every copied file and directory', async () => {
    const { upper, select } = await setup();
    await writeCopy(upper, await select('pkg', 'secret.key'), { to: '/opt/app/', chmod: 0o750 });
    // the missing parent of `to` is not copied: it stays 0755
    expect(await modeOf(path.join(upper, 'opt'))).toBe(0o755);
    for (const p of [
      'opt/app',
      'opt/app/index.js',
      'opt/app/bin.sh',
      'opt/app/private',
      'opt/app/private/key.pem',
      'opt/app/lib',
      'opt/app/lib/a.js',
      'opt/app/lib/deep',
      'opt/app/lib/deep/b.js',
      'opt/app/secret.key',
    ]) {
      expect(await modeOf(path.join(upper, p)), p).toBe(0o750);
    }
  });

  it('applies a chmod that removes write and search bits only once the tree is written', async () => {
    const { upper, select } = await setup();
    await writeCopy(upper, await select('pkg/lib'), { to: '/l/', chmod: 0o444 });
    expect(await modeOf(path.join(upper, 'l/deep'))).toBe(0o444);
    expect(await modeOf(path.join(upper, 'l/a.js'))).toBe(0o444);
    const files = await listAll(upper).catch(() => []);
    expect(files).toContain('l/deep/b.js');
  });

  it('copies a read-only source directory with its files and ends it 0555', async () => {
    const { upper, select } = await setup();
    await writeCopy(upper, await select('outer'), { to: '/srv/', chmod: undefined });
    expect(await modeOf(path.join(upper, 'srv/ro'))).toBe(0o555);
    expect(await text(path.join(upper, 'srv/ro/r.txt'))).toBe('r\n');
    expect(await modeOf(path.join(upper, 'srv/ro/r.txt'))).toBe(0o644);
    expect(await modeOf(path.join(upper, 'srv/ro/exec.sh'))).toBe(0o755);
  });

  it('copies nested read-only directories', async () => {
    const { upper, select } = await setup();
    await writeCopy(upper, await select('ro'), { to: '/data', chmod: undefined });
    expect(await text(path.join(upper, 'data/file.txt'))).toBe('inside read-only\n');
    expect(await text(path.join(upper, 'data/sealed/inner.txt'))).toBe('inner\n');
    expect(await modeOf(path.join(upper, 'data/sealed'))).toBe(0o555);
  });
});

describe('writeCopy: symlinks', () => {
  it('recreates symlinks with the same target, without following them', async () => {
    const { upper, select } = await setup();
    await writeCopy(upper, await select('pkg'), { to: '/app/', chmod: 0o700 });
    for (const [name, target] of [
      ['rel-link', 'index.js'],
      ['abs-link', '/usr/bin/env'],
      ['dangling', 'does/not/exist'],
      ['dir-link', 'lib'],
    ] as const) {
      const p = path.join(upper, 'app', name);
      expect((await lstat(p)).isSymbolicLink(), name).toBe(true);
      expect(await readlink(p), name).toBe(target);
    }
  });
});

describe('planCopy: what is below', () => {
  it('keeps the mode and owner a passed-through directory has below; new ones get 0755 and the step owner', async () => {
    const { upper, select } = await setup();
    const below = new Map([['app', { mode: 0o750, uid: 1000, gid: 1000 }]]);
    const plan = planCopy(await select('x.txt'), { to: '/app/conf/x.txt', chmod: undefined, chown: { uid: 7, gid: 8 } }, below);
    expect(plan.meta('app')).toEqual({ kind: 'dir', mode: 0o750, uid: 1000, gid: 1000 });
    expect(plan.meta('app/conf')).toEqual({ kind: 'dir', mode: 0o755, uid: 7, gid: 8 });
    expect(plan.meta('app/conf/x.txt')).toMatchObject({ kind: 'file', mode: 0o644, uid: 7, gid: 8 });
    expect([...plan.dirs().keys()]).toEqual(['app', 'app/conf']);
  });

  it('refuses a `to` that climbs out of the image root', async () => {
    const { select } = await setup();
    expect(() => planCopy([], { to: '/../../etc/', chmod: undefined, chown: undefined }, new Map())).toThrow(CopyDestinationError);
    const one = await select('x.txt');
    expect(() => planCopy(one, { to: '/a/../../x', chmod: undefined, chown: undefined }, new Map())).toThrow(/leave the image root/);
  });

  it('fails when an input changes between hashing and copying', async () => {
    const { ctx, upper, select } = await setup();
    const selections = await select('x.txt');
    await new Promise((r) => setTimeout(r, 20));
    await writeFile(path.join(ctx, 'x.txt'), 'changed after it was hashed\n');
    const plan = planCopy(selections, { to: '/x.txt', chmod: undefined, chown: undefined }, new Map());
    expect(() => plan.checkUnchanged()).toThrow(InputChangedError);
  });
});
