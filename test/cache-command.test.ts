/**
 * `layergraph cache du | prune | verify` on caches real builds made, and the
 * leases that keep what a running build uses out of prune's reach.
 *
 * The oracle is the cache itself and the builds' own reports: what `du`
 * counts is checked against the files and the JSON report, what prune keeps
 * against the keys and digests of the steps that were used, and every prune
 * must leave a cache whose records all have their blobs and that the next
 * build reuses — giving the same digests as the build before it.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rm, stat, truncate, utimes, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { ContentStore } from '../src/cache/content-store.js';
import { acquireMaintenanceLock } from '../src/cache/maintenance-lock.js';
import { hold, openLease, readLeases, usePath } from '../src/cache/leases.js';
import { pruneCache } from '../src/cache/prune.js';
import { formatBytes, parseAge, parseSize } from '../src/cli/units.js';
import { thisHost } from '../src/util/owner-tag.js';
import { runCli } from './helpers/cli.js';
import { makeTree, useTmpDirs } from './helpers/tmp.js';

const tmpDir = useTmpDirs();
const DAY = 24 * 60 * 60 * 1000;

const children: ChildProcess[] = [];
afterEach(() => {
  for (const c of children.splice(0)) c.kill('SIGKILL');
});

/** A process that stays alive until killed: a live owner for leases and locks. */
function liveProcess(): ChildProcess & { pid: number } {
  const child = spawn('sleep', ['300'], { stdio: 'ignore' });
  children.push(child);
  return child as ChildProcess & { pid: number };
}

/** A pid that is no longer alive. */
function deadPid(): number {
  return spawnSync('true').pid!;
}

interface Report {
  images: Array<{ name: string; manifestDigest: string }>;
  steps: Array<{ image: string; id: string; status: string; key: string; layer: { digest: string; diffId: string } | null }>;
}

/**
 * Three images: `app`, `tools` (copies out of app: an image snapshot) and
 * `other`. `app/same` and `other/same` write the same layer under different
 * keys (their parents differ): one blob named by two records.
 */
async function project(): Promise<string> {
  const dir = await tmpDir();
  await makeTree(dir, {
    app: { dir: { 'a.txt': 'a\n'.repeat(5000), b: { dir: { 'one.txt': 'one\n', 'two.txt': 'two\n'.repeat(3000) } }, 'c.txt': 'c\n' } },
    other: { dir: { 'x.txt': 'x\n'.repeat(4000), y: { dir: { 'z.txt': 'z\n' } } } },
    'shared.txt': 'the same layer in two images\n',
    'build.yaml': `version: 1
images:
  app:
    steps:
      - id: a
        copy: app/a.txt
        to: /a.txt
      - id: b
        copy: app/b/
        to: /b/
      - id: same
        copy: shared.txt
        to: /shared.txt
      - id: c
        copy: app/c.txt
        to: /c.txt
  tools:
    steps:
      - id: from-app
        from: app
        copy: /b/
        to: /tools/
  other:
    steps:
      - id: x
        copy: other/x.txt
        to: /x.txt
      - id: same
        copy: shared.txt
        to: /shared.txt
      - id: y
        copy: other/y/
        to: /y/
`,
  });
  return dir;
}

async function build(dir: string, cache: string, ...extra: string[]): Promise<Report> {
  const report = path.join(dir, `report-${Math.random().toString(36).slice(2)}.json`);
  const res = await runCli(['run', path.join(dir, 'build.yaml'), '--cache-dir', cache, '--out', path.join(dir, 'out'), '--progress', 'quiet', '--report', report, ...extra]);
  expect(res.exitCode, res.stderr).toBe(0);
  return JSON.parse(await readFile(report, 'utf8')) as Report;
}

async function cache(...args: string[]): Promise<{ stdout: string; stderr: string; exitCode: number; json: any }> {
  const res = await runCli(['cache', ...args]);
  let json: unknown;
  if (args.includes('json')) json = JSON.parse(res.stdout);
  return { ...res, json };
}

/** Every file and directory under `dir`, its mtime set `days` back. */
async function age(dir: string, days: number): Promise<void> {
  const when = new Date(Date.now() - days * DAY);
  for (const name of await readdir(dir)) {
    const abs = path.join(dir, name);
    const st = await stat(abs);
    if (st.isDirectory()) await age(abs, days);
    await utimes(abs, when, when);
  }
}

