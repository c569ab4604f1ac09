/**
 * Builds that pull from and push to a real registry (the Debian
 * docker-registry on 127.0.0.1), and share their cache through it. skopeo is
 * the independent client: it puts the base image there and reads back what
 * we push, which must be our local layout byte for byte.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from './helpers/cli.js';
import { startRegistry, type TestRegistry } from './helpers/registry.js';
import { hasTool, tool } from './helpers/tools.js';

const ready = hasTool('docker-registry') && hasTool('skopeo');

interface Report {
  images: Array<{ name: string; manifestDigest: string }>;
  steps: Array<{ image: string; id: string; status: string; reason: string; cacheSource?: string; layer: { digest: string } | null }>;
  summary: { pulledBytes?: number; pushedBytes?: number };
  pushed?: Array<{ reference: string; digest: string }>;
}

let work: string;
let registry: TestRegistry;
let host: string;

async function build(file: string, cache: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ exitCode: number; stderr: string; report: Report }> {
  const reportFile = path.join(work, `r-${Math.random().toString(36).slice(2)}.json`);
  const res = await runCli(['run', path.join(work, 'ctx', file), '--cache-dir', path.join(work, cache), '--report', reportFile, '--progress', 'quiet', ...args], { env });
  const report = JSON.parse(await readFile(reportFile, 'utf8').catch(() => '{"steps":[],"images":[],"summary":{}}')) as Report;
  return { exitCode: res.exitCode, stderr: res.stderr + res.stdout, report };
}

const sha = async (file: string) => `sha256:${createHash('sha256').update(await readFile(file)).digest('hex')}`;

beforeAll(async () => {
  if (!ready) return;
  work = await mkdtemp(path.join(os.tmpdir(), 'lg-regbuild-'));
  registry = await startRegistry(path.join(work, 'registry'), { kind: 'none' });
  host = registry.host;
  const ctx = path.join(work, 'ctx');
  await mkdir(path.join(ctx, 'src'), { recursive: true });
  // Random, so the layer does not compress away: the pulled and pushed byte counts must mean something.
  await writeFile(path.join(ctx, 'base.txt'), randomBytes(40_000).toString('base64'));
  await writeFile(path.join(ctx, 'src', 'main.js'), 'console.log("v1")\n');
  await writeFile(path.join(ctx, 'src', 'util.js'), 'export const x = 1\n');
  await writeFile(path.join(ctx, 'base.yaml'), 'version: 1\nimages:\n  base:\n    env: {FROM_BASE: "yes"}\n    steps:\n      - {id: data, copy: base.txt, to: /data/base.txt}\n');
  await writeFile(
    path.join(ctx, 'app.yaml'),
    `version: 1\nimages:\n  app:\n    from: ${host}/library/base:1\n    tags: ["${host}/team/app:1", "app:local"]\n    steps:\n      - {id: src, copy: src/, to: /app/}\n      - {id: conf, copy: src/util.js, to: /etc/util.js}\n`,
  );
  // The base goes into the registry by a client that is not ours.
  const base = await build('base.yaml', 'cache-base', ['--out', path.join(work, 'base-layout')]);
  expect(base.exitCode, base.stderr).toBe(0);
  await tool('skopeo', ['copy', '-q', '--dest-tls-verify=false', `oci:${path.join(work, 'base-layout')}:base`, `docker://${host}/library/base:1`]);
});

afterAll(async () => {
  await registry?.stop();
  if (work) await rm(work, { recursive: true, force: true });
});

describe.skipIf(!ready)('building with a registry', () => {
  it('builds from a registry base, pushes with --push, and the registry holds our layout byte for byte', async () => {
    const layout = path.join(work, 'app-layout');
    const res = await build('app.yaml', 'cache-a', ['--out', layout, '--push']);
    expect(res.exitCode, res.stderr).toBe(0);
    const digest = res.report.images[0]!.manifestDigest;
    expect(res.report.pushed).toEqual([{ image: 'app', reference: `${host}/team/app:1`, digest }]);
    // The base was pulled; its layer was mounted across repositories, not uploaded again.
    expect(res.report.summary.pulledBytes).toBeGreaterThan(30_000);
    expect(res.report.summary.pushedBytes).toBeLessThan(5_000);

    const inspected = JSON.parse(await tool('skopeo', ['inspect', '--tls-verify=false', `docker://${host}/team/app:1`])) as { Digest: string; Env: string[] };
    expect(inspected.Digest).toBe(digest);
    expect(inspected.Env).toContain('FROM_BASE=yes');
    const copy = path.join(work, 'skopeo-copy');
    await tool('skopeo', ['copy', '-q', '--src-tls-verify=false', '--preserve-digests', `docker://${host}/team/app:1`, `oci:${copy}:app`]);
    const ours = (await readdir(path.join(layout, 'blobs', 'sha256'))).sort();
    for (const blob of await readdir(path.join(copy, 'blobs', 'sha256'))) {
      expect(ours).toContain(blob);
      expect(await sha(path.join(copy, 'blobs', 'sha256', blob))).toBe(await sha(path.join(layout, 'blobs', 'sha256', blob)));
    }
  });

  it('shares its cache through the registry: a fresh cache hits every step, and a changed file is named', async () => {
    const cacheRef = `registry:${host}/cache/app:main`;
    const first = await build('app.yaml', 'cache-b', ['--out', path.join(work, 'o1'), '--cache-to', cacheRef]);
    expect(first.exitCode, first.stderr).toBe(0);

    const fresh = await build('app.yaml', 'cache-c', ['--out', path.join(work, 'o2'), '--cache-from', cacheRef]);
    expect(fresh.exitCode, fresh.stderr).toBe(0);
    expect(fresh.report.steps.map((s) => [s.id, s.status, s.cacheSource])).toEqual([
      ['src', 'hit', 'registry'],
      ['conf', 'hit', 'registry'],
    ]);
    expect(fresh.report.images[0]!.manifestDigest).toBe(first.report.images[0]!.manifestDigest);

    await writeFile(path.join(work, 'ctx', 'src', 'main.js'), 'console.log("v2")\n');
    try {
      const changed = await build('app.yaml', 'cache-d', ['--out', path.join(work, 'o3'), '--cache-from', cacheRef]);
      expect(changed.exitCode, changed.stderr).toBe(0);
      expect(changed.report.steps.map((s) => [s.id, s.status, s.reason])).toEqual([
        ['src', 'miss', 'input src/main.js changed'],
        ['conf', 'miss', 'parent layer changed'],
      ]);
    } finally {
      await writeFile(path.join(work, 'ctx', 'src', 'main.js'), 'console.log("v1")\n');
    }
  });

  it('plans against the registry cache: a fresh cache would hit every step, and nothing is written', async () => {
    const res = await runCli([
      'plan', path.join(work, 'ctx', 'app.yaml'), '--format', 'json',
      '--cache-dir', path.join(work, 'cache-plan'), '--cache-from', `registry:${host}/cache/app:main`,
    ]);
    expect(res.exitCode, res.stderr).toBe(0);
    const plan = JSON.parse(res.stdout) as { steps: Array<{ id: string; status: string; cacheSource?: string }> };
    expect(plan.steps.map((s) => [s.id, s.status, s.cacheSource])).toEqual([
      ['src', 'hit', 'registry'],
      ['conf', 'hit', 'registry'],
    ]);
    await expect(readdir(path.join(work, 'cache-plan'))).rejects.toThrow(/ENOENT/);
  });

  it('pushes hits from a registry cache without downloading their layers', async () => {
    const cacheRef = `registry:${host}/cache/app:main`;
    const res = await build('app.yaml', 'cache-lazy', ['--cache-from', cacheRef, '--push']);
    expect(res.exitCode, res.stderr).toBe(0);
    expect(res.report.steps.map((s) => s.status)).toEqual(['hit', 'hit']);
    const stepLayers = (await build('app.yaml', 'cache-b', ['--out', path.join(work, 'o-lazy')])).report.steps.map((s) => s.layer!.digest);
    // Mounted from the cache's repository: the local store never held them, and no local layout was asked for.
    const local = await readdir(path.join(work, 'cache-lazy', 'blobs', 'sha256'));
    for (const digest of stepLayers) expect(local).not.toContain(digest.slice('sha256:'.length));
    expect(res.report.pushed?.[0]?.digest).toBe(res.report.images[0]!.manifestDigest);
  });

  it('keeps hits it never downloaded in the cache it writes, and pushes them to a repository that lacks them', async () => {
    const from = `registry:${host}/cache/app:main`;
    const to = `registry:${host}/cache/app:relay`;
    await writeFile(path.join(work, 'ctx', 'relay.yaml'), (await readFile(path.join(work, 'ctx', 'app.yaml'), 'utf8')).replace('team/app:1', 'elsewhere/app:1'));
    const relay = await build('relay.yaml', 'cache-relay', ['--cache-from', from, '--cache-to', to, '--push']);
    expect(relay.exitCode, relay.stderr).toBe(0);
    expect(relay.report.steps.map((s) => s.cacheSource)).toEqual(['registry', 'registry']);
    const again = await build('app.yaml', 'cache-relay2', ['--out', path.join(work, 'o-relay'), '--cache-from', to]);
    expect(again.report.steps.map((s) => [s.status, s.cacheSource])).toEqual([
      ['hit', 'registry'],
      ['hit', 'registry'],
    ]);
  });

  it('builds without a shared cache it cannot use, saying so', async () => {
    // An image, not a cache: the build goes on as if there were no shared cache.
    const reportFile = path.join(work, 'r-notcache.json');
    const res = await runCli([
      'run', path.join(work, 'ctx', 'app.yaml'), '--cache-dir', path.join(work, 'cache-notcache'), '--out', path.join(work, 'o-notcache'),
      '--cache-from', `registry:${host}/team/app:1`, '--progress', 'plain', '--report', reportFile,
    ]);
    expect(res.exitCode, res.stderr).toBe(0);
    expect(res.stderr).toMatch(new RegExp(`shared cache registry:${host}/team/app:1 not used: .*is not a layergraph cache`));
    const report = JSON.parse(await readFile(reportFile, 'utf8')) as Report;
    expect(report.steps.map((s) => s.status)).toEqual(['miss', 'miss']);
  });

  it('refuses --push when no tag names a registry, before building', async () => {
    await writeFile(path.join(work, 'ctx', 'local.yaml'), 'version: 1\nimages:\n  small:\n    tags: ["small:dev"]\n    steps:\n      - {id: src, copy: src/, to: /app/}\n');
    const res = await build('local.yaml', 'cache-local', ['--push']);
    expect(res.exitCode).toBe(2);
    expect(res.stderr).toMatch(/--push: no image has a tag that names a registry/);
  });

  it('shares its cache through a directory too', async () => {
    const dir = `dir:${path.join(work, 'shared-cache')}`;
    expect((await build('app.yaml', 'cache-e', ['--out', path.join(work, 'o4'), '--cache-to', dir])).exitCode).toBe(0);
    const fresh = await build('app.yaml', 'cache-f', ['--out', path.join(work, 'o5'), '--cache-from', dir]);
    expect(fresh.report.steps.map((s) => [s.status, s.cacheSource])).toEqual([
      ['hit', 'dir'],
      ['hit', 'dir'],
    ]);
  });

  it('never takes a record whose layer is missing or whose diffID is wrong from a shared directory', async () => {
    const shared = path.join(work, 'shared-bad');
    expect((await build('app.yaml', 'cache-h', ['--out', path.join(work, 'o7'), '--cache-to', `dir:${shared}`])).exitCode).toBe(0);
    const records = await readdir(path.join(shared, 'records'));
    // One record's layer is gone: that step is simply not a hit.
    const first = JSON.parse(await readFile(path.join(shared, 'records', records[0]!), 'utf8')) as { layer: { digest: string } };
    await rm(path.join(shared, 'blobs', 'sha256', first.layer.digest.slice('sha256:'.length)));
    const missing = await build('app.yaml', 'cache-i', ['--out', path.join(work, 'o8'), '--cache-from', `dir:${shared}`]);
    expect(missing.exitCode, missing.stderr).toBe(0);
    expect(missing.report.steps.filter((s) => s.status === 'miss')).toHaveLength(1);
    // A record that misdescribes its layer fails the build, naming the cache, instead of writing a broken image.
    const second = path.join(shared, 'records', records[1]!);
    const rec = JSON.parse(await readFile(second, 'utf8')) as { layer: { diffId: string } };
    rec.layer.diffId = `sha256:${'0'.repeat(64)}`;
    await writeFile(second, JSON.stringify(rec));
    const lying = await build('app.yaml', 'cache-j', ['--out', path.join(work, 'o9'), '--cache-from', `dir:${shared}`]);
    expect(lying.exitCode).toBe(1);
    expect(lying.stderr).toMatch(/shared cache dir:.*unpacks to diffID sha256:[0-9a-f]{64}, but its record says sha256:0{64}/);
  });
});

describe.skipIf(!ready)('pushing to a registry that wants a password', () => {
  let locked: TestRegistry;
  beforeAll(async () => {
    locked = await startRegistry(path.join(work, 'locked'), { kind: 'htpasswd', user: 'ci', password: 's3cret' });
  });
  afterAll(async () => {
    await locked?.stop();
  });

  async function pushWith(password: string) {
    const config = path.join(work, `docker-config-${password}.json`);
    await writeFile(config, JSON.stringify({ auths: { [locked.host]: { auth: Buffer.from(`ci:${password}`).toString('base64') } } }));
    const file = path.join(work, 'ctx', 'locked.yaml');
    await writeFile(file, `version: 1\nimages:\n  small:\n    tags: ["${locked.host}/team/small:1"]\n    push: true\n    steps:\n      - {id: src, copy: src/, to: /app/}\n`);
    return build('locked.yaml', 'cache-g', ['--out', path.join(work, 'o6'), '--registry-config', config]);
  }

  it('pushes an image that says push: true with the credentials of --registry-config', async () => {
    const res = await pushWith('s3cret');
    expect(res.exitCode, res.stderr).toBe(0);
    expect(res.report.pushed?.[0]?.reference).toBe(`${locked.host}/team/small:1`);
  });

  it('fails clearly with a wrong password', async () => {
    const res = await pushWith('wrong');
    expect(res.exitCode).toBe(1);
    expect(res.stderr).toMatch(/check your credentials for 127\.0\.0\.1:\d+/);
  });
});
