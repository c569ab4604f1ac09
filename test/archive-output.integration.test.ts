/**
 * `--output oci-archive:` and `docker-archive:`, read back by skopeo: every
 * image and tag of the example is in each archive, with the layers of the
 * OCI layout the same build writes; the same build gives the same bytes.
 */
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPO, runCli } from './helpers/cli.js';
import { hasTool, tool } from './helpers/tools.js';

const EXAMPLE = path.join(REPO, 'examples', 'monorepo', 'build.yaml');
let work: string;
let report: { images: Array<{ name: string; tags: string[]; manifestDigest: string }> };

interface Inspected {
  Digest: string;
  Layers: string[];
}

beforeAll(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), 'lg-archive-'));
  const res = await runCli([
    'run', EXAMPLE, '--cache-dir', path.join(work, 'cache'), '--progress', 'quiet', '--report', path.join(work, 'r.json'),
    '--output', `oci:${path.join(work, 'layout')}`,
    '--output', `oci-archive:${path.join(work, 'images.oci.tar')}`,
    '--output', `docker-archive:${path.join(work, 'images.docker.tar')}`,
  ]);
  expect(res.exitCode, res.stderr).toBe(0);
  report = JSON.parse(await readFile(path.join(work, 'r.json'), 'utf8')) as typeof report;
});

afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

const sha = async (file: string) => createHash('sha256').update(await readFile(file)).digest('hex');

describe.skipIf(!hasTool('skopeo'))('archive outputs', () => {
  it('puts every image and tag in the oci-archive, as the layout has them', async () => {
    for (const image of report.images) {
      for (const ref of [image.name, ...image.tags]) {
        const fromArchive = JSON.parse(await tool('skopeo', ['inspect', `oci-archive:${path.join(work, 'images.oci.tar')}:${ref}`])) as Inspected;
        const fromLayout = JSON.parse(await tool('skopeo', ['inspect', `oci:${path.join(work, 'layout')}:${ref}`])) as Inspected;
        expect(fromArchive.Digest).toBe(image.manifestDigest);
        expect(fromArchive.Layers).toEqual(fromLayout.Layers);
      }
    }
  });

  it('puts every image in the docker-archive under repo:tag names, layers uncompressed as their diffIDs', async () => {
    for (const image of report.images) {
      const config = JSON.parse(await tool('skopeo', ['inspect', '--config', `oci:${path.join(work, 'layout')}:${image.name}`])) as {
        rootfs: { diff_ids: string[] };
      };
      for (const ref of [image.name, ...image.tags].map((r) => (r.lastIndexOf(':') > r.lastIndexOf('/') ? r : `${r}:latest`))) {
        const inspected = JSON.parse(await tool('skopeo', ['inspect', `docker-archive:${path.join(work, 'images.docker.tar')}:${ref}`])) as Inspected;
        expect(inspected.Layers).toEqual(config.rootfs.diff_ids);
      }
    }
  });

  it('writes the same archives from the same build', async () => {
    const again = await runCli([
      'run', EXAMPLE, '--cache-dir', path.join(work, 'cache'), '--progress', 'quiet',
      '--output', `oci-archive:${path.join(work, 'again.oci.tar')}`,
      '--output', `docker-archive:${path.join(work, 'again.docker.tar')}`,
    ]);
    expect(again.exitCode, again.stderr).toBe(0);
    expect(await sha(path.join(work, 'again.oci.tar'))).toBe(await sha(path.join(work, 'images.oci.tar')));
    expect(await sha(path.join(work, 'again.docker.tar'))).toBe(await sha(path.join(work, 'images.docker.tar')));
  });

  it('refuses an output it does not know', async () => {
    const res = await runCli(['run', EXAMPLE, '--output', 'tarball:x.tar']);
    expect(res.exitCode).toBe(2);
    expect(res.stderr).toMatch(/--output tarball:x.tar: expected oci:<dir>, oci-archive:<file> or docker-archive:<file>/);
  });
});