async function recordKeys(cacheDir: string): Promise<string[]> {
  return (await readdir(path.join(cacheDir, 'records')).catch(() => [] as string[])).map((n) => n.replace(/\.json$/, '')).sort();
}

/** The invariant every prune and verify keeps: each record's layer blob is there. */
async function expectRecordsHaveBlobs(cacheDir: string): Promise<void> {
  for (const key of await recordKeys(cacheDir)) {
    const rec = JSON.parse(await readFile(path.join(cacheDir, 'records', `${key}.json`), 'utf8')) as { layer: { digest: string } | null };
    if (rec.layer) expect(existsSync(usePath(cacheDir, 'blob', rec.layer.digest)), `record ${key} names ${rec.layer.digest}`).toBe(true);
  }
}

async function textOf(stream: AsyncIterable<unknown>): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString();
}

function stepsOf(report: Report, image: string): Report['steps'] {
  return report.steps.filter((s) => s.image === image);
}

function digests(report: Report): string[] {
  return report.images.map((i) => `${i.name} ${i.manifestDigest}`).sort();
}

describe('cache du', () => {
  it('counts layer blobs, config/manifest blobs, records, snapshots and the stat cache, and they add up', async () => {
    const dir = await project();
    const cacheDir = path.join(dir, 'cache');
    const report = await build(dir, cacheDir);
    const index = JSON.parse(await readFile(path.join(dir, 'out', 'index.json'), 'utf8')) as { manifests: Array<{ digest: string }> };
    const manifests = new Set(index.manifests.map((m) => m.digest));
    const configs = new Set<string>();
    for (const m of manifests) {
      const manifest = JSON.parse(await readFile(path.join(dir, 'out', 'blobs', 'sha256', m.slice(7)), 'utf8')) as { config: { digest: string } };
      configs.add(manifest.config.digest);
    }

    const { json, exitCode } = await cache('du', '--cache-dir', cacheDir, '--format', 'json');
    expect(exitCode).toBe(0);
    const count = (kind: string): number => json.kinds.find((k: { kind: string }) => k.kind === kind).count;
    expect(count('layers')).toBe(new Set(report.steps.map((s) => s.layer!.digest)).size);
    expect(count('configs')).toBe(manifests.size + configs.size);
    expect(count('records')).toBe(new Set(report.steps.map((s) => s.key)).size);
    expect(count('snapshots')).toBe(1); // the snapshot of app that tools copies from
    expect(count('logs')).toBe(0);
    expect(count('stat-cache')).toBe(1);
    expect(count('temp')).toBe(0);
    expect(json.totalBytes).toBe(json.kinds.reduce((n: number, k: { bytes: number }) => n + k.bytes, 0));
    expect(json.totalBytes).toBeGreaterThan(0);
    expect(json.runningBuilds).toBe(0);

    const text = await cache('du', '--cache-dir', cacheDir);
    expect(text.stdout).toMatch(/^layer blobs +\d+ +[\d.]+ [kMG]?B$/m);
    expect(text.stdout).toMatch(/^config\/manifest blobs +\d+ /m);
    expect(text.stdout).toMatch(/^total +[\d.]+ [kMG]?B$/m);
  });

  it('reports an empty cache for a directory that does not exist, without creating it', async () => {
    const missing = path.join(await tmpDir(), 'nothing-here');
    const res = await cache('du', '--cache-dir', missing);
    expect(res.exitCode).toBe(0);
    expect(res.stdout).toMatch(/no cache there yet/);
    expect(existsSync(missing)).toBe(false);
    expect((await cache('prune', '--cache-dir', missing, '--keep-storage', '0')).exitCode).toBe(0);
    expect((await cache('verify', '--cache-dir', missing)).exitCode).toBe(0);
    expect(existsSync(missing)).toBe(false);
  });
});

