/**
 * A build that runs out of disk fails with an error naming the path it was
 * writing (the cache directory or output layout, its file system, and the file), exits 1, and leaves the
 * cache as valid as it was: no partial blob under a real name, no temp file,
 * no mount. Given the space (a copy of the cache on a bigger disk), the same
 * build then succeeds with the digests of a clean build.
 *
 * The disks are small tmpfs mounts in the test's own temp dir (root only).
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { busyboxBuildFile, busyboxContext, hasStaticBusybox } from './helpers/busybox.js';
import { runCli } from './helpers/cli.js';
import { cacheProblems, layoutDigests, layoutProblems, mountsBelow } from './helpers/faults.js';
import { hasTool } from './helpers/tools.js';
import { writeFileAtomic } from '../src/util/fs-atomic.js';
import { DiskFullError } from '../src/errors.js';

const ROOT = process.getuid?.() === 0;

describe.skipIf(!ROOT)('a full disk (tmpfs, root)', () => {
  let base = '';
  let ctx = '';
  const mounts: string[] = [];
  /** `ref → digest` of big.yaml built with room to spare. */
  let reference: Record<string, string> = {};

  /** A tmpfs of `size` at a new directory `name` under the test's temp dir. */
  async function smallDisk(name: string, size: string): Promise<string> {
    const dir = path.join(base, name);
    await mkdir(dir);
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir]);
    mounts.push(dir);
    return dir;
  }

  function build(file: string, cache: string, out: string) {
    return runCli(['run', path.join(ctx, file), '--cache-dir', cache, '--out', out, '--progress', 'plain'], { cwd: ctx });
  }

  /** Every file of the cache but the run's scratch (tmp/, ingest/) and what any run rewrites, with its content. */
  async function contents(cache: string): Promise<Map<string, string>> {
    const out = new Map<string, string>();
    const visit = async (rel: string): Promise<void> => {
      for (const e of await readdir(path.join(cache, rel), { withFileTypes: true })) {
        const r = rel ? `${rel}/${e.name}` : e.name;
        if (['tmp', 'ingest', 'stat-cache.json', 'stat-cache.json.probe', 'stat-cache-blobs.json', 'stat-cache-blobs.json.probe'].includes(r)) continue;
        if (e.isDirectory()) await visit(r);
        else if (e.isFile()) out.set(r, (await readFile(path.join(cache, r))).toString('base64'));
      }
    };
    await visit('');
    return out;
  }

  beforeAll(async () => {
    base = await mkdtemp(path.join(os.tmpdir(), 'lg-diskfull-'));
    ctx = path.join(base, 'ctx');
    await mkdir(ctx);
    await writeFile(path.join(ctx, 'small.txt'), 'small\n'.repeat(100));
    // Random bytes: gzip cannot make the layer smaller than the disk.
    await writeFile(path.join(ctx, 'big.bin'), randomBytes(4 << 20));
    const step = (id: string, file: string) => `      - id: ${id}\n        copy: ${file}\n        to: /data/${file}\n`;
    await writeFile(path.join(ctx, 'small.yaml'), `version: 1\nimages:\n  app:\n    steps:\n${step('small', 'small.txt')}`);
    await writeFile(path.join(ctx, 'big.yaml'), `version: 1\nimages:\n  app:\n    steps:\n${step('small', 'small.txt')}${step('big', 'big.bin')}`);
    const clean = await build('big.yaml', path.join(base, 'clean-cache'), path.join(base, 'clean-out'));
    expect(clean.exitCode, clean.stderr).toBe(0);
    reference = await layoutDigests(path.join(base, 'clean-out'));
  });

  afterAll(async () => {
    for (const dir of mounts.reverse()) execFileSync('umount', [dir]);
    if (base) await rm(base, { recursive: true, force: true });
  });

  it('a cache disk that fills up: a clear error, exit 1, the cache as valid as before', async () => {
    // 3 MB: the layer of big.bin (4 MB) does not fit, wherever the build stages it (tmp/, ingest/).
    const disk = await smallDisk('cache', '3m');
    const cache = path.join(disk, 'cache');
    const out = path.join(base, 'out-cache-test');
    const small = await build('small.yaml', cache, out);
    expect(small.exitCode, small.stderr).toBe(0);
    const before = await contents(cache);

    const big = await build('big.yaml', cache, out);
    expect(big.exitCode, big.stdout + big.stderr).toBe(1);
    expect(big.stderr).not.toMatch(/unexpected error|at .*\.ts:\d+/);
    const escaped = cache.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    // Named: the cache directory and its file system, which a user can act on; the staging file only as the detail.
    expect(big.stderr).toMatch(
      new RegExp(`error: .*app/big: no space left on device in the cache directory ${escaped} \\(the file system on ${disk.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} is full\\) while writing ${escaped}/(tmp|ingest)/.*; free space there \\(or point --cache-dir elsewhere\\)`),
    );

    // As valid as before: what was there is there, unchanged; nothing half written; no leftovers.
    const after = await contents(cache);
    for (const [file, content] of before) expect(after.get(file), file).toBe(content);
    expect(await cacheProblems(cache)).toEqual([]);
    expect(await mountsBelow(base).then((m) => m.filter((p) => !mounts.includes(p)))).toEqual([]);
    // The layout of the run before is untouched.
    expect(await layoutProblems(out)).toEqual([]);

    // With room: the same cache, copied to a bigger disk, finishes the build.
    const roomy = path.join(base, 'roomy');
    execFileSync('cp', ['-a', cache, roomy]);
    const again = await build('big.yaml', roomy, out);
    expect(again.exitCode, again.stderr).toBe(0);
    expect(again.stdout).toMatch(/app\/small\s+HIT/);
    expect(await layoutDigests(out)).toEqual(reference);
    expect(await cacheProblems(roomy)).toEqual([]);
  });

  it('an output disk that fills up: the error names the layout, which keeps only whole blobs', async () => {
    const disk = await smallDisk('out', '3m');
    const out = path.join(disk, 'out');
    const cache = path.join(base, 'out-test-cache');
    const small = await build('small.yaml', cache, out);
    expect(small.exitCode, small.stderr).toBe(0);
    const smallDigests = await layoutDigests(out);

    const big = await build('big.yaml', cache, out);
    expect(big.exitCode, big.stderr).toBe(1);
    const escaped = out.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    expect(big.stderr).toMatch(
      new RegExp(`error: no space left on device in the output layout ${escaped} \\(the file system on .* is full\\) while writing ${escaped}/blobs/sha256/[0-9a-f]{64}.*point --out elsewhere`),
    );
    // index.json still names the last whole build; no temp file, no partial blob.
    expect(await layoutDigests(out)).toEqual(smallDigests);
    expect(await layoutProblems(out)).toEqual([]);
    expect(await cacheProblems(cache)).toEqual([]);

    const roomy = path.join(base, 'out-roomy');
    execFileSync('cp', ['-a', out, roomy]);
    const again = await build('big.yaml', cache, roomy);
    expect(again.exitCode, again.stderr).toBe(0);
    expect(await layoutDigests(roomy)).toEqual(reference);
    expect(await layoutProblems(roomy)).toEqual([]);
  });

  it('a small write on a full disk: DiskFullError names the file, and no temp file is left', async () => {
    const disk = await smallDisk('full', '1m');
    await writeFile(path.join(disk, 'filler'), Buffer.alloc(1 << 20)).catch(() => undefined);
    const target = path.join(disk, 'records', 'x.json');
    const err = await writeFileAtomic(target, 'x'.repeat(64 << 10), path.join(disk, 'ingest')).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(DiskFullError);
    // Not in a cache or layout: the file itself, and its file system.
    expect((err as DiskFullError).message).toBe(
      `no space left on device in ${target} (the file system on ${disk} is full); free space there (or point --cache-dir/--out elsewhere) and run again`,
    );
    expect(await readdir(path.join(disk, 'ingest'))).toEqual([]);
    expect(await readdir(path.join(disk, 'records'))).toEqual([]);
  });

  const RUN_READY = hasStaticBusybox() && hasTool('runc');
  it.skipIf(!RUN_READY)('a run step that fills the disk fails the step; nothing stays mounted, the cache stays valid', async () => {
    const disk = await smallDisk('run', '8m');
    const runCtx = path.join(base, 'run-ctx');
    const file = await busyboxContext(runCtx, `  filler:\n    from: base\n    steps:\n      - id: fill\n        run: "dd if=/dev/zero of=/big bs=1M count=32"\n`);
    const cache = path.join(disk, 'cache');
    const res = await runCli(['run', file, '--cache-dir', cache, '--out', path.join(base, 'run-out'), '--progress', 'plain'], { cwd: runCtx });
    expect(res.exitCode, res.stderr).toBe(1);
    expect(res.stderr).toMatch(/filler\/fill/);
    expect(res.stderr).toMatch(/No space left on device/i);
    expect((await mountsBelow(disk)).filter((p) => p !== disk)).toEqual([]);
    expect(await cacheProblems(cache)).toEqual([]);
    // The base image's steps, which fitted, are cached.
    await writeFile(file, busyboxBuildFile());
    const again = await runCli(['run', file, '--cache-dir', cache, '--out', path.join(base, 'run-out'), '--progress', 'plain'], { cwd: runCtx });
    expect(again.exitCode, again.stderr).toBe(0);
    expect(again.stdout).toMatch(/2\/2 steps cached/);
  });
});
