/**
 * The example monorepo, built end to end and checked with tools we did not
 * write: oci-image-tool validates the layout, skopeo inspects every image,
 * umoci unpacks every image and the unpacked files are compared with what the
 * build file asks for.
 */
import { cp, mkdtemp, readFile, readdir, rm, utimes, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPO, runCli, spawnCli } from './helpers/cli.js';
import { hasTool, tool } from './helpers/tools.js';
import { readTree, type TreeEntry } from './helpers/tree.js';

const EXAMPLE = path.join(REPO, 'examples', 'monorepo');
let work: string;
let ctx: string;
let cache: string;
let out: string;

interface JsonReport {
  images: Array<{ name: string; tags: string[]; manifestDigest: string }>;
  steps: Array<{ image: string; id: string; status: string; reason: string; key: string; layer: { digest: string } | null }>;
  summary: { total: number; hits: number; misses: number };
}

async function build(extra: string[] = []): Promise<{ report: JsonReport; stdout: string; stderr: string; exitCode: number }> {
  const reportFile = path.join(work, `report-${Math.random().toString(36).slice(2)}.json`);
  const res = await runCli(['run', path.join(ctx, 'build.yaml'), '--cache-dir', cache, '--out', out, '--report', reportFile, '--progress', 'plain', ...extra]);
  expect(res.stderr + res.stdout).not.toMatch(/unexpected error/);
  const report = JSON.parse(await readFile(reportFile, 'utf8')) as JsonReport;
  return { report, ...res };
}

const status = (r: JsonReport): Record<string, string> => Object.fromEntries(r.steps.map((s) => [`${s.image}/${s.id}`, s.status]));
const digests = (r: JsonReport): Record<string, string> => Object.fromEntries(r.images.map((i) => [i.name, i.manifestDigest]));

beforeAll(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), 'lg-mono-'));
  ctx = path.join(work, 'ctx');
  cache = path.join(work, 'cache');
  out = path.join(work, 'out');
  await cp(EXAMPLE, ctx, { recursive: true, verbatimSymlinks: true });
});

afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

