/**
 * Several `layergraph run` processes on one cache directory at once — the
 * same build file, different build files that share steps, a `cache prune`
 * in a loop beside them, a run in another pid namespace — all succeed and
 * agree on digests with a build alone in a fresh cache; a reader watching
 * the cache meanwhile never finds half an entry; and what is left is a
 * cache `cache verify` passes, with no temp file, lease or mount behind.
 */
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { busyboxContext, hasStaticBusybox } from './helpers/busybox.js';
import { REPO, spawnCli, type CliResult } from './helpers/cli.js';
import { makeTree, useTmpDirs, type TreeSpec } from './helpers/tmp.js';
import { hasTool } from './helpers/tools.js';

const tmpDir = useTmpDirs();
const ROOT = process.getuid?.() === 0;

interface Report {
  images: Array<{ name: string; manifestDigest: string }>;
  steps: Array<{ image: string; id: string; status: string; key: string; layer: { digest: string } | null }>;
}

/**
 * A context with `parts` directories of many files, and two build files that
 * share steps: `a.yaml` (images `api`, `web`, and `debug` that copies out of
 * `api`) and `b.yaml` (`worker`, and the same `web`). Every image starts with
 * the same linked step.
 */
async function project(parts = 8, files = 80): Promise<string> {
  const dir = await tmpDir();
  const tree: TreeSpec = {};
  for (let p = 0; p < parts; p++) {
    const entries: TreeSpec = {};
    for (let f = 0; f < files; f++) entries[`f${f}.txt`] = `part ${p} file ${f}\n`.repeat(300);
    tree[`part${p}`] = { dir: entries };
  }
  const copy = (id: string, p: number, extra = ''): string => `      - id: ${id}\n        copy: part${p}/\n        to: /data/${id}/\n${extra}`;
  const common = copy('common', 0, '        link: true\n');
  const web = `  web:\n    steps:\n${common}${copy('pages', 1)}${copy('assets', 2)}`;
  tree['a.yaml'] = `version: 1\nimages:\n  api:\n    steps:\n${common}${copy('src', 3)}${copy('conf', 4)}${copy('lib', 5)}\n${web}\n  debug:\n    from: api\n    steps:\n      - id: from-web\n        from: web\n        copy: /data/pages/\n        to: /debug/\n`;
  tree['b.yaml'] = `version: 1\nimages:\n  worker:\n    steps:\n${common}${copy('jobs', 6)}${copy('lib', 5)}${copy('more', 7)}\n${web}`;
  await makeTree(dir, tree);
  return dir;
}

let n = 0;
/** `layergraph run` as its own process; the report as JSON. */
async function run(dir: string, file: string, cache: string, ...extra: string[]): Promise<CliResult & { report: Report }> {
  const id = n++;
  const report = path.join(dir, `report-${id}.json`);
  const res = await spawnCli(['run', path.join(dir, file), '--cache-dir', cache, '--out', path.join(dir, `out-${id}`), '--progress', 'plain', '--report', report, ...extra]);
  expect(res.exitCode, `${file}: ${res.stderr}`).toBe(0);
  return { ...res, report: JSON.parse(await readFile(report, 'utf8')) as Report };
}

function digests(report: Report): string[] {
  return report.images.map((i) => `${i.name} ${i.manifestDigest}`).sort();
}

/**
 * Watches the cache until `stop` says so, as a reader of it would: every
 * record that exists parses and names a blob that exists; every snapshot
 * that exists has the file that vouches for it. Returns what it found wrong.
 */