describe('cache verify', () => {
  it('reports each bad blob and record once, removes them (not with --dry-run), and the next build rebuilds just those steps', async () => {
    const dir = await project();
    const cacheDir = path.join(dir, 'cache');
    const first = await build(dir, cacheDir);
    const clean = await cache('verify', '--cache-dir', cacheDir);
    expect(clean.exitCode, clean.stdout).toBe(0);
    expect(clean.stdout).toMatch(/every blob matches its digest/);

    const [a, b, c] = ['a', 'b', 'c'].map((id) => stepsOf(first, 'app').find((s) => s.id === id)!);
    // a: its blob's bytes changed (same length); b: its record truncated; c: its blob gone.
    const aBlob = usePath(cacheDir, 'blob', a!.layer!.digest);
    const bytes = await readFile(aBlob);
    bytes.writeUInt8(bytes.readUInt8(bytes.length - 10) ^ 0xff, bytes.length - 10);
    await writeFile(aBlob, bytes);
    await truncate(usePath(cacheDir, 'record', b!.key), 20);
    const cBlob = usePath(cacheDir, 'blob', c!.layer!.digest);
    await writeFile(`${cBlob}.keep`, await readFile(cBlob));
    await rm(cBlob);

    const dry = await cache('verify', '--cache-dir', cacheDir, '--dry-run', '--format', 'json');
    expect(dry.exitCode).toBe(1);
    const problems = dry.json.problems as Array<{ kind: string; id: string; records?: string[] }>;
    expect(problems.map((p) => `${p.kind} ${p.id}`).sort()).toEqual([`blob ${a!.layer!.digest}`, `record ${b!.key}`, `record ${c!.key}`].sort());
    expect(problems.find((p) => p.kind === 'blob')!.records).toEqual([a!.key]);
    expect(existsSync(aBlob)).toBe(true);
    expect(await recordKeys(cacheDir)).toContain(b!.key);

    const real = await cache('verify', '--cache-dir', cacheDir);
    expect(real.exitCode).toBe(1);
    expect(real.stdout.match(/^bad /gm)).toHaveLength(3);
    expect(real.stdout).toMatch(/removed 1 blob and 3 step records/);
    expect(existsSync(aBlob)).toBe(false);
    expect(await recordKeys(cacheDir)).not.toEqual(expect.arrayContaining([a!.key]));
    await expectRecordsHaveBlobs(cacheDir);

    const again = await cache('verify', '--cache-dir', cacheDir);
    expect(again.exitCode, again.stdout).toBe(0);

    const rebuilt = await build(dir, cacheDir);
    const missed = rebuilt.steps.filter((s) => s.status === 'miss').map((s) => `${s.image}/${s.id}`);
    expect(missed.sort()).toEqual(['app/a', 'app/b', 'app/c']);
    expect(digests(rebuilt)).toEqual(digests(first));
  });

  it('takes back the stat cache’s word for a bad blob it finds, even with --dry-run, so the next build hashes it again', async () => {
    const dir = await project();
    const cacheDir = path.join(dir, 'cache');
    const first = await build(dir, cacheDir);
    const a = stepsOf(first, 'app').find((s) => s.id === 'a')!;
    const aBlob = usePath(cacheDir, 'blob', a.layer!.digest);
    const bytes = await readFile(aBlob);
    bytes.writeUInt8(bytes.readUInt8(bytes.length - 10) ^ 0xff, bytes.length - 10);
    await writeFile(aBlob, bytes);
    // As if the damage had come without a stat change (bit rot): the stat cache vouches for the bad bytes.
    const st = await stat(aBlob);
    const statCache = path.join(cacheDir, 'stat-cache-blobs.json');
    const kept = existsSync(statCache) ? (JSON.parse(await readFile(statCache, 'utf8')) as { version: number; entries: Record<string, unknown[]> }) : { version: 1, entries: {} };
    kept.entries[aBlob] = [st.size, st.mtimeMs, st.ctimeMs, st.ino, st.dev, a.layer!.digest];
    await writeFile(statCache, JSON.stringify(kept));

    const dry = await cache('verify', '--cache-dir', cacheDir, '--dry-run');
    expect(dry.exitCode).toBe(1);
    expect(existsSync(aBlob)).toBe(true);
    const after = JSON.parse(await readFile(statCache, 'utf8')) as { entries: Record<string, unknown> };
    expect(after.entries[aBlob]).toBeUndefined();

    const rebuilt = await build(dir, cacheDir);
    expect(rebuilt.steps.filter((s) => s.status === 'miss').map((s) => s.id)).toEqual(['a']);
    expect(digests(rebuilt)).toEqual(digests(first));
  });

  it('checks every snapshot against its stamp, and removes one that was changed', async () => {
    const dir = await project();
    const cacheDir = path.join(dir, 'cache');
    const first = await build(dir, cacheDir);
    const clean = await cache('verify', '--cache-dir', cacheDir, '--format', 'json');
    expect(clean.exitCode, clean.stdout).toBe(0);
    expect(clean.json.snapshots).toBe(1);

    const name = (await readdir(path.join(cacheDir, 'snapshots'))).find((n) => /^[0-9a-f]+$/.test(n))!;
    const snapshot = path.join(cacheDir, 'snapshots', name);
    await writeFile(path.join(snapshot, 'c.txt'), 'changed\n');
    const real = await cache('verify', '--cache-dir', cacheDir);
    expect(real.exitCode).toBe(1);
    expect(real.stdout).toMatch(new RegExp(`^bad snapshot ${name}: it was changed since it was unpacked$`, 'm'));
    expect(real.stdout).toMatch(/removed 0 blobs and 0 step records and 1 snapshot/);
    expect(existsSync(snapshot)).toBe(false);
    expect(existsSync(`${snapshot}.snapshot.json`)).toBe(false);

    expect((await cache('verify', '--cache-dir', cacheDir)).exitCode).toBe(0);
    const rebuilt = await build(dir, cacheDir);
    expect(digests(rebuilt)).toEqual(digests(first));
    expect(existsSync(`${snapshot}.snapshot.json`)).toBe(true);
  });
});

