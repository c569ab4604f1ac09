/**
 * The CLI as it ships: `npm run build` bundles it into dist/cli.cjs
 * (scripts/bundle-cli.mjs), and bin/layergraph.js runs that bundle and keeps
 * V8's compiled code next to it (dist/cli.cjs.cache). Each test runs a copy of
 * the package (bin/, dist/, schemas/, package.json), so what the bundle finds
 * around it is what an install has — without node_modules, unless it says so.
 */
import { spawn } from 'node:child_process';
import { chmod, cp, readFile, readdir, rm, stat, symlink, utimes, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { outputOf, REPO, type CliResult } from './helpers/cli.js';
import { makeTree, useTmpDirs } from './helpers/tmp.js';
import { hasTool } from './helpers/tools.js';

const tmpDir = useTmpDirs();
const ROOT = process.getuid?.() === 0;
const BUNDLE = path.join(REPO, 'dist', 'cli.cjs');

const BUILD = `version: 1
images:
  app:
    steps:
      - {id: src, copy: src/, to: /app/}
      - {id: conf, copy: app.conf, to: /etc/app.conf}
`;

beforeAll(() => {
  if (!existsSync(BUNDLE)) throw new Error('dist/cli.cjs is missing: run `npm run build` (npm test does)');
});

/** A copy of the built package in a directory of its own, without the code cache the tree's bundle may have. */
async function install(opts: { nodeModules?: boolean } = {}): Promise<string> {
  const dir = path.join(await tmpDir('lg-bundle-'), 'layergraph');
  for (const f of ['bin', 'dist', 'schemas', 'package.json']) {
    await cp(path.join(REPO, f), path.join(dir, f), { recursive: true, filter: (src) => !path.basename(src).startsWith('cli.cjs.cache') });
  }
  if (opts.nodeModules) await symlink(path.join(REPO, 'node_modules'), path.join(dir, 'node_modules'));
  return dir;
}

async function project(buildYaml = BUILD): Promise<string> {
  const dir = await tmpDir();
  await makeTree(dir, { 'build.yaml': buildYaml, 'app.conf': 'debug = false\n', src: { dir: { 'main.js': 'console.log(1)\n' } } });
  return dir;
}

/** `node <app>/bin/layergraph.js args`, optionally as another user (through setpriv). */
function layergraph(app: string, args: string[], opts: { cwd?: string; asUser?: number } = {}): Promise<CliResult> {
  const argv = [process.execPath, path.join(app, 'bin', 'layergraph.js'), ...args];
  const [cmd, ...rest] = opts.asUser === undefined ? argv : ['setpriv', `--reuid=${opts.asUser}`, `--regid=${opts.asUser}`, '--clear-groups', '--', ...argv];
  const child = spawn(cmd!, rest, { cwd: opts.cwd ?? app, env: { ...process.env, LAYERGRAPH_FAULT_AT: '' } });
  return outputOf(child).then(({ stdout, stderr, code }) => ({ stdout, stderr, exitCode: code ?? -1 }));
}

async function packageVersion(): Promise<string> {
  return (JSON.parse(await readFile(path.join(REPO, 'package.json'), 'utf8')) as { version: string }).version;
}

describe('the CLI bundle', () => {
  it('is built, and bin/layergraph.js prints the package version from it', async () => {
    const res = await layergraph(REPO, ['--version']);
    expect(res).toEqual({ stdout: `layergraph ${await packageVersion()}\n`, stderr: '', exitCode: 0 });
  });

  it('is strict code, as the ES modules it was made of were', async () => {
    // A script is strict only when the directive opens it.
    expect(await readFile(BUNDLE, 'utf8')).toMatch(/^"use strict";\n/);
  });

  it('builds from a copy of the package that has no node_modules, and finds every step cached the second time', async () => {
    const app = await install();
    const dir = await project();
    const run = async (report: string) => {
      const res = await layergraph(app, ['run', 'build.yaml', '--cache-dir', 'cache', '--out', 'out', '--progress', 'quiet', '--report', report], { cwd: dir });
      expect(res.stderr).toBe('');
      expect(res.exitCode).toBe(0);
      const steps = (JSON.parse(await readFile(path.join(dir, report), 'utf8')) as { steps: Array<{ status: string }> }).steps;
      return steps.map((s) => s.status);
    };
    expect(await run('first.json')).toEqual(['miss', 'miss']);
    expect(await run('second.json')).toEqual(['hit', 'hit']);
    expect(JSON.parse(await readFile(path.join(dir, 'out', 'index.json'), 'utf8'))).toMatchObject({ schemaVersion: 2 });
  });

  it('words build file problems with the precompiled validator inside it (no ajv to load)', async () => {
    const app = await install();
    const dir = await project('version: 1\nimages:\n  app:\n    steps:\n      - {id: conf, copy: app.conf, tp: /etc/app.conf}\n');
    const res = await layergraph(app, ['validate', 'build.yaml'], { cwd: dir });
    expect(res.exitCode).toBe(2);
    expect(res.stderr).toMatchInlineSnapshot(`
      "build.yaml:5:36: unknown key \`tp\` in step; did you mean \`to\`?
      4 |     steps:
      5 |       - {id: conf, copy: app.conf, tp: /etc/app.conf}
        |                                    ^
      1 problem in the build file
      "
    `);
  });

  it('compiles the schema at run time when it changed since the build, as the modules do', async () => {
    const app = await install({ nodeModules: true });
    const schemaFile = path.join(app, 'schemas', 'build.schema.json');
    await writeFile(schemaFile, `${await readFile(schemaFile, 'utf8')}\n`);
    const dir = await project('version: 1\nimages:\n  app:\n    steps:\n      - {id: conf, copy: app.conf, tp: /etc/app.conf}\n');
    const res = await layergraph(app, ['validate', 'build.yaml'], { cwd: dir });
    expect(res.exitCode).toBe(2);
    expect(res.stderr).toContain('build.yaml:5:36: unknown key `tp` in step; did you mean `to`?');
  });

  it("falls back to dist/'s modules when there is no bundle (a dist/ built by plain tsc)", async () => {
    const app = await install({ nodeModules: true });
    await rm(path.join(app, 'dist', 'cli.cjs'));
    const res = await layergraph(app, ['--version']);
    expect(res).toEqual({ stdout: `layergraph ${await packageVersion()}\n`, stderr: '', exitCode: 0 });
    expect(await readdir(path.join(app, 'dist'))).not.toContain('cli.cjs.cache');
  });

  it('is not run when any module of dist/ was compiled after it (tsc -w, --incremental), and is run otherwise', async () => {
    const app = await install({ nodeModules: true });
    const bundle = path.join(app, 'dist', 'cli.cjs');
    await writeFile(bundle, 'throw new Error("the stale bundle ran");\n');
    const minuteAgo = new Date(Date.now() - 60_000);
    await utimes(bundle, minuteAgo, minuteAgo);
    const res = await layergraph(app, ['--version']); // dist/ was copied just now: newer
    expect(res).toEqual({ stdout: `layergraph ${await packageVersion()}\n`, stderr: '', exitCode: 0 });
    // Only one module newer than the bundle is enough; none, and the bundle runs.
    const old = new Date(Date.now() - 120_000);
    for (const name of await readdir(path.join(app, 'dist'), { recursive: true })) {
      if (name.endsWith('.js')) await utimes(path.join(app, 'dist', name), old, old);
    }
    expect((await layergraph(app, ['--version'])).stderr).toMatch(/the stale bundle ran/);
    await utimes(path.join(app, 'dist', 'util', 'owner-tag.js'), new Date(), new Date());
    expect((await layergraph(app, ['--version'])).exitCode).toBe(0);
  });
});

describe("the bundle's code cache", () => {
  const cacheOf = (app: string) => path.join(app, 'dist', 'cli.cjs.cache');
  const inode = async (file: string) => (await stat(file)).ino;

  it('is kept after the first command and then used as it is, not written again', async () => {
    const app = await install();
    const version = `layergraph ${await packageVersion()}\n`;
    expect(existsSync(cacheOf(app))).toBe(false);
    expect((await layergraph(app, ['--version'])).stdout).toBe(version);
    const kept = await inode(cacheOf(app));
    expect((await layergraph(app, ['--version'])).stdout).toBe(version);
    expect(await inode(cacheOf(app))).toBe(kept);
    expect((await readdir(path.join(app, 'dist'))).filter((f) => f.endsWith('.tmp'))).toEqual([]);
  });

  it('made by another command is replaced once by a `run` (which compiles far more), then kept', async () => {
    const app = await install({ nodeModules: true });
    const dir = await project();
    await layergraph(app, ['--version']);
    const byVersion = await stat(cacheOf(app));
    const run = () => layergraph(app, ['run', 'build.yaml', '--out', 'out', '--cache-dir', 'cache', '--progress', 'quiet'], { cwd: dir });
    expect((await run()).exitCode).toBe(0);
    const byRun = await stat(cacheOf(app));
    expect(byRun.ino).not.toBe(byVersion.ino);
    expect(byRun.size).toBeGreaterThan(byVersion.size);
    expect((await run()).exitCode).toBe(0);
    await layergraph(app, ['--version']);
    expect((await stat(cacheOf(app))).ino).toBe(byRun.ino);
  });

  it('is replaced when it is damaged or was kept for another bundle', async () => {
    const app = await install();
    const version = `layergraph ${await packageVersion()}\n`;
    await layergraph(app, ['--version']);

    const data = await readFile(cacheOf(app));
    const mid = data.length >> 1;
    data[mid] = data[mid]! ^ 0xff;
    await writeFile(cacheOf(app), data);
    const damaged = await inode(cacheOf(app));
    expect(await layergraph(app, ['--version'])).toEqual({ stdout: version, stderr: '', exitCode: 0 });
    const replaced = await inode(cacheOf(app));
    expect(replaced).not.toBe(damaged);

    // A rebuilt bundle of the same length: V8 alone would take the old code for it.
    const bundle = path.join(app, 'dist', 'cli.cjs');
    const source = await readFile(bundle, 'utf8');
    const edited = source.replace('layergraph ${version()}', 'layergraph:${version()}');
    expect(edited.length).toBe(source.length);
    expect(edited).not.toBe(source);
    await writeFile(bundle, edited);
    expect((await layergraph(app, ['--version'])).stdout).toBe(version.replace(' ', ':'));
    expect(await inode(cacheOf(app))).not.toBe(replaced);
  });

  it('is not written into a read-only install, which still runs', async () => {
    const app = await install();
    const before = await readdir(path.join(app, 'dist'));
    let asUser: number | undefined;
    if (ROOT) {
      // root writes anywhere: run as nobody, over a tree it can read but not write.
      if (!hasTool('setpriv')) return;
      asUser = 65534;
      await chmod(path.dirname(app), 0o755);
      await chmod(app, 0o755);
    } else {
      await chmod(path.join(app, 'dist'), 0o555);
    }
    const res = await layergraph(app, ['--version'], { asUser });
    expect(res).toEqual({ stdout: `layergraph ${await packageVersion()}\n`, stderr: '', exitCode: 0 });
    expect(await readdir(path.join(app, 'dist'))).toEqual(before);
  });
});
