/**
 * The CLI as a user meets it: exit codes, error text pinned to file:line:col,
 * reports, GITHUB_STEP_SUMMARY, and a copy-only build by an unprivileged user.
 */
import { execFileSync } from 'node:child_process';
import { chmod, readFile, readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { REPO, runCli } from './helpers/cli.js';
import { makeTree, useTmpDirs } from './helpers/tmp.js';

const tmpDir = useTmpDirs();

const BUILD = `version: 1
images:
  app:
    cmd: [/app/run]
    steps:
      - id: src
        copy: src/
        to: /app/
      - id: conf
        copy: app.conf
        to: /etc/app.conf
`;

async function project(buildYaml = BUILD): Promise<string> {
  const dir = await tmpDir();
  await makeTree(dir, {
    'build.yaml': buildYaml,
    'app.conf': 'debug = false\n',
    src: { dir: { run: { file: '#!/bin/sh\necho hi\n', mode: 0o755 }, 'lib.txt': 'lib\n' } },
  });
  return dir;
}

describe('layergraph --help / --version', () => {
  it('prints usage with every command and the exit codes', async () => {
    const res = await runCli(['--help']);
    expect(res.exitCode).toBe(0);
    expect(res.stdout).toMatch(/layergraph <command> <build.yaml>/);
    expect(res.stdout).toMatch(/run\s+build the images/);
    expect(res.stdout).toMatch(/validate\s+check a build file/);
    expect(res.stdout).toMatch(/2 invalid build file/);
    expect(res.stdout).toMatch(/130 interrupted \(SIGINT\), 143 terminated \(SIGTERM\)/);
  });

  it('prints the flags of one command', async () => {
    const res = await runCli(['run', '--help']);
    expect(res.stdout).toMatch(/--cache-dir <dir>/);
    expect(res.stdout).toMatch(/-t, --target <image>/);
  });

  it('prints the package version', async () => {
    const pkg = JSON.parse(await readFile(path.join(REPO, 'package.json'), 'utf8')) as { version: string };
    expect((await runCli(['--version'])).stdout).toBe(`layergraph ${pkg.version}\n`);
  });

  it('refuses an unknown command or flag with exit 2', async () => {
    const cmd = await runCli(['bild', 'x.yaml']);
    expect(cmd.exitCode).toBe(2);
    expect(cmd.stderr).toMatch(/unknown command `bild`/);
    const flag = await runCli(['run', 'x.yaml', '--jbos', '2']);
    expect(flag.exitCode).toBe(2);
    expect(flag.stderr).toMatch(/--jbos/);
  });
});

describe('layergraph validate', () => {
  it('accepts a good file', async () => {
    const dir = await project();
    const res = await runCli(['validate', path.join(dir, 'build.yaml')]);
    expect(res.exitCode, res.stderr).toBe(0);
    expect(res.stdout).toMatch(/ok \(1 images, 2 steps\)/);
  });

  it('names file:line:col, shows the line, and suggests the key that was meant', async () => {
    const dir = await project(BUILD.replace('to: /etc/app.conf', 'tp: /etc/app.conf'));
    const res = await runCli(['validate', path.join(dir, 'build.yaml')]);
    expect(res.exitCode).toBe(2);
    expect(res.stderr).toMatch(/build\.yaml:11:9: unknown key `tp` in step; did you mean `to`\?/);
    expect(res.stderr).toContain('tp: /etc/app.conf');
    expect(res.stderr).toMatch(/\n\s+\|\s+\^\n/);
  });

  it('reports a copy source that does not exist, with its position', async () => {
    const dir = await project(BUILD.replace('copy: app.conf', 'copy: missing.conf'));
    const res = await runCli(['validate', path.join(dir, 'build.yaml')]);
    expect(res.exitCode).toBe(2);
    expect(res.stderr).toMatch(/build\.yaml:10:15: app\/conf: copy source `missing.conf` does not exist in the build context/);
    expect(res.stderr).toContain('copy: missing.conf');
  });

  it('refuses a copy source that leaves the context through a symlink', async () => {
    const dir = await project(BUILD.replace('copy: app.conf', 'copy: sneaky'));
    const outside = await tmpDir();
    await writeFile(path.join(outside, 'secret'), 'x');
    execFileSync('ln', ['-s', path.join(outside, 'secret'), path.join(dir, 'sneaky')]);
    const res = await runCli(['validate', path.join(dir, 'build.yaml')]);
    expect(res.exitCode).toBe(2);
    expect(res.stderr).toMatch(/build\.yaml:10:15: app\/conf: copy source `sneaky` leaves the build context/);
  });

  it('reports a cycle with its path', async () => {
    const cyclic = BUILD.replace('to: /app/', 'to: /app/\n        needs: [conf]');
    const dir = await project(cyclic);
    const res = await runCli(['validate', path.join(dir, 'build.yaml')]);
    expect(res.exitCode).toBe(2);
    expect(res.stderr).toMatch(/build\.yaml:\d+:\d+: steps form a cycle: app\/(src|conf) → app\/(src|conf) → app\/\1/);
  });
});

describe('layergraph run', () => {
  it('refuses an unknown --target with exit 2, naming the images', async () => {
    const dir = await project();
    const res = await runCli(['run', path.join(dir, 'build.yaml'), '--target', 'nope', '--cache-dir', path.join(dir, 'c')]);
    expect(res.exitCode).toBe(2);
    expect(res.stderr).toMatch(/--target nope: no such image; images: app/);
  });

  it('appends the Markdown summary to GITHUB_STEP_SUMMARY and writes --report files', async () => {
    const dir = await project();
    const summary = path.join(dir, 'summary.md');
    await writeFile(summary, '# earlier step\n');
    const args = ['run', path.join(dir, 'build.yaml'), '--cache-dir', path.join(dir, 'c'), '--out', path.join(dir, 'out')];
    const res = await runCli([...args, '--report', path.join(dir, 'r.md'), '--progress', 'quiet'], { env: { GITHUB_STEP_SUMMARY: summary } });
    expect(res.exitCode, res.stderr).toBe(0);
    const md = await readFile(summary, 'utf8');
    expect(md.startsWith('# earlier step\n')).toBe(true);
    expect(md).toMatch(/\n#### app: 0\/2 cached\n[\s\S]*\| src \| .*MISS \| no earlier build \|/);
    expect(await readFile(path.join(dir, 'r.md'), 'utf8')).toBe(md.slice('# earlier step\n'.length));
  });

  it('prints one plain line per event with --progress plain, and no control characters', async () => {
    const dir = await project();
    const res = await runCli(['run', path.join(dir, 'build.yaml'), '--cache-dir', path.join(dir, 'c'), '--out', path.join(dir, 'o'), '--progress', 'plain']);
    expect(res.stderr).toMatch(/START app\/src/);
    expect(res.stderr).toMatch(/MISS app\/conf \(no earlier build\)/);
    // eslint-disable-next-line no-control-regex
    expect(res.stderr + res.stdout).not.toMatch(/\x1b/);
    expect(res.stdout).toMatch(/0\/2 steps cached, 2 built/);
  });

  it('builds a copy-only image as an unprivileged user, and fails with exit 1 on an unreadable file', async () => {
    if (process.getuid?.() !== 0) return; // needs root to switch to another user; as non-root every test already is this one
    const dir = await project();
    await chmod(dir, 0o777);
    const asNobody = ['--reuid=65534', '--regid=65534', '--clear-groups', '--'];
    const run = (extra: string[]): string[] => [...asNobody, 'node', path.join(REPO, 'bin', 'layergraph.js'), 'run', path.join(dir, 'build.yaml'), '--cache-dir', path.join(dir, 'cache'), '--out', path.join(dir, 'out'), '--progress', 'plain', ...extra];
    const ok = spawnSync('setpriv', run([]), dir);
    expect(ok.status, ok.stderr).toBe(0);
    expect(await readdir(path.join(dir, 'out', 'blobs', 'sha256'))).toHaveLength(4);

    // copy … from: an image whose directories we could not enter or write into without root
    await writeFile(
      path.join(dir, 'build.yaml'),
      `${BUILD}  sealed:\n    steps:\n      - {id: ro, copy: src/, to: /x/, chmod: "0555"}\n      - {id: in, copy: app.conf, to: /x/sub/app.conf}\n      - {id: dark, copy: src/, to: /y/, chmod: "0600"}\n  reader:\n    steps:\n      - {id: take, from: sealed, copy: /x/sub/app.conf, to: /app.conf}\n      - {id: take2, from: sealed, copy: /y/lib.txt, to: /lib.txt}\n`,
    );
    const fromSealed = spawnSync('setpriv', run([]), dir);
    expect(fromSealed.status, fromSealed.stderr).toBe(0);
    await execFileAsync('rm', ['-rf', path.join(dir, 'cache', 'snapshots')], 65534);

    await writeFile(path.join(dir, 'app.conf'), 'debug = true\n');
    await chmod(path.join(dir, 'app.conf'), 0o000);
    const failed = spawnSync('setpriv', run([]), dir);
    expect(failed.status).toBe(1);
    expect(failed.stdout).toMatch(/app\/conf\s+FAILED/);
    expect(failed.stderr).toMatch(/app\/conf: .*EACCES/);

    // A run step, though, needs root: said plainly, after the copies are built.
    await chmod(path.join(dir, 'app.conf'), 0o644);
    await writeFile(path.join(dir, 'build.yaml'), `${BUILD}      - {id: sh, run: "true"}\n`);
    const runStep = spawnSync('setpriv', run([]), dir);
    expect(runStep.status).toBe(1);
    expect(runStep.stderr).toMatch(/run steps need root: they mount overlayfs/);
  });
});

describe('layergraph run: paths and environment', () => {
  it('never takes its own output or cache as inputs, even inside the context', async () => {
    const dir = await project(BUILD.replace('copy: src/', 'copy: .'));
    const reports = await tmpDir();
    const args = ['run', 'build.yaml', '--cache-dir', '.cache', '--report', path.join(reports, 'r.json'), '--progress', 'quiet'];
    expect((await runCli(args, { cwd: dir })).exitCode).toBe(0);
    const again = await runCli(args, { cwd: dir });
    expect(again.exitCode, again.stderr).toBe(0);
    const report = JSON.parse(await readFile(path.join(reports, 'r.json'), 'utf8')) as { summary: { hits: number; total: number } };
    expect(report.summary.hits).toBe(report.summary.total);
  });

  it('refuses several sources into a `to` without a trailing slash before building, at the `to`', async () => {
    const dir = await project(BUILD.replace('copy: app.conf', 'copy: [app.conf, build.yaml]'));
    const res = await runCli(['run', path.join(dir, 'build.yaml'), '--cache-dir', path.join(dir, 'c'), '--out', path.join(dir, 'o')]);
    expect(res.exitCode).toBe(2);
    expect(res.stderr).toMatch(/build\.yaml:11:9: `to` is "\/etc\/app.conf" but 2 sources are copied; end it with "\/"/);
    expect(await readdir(path.join(dir, 'c'))).not.toContain('records');
  });

  it('says which flag names an unusable directory, with exit 2', async () => {
    const dir = await project();
    await writeFile(path.join(dir, 'afile'), '');
    const res = await runCli(['run', path.join(dir, 'build.yaml'), '--cache-dir', path.join(dir, 'c'), '--out', path.join(dir, 'afile', 'out')]);
    expect(res.exitCode).toBe(2);
    expect(res.stderr).toMatch(/--out .*afile\/out: cannot create it/);
  });

  it('warns about a report it cannot write but keeps a good build good', async () => {
    const dir = await project();
    await writeFile(path.join(dir, 'afile'), '');
    const res = await runCli(['run', path.join(dir, 'build.yaml'), '--cache-dir', path.join(dir, 'c'), '--out', path.join(dir, 'o'), '--report', path.join(dir, 'afile', 'r.json')]);
    expect(res.exitCode).toBe(0);
    expect(res.stderr).toMatch(/warning: could not write report/);
  });

  it('refuses a SOURCE_DATE_EPOCH a layer cannot hold', async () => {
    const dir = await project();
    const res = await runCli(['run', path.join(dir, 'build.yaml'), '--cache-dir', path.join(dir, 'c')], { env: { SOURCE_DATE_EPOCH: '3000000000' } });
    expect(res.exitCode).toBe(2);
    expect(res.stderr).toMatch(/SOURCE_DATE_EPOCH is "3000000000"/);
  });

  it('misses when SOURCE_DATE_EPOCH changes, and says so', async () => {
    const dir = await project();
    const args = ['run', path.join(dir, 'build.yaml'), '--cache-dir', path.join(dir, 'c'), '--out', path.join(dir, 'o'), '--report', path.join(dir, 'r.json')];
    await runCli(args);
    await runCli(args, { env: { SOURCE_DATE_EPOCH: '1700000000' } });
    const report = JSON.parse(await readFile(path.join(dir, 'r.json'), 'utf8')) as { steps: Array<{ status: string; reason: string }> };
    expect(report.steps.map((s) => [s.status, s.reason])).toEqual([
      ['miss', 'definition changed: sourceDateEpoch'],
      ['miss', 'definition changed: sourceDateEpoch'],
    ]);
  });
});

/** `rm -rf` as another user: the cache must stay removable by the user who made it. */
async function execFileAsync(cmd: string, args: string[], uid: number): Promise<void> {
  execFileSync('setpriv', [`--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', '--', cmd, ...args], { stdio: 'pipe' });
}

function spawnSync(cmd: string, args: string[], cwd: string): { status: number | null; stdout: string; stderr: string } {
  try {
    const stdout = execFileSync(cmd, args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, HOME: cwd } });
    return { status: 0, stdout, stderr: '' };
  } catch (err) {
    const e = err as { status: number | null; stdout: string; stderr: string };
    return { status: e.status, stdout: e.stdout, stderr: e.stderr };
  }
}