describe('cache prune', () => {
  it('with --older-than, removes what no build used for that long — records with their layers, names and snapshots — and keeps a layer another record still names', async () => {
    const dir = await project();
    const cacheDir = path.join(dir, 'cache');
    const first = await build(dir, cacheDir);
    await age(cacheDir, 10);
    const recent = await build(dir, cacheDir, '--target', 'other');
    expect(recent.steps.every((s) => s.status === 'hit')).toBe(true);
    const namesBefore = (await readdir(path.join(cacheDir, 'names'))).length;

    const res = await cache('prune', '--cache-dir', cacheDir, '--older-than', '7d', '--format', 'json');
    expect(res.exitCode, res.stderr).toBe(0);
    expect(res.json.removed.records).toBe(stepsOf(first, 'app').length + stepsOf(first, 'tools').length);
    expect(res.json.removed.snapshots).toBe(1);
    expect(res.json.freedBytes).toBeGreaterThan(0);
    expect(await recordKeys(cacheDir)).toEqual(stepsOf(recent, 'other').map((s) => s.key).sort());
    await expectRecordsHaveBlobs(cacheDir);
    // app/same's layer is other/same's too: still there.
    const same = stepsOf(first, 'app').find((s) => s.id === 'same')!;
    expect(same.layer!.digest).toBe(stepsOf(first, 'other').find((s) => s.id === 'same')!.layer!.digest);
    expect(existsSync(usePath(cacheDir, 'blob', same.layer!.digest))).toBe(true);
    // app's only layers are gone, and so are the names of removed steps.
    expect(existsSync(usePath(cacheDir, 'blob', stepsOf(first, 'app')[0]!.layer!.digest))).toBe(false);
    expect((await readdir(path.join(cacheDir, 'names'))).length).toBe(namesBefore - 5);

    const after = await build(dir, cacheDir);
    expect(after.steps.filter((s) => s.status === 'hit').map((s) => `${s.image}/${s.id}`).sort()).toEqual(['other/same', 'other/x', 'other/y']);
    expect(digests(after)).toEqual(digests(first));
  });

  it('with --keep-storage, removes the least recently used first, until the cache fits', async () => {
    const dir = await project();
    const cacheDir = path.join(dir, 'cache');
    await build(dir, cacheDir);
    await age(cacheDir, 3);
    const recent = await build(dir, cacheDir, '--target', 'other');
    const otherKeys = stepsOf(recent, 'other').map((s) => s.key).sort();

    const before = (await cache('du', '--cache-dir', cacheDir, '--format', 'json')).json.totalBytes as number;
    const one = await cache('prune', '--cache-dir', cacheDir, '--keep-storage', String(before - 1), '--format', 'json');
    expect(one.json.bytesAfter).toBeLessThan(before);
    expect(one.json.freedBytes).toBeGreaterThan(0);
    // Only what `other` did not just use went.
    expect(await recordKeys(cacheDir)).toEqual(expect.arrayContaining(otherKeys));
    await expectRecordsHaveBlobs(cacheDir);

    const all = await cache('prune', '--cache-dir', cacheDir, '--keep-storage', '0', '--format', 'json');
    expect(all.exitCode).toBe(0);
    expect(await recordKeys(cacheDir)).toEqual([]);
    const du = (await cache('du', '--cache-dir', cacheDir, '--format', 'json')).json as { kinds: Array<{ kind: string; count: number }> };
    expect(du.kinds.filter((k) => k.count > 0).map((k) => k.kind)).toEqual(['stat-cache']);
    expect(all.json.bytesAfter).toBeLessThan(before);
  });

  it('--dry-run says what a prune would remove and removes nothing', async () => {
    const dir = await project();
    const cacheDir = path.join(dir, 'cache');
    await build(dir, cacheDir);
    const keys = await recordKeys(cacheDir);
    const dry = await cache('prune', '--cache-dir', cacheDir, '--keep-storage', '0', '--dry-run', '--format', 'json');
    expect(dry.json.dryRun).toBe(true);
    expect(dry.json.removed.records).toBe(keys.length);
    expect(await recordKeys(cacheDir)).toEqual(keys);
    const real = await cache('prune', '--cache-dir', cacheDir, '--keep-storage', '0', '--format', 'json');
    expect(real.json.removed).toEqual(dry.json.removed);
    expect(real.json.freedBytes).toBe(dry.json.freedBytes);
  });

  it('without limits, removes only what is broken: a record whose blob is gone, a snapshot without its stamp', async () => {
    const dir = await project();
    const cacheDir = path.join(dir, 'cache');
    const first = await build(dir, cacheDir);
    const c = stepsOf(first, 'app').find((s) => s.id === 'c')!;
    await rm(usePath(cacheDir, 'blob', c.layer!.digest));
    const snapshots = (await readdir(path.join(cacheDir, 'snapshots'))).filter((n) => n.endsWith('.snapshot.json'));
    await rm(path.join(cacheDir, 'snapshots', snapshots[0]!));

    const res = await cache('prune', '--cache-dir', cacheDir, '--format', 'json');
    expect(res.json.removed).toMatchObject({ records: 1, snapshots: 1 });
    expect(await recordKeys(cacheDir)).not.toContain(c.key);
    expect((await readdir(path.join(cacheDir, 'snapshots'))).filter((n) => n !== 'layers')).toEqual([]);
    expect((await recordKeys(cacheDir)).length).toBe(new Set(first.steps.map((s) => s.key)).size - 1);
    await expectRecordsHaveBlobs(cacheDir);
  });

  it('never removes what a live lease holds; a dead process’s lease, or another host’s a day old, is ignored and swept', async () => {
    const dir = await project();
    const cacheDir = path.join(dir, 'cache');
    const first = await build(dir, cacheDir);
    const app = stepsOf(first, 'app');
    const lines = app.flatMap((s) => [`record ${s.key}`, `blob ${s.layer!.digest}`]).join('\n') + '\n';
    const live = liveProcess();
    const leases = path.join(cacheDir, 'leases');
    await writeFile(path.join(leases, `${thisHost()}.${live.pid}-aaaa`), lines);
    await writeFile(path.join(leases, `${thisHost()}.${deadPid()}-bbbb`), `record ${stepsOf(first, 'other')[0]!.key}\n`);
    const foreignOld = path.join(leases, 'some-other-host.1-cccc');
    await writeFile(foreignOld, `record ${stepsOf(first, 'other')[1]!.key}\n`);
    await utimes(foreignOld, new Date(Date.now() - 2 * DAY), new Date(Date.now() - 2 * DAY));

    expect((await cache('du', '--cache-dir', cacheDir, '--format', 'json')).json.runningBuilds).toBe(1);
    const res = await cache('prune', '--cache-dir', cacheDir, '--keep-storage', '0', '--format', 'json');
    expect(res.json.inUse).toBe(app.length);
    expect(await recordKeys(cacheDir)).toEqual(app.map((s) => s.key).sort());
    await expectRecordsHaveBlobs(cacheDir);
    expect((await readdir(leases)).sort()).toEqual([`${thisHost()}.${live.pid}-aaaa`]);

    live.kill('SIGKILL');
    await new Promise((resolve) => live.once('exit', resolve));
    const after = await cache('prune', '--cache-dir', cacheDir, '--keep-storage', '0', '--format', 'json');
    expect(after.json.inUse).toBe(0);
    expect(await recordKeys(cacheDir)).toEqual([]);
    expect(await readdir(leases)).toEqual([]);
  });

  it('keeps what a build that ran between its scan and its removal window used or wrote, though that build’s lease is gone', async () => {
    const dir = await project();
    const cacheDir = path.join(dir, 'cache');
    const first = await build(dir, cacheDir);
    await age(cacheDir, 30);
    // A whole build in the gap: every record it hit is marked used, after the scan saw them all old.
    let again: Report | undefined;
    const res = await pruneCache(cacheDir, { olderThanMs: 7 * DAY, afterScan: async () => void (again = await build(dir, cacheDir)) });
    expect(again!.steps.every((s) => s.status === 'hit')).toBe(true);
    expect(res.removed).toMatchObject({ records: 0, blobs: 0, snapshots: 0 });
    expect(await recordKeys(cacheDir)).toEqual([...new Set(first.steps.map((s) => s.key))].sort());

    // A build killed right after writing its record: a new record names an old blob, nothing marked used, no live lease.
    await age(cacheDir, 30);
    const c = stepsOf(first, 'app').find((s) => s.id === 'c')!;
    const newKey = 'f'.repeat(64);
    const layerSnapshot = path.join(cacheDir, 'snapshots', 'layers', c.layer!.diffId.slice('sha256:'.length));
    const hadLayerSnapshot = existsSync(layerSnapshot);
    await pruneCache(cacheDir, {
      olderThanMs: 7 * DAY,
      afterScan: async () => {
        const rec = JSON.parse(await readFile(usePath(cacheDir, 'record', c.key), 'utf8')) as object;
        await writeFile(usePath(cacheDir, 'record', newKey), JSON.stringify({ ...rec, key: newKey }));
      },
    });
    expect(await recordKeys(cacheDir)).toEqual([newKey]);
    expect(existsSync(usePath(cacheDir, 'blob', c.layer!.digest))).toBe(true);
    expect(existsSync(layerSnapshot)).toBe(hadLayerSnapshot);
    await expectRecordsHaveBlobs(cacheDir);
  });

  it('two prunes at once take turns; a prune waits for a live holder of the maintenance lock and ignores a dead one', async () => {
    const dir = await project();
    const cacheDir = path.join(dir, 'cache');
    await build(dir, cacheDir);
    const both = await Promise.all([pruneCache(cacheDir, { keepStorage: 0 }), pruneCache(cacheDir, { keepStorage: 0 })]);
    expect(both[0].removed.records + both[1].removed.records).toBe(8);
    await expectRecordsHaveBlobs(cacheDir);

    await build(dir, cacheDir);
    const locks = path.join(cacheDir, 'locks', 'maintenance');
    await writeFile(path.join(locks, `${thisHost()}.${deadPid()}-dead`), '');
    const live = liveProcess();
    const held = path.join(locks, `${thisHost()}.${live.pid}-live`);
    await writeFile(held, '');
    let waitedFor = '';
    const waiting = pruneCache(cacheDir, { keepStorage: 0, onWait: (holder) => (waitedFor = holder) });
    while (!waitedFor) await new Promise((resolve) => setTimeout(resolve, 20));
    expect(waitedFor).toBe(`${thisHost()}.${live.pid}`);
    expect(await recordKeys(cacheDir)).toHaveLength(8); // nothing removed while it waits
    await rm(held);
    expect((await waiting).removed.records).toBe(8);
    expect(await readdir(locks)).toEqual([]);
  });
});

