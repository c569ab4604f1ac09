/**
 * Base images from outside the build file: an OCI layout we wrote, and the
 * same image as skopeo writes it into an oci-archive and a docker-archive.
 * Layers are reused as they are, the config is inherited, and the result
 * unpacks with umoci.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPO, runCli } from './helpers/cli.js';
import { makeTree, useTmpDirs } from './helpers/tmp.js';
import { hasTool, tool } from './helpers/tools.js';
import { readTree } from './helpers/tree.js';

const tmpDir = useTmpDirs();

interface Report {
  images: Array<{ name: string; manifestDigest: string }>;
  steps: Array<{ id: string; status: string; reason: string }>;
}

async function buildFile(dir: string, from: string): Promise<{ code: number; stderr: string; report?: Report }> {
  await makeTree(dir, {
    'build.yaml': `version: 1\nimages:\n  app:\n    from: "${from}"\n    env: {EXTRA: "1"}\n    steps:\n      - {id: extra, copy: extra.txt, to: /app/extra/extra.txt}\n`,
    'extra.txt': 'extra\n',
  });
  const res = await runCli(['run', path.join(dir, 'build.yaml'), '--out', path.join(dir, 'out'), '--cache-dir', path.join(dir, 'cache'), '--report', path.join(dir, 'r.json'), '--progress', 'quiet']);
  const report = res.exitCode === 0 ? (JSON.parse(await readFile(path.join(dir, 'r.json'), 'utf8')) as Report) : undefined;
  return { code: res.exitCode, stderr: res.stderr, ...(report ? { report } : {}) };
}

async function manifestOf(layout: string, ref: string): Promise<{ layers: Array<{ digest: string; mediaType: string }>; config: { digest: string } }> {
  const index = JSON.parse(await readFile(path.join(layout, 'index.json'), 'utf8')) as { manifests: Array<{ digest: string; annotations: Record<string, string> }> };
  const d = index.manifests.find((m) => m.annotations['org.opencontainers.image.ref.name'] === ref)!.digest;
  return JSON.parse(await readFile(path.join(layout, 'blobs', 'sha256', d.slice(7)), 'utf8')) as never;
}

let base: string;

// Shared by every test of the file, so made here rather than with tmpDir (which cleans after each test).
beforeAll(async () => {
  base = await mkdtemp(path.join(os.tmpdir(), 'lg-base-'));
  const res = await runCli(['run', path.join(REPO, 'examples/monorepo/build.yaml'), '--out', path.join(base, 'out'), '--cache-dir', path.join(base, 'cache'), '--target', 'api', '--progress', 'quiet']);
  expect(res.exitCode, res.stderr).toBe(0);
});

afterAll(async () => {
  await rm(base, { recursive: true, force: true });
});

describe('from: oci:<dir>:<ref>', () => {
  it('reuses the base layers as they are, inherits its config, and keeps its directories', async () => {
    const dir = await tmpDir();
    const res = await buildFile(dir, `oci:${path.join(base, 'out')}:api`);
    expect(res.code, res.stderr).toBe(0);
    const baseManifest = await manifestOf(path.join(base, 'out'), 'api');
    const ours = await manifestOf(path.join(dir, 'out'), 'app');
    expect(ours.layers.slice(0, 3)).toEqual(baseManifest.layers);
    expect(ours.layers).toHaveLength(4);
    const config = JSON.parse(await readFile(path.join(dir, 'out', 'blobs', 'sha256', ours.config.digest.slice(7)), 'utf8')) as {
      config: { Env: string[]; Entrypoint: string[]; User: string };
      history: unknown[];
    };
    expect(config.config).toMatchObject({ Env: ['PORT=8080', 'NODE_ENV=production', 'EXTRA=1'], Entrypoint: ['/app/bin/api'], User: '1000:1000' });
    expect(config.history).toHaveLength(4);

    if (hasTool('umoci') && process.getuid?.() === 0) {
      await tool('umoci', ['unpack', '--image', `${path.join(dir, 'out')}:app`, path.join(dir, 'bundle')]);
      const tree = await readTree(path.join(dir, 'bundle', 'rootfs'));
      expect(tree.get('/app/extra/extra.txt')?.content).toBe('extra\n');
      expect(tree.get('/app/bin/api')?.mode).toBe(0o755);
      // /app came from the base, owned by 1000: the new layer passes through it without resetting it
      expect(tree.get('/app')).toMatchObject({ uid: 1000, gid: 1000, mode: 0o755 });
    }
  });

  it('hits on a second run, and misses with the reason when the base changes', async () => {
    const dir = await tmpDir();
    const from = `oci:${path.join(base, 'out')}:api`;
    expect((await buildFile(dir, from)).code).toBe(0);
    expect((await buildFile(dir, from)).report!.steps[0]!.status).toBe('hit');
    const other = `oci:${path.join(base, 'out')}:example.com/monorepo/api:latest`;
    expect((await buildFile(dir, other)).report!.steps[0]!.status).toBe('hit'); // same manifest, other name
    // another base image: everything on it misses, saying why
    const webBase = await tmpDir();
    await runCli(['run', path.join(REPO, 'examples/monorepo/build.yaml'), '--out', path.join(webBase, 'out'), '--cache-dir', path.join(webBase, 'c'), '--target', 'web', '--progress', 'quiet']);
    const changed = await buildFile(dir, `oci:${path.join(webBase, 'out')}:web`);
    expect(changed.report!.steps[0]).toMatchObject({ status: 'miss', reason: 'parent layer changed' });
  });

  it('points at `from` when the base is missing', async () => {
    const dir = await tmpDir();
    const res = await buildFile(dir, `oci:${path.join(dir, 'nowhere')}:api`);
    expect(res.code).toBe(2);
    expect(res.stderr).toMatch(/build\.yaml:4:11: `from: oci:.*nowhere:api`: .*cannot read index.json/);
  });
});

describe('from: archives skopeo wrote', () => {
  it('builds on a docker-archive and an oci-archive of the same image', async () => {
    if (!hasTool('skopeo')) return;
    const dir = await tmpDir();
    await tool('skopeo', ['copy', `oci:${path.join(base, 'out')}:api`, `docker-archive:${path.join(dir, 'api-docker.tar')}:example/api:latest`]);
    await tool('skopeo', ['copy', `oci:${path.join(base, 'out')}:api`, `oci-archive:${path.join(dir, 'api-oci.tar')}:api`]);
    for (const from of [`docker-archive:${path.join(dir, 'api-docker.tar')}`, `oci-archive:${path.join(dir, 'api-oci.tar')}:api`]) {
      const work = await tmpDir();
      const res = await buildFile(work, from);
      expect(res.code, `${from}: ${res.stderr}`).toBe(0);
      const m = await manifestOf(path.join(work, 'out'), 'app');
      expect(m.layers).toHaveLength(4);
      if (hasTool('umoci') && process.getuid?.() === 0) {
        await tool('umoci', ['unpack', '--image', `${path.join(work, 'out')}:app`, path.join(work, 'bundle')]);
        const tree = await readTree(path.join(work, 'bundle', 'rootfs'));
        expect(tree.get('/etc/api/config.json')?.content).toBe(await readFile(path.join(REPO, 'examples/monorepo/services/api/config.json'), 'utf8'));
        expect(tree.get('/app/extra/extra.txt')?.content).toBe('extra\n');
      }
    }
  });
});