describe('example monorepo', () => {
  let first: JsonReport;

  it('builds every image on an empty cache', async () => {
    const res = await build();
    expect(res.exitCode, res.stderr).toBe(0);
    first = res.report;
    expect(first.summary).toMatchObject({ total: 8, misses: 8, hits: 0 });
    // the linked step shared by api and web has one key and is built once, for both
    const common = first.steps.filter((s) => s.id === 'common');
    expect(common[0]!.key).toBe(common[1]!.key);
    expect(common.map((s) => s.reason).sort()).toEqual([
      'no earlier build',
      expect.stringMatching(/^no earlier build \(built once for (api|web)\/common\)$/),
    ]);
    expect(res.stdout).toMatch(/0\/8 steps cached, 8 built/);
  });

  it('writes a layout that oci-image-tool validates', async () => {
    if (!hasTool('oci-image-tool')) return;
    // Without --ref it walks every manifest of index.json. (Its --ref name=… filter rejects any
    // layout where one manifest carries several names, as ours does for tags.)
    const msg = await tool('oci-image-tool', ['validate', '--type', 'image', out]);
    expect(msg).toMatch(/Validation succeeded/);
  });

  it('names every image and tag in index.json, storing shared blobs once', async () => {
    const index = JSON.parse(await readFile(path.join(out, 'index.json'), 'utf8')) as {
      manifests: Array<{ digest: string; annotations: Record<string, string> }>;
    };
    const refs = index.manifests.map((m) => m.annotations['org.opencontainers.image.ref.name']);
    expect(refs).toEqual(['api', 'example.com/monorepo/api:latest', 'web', 'example.com/monorepo/web:latest', 'api-debug']);
    const blobs = await readdir(path.join(out, 'blobs', 'sha256'));
    expect(new Set(blobs).size).toBe(blobs.length);
    const commonLayer = first.steps.find((s) => s.image === 'api' && s.id === 'common')!.layer!.digest;
    expect(first.steps.find((s) => s.image === 'web' && s.id === 'common')!.layer!.digest).toBe(commonLayer);
  });

  it('is what skopeo sees', async () => {
    if (!hasTool('skopeo')) return;
    const api = JSON.parse(await tool('skopeo', ['inspect', `oci:${out}:api`])) as Record<string, unknown>;
    expect(api).toMatchObject({
      Digest: digests(first).api,
      Architecture: expect.any(String),
      Os: 'linux',
      Labels: { 'org.opencontainers.image.title': 'api' },
      Env: ['PORT=8080', 'NODE_ENV=production'],
    });
    expect((api.Layers as string[]).length).toBe(3);
    const cfg = JSON.parse(await tool('skopeo', ['inspect', '--config', `oci:${out}:api-debug`])) as {
      config: Record<string, unknown>;
      history: Array<{ created_by: string; empty_layer?: boolean }>;
    };
    expect(cfg.config).toMatchObject({
      User: '1000:1000',
      Entrypoint: ['/app/bin/api'],
      WorkingDir: '/app',
      ExposedPorts: { '8080/tcp': {} },
      Labels: { 'org.opencontainers.image.title': 'api-debug' },
    });
    expect(cfg.history.map((h) => h.created_by)).toEqual([
      'COPY --link libs/common/ /opt/common/',
      'COPY services/api/config.json /etc/api/config.json',
      'COPY --chown=1000:1000 services/api/src/ /app/',
      'COPY --chmod=0755 tools/ /usr/local/bin/',
      'COPY --from=web /srv/www/index.html /srv/debug/index.html',
    ]);
  });

  it('unpacks with umoci to exactly the files the build file asks for', async () => {
    if (!hasTool('umoci')) return;
    const root = process.getuid?.() === 0;
    const src = (p: string): Promise<string> => readFile(path.join(ctx, p), 'utf8');
    const f = async (p: string, mode: number, uid = 0): Promise<TreeEntry> => ({ type: 'file', mode, uid, gid: uid, content: await src(p) });
    const d = (mode = 0o755, uid = 0): TreeEntry => ({ type: 'dir', mode, uid, gid: uid });
    const common = {
      '/opt': d(),
      '/opt/common': d(),
      '/opt/common/VERSION': await f('libs/common/VERSION', 0o644),
      '/opt/common/log.sh': await f('libs/common/log.sh', 0o644),
    };
    const api = {
      ...common,
      '/etc': d(),
      '/etc/api': d(),
      '/etc/api/config.json': await f('services/api/config.json', 0o644),
      '/app': d(0o755, 1000),
      '/app/HEALTH': { type: 'symlink', mode: 0o777, uid: 1000, gid: 1000, target: 'routes/health.txt' } as TreeEntry,
      '/app/bin': d(0o755, 1000),
      '/app/bin/api': await f('services/api/src/bin/api', 0o755, 1000),
      '/app/routes': d(0o755, 1000),
      '/app/routes/health.txt': await f('services/api/src/routes/health.txt', 0o644, 1000),
    };
    const expected: Record<string, Record<string, TreeEntry>> = {
      api,
      web: {
        ...common,
        '/srv': d(),
        '/srv/www': d(),
        '/srv/www/about.html': await f('services/web/about.html', 0o644),
        '/srv/www/index.html': await f('services/web/index.html', 0o644),
        '/srv/www/site.css': await f('services/web/static/site.css', 0o644),
        '/srv/www/serve': await f('services/web/serve', 0o755),
      },
      'api-debug': {
        ...api,
        '/usr': d(),
        '/usr/local': d(),
        '/usr/local/bin': d(0o755),
        '/usr/local/bin/healthcheck': await f('tools/healthcheck', 0o755),
        '/srv': d(),
        '/srv/debug': d(),
        '/srv/debug/index.html': await f('services/web/index.html', 0o644),
      },
    };
    for (const [image, files] of Object.entries(expected)) {
      const bundle = path.join(work, `bundle-${image}`);
      await tool('umoci', ['unpack', ...(root ? [] : ['--rootless']), '--image', `${out}:${image}`, bundle]);
      const tree = await readTree(path.join(bundle, 'rootfs'));
      const got = Object.fromEntries([...tree].map(([p, e]) => [p, e.type === 'symlink' ? { ...e, mode: 0o777 } : e]));
      expect(Object.keys(got).sort()).toEqual(Object.keys(files).sort());
      for (const [p, e] of Object.entries(files)) {
        // rootless unpacking maps every owner to the caller: ownership is only comparable as root
        const want = root ? e : { ...e, uid: got[p]!.uid, gid: got[p]!.gid };
        expect({ path: p, ...got[p] }).toEqual({ path: p, ...want });
      }
      await rm(bundle, { recursive: true, force: true });
    }
  });

  it('hits every step on a second run and writes the same digests', async () => {
    const res = await build();
    expect(res.exitCode).toBe(0);
    expect(Object.values(status(res.report)).every((s) => s === 'hit')).toBe(true);
    expect(digests(res.report)).toEqual(digests(first));
    expect(res.stdout).toMatch(/8\/8 steps cached/);
  });

  it('misses exactly the steps that read a changed file, and the non-linked steps after them', async () => {
    await writeFile(path.join(ctx, 'services/api/config.json'), '{ "port": 9090 }\n');
    const res = await build();
    expect(res.exitCode).toBe(0);
    expect(status(res.report)).toEqual({
      'api/common': 'hit',
      'api/config': 'miss',
      'api/src': 'miss',
      'web/common': 'hit',
      'web/pages': 'hit',
      'web/serve': 'hit',
      'api-debug/tools': 'miss',
      'api-debug/web-pages': 'miss',
    });
    const reasons = Object.fromEntries(res.report.steps.map((s) => [`${s.image}/${s.id}`, s.reason]));
    expect(reasons['api/config']).toBe('input services/api/config.json changed');
    expect(reasons['api/src']).toBe('parent layer changed');
    expect(reasons['api-debug/tools']).toBe('parent layer changed');
    expect(digests(res.report).web).toBe(digests(first).web);
    expect(digests(res.report).api).not.toBe(digests(first).api);
  });

  it('rebuilds a shared linked step once when its input changes, and the steps above it', async () => {
    await writeFile(path.join(ctx, 'libs/common/VERSION'), '1.4.3\n');
    const res = await build();
    const s = status(res.report);
    expect([s['api/common'], s['web/common']]).toEqual(['miss', 'miss']);
    const reasons = res.report.steps.filter((x) => x.id === 'common').map((x) => x.reason.replace(/ \(built once for .*\)$/, ''));
    expect(reasons).toEqual(['input libs/common/VERSION changed', 'input libs/common/VERSION changed']);
    expect(s['web/pages']).toBe('miss'); // non-linked, sits on common
    expect(s['api/config']).toBe('miss');
  });

  it('gives byte-identical digests from a copy with other mtimes and umask, on an empty cache', async () => {
    const copy = path.join(work, 'ctx-copy');
    await cp(ctx, copy, { recursive: true, verbatimSymlinks: true });
    for (const p of ['build.yaml', 'libs/common/VERSION', 'services/api/src/bin/api', 'services/web', 'tools']) {
      await utimes(path.join(copy, p), new Date('2001-02-03T04:05:06Z'), new Date('2001-02-03T04:05:06Z'));
    }
    const reportFile = path.join(work, 'umask-report.json');
    const res = await spawnCli(
      ['run', path.join(copy, 'build.yaml'), '--cache-dir', path.join(work, 'cache-2'), '--out', path.join(work, 'out-2'), '--report', reportFile, '--progress', 'plain'],
      { umask: '077' },
    );
    expect(res.exitCode, res.stderr).toBe(0);
    const second = JSON.parse(await readFile(reportFile, 'utf8')) as JsonReport;
    const again = await build();
    expect(digests(second)).toEqual(digests(again.report));
    expect(second.summary.hits).toBe(0);
  });
});