describe('leases', () => {
  it('a hit marks its record used now (utimes, the record itself unchanged), and the lease is gone after the build', async () => {
    const dir = await project();
    const cacheDir = path.join(dir, 'cache');
    const first = await build(dir, cacheDir);
    const key = first.steps[0]!.key;
    const file = usePath(cacheDir, 'record', key);
    const content = await readFile(file, 'utf8');
    await age(cacheDir, 30);
    const again = await build(dir, cacheDir);
    expect(again.steps[0]!.status).toBe('hit');
    expect((await stat(file)).mtimeMs).toBeGreaterThan(Date.now() - DAY);
    expect((await stat(usePath(cacheDir, 'blob', first.steps[0]!.layer!.digest))).mtimeMs).toBeGreaterThan(Date.now() - DAY);
    expect(await readFile(file, 'utf8')).toBe(content);
    expect(await readdir(path.join(cacheDir, 'leases'))).toEqual([]);
  });

  it('a hold is written before it returns, and waits while a live prune has its removal window open', async () => {
    const cacheDir = await tmpDir();
    const lease = openLease(cacheDir);
    try {
      expect(hold(cacheDir, 'record', 'aaaaaaaaaaaaaaaa')).toBeUndefined();
      expect((await readLeases(cacheDir)).items).toEqual(new Set(['record aaaaaaaaaaaaaaaa']));

      const marker = path.join(cacheDir, 'locks', 'removing');
      await mkdir(path.dirname(marker), { recursive: true });
      await writeFile(marker, `${thisHost()}.${deadPid()}-removing\n`);
      await hold(cacheDir, 'blob', `sha256:${'1'.repeat(64)}`); // a dead prune's marker: no wait

      const live = liveProcess();
      await writeFile(marker, `${thisHost()}.${live.pid}-removing\n`);
      let settled = false;
      const waiting = hold(cacheDir, 'blob', `sha256:${'2'.repeat(64)}`)!;
      expect(waiting).toBeInstanceOf(Promise);
      void waiting.then(() => (settled = true));
      // The same item asked for again waits too; one held before the window does not.
      expect(hold(cacheDir, 'blob', `sha256:${'2'.repeat(64)}`)).toBe(waiting);
      expect(hold(cacheDir, 'record', 'aaaaaaaaaaaaaaaa')).toBeUndefined();
      expect((await readLeases(cacheDir)).items.has(`blob sha256:${'2'.repeat(64)}`)).toBe(true);
      await new Promise((resolve) => setTimeout(resolve, 200));
      expect(settled).toBe(false);
      await rm(marker);
      await waiting;
    } finally {
      await lease.release();
    }
    expect(await readdir(path.join(cacheDir, 'leases'))).toEqual([]);
  });

  it('reading a blob holds it, though the reader asked neither has nor verify, and waits out a live prune’s window', async () => {
    const cacheDir = await tmpDir();
    const store = new ContentStore(cacheDir);
    const { digest } = await store.put(Buffer.from('{"a":1}')); // no lease open: nothing held
    const other = await store.put(Buffer.from('{"b":2}'));
    const lease = openLease(cacheDir);
    try {
      expect((await readLeases(cacheDir)).items).toEqual(new Set());
      expect(await textOf(store.read(digest))).toBe('{"a":1}');
      expect((await readLeases(cacheDir)).items).toEqual(new Set([`blob ${digest}`]));

      const marker = path.join(cacheDir, 'locks', 'removing');
      await mkdir(path.dirname(marker), { recursive: true });
      await writeFile(marker, `${thisHost()}.${liveProcess().pid}-removing\n`);
      let read = '';
      const reading = (async () => (read = await textOf(store.read(other.digest))))();
      expect((await readLeases(cacheDir)).items.has(`blob ${other.digest}`)).toBe(true); // written before it waits
      await new Promise((resolve) => setTimeout(resolve, 200));
      expect(read).toBe('');
      await rm(marker);
      await reading;
      expect(read).toBe('{"b":2}');
    } finally {
      await lease.release();
    }
  });

  it('builds of one process share a lease, which ends with the last of them', async () => {
    const cacheDir = await tmpDir();
    const one = openLease(cacheDir);
    const two = openLease(cacheDir);
    hold(cacheDir, 'record', 'bbbbbbbbbbbbbbbb');
    await one.release();
    expect((await readLeases(cacheDir)).holders).toBe(1);
    await two.release();
    expect((await readLeases(cacheDir)).holders).toBe(0);
    expect(hold(cacheDir, 'record', 'cccccccccccccccc')).toBeUndefined();
  });

  it('a build that starts after another ended enrols the builds still running: what they hold next stays leased when it ends', async () => {
    const cacheDir = await tmpDir();
    const a = openLease(cacheDir);
    const b = openLease(cacheDir);
    await a.release(); // b goes on; the next hold or build makes a new lease
    const c = openLease(cacheDir);
    hold(cacheDir, 'blob', `sha256:${'d'.repeat(64)}`); // b's
    await c.release();
    expect((await readLeases(cacheDir)).items).toEqual(new Set([`blob sha256:${'d'.repeat(64)}`]));
    await b.release();
    expect((await readLeases(cacheDir)).holders).toBe(0);
  });

  it('builds that always overlap still end leases: each ends with the last build in it, marking what it held used', async () => {
    const cacheDir = await tmpDir();
    const [a, b, c] = ['aaaaaaaaaaaaaaaa', 'bbbbbbbbbbbbbbbb', 'cccccccccccccccc'];
    await mkdir(path.join(cacheDir, 'records'), { recursive: true });
    const monthAgo = new Date(Date.now() - 30 * DAY);
    for (const k of [a, b, c]) {
      await writeFile(usePath(cacheDir, 'record', k), '{}');
      await utimes(usePath(cacheDir, 'record', k), monthAgo, monthAgo);
    }
    const usedRecently = async (k: string) => (await stat(usePath(cacheDir, 'record', k))).mtimeMs > Date.now() - DAY;

    const one = openLease(cacheDir);
    const two = openLease(cacheDir);
    hold(cacheDir, 'record', a);
    await one.release(); // two still runs, in the lease that holds `a`
    expect(await usedRecently(a)).toBe(false);
    hold(cacheDir, 'record', b); // two goes on in a new lease
    const three = openLease(cacheDir); // starts before two ends: the process never has no build
    await two.release();
    expect(await usedRecently(a)).toBe(true);
    expect(await usedRecently(b)).toBe(false);
    expect(await readLeases(cacheDir)).toEqual({ items: new Set([`record ${b}`]), holders: 1 });
    hold(cacheDir, 'record', c);
    await three.release();
    expect([await usedRecently(b), await usedRecently(c)]).toEqual([true, true]);
    expect(await readdir(path.join(cacheDir, 'leases'))).toEqual([]);
    expect(hold(cacheDir, 'record', a)).toBeUndefined();
  });

  it('the maintenance lock is released for the next one', async () => {
    const cacheDir = await tmpDir();
    const lock = await acquireMaintenanceLock(cacheDir);
    await lock.release();
    await (await acquireMaintenanceLock(cacheDir)).release();
    expect(await readdir(path.join(cacheDir, 'locks', 'maintenance'))).toEqual([]);
  });
});

