/**
 * A damaged cache is detected, said once, and rebuilt around — never used.
 *
 * Each test builds, damages one thing the way a disk, a crash of another
 * tool or a careless `rm` would (a blob whose bytes changed, a truncated
 * record, a missing blob, a changed or missing snapshot, a garbled
 * stat-cache.json, a truncated blob in the output layout), builds again, and
 * checks from the outside: exactly one warning on the progress stream and in
 * the JSON report, the images' digests those of a clean build, and a cache
 * that is whole again.
 */
import { existsSync } from 'node:fs';
import { appendFile, mkdtemp, readdir, readFile, rm, stat, truncate, unlink, utimes, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { busyboxContext, hasStaticBusybox } from './helpers/busybox.js';
import { runCli } from './helpers/cli.js';
import { cacheProblems, layoutDigests, layoutProblems } from './helpers/faults.js';
import { makeTree } from './helpers/tmp.js';
import { hasTool } from './helpers/tools.js';

interface Report {
  images: Array<{ name: string; manifestDigest: string }>;
  steps: Array<{ image: string; id: string; status: string; reason: string; key: string; layer: { digest: string; diffId: string; size: number } | null }>;
  warnings?: string[];
  summary: { filesRead?: number };
}

interface Built {
  exitCode: number;
  stderr: string;
  report: Report;
  /** The `warning:` lines of the progress stream. */
  warnings: string[];
}

/** A context, a clean build's digests, and a cache + layout built once per test. */
class Fixture {
  dir = '';
  file = '';
  reference: Record<string, string> = {};

  get cache(): string {
    return path.join(this.dir, 'cache');
  }

  get out(): string {
    return path.join(this.dir, 'out');
  }

  async open(make: (dir: string) => Promise<string>): Promise<void> {
    this.dir = await mkdtemp(path.join(os.tmpdir(), 'lg-corrupt-'));
    this.file = await make(this.dir);
    const clean = await this.build(path.join(this.dir, 'clean-cache'), path.join(this.dir, 'clean-out'));
    expect(clean.exitCode, clean.stderr).toBe(0);
    this.reference = await layoutDigests(path.join(this.dir, 'clean-out'));
  }

  /** A fresh cache and layout, built once (no warnings: nothing is damaged yet). */
  async fresh(): Promise<Built> {
    await rm(this.cache, { recursive: true, force: true });
    await rm(this.out, { recursive: true, force: true });
    const first = await this.build();
    expect(first.exitCode, first.stderr).toBe(0);
    expect(first.warnings).toEqual([]);
    return first;
  }

  async build(cache = this.cache, out = this.out): Promise<Built> {
    const reportFile = path.join(this.dir, 'report.json');
    await rm(reportFile, { force: true });
    const res = await runCli(['run', this.file, '--cache-dir', cache, '--out', out, '--report', reportFile, '--progress', 'plain'], { cwd: this.dir });
    expect(res.stderr).not.toMatch(/unexpected error/);
    const report = JSON.parse(await readFile(reportFile, 'utf8')) as Report;
    return { exitCode: res.exitCode, stderr: res.stderr, report, warnings: res.stderr.split('\n').filter((l) => l.startsWith('warning:')) };
  }

  /** After damage: one warning matching `pattern` on the progress stream and in the report, clean digests, a whole cache, and no warning on the run after. */
  async expectRebuilt(pattern: RegExp): Promise<Built> {
    const res = await this.build();
    expect(res.exitCode, res.stderr).toBe(0);
    expect(res.warnings, res.stderr).toHaveLength(1);
    expect(res.warnings[0]).toMatch(pattern);
    expect(res.report.warnings).toEqual([res.warnings[0]!.slice('warning: '.length)]);
    expect(await layoutDigests(this.out)).toEqual(this.reference);
    expect(Object.fromEntries(res.report.images.map((i) => [i.name, i.manifestDigest]))).toEqual(this.reference);
    expect(await cacheProblems(this.cache)).toEqual([]);
    expect(await layoutProblems(this.out)).toEqual([]);
    const again = await this.build();
    expect(again.warnings, again.stderr).toEqual([]);
    expect(again.report.steps.filter((s) => s.status !== 'hit')).toEqual([]);
    return res;
  }

  async close(): Promise<void> {
    if (this.dir) await rm(this.dir, { recursive: true, force: true });
  }

  blob(digest: string): string {
    return path.join(this.cache, 'blobs', 'sha256', digest.slice('sha256:'.length));
  }

  record(key: string): string {
    return path.join(this.cache, 'records', `${key}.json`);
  }
}

function stepOf(built: Built, image: string, id: string): Report['steps'][number] {
  return built.report.steps.find((s) => s.image === image && s.id === id)!;
}

async function copyContext(dir: string): Promise<string> {
  const src: Record<string, string> = {};
  for (let i = 0; i < 6; i++) src[`f${i}.txt`] = `file ${i}\n`.repeat(2000);
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

describe('a damaged cache (copy steps)', () => {
  const fx = new Fixture();
  beforeAll(() => fx.open(copyContext));
  afterAll(() => fx.close());
  let first: Built;
  beforeEach(async () => {
    first = await fx.fresh();
  });

  it('a blob whose bytes no longer match its digest is rebuilt, not used', async () => {
    const layer = stepOf(first, 'app', 'src').layer!;
    const blob = await readFile(fx.blob(layer.digest));
    const mid = blob.length >> 1;
    blob[mid] = blob[mid]! ^ 0xff; // same size, other bytes
    await writeFile(fx.blob(layer.digest), blob);
    const res = await fx.expectRebuilt(/^warning: cache: layer sha256:[0-9a-f]{64} failed its digest check; not used/);
    expect(stepOf(res, 'app', 'src')).toMatchObject({ status: 'miss', reason: 'cached layer failed its digest check' });
  });

  it('a blob changed after a build vouched for it by its stat (same size, mtime put back) is still caught', async () => {
    const layer = stepOf(first, 'app', 'src').layer!;
    // A hit hashes the blob once and keeps its stat; from then on the stat stands for the hash.
    expect((await fx.build()).exitCode).toBe(0);
    const kept = JSON.parse(await readFile(path.join(fx.cache, 'stat-cache-blobs.json'), 'utf8')) as { entries: Record<string, unknown[]> };
    const before = await stat(fx.blob(layer.digest));
    // Marking the blob used at the end of the build changed its times; the entry followed (no hashing next run).
    expect(kept.entries[fx.blob(layer.digest)]).toEqual([before.size, before.mtimeMs, before.ctimeMs, before.ino, before.dev, layer.digest]);
    const blob = await readFile(fx.blob(layer.digest));
    const mid = blob.length >> 1;
    blob[mid] = blob[mid]! ^ 0xff;
    await writeFile(fx.blob(layer.digest), blob);
    await utimes(fx.blob(layer.digest), before.atime, before.mtime);
    const res = await fx.expectRebuilt(/^warning: cache: layer sha256:[0-9a-f]{64} failed its digest check; not used/);
    expect(stepOf(res, 'app', 'src')).toMatchObject({ status: 'miss', reason: 'cached layer failed its digest check' });
  });

  it('a truncated step record is rebuilt, not used', async () => {
    const { key } = stepOf(first, 'app', 'conf');
    const text = await readFile(fx.record(key), 'utf8');
    await writeFile(fx.record(key), text.slice(0, text.length >> 1));
    const res = await fx.expectRebuilt(/^warning: cache: .*records\/[0-9a-f]+\.json is damaged \(not valid JSON\); not used$/);
    expect(stepOf(res, 'app', 'conf').status).toBe('miss');
  });

  it('a record that parses but is not a record for its key is rebuilt, not used', async () => {
    const { key } = stepOf(first, 'app', 'conf');
    await writeFile(fx.record(key), JSON.stringify({ recordVersion: 1, key: 'not-this-key', layer: null }));
    const res = await fx.expectRebuilt(/is damaged \(not a step record for this key\); not used$/);
    expect(stepOf(res, 'app', 'conf').status).toBe('miss');
  });

  it('a record whose layer size is wrong is rebuilt (its manifest would lie)', async () => {
    const { key } = stepOf(first, 'app', 'conf');
    const record = JSON.parse(await readFile(fx.record(key), 'utf8')) as { layer: { size: number } };
    record.layer.size += 1;
    await writeFile(fx.record(key), JSON.stringify(record));
    await fx.expectRebuilt(/^warning: cache: layer sha256:[0-9a-f]{64} is \d+ bytes, but its record says \d+; not used/);
  });

  it('a record pointing at a missing blob is rebuilt', async () => {
    const layer = stepOf(first, 'app', 'src').layer!;
    await unlink(fx.blob(layer.digest));
    const res = await fx.expectRebuilt(/^warning: cache: layer sha256:[0-9a-f]{64} is missing; not used/);
    expect(stepOf(res, 'app', 'src')).toMatchObject({ status: 'miss', reason: 'cached layer is missing' });
  });

  it('a garbled stat-cache.json is ignored: every input is read again', async () => {
    await writeFile(path.join(fx.cache, 'stat-cache.json'), '{"version":1,"entries":{"/x":[1,2');
    const res = await fx.expectRebuilt(/^warning: cache: .*stat-cache\.json is not valid JSON; every input file is read again$/);
    expect(res.report.summary.filesRead).toBeGreaterThan(0);
    expect(res.report.steps.every((s) => s.status === 'hit')).toBe(true);
  });

  it('a stat-cache.json of the wrong shape is ignored, and said', async () => {
    await writeFile(path.join(fx.cache, 'stat-cache.json'), JSON.stringify({ version: 1, entries: [] }));
    await fx.expectRebuilt(/stat-cache\.json is not a stat cache; every input file is read again$/);
  });

  it('a changed file in an image snapshot (what `copy … from:` reads) is caught, and the snapshot unpacked again', async () => {
    const snapshot = await onlySnapshot(fx.cache);
    await appendFile(path.join(snapshot, 'app', 'src', 'f3.txt'), 'tampered\n');
    // Used, the change would give `slim/picked` another key and another layer.
    const res = await fx.expectRebuilt(/^warning: cache: image snapshot .* it was changed since it was unpacked; unpacking it again$/);
    expect(stepOf(res, 'slim', 'picked').status).toBe('hit');
  });

  it('an image snapshot missing the file a step copies, or with a damaged .snapshot.json, is unpacked again', async () => {
    const snapshot = await onlySnapshot(fx.cache);
    await unlink(path.join(snapshot, 'app', 'src', 'f3.txt'));
    const res = await fx.expectRebuilt(/it was changed since it was unpacked/);
    expect(stepOf(res, 'slim', 'picked').status).toBe('hit');
    await writeFile(`${await onlySnapshot(fx.cache)}.snapshot.json`, '[[');
    await fx.expectRebuilt(/its \.snapshot\.json is damaged; unpacking it again$/);
  });

  it("an older layergraph's image snapshot (a .modes.json, no .snapshot.json) is unpacked again, quietly", async () => {
    const snapshot = await onlySnapshot(fx.cache);
    await unlink(`${snapshot}.snapshot.json`);
    await writeFile(`${snapshot}.modes.json`, '[]'); // the old format, which an older layergraph still reads
    const res = await fx.build();
    expect(res.exitCode, res.stderr).toBe(0);
    expect(res.warnings).toEqual([]);
    expect(await layoutDigests(fx.out)).toEqual(fx.reference);
    expect(existsSync(`${snapshot}.snapshot.json`)).toBe(true);
    expect(await readFile(`${snapshot}.modes.json`, 'utf8')).toBe('[]');
  });

  it('a truncated blob in the output layout is written again', async () => {
    const layer = stepOf(first, 'app', 'src').layer!;
    await truncate(path.join(fx.out, 'blobs', 'sha256', layer.digest.slice('sha256:'.length)), 100);
    await fx.expectRebuilt(/^warning: output layout blob .* is 100 bytes, not \d+; written again$/);
  });

  it('one warning for a damaged blob that two steps share', async () => {
    // Two steps with different keys (different parents) whose layers are the same bytes: one blob.
    const twins = new Fixture();
    await twins.open(async (dir) => {
      await makeTree(dir, {
        'app.conf': 'port = 8080\n',
        'build.yaml': `version: 1\nimages:\n  a:\n    steps:\n      - id: conf\n        copy: app.conf\n        to: /etc/app.conf\n  b:\n    from: a\n    steps:\n      - id: conf\n        copy: app.conf\n        to: /etc/app.conf\n`,
      });
      return path.join(dir, 'build.yaml');
    });
    try {
      const built = await twins.fresh();
      const [a, b] = [stepOf(built, 'a', 'conf'), stepOf(built, 'b', 'conf')];
      expect(a.key).not.toBe(b.key);
      expect(a.layer!.digest).toBe(b.layer!.digest);
      await writeFile(twins.blob(a.layer!.digest), 'rotten');
      const res = await twins.expectRebuilt(/failed its digest check/);
      expect(res.report.steps.map((s) => s.status)).toEqual(['miss', 'miss']);
    } finally {
      await twins.close();
    }
  });
});

/** The one image snapshot (`snapshots/<key>`) a build of copyContext leaves. */
async function onlySnapshot(cache: string): Promise<string> {
  const dirs = (await readdir(path.join(cache, 'snapshots'), { withFileTypes: true })).filter((e) => e.isDirectory() && e.name !== 'layers');
  expect(dirs).toHaveLength(1);
  return path.join(cache, 'snapshots', dirs[0]!.name);
}

// Layer snapshots (the lowers of overlay mounts) exist only where run steps run: root, runc, a static busybox.
const RUN_READY = process.getuid?.() === 0 && hasStaticBusybox() && hasTool('runc');

describe.skipIf(!RUN_READY)('a damaged layer snapshot (run steps, root)', () => {
  const fx = new Fixture();
  beforeAll(
    () =>
      fx.open(async (dir) => {
        const src: Record<string, string> = {};
        for (let i = 0; i < 4; i++) src[`f${i}.txt`] = `input ${i}\n`.repeat(500);
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
        run: "cat /app/src/* | md5sum > /app/sum"
`,
        );
      }),
    120_000,
  );
  afterAll(() => fx.close());
  let first: Built;
  beforeEach(async () => {
    first = await fx.fresh();
  });

  /** The snapshot of the `src` layer; the `sum` step's record is removed, so the next build mounts it again. */
  async function srcSnapshot(): Promise<string> {
    await unlink(fx.record(stepOf(first, 'app', 'sum').key));
    return path.join(fx.cache, 'snapshots', 'layers', stepOf(first, 'app', 'src').layer!.diffId.slice('sha256:'.length));
  }

  it('a changed file in a lower is caught, and the layer unpacked again before the next mount', async () => {
    const snapshot = await srcSnapshot();
    await appendFile(path.join(snapshot, 'app', 'src', 'f1.txt'), 'tampered\n');
    // Mounted as it is, the change would end up in /app/sum, and in the digest.
    const res = await fx.expectRebuilt(/^warning: cache: layer snapshot .* was changed since it was unpacked; unpacking it again$/);
    expect(stepOf(res, 'app', 'sum').status).toBe('miss');
  });

  it("a lower without its stamp (an older layergraph's) is unpacked again, quietly", async () => {
    const snapshot = await srcSnapshot();
    await unlink(`${snapshot}.stamp`);
    const res = await fx.build();
    expect(res.exitCode, res.stderr).toBe(0);
    expect(res.warnings).toEqual([]);
    expect(await layoutDigests(fx.out)).toEqual(fx.reference);
    expect(existsSync(`${snapshot}.stamp`)).toBe(true);
    expect(await cacheProblems(fx.cache)).toEqual([]);
  });

  it('a missing lower is unpacked again from its blob, quietly', async () => {
    const snapshot = await srcSnapshot();
    await rm(snapshot, { recursive: true });
    const res = await fx.build();
    expect(res.exitCode, res.stderr).toBe(0);
    expect(res.warnings).toEqual([]);
    expect(await layoutDigests(fx.out)).toEqual(fx.reference);
    expect(await cacheProblems(fx.cache)).toEqual([]);
  });
});
