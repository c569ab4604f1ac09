/**
 * Ctrl-C in the middle of a build: the process stops starting steps, exits
 * 130 (143 for SIGTERM), leaves no temp files, and the cache it leaves behind
 * is valid — the next run reuses what finished and gives the same digests as
 * a clean build. Interrupts at other named moments (packing, storing, writing
 * the layout) are in test/faults.test.ts; Ctrl-C while a command runs in
 * test/run-steps.integration.test.ts.
 */
import { spawn } from 'node:child_process';
import { readFile, readdir } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { busyboxContext, hasStaticBusybox } from './helpers/busybox.js';
import { REPO, spawnCli } from './helpers/cli.js';
import { cacheProblems, mountsBelow, spawnLayergraph } from './helpers/faults.js';
import { makeTree, useTmpDirs, type TreeSpec } from './helpers/tmp.js';
import { hasTool } from './helpers/tools.js';

const tmpDir = useTmpDirs();

async function bigProject(): Promise<string> {
  const dir = await tmpDir();
  const steps: string[] = [];
  const tree: TreeSpec = {};
  for (let s = 0; s < 12; s++) {
    const files: TreeSpec = {};
    for (let f = 0; f < 150; f++) files[`f${f}.txt`] = `step ${s} file ${f}\n`.repeat(200);
    tree[`part${s}`] = { dir: files };
    steps.push(`      - id: part${s}\n        copy: part${s}/\n        to: /data/part${s}/`);
  }
  tree['build.yaml'] = `version: 1\nimages:\n  big:\n    steps:\n${steps.join('\n')}\n`;
  await makeTree(dir, tree);
  return dir;
}

describe('interrupting a build', () => {
  it('exits 130 on SIGINT, cleans up, and leaves a cache the next run can use', async () => {
    const dir = await bigProject();
    const cache = path.join(dir, 'cache');
    const args = ['run', path.join(dir, 'build.yaml'), '--cache-dir', cache, '--out', path.join(dir, 'out'), '--jobs', '1', '--progress', 'plain'];
    const child = spawn('node', [path.join(REPO, 'bin', 'layergraph.js'), ...args], { cwd: dir });
    let stderr = '';
    let sent = false;
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
      // interrupt once a few steps are done, so some are cached and some are not
      if (!sent && (stderr.match(/MISS big\//g) ?? []).length >= 2) {
        sent = true;
        child.kill('SIGINT');
      }
    });
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
    expect(sent).toBe(true);
    expect(code, stderr).toBe(130);
    expect(stderr).toMatch(/interrupted: the cache is intact/);
    expect(await readdir(path.join(cache, 'tmp'))).toEqual([]);
    expect(await readdir(path.join(cache, 'ingest'))).toEqual([]);

    const resumed = await spawnCli([...args, '--report', path.join(dir, 'resumed.json')]);
    expect(resumed.exitCode, resumed.stderr).toBe(0);
    const report = JSON.parse(await readFile(path.join(dir, 'resumed.json'), 'utf8')) as {
      images: Array<{ manifestDigest: string }>;
      summary: { hits: number };
    };
    expect(report.summary.hits).toBeGreaterThanOrEqual(2);
    expect(report.summary.hits).toBeLessThan(12);

    const clean = await spawnCli(['run', path.join(dir, 'build.yaml'), '--cache-dir', path.join(dir, 'cache-clean'), '--out', path.join(dir, 'out-clean'), '--report', path.join(dir, 'clean.json')]);
    expect(clean.exitCode).toBe(0);
    const cleanReport = JSON.parse(await readFile(path.join(dir, 'clean.json'), 'utf8')) as typeof report;
    expect(report.images[0]!.manifestDigest).toBe(cleanReport.images[0]!.manifestDigest);
  });

  it('exits 143 on SIGTERM, with the same cleanups', async () => {
    const dir = await bigProject();
    const cache = path.join(dir, 'cache');
    const args = ['run', path.join(dir, 'build.yaml'), '--cache-dir', cache, '--out', path.join(dir, 'out'), '--jobs', '1', '--progress', 'plain'];
    let sent = false;
    const res = await spawnLayergraph(args, {
      cwd: dir,
      onStderr: (all, pid) => {
        if (!sent && (all.match(/MISS big\//g) ?? []).length >= 2) {
          sent = true;
          process.kill(pid, 'SIGTERM');
        }
      },
    });
    expect(sent).toBe(true);
    expect(res.exitCode, res.stderr).toBe(143);
    expect(res.stderr).toMatch(/interrupted: the cache is intact/);
    expect(await cacheProblems(cache)).toEqual([]);
  });

  // Root, runc and a static busybox: a command that would run for minutes.
  const RUN_READY = process.getuid?.() === 0 && hasStaticBusybox() && hasTool('runc');
  it.skipIf(!RUN_READY)('SIGTERM while a command runs: the command is stopped, everything unmounted, exit 143', async () => {
    const dir = await tmpDir();
    const file = await busyboxContext(dir, `  slow:\n    from: base\n    steps:\n      - id: sleeper\n        run: echo started; sleep 300\n`);
    const cache = path.join(dir, 'cache');
    let sent = false;
    // A run that waited for the command would take 300 s: the test's timeout catches that.
    const res = await spawnLayergraph(['run', file, '--cache-dir', cache, '--out', path.join(dir, 'out'), '--progress', 'plain'], {
      cwd: dir,
      onStderr: (all, pid) => {
        if (!sent && all.includes('slow/sleeper | started')) {
          sent = true;
          process.kill(pid, 'SIGTERM');
        }
      },
    });
    expect(sent, res.stderr).toBe(true);
    expect(res.exitCode, res.stderr).toBe(143);
    expect(res.stdout).toMatch(/slow\/sleeper\s+SKIPPED/);
    expect(await mountsBelow(dir)).toEqual([]);
    expect(await cacheProblems(cache)).toEqual([]);
  }, 120_000);
});