describe('cache command line', () => {
  it('refuses unknown subcommands, flags of another subcommand and malformed sizes and ages', async () => {
    const cacheDir = await tmpDir();
    const cases: Array<[string[], RegExp]> = [
      [['cache'], /`cache` needs more arguments: layergraph cache du\|prune\|verify/],
      [['cache', 'clean'], /unknown cache command `clean`; expected du, prune or verify/],
      [['cache', 'du', '--keep-storage', '1GB'], /--keep-storage does not apply to `cache du`/],
      [['cache', 'verify', '--older-than', '1d'], /--older-than does not apply to `cache verify`/],
      [['cache', 'prune', '--keep-storage', '10XB'], /--keep-storage 10XB: expected a size such as 10GB/],
      [['cache', 'prune', '--older-than', '7x'], /--older-than 7x: expected an age such as 7d/],
      [['cache', 'du', '--format', 'xml'], /--format xml: expected text or json/],
    ];
    for (const [args, message] of cases) {
      const res = await runCli([...args, '--cache-dir', cacheDir]);
      expect(res.exitCode, args.join(' ')).toBe(2);
      expect(res.stderr).toMatch(message);
    }
    expect((await runCli(['cache', '--help'])).stdout).toMatch(/--keep-storage <size>/);
  });

  it('reads sizes and ages as people write them', () => {
    expect(parseSize('--keep-storage', '10GB')).toBe(10e9);
    expect(parseSize('--keep-storage', '1.5 MB')).toBe(1.5e6);
    expect(parseSize('--keep-storage', '2GiB')).toBe(2 * 2 ** 30);
    expect(parseSize('--keep-storage', '512m')).toBe(512 * 2 ** 20);
    expect(parseSize('--keep-storage', '0')).toBe(0);
    expect(parseAge('--older-than', '7d')).toBe(7 * DAY);
    expect(parseAge('--older-than', '1d12h')).toBe(1.5 * DAY);
    expect(parseAge('--older-than', '90s')).toBe(90_000);
    expect(() => parseAge('--older-than', '7')).toThrow(/expected an age/);
    expect(() => parseAge('--older-than', '7d x')).toThrow(/expected an age/);
    expect(formatBytes(999)).toBe('999 B');
    expect(formatBytes(1_500_000)).toBe('1.5 MB');
    expect(formatBytes(12_300_000_000)).toBe('12.3 GB');
  });
});
