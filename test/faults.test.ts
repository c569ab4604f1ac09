/**
 * A build killed at any moment leaves a cache and a layout the next run can
 * use: `layergraph run` (a real child process) is killed — SIGKILL, or
 * interrupted with SIGINT/SIGTERM — at a named moment (LAYERGRAPH_FAULT_AT,
 * src/util/fault-point.ts: "the n-th time you reach point P"), then run again.
 *
 * Right after the kill, nothing under a real name is half written (every
 * blob hashes to its name, every record parses and points at a whole blob,
 * index.json is old or new). After the next run: it succeeded, its digests
 * are those of an uninterrupted build, and nothing is left — no mount, no
 * temp file, no lock naming the dead process.
 *
 * The normal suite runs a fixed sample of moments; `npm run test:faults`
 * (FAULTS=all) runs every point, each at n = 1, 2, 3, 5, 8… until the build
 * no longer reaches it. Moments of `run` steps (mounting, a command running,
 * unpacking a lower) need root, runc and a static busybox.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { busyboxContext, hasStaticBusybox } from './helpers/busybox.js';
import { cacheProblems, layoutDigests, layoutProblems, mountsBelow, spawnLayergraph } from './helpers/faults.js';
import { makeTree } from './helpers/tmp.js';
import { hasTool } from './helpers/tools.js';

const FULL = process.env.FAULTS === 'all';
const ROOT = process.getuid?.() === 0;

/** Every fault point of src/util/fault-point.ts. */
const POINTS = ['plan', 'step-start', 'step-output', 'step-end', 'note', 'warning', 'hash', 'mount', 'snapshot', 'pack', 'store', 'write', 'layout'];

interface Project {
  dir: string;
  file: string;
  /** `ref → manifest digest` of an uninterrupted build. */
  reference: Record<string, string>;
}

/** Copy steps only: hashing, packing, storing, a `copy … from:` snapshot, the layout. Runs without root. */
async function copyProject(dir: string): Promise<string> {
  const src: Record<string, string> = {};
  for (let i = 0; i < 12; i++) src[`f${i}.txt`] = `file ${i}\n`.repeat(4000 + i * 500);
  await makeTree(dir, {
    src: { dir: src },
    'app.conf': 'port = 8080\n',
    'build.yaml': `version: 1
images:
  app:
    steps:
      - id: src
        copy: src/
        to: /app/src/
      - id: conf
        copy: app.conf
        to: /etc/app.conf
  tools:
    from: app
    steps:
      - id: notes
        copy: app.conf
        to: /etc/tools.conf
  slim:
    steps:
      - id: picked
        copy: /app/src/f3.txt
        from: app
        to: /f3.txt
`,
  });
  return path.join(dir, 'build.yaml');
}

/** Copy and `run` steps on busybox: mounting, running a command, unpacking lowers, a `copy … from:` of a run's output. */
async function runProject(dir: string): Promise<string> {
  const src: Record<string, string> = {};
  for (let i = 0; i < 8; i++) src[`f${i}.txt`] = `input ${i}\n`.repeat(3000);
  await makeTree(dir, { src: { dir: src } });
  return busyboxContext(
    dir,
    `  app:
    from: base
    steps:
      - id: src
        copy: src/
        to: /app/src/
      - id: sum
        run: "echo summing && cat /app/src/* | md5sum > /app/sum && mkdir -p /app/out && cp /app/src/f1.txt /app/out/ && echo done"
      - id: tidy
        run: "rm /app/src/f0.txt && echo tidied"
  report:
    steps:
      - id: sum
        copy: /app/sum
        from: app
        to: /sum
`,
  );
}

/** One scenario: a fresh cache and layout, a build killed at `moment`, then a build to completion. */
async function killAndResume(project: Project, moment: string): Promise<{ reached: boolean }> {
  const work = await mkdtemp(path.join(project.dir, 'scenario-'));
  try {
    const cache = path.join(work, 'cache');
    const out = path.join(work, 'out');
    const args = ['run', project.file, '--cache-dir', cache, '--out', out, '--progress', 'plain'];
    const signal = moment.split(':')[2] ?? 'SIGKILL';

    const killed = await spawnLayergraph(args, { cwd: project.dir, env: { LAYERGRAPH_FAULT_AT: moment } });
    expect(killed.stderr, `${moment}: ${killed.stderr}`).not.toMatch(/unexpected error/);
    const reached = signal === 'SIGKILL' ? killed.signal === 'SIGKILL' : killed.exitCode !== 0 || killed.stderr.includes('interrupted');
    if (signal === 'SIGKILL') {
      // Not reached: the build ran to its end.
      if (!reached) expect(killed.exitCode, killed.stderr).toBe(0);
    } else {
      // An interrupt is a clean stop with the signal's own code (or, when the build was done anyway, success).
      expect([0, signal === 'SIGINT' ? 130 : 143], `${moment}: ${killed.stderr}`).toContain(killed.exitCode);
      expect(await mountsBelow(work), moment).toEqual([]);
      expect(await cacheProblems(cache), moment).toEqual([]);
    }
    // Whatever the moment, nothing under a real name is half written.
    expect(await cacheProblems(cache, [], { leftovers: true }), moment).toEqual([]);
    const hadIndex = await readFile(path.join(out, 'index.json')).then(() => true, () => false);
    if (hadIndex) expect(await layoutProblems(out, { leftovers: true }), moment).toEqual([]);

    const report = path.join(work, 'report.json');
    const resumed = await spawnLayergraph([...args, '--report', report], { cwd: project.dir });
    expect(resumed.exitCode, `after ${moment}: ${resumed.stderr}`).toBe(0);
    expect(resumed.stderr, moment).not.toMatch(/warning:/);
    expect(await layoutDigests(out), moment).toEqual(project.reference);
    const images = (JSON.parse(await readFile(report, 'utf8')) as { images: Array<{ name: string; manifestDigest: string }> }).images;
    expect(Object.fromEntries(images.map((i) => [i.name, i.manifestDigest])), moment).toEqual(pick(project.reference, images.map((i) => i.name)));
    expect(await mountsBelow(work), moment).toEqual([]);
    expect(await cacheProblems(cache, [killed.pid]), moment).toEqual([]);
    expect(await layoutProblems(out), moment).toEqual([]);
    return { reached };
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

function pick(all: Record<string, string>, names: string[]): Record<string, string> {
  return Object.fromEntries(names.map((n) => [n, all[n]!]));
}

/** n = 1, 2, 3, 5, 8, 13… : early and late moments of a point without trying every one. */
function* counts(): Generator<number> {
  let [a, b] = [1, 2];
  yield 1;
  while (a < 400) {
    yield b;
    [a, b] = [b, a + b];
  }
}

async function openProject(make: (dir: string) => Promise<string>): Promise<Project> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'lg-faults-'));
  const file = await make(dir);
  const clean = await spawnLayergraph(['run', file, '--cache-dir', path.join(dir, 'clean-cache'), '--out', path.join(dir, 'clean-out'), '--progress', 'quiet'], { cwd: dir });
  if (clean.exitCode !== 0) throw new Error(`the uninterrupted build failed: ${clean.stderr}`);
  const reference = await layoutDigests(path.join(dir, 'clean-out'));
  await rm(path.join(dir, 'clean-cache'), { recursive: true, force: true });
  return { dir, file, reference };
}

