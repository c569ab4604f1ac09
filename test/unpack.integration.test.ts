/**
 * `layergraph unpack` against umoci: the same image unpacked by both gives the
 * same tree — for our own images, and for one umoci made with whiteouts.
 */
import { execFileSync } from 'node:child_process';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { REPO, runCli } from './helpers/cli.js';
import { makeTree, useTmpDirs } from './helpers/tmp.js';
import { hasTool, tool } from './helpers/tools.js';
import { readTree } from './helpers/tree.js';

const tmpDir = useTmpDirs();
const asRoot = process.getuid?.() === 0;

async function umociTree(layout: string, ref: string, work: string): Promise<Awaited<ReturnType<typeof readTree>>> {
  const bundle = path.join(work, `umoci-${ref}`);
  await tool('umoci', ['unpack', ...(asRoot ? [] : ['--rootless']), '--image', `${layout}:${ref}`, bundle]);
  return readTree(path.join(bundle, 'rootfs'));
}

async function ourTree(layout: string, ref: string, work: string): Promise<Awaited<ReturnType<typeof readTree>>> {
  const dest = path.join(work, `ours-${ref}`);
  const res = await runCli(['unpack', `${layout}:${ref}`, dest]);
  expect(res.exitCode, res.stderr).toBe(0);
  return readTree(dest);
}

describe('layergraph unpack', () => {
  it('unpacks every image of the example exactly as umoci does', async () => {
    if (!hasTool('umoci')) return;
    const work = await tmpDir();
    const out = path.join(work, 'out');
    const built = await runCli(['run', path.join(REPO, 'examples/monorepo/build.yaml'), '--out', out, '--cache-dir', path.join(work, 'c'), '--progress', 'quiet']);
    expect(built.exitCode, built.stderr).toBe(0);
    for (const ref of ['api', 'web', 'api-debug']) {
      expect(await ourTree(out, ref, work)).toEqual(await umociTree(out, ref, work));
    }
  });

  it('applies whiteouts of a layer umoci made', async () => {
    if (!hasTool('umoci') || !asRoot) return; // umoci repack keeps ownership only as root
    const work = await tmpDir();
    const L = path.join(work, 'L');
    const B = path.join(work, 'B');
    const umoci = (...args: string[]): string => execFileSync('umoci', args, { cwd: work, encoding: 'utf8' });
    umoci('init', '--layout', L);
    umoci('new', '--image', `${L}:base`);
    umoci('unpack', '--image', `${L}:base`, B);
    await makeTree(path.join(B, 'rootfs'), { a: { dir: { keep: 'keep', gone: 'gone' } }, d: { dir: { x: 'x' } }, link: { link: 'a/keep' } });
    umoci('repack', '--image', `${L}:base`, B);
    await rm(B, { recursive: true });
    umoci('unpack', '--image', `${L}:base`, B);
    await rm(path.join(B, 'rootfs', 'a', 'gone'));
    await rm(path.join(B, 'rootfs', 'd'), { recursive: true });
    await mkdir(path.join(B, 'rootfs', 'd'));
    await writeFile(path.join(B, 'rootfs', 'd', 'y'), 'y');
    umoci('repack', '--image', `${L}:base`, B);

    const ours = await ourTree(L, 'base', work);
    expect([...ours.keys()]).toEqual(['/a', '/a/keep', '/d', '/d/y', '/link']);
    expect(ours).toEqual(await umociTree(L, 'base', work));
  });

  it('refuses a non-empty destination, an unknown ref and a damaged blob', async () => {
    const work = await tmpDir();
    const out = path.join(work, 'out');
    await runCli(['run', path.join(REPO, 'examples/monorepo/build.yaml'), '--out', out, '--cache-dir', path.join(work, 'c'), '--progress', 'quiet']);
    const full = path.join(work, 'full');
    await makeTree(full, { f: 'x' });
    expect(await runCli(['unpack', `${out}:api`, full])).toMatchObject({ exitCode: 2, stderr: expect.stringMatching(/is not empty/) });
    expect(await runCli(['unpack', `${out}:nope`, path.join(work, 'x')])).toMatchObject({
      exitCode: 2,
      stderr: expect.stringMatching(/has no image `nope` \(refs: api, example.com\/monorepo\/api:latest, web/),
    });
    const blobs = path.join(out, 'blobs', 'sha256');
    const index = JSON.parse(await readFile(path.join(out, 'index.json'), 'utf8')) as { manifests: Array<{ digest: string }> };
    const manifest = JSON.parse(await readFile(path.join(blobs, index.manifests[0]!.digest.slice(7)), 'utf8')) as { layers: Array<{ digest: string }> };
    await writeFile(path.join(blobs, manifest.layers[0]!.digest.slice(7)), 'not a layer');
    const damaged = await runCli(['unpack', `${out}:api`, path.join(work, 'y')]);
    expect(damaged.exitCode).toBe(1);
    expect(damaged.stderr).toMatch(/error: /);
  });
});
