/**
 * The engine through its public API, on small build files written per test:
 * what ends up in the configs, manifests and layer tars.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { createGunzip } from 'node:zlib';
import { Readable } from 'node:stream';
import { extract } from 'tar-stream';
import { describe, expect, it } from 'vitest';
import { parseBuildFile, runBuild, type BuildResult } from '../src/index.js';
import { makeTree, useTmpDirs, type TreeSpec } from './helpers/tmp.js';

const tmpDir = useTmpDirs();

async function build(yaml: string, tree: TreeSpec, opts: { targets?: string[]; epoch?: number; dir?: string } = {}): Promise<{ result: BuildResult; dir: string }> {
  const dir = opts.dir ?? (await tmpDir());
  await makeTree(dir, { ...tree, 'build.yaml': yaml });
  const spec = parseBuildFile(yaml, path.join(dir, 'build.yaml'));
  const result = await runBuild(spec, {
    cacheDir: path.join(dir, 'cache'),
    outDir: path.join(dir, 'out'),
    targets: opts.targets ?? [],
    jobs: 4,
    sourceDateEpoch: opts.epoch ?? 0,
  });
  if (result.error) throw result.error;
  return { result, dir };
}

async function blobJson<T>(dir: string, digest: string): Promise<T> {
  return JSON.parse(await readFile(path.join(dir, 'out', 'blobs', 'sha256', digest.slice(7)), 'utf8')) as T;
}

interface Manifest {
  config: { digest: string };
  layers: Array<{ digest: string; mediaType: string }>;
}
interface Config {
  created: string;
  architecture: string;
  os: string;
  variant?: string;
  config: Record<string, unknown>;
  rootfs: { diff_ids: string[] };
  history: Array<{ created_by: string; empty_layer?: boolean }>;
}

async function imageOf(dir: string, result: BuildResult, name: string): Promise<{ manifest: Manifest; config: Config }> {
  const img = result.images.find((i) => i.name === name)!;
  const manifest = await blobJson<Manifest>(dir, img.manifestDigest);
  return { manifest, config: await blobJson<Config>(dir, manifest.config.digest) };
}

async function tarEntries(dir: string, digest: string): Promise<Array<{ name: string; uid: number; gid: number; mode: number; mtime: number; type: string }>> {
  const bytes = await readFile(path.join(dir, 'out', 'blobs', 'sha256', digest.slice(7)));
  const ex = extract();
  const out: Array<{ name: string; uid: number; gid: number; mode: number; mtime: number; type: string }> = [];
  Readable.from([bytes]).pipe(createGunzip()).pipe(ex as unknown as NodeJS.WritableStream);
  for await (const entry of ex) {
    const h = entry.header;
    out.push({ name: h.name, uid: h.uid ?? -1, gid: h.gid ?? -1, mode: (h.mode ?? 0) & 0o7777, mtime: (h.mtime?.getTime() ?? -1) / 1000, type: h.type ?? '' });
    entry.resume();
  }
  return out;
}

describe('runBuild', () => {
  it('records a step that writes nothing as an empty layer in the history', async () => {
    const { result, dir } = await build(
      `version: 1\nimages:\n  a:\n    steps:\n      - id: nothing\n        copy: empty/\n        to: /\n      - id: file\n        copy: f.txt\n        to: /f.txt\n`,
      { empty: { dir: {} }, 'f.txt': 'x' },
    );
    expect(result.steps.map((s) => [s.step, s.layer === null])).toEqual([['nothing', true], ['file', false]]);
    const { manifest, config } = await imageOf(dir, result, 'a');
    expect(manifest.layers).toHaveLength(1);
    expect(config.rootfs.diff_ids).toHaveLength(1);
    expect(config.history.map((h) => h.empty_layer ?? false)).toEqual([true, false]);
  });

  it('inherits config from a base image of the file, Docker style', async () => {
    const yaml = `version: 1
images:
  base:
    env: {A: "1", B: "2"}
    cmd: [serve]
    labels: {team: core}
    expose: [80]
    steps:
      - {id: f, copy: f.txt, to: /f.txt}
  child:
    from: base
    env: {B: "3", C: "4"}
    entrypoint: [/bin/app]
    labels: {tier: web}
    expose: ["53/udp"]
    steps:
      - {id: g, copy: f.txt, to: /g.txt}
`;
    const { result, dir } = await build(yaml, { 'f.txt': 'x' });
    const { manifest, config } = await imageOf(dir, result, 'child');
    expect(config.config).toEqual({
      ExposedPorts: { '53/udp': {}, '80/tcp': {} },
      Env: ['A=1', 'B=3', 'C=4'],
      Entrypoint: ['/bin/app'],
      Labels: { team: 'core', tier: 'web' },
    });
    expect(manifest.layers).toHaveLength(2);
    expect(manifest.layers[0]!.digest).toBe(result.images.find((i) => i.name === 'base')!.layers[0]!.digest);
    expect(config.history).toHaveLength(2);
  });

  it('writes owners from chown, modes from the source or chmod, and the SOURCE_DATE_EPOCH mtime', async () => {
    const yaml = `version: 1
images:
  a:
    steps:
      - {id: owned, copy: bin/, to: /opt/bin/, chown: "1000:2000"}
      - {id: plain, copy: bin/, to: /usr/bin/, chmod: "0700"}
`;
    const { result, dir } = await build(yaml, { bin: { dir: { tool: { file: 'x', mode: 0o755 }, data: { file: 'y', mode: 0o640 } } } }, { epoch: 1700000000 });
    const [owned, plain] = result.steps.map((s) => s.layer!.digest);
    expect(await tarEntries(dir, owned!)).toEqual([
      { name: 'opt/', uid: 1000, gid: 2000, mode: 0o755, mtime: 1700000000, type: 'directory' },
      { name: 'opt/bin/', uid: 1000, gid: 2000, mode: 0o755, mtime: 1700000000, type: 'directory' },
      { name: 'opt/bin/data', uid: 1000, gid: 2000, mode: 0o640, mtime: 1700000000, type: 'file' },
      { name: 'opt/bin/tool', uid: 1000, gid: 2000, mode: 0o755, mtime: 1700000000, type: 'file' },
    ]);
    expect((await tarEntries(dir, plain!)).map((e) => [e.name, e.uid, e.mode.toString(8)])).toEqual([
      ['usr/', 0, '755'],
      ['usr/bin/', 0, '700'],
      ['usr/bin/data', 0, '700'],
      ['usr/bin/tool', 0, '700'],
    ]);
    const { config } = await imageOf(dir, result, 'a');
    expect(config.created).toBe('2023-11-14T22:13:20Z');
  });

  it('writes only the targets, building what they need', async () => {
    const yaml = `version: 1
images:
  base: {steps: [{id: f, copy: f.txt, to: /f.txt}]}
  app: {from: base, steps: [{id: g, copy: f.txt, to: /g.txt}]}
  other: {steps: [{id: h, copy: f.txt, to: /h.txt}]}
`;
    const { result, dir } = await build(yaml, { 'f.txt': 'x' }, { targets: ['app'] });
    expect(result.steps.map((s) => `${s.image}/${s.step}`)).toEqual(['base/f', 'app/g']);
    const index = JSON.parse(await readFile(path.join(dir, 'out', 'index.json'), 'utf8')) as { manifests: Array<{ annotations: Record<string, string> }> };
    expect(index.manifests.map((m) => m.annotations['org.opencontainers.image.ref.name'])).toEqual(['app']);
  });

  it('copies out of another image, resolving its symlinks inside that image', async () => {
    const yaml = `version: 1
images:
  builder:
    steps:
      - {id: dist, copy: dist/, to: /srv/v2/}
      - {id: link, copy: links/, to: /srv/}
  app:
    steps:
      - {id: assets, from: builder, copy: /srv/current/app.js, to: /app/app.js}
`;
    const { result, dir } = await build(yaml, { dist: { dir: { 'app.js': 'console.log(1)' } }, links: { dir: { current: { link: '/srv/v2' } } } });
    expect(result.steps.find((s) => s.step === 'assets')!.status).toBe('miss');
    const entries = await tarEntries(dir, result.steps.find((s) => s.step === 'assets')!.layer!.digest);
    expect(entries.map((e) => e.name)).toEqual(['app/', 'app/app.js']);
  });

  it('sets the platform the file asks for', async () => {
    const { result, dir } = await build(`version: 1\nimages:\n  a:\n    platform: linux/arm64/v8\n    steps: [{id: f, copy: f.txt, to: /f}]\n`, { 'f.txt': 'x' });
    const { config } = await imageOf(dir, result, 'a');
    expect([config.os, config.architecture, config.variant]).toEqual(['linux', 'arm64', 'v8']);
    const index = JSON.parse(await readFile(path.join(dir, 'out', 'index.json'), 'utf8')) as { manifests: Array<{ platform: unknown }> };
    expect(index.manifests[0]!.platform).toEqual({ os: 'linux', architecture: 'arm64', variant: 'v8' });
  });

  it('keeps a linked step cached when what is below it changes, and rebuilds the non-linked step above it', async () => {
    const yaml = `version: 1
images:
  a:
    steps:
      - {id: base, copy: one.txt, to: /one.txt}
      - {id: linked, copy: two.txt, to: /two.txt, link: true}
      - {id: top, copy: three.txt, to: /three.txt}
`;
    const tree = { 'one.txt': '1', 'two.txt': '2', 'three.txt': '3' };
    const { dir } = await build(yaml, tree);
    const { result } = await build(yaml, { ...tree, 'one.txt': 'changed' }, { dir });
    expect(result.steps.map((s) => [s.step, s.status, s.reason])).toEqual([
      ['base', 'miss', 'input one.txt changed'],
      ['linked', 'hit', ''],
      ['top', 'miss', 'parent layer changed'],
    ]);
  });

  it('keeps the owner and mode of a directory an earlier step made when a later step copies into it', async () => {
    const yaml = `version: 1
images:
  a:
    steps:
      - {id: app, copy: src/, to: /app/, chown: "1000:1000", chmod: "0750"}
      - {id: conf, copy: app.conf, to: /app/etc/app.conf}
`;
    const { result, dir } = await build(yaml, { src: { dir: { 'main.js': 'x' } }, 'app.conf': 'c' });
    const conf = await tarEntries(dir, result.steps[1]!.layer!.digest);
    expect(conf.map((e) => [e.name, e.uid, e.mode.toString(8)])).toEqual([
      ['app/', 1000, '750'],
      ['app/etc/', 0, '755'],
      ['app/etc/app.conf', 0, '644'],
    ]);
  });

  it('leaves out what .dockerignore excludes, as Docker does, ! exceptions included', async () => {
    const yaml = `version: 1\nimages:\n  a:\n    steps:\n      - {id: all, copy: ., to: /src/}\n`;
    const tree: TreeSpec = {
      '.dockerignore': '# editor and build junk\nnode_modules\n*.log\ndocs\n!docs/README.md\n',
      'main.js': 'x',
      'debug.log': 'noise',
      node_modules: { dir: { dep: { dir: { 'index.js': 'dep' } } } },
      docs: { dir: { 'README.md': 'keep', 'internal.md': 'drop' } },
    };
    const { result, dir } = await build(yaml, tree);
    const names = (await tarEntries(dir, result.steps[0]!.layer!.digest)).map((e) => e.name);
    expect(names).toEqual(['src/', 'src/.dockerignore', 'src/build.yaml', 'src/docs/', 'src/docs/README.md', 'src/main.js']);
  });

  it('refuses to copy a file .dockerignore excludes, saying why', async () => {
    const dir = await tmpDir();
    await expect(
      build(`version: 1\nimages:\n  a:\n    steps:\n      - {id: log, copy: debug.log, to: /debug.log}\n`, { '.dockerignore': '*.log\n', 'debug.log': 'x' }, { dir }),
    ).rejects.toThrow(/copy source `debug.log` is left out of the build context: excluded by .dockerignore/);
  });

  it('copies a directory .dockerignore excludes when a ! pattern brings files back inside it', async () => {
    const yaml = `version: 1\nimages:\n  a:\n    steps:\n      - {id: docs, copy: docs/, to: /docs/}\n      - {id: glob, copy: "d*", to: /g/}\n`;
    const tree: TreeSpec = { '.dockerignore': 'docs\n!docs/README.md\n', docs: { dir: { 'README.md': 'keep', 'internal.md': 'drop' } } };
    const { result, dir } = await build(yaml, tree);
    expect((await tarEntries(dir, result.steps[0]!.layer!.digest)).map((e) => e.name)).toEqual(['docs/', 'docs/README.md']);
    expect((await tarEntries(dir, result.steps[1]!.layer!.digest)).map((e) => e.name)).toEqual(['g/', 'g/README.md']);
  });

  it('never copies what lies inside its own output or cache, by name, by glob or by walking', async () => {
    const dir = await tmpDir();
    const yaml = (src: string): string => `version: 1\nimages:\n  a:\n    steps:\n      - {id: s, copy: "${src}", to: /x/}\n`;
    const spec = (src: string) => parseBuildFile(yaml(src), path.join(dir, 'build.yaml'));
    await makeTree(dir, { 'build.yaml': yaml('.'), 'f.txt': 'x' });
    const opts = { cacheDir: path.join(dir, '.run', 'cache'), outDir: path.join(dir, '.run', 'out'), targets: [], jobs: 2, sourceDateEpoch: 0 };
    expect((await runBuild(spec('.'), opts)).error).toBeUndefined();
    const walked = await runBuild(spec('.'), opts);
    expect(walked.steps[0]!.status).toBe('hit');
    await expect(runBuild(spec('.run/out/index.json'), opts)).rejects.toThrow(
      /is left out of the build context: it is this build’s own output or cache/,
    );
    await expect(runBuild(spec('.run/cache/*'), opts)).rejects.toThrow(/copy source `.run\/cache\/\*` matches nothing/);
  });

  it('reports a step that fails after it was keyed, and keeps building nothing else', async () => {
    const yaml = `version: 1\nimages:\n  a:\n    steps:\n      - {id: one, copy: a.txt, to: /a.txt}\n      - {id: bad, copy: bad/, to: /b/}\n      - {id: three, copy: a.txt, to: /c.txt}\n`;
    const dir = await tmpDir();
    await makeTree(dir, { 'build.yaml': yaml, 'a.txt': 'a', bad: { dir: { '.wh.x': 'a whiteout by name' } } });
    const result = await runBuild(parseBuildFile(yaml, path.join(dir, 'build.yaml')), {
      cacheDir: path.join(dir, 'cache'),
      outDir: path.join(dir, 'out'),
      targets: [],
      jobs: 1,
      sourceDateEpoch: 0,
    });
    expect(result.error?.message).toMatch(/a\/bad: .*cannot be stored in a layer/);
    expect(result.steps.find((s) => s.step === 'bad')!.status).toBe('failed');
    expect(result.images).toEqual([]);
  });

  it('copies out of an image with read-only and unsearchable directories, keeping their real modes', async () => {
    const yaml = `version: 1
images:
  a:
    steps:
      - {id: ro, copy: d/, to: /x/, chmod: "0555"}
      - {id: sub, copy: a.txt, to: /x/sub/a.txt}
      - {id: noexec, copy: d/, to: /y/, chmod: "0644"}
  b:
    steps:
      - {id: take, from: a, copy: /x/, to: /x/}
      - {id: take2, from: a, copy: /y/f.txt, to: /y.txt}
`;
    const { result, dir } = await build(yaml, { d: { dir: { 'f.txt': 'f' } }, 'a.txt': 'a' });
    const take = await tarEntries(dir, result.steps.find((s) => s.step === 'take')!.layer!.digest);
    expect(take.map((e) => [e.name, e.mode.toString(8)])).toEqual([
      ['x/', '755'],
      ['x/f.txt', '555'],
      ['x/sub/', '755'],
      ['x/sub/a.txt', '644'],
    ]);
    const take2 = await tarEntries(dir, result.steps.find((s) => s.step === 'take2')!.layer!.digest);
    expect(take2.map((e) => [e.name, e.mode.toString(8)])).toEqual([['y.txt', '644']]);
  });
});