function watch(cache: string): { stop: () => Promise<string[]> } {
  const problems: string[] = [];
  let running = true;
  const loop = (async () => {
    while (running) {
      for (const name of list(path.join(cache, 'records'))) {
        const text = read(path.join(cache, 'records', name));
        if (text === undefined) continue; // removed meanwhile (prune): gone, not half there
        try {
          const rec = JSON.parse(text) as { layer: { digest: string } | null };
          // A record goes before its blob, and comes after it: a reader never finds one without the other.
          if (rec.layer && !existsSync(path.join(cache, 'blobs', 'sha256', rec.layer.digest.slice(7))) && existsSync(path.join(cache, 'records', name))) {
            problems.push(`record ${name} names a missing blob`);
          }
        } catch {
          problems.push(`record ${name} is not whole: ${JSON.stringify(text.slice(0, 80))}`);
        }
      }
      // A snapshot's tree is renamed into place before the file that vouches for it, and that file goes first when it is discarded.
      for (const name of list(path.join(cache, 'snapshots'))) {
        const m = /^([0-9a-f]{16,128})\.snapshot\.json$/.exec(name);
        if (m && !existsSync(path.join(cache, 'snapshots', m[1]!)) && existsSync(path.join(cache, 'snapshots', name))) {
          problems.push(`snapshot ${m[1]} has a .snapshot.json but no tree`);
        }
      }
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  })();
  return {
    stop: async () => {
      running = false;
      await loop;
      return problems;
    },
  };
}

/** Runs `layergraph cache prune --keep-storage 0` over and over until `stop`; their reports. */
function pruneLoop(cache: string): { stop: () => Promise<Array<{ inUse: number; removed: Record<string, number> }>> } {
  let running = true;
  const reports: Array<{ inUse: number; removed: Record<string, number> }> = [];
  const loop = (async () => {
    while (running) {
      const res = await spawnCli(['cache', 'prune', '--cache-dir', cache, '--keep-storage', '0', '--format', 'json']);
      expect(res.exitCode, res.stderr).toBe(0);
      reports.push(JSON.parse(res.stdout) as (typeof reports)[number]);
    }
  })();
  return {
    stop: async () => {
      running = false;
      await loop;
      return reports;
    },
  };
}

async function expectCleanCache(cache: string): Promise<void> {
  const verify = await spawnCli(['cache', 'verify', '--cache-dir', cache]);
  expect(verify.exitCode, verify.stdout).toBe(0);
  for (const sub of ['tmp', 'ingest', 'leases']) expect(await readdir(path.join(cache, sub)).catch(() => []), sub).toEqual([]);
  expect(mountsUnder(cache)).toEqual([]);
}

describe('concurrent runs on one cache directory', () => {
  it('three runs of the same build file all succeed, agree on digests, and a reader never sees half an entry', async () => {
    const dir = await project();
    const cache = path.join(dir, 'cache');
    const watcher = watch(cache);
    const runs = await Promise.all([run(dir, 'a.yaml', cache), run(dir, 'a.yaml', cache), run(dir, 'a.yaml', cache)]).finally(() => watcher.stop());
    expect(await watcher.stop()).toEqual([]);
    const alone = await run(dir, 'a.yaml', path.join(dir, 'fresh-cache'));
    for (const r of runs) expect(digests(r.report)).toEqual(digests(alone.report));
    await expectCleanCache(cache);
    // Whoever built a step, the cache has one record per key, and a rerun hits every step.
    const keys = new Set(alone.report.steps.map((s) => s.key));
    expect((await readdir(path.join(cache, 'records'))).length).toBe(keys.size);
    const again = await run(dir, 'a.yaml', cache);
    expect(again.report.steps.every((s) => s.status === 'hit')).toBe(true);
  });

  it('runs of different build files that share steps both succeed and agree with each built alone', async () => {
    const dir = await project();
    const cache = path.join(dir, 'cache');
    const watcher = watch(cache);
    const [a, b] = await Promise.all([run(dir, 'a.yaml', cache), run(dir, 'b.yaml', cache)]).finally(() => watcher.stop());
    expect(await watcher.stop()).toEqual([]);
    const aloneA = await run(dir, 'a.yaml', path.join(dir, 'fresh-a'));
    const aloneB = await run(dir, 'b.yaml', path.join(dir, 'fresh-b'));
    expect(digests(a.report)).toEqual(digests(aloneA.report));
    expect(digests(b.report)).toEqual(digests(aloneB.report));
    // `web` and the linked `common` are the same steps in both files: one record each.
    const keys = new Set([...aloneA.report.steps, ...aloneB.report.steps].map((s) => s.key));
    expect((await readdir(path.join(cache, 'records'))).length).toBe(keys.size);
    await expectCleanCache(cache);
  });

  it('`cache prune --keep-storage 0` over and over beside two runs never takes what they use', async () => {
    const dir = await project(10, 120);
    const cache = path.join(dir, 'cache');
    // Warm part of the cache, so the runs hit some steps that a prune could take.
    await run(dir, 'b.yaml', cache);
    const pruner = pruneLoop(cache);
    const watcher = watch(cache);
    const both = Promise.all([run(dir, 'a.yaml', cache, '--jobs', '2'), run(dir, 'b.yaml', cache, '--jobs', '2')]);
    // Whatever happens to the runs, no prune is left running when the test ends.
    const [a, b] = await both.finally(() => Promise.all([pruner.stop().catch(() => undefined), watcher.stop()]));
    expect(await watcher.stop()).toEqual([]);
    const prunes = await pruner.stop();
    expect(prunes.length).toBeGreaterThan(0);
    expect(digests(a.report)).toEqual(digests((await run(dir, 'a.yaml', path.join(dir, 'fresh-a'))).report));
    expect(digests(b.report)).toEqual(digests((await run(dir, 'b.yaml', path.join(dir, 'fresh-b'))).report));
    await expectCleanCache(cache);
    // With no build running, the same prune empties the cache.
    const last = await spawnCli(['cache', 'prune', '--cache-dir', cache, '--keep-storage', '0', '--format', 'json']);
    expect(JSON.parse(last.stdout).inUse).toBe(0);
    expect(await readdir(path.join(cache, 'records'))).toEqual([]);
  });

  it.skipIf(!ROOT || !hasTool('unshare'))('a run in another pid namespace on the same host never sweeps a live run’s temp files', async () => {
    const dir = await project(12, 300);
    await makeTree(path.join(dir, 'small'), { 'f.txt': 'small\n', 'build.yaml': 'version: 1\nimages:\n  s:\n    steps:\n      - id: f\n        copy: f.txt\n        to: /f.txt\n' });
    const cache = path.join(dir, 'cache');
    const bin = path.join(REPO, 'bin', 'layergraph.js');
    const slow = spawn('node', [bin, 'run', path.join(dir, 'a.yaml'), '--cache-dir', cache, '--out', path.join(dir, 'out-slow'), '--jobs', '1', '--progress', 'plain'], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    slow.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const slowDone = new Promise<number | null>((resolve) => slow.on('close', resolve));
    // Once the slow run has its temp directory and is building, a run in a new pid namespace starts (and sweeps).
    while (!/MISS/.test(stderr) && slow.exitCode === null) await new Promise((resolve) => setTimeout(resolve, 10));
    const other = await new Promise<{ code: number | null; err: string }>((resolve) => {
      const child = spawn('unshare', ['--pid', '--fork', 'node', bin, 'run', path.join(dir, 'small', 'build.yaml'), '--cache-dir', cache, '--out', path.join(dir, 'out-small'), '--progress', 'quiet']);
      let err = '';
      child.stderr.on('data', (d: Buffer) => (err += d.toString()));
      child.on('close', (code) => resolve({ code, err }));
    });
    const slowCode = await slowDone;
    expect(other.code, other.err).toBe(0);
    expect(slowCode, stderr).toBe(0);
    await expectCleanCache(cache);
  });

  it.skipIf(!ROOT || !hasStaticBusybox() || !hasTool('runc'))('runs with run steps at once (and a prune beside them) agree on digests, keep whole logs and leave no mount', async () => {
    const dir = await tmpDir();
    const file = await busyboxContext(
      dir,
      `  app:
    from: base
    steps:
      - id: chatty
        run: |
          tag=$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \\n')
          skew=$(head -c 1 /dev/urandom | od -An -tu1 | tr -d ' ')
          i=0
          while [ $i -lt 400 ]; do echo "line $i of $tag $(head -c $(((i + skew) % 37)) /dev/zero | tr '\\0' x)"; i=$((i+1)); [ $((i % 40)) -eq 0 ] && sleep 0.2; done
          mkdir -p /srv && echo made > /srv/made
      - id: more
        run: "echo more >> /srv/made && ln -s made /srv/link"
  tools:
    from: base
    steps:
      - id: from-app
        from: app
        copy: /srv/
        to: /tools/
      - id: list
        run: "ls -l /tools > /tools.txt"
`,
    );
    const rel = path.basename(file);
    const alone = await run(dir, rel, path.join(dir, 'fresh-cache'));

    const cache = path.join(dir, 'cache');
    const watcher = watch(cache);
    const runs = await Promise.all([run(dir, rel, cache), run(dir, rel, cache)]).finally(() => watcher.stop());
    expect(await watcher.stop()).toEqual([]);
    for (const r of runs) expect(digests(r.report)).toEqual(digests(alone.report));
    // Each run of `chatty` wrote its own output whole; the log holds one of them, never a mix.
    const chatty = runs[0]!.report.steps.find((s) => s.id === 'chatty')!;
    const lines = readFileSync(path.join(cache, 'logs', `${chatty.key}.log`), 'utf8').trimEnd().split('\n');
    expect(lines).toHaveLength(400);
    expect(new Set(lines.map((l) => l.split(' ')[3])).size).toBe(1);
    await expectCleanCache(cache);

    // Again, with a prune taking whatever the runs do not hold: layer snapshots they mount included.
    const pruned = path.join(dir, 'cache-pruned');
    const pruner = pruneLoop(pruned);
    const again = await Promise.all([run(dir, rel, pruned), run(dir, rel, pruned)]).finally(() => pruner.stop().catch(() => undefined));
    await pruner.stop();
    for (const r of again) expect(digests(r.report)).toEqual(digests(alone.report));
    await expectCleanCache(pruned);
  });
});

function mountsUnder(dir: string): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4] ?? '')
    .filter((m) => m.startsWith(`${dir}/`));
}

function list(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

function read(file: string): string | undefined {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
}