/** `series`: moments for several kills in a row on one cache, each reached although the runs before cached some steps. */
function faultSuite(name: string, make: (dir: string) => Promise<string>, sample: string[], mustReach: string[], series: string[]): void {
  describe(name, () => {
    let project: Project;
    beforeAll(async () => {
      project = await openProject(make);
    }, 120_000);
    afterAll(async () => {
      if (project) await rm(project.dir, { recursive: true, force: true });
    });

    if (!FULL) {
      for (const moment of sample) {
        it(`${moment}: the next run succeeds with the same digests and nothing left behind`, async () => {
          const { reached } = await killAndResume(project, moment);
          // A sample moment that is never reached would test nothing.
          expect(reached, `${moment} was not reached`).toBe(true);
        }, 120_000);
      }
      return;
    }
    for (const point of POINTS) {
      it(`${point}, at n = 1, 2, 3, 5, 8… until the build no longer reaches it`, async () => {
        const killedAt: number[] = [];
        for (const n of counts()) {
          const { reached } = await killAndResume(project, `${point}:${n}`);
          if (!reached) break;
          killedAt.push(n);
          // Interrupts too, at the first two moments (a clean stop, not a crash).
          if (n <= 2) await killAndResume(project, `${point}:${n}:${n === 1 ? 'SIGINT' : 'SIGTERM'}`);
        }
        console.log(`${name}: ${point}: killed at n = ${killedAt.join(', ') || '(never reached)'}`);
        if (mustReach.includes(point)) expect(killedAt.length, `${point} was never reached`).toBeGreaterThan(0);
      }, 1_800_000);
    }
    it('several kills in a row on one cache', async () => {
      const work = await mkdtemp(path.join(project.dir, 'series-'));
      const args = ['run', project.file, '--cache-dir', path.join(work, 'cache'), '--out', path.join(work, 'out'), '--progress', 'quiet'];
      const pids: number[] = [];
      for (const moment of series) {
        const killed = await spawnLayergraph(args, { cwd: project.dir, env: { LAYERGRAPH_FAULT_AT: moment } });
        // Each kill happened: a moment the build did not reach would leave this a plain rebuild.
        expect(killed.signal, `${moment} was not reached: ${killed.stderr}`).toBe('SIGKILL');
        pids.push(killed.pid);
      }
      const last = await spawnLayergraph(args, { cwd: project.dir });
      expect(last.exitCode, last.stderr).toBe(0);
      expect(await layoutDigests(path.join(work, 'out'))).toEqual(project.reference);
      expect(await mountsBelow(work)).toEqual([]);
      expect(await cacheProblems(path.join(work, 'cache'), pids)).toEqual([]);
      await rm(work, { recursive: true, force: true });
    }, 600_000);
  });
}

faultSuite(
  'killed during a build of copy steps',
  copyProject,
  ['hash:3', 'pack:2', 'store:1', 'snapshot:1', 'write:3', 'layout:2', 'step-end:2', 'pack:1:SIGINT', 'layout:1:SIGTERM'],
  ['plan', 'step-start', 'step-end', 'hash', 'snapshot', 'pack', 'store', 'write', 'layout'],
  ['hash:1', 'pack:1', 'store:1', 'snapshot:1', 'write:1', 'layout:1'],
);

// Tools are only asked about where the tests can run at all (hasTool fails under CI=true).
if (ROOT && hasStaticBusybox() && hasTool('runc')) {
  faultSuite(
    'killed during a build with run steps (root)',
    runProject,
    ['mount:2', 'step-output:1', 'snapshot:1', 'store:3', 'step-output:2:SIGTERM'],
    ['plan', 'step-start', 'step-output', 'step-end', 'note', 'hash', 'mount', 'snapshot', 'pack', 'store', 'write', 'layout'],
    ['hash:1', 'mount:1', 'step-output:1', 'snapshot:1', 'store:1', 'write:1', 'layout:1'],
  );
} else {
  describe.skip('killed during a build with run steps (needs root, runc and a static busybox)', () => {
    it('skipped', () => undefined);
  });
}
